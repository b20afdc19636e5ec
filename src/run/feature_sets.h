// Several feature sets in one `freshet run` (`--spec a.yaml --spec b.yaml`): what the sets must share, and the
// manifest that says which checkpoint of each set belongs to one moment of the shared source.
//
// Layout of the data directory with several sets:
//   sets/manifest                       the set names and, per set, its checkpoint sequence of the last moment
//                                       every set checkpointed (written after those checkpoints are durable)
//   sets/<name>/checkpoints/, dead_letters/   each set's own
//   offline/events                      one events table (written by the first set)
//   offline/features_<name>, feature_log_<name>   per set
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "offline/tables.h"
#include "spec/spec.h"

namespace freshet {

// Refuses sets that cannot run together, saying which key of which spec to change: names must differ (they name
// the HTTP paths, Redis keys and offline tables), every spec names the same source (read once), and the offline store, serve section and checkpoint settings are the first spec's. Not yet with
// several sets: parallelism > 1, reference tables, a consumer group's checkpoint.path.
Status CheckFeatureSets(const std::vector<Spec>& specs);

struct SetsManifest {
  std::vector<std::string> names;               // In the order of the --spec flags.
  std::map<std::string, uint64_t> checkpoints;  // Set name -> checkpoint sequence.
};

// <data dir>/sets/<name>: the set's checkpoints/ and dead_letters/.
std::string FeatureSetDir(const std::string& data_dir, const std::string& name);
// The spec's offline paths as one set of several: the shared events table, its own features_<name> and
// feature_log_<name>.
OfflinePaths FeatureSetOfflinePaths(const Spec& spec, const std::string& data_dir);

std::string SetsManifestPath(const std::string& data_dir);
// nullopt when the data directory has no manifest (no moment every set checkpointed yet).
Result<std::optional<SetsManifest>> ReadSetsManifest(const std::string& data_dir);
Status WriteSetsManifest(const std::string& data_dir, const SetsManifest& manifest);

// Refuses a data directory written for another list of sets (or, with one spec, for several; with several, by a
// single-spec run), naming the sets and `--reset`.
Status CheckDataDirSets(const std::string& data_dir, const std::vector<std::string>& names,
                        const std::optional<SetsManifest>& manifest);

}  // namespace freshet

#include "run/feature_sets.h"

#include <filesystem>
#include <set>
#include <sstream>

#include "common/files.h"

namespace freshet {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kManifestHeader = "freshet feature sets 1";

std::string JoinNames(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

bool SameSource(const SourceSpec& a, const SourceSpec& b) {
  return a.type == b.type && a.path == b.path && a.follow == b.follow && a.brokers == b.brokers &&
         a.topic == b.topic && a.group == b.group;
}

}  // namespace

Status CheckFeatureSets(const std::vector<Spec>& specs) {
  const Spec& first = specs.front();
  std::set<std::string> names;
  for (const Spec& spec : specs) {
    if (!names.insert(spec.name).second) {
      return Status::Invalid(spec.file + ": feature set name '" + spec.name + "' is used by two --spec files; each " +
                             "set needs its own `name` (it names its HTTP path /v1/features/{set}/..., its Redis keys "
                             "and its offline table features_<set>)");
    }
    if (spec.parallelism > 1) {
      return Status::Invalid(spec.file + ": parallelism: " + std::to_string(spec.parallelism) + " is not supported "
                             "with several feature sets yet (each set is applied by one thread); remove `parallelism` "
                             "or run the set alone");
    }
    if (!spec.tables.empty()) {
      return Status::Invalid(spec.file + ": reference tables (`tables:`) are not supported with several feature sets "
                             "yet (each set would record the table's history); run that set alone");
    }
    if (!spec.lookups.empty()) {
      return Status::Invalid(spec.file + ": `lookups` are not supported with several feature sets yet (the shared "
                             "events table records the answers of one set's lookups only); run that set alone");
    }
    if (!spec.checkpoint.path.empty()) {
      return Status::Invalid(spec.file + ": checkpoint.path (a Kafka consumer group's shared checkpoints) is not "
                             "supported with several feature sets; remove it");
    }
    if (&spec == &first) continue;
    if (first.source && (!spec.source || !SameSource(*spec.source, *first.source))) {
      return Status::Invalid(spec.file + ": its `source` differs from the first spec's (" + first.file + "); the feature "
                             "sets of one run read one source, once: give every spec the same `source` section");
    }
    if (spec.offline.enabled != first.offline.enabled || spec.offline.path != first.offline.path) {
      return Status::Invalid(spec.file + ": its `offline` section (enabled, path) differs from the first spec's (" +
                             first.file + "); the sets share one offline store (an events table, a features_<set> "
                             "table per set): make them the same");
    }
  }
  return Status::Ok();
}

std::string FeatureSetDir(const std::string& data_dir, const std::string& name) {
  return (fs::path(data_dir) / "sets" / name).string();
}

OfflinePaths FeatureSetOfflinePaths(const Spec& spec, const std::string& data_dir) {
  OfflinePaths paths = OfflinePathsFor(spec, data_dir);
  paths.features = paths.root + "/features_" + spec.name;
  paths.feature_log = paths.root + "/feature_log_" + spec.name;
  return paths;
}

std::string SetsManifestPath(const std::string& data_dir) { return (fs::path(data_dir) / "sets" / "manifest").string(); }

Result<std::optional<SetsManifest>> ReadSetsManifest(const std::string& data_dir) {
  const std::string path = SetsManifestPath(data_dir);
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::optional<SetsManifest>();
  FRESHET_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path));
  std::istringstream in(text);
  std::string line;
  if (!std::getline(in, line) || line != kManifestHeader) {
    return Status::Invalid(path + ": not a feature-set manifest (its first line is not '" + std::string(kManifestHeader) +
                           "'); move it aside with `freshet run --reset`");
  }
  SetsManifest manifest;
  for (size_t number = 2; std::getline(in, line); ++number) {
    size_t space = line.find(' ');
    uint64_t sequence = 0;
    try {
      sequence = std::stoull(line.substr(0, space));
    } catch (...) {
      space = std::string::npos;
    }
    if (space == std::string::npos || space + 1 >= line.size()) {
      return Status::Invalid(path + ":" + std::to_string(number) + ": expected '<checkpoint sequence> <set name>'; "
                             "the manifest is damaged, start fresh with `freshet run --reset`");
    }
    manifest.names.push_back(line.substr(space + 1));
    manifest.checkpoints[manifest.names.back()] = sequence;
  }
  return std::optional<SetsManifest>(std::move(manifest));
}

Status WriteSetsManifest(const std::string& data_dir, const SetsManifest& manifest) {
  std::string text = std::string(kManifestHeader) + "\n";
  for (const std::string& name : manifest.names) {
    text += std::to_string(manifest.checkpoints.at(name)) + " " + name + "\n";
  }
  const std::string path = SetsManifestPath(data_dir);
  FRESHET_RETURN_IF_ERROR(WriteFileDurably(path + ".tmp", {text}, "feature-set manifest"));
  std::error_code ec;
  fs::rename(path + ".tmp", path, ec);
  if (ec) return Status::IoError("cannot rename '" + path + ".tmp' to '" + path + "': " + ec.message());
  return SyncDirectory(fs::path(path).parent_path().string());
}

Status CheckDataDirSets(const std::string& data_dir, const std::vector<std::string>& names,
                        const std::optional<SetsManifest>& manifest) {
  const std::string fix = "; start fresh with `freshet run --reset` (it moves the old checkpoints aside), or run "
                          "with the --spec files it was written for";
  if (names.size() == 1) {
    if (!manifest) return Status::Ok();
    return Status::Invalid("the data directory '" + data_dir + "' holds checkpoints of several feature sets (" +
                           JoinNames(manifest->names) + "), but this run has one spec" + fix);
  }
  std::error_code ec;
  const fs::path single = fs::path(data_dir) / "checkpoints";
  if (fs::is_directory(single, ec) && !fs::is_empty(single, ec)) {
    return Status::Invalid("the data directory '" + data_dir + "' holds checkpoints of a run with one spec (" +
                           single.string() + "), but this run has several feature sets (" + JoinNames(names) + ")" +
                           fix);
  }
  if (manifest && std::set<std::string>(manifest->names.begin(), manifest->names.end()) !=
                      std::set<std::string>(names.begin(), names.end())) {
    return Status::Invalid("the data directory '" + data_dir + "' holds checkpoints of the feature sets " +
                           JoinNames(manifest->names) + ", but this run has " + JoinNames(names) +
                           " (the list of --spec files changed)" + fix);
  }
  return Status::Ok();
}

}  // namespace freshet

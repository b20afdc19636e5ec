// Backfill: recompute features from history through the streaming path (run/event_path.h), for a new or
// changed feature or after a failure, and hand the resulting state to `freshet run`.
//
// Input, in acceptance order: the offline events table of the data directory (what `freshet run` accepted),
// or JSON-lines files in the order given. Every event goes through EventPath exactly as it did (or would)
// in `freshet run`, so the features table a backfill writes equals, value for value, the one the stream
// wrote for the same events (tests/backfill_test.py shows it).
//
// Output: the features table (the spec's, or --output), replaced in one Delta commit, with the rows of
// events whose time is in [from, to); and, unless disabled, a checkpoint in <data_dir>/checkpoints that
// `freshet run` restores: the backfilled state, and
//   - from the events table: the source and dead-letter positions of the newest checkpoint there, so the
//     stream continues right after the events the table holds;
//   - from files: no source position, so the stream reads its source from the start: point it at the
//     events that follow those files.
// Stop `freshet run` on the data directory while a backfill writes to it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "spec/spec.h"

namespace freshet {

struct BackfillOptions {
  std::string data_dir = "freshet-data";
  std::vector<std::string> events_files;  // Empty: the offline events table.
  // With events_files: reference table files (name, path), every row known before the first event.
  std::vector<std::pair<std::string, std::string>> table_files;
  std::optional<int64_t> from_ms;         // Features rows for event times in [from, to).
  std::optional<int64_t> to_ms;
  std::string output_dir;                 // The features table; empty: the spec's offline features table.
  bool write_checkpoint = true;
  bool progress = false;
  // Not empty: the spec is this feature set of a run with several (run/feature_sets.h): the shared events table is
  // read, features_<set> replaced, the checkpoint written under sets/<set>/ and named in the sets' manifest; the
  // other sets' tables and checkpoints are not touched.
  std::string feature_set;
};

struct BackfillStats {
  uint64_t lines = 0;
  uint64_t accepted = 0;
  uint64_t rejected = 0;
  uint64_t late = 0;
  uint64_t duplicates = 0;  // Dropped by `dedup` (only --events files can hold any: the events table has none).
  uint64_t feature_rows = 0;
  std::optional<uint64_t> checkpoint_sequence;
  double seconds = 0;
};

Status RunBackfill(const Spec& spec, const BackfillOptions& options, BackfillStats* stats);

}  // namespace freshet

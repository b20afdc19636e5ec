#include "run/backfill.h"

#include "lookup/lookup_row.h"

#include <chrono>
#include <filesystem>

#include "common/progress.h"
#include "common/time.h"
#include "engine/dedup.h"
#include "engine/feature_engine.h"
#include "event/line_reader.h"
#include "lookup/lookup_row.h"
#include "offline/tables.h"
#include "run/event_path.h"
#include "run/feature_sets.h"
#include "run/lanes.h"
#include "table/table_history.h"
#include "run/offline_sink.h"
#include "state/checkpoint.h"

namespace freshet {
namespace {

constexpr uint64_t kSpillBytes = 256ull << 20;  // Staged to files beyond this, to bound memory.

}  // namespace

Status RunBackfill(const Spec& spec, const BackfillOptions& options, BackfillStats* stats) {
  if (!spec.watermark) {
    return Status::Invalid(spec.file + ": backfill writes the features table, which needs a 'watermark' (without one "
                           "the rows of out-of-order events could not be exact as of their time); add watermark: "
                           "{max_out_of_orderness: 5s, allowed_lateness: 1m} with your own bounds");
  }
  if (!spec.lookups.empty() && !options.events_files.empty()) {
    return Status::Invalid(spec.file + ": the spec has `lookups`, whose answers only the offline events table "
                           "records; backfill does not call the store, so it replays the events table (leave out "
                           "--events)");
  }
  const auto started = std::chrono::steady_clock::now();
  *stats = BackfillStats();
  const bool one_of_sets = !options.feature_set.empty();
  std::optional<SetsManifest> manifest;
  if (one_of_sets) {
    FRESHET_ASSIGN_OR_RETURN(manifest, ReadSetsManifest(options.data_dir));
    if (options.write_checkpoint && (!manifest || !manifest->checkpoints.contains(options.feature_set))) {
      return Status::Invalid("the data directory '" + options.data_dir + "' has no checkpoint of feature set '" +
                             options.feature_set + "' (" + SetsManifestPath(options.data_dir) + "); run the sets with "
                             "`freshet run --spec ... --spec ...` first, or backfill with --no-checkpoint");
    }
  }
  const OfflinePaths paths = one_of_sets ? FeatureSetOfflinePaths(spec, options.data_dir)
                                         : OfflinePathsFor(spec, options.data_dir);
  const std::string run_dir = one_of_sets ? FeatureSetDir(options.data_dir, options.feature_set) : options.data_dir;
  OfflinePaths output = paths;
  if (!options.output_dir.empty()) {
    output.features = options.output_dir;
    output.staging_override = options.output_dir + "/_staging";
  }
  FRESHET_ASSIGN_OR_RETURN(
      std::unique_ptr<OfflineSink> sink,
      OfflineSink::Open(spec, output, OfflineSinkOptions{.events = false, .features = true, .overwrite_features = true}));
  sink->SetFeatureRange(options.from_ms, options.to_ms);

  // The checkpoint store, and what the stream had consumed when it wrote the events table.
  std::optional<CheckpointStore> store;
  std::vector<std::pair<std::string, std::string>> positions;
  if (options.write_checkpoint) {
    FRESHET_ASSIGN_OR_RETURN(CheckpointStore opened,
                             CheckpointStore::Open((std::filesystem::path(run_dir) / "checkpoints").string(),
                                                   spec.checkpoint.keep));
    store.emplace(std::move(opened));
    if (options.events_files.empty()) {
      std::vector<std::string> warnings;
      // One of several sets: the checkpoint of the moment the manifest names, where the other sets stand.
      FRESHET_ASSIGN_OR_RETURN(std::optional<Checkpoint> newest,
                               store->LoadNewestValid(&warnings, one_of_sets ? manifest->checkpoints.at(options.feature_set)
                                                                             : UINT64_MAX));
      for (const std::string& w : warnings) std::fprintf(stderr, "freshet backfill: warning: %s\n", w.c_str());
      if (newest) {
        for (const auto& [name, position] : newest->positions) {
          // The reference tables' state there is what replaying their history below rebuilds.
          if (name == "source" || name == "dead_letters" || name == "tables") positions.emplace_back(name, position);
        }
      }
    }
  }

  // A Kafka pipeline's events table is replayed per partition, as the stream processed it: each event goes
  // back to its partition's lane (its own lateness clock, state and order), in the shared seq order.
  PipelineLanes lanes(spec, spec.source && spec.source->type == "kafka" && options.events_files.empty());
  lanes.SetOfflineSink(sink.get());
  if (one_of_sets) lanes.SkipLinesWithoutEntity();
  // Reference tables: from the events table, each version recorded in the history is added where it arrived in
  // the stream; from files, the --table files' rows all come first (greatest valid_from <= t).
  TableSet tables(spec);
  if (!spec.joins.empty()) lanes.SetTables(&tables);
  TableReplay table_replay;
  if (!spec.tables.empty()) {
    if (options.events_files.empty()) {
      FRESHET_ASSIGN_OR_RETURN(table_replay, TableReplay::FromStore(spec, paths.root));
    } else {
      FRESHET_ASSIGN_OR_RETURN(table_replay, TableReplay::FromFiles(spec, options.table_files));
    }
  }
  ProgressLine progress("backfill", options.progress);
  auto account = [&](EventPath::Outcome outcome) -> Status {
    switch (outcome) {
      case EventPath::Outcome::kAccepted: ++stats->accepted; break;
      case EventPath::Outcome::kRejected: ++stats->rejected; break;
      case EventPath::Outcome::kLate: ++stats->late; break;
      case EventPath::Outcome::kDuplicate: ++stats->duplicates; break;
      case EventPath::Outcome::kNotForSet: break;
    }
    if (sink->buffered_bytes() > kSpillBytes) FRESHET_RETURN_IF_ERROR(sink->Spill());
    return Status::Ok();
  };
  const int64_t wall_ms = WallClockMs();

  EventLookups lookups;  // The answers the stream recorded with each event, used instead of the store.
  if (options.events_files.empty()) {
    FRESHET_RETURN_IF_ERROR(ReplayEventsTable(paths.events, [&](const StoredEvent& e) -> Status {
      ++stats->lines;
      if (!spec.lookups.empty()) FRESHET_RETURN_IF_ERROR(DecodeRecordedLookups(spec, e.lookups, &lookups));
      if ((stats->lines & 0xFFFF) == 0) progress.Update(stats->lines);
      table_replay.AddUpTo(tables, e.seq);
      const RecordPlace place{e.partition, e.offset};
      PipelineLanes::Lane& lane = lanes.For(static_cast<uint32_t>(e.partition));
      if (!spec.lookups.empty()) lane.path.SetLookups(&lookups);
      return account(lane.path.Process(e.raw, e.raw_capacity, wall_ms, e.has_place ? &place : nullptr));
    }));
  } else {
    for (const std::string& file : options.events_files) {
      LineReader reader;
      FRESHET_RETURN_IF_ERROR(reader.Open(file));
      Line line;
      while (reader.Next(&line)) {
        ++stats->lines;
        PipelineLanes::Lane& lane = lanes.For(0);
        table_replay.AddUpTo(tables, 0);
        if (line.too_long) {
          ++lane.counters.lines_read;
          ++lane.counters.rejected;
          ++stats->rejected;
          continue;
        }
        FRESHET_RETURN_IF_ERROR(account(lane.path.Process(line.text, line.capacity, wall_ms)));
        if ((stats->lines & 0xFFFF) == 0) progress.Update(stats->lines, reader.bytes_consumed(), reader.file_size());
      }
      FRESHET_RETURN_IF_ERROR(reader.status());
    }
  }
  progress.Done();

  // Stage, checkpoint, publish: the same order as `freshet run`, so a crash in between is recovered alike.
  if (!store) {
    FRESHET_RETURN_IF_ERROR(sink->Spill());  // No checkpoint: a commit without a txn version.
  } else {
    const uint64_t sequence = store->next_sequence();
    FRESHET_ASSIGN_OR_RETURN(std::string staged, sink->Stage(sequence));
    Checkpoint checkpoint;
    checkpoint.sequence = sequence;
    checkpoint.spec_fingerprint = lanes.blank().spec_fingerprint();
    checkpoint.positions = positions;
    checkpoint.positions.emplace_back("offline", std::move(staged));
    checkpoint.engine_state = lanes.Encode();
    FRESHET_RETURN_IF_ERROR(store->Write(checkpoint));
    stats->checkpoint_sequence = sequence;
    if (one_of_sets) {
      manifest->checkpoints[options.feature_set] = sequence;
      FRESHET_RETURN_IF_ERROR(WriteSetsManifest(options.data_dir, *manifest));
    }
  }
  FRESHET_RETURN_IF_ERROR(sink->Publish());
  stats->feature_rows = sink->feature_rows_written();
  stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return Status::Ok();
}

}  // namespace freshet

// OfflineSink: the offline half of the dual write. `freshet run` (and `freshet backfill`) hand it every
// accepted event and the features it produced; it buffers them in the events and features tables
// (offline/tables.h) and commits them together with the checkpoints:
//
//   Stage(sequence)   before checkpoint `sequence` is written: buffered rows become staged Parquet files;
//                     returns the text the checkpoint records (the staged commits not yet published).
//   Publish()         after the checkpoint is durable: the staged files enter the tables, one Delta commit
//                     per table, tagged with the checkpoint's sequence (txn version).
//   Recover(...)      on start: publishes what the restored checkpoint recorded (a crash may have come
//                     between the checkpoint and Publish), removes commits of newer checkpoints (their events
//                     will be read again) and staged files no checkpoint recorded.
//
// So after any crash each table holds the rows of exactly the events the restored checkpoint covers, once.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/value.h"
#include "offline/offline_table.h"
#include "offline/tables.h"
#include "spec/spec.h"
#include "table/table_set.h"

namespace freshet {

// Where an event came from in a partitioned source (Kafka): its partition and offset.
struct RecordPlace {
  int64_t partition = 0;
  int64_t offset = 0;
};

struct OfflineSinkOptions {
  bool events = true;               // Write the events table.
  bool features = true;             // Write the features table.
  bool overwrite_features = false;  // Replace the features table's content and schema (backfill).
};

class OfflineSink {
 public:
  static Result<std::unique_ptr<OfflineSink>> Open(const Spec& spec, const OfflinePaths& paths,
                                                   OfflineSinkOptions options);

  // `recorded`: the checkpoint's "offline" position (nullopt without one); `sequence`: its sequence
  // (nullopt when starting without a checkpoint). Returns a line for the log, empty when nothing was done.
  Result<std::string> Recover(std::optional<std::string_view> recorded, std::optional<uint64_t> sequence);

  // `place`: the event's partition and offset, written when the events table has those columns (a Kafka source).
  // `lookups`: the event's `lookups` cell (EventLookups::Record), written when the spec has lookups.
  void AddEvent(int64_t seq, int64_t event_time_ms, std::string_view entity, int64_t ingest_ms, std::string_view raw,
                const RecordPlace* place = nullptr, std::string_view lookups = {});
  void AddFeatures(int64_t seq, std::string_view entity, int64_t event_time_ms, int64_t processing_ms,
                   const std::vector<Value>& values);
  // A version of reference table `table` (index in Spec::tables) into its history, table_<name>
  // (table/table_history.h); committed with the events of the same checkpoint.
  void AddTableVersion(size_t table, int64_t version, int64_t seq, const TableRow& row, int64_t arrival_ms);
  bool writes_tables() const { return !histories_.empty(); }
  bool writes_features() const { return features_ != nullptr; }
  bool writes_events() const { return events_ != nullptr; }
  uint64_t buffered_bytes() const;
  uint64_t feature_rows_written() const { return feature_rows_; }

  Result<std::string> Stage(uint64_t checkpoint_sequence);
  // Stage in two steps (see OfflineTable::TakeRows): TakeRows on the thread that adds rows, StageTaken
  // (the Parquet writing) on another, one at a time; Stage(s) == StageTaken(TakeRows(), s).
  struct TakenRows {
    OfflineTable::RowsPtr events, features;
    std::vector<OfflineTable::RowsPtr> histories;  // Per reference table.
    uint64_t Bytes() const;
  };
  TakenRows TakeRows();
  // Rows that cannot be staged (a full disk) are kept, and staged ahead of newer rows by the next call, so a
  // failed checkpoint loses nothing and each table's files stay in seq order.
  Result<std::string> StageTaken(TakenRows rows, uint64_t checkpoint_sequence);
  // Bytes of rows taken but not staged yet (kept by failed StageTaken calls); safe from any thread.
  uint64_t unstaged_bytes() const { return unstaged_bytes_.load(std::memory_order_relaxed); }
  // Writes buffered rows to staged files without a checkpoint (a long backfill bounds its memory so);
  // the next Stage folds them into its commit.
  Status Spill();
  Status Publish();
  // Publishes what another member of the consumer group staged and recorded in its checkpoint (`recorded`: that
  // checkpoint's "offline" position), unless it is in the tables already: a process that gains a partition
  // does this for the checkpoint it restores the partition from, whose writer may have died before publishing.
  Status PublishFrom(std::string_view recorded, const std::string& member);
  // Features rows are kept only for event times in [from, to) (backfill --from/--to).
  void SetFeatureRange(std::optional<int64_t> from_ms, std::optional<int64_t> to_ms) {
    from_ms_ = from_ms;
    to_ms_ = to_ms;
  }

 private:
  OfflineSink(const Spec& spec) : spec_(spec) {}
  const Spec& spec_;
  Status StageInto(TakenRows& rows, std::optional<int64_t> txn_version);

  std::optional<int64_t> from_ms_, to_ms_;
  bool partitioned_ = false;  // The events table has partition and offset columns.
  bool lookups_ = false;      // The events table has the lookups column.
  std::vector<std::string> key_parts_;  // Scratch of AddEvent and AddFeatures (under add_mutex_).
  std::mutex add_mutex_;      // AddEvent and AddFeatures may come from several processing threads at once.
  uint64_t feature_rows_ = 0;
  std::unique_ptr<OfflineTable> events_;
  std::unique_ptr<OfflineTable> features_;
  // The reference tables' histories (with the events table), each with its staged commit.
  struct History {
    std::unique_ptr<OfflineTable> table;
    std::optional<StagedCommit> staged;
  };
  std::vector<History> histories_;
  // Staged and not yet published (a failed checkpoint leaves it for the next one), per table: at most one
  // commit, since every Stage folds its files into it.
  std::optional<StagedCommit> events_staged_;
  std::optional<StagedCommit> features_staged_;
  // Taken rows a failed StageTaken kept, oldest first (touched only by StageTaken, one call at a time).
  std::deque<TakenRows> unstaged_;
  std::atomic<uint64_t> unstaged_bytes_{0};
};

}  // namespace freshet

// OfflineTable: one table of the offline store (Parquet files + a Delta log), written in commits that are
// tied to checkpoints.
//
// Rows are buffered column by column. At a checkpoint the runtime calls Stage, which writes the buffered
// rows as zstd-compressed Parquet files into a staging folder (fsynced) and returns a StagedCommit; the
// runtime records the StagedCommit in its checkpoint, then calls Publish, which moves the files into the
// table and writes the Delta commit. After a crash, recovery publishes the StagedCommit of the checkpoint
// it starts from (Publish is idempotent) and drops staged files that no checkpoint recorded: their events
// are read again from the source. So the table holds every event of the checkpointed prefix exactly once,
// and a reader never sees a half-written file: files enter the table folder complete and Delta readers see
// them only once the commit names them.
//
//   table->BeginRow(event_time_ms);            // The time whose UTC date partitions the row (if partitioned).
//   table->PutString(entity); table->PutTimestampMs(event_time_ms); table->PutDouble(x); ...
//   FRESHET_ASSIGN_OR_RETURN(std::optional<StagedCommit> staged, table->Stage(checkpoint_sequence));
//   ... write the checkpoint holding staged->Encode() ...
//   if (staged) FRESHET_RETURN_IF_ERROR(table->Publish(*staged));
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "offline/delta_log.h"

namespace freshet {

enum class OfflineType : uint8_t {
  kInt64,
  kDouble,
  kString,
  kTimestamp,  // Put as epoch milliseconds; stored as a UTC timestamp (microseconds, as Delta wants).
  kBool,       // Put with PutBool.
  // Put as the list's JSON text (PutString); stored as a Parquet list (offline/list_column.h).
  kStringList,   // last_k: list<string>.
  kValueCounts,  // top_k: list<struct<value: string, count: int64>>.
};

struct OfflineColumn {
  std::string name;
  OfflineType type = OfflineType::kString;
  bool nullable = true;
};

struct OfflineTableOptions {
  std::string table_dir;
  std::string staging_dir;  // On the same file system as table_dir; holds files until their commit.
  std::vector<OfflineColumn> columns;
  // When set, rows are partitioned by the UTC date of BeginRow's time into `<partition_column>=YYYY-MM-DD/`.
  std::string partition_column;
  std::string app_id = "freshet";          // Delta txn appId of this writer.
  int64_t row_group_rows = 256 * 1024;     // Rows per Parquet row group.
  // A stored schema that differs is widened to hold the new columns too (DeltaLog::EvolveSchema) instead
  // of refused: for tables whose old rows stay valid history under a new spec (the feature log).
  bool evolve_schema = false;
  // Removed files stay on disk this long (for time travel) before `freshet vacuum` may delete them.
  int64_t retention_ms = int64_t{7} * 86'400'000;
  // After every this many published commits the table's small files are compacted (CompactTable); 0: never.
  // Not with shared_writers (compaction needs the table to itself).
  int compact_every = 0;
  // Several processes write the table at once (the members of a Kafka consumer group): each holds a shared
  // lock (compact and vacuum, which take it exclusively, wait until all stop), stages into a folder of its own,
  // publishes with optimistic concurrency (a commit that loses the race for a version retries at the next)
  // and never deletes files it did not write.
  bool shared_writers = false;
  // Each staged file's rows are sorted by their first column (seq), which the writer gives in another order
  // than the rows arrive (seq made of a Kafka partition and offset).
  bool sort_by_first_column = false;
};

// What compaction rewrites: per partition, runs of files smaller than `small_file_bytes`, each run of two or
// more files (up to `target_file_bytes` of input) into one file, in seq order.
struct CompactionOptions {
  std::string staging_dir;  // Where the new files are written before they move into the table.
  std::string app_id;       // Tags the new files (as Publish tags its own).
  int64_t small_file_bytes = int64_t{32} << 20;
  int64_t target_file_bytes = int64_t{128} << 20;
  int64_t retention_ms = int64_t{7} * 86'400'000;
};

struct CompactionResult {
  size_t files_removed = 0;
  size_t files_added = 0;
  uint64_t rows = 0;
  int64_t version = -1;  // The commit, -1 when there was nothing to compact.
};

// Rewrites small files of the table at `table_dir` into larger ones and commits a `dataChange: false`
// rewrite (OPTIMIZE: remove + add). The removed files stay until VacuumTable. Refuses (kInvalidArgument)
// while another process has the table open for writing (a running `freshet run`).
Result<CompactionResult> CompactTable(const std::string& table_dir, const CompactionOptions& options);

struct VacuumResult {
  std::vector<std::string> deleted;  // Relative paths (would be deleted, with dry_run).
  uint64_t deleted_bytes = 0;
  size_t kept = 0;  // Files out of the table but still within the retention.
};

// Deletes the Parquet files in the table's folder that its newest version does not reference and that were
// removed (or, never referenced, written) more than `retention_ms` ago. With `dry_run` only lists them.
// Refuses (kInvalidArgument) while another process has the table open for writing.
Result<VacuumResult> VacuumTable(const std::string& table_dir, int64_t retention_ms, bool dry_run);


// The files of one Stage and the Delta commit that publishes them; serializable into a checkpoint. The
// commit's version is chosen when it is published (the next free one); `txn_version` (the checkpoint
// sequence, or nullopt) tells Publish whether a crash came after the commit was already written.
struct StagedCommit {
  std::optional<int64_t> txn_version;
  struct File {
    std::string staged_path;  // Absolute, in the staging folder.
    DeltaFile file;           // Path relative to the table folder.
  };
  std::vector<File> files;
  std::vector<std::string> removes;  // Files dropped by this commit (an overwrite).
  bool replace_metadata = false;

  std::string Encode() const;
  static Result<StagedCommit> Decode(std::string_view bytes);
};

class OfflineTable {
 public:
  // Opens (creating when absent) the table for writing, holding an exclusive lock on its folder until
  // destroyed (a second writer, in any process, is refused). A table whose stored schema differs from
  // `columns` is an error unless `overwrite` is set, in which case the first Stage replaces the table's
  // content and schema. So is, unless `overwrite`, a table another writer appended files to. A new table gets
  // a zero-row file, so that readers of plain Parquet see its columns before any row.
  static Result<std::unique_ptr<OfflineTable>> Open(OfflineTableOptions options, bool overwrite = false);
  ~OfflineTable();

  // Starts a row; then exactly one Put per column, in column order.
  void BeginRow(int64_t partition_time_ms);
  void PutInt(int64_t value);
  void PutDouble(double value);
  void PutString(std::string_view value);
  void PutTimestampMs(int64_t epoch_ms);
  void PutBool(bool value);
  void PutNull();

  size_t buffered_rows() const;
  uint64_t buffered_bytes() const;

  // Writes the buffered rows to staged Parquet files and empties the buffer. nullopt when there is
  // nothing to commit.
  Result<std::optional<StagedCommit>> Stage(std::optional<int64_t> txn_version);

  // Stage in two steps, so the slow part can run on another thread while rows keep being added:
  // TakeRows empties the buffer in O(columns); StageRows writes the taken rows. One StageRows at a time.
  // StageRows empties *rows only when it succeeds: after a failure (a full disk) the rows are still there,
  // to be staged again, and no file of the failed attempt is left in the staging folder.
  struct Rows;
  struct RowsDeleter {
    void operator()(Rows* rows) const;
  };
  using RowsPtr = std::unique_ptr<Rows, RowsDeleter>;
  RowsPtr TakeRows();
  Result<std::optional<StagedCommit>> StageRows(RowsPtr& rows, std::optional<int64_t> txn_version);
  // The bytes of taken rows (as buffered_bytes() counts them); 0 for none.
  static uint64_t RowsBytes(const RowsPtr& rows);
  // Moves the staged files into the table and writes the commit. Safe to call again for a commit a crash
  // interrupted: when the table's newest txn version for this writer is at or past the commit's, the
  // commit is in already and nothing is done.
  // `app_id`: the writer the commit is from, when another process staged it (a partition's new owner
  // publishes what its checkpoint recorded); empty: this writer's.
  Status Publish(const StagedCommit& commit, const std::string& app_id = {});
  // Deletes staged files (left by a crash before their checkpoint), and files in the table folder that no
  // version of the table references (moved in by a publish a crash cut short). Files removed by a commit stay
  // for time travel until `freshet vacuum`. Call after publishing the restored checkpoint's commit.
  Status DropStaging();
  // Removes from the table, in one commit, every file whose commit's txn version is above `txn_version`
  // (every file with a txn version when nullopt): what a checkpoint older than the newest commit does not
  // cover, because its events will be read again. Returns how many files were removed.
  Result<size_t> RollBackAfter(std::optional<int64_t> txn_version);
  // CompactTable on this open table (it holds the table's lock).
  Result<CompactionResult> Compact();

  const DeltaLog& log() const;
  const OfflineTableOptions& options() const;

 private:
  struct Impl;
  explicit OfflineTable(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The Delta schema column of an offline column.
DeltaColumn ToDeltaColumn(const OfflineColumn& column);

// "YYYY-MM-DD", the UTC date of epoch milliseconds.
std::string UtcDate(int64_t epoch_ms);

}  // namespace freshet

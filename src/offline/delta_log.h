// DeltaLog: the Delta Lake transaction log of one offline table, enough of the protocol for Freshet's
// tables to be read as they are by Spark, the `deltalake` package, DuckDB's delta extension and pandas.
//
// A table is a folder of Parquet files and a `_delta_log/` folder of commits, 00000000000000000000.json,
// 00000000000000000001.json, ...; each commit is JSON lines of actions. The table's content is every file
// `add`ed and not later `remove`d. Version 0 holds `protocol` (reader 1, writer 2) and `metaData` (schema
// as Spark's JSON schema, partition columns). A commit appears atomically: it is written to a temporary
// file (named uniquely), fsynced and renamed into place without replacing an existing version, so a reader sees
// it whole or not at all and two writers, also in different processes, cannot both win a version: the loser
// learns it (Commit's *existed), Refresh()es and tries the next version (optimistic concurrency; appends do not
// conflict).
//
// Every `add` carries statistics (numRecords, and per column minValues, maxValues, nullCount) so readers can
// skip files, and tags naming the Freshet writer and its txn version. Every kCheckpointInterval commits the
// log is summarized in a classic single-file Parquet checkpoint (`<version>.checkpoint.parquet`, pointed to by
// `_delta_log/_last_checkpoint`); replay (here and in other readers) starts from the newest one. Removed files
// are only dropped from the table's content: the files stay (for time travel) until `freshet vacuum`.
//
//   FRESHET_ASSIGN_OR_RETURN(DeltaLog log, DeltaLog::Open(dir, schema, {"event_date"}));
//   bool existed = false;
//   FRESHET_RETURN_IF_ERROR(log.Commit(DeltaCommit{.version = log.latest_version() + 1, .adds = files}, &existed));
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace freshet {

// One column of a table's schema; `type` is a Delta primitive type name: string, long, double, boolean,
// timestamp (UTC, microseconds in Parquet), date.
struct DeltaColumn {
  std::string name;
  std::string type;
  bool nullable = true;
};

// A data file of the table, its path relative to the table folder.
struct DeltaFile {
  std::string path;
  std::map<std::string, std::string> partition_values;
  uint64_t size_bytes = 0;
  int64_t modification_ms = 0;
  uint64_t num_records = 0;
  // The stats JSON of the file (numRecords, minValues, maxValues, nullCount), as FileStatsJson makes it;
  // empty: numRecords alone.
  std::string stats;
  std::map<std::string, std::string> tags;
  int64_t version = 0;       // The commit that added it (filled by ActiveFiles; a checkpoint's version for
                             // files replayed from one).
  int64_t txn_version = -1;  // That commit's txn version (or the `freshet.txn` tag), -1 when it has none
                             // (filled by ActiveFiles).
  // Filled by ActiveFiles: added with dataChange by a commit that is not Freshet's (another writer appended
  // to the table); `engine` is that commit's commitInfo.engineInfo.
  bool external = false;
  std::string engine;
};

// A file removed from the table's content whose bytes may still be on disk (a Delta tombstone).
struct RemovedFile {
  std::string path;
  int64_t deletion_ms = 0;  // remove.deletionTimestamp.
};

struct DeltaCommit {
  int64_t version = 0;
  std::vector<DeltaFile> adds;
  std::vector<std::string> removes;       // Paths of files to drop from the table.
  std::string app_id;                     // With txn_version: a `txn` action, so a writer can tell
  std::optional<int64_t> txn_version;     // which of its transactions are in the table.
  bool replace_metadata = false;          // Write the schema again (a backfill that changes features).
  std::string operation = "WRITE";        // commitInfo.operation.
  bool data_change = true;                // false: a rewrite (compaction) of rows already in the table.
};

class DeltaLog {
 public:
  // Opens the table at `table_dir`, creating the folder and version 0 when the table has no log yet.
  // An existing table keeps its schema; schema_matches() tells whether it equals `schema`.
  static Result<DeltaLog> Open(const std::string& table_dir, std::vector<DeltaColumn> schema,
                               std::vector<std::string> partition_columns);

  // Writes commit `commit.version` (normally latest_version() + 1): when the version already exists (another
  // writer won it), *existed is set, nothing is written and an error is returned.
  Status Commit(const DeltaCommit& commit, bool* existed);

  // Widens the stored schema, in one metaData commit, to hold every wanted column too: new columns are
  // appended (nullable; older files read as null there), stored columns the spec no longer has are kept. A
  // column whose type changed is an error. Afterwards the table's schema is the union.
  Status EvolveSchema();

  // Commits are summarized in a Parquet checkpoint every this many versions.
  static constexpr int64_t kCheckpointInterval = 10;

  // The files of the table as of the newest commit, in the order they were added.
  Result<std::vector<DeltaFile>> ActiveFiles() const;
  // The files removed and not added again as of the newest commit (as far back as the log's replay sees:
  // a checkpoint keeps only the tombstones younger than the retention).
  Result<std::vector<RemovedFile>> RemovedFiles() const;
  // Writes the checkpoint of the newest version and points `_last_checkpoint` at it. Commit does this by
  // itself every kCheckpointInterval versions.
  Status WriteCheckpoint();
  // How long removed files are kept (tombstones younger than this stay in checkpoints). Default 7 days.
  void set_retention_ms(int64_t ms) { retention_ms_ = ms; }
  // The same for a table that is only read: one pass over its log, nothing created or written.
  static Result<std::vector<DeltaFile>> ReadActiveFiles(const std::string& table_dir);
  // The txn version of the newest commit that recorded one for `app_id`, if any.
  std::optional<int64_t> TxnVersion(const std::string& app_id) const;

  // Reads the log again: the commits other writers (other processes of a consumer group) made since.
  Status Refresh() { return ReadVersions(); }

  int64_t latest_version() const { return latest_version_; }
  bool schema_matches() const { return schema_matches_; }
  const std::string& table_dir() const { return table_dir_; }
  // The schema recorded in the table, as Spark JSON.
  const std::string& stored_schema() const { return stored_schema_; }
  // The wanted schema, as Spark JSON.
  std::string SchemaString() const;

 private:
  Status ReadVersions();
  int64_t retention_ms_ = int64_t{7} * 86'400'000;
  std::string table_dir_;
  std::vector<DeltaColumn> schema_;
  std::vector<std::string> partition_columns_;
  int64_t latest_version_ = -1;
  bool schema_matches_ = true;
  std::string stored_schema_;
  std::map<std::string, int64_t> txn_versions_;  // app id -> txn version of its newest commit with one.
  std::string table_id_;  // metaData.id, kept across schema changes.
};

// The file name of commit `version` in `_delta_log/`: 20 digits and ".json".
std::string DeltaCommitFileName(int64_t version);
// The file name of the classic checkpoint of `version`: 20 digits and ".checkpoint.parquet".
std::string DeltaCheckpointFileName(int64_t version);

}  // namespace freshet

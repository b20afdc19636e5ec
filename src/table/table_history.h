// The history of a reference table in the offline store: <offline>/table_<name>, a Delta table (unpartitioned)
// with one row per version as it arrived:
//   version (long: the table's versions numbered in arrival order), seq (long: its place in the event stream,
//   the seq of the first event accepted after it), key (string), valid_from (timestamp; null without
//   `valid_from`), arrival_time (timestamp: when Freshet received it), row (string: the row as a JSON object).
// Replaying the events table with these versions added before the event whose seq they name gives every event
// the join it had in the stream (backfill, historical from the store).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "offline/offline_table.h"
#include "offline/tables.h"
#include "spec/spec.h"
#include "table/table_set.h"

namespace freshet {

std::vector<OfflineColumn> TableHistoryColumns();

// <offline>/table_<name>, for the offline folder `offline_root`.
std::string TableHistoryDir(const std::string& offline_root, const std::string& table);

OfflineTableOptions TableHistoryOptions(const OfflinePaths& paths, const std::string& table);

// Appends one version to an open history table.
void PutTableVersion(OfflineTable& history, int64_t version, int64_t seq, const TableRow& row, int64_t arrival_ms);

struct StoredVersion {
  int64_t version = 0;
  int64_t seq = 0;
  TableRow row;
};

// Every version in the table history at `table_dir`, in arrival (version) order; none when the folder holds no
// table yet.
Result<std::vector<StoredVersion>> ReadTableHistory(const std::string& table_dir);

// Feeds recorded versions to a TableSet in the stream's order while events are replayed: before the event
// numbered `seq`, AddUpTo(seq) adds every version that arrived before it.
class TableReplay {
 public:
  // Reads the history of every table of `spec` in the offline folder `offline_root`.
  static Result<TableReplay> FromStore(const Spec& spec, const std::string& offline_root);
  // Every row of each named file (`--table name=FILE`), as if all arrived before the first event.
  static Result<TableReplay> FromFiles(const Spec& spec,
                                       const std::vector<std::pair<std::string, std::string>>& name_and_path);

  // Adds to `tables` every version not yet added that arrived before the event numbered `seq`.
  void AddUpTo(TableSet& tables, int64_t seq);

 private:
  struct Pending {
    size_t table;
    StoredVersion version;
  };
  std::vector<Pending> pending_;  // By seq, then version.
  size_t next_ = 0;
};

}  // namespace freshet

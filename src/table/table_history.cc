#include "table/table_history.h"

#include <algorithm>
#include <filesystem>

#include "offline/parquet_scan.h"
#include "table/table_file.h"

namespace freshet {

std::vector<OfflineColumn> TableHistoryColumns() {
  return {{"version", OfflineType::kInt64, false},      {"seq", OfflineType::kInt64, false},
          {"key", OfflineType::kString, false},         {"valid_from", OfflineType::kTimestamp, true},
          {"arrival_time", OfflineType::kTimestamp, false}, {"row", OfflineType::kString, false}};
}

std::string TableHistoryDir(const std::string& offline_root, const std::string& table) {
  return offline_root + "/table_" + table;
}

OfflineTableOptions TableHistoryOptions(const OfflinePaths& paths, const std::string& table) {
  OfflineTableOptions o;
  o.table_dir = TableHistoryDir(paths.root, table);
  o.staging_dir = paths.Staging("table_" + table);
  o.columns = TableHistoryColumns();
  o.app_id = "freshet-table_" + table;
  o.retention_ms = paths.retention_ms;
  o.compact_every = paths.compact_every;
  return o;
}

void PutTableVersion(OfflineTable& history, int64_t version, int64_t seq, const TableRow& row, int64_t arrival_ms) {
  history.BeginRow(arrival_ms);
  history.PutInt(version);
  history.PutInt(seq);
  history.PutString(row.key);
  if (row.valid_from_ms == kAlwaysValidMs) {
    history.PutNull();
  } else {
    history.PutTimestampMs(row.valid_from_ms);
  }
  history.PutTimestampMs(arrival_ms);
  history.PutString(row.json);
}

Result<std::vector<StoredVersion>> ReadTableHistory(const std::string& table_dir) {
  std::vector<StoredVersion> versions;
  if (!std::filesystem::exists(std::filesystem::path(table_dir) / "_delta_log")) return versions;
  FRESHET_ASSIGN_OR_RETURN(std::vector<std::string> files, DeltaTableFiles(table_dir));
  for (const std::string& file : files) {
    FRESHET_ASSIGN_OR_RETURN(std::unique_ptr<ParquetScanner> scanner,
                             ParquetScanner::Open(file, {"version", "seq", "key", "valid_from", "row"}));
    ScanBatch batch;
    while (true) {
      FRESHET_ASSIGN_OR_RETURN(bool more, scanner->Next(&batch));
      if (!more) break;
      const auto& c = batch.columns;
      for (size_t r = 0; r < batch.rows; ++r) {
        StoredVersion v;
        v.version = c[0].ints[r];
        v.seq = c[1].ints[r];
        v.row.key = std::string(c[2].strings[r]);
        const bool has_from = c[3].valid.empty() || c[3].valid[r] != 0;
        v.row.valid_from_ms = has_from ? c[3].ints[r] : kAlwaysValidMs;
        v.row.json = std::string(c[4].strings[r]);
        versions.push_back(std::move(v));
      }
    }
  }
  std::stable_sort(versions.begin(), versions.end(),
                   [](const StoredVersion& a, const StoredVersion& b) { return a.version < b.version; });
  return versions;
}

Result<TableReplay> TableReplay::FromStore(const Spec& spec, const std::string& offline_root) {
  TableReplay replay;
  for (size_t t = 0; t < spec.tables.size(); ++t) {
    FRESHET_ASSIGN_OR_RETURN(std::vector<StoredVersion> versions,
                             ReadTableHistory(TableHistoryDir(offline_root, spec.tables[t].name)));
    for (StoredVersion& v : versions) replay.pending_.push_back(Pending{t, std::move(v)});
  }
  std::stable_sort(replay.pending_.begin(), replay.pending_.end(), [](const Pending& a, const Pending& b) {
    return a.version.seq < b.version.seq;
  });
  return replay;
}

Result<TableReplay> TableReplay::FromFiles(const Spec& spec,
                                           const std::vector<std::pair<std::string, std::string>>& name_and_path) {
  TableReplay replay;
  for (const auto& [name, path] : name_and_path) {
    auto it = std::find_if(spec.tables.begin(), spec.tables.end(), [&](const TableSpec& t) { return t.name == name; });
    if (it == spec.tables.end()) {
      std::string names;
      for (const TableSpec& t : spec.tables) names += (names.empty() ? "" : ", ") + t.name;
      return Status::Invalid("--table " + name + "=" + path + ": the spec has no table '" + name + "' (" +
                             (names.empty() ? std::string("it declares none") : "its tables: " + names) + ")");
    }
    TableSpec table = *it;
    table.format = path.ends_with(".csv") ? "csv" : path.ends_with(".parquet") ? "parquet" : "jsonl";
    TableFileReader reader(table, path);
    std::vector<TableRow> rows;
    std::vector<std::string> errors;
    FRESHET_RETURN_IF_ERROR(reader.ReadNew(&rows, &errors));
    if (!errors.empty()) {
      return Status::Invalid(errors.front() + (errors.size() > 1 ? " (and " + std::to_string(errors.size() - 1) +
                                                                        " more rows that cannot be read)"
                                                                  : ""));
    }
    const size_t t = static_cast<size_t>(it - spec.tables.begin());
    int64_t number = 0;
    for (TableRow& row : rows) replay.pending_.push_back(Pending{t, StoredVersion{number++, 0, std::move(row)}});
  }
  return replay;
}

void TableReplay::AddUpTo(TableSet& tables, int64_t seq) {
  // Sizes each table once for the versions about to be added (a whole file, for historical --table).
  size_t end = next_;
  while (end < pending_.size() && pending_[end].version.seq <= seq) ++end;
  if (end - next_ > 1) {
    std::vector<size_t> rows;
    for (size_t k = next_; k < end; ++k) {
      if (pending_[k].table >= rows.size()) rows.resize(pending_[k].table + 1);
      ++rows[pending_[k].table];
    }
    for (size_t t = 0; t < rows.size(); ++t) {
      if (rows[t] > 0) tables.Reserve(t, rows[t]);
    }
  }
  while (next_ < pending_.size() && pending_[next_].version.seq <= seq) {
    Pending& p = pending_[next_++];
    tables.Add(p.table, p.version.row, std::numeric_limits<int64_t>::min());
    std::string().swap(p.version.row.json);  // Added: the set keeps what it needs.
  }
}

}  // namespace freshet

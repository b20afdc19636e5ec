#include "offline/tables.h"

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <limits>
#include <queue>

#include "common/entity_key.h"
#include "event/event_parser.h"
#include "offline/list_column.h"
#include "offline/parquet_scan.h"

namespace freshet {

OfflinePaths OfflinePathsFor(const Spec& spec, const std::string& data_dir) {
  OfflinePaths p;
  p.root = spec.offline.path.empty() ? (std::filesystem::path(data_dir) / "offline").string() : spec.offline.path;
  p.events = p.root + "/events";
  p.features = p.root + "/features";
  p.feature_log = p.root + "/feature_log";
  p.retention_ms = spec.offline.retention_ms;
  p.compact_every = spec.offline.compact_every;
  return p;
}

std::vector<OfflineColumn> KeyColumns(const std::vector<std::string>& key_fields) {
  std::vector<OfflineColumn> columns;
  if (key_fields.size() < 2) return columns;
  for (const std::string& field : key_fields) columns.push_back({field, OfflineType::kString, true});
  return columns;
}

void PutKeyParts(OfflineTable& table, const std::vector<std::string>& key_fields, std::string_view entity,
                 std::vector<std::string>* parts) {
  if (key_fields.size() < 2) return;
  const bool decoded = DecodeEntityKey(entity, parts) && parts->size() == key_fields.size();
  for (size_t k = 0; k < key_fields.size(); ++k) decoded ? table.PutString((*parts)[k]) : table.PutNull();
}

std::vector<OfflineColumn> EventsTableColumns(bool partitioned, const std::vector<std::string>& key_fields, bool lookups) {
  std::vector<OfflineColumn> columns = {{"seq", OfflineType::kInt64, false},
                                        {"event_time", OfflineType::kTimestamp, false},
                                        {"entity", OfflineType::kString, false}};
  for (OfflineColumn& c : KeyColumns(key_fields)) columns.push_back(std::move(c));
  columns.push_back({"ingest_time", OfflineType::kTimestamp, false});
  columns.push_back({"raw", OfflineType::kString, false});
  if (partitioned) {
    columns.push_back({"partition", OfflineType::kInt64, false});
    columns.push_back({"offset", OfflineType::kInt64, false});
  }
  if (lookups) columns.push_back({"lookups", OfflineType::kString, true});
  return columns;
}

std::vector<OfflineColumn> FeaturesTableColumns(const Spec& spec) {
  std::vector<OfflineColumn> columns = {{"seq", OfflineType::kInt64, false}, {"entity", OfflineType::kString, false}};
  for (OfflineColumn& c : KeyColumns(spec.entity_fields)) columns.push_back(std::move(c));
  columns.push_back({"event_time", OfflineType::kTimestamp, false});
  columns.push_back({"processing_time", OfflineType::kTimestamp, false});
  for (const FeatureSpec& f : spec.features) columns.push_back({f.name, FeatureColumnType(f), true});
  return columns;
}

std::vector<OfflineColumn> FeatureLogColumns(const Spec& spec) {
  std::vector<OfflineColumn> columns = {{"request_id", OfflineType::kString, false},
                                        {"entity", OfflineType::kString, false},
                                        {"as_of", OfflineType::kTimestamp, false},
                                        {"served_at", OfflineType::kTimestamp, false},
                                        {"served_features", OfflineType::kString, false},
                                        {"exact", OfflineType::kBool, true}};
  // Lists stay JSON text here: `freshet skew` compares the served text, and the log's schema evolves by
  // primitive types only.
  for (const FeatureSpec& f : spec.features) {
    const OfflineType type = FeatureColumnType(f);
    columns.push_back({f.name, IsListColumn(type) ? OfflineType::kString : type, true});
  }
  return columns;
}

OfflineType FeatureColumnType(const FeatureSpec& feature) {
  switch (feature.agg) {
    case AggKind::kCount:
    case AggKind::kCountDistinct:
    case AggKind::kApproxCountDistinct: return OfflineType::kInt64;
    case AggKind::kLast:
    case AggKind::kFirst: return OfflineType::kString;
    case AggKind::kTopK: return OfflineType::kValueCounts;
    case AggKind::kLastK: return OfflineType::kStringList;
    default: return OfflineType::kDouble;
  }
}

Value FeatureCell(const FeatureSpec& feature, const Value& value, std::string* scratch) {
  switch (FeatureColumnType(feature)) {
    case OfflineType::kInt64:
      if (value.type == ValueType::kInt) return value;
      if (value.type == ValueType::kDouble) return Value::Int(static_cast<int64_t>(value.d));
      return Value::Null();
    case OfflineType::kDouble:
      if (value.is_number()) return Value::Double(value.as_double());
      return Value::Null();
    default: {
      char buf[64];
      switch (value.type) {
        case ValueType::kString: return value;
        case ValueType::kBool: return Value::String(value.b ? "true" : "false");
        case ValueType::kInt: {
          auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value.i);
          scratch->assign(buf, end);
          return Value::String(*scratch);
        }
        case ValueType::kDouble: {
          auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value.d);
          scratch->assign(buf, end);
          return Value::String(*scratch);
        }
        default: return Value::Null();
      }
    }
  }
}

void PutFeatureValue(OfflineTable& table, const FeatureSpec& feature, const Value& value) {
  std::string scratch;
  const Value cell = FeatureCell(feature, value, &scratch);
  switch (cell.type) {
    case ValueType::kInt: return table.PutInt(cell.i);
    case ValueType::kDouble: return table.PutDouble(cell.d);
    case ValueType::kString: return table.PutString(cell.s);
    default: return table.PutNull();
  }
}

std::string TableAppId(const std::string& name, const std::string& member) {
  return member.empty() ? "freshet-" + name : "freshet-" + name + "-" + member;
}

OfflineTableOptions TableOptions(const OfflinePaths& paths, const std::string& name, std::vector<OfflineColumn> columns) {
  OfflineTableOptions o;
  o.table_dir = name == "events" ? paths.events : name == "features" ? paths.features : paths.feature_log;
  o.staging_dir = paths.Staging(name);
  o.columns = std::move(columns);
  o.partition_column = name == "feature_log" ? "served_date" : "event_date";
  o.app_id = TableAppId(name, paths.group_member);
  o.evolve_schema = name == "feature_log";
  o.retention_ms = paths.retention_ms;
  o.compact_every = paths.compact_every;
  if (!paths.group_member.empty()) {
    o.shared_writers = true;
    // Group members number rows by partition and offset (see EventPath::SharedSequence::from_place).
    o.sort_by_first_column = name != "feature_log";
  }
  return o;
}

Status ReplayEventsTable(const std::string& table_dir, const std::function<Status(const StoredEvent&)>& each) {
  FRESHET_ASSIGN_OR_RETURN(std::vector<std::string> files, DeltaTableFiles(table_dir));
  // A commit's files partition one seq range by date; merge every file by seq (files are each in seq order).
  struct Cursor {
    std::unique_ptr<ParquetScanner> scanner;
    ScanBatch batch;
    size_t row = 0;
    int64_t last_seq = std::numeric_limits<int64_t>::min();
    bool has_place = false;
    bool has_lookups = false;
  };
  std::vector<Cursor> cursors(files.size());
  auto advance = [&](Cursor& c) -> Result<bool> {
    if (++c.row < c.batch.rows) return true;
    c.row = 0;
    while (true) {
      FRESHET_ASSIGN_OR_RETURN(bool more, c.scanner->Next(&c.batch));
      if (!more) return false;
      if (c.batch.rows > 0) return true;
    }
  };
  auto seq_of = [&](size_t k) { return cursors[k].batch.columns[0].ints[cursors[k].row]; };
  auto later = [&](size_t a, size_t b) { return seq_of(a) > seq_of(b); };
  std::priority_queue<size_t, std::vector<size_t>, decltype(later)> heap(later);
  for (size_t k = 0; k < files.size(); ++k) {
    FRESHET_ASSIGN_OR_RETURN(cursors[k].scanner, ParquetScanner::Open(files[k], {"seq", "raw"}));
    const std::vector<std::string>& names = cursors[k].scanner->column_names();
    const bool has_place = std::find(names.begin(), names.end(), "partition") != names.end();
    const bool has_lookups = std::find(names.begin(), names.end(), "lookups") != names.end();
    if (has_place || has_lookups) {
      std::vector<std::string> wanted = {"seq", "raw", "partition", "offset"};
      if (!has_place) wanted.resize(2);
      if (has_lookups) wanted.push_back("lookups");
      FRESHET_ASSIGN_OR_RETURN(cursors[k].scanner, ParquetScanner::Open(files[k], wanted));
    }
    cursors[k].has_place = has_place;
    cursors[k].has_lookups = has_lookups;
    cursors[k].row = static_cast<size_t>(-1);
    cursors[k].batch.rows = 0;
    FRESHET_ASSIGN_OR_RETURN(bool has, advance(cursors[k]));
    if (has) heap.push(k);
  }
  StoredEvent e;
  std::string padded;  // For a raw line too close to the end of its buffer to be parsed in place.
  while (!heap.empty()) {
    const size_t k = heap.top();
    heap.pop();
    Cursor& c = cursors[k];
    const auto& cols = c.batch.columns;
    e.seq = cols[0].ints[c.row];
    e.raw = cols[1].strings[c.row];
    e.has_place = c.has_place;
    if (e.has_place) {
      e.partition = cols[2].ints[c.row];
      e.offset = cols[3].ints[c.row];
    }
    e.lookups = c.has_lookups ? cols.back().strings[c.row] : std::string_view();
    const char* end = cols[1].readable_end;
    if (end != nullptr && end >= e.raw.data() && static_cast<size_t>(end - e.raw.data()) >= e.raw.size() + kParsePaddingBytes) {
      e.raw_capacity = static_cast<size_t>(end - e.raw.data());
    } else {
      padded.assign(e.raw);
      padded.append(kParsePaddingBytes, '\0');
      e.raw = std::string_view(padded.data(), e.raw.size());
      e.raw_capacity = padded.size();
    }
    if (e.seq <= c.last_seq) {
      // Freshet writes each file in seq order; a file rewritten by another tool (a compaction, a
      // partitioned rewrite) may not be, and replaying it out of order would change the results.
      return Status::Invalid("events table file '" + files[k] + "' is not in seq order (seq " + std::to_string(e.seq) +
                             " after " + std::to_string(c.last_seq) + "); it was rewritten by another tool: sort each "
                             "file by seq, or replay from the original events with --events");
    }
    c.last_seq = e.seq;
    FRESHET_RETURN_IF_ERROR(each(e));
    FRESHET_ASSIGN_OR_RETURN(bool more, advance(c));
    if (more) heap.push(k);
  }
  return Status::Ok();
}

Result<std::vector<int64_t>> EventsTablePartitions(const std::string& table_dir) {
  FRESHET_ASSIGN_OR_RETURN(std::vector<std::string> files, DeltaTableFiles(table_dir));
  std::vector<int64_t> partitions;
  for (const std::string& file : files) {
    FRESHET_ASSIGN_OR_RETURN(std::unique_ptr<ParquetScanner> scanner, ParquetScanner::Open(file, {"seq"}));
    const std::vector<std::string>& names = scanner->column_names();
    if (std::find(names.begin(), names.end(), "partition") == names.end()) continue;
    FRESHET_ASSIGN_OR_RETURN(scanner, ParquetScanner::Open(file, {"partition"}));
    ScanBatch batch;
    while (true) {
      FRESHET_ASSIGN_OR_RETURN(bool more, scanner->Next(&batch));
      if (!more) break;
      for (size_t r = 0; r < batch.rows; ++r) {
        const int64_t p = batch.columns[0].ints[r];
        if (std::find(partitions.begin(), partitions.end(), p) == partitions.end()) partitions.push_back(p);
      }
    }
  }
  std::sort(partitions.begin(), partitions.end());
  return partitions;
}

}  // namespace freshet

#include "offline/delta_log.h"

#include <simdjson.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>

#include "common/files.h"
#include "common/time.h"
#include "serve/json.h"

namespace freshet {
namespace {

constexpr const char* kLogFolder = "_delta_log";

// A random version-4 UUID, as Delta wants for a table id.
std::string NewUuid() {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^ static_cast<uint64_t>(WallClockMs()));
  uint64_t hi = rng(), lo = rng();
  hi = (hi & 0xFFFFFFFFFFFF0FFFull) | 0x0000000000004000ull;
  lo = (lo & 0x3FFFFFFFFFFFFFFFull) | 0x8000000000000000ull;
  char text[37];
  std::snprintf(text, sizeof(text), "%08x-%04x-%04x-%04x-%012llx", static_cast<unsigned>(hi >> 32),
                static_cast<unsigned>((hi >> 16) & 0xFFFF), static_cast<unsigned>(hi & 0xFFFF),
                static_cast<unsigned>(lo >> 48), static_cast<unsigned long long>(lo & 0xFFFFFFFFFFFFull));
  return text;
}

std::optional<int64_t> ParseCommitFileName(const std::string& name) {
  if (name.size() != 25 || name.compare(20, 5, ".json") != 0) return std::nullopt;
  int64_t version = 0;
  for (int k = 0; k < 20; ++k) {
    if (name[k] < '0' || name[k] > '9') return std::nullopt;
    version = version * 10 + (name[k] - '0');
  }
  return version;
}

// The newest commit version in the table's log folder, -1 when it has none.
Result<int64_t> LatestVersion(const std::string& table_dir) {
  int64_t latest = -1;
  std::error_code ec;
  const std::filesystem::path folder = std::filesystem::path(table_dir) / kLogFolder;
  for (std::filesystem::directory_iterator it(folder, ec); !ec && it != std::filesystem::directory_iterator();
       it.increment(ec)) {
    if (std::optional<int64_t> v = ParseCommitFileName(it->path().filename().string())) latest = std::max(latest, *v);
  }
  if (ec) return Status::IoError("cannot list '" + folder.string() + "': " + ec.message());
  return latest;
}

// Calls `action(version, doc)` for every action of every commit, in order.
template <typename Fn>
Status ForEachAction(const std::string& table_dir, int64_t latest, Fn&& action) {
  const std::filesystem::path folder = std::filesystem::path(table_dir) / kLogFolder;
  simdjson::dom::parser parser;
  for (int64_t v = 0; v <= latest; ++v) {
    const std::string path = (folder / DeltaCommitFileName(v)).string();
    Result<std::string> text = ReadWholeFile(path);
    if (!text.ok()) continue;
    size_t start = 0;
    while (start < text->size()) {
      size_t end = text->find('\n', start);
      if (end == std::string::npos) end = text->size();
      std::string_view line(text->data() + start, end - start);
      start = end + 1;
      if (line.empty()) continue;
      simdjson::dom::element doc;
      if (parser.parse(line.data(), line.size()).get(doc) != simdjson::SUCCESS) {
        return Status::Invalid(path + ": a line is not valid JSON; the Delta log is damaged");
      }
      action(v, doc);
    }
  }
  return Status::Ok();
}

}  // namespace

std::string DeltaCommitFileName(int64_t version) {
  char name[32];
  std::snprintf(name, sizeof(name), "%020lld.json", static_cast<long long>(version));
  return name;
}

std::string DeltaLog::SchemaString() const {
  std::string text;
  JsonWriter json(&text);
  json.BeginObject().Key("type").String("struct").Key("fields").BeginArray();
  for (const DeltaColumn& c : schema_) {
    json.BeginObject().Key("name").String(c.name).Key("type").String(c.type).Key("nullable").Bool(c.nullable);
    json.Key("metadata").BeginObject().EndObject().EndObject();
  }
  json.EndArray().EndObject();
  return text;
}

Result<DeltaLog> DeltaLog::Open(const std::string& table_dir, std::vector<DeltaColumn> schema,
                                std::vector<std::string> partition_columns) {
  DeltaLog log;
  log.table_dir_ = table_dir;
  log.schema_ = std::move(schema);
  log.partition_columns_ = std::move(partition_columns);
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(table_dir) / kLogFolder, ec);
  if (ec) {
    return Status::IoError("cannot create offline table folder '" + table_dir + "': " + ec.message() +
                           "; check the `offline.path` of the spec and its permissions");
  }
  FRESHET_RETURN_IF_ERROR(log.ReadVersions());
  if (log.latest_version_ < 0) {
    DeltaCommit first;
    first.version = 0;
    first.replace_metadata = true;
    first.operation = "CREATE TABLE";
    bool existed = false;
    Status status = log.Commit(first, &existed);
    if (!status.ok() && !existed) return status;
    FRESHET_RETURN_IF_ERROR(log.ReadVersions());
  }
  return log;
}

Status DeltaLog::ReadVersions() {
  FRESHET_ASSIGN_OR_RETURN(latest_version_, LatestVersion(table_dir_));
  // The schema in force is that of the newest metaData action.
  stored_schema_.clear();
  txn_versions_.clear();
  FRESHET_RETURN_IF_ERROR(ForEachAction(table_dir_, latest_version_, [&](int64_t, simdjson::dom::element doc) {
    std::string_view schema, app;
    int64_t txn = 0;
    std::string_view id;
    if (doc["metaData"]["schemaString"].get(schema) == simdjson::SUCCESS) stored_schema_ = std::string(schema);
    if (doc["metaData"]["id"].get(id) == simdjson::SUCCESS) table_id_ = std::string(id);
    if (doc["txn"]["appId"].get(app) == simdjson::SUCCESS && doc["txn"]["version"].get(txn) == simdjson::SUCCESS) {
      txn_versions_[std::string(app)] = txn;
    }
  }));
  schema_matches_ = stored_schema_ == SchemaString();
  return Status::Ok();
}

Status DeltaLog::Commit(const DeltaCommit& commit, bool* existed) {
  *existed = false;
  const int64_t now = WallClockMs();
  std::string text;
  {
    std::string line;
    JsonWriter json(&line);
    json.BeginObject().Key("commitInfo").BeginObject().Key("timestamp").Int(now);
    json.Key("operation").String(commit.operation).Key("engineInfo").String("freshet");
    json.Key("operationParameters").BeginObject().Key("mode").String(commit.removes.empty() ? "Append" : "Overwrite");
    json.EndObject().EndObject().EndObject();
    text += line + "\n";
  }
  if (commit.version == 0) {
    text += "{\"protocol\":{\"minReaderVersion\":1,\"minWriterVersion\":2}}\n";
  }
  if (commit.replace_metadata) {
    std::string line;
    JsonWriter json(&line);
    if (table_id_.empty()) table_id_ = NewUuid();
    json.BeginObject().Key("metaData").BeginObject().Key("id").String(table_id_);
    json.Key("format").BeginObject().Key("provider").String("parquet").Key("options").BeginObject().EndObject().EndObject();
    json.Key("schemaString").String(SchemaString());
    json.Key("partitionColumns").BeginArray();
    for (const std::string& p : partition_columns_) json.String(p);
    json.EndArray().Key("configuration").BeginObject().EndObject().Key("createdTime").Int(now);
    json.EndObject().EndObject();
    text += line + "\n";
  }
  if (!commit.app_id.empty() && commit.txn_version) {
    std::string line;
    JsonWriter json(&line);
    json.BeginObject().Key("txn").BeginObject().Key("appId").String(commit.app_id).Key("version").Int(*commit.txn_version);
    json.Key("lastUpdated").Int(now).EndObject().EndObject();
    text += line + "\n";
  }
  for (const std::string& path : commit.removes) {
    std::string line;
    JsonWriter json(&line);
    json.BeginObject().Key("remove").BeginObject().Key("path").String(path).Key("deletionTimestamp").Int(now);
    json.Key("dataChange").Bool(true).EndObject().EndObject();
    text += line + "\n";
  }
  for (const DeltaFile& f : commit.adds) {
    std::string line;
    JsonWriter json(&line);
    json.BeginObject().Key("add").BeginObject().Key("path").String(f.path).Key("partitionValues").BeginObject();
    for (const auto& [k, v] : f.partition_values) json.Key(k).String(v);
    json.EndObject().Key("size").Uint(f.size_bytes).Key("modificationTime").Int(f.modification_ms);
    json.Key("dataChange").Bool(true).Key("stats").String("{\"numRecords\":" + std::to_string(f.num_records) + "}");
    json.EndObject().EndObject();
    text += line + "\n";
  }
  const std::filesystem::path folder = std::filesystem::path(table_dir_) / kLogFolder;
  const std::string path = (folder / DeltaCommitFileName(commit.version)).string();
  const std::string temporary = (folder / ("." + DeltaCommitFileName(commit.version) + ".tmp")).string();
  FRESHET_RETURN_IF_ERROR(WriteFileDurably(temporary, {text}, "Delta commit"));
  Status status = RenameNoReplace(temporary, path, existed);
  if (!status.ok()) {
    ::remove(temporary.c_str());
    return status;
  }
  FRESHET_RETURN_IF_ERROR(SyncDirectory(folder.string()));
  latest_version_ = std::max(latest_version_, commit.version);
  if (!commit.app_id.empty() && commit.txn_version) txn_versions_[commit.app_id] = *commit.txn_version;
  if (commit.replace_metadata) {
    stored_schema_ = SchemaString();
    schema_matches_ = true;
  }
  return Status::Ok();
}


Status DeltaLog::EvolveSchema() {
  if (schema_matches_) return Status::Ok();
  simdjson::dom::parser parser;
  simdjson::dom::array fields;
  if (parser.parse(stored_schema_)["fields"].get(fields) != simdjson::SUCCESS) {
    return Status::Invalid("the schema of the offline table '" + table_dir_ + "' cannot be read; the Delta log is damaged");
  }
  std::vector<DeltaColumn> merged;
  for (simdjson::dom::element f : fields) {
    std::string_view name, type;
    bool nullable = true;
    if (f["name"].get(name) != simdjson::SUCCESS || f["type"].get(type) != simdjson::SUCCESS) {
      return Status::Invalid("the schema of the offline table '" + table_dir_ + "' has a column without a name or a "
                             "primitive type; Freshet does not change such a table");
    }
    if (f["nullable"].get(nullable) != simdjson::SUCCESS) nullable = true;
    merged.push_back(DeltaColumn{std::string(name), std::string(type), nullable});
  }
  for (const DeltaColumn& want : schema_) {
    auto it = std::find_if(merged.begin(), merged.end(), [&](const DeltaColumn& c) { return c.name == want.name; });
    if (it == merged.end()) {
      merged.push_back(DeltaColumn{want.name, want.type, true});
    } else if (it->type != want.type) {
      return Status::Invalid("column '" + want.name + "' of the offline table '" + table_dir_ + "' is " + it->type +
                             ", the spec now makes it " + want.type + "; rename the feature or set `offline.path` to a "
                             "new folder");
    }
  }
  // Columns the spec dropped stay, and may be null from now on.
  for (DeltaColumn& c : merged) {
    if (std::none_of(schema_.begin(), schema_.end(), [&](const DeltaColumn& w) { return w.name == c.name; })) {
      c.nullable = true;
    }
  }
  schema_ = std::move(merged);
  DeltaCommit commit;
  commit.version = latest_version_ + 1;
  commit.replace_metadata = true;
  commit.operation = "ADD COLUMNS";
  bool existed = false;
  return Commit(commit, &existed);
}

Result<std::vector<DeltaFile>> DeltaLog::ActiveFiles() const { return ReadActiveFiles(table_dir_, latest_version_); }

Result<std::vector<DeltaFile>> DeltaLog::ReadActiveFiles(const std::string& table_dir) {
  FRESHET_ASSIGN_OR_RETURN(int64_t latest, LatestVersion(table_dir));
  return ReadActiveFiles(table_dir, latest);
}

Result<std::vector<DeltaFile>> DeltaLog::ReadActiveFiles(const std::string& table_dir, int64_t latest) {
  std::vector<DeltaFile> files;
  std::map<int64_t, int64_t> txn_by_version;
  FRESHET_RETURN_IF_ERROR(ForEachAction(table_dir, latest, [&](int64_t v, simdjson::dom::element doc) {
    simdjson::dom::element add, remove, txn;
    int64_t txn_version = 0;
    if (doc["txn"].get(txn) == simdjson::SUCCESS && txn["version"].get(txn_version) == simdjson::SUCCESS) {
      txn_by_version[v] = txn_version;
    } else if (doc["add"].get(add) == simdjson::SUCCESS) {
      DeltaFile f;
      std::string_view path;
      if (add["path"].get(path) != simdjson::SUCCESS) return;
      f.path = std::string(path);
      f.version = v;
      if (add["size"].get(f.size_bytes) != simdjson::SUCCESS) f.size_bytes = 0;
      if (add["modificationTime"].get(f.modification_ms) != simdjson::SUCCESS) f.modification_ms = 0;
      simdjson::dom::object parts;
      if (add["partitionValues"].get(parts) == simdjson::SUCCESS) {
        for (auto [k, value] : parts) {
          std::string_view s;
          if (value.get(s) == simdjson::SUCCESS) f.partition_values[std::string(k)] = std::string(s);
        }
      }
      std::string_view stats;
      if (add["stats"].get(stats) == simdjson::SUCCESS) {
        simdjson::dom::parser stats_parser;
        uint64_t n = 0;
        if (stats_parser.parse(stats.data(), stats.size())["numRecords"].get(n) == simdjson::SUCCESS) f.num_records = n;
      }
      files.push_back(std::move(f));
    } else if (doc["remove"].get(remove) == simdjson::SUCCESS) {
      std::string_view path;
      if (remove["path"].get(path) != simdjson::SUCCESS) return;
      std::erase_if(files, [&](const DeltaFile& f) { return f.path == path; });
    }
  }));
  for (DeltaFile& f : files) {
    if (auto it = txn_by_version.find(f.version); it != txn_by_version.end()) f.txn_version = it->second;
  }
  return files;
}

std::optional<int64_t> DeltaLog::TxnVersion(const std::string& app_id) const {
  auto it = txn_versions_.find(app_id);
  if (it == txn_versions_.end()) return std::nullopt;
  return it->second;
}

}  // namespace freshet

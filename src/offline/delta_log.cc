#include "offline/delta_log.h"

#include <arrow/api.h>
#include <arrow/io/file.h>
#include <parquet/arrow/reader.h>
#include <parquet/arrow/writer.h>
#include <simdjson.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

// The checkpoint version `_last_checkpoint` names when its checkpoint file is there and not past `latest`;
// otherwise the newest `<version>.checkpoint.parquet` in the folder up to `latest`; nullopt for none.
std::optional<int64_t> LatestCheckpoint(const std::string& table_dir, int64_t latest) {
  const std::filesystem::path folder = std::filesystem::path(table_dir) / kLogFolder;
  std::error_code ec;
  if (Result<std::string> text = ReadWholeFile((folder / "_last_checkpoint").string()); text.ok()) {
    simdjson::dom::parser parser;
    int64_t v = -1;
    if (parser.parse(*text)["version"].get(v) == simdjson::SUCCESS && v >= 0 && v <= latest &&
        std::filesystem::exists(folder / DeltaCheckpointFileName(v), ec)) {
      return v;
    }
  }
  std::optional<int64_t> newest;
  for (std::filesystem::directory_iterator it(folder, ec); !ec && it != std::filesystem::directory_iterator();
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() != 39 || !name.ends_with(".checkpoint.parquet")) continue;
    if (std::optional<int64_t> v = ParseCommitFileName(name.substr(0, 20) + ".json"); v && *v <= latest) {
      newest = std::max(newest.value_or(-1), *v);
    }
  }
  return newest;
}

// Appends an Arrow scalar of a checkpoint as JSON: structs and maps as objects, lists as arrays, numbers,
// booleans and strings as themselves, other types as their text. Null fields of a struct are left out.
void ScalarJson(const arrow::Scalar& scalar, JsonWriter& json) {
  if (!scalar.is_valid) {
    json.Null();
    return;
  }
  switch (scalar.type->id()) {
    case arrow::Type::STRUCT: {
      const auto& s = static_cast<const arrow::StructScalar&>(scalar);
      json.BeginObject();
      for (int k = 0; k < s.type->num_fields(); ++k) {
        if (!s.value[k]->is_valid) continue;
        json.Key(s.type->field(k)->name());
        ScalarJson(*s.value[k], json);
      }
      json.EndObject();
      return;
    }
    case arrow::Type::MAP: {
      const auto& entries = static_cast<const arrow::StructArray&>(*static_cast<const arrow::MapScalar&>(scalar).value);
      json.BeginObject();
      for (int64_t r = 0; r < entries.length(); ++r) {
        auto key = entries.field(0)->GetScalar(r);
        auto value = entries.field(1)->GetScalar(r);
        if (!key.ok() || !value.ok()) continue;
        json.Key((*key)->ToString());
        ScalarJson(**value, json);
      }
      json.EndObject();
      return;
    }
    case arrow::Type::LIST:
    case arrow::Type::LARGE_LIST: {
      const auto& values = *static_cast<const arrow::BaseListScalar&>(scalar).value;
      json.BeginArray();
      for (int64_t r = 0; r < values.length(); ++r) {
        if (auto item = values.GetScalar(r); item.ok()) ScalarJson(**item, json);
      }
      json.EndArray();
      return;
    }
    case arrow::Type::BOOL: json.Bool(static_cast<const arrow::BooleanScalar&>(scalar).value); return;
    case arrow::Type::INT8:
    case arrow::Type::INT16:
    case arrow::Type::INT32:
    case arrow::Type::INT64: {
      auto v = scalar.CastTo(arrow::int64());
      if (v.ok()) json.Int(static_cast<const arrow::Int64Scalar&>(**v).value);
      else json.Null();
      return;
    }
    case arrow::Type::DOUBLE: json.Double(static_cast<const arrow::DoubleScalar&>(scalar).value); return;
    case arrow::Type::FLOAT: json.Double(static_cast<const arrow::FloatScalar&>(scalar).value); return;
    default: json.String(scalar.ToString()); return;
  }
}

// The actions of a Parquet checkpoint as JSON lines, one action per line, as a commit holds them.
Result<std::string> CheckpointLines(const std::string& path) {
  auto input = arrow::io::ReadableFile::Open(path);
  if (!input.ok()) return Status::IoError("cannot open Delta checkpoint '" + path + "': " + input.status().ToString());
  std::unique_ptr<parquet::arrow::FileReader> reader;
  if (arrow::Status st = parquet::arrow::OpenFile(*input, arrow::default_memory_pool(), &reader); !st.ok()) {
    return Status::Invalid("Delta checkpoint '" + path + "' is not readable Parquet: " + st.ToString());
  }
  std::shared_ptr<arrow::Table> table;
  if (arrow::Status st = reader->ReadTable(&table); !st.ok()) {
    return Status::Invalid("Delta checkpoint '" + path + "' cannot be read: " + st.ToString());
  }
  std::string lines;
  for (int c = 0; c < table->num_columns(); ++c) {
    const std::string& action = table->schema()->field(c)->name();
    if (action != "add" && action != "remove" && action != "metaData" && action != "protocol" && action != "txn") continue;
    const std::shared_ptr<arrow::ChunkedArray>& column = table->column(c);
    for (const std::shared_ptr<arrow::Array>& chunk : column->chunks()) {
      for (int64_t r = 0; r < chunk->length(); ++r) {
        if (chunk->IsNull(r)) continue;
        auto scalar = chunk->GetScalar(r);
        if (!scalar.ok()) return Status::Invalid("Delta checkpoint '" + path + "' cannot be read: " + scalar.status().ToString());
        std::string line;
        JsonWriter json(&line);
        json.BeginObject().Key(action);
        ScalarJson(**scalar, json);
        json.EndObject();
        lines += line;
        lines += '\n';
      }
    }
  }
  return lines;
}

// Calls `action(doc)` for every action line of `text` (a commit or a checkpoint's lines) read from `path`.
template <typename Fn>
Status ForEachLine(const std::string& text, const std::string& path, simdjson::dom::parser& parser, Fn&& action) {
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + start, end - start);
    start = end + 1;
    if (line.empty()) continue;
    simdjson::dom::element doc;
    if (parser.parse(line.data(), line.size()).get(doc) != simdjson::SUCCESS) {
      return Status::Invalid(path + ": a line is not valid JSON; the Delta log is damaged");
    }
    action(doc);
  }
  return Status::Ok();
}

std::map<std::string, std::string> StringMap(simdjson::dom::element value) {
  std::map<std::string, std::string> out;
  simdjson::dom::object object;
  if (value.get(object) != simdjson::SUCCESS) return out;
  for (auto [k, v] : object) {
    std::string_view s;
    out[std::string(k)] = v.get(s) == simdjson::SUCCESS ? std::string(s) : std::string();
  }
  return out;
}

}  // namespace

// The table's state at one version, replayed from the newest checkpoint and the commits after it.
struct DeltaLogState {
  int64_t checkpoint_version = -1;
  int64_t min_reader_version = 1;
  int64_t min_writer_version = 2;
  bool protocol_has_features = false;  // readerFeatures/writerFeatures: a checkpoint of ours would lose them.
  // The newest metaData.
  std::string table_id, name, description, provider = "parquet", schema_string;
  std::map<std::string, std::string> format_options, configuration;
  std::vector<std::string> partition_columns;
  std::optional<int64_t> created_ms;
  struct Txn {
    int64_t version = 0;
    std::optional<int64_t> last_updated_ms;
  };
  std::map<std::string, Txn> txns;
  std::vector<DeltaFile> files;               // Active files in the order added; removed ones have path "".
  std::map<std::string, size_t> file_index;   // path -> index in files.
  std::map<std::string, RemovedFile> tombstones;

  std::vector<DeltaFile> ActiveFiles() const {
    std::vector<DeltaFile> out;
    out.reserve(file_index.size());
    for (const DeltaFile& f : files) {
      if (!f.path.empty()) out.push_back(f);
    }
    return out;
  }
};

namespace {

// Replays the log of `table_dir` up to version `latest`: the newest checkpoint, then each commit after it.
Result<DeltaLogState> ReplayLog(const std::string& table_dir, int64_t latest) {
  DeltaLogState state;
  const std::filesystem::path folder = std::filesystem::path(table_dir) / kLogFolder;
  simdjson::dom::parser parser;
  // What one action does to the state; `commit_engine` is the commitInfo.engineInfo of the action's commit
  // (nullopt for a checkpoint's actions) and `txn_version` that commit's txn version.
  auto apply = [&](simdjson::dom::element doc, int64_t version, const std::optional<std::string>& commit_engine,
                   std::optional<int64_t> commit_txn) {
    simdjson::dom::element add, remove, meta, protocol, txn;
    if (doc["add"].get(add) == simdjson::SUCCESS) {
      DeltaFile f;
      std::string_view path, stats;
      if (add["path"].get(path) != simdjson::SUCCESS) return;
      f.path = std::string(path);
      f.version = version;
      if (add["size"].get(f.size_bytes) != simdjson::SUCCESS) f.size_bytes = 0;
      if (add["modificationTime"].get(f.modification_ms) != simdjson::SUCCESS) f.modification_ms = 0;
      simdjson::dom::element parts, tags;
      if (add["partitionValues"].get(parts) == simdjson::SUCCESS) f.partition_values = StringMap(parts);
      if (add["tags"].get(tags) == simdjson::SUCCESS) f.tags = StringMap(tags);
      if (add["stats"].get(stats) == simdjson::SUCCESS) {
        f.stats = std::string(stats);
        simdjson::dom::parser stats_parser;
        uint64_t n = 0;
        if (stats_parser.parse(stats.data(), stats.size())["numRecords"].get(n) == simdjson::SUCCESS) f.num_records = n;
      }
      if (auto it = f.tags.find("freshet.txn"); it != f.tags.end()) {
        f.txn_version = std::strtoll(it->second.c_str(), nullptr, 10);
      } else if (commit_txn) {
        f.txn_version = *commit_txn;
      }
      bool data_change = true;
      if (add["dataChange"].get(data_change) != simdjson::SUCCESS) data_change = true;
      // Freshet's adds are tagged (older ones: their commit says engineInfo "freshet"). A checkpoint's untagged
      // adds cannot be told apart and count as Freshet's.
      if (commit_engine && data_change && !f.tags.contains("freshet.app") && *commit_engine != "freshet") {
        f.external = true;
        f.engine = commit_engine->empty() ? "an unnamed writer" : *commit_engine;
      }
      state.tombstones.erase(f.path);
      if (auto it = state.file_index.find(f.path); it != state.file_index.end()) {
        state.files[it->second].path.clear();
      }
      state.file_index[f.path] = state.files.size();
      state.files.push_back(std::move(f));
    } else if (doc["remove"].get(remove) == simdjson::SUCCESS) {
      std::string_view path;
      if (remove["path"].get(path) != simdjson::SUCCESS) return;
      RemovedFile r{std::string(path), 0};
      if (remove["deletionTimestamp"].get(r.deletion_ms) != simdjson::SUCCESS) r.deletion_ms = 0;
      if (auto it = state.file_index.find(r.path); it != state.file_index.end()) {
        state.files[it->second].path.clear();
        state.file_index.erase(it);
      }
      state.tombstones[r.path] = r;
    } else if (doc["metaData"].get(meta) == simdjson::SUCCESS) {
      std::string_view text;
      if (meta["schemaString"].get(text) == simdjson::SUCCESS) state.schema_string = std::string(text);
      if (meta["id"].get(text) == simdjson::SUCCESS) state.table_id = std::string(text);
      state.name = meta["name"].get(text) == simdjson::SUCCESS ? std::string(text) : std::string();
      state.description = meta["description"].get(text) == simdjson::SUCCESS ? std::string(text) : std::string();
      if (meta["format"]["provider"].get(text) == simdjson::SUCCESS) state.provider = std::string(text);
      simdjson::dom::element options, configuration;
      state.format_options.clear();
      state.configuration.clear();
      if (meta["format"]["options"].get(options) == simdjson::SUCCESS) state.format_options = StringMap(options);
      if (meta["configuration"].get(configuration) == simdjson::SUCCESS) state.configuration = StringMap(configuration);
      state.partition_columns.clear();
      simdjson::dom::array partitions;
      if (meta["partitionColumns"].get(partitions) == simdjson::SUCCESS) {
        for (simdjson::dom::element p : partitions) {
          if (p.get(text) == simdjson::SUCCESS) state.partition_columns.emplace_back(text);
        }
      }
      int64_t created = 0;
      if (meta["createdTime"].get(created) == simdjson::SUCCESS) state.created_ms = created;
    } else if (doc["protocol"].get(protocol) == simdjson::SUCCESS) {
      if (protocol["minReaderVersion"].get(state.min_reader_version) != simdjson::SUCCESS) state.min_reader_version = 1;
      if (protocol["minWriterVersion"].get(state.min_writer_version) != simdjson::SUCCESS) state.min_writer_version = 2;
      simdjson::dom::array features;
      state.protocol_has_features = protocol["readerFeatures"].get(features) == simdjson::SUCCESS ||
                                    protocol["writerFeatures"].get(features) == simdjson::SUCCESS;
    } else if (doc["txn"].get(txn) == simdjson::SUCCESS) {
      std::string_view app;
      DeltaLogState::Txn t;
      if (txn["appId"].get(app) != simdjson::SUCCESS || txn["version"].get(t.version) != simdjson::SUCCESS) return;
      int64_t updated = 0;
      if (txn["lastUpdated"].get(updated) == simdjson::SUCCESS) t.last_updated_ms = updated;
      state.txns[std::string(app)] = t;
    }
  };

  int64_t first = 0;
  if (std::optional<int64_t> checkpoint = LatestCheckpoint(table_dir, latest)) {
    const std::string path = (folder / DeltaCheckpointFileName(*checkpoint)).string();
    FRESHET_ASSIGN_OR_RETURN(std::string lines, CheckpointLines(path));
    FRESHET_RETURN_IF_ERROR(ForEachLine(lines, path, parser, [&](simdjson::dom::element doc) {
      apply(doc, *checkpoint, std::nullopt, std::nullopt);
    }));
    state.checkpoint_version = *checkpoint;
    first = *checkpoint + 1;
  }
  for (int64_t v = first; v <= latest; ++v) {
    const std::string path = (folder / DeltaCommitFileName(v)).string();
    Result<std::string> text = ReadWholeFile(path);
    if (!text.ok()) continue;
    // The commit's engine and txn first: they say whose adds follow, wherever in the commit they stand.
    std::string engine;
    std::optional<int64_t> commit_txn;
    FRESHET_RETURN_IF_ERROR(ForEachLine(*text, path, parser, [&](simdjson::dom::element doc) {
      std::string_view e;
      int64_t t = 0;
      if (doc["commitInfo"]["engineInfo"].get(e) == simdjson::SUCCESS) engine = std::string(e);
      if (doc["txn"]["version"].get(t) == simdjson::SUCCESS) commit_txn = t;
    }));
    FRESHET_RETURN_IF_ERROR(ForEachLine(*text, path, parser, [&](simdjson::dom::element doc) {
      apply(doc, v, engine, commit_txn);
    }));
  }
  return state;
}

}  // namespace

std::string DeltaCommitFileName(int64_t version) {
  char name[32];
  std::snprintf(name, sizeof(name), "%020lld.json", static_cast<long long>(version));
  return name;
}

std::string DeltaCheckpointFileName(int64_t version) {
  char name[48];
  std::snprintf(name, sizeof(name), "%020lld.checkpoint.parquet", static_cast<long long>(version));
  return name;
}

std::string DeltaLog::SchemaString() const {
  std::string text;
  JsonWriter json(&text);
  json.BeginObject().Key("type").String("struct").Key("fields").BeginArray();
  for (const DeltaColumn& c : schema_) {
    json.BeginObject().Key("name").String(c.name).Key("type");
    // A nested type (a list column) is a JSON object of its own, a primitive one its name.
    c.type.starts_with('{') ? json.Raw(c.type) : json.String(c.type);
    json.Key("nullable").Bool(c.nullable);
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
  FRESHET_ASSIGN_OR_RETURN(DeltaLogState state, ReplayLog(table_dir_, latest_version_));
  // The schema in force is that of the newest metaData action.
  stored_schema_ = state.schema_string;
  if (!state.table_id.empty()) table_id_ = state.table_id;
  txn_versions_.clear();
  for (const auto& [app, txn] : state.txns) txn_versions_[app] = txn.version;
  schema_matches_ = stored_schema_ == SchemaString();
  return Status::Ok();
}

namespace {

// One add or remove action as JSON (without the enclosing {"add": ...}).
void WriteFileAction(JsonWriter& json, const DeltaFile& f, bool data_change) {
  json.BeginObject().Key("path").String(f.path).Key("partitionValues").BeginObject();
  for (const auto& [k, v] : f.partition_values) {
    json.Key(k);
    if (v.empty()) json.Null();  // An empty partition value is null (the zero-row file of an empty table).
    else json.String(v);
  }
  json.EndObject().Key("size").Uint(f.size_bytes).Key("modificationTime").Int(f.modification_ms);
  json.Key("dataChange").Bool(data_change);
  json.Key("stats").String(f.stats.empty() ? "{\"numRecords\":" + std::to_string(f.num_records) + "}" : f.stats);
  if (!f.tags.empty()) {
    json.Key("tags").BeginObject();
    for (const auto& [k, v] : f.tags) json.Key(k).String(v);
    json.EndObject();
  }
  json.EndObject();
}

}  // namespace

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
    json.EndObject().Key("isBlindAppend").Bool(commit.removes.empty() && commit.data_change).EndObject().EndObject();
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
    json.Key("dataChange").Bool(commit.data_change).EndObject().EndObject();
    text += line + "\n";
  }
  for (const DeltaFile& f : commit.adds) {
    std::string line;
    JsonWriter json(&line);
    json.BeginObject().Key("add");
    WriteFileAction(json, f, commit.data_change);
    json.EndObject();
    text += line + "\n";
  }
  const std::filesystem::path folder = std::filesystem::path(table_dir_) / kLogFolder;
  const std::string path = (folder / DeltaCommitFileName(commit.version)).string();
  // Named uniquely: writers in other processes may be writing the same version (the loser retries the next).
  const std::string temporary =
      (folder / ("." + DeltaCommitFileName(commit.version) + "." + NewUuid() + ".tmp")).string();
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
  if (commit.version > 0 && commit.version % kCheckpointInterval == 0 && commit.version == latest_version_) {
    // The commit is in; a checkpoint that cannot be written only makes the next replays longer.
    if (Status written = WriteCheckpoint(); !written.ok()) {
      std::fprintf(stderr, "freshet: warning: no Delta checkpoint for version %lld of '%s': %s\n",
                   static_cast<long long>(commit.version), table_dir_.c_str(), written.message().c_str());
    }
  }
  return Status::Ok();
}

namespace {

std::shared_ptr<arrow::DataType> StringMapType() { return arrow::map(arrow::utf8(), arrow::utf8()); }

// The schema of a classic checkpoint (PROTOCOL.md, "Checkpoint Schema"), the actions Freshet keeps.
std::shared_ptr<arrow::Schema> CheckpointSchema() {
  auto txn = arrow::struct_({arrow::field("appId", arrow::utf8()), arrow::field("version", arrow::int64()),
                             arrow::field("lastUpdated", arrow::int64())});
  auto add = arrow::struct_({arrow::field("path", arrow::utf8()), arrow::field("partitionValues", StringMapType()),
                             arrow::field("size", arrow::int64()), arrow::field("modificationTime", arrow::int64()),
                             arrow::field("dataChange", arrow::boolean()), arrow::field("stats", arrow::utf8()),
                             arrow::field("tags", StringMapType())});
  auto remove = arrow::struct_({arrow::field("path", arrow::utf8()), arrow::field("deletionTimestamp", arrow::int64()),
                                arrow::field("dataChange", arrow::boolean())});
  auto format = arrow::struct_({arrow::field("provider", arrow::utf8()), arrow::field("options", StringMapType())});
  auto meta = arrow::struct_({arrow::field("id", arrow::utf8()), arrow::field("name", arrow::utf8()),
                              arrow::field("description", arrow::utf8()), arrow::field("format", format),
                              arrow::field("schemaString", arrow::utf8()),
                              arrow::field("partitionColumns", arrow::list(arrow::utf8())),
                              arrow::field("configuration", StringMapType()),
                              arrow::field("createdTime", arrow::int64())});
  auto protocol = arrow::struct_({arrow::field("minReaderVersion", arrow::int32()),
                                  arrow::field("minWriterVersion", arrow::int32())});
  return arrow::schema({arrow::field("txn", txn), arrow::field("add", add), arrow::field("remove", remove),
                        arrow::field("metaData", meta), arrow::field("protocol", protocol)});
}

// Builds the checkpoint table one action (row) at a time: each row sets one top-level struct, the others null.
class CheckpointBuilder {
 public:
  CheckpointBuilder() : schema_(CheckpointSchema()) {
    for (const std::shared_ptr<arrow::Field>& f : schema_->fields()) {
      std::unique_ptr<arrow::ArrayBuilder> b;
      status_ &= arrow::MakeBuilder(arrow::default_memory_pool(), f->type(), &b);
      builders_.push_back(std::move(b));
    }
  }

  void Txn(const std::string& app, int64_t version, std::optional<int64_t> last_updated) {
    auto& s = Row(0);
    String(s, 0, app);
    Int(s, 1, version);
    last_updated ? Int(s, 2, *last_updated) : Null(s, 2);
  }
  void Add(const DeltaFile& f) {
    auto& s = Row(1);
    String(s, 0, f.path);
    Map(s, 1, f.partition_values, true);
    Int(s, 2, static_cast<int64_t>(f.size_bytes));
    Int(s, 3, f.modification_ms);
    Bool(s, 4, false);
    String(s, 5, f.stats.empty() ? "{\"numRecords\":" + std::to_string(f.num_records) + "}" : f.stats);
    f.tags.empty() ? Null(s, 6) : Map(s, 6, f.tags, false);
  }
  void Remove(const RemovedFile& r) {
    auto& s = Row(2);
    String(s, 0, r.path);
    Int(s, 1, r.deletion_ms);
    Bool(s, 2, false);
  }
  void Metadata(const DeltaLogState& st) {
    auto& s = Row(3);
    String(s, 0, st.table_id);
    st.name.empty() ? Null(s, 1) : String(s, 1, st.name);
    st.description.empty() ? Null(s, 2) : String(s, 2, st.description);
    auto& format = static_cast<arrow::StructBuilder&>(*s.field_builder(3));
    status_ &= format.Append();
    String(format, 0, st.provider);
    Map(format, 1, st.format_options, false);
    String(s, 4, st.schema_string);
    auto& list = static_cast<arrow::ListBuilder&>(*s.field_builder(5));
    status_ &= list.Append();
    for (const std::string& p : st.partition_columns) {
      status_ &= static_cast<arrow::StringBuilder&>(*list.value_builder()).Append(p);
    }
    Map(s, 6, st.configuration, false);
    st.created_ms ? Int(s, 7, *st.created_ms) : Null(s, 7);
  }
  void Protocol(int64_t reader, int64_t writer) {
    auto& s = Row(4);
    status_ &= static_cast<arrow::Int32Builder&>(*s.field_builder(0)).Append(static_cast<int32_t>(reader));
    status_ &= static_cast<arrow::Int32Builder&>(*s.field_builder(1)).Append(static_cast<int32_t>(writer));
  }

  Result<std::shared_ptr<arrow::Table>> Finish() {
    arrow::ArrayVector arrays;
    for (auto& b : builders_) {
      std::shared_ptr<arrow::Array> a;
      status_ &= b->Finish(&a);
      arrays.push_back(std::move(a));
    }
    if (!status_.ok()) return Status::IoError("cannot build the Delta checkpoint: " + status_.ToString());
    return arrow::Table::Make(schema_, arrays, rows_);
  }
  int64_t rows() const { return rows_; }

 private:
  // Starts a row whose action is column `k`: that struct is appended, every other column gets a null.
  arrow::StructBuilder& Row(int k) {
    for (int c = 0; c < static_cast<int>(builders_.size()); ++c) {
      if (c != k) status_ &= builders_[c]->AppendNull();
    }
    ++rows_;
    auto& s = static_cast<arrow::StructBuilder&>(*builders_[k]);
    status_ &= s.Append();
    return s;
  }
  void String(arrow::StructBuilder& s, int k, std::string_view v) {
    status_ &= static_cast<arrow::StringBuilder&>(*s.field_builder(k)).Append(v);
  }
  void Int(arrow::StructBuilder& s, int k, int64_t v) {
    status_ &= static_cast<arrow::Int64Builder&>(*s.field_builder(k)).Append(v);
  }
  void Bool(arrow::StructBuilder& s, int k, bool v) {
    status_ &= static_cast<arrow::BooleanBuilder&>(*s.field_builder(k)).Append(v);
  }
  void Null(arrow::StructBuilder& s, int k) { status_ &= s.field_builder(k)->AppendNull(); }
  // `empty_is_null`: partition values, where an empty value means null.
  void Map(arrow::StructBuilder& s, int k, const std::map<std::string, std::string>& values, bool empty_is_null) {
    auto& m = static_cast<arrow::MapBuilder&>(*s.field_builder(k));
    status_ &= m.Append();
    for (const auto& [key, value] : values) {
      status_ &= static_cast<arrow::StringBuilder&>(*m.key_builder()).Append(key);
      auto& item = static_cast<arrow::StringBuilder&>(*m.item_builder());
      status_ &= empty_is_null && value.empty() ? item.AppendNull() : item.Append(value);
    }
  }

  std::shared_ptr<arrow::Schema> schema_;
  std::vector<std::unique_ptr<arrow::ArrayBuilder>> builders_;
  arrow::Status status_;
  int64_t rows_ = 0;
};

}  // namespace

Status DeltaLog::WriteCheckpoint() {
  const int64_t version = latest_version_;
  FRESHET_ASSIGN_OR_RETURN(DeltaLogState state, ReplayLog(table_dir_, version));
  if (state.protocol_has_features || state.min_reader_version > 1 || state.min_writer_version > 2) {
    return Status::Invalid("the table uses Delta protocol features that Freshet's checkpoints do not carry");
  }
  CheckpointBuilder b;
  b.Protocol(state.min_reader_version, state.min_writer_version);
  b.Metadata(state);
  for (const auto& [app, txn] : state.txns) b.Txn(app, txn.version, txn.last_updated_ms);
  const std::vector<DeltaFile> files = state.ActiveFiles();
  for (const DeltaFile& f : files) b.Add(f);
  // Tombstones are kept while their files may still be read by time travel and are not vacuumed.
  const int64_t expired_before = WallClockMs() - retention_ms_;
  for (const auto& [path, removed] : state.tombstones) {
    if (removed.deletion_ms >= expired_before) b.Remove(removed);
  }
  FRESHET_ASSIGN_OR_RETURN(std::shared_ptr<arrow::Table> table, b.Finish());

  const std::filesystem::path folder = std::filesystem::path(table_dir_) / kLogFolder;
  const std::string path = (folder / DeltaCheckpointFileName(version)).string();
  const std::string temporary = (folder / ("." + DeltaCheckpointFileName(version) + "." + NewUuid() + ".tmp")).string();
  {
    auto sink = arrow::io::FileOutputStream::Open(temporary);
    if (!sink.ok()) return Status::IoError("cannot create '" + temporary + "': " + sink.status().ToString());
    parquet::WriterProperties::Builder props;
    props.compression(parquet::Compression::SNAPPY);
    arrow::Status st = parquet::arrow::WriteTable(*table, arrow::default_memory_pool(), *sink, 1 << 20, props.build());
    arrow::Status closed = (*sink)->Close();
    if (!st.ok() || !closed.ok()) {
      ::remove(temporary.c_str());
      return Status::IoError("cannot write '" + temporary + "': " + (st.ok() ? closed : st).ToString());
    }
  }
  // fsync the file before it is renamed into place, so that a crash cannot leave a named, empty checkpoint.
  FRESHET_ASSIGN_OR_RETURN(std::string bytes, ReadWholeFile(temporary));
  FRESHET_RETURN_IF_ERROR(WriteFileDurably(temporary, {bytes}, "Delta checkpoint"));
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    ::remove(temporary.c_str());
    return Status::IoError("cannot rename '" + temporary + "' to '" + path + "': " + std::strerror(errno));
  }
  std::string last;
  JsonWriter json(&last);
  json.BeginObject().Key("version").Int(version).Key("size").Int(b.rows()).Key("sizeInBytes").Uint(bytes.size());
  json.Key("numOfAddFiles").Uint(files.size()).EndObject();
  const std::string last_path = (folder / "_last_checkpoint").string();
  const std::string last_temporary = last_path + "." + NewUuid() + ".tmp";
  FRESHET_RETURN_IF_ERROR(WriteFileDurably(last_temporary, {last}, "Delta _last_checkpoint"));
  if (::rename(last_temporary.c_str(), last_path.c_str()) != 0) {
    ::remove(last_temporary.c_str());
    return Status::IoError("cannot rename '" + last_temporary + "': " + std::strerror(errno));
  }
  return SyncDirectory(folder.string());
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

Result<std::vector<DeltaFile>> DeltaLog::ActiveFiles() const {
  FRESHET_ASSIGN_OR_RETURN(DeltaLogState state, ReplayLog(table_dir_, latest_version_));
  return state.ActiveFiles();
}

Result<std::vector<RemovedFile>> DeltaLog::RemovedFiles() const {
  FRESHET_ASSIGN_OR_RETURN(DeltaLogState state, ReplayLog(table_dir_, latest_version_));
  std::vector<RemovedFile> out;
  for (const auto& [path, removed] : state.tombstones) out.push_back(removed);
  return out;
}

Result<std::vector<DeltaFile>> DeltaLog::ReadActiveFiles(const std::string& table_dir) {
  FRESHET_ASSIGN_OR_RETURN(int64_t latest, LatestVersion(table_dir));
  FRESHET_ASSIGN_OR_RETURN(DeltaLogState state, ReplayLog(table_dir, latest));
  return state.ActiveFiles();
}

std::optional<int64_t> DeltaLog::TxnVersion(const std::string& app_id) const {
  auto it = txn_versions_.find(app_id);
  if (it == txn_versions_.end()) return std::nullopt;
  return it->second;
}

}  // namespace freshet

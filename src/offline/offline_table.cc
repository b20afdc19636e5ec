#include "offline/offline_table.h"

#include <arrow/api.h>
#include <arrow/io/file.h>
#include <fcntl.h>
#include <parquet/arrow/reader.h>
#include <parquet/arrow/writer.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <utility>
#include <chrono>
#include <filesystem>
#include <map>
#include <random>
#include <cstring>
#include <limits>
#include <set>
#include <sys/stat.h>

#include "common/bytes.h"
#include "common/files.h"
#include "common/time.h"
#include "offline/list_column.h"
#include "serve/json.h"

namespace freshet {
namespace {

std::string RandomSuffix() {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^ static_cast<uint64_t>(WallClockMs()));
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(rng()));
  return text;
}

std::shared_ptr<arrow::DataType> ArrowType(OfflineType type) {
  switch (type) {
    case OfflineType::kInt64: return arrow::int64();
    case OfflineType::kDouble: return arrow::float64();
    case OfflineType::kString: return arrow::utf8();
    case OfflineType::kTimestamp: return arrow::timestamp(arrow::TimeUnit::MICRO, "UTC");
    case OfflineType::kBool: return arrow::boolean();
    case OfflineType::kStringList:
    case OfflineType::kValueCounts: return ListArrowType(type);
  }
  return arrow::utf8();
}

// One column of buffered rows.
struct ColumnBuffer {
  std::vector<int64_t> ints;     // kInt64, kTimestamp (epoch ms), kBool (0 or 1).
  std::vector<double> doubles;   // kDouble.
  std::string chars;             // kString (and the lists' JSON text): the bytes of every value, back to back;
  std::vector<uint64_t> ends;    // and where each value ends.
  std::vector<uint8_t> valid;
};

// Appends the text cells `rows` of `c` (a kString column, or a list column's JSON text) to `builder`: an Arrow
// StringBuilder or a JsonListBuilder.
template <typename Builder>
arrow::Status AppendTexts(const ColumnBuffer& c, const std::vector<uint32_t>& rows, Builder& builder) {
  for (uint32_t r : rows) {
    const uint64_t begin = r == 0 ? 0 : c.ends[r - 1];
    arrow::Status st =
        c.valid[r] ? builder.Append(std::string_view(c.chars.data() + begin, c.ends[r] - begin)) : builder.AppendNull();
    if (!st.ok()) return st;
  }
  return arrow::Status::OK();
}

Status FsyncFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::IoError("cannot open '" + path + "' to fsync it: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return Status::IoError("cannot fsync '" + path + "': " + std::strerror(errno));
  return Status::Ok();
}

Status FromArrow(const arrow::Status& status, const std::string& what) {
  if (status.ok()) return Status::Ok();
  return Status::IoError(what + ": " + status.ToString());
}

// Column statistics cut strings to this many characters (code points), as Delta Spark does by default.
constexpr size_t kStatsStringPrefix = 32;

// The byte length of the first `code_points` UTF-8 characters of `s` (all of it when shorter).
size_t Utf8PrefixBytes(std::string_view s, size_t code_points) {
  size_t bytes = 0;
  for (size_t n = 0; n < code_points && bytes < s.size(); ++n) {
    ++bytes;
    while (bytes < s.size() && (static_cast<unsigned char>(s[bytes]) & 0xC0) == 0x80) ++bytes;
  }
  return bytes;
}

// A string min for stats: its first kStatsStringPrefix characters (a prefix is never greater).
std::string StatsMinString(std::string_view s) { return std::string(s.substr(0, Utf8PrefixBytes(s, kStatsStringPrefix))); }

// A string max for stats: the value itself when short; else its prefix followed by a character greater than
// the one cut off (DEL when that was ASCII below DEL, else U+10FFFF), so it stays an upper bound in byte order.
std::string StatsMaxString(std::string_view s) {
  size_t cut = Utf8PrefixBytes(s, kStatsStringPrefix);
  static constexpr std::string_view kMaxChar = "\xF4\x8F\xBF\xBF";  // U+10FFFF.
  while (cut < s.size() && s.substr(cut).starts_with(kMaxChar)) cut += kMaxChar.size();
  if (cut >= s.size()) return std::string(s);
  const unsigned char next = static_cast<unsigned char>(s[cut]);
  return std::string(s.substr(0, cut)) + (next < 0x7F ? std::string("\x7F") : std::string(kMaxChar));
}

// The Delta stats JSON of `table`'s rows (PROTOCOL.md, Per-file Statistics): numRecords, and for each column
// nullCount and, when it has a non-null value, minValues and maxValues. Strings are cut as above; timestamps
// are RFC 3339 UTC with milliseconds (the protocol's precision); doubles only when finite (NaN is skipped).
std::string StatsJson(const arrow::Table& table) {
  std::string mins, maxes, nulls;
  JsonWriter min_json(&mins), max_json(&maxes), null_json(&nulls);
  min_json.BeginObject();
  max_json.BeginObject();
  null_json.BeginObject();
  for (int c = 0; c < table.num_columns(); ++c) {
    const std::string& name = table.schema()->field(c)->name();
    const arrow::ChunkedArray& column = *table.column(c);
    const arrow::Type::type id = column.type()->id();
    if (id == arrow::Type::LIST) continue;  // Delta writers keep no stats of nested columns.
    null_json.Key(name).Int(column.null_count());
    bool any = false;
    if (id == arrow::Type::INT64 || id == arrow::Type::TIMESTAMP) {
      int64_t lo = 0, hi = 0;
      for (const auto& chunk : column.chunks()) {
        const int64_t* values = chunk->data()->GetValues<int64_t>(1);
        for (int64_t r = 0; r < chunk->length(); ++r) {
          if (chunk->IsNull(r)) continue;
          if (!any || values[r] < lo) lo = values[r];
          if (!any || values[r] > hi) hi = values[r];
          any = true;
        }
      }
      if (!any) continue;
      if (id == arrow::Type::INT64) {
        min_json.Key(name).Int(lo);
        max_json.Key(name).Int(hi);
      } else {
        // Microseconds, truncated to milliseconds as the protocol's stats hold them.
        const auto unit = static_cast<const arrow::TimestampType&>(*column.type()).unit();
        const int64_t per_ms = unit == arrow::TimeUnit::NANO ? 1'000'000 : unit == arrow::TimeUnit::MICRO ? 1000
                               : unit == arrow::TimeUnit::MILLI ? 1 : 0;
        if (per_ms == 0) continue;
        min_json.Key(name).String(FormatRfc3339(FloorDiv(lo, per_ms)));
        max_json.Key(name).String(FormatRfc3339(FloorDiv(hi, per_ms)));
      }
    } else if (id == arrow::Type::DOUBLE) {
      double lo = 0, hi = 0;
      bool finite = true;
      for (const auto& chunk : column.chunks()) {
        const double* values = chunk->data()->GetValues<double>(1);
        for (int64_t r = 0; r < chunk->length(); ++r) {
          if (chunk->IsNull(r) || std::isnan(values[r])) continue;
          finite = finite && std::isfinite(values[r]);
          if (!any || values[r] < lo) lo = values[r];
          if (!any || values[r] > hi) hi = values[r];
          any = true;
        }
      }
      if (!any || !finite) continue;  // JSON has no infinities.
      min_json.Key(name).Double(lo);
      max_json.Key(name).Double(hi);
    } else if (id == arrow::Type::STRING) {
      std::string_view lo, hi;
      for (const auto& chunk : column.chunks()) {
        const auto& strings = static_cast<const arrow::StringArray&>(*chunk);
        for (int64_t r = 0; r < strings.length(); ++r) {
          if (strings.IsNull(r)) continue;
          const std::string_view v = strings.GetView(r);
          if (!any || v < lo) lo = v;
          if (!any || v > hi) hi = v;
          any = true;
        }
      }
      if (!any) continue;
      min_json.Key(name).String(StatsMinString(lo));
      max_json.Key(name).String(StatsMaxString(hi));
    }
  }
  min_json.EndObject();
  max_json.EndObject();
  null_json.EndObject();
  return "{\"numRecords\":" + std::to_string(table.num_rows()) + ",\"minValues\":" + mins + ",\"maxValues\":" + maxes +
         ",\"nullCount\":" + nulls + "}";
}

// Writes `table` as a zstd Parquet file at `path` and fsyncs it; on failure no file is left. Columns named
// in `no_dictionary` are written without a dictionary.
Status WriteParquet(const arrow::Table& table, const std::string& path, int64_t row_group_rows,
                    const std::vector<std::string>& no_dictionary) {
  auto sink = arrow::io::FileOutputStream::Open(path);
  if (!sink.ok()) return FromArrow(sink.status(), "cannot create '" + path + "'");
  parquet::WriterProperties::Builder props;
  props.compression(parquet::Compression::ZSTD);
  for (const std::string& c : no_dictionary) props.disable_dictionary(c);
  std::shared_ptr<parquet::ArrowWriterProperties> arrow_props =
      parquet::ArrowWriterProperties::Builder().store_schema()->build();
  Status written = FromArrow(parquet::arrow::WriteTable(table, arrow::default_memory_pool(), *sink, row_group_rows,
                                                        props.build(), arrow_props),
                             "cannot write Parquet file '" + path + "'");
  const arrow::Status closed = (*sink)->Close();
  if (written.ok()) written = FromArrow(closed, "cannot close '" + path + "'");
  if (written.ok()) written = FsyncFile(path);
  if (!written.ok()) ::unlink(path.c_str());  // Half a file (a full disk): the rows are written again later.
  return written;
}

Result<std::shared_ptr<arrow::Table>> ReadParquet(const std::string& path) {
  auto input = arrow::io::ReadableFile::Open(path);
  if (!input.ok()) return FromArrow(input.status(), "cannot open '" + path + "'");
  std::unique_ptr<parquet::arrow::FileReader> reader;
  FRESHET_RETURN_IF_ERROR(FromArrow(parquet::arrow::OpenFile(*input, arrow::default_memory_pool(), &reader),
                                    "cannot read Parquet file '" + path + "'"));
  std::shared_ptr<arrow::Table> table;
  FRESHET_RETURN_IF_ERROR(FromArrow(reader->ReadTable(&table), "cannot read Parquet file '" + path + "'"));
  return table;
}

// An exclusive flock on a table's folder, held by its one writer: `freshet run` (for as long as it runs),
// backfill, compact and vacuum.
class TableLock {
 public:
  // `shared`: one of several writers of a consumer group (see OfflineTableOptions::shared_writers).
  static Result<TableLock> Acquire(const std::string& table_dir, bool shared = false) {
    TableLock lock;
    lock.fd_ = ::open(table_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (lock.fd_ < 0) return Status::IoError("cannot open offline table folder '" + table_dir + "': " + std::strerror(errno));
    if (::flock(lock.fd_, (shared ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
      return Status::Invalid("the offline table '" + table_dir + "' is open for writing by another Freshet process (a "
                             "running `freshet run`, backfill, compact or vacuum); stop it first, or let the run "
                             "compact by itself with `offline.compact_every`");
    }
    return lock;
  }
  TableLock() = default;
  TableLock(TableLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  TableLock& operator=(TableLock&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  ~TableLock() {
    if (fd_ >= 0) ::close(fd_);  // Also releases the flock.
  }

 private:
  int fd_ = -1;
};

std::vector<std::string> NoDictionaryColumns(const arrow::Schema& schema) {
  // Sequence numbers and times are nearly unique per row: a dictionary only costs there.
  std::vector<std::string> out;
  for (const auto& f : schema.fields()) {
    if (f->type()->id() == arrow::Type::TIMESTAMP || f->name() == "seq") out.push_back(f->name());
  }
  return out;
}

}  // namespace

DeltaColumn ToDeltaColumn(const OfflineColumn& column) {
  const char* type = "string";
  switch (column.type) {
    case OfflineType::kInt64: type = "long"; break;
    case OfflineType::kDouble: type = "double"; break;
    case OfflineType::kString: type = "string"; break;
    case OfflineType::kTimestamp: type = "timestamp"; break;
    case OfflineType::kBool: type = "boolean"; break;
    case OfflineType::kStringList:
    case OfflineType::kValueCounts: return DeltaColumn{column.name, ListDeltaType(column.type), column.nullable};
  }
  return DeltaColumn{column.name, type, column.nullable};
}

std::string UtcDate(int64_t epoch_ms) {
  return FormatRfc3339(FloorDiv(epoch_ms, 86'400'000) * 86'400'000).substr(0, 10);
}

std::string StagedCommit::Encode() const {
  std::string bytes;
  ByteWriter out(&bytes);
  out.PutU8(txn_version ? 1 : 0);
  out.PutSignedVarint(txn_version.value_or(0));
  out.PutU8(replace_metadata ? 1 : 0);
  out.PutVarint(files.size());
  for (const File& f : files) {
    out.PutString(f.staged_path);
    out.PutString(f.file.path);
    out.PutVarint(f.file.partition_values.size());
    for (const auto& [k, v] : f.file.partition_values) {
      out.PutString(k);
      out.PutString(v);
    }
    out.PutVarint(f.file.size_bytes);
    out.PutSignedVarint(f.file.modification_ms);
    out.PutVarint(f.file.num_records);
  }
  out.PutVarint(removes.size());
  for (const std::string& r : removes) out.PutString(r);
  // Added later, at the end, so that commits recorded by older versions still decode.
  for (const File& f : files) out.PutString(f.file.stats);
  return bytes;
}

Result<StagedCommit> StagedCommit::Decode(std::string_view bytes) {
  StagedCommit c;
  ByteReader in(bytes);
  uint8_t replace = 0;
  uint64_t n = 0;
  uint8_t has_txn = 0;
  int64_t txn = 0;
  in.ReadU8(&has_txn);
  in.ReadSignedVarint(&txn);
  if (has_txn) c.txn_version = txn;
  in.ReadU8(&replace);
  c.replace_metadata = replace != 0;
  if (in.ReadVarint(&n) && n <= bytes.size()) {
    for (uint64_t k = 0; k < n && !in.failed(); ++k) {
      File f;
      std::string_view staged, path, key, value;
      uint64_t parts = 0;
      in.ReadString(&staged);
      in.ReadString(&path);
      f.staged_path = std::string(staged);
      f.file.path = std::string(path);
      if (!in.ReadVarint(&parts) || parts > bytes.size()) break;
      for (uint64_t p = 0; p < parts && in.ReadString(&key) && in.ReadString(&value); ++p) {
        f.file.partition_values[std::string(key)] = std::string(value);
      }
      in.ReadVarint(&f.file.size_bytes);
      in.ReadSignedVarint(&f.file.modification_ms);
      in.ReadVarint(&f.file.num_records);
      c.files.push_back(std::move(f));
    }
  }
  if (in.ReadVarint(&n) && n <= bytes.size()) {
    std::string_view path;
    for (uint64_t k = 0; k < n && in.ReadString(&path); ++k) c.removes.emplace_back(path);
  }
  std::string_view stats;
  if (!in.failed() && in.remaining() > 0) {
    for (File& f : c.files) {
      if (!in.ReadString(&stats)) break;
      f.file.stats = std::string(stats);
    }
  }
  if (in.failed()) return Status::Invalid("the offline commit recorded in the checkpoint is damaged");
  return c;
}

struct OfflineTable::Rows {
  std::vector<ColumnBuffer> columns;
  std::vector<int32_t> row_days;  // UTC day of each row (partitioned tables).
  size_t rows = 0;
  uint64_t bytes = 0;
};

struct OfflineTable::Impl {
  OfflineTableOptions options;
  TableLock lock;
  DeltaLog log;
  bool overwrite_pending = false;
  std::atomic<uint64_t> staged_files{0};  // Names staged files uniquely within this process.
  Rows buffer;
  size_t next_column = 0;
  std::shared_ptr<arrow::Schema> schema;
  int publishes_since_compaction = 0;

  ColumnBuffer& Next() { return buffer.columns[next_column++]; }
  Status RemoveOrphanFiles();
  Result<StagedCommit::File> WriteFile(const Rows& rows, const std::vector<uint32_t>& rows_in_file,
                                       std::optional<int32_t> day);
  Status AddEmptyFile();
  // Commits `delta` at the next free version. With shared writers a version another process won is not an
  // error: the log is read again and the commit tried at the next version, unless the other commit was this
  // one's own transaction (same app id, txn version at or past it: published by a process that restored the
  // same checkpoint). Appends never conflict, so the retries end.
  Status CommitRetrying(DeltaCommit& delta) {
    for (;;) {
      bool existed = false;
      Status status = log.Commit(delta, &existed);
      if (!existed || !options.shared_writers) return status;
      FRESHET_RETURN_IF_ERROR(log.Refresh());
      if (delta.txn_version && !delta.app_id.empty()) {
        std::optional<int64_t> newest = log.TxnVersion(delta.app_id);
        if (newest && *newest >= *delta.txn_version) return Status::Ok();
      }
      delta.version = log.latest_version() + 1;
    }
  }
  CompactionOptions Compaction() const {
    return CompactionOptions{.staging_dir = options.staging_dir, .app_id = options.app_id,
                             .retention_ms = options.retention_ms};
  }
};

namespace {

// The Parquet files in a table's folder, as paths relative to it. Folders whose names start with '_' or '.'
// (the log, staging) are not looked into.
Result<std::vector<std::string>> TableFolderFiles(const std::string& table_dir) {
  std::vector<std::string> out;
  const std::filesystem::path root(table_dir);
  std::error_code ec;
  std::filesystem::recursive_directory_iterator it(root, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (it->is_directory() && (name.starts_with("_") || name.starts_with("."))) {
      it.disable_recursion_pending();
      continue;
    }
    if (!it->is_regular_file() || !name.ends_with(".parquet")) continue;
    out.push_back(std::filesystem::relative(it->path(), root).generic_string());
  }
  if (ec) return Status::IoError("cannot list offline table '" + table_dir + "': " + ec.message());
  return out;
}

}  // namespace

// Deletes the table folder's Parquet files that no version of the table references: moved in by a publish
// that a crash cut short before its commit. Files that a commit removed (an overwrite, a roll-back, a
// compaction) stay for time travel until `freshet vacuum` deletes them after the retention.
Status OfflineTable::Impl::RemoveOrphanFiles() {
  FRESHET_ASSIGN_OR_RETURN(std::vector<DeltaFile> active, log.ActiveFiles());
  FRESHET_ASSIGN_OR_RETURN(std::vector<RemovedFile> removed, log.RemovedFiles());
  std::set<std::string> referenced;
  for (const DeltaFile& f : active) referenced.insert(f.path);
  for (const RemovedFile& f : removed) referenced.insert(f.path);
  FRESHET_ASSIGN_OR_RETURN(std::vector<std::string> files, TableFolderFiles(options.table_dir));
  for (const std::string& relative : files) {
    // (A file removed longer ago than a checkpoint's tombstones reach is unreferenced too; it is past the
    // retention anyway.)
    if (referenced.contains(relative)) continue;
    const std::filesystem::path path = std::filesystem::path(options.table_dir) / relative;
    std::error_code ec;
    std::filesystem::remove(path, ec);
    if (ec) return Status::IoError("cannot delete orphan file '" + path.string() + "': " + ec.message());
  }
  return Status::Ok();
}

OfflineTable::OfflineTable(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OfflineTable::~OfflineTable() = default;

Result<std::unique_ptr<OfflineTable>> OfflineTable::Open(OfflineTableOptions options, bool overwrite) {
  std::vector<DeltaColumn> schema;
  arrow::FieldVector fields;
  for (const OfflineColumn& c : options.columns) {
    schema.push_back(ToDeltaColumn(c));
    fields.push_back(arrow::field(c.name, ArrowType(c.type), c.nullable));
  }
  if (!options.partition_column.empty()) schema.push_back(DeltaColumn{options.partition_column, "date", true});
  std::vector<std::string> partitions;
  if (!options.partition_column.empty()) partitions.push_back(options.partition_column);
  std::error_code ec;
  std::filesystem::create_directories(options.table_dir, ec);
  if (ec) {
    return Status::IoError("cannot create offline table folder '" + options.table_dir + "': " + ec.message() +
                           "; check the `offline.path` of the spec and its permissions");
  }
  FRESHET_ASSIGN_OR_RETURN(TableLock lock, TableLock::Acquire(options.table_dir, options.shared_writers));
  FRESHET_ASSIGN_OR_RETURN(DeltaLog log, DeltaLog::Open(options.table_dir, std::move(schema), partitions));
  log.set_retention_ms(options.retention_ms);
  if (!overwrite) {
    // Another writer's rows would have seq values of their own, colliding with the ones Freshet assigns next.
    FRESHET_ASSIGN_OR_RETURN(std::vector<DeltaFile> active, log.ActiveFiles());
    std::vector<const DeltaFile*> external;
    for (const DeltaFile& f : active) {
      if (f.external) external.push_back(&f);
    }
    if (!external.empty()) {
      const DeltaFile& first = *external.front();
      return Status::Invalid(
          "the offline table '" + options.table_dir + "' has " + std::to_string(external.size()) +
          " file(s) that another writer appended (the first at version " + std::to_string(first.version) + " by " +
          first.engine + ": '" + first.path + "'); Freshet numbers the rows of its tables by seq and cannot continue "
          "a table others append to, as their rows would collide with the seq values it assigns next. Undo the "
          "append (e.g. with deltalake: DeltaTable('" + options.table_dir + "').restore(" +
          std::to_string(first.version - 1) + "); the rows stay readable by time travel), or set `offline.path` to "
          "a new folder");
    }
  }
  if (!log.schema_matches() && !overwrite && options.evolve_schema) FRESHET_RETURN_IF_ERROR(log.EvolveSchema());
  if (!log.schema_matches() && !overwrite) {
    return Status::Invalid("the offline table '" + options.table_dir + "' has other columns than the spec now gives it (" +
                           log.stored_schema() + "); rebuild it with `freshet backfill`, or set `offline.path` to a new folder");
  }
  std::filesystem::create_directories(options.staging_dir, ec);
  if (ec) return Status::IoError("cannot create staging folder '" + options.staging_dir + "': " + ec.message());
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->lock = std::move(lock);
  impl->log = std::move(log);
  impl->overwrite_pending = overwrite;
  impl->buffer.columns.resize(impl->options.columns.size());
  impl->schema = arrow::schema(fields);
  if (impl->log.latest_version() == 0 && !overwrite) FRESHET_RETURN_IF_ERROR(impl->AddEmptyFile());
  return std::unique_ptr<OfflineTable>(new OfflineTable(std::move(impl)));
}

// Commits a zero-row file with the table's columns to a new table, so that readers of plain Parquet (a glob
// over the folder, pandas or pyarrow on the folder) see an empty table rather than no files. In a
// partitioned table it lies in the partition of the day the table is created: a real value, since pyarrow
// cannot type a partition column whose only value is the null one (`__HIVE_DEFAULT_PARTITION__`), and a
// zero-row file adds no row to that date. Compaction merges it away once that date has rows.
Status OfflineTable::Impl::AddEmptyFile() {
  Rows none;
  none.columns.resize(options.columns.size());
  std::optional<int32_t> today;
  if (!options.partition_column.empty()) today = static_cast<int32_t>(FloorDiv(WallClockMs(), 86'400'000));
  FRESHET_ASSIGN_OR_RETURN(StagedCommit::File f, WriteFile(none, {}, today));
  const std::filesystem::path target = std::filesystem::path(options.table_dir) / f.file.path;
  std::error_code ec;
  std::filesystem::create_directories(target.parent_path(), ec);
  if (ec) return Status::IoError("cannot create '" + target.parent_path().string() + "': " + ec.message());
  if (::rename(f.staged_path.c_str(), target.c_str()) != 0) {
    return Status::IoError("cannot move '" + f.staged_path + "' into the table as '" + target.string() + "': " +
                           std::strerror(errno));
  }
  FRESHET_RETURN_IF_ERROR(SyncDirectory(target.parent_path().string()));
  f.file.tags["freshet.app"] = options.app_id;
  DeltaCommit commit;
  commit.version = log.latest_version() + 1;
  commit.adds.push_back(f.file);
  return CommitRetrying(commit);
}

void OfflineTable::BeginRow(int64_t partition_time_ms) {
  impl_->next_column = 0;
  ++impl_->buffer.rows;
  if (!impl_->options.partition_column.empty()) {
    impl_->buffer.row_days.push_back(static_cast<int32_t>(FloorDiv(partition_time_ms, 86'400'000)));
  }
}

void OfflineTable::PutInt(int64_t value) {
  ColumnBuffer& c = impl_->Next();
  c.ints.push_back(value);
  c.valid.push_back(1);
  impl_->buffer.bytes += 9;
}

void OfflineTable::PutTimestampMs(int64_t epoch_ms) { PutInt(epoch_ms); }

void OfflineTable::PutBool(bool value) { PutInt(value ? 1 : 0); }

void OfflineTable::PutDouble(double value) {
  ColumnBuffer& c = impl_->Next();
  c.doubles.push_back(value);
  c.valid.push_back(1);
  impl_->buffer.bytes += 9;
}

void OfflineTable::PutString(std::string_view value) {
  ColumnBuffer& c = impl_->Next();
  c.chars.append(value);
  c.ends.push_back(c.chars.size());
  c.valid.push_back(1);
  impl_->buffer.bytes += value.size() + 9;
}

void OfflineTable::PutNull() {
  const size_t k = impl_->next_column;
  ColumnBuffer& c = impl_->Next();
  switch (impl_->options.columns[k].type) {
    case OfflineType::kInt64:
    case OfflineType::kTimestamp:
    case OfflineType::kBool: c.ints.push_back(0); break;
    case OfflineType::kDouble: c.doubles.push_back(0); break;
    case OfflineType::kString:
    case OfflineType::kStringList:
    case OfflineType::kValueCounts: c.ends.push_back(c.chars.size()); break;
  }
  c.valid.push_back(0);
  impl_->buffer.bytes += 9;
}

size_t OfflineTable::buffered_rows() const { return impl_->buffer.rows; }
uint64_t OfflineTable::buffered_bytes() const { return impl_->buffer.bytes; }
const DeltaLog& OfflineTable::log() const { return impl_->log; }
const OfflineTableOptions& OfflineTable::options() const { return impl_->options; }

Result<StagedCommit::File> OfflineTable::Impl::WriteFile(const Rows& rows, const std::vector<uint32_t>& rows_in_file,
                                                         std::optional<int32_t> day) {
  arrow::ArrayVector arrays;
  for (size_t k = 0; k < options.columns.size(); ++k) {
    const ColumnBuffer& c = rows.columns[k];
    std::shared_ptr<arrow::Array> array;
    arrow::Status st;
    switch (options.columns[k].type) {
      case OfflineType::kInt64: {
        arrow::Int64Builder b;
        st = b.Reserve(rows_in_file.size());
        for (uint32_t r : rows_in_file) c.valid[r] ? b.UnsafeAppend(c.ints[r]) : b.UnsafeAppendNull();
        if (st.ok()) st = b.Finish(&array);
        break;
      }
      case OfflineType::kTimestamp: {
        arrow::TimestampBuilder b(ArrowType(OfflineType::kTimestamp), arrow::default_memory_pool());
        st = b.Reserve(rows_in_file.size());
        for (uint32_t r : rows_in_file) c.valid[r] ? b.UnsafeAppend(c.ints[r] * 1000) : b.UnsafeAppendNull();
        if (st.ok()) st = b.Finish(&array);
        break;
      }
      case OfflineType::kBool: {
        arrow::BooleanBuilder b;
        st = b.Reserve(rows_in_file.size());
        for (uint32_t r : rows_in_file) c.valid[r] ? b.UnsafeAppend(c.ints[r] != 0) : b.UnsafeAppendNull();
        if (st.ok()) st = b.Finish(&array);
        break;
      }
      case OfflineType::kDouble: {
        arrow::DoubleBuilder b;
        st = b.Reserve(rows_in_file.size());
        for (uint32_t r : rows_in_file) c.valid[r] ? b.UnsafeAppend(c.doubles[r]) : b.UnsafeAppendNull();
        if (st.ok()) st = b.Finish(&array);
        break;
      }
      case OfflineType::kString: {
        arrow::StringBuilder b;
        st = b.Reserve(rows_in_file.size());
        if (st.ok()) st = AppendTexts(c, rows_in_file, b);
        if (st.ok()) st = b.Finish(&array);
        break;
      }
      case OfflineType::kStringList:
      case OfflineType::kValueCounts: {
        JsonListBuilder b(options.columns[k].type);
        st = AppendTexts(c, rows_in_file, b);
        if (st.ok()) st = b.Finish(&array);
        break;
      }
    }
    FRESHET_RETURN_IF_ERROR(FromArrow(st, "cannot build column '" + options.columns[k].name + "'"));
    arrays.push_back(std::move(array));
  }
  std::shared_ptr<arrow::Table> table = arrow::Table::Make(schema, arrays, static_cast<int64_t>(rows_in_file.size()));

  StagedCommit::File out;
  char name[96];
  std::snprintf(name, sizeof(name), "part-%05llu-%s.zstd.parquet", static_cast<unsigned long long>(staged_files++),
                RandomSuffix().c_str());
  out.file.path = name;
  if (day) {
    const std::string value = UtcDate(static_cast<int64_t>(*day) * 86'400'000);
    out.file.partition_values[options.partition_column] = value;
    out.file.path = options.partition_column + "=" + value + "/" + name;
  }
  out.staged_path = (std::filesystem::path(options.staging_dir) / name).string();
  out.file.num_records = rows_in_file.size();
  out.file.stats = StatsJson(*table);
  FRESHET_RETURN_IF_ERROR(WriteParquet(*table, out.staged_path, options.row_group_rows, NoDictionaryColumns(*schema)));
  std::error_code ec;
  out.file.size_bytes = std::filesystem::file_size(out.staged_path, ec);
  out.file.modification_ms = WallClockMs();
  return out;
}

void OfflineTable::RowsDeleter::operator()(Rows* rows) const { delete rows; }

OfflineTable::RowsPtr OfflineTable::TakeRows() {
  RowsPtr taken(new Rows(std::move(impl_->buffer)));
  impl_->buffer = Rows();
  impl_->buffer.columns.resize(impl_->options.columns.size());
  // Keep the capacity a similar batch will need, so the next one does not grow (and fault) from nothing.
  for (size_t k = 0; k < taken->columns.size(); ++k) {
    impl_->buffer.columns[k].ints.reserve(taken->columns[k].ints.size());
    impl_->buffer.columns[k].doubles.reserve(taken->columns[k].doubles.size());
    impl_->buffer.columns[k].valid.reserve(taken->columns[k].valid.size());
  }
  return taken;
}

Result<std::optional<StagedCommit>> OfflineTable::Stage(std::optional<int64_t> txn_version) {
  RowsPtr taken = TakeRows();
  return StageRows(taken, txn_version);
}

uint64_t OfflineTable::RowsBytes(const RowsPtr& rows) { return rows ? rows->bytes : 0; }

Result<std::optional<StagedCommit>> OfflineTable::StageRows(RowsPtr& taken, std::optional<int64_t> txn_version) {
  Impl& m = *impl_;
  if (taken == nullptr || (taken->rows == 0 && !m.overwrite_pending)) {
    taken.reset();
    return std::optional<StagedCommit>();
  }
  const Rows& rows_taken = *taken;
  StagedCommit commit;
  commit.txn_version = txn_version;
  if (m.overwrite_pending) {
    FRESHET_ASSIGN_OR_RETURN(std::vector<DeltaFile> active, m.log.ActiveFiles());
    for (const DeltaFile& f : active) commit.removes.push_back(f.path);
    commit.replace_metadata = true;
  }
  // Group rows by partition (stable, so each file keeps the rows' order).
  std::map<int32_t, std::vector<uint32_t>> groups;
  for (uint32_t r = 0; r < rows_taken.rows; ++r) {
    groups[rows_taken.row_days.empty() ? 0 : rows_taken.row_days[r]].push_back(r);
  }
  if (m.options.sort_by_first_column && !rows_taken.columns.empty()) {
    const std::vector<int64_t>& first = rows_taken.columns[0].ints;
    for (auto& [day, rows] : groups) {
      std::stable_sort(rows.begin(), rows.end(), [&](uint32_t a, uint32_t b) { return first[a] < first[b]; });
    }
  }
  // A failed attempt removes the files it wrote, so that a retry does not leave copies behind.
  auto fail = [&commit](Status status) -> Result<std::optional<StagedCommit>> {
    for (const StagedCommit::File& f : commit.files) ::unlink(f.staged_path.c_str());
    return status;
  };
  for (const auto& [day, rows] : groups) {
    std::optional<int32_t> partition;
    if (!rows_taken.row_days.empty()) partition = day;
    Result<StagedCommit::File> f = m.WriteFile(rows_taken, rows, partition);
    if (!f.ok()) return fail(f.status());
    commit.files.push_back(std::move(*f));
  }
  if (Status synced = SyncDirectory(m.options.staging_dir); !synced.ok()) return fail(synced);
  taken.reset();
  return std::optional<StagedCommit>(std::move(commit));
}

Status OfflineTable::Publish(const StagedCommit& commit, const std::string& app_id) {
  Impl& m = *impl_;
  const std::string& writer = app_id.empty() ? m.options.app_id : app_id;
  if (m.options.shared_writers) FRESHET_RETURN_IF_ERROR(m.log.Refresh());
  if (commit.txn_version) {
    std::optional<int64_t> newest = m.log.TxnVersion(writer);
    if (newest && *newest >= *commit.txn_version) return Status::Ok();  // Published before a crash.
  }
  std::vector<std::string> folders;
  for (const StagedCommit::File& f : commit.files) {
    const std::filesystem::path target = std::filesystem::path(m.options.table_dir) / f.file.path;
    std::error_code ec;
    std::filesystem::create_directories(target.parent_path(), ec);
    if (ec) return Status::IoError("cannot create '" + target.parent_path().string() + "': " + ec.message());
    if (std::filesystem::exists(f.staged_path)) {
      if (::rename(f.staged_path.c_str(), target.c_str()) != 0) {
        return Status::IoError("cannot move '" + f.staged_path + "' into the table as '" + target.string() +
                               "': " + std::strerror(errno));
      }
    } else if (!std::filesystem::exists(target)) {
      return Status::IoError("the offline file '" + f.file.path + "' is neither staged nor in the table '" +
                             m.options.table_dir + "'; the staging folder '" + m.options.staging_dir +
                             "' was changed by hand");
    }
    folders.push_back(target.parent_path().string());
  }
  std::sort(folders.begin(), folders.end());
  folders.erase(std::unique(folders.begin(), folders.end()), folders.end());
  for (const std::string& folder : folders) FRESHET_RETURN_IF_ERROR(SyncDirectory(folder));
  DeltaCommit delta;
  delta.version = m.log.latest_version() + 1;
  delta.app_id = writer;
  delta.txn_version = commit.txn_version;
  delta.removes = commit.removes;
  delta.replace_metadata = commit.replace_metadata;
  if (commit.replace_metadata) delta.operation = "CREATE OR REPLACE TABLE";
  for (const StagedCommit::File& f : commit.files) {
    delta.adds.push_back(f.file);
    // Tags mark Freshet's own files (another writer's appends are refused at Open) and keep each file's txn
    // version across checkpoints and compactions, for RollBackAfter.
    delta.adds.back().tags["freshet.app"] = writer;
    if (commit.txn_version) delta.adds.back().tags["freshet.txn"] = std::to_string(*commit.txn_version);
  }
  FRESHET_RETURN_IF_ERROR(m.CommitRetrying(delta));
  if (commit.replace_metadata) m.overwrite_pending = false;
  if (m.options.compact_every > 0 && !m.options.shared_writers && ++m.publishes_since_compaction >= m.options.compact_every) {
    m.publishes_since_compaction = 0;
    // The rows are committed; a compaction that fails leaves the small files, to be compacted next time.
    if (Result<CompactionResult> compacted = Compact(); !compacted.ok()) {
      std::fprintf(stderr, "freshet: warning: compacting offline table '%s' failed: %s\n", m.options.table_dir.c_str(),
                   compacted.status().message().c_str());
    }
  }
  return Status::Ok();
}

Result<size_t> OfflineTable::RollBackAfter(std::optional<int64_t> txn_version) {
  FRESHET_ASSIGN_OR_RETURN(std::vector<DeltaFile> active, impl_->log.ActiveFiles());
  DeltaCommit commit;
  commit.version = impl_->log.latest_version() + 1;
  commit.operation = "DELETE";
  // The txn version goes back to what is kept, so that the re-read events' commits are published again.
  commit.app_id = impl_->options.app_id;
  commit.txn_version = txn_version.value_or(-1);
  for (const DeltaFile& f : active) {
    if (f.txn_version < 0 || (txn_version && f.txn_version <= *txn_version)) continue;
    // A compacted file holding rows of kept commits too cannot be removed without losing those rows.
    if (auto it = f.tags.find("freshet.txn.min"); it != f.tags.end() && txn_version &&
                                                  std::strtoll(it->second.c_str(), nullptr, 10) <= *txn_version) {
      return Status::Invalid("the offline table '" + impl_->options.table_dir + "' file '" + f.path + "' compacts rows "
                             "committed before and after the checkpoint being restored (" + std::to_string(*txn_version) +
                             "), so they cannot be rolled back apart; restore a newer checkpoint, or rebuild the table "
                             "(`freshet run --reset`)");
    }
    commit.removes.push_back(f.path);
  }
  if (commit.removes.empty()) return size_t{0};
  bool existed = false;
  FRESHET_RETURN_IF_ERROR(impl_->log.Commit(commit, &existed));
  return commit.removes.size();
}

Status OfflineTable::DropStaging() {
  // Shared: files staged by others may still be published by whoever restores their checkpoints.
  if (impl_->options.shared_writers) return Status::Ok();
  std::error_code ec;
  for (std::filesystem::directory_iterator it(impl_->options.staging_dir, ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    std::filesystem::remove(it->path(), ec);
  }
  if (ec) return Status::IoError("cannot clear staging folder '" + impl_->options.staging_dir + "': " + ec.message());
  return impl_->RemoveOrphanFiles();
}

namespace {

// Compacts the table of `log`, whose lock the caller holds (see CompactTable).
Result<CompactionResult> CompactLocked(DeltaLog& log, const CompactionOptions& options) {
  FRESHET_ASSIGN_OR_RETURN(std::vector<DeltaFile> active, log.ActiveFiles());
  // Runs of small files per partition, in the order they were added.
  std::map<std::map<std::string, std::string>, std::vector<std::vector<const DeltaFile*>>> runs;
  for (const DeltaFile& f : active) {
    if (static_cast<int64_t>(f.size_bytes) >= options.small_file_bytes) continue;
    auto& partition_runs = runs[f.partition_values];
    int64_t run_bytes = 0;
    if (!partition_runs.empty()) {
      for (const DeltaFile* g : partition_runs.back()) run_bytes += static_cast<int64_t>(g->size_bytes);
    }
    if (partition_runs.empty() || run_bytes + static_cast<int64_t>(f.size_bytes) > options.target_file_bytes) {
      partition_runs.emplace_back();
    }
    partition_runs.back().push_back(&f);
  }
  CompactionResult result;
  DeltaCommit commit;
  commit.operation = "OPTIMIZE";
  commit.data_change = false;
  std::vector<std::string> moved_in;  // Deleted again when the commit fails.
  auto fail = [&](Status status) -> Result<CompactionResult> {
    for (const std::string& p : moved_in) ::unlink(p.c_str());
    return status;
  };
  std::error_code ec;
  std::filesystem::create_directories(options.staging_dir, ec);
  for (auto& [partition, partition_runs] : runs) {
    for (std::vector<const DeltaFile*>& run : partition_runs) {
      if (run.size() < 2) continue;
      std::vector<std::shared_ptr<arrow::Table>> tables;
      int64_t txn_version = -1, min_txn_version = std::numeric_limits<int64_t>::max();
      for (const DeltaFile* f : run) {
        Result<std::shared_ptr<arrow::Table>> t = ReadParquet((std::filesystem::path(log.table_dir()) / f->path).string());
        if (!t.ok()) return fail(t.status());
        tables.push_back(std::move(*t));
        txn_version = std::max(txn_version, f->txn_version);
        int64_t low = f->txn_version;
        if (auto it = f->tags.find("freshet.txn.min"); it != f->tags.end()) low = std::strtoll(it->second.c_str(), nullptr, 10);
        min_txn_version = std::min(min_txn_version, low);
      }
      // Each file is in seq order and, within a partition, later commits hold later seq values: ordered by
      // their first seq the files' rows follow on. Files whose seq ranges overlap are left as they are.
      const int seq_column = tables.front()->schema()->GetFieldIndex("seq");
      if (seq_column >= 0) {
        std::vector<std::pair<int64_t, int64_t>> ranges;  // (first, last) seq of each file.
        std::vector<size_t> order(tables.size());
        for (size_t k = 0; k < tables.size(); ++k) {
          order[k] = k;
          const int c = tables[k]->schema()->GetFieldIndex("seq");
          if (c < 0 || tables[k]->num_rows() == 0) {
            ranges.emplace_back(std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::min());
            continue;
          }
          const auto& chunks = tables[k]->column(c)->chunks();
          const auto& first = static_cast<const arrow::Int64Array&>(*chunks.front());
          const auto& last = static_cast<const arrow::Int64Array&>(*chunks.back());
          ranges.emplace_back(first.Value(0), last.Value(last.length() - 1));
        }
        std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranges[a].first < ranges[b].first; });
        bool overlaps = false;
        for (size_t k = 1; k < order.size(); ++k) overlaps = overlaps || ranges[order[k]].first <= ranges[order[k - 1]].second;
        if (overlaps) continue;
        std::vector<std::shared_ptr<arrow::Table>> sorted;
        for (size_t k : order) sorted.push_back(tables[k]);
        tables = std::move(sorted);
      }
      arrow::ConcatenateTablesOptions concat;
      concat.unify_schemas = true;
      auto combined = arrow::ConcatenateTables(tables, concat);
      if (!combined.ok()) return fail(FromArrow(combined.status(), "cannot combine files of '" + log.table_dir() + "'"));
      std::shared_ptr<arrow::Table> table = *combined;

      DeltaFile out;
      const std::string name = "part-compact-" + RandomSuffix() + ".zstd.parquet";
      out.partition_values = partition;
      const std::filesystem::path first_path(run.front()->path);
      out.path = (first_path.has_parent_path() ? first_path.parent_path().generic_string() + "/" : std::string()) + name;
      const std::string staged = (std::filesystem::path(options.staging_dir) / name).string();
      if (Status w = WriteParquet(*table, staged, 256 * 1024, NoDictionaryColumns(*table->schema())); !w.ok()) return fail(w);
      out.size_bytes = std::filesystem::file_size(staged, ec);
      out.modification_ms = WallClockMs();
      out.num_records = static_cast<uint64_t>(table->num_rows());
      out.stats = StatsJson(*table);
      out.tags["freshet.app"] = options.app_id;
      // The newest and oldest txn versions of the rows: RollBackAfter must not split them (see there).
      if (txn_version >= 0) out.tags["freshet.txn"] = std::to_string(txn_version);
      if (txn_version >= 0 && min_txn_version < txn_version) out.tags["freshet.txn.min"] = std::to_string(min_txn_version);
      const std::filesystem::path target = std::filesystem::path(log.table_dir()) / out.path;
      if (::rename(staged.c_str(), target.c_str()) != 0) {
        ::unlink(staged.c_str());
        return fail(Status::IoError("cannot move '" + staged + "' into the table as '" + target.string() + "': " +
                                    std::strerror(errno)));
      }
      moved_in.push_back(target.string());
      if (Status synced = SyncDirectory(target.parent_path().string()); !synced.ok()) return fail(synced);
      for (const DeltaFile* f : run) commit.removes.push_back(f->path);
      commit.adds.push_back(std::move(out));
      result.files_removed += run.size();
      result.rows += static_cast<uint64_t>(table->num_rows());
    }
  }
  if (commit.adds.empty()) return result;
  commit.version = log.latest_version() + 1;
  bool existed = false;
  if (Status committed = log.Commit(commit, &existed); !committed.ok()) return fail(committed);
  result.files_added = commit.adds.size();
  result.version = commit.version;
  return result;
}

}  // namespace

Result<CompactionResult> OfflineTable::Compact() { return CompactLocked(impl_->log, impl_->Compaction()); }

Result<CompactionResult> CompactTable(const std::string& table_dir, const CompactionOptions& options) {
  FRESHET_ASSIGN_OR_RETURN(TableLock lock, TableLock::Acquire(table_dir));
  if (!std::filesystem::exists(std::filesystem::path(table_dir) / "_delta_log")) {
    return Status::NotFound("'" + table_dir + "' holds no Delta table (no _delta_log folder)");
  }
  // Opened with the stored schema: compaction keeps whatever columns the files have.
  FRESHET_ASSIGN_OR_RETURN(DeltaLog log, DeltaLog::Open(table_dir, {}, {}));
  log.set_retention_ms(options.retention_ms);
  return CompactLocked(log, options);
}

Result<VacuumResult> VacuumTable(const std::string& table_dir, int64_t retention_ms, bool dry_run) {
  FRESHET_ASSIGN_OR_RETURN(TableLock lock, TableLock::Acquire(table_dir));
  if (!std::filesystem::exists(std::filesystem::path(table_dir) / "_delta_log")) {
    return Status::NotFound("'" + table_dir + "' holds no Delta table (no _delta_log folder)");
  }
  FRESHET_ASSIGN_OR_RETURN(DeltaLog log, DeltaLog::Open(table_dir, {}, {}));
  FRESHET_ASSIGN_OR_RETURN(std::vector<DeltaFile> active, log.ActiveFiles());
  FRESHET_ASSIGN_OR_RETURN(std::vector<RemovedFile> removed, log.RemovedFiles());
  std::set<std::string> live;
  for (const DeltaFile& f : active) live.insert(f.path);
  std::map<std::string, int64_t> removed_ms;
  for (const RemovedFile& r : removed) removed_ms[r.path] = r.deletion_ms;
  FRESHET_ASSIGN_OR_RETURN(std::vector<std::string> files, TableFolderFiles(table_dir));
  const int64_t expired_before = WallClockMs() - retention_ms;
  VacuumResult result;
  for (const std::string& relative : files) {
    if (live.contains(relative)) continue;
    const std::filesystem::path path = std::filesystem::path(table_dir) / relative;
    // Since when the file is out of the table: its remove, or (a file no kept tombstone names) its own time.
    int64_t out_since_ms = 0;
    if (auto it = removed_ms.find(relative); it != removed_ms.end()) {
      out_since_ms = it->second;
    } else {
      struct stat st {};
      if (::stat(path.c_str(), &st) != 0) continue;
      out_since_ms = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000 + st.st_mtim.tv_nsec / 1'000'000;
    }
    if (out_since_ms >= expired_before) {
      ++result.kept;
      continue;
    }
    std::error_code ec;
    const uint64_t bytes = std::filesystem::file_size(path, ec);
    if (!dry_run) {
      std::filesystem::remove(path, ec);
      if (ec) return Status::IoError("cannot delete '" + path.string() + "': " + ec.message());
    }
    result.deleted.push_back(relative);
    result.deleted_bytes += ec ? 0 : bytes;
  }
  return result;
}

}  // namespace freshet

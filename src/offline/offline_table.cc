#include "offline/offline_table.h"

#include <arrow/api.h>
#include <arrow/io/file.h>
#include <fcntl.h>
#include <parquet/arrow/writer.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "common/bytes.h"
#include "common/files.h"
#include "common/time.h"

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
  }
  return arrow::utf8();
}

// One column of buffered rows.
struct ColumnBuffer {
  std::vector<int64_t> ints;     // kInt64, kTimestamp (epoch ms).
  std::vector<double> doubles;   // kDouble.
  std::string chars;             // kString: the bytes of every value, back to back;
  std::vector<uint64_t> ends;    // and where each value ends.
  std::vector<uint8_t> valid;
};

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

}  // namespace

DeltaColumn ToDeltaColumn(const OfflineColumn& column) {
  const char* type = "string";
  switch (column.type) {
    case OfflineType::kInt64: type = "long"; break;
    case OfflineType::kDouble: type = "double"; break;
    case OfflineType::kString: type = "string"; break;
    case OfflineType::kTimestamp: type = "timestamp"; break;
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
  DeltaLog log;
  bool overwrite_pending = false;
  std::atomic<uint64_t> staged_files{0};  // Names staged files uniquely within this process.
  Rows buffer;
  size_t next_column = 0;
  std::shared_ptr<arrow::Schema> schema;

  ColumnBuffer& Next() { return buffer.columns[next_column++]; }
  Status RemoveUnreferencedFiles();
  Result<StagedCommit::File> WriteFile(const Rows& rows, const std::vector<uint32_t>& rows_in_file,
                                       std::optional<int32_t> day);
};

// Deletes the table folder's Parquet files that the newest commit does not reference: files removed by an
// overwrite or a roll-back (and those a crash left between such a commit and their deletion). Plain Parquet
// readers (a glob over the folder) then see exactly the table; the price is Delta time travel to versions
// whose files are gone. Folders whose names start with '_' or '.' (the log, staging) are not looked into.
Status OfflineTable::Impl::RemoveUnreferencedFiles() {
  FRESHET_ASSIGN_OR_RETURN(std::vector<DeltaFile> active, log.ActiveFiles());
  std::set<std::string> referenced;
  for (const DeltaFile& f : active) referenced.insert(f.path);
  const std::filesystem::path root(options.table_dir);
  std::error_code ec;
  std::filesystem::recursive_directory_iterator it(root, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (it->is_directory() && (name.starts_with("_") || name.starts_with("."))) {
      it.disable_recursion_pending();
      continue;
    }
    if (!it->is_regular_file() || !name.ends_with(".parquet")) continue;
    const std::string relative = std::filesystem::relative(it->path(), root).generic_string();
    if (!referenced.contains(relative)) std::filesystem::remove(it->path(), ec);
  }
  if (ec) return Status::IoError("cannot clean up offline table '" + options.table_dir + "': " + ec.message());
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
  FRESHET_ASSIGN_OR_RETURN(DeltaLog log, DeltaLog::Open(options.table_dir, std::move(schema), partitions));
  if (!log.schema_matches() && !overwrite && options.evolve_schema) FRESHET_RETURN_IF_ERROR(log.EvolveSchema());
  if (!log.schema_matches() && !overwrite) {
    return Status::Invalid("the offline table '" + options.table_dir + "' has other columns than the spec now gives it (" +
                           log.stored_schema() + "); rebuild it with `freshet backfill`, or set `offline.path` to a new folder");
  }
  std::error_code ec;
  std::filesystem::create_directories(options.staging_dir, ec);
  if (ec) return Status::IoError("cannot create staging folder '" + options.staging_dir + "': " + ec.message());
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->log = std::move(log);
  impl->overwrite_pending = overwrite;
  impl->buffer.columns.resize(impl->options.columns.size());
  impl->schema = arrow::schema(fields);
  return std::unique_ptr<OfflineTable>(new OfflineTable(std::move(impl)));
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
    case OfflineType::kTimestamp: c.ints.push_back(0); break;
    case OfflineType::kDouble: c.doubles.push_back(0); break;
    case OfflineType::kString: c.ends.push_back(c.chars.size()); break;
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
        for (uint32_t r : rows_in_file) {
          if (!st.ok()) break;
          const uint64_t begin = r == 0 ? 0 : c.ends[r - 1];
          st = c.valid[r] ? b.Append(std::string_view(c.chars.data() + begin, c.ends[r] - begin)) : b.AppendNull();
        }
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

  auto sink = arrow::io::FileOutputStream::Open(out.staged_path);
  if (!sink.ok()) return FromArrow(sink.status(), "cannot create '" + out.staged_path + "'");
  parquet::WriterProperties::Builder props;
  props.compression(parquet::Compression::ZSTD);
  // Sequence numbers and times are nearly unique per row: a dictionary only costs there.
  for (const OfflineColumn& c : options.columns) {
    if (c.type == OfflineType::kTimestamp || c.name == "seq") props.disable_dictionary(c.name);
  }
  std::shared_ptr<parquet::ArrowWriterProperties> arrow_props =
      parquet::ArrowWriterProperties::Builder().store_schema()->build();
  Status written = FromArrow(parquet::arrow::WriteTable(*table, arrow::default_memory_pool(), *sink,
                                                        options.row_group_rows, props.build(), arrow_props),
                             "cannot write Parquet file '" + out.staged_path + "'");
  const arrow::Status closed = (*sink)->Close();
  if (written.ok()) written = FromArrow(closed, "cannot close '" + out.staged_path + "'");
  if (written.ok()) written = FsyncFile(out.staged_path);
  if (!written.ok()) {
    ::unlink(out.staged_path.c_str());  // Half a file (a full disk): the rows are staged again later.
    return written;
  }
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

Status OfflineTable::Publish(const StagedCommit& commit) {
  Impl& m = *impl_;
  if (commit.txn_version) {
    std::optional<int64_t> newest = m.log.TxnVersion(m.options.app_id);
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
  delta.app_id = m.options.app_id;
  delta.txn_version = commit.txn_version;
  delta.removes = commit.removes;
  delta.replace_metadata = commit.replace_metadata;
  if (commit.replace_metadata) delta.operation = "CREATE OR REPLACE TABLE";
  for (const StagedCommit::File& f : commit.files) delta.adds.push_back(f.file);
  bool existed = false;
  FRESHET_RETURN_IF_ERROR(m.log.Commit(delta, &existed));
  if (commit.replace_metadata) m.overwrite_pending = false;
  if (!commit.removes.empty()) FRESHET_RETURN_IF_ERROR(m.RemoveUnreferencedFiles());
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
    if (f.txn_version >= 0 && (!txn_version || f.txn_version > *txn_version)) commit.removes.push_back(f.path);
  }
  if (commit.removes.empty()) return size_t{0};
  bool existed = false;
  FRESHET_RETURN_IF_ERROR(impl_->log.Commit(commit, &existed));
  FRESHET_RETURN_IF_ERROR(impl_->RemoveUnreferencedFiles());
  return commit.removes.size();
}

Status OfflineTable::DropStaging() {
  std::error_code ec;
  for (std::filesystem::directory_iterator it(impl_->options.staging_dir, ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    std::filesystem::remove(it->path(), ec);
  }
  if (ec) return Status::IoError("cannot clear staging folder '" + impl_->options.staging_dir + "': " + ec.message());
  return impl_->RemoveUnreferencedFiles();
}

}  // namespace freshet

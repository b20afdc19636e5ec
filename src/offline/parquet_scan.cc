#include "offline/parquet_scan.h"

#include <arrow/api.h>
#include <arrow/io/file.h>
#include <parquet/arrow/reader.h>

#include <filesystem>

#include "offline/delta_log.h"

namespace freshet {
namespace {

Status FromArrow(const arrow::Status& status, const std::string& what) {
  if (status.ok()) return Status::Ok();
  return Status::IoError(what + ": " + status.ToString());
}

int64_t ToMs(int64_t value, arrow::TimeUnit::type unit) {
  switch (unit) {
    case arrow::TimeUnit::SECOND: return value * 1000;
    case arrow::TimeUnit::MILLI: return value;
    case arrow::TimeUnit::MICRO: return value >= 0 ? value / 1000 : -((-value + 999) / 1000);
    case arrow::TimeUnit::NANO: return value >= 0 ? value / 1000000 : -((-value + 999999) / 1000000);
  }
  return value;
}

// Views of a string column's values, and the end of the readable memory they lie in.
template <typename StringArray>
void ReadStrings(const StringArray& a, size_t rows, ScanColumn* c) {
  c->type = OfflineType::kString;
  c->strings.resize(rows);
  for (size_t r = 0; r < rows; ++r) c->strings[r] = a.GetView(static_cast<int64_t>(r));
  const std::shared_ptr<arrow::Buffer>& data = a.value_data();
  c->readable_end = data ? reinterpret_cast<const char*>(data->data()) + data->capacity() : nullptr;
}

}  // namespace

struct ParquetScanner::Impl {
  std::string path;
  std::unique_ptr<parquet::arrow::FileReader> reader;
  std::shared_ptr<arrow::RecordBatchReader> batches;
  std::vector<std::string> names;
};

ParquetScanner::ParquetScanner(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ParquetScanner::~ParquetScanner() = default;
const std::vector<std::string>& ParquetScanner::column_names() const { return impl_->names; }

Result<std::unique_ptr<ParquetScanner>> ParquetScanner::Open(const std::string& path,
                                                             const std::vector<std::string>& columns) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  auto file = arrow::io::ReadableFile::Open(path);
  if (!file.ok()) return FromArrow(file.status(), "cannot open Parquet file '" + path + "'");
  FRESHET_RETURN_IF_ERROR(FromArrow(parquet::arrow::OpenFile(*file, arrow::default_memory_pool(), &impl->reader),
                                    "cannot read Parquet file '" + path + "'"));
  std::shared_ptr<arrow::Schema> schema;
  FRESHET_RETURN_IF_ERROR(FromArrow(impl->reader->GetSchema(&schema), "cannot read the schema of '" + path + "'"));
  impl->names = schema->field_names();
  std::vector<int> indices;
  for (const std::string& c : columns) {
    const int k = schema->GetFieldIndex(c);
    if (k < 0) {
      std::string have;
      for (const std::string& n : impl->names) have += (have.empty() ? "" : ", ") + n;
      return Status::Invalid("Parquet file '" + path + "' has no column '" + c + "' (it has: " + have + ")");
    }
    indices.push_back(k);
  }
  std::vector<int> row_groups(impl->reader->num_row_groups());
  for (size_t k = 0; k < row_groups.size(); ++k) row_groups[k] = static_cast<int>(k);
  std::unique_ptr<arrow::RecordBatchReader> batches;
  FRESHET_RETURN_IF_ERROR(FromArrow(impl->reader->GetRecordBatchReader(row_groups, indices, &batches),
                                    "cannot read Parquet file '" + path + "'"));
  impl->batches = std::move(batches);
  return std::unique_ptr<ParquetScanner>(new ParquetScanner(std::move(impl)));
}

Result<bool> ParquetScanner::Next(ScanBatch* out) {
  std::shared_ptr<arrow::RecordBatch> batch;
  FRESHET_RETURN_IF_ERROR(FromArrow(impl_->batches->ReadNext(&batch), "cannot read Parquet file '" + impl_->path + "'"));
  if (batch == nullptr) return false;
  out->rows = static_cast<size_t>(batch->num_rows());
  out->columns.resize(static_cast<size_t>(batch->num_columns()));
  for (int k = 0; k < batch->num_columns(); ++k) {
    const arrow::Array& array = *batch->column(k);
    ScanColumn& c = out->columns[k];
    c.ints.clear();
    c.doubles.clear();
    c.strings.clear();
    c.valid.resize(out->rows);
    for (size_t r = 0; r < out->rows; ++r) c.valid[r] = array.IsValid(static_cast<int64_t>(r)) ? 1 : 0;
    switch (array.type_id()) {
      case arrow::Type::INT64: {
        const auto& a = static_cast<const arrow::Int64Array&>(array);
        c.type = OfflineType::kInt64;
        c.ints.assign(a.raw_values(), a.raw_values() + out->rows);
        break;
      }
      case arrow::Type::INT32: {
        const auto& a = static_cast<const arrow::Int32Array&>(array);
        c.type = OfflineType::kInt64;
        c.ints.assign(a.raw_values(), a.raw_values() + out->rows);
        break;
      }
      case arrow::Type::BOOL: {
        const auto& a = static_cast<const arrow::BooleanArray&>(array);
        c.type = OfflineType::kInt64;
        for (size_t r = 0; r < out->rows; ++r) c.ints.push_back(a.Value(static_cast<int64_t>(r)) ? 1 : 0);
        break;
      }
      case arrow::Type::TIMESTAMP: {
        const auto& a = static_cast<const arrow::TimestampArray&>(array);
        const auto unit = static_cast<const arrow::TimestampType&>(*a.type()).unit();
        c.type = OfflineType::kTimestamp;
        c.ints.resize(out->rows);
        for (size_t r = 0; r < out->rows; ++r) c.ints[r] = ToMs(a.Value(static_cast<int64_t>(r)), unit);
        break;
      }
      case arrow::Type::DOUBLE: {
        const auto& a = static_cast<const arrow::DoubleArray&>(array);
        c.type = OfflineType::kDouble;
        c.doubles.assign(a.raw_values(), a.raw_values() + out->rows);
        break;
      }
      case arrow::Type::FLOAT: {
        const auto& a = static_cast<const arrow::FloatArray&>(array);
        c.type = OfflineType::kDouble;
        c.doubles.assign(a.raw_values(), a.raw_values() + out->rows);
        break;
      }
      case arrow::Type::STRING: ReadStrings(static_cast<const arrow::StringArray&>(array), out->rows, &c); break;
      case arrow::Type::LARGE_STRING:
        ReadStrings(static_cast<const arrow::LargeStringArray&>(array), out->rows, &c);
        break;
      default:
        return Status::Invalid("Parquet file '" + impl_->path + "': column '" + batch->schema()->field(k)->name() +
                               "' has type " + array.type()->ToString() +
                               ", which Freshet does not read (integers, doubles, strings and timestamps only)");
    }
  }
  out->keep_alive = batch;
  return true;
}

Result<std::vector<std::string>> DeltaTableFiles(const std::string& table_dir) {
  if (!std::filesystem::is_directory(std::filesystem::path(table_dir) / "_delta_log")) {
    return Status::NotFound("'" + table_dir + "' is not a Delta table (it has no _delta_log folder); run `freshet run` "
                            "or `freshet backfill` to write it, or give the events with --events");
  }
  FRESHET_ASSIGN_OR_RETURN(std::vector<DeltaFile> files, DeltaLog::ReadActiveFiles(table_dir));
  std::vector<std::string> paths;
  for (const DeltaFile& f : files) paths.push_back((std::filesystem::path(table_dir) / f.path).string());
  return paths;
}

}  // namespace freshet

#include "table/table_file.h"

#include <absl/hash/hash.h>
#include <arrow/api.h>
#include <arrow/io/file.h>
#include <parquet/arrow/reader.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "serve/json.h"

namespace freshet {
namespace {

int64_t TimestampMs(int64_t value, arrow::TimeUnit::type unit) {
  auto floor_div = [](int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0)) ? 1 : 0); };
  switch (unit) {
    case arrow::TimeUnit::SECOND: return value * 1000;
    case arrow::TimeUnit::MILLI: return value;
    case arrow::TimeUnit::MICRO: return floor_div(value, 1000);
    case arrow::TimeUnit::NANO: return floor_div(value, 1000000);
  }
  return value;
}

// Writes row `r` of `column` as the value of the current key; false for a type a row cannot hold.
bool WriteCell(const arrow::Array& column, int64_t r, JsonWriter& out) {
  switch (column.type_id()) {
    case arrow::Type::BOOL: out.Bool(static_cast<const arrow::BooleanArray&>(column).Value(r)); return true;
    case arrow::Type::INT8: out.Int(static_cast<const arrow::Int8Array&>(column).Value(r)); return true;
    case arrow::Type::INT16: out.Int(static_cast<const arrow::Int16Array&>(column).Value(r)); return true;
    case arrow::Type::INT32: out.Int(static_cast<const arrow::Int32Array&>(column).Value(r)); return true;
    case arrow::Type::INT64: out.Int(static_cast<const arrow::Int64Array&>(column).Value(r)); return true;
    case arrow::Type::UINT8: out.Int(static_cast<const arrow::UInt8Array&>(column).Value(r)); return true;
    case arrow::Type::UINT16: out.Int(static_cast<const arrow::UInt16Array&>(column).Value(r)); return true;
    case arrow::Type::UINT32: out.Int(static_cast<const arrow::UInt32Array&>(column).Value(r)); return true;
    case arrow::Type::UINT64: out.Uint(static_cast<const arrow::UInt64Array&>(column).Value(r)); return true;
    case arrow::Type::FLOAT: out.Double(static_cast<const arrow::FloatArray&>(column).Value(r)); return true;
    case arrow::Type::DOUBLE: out.Double(static_cast<const arrow::DoubleArray&>(column).Value(r)); return true;
    case arrow::Type::STRING: out.String(static_cast<const arrow::StringArray&>(column).GetView(r)); return true;
    case arrow::Type::LARGE_STRING:
      out.String(static_cast<const arrow::LargeStringArray&>(column).GetView(r));
      return true;
    case arrow::Type::TIMESTAMP: {
      const auto& a = static_cast<const arrow::TimestampArray&>(column);
      out.Int(TimestampMs(a.Value(r), static_cast<const arrow::TimestampType&>(*a.type()).unit()));
      return true;
    }
    default: return false;
  }
}

Status ArrowStatus(const arrow::Status& status, const std::string& what) {
  return status.ok() ? Status::Ok() : Status::IoError(what + ": " + status.ToString());
}

// The rows of a Parquet table file as JSON object texts (a null cell leaves its column out: missing).
Status ReadParquetRows(const std::string& path, const std::string& table, std::vector<std::string>* rows) {
  const std::string where = "table '" + table + "': Parquet file '" + path + "'";
  auto file = arrow::io::ReadableFile::Open(path);
  if (!file.ok()) return ArrowStatus(file.status(), where + " cannot be opened");
  std::unique_ptr<parquet::arrow::FileReader> reader;
  FRESHET_RETURN_IF_ERROR(ArrowStatus(parquet::arrow::OpenFile(*file, arrow::default_memory_pool(), &reader),
                                      where + " cannot be read"));
  std::shared_ptr<arrow::Table> data;
  FRESHET_RETURN_IF_ERROR(ArrowStatus(reader->ReadTable(&data), where + " cannot be read"));
  FRESHET_ASSIGN_OR_RETURN(data, [&]() -> Result<std::shared_ptr<arrow::Table>> {
    auto combined = data->CombineChunks();
    if (!combined.ok()) return ArrowStatus(combined.status(), where + " cannot be read");
    return *combined;
  }());
  const int columns = data->num_columns();
  for (int64_t r = 0; r < data->num_rows(); ++r) {
    std::string json;
    JsonWriter out(&json);
    out.BeginObject();
    for (int c = 0; c < columns; ++c) {
      const arrow::Array& array = *data->column(c)->chunk(0);  // One chunk: combined above.
      if (array.IsNull(r)) continue;
      out.Key(data->schema()->field(c)->name());
      if (!WriteCell(array, r, out)) {
        return Status::Invalid(where + ": column '" + data->schema()->field(c)->name() + "' has type " +
                               array.type()->ToString() +
                               "; table columns must be booleans, integers, floating point, strings or timestamps");
      }
    }
    out.EndObject();
    rows->push_back(std::move(json));
  }
  return Status::Ok();
}

}  // namespace

Result<std::vector<std::string>> SplitCsvLine(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  std::vector<std::string> cells(1);
  bool quoted = false;
  for (size_t k = 0; k < line.size(); ++k) {
    const char c = line[k];
    if (quoted) {
      if (c == '"' && k + 1 < line.size() && line[k + 1] == '"') {
        cells.back() += '"';
        ++k;
      } else if (c == '"') {
        quoted = false;
      } else {
        cells.back() += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      cells.emplace_back();
    } else {
      cells.back() += c;
    }
  }
  if (quoted) return Status::Invalid("a quoted cell is not closed (\" opens and closes a cell; \"\" is one quote)");
  return cells;
}

Result<std::string> CsvRowToJson(const std::vector<std::string>& header, std::string_view line) {
  FRESHET_ASSIGN_OR_RETURN(std::vector<std::string> cells, SplitCsvLine(line));
  if (cells.size() > header.size()) {
    return Status::Invalid("the row has " + std::to_string(cells.size()) + " cells, the header " +
                           std::to_string(header.size()) + " columns");
  }
  std::string json;
  JsonWriter out(&json);
  out.BeginObject();
  for (size_t k = 0; k < cells.size(); ++k) {
    if (cells[k].empty()) continue;  // Missing.
    out.Key(header[k]);
    if (NumberInString(cells[k], FieldType::kNumber).has_value()) {
      out.Raw(cells[k]);
    } else {
      out.String(cells[k]);
    }
  }
  out.EndObject();
  return json;
}

TableFileReader::TableFileReader(const TableSpec& table, std::string path)
    : table_(table), path_(path.empty() ? table.path : std::move(path)) {}

Status TableFileReader::ReadParquet(std::vector<TableRow>* rows, std::vector<std::string>* errors) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path_, ec);
  const auto mtime = std::filesystem::last_write_time(path_, ec);
  if (ec) {
    return Status::IoError("table '" + table_.name + "': cannot read '" + path_ + "': " + ec.message() +
                           "; check tables[].source.path");
  }
  // offset_ and lines_ hold the size and modification time of the file as last read.
  const uint64_t stamp = static_cast<uint64_t>(mtime.time_since_epoch().count());
  if (size == offset_ && stamp == lines_ && primed_) return Status::Ok();
  std::vector<std::string> texts;
  FRESHET_RETURN_IF_ERROR(ReadParquetRows(path_, table_.name, &texts));
  if (size == offset_ && stamp == lines_) {
    // Restored (Seek) at this very file: its rows are versions already; learn them without adding them again.
    for (const std::string& text : texts) seen_.insert(absl::HashOf(text));
    primed_ = true;
    return Status::Ok();
  }
  absl::flat_hash_set<uint64_t> now;
  for (size_t k = 0; k < texts.size(); ++k) {
    const uint64_t hash = absl::HashOf(texts[k]);
    now.insert(hash);
    if (seen_.contains(hash)) continue;  // Unchanged since the last read: not a new version.
    Result<TableRow> row = ParseTableRow(table_, texts[k]);
    if (!row.ok()) {
      errors->push_back(path_ + ": row " + std::to_string(k + 1) + ": " + row.status().message());
      continue;
    }
    rows->push_back(std::move(*row));
  }
  seen_ = std::move(now);
  Seek(size, stamp);
  primed_ = true;
  return Status::Ok();
}

Status TableFileReader::ReadNew(std::vector<TableRow>* rows, std::vector<std::string>* errors) {
  if (table_.format == "parquet") return ReadParquet(rows, errors);
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path_, ec);
  if (ec) {
    return Status::IoError("table '" + table_.name + "': cannot read '" + path_ + "': " + ec.message() +
                           "; check tables[].source.path");
  }
  if (size < offset_) Seek(0, 0);  // Replaced or truncated: read it again.
  if (size == offset_) return Status::Ok();
  std::ifstream in(path_, std::ios::binary);
  if (!in) return Status::IoError("table '" + table_.name + "': cannot open '" + path_ + "'");
  in.seekg(static_cast<std::streamoff>(offset_));
  std::string chunk(size - offset_, '\0');
  in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
  chunk.resize(static_cast<size_t>(in.gcount()));
  const bool csv = table_.format == "csv";
  if (csv && offset_ > 0 && header_.empty()) {
    // Restored at an offset: the header is the file's first line.
    std::ifstream head(path_, std::ios::binary);
    std::string first;
    std::getline(head, first);
    FRESHET_ASSIGN_OR_RETURN(header_, SplitCsvLine(first));
  }
  size_t start = 0;
  while (true) {
    const size_t newline = chunk.find('\n', start);
    if (newline == std::string::npos) break;  // A partly written line waits for its newline.
    std::string_view line(chunk.data() + start, newline - start);
    offset_ += newline + 1 - start;
    start = newline + 1;
    ++lines_;
    const std::string where = path_ + ":" + std::to_string(lines_) + ": ";
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;  // Blank lines are skipped.
    if (csv && lines_ == 1) {
      Result<std::vector<std::string>> header = SplitCsvLine(line);
      if (!header.ok()) return Status::Invalid(where + "the header row: " + header.status().message());
      header_ = std::move(*header);
      continue;
    }
    std::string json;
    if (csv) {
      Result<std::string> converted = CsvRowToJson(header_, line);
      if (!converted.ok()) {
        errors->push_back(where + converted.status().message());
        continue;
      }
      json = std::move(*converted);
    } else {
      json = std::string(line);
    }
    Result<TableRow> row = ParseTableRow(table_, json);
    if (!row.ok()) {
      errors->push_back(where + row.status().message());
      continue;
    }
    rows->push_back(std::move(*row));
  }
  return Status::Ok();
}

}  // namespace freshet

#include "historical/entity_table.h"

#include <arrow/api.h>
#include <arrow/io/file.h>
#include <parquet/arrow/reader.h>
#include <parquet/arrow/writer.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <limits>
#include <span>
#include <sstream>

#include "common/entity_key.h"
#include "common/time.h"
#include "historical/csv.h"
#include "offline/list_column.h"
#include "offline/tables.h"

namespace freshet {
namespace {

bool EndsWith(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

bool IsParquetPath(const std::string& path) { return EndsWith(path, ".parquet"); }

Status FromArrow(const arrow::Status& status, const std::string& what) {
  if (status.ok()) return Status::Ok();
  return Status::IoError(what + ": " + status.ToString());
}

Result<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::IoError(std::string("cannot open ") + what + " '" + path + "': " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

int64_t FloorToMs(int64_t value, arrow::TimeUnit::type unit) {
  switch (unit) {
    case arrow::TimeUnit::SECOND: return value * 1000;
    case arrow::TimeUnit::MILLI: return value;
    case arrow::TimeUnit::MICRO: return FloorDiv(value, 1000);
    case arrow::TimeUnit::NANO: return FloorDiv(value, 1000000);
  }
  return value;
}

template <typename Number>
void AppendNumber(Number value, std::string* out) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  out->append(buf, end);
}

// Integer cells of any width, as int64 (false: not an integer column, or a uint64 beyond int64).
bool IntegerAt(const arrow::Array& array, int64_t i, int64_t* out) {
  switch (array.type_id()) {
    case arrow::Type::INT8: *out = static_cast<const arrow::Int8Array&>(array).Value(i); return true;
    case arrow::Type::INT16: *out = static_cast<const arrow::Int16Array&>(array).Value(i); return true;
    case arrow::Type::INT32: *out = static_cast<const arrow::Int32Array&>(array).Value(i); return true;
    case arrow::Type::INT64: *out = static_cast<const arrow::Int64Array&>(array).Value(i); return true;
    case arrow::Type::UINT8: *out = static_cast<const arrow::UInt8Array&>(array).Value(i); return true;
    case arrow::Type::UINT16: *out = static_cast<const arrow::UInt16Array&>(array).Value(i); return true;
    case arrow::Type::UINT32: *out = static_cast<const arrow::UInt32Array&>(array).Value(i); return true;
    case arrow::Type::UINT64: {
      const uint64_t v = static_cast<const arrow::UInt64Array&>(array).Value(i);
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
      *out = static_cast<int64_t>(v);
      return true;
    }
    default: return false;
  }
}

bool IsInteger(const arrow::DataType& type) { return arrow::is_integer(type.id()); }
bool IsString(const arrow::DataType& type) {
  return type.id() == arrow::Type::STRING || type.id() == arrow::Type::LARGE_STRING;
}

std::string_view StringAt(const arrow::Array& array, int64_t i) {
  if (array.type_id() == arrow::Type::LARGE_STRING) return static_cast<const arrow::LargeStringArray&>(array).GetView(i);
  return static_cast<const arrow::StringArray&>(array).GetView(i);
}

// One cell of a Parquet input column as CSV text (unquoted): numbers in their shortest form, booleans as
// true/false, timestamps as RFC 3339 (milliseconds), dates as YYYY-MM-DD, null as nothing.
void AppendCellText(const arrow::Array& array, int64_t i, std::string* out) {
  if (array.IsNull(i)) return;
  int64_t integer = 0;
  if (IsInteger(*array.type()) && IntegerAt(array, i, &integer)) return AppendNumber(integer, out);
  switch (array.type_id()) {
    case arrow::Type::UINT64: return AppendNumber(static_cast<const arrow::UInt64Array&>(array).Value(i), out);
    case arrow::Type::STRING:
    case arrow::Type::LARGE_STRING: out->append(StringAt(array, i)); return;
    case arrow::Type::DOUBLE: return AppendNumber(static_cast<const arrow::DoubleArray&>(array).Value(i), out);
    case arrow::Type::FLOAT: return AppendNumber(static_cast<const arrow::FloatArray&>(array).Value(i), out);
    case arrow::Type::BOOL: out->append(static_cast<const arrow::BooleanArray&>(array).Value(i) ? "true" : "false"); return;
    case arrow::Type::TIMESTAMP: {
      const auto unit = static_cast<const arrow::TimestampType&>(*array.type()).unit();
      out->append(FormatRfc3339(FloorToMs(static_cast<const arrow::TimestampArray&>(array).Value(i), unit)));
      return;
    }
    case arrow::Type::DATE32:
      out->append(FormatRfc3339(int64_t{static_cast<const arrow::Date32Array&>(array).Value(i)} * 86'400'000).substr(0, 10));
      return;
    default: {
      auto scalar = array.GetScalar(i);
      if (scalar.ok()) out->append((*scalar)->ToString());
      return;
    }
  }
}

}  // namespace

struct EntityTable::Impl {
  std::string path;
  std::vector<EntityTime> keys;
  bool parquet = false;
  // CSV input: the file's text and its records (records[0] is the header), whose raw text is kept.
  std::string csv_text;
  std::vector<CsvRecord> records;
  std::vector<std::string> column_names;
  int time_column = -1;
  // Parquet input: the table as read.
  std::shared_ptr<arrow::Table> table;
};

namespace {

// The request parameters of entity row `row`: param.NAME reads its column NAME (absent: null), a cell's text
// read as RequestParamFromText says, like a query string's parameter; an empty CSV cell or a Parquet null is
// null. `texts` holds the strings.
RequestParams RowParams(const Spec& spec, const EntityTable::Impl& input, size_t row, std::deque<std::string>* texts) {
  RequestParams params;
  for (const std::string& name : spec.request_features.params) {
    const auto it = std::find(input.column_names.begin(), input.column_names.end(), name);
    if (it == input.column_names.end()) continue;
    const size_t column = static_cast<size_t>(it - input.column_names.begin());
    std::string& text = texts->emplace_back();
    if (input.parquet) {
      const arrow::ChunkedArray& cells = *input.table->column(static_cast<int>(column));
      int64_t offset = static_cast<int64_t>(row);
      int chunk = 0;
      while (offset >= cells.chunk(chunk)->length()) offset -= cells.chunk(chunk++)->length();
      if (cells.chunk(chunk)->IsNull(offset)) {
        params.emplace_back(name, Value::Null());
        continue;
      }
      AppendCellText(*cells.chunk(chunk), offset, &text);
    } else {
      const std::vector<std::string>& fields = input.records[row + 1].fields;
      if (column < fields.size()) text = fields[column];
      if (text.empty()) {
        params.emplace_back(name, Value::Null());
        continue;
      }
    }
    params.emplace_back(name, RequestParamFromText(text));
  }
  return params;
}

// Row `row`'s request features, from its feature values (spec order) and its parameters.
void RowRequestFeatures(const Spec& spec, const EntityTable::Impl& input, size_t row, const std::vector<Value>& values,
                        std::vector<Value>* out, OwnedStrings* owned) {
  std::deque<std::string> texts;
  const RequestParams params = RowParams(spec, input, row, &texts);
  const EntityTime& key = input.keys[row];
  EvaluateRequestFeatures(spec.request_features, key.entity, key.time_ms,
                          [&](int k) { return values[static_cast<size_t>(k)]; }, params, out, owned);
}

Status CheckNoFeatureColumn(const std::vector<std::string>& names, const Spec& spec, const std::string& path) {
  for (const FeatureSpec& f : spec.features) {
    if (std::find(names.begin(), names.end(), f.name) != names.end()) {
      return Status::Invalid(path + ": the input already has a column named '" + f.name +
                             "', the name of a feature; rename or drop that column");
    }
  }
  for (const RequestFeatureSpec& r : spec.request_features.items) {
    if (std::find(names.begin(), names.end(), r.name) != names.end()) {
      return Status::Invalid(path + ": the input already has a column named '" + r.name +
                             "', the name of a request feature; rename or drop that column");
    }
  }
  return Status::Ok();
}

std::string Joined(const std::vector<std::string>& names) {
  std::string text;
  for (const std::string& n : names) text += (text.empty() ? "" : ", ") + n;
  return text;
}

// The spec's key fields (a hand-built spec may set entity_field alone).
std::vector<std::string> KeyFields(const Spec& spec) {
  return spec.entity_fields.empty() ? std::vector<std::string>{spec.entity_field} : spec.entity_fields;
}

// The entity of a row from its key fields' cells (spec order): the cell itself for one key field, the
// encoding of the parts for a composite key (common/entity_key.h).
std::string RowEntity(std::span<const std::string_view> parts) {
  return parts.size() == 1 ? std::string(parts[0]) : EncodeEntityKey(parts);
}

Status ReadCsvRows(const Spec& spec, EntityTable::Impl* m) {
  const std::string& path = m->path;
  FRESHET_ASSIGN_OR_RETURN(m->csv_text, ReadFile(path, "entities file"));
  FRESHET_ASSIGN_OR_RETURN(m->records, ParseCsv(m->csv_text, path));
  if (m->records.empty()) {
    return Status::Invalid(path + ": the file is empty; it needs a header row with the columns '" + spec.entity_field +
                           "' and '" + spec.timestamp_field + "'");
  }
  const CsvRecord& header = m->records[0];
  m->column_names = header.fields;
  auto column = [&](const std::string& name) -> int {
    for (size_t k = 0; k < header.fields.size(); ++k) {
      if (header.fields[k] == name) return static_cast<int>(k);
    }
    return -1;
  };
  const std::vector<std::string> key_fields = KeyFields(spec);
  std::vector<int> key_cols;
  for (const std::string& field : key_fields) {
    key_cols.push_back(column(field));
    if (key_cols.back() < 0) {
      return Status::Invalid(path + ":" + std::to_string(header.line) + ": the header needs the column '" + field +
                             "' (" + (key_fields.size() > 1 ? "a key field of the spec's entity" :
                                                                       "the spec's entity field") +
                             "); it has: " + Joined(header.fields));
    }
  }
  const int last_key_col = *std::max_element(key_cols.begin(), key_cols.end());
  const int time_col = column(spec.timestamp_field);
  if (time_col < 0) {
    return Status::Invalid(path + ":" + std::to_string(header.line) + ": the header needs the column '" +
                           spec.timestamp_field + "' (the spec's timestamp field); it has: " + Joined(header.fields));
  }
  m->time_column = time_col;
  FRESHET_RETURN_IF_ERROR(CheckNoFeatureColumn(header.fields, spec, path));
  m->keys.reserve(m->records.size() - 1);
  for (size_t r = 1; r < m->records.size(); ++r) {
    const CsvRecord& rec = m->records[r];
    const std::string where = path + ":" + std::to_string(rec.line) + ": ";
    if (static_cast<int>(rec.fields.size()) <= std::max(last_key_col, time_col)) {
      return Status::Invalid(where + "the row has " + std::to_string(rec.fields.size()) + " fields, the header " +
                             std::to_string(header.fields.size()));
    }
    std::string_view parts[kMaxKeyFields];
    for (size_t k = 0; k < key_cols.size(); ++k) {
      parts[k] = rec.fields[key_cols[k]];
      if (parts[k].empty()) return Status::Invalid(where + "column '" + key_fields[k] + "' is empty");
    }
    Result<int64_t> t = ParseTimeText(rec.fields[time_col]);
    if (!t.ok()) return Status::Invalid(where + "column '" + spec.timestamp_field + "': " + t.status().message());
    m->keys.push_back(EntityTime{RowEntity(std::span<const std::string_view>(parts, key_cols.size())), *t});
  }
  return Status::Ok();
}

// One key field's cells of a Parquet entities file, as text: a string or integer column, no nulls or empty cells.
Status ReadParquetKeyColumn(const EntityTable::Impl& table, const std::string& field, std::vector<std::string>* cells) {
  const std::string& path = table.path;
  const int col = table.table->schema()->GetFieldIndex(field);
  const arrow::DataType& type = *table.table->schema()->field(col)->type();
  if (!IsString(type) && !IsInteger(type)) {
    return Status::Invalid(path + ": column '" + field + "' has type " + type.ToString() +
                           "; an entity (key) column must be a string or an integer");
  }
  cells->clear();
  cells->reserve(static_cast<size_t>(table.table->num_rows()));
  for (const auto& chunk : table.table->column(col)->chunks()) {
    for (int64_t i = 0; i < chunk->length(); ++i) {
      const std::string where = path + ": row " + std::to_string(cells->size() + 1) + ": column '" + field + "' ";
      if (chunk->IsNull(i)) return Status::Invalid(where + "is null");
      std::string& cell = cells->emplace_back();
      if (IsString(type)) {
        cell = std::string(StringAt(*chunk, i));
      } else {
        AppendCellText(*chunk, i, &cell);
      }
      if (cell.empty()) return Status::Invalid(where + "is empty");
    }
  }
  return Status::Ok();
}

Status ReadParquetRows(const Spec& spec, EntityTable::Impl* m) {
  const std::string& path = m->path;
  auto file = arrow::io::ReadableFile::Open(path);
  if (!file.ok()) return FromArrow(file.status(), "cannot open entities file '" + path + "'");
  std::unique_ptr<parquet::arrow::FileReader> reader;
  FRESHET_RETURN_IF_ERROR(FromArrow(parquet::arrow::OpenFile(*file, arrow::default_memory_pool(), &reader),
                                    "cannot read Parquet entities file '" + path + "'"));
  FRESHET_RETURN_IF_ERROR(FromArrow(reader->ReadTable(&m->table), "cannot read Parquet entities file '" + path + "'"));
  m->column_names = m->table->schema()->field_names();
  const std::vector<std::string> key_fields = KeyFields(spec);
  for (const std::string& field : key_fields) {
    if (m->table->schema()->GetFieldIndex(field) < 0) {
      return Status::Invalid(path + ": the Parquet file needs the column '" + field + "' (" +
                             (key_fields.size() > 1 ? "a key field of the spec's entity" :
                                                               "the spec's entity field") +
                             "); it has: " + Joined(m->column_names));
    }
  }
  const int time_col = m->table->schema()->GetFieldIndex(spec.timestamp_field);
  if (time_col < 0) {
    return Status::Invalid(path + ": the Parquet file needs the column '" + spec.timestamp_field +
                           "' (the spec's timestamp field); it has: " + Joined(m->column_names));
  }
  m->time_column = time_col;
  FRESHET_RETURN_IF_ERROR(CheckNoFeatureColumn(m->column_names, spec, path));
  const arrow::DataType& time_type = *m->table->schema()->field(time_col)->type();
  if (!IsString(time_type) && !IsInteger(time_type) && time_type.id() != arrow::Type::TIMESTAMP) {
    return Status::Invalid(path + ": column '" + spec.timestamp_field + "' has type " + time_type.ToString() +
                           "; the timestamp column must be a timestamp, an integer (epoch milliseconds) or an "
                           "RFC 3339 string");
  }
  const int64_t rows = m->table->num_rows();
  m->keys.resize(static_cast<size_t>(rows));
  // Each key field's cells, then each row's entity from them.
  std::vector<std::vector<std::string>> key_cells(key_fields.size());
  for (size_t k = 0; k < key_fields.size(); ++k) {
    FRESHET_RETURN_IF_ERROR(ReadParquetKeyColumn(*m, key_fields[k], &key_cells[k]));
  }
  for (size_t r = 0; r < m->keys.size(); ++r) {
    std::string_view parts[kMaxKeyFields];
    for (size_t k = 0; k < key_cells.size(); ++k) parts[k] = key_cells[k][r];
    m->keys[r].entity = RowEntity(std::span<const std::string_view>(parts, key_cells.size()));
  }
  int64_t base = 0;
  for (const auto& chunk : m->table->column(time_col)->chunks()) {
    for (int64_t i = 0; i < chunk->length(); ++i) {
      const std::string where = path + ": row " + std::to_string(base + i + 1) + ": column '" + spec.timestamp_field + "' ";
      if (chunk->IsNull(i)) return Status::Invalid(where + "is null");
      int64_t ms = 0;
      if (time_type.id() == arrow::Type::TIMESTAMP) {
        const auto unit = static_cast<const arrow::TimestampType&>(time_type).unit();
        ms = FloorToMs(static_cast<const arrow::TimestampArray&>(*chunk).Value(i), unit);
      } else if (IsString(time_type)) {
        Result<int64_t> t = ParseTimeText(StringAt(*chunk, i));
        if (!t.ok()) return Status::Invalid(where + t.status().message());
        ms = *t;
      } else if (!IntegerAt(*chunk, i, &ms)) {
        return Status::Invalid(where + "is beyond the range of epoch milliseconds");
      }
      if (ms < kMinTimeMs || ms > kMaxTimeMs) {
        return Status::Invalid(where + "is " + std::to_string(ms) + " ms, outside years 0001-9999");
      }
      m->keys[static_cast<size_t>(base + i)].time_ms = ms;
    }
    base += chunk->length();
  }
  return Status::Ok();
}

// CSV output: each row's feature cells are rendered as the row is answered.
class CsvWriter final : public HistoricalWriter {
 public:
  CsvWriter(std::string path, const Spec& spec, const EntityTable::Impl& input)
      : path_(std::move(path)), spec_(spec), input_(input), answers_(input.keys.size()) {}
  ~CsvWriter() override {
    if (out_ != nullptr && out_ != stdout) std::fclose(out_);
  }

  void Put(size_t row, const std::vector<Value>& values) override {
    std::string& out = answers_[row];
    for (const Value& v : values) {
      out.push_back(',');
      AppendCsvValue(v, &out);
    }
    if (spec_.request_features.empty()) return;
    OwnedStrings owned;
    RowRequestFeatures(spec_, input_, row, values, &request_values_, &owned);
    for (const Value& v : request_values_) {
      out.push_back(',');
      AppendCsvValue(v, &out);
    }
  }

  Status Finish() override {
    out_ = path_ == "-" ? stdout : std::fopen(path_.c_str(), "wb");
    if (out_ == nullptr) return Status::IoError("cannot open output file '" + path_ + "': " + std::strerror(errno));
    std::string text;
    if (input_.parquet) {
      for (size_t k = 0; k < input_.column_names.size(); ++k) {
        if (k > 0) text.push_back(',');
        AppendCsvField(input_.column_names[k], &text);
      }
    } else {
      text.append(input_.records[0].raw);
    }
    for (const FeatureSpec& f : spec_.features) {
      text.push_back(',');
      AppendCsvField(f.name, &text);
    }
    for (const RequestFeatureSpec& r : spec_.request_features.items) {
      text.push_back(',');
      AppendCsvField(r.name, &text);
    }
    text.push_back('\n');
    // Parquet input: a cursor per column over its chunks.
    std::vector<std::pair<size_t, int64_t>> cursors(input_.parquet ? input_.column_names.size() : 0);
    std::string cell;
    for (size_t r = 0; r < answers_.size(); ++r) {
      if (input_.parquet) {
        for (size_t k = 0; k < cursors.size(); ++k) {
          const arrow::ChunkedArray& column = *input_.table->column(static_cast<int>(k));
          auto& [chunk, offset] = cursors[k];
          while (offset >= column.chunk(static_cast<int>(chunk))->length()) {
            offset = 0;
            ++chunk;
          }
          cell.clear();
          AppendCellText(*column.chunk(static_cast<int>(chunk)), offset++, &cell);
          if (k > 0) text.push_back(',');
          AppendCsvField(cell, &text);
        }
      } else {
        text.append(input_.records[r + 1].raw);
      }
      text.append(answers_[r]);
      text.push_back('\n');
      if (text.size() > (1 << 20)) {
        std::fwrite(text.data(), 1, text.size(), out_);
        text.clear();
      }
    }
    std::fwrite(text.data(), 1, text.size(), out_);
    const bool write_failed = std::ferror(out_) != 0;
    if (out_ == stdout) {
      std::fflush(out_);
      out_ = nullptr;
      if (write_failed) return Status::IoError("cannot write the output to standard output");
      return Status::Ok();
    }
    const int closed = std::fclose(out_);
    out_ = nullptr;
    if (closed != 0 || write_failed) {
      return Status::IoError("cannot write output file '" + path_ + "': " + std::strerror(errno));
    }
    return Status::Ok();
  }

 private:
  std::string path_;
  std::FILE* out_ = nullptr;
  const Spec& spec_;
  const EntityTable::Impl& input_;
  std::vector<std::string> answers_;  // Per row: ",v1,v2,..." for every feature and request feature.
  std::vector<Value> request_values_;
};

// A request feature's output column: its type is what its values have (null aside): int64 when all are
// integers, double when all are numbers, bool when all are booleans, else text (AppendCsvValue's).
struct RequestColumn {
  std::vector<Value> cells;          // Strings point into `texts`.
  std::deque<std::string> texts;

  Status Build(std::shared_ptr<arrow::Array>* array, std::shared_ptr<arrow::DataType>* type) const {
    bool ints = true, numbers = true, bools = true;
    for (const Value& v : cells) {
      if (!v.is_present_non_null()) continue;
      ints = ints && v.type == ValueType::kInt;
      numbers = numbers && v.is_number();
      bools = bools && v.type == ValueType::kBool;
    }
    arrow::Status st;
    const auto build = [&](auto& builder, auto append) {
      for (const Value& v : cells) {
        if (!st.ok()) break;
        st = v.is_present_non_null() ? append(builder, v) : builder.AppendNull();
      }
      if (st.ok()) st = builder.Finish(array);
    };
    if (ints) {
      arrow::Int64Builder b;
      build(b, [](arrow::Int64Builder& x, const Value& v) { return x.Append(v.i); });
      *type = arrow::int64();
    } else if (numbers) {
      arrow::DoubleBuilder b;
      build(b, [](arrow::DoubleBuilder& x, const Value& v) { return x.Append(v.as_double()); });
      *type = arrow::float64();
    } else if (bools) {
      arrow::BooleanBuilder b;
      build(b, [](arrow::BooleanBuilder& x, const Value& v) { return x.Append(v.b); });
      *type = arrow::boolean();
    } else {
      arrow::StringBuilder b;
      std::string text;
      build(b, [&text](arrow::StringBuilder& x, const Value& v) {
        text.clear();
        if (v.type == ValueType::kString) text.assign(v.s);
        else AppendCsvValue(v, &text);
        return x.Append(text);
      });
      *type = arrow::utf8();
    }
    return FromArrow(st, "cannot build a request feature's output column");
  }
};

// One feature's output column, filled row by row in any order (FeatureCell semantics).
struct FeatureColumn {
  OfflineType type = OfflineType::kInt64;
  std::vector<int64_t> ints;
  std::vector<double> doubles;
  std::vector<std::string> strings;
  std::vector<uint8_t> valid;
};

// Parquet output: the feature values are kept typed per column and written at Finish.
class ParquetWriter final : public HistoricalWriter {
 public:
  ParquetWriter(std::string path, const Spec& spec, const EntityTable::Impl& input)
      : path_(std::move(path)), spec_(spec), input_(input) {
    const size_t rows = input.keys.size();
    columns_.resize(spec.features.size());
    for (size_t k = 0; k < columns_.size(); ++k) {
      FeatureColumn& c = columns_[k];
      c.type = FeatureColumnType(spec.features[k]);
      c.valid.assign(rows, 0);
      if (c.type == OfflineType::kInt64) c.ints.assign(rows, 0);
      if (c.type == OfflineType::kDouble) c.doubles.assign(rows, 0);
      if (c.type == OfflineType::kString || IsListColumn(c.type)) c.strings.resize(rows);
    }
    request_columns_.resize(spec.request_features.items.size());
    for (RequestColumn& c : request_columns_) c.cells.assign(rows, Value::Null());
  }

  void Put(size_t row, const std::vector<Value>& values) override {
    for (size_t k = 0; k < columns_.size(); ++k) {
      FeatureColumn& c = columns_[k];
      const Value cell = FeatureCell(spec_.features[k], values[k], &scratch_);
      if (cell.is_null()) continue;
      c.valid[row] = 1;
      switch (c.type) {
        case OfflineType::kInt64: c.ints[row] = cell.i; break;
        case OfflineType::kDouble: c.doubles[row] = cell.d; break;
        default: c.strings[row].assign(cell.s); break;
      }
    }
    if (request_columns_.empty()) return;
    OwnedStrings owned;
    RowRequestFeatures(spec_, input_, row, values, &request_values_, &owned);
    for (size_t j = 0; j < request_columns_.size(); ++j) {
      Value v = request_values_[j];
      if (v.type == ValueType::kString) v.s = request_columns_[j].texts.emplace_back(v.s);
      request_columns_[j].cells[row] = v;
    }
  }

  Status Finish() override {
    arrow::FieldVector fields;
    arrow::ChunkedArrayVector arrays;
    const int64_t rows = static_cast<int64_t>(input_.keys.size());
    if (input_.parquet) {
      for (int k = 0; k < input_.table->num_columns(); ++k) {
        fields.push_back(input_.table->schema()->field(k));
        arrays.push_back(input_.table->column(k));
      }
    } else {
      for (size_t k = 0; k < input_.column_names.size(); ++k) {
        std::shared_ptr<arrow::Array> array;
        arrow::Status st;
        if (static_cast<int>(k) == input_.time_column) {
          const auto type = arrow::timestamp(arrow::TimeUnit::MICRO, "UTC");
          arrow::TimestampBuilder b(type, arrow::default_memory_pool());
          st = b.Reserve(rows);
          for (const EntityTime& key : input_.keys) b.UnsafeAppend(key.time_ms * 1000);
          if (st.ok()) st = b.Finish(&array);
          fields.push_back(arrow::field(input_.column_names[k], type, false));
        } else {
          arrow::StringBuilder b;
          st = b.Reserve(rows);
          for (size_t r = 1; r < input_.records.size() && st.ok(); ++r) {
            const std::vector<std::string>& cells = input_.records[r].fields;
            st = k < cells.size() ? b.Append(cells[k]) : b.AppendNull();
          }
          if (st.ok()) st = b.Finish(&array);
          fields.push_back(arrow::field(input_.column_names[k], arrow::utf8(), true));
        }
        FRESHET_RETURN_IF_ERROR(FromArrow(st, "cannot build output column '" + input_.column_names[k] + "'"));
        arrays.push_back(std::make_shared<arrow::ChunkedArray>(array));
      }
    }
    for (size_t k = 0; k < columns_.size(); ++k) {
      const FeatureColumn& c = columns_[k];
      std::shared_ptr<arrow::Array> array;
      arrow::Status st;
      switch (c.type) {
        case OfflineType::kInt64: {
          arrow::Int64Builder b;
          st = b.AppendValues(c.ints.data(), rows, c.valid.data());
          if (st.ok()) st = b.Finish(&array);
          fields.push_back(arrow::field(spec_.features[k].name, arrow::int64(), true));
          break;
        }
        case OfflineType::kDouble: {
          arrow::DoubleBuilder b;
          st = b.AppendValues(c.doubles.data(), rows, c.valid.data());
          if (st.ok()) st = b.Finish(&array);
          fields.push_back(arrow::field(spec_.features[k].name, arrow::float64(), true));
          break;
        }
        case OfflineType::kStringList:
        case OfflineType::kValueCounts: {  // The lists' JSON text as native lists, like the features table's.
          JsonListBuilder b(c.type);
          for (size_t r = 0; r < c.strings.size() && st.ok(); ++r) st = c.valid[r] ? b.Append(c.strings[r]) : b.AppendNull();
          if (st.ok()) st = b.Finish(&array);
          fields.push_back(arrow::field(spec_.features[k].name, ListArrowType(c.type), true));
          break;
        }
        default: {
          arrow::StringBuilder b;
          for (size_t r = 0; r < c.strings.size() && st.ok(); ++r) st = c.valid[r] ? b.Append(c.strings[r]) : b.AppendNull();
          if (st.ok()) st = b.Finish(&array);
          fields.push_back(arrow::field(spec_.features[k].name, arrow::utf8(), true));
          break;
        }
      }
      FRESHET_RETURN_IF_ERROR(FromArrow(st, "cannot build output column '" + spec_.features[k].name + "'"));
      arrays.push_back(std::make_shared<arrow::ChunkedArray>(array));
    }
    for (size_t j = 0; j < request_columns_.size(); ++j) {
      std::shared_ptr<arrow::Array> array;
      std::shared_ptr<arrow::DataType> type;
      FRESHET_RETURN_IF_ERROR(request_columns_[j].Build(&array, &type));
      fields.push_back(arrow::field(spec_.request_features.items[j].name, type, true));
      arrays.push_back(std::make_shared<arrow::ChunkedArray>(array));
    }
    std::shared_ptr<arrow::Table> table = arrow::Table::Make(arrow::schema(fields), arrays, rows);
    auto sink = arrow::io::FileOutputStream::Open(path_);
    if (!sink.ok()) return FromArrow(sink.status(), "cannot open output file '" + path_ + "'");
    sink_ = *sink;
    parquet::WriterProperties::Builder props;
    props.compression(parquet::Compression::ZSTD);
    std::shared_ptr<parquet::ArrowWriterProperties> arrow_props =
        parquet::ArrowWriterProperties::Builder().store_schema()->build();
    FRESHET_RETURN_IF_ERROR(FromArrow(parquet::arrow::WriteTable(*table, arrow::default_memory_pool(), sink_,
                                                                 256 * 1024, props.build(), arrow_props),
                                      "cannot write output file '" + path_ + "'"));
    return FromArrow(sink_->Close(), "cannot close output file '" + path_ + "'");
  }

 private:
  std::string path_;
  std::shared_ptr<arrow::io::FileOutputStream> sink_;
  const Spec& spec_;
  const EntityTable::Impl& input_;
  std::vector<FeatureColumn> columns_;
  std::vector<RequestColumn> request_columns_;
  std::vector<Value> request_values_;
  std::string scratch_;
};

}  // namespace

EntityTable::EntityTable(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
EntityTable::EntityTable(EntityTable&&) noexcept = default;
EntityTable& EntityTable::operator=(EntityTable&&) noexcept = default;
EntityTable::~EntityTable() = default;
const std::vector<EntityTime>& EntityTable::keys() const { return impl_->keys; }

Result<EntityTable> EntityTable::Read(const std::string& path, const Spec& spec) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->parquet = IsParquetPath(path);
  FRESHET_RETURN_IF_ERROR(impl->parquet ? ReadParquetRows(spec, impl.get()) : ReadCsvRows(spec, impl.get()));
  return EntityTable(std::move(impl));
}

Result<std::unique_ptr<HistoricalWriter>> HistoricalWriter::Open(const std::string& path, const Spec& spec,
                                                                 const EntityTable& input) {
  if (IsParquetPath(path)) return std::unique_ptr<HistoricalWriter>(new ParquetWriter(path, spec, input.impl()));
  return std::unique_ptr<HistoricalWriter>(new CsvWriter(path, spec, input.impl()));
}

}  // namespace freshet

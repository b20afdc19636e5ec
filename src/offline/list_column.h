// Feature lists (top_k, last_k) as Parquet list columns. The engine renders such a list as JSON text (see
// aggregate/list_aggregations.h), which HTTP answers embed and Redis and CSV keep; the offline features table
// and `freshet historical`'s Parquet output store it as a native list, so that pyarrow, DuckDB or Spark read
// lists rather than text to parse:
//   kStringList   [v, ...]                        -> list<string>
//   kValueCounts  [{"value": v, "count": n}, ...] -> list<struct<value: string, count: int64>>
// A value is kept as text like a `last` feature's: a string as itself, a number as its shortest decimal text,
// a boolean as true/false.
#pragma once

#include <arrow/api.h>

#include <memory>
#include <string>
#include <string_view>

#include "offline/offline_table.h"

namespace freshet {

// True for the list column types.
bool IsListColumn(OfflineType type);

// The Arrow type of a list column type (the list's item is named "element", as Delta Lake writers name it).
std::shared_ptr<arrow::DataType> ListArrowType(OfflineType type);

// The Delta schema type of a list column type: a JSON object (array of string, or of struct).
std::string ListDeltaType(OfflineType type);

// Builds a list column from the lists' JSON text, one cell at a time.
class JsonListBuilder {
 public:
  explicit JsonListBuilder(OfflineType type);
  ~JsonListBuilder();
  // A cell: the list's JSON text. Text that is not such a list is an error naming it.
  arrow::Status Append(std::string_view json);
  arrow::Status AppendNull();
  arrow::Status Finish(std::shared_ptr<arrow::Array>* out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace freshet

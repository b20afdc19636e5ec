// The rows of `freshet historical`, in and out: the entity rows are read from CSV or Parquet, their
// (entity, time) keys drive the point-in-time computation, and the output repeats every input column,
// then one column per feature.
//
// Input (EntityTable::Read):
//   .parquet  the spec's entity column as a string or an integer; its timestamp column as a timestamp
//             (any unit), epoch-ms integer or RFC 3339 string. Other columns are kept as they are.
//   else CSV  with a header row; entity and timestamp (epoch ms or RFC 3339) columns as above.
// Output (HistoricalWriter::Open):
//   .parquet  zstd Parquet: the input columns (CSV input: strings, except the timestamp column as a UTC
//             timestamp; Parquet input: as read), then one column per feature typed by FeatureColumnType
//             (offline/tables.h), null where the feature has no value.
//   else CSV  ('-': standard output) the input columns (CSV input: each record's text unchanged; Parquet
//             input: cells as text, timestamps in RFC 3339), then the feature values (AppendCsvValue).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/value.h"
#include "historical/historical.h"
#include "spec/spec.h"

namespace freshet {

class EntityTable {
 public:
  // Reads `path`: Parquet when it ends in ".parquet", else CSV. Fails naming the file (and the line or
  // row) when a key column is absent, empty or malformed, or an input column has the name of a feature.
  static Result<EntityTable> Read(const std::string& path, const Spec& spec);

  EntityTable(EntityTable&&) noexcept;
  EntityTable& operator=(EntityTable&&) noexcept;
  ~EntityTable();

  // Row r's entity and time, in input order.
  const std::vector<EntityTime>& keys() const;
  size_t size() const { return keys().size(); }

  struct Impl;  // Defined in the .cc (the rows as read, for the writers).
  const Impl& impl() const { return *impl_; }

 private:
  explicit EntityTable(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Collects every row's feature values as they are computed (in time order, not row order), then writes
// the output file. Not thread-safe.
class HistoricalWriter {
 public:
  // A writer of the rows of `input` to `path`: Parquet when it ends in ".parquet", else CSV. The file is
  // created (truncated) only by Finish, so a computation that fails leaves no output behind.
  static Result<std::unique_ptr<HistoricalWriter>> Open(const std::string& path, const Spec& spec,
                                                        const EntityTable& input);
  virtual ~HistoricalWriter() = default;
  // Records row `row`'s feature values (spec order); `values` need not outlive the call.
  virtual void Put(size_t row, const std::vector<Value>& values) = 0;
  // Creates the file, writes the whole output and closes it.
  virtual Status Finish() = 0;
};

}  // namespace freshet

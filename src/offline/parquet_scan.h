// ParquetScanner: reads chosen columns of one Parquet file, batch by batch, as plain vectors, so the
// rest of Freshet never touches Arrow types.
//
//   FRESHET_ASSIGN_OR_RETURN(auto scanner, ParquetScanner::Open(path, {"seq", "raw"}));
//   ScanBatch batch;
//   while (true) {
//     FRESHET_ASSIGN_OR_RETURN(bool more, scanner->Next(&batch));
//     if (!more) break;
//     for (size_t r = 0; r < batch.rows; ++r) Use(batch.columns[0].ints[r], batch.columns[1].strings[r]);
//   }
//
// Column types map as: integers -> ints; timestamps (any unit) -> ints in epoch milliseconds; floating
// point -> doubles; strings -> strings (views valid until the next Next call); booleans -> ints 0/1.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "offline/offline_table.h"

namespace freshet {

struct ScanColumn {
  OfflineType type = OfflineType::kInt64;
  std::vector<int64_t> ints;
  std::vector<double> doubles;
  std::vector<std::string_view> strings;
  std::vector<uint8_t> valid;
  // kString: the end of the readable memory the strings lie in (their buffer's capacity), so a caller can
  // tell whether the bytes after a string are readable padding (a parser that reads ahead) or must copy.
  const char* readable_end = nullptr;
};

struct ScanBatch {
  size_t rows = 0;
  std::vector<ScanColumn> columns;   // In the order asked for.
  std::shared_ptr<void> keep_alive;  // Owns the memory `strings` point into.
};

class ParquetScanner {
 public:
  // Fails naming the file when it cannot be read or lacks a column.
  static Result<std::unique_ptr<ParquetScanner>> Open(const std::string& path, const std::vector<std::string>& columns);
  ~ParquetScanner();
  // Fills `batch` with the next rows; false at the end of the file.
  Result<bool> Next(ScanBatch* batch);
  // Every column name of the file.
  const std::vector<std::string>& column_names() const;

 private:
  struct Impl;
  explicit ParquetScanner(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The data files of the Delta table at `table_dir` as of its newest commit, as absolute paths in the order
// they were added. Fails when the folder holds no Delta table.
Result<std::vector<std::string>> DeltaTableFiles(const std::string& table_dir);

}  // namespace freshet

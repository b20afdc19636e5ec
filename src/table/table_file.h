// TableFileReader: the rows of a reference table's file (`tables[].source`, type file), read from where the last
// read stopped, so that `freshet run` follows appended lines (each new row is a new version) and `freshet
// historical --table` reads a whole file.
//
// Formats: jsonl, one JSON object per line; csv, a header row naming the columns, then one row per line, turned
// into a JSON object: a cell in JSON number syntax is a number, an empty cell leaves the column out (missing),
// any other cell is text; "double quotes" enclose cells with commas or quotes ("" is one quote). Only complete
// lines (ending in a newline) are read; a partly written last line waits for its newline. A file that shrank
// (replaced or truncated) is read again from its start: each row becomes a version again.
//
// Not thread-safe.
#pragma once

#include <absl/container/flat_hash_set.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "spec/spec.h"
#include "table/table_set.h"

namespace freshet {

// The JSON object text of CSV row `line` under the column names `header` (see the file comment); an error
// when the row has more cells than the header or an unclosed quote.
Result<std::string> CsvRowToJson(const std::vector<std::string>& header, std::string_view line);

// The cells of one CSV line.
Result<std::vector<std::string>> SplitCsvLine(std::string_view line);

class TableFileReader {
 public:
  // Reads `path` (the table's source.path unless given) in the table's format.
  explicit TableFileReader(const TableSpec& table, std::string path = "");

  // Appends the rows of the complete lines added since the last call to *rows. A row that cannot be read is
  // skipped and described in *errors as "FILE:LINE: MESSAGE". Fails when the file cannot be read.
  Status ReadNew(std::vector<TableRow>* rows, std::vector<std::string>* errors);

  // Where the next read starts (a checkpoint keeps it): the byte offset and the number of lines before it
  // (parquet: the size and modification time of the file as last read).
  uint64_t offset() const { return offset_; }
  uint64_t lines() const { return lines_; }
  void Seek(uint64_t offset, uint64_t lines) {
    offset_ = offset;
    lines_ = lines;
  }
  const std::string& path() const { return path_; }

 private:
  const TableSpec& table_;
  std::string path_;
  uint64_t offset_ = 0;
  uint64_t lines_ = 0;
  Status ReadParquet(std::vector<TableRow>* rows, std::vector<std::string>* errors);

  std::vector<std::string> header_;  // csv
  absl::flat_hash_set<uint64_t> seen_;  // parquet: the hashes of the rows of the last read.
  bool primed_ = false;                 // parquet: seen_ holds the file at offset_/lines_.
};

}  // namespace freshet

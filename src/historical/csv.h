// Minimal RFC 4180 CSV: reading records while keeping their raw text (so input columns pass through
// unchanged), and writing fields and feature values.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/value.h"

namespace freshet {

struct CsvRecord {
  std::string_view raw;             // The record's text without its line terminator.
  std::vector<std::string> fields;  // Unquoted field values.
  uint64_t line = 0;                // 1-based line where the record starts.
};

// Splits `text` into records. Quoted fields may contain commas, doubled quotes and newlines.
// An unterminated quote is an error naming `file` and the line.
Result<std::vector<CsvRecord>> ParseCsv(std::string_view text, const std::string& file);

// Appends `field` to *out, quoted when it holds a comma, quote, CR or LF.
void AppendCsvField(std::string_view field, std::string* out);

// Appends a feature value: integers as integers, doubles in the shortest text that reads back to the
// same double, booleans as true/false, strings CSV-quoted where needed, null as nothing.
void AppendCsvValue(const Value& value, std::string* out);

}  // namespace freshet

#include "historical/csv.h"

#include <charconv>

namespace freshet {

Result<std::vector<CsvRecord>> ParseCsv(std::string_view text, const std::string& file) {
  std::vector<CsvRecord> records;
  size_t pos = 0;
  uint64_t line = 1;
  if (text.size() >= 3 && text.substr(0, 3) == "\xEF\xBB\xBF") pos = 3;  // UTF-8 byte order mark.
  while (pos < text.size()) {
    CsvRecord record;
    record.line = line;
    const size_t start = pos;
    std::string field;
    bool done = false;
    while (!done) {
      if (pos < text.size() && text[pos] == '"') {
        const uint64_t quote_line = line;
        ++pos;
        while (true) {
          if (pos >= text.size()) {
            return Status::Invalid(file + ":" + std::to_string(quote_line) +
                                   ": unterminated quoted field; close it with \" (write \"\" for a quote inside)");
          }
          const char c = text[pos++];
          if (c == '"') {
            if (pos < text.size() && text[pos] == '"') {
              field.push_back('"');
              ++pos;
            } else {
              break;
            }
          } else {
            if (c == '\n') ++line;
            field.push_back(c);
          }
        }
      }
      while (pos < text.size() && text[pos] != ',' && text[pos] != '\n' && text[pos] != '\r') field.push_back(text[pos++]);
      record.fields.push_back(std::move(field));
      field.clear();
      if (pos < text.size() && text[pos] == ',') {
        ++pos;
        continue;
      }
      size_t end = pos;
      if (pos < text.size() && text[pos] == '\r') ++pos;
      if (pos < text.size() && text[pos] == '\n') ++pos;
      ++line;
      record.raw = text.substr(start, end - start);
      done = true;
    }
    if (record.raw.empty()) continue;  // Blank line.
    records.push_back(std::move(record));
  }
  return records;
}

void AppendCsvField(std::string_view field, std::string* out) {
  if (field.find_first_of(",\"\r\n") == std::string_view::npos) {
    out->append(field);
    return;
  }
  out->push_back('"');
  for (char c : field) {
    if (c == '"') out->push_back('"');
    out->push_back(c);
  }
  out->push_back('"');
}

void AppendCsvValue(const Value& value, std::string* out) {
  char buf[64];
  switch (value.type) {
    case ValueType::kInt: {
      auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value.i);
      out->append(buf, end);
      break;
    }
    case ValueType::kDouble: {
      auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value.d);
      out->append(buf, end);
      break;
    }
    case ValueType::kBool: out->append(value.b ? "true" : "false"); break;
    case ValueType::kString: AppendCsvField(value.s, out); break;
    default: break;
  }
}

}  // namespace freshet

#include "table/table_file.h"

#include <filesystem>
#include <fstream>

#include "serve/json.h"

namespace freshet {

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

Status TableFileReader::ReadNew(std::vector<TableRow>* rows, std::vector<std::string>* errors) {
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

#include "historical/historical.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>
#include <queue>
#include <sstream>

#include "common/time.h"
#include "engine/feature_engine.h"
#include "event/dead_letters.h"
#include "event/event_parser.h"
#include "event/line_reader.h"
#include "historical/csv.h"

namespace freshet {
namespace {

struct EntityRow {
  std::string entity;
  int64_t time_ms;
};

Result<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::IoError(std::string("cannot open ") + what + " '" + path + "': " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Parses a timestamp cell: epoch milliseconds or RFC 3339.
Result<int64_t> ParseTimeCell(std::string_view cell) {
  if (!cell.empty() && (std::isdigit(static_cast<unsigned char>(cell[0])) || cell[0] == '-') &&
      cell.find_first_not_of("-0123456789") == std::string_view::npos) {
    int64_t ms = 0;
    auto [ptr, ec] = std::from_chars(cell.data(), cell.data() + cell.size(), ms);
    if (ec == std::errc() && ptr == cell.data() + cell.size() && ms >= kMinTimeMs && ms <= kMaxTimeMs) return ms;
    return Status::Invalid("'" + std::string(cell) + "' is not epoch milliseconds within years 0001-9999");
  }
  return ParseRfc3339Ms(cell);
}

// Progress on a terminal: a line rewritten in place at most four times a second.
class Progress {
 public:
  explicit Progress(bool enabled) : enabled_(enabled), start_(std::chrono::steady_clock::now()), last_(start_) {}
  void Update(uint64_t bytes, uint64_t total, uint64_t events) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_ < std::chrono::milliseconds(250)) return;
    last_ = now;
    const double secs = std::chrono::duration<double>(now - start_).count();
    if (total > 0) {
      std::fprintf(stderr, "\rhistorical: %5.1f%%  %llu events  %.2f M events/s   ", 100.0 * bytes / total,
                   static_cast<unsigned long long>(events), events / secs / 1e6);
    } else {
      std::fprintf(stderr, "\rhistorical: %llu events  %.2f M events/s   ", static_cast<unsigned long long>(events),
                   events / secs / 1e6);
    }
    shown_ = true;
  }
  void Done() {
    if (shown_) std::fprintf(stderr, "\r\033[K");
  }

 private:
  bool enabled_;
  bool shown_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

// Events waiting for the watermark, ordered by (time, input order); slots are reused.
class ReorderBuffer {
 public:
  PendingEvent* Acquire() {
    if (free_.empty()) {
      pool_.push_back(std::make_unique<PendingEvent>());
      return pool_.back().get();
    }
    PendingEvent* e = free_.back();
    free_.pop_back();
    return e;
  }
  void Push(PendingEvent* e) { heap_.push(e); }
  bool empty() const { return heap_.empty(); }
  const PendingEvent* top() const { return heap_.top(); }
  void PopAndRelease() {
    free_.push_back(heap_.top());
    heap_.pop();
  }

 private:
  struct Later {
    bool operator()(const PendingEvent* a, const PendingEvent* b) const {
      return a->time_ms != b->time_ms ? a->time_ms > b->time_ms : a->seq > b->seq;
    }
  };
  std::vector<std::unique_ptr<PendingEvent>> pool_;
  std::vector<PendingEvent*> free_;
  std::priority_queue<PendingEvent*, std::vector<PendingEvent*>, Later> heap_;
};

}  // namespace

Status RunHistorical(const Spec& spec, const HistoricalOptions& options, HistoricalStats* stats) {
  const auto started = std::chrono::steady_clock::now();
  *stats = HistoricalStats();

  // Entity rows.
  FRESHET_ASSIGN_OR_RETURN(std::string entities_text, ReadFile(options.entities_path, "entities file"));
  FRESHET_ASSIGN_OR_RETURN(std::vector<CsvRecord> records, ParseCsv(entities_text, options.entities_path));
  if (records.empty()) {
    return Status::Invalid(options.entities_path + ": the file is empty; it needs a header row with the columns '" +
                           spec.entity_field + "' and '" + spec.timestamp_field + "'");
  }
  const CsvRecord& header = records[0];
  auto column = [&](const std::string& name) -> int {
    for (size_t k = 0; k < header.fields.size(); ++k) {
      if (header.fields[k] == name) return static_cast<int>(k);
    }
    return -1;
  };
  const int entity_col = column(spec.entity_field);
  const int time_col = column(spec.timestamp_field);
  if (entity_col < 0 || time_col < 0) {
    std::string present;
    for (const auto& f : header.fields) present += (present.empty() ? "" : ", ") + f;
    return Status::Invalid(options.entities_path + ":" + std::to_string(header.line) + ": the header needs the column '" +
                           (entity_col < 0 ? spec.entity_field : spec.timestamp_field) +
                           "' (the spec's " + (entity_col < 0 ? "entity" : "timestamp") + " field); it has: " + present);
  }
  for (const FeatureSpec& f : spec.features) {
    if (column(f.name) >= 0) {
      return Status::Invalid(options.entities_path + ": the input already has a column named '" + f.name +
                             "', the name of a feature; rename or drop that column");
    }
  }
  std::vector<EntityRow> rows;
  rows.reserve(records.size() - 1);
  for (size_t r = 1; r < records.size(); ++r) {
    const CsvRecord& rec = records[r];
    const std::string where = options.entities_path + ":" + std::to_string(rec.line) + ": ";
    if (static_cast<int>(rec.fields.size()) <= std::max(entity_col, time_col)) {
      return Status::Invalid(where + "the row has " + std::to_string(rec.fields.size()) + " fields, the header " +
                             std::to_string(header.fields.size()));
    }
    if (rec.fields[entity_col].empty()) return Status::Invalid(where + "column '" + spec.entity_field + "' is empty");
    Result<int64_t> t = ParseTimeCell(rec.fields[time_col]);
    if (!t.ok()) return Status::Invalid(where + "column '" + spec.timestamp_field + "': " + t.status().message());
    rows.push_back(EntityRow{rec.fields[entity_col], *t});
  }
  std::vector<uint32_t> order(rows.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return rows[a].time_ms < rows[b].time_ms; });

  // Events, through the same parse -> admit -> extract -> apply path as the streaming runtime.
  LineReader reader;
  FRESHET_RETURN_IF_ERROR(reader.Open(options.events_path));
  DeadLetterWriter dead_letters;
  FRESHET_RETURN_IF_ERROR(dead_letters.Open(options.dead_letters_path, options.events_path));
  FeatureEngine engine(spec);
  EventParser parser(spec.fields);
  ParsedEvent event;
  std::string reason;
  ReorderBuffer buffer;
  std::vector<std::string> answers(rows.size());
  std::vector<Value> values;
  size_t next_row = 0;
  uint64_t seq = 0;
  Progress progress(options.progress);

  // Releases, in time order, every buffered event and entity row earlier than `bound`.
  auto release_before = [&](int64_t bound) {
    while (true) {
      const bool has_event = !buffer.empty() && buffer.top()->time_ms < bound;
      const bool has_row = next_row < order.size() && rows[order[next_row]].time_ms < bound;
      if (!has_event && !has_row) return;
      if (has_event && (!has_row || buffer.top()->time_ms <= rows[order[next_row]].time_ms)) {
        engine.Apply(*buffer.top(), buffer.top()->time_ms);
        buffer.PopAndRelease();
      } else {
        const uint32_t r = order[next_row++];
        engine.Query(rows[r].entity, rows[r].time_ms, &values);
        std::string& out = answers[r];
        for (const Value& v : values) {
          out.push_back(',');
          AppendCsvValue(v, &out);
        }
      }
    }
  };

  Line line;
  int64_t released_below = std::numeric_limits<int64_t>::min();
  while (reader.Next(&line)) {
    ++stats->events_read;
    if (line.too_long) {
      ++stats->rejected;
      dead_letters.Write(line.number, "line is longer than " + std::to_string(kMaxLineBytes) + " bytes", "");
      continue;
    }
    if (!parser.Parse(line.text, line.capacity, &event, &reason)) {
      ++stats->rejected;
      dead_letters.Write(line.number, reason, line.text);
      continue;
    }
    if (!engine.Admit(event.time_ms)) {
      ++stats->late;
      dead_letters.Write(line.number, "late", line.text);
      continue;
    }
    PendingEvent* pending = buffer.Acquire();
    engine.Extract(event, seq++, pending);
    buffer.Push(pending);
    if (engine.low_watermark_ms() > released_below) {
      released_below = engine.low_watermark_ms();
      release_before(released_below);
    }
    if ((stats->events_read & 0xFFFF) == 0) progress.Update(reader.bytes_consumed(), reader.file_size(), stats->events_read);
  }
  FRESHET_RETURN_IF_ERROR(reader.status());
  release_before(std::numeric_limits<int64_t>::max());
  progress.Done();
  FRESHET_RETURN_IF_ERROR(dead_letters.Close());
  stats->accepted = engine.counters().admitted;

  // Output: the input rows unchanged, then one column per feature.
  std::FILE* out = options.output_path == "-" ? stdout : std::fopen(options.output_path.c_str(), "wb");
  if (out == nullptr) {
    return Status::IoError("cannot open output file '" + options.output_path + "': " + std::strerror(errno));
  }
  std::string text(header.raw);
  for (const FeatureSpec& f : spec.features) {
    text.push_back(',');
    AppendCsvField(f.name, &text);
  }
  text.push_back('\n');
  for (size_t r = 0; r < rows.size(); ++r) {
    text.append(records[r + 1].raw);
    text.append(answers[r]);
    text.push_back('\n');
    if (text.size() > (1 << 20)) {
      std::fwrite(text.data(), 1, text.size(), out);
      text.clear();
    }
  }
  std::fwrite(text.data(), 1, text.size(), out);
  const bool write_failed = std::ferror(out) != 0;
  if (out != stdout) {
    if (std::fclose(out) != 0 || write_failed) {
      return Status::IoError("cannot write output file '" + options.output_path + "': " + std::strerror(errno));
    }
  } else {
    std::fflush(out);
  }
  stats->rows = rows.size();
  stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return Status::Ok();
}

}  // namespace freshet

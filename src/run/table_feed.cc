#include "run/table_feed.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <chrono>
#include <filesystem>
#include <fstream>

#include "common/bytes.h"

namespace freshet {
namespace {

// 2 added the Kafka tables' offsets and dead-letter lengths; a checkpoint of version 1 has none.
constexpr uint32_t kTableFeedVersion = 2;
constexpr size_t kMaxKafkaBatch = 10000;  // Messages of one topic added per read.
constexpr int kCatchUpWaitMs = 100;       // Each wait for messages while catching up.

// Appends `text` to the file at `path` and fsyncs it: durable when this returns ok.
Status AppendDurably(const std::string& path, std::string_view text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return Status::IoError("cannot open the table log '" + path + "': " + std::strerror(errno));
  size_t written = 0;
  while (written < text.size()) {
    const ssize_t n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      return Status::IoError("cannot write the table log '" + path + "': " + why);
    }
    written += static_cast<size_t>(n);
  }
  const bool synced = ::fsync(fd) == 0;
  const std::string why = synced ? "" : std::strerror(errno);
  ::close(fd);
  if (!synced) return Status::IoError("cannot sync the table log '" + path + "': " + why);
  return Status::Ok();
}

// A put log ends in a newline unless a crash cut a write short: those rows were never acknowledged, and a later
// append would run into them, so the unfinished last line is cut off.
void DropUnfinishedLine(const std::string& path) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec || size == 0) return;
  std::ifstream in(path, std::ios::binary);
  // The tail holds the last newline unless a row is longer than it (then the whole file is read).
  const uint64_t tail = size <= (uint64_t{1} << 20) ? size : (uint64_t{1} << 20);
  in.seekg(static_cast<std::streamoff>(size - tail));
  std::string content(tail, '\0');
  in.read(content.data(), static_cast<std::streamsize>(tail));
  if (content.back() == '\n') return;
  uint64_t keep = 0;
  if (const size_t newline = content.rfind('\n'); newline != std::string::npos) {
    keep = size - tail + newline + 1;
  } else if (tail < size) {
    in.seekg(0);
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    keep = all.rfind('\n') == std::string::npos ? 0 : all.rfind('\n') + 1;
  }
  std::filesystem::resize_file(path, keep, ec);
  if (ec) std::fprintf(stderr, "freshet run: warning: cannot cut the unfinished last line of '%s': %s\n", path.c_str(),
                       ec.message().c_str());
}

}  // namespace

TableFeed::TableFeed(const Spec& spec, MetricsRegistry& metrics, const std::string& data_dir)
    : spec_(spec), tables_(spec), next_version_(spec.tables.size(), 0) {
  for (size_t t = 0; t < spec.tables.size(); ++t) {
    if (spec.tables[t].source_type == "file") {
      readers_.push_back(Reader{t, nullptr, std::make_unique<TableFileReader>(spec.tables[t])});
    }
  }
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(data_dir) / "dead_letters", ec);
  for (size_t t = 0; t < spec.tables.size(); ++t) {
    if (spec.tables[t].source_type != "kafka") continue;
    const std::string path =
        (std::filesystem::path(data_dir) / "dead_letters" / ("table_" + spec.tables[t].name + ".jsonl")).string();
    kafka_.push_back(KafkaTable{t, std::make_unique<KafkaTableReader>(spec.tables[t]), path,
                                std::make_unique<DeadLetterWriter>()});
  }
  std::filesystem::create_directories(std::filesystem::path(data_dir) / "tables", ec);
  for (size_t t = 0; t < spec.tables.size(); ++t) {
    auto log = std::make_unique<TableSpec>(spec.tables[t]);
    log->path = (std::filesystem::path(data_dir) / "tables" / (log->name + ".jsonl")).string();
    log->format = "jsonl";
    std::ofstream(log->path, std::ios::app);  // Present from the start, so that reading it never fails for lack.
    DropUnfinishedLine(log->path);
    auto reader = std::make_unique<TableFileReader>(*log);
    readers_.push_back(Reader{t, std::move(log), std::move(reader)});
  }
  for (const TableSpec& table : spec.tables) {
    const MetricLabels labels = {{"table", table.name}};
    versions_.push_back(&metrics.GetCounter(
        "freshet_table_versions_total",
        "Reference-table rows received (each a new version of its key; deletions included: Kafka tombstones and "
        "rows with _deleted true).",
        labels));
    late_.push_back(&metrics.GetCounter(
        "freshet_table_late_versions_total",
        "Reference-table versions that arrived late: their valid_from is at or before the newest accepted event "
        "time, so events processed before them did not see them (see the README's Semantics).",
        labels));
    rejected_.push_back(&metrics.GetCounter(
        "freshet_table_rejected_rows_total",
        "Reference-table rows that could not be read (logged with file:line; Kafka messages dead-lettered).", labels));
    keys_.push_back(&metrics.GetGauge("freshet_table_keys", "Keys with a version, per reference table.", labels));
    held_.push_back(&metrics.GetGauge(
        "freshet_table_versions_held",
        "Reference-table versions held in memory: each key's versions that events to come can still see (older ones "
        "are dropped once the low watermark has passed a newer one; the offline history keeps all).",
        labels));
  }
}

int TableFeed::IndexOf(std::string_view name) const {
  for (size_t t = 0; t < spec_.tables.size(); ++t) {
    if (spec_.tables[t].name == name) return static_cast<int>(t);
  }
  return -1;
}

void TableFeed::Add(size_t table, const TableRow& row, PipelineLanes& lanes, OfflineSink* offline, int64_t wall_ms) {
  const uint64_t seq = lanes.next_offline_seq();
  if (tables_.Add(table, row, lanes.newest_event_ms())) late_[table]->Increment();
  if (offline != nullptr) {
    offline->AddTableVersion(table, next_version_[table], static_cast<int64_t>(seq), row, wall_ms);
  }
  ++next_version_[table];
  versions_[table]->Increment();
  keys_[table]->Set(static_cast<double>(tables_.keys(table)));
}

Status TableFeed::Start(PipelineLanes& lanes, OfflineSink* offline, int64_t wall_ms,
                        std::vector<std::string>* warnings) {
  for (KafkaTable& k : kafka_) {
    FRESHET_RETURN_IF_ERROR(
        k.dead_letters->OpenAt(k.dead_letter_path, k.reader->topic(), k.restored_dead_letter_bytes));
  }
  // Each topic as it stands comes before the first event (what a table file's rows do): the reader looks its
  // partitions up on a thread of its own, so an unreachable broker costs catch_up, not a hang.
  for (KafkaTable& k : kafka_) {
    const TableSpec& table = spec_.tables[k.table];
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(table.catch_up_ms);
    while (!k.reader->caught_up() && std::chrono::steady_clock::now() < deadline) {
      FRESHET_RETURN_IF_ERROR(ReadKafka(k, kCatchUpWaitMs, lanes, offline, wall_ms, warnings));
    }
    if (!k.reader->caught_up()) {
      k.catch_up_missed = true;
      warnings->push_back("table '" + table.name + "': Kafka topic '" + table.topic + "' was not read to its end "
                          "within catch_up (" + std::to_string(table.catch_up_ms) + " ms)" +
                          (k.reader->problem() ? ": " + *k.reader->problem() : "") +
                          "; events are read on and see its rows as they arrive");
    }
  }
  started_ = true;
  return Status::Ok();
}

Status TableFeed::ReadKafka(KafkaTable& k, int timeout_ms, PipelineLanes& lanes, OfflineSink* offline,
                            int64_t wall_ms, std::vector<std::string>* warnings) {
  std::vector<TableRow> rows;
  std::vector<RejectedMessage> rejected;
  FRESHET_RETURN_IF_ERROR(k.reader->ReadNew(&rows, &rejected, kMaxKafkaBatch, timeout_ms));
  tables_.Reserve(k.table, rows.size());
  for (const TableRow& row : rows) Add(k.table, row, lanes, offline, wall_ms);
  rejected_[k.table]->Increment(rejected.size());
  for (const RejectedMessage& m : rejected) {
    k.dead_letters->WriteAt(m.partition, m.offset, m.reason, m.raw);
    warnings->push_back("table '" + spec_.tables[k.table].name + "': Kafka topic '" + k.reader->topic() +
                        "' partition " + std::to_string(m.partition) + " offset " + std::to_string(m.offset) + ": " +
                        m.reason + " (written to " + k.dead_letter_path + ")");
  }
  if (!rejected.empty()) k.dead_letters->Flush();
  if (k.catch_up_missed && k.reader->caught_up()) k.catch_up_missed = false;
  return Status::Ok();
}

std::optional<std::string> TableFeed::problem() const {
  std::string text;
  for (const KafkaTable& k : kafka_) {
    const TableSpec& table = spec_.tables[k.table];
    std::optional<std::string> why = k.reader->problem();
    if (!why && k.catch_up_missed) {
      why = "not read to the end of its topic within catch_up; events meanwhile saw only the rows read so far";
    }
    if (!why) continue;
    text += (text.empty() ? "" : "; ") + ("table '" + table.name + "' (Kafka topic '" + table.topic + "'): " + *why);
  }
  if (text.empty()) return std::nullopt;
  return text;
}

Status TableFeed::Poll(PipelineLanes& lanes, OfflineSink* offline, int64_t wall_ms,
                       std::vector<std::string>* warnings) {
  if (!started_) FRESHET_RETURN_IF_ERROR(Start(lanes, offline, wall_ms, warnings));
  for (KafkaTable& k : kafka_) FRESHET_RETURN_IF_ERROR(ReadKafka(k, 0, lanes, offline, wall_ms, warnings));
  for (Reader& r : readers_) {
    std::vector<TableRow> rows;
    std::vector<std::string> errors;
    FRESHET_RETURN_IF_ERROR(r.reader->ReadNew(&rows, &errors));
    tables_.Reserve(r.table, rows.size());
    for (const TableRow& row : rows) Add(r.table, row, lanes, offline, wall_ms);
    rejected_[r.table]->Increment(errors.size());
    for (std::string& e : errors) warnings->push_back("table '" + spec_.tables[r.table].name + "': " + std::move(e));
  }
  Prune(lanes);
  return Status::Ok();
}

void TableFeed::Prune(PipelineLanes& lanes) {
  // Kafka lanes come with a partition's first message, and a partition not seen yet may bring events older than
  // every lane's low watermark: with partitions nothing is pruned (README, Semantics). Sharded, the judge holds the
  // input's clock (a shard's lags until an event of its entities comes).
  if (lanes.sharded()) {
    tables_.Prune(lanes.judge()->engine.low_watermark_ms());
  } else if (!lanes.partitioned()) {
    tables_.Prune(lanes.low_watermark_ms());
  }
  for (size_t t = 0; t < held_.size(); ++t) held_[t]->Set(static_cast<double>(tables_.versions(t)));
}

Result<size_t> TableFeed::Put(std::string_view name, std::string_view body,
                              std::vector<std::pair<size_t, std::string>>* errors) {
  const int t = IndexOf(name);
  if (t < 0) {
    std::string names;
    for (const TableSpec& table : spec_.tables) names += (names.empty() ? "" : ", ") + table.name;
    return Status::NotFound("no table '" + std::string(name) + "' in the spec (its tables: " + names + ")");
  }
  const TableSpec& table = spec_.tables[static_cast<size_t>(t)];
  std::string valid;
  size_t accepted = 0, line = 0;
  for (size_t start = 0; start < body.size();) {
    size_t end = body.find('\n', start);
    if (end == std::string_view::npos) end = body.size();
    std::string_view text = body.substr(start, end - start);
    start = end + 1;
    ++line;
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    if (text.find_first_not_of(" \t") == std::string_view::npos) continue;
    Result<TableRow> row = ParseTableRow(table, text);
    if (!row.ok()) {
      rejected_[static_cast<size_t>(t)]->Increment();
      errors->emplace_back(line, row.status().message());
      continue;
    }
    valid.append(text).push_back('\n');
    ++accepted;
  }
  if (accepted == 0) return accepted;
  std::lock_guard<std::mutex> lock(put_mutex_);
  const std::string& path = readers_[readers_.size() - spec_.tables.size() + static_cast<size_t>(t)].spec->path;
  FRESHET_RETURN_IF_ERROR(AppendDurably(path, valid));
  return accepted;
}

Result<std::string> TableFeed::Encode(bool with_versions) {
  std::string bytes;
  ByteWriter out(&bytes);
  out.PutU32(kTableFeedVersion);
  out.PutVarint(readers_.size());
  for (const Reader& r : readers_) {
    out.PutString(r.reader->path());
    out.PutU64(r.reader->offset());
    out.PutU64(r.reader->lines());
  }
  for (size_t t = 0; t < next_version_.size(); ++t) {
    out.PutI64(next_version_[t]);
    out.PutU64(late_[t]->value());
    out.PutU64(rejected_[t]->value());
  }
  out.PutVarint(kafka_.size());
  for (KafkaTable& k : kafka_) {
    uint64_t dead_letter_bytes = 0;
    if (started_) {
      FRESHET_ASSIGN_OR_RETURN(dead_letter_bytes, k.dead_letters->Sync());
    }
    out.PutString(k.reader->topic());
    out.PutU64(dead_letter_bytes);
    out.PutVarint(k.reader->next().size());
    for (const auto& [partition, offset] : k.reader->next()) {
      out.PutU32(static_cast<uint32_t>(partition));
      out.PutI64(offset);
    }
  }
  if (with_versions) tables_.Save(out);
  return bytes;
}

Status TableFeed::Restore(std::string_view bytes) {
  const Status damaged = Status::Invalid(
      "the checkpoint's reference tables are damaged or of other tables; start fresh with `freshet run --reset`");
  ByteReader in(bytes);
  uint32_t version = 0;
  uint64_t count = 0;
  if (!in.ReadU32(&version) || version < 1 || version > kTableFeedVersion || !in.ReadVarint(&count) ||
      count != readers_.size()) {
    return damaged;
  }
  for (Reader& r : readers_) {
    std::string_view path;
    uint64_t offset = 0, lines = 0;
    if (!in.ReadString(&path) || !in.ReadU64(&offset) || !in.ReadU64(&lines)) return damaged;
    // A table file renamed in the spec is read from its start.
    if (path == r.reader->path()) r.reader->Seek(offset, lines);
  }
  // The counters continue from the checkpoint's, as the event counters do.
  for (size_t t = 0; t < next_version_.size(); ++t) {
    uint64_t late = 0, rejected = 0;
    if (!in.ReadI64(&next_version_[t]) || !in.ReadU64(&late) || !in.ReadU64(&rejected)) return damaged;
    versions_[t]->Increment(static_cast<uint64_t>(next_version_[t]));
    late_[t]->Increment(late);
    rejected_[t]->Increment(rejected);
  }
  if (version >= 2) FRESHET_RETURN_IF_ERROR(RestoreKafka(in));
  FRESHET_RETURN_IF_ERROR(tables_.Load(in));
  for (size_t t = 0; t < keys_.size(); ++t) keys_[t]->Set(static_cast<double>(tables_.keys(t)));
  for (size_t t = 0; t < held_.size(); ++t) held_[t]->Set(static_cast<double>(tables_.versions(t)));
  return Status::Ok();
}

Status TableFeed::RestoreKafka(ByteReader& in) {
  const Status damaged = Status::Invalid(
      "the checkpoint's Kafka table offsets are damaged or of other tables; start fresh with `freshet run --reset`");
  uint64_t count = 0;
  if (!in.ReadVarint(&count) || count != kafka_.size()) return damaged;
  for (KafkaTable& k : kafka_) {
    std::string_view topic;
    uint64_t dead_letter_bytes = 0, partitions = 0;
    if (!in.ReadString(&topic) || !in.ReadU64(&dead_letter_bytes) || !in.ReadVarint(&partitions)) return damaged;
    std::map<int32_t, int64_t> next;
    for (uint64_t p = 0; p < partitions; ++p) {
      uint32_t partition = 0;
      int64_t offset = 0;
      if (!in.ReadU32(&partition) || !in.ReadI64(&offset)) return damaged;
      next[static_cast<int32_t>(partition)] = offset;
    }
    // A table whose topic was renamed in the spec is read from its start.
    if (topic != k.reader->topic()) continue;
    k.reader->Seek(std::move(next));
    k.restored_dead_letter_bytes = dead_letter_bytes;
  }
  return Status::Ok();
}

}  // namespace freshet

#include "historical/historical.h"

#include <sys/resource.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <numeric>
#include <queue>

#include "common/progress.h"
#include "common/time.h"
#include "engine/dedup.h"
#include "engine/feature_engine.h"
#include "event/dead_letters.h"
#include "event/event_parser.h"
#include "event/line_reader.h"
#include "historical/entity_table.h"
#include "lookup/lookup_row.h"
#include "offline/tables.h"
#include "table/table_history.h"

namespace freshet {
namespace {

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

// The point-in-time join of events and entity rows: events are fed one at a time in input order (whatever
// their source), rows are answered as the low watermark passes them, and Finish answers the rest.
class PointInTimeJoin {
 public:
  PointInTimeJoin(const Spec& spec, const std::vector<EntityTime>& rows, const RowAnswerFn& answer,
                  DeadLetterWriter* dead_letters, HistoricalStats* stats, const EventObserverFn* observer)
      : engine_(spec, FeatureEngine::Options{.keep_recent = false}), parser_(spec.fields), rows_(rows), answer_(answer), dead_letters_(dead_letters), stats_(stats),
        observer_(observer != nullptr && *observer ? observer : nullptr) {
    if (spec.dedup) dedup_.emplace(spec);
    if (!spec.joins.empty()) parser_.SetTables(&tables_);
    if (spec.watermark) delay_ms_ = spec.watermark->max_out_of_orderness_ms + spec.watermark->allowed_lateness_ms;
    order_.resize(rows.size());
    std::iota(order_.begin(), order_.end(), 0);
    std::stable_sort(order_.begin(), order_.end(),
                     [&](uint32_t a, uint32_t b) { return rows[a].time_ms < rows[b].time_ms; });
  }

  // One input line (or stored raw event): `capacity` bytes are readable from text.data() (see
  // EventParser::Parse); `number` names it in dead letters.
  // The events table's Kafka partitions, before the first Feed: rows are answered only once every partition's
  // low watermark has passed them (a partition not seen yet could still bring earlier events).
  void ExpectPartitions(const std::vector<int64_t>& partitions) {
    for (int64_t p : partitions) partition_max_.try_emplace(p, kNoTime);
  }

  // `partition`: the event's Kafka partition (the events table of a Kafka pipeline). Each partition is then an
  // input of its own: the lateness rule uses the partition's M, and events are released in time order only once
  // every partition's low watermark has passed them.
  void Feed(std::string_view text, size_t capacity, uint64_t number, bool too_long,
            std::optional<int64_t> partition = std::nullopt) {
    ++stats_->events_read;
    if (too_long) {
      ++stats_->rejected;
      dead_letters_->Write(number, LineTooLongReason(), "");
      return;
    }
    if (!parser_.Parse(text, capacity, &event_, &reason_)) {
      ++stats_->rejected;
      dead_letters_->Write(number, reason_, text);
      return;
    }
    // Lateness first (a late event is late, duplicate or not), then deduplication, then admission.
    int64_t* partition_max = partition ? &partition_max_.try_emplace(*partition, kNoTime).first->second : nullptr;
    const bool late = partition_max != nullptr ? IsLateIn(*partition_max, event_.time_ms) : engine_.IsLate(event_.time_ms);
    if (dedup_ && !late &&
        !dedup_->Admit(event_.entity, event_.slots[engine_.spec().dedup->field_slot], event_.time_ms)) {
      ++stats_->duplicates;
      dead_letters_->Write(number, "duplicate", text);
      if (observer_ != nullptr) (*observer_)(event_, text, number, EventFate::kDuplicate);
      return;
    }
    if (late || (partition_max == nullptr && !engine_.Admit(event_.time_ms))) {
      ++stats_->late;
      dead_letters_->Write(number, "late", text);
      if (observer_ != nullptr) (*observer_)(event_, text, number, EventFate::kLate);
      return;
    }
    if (partition_max != nullptr) {
      engine_.AdmitJudged(event_.time_ms);
      *partition_max = std::max(*partition_max, event_.time_ms);
      if (engine_.spec().watermark) engine_.SetExpiryLowMs(*partition_max - delay_ms_);  // The lane's L.
    }
    if (!stats_->has_events || event_.time_ms > stats_->max_event_time_ms) stats_->max_event_time_ms = event_.time_ms;
    stats_->has_events = true;
    if (observer_ != nullptr) (*observer_)(event_, text, number, EventFate::kAccepted);
    PendingEvent* pending = buffer_.Acquire();
    engine_.Extract(event_, seq_++, pending);
    buffer_.Push(pending);
    const int64_t low = partition_max_.empty() ? engine_.low_watermark_ms() : PartitionsLow();
    if (low > released_below_) {
      released_below_ = low;
      ReleaseBefore(released_below_);
    }
  }

  // The recorded lookup answers of the next event fed (lookup/lookup_row.h); null: looked-up fields missing.
  void SetLookups(const EventLookups* lookups) { parser_.SetLookups(lookups); }

  // Adds the reference-table versions that arrived before the event numbered `seq` (see TableReplay).
  void AddTablesUpTo(int64_t seq) { replay_.AddUpTo(tables_, seq); }
  void SetTableReplay(TableReplay replay) { replay_ = std::move(replay); }
  // For a caller that prefetches the joined tables' slots of the coming lines (table/table_set.h): the tables, or
  // null when the spec joins none. The parser then no longer prefetches at the start of each parse.
  const TableSet* TablesPrefetchedByCaller() {
    if (engine_.spec().joins.empty()) return nullptr;
    parser_.SetTables(&tables_, /*prefetched_by_caller=*/true);
    return &tables_;
  }
  const Spec& spec() const { return engine_.spec(); }

  // End of input: every event is final.
  void Finish() {
    ReleaseBefore(std::numeric_limits<int64_t>::max());
    stats_->accepted = engine_.counters().admitted;
    stats_->skipped_fields = engine_.counters().skipped;
    stats_->rows = next_row_;
  }

 private:
  // Releases, in time order, every buffered event and entity row earlier than `bound`.
  void ReleaseBefore(int64_t bound) {
    while (true) {
      const bool has_event = !buffer_.empty() && buffer_.top()->time_ms < bound;
      const bool has_row = next_row_ < order_.size() && rows_[order_[next_row_]].time_ms < bound;
      if (!has_event && !has_row) return;
      if (has_event && (!has_row || buffer_.top()->time_ms <= rows_[order_[next_row_]].time_ms)) {
        engine_.Apply(*buffer_.top(), buffer_.top()->time_ms);
        buffer_.PopAndRelease();
      } else {
        const uint32_t r = order_[next_row_++];
        engine_.Query(rows_[r].entity, rows_[r].time_ms, &values_);
        answer_(r, values_);
      }
    }
  }

  static constexpr int64_t kNoTime = std::numeric_limits<int64_t>::min();
  bool IsLateIn(int64_t partition_max, int64_t time_ms) const {
    return engine_.spec().watermark && partition_max != kNoTime && time_ms < partition_max - delay_ms_;
  }
  // The lowest partition's low watermark: no event of any partition can come earlier.
  int64_t PartitionsLow() const {
    if (!engine_.spec().watermark) return kNoTime;
    int64_t low = std::numeric_limits<int64_t>::max();
    for (const auto& [partition, max] : partition_max_) low = std::min(low, max == kNoTime ? kNoTime : max - delay_ms_);
    return low;
  }

  FeatureEngine engine_;
  std::map<int64_t, int64_t> partition_max_;  // Kafka partition -> its M (the largest accepted event time).
  int64_t delay_ms_ = 0;  // max_out_of_orderness + allowed_lateness.
  std::optional<Deduplicator> dedup_;  // With `dedup` in the spec.
  EventParser parser_;
  TableSet tables_{engine_.spec()};
  TableReplay replay_;
  const std::vector<EntityTime>& rows_;
  const RowAnswerFn& answer_;
  DeadLetterWriter* dead_letters_;
  HistoricalStats* stats_;
  const EventObserverFn* observer_;  // Null when nobody observes.
  std::vector<uint32_t> order_;  // Row indices by time (stable).
  size_t next_row_ = 0;
  ParsedEvent event_;
  std::string reason_;
  ReorderBuffer buffer_;
  std::vector<Value> values_;
  uint64_t seq_ = 0;
  int64_t released_below_ = std::numeric_limits<int64_t>::min();
};

// Feeds a file of JSON lines, in file order.
// CPU seconds (user + system, every thread) the process has used.
double ProcessCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// `events_cpu_start`: set to ProcessCpuSeconds() once the tables are built, before the first event.
Status FeedJsonLines(const std::string& path, PointInTimeJoin& join, ProgressLine& progress,
                     const HistoricalStats& stats, double* events_cpu_start) {
  LineReader reader;
  FRESHET_RETURN_IF_ERROR(reader.Open(path));
  Line line;
  const TableSet* tables = join.TablesPrefetchedByCaller();
  std::optional<TableSet::PrefetchBatch> batch;
  if (tables != nullptr) batch.emplace(*tables);
  join.AddTablesUpTo(0);  // Every version of a --table file is known up front: seq 0, before the first event.
  *events_cpu_start = ProcessCpuSeconds();
  while (reader.Next(&line)) {
    if (tables != nullptr && reader.lines_ahead() < kTablePrefetchAhead) {
      // The coming lines' slots, kTablePrefetchAhead to twice that many lines ahead (table/table_set.h).
      reader.LookAhead(2 * kTablePrefetchAhead, [&batch](std::string_view coming) { batch->Add(coming); });
      batch->Issue();
    }
    join.Feed(line.text, line.capacity, line.number, line.too_long);
    if ((stats.events_read & 0xFFFF) == 0) progress.Update(stats.events_read, reader.bytes_consumed(), reader.file_size());
  }
  return reader.status();
}

// Feeds the events table's raw lines in acceptance order, parsed in place (ReplayEventsTable pads them).
// Dead letters name an event by its seq.
Status FeedEventsTable(const EventInput& input, PointInTimeJoin& join, ProgressLine& progress,
                       const HistoricalStats& stats) {
  const std::string& table_dir = input.path;
  FRESHET_ASSIGN_OR_RETURN(std::vector<int64_t> partitions, EventsTablePartitions(table_dir));
  join.ExpectPartitions(partitions);
  const Spec& spec = join.spec();
  EventLookups lookups;  // The answers the stream recorded with each event, used instead of the store.
  if (!spec.lookups.empty()) join.SetLookups(&lookups);
  return ReplayEventsTable(table_dir, [&](const StoredEvent& e) -> Status {
    if (e.seq >= input.seq_below) return Status::Ok();
    if (!spec.lookups.empty()) FRESHET_RETURN_IF_ERROR(DecodeRecordedLookups(spec, e.lookups, &lookups));
    join.AddTablesUpTo(e.seq);
    join.Feed(e.raw, e.raw_capacity, static_cast<uint64_t>(e.seq), e.raw.size() > kMaxLineBytes,
              e.has_place ? std::optional<int64_t>(e.partition) : std::nullopt);
    if ((stats.events_read & 0xFFFF) == 0) progress.Update(stats.events_read);
    return Status::Ok();
  });
}

}  // namespace

std::string EventInput::Describe() const {
  return (kind == Kind::kJsonLines ? "events file '" : "events table '") + path + "'";
}

Status ComputePointInTime(const Spec& spec, const EventInput& input, const std::vector<EntityTime>& rows,
                          const PointInTimeOptions& options, const RowAnswerFn& answer, HistoricalStats* stats) {
  const auto started = std::chrono::steady_clock::now();
  const double cpu_start = ProcessCpuSeconds();
  *stats = HistoricalStats();
  DeadLetterWriter dead_letters;
  FRESHET_RETURN_IF_ERROR(dead_letters.Open(options.dead_letters_path, input.path));
  if (!spec.lookups.empty() && input.kind == EventInput::Kind::kJsonLines) {
    return Status::Invalid("the spec has `lookups`, whose answers only the offline events table records (column "
                           "lookups); `freshet historical` does not call the store, so it reads events from the "
                           "offline store (leave out --events) to use the values the stream used");
  }
  PointInTimeJoin join(spec, rows, answer, &dead_letters, stats, &options.observer);
  if (!spec.tables.empty()) {
    Result<TableReplay> replay =
        input.kind == EventInput::Kind::kJsonLines
            ? TableReplay::FromFiles(spec, input.table_files)
            : TableReplay::FromStore(spec, std::filesystem::path(input.path).parent_path().string());
    FRESHET_RETURN_IF_ERROR(replay.status());
    join.SetTableReplay(std::move(*replay));
  }
  ProgressLine progress("historical", options.progress);
  double events_cpu_start = ProcessCpuSeconds();
  Status fed = input.kind == EventInput::Kind::kJsonLines
                   ? FeedJsonLines(input.path, join, progress, *stats, &events_cpu_start)
                   : FeedEventsTable(input, join, progress, *stats);
  progress.Done();
  FRESHET_RETURN_IF_ERROR(fed);
  join.Finish();
  stats->events_cpu_seconds = ProcessCpuSeconds() - events_cpu_start;
  if (!spec.tables.empty()) stats->tables_cpu_seconds = events_cpu_start - cpu_start;
  FRESHET_RETURN_IF_ERROR(dead_letters.Close());
  stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return Status::Ok();
}

Result<FeatureValues> ComputeFeatureValues(const Spec& spec, const EventInput& input,
                                           const std::vector<EntityTime>& rows, const PointInTimeOptions& options) {
  FeatureValues out;
  out.rows.resize(rows.size());
  RowAnswerFn keep = [&](size_t row, const std::vector<Value>& values) {
    std::vector<Value>& kept = out.rows[row];
    kept = values;
    for (Value& v : kept) {
      if (v.type == ValueType::kString) v.s = out.strings.emplace_back(v.s);
    }
  };
  FRESHET_RETURN_IF_ERROR(ComputePointInTime(spec, input, rows, options, keep, &out.stats));
  return out;
}

std::string SkippedFieldsSummary(const Spec& spec, const HistoricalStats& stats) {
  uint64_t total = 0;
  std::string features;
  for (size_t k = 0; k < stats.skipped_fields.size() && k < spec.features.size(); ++k) {
    const SkipCounts& skipped = stats.skipped_fields[k];
    if (skipped.total() == 0) continue;
    total += skipped.total();
    std::string reasons;
    for (SkipReason reason : kSkipReasons) {
      if (skipped[reason] == 0) continue;
      reasons += (reasons.empty() ? "" : ", ") + std::to_string(skipped[reason]) + " " + SkipReasonName(reason);
    }
    features += (features.empty() ? "" : "; ") + spec.features[k].name + ": " + reasons;
  }
  if (total == 0) return "";
  return std::to_string(total) + (total == 1 ? " skipped field (" : " skipped fields (") + features + ")";
}

Status RunHistorical(const Spec& spec, const HistoricalOptions& options, HistoricalStats* stats) {
  const auto started = std::chrono::steady_clock::now();
  FRESHET_ASSIGN_OR_RETURN(EntityTable entities, EntityTable::Read(options.entities_path, spec));
  FRESHET_ASSIGN_OR_RETURN(std::unique_ptr<HistoricalWriter> writer,
                           HistoricalWriter::Open(options.output_path, spec, entities));
  PointInTimeOptions compute_options;
  compute_options.dead_letters_path = options.dead_letters_path;
  compute_options.progress = options.progress;
  RowAnswerFn put = [&](size_t row, const std::vector<Value>& values) { writer->Put(row, values); };
  FRESHET_RETURN_IF_ERROR(ComputePointInTime(spec, options.events, entities.keys(), compute_options, put, stats));
  FRESHET_RETURN_IF_ERROR(writer->Finish());
  stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return Status::Ok();
}

}  // namespace freshet

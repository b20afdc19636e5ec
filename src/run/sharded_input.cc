#include "run/sharded_input.h"

#include <algorithm>
#include <cstddef>

#include "common/status.h"
#include "run/event_path.h"
#include "table/table_set.h"

namespace freshet {

struct ShardedInput::Parsed {
  bool ok = false;
  uint32_t shard = 0;
  std::string reason;  // When not ok.
  // When ok: the parsed event, its strings copied into `text` (the parser's own do not outlive its next parse).
  ParsedEvent event;
  std::string text;
  // After the judge, for accepted records: the seq, and M as of the event.
  uint64_t seq = 0;
  int64_t clock_ms = 0;
};

namespace {

// *to = from, with every string (the entity's, the slots') copied into *text.
void CopyEvent(const ParsedEvent& from, ParsedEvent* to, std::string* text) {
  size_t bytes = from.entity.size();
  for (const Value& v : from.slots) bytes += v.s.size();
  text->clear();
  text->reserve(bytes);  // No reallocation below: the views stay valid.
  auto keep = [&](std::string_view s) {
    const size_t at = text->size();
    text->append(s);
    return std::string_view(text->data() + at, s.size());
  };
  to->time_ms = from.time_ms;
  to->entity = keep(from.entity);
  to->slots.assign(from.slots.begin(), from.slots.end());
  for (Value& v : to->slots) {
    if (!v.s.empty()) v.s = keep(v.s);
  }
}

}  // namespace

struct ShardedInput::Shard {
  explicit Shard(const Spec& spec) : parser(spec.fields) {}
  EventParser parser;
  std::optional<TableSet::PrefetchBatch> prefetch;  // With joined tables.
  ParsedEvent event;
  PendingEvent pending;
  std::vector<uint32_t> work;  // Indices of the chunk's accepted records of this shard, in input order.
  // Offline rows, in seq order: the event's row needs the entity's name and the raw text (the record stays
  // valid during the chunk); the features row the values as of the event, strings copied (they point into
  // the engine, which the next event changes).
  struct Row {
    uint64_t seq;
    int64_t time_ms;
    uint32_t entity;
    uint32_t record;
    size_t values_begin, values_count;
  };
  std::vector<Row> rows;
  std::vector<Value> values, row_values;
  std::deque<std::string> strings;
  Output out;
};

ShardedInput::ShardedInput(const Spec& spec, PipelineLanes& lanes, PipelineLanes::RunPerLane run)
    : spec_(spec), lanes_(lanes), run_(std::move(run)) {
  FRESHET_CHECK(lanes_.sharded());
  for (size_t k = 0; k < lanes_.size(); ++k) shards_.push_back(std::make_unique<Shard>(spec));
}

ShardedInput::~ShardedInput() = default;

void ShardedInput::SetTables(const TableSet* tables) {
  tables_ = tables;
  for (auto& shard : shards_) {
    shard->parser.SetTables(tables, /*prefetched_by_caller=*/true);
    if (tables != nullptr) shard->prefetch.emplace(*tables);
  }
}

void ShardedInput::Parse(std::span<const SourceRecord> batch) {
  batch_ = batch;
  // Never shrunk: a poll may return fewer records, and each Parsed keeps its buffers for the next batch.
  if (parsed_.size() < batch.size()) parsed_.resize(batch.size());
  next_block_.store(0, std::memory_order_relaxed);  // The fork-join orders it before every thread's first take.
  run_([&](size_t shard) { ParseBlocks(shard); });
}

void ShardedInput::Process(size_t begin, size_t end, int64_t wall_ms, bool track_changed,
                           const DeadLetter& dead_letter, Output* out) {
  FRESHET_CHECK(begin <= end && end <= batch_.size());
  for (auto& shard : shards_) {
    shard->work.clear();
    shard->rows.clear();
    shard->row_values.clear();
    shard->strings.clear();
    shard->out = Output{};
  }
  Judge(begin, end, dead_letter, out);
  run_([&](size_t shard) { Apply(shard, track_changed); });
  for (auto& shard : shards_) {
    out->accepted += shard->out.accepted;
    out->arrivals.insert(out->arrivals.end(), shard->out.arrivals.begin(), shard->out.arrivals.end());
    out->changed.insert(out->changed.end(), shard->out.changed.begin(), shard->out.changed.end());
  }
  if (offline_ != nullptr) AddOfflineRows(wall_ms);
  // Every shard at the input's M, also those that got no event: the low watermark is the input's.
  const int64_t clock_ms = lanes_.judge()->engine.max_time_ms();
  for (size_t k = 0; k < lanes_.size(); ++k) lanes_.at(k).engine.FollowClock(clock_ms);
}

void ShardedInput::ParseBlocks(size_t shard) {
  // Each thread takes the next unparsed block until none is left: a thread that starts late or is slowed parses
  // fewer blocks instead of making the others wait at the join.
  for (;;) {
    const size_t begin = next_block_.fetch_add(1, std::memory_order_relaxed) * kParseBlock;
    if (begin >= batch_.size()) return;
    ParseBlock(shard, begin, std::min(batch_.size(), begin + kParseBlock));
  }
}

void ShardedInput::ParseBlock(size_t shard, size_t begin, size_t end) {
  Shard& s = *shards_[shard];
  const std::span<const SourceRecord> records = batch_;
  for (size_t k = begin; k < end; ++k) {
    if (tables_ != nullptr) {
      PrefetchAhead(begin, k, end, [&](size_t j) { s.prefetch->Add(records[j].text); });
      s.prefetch->Issue();
    }
    Parsed& p = parsed_[k];
    const SourceRecord& record = records[k];
    p.ok = !record.too_long && s.parser.Parse(record.text, record.capacity, &s.event, &p.reason);
    if (record.too_long) p.reason = LineTooLongReason();
    if (!p.ok) continue;
    CopyEvent(s.event, &p.event, &p.text);
    p.shard = lanes_.ShardOf(p.event.entity);
  }
}

void ShardedInput::Judge(size_t begin, size_t end, const DeadLetter& dead_letter, Output* out) {
  PipelineLanes::Lane& judge = *lanes_.judge();
  Deduplicator* dedup = judge.dedup ? &*judge.dedup : nullptr;
  const int id_slot = spec_.dedup ? spec_.dedup->field_slot : -1;
  first_seq_ = judge.counters.seq;
  for (size_t k = begin; k < end; ++k) {
    Parsed& p = parsed_[k];
    ++judge.counters.lines_read;
    if (!p.ok) {
      ++judge.counters.rejected;
      ++out->rejected;
      dead_letter(batch_[k], p.reason);
      continue;
    }
    const Value* id = id_slot >= 0 ? &p.event.slots[static_cast<size_t>(id_slot)] : nullptr;
    switch (EventPath::Judge(judge.engine, dedup, judge.counters, p.event.entity, id, p.event.time_ms)) {
      case EventPath::Outcome::kRejected:
      case EventPath::Outcome::kNotForSet: break;  // Not outcomes of the judge.
      case EventPath::Outcome::kLate:
        ++out->late;
        dead_letter(batch_[k], "late");
        continue;
      case EventPath::Outcome::kDuplicate:
        ++out->duplicates;
        dead_letter(batch_[k], "duplicate");
        continue;
      case EventPath::Outcome::kAccepted:
        p.seq = judge.counters.seq++;
        p.clock_ms = judge.engine.max_time_ms();
        shards_[p.shard]->work.push_back(static_cast<uint32_t>(k));
        continue;
    }
  }
}

void ShardedInput::Apply(size_t shard, bool track_changed) {
  Shard& s = *shards_[shard];
  PipelineLanes::Lane& lane = lanes_.at(shard);
  FeatureEngine& engine = lane.engine;
  const bool rows = offline_ != nullptr;
  const bool features = rows && offline_->writes_features();
  for (uint32_t k : s.work) {
    const SourceRecord& record = batch_[k];
    const Parsed& p = parsed_[k];
    const int64_t time_ms = p.event.time_ms;
    engine.FollowClock(p.clock_ms);
    EventPath::ApplyAdmitted(engine, lane.counters, p.event, p.seq, &s.pending);
    if (rows) {
      s.rows.push_back(Shard::Row{p.seq, time_ms, s.pending.entity, k, s.row_values.size(), 0});
      if (features) {
        engine.QueryIndex(s.pending.entity, time_ms, &s.values);
        s.rows.back().values_count = s.values.size();
        for (Value v : s.values) {
          if (v.type == ValueType::kString) v.s = s.strings.emplace_back(v.s);
          s.row_values.push_back(v);
        }
      }
    }
    s.out.arrivals.push_back(record.arrival_ns);
    if (track_changed) s.out.changed.emplace_back(uint64_t{shard} << 32 | s.pending.entity, record.arrival_ns);
    ++s.out.accepted;
  }
}

void ShardedInput::AddOfflineRows(int64_t wall_ms) {
  // The chunk's accepted events have the seq numbers first_seq_, first_seq_ + 1, ...: place each row by its seq.
  std::vector<std::pair<uint32_t, uint32_t>> by_seq;  // (shard, row)
  for (uint32_t k = 0; k < shards_.size(); ++k) {
    const Shard& s = *shards_[k];
    for (uint32_t r = 0; r < s.rows.size(); ++r) {
      const size_t at = static_cast<size_t>(s.rows[r].seq - first_seq_);
      if (at >= by_seq.size()) by_seq.resize(at + 1);
      by_seq[at] = {k, r};
    }
  }
  std::vector<Value> values;
  for (const auto& [k, r] : by_seq) {
    const Shard& s = *shards_[k];
    const Shard::Row& row = s.rows[r];
    const std::string& entity = lanes_.at(k).engine.entity_name(row.entity);
    const int64_t seq = static_cast<int64_t>(row.seq);
    offline_->AddEvent(seq, row.time_ms, entity, wall_ms, batch_[row.record].text);
    if (!offline_->writes_features()) continue;
    values.assign(s.row_values.begin() + static_cast<ptrdiff_t>(row.values_begin),
                  s.row_values.begin() + static_cast<ptrdiff_t>(row.values_begin + row.values_count));
    offline_->AddFeatures(seq, entity, row.time_ms, wall_ms, values);
  }
}

}  // namespace freshet

#include "engine/feature_engine.h"

#include <cinttypes>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <new>
#include <span>
#include <utility>
#include <type_traits>

#include "aggregate/aggregations.h"
#include "aggregate/list_aggregations.h"
#include "window/windows.h"

namespace freshet {
namespace {

// A window's state plus, when the engine keeps recent events (`buffered`), the events at or after the low
// watermark, each with its window's Mark (what it changed, before it; see window/windows.h), so that every
// window sees its events in (time, input order) order, as a point-in-time replay would, and queries as of
// any time at or after the low watermark are exact:
//
//   full         every applied event, applied in (time, seq) order: the answer as of the newest or later
//   recent log   one per feature, in arrival order: every recent event of every entity, each linked to the
//                entity's previous one in (time, seq) order. Appending touches only the log's hot tail, and
//                the log drops its front once the low watermark passes it, whichever entities it holds: the
//                buffer is bounded by the lateness horizon in event time, with no per-entity sweep.
//
// An in-order event (the common case) takes a mark, is appended and is applied to `full`: one Add and a
// copy of one partial aggregate. An out-of-order event rewinds `full` to before the events it overtakes and
// re-applies them after it, so its cost is the number of events it overtakes; unless its Add commutes (see
// MayCommute in aggregations.h) and it joins the partial aggregate they are in (Window::InsertEarlier): then it
// is added as it comes and only their marks change. A query as of t before the
// entity's newest event reads the mark of the first event after t. Windows that answer exactly for any t by
// themselves (kAsOfExact: continuous sliding windows) keep no recent events.
template <typename Agg, template <typename> class Window>
class WindowedOperator final : public FeatureOperator {
 public:
  using Input = typename Agg::Input;
  using WindowState = typename Window<Agg>::State;
  static constexpr bool kKeepsRecent = !Window<Agg>::kAsOfExact;
  struct NoMarks {
    struct Mark {};
  };
  using Mark = typename std::conditional_t<kKeepsRecent, Window<Agg>, NoMarks>::Mark;
  static constexpr uint64_t kNone = ~uint64_t{0};
  struct RecentEvent {
    int64_t time = 0;
    uint64_t seq = 0;
    uint64_t prev = kNone;  // The entity's previous recent event in (time, seq) order (a log position).
    Input input{};
    Mark before{};
  };
  struct BufferedState {
    WindowState full;
    int64_t newest_time = std::numeric_limits<int64_t>::min();  // Of the newest applied event.
    uint64_t newest = kNone;  // Log position of the newest recent event (gone once the log dropped it).
  };
  using State = std::conditional_t<kKeepsRecent, BufferedState, WindowState>;
  static_assert(sizeof(Input) <= sizeof(InputCell::bytes), "an aggregation input must fit an InputCell");
  static_assert(std::is_trivially_copyable_v<Input>);

  WindowedOperator(Window<Agg> window, const FeatureSpec& feature, bool buffered)
      : window_(std::move(window)), buffered_(buffered) {
    ctx_.precision = feature.precision;
    ctx_.percentile_ppm = feature.percentile_ppm;
    ctx_.k = feature.k;
  }

  bool Extract(const Value& field, InputCell* cell) override {
    Input input;
    if (!Agg::MakeInput(field, ctx_, &input)) return false;
    std::memcpy(cell->bytes, &input, sizeof(Input));
    return true;
  }

  size_t state_bytes() const override { return sizeof(State); }
  size_t state_align() const override { return alignof(State); }
  void Construct(void* state) const override { new (state) State(); }
  void Destroy(void* state) const override { static_cast<State*>(state)->~State(); }

  void Apply(void* state, const InputCell& cell, int64_t time_ms, uint64_t seq, int64_t low_ms) override {
    Input input;
    std::memcpy(&input, cell.bytes, sizeof(Input));
    State& s = *static_cast<State*>(state);
    if constexpr (RendersText<Agg>) ctx_.rendered.Clear();  // The engine changes: earlier answers may go.
    if constexpr (kKeepsRecent) {
      if (!buffered_) {
        window_.Add(s.full, input, time_ms, seq, low_ms, ctx_);
        return;
      }
      log_.DropEvery(low_ms);
      if (time_ms >= s.newest_time) {  // In order (a later seq breaks a tie).
        const uint64_t prev = log_.live(s.newest) ? s.newest : kNone;
        const uint64_t added = log_.Emplace();
        RecentEvent& r = log_.at(added);
        r.time = time_ms;
        r.seq = seq;
        r.prev = prev;
        r.input = input;
        r.before = window_.MarkBefore(s.full, time_ms, input);
        s.newest = added;
        s.newest_time = time_ms;
        window_.Add(s.full, input, time_ms, seq, low_ms, ctx_);
        return;
      }
      // Out of order: the events it overtakes, newest first; every dropped event is before low <= time_ms.
      overtaken_.clear();
      uint64_t at = s.newest;
      while (log_.live(at) && Before(time_ms, seq, log_.at(at))) {
        overtaken_.push_back(at);
        at = log_.at(at).prev;
      }
      std::reverse(overtaken_.begin(), overtaken_.end());
      pointers_.clear();
      for (uint64_t k : overtaken_) pointers_.push_back(&log_.at(k));
      const uint64_t prev = log_.live(at) ? at : kNone;
      // An input whose Add commutes, joining the partial aggregate of the events it overtakes: added as it comes,
      // with their marks updated, instead of the rewind and re-apply below (the cost of a busy key's late event).
      if constexpr (MayCommute<Agg>) {
        Mark mark{};
        if (Agg::Commutes(input) && window_.InsertEarlier(s.full, input, time_ms, seq,
                                                          std::span<RecentEvent* const>(pointers_), &mark, ctx_)) {
          const uint64_t added = log_.Append(RecentEvent{time_ms, seq, prev, input, mark});  // May move the ring.
          log_.at(overtaken_.front()).prev = added;
          return;
        }
      }
      window_.Rewind(s.full, std::span<const RecentEvent* const>(pointers_.data(), pointers_.size()));
      const uint64_t added = log_.Append(RecentEvent{time_ms, seq, prev, input, Mark{}});
      log_.at(overtaken_.front()).prev = added;
      overtaken_.insert(overtaken_.begin(), added);
      for (uint64_t k : overtaken_) {
        RecentEvent& r = log_.at(k);
        r.before = window_.MarkBefore(s.full, r.time, r.input);
        window_.Add(s.full, r.input, r.time, r.seq, low_ms, ctx_);
      }
    } else {
      window_.Add(s, input, time_ms, seq, low_ms, ctx_);
    }
  }

  Value Query(const void* state, int64_t t) const override {
    const State& s = *static_cast<const State*>(state);
    if constexpr (kKeepsRecent) {
      if (t >= s.newest_time || !log_.live(s.newest)) return window_.Query(s.full, t, ctx_);
      // The recent events after t, walking back from the newest.
      thread_local std::vector<const RecentEvent*> after;
      after.clear();
      for (uint64_t at = s.newest; log_.live(at) && log_.at(at).time > t; at = log_.at(at).prev) {
        after.push_back(&log_.at(at));
      }
      std::reverse(after.begin(), after.end());
      return window_.QueryAsOf(s.full, t, std::span<const RecentEvent* const>(after), ctx_);
    } else {
      return window_.Query(s, t, ctx_);
    }
  }

  size_t Settle(int64_t low_ms) override {
    if constexpr (kKeepsRecent) {
      log_.DropBefore(low_ms);
      return log_.size();
    } else {
      return 0;
    }
  }

  void ForgetRecent() override { log_ = RecentLog(); }

  Value EmptyValue() const override { return Agg::Finalize(typename Agg::State{}, ctx_); }

  size_t StateMemoryBytes(const void* state) const override {
    const State& s = *static_cast<const State*>(state);
    if constexpr (kKeepsRecent) {
      return window_.MemoryBytes(s.full);
    } else {
      return window_.MemoryBytes(s);
    }
  }
  size_t MemoryBytes() const override {
    size_t bytes = ctx_.strings.memory_bytes();
    if constexpr (kKeepsRecent) {
      bytes += log_.capacity() * sizeof(RecentEvent);
      log_.ForEach([&](const RecentEvent& r) { bytes += window_.MarkMemoryBytes(r.before); });
    }
    return bytes;
  }

  // The window state; then, for windows that keep recent events, the entity's recent events still in the
  // log, oldest first: their number and each one's time (SignedVarint), input order (Varint), input and mark.
  void SaveState(const void* state, ByteWriter& out) const override {
    const State& s = *static_cast<const State*>(state);
    if constexpr (kKeepsRecent) {
      window_.Serialize(s.full, out, ctx_);
      std::vector<uint64_t> chain;
      for (uint64_t at = s.newest; log_.live(at); at = log_.at(at).prev) chain.push_back(at);
      out.PutVarint(chain.size());
      for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
        const RecentEvent& r = log_.at(*it);
        out.PutSignedVarint(r.time);
        out.PutVarint(r.seq);
        Agg::SerializeInput(r.input, out, ctx_);
        window_.SerializeMark(r.before, out, ctx_);
      }
    } else {
      window_.Serialize(s, out, ctx_);
    }
  }
  bool LoadState(void* state, ByteReader& in, bool with_recent) override {
    State& s = *static_cast<State*>(state);
    if constexpr (kKeepsRecent) {
      BufferedState loaded;
      if (!window_.Deserialize(loaded.full, in, ctx_)) return false;
      uint64_t n = 0;
      if (with_recent && !in.ReadCount(&n, 3)) return false;
      for (uint64_t k = 0; k < n; ++k) {
        RecentEvent r;
        if (!in.ReadSignedVarint(&r.time) || !in.ReadVarint(&r.seq) || !Agg::DeserializeInput(r.input, in, ctx_) ||
            !window_.DeserializeMark(r.before, in, ctx_)) {
          return false;
        }
        if (k > 0 && !Before(loaded.newest_time, log_.at(loaded.newest).seq, r)) return in.Fail();
        r.prev = loaded.newest;
        loaded.newest_time = r.time;
        loaded.newest = log_.Append(std::move(r));
      }
      s = std::move(loaded);
      return true;
    } else {
      (void)with_recent;
      return window_.Deserialize(s, in, ctx_);
    }
  }
  void MoveState(void* to, void* from) const override {
    *static_cast<State*>(to) = std::move(*static_cast<State*>(from));
  }

 private:
  // Whether (time, seq) comes before the recent event r.
  static bool Before(int64_t time, uint64_t seq, const RecentEvent& r) {
    return time != r.time ? time < r.time : seq < r.seq;
  }

  // The recent events of every entity, in arrival order, in a ring addressed by absolute position.
  class RecentLog {
   public:
    bool live(uint64_t at) const { return at != kNone && at >= begin_; }
    RecentEvent& at(uint64_t position) { return ring_[position & (ring_.size() - 1)]; }
    const RecentEvent& at(uint64_t position) const { return ring_[position & (ring_.size() - 1)]; }
    size_t size() const { return static_cast<size_t>(end_ - begin_); }
    size_t capacity() const { return ring_.size(); }

    uint64_t Append(RecentEvent&& r) {
      const uint64_t added = Emplace();
      at(added) = std::move(r);
      return added;
    }
    // A slot at the tail for the caller to fill in every field of (built in place: a whole event built apart and
    // copied in stalls on reading back its just-written parts).
    uint64_t Emplace() {
      if (end_ - begin_ == ring_.size()) Grow();
      // The tail moves by about a cache line every event, onto a line last written a whole ring ago (out of the
      // nearer caches): fetch it ahead.
      __builtin_prefetch(&at(end_ + kAhead), 1);
      return end_++;
    }
    // DropBefore once every kDropEvery appends: the front is a cold line, not worth a look per event. At most
    // that many more events stay in the log than DropBefore would keep.
    void DropEvery(int64_t low_ms) {
      if (end_ - dropped_at_ < kDropEvery) return;
      dropped_at_ = end_;
      DropBefore(low_ms);
    }
    // Drops the front while it is before `low_ms`: nothing can need it (a few stay behind a later front).
    // Called per event: the common case (nothing to drop) is one comparison with the hot front.
    void DropBefore(int64_t low_ms) {
      if (begin_ == end_ || at(begin_).time >= low_ms) return;
      peak_ = std::max<uint64_t>(peak_ * 255 / 256, end_ - begin_);
      while (begin_ < end_ && at(begin_).time < low_ms) {
        // Marks that own memory (a copied aggregate state) free it now; plain ones are just left behind.
        if constexpr (!std::is_trivially_destructible_v<RecentEvent>) at(begin_) = RecentEvent{};
        ++begin_;
      }
      if (begin_ == end_ && ring_.size() > 1024 && (ring_.size() >> 4) > peak_) {
        std::vector<RecentEvent>(1024).swap(ring_);  // Shrink after a burst.
      }
    }
    template <typename F>
    void ForEach(F f) const {
      for (uint64_t k = begin_; k < end_; ++k) f(at(k));
    }

   private:
    void Grow() {
      std::vector<RecentEvent> grown(ring_.empty() ? 1024 : ring_.size() * 2);
      for (uint64_t k = begin_; k < end_; ++k) grown[k & (grown.size() - 1)] = std::move(at(k));
      ring_.swap(grown);
    }
    static constexpr uint64_t kAhead = 8;  // Entries; the ring is at least 1024 long.
    static constexpr uint64_t kDropEvery = 64;
    std::vector<RecentEvent> ring_;  // A power of two long.
    uint64_t begin_ = 0, end_ = 0;
    uint64_t dropped_at_ = 0;  // end_ at the last DropEvery.
    uint64_t peak_ = 0;
  };

  Window<Agg> window_;
  AggContext ctx_;
  bool buffered_;
  RecentLog log_;
  std::vector<uint64_t> overtaken_;            // Apply scratch.
  std::vector<RecentEvent*> pointers_;         // Apply scratch.
};

template <typename Agg>
std::unique_ptr<FeatureOperator> MakeWindowed(const FeatureSpec& f, bool buffered) {
  const WindowSpec& w = f.window;
  switch (w.kind) {
    case WindowKind::kLifetime:
      return std::make_unique<WindowedOperator<Agg, LifetimeWindow>>(LifetimeWindow<Agg>(), f, buffered);
    case WindowKind::kSliding:
    case WindowKind::kTumbling: {
      const int64_t slide = w.kind == WindowKind::kTumbling ? w.size_ms : w.slide_ms;
      if (slide == 0) {
        return std::make_unique<WindowedOperator<Agg, ContinuousWindow>>(ContinuousWindow<Agg>(w.size_ms), f,
                                                                         buffered);
      }
      return std::make_unique<WindowedOperator<Agg, TiledWindow>>(TiledWindow<Agg>(slide, w.size_ms / slide), f,
                                                                  buffered);
    }
    case WindowKind::kSession:
      return std::make_unique<WindowedOperator<Agg, SessionWindow>>(SessionWindow<Agg>(w.gap_ms), f, buffered);
  }
  return nullptr;
}

// Saved-state formats; a reader refuses versions it does not know. Version 2 added the recent events;
// version 1 loads with none. Version 3 counts skipped events per reason; versions 1 and 2 kept one total per
// feature, which a load drops (the counts start again from zero), as no reason can be given to them.
constexpr uint8_t kEngineStateVersion = 3;
constexpr uint8_t kEntityStateVersion = 2;

// Quotes text for SpecStateDescription so that no value can run into the next one.
std::string Quoted(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  out += '"';
  return out;
}

std::string FingerprintText(uint64_t fingerprint) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%016" PRIx64, fingerprint);
  return buffer;
}

// The first line in which two spec descriptions differ, for the message that refuses a state.
std::string FirstDifference(std::string_view saved, std::string_view current) {
  auto next_line = [](std::string_view& text) {
    const size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
    return line;
  };
  while (!saved.empty() || !current.empty()) {
    const std::string_view a = next_line(saved), b = next_line(current);
    if (a == b) continue;
    if (a.empty()) return "this spec has " + std::string(b) + ", which the saved state lacks";
    if (b.empty()) return "the saved state has " + std::string(a) + ", which this spec lacks";
    return "the saved state has " + std::string(a) + " where this spec has " + std::string(b);
  }
  return "the descriptions agree, so the state was written by a different Freshet version";
}

}  // namespace

const char* SkipReasonName(SkipReason reason) {
  switch (reason) {
    case SkipReason::kMissing: return "missing";
    case SkipReason::kNull: return "null";
    case SkipReason::kWrongType: return "wrong_type";
  }
  return "unknown";
}

std::string SpecStateDescription(const Spec& spec) {
  std::string out;
  if (spec.watermark) {
    out += "watermark max_out_of_orderness_ms=" + std::to_string(spec.watermark->max_out_of_orderness_ms) +
           " allowed_lateness_ms=" + std::to_string(spec.watermark->allowed_lateness_ms) + "\n";
  } else {
    out += "watermark none\n";
  }
  // Derived fields change what features see (specs without them keep their fingerprint).
  for (const DerivedFieldSpec& d : spec.derived) out += "derive " + Quoted(d.name) + " expr=" + Quoted(d.canonical) + "\n";
  // Joins too (what a joined field holds depends on the table's key and valid_from); specs without them keep theirs.
  for (const JoinSpec& j : spec.joins) {
    const TableSpec& t = spec.tables[static_cast<size_t>(j.table_index)];
    out += "join " + Quoted(j.table) + " on=" + Quoted(j.on) + " key=" + Quoted(t.key) + " valid_from=" +
           Quoted(t.valid_from) + "\n";
  }
  // Lookups likewise (what a looked-up field holds depends on the store and key); specs without them keep theirs.
  for (const LookupSpec& l : spec.lookups) {
    out += "lookup " + Quoted(l.name) + " type=" + Quoted(l.type) + " key=" + Quoted(l.key_template()) + "\n";
  }
  for (const FeatureSpec& f : spec.features) {
    const WindowSpec& w = f.window;
    out += "feature " + Quoted(f.name) + " aggregation=" + AggKindName(f.agg) + " field=" + Quoted(f.field) +
           " where=" + Quoted(f.where ? f.where->ToString() : f.where_text) + " window=" + WindowKindName(w.kind) +
           " size_ms=" + std::to_string(w.size_ms) + " slide_ms=" + std::to_string(w.slide_ms) +
           " gap_ms=" + std::to_string(w.gap_ms) + " precision=" + std::to_string(f.precision);
    // Only the keys of the newer aggregations' own options, so that older specs keep their fingerprints.
    if (f.agg == AggKind::kApproxPercentile) out += " percentile_ppm=" + std::to_string(f.percentile_ppm);
    if (AggGivesJsonList(f.agg)) out += " k=" + std::to_string(f.k);
    out += "\n";
  }
  // Expiry changes what the state holds (specs without a ttl keep their fingerprint).
  if (spec.ttl_ms) out += "ttl_ms=" + std::to_string(*spec.ttl_ms) + "\n";
  // What the schema declares changes which events count (and how a number in a string reads); a spec without one
  // describes as it did before schemas.
  if (spec.has_schema) {
    for (size_t slot = 0; slot < spec.fields.size(); ++slot) {
      const FieldSchema& schema = spec.fields.schema(slot);
      out += "field " + Quoted(spec.fields.paths()[slot]) + " type=" + FieldTypeName(schema.type) +
             " from_string=" + (schema.from_string ? "true" : "false") + "\n";
    }
  }
  return out;
}

uint64_t SpecFingerprint(const Spec& spec) {
  uint64_t hash = 0xCBF29CE484222325ULL;  // FNV-1a, 64 bits.
  for (char c : SpecStateDescription(spec)) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 0x100000001B3ULL;
  }
  return hash;
}

std::unique_ptr<FeatureOperator> MakeFeatureOperator(const FeatureSpec& feature, bool buffered) {
  switch (feature.agg) {
    case AggKind::kCount: return MakeWindowed<CountAgg>(feature, buffered);
    case AggKind::kSum: return MakeWindowed<SumAgg>(feature, buffered);
    case AggKind::kMean: return MakeWindowed<MeanAgg>(feature, buffered);
    case AggKind::kMin: return MakeWindowed<MinAgg>(feature, buffered);
    case AggKind::kMax: return MakeWindowed<MaxAgg>(feature, buffered);
    case AggKind::kStddev: return MakeWindowed<StddevAgg>(feature, buffered);
    case AggKind::kLast: return MakeWindowed<LastAgg>(feature, buffered);
    case AggKind::kCountDistinct: return MakeWindowed<CountDistinctAgg>(feature, buffered);
    case AggKind::kApproxCountDistinct: return MakeWindowed<ApproxCountDistinctAgg>(feature, buffered);
    case AggKind::kFirst: return MakeWindowed<FirstAgg>(feature, buffered);
    case AggKind::kApproxPercentile: return MakeWindowed<ApproxPercentileAgg>(feature, buffered);
    case AggKind::kTopK: return MakeWindowed<TopKAgg>(feature, buffered);
    case AggKind::kLastK: return MakeWindowed<LastKAgg>(feature, buffered);
  }
  return nullptr;
}

FeatureEngine::FeatureEngine(const Spec& spec, Options options) : spec_(spec) {
  keeps_recent_ = options.keep_recent && spec.watermark.has_value();
  for (const FeatureSpec& f : spec.features) {
    int group = -1;
    if (f.where) {
      for (size_t g = 0; g < where_exprs_.size() && group < 0; ++g) {
        if (where_exprs_[g]->ToString() == f.where->ToString()) group = static_cast<int>(g);
      }
      if (group < 0) {
        group = static_cast<int>(where_exprs_.size());
        where_exprs_.push_back(&*f.where);
      }
    }
    where_group_.push_back(group);
    field_types_.push_back(f.field_slot >= 0 ? spec.fields.schema(f.field_slot).type : FieldType::kAny);
    operators_.push_back(MakeFeatureOperator(f, keeps_recent_));
    const size_t align = operators_.back()->state_align();
    row_bytes_ = (row_bytes_ + align - 1) / align * align;
    offsets_.push_back(row_bytes_);
    row_bytes_ += operators_.back()->state_bytes();
  }
  row_bytes_ = (row_bytes_ + alignof(std::max_align_t) - 1) / alignof(std::max_align_t) * alignof(std::max_align_t);
  if (row_bytes_ == 0) row_bytes_ = alignof(std::max_align_t);
  counters_.skipped.assign(spec.features.size(), SkipCounts());
  if (spec.watermark) {
    has_watermark_ = true;
    delay_ms_ = spec.watermark->max_out_of_orderness_ms + spec.watermark->allowed_lateness_ms;
  }
  fingerprint_ = SpecFingerprint(spec);
  ttl_ms_ = spec.ttl_ms;
}

bool FeatureEngine::Admit(int64_t time_ms) {
  if (IsLate(time_ms)) {
    ++counters_.late;
    return false;
  }
  AdmitJudged(time_ms);
  return true;
}

void FeatureEngine::AdmitJudged(int64_t time_ms) {
  ++counters_.admitted;
  FollowClock(time_ms);
}

void FeatureEngine::FollowClock(int64_t max_time_ms) {
  if (max_time_ms > max_time_ms_) {
    max_time_ms_ = max_time_ms;
    if (has_watermark_) low_ms_ = max_time_ms_ - delay_ms_;
  }
}

FeatureEngine::~FeatureEngine() {
  for (uint32_t e = 0; e < entity_names_.size(); ++e) {
    for (size_t k = 0; k < operators_.size(); ++k) operators_[k]->Destroy(Row(e) + offsets_[k]);
  }
}

uint32_t FeatureEngine::AppendRow(std::string_view entity) {
  const uint32_t index = static_cast<uint32_t>(entity_names_.size());
  if ((index >> kRowChunkShift) >= row_chunks_.size()) {
    row_chunks_.push_back(std::make_unique_for_overwrite<unsigned char[]>(row_bytes_ * kRowsPerChunk));
  }
  unsigned char* row = Row(index);
  for (size_t k = 0; k < operators_.size(); ++k) operators_[k]->Construct(row + offsets_[k]);
  entity_names_.emplace_back(entity);
  return index;
}

uint32_t FeatureEngine::AddFreeIndex() {
  const uint32_t index = AppendRow("");
  ResetLife(index);
  lives_[index].free = true;
  return index;
}

uint32_t FeatureEngine::FindOrAddEntity(std::string_view entity) {
  const uint32_t next = free_indices_.empty() ? static_cast<uint32_t>(entity_names_.size()) : free_indices_.back();
  auto [it, inserted] = entities_.try_emplace(entity, next);
  if (inserted) {
    const uint32_t index = it->second;
    if (index < entity_names_.size()) {  // A free index: its row holds fresh states already (ClearRow).
      free_indices_.pop_back();
      entity_names_[index] = std::string(entity);
    } else {
      AppendRow(entity);
    }
    if (ttl_ms_) ResetLife(index);
  }
  return it->second;
}

void FeatureEngine::ResetLife(uint32_t index) {
  if (index >= lives_.size()) lives_.resize(index + 1);
  lives_[index] = Life();
}

void FeatureEngine::ClearRow(uint32_t index) {
  unsigned char* row = Row(index);
  for (size_t k = 0; k < operators_.size(); ++k) {
    operators_[k]->Destroy(row + offsets_[k]);
    operators_[k]->Construct(row + offsets_[k]);
  }
}

size_t FeatureEngine::ExpireIdle(std::vector<uint32_t>* dropped_indices) {
  if (!ttl_ms_) return 0;
  size_t dropped = 0;
  for (uint32_t e = 0; e < entity_names_.size(); ++e) {
    if (!entity_live(e) || !IdleTooLong(lives_[e].seen_newest_ms, low_ms_)) continue;
    ClearRow(e);
    entities_.erase(entity_names_[e]);
    std::string().swap(entity_names_[e]);  // Returns a long name's memory too.
    ResetLife(e);
    lives_[e].free = true;
    free_indices_.push_back(e);
    if (dropped_indices != nullptr) dropped_indices->push_back(e);
    ++dropped;
  }
  counters_.expired += dropped;
  return dropped;
}

std::optional<uint32_t> FeatureEngine::FindEntity(std::string_view entity) const {
  auto it = entities_.find(entity);
  if (it == entities_.end()) return std::nullopt;
  return it->second;
}

void FeatureEngine::Extract(const ParsedEvent& event, uint64_t seq, PendingEvent* out) {
  out->time_ms = event.time_ms;
  out->seq = seq;
  out->entity = FindOrAddEntity(event.entity);
  if (ttl_ms_) {
    // The expiry decision, in input order with the L of this event's admission (see State expiry).
    Life& life = lives_[out->entity];
    if (IdleTooLong(life.seen_newest_ms, expiry_low_ms_.value_or(low_ms_))) {
      ++life.seen;
      life.seen_newest_ms = kNoTime;
      ++counters_.expired;
    }
    life.seen_newest_ms = std::max(life.seen_newest_ms, event.time_ms);
    out->life = life.seen;
  }
  out->cells.resize(operators_.size());
  where_results_.resize(where_exprs_.size());
  for (size_t g = 0; g < where_exprs_.size(); ++g) where_results_[g] = where_exprs_[g]->Eval(event.slots);
  for (size_t k = 0; k < operators_.size(); ++k) {
    const FeatureSpec& f = spec_.features[k];
    InputCell& cell = out->cells[k];
    cell.present = false;
    if (where_group_[k] >= 0 && !where_results_[where_group_[k]]) continue;
    if (!f.tuple_slots.empty()) {
      if (ExtractTuple(event, k, &cell)) cell.present = true;
      continue;
    }
    const Value field = f.field_slot >= 0 ? event.slots[f.field_slot] : Value::Null();
    if (f.field_slot >= 0) {
      if (field.is_missing() || field.is_null()) {
        ++counters_.skipped[k][field.is_missing() ? SkipReason::kMissing : SkipReason::kNull];
        continue;
      }
      if (!ValueFits(field_types_[k], field)) {
        ++counters_.skipped[k][SkipReason::kWrongType];
        continue;
      }
    }
    if (!operators_[k]->Extract(field, &cell)) {
      ++counters_.skipped[k][SkipReason::kWrongType];
      continue;
    }
    cell.present = true;
  }
}

bool FeatureEngine::ExtractTuple(const ParsedEvent& event, size_t k, InputCell* cell) {
  const FeatureSpec& f = spec_.features[k];
  tuple_key_.clear();
  for (int slot : f.tuple_slots) {
    const Value field = event.slots[slot];
    if (field.is_missing() || field.is_null()) {
      ++counters_.skipped[k][field.is_missing() ? SkipReason::kMissing : SkipReason::kNull];
      return false;
    }
    if (!ValueFits(spec_.fields.schema(slot).type, field) || !AppendTupleKey(field, &tuple_key_)) {
      ++counters_.skipped[k][SkipReason::kWrongType];
      return false;
    }
  }
  if (operators_[k]->Extract(Value::String(tuple_key_), cell)) return true;
  ++counters_.skipped[k][SkipReason::kWrongType];
  return false;
}

void FeatureEngine::Apply(const PendingEvent& event, int64_t low_ms) {
  unsigned char* row = Row(event.entity);
  if (ttl_ms_) {
    Life& life = lives_[event.entity];
    if (event.life != life.applied) {  // The first event of a new life: the old one's state goes.
      ClearRow(event.entity);
      life.applied = event.life;
      life.applied_newest_ms = kNoTime;
    }
    if (IdleTooLong(life.applied_newest_ms, event.time_ms)) life.gap_end_ms = event.time_ms;
    life.applied_newest_ms = std::max(life.applied_newest_ms, event.time_ms);
  }
  for (size_t k = 0; k < operators_.size(); ++k) {
    if (event.cells[k].present) {
      operators_[k]->Apply(row + offsets_[k], event.cells[k], event.time_ms, event.seq, low_ms);
    }
  }
}

size_t FeatureEngine::ProcessBatch(const ParsedEvent* events, size_t count, uint64_t* seq) {
  constexpr size_t kLookahead = 8;
  if (batch_.size() < count) batch_.resize(count);
  batch_low_ms_.resize(count);
  size_t admitted = 0, late = 0;
  for (size_t k = 0; k < count; ++k) {
    if (k + kLookahead < count) entities_.prefetch(events[k + kLookahead].entity);
    if (!Admit(events[k].time_ms)) {
      ++late;
      continue;
    }
    PendingEvent& pending = batch_[admitted];
    Extract(events[k], (*seq)++, &pending);
    // A row spans several cache lines (the features' states side by side); Apply below touches most.
    const uintptr_t row = reinterpret_cast<uintptr_t>(Row(pending.entity));
    for (uintptr_t line = row & ~uintptr_t{63}; line < row + row_bytes_; line += 64) {
      __builtin_prefetch(reinterpret_cast<const void*>(line), 1);
    }
    batch_low_ms_[admitted] = low_ms_;
    ++admitted;
  }
  for (size_t k = 0; k < admitted; ++k) Apply(batch_[k], batch_low_ms_[k]);
  return late;
}

void FeatureEngine::QueryIndex(std::optional<uint32_t> entity, int64_t t, std::vector<Value>* out) const {
  out->resize(operators_.size());
  // An entity idle for longer than the ttl at t answers what an expired (unknown) one does.
  const bool held = entity && !(ttl_ms_ && IdleTooLong(lives_[*entity].applied_newest_ms, t));
  for (size_t k = 0; k < operators_.size(); ++k) {
    (*out)[k] = held ? operators_[k]->Query(Row(*entity) + offsets_[k], t) : operators_[k]->EmptyValue();
  }
}

void FeatureEngine::Query(std::string_view entity, int64_t t, std::vector<Value>* out) const {
  QueryIndex(FindEntity(entity), t, out);
}

size_t FeatureEngine::SettleRecent() {
  size_t held = 0;
  for (const auto& op : operators_) held += op->Settle(low_ms_);
  return held;
}

size_t FeatureEngine::MemoryBytes() const {
  size_t bytes = entity_names_.capacity() * sizeof(std::string) + entities_.capacity() * (sizeof(std::string) + 8);
  for (const std::string& name : entity_names_) bytes += name.capacity() > 15 ? name.capacity() + 1 : 0;
  bytes += row_chunks_.size() * row_bytes_ * kRowsPerChunk;
  bytes += lives_.capacity() * sizeof(Life) + free_indices_.capacity() * sizeof(uint32_t);
  for (const auto& op : operators_) bytes += op->MemoryBytes();
  for (uint32_t e = 0; e < entity_names_.size(); ++e) {
    for (size_t k = 0; k < operators_.size(); ++k) bytes += operators_[k]->StateMemoryBytes(Row(e) + offsets_[k]);
  }
  return bytes;
}

}  // namespace freshet

namespace freshet {

void FeatureEngine::Reset() {
  for (uint32_t e = 0; e < entity_names_.size(); ++e) {
    for (size_t k = 0; k < operators_.size(); ++k) operators_[k]->Destroy(Row(e) + offsets_[k]);
  }
  for (const auto& op : operators_) op->ForgetRecent();
  entity_names_.clear();
  entities_.clear();
  row_chunks_.clear();
  lives_.clear();
  free_indices_.clear();
  counters_.expired = 0;
  max_time_ms_ = std::numeric_limits<int64_t>::min();
  low_ms_ = std::numeric_limits<int64_t>::min();
  counters_.admitted = 0;
  counters_.late = 0;
  counters_.skipped.assign(operators_.size(), SkipCounts());
}

void FeatureEngine::SaveState(ByteWriter& out) const {
  out.PutU8(kEngineStateVersion);
  out.PutU64(fingerprint_);
  out.PutString(SpecStateDescription(spec_));
  out.PutI64(max_time_ms_);
  out.PutI64(low_ms_);
  out.PutVarint(counters_.admitted);
  out.PutVarint(counters_.late);
  out.PutVarint(counters_.skipped.size());
  for (const SkipCounts& skipped : counters_.skipped) {
    for (SkipReason reason : kSkipReasons) out.PutVarint(skipped[reason]);
  }
  // With a ttl (which the fingerprint records, so older states never meet this): the expiry counter; per index
  // whether it holds an entity (1) or is free (0, nothing follows), and an entity's newest event after its
  // name; at the end the free indices in the order they are reused, so that a restored engine numbers new
  // entities as the saved one would.
  if (ttl_ms_) out.PutVarint(counters_.expired);
  out.PutVarint(entity_names_.size());
  for (uint32_t e = 0; e < entity_names_.size(); ++e) {
    if (ttl_ms_) {
      out.PutU8(entity_live(e) ? 1 : 0);
      if (!entity_live(e)) continue;
    }
    out.PutString(entity_names_[e]);
    if (ttl_ms_) SaveLife(e, out);
    const unsigned char* row = Row(e);
    for (size_t k = 0; k < operators_.size(); ++k) operators_[k]->SaveState(row + offsets_[k], out);
  }
  if (ttl_ms_) {
    out.PutVarint(free_indices_.size());
    for (uint32_t index : free_indices_) out.PutVarint(index);
  }
}

void FeatureEngine::AddCounters(const EngineCounters& more) {
  counters_.admitted += more.admitted;
  counters_.late += more.late;
  counters_.expired += more.expired;
  for (size_t k = 0; k < more.skipped.size() && k < counters_.skipped.size(); ++k) {
    for (size_t r = 0; r < counters_.skipped[k].by_reason.size(); ++r) {
      counters_.skipped[k].by_reason[r] += more.skipped[k].by_reason[r];
    }
  }
}

void FeatureEngine::SaveLife(uint32_t index, ByteWriter& out) const {
  out.PutSignedVarint(lives_[index].applied_newest_ms);
  out.PutSignedVarint(lives_[index].gap_end_ms);
}

bool FeatureEngine::ReadLife(ByteReader& in, Life* life) {
  *life = Life();
  if (!in.ReadSignedVarint(&life->applied_newest_ms) || !in.ReadSignedVarint(&life->gap_end_ms)) return false;
  life->seen_newest_ms = life->applied_newest_ms;  // Saved between events: everything extracted was applied.
  return true;
}

Status FeatureEngine::LoadState(ByteReader& in) {
  if (!entity_names_.empty() || counters_.admitted != 0 || counters_.late != 0) {
    return Status::Invalid("FeatureEngine::LoadState needs a fresh engine, but this one has already processed "
                           "events; construct a new engine from the spec and load into that");
  }
  auto malformed = [&](const std::string& where) {
    const size_t at = in.failed() ? in.failed_at() : in.offset();
    Reset();
    return Status::Invalid("saved engine state is malformed or truncated at byte " + std::to_string(at) + where +
                           "; the checkpoint is damaged: restore an older one or start without it");
  };
  uint8_t version;
  uint64_t fingerprint;
  std::string_view description;
  if (!in.ReadU8(&version)) return malformed("");
  if (version < 1 || version > kEngineStateVersion) {
    return Status::Invalid("saved engine state has format version " + std::to_string(version) +
                           ", but this build of Freshet reads version " + std::to_string(kEngineStateVersion) +
                           "; restore it with the Freshet version that wrote it, or start without it");
  }
  if (!in.ReadU64(&fingerprint) || !in.ReadString(&description)) return malformed(" (header)");
  if (fingerprint != fingerprint_) {
    return Status::Invalid("saved engine state was written for another spec: spec fingerprint " +
                           FingerprintText(fingerprint) + " does not match this spec's fingerprint " +
                           FingerprintText(fingerprint_) + " (" + FirstDifference(description, SpecStateDescription(spec_)) +
                           "); run with the spec the state was written with, or start without the saved state");
  }
  uint64_t admitted, late, features, entities;
  if (!in.ReadI64(&max_time_ms_) || !in.ReadI64(&low_ms_) || !in.ReadVarint(&admitted) || !in.ReadVarint(&late) ||
      !in.ReadVarint(&features)) {
    return malformed(" (lateness state and counters)");
  }
  if (features != operators_.size()) {
    in.Fail();
    return malformed(" (it counts " + std::to_string(features) + " features, the spec has " +
                     std::to_string(operators_.size()) + ")");
  }
  counters_.admitted = admitted;
  counters_.late = late;
  for (SkipCounts& skipped : counters_.skipped) {
    if (version < 3) {
      uint64_t total;  // Of unknown reasons: dropped (see kEngineStateVersion).
      if (!in.ReadVarint(&total)) return malformed(" (skip counters)");
      continue;
    }
    for (SkipReason reason : kSkipReasons) {
      if (!in.ReadVarint(&skipped[reason])) return malformed(" (skip counters)");
    }
  }
  if (ttl_ms_ && !in.ReadVarint(&counters_.expired)) return malformed(" (expiry counter)");
  if (!in.ReadCount(&entities)) return malformed(" (entity count)");
  std::vector<uint32_t> free_indices;  // Set aside until the end, so that FindOrAddEntity appends every entity.
  for (uint64_t e = 0; e < entities; ++e) {
    uint8_t held = 1;
    if (ttl_ms_ && !in.ReadU8(&held)) return malformed(" (index #" + std::to_string(e) + ")");
    if (held == 0) {
      free_indices.push_back(AddFreeIndex());
      continue;
    }
    std::string_view name;
    if (!in.ReadString(&name)) return malformed(" (name of entity #" + std::to_string(e) + ")");
    const uint32_t index = FindOrAddEntity(name);
    if (index != e) {
      in.Fail();
      return malformed(" (entity '" + std::string(name) + "' appears twice)");
    }
    if (ttl_ms_ && !ReadLife(in, &lives_[index])) return malformed(" (expiry state of entity '" + std::string(name) + "')");
    unsigned char* row = Row(index);
    for (size_t k = 0; k < operators_.size(); ++k) {
      if (!operators_[k]->LoadState(row + offsets_[k], in, version >= 2)) {
        return malformed(" (entity '" + std::string(name) + "', feature '" + spec_.features[k].name + "')");
      }
    }
  }
  if (ttl_ms_) {
    // The free indices in reuse order: the same set AddFreeIndex collected, reordered.
    uint64_t count = 0;
    if (!in.ReadCount(&count) || count != free_indices.size()) return malformed(" (free indices)");
    free_indices_ = std::move(free_indices);
    for (uint32_t& index : free_indices_) {
      uint64_t at = 0;
      if (!in.ReadVarint(&at) || at >= entity_names_.size() || entity_live(static_cast<uint32_t>(at))) {
        return malformed(" (free indices)");
      }
      index = static_cast<uint32_t>(at);
    }
  }
  return Status::Ok();
}

void FeatureEngine::SaveEntity(uint32_t entity, ByteWriter& out) const {
  FRESHET_CHECK(entity < entity_names_.size());
  out.PutU8(kEntityStateVersion);
  out.PutU64(fingerprint_);
  if (ttl_ms_) SaveLife(entity, out);  // For Query's expiry (the fingerprint records the ttl).
  const unsigned char* row = Row(entity);
  for (size_t k = 0; k < operators_.size(); ++k) operators_[k]->SaveState(row + offsets_[k], out);
}

Status FeatureEngine::LoadEntity(std::string_view entity, ByteReader& in) {
  uint8_t version;
  uint64_t fingerprint;
  if (!in.ReadU8(&version) || !in.ReadU64(&fingerprint)) {
    return Status::Invalid("saved state of entity '" + std::string(entity) + "' is truncated at byte " +
                           std::to_string(in.failed_at()) + " (header); it cannot be loaded");
  }
  if (version != kEntityStateVersion && version != 1) {
    return Status::Invalid("saved state of entity '" + std::string(entity) + "' has format version " +
                           std::to_string(version) + ", but this build of Freshet reads version " +
                           std::to_string(kEntityStateVersion));
  }
  if (fingerprint != fingerprint_) {
    return Status::Invalid("saved state of entity '" + std::string(entity) + "' was written for another spec: " +
                           "spec fingerprint " + FingerprintText(fingerprint) + " does not match this spec's " +
                           "fingerprint " + FingerprintText(fingerprint_) +
                           "; clear the store or run with the spec that wrote it");
  }
  Life loaded_life;  // Read now, kept once the feature states load too (ttl only).
  if (ttl_ms_ && !ReadLife(in, &loaded_life)) {
    return Status::Invalid("saved state of entity '" + std::string(entity) + "' is truncated at byte " +
                           std::to_string(in.failed_at()) + " (expiry state); it cannot be loaded");
  }
  // Decode into a scratch row first, so that a malformed state leaves the entity as it was.
  auto scratch = std::make_unique_for_overwrite<unsigned char[]>(row_bytes_);
  for (size_t k = 0; k < operators_.size(); ++k) operators_[k]->Construct(scratch.get() + offsets_[k]);
  size_t failed_feature = operators_.size();
  for (size_t k = 0; k < operators_.size() && failed_feature == operators_.size(); ++k) {
    if (!operators_[k]->LoadState(scratch.get() + offsets_[k], in, version >= 2)) failed_feature = k;
  }
  if (failed_feature == operators_.size()) {
    const uint32_t index = FindOrAddEntity(entity);
    unsigned char* row = Row(index);
    for (size_t k = 0; k < operators_.size(); ++k) operators_[k]->MoveState(row + offsets_[k], scratch.get() + offsets_[k]);
    if (ttl_ms_) lives_[index] = loaded_life;
  }
  for (size_t k = 0; k < operators_.size(); ++k) operators_[k]->Destroy(scratch.get() + offsets_[k]);
  if (failed_feature != operators_.size()) {
    return Status::Invalid("saved state of entity '" + std::string(entity) + "' is malformed or truncated at byte " +
                           std::to_string(in.failed_at()) + " (feature '" + spec_.features[failed_feature].name +
                           "'); it cannot be loaded");
  }
  return Status::Ok();
}

}  // namespace freshet

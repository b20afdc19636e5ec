// FeatureEngine: the keyed, event-time feature operators of one spec, shared by every path that computes
// features (the streaming runtime, point-in-time queries, backfills), so that they agree by construction.
//
// An event goes through three steps:
//   Admit    the lateness rule, in input order: with a watermark, an event is late when its time is
//            below M - max_out_of_orderness - allowed_lateness, M being the largest time admitted before.
//   Extract  per feature: the `where` filter and the aggregated field, turned into a compact owned copy
//            (PendingEvent) that outlives the parser's buffer; the entity is resolved to a dense index.
//   Apply    fold the extracted inputs into each feature's per-entity window state.
// Query answers every feature of one entity as of a time.
//
// Exactness in time. With a watermark, the streaming engine keeps the recent events (those at or after the
// low watermark L = M - max_out_of_orderness - allowed_lateness) with marks of what each changed, and applies
// events to the windows in (time, input order) order, rewinding and re-applying the recent ones when an
// event arrives out of order (see WindowedOperator in feature_engine.cc). So Query(E, t) is the exact value
// over the events applied so far with time <= t, for every t >= min(L, E's newest event): the features row of
// an out-of-order event does not see the later events that arrived before it. For an earlier t the answer may
// include events after t (IsExactAsOf says which). Without a watermark nothing bounds such a buffer, and the
// engine keeps none: Query is exact for t at or after the entity's newest event only. Point-in-time queries
// (historical/) apply events in time order themselves and turn the buffer off (Options::keep_recent).
//
// Saved state (checkpoints, the online store): SaveState/LoadState write and restore everything needed to
// continue exactly (entities, every feature state, the lateness state, counters); SaveEntity/LoadEntity do
// the same for one entity's feature states. Both carry the spec fingerprint and refuse another spec's state.
//
// State expiry (spec `ttl`, which needs a watermark). An entity expires once the low watermark L passes its
// newest event + ttl. Extract decides it, in input order, with L right after the event's admission: an event
// of an entity that has expired starts a new life of it (PendingEvent::life), and Apply clears the entity's
// feature states before it applies the first event of a new life. Since every event is at or after the L of
// its admission, a new life's events all come more than ttl after the old life's, so a caller that applies
// events in time order (point-in-time queries) sees the lives one after the other, as the stream does. Query
// as of t more than ttl after the entity's newest applied event answers the empty-window values. ExpireIdle
// drops expired entities from the state (their index is reused), returning their memory; their next event
// then finds no state at all, which is the same as a new life.
//
// Not thread-safe: one engine per thread or partition.
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <absl/container/flat_hash_map.h>

#include "common/bytes.h"
#include "common/status.h"
#include "common/text_hash.h"
#include "common/value.h"
#include "event/event_parser.h"
#include "spec/spec.h"

namespace freshet {

// One feature's extracted contribution of one event: opaque bytes that the feature's operator wrote.
struct InputCell {
  alignas(8) unsigned char bytes[16];
  bool present = false;  // The event passed `where` and has a usable field for this feature.
};

// An admitted event, reduced to what the features need. Cells are indexed by feature.
struct PendingEvent {
  int64_t time_ms = 0;
  uint64_t seq = 0;       // Input order among admitted events.
  uint32_t entity = 0;    // Dense entity index (FeatureEngine::entity_name).
  uint32_t life = 0;      // With a ttl: which life of the entity (see FeatureEngine, State expiry) it belongs to.
  std::vector<InputCell> cells;
};

// The per-feature operator: an aggregation in a window. It owns no per-entity state: the engine keeps
// every feature's state of one entity side by side in one row (one cache miss per event, not one per
// feature), and hands the operator a pointer to its part of the row.
class FeatureOperator {
 public:
  virtual ~FeatureOperator() = default;
  // Writes the event's input for this feature into *cell; false when the field cannot contribute
  // (missing, null, or of a type this aggregation does not take). `where` is checked by the caller.
  virtual bool Extract(const Value& field, InputCell* cell) = 0;
  // Size and alignment of one entity's state, and its lifetime in a row.
  virtual size_t state_bytes() const = 0;
  virtual size_t state_align() const = 0;
  virtual void Construct(void* state) const = 0;
  virtual void Destroy(void* state) const = 0;
  // Folds one event in. `low_ms`: no event earlier than this will be applied later (INT64_MIN: none known).
  virtual void Apply(void* state, const InputCell& cell, int64_t time_ms, uint64_t seq, int64_t low_ms) = 0;
  // The value as of t: exact for every t at or after the newest applied event, and, in an engine that keeps
  // recent events, for every t at or after the low watermark of the last Apply.
  virtual Value Query(const void* state, int64_t t) const = 0;
  virtual Value EmptyValue() const = 0;
  // Drops the recent events (of every entity) that no query at or after `low_ms` and no later event can
  // need; returns how many it still holds.
  virtual size_t Settle(int64_t low_ms) = 0;
  // Forgets every entity's recent events (FeatureEngine::Reset, after its states are destroyed): a load that
  // failed part way must not leave the events it read in the log.
  virtual void ForgetRecent() = 0;
  // Heap bytes held by one state, and by the operator itself (interned strings).
  virtual size_t StateMemoryBytes(const void* state) const = 0;
  virtual size_t MemoryBytes() const = 0;
  // Appends one state, strings by their text (see the Serialize verbs in aggregate/ and window/), and its
  // recent events.
  virtual void SaveState(const void* state, ByteWriter& out) const = 0;
  // Replaces a constructed state by one SaveState wrote, re-interning its strings; `with_recent` false reads
  // the format before recent events were kept (saved-state version 1). False on malformed input (`in` is
  // then failed); the state is left valid but unspecified.
  virtual bool LoadState(void* state, ByteReader& in, bool with_recent) = 0;
  // Move-assigns the constructed state *from to the constructed state *to.
  virtual void MoveState(void* to, void* from) const = 0;
};

// Makes the operator for one feature. Every aggregation x window pair is registered here. `buffered`: keep
// recent events so that queries as of any time at or after the low watermark are exact (see FeatureEngine).
std::unique_ptr<FeatureOperator> MakeFeatureOperator(const FeatureSpec& feature, bool buffered);

// What a spec's saved state means, as canonical text, one line per item: the watermark, then per feature
// its name, aggregation, field, `where` (canonical form), window and precision. Specs that differ only in
// other ways (name, source, serving options, spacing in `where`) have the same description.
std::string SpecStateDescription(const Spec& spec);

// A 64-bit FNV-1a hash of SpecStateDescription: saved state is loaded only into an engine whose spec has
// the same fingerprint. Stable across runs, builds and machines.
uint64_t SpecFingerprint(const Spec& spec);

// Why a feature skipped an accepted event that passed its `where`: its field was missing, null, or of a type it
// cannot take (not the schema's declared type, or not one the aggregation takes, such as text for sum).
enum class SkipReason : uint8_t { kMissing, kNull, kWrongType };
inline constexpr SkipReason kSkipReasons[] = {SkipReason::kMissing, SkipReason::kNull, SkipReason::kWrongType};

// "missing", "null", "wrong_type": the `reason` label of freshet_events_skipped_total.
const char* SkipReasonName(SkipReason reason);

// One feature's skipped events, by reason.
struct SkipCounts {
  std::array<uint64_t, std::size(kSkipReasons)> by_reason{};

  uint64_t& operator[](SkipReason reason) { return by_reason[static_cast<size_t>(reason)]; }
  uint64_t operator[](SkipReason reason) const { return by_reason[static_cast<size_t>(reason)]; }
  uint64_t total() const { return by_reason[0] + by_reason[1] + by_reason[2]; }
  bool operator==(const SkipCounts&) const = default;
};

struct EngineCounters {
  uint64_t admitted = 0;
  uint64_t late = 0;
  uint64_t expired = 0;  // Entity lives ended by the ttl (freshet_state_entities_expired_total).
  std::vector<SkipCounts> skipped;  // Per feature, in spec order.
};

class FeatureEngine {
 public:
  struct Options {
    // Keep recent events for exact past queries (above); only with a watermark. Callers that apply events
    // in time order themselves (point-in-time joins) turn it off to save the marks.
    bool keep_recent = true;
  };
  explicit FeatureEngine(const Spec& spec) : FeatureEngine(spec, Options()) {}
  FeatureEngine(const Spec& spec, Options options);
  ~FeatureEngine();
  FeatureEngine(const FeatureEngine&) = delete;
  FeatureEngine& operator=(const FeatureEngine&) = delete;

  // The lateness rule; call once per parsed event, in input order. True: admitted (and M updated).
  bool Admit(int64_t time_ms);
  // Admits an event whose lateness the caller judged by a clock of its own (a Kafka partition's M, in
  // `freshet historical`): counts it and moves M, without the late check.
  void AdmitJudged(int64_t time_ms);
  // Raises M (and the low watermark) to at least `max_time_ms` without admitting an event: the engine of one
  // shard of a file or HTTP input follows the whole input's clock, which decides lateness before events are
  // handed to shards (run/sharded_input.h), so that its recent-event buffers fold as one engine's would.
  void FollowClock(int64_t max_time_ms);

  // For a caller that judges lateness by clocks of its own (AdmitJudged: a Kafka partition's M in `freshet
  // historical`): the low watermark that decides expiry (see State expiry) in the following Extracts, instead of
  // the engine's own, so that it matches the partition's lane in `freshet run`.
  void SetExpiryLowMs(int64_t low_ms) { expiry_low_ms_ = low_ms; }

  // Whether Admit would call an event at this time late; changes nothing. For rules checked between the
  // lateness rule and admission (deduplication), which must not move M.
  bool IsLate(int64_t time_ms) const {
    return has_watermark_ && max_time_ms_ != std::numeric_limits<int64_t>::min() && time_ms < max_time_ms_ - delay_ms_;
  }

  // The earliest time a future admitted event can have: M - out_of_orderness - lateness with a
  // watermark, the smallest int64 without one.
  int64_t low_watermark_ms() const { return low_ms_; }
  // M: the largest admitted event time (the smallest int64 before the first).
  int64_t max_time_ms() const { return max_time_ms_; }

  // Whether Query as of t is exact for an entity whose newest applied event is at newest_ms (nullopt: the
  // entity has none): t >= newest_ms, or, when recent events are kept, t >= the low watermark.
  bool IsExactAsOf(std::optional<int64_t> newest_ms, int64_t t) const {
    return !newest_ms || t >= *newest_ms || (keeps_recent_ && t >= low_ms_);
  }
  bool keeps_recent() const { return keeps_recent_; }

  // With a ttl, Query as of t before the entity's newest event (exact by IsExactAsOf through the recent events)
  // must also know whether t falls in a gap of more than ttl between two of its events, which expires it at t.
  // The engine remembers where the last such gap (of events applied in time order) ended; true when t is at or
  // after that, or at or after the newest event, or without a ttl. An entity the engine does not hold may have
  // expired (and been dropped): exact as of the low watermark or later only.
  bool ExpiryExactAsOf(std::optional<uint32_t> entity, int64_t t) const {
    if (!ttl_ms_) return true;
    if (!entity) return t >= low_ms_;
    const Life& life = lives_[*entity];
    return t >= life.applied_newest_ms || t >= life.gap_end_ms;
  }

  // Drops the recent events that the low watermark has passed (Apply does this as it goes; this also after
  // the last event). Returns the recent events still held, over all features.
  size_t SettleRecent();

  // Resolves the entity and extracts every feature's input. `seq` is the event's input order.
  void Extract(const ParsedEvent& event, uint64_t seq, PendingEvent* out);

  // Folds an extracted event into the state. `low_ms`: no event earlier than this will be applied later.
  void Apply(const PendingEvent& event, int64_t low_ms);

  // Admit, Extract and Apply for a batch of parsed events, with the same result as calling them one event
  // at a time in order, but with the entity lookups and state rows of later events prefetched while earlier
  // ones are processed (the lookups are cache misses at millions of entities). `*seq` is the input order of
  // the first event and is advanced by the number admitted. Returns the number of late events.
  size_t ProcessBatch(const ParsedEvent* events, size_t count, uint64_t* seq);

  // Every feature's value for `entity` as of t, in spec order, into *out (resized). Unknown entities
  // get the empty-window values. Strings in the values stay valid until the engine changes.
  void Query(std::string_view entity, int64_t t, std::vector<Value>* out) const;
  void QueryIndex(std::optional<uint32_t> entity, int64_t t, std::vector<Value>* out) const;

  std::optional<uint32_t> FindEntity(std::string_view entity) const;
  uint32_t FindOrAddEntity(std::string_view entity);
  // Entity indices in use or free: indices run from 0 to entity_count() - 1, and with a ttl some of them are
  // free (entity_live false, entity_name empty) until a new entity takes them.
  size_t entity_count() const { return entity_names_.size(); }
  bool entity_live(uint32_t index) const { return lives_.empty() || !lives_[index].free; }
  // Entities held now (entity_count() minus the free indices).
  size_t live_entity_count() const { return entities_.size(); }
  const std::string& entity_name(uint32_t index) const { return entity_names_[index]; }

  // With a ttl: drops every entity whose newest event + ttl the low watermark has passed (see State expiry
  // above), counting them in counters().expired; appends their indices to *dropped (if given) and returns how
  // many it dropped. Call it between batches, never while extracted events wait to be applied (their indices
  // could be reused).
  size_t ExpireIdle(std::vector<uint32_t>* dropped = nullptr);

  const Spec& spec() const { return spec_; }
  const EngineCounters& counters() const { return counters_; }
  // Adds `more` to the counters: a checkpoint's state re-sharded (run/lanes.cc) keeps the sums.
  void AddCounters(const EngineCounters& more);
  size_t MemoryBytes() const;

  // SpecFingerprint(spec()), computed once.
  uint64_t spec_fingerprint() const { return fingerprint_; }

  // Appends the engine's whole state: a format version, the spec fingerprint and description, the lateness
  // state (M and the low watermark), the counters, then every entity in index order (its name and every
  // feature's state). Strings are written as text, so the state loads into another process. The input
  // order `seq` is the caller's: a caller that numbers admitted events from 0 resumes at counters().admitted.
  void SaveState(ByteWriter& out) const;

  // Restores what SaveState wrote into this engine, which must be fresh (constructed, nothing processed):
  // afterwards it answers every query and processes every further event exactly as the saved engine
  // would, with the same entity indices (with a ttl: expired entities are not saved, and the others load with
  // dense indices in the same order). Fails with a message naming both fingerprints (and the first
  // difference between the specs) when the state is from another spec, or naming the byte offset, entity
  // and feature when it is malformed; on failure the engine is fresh again.
  Status LoadState(ByteReader& in);

  // Appends every feature's state of one entity (index < entity_count()): a format version, the spec
  // fingerprint, then each feature's state in spec order. For stores that keep one entity per key.
  void SaveEntity(uint32_t entity, ByteWriter& out) const;

  // Replaces the feature states of `entity` (added if new) by what SaveEntity wrote, from an engine of the
  // same spec; the lateness state and counters are not touched. On failure (another spec's fingerprint,
  // malformed input) nothing changes except that strings may have been interned.
  Status LoadEntity(std::string_view entity, ByteReader& in);

 private:
  static constexpr int64_t kNoTime = std::numeric_limits<int64_t>::min();
  // One entity's expiry bookkeeping (see State expiry); only with a ttl.
  struct Life {
    int64_t seen_newest_ms = kNoTime;     // Newest event extracted in this life.
    int64_t applied_newest_ms = kNoTime;  // Newest event applied in the life the state holds.
    int64_t gap_end_ms = kNoTime;         // The newest event applied more than ttl after the one before it.
    uint32_t seen = 0;     // The life of the newest extracted event.
    uint32_t applied = 0;  // The life the feature states hold.
    bool free = false;     // The index holds no entity (expired); its row holds fresh states.
  };

  // Extract for a feature over a list of fields: the encoded combination (AppendTupleKey) into *cell; false, with
  // the skip counted, when a field is missing, null or of another type.
  bool ExtractTuple(const ParsedEvent& event, size_t k, InputCell* cell);
  std::string tuple_key_;  // ExtractTuple's scratch.
  // Destroys every entity and resets the lateness state and counters: the engine is fresh again.
  void Reset();

  // Whether an entity whose newest event is at newest_ms is expired at time `at_ms` (ttl only).
  bool IdleTooLong(int64_t newest_ms, int64_t at_ms) const {
    // Unsigned, so that no pair of times overflows (at > newest: the difference fits).
    return ttl_ms_ && newest_ms != kNoTime && at_ms != kNoTime && at_ms > newest_ms &&
           static_cast<uint64_t>(at_ms) - static_cast<uint64_t>(newest_ms) > static_cast<uint64_t>(*ttl_ms_);
  }
  // Replaces entity `index`'s feature states by fresh ones (their memory is returned).
  void ClearRow(uint32_t index);
  // Per-entity expiry bookkeeping (ttl only) for a newly added or reused index.
  void ResetLife(uint32_t index);
  // Appends a row of fresh states for `entity` (no map entry) and returns its index.
  uint32_t AppendRow(std::string_view entity);
  // Appends an index that holds no entity (ttl only), for LoadState, and returns it.
  uint32_t AddFreeIndex();
  // Appends / reads one entity's expiry bookkeeping (ttl only) in saved state.
  void SaveLife(uint32_t index, ByteWriter& out) const;
  static bool ReadLife(ByteReader& in, Life* life);

  // The row of entity `index`: every feature's state at its offset.
  unsigned char* Row(uint32_t index) const {
    return row_chunks_[index >> kRowChunkShift].get() + (index & (kRowsPerChunk - 1)) * row_bytes_;
  }

  static constexpr uint32_t kRowChunkShift = 12;
  static constexpr uint32_t kRowsPerChunk = 1u << kRowChunkShift;

  const Spec& spec_;
  std::vector<std::unique_ptr<FeatureOperator>> operators_;
  std::vector<size_t> offsets_;  // Per feature: where its state lies in a row.
  std::vector<FieldType> field_types_;  // Per feature: its field's type in the schema (kAny: none declared).
  uint64_t fingerprint_ = 0;
  // Features with the same `where` text share one evaluation per event: where_group_[k] indexes
  // where_exprs_ (-1: no filter), and where_results_ holds one event's results.
  std::vector<int> where_group_;
  std::vector<const Expr*> where_exprs_;
  std::vector<char> where_results_;
  std::vector<PendingEvent> batch_;     // ProcessBatch scratch: extracted events of one batch.
  std::vector<int64_t> batch_low_ms_;
  size_t row_bytes_ = 0;
  // Rows in fixed chunks so that states never move once constructed.
  std::vector<std::unique_ptr<unsigned char[]>> row_chunks_;
  absl::flat_hash_map<std::string, uint32_t, TextHash, TextEq> entities_;  // Inline hash: see text_hash.h.
  std::vector<std::string> entity_names_;
  // State expiry (empty without a ttl), per entity index: the newest event extracted and its life (input
  // order, for the expiry decision), and the newest event applied and the life its state belongs to.
  std::optional<int64_t> ttl_ms_;
  std::vector<Life> lives_;
  std::vector<uint32_t> free_indices_;  // Indices of expired entities, for reuse.
  std::optional<int64_t> expiry_low_ms_;  // SetExpiryLowMs; unset: low_ms_.
  bool has_watermark_ = false;
  bool keeps_recent_ = false;
  int64_t delay_ms_ = 0;  // max_out_of_orderness + allowed_lateness.
  int64_t max_time_ms_ = std::numeric_limits<int64_t>::min();
  int64_t low_ms_ = std::numeric_limits<int64_t>::min();
  EngineCounters counters_;
};

}  // namespace freshet

// EventPath: what happens to one event line in `freshet run` and `freshet backfill` — the same code, so that
// a backfill computes exactly what the stream computed:
//
//   parse (EventParser) -> lateness rule (Admit) -> deduplication (Deduplicator, with `dedup` in the spec)
//     -> extract -> apply to the entity's state -> offline rows: the event, and its entity's features as of
//     the event's time
//
// The features row is what a lookup as of the event's time answers right after the event is applied: the
// exact value over the events accepted up to it, also for an event that arrives after later events of its
// entity (the engine keeps the recent events for that; see FeatureEngine).
//
// Not thread-safe: the runtime calls Process under its exclusive lock.
#pragma once

#include <cstdint>
#include <mutex>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "common/bytes.h"
#include "common/status.h"
#include "engine/dedup.h"
#include "engine/feature_engine.h"
#include "event/event_parser.h"
#include "lookup/lookup_row.h"
#include "run/offline_sink.h"

namespace freshet {

// What a pipeline has consumed besides the engine's state; checkpointed with it.
struct PipelineCounters {
  uint64_t seq = 0;         // Events accepted so far: the next event's sequence number.
  uint64_t lines_read = 0;  // Lines read from the source (accepted, rejected, late and duplicate).
  uint64_t rejected = 0;
  uint64_t duplicates = 0;  // Dropped by `dedup` (late ones are counted by the engine).
  std::vector<int64_t> newest_event_ms;  // Per entity index: the newest accepted event time.
};

// The checkpoint's engine_state bytes of a pipeline: a version (2), the engine state, the counters, then the
// deduplication state (`dedup`: null when the spec has no `dedup`) with the id field it was kept for.
std::string EncodePipelineState(const FeatureEngine& engine, const PipelineCounters& counters,
                                const Deduplicator* dedup);

// Restores what EncodePipelineState wrote into `engine` (fresh, of the same spec), *counters and *dedup (fresh;
// null when the spec has no `dedup`). Version 1 (before deduplication) is read too. The engine's spec
// fingerprint leaves `dedup` out, so a checkpoint may come from a spec whose `dedup` differs; then:
//   - written without dedup (version 1 included): *dedup starts with no ids, M taken from the counters;
//   - written for another id field: likewise (the ids it remembers are another field's);
//   - `dedup` since removed from the spec: the saved ids are dropped;
//   - another `within`: the ids are kept and the new `within` applies from now on.
// Each case but the last appends a sentence to *notes (if given) for the operator.
Status DecodePipelineState(std::string_view bytes, FeatureEngine* engine, PipelineCounters* counters,
                           Deduplicator* dedup, std::vector<std::string>* notes = nullptr);

class EventPath {
 public:
  // kNotForSet: with SkipLinesWithoutEntity, a line without the entity field (another feature set's event).
  enum class Outcome { kAccepted, kRejected, kLate, kDuplicate, kNotForSet };

  // `dedup` must be given exactly when the spec has a `dedup` section; `offline` may be null (no offline store).
  EventPath(FeatureEngine& engine, PipelineCounters& counters, Deduplicator* dedup, OfflineSink* offline);

  // Processes one line; `capacity` >= text.size() + kParsePaddingBytes readable bytes (see EventParser).
  // `wall_ms` stamps the offline rows (ingest and processing time).
  // `place`: the record's partition and offset (a Kafka source), for the events table.
  Outcome Process(std::string_view text, size_t capacity, int64_t wall_ms, const RecordPlace* place = nullptr);
  // Like Process, for `text` read already as line `index` of `lines` (several feature sets share one reading of
  // each line; EventParser::ParseShared).
  Outcome ProcessShared(const SharedLines& lines, size_t index, std::string_view text, int64_t wall_ms,
                        const RecordPlace* place = nullptr);

  void SetOfflineSink(OfflineSink* offline) { offline_ = offline; }
  // One feature set of several after the first (run/feature_sets.h): a line that parses but has no entity field
  // is another set's event, neither applied nor rejected (kNotForSet). Single-field keys only.
  void SkipLinesWithoutEntity() { skip_without_entity_ = true; }
  // The reference tables that joined fields are read from (see EventParser::SetTables).
  // `prefetched_by_caller`: the caller prefetches each line's table slots ahead (table/table_set.h PrefetchAhead),
  // so the parse does not again.
  void SetTables(const TableSet* tables, bool prefetched_by_caller = false) {
    parser_.SetTables(tables, prefetched_by_caller);
  }
  // The lookups' answers for the next Process (lookup/lookup_row.h), set before each call when the spec has
  // lookups: the looked-up fields are filled from them, an event that a lookup with on_timeout: dead_letter failed
  // is rejected (reason lookup_timeout or lookup_error), and the offline events row records them. Null: the
  // looked-up fields are missing. Not owned.
  void SetLookups(const EventLookups* lookups) {
    lookups_ = lookups;
    parser_.SetLookups(lookups);
  }
  // Numbers the offline rows from seq->next (incremented per accepted event, under seq->mutex) instead of this
  // path's own input order: several paths (one per Kafka partition, on several threads) writing one table share
  // one numbering, so seq stays unique and each table file stays in seq order.
  struct SharedSequence {
    std::mutex mutex;
    uint64_t next = 0;
    // Members of a consumer group number rows by their place instead, partition << 40 | offset: unique across
    // the processes that write one table, and in offset order within each partition whichever process wrote
    // them (the table's files are sorted by seq when staged).
    bool from_place = false;
  };
  void SetOfflineSequence(SharedSequence* seq) { offline_seq_ = seq; }

  // The rules between parsing and applying, in input order (the ones Process applies): the lateness rule by
  // `clock`'s M, then deduplication (`dedup` may be null; `id` is the event's id field, read only with
  // `dedup`), then admission, which moves M. Counts duplicates in *counters (the clock counts late events).
  static Outcome Judge(FeatureEngine& clock, Deduplicator* dedup, PipelineCounters& counters, std::string_view entity,
                       const Value* id, int64_t time_ms);
  // Folds an admitted event into `engine` as input number `seq` and notes its entity's newest time in
  // *counters; *pending receives the extracted event (its entity index).
  static void ApplyAdmitted(FeatureEngine& engine, PipelineCounters& counters, const ParsedEvent& event, uint64_t seq,
                            PendingEvent* pending);

  // After kRejected: why (for the dead letter).
  const std::string& reason() const { return reason_; }
  // After kAccepted: the event's entity index and time.
  uint32_t entity() const { return pending_.entity; }
  int64_t event_time_ms() const { return event_.time_ms; }

 private:
  FeatureEngine& engine_;
  // Process after parsing: `parsed` says whether the line is an event (else reason_ says why not).
  Outcome AfterParse(bool parsed, std::string_view text, int64_t wall_ms, const RecordPlace* place);
  PipelineCounters& counters_;
  Deduplicator* dedup_;
  int dedup_slot_ = -1;  // The id field's slot in parsed events.
  OfflineSink* offline_;
  SharedSequence* offline_seq_ = nullptr;
  bool skip_without_entity_ = false;
  EventParser parser_;
  ParsedEvent event_;
  PendingEvent pending_;
  std::string reason_;
  std::vector<Value> values_;
  const EventLookups* lookups_ = nullptr;
  std::string lookups_record_;
};

}  // namespace freshet

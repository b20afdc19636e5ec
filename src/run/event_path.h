// EventPath: what happens to one event line in `freshet run` and `freshet backfill` — the same code, so that
// a backfill computes exactly what the stream computed:
//
//   parse (EventParser) -> lateness rule (Admit) -> extract -> apply to the entity's state
//     -> offline rows: the event, and its entity's features as of the event's time
//
// The features row is what a lookup as of the event's time answers right after the event is applied; for an
// event that arrives after later events of its entity, that is the live state's answer, not a re-sorted one.
//
// Not thread-safe: the runtime calls Process under its exclusive lock.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "common/bytes.h"
#include "common/status.h"
#include "engine/feature_engine.h"
#include "event/event_parser.h"
#include "run/offline_sink.h"

namespace freshet {

// What a pipeline has consumed besides the engine's state; checkpointed with it.
struct PipelineCounters {
  uint64_t seq = 0;         // Events accepted so far: the next event's sequence number.
  uint64_t lines_read = 0;  // Lines read from the source (accepted, rejected and late).
  uint64_t rejected = 0;
  std::vector<int64_t> newest_event_ms;  // Per entity index: the newest accepted event time.
};

// The checkpoint's engine_state bytes of a pipeline: a version, the engine state, then the counters.
std::string EncodePipelineState(const FeatureEngine& engine, const PipelineCounters& counters);
// Restores what EncodePipelineState wrote into `engine` (fresh, of the same spec) and *counters.
Status DecodePipelineState(std::string_view bytes, FeatureEngine* engine, PipelineCounters* counters);

class EventPath {
 public:
  enum class Outcome { kAccepted, kRejected, kLate };

  // `offline` may be null (no offline store).
  EventPath(FeatureEngine& engine, PipelineCounters& counters, OfflineSink* offline);

  // Processes one line; `capacity` >= text.size() + kParsePaddingBytes readable bytes (see EventParser).
  // `wall_ms` stamps the offline rows (ingest and processing time).
  Outcome Process(std::string_view text, size_t capacity, int64_t wall_ms);

  void SetOfflineSink(OfflineSink* offline) { offline_ = offline; }

  // After kRejected: why (for the dead letter).
  const std::string& reason() const { return reason_; }
  // After kAccepted: the event's entity index and time.
  uint32_t entity() const { return pending_.entity; }
  int64_t event_time_ms() const { return event_.time_ms; }

 private:
  FeatureEngine& engine_;
  PipelineCounters& counters_;
  OfflineSink* offline_;
  EventParser parser_;
  ParsedEvent event_;
  PendingEvent pending_;
  std::string reason_;
  std::vector<Value> values_;
};

}  // namespace freshet

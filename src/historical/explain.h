// Explain: why one entity's feature has the value it has as of a time: the events that count, the ones
// excluded and why, and the arithmetic that gives the value. What `freshet explain`, GET /v1/explain/{entity}
// and the console's entity page show.
//
// How: the events are replayed through the point-in-time path of `freshet historical` (historical.h), which
// computes the value with the streaming operators; an observer on that path sees each of the entity's events
// with the fate the lateness and deduplication rules gave it. Each accepted event is then judged for the
// feature by the rules the engine applies: its `where` (the spec's compiled expression), its field (the
// feature operator's own Extract), its time against the as-of time, and its window, asked of the feature's
// window operator itself (a count over the same window: does the window as of t hold an event at this time;
// for a session, how many of the contributing events its latest session holds). So the explanation cannot
// drift from the value: the counted events, aggregated, give it (tests/explain_test.py checks this against
// the independent reference).
//
//   FRESHET_ASSIGN_OR_RETURN(Explanation e, Explain(spec, ExplainInput{EventInput::JsonLines("events.jsonl")},
//                                                   "u1", /*feature=*/0, /*at_ms=*/1767226200000));
//   ExplanationJson(spec, e)  // {"entity":"u1","feature":...,"value":3,"events":[...],"arithmetic":"..."}
//
// Cost: one replay of the whole input (two with a series), like a `freshet historical` run with one row.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "historical/historical.h"
#include "spec/spec.h"

namespace freshet {

// Where the events come from. The events table holds accepted events only; the dead-letter files that
// `freshet run` wrote beside it (DATA/dead_letters/*.jsonl) add the late and duplicate ones to the list.
struct ExplainInput {
  EventInput events;
  std::vector<std::string> dead_letter_files;  // Read when present; a missing file is no error.
  // Only the letters in the first this many bytes of each file (those written before a live explanation's cut).
  uint64_t dead_letter_bytes = std::numeric_limits<uint64_t>::max();
  bool series = false;  // Also compute the value as of each of the entity's accepted events (a second replay).
};

// Why an event does or does not count.
enum class Verdict {
  kCounted,
  kAfterAsOf,      // Its time is after the as-of time.
  kOutsideWindow,  // Before the window's start (or not in the latest session).
  kWhereFalse,     // The feature's `where` is false for it.
  kFieldMissing,   // The feature's field is missing, null, or of a type the aggregation cannot take.
  kLate,           // Dropped by the lateness rule.
  kDuplicate,      // Dropped by `dedup`.
};

// "counted", "after_as_of", "outside_window", "where_false", "field_missing", "late", "duplicate".
const char* VerdictName(Verdict verdict);

struct ExplainedEvent {
  uint64_t number = 0;     // Line number in the events file, seq in the events table, or the dead letter's line.
  int64_t time_ms = 0;
  Verdict verdict = Verdict::kCounted;
  std::string detail;      // One sentence: why, in the event's own terms.
  std::string field_json;  // The feature's field in the event as JSON ("12.5", "\"ios\""); "" when missing.
  std::string raw;         // The line as read.
};

struct Explanation {
  std::string entity;
  int feature = 0;  // Index into spec.features.
  int64_t at_ms = 0;
  std::string value_json;   // The value as the operators compute it, as JSON.
  std::string window_text;  // What the window covers as of at_ms, in words with times.
  std::string arithmetic;   // How the counted events give the value.
  std::vector<ExplainedEvent> events;  // The entity's events (late and duplicate ones too), in input order.
  std::vector<std::pair<int64_t, std::string>> series;  // With ExplainInput::series: (time, value JSON) per event.
  std::string source;       // EventInput::Describe(), plus the dead-letter files read.
  uint64_t events_read = 0;
};

// Explains feature `feature` (an index into spec.features) of `entity` as of `at_ms`. Fails when the input
// cannot be read.
Result<Explanation> Explain(const Spec& spec, const ExplainInput& input, const std::string& entity, int feature,
                            int64_t at_ms);

// The explanation as one JSON object (the body of GET /v1/explain/{entity}); `extra_members`, when not empty,
// is inserted as further members (`"served":3,"agrees":true`, without braces).
std::string ExplanationJson(const Spec& spec, const Explanation& explanation, const std::string& extra_members = "");

// The explanation for people: a heading, the value, the window, the arithmetic, then one line per event.
std::string ExplanationText(const Spec& spec, const Explanation& explanation);

}  // namespace freshet

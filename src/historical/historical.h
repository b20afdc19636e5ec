// Point-in-time ("historical") feature computation: for each entity row (entity, t, labels...) the
// features as of t, computed by the same FeatureEngine operators as the streaming runtime.
//
// How: events are read in input order through the parser, the lateness rule (Admit) and deduplication
// (with `dedup` in the spec; engine/dedup.h), extracted,
// and held in a reorder buffer by event time. Because no admitted event can be earlier than the low
// watermark (M - out_of_orderness - lateness), events and entity rows below it are final: they are
// released in time order, each event applied and each row answered once every event at or before its
// time is applied. With a watermark the buffer stays as small as the lateness horizon; without one it
// holds all events until the end of input.
//
// The events come from an EventInput: a file of JSON lines, or the offline `events` table that
// `freshet run` writes (its `raw` lines replayed in acceptance order, `seq`). Both go through the one
// path above, so `freshet historical`, `freshet skew` and the streaming runtime agree by construction.
//
//   std::vector<EntityTime> rows = {{"alice", 1767225600000}};
//   FRESHET_ASSIGN_OR_RETURN(FeatureValues values,
//                            ComputeFeatureValues(spec, EventInput::EventsTable(paths.events), rows));
//   values.rows[0][k]  // Feature k of row 0, as FeatureEngine::Query answers it.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/value.h"
#include "common/time.h"
#include "engine/feature_engine.h"
#include "event/event_parser.h"
#include "offline/tables.h"
#include "spec/spec.h"

namespace freshet {

// Where the events of a point-in-time computation come from.
struct EventInput {
  enum class Kind {
    kJsonLines,    // A file of JSON lines ("-": standard input), in file order.
    kEventsTable,  // The offline events table (a Delta table folder), in acceptance (seq) order.
  };
  Kind kind = Kind::kJsonLines;
  std::string path;
  // Reference tables (the spec's `tables`): of a JSON-lines input, files (name, path) whose rows are all known
  // before the first event, so an event at t sees the version with the greatest valid_from <= t; of the events
  // table, the history beside it (<offline>/table_<name>), replayed where each version arrived in the stream.
  std::vector<std::pair<std::string, std::string>> table_files = {};
  // kEventsTable: only the events with a smaller seq (those accepted before a moment of a live run, while the
  // run goes on adding to the table); the default reads all.
  int64_t seq_below = std::numeric_limits<int64_t>::max();

  static EventInput JsonLines(std::string path) {
    return EventInput{.kind = Kind::kJsonLines, .path = std::move(path)};
  }
  static EventInput EventsTable(std::string table_dir) {
    return EventInput{.kind = Kind::kEventsTable, .path = std::move(table_dir)};
  }
  // "events file 'x.jsonl'" or "events table 'dir'", for messages.
  std::string Describe() const;
};

// One entity row's key: the entity and the time its features are asked as of (epoch ms).
struct EntityTime {
  std::string entity;
  int64_t time_ms = 0;
};

struct HistoricalStats {
  uint64_t events_read = 0;  // Lines (or stored events) read.
  uint64_t accepted = 0;
  uint64_t rejected = 0;
  uint64_t late = 0;
  uint64_t duplicates = 0;  // Dropped by the spec's `dedup`.
  uint64_t rows = 0;
  // Per feature, in spec order: accepted events that passed the feature's `where` but were skipped for it, by
  // reason: their field missing, null, or of the wrong type (not the schema's, or not one the aggregation takes,
  // e.g. "12.5", a string, for a sum or mean).
  std::vector<SkipCounts> skipped_fields;
  bool has_events = false;     // Whether any event was admitted;
  int64_t max_event_time_ms = 0;  // if so, the newest admitted event time.
  double seconds = 0;
  // CPU seconds (user + system) of the events from the first on, and of reading and building the reference tables
  // known before it (historical --events with --table: every version is added before the first event). With
  // tables, they tell the per-event cost of the join apart from the one-off cost of the load.
  double events_cpu_seconds = 0;
  double tables_cpu_seconds = 0;
};

// What the lateness and deduplication rules made of one parsed event.
enum class EventFate { kAccepted, kLate, kDuplicate };

// Sees every parsed event (lines the parser rejects are not shown), in input order, with its fate: how
// explanations (historical/explain.h) learn which events counted, by the very rules that computed the values.
// `raw` is the line (or the events table's stored line); `number` its line number, or its seq in the events
// table. The event's strings are valid only during the call.
using EventObserverFn =
    std::function<void(const ParsedEvent& event, std::string_view raw, uint64_t number, EventFate fate)>;

struct PointInTimeOptions {
  std::string dead_letters_path;  // Empty: dead letters are counted, not written.
  bool progress = false;          // Progress line on stderr.
  EventObserverFn observer;       // Empty: nothing is told.
};

// Called once per row, in time order (not row order), with every feature's value as of the row's time in
// spec order. The values (their strings) are valid only during the call.
using RowAnswerFn = std::function<void(size_t row, const std::vector<Value>& values)>;

// The core of every point-in-time computation: reads `input` through parse -> Admit -> dedup -> Extract -> reorder
// buffer -> Apply and answers each of `rows` by calling `answer`. Fills *stats (rows: rows answered).
Status ComputePointInTime(const Spec& spec, const EventInput& input, const std::vector<EntityTime>& rows,
                          const PointInTimeOptions& options, const RowAnswerFn& answer, HistoricalStats* stats);

// Every row's feature values, owning the strings they point to. Move-only: the values point into `strings`.
struct FeatureValues {
  std::vector<std::vector<Value>> rows;  // rows[r][k]: feature k (spec order) of entity row r.
  HistoricalStats stats;
  std::deque<std::string> strings;       // A deque: its elements never move, also when it is moved.

  FeatureValues() = default;
  FeatureValues(FeatureValues&&) = default;
  FeatureValues& operator=(FeatureValues&&) = default;
  FeatureValues(const FeatureValues&) = delete;
  FeatureValues& operator=(const FeatureValues&) = delete;
};

// ComputePointInTime, collecting the answers: what `freshet skew` recomputes served answers with.
Result<FeatureValues> ComputeFeatureValues(const Spec& spec, const EventInput& input,
                                           const std::vector<EntityTime>& rows, const PointInTimeOptions& options = {});


struct HistoricalOptions {
  EventInput events;              // A JSON-lines file or the events table.
  std::string entities_path;      // .parquet: Parquet; otherwise CSV with a header row.
  std::string output_path;        // .parquet: Parquet (zstd); otherwise CSV ('-': standard output).
  std::string dead_letters_path;  // Empty: dead letters are counted, not written.
  bool progress = false;          // Progress line on stderr.
};

// "4 skipped fields (avg_amount: 1 null, 2 wrong_type; total: 1 missing)": the features that skipped events
// (stats.skipped_fields), in spec order, with the count of each reason (missing, null, wrong_type) that occurred;
// empty when none did.
std::string SkippedFieldsSummary(const Spec& spec, const HistoricalStats& stats);

// `freshet historical`: reads the entity rows, computes their features and writes the input columns
// followed by one column per feature.
Status RunHistorical(const Spec& spec, const HistoricalOptions& options, HistoricalStats* stats);

}  // namespace freshet

// Spec: a parsed, validated feature spec (YAML). Immutable after LoadSpec/ParseSpec.
//
// The YAML form is the contract documented in README.md ("Spec reference"); other tools depend on it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/entity_key.h"
#include "common/status.h"
#include "spec/expr.h"
#include "spec/field_registry.h"
#include "spec/request_features.h"

namespace freshet {

enum class AggKind {
  kCount,
  kSum,
  kMean,
  kMin,
  kMax,
  kStddev,  // Population standard deviation.
  kLast,
  kCountDistinct,
  kApproxCountDistinct,  // HyperLogLog; `precision` 4..18.
  kFirst,                // The value of the earliest event.
  kApproxPercentile,     // Quantile sketch; one feature per entry of `percentiles` (FeatureSpec::percentile_ppm).
  kTopK,                 // The k most frequent values with their counts (FeatureSpec::k); a JSON list.
  kLastK,                // The values of the k newest events (FeatureSpec::k); a JSON list.
};

// The spec name of an aggregation ("count_distinct").
const char* AggKindName(AggKind kind);

// True when the aggregation reads a `field` (every aggregation but count).
inline bool AggNeedsField(AggKind kind) { return kind != AggKind::kCount; }

// True when the aggregation needs a numeric field (sum, mean, min, max, stddev, approx_percentile).
bool AggNeedsNumber(AggKind kind);

// True when the aggregation's value is a list, written as JSON text (top_k, last_k): a JSON array in HTTP answers,
// its text in Redis, CSV and the offline store.
inline bool AggGivesJsonList(AggKind kind) { return kind == AggKind::kTopK || kind == AggKind::kLastK; }

// The output name of percentile `ppm` (millionths) of approx_percentile feature `name`: name_p50 for 0.5,
// name_p95 for 0.95, name_p99_9 for 0.999, name_p0 and name_p100 for 0 and 1.
std::string PercentileFeatureName(std::string_view name, int64_t ppm);

enum class WindowKind { kLifetime, kSliding, kTumbling, kSession };

const char* WindowKindName(WindowKind kind);

struct WindowSpec {
  WindowKind kind = WindowKind::kLifetime;
  int64_t size_ms = 0;   // sliding, tumbling.
  int64_t slide_ms = 0;  // sliding with tiles; 0 means continuous. Tumbling sets slide_ms = size_ms.
  int64_t gap_ms = 0;    // session.
};

struct FeatureSpec {
  std::string name;
  AggKind agg = AggKind::kCount;
  std::string field;     // Dotted path; empty for count.
  int field_slot = -1;   // Slot of `field` in Spec::fields; -1 for count.
  std::string where_text;
  std::optional<Expr> where;  // Absent: every event qualifies.
  WindowSpec window;
  int precision = 14;    // approx_count_distinct only.
  // approx_percentile only: the percentile in millionths (0.95 is 950000). A spec feature with
  // `percentiles: [p1, p2, ...]` becomes one FeatureSpec per percentile, named <name>_p<percent>
  // (PercentileFeatureName), each with its own state.
  int64_t percentile_ppm = 0;
  // count_distinct and approx_count_distinct over a list of fields (`field: [a, b]`): the fields and their
  // slots, in order; the feature counts distinct tuples (EncodeTupleKey in aggregate/aggregations.h). Then
  // `field` is the list's text ("[a, b]") and field_slot the first field's slot.
  std::vector<std::string> tuple_fields;
  std::vector<int> tuple_slots;
  int k = 0;             // top_k, last_k only: how many values the list holds at most (1..100).
  int line = 0;          // Where the feature is declared in the spec file (1-based), for messages.
};

struct WatermarkSpec {
  int64_t max_out_of_orderness_ms = 0;
  int64_t allowed_lateness_ms = 0;
};

// Event-id deduplication (see README, "Parsing and lateness"; the rule is applied by engine/dedup.h).
struct DedupSpec {
  std::string field;             // Dotted path of the id field.
  int field_slot = -1;           // Slot of `field` in Spec::fields.
  int64_t within_ms = 86400000;  // Largest event-time distance between two events taken as one; default 24h.
};

struct SourceSpec {
  std::string type = "file";  // "file", "http" or "kafka".
  // file: resolved against the spec file's folder, absolute, its folder canonical (symlinks resolved), so that
  // the one file has one name however the spec was named; the file name is kept (it may be a symlink).
  std::string path;
  bool follow = false;
  // http: how long an Idempotency-Key is remembered.
  int64_t idempotency_window_ms = int64_t{24} * 3600 * 1000;
  // kafka
  std::string brokers;
  std::string topic;
  std::string group;
  std::string start = "earliest";
  int64_t session_timeout_ms = 45000;
  int64_t max_lag = 0;  // Messages; 0: no bound.
  int64_t max_rebalance_ms = 60000;
  std::vector<std::pair<std::string, std::string>> properties;
};

struct OnlineSpec {
  std::string type = "embedded";  // "embedded" or "redis".
  std::string host = "127.0.0.1";
  int port = 6379;
  int64_t flush_interval_ms = 100;
};

struct ServeSpec {
  std::string host = "127.0.0.1";
  int port = 8080;
  int max_connections = 10000;
  int64_t header_timeout_ms = 10000;
  int64_t body_timeout_ms = 10000;
  int min_body_rate_kib = 64;           // KiB per second.
  int max_buffered_request_mib = 256;   // MiB across all connections.
};

struct CheckpointSpec {
  int64_t interval_ms = 10000;
  int keep = 3;
  // A folder every process of a Kafka consumer group can reach (shared storage), resolved against the spec's
  // folder; empty: checkpoints stay in the data directory and one process reads the group.
  std::string path;
};

struct FreshnessSloSpec {
  int64_t p99_ms = 1000;
  int64_t window_ms = 60000;
};

struct OfflineSpec {
  bool enabled = true;
  std::string path;      // Resolved against the spec's folder; empty: "offline" in the data directory.
  bool features = true;  // Write the features table; only with a watermark (the parser sets the default).
  int64_t retention_ms = int64_t{7} * 86'400'000;  // Removed files kept for time travel until vacuum.
  int compact_every = 0;                            // Commits between automatic compactions; 0: never.
};

struct FeatureLogSpec {
  bool enabled = true;
  double sample_rate = 1.0;  // Share of entities logged, by entity-key hash.
  int queue = 100000;        // Bound of the answers waiting to be written.
  // Bound of the logged rows held in memory until their commit; beyond it they are committed early.
  int64_t max_buffered_bytes = int64_t{64} << 20;
};

struct SkewSpec {
  double max_mismatch_rate = 0.001;
  int64_t interval_ms = 0;  // 0: no check inside `freshet run`.
};

// One `derive` item: a field computed from the event's fields before the features read it.
struct DerivedFieldSpec {
  std::string name;
  std::string expr_text;  // As written.
  std::string canonical;  // ValueExpr::ToString, for the state fingerprint.
  int slot = -1;          // Its slot in Spec::fields.
  int line = 0;
};

// One `tables` item: a reference table whose rows events can join (src/table/, README "Reference tables").
struct TableSpec {
  std::string name;        // Also the prefix of its joined fields: profiles.segment.
  std::string key;         // The row field that holds the key (read like an entity: text, or an integer's digits).
  std::string valid_from;  // The row field from which a version applies (event time); empty: from its arrival.
  // "file": read (and followed) from `path`; "kafka": a (compacted) topic, message key = the table key, value =
  // the row (null deletes); "http": PUT /v1/tables/{name} only.
  std::string source_type = "http";
  std::string path;                  // file: resolved against the spec's folder.
  std::string format = "jsonl";      // file: "jsonl" or "csv" (a header row names the columns).
  std::string brokers;               // kafka: bootstrap.servers.
  std::string topic;                 // kafka
  std::vector<std::pair<std::string, std::string>> properties;  // kafka: librdkafka properties, as given.
  int64_t catch_up_ms = 30000;       // kafka: how long `freshet run` waits at start to read the topic to its end.
  int line = 0;
};

// One `joins` item: events look up `table` by the value of their field `on`.
struct JoinSpec {
  std::string table;
  int table_index = -1;  // In Spec::tables.
  std::string on;        // Dotted path of the event field holding the table's key.
  int on_slot = -1;      // Its slot in Spec::fields.
  int line = 0;
};

// One `lookups` item: an asynchronous lookup per event into an external store (src/lookup/, README "Async
// lookups"). Its answer's fields are the slots FieldRegistry::looked_up() names (credit.score).
struct LookupSpec {
  std::string name;
  std::string type;      // "redis" or "http".
  std::string key;       // redis: the key template, "credit:{user_id}".
  std::string url;       // http: the URL template, "http://127.0.0.1:8081/credit/{user_id}".
  std::string host = "127.0.0.1";  // redis.
  int port = 6379;                 // redis.
  int64_t timeout_ms = 1000;
  int max_in_flight = 100;
  bool dead_letter_on_timeout = false;  // on_timeout: dead_letter (else missing).
  int64_t cache_ttl_ms = 0;             // 0: no cache.
  int64_t cache_max_entries = 0;
  // The event fields the template names, in order of appearance ({user_id} -> "user_id"), and their slots.
  std::vector<std::string> template_fields;
  std::vector<int> template_slots;
  int line = 0;
  const std::string& key_template() const { return type == "redis" ? key : url; }
};

// One problem found in a spec, with its 1-based position in the file.
struct SpecDiagnostic {
  int line = 0;
  int column = 0;
  std::string message;  // What is wrong and what would be valid.
};

// One entry of the spec's `schema:`: the type of an event field.
struct SchemaFieldSpec {
  std::string path;    // Dotted field path.
  FieldSchema schema;  // Its type, and whether a number in a string converts.
  int line = 0;        // Where it is declared (1-based), for messages.
};

struct Spec {
  std::string name;
  std::string entity_field;                 // The (first) key field.
  std::vector<std::string> entity_fields;   // Every key field: one, or 2..kMaxKeyFields for a composite key.
  std::string timestamp_field;
  std::optional<WatermarkSpec> watermark;  // Absent: no event is ever dropped as late.
  std::optional<DedupSpec> dedup;          // Absent: no event is a duplicate.
  // State expiry (`ttl`), in ms; absent: entities never expire. Only with a watermark (the parser checks).
  std::optional<int64_t> ttl_ms;
  std::optional<SourceSpec> source;
  int parallelism = 0;  // Processing threads; 0: one per core.
  OnlineSpec online;
  ServeSpec serve;
  CheckpointSpec checkpoint;
  std::optional<FreshnessSloSpec> freshness_slo;
  OfflineSpec offline;
  FeatureLogSpec feature_log;
  SkewSpec skew;
  std::vector<FeatureSpec> features;
  std::vector<DerivedFieldSpec> derived;  // In evaluation order.
  std::vector<TableSpec> tables;
  std::vector<JoinSpec> joins;  // At most one per table; its fields are the slots FieldRegistry::joined() names.
  std::vector<LookupSpec> lookups;  // Their fields are the slots FieldRegistry::looked_up() names.
  RequestFeatures request_features;       // Computed when features are asked for; not state.
  // Slot 0: entity, slot 1: timestamp, every field a feature reads, then the dedup field; each slot carries what
  // the schema declares for it.
  FieldRegistry fields;
  bool has_schema = false;              // A `schema:` was given (then every slot has a declared type).
  std::vector<SchemaFieldSpec> schema;  // Its entries, in file order.
  // Doubts that do not make the spec invalid, such as an unquoted word in `where` that is likely meant as text;
  // every command prints them to stderr (SpecWarningsText).
  std::vector<SpecDiagnostic> warnings;
  std::string file;  // The spec file, as given.
};

// The spec's warnings as "FILE:LINE:COLUMN: warning: MESSAGE" lines, each ending in a newline; empty without any.
std::string SpecWarningsText(const Spec& spec);

// Parses and validates a spec. `file` names it in messages and anchors relative paths.
// On failure, `diagnostics` (if given) receives every problem found, and the Status message lists
// them all as "FILE:LINE:COLUMN: error: MESSAGE" lines.
Result<Spec> ParseSpec(std::string_view yaml_text, const std::string& file,
                       std::vector<SpecDiagnostic>* diagnostics = nullptr);

// Reads `path` and calls ParseSpec.
Result<Spec> LoadSpec(const std::string& path, std::vector<SpecDiagnostic>* diagnostics = nullptr);

}  // namespace freshet

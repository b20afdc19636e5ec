// SpecOptions: every key a spec file accepts, declared once.
//
// The spec parser (spec.cc) checks each YAML map against this table: unknown keys, missing required keys,
// keys that do not apply (a `gap` on a sliding window), value types, ranges, choices and defaults all come
// from here. `freshet validate --reference` renders the same table as the README's spec reference.
//
// To add a section (say `online`), add its rows here (a kMap row in its parent section, then one row per
// key with section "online") and read the values in spec.cc; the checks and the docs follow.
#pragma once

#include <span>
#include <string>
#include <string_view>

namespace freshet {

// The kind of value a spec key takes.
enum class SpecValueType {
  kString,      // Non-empty text.
  kName,        // An identifier: [A-Za-z_][A-Za-z0-9_]*.
  kFieldPath,   // A dotted event field path: identifier(.identifier)*, e.g. device.os.
  kDuration,    // A positive integer and a unit, one of ms, s, m, h, d: 500ms, 30s, 5m, 1h, 1d.
  kBool,        // true or false.
  kInt,         // An integer within [min_value, max_value].
  kFraction,    // A number from 0 to 1: 0.001, 0.5, 1.
  kChoice,      // One of `choices`.
  kExpression,  // A `where` expression (grammar in spec/expr.h).
  kMap,         // Nested keys, whose rows have section "<this row's path>".
  kList,        // A list of maps, whose rows have section "<this row's path>[]".
  kFractionList,  // A non-empty list of numbers from 0 to 1 with at most 6 decimals: [0.5, 0.95].
  kFieldPaths,    // A field path, or a list of 2 to 8 distinct field paths: user_id, [user_id, merchant_id].
};

// One key of the spec. Built with chained setters so the table reads as a list:
//   SpecOption("features[]", "precision", SpecValueType::kInt, "...").Range(4, 18).Default("14")
struct SpecOption {
  // Where the key lives: "" is the top level, "watermark" the watermark map, "features[]" each item of
  // the features list, "features[].window" the window map of a feature.
  std::string_view section;
  std::string_view key;
  SpecValueType type = SpecValueType::kString;
  std::string_view description;  // Full sentences; shown in the reference and in "missing key" errors.

  bool required = false;           // With a condition: required only where the condition holds.
  std::string_view default_value;  // Text used when the key is absent ("" for none); parsed like a value.
  std::string_view choices;        // kChoice: the valid values, ", "-separated.
  int min_value = 0;               // kInt: inclusive bounds.
  int max_value = 0;
  bool zero_allowed = false;       // kDuration: also accept a zero duration ("0s").
  std::string_view example;        // A valid value, shown when the value has the wrong shape.

  // Condition: the key applies only when the sibling key `when_key` has one of `when_values` (", "-separated),
  // or, with `when_negated`, any value but those. Given where it does not apply, the key is an error,
  // explained by `misuse_hint` when set.
  std::string_view when_key;
  std::string_view when_values;
  bool when_negated = false;
  std::string_view misuse_hint;

  constexpr SpecOption(std::string_view section_in, std::string_view key_in, SpecValueType type_in,
                       std::string_view description_in)
      : section(section_in), key(key_in), type(type_in), description(description_in) {}

  constexpr SpecOption Required() const { SpecOption o = *this; o.required = true; return o; }
  constexpr SpecOption Default(std::string_view value) const { SpecOption o = *this; o.default_value = value; return o; }
  constexpr SpecOption Choices(std::string_view values) const { SpecOption o = *this; o.choices = values; return o; }
  constexpr SpecOption Range(int lo, int hi) const { SpecOption o = *this; o.min_value = lo; o.max_value = hi; return o; }
  constexpr SpecOption ZeroAllowed() const { SpecOption o = *this; o.zero_allowed = true; return o; }
  constexpr SpecOption Example(std::string_view value) const { SpecOption o = *this; o.example = value; return o; }
  constexpr SpecOption When(std::string_view key_name, std::string_view values) const {
    SpecOption o = *this; o.when_key = key_name; o.when_values = values; return o;
  }
  constexpr SpecOption WhenNot(std::string_view key_name, std::string_view values) const {
    SpecOption o = When(key_name, values); o.when_negated = true; return o;
  }
  constexpr SpecOption MisuseHint(std::string_view hint) const { SpecOption o = *this; o.misuse_hint = hint; return o; }
};

// The spec's keys, in the order the reference lists them (and "valid keys" messages name them).
inline constexpr SpecOption kSpecOptions[] = {
    // Top level.
    SpecOption("", "name", SpecValueType::kString,
               "Name of the feature set; identifies it in output and logs.").Required().Example("fraud"),
    SpecOption("", "entity", SpecValueType::kFieldPaths,
               "The event field that keys every feature (one state and result row per distinct value), e.g. "
               "user_id; or a list of fields, a composite key with one state per distinct combination, e.g. "
               "[user_id, merchant_id]. Each key field must be a non-empty string or an integer in every event, "
               "or the event is a dead letter naming the field. Lookups name every part: GET "
               "/v1/features/{user_id}/{merchant_id}, or POST {\"entities\": [{\"user_id\": \"u1\", "
               "\"merchant_id\": \"m7\"}]}; `freshet historical` entity rows have a column per key field.")
        .Required().Example("user_id"),
    SpecOption("", "timestamp", SpecValueType::kFieldPath,
               "The event-time field: RFC 3339 text with an offset or Z, or epoch milliseconds as an integer.")
        .Required().Example("ts"),
    SpecOption("", "schema", SpecValueType::kMap,
               "The types of the event fields, as `field path: type`. The types: string, number (an "
               "integer or a fraction), int, bool, and timestamp, which is the type of the timestamp field (RFC "
               "3339 text or epoch milliseconds) and of no other. With a schema, `freshet validate` and every command "
               "check the spec against it: every field the spec reads (entity, timestamp, each feature's field and "
               "`where`, the dedup field) must be declared; a numeric aggregation needs a number or int field; a "
               "`where` comparison must compare like with like, and a word without quotes that is not a declared "
               "field is an error (quote text: type == 'purchase'). While running, an event whose feature field "
               "has another type is skipped for that feature and counted with reason wrong_type. Each entry is a "
               "type (amount: number) or a map of the keys under `schema.<field>`.")
        .Example("{user_id: string, ts: timestamp, type: string, amount: {type: number, from_string: true}}"),
    SpecOption("", "watermark", SpecValueType::kMap,
               "How long to wait for out-of-order events. Without it, no event is ever dropped as late.")
        .Example("{max_out_of_orderness: 5s, allowed_lateness: 1m}"),
    SpecOption("", "dedup", SpecValueType::kMap,
               "Event-id deduplication, for producers that resend (at-least-once delivery): an event whose id "
               "equals that of an accepted event of the same entity at most `within` apart in event time is a "
               "duplicate: dropped, counted, and written to the dead letters with reason \"duplicate\". Without "
               "it, no event is a duplicate.")
        .Example("{field: event_id, within: 24h}"),
    SpecOption("", "parallelism", SpecValueType::kInt,
               "Processing threads of `freshet run` (0: one per core). With a Kafka source the partitions are shared "
               "among them (partition k on thread k mod parallelism), each with its own state, so no value depends "
               "on it. A file or HTTP source uses as many threads too: lines are parsed on all of them, lateness, "
               "deduplication and `seq` decided in input order, then each event is applied by the shard of its entity "
               "(a hash of it), so no value depends on it either. A checkpoint written with another value is "
               "re-sharded on restore. Not yet with async `lookups` or several feature sets: they run a file or HTTP "
               "source on one thread (0 means 1 for them; more is refused).")
        .Range(0, 256).Default("0"),
    SpecOption("", "source", SpecValueType::kMap, "Where events are read from.")
        .Example("{type: file, path: events.jsonl}"),
    SpecOption("", "features", SpecValueType::kList, "The features to compute, at least one.")
        .Required().Example("[{name: n_events, aggregation: count, window: {type: lifetime}}]"),
    SpecOption("", "derive", SpecValueType::kList,
               "Derived fields: each computes a value from the event's fields (and earlier derived fields) with an "
               "expression, before any feature reads it; `where` and `field` then use it like an event field. "
               "See \"Derived fields\" in the README for the operators, functions, types and nulls.")
        .Example("[{name: amount_usd, expr: \"amount * coalesce(fx_rate, 1.0)\"}]"),
    SpecOption("", "tables", SpecValueType::kList,
               "Reference tables: rows keyed by a field (user profiles, merchants), each row a new version of its "
               "key, read from a file or a compacted Kafka topic and/or pushed with PUT /v1/tables/{name}. Every "
               "version is kept in the offline store (table_<name>). See \"Reference tables and joins\" in the "
               "README.")
        .Example("[{name: profiles, key: user_id, valid_from: updated_at, source: {type: file, path: profiles.jsonl}}]"),
    SpecOption("", "joins", SpecValueType::kList,
               "Joins of events with reference tables: `{table: profiles, on: user_id}` makes each column of the "
               "table's row for the event's `user_id` readable as `profiles.<column>` in `where`, `field` and "
               "`derive`, exact in time (see the README's Semantics).")
        .Example("[{table: profiles, on: user_id}]"),
    SpecOption("", "lookups", SpecValueType::kList,
               "Asynchronous lookups into an external store, per event: a Redis hash (HGETALL) or an HTTP GET "
               "answering a JSON object; `{name: credit, ...}` makes each field of the answer readable as "
               "`credit.<field>` in `where`, `field` and `derive`. Up to max_in_flight run at once; each event is "
               "applied, in input order, once its lookups are done. The values used are recorded in the events "
               "table (column `lookups`), so backfill and historical replay them without calling the store. See "
               "\"Async lookups\" in the README's Semantics.")
        .Example("[{name: credit, type: redis, key: \"credit:{user_id}\", timeout: 1s}]"),
    SpecOption("", "request_features", SpecValueType::kList,
               "Request-time features: each computes a value when features are asked for (GET and POST "
               "/v1/features, `freshet serve`, `freshet historical`), from the entity's feature values as of the "
               "request's time and the request's parameters, with the expression language of `derive`. See "
               "\"Request-time features\" in the README.")
        .Example("[{name: amount_over_avg_1h, expr: \"param.amount / avg_amount_1h\"}]"),
    SpecOption("", "online", SpecValueType::kMap,
               "Where `freshet run` keeps the values it serves: embedded (in the serving process, the default) "
               "or redis.")
        .Example("{type: redis, host: 127.0.0.1, port: 6379}"),
    SpecOption("", "serve", SpecValueType::kMap,
               "The HTTP serving API of `freshet run`. The bearer token for ingest and admin endpoints comes from "
               "--token-file or the FRESHET_TOKEN environment variable, never from the spec.")
        .Example("{host: 127.0.0.1, port: 8080}"),
    SpecOption("", "checkpoint", SpecValueType::kMap,
               "How often `freshet run` checkpoints its state and source positions under the data directory.")
        .Example("{interval: 10s, keep: 3}"),
    SpecOption("", "freshness_slo", SpecValueType::kMap,
               "The freshness objective: the time from an event's arrival until the serving API shows its effect. "
               "When the p99 over the window exceeds the target, /health reports degraded.")
        .Example("{p99: 1s, window: 1m}"),
    SpecOption("", "offline", SpecValueType::kMap,
               "The offline store that `freshet run` writes for training: Delta Lake tables of zstd Parquet files "
               "(events, features, feature_log), committed with each checkpoint. Read them with pandas, pyarrow, "
               "DuckDB, Spark or the deltalake package.")
        .Example("{path: offline}"),
    SpecOption("", "feature_log", SpecValueType::kMap,
               "Logging of what the serving API answered to the offline feature_log table, batched and "
               "asynchronous behind a bounded queue.")
        .Example("{sample_rate: 0.1}"),
    SpecOption("", "skew", SpecValueType::kMap,
               "The threshold of `freshet skew` (training/serving skew between logged answers and the offline "
               "recomputation), and the schedule of the same check inside `freshet run`.")
        .Example("{max_mismatch_rate: 0.001, interval: 10m}"),
    SpecOption("", "ttl", SpecValueType::kDuration,
               "State expiry: an entity with no event for longer than `ttl` is dropped from the state, counted in "
               "freshet_state_entities_expired_total, its memory returned and its Redis keys left to expire (each "
               "write sets PEXPIRE ttl). Measured in event time against the low watermark, so that a replay "
               "(backfill, `freshet historical`) expires exactly what the live run did: the entity expires once the "
               "low watermark (largest event time - max_out_of_orderness - allowed_lateness) passes its newest "
               "event + ttl, and its next event starts from empty windows. An answer as of t more than ttl after the "
               "entity's newest event is the empty-window value (count 0, sum 0, others null), lifetime features "
               "included. Needs a `watermark`. Without it, state never expires.")
        .Example("30d"),

    // schema.<field>: the map form of a schema entry (spec.cc, ParseSchema).
    SpecOption("schema.<field>", "type", SpecValueType::kChoice, "The field's type.")
        .Required().Choices("string, number, int, bool, timestamp"),
    SpecOption("schema.<field>", "from_string", SpecValueType::kBool,
               "Read a JSON string that holds a number (\"12.5\", \"-3\", \"1e3\": JSON number syntax, no "
               "spaces) as that number, in `where` and in aggregations alike, for producers that quote their "
               "numbers. Without it such a string has the wrong type: the features reading the field skip the "
               "event and count it (wrong_type). With type int, only integers convert (\"7\", not \"7.5\").")
        .When("type", "number, int").Default("false")
        .MisuseHint("from_string applies only to type number or int; remove it"),

    // watermark
    SpecOption("watermark", "max_out_of_orderness", SpecValueType::kDuration,
               "How far behind the largest event time accepted so far (M) an event may be and still be "
               "on time; the watermark trails M by this much.")
        .Default("0s").ZeroAllowed().Example("5s"),
    SpecOption("watermark", "allowed_lateness", SpecValueType::kDuration,
               "Extra time beyond max_out_of_orderness for which an out-of-order event is still accepted. "
               "An event is late when its time < M - max_out_of_orderness - allowed_lateness: it is dropped, "
               "counted, and written to the dead letters with reason \"late\".")
        .Default("0s").ZeroAllowed().Example("1m"),

    // dedup
    SpecOption("dedup", "field", SpecValueType::kFieldPath,
               "The event field holding the event's id: a non-empty string, or an integer taken as its decimal "
               "text (42 and \"42\" are the same id). An event whose id is missing, null, empty or of another type "
               "(a fraction, a boolean, an object) is never a duplicate.")
        .Required().Example("event_id"),
    SpecOption("dedup", "within", SpecValueType::kDuration,
               "How far apart in event time two events with the same id may be and still be one event "
               "(|t - t'| <= within). An id is remembered until the newest accepted event time passes it by "
               "within plus the watermark's max_out_of_orderness and allowed_lateness, so memory grows with the "
               "ids accepted in that span.")
        .Default("24h").Example("1h"),

    // source
    SpecOption("source", "type", SpecValueType::kChoice,
               "file: a JSON-lines file. http: events pushed to POST /v1/ingest (JSON lines or a JSON array), "
               "acknowledged once durable. kafka: a Kafka topic read in a consumer group, each message value one "
               "JSON event; the topic must be keyed by the entity (all of an entity's events in one partition).")
        .Choices("file, http, kafka").Default("file"),
    SpecOption("source", "path", SpecValueType::kString,
               "The events file, JSON Lines (one JSON object per line). A relative path is resolved against "
               "the folder of the spec file. Read by `freshet run`; `freshet historical` takes --events.")
        .Required().When("type", "file").Example("events.jsonl"),
    SpecOption("source", "follow", SpecValueType::kBool,
               "Keep reading as the file grows, across rotation (like tail -F), instead of stopping at its end.")
        .When("type", "file").Default("false"),
    SpecOption("source", "idempotency_window", SpecValueType::kDuration,
               "How long an Idempotency-Key of POST /v1/ingest is remembered after its batch was logged: a resend "
               "with the key within it gets the first acknowledgement and is not logged again. Keys are kept with "
               "the ingest log, so they survive crashes.")
        .When("type", "http").Default("24h"),
    SpecOption("source", "brokers", SpecValueType::kString,
               "The Kafka bootstrap servers, host:port separated by commas.")
        .Required().When("type", "kafka").Example("\"127.0.0.1:9092\""),
    SpecOption("source", "topic", SpecValueType::kString, "The topic to read.")
        .Required().When("type", "kafka").Example("events"),
    SpecOption("source", "group", SpecValueType::kString,
               "The consumer group. Freshet commits the offsets of each durable checkpoint to it (never earlier), "
               "so lag monitors and kafka-consumer-groups --describe see its progress; on restart it reads on "
               "from its own checkpoint.")
        .Required().When("type", "kafka").Example("freshet-fraud"),
    SpecOption("source", "start", SpecValueType::kChoice,
               "Where a partition starts when neither a checkpoint nor the group has an offset for it: earliest "
               "(the whole retained topic) or latest (only new messages).")
        .Choices("earliest, latest").When("type", "kafka").Default("earliest"),
    SpecOption("source", "session_timeout", SpecValueType::kDuration,
               "The group session timeout: how long the group waits for a silent member before moving its "
               "partitions.")
        .When("type", "kafka").Default("45s"),
    SpecOption("source", "max_lag", SpecValueType::kInt,
               "/health answers degraded while a partition has more than this many messages not yet processed "
               "(0: no bound).")
        .When("type", "kafka").Range(0, 2000000000).Default("0"),
    SpecOption("source", "max_rebalance", SpecValueType::kDuration,
               "/health answers degraded while this process has had no partition assigned for longer than this "
               "(joining the group, a rebalance that does not finish, or more members than partitions).")
        .When("type", "kafka").Default("1m"),
    SpecOption("source", "properties", SpecValueType::kMap,
               "Further librdkafka consumer properties, passed as given (security.protocol, sasl.mechanism, "
               "ssl.ca.location, fetch.max.bytes, ...); values are strings. Overrides Freshet's own settings, "
               "except that offsets are committed only after checkpoints whatever enable.auto.commit says.")
        .When("type", "kafka").Example("{security.protocol: SASL_SSL, sasl.mechanism: PLAIN}"),

    // online
    SpecOption("online", "type", SpecValueType::kChoice,
               "embedded: the serving process reads the live state. redis: every changed entity's state is written "
               "to Redis in pipelined batches, so any Freshet server can serve any entity.")
        .Choices("embedded, redis").Default("embedded"),
    SpecOption("online", "host", SpecValueType::kString, "Redis host.")
        .When("type", "redis").Default("127.0.0.1"),
    SpecOption("online", "port", SpecValueType::kInt, "Redis port.")
        .When("type", "redis").Range(1, 65535).Default("6379"),
    SpecOption("online", "flush_interval", SpecValueType::kDuration,
               "How often changed entities are written to Redis.")
        .When("type", "redis").Default("100ms"),

    // serve
    SpecOption("serve", "host", SpecValueType::kString,
               "The address the HTTP API listens on; loopback unless told otherwise.")
        .Default("127.0.0.1"),
    SpecOption("serve", "port", SpecValueType::kInt, "The HTTP port (0: any free port, printed at start).")
        .Range(0, 65535).Default("8080"),
    SpecOption("serve", "max_connections", SpecValueType::kInt,
               "Most HTTP connections open at once, lowered at start to the open-file limit less 64 descriptors "
               "kept for files, Redis and Kafka (said on stderr). At the cap a new connection replaces the one "
               "that has waited longest for a request (idle, or its headers still arriving).")
        .Range(1, 1000000).Default("10000"),
    SpecOption("serve", "header_timeout", SpecValueType::kDuration,
               "The time a request's whole header section may take to arrive, from its first byte; a client "
               "trickling its headers is cut off after it. At least 1s.")
        .Default("10s"),
    SpecOption("serve", "body_timeout", SpecValueType::kDuration,
               "The grace for a request body: it must arrive within body_timeout plus its size over "
               "min_body_rate_kib, counted from the end of its headers. At least 1s.")
        .Default("10s"),
    SpecOption("serve", "min_body_rate_kib", SpecValueType::kInt,
               "The slowest average rate, in KiB per second, at which a request body may arrive after the "
               "body_timeout grace.")
        .Range(1, 1048576).Default("64"),
    SpecOption("serve", "max_buffered_request_mib", SpecValueType::kInt,
               "The memory, in MiB, that requests being received may hold across all connections; a body that "
               "would go over it is refused with 503 and Retry-After. At least 16 (twice the 8 MiB body limit).")
        .Range(16, 1048576).Default("256"),

    // checkpoint
    SpecOption("checkpoint", "interval", SpecValueType::kDuration, "Time between checkpoints.").Default("10s"),
    SpecOption("checkpoint", "keep", SpecValueType::kInt, "How many of the newest checkpoints are kept.")
        .Range(1, 100).Default("3"),
    SpecOption("checkpoint", "path", SpecValueType::kString,
               "With a Kafka source: a folder that every process of the consumer group can reach (shared storage), "
               "where each process writes its checkpoints and from which a process that gains a partition in a "
               "rebalance restores that partition's state. Several `freshet run` processes then share the group "
               "(see \"Scaling out with Kafka\"). A relative path is resolved against the folder of the spec file. "
               "Default: checkpoints/ in the data directory, and one process per group.")
        .Example("/mnt/shared/fraud-checkpoints"),

    // offline
    SpecOption("offline", "enabled", SpecValueType::kBool, "Write the offline tables.").Default("true"),
    SpecOption("offline", "path", SpecValueType::kString,
               "The folder of the tables (events/, features/, feature_log/). A relative path is resolved "
               "against the folder of the spec file. Default: offline/ in the data directory.")
        .Example("offline"),
    SpecOption("offline", "features", SpecValueType::kBool,
               "Write the features table: after each accepted event, its entity's features as of the event's time, "
               "exact over the events accepted up to it. Needs a watermark (without one, out-of-order events could "
               "not be answered exactly). Default: true with a watermark, false without one."),
    SpecOption("offline", "retention", SpecValueType::kDuration,
               "How long files removed from a table (by compaction, backfill or recovery) stay on disk, so that Delta "
               "time travel to older versions works, before `freshet vacuum` may delete them.")
        .Default("7d").ZeroAllowed(),
    SpecOption("offline", "compact_every", SpecValueType::kInt,
               "Compact each table's small files (as `freshet compact` does) after every this many of its commits, "
               "inside `freshet run`; 0 never.")
        .Range(0, 1000000).Default("0"),

    // feature_log
    SpecOption("feature_log", "enabled", SpecValueType::kBool, "Log the serving API's answers.").Default("true"),
    SpecOption("feature_log", "sample_rate", SpecValueType::kFraction,
               "The share of entities whose answers are logged, chosen by a hash of the entity key, so an "
               "entity is logged always or never.")
        .Default("1"),
    SpecOption("feature_log", "queue", SpecValueType::kInt,
               "Answers waiting to be written. When full, answers are shed and counted in "
               "freshet_feature_log_shed_total, never silently.")
        .Range(1, 10000000).Default("100000"),
    SpecOption("feature_log", "max_buffered_mb", SpecValueType::kInt,
               "MiB of written rows that may wait in memory for their commit (every checkpoint interval). Beyond "
               "it they are committed at once, so memory stays bounded however long the interval and however "
               "many answers are served.")
        .Range(1, 1048576).Default("64"),

    // skew
    SpecOption("skew", "max_mismatch_rate", SpecValueType::kFraction,
               "The largest share of logged answers per feature that may differ from the recomputation; above "
               "it `freshet skew` exits with 1 and `freshet run` logs a warning.")
        .Default("0.001"),
    SpecOption("skew", "interval", SpecValueType::kDuration,
               "How often `freshet run` runs the skew check over the answers logged since the last one; "
               "absent: never.")
        .Example("10m"),

    // freshness_slo
    SpecOption("freshness_slo", "p99", SpecValueType::kDuration,
               "The target for the 99th percentile of arrival-to-visible latency.")
        .Required().Example("1s"),
    SpecOption("freshness_slo", "window", SpecValueType::kDuration,
               "The sliding window of wall-clock time over which the p99 is measured.")
        .Default("1m"),

    // derive[]
    SpecOption("derive[]", "name", SpecValueType::kName,
               "The derived field's name: [A-Za-z_][A-Za-z0-9_]*, unique among derived fields, not the entity or "
               "timestamp field, and not a field that an earlier derived field already reads from the event. It "
               "replaces an event field of the same name.")
        .Required().Example("amount_usd"),
    SpecOption("derive[]", "expr", SpecValueType::kExpression,
               "The value: arithmetic (+ - * / %), comparisons, and, or, not, and the functions if, coalesce, abs, "
               "log, round, lower, upper, length, hour_of_day, day_of_week; null when an input is missing, null or "
               "of the wrong type, and for a division by zero.")
        .Required().Example("\"(ts - signup_ms) / 86400000\""),

    // tables[]
    SpecOption("tables[]", "name", SpecValueType::kName,
               "The table's name: [A-Za-z_][A-Za-z0-9_]*, unique among tables; joined fields are named "
               "<name>.<column>, and its history in the offline store is table_<name>.")
        .Required().Example("profiles"),
    SpecOption("tables[]", "key", SpecValueType::kFieldPath,
               "The row field that holds the key (a non-empty string or an integer, read like an entity). A row "
               "without it is rejected with its line.")
        .Required().Example("user_id"),
    SpecOption("tables[]", "valid_from", SpecValueType::kFieldPath,
               "The row field holding the event time from which the version applies (RFC 3339 text or epoch "
               "milliseconds). Without it a version applies to the events that arrive after it.")
        .Example("updated_at"),
    SpecOption("tables[]", "source", SpecValueType::kMap,
               "Where rows are read from besides PUT /v1/tables/{name}: a file, read when `freshet run` starts and "
               "followed for appended lines (each new row is a new version), or re-read when it changes (parquet); "
               "or a Kafka topic, read from its start and followed (each message a new version; a null value "
               "deletes its key). In every source a row with \"_deleted\": true deletes its key.")
        .Example("{type: file, path: profiles.jsonl, format: jsonl}"),
    SpecOption("tables[].source", "type", SpecValueType::kChoice,
               "The kind of source. file: a table file. kafka: a (compacted) Kafka topic, each message one row: "
               "the message key is the table key, the value the row as a JSON object, and a null value (a "
               "tombstone) deletes the key. Read from the start of every partition, without a consumer group.")
        .Required().Choices("file, kafka").Example("file"),
    SpecOption("tables[].source", "path", SpecValueType::kString,
               "The table file; a relative path is resolved against the spec file's folder.")
        .Required().When("type", "file").Example("profiles.jsonl"),
    SpecOption("tables[].source", "format", SpecValueType::kChoice,
               "jsonl: one JSON object per line; csv: a header row naming the columns, then one row per line "
               "(a cell in JSON number syntax is a number, an empty cell is missing, any other cell text); "
               "parquet: the whole file is the table, read again when it changes (each changed or new row becomes a "
               "version; a key left out keeps its versions).")
        .Choices("jsonl, csv, parquet").When("type", "file").Default("jsonl"),
    SpecOption("tables[].source", "brokers", SpecValueType::kString,
               "The Kafka bootstrap servers, host:port separated by commas.")
        .Required().When("type", "kafka").Example("\"127.0.0.1:9092\""),
    SpecOption("tables[].source", "topic", SpecValueType::kString,
               "The topic holding the table, best compacted (cleanup.policy=compact), so that it keeps each key's "
               "latest row.")
        .Required().When("type", "kafka").Example("profiles"),
    SpecOption("tables[].source", "catch_up", SpecValueType::kDuration,
               "How long `freshet run` waits when it starts for the topic's rows up to its end before it reads "
               "events; past it, events are read on (they see the rows that have arrived) and /health says the "
               "table is behind.")
        .When("type", "kafka").Default("30s"),
    SpecOption("tables[].source", "properties", SpecValueType::kMap,
               "Further librdkafka consumer properties, passed as given (security.protocol, sasl.mechanism, "
               "ssl.ca.location, ...); values are strings. They override Freshet's own settings.")
        .When("type", "kafka").Example("{security.protocol: SASL_SSL, sasl.mechanism: PLAIN}"),

    // joins[]
    SpecOption("joins[]", "table", SpecValueType::kName, "The name of a table in `tables`; one join per table.")
        .Required().Example("profiles"),
    SpecOption("joins[]", "on", SpecValueType::kFieldPath,
               "The event field holding the table's key (it need not be the entity). An event without it, or with "
               "a key the table lacks, has its joined fields missing.")
        .Required().Example("user_id"),

    // lookups[]
    SpecOption("lookups[]", "name", SpecValueType::kName,
               "The lookup's name: [A-Za-z_][A-Za-z0-9_]*, unique among lookups and tables; the answer's fields "
               "are named <name>.<field> (dotted for nested objects).")
        .Required().Example("credit"),
    SpecOption("lookups[]", "type", SpecValueType::kChoice,
               "redis: HGETALL of the key, each hash field a field of the answer (a value in JSON number syntax "
               "is a number, any other value text; an empty hash is no answer). http: GET of `url`; a 200 answer "
               "must be a JSON object, a 404 is no answer, anything else an error.")
        .Required().Choices("redis, http").Example("redis"),
    SpecOption("lookups[]", "key", SpecValueType::kString,
               "The Redis key, with {field} replaced by the event's field (a string, or an integer's digits; an "
               "event without it is not looked up and its fields are missing).")
        .When("type", "redis").Required().Example("\"credit:{user_id}\""),
    SpecOption("lookups[]", "url", SpecValueType::kString,
               "The URL to GET (http://host:port/path, no TLS), with {field} replaced by the event's field, "
               "percent-encoded. Missing field: as for key.")
        .When("type", "http").Required().Example("\"http://127.0.0.1:8081/credit/{user_id}\""),
    SpecOption("lookups[]", "host", SpecValueType::kString, "The Redis server's host (an IPv4 address or a name).")
        .When("type", "redis").Default("127.0.0.1"),
    SpecOption("lookups[]", "port", SpecValueType::kInt, "The Redis server's port.")
        .When("type", "redis").Range(1, 65535).Default("6379"),
    SpecOption("lookups[]", "timeout", SpecValueType::kDuration,
               "How long a request may take from when it is sent; then it counts as a timeout (see on_timeout).")
        .Default("1s"),
    SpecOption("lookups[]", "max_in_flight", SpecValueType::kInt,
               "Requests sent and not yet answered, at most.")
        .Range(1, 10000).Default("100"),
    SpecOption("lookups[]", "on_timeout", SpecValueType::kChoice,
               "What a timeout or an error (connection refused, an answer that is not a JSON object, an HTTP "
               "status other than 200 and 404) does to the event: missing: its fields of this lookup are "
               "missing (recorded as null); dead_letter: the event is not accepted and goes to the dead letters "
               "with reason lookup_timeout (or lookup_error).")
        .Choices("missing, dead_letter").Default("missing"),
    SpecOption("lookups[]", "cache", SpecValueType::kMap,
               "A cache of answers (no answer included; timeouts and errors are not cached), least recently used "
               "out first. Without it every event is looked up.")
        .Example("{ttl: 60s, max_entries: 100000}"),
    SpecOption("lookups[].cache", "ttl", SpecValueType::kDuration,
               "How long an answer is reused, in wall-clock time from when it came.")
        .Required().Example("60s"),
    SpecOption("lookups[].cache", "max_entries", SpecValueType::kInt, "Answers kept at most.")
        .Range(1, 100000000).Default("100000"),

    // request_features[]
    SpecOption("request_features[]", "name", SpecValueType::kName,
               "The request feature's name and output column: [A-Za-z_][A-Za-z0-9_]*, unique among features and "
               "request features, with the same reserved names as a feature's.")
        .Required().Example("amount_over_avg_1h"),
    SpecOption("request_features[]", "expr", SpecValueType::kExpression,
               "The value, in the language of derive[].expr, over feature names, earlier request features, "
               "param.NAME (a request parameter: ?param.NAME=V in GET, \"params\" in POST, a column NAME of "
               "the entity rows in historical; null when absent), the entity field (the entity key) and the "
               "timestamp field (the as-of time in epoch ms). Null propagates; a division by zero is null.")
        .Required().Example("\"param.amount / avg_amount_1h\""),

    // features[]
    SpecOption("features[]", "name", SpecValueType::kName,
               "The feature's name and output column: [A-Za-z_][A-Za-z0-9_]*, unique within the spec, "
               "not the entity or timestamp field name, not starting with '_', and not a column of the offline "
               "tables (seq, entity, event_time, processing_time, request_id, as_of, served_at, "
               "served_features, exact, event_date, served_date, ingest_time, raw).")
        .Required().Example("purchase_count_30m"),
    SpecOption("features[]", "aggregation", SpecValueType::kChoice,
               "What to compute over the events in the window: count (events), sum, mean, min, max, "
               "stddev (population), last (value of the latest event by event time), first (value of the "
               "earliest event by event time), count_distinct (exact), approx_count_distinct (HyperLogLog), "
               "approx_percentile (quantile sketch; see percentiles), top_k (the k most frequent values with "
               "their counts; see k), last_k (the values of the k newest events; see k). sum, mean, min, max, "
               "stddev and approx_percentile need a numeric field.")
        .Required()
        .Choices("count, sum, mean, min, max, stddev, last, first, count_distinct, approx_count_distinct, "
                 "approx_percentile, top_k, last_k"),
    SpecOption("features[]", "field", SpecValueType::kFieldPath,
               "The event field to aggregate (dotted path for nested objects). Every aggregation but count "
               "needs one. count_distinct and approx_count_distinct also take a list of 2 to 8 fields, "
               "[merchant_id, device_id], and count distinct combinations (an event missing one of them, or "
               "with it null, is skipped; values compare as for one field, so 1 and 1.0 are equal).")
        .Required().WhenNot("aggregation", "count").MisuseHint("count takes no field; remove it or use sum")
        .Example("amount"),
    SpecOption("features[]", "where", SpecValueType::kExpression,
               "Only events for which this is true count toward the feature; without it every event does. "
               "Comparisons (== != < <= > >=), in [...], and, or, not, parentheses; string literals in "
               "quotes, e.g. \"type == 'purchase' and amount > 10\". A comparison with a missing field is "
               "false.")
        .Example("\"type == 'purchase'\""),
    SpecOption("features[]", "window", SpecValueType::kMap,
               "The window the aggregation runs over; type is one of lifetime, sliding, tumbling, session.")
        .Required().Example("{type: sliding, size: 30m, slide: 1m}"),
    SpecOption("features[]", "precision", SpecValueType::kInt,
               "HyperLogLog precision p (4..18): 2^p registers, relative error about 1.04/sqrt(2^p).")
        .Range(4, 18).Default("14").When("aggregation", "approx_count_distinct")
        .MisuseHint("only approx_count_distinct takes a precision; remove it"),
    SpecOption("features[]", "percentiles", SpecValueType::kFractionList,
               "The percentiles approx_percentile computes, each a number from 0 to 1 with at most 6 decimals. "
               "Each is a feature (an output column, a double) of its own, named <name>_p<percent>: "
               "name_p50 for 0.5, name_p99_9 for 0.999. The nearest-rank percentile p of n values is the one "
               "at rank max(1, ceil(p n)) in ascending order; exact while the window holds at most 256 values, "
               "then within a rank error of L n / 256, L = floor(log2(n / 256)) + 1.")
        .Required().When("aggregation", "approx_percentile")
        .MisuseHint("only approx_percentile takes percentiles; remove it")
        .Example("[0.5, 0.95]"),
    SpecOption("features[]", "k", SpecValueType::kInt,
               "How many values top_k and last_k give at most (1..100). top_k: a JSON list of "
               "{\"value\": v, \"count\": n}, most frequent first; ties: booleans (false first), then numbers "
               "by value, then strings bytewise; 1 and 1.0 are one value, written 1. Exact while the window holds "
               "at most C = max(64, 4k) distinct values; beyond, a Misra-Gries summary of C counters, whose "
               "counts are lower bounds: true - n/(C+1) <= count <= true for the n values of the window, and "
               "every value with more than n/(C+1) of them is kept. last_k: a JSON list of the values of the k "
               "newest events, newest first (event time, then input order). Both are stored as that JSON text "
               "in Redis and CSV, and as Parquet lists in the offline features table and historical's Parquet "
               "output (top_k list<struct<value: string, count: long>>, last_k list<string>).")
        .Range(1, 100).When("aggregation", "top_k, last_k").Required()
        .MisuseHint("only top_k and last_k take k; remove it")
        .Example("3"),

    // features[].window
    SpecOption("features[].window", "type", SpecValueType::kChoice,
               "lifetime: every event since the start. sliding: the last `size` of event time, advancing "
               "by `slide` (or continuously without it). tumbling: fixed, non-overlapping windows of `size` "
               "aligned to the epoch. session: events separated by less than `gap`.")
        .Required().Choices("lifetime, sliding, tumbling, session"),
    SpecOption("features[].window", "size", SpecValueType::kDuration, "The window length.")
        .Required().When("type", "sliding, tumbling").Example("30m"),
    SpecOption("features[].window", "slide", SpecValueType::kDuration,
               "How often a sliding window advances; must divide size. Without it the window slides "
               "continuously (every event moves it).")
        .When("type", "sliding").Example("1m"),
    SpecOption("features[].window", "gap", SpecValueType::kDuration,
               "A session ends after this long without events for the entity.")
        .Required().When("type", "session").Example("30m"),
};

// Every option, in table order.
inline std::span<const SpecOption> SpecOptions() { return kSpecOptions; }

// The spec reference as Markdown: one list item per key with its type, default or requirement, and
// description, grouped by section. Generated from kSpecOptions.
std::string SpecReferenceMarkdown();

}  // namespace freshet

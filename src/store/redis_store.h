// The Redis online store: the streaming runtime writes each changed entity's state and feature values
// to Redis (RedisWriter); any Freshet instance reads the state back for serving (RedisReader).
//
// Key layout (one spec = one key prefix; {spec_name} and {entity} are the raw bytes, not hash tags):
//
//   freshet:{spec_name}:state:{entity}     string  the entity's opaque state blob (engine-defined bytes)
//   freshet:{spec_name}:features:{entity}  hash    feature name -> value text, readable with HGETALL:
//       <feature>        integers as decimal integers ("42"), doubles in the shortest text that reads back
//                        to the same double ("0.1", "1e+300", "inf", "-inf", "nan"), booleans as "true" /
//                        "false", strings as their bytes. A null feature has no field: an absent field
//                        means null (an empty string is a real, empty string value).
//       _event_time_ms   newest event time of the entity, epoch milliseconds (decimal integer).
//       _updated_ms      wall clock when the writer wrote this hash, epoch milliseconds (decimal integer).
//   freshet:{spec_name}:marker             string  the sync marker, {"run_id":...,"synced_unix_ms":...,
//       "entities":...}: written in the same MULTI/EXEC as the last entity of each full sync (MarkFullSync).
//       While it is missing, Redis does not hold every entity: it lost its data (FLUSHALL, or a restart
//       without persistence) and no full sync has finished since, so readers must not take a missing state
//       for an unknown entity.
//
// The entity is any byte string (spaces, colons, UTF-8, even empty); keys and values are sent as
// length-prefixed arguments (redisAppendCommandArgv), never interpolated into a command text, so every
// byte is kept. Each flush rewrites an entity's pair of keys as SET state; DEL features; HSET features
// ... inside one MULTI/EXEC per batch, so a reader never sees a state without its matching features or a
// half-written batch. Keys have no TTL unless RedisWriterOptions::key_ttl_ms is set (the spec's `ttl`): then
// both keys of an entity expire that long after its last write (SET ... PX, PEXPIRE), so an entity that the
// engine expires leaves Redis too. Needs Redis >= 4.0 (HSET with several fields).
//
// Usage (the writer is shared by the engine thread and a background flush thread):
//
//   RedisWriterOptions options;  options.connection.port = 6379;  options.spec_name = "fraud";
//   FRESHET_ASSIGN_OR_RETURN(std::unique_ptr<RedisWriter> writer, RedisWriter::Start(options));
//   for (each entity) writer->Upsert(entity, state_blob, fields, event_time_ms);   // a full sync
//   writer->MarkFullSync(/*resyncs_seen=*/0, entity_count);
//   writer->Upsert("u123", state_blob, {{"purchase_count_30m", "3"}}, /*event_time_ms=*/t, arrival_ns);
//   if (writer->Metrics().resyncs_requested > seen) { ...upsert every entity again, MarkFullSync(...) }
//   ...
//   FRESHET_RETURN_IF_ERROR(writer->Flush(/*timeout_ms=*/5000));   // at shutdown
//   writer->Stop();
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "common/value.h"

namespace freshet {

// Field names the writer adds to every features hash. A feature with one of these names would be
// overwritten by them (they are written last); the spec should not allow such names.
inline constexpr std::string_view kRedisEventTimeField = "_event_time_ms";
inline constexpr std::string_view kRedisUpdatedField = "_updated_ms";

// Builds the keys of the layout above for one spec. Cheap to copy; thread-safe (immutable).
class RedisKeyLayout {
 public:
  explicit RedisKeyLayout(std::string_view spec_name);

  // "freshet:{spec_name}:state:{entity}" and "freshet:{spec_name}:features:{entity}".
  std::string StateKey(std::string_view entity) const;
  std::string FeaturesKey(std::string_view entity) const;
  // "freshet:{spec_name}:marker": the sync marker (see the layout above).
  const std::string& MarkerKey() const { return marker_key_; }
  // The same, written into *out (replacing its contents) so a loop can reuse one buffer.
  void StateKeyInto(std::string_view entity, std::string* out) const;
  void FeaturesKeyInto(std::string_view entity, std::string* out) const;

 private:
  std::string state_prefix_;     // "freshet:{spec_name}:state:"
  std::string features_prefix_;  // "freshet:{spec_name}:features:"
  std::string marker_key_;       // "freshet:{spec_name}:marker"
};

// Appends a feature value's hash text to *out (see the layout above) and returns true; returns false and
// appends nothing for null, missing or composite values, whose field is left out of the hash.
bool AppendRedisFeatureText(const Value& value, std::string* out);

// Where and how to connect. Defaults: a local Redis on 6379, database 0, no password.
struct RedisConnectionOptions {
  std::string host = "127.0.0.1";  // Host name or IP; a path starting with '/' is a Unix socket.
  int port = 6379;                 // 1..65535; ignored for a Unix socket.
  std::string username;            // Redis 6 ACL user; empty: AUTH with the password alone.
  std::string password;            // Empty: no AUTH.
  int db = 0;                      // SELECTed after connecting when not 0.
  int connect_timeout_ms = 1000;   // Per connection attempt.
  int command_timeout_ms = 2000;   // Per socket read or write while waiting for a reply.

  // Checks the ranges above; the message names the option and the valid range.
  Status Validate() const;
  // "127.0.0.1:6379" or the socket path, for messages.
  std::string Address() const;
};

// Connects once, authenticates, selects the database and sends PING. For a start-up check that fails
// fast on a wrong address or password (the writer itself keeps retrying instead).
Status CheckRedis(const RedisConnectionOptions& options);

struct RedisWriterOptions {
  RedisConnectionOptions connection;
  std::string spec_name;        // Required: the key prefix freshet:{spec_name}:...
  int flush_interval_ms = 100;  // A pending write waits at most this long before a flush (when Redis
                                // is up); > 0.
  size_t max_batch = 1000;      // Entities per pipelined round trip; a flush starts early once this
                                // many are pending; > 0.
  int initial_backoff_ms = 50;  // After a failed connect or write, wait this long before retrying,
  int max_backoff_ms = 5000;    // doubling after each further failure up to this; reset on success.
  int check_interval_ms = 1000;  // Once MarkFullSync was called: how often the writer checks, busy or idle,
                                 // that the connection works and the sync marker is still there; > 0.
  int64_t key_ttl_ms = 0;        // > 0: every write sets both keys of the entity to expire after this long
                                 // (wall clock, refreshed on each write); 0: keys never expire.

  Status Validate() const;
};

// A latency histogram as plain numbers, ready for a Prometheus histogram: cumulative_counts[i] counts
// observations <= upper_bounds_seconds[i]; `count` is the +Inf bucket; sum_seconds their sum.
struct LatencyHistogram {
  std::vector<double> upper_bounds_seconds;
  std::vector<uint64_t> cumulative_counts;
  uint64_t count = 0;
  double sum_seconds = 0;
};

// Health of the writer, for a /health endpoint and logs. A snapshot; fields are consistent with each other.
struct RedisWriterHealth {
  bool connected = false;             // The last connect, write or check succeeded (a connection lost
                                      // while idle shows at the next check, within check_interval_ms,
                                      // once MarkFullSync was called, else at the next write; while
                                      // disconnected the writer keeps reconnecting, idle or not).
  bool in_sync = false;               // Redis holds every entity as of its last write: a full sync was
                                      // marked and written, and since then the writer neither reconnected
                                      // nor found the marker missing. False before the first MarkFullSync.
  std::string out_of_sync_reason;     // Why not in_sync, one phrase ("Redis lost its data (...)").
  std::string last_error;             // The latest connect or write error; empty when none so far.
  uint64_t consecutive_failures = 0;  // Failed connects or writes since the last success.
  size_t pending_entities = 0;        // Entities waiting to be written, plus those in the batch in flight.
  int64_t oldest_pending_age_ms = 0;  // How long the oldest of them has waited; 0 when none.
  int64_t last_success_unix_ms = 0;   // Wall clock of the last successful write; 0 when none so far.
};

// Counters since Start, monotonic (Prometheus counters), and two latency histograms.
struct RedisWriterMetrics {
  uint64_t upserts = 0;            // Upsert calls.
  uint64_t coalesced = 0;          // Upserts that replaced a pending write of the same entity.
  uint64_t entities_written = 0;   // Entities written (each a SET + DEL + HSET).
  uint64_t batches_written = 0;    // Successful round trips.
  uint64_t bytes_written = 0;      // State blob, key and field bytes in successful batches.
  uint64_t write_errors = 0;       // Failed batches (the entities were kept and retried).
  uint64_t connect_errors = 0;     // Failed connection attempts (including AUTH and SELECT failures).
  uint64_t connects = 0;           // Successful connections (the first one and every reconnect).
  uint64_t resyncs_requested = 0;  // Full syncs the caller should make (see MarkFullSync): one per
                                   // reconnect and per marker found missing.
  uint64_t marker_losses = 0;      // Times a check found the marker missing while in sync: Redis lost
                                   // its data (FLUSHALL, or a restart between two checks).
  LatencyHistogram batch_latency;  // One observation per successful batch: send to EXEC reply.
  LatencyHistogram freshness;      // One per written entity that had arrival_ns > 0: from the arrival of
                                   // the oldest event the write covers to the EXEC reply.
};

// Writes entity state and features to Redis in the background.
//
// Upsert is thread-safe and does not wait for Redis: it keeps the latest pending write per entity (a
// newer Upsert of the same entity replaces the pending one), so memory is bounded by the number of
// changed entities, even while Redis is down. A background thread writes pending entities, oldest
// first, in pipelined batches of up to max_batch (one round trip each), once the oldest has waited
// flush_interval_ms or max_batch are pending. When Redis fails or is down, the batch goes back to the
// pending set (a newer Upsert of an entity wins over the failed one), and the thread reconnects and
// retries with exponential backoff; nothing is lost, and the backlog is written once Redis is back.
// Writes are idempotent, so a batch whose reply was lost is safely written again. (After a command
// timeout Redis may still run the unanswered batch later; it is received before the retry's new
// connection is answered, so in practice the retry, with the newest values, lands last.)
class RedisWriter {
 public:
  // Validates the options and starts the background thread, which connects right away. Redis need not
  // be up yet (see CheckRedis to require it). Errors: invalid options only.
  static Result<std::unique_ptr<RedisWriter>> Start(RedisWriterOptions options);

  // Stops the thread without flushing (call Flush first to write what is pending).
  ~RedisWriter();
  RedisWriter(const RedisWriter&) = delete;
  RedisWriter& operator=(const RedisWriter&) = delete;

  // Queues the write of one entity: its state blob, its features as (name, value text) pairs (see
  // AppendRedisFeatureText; leave null features out), and its newest event time (epoch ms).
  // arrival_ns: when the oldest event reflected in this write arrived, as
  // std::chrono::steady_clock::now().time_since_epoch() in nanoseconds; 0 to leave this write out of the
  // freshness histogram. When writes coalesce, the earliest arrival is kept. Thread-safe; never blocks
  // on Redis (only on a short internal lock).
  void Upsert(std::string entity, std::string state_blob,
              std::vector<std::pair<std::string, std::string>> feature_fields, int64_t event_time_ms,
              int64_t arrival_ns = 0);

  // Writes now (without waiting for the interval, and skipping the current backoff once), and waits
  // until every Upsert made before this call is written (later ones may still be pending). Returns IoError
  // when that did not happen within timeout_ms (Redis down or slow), naming the pending count and the last
  // error; the writes stay pending and are still retried. Thread-safe.
  Status Flush(int64_t timeout_ms);

  // Declares a full sync: every entity the caller has was upserted before this call (`entities` of
  // them, for the marker's text). Once all those upserts are written, the writer writes the sync marker
  // in the same MULTI/EXEC as the last of them, and is in sync. The first call also starts the periodic
  // check (check_interval_ms), which finds a connection lost while idle, and a Redis that lost its data
  // while connected (marker missing). Each reconnect and each lost marker leaves the writer out of sync
  // and increments Metrics().resyncs_requested: the caller answers with a new full sync, passing the
  // count it answers as resyncs_seen; a call whose resyncs_seen is below the current count is outdated
  // (its upserts may have gone to the Redis that was lost) and writes no marker. Thread-safe.
  void MarkFullSync(uint64_t resyncs_seen, size_t entities);

  // Stops the background thread, after the write in flight if any (at most about command_timeout_ms);
  // idempotent. Pending writes stay pending (visible in Health) but are no longer written. Thread-safe.
  void Stop();

  RedisWriterHealth Health() const;
  RedisWriterMetrics Metrics() const;
  const RedisKeyLayout& keys() const;

 private:
  struct Impl;  // Queue, connection, flush thread and counters; in redis_store.cc.
  explicit RedisWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Reads state blobs (and feature hashes) back from Redis, for serving from any Freshet instance.
// Connects on first use; after a connection error it reconnects and retries the read once (reads are
// idempotent), then returns IoError. Thread-safe: calls are serialized on one connection; use one reader
// per serving thread for parallel reads.
class RedisReader {
 public:
  // Validates the options; does not connect yet. spec_name: as given to the writer.
  static Result<std::unique_ptr<RedisReader>> Create(RedisConnectionOptions options,
                                                     std::string_view spec_name);
  ~RedisReader();
  RedisReader(const RedisReader&) = delete;
  RedisReader& operator=(const RedisReader&) = delete;

  // The entity's state blob, or nullopt when Redis has none.
  Result<std::optional<std::string>> GetState(std::string_view entity);

  // The state blobs of many entities, in the same order, nullopt where there is none. One round trip:
  // MGET commands of up to 1000 keys each, pipelined. With marker_present, each MGET also reads the sync
  // marker (atomically with its keys), and *marker_present says whether every one found it: when false,
  // a missing state may be an entity Redis lost rather than an unknown one.
  Result<std::vector<std::optional<std::string>>> MGetState(std::span<const std::string> entities,
                                                            bool* marker_present = nullptr);

  // The sync marker's text, or nullopt when Redis has none.
  Result<std::optional<std::string>> GetMarker();

  // The entity's features hash as (field, value) pairs including _event_time_ms and _updated_ms, in
  // Redis's order; nullopt when there is no hash. For debugging and tests; serving uses the state.
  Result<std::optional<std::vector<std::pair<std::string, std::string>>>> GetFeatures(
      std::string_view entity);

  const RedisKeyLayout& keys() const;

 private:
  struct Impl;  // Connection and its lock; in redis_store.cc.
  explicit RedisReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace freshet

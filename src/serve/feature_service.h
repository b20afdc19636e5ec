// FeatureService: what the HTTP layer (serve/http_server.h) needs from the runtime behind `freshet run`.
//
// The runtime consumes events, keeps every feature of its spec up to date, and implements this interface;
// HttpServer turns HTTP requests into calls to it and its answers into JSON. Nothing here knows about HTTP.
//
// Thread-safety: every method is called concurrently from the server's worker threads (and Lookup may run
// while Ingest is blocked waiting for durability), so implementations synchronise internally.
//
// Errors: a method that can fail returns a Status whose message is shown to the client as
// {"error": message}, so it says what is wrong and how to fix it. The code chooses the HTTP status:
//   kInvalidArgument -> 400 (the request is wrong; do not retry as is)
//   kNotFound        -> 404
//   kIoError         -> 503 with Retry-After (durability or a dependency failed; retrying may succeed)
//   kInternal        -> 500
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "common/value.h"
#include "spec/spec.h"

namespace freshet {

// One entity's answer to a Lookup.
struct FeatureLookup {
  // True when the entity has had at least one admitted event (it has state). An unknown entity is not an
  // error: known = false and every value is its feature's empty-window value (count 0, mean null, ...).
  bool known = false;
  // Event time (epoch ms) of the newest admitted event of the entity, whatever its time relative to the
  // lookup's as_of; nullopt for unknown entities. The server reports as_of_ms - newest_event_ms as
  // "newest_event_age_ms" (negative when the lookup is as of a time before that event).
  std::optional<int64_t> newest_event_ms;
  // True when the values are exactly those of the written semantics as of the lookup's time over the events
  // accepted so far: the time is at or after the entity's newest event, or at or after the low watermark
  // (M - max_out_of_orderness - allowed_lateness) of a spec with a watermark. False for an earlier time: the
  // state may then hold events after it (a point-in-time question for `freshet historical`).
  bool exact = true;
  // One value per requested feature, in the order of the `features` argument.
  std::vector<Value> values;
};

// The body format of an Ingest call, from the request's Content-Type.
enum class IngestFormat {
  kJsonLines,  // application/x-ndjson: one JSON object per line, as in an events file.
  kJsonArray,  // application/json: one JSON array whose elements are event objects.
};

// The outcome of a successful Ingest.
struct IngestAck {
  // Events made durable: they will be applied (or dead-lettered as late) exactly as if read from a file.
  uint64_t accepted = 0;
  // Lines or elements the event parser refuses (not a JSON object, no valid entity or timestamp). They are
  // logged all the same and dead-lettered by the pipeline, with their place in the log, exactly once.
  uint64_t rejected = 0;
  // The first rejected ones (at most kMaxIngestErrors): their 1-based line (or array element) number within the
  // request, and why.
  std::vector<std::pair<uint64_t, std::string>> errors;
  // With an Idempotency-Key: kReplayed when a batch with the same key and events was acknowledged before (the
  // fields above are that acknowledgement, and nothing was logged again); kKeyReused when the key was
  // acknowledged for other events (nothing was logged; the request is refused, and `first_logged_ms` says when
  // the key was first used).
  enum class KeyOutcome { kNew, kReplayed, kKeyReused };
  KeyOutcome key_outcome = KeyOutcome::kNew;
  int64_t first_logged_ms = 0;
};
inline constexpr size_t kMaxIngestErrors = 10;

// The runtime's own view of its health, for GET /health.
struct HealthReport {
  bool ok = true;
  // Why not ok, one short sentence each ("event source 'events.jsonl' unreadable: ...").
  std::vector<std::string> reasons;
};

class FeatureService {
 public:
  virtual ~FeatureService() = default;

  // The spec being served; immutable, and alive as long as the service.
  virtual const Spec& spec() const = 0;

  // Every requested feature of `entities` as of `as_of_ms` (epoch ms; the HTTP layer has already
  // checked it is within kMinTimeMs..kMaxTimeMs). `features` are indices into spec().features, each
  // valid, without duplicates, in the order the caller wants the values.
  //
  // On success calls `consume` exactly once, on the calling thread, with one FeatureLookup per entity in
  // the order of `entities`, and returns Ok. String values (last, ...) may point into the runtime's state:
  // they only need to stay valid until `consume` returns, so the runtime may hold a read lock across the
  // call. `consume` only serialises; it does not call back into the service. On failure (for example the
  // runtime is shutting down, or as_of is older than the state can still answer) returns the error
  // without calling `consume`.
  virtual Status Lookup(std::span<const std::string_view> entities, int64_t as_of_ms, std::span<const int> features,
                        const std::function<void(std::span<const FeatureLookup>)>& consume) const = 0;

  // True when Lookup may block for long (it asks another server, as a service over Redis does): the HTTP
  // layer then runs lookups on its blocking threads instead of its event loops. Default false: Lookup
  // reads memory, at most waiting briefly for a lock.
  virtual bool LookupBlocks() const { return false; }

  // Takes a body of events (at most HttpServerOptions::max_body_bytes) and returns once they are durable,
  // or the error: kInvalidArgument when the body as a whole cannot be taken (a kJsonArray body that is not
  // a JSON array), kIoError when durability failed. Individual bad events are not an error: they are
  // counted in IngestAck::rejected (or later as dead letters) like bad lines of a file. May block (fsync,
  // backpressure); it runs on one of the server's worker threads.
  virtual Result<IngestAck> Ingest(std::string_view body, IngestFormat format) = 0;
  // Ingest with the producer's Idempotency-Key (not empty): a batch resent with a key seen within the spec's
  // source.idempotency_window is not logged again (see IngestAck::key_outcome). Default: refused, for
  // services that keep no ingest log.
  virtual Result<IngestAck> IngestWithKey(std::string_view body, IngestFormat format, std::string_view key) {
    (void)body, (void)format, (void)key;
    return Status::Invalid("this server keeps no ingest log, so it cannot take an Idempotency-Key; POST /v1/ingest "
                           "needs `freshet run` with `source: {type: http}`");
  }

  // PUT /v1/tables/{name}: appends the rows (JSON lines) of reference table `table` that can be read, durably,
  // and returns how many; every other row's 1-based line and reason go to *errors. May block (fsync).
  // Default: kNotFound, for a service without reference tables.
  virtual Result<size_t> PutTableRows(std::string_view table, std::string_view body,
                                      std::vector<std::pair<size_t, std::string>>* errors) {
    (void)body, (void)errors;
    return Status::NotFound("no table '" + std::string(table) + "': this server has no reference tables (the "
                            "spec's `tables`, with `freshet run`)");
  }

  // Called by the HTTP layer with every successful answer, inside Lookup's `consume` (so the values are
  // still valid), to log what was served. Must not block: implementations queue and write elsewhere.
  // `request_id` is the client's X-Request-Id or one the server made up; it is also in the response.
  virtual void LogAnswer(std::string_view request_id, int64_t as_of_ms, std::span<const int> features,
                         std::span<const std::string_view> entities, std::span<const FeatureLookup> lookups) {
    (void)request_id, (void)as_of_ms, (void)features, (void)entities, (void)lookups;
  }

  // The runtime's health right now; cheap (called by load balancers every few seconds).
  virtual HealthReport Health() const = 0;

  // The web console's data (GET /v1/ui/{view}, read by the pages under /ui): a JSON body for `view` "pipeline"
  // (the pipeline's figures with a history of the last minutes), "features" (per feature: skipped fields, the
  // share of entities with a value, a histogram over a sample of entities) or "dead-letters" (counts by
  // reason, the latest rejected lines). Default: kNotFound, for a service that runs no pipeline (`freshet
  // serve`). Cheap enough for a page that polls every second or two.
  virtual Result<std::string> ConsoleJson(std::string_view view) const {
    return Status::NotFound("this server runs no pipeline, so it has no " + std::string(view) +
                            " figures; the console's pipeline pages need `freshet run`");
  }

  // Explains feature `feature` (an index into spec().features) of `entity` as of `at_ms`: the JSON body of
  // GET /v1/explain/{entity} (historical/explain.h's ExplanationJson, with the served value). May block: it
  // replays the offline store. Default: kNotFound.
  virtual Result<std::string> ExplainJson(std::string_view entity, int feature, int64_t at_ms) const {
    (void)entity, (void)feature, (void)at_ms;
    return Status::NotFound("this server keeps no events to explain values with; use `freshet explain --spec S "
                            "--entity E --feature F --at T` over the pipeline's data directory");
  }

  // Appends the service's own metrics, those not in the registry the HTTP server was given, to *out in the
  // Prometheus text format: write them with a MetricsRegistry's AppendText (serve/metrics.h) so that every
  // number is formatted one way. Family names must not collide with the HTTP server's (freshet_http_*,
  // process_*, freshet_build_info).
  virtual void AppendMetrics(std::string* out) const = 0;
};

}  // namespace freshet

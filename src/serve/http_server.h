// HttpServer: the HTTP API of `freshet run`, over a FeatureService (serve/feature_service.h).
//
// Endpoints (every response body is JSON except /metrics):
//   GET  /v1/features/{entity}?features=a,b&at=T   one entity's features as of T
//   POST /v1/features   {"entities":[...],"features":[...],"at":T}   many entities at once
//   POST /v1/ingest     events as JSON lines (Content-Type: application/x-ndjson) or a JSON array
//                       (application/json); answers {"accepted":n,"rejected":m} once they are durable
//   GET  /health        200 {"status":"ok"} or 503 {"status":"degraded","reasons":[...]}
//   GET  /metrics       Prometheus text: the server's metrics, then the service's
//   GET  /v1/spec       the spec being served: name, entity, timestamp, watermark, features
//   GET  /v1/explain/{entity}?feature=F&at=T   why F has its value: FeatureService::ExplainJson (may block)
//   GET  /v1/ui/{view}  the web console's data: FeatureService::ConsoleJson ("pipeline", "features", "dead-letters")
//   GET  /ui[/file]     the web console's pages, embedded in the binary (serve/ui_assets.h); read-only, open
//   /v1/admin/...       reserved for admin operations (none yet: 404 once authorised)
//
// Requests:
//   {entity}   the path segment, percent-decoded ('/' in an entity must be sent as %2F; '+' is a plus).
//   features   comma-separated names (a JSON array of names in POST); absent: every feature, in spec order.
//              Duplicates are answered once. An unknown name is a 400 whose body lists the valid names.
//   at         epoch milliseconds (an integer) or RFC 3339 text with Z or an offset; absent: the wall clock
//              now. In a query string '+' is taken literally (an offset like +01:00 may be sent unencoded).
//   Unknown query parameters and unknown keys in a POST body are 400s that name the valid ones.
//   The wire protocol (keep-alive, pipelining, framing, 100-continue, limits and timeouts) is HttpLoop's, in
//   serve/http_loop.h: a request whose body cannot be delimited unambiguously is a 400 with
//   `Connection: close`, a body over max_body_bytes a 413.
// Responses:
//   GET  {"entity":"u1","as_of":"2026-01-01T00:10:00.000Z","as_of_ms":1767226200000,"known":true,
//         "newest_event_age_ms":1234,"features":{"purchase_count_30m":3,"avg_txn_amount_1h":12.5,"x":null}}
//        newest_event_age_ms = as_of_ms - (event time of the entity's newest event); null when unknown.
//        Unknown entities are not an error: known=false and the empty-window values (count 0, mean null).
//        Integers are JSON integers and doubles always have a fraction or exponent ("12.0").
//   POST {"as_of":...,"as_of_ms":...,"results":[{"entity":"u1","known":...,"newest_event_age_ms":...,
//         "features":{...}}, ...]}, one result per requested entity in request order (integer entities are
//        answered as their decimal text, as in events).
//   Errors: {"error":"what is wrong and how to fix it", ...}: 400 malformed request (bad JSON, wrong types,
//   bad `at`, unknown feature, too many entities), 401 missing or wrong token, 404 unknown path (lists the
//   endpoints), 405 wrong method (with Allow), 413 body over max_body_bytes, 414 request line over 8 KiB,
//   415 ingest with another Content-Type or any multipart body, 431 headers over 64 KiB, 503 service
//   unavailable or degraded, or a body refused for the loop's buffered-bytes budget (with Retry-After); see
//   feature_service.h for how service errors map.
//
// Auth: with a bearer token configured, /v1/ingest and everything under /v1/admin require
// `Authorization: Bearer <token>`, compared in constant time; a missing or wrong token is a 401 counted in
// freshet_http_unauthorized_total. It is checked before 404 and 405, so what exists under /v1/admin is not
// revealed; only a body over the limit (413) is refused before it.
// Feature reads, /v1/spec, /health, /metrics, explanations (two at a time, then 503) and the console stay open:
// they change nothing, and the typical deployment
// has model servers and scrapers on a private network reading features at high rate, where a token per read
// adds cost and secret distribution for little gain. Put the server behind a proxy that authenticates if
// reads must be private. The token travels in clear text: there is no TLS here.
//
// Metrics (in the MetricsRegistry given): freshet_http_requests_total{route,status},
// freshet_http_request_duration_seconds{route} (from the end of the request's headers to its answer made),
// freshet_http_unauthorized_total, freshet_http_lookup_entities_total. `route` is the endpoint pattern
// (e.g. "/v1/features/{entity}"), or "unmatched" for unknown paths and requests too malformed to route.
// The loop's defences (serve/http_loop.h), read when /metrics is asked for: freshet_http_connections_open,
// freshet_http_connections_max (the cap in force), freshet_http_connections_over_cap_max (how far the open
// count may exceed it), freshet_http_buffered_request_bytes,
// freshet_http_accept_pauses_total, freshet_http_connections_shed_total,
// freshet_http_connections_refused_total, freshet_http_slow_requests_closed_total{part="headers"|"body"},
// freshet_http_buffer_budget_refusals_total. And the process_* metrics and freshet_build_info
// (serve/process_metrics.h), so every /metrics shows them.
//
// Threads: `loop_threads` event loops (one per core by default) read, answer and write requests; ingests, and
// lookups of a service whose LookupBlocks() is true, run on `threads` blocking threads instead, so a wait for
// fsync or Redis does not stall other connections. Start and Stop are called from one thread; everything
// else happens on the server's threads.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "common/status.h"
#include "serve/feature_service.h"
#include "serve/metrics.h"

namespace freshet {

struct HttpServerOptions {
  // Address to listen on. Default: loopback only; "0.0.0.0" for every interface.
  std::string host = "127.0.0.1";
  // TCP port; 0 picks a free one (see HttpServer::port()).
  int port = 0;
  // When not empty, ingest and admin endpoints require `Authorization: Bearer <bearer_token>`. The caller
  // reads it from a file or the environment; surrounding whitespace (a token file's final newline) is
  // ignored, and a token that is only whitespace makes Start fail. It never appears in logs or responses.
  std::string bearer_token;
  // Largest request body accepted, in bytes, chunked bodies included; larger is a 413. Default 8 MiB.
  size_t max_body_bytes = size_t{8} << 20;
  // Most entities in one POST /v1/features; more is a 400. Default 10,000.
  size_t max_entities_per_request = 10000;
  // Threads for requests that may block (ingests, lookups over Redis): as many are served at once. Default 8.
  int threads = 8;
  // Event-loop threads that serve every connection. 0 (default): one per core, at most 4.
  int loop_threads = 0;
  // How long an idle keep-alive connection is kept, in seconds. Default 5.
  int keep_alive_timeout_sec = 5;
  // How long a read or write on a connection may stall before it is dropped, in seconds. Default 5.
  int io_timeout_sec = 5;
  // Limits against hostile clients, as HttpLoopOptions documents them: connections open at once (lowered to
  // the open-file limit), seconds for a request's headers, the grace and minimum rate of a body, and the
  // bytes buffered for requests across all connections. Defaults 10,000, 10 s, 10 s, 64 KiB/s, 256 MiB.
  int max_connections = 10000;
  int header_timeout_sec = 10;
  int body_timeout_sec = 10;
  size_t min_body_bytes_per_sec = size_t{64} << 10;
  size_t max_buffered_request_bytes = size_t{256} << 20;
};

// Sets the limits that the spec's `serve` map gives (max_connections, header_timeout, body_timeout,
// min_body_rate_kib, max_buffered_request_mib); host and port are left to the caller, whose flags override
// them.
void ApplyServeSpec(const ServeSpec& serve, HttpServerOptions* options);

class HttpServer {
 public:
  // `service` and `metrics` must outlive the server. Registers the server's metrics in `metrics`.
  HttpServer(FeatureService& service, MetricsRegistry& metrics, HttpServerOptions options);
  // Stops the server if it is running.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Several feature sets in one process: /v1/features/{name}/{entity...} and POST /v1/features with
  // "feature_set": name (or POST /v1/features/{name}) are answered by `service`; other feature paths are refused
  // with the list of sets. Call before Start; `service` must outlive the server.
  void AddFeatureSet(std::string name, FeatureService& service);

  // Binds host:port and starts serving on background threads; returns once the socket listens (requests
  // may be sent as soon as it returns). Fails when the address cannot be bound (port in use, bad host,
  // invalid options). Call at most once.
  Status Start();
  // Stops accepting, closes idle connections, finishes the requests in progress (waiting at most
  // io_timeout_sec for ones still arriving), and joins the threads. Idempotent.
  void Stop();
  // The bound port (useful with port 0), or 0 before Start.
  int port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace freshet

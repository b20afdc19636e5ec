// HttpLoop: Freshet's HTTP/1.1 server core: sockets, framing and keep-alive, without any endpoint logic.
//
// Why not a thread per connection (cpp-httplib, which served `freshet run` before): every request then wakes
// the one thread that owns its connection, and at 20,000 lookups/s on two cores a third of the server's time
// went to switching threads. Here a few event-loop threads (one per core by default) each own an epoll set and
// the connections they accepted; a request is read, parsed, answered and written on that thread, and a loop
// that finds several connections ready serves them all in one wake-up. Handlers that may block (an ingest that
// waits for fsync, a lookup that asks Redis) run on a separate pool of blocking threads, so they never stall
// the other connections of their loop; their connection reads nothing more until the answer is written, which
// keeps pipelined answers in request order.
//
// The wire protocol, as served:
//   - HTTP/1.1 and HTTP/1.0 requests; answers are HTTP/1.1. Connections are kept alive unless the client
//     says `Connection: close` (or is HTTP/1.0 without `Connection: keep-alive`). Pipelined requests are
//     answered in order.
//   - Bodies are framed by one Content-Length or by `Transfer-Encoding: chunked` (trailers are read and
//     ignored). Anything ambiguous is refused with 400 and `Connection: close` before any body is read, since
//     what follows on such a connection cannot be trusted to be the next request: several Content-Length
//     headers, a Content-Length that is not a number, both Content-Length and Transfer-Encoding, another
//     Transfer-Encoding, a body on a method that takes none (GET, HEAD, OPTIONS, TRACE), an HTTP version
//     other than 1.0 and 1.1, a malformed request line or header.
//   - A body over max_body_bytes is a 413. The rest of it is read and discarded (up to 64 MiB past the limit)
//     so that the connection serves the next request; past that, or when the client waits for
//     `Expect: 100-continue`, the 413 is sent at once and the connection closed.
//   - `Expect: 100-continue` is answered with `100 Continue` before the body is read.
//   - A request line over 8 KiB is a 414, however long it is and however much of the request has arrived;
//     headers over 64 KiB (after a request line within its limit) or over 100 fields a 431. Both close the
//     connection.
//   - HEAD is answered with the headers of the GET answer and no body.
//   - A connection idle between requests for keep_alive_timeout_sec is closed; one whose request or answer
//     makes no progress for io_timeout_sec is dropped.
//
// Hostile clients (slowloris, connection floods, many large bodies at once) are bounded, so that they cannot
// take the descriptors, the memory or the loop threads that legitimate clients and the rest of the process
// (checkpoints, offline files, dead letters, Redis, Kafka) need:
//   - Descriptors. Start raises the soft RLIMIT_NOFILE to the hard limit, then caps the connections at
//     min(max_connections, soft limit - a reserve of min(64, a quarter of the limit)), said once on stderr
//     when lower than configured (see effective_max_connections). When accept fails for lack of descriptors or
//     memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), the loop stops watching the listening socket for 100 ms
//     instead of waking on it at once again and again; each pause is counted.
//   - Slow clients. The whole header section of a request must arrive within header_timeout_sec of its first
//     byte (of the connection's opening, for a first request), however steadily it trickles; a body must
//     arrive at an average of at least min_body_bytes_per_sec after a grace of body_timeout_sec: by
//     body_timeout_sec + bytes received / min_body_bytes_per_sec after its headers, so a body of S bytes has
//     body_timeout_sec + S / min_body_bytes_per_sec in all (10 s + 128 s for 8 MiB at the default 64 KiB/s).
//     Either is closed without an answer, and counted.
//   - At the connection cap, a new connection is admitted by closing one that has waited longest for a
//     request: an idle keep-alive connection or one whose header section is still arriving, whichever waited
//     longer (counted as shed). New connections go to the loops in turn and each loop sheds its own oldest,
//     so those shed are about the oldest of all. Connections reading a body or being answered are never
//     shed; when every connection is, the new one is closed at once.
//   - Memory. The bytes buffered for requests across all connections (header sections, bodies, de-chunked
//     bodies) are held under max_buffered_request_bytes: a body that would go over it is refused with 503,
//     `Retry-After: 1` and `Connection: close` before it is read (counted). Buffers are freed when their
//     request is answered and when their connection closes, and free memory is returned to the system
//     (malloc_trim) after large buffers are freed.
//
// Thread-safety: Start and Stop are called from one thread. The handler is called concurrently from the loop
// threads and the blocking pool.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace freshet {

// A request as parsed from the wire. Every view points into the connection's buffers and stays valid until
// the handler returns.
struct HttpRequest {
  std::string_view method;  // As sent ("GET"); empty when the request line could not be parsed.
  std::string_view target;  // The request target as sent, undecoded: path and query string.
  int minor_version = 1;    // HTTP/1.<minor_version>.
  std::vector<std::pair<std::string_view, std::string_view>> headers;  // Values without surrounding blanks.
  std::string_view body;    // The whole body (de-chunked); empty when there is none.
  // When the request's headers were complete: the start of its service time.
  std::chrono::steady_clock::time_point start;

  // The value of the first header named `name` (case-insensitive), or "" when there is none.
  std::string_view Header(std::string_view name) const;
  // How many headers are named `name` (case-insensitive).
  size_t HeaderCount(std::string_view name) const;
};

// True for the methods whose requests carry a body (POST, PUT, PATCH, DELETE); any other method with a body
// is refused as ambiguously framed.
bool MethodTakesBody(std::string_view method);

// The answer to one request. The loop adds the status line, Content-Length and, when the connection is to
// close, `Connection: close`.
struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // Extra headers, in order.
  bool close = false;  // Close the connection once this answer is written.

  void SetHeader(std::string name, std::string value) { headers.emplace_back(std::move(name), std::move(value)); }
};

// What an HttpLoop serves. Called concurrently from several threads.
class HttpHandler {
 public:
  virtual ~HttpHandler() = default;
  // True when Handle(request) may block (waiting for a disk or another server): it then runs on the blocking
  // pool instead of the loop thread. Must be cheap.
  virtual bool MayBlock(const HttpRequest& request) const = 0;
  // Answers a well-framed request whose whole body (within the limit) has arrived.
  virtual void Handle(const HttpRequest& request, HttpResponse* response) = 0;
  // Answers a request the loop refuses itself: `status` is 400, 413, 414 or 431, 503 when its body would
  // exceed the memory budget (the loop adds Retry-After), or 500 when Handle threw; `message` says why (a
  // sentence for the client). `request` holds what could be parsed (method and target may be empty). The
  // loop closes the connection afterwards unless `status` is 413 with the body drained, or 500.
  virtual void Refuse(const HttpRequest& request, int status, std::string_view message, HttpResponse* response) = 0;
};

struct HttpLoopOptions {
  // Address to listen on (a numeric IPv4 or IPv6 address, or a host name that resolves to one).
  std::string host = "127.0.0.1";
  // TCP port; 0 picks a free one (see HttpLoop::port()).
  int port = 0;
  // Event-loop threads. 0 (default): one per core, at most 4.
  int loop_threads = 0;
  // Threads that run handlers that may block; as many blocking requests are served at once. Default 8.
  int blocking_threads = 8;
  // Largest request body, in bytes (de-chunked); larger is a 413. Default 8 MiB.
  size_t max_body_bytes = size_t{8} << 20;
  // Most connections open at once, lowered to what the open-file limit allows (see the top of this file).
  // At the cap a waiting connection is shed for a new one, or the new one is closed at once. Default 10,000.
  int max_connections = 10000;
  // Seconds an idle keep-alive connection is kept between requests. Default 5.
  int keep_alive_timeout_sec = 5;
  // Seconds a request being received or an answer being sent may make no progress. Default 5.
  int io_timeout_sec = 5;
  // Seconds in which a request's whole header section must arrive, from its first byte (from the
  // connection's opening for its first request). Default 10, as nginx's client_header_timeout.
  int header_timeout_sec = 10;
  // A body must arrive within body_timeout_sec plus its bytes received over min_body_bytes_per_sec, counted
  // from the end of its headers: a minimum average rate after a grace. Defaults 10 s and 64 KiB/s.
  int body_timeout_sec = 10;
  size_t min_body_bytes_per_sec = size_t{64} << 10;
  // Most bytes buffered for requests across all connections; a body that would go over it is a 503.
  // Default 256 MiB.
  size_t max_buffered_request_bytes = size_t{256} << 20;
};

// What the loop has done to hostile or unlucky clients, and its current load; for metrics. Counters only
// grow.
struct HttpLoopStats {
  uint64_t accept_pauses = 0;        // Listening socket paused for lack of descriptors or memory.
  uint64_t connections_shed = 0;     // Waiting connections closed at the cap to admit a new one.
  uint64_t connections_refused = 0;  // New connections closed at once at the cap (none could be shed).
  uint64_t header_timeouts = 0;      // Connections closed for a header section not complete in time.
  uint64_t body_timeouts = 0;        // Connections closed for a body arriving too slowly.
  uint64_t budget_refusals = 0;      // Requests refused with 503 for the buffered-bytes budget.
  int open_connections = 0;
  int max_connections = 0;           // The effective cap.
  // How far open_connections may read over the cap: connections accepted at the cap are counted until the
  // ones they replace are closed, up to a fixed number per loop per wake-up.
  int over_cap_allowance = 0;
  size_t buffered_request_bytes = 0;
};

class HttpLoop {
 public:
  // `handler` must outlive the loop.
  HttpLoop(HttpHandler& handler, HttpLoopOptions options);
  // Stops the loop if it runs.
  ~HttpLoop();
  HttpLoop(const HttpLoop&) = delete;
  HttpLoop& operator=(const HttpLoop&) = delete;

  // Binds host:port and starts the threads; returns once the socket listens. Fails when the address cannot
  // be bound (port in use, bad host) or the options are invalid. Call at most once.
  Status Start();
  // Stops accepting, closes idle connections at once, lets requests in progress finish (for at most
  // io_timeout_sec), and joins the threads. Idempotent; harmless after a failed Start.
  void Stop();
  // The bound port, or 0 before Start.
  int port() const;
  // The connection cap in force: max_connections, lowered by Start to the open-file limit less a reserve.
  // 0 before Start.
  int effective_max_connections() const;
  // A reading of the counters and load; any thread, any time.
  HttpLoopStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace freshet

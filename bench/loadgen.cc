// loadgen: an open-loop, constant-rate HTTP load generator for Freshet's lookup endpoints (bench/serve_bench.sh).
//
//   loadgen --url http://127.0.0.1:PORT --rate R [--connections C] [--duration S] [--warmup S]
//           [--batch B] [--entities E] [--at RFC3339] [--seed N] [--json]
//
// Request k is due at t0 + k/R whatever happened to the requests before it (open loop). When it is due it is
// written on an idle keep-alive connection; when all C connections are waiting for answers it queues, and its
// latency still runs from its due time (the coordinated-omission correction of wrk2). Per request:
//   latency       from the due time to the last byte of the answer: what clients arriving at R per second see;
//                 this is the figure to hold against a target.
//   service time  from the write of the request to the last byte of the answer (what a closed-loop tool
//                 such as wrk reports).
//   send delay    from the due time to the write: the generator's own lateness plus the wait for a free
//                 connection. When it grows, the server (or the generator) is not keeping up with R.
// Requests due in the first --warmup seconds are sent but not recorded. Every latency of the recorded ones is
// kept (8 bytes per request each) and sorted at the end, so percentiles are exact.
//
// One thread, epoll, non-blocking sockets, one request in flight per connection (no pipelining, like a
// browser or wrk). Between events it sleeps until the next due time with epoll_pwait2 (a nanosecond timeout)
// and a 1 ns timer slack, so sends are spread evenly rather than bunched into millisecond lumps.
// The price, on the Firecracker VM the benchmarks run on: a thread that waits with a timer armed wakes about
// 35 us later than one blocked without a timeout, so at low rates loadgen's service time reads about 35 us
// above a blocking client's (or wrk's) p50; tails agree. At 20,000 req/s loadgen takes about 0.6 of a core,
// almost all of it in the kernel's loopback TCP path (user time is about 2%).
//
// `freshet run` serves any number of keep-alive connections from its event loops (src/serve/http_loop.h); a
// server with a thread per connection would need C at or below its worker threads. A server that closes a connection (Connection: close, or a keep-alive request limit) is reconnected to; the
// report counts it under "reconnects".
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace freshet {
namespace {

constexpr int64_t kNsPerSec = 1'000'000'000;
constexpr size_t kMaxHeaderBytes = 64 * 1024;
constexpr size_t kMaxAnswerBytes = 64 * 1024 * 1024;
constexpr int64_t kReconnectDelayNs = 100'000'000;  // After a refused reconnect.
constexpr int kMaxConsecutiveConnectFailures = 50;  // About 5 s of refusals per connection: the server is gone.

constexpr const char* kUsage =
    "usage: loadgen --url http://127.0.0.1:PORT --rate R [--connections C] [--duration S] [--warmup S]\n"
    "               [--batch B] [--entities E] [--at RFC3339] [--seed N] [--drain S] [--json]\n"
    "  --url          the server (http://HOST:PORT, HOST an IPv4 address or localhost)\n"
    "  --rate         requests per second, all connections together (open loop)\n"
    "  --connections  keep-alive connections (default 8)\n"
    "  --duration     seconds recorded (default 10)\n"
    "  --warmup       seconds sent before recording starts, not recorded (default 2)\n"
    "  --batch        0: GET /v1/features/u<n>?at=AT; B > 0: POST /v1/features with B entities (default 0)\n"
    "  --entities     entities are u1..uE, drawn uniformly (default 1000000)\n"
    "  --at           the `at` time of every lookup (default 2026-01-01T12:00:00Z)\n"
    "  --seed         seed of the entity draws (default 1)\n"
    "  --drain        seconds to wait for answers after the last request is due (default 5)\n"
    "  --json         print one JSON line instead of the human-readable report\n";

struct Options {
  std::string host = "127.0.0.1";
  int port = 0;
  double rate = 0;
  int connections = 8;
  double duration_s = 10;
  double warmup_s = 2;
  double drain_s = 5;
  int batch = 0;
  int64_t entities = 1'000'000;
  std::string at = "2026-01-01T12:00:00Z";
  uint64_t seed = 1;
  bool json = false;
};

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * kNsPerSec + ts.tv_nsec;
}

// ---------------------------------------------------------------------------------------------------------
// Arguments.

Status ParseNumber(std::string_view flag, std::string_view text, double min, double max, double* out) {
  double value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || !std::isfinite(value) || value < min ||
      value > max) {
    return Status::Invalid(std::string(flag) + " " + std::string(text) + " is not a number in [" +
                           std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  *out = value;
  return Status::Ok();
}

template <typename Int>
Status ParseInteger(std::string_view flag, std::string_view text, Int min, Int max, Int* out) {
  Int value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < min || value > max) {
    return Status::Invalid(std::string(flag) + " " + std::string(text) + " is not a whole number in [" +
                           std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  *out = value;
  return Status::Ok();
}

// Accepts http://HOST:PORT with an optional trailing '/': loadgen chooses the paths itself.
Status ParseUrl(std::string_view url, Options* options) {
  const std::string how = "; give it as http://127.0.0.1:PORT (the address `freshet run` prints after 'serving')";
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return Status::Invalid("--url '" + std::string(url) + "' does not start with http:// (https is not supported)" + how);
  }
  std::string_view rest = url.substr(kScheme.size());
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  const size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos || rest.find('/') != std::string_view::npos) {
    return Status::Invalid("--url '" + std::string(url) + "' needs a port and no path" + how);
  }
  std::string host(rest.substr(0, colon));
  if (host == "localhost") host = "127.0.0.1";
  in_addr address;
  if (inet_pton(AF_INET, host.c_str(), &address) != 1) {
    return Status::Invalid("--url '" + std::string(url) + "': host '" + host + "' is not an IPv4 address" + how);
  }
  options->host = host;
  return ParseInteger<int>("--url port", rest.substr(colon + 1), 1, 65535, &options->port);
}

Result<Options> ParseArgs(int argc, char** argv) {
  Options options;
  bool have_url = false;
  bool have_rate = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--json") {
      options.json = true;
      continue;
    }
    if (i + 1 >= argc) return Status::Invalid(std::string(flag) + " needs a value (or is not a flag of loadgen)");
    const std::string_view value = argv[++i];
    if (flag == "--url") {
      FRESHET_RETURN_IF_ERROR(ParseUrl(value, &options));
      have_url = true;
    } else if (flag == "--rate") {
      FRESHET_RETURN_IF_ERROR(ParseNumber(flag, value, 0.001, 10e6, &options.rate));
      have_rate = true;
    } else if (flag == "--connections") {
      FRESHET_RETURN_IF_ERROR(ParseInteger<int>(flag, value, 1, 10000, &options.connections));
    } else if (flag == "--duration") {
      FRESHET_RETURN_IF_ERROR(ParseNumber(flag, value, 0.001, 86400, &options.duration_s));
    } else if (flag == "--warmup") {
      FRESHET_RETURN_IF_ERROR(ParseNumber(flag, value, 0, 86400, &options.warmup_s));
    } else if (flag == "--drain") {
      FRESHET_RETURN_IF_ERROR(ParseNumber(flag, value, 0, 3600, &options.drain_s));
    } else if (flag == "--batch") {
      FRESHET_RETURN_IF_ERROR(ParseInteger<int>(flag, value, 0, 100000, &options.batch));
    } else if (flag == "--entities") {
      FRESHET_RETURN_IF_ERROR(ParseInteger<int64_t>(flag, value, 1, int64_t{1} << 40, &options.entities));
    } else if (flag == "--at") {
      if (value.empty() || value.find_first_of(" \"\\&#\r\n") != std::string_view::npos) {
        return Status::Invalid("--at '" + std::string(value) +
                               "' must be a plain RFC 3339 time such as 2026-01-01T12:00:00Z");
      }
      options.at = value;
    } else if (flag == "--seed") {
      FRESHET_RETURN_IF_ERROR(ParseInteger<uint64_t>(flag, value, 0, UINT64_MAX, &options.seed));
    } else {
      return Status::Invalid("unknown flag '" + std::string(flag) + "'");
    }
  }
  if (!have_url) return Status::Invalid("--url is required (http://127.0.0.1:PORT of the server)");
  if (!have_rate) return Status::Invalid("--rate is required (requests per second, e.g. --rate 20000)");
  const double requests = options.rate * (options.warmup_s + options.duration_s);
  if (requests > 2e9) {
    return Status::Invalid("--rate x (--warmup + --duration) is " + std::to_string(requests) +
                           " requests; keep it under 2e9 (every latency is kept in memory)");
  }
  if (options.rate * options.duration_s < 1) {
    return Status::Invalid("--rate x --duration is under one request: nothing would be recorded");
  }
  return options;
}

// ---------------------------------------------------------------------------------------------------------
// Requests.

// splitmix64: a small, fast generator whose sequence does not depend on the standard library.
class Random {
 public:
  explicit Random(uint64_t seed) : state_(seed) {}
  // Uniform in [1, n] (multiply-shift; the bias is below n / 2^64).
  int64_t Entity(int64_t n) {
    state_ += 0x9e3779b97f4a7c15ULL;
    uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return 1 + static_cast<int64_t>((static_cast<unsigned __int128>(z) * static_cast<uint64_t>(n)) >> 64);
  }

 private:
  uint64_t state_;
};

void AppendInt(std::string* out, int64_t value) {
  char digits[24];
  const auto [end, ec] = std::to_chars(digits, digits + sizeof(digits), value);
  out->append(digits, end);
}

// Builds request bytes into a caller's buffer (reserved once, so no allocation per request).
class RequestWriter {
 public:
  explicit RequestWriter(const Options& options)
      : options_(options),
        random_(options.seed),
        host_header_("Host: " + options.host + ":" + std::to_string(options.port) + "\r\n") {
    body_.reserve(static_cast<size_t>(options.batch) * 24 + 64);
  }

  // Bytes that a request built into `out` may take, to reserve the buffers up front.
  size_t MaxRequestBytes() const { return static_cast<size_t>(options_.batch) * 24 + 512 + options_.at.size(); }

  void Build(std::string* out) {
    out->clear();
    if (options_.batch == 0) {
      out->append("GET /v1/features/u");
      AppendInt(out, random_.Entity(options_.entities));
      out->append("?at=");
      out->append(options_.at);
      out->append(" HTTP/1.1\r\n");
      out->append(host_header_);
      out->append("\r\n");
      return;
    }
    body_.clear();
    body_.append("{\"entities\":[");
    for (int i = 0; i < options_.batch; ++i) {
      if (i > 0) body_.push_back(',');
      body_.append("\"u");
      AppendInt(&body_, random_.Entity(options_.entities));
      body_.push_back('"');
    }
    body_.append("],\"at\":\"");
    body_.append(options_.at);
    body_.append("\"}");
    out->append("POST /v1/features HTTP/1.1\r\n");
    out->append(host_header_);
    out->append("Content-Type: application/json\r\nContent-Length: ");
    AppendInt(out, static_cast<int64_t>(body_.size()));
    out->append("\r\n\r\n");
    out->append(body_);
  }

 private:
  const Options& options_;
  Random random_;
  std::string host_header_;
  std::string body_;
};

// ---------------------------------------------------------------------------------------------------------
// Answers.

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Frames one HTTP/1.1 answer in a connection's input bytes: the status line, Content-Length or chunked bodies
// (and, with neither, a body that runs to the close of the connection).
class AnswerParser {
 public:
  enum class Progress { kNeedMore, kComplete, kMalformed };

  void Reset() { *this = AnswerParser(); }

  // Looks at input[0, size); on kComplete, answer_bytes() of them were the answer.
  Progress Parse(const char* input, size_t size) {
    if (header_bytes_ == 0) {
      const std::string_view text(input, size);
      const size_t end = text.find("\r\n\r\n");
      if (end == std::string_view::npos) return size > kMaxHeaderBytes ? Progress::kMalformed : Progress::kNeedMore;
      header_bytes_ = end + 4;
      if (!ParseHeaders(text.substr(0, end))) return Progress::kMalformed;
    }
    if (chunked_) return ParseChunks(input, size);
    if (content_length_ >= 0) {
      if (size < header_bytes_ + static_cast<size_t>(content_length_)) return Progress::kNeedMore;
      answer_bytes_ = header_bytes_ + static_cast<size_t>(content_length_);
      return Progress::kComplete;
    }
    if (status_ == 204 || status_ == 304 || (status_ >= 100 && status_ < 200)) {
      answer_bytes_ = header_bytes_;
      return Progress::kComplete;
    }
    return Progress::kNeedMore;  // Ends at the close of the connection: see EndsAtClose.
  }

  // True when the headers are read and the body has no length: the close of the connection ends it.
  bool EndsAtClose() const { return header_bytes_ > 0 && !chunked_ && content_length_ < 0; }
  // The connection closed after `size` bytes: the body of an EndsAtClose answer ends there.
  void EndAtClose(size_t size) { answer_bytes_ = size; }
  int status() const { return status_; }
  bool close_after() const { return close_after_; }
  size_t answer_bytes() const { return answer_bytes_; }
  size_t header_bytes() const { return header_bytes_; }

 private:
  bool ParseHeaders(std::string_view head) {
    size_t line_end = head.find("\r\n");
    const std::string_view status_line = head.substr(0, line_end);
    // "HTTP/1.1 200 OK"
    if (status_line.size() < 12 || status_line.substr(0, 5) != "HTTP/" || status_line[8] != ' ') return false;
    const auto [end, ec] = std::from_chars(status_line.data() + 9, status_line.data() + 12, status_);
    if (ec != std::errc() || end != status_line.data() + 12) return false;
    close_after_ = status_line.substr(5, 3) == "1.0";
    while (line_end != std::string_view::npos) {
      const size_t start = line_end + 2;
      line_end = head.find("\r\n", start);
      const std::string_view line = head.substr(start, line_end == std::string_view::npos ? head.npos : line_end - start);
      const size_t colon = line.find(':');
      if (colon == std::string_view::npos) continue;
      const std::string_view name = Trim(line.substr(0, colon));
      const std::string_view value = Trim(line.substr(colon + 1));
      if (EqualsIgnoreCase(name, "content-length")) {
        const auto [vend, vec] = std::from_chars(value.data(), value.data() + value.size(), content_length_);
        if (vec != std::errc() || vend != value.data() + value.size() || content_length_ < 0 ||
            static_cast<size_t>(content_length_) > kMaxAnswerBytes) {
          return false;
        }
      } else if (EqualsIgnoreCase(name, "transfer-encoding")) {
        chunked_ = value.size() >= 7 && EqualsIgnoreCase(value.substr(value.size() - 7), "chunked");
      } else if (EqualsIgnoreCase(name, "connection")) {
        if (EqualsIgnoreCase(value, "close")) close_after_ = true;
        if (EqualsIgnoreCase(value, "keep-alive")) close_after_ = false;
      }
    }
    return true;
  }

  // Chunks: "<hex size>[;ext]\r\n<data>\r\n" ... "0\r\n" [trailers] "\r\n". Rescanned from the start of the
  // body on each call; answers are small and arrive in a few reads.
  Progress ParseChunks(const char* input, size_t size) {
    const std::string_view text(input, size);
    size_t pos = header_bytes_;
    while (true) {
      const size_t line_end = text.find("\r\n", pos);
      if (line_end == std::string_view::npos) return Progress::kNeedMore;
      uint64_t chunk = 0;
      const auto [end, ec] = std::from_chars(text.data() + pos, text.data() + line_end, chunk, 16);
      if (ec != std::errc() || end == text.data() + pos || chunk > kMaxAnswerBytes) return Progress::kMalformed;
      pos = line_end + 2;
      if (chunk == 0) {
        // Trailers (usually none), then an empty line.
        while (true) {
          const size_t trailer_end = text.find("\r\n", pos);
          if (trailer_end == std::string_view::npos) return Progress::kNeedMore;
          const bool empty = trailer_end == pos;
          pos = trailer_end + 2;
          if (empty) {
            answer_bytes_ = pos;
            return Progress::kComplete;
          }
        }
      }
      if (size < pos + chunk + 2) return Progress::kNeedMore;
      if (text.substr(pos + chunk, 2) != "\r\n") return Progress::kMalformed;
      pos += chunk + 2;
    }
  }

  size_t header_bytes_ = 0;
  size_t answer_bytes_ = 0;
  int status_ = 0;
  int64_t content_length_ = -1;
  bool chunked_ = false;
  bool close_after_ = false;
};

// ---------------------------------------------------------------------------------------------------------
// The run.

enum class ConnState { kDown, kConnecting, kIdle, kBusy };

// Why a connection ended early; kNone when the server ended it cleanly between requests.
enum class Loss : int { kNone, kClosedBeforeAnswer, kMalformed, kUnexpectedBytes, kCount };
constexpr const char* kLossNames[] = {"", "closed before the answer", "malformed answer", "unexpected bytes"};

struct Connection {
  int fd = -1;
  ConnState state = ConnState::kDown;
  int64_t retry_at_ns = 0;
  int consecutive_connect_failures = 0;
  bool want_write = false;  // EPOLLOUT is registered.
  // The request in flight (kBusy).
  uint64_t request = 0;
  int64_t due_ns = 0;
  int64_t sent_ns = 0;
  std::string out;
  size_t out_pos = 0;
  // The answer being read.
  std::vector<char> in;
  size_t in_size = 0;
  AnswerParser parser;
};

struct Counters {
  uint64_t answers = 0;           // Recorded answers of any status.
  uint64_t non_200 = 0;           // Recorded answers whose status was not 200.
  uint64_t failed = 0;            // Recorded requests without an answer: connection closed or reset.
  uint64_t unanswered = 0;        // Recorded requests still unanswered (or never sent) at the drain deadline.
  uint64_t reconnects = 0;        // Connections reopened after the server closed them (all phases).
  uint64_t connect_failures = 0;  // Reconnects refused or failed (all phases).
  uint64_t max_queue = 0;         // Most requests due and waiting, every connection busy.
  uint64_t losses[static_cast<int>(Loss::kCount)] = {};  // Lost requests (and bad idle closes) by cause.
  int first_bad_status = 0;
  std::string first_bad_body;
};

// The idle connections, oldest first. Requests go to the connection idle the longest, so every connection
// stays in use: one left idle for longer than the server's keep-alive timeout (5 s) would be closed by the
// server, possibly just as a request is written to it.
class IdleQueue {
 public:
  void Reset(size_t capacity) {
    slots_.assign(capacity, 0);
    head_ = size_ = 0;
  }
  bool empty() const { return size_ == 0; }
  void Push(size_t connection) {
    slots_[(head_ + size_) % slots_.size()] = connection;
    ++size_;
  }
  size_t Pop() {
    const size_t connection = slots_[head_];
    head_ = (head_ + 1) % slots_.size();
    --size_;
    return connection;
  }
  // Takes `connection` out of the queue if it is there (a closed connection), keeping the others' order.
  void Remove(size_t connection) {
    const size_t n = size_;
    for (size_t i = 0; i < n; ++i) {
      const size_t c = Pop();
      if (c != connection) Push(c);
    }
  }

 private:
  std::vector<size_t> slots_;
  size_t head_ = 0;
  size_t size_ = 0;
};

class LoadGenerator {
 public:
  explicit LoadGenerator(const Options& options) : options_(options), writer_(options) {}

  ~LoadGenerator() {
    for (Connection& c : connections_) {
      if (c.fd >= 0) close(c.fd);
    }
    if (epoll_fd_ >= 0) close(epoll_fd_);
  }

  Status Run();
  void Report() const;

 private:
  int64_t DueNs(uint64_t k) const { return t0_ns_ + static_cast<int64_t>(static_cast<double>(k) * period_ns_); }
  bool Recorded(uint64_t k) const { return k >= first_recorded_; }

  Status ConnectAllBlocking();
  void Reconnect(size_t index, int64_t now_ns);
  void CloseConnection(Connection& c);
  void Send(size_t index, uint64_t k, int64_t now_ns);
  void Flush(size_t index);
  void OnReadable(size_t index);
  void OnConnected(size_t index);
  void Finish(Connection& c, int64_t done_ns, int status);
  // Ends the connection (counting the request in flight, if any, as lost for `loss`) and reconnects.
  void Fail(Connection& c, Loss loss);
  void WantWrite(Connection& c, bool want);
  Status Wait(int64_t timeout_ns, int* ready);

  const Options& options_;
  RequestWriter writer_;
  sockaddr_in address_{};
  int epoll_fd_ = -1;
  bool have_pwait2_ = true;
  std::vector<Connection> connections_;
  IdleQueue idle_;
  std::vector<epoll_event> events_;

  double period_ns_ = 0;
  int64_t t0_ns_ = 0;
  int64_t measure_start_ns_ = 0;
  uint64_t total_ = 0;           // Requests due over warmup + duration.
  uint64_t first_recorded_ = 0;  // The first request due after the warmup.
  uint64_t due_ = 0;             // Requests whose due time has passed.
  uint64_t sent_ = 0;            // Requests written (or being written).
  uint64_t finished_ = 0;        // Requests answered or failed.
  int64_t last_answer_ns_ = 0;   // Of a recorded request.
  double cpu_s_ = 0;
  double wall_s_ = 0;
  bool fatal_ = false;
  std::string fatal_message_;

  std::vector<int64_t> latency_ns_;
  std::vector<int64_t> service_ns_;
  std::vector<int64_t> send_delay_ns_;
  Counters counters_;
};

std::string ServerHint(const Options& options) {
  return " (is `freshet run` serving at http://" + options.host + ":" + std::to_string(options.port) +
         "? check the port in its 'serving' line and pass that as --url)";
}

Status LoadGenerator::ConnectAllBlocking() {
  for (size_t i = 0; i < connections_.size(); ++i) {
    Connection& c = connections_[i];
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c.fd < 0) return Status::IoError(std::string("socket() failed: ") + std::strerror(errno));
    if (connect(c.fd, reinterpret_cast<const sockaddr*>(&address_), sizeof(address_)) != 0) {
      const int saved = errno;
      return Status::IoError("cannot connect to " + options_.host + ":" + std::to_string(options_.port) + ": " +
                             std::strerror(saved) + ServerHint(options_));
    }
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    const int flags = fcntl(c.fd, F_GETFL);
    fcntl(c.fd, F_SETFL, flags | O_NONBLOCK);
    epoll_event event{};
    event.events = EPOLLIN | EPOLLRDHUP;
    event.data.u64 = i;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, c.fd, &event) != 0) {
      return Status::IoError(std::string("epoll_ctl failed: ") + std::strerror(errno));
    }
    c.state = ConnState::kIdle;
    idle_.Push(i);
  }
  return Status::Ok();
}

void LoadGenerator::CloseConnection(Connection& c) {
  if (c.fd >= 0) {
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c.fd, nullptr);
    close(c.fd);
  }
  c.fd = -1;
  c.want_write = false;
  c.in_size = 0;
  c.parser.Reset();
  idle_.Remove(static_cast<size_t>(&c - connections_.data()));
  c.state = ConnState::kDown;
}

void LoadGenerator::Reconnect(size_t index, int64_t now_ns) {
  Connection& c = connections_[index];
  c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c.fd < 0) {
    ++counters_.connect_failures;
    c.retry_at_ns = now_ns + kReconnectDelayNs;
    return;
  }
  int one = 1;
  setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  epoll_event event{};
  event.events = EPOLLIN | EPOLLRDHUP;
  event.data.u64 = index;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, c.fd, &event);
  if (connect(c.fd, reinterpret_cast<const sockaddr*>(&address_), sizeof(address_)) == 0) {
    c.state = ConnState::kIdle;
    c.consecutive_connect_failures = 0;
    idle_.Push(index);
  } else if (errno == EINPROGRESS) {
    c.state = ConnState::kConnecting;
    WantWrite(c, true);
  } else {
    close(c.fd);
    c.fd = -1;
    ++counters_.connect_failures;
    c.retry_at_ns = now_ns + kReconnectDelayNs;
    if (++c.consecutive_connect_failures >= kMaxConsecutiveConnectFailures) {
      fatal_ = true;
      fatal_message_ = std::string("the server stopped accepting connections: ") + std::strerror(errno);
    }
  }
}

void LoadGenerator::OnConnected(size_t index) {
  Connection& c = connections_[index];
  int error = 0;
  socklen_t length = sizeof(error);
  getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &error, &length);
  if (error != 0) {
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c.fd, nullptr);
    close(c.fd);
    c.fd = -1;
    c.want_write = false;
    c.state = ConnState::kDown;
    ++counters_.connect_failures;
    c.retry_at_ns = NowNs() + kReconnectDelayNs;
    if (++c.consecutive_connect_failures >= kMaxConsecutiveConnectFailures) {
      fatal_ = true;
      fatal_message_ = std::string("the server stopped accepting connections: ") + std::strerror(error);
    }
    return;
  }
  WantWrite(c, false);
  c.consecutive_connect_failures = 0;
  c.state = ConnState::kIdle;
  idle_.Push(index);
}

void LoadGenerator::WantWrite(Connection& c, bool want) {
  if (c.want_write == want) return;
  c.want_write = want;
  epoll_event event{};
  event.events = EPOLLIN | EPOLLRDHUP | (want ? uint32_t{EPOLLOUT} : 0u);
  event.data.u64 = static_cast<uint64_t>(&c - connections_.data());
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c.fd, &event);
}

void LoadGenerator::Send(size_t index, uint64_t k, int64_t now_ns) {
  Connection& c = connections_[index];
  c.state = ConnState::kBusy;
  c.request = k;
  c.due_ns = DueNs(k);
  writer_.Build(&c.out);
  c.out_pos = 0;
  c.sent_ns = now_ns;
  Flush(index);
}

void LoadGenerator::Flush(size_t index) {
  Connection& c = connections_[index];
  while (c.out_pos < c.out.size()) {
    const ssize_t n = send(c.fd, c.out.data() + c.out_pos, c.out.size() - c.out_pos, MSG_NOSIGNAL);
    if (n > 0) {
      c.out_pos += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      WantWrite(c, true);
      return;
    }
    Fail(c, Loss::kClosedBeforeAnswer);  // EPIPE or ECONNRESET: the server closed the connection.
    return;
  }
  WantWrite(c, false);
}

void LoadGenerator::Fail(Connection& c, Loss loss) {
  const size_t index = static_cast<size_t>(&c - connections_.data());
  if (c.state == ConnState::kBusy) {
    ++finished_;
    if (Recorded(c.request)) {
      ++counters_.failed;
      ++counters_.losses[static_cast<int>(loss)];
    }
  } else if (loss != Loss::kNone) {
    ++counters_.losses[static_cast<int>(loss)];
  }
  CloseConnection(c);
  ++counters_.reconnects;
  Reconnect(index, NowNs());
}

void LoadGenerator::Finish(Connection& c, int64_t done_ns, int status) {
  ++finished_;
  if (Recorded(c.request)) {
    ++counters_.answers;
    latency_ns_.push_back(done_ns - c.due_ns);
    service_ns_.push_back(done_ns - c.sent_ns);
    send_delay_ns_.push_back(c.sent_ns - c.due_ns);
    last_answer_ns_ = std::max(last_answer_ns_, done_ns);
    if (status != 200) {
      ++counters_.non_200;
      if (counters_.first_bad_status == 0) {
        counters_.first_bad_status = status;
        const size_t body = c.parser.header_bytes();
        counters_.first_bad_body.assign(c.in.data() + body, std::min<size_t>(c.parser.answer_bytes() - body, 300));
      }
    }
  }
  c.state = ConnState::kIdle;
}

void LoadGenerator::OnReadable(size_t index) {
  Connection& c = connections_[index];
  bool closed = false;  // The server closed (or reset) the connection.
  while (true) {
    if (c.in.size() - c.in_size < 16 * 1024) {
      if (c.in.size() >= kMaxAnswerBytes) {
        Fail(c, Loss::kMalformed);
        return;
      }
      c.in.resize(std::max<size_t>(c.in.size() * 2, 64 * 1024));
    }
    const size_t room = c.in.size() - c.in_size;
    const ssize_t n = recv(c.fd, c.in.data() + c.in_size, room, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n <= 0) {
      closed = true;
      break;
    }
    c.in_size += static_cast<size_t>(n);
    // Less than asked for: the socket is drained (level-triggered epoll reports anything that comes later),
    // so skip the recv that would only say EAGAIN.
    if (static_cast<size_t>(n) < room) break;
  }
  if (c.state != ConnState::kBusy) {
    // Bytes nobody asked for mean the framing can no longer be trusted; a close of an idle connection is
    // the server's keep-alive ending.
    if (c.in_size > 0) {
      Fail(c, Loss::kUnexpectedBytes);
    } else if (closed) {
      Fail(c, Loss::kNone);
    }
    return;
  }
  AnswerParser::Progress progress = c.parser.Parse(c.in.data(), c.in_size);
  if (progress == AnswerParser::Progress::kNeedMore && closed && c.parser.EndsAtClose()) {
    c.parser.EndAtClose(c.in_size);  // The close ends a body without a length.
    progress = AnswerParser::Progress::kComplete;
  }
  switch (progress) {
    case AnswerParser::Progress::kNeedMore:
      if (closed) Fail(c, Loss::kClosedBeforeAnswer);
      return;
    case AnswerParser::Progress::kMalformed: Fail(c, Loss::kMalformed); return;
    case AnswerParser::Progress::kComplete: break;
  }
  Finish(c, NowNs(), c.parser.status());
  const bool extra = c.in_size != c.parser.answer_bytes();
  const bool close_after = c.parser.close_after();
  c.in_size = 0;
  c.parser.Reset();
  if (extra) {
    Fail(c, Loss::kUnexpectedBytes);
  } else if (closed || close_after) {
    Fail(c, Loss::kNone);  // The server ends the connection after this answer (its keep-alive limit).
  } else {
    idle_.Push(index);
  }
}

Status LoadGenerator::Wait(int64_t timeout_ns, int* ready) {
  const int max_events = static_cast<int>(events_.size());
  while (true) {
    int n;
    if (have_pwait2_) {
      timespec timeout;
      timespec* timeout_ptr = nullptr;
      if (timeout_ns >= 0) {
        timeout.tv_sec = timeout_ns / kNsPerSec;
        timeout.tv_nsec = timeout_ns % kNsPerSec;
        timeout_ptr = &timeout;
      }
      n = epoll_pwait2(epoll_fd_, events_.data(), max_events, timeout_ptr, nullptr);
      if (n < 0 && errno == ENOSYS) {
        have_pwait2_ = false;
        std::fprintf(stderr, "loadgen: warning: epoll_pwait2 is not available (Linux < 5.11); waits are "
                             "rounded down to milliseconds and the last one spins\n");
        continue;
      }
    } else {
      // Whole milliseconds rounded down; under one millisecond this polls, which spins on a CPU.
      const int timeout_ms = timeout_ns < 0 ? -1 : static_cast<int>(std::min<int64_t>(timeout_ns / 1'000'000, 1000));
      n = epoll_wait(epoll_fd_, events_.data(), max_events, timeout_ms);
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::IoError(std::string("epoll_wait failed: ") + std::strerror(errno));
    *ready = n;
    return Status::Ok();
  }
}

Status LoadGenerator::Run() {
  if (inet_pton(AF_INET, options_.host.c_str(), &address_.sin_addr) != 1) {
    return Status::Invalid("host '" + options_.host + "' is not an IPv4 address");
  }
  address_.sin_family = AF_INET;
  address_.sin_port = htons(static_cast<uint16_t>(options_.port));
  // A 1 ns timer slack: otherwise the kernel may wake us up to 50 us after the due time.
  prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return Status::IoError(std::string("epoll_create1 failed: ") + std::strerror(errno));

  const size_t count = static_cast<size_t>(options_.connections);
  connections_.resize(count);
  idle_.Reset(count);
  events_.resize(std::min<size_t>(count, 1024));
  for (Connection& c : connections_) {
    c.out.reserve(writer_.MaxRequestBytes());
    c.in.resize(64 * 1024);
  }
  FRESHET_RETURN_IF_ERROR(ConnectAllBlocking());

  period_ns_ = static_cast<double>(kNsPerSec) / options_.rate;
  first_recorded_ = static_cast<uint64_t>(std::ceil(options_.warmup_s * options_.rate));
  total_ = static_cast<uint64_t>(std::ceil((options_.warmup_s + options_.duration_s) * options_.rate));
  const size_t recorded = static_cast<size_t>(total_ - first_recorded_);
  latency_ns_.reserve(recorded);
  service_ns_.reserve(recorded);
  send_delay_ns_.reserve(recorded);

  rusage usage_start;
  getrusage(RUSAGE_SELF, &usage_start);
  t0_ns_ = NowNs();
  measure_start_ns_ = DueNs(first_recorded_);
  const int64_t drain_deadline_ns = DueNs(total_) + static_cast<int64_t>(options_.drain_s * kNsPerSec);

  while (finished_ < total_ && !fatal_) {
    int64_t now_ns = NowNs();
    if (now_ns > drain_deadline_ns) break;
    while (due_ < total_ && DueNs(due_) <= now_ns) ++due_;
    int64_t next_retry_ns = INT64_MAX;
    for (size_t i = 0; i < connections_.size(); ++i) {
      Connection& c = connections_[i];
      if (c.state != ConnState::kDown) continue;
      if (c.retry_at_ns <= now_ns) {
        Reconnect(i, now_ns);
      }
      if (c.state == ConnState::kDown) next_retry_ns = std::min(next_retry_ns, c.retry_at_ns);
    }
    while (sent_ < due_ && !idle_.empty()) {
      const size_t index = idle_.Pop();
      Send(index, sent_++, now_ns);
      now_ns = NowNs();
    }
    counters_.max_queue = std::max(counters_.max_queue, due_ - sent_);
    // Sleep until the next request is due (unless requests wait for a connection: then until an answer).
    int64_t wake_ns = drain_deadline_ns;
    if (due_ < total_ && sent_ == due_) wake_ns = DueNs(due_);
    wake_ns = std::min(wake_ns, next_retry_ns);
    const int64_t timeout_ns = std::max<int64_t>(0, wake_ns - NowNs());
    int ready = 0;
    FRESHET_RETURN_IF_ERROR(Wait(timeout_ns, &ready));
    for (int e = 0; e < ready; ++e) {
      const size_t index = events_[static_cast<size_t>(e)].data.u64;
      const uint32_t flags = events_[static_cast<size_t>(e)].events;
      Connection& c = connections_[index];
      if (c.fd < 0) continue;
      if (c.state == ConnState::kConnecting) {
        if (flags & (EPOLLOUT | EPOLLERR | EPOLLHUP)) OnConnected(index);
        continue;
      }
      if ((flags & EPOLLOUT) && c.state == ConnState::kBusy && c.out_pos < c.out.size()) Flush(index);
      if (c.fd >= 0 && (flags & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP))) OnReadable(index);
    }
  }
  const int64_t end_ns = NowNs();
  rusage usage_end;
  getrusage(RUSAGE_SELF, &usage_end);
  auto seconds = [](const timeval& tv) { return static_cast<double>(tv.tv_sec) + tv.tv_usec / 1e6; };
  cpu_s_ = seconds(usage_end.ru_utime) - seconds(usage_start.ru_utime) + seconds(usage_end.ru_stime) -
           seconds(usage_start.ru_stime);
  wall_s_ = static_cast<double>(end_ns - t0_ns_) / 1e9;
  counters_.unanswered = (total_ - first_recorded_) - counters_.answers - counters_.failed;
  if (fatal_) return Status::IoError(fatal_message_ + ServerHint(options_));
  if (counters_.answers == 0) {
    return Status::IoError("no recorded request was answered within --drain " + std::to_string(options_.drain_s) +
                           " s of the end" + ServerHint(options_));
  }
  return Status::Ok();
}

// Nearest-rank percentile of sorted values, in microseconds.
double PercentileUs(const std::vector<int64_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  rank = std::clamp<size_t>(rank, 1, sorted.size());
  return static_cast<double>(sorted[rank - 1]) / 1e3;
}

void LoadGenerator::Report() const {
  std::vector<int64_t> latency = latency_ns_;
  std::vector<int64_t> service = service_ns_;
  std::vector<int64_t> delay = send_delay_ns_;
  std::sort(latency.begin(), latency.end());
  std::sort(service.begin(), service.end());
  std::sort(delay.begin(), delay.end());
  const uint64_t recorded = total_ - first_recorded_;
  // Answers per second over the recorded window, up to the last recorded answer: below --rate when the
  // answers fell behind the schedule.
  const double window_s =
      std::max(options_.duration_s, static_cast<double>(last_answer_ns_ - measure_start_ns_) / 1e9);
  const double achieved = static_cast<double>(counters_.answers) / window_s;
  const uint64_t errors = counters_.non_200 + counters_.failed + counters_.unanswered;
  constexpr double kQuantiles[] = {0.5, 0.9, 0.99, 0.999, 1.0};
  constexpr const char* kNames[] = {"p50", "p90", "p99", "p99.9", "max"};
  constexpr const char* kJsonNames[] = {"p50", "p90", "p99", "p99_9", "max"};
  const std::string kind = options_.batch == 0 ? "GET /v1/features/{entity}"
                                               : "POST /v1/features (" + std::to_string(options_.batch) + " entities)";
  if (options_.json) {
    std::string out = "{\"kind\":\"" + std::string(options_.batch == 0 ? "single" : "batch") +
                      "\",\"batch\":" + std::to_string(options_.batch) +
                      ",\"connections\":" + std::to_string(options_.connections);
    char number[64];
    auto add = [&](const char* name, double value) {
      std::snprintf(number, sizeof(number), ",\"%s\":%.10g", name, std::round(value * 10) / 10);
      out += number;
    };
    add("rate_target", options_.rate);
    add("rate_achieved", achieved);
    add("duration_s", options_.duration_s);
    out += ",\"requests\":" + std::to_string(recorded) +
           ",\"answers\":" + std::to_string(counters_.answers) + ",\"errors\":" + std::to_string(errors) +
           ",\"non_200\":" + std::to_string(counters_.non_200) + ",\"failed\":" + std::to_string(counters_.failed) +
           ",\"unanswered\":" + std::to_string(counters_.unanswered) +
           ",\"reconnects\":" + std::to_string(counters_.reconnects) +
           ",\"connect_failures\":" + std::to_string(counters_.connect_failures) +
           ",\"max_queue\":" + std::to_string(counters_.max_queue);
    add("loadgen_cpu_percent", 100.0 * cpu_s_ / wall_s_);
    const std::pair<const char*, const std::vector<int64_t>*> series[] = {
        {"latency_us", &latency}, {"service_us", &service}, {"send_delay_us", &delay}};
    for (const auto& [name, values] : series) {
      out += std::string(",\"") + name + "\":{";
      for (size_t q = 0; q < std::size(kQuantiles); ++q) {
        std::snprintf(number, sizeof(number), "%s\"%s\":%.1f", q == 0 ? "" : ",", kJsonNames[q],
                      PercentileUs(*values, kQuantiles[q]));
        out += number;
      }
      out += "}";
    }
    out += "}";
    std::printf("%s\n", out.c_str());
  } else {
    std::printf("%s, %d connections, open loop\n", kind.c_str(), options_.connections);
    std::printf("  rate          %.0f req/s requested, %.1f req/s answered\n", options_.rate, achieved);
    std::printf("  requests      %llu recorded over %.1f s (after %.1f s of warmup)\n",
                static_cast<unsigned long long>(recorded), options_.duration_s, options_.warmup_s);
    std::printf("  errors        %llu (non-200 %llu, connection lost %llu, unanswered %llu)\n",
                static_cast<unsigned long long>(errors), static_cast<unsigned long long>(counters_.non_200),
                static_cast<unsigned long long>(counters_.failed),
                static_cast<unsigned long long>(counters_.unanswered));
    std::printf("  reconnects    %llu (server closes; %llu failed connects); at most %llu requests waited for a connection\n",
                static_cast<unsigned long long>(counters_.reconnects),
                static_cast<unsigned long long>(counters_.connect_failures),
                static_cast<unsigned long long>(counters_.max_queue));
    std::printf("  loadgen CPU   %.0f%% of one core\n", 100.0 * cpu_s_ / wall_s_);
    std::printf("  %-6s %14s %14s %14s\n", "", "latency", "service time", "send delay");
    for (size_t q = 0; q < std::size(kQuantiles); ++q) {
      std::printf("  %-6s %11.3f ms %11.3f ms %11.3f ms\n", kNames[q], PercentileUs(latency, kQuantiles[q]) / 1e3,
                  PercentileUs(service, kQuantiles[q]) / 1e3, PercentileUs(delay, kQuantiles[q]) / 1e3);
    }
  }
  for (int loss = 1; loss < static_cast<int>(Loss::kCount); ++loss) {
    if (counters_.losses[loss] > 0) {
      std::fprintf(stderr, "loadgen: %llu connections ended early: %s\n",
                   static_cast<unsigned long long>(counters_.losses[loss]), kLossNames[loss]);
    }
  }
  if (counters_.first_bad_status != 0) {
    std::fprintf(stderr, "loadgen: first error: status %d: %s\n", counters_.first_bad_status,
                 counters_.first_bad_body.c_str());
  }
}

}  // namespace
}  // namespace freshet

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "-h") == 0 || std::strcmp(argv[i], "--help") == 0) {
      std::fputs(freshet::kUsage, stdout);
      return 0;
    }
  }
  freshet::Result<freshet::Options> options = freshet::ParseArgs(argc, argv);
  if (!options.ok()) {
    std::fprintf(stderr, "loadgen: %s\n%s", options.status().message().c_str(), freshet::kUsage);
    return 2;
  }
  freshet::LoadGenerator generator(*options);
  const freshet::Status status = generator.Run();
  if (!status.ok()) {
    std::fprintf(stderr, "loadgen: %s\n", status.message().c_str());
    return 1;
  }
  generator.Report();
  return 0;
}

#include "serve/http_loop.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include <absl/container/flat_hash_map.h>

#include "common/text.h"

namespace freshet {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kMaxRequestLineBytes = 8192;
constexpr size_t kMaxHeaderBytes = 64 * 1024;
constexpr size_t kMaxHeaderFields = 100;
// How far past the body limit a refused body is still read and discarded to keep its connection usable.
constexpr size_t kMaxDrainBytes = size_t{64} << 20;
// Bytes read from one connection per wake-up before the loop turns to the others.
constexpr size_t kMaxReadPerWake = size_t{1} << 20;
// Answers queued on a connection before it stops taking more requests until they are sent.
constexpr size_t kMaxPendingOutput = 256 * 1024;
// Smallest free space offered to recv straight into a connection's buffer; with less room, recv goes to the
// loop's scratch buffer and only the bytes received are copied, so that a connection holds memory in
// proportion to what it sent (a slow client's few bytes, not a 16 KiB buffer each). A buffer left empty
// between requests is kept up to this size and freed when larger.
constexpr size_t kReadChunk = 16 * 1024;
constexpr size_t kScratchBytes = 64 * 1024;
// Smallest buffer allocated for a connection that has sent something.
constexpr size_t kMinBuffer = 1024;
// Descriptors kept out of the connection cap for the rest of the process (checkpoints, offline Parquet files,
// dead letters, the ingest log, Redis and Kafka): this many, or a quarter of a smaller open-file limit.
constexpr rlim_t kReservedDescriptors = 64;
// How long the listening socket is left unwatched after accept failed for lack of descriptors or memory:
// watching it at once would wake the loop again and again for a connection it cannot take.
constexpr auto kAcceptPause = std::chrono::milliseconds(100);
// Connections accepted over the cap in one wake-up, before the ones they replace are closed.
constexpr size_t kMaxOverCapPerWake = 8;
// Freed buffer bytes after which a loop asks malloc to give free memory back to the system (on its next
// timer tick). glibc keeps freed memory of its arenas (a freed 8 MiB body included, once the dynamic mmap
// threshold has grown past it), so without this the resident size stays at its peak after a burst of
// large bodies.
constexpr size_t kTrimAfterFreedBytes = size_t{8} << 20;
// Only frees at least this large count toward kTrimAfterFreedBytes: malloc reuses small buffers by itself, and
// trimming a heap of gigabytes (a loaded `freshet run`) on an event loop every few seconds for them showed as
// millisecond spikes in the p99 of 20,000 lookups/s.
constexpr size_t kTrimMinFreeBytes = size_t{256} << 10;
// How long a closing connection is read and discarded after its last answer, so that the client receives
// the answer instead of a reset caused by unread data.
constexpr auto kLingerTime = std::chrono::seconds(2);
// How often each loop looks for connections past their deadline.
constexpr int kTimerTickMs = 200;

// True when the request line at the front of `buffered` (complete, or still arriving) is longer than
// kMaxRequestLineBytes, not counting its line end. Looks at no more than the limit's worth of bytes.
bool RequestLineTooLong(std::string_view buffered) {
  const size_t newline = buffered.substr(0, kMaxRequestLineBytes + 2).find('\n');
  size_t length = newline == std::string_view::npos ? buffered.size() : newline;
  // A '\r' just before the newline (or last in the buffer, where the newline may follow) ends the line.
  if (length > 0 && buffered[length - 1] == '\r') --length;
  return length > kMaxRequestLineBytes;
}

constexpr std::string_view kRequestLineTooLong =
    "the request line is longer than 8192 bytes; shorten the URI";
constexpr std::string_view kHeadersTooLarge = "the request headers are larger than 65536 bytes";

// True when the comma-separated header value lists `token` (case-insensitive), as Connection does.
bool ListsToken(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    const size_t comma = value.find(',');
    if (EqualsIgnoreCase(TrimBlanks(value.substr(0, comma)), token)) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

bool IsTokenChar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool IsToken(std::string_view text) { return !text.empty() && std::all_of(text.begin(), text.end(), IsTokenChar); }

const char* ReasonPhrase(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return status < 400 ? "OK" : (status < 500 ? "Bad Request" : "Internal Server Error");
  }
}

// Runs handlers that may block, first come first served.
class BlockingPool {
 public:
  explicit BlockingPool(int threads) {
    for (int k = 0; k < threads; ++k) threads_.emplace_back([this] { Run(); });
  }
  ~BlockingPool() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& thread : threads_) thread.join();
  }
  void Submit(std::function<void()> job) {
    {
      std::lock_guard lock(mutex_);
      jobs_.push_back(std::move(job));
    }
    wake_.notify_one();
  }

 private:
  void Run() {
    while (true) {
      std::function<void()> job;
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [this] { return stop_ || !jobs_.empty(); });
        if (jobs_.empty()) return;  // Stopping, with nothing left to run.
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> jobs_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// Where a connection is in its current request.
enum class Phase {
  kHeaders,   // Waiting for a request's header section (or idle between requests when nothing is buffered).
  kBody,      // Reading a Content-Length body.
  kChunked,   // Reading a chunked body.
  kAwaiting,  // The request is on the blocking pool; nothing more is read until its answer is queued.
  kClosing,   // The last answer is sent and the sending side shut; reading and discarding until the peer closes.
};

enum class ChunkState { kSize, kData, kDataEnd, kTrailers };

// A byte buffer whose growth leaves the new bytes untouched (std::vector would zero them): the memory of a
// body buffer sized for its Content-Length is committed as the body arrives, not for a client that announces
// 8 MiB and sends nothing.
class ByteBuffer {
 public:
  char* data() { return bytes_.get(); }
  const char* data() const { return bytes_.get(); }
  size_t size() const { return size_; }
  // Replaces the buffer with one of `size` bytes that starts with the first `keep` bytes of this one.
  void Reallocate(size_t size, size_t keep) {
    std::unique_ptr<char[]> bytes(size > 0 ? new char[size] : nullptr);
    if (keep > 0) std::memcpy(bytes.get(), bytes_.get(), keep);
    bytes_ = std::move(bytes);
    size_ = size;
  }
  void Release() { Reallocate(0, 0); }

 private:
  std::unique_ptr<char[]> bytes_;
  size_t size_ = 0;
};

// Counters and load shared by the loops of one HttpLoop (see HttpLoopStats).
struct SharedState {
  int max_connections = 0;  // Effective, set by Start.
  int over_cap_allowance = 0;  // kMaxOverCapPerWake per loop, set by Start.
  std::atomic<int> open_connections{0};
  std::atomic<int64_t> buffered_bytes{0};
  std::atomic<uint64_t> accept_pauses{0};
  std::atomic<uint64_t> connections_shed{0};
  std::atomic<uint64_t> connections_refused{0};
  std::atomic<uint64_t> header_timeouts{0};
  std::atomic<uint64_t> body_timeouts{0};
  std::atomic<uint64_t> budget_refusals{0};
};

struct Connection {
  int fd = -1;
  // Received bytes are in[in_begin, in_end); the current request starts at in_begin. Offsets below are
  // relative to in_begin, which only moves when a request is done (or the buffer is compacted to its front).
  ByteBuffer in;
  size_t in_begin = 0;
  size_t in_end = 0;
  std::string out;
  size_t out_pos = 0;
  uint32_t registered = 0;  // The epoll events asked for; 0 when not in the epoll set.
  // For progress: io_timeout_sec after the last byte moved (or the keep-alive timeout when idle).
  Clock::time_point deadline;
  // When the current request's header section must be complete; max while idle between requests.
  Clock::time_point head_deadline = Clock::time_point::max();
  Clock::time_point body_start;  // When the current request's headers were complete.
  // Bytes of buffers (`in`, `chunked_body`) counted in the loops' shared budget.
  size_t charged = 0;
  // In its loop's list of connections waiting for a request (idle, or its header section arriving), oldest
  // first: the candidates for shedding at the connection cap.
  bool waiting = false;
  Connection* wait_prev = nullptr;
  Connection* wait_next = nullptr;
  bool peer_closed = false;
  bool close_after = false;  // Close once the answers queued now are sent.

  Phase phase = Phase::kHeaders;
  size_t header_scan = 0;  // Where the search for the end of the headers goes on.
  size_t header_end = 0;   // Length of the header section, blank line included.
  HttpRequest request;     // Parsed headers; views into `in` (re-pointed if the buffer moves).
  bool keep_alive = true;
  bool expect_continue = false;
  uint64_t content_length = 0;
  // Bytes of the dispatched request's body still in the buffer after its headers (0 for a chunked body,
  // whose raw bytes are dropped as they are decoded).
  size_t body_in_buffer = 0;
  // Body bytes (de-chunked) received so far, kept ones and discarded ones.
  uint64_t body_received = 0;
  bool too_large = false;
  std::string chunked_body;
  ChunkState chunk_state = ChunkState::kSize;
  uint64_t chunk_remaining = 0;
  size_t chunk_pos = 0;  // Offset of the first raw byte of the chunked body not yet decoded.
  size_t trailer_bytes = 0;

  size_t buffered() const { return in_end - in_begin; }
  const char* data() const { return in.data() + in_begin; }
};

// The header section [0, length) of the buffer, parsed into `request`, or the refusal.
struct ParseOutcome {
  int status = 0;  // 0 when parsed.
  std::string message;
};

ParseOutcome ParseHeaderSection(std::string_view section, HttpRequest* request) {
  request->method = {};
  request->target = {};
  request->headers.clear();
  size_t pos = 0;
  auto next_line = [&section, &pos]() {
    const size_t newline = section.find('\n', pos);
    std::string_view line = section.substr(pos, newline - pos);
    pos = newline == std::string_view::npos ? section.size() : newline + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    return line;
  };
  // StepHeaders has skipped any blank lines before the request line.
  std::string_view line = next_line();
  if (line.size() > kMaxRequestLineBytes) return {414, std::string(kRequestLineTooLong)};
  const size_t first_space = line.find(' ');
  const size_t last_space = line.rfind(' ');
  if (first_space == std::string_view::npos || first_space == last_space) {
    return {400, "malformed request line " + QuotedForMessage(line) + "; send 'METHOD /path HTTP/1.1'"};
  }
  const std::string_view method = line.substr(0, first_space);
  const std::string_view target = line.substr(first_space + 1, last_space - first_space - 1);
  const std::string_view version = line.substr(last_space + 1);
  if (!IsToken(method)) return {400, "malformed request method " + QuotedForMessage(method)};
  request->method = method;
  if (target.empty() || std::any_of(target.begin(), target.end(), [](char c) {
        return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f;
      })) {
    return {400, "malformed request target " + QuotedForMessage(target) + "; percent-encode spaces and control characters"};
  }
  request->target = target;
  if (version == "HTTP/1.1") {
    request->minor_version = 1;
  } else if (version == "HTTP/1.0") {
    request->minor_version = 0;
  } else {
    return {400, "HTTP version " + QuotedForMessage(version) + " is not supported; send HTTP/1.1"};
  }
  while (pos < section.size()) {
    line = next_line();
    if (line.empty()) break;
    if (line.front() == ' ' || line.front() == '\t') {
      return {400, "folded header lines are not accepted; put each header on one line"};
    }
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos || !IsToken(line.substr(0, colon))) {
      return {400, "malformed header line " + QuotedForMessage(line) + "; send 'Name: value'"};
    }
    const std::string_view value = TrimBlanks(line.substr(colon + 1));
    if (std::any_of(value.begin(), value.end(), [](char c) {
          return (static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f;
        })) {
      return {400, "header " + QuotedForMessage(line.substr(0, colon)) + " has control characters in its value"};
    }
    if (request->headers.size() == kMaxHeaderFields) {
      return {431, "the request has more than " + std::to_string(kMaxHeaderFields) + " header fields"};
    }
    request->headers.emplace_back(line.substr(0, colon), value);
  }
  return {};
}

// Why the body of a parsed request cannot be delimited safely ("" when it can), with its length or chunking.
std::string Framing(const HttpRequest& request, uint64_t* content_length, bool* chunked) {
  *content_length = 0;
  *chunked = false;
  const size_t lengths = request.HeaderCount("Content-Length");
  const size_t encodings = request.HeaderCount("Transfer-Encoding");
  if (lengths > 1) return "the request has several Content-Length headers; send one";
  if (encodings > 0) {
    const std::string_view encoding = request.Header("Transfer-Encoding");
    if (encodings > 1 || !EqualsIgnoreCase(encoding, "chunked")) {
      return "Transfer-Encoding " + QuotedForMessage(encoding) +
             " is not supported; send the body with Content-Length or Transfer-Encoding: chunked";
    }
    *chunked = true;
  }
  if (lengths == 1) {
    const std::string_view length = request.Header("Content-Length");
    auto [end, ec] = std::from_chars(length.data(), length.data() + length.size(), *content_length);
    if (length.empty() || length.find_first_not_of("0123456789") != std::string_view::npos) {
      return "Content-Length " + QuotedForMessage(length) + " is not a number of bytes";
    }
    if (ec != std::errc() || end != length.data() + length.size()) *content_length = UINT64_MAX;  // Too large.
    if (*chunked) return "the request has both Content-Length and Transfer-Encoding; send one";
  }
  if (!MethodTakesBody(request.method) && (*chunked || *content_length > 0)) {
    return std::string(request.method) +
           " requests take no body; put parameters in the query string, or use POST /v1/features for a JSON "
           "request";
  }
  return "";
}

class Loop {
 public:
  Loop(HttpHandler& handler, const HttpLoopOptions& options, BlockingPool& pool, SharedState& shared)
      : handler_(handler),
        options_(options),
        pool_(pool),
        shared_(shared),
        scratch_(new char[kScratchBytes]) {}
  ~Loop() {
    for (const Adoption& adoption : adopted_) {  // Handed over by a sibling as this loop stopped.
      ::close(adoption.fd);
      shared_.open_connections.fetch_sub(1);
    }
    if (epoll_fd_ >= 0) ::close(epoll_fd_);
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }

  // `siblings` holds every loop, this one at `index`.
  Status Init(int listen_fd, std::vector<std::unique_ptr<Loop>>* siblings, size_t index) {
    listen_fd_ = listen_fd;
    siblings_ = siblings;
    index_ = index;
    epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (epoll_fd_ < 0 || wake_fd_ < 0) return Status::IoError(std::string("cannot create an epoll set: ") + std::strerror(errno));
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.ptr = &wake_fd_;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &event) != 0) {
      return Status::IoError(std::string("cannot watch the wake-up descriptor: ") + std::strerror(errno));
    }
    // Only one waiting loop is woken per new connection; it hands the connections out in turn.
    event.events = EPOLLIN | EPOLLEXCLUSIVE;
    event.data.ptr = &listen_fd_;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &event) != 0) {
      return Status::IoError(std::string("cannot watch the listening socket: ") + std::strerror(errno));
    }
    return Status::Ok();
  }

  void StartThread() { thread_ = std::thread([this] { Run(); }); }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  void RequestStop() {
    stop_requested_.store(true);
    Wake();
  }

  // Called from another loop: serve this accepted socket. With `shed_tries` > 0 the connections are at the
  // cap (this one counted): see PlaceOverCap.
  void Adopt(int fd, int shed_tries = 0) {
    {
      std::lock_guard lock(mutex_);
      adopted_.push_back({fd, shed_tries});
    }
    Wake();
  }

  // Called from the blocking pool: the answer to `connection`'s request that was handed over.
  void Complete(Connection* connection, HttpResponse response) {
    {
      std::lock_guard lock(mutex_);
      completions_.emplace_back(connection, std::move(response));
    }
    Wake();
  }

 private:
  void Wake() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t written = ::write(wake_fd_, &one, sizeof(one));
  }

  void Run() {
    std::vector<epoll_event> events(256);
    Clock::time_point next_tick = Clock::now() + std::chrono::milliseconds(kTimerTickMs);
    while (true) {
      int timeout_ms = kTimerTickMs;
      if (accept_paused_) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(accept_resume_ - Clock::now()).count();
        timeout_ms = static_cast<int>(std::clamp<int64_t>(left, 0, kTimerTickMs));
      }
      const int ready = ::epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()), timeout_ms);
      now_ = Clock::now();
      for (int k = 0; k < ready; ++k) {
        void* tag = events[k].data.ptr;
        if (tag == &wake_fd_) {
          uint64_t count;
          [[maybe_unused]] ssize_t read = ::read(wake_fd_, &count, sizeof(count));
          continue;
        }
        if (tag == &listen_fd_) {
          AcceptAll();
          continue;
        }
        OnEvents(static_cast<Connection*>(tag), events[k].events);
      }
      AdmitOverCap();
      TakeMail();
      if (stop_requested_.load() && !stopping_) BeginStop();
      if (accept_paused_ && now_ >= accept_resume_ && !stopping_) ResumeAccepting();
      if (now_ >= next_tick) {
        next_tick = now_ + std::chrono::milliseconds(kTimerTickMs);
        ExpireDeadlines();
        if (freed_since_trim_ >= kTrimAfterFreedBytes) {
          freed_since_trim_ = 0;
          ::malloc_trim(0);
        }
      }
      if (stopping_ && (connections_.empty() || (now_ >= stop_deadline_ && ForceClose()))) break;
    }
  }

  void TakeMail() {
    std::vector<Adoption> adopted;
    std::vector<std::pair<Connection*, HttpResponse>> completions;
    {
      std::lock_guard lock(mutex_);
      adopted.swap(adopted_);
      completions.swap(completions_);
    }
    for (const Adoption& adoption : adopted) {
      if (adoption.shed_tries > 0) PlaceOverCap(adoption.fd, adoption.shed_tries);
      else AddConnection(adoption.fd);
    }
    for (auto& [connection, response] : completions) {
      FinishRequest(connection, std::move(response));
      Process(connection);
    }
  }

  void AcceptAll() {
    if (stopping_ || accept_paused_) return;
    for (int k = 0; k < 64; ++k) {
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        // Out of descriptors or memory: the connection stays queued and the listening socket readable, so
        // watching it would wake this loop at once, again and again, for nothing. Look away for a while;
        // descriptors come back as connections close.
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) PauseAccepting();
        return;  // EAGAIN: another loop took it, or none left; other errors: the client went away.
      }
      const int yes = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));
      if (shared_.open_connections.fetch_add(1) >= shared_.max_connections) {
        // At the cap. Not shed now: the events of this wake-up may name the connection that would be closed.
        // Until then each holds a descriptor beyond the cap, out of the reserve: take a few only per wake-up.
        over_cap_.push_back(fd);
        if (over_cap_.size() >= kMaxOverCapPerWake) return;
        continue;
      }
      Loop* target = (*siblings_)[next_sibling_++ % siblings_->size()].get();
      if (target == this) AddConnection(fd);
      else target->Adopt(fd);
    }
  }

  // Hands out the connections accepted over the cap in turn, as any other, so that every loop sheds its own
  // longest-waiting connections at the same pace and those shed are about the oldest of all.
  void AdmitOverCap() {
    const int loops = static_cast<int>(siblings_->size());
    for (int fd : over_cap_) {
      Loop* target = (*siblings_)[next_sibling_++ % siblings_->size()].get();
      if (target == this) PlaceOverCap(fd, loops);
      else target->Adopt(fd, loops);
    }
    over_cap_.clear();
  }

  // Admits a connection over the cap in place of the connection here that has waited longest for a request;
  // with none, lets the next loop try (`tries` loops in all), and the last closes it.
  void PlaceOverCap(int fd, int tries) {
    if (ShedOne()) {
      AddConnection(fd);
    } else if (tries > 1) {
      (*siblings_)[(index_ + 1) % siblings_->size()]->Adopt(fd, tries - 1);
    } else {
      RefuseConnection(fd);
    }
  }

  void PauseAccepting() {
    if (accept_paused_) return;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
    accept_paused_ = true;
    accept_resume_ = now_ + kAcceptPause;
    shared_.accept_pauses.fetch_add(1, std::memory_order_relaxed);
  }

  void ResumeAccepting() {
    accept_paused_ = false;
    epoll_event event{};
    event.events = EPOLLIN | EPOLLEXCLUSIVE;
    event.data.ptr = &listen_fd_;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &event);
  }

  // At the cap: closes the connection of this loop that has waited longest for a request (idle between
  // requests, or its header section still arriving) with nothing left to send. False when there is none.
  bool ShedOne() {
    // Connections with answers still going out are skipped; look at a bounded number so that a crowd of
    // them cannot make each new connection cost a walk over all the others.
    int looked = 0;
    for (Connection* c = waiting_first_; c != nullptr && looked < 64; c = c->wait_next, ++looked) {
      if (c->out_pos < c->out.size() || c->close_after) continue;
      shared_.connections_shed.fetch_add(1, std::memory_order_relaxed);
      Close(c);
      return true;
    }
    return false;
  }

  // A new connection over the cap that nothing could make room for.
  void RefuseConnection(int fd) {
    shared_.connections_refused.fetch_add(1, std::memory_order_relaxed);
    ::close(fd);
    shared_.open_connections.fetch_sub(1);
  }

  void AddConnection(int fd) {
    if (stopping_) {
      ::close(fd);
      shared_.open_connections.fetch_sub(1);
      return;
    }
    auto connection = std::make_unique<Connection>();
    connection->fd = fd;
    connection->deadline = now_ + std::chrono::seconds(options_.io_timeout_sec);
    connection->head_deadline = now_ + std::chrono::seconds(options_.header_timeout_sec);
    Connection* raw = connection.get();
    connections_.emplace(raw, std::move(connection));
    LinkWaiting(raw);
    SetInterest(raw, EPOLLIN);
  }

  void Close(Connection* connection) {
    if (connection->registered != 0) ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, connection->fd, nullptr);
    ::close(connection->fd);
    shared_.open_connections.fetch_sub(1);
    UnlinkWaiting(connection);
    if (connection->charged >= kTrimMinFreeBytes) freed_since_trim_ += connection->charged;
    shared_.buffered_bytes.fetch_sub(static_cast<int64_t>(connection->charged));
    connections_.erase(connection);
  }

  // Appends `c` (now waiting for a request) to the waiting list; its place says how long it has waited.
  void LinkWaiting(Connection* c) {
    if (c->waiting) return;
    c->waiting = true;
    c->wait_prev = waiting_last_;
    c->wait_next = nullptr;
    if (waiting_last_ != nullptr) waiting_last_->wait_next = c;
    else waiting_first_ = c;
    waiting_last_ = c;
  }

  void UnlinkWaiting(Connection* c) {
    if (!c->waiting) return;
    c->waiting = false;
    if (c->wait_prev != nullptr) c->wait_prev->wait_next = c->wait_next;
    else waiting_first_ = c->wait_next;
    if (c->wait_next != nullptr) c->wait_next->wait_prev = c->wait_prev;
    else waiting_last_ = c->wait_prev;
    c->wait_prev = c->wait_next = nullptr;
  }

  // Brings the shared count of buffered bytes up to date with `c`'s buffers.
  void Recharge(Connection* c) {
    const size_t held = c->in.size() + c->chunked_body.capacity();
    if (held == c->charged) return;
    if (held + kTrimMinFreeBytes <= c->charged) freed_since_trim_ += c->charged - held;
    shared_.buffered_bytes.fetch_add(static_cast<int64_t>(held) - static_cast<int64_t>(c->charged));
    c->charged = held;
  }

  // True when `extra` more buffered bytes stay within the budget.
  bool Affordable(size_t extra) const {
    return static_cast<uint64_t>(std::max<int64_t>(shared_.buffered_bytes.load(), 0)) + extra <=
           options_.max_buffered_request_bytes;
  }

  void SetInterest(Connection* connection, uint32_t events) {
    if (connection->registered == events) return;
    epoll_event event{};
    event.events = events;
    event.data.ptr = connection;
    const int op = events == 0 ? EPOLL_CTL_DEL : (connection->registered == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD);
    ::epoll_ctl(epoll_fd_, op, connection->fd, events == 0 ? nullptr : &event);
    connection->registered = events;
  }

  void OnEvents(Connection* connection, uint32_t events) {
    if (events & EPOLLOUT) {
      if (!Flush(connection)) return;
    }
    if (connection->phase == Phase::kAwaiting) {
      // Its handler reads the buffer: nothing is read until it is done. A hung-up peer is closed after.
      if (events & (EPOLLHUP | EPOLLERR)) {
        connection->peer_closed = true;
        SetInterest(connection, 0);
      }
      return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
      if (!Read(connection)) return;
    }
    Process(connection);
  }

  // Reads what the socket has (up to kMaxReadPerWake). False when the connection was closed.
  bool Read(Connection* c) {
    size_t total = 0;
    while (total < kMaxReadPerWake) {
      if (c->phase == Phase::kClosing) c->in_begin = c->in_end = 0;  // Discarded.
      // Straight into the buffer when it has room (a body buffer sized for its Content-Length); otherwise
      // into the scratch buffer, and only what arrived is kept.
      const size_t room = c->in.size() - c->in_end;
      const bool direct = room >= kReadChunk;
      char* into = direct ? c->in.data() + c->in_end : scratch_.get();
      const size_t capacity = direct ? room : kScratchBytes;
      const ssize_t n = ::recv(c->fd, into, capacity, 0);
      if (n > 0) {
        if (direct) c->in_end += static_cast<size_t>(n);
        else if (c->phase != Phase::kClosing) Append(c, scratch_.get(), static_cast<size_t>(n));
        total += static_cast<size_t>(n);
        if (static_cast<size_t>(n) < capacity) break;
        continue;
      }
      if (n == 0) {
        c->peer_closed = true;
        break;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      Close(c);  // Reset by the peer, or another error: nothing can be answered.
      return false;
    }
    if (total > 0 && c->phase != Phase::kClosing) c->deadline = now_ + std::chrono::seconds(options_.io_timeout_sec);
    if (total > 0 && c->phase == Phase::kHeaders && c->head_deadline == Clock::time_point::max()) {
      // The first bytes of a request after an idle spell: its header section must be complete in time.
      c->head_deadline = now_ + std::chrono::seconds(options_.header_timeout_sec);
    }
    if (c->phase == Phase::kClosing) {
      c->in_begin = c->in_end = 0;
      if (c->peer_closed) {
        Close(c);
        return false;
      }
    }
    return true;
  }

  // Appends `size` received bytes to the connection's buffer.
  void Append(Connection* c, const char* bytes, size_t size) {
    if (c->in.size() - c->in_end < size) MakeRoom(c, size);
    std::memcpy(c->in.data() + c->in_end, bytes, size);
    c->in_end += size;
  }

  // Makes at least `room` bytes free at the end of the buffer, moving the current request to its front, or
  // growing it (at least doubling, so that a request arriving in small pieces is copied a few times only);
  // with `exact`, to exactly `room` bytes past the current request (a body whose length is known).
  void MakeRoom(Connection* c, size_t room, bool exact = false) {
    if (c->in_begin > 0) {
      const size_t length = c->buffered();
      std::memmove(c->in.data(), c->in.data() + c->in_begin, length);
      c->in_begin = 0;
      c->in_end = length;
      RepointRequest(c);
    }
    if (c->in.size() - c->in_end < room) {
      const size_t size =
          exact ? c->in_end + room : std::max({c->in.size() * 2, c->in_end + room, kMinBuffer});
      c->in.Reallocate(size, c->in_end);
      RepointRequest(c);
      Recharge(c);
    }
  }

  // After the buffer moved: parse the current request's headers again so that its views point into it.
  void RepointRequest(Connection* c) {
    if (c->phase == Phase::kBody || c->phase == Phase::kChunked) {
      ParseHeaderSection(std::string_view(c->data(), c->header_end), &c->request);
    }
  }

  // Parses and answers the requests buffered on `c`, in order, until one is incomplete or must wait; then sends.
  void Process(Connection* c) {
    while (true) {
      bool output_full = false;
      while (c->phase != Phase::kAwaiting && c->phase != Phase::kClosing && !c->close_after) {
        if (c->out.size() - c->out_pos >= kMaxPendingOutput) {
          output_full = true;
          break;
        }
        if (!Step(c)) break;
      }
      if (c->phase == Phase::kAwaiting) {
        // The answers before it go out now; Flush stops reading (level-triggered readiness would wake the loop
        // for data it must not read yet) and watches for room to write only when the socket is full.
        Flush(c);
        return;
      }
      if (!Flush(c)) return;
      if (c->phase == Phase::kClosing) return;
      // All sent at once: go on with the requests that waited for room.
      if (output_full && c->out.empty()) continue;
      if (c->peer_closed && c->out.empty()) {
        // The client sent all it will; what is left in the buffer can never be a whole request.
        Close(c);
      }
      return;
    }
  }

  // Advances the current request by what is buffered. True when it completed (and another may follow).
  bool Step(Connection* c) {
    switch (c->phase) {
      case Phase::kHeaders: return StepHeaders(c);
      case Phase::kBody: return StepBody(c);
      case Phase::kChunked: return StepChunked(c);
      case Phase::kAwaiting:
      case Phase::kClosing: return false;
    }
    return false;
  }

  bool StepHeaders(Connection* c) {
    // Blank lines before a request line are skipped (RFC 9112 section 2.2).
    while (c->buffered() > 0 && (c->data()[0] == '\r' || c->data()[0] == '\n')) ++c->in_begin;
    const std::string_view buffered(c->data(), c->buffered());
    if (buffered.empty()) return false;
    // The header section ends at the first blank line ("\r\n\r\n" or "\n\n").
    size_t end = std::string_view::npos;
    size_t newline = buffered.find('\n', c->header_scan);
    for (; newline != std::string_view::npos; newline = buffered.find('\n', newline + 1)) {
      if (newline + 1 < buffered.size() && buffered[newline + 1] == '\n') {
        end = newline + 2;
        break;
      }
      if (newline + 2 < buffered.size() && buffered[newline + 1] == '\r' && buffered[newline + 2] == '\n') {
        end = newline + 3;
        break;
      }
      if (newline + 2 >= buffered.size()) break;  // Look at this line end again when more has arrived.
    }
    if (end == std::string_view::npos) {
      c->header_scan = newline != std::string_view::npos ? newline : buffered.size();
      // Over a limit, whatever has arrived of the request: 414 when the request line is too long (even
      // when the headers are too), 431 when only the header section is.
      if (RequestLineTooLong(buffered)) return Refuse(c, 414, kRequestLineTooLong);
      if (buffered.size() > kMaxHeaderBytes) return Refuse(c, 431, kHeadersTooLarge);
      return false;
    }
    c->header_scan = 0;
    c->header_end = end;
    c->request.start = now_;
    c->request.body = {};
    UnlinkWaiting(c);  // No longer waiting for a request: it has one.
    c->head_deadline = Clock::time_point::max();
    c->body_start = now_;
    if (RequestLineTooLong(buffered)) return Refuse(c, 414, kRequestLineTooLong);
    if (end > kMaxHeaderBytes) return Refuse(c, 431, kHeadersTooLarge);
    ParseOutcome parsed = ParseHeaderSection(buffered.substr(0, end), &c->request);
    if (parsed.status != 0) return Refuse(c, parsed.status, parsed.message);
    bool chunked = false;
    if (std::string problem = Framing(c->request, &c->content_length, &chunked); !problem.empty()) {
      return Refuse(c, 400, problem);
    }
    const HttpRequest& request = c->request;
    const std::string_view connection_header = request.Header("Connection");
    c->keep_alive = request.minor_version >= 1 ? !ListsToken(connection_header, "close")
                                               : ListsToken(connection_header, "keep-alive");
    c->expect_continue = request.minor_version >= 1 && (chunked || c->content_length > 0) &&
                         EqualsIgnoreCase(request.Header("Expect"), "100-continue");
    c->body_received = 0;
    c->too_large = false;
    if (chunked) {
      c->phase = Phase::kChunked;
      c->chunk_state = ChunkState::kSize;
      c->chunk_pos = end;
      c->trailer_bytes = 0;
      c->chunked_body.clear();
    } else {
      c->phase = Phase::kBody;
      if (c->content_length > options_.max_body_bytes) {
        c->too_large = true;
        // Too much to read and throw away, or the client is waiting to hear before sending it: answer now.
        if (c->expect_continue || c->content_length - options_.max_body_bytes > kMaxDrainBytes) {
          return Refuse(c, 413, TooLargeMessage());
        }
      } else if (const size_t whole = end + c->content_length; c->in.size() - c->in_begin < whole) {
        // Room for the whole body at once, within the budget: buffered bodies cannot then outgrow it as they
        // arrive, and the buffer is not copied as it grows.
        if (!Affordable(whole - (c->in.size() - c->in_begin))) return RefuseOverBudget(c);
        MakeRoom(c, whole - c->buffered(), /*exact=*/true);
      }
    }
    if (c->expect_continue && c->buffered() == end) c->out.append("HTTP/1.1 100 Continue\r\n\r\n");
    return c->phase == Phase::kBody ? StepBody(c) : StepChunked(c);
  }

  std::string TooLargeMessage() const {
    return "the request body is larger than the limit of " + std::to_string(options_.max_body_bytes) +
           " bytes; split it into smaller requests";
  }

  bool StepBody(Connection* c) {
    if (c->too_large) {
      // Discard the body as it arrives, keeping any pipelined bytes after it.
      const size_t available = c->buffered() - c->header_end;
      const uint64_t take = std::min<uint64_t>(available, c->content_length - c->body_received);
      char* body = c->in.data() + c->in_begin + c->header_end;
      std::memmove(body, body + take, available - take);
      c->in_end -= take;
      c->body_received += take;
      if (c->body_received < c->content_length) return false;
      return Refuse(c, 413, TooLargeMessage(), /*keep_open=*/true);
    }
    if (c->buffered() - c->header_end < c->content_length) return false;
    c->request.body = std::string_view(c->data() + c->header_end, c->content_length);
    c->body_in_buffer = c->content_length;
    return Dispatch(c);
  }

  bool StepChunked(Connection* c) {
    const char* base = c->data();
    const size_t end = c->buffered();
    const auto malformed = [this, c] {
      return Refuse(c, 400, "malformed chunked encoding in the request body; send hexadecimal chunk sizes, each "
                            "line ended by CRLF, and a final 0-size chunk");
    };
    bool done = false;
    while (!done) {
      switch (c->chunk_state) {
        case ChunkState::kSize: {
          const void* found = std::memchr(base + c->chunk_pos, '\n', end - c->chunk_pos);
          if (found == nullptr) {
            if (end - c->chunk_pos > 1024) return malformed();
            goto need_more;
          }
          const size_t newline = static_cast<size_t>(static_cast<const char*>(found) - base);
          std::string_view line(base + c->chunk_pos, newline - c->chunk_pos);
          if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
          line = TrimBlanks(line.substr(0, line.find(';')));
          uint64_t size = 0;
          auto [stop, ec] = std::from_chars(line.data(), line.data() + line.size(), size, 16);
          if (line.empty() || line.size() > 15 || ec != std::errc() || stop != line.data() + line.size()) {
            return malformed();
          }
          c->chunk_pos = newline + 1;
          c->chunk_remaining = size;
          c->chunk_state = size == 0 ? ChunkState::kTrailers : ChunkState::kData;
          break;
        }
        case ChunkState::kData: {
          const uint64_t take = std::min<uint64_t>(end - c->chunk_pos, c->chunk_remaining);
          if (take == 0) goto need_more;
          c->body_received += take;
          if (!c->too_large && c->body_received > options_.max_body_bytes) {
            c->too_large = true;
            std::string().swap(c->chunked_body);
          }
          if (c->too_large && c->body_received - options_.max_body_bytes > kMaxDrainBytes) {
            return Refuse(c, 413, TooLargeMessage());
          }
          if (!c->too_large) {
            const size_t size = c->chunked_body.size() + take;
            if (size > c->chunked_body.capacity()) {
              const size_t capacity = std::max(size, 2 * c->chunked_body.capacity());
              if (!Affordable(capacity - c->chunked_body.capacity())) {
                DropDecoded(c);
                return RefuseOverBudget(c);
              }
              c->chunked_body.reserve(capacity);
              Recharge(c);
            }
            c->chunked_body.append(base + c->chunk_pos, take);
          }
          c->chunk_pos += take;
          c->chunk_remaining -= take;
          if (c->chunk_remaining == 0) c->chunk_state = ChunkState::kDataEnd;
          break;
        }
        case ChunkState::kDataEnd: {
          if (c->chunk_pos == end) goto need_more;
          if (base[c->chunk_pos] == '\n') {
            c->chunk_pos += 1;
          } else if (base[c->chunk_pos] == '\r') {
            if (c->chunk_pos + 1 == end) goto need_more;
            if (base[c->chunk_pos + 1] != '\n') return malformed();
            c->chunk_pos += 2;
          } else {
            return malformed();
          }
          c->chunk_state = ChunkState::kSize;
          break;
        }
        case ChunkState::kTrailers: {
          const void* found = std::memchr(base + c->chunk_pos, '\n', end - c->chunk_pos);
          if (found == nullptr) {
            if (c->trailer_bytes + end - c->chunk_pos > kMaxHeaderBytes) return malformed();
            goto need_more;
          }
          const size_t newline = static_cast<size_t>(static_cast<const char*>(found) - base);
          const size_t length = newline - c->chunk_pos;
          c->trailer_bytes += length + 1;
          c->chunk_pos = newline + 1;
          if (length == 0 || (length == 1 && base[newline - 1] == '\r')) done = true;
          else if (c->trailer_bytes > kMaxHeaderBytes) return malformed();
          break;
        }
      }
    }
    // The whole body is decoded: drop its raw bytes so that the next request follows the headers.
    DropDecoded(c);
    if (c->too_large) return Refuse(c, 413, TooLargeMessage(), /*keep_open=*/true);
    c->request.body = c->chunked_body;
    c->body_in_buffer = 0;
    return Dispatch(c);
  need_more:
    DropDecoded(c);
    return false;
  }

  // Removes the raw chunked bytes already decoded (between the headers and chunk_pos) from the buffer.
  void DropDecoded(Connection* c) {
    const size_t decoded = c->chunk_pos - c->header_end;
    if (decoded == 0) return;
    char* body = c->in.data() + c->in_begin + c->header_end;
    std::memmove(body, body + decoded, c->buffered() - c->chunk_pos);
    c->in_end -= decoded;
    c->chunk_pos = c->header_end;
  }

  // Runs the handler for the complete request on `c`, here or on the blocking pool.
  bool Dispatch(Connection* c) {
    if (handler_.MayBlock(c->request)) {
      c->phase = Phase::kAwaiting;
      c->deadline = Clock::time_point::max();
      Loop* loop = this;
      pool_.Submit([loop, c] {
        HttpResponse response;
        Answer(loop->handler_, c->request, &response);
        loop->Complete(c, std::move(response));
      });
      return false;
    }
    HttpResponse response;
    Answer(handler_, c->request, &response);
    FinishRequest(c, std::move(response));
    return true;
  }

  static void Answer(HttpHandler& handler, const HttpRequest& request, HttpResponse* response) {
    try {
      handler.Handle(request, response);
    } catch (const std::exception& e) {
      *response = HttpResponse();
      handler.Refuse(request, 500, std::string("internal error while answering the request: ") + e.what(), response);
    }
  }

  // Answers the current request with a refusal and closes the connection after it, unless `keep_open` (a
  // 413 whose body was read to its end). Always true: the request is done.
  bool Refuse(Connection* c, int status, std::string_view message, bool keep_open = false,
              std::string_view retry_after = {}) {
    HttpResponse response;
    handler_.Refuse(c->request, status, message, &response);
    response.status = status;
    if (!retry_after.empty()) response.SetHeader("Retry-After", std::string(retry_after));
    if (!keep_open) response.close = true;
    c->body_in_buffer = 0;
    FinishRequest(c, std::move(response));
    return true;
  }

  // A body that would take the buffered bytes over their budget: 503, and the connection closed, since its
  // body (perhaps on its way already) is not read.
  bool RefuseOverBudget(Connection* c) {
    shared_.budget_refusals.fetch_add(1, std::memory_order_relaxed);
    return Refuse(c, 503,
                  "the server holds too many request bodies in memory (its limit is " +
                      std::to_string(options_.max_buffered_request_bytes) +
                      " bytes across all connections); retry in a moment",
                  /*keep_open=*/false, /*retry_after=*/"1");
  }

  // Queues the answer to the current request and makes the connection ready for the next one.
  void FinishRequest(Connection* c, HttpResponse response) {
    const HttpRequest& request = c->request;
    if (!c->keep_alive || stopping_) response.close = true;
    std::string& out = c->out;
    out.append("HTTP/1.1 ");
    out.append(std::to_string(response.status));
    out.push_back(' ');
    out.append(ReasonPhrase(response.status));
    out.append("\r\n");
    if (!response.content_type.empty()) {
      out.append("Content-Type: ").append(response.content_type).append("\r\n");
    }
    out.append("Content-Length: ").append(std::to_string(response.body.size())).append("\r\n");
    for (const auto& [name, value] : response.headers) out.append(name).append(": ").append(value).append("\r\n");
    if (response.close) out.append("Connection: close\r\n");
    else if (request.minor_version == 0) out.append("Connection: keep-alive\r\n");
    out.append("\r\n");
    if (request.method != "HEAD") out.append(response.body);

    // Consume the request: its headers, and its body unless already dropped from the buffer.
    size_t consumed = std::min(c->header_end + c->body_in_buffer, c->buffered());
    if (response.close) {
      c->close_after = true;
      consumed = c->buffered();
    }
    c->in_begin += consumed;
    if (c->in_begin == c->in_end) c->in_begin = c->in_end = 0;
    // Give back the memory of a large request: the next one, if any, starts small.
    if (c->chunked_body.capacity() > kReadChunk) std::string().swap(c->chunked_body);
    c->chunked_body.clear();
    if (c->buffered() == 0 && c->in.size() > kReadChunk) {
      c->in.Release();
    } else if (c->in.size() > 4 * kReadChunk && c->buffered() < c->in.size() / 4) {
      ByteBuffer smaller;  // For the pipelined bytes that follow.
      smaller.Reallocate(std::max(2 * c->buffered(), kReadChunk), 0);
      std::memcpy(smaller.data(), c->data(), c->buffered());
      c->in_end = c->buffered();
      c->in_begin = 0;
      c->in = std::move(smaller);
    }
    Recharge(c);
    c->phase = Phase::kHeaders;
    c->header_end = 0;
    c->header_scan = 0;
    c->content_length = 0;
    c->body_in_buffer = 0;
    c->body_received = 0;
    c->too_large = false;
    c->request.method = {};
    c->request.target = {};
    c->request.minor_version = 1;
    c->request.start = {};
    c->request.headers.clear();
    c->request.body = {};
    c->deadline = now_ + std::chrono::seconds(c->buffered() > 0 ? options_.io_timeout_sec
                                                                : options_.keep_alive_timeout_sec);
    // Waiting for the next request: idle, or its header section (pipelined) already arriving.
    c->head_deadline = c->buffered() > 0 ? now_ + std::chrono::seconds(options_.header_timeout_sec)
                                         : Clock::time_point::max();
    UnlinkWaiting(c);
    if (!response.close) LinkWaiting(c);
  }

  // Sends queued answers. False when the connection was closed.
  bool Flush(Connection* c) {
    while (c->out_pos < c->out.size()) {
      const ssize_t n = ::send(c->fd, c->out.data() + c->out_pos, c->out.size() - c->out_pos, MSG_NOSIGNAL);
      if (n > 0) {
        c->out_pos += static_cast<size_t>(n);
        c->deadline = now_ + std::chrono::seconds(options_.io_timeout_sec);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        SetInterest(c, EPOLLOUT);
        return true;
      }
      if (c->phase == Phase::kAwaiting) {
        // The handler still reads the buffer: the connection is closed once its answer comes back.
        c->out.clear();
        c->out_pos = 0;
        c->peer_closed = true;
        SetInterest(c, 0);
        return true;
      }
      Close(c);
      return false;
    }
    c->out.clear();
    c->out_pos = 0;
    if (c->out.capacity() > kReadChunk) std::string().swap(c->out);
    if (c->phase == Phase::kAwaiting) {
      SetInterest(c, 0);
      return true;
    }
    if (c->phase == Phase::kClosing) return true;  // Its linger deadline stands.
    // Between requests the keep-alive timeout applies; within one (or its successor already arriving), the
    // I/O timeout.
    const bool idle = c->phase == Phase::kHeaders && c->buffered() == 0;
    c->deadline = now_ + std::chrono::seconds(idle ? options_.keep_alive_timeout_sec : options_.io_timeout_sec);
    if (c->close_after && stopping_) {
      Close(c);
      return false;
    }
    if (c->close_after && c->phase != Phase::kClosing) {
      // Shut our side, then read until the client closes, so that unread bytes do not turn into a reset
      // that would destroy the answer before the client reads it.
      ::shutdown(c->fd, SHUT_WR);
      c->phase = Phase::kClosing;
      c->in_begin = c->in_end = 0;
      c->in.Release();  // What still arrives is read into the scratch buffer and dropped.
      Recharge(c);
      c->deadline = now_ + kLingerTime;
      if (c->peer_closed) {
        Close(c);
        return false;
      }
    }
    SetInterest(c, EPOLLIN);
    return true;
  }

  void ExpireDeadlines() {
    std::vector<Connection*> expired;
    for (auto& [connection, owned] : connections_) {
      const Connection& c = *connection;
      if (c.phase == Phase::kAwaiting) continue;
      if (c.deadline <= now_) {
        expired.push_back(connection);
      } else if (c.phase == Phase::kHeaders && c.head_deadline <= now_) {
        shared_.header_timeouts.fetch_add(1, std::memory_order_relaxed);
        expired.push_back(connection);
      } else if ((c.phase == Phase::kBody || c.phase == Phase::kChunked) && now_ > BodyDeadline(c)) {
        shared_.body_timeouts.fetch_add(1, std::memory_order_relaxed);
        expired.push_back(connection);
      }
    }
    for (Connection* connection : expired) Close(connection);
  }

  // When the body being received must have arrived, at the bytes received so far: body_timeout_sec after its
  // headers, plus the time those bytes take at min_body_bytes_per_sec. A client keeping up with that rate
  // never reaches it.
  Clock::time_point BodyDeadline(const Connection& c) const {
    const uint64_t received =
        c.phase == Phase::kBody && !c.too_large
            ? std::min<uint64_t>(c.buffered() - std::min(c.buffered(), c.header_end), c.content_length)
            : c.body_received;
    const uint64_t rate = std::max<size_t>(options_.min_body_bytes_per_sec, 1);
    return c.body_start + std::chrono::seconds(options_.body_timeout_sec) +
           std::chrono::microseconds(received / rate * 1000000 + received % rate * 1000000 / rate);
  }

  // Stops accepting and closes idle connections; the others close once their current request is answered
  // (FinishRequest adds `Connection: close` from now on).
  void BeginStop() {
    stopping_ = true;
    stop_deadline_ = now_ + std::chrono::seconds(options_.io_timeout_sec);
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
    std::vector<Connection*> idle;
    for (auto& [connection, owned] : connections_) {
      const bool busy = connection->phase == Phase::kAwaiting || connection->buffered() > 0 ||
                        connection->out_pos < connection->out.size();
      if (!busy || connection->phase == Phase::kClosing) idle.push_back(connection);
      else if (connection->phase != Phase::kAwaiting && connection->buffered() == 0) connection->close_after = true;
    }
    for (Connection* connection : idle) Close(connection);
  }

  // Past the stop deadline: closes every connection not waiting for the blocking pool. True when none is left.
  bool ForceClose() {
    std::vector<Connection*> closable;
    for (auto& [connection, owned] : connections_) {
      if (connection->phase != Phase::kAwaiting) closable.push_back(connection);
    }
    for (Connection* connection : closable) Close(connection);
    return connections_.empty();
  }

  // A socket handed over by another loop; `shed_tries`: see Adopt.
  struct Adoption {
    int fd;
    int shed_tries;
  };

  HttpHandler& handler_;
  const HttpLoopOptions& options_;
  BlockingPool& pool_;
  SharedState& shared_;
  std::unique_ptr<char[]> scratch_;  // kScratchBytes, for recv when a connection's buffer has little room.
  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  std::vector<std::unique_ptr<Loop>>* siblings_ = nullptr;
  size_t index_ = 0;  // This loop's place in *siblings_.
  size_t next_sibling_ = 0;
  std::thread thread_;
  Clock::time_point now_ = Clock::now();
  absl::flat_hash_map<Connection*, std::unique_ptr<Connection>> connections_;
  // The connections waiting for a request, longest waiting first (see Connection::waiting).
  Connection* waiting_first_ = nullptr;
  Connection* waiting_last_ = nullptr;
  bool accept_paused_ = false;  // The listening socket is out of the epoll set until accept_resume_.
  Clock::time_point accept_resume_;
  size_t freed_since_trim_ = 0;  // Buffer bytes freed since the last malloc_trim.
  std::vector<int> over_cap_;    // Accepted over the cap in this wake-up; see AdmitOverCap.

  std::atomic<bool> stop_requested_{false};
  bool stopping_ = false;
  Clock::time_point stop_deadline_;

  std::mutex mutex_;  // Guards the mail from other threads:
  std::vector<Adoption> adopted_;
  std::vector<std::pair<Connection*, HttpResponse>> completions_;
};

}  // namespace

bool MethodTakesBody(std::string_view method) {
  return method == "POST" || method == "PUT" || method == "PATCH" || method == "DELETE";
}

std::string_view HttpRequest::Header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (EqualsIgnoreCase(key, name)) return value;
  }
  return {};
}

size_t HttpRequest::HeaderCount(std::string_view name) const {
  size_t count = 0;
  for (const auto& [key, value] : headers) count += EqualsIgnoreCase(key, name) ? 1 : 0;
  return count;
}

struct HttpLoop::Impl {
  Impl(HttpHandler& handler_in, HttpLoopOptions options_in) : handler(handler_in), options(std::move(options_in)) {}

  HttpHandler& handler;
  const HttpLoopOptions options;
  int listen_fd = -1;
  int bound_port = 0;
  bool started = false;
  bool stopped = false;
  SharedState shared;
  std::unique_ptr<BlockingPool> pool;
  std::vector<std::unique_ptr<Loop>> loops;
};

HttpLoop::HttpLoop(HttpHandler& handler, HttpLoopOptions options)
    : impl_(std::make_unique<Impl>(handler, std::move(options))) {}

HttpLoop::~HttpLoop() { Stop(); }

int HttpLoop::port() const { return impl_->bound_port; }

int HttpLoop::effective_max_connections() const { return impl_->started ? impl_->shared.max_connections : 0; }

HttpLoopStats HttpLoop::stats() const {
  const SharedState& shared = impl_->shared;
  HttpLoopStats stats;
  stats.accept_pauses = shared.accept_pauses.load(std::memory_order_relaxed);
  stats.connections_shed = shared.connections_shed.load(std::memory_order_relaxed);
  stats.connections_refused = shared.connections_refused.load(std::memory_order_relaxed);
  stats.header_timeouts = shared.header_timeouts.load(std::memory_order_relaxed);
  stats.body_timeouts = shared.body_timeouts.load(std::memory_order_relaxed);
  stats.budget_refusals = shared.budget_refusals.load(std::memory_order_relaxed);
  stats.open_connections = shared.open_connections.load(std::memory_order_relaxed);
  stats.max_connections = effective_max_connections();
  stats.over_cap_allowance = impl_->started ? impl_->shared.over_cap_allowance : 0;
  stats.buffered_request_bytes =
      static_cast<size_t>(std::max<int64_t>(shared.buffered_bytes.load(std::memory_order_relaxed), 0));
  return stats;
}

namespace {

// A listening socket on host:port, or why not.
Result<int> Listen(const std::string& host, int port) {
  const std::string where = host + ":" + std::to_string(port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* addresses = nullptr;
  const std::string service = std::to_string(port);
  if (const int error = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &addresses); error != 0) {
    return Status::IoError("cannot listen on " + where + ": " + ::gai_strerror(error) +
                           "; is the host an address or name of this machine?");
  }
  int last_errno = 0;
  int fd = -1;
  for (addrinfo* address = addresses; address != nullptr && fd < 0; address = address->ai_next) {
    fd = ::socket(address->ai_family, address->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, address->ai_protocol);
    if (fd < 0) {
      last_errno = errno;
      continue;
    }
    // SO_REUSEADDR allows quick restarts over TIME_WAIT sockets. Not SO_REUSEPORT: it would let a second
    // server bind the same port and silently take half the connections.
    const int yes = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    if (::bind(fd, address->ai_addr, address->ai_addrlen) != 0 || ::listen(fd, 1024) != 0) {
      last_errno = errno;
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(addresses);
  if (fd < 0) {
    return Status::IoError("cannot listen on " + where + ": " + std::strerror(last_errno) +
                           "; is the port in use, or the host not an address of this machine?");
  }
  return fd;
}

// The connection cap the open-file limit allows: `configured`, or the soft RLIMIT_NOFILE (first raised to the
// hard limit, best effort) less the descriptors kept for the rest of the process, if that is lower. Says so
// on stderr when it lowers the cap, since a server that refuses connections well below its configured
// maximum would otherwise be a puzzle.
int ConnectionCap(int configured) {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return configured;
  if (limit.rlim_cur < limit.rlim_max && limit.rlim_max != RLIM_INFINITY) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  if (limit.rlim_cur == RLIM_INFINITY) return configured;
  const rlim_t reserve = std::min(kReservedDescriptors, limit.rlim_cur / 4);
  const rlim_t allowed = std::max<rlim_t>(limit.rlim_cur - reserve, 1);
  if (allowed >= static_cast<rlim_t>(configured)) return configured;
  std::fprintf(stderr,
               "freshet: the HTTP server takes at most %d connections, not the configured %d: the open-file "
               "limit is %llu and %llu descriptors are kept for checkpoints, files, Redis and Kafka; raise the "
               "limit (ulimit -n, or LimitNOFILE= in a systemd unit) to allow more\n",
               static_cast<int>(allowed), configured, static_cast<unsigned long long>(limit.rlim_cur),
               static_cast<unsigned long long>(reserve));
  std::fflush(stderr);
  return static_cast<int>(allowed);
}

}  // namespace

Status HttpLoop::Start() {
  Impl& impl = *impl_;
  const HttpLoopOptions& options = impl.options;
  if (impl.started) return Status::Internal("HttpLoop::Start called twice");
  if (options.loop_threads < 0 || options.blocking_threads < 1) {
    return Status::Invalid("the HTTP server needs at least 1 blocking thread (and loop_threads >= 0)");
  }
  if (options.port < 0 || options.port > 65535) {
    return Status::Invalid("port " + std::to_string(options.port) + " is not in 0..65535 (0 picks a free one)");
  }
  if (options.max_body_bytes == 0) return Status::Invalid("the maximum request body must be at least 1 byte");
  if (options.keep_alive_timeout_sec < 0 || options.io_timeout_sec < 1 || options.header_timeout_sec < 1 ||
      options.body_timeout_sec < 1) {
    return Status::Invalid("HTTP timeouts must be positive");
  }
  if (options.max_connections < 1) return Status::Invalid("the HTTP server must allow at least 1 connection");
  if (options.min_body_bytes_per_sec < 1) {
    return Status::Invalid("the minimum body rate must be at least 1 byte/s");
  }
  if (options.max_buffered_request_bytes < options.max_body_bytes) {
    return Status::Invalid("the budget for buffered request bytes (" +
                           std::to_string(options.max_buffered_request_bytes) +
                           ") is smaller than the largest request body (" +
                           std::to_string(options.max_body_bytes) + "); no body that large could ever be accepted");
  }
  FRESHET_ASSIGN_OR_RETURN(impl.listen_fd, Listen(options.host, options.port));
  sockaddr_storage bound{};
  socklen_t length = sizeof(bound);
  ::getsockname(impl.listen_fd, reinterpret_cast<sockaddr*>(&bound), &length);
  impl.bound_port = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                                : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  int loops = options.loop_threads;
  if (loops == 0) loops = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 4u));
  impl.shared.max_connections = ConnectionCap(options.max_connections);
  impl.shared.over_cap_allowance = static_cast<int>(kMaxOverCapPerWake) * loops;
  impl.pool = std::make_unique<BlockingPool>(options.blocking_threads);
  for (int k = 0; k < loops; ++k) {
    impl.loops.push_back(std::make_unique<Loop>(impl.handler, options, *impl.pool, impl.shared));
  }
  for (size_t k = 0; k < impl.loops.size(); ++k) {
    if (Status status = impl.loops[k]->Init(impl.listen_fd, &impl.loops, k); !status.ok()) {
      impl.loops.clear();
      impl.pool.reset();
      ::close(impl.listen_fd);
      impl.listen_fd = -1;
      return status;
    }
  }
  impl.started = true;
  for (auto& loop : impl.loops) loop->StartThread();
  return Status::Ok();
}

void HttpLoop::Stop() {
  Impl& impl = *impl_;
  if (!impl.started || impl.stopped) return;
  impl.stopped = true;
  for (auto& loop : impl.loops) loop->RequestStop();
  for (auto& loop : impl.loops) loop->Join();
  impl.pool.reset();  // Joins the blocking threads; no job is left, since every loop waited for its own.
  impl.loops.clear();
  ::close(impl.listen_fd);
  impl.listen_fd = -1;
}

}  // namespace freshet

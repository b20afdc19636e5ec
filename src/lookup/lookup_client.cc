#include "lookup/lookup_client.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <deque>

#include "serve/json.h"
#include "spec/field_registry.h"

namespace freshet {
namespace {

using Clock = std::chrono::steady_clock;

// Connections kept to a Redis server; requests are pipelined over them.
constexpr size_t kRedisConnections = 4;

int64_t NowNs() { return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count(); }

// A non-blocking TCP connection under way to host:port, or -1 with *error set.
int ConnectNonBlocking(const std::string& host, int port, std::string* error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  if (int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &found); rc != 0) {
    *error = "cannot resolve '" + host + "': " + gai_strerror(rc);
    return -1;
  }
  int fd = socket(found->ai_family, found->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, found->ai_protocol);
  if (fd >= 0 && connect(fd, found->ai_addr, found->ai_addrlen) != 0 && errno != EINPROGRESS) {
    *error = "cannot connect to " + host + ":" + service + ": " + std::strerror(errno);
    close(fd);
    fd = -1;
  }
  freeaddrinfo(found);
  return fd;
}

// RESP: one reply from the front of `in`, as an HGETALL answer. Returns 0 when incomplete, else the bytes it
// took; *answer gets the hash as JSON (kFound), kNotFound for an empty hash, kError for an error reply.
size_t ParseRespHash(std::string_view in, LookupAnswer* answer) {
  auto line_at = [&](size_t at, std::string_view* line) -> size_t {
    const size_t end = in.find("\r\n", at);
    if (end == std::string_view::npos) return 0;
    *line = in.substr(at, end - at);
    return end + 2;
  };
  std::string_view line;
  size_t at = line_at(0, &line);
  if (at == 0) return 0;
  if (line.empty() || (line[0] != '*' && line[0] != '-')) {
    answer->kind = LookupAnswer::Kind::kError;
    answer->error = "unexpected Redis reply '" + std::string(line.substr(0, 60)) + "' to HGETALL";
    return in.size();  // The stream is out of step; the connection is dropped.
  }
  if (line[0] == '-') {
    answer->kind = LookupAnswer::Kind::kError;
    answer->error = "Redis: " + std::string(line.substr(1));
    return at;
  }
  int64_t items = 0;
  std::from_chars(line.data() + 1, line.data() + line.size(), items);
  std::vector<std::string_view> strings;
  for (int64_t k = 0; k < items; ++k) {
    const size_t next = line_at(at, &line);
    if (next == 0) return 0;
    int64_t length = -1;
    if (!line.empty() && line[0] == '$') std::from_chars(line.data() + 1, line.data() + line.size(), length);
    if (length < 0 || next + static_cast<size_t>(length) + 2 > in.size()) {
      if (length < 0) {
        answer->kind = LookupAnswer::Kind::kError;
        answer->error = "unexpected Redis reply in an HGETALL answer";
        return in.size();
      }
      return 0;
    }
    strings.push_back(in.substr(next, static_cast<size_t>(length)));
    at = next + static_cast<size_t>(length) + 2;
  }
  if (strings.empty()) {
    answer->kind = LookupAnswer::Kind::kNotFound;
    return at;
  }
  answer->kind = LookupAnswer::Kind::kFound;
  answer->json.clear();
  JsonWriter json(&answer->json);
  json.BeginObject();
  for (size_t k = 0; k + 1 < strings.size(); k += 2) {
    json.Key(strings[k]);
    // As a table's CSV cell: JSON number syntax is a number, anything else text.
    if (NumberInString(strings[k + 1], FieldType::kNumber).has_value()) {
      json.Raw(strings[k + 1]);
    } else {
      json.String(strings[k + 1]);
    }
  }
  json.EndObject();
  return at;
}

// HTTP/1.1: the answer in `in`, complete once the connection closed (`closed`) or Content-Length bytes came.
// Returns false while incomplete.
bool ParseHttpAnswer(std::string_view in, bool closed, LookupAnswer* answer) {
  const size_t head_end = in.find("\r\n\r\n");
  if (head_end == std::string_view::npos) {
    if (closed) {
      answer->kind = LookupAnswer::Kind::kError;
      answer->error = "the HTTP answer ended before its headers did";
    }
    return closed;
  }
  const std::string_view head = in.substr(0, head_end);
  const std::string_view body = in.substr(head_end + 4);
  int status = 0;
  const size_t space = head.find(' ');
  if (!head.starts_with("HTTP/1.") || space == std::string_view::npos) {
    answer->kind = LookupAnswer::Kind::kError;
    answer->error = "not an HTTP answer";
    return true;
  }
  std::from_chars(head.data() + space + 1, head.data() + head.size(), status);
  std::string lower(head);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  if (lower.find("\r\ntransfer-encoding: chunked") != std::string::npos) {
    answer->kind = LookupAnswer::Kind::kError;
    answer->error = "chunked HTTP answers are not supported; answer with a Content-Length";
    return true;
  }
  if (const size_t at = lower.find("\r\ncontent-length:"); at != std::string::npos) {
    size_t length = 0;
    size_t digits = at + 17;
    while (digits < lower.size() && lower[digits] == ' ') ++digits;
    std::from_chars(lower.data() + digits, lower.data() + lower.size(), length);
    if (body.size() < length && !closed) return false;
  } else if (!closed) {
    return false;
  }
  if (status == 200) {
    answer->kind = LookupAnswer::Kind::kFound;
    answer->json.assign(body);
  } else if (status == 404) {
    answer->kind = LookupAnswer::Kind::kNotFound;
  } else {
    answer->kind = LookupAnswer::Kind::kError;
    answer->error = "HTTP status " + std::to_string(status);
  }
  return true;
}

}  // namespace

bool LookupClient::SplitUrl(const std::string& url, std::string* host, int* port, std::string* path) {
  if (!url.starts_with("http://")) return false;
  const size_t slash = url.find('/', 7);
  const std::string authority = url.substr(7, slash == std::string::npos ? std::string::npos : slash - 7);
  *path = slash == std::string::npos ? "/" : url.substr(slash);
  const size_t colon = authority.rfind(':');
  *host = authority.substr(0, colon);
  *port = 80;
  if (colon != std::string::npos) {
    auto [end, ec] = std::from_chars(authority.data() + colon + 1, authority.data() + authority.size(), *port);
    if (ec != std::errc() || end != authority.data() + authority.size()) return false;
  }
  return !host->empty();
}

struct LookupClient::Impl {
  const LookupSpec& spec;
  Gauge* in_flight_gauge;
  bool redis;
  std::string host;
  int port = 0;
  struct Sent {
    size_t request;
    int64_t sent_ns;
  };
  struct Conn {
    int fd = -1;
    bool connected = false;
    std::string out;    // Bytes still to write.
    std::string in;     // Bytes read, not yet parsed.
    std::deque<Sent> outstanding;
    bool closed_by_peer = false;
  };
  std::vector<Conn> conns;  // Redis: kept between runs; HTTP: one per request in flight, made per run.

  Impl(const LookupSpec& s, Gauge* gauge) : spec(s), in_flight_gauge(gauge), redis(s.type == "redis") {
    if (redis) {
      host = s.host;
      port = s.port;
      conns.resize(std::min<size_t>(kRedisConnections, static_cast<size_t>(s.max_in_flight)));
    } else {
      std::string path;
      SplitUrl(s.url, &host, &port, &path);
    }
  }
  ~Impl() {
    for (Conn& c : conns) Close(c);
  }
  static void Close(Conn& c) {
    if (c.fd >= 0) close(c.fd);
    c = Conn();
  }

  void Run(const std::vector<std::string>& targets, std::vector<LookupAnswer>* answers);
  // Ends every request outstanding on `c` with `kind` and closes it.
  void Fail(Conn& c, LookupAnswer::Kind kind, const std::string& error, std::vector<LookupAnswer>* answers,
            size_t* done, size_t* in_flight) {
    for (const Sent& s : c.outstanding) {
      (*answers)[s.request].kind = kind;
      (*answers)[s.request].error = error;
      ++*done;
      --*in_flight;
    }
    Close(c);
  }
};

LookupClient::LookupClient(const LookupSpec& spec, Gauge* in_flight) : impl_(std::make_unique<Impl>(spec, in_flight)) {}
LookupClient::~LookupClient() = default;

void LookupClient::Run(const std::vector<std::string>& targets, std::vector<LookupAnswer>* answers) {
  impl_->Run(targets, answers);
}

void LookupClient::Impl::Run(const std::vector<std::string>& targets, std::vector<LookupAnswer>* answers) {
  answers->assign(targets.size(), LookupAnswer());
  const size_t max_in_flight = static_cast<size_t>(spec.max_in_flight);
  const int64_t timeout_ns = spec.timeout_ms * 1'000'000;
  size_t next = 0, done = 0, in_flight = 0;
  if (!redis) conns.clear();
  auto send = [&](Conn& c, size_t request) {
    const std::string& target = targets[request];
    if (redis) {
      c.out += "*2\r\n$7\r\nHGETALL\r\n$" + std::to_string(target.size()) + "\r\n" + target + "\r\n";
    } else {
      c.out += "GET " + target + " HTTP/1.1\r\nHost: " + host + ":" + std::to_string(port) +
               "\r\nAccept: application/json\r\nConnection: close\r\n\r\n";
    }
    c.outstanding.push_back({request, NowNs()});
    ++in_flight;
  };
  auto open = [&](Conn& c) -> bool {
    std::string error;
    c.fd = ConnectNonBlocking(host, port, &error);
    if (c.fd >= 0) return true;
    // Nothing sent yet: the request fails at once.
    (*answers)[next].kind = LookupAnswer::Kind::kError;
    (*answers)[next].error = error;
    ++next;
    ++done;
    return false;
  };
  std::vector<pollfd> fds;
  std::vector<size_t> conn_of;
  while (done < targets.size()) {
    // Send what the in-flight bound allows.
    while (next < targets.size() && in_flight < max_in_flight) {
      if (redis) {
        Conn& c = *std::min_element(conns.begin(), conns.end(), [](const Conn& a, const Conn& b) {
          return a.outstanding.size() < b.outstanding.size();
        });
        if (c.fd < 0 && !open(c)) continue;
        send(c, next++);
      } else {
        Conn c;
        if (!open(c)) continue;
        send(c, next++);
        conns.push_back(std::move(c));
      }
    }
    if (in_flight != 0) {
      fds.clear();
      conn_of.clear();
      int64_t first_deadline = std::numeric_limits<int64_t>::max();
      for (size_t k = 0; k < conns.size(); ++k) {
        Conn& c = conns[k];
        if (c.fd < 0 || c.outstanding.empty()) continue;
        fds.push_back({c.fd, static_cast<short>(POLLIN | (c.out.empty() && c.connected ? 0 : POLLOUT)), 0});
        conn_of.push_back(k);
        first_deadline = std::min(first_deadline, c.outstanding.front().sent_ns + timeout_ns);
      }
      const int64_t wait_ms = std::max<int64_t>(0, (first_deadline - NowNs() + 999'999) / 1'000'000);
      poll(fds.data(), fds.size(), static_cast<int>(std::min<int64_t>(wait_ms, 1000)));
      for (size_t f = 0; f < fds.size(); ++f) {
        Conn& c = conns[conn_of[f]];
        if (fds[f].revents == 0) continue;
        if (!c.connected && (fds[f].revents & (POLLOUT | POLLERR | POLLHUP))) {
          int err = 0;
          socklen_t len = sizeof(err);
          getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
          if (err != 0) {
            Fail(c, LookupAnswer::Kind::kError, "cannot connect to " + host + ":" + std::to_string(port) + ": " +
                                                    std::strerror(err), answers, &done, &in_flight);
            continue;
          }
          c.connected = true;
        }
        if (c.connected && !c.out.empty()) {
          const ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
          if (n > 0) c.out.erase(0, static_cast<size_t>(n));
        }
        if (fds[f].revents & (POLLIN | POLLHUP | POLLERR)) {
          char buffer[16384];
          ssize_t n;
          while ((n = recv(c.fd, buffer, sizeof(buffer), 0)) > 0) c.in.append(buffer, static_cast<size_t>(n));
          if (n == 0) c.closed_by_peer = true;
          if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) c.closed_by_peer = true;
        }
        // Answers, in the order sent.
        while (!c.outstanding.empty()) {
          LookupAnswer& answer = (*answers)[c.outstanding.front().request];
          size_t used = 0;
          if (redis) {
            used = ParseRespHash(c.in, &answer);
            if (used == 0) break;
            c.in.erase(0, used);
          } else if (!ParseHttpAnswer(c.in, c.closed_by_peer, &answer)) {
            break;
          }
          answer.seconds = static_cast<double>(NowNs() - c.outstanding.front().sent_ns) / 1e9;
          c.outstanding.pop_front();
          ++done;
          --in_flight;
          if (!redis) Close(c);
          if (answer.kind == LookupAnswer::Kind::kError && redis && answer.error.starts_with("unexpected")) {
            Fail(c, LookupAnswer::Kind::kError, answer.error, answers, &done, &in_flight);
          }
        }
        if (c.fd >= 0 && c.closed_by_peer) {
          Fail(c, LookupAnswer::Kind::kError, "the connection to " + host + ":" + std::to_string(port) + " closed",
               answers, &done, &in_flight);
        }
      }
      // Timeouts: a connection whose oldest request is overdue is dropped with all it carries (Redis answers in
      // order, so the later ones would wait behind it anyway).
      const int64_t now = NowNs();
      for (Conn& c : conns) {
        if (c.fd >= 0 && !c.outstanding.empty() && now >= c.outstanding.front().sent_ns + timeout_ns) {
          Fail(c, LookupAnswer::Kind::kTimeout, "", answers, &done, &in_flight);
        }
      }
      if (!redis) {
        conns.erase(std::remove_if(conns.begin(), conns.end(), [](const Conn& c) { return c.fd < 0; }), conns.end());
      }
    }
    if (in_flight_gauge != nullptr) in_flight_gauge->Set(static_cast<double>(in_flight));
  }
  if (in_flight_gauge != nullptr) in_flight_gauge->Set(0);
}

}  // namespace freshet

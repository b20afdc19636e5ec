// LookupClient: the requests of one lookup (`lookups:` item) against its store, many at once, each with a
// deadline: Redis HGETALL (RESP, pipelined over a few kept connections) or HTTP/1.1 GET (a connection per
// request). One thread drives every socket with poll(), so max_in_flight requests cost no threads.
//
// Answers: a JSON object (Redis: the hash's fields, a value in JSON number syntax as a number and any other as
// text; HTTP: the 200 answer's body), no answer (an empty hash, HTTP 404), a timeout (no complete answer within
// `timeout` of sending), or an error (refused connection, bad reply, another HTTP status).
//
// Not thread-safe: one caller at a time (the runtime's processing thread).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "serve/metrics.h"
#include "spec/spec.h"

namespace freshet {

struct LookupAnswer {
  enum class Kind : uint8_t { kFound, kNotFound, kTimeout, kError };
  Kind kind = Kind::kTimeout;
  std::string json;    // kFound: the answer as a JSON object.
  std::string error;   // kError: what went wrong, for the log.
  double seconds = 0;  // From sending to the answer (kFound, kNotFound).
};

class LookupClient {
 public:
  // `in_flight`, if given, follows the requests sent and not yet answered.
  LookupClient(const LookupSpec& spec, Gauge* in_flight);
  ~LookupClient();
  LookupClient(const LookupClient&) = delete;
  LookupClient& operator=(const LookupClient&) = delete;

  // Runs every request: `targets` are Redis keys, or for HTTP the path and query after host:port. Returns when
  // each is answered, timed out or failed; answers[k] is that of targets[k].
  void Run(const std::vector<std::string>& targets, std::vector<LookupAnswer>* answers);

  // The host and port of an http:// url template, and its path template (the rest).
  static bool SplitUrl(const std::string& url, std::string* host, int* port, std::string* path);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace freshet

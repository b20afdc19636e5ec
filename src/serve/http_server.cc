#include "serve/http_server.h"

#include <simdjson.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include <absl/container/flat_hash_map.h>

#include "common/entity_key.h"
#include "common/text.h"
#include "common/time.h"
#include "serve/http_loop.h"
#include "serve/json.h"
#include "serve/process_metrics.h"
#include "serve/spec_json.h"
#include "serve/ui_assets.h"

namespace freshet {
namespace {

// The endpoints, as routed and as labelled in metrics.
enum Route : int {
  kRouteEntityFeatures,
  kRouteBatchFeatures,
  kRouteIngest,
  kRouteHealth,
  kRouteMetrics,
  kRouteSpec,
  kRouteAdmin,
  kRouteExplain,
  kRouteConsoleData,
  kRouteConsole,
  kRouteTable,
  kRouteUnmatched,
  kRouteCount,
};

struct RouteInfo {
  const char* label;  // The `route` label of the request metrics.
  const char* allow;  // Methods allowed, for 405 and the Allow header; "" when nothing is served there.
  bool admin;         // Requires the bearer token when one is configured.
};

constexpr RouteInfo kRoutes[kRouteCount] = {
    {"/v1/features/{entity}", "GET, HEAD", false},
    {"/v1/features", "POST", false},
    {"/v1/ingest", "POST", true},
    {"/health", "GET, HEAD", false},
    {"/metrics", "GET, HEAD", false},
    {"/v1/spec", "GET, HEAD", false},
    {"/v1/admin", "", true},
    {"/v1/explain/{entity}", "GET, HEAD", false},
    {"/v1/ui/{view}", "GET, HEAD", false},
    {"/ui", "GET, HEAD", false},
    {"/v1/tables/{name}", "PUT", true},
    {"unmatched", "", false},
};

// Listed in 404 responses.
constexpr const char* kEndpoints[] = {
    "GET /v1/features/{entity}?features=a,b&at=T",
    "POST /v1/features {\"entities\":[...],\"features\":[...],\"at\":T}",
    "POST /v1/ingest (Content-Type: application/x-ndjson or application/json)",
    "GET /health",
    "GET /metrics",
    "GET /v1/spec",
    "GET /v1/explain/{entity}?feature=F&at=T",
    "GET /v1/ui/pipeline, /v1/ui/features, /v1/ui/dead-letters",
    "GET /ui (the web console)",
    "PUT /v1/tables/{name} (JSON lines: rows of a reference table)",
};

constexpr std::string_view kEntityPrefix = "/v1/features/";
constexpr std::string_view kExplainPrefix = "/v1/explain/";
constexpr std::string_view kConsoleDataPrefix = "/v1/ui/";
constexpr std::string_view kTablePrefix = "/v1/tables/";
constexpr const char* kJsonType = "application/json";
constexpr int kMaxStatus = 600;

// `key_fields`: how many fields the spec's entity key has, each one path segment of /v1/features/{...}.
Route MatchRoute(std::string_view path, size_t key_fields) {
  if (path == "/v1/features") return kRouteBatchFeatures;
  if (path.starts_with(kEntityPrefix)) {
    // One segment per key field; a raw '/' in a part means a path we do not serve.
    const size_t slashes = static_cast<size_t>(std::count(path.begin() + kEntityPrefix.size(), path.end(), '/'));
    return slashes + 1 == key_fields ? kRouteEntityFeatures : kRouteUnmatched;
  }
  if (path == "/v1/ingest") return kRouteIngest;
  if (path == "/health") return kRouteHealth;
  if (path == "/metrics") return kRouteMetrics;
  if (path == "/v1/spec") return kRouteSpec;
  if (path.starts_with(kExplainPrefix)) {
    return path.find('/', kExplainPrefix.size()) == std::string_view::npos ? kRouteExplain : kRouteUnmatched;
  }
  if (path.starts_with(kConsoleDataPrefix)) return kRouteConsoleData;
  if (path.starts_with(kTablePrefix)) {
    return path.find('/', kTablePrefix.size()) == std::string_view::npos ? kRouteTable : kRouteUnmatched;
  }
  if (path == "/ui" || path.starts_with("/ui/")) return kRouteConsole;
  if (path == "/v1/admin" || path.starts_with("/v1/admin/")) return kRouteAdmin;
  return kRouteUnmatched;
}

bool MethodAllowed(Route route, std::string_view method) {
  const std::string_view allow = kRoutes[route].allow;
  if (method.empty()) return false;
  for (size_t pos = 0; pos < allow.size();) {
    size_t end = allow.find(',', pos);
    if (end == std::string_view::npos) end = allow.size();
    if (allow.substr(pos, end - pos) == method) return true;
    pos = end + 2;  // ", "
  }
  return false;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes %XX escapes; '+' stays a plus. False on a '%' not followed by two hex digits.
bool PercentDecode(std::string_view in, std::string* out) {
  out->clear();
  out->reserve(in.size());
  for (size_t k = 0; k < in.size(); ++k) {
    if (in[k] != '%') {
      out->push_back(in[k]);
      continue;
    }
    const int hi = k + 1 < in.size() ? HexDigit(in[k + 1]) : -1;
    const int lo = k + 2 < in.size() ? HexDigit(in[k + 2]) : -1;
    if (hi < 0 || lo < 0) return false;
    out->push_back(static_cast<char>(hi * 16 + lo));
    k += 2;
  }
  return true;
}

// Runs over the whole expected token whatever `given` is, so the time taken does not reveal how long a
// prefix of the token a guess got right.
bool ConstantTimeEquals(std::string_view given, std::string_view expected) {
  unsigned char diff = given.size() == expected.size() ? 0 : 1;
  for (size_t k = 0; k < expected.size(); ++k) {
    const unsigned char g = k < given.size() ? static_cast<unsigned char>(given[k]) : 0;
    diff |= static_cast<unsigned char>(g ^ static_cast<unsigned char>(expected[k]));
  }
  return diff == 0;
}

void SetBody(HttpResponse& res, int status, std::string body, const char* content_type) {
  res.status = status;
  res.body = std::move(body);
  res.content_type = content_type;
}

// How far (by EditDistance) an unknown feature name may be from a valid one of `size` bytes to be offered
// as "did you mean".
size_t SuggestionDistance(size_t size) { return std::max<size_t>(2, size / 3); }

// {"error": message} plus, when given, `list_key`: [list...].
void SetError(HttpResponse& res, int status, std::string_view message, std::string_view list_key = {},
              const std::vector<std::string>& list = {}) {
  std::string body;
  JsonWriter json(&body);
  json.BeginObject().Key("error").String(message);
  if (!list_key.empty()) {
    json.Key(list_key).BeginArray();
    for (const std::string& item : list) json.String(item);
    json.EndArray();
  }
  json.EndObject();
  SetBody(res, status, std::move(body), kJsonType);
}

// Calls take(key, value) for each parameter of `query` (a=1&b=2), percent-decoded, in order. False after a 400:
// a parameter that is not valid percent-encoding, or one that take refused (it wrote the error).
bool ForEachQueryParameter(std::string_view query, HttpResponse& res,
                           const std::function<bool(std::string& key, std::string& value)>& take) {
  for (std::string_view rest = query; !rest.empty();) {
    const size_t ampersand = rest.find('&');
    const std::string_view pair = rest.substr(0, ampersand);
    rest = ampersand == std::string_view::npos ? std::string_view() : rest.substr(ampersand + 1);
    if (pair.empty()) continue;
    const size_t equals = pair.find('=');
    std::string key, value;
    if (!PercentDecode(pair.substr(0, equals), &key) ||
        !PercentDecode(equals == std::string_view::npos ? std::string_view() : pair.substr(equals + 1), &value)) {
      SetError(res, 400, "query parameter " + QuotedForMessage(pair) + " is not valid percent-encoding");
      return false;
    }
    if (!take(key, value)) return false;
  }
  return true;
}

// Splits `query` ("?a=1&feature_set=S&b=2") into the feature_set parameter's value (*set, decoded) and the other
// parameters as they were (*rest: "?a=1&b=2", or empty). False when there is no feature_set parameter or it is not
// valid percent-encoding (the set's own handler then answers, for the first set).
bool TakeFeatureSetParameter(std::string_view query, std::string* set, std::string* rest) {
  bool found = false;
  if (query.starts_with('?')) query.remove_prefix(1);
  while (!query.empty()) {
    const size_t ampersand = query.find('&');
    const std::string_view pair = query.substr(0, ampersand);
    query = ampersand == std::string_view::npos ? std::string_view() : query.substr(ampersand + 1);
    if (pair.starts_with("feature_set=") && !found) {
      found = PercentDecode(pair.substr(std::string_view("feature_set=").size()), set) && !set->empty();
      if (!found) return false;
    } else if (!pair.empty()) {
      rest->append(rest->empty() ? "?" : "&").append(pair);
    }
  }
  return found;
}

// The HTTP status for a service error (see feature_service.h).
void SetServiceError(HttpResponse& res, const Status& status) {
  switch (status.code()) {
    case StatusCode::kOk:
    case StatusCode::kInternal: SetError(res, 500, status.message()); return;
    case StatusCode::kInvalidArgument: SetError(res, 400, status.message()); return;
    case StatusCode::kNotFound: SetError(res, 404, status.message()); return;
    case StatusCode::kIoError:
      SetError(res, 503, status.message());
      res.SetHeader("Retry-After", "1");
      return;
  }
  SetError(res, 500, status.message());
}

constexpr std::string_view kAtHint =
    "; give epoch milliseconds (1767225600000) or RFC 3339 text with Z or an offset (2026-01-01T00:00:00Z)";

// Checks that `at` (epoch ms, as written in the request: `text`) is within the times Freshet handles.
Result<int64_t> CheckAtRange(int64_t ms, std::string_view text) {
  if (ms < kMinTimeMs || ms > kMaxTimeMs) {
    return Status::Invalid("'at' " + QuotedForMessage(text) + " is outside years 0001-9999" + std::string(kAtHint));
  }
  return ms;
}

// Parses `at`: an integer is epoch milliseconds, anything else RFC 3339.
Result<int64_t> ParseAt(std::string_view text) {
  const std::string_view hint = kAtHint;
  if (text.empty()) return Status::Invalid("'at' is empty" + std::string(hint));
  const bool integer = text.find_first_not_of("0123456789", text[0] == '-' ? 1 : 0) == std::string_view::npos &&
                       text != "-";
  int64_t ms = 0;
  if (integer) {
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), ms);
    if (ec != std::errc() || end != text.data() + text.size()) {
      return Status::Invalid("'at' " + QuotedForMessage(text) + " is out of range" + std::string(hint));
    }
  } else {
    Result<int64_t> parsed = ParseRfc3339Ms(text);
    if (!parsed.ok()) return Status::Invalid("'at': " + parsed.status().message());
    ms = *parsed;
  }
  return CheckAtRange(ms, text);
}

// The media type of a Content-Type header, lowercased, without parameters ("application/json").
std::string MediaType(std::string_view content_type) {
  const size_t semicolon = content_type.find(';');
  if (semicolon != std::string_view::npos) content_type = content_type.substr(0, semicolon);
  return AsciiLowered(TrimBlanks(content_type));
}

}  // namespace

struct HttpServer::Impl final : HttpHandler {
  Impl(FeatureService& service_in, MetricsRegistry& metrics_in, HttpServerOptions options_in);

  // HttpHandler: called on the loop threads, and on the blocking pool for ingests and blocking lookups.
  bool MayBlock(const HttpRequest& req) const override;
  void Handle(const HttpRequest& req, HttpResponse* res) override;
  void Refuse(const HttpRequest& req, int status, std::string_view message, HttpResponse* res) override;

  // Answers a request on `route` (MatchRoute of its path).
  void Serve(const HttpRequest& req, Route route, HttpResponse& res);
  // Several feature sets (AddFeatureSet): a feature request naming a set goes to that set's handler. False when
  // `req` is not a feature request (the first set's handler answers it).
  bool HandleFeatureSet(const HttpRequest& req, HttpResponse& res);
  std::map<std::string, std::unique_ptr<Impl>, std::less<>> sets;
  std::vector<std::string> set_names;  // In the order they were added.
  void HandleEntityFeatures(std::string_view path, std::string_view query, const std::string& request_id,
                            HttpResponse& res);
  void HandleBatchFeatures(std::string_view body, const std::string& request_id, HttpResponse& res);
  std::string RequestId(const HttpRequest& req);
  void HandleIngest(const HttpRequest& req, HttpResponse& res);
  void HandleHealth(HttpResponse& res);
  void HandleMetrics(HttpResponse& res);
  // The web console: its pages (serve/ui_assets.h), its data, and explanations.
  void HandleConsole(std::string_view path, HttpResponse& res);
  void HandleConsoleData(std::string_view path, HttpResponse& res);
  void HandleExplain(std::string_view path, std::string_view query, HttpResponse& res);
  void HandleTable(std::string_view path, std::string_view body, HttpResponse& res);
  // Counts the answer to `req` on `route`, and its service time when its headers were complete.
  void RecordRequest(const HttpRequest& req, Route route, int status);

  bool Authorized(const HttpRequest& req, std::string* why) const;
  // Feature names -> indices (spec order when `names` is absent); false after writing a 400.
  bool ResolveFeatures(const std::optional<std::vector<std::string_view>>& names, std::vector<int>* features,
                       HttpResponse& res) const;
  // Looks up `entities` and writes the response; `single` selects the GET shape. `outputs`: from
  // ResolveFeatures (features, then request features, computed with `params`).
  void Answer(const std::string& request_id, std::span<const std::string_view> entities, int64_t as_of_ms,
              const std::vector<int>& outputs, const RequestParams& params, bool single, HttpResponse& res);
  // Checks that every parameter is one a request feature reads; false after writing a 400.
  bool CheckParams(const RequestParams& params, HttpResponse& res) const;
  Counter& RequestCounter(Route route, int status);

  FeatureService& service;
  MetricsRegistry& metrics;
  const HttpServerOptions options;
  std::string bearer_token;  // options.bearer_token without surrounding whitespace.
  std::unique_ptr<HttpLoop> loop;  // Set by Start.

  absl::flat_hash_map<std::string, int> feature_index;
  std::vector<std::string> feature_names;  // Spec order, for error messages.
  std::vector<std::string> key_fields;     // The spec's entity key fields (one, or a composite key's).
  std::string JoinKeyFields(std::string_view separator) const {
    std::string out;
    for (size_t k = 0; k < key_fields.size(); ++k) out += (k > 0 ? std::string(separator) : "") + key_fields[k];
    return out;
  }
  // "\"user_id\": \"u1\", \"merchant_id\": \"u2\"" for messages.
  std::string KeyFieldsExample() const {
    std::string out;
    for (size_t k = 0; k < key_fields.size(); ++k) {
      out += (k > 0 ? ", \"" : "\"") + key_fields[k] + "\": \"" + std::string(1, 'a' + static_cast<char>(k)) + "1\"";
    }
    return out;
  }
  // An entity of the request: a composite key's parts (key field order) encoded into one string
  // (common/entity_key.h), or the one part as it is.
  std::string EntityOf(std::span<const std::string_view> parts) const {
    return parts.size() == 1 ? std::string(parts[0]) : EncodeEntityKey(parts);
  }
  // "entity": the id, or for a composite key an object of its parts ({"user_id": "u1", "merchant_id": "m7"}).
  void WriteEntity(JsonWriter& json, std::string_view entity) const {
    json.Key("entity");
    std::vector<std::string> parts;
    if (key_fields.size() == 1 || !DecodeEntityKey(entity, &parts) || parts.size() != key_fields.size()) {
      json.String(entity);
      return;
    }
    json.BeginObject();
    for (size_t k = 0; k < parts.size(); ++k) json.Key(key_fields[k]).String(parts[k]);
    json.EndObject();
  }
  // Reads entities[index] of a POST body: a string or integer id, or, for any key, an object of the key
  // fields. Appends the entity to *out; false after writing a 400.
  bool ReadBatchEntity(simdjson::dom::element item, size_t index, std::vector<std::string>* out, HttpResponse& res) const;
  std::vector<bool> feature_lists;         // Spec order: the value is a JSON list (top_k, last_k).
  // The longest name an unknown feature may have and still be compared with the valid ones for a "did you
  // mean": the longest feature name plus the edit distance a suggestion allows for it. Longer names are
  // refused without that comparison, whose cost grows with the name's length.
  size_t max_suggestable_name_bytes = 0;
  size_t max_feature_name_bytes = 0;
  std::string spec_json;

  std::array<Histogram*, kRouteCount> latency{};
  // Request counters by route and status, created on first use (the registry lock is taken once per pair).
  std::unique_ptr<std::array<std::atomic<Counter*>, kMaxStatus>[]> requests;
  Counter* unauthorized = nullptr;
  Counter* lookup_entities = nullptr;

  // The loop's counters and load, copied into the registry when /metrics is read.
  void PublishLoopStats();
  std::mutex loop_stats_mutex;  // One copy at a time: counters grow by the difference since the last one.
  Gauge* connections_open = nullptr;
  Gauge* connections_max = nullptr;
  Gauge* connections_over_cap = nullptr;
  Gauge* buffered_request_bytes = nullptr;
  Counter* accept_pauses = nullptr;
  Counter* connections_shed = nullptr;
  Counter* connections_refused = nullptr;
  Counter* header_timeouts = nullptr;
  Counter* body_timeouts = nullptr;
  Counter* budget_refusals = nullptr;
};

HttpServer::Impl::Impl(FeatureService& service_in, MetricsRegistry& metrics_in, HttpServerOptions options_in)
    : service(service_in), metrics(metrics_in), options(std::move(options_in)) {
  std::string_view token = options.bearer_token;
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.front()))) token.remove_prefix(1);
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.remove_suffix(1);
  bearer_token = std::string(token);
  const Spec& spec = service.spec();
  key_fields = spec.entity_fields.empty() ? std::vector<std::string>{spec.entity_field} : spec.entity_fields;
  for (size_t k = 0; k < spec.features.size(); ++k) {
    feature_index.emplace(spec.features[k].name, static_cast<int>(k));
    feature_names.push_back(spec.features[k].name);
    feature_lists.push_back(AggGivesJsonList(spec.features[k].agg));
    const size_t size = spec.features[k].name.size();
    max_feature_name_bytes = std::max(max_feature_name_bytes, size);
    max_suggestable_name_bytes = std::max(max_suggestable_name_bytes, size + SuggestionDistance(size));
  }
  // Request features answer like features, after them: index features.size() + j.
  for (const RequestFeatureSpec& r : spec.request_features.items) {
    feature_index.emplace(r.name, static_cast<int>(feature_names.size()));
    feature_names.push_back(r.name);
    max_feature_name_bytes = std::max(max_feature_name_bytes, r.name.size());
    max_suggestable_name_bytes = std::max(max_suggestable_name_bytes, r.name.size() + SuggestionDistance(r.name.size()));
  }
  spec_json = SpecJson(spec);
  for (int route = 0; route < kRouteCount; ++route) {
    latency[route] = &metrics.GetHistogram(
        "freshet_http_request_duration_seconds",
        "Time from the end of an HTTP request's headers to its response written, by route.",
        kLatencyBucketsSeconds, {{"route", kRoutes[route].label}});
  }
  requests = std::make_unique<std::array<std::atomic<Counter*>, kMaxStatus>[]>(kRouteCount);
  for (int route = 0; route < kRouteCount; ++route) {
    for (auto& slot : requests[route]) slot.store(nullptr, std::memory_order_relaxed);
  }
  RegisterProcessMetrics(metrics);  // Whatever serves /metrics shows the process and the build too.
  unauthorized = &metrics.GetCounter("freshet_http_unauthorized_total",
                                     "Requests refused with 401 for a missing or wrong bearer token.");
  lookup_entities =
      &metrics.GetCounter("freshet_http_lookup_entities_total", "Entities looked up by feature requests.");
  connections_open = &metrics.GetGauge("freshet_http_connections_open", "HTTP connections open.");
  connections_max = &metrics.GetGauge("freshet_http_connections_max",
                                      "The HTTP connection cap in force (lowered by the open-file limit).");
  connections_over_cap = &metrics.GetGauge(
      "freshet_http_connections_over_cap_max",
      "How far freshet_http_connections_open may read over the cap: connections accepted at the cap are counted "
      "until the ones they replace close (a fixed number per event loop).");
  buffered_request_bytes = &metrics.GetGauge("freshet_http_buffered_request_bytes",
                                             "Bytes buffered for HTTP requests being received, all connections.");
  accept_pauses = &metrics.GetCounter("freshet_http_accept_pauses_total",
                                      "Pauses of accepting HTTP connections for lack of descriptors or memory.");
  connections_shed = &metrics.GetCounter("freshet_http_connections_shed_total",
                                         "Waiting HTTP connections closed at the cap to admit a new one.");
  connections_refused = &metrics.GetCounter("freshet_http_connections_refused_total",
                                            "New HTTP connections closed at the cap, none being sheddable.");
  const char* slow_help = "HTTP connections closed for a request arriving too slowly, by the part late.";
  header_timeouts =
      &metrics.GetCounter("freshet_http_slow_requests_closed_total", slow_help, {{"part", "headers"}});
  body_timeouts = &metrics.GetCounter("freshet_http_slow_requests_closed_total", slow_help, {{"part", "body"}});
  budget_refusals = &metrics.GetCounter("freshet_http_buffer_budget_refusals_total",
                                        "HTTP requests refused with 503 for the buffered-bytes budget.");
}

Counter& HttpServer::Impl::RequestCounter(Route route, int status) {
  if (status < 0 || status >= kMaxStatus) status = 0;
  std::atomic<Counter*>& slot = requests[route][status];
  Counter* counter = slot.load(std::memory_order_acquire);
  if (counter == nullptr) {
    counter = &metrics.GetCounter("freshet_http_requests_total", "HTTP requests answered, by route and status.",
                                  {{"route", kRoutes[route].label}, {"status", std::to_string(status)}});
    slot.store(counter, std::memory_order_release);
  }
  return *counter;
}

void HttpServer::Impl::RecordRequest(const HttpRequest& req, Route route, int status) {
  RequestCounter(route, status).Increment();
  if (req.start != std::chrono::steady_clock::time_point()) {
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - req.start;
    latency[route]->Observe(elapsed.count());
  }
}

Route RouteOf(const HttpRequest& req, size_t key_fields) {
  return req.target.empty() ? kRouteUnmatched : MatchRoute(req.target.substr(0, req.target.find('?')), key_fields);
}

bool HttpServer::Impl::MayBlock(const HttpRequest& req) const {
  const Route route = RouteOf(req, key_fields.size());
  return route == kRouteIngest || route == kRouteExplain || route == kRouteTable ||
         ((route == kRouteEntityFeatures || route == kRouteBatchFeatures) && service.LookupBlocks());
}

void HttpServer::Impl::Handle(const HttpRequest& req, HttpResponse* res) {
  if (!sets.empty() && HandleFeatureSet(req, *res)) return;
  const Route route = RouteOf(req, key_fields.size());
  Serve(req, route, *res);
  RecordRequest(req, route, res->status);
}

void HttpServer::Impl::Refuse(const HttpRequest& req, int status, std::string_view message, HttpResponse* res) {
  SetError(*res, status, message);
  RecordRequest(req, RouteOf(req, key_fields.size()), status);
}

bool HttpServer::Impl::Authorized(const HttpRequest& req, std::string* why) const {
  if (bearer_token.empty()) return true;
  if (req.HeaderCount("Authorization") == 0) {
    *why = "this endpoint requires the header 'Authorization: Bearer <token>' with the token freshet run was given";
    return false;
  }
  const std::string_view value = TrimBlanks(req.Header("Authorization"));
  if (value.size() < 7 || AsciiLowered(value.substr(0, 6)) != "bearer" || value[6] != ' ') {
    *why = "the Authorization header must be 'Bearer <token>'";
    return false;
  }
  if (!ConstantTimeEquals(TrimBlanks(value.substr(7)), bearer_token)) {
    *why = "the bearer token is not the one freshet run was given";
    return false;
  }
  return true;
}

void HttpServer::Impl::Serve(const HttpRequest& req, Route route, HttpResponse& res) {
  const std::string_view target = req.target;
  const size_t question = target.find('?');
  const std::string_view path = target.substr(0, question);
  const std::string_view query = question == std::string_view::npos ? std::string_view() : target.substr(question + 1);

  // A multipart body is refused whatever the endpoint, as one over the size limit is (before the token).
  if (MethodTakesBody(req.method) && MediaType(req.Header("Content-Type")) == "multipart/form-data") {
    SetError(res, 415, "multipart/form-data bodies are not accepted; send the JSON as the body itself");
    return;
  }
  std::string why;
  if (kRoutes[route].admin && !Authorized(req, &why)) {
    unauthorized->Increment();
    res.SetHeader("WWW-Authenticate", "Bearer realm=\"freshet\"");
    SetError(res, 401, why);
    return;
  }
  if (route == kRouteUnmatched || route == kRouteAdmin) {
    std::string message = "no endpoint at " + std::string(req.method) + " " + QuotedForMessage(path);
    if (path.starts_with(kEntityPrefix)) message += "; an entity that contains '/' must be sent as %2F";
    SetError(res, 404, message, "endpoints", std::vector<std::string>(std::begin(kEndpoints), std::end(kEndpoints)));
    return;
  }
  if (!MethodAllowed(route, req.method)) {
    res.SetHeader("Allow", kRoutes[route].allow);
    SetError(res, 405,
             "method " + QuotedForMessage(req.method) + " is not allowed on " + kRoutes[route].label + "; use " +
                 kRoutes[route].allow);
    return;
  }
  if ((route == kRouteBatchFeatures || route == kRouteIngest || route == kRouteTable) && !query.empty()) {
    // A query string there is a misunderstanding (parameters of a POST go in its body): say so rather than
    // ignore it. GET /health, /metrics and /v1/spec ignore theirs (cache busters, probes).
    SetError(res, 400, "POST " + std::string(kRoutes[route].label) +
                           " takes no query parameters (a feature request puts them in the JSON body); remove " +
                           QuotedForMessage(query));
    return;
  }
  switch (route) {
    case kRouteEntityFeatures: HandleEntityFeatures(path, query, RequestId(req), res); return;
    case kRouteBatchFeatures: HandleBatchFeatures(req.body, RequestId(req), res); return;
    case kRouteIngest: HandleIngest(req, res); return;
    case kRouteHealth: HandleHealth(res); return;
    case kRouteMetrics: HandleMetrics(res); return;
    case kRouteSpec: SetBody(res, 200, spec_json, kJsonType); return;
    case kRouteExplain: HandleExplain(path, query, res); return;
    case kRouteConsoleData: HandleConsoleData(path, res); return;
    case kRouteConsole: HandleConsole(path, res); return;
    case kRouteTable: HandleTable(path, req.body, res); return;
    case kRouteAdmin:
    case kRouteUnmatched:
    case kRouteCount: break;
  }
  SetError(res, 500, "internal error: unrouted request");
}

bool HttpServer::Impl::HandleFeatureSet(const HttpRequest& req, HttpResponse& res) {
  const std::string_view target = req.target;
  const size_t question = target.find('?');
  const std::string_view path = target.substr(0, question);
  std::string_view query = question == std::string_view::npos ? std::string_view() : target.substr(question);
  std::string_view set;
  std::string set_owned;
  std::string rest;  // The path the set's handler sees.
  if (path == "/v1/features") {
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    if (!parser.parse(req.body.data(), req.body.size()).get(doc) && doc["feature_set"].get_string().get(set)) {
      set = std::string_view();  // Absent or not a string.
    }
    if (set.empty()) {
      SetError(res, 400, "several feature sets are served here; name one with \"feature_set\": \"<set>\" in the "
                         "body, or POST /v1/features/{set}",
               "feature_sets", set_names);
      RecordRequest(req, kRouteBatchFeatures, res.status);
      return true;
    }
    rest = "/v1/features";
  } else if (path == "/v1/spec" && query.starts_with("?feature_set=")) {
    set = query.substr(std::string_view("?feature_set=").size());  // Else the first set's spec.
    rest = "/v1/spec";
  } else if (path.starts_with(kExplainPrefix) || path == "/v1/ui/features") {
    // The console's per-set views: `feature_set=S` among the query's parameters (else the first set's).
    std::string kept;
    if (!TakeFeatureSetParameter(query, &set_owned, &kept)) return false;
    set = set_owned;
    rest = std::string(path) + kept;
    query = std::string_view();
  } else if (path.starts_with(kEntityPrefix)) {
    const std::string_view tail = path.substr(kEntityPrefix.size());
    const size_t slash = tail.find('/');
    set = tail.substr(0, slash);
    rest = slash == std::string_view::npos ? "/v1/features" : "/v1/features/" + std::string(tail.substr(slash + 1));
  } else {
    return false;
  }
  auto it = sets.find(set);
  if (it == sets.end()) {
    SetError(res, 404, "no feature set " + QuotedForMessage(set) + "; several are served here: use "
                       "/v1/features/{set}/{entity} (or POST /v1/features with \"feature_set\")",
             "feature_sets", set_names);
    RecordRequest(req, kRouteEntityFeatures, res.status);
    return true;
  }
  HttpRequest routed = req;
  if (rest != "/v1/spec") rest += query;
  routed.target = rest;
  it->second->Handle(routed, &res);
  return true;
}

bool HttpServer::Impl::ResolveFeatures(const std::optional<std::vector<std::string_view>>& names,
                                       std::vector<int>* features, HttpResponse& res) const {
  features->clear();
  if (!names) {
    for (size_t k = 0; k < feature_names.size(); ++k) features->push_back(static_cast<int>(k));
    return true;
  }
  if (names->empty()) {
    SetError(res, 400, "'features' is empty; name at least one feature, or leave it out to get all of them",
             "valid_features", feature_names);
    return false;
  }
  for (std::string_view name : *names) {
    auto it = name.size() > max_feature_name_bytes
                  ? feature_index.end()
                  : feature_index.find(absl::string_view(name.data(), name.size()));
    if (it == feature_index.end()) {
      std::string message = name.empty() ? std::string("'features' contains an empty name")
                                         : "unknown feature " + QuotedForMessage(name);
      if (name.size() > max_suggestable_name_bytes) {
        // Too long to be a typo of any feature name: no suggestion, and no comparison with each name.
        message += " (" + std::to_string(name.size()) + " bytes; no feature name is longer than " +
                   std::to_string(max_feature_name_bytes) + " bytes)";
      } else if (!name.empty()) {
        // Only names whose length is within the allowed distance can be close enough (the edit distance is at
        // least the difference in length), so each comparison costs at most about
        // max_suggestable_name_bytes^2 steps.
        size_t best = std::string::npos;
        const std::string* closest = nullptr;
        for (const std::string& valid : feature_names) {
          const size_t allowed = SuggestionDistance(valid.size());
          const size_t length_difference = name.size() > valid.size() ? name.size() - valid.size()
                                                                       : valid.size() - name.size();
          if (length_difference > allowed) continue;
          const size_t distance = EditDistance(name, valid);
          if (distance <= allowed && distance < best) best = distance, closest = &valid;
        }
        if (closest != nullptr) message += " (did you mean '" + *closest + "'?)";
      }
      message += "; valid features:";
      for (size_t k = 0; k < feature_names.size(); ++k) message += (k == 0 ? " " : ", ") + feature_names[k];
      SetError(res, 400, message, "valid_features", feature_names);
      return false;
    }
    if (std::find(features->begin(), features->end(), it->second) == features->end()) features->push_back(it->second);
  }
  return true;
}

void HttpServer::Impl::HandleEntityFeatures(std::string_view path, std::string_view query, const std::string& request_id,
                                            HttpResponse& res) {
  // One segment per key field (MatchRoute counted them).
  std::vector<std::string> parts;
  std::string_view rest = path.substr(kEntityPrefix.size());
  for (size_t k = 0; k < key_fields.size(); ++k) {
    const size_t slash = rest.find('/');
    std::string& part = parts.emplace_back();
    if (!PercentDecode(rest.substr(0, slash), &part)) {
      SetError(res, 400, "the entity in the path is not valid percent-encoding ('%' must be followed by two hex "
                         "digits); encode '%' as %25");
      return;
    }
    if (part.empty()) {
      SetError(res, 400, key_fields.size() == 1
                             ? "the entity is empty; use /v1/features/{entity}, e.g. /v1/features/u123"
                             : "the key field '" + key_fields[k] + "' is empty in the path; use /v1/features/{" +
                                   JoinKeyFields("}/{") + "}, e.g. /v1/features/u123/m7");
      return;
    }
    rest.remove_prefix(slash == std::string_view::npos ? rest.size() : slash + 1);
  }
  std::vector<std::string_view> views(parts.begin(), parts.end());
  const std::string entity = EntityOf(views);
  std::optional<std::string> features_text;
  std::optional<std::string> at_text;
  std::deque<std::pair<std::string, std::string>> param_texts;  // A deque: the params' values point into it.
  const bool parameters_ok = ForEachQueryParameter(query, res, [&](std::string& key, std::string& value) {
    if (key == "features") {
      if (features_text) features_text->push_back(',');
      else features_text.emplace();
      features_text->append(value);
    } else if (key == "at") {
      if (at_text) {
        SetError(res, 400, "'at' is given more than once; give one time");
        return false;
      }
      at_text = std::move(value);
    } else if (key.starts_with("param.") && key.size() > 6) {
      param_texts.emplace_back(key.substr(6), std::move(value));
    } else {
      SetError(res, 400, "unknown query parameter " + QuotedForMessage(key) + "; valid: features (comma-separated names), "
                         "at (epoch milliseconds or RFC 3339), param.NAME (a request parameter)");
      return false;
    }
    return true;
  });
  if (!parameters_ok) return;
  RequestParams params;
  for (const auto& [name, text] : param_texts) params.emplace_back(name, RequestParamFromText(text));
  if (!CheckParams(params, res)) return;

  std::optional<std::vector<std::string_view>> names;
  if (features_text) {
    names.emplace();
    std::string_view rest = *features_text;
    if (!rest.empty()) {
      while (true) {
        const size_t comma = rest.find(',');
        names->push_back(TrimBlanks(rest.substr(0, comma)));
        if (comma == std::string_view::npos) break;
        rest.remove_prefix(comma + 1);
      }
    }
  }
  std::vector<int> features;
  if (!ResolveFeatures(names, &features, res)) return;
  int64_t as_of_ms = 0;
  if (at_text) {
    Result<int64_t> at = ParseAt(*at_text);
    if (!at.ok()) {
      SetError(res, 400, at.status().message());
      return;
    }
    as_of_ms = *at;
  } else {
    as_of_ms = WallClockMs();
  }
  const std::string_view entities[1] = {entity};
  Answer(request_id, entities, as_of_ms, features, params, /*single=*/true, res);
}

void HttpServer::Impl::HandleBatchFeatures(std::string_view body, const std::string& request_id,
                                           HttpResponse& res) {
  static constexpr std::string_view kShape =
      "; send {\"entities\": [\"u1\", \"u2\"], \"features\": [\"name\", ...] (optional), \"at\": "
      "epoch ms or RFC 3339 (optional), \"params\": {\"name\": value} (optional)}";
  simdjson::dom::parser parser;  // Per request: a parser keeps the capacity of its largest document.
  simdjson::dom::element doc;
  if (const auto error = parser.parse(body.data(), body.size()).get(doc); error) {
    SetError(res, 400, std::string("the body is not valid JSON (") + simdjson::error_message(error) + ")" +
                           std::string(kShape));
    return;
  }
  simdjson::dom::object object;
  if (doc.get_object().get(object)) {
    SetError(res, 400, "the body must be a JSON object" + std::string(kShape));
    return;
  }
  std::optional<simdjson::dom::array> entity_array;
  std::optional<std::vector<std::string_view>> names;
  bool at_given = false;  // Not std::optional: gcc 12 then warns (wrongly) that it may be uninitialized.
  int64_t at_ms = 0;
  RequestParams params;  // Their strings point into the parsed body.
  for (auto [key, value] : object) {
    if (key == "entities") {
      simdjson::dom::array array;
      if (value.get_array().get(array)) {
        SetError(res, 400, "'entities' must be an array of entity ids (strings or integers)" + std::string(kShape));
        return;
      }
      entity_array = array;
    } else if (key == "features") {
      if (value.is_null()) {
        names.reset();
        continue;
      }
      simdjson::dom::array array;
      if (value.get_array().get(array)) {
        SetError(res, 400, "'features' must be an array of feature names" + std::string(kShape));
        return;
      }
      names.emplace();
      size_t index = 0;
      for (simdjson::dom::element item : array) {
        std::string_view name;
        if (item.get_string().get(name)) {
          SetError(res, 400, "features[" + std::to_string(index) + "] must be a string (a feature name)");
          return;
        }
        names->push_back(name);
        ++index;
      }
    } else if (key == "at") {
      if (value.is_null()) {
        at_given = false;
        continue;
      }
      int64_t ms = 0;
      std::string_view text;
      if (!value.get_int64().get(ms)) {
        Result<int64_t> at = CheckAtRange(ms, std::to_string(ms));
        if (!at.ok()) {
          SetError(res, 400, at.status().message());
          return;
        }
        at_ms = *at;
        at_given = true;
      } else if (!value.get_string().get(text)) {
        Result<int64_t> at = ParseAt(text);
        if (!at.ok()) {
          SetError(res, 400, at.status().message());
          return;
        }
        at_ms = *at;
        at_given = true;
      } else {
        SetError(res, 400, "'at' must be an integer (epoch milliseconds) or a string (RFC 3339, e.g. "
                           "\"2026-01-01T00:00:00Z\")");
        return;
      }
    } else if (key == "params") {
      simdjson::dom::object given;
      if (value.get_object().get(given)) {
        SetError(res, 400, "'params' must be an object of request parameters, e.g. {\"amount\": 12.5}");
        return;
      }
      for (auto [name, v] : given) {
        Value param = Value::Null();
        if (v.is_int64()) param = Value::Int(v.get_int64().value_unsafe());
        else if (v.is_number()) param = Value::Double(v.get_double().value_unsafe());
        else if (v.is_bool()) param = Value::Bool(v.get_bool().value_unsafe());
        else if (v.is_string()) param = Value::String(v.get_string().value_unsafe());
        else if (!v.is_null()) param = Value::Composite();
        params.emplace_back(std::string(name), param);
      }
    } else if (key == "feature_set") {
      // The set a request with several feature sets names (routed by HandleFeatureSet); with one, its name.
      std::string_view set;
      if (value.get_string().get(set) || set != service.spec().name) {
        SetError(res, 400, "'feature_set' must be the name of the feature set served here, \"" +
                               service.spec().name + "\"" + std::string(kShape));
        return;
      }
    } else {
      SetError(res, 400, "unknown key " + QuotedForMessage(key) +
                             " in the body; valid keys: entities, features, at, params, feature_set");
      return;
    }
  }
  if (!entity_array) {
    SetError(res, 400, "the body has no 'entities'" + std::string(kShape));
    return;
  }
  const size_t count = entity_array->size();
  if (count > options.max_entities_per_request) {
    SetError(res, 400, "too many entities: " + std::to_string(count) + " in one request, the limit is " +
                           std::to_string(options.max_entities_per_request) + "; split them into several requests");
    return;
  }
  std::vector<std::string> owned;  // Each request entity (a composite key encoded); reserved, so never moves.
  owned.reserve(count);
  size_t index = 0;
  for (simdjson::dom::element item : *entity_array) {
    if (!ReadBatchEntity(item, index++, &owned, res)) return;
  }
  const std::vector<std::string_view> entities(owned.begin(), owned.end());
  std::vector<int> features;
  if (!ResolveFeatures(names, &features, res)) return;
  if (!CheckParams(params, res)) return;
  Answer(request_id, entities, at_given ? at_ms : WallClockMs(), features, params, /*single=*/false, res);
}

// A string or integer id as text; false when the element is neither (or an empty string: *text is then empty).
bool ReadIdText(simdjson::dom::element item, std::string* text) {
  std::string_view view;
  int64_t signed_id = 0;
  uint64_t unsigned_id = 0;
  if (!item.get_string().get(view)) {
    *text = std::string(view);
    return !view.empty();
  }
  if (!item.get_int64().get(signed_id)) {
    *text = std::to_string(signed_id);
  } else if (!item.get_uint64().get(unsigned_id)) {
    *text = std::to_string(unsigned_id);
  } else {
    return false;
  }
  return true;
}

bool HttpServer::Impl::ReadBatchEntity(simdjson::dom::element item, size_t index, std::vector<std::string>* out,
                                       HttpResponse& res) const {
  const std::string where = "entities[" + std::to_string(index) + "]";
  simdjson::dom::object object;
  if (item.get_object().get(object)) {  // An id: the whole key when it has one field.
    std::string text;
    if (key_fields.size() > 1) {
      SetError(res, 400, where + " must be an object of the key fields, e.g. {" + KeyFieldsExample() +
                             "}: the entity key is [" + JoinKeyFields(", ") + "]");
      return false;
    }
    if (!ReadIdText(item, &text)) {
      SetError(res, 400, where + (item.is_string() ? " is an empty string; entity ids are not empty"
                                                   : " must be a string or an integer entity id"));
      return false;
    }
    out->push_back(std::move(text));
    return true;
  }
  std::string parts[kMaxKeyFields];
  for (size_t k = 0; k < key_fields.size(); ++k) {
    simdjson::dom::element part;
    if (object.at_key(key_fields[k]).get(part) || !ReadIdText(part, &parts[k])) {
      SetError(res, 400, where + " needs '" + key_fields[k] + "' as a non-empty string or an integer, e.g. {" +
                             KeyFieldsExample() + "}");
      return false;
    }
  }
  if (object.size() != key_fields.size()) {
    SetError(res, 400, where + " has keys other than the key fields " + JoinKeyFields(", ") + "; e.g. {" +
                           KeyFieldsExample() + "}");
    return false;
  }
  std::string_view views[kMaxKeyFields];
  for (size_t k = 0; k < key_fields.size(); ++k) views[k] = parts[k];
  out->push_back(EntityOf(std::span<const std::string_view>(views, key_fields.size())));
  return true;
}

// The client's X-Request-Id when it is a sensible token (printable, at most 128 bytes), else a new one:
// a per-process random prefix and a counter, unique within the feature log.
std::string HttpServer::Impl::RequestId(const HttpRequest& req) {
  const std::string_view given = req.Header("X-Request-Id");
  if (!given.empty() && given.size() <= 128 &&
      std::all_of(given.begin(), given.end(), [](char c) { return c > 32 && c < 127; })) {
    return std::string(given);
  }
  static const uint64_t prefix = std::chrono::steady_clock::now().time_since_epoch().count() ^
                                 static_cast<uint64_t>(WallClockMs()) << 20;
  static std::atomic<uint64_t> counter{0};
  char id[40];
  std::snprintf(id, sizeof(id), "%012llx-%llu", static_cast<unsigned long long>(prefix & 0xFFFFFFFFFFFFull),
                static_cast<unsigned long long>(counter.fetch_add(1, std::memory_order_relaxed)));
  return id;
}

bool HttpServer::Impl::CheckParams(const RequestParams& params, HttpResponse& res) const {
  const std::vector<std::string>& valid = service.spec().request_features.params;
  for (const auto& [name, value] : params) {
    if (std::binary_search(valid.begin(), valid.end(), name)) continue;
    std::string listed;
    for (const std::string& v : valid) listed += (listed.empty() ? "" : ", ") + v;
    SetError(res, 400, "unknown request parameter " + QuotedForMessage(name) + "; " +
                           (valid.empty() ? std::string("this spec's request features read no parameters")
                                          : "the request features read: " + listed));
    return false;
  }
  return true;
}

void HttpServer::Impl::Answer(const std::string& request_id, std::span<const std::string_view> entities, int64_t as_of_ms,
                              const std::vector<int>& outputs, const RequestParams& params, bool single,
                              HttpResponse& res) {
  // The features to look up: those asked for, and with a request feature asked for, every feature the request
  // features read. position[k]: where feature k is in the lookup.
  const RequestFeatures& request = service.spec().request_features;
  const int feature_count = static_cast<int>(service.spec().features.size());
  std::vector<int> features;
  std::vector<int> position(static_cast<size_t>(feature_count), -1);
  bool wants_request_features = false;
  const auto look_up = [&](int k) {
    if (position[k] < 0) position[k] = static_cast<int>(features.size()), features.push_back(k);
  };
  for (int k : outputs) {
    if (k < feature_count) look_up(k);
    else wants_request_features = true;
  }
  if (wants_request_features) {
    for (int k : request.feature_inputs) look_up(k);
  }
  std::vector<Value> request_values;
  OwnedStrings owned;
  std::string body;
  std::string shape_error;
  const Status status =
      service.Lookup(entities, as_of_ms, features, [&](std::span<const FeatureLookup> lookups) {
        if (lookups.size() != entities.size()) {
          shape_error = "the feature service answered " + std::to_string(lookups.size()) + " entities for " +
                        std::to_string(entities.size());
          return;
        }
        JsonWriter json(&body);
        json.BeginObject();
        json.Key("request_id").String(request_id);
        if (single) WriteEntity(json, entities[0]);
        json.Key("as_of").String(FormatRfc3339(as_of_ms));
        json.Key("as_of_ms").Int(as_of_ms);
        if (!single) json.Key("results").BeginArray();
        for (size_t e = 0; e < entities.size(); ++e) {
          const FeatureLookup& lookup = lookups[e];
          if (lookup.values.size() != features.size()) {
            shape_error = "the feature service answered " + std::to_string(lookup.values.size()) +
                          " values for " + std::to_string(features.size()) + " features";
            return;
          }
          if (!single) WriteEntity(json.BeginObject(), entities[e]);
          json.Key("known").Bool(lookup.known);
          json.Key("exact").Bool(lookup.exact);
          json.Key("newest_event_age_ms");
          if (lookup.newest_event_ms) json.Int(as_of_ms - *lookup.newest_event_ms);
          else json.Null();
          if (wants_request_features) {
            EvaluateRequestFeatures(request, entities[e], as_of_ms,
                                    [&](int k) { return lookup.values[static_cast<size_t>(position[k])]; }, params,
                                    &request_values, &owned);
          }
          json.Key("features").BeginObject();
          for (int k : outputs) {
            const auto feature = static_cast<size_t>(k);
            json.Key(feature_names[feature])
                .FeatureValue(k < feature_count ? lookup.values[static_cast<size_t>(position[k])]
                                                : request_values[static_cast<size_t>(k - feature_count)],
                              k < feature_count && feature_lists[feature]);
          }
          json.EndObject();
          if (!single) json.EndObject();
        }
        if (!single) json.EndArray();
        json.EndObject();
        service.LogAnswer(request_id, as_of_ms, features, entities, lookups);
      });
  if (!status.ok()) {
    SetServiceError(res, status);
    return;
  }
  if (!shape_error.empty() || body.empty()) {
    SetError(res, 500, "internal error: " + (shape_error.empty() ? "the feature service gave no answer" : shape_error));
    return;
  }
  lookup_entities->Increment(entities.size());
  res.SetHeader("X-Request-Id", request_id);
  SetBody(res, 200, std::move(body), kJsonType);
}

// The longest Idempotency-Key taken (as the ingest log keeps them).
constexpr size_t kMaxIdempotencyKeyBytes = 256;

void HttpServer::Impl::HandleIngest(const HttpRequest& req, HttpResponse& res) {
  const std::string media_type = MediaType(req.Header("Content-Type"));
  IngestFormat format;
  if (media_type == "application/x-ndjson" || media_type == "application/jsonl" ||
      media_type == "application/json-lines" || media_type == "application/jsonlines" ||
      media_type == "application/x-jsonlines") {
    format = IngestFormat::kJsonLines;
  } else if (media_type == "application/json") {
    format = IngestFormat::kJsonArray;
  } else {
    SetError(res, 415, "POST /v1/ingest takes JSON lines with 'Content-Type: application/x-ndjson' or a JSON array "
                       "of events with 'Content-Type: application/json'; got " +
                           (media_type.empty() ? std::string("no Content-Type") : QuotedForMessage(media_type)));
    return;
  }
  // Idempotency-Key: a producer's name for this batch, so that a resend after a lost acknowledgement is
  // answered with the first acknowledgement instead of being logged twice. Visible ASCII (and inner blanks).
  const size_t key_headers = req.HeaderCount("Idempotency-Key");
  const std::string_view key = req.Header("Idempotency-Key");
  if (key_headers > 1) {
    SetError(res, 400, "the request has " + std::to_string(key_headers) + " Idempotency-Key headers; send one");
    return;
  }
  if (key_headers == 1) {
    const bool visible = std::all_of(key.begin(), key.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
    if (key.empty() || key.size() > kMaxIdempotencyKeyBytes || !visible) {
      SetError(res, 400, "Idempotency-Key must be 1 to " + std::to_string(kMaxIdempotencyKeyBytes) +
                             " characters of printable ASCII (e.g. a UUID), the same on every resend of the batch; got " +
                             (key.empty() ? std::string("an empty one") : QuotedForMessage(key)));
      return;
    }
  }
  Result<IngestAck> ack = key_headers == 1 ? service.IngestWithKey(req.body, format, key)
                                           : service.Ingest(req.body, format);
  if (!ack.ok()) {
    SetServiceError(res, ack.status());
    return;
  }
  if (ack->key_outcome == IngestAck::KeyOutcome::kKeyReused) {
    SetError(res, 422, "Idempotency-Key " + QuotedForMessage(key) + " was used at " + FormatRfc3339(ack->first_logged_ms) +
                           " for a batch with other events; a resend must repeat its batch exactly (nothing was "
                           "logged). Use a new key for new events");
    return;
  }
  const bool replayed = ack->key_outcome == IngestAck::KeyOutcome::kReplayed;
  std::string out;
  JsonWriter json(&out);
  json.BeginObject().Key("accepted").Uint(ack->accepted).Key("rejected").Uint(ack->rejected);
  if (!ack->errors.empty()) {
    json.Key("errors").BeginArray();
    for (const auto& [line, reason] : ack->errors) {
      json.BeginObject().Key("line").Uint(line).Key("reason").String(reason).EndObject();
    }
    json.EndArray();
  }
  if (replayed) json.Key("replayed").Bool(true);
  json.EndObject();
  if (replayed) res.SetHeader("Idempotent-Replayed", "true");
  SetBody(res, 200, std::move(out), kJsonType);
}

void HttpServer::Impl::HandleHealth(HttpResponse& res) {
  const HealthReport health = service.Health();
  std::string body;
  JsonWriter json(&body);
  json.BeginObject().Key("status").String(health.ok ? "ok" : "degraded");
  if (!health.ok) {
    json.Key("reasons").BeginArray();
    for (const std::string& reason : health.reasons) json.String(reason);
    json.EndArray();
  }
  json.EndObject();
  SetBody(res, health.ok ? 200 : 503, std::move(body), kJsonType);
}

void HttpServer::Impl::PublishLoopStats() {
  if (!loop) return;
  const HttpLoopStats stats = loop->stats();
  std::lock_guard lock(loop_stats_mutex);
  const auto catch_up = [](Counter* counter, uint64_t value) {
    if (value > counter->value()) counter->Increment(value - counter->value());
  };
  catch_up(accept_pauses, stats.accept_pauses);
  catch_up(connections_shed, stats.connections_shed);
  catch_up(connections_refused, stats.connections_refused);
  catch_up(header_timeouts, stats.header_timeouts);
  catch_up(body_timeouts, stats.body_timeouts);
  catch_up(budget_refusals, stats.budget_refusals);
  connections_open->Set(stats.open_connections);
  connections_max->Set(stats.max_connections);
  connections_over_cap->Set(stats.over_cap_allowance);
  buffered_request_bytes->Set(static_cast<double>(stats.buffered_request_bytes));
}

void HttpServer::Impl::HandleMetrics(HttpResponse& res) {
  PublishLoopStats();
  std::string text;
  metrics.AppendText(&text);
  service.AppendMetrics(&text);
  SetBody(res, 200, std::move(text), "text/plain; version=0.0.4; charset=utf-8");
}

void HttpServer::Impl::HandleConsole(std::string_view path, HttpResponse& res) {
  std::string_view name = path.substr(std::min(path.size(), std::string_view("/ui/").size()));
  if (name.empty()) name = "index.html";
  const UiAsset* asset = FindUiAsset(name);
  if (asset == nullptr) {
    SetError(res, 404, "no console file " + QuotedForMessage(name) + "; the console is at /ui");
    return;
  }
  res.SetHeader("Cache-Control", "no-cache");
  SetBody(res, 200, std::string(asset->body), std::string(asset->content_type).c_str());
}

void HttpServer::Impl::HandleConsoleData(std::string_view path, HttpResponse& res) {
  const std::string_view view = path.substr(kConsoleDataPrefix.size());
  if (view != "pipeline" && view != "features" && view != "dead-letters") {
    SetError(res, 404, "no console data " + QuotedForMessage(view) + "; valid: /v1/ui/pipeline, /v1/ui/features, "
                       "/v1/ui/dead-letters");
    return;
  }
  Result<std::string> body = service.ConsoleJson(view);
  if (!body.ok()) {
    SetServiceError(res, body.status());
    return;
  }
  if (view == "pipeline" && set_names.size() > 1 && body->starts_with('{')) {
    // The console offers a choice of set (its features and explanations take ?feature_set=).
    std::string names;
    JsonWriter json(&names);
    json.BeginArray();
    for (const std::string& name : set_names) json.String(name);
    json.EndArray();
    body->insert(1, "\"feature_sets\":" + names + (body->size() > 2 ? "," : ""));
  }
  SetBody(res, 200, std::move(*body), kJsonType);
}

// PUT /v1/tables/{name}: rows of a reference table, acknowledged once durable; the answer has the shape of an
// ingest's ({"accepted":N,"rejected":M,"errors":[{"line":L,"reason":R}]}).
void HttpServer::Impl::HandleTable(std::string_view path, std::string_view body, HttpResponse& res) {
  std::string table;
  if (!PercentDecode(path.substr(kTablePrefix.size()), &table) || table.empty()) {
    SetError(res, 400, "the table name in the path is empty or not valid percent-encoding; use "
                       "/v1/tables/{name}, e.g. /v1/tables/profiles");
    return;
  }
  std::vector<std::pair<size_t, std::string>> errors;
  Result<size_t> accepted = service.PutTableRows(table, body, &errors);
  if (!accepted.ok()) {
    SetServiceError(res, accepted.status());
    return;
  }
  std::string out;
  JsonWriter json(&out);
  json.BeginObject().Key("accepted").Uint(*accepted).Key("rejected").Uint(errors.size());
  if (!errors.empty()) {
    json.Key("errors").BeginArray();
    for (size_t k = 0; k < errors.size() && k < kMaxIngestErrors; ++k) {
      json.BeginObject().Key("line").Uint(errors[k].first).Key("reason").String(errors[k].second).EndObject();
    }
    json.EndArray();
  }
  json.EndObject();
  SetBody(res, 200, std::move(out), kJsonType);
}

void HttpServer::Impl::HandleExplain(std::string_view path, std::string_view query, HttpResponse& res) {
  std::string entity;
  if (!PercentDecode(path.substr(kExplainPrefix.size()), &entity) || entity.empty()) {
    SetError(res, 400, "the entity in the path is empty or not valid percent-encoding; use "
                       "/v1/explain/{entity}?feature=F&at=T, e.g. /v1/explain/u123?feature=purchase_count_30m");
    return;
  }
  std::optional<std::string> feature_name, at_text;
  const bool parameters_ok = ForEachQueryParameter(query, res, [&](std::string& key, std::string& value) {
    if (key == "feature" && !feature_name) {
      feature_name = std::move(value);
    } else if (key == "at" && !at_text) {
      at_text = std::move(value);
    } else {
      SetError(res, 400, "query parameter " + QuotedForMessage(key) + " is unknown or repeated; valid: feature (one "
                         "feature name), at (epoch milliseconds or RFC 3339)");
      return false;
    }
    return true;
  });
  if (!parameters_ok) return;
  if (!feature_name) {
    SetError(res, 400, "name the feature to explain: /v1/explain/{entity}?feature=F", "valid_features", feature_names);
    return;
  }
  std::vector<int> features;
  if (!ResolveFeatures(std::vector<std::string_view>{*feature_name}, &features, res)) return;
  if (features[0] >= static_cast<int>(service.spec().features.size())) {
    SetError(res, 400, QuotedForMessage(*feature_name) + " is a request feature, computed at lookup time from other "
                       "features; explain the features its expression reads");
    return;
  }
  int64_t at_ms = WallClockMs();
  if (at_text) {
    Result<int64_t> at = ParseAt(*at_text);
    if (!at.ok()) {
      SetError(res, 400, at.status().message());
      return;
    }
    at_ms = *at;
  }
  Result<std::string> body = service.ExplainJson(entity, features[0], at_ms);
  if (!body.ok()) {
    SetServiceError(res, body.status());
    return;
  }
  SetBody(res, 200, std::move(*body), kJsonType);
}

void ApplyServeSpec(const ServeSpec& serve, HttpServerOptions* options) {
  options->max_connections = serve.max_connections;
  // The loop counts whole seconds (the spec parser refuses less than 1s): round up, and keep within a year.
  const auto seconds = [](int64_t ms) { return static_cast<int>(std::min<int64_t>((ms + 999) / 1000, 31536000)); };
  options->header_timeout_sec = seconds(serve.header_timeout_ms);
  options->body_timeout_sec = seconds(serve.body_timeout_ms);
  options->min_body_bytes_per_sec = static_cast<size_t>(serve.min_body_rate_kib) << 10;
  options->max_buffered_request_bytes = static_cast<size_t>(serve.max_buffered_request_mib) << 20;
}

HttpServer::HttpServer(FeatureService& service, MetricsRegistry& metrics, HttpServerOptions options)
    : impl_(std::make_unique<Impl>(service, metrics, std::move(options))) {}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::AddFeatureSet(std::string name, FeatureService& service) {
  auto handler = std::make_unique<Impl>(service, impl_->metrics, impl_->options);
  impl_->set_names.push_back(name);
  impl_->sets.emplace(std::move(name), std::move(handler));
}

int HttpServer::port() const { return impl_->loop ? impl_->loop->port() : 0; }

Status HttpServer::Start() {
  Impl& impl = *impl_;
  const HttpServerOptions& options = impl.options;
  if (impl.loop) return Status::Internal("HttpServer::Start called twice");
  if (options.threads < 1) return Status::Invalid("the HTTP server needs at least 1 thread");
  if (!options.bearer_token.empty() && impl.bearer_token.empty()) {
    // Trimmed to nothing, it would silently leave ingest and admin endpoints open.
    return Status::Invalid(
        "the bearer token is only whitespace; give a real token, or none to run without one");
  }
  HttpLoopOptions loop;
  loop.host = options.host;
  loop.port = options.port;
  loop.loop_threads = options.loop_threads;
  loop.blocking_threads = options.threads;
  loop.max_body_bytes = options.max_body_bytes;
  loop.keep_alive_timeout_sec = options.keep_alive_timeout_sec;
  loop.io_timeout_sec = options.io_timeout_sec;
  loop.max_connections = options.max_connections;
  loop.header_timeout_sec = options.header_timeout_sec;
  loop.body_timeout_sec = options.body_timeout_sec;
  loop.min_body_bytes_per_sec = options.min_body_bytes_per_sec;
  loop.max_buffered_request_bytes = options.max_buffered_request_bytes;
  impl.loop = std::make_unique<HttpLoop>(impl, loop);
  Status started = impl.loop->Start();
  if (!started.ok()) impl.loop.reset();
  return started;
}

void HttpServer::Stop() {
  if (impl_->loop) impl_->loop->Stop();
}

}  // namespace freshet

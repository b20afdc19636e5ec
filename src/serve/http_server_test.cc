// Tests for HttpServer over real HTTP (httplib::Client and raw sockets against a server on 127.0.0.1, port 0),
// backed by EngineService: a small real FeatureService that feeds events to a FeatureEngine, not a mock.
// Expected feature values are worked out by hand from the semantics in README.md, next to each check.
// Covered: every endpoint's happy path, `at` as epoch ms and RFC 3339 (with an unencoded '+' offset),
// unknown entities, unknown features, malformed requests, 413 (Content-Length and chunked), auth (401 vs
// 200 and the counter), the metrics text format, service errors, and a few thousand random requests after
// which the server still answers /health.

#include "serve/http_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <simdjson.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <shared_mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/feature_engine.h"
#include "event/event_parser.h"
#include "spec/spec.h"

namespace freshet {
namespace {

constexpr int64_t kT0 = 1767225600000;  // 2026-01-01T00:00:00Z
constexpr int64_t kMinute = 60000;

constexpr const char* kSpecYaml = R"(name: shop
entity: user_id
timestamp: ts
features:
  - name: purchase_count_30m
    aggregation: count
    where: "type == 'purchase'"
    window: {type: sliding, size: 30m, slide: 1m}
  - name: avg_txn_amount_1h
    aggregation: mean
    field: amount
    where: "type == 'purchase'"
    window: {type: sliding, size: 1h}
  - name: last_category
    aggregation: last
    field: category
    window: {type: lifetime}
  - name: max_purchase_24h
    aggregation: max
    field: amount
    where: "type == 'purchase'"
    window: {type: sliding, size: 24h}
  - name: total_spent
    aggregation: sum
    field: amount
    window: {type: lifetime}
)";

const std::vector<std::string> kFeatureNames = {"purchase_count_30m", "avg_txn_amount_1h", "last_category",
                                                "max_purchase_24h", "total_spent"};

// A FeatureService over one FeatureEngine: ingest parses and applies events at once under a write lock,
// lookups query under a read lock. Events are applied in arrival order; the tests send them in time order
// and query at or after each entity's newest event, where the engine's answers are exact.
class EngineService final : public FeatureService {
 public:
  explicit EngineService(Spec spec) : spec_(std::move(spec)), engine_(spec_), parser_(spec_.fields) {}

  const Spec& spec() const override { return spec_; }

  Status Lookup(std::span<const std::string_view> entities, int64_t as_of_ms, std::span<const int> features,
                const std::function<void(std::span<const FeatureLookup>)>& consume) const override {
    std::shared_lock lock(mutex_);
    if (fail_lookups_) return Status::IoError("state store unavailable");
    std::vector<FeatureLookup> out(entities.size());
    std::vector<Value> all;
    for (size_t e = 0; e < entities.size(); ++e) {
      const std::optional<uint32_t> index = engine_.FindEntity(entities[e]);
      engine_.QueryIndex(index, as_of_ms, &all);
      out[e].known = index.has_value();
      if (index) out[e].newest_event_ms = newest_ms_.at(*index);
      for (int f : features) out[e].values.push_back(all[static_cast<size_t>(f)]);
    }
    consume(out);
    return Status::Ok();
  }

  Result<IngestAck> Ingest(std::string_view body, IngestFormat format) override {
    std::unique_lock lock(mutex_);
    if (fail_ingest_) return Status::IoError("cannot fsync the event log: disk full");
    std::vector<std::string> lines;
    if (format == IngestFormat::kJsonArray) {
      simdjson::dom::parser parser;
      simdjson::dom::array array;
      if (parser.parse(body.data(), body.size()).get_array().get(array)) {
        return Status::Invalid("the body is not a JSON array of events");
      }
      for (simdjson::dom::element item : array) lines.push_back(simdjson::to_string(item));
    } else {
      for (size_t pos = 0; pos < body.size();) {
        size_t end = body.find('\n', pos);
        if (end == std::string_view::npos) end = body.size();
        lines.emplace_back(body.substr(pos, end - pos));
        pos = end + 1;
      }
    }
    IngestAck ack;
    for (const std::string& line : lines) {
      ParsedEvent event;
      std::string reason;
      if (!parser_.ParseCopy(line, &event, &reason)) {
        ++ack.rejected;
        continue;
      }
      ++ack.accepted;
      if (!engine_.Admit(event.time_ms)) continue;
      PendingEvent pending;
      engine_.Extract(event, seq_++, &pending);
      engine_.Apply(pending, engine_.low_watermark_ms());
      if (newest_ms_.size() <= pending.entity) newest_ms_.resize(pending.entity + 1, event.time_ms);
      newest_ms_[pending.entity] = std::max(newest_ms_[pending.entity], event.time_ms);
    }
    ingested_ += ack.accepted;
    return ack;
  }

  void LogAnswer(std::string_view request_id, int64_t as_of_ms, std::span<const int> features,
                 std::span<const std::string_view> entities, std::span<const FeatureLookup> lookups) override {
    std::lock_guard lock(log_mutex_);  // Called inside Lookup, which holds mutex_ shared.
    for (size_t e = 0; e < entities.size(); ++e) {
      logged_.push_back(std::string(request_id) + " " + std::string(entities[e]) + " " + std::to_string(as_of_ms) +
                        " " + std::to_string(features.size()) + " " + std::to_string(lookups[e].values.size()));
    }
  }
  std::vector<std::string> logged() const {
    std::lock_guard lock(log_mutex_);
    return logged_;
  }

  HealthReport Health() const override {
    std::shared_lock lock(mutex_);
    return health_;
  }

  void AppendMetrics(std::string* out) const override {
    std::shared_lock lock(mutex_);
    out->append("# HELP freshet_test_ingested_events_total Events accepted by the test service.\n"
                "# TYPE freshet_test_ingested_events_total counter\n"
                "freshet_test_ingested_events_total " +
                std::to_string(ingested_) + "\n");
  }

  void SetHealth(HealthReport health) {
    std::unique_lock lock(mutex_);
    health_ = std::move(health);
  }
  void SetFailures(bool lookups, bool ingest) {
    std::unique_lock lock(mutex_);
    fail_lookups_ = lookups;
    fail_ingest_ = ingest;
  }

 private:
  mutable std::mutex log_mutex_;
  std::vector<std::string> logged_;  // "request_id entity as_of features values" per logged entity.
  const Spec spec_;
  mutable std::shared_mutex mutex_;
  FeatureEngine engine_;
  EventParser parser_;
  std::vector<int64_t> newest_ms_;  // By dense entity index.
  uint64_t seq_ = 0;
  uint64_t ingested_ = 0;
  HealthReport health_;
  bool fail_lookups_ = false;
  bool fail_ingest_ = false;
};

Spec TestSpec() {
  Result<Spec> spec = ParseSpec(kSpecYaml, "shop.yaml");
  EXPECT_TRUE(spec.ok()) << spec.status().message();
  return std::move(spec).value();
}

std::string Event(const std::string& user_json, int64_t ts, const std::string& rest) {
  return "{\"user_id\":" + user_json + ",\"ts\":" + std::to_string(ts) + "," + rest + "}";
}

// Batch 1, before T0+10m. u1: purchases 10 and 15, then a view with a category that needs escaping;
// u2: one purchase of 7; integer entity 42: one purchase of 3; "a/b c": one purchase; one malformed line.
const std::string kBatch1 =
    Event("\"u1\"", kT0, "\"type\":\"purchase\",\"amount\":10,\"category\":\"books\"") + "\n" +
    Event("\"u1\"", kT0 + 5 * kMinute, "\"type\":\"purchase\",\"amount\":15,\"category\":\"games\"") + "\n" +
    Event("\"u1\"", kT0 + 6 * kMinute, "\"type\":\"view\",\"category\":\"say \\\"hi\\\"\\\\ \\u00e9\\n\"") + "\n" +
    Event("\"u2\"", kT0 + 1 * kMinute, "\"type\":\"purchase\",\"amount\":7") + "\n" +
    Event("42", kT0 + 2 * kMinute, "\"type\":\"purchase\",\"amount\":3") + "\n" +
    Event("\"a/b c\"", kT0 + 3 * kMinute, "\"type\":\"purchase\",\"amount\":1") + "\n" +
    "this is not json\n";
// The category above as the engine stores it: say "hi"\ é and a newline.
const std::string kEscapedCategory = "say \"hi\"\\ \xC3\xA9\n";

// Batch 2, a JSON array: u1 buys for 20.5 at T0+50m.
const std::string kBatch2 =
    "[" + Event("\"u1\"", kT0 + 50 * kMinute, "\"type\":\"purchase\",\"amount\":20.5,\"category\":\"toys\"") + "]";

// A parsed JSON response; the element is valid while the object lives.
struct Json {
  explicit Json(const std::string& text) { ok = !parser.parse(text).get(root); }
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  bool ok = false;
};

std::unique_ptr<Json> ParseJson(const httplib::Result& result) {
  EXPECT_TRUE(result) << "no HTTP response: " << httplib::to_string(result.error());
  auto json = std::make_unique<Json>(result ? result->body : std::string("null"));
  EXPECT_TRUE(json->ok) << "not JSON: " << (result ? result->body : "");
  return json;
}

int64_t GetInt(simdjson::dom::element e) {
  int64_t v = 0;
  EXPECT_EQ(e.type(), simdjson::dom::element_type::INT64) << simdjson::to_string(e);
  EXPECT_FALSE(e.get_int64().get(v));
  return v;
}
double GetDouble(simdjson::dom::element e) {
  double v = 0;
  EXPECT_EQ(e.type(), simdjson::dom::element_type::DOUBLE) << simdjson::to_string(e);
  EXPECT_FALSE(e.get_double().get(v));
  return v;
}
std::string GetString(simdjson::dom::element e) {
  std::string_view v;
  EXPECT_FALSE(e.get_string().get(v)) << simdjson::to_string(e);
  return std::string(v);
}
bool IsNull(simdjson::dom::element e) { return e.is_null(); }
std::vector<std::string> Keys(simdjson::dom::element e) {
  std::vector<std::string> keys;
  simdjson::dom::object object;
  EXPECT_FALSE(e.get_object().get(object));
  for (auto [key, value] : object) keys.emplace_back(key);
  return keys;
}
std::vector<std::string> Strings(simdjson::dom::element e) {
  std::vector<std::string> out;
  simdjson::dom::array array;
  EXPECT_FALSE(e.get_array().get(array)) << simdjson::to_string(e);
  for (simdjson::dom::element item : array) out.push_back(GetString(item));
  return out;
}
simdjson::dom::element At(simdjson::dom::element e, std::string_view key) {
  simdjson::dom::element out;
  EXPECT_FALSE(e[key].get(out)) << "no key '" << key << "' in " << simdjson::to_string(e);
  return out;
}

// A raw TCP connection to the server, for requests httplib::Client would not send.
class RawConnection {
 public:
  explicit RawConnection(int port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    ::inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    timeval timeout{2, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  }
  ~RawConnection() { ::close(fd_); }

  void Send(const std::string& data) {
    if (connected_) ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
  }
  // Shuts the sending side; httplib then drops the connection without answering (it takes the half-close
  // for a dead peer), which makes garbage exchanges quick.
  void HalfClose() { ::shutdown(fd_, SHUT_WR); }

  // One response: the status line and headers, then Content-Length bytes of body. "" on timeout or close.
  std::string ReadResponse() {
    while (true) {
      const size_t header_end = buffer_.find("\r\n\r\n");
      if (header_end != std::string::npos) {
        size_t length = 0;
        const size_t at = buffer_.find("Content-Length: ");
        if (at != std::string::npos && at < header_end) length = std::stoul(buffer_.substr(at + 16));
        if (buffer_.size() >= header_end + 4 + length) {
          std::string response = buffer_.substr(0, header_end + 4 + length);
          buffer_.erase(0, response.size());
          return response;
        }
      }
      if (!ReadMore()) return "";
    }
  }
  // Everything until the server closes or 2 s pass.
  std::string ReadAll() {
    while (ReadMore()) {
    }
    return std::exchange(buffer_, std::string());
  }

 private:
  bool ReadMore() {
    char chunk[4096];
    const ssize_t n = connected_ ? ::recv(fd_, chunk, sizeof(chunk), 0) : -1;
    if (n <= 0) return false;
    buffer_.append(chunk, static_cast<size_t>(n));
    return true;
  }

  int fd_;
  bool connected_ = false;
  std::string buffer_;
};

// The metrics text, parsed: every sample by its full name with labels ("name{a=\"b\"}"), and the TYPE of
// each family. Fails the test on lines that are not valid exposition format, on samples whose family has no
// HELP and TYPE line before them, and on histograms whose buckets are not cumulative or disagree with _count.
struct MetricsText {
  std::map<std::string, double> samples;
  std::map<std::string, std::string> types;
};

MetricsText ParseMetrics(const std::string& text) {
  MetricsText parsed;
  std::set<std::string> helped;
  // Histogram checks: family+labels-without-le -> bucket counts in order.
  std::map<std::string, std::vector<std::pair<std::string, double>>> buckets;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    EXPECT_NE(end, std::string::npos) << "the text must end with a newline";
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    if (line.starts_with("# HELP ")) {
      const std::string name = line.substr(7, line.find(' ', 7) - 7);
      EXPECT_TRUE(helped.insert(name).second) << "HELP twice for " << name;
      continue;
    }
    if (line.starts_with("# TYPE ")) {
      const size_t space = line.find(' ', 7);
      const std::string name = line.substr(7, space - 7);
      const std::string type = line.substr(space + 1);
      EXPECT_TRUE(type == "counter" || type == "gauge" || type == "histogram") << line;
      EXPECT_TRUE(helped.count(name)) << "TYPE before HELP for " << name;
      EXPECT_TRUE(parsed.types.emplace(name, type).second) << "TYPE twice for " << name;
      continue;
    }
    EXPECT_FALSE(line.empty() || line[0] == '#') << "unexpected line: " << line;
    const size_t value_at = line.rfind(' ');
    EXPECT_NE(value_at, std::string::npos) << line;
    const std::string series = line.substr(0, value_at);
    const std::string value_text = line.substr(value_at + 1);
    double value = value_text == "+Inf" ? INFINITY : std::strtod(value_text.c_str(), nullptr);
    const std::string name = series.substr(0, series.find('{'));
    std::string family = name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string s = suffix;
      if (name.ends_with(s) && parsed.types.count(name.substr(0, name.size() - s.size())) &&
          parsed.types[name.substr(0, name.size() - s.size())] == "histogram") {
        family = name.substr(0, name.size() - s.size());
      }
    }
    EXPECT_TRUE(parsed.types.count(family)) << "sample before its TYPE line: " << line;
    EXPECT_TRUE(parsed.samples.emplace(series, value).second) << "sample twice: " << series;
    if (name == family + "_bucket") {
      const size_t le = series.find("le=\"");
      EXPECT_NE(le, std::string::npos) << line;
      std::string key = series.substr(0, le);
      const std::string bound = series.substr(le + 4, series.find('"', le + 4) - le - 4);
      buckets[key].emplace_back(bound, value);
    }
  }
  for (const auto& [key, list] : buckets) {
    EXPECT_EQ(list.back().first, "+Inf") << key;
    for (size_t k = 1; k < list.size(); ++k) {
      EXPECT_LE(list[k - 1].second, list[k].second) << "buckets not cumulative: " << key;
      if (list[k].first != "+Inf") {
        EXPECT_LT(std::stod(list[k - 1].first), std::stod(list[k].first)) << key;
      }
    }
    // key is `family_bucket{labels,` or `family_bucket{`; the _count series has the same labels.
    std::string labels = key.substr(key.find('{'));
    labels = labels == "{" ? "" : labels.substr(0, labels.size() - 1) + "}";
    const std::string family = key.substr(0, key.find("_bucket{"));
    EXPECT_EQ(parsed.samples.count(family + "_count" + labels), 1u) << family << labels;
    EXPECT_EQ(parsed.samples.count(family + "_sum" + labels), 1u) << family << labels;
    EXPECT_EQ(parsed.samples[family + "_count" + labels], list.back().second) << family << labels;
  }
  return parsed;
}

class HttpServerTest : public ::testing::Test {
 protected:
  void StartServer(HttpServerOptions options = {}) {
    service_ = std::make_unique<EngineService>(TestSpec());
    metrics_ = std::make_unique<MetricsRegistry>();
    server_ = std::make_unique<HttpServer>(*service_, *metrics_, std::move(options));
    const Status status = server_->Start();
    ASSERT_TRUE(status.ok()) << status.message();
    ASSERT_GT(server_->port(), 0);
    client_ = NewClient();
  }

  std::unique_ptr<httplib::Client> NewClient() const {
    auto client = std::make_unique<httplib::Client>("127.0.0.1", server_->port());
    client->set_keep_alive(true);
    client->set_tcp_nodelay(true);  // Headers and body go out in two writes; do not wait for delayed ACKs.
    client->set_read_timeout(10, 0);
    return client;
  }

  // Ingests both batches through the service directly (the ingest endpoint has its own test).
  void Seed(bool second_batch) {
    Result<IngestAck> ack = service_->Ingest(kBatch1, IngestFormat::kJsonLines);
    ASSERT_TRUE(ack.ok());
    if (second_batch) {
      ASSERT_TRUE(service_->Ingest(kBatch2, IngestFormat::kJsonArray).ok());
    }
  }

  MetricsText Metrics() {
    httplib::Result result = client_->Get("/metrics");
    EXPECT_TRUE(result);
    if (!result) return {};
    EXPECT_EQ(result->status, 200);
    EXPECT_EQ(result->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
    return ParseMetrics(result->body);
  }

  void TearDown() override {
    client_.reset();  // Close keep-alive connections first, so Stop does not wait for them.
    if (server_) server_->Stop();
  }

  std::unique_ptr<EngineService> service_;
  std::unique_ptr<MetricsRegistry> metrics_;
  std::unique_ptr<HttpServer> server_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(HttpServerTest, GetEntityFeaturesAsOfEpochMs) {
  StartServer();
  Seed(false);
  httplib::Result result = client_->Get("/v1/features/u1?at=" + std::to_string(kT0 + 10 * kMinute));
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 200);
  EXPECT_EQ(result->get_header_value("Content-Type"), "application/json");
  auto json = ParseJson(result);
  EXPECT_EQ(Keys(json->root), (std::vector<std::string>{"request_id", "entity", "as_of", "as_of_ms", "known",
                                                        "exact", "newest_event_age_ms", "features"}));
  EXPECT_EQ(GetString(At(json->root, "entity")), "u1");
  EXPECT_EQ(GetString(At(json->root, "as_of")), "2026-01-01T00:10:00.000Z");
  EXPECT_EQ(GetInt(At(json->root, "as_of_ms")), kT0 + 10 * kMinute);
  EXPECT_EQ(At(json->root, "known").get_bool().value(), true);
  EXPECT_EQ(GetInt(At(json->root, "newest_event_age_ms")), 4 * kMinute);  // Newest event at T0+6m.
  const simdjson::dom::element features = At(json->root, "features");
  EXPECT_EQ(Keys(features), kFeatureNames);  // Spec order.
  // 1m tiles: the one holding T0+10m and the 29 before reach back to T0-19m: both purchases.
  EXPECT_EQ(GetInt(At(features, "purchase_count_30m")), 2);
  EXPECT_EQ(GetDouble(At(features, "avg_txn_amount_1h")), 12.5);  // (10 + 15) / 2
  EXPECT_EQ(GetString(At(features, "last_category")), kEscapedCategory);  // The view at T0+6m.
  EXPECT_EQ(GetInt(At(features, "max_purchase_24h")), 15);
  EXPECT_EQ(GetInt(At(features, "total_spent")), 25);
  // The raw text keeps doubles looking like doubles and escapes the string.
  EXPECT_NE(result->body.find("\"total_spent\":25}"), std::string::npos) << result->body;
  EXPECT_NE(result->body.find("\"last_category\":\"say \\\"hi\\\"\\\\ \xC3\xA9\\n\""), std::string::npos)
      << result->body;

  // Integer entity 42 from the events; other entities are unaffected by u1's events.
  json = ParseJson(client_->Get("/v1/features/42?at=" + std::to_string(kT0 + 10 * kMinute)));
  EXPECT_EQ(GetInt(At(json->root, "newest_event_age_ms")), 8 * kMinute);
  EXPECT_EQ(GetInt(At(At(json->root, "features"), "purchase_count_30m")), 1);
  EXPECT_EQ(GetDouble(At(At(json->root, "features"), "avg_txn_amount_1h")), 3.0);
}

TEST_F(HttpServerTest, GetEntityFeaturesAsOfRfc3339AndSelectedFeatures) {
  StartServer();
  Seed(true);
  // T0+60m: tiles from T0+31m hold only the purchase at T0+50m; the 1h window excludes T0 itself
  // (t - 1h < time), leaving 15 and 20.5; the sum mixes integers and a double.
  for (const std::string& at : std::vector<std::string>{"2026-01-01T01:00:00Z", "2026-01-01T01:00:00.000Z",
                                                        std::to_string(kT0 + 60 * kMinute)}) {
    auto json = ParseJson(client_->Get("/v1/features/u1?at=" + at));
    EXPECT_EQ(GetInt(At(json->root, "as_of_ms")), kT0 + 60 * kMinute) << at;
    const simdjson::dom::element features = At(json->root, "features");
    EXPECT_EQ(GetInt(At(features, "purchase_count_30m")), 1);
    EXPECT_EQ(GetDouble(At(features, "avg_txn_amount_1h")), 17.75);  // (15 + 20.5) / 2
    EXPECT_EQ(GetString(At(features, "last_category")), "toys");
    EXPECT_EQ(GetDouble(At(features, "max_purchase_24h")), 20.5);
    EXPECT_EQ(GetDouble(At(features, "total_spent")), 45.5);
    EXPECT_EQ(GetInt(At(json->root, "newest_event_age_ms")), 10 * kMinute);
  }
  // A subset, in the requested order, duplicates answered once; an offset with a literal '+'.
  client_->set_url_encode(false);
  auto json = ParseJson(client_->Get(
      "/v1/features/u1?features=total_spent,purchase_count_30m,total_spent&at=2026-01-01T02:00:00+01:00"));
  EXPECT_EQ(GetInt(At(json->root, "as_of_ms")), kT0 + 60 * kMinute);
  EXPECT_EQ(Keys(At(json->root, "features")), (std::vector<std::string>{"total_spent", "purchase_count_30m"}));
  EXPECT_EQ(GetDouble(At(At(json->root, "features"), "total_spent")), 45.5);
  // Percent-encoded too, and features given twice as parameters.
  json = ParseJson(client_->Get("/v1/features/u1?at=2026-01-01T02%3A00%3A00%2B01%3A00&features=total_spent"
                                "&features=last_category"));
  EXPECT_EQ(GetInt(At(json->root, "as_of_ms")), kT0 + 60 * kMinute);
  EXPECT_EQ(Keys(At(json->root, "features")), (std::vector<std::string>{"total_spent", "last_category"}));
}

TEST_F(HttpServerTest, DefaultAtIsTheWallClock) {
  StartServer();
  Seed(false);
  const int64_t before = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch()).count();
  auto json = ParseJson(client_->Get("/v1/features/u2"));
  const int64_t after = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch()).count();
  const int64_t as_of = GetInt(At(json->root, "as_of_ms"));
  EXPECT_GE(as_of, before);
  EXPECT_LE(as_of, after);
  EXPECT_EQ(GetInt(At(json->root, "newest_event_age_ms")), as_of - (kT0 + kMinute));
  // Lifetime sum still counts the purchase; the 30m window no longer does (unless the clock is off by years).
  EXPECT_EQ(GetInt(At(At(json->root, "features"), "total_spent")), 7);
}

TEST_F(HttpServerTest, UnknownEntityGetsEmptyWindowValues) {
  StartServer();
  Seed(false);
  auto json = ParseJson(client_->Get("/v1/features/nobody?at=" + std::to_string(kT0 + 10 * kMinute)));
  EXPECT_EQ(At(json->root, "known").get_bool().value(), false);
  EXPECT_TRUE(IsNull(At(json->root, "newest_event_age_ms")));
  const simdjson::dom::element features = At(json->root, "features");
  EXPECT_EQ(GetInt(At(features, "purchase_count_30m")), 0);
  EXPECT_TRUE(IsNull(At(features, "avg_txn_amount_1h")));
  EXPECT_TRUE(IsNull(At(features, "last_category")));
  EXPECT_TRUE(IsNull(At(features, "max_purchase_24h")));
  EXPECT_EQ(GetInt(At(features, "total_spent")), 0);
}

TEST_F(HttpServerTest, EntityInThePathIsPercentDecoded) {
  StartServer();
  Seed(false);
  auto json = ParseJson(client_->Get("/v1/features/a%2Fb%20c?at=" + std::to_string(kT0 + 10 * kMinute)));
  EXPECT_EQ(GetString(At(json->root, "entity")), "a/b c");
  EXPECT_EQ(At(json->root, "known").get_bool().value(), true);
  EXPECT_EQ(GetInt(At(At(json->root, "features"), "total_spent")), 1);
  // A raw slash is another path: 404 with a hint.
  client_->set_url_encode(false);
  httplib::Result result = client_->Get("/v1/features/a/b");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 404);
  EXPECT_NE(result->body.find("%2F"), std::string::npos) << result->body;
}

TEST_F(HttpServerTest, EveryAnswerIsLoggedUnderItsRequestId) {
  StartServer();
  Seed(false);
  httplib::Headers headers = {{"X-Request-Id", "req-42"}};
  httplib::Result given = client_->Get("/v1/features/u1?at=" + std::to_string(kT0 + 10 * kMinute), headers);
  ASSERT_TRUE(given);
  EXPECT_EQ(given->get_header_value("X-Request-Id"), "req-42");
  EXPECT_EQ(GetString(At(ParseJson(given)->root, "request_id")), "req-42");
  httplib::Result made = client_->Post(
      "/v1/features", R"({"entities":["u1","nobody"],"features":["purchase_count_30m"],"at":)" +
                          std::to_string(kT0 + 10 * kMinute) + "}",
      "application/json");
  ASSERT_TRUE(made);
  const std::string id = made->get_header_value("X-Request-Id");
  EXPECT_FALSE(id.empty());
  EXPECT_NE(id, "req-42");
  const std::string at = std::to_string(kT0 + 10 * kMinute);
  const std::string all = std::to_string(service_->spec().features.size());
  EXPECT_EQ(service_->logged(), (std::vector<std::string>{"req-42 u1 " + at + " " + all + " " + all,
                                                          id + " u1 " + at + " 1 1", id + " nobody " + at + " 1 1"}));
  // A failed lookup answers nothing, so nothing is logged.
  service_->SetFailures(true, false);
  EXPECT_EQ(client_->Get("/v1/features/u1")->status, 503);
  EXPECT_EQ(service_->logged().size(), 3u);
}

TEST_F(HttpServerTest, PostFeaturesForManyEntities) {
  StartServer();
  Seed(false);
  httplib::Result result = client_->Post(
      "/v1/features",
      R"({"entities":["u1","nobody",42,"u2"],"features":["avg_txn_amount_1h","purchase_count_30m"],)"
      R"("at":"2026-01-01T00:10:00Z"})",
      "application/json");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 200) << result->body;
  auto json = ParseJson(result);
  EXPECT_EQ(Keys(json->root), (std::vector<std::string>{"request_id", "as_of", "as_of_ms", "results"}));
  EXPECT_EQ(GetString(At(json->root, "as_of")), "2026-01-01T00:10:00.000Z");
  EXPECT_EQ(GetInt(At(json->root, "as_of_ms")), kT0 + 10 * kMinute);
  simdjson::dom::array results;
  ASSERT_FALSE(At(json->root, "results").get_array().get(results));
  ASSERT_EQ(results.size(), 4u);
  std::vector<simdjson::dom::element> r;
  for (simdjson::dom::element item : results) r.push_back(item);
  EXPECT_EQ(Keys(r[0]), (std::vector<std::string>{"entity", "known", "exact", "newest_event_age_ms", "features"}));
  EXPECT_EQ(GetString(At(r[0], "entity")), "u1");
  EXPECT_EQ(Keys(At(r[0], "features")), (std::vector<std::string>{"avg_txn_amount_1h", "purchase_count_30m"}));
  EXPECT_EQ(GetDouble(At(At(r[0], "features"), "avg_txn_amount_1h")), 12.5);
  EXPECT_EQ(GetInt(At(At(r[0], "features"), "purchase_count_30m")), 2);
  EXPECT_EQ(GetString(At(r[1], "entity")), "nobody");
  EXPECT_EQ(At(r[1], "known").get_bool().value(), false);
  EXPECT_TRUE(IsNull(At(At(r[1], "features"), "avg_txn_amount_1h")));
  EXPECT_EQ(GetInt(At(At(r[1], "features"), "purchase_count_30m")), 0);
  EXPECT_EQ(GetString(At(r[2], "entity")), "42");  // Integer ids answer as their decimal text.
  EXPECT_EQ(GetDouble(At(At(r[2], "features"), "avg_txn_amount_1h")), 3.0);
  EXPECT_EQ(GetString(At(r[3], "entity")), "u2");
  EXPECT_EQ(GetInt(At(r[3], "newest_event_age_ms")), 9 * kMinute);
  EXPECT_EQ(GetDouble(At(At(r[3], "features"), "avg_txn_amount_1h")), 7.0);

  // Every feature when "features" is left out; `at` as epoch ms.
  json = ParseJson(client_->Post("/v1/features", R"({"at":)" + std::to_string(kT0 + 10 * kMinute) +
                                                     R"(,"entities":["u1"]})",
                                 "application/json"));
  ASSERT_FALSE(At(json->root, "results").get_array().get(results));
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(Keys(At(results.at(0).value(), "features")), kFeatureNames);
  EXPECT_EQ(GetInt(At(At(results.at(0).value(), "features"), "max_purchase_24h")), 15);
  // No entities: no results.
  json = ParseJson(client_->Post("/v1/features", R"({"entities":[]})", "application/json"));
  ASSERT_FALSE(At(json->root, "results").get_array().get(results));
  EXPECT_EQ(results.size(), 0u);
}

TEST_F(HttpServerTest, UnknownFeatureIs400ListingTheValidNames) {
  StartServer();
  for (int post = 0; post < 2; ++post) {
    httplib::Result result =
        post ? client_->Post("/v1/features", R"({"entities":["u1"],"features":["purchase_count_30"]})",
                             "application/json")
             : client_->Get("/v1/features/u1?features=total_spent,purchase_count_30");
    ASSERT_TRUE(result);
    EXPECT_EQ(result->status, 400);
    auto json = ParseJson(result);
    const std::string error = GetString(At(json->root, "error"));
    EXPECT_NE(error.find("unknown feature 'purchase_count_30'"), std::string::npos) << error;
    EXPECT_NE(error.find("did you mean 'purchase_count_30m'"), std::string::npos) << error;
    EXPECT_EQ(Strings(At(json->root, "valid_features")), kFeatureNames);
  }
}

// The web console: its pages come from the binary (no file or network needed), its data and explanations from
// the service, which here (like `freshet serve`) has none and says so.
TEST_F(HttpServerTest, ConsolePagesAreEmbeddedAndItsDataRoutesToTheService) {
  StartServer();
  for (const char* path : {"/ui", "/ui/", "/ui/index.html"}) {
    httplib::Result page = client_->Get(path);
    ASSERT_TRUE(page) << path;
    EXPECT_EQ(page->status, 200) << path;
    EXPECT_EQ(page->get_header_value("Content-Type"), "text/html; charset=utf-8") << path;
    EXPECT_NE(page->body.find("<title>Freshet console</title>"), std::string::npos) << path;
    EXPECT_NE(page->body.find("/ui/console.js"), std::string::npos) << path;
  }
  httplib::Result script = client_->Get("/ui/console.js");
  ASSERT_TRUE(script);
  EXPECT_EQ(script->status, 200);
  EXPECT_EQ(script->get_header_value("Content-Type"), "text/javascript; charset=utf-8");
  EXPECT_NE(script->body.find("/v1/explain/"), std::string::npos);
  EXPECT_EQ(client_->Get("/ui/nope.js")->status, 404);
  EXPECT_EQ(client_->Post("/ui", "x", "text/plain")->status, 405);

  httplib::Result data = client_->Get("/v1/ui/pipeline");
  ASSERT_TRUE(data);
  EXPECT_EQ(data->status, 404);
  EXPECT_NE(GetString(At(ParseJson(data)->root, "error")).find("runs no pipeline"), std::string::npos);
  EXPECT_EQ(client_->Get("/v1/ui/other")->status, 404);

  httplib::Result explain = client_->Get("/v1/explain/u1");
  ASSERT_TRUE(explain);
  EXPECT_EQ(explain->status, 400);
  EXPECT_EQ(Strings(At(ParseJson(explain)->root, "valid_features")), kFeatureNames);
  explain = client_->Get("/v1/explain/u1?feature=purchase_count_30");
  ASSERT_TRUE(explain);
  EXPECT_EQ(explain->status, 400);
  EXPECT_NE(GetString(At(ParseJson(explain)->root, "error")).find("did you mean 'purchase_count_30m'"),
            std::string::npos);
  EXPECT_EQ(client_->Get("/v1/explain/u1?feature=purchase_count_30m&at=soon")->status, 400);
  explain = client_->Get("/v1/explain/u1?feature=purchase_count_30m");
  ASSERT_TRUE(explain);
  EXPECT_EQ(explain->status, 404);
  EXPECT_NE(GetString(At(ParseJson(explain)->root, "error")).find("freshet explain"), std::string::npos);
}

// An unknown feature name of megabytes is refused with a short answer that echoes at most a prefix of it,
// and without comparing it to every feature name (which took seconds of an event-loop thread). Names close
// to a valid one still get their suggestion, and an unknown name far from every valid one gets none.
TEST_F(HttpServerTest, HugeUnknownFeatureNameIsAShort400) {
  StartServer();
  for (size_t size : {size_t{300}, size_t{1} << 20, size_t{4} << 20}) {
    const std::string name(size, 'p');
    for (int post = 0; post < 2; ++post) {
      if (!post && size > 60000) continue;  // The query string is bounded by the request line limit.
      httplib::Result result =
          post ? client_->Post("/v1/features", "{\"entities\":[\"u1\"],\"features\":[\"" + name + "\"]}",
                               "application/json")
               : client_->Get("/v1/features/u1?features=total_spent," + name);
      ASSERT_TRUE(result) << size;
      EXPECT_EQ(result->status, 400) << size;
      EXPECT_LT(result->body.size(), 1000u) << size;
      auto json = ParseJson(result);
      const std::string error = GetString(At(json->root, "error"));
      EXPECT_NE(error.find("unknown feature 'ppppp"), std::string::npos) << error;
      EXPECT_NE(error.find("...' (" + std::to_string(size) + " bytes"), std::string::npos) << error;
      EXPECT_NE(error.find("no feature name is longer than 18 bytes"), std::string::npos) << error;
      EXPECT_EQ(error.find("did you mean"), std::string::npos) << error;
      EXPECT_EQ(Strings(At(json->root, "valid_features")), kFeatureNames);
    }
  }
  // Typos, a character or two added or dropped, still get a suggestion; a name of the right length but
  // nothing like a feature gets none.
  for (const auto& [typo, meant] : std::vector<std::pair<std::string, std::string>>{
           {"purchase_count_30mmm", "purchase_count_30m"}, {"totl_spnt", "total_spent"},
           {"last_catgory", "last_category"}, {"MAX_PURCHASE_24H", "max_purchase_24h"}}) {
    httplib::Result result = client_->Get("/v1/features/u1?features=" + typo);
    ASSERT_TRUE(result);
    EXPECT_EQ(result->status, 400);
    const std::string error = GetString(At(ParseJson(result)->root, "error"));
    EXPECT_NE(error.find("unknown feature '" + typo + "' (did you mean '" + meant + "'?)"), std::string::npos)
        << error;
  }
  httplib::Result result = client_->Get("/v1/features/u1?features=zzzzzzzzzzzzzzzzzz");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 400);
  EXPECT_EQ(GetString(At(ParseJson(result)->root, "error")).find("did you mean"), std::string::npos);
  EXPECT_EQ(client_->Get("/health")->status, 200);
}

// Every request line over 8 KiB is a 414, however long and however it arrives: whole with its headers, or
// its line end arrived but not the end of the headers. Headers over 64 KiB after a short request line are a
// 431. Both close the connection; the server serves on.
TEST_F(HttpServerTest, EveryRequestLineOverTheLimitIs414AndLargeHeadersAre431) {
  StartServer();
  const auto status_of = [this](const std::string& request) {
    RawConnection connection(server_->port());
    connection.Send(request);
    const std::string response = connection.ReadResponse();
    EXPECT_NE(response.find("Connection: close\r\n"), std::string::npos) << response.substr(0, 200);
    EXPECT_NE(response.find("{\"error\":"), std::string::npos) << response.substr(0, 200);
    EXPECT_LT(response.size(), 1000u);
    return response.substr(0, response.find("\r\n"));
  };
  for (size_t line_size : {size_t{8193}, size_t{20} << 10, (size_t{64} << 10) + 1, size_t{100} << 10,
                           size_t{1} << 20}) {
    // "GET /aaa...a HTTP/1.1" of exactly line_size bytes.
    const std::string line = "GET /" + std::string(line_size - 14, 'a') + " HTTP/1.1";
    ASSERT_EQ(line.size(), line_size);
    EXPECT_EQ(status_of(line + "\r\nHost: x\r\n\r\n"), "HTTP/1.1 414 URI Too Long") << line_size;
    EXPECT_EQ(status_of(line + "\r\nHost: x\r\n"), "HTTP/1.1 414 URI Too Long") << line_size;
    EXPECT_EQ(status_of(line + "\n\n"), "HTTP/1.1 414 URI Too Long") << line_size;
    EXPECT_EQ(status_of(line), "HTTP/1.1 414 URI Too Long") << line_size;
  }
  // At the limit the line is served (404: no such path).
  const std::string at_limit = "GET /" + std::string(8192 - 14, 'a') + " HTTP/1.1";
  EXPECT_EQ(status_of(at_limit + "\r\nHost: x\r\nConnection: close\r\n\r\n"), "HTTP/1.1 404 Not Found");
  for (size_t header_size : {size_t{70} << 10, size_t{1} << 20}) {
    const std::string huge = "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(header_size, 'h');
    EXPECT_EQ(status_of(huge + "\r\n\r\n"), "HTTP/1.1 431 Request Header Fields Too Large") << header_size;
    EXPECT_EQ(status_of(huge), "HTTP/1.1 431 Request Header Fields Too Large") << header_size;
  }
  EXPECT_EQ(client_->Get("/health")->status, 200);
}

// Each malformed request: its status and a word the error message must contain.
struct BadRequest {
  std::string method;
  std::string path;
  std::string body;
  int status;
  std::string error_contains;
};

TEST_F(HttpServerTest, MalformedRequestsAre4xxWithAnExplanation) {
  HttpServerOptions options;
  options.max_entities_per_request = 3;
  StartServer(options);
  const std::vector<BadRequest> cases = {
      {"GET", "/v1/features/u1?at=yesterday", "", 400, "RFC 3339"},
      {"GET", "/v1/features/u1?at=2026-13-01T00:00:00Z", "", 400, "'at'"},
      {"GET", "/v1/features/u1?at=99999999999999999999", "", 400, "out of range"},
      {"GET", "/v1/features/u1?at=253402300800000", "", 400, "0001-9999"},
      {"GET", "/v1/features/u1?at=", "", 400, "empty"},
      {"GET", "/v1/features/u1?at=1&at=2", "", 400, "more than once"},
      {"GET", "/v1/features/u1?feature=total_spent", "", 400, "unknown query parameter 'feature'"},
      {"GET", "/v1/features/u1?features=", "", 400, "empty"},
      {"GET", "/v1/features/u1?features=total_spent,,last_category", "", 400, "empty name"},
      {"GET", "/v1/features/", "", 400, "entity is empty"},
      {"GET", "/v1/features/u%zz1", "", 400, "percent-encoding"},
      {"GET", "/v1/features/u1?at=%2", "", 400, "percent-encoding"},
      {"POST", "/v1/features", "", 400, "not valid JSON"},
      {"POST", "/v1/features", "{\"entities\":[\"u1\"", 400, "not valid JSON"},
      {"POST", "/v1/features", "[\"u1\"]", 400, "must be a JSON object"},
      {"POST", "/v1/features", "{}", 400, "no 'entities'"},
      {"POST", "/v1/features", "{\"entities\":\"u1\"}", 400, "'entities' must be an array"},
      {"POST", "/v1/features", "{\"entities\":[1.5]}", 400, "entities[0]"},
      {"POST", "/v1/features", "{\"entities\":[\"u1\",\"\"]}", 400, "entities[1] is an empty string"},
      {"POST", "/v1/features", "{\"entities\":[\"u1\",null]}", 400, "entities[1]"},
      {"POST", "/v1/features", "{\"entities\":[\"a\",\"b\",\"c\",\"d\"]}", 400, "too many entities: 4"},
      {"POST", "/v1/features", "{\"entities\":[\"u1\"],\"entity\":\"u1\"}", 400, "unknown key 'entity'"},
      {"POST", "/v1/features", "{\"entities\":[\"u1\"],\"features\":\"total_spent\"}", 400, "'features' must be"},
      {"POST", "/v1/features", "{\"entities\":[\"u1\"],\"features\":[1]}", 400, "features[0]"},
      {"POST", "/v1/features", "{\"entities\":[\"u1\"],\"features\":[]}", 400, "'features' is empty"},
      {"POST", "/v1/features", "{\"entities\":[\"u1\"],\"at\":1.5}", 400, "'at' must be"},
      {"POST", "/v1/features", "{\"entities\":[\"u1\"],\"at\":\"noon\"}", 400, "RFC 3339"},
      {"POST", "/v1/features", "{\"entities\":[\"u1\"],\"at\":-62135596800001}", 400, "0001-9999"},
      {"POST", "/v1/features?at=1", "{\"entities\":[\"u1\"]}", 400, "query parameters"},
      {"GET", "/v1/features/u1", "{\"entities\":[\"u1\"]}", 400, "GET requests take no body"},
      {"GET", "/nope", "", 404, "no endpoint"},
      {"GET", "/v1/features/u1/extra", "", 404, "no endpoint"},
      {"DELETE", "/v1/features/u1", "", 405, "GET, HEAD"},
      {"GET", "/v1/features", "", 405, "POST"},
      {"PUT", "/v1/ingest", "x", 405, "POST"},
      {"POST", "/health", "{}", 405, "GET"},
      {"OPTIONS", "/metrics", "", 405, "GET"},
      {"TRACE", "/v1/spec", "", 405, "GET"},
  };
  client_->set_url_encode(false);
  for (const BadRequest& c : cases) {
    httplib::Request request;
    request.method = c.method;
    request.path = c.path;
    request.body = c.body;
    if (!c.body.empty()) request.set_header("Content-Type", "application/json");
    httplib::Result result = client_->send(request);
    ASSERT_TRUE(result) << c.method << " " << c.path;
    EXPECT_EQ(result->status, c.status) << c.method << " " << c.path << " " << c.body << ": " << result->body;
    auto json = ParseJson(result);
    const std::string error = GetString(At(json->root, "error"));
    EXPECT_NE(error.find(c.error_contains), std::string::npos)
        << c.method << " " << c.path << " " << c.body << ": " << error;
    if (c.status == 404) {
      EXPECT_EQ(Strings(At(json->root, "endpoints")).size(), 10u);
    }
    if (c.status == 405) {
      EXPECT_FALSE(result->get_header_value("Allow").empty());
    }
  }
}

TEST_F(HttpServerTest, RequestsWithoutSafeFramingAre400AndCloseTheConnection) {
  StartServer();
  const std::string body = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  for (const std::string& request : std::vector<std::string>{
           "GET /v1/spec HTTP/9.9\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body,
        "POST /v1/features HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nContent-Length: 34\r\n\r\n" + body,
        "POST /v1/features HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n" + body,
        "POST /v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /v1/ingest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n" + body,
        "GET /" + std::string(9000, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n"}) {
    RawConnection connection(server_->port());
    connection.Send(request);
    const std::string response = connection.ReadResponse();
    EXPECT_TRUE(response.starts_with("HTTP/1.1 4")) << response;
    EXPECT_NE(response.find("Connection: close\r\n"), std::string::npos) << response;
    EXPECT_NE(response.find("{\"error\":"), std::string::npos) << response;
  }
  // A long path (under the URI limit) with a body: routed, not a crash in the path matching.
  httplib::Result result = client_->Post("/" + std::string(8000, 'p'), "{}", "application/json");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 404);
}

TEST_F(HttpServerTest, IngestAcknowledgesDurableEventsAndTheyAreServed) {
  StartServer();
  httplib::Result result = client_->Post("/v1/ingest", kBatch1, "application/x-ndjson");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 200) << result->body;
  auto json = ParseJson(result);
  EXPECT_EQ(GetInt(At(json->root, "accepted")), 6);
  EXPECT_EQ(GetInt(At(json->root, "rejected")), 1);  // "this is not json"
  result = client_->Post("/v1/ingest", kBatch2, "application/json; charset=utf-8");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 200) << result->body;
  json = ParseJson(result);
  EXPECT_EQ(GetInt(At(json->root, "accepted")), 1);
  EXPECT_EQ(GetInt(At(json->root, "rejected")), 0);
  json = ParseJson(client_->Get("/v1/features/u1?at=2026-01-01T01:00:00Z&features=avg_txn_amount_1h"));
  EXPECT_EQ(GetDouble(At(At(json->root, "features"), "avg_txn_amount_1h")), 17.75);

  // Another Content-Type: 415 naming the accepted ones.
  result = client_->Post("/v1/ingest", kBatch1, "text/plain");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 415);
  EXPECT_NE(ParseJson(result)->root["error"].get_string().value().find("application/x-ndjson"), std::string::npos);
  // A JSON body that is not an array: the service's kInvalidArgument is a 400 with its message.
  result = client_->Post("/v1/ingest", "{\"user_id\":\"u1\"}", "application/json");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 400);
  EXPECT_EQ(GetString(At(ParseJson(result)->root, "error")), "the body is not a JSON array of events");
  // Durability failure: 503 with Retry-After.
  service_->SetFailures(false, true);
  result = client_->Post("/v1/ingest", kBatch1, "application/x-ndjson");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 503);
  EXPECT_EQ(result->get_header_value("Retry-After"), "1");
  EXPECT_EQ(GetString(At(ParseJson(result)->root, "error")), "cannot fsync the event log: disk full");
}

TEST_F(HttpServerTest, LookupErrorsMapToHttpStatus) {
  StartServer();
  service_->SetFailures(true, false);
  httplib::Result result = client_->Get("/v1/features/u1");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 503);
  EXPECT_EQ(GetString(At(ParseJson(result)->root, "error")), "state store unavailable");
}

TEST_F(HttpServerTest, OversizedBodyIs413) {
  HttpServerOptions options;
  options.max_body_bytes = 1024;
  StartServer(options);
  const std::string big = "{\"entities\":[\"" + std::string(2000, 'x') + "\"]}";
  httplib::Result result = client_->Post("/v1/features", big, "application/json");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 413);
  EXPECT_NE(GetString(At(ParseJson(result)->root, "error")).find("1024 bytes"), std::string::npos);
  // Chunked bodies are counted too (httplib 0.11's own limit misses them). The rest of an oversized body
  // is drained, so the connection still serves the next request; so does one over the limit by
  // Content-Length (httplib skips it), and a multipart body, refused with 415.
  std::string chunked = "POST /v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n";
  for (int k = 0; k < 8; ++k) chunked += "100\r\n" + std::string(256, 'a') + "\r\n";
  chunked += "0\r\n\r\n";
  const std::string with_length = "POST /v1/features HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" +
                                  std::string(5000, 'x');
  const std::string multipart =
      "POST /v1/features HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
      "Content-Length: 63\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nhello\r\n--b--\r\n";
  // httplib routes on the decoded path; one with a newline must still reach the limit.
  std::string newline_path = chunked;
  newline_path.replace(newline_path.find("/v1/ingest"), 10, "/v1/in%0Agest");
  for (const auto& [request, status] : std::vector<std::pair<std::string, std::string>>{
           {chunked, "413"}, {with_length, "413"}, {multipart, "415"}, {newline_path, "413"}}) {
    RawConnection connection(server_->port());
    connection.Send(request);
    const std::string response = connection.ReadResponse();
    EXPECT_TRUE(response.starts_with("HTTP/1.1 " + status)) << response;
    EXPECT_NE(response.find(status == "413" ? "1024 bytes" : "multipart"), std::string::npos) << response;
    connection.Send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    const std::string next = connection.ReadResponse();
    EXPECT_TRUE(next.starts_with("HTTP/1.1 200 OK")) << next;
    EXPECT_TRUE(next.ends_with("{\"status\":\"ok\"}")) << next;
  }
  // Just under the limit is fine.
  const std::string fits = "{\"entities\":[\"" + std::string(1000, 'x') + "\"]}";
  ASSERT_LE(fits.size(), 1024u);
  client_ = NewClient();
  result = client_->Post("/v1/features", fits, "application/json");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 200) << result->body;
  EXPECT_EQ(client_->Get("/health")->status, 200);
}

TEST_F(HttpServerTest, BearerTokenGuardsIngestAndAdminOnly) {
  HttpServerOptions options;
  options.bearer_token = "s3cret-token\n";  // As read from a token file.
  StartServer(options);
  auto unauthorized_count = [this] {
    return Metrics().samples["freshet_http_unauthorized_total"];
  };
  EXPECT_EQ(unauthorized_count(), 0);
  // No header, wrong token, a prefix of the token, another scheme: 401, each counted.
  const std::vector<std::pair<std::string, std::string>> bad_headers = {
      {"", ""}, {"Authorization", "Bearer wrong"}, {"Authorization", "Bearer s3cret"},
      {"Authorization", "Bearer s3cret-token-and-more"}, {"Authorization", "Basic czNjcmV0LXRva2Vu"}};
  for (const auto& [name, value] : bad_headers) {
    httplib::Headers headers;
    if (!name.empty()) headers.emplace(name, value);
    httplib::Result result = client_->Post("/v1/ingest", headers, kBatch1, "application/x-ndjson");
    ASSERT_TRUE(result);
    EXPECT_EQ(result->status, 401) << value;
    EXPECT_EQ(result->get_header_value("WWW-Authenticate"), "Bearer realm=\"freshet\"");
    EXPECT_FALSE(GetString(At(ParseJson(result)->root, "error")).empty());
    EXPECT_EQ(result->body.find("s3cret-token"), std::string::npos);  // Never echoes the token.
  }
  EXPECT_EQ(unauthorized_count(), 5);
  // Admin paths: 401 without the token (even if nothing is there), 404 with it.
  httplib::Result result = client_->Get("/v1/admin/compact");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 401);
  EXPECT_EQ(unauthorized_count(), 6);
  httplib::Headers good = {{"Authorization", "Bearer s3cret-token"}};
  result = client_->Get("/v1/admin/compact", good);
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 404);
  // The right token: ingest works; the scheme is case-insensitive.
  const httplib::Headers lower_scheme = {{"Authorization", "bearer s3cret-token"}};
  result = client_->Post("/v1/ingest", lower_scheme, kBatch1, "application/x-ndjson");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 200) << result->body;
  // Reads, spec, health and metrics stay open.
  for (const char* path : {"/v1/features/u1", "/v1/spec", "/health", "/metrics"}) {
    result = client_->Get(path);
    ASSERT_TRUE(result);
    EXPECT_EQ(result->status, 200) << path;
  }
  result = client_->Post("/v1/features", R"({"entities":["u1"]})", "application/json");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 200);
  EXPECT_EQ(unauthorized_count(), 6);
}

TEST_F(HttpServerTest, HealthReflectsTheService) {
  StartServer();
  httplib::Result result = client_->Get("/health");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 200);
  EXPECT_EQ(result->body, "{\"status\":\"ok\"}");
  service_->SetHealth({false, {"event source stalled", "disk \"almost\" full"}});
  result = client_->Get("/health");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 503);
  auto json = ParseJson(result);
  EXPECT_EQ(GetString(At(json->root, "status")), "degraded");
  EXPECT_EQ(Strings(At(json->root, "reasons")),
            (std::vector<std::string>{"event source stalled", "disk \"almost\" full"}));
  // HEAD: the status without a body.
  result = client_->Head("/health");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 503);
  EXPECT_TRUE(result->body.empty());
}

TEST_F(HttpServerTest, SpecDescribesTheFeatures) {
  StartServer();
  httplib::Result result = client_->Get("/v1/spec");
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 200);
  auto json = ParseJson(result);
  EXPECT_EQ(GetString(At(json->root, "name")), "shop");
  EXPECT_EQ(GetString(At(json->root, "entity")), "user_id");
  EXPECT_EQ(GetString(At(json->root, "timestamp")), "ts");
  EXPECT_TRUE(IsNull(At(json->root, "watermark")));
  simdjson::dom::array features;
  ASSERT_FALSE(At(json->root, "features").get_array().get(features));
  ASSERT_EQ(features.size(), 5u);
  const simdjson::dom::element count = features.at(0).value();
  EXPECT_EQ(GetString(At(count, "name")), "purchase_count_30m");
  EXPECT_EQ(GetString(At(count, "aggregation")), "count");
  EXPECT_TRUE(IsNull(At(count, "field")));
  EXPECT_EQ(GetString(At(count, "where")), "type == 'purchase'");
  EXPECT_EQ(GetString(At(At(count, "window"), "type")), "sliding");
  EXPECT_EQ(GetString(At(At(count, "window"), "size")), "30m");
  EXPECT_EQ(GetInt(At(At(count, "window"), "size_ms")), 30 * kMinute);
  EXPECT_EQ(GetString(At(At(count, "window"), "slide")), "1m");
  const simdjson::dom::element mean = features.at(1).value();
  EXPECT_EQ(GetString(At(mean, "aggregation")), "mean");
  EXPECT_EQ(GetString(At(mean, "field")), "amount");
  EXPECT_EQ(Keys(At(mean, "window")), (std::vector<std::string>{"type", "size", "size_ms"}));  // Continuous.
  const simdjson::dom::element last = features.at(2).value();
  EXPECT_TRUE(IsNull(At(last, "where")));
  EXPECT_EQ(Keys(At(last, "window")), (std::vector<std::string>{"type"}));
  EXPECT_EQ(GetString(At(At(last, "window"), "type")), "lifetime");
}

TEST_F(HttpServerTest, MetricsCountRequestsByRouteAndStatus) {
  StartServer();
  Seed(false);
  for (int k = 0; k < 3; ++k) ASSERT_EQ(client_->Get("/health")->status, 200);
  ASSERT_EQ(client_->Get("/v1/features/u1")->status, 200);
  ASSERT_EQ(client_->Get("/v1/features/u2?features=nope")->status, 400);
  ASSERT_EQ(client_->Get("/nowhere")->status, 404);
  ASSERT_EQ(client_->Post("/v1/features", R"({"entities":["u1","u2"]})", "application/json")->status, 200);
  const MetricsText metrics = Metrics();
  auto sample = [&](const std::string& series) {
    auto it = metrics.samples.find(series);
    EXPECT_NE(it, metrics.samples.end()) << series;
    return it == metrics.samples.end() ? -1.0 : it->second;
  };
  EXPECT_EQ(sample("freshet_http_requests_total{route=\"/health\",status=\"200\"}"), 3);
  EXPECT_EQ(sample("freshet_http_requests_total{route=\"/v1/features/{entity}\",status=\"200\"}"), 1);
  EXPECT_EQ(sample("freshet_http_requests_total{route=\"/v1/features/{entity}\",status=\"400\"}"), 1);
  EXPECT_EQ(sample("freshet_http_requests_total{route=\"unmatched\",status=\"404\"}"), 1);
  EXPECT_EQ(sample("freshet_http_requests_total{route=\"/v1/features\",status=\"200\"}"), 1);
  EXPECT_EQ(sample("freshet_http_request_duration_seconds_count{route=\"/health\"}"), 3);
  EXPECT_EQ(sample("freshet_http_request_duration_seconds_count{route=\"/v1/features/{entity}\"}"), 2);
  EXPECT_GT(sample("freshet_http_request_duration_seconds_sum{route=\"/health\"}"), 0);
  EXPECT_EQ(sample("freshet_http_lookup_entities_total"), 3);  // 1 + 2; the 400 looked nothing up.
  EXPECT_EQ(sample("freshet_test_ingested_events_total"), 6);   // The service's own metrics follow.
  EXPECT_EQ(metrics.types.at("freshet_http_request_duration_seconds"), "histogram");
  EXPECT_EQ(metrics.types.at("freshet_http_requests_total"), "counter");
  EXPECT_EQ(metrics.types.at("freshet_test_ingested_events_total"), "counter");
}

TEST_F(HttpServerTest, ConcurrentReadsAndIngests) {
  StartServer();
  Seed(false);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto client = NewClient();
      for (int k = 0; k < 100; ++k) {
        httplib::Result result =
            t == 0 ? client->Post("/v1/ingest",
                                  Event("\"c" + std::to_string(k) + "\"", kT0 + k, "\"type\":\"purchase\",\"amount\":1"),
                                  "application/x-ndjson")
                   : client->Get("/v1/features/u1?at=" + std::to_string(kT0 + 10 * kMinute));
        if (!result || result->status != 200) ++failures;
        if (result && t != 0 && result->body.find("\"purchase_count_30m\":2,") == std::string::npos) ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  auto json = ParseJson(client_->Get("/v1/features/c99?at=" + std::to_string(kT0 + 100)));
  EXPECT_EQ(GetInt(At(At(json->root, "features"), "total_spent")), 1);
}

TEST_F(HttpServerTest, StartFailsWhenThePortIsTaken) {
  StartServer();
  HttpServerOptions options;
  options.port = server_->port();
  MetricsRegistry metrics;
  HttpServer second(*service_, metrics, options);
  const Status status = second.Start();
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find(std::to_string(server_->port())), std::string::npos) << status.message();
  second.Stop();  // Harmless after a failed Start.
  EXPECT_EQ(client_->Get("/health")->status, 200);
}

TEST_F(HttpServerTest, StartFailsWhenTheBearerTokenIsOnlyWhitespace) {
  service_ = std::make_unique<EngineService>(TestSpec());
  for (const char* blank : {" ", "\r", "\t", "\r\n", " \t\n"}) {
    HttpServerOptions options;
    options.bearer_token = blank;
    MetricsRegistry metrics;
    HttpServer server(*service_, metrics, options);
    const Status status = server.Start();
    EXPECT_FALSE(status.ok()) << "a blank token must not mean 'no authentication'";
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("only whitespace"), std::string::npos) << status.message();
    EXPECT_EQ(server.port(), 0);
  }
}

TEST_F(HttpServerTest, StopWaitsAtMostTheKeepAliveTimeoutForIdleConnections) {
  HttpServerOptions options;
  options.keep_alive_timeout_sec = 1;
  StartServer(options);
  ASSERT_EQ(client_->Get("/health")->status, 200);  // client_ keeps its connection open.
  const auto start = std::chrono::steady_clock::now();
  server_->Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  EXPECT_FALSE(client_->Get("/health"));  // Nothing listens any more.
}

TEST_F(HttpServerTest, StartThenStopAtOnce) {
  for (int k = 0; k < 5; ++k) {
    StartServer();
    server_->Stop();
    server_->Stop();  // Idempotent.
  }
}

// A few thousand random requests: random methods, paths, query strings, headers and bodies (valid, mutated
// and garbage), through the client and as raw bytes. The server must answer each with a known status and a
// JSON error, never a 5xx, and still serve /health and correct features afterwards.
TEST_F(HttpServerTest, SurvivesRandomRequests) {
  HttpServerOptions options;
  options.max_body_bytes = 4096;
  options.max_entities_per_request = 50;
  options.io_timeout_sec = 1;
  StartServer(options);
  Seed(false);
  // An entity no fuzzed body can name, to check the state afterwards.
  ASSERT_TRUE(service_->Ingest(Event("\"sentinel\"", kT0, "\"type\":\"purchase\",\"amount\":5"),
                               IngestFormat::kJsonLines).ok());
  std::mt19937_64 rng(20260101);
  auto pick = [&rng](const auto& list) { return list[rng() % std::size(list)]; };
  auto random_bytes = [&rng](size_t max_length, bool printable) {
    std::string out(rng() % (max_length + 1), '\0');
    for (char& c : out) c = static_cast<char>(printable ? 33 + rng() % 94 : rng() % 256);
    return out;
  };
  const char* const kMethods[] = {"GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"};
  const char* const kPaths[] = {"/v1/features/", "/v1/features", "/v1/ingest", "/health", "/metrics", "/v1/spec",
                                "/v1/admin/", "/", "", "/v1/features/u1", "/v1/features/%", "/v1/features/%2",
                                "/v1/features/%00", "/v1/features/%ff%fe", "//", "/v1//features"};
  const char* const kParams[] = {"features", "at", "x", "", "features[]", "%", "at%3D"};
  const char* const kValues[] = {"total_spent", "purchase_count_30m,avg_txn_amount_1h", "1767225600000", "-1",
                                 "2026-01-01T00:00:00Z", "2026-01-01T00:00:00+01:00", "", ",", "%zz", "9e99",
                                 "-9223372036854775808", "99999999999999999999"};
  const char* const kContentTypes[] = {"application/json", "application/x-ndjson", "text/plain", "",
                                       "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
                                       "application/json; charset=utf-8"};
  const std::string kValidBodies[] = {
      R"({"entities":["u1","u2",42],"features":["total_spent"],"at":1767226200000})",
      R"({"entities":["u1"],"at":"2026-01-01T00:10:00Z"})", kBatch1, kBatch2,
      R"([{"user_id":"f","ts":1767225600000,"type":"purchase","amount":1e308}])"};
  const std::set<int> kAllowed = {200, 400, 401, 404, 405, 413, 415};

  client_->set_url_encode(false);
  int answered = 0;
  for (int k = 0; k < 3000; ++k) {
    httplib::Request request;
    request.method = pick(kMethods);
    std::string path = pick(kPaths);
    if (rng() % 3 == 0) path += random_bytes(rng() % 8 == 0 ? 2000 : 20, true);
    if (rng() % 2 == 0) {
      path += "?";
      const int params = static_cast<int>(rng() % 4);
      for (int p = 0; p < params; ++p) {
        path += std::string(p ? "&" : "") + pick(kParams) + "=" +
                (rng() % 4 == 0 ? random_bytes(10, true) : std::string(pick(kValues)));
      }
    }
    request.path = path.empty() || path[0] != '/' ? "/" + path : path;
    // A third of the requests go to a real endpoint with the right method, to reach the body parsers.
    if (rng() % 3 == 0) {
      const int endpoint = static_cast<int>(rng() % 3);
      request.method = endpoint == 0 ? "GET" : "POST";
      request.path = endpoint == 0 ? "/v1/features/u1" + path.substr(std::min(path.size(), path.find('?')))
                                   : (endpoint == 1 ? "/v1/features" : "/v1/ingest");
    }
    switch (rng() % 4) {
      case 0: break;
      case 1: request.body = pick(kValidBodies); break;
      case 2: {
        std::string body = pick(kValidBodies);
        for (int m = 0; m < 3; ++m) {
          if (!body.empty()) body[rng() % body.size()] = static_cast<char>(rng() % 256);
        }
        if (rng() % 2 == 0) body.resize(rng() % (body.size() + 1));
        request.body = body;
        break;
      }
      case 3: request.body = random_bytes(rng() % 5 == 0 ? 6000 : 300, false); break;
    }
    const std::string content_type = pick(kContentTypes);
    if (!content_type.empty()) request.set_header("Content-Type", content_type);
    if (rng() % 4 == 0) request.set_header("Authorization", "Bearer " + random_bytes(10, true));
    if (rng() % 8 == 0) request.set_header("X-Junk", random_bytes(100, true));
    httplib::Result result = client_->send(request);
    if (!result) {
      client_ = NewClient();  // The server closed the connection (after a 413, say); carry on.
      client_->set_url_encode(false);
      continue;
    }
    ++answered;
    EXPECT_TRUE(kAllowed.count(result->status)) << request.method << " " << request.path << " -> "
                                                << result->status << " " << result->body;
    if (result->status != 200 && request.method != "HEAD") {
      Json json(result->body);
      std::string_view error;
      EXPECT_TRUE(json.ok && !json.root["error"].get_string().get(error) && !error.empty())
          << request.method << " " << request.path << " -> " << result->status << " " << result->body;
    }
  }
  EXPECT_GT(answered, 2500);

  // Raw garbage: random bytes, truncated and contradictory requests.
  const std::string kRawPrefixes[] = {"", "GET ", "POST /v1/features HTTP/1.1\r\n", "GET /health HTTP/1.1\r\nHost: x\r\n",
                                      "POST /v1/ingest HTTP/1.1\r\nContent-Length: 100\r\n\r\n",
                                      "POST /v1/features HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                                      "GET /v1/features/u1 HTTP/9.9\r\n\r\n"};
  for (int k = 0; k < 200; ++k) {
    RawConnection connection(server_->port());
    connection.Send(pick(kRawPrefixes) + random_bytes(rng() % 2 == 0 ? 50 : 3000, false));
    connection.HalfClose();
    connection.ReadAll();
  }

  client_ = NewClient();
  httplib::Result health = client_->Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  auto json = ParseJson(client_->Get("/v1/features/sentinel?at=" + std::to_string(kT0 + 10 * kMinute)));
  EXPECT_EQ(GetInt(At(At(json->root, "features"), "purchase_count_30m")), 1);
  EXPECT_EQ(GetInt(At(At(json->root, "features"), "total_spent")), 5);
  // Every request was counted, and no route answered with a 5xx.
  const MetricsText metrics = Metrics();
  for (const auto& [series, value] : metrics.samples) {
    if (series.starts_with("freshet_http_requests_total")) {
      EXPECT_EQ(series.find("status=\"5"), std::string::npos) << series << " " << value;
    }
  }
}

}  // namespace
}  // namespace freshet

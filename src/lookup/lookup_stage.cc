#include "lookup/lookup_stage.h"

#include <absl/container/flat_hash_map.h>

#include <charconv>
#include <list>
#include <mutex>

#include "common/time.h"
#include "event/event_parser.h"
#include "lookup/lookup_client.h"

namespace freshet {
namespace {

constexpr double kLatencyBuckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                      0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5, 5, 10};
constexpr int kHealthWindowSeconds = 30;
constexpr uint64_t kHealthMinRequests = 10;

// Answers kept with ttl and max_entries, least recently used out first. Null row: the store had no answer.
class AnswerCache {
 public:
  AnswerCache() = default;
  AnswerCache(int64_t ttl_ms, size_t max_entries) : ttl_ms_(ttl_ms), max_entries_(max_entries) {}
  bool enabled() const { return max_entries_ > 0; }
  bool Find(const std::string& key, int64_t now_ms, LookupRowPtr* row) {
    auto it = index_.find(key);
    if (it == index_.end()) return false;
    if (it->second->expires_ms <= now_ms) {
      order_.erase(it->second);
      index_.erase(it);
      return false;
    }
    order_.splice(order_.begin(), order_, it->second);
    *row = it->second->row;
    return true;
  }
  void Put(const std::string& key, LookupRowPtr row, int64_t now_ms) {
    if (!enabled()) return;
    if (auto it = index_.find(key); it != index_.end()) {
      order_.erase(it->second);
      index_.erase(it);
    }
    order_.push_front({key, std::move(row), now_ms + ttl_ms_});
    index_[key] = order_.begin();
    if (order_.size() > max_entries_) {
      index_.erase(order_.back().key);
      order_.pop_back();
    }
  }

 private:
  struct Entry {
    std::string key;
    LookupRowPtr row;
    int64_t expires_ms;
  };
  int64_t ttl_ms_ = 0;
  size_t max_entries_ = 0;  // 0: no cache.
  std::list<Entry> order_;
  absl::flat_hash_map<std::string, std::list<Entry>::iterator> index_;
};

// Requests and failures per wall-clock second over the last kHealthWindowSeconds.
class FailureWindow {
 public:
  void Add(int64_t now_s, uint64_t requests, uint64_t failures) {
    std::lock_guard<std::mutex> lock(mutex_);
    Bucket& b = buckets_[static_cast<size_t>(now_s % kHealthWindowSeconds)];
    if (b.second != now_s) b = {now_s, 0, 0};
    b.requests += requests;
    b.failures += failures;
  }
  std::pair<uint64_t, uint64_t> Sum(int64_t now_s) const {
    std::lock_guard<std::mutex> lock(mutex_);
    uint64_t requests = 0, failures = 0;
    for (const Bucket& b : buckets_) {
      if (now_s - b.second < kHealthWindowSeconds) {
        requests += b.requests;
        failures += b.failures;
      }
    }
    return {requests, failures};
  }

 private:
  struct Bucket {
    int64_t second = -kHealthWindowSeconds;
    uint64_t requests = 0, failures = 0;
  };
  mutable std::mutex mutex_;
  Bucket buckets_[kHealthWindowSeconds];
};

// A field value as key text: a string as it is, an integer's digits; nullopt for anything else.
std::optional<std::string_view> KeyText(const Value& v, char (&digits)[24]) {
  if (v.type == ValueType::kString) return v.s;
  if (v.type != ValueType::kInt) return std::nullopt;
  auto [end, ec] = std::to_chars(digits, digits + sizeof(digits), v.i);
  (void)ec;
  return std::string_view(digits, static_cast<size_t>(end - digits));
}

void AppendPercentEncoded(std::string_view text, std::string* out) {
  static const char kHex[] = "0123456789ABCDEF";
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      *out += static_cast<char>(c);
    } else {
      *out += '%';
      *out += kHex[c >> 4];
      *out += kHex[c & 15];
    }
  }
}

}  // namespace

struct LookupStage::Impl {
  explicit Impl(const Spec& s) : spec(s) {}
  const Spec& spec;
  FieldRegistry key_fields;  // Entity, timestamp, then every template field.
  std::unique_ptr<EventParser> parser;
  ParsedEvent event;
  struct PerLookup {
    const LookupSpec* spec = nullptr;
    std::string path_template;   // http: the url after host:port; redis: the key template.
    std::vector<int> key_slots;  // Of the template fields, in key_fields.
    std::unique_ptr<LookupClient> client;
    AnswerCache cache;
    Histogram* latency = nullptr;
    Counter *requests = nullptr, *timeouts = nullptr, *errors = nullptr, *hits = nullptr, *misses = nullptr;
    FailureWindow window;
  };
  std::vector<std::unique_ptr<PerLookup>> lookups;

  // Renders lookup `l`'s target for the parsed event, or false when a template field is absent.
  bool Target(const PerLookup& l, std::string* out) const {
    out->clear();
    const std::string& t = l.path_template;
    size_t at = 0, field = 0;
    char digits[24];
    while (true) {
      const size_t open = t.find('{', at);
      out->append(t, at, open == std::string::npos ? std::string::npos : open - at);
      if (open == std::string::npos) return true;
      std::optional<std::string_view> text = KeyText(event.slots[static_cast<size_t>(l.key_slots[field++])], digits);
      if (!text) return false;
      if (l.spec->type == "http") {
        AppendPercentEncoded(*text, out);
      } else {
        out->append(*text);
      }
      at = t.find('}', open) + 1;
    }
  }
};

LookupStage::LookupStage(const Spec& spec, MetricsRegistry& metrics) : impl_(std::make_unique<Impl>(spec)) {
  Impl& impl = *impl_;
  impl.key_fields.Intern(spec.fields.paths()[kEntitySlot]);
  impl.key_fields.Intern(spec.fields.paths()[kTimestampSlot]);
  for (const LookupSpec& l : spec.lookups) {
    auto per = std::make_unique<Impl::PerLookup>();
    per->spec = &l;
    per->cache = AnswerCache(l.cache_ttl_ms, static_cast<size_t>(l.cache_max_entries));
    for (const std::string& field : l.template_fields) per->key_slots.push_back(impl.key_fields.Intern(field));
    if (l.type == "http") {
      std::string host;
      int port = 0;
      LookupClient::SplitUrl(l.url, &host, &port, &per->path_template);
    } else {
      per->path_template = l.key;
    }
    const MetricLabels labels = {{"lookup", l.name}};
    per->client = std::make_unique<LookupClient>(
        l, &metrics.GetGauge("freshet_lookup_in_flight", "Lookup requests sent and not yet answered.", labels));
    per->latency = &metrics.GetHistogram("freshet_lookup_latency_seconds",
                                         "Time from sending a lookup request to its answer (answered ones).",
                                         kLatencyBuckets, labels);
    per->requests = &metrics.GetCounter("freshet_lookup_requests_total", "Lookup requests sent.", labels);
    per->timeouts = &metrics.GetCounter("freshet_lookup_timeouts_total", "Lookup requests that timed out.", labels);
    per->errors = &metrics.GetCounter("freshet_lookup_errors_total",
                                      "Lookup requests that failed (connection, bad answer, HTTP status).", labels);
    per->hits = &metrics.GetCounter("freshet_lookup_cache_hits_total", "Lookups answered from the cache.", labels);
    per->misses = &metrics.GetCounter("freshet_lookup_cache_misses_total",
                                      "Lookups not in the cache (sent, or shared with a request of the same batch).",
                                      labels);
    impl.lookups.push_back(std::move(per));
  }
  impl.parser = std::make_unique<EventParser>(impl.key_fields);
}

LookupStage::~LookupStage() = default;

void LookupStage::Resolve(const std::vector<Line>& lines, std::vector<EventLookups>* out) {
  Impl& impl = *impl_;
  const size_t n = impl.lookups.size();
  out->resize(lines.size());
  // Per lookup: the distinct targets to send, and for each line the index of its target (-1: none or cached).
  std::vector<std::vector<std::string>> targets(n);
  std::vector<absl::flat_hash_map<std::string, size_t>> target_index(n);
  std::vector<std::vector<int64_t>> line_target(n, std::vector<int64_t>(lines.size(), -1));
  const int64_t now_ms = WallClockMs();
  std::string target, reason;
  for (size_t k = 0; k < lines.size(); ++k) {
    EventLookups& lookups = (*out)[k];
    lookups.Reset(n);
    if (lines[k].capacity == 0 || !impl.parser->Parse(lines[k].text, lines[k].capacity, &impl.event, &reason)) continue;
    for (size_t l = 0; l < n; ++l) {
      Impl::PerLookup& per = *impl.lookups[l];
      if (!impl.Target(per, &target)) continue;
      if (per.cache.enabled() && per.cache.Find(target, now_ms, &lookups.rows[l])) {
        per.hits->Increment();
        continue;
      }
      per.misses->Increment();
      auto [it, added] = target_index[l].try_emplace(target, targets[l].size());
      if (added) targets[l].push_back(target);
      line_target[l][k] = static_cast<int64_t>(it->second);
    }
  }
  std::vector<LookupAnswer> answers;
  for (size_t l = 0; l < n; ++l) {
    if (targets[l].empty()) continue;
    Impl::PerLookup& per = *impl.lookups[l];
    per.client->Run(targets[l], &answers);
    std::vector<LookupRowPtr> rows(answers.size());
    std::vector<EventLookups::Failure> failures(answers.size(), EventLookups::Failure::kNone);
    uint64_t failed = 0;
    const int64_t done_ms = WallClockMs();
    for (size_t t = 0; t < answers.size(); ++t) {
      LookupAnswer& a = answers[t];
      if (a.kind == LookupAnswer::Kind::kFound) {
        Result<LookupRowPtr> row = MakeLookupRow(impl.spec.fields, static_cast<int>(l), a.json);
        if (row.ok()) {
          rows[t] = std::move(*row);
        } else {
          a.kind = LookupAnswer::Kind::kError;
          a.error = row.status().message();
        }
      }
      switch (a.kind) {
        case LookupAnswer::Kind::kFound:
        case LookupAnswer::Kind::kNotFound:
          per.latency->Observe(a.seconds);
          per.cache.Put(targets[l][t], rows[t], done_ms);
          break;
        case LookupAnswer::Kind::kTimeout:
          per.timeouts->Increment();
          failures[t] = EventLookups::Failure::kTimeout;
          ++failed;
          break;
        case LookupAnswer::Kind::kError:
          per.errors->Increment();
          failures[t] = EventLookups::Failure::kError;
          ++failed;
          break;
      }
    }
    per.requests->Increment(answers.size());
    per.window.Add(done_ms / 1000, answers.size(), failed);
    for (size_t k = 0; k < lines.size(); ++k) {
      const int64_t t = line_target[l][k];
      if (t < 0) continue;
      (*out)[k].rows[l] = rows[static_cast<size_t>(t)];
      (*out)[k].failures[l] = failures[static_cast<size_t>(t)];
    }
  }
}

std::optional<std::string> LookupStage::Health() const {
  const int64_t now_s = WallClockMs() / 1000;
  for (const auto& per : impl_->lookups) {
    auto [requests, failures] = per->window.Sum(now_s);
    if (requests >= kHealthMinRequests && failures * 2 > requests) {
      return "lookup '" + per->spec->name + "': " + std::to_string(failures) + " of " + std::to_string(requests) +
             " requests in the last " + std::to_string(kHealthWindowSeconds) + " s timed out or failed";
    }
  }
  return std::nullopt;
}

}  // namespace freshet

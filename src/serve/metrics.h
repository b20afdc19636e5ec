// MetricsRegistry: counters, gauges and histograms, exposed in the Prometheus text format (version 0.0.4).
//
// Register a metric once, keep the reference, and update it on the hot path:
//
//   MetricsRegistry registry;
//   Counter& served = registry.GetCounter("freshet_http_requests_total", "HTTP requests answered.",
//                                         {{"route", "/health"}, {"status", "200"}});
//   Histogram& latency = registry.GetHistogram("freshet_http_request_duration_seconds",
//                                              "Time to answer an HTTP request.", kLatencyBucketsSeconds);
//   served.Increment();
//   latency.Observe(0.0021);
//   std::string text;
//   registry.AppendText(&text);  // # HELP / # TYPE lines, then the samples, family by family.
//
// A figure kept elsewhere (another component's own counters, the kernel's /proc) is exposed by a function the
// registry calls while it writes the text, instead of being copied into a metric:
//
//   registry.SetGaugeFunction("freshet_redis_pending_entities", "Entities waiting.",
//                             [&writer] { return static_cast<double>(writer.Health().pending_entities); });
//
// Every number is written by AppendPrometheusNumber: integers without exponent, other values with the fewest
// digits that read back as the same double, infinities as +Inf/-Inf and NaN as NaN.
//
// Thread-safety: every method may be called from any thread. Updates (Increment, Set, Add, Observe) are
// relaxed atomic operations on the metric itself, with no lock. Get* takes the registry's mutex (it looks the
// metric up by name and labels), so call it at setup, or once per new label value, not per event. AppendText
// takes the mutex too and reads each value atomically; a histogram read while it is being updated may show a
// _sum that lags its buckets by the observations in flight, never buckets that disagree with _count.
//
// Metrics live as long as the registry; references returned by Get* stay valid until it is destroyed.
// Names must match [a-zA-Z_:][a-zA-Z0-9_:]* and label names [a-zA-Z_][a-zA-Z0-9_]* ("le" is reserved);
// registering one name as two types, or a histogram with two bucket layouts, is a programming error
// (an internal check), as are invalid names.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace freshet {

// Label name/value pairs of one metric. Order does not matter: the registry sorts them by name.
using MetricLabels = std::vector<std::pair<std::string, std::string>>;

// A monotonically increasing count.
class Counter {
 public:
  void Increment(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// A value that goes up and down (queue depth, entities in memory).
class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double delta) { value_.fetch_add(delta, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Observations counted into fixed buckets. Bucket i counts values <= upper_bounds[i] (and above the previous
// bound); values above the last bound fall into the implicit +Inf bucket. NaN observations are ignored.
class Histogram {
 public:
  // `upper_bounds` must be strictly increasing and finite (an internal check).
  explicit Histogram(std::span<const double> upper_bounds);

  void Observe(double value);

  // A consistent-enough reading for exposition: cumulative counts per bound plus +Inf (the last element,
  // which equals `count`), and the sum of the observed values.
  struct Snapshot {
    std::vector<uint64_t> cumulative;
    uint64_t count = 0;
    double sum = 0;
  };
  Snapshot Read() const;
  const std::vector<double>& upper_bounds() const { return bounds_; }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // bounds_.size() + 1, not cumulative.
  std::atomic<double> sum_{0.0};
};

// Request latency buckets in seconds, 0.1 ms to 10 s.
inline constexpr double kLatencyBucketsSeconds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                    0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5,
                                                    5,      10};

// Buckets for slower work in seconds (a checkpoint, a file written), 1 ms to 5 minutes.
inline constexpr double kDurationBucketsSeconds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                     1,     2.5,    5,     10,   30,    60,   120,  300};

class MetricsRegistry {
 public:
  MetricsRegistry();
  ~MetricsRegistry();
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // The metric `name` with `labels`, created on first use. `help` is the family's one-line description;
  // the first registration's text is kept.
  Counter& GetCounter(std::string_view name, std::string_view help, MetricLabels labels = {});
  Gauge& GetGauge(std::string_view name, std::string_view help, MetricLabels labels = {});
  Histogram& GetHistogram(std::string_view name, std::string_view help, std::span<const double> upper_bounds,
                          MetricLabels labels = {});

  // Metrics whose value `read` returns when the text is written (see the top of this file): a counter's
  // must never decrease. `read` runs on the thread calling AppendText with the registry's mutex held, so it
  // must be quick, must not call this registry, and must stay callable as long as the registry may be read.
  // Registering the same name and labels again replaces the function; a name and labels registered with
  // Get* cannot also have a function (an internal check).
  void SetCounterFunction(std::string_view name, std::string_view help, std::function<double()> read,
                          MetricLabels labels = {});
  void SetGaugeFunction(std::string_view name, std::string_view help, std::function<double()> read,
                        MetricLabels labels = {});
  // `read` returns a snapshot whose `cumulative` has upper_bounds.size() + 1 counts (the last is +Inf).
  void SetHistogramFunction(std::string_view name, std::string_view help, std::span<const double> upper_bounds,
                            std::function<Histogram::Snapshot()> read, MetricLabels labels = {});

  // Appends every family in registration order: "# HELP name text", "# TYPE name counter|gauge|histogram",
  // then one line per metric ("name{label=\"value\"} 42"); a histogram writes name_bucket{...,le="..."}
  // lines (cumulative, ending with le="+Inf"), then name_sum and name_count.
  void AppendText(std::string* out) const;

 private:
  struct Family;
  enum class Type { kCounter, kGauge, kHistogram };
  // The family `name` of `type`, created if new. Called with mutex_ held.
  Family& FindOrAddFamily(std::string_view name, std::string_view help, Type type);
  // The histogram family `name` with `upper_bounds` (checked to be the family's). Called with mutex_ held.
  Family& FindOrAddHistogramFamily(std::string_view name, std::string_view help,
                                   std::span<const double> upper_bounds);

  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<Family>> families_;
};

// Appends `value` as a Prometheus sample value or `le` bound: an integral value below 2^53 in magnitude as
// an integer ("1000000", never "1e+06"); any other finite value as the fewest digits that parse back to the
// same double, in plain notation from 0.0001 up ("0.0005", "1764930000.123") and in scientific notation
// below that and for integers from 2^53 ("1.5e-07", "1e+21"); and "+Inf", "-Inf", "NaN". The uint64
// overload writes the exact integer. Every number in the exposition goes through these two.
void AppendPrometheusNumber(double value, std::string* out);
void AppendPrometheusNumber(uint64_t value, std::string* out);

// Appends `text` escaped as a Prometheus label value (backslash, double quote and newline escaped).
void AppendPrometheusLabelValue(std::string_view text, std::string* out);

}  // namespace freshet

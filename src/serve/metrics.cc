#include "serve/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>

#include "common/status.h"

namespace freshet {
namespace {

bool IsValidMetricName(std::string_view name) {
  if (name.empty()) return false;
  for (size_t k = 0; k < name.size(); ++k) {
    const char c = name[k];
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!letter && !(k > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

bool IsValidLabelName(std::string_view name) {
  return IsValidMetricName(name) && name.find(':') == std::string_view::npos && name != "le";
}

// HELP text escapes backslash and newline only.
void AppendHelp(std::string_view text, std::string* out) {
  for (char c : text) {
    if (c == '\\') out->append("\\\\");
    else if (c == '\n') out->append("\\n");
    else out->push_back(c);
  }
}

// `{a="x",b="y"` without the closing brace (histograms append le), or "" for no labels.
std::string RenderLabels(const MetricLabels& labels) {
  std::string text;
  for (const auto& [name, value] : labels) {
    text.append(text.empty() ? "{" : ",");
    text.append(name);
    text.append("=\"");
    AppendPrometheusLabelValue(value, &text);
    text.push_back('"');
  }
  return text;
}

}  // namespace

void AppendPrometheusNumber(double value, std::string* out) {
  if (std::isnan(value)) {
    out->append("NaN");
    return;
  }
  if (std::isinf(value)) {
    out->append(value > 0 ? "+Inf" : "-Inf");
    return;
  }
  char buf[64];
  // Integers below 2^53 are exact in a double: written as integers, as a count or a byte size reads best
  // (to_chars' shortest form would write 1000000 as "1e+06").
  constexpr double kExactIntegers = 9007199254740992.0;  // 2^53.
  const double magnitude = std::fabs(value);
  if (magnitude < kExactIntegers && value == std::trunc(value)) {
    auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), static_cast<int64_t>(value));
    out->append(buf, static_cast<size_t>(end - buf));
    return;
  }
  // The shortest digits that read back as the same double (Prometheus parses them with Go's ParseFloat), in
  // plain notation from 0.0001 up ("0.0005", not the shorter "5e-04"), in scientific notation for smaller
  // values and for the integers beyond 2^53.
  const std::chars_format format =
      magnitude >= 1e-4 && magnitude < kExactIntegers ? std::chars_format::fixed : std::chars_format::scientific;
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value, format);
  out->append(buf, static_cast<size_t>(end - buf));
}

void AppendPrometheusNumber(uint64_t value, std::string* out) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  out->append(buf, static_cast<size_t>(end - buf));
}

void AppendPrometheusLabelValue(std::string_view text, std::string* out) {
  for (char c : text) {
    if (c == '\\') out->append("\\\\");
    else if (c == '"') out->append("\\\"");
    else if (c == '\n') out->append("\\n");
    else out->push_back(c);
  }
}

Histogram::Histogram(std::span<const double> upper_bounds)
    : bounds_(upper_bounds.begin(), upper_bounds.end()),
      counts_(std::make_unique<std::atomic<uint64_t>[]>(upper_bounds.size() + 1)) {
  for (size_t k = 0; k < bounds_.size(); ++k) {
    FRESHET_CHECK(std::isfinite(bounds_[k]));
    FRESHET_CHECK(k == 0 || bounds_[k - 1] < bounds_[k]);
  }
  for (size_t k = 0; k <= bounds_.size(); ++k) counts_[k].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double value) {
  if (std::isnan(value)) return;
  // The first bound >= value: buckets are "less than or equal".
  const size_t bucket = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot snapshot;
  snapshot.cumulative.resize(bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t k = 0; k <= bounds_.size(); ++k) {
    running += counts_[k].load(std::memory_order_relaxed);
    snapshot.cumulative[k] = running;
  }
  snapshot.count = running;
  snapshot.sum = sum_.load(std::memory_order_relaxed);
  return snapshot;
}

struct MetricsRegistry::Family {
  std::string name;
  std::string help;
  Type type = Type::kCounter;
  std::vector<double> bounds;  // Histograms.
  struct Child {
    MetricLabels labels;
    std::string label_text;  // RenderLabels(labels).
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<Histogram> histogram;
    std::function<double()> read_value;                 // Counter and gauge functions.
    std::function<Histogram::Snapshot()> read_histogram;  // Histogram functions.
  };
  std::vector<Child> children;

  // The child with `labels` (sorted by name first), created empty if absent.
  Child& FindOrAdd(MetricLabels labels) {
    for (const auto& [label, value] : labels) FRESHET_CHECK(IsValidLabelName(label));
    std::sort(labels.begin(), labels.end());
    for (size_t k = 1; k < labels.size(); ++k) FRESHET_CHECK(labels[k - 1].first != labels[k].first);
    for (Child& child : children) {
      if (child.labels == labels) return child;
    }
    Child& child = children.emplace_back();
    child.label_text = RenderLabels(labels);
    child.labels = std::move(labels);
    return child;
  }
};

MetricsRegistry::MetricsRegistry() = default;
MetricsRegistry::~MetricsRegistry() = default;

MetricsRegistry::Family& MetricsRegistry::FindOrAddFamily(std::string_view name, std::string_view help, Type type) {
  FRESHET_CHECK(IsValidMetricName(name));
  for (auto& family : families_) {
    if (family->name == name) {
      FRESHET_CHECK(family->type == type);
      return *family;
    }
  }
  auto family = std::make_unique<Family>();
  family->name = std::string(name);
  family->help = std::string(help);
  family->type = type;
  families_.push_back(std::move(family));
  return *families_.back();
}

Counter& MetricsRegistry::GetCounter(std::string_view name, std::string_view help, MetricLabels labels) {
  std::lock_guard lock(mutex_);
  Family::Child& child = FindOrAddFamily(name, help, Type::kCounter).FindOrAdd(std::move(labels));
  FRESHET_CHECK(!child.read_value);
  if (!child.counter) child.counter = std::make_unique<Counter>();
  return *child.counter;
}

Gauge& MetricsRegistry::GetGauge(std::string_view name, std::string_view help, MetricLabels labels) {
  std::lock_guard lock(mutex_);
  Family::Child& child = FindOrAddFamily(name, help, Type::kGauge).FindOrAdd(std::move(labels));
  FRESHET_CHECK(!child.read_value);
  if (!child.gauge) child.gauge = std::make_unique<Gauge>();
  return *child.gauge;
}

MetricsRegistry::Family& MetricsRegistry::FindOrAddHistogramFamily(std::string_view name, std::string_view help,
                                                                   std::span<const double> upper_bounds) {
  Family& family = FindOrAddFamily(name, help, Type::kHistogram);
  if (family.children.empty()) {
    family.bounds.assign(upper_bounds.begin(), upper_bounds.end());
  } else {
    FRESHET_CHECK(std::equal(family.bounds.begin(), family.bounds.end(), upper_bounds.begin(), upper_bounds.end()));
  }
  return family;
}

Histogram& MetricsRegistry::GetHistogram(std::string_view name, std::string_view help,
                                         std::span<const double> upper_bounds, MetricLabels labels) {
  std::lock_guard lock(mutex_);
  Family::Child& child = FindOrAddHistogramFamily(name, help, upper_bounds).FindOrAdd(std::move(labels));
  FRESHET_CHECK(!child.read_histogram);
  if (!child.histogram) child.histogram = std::make_unique<Histogram>(upper_bounds);
  return *child.histogram;
}

void MetricsRegistry::SetCounterFunction(std::string_view name, std::string_view help, std::function<double()> read,
                                         MetricLabels labels) {
  std::lock_guard lock(mutex_);
  Family::Child& child = FindOrAddFamily(name, help, Type::kCounter).FindOrAdd(std::move(labels));
  FRESHET_CHECK(!child.counter && read);
  child.read_value = std::move(read);
}

void MetricsRegistry::SetGaugeFunction(std::string_view name, std::string_view help, std::function<double()> read,
                                       MetricLabels labels) {
  std::lock_guard lock(mutex_);
  Family::Child& child = FindOrAddFamily(name, help, Type::kGauge).FindOrAdd(std::move(labels));
  FRESHET_CHECK(!child.gauge && read);
  child.read_value = std::move(read);
}

void MetricsRegistry::SetHistogramFunction(std::string_view name, std::string_view help,
                                           std::span<const double> upper_bounds,
                                           std::function<Histogram::Snapshot()> read, MetricLabels labels) {
  std::lock_guard lock(mutex_);
  Family::Child& child = FindOrAddHistogramFamily(name, help, upper_bounds).FindOrAdd(std::move(labels));
  FRESHET_CHECK(!child.histogram && read);
  child.read_histogram = std::move(read);
}

void MetricsRegistry::AppendText(std::string* out) const {
  std::lock_guard lock(mutex_);
  for (const auto& family : families_) {
    out->append("# HELP ").append(family->name).push_back(' ');
    AppendHelp(family->help, out);
    out->append("\n# TYPE ").append(family->name);
    switch (family->type) {
      case Type::kCounter: out->append(" counter\n"); break;
      case Type::kGauge: out->append(" gauge\n"); break;
      case Type::kHistogram: out->append(" histogram\n"); break;
    }
    for (const Family::Child& child : family->children) {
      const std::string& labels = child.label_text;
      const std::string closed = labels.empty() ? "" : labels + "}";
      switch (family->type) {
        case Type::kCounter:
          out->append(family->name).append(closed).push_back(' ');
          if (child.counter) AppendPrometheusNumber(child.counter->value(), out);
          else AppendPrometheusNumber(child.read_value(), out);
          out->push_back('\n');
          break;
        case Type::kGauge:
          out->append(family->name).append(closed).push_back(' ');
          AppendPrometheusNumber(child.gauge ? child.gauge->value() : child.read_value(), out);
          out->push_back('\n');
          break;
        case Type::kHistogram: {
          const Histogram::Snapshot snapshot = child.histogram ? child.histogram->Read() : child.read_histogram();
          const std::vector<double>& bounds = family->bounds;
          FRESHET_CHECK(snapshot.cumulative.size() == bounds.size() + 1);
          for (size_t k = 0; k <= bounds.size(); ++k) {
            out->append(family->name).append("_bucket").append(labels.empty() ? "{" : labels + ",").append("le=\"");
            if (k < bounds.size()) AppendPrometheusNumber(bounds[k], out);
            else out->append("+Inf");
            out->append("\"} ");
            AppendPrometheusNumber(snapshot.cumulative[k], out);
            out->push_back('\n');
          }
          out->append(family->name).append("_sum").append(closed).push_back(' ');
          AppendPrometheusNumber(snapshot.sum, out);
          out->append("\n").append(family->name).append("_count").append(closed).push_back(' ');
          AppendPrometheusNumber(snapshot.count, out);
          out->push_back('\n');
          break;
        }
      }
    }
  }
}

}  // namespace freshet

#include "run/skew_monitor.h"

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "common/time.h"
#include "skew/skew.h"

namespace freshet {

SkewMonitor::SkewMonitor(const Spec& spec, OfflinePaths paths, MetricsRegistry& metrics)
    : spec_(spec), paths_(std::move(paths)), metrics_(metrics) {
  checks_ = &metrics.GetCounter("freshet_skew_checks_total", "Skew checks run inside freshet run.");
  compared_ = &metrics.GetCounter("freshet_skew_answers_compared_total",
                                  "Logged answers recomputed offline and compared by the skew checks.");
  failures_ = &metrics.GetCounter("freshet_skew_check_failures_total", "Skew checks that could not run.");
  breached_ = &metrics.GetGauge("freshet_skew_breached",
                                "1 when the last skew check found a feature above skew.max_mismatch_rate.");
  for (const FeatureSpec& f : spec.features) {
    metrics.GetGauge("freshet_skew_mismatch_ratio", "Share of logged answers that differ from the recomputation.",
                     {{"feature", f.name}});
  }
  thread_ = std::thread([this] { Loop(); });
}

SkewMonitor::~SkewMonitor() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void SkewMonitor::Loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (wake_.wait_for(lock, std::chrono::milliseconds(spec_.skew.interval_ms), [&] { return stopping_; })) return;
    }
    CheckOnce();
  }
}

void SkewMonitor::CheckOnce() {
  std::error_code ec;
  if (!std::filesystem::exists(std::filesystem::path(paths_.feature_log) / "_delta_log", ec) ||
      !std::filesystem::exists(std::filesystem::path(paths_.events) / "_delta_log", ec)) {
    return;  // Nothing served or committed yet.
  }
  SkewOptions options;
  options.feature_log_dir = paths_.feature_log;
  options.events = EventInput::EventsTable(paths_.events);
  Result<SkewReport> report = ComputeSkew(spec_, options);
  if (!report.ok()) {
    failures_->Increment();
    std::fprintf(stderr, "freshet run: warning: skew check failed: %s\n", report.status().message().c_str());
    return;
  }
  checks_->Increment();
  compared_->Increment(report->answers);
  {
    std::lock_guard<std::mutex> lock(history_mutex_);
    history_.push_back(Check{WallClockMs(), report->answers, report->features});
    if (history_.size() > kHistory) history_.erase(history_.begin());
  }
  for (const FeatureSkew& f : report->features) {
    metrics_.GetGauge("freshet_skew_mismatch_ratio", "Share of logged answers that differ from the recomputation.",
                      {{"feature", f.feature}})
        .Set(f.mismatch_rate());
  }
  const std::vector<std::string> breached = report->breached();
  breached_->Set(breached.empty() ? 0 : 1);
  if (!breached.empty()) {
    std::string names;
    for (const FeatureSkew& f : report->features) {
      if (!f.breached) continue;
      char rate[32];
      std::snprintf(rate, sizeof(rate), "%.4f", f.mismatch_rate());
      names += (names.empty() ? "" : ", ") + f.feature + " (mismatch rate " + rate + ")";
    }
    std::fprintf(stderr, "freshet run: warning: training/serving skew above skew.max_mismatch_rate %g: %s\n",
                 spec_.skew.max_mismatch_rate, names.c_str());
  }
}

std::vector<SkewMonitor::Check> SkewMonitor::History() const {
  std::lock_guard<std::mutex> lock(history_mutex_);
  return history_;
}

}  // namespace freshet

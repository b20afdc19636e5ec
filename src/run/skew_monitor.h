// SkewMonitor: the skew check of `freshet skew`, run inside `freshet run` every `skew.interval` over every
// answer logged so far (as of times up to the newest committed event). Results are metrics (freshet_skew_mismatch_ratio{feature},
// freshet_skew_breached, freshet_skew_checks_total, freshet_skew_answers_compared_total); a breach logs a
// warning naming the features. It runs on its own thread, so processing and serving never wait for it.
//
// Cost: each check replays the committed events table to recompute the answers, so it grows with history;
// choose an interval that leaves room for it (minutes, not seconds), or run `freshet skew` offline.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "offline/tables.h"
#include "serve/metrics.h"
#include "skew/skew.h"
#include "spec/spec.h"

namespace freshet {

class SkewMonitor {
 public:
  SkewMonitor(const Spec& spec, OfflinePaths paths, MetricsRegistry& metrics);
  ~SkewMonitor();  // Stops the thread (waiting for a check in progress).

  // One check's result, for the web console's features page.
  struct Check {
    int64_t wall_ms = 0;  // When it finished.
    uint64_t answers = 0;
    std::vector<FeatureSkew> features;  // Spec order.
  };
  // The last kHistory checks, oldest first. Thread-safe.
  static constexpr size_t kHistory = 60;
  std::vector<Check> History() const;

 private:
  void Loop();
  void CheckOnce();

  const Spec& spec_;
  const OfflinePaths paths_;
  MetricsRegistry& metrics_;
  std::mutex mutex_;
  std::condition_variable wake_;
  mutable std::mutex history_mutex_;
  std::vector<Check> history_;
  bool stopping_ = false;
  std::thread thread_;
  Counter* checks_ = nullptr;
  Counter* compared_ = nullptr;
  Counter* failures_ = nullptr;
  Gauge* breached_ = nullptr;
};

}  // namespace freshet

// ProgressLine: progress of a long job on a terminal, one line on stderr rewritten in place at most four
// times a second, cleared when done. Silent when disabled (not a terminal, or --no-progress), so
// machine-readable output and logs stay clean.
//
//   ProgressLine progress("backfill", isatty(STDERR_FILENO));
//   progress.Update(events, bytes_done, bytes_total);   // total 0: unknown
//   progress.Done();
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace freshet {

class ProgressLine {
 public:
  ProgressLine(std::string label, bool enabled)
      : label_(std::move(label)), enabled_(enabled), start_(std::chrono::steady_clock::now()), last_(start_) {}
  ~ProgressLine() { Done(); }

  void Update(uint64_t events, uint64_t done = 0, uint64_t total = 0) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_ < std::chrono::milliseconds(250)) return;
    last_ = now;
    const double secs = std::chrono::duration<double>(now - start_).count();
    if (total > 0) {
      std::fprintf(stderr, "\r%s: %5.1f%%  %llu events  %.2f M events/s   ", label_.c_str(), 100.0 * done / total,
                   static_cast<unsigned long long>(events), events / secs / 1e6);
    } else {
      std::fprintf(stderr, "\r%s: %llu events  %.2f M events/s   ", label_.c_str(),
                   static_cast<unsigned long long>(events), events / secs / 1e6);
    }
    shown_ = true;
  }
  void Done() {
    if (shown_) std::fprintf(stderr, "\r\033[K");
    shown_ = false;
  }

 private:
  std::string label_;
  bool enabled_;
  bool shown_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace freshet

// RenderedTexts: the JSON text of list-valued results (top_k, last_k), kept so that the Value a Finalize
// returns (a view) stays valid while the caller reads it.
//
// Finalize is const and may run on several lookup threads at once (under the runtime's shared lock), so
// Keep is thread-safe. The texts are interned: repeated lookups of an unchanged state add nothing. The owner
// (the feature's operator) calls Clear when its states change (an event applied, a state loaded), which is
// when FeatureEngine's values may go stale anyway ("valid until the engine changes").
#pragma once

#include <deque>
#include <mutex>
#include <string>
#include <string_view>

#include <unordered_set>

namespace freshet {

class RenderedTexts {
 public:
  RenderedTexts() = default;
  // A feature's context is built once and never copied while in use; a copy starts empty.
  RenderedTexts(const RenderedTexts&) {}
  RenderedTexts& operator=(const RenderedTexts&) { return *this; }

  // A stable view of `text`, valid until Clear.
  std::string_view Keep(std::string_view text) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = index_.find(text);
    if (it != index_.end()) return *it;
    const std::string_view kept = texts_.emplace_back(text);
    index_.insert(kept);
    return kept;
  }
  void Clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (texts_.empty()) return;
    index_.clear();
    texts_.clear();
  }

 private:
  std::mutex mutex_;
  std::deque<std::string> texts_;  // Stable addresses.
  std::unordered_set<std::string_view> index_;
};

}  // namespace freshet

// StringPool: interns strings to dense 32-bit ids, so that aggregation state that must keep string values
// (count_distinct, last) stores 4 bytes per value and one copy of each distinct text per feature.
//
// Memory grows with the number of distinct strings a feature has seen; it is never compacted.
// Not thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>

#include <absl/container/flat_hash_map.h>

#include "common/text_hash.h"

namespace freshet {

class StringPool {
 public:
  uint32_t Intern(std::string_view text) {
    auto it = ids_.find(text);
    if (it != ids_.end()) return it->second;
    const std::string& stored = strings_.emplace_back(text);
    const uint32_t id = static_cast<uint32_t>(strings_.size() - 1);
    ids_.emplace(std::string_view(stored), id);
    bytes_ += stored.size() + sizeof(std::string) + 16;
    return id;
  }
  std::string_view Get(uint32_t id) const { return strings_[id]; }
  size_t size() const { return strings_.size(); }
  size_t memory_bytes() const { return bytes_; }

 private:
  std::deque<std::string> strings_;  // Stable addresses: ids_ keys view into them.
  absl::flat_hash_map<std::string_view, uint32_t, TextHash, TextEq> ids_;  // Inline hash: see text_hash.h.
  size_t bytes_ = 0;
};

}  // namespace freshet

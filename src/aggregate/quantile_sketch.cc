#include "aggregate/quantile_sketch.h"

#include <algorithm>
#include <utility>

namespace freshet {

void QuantileSketch::Add(double value) {
  if (levels_.empty()) levels_.emplace_back();
  levels_[0].push_back(value);
  ++count_;
  if (levels_[0].size() > kLevelCapacity) Compact(0);
}

void QuantileSketch::Merge(const QuantileSketch& other) {
  if (other.count_ == 0) return;
  if (levels_.size() < other.levels_.size()) levels_.resize(other.levels_.size());
  for (size_t h = 0; h < other.levels_.size(); ++h) {
    levels_[h].insert(levels_[h].end(), other.levels_[h].begin(), other.levels_[h].end());
  }
  count_ += other.count_;
  Compact(0);
}

void QuantileSketch::Compact(size_t from) {
  for (size_t h = from; h < levels_.size(); ++h) {
    if (levels_[h].size() <= kLevelCapacity) continue;
    std::vector<double>& level = levels_[h];
    std::sort(level.begin(), level.end());
    const size_t pairs = level.size() / 2;
    const size_t offset = (odd_next_ >> h) & 1;
    odd_next_ ^= uint64_t{1} << h;
    std::vector<double> promoted;
    promoted.reserve(pairs);
    for (size_t p = 0; p < pairs; ++p) promoted.push_back(level[2 * p + offset]);
    // An odd value out (the largest) stays at this level.
    if (level.size() % 2 == 1) {
      level[0] = level.back();
      level.resize(1);
    } else {
      level.clear();
    }
    if (h + 1 == levels_.size()) levels_.emplace_back();
    std::vector<double>& up = levels_[h + 1];
    up.insert(up.end(), promoted.begin(), promoted.end());
  }
}

double QuantileSketch::ValueAtRank(uint64_t rank) const {
  thread_local std::vector<std::pair<double, uint64_t>> weighted;
  weighted.clear();
  for (size_t h = 0; h < levels_.size(); ++h) {
    for (double v : levels_[h]) weighted.emplace_back(v, uint64_t{1} << h);
  }
  if (weighted.empty()) return 0;
  std::sort(weighted.begin(), weighted.end());
  uint64_t cumulative = 0;
  for (const auto& [value, weight] : weighted) {
    cumulative += weight;
    if (cumulative >= rank) return value;
  }
  return weighted.back().first;
}

double QuantileSketch::RankErrorBound() const {
  if (levels_.size() <= 1) return 0;
  return static_cast<double>(levels_.size() - 1) * static_cast<double>(count_) / kLevelCapacity;
}

size_t QuantileSketch::memory_bytes() const {
  size_t bytes = levels_.capacity() * sizeof(std::vector<double>);
  for (const std::vector<double>& level : levels_) bytes += level.capacity() * sizeof(double);
  return bytes;
}

void QuantileSketch::Serialize(ByteWriter& w) const {
  w.PutVarint(count_);
  w.PutVarint(odd_next_);
  w.PutVarint(levels_.size());
  for (const std::vector<double>& level : levels_) {
    w.PutVarint(level.size());
    for (double v : level) w.PutDouble(v);
  }
}

bool QuantileSketch::Deserialize(ByteReader& r) {
  QuantileSketch out;
  uint64_t levels = 0;
  if (!r.ReadVarint(&out.count_) || !r.ReadVarint(&out.odd_next_) || !r.ReadCount(&levels, 1)) return false;
  if (levels > 64) return r.Fail();
  out.levels_.resize(static_cast<size_t>(levels));
  unsigned __int128 weight = 0;
  for (size_t h = 0; h < out.levels_.size(); ++h) {
    uint64_t n = 0;
    if (!r.ReadCount(&n, 8)) return false;
    if (n > 2 * kLevelCapacity + 1) return r.Fail();
    out.levels_[h].resize(static_cast<size_t>(n));
    for (double& v : out.levels_[h]) {
      if (!r.ReadDouble(&v)) return false;
    }
    weight += static_cast<unsigned __int128>(n) << h;
  }
  if (weight != out.count_) return r.Fail();
  *this = std::move(out);
  return true;
}

}  // namespace freshet

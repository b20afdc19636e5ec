// QuantileSketch: a mergeable, deterministic quantile sketch for approx_percentile (a KLL-style stack of
// compactors with one capacity for every level and no randomness).
//
// Level h holds values of weight 2^h. Values are added to level 0. When a level holds more than
// kLevelCapacity values it is compacted: sorted, and of each adjacent pair one value (the first or the
// second, alternating per level from one compaction to the next) moves up a level with twice the weight; with
// an odd number, the largest value stays behind. The total weight is always exactly the number of values
// added, and merging two sketches appends level to level and compacts the same way.
//
// Exactness and error. Until some level has been compacted (up to kLevelCapacity values, whether added one
// by one or merged) the sketch holds every value and answers exactly. After that, one compaction at level h
// moves the weighted rank of any point by at most 2^h, and level h can be compacted at most n / (k 2^h)
// times (each takes at least k values of weight 2^h out of a total weight n), so for every point x
//   |estimated rank(x) - true rank(x)| <= L * n / k,   L = floor(log2(n / k)) + 1 (for n > k), k = 256
// which bounds the value ValueAtRank(r) returns: fewer than r + L n / k values are below it and at least
// r - L n / k are at or below it. E.g. 1,000 values: 7.8 ranks (0.8%); 100,000: 9 levels, 3.5% at worst (the
// alternating choice usually cancels most of it). Memory: 8 bytes per value kept, at most
// (L + 1) * (k + 1) values.
//
// Deterministic: the same sequence of Add and Merge calls gives the same bits, on every path.
// Not thread-safe for writers; const methods may be called concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/bytes.h"

namespace freshet {

class QuantileSketch {
 public:
  static constexpr uint32_t kLevelCapacity = 256;

  void Add(double value);
  void Merge(const QuantileSketch& other);

  // The value of weighted rank `rank` (1-based; 1 <= rank <= count()): the smallest kept value whose
  // cumulative weight in sorted order reaches `rank`. Exact while exact().
  double ValueAtRank(uint64_t rank) const;

  // The number of values added (merged sketches included).
  uint64_t count() const { return count_; }
  // True while no level has been compacted: every value is kept.
  bool exact() const { return levels_.size() <= 1; }
  // The bound above, L * n / k, for this sketch's count (0 while exact).
  double RankErrorBound() const;
  size_t memory_bytes() const;

  // Appends the sketch: the count (Varint), the alternation bits (Varint), the number of levels (Varint),
  // then each level's number of values (Varint) and values (doubles).
  void Serialize(ByteWriter& w) const;
  // Replaces this sketch by a serialized one; false (reader failed) when malformed: the levels' weights
  // must add up to the count.
  bool Deserialize(ByteReader& r);

 private:
  // Compacts every level above capacity, from level `from` up.
  void Compact(size_t from);

  std::vector<std::vector<double>> levels_;  // levels_[h]: values of weight 2^h; level 0 in arrival order.
  uint64_t count_ = 0;
  uint64_t odd_next_ = 0;  // Bit h: the next compaction of level h keeps the second value of each pair.
};

}  // namespace freshet

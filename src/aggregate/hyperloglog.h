// HyperLogLog distinct-count sketch with a sparse mode for small sets.
//
// Sparse: the distinct 64-bit hashes themselves, sorted; the count is exact (up to 64-bit hash
// collisions) and costs 8 bytes per distinct value. Once the sparse list would exceed a quarter of the
// dense size (2^p / 32 hashes) it converts to dense: 2^p one-byte registers, estimated with Ertl's
// improved raw estimator (2017), which needs no bias tables and no switch to linear counting. Precision p is 4..18; relative standard error about 1.04 / sqrt(2^p).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/bytes.h"

namespace freshet {

class HyperLogLog {
 public:
  explicit HyperLogLog(int precision = 14) : precision_(static_cast<uint8_t>(precision)) {}

  void AddHash(uint64_t hash);
  void Merge(const HyperLogLog& other);
  uint64_t Estimate() const;
  bool is_sparse() const { return registers_.empty(); }
  int precision() const { return precision_; }
  size_t memory_bytes() const { return sparse_.capacity() * sizeof(uint64_t) + registers_.capacity(); }

  // Appends the sketch: precision (U8), mode (U8: 0 sparse, 1 dense), then either the number of hashes
  // (Varint) and each hash (U64, ascending), or the 2^p registers (one byte each).
  void Serialize(ByteWriter& w) const;
  // Replaces this sketch by a serialized one. Fails (false, reader failed) unless its precision is
  // `expected_precision` and it is well formed: sparse hashes strictly ascending and at most
  // SparseLimit, registers within the ranks precision p can produce.
  bool Deserialize(ByteReader& r, int expected_precision);

  // Largest number of hashes kept in sparse mode for precision p.
  static size_t SparseLimit(int precision) { return (size_t{1} << precision) / 32; }

 private:
  void ToDense();
  void AddToRegisters(uint64_t hash);

  uint8_t precision_;
  std::vector<uint64_t> sparse_;     // Sorted, distinct. Used while registers_ is empty.
  std::vector<uint8_t> registers_;   // 2^p registers once dense.
};

// 64-bit hash of a byte string (used for approx_count_distinct); stable across runs and machines.
uint64_t HashBytes(const void* data, size_t size, uint64_t seed);

}  // namespace freshet

#include "aggregate/hyperloglog.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

namespace freshet {

uint64_t HashBytes(const void* data, size_t size, uint64_t seed) {
  // A simple, well-mixed 64-bit hash: 8 bytes at a time through a multiply-xorshift round, then the
  // splitmix64 finalizer. Not cryptographic; stable so that sketches compare across runs.
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = seed ^ (size * 0x9E3779B97F4A7C15ULL);
  while (size >= 8) {
    uint64_t k;
    std::memcpy(&k, p, 8);
    h ^= k * 0xBF58476D1CE4E5B9ULL;
    h = std::rotl(h, 31) * 0x94D049BB133111EBULL;
    p += 8;
    size -= 8;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, p, size);
  h ^= tail * 0xBF58476D1CE4E5B9ULL;
  h ^= h >> 30;
  h *= 0xBF58476D1CE4E5B9ULL;
  h ^= h >> 27;
  h *= 0x94D049BB133111EBULL;
  h ^= h >> 31;
  return h;
}

void HyperLogLog::AddToRegisters(uint64_t hash) {
  const uint64_t index = hash >> (64 - precision_);
  const uint64_t rest = (hash << precision_) | (uint64_t{1} << (precision_ - 1));  // Guard bit bounds rank.
  const uint8_t rank = static_cast<uint8_t>(std::countl_zero(rest) + 1);
  if (registers_[index] < rank) registers_[index] = rank;
}

void HyperLogLog::ToDense() {
  registers_.assign(size_t{1} << precision_, 0);
  for (uint64_t h : sparse_) AddToRegisters(h);
  std::vector<uint64_t>().swap(sparse_);
}

void HyperLogLog::AddHash(uint64_t hash) {
  if (!registers_.empty()) {
    AddToRegisters(hash);
    return;
  }
  auto it = std::lower_bound(sparse_.begin(), sparse_.end(), hash);
  if (it != sparse_.end() && *it == hash) return;
  if (sparse_.size() + 1 > SparseLimit(precision_)) {
    ToDense();
    AddToRegisters(hash);
    return;
  }
  sparse_.insert(it, hash);
}

void HyperLogLog::Merge(const HyperLogLog& other) {
  if (other.registers_.empty()) {
    for (uint64_t h : other.sparse_) AddHash(h);
    return;
  }
  if (registers_.empty()) ToDense();
  for (size_t k = 0; k < registers_.size(); ++k) registers_[k] = std::max(registers_[k], other.registers_[k]);
}

uint64_t HyperLogLog::Estimate() const {
  if (registers_.empty()) return sparse_.size();
  const double m = static_cast<double>(registers_.size());
  double sum = 0;
  size_t zeros = 0;
  for (uint8_t r : registers_) {
    sum += std::ldexp(1.0, -r);
    zeros += r == 0;
  }
  double alpha;
  switch (registers_.size()) {
    case 16: alpha = 0.673; break;
    case 32: alpha = 0.697; break;
    case 64: alpha = 0.709; break;
    default: alpha = 0.7213 / (1.0 + 1.079 / m);
  }
  double estimate = alpha * m * m / sum;
  if (estimate <= 2.5 * m && zeros > 0) estimate = m * std::log(m / static_cast<double>(zeros));
  return static_cast<uint64_t>(std::llround(estimate));
}

}  // namespace freshet

#include "aggregate/hyperloglog.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

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

void HyperLogLog::Serialize(ByteWriter& w) const {
  w.PutU8(precision_);
  if (registers_.empty()) {
    w.PutU8(0);
    w.PutVarint(sparse_.size());
    for (uint64_t h : sparse_) w.PutU64(h);
  } else {
    w.PutU8(1);
    w.PutRaw(registers_.data(), registers_.size());
  }
}

bool HyperLogLog::Deserialize(ByteReader& r, int expected_precision) {
  uint8_t precision, mode;
  if (!r.ReadU8(&precision)) return false;
  if (precision != expected_precision || precision < 4 || precision > 18) return r.Fail();
  if (!r.ReadU8(&mode)) return false;
  if (mode == 0) {
    uint64_t n;
    if (!r.ReadCount(&n, 8)) return false;
    if (n > SparseLimit(precision)) return r.Fail();
    std::vector<uint64_t> sparse(static_cast<size_t>(n));
    for (size_t k = 0; k < sparse.size(); ++k) {
      if (!r.ReadU64(&sparse[k])) return false;
      if (k > 0 && sparse[k] <= sparse[k - 1]) return r.Fail();
    }
    precision_ = precision;
    sparse_ = std::move(sparse);
    std::vector<uint8_t>().swap(registers_);
    return true;
  }
  if (mode != 1) return r.Fail();
  std::string_view bytes;
  if (!r.ReadRaw(uint64_t{1} << precision, &bytes)) return false;
  const uint8_t max_rank = static_cast<uint8_t>(64 - precision + 1);
  for (char c : bytes) {
    if (static_cast<uint8_t>(c) > max_rank) return r.Fail();
  }
  precision_ = precision;
  registers_.assign(bytes.begin(), bytes.end());
  std::vector<uint64_t>().swap(sparse_);
  return true;
}

namespace {

// Ertl, "New cardinality estimation algorithms for HyperLogLog sketches" (2017): sigma and tau of the
// improved raw estimator, which is unbiased across the whole range without empirical bias tables.
double Sigma(double x) {
  if (x == 1.0) return std::numeric_limits<double>::infinity();
  double y = 1.0, z = x, previous;
  do {
    x *= x;
    previous = z;
    z += x * y;
    y += y;
  } while (z != previous);
  return z;
}

double Tau(double x) {
  if (x == 0.0 || x == 1.0) return 0.0;
  double y = 1.0, z = 1.0 - x, previous;
  do {
    x = std::sqrt(x);
    previous = z;
    y *= 0.5;
    z -= (1.0 - x) * (1.0 - x) * y;
  } while (z != previous);
  return z / 3.0;
}

}  // namespace

uint64_t HyperLogLog::Estimate() const {
  if (registers_.empty()) return sparse_.size();
  const int q = 64 - precision_;  // Registers hold ranks 0..q+1.
  std::vector<uint32_t> histogram(q + 2, 0);
  for (uint8_t r : registers_) ++histogram[r];
  const double m = static_cast<double>(registers_.size());
  double z = m * Tau(1.0 - histogram[q + 1] / m);
  for (int k = q; k >= 1; --k) z = 0.5 * (z + histogram[k]);
  z += m * Sigma(histogram[0] / m);
  const double alpha_infinity = 0.5 / std::log(2.0);
  return static_cast<uint64_t>(std::llround(alpha_infinity * m * m / z));
}

}  // namespace freshet

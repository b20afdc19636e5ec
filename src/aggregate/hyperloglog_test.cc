// Tests for the HyperLogLog sketch: exact while sparse, within 4 standard errors when dense, merges that
// equal adding everything to one sketch, small memory for small sets, and the precision range 4..18.
#include "aggregate/hyperloglog.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

namespace freshet {
namespace {

// splitmix64: an independent, well-mixed hash of a counter, so the sketch is tested apart from HashBytes.
uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// The hashes of `n` distinct values, value k hashed as Mix(k ^ salt).
std::vector<uint64_t> DistinctHashes(size_t n, uint64_t salt) {
  std::vector<uint64_t> hashes(n);
  for (size_t k = 0; k < n; ++k) hashes[k] = Mix(k ^ (salt << 40));
  return hashes;
}

// Standard error bound promised by the header: 4 * 1.04 / sqrt(2^p), relative.
double Bound(int precision, size_t n) {
  return 4 * 1.04 / std::sqrt(std::ldexp(1.0, precision)) * static_cast<double>(n);
}

TEST(HyperLogLogTest, EmptySketchEstimatesZero) {
  for (int p : {4, 10, 14, 18}) {
    HyperLogLog hll(p);
    EXPECT_EQ(hll.Estimate(), 0u) << "p=" << p;
    EXPECT_EQ(hll.precision(), p);
  }
}

TEST(HyperLogLogTest, SparseModeIsExactUpToTheLimit) {
  std::mt19937_64 rng(201);
  for (int p : {4, 5, 8, 10, 12, 14, 16, 18}) {
    const size_t limit = (size_t{1} << p) / 32;
    EXPECT_EQ(HyperLogLog::SparseLimit(p), limit);
    std::vector<uint64_t> hashes = DistinctHashes(limit, static_cast<uint64_t>(p));
    HyperLogLog hll(p);
    std::set<uint64_t> seen;
    // Add each value one to three times in a random order; after every add the estimate is exact.
    std::vector<uint64_t> stream;
    for (uint64_t h : hashes) {
      const int copies = 1 + static_cast<int>(rng() % 3);
      for (int c = 0; c < copies; ++c) stream.push_back(h);
    }
    std::shuffle(stream.begin(), stream.end(), rng);
    for (uint64_t h : stream) {
      hll.AddHash(h);
      seen.insert(h);
      ASSERT_EQ(hll.Estimate(), seen.size()) << "p=" << p;
      ASSERT_TRUE(hll.is_sparse()) << "p=" << p << " after " << seen.size() << " distinct of limit " << limit;
    }
    // One more distinct value goes past the limit: the sketch turns dense.
    hll.AddHash(Mix(~uint64_t{0} - static_cast<uint64_t>(p)));
    EXPECT_FALSE(hll.is_sparse()) << "p=" << p;
    EXPECT_LE(std::fabs(static_cast<double>(hll.Estimate()) - static_cast<double>(limit + 1)),
              Bound(p, limit + 1))
        << "p=" << p;
  }
}

TEST(HyperLogLogTest, DenseEstimateIsWithinFourStandardErrors) {
  // n from just past the sparse limit through the linear-counting / raw-estimate switch (2.5 * 2^p) up
  // to 1e5, for three independent sets of values each.
  for (int p : {10, 12, 14}) {
    const size_t m = size_t{1} << p;
    std::vector<size_t> sizes = {HyperLogLog::SparseLimit(p) + 1,
                                 m / 2,
                                 m,
                                 2 * m,
                                 5 * m / 2,
                                 5 * m / 2 + 1,
                                 3 * m,
                                 5 * m,
                                 1000,
                                 5000,
                                 20000,
                                 50000,
                                 100000};
    for (size_t n : sizes) {
      if (n <= HyperLogLog::SparseLimit(p) || n > 100000) continue;
      for (uint64_t salt = 1; salt <= 3; ++salt) {
        HyperLogLog hll(p);
        for (uint64_t h : DistinctHashes(n, salt * 1000 + static_cast<uint64_t>(p))) hll.AddHash(h);
        ASSERT_FALSE(hll.is_sparse());
        const double estimate = static_cast<double>(hll.Estimate());
        EXPECT_LE(std::fabs(estimate - static_cast<double>(n)), Bound(p, n))
            << "p=" << p << " n=" << n << " salt=" << salt << " estimate=" << estimate;
      }
    }
  }
}

// KNOWN BUG (reported to the lead; do not loosen this test): near the switch from linear counting to
// the raw HyperLogLog estimate (estimate > 2.5 * 2^p), the raw estimate is biased upwards by about 3
// standard errors at p=14, so the promised 4 * 1.04 / sqrt(2^p) bound fails for roughly 10-20% of sets
// of 40000-42000 distinct values (n between 2.45 and 2.6 times 2^14). Measured over 200 sets at
// n = 40140: 39 beyond the bound, worst 5.5 standard errors. HyperLogLog::Estimate needs a bias
// correction there (HLL++ bias tables, or Ertl's table-free "improved raw estimator", 2017).
TEST(HyperLogLogTest, DenseEstimateIsWithinBoundAroundTheLinearCountingSwitch) {
  for (int p : {10, 12, 14}) {
    const size_t m = size_t{1} << p;
    for (size_t n = 22 * m / 10; n <= 3 * m && n <= 100000; n += m / 20) {
      for (uint64_t salt = 1; salt <= 5; ++salt) {
        HyperLogLog hll(p);
        for (uint64_t h : DistinctHashes(n, salt * 7919 + static_cast<uint64_t>(p))) hll.AddHash(h);
        const double estimate = static_cast<double>(hll.Estimate());
        EXPECT_LE(std::fabs(estimate - static_cast<double>(n)), Bound(p, n))
            << "p=" << p << " n=" << n << " (" << static_cast<double>(n) / static_cast<double>(m)
            << " * 2^p) salt=" << salt << " estimate=" << estimate << ", "
            << std::fabs(estimate - static_cast<double>(n)) / static_cast<double>(n) *
                   std::sqrt(static_cast<double>(m)) / 1.04
            << " standard errors";
      }
    }
  }
}

TEST(HyperLogLogTest, DenseEstimateWithHashBytesOfSequentialIntegers) {
  // approx_count_distinct hashes an 8-byte key with HashBytes; sequential integers (user ids) must
  // spread well enough for the same accuracy.
  for (int p : {10, 12, 14}) {
    for (size_t n : {size_t{3000}, size_t{30000}, size_t{100000}}) {
      HyperLogLog hll(p);
      for (uint64_t k = 0; k < n; ++k) hll.AddHash(HashBytes(&k, sizeof(k), 0x4E554D01u));
      const double estimate = static_cast<double>(hll.Estimate());
      EXPECT_LE(std::fabs(estimate - static_cast<double>(n)), Bound(p, n)) << "p=" << p << " n=" << n;
    }
  }
}

TEST(HyperLogLogTest, ExtremePrecisionsWork) {
  // p=4: 16 registers, no sparse mode at all (2^4 / 32 = 0); p=18: 262144 registers.
  for (int p : {4, 18}) {
    for (size_t n : {size_t{1}, size_t{7}, size_t{100}, size_t{5000}, size_t{9000}, size_t{100000}}) {
      HyperLogLog hll(p);
      for (uint64_t h : DistinctHashes(n, 77)) hll.AddHash(h);
      const double estimate = static_cast<double>(hll.Estimate());
      if (n <= HyperLogLog::SparseLimit(p)) {
        EXPECT_EQ(hll.Estimate(), n) << "p=" << p;
      } else {
        EXPECT_LE(std::fabs(estimate - static_cast<double>(n)), Bound(p, n)) << "p=" << p << " n=" << n;
      }
    }
  }
  HyperLogLog tiny(4);
  tiny.AddHash(12345);
  EXPECT_FALSE(tiny.is_sparse());
  EXPECT_EQ(tiny.Estimate(), 1u);  // Linear counting: 16 ln(16/15) = 1.03.
}

TEST(HyperLogLogTest, HashesWithManyLeadingZerosAreBounded) {
  // A hash whose bits after the register index are all zero has the largest rank; it must not overflow
  // the register or the estimate. Hash 0 (register 0, rank capped at 64 - p + 1) and 2^p - 1 others.
  for (int p : {4, 10, 18}) {
    HyperLogLog hll(p);
    hll.AddHash(0);
    hll.AddHash(uint64_t{1} << (64 - p));  // Register 1, rest zero.
    for (uint64_t h : DistinctHashes(HyperLogLog::SparseLimit(p) + 1, 5)) hll.AddHash(h);
    const size_t n = HyperLogLog::SparseLimit(p) + 3;
    EXPECT_LE(std::fabs(static_cast<double>(hll.Estimate()) - static_cast<double>(n)), Bound(p, n) + 2)
        << "p=" << p;
  }
}

// Merges a and b (a copy of a absorbs b) and checks the result against one sketch of both sets.
void ExpectMergeEqualsUnion(int p, const std::vector<uint64_t>& a, const std::vector<uint64_t>& b,
                            bool a_sparse, bool b_sparse) {
  HyperLogLog left(p), right(p), all(p);
  for (uint64_t h : a) left.AddHash(h);
  for (uint64_t h : b) right.AddHash(h);
  for (uint64_t h : a) all.AddHash(h);
  for (uint64_t h : b) all.AddHash(h);
  ASSERT_EQ(left.is_sparse(), a_sparse) << "test setup";
  ASSERT_EQ(right.is_sparse(), b_sparse) << "test setup";
  std::set<uint64_t> distinct(a.begin(), a.end());
  distinct.insert(b.begin(), b.end());

  HyperLogLog ab = left;
  ab.Merge(right);
  HyperLogLog ba = right;
  ba.Merge(left);
  for (const HyperLogLog* merged : {&ab, &ba}) {
    EXPECT_EQ(merged->is_sparse(), all.is_sparse());
    EXPECT_EQ(merged->Estimate(), all.Estimate());
    if (all.is_sparse()) {
      EXPECT_EQ(merged->Estimate(), distinct.size());
    } else {
      EXPECT_LE(std::fabs(static_cast<double>(merged->Estimate()) - static_cast<double>(distinct.size())),
                Bound(p, distinct.size()));
    }
  }
  // Merging is idempotent: merging the same sketch again changes nothing.
  ab.Merge(right);
  EXPECT_EQ(ab.Estimate(), all.Estimate());
}

// Elements [from, from + n) of `base`.
std::vector<uint64_t> Slice(const std::vector<uint64_t>& base, size_t from, size_t n) {
  return std::vector<uint64_t>(base.begin() + static_cast<ptrdiff_t>(from),
                               base.begin() + static_cast<ptrdiff_t>(from + n));
}

TEST(HyperLogLogTest, MergeEqualsAddingEverything) {
  for (int p : {6, 10, 14}) {
    SCOPED_TRACE("p=" + std::to_string(p));
    const size_t limit = HyperLogLog::SparseLimit(p);
    const std::vector<uint64_t> pool = DistinctHashes(40 * limit + 100, 9);
    {
      SCOPED_TRACE("sparse + sparse, union stays sparse, overlapping");
      ExpectMergeEqualsUnion(p, Slice(pool, 0, limit / 2), Slice(pool, limit / 4, limit / 2), true, true);
    }
    {
      SCOPED_TRACE("sparse + sparse, union exactly at the limit");
      ExpectMergeEqualsUnion(p, Slice(pool, 0, limit / 2), Slice(pool, limit / 2, limit - limit / 2), true,
                             true);
    }
    {
      SCOPED_TRACE("sparse + sparse, union past the limit");
      ExpectMergeEqualsUnion(p, Slice(pool, 0, limit), Slice(pool, limit / 2, limit), true, true);
    }
    {
      SCOPED_TRACE("sparse + dense");
      ExpectMergeEqualsUnion(p, Slice(pool, 0, limit), Slice(pool, 3, 10 * limit), true, false);
    }
    {
      SCOPED_TRACE("dense + sparse, disjoint");
      ExpectMergeEqualsUnion(p, Slice(pool, 0, 10 * limit), Slice(pool, 20 * limit, limit / 3), false, true);
    }
    {
      SCOPED_TRACE("dense + dense");
      ExpectMergeEqualsUnion(p, Slice(pool, 0, 20 * limit), Slice(pool, 10 * limit, 30 * limit), false,
                             false);
    }
    {
      SCOPED_TRACE("empty + dense, dense + empty");
      ExpectMergeEqualsUnion(p, {}, Slice(pool, 0, 5 * limit), true, false);
      ExpectMergeEqualsUnion(p, Slice(pool, 0, 5 * limit), {}, false, true);
    }
  }
}

TEST(HyperLogLogTest, MemoryIsSmallForAFewValues) {
  HyperLogLog hll(14);
  for (uint64_t h : DistinctHashes(5, 3)) hll.AddHash(h);
  EXPECT_GT(hll.memory_bytes(), 0u);
  EXPECT_LE(hll.memory_bytes(), 64u) << "five values should cost tens of bytes, not kilobytes";
  // At the sparse limit the list is at most half the dense size (a quarter, with exact vector growth).
  HyperLogLog full(14);
  for (uint64_t h : DistinctHashes(HyperLogLog::SparseLimit(14), 3)) full.AddHash(h);
  ASSERT_TRUE(full.is_sparse());
  EXPECT_LE(full.memory_bytes(), (size_t{1} << 14) / 2);
  // Dense: one byte per register, and the sparse list is released.
  full.AddHash(Mix(123456789));
  ASSERT_FALSE(full.is_sparse());
  EXPECT_GE(full.memory_bytes(), size_t{1} << 14);
  EXPECT_LE(full.memory_bytes(), (size_t{1} << 14) + 64);
}

TEST(HyperLogLogTest, HashBytesIsStableAndSeeded) {
  const char text[] = "checkout-page";
  const uint64_t a = HashBytes(text, sizeof(text) - 1, 1);
  EXPECT_EQ(a, HashBytes(text, sizeof(text) - 1, 1));
  EXPECT_NE(a, HashBytes(text, sizeof(text) - 1, 2));
  EXPECT_NE(a, HashBytes(text, sizeof(text) - 2, 1));  // A prefix differs.
  // Lengths that differ only by trailing zero bytes must not collide ("a" vs "a\0").
  const char with_zero[2] = {'a', '\0'};
  EXPECT_NE(HashBytes(with_zero, 1, 0), HashBytes(with_zero, 2, 0));
  // No collisions among 200000 sequential integers, and the top 10 bits (a p=10 register index) are
  // spread evenly: every one of the 1024 buckets gets within 50% of the mean.
  std::set<uint64_t> seen;
  std::vector<int> buckets(1024, 0);
  for (uint64_t k = 0; k < 200000; ++k) {
    const uint64_t h = HashBytes(&k, sizeof(k), 7);
    seen.insert(h);
    ++buckets[h >> 54];
  }
  EXPECT_EQ(seen.size(), 200000u);
  const double mean = 200000.0 / 1024;
  for (int count : buckets) {
    EXPECT_GT(count, mean * 0.5);
    EXPECT_LT(count, mean * 1.5);
  }
}

}  // namespace
}  // namespace freshet

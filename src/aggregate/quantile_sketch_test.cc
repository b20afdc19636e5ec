// The quantile sketch of approx_percentile and the `first` aggregation, against brute force written here: exact
// nearest-rank percentiles up to the level capacity, the stated rank bound beyond it (single pass, and partials
// merged in random splits), the rank computed in integers, and round trips through Serialize.
#include "aggregate/quantile_sketch.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "aggregate/aggregations.h"

namespace freshet {
namespace {

constexpr int64_t kPercentilesPpm[] = {0, 1000, 70000, 250000, 500000, 900000, 950000, 999000, 1000000};

// max(1, ceil(ppm * n / 10^6)), by repeated subtraction-free integer arithmetic of its own.
uint64_t BruteRank(int64_t ppm, uint64_t n) {
  uint64_t r = 0;
  while (r * 1000000 < static_cast<uint64_t>(ppm) * n) ++r;
  return std::max<uint64_t>(r, 1);
}

// The bound of quantile_sketch.h, L * n / k with L = floor(log2(n / k)) + 1, from n alone.
double BruteBound(uint64_t n) {
  const uint64_t k = QuantileSketch::kLevelCapacity;
  if (n <= k) return 0;
  uint64_t levels = 0;
  while ((k << levels) <= n) ++levels;
  return static_cast<double>(levels) * static_cast<double>(n) / static_cast<double>(k);
}

// Checks ValueAtRank against the sorted values for every percentile: equal while n <= k, else a value of the
// input with fewer than r + E values below it and at least r - E at or below it.
void ExpectWithinBound(const QuantileSketch& sketch, std::vector<double> values, const std::string& what) {
  std::sort(values.begin(), values.end());
  const uint64_t n = values.size();
  ASSERT_EQ(sketch.count(), n) << what;
  const double bound = BruteBound(n);
  EXPECT_LE(sketch.RankErrorBound(), bound) << what;
  for (int64_t ppm : kPercentilesPpm) {
    const uint64_t r = BruteRank(ppm, n);
    const double got = sketch.ValueAtRank(ApproxPercentileAgg::Rank(ppm, n));
    if (bound == 0) {
      EXPECT_EQ(got, values[r - 1]) << what << " ppm " << ppm;
      continue;
    }
    ASSERT_TRUE(std::binary_search(values.begin(), values.end(), got)) << what << " ppm " << ppm;
    const double below = static_cast<double>(std::lower_bound(values.begin(), values.end(), got) - values.begin());
    const double at_or_below = static_cast<double>(std::upper_bound(values.begin(), values.end(), got) - values.begin());
    EXPECT_LT(below, static_cast<double>(r) + bound) << what << " ppm " << ppm << " n " << n;
    EXPECT_GE(at_or_below, static_cast<double>(r) - bound) << what << " ppm " << ppm << " n " << n;
  }
}

std::vector<double> Draw(std::mt19937_64& rng, size_t n, int shape) {
  std::vector<double> out(n);
  std::uniform_real_distribution<double> uniform(-1000, 1000);
  std::uniform_int_distribution<int> few(0, 9);
  for (size_t k = 0; k < n; ++k) {
    switch (shape) {
      case 0: out[k] = uniform(rng); break;
      case 1: out[k] = static_cast<double>(k); break;                      // ascending
      case 2: out[k] = static_cast<double>(n - k); break;                  // descending
      case 3: out[k] = few(rng); break;                                    // many ties
      default: out[k] = std::exp(uniform(rng) / 100); break;               // skewed
    }
  }
  return out;
}

TEST(QuantileSketchTest, RankIsNearestRankInIntegers) {
  // 0.07 * 100 is 7.000000000000001 in doubles; the rank must be 7.
  EXPECT_EQ(ApproxPercentileAgg::Rank(70000, 100), 7u);
  EXPECT_EQ(ApproxPercentileAgg::Rank(950000, 20), 19u);
  EXPECT_EQ(ApproxPercentileAgg::Rank(0, 5), 1u);
  EXPECT_EQ(ApproxPercentileAgg::Rank(1000000, 5), 5u);
  EXPECT_EQ(ApproxPercentileAgg::Rank(500000, 3), 2u);
  for (uint64_t n = 1; n < 300; ++n) {
    for (int64_t ppm : kPercentilesPpm) EXPECT_EQ(ApproxPercentileAgg::Rank(ppm, n), BruteRank(ppm, n)) << ppm << " " << n;
  }
}

TEST(QuantileSketchTest, ExactUpToTheLevelCapacityAddedOrMerged) {
  std::mt19937_64 rng(1);
  for (int trial = 0; trial < 200; ++trial) {
    const size_t n = 1 + rng() % QuantileSketch::kLevelCapacity;
    const std::vector<double> values = Draw(rng, n, trial % 5);
    QuantileSketch single;
    for (double v : values) single.Add(v);
    EXPECT_TRUE(single.exact());
    ExpectWithinBound(single, values, "single n=" + std::to_string(n));
    QuantileSketch merged, part;
    for (double v : values) {
      part.Add(v);
      if (rng() % 7 == 0) {
        merged.Merge(part);
        part = QuantileSketch();
      }
    }
    merged.Merge(part);
    EXPECT_TRUE(merged.exact());
    ExpectWithinBound(merged, values, "merged n=" + std::to_string(n));
  }
}

TEST(QuantileSketchTest, WithinTheRankBoundBeyondIt) {
  std::mt19937_64 rng(2);
  for (size_t n : {257u, 300u, 1000u, 5000u, 40000u, 200000u}) {
    for (int shape = 0; shape < 5; ++shape) {
      const std::vector<double> values = Draw(rng, n, shape);
      QuantileSketch single;
      for (double v : values) single.Add(v);
      EXPECT_FALSE(single.exact());
      const std::string what = "n=" + std::to_string(n) + " shape " + std::to_string(shape);
      ExpectWithinBound(single, values, "single " + what);
      // Partials of random sizes merged left to right, and in a balanced tree.
      std::vector<QuantileSketch> parts(1);
      for (double v : values) {
        parts.back().Add(v);
        if (rng() % 300 == 0) parts.emplace_back();
      }
      QuantileSketch chain;
      for (const QuantileSketch& p : parts) chain.Merge(p);
      ExpectWithinBound(chain, values, "chain " + what);
      while (parts.size() > 1) {
        std::vector<QuantileSketch> next;
        for (size_t k = 0; k + 1 < parts.size(); k += 2) {
          next.push_back(parts[k]);
          next.back().Merge(parts[k + 1]);
        }
        if (parts.size() % 2 == 1) next.push_back(parts.back());
        parts = std::move(next);
      }
      ExpectWithinBound(parts[0], values, "tree " + what);
    }
  }
}

TEST(QuantileSketchTest, MemoryStaysBounded) {
  QuantileSketch s;
  for (int k = 0; k < 1000000; ++k) s.Add(k * 0.5);
  const double n_over_k = 1000000.0 / QuantileSketch::kLevelCapacity;
  const size_t levels = static_cast<size_t>(std::floor(std::log2(n_over_k))) + 2;
  EXPECT_LE(s.memory_bytes(), levels * (QuantileSketch::kLevelCapacity + 1) * 2 * sizeof(double) + 1024);
}

TEST(QuantileSketchTest, SerializeRoundTripsAndContinuesIdentically) {
  std::mt19937_64 rng(3);
  for (size_t n : {0u, 1u, 256u, 257u, 5000u}) {
    QuantileSketch a;
    for (double v : Draw(rng, n, 0)) a.Add(v);
    std::string bytes;
    ByteWriter w(&bytes);
    a.Serialize(w);
    ByteReader r(bytes);
    QuantileSketch b;
    ASSERT_TRUE(b.Deserialize(r)) << n;
    EXPECT_TRUE(r.at_end());
    for (double v : Draw(rng, 3000, 4)) {
      a.Add(v);
      b.Add(v);
    }
    std::string again_a, again_b;
    ByteWriter wa(&again_a), wb(&again_b);
    a.Serialize(wa);
    b.Serialize(wb);
    EXPECT_EQ(again_a, again_b) << n;
  }
}

TEST(QuantileSketchTest, DeserializeRefusesWeightsThatDoNotAddUp) {
  QuantileSketch a;
  for (int k = 0; k < 1000; ++k) a.Add(k);
  std::string bytes;
  ByteWriter w(&bytes);
  a.Serialize(w);
  bytes[0] = static_cast<char>(bytes[0] ^ 1);  // The count's low bit.
  ByteReader r(bytes);
  QuantileSketch b;
  EXPECT_FALSE(b.Deserialize(r));
  for (size_t cut = 0; cut < bytes.size(); cut += 97) {
    ByteReader truncated(std::string_view(bytes).substr(0, cut));
    QuantileSketch c;
    EXPECT_FALSE(c.Deserialize(truncated)) << cut;
  }
}

TEST(ApproxPercentileAggTest, NullWhenEmptyAndNumbersOnly) {
  AggContext ctx;
  ctx.percentile_ppm = 950000;
  ApproxPercentileAgg::State s;
  EXPECT_TRUE(ApproxPercentileAgg::Finalize(s, ctx).is_null());
  double x;
  EXPECT_FALSE(ApproxPercentileAgg::MakeInput(Value::String("1"), ctx, &x));
  EXPECT_FALSE(ApproxPercentileAgg::MakeInput(Value::Bool(true), ctx, &x));
  for (int k = 1; k <= 20; ++k) {
    ASSERT_TRUE(ApproxPercentileAgg::MakeInput(Value::Int(k), ctx, &x));
    ApproxPercentileAgg::Add(s, x, 0, 0, ctx);
  }
  const Value v = ApproxPercentileAgg::Finalize(s, ctx);
  ASSERT_EQ(v.type, ValueType::kDouble);
  EXPECT_EQ(v.d, 19.0);
}

TEST(FirstAggTest, EarliestTimeWinsAndTiesGoToTheEarlierInput) {
  AggContext ctx;
  struct Ev {
    int64_t time;
    uint64_t seq;
    int64_t value;
  };
  std::vector<Ev> events = {{50, 0, 1}, {10, 1, 2}, {10, 2, 3}, {30, 3, 4}, {10, 4, 5}, {70, 5, 6}};
  std::mt19937_64 rng(4);
  for (int trial = 0; trial < 50; ++trial) {
    std::shuffle(events.begin(), events.end(), rng);
    FirstAgg::State single, left, right;
    for (size_t k = 0; k < events.size(); ++k) {
      Scalar x;
      ASSERT_TRUE(FirstAgg::MakeInput(Value::Int(events[k].value), ctx, &x));
      FirstAgg::Add(single, x, events[k].time, events[k].seq, ctx);
      FirstAgg::Add(k % 2 == 0 ? left : right, x, events[k].time, events[k].seq, ctx);
    }
    FirstAgg::Merge(left, right, ctx);
    EXPECT_EQ(FirstAgg::Finalize(single, ctx).i, 2);
    EXPECT_EQ(FirstAgg::Finalize(left, ctx).i, 2);
  }
  EXPECT_TRUE(FirstAgg::Finalize(FirstAgg::State{}, ctx).is_null());
}

}  // namespace
}  // namespace freshet

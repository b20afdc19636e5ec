// Property tests for the aggregations: for seeded random inputs, the single-pass result, the result of
// partial states merged in random splits and random merge trees, and a brute-force reference computed
// directly from the input list (written here, independently of aggregations.h) must all agree.
#include "aggregate/aggregations.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace freshet {
namespace {

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kInt64Min = std::numeric_limits<int64_t>::min();

// One event's field value, owning its text, plus the event's time and input order.
struct Item {
  ValueType type = ValueType::kInt;
  bool b = false;
  int64_t i = 0;
  double d = 0;
  std::string s;
  int64_t time_ms = 0;
  uint64_t seq = 0;

  Value ToValue() const {
    switch (type) {
      case ValueType::kBool:
        return Value::Bool(b);
      case ValueType::kInt:
        return Value::Int(i);
      case ValueType::kDouble:
        return Value::Double(d);
      case ValueType::kString:
        return Value::String(s);
      case ValueType::kNull:
        return Value::Null();
      case ValueType::kComposite:
        return Value::Composite();
      case ValueType::kMissing:
        return Value::Missing();
    }
    return Value::Missing();
  }
  bool is_number() const { return type == ValueType::kInt || type == ValueType::kDouble; }
};

Item IntItem(int64_t x) {
  Item it;
  it.type = ValueType::kInt;
  it.i = x;
  return it;
}
Item DoubleItem(double x) {
  Item it;
  it.type = ValueType::kDouble;
  it.d = x;
  return it;
}
Item BoolItem(bool x) {
  Item it;
  it.type = ValueType::kBool;
  it.b = x;
  return it;
}
Item StringItem(std::string x) {
  Item it;
  it.type = ValueType::kString;
  it.s = std::move(x);
  return it;
}

// ---------------------------------------------------------------------------------------------------
// Exact numeric comparison (int64 vs double without going through a wider float type).
// ---------------------------------------------------------------------------------------------------

// -1, 0, 1 as a is below, equal to, above b. Neither may be NaN.
int CompareIntDouble(int64_t a, double b) {
  if (b >= 9223372036854775808.0) return -1;
  if (b < -9223372036854775808.0) return 1;
  const double whole = std::trunc(b);  // In [-2^63, 2^63): converts exactly.
  const int64_t w = static_cast<int64_t>(whole);
  if (a < w) return -1;
  if (a > w) return 1;
  const double frac = b - whole;  // Exact.
  return frac > 0 ? -1 : (frac < 0 ? 1 : 0);
}

int CompareNumbers(const Item& a, const Item& b) {
  if (a.type == ValueType::kInt && b.type == ValueType::kInt) return a.i < b.i ? -1 : (a.i > b.i ? 1 : 0);
  if (a.type == ValueType::kDouble && b.type == ValueType::kDouble)
    return a.d < b.d ? -1 : (a.d > b.d ? 1 : 0);
  if (a.type == ValueType::kInt) return CompareIntDouble(a.i, b.d);
  return -CompareIntDouble(b.i, a.d);
}

// Equality of distinct keys: numbers by value, strings by text, booleans apart from numbers.
bool SameDistinctKey(const Item& a, const Item& b) {
  if (a.is_number() && b.is_number()) return CompareNumbers(a, b) == 0;
  if (a.type != b.type) return false;
  if (a.type == ValueType::kBool) return a.b == b.b;
  return a.s == b.s;
}

// ---------------------------------------------------------------------------------------------------
// Brute-force references, straight from the semantics in aggregations.h's header comment.
// ---------------------------------------------------------------------------------------------------

// A reference result: a Value plus, for doubles, how far the code may be from it.
struct Expected {
  Expected(Value v, double tol = 0) : value(v), tolerance(tol) {}  // Implicit: {value, tolerance}.
  Value value;
  double tolerance = 0;               // Absolute, for doubles only.
  std::string text;                   // For strings: the expected text (value.s is not used).
};

// A compensated (Neumaier) long double sum of doubles: far more accurate than the code's plain sum.
struct PreciseSum {
  long double sum = 0, compensation = 0, abs_sum = 0;
  void Add(long double x) {
    const long double t = sum + x;
    if (std::fabs(sum) >= std::fabs(x)) {
      compensation += (sum - t) + x;
    } else {
      compensation += (x - t) + sum;
    }
    sum = t;
    abs_sum += std::fabs(x);
  }
  long double Total() const { return sum + compensation; }
};

// Doubles must be within 1e-9 of the result, relative; the floor allows for cancellation, where no
// double-precision summation can be relatively accurate (a few ulps of the summands' magnitude).
double Tolerance(long double result, long double magnitude) {
  return 1e-9 * static_cast<double>(std::max(std::fabs(result), magnitude * 1e-4L));
}

Expected StringExpected(std::string text) {
  Expected e{Value::String("")};
  e.text = std::move(text);
  return e;
}

Expected RefCount(const std::vector<Item>& items) {
  return {Value::Int(static_cast<int64_t>(items.size()))};
}

Expected RefSum(const std::vector<Item>& items) {
  __int128 int_total = 0;
  bool all_int = true;
  PreciseSum doubles;
  long double magnitude = 0;
  for (const Item& it : items) {
    if (it.type == ValueType::kInt) {
      int_total += it.i;
      magnitude += std::fabs(static_cast<long double>(it.i));
    } else {
      all_int = false;
      doubles.Add(it.d);
      magnitude += std::fabs(static_cast<long double>(it.d));
    }
  }
  if (all_int && int_total >= kInt64Min && int_total <= kInt64Max)
    return {Value::Int(static_cast<int64_t>(int_total))};
  const long double total = static_cast<long double>(int_total) + doubles.Total();
  return {Value::Double(static_cast<double>(total)), Tolerance(total, magnitude)};
}

Expected RefMean(const std::vector<Item>& items) {
  if (items.empty()) return {Value::Null()};
  __int128 int_total = 0;
  PreciseSum doubles;
  long double magnitude = 0;
  for (const Item& it : items) {
    if (it.type == ValueType::kInt) {
      int_total += it.i;
      magnitude += std::fabs(static_cast<long double>(it.i));
    } else {
      doubles.Add(it.d);
      magnitude += std::fabs(static_cast<long double>(it.d));
    }
  }
  const long double n = static_cast<long double>(items.size());
  const long double mean = (static_cast<long double>(int_total) + doubles.Total()) / n;
  return {Value::Double(static_cast<double>(mean)), Tolerance(mean, magnitude / n)};
}

template <bool kMin>
Expected RefExtreme(const std::vector<Item>& items) {
  if (items.empty()) return {Value::Null()};
  const Item* best = &items[0];
  for (const Item& it : items) {
    const int c = CompareNumbers(it, *best);
    // The contract: an integer wins a tie with an equal double, whatever the order.
    if (kMin ? c < 0 : c > 0) best = &it;
    if (c == 0 && it.ToValue().type == ValueType::kInt) best = &it;
  }
  return Expected{best->ToValue()};
}

Expected RefStddev(const std::vector<Item>& items) {
  if (items.empty()) return {Value::Null()};
  const long double n = static_cast<long double>(items.size());
  PreciseSum sum;
  long double max_abs = 0;
  for (const Item& it : items) {
    const long double x = it.type == ValueType::kInt ? static_cast<long double>(it.i) : it.d;
    sum.Add(x);
    max_abs = std::max(max_abs, std::fabs(x));
  }
  const long double mean = sum.Total() / n;
  PreciseSum squares;
  for (const Item& it : items) {
    const long double x = it.type == ValueType::kInt ? static_cast<long double>(it.i) : it.d;
    squares.Add((x - mean) * (x - mean));
  }
  const long double stddev = std::sqrt(squares.Total() / n);
  // The code works in doubles, so each input carries a rounding of half an ulp of its magnitude.
  return {Value::Double(static_cast<double>(stddev)),
          1e-9 * static_cast<double>(std::max(stddev, max_abs * 1e-6L))};
}

Expected RefLast(const std::vector<Item>& items) {
  if (items.empty()) return {Value::Null()};
  const Item* best = &items[0];
  for (const Item& it : items) {
    if (it.time_ms > best->time_ms || (it.time_ms == best->time_ms && it.seq > best->seq)) best = &it;
  }
  Expected e{best->ToValue()};
  e.text = best->s;  // Strings are compared against `text`: `value.s` would dangle once e is moved.
  return e;
}

Expected RefCountDistinct(const std::vector<Item>& items) {
  std::vector<const Item*> distinct;
  for (const Item& it : items) {
    bool seen = false;
    for (const Item* d : distinct) seen = seen || SameDistinctKey(*d, it);
    if (!seen) distinct.push_back(&it);
  }
  return {Value::Int(static_cast<int64_t>(distinct.size()))};
}

// ---------------------------------------------------------------------------------------------------
// Running an aggregation: single pass, and partials merged in random splits and random merge trees.
// ---------------------------------------------------------------------------------------------------

std::string Describe(const Value& v) {
  switch (v.type) {
    case ValueType::kMissing:
      return "missing";
    case ValueType::kNull:
      return "null";
    case ValueType::kBool:
      return v.b ? "true" : "false";
    case ValueType::kInt:
      return "int " + std::to_string(v.i);
    case ValueType::kDouble: {
      char buf[64];
      std::snprintf(buf, sizeof(buf), "double %.17g", v.d);
      return buf;
    }
    case ValueType::kString:
      return "string \"" + std::string(v.s) + "\"";
    case ValueType::kComposite:
      return "composite";
  }
  return "?";
}

// Checks `got` against `want`; ints, strings and booleans exactly, doubles within want.tolerance.
::testing::AssertionResult Matches(const Expected& want, const Value& got) {
  const Value& w = want.value;
  bool ok = w.type == got.type;
  if (ok) {
    switch (w.type) {
      case ValueType::kBool:
        ok = w.b == got.b;
        break;
      case ValueType::kInt:
        ok = w.i == got.i;
        break;
      case ValueType::kDouble:
        ok = std::fabs(w.d - got.d) <= want.tolerance;
        break;
      case ValueType::kString:
        ok = want.text == got.s;
        break;
      default:
        break;
    }
  }
  if (ok) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "expected " << (w.type == ValueType::kString ? "string \"" + want.text + "\"" : Describe(w))
         << " (tolerance " << want.tolerance << "), got " << Describe(got);
}

template <typename Agg>
std::vector<typename Agg::Input> MakeInputs(const std::vector<Item>& items, AggContext& ctx) {
  std::vector<typename Agg::Input> inputs(items.size());
  for (size_t k = 0; k < items.size(); ++k) {
    EXPECT_TRUE(Agg::MakeInput(items[k].ToValue(), ctx, &inputs[k]))
        << "item " << k << ": " << Describe(items[k].ToValue());
  }
  return inputs;
}

template <typename Agg>
typename Agg::State SinglePass(const std::vector<Item>& items, const std::vector<typename Agg::Input>& inputs,
                               const AggContext& ctx) {
  typename Agg::State s{};
  for (size_t k = 0; k < items.size(); ++k) Agg::Add(s, inputs[k], items[k].time_ms, items[k].seq, ctx);
  return s;
}

// Splits the items into 2..8 partials (contiguous runs or a random assignment; some may be empty),
// adds each partial's items in input order, then merges the partials pairwise in a random tree.
template <typename Agg>
typename Agg::State SplitAndMerge(const std::vector<Item>& items,
                                  const std::vector<typename Agg::Input>& inputs, const AggContext& ctx,
                                  std::mt19937_64& rng) {
  const size_t parts = std::uniform_int_distribution<size_t>(2, 8)(rng);
  std::vector<size_t> owner(items.size());
  if (rng() % 2 == 0) {
    std::vector<size_t> cuts;
    for (size_t p = 1; p < parts; ++p) cuts.push_back(items.empty() ? 0 : rng() % (items.size() + 1));
    std::sort(cuts.begin(), cuts.end());
    for (size_t k = 0; k < items.size(); ++k) {
      owner[k] = static_cast<size_t>(std::upper_bound(cuts.begin(), cuts.end(), k) - cuts.begin());
    }
  } else {
    for (size_t& o : owner) o = rng() % parts;
  }
  std::vector<typename Agg::State> partials(parts);
  for (size_t k = 0; k < items.size(); ++k)
    Agg::Add(partials[owner[k]], inputs[k], items[k].time_ms, items[k].seq, ctx);
  while (partials.size() > 1) {
    const size_t a = rng() % partials.size();
    size_t b = rng() % (partials.size() - 1);
    if (b >= a) ++b;
    Agg::Merge(partials[a], partials[b], ctx);  // Merge b into a, in either direction of the order.
    partials.erase(partials.begin() + static_cast<ptrdiff_t>(b));
  }
  return partials[0];
}

// The three-way property: single pass == several random merges == brute force. `ctx` lives across the
// calls, as a feature's context does.
template <typename Agg, typename Ref>
void CheckAgreement(const std::vector<Item>& items, Ref reference, std::mt19937_64& rng, AggContext& ctx,
                    const std::string& label) {
  SCOPED_TRACE(label + ", " + std::to_string(items.size()) + " items");
  const std::vector<typename Agg::Input> inputs = MakeInputs<Agg>(items, ctx);
  Expected want = reference(items);
  Expected want_single = want;
  const typename Agg::State single = SinglePass<Agg>(items, inputs, ctx);
  const Value first = Agg::Finalize(single, ctx);
  EXPECT_TRUE(Matches(want_single, first)) << "single pass";
  EXPECT_TRUE(Matches(want_single, Agg::Finalize(single, ctx))) << "single pass, finalized a second time";
  for (int round = 0; round < 4; ++round) {
    const typename Agg::State merged = SplitAndMerge<Agg>(items, inputs, ctx, rng);
    EXPECT_TRUE(Matches(want, Agg::Finalize(merged, ctx))) << "merged partials, round " << round;
  }
}

// ---------------------------------------------------------------------------------------------------
// Random inputs.
// ---------------------------------------------------------------------------------------------------

// Numbers: small ints (many equal), integral doubles equal to some of them (1 vs 1.0), fractions, and
// values of widely different magnitudes. `big_ints` adds integers near the int64 limits.
Item RandomNumber(std::mt19937_64& rng, bool big_ints) {
  switch (rng() % (big_ints ? 6 : 5)) {
    case 0:
    case 1:
      return IntItem(static_cast<int64_t>(rng() % 21) - 10);
    case 2:
      return DoubleItem(static_cast<double>(static_cast<int64_t>(rng() % 21) - 10));  // Integral double.
    case 3:
      return DoubleItem(std::uniform_real_distribution<double>(-1000, 1000)(rng));
    case 4:
      return IntItem(static_cast<int64_t>(rng() % 2000001) - 1000000);
    default: {
      const int64_t offset = static_cast<int64_t>(rng() % 1000);
      return rng() % 2 ? IntItem(kInt64Max - offset) : IntItem(kInt64Min + offset);
    }
  }
}

Item RandomScalar(std::mt19937_64& rng) {
  static const char* const kWords[] = {"a", "b", "apple", "", "1", "true", "A", "a "};
  switch (rng() % 6) {
    case 0:
      return BoolItem(rng() % 2 == 0);
    case 1:
      return StringItem(kWords[rng() % 8]);
    case 2:
      return IntItem(static_cast<int64_t>(rng() % 7) - 3);
    case 3:
      return DoubleItem(static_cast<double>(static_cast<int64_t>(rng() % 7) - 3));  // Equals an int.
    case 4:
      return DoubleItem(static_cast<double>(rng() % 5) + 0.5);
    default:
      return RandomNumber(rng, true);
  }
}

// Times with many ties (for `last`), in input order or shuffled.
void AssignTimes(std::vector<Item>& items, std::mt19937_64& rng) {
  const int64_t spread = static_cast<int64_t>(rng() % 5) + 1;
  for (size_t k = 0; k < items.size(); ++k) {
    items[k].seq = k;
    items[k].time_ms = 1000 + static_cast<int64_t>(rng() % static_cast<uint64_t>(spread * 3)) - spread;
  }
}

size_t RandomSize(std::mt19937_64& rng) {
  switch (rng() % 4) {
    case 0:
      return rng() % 4;  // 0..3: empty and tiny.
    case 1:
      return rng() % 20;
    case 2:
      return rng() % 200;
    default:
      return rng() % 1000;
  }
}

std::vector<Item> RandomNumbers(std::mt19937_64& rng, bool big_ints) {
  std::vector<Item> items(RandomSize(rng));
  for (Item& it : items) it = RandomNumber(rng, big_ints);
  AssignTimes(items, rng);
  return items;
}

std::vector<Item> RandomInts(std::mt19937_64& rng) {
  std::vector<Item> items(RandomSize(rng));
  for (Item& it : items) {
    it = RandomNumber(rng, true);
    if (it.type == ValueType::kDouble) it = IntItem(static_cast<int64_t>(rng() % 2001) - 1000);
  }
  AssignTimes(items, rng);
  return items;
}

std::vector<Item> RandomScalars(std::mt19937_64& rng) {
  std::vector<Item> items(RandomSize(rng));
  for (Item& it : items) it = RandomScalar(rng);
  AssignTimes(items, rng);
  return items;
}

constexpr int kRounds = 300;

// ---------------------------------------------------------------------------------------------------
// The property tests.
// ---------------------------------------------------------------------------------------------------

TEST(AggregationsTest, CountAgreesWithBruteForce) {
  std::mt19937_64 rng(101);
  for (int r = 0; r < kRounds; ++r) {
    AggContext ctx;
    CheckAgreement<CountAgg>(RandomScalars(rng), RefCount, rng, ctx, "count round " + std::to_string(r));
  }
}

TEST(AggregationsTest, SumOfIntegersIsExactAndAgreesWithBruteForce) {
  std::mt19937_64 rng(102);
  for (int r = 0; r < kRounds; ++r) {
    AggContext ctx;
    CheckAgreement<SumAgg>(RandomInts(rng), RefSum, rng, ctx, "sum(ints) round " + std::to_string(r));
  }
}

TEST(AggregationsTest, SumOfMixedNumbersAgreesWithBruteForce) {
  std::mt19937_64 rng(103);
  for (int r = 0; r < kRounds; ++r) {
    AggContext ctx;
    CheckAgreement<SumAgg>(RandomNumbers(rng, r % 2 == 0), RefSum, rng, ctx,
                           "sum(mixed) round " + std::to_string(r));
  }
}

TEST(AggregationsTest, MeanAgreesWithBruteForce) {
  std::mt19937_64 rng(104);
  for (int r = 0; r < kRounds; ++r) {
    AggContext ctx;
    CheckAgreement<MeanAgg>(RandomNumbers(rng, r % 2 == 0), RefMean, rng, ctx,
                            "mean round " + std::to_string(r));
  }
}

TEST(AggregationsTest, MinAgreesWithBruteForce) {
  std::mt19937_64 rng(105);
  for (int r = 0; r < kRounds; ++r) {
    AggContext ctx;
    CheckAgreement<MinAgg>(RandomNumbers(rng, r % 2 == 0), RefExtreme<true>, rng, ctx,
                           "min round " + std::to_string(r));
  }
}

TEST(AggregationsTest, MaxAgreesWithBruteForce) {
  std::mt19937_64 rng(106);
  for (int r = 0; r < kRounds; ++r) {
    AggContext ctx;
    CheckAgreement<MaxAgg>(RandomNumbers(rng, r % 2 == 0), RefExtreme<false>, rng, ctx,
                           "max round " + std::to_string(r));
  }
}

TEST(AggregationsTest, StddevAgreesWithBruteForce) {
  std::mt19937_64 rng(107);
  for (int r = 0; r < kRounds; ++r) {
    AggContext ctx;
    CheckAgreement<StddevAgg>(RandomNumbers(rng, r % 2 == 0), RefStddev, rng, ctx,
                              "stddev round " + std::to_string(r));
  }
}

TEST(AggregationsTest, LastAgreesWithBruteForce) {
  std::mt19937_64 rng(108);
  for (int r = 0; r < kRounds; ++r) {
    AggContext ctx;
    std::vector<Item> items = RandomScalars(rng);
    CheckAgreement<LastAgg>(items, RefLast, rng, ctx, "last round " + std::to_string(r));
  }
}

TEST(AggregationsTest, CountDistinctAgreesWithBruteForce) {
  std::mt19937_64 rng(109);
  AggContext ctx;  // Shared across rounds, as one feature's string pool is shared by all its states.
  for (int r = 0; r < kRounds; ++r) {
    CheckAgreement<CountDistinctAgg>(RandomScalars(rng), RefCountDistinct, rng, ctx,
                                     "count_distinct round " + std::to_string(r));
  }
}

TEST(AggregationsTest, ApproxCountDistinctIsExactWhileSparse) {
  // At or below 2^p / 32 distinct values the sketch is exact, so it must match the exact brute force.
  std::mt19937_64 rng(110);
  for (int r = 0; r < kRounds; ++r) {
    AggContext ctx;
    ctx.precision = 14;  // Sparse up to 512 distinct values; RandomScalars has far fewer.
    CheckAgreement<ApproxCountDistinctAgg>(RandomScalars(rng), RefCountDistinct, rng, ctx,
                                           "approx_count_distinct round " + std::to_string(r));
  }
}

TEST(AggregationsTest, ApproxCountDistinctMergedEqualsSinglePassWhenDense) {
  // Dense sketches merge register by register, so merged partials must give exactly the single-pass
  // estimate; and the estimate must be within 4 standard errors of the true count.
  std::mt19937_64 rng(111);
  for (int precision : {4, 8, 12}) {
    for (int r = 0; r < 20; ++r) {
      AggContext ctx;
      ctx.precision = precision;
      // The exact count is known by construction (an O(n^2) brute force would be slow at this size):
      // k is a string for k % 3 == 0, else the int k; k.0 is a new value next to a string, the same
      // value next to the int k.
      std::vector<Item> items;
      const int n = 1 + static_cast<int>(rng() % 3000);
      int64_t exact = 0;
      for (int k = 0; k < n; ++k) {
        items.push_back(k % 3 == 0 ? StringItem("user-" + std::to_string(k)) : IntItem(k));
        ++exact;
        if (rng() % 4 == 0) {
          items.push_back(DoubleItem(static_cast<double>(k)));
          if (k % 3 == 0) ++exact;
        }
      }
      std::shuffle(items.begin(), items.end(), rng);
      AssignTimes(items, rng);
      const std::vector<ApproxCountDistinctAgg::Input> inputs =
          MakeInputs<ApproxCountDistinctAgg>(items, ctx);
      const Value single =
          ApproxCountDistinctAgg::Finalize(SinglePass<ApproxCountDistinctAgg>(items, inputs, ctx), ctx);
      ASSERT_EQ(single.type, ValueType::kInt);
      const double bound = 4 * 1.04 / std::sqrt(std::ldexp(1.0, precision)) * static_cast<double>(exact);
      EXPECT_LE(std::fabs(static_cast<double>(single.i - exact)), bound)
          << "p=" << precision << " exact " << exact << " estimate " << single.i;
      for (int round = 0; round < 3; ++round) {
        const Value merged = ApproxCountDistinctAgg::Finalize(
            SplitAndMerge<ApproxCountDistinctAgg>(items, inputs, ctx, rng), ctx);
        EXPECT_EQ(merged.i, single.i) << "p=" << precision << " distinct " << exact;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Hand-written cases.
// ---------------------------------------------------------------------------------------------------

template <typename Agg>
Value Run(const std::vector<Item>& items, AggContext& ctx) {
  std::vector<Item> timed = items;
  for (size_t k = 0; k < timed.size(); ++k) timed[k].seq = k;
  const std::vector<typename Agg::Input> inputs = MakeInputs<Agg>(timed, ctx);
  typename Agg::State s{};
  for (size_t k = 0; k < timed.size(); ++k) Agg::Add(s, inputs[k], timed[k].time_ms, timed[k].seq, ctx);
  return Agg::Finalize(s, ctx);
}

template <typename Agg>
Value RunFresh(const std::vector<Item>& items) {
  AggContext ctx;
  return Run<Agg>(items, ctx);
}

TEST(AggregationsTest, EmptyStateValues) {
  AggContext ctx;
  EXPECT_TRUE(Matches({Value::Int(0)}, CountAgg::Finalize(CountAgg::State{}, ctx)));
  EXPECT_TRUE(Matches({Value::Int(0)}, SumAgg::Finalize(SumAgg::State{}, ctx)));
  EXPECT_TRUE(Matches({Value::Null()}, MeanAgg::Finalize(MeanAgg::State{}, ctx)));
  EXPECT_TRUE(Matches({Value::Null()}, MinAgg::Finalize(MinAgg::State{}, ctx)));
  EXPECT_TRUE(Matches({Value::Null()}, MaxAgg::Finalize(MaxAgg::State{}, ctx)));
  EXPECT_TRUE(Matches({Value::Null()}, StddevAgg::Finalize(StddevAgg::State{}, ctx)));
  EXPECT_TRUE(Matches({Value::Null()}, LastAgg::Finalize(LastAgg::State{}, ctx)));
  EXPECT_TRUE(Matches({Value::Int(0)}, CountDistinctAgg::Finalize(CountDistinctAgg::State{}, ctx)));
  EXPECT_TRUE(
      Matches({Value::Int(0)}, ApproxCountDistinctAgg::Finalize(ApproxCountDistinctAgg::State{}, ctx)));
}

TEST(AggregationsTest, MergingEmptyStatesKeepsEmptyValues) {
  AggContext ctx;
  MeanAgg::State mean{};
  MeanAgg::Merge(mean, MeanAgg::State{}, ctx);
  EXPECT_TRUE(Matches({Value::Null()}, MeanAgg::Finalize(mean, ctx)));
  StddevAgg::State stddev{};
  StddevAgg::Merge(stddev, StddevAgg::State{}, ctx);
  EXPECT_TRUE(Matches({Value::Null()}, StddevAgg::Finalize(stddev, ctx)));
  LastAgg::State last{};
  LastAgg::Merge(last, LastAgg::State{}, ctx);
  EXPECT_TRUE(Matches({Value::Null()}, LastAgg::Finalize(last, ctx)));
  MinAgg::State min{};
  MinAgg::Merge(min, MinAgg::State{}, ctx);
  EXPECT_TRUE(Matches({Value::Null()}, MinAgg::Finalize(min, ctx)));
  ApproxCountDistinctAgg::State approx{};
  ApproxCountDistinctAgg::Merge(approx, ApproxCountDistinctAgg::State{}, ctx);
  EXPECT_TRUE(Matches({Value::Int(0)}, ApproxCountDistinctAgg::Finalize(approx, ctx)));
  EXPECT_EQ(ApproxCountDistinctAgg::MemoryBytes(approx), 0u);
}

template <typename Agg>
void ExpectRejects(const Value& v, const char* what) {
  AggContext ctx;
  typename Agg::Input input{};
  EXPECT_FALSE(Agg::MakeInput(v, ctx, &input)) << what;
}

template <typename Agg>
void ExpectAccepts(const Value& v, const char* what) {
  AggContext ctx;
  typename Agg::Input input{};
  EXPECT_TRUE(Agg::MakeInput(v, ctx, &input)) << what;
}

template <typename Agg>
void ExpectNumericOnly() {
  ExpectRejects<Agg>(Value::Bool(true), "bool");
  ExpectRejects<Agg>(Value::String("1"), "string");
  ExpectRejects<Agg>(Value::Null(), "null");
  ExpectRejects<Agg>(Value::Missing(), "missing");
  ExpectRejects<Agg>(Value::Composite(), "composite");
  ExpectAccepts<Agg>(Value::Int(1), "int");
  ExpectAccepts<Agg>(Value::Double(1.5), "double");
}

template <typename Agg>
void ExpectScalarOnly() {
  ExpectRejects<Agg>(Value::Null(), "null");
  ExpectRejects<Agg>(Value::Missing(), "missing");
  ExpectRejects<Agg>(Value::Composite(), "composite");
  ExpectAccepts<Agg>(Value::Bool(false), "bool");
  ExpectAccepts<Agg>(Value::String(""), "empty string");
  ExpectAccepts<Agg>(Value::Int(-3), "int");
  ExpectAccepts<Agg>(Value::Double(2.5), "double");
}

TEST(AggregationsTest, MakeInputRejectsWrongTypes) {
  {
    SCOPED_TRACE("sum");
    ExpectNumericOnly<SumAgg>();
  }
  {
    SCOPED_TRACE("mean");
    ExpectNumericOnly<MeanAgg>();
  }
  {
    SCOPED_TRACE("min");
    ExpectNumericOnly<MinAgg>();
  }
  {
    SCOPED_TRACE("max");
    ExpectNumericOnly<MaxAgg>();
  }
  {
    SCOPED_TRACE("stddev");
    ExpectNumericOnly<StddevAgg>();
  }
  {
    SCOPED_TRACE("last");
    ExpectScalarOnly<LastAgg>();
  }
  {
    SCOPED_TRACE("count_distinct");
    ExpectScalarOnly<CountDistinctAgg>();
  }
  {
    SCOPED_TRACE("approx_count_distinct");
    ExpectScalarOnly<ApproxCountDistinctAgg>();
  }
}

TEST(AggregationsTest, SumStaysExactIntegerWhenTheTotalFits) {
  // INT64_MAX + 1 - 1: the running total leaves int64 and comes back; the answer is the exact integer.
  EXPECT_TRUE(
      Matches({Value::Int(kInt64Max)}, RunFresh<SumAgg>({IntItem(kInt64Max), IntItem(1), IntItem(-1)})));
  EXPECT_TRUE(
      Matches({Value::Int(kInt64Min)}, RunFresh<SumAgg>({IntItem(kInt64Min), IntItem(-1), IntItem(1)})));
  EXPECT_TRUE(Matches({Value::Int(-2)}, RunFresh<SumAgg>({IntItem(kInt64Max), IntItem(kInt64Max),
                                                          IntItem(kInt64Min), IntItem(kInt64Min)})));
  EXPECT_TRUE(Matches({Value::Int(kInt64Max)}, RunFresh<SumAgg>({IntItem(kInt64Max - 5), IntItem(5)})));
  // 2^53 + 1 is not a double: an exact integer sum must not go through doubles.
  EXPECT_TRUE(
      Matches({Value::Int(9007199254740993)}, RunFresh<SumAgg>({IntItem(9007199254740992), IntItem(1)})));
}

TEST(AggregationsTest, SumBecomesDoubleWhenTheTotalOverflowsOrAnInputIsDouble) {
  EXPECT_TRUE(
      Matches({Value::Double(9223372036854775808.0)}, RunFresh<SumAgg>({IntItem(kInt64Max), IntItem(1)})));
  EXPECT_TRUE(
      Matches({Value::Double(-9223372036854775809.0)}, RunFresh<SumAgg>({IntItem(kInt64Min), IntItem(-1)})));
  EXPECT_TRUE(Matches({Value::Double(1.8446744073709552e19)},
                      RunFresh<SumAgg>({IntItem(kInt64Max), IntItem(kInt64Max), IntItem(2)})));
  EXPECT_TRUE(Matches({Value::Double(3.0)}, RunFresh<SumAgg>({IntItem(1), DoubleItem(2.0)})));
  EXPECT_TRUE(Matches({Value::Double(0.0)}, RunFresh<SumAgg>({DoubleItem(0.0)})));
  EXPECT_TRUE(Matches({Value::Double(0.5)}, RunFresh<SumAgg>({IntItem(2), DoubleItem(-1.5)})));
}

TEST(AggregationsTest, SumMergeOfPartialsThatEachOverflow) {
  // Each partial alone overflows int64; together they fit, so the merged sum is the exact integer.
  AggContext ctx;
  SumAgg::State a{}, b{};
  SumAgg::Add(a, Numeric::Int(kInt64Max), 0, 0, ctx);
  SumAgg::Add(a, Numeric::Int(kInt64Max), 0, 1, ctx);
  SumAgg::Add(b, Numeric::Int(kInt64Min), 0, 2, ctx);
  SumAgg::Add(b, Numeric::Int(kInt64Min), 0, 3, ctx);
  EXPECT_EQ(SumAgg::Finalize(a, ctx).type, ValueType::kDouble);
  SumAgg::Merge(a, b, ctx);
  EXPECT_TRUE(Matches({Value::Int(-2)}, SumAgg::Finalize(a, ctx)));
}

TEST(AggregationsTest, MeanOfLargeIntegersDoesNotOverflow) {
  EXPECT_TRUE(Matches({Value::Double(9223372036854775806.0), 1e4},
                      RunFresh<MeanAgg>({IntItem(kInt64Max), IntItem(kInt64Max - 2)})));
  EXPECT_TRUE(Matches({Value::Double(2.5)}, RunFresh<MeanAgg>({IntItem(2), DoubleItem(3.0)})));
  EXPECT_TRUE(Matches({Value::Double(-0.5)}, RunFresh<MeanAgg>({IntItem(kInt64Min), IntItem(kInt64Max)})));
}

TEST(AggregationsTest, MinMaxCompareByValueAndKeepTheWinnersType) {
  EXPECT_TRUE(Matches({Value::Double(-0.5)}, RunFresh<MinAgg>({IntItem(0), DoubleItem(-0.5), IntItem(3)})));
  EXPECT_TRUE(Matches({Value::Int(3)}, RunFresh<MaxAgg>({IntItem(0), DoubleItem(2.5), IntItem(3)})));
  // int64 vs double near 2^63: INT64_MAX is below 2^63, and INT64_MAX - 1 is below INT64_MAX, although
  // all three are the same double.
  EXPECT_TRUE(Matches(
      {Value::Double(9223372036854775808.0)},
      RunFresh<MaxAgg>({IntItem(kInt64Max), DoubleItem(9223372036854775808.0), IntItem(kInt64Max - 1)})));
  EXPECT_TRUE(Matches(
      {Value::Int(kInt64Max - 1)},
      RunFresh<MinAgg>({IntItem(kInt64Max), DoubleItem(9223372036854775808.0), IntItem(kInt64Max - 1)})));
  EXPECT_TRUE(
      Matches({Value::Int(kInt64Max)}, RunFresh<MaxAgg>({IntItem(kInt64Max - 1), IntItem(kInt64Max)})));
  EXPECT_TRUE(
      Matches({Value::Int(kInt64Min)}, RunFresh<MinAgg>({IntItem(kInt64Min + 1), IntItem(kInt64Min)})));
  // A tie between 1 and 1.0: the integer wins, in either order of arrival (the contract).
  EXPECT_TRUE(Matches({Value::Int(1)}, RunFresh<MinAgg>({IntItem(1), DoubleItem(1.0), IntItem(2)})));
  EXPECT_TRUE(Matches({Value::Int(1)}, RunFresh<MinAgg>({DoubleItem(1.0), IntItem(1), IntItem(2)})));
  EXPECT_TRUE(Matches({Value::Int(2)}, RunFresh<MaxAgg>({DoubleItem(2.0), IntItem(2), IntItem(1)})));
  EXPECT_TRUE(Matches({Value::Double(2.0)}, RunFresh<MaxAgg>({DoubleItem(2.0), DoubleItem(2.0), IntItem(1)})));
}

TEST(AggregationsTest, StddevIsPopulationStddev) {
  // Population: {2, 4, 4, 4, 5, 5, 7, 9} has mean 5 and stddev exactly 2.
  EXPECT_TRUE(Matches({Value::Double(2.0), 1e-12},
                      RunFresh<StddevAgg>({IntItem(2), IntItem(4), DoubleItem(4.0), IntItem(4), IntItem(5),
                                           IntItem(5), DoubleItem(7.0), IntItem(9)})));
  EXPECT_TRUE(Matches({Value::Double(0.0)}, RunFresh<StddevAgg>({IntItem(42)})));
  EXPECT_TRUE(Matches({Value::Double(0.0)},
                      RunFresh<StddevAgg>({DoubleItem(1e15), DoubleItem(1e15), IntItem(1000000000000000)})));
}

TEST(AggregationsTest, LastBreaksTimeTiesByInputOrder) {
  std::vector<Item> items = {StringItem("first"), StringItem("second"), IntItem(7), StringItem("older")};
  items[0].time_ms = 10;
  items[1].time_ms = 10;
  items[2].time_ms = 5;
  items[3].time_ms = 9;
  EXPECT_TRUE(Matches(StringExpected("second"), RunFresh<LastAgg>(items)));
  // A later event wins whatever the input order.
  items.push_back(BoolItem(false));
  items.back().time_ms = 11;
  items.push_back(DoubleItem(1.0));
  items.back().time_ms = 3;
  EXPECT_TRUE(Matches({Value::Bool(false)}, RunFresh<LastAgg>(items)));
  // 1.0 stays a double.
  std::vector<Item> one = {IntItem(1), DoubleItem(1.0)};
  EXPECT_TRUE(Matches({Value::Double(1.0)}, RunFresh<LastAgg>(one)));
}

TEST(AggregationsTest, CountDistinctNormalizesNumbers) {
  // 1 and 1.0 are one value; 0 and -0.0 too; true is not 1; the string "1" is not 1.
  EXPECT_TRUE(
      Matches({Value::Int(1)}, RunFresh<CountDistinctAgg>({IntItem(1), DoubleItem(1.0), IntItem(1)})));
  EXPECT_TRUE(
      Matches({Value::Int(1)}, RunFresh<CountDistinctAgg>({IntItem(0), DoubleItem(-0.0), DoubleItem(0.0)})));
  EXPECT_TRUE(Matches({Value::Int(4)}, RunFresh<CountDistinctAgg>(
                                           {IntItem(1), BoolItem(true), StringItem("1"), DoubleItem(1.5)})));
  EXPECT_TRUE(Matches({Value::Int(2)},
                      RunFresh<CountDistinctAgg>({BoolItem(true), BoolItem(false), BoolItem(true)})));
  // Near 2^63 and 2^53, equal doubles are not equal integers.
  EXPECT_TRUE(Matches({Value::Int(2)},
                      RunFresh<CountDistinctAgg>({IntItem(kInt64Max), DoubleItem(9223372036854775808.0)})));
  EXPECT_TRUE(Matches({Value::Int(1)},
                      RunFresh<CountDistinctAgg>({IntItem(kInt64Min), DoubleItem(-9223372036854775808.0)})));
  EXPECT_TRUE(Matches({Value::Int(2)}, RunFresh<CountDistinctAgg>(
                                           {IntItem(9007199254740993), DoubleItem(9007199254740992.0)})));
  // Strings by text, not by identity.
  std::string a1 = "abc", a2 = "ab";
  a2 += "c";
  EXPECT_TRUE(Matches({Value::Int(2)},
                      RunFresh<CountDistinctAgg>({StringItem(a1), StringItem(a2), StringItem("abd")})));
}

TEST(AggregationsTest, ApproxCountDistinctNormalizesLikeCountDistinct) {
  EXPECT_TRUE(
      Matches({Value::Int(1)}, RunFresh<ApproxCountDistinctAgg>({IntItem(1), DoubleItem(1.0), IntItem(1)})));
  EXPECT_TRUE(Matches({Value::Int(1)}, RunFresh<ApproxCountDistinctAgg>({IntItem(0), DoubleItem(-0.0)})));
  EXPECT_TRUE(Matches({Value::Int(4)}, RunFresh<ApproxCountDistinctAgg>(
                                           {IntItem(1), BoolItem(true), StringItem("1"), DoubleItem(1.5)})));
}

TEST(AggregationsTest, ApproxCountDistinctHashesTextNotPoolIds) {
  // Two features (two contexts) intern the same strings in different orders; their sketches must agree
  // on what a string is, so that states built in different contexts describe the same values.
  AggContext first, second;
  ApproxCountDistinctAgg::Input x1, x2, y;
  ASSERT_TRUE(ApproxCountDistinctAgg::MakeInput(Value::String("x"), first, &x1));
  ASSERT_TRUE(ApproxCountDistinctAgg::MakeInput(Value::String("y"), second, &y));
  ASSERT_TRUE(ApproxCountDistinctAgg::MakeInput(Value::String("x"), second, &x2));
  EXPECT_EQ(x1, x2);
  EXPECT_NE(x1, y);
}

TEST(AggregationsTest, ApproxCountDistinctStaysSmallForAFewValues) {
  AggContext ctx;
  ctx.precision = 14;
  ApproxCountDistinctAgg::State s{};
  for (int k = 0; k < 5; ++k) {
    ApproxCountDistinctAgg::Input x;
    ASSERT_TRUE(ApproxCountDistinctAgg::MakeInput(Value::Int(k), ctx, &x));
    ApproxCountDistinctAgg::Add(s, x, 0, static_cast<uint64_t>(k), ctx);
  }
  EXPECT_TRUE(Matches({Value::Int(5)}, ApproxCountDistinctAgg::Finalize(s, ctx)));
  EXPECT_LE(ApproxCountDistinctAgg::MemoryBytes(s), 128u);
}

TEST(AggregationsTest, FinalizeDoesNotChangeTheState) {
  // Finalize, add more, finalize again: the result must account for every input exactly once.
  AggContext ctx;
  std::mt19937_64 rng(112);
  std::vector<Item> items(200);
  for (Item& it : items) it = RandomNumber(rng, false);
  AssignTimes(items, rng);
  const std::vector<SumAgg::Input> sums = MakeInputs<SumAgg>(items, ctx);
  const std::vector<StddevAgg::Input> devs = MakeInputs<StddevAgg>(items, ctx);
  SumAgg::State sum{};
  StddevAgg::State dev{};
  MinAgg::State min{};
  LastAgg::State last{};
  std::vector<Item> so_far;
  for (size_t k = 0; k < items.size(); ++k) {
    SumAgg::Add(sum, sums[k], items[k].time_ms, items[k].seq, ctx);
    StddevAgg::Add(dev, devs[k], items[k].time_ms, items[k].seq, ctx);
    MinAgg::Add(min, sums[k], items[k].time_ms, items[k].seq, ctx);
    LastAgg::Input li;
    ASSERT_TRUE(LastAgg::MakeInput(items[k].ToValue(), ctx, &li));
    LastAgg::Add(last, li, items[k].time_ms, items[k].seq, ctx);
    so_far.push_back(items[k]);
    for (int twice = 0; twice < 2; ++twice) {
      ASSERT_TRUE(Matches(RefSum(so_far), SumAgg::Finalize(sum, ctx))) << "after " << k + 1;
      ASSERT_TRUE(Matches(RefStddev(so_far), StddevAgg::Finalize(dev, ctx))) << "after " << k + 1;
      ASSERT_TRUE(Matches(RefExtreme<true>(so_far), MinAgg::Finalize(min, ctx))) << "after " << k + 1;
      ASSERT_TRUE(Matches(RefLast(so_far), LastAgg::Finalize(last, ctx))) << "after " << k + 1;
    }
  }
}

}  // namespace
}  // namespace freshet

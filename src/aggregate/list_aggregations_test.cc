#include "aggregate/list_aggregations.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "serve/json.h"

namespace freshet {
namespace {

// One event: its value (ints, integral doubles equal to them, other doubles, strings, booleans), time and order.
struct Item {
  Value value;
  std::string text;  // Owns a string value's bytes.
  int64_t time_ms = 0;
  uint64_t seq = 0;
};

std::vector<Item> RandomItems(std::mt19937_64& rng, size_t n, uint64_t distinct, double skew_p = 0.05) {
  static const char* const kWords[] = {"a", "b", "a,b", "", "1", "true", "\"q\"", "z"};
  std::vector<Item> items(n);
  // A skewed draw: low numbers far more often, so that heavy values stand out of a long tail.
  std::geometric_distribution<uint64_t> skew(skew_p);
  for (size_t k = 0; k < n; ++k) {
    Item& it = items[k];
    const uint64_t x = std::min<uint64_t>(skew(rng), distinct - 1);
    switch (x % 5) {
      case 0: it.value = Value::Int(static_cast<int64_t>(x)); break;
      case 1: it.value = Value::Double(static_cast<double>(x)); break;  // Equals the integer x.
      case 2: it.value = Value::Double(static_cast<double>(x) + 0.25); break;
      case 3:
        it.text = std::string(kWords[x % 8]) + std::to_string(x / 8);
        break;
      default: it.value = Value::Bool(x % 2 == 0); break;
    }
    if (x % 5 == 3) it.value = Value::String(it.text);
    it.time_ms = static_cast<int64_t>(rng() % 50);
    it.seq = k;
  }
  return items;
}

template <typename Agg>
typename Agg::State Fold(const std::vector<Item>& items, size_t begin, size_t end, AggContext& ctx) {
  typename Agg::State s;
  for (size_t k = begin; k < end; ++k) {
    typename Agg::Input x;
    EXPECT_TRUE(Agg::MakeInput(items[k].value, ctx, &x));
    Agg::Add(s, x, items[k].time_ms, items[k].seq, ctx);
  }
  return s;
}

// The items folded in random pieces and merged in a random order.
template <typename Agg>
typename Agg::State FoldInPieces(const std::vector<Item>& items, std::mt19937_64& rng, AggContext& ctx) {
  std::vector<typename Agg::State> pieces;
  for (size_t begin = 0; begin < items.size();) {
    const size_t end = std::min(items.size(), begin + 1 + rng() % 40);
    pieces.push_back(Fold<Agg>(items, begin, end, ctx));
    begin = end;
  }
  std::shuffle(pieces.begin(), pieces.end(), rng);
  typename Agg::State out;
  for (const auto& p : pieces) Agg::Merge(out, p, ctx);
  return out;
}

template <typename Agg>
typename Agg::State RoundTrip(const typename Agg::State& s, AggContext& from) {
  std::string bytes;
  ByteWriter w(&bytes);
  Agg::Serialize(s, w, from);
  AggContext other;  // Another process: its string pool numbers strings differently.
  other.k = from.k;
  other.strings.Intern("unrelated");
  typename Agg::State out;
  ByteReader r(bytes);
  EXPECT_TRUE(Agg::Deserialize(out, r, other));
  EXPECT_TRUE(r.at_end());
  // Back into `from`'s pool, so that the caller compares in one context.
  std::string again;
  ByteWriter w2(&again);
  Agg::Serialize(out, w2, other);
  typename Agg::State back;
  ByteReader r2(again);
  EXPECT_TRUE(Agg::Deserialize(back, r2, from));
  return back;
}

// count_distinct's notion of one value: 1 and 1.0 are one.
std::string KeyOf(const Value& v) {
  std::string out;
  EXPECT_TRUE(AppendTupleKey(v, &out));
  return out;
}

// The exact top k: (value, count) by count descending, ties booleans, numbers, strings.
std::string BruteTopK(const std::vector<Item>& items, int k, std::map<std::string, int64_t>* counts_out) {
  std::map<std::string, std::pair<Value, int64_t>> counts;
  for (const Item& it : items) {
    auto [at, inserted] = counts.try_emplace(KeyOf(it.value), it.value, 0);
    if (it.value.type == ValueType::kDouble && it.value.d == static_cast<double>(static_cast<int64_t>(it.value.d))) {
      at->second.first = Value::Int(static_cast<int64_t>(it.value.d));
    }
    ++at->second.second;
  }
  std::vector<std::pair<Value, int64_t>> ranked;
  for (auto& [key, vc] : counts) {
    ranked.push_back(vc);
    if (counts_out != nullptr) (*counts_out)[key] = vc.second;
  }
  auto group = [](const Value& v) { return v.type == ValueType::kBool ? 0 : v.type == ValueType::kString ? 2 : 1; };
  std::sort(ranked.begin(), ranked.end(), [&](const auto& a, const auto& b) {
    if (a.second != b.second) return a.second > b.second;
    if (group(a.first) != group(b.first)) return group(a.first) < group(b.first);
    if (a.first.type == ValueType::kBool) return a.first.b < b.first.b;
    if (a.first.type == ValueType::kString) return a.first.s < b.first.s;
    return a.first.as_double() < b.first.as_double();
  });
  std::string text;
  JsonWriter json(&text);
  json.BeginArray();
  for (size_t i = 0; i < ranked.size() && i < static_cast<size_t>(k); ++i) {
    json.BeginObject().Key("value").FeatureValue(ranked[i].first).Key("count").Int(ranked[i].second).EndObject();
  }
  json.EndArray();
  return text;
}

std::string BruteLastK(std::vector<Item> items, int k) {
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return a.time_ms != b.time_ms ? a.time_ms > b.time_ms : a.seq > b.seq;
  });
  std::string text;
  JsonWriter json(&text);
  json.BeginArray();
  for (size_t i = 0; i < items.size() && i < static_cast<size_t>(k); ++i) json.FeatureValue(items[i].value);
  json.EndArray();
  return text;
}

std::string Text(const Value& v) { return std::string(v.s); }

TEST(LastKAggTest, SinglePassMergedAndReloadedEqualTheBruteForce) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 200; ++round) {
    AggContext ctx;
    ctx.k = 1 + static_cast<int>(rng() % 6);
    const std::vector<Item> items = RandomItems(rng, rng() % 60, 40);
    const std::string expected = BruteLastK(items, ctx.k);
    const LastKAgg::State single = Fold<LastKAgg>(items, 0, items.size(), ctx);
    ASSERT_EQ(Text(LastKAgg::Finalize(single, ctx)), expected) << "round " << round;
    ASSERT_EQ(Text(LastKAgg::Finalize(FoldInPieces<LastKAgg>(items, rng, ctx), ctx)), expected) << "round " << round;
    ASSERT_EQ(Text(LastKAgg::Finalize(RoundTrip<LastKAgg>(single, ctx), ctx)), expected) << "round " << round;
  }
  AggContext ctx;
  EXPECT_EQ(Text(LastKAgg::Finalize(LastKAgg::State{}, ctx)), "[]");
}

TEST(TopKAggTest, ExactWhileTheWindowHoldsAtMostCapacityDistinctValues) {
  std::mt19937_64 rng(8);
  for (int round = 0; round < 200; ++round) {
    AggContext ctx;
    ctx.k = 1 + static_cast<int>(rng() % 5);
    const std::vector<Item> items = RandomItems(rng, rng() % 400, TopKAgg::Capacity(ctx.k));
    const std::string expected = BruteTopK(items, ctx.k, nullptr);
    const TopKAgg::State single = Fold<TopKAgg>(items, 0, items.size(), ctx);
    ASSERT_EQ(Text(TopKAgg::Finalize(single, ctx)), expected) << "round " << round;
    ASSERT_EQ(Text(TopKAgg::Finalize(FoldInPieces<TopKAgg>(items, rng, ctx), ctx)), expected) << "round " << round;
    ASSERT_EQ(Text(TopKAgg::Finalize(RoundTrip<TopKAgg>(single, ctx), ctx)), expected) << "round " << round;
  }
  AggContext ctx;
  EXPECT_EQ(Text(TopKAgg::Finalize(TopKAgg::State{}, ctx)), "[]");
}

// Beyond the capacity C: every kept count c of a value with true count f among n values is within
// f - n/(C+1) <= c <= f, single pass and merged, and every value with f > n/(C+1) is kept.
TEST(TopKAggTest, BeyondCapacityCountsAreWithinTheMisraGriesBound) {
  std::mt19937_64 rng(9);
  for (int round = 0; round < 60; ++round) {
    AggContext ctx;
    ctx.k = 1 + static_cast<int>(rng() % 5);
    const std::vector<Item> items = RandomItems(rng, 500 + rng() % 3000, 1000, 0.005);
    std::map<std::string, int64_t> truth;
    BruteTopK(items, ctx.k, &truth);
    ASSERT_GT(truth.size(), TopKAgg::Capacity(ctx.k));
    const double slack = static_cast<double>(items.size()) / static_cast<double>(TopKAgg::Capacity(ctx.k) + 1);
    for (const TopKAgg::State& s : {Fold<TopKAgg>(items, 0, items.size(), ctx), FoldInPieces<TopKAgg>(items, rng, ctx)}) {
      ASSERT_LE(s.counters.size(), TopKAgg::Capacity(ctx.k));
      std::map<std::string, int64_t> kept;
      for (const TopKAgg::Counter& c : s.counters) {
        std::string key;
        const Value v = c.key.kind == 3 ? Value::String(ctx.strings.Get(static_cast<uint32_t>(c.key.bits)))
                        : c.key.kind == 0 ? Value::Bool(c.key.bits != 0)
                        : c.key.kind == 1 ? Value::Int(static_cast<int64_t>(c.key.bits))
                                          : Value::Double(std::bit_cast<double>(c.key.bits));
        kept[KeyOf(v)] = c.count;
      }
      for (const auto& [key, f] : truth) {
        const int64_t c = kept.count(key) ? kept[key] : 0;
        ASSERT_LE(c, f) << "round " << round;
        ASSERT_GE(static_cast<double>(c), static_cast<double>(f) - slack) << "round " << round;
      }
    }
  }
}

TEST(TupleKeyTest, SeparatorsInValuesDoNotCollideAndNumbersCompareByValue) {
  auto key = [](std::initializer_list<Value> values) {
    std::string out;
    for (const Value& v : values) EXPECT_TRUE(AppendTupleKey(v, &out));
    return out;
  };
  EXPECT_NE(key({Value::String("a,b"), Value::String("c")}), key({Value::String("a"), Value::String("b,c")}));
  EXPECT_NE(key({Value::String("a"), Value::String("")}), key({Value::String(""), Value::String("a")}));
  EXPECT_NE(key({Value::String("1"), Value::Int(2)}), key({Value::Int(1), Value::Int(2)}));
  EXPECT_NE(key({Value::Bool(true), Value::Int(1)}), key({Value::Int(1), Value::Int(1)}));
  EXPECT_EQ(key({Value::Int(1), Value::String("x")}), key({Value::Double(1.0), Value::String("x")}));
  std::string out;
  EXPECT_FALSE(AppendTupleKey(Value::Null(), &out));
  EXPECT_FALSE(AppendTupleKey(Value::Composite(), &out));
}

TEST(RenderedTextsTest, KeepsOneStableCopyPerTextUntilCleared) {
  RenderedTexts texts;
  std::string scratch = "[1,2]";
  const std::string_view a = texts.Keep(scratch);
  scratch = "[3]";
  const std::string_view b = texts.Keep(scratch);
  EXPECT_EQ(a, "[1,2]");
  EXPECT_EQ(b, "[3]");
  EXPECT_EQ(texts.Keep("[1,2]").data(), a.data()) << "an unchanged answer is kept once";
  texts.Clear();
  EXPECT_EQ(texts.Keep("[1,2]"), "[1,2]");
}

}  // namespace
}  // namespace freshet

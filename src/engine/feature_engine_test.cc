// Tests for FeatureEngine: the lateness rule, extraction (skips counted per feature), entities, and an
// end-to-end run of parsed JSON events through Admit / Extract / Apply / Query checked against a brute
// force written from the spec semantics (the same rules as tests/reference.py).
#include "engine/feature_engine.h"

#include <gtest/gtest.h>

#include "engine/test_specs.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "event/event_parser.h"
#include "spec/expr.h"
#include "spec/spec.h"

namespace freshet {
namespace {

constexpr int64_t kInt64Min = std::numeric_limits<int64_t>::min();

// A spec built by hand (ParseSpec is tested elsewhere): entity "user", timestamp "ts".
using test_specs::AddFeature;
using test_specs::BaseSpec;

WindowSpec LifetimeWindowSpec() {
  return {};
}
WindowSpec SlidingSpec(int64_t size_ms, int64_t slide_ms = 0) {
  WindowSpec w;
  w.kind = WindowKind::kSliding;
  w.size_ms = size_ms;
  w.slide_ms = slide_ms;
  return w;
}
WindowSpec TumblingSpec(int64_t size_ms) {
  WindowSpec w;
  w.kind = WindowKind::kTumbling;
  w.size_ms = size_ms;
  w.slide_ms = size_ms;
  return w;
}
WindowSpec SessionSpec(int64_t gap_ms) {
  WindowSpec w;
  w.kind = WindowKind::kSession;
  w.gap_ms = gap_ms;
  return w;
}

// ---------------------------------------------------------------------------------------------------
// The lateness rule.
// ---------------------------------------------------------------------------------------------------

TEST(FeatureEngineTest, LatenessRuleAtItsEdge) {
  Spec spec = BaseSpec(WatermarkSpec{100, 50});  // Delay 150.
  AddFeature(spec, "n", AggKind::kCount, "", LifetimeWindowSpec());
  FeatureEngine engine(spec);
  EXPECT_EQ(engine.low_watermark_ms(), kInt64Min);
  EXPECT_TRUE(engine.Admit(1000));  // The first event is never late.
  EXPECT_EQ(engine.low_watermark_ms(), 850);
  EXPECT_TRUE(engine.Admit(850));   // Exactly M - delay: admitted.
  EXPECT_FALSE(engine.Admit(849));  // One below: late.
  EXPECT_FALSE(engine.Admit(-5000));
  EXPECT_TRUE(engine.Admit(999));  // Out of order but on time; M stays 1000.
  EXPECT_FALSE(engine.Admit(849));
  EXPECT_EQ(engine.low_watermark_ms(), 850);
  EXPECT_TRUE(engine.Admit(2000));  // M moves to 2000.
  EXPECT_EQ(engine.low_watermark_ms(), 1850);
  EXPECT_FALSE(engine.Admit(1849));
  EXPECT_TRUE(engine.Admit(1850));
  EXPECT_EQ(engine.counters().admitted, 5u);  // 1000, 850, 999, 2000, 1850.
  EXPECT_EQ(engine.counters().late, 4u);      // 849, -5000, 849, 1849.
}

TEST(FeatureEngineTest, ZeroDelayWatermarkDropsOnlyEarlierEvents) {
  Spec spec = BaseSpec(WatermarkSpec{0, 0});
  FeatureEngine engine(spec);
  EXPECT_TRUE(engine.Admit(-100));  // Negative times work, too.
  EXPECT_TRUE(engine.Admit(-100));  // Equal to M: admitted.
  EXPECT_FALSE(engine.Admit(-101));
  EXPECT_TRUE(engine.Admit(0));
  EXPECT_FALSE(engine.Admit(-1));
  EXPECT_EQ(engine.low_watermark_ms(), 0);
}

TEST(FeatureEngineTest, WithoutWatermarkNothingIsLate) {
  Spec spec = BaseSpec();
  FeatureEngine engine(spec);
  for (int64_t t : {1000000, 0, -1000000, 5, 999999}) EXPECT_TRUE(engine.Admit(t)) << t;
  EXPECT_EQ(engine.counters().late, 0u);
  EXPECT_EQ(engine.counters().admitted, 5u);
  EXPECT_EQ(engine.low_watermark_ms(), kInt64Min);
}

TEST(FeatureEngineTest, LatenessMatchesTheWrittenRuleOnRandomSequences) {
  // Reference: late iff a watermark is set, some event was admitted before, and time < M - delay,
  // M = the largest time admitted so far (late events never move it).
  std::mt19937_64 rng(401);
  for (int round = 0; round < 200; ++round) {
    std::optional<WatermarkSpec> watermark;
    if (round % 5 != 0) {
      watermark = WatermarkSpec{static_cast<int64_t>(rng() % 50), static_cast<int64_t>(rng() % 50)};
    }
    Spec spec = BaseSpec(watermark);
    FeatureEngine engine(spec);
    std::optional<int64_t> max_admitted;
    uint64_t late = 0, admitted = 0;
    int64_t clock = static_cast<int64_t>(rng() % 1000) - 500;
    for (int k = 0; k < 300; ++k) {
      clock += static_cast<int64_t>(rng() % 20);
      const int64_t t = clock - static_cast<int64_t>(rng() % 150);
      bool want_late = false;
      if (watermark && max_admitted) {
        want_late = t < *max_admitted - watermark->max_out_of_orderness_ms - watermark->allowed_lateness_ms;
      }
      ASSERT_EQ(engine.Admit(t), !want_late) << "round " << round << " event " << k << " time " << t;
      if (want_late) {
        ++late;
      } else {
        ++admitted;
        max_admitted = std::max(max_admitted.value_or(t), t);
      }
      const int64_t want_low =
          watermark ? *max_admitted - watermark->max_out_of_orderness_ms - watermark->allowed_lateness_ms
                    : kInt64Min;
      ASSERT_EQ(engine.low_watermark_ms(), want_low);
    }
    EXPECT_EQ(engine.counters().late, late);
    EXPECT_EQ(engine.counters().admitted, admitted);
  }
}

// ---------------------------------------------------------------------------------------------------
// Extraction and entities.
// ---------------------------------------------------------------------------------------------------

// Parses one JSON line (which must be valid) with a parser for `spec`.
ParsedEvent MustParse(EventParser& parser, const std::string& line) {
  ParsedEvent event;
  std::string reason;
  EXPECT_TRUE(parser.ParseCopy(line, &event, &reason)) << line << ": " << reason;
  return event;
}

// Admits, extracts and applies one parsed event; returns whether it was admitted.
bool Feed(FeatureEngine& engine, const ParsedEvent& event, uint64_t seq) {
  if (!engine.Admit(event.time_ms)) return false;
  PendingEvent pending;
  engine.Extract(event, seq, &pending);
  engine.Apply(pending, engine.low_watermark_ms());
  return true;
}

TEST(FeatureEngineTest, ExtractSkipsAndCountsUnusableFields) {
  Spec spec = BaseSpec();
  AddFeature(spec, "n", AggKind::kCount, "", LifetimeWindowSpec());
  AddFeature(spec, "total", AggKind::kSum, "amount", LifetimeWindowSpec());
  AddFeature(spec, "latest", AggKind::kLast, "amount", LifetimeWindowSpec());
  AddFeature(spec, "kinds", AggKind::kCountDistinct, "amount", LifetimeWindowSpec());
  AddFeature(spec, "avg", AggKind::kMean, "amount", LifetimeWindowSpec());
  FeatureEngine engine(spec);
  EventParser parser(spec.fields);
  const std::vector<std::string> lines = {
      R"({"user": "a", "ts": 1})",                      // missing: skipped by all but count
      R"({"user": "a", "ts": 2, "amount": null})",      // null: same
      R"({"user": "a", "ts": 3, "amount": "12"})",      // string: numeric features skip
      R"({"user": "a", "ts": 4, "amount": true})",      // bool: numeric features skip
      R"({"user": "a", "ts": 5, "amount": {"v": 1}})",  // object: skipped by all but count
      R"({"user": "a", "ts": 6, "amount": [1, 2]})",    // array: same
      R"({"user": "a", "ts": 7, "amount": 10})",        // usable everywhere
      R"({"user": "a", "ts": 8, "amount": 2.5})",       // usable everywhere
  };
  uint64_t seq = 0;
  for (const std::string& line : lines) ASSERT_TRUE(Feed(engine, MustParse(parser, line), seq++));
  // Skipped per feature: count 0; sum 6 (missing, null, and 4 of the wrong type: string, bool, object, array);
  // last 4 (missing, null, object, array); count_distinct 4; mean 6.
  const auto counts = [](uint64_t missing, uint64_t null, uint64_t wrong_type) {
    SkipCounts c;
    c[SkipReason::kMissing] = missing;
    c[SkipReason::kNull] = null;
    c[SkipReason::kWrongType] = wrong_type;
    return c;
  };
  EXPECT_EQ(engine.counters().skipped, (std::vector<SkipCounts>{counts(0, 0, 0), counts(1, 1, 4), counts(1, 1, 2),
                                                                counts(1, 1, 2), counts(1, 1, 4)}));
  std::vector<Value> values;
  engine.Query("a", 8, &values);
  ASSERT_EQ(values.size(), 5u);
  EXPECT_EQ(values[0].type, ValueType::kInt);
  EXPECT_EQ(values[0].i, 8);  // count counts every admitted event: it reads no field.
  EXPECT_EQ(values[1].type, ValueType::kDouble);
  EXPECT_DOUBLE_EQ(values[1].d, 12.5);
  EXPECT_EQ(values[2].type, ValueType::kDouble);
  EXPECT_DOUBLE_EQ(values[2].d, 2.5);
  EXPECT_EQ(values[3].type, ValueType::kInt);
  EXPECT_EQ(values[3].i, 4);  // "12", true, 10, 2.5.
  EXPECT_EQ(values[4].type, ValueType::kDouble);
  EXPECT_DOUBLE_EQ(values[4].d, 6.25);
  // As of a time between events, `last` is still the latest string (strings must stay readable).
  Spec spec2 = BaseSpec();
  AddFeature(spec2, "latest", AggKind::kLast, "amount", LifetimeWindowSpec());
  FeatureEngine engine2(spec2);
  EventParser parser2(spec2.fields);
  ASSERT_TRUE(Feed(engine2, MustParse(parser2, R"({"user": "a", "ts": 3, "amount": "first"})"), 0));
  ASSERT_TRUE(Feed(engine2, MustParse(parser2, R"({"user": "a", "ts": 4, "amount": "second"})"), 1));
  ASSERT_TRUE(Feed(engine2, MustParse(parser2, R"({"user": "a", "ts": 5, "amount": null})"), 2));
  engine2.Query("a", 5, &values);
  ASSERT_EQ(values[0].type, ValueType::kString);
  EXPECT_EQ(values[0].s, "second");
}

TEST(FeatureEngineTest, WhereFilteredEventsAreNotCountedAsSkipped) {
  Spec spec = BaseSpec();
  AddFeature(spec, "buys", AggKind::kSum, "amount", LifetimeWindowSpec(), "kind == 'buy'");
  FeatureEngine engine(spec);
  EventParser parser(spec.fields);
  ASSERT_TRUE(Feed(engine, MustParse(parser, R"({"user": "a", "ts": 1, "kind": "view", "amount": "x"})"), 0));
  ASSERT_TRUE(Feed(engine, MustParse(parser, R"({"user": "a", "ts": 2, "kind": "buy", "amount": 4})"), 1));
  ASSERT_TRUE(Feed(engine, MustParse(parser, R"({"user": "a", "ts": 3, "kind": "buy"})"), 2));
  ASSERT_TRUE(Feed(engine, MustParse(parser, R"({"user": "a", "ts": 4, "kind": "view", "amount": 100})"), 3));
  ASSERT_EQ(engine.counters().skipped.size(), 1u);
  EXPECT_EQ(engine.counters().skipped[0][SkipReason::kMissing], 1u);  // Only the buy without an amount.
  EXPECT_EQ(engine.counters().skipped[0].total(), 1u);
  std::vector<Value> values;
  engine.Query("a", 4, &values);
  ASSERT_EQ(values[0].type, ValueType::kInt);
  EXPECT_EQ(values[0].i, 4);
}

TEST(FeatureEngineTest, UnknownEntitiesGetEmptyValues) {
  Spec spec = BaseSpec();
  AddFeature(spec, "n", AggKind::kCount, "", SlidingSpec(1000));
  AddFeature(spec, "total", AggKind::kSum, "amount", SlidingSpec(1000, 100));
  AddFeature(spec, "avg", AggKind::kMean, "amount", TumblingSpec(1000));
  AddFeature(spec, "low", AggKind::kMin, "amount", SessionSpec(100));
  AddFeature(spec, "high", AggKind::kMax, "amount", LifetimeWindowSpec());
  AddFeature(spec, "spread", AggKind::kStddev, "amount", LifetimeWindowSpec());
  AddFeature(spec, "latest", AggKind::kLast, "amount", LifetimeWindowSpec());
  AddFeature(spec, "kinds", AggKind::kCountDistinct, "amount", LifetimeWindowSpec());
  AddFeature(spec, "approx", AggKind::kApproxCountDistinct, "amount", LifetimeWindowSpec(), "", 10);
  FeatureEngine engine(spec);
  EventParser parser(spec.fields);
  ASSERT_TRUE(Feed(engine, MustParse(parser, R"({"user": "known", "ts": 10, "amount": 3})"), 0));
  // "fieldless" is an entity the engine has seen, but none of its events had a usable field, and it
  // has a higher index than any feature state.
  ASSERT_TRUE(Feed(engine, MustParse(parser, R"({"user": "fieldless", "ts": 11})"), 1));
  const std::vector<ValueType> empty_types = {ValueType::kInt,  ValueType::kInt,  ValueType::kNull,
                                              ValueType::kNull, ValueType::kNull, ValueType::kNull,
                                              ValueType::kNull, ValueType::kInt,  ValueType::kInt};
  std::vector<Value> values;
  for (const char* entity : {"nobody", ""}) {
    engine.Query(entity, 11, &values);
    ASSERT_EQ(values.size(), empty_types.size());
    for (size_t k = 0; k < values.size(); ++k) {
      EXPECT_EQ(values[k].type, empty_types[k]) << entity << " feature " << spec.features[k].name;
      if (values[k].type == ValueType::kInt) {
        EXPECT_EQ(values[k].i, 0) << spec.features[k].name;
      }
    }
  }
  EXPECT_FALSE(engine.FindEntity("nobody").has_value());
  engine.Query("fieldless", 11, &values);
  EXPECT_EQ(values[0].i, 1);  // Counted...
  for (size_t k = 1; k < values.size(); ++k) {
    EXPECT_EQ(values[k].type, empty_types[k]) << "fieldless feature " << spec.features[k].name;
  }
  engine.Query("known", 11, &values);
  EXPECT_EQ(values[1].i, 3);
  EXPECT_EQ(values[8].i, 1);
}

TEST(FeatureEngineTest, IntegerEntitiesAreTheirDecimalText) {
  Spec spec = BaseSpec();
  AddFeature(spec, "n", AggKind::kCount, "", LifetimeWindowSpec());
  FeatureEngine engine(spec);
  EventParser parser(spec.fields);
  uint64_t seq = 0;
  for (const char* line :
       {R"({"user": 42, "ts": 1})", R"({"user": "42", "ts": 2})", R"({"user": "042", "ts": 3})",
        R"({"user": -7, "ts": 4})", R"({"user": "-7", "ts": 5})", R"({"user": 42, "ts": 6})"}) {
    ASSERT_TRUE(Feed(engine, MustParse(parser, line), seq++));
  }
  EXPECT_EQ(engine.entity_count(), 3u);
  std::vector<Value> values;
  engine.Query("42", 6, &values);
  EXPECT_EQ(values[0].i, 3);
  engine.Query("042", 6, &values);
  EXPECT_EQ(values[0].i, 1);
  engine.Query("-7", 6, &values);
  EXPECT_EQ(values[0].i, 2);
  ASSERT_TRUE(engine.FindEntity("42").has_value());
  EXPECT_EQ(engine.entity_name(*engine.FindEntity("42")), "42");
}

TEST(FeatureEngineTest, LateEventsDoNotReachTheState) {
  Spec spec = BaseSpec(WatermarkSpec{10, 0});
  AddFeature(spec, "n", AggKind::kCount, "", LifetimeWindowSpec());
  FeatureEngine engine(spec);
  EventParser parser(spec.fields);
  EXPECT_TRUE(Feed(engine, MustParse(parser, R"({"user": "a", "ts": 100})"), 0));
  EXPECT_FALSE(Feed(engine, MustParse(parser, R"({"user": "a", "ts": 89})"), 1));
  EXPECT_TRUE(Feed(engine, MustParse(parser, R"({"user": "a", "ts": 90})"), 1));
  std::vector<Value> values;
  engine.Query("a", 100, &values);
  EXPECT_EQ(values[0].i, 2);
}

// ---------------------------------------------------------------------------------------------------
// End to end against a brute force.
// ---------------------------------------------------------------------------------------------------

// One event as the test generated it: the fields it wrote to JSON.
struct GenEvent {
  std::string user;
  int64_t ts = 0;
  std::optional<std::string> kind;
  // amount: absent, null, an int, a double (k + 0.5, never equal to an int), or a string.
  enum { kAbsent, kNull, kInt, kDouble, kString } amount_type = kAbsent;
  int64_t amount_int = 0;
  double amount_double = 0;
  std::string item;  // Empty: absent.
  uint64_t seq = 0;  // Input order among admitted events.

  std::string Json() const {
    std::string j = "{\"user\": \"" + user + "\", \"ts\": " + std::to_string(ts);
    if (kind) j += ", \"kind\": \"" + *kind + "\"";
    switch (amount_type) {
      case kAbsent:
        break;
      case kNull:
        j += ", \"amount\": null";
        break;
      case kInt:
        j += ", \"amount\": " + std::to_string(amount_int);
        break;
      case kDouble: {
        char buf[64];
        std::snprintf(buf, sizeof(buf), "%.1f", amount_double);
        j += std::string(", \"amount\": ") + buf;
        break;
      }
      case kString:
        j += ", \"amount\": \"n/a\"";
        break;
    }
    if (!item.empty()) j += ", \"item\": \"" + item + "\"";
    return j + "}";
  }
  bool amount_is_number() const { return amount_type == kInt || amount_type == kDouble; }
  double amount() const { return amount_type == kInt ? static_cast<double>(amount_int) : amount_double; }
};

// The brute force's view of one feature: which events qualify, which the window covers, and the value.
struct RefFeature {
  std::string name;
  AggKind agg;
  WindowSpec window;
  bool buys_only = false;  // where: kind == 'buy'

  bool Qualifies(const GenEvent& e) const {
    if (buys_only && e.kind != "buy") return false;
    switch (agg) {
      case AggKind::kCount:
        return true;
      case AggKind::kCountDistinct:
      case AggKind::kApproxCountDistinct:
        return !e.item.empty();
      case AggKind::kLast:
      case AggKind::kFirst:
        return e.amount_is_number() || e.amount_type == GenEvent::kString;
      default:
        return e.amount_is_number();
    }
  }

  std::vector<const GenEvent*> Window(const std::vector<const GenEvent*>& events, int64_t t) const {
    std::vector<const GenEvent*> out;
    const int64_t tile = window.kind == WindowKind::kTumbling ? window.size_ms : window.slide_ms;
    auto floor_div = [](int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); };
    for (const GenEvent* e : events) {
      if (e->ts > t) continue;
      switch (window.kind) {
        case WindowKind::kLifetime:
          out.push_back(e);
          break;
        case WindowKind::kSliding:
        case WindowKind::kTumbling:
          if (tile == 0) {
            if (e->ts > t - window.size_ms) out.push_back(e);
          } else if (floor_div(e->ts, tile) >= floor_div(t, tile) - (window.size_ms / tile - 1)) {
            out.push_back(e);
          }
          break;
        case WindowKind::kSession:
          out.push_back(e);
          break;
      }
    }
    if (window.kind == WindowKind::kSession) {
      std::sort(out.begin(), out.end(), [](const GenEvent* a, const GenEvent* b) {
        return a->ts != b->ts ? a->ts < b->ts : a->seq < b->seq;
      });
      if (out.empty() || t - out.back()->ts >= window.gap_ms) return {};
      size_t start = out.size() - 1;
      while (start > 0 && out[start]->ts - out[start - 1]->ts < window.gap_ms) --start;
      out.erase(out.begin(), out.begin() + static_cast<ptrdiff_t>(start));
    }
    return out;
  }

  // Checks the engine's value against the brute force over `events` (the entity's admitted events).
  ::testing::AssertionResult Check(const std::vector<const GenEvent*>& entity_events, int64_t t,
                                   const Value& got) const {
    std::vector<const GenEvent*> qualifying;
    for (const GenEvent* e : entity_events) {
      if (Qualifies(*e)) qualifying.push_back(e);
    }
    const std::vector<const GenEvent*> w = Window(qualifying, t);
    auto fail = [&](const std::string& want) {
      return ::testing::AssertionFailure() << name << " as of " << t << ": expected " << want << ", got type "
                                           << ValueTypeName(got.type) << " i=" << got.i << " d=" << got.d
                                           << " s=" << got.s << " (" << w.size() << " events in the window)";
    };
    switch (agg) {
      case AggKind::kCount:
        if (got.type == ValueType::kInt && got.i == static_cast<int64_t>(w.size())) break;
        return fail(std::to_string(w.size()));
      case AggKind::kSum:
      case AggKind::kMean: {
        bool all_int = true;
        long double total = 0;
        int64_t int_total = 0;
        for (const GenEvent* e : w) {
          all_int = all_int && e->amount_type == GenEvent::kInt;
          total += e->amount();
          if (e->amount_type == GenEvent::kInt) int_total += e->amount_int;
        }
        if (agg == AggKind::kSum && all_int) {
          if (got.type == ValueType::kInt && got.i == int_total) break;
          return fail("int " + std::to_string(int_total));
        }
        if (agg == AggKind::kMean && w.empty()) {
          if (got.type == ValueType::kNull) break;
          return fail("null");
        }
        const long double want = agg == AggKind::kSum ? total : total / static_cast<long double>(w.size());
        if (got.type == ValueType::kDouble &&
            std::fabs(got.d - static_cast<double>(want)) <= 1e-9 * (1 + std::fabs(want))) {
          break;
        }
        return fail("double " + std::to_string(static_cast<double>(want)));
      }
      case AggKind::kMin:
      case AggKind::kMax: {
        if (w.empty()) {
          if (got.type == ValueType::kNull) break;
          return fail("null");
        }
        const GenEvent* best = w[0];
        for (const GenEvent* e : w) {
          if (agg == AggKind::kMin ? e->amount() < best->amount() : e->amount() > best->amount()) best = e;
        }
        const bool want_int = best->amount_type == GenEvent::kInt;
        if (want_int && got.type == ValueType::kInt && got.i == best->amount_int) break;
        if (!want_int && got.type == ValueType::kDouble && got.d == best->amount_double) break;
        return fail(std::to_string(best->amount()));
      }
      case AggKind::kStddev: {
        if (w.empty()) {
          if (got.type == ValueType::kNull) break;
          return fail("null");
        }
        long double mean = 0;
        for (const GenEvent* e : w) mean += e->amount();
        mean /= static_cast<long double>(w.size());
        long double squares = 0;
        for (const GenEvent* e : w) squares += (e->amount() - mean) * (e->amount() - mean);
        const double want = static_cast<double>(std::sqrt(squares / static_cast<long double>(w.size())));
        if (got.type == ValueType::kDouble && std::fabs(got.d - want) <= 1e-9 * (1 + want)) break;
        return fail(std::to_string(want));
      }
      case AggKind::kLast: {
        if (w.empty()) {
          if (got.type == ValueType::kNull) break;
          return fail("null");
        }
        const GenEvent* best = w[0];
        for (const GenEvent* e : w) {
          if (e->ts > best->ts || (e->ts == best->ts && e->seq > best->seq)) best = e;
        }
        if (best->amount_type == GenEvent::kString && got.type == ValueType::kString && got.s == "n/a") break;
        if (best->amount_type == GenEvent::kInt && got.type == ValueType::kInt && got.i == best->amount_int)
          break;
        if (best->amount_type == GenEvent::kDouble && got.type == ValueType::kDouble &&
            got.d == best->amount_double) {
          break;
        }
        return fail("the amount of the event at " + std::to_string(best->ts));
      }
      case AggKind::kFirst: {
        if (w.empty()) {
          if (got.type == ValueType::kNull) break;
          return fail("null");
        }
        const GenEvent* best = w[0];
        for (const GenEvent* e : w) {
          if (e->ts < best->ts || (e->ts == best->ts && e->seq < best->seq)) best = e;
        }
        if (best->amount_type == GenEvent::kString && got.type == ValueType::kString && got.s == "n/a") break;
        if (best->amount_type == GenEvent::kInt && got.type == ValueType::kInt && got.i == best->amount_int)
          break;
        if (best->amount_type == GenEvent::kDouble && got.type == ValueType::kDouble &&
            got.d == best->amount_double) {
          break;
        }
        return fail("the amount of the event at " + std::to_string(best->ts));
      }
      case AggKind::kApproxPercentile: {  // The median (percentile_ppm 500000), by nearest rank.
        if (w.empty()) {
          if (got.type == ValueType::kNull) break;
          return fail("null");
        }
        std::vector<double> sorted;
        for (const GenEvent* e : w) sorted.push_back(static_cast<double>(e->amount()));
        std::sort(sorted.begin(), sorted.end());
        const size_t rank = std::max<size_t>(1, (sorted.size() + 1) / 2);  // ceil(n / 2)
        if (sorted.size() <= 256) {  // Exact up to the sketch's level capacity.
          if (got.type == ValueType::kDouble && got.d == sorted[rank - 1]) break;
          return fail(std::to_string(sorted[rank - 1]));
        }
        if (got.type == ValueType::kDouble && std::binary_search(sorted.begin(), sorted.end(), got.d)) break;
        return fail("a value of the window");
      }
      case AggKind::kCountDistinct:
      case AggKind::kApproxCountDistinct: {  // Approx is exact here: few distinct items, sparse sketch.
        std::set<std::string> items;
        for (const GenEvent* e : w) items.insert(e->item);
        if (got.type == ValueType::kInt && got.i == static_cast<int64_t>(items.size())) break;
        return fail(std::to_string(items.size()));
      }
      case AggKind::kTopK:
      case AggKind::kLastK:  // Checked against tests/reference.py in tests/top_last_k_test.py; not listed here.
        return fail("no brute force here for list aggregations");
    }
    return ::testing::AssertionSuccess();
  }
};

TEST(FeatureEngineTest, EndToEndMatchesBruteForce) {
  std::mt19937_64 rng(402);
  for (int round = 0; round < 6; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const bool with_watermark = round % 3 != 2;
    Spec spec = BaseSpec(with_watermark ? std::optional<WatermarkSpec>(WatermarkSpec{40, 20}) : std::nullopt);
    std::vector<RefFeature> refs = {
        {"n", AggKind::kCount, LifetimeWindowSpec(), false},
        {"n_buys_1s", AggKind::kCount, SlidingSpec(1000), true},
        {"total_1s", AggKind::kSum, SlidingSpec(1000), false},
        {"total_1s_hop", AggKind::kSum, SlidingSpec(1000, 250), false},
        {"mean_buys", AggKind::kMean, LifetimeWindowSpec(), true},
        {"min_600", AggKind::kMin, SlidingSpec(600), false},
        {"n_30", AggKind::kCount, SlidingSpec(30), false},  // Shorter than the lateness delay (60).
        {"n_hop_20", AggKind::kCount, SlidingSpec(40, 20), false},
        {"max_tumble", AggKind::kMax, TumblingSpec(500), false},
        {"spread", AggKind::kStddev, SlidingSpec(2000, 500), false},
        {"latest", AggKind::kLast, TumblingSpec(500), false},
        {"latest_session", AggKind::kLast, SessionSpec(150), false},
        {"items_session", AggKind::kCountDistinct, SessionSpec(300), false},
        {"items_approx", AggKind::kApproxCountDistinct, LifetimeWindowSpec(), false},
        {"earliest_hop", AggKind::kFirst, SlidingSpec(1000, 250), false},
        {"earliest_session", AggKind::kFirst, SessionSpec(150), false},
        {"median_1s", AggKind::kApproxPercentile, SlidingSpec(1000), false},
        {"median_buys_tumble", AggKind::kApproxPercentile, TumblingSpec(500), true},
    };
    for (const RefFeature& r : refs) {
      std::string field;
      if (r.agg == AggKind::kCountDistinct || r.agg == AggKind::kApproxCountDistinct) {
        field = "item";
      } else if (r.agg != AggKind::kCount) {
        field = "amount";
      }
      AddFeature(spec, r.name, r.agg, field, r.window, r.buys_only ? "kind == 'buy'" : "", 10);
      if (r.agg == AggKind::kApproxPercentile) spec.features.back().percentile_ppm = 500000;
    }
    auto engine_ptr = std::make_unique<FeatureEngine>(spec);
    EventParser parser(spec.fields);

    std::vector<GenEvent> admitted_events;
    admitted_events.reserve(600);
    std::map<std::string, std::vector<const GenEvent*>> by_user;
    std::optional<int64_t> max_time;
    int64_t clock = -static_cast<int64_t>(rng() % 3000);
    uint64_t seq = 0;
    int out_of_order = 0;
    for (int k = 0; k < 600; ++k) {
      GenEvent e;
      e.user = "u" + std::to_string(rng() % 4);
      clock += static_cast<int64_t>(rng() % 40);
      e.ts = clock - static_cast<int64_t>(rng() % 100);  // Sometimes later than the watermark allows.
      if (rng() % 4 != 0) e.kind = rng() % 2 ? "buy" : "view";
      switch (rng() % 8) {
        case 0:
          e.amount_type = GenEvent::kAbsent;
          break;
        case 1:
          e.amount_type = GenEvent::kNull;
          break;
        case 2:
          e.amount_type = GenEvent::kString;
          break;
        case 3:
        case 4:
          e.amount_type = GenEvent::kDouble;
          e.amount_double = static_cast<double>(rng() % 41) - 20 + 0.5;
          break;
        default:
          e.amount_type = GenEvent::kInt;
          e.amount_int = static_cast<int64_t>(rng() % 41) - 20;
          break;
      }
      if (rng() % 5 != 0) e.item = "item" + std::to_string(rng() % 12);

      const bool want_late = with_watermark && max_time && e.ts < *max_time - 60;
      ParsedEvent parsed = MustParse(parser, e.Json());
      FeatureEngine& engine = *engine_ptr;
      ASSERT_EQ(engine.Admit(parsed.time_ms), !want_late) << e.Json();
      if (want_late) continue;
      max_time = std::max(max_time.value_or(e.ts), e.ts);
      e.seq = seq;
      PendingEvent pending;
      engine.Extract(parsed, seq++, &pending);
      engine.Apply(pending, engine.low_watermark_ms());
      admitted_events.push_back(e);
      by_user[e.user].push_back(&admitted_events.back());

      // Query this entity now (at and after the newest event anywhere, which the windows support).
      std::vector<Value> values;
      for (int64_t d : {0, 1, 149, 150, 250, 300, 599, 600, 1000}) {
        const int64_t t = *max_time + d;
        engine.Query(e.user, t, &values);
        ASSERT_EQ(values.size(), refs.size());
        for (size_t f = 0; f < refs.size(); ++f) {
          ASSERT_TRUE(refs[f].Check(by_user[e.user], t, values[f])) << "after " << e.Json();
        }
      }
      if (with_watermark) {
        // As of the event's own time (its features row), and of times between the low watermark and the
        // newest event: exact over the events admitted so far, the later ones excluded.
        std::vector<int64_t> times = {e.ts, engine.low_watermark_ms()};
        for (int r = 0; r < 3; ++r) {
          times.push_back(engine.low_watermark_ms() + static_cast<int64_t>(rng() % 61));
        }
        for (const int64_t t : times) {
          ASSERT_TRUE(engine.IsExactAsOf(e.ts, t));
          engine.Query(e.user, t, &values);
          for (size_t f = 0; f < refs.size(); ++f) {
            ASSERT_TRUE(refs[f].Check(by_user[e.user], t, values[f])) << "after " << e.Json() << " as of " << t;
          }
        }
        out_of_order += e.ts < *max_time ? 1 : 0;
      }
      if (k % 150 == 149) {
        // A saved and restored engine carries on exactly, recent events included.
        std::string bytes;
        ByteWriter out(&bytes);
        engine.SaveState(out);
        auto restored = std::make_unique<FeatureEngine>(spec);
        ByteReader in(bytes);
        ASSERT_TRUE(restored->LoadState(in).ok());
        engine_ptr = std::move(restored);
      }
    }
    if (with_watermark) {
      EXPECT_GT(engine_ptr->counters().late, 0u) << "the sequence should exercise the lateness rule";
      EXPECT_GT(out_of_order, 100) << "the sequence should exercise out-of-order events";
    } else {
      EXPECT_EQ(engine_ptr->counters().late, 0u);
    }
  }
}

}  // namespace
}  // namespace freshet

namespace freshet {
namespace {

// ProcessBatch must give exactly what Admit/Extract/Apply one event at a time give, late events included.
TEST(FeatureEngineTest, ProcessBatchEqualsOneAtATime) {
  Spec spec = BaseSpec(WatermarkSpec{20, 10});
  AddFeature(spec, "n", AggKind::kCount, "", SlidingSpec(100, 10), "kind == 'a'");
  AddFeature(spec, "s", AggKind::kSum, "v", SlidingSpec(50));
  AddFeature(spec, "d", AggKind::kCountDistinct, "v", SessionSpec(30));
  AddFeature(spec, "l", AggKind::kLast, "kind", LifetimeWindowSpec());
  const int kind_slot = spec.fields.Intern("kind");
  const int v_slot = spec.fields.Intern("v");
  std::mt19937_64 rng(11);
  const std::vector<std::string> users = {"u1", "u2", "u3", "u4", "u5", "u6", "u7"};
  const std::vector<std::string> kinds = {"a", "b"};
  std::vector<ParsedEvent> events(3000);
  int64_t time = 0;
  for (ParsedEvent& e : events) {
    time += static_cast<int64_t>(rng() % 7);
    e.time_ms = time - static_cast<int64_t>(rng() % 45);  // Some beyond the 30 ms delay: late.
    e.entity = users[rng() % users.size()];
    e.slots.assign(spec.fields.size(), Value::Missing());
    e.slots[kEntitySlot] = Value::String(e.entity);
    e.slots[kTimestampSlot] = Value::Int(e.time_ms);
    e.slots[kind_slot] = Value::String(kinds[rng() % 2]);
    e.slots[v_slot] = Value::Int(static_cast<int64_t>(rng() % 5));
  }
  FeatureEngine one(spec), batched(spec);
  uint64_t seq_one = 0;
  for (const ParsedEvent& e : events) {
    if (Feed(one, e, seq_one)) ++seq_one;
  }
  uint64_t seq_batched = 0;
  size_t late = 0;
  for (size_t begin = 0; begin < events.size(); begin += 97) {
    late += batched.ProcessBatch(&events[begin], std::min<size_t>(97, events.size() - begin), &seq_batched);
  }
  ASSERT_GT(late, 0u) << "the test should exercise late events";
  EXPECT_EQ(late, one.counters().late);
  EXPECT_EQ(seq_batched, seq_one);
  std::vector<Value> a, b;
  for (const std::string& u : users) {
    for (int64_t t : {time, time + 5, time + 40}) {
      one.Query(u, t, &a);
      batched.Query(u, t, &b);
      ASSERT_EQ(a.size(), b.size());
      for (size_t k = 0; k < a.size(); ++k) {
        EXPECT_EQ(a[k].type, b[k].type) << u << " t=" << t << " feature " << k;
        if (a[k].type == ValueType::kInt) {
          EXPECT_EQ(a[k].i, b[k].i) << u << " t=" << t << " feature " << k;
        }
        if (a[k].type == ValueType::kString) {
          EXPECT_EQ(a[k].s, b[k].s) << u << " t=" << t << " feature " << k;
        }
      }
    }
  }
}

}  // namespace
}  // namespace freshet

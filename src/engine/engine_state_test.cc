// Tests for saved state: every aggregation and window serializes what it holds and continues exactly after
// a load. The main check cuts a seeded random event stream at random points: engine A processes the
// prefix and is saved, a fresh engine B loads it, both process the rest, and every feature of every
// entity must equal, bit for bit, engine C that processed the whole stream without a save (and the late
// events must be the same ones). Smaller tests pin the cases a random stream might miss: strings in a
// process whose pool numbers them differently, HyperLogLog sparse and dense, sessions bridged through
// older sessions after a load, hostile bytes, and a state from another spec.
#include <gtest/gtest.h>

#include "engine/test_specs.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "aggregate/aggregations.h"
#include "aggregate/hyperloglog.h"
#include "common/bytes.h"
#include "engine/feature_engine.h"
#include "event/event_parser.h"
#include "spec/expr.h"
#include "spec/spec.h"
#include "window/windows.h"

namespace freshet {
namespace {

constexpr int64_t kNoLow = std::numeric_limits<int64_t>::min();

// ---------------------------------------------------------------------------------------------------
// Helpers: hand-built specs (as in feature_engine_test.cc) and exact value comparison.
// ---------------------------------------------------------------------------------------------------

using test_specs::AddFeature;
Spec BaseSpec(std::optional<WatermarkSpec> watermark) { return test_specs::BaseSpec(watermark, "state"); }

WindowSpec Lifetime() { return {}; }
WindowSpec Continuous(int64_t size_ms) { return {WindowKind::kSliding, size_ms, 0, 0}; }
WindowSpec Tiled(int64_t size_ms, int64_t slide_ms) { return {WindowKind::kSliding, size_ms, slide_ms, 0}; }
WindowSpec Tumbling(int64_t size_ms) { return {WindowKind::kTumbling, size_ms, size_ms, 0}; }
WindowSpec Session(int64_t gap_ms) { return {WindowKind::kSession, 0, 0, gap_ms}; }

// Every aggregation in every kind of window; approx_count_distinct at a precision that stays sparse (14),
// one that is dense from the first value (4), and one that turns dense after two values (6); approx_percentile
// at two percentiles (lifetime windows of the busier entities go beyond the sketch's 256 exact values); top_k,
// last_k, and both distinct counts over a pair of fields.
Spec AllFeaturesSpec(std::optional<WatermarkSpec> watermark, int64_t session_gap_ms = 15) {
  Spec spec = BaseSpec(watermark);
  const std::vector<std::pair<std::string, WindowSpec>> windows = {
      {"life", Lifetime()},          {"cont", Continuous(40)},          {"tiled", Tiled(60, 10)},
      {"tumb", Tumbling(50)},        {"sess", Session(session_gap_ms)},
  };
  for (const auto& [wname, window] : windows) {
    AddFeature(spec, "count_" + wname, AggKind::kCount, "", window);
    AddFeature(spec, "count_a_" + wname, AggKind::kCount, "", window, "kind == 'a'");
    AddFeature(spec, "sum_" + wname, AggKind::kSum, "v", window);
    AddFeature(spec, "mean_" + wname, AggKind::kMean, "v", window, "kind != 'c'");
    AddFeature(spec, "min_" + wname, AggKind::kMin, "v", window);
    AddFeature(spec, "max_" + wname, AggKind::kMax, "v", window);
    AddFeature(spec, "stddev_" + wname, AggKind::kStddev, "v", window);
    AddFeature(spec, "last_" + wname, AggKind::kLast, "x", window);
    AddFeature(spec, "distinct_" + wname, AggKind::kCountDistinct, "x", window);
    AddFeature(spec, "approx14_" + wname, AggKind::kApproxCountDistinct, "x", window, "", 14);
    AddFeature(spec, "approx4_" + wname, AggKind::kApproxCountDistinct, "x", window, "", 4);
    AddFeature(spec, "approx6_" + wname, AggKind::kApproxCountDistinct, "x", window, "kind == 'b'", 6);
    AddFeature(spec, "first_" + wname, AggKind::kFirst, "x", window);
    AddFeature(spec, "pct50_" + wname, AggKind::kApproxPercentile, "v", window);
    spec.features.back().percentile_ppm = 500000;
    AddFeature(spec, "pct95_" + wname, AggKind::kApproxPercentile, "v", window, "kind != 'c'");
    spec.features.back().percentile_ppm = 950000;
    AddFeature(spec, "top3_" + wname, AggKind::kTopK, "x", window);
    spec.features.back().k = 3;
    AddFeature(spec, "last4_" + wname, AggKind::kLastK, "x", window, "kind != 'a'");
    spec.features.back().k = 4;
    AddFeature(spec, "pairs_" + wname, AggKind::kCountDistinct, "x", window);
    test_specs::SetFieldList(spec, {"x", "kind"});
    AddFeature(spec, "approx_pairs_" + wname, AggKind::kApproxCountDistinct, "x", window, "", 6);
    test_specs::SetFieldList(spec, {"kind", "x"});
  }
  return spec;
}

// Values are compared exactly: same type and the same bits.
testing::AssertionResult Same(const Value& a, const Value& b) {
  if (a.type != b.type) {
    return testing::AssertionFailure() << "types differ: " << ValueTypeName(a.type) << " vs " << ValueTypeName(b.type);
  }
  switch (a.type) {
    case ValueType::kBool:
      if (a.b != b.b) return testing::AssertionFailure() << a.b << " vs " << b.b;
      break;
    case ValueType::kInt:
      if (a.i != b.i) return testing::AssertionFailure() << a.i << " vs " << b.i;
      break;
    case ValueType::kDouble:
      if (std::memcmp(&a.d, &b.d, sizeof(double)) != 0) {
        return testing::AssertionFailure() << std::hexfloat << a.d << " vs " << b.d;
      }
      break;
    case ValueType::kString:
      if (a.s != b.s) return testing::AssertionFailure() << "'" << a.s << "' vs '" << b.s << "'";
      break;
    default: break;
  }
  return testing::AssertionSuccess();
}

// Admits, extracts and applies one parsed event; returns whether it was admitted.
bool Feed(FeatureEngine& engine, const ParsedEvent& event, uint64_t* seq) {
  if (!engine.Admit(event.time_ms)) return false;
  PendingEvent pending;
  engine.Extract(event, (*seq)++, &pending);
  engine.Apply(pending, engine.low_watermark_ms());
  return true;
}

// A seeded random stream for AllFeaturesSpec: a few entities of skewed activity, times that mostly advance with jitter (some
// beyond the watermark's delay, so late), kinds a/b/c, `v` mostly numbers (huge integers now and then, so
// sums need 128 bits; sometimes a string, null or missing: skipped), `x` strings, numbers and booleans.
// Strings live in the stream so that the events' views stay valid.
struct Stream {
  std::vector<std::string> users = {"u1", "u2", "u3", "u4", "u5", "user-with-a-longer-name"};
  std::vector<std::string> kinds = {"a", "b", "c"};
  std::vector<std::string> texts;
  std::vector<ParsedEvent> events;
  int64_t newest_ms = kNoLow;

  Stream(const Spec& spec, uint64_t seed, size_t count) {
    for (int k = 0; k < 40; ++k) texts.push_back("text-" + std::to_string(k * 7919 % 101));
    texts.push_back("");
    texts.push_back(std::string("nul\0inside", 10));
    const int kind_slot = FindSlot(spec, "kind"), v_slot = FindSlot(spec, "v"), x_slot = FindSlot(spec, "x");
    std::mt19937_64 rng(seed);
    events.resize(count);
    int64_t clock = static_cast<int64_t>(rng() % 1000) - 500;
    for (ParsedEvent& e : events) {
      // Now and then a pause of about the session gap (15), so that sessions end and out-of-order events
      // land between sessions, bridging them.
      clock += static_cast<int64_t>(rng() % 5) + (rng() % 25 == 0 ? 12 + static_cast<int64_t>(rng() % 14) : 0);
      e.time_ms = clock - (rng() % 4 == 0 ? static_cast<int64_t>(rng() % 30) : 0);
      newest_ms = std::max(newest_ms, e.time_ms);
      // Skewed: users[0] has 1 event in 36, users[5] 11 in 36 (rare users have many short sessions).
      e.entity = users[static_cast<size_t>(std::sqrt(static_cast<double>(rng() % 36)))];
      e.slots.assign(spec.fields.size(), Value::Missing());
      e.slots[kEntitySlot] = Value::String(e.entity);
      e.slots[kTimestampSlot] = Value::Int(e.time_ms);
      e.slots[kind_slot] = Value::String(kinds[rng() % kinds.size()]);
      switch (rng() % 12) {
        case 0: e.slots[v_slot] = Value::String("12"); break;
        case 1: e.slots[v_slot] = Value::Null(); break;
        case 2: break;  // Missing.
        case 3: e.slots[v_slot] = Value::Int(std::numeric_limits<int64_t>::max() - static_cast<int64_t>(rng() % 9)); break;
        case 4: e.slots[v_slot] = Value::Double(static_cast<double>(rng() % 1000) / 8.0 - 60.0); break;
        case 5: e.slots[v_slot] = Value::Double(static_cast<double>(rng() % 5)); break;  // Ties int vs double.
        default: e.slots[v_slot] = Value::Int(static_cast<int64_t>(rng() % 200) - 100); break;
      }
      switch (rng() % 10) {
        case 0: e.slots[x_slot] = Value::Int(static_cast<int64_t>(rng() % 6)); break;
        case 1: e.slots[x_slot] = Value::Double(static_cast<double>(rng() % 6) / 2.0); break;  // 1.0 == 1.
        case 2: e.slots[x_slot] = Value::Bool(rng() % 2 == 0); break;
        case 3: break;  // Missing.
        default: e.slots[x_slot] = Value::String(texts[rng() % texts.size()]); break;
      }
    }
  }

  static int FindSlot(const Spec& spec, const std::string& path) {
    for (size_t k = 0; k < spec.fields.paths().size(); ++k) {
      if (spec.fields.paths()[k] == path) return static_cast<int>(k);
    }
    // Not read by any feature: give it a slot past the registry's end that the events will still have.
    ADD_FAILURE() << "field " << path << " is not in the spec";
    return 0;
  }
};

// Every feature of every one of `users` as of each t must be the same in all engines.
void ExpectSameFeatures(const std::vector<const FeatureEngine*>& engines, const std::vector<std::string>& users,
                        const std::vector<int64_t>& times, const std::string& context) {
  std::vector<Value> first, other;
  for (const std::string& user : users) {
    for (int64_t t : times) {
      engines[0]->Query(user, t, &first);
      for (size_t e = 1; e < engines.size(); ++e) {
        engines[e]->Query(user, t, &other);
        ASSERT_EQ(first.size(), other.size());
        for (size_t k = 0; k < first.size(); ++k) {
          EXPECT_TRUE(Same(first[k], other[k])) << context << ": engine #" << e << " differs from engine #0 for "
                                                << user << " at t=" << t << ", feature "
                                                << engines[0]->spec().features[k].name;
        }
      }
    }
  }
}

void ExpectSameCounters(const FeatureEngine& a, const FeatureEngine& b, const std::string& context) {
  EXPECT_EQ(a.counters().admitted, b.counters().admitted) << context;
  EXPECT_EQ(a.counters().late, b.counters().late) << context;
  EXPECT_EQ(a.counters().skipped, b.counters().skipped) << context;
  EXPECT_EQ(a.low_watermark_ms(), b.low_watermark_ms()) << context;
}

// ---------------------------------------------------------------------------------------------------
// The cut test: save at a random point, load into a fresh engine, continue both.
// ---------------------------------------------------------------------------------------------------

void RunCutTest(const std::optional<WatermarkSpec>& watermark, uint64_t seed) {
  const Spec spec = AllFeaturesSpec(watermark);
  const Stream stream(spec, seed, 1200);
  const std::vector<ParsedEvent>& events = stream.events;

  FeatureEngine whole(spec);  // C: the whole stream, never saved.
  uint64_t seq_whole = 0;
  std::vector<bool> admitted_whole;
  for (const ParsedEvent& e : events) admitted_whole.push_back(Feed(whole, e, &seq_whole));
  if (watermark) {
    ASSERT_GT(whole.counters().late, 20u) << "the stream should have late events";
  }

  std::mt19937_64 rng(seed * 31 + 7);
  std::vector<size_t> cuts = {0, 1, events.size()};
  for (int k = 0; k < 24; ++k) cuts.push_back(rng() % events.size());
  for (size_t cut : cuts) {
    const std::string context = "seed " + std::to_string(seed) + ", cut at event " + std::to_string(cut);
    FeatureEngine a(spec);
    uint64_t seq_a = 0;
    int64_t newest_before_cut = kNoLow;
    for (size_t k = 0; k < cut; ++k) {
      ASSERT_EQ(Feed(a, events[k], &seq_a), admitted_whole[k]);
      newest_before_cut = std::max(newest_before_cut, events[k].time_ms);
    }
    ByteWriter saved;
    a.SaveState(saved);

    FeatureEngine b(spec);
    ByteReader reader(saved.bytes());
    const Status loaded = b.LoadState(reader);
    ASSERT_TRUE(loaded.ok()) << context << ": " << loaded.message();
    EXPECT_TRUE(reader.at_end()) << context << ": LoadState read " << reader.offset() << " of " << saved.size();
    ASSERT_EQ(b.entity_count(), a.entity_count());
    for (uint32_t k = 0; k < a.entity_count(); ++k) EXPECT_EQ(b.entity_name(k), a.entity_name(k)) << "index " << k;
    ExpectSameCounters(a, b, context + ", right after loading");
    if (cut > 0) {
      ExpectSameFeatures({&a, &b}, stream.users, {newest_before_cut, newest_before_cut + 9},
                         context + ", right after loading");
    }

    // Input order continues from the admitted count, as a restarted runtime would number events.
    uint64_t seq_b = b.counters().admitted;
    ASSERT_EQ(seq_b, seq_a);
    int64_t newest = newest_before_cut;
    for (size_t k = cut; k < events.size(); ++k) {
      const bool admitted_a = Feed(a, events[k], &seq_a);
      const bool admitted_b = Feed(b, events[k], &seq_b);
      ASSERT_EQ(admitted_a, admitted_whole[k]) << context << ", event " << k;
      ASSERT_EQ(admitted_b, admitted_whole[k]) << context << ", event " << k << ": lateness differs after the load";
      // Right after the cut, what the loaded state holds still shows (sessions an out-of-order event
      // bridges, entries and tiles about to expire): compare after each event. A was saved, never loaded.
      newest = std::max(newest, events[k].time_ms);
      if (k < cut + 40) {
        ExpectSameFeatures({&a, &b}, stream.users, {newest, newest + 12},
                           context + ", after event " + std::to_string(k));
        if (testing::Test::HasFailure()) return;
      }
    }
    ExpectSameCounters(a, whole, context);
    ExpectSameCounters(b, whole, context);
    const int64_t t = stream.newest_ms;
    ExpectSameFeatures({&whole, &a, &b}, stream.users, {t, t + 1, t + 7, t + 14, t + 30, t + 45, t + 100}, context);
    if (testing::Test::HasFailure()) return;
  }
}

TEST(EngineStateTest, SaveLoadContinueEqualsUninterruptedWithWatermark) {
  for (uint64_t seed : {1, 2, 3}) RunCutTest(WatermarkSpec{10, 10}, seed);
}

TEST(EngineStateTest, SaveLoadContinueEqualsUninterruptedWithoutWatermark) {
  for (uint64_t seed : {4, 5}) RunCutTest(std::nullopt, seed);
}

TEST(EngineStateTest, TheCutTestSeesRealValues) {
  // Guards the cut test against comparing empty features: the stream fills them with values checked here
  // against what the generator guarantees.
  const Spec spec = AllFeaturesSpec(WatermarkSpec{10, 10});
  const Stream stream(spec, 1, 1200);
  FeatureEngine engine(spec);
  uint64_t seq = 0;
  for (const ParsedEvent& e : stream.events) Feed(engine, e, &seq);
  std::vector<Value> values;
  engine.Query(stream.users.back(), stream.newest_ms, &values);
  auto value_of = [&](const std::string& name) {
    for (size_t k = 0; k < spec.features.size(); ++k) {
      if (spec.features[k].name == name) return values[k];
    }
    ADD_FAILURE() << name;
    return Value::Null();
  };
  EXPECT_GT(value_of("count_life").i, 100);
  EXPECT_GT(value_of("distinct_life").i, 20);  // Strings, numbers and booleans.
  EXPECT_EQ(value_of("sum_life").type, ValueType::kDouble) << "doubles, and integers beyond int64";
  EXPECT_GT(value_of("approx4_life").i, 0);
  EXPECT_EQ(value_of("pct50_life").type, ValueType::kDouble);
  EXPECT_EQ(value_of("first_life").type != ValueType::kNull, true);
  EXPECT_GT(value_of("top3_life").s.size(), 20u) << value_of("top3_life").s;
  EXPECT_GT(value_of("last4_life").s.size(), 4u) << value_of("last4_life").s;
  EXPECT_GT(value_of("pairs_life").i, value_of("distinct_life").i) << "pairs of x and kind";
  const size_t per_window = spec.features.size() / 5;  // The same features in each of the five windows.
  EXPECT_EQ(engine.counters().skipped[2], engine.counters().skipped[2 + per_window])
      << "sum skips the same events everywhere";
  EXPECT_GT(engine.counters().skipped[2].total(), 0u);
}

// ---------------------------------------------------------------------------------------------------
// Per-entity state, other specs, damaged bytes.
// ---------------------------------------------------------------------------------------------------

TEST(EngineStateTest, SaveEntityLoadEntityRoundTripsEveryEntity) {
  const Spec spec = AllFeaturesSpec(std::nullopt);
  const Stream stream(spec, 8, 900);
  FeatureEngine a(spec), whole(spec);
  uint64_t seq_a = 0, seq_whole = 0;
  const size_t cut = 600;
  for (size_t k = 0; k < stream.events.size(); ++k) {
    if (k < cut) Feed(a, stream.events[k], &seq_a);
    Feed(whole, stream.events[k], &seq_whole);
  }
  // D starts with states of its own for two entities, which the loads must replace, not merge into.
  FeatureEngine d(spec);
  uint64_t seq_d = 1000000;
  for (size_t k = 0; k < 50; ++k) {
    ParsedEvent e = stream.events[k];
    e.time_ms += 5000;
    Feed(d, e, &seq_d);
  }
  for (uint32_t index = 0; index < a.entity_count(); ++index) {
    ByteWriter w;
    a.SaveEntity(index, w);
    ByteReader r(w.bytes());
    const Status status = d.LoadEntity(a.entity_name(index), r);
    ASSERT_TRUE(status.ok()) << status.message();
    EXPECT_TRUE(r.at_end());
  }
  // Without a watermark, a runtime continuing from the per-entity states computes what A does.
  for (size_t k = cut; k < stream.events.size(); ++k) Feed(d, stream.events[k], &seq_a);
  const int64_t t = stream.newest_ms;
  ExpectSameFeatures({&whole, &d}, stream.users, {t, t + 3, t + 20, t + 60}, "per-entity load");
}

TEST(EngineStateTest, LoadEntityLeavesTheEntityAloneOnDamagedBytes) {
  const Spec spec = AllFeaturesSpec(std::nullopt);
  const Stream stream(spec, 9, 300);
  FeatureEngine a(spec), d(spec);
  uint64_t seq = 0, seq_d = 0;
  for (const ParsedEvent& e : stream.events) {
    Feed(a, e, &seq);
    if (e.entity == "u1") Feed(d, e, &seq_d);
  }
  ByteWriter w;
  a.SaveEntity(*a.FindEntity("u2"), w);
  const std::string bytes = w.bytes();
  std::vector<Value> before, after;
  d.Query("u1", stream.newest_ms, &before);
  for (size_t cut = 0; cut < bytes.size(); cut += 1 + cut / 64) {
    const std::string prefix = bytes.substr(0, cut);
    for (const std::string entity : {"u1", "new-entity"}) {
      ByteReader r(prefix);
      const Status status = d.LoadEntity(entity, r);
      ASSERT_FALSE(status.ok()) << "cut at " << cut;
      EXPECT_NE(status.message().find(entity), std::string::npos) << status.message();
    }
    EXPECT_EQ(d.entity_count(), 1u) << "a failed load adds no entity";
    d.Query("u1", stream.newest_ms, &after);
    for (size_t k = 0; k < before.size(); ++k) ASSERT_TRUE(Same(before[k], after[k])) << "cut at " << cut;
  }
}

TEST(EngineStateTest, StateOfAnotherSpecIsRefusedNamingTheFingerprints) {
  const Spec spec = AllFeaturesSpec(WatermarkSpec{10, 10});
  const Stream stream(spec, 10, 200);
  FeatureEngine a(spec);
  uint64_t seq = 0;
  for (const ParsedEvent& e : stream.events) Feed(a, e, &seq);
  ByteWriter state, entity;
  a.SaveState(state);
  a.SaveEntity(0, entity);

  const Spec other = AllFeaturesSpec(WatermarkSpec{10, 10}, /*session_gap_ms=*/16);
  ASSERT_NE(SpecFingerprint(other), SpecFingerprint(spec));
  FeatureEngine b(other);
  ByteReader r(state.bytes());
  const Status status = b.LoadState(r);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("fingerprint"), std::string::npos) << status.message();
  char hex[32];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(SpecFingerprint(spec)));
  EXPECT_NE(status.message().find(hex), std::string::npos) << status.message();
  EXPECT_NE(status.message().find("gap_ms=15"), std::string::npos) << "names the first difference: "
                                                                    << status.message();
  EXPECT_NE(status.message().find("gap_ms=16"), std::string::npos) << status.message();
  EXPECT_EQ(b.entity_count(), 0u);

  ByteReader re(entity.bytes());
  const Status entity_status = b.LoadEntity("u1", re);
  ASSERT_FALSE(entity_status.ok());
  EXPECT_NE(entity_status.message().find("fingerprint"), std::string::npos) << entity_status.message();
  EXPECT_EQ(b.entity_count(), 0u);

  // A watermark change is a different spec, too; a change of the spec's name or `where` spacing is not.
  EXPECT_NE(SpecFingerprint(AllFeaturesSpec(WatermarkSpec{10, 11})), SpecFingerprint(spec));
  EXPECT_NE(SpecFingerprint(AllFeaturesSpec(std::nullopt)), SpecFingerprint(spec));
  Spec renamed = AllFeaturesSpec(WatermarkSpec{10, 10});
  renamed.name = "another-name";
  EXPECT_EQ(SpecFingerprint(renamed), SpecFingerprint(spec));
  Spec spaced = BaseSpec(std::nullopt), tight = BaseSpec(std::nullopt);
  AddFeature(spaced, "n", AggKind::kCount, "", Lifetime(), "kind   ==  'a'");
  AddFeature(tight, "n", AggKind::kCount, "", Lifetime(), "kind=='a'");
  EXPECT_EQ(SpecFingerprint(spaced), SpecFingerprint(tight));
  Spec precise = BaseSpec(std::nullopt);
  AddFeature(precise, "n", AggKind::kApproxCountDistinct, "x", Lifetime(), "", 12);
  Spec coarse = BaseSpec(std::nullopt);
  AddFeature(coarse, "n", AggKind::kApproxCountDistinct, "x", Lifetime(), "", 11);
  EXPECT_NE(SpecFingerprint(precise), SpecFingerprint(coarse));
}

TEST(EngineStateTest, LoadStateNeedsAFreshEngine) {
  const Spec spec = AllFeaturesSpec(std::nullopt);
  const Stream stream(spec, 11, 20);
  FeatureEngine a(spec);
  uint64_t seq = 0;
  for (const ParsedEvent& e : stream.events) Feed(a, e, &seq);
  ByteWriter w;
  a.SaveState(w);
  ByteReader r(w.bytes());
  const Status status = a.LoadState(r);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("fresh engine"), std::string::npos) << status.message();
}

TEST(EngineStateTest, TruncatedOrDamagedStateFailsCleanly) {
  const Spec spec = AllFeaturesSpec(WatermarkSpec{10, 10});
  const Stream stream(spec, 12, 60);
  FeatureEngine a(spec);
  uint64_t seq = 0;
  for (const ParsedEvent& e : stream.events) Feed(a, e, &seq);
  ByteWriter w;
  a.SaveState(w);
  const std::string bytes = w.bytes();
  ASSERT_GT(bytes.size(), 1000u);

  FeatureEngine b(spec);
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    const std::string prefix = bytes.substr(0, cut);  // Exactly `cut` bytes: overreads would be caught.
    ByteReader r(prefix);
    const Status status = b.LoadState(r);
    ASSERT_FALSE(status.ok()) << "cut at " << cut;
    ASSERT_EQ(b.entity_count(), 0u) << "a failed load leaves the engine fresh";
    ASSERT_EQ(b.counters().admitted, 0u);
    ASSERT_EQ(b.low_watermark_ms(), kNoLow);
  }
  // The same engine then loads the whole state.
  ByteReader whole(bytes);
  ASSERT_TRUE(b.LoadState(whole).ok());
  ExpectSameFeatures({&a, &b}, stream.users, {stream.newest_ms}, "after failed loads");

  // Flipped bytes either fail or load something; nothing crashes, and the result can be queried and fed.
  std::mt19937_64 rng(13);
  for (int round = 0; round < 400; ++round) {
    std::string damaged = bytes;
    for (int flips = 1 + static_cast<int>(rng() % 3); flips > 0; --flips) {
      damaged[rng() % damaged.size()] ^= static_cast<char>(1 + rng() % 255);
    }
    FeatureEngine c(spec);
    ByteReader r(damaged);
    if (c.LoadState(r).ok()) {
      std::vector<Value> values;
      for (const std::string& user : stream.users) c.Query(user, stream.newest_ms + 5, &values);
      uint64_t s = c.counters().admitted;
      for (size_t k = 0; k < 20; ++k) Feed(c, stream.events[k], &s);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Aggregations and windows directly: the cases a random stream might not pin down.
// ---------------------------------------------------------------------------------------------------

template <typename Agg>
typename Agg::Input MustInput(const Value& v, AggContext& ctx) {
  typename Agg::Input input;
  EXPECT_TRUE(Agg::MakeInput(v, ctx, &input));
  return input;
}

TEST(AggregationStateTest, CountDistinctStringsLoadIntoAPoolThatNumbersThemDifferently) {
  AggContext saver;
  CountDistinctAgg::State set;
  for (const char* s : {"x", "y", "z"}) {
    CountDistinctAgg::Add(set, MustInput<CountDistinctAgg>(Value::String(s), saver), 0, 0, saver);
  }
  CountDistinctAgg::Add(set, MustInput<CountDistinctAgg>(Value::Int(1), saver), 0, 0, saver);
  ByteWriter w;
  CountDistinctAgg::Serialize(set, w, saver);

  AggContext loader;  // Already holds other strings, so x, y, z get other ids, in another order.
  for (const char* s : {"q", "z", "w", "y"}) loader.strings.Intern(s);
  CountDistinctAgg::State loaded;
  ByteReader r(w.bytes());
  ASSERT_TRUE(CountDistinctAgg::Deserialize(loaded, r, loader));
  EXPECT_TRUE(r.at_end());
  EXPECT_EQ(CountDistinctAgg::Finalize(loaded, loader).i, 4);
  // Values already present must be found again (the set is searched by binary search on ids).
  for (const char* s : {"x", "y", "z"}) {
    CountDistinctAgg::Add(loaded, MustInput<CountDistinctAgg>(Value::String(s), loader), 0, 0, loader);
  }
  CountDistinctAgg::Add(loaded, MustInput<CountDistinctAgg>(Value::Double(1.0), loader), 0, 0, loader);
  EXPECT_EQ(CountDistinctAgg::Finalize(loaded, loader).i, 4);
  CountDistinctAgg::Add(loaded, MustInput<CountDistinctAgg>(Value::String("w"), loader), 0, 0, loader);
  CountDistinctAgg::Add(loaded, MustInput<CountDistinctAgg>(Value::String("1"), loader), 0, 0, loader);
  EXPECT_EQ(CountDistinctAgg::Finalize(loaded, loader).i, 6);
}

TEST(AggregationStateTest, LastKeepsItsStringTimeAndInputOrder) {
  AggContext saver;
  LastAgg::State last;
  LastAgg::Add(last, MustInput<LastAgg>(Value::String("late"), saver), 100, 7, saver);
  ByteWriter w;
  LastAgg::Serialize(last, w, saver);
  AggContext loader;
  loader.strings.Intern("something else");
  LastAgg::State loaded;
  ByteReader r(w.bytes());
  ASSERT_TRUE(LastAgg::Deserialize(loaded, r, loader));
  EXPECT_EQ(LastAgg::Finalize(loaded, loader).s, "late");
  // A tie in time goes to the later input: seq 6 loses, seq 8 wins.
  LastAgg::Add(loaded, MustInput<LastAgg>(Value::Int(1), loader), 100, 6, loader);
  EXPECT_EQ(LastAgg::Finalize(loaded, loader).s, "late");
  LastAgg::Add(loaded, MustInput<LastAgg>(Value::Int(2), loader), 100, 8, loader);
  EXPECT_EQ(LastAgg::Finalize(loaded, loader).i, 2);
}

TEST(AggregationStateTest, SumKeepsItsExactIntegerPartBeyondInt64) {
  AggContext ctx;
  SumAgg::State sum;
  const int64_t big = std::numeric_limits<int64_t>::max();
  for (int k = 0; k < 3; ++k) SumAgg::Add(sum, Numeric::Int(big), 0, 0, ctx);
  ByteWriter w;
  SumAgg::Serialize(sum, w, ctx);
  SumAgg::State loaded;
  ByteReader r(w.bytes());
  ASSERT_TRUE(SumAgg::Deserialize(loaded, r, ctx));
  for (int k = 0; k < 2; ++k) SumAgg::Add(loaded, Numeric::Int(-big), 0, 0, ctx);
  const Value v = SumAgg::Finalize(loaded, ctx);
  ASSERT_EQ(v.type, ValueType::kInt) << "back within int64: exact again";
  EXPECT_EQ(v.i, big);
  SumAgg::Add(loaded, Numeric::Double(0.5), 0, 0, ctx);
  ByteWriter w2;
  SumAgg::Serialize(loaded, w2, ctx);
  SumAgg::State again;
  ByteReader r2(w2.bytes());
  ASSERT_TRUE(SumAgg::Deserialize(again, r2, ctx));
  EXPECT_DOUBLE_EQ(SumAgg::Finalize(again, ctx).d, static_cast<double>(big) + 0.5);
}

TEST(AggregationStateTest, HyperLogLogSparseAndDenseRoundTrip) {
  for (int precision : {4, 6, 10, 14, 18}) {
    HyperLogLog sketch(precision);
    std::mt19937_64 rng(static_cast<uint64_t>(precision));
    for (size_t count : {size_t{0}, size_t{1}, HyperLogLog::SparseLimit(precision), size_t{3000}}) {
      while (sketch.Estimate() < count && count > 0) sketch.AddHash(rng());
      ByteWriter w;
      sketch.Serialize(w);
      HyperLogLog loaded(precision);
      ByteReader r(w.bytes());
      ASSERT_TRUE(loaded.Deserialize(r, precision)) << precision << " " << count;
      EXPECT_TRUE(r.at_end());
      EXPECT_EQ(loaded.is_sparse(), sketch.is_sparse());
      EXPECT_EQ(loaded.Estimate(), sketch.Estimate());
      ByteWriter again;
      loaded.Serialize(again);
      EXPECT_EQ(again.bytes(), w.bytes());
      // Both continue alike, across the sparse-to-dense switch too.
      HyperLogLog original = sketch;
      for (int k = 0; k < 50; ++k) {
        const uint64_t h = rng();
        original.AddHash(h);
        loaded.AddHash(h);
      }
      EXPECT_EQ(loaded.Estimate(), original.Estimate()) << precision << " " << count;
    }
  }
}

TEST(AggregationStateTest, HyperLogLogRefusesMalformedSketches) {
  HyperLogLog sparse(10);
  sparse.AddHash(5);
  sparse.AddHash(9);
  ByteWriter w;
  sparse.Serialize(w);
  {
    HyperLogLog other(12);
    ByteReader r(w.bytes());
    EXPECT_FALSE(other.Deserialize(r, 12)) << "another precision";
  }
  {
    std::string swapped = w.bytes();  // p, mode, count 2, then hashes 5 and 9: make them descend.
    std::swap(swapped[3], swapped[11]);
    HyperLogLog other(10);
    ByteReader r(swapped);
    EXPECT_FALSE(other.Deserialize(r, 10)) << "unsorted sparse hashes";
  }
  {
    ByteWriter dense;
    dense.PutU8(4);
    dense.PutU8(1);
    std::string registers(16, '\x01');
    registers[3] = static_cast<char>(64 - 4 + 2);  // One more than rank can be at p = 4.
    dense.PutRaw(registers);
    HyperLogLog other(4);
    ByteReader r(dense.bytes());
    EXPECT_FALSE(other.Deserialize(r, 4)) << "a register beyond the largest rank";
  }
}

TEST(WindowStateTest, SessionsBridgedThroughOlderSessionsAfterALoad) {
  // Gap 10. Sessions [0, 5] and [30, 32]; a low watermark that keeps the older one. After a load, an
  // event at 21 (9 before 30) extends the newest session back to [21, 32], and one at 13 (8 after 5 and
  // 8 before 21) then bridges the older session and the newest into one session [0, 32] of 6 events.
  const SessionWindow<CountAgg> window(10);
  AggContext ctx;
  SessionWindow<CountAgg>::State state;
  for (int64_t t : {0, 5, 30, 32}) window.Add(state, {}, t, static_cast<uint64_t>(t), -100, ctx);
  ASSERT_EQ(state.older.size(), 1u);
  ByteWriter w;
  window.Serialize(state, w, ctx);
  SessionWindow<CountAgg>::State loaded;
  ByteReader r(w.bytes());
  ASSERT_TRUE(window.Deserialize(loaded, r, ctx));
  ASSERT_EQ(loaded.older.size(), 1u);
  EXPECT_EQ(loaded.older[0].start, 0);
  EXPECT_EQ(loaded.older[0].end, 5);
  EXPECT_EQ(window.Query(loaded, 32, ctx).i, 2);
  window.Add(loaded, {}, 21, 100, -100, ctx);
  EXPECT_EQ(window.Query(loaded, 32, ctx).i, 3) << "21 is less than the gap before 30";
  EXPECT_EQ(loaded.newest.start, 21);
  ASSERT_EQ(loaded.older.size(), 1u);
  window.Add(loaded, {}, 13, 101, -100, ctx);
  EXPECT_EQ(window.Query(loaded, 32, ctx).i, 6) << "13 bridges the older session into the newest";
  EXPECT_EQ(loaded.newest.start, 0);
  EXPECT_TRUE(loaded.older.empty());
}

TEST(WindowStateTest, ContinuousEntriesKeepTimeOrderAndStrings) {
  const ContinuousWindow<LastAgg> window(100);
  AggContext saver;
  ContinuousWindow<LastAgg>::State state;
  window.Add(state, MustInput<LastAgg>(Value::String("b"), saver), 50, 2, kNoLow, saver);
  window.Add(state, MustInput<LastAgg>(Value::String("a"), saver), 50, 1, kNoLow, saver);
  window.Add(state, MustInput<LastAgg>(Value::Bool(true), saver), 10, 3, kNoLow, saver);
  ByteWriter w;
  window.Serialize(state, w, saver);
  AggContext loader;
  loader.strings.Intern("b");
  ContinuousWindow<LastAgg>::State loaded;
  ByteReader r(w.bytes());
  ASSERT_TRUE(window.Deserialize(loaded, r, loader));
  ASSERT_EQ(loaded.size(), 3u);
  EXPECT_EQ(loaded[0].time, 10);
  EXPECT_EQ(loaded[1].seq, 1u);
  EXPECT_EQ(window.Query(loaded, 60, loader).s, "b") << "time 50, seq 2 is the latest";
  EXPECT_EQ(window.Query(loaded, 149, loader).s, "b");
  EXPECT_EQ(window.Query(loaded, 150, loader).type, ValueType::kNull) << "all three expired";
  window.Add(loaded, MustInput<LastAgg>(Value::String("c"), loader), 50, 9, kNoLow, loader);
  EXPECT_EQ(window.Query(loaded, 60, loader).s, "c");

  // Entries out of order are refused.
  std::string swapped;
  {
    ContinuousWindow<LastAgg>::State bad = state;
    std::swap(bad[0], bad[2]);
    ByteWriter bw;
    window.Serialize(bad, bw, saver);
    swapped = bw.bytes();
  }
  ContinuousWindow<LastAgg>::State refused;
  ByteReader rr(swapped);
  EXPECT_FALSE(window.Deserialize(refused, rr, loader));
}

TEST(WindowStateTest, TiledKeepsItsTilesAndRefusesDisorder) {
  const TiledWindow<SumAgg> window(10, 3);
  AggContext ctx;
  TiledWindow<SumAgg>::State state;
  for (int64_t t : {-15, 3, 12, 25}) window.Add(state, Numeric::Int(t), t, 0, kNoLow, ctx);
  ASSERT_EQ(state.size(), 3u);  // Tiles 0, 1, 2; tile -2 expired.
  ByteWriter w;
  window.Serialize(state, w, ctx);
  TiledWindow<SumAgg>::State loaded;
  ByteReader r(w.bytes());
  ASSERT_TRUE(window.Deserialize(loaded, r, ctx));
  EXPECT_EQ(window.Query(loaded, 25, ctx).i, 3 + 12 + 25);
  EXPECT_EQ(window.Query(loaded, 30, ctx).i, 12 + 25);
  window.Add(loaded, Numeric::Int(1), 5, 0, kNoLow, ctx);  // Out of order, into tile 0.
  EXPECT_EQ(window.Query(loaded, 29, ctx).i, 3 + 1 + 12 + 25);

  ByteWriter bad;
  bad.PutVarint(2);
  for (int64_t index : {4, 4}) {
    bad.PutSignedVarint(index);
    SumAgg::Serialize(SumAgg::State{}, bad, ctx);
  }
  TiledWindow<SumAgg>::State refused;
  ByteReader rb(bad.bytes());
  EXPECT_FALSE(window.Deserialize(refused, rb, ctx)) << "duplicate tiles";
}

}  // namespace
}  // namespace freshet

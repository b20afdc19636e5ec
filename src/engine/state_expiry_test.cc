// Tests for state expiry (spec `ttl`): lives decided in input order against the low watermark, queries that
// answer empty windows once an entity is idle for longer than the ttl, ExpireIdle returning indices for reuse,
// and saved state that keeps all of it. The comparison with the brute-force reference over generated workloads is
// tests/state_expiry_test.py; these pin the rule's edges.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "engine/feature_engine.h"
#include "engine/test_specs.h"
#include "event/event_parser.h"

namespace freshet {
namespace {

constexpr int64_t kTtl = 100;

// Watermark delay 10 (5 + 5), ttl 100; a lifetime count and sum of v, a sliding count over 50.
Spec ExpirySpec() {
  Spec spec = test_specs::BaseSpec(WatermarkSpec{5, 5}, "expiry");
  spec.ttl_ms = kTtl;
  test_specs::AddFeature(spec, "n", AggKind::kCount, "", WindowSpec{});
  test_specs::AddFeature(spec, "total", AggKind::kSum, "v", WindowSpec{});
  test_specs::AddFeature(spec, "n_50", AggKind::kCount, "", WindowSpec{WindowKind::kSliding, 50, 0, 0});
  return spec;
}

class Feeder {
 public:
  explicit Feeder(const Spec& spec) : spec_(spec) {}
  // Admits, extracts and applies one event of `user` at time t with v = t; false when late.
  bool Feed(FeatureEngine& engine, const std::string& user, int64_t t) {
    ParsedEvent event;
    event.time_ms = t;
    event.entity = user;
    event.slots.assign(spec_.fields.size(), Value::Missing());
    event.slots[kEntitySlot] = Value::String(user);
    event.slots[kTimestampSlot] = Value::Int(t);
    event.slots[spec_.features[1].field_slot] = Value::Int(t);
    if (!engine.Admit(t)) return false;
    PendingEvent pending;
    engine.Extract(event, seq_++, &pending);
    engine.Apply(pending, engine.low_watermark_ms());
    return true;
  }

 private:
  const Spec& spec_;
  uint64_t seq_ = 0;
};

int64_t Count(const FeatureEngine& engine, const std::string& user, int64_t t) {
  std::vector<Value> values;
  engine.Query(user, t, &values);
  return values[0].i;
}

TEST(StateExpiry, QueriesMoreThanTtlAfterTheNewestEventAnswerEmptyWindows) {
  const Spec spec = ExpirySpec();
  FeatureEngine engine(spec);
  Feeder feed(spec);
  ASSERT_TRUE(feed.Feed(engine, "u", 1000));
  ASSERT_TRUE(feed.Feed(engine, "u", 1040));
  EXPECT_EQ(Count(engine, "u", 1040 + kTtl), 2);      // Idle exactly ttl: still alive.
  EXPECT_EQ(Count(engine, "u", 1040 + kTtl + 1), 0);  // Idle longer: the lifetime count too.
  std::vector<Value> values;
  engine.Query("u", 5000, &values);
  EXPECT_EQ(values[1].i, 0);
  EXPECT_EQ(engine.counters().expired, 0u);  // Nothing has expired yet: L is 1030.
}

TEST(StateExpiry, AnEventAfterTheWatermarkPassedTheTtlStartsANewLife) {
  const Spec spec = ExpirySpec();
  FeatureEngine engine(spec);
  Feeder feed(spec);
  ASSERT_TRUE(feed.Feed(engine, "u", 1000));
  ASSERT_TRUE(feed.Feed(engine, "u", 1050));
  // L after this event: 1161 - 10 = 1151 > 1050 + 100: the old life is over.
  ASSERT_TRUE(feed.Feed(engine, "u", 1161));
  EXPECT_EQ(Count(engine, "u", 1161), 1);
  EXPECT_EQ(engine.counters().expired, 1u);
  // An out-of-order event of the new life (not late: 1155 >= L) joins it.
  ASSERT_TRUE(feed.Feed(engine, "u", 1155));
  EXPECT_EQ(Count(engine, "u", 1161), 2);
}

TEST(StateExpiry, AGapTheWatermarkHasNotPassedStaysInOneLife) {
  const Spec spec = ExpirySpec();
  FeatureEngine engine(spec);
  Feeder feed(spec);
  ASSERT_TRUE(feed.Feed(engine, "u", 1000));
  // 1105 - 1000 > ttl, but L = 1095 has not passed 1000 + 100: the same life (an event at 1095..1099 could
  // still arrive and bridge the gap).
  ASSERT_TRUE(feed.Feed(engine, "u", 1105));
  EXPECT_EQ(Count(engine, "u", 1105), 2);
  EXPECT_EQ(engine.counters().expired, 0u);
  // As of a time inside the gap, more than ttl after 1000, the entity had expired; the engine cannot tell
  // from its state alone, and says so.
  EXPECT_FALSE(engine.ExpiryExactAsOf(engine.FindEntity("u"), 1101));
  EXPECT_TRUE(engine.ExpiryExactAsOf(engine.FindEntity("u"), 1105));
}

TEST(StateExpiry, ExpireIdleDropsEntitiesAndReusesTheirIndices) {
  const Spec spec = ExpirySpec();
  FeatureEngine engine(spec);
  Feeder feed(spec);
  ASSERT_TRUE(feed.Feed(engine, "a", 1000));
  ASSERT_TRUE(feed.Feed(engine, "b", 1010));
  ASSERT_TRUE(feed.Feed(engine, "c", 1200));  // L = 1190: a and b are idle for longer than ttl.
  const uint32_t a = *engine.FindEntity("a");
  std::vector<uint32_t> dropped;
  EXPECT_EQ(engine.ExpireIdle(&dropped), 2u);
  EXPECT_EQ(dropped.size(), 2u);
  EXPECT_EQ(engine.live_entity_count(), 1u);
  EXPECT_EQ(engine.counters().expired, 2u);
  EXPECT_FALSE(engine.FindEntity("a"));
  EXPECT_FALSE(engine.entity_live(a));
  EXPECT_EQ(Count(engine, "a", 1200), 0);
  // A new entity takes a freed index, with fresh states; the one that comes back starts from nothing.
  ASSERT_TRUE(feed.Feed(engine, "d", 1201));
  ASSERT_TRUE(feed.Feed(engine, "a", 1202));
  EXPECT_EQ(engine.entity_count(), 3u);
  EXPECT_EQ(Count(engine, "d", 1201), 1);
  EXPECT_EQ(Count(engine, "a", 1202), 1);
  EXPECT_EQ(engine.counters().expired, 2u);  // Dropped entities are not counted again when they return.
  EXPECT_EQ(engine.ExpireIdle(), 0u);
}

TEST(StateExpiry, SavedStateKeepsLivesFreeIndicesAndTheCounter) {
  const Spec spec = ExpirySpec();
  FeatureEngine engine(spec);
  Feeder feed(spec);
  for (int k = 0; k < 6; ++k) ASSERT_TRUE(feed.Feed(engine, "u" + std::to_string(k), 1000 + k));
  ASSERT_TRUE(feed.Feed(engine, "u0", 1100));
  ASSERT_TRUE(feed.Feed(engine, "w", 1120));  // L = 1110: u1..u5 idle for longer than ttl.
  ASSERT_EQ(engine.ExpireIdle(), 5u);
  std::string bytes;
  ByteWriter out(&bytes);
  engine.SaveState(out);
  FeatureEngine restored(spec);
  ByteReader in(bytes);
  ASSERT_TRUE(restored.LoadState(in).ok());
  EXPECT_EQ(restored.entity_count(), engine.entity_count());
  EXPECT_EQ(restored.live_entity_count(), 2u);
  EXPECT_EQ(restored.counters().expired, 5u);
  // Both continue alike: new entities take the same indices, u0's life and its expiry edge are kept.
  Feeder feed_restored(spec);
  for (FeatureEngine* e : {&engine, &restored}) {
    Feeder& f = e == &engine ? feed : feed_restored;
    ASSERT_TRUE(f.Feed(*e, "x", 1130));
    ASSERT_TRUE(f.Feed(*e, "y", 1131));
  }
  EXPECT_EQ(*restored.FindEntity("x"), *engine.FindEntity("x"));
  EXPECT_EQ(*restored.FindEntity("y"), *engine.FindEntity("y"));
  EXPECT_EQ(Count(restored, "u0", 1200), 2);
  EXPECT_EQ(Count(restored, "u0", 1201), 0);
  // One entity's state (the Redis blob) carries its newest event too.
  std::string blob;
  ByteWriter blob_out(&blob);
  engine.SaveEntity(*engine.FindEntity("u0"), blob_out);
  FeatureEngine scratch(spec);
  ByteReader blob_in(blob);
  ASSERT_TRUE(scratch.LoadEntity("u0", blob_in).ok());
  EXPECT_EQ(Count(scratch, "u0", 1200), 2);
  EXPECT_EQ(Count(scratch, "u0", 1201), 0);
}

TEST(StateExpiry, TheTtlIsPartOfTheFingerprint) {
  Spec with = ExpirySpec();
  Spec without = ExpirySpec();
  without.ttl_ms.reset();
  EXPECT_NE(SpecFingerprint(with), SpecFingerprint(without));
}

}  // namespace
}  // namespace freshet

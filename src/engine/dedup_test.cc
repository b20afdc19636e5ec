// Deduplicator: the rule by hand-worked cases, against a brute-force statement of the rule over random streams,
// its bound on memory, and its saved state.
#include "engine/dedup.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace freshet {
namespace {

constexpr int64_t kMin = std::numeric_limits<int64_t>::min();

Value Id(std::string_view text) { return Value::String(text); }

TEST(DeduplicatorTest, SameEntityAndIdWithinIsADuplicateInEitherDirection) {
  Deduplicator dedup(/*within_ms=*/100, /*watermark_delay_ms=*/0);
  EXPECT_TRUE(dedup.Admit("u1", Id("e1"), 1000));
  EXPECT_FALSE(dedup.Admit("u1", Id("e1"), 1000));  // An exact resend.
  EXPECT_FALSE(dedup.Admit("u1", Id("e1"), 1100));  // |t - t'| = within: still one event.
  EXPECT_FALSE(dedup.Admit("u1", Id("e1"), 900));   // Earlier works too.
  EXPECT_TRUE(dedup.Admit("u2", Id("e1"), 1000));   // Another entity: another event.
  EXPECT_TRUE(dedup.Admit("u1", Id("e2"), 1000));   // Another id.
  EXPECT_EQ(dedup.size(), 3u);
  EXPECT_EQ(dedup.max_time_ms(), 1000);  // Duplicates did not move M.
}

TEST(DeduplicatorTest, FartherThanWithinIsAnotherEventAndBothAreRemembered) {
  Deduplicator dedup(100, /*watermark_delay_ms=*/1000);
  EXPECT_TRUE(dedup.Admit("u1", Id("e1"), 1000));
  EXPECT_TRUE(dedup.Admit("u1", Id("e1"), 1101));  // 101 apart.
  EXPECT_EQ(dedup.size(), 2u);
  EXPECT_FALSE(dedup.Admit("u1", Id("e1"), 1150));  // Near the second.
  EXPECT_FALSE(dedup.Admit("u1", Id("e1"), 950));   // Near the first.
  EXPECT_TRUE(dedup.Admit("u1", Id("e1"), 1202));   // 101 past the second: a third.
  EXPECT_EQ(dedup.size(), 3u);
}

TEST(DeduplicatorTest, IntegerIdsAreTheirDecimalText) {
  Deduplicator dedup(100, 0);
  EXPECT_TRUE(dedup.Admit("u1", Value::Int(42), 1000));
  EXPECT_FALSE(dedup.Admit("u1", Id("42"), 1000));
  EXPECT_TRUE(dedup.Admit("u1", Value::Int(-7), 1000));
  EXPECT_FALSE(dedup.Admit("u1", Id("-7"), 1000));
  EXPECT_TRUE(dedup.Admit("u1", Id("042"), 1000));  // Text, not a number: "042" is not 42.
  std::string text;
  ASSERT_TRUE(Deduplicator::IdText(Value::Int(std::numeric_limits<int64_t>::min()), &text));
  EXPECT_EQ(text, "-9223372036854775808");
}

TEST(DeduplicatorTest, ValuesThatAreNoIdNeverMakeDuplicatesAndAreNotRemembered) {
  Deduplicator dedup(100, 0);
  for (const Value& v : {Value::Missing(), Value::Null(), Id(""), Value::Double(42.0), Value::Double(42.5),
                         Value::Bool(true), Value::Composite()}) {
    EXPECT_TRUE(dedup.Admit("u1", v, 1000));
    EXPECT_TRUE(dedup.Admit("u1", v, 1000));
    std::string text;
    EXPECT_FALSE(Deduplicator::IdText(v, &text));
  }
  EXPECT_EQ(dedup.size(), 0u);
  EXPECT_EQ(dedup.max_time_ms(), 1000);  // They are accepted: M moves.
}

TEST(DeduplicatorTest, EntityAndIdDoNotRunTogether) {
  Deduplicator dedup(100, 0);
  EXPECT_TRUE(dedup.Admit("a", Id("bc"), 1000));
  EXPECT_TRUE(dedup.Admit("ab", Id("c"), 1000));
  EXPECT_TRUE(dedup.Admit(std::string_view("a\0b", 3), Id("c"), 1000));
  EXPECT_TRUE(dedup.Admit("a", Id(std::string_view("\0bc", 3)), 1000));
  EXPECT_FALSE(dedup.Admit("ab", Id("c"), 1000));
}

TEST(DeduplicatorTest, WithoutAWatermarkAResendMoreThanWithinBehindTheNewestIsNotRecognized) {
  Deduplicator dedup(100, 0);
  EXPECT_TRUE(dedup.Admit("u1", Id("e1"), 1000));
  EXPECT_TRUE(dedup.Admit("u2", Id("x"), 1100));  // M = 1100: e1 at 1000 = M - within, still remembered.
  EXPECT_FALSE(dedup.Admit("u1", Id("e1"), 1000));
  EXPECT_TRUE(dedup.Admit("u2", Id("y"), 1101));  // M = 1101: e1 is past the bound and forgotten.
  EXPECT_EQ(dedup.size(), 2u);
  EXPECT_TRUE(dedup.Admit("u1", Id("e1"), 1000));  // So its resend is accepted.
}

TEST(DeduplicatorTest, WithAWatermarkIdsAreKeptForWithinPlusTheDelay) {
  Deduplicator dedup(100, /*watermark_delay_ms=*/50);
  EXPECT_TRUE(dedup.Admit("u1", Id("e1"), 1000));
  EXPECT_TRUE(dedup.Admit("u2", Id("x"), 1150));  // Bound 1000: kept; an event not late (>= 1100) can match it.
  EXPECT_EQ(dedup.size(), 2u);
  EXPECT_TRUE(dedup.IsDuplicate("u1", Id("e1"), 1100));
  EXPECT_TRUE(dedup.Admit("u2", Id("y"), 1151));  // Bound 1001: e1 goes; no event that is not late (>= 1101)
  EXPECT_EQ(dedup.size(), 2u);                    // could have matched it.
  EXPECT_FALSE(dedup.IsDuplicate("u1", Id("e1"), 1100));
}

TEST(DeduplicatorTest, IsDuplicateChangesNothing) {
  Deduplicator dedup(100, 0);
  EXPECT_FALSE(dedup.IsDuplicate("u1", Id("e1"), 1000));
  EXPECT_EQ(dedup.size(), 0u);
  EXPECT_EQ(dedup.max_time_ms(), kMin);
  EXPECT_TRUE(dedup.Admit("u1", Id("e1"), 1000));
  EXPECT_TRUE(dedup.IsDuplicate("u1", Id("e1"), 1050));
  EXPECT_EQ(dedup.size(), 1u);
}

// The rule as README states it, computed from scratch for every event: the accepted events so far, the
// lateness rule, and a scan. Returns per event: 'a'ccepted, 'l'ate or 'd'uplicate.
std::string BruteForce(const std::vector<std::tuple<std::string, std::string, int64_t>>& events, int64_t within,
                       std::optional<int64_t> delay) {
  std::vector<std::tuple<std::string, std::string, int64_t>> accepted;
  std::string out;
  int64_t max_time = kMin;
  for (const auto& [entity, id, t] : events) {
    if (delay && max_time != kMin && t < max_time - *delay) {
      out += 'l';
      continue;
    }
    bool duplicate = false;
    for (const auto& [e2, id2, t2] : accepted) {
      const bool remembered = max_time == kMin || t2 >= max_time - within - delay.value_or(0);
      duplicate = duplicate || (e2 == entity && id2 == id && remembered && std::abs(t - t2) <= within);
    }
    if (duplicate) {
      out += 'd';
      continue;
    }
    accepted.emplace_back(entity, id, t);
    max_time = std::max(max_time, t);
    out += 'a';
  }
  return out;
}

TEST(DeduplicatorTest, AgreesWithTheRuleComputedFromScratchOnRandomStreams) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 200; ++round) {
    const int64_t within = 1 + static_cast<int64_t>(rng() % 50);
    const std::optional<int64_t> delay =
        rng() % 2 == 0 ? std::nullopt : std::optional<int64_t>(static_cast<int64_t>(rng() % 30));
    std::vector<std::tuple<std::string, std::string, int64_t>> events;
    int64_t clock = 0;
    for (int k = 0; k < 300; ++k) {
      clock += static_cast<int64_t>(rng() % 4);
      const int64_t t = clock - static_cast<int64_t>(rng() % 80);  // Out of order, sometimes far.
      events.emplace_back("u" + std::to_string(rng() % 3), "e" + std::to_string(rng() % 12), t);
    }
    Deduplicator dedup(within, delay.value_or(0));
    std::string got;
    int64_t max_time = kMin;
    for (const auto& [entity, id, t] : events) {
      if (delay && max_time != kMin && t < max_time - *delay) {  // FeatureEngine::IsLate.
        got += 'l';
      } else if (!dedup.Admit(entity, Id(id), t)) {
        got += 'd';
      } else {
        max_time = std::max(max_time, t);
        got += 'a';
      }
    }
    ASSERT_EQ(got, BruteForce(events, within, delay)) << "round " << round;
  }
}

TEST(DeduplicatorTest, MemoryStaysWithinTheBoundOverALongStream) {
  // One new id per millisecond, events up to `delay` out of order: about within + 2 * delay ids at a time.
  const int64_t within = 1000, delay = 200;
  Deduplicator dedup(within, delay);
  std::mt19937_64 rng(3);
  size_t most = 0;
  for (int64_t t = 0; t < 200000; ++t) {
    const int64_t time = t - static_cast<int64_t>(rng() % delay);
    ASSERT_TRUE(dedup.Admit("u" + std::to_string(t % 7), Value::Int(t), time));
    most = std::max(most, dedup.size());
  }
  EXPECT_GE(most, static_cast<size_t>(within));
  EXPECT_LE(most, static_cast<size_t>(within + 2 * delay + 1));
  EXPECT_GT(dedup.MemoryBytes(), dedup.size() * 48);
}

TEST(DeduplicatorTest, SavedStateLoadsIntoAnEquivalentDeduplicator) {
  Deduplicator dedup(100, 10);
  for (int k = 0; k < 50; ++k) ASSERT_TRUE(dedup.Admit("u" + std::to_string(k % 3), Value::Int(k % 20), 10 * k));
  ASSERT_TRUE(dedup.Admit("u1", Id("a-rather-long-event-id-of-36-characters"), 480));
  std::string bytes;
  ByteWriter out(&bytes);
  dedup.SaveState(out);

  Deduplicator loaded(100, 10);
  ASSERT_TRUE(loaded.Admit("stale", Id("x"), 5));  // Replaced by the load.
  ByteReader in(bytes);
  ASSERT_TRUE(loaded.LoadState(in).ok());
  EXPECT_TRUE(in.at_end());
  EXPECT_EQ(loaded.size(), dedup.size());
  EXPECT_EQ(loaded.max_time_ms(), dedup.max_time_ms());
  std::string again;
  ByteWriter again_out(&again);
  loaded.SaveState(again_out);
  EXPECT_EQ(again, bytes);
  EXPECT_TRUE(loaded.IsDuplicate("u1", Id("a-rather-long-event-id-of-36-characters"), 480));
  EXPECT_FALSE(loaded.IsDuplicate("stale", Id("x"), 5));
  // Both go on alike.
  for (int k = 40; k < 70; ++k) {
    const std::string entity = "u" + std::to_string(k % 3);
    const bool expected = dedup.Admit(entity, Value::Int(k % 20), 10 * k);
    EXPECT_EQ(loaded.Admit(entity, Value::Int(k % 20), 10 * k), expected) << k;
  }
  EXPECT_EQ(loaded.size(), dedup.size());
}

TEST(DeduplicatorTest, LoadingUnderAShorterWithinForgetsWhatItNoLongerCovers) {
  Deduplicator dedup(1000, 0);
  ASSERT_TRUE(dedup.Admit("u1", Id("old"), 1000));
  ASSERT_TRUE(dedup.Admit("u1", Id("new"), 1900));
  std::string bytes;
  ByteWriter out(&bytes);
  dedup.SaveState(out);
  Deduplicator shorter(100, 0);
  ByteReader in(bytes);
  ASSERT_TRUE(shorter.LoadState(in).ok());
  EXPECT_EQ(shorter.size(), 1u);  // 1000 < 1900 - 100.
  EXPECT_FALSE(shorter.Admit("u1", Id("new"), 1900));
  EXPECT_TRUE(shorter.Admit("u1", Id("old"), 1000));
}

TEST(DeduplicatorTest, TruncatedOrDamagedStateFailsCleanlyAndLeavesItEmpty) {
  Deduplicator dedup(100, 0);
  for (int k = 0; k < 10; ++k) ASSERT_TRUE(dedup.Admit("u1", Value::Int(k), 1000 + k));
  std::string bytes;
  ByteWriter out(&bytes);
  dedup.SaveState(out);
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    Deduplicator loaded(100, 0);
    ByteReader in(std::string_view(bytes).substr(0, cut));
    EXPECT_FALSE(loaded.LoadState(in).ok()) << cut;
    EXPECT_EQ(loaded.size(), 0u);
    EXPECT_EQ(loaded.max_time_ms(), kMin);
  }
  std::string other_version = bytes;
  other_version[0] = 9;
  Deduplicator loaded(100, 0);
  ByteReader in(other_version);
  Status status = loaded.LoadState(in);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("version 9"), std::string::npos) << status.message();
}

}  // namespace
}  // namespace freshet

#include "common/time.h"

#include <gtest/gtest.h>

namespace freshet {
namespace {

TEST(Duration, ParsesEveryUnit) {
  EXPECT_EQ(*ParseDurationMs("500ms"), 500);
  EXPECT_EQ(*ParseDurationMs("5s"), 5000);
  EXPECT_EQ(*ParseDurationMs("30m"), 1800000);
  EXPECT_EQ(*ParseDurationMs("1h"), 3600000);
  EXPECT_EQ(*ParseDurationMs("2d"), 172800000);
}

TEST(Duration, RejectsWithAHint) {
  for (const char* bad : {"", "30", "m", "-5m", "0s", "1.5h", "5 m", "5M", "99999999999999999999d"}) {
    Result<int64_t> r = ParseDurationMs(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.status().message().find("ms, s, m, h, d"), std::string::npos) << r.status().message();
  }
}

TEST(Duration, FormatsInTheLargestExactUnit) {
  EXPECT_EQ(FormatDuration(1800000), "30m");
  EXPECT_EQ(FormatDuration(1500), "1500ms");
  EXPECT_EQ(FormatDuration(86400000), "1d");
}

TEST(Rfc3339, ParsesOffsetsAndFractions) {
  EXPECT_EQ(*ParseRfc3339Ms("1970-01-01T00:00:00Z"), 0);
  EXPECT_EQ(*ParseRfc3339Ms("2026-01-01T00:00:00Z"), 1767225600000);
  EXPECT_EQ(*ParseRfc3339Ms("2026-01-01T01:00:00.250+01:00"), 1767225600250);
  EXPECT_EQ(*ParseRfc3339Ms("2025-12-31T19:00:00-05:00"), 1767225600000);
  EXPECT_EQ(*ParseRfc3339Ms("2026-01-01t00:00:00.1239z"), 1767225600123);  // Truncated, not rounded.
  EXPECT_EQ(*ParseRfc3339Ms("2026-01-01 00:00:00.5Z"), 1767225600500);
  EXPECT_EQ(*ParseRfc3339Ms("1969-12-31T23:59:59.999Z"), -1);
  EXPECT_EQ(*ParseRfc3339Ms("2024-02-29T00:00:00Z"), 1709164800000);
}

TEST(Rfc3339, RejectsInvalidDates) {
  for (const char* bad : {"2026-01-01T00:00:00", "2026-02-30T00:00:00Z", "2023-02-29T00:00:00Z", "2026-13-01T00:00:00Z",
                          "2026-01-01T24:00:00Z", "2026-01-01", "2026-01-01T00:00:00Zjunk", "2026-01-01T00:00:00.Z",
                          "2026-01-01T00:00:00+0100", "yesterday", ""}) {
    EXPECT_FALSE(ParseRfc3339Ms(bad).ok()) << bad;
  }
}

TEST(Rfc3339, FormatRoundTrips) {
  for (int64_t ms : {int64_t{0}, int64_t{-1}, int64_t{1767225600123}, kMaxTimeMs, kMinTimeMs, int64_t{951782400000}}) {
    EXPECT_EQ(*ParseRfc3339Ms(FormatRfc3339(ms)), ms) << FormatRfc3339(ms);
  }
  EXPECT_EQ(FormatRfc3339(1767225600123), "2026-01-01T00:00:00.123Z");
}

TEST(FloorDiv, RoundsTowardNegativeInfinity) {
  EXPECT_EQ(FloorDiv(7, 2), 3);
  EXPECT_EQ(FloorDiv(-7, 2), -4);
  EXPECT_EQ(FloorDiv(-8, 2), -4);
  EXPECT_EQ(FloorDiv(0, 60000), 0);
  EXPECT_EQ(FloorDiv(-1, 60000), -1);
}

}  // namespace
}  // namespace freshet

// Event time and durations. All times in Freshet are int64 milliseconds since the Unix epoch (UTC).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace freshet {

// Earliest and latest event times accepted: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z.
inline constexpr int64_t kMinTimeMs = -62135596800000LL;
inline constexpr int64_t kMaxTimeMs = 253402300799999LL;

// Parses a duration: a positive integer and a unit, one of ms, s, m, h, d ("30m", "1h", "500ms").
// The error message says what was wrong and what is valid.
Result<int64_t> ParseDurationMs(std::string_view text);

// Formats a duration in the largest unit that divides it exactly ("30m", "1500ms").
std::string FormatDuration(int64_t ms);

// Parses an RFC 3339 timestamp with a mandatory offset or Z, e.g. "2024-03-01T12:00:00.250Z" or
// "2024-03-01T13:00:00+01:00". Fractions beyond milliseconds are truncated toward the past.
Result<int64_t> ParseRfc3339Ms(std::string_view text);

// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision ("2024-03-01T12:00:00.250Z").
std::string FormatRfc3339(int64_t ms);

// The wall clock (system_clock) as Unix epoch milliseconds.
int64_t WallClockMs();

// The monotonic clock (steady_clock) in nanoseconds since its epoch: arrival stamps and durations within one boot.
int64_t SteadyClockNs();

// Parses a time given by a user: epoch milliseconds (an integer, years 0001-9999) or RFC 3339.
Result<int64_t> ParseTimeText(std::string_view text);

// Floor division, so tiles align to the epoch for negative times too.
inline int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

}  // namespace freshet

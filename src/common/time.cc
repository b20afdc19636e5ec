#include "common/time.h"

#include <charconv>
#include <chrono>
#include <cstdio>

namespace freshet {
namespace {

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

void CivilFromDays(int64_t z, int64_t* y, unsigned* m, unsigned* d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t yy = static_cast<int64_t>(yoe) + era * 400;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = yy + (*m <= 2);
}

bool IsLeap(int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

unsigned DaysInMonth(int64_t y, unsigned m) {
  static constexpr unsigned kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && IsLeap(y) ? 29 : kDays[m - 1];
}

// Reads exactly `n` decimal digits at text[*pos].
bool ReadDigits(std::string_view text, size_t* pos, int n, int* out) {
  if (*pos + n > text.size()) return false;
  int v = 0;
  for (int k = 0; k < n; ++k) {
    char c = text[*pos + k];
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *pos += n;
  *out = v;
  return true;
}

bool Expect(std::string_view text, size_t* pos, char c) {
  if (*pos < text.size() && text[*pos] == c) {
    ++*pos;
    return true;
  }
  return false;
}

}  // namespace

Result<int64_t> ParseDurationMs(std::string_view text) {
  auto invalid = [&](const char* why) {
    return Status::Invalid("invalid duration '" + std::string(text) + "': " + why +
                           "; write an integer and a unit, one of ms, s, m, h, d (e.g. 30m, 1h, 500ms)");
  };
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0) return invalid("it does not start with a positive integer");
  int64_t n = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + digits, n);
  if (ec != std::errc() || ptr != text.data() + digits) return invalid("the number is too large");
  std::string_view unit = text.substr(digits);
  int64_t mult = 0;
  if (unit == "ms") mult = 1;
  else if (unit == "s") mult = 1000;
  else if (unit == "m") mult = 60 * 1000;
  else if (unit == "h") mult = 3600 * 1000;
  else if (unit == "d") mult = 24 * 3600 * 1000;
  else if (unit.empty()) return invalid("the unit is missing");
  else return invalid("unknown unit");
  if (n <= 0) return invalid("it must be greater than zero");
  if (n > (int64_t{1} << 52) / mult) return invalid("it is too large");
  return n * mult;
}

std::string FormatDuration(int64_t ms) {
  static constexpr struct { int64_t mult; const char* unit; } kUnits[] = {
      {24LL * 3600 * 1000, "d"}, {3600LL * 1000, "h"}, {60LL * 1000, "m"}, {1000, "s"}};
  for (const auto& u : kUnits) {
    if (ms != 0 && ms % u.mult == 0) return std::to_string(ms / u.mult) + u.unit;
  }
  return std::to_string(ms) + "ms";
}

Result<int64_t> ParseRfc3339Ms(std::string_view text) {
  auto invalid = [&](const char* why) {
    return Status::Invalid("invalid timestamp '" + std::string(text.substr(0, 64)) + "': " + why +
                           "; use RFC 3339 with an offset or Z (2024-03-01T12:00:00Z, "
                           "2024-03-01T13:00:00.250+01:00) or epoch milliseconds as a JSON integer");
  };
  size_t pos = 0;
  int year, month, day, hour, minute, second;
  if (!ReadDigits(text, &pos, 4, &year) || !Expect(text, &pos, '-') ||
      !ReadDigits(text, &pos, 2, &month) || !Expect(text, &pos, '-') ||
      !ReadDigits(text, &pos, 2, &day)) {
    return invalid("expected a date YYYY-MM-DD");
  }
  if (pos >= text.size() || (text[pos] != 'T' && text[pos] != 't' && text[pos] != ' ')) {
    return invalid("expected 'T' between date and time");
  }
  ++pos;
  if (!ReadDigits(text, &pos, 2, &hour) || !Expect(text, &pos, ':') ||
      !ReadDigits(text, &pos, 2, &minute) || !Expect(text, &pos, ':') ||
      !ReadDigits(text, &pos, 2, &second)) {
    return invalid("expected a time hh:mm:ss");
  }
  if (year < 1 || month < 1 || month > 12 || day < 1 || day > static_cast<int>(DaysInMonth(year, month))) {
    return invalid("the date does not exist");
  }
  if (hour > 23 || minute > 59 || second > 60) return invalid("the time of day is out of range");
  if (second == 60) second = 59;  // A leap second reads as the last millisecond-aligned second before it.
  int millis = 0;
  if (pos < text.size() && text[pos] == '.') {
    ++pos;
    int ndigits = 0;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
      if (ndigits < 3) millis = millis * 10 + (text[pos] - '0');
      ++ndigits;
      ++pos;
    }
    if (ndigits == 0) return invalid("expected digits after '.'");
    for (int k = ndigits; k < 3; ++k) millis *= 10;
  }
  int64_t offset_min = 0;
  if (pos < text.size() && (text[pos] == 'Z' || text[pos] == 'z')) {
    ++pos;
  } else if (pos < text.size() && (text[pos] == '+' || text[pos] == '-')) {
    const int sign = text[pos] == '-' ? -1 : 1;
    ++pos;
    int oh, om;
    if (!ReadDigits(text, &pos, 2, &oh) || !Expect(text, &pos, ':') || !ReadDigits(text, &pos, 2, &om) ||
        oh > 23 || om > 59) {
      return invalid("expected an offset +hh:mm");
    }
    offset_min = sign * (oh * 60 + om);
  } else {
    return invalid("the offset is missing");
  }
  if (pos != text.size()) return invalid("unexpected text after the offset");
  const int64_t days = DaysFromCivil(year, month, day);
  const int64_t ms = ((days * 24 + hour) * 60 + minute - offset_min) * 60000 + second * 1000LL + millis;
  if (ms < kMinTimeMs || ms > kMaxTimeMs) return invalid("it is outside years 0001-9999");
  return ms;
}

std::string FormatRfc3339(int64_t ms) {
  const int64_t days = FloorDiv(ms, 86400000);
  int64_t rem = ms - days * 86400000;
  int64_t y;
  unsigned m, d;
  CivilFromDays(days, &y, &m, &d);
  char buf[96];
  std::snprintf(buf, sizeof(buf), "%04lld-%02u-%02uT%02lld:%02lld:%02lld.%03lldZ", static_cast<long long>(y), m, d,
                static_cast<long long>(rem / 3600000), static_cast<long long>(rem / 60000 % 60),
                static_cast<long long>(rem / 1000 % 60), static_cast<long long>(rem % 1000));
  return buf;
}


Result<int64_t> ParseTimeText(std::string_view text) {
  if (!text.empty() && (std::isdigit(static_cast<unsigned char>(text[0])) || text[0] == '-') &&
      text.find_first_not_of("-0123456789") == std::string_view::npos) {
    int64_t ms = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), ms);
    if (ec == std::errc() && ptr == text.data() + text.size() && ms >= kMinTimeMs && ms <= kMaxTimeMs) return ms;
    return Status::Invalid("'" + std::string(text) + "' is not epoch milliseconds within years 0001-9999");
  }
  return ParseRfc3339Ms(text);
}


int64_t WallClockMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t SteadyClockNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace freshet

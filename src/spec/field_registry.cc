#include "spec/field_registry.h"

#include <charconv>
#include <cmath>

namespace freshet {

namespace {

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// Whether `text` is a number in JSON syntax: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?. Sets *integral when
// it has neither a fraction nor an exponent.
bool IsJsonNumber(std::string_view text, bool* integral) {
  size_t k = 0;
  const auto at = [&](size_t i) { return i < text.size() ? text[i] : '\0'; };
  if (at(k) == '-') ++k;
  if (at(k) == '0') {
    ++k;
  } else if (IsDigit(at(k))) {
    while (IsDigit(at(k))) ++k;
  } else {
    return false;
  }
  *integral = true;
  if (at(k) == '.') {
    ++k;
    if (!IsDigit(at(k))) return false;
    while (IsDigit(at(k))) ++k;
    *integral = false;
  }
  if (at(k) == 'e' || at(k) == 'E') {
    ++k;
    if (at(k) == '+' || at(k) == '-') ++k;
    if (!IsDigit(at(k))) return false;
    while (IsDigit(at(k))) ++k;
    *integral = false;
  }
  return k == text.size();
}

}  // namespace

std::optional<Value> NumberInString(std::string_view text, FieldType type) {
  bool integral = false;
  if (!IsJsonNumber(text, &integral)) return std::nullopt;
  const char* first = text.data();
  const char* last = text.data() + text.size();
  if (integral) {
    int64_t i = 0;
    const auto [end, error] = std::from_chars(first, last, i);
    if (error == std::errc() && end == last) return Value::Int(i);
  }
  if (type == FieldType::kInt) return std::nullopt;  // A fraction, or an integer beyond int64.
  double d = 0;
  const auto [end, error] = std::from_chars(first, last, d);
  if (error != std::errc() || end != last || !std::isfinite(d)) return std::nullopt;
  return Value::Double(d);
}

}  // namespace freshet

// Value: a typed, non-owning view of one field of a parsed event.
//
// Strings point into the parser's buffer and are valid only while the event is being processed;
// operators that keep a value copy what they need (see aggregate/).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace freshet {

enum class ValueType : uint8_t {
  kMissing,    // The field is absent from the event (distinct from a JSON null).
  kNull,
  kBool,
  kInt,        // JSON integer that fits in int64.
  kDouble,     // Any other JSON number (fraction, exponent, or an integer beyond int64).
  kString,
  kComposite,  // A JSON object or array where a scalar was expected.
};

struct Value {
  ValueType type = ValueType::kMissing;
  union {
    bool b;
    int64_t i;
    double d;
  };
  std::string_view s;

  Value() : i(0) {}
  static Value Missing() { return Value(); }
  static Value Null() { Value v; v.type = ValueType::kNull; return v; }
  static Value Bool(bool x) { Value v; v.type = ValueType::kBool; v.b = x; return v; }
  static Value Int(int64_t x) { Value v; v.type = ValueType::kInt; v.i = x; return v; }
  static Value Double(double x) { Value v; v.type = ValueType::kDouble; v.d = x; return v; }
  static Value String(std::string_view x) { Value v; v.type = ValueType::kString; v.s = x; return v; }
  static Value Composite() { Value v; v.type = ValueType::kComposite; return v; }

  bool is_missing() const { return type == ValueType::kMissing; }
  bool is_null() const { return type == ValueType::kNull; }
  bool is_present_non_null() const { return type != ValueType::kMissing && type != ValueType::kNull; }
  bool is_number() const { return type == ValueType::kInt || type == ValueType::kDouble; }
  double as_double() const { return type == ValueType::kInt ? static_cast<double>(i) : d; }
};

// Human-readable name of a value type, for error messages ("expected a number, got string").
const char* ValueTypeName(ValueType type);

}  // namespace freshet

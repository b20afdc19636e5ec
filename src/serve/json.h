// JsonWriter: a small streaming JSON writer for HTTP responses. It appends to a caller's string and
// places commas and colons itself, so building a response reads like its shape:
//
//   std::string body;
//   JsonWriter json(&body);
//   json.BeginObject().Key("entity").String(entity).Key("known").Bool(true).EndObject();
//
// Strings are escaped as JSON requires, invalid UTF-8 becoming U+FFFD (AppendJsonEscaped). Doubles are
// written in the shortest text that reads back to the same double and always look like a double
// ("12.0", not "12"), so that consumers keep the integer/double distinction of feature values; NaN and
// infinities, which JSON cannot express, are written as null.
//
// Not thread-safe; one writer per response. Nesting is limited to 64 levels (an internal check).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/value.h"

namespace freshet {

class JsonWriter {
 public:
  explicit JsonWriter(std::string* out) : out_(out) {}

  JsonWriter& BeginObject();
  JsonWriter& EndObject();
  JsonWriter& BeginArray();
  JsonWriter& EndArray();
  // The key of the next member; must be followed by exactly one value (or Begin...).
  JsonWriter& Key(std::string_view key);

  JsonWriter& String(std::string_view text);
  JsonWriter& Int(int64_t value);
  JsonWriter& Uint(uint64_t value);
  JsonWriter& Double(double value);
  JsonWriter& Bool(bool value);
  JsonWriter& Null();
  // A value that is JSON text already (one value, written by another JsonWriter), appended as it is.
  JsonWriter& Raw(std::string_view json);
  // A feature value: integers, doubles, booleans and strings as such; null, missing and composite as null.
  JsonWriter& FeatureValue(const Value& value);
  // The same for a feature whose value may be a list (AggGivesJsonList in spec/spec.h: top_k, last_k): its string
  // is JSON text already and is written as the array it holds.
  JsonWriter& FeatureValue(const Value& value, bool json_list) {
    return json_list && value.type == ValueType::kString ? Raw(value.s) : FeatureValue(value);
  }

 private:
  // Writes the comma that separates this value from the previous one at the same level, if any.
  void BeforeValue();

  std::string* out_;
  int depth_ = 0;
  uint64_t has_members_ = 0;  // Bit d: the container at depth d already has a member.
  bool after_key_ = false;
};

// Appends `value` to *out as a JSON double (see JsonWriter::Double).
void AppendJsonDouble(double value, std::string* out);

}  // namespace freshet

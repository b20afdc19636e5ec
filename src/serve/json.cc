#include "serve/json.h"

#include <charconv>
#include <cmath>

#include "common/status.h"
#include "event/dead_letters.h"

namespace freshet {

void AppendJsonDouble(double value, std::string* out) {
  if (!std::isfinite(value)) {
    out->append("null");
    return;
  }
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  FRESHET_CHECK(ec == std::errc());
  const std::string_view text(buf, static_cast<size_t>(end - buf));
  out->append(text);
  if (text.find_first_of(".e") == std::string_view::npos) out->append(".0");
}

void JsonWriter::BeforeValue() {
  if (after_key_) {
    after_key_ = false;
    return;
  }
  if (depth_ == 0) return;
  const uint64_t bit = uint64_t{1} << (depth_ - 1);
  if (has_members_ & bit) out_->push_back(',');
  has_members_ |= bit;
}

JsonWriter& JsonWriter::BeginObject() {
  BeforeValue();
  FRESHET_CHECK(depth_ < 64);
  out_->push_back('{');
  ++depth_;
  has_members_ &= ~(uint64_t{1} << (depth_ - 1));
  return *this;
}

JsonWriter& JsonWriter::EndObject() {
  FRESHET_CHECK(depth_ > 0 && !after_key_);
  --depth_;
  out_->push_back('}');
  return *this;
}

JsonWriter& JsonWriter::BeginArray() {
  BeforeValue();
  FRESHET_CHECK(depth_ < 64);
  out_->push_back('[');
  ++depth_;
  has_members_ &= ~(uint64_t{1} << (depth_ - 1));
  return *this;
}

JsonWriter& JsonWriter::EndArray() {
  FRESHET_CHECK(depth_ > 0 && !after_key_);
  --depth_;
  out_->push_back(']');
  return *this;
}

JsonWriter& JsonWriter::Key(std::string_view key) {
  FRESHET_CHECK(!after_key_);
  BeforeValue();
  out_->push_back('"');
  AppendJsonEscaped(key, out_);
  out_->append("\":");
  after_key_ = true;
  return *this;
}

JsonWriter& JsonWriter::String(std::string_view text) {
  BeforeValue();
  out_->push_back('"');
  AppendJsonEscaped(text, out_);
  out_->push_back('"');
  return *this;
}

JsonWriter& JsonWriter::Int(int64_t value) {
  BeforeValue();
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  out_->append(buf, static_cast<size_t>(end - buf));
  return *this;
}

JsonWriter& JsonWriter::Uint(uint64_t value) {
  BeforeValue();
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  out_->append(buf, static_cast<size_t>(end - buf));
  return *this;
}

JsonWriter& JsonWriter::Double(double value) {
  BeforeValue();
  AppendJsonDouble(value, out_);
  return *this;
}

JsonWriter& JsonWriter::Bool(bool value) {
  BeforeValue();
  out_->append(value ? "true" : "false");
  return *this;
}

JsonWriter& JsonWriter::Null() {
  BeforeValue();
  out_->append("null");
  return *this;
}

JsonWriter& JsonWriter::Raw(std::string_view json) {
  BeforeValue();
  out_->append(json);
  return *this;
}

JsonWriter& JsonWriter::FeatureValue(const Value& value) {
  switch (value.type) {
    case ValueType::kInt: return Int(value.i);
    case ValueType::kDouble: return Double(value.d);
    case ValueType::kBool: return Bool(value.b);
    case ValueType::kString: return String(value.s);
    case ValueType::kMissing:
    case ValueType::kNull:
    case ValueType::kComposite: return Null();
  }
  return Null();
}

}  // namespace freshet

// FieldRegistry: the event fields a spec reads, each given a slot number, and what the spec's `schema:`
// declares about each.
//
// The event parser extracts exactly these fields into an array of Values indexed by slot, so that
// `where` expressions and aggregations read a field with one array access instead of a lookup by name.
// Slot 0 is always the entity field and slot 1 the timestamp field.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/value.h"

namespace freshet {

class ValueExpr;

inline constexpr int kEntitySlot = 0;
inline constexpr int kTimestampSlot = 1;

// The type a spec's `schema:` declares for an event field. kAny: no declaration (no schema, or a slot the
// schema does not name), so the field takes whatever the event holds.
enum class FieldType : uint8_t {
  kAny,
  kString,     // JSON text.
  kNumber,     // A JSON number: an integer or a fraction.
  kInt,        // A JSON integer that fits int64.
  kBool,       // true or false.
  kTimestamp,  // The event time: RFC 3339 text or epoch milliseconds as an integer (the timestamp field only).
};

// The schema's name of a type ("number"); "any" for kAny.
inline const char* FieldTypeName(FieldType type) {
  switch (type) {
    case FieldType::kAny: return "any";
    case FieldType::kString: return "string";
    case FieldType::kNumber: return "number";
    case FieldType::kInt: return "int";
    case FieldType::kBool: return "bool";
    case FieldType::kTimestamp: return "timestamp";
  }
  return "any";
}

// Whether a present, non-null value has the declared type. Any value fits kAny.
inline bool ValueFits(FieldType type, const Value& value) {
  switch (type) {
    case FieldType::kAny: return true;
    case FieldType::kString: return value.type == ValueType::kString;
    case FieldType::kNumber: return value.is_number();
    case FieldType::kInt: return value.type == ValueType::kInt;
    case FieldType::kBool: return value.type == ValueType::kBool;
    case FieldType::kTimestamp: return value.type == ValueType::kString || value.type == ValueType::kInt;
  }
  return true;
}

// What the schema says about one slot.
struct FieldSchema {
  FieldType type = FieldType::kAny;
  // A JSON string holding a number ("12.5") is read as that number (see EventParser). Only with kNumber or kInt.
  bool from_string = false;
};

// The number a JSON string holds, as `from_string` reads it: text in JSON number syntax (no spaces, no '+', no
// leading zeros, no NaN or Infinity) is an kInt when it is an integer that fits int64, else a kDouble. With
// `type` kInt only integers that fit int64 convert. nullopt when the text is not such a number.
std::optional<Value> NumberInString(std::string_view text, FieldType type);

class FieldRegistry {
 public:
  // Returns the slot of `dotted_path` ("amount", "device.os"), adding it if new.
  int Intern(std::string_view dotted_path) {
    for (size_t k = 0; k < paths_.size(); ++k) {
      if (paths_[k] == dotted_path) return static_cast<int>(k);
    }
    paths_.emplace_back(dotted_path);
    schemas_.emplace_back();
    return static_cast<int>(paths_.size() - 1);
  }

  // The dotted path of every slot, in slot order.
  const std::vector<std::string>& paths() const { return paths_; }
  size_t size() const { return paths_.size(); }

  // A derived field (the spec's `derive`): the parser computes its slot from the others after reading the
  // event's own fields, in the order they were added, instead of reading it from the event.
  struct Derived {
    int slot;
    std::shared_ptr<const ValueExpr> expr;
  };
  void AddDerived(int slot, std::shared_ptr<const ValueExpr> expr) { derived_.push_back({slot, std::move(expr)}); }
  const std::vector<Derived>& derived() const { return derived_; }
  bool is_derived(int slot) const {
    return std::any_of(derived_.begin(), derived_.end(), [slot](const Derived& d) { return d.slot == slot; });
  }

  // A composite entity key: the slots of its fields, in key order (the first is kEntitySlot); empty for a
  // key of one field. The parser then encodes them into one entity string (common/entity_key.h).
  void SetKeySlots(std::vector<int> slots) { key_slots_ = std::move(slots); }
  const std::vector<int>& key_slots() const { return key_slots_; }
  // A joined field (the spec's `joins`): "profiles.segment" is column "segment" of the row that join `join`
  // finds for the event; the parser fills it from the table (table/table_set.h) before the derived fields.
  struct Joined {
    int slot;
    int join;            // Index in Spec::joins.
    std::string column;  // Dotted path inside the row.
  };
  void AddJoined(int slot, int join, std::string column) { joined_.push_back({slot, join, std::move(column)}); }
  const std::vector<Joined>& joined() const { return joined_; }
  // A looked-up field (the spec's `lookups`): "credit.score" is field "score" of the answer of lookup `lookup`
  // for the event; the parser fills it from the event's lookup answers (lookup/lookup_row.h) before the derived
  // fields. `join` of Joined is the index in Spec::lookups here.
  void AddLookedUp(int slot, int lookup, std::string column) { looked_up_.push_back({slot, lookup, std::move(column)}); }
  const std::vector<Joined>& looked_up() const { return looked_up_; }
  // Whether the parser computes `slot` (derived, joined or looked up) instead of reading it from the event.
  bool is_computed(int slot) const {
    auto names = [slot](const Joined& j) { return j.slot == slot; };
    return is_derived(slot) || std::any_of(joined_.begin(), joined_.end(), names) ||
           std::any_of(looked_up_.begin(), looked_up_.end(), names);
  }

  // What the schema declares for `slot` (kAny and no conversion when nothing).
  const FieldSchema& schema(size_t slot) const { return schemas_[slot]; }
  void SetSchema(size_t slot, FieldSchema schema) { schemas_[slot] = schema; }

 private:
  std::vector<std::string> paths_;
  std::vector<FieldSchema> schemas_;  // Parallel to paths_.
  std::vector<Derived> derived_;
  std::vector<int> key_slots_;
  std::vector<Joined> joined_;
  std::vector<Joined> looked_up_;
};

}  // namespace freshet

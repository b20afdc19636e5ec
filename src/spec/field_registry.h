// FieldRegistry: the event fields a spec reads, each given a slot number.
//
// The event parser extracts exactly these fields into an array of Values indexed by slot, so that
// `where` expressions and aggregations read a field with one array access instead of a lookup by name.
// Slot 0 is always the entity field and slot 1 the timestamp field.
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace freshet {

class ValueExpr;

inline constexpr int kEntitySlot = 0;
inline constexpr int kTimestampSlot = 1;

class FieldRegistry {
 public:
  // Returns the slot of `dotted_path` ("amount", "device.os"), adding it if new.
  int Intern(std::string_view dotted_path) {
    for (size_t k = 0; k < paths_.size(); ++k) {
      if (paths_[k] == dotted_path) return static_cast<int>(k);
    }
    paths_.emplace_back(dotted_path);
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

 private:
  std::vector<std::string> paths_;
  std::vector<Derived> derived_;
};

}  // namespace freshet

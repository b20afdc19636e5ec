// ValueExpr: a compiled `derive` expression, evaluated once per event into a field of its own (a derived
// field), which `where` and `field` then read like any event field.
//
// Grammar (lowest precedence first):
//   or_expr   := and_expr ("or" and_expr)*
//   and_expr  := not_expr ("and" not_expr)*
//   not_expr  := "not" not_expr | cmp_expr
//   cmp_expr  := add_expr [("==" | "!=" | "<" | "<=" | ">" | ">=") add_expr]
//   add_expr  := mul_expr (("+" | "-") mul_expr)*
//   mul_expr  := unary (("*" | "/" | "%") unary)*
//   unary     := "-" unary | primary
//   primary   := number | 'text' | "text" | true | false | null | "(" or_expr ")"
//              | function "(" [or_expr ("," or_expr)*] ")" | field
//   field     := identifier ("." identifier)*   (an event field, an earlier derived field, or the timestamp)
//
// Semantics (the README's "Derived fields" says the same for users):
// - null: a missing field, a JSON null, and a value of a type an operation does not take are null; an
//   operation on null gives null, except `and`, `or`, `if` and `coalesce`.
// - numbers: + - * and % of two integers give an integer (null when it overflows 64 bits); / always gives
//   a double; a division or remainder by zero is null. Integers and doubles mix as doubles.
// - comparisons: numbers by value, strings bytewise, booleans by == and != only; values of two different
//   types are unequal (== false, != true) and not ordered (null).
// - and, or: three-valued (false and null = false, true or null = true, otherwise null); not null = null.
// - the timestamp field is the event's time in epoch milliseconds (an integer), whatever its JSON form.
// - functions: if(c, a, b) (a when c is true, else b), coalesce(a, b, ...) (the first non-null), abs(x),
//   log(x) (natural; null for x <= 0), round(x) and round(x, digits) (half away from zero; an integer stays
//   an integer), lower(s), upper(s) (ASCII letters), length(s) (in Unicode code points), hour_of_day(t)
//   (0-23) and day_of_week(t) (1 = Monday ... 7 = Sunday), both of epoch milliseconds in UTC.
//
// Thread-safety: a ValueExpr is immutable after Parse; Eval may be called from many threads.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/value.h"
#include "spec/field_registry.h"

namespace freshet {

struct ValueNode;  // Defined in value_expr.cc.

// Strings made while evaluating (lower, upper): each in a heap string of its own, so that moving or copying
// the owner leaves the values' views valid.
using OwnedStrings = std::vector<std::shared_ptr<const std::string>>;

class ValueExpr {
 public:
  // Compiles `text`. Field paths are interned into `fields`. On error the message says what is wrong and what
  // would be valid, and *error_offset (if given) receives the 0-based byte offset in `text` of the problem.
  static Result<ValueExpr> Parse(std::string_view text, FieldRegistry& fields, size_t* error_offset = nullptr);

  // Evaluates against one event's slots. `time_ms` is the event's time (what the timestamp field reads as);
  // strings made by the expression are kept in *owned.
  Value Eval(std::span<const Value> slots, int64_t time_ms, OwnedStrings* owned) const;

  // The expression in canonical form, fully parenthesized (for tests and error messages).
  std::string ToString() const;

  // The fields it reads (the timestamp field excluded), each with the byte offset in the text where it is named.
  struct FieldReference {
    std::string path;
    size_t offset;
  };
  std::vector<FieldReference> FieldReferences() const;

  ValueExpr(ValueExpr&&) noexcept;
  ValueExpr& operator=(ValueExpr&&) noexcept;
  ~ValueExpr();

 private:
  explicit ValueExpr(std::unique_ptr<ValueNode> root);
  std::unique_ptr<ValueNode> root_;
};

}  // namespace freshet

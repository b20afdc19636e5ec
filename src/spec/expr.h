// Expr: a compiled `where` expression, evaluated once per event per feature.
//
// Grammar (lowest precedence first):
//   or_expr   := and_expr ("or" and_expr)*
//   and_expr  := not_expr ("and" not_expr)*
//   not_expr  := "not" not_expr | primary
//   primary   := "(" or_expr ")" | operand [ cmp_op operand | "in" "[" literal ("," literal)* "]" ]
//   cmp_op    := "==" | "!=" | "<" | "<=" | ">" | ">="
//   operand   := field | literal
//   field     := identifier ("." identifier)*        (identifier: [A-Za-z_][A-Za-z0-9_]*, not a keyword)
//   literal   := 'text' | "text" | number | true | false | null
//
// Semantics:
// - A comparison or `in` that involves a missing field is false (for != too).
// - Numbers compare by value (1 == 1.0); strings compare by exact text (< is bytewise); booleans and nulls
//   compare for (in)equality only; values of different types are unequal, and ordering them is false.
// - A bare operand used as a condition is true only when it is the boolean true.
//
// Thread-safety: an Expr is immutable after Parse; Eval may be called from many threads.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/value.h"
#include "spec/field_registry.h"

namespace freshet {

struct ExprNode;  // Defined in expr.cc.

// One operand of a condition, as written.
struct ExprOperandInfo {
  bool is_field = false;
  std::string path;                              // A field's dotted path.
  ValueType literal_type = ValueType::kMissing;  // A literal's type: kNull, kBool, kInt, kDouble or kString.
  size_t offset = 0;                             // 0-based byte offset of its text in the expression.
  size_t length = 0;                             // Bytes of its text.
};

// One condition of an expression as written: a comparison, an `in`, or a bare operand tested for true. What
// checks beyond the grammar look at, such as the spec's `schema:` (spec.cc).
struct ExprCondition {
  enum class Kind : uint8_t { kCompare, kIn, kTest };
  Kind kind = Kind::kCompare;
  std::string op;                     // kCompare: "==", "!=", "<", "<=", ">" or ">=".
  ExprOperandInfo lhs;
  ExprOperandInfo rhs;                // kCompare only.
  std::vector<ExprOperandInfo> list;  // kIn: the listed literals.
};

class Expr {
 public:
  // Compiles `text`. Field paths are interned into `fields`; their slots are what Eval reads.
  // On error, the Status message says what is wrong and what would be valid, and `*error_offset`
  // (if not null) receives the 0-based byte offset in `text` where the problem is.
  static Result<Expr> Parse(std::string_view text, FieldRegistry& fields, size_t* error_offset = nullptr);

  // Evaluates against one event's slots (indexed as in the FieldRegistry used by Parse).
  bool Eval(std::span<const Value> slots) const;

  // Every condition, in the order they are written.
  std::vector<ExprCondition> Conditions() const;

  // The expression in canonical form, fully parenthesized (for --explain output and tests).
  std::string ToString() const;

  Expr(Expr&&) noexcept;
  Expr& operator=(Expr&&) noexcept;
  ~Expr();

 private:
  explicit Expr(std::unique_ptr<ExprNode> root);
  std::unique_ptr<ExprNode> root_;
};

}  // namespace freshet

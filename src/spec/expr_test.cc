#include "spec/expr.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace freshet {
namespace {

using Field = std::pair<std::string_view, Value>;

// Parses `text` (which must be valid) and evaluates it against an event holding `event`'s fields;
// fields the expression reads but the event lacks are missing.
bool EvalOn(std::string_view text, std::vector<Field> event) {
  FieldRegistry fields;
  Result<Expr> expr = Expr::Parse(text, fields);
  EXPECT_TRUE(expr.ok()) << "'" << text << "': " << expr.status().message();
  if (!expr.ok()) return false;
  std::vector<Value> slots(fields.size());
  for (const auto& [path, value] : event) {
    for (size_t k = 0; k < fields.paths().size(); ++k) {
      if (fields.paths()[k] == path) slots[k] = value;
    }
  }
  return expr->Eval(slots);
}

std::string Canonical(std::string_view text) {
  FieldRegistry fields;
  Result<Expr> expr = Expr::Parse(text, fields);
  EXPECT_TRUE(expr.ok()) << "'" << text << "': " << expr.status().message();
  return expr.ok() ? expr->ToString() : "<error>";
}

// One expression over the field `x`, the value of x (Missing() to leave it out), and the truth value
// worked out by hand from the semantics in expr.h.
struct Case {
  const char* text;
  Value x;
  bool expected;
};

void RunCases(const std::vector<Case>& cases) {
  for (const Case& c : cases) {
    std::vector<Field> event;
    if (!c.x.is_missing()) event.emplace_back("x", c.x);
    EXPECT_EQ(EvalOn(c.text, event), c.expected)
        << "'" << c.text << "' with x of type " << ValueTypeName(c.x.type);
  }
}

TEST(ExprCompareTest, Integers) {
  RunCases({
      {"x == 5", Value::Int(5), true},    {"x == 5", Value::Int(4), false},  {"x != 5", Value::Int(4), true},
      {"x != 5", Value::Int(5), false},   {"x < 5", Value::Int(4), true},    {"x < 5", Value::Int(5), false},
      {"x < 5", Value::Int(6), false},    {"x <= 5", Value::Int(5), true},   {"x <= 5", Value::Int(6), false},
      {"x > 5", Value::Int(6), true},     {"x > 5", Value::Int(5), false},   {"x >= 5", Value::Int(5), true},
      {"x >= 5", Value::Int(4), false},   {"x > -5", Value::Int(-4), true},  {"x > -5", Value::Int(-6), false},
      {"x>=-5", Value::Int(-5), true},    {"x == 0", Value::Int(0), true},   {"x == -0", Value::Int(0), true},
      {"x == -9223372036854775808", Value::Int(std::numeric_limits<int64_t>::min()), true},
      {"x == 9223372036854775807", Value::Int(std::numeric_limits<int64_t>::max()), true},
  });
}

TEST(ExprCompareTest, IntegersAgainstDoubles) {
  RunCases({
      {"x == 5.0", Value::Int(5), true},
      {"x == 5.5", Value::Int(5), false},
      {"x < 5.5", Value::Int(5), true},
      {"x > 4.5", Value::Int(5), true},
      {"x >= 5.000001", Value::Int(5), false},
      {"x == 5", Value::Double(5.0), true},
      {"x >= 5", Value::Double(4.999), false},
      {"x < 5", Value::Double(4.999), true},
      {"x > -5", Value::Double(-4.5), true},
      {"x < -4", Value::Double(-4.5), true},
      {"x == 1e3", Value::Int(1000), true},
      {"x == 2.5E-1", Value::Double(0.25), true},
      {"x == 1.5e+1", Value::Int(15), true},
      // 2^53 + 1 is not a double; rounding it to one would make these equal.
      {"x == 9007199254740993", Value::Double(9007199254740992.0), false},
      {"x != 9007199254740993", Value::Double(9007199254740992.0), true},
      {"x < 9007199254740993", Value::Double(9007199254740992.0), true},
      {"x > 9007199254740992.0", Value::Int(9007199254740993), true},
      {"x == 9007199254740992.0", Value::Int(9007199254740993), false},
      {"x == 9007199254740992.0", Value::Int(9007199254740992), true},
      // INT64_MAX rounds to 2^63 as a double.
      {"x == 9223372036854775807", Value::Double(9223372036854775808.0), false},
      {"x > 9223372036854775807", Value::Double(9223372036854775808.0), true},
      {"x < -9223372036854775807", Value::Double(-9223372036854775808.0), true},
      {"x == -9223372036854775808", Value::Double(-9223372036854775808.0), true},
      // Integer literals beyond int64 become doubles.
      {"x == 9223372036854775808", Value::Double(9223372036854775808.0), true},
      {"x == 9223372036854775808", Value::Int(std::numeric_limits<int64_t>::max()), false},
      {"x < 9223372036854775808", Value::Int(std::numeric_limits<int64_t>::max()), true},
      {"x > -99999999999999999999", Value::Int(std::numeric_limits<int64_t>::min()), true},
      {"x == 0.1", Value::Double(0.1), true},
      {"x > 1e300", Value::Double(1e301), true},
  });
}

TEST(ExprCompareTest, NaNIsUnorderedAndUnequal) {
  const Value nan = Value::Double(std::numeric_limits<double>::quiet_NaN());
  RunCases({{"x == 1", nan, false}, {"x != 1", nan, true}, {"x < 1", nan, false}, {"x >= 1", nan, false},
            {"x == 1.5", nan, false}, {"x in [1, 2.5]", nan, false}});
}

TEST(ExprCompareTest, Strings) {
  RunCases({
      {"x == 'abc'", Value::String("abc"), true},
      {"x == 'abc'", Value::String("abd"), false},
      {"x == 'abc'", Value::String("ab"), false},
      {"x == 'abc'", Value::String("abcd"), false},
      {"x == 'ABC'", Value::String("abc"), false},
      {"x == \"abc\"", Value::String("abc"), true},
      {"x != 'abc'", Value::String("abd"), true},
      {"x != 'abc'", Value::String("abc"), false},
      {"x == ''", Value::String(""), true},
      {"x == ''", Value::String("a"), false},
      {"x < 'b'", Value::String("a"), true},
      {"x < 'b'", Value::String("b"), false},
      {"x < 'b'", Value::String("ab"), true},
      {"x < 'abc'", Value::String("ab"), true},
      {"x > 'abc'", Value::String("abcd"), true},
      {"x <= 'abc'", Value::String("abc"), true},
      {"x >= 'abc'", Value::String("abb"), false},
      {"x > 'B'", Value::String("a"), true},  // Bytewise: 'a' (0x61) > 'B' (0x42).
      {"x > 'z'", Value::String("\xc3\xa9"), true},  // Bytes compare unsigned: 0xC3 > 'z'.
      {"x == 'caf\xc3\xa9'", Value::String("caf\xc3\xa9"), true},
      {"x == 'it\\'s'", Value::String("it's"), true},
      {"x == \"it's\"", Value::String("it's"), true},
      {"x == \"say \\\"hi\\\"\"", Value::String("say \"hi\""), true},
      {"x == 'a\\\\b'", Value::String("a\\b"), true},
      {"x == 'line\\n'", Value::String("line\n"), true},
      {"x == 'a\\tb'", Value::String("a\tb"), true},
      {"x == 'a\\tb'", Value::String("a\\tb"), false},
      {"x == 'a and b'", Value::String("a and b"), true},
  });
}

TEST(ExprCompareTest, StringWithEmbeddedNulByte) {
  FieldRegistry fields;
  Result<Expr> expr = Expr::Parse(std::string_view("x == 'a\0b'", 10), fields);
  ASSERT_TRUE(expr.ok()) << expr.status().message();
  std::vector<Value> slots = {Value::String(std::string_view("a\0b", 3))};
  EXPECT_TRUE(expr->Eval(slots));
  slots[0] = Value::String(std::string_view("a\0c", 3));
  EXPECT_FALSE(expr->Eval(slots));
}

TEST(ExprCompareTest, BooleansCompareForEqualityOnly) {
  RunCases({
      {"x == true", Value::Bool(true), true},    {"x == true", Value::Bool(false), false},
      {"x != true", Value::Bool(false), true},   {"x != true", Value::Bool(true), false},
      {"x == false", Value::Bool(false), true},  {"x < true", Value::Bool(false), false},
      {"x <= true", Value::Bool(true), false},   {"x > false", Value::Bool(true), false},
      {"x >= false", Value::Bool(false), false},
  });
}

TEST(ExprCompareTest, NullsCompareForEqualityOnly) {
  RunCases({
      {"x == null", Value::Null(), true},  {"x != null", Value::Null(), false}, {"x < null", Value::Null(), false},
      {"x <= null", Value::Null(), false}, {"x >= null", Value::Null(), false}, {"x > null", Value::Null(), false},
      {"x == null", Value::Int(0), false}, {"x != null", Value::Int(0), true},  {"x < null", Value::Int(0), false},
  });
}

TEST(ExprCompareTest, DifferentTypesAreUnequalAndUnordered) {
  RunCases({
      {"x == '5'", Value::Int(5), false},          {"x != '5'", Value::Int(5), true},
      {"x < '5'", Value::Int(4), false},           {"x > '5'", Value::Int(6), false},
      {"x == 1", Value::Bool(true), false},        {"x != 1", Value::Bool(true), true},
      {"x == 0", Value::Bool(false), false},       {"x == true", Value::String("true"), false},
      {"x == 0", Value::Null(), false},            {"x != 0", Value::Null(), true},
      {"x == 'null'", Value::Null(), false},       {"x >= 1", Value::Bool(true), false},
      {"x == 5", Value::String("5"), false},       {"x <= 5", Value::String("5"), false},
  });
}

TEST(ExprCompareTest, MissingFieldMakesEveryComparisonFalse) {
  RunCases({
      {"x == 5", Value::Missing(), false},      {"x != 5", Value::Missing(), false},
      {"x < 5", Value::Missing(), false},       {"x <= 5", Value::Missing(), false},
      {"x > 5", Value::Missing(), false},       {"x >= 5", Value::Missing(), false},
      {"x == 'a'", Value::Missing(), false},    {"x != 'a'", Value::Missing(), false},
      {"x == null", Value::Missing(), false},   {"x != null", Value::Missing(), false},
      {"x == true", Value::Missing(), false},   {"x in [1, 'a', null]", Value::Missing(), false},
      {"x", Value::Missing(), false},           {"5 > x", Value::Missing(), false},
      // `not` of a false comparison is true.
      {"not x == 5", Value::Missing(), true},   {"not (x != 5)", Value::Missing(), true},
  });
}

TEST(ExprCompareTest, MissingIsNotNull) {
  RunCases({
      {"x == null", Value::Null(), true},
      {"x == null", Value::Missing(), false},
      {"x != null", Value::Null(), false},
      {"x != null", Value::Missing(), false},
      {"x != null", Value::Int(1), true},
      {"not (x == null)", Value::Missing(), true},
      {"not (x == null)", Value::Null(), false},
      {"x in [null]", Value::Null(), true},
      {"x in [null]", Value::Missing(), false},
  });
}

TEST(ExprCompareTest, CompositeValues) {
  RunCases({
      {"x == 5", Value::Composite(), false},      {"x != 5", Value::Composite(), true},
      {"x < 5", Value::Composite(), false},       {"x >= 5", Value::Composite(), false},
      {"x == 'a'", Value::Composite(), false},    {"x != 'a'", Value::Composite(), true},
      {"x == null", Value::Composite(), false},   {"x != null", Value::Composite(), true},
      {"x == true", Value::Composite(), false},   {"x in [1, 'a', null, true]", Value::Composite(), false},
      {"x", Value::Composite(), false},
  });
  // Two composites are not equal either.
  EXPECT_FALSE(EvalOn("x == y", {{"x", Value::Composite()}, {"y", Value::Composite()}}));
  EXPECT_TRUE(EvalOn("x != y", {{"x", Value::Composite()}, {"y", Value::Composite()}}));
}

TEST(ExprCompareTest, BareOperandIsTrueOnlyForBooleanTrue) {
  RunCases({
      {"x", Value::Bool(true), true},      {"x", Value::Bool(false), false}, {"x", Value::Int(1), false},
      {"x", Value::Double(1.0), false},    {"x", Value::String("true"), false}, {"x", Value::Null(), false},
      {"not x", Value::Bool(false), true}, {"not x", Value::Bool(true), false}, {"not x", Value::Int(1), true},
  });
}

TEST(ExprCompareTest, TwoLiterals) {
  EXPECT_TRUE(EvalOn("1 == 1", {}));
  EXPECT_TRUE(EvalOn("1 == 1.0", {}));
  EXPECT_FALSE(EvalOn("1 == 2", {}));
  EXPECT_TRUE(EvalOn("'a' < 'b'", {}));
  EXPECT_TRUE(EvalOn("'a' == \"a\"", {}));
  EXPECT_TRUE(EvalOn("null == null", {}));
  EXPECT_TRUE(EvalOn("true != false", {}));
  EXPECT_FALSE(EvalOn("1 < 'a'", {}));
  EXPECT_TRUE(EvalOn("true", {}));
  EXPECT_FALSE(EvalOn("false", {}));
  EXPECT_FALSE(EvalOn("null", {}));
  EXPECT_FALSE(EvalOn("1", {}));
  EXPECT_FALSE(EvalOn("'true'", {}));
  EXPECT_TRUE(EvalOn("5 > x", {{"x", Value::Int(3)}}));
  EXPECT_TRUE(EvalOn("'a' in ['b', 'a']", {}));
}

TEST(ExprCompareTest, TwoFields) {
  EXPECT_TRUE(EvalOn("x == y", {{"x", Value::Int(3)}, {"y", Value::Double(3.0)}}));
  EXPECT_FALSE(EvalOn("x != y", {{"x", Value::Int(3)}, {"y", Value::Double(3.0)}}));
  EXPECT_TRUE(EvalOn("x < y", {{"x", Value::String("apple")}, {"y", Value::String("banana")}}));
  EXPECT_FALSE(EvalOn("x == y", {{"x", Value::Int(3)}}));
  EXPECT_FALSE(EvalOn("x != y", {{"x", Value::Int(3)}}));
  EXPECT_FALSE(EvalOn("x != y", {{"y", Value::Int(3)}}));
  EXPECT_FALSE(EvalOn("x != y", {}));
  EXPECT_TRUE(EvalOn("x == x", {{"x", Value::Null()}}));
  EXPECT_FALSE(EvalOn("x == x", {}));
}

TEST(ExprInTest, MatchesAnyListedLiteral) {
  RunCases({
      {"x in ['US', 'CA']", Value::String("CA"), true},
      {"x in ['US', 'CA']", Value::String("US"), true},
      {"x in ['US', 'CA']", Value::String("MX"), false},
      {"x in ['US', 'CA']", Value::String("us"), false},
      {"x in [1, 2.5, 'a']", Value::Int(1), true},
      {"x in [1, 2.5, 'a']", Value::Double(1.0), true},
      {"x in [1, 2.5, 'a']", Value::Double(2.5), true},
      {"x in [1, 2.5, 'a']", Value::Int(2), false},
      {"x in [1, 2.5, 'a']", Value::String("a"), true},
      {"x in [1, 2.5, 'a']", Value::String("1"), false},
      {"x in [true]", Value::Bool(true), true},
      {"x in [true]", Value::Bool(false), false},
      {"x in [true]", Value::Int(1), false},
      {"x in [-1, -2]", Value::Int(-2), true},
      {"x in [\"it's\"]", Value::String("it's"), true},
      {"x in ['only']", Value::String("only"), true},
      {"not x in [1]", Value::Int(1), false},
      {"not x in [1]", Value::Int(2), true},
      {"not x in [1]", Value::Missing(), true},
  });
}

TEST(ExprInTest, EmptyListIsAlwaysFalse) {
  RunCases({
      {"x in []", Value::Int(1), false},
      {"x in []", Value::String(""), false},
      {"x in []", Value::Null(), false},
      {"x in [ ]", Value::Bool(true), false},
      {"x in []", Value::Missing(), false},
  });
}

TEST(ExprLogicTest, AndOrNot) {
  const auto flags = [](bool a, bool b) {
    return std::vector<Field>{{"a", Value::Bool(a)}, {"b", Value::Bool(b)}};
  };
  for (bool a : {false, true}) {
    for (bool b : {false, true}) {
      EXPECT_EQ(EvalOn("a and b", flags(a, b)), a && b) << a << b;
      EXPECT_EQ(EvalOn("a or b", flags(a, b)), a || b) << a << b;
      EXPECT_EQ(EvalOn("not a", flags(a, b)), !a) << a << b;
    }
  }
  EXPECT_TRUE(EvalOn("x > 1 and x < 10", {{"x", Value::Int(5)}}));
  EXPECT_FALSE(EvalOn("x > 1 and x < 10", {{"x", Value::Int(10)}}));
  EXPECT_TRUE(EvalOn("x == 'a' or y == 'b'", {{"y", Value::String("b")}}));
  EXPECT_FALSE(EvalOn("x == 'a' or y == 'b'", {}));
}

TEST(ExprLogicTest, PrecedenceNotOverAndOverOr) {
  const auto abc = [](bool a, bool b, bool c) {
    return std::vector<Field>{{"a", Value::Bool(a)}, {"b", Value::Bool(b)}, {"c", Value::Bool(c)}};
  };
  // a or (b and c): true; (a or b) and c would be false.
  EXPECT_TRUE(EvalOn("a or b and c", abc(true, false, false)));
  EXPECT_FALSE(EvalOn("(a or b) and c", abc(true, false, false)));
  // (b and c) or a, written the other way round.
  EXPECT_TRUE(EvalOn("b and c or a", abc(true, false, false)));
  // (not a) and b: false; not (a and b) would be true.
  EXPECT_FALSE(EvalOn("not a and b", abc(false, false, false)));
  EXPECT_TRUE(EvalOn("not (a and b)", abc(false, false, false)));
  // (not a) or b: true; not (a or b) would be false.
  EXPECT_TRUE(EvalOn("not a or b", abc(true, true, false)));
  EXPECT_FALSE(EvalOn("not (a or b)", abc(true, true, false)));
  EXPECT_TRUE(EvalOn("not not a", abc(true, false, false)));
  EXPECT_FALSE(EvalOn("not not not a", abc(true, false, false)));
  EXPECT_TRUE(EvalOn("a and (b or c)", abc(true, false, true)));
  EXPECT_FALSE(EvalOn("a and (b or c)", abc(true, false, false)));
  EXPECT_TRUE(EvalOn("((a))", abc(true, false, false)));

  EXPECT_EQ(Canonical("a or b and c"), "(a or (b and c))");
  EXPECT_EQ(Canonical("not a and b"), "((not a) and b)");
  EXPECT_EQ(Canonical("not a or b"), "((not a) or b)");
  EXPECT_EQ(Canonical("a and b and c"), "(a and b and c)");
  EXPECT_EQ(Canonical("a or b or c and d"), "(a or b or (c and d))");
  EXPECT_EQ(Canonical("(a or b) and c"), "((a or b) and c)");
  EXPECT_EQ(Canonical("x > 1 and y == 'a' or not z in [1, 2]"),
            "(((x > 1) and (y == 'a')) or (not (z in [1, 2])))");
  EXPECT_EQ(Canonical("not x == 1"), "(not (x == 1))");
}

TEST(ExprFieldTest, DottedPathsInternDistinctSlots) {
  FieldRegistry fields;
  EXPECT_EQ(fields.Intern("user_id"), kEntitySlot);
  EXPECT_EQ(fields.Intern("ts"), kTimestampSlot);
  Result<Expr> expr = Expr::Parse(
      "device.os == 'ios' and device.model == 'x' and (device.os != 'y' or os == 'z') and user_id != 'bot'",
      fields);
  ASSERT_TRUE(expr.ok()) << expr.status().message();
  ASSERT_EQ(fields.size(), 5u);
  EXPECT_EQ(fields.paths()[2], "device.os");
  EXPECT_EQ(fields.paths()[3], "device.model");
  EXPECT_EQ(fields.paths()[4], "os");

  std::vector<Value> slots(5);
  slots[0] = Value::String("u1");
  slots[2] = Value::String("ios");
  slots[3] = Value::String("x");
  EXPECT_TRUE(expr->Eval(slots));
  slots[4] = Value::String("ios");  // `os` is its own field, not device.os.
  EXPECT_TRUE(expr->Eval(slots));
  slots[2] = Value::String("android");
  EXPECT_FALSE(expr->Eval(slots));
  slots[2] = Value::String("ios");
  slots[0] = Value::String("bot");
  EXPECT_FALSE(expr->Eval(slots));

  // A second expression reuses the slots already interned.
  Result<Expr> again = Expr::Parse("a.b.c_d == 1 or device.os == 'ios'", fields);
  ASSERT_TRUE(again.ok()) << again.status().message();
  ASSERT_EQ(fields.size(), 6u);
  EXPECT_EQ(fields.paths()[5], "a.b.c_d");
  EXPECT_EQ(again->ToString(), "((a.b.c_d == 1) or (device.os == 'ios'))");
}

TEST(ExprFieldTest, FailedParseInternsNothing) {
  FieldRegistry fields;
  fields.Intern("user_id");
  size_t offset = 0;
  EXPECT_FALSE(Expr::Parse("amount > 5 and country ==", fields, &offset).ok());
  EXPECT_EQ(fields.size(), 1u);
}

TEST(ExprFieldTest, SlotsBeyondTheSpanReadAsMissing) {
  FieldRegistry fields;
  Result<Expr> expr = Expr::Parse("a == 1 or not (b == 2)", fields);
  ASSERT_TRUE(expr.ok()) << expr.status().message();
  std::vector<Value> one = {Value::Int(3)};  // Only slot 0 (a); b is beyond the span.
  EXPECT_TRUE(expr->Eval(one));               // not (missing == 2) is true.
  EXPECT_TRUE(expr->Eval(std::span<const Value>()));
  std::vector<Value> both = {Value::Int(3), Value::Int(2)};
  EXPECT_FALSE(expr->Eval(both));
}

TEST(ExprTest, MoveKeepsStringLiteralsValid) {
  FieldRegistry fields;
  Result<Expr> parsed = Expr::Parse("x == 'a string long enough to live on the heap' or x == 's'", fields);
  ASSERT_TRUE(parsed.ok()) << parsed.status().message();
  Expr moved = std::move(parsed).value();
  std::vector<Value> slots = {Value::String("a string long enough to live on the heap")};
  EXPECT_TRUE(moved.Eval(slots));
  Result<Expr> other = Expr::Parse("x == 'other'", fields);
  ASSERT_TRUE(other.ok());
  Expr assigned = std::move(other).value();
  assigned = std::move(moved);
  EXPECT_TRUE(assigned.Eval(slots));
  slots[0] = Value::String("s");
  EXPECT_TRUE(assigned.Eval(slots));
  EXPECT_EQ(assigned.ToString(), "((x == 'a string long enough to live on the heap') or (x == 's'))");
}

TEST(ExprToStringTest, CanonicalForms) {
  const std::vector<std::pair<const char*, const char*>> cases = {
      {"amount>5", "(amount > 5)"},
      {"  amount   >=\t5 ", "(amount >= 5)"},
      {"x == \"it's\"", "(x == 'it\\'s')"},
      {"x == 'a\\\\b'", "(x == 'a\\\\b')"},
      {"x == \"tab\\there\\n\"", "(x == 'tab\\there\\n')"},
      {"x == \"q\\\"\"", "(x == 'q\"')"},
      {"x == 2.50", "(x == 2.5)"},
      {"x == 1e3", "(x == 1000.0)"},
      {"x == 1.5e300", "(x == 1.5e+300)"},
      {"x == -0.25", "(x == -0.25)"},
      {"x == 9223372036854775808", "(x == 9223372036854775808.0)"},
      {"x == -5", "(x == -5)"},
      {"x != null", "(x != null)"},
      {"x == true and y == false", "((x == true) and (y == false))"},
      {"flag", "flag"},
      {"not flag", "(not flag)"},
      {"(flag)", "flag"},
      {"x in []", "(x in [])"},
      {"x in ['a', \"b\", 1, 2.5, true, null, -3]", "(x in ['a', 'b', 1, 2.5, true, null, -3])"},
      {"device.os<'b'", "(device.os < 'b')"},
  };
  for (const auto& [text, expected] : cases) {
    EXPECT_EQ(Canonical(text), expected) << text;
  }
}

TEST(ExprToStringTest, RoundTripParsesToTheSameExpression) {
  const std::vector<const char*> texts = {
      "amount > 5 and (country in ['US', 'CA'] or not device.os == \"ios\")",
      "x == 'it\\'s \\\\ \\t \\n' or y != -1.25e-7",
      "not not (a and b or c) and d != null",
      "x in [1, 9223372036854775808, 0.1, false]",
      "1 == 1.0",
  };
  for (const char* text : texts) {
    const std::string first = Canonical(text);
    EXPECT_EQ(Canonical(first), first) << text;
  }
}

// A malformed expression, a phrase its error message must contain, and the byte offset of the problem.
struct BadCase {
  std::string text;
  std::string phrase;
  size_t offset;
};

// Conditions() lists what a schema check needs: each condition's operands, where they are written, and of what
// type each literal is.
TEST(ExprConditionsTest, ListEveryConditionWithItsOperandsAndPositions) {
  FieldRegistry fields;
  const std::string_view text = "type == purchase and (not 5 < amount or country in ['US', 3, null]) and flag";
  Result<Expr> expr = Expr::Parse(text, fields);
  ASSERT_TRUE(expr.ok()) << expr.status().message();
  const std::vector<ExprCondition> conditions = expr->Conditions();
  ASSERT_EQ(conditions.size(), 4u);
  const auto source = [&](const ExprOperandInfo& o) { return text.substr(o.offset, o.length); };

  EXPECT_EQ(conditions[0].kind, ExprCondition::Kind::kCompare);
  EXPECT_EQ(conditions[0].op, "==");
  EXPECT_TRUE(conditions[0].lhs.is_field);
  EXPECT_EQ(conditions[0].lhs.path, "type");
  EXPECT_EQ(conditions[0].lhs.offset, 0u);
  EXPECT_TRUE(conditions[0].rhs.is_field);  // A word without quotes is a field.
  EXPECT_EQ(conditions[0].rhs.path, "purchase");
  EXPECT_EQ(source(conditions[0].rhs), "purchase");

  EXPECT_EQ(conditions[1].op, "<");
  EXPECT_FALSE(conditions[1].lhs.is_field);
  EXPECT_EQ(conditions[1].lhs.literal_type, ValueType::kInt);
  EXPECT_EQ(source(conditions[1].lhs), "5");
  EXPECT_EQ(conditions[1].rhs.path, "amount");
  EXPECT_EQ(source(conditions[1].rhs), "amount");

  EXPECT_EQ(conditions[2].kind, ExprCondition::Kind::kIn);
  EXPECT_EQ(conditions[2].lhs.path, "country");
  ASSERT_EQ(conditions[2].list.size(), 3u);
  EXPECT_EQ(conditions[2].list[0].literal_type, ValueType::kString);
  EXPECT_EQ(source(conditions[2].list[0]), "'US'");
  EXPECT_EQ(conditions[2].list[1].literal_type, ValueType::kInt);
  EXPECT_EQ(source(conditions[2].list[1]), "3");
  EXPECT_EQ(conditions[2].list[2].literal_type, ValueType::kNull);

  EXPECT_EQ(conditions[3].kind, ExprCondition::Kind::kTest);
  EXPECT_EQ(conditions[3].lhs.path, "flag");
  EXPECT_EQ(source(conditions[3].lhs), "flag");

  // A quoted string with escapes spans its whole source text; doubles are kDouble.
  FieldRegistry more;
  const std::string_view escaped = R"(device.os != 'it\'s' and x >= 1.5)";
  Result<Expr> second = Expr::Parse(escaped, more);
  ASSERT_TRUE(second.ok()) << second.status().message();
  const std::vector<ExprCondition> two = second->Conditions();
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0].lhs.path, "device.os");
  EXPECT_EQ(escaped.substr(two[0].rhs.offset, two[0].rhs.length), R"('it\'s')");
  EXPECT_EQ(two[1].rhs.literal_type, ValueType::kDouble);
}

TEST(ExprErrorTest, MessagesSayWhatAndWhere) {
  const std::vector<BadCase> cases = {
      {"amount ==",
       "expected a value (field name, 'string', number, true, false or null) after '==' but found end of "
       "expression",
       9},
      {"amount == and", "after '==' but found 'and'", 10},
      {"x == not y", "after '==' but found 'not'", 5},
      {"x < )", "after '<' but found ')'", 4},
      {"amount = 5", "unknown operator '=' at column 8; did you mean '=='?", 7},
      {"a === 1", "did you mean '=='?", 2},
      {"a => 1", "did you mean '>='?", 2},
      {"a =< 1", "did you mean '<='?", 2},
      {"a <> 1", "did you mean '!='?", 2},
      {"a !== 1", "did you mean '!='?", 2},
      {"a && b", "unknown operator '&&' at column 3; did you mean 'and'?", 2},
      {"a & b", "did you mean 'and'?", 2},
      {"a || b", "did you mean 'or'?", 2},
      {"!a", "use 'not' to negate a condition", 0},
      {"country == 'abc", "unterminated string starting at column 12", 11},
      {"x == \"abc'", "unterminated string starting at column 6", 5},
      {"x == 'abc\\", "unterminated string starting at column 6", 5},
      {"x == 'a\\qb'", "unknown escape '\\q'", 7},
      {"a == 1 and", "'and' at column 8 needs a condition on its right, but found end of expression", 10},
      {"a == 1 or", "'or' at column 8 needs a condition on its right", 9},
      {"a and and b", "'and' at column 3 needs a condition on its right, but found 'and'", 6},
      {"a or )", "'or' at column 3 needs a condition on its right, but found ')'", 5},
      {"and a == 1", "'and' at column 1 needs a condition on its left", 0},
      {"or a", "'or' at column 1 needs a condition on its left", 0},
      {"not", "'not' at column 1 needs a condition on its right", 3},
      {"a and not", "'not' at column 7 needs a condition on its right", 9},
      {"(a == 1", "missing ')' to close the '(' at column 1; found end of expression", 7},
      {"((a == 1)", "missing ')' to close the '(' at column 1", 9},
      {"(a == 1 b == 2)", "or ')' (to close the '(' at column 1) after number 1, but found field 'b'", 8},
      {"a == 1)", "unmatched ')' at column 7", 6},
      {")", "unmatched ')' at column 1", 0},
      {"()", "empty parentheses at column 1", 0},
      {"", "the expression is empty", 0},
      {"   ", "the expression is empty", 3},
      {"a == 1 b == 2", "expected 'and', 'or' or end of expression after number 1, but found field 'b'", 7},
      {"a == 1 b == 2", "join conditions with 'and' or 'or'", 7},
      {"flag x", "expected an operator (==, !=, <, <=, >, >=, in), 'and', 'or' or end of expression after field "
                 "'flag', but found field 'x'",
       5},
      {"a == 1 AND b == 2", "keywords are lowercase: write 'and'", 7},
      {"NOT a", "keywords are lowercase: write 'not'", 4},
      {"a < b < c", "comparisons cannot be chained", 6},
      {"a == b != c", "comparisons cannot be chained", 7},
      {"== 5", "'==' at column 1 needs a value on its left", 0},
      {"in [1]", "'in' at column 1 needs a value on its left", 0},
      {"x in 'a'", "'in' at column 3 must be followed by a list in brackets", 5},
      {"x in", "must be followed by a list in brackets, such as ['US', 'CA'], but found end of expression", 4},
      {"x in ['a', y]", "can hold only literal values", 11},
      {"x in ['a',]", "remove the trailing comma", 10},
      {"x in ['a' 'b']", "expected ',' or ']' in the list that starts at column 6", 10},
      {"x in ['a'", "expected ',' or ']' in the list that starts at column 6 but found end of expression", 9},
      {"x in [,]", "expected a value ('string', number, true, false or null) in the list", 6},
      {"x in [1] == 2", "after ']', but found '=='", 9},
      {"x == 1.", "invalid number '1.' at column 6: expected digits after the decimal point", 5},
      {"x == 1e", "expected digits in the exponent", 5},
      {"x == 1e+", "expected digits in the exponent", 5},
      {"x == 12abc", "invalid number '12abc' at column 6: a number cannot run into letters", 5},
      {"x == 1.2.3", "invalid number '1.2.3'", 5},
      {"x == - 5", "'-' at column 6 must start a negative number such as -5", 5},
      {"x - 5", "'-' at column 3 must start a negative number", 2},
      {"x == .5", "such as 0.5", 5},
      {"x == 1e999", "number '1e999' at column 6 is out of range", 5},
      {"device. == 1", "field name 'device.' at column 1 has no name after its '.'", 6},
      {"device..os == 1", "has no name after its '.'", 6},
      {"device.1 == 1", "has no name after its '.'", 6},
      {"device.in == 1", "'in' at column 8 is a keyword and cannot be part of the field name", 7},
      {"x # 1", "unexpected character '#' at column 3", 2},
      {"x == \x01", "unexpected character '\\x01' at column 6", 5},
      {"x == \xc3\xa9", "unexpected character '\\xC3' at column 6", 5},
      {"x == 1 .", "unexpected character '.' at column 8", 7},
      {"x == @", "unexpected character '@'", 5},
      {"x == 'a' and y === 2", "did you mean '=='?", 15},
  };
  for (const BadCase& c : cases) {
    FieldRegistry fields;
    size_t offset = 12345;
    Result<Expr> expr = Expr::Parse(c.text, fields, &offset);
    ASSERT_FALSE(expr.ok()) << "'" << c.text << "' should not parse";
    EXPECT_EQ(expr.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(expr.status().message().find(c.phrase), std::string::npos)
        << "'" << c.text << "': message '" << expr.status().message() << "' lacks '" << c.phrase << "'";
    EXPECT_EQ(offset, c.offset) << "'" << c.text << "': " << expr.status().message();
  }
}

TEST(ExprErrorTest, FirstProblemFromTheLeftIsReported) {
  FieldRegistry fields;
  size_t offset = 0;
  Result<Expr> expr = Expr::Parse("a == and b = 'x", fields, &offset);
  ASSERT_FALSE(expr.ok());
  EXPECT_EQ(offset, 5u) << expr.status().message();
}

TEST(ExprErrorTest, OffsetIsOptional) {
  FieldRegistry fields;
  EXPECT_FALSE(Expr::Parse("a ==", fields).ok());
  EXPECT_FALSE(Expr::Parse("a ==", fields, nullptr).ok());
}

std::string Repeat(std::string_view piece, int times) {
  std::string out;
  for (int k = 0; k < times; ++k) out += piece;
  return out;
}

TEST(ExprLimitsTest, SixtyFourLevelsOfNestingParse) {
  EXPECT_TRUE(EvalOn(Repeat("(", 64) + "x == 1" + Repeat(")", 64), {{"x", Value::Int(1)}}));
  EXPECT_TRUE(EvalOn(Repeat("not ", 64) + "x", {{"x", Value::Bool(true)}}));  // Even count of nots.
  EXPECT_TRUE(EvalOn(Repeat("not (", 32) + "x" + Repeat(")", 32), {{"x", Value::Bool(true)}}));
}

TEST(ExprLimitsTest, DeeperNestingIsAnError) {
  FieldRegistry fields;
  size_t offset = 0;
  Result<Expr> parens = Expr::Parse(Repeat("(", 65) + "x" + Repeat(")", 65), fields, &offset);
  ASSERT_FALSE(parens.ok());
  EXPECT_NE(parens.status().message().find("nests more than 64 levels deep"), std::string::npos)
      << parens.status().message();
  EXPECT_EQ(offset, 64u);

  Result<Expr> nots = Expr::Parse(Repeat("not ", 100) + "x", fields, &offset);
  ASSERT_FALSE(nots.ok());
  EXPECT_NE(nots.status().message().find("nests more than 64 levels deep"), std::string::npos);
  EXPECT_EQ(offset, 4u * 64u);

  // 4000 unclosed parentheses fit the length limit, so the depth limit must catch them.
  Result<Expr> unclosed = Expr::Parse(Repeat("(", 4000), fields, &offset);
  ASSERT_FALSE(unclosed.ok());
  EXPECT_NE(unclosed.status().message().find("nests more than 64 levels deep"), std::string::npos);
  EXPECT_EQ(offset, 64u);
}

TEST(ExprLimitsTest, TenThousandLevelsReturnAnErrorNotACrash) {
  FieldRegistry fields;
  size_t offset = 0;
  Result<Expr> parens = Expr::Parse(Repeat("(", 10000) + "x == 1" + Repeat(")", 10000), fields, &offset);
  ASSERT_FALSE(parens.ok());
  EXPECT_NE(parens.status().message().find("over the limit of 4096 bytes"), std::string::npos)
      << parens.status().message();
  EXPECT_EQ(offset, 4096u);

  Result<Expr> nots = Expr::Parse(Repeat("not ", 10000) + "x", fields, &offset);
  ASSERT_FALSE(nots.ok());
  EXPECT_EQ(fields.size(), 0u);
}

TEST(ExprLimitsTest, LengthLimitIsInclusive) {
  // "x == 1" padded with spaces to exactly 4096 bytes parses; one more byte does not.
  std::string text = "x == 1" + std::string(4096 - 6, ' ');
  ASSERT_EQ(text.size(), 4096u);
  EXPECT_TRUE(EvalOn(text, {{"x", Value::Int(1)}}));
  FieldRegistry fields;
  size_t offset = 0;
  Result<Expr> longer = Expr::Parse(text + " ", fields, &offset);
  ASSERT_FALSE(longer.ok());
  EXPECT_NE(longer.status().message().find("4097 bytes long"), std::string::npos) << longer.status().message();
  EXPECT_EQ(offset, 4096u);
}

TEST(ExprLimitsTest, LongFlatChainsNeedNoDeepRecursion) {
  // ~600 terms in one `and` chain and ~300 in one `or` chain: n-ary nodes, so no recursion per term.
  std::string all = "x";
  std::string any = "y == 0";
  for (int k = 0; k < 600; ++k) all += " and x";
  for (int k = 1; k < 300; ++k) any += " or y == " + std::to_string(k);
  ASSERT_LE(all.size(), 4096u);
  ASSERT_LE(any.size(), 4096u);
  EXPECT_TRUE(EvalOn(all, {{"x", Value::Bool(true)}}));
  EXPECT_FALSE(EvalOn(all, {{"x", Value::Bool(false)}}));
  EXPECT_TRUE(EvalOn(any, {{"y", Value::Int(299)}}));
  EXPECT_FALSE(EvalOn(any, {{"y", Value::Int(300)}}));
}

// Random values of every type, for evaluating fuzzed expressions.
Value RandomValue(std::mt19937_64& rng) {
  static const char* const kStrings[] = {"", "a", "s", "t", "US", "it's"};
  switch (rng() % 8) {
    case 0: return Value::Missing();
    case 1: return Value::Null();
    case 2: return Value::Bool(rng() % 2 == 0);
    case 3: return Value::Int(static_cast<int64_t>(rng() % 7) - 3);
    case 4: return Value::Double(static_cast<double>(rng() % 9) / 2 - 2);
    case 5: return Value::Int(static_cast<int64_t>(rng()));
    case 6: return Value::Composite();
    default: return Value::String(kStrings[rng() % 6]);
  }
}

// Parses `text`; either it fails with an offset inside the text, or it evaluates, and its canonical
// form parses back to itself and evaluates the same.
void CheckParseIsTotal(const std::string& text, std::mt19937_64& rng) {
  FieldRegistry fields;
  size_t offset = 0;
  Result<Expr> expr = Expr::Parse(text, fields, &offset);
  if (!expr.ok()) {
    EXPECT_FALSE(expr.status().message().empty());
    EXPECT_LE(offset, text.size()) << text;
    return;
  }
  const std::string canonical = expr->ToString();
  FieldRegistry fields_again;
  Result<Expr> again = Expr::Parse(canonical, fields_again);
  ASSERT_TRUE(again.ok()) << "'" << text << "' -> '" << canonical << "': " << again.status().message();
  EXPECT_EQ(again->ToString(), canonical);
  ASSERT_EQ(fields_again.paths(), fields.paths());
  std::vector<Value> slots(fields.size());
  for (int round = 0; round < 4; ++round) {
    for (Value& slot : slots) slot = RandomValue(rng);
    EXPECT_EQ(expr->Eval(slots), again->Eval(slots)) << text;
  }
}

TEST(ExprFuzzTest, RandomBytesNeverCrash) {
  std::mt19937_64 rng(20240601);
  for (int iteration = 0; iteration < 20000; ++iteration) {
    std::string text(rng() % 48, '\0');
    for (char& c : text) c = static_cast<char>(rng() % 256);
    CheckParseIsTotal(text, rng);
  }
}

TEST(ExprFuzzTest, RandomPrintableBytesNeverCrash) {
  std::mt19937_64 rng(7);
  static const std::string kAlphabet = "ab.x_ ()[],'\"\\=!<>-+019eE&|#nt";
  for (int iteration = 0; iteration < 20000; ++iteration) {
    std::string text(rng() % 40, ' ');
    for (char& c : text) c = kAlphabet[rng() % kAlphabet.size()];
    CheckParseIsTotal(text, rng);
  }
}

TEST(ExprFuzzTest, RandomTokenSoupsNeverCrash) {
  std::mt19937_64 rng(42);
  static const std::vector<std::string> kTokens = {
      "a",   "b.c",  "x",    "(",    ")",     "[",    "]",     ",",  "==",   "!=",   "<",  "<=",
      ">",   ">=",   "in",   "and",  "or",    "not",  "'s'",   "\"t\"", "1",  "-2",   "3.5", "1e3",
      "true", "false", "null", "=",  "!",     "'",    "\\",    ".",  "AND",  "'it\\'s'", "9223372036854775808",
      "[]",  "-",    "&&",
  };
  int parsed = 0;
  for (int iteration = 0; iteration < 30000; ++iteration) {
    std::string text;
    const size_t count = 1 + rng() % 12;
    for (size_t k = 0; k < count; ++k) {
      text += kTokens[rng() % kTokens.size()];
      if (rng() % 4 != 0) text += ' ';
    }
    FieldRegistry fields;
    parsed += Expr::Parse(text, fields).ok() ? 1 : 0;
    CheckParseIsTotal(text, rng);
  }
  EXPECT_GT(parsed, 100);  // The soup does produce valid expressions, so evaluation was exercised too.
}

}  // namespace
}  // namespace freshet

#include "spec/value_expr.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "event/event_parser.h"

namespace freshet {
namespace {

// Evaluates `text` against an event given as JSON (entity `u`, timestamp `ts`), through the event parser,
// as a derived field named `out`.
Value EvalOn(std::string_view text, std::string_view json, OwnedStrings* keep) {
  FieldRegistry fields;
  fields.Intern("u");
  fields.Intern("ts");
  Result<ValueExpr> expr = ValueExpr::Parse(text, fields);
  EXPECT_TRUE(expr.ok()) << text << ": " << expr.status().message();
  if (!expr.ok()) return Value::Missing();
  const int slot = fields.Intern("out");
  fields.AddDerived(slot, std::make_shared<const ValueExpr>(std::move(expr).value()));
  EventParser parser(fields);
  ParsedEvent event;
  std::string reason;
  EXPECT_TRUE(parser.ParseCopy(json, &event, &reason)) << reason;
  *keep = event.owned;
  return event.slots[static_cast<size_t>(slot)];
}

constexpr std::string_view kEvent =
    R"({"u":"a","ts":1767268800000,"amount":12.5,"qty":3,"big":9223372036854775807,"name":"Ünïcode X",)"
    R"("flag":true,"none":null,"zero":0,"obj":{"k":2},"text_num":"7"})";

struct Case {
  std::string_view expr;
  Value want;
};

TEST(ValueExprTest, ArithmeticComparisonsAndFunctionsFollowTheWrittenSemantics) {
  const Case cases[] = {
      {"qty + 2", Value::Int(5)},
      {"qty * amount", Value::Double(37.5)},
      {"qty / 2", Value::Double(1.5)},        // / always gives a double.
      {"qty % 2", Value::Int(1)},
      {"-qty - 1", Value::Int(-4)},
      {"amount % 5", Value::Double(2.5)},
      {"qty / zero", Value::Null()},          // Division by zero.
      {"qty % zero", Value::Null()},
      {"big + 1", Value::Null()},             // Integer overflow.
      {"big * 2", Value::Null()},
      {"missing_field + 1", Value::Null()},   // Missing.
      {"none * 2", Value::Null()},            // JSON null.
      {"name * 2", Value::Null()},            // Wrong type, known only per event.
      {"obj * 2", Value::Null()},             // A composite.
      {"text_num + 1", Value::Null()},        // No implicit conversion from text.
      {"obj.k + 1", Value::Int(3)},
      {"qty == 3.0", Value::Bool(true)},
      {"qty != 3", Value::Bool(false)},
      {"name == 3", Value::Bool(false)},      // Different types are unequal...
      {"name != 3", Value::Bool(true)},
      {"name < 3", Value::Null()},            // ...and not ordered.
      {"none == 1", Value::Null()},
      {"'abc' < 'abd'", Value::Bool(true)},
      {"flag and none == 1", Value::Null()},  // true and null.
      {"not flag and none == 1", Value::Bool(false)},
      {"flag or none == 1", Value::Bool(true)},
      {"not (none == 1)", Value::Null()},
      {"if(qty > 2, 'many', 'few')", Value::String("many")},
      {"if(none == 1, 'yes', 'no')", Value::String("no")},  // A null condition takes the else branch.
      {"coalesce(none, missing_field, qty)", Value::Int(3)},
      {"coalesce(none)", Value::Null()},
      {"abs(-2.5)", Value::Double(2.5)},
      {"abs(0 - qty)", Value::Int(3)},
      {"log(zero)", Value::Null()},
      {"round(2.5)", Value::Double(3)},      // Half away from zero.
      {"round(-2.5)", Value::Double(-3)},
      {"round(amount / 7, 2)", Value::Double(1.79)},
      {"round(qty)", Value::Int(3)},
      {"round(1234, -2)", Value::Int(1200)},
      {"lower(name)", Value::String("Ünïcode x")},  // ASCII letters only.
      {"upper('abc')", Value::String("ABC")},
      {"length(name)", Value::Int(9)},              // Code points, not bytes.
      {"length(qty)", Value::Null()},
      {"hour_of_day(ts)", Value::Int(12)},          // 2026-01-01T12:00:00Z.
      {"day_of_week(ts)", Value::Int(4)},           // A Thursday.
      {"day_of_week(0)", Value::Int(4)},            // 1970-01-01, a Thursday.
      {"day_of_week(-1)", Value::Int(3)},           // The millisecond before: Wednesday.
      {"hour_of_day(-1)", Value::Int(23)},
      {"(ts - 1767225600000) / 3600000", Value::Double(12)},
  };
  for (const Case& c : cases) {
    OwnedStrings keep;
    const Value got = EvalOn(c.expr, kEvent, &keep);
    EXPECT_EQ(got.type, c.want.type) << c.expr;
    if (got.type != c.want.type) continue;
    switch (got.type) {
      case ValueType::kInt: EXPECT_EQ(got.i, c.want.i) << c.expr; break;
      case ValueType::kDouble: EXPECT_NEAR(got.d, c.want.d, 1e-12) << c.expr; break;
      case ValueType::kBool: EXPECT_EQ(got.b, c.want.b) << c.expr; break;
      case ValueType::kString: EXPECT_EQ(got.s, c.want.s) << c.expr; break;
      default: break;
    }
  }
}

TEST(ValueExprTest, TheTimestampFieldReadsAsEpochMillisecondsWhateverItsForm) {
  OwnedStrings keep;
  const Value v = EvalOn("hour_of_day(ts) * 100 + ts % 1000", R"({"u":"a","ts":"2026-01-01T07:30:00.250Z"})", &keep);
  ASSERT_EQ(v.type, ValueType::kInt);
  EXPECT_EQ(v.i, 700 + 250);
}

TEST(ValueExprTest, ErrorsSayWhatAndWhere) {
  struct Bad {
    std::string_view text;
    size_t offset;
    std::string_view message_part;
  };
  const Bad bad[] = {
      {"'a' * 2", 4, "'*' takes a number, not text"},
      {"amount +", 8, "ends where a value was expected"},
      {"lowr(name)", 0, "did you mean 'lower'?"},
      {"round(1, 2, 3)", 0, "round takes 1 to 2 argument(s), got 3"},
      {"lower(3)", 6, "lower() takes text, not a number"},
      {"(amount", 7, "missing ')'"},
      {"amount = 3", 7, "compare with '=='"},
      {"'open", 0, "no closing '"},
      {"amount 3", 7, "unexpected '3' after a complete expression"},
      {"1.2.3", 0, "'1.2.3' is not a number"},
  };
  for (const Bad& b : bad) {
    FieldRegistry fields;
    fields.Intern("u");
    fields.Intern("ts");
    size_t offset = 999;
    Result<ValueExpr> expr = ValueExpr::Parse(b.text, fields, &offset);
    ASSERT_FALSE(expr.ok()) << b.text;
    EXPECT_NE(expr.status().message().find(b.message_part), std::string::npos)
        << b.text << ": " << expr.status().message();
    EXPECT_EQ(offset, b.offset) << b.text << ": " << expr.status().message();
  }
}

TEST(ValueExprTest, ToStringIsCanonical) {
  FieldRegistry fields;
  Result<ValueExpr> expr = ValueExpr::Parse("a+b*2 >= 1 and not lower( s )=='x'", fields);
  ASSERT_TRUE(expr.ok()) << expr.status().message();
  EXPECT_EQ(expr->ToString(), "(((a + (b * 2)) >= 1) and (not (lower(s) == 'x')))");
}

}  // namespace
}  // namespace freshet

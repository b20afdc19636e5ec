#include "spec/request_features.h"

#include <gtest/gtest.h>

#include "spec/spec.h"

namespace freshet {
namespace {

constexpr std::string_view kSpec = R"yaml(name: t
entity: user_id
timestamp: ts
features:
  - {name: n, aggregation: count, window: {type: lifetime}}
  - {name: avg, aggregation: mean, field: amount, window: {type: lifetime}}
request_features:
  - {name: ratio, expr: "param.amount / avg"}
  - {name: twice, expr: "ratio * 2"}
  - {name: who, expr: "upper(user_id)"}
  - {name: hour, expr: "hour_of_day(ts)"}
  - {name: per, expr: "param.amount / n"}
)yaml";

TEST(RequestFeatures, ReadFeaturesParamsEntityTimeAndEarlierItems) {
  Result<Spec> spec = ParseSpec(kSpec, "t.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  const RequestFeatures& r = spec->request_features;
  ASSERT_EQ(r.items.size(), 5u);
  EXPECT_EQ(r.feature_inputs, (std::vector<int>{0, 1}));
  EXPECT_EQ(r.params, (std::vector<std::string>{"amount"}));
  const Value features[2] = {Value::Int(0), Value::Double(4.0)};
  RequestParams params = {{"amount", Value::Int(10)}};
  std::vector<Value> out;
  OwnedStrings owned;
  EvaluateRequestFeatures(r, "u7", 1767268800000 + 3 * 3600000, [&](int k) { return features[k]; }, params, &out,
                          &owned);
  ASSERT_EQ(out.size(), 5u);
  EXPECT_EQ(out[0].type, ValueType::kDouble);
  EXPECT_DOUBLE_EQ(out[0].d, 2.5);
  EXPECT_DOUBLE_EQ(out[1].d, 5.0);
  EXPECT_EQ(out[2].s, "U7");
  EXPECT_EQ(out[3].type, ValueType::kInt);
  EXPECT_EQ(out[3].i, 15);  // 2026-01-01T12:00Z plus 3 h.
  EXPECT_TRUE(out[4].is_null());  // A division by zero.
  // Without the parameter, what reads it is null; the rest is computed.
  EvaluateRequestFeatures(r, "u7", 0, [&](int k) { return features[k]; }, {}, &out, &owned);
  EXPECT_FALSE(out[0].is_present_non_null());
  EXPECT_FALSE(out[1].is_present_non_null());
  EXPECT_EQ(out[2].s, "U7");
}

TEST(RequestFeatures, ParamTextReadsAsJsonScalars) {
  EXPECT_EQ(RequestParamFromText("12").type, ValueType::kInt);
  EXPECT_EQ(RequestParamFromText("12.5").type, ValueType::kDouble);
  EXPECT_EQ(RequestParamFromText("true").type, ValueType::kBool);
  EXPECT_EQ(RequestParamFromText("12 apples").type, ValueType::kString);
}

TEST(RequestFeatures, UnknownNamesAreLocated) {
  std::string yaml(kSpec);
  yaml.replace(yaml.find("ratio * 2"), 9, "ratoi * 2");
  std::vector<SpecDiagnostic> diagnostics;
  Result<Spec> spec = ParseSpec(yaml, "t.yaml", &diagnostics);
  ASSERT_FALSE(spec.ok());
  ASSERT_EQ(diagnostics.size(), 1u) << spec.status().message();
  EXPECT_EQ(diagnostics[0].line, 9);
  EXPECT_EQ(diagnostics[0].column, 26);
  EXPECT_NE(diagnostics[0].message.find("'ratoi' is neither a feature nor an earlier request feature"),
            std::string::npos)
      << diagnostics[0].message;
}

}  // namespace
}  // namespace freshet

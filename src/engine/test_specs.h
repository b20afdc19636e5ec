// Hand-built specs for engine tests: a spec with entity field "user" and timestamp field "ts", and features
// added one by one, without YAML. For tests only.
#pragma once

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "spec/spec.h"

namespace freshet::test_specs {

inline Spec BaseSpec(std::optional<WatermarkSpec> watermark = std::nullopt, std::string name = "test") {
  Spec spec;
  spec.name = std::move(name);
  spec.entity_field = "user";
  spec.entity_fields = {"user"};
  spec.timestamp_field = "ts";
  spec.watermark = watermark;
  EXPECT_EQ(spec.fields.Intern("user"), kEntitySlot);
  EXPECT_EQ(spec.fields.Intern("ts"), kTimestampSlot);
  return spec;
}

inline void AddFeature(Spec& spec, const std::string& name, AggKind agg, const std::string& field, WindowSpec window,
                       const std::string& where = "", int precision = 14) {
  FeatureSpec f;
  f.name = name;
  f.agg = agg;
  f.field = field;
  f.field_slot = field.empty() ? -1 : spec.fields.Intern(field);
  f.window = window;
  f.precision = precision;
  if (!where.empty()) {
    f.where_text = where;
    Result<Expr> expr = Expr::Parse(where, spec.fields);
    EXPECT_TRUE(expr.ok()) << where << ": " << expr.status().message();
    if (expr.ok()) f.where = std::move(expr).value();
  }
  spec.features.push_back(std::move(f));
}

// Turns the last feature (count_distinct or approx_count_distinct) into one over a list of fields, as
// `field: [a, b]` does.
inline void SetFieldList(Spec& spec, const std::vector<std::string>& fields) {
  FeatureSpec& f = spec.features.back();
  f.tuple_fields = fields;
  f.tuple_slots.clear();
  std::string text;
  for (const std::string& field : fields) {
    f.tuple_slots.push_back(spec.fields.Intern(field));
    text += (text.empty() ? "[" : ", ") + field;
  }
  f.field = text + "]";
  f.field_slot = f.tuple_slots.front();
}

}  // namespace freshet::test_specs

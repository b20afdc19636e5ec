// Hand-built specs for engine tests: a spec with entity field "user" and timestamp field "ts", and features
// added one by one, without YAML. For tests only.
#pragma once

#include <gtest/gtest.h>

#include <optional>
#include <string>

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

}  // namespace freshet::test_specs

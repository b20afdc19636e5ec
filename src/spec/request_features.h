// Request-time features: values computed when an entity's features are asked for (GET/POST /v1/features,
// `freshet serve`, `freshet historical`, the SDK), from its feature values as of the request's time and from
// request parameters, with the `derive` expression language (spec/value_expr.h) over feature names instead of
// event fields:
//
//   request_features:
//     - {name: amount_over_avg_1h, expr: "param.amount / avg_amount_1h"}
//
// A name in an expression is one of: a feature (any output column, e.g. latency_p99), an earlier request
// feature, `param.NAME` (a request parameter; null when the request has none by that name), the entity field
// (the entity key, a string) or the timestamp field (the as-of time in epoch milliseconds). Every place that
// answers features evaluates them with EvaluateRequestFeatures over the values it computed, so a lookup and a
// training row agree whenever their feature values do.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/value.h"
#include "spec/field_registry.h"
#include "spec/value_expr.h"

namespace freshet {

struct RequestFeatureSpec {
  std::string name;
  std::string expr_text;  // As written.
  int line = 0;
  std::shared_ptr<const ValueExpr> expr;
};

// What one slot of RequestFeatures::fields reads.
struct RequestInput {
  enum class Kind { kEntity, kTime, kFeature, kRequestFeature, kParam };
  Kind kind = Kind::kFeature;
  int index = 0;      // kFeature: into Spec::features; kRequestFeature: into RequestFeatures::items.
  std::string param;  // kParam: the parameter's name (without "param.").
};

// The spec's `request_features`, compiled.
struct RequestFeatures {
  std::vector<RequestFeatureSpec> items;  // In evaluation order.
  FieldRegistry fields;                   // The names the expressions read; slot 0 entity, slot 1 timestamp.
  std::vector<RequestInput> inputs;       // Per slot of `fields`.
  std::vector<int> feature_inputs;        // The features (Spec::features indices) any item reads, ascending.
  std::vector<std::string> params;        // The parameters any item reads, ascending.

  bool empty() const { return items.empty(); }
};

// A request's parameters, name (without "param.") -> value; the strings belong to the caller.
using RequestParams = std::vector<std::pair<std::string, Value>>;

// The value of a request parameter given as text (a query string's `param.amount=12.5`): an integer or a
// number in JSON syntax becomes that number, true and false booleans, anything else stays text.
Value RequestParamFromText(std::string_view text);

// Computes every request feature, in spec order, into *out. `feature_value(k)` gives feature k's value (it is
// asked only for RequestFeatures::feature_inputs); strings the expressions make are kept in *owned.
void EvaluateRequestFeatures(const RequestFeatures& request, std::string_view entity, int64_t as_of_ms,
                             const std::function<Value(int)>& feature_value, const RequestParams& params,
                             std::vector<Value>* out, OwnedStrings* owned);

}  // namespace freshet

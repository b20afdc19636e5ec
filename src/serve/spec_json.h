// The spec as JSON, for GET /v1/spec and the console, and the members that describe one feature, which
// explanations (historical/explain.h) write too.
#pragma once

#include <string>

#include "serve/json.h"
#include "spec/spec.h"

namespace freshet {

// {"name","entity","timestamp","watermark","features":[{"name","aggregation","field","where","window",...}],
//  "request_features":[{"name","expr"}]}.
std::string SpecJson(const Spec& spec);

// Writes "aggregation", "field" (null for count) and "where" (null without one) of feature `f` into the open
// object of `json`.
void FeatureDefinitionMembers(JsonWriter& json, const FeatureSpec& f);

}  // namespace freshet

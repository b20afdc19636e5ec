#include "serve/spec_json.h"

#include "common/time.h"

namespace freshet {

void FeatureDefinitionMembers(JsonWriter& json, const FeatureSpec& f) {
  json.Key("aggregation").String(AggKindName(f.agg));
  json.Key("field");
  if (f.field.empty()) json.Null();
  else json.String(f.field);
  json.Key("where");
  if (f.where_text.empty()) json.Null();
  else json.String(f.where_text);
}

std::string SpecJson(const Spec& spec) {
  std::string body;
  JsonWriter json(&body);
  auto duration = [&json](std::string_view key, int64_t ms) {
    json.Key(key).String(FormatDuration(ms));
    json.Key(std::string(key) + "_ms").Int(ms);
  };
  json.BeginObject();
  json.Key("name").String(spec.name);
  json.Key("entity");
  if (spec.entity_fields.size() > 1) {  // A composite key: its fields, in order.
    json.BeginArray();
    for (const std::string& field : spec.entity_fields) json.String(field);
    json.EndArray();
  } else {
    json.String(spec.entity_field);
  }
  json.Key("timestamp").String(spec.timestamp_field);
  json.Key("watermark");
  if (spec.watermark) {
    json.BeginObject();
    duration("max_out_of_orderness", spec.watermark->max_out_of_orderness_ms);
    duration("allowed_lateness", spec.watermark->allowed_lateness_ms);
    json.EndObject();
  } else {
    json.Null();
  }
  json.Key("features").BeginArray();
  for (const FeatureSpec& f : spec.features) {
    json.BeginObject();
    json.Key("name").String(f.name);
    FeatureDefinitionMembers(json, f);
    json.Key("window").BeginObject();
    json.Key("type").String(WindowKindName(f.window.kind));
    switch (f.window.kind) {
      case WindowKind::kLifetime: break;
      case WindowKind::kSliding:
        duration("size", f.window.size_ms);
        if (f.window.slide_ms != 0) duration("slide", f.window.slide_ms);
        break;
      case WindowKind::kTumbling: duration("size", f.window.size_ms); break;
      case WindowKind::kSession: duration("gap", f.window.gap_ms); break;
    }
    json.EndObject();
    if (f.agg == AggKind::kApproxCountDistinct) json.Key("precision").Int(f.precision);
    if (AggGivesJsonList(f.agg)) json.Key("k").Int(f.k);
    json.EndObject();
  }
  json.EndArray();
  json.Key("request_features").BeginArray();
  for (const RequestFeatureSpec& r : spec.request_features.items) {
    json.BeginObject().Key("name").String(r.name).Key("expr").String(r.expr_text).EndObject();
  }
  json.EndArray();
  json.EndObject();
  return body;
}


}  // namespace freshet

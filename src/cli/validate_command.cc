// `freshet validate`: checks a spec file and prints what it declares, or every problem in it.
//
//   freshet validate --spec fraud.yaml    summary on stdout, exit 0; or FILE:LINE:COL: error: ... on stderr, exit 2
//                                         (warnings, FILE:LINE:COL: warning: ..., go to stderr and keep exit 0)
//   freshet validate --spec fraud.yaml --json   the same as one JSON object (for tools such as the Python SDK)
//   freshet validate --reference          the spec reference (every key) as Markdown
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "common/time.h"
#include "serve/json.h"
#include "spec/spec.h"
#include "spec/spec_options.h"

namespace freshet::cli {
namespace {

struct ValidateOptions {
  std::string spec_path;
  bool reference = false;
  bool json = false;
};

// "sliding 30m every 1m", "sliding 1h (continuous)", "tumbling 1h", "session gap 30m", "lifetime".
std::string DescribeWindow(const WindowSpec& w) {
  switch (w.kind) {
    case WindowKind::kLifetime:
      return "lifetime";
    case WindowKind::kSliding:
      return w.slide_ms > 0 ? fmt::format("sliding {} every {}", FormatDuration(w.size_ms), FormatDuration(w.slide_ms))
                            : fmt::format("sliding {} (continuous)", FormatDuration(w.size_ms));
    case WindowKind::kTumbling:
      return fmt::format("tumbling {}", FormatDuration(w.size_ms));
    case WindowKind::kSession:
      return fmt::format("session gap {}", FormatDuration(w.gap_ms));
  }
  return "?";
}

void PrintSummary(const Spec& spec) {
  fmt::print("{}: ok\n", spec.file);
  fmt::print("spec:      {}\n", spec.name);
  if (spec.entity_fields.size() > 1) {
    fmt::print("entity:    [{}] (a composite key)\n", fmt::join(spec.entity_fields, ", "));
  } else {
    fmt::print("entity:    {}\n", spec.entity_field);
  }
  if (spec.ttl_ms) fmt::print("ttl:       {}\n", FormatDuration(*spec.ttl_ms));
  fmt::print("timestamp: {}\n", spec.timestamp_field);
  if (spec.watermark) {
    fmt::print("watermark: max_out_of_orderness {}, allowed_lateness {}\n",
               FormatDuration(spec.watermark->max_out_of_orderness_ms),
               FormatDuration(spec.watermark->allowed_lateness_ms));
  } else {
    fmt::print("watermark: none (no event is dropped as late)\n");
  }
  if (spec.source) {
    fmt::print("source:    {} {}{}\n", spec.source->type, spec.source->path, spec.source->follow ? " (follow)" : "");
  }
  if (spec.has_schema) {
    std::string converted;
    for (const SchemaFieldSpec& f : spec.schema) {
      if (f.schema.from_string) converted += (converted.empty() ? "" : ", ") + f.path;
    }
    fmt::print("schema:    {} field{}{}\n", spec.schema.size(), spec.schema.size() == 1 ? "" : "s",
               converted.empty() ? "" : " (numbers in strings read as numbers: " + converted + ")");
  }
  fmt::print("features:  {}\n", spec.features.size());

  // One aligned row per feature: name, aggregation(field), where, window.
  std::vector<std::string> aggregations, wheres;
  size_t name_width = 0, agg_width = 0, where_width = 0;
  for (const FeatureSpec& f : spec.features) {
    aggregations.push_back(fmt::format("{}({})", AggKindName(f.agg), f.field));
    if (f.agg == AggKind::kApproxCountDistinct) aggregations.back() += fmt::format(" p={}", f.precision);
    if (AggGivesJsonList(f.agg)) aggregations.back() += fmt::format(" k={}", f.k);
    wheres.push_back(f.where ? "where " + f.where_text : "all events");
    name_width = std::max(name_width, f.name.size());
    agg_width = std::max(agg_width, aggregations.back().size());
    where_width = std::max(where_width, wheres.back().size());
  }
  for (size_t k = 0; k < spec.features.size(); ++k) {
    fmt::print("  {:<{}}  {:<{}}  {:<{}}  over {}\n", spec.features[k].name, name_width, aggregations[k], agg_width,
               wheres[k], where_width, DescribeWindow(spec.features[k].window));
  }
}

// {"spec", "entity", "timestamp", "offline_path" (resolved; null: <data dir>/offline), "features": [{"name",
// "aggregation", "field", "window"}], "request_features": [{"name", "expr"}], "request_params": [names]}
void PrintJson(const Spec& spec) {
  std::string out;
  JsonWriter json(&out);
  json.BeginObject().Key("spec").String(spec.name).Key("entity");
  if (spec.entity_fields.size() > 1) {
    json.BeginArray();
    for (const std::string& field : spec.entity_fields) json.String(field);
    json.EndArray();
  } else {
    json.String(spec.entity_field);
  }
  json.Key("timestamp").String(spec.timestamp_field).Key("offline_path");
  if (spec.offline.path.empty()) json.Null();
  else json.String(spec.offline.path);
  json.Key("features").BeginArray();
  for (const FeatureSpec& f : spec.features) {
    json.BeginObject().Key("name").String(f.name).Key("aggregation").String(AggKindName(f.agg));
    json.Key("field").String(f.field).Key("window").String(DescribeWindow(f.window)).EndObject();
  }
  json.EndArray().Key("request_features").BeginArray();
  for (const RequestFeatureSpec& r : spec.request_features.items) {
    json.BeginObject().Key("name").String(r.name).Key("expr").String(r.expr_text).EndObject();
  }
  json.EndArray().Key("request_params").BeginArray();
  for (const std::string& param : spec.request_features.params) json.String(param);
  json.EndArray().EndObject();
  fmt::print("{}\n", out);
}

int RunValidate(const ValidateOptions& options) {
  if (options.reference) {
    fmt::print("{}", SpecReferenceMarkdown());
    return 0;
  }
  if (options.spec_path.empty()) {
    fmt::print(stderr, "freshet validate: error: give the spec file with --spec FILE "
                       "(or --reference to print every key a spec accepts)\n");
    return 2;
  }
  std::vector<SpecDiagnostic> diagnostics;
  Result<Spec> spec = LoadSpec(options.spec_path, &diagnostics);
  if (!spec.ok()) {
    // The message lists every diagnostic as FILE:LINE:COL: error: MESSAGE, or says why the file is unreadable.
    fmt::print(stderr, "{}\n", spec.status().message());
    if (!diagnostics.empty()) {
      fmt::print(stderr, "{} error{} in {}\n", diagnostics.size(), diagnostics.size() == 1 ? "" : "s",
                 options.spec_path);
    }
    return 2;
  }
  fmt::print(stderr, "{}", SpecWarningsText(*spec));
  if (options.json) {
    PrintJson(*spec);
  } else {
    PrintSummary(*spec);
  }
  return 0;
}

}  // namespace

void RegisterValidate(CLI::App& app, int* exit_code) {
  auto options = std::make_shared<ValidateOptions>();
  CLI::App* command = app.add_subcommand("validate", "Check a feature spec and summarize its features");
  CLI::Option* spec = command->add_option("--spec", options->spec_path, "The spec file (YAML)");
  CLI::Option* reference = command->add_flag(
      "--reference", options->reference, "Print the spec reference: every key, its type, default and meaning (Markdown)");
  command->add_flag("--json", options->json, "With --spec: print what the spec declares as one JSON object");
  spec->excludes(reference);
  command->callback([options, exit_code] { *exit_code = RunValidate(*options); });
}

}  // namespace freshet::cli

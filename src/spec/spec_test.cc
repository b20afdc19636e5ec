#include "spec/spec.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "spec/spec_options.h"

namespace freshet {
namespace {

// The example from the spec reference (README), line numbers matter for the tests below.
constexpr char kExample[] = R"(name: fraud
entity: user_id
timestamp: ts
watermark:
  max_out_of_orderness: 5s
  allowed_lateness: 1m
source: {type: file, path: events.jsonl}
features:
  - name: purchase_count_30m
    aggregation: count
    where: "type == 'purchase'"
    window: {type: sliding, size: 30m, slide: 1m}
  - name: avg_txn_amount_1h
    aggregation: mean
    field: amount
    where: "type == 'purchase'"
    window: {type: sliding, size: 1h}
  - name: unique_categories_session
    aggregation: count_distinct
    field: category
    where: "type == 'view'"
    window: {type: session, gap: 30m}
)";

// The head of a valid spec; tests append features to it. Features start at line 5.
constexpr char kHead[] = "name: t\nentity: user_id\ntimestamp: ts\nfeatures:\n";

std::vector<SpecDiagnostic> Diagnose(const std::string& yaml) {
  std::vector<SpecDiagnostic> diagnostics;
  Result<Spec> spec = ParseSpec(yaml, "t.yaml", &diagnostics);
  EXPECT_EQ(spec.ok(), diagnostics.empty());
  return diagnostics;
}

std::string Dump(const std::vector<SpecDiagnostic>& diagnostics) {
  std::string out;
  for (const auto& d : diagnostics) out += std::to_string(d.line) + ":" + std::to_string(d.column) + ": " + d.message + "\n";
  return out;
}

// Asserts that exactly one diagnostic was found, at line:column, and that its message holds every phrase.
void ExpectOnly(const std::string& yaml, int line, int column, const std::vector<std::string>& phrases) {
  std::vector<SpecDiagnostic> diagnostics = Diagnose(yaml);
  ASSERT_EQ(diagnostics.size(), 1u) << Dump(diagnostics);
  EXPECT_EQ(diagnostics[0].line, line) << Dump(diagnostics);
  EXPECT_EQ(diagnostics[0].column, column) << Dump(diagnostics);
  for (const std::string& phrase : phrases) {
    EXPECT_NE(diagnostics[0].message.find(phrase), std::string::npos)
        << "missing phrase: " << phrase << "\nin: " << diagnostics[0].message;
  }
}

TEST(SpecTest, ExampleParsesToExpectedStructure) {
  std::vector<SpecDiagnostic> diagnostics;
  Result<Spec> result = ParseSpec(kExample, "/srv/specs/fraud.yaml", &diagnostics);
  ASSERT_TRUE(result.ok()) << result.status().message();
  EXPECT_TRUE(diagnostics.empty());
  const Spec& spec = *result;
  EXPECT_EQ(spec.name, "fraud");
  EXPECT_EQ(spec.entity_field, "user_id");
  EXPECT_EQ(spec.timestamp_field, "ts");
  EXPECT_EQ(spec.file, "/srv/specs/fraud.yaml");
  ASSERT_TRUE(spec.watermark.has_value());
  EXPECT_EQ(spec.watermark->max_out_of_orderness_ms, 5000);
  EXPECT_EQ(spec.watermark->allowed_lateness_ms, 60000);
  ASSERT_TRUE(spec.source.has_value());
  EXPECT_EQ(spec.source->type, "file");
  EXPECT_EQ(spec.source->path, "/srv/specs/events.jsonl");
  EXPECT_FALSE(spec.source->follow);

  // Slots: entity, timestamp, then per feature its where fields and its aggregation field.
  EXPECT_EQ(spec.fields.paths(), (std::vector<std::string>{"user_id", "ts", "type", "amount", "category"}));

  ASSERT_EQ(spec.features.size(), 3u);
  const FeatureSpec& count = spec.features[0];
  EXPECT_EQ(count.name, "purchase_count_30m");
  EXPECT_EQ(count.agg, AggKind::kCount);
  EXPECT_EQ(count.field, "");
  EXPECT_EQ(count.field_slot, -1);
  EXPECT_EQ(count.where_text, "type == 'purchase'");
  ASSERT_TRUE(count.where.has_value());
  EXPECT_EQ(count.window.kind, WindowKind::kSliding);
  EXPECT_EQ(count.window.size_ms, 30 * 60 * 1000);
  EXPECT_EQ(count.window.slide_ms, 60 * 1000);
  EXPECT_EQ(count.line, 9);

  const FeatureSpec& mean = spec.features[1];
  EXPECT_EQ(mean.name, "avg_txn_amount_1h");
  EXPECT_EQ(mean.agg, AggKind::kMean);
  EXPECT_EQ(mean.field, "amount");
  EXPECT_EQ(mean.field_slot, 3);
  EXPECT_EQ(mean.window.kind, WindowKind::kSliding);
  EXPECT_EQ(mean.window.size_ms, 3600 * 1000);
  EXPECT_EQ(mean.window.slide_ms, 0);  // Continuous.
  EXPECT_EQ(mean.line, 13);

  const FeatureSpec& distinct = spec.features[2];
  EXPECT_EQ(distinct.name, "unique_categories_session");
  EXPECT_EQ(distinct.agg, AggKind::kCountDistinct);
  EXPECT_EQ(distinct.field, "category");
  EXPECT_EQ(distinct.field_slot, 4);
  EXPECT_EQ(distinct.where_text, "type == 'view'");
  EXPECT_EQ(distinct.window.kind, WindowKind::kSession);
  EXPECT_EQ(distinct.window.gap_ms, 30 * 60 * 1000);
  EXPECT_EQ(distinct.line, 18);

  // The where expressions read the slots they were given.
  std::vector<Value> slots(spec.fields.size());
  slots[2] = Value::String("purchase");
  EXPECT_TRUE(count.where->Eval(slots));
  EXPECT_FALSE(distinct.where->Eval(slots));
  slots[2] = Value::String("view");
  EXPECT_FALSE(count.where->Eval(slots));
  EXPECT_TRUE(distinct.where->Eval(slots));
}

TEST(SpecTest, OptionalPartsAndDefaults) {
  Result<Spec> spec = ParseSpec(std::string(kHead) +
                                    "  - {name: n, aggregation: count, window: {type: lifetime}}\n"
                                    "  - {name: t1h, aggregation: sum, field: order.total, window: {type: tumbling, size: 1h}}\n"
                                    "  - {name: hll, aggregation: approx_count_distinct, field: ip, window: {type: lifetime}}\n"
                                    "  - {name: hll10, aggregation: approx_count_distinct, field: ip, precision: 10,"
                                    " window: {type: lifetime}}\n",
                                "t.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  EXPECT_FALSE(spec->watermark.has_value());
  EXPECT_FALSE(spec->source.has_value());
  ASSERT_EQ(spec->features.size(), 4u);
  EXPECT_EQ(spec->features[0].window.kind, WindowKind::kLifetime);
  EXPECT_FALSE(spec->features[0].where.has_value());
  EXPECT_EQ(spec->features[1].field, "order.total");
  EXPECT_EQ(spec->features[1].window.kind, WindowKind::kTumbling);
  EXPECT_EQ(spec->features[1].window.size_ms, 3600000);
  EXPECT_EQ(spec->features[1].window.slide_ms, 3600000);
  EXPECT_EQ(spec->features[2].precision, 14);
  EXPECT_EQ(spec->features[3].precision, 10);
  EXPECT_EQ(spec->features[2].field_slot, spec->features[3].field_slot);  // Same field, one slot.
  EXPECT_EQ(spec->fields.paths(), (std::vector<std::string>{"user_id", "ts", "order.total", "ip"}));
}

TEST(SpecTest, WatermarkDefaultsAndZero) {
  Result<Spec> spec = ParseSpec(
      "name: t\nentity: u\ntimestamp: ts\nwatermark: {allowed_lateness: 0s}\n"
      "features: [{name: n, aggregation: count, window: {type: lifetime}}]\n",
      "t.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  ASSERT_TRUE(spec->watermark.has_value());
  EXPECT_EQ(spec->watermark->max_out_of_orderness_ms, 0);
  EXPECT_EQ(spec->watermark->allowed_lateness_ms, 0);
}

// The features table needs a watermark: on by default with one, off without, and refused when asked for
// without one (the rows of out-of-order events could not be exact).
TEST(SpecTest, FeaturesTableFollowsTheWatermark) {
  const std::string features = "features: [{name: n, aggregation: count, window: {type: lifetime}}]\n";
  const std::string head = "name: t\nentity: u\ntimestamp: ts\n";
  Result<Spec> with = ParseSpec(head + "watermark: {max_out_of_orderness: 1s}\n" + features, "t.yaml");
  ASSERT_TRUE(with.ok()) << with.status().message();
  EXPECT_TRUE(with->offline.features);
  Result<Spec> without = ParseSpec(head + features, "t.yaml");
  ASSERT_TRUE(without.ok()) << without.status().message();
  EXPECT_FALSE(without->offline.features);
  Result<Spec> off = ParseSpec(head + "watermark: {max_out_of_orderness: 1s}\noffline: {features: false}\n" + features,
                               "t.yaml");
  ASSERT_TRUE(off.ok()) << off.status().message();
  EXPECT_FALSE(off->offline.features);
  ExpectOnly(head + "offline: {features: true}\n" + features, 4, 21,
             {"the features table needs a 'watermark'", "watermark: {max_out_of_orderness"});
}

TEST(SpecTest, DedupReadsItsFieldAfterTheFeaturesAndDefaultsWithinToADay) {
  Result<Spec> spec = ParseSpec("name: t\nentity: user_id\ntimestamp: ts\ndedup: {field: meta.event_id}\n"
                                "features: [{name: s, aggregation: sum, field: amount, window: {type: lifetime}}]\n",
                                "t.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  ASSERT_TRUE(spec->dedup.has_value());
  EXPECT_EQ(spec->dedup->field, "meta.event_id");
  EXPECT_EQ(spec->dedup->within_ms, 24 * 3600 * 1000);
  EXPECT_EQ(spec->dedup->within_ms, DedupSpec().within_ms);
  // The features' slots are those of the same spec without dedup; the id field comes last.
  EXPECT_EQ(spec->fields.paths(), (std::vector<std::string>{"user_id", "ts", "amount", "meta.event_id"}));
  EXPECT_EQ(spec->dedup->field_slot, 3);

  Result<Spec> shared = ParseSpec("name: t\nentity: user_id\ntimestamp: ts\ndedup: {field: id, within: 90s}\n"
                                  "features: [{name: l, aggregation: last, field: id, window: {type: lifetime}}]\n",
                                  "t.yaml");
  ASSERT_TRUE(shared.ok()) << shared.status().message();
  EXPECT_EQ(shared->dedup->within_ms, 90000);
  EXPECT_EQ(shared->dedup->field_slot, shared->features[0].field_slot);
  EXPECT_FALSE(ParseSpec(std::string(kHead) + "  - {name: n, aggregation: count, window: {type: lifetime}}\n",
                         "t.yaml")->dedup.has_value());
}

TEST(SpecTest, DedupMistakesSayWhereAndWhatToWrite) {
  const std::string features = "features: [{name: n, aggregation: count, window: {type: lifetime}}]\n";
  const std::string head = "name: t\nentity: user_id\ntimestamp: ts\n";
  ExpectOnly(head + "dedup: {fild: event_id}\n" + features, 4, 9,
             {"unknown key 'fild'; did you mean 'field'? valid keys: field, within"});
  ExpectOnly(head + "dedup: {within: 1h}\n" + features, 4, 8,
             {"missing required key 'field'", "e.g. field: event_id"});
  ExpectOnly(head + "dedup: {field: event_id, within: 10}\n" + features, 4, 34, {"'within' needs a unit"});
  ExpectOnly(head + "dedup: {field: event id}\n" + features, 4, 16, {"invalid field path 'event id'"});
  ExpectOnly(head + "dedup: {field: user_id}\n" + features, 4, 16, {"is the entity field", "field: event_id"});
  ExpectOnly(head + "dedup: event_id\n" + features, 4, 8, {"expected a map of keys for 'dedup'",
                                                               "{field: event_id, within: 24h}"});
  ExpectOnly(head + "dedupe: {field: event_id}\n" + features, 4, 1, {"did you mean 'dedup'?"});
}

TEST(SpecTest, UnknownKeySuggestsClosest) {
  ExpectOnly(std::string(kHead) +
                 "  - name: n\n"
                 "    aggregaton: count\n"
                 "    aggregation: count\n"
                 "    window: {type: lifetime}\n",
             6, 5,
             {"unknown key 'aggregaton'; did you mean 'aggregation'? valid keys: name, aggregation, field, where, "
              "window, precision"});
  // No suggestion when nothing is close; top-level keys are listed.
  ExpectOnly(std::string("zzz: 1\n") + kHead + "  - {name: n, aggregation: count, window: {type: lifetime}}\n", 1, 1,
             {"unknown key 'zzz'; valid keys: name, entity, timestamp, schema, watermark, dedup, parallelism, source, "
              "features"});
  // Inside a flow map.
  ExpectOnly(std::string(kHead) + "  - {name: n, aggregation: count, window: {type: sliding, sze: 1m, size: 1h}}\n", 5, 59,
             {"unknown key 'sze'; did you mean 'size'?"});
}

TEST(SpecTest, DuplicateKey) {
  ExpectOnly("name: a\nname: b\nentity: u\ntimestamp: ts\n"
             "features: [{name: n, aggregation: count, window: {type: lifetime}}]\n",
             2, 1, {"duplicate key 'name'", "line 1"});
}

TEST(SpecTest, MissingRequiredKeys) {
  std::vector<SpecDiagnostic> d = Diagnose("name: t\nfeatures: [{name: n, aggregation: count, window: {type: lifetime}}]\n");
  ASSERT_EQ(d.size(), 2u) << Dump(d);
  EXPECT_EQ(d[0].line, 1);
  EXPECT_EQ(d[0].column, 1);
  EXPECT_NE(d[0].message.find("missing required key 'entity'"), std::string::npos);
  EXPECT_NE(d[1].message.find("missing required key 'timestamp'"), std::string::npos);

  ExpectOnly(std::string(kHead) + "  - name: n\n    aggregation: count\n", 5, 5,
             {"missing required key 'window'", "lifetime, sliding, tumbling, session"});
  ExpectOnly(std::string(kHead) + "  - name: n\n    aggregation: sum\n    window: {type: lifetime}\n", 5, 5,
             {"missing required key 'field'", "aggregation is sum", "e.g. field: amount"});
  ExpectOnly(std::string(kHead) + "  - name: n\n    window: {type: lifetime}\n", 5, 5,
             {"missing required key 'aggregation'", "count, sum, mean"});
  ExpectOnly("name: t\nentity: u\ntimestamp: ts\n", 1, 1, {"missing required key 'features'"});
}

TEST(SpecTest, CountTakesNoField) {
  ExpectOnly(std::string(kHead) +
                 "  - name: n\n    aggregation: count\n    field: amount\n    window: {type: lifetime}\n",
             7, 5, {"count takes no field; remove it or use sum"});
}

TEST(SpecTest, Precision) {
  ExpectOnly(std::string(kHead) +
                 "  - name: n\n    aggregation: mean\n    field: x\n    precision: 12\n    window: {type: lifetime}\n",
             8, 5, {"only approx_count_distinct takes a precision"});
  ExpectOnly(std::string(kHead) + "  - name: n\n    aggregation: approx_count_distinct\n    field: x\n"
                                  "    precision: 20\n    window: {type: lifetime}\n",
             8, 16, {"'precision' must be an integer from 4 to 18, got '20'"});
}

TEST(SpecTest, PercentilesBecomeOneFeatureEach) {
  Result<Spec> spec = ParseSpec(std::string(kHead) +
                                    "  - name: amt\n    aggregation: approx_percentile\n    field: amount\n"
                                    "    where: \"type == 'purchase'\"\n"
                                    "    percentiles: [0.5, 0.95, 0.999, 0, 1, 0.07]\n    window: {type: lifetime}\n"
                                    "  - {name: f, aggregation: first, field: category, window: {type: lifetime}}\n",
                                "t.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  std::vector<std::string> names;
  for (const FeatureSpec& f : spec->features) names.push_back(f.name);
  EXPECT_EQ(names, (std::vector<std::string>{"amt_p50", "amt_p95", "amt_p99_9", "amt_p0", "amt_p100", "amt_p7", "f"}));
  EXPECT_EQ(spec->features[1].percentile_ppm, 950000);
  EXPECT_EQ(spec->features[5].percentile_ppm, 70000);
  EXPECT_EQ(spec->features[2].agg, AggKind::kApproxPercentile);
  EXPECT_TRUE(spec->features[4].where.has_value());
  EXPECT_EQ(spec->features[4].where_text, "type == 'purchase'");
  EXPECT_EQ(spec->features[6].agg, AggKind::kFirst);
  EXPECT_EQ(PercentileFeatureName("x", 999999), "x_p99_9999");
  EXPECT_EQ(PercentileFeatureName("x", 5), "x_p0_0005");
}

TEST(SpecTest, PercentileMistakesSayWhatToWrite) {
  const std::string head = std::string(kHead) + "  - name: n\n    aggregation: approx_percentile\n    field: x\n";
  ExpectOnly(head + "    window: {type: lifetime}\n", 5, 5,
             {"missing required key 'percentiles'", "[0.5, 0.95]"});
  ExpectOnly(head + "    percentiles: [0.5, 1.5]\n    window: {type: lifetime}\n", 8, 24,
             {"each percentile must be a number from 0 to 1", "'1.5'"});
  ExpectOnly(head + "    percentiles: [0.1234567]\n    window: {type: lifetime}\n", 8, 19,
             {"more than 6 decimals"});
  ExpectOnly(head + "    percentiles: [0.5, 0.50]\n    window: {type: lifetime}\n", 8, 24, {"listed twice"});
  ExpectOnly(head + "    percentiles: []\n    window: {type: lifetime}\n", 8, 18, {"an empty list"});
  ExpectOnly(head + "    percentiles: 0.5\n    window: {type: lifetime}\n", 8, 18, {"a list of numbers"});
  ExpectOnly(std::string(kHead) + "  - name: n\n    aggregation: max\n    field: x\n    percentiles: [0.5]\n"
                                  "    window: {type: lifetime}\n",
             8, 5, {"only approx_percentile takes percentiles"});
  ExpectOnly(std::string(kHead) + "  - {name: n_p50, aggregation: count, window: {type: lifetime}}\n" +
                 "  - name: n\n    aggregation: approx_percentile\n    field: x\n"
                 "    percentiles: [0.5]\n    window: {type: lifetime}\n",
             9, 18, {"percentile feature 'n_p50' has the name of the feature at line 5"});
}

TEST(SpecTest, TopKLastKAndFieldLists) {
  Result<Spec> spec = ParseSpec(std::string(kHead) +
                                    "  - {name: t, aggregation: top_k, k: 3, field: category, window: {type: lifetime}}\n"
                                    "  - {name: l, aggregation: last_k, k: 100, field: amount, window: {type: lifetime}}\n"
                                    "  - {name: p, aggregation: count_distinct, field: [merchant_id, device.id],\n"
                                    "     window: {type: lifetime}}\n",
                                "t.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  EXPECT_EQ(spec->features[0].agg, AggKind::kTopK);
  EXPECT_EQ(spec->features[0].k, 3);
  EXPECT_EQ(spec->features[1].agg, AggKind::kLastK);
  EXPECT_EQ(spec->features[1].k, 100);
  EXPECT_EQ(spec->features[2].tuple_fields, (std::vector<std::string>{"merchant_id", "device.id"}));
  EXPECT_EQ(spec->features[2].field, "[merchant_id, device.id]");
  ASSERT_EQ(spec->features[2].tuple_slots.size(), 2u);
  EXPECT_EQ(spec->features[2].field_slot, spec->features[2].tuple_slots[0]);
}

TEST(SpecTest, TopKAndFieldListMistakesSayWhatToWrite) {
  const std::string head = std::string(kHead) + "  - name: n\n";
  ExpectOnly(head + "    aggregation: top_k\n    field: x\n    window: {type: lifetime}\n", 5, 5,
             {"missing required key 'k'"});
  ExpectOnly(head + "    aggregation: last_k\n    field: x\n    k: 0\n    window: {type: lifetime}\n", 8, 8,
             {"'k' must be an integer from 1 to 100"});
  ExpectOnly(head + "    aggregation: max\n    field: x\n    k: 3\n    window: {type: lifetime}\n", 8, 5,
             {"only top_k and last_k take k"});
  ExpectOnly(head + "    aggregation: sum\n    field: [a, b]\n    window: {type: lifetime}\n", 7, 12,
             {"only count_distinct and approx_count_distinct take a list of fields"});
  ExpectOnly(head + "    aggregation: count_distinct\n    field: [a]\n    window: {type: lifetime}\n", 7, 12,
             {"'field' lists 1 fields; list 2 to 8"});
  ExpectOnly(head + "    aggregation: count_distinct\n    field: [a, a]\n    window: {type: lifetime}\n", 7, 16,
             {"field 'a' is listed twice"});
  ExpectOnly(head + "    aggregation: count_distinct\n    field: [a, 'b c']\n    window: {type: lifetime}\n", 7, 16,
             {"invalid field path 'b c'"});
}

TEST(SpecTest, WindowRules) {
  // A key of another window type.
  ExpectOnly(std::string(kHead) + "  - name: n\n    aggregation: count\n    window: {type: sliding, size: 1h, gap: 5m}\n",
             7, 39, {"'gap' does not apply when type is sliding", "only when type is session",
                     "valid keys here: type, size, slide"});
  // Slide must divide size; the nearest divisors are suggested, at the slide value.
  ExpectOnly(std::string(kHead) + "  - name: n\n    aggregation: count\n    window: {type: sliding, size: 1h, slide: 7m}\n",
             7, 46, {"slide 7m does not divide size 1h", "6m or 10m"});
  ExpectOnly(std::string(kHead) + "  - name: n\n    aggregation: count\n    window: {type: sliding, size: 1m, slide: 7s}\n",
             7, 46, {"6s or 10s"});
  ExpectOnly(std::string(kHead) + "  - name: n\n    aggregation: count\n    window: {type: sliding, size: 1h, slide: 2h}\n",
             7, 46, {"slide 2h is longer than size 1h", "1h"});
  // Missing size.
  ExpectOnly(std::string(kHead) + "  - name: n\n    aggregation: count\n    window: {type: tumbling}\n", 7, 13,
             {"missing required key 'size'", "type is tumbling"});
  // Unknown type.
  ExpectOnly(std::string(kHead) + "  - name: n\n    aggregation: count\n    window: {type: slidng, size: 1h}\n", 7,
             20, {"unknown type 'slidng'; did you mean 'sliding'?", "lifetime, sliding, tumbling, session"});
  // Window as a scalar.
  ExpectOnly(std::string(kHead) + "  - name: n\n    aggregation: count\n    window: 30m\n", 7, 13,
             {"expected a map of keys for 'window'", "{type: sliding", "got a single value"});
}

TEST(SpecTest, Durations) {
  ExpectOnly(std::string(kHead) + "  - name: n\n    aggregation: count\n    window: {type: tumbling, size: 30}\n", 7,
             36, {"write 30m, not 30"});
  ExpectOnly(std::string(kHead) + "  - name: n\n    aggregation: count\n    window: {type: session, gap: 5 min}\n", 7,
             34, {"invalid duration '5 min'", "ms, s, m, h, d"});
  ExpectOnly(std::string(kHead) + "  - name: n\n    aggregation: count\n    window: {type: session, gap: 0s}\n", 7, 34,
             {"greater than zero"});
}

TEST(SpecTest, FeatureNames) {
  ExpectOnly(std::string(kHead) + "  - {name: 30m-count, aggregation: count, window: {type: lifetime}}\n", 5, 12,
             {"invalid name '30m-count'", "try 'f_30m_count'"});
  ExpectOnly(std::string(kHead) + "  - {name: n, aggregation: count, window: {type: lifetime}}\n"
                                  "  - {name: m, aggregation: count, window: {type: lifetime}}\n"
                                  "  - {name: n, aggregation: count, window: {type: lifetime}}\n",
             7, 12, {"duplicate feature name 'n'", "first one is at line 5"});
  ExpectOnly(std::string(kHead) + "  - {name: user_id, aggregation: count, window: {type: lifetime}}\n", 5, 12,
             {"feature name 'user_id' is the entity field"});
  ExpectOnly(std::string(kHead) + "  - {name: ts, aggregation: count, window: {type: lifetime}}\n", 5, 12,
             {"feature name 'ts' is the timestamp field"});
  ExpectOnly(std::string(kHead) + "  - {name: _n, aggregation: count, window: {type: lifetime}}\n", 5, 12,
             {"feature name '_n' starts with '_'", "_event_time_ms"});
  ExpectOnly(std::string(kHead) + "  - {name: event_time, aggregation: count, window: {type: lifetime}}\n", 5, 12,
             {"feature name 'event_time' is a column the offline tables already have"});
}

TEST(SpecTest, WrongTypes) {
  ExpectOnly("name: t\nentity: u\ntimestamp: ts\nwatermark: [5s]\n"
             "features: [{name: n, aggregation: count, window: {type: lifetime}}]\n",
             4, 12, {"expected a map of keys for 'watermark'", "got a list"});
  ExpectOnly("name: t\nentity: u\ntimestamp: ts\nfeatures: {name: n}\n", 4, 11,
             {"'features' is a map; expected a list"});
  ExpectOnly("name: t\nentity: u\ntimestamp: ts\nfeatures: []\n", 4, 11, {"at least one feature"});
  ExpectOnly("name: t\nentity: [u]\ntimestamp: ts\n"
             "features: [{name: n, aggregation: count, window: {type: lifetime}}]\n",
             2, 9, {"a composite 'entity' lists 2 to 8 fields, got 1"});
  ExpectOnly("name:\nentity: u\ntimestamp: ts\n"
             "features: [{name: n, aggregation: count, window: {type: lifetime}}]\n",
             1, 1, {"'name' has no value"});
  ExpectOnly(std::string(kHead) + "  - just_a_name\n", 5, 5, {"expected a map of keys for each item of 'features'"});
  ExpectOnly("- a\n- b\n", 1, 1, {"expected a map of keys for the spec, got a list"});
  ExpectOnly("name: t\nentity: a..b\ntimestamp: ts\n"
             "features: [{name: n, aggregation: count, window: {type: lifetime}}]\n",
             2, 9, {"invalid field path 'a..b'"});
  ExpectOnly("name: t\nentity: u\ntimestamp: ts\nsource: {path: e.jsonl, follow: maybe}\n"
             "features: [{name: n, aggregation: count, window: {type: lifetime}}]\n",
             4, 33, {"'follow' must be true or false, got 'maybe'"});
}

TEST(SpecTest, YamlSyntaxErrorHasPosition) {
  // yaml-cpp reads "t entity" as one plain scalar and stops at the ':' that follows it.
  ExpectOnly("name: t\n  entity: u\n", 2, 9, {"invalid YAML"});
  ExpectOnly("name: t\nfeatures: [\n", 3, 1, {"invalid YAML"});
  ExpectOnly("name: t\nwatermark:\n\tallowed_lateness: 1m\n", 3, 18, {"tab"});
  // yaml-cpp alone would loop forever on a stray ',' where a document starts.
  ExpectOnly(",name: t\n", 1, 1, {"unexpected ','"});
  ExpectOnly(std::string(kHead) + "  - {name: n, aggregation: count, window: {type: lifetime}}\n---\nname: u\n", 6, 1,
             {"one YAML document"});
}

TEST(SpecTest, EmptySpec) {
  ExpectOnly("", 1, 1, {"the spec is empty"});
  ExpectOnly("# only a comment\n", 1, 1, {"the spec is empty"});
}

TEST(SpecTest, WhereErrorPointsIntoTheExpression) {
  // Double-quoted: the column of '=' is the quote's column + 1 + its offset (5) in the expression.
  //            1234567890123456789
  // Line 7:   "    where: \"type = 'purchase'\""  -> quote at 12, '=' at 18.
  ExpectOnly(std::string(kHead) +
                 "  - name: n\n    aggregation: count\n    where: \"type = 'purchase'\"\n    window: {type: lifetime}\n",
             7, 18, {"in 'where'", "'='"});
  // Plain scalar: 't' at 12, '=' at 17.
  ExpectOnly(std::string(kHead) +
                 "  - name: n\n    aggregation: count\n    where: type = 'purchase'\n    window: {type: lifetime}\n",
             7, 17, {"in 'where'"});
  // A block scalar: the error points at the value.
  ExpectOnly(std::string(kHead) +
                 "  - name: n\n    aggregation: count\n    where: |\n      type = 'x'\n    window: {type: lifetime}\n",
             7, 12, {"in 'where'"});
  ExpectOnly(std::string(kHead) + "  - name: n\n    aggregation: count\n    where: ''\n    window: {type: lifetime}\n",
             7, 12, {"'where' is empty"});
}

TEST(SpecTest, DerivedFieldsAreReadByFeaturesAndTheirMistakesArePlaced) {
  const std::string feature = "  - {name: n, aggregation: sum, field: usd, where: \"big == true\", window: {type: lifetime}}\n";
  // Line 5 starts the derive list (kHead's `features:` moves below it).
  const std::string head = "name: t\nentity: user_id\ntimestamp: ts\nderive:\n";
  Result<Spec> spec = ParseSpec(head + "  - {name: usd, expr: \"amount * rate\"}\n  - {name: big, expr: \"usd > 100\"}\n" +
                                    "features:\n" + feature, "t.yaml", nullptr);
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  ASSERT_EQ(spec->derived.size(), 2u);
  EXPECT_EQ(spec->derived[0].canonical, "(amount * rate)");
  EXPECT_EQ(spec->features[0].field_slot, spec->derived[0].slot);
  EXPECT_TRUE(spec->fields.is_derived(spec->derived[1].slot));
  EXPECT_FALSE(spec->fields.is_derived(spec->fields.Intern("amount")));

  // Column of the error: the quote is at 23 (1-based), so offset k of the expression is at 24 + k.
  ExpectOnly(head + "  - {name: usd, expr: \"amount * 'x'\"}\nfeatures:\n" + feature, 5, 31,
             {"in 'expr' of derived field 'usd'", "'*' takes a number, not text"});
  ExpectOnly(head + "  - {name: usd, expr: \"lowr(x)\"}\nfeatures:\n" + feature, 5, 24, {"did you mean 'lower'?"});
  // Used above its definition, or by itself.
  ExpectOnly(head + "  - {name: big, expr: \"usd > 100\"}\n  - {name: usd, expr: \"amount\"}\nfeatures:\n" + feature,
             6, 12, {"define 'usd' above the derived fields that use it"});
  ExpectOnly(head + "  - {name: usd, expr: \"usd + 1\"}\n  - {name: big, expr: \"true\"}\nfeatures:\n" + feature, 5, 24,
             {"reads itself"});
  ExpectOnly(head + "  - {name: ts, expr: \"1\"}\n  - {name: usd, expr: \"1\"}\n  - {name: big, expr: \"true\"}\nfeatures:\n" +
                 feature,
             5, 12, {"would replace the timestamp field"});
}

TEST(SpecTest, WithASchemaDerivedFieldsNeedNoDeclarationButTheFieldsTheyReadDo) {
  const std::string head = "name: t\nentity: user_id\ntimestamp: ts\nschema: {user_id: string, ts: timestamp, amount: number}\n"
                           "derive:\n";
  const std::string feature =
      "features:\n  - {name: n, aggregation: sum, field: usd, where: \"big == true\", window: {type: lifetime}}\n";
  Result<Spec> spec = ParseSpec(head + "  - {name: usd, expr: \"amount * 2\"}\n  - {name: big, expr: \"usd > 100\"}\n" +
                                    feature, "t.yaml", nullptr);
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  // Line 6, quote at column 23: 'amont' at offset 0 is column 24.
  ExpectOnly(head + "  - {name: usd, expr: \"amont * 2\"}\n  - {name: big, expr: \"usd > 100\"}\n" + feature, 6, 24,
             {"in 'expr' of derived field 'usd': unknown field 'amont'", "did you mean 'amount'?"});
}

TEST(SpecTest, EveryErrorIsReportedInDocumentOrder) {
  const std::string yaml =
      "name: t\n"
      "entity: user_id\n"
      "timestamp: ts\n"
      "watermark: {max_out_of_orderness: 5}\n"                                 // 4:35 bare integer
      "features:\n"
      "  - name: a\n"
      "    aggregaton: count\n"                                              // 7:5 unknown key
      "    window: {type: sliding, size: 1h, slide: 7m}\n"                   // 8:46 slide
      "  - name: b\n"
      "    aggregation: count\n"
      "    field: x\n"                                                       // 11:5 count with field
      "    where: \"type ==\"\n"                                             // 12:20 where error at end
      "    window: {type: session, gap: 30}\n";                              // 13:34 bare integer
  std::vector<SpecDiagnostic> d = Diagnose(yaml);
  // Feature a also lacks `aggregation`; the typo's suggestion covers that, so it is not reported twice.
  ASSERT_EQ(d.size(), 6u) << Dump(d);
  std::vector<std::pair<int, int>> positions;
  for (const auto& x : d) positions.emplace_back(x.line, x.column);
  EXPECT_EQ(positions, (std::vector<std::pair<int, int>>{{4, 35}, {7, 5}, {8, 46}, {11, 5}, {12, 20}, {13, 34}}))
      << Dump(d);
  EXPECT_NE(d[1].message.find("did you mean 'aggregation'"), std::string::npos);
  EXPECT_NE(d[4].message.find("in 'where'"), std::string::npos);

  // The Status message lists them all as FILE:LINE:COL: error: MESSAGE.
  Result<Spec> spec = ParseSpec(yaml, "dir/t.yaml");
  ASSERT_FALSE(spec.ok());
  const std::string& message = spec.status().message();
  EXPECT_EQ(message.rfind("dir/t.yaml:4:35: error: 'max_out_of_orderness' needs a unit", 0), 0u) << message;
  EXPECT_EQ(std::count(message.begin(), message.end(), '\n'), 5);
  EXPECT_NE(message.find("\ndir/t.yaml:13:34: error: "), std::string::npos) << message;
}

TEST(SpecTest, SourcePathIsResolvedAgainstTheSpecFolder) {
  auto source_path = [](const std::string& file, const std::string& path) {
    Result<Spec> spec = ParseSpec("name: t\nentity: u\ntimestamp: ts\nsource: {path: '" + path +
                                      "', follow: true}\nfeatures: [{name: n, aggregation: count, window: {type: lifetime}}]\n",
                                  file);
    EXPECT_TRUE(spec.ok()) << spec.status().message();
    EXPECT_TRUE(spec.ok() && spec->source->follow);
    return spec.ok() ? spec->source->path : std::string("<error>");
  };
  // Relative paths become absolute, against the working directory (getcwd names it without symlinks).
  const std::string cwd = std::filesystem::current_path().string();
  EXPECT_EQ(source_path("specs/prod/fraud.yaml", "events.jsonl"), cwd + "/specs/prod/events.jsonl");
  EXPECT_EQ(source_path("specs/prod/fraud.yaml", "../data/events.jsonl"), cwd + "/specs/data/events.jsonl");
  EXPECT_EQ(source_path("fraud.yaml", "events.jsonl"), cwd + "/events.jsonl");
  EXPECT_EQ(source_path("./fraud.yaml", "./in/./e.jsonl"), cwd + "/in/e.jsonl");
  EXPECT_EQ(source_path("/nonexistent/freshet/fraud.yaml", "/nonexistent/data/e.jsonl"), "/nonexistent/data/e.jsonl");
}

// The one events file gets the one path whether the spec was named relative to the working directory, by an
// absolute path or through a symlinked folder (the file source's checkpoints record the path: issue 13).
TEST(SpecTest, SourcePathIsCanonicalThroughSymlinkedFolders) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::weakly_canonical(fs::temp_directory_path()) /
                       ("freshet_spec_canonical_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "real");
  fs::create_directory_symlink(dir / "real", dir / "link");
  std::ofstream(dir / "real" / "events.jsonl") << "{}\n";
  fs::create_symlink("events.jsonl", dir / "real" / "current.jsonl");
  auto source_path = [](const fs::path& spec_file, const std::string& path) {
    Result<Spec> spec = ParseSpec("name: t\nentity: u\ntimestamp: ts\nsource: {path: '" + path +
                                      "'}\nfeatures: [{name: n, aggregation: count, window: {type: lifetime}}]\n",
                                  spec_file.string());
    EXPECT_TRUE(spec.ok()) << spec.status().message();
    return spec.ok() ? spec->source->path : std::string("<error>");
  };
  const std::string expected = (dir / "real" / "events.jsonl").string();
  EXPECT_EQ(source_path(dir / "real" / "spec.yaml", "events.jsonl"), expected);
  EXPECT_EQ(source_path(dir / "link" / "spec.yaml", "events.jsonl"), expected);
  EXPECT_EQ(source_path(dir / "link" / "spec.yaml", "../link/./events.jsonl"), expected);
  EXPECT_EQ(source_path(dir / "elsewhere.yaml", (dir / "link" / "events.jsonl").string()), expected);
  const fs::path previous = fs::current_path();
  fs::current_path(dir / "link");
  EXPECT_EQ(source_path("spec.yaml", "events.jsonl"), expected);
  fs::current_path(previous);
  // A symlinked file keeps its own name: re-pointing it is how some rotations start a new file.
  EXPECT_EQ(source_path(dir / "link" / "spec.yaml", "current.jsonl"), (dir / "real" / "current.jsonl").string());
  // A file that does not exist yet (followed, created later) still gets its folder resolved.
  EXPECT_EQ(source_path(dir / "link" / "spec.yaml", "later/e.jsonl"), (dir / "real" / "later" / "e.jsonl").string());
  fs::remove_all(dir);
}

TEST(SpecTest, LoadSpecReadsFilesAndReportsMissingOnes) {
  Result<Spec> missing = LoadSpec("/nonexistent/dir/spec.yaml");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/dir/spec.yaml"), std::string::npos);
  EXPECT_NE(missing.status().message().find("No such file"), std::string::npos);

  std::filesystem::path dir = std::filesystem::temp_directory_path() / ("freshet_spec_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string file = (dir / "fraud.yaml").string();
  std::ofstream(file) << kExample;
  Result<Spec> spec = LoadSpec(file);
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  EXPECT_EQ(spec->file, file);
  EXPECT_EQ(spec->source->path, (dir / "events.jsonl").string());
  std::filesystem::remove_all(dir);
}

// Random deletions, duplications and swaps of characters of a valid spec must never crash, and a
// rejected spec always says why, at a real position.
TEST(SpecTest, MutatedSpecsNeverCrash) {
  std::mt19937 rng(20240301);
  const std::string base = kExample;
  int rejected = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string text = base;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !text.empty(); ++e) {
      const size_t at = rng() % text.size();
      switch (rng() % 3) {
        case 0: text.erase(at, 1); break;
        case 1: text.insert(at, 1, text[at]); break;
        case 2: std::swap(text[at], text[rng() % text.size()]); break;
      }
    }
    std::vector<SpecDiagnostic> diagnostics;
    Result<Spec> spec = ParseSpec(text, "fuzz.yaml", &diagnostics);
    if (spec.ok()) {
      EXPECT_TRUE(diagnostics.empty());
      EXPECT_FALSE(spec->features.empty());
      continue;
    }
    ++rejected;
    ASSERT_FALSE(diagnostics.empty()) << text;
    for (const auto& d : diagnostics) {
      EXPECT_GE(d.line, 1) << text;
      EXPECT_GE(d.column, 1) << text;
      EXPECT_FALSE(d.message.empty()) << text;
    }
  }
  EXPECT_GT(rejected, 1000);  // The mutations do exercise the error paths.
}

// ---------------------------------------------------------------------------------------------------
// schema:

// A spec head with a schema; tests append features, which start at line 11.
constexpr char kSchemaHead[] = R"(name: t
entity: user_id
timestamp: ts
schema:
  user_id: string
  ts: timestamp
  type: string
  amount: {type: number, from_string: true}
  flag: bool
features:
)";

// One feature line (line 11 when appended to kSchemaHead).
std::string Feature(const std::string& body) { return "  - {name: f, " + body + ", window: {type: lifetime}}\n"; }

TEST(SchemaTest, DeclaresTypesOfTheSlots) {
  Result<Spec> spec = ParseSpec(std::string(kSchemaHead) +
                                    Feature("aggregation: sum, field: amount, where: \"type == 'purchase' and flag\""),
                                "t.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  EXPECT_TRUE(spec->has_schema);
  EXPECT_TRUE(spec->warnings.empty());
  ASSERT_EQ(spec->schema.size(), 5u);
  EXPECT_EQ(spec->schema[3].path, "amount");
  EXPECT_EQ(spec->schema[3].line, 8);
  EXPECT_EQ(spec->schema[3].schema.type, FieldType::kNumber);
  EXPECT_TRUE(spec->schema[3].schema.from_string);
  // Slots: user_id, ts, type, flag (the where), amount (the field).
  ASSERT_EQ(spec->fields.paths(), (std::vector<std::string>{"user_id", "ts", "type", "flag", "amount"}));
  EXPECT_EQ(spec->fields.schema(0).type, FieldType::kString);
  EXPECT_EQ(spec->fields.schema(1).type, FieldType::kTimestamp);
  EXPECT_EQ(spec->fields.schema(3).type, FieldType::kBool);
  EXPECT_EQ(spec->fields.schema(4).type, FieldType::kNumber);
  EXPECT_TRUE(spec->fields.schema(4).from_string);
  EXPECT_FALSE(spec->fields.schema(2).from_string);

  // Without a schema every slot takes any type.
  Result<Spec> plain = ParseSpec(std::string(kHead) + Feature("aggregation: sum, field: amount"), "t.yaml");
  ASSERT_TRUE(plain.ok()) << plain.status().message();
  EXPECT_FALSE(plain->has_schema);
  for (size_t slot = 0; slot < plain->fields.size(); ++slot) EXPECT_EQ(plain->fields.schema(slot).type, FieldType::kAny);
}

TEST(SchemaTest, UnquotedWordThatIsNoFieldIsAnErrorSuggestingQuotes) {
  // Line 11: `  - {name: f, aggregation: count, where: "type == purchase", ...`: the quote at column 42, so
  // purchase (offset 8) at column 51.
  const std::string yaml = std::string(kSchemaHead) + Feature("aggregation: count, where: \"type == purchase\"");
  std::vector<SpecDiagnostic> diagnostics = Diagnose(yaml);
  ASSERT_EQ(diagnostics.size(), 1u) << Dump(diagnostics);
  EXPECT_EQ(Dump(diagnostics),
            "11:51: in 'where': purchase (without quotes) is a field name, and 'schema' does not declare a field "
            "'purchase'; to compare with the text, quote it: type == 'purchase'\n");
  // The full located message, as every command prints it.
  Result<Spec> spec = ParseSpec(yaml, "specs/t.yaml");
  EXPECT_EQ(spec.status().message(),
            "specs/t.yaml:11:51: error: in 'where': purchase (without quotes) is a field name, and 'schema' does "
            "not declare a field 'purchase'; to compare with the text, quote it: type == 'purchase'");
  // In a single-quoted YAML value the suggestion quotes with ".
  ExpectOnly(std::string(kSchemaHead) + Feature("aggregation: count, where: 'type != purchase'"), 11, 51,
             {"quote it: type != \"purchase\""});
  // A word close to a declared field: both readings offered.
  ExpectOnly(std::string(kSchemaHead) + Feature("aggregation: count, where: \"type == amout\""), 11, 51,
             {"'schema' does not declare a field 'amout'; did you mean 'amount'? Or, to compare with the text, quote "
              "it: type == 'amout'"});
}

TEST(SchemaTest, UnknownFieldsAreLocatedErrorsWithSuggestions) {
  // In `where`, at the field (column 43).
  ExpectOnly(std::string(kSchemaHead) + Feature("aggregation: count, where: \"typ == 'purchase'\""), 11, 43,
             {"in 'where': unknown field 'typ': 'schema' does not declare it; did you mean 'type'?"});
  ExpectOnly(std::string(kSchemaHead) + Feature("aggregation: count, where: \"country in ['US']\""), 11, 43,
             {"in 'where': unknown field 'country': 'schema' does not declare it; if events carry it, add it to "
              "'schema' with its type"});
  // A feature's field, at its value (column 40).
  ExpectOnly(std::string(kSchemaHead) + Feature("aggregation: sum, field: amout"), 11, 40,
             {"field 'amout' (read by feature 'f') is not declared in 'schema'; did you mean 'amount'? With a schema, "
              "every field the spec reads must be declared: add amout: number"});
  // The entity and timestamp, at their values.
  std::string yaml = std::string(kSchemaHead) + Feature("aggregation: count");
  yaml.replace(yaml.find("  user_id: string\n"), 17, "");
  ExpectOnly(yaml, 2, 9,
             {"field 'user_id' (the entity) is not declared in 'schema'; with a schema, every field the spec reads "
              "must be declared: add user_id: string (or int)"});
  // The dedup id.
  ExpectOnly(std::string(kSchemaHead) + Feature("aggregation: count") + "dedup: {field: event_id}\n", 12, 16,
             {"field 'event_id' (the dedup id) is not declared in 'schema'"});
}

TEST(SchemaTest, ComparisonsMustFitTheDeclaredTypes) {
  // A string field against a number: at the number (column 51).
  ExpectOnly(std::string(kSchemaHead) + Feature("aggregation: count, where: \"type == 5\""), 11, 51,
             {"in 'where': 'type' is declared string in 'schema' (line 7), but 5 is a number, so the "
              "comparison is never true; to compare with the text, quote it: type == '5'"});
  // A number field against text (column 52).
  ExpectOnly(std::string(kSchemaHead) + Feature("aggregation: count, where: \"amount > '12.5'\""), 11, 52,
             {"'amount' is declared number in 'schema' (line 8), but '12.5' is text, so the comparison is "
              "never true; write the number without quotes: amount > 12.5"});
  // The literal on the left, and in a list.
  ExpectOnly(std::string(kSchemaHead) + Feature("aggregation: count, where: \"10 < type\""), 11, 43,
             {"'type' is declared string", "quote it: '10' < type"});
  ExpectOnly(std::string(kSchemaHead) + Feature("aggregation: count, where: \"type in ['a', 7]\""), 11, 57,
             {"'type' is declared string", "but 7 is a number"});
  // Two fields of different types.
  ExpectOnly(std::string(kSchemaHead) + Feature("aggregation: count, where: \"type == amount\""), 11, 51,
             {"'type' is declared string in 'schema' (line 7) and 'amount' is declared number in 'schema' (line 8), "
              "so the comparison is never true"});
  // Booleans: no order; a bare field must be a bool.
  ExpectOnly(std::string(kSchemaHead) + Feature("aggregation: count, where: \"flag > false\""), 11, 43,
             {"'>' orders values, but 'flag' is declared bool", "use == or !="});
  ExpectOnly(std::string(kSchemaHead) + Feature("aggregation: count, where: \"type\""), 11, 43,
             {"a field alone is a condition that holds only when it is the boolean true, but 'type' is declared "
              "string in 'schema' (line 7), so it is never true; compare it, such as type == 'yes'"});
  // null fits every type, numbers of either kind fit number.
  Result<Spec> ok = ParseSpec(std::string(kSchemaHead) +
                                  Feature("aggregation: count, where: \"type != null and amount >= 1.5 and amount < 3 "
                                          "and flag == true and type in ['a', 'b']\""),
                              "t.yaml");
  EXPECT_TRUE(ok.ok()) << ok.status().message();
}

TEST(SchemaTest, FieldTypesMustFitWhatReadsThem) {
  ExpectOnly(std::string(kSchemaHead) + Feature("aggregation: mean, field: type"), 11, 41,
             {"mean needs a numeric field, but 'type' is declared string in 'schema' (line 7); aggregate a field "
              "declared number or int, or count its values with count_distinct"});
  std::string yaml = std::string(kSchemaHead) + Feature("aggregation: count");
  yaml.replace(yaml.find("user_id: string"), 15, "user_id: number");
  ExpectOnly(yaml, 2, 9, {"the entity field 'user_id' is declared number in 'schema' (line 5), but an entity is a "
                          "non-empty string or an integer; declare it string or int"});
  yaml = std::string(kSchemaHead) + Feature("aggregation: count");
  yaml.replace(yaml.find("ts: timestamp"), 13, "ts: int");
  ExpectOnly(yaml, 3, 12, {"the timestamp field 'ts' is declared int in 'schema' (line 6); declare it timestamp"});
  yaml = std::string(kSchemaHead) + Feature("aggregation: count");
  yaml.replace(yaml.find("flag: bool"), 10, "flag: timestamp");
  ExpectOnly(yaml, 9, 9, {"'flag' is declared timestamp, the type of the spec's timestamp field ('ts') and of no "
                          "other; declare it string or int"});
}

TEST(SchemaTest, SchemaEntriesAreChecked) {
  const std::string tail = "features:\n" + Feature("aggregation: count");
  const std::string head = "name: t\nentity: user_id\ntimestamp: ts\nschema:\n  user_id: string\n  ts: timestamp\n";
  ExpectOnly(head + "  amount: double\n" + tail, 7, 11,
             {"unknown type 'double' for field 'amount'; write number; the types are string, number (an integer or "
              "a fraction), int, bool and timestamp"});
  ExpectOnly(head + "  amount: nubmer\n" + tail, 7, 11, {"did you mean 'number'?"});
  ExpectOnly(head + "  amount:\n" + tail, 7, 3, {"field 'amount' in 'schema' has no type"});
  ExpectOnly(head + "  amount: {type: string, from_string: true}\n" + tail, 7, 26,
             {"from_string applies only to type number or int; remove it"});
  ExpectOnly(head + "  amount: {type: number, from_strings: true}\n" + tail, 7, 26,
             {"unknown key 'from_strings'; did you mean 'from_string'?"});
  ExpectOnly(head + "  amount: {from_string: true}\n" + tail, 7, 11, {"missing required key 'type'"});
  ExpectOnly(head + "  device: string\n  device.os: string\n" + tail, 8, 3,
             {"'device.os' is a field inside 'device', which line 7 declares string"});
  ExpectOnly(head + "  user_id: int\n" + tail, 7, 3, {"field 'user_id' is declared twice in 'schema'; the first is at "
                                                      "line 5"});
  ExpectOnly(head + "  amount bad: number\n" + tail, 7, 3, {"invalid field path 'amount bad' in 'schema'"});
  ExpectOnly("name: t\nentity: user_id\ntimestamp: ts\nschema: {}\n" + tail, 4, 9, {"'schema' is empty"});
}

TEST(SchemaTest, WithoutSchemaAnUnquotedWordNamedNowhereElseIsAWarning) {
  std::vector<SpecDiagnostic> diagnostics;
  const std::string yaml = std::string(kHead) + Feature("aggregation: count, where: \"type == purchase\"");
  Result<Spec> spec = ParseSpec(yaml, "t.yaml", &diagnostics);
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  ASSERT_EQ(spec->warnings.size(), 1u);
  EXPECT_EQ(spec->warnings[0].line, 5);
  EXPECT_EQ(spec->warnings[0].column, 51);
  EXPECT_EQ(SpecWarningsText(*spec),
            "t.yaml:5:51: warning: in 'where' of feature 'f': purchase (without quotes) is a field name, and nothing "
            "else in the spec reads a field 'purchase', so this compares with a field that events most likely lack "
            "(always false); to compare with the text, quote it: type == 'purchase'\n");
  // No warning when the other field is read elsewhere (two fields compared on purpose), or for quoted text.
  for (const std::string& features :
       {Feature("aggregation: count, where: \"price > cost\"") +
            "  - {name: g, aggregation: sum, field: cost, window: {type: lifetime}}\n",
        Feature("aggregation: count, where: \"type == 'purchase'\""),
        Feature("aggregation: count, where: \"a == b and b == 'x'\""),
        // A joined table's column compared with a field, read nowhere else: on purpose too.
        Feature("aggregation: count, where: \"amount > profiles.credit_limit\"") +
            "tables: [{name: profiles, key: user_id}]\njoins: [{table: profiles, on: user_id}]\n"}) {
    Result<Spec> quiet = ParseSpec(std::string(kHead) + features, "t.yaml");
    ASSERT_TRUE(quiet.ok()) << quiet.status().message();
    EXPECT_TRUE(quiet->warnings.empty()) << features << SpecWarningsText(*quiet);
  }
}

TEST(SchemaTest, MutatedSpecsWithSchemaNeverCrash) {
  std::mt19937 rng(20261207);
  const std::string base = std::string(kSchemaHead) +
                           Feature("aggregation: sum, field: amount, where: \"type == purchase or amount > '5'\"") +
                           "  - {name: g, aggregation: count, where: 'flag and type in [\"a\", 3]', window: "
                           "{type: lifetime}}\n";
  for (int round = 0; round < 2000; ++round) {
    std::string text = base;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !text.empty(); ++e) {
      const size_t at = rng() % text.size();
      switch (rng() % 3) {
        case 0: text.erase(at, 1); break;
        case 1: text.insert(at, 1, text[at]); break;
        case 2: std::swap(text[at], text[rng() % text.size()]); break;
      }
    }
    std::vector<SpecDiagnostic> diagnostics;
    Result<Spec> spec = ParseSpec(text, "fuzz.yaml", &diagnostics);
    for (const auto& d : diagnostics) {
      EXPECT_GE(d.line, 1) << text;
      EXPECT_GE(d.column, 1) << text;
    }
  }
}

TEST(SpecOptionsTest, TableMatchesTheTypes) {
  // Every aggregation choice names an AggKind, and every AggKind is a choice.
  const SpecOption* aggregation = nullptr;
  const SpecOption* precision = nullptr;
  const SpecOption* window_type = nullptr;
  for (const SpecOption& o : SpecOptions()) {
    if (o.section == "features[]" && o.key == "aggregation") aggregation = &o;
    if (o.section == "features[]" && o.key == "precision") precision = &o;
    if (o.section == "features[].window" && o.key == "type") window_type = &o;
  }
  ASSERT_NE(aggregation, nullptr);
  ASSERT_NE(precision, nullptr);
  ASSERT_NE(window_type, nullptr);
  std::string agg_choices;
  for (AggKind k : {AggKind::kCount, AggKind::kSum, AggKind::kMean, AggKind::kMin, AggKind::kMax, AggKind::kStddev,
                    AggKind::kLast, AggKind::kFirst, AggKind::kCountDistinct, AggKind::kApproxCountDistinct,
                    AggKind::kApproxPercentile, AggKind::kTopK, AggKind::kLastK}) {
    agg_choices += std::string(agg_choices.empty() ? "" : ", ") + AggKindName(k);
  }
  EXPECT_EQ(aggregation->choices, agg_choices);
  std::string window_choices;
  for (WindowKind k : {WindowKind::kLifetime, WindowKind::kSliding, WindowKind::kTumbling, WindowKind::kSession}) {
    window_choices += std::string(window_choices.empty() ? "" : ", ") + WindowKindName(k);
  }
  EXPECT_EQ(window_type->choices, window_choices);
  EXPECT_EQ(precision->default_value, std::to_string(FeatureSpec().precision));
  EXPECT_TRUE(AggNeedsNumber(AggKind::kStddev));
  EXPECT_FALSE(AggNeedsNumber(AggKind::kLast));
}

TEST(SpecOptionsTest, ReferenceListsEveryKey) {
  const std::string reference = SpecReferenceMarkdown();
  for (const SpecOption& o : SpecOptions()) {
    EXPECT_NE(reference.find("- `" + std::string(o.key) + "` ("), std::string::npos) << o.key;
  }
  EXPECT_NE(reference.find("### `features[].window`"), std::string::npos);
  EXPECT_NE(reference.find("- `size` (duration; required when `type` is sliding or tumbling)"), std::string::npos)
      << reference;
  EXPECT_NE(reference.find("- `precision` (integer 4..18; only when `aggregation` is approx_count_distinct; default `14`)"),
            std::string::npos)
      << reference;
}

}  // namespace
}  // namespace freshet

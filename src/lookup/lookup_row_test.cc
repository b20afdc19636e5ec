#include "lookup/lookup_row.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "event/event_parser.h"

namespace freshet {
namespace {

constexpr std::string_view kSpec = R"(name: t
entity: user
timestamp: ts
lookups:
  - {name: credit, type: redis, key: "credit:{user}", cache: {ttl: 60s}}
  - {name: fx, type: http, url: "http://127.0.0.1:9/fx/{currency}", on_timeout: dead_letter}
derive:
  - {name: risk, expr: "amount / credit.score"}
features:
  - {name: gold, aggregation: count, where: "credit.tier == 'gold'", window: {type: lifetime}}
  - {name: usd, aggregation: sum, field: fx.rate.usd, window: {type: lifetime}}
  - {name: risk_max, aggregation: max, field: risk, window: {type: lifetime}}
)";

TEST(LookupRow, FillsTheLookedUpFieldsBeforeTheDerivedOnes) {
  Result<Spec> spec = ParseSpec(kSpec, "t.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  ASSERT_EQ(spec->lookups.size(), 2u);
  EXPECT_EQ(spec->lookups[0].template_fields, std::vector<std::string>{"user"});
  EXPECT_EQ(spec->lookups[0].cache_ttl_ms, 60000);
  EXPECT_TRUE(spec->lookups[1].dead_letter_on_timeout);

  EventLookups lookups;
  lookups.Reset(2);
  Result<LookupRowPtr> credit = MakeLookupRow(spec->fields, 0, R"({"score": 500, "tier": "gold", "extra": [1]})");
  ASSERT_TRUE(credit.ok());
  lookups.rows[0] = *credit;
  EventParser parser(spec->fields);
  parser.SetLookups(&lookups);
  ParsedEvent event;
  std::string reason;
  ASSERT_TRUE(parser.ParseCopy(R"({"user": "u1", "ts": 5, "amount": 250, "credit": {"tier": "own field"}})", &event,
                               &reason)) << reason;
  const auto slot = [&](std::string_view path) {
    const auto& paths = spec->fields.paths();
    return event.slots[static_cast<size_t>(std::find(paths.begin(), paths.end(), path) - paths.begin())];
  };
  EXPECT_EQ(slot("credit.tier").s, "gold");  // The answer's, not the event's own field.
  EXPECT_EQ(slot("risk").d, 0.5);
  EXPECT_TRUE(slot("fx.rate.usd").is_missing());
  EXPECT_EQ(lookups.DeadLetterLookup(*spec), -1);
  lookups.failures[1] = EventLookups::Failure::kTimeout;
  EXPECT_EQ(lookups.DeadLetterLookup(*spec), 1);
  EXPECT_EQ(LookupFailureReason(lookups, 1), "lookup_timeout");
}

TEST(LookupRow, RecordedAnswersReadBackToTheSameValues) {
  Result<Spec> spec = ParseSpec(kSpec, "t.yaml");
  ASSERT_TRUE(spec.ok());
  EventLookups lookups;
  lookups.Reset(2);
  lookups.rows[1] = *MakeLookupRow(spec->fields, 1, R"({"rate": {"usd": 1.0999999999999999, "eur": 1}})");
  const std::string record = lookups.Record(*spec);
  // Minified; the double written with enough digits to read back to the same bits (simdjson's choice of digits).
  EXPECT_TRUE(record.starts_with(R"({"credit":null,"fx":{"rate":{"usd":1.)")) << record;
  EXPECT_TRUE(record.ends_with(R"(,"eur":1}}})")) << record;
  EventLookups back;
  ASSERT_TRUE(DecodeRecordedLookups(*spec, record, &back).ok());
  EXPECT_EQ(back.rows[0], nullptr);
  ASSERT_NE(back.rows[1], nullptr);
  EXPECT_EQ(back.rows[1]->json, lookups.rows[1]->json);
  ASSERT_EQ(back.rows[1]->cells.size(), lookups.rows[1]->cells.size());
  for (size_t k = 0; k < back.rows[1]->cells.size(); ++k) {
    const Value& a = back.rows[1]->cells[k];
    const Value& b = lookups.rows[1]->cells[k];
    EXPECT_EQ(a.type, b.type);
    if (a.type == ValueType::kDouble) {
      EXPECT_EQ(a.d, b.d);
    }
  }
  EXPECT_FALSE(MakeLookupRow(spec->fields, 0, "[1, 2]").ok());
}

TEST(LookupSpec, TemplateFieldsMustBeEventFields) {
  Result<Spec> bad = ParseSpec(R"(name: t
entity: user
timestamp: ts
lookups:
  - {name: credit, type: redis, key: "credit:{risk}"}
derive:
  - {name: risk, expr: "amount * 2"}
features:
  - {name: n, aggregation: count, window: {type: lifetime}}
)", "t.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("a derived field"), std::string::npos) << bad.status().message();
  Result<Spec> no_url = ParseSpec(R"(name: t
entity: user
timestamp: ts
lookups:
  - {name: credit, type: http, key: "x"}
features:
  - {name: n, aggregation: count, window: {type: lifetime}}
)", "t.yaml");
  ASSERT_FALSE(no_url.ok());
  EXPECT_NE(no_url.status().message().find("url"), std::string::npos) << no_url.status().message();
}

}  // namespace
}  // namespace freshet

// The spec keys of issue 15's keys and expiry: `entity` as a list (a composite key) and `ttl`.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "spec/spec.h"

namespace freshet {
namespace {

constexpr char kFeatures[] = "features:\n  - {name: n, aggregation: count, window: {type: lifetime}}\n";

std::string Errors(const std::string& yaml) {
  std::vector<SpecDiagnostic> diagnostics;
  Result<Spec> spec = ParseSpec(yaml, "t.yaml", &diagnostics);
  std::string out;
  for (const SpecDiagnostic& d : diagnostics) out += std::to_string(d.line) + ": " + d.message + "\n";
  return out;
}

TEST(EntitySpec, AListIsACompositeKeyWithSlotsAfterTheTimestamp) {
  Result<Spec> spec = ParseSpec(std::string("name: t\nentity: [user_id, merchant_id]\ntimestamp: ts\n") + kFeatures,
                                "t.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  EXPECT_EQ(spec->entity_fields, (std::vector<std::string>{"user_id", "merchant_id"}));
  EXPECT_EQ(spec->entity_field, "user_id");
  EXPECT_EQ(spec->fields.key_slots(), (std::vector<int>{0, 2}));
  EXPECT_EQ(spec->fields.paths()[2], "merchant_id");
}

TEST(EntitySpec, OneFieldKeepsNoKeySlots) {
  Result<Spec> spec = ParseSpec(std::string("name: t\nentity: user_id\ntimestamp: ts\n") + kFeatures, "t.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  EXPECT_EQ(spec->entity_fields, std::vector<std::string>{"user_id"});
  EXPECT_TRUE(spec->fields.key_slots().empty());
}

TEST(EntitySpec, BadListsAreErrorsAtTheirLine) {
  EXPECT_NE(Errors(std::string("name: t\nentity: [user_id]\ntimestamp: ts\n") + kFeatures)
                .find("2: a composite 'entity' lists 2 to 8 fields, got 1"), std::string::npos);
  EXPECT_NE(Errors(std::string("name: t\nentity: [user_id, user_id]\ntimestamp: ts\n") + kFeatures)
                .find("is listed twice"), std::string::npos);
  EXPECT_NE(Errors(std::string("name: t\nentity: [user_id, ts]\ntimestamp: ts\n") + kFeatures)
                .find("'ts' is both a key field and the timestamp"), std::string::npos);
  EXPECT_NE(Errors(std::string("name: t\nentity: [user_id, 'a b']\ntimestamp: ts\n") + kFeatures)
                .find("invalid key field 'a b'"), std::string::npos);
}

TEST(TtlSpec, NeedsAWatermarkAndIsInTheSpec) {
  EXPECT_NE(Errors(std::string("name: t\nentity: u\ntimestamp: ts\nttl: 30d\n") + kFeatures).find("4: ttl needs a watermark"),
            std::string::npos);
  Result<Spec> spec = ParseSpec(std::string("name: t\nentity: u\ntimestamp: ts\nttl: 30d\n"
                                            "watermark: {max_out_of_orderness: 1s, allowed_lateness: 0s}\n") + kFeatures,
                                "t.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  EXPECT_EQ(spec->ttl_ms, 30LL * 86'400'000);
}

}  // namespace
}  // namespace freshet

#include "common/text.h"

#include <gtest/gtest.h>

namespace freshet {
namespace {

TEST(EditDistance, CountsInsertionsDeletionsAndSubstitutionsIgnoringCase) {
  EXPECT_EQ(EditDistance("validate", "validate"), 0u);
  EXPECT_EQ(EditDistance("valdate", "validate"), 1u);   // One letter left out.
  EXPECT_EQ(EditDistance("validatee", "validate"), 1u);  // One too many.
  EXPECT_EQ(EditDistance("vaildate", "validate"), 2u);   // Two swapped: two substitutions.
  EXPECT_EQ(EditDistance("RUN", "run"), 0u);
  EXPECT_EQ(EditDistance("", "skew"), 4u);
}

TEST(ClosestMatch, OffersOnlyALikelyTypo) {
  const std::vector<std::string_view> commands = {"validate", "historical", "generate", "run", "serve", "skew",
                                                  "backfill"};
  EXPECT_EQ(ClosestMatch("valdate", commands), "validate");
  EXPECT_EQ(ClosestMatch("histroical", commands), "historical");
  EXPECT_EQ(ClosestMatch("rnu", commands), std::nullopt) << "two edits are too many for a three-letter name";
  EXPECT_EQ(ClosestMatch("rum", commands), "run");
  EXPECT_EQ(ClosestMatch("deploy", commands), std::nullopt);
}

}  // namespace
}  // namespace freshet

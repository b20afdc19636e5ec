#include "common/text.h"

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

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

TEST(ClosestMatch, LengthAloneRulesOutFarCandidates) {
  const std::vector<std::string_view> names = {"purchase_count_30m", "total_spent"};
  EXPECT_EQ(ClosestMatch("purchase_count_30mmm", names), "purchase_count_30m");  // 2 added: within 3.
  EXPECT_EQ(ClosestMatch("purchase_count_30mmmmm", names), std::nullopt);        // 4 added: too many.
  EXPECT_EQ(ClosestMatch("totl_spnt", names), "total_spent");  // 2 dropped: within 3.
  EXPECT_EQ(ClosestMatch("tot_spt", names), std::nullopt);        // 4 dropped: too many.
  // A word of megabytes is answered without comparing it byte by byte with every name.
  EXPECT_EQ(ClosestMatch(std::string(size_t{4} << 20, 'p'), names), std::nullopt);
}

}  // namespace
}  // namespace freshet

// The composite key encoding: injective over arbitrary bytes (the separator and the escape included), and
// decodable back into its parts.
#include "common/entity_key.h"

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace freshet {
namespace {

std::string Encode(std::vector<std::string_view> parts) { return EncodeEntityKey(parts); }

TEST(EntityKey, JoinsWithTheSeparatorAndEscapesIt) {
  EXPECT_EQ(Encode({"u1", "m7"}), "u1\x1Fm7");
  EXPECT_EQ(Encode({"a\x1F", "b"}), "a\x1E\x1F\x1F" "b");
  EXPECT_EQ(Encode({"a", "\x1F" "b"}), "a\x1F\x1E\x1F" "b");
  EXPECT_EQ(Encode({"\x1E", "x"}), "\x1E\x1E\x1Fx");
}

TEST(EntityKey, NoTwoPartListsShareAnEncoding) {
  // Every pair and triple of parts drawn from short strings over the bytes that matter.
  const std::vector<std::string> alphabet = {"", "a", "\x1F", "\x1E", "a\x1F", "\x1E\x1F", "\x1F\x1E", "\x1F" "a"};
  std::set<std::string> seen;
  size_t lists = 0;
  for (const std::string& x : alphabet) {
    for (const std::string& y : alphabet) {
      seen.insert(Encode({x, y}));
      ++lists;
      for (const std::string& z : alphabet) {
        seen.insert(Encode({x, y, z}));
        ++lists;
      }
    }
  }
  EXPECT_EQ(seen.size(), lists);
}

TEST(EntityKey, DecodesBackIntoItsParts) {
  const std::vector<std::vector<std::string>> cases = {
      {"u1", "m7"}, {"a\x1F", "b"}, {"a", "\x1F" "b"}, {"\x1E\x1F", "", "x/y"}, {"é", "100%"}};
  for (const auto& parts : cases) {
    std::vector<std::string_view> views(parts.begin(), parts.end());
    std::vector<std::string> decoded;
    ASSERT_TRUE(DecodeEntityKey(EncodeEntityKey(views), &decoded));
    EXPECT_EQ(decoded, parts);
  }
  std::vector<std::string> decoded;
  EXPECT_FALSE(DecodeEntityKey("a\x1E", &decoded));  // An escape with nothing after it.
  EXPECT_EQ(EntityKeyDisplay(Encode({"u1", "m7"}), 2), "u1/m7");
}

}  // namespace
}  // namespace freshet

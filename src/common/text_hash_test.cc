#include "common/text_hash.h"

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <unordered_set>

#include <absl/container/flat_hash_map.h>

namespace freshet {
namespace {

// Every length around the load widths (4, 8, 16 bytes and the 16-byte blocks), a difference at every position.
TEST(SameText, AgreesWithStringEqualityAtEveryLengthAndPosition) {
  for (size_t n = 0; n <= 40; ++n) {
    const std::string a(n, 'x');
    EXPECT_TRUE(SameText(a, std::string(n, 'x'))) << n;
    EXPECT_FALSE(SameText(a, std::string(n + 1, 'x'))) << n;
    for (size_t at = 0; at < n; ++at) {
      std::string b = a;
      b[at] = 'y';
      EXPECT_FALSE(SameText(a, b)) << "length " << n << ", differing at " << at;
    }
  }
}

// Texts that differ in one byte, at every position of every length, hash apart; equal texts hash alike whatever
// their storage.
TEST(HashText, EqualTextsHashAlikeAndOneByteChangesTheHash) {
  for (size_t n = 0; n <= 40; ++n) {
    const std::string a(n, 'x');
    EXPECT_EQ(HashText(a), HashText(std::string_view(std::string(n, 'x'))));
    EXPECT_NE(HashText(a), HashText(std::string(n + 1, 'x'))) << n;
    for (size_t at = 0; at < n; ++at) {
      std::string b = a;
      b[at] = 'y';
      EXPECT_NE(HashText(a), HashText(b)) << "length " << n << ", differing at " << at;
    }
  }
}

// Entity ids like the generator's: all distinct, and spread over the bits a SwissTable reads (the low 7 bits pick
// the control byte, the rest the group).
TEST(HashText, SpreadsGeneratedIdsOverTheTable) {
  constexpr int kIds = 100000;
  std::unordered_set<size_t> hashes, groups;
  for (int k = 0; k < kIds; ++k) {
    const size_t hash = HashText("u" + std::to_string(k));
    hashes.insert(hash);
    groups.insert((hash >> 7) & ((1u << 17) - 1));
  }
  EXPECT_EQ(hashes.size(), size_t{kIds});
  // 100,000 ids into 131,072 groups at random fill about 70,000 of them.
  EXPECT_GT(groups.size(), size_t{65000});
}

TEST(TextHash, FindsStringKeysByViewWithoutBuildingAString) {
  absl::flat_hash_map<std::string, int, TextHash, TextEq> map;
  map.try_emplace(std::string_view("u668139"), 1);
  map.try_emplace(std::string_view("a key longer than sixteen bytes"), 2);
  EXPECT_EQ(map.find(std::string_view("u668139"))->second, 1);
  EXPECT_EQ(map.find(std::string_view("a key longer than sixteen bytes"))->second, 2);
  EXPECT_EQ(map.find(std::string_view("u668138")), map.end());
}

}  // namespace
}  // namespace freshet

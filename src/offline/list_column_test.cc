#include "offline/list_column.h"

#include <gtest/gtest.h>

namespace freshet {
namespace {

std::shared_ptr<arrow::Array> Build(OfflineType type, const std::vector<const char*>& cells) {
  JsonListBuilder b(type);
  for (const char* cell : cells) EXPECT_TRUE((cell ? b.Append(cell) : b.AppendNull()).ok());
  std::shared_ptr<arrow::Array> out;
  EXPECT_TRUE(b.Finish(&out).ok());
  return out;
}

TEST(JsonListBuilderTest, LastKValuesBecomeTextLikeLast) {
  auto array = Build(OfflineType::kStringList, {R"(["a", 12, 2.5, true, null])", "[]", nullptr});
  ASSERT_EQ(array->length(), 3);
  EXPECT_TRUE(array->type()->Equals(ListArrowType(OfflineType::kStringList)));
  const auto& list = static_cast<const arrow::ListArray&>(*array);
  const auto& items = static_cast<const arrow::StringArray&>(*list.values());
  ASSERT_EQ(list.value_length(0), 5);
  EXPECT_EQ(items.GetString(0), "a");
  EXPECT_EQ(items.GetString(1), "12");
  EXPECT_EQ(items.GetString(2), "2.5");
  EXPECT_EQ(items.GetString(3), "true");
  EXPECT_TRUE(items.IsNull(4));
  EXPECT_FALSE(list.IsNull(1));
  EXPECT_EQ(list.value_length(1), 0);
  EXPECT_TRUE(list.IsNull(2));
}

TEST(JsonListBuilderTest, TopKPairsBecomeStructs) {
  auto array = Build(OfflineType::kValueCounts, {R"([{"value":"x\"y","count":3},{"value":1e21,"count":1}])"});
  const auto& list = static_cast<const arrow::ListArray&>(*array);
  const auto& pairs = static_cast<const arrow::StructArray&>(*list.values());
  ASSERT_EQ(pairs.length(), 2);
  const auto& values = static_cast<const arrow::StringArray&>(*pairs.field(0));
  const auto& counts = static_cast<const arrow::Int64Array&>(*pairs.field(1));
  EXPECT_EQ(values.GetString(0), "x\"y");
  EXPECT_EQ(counts.Value(0), 3);
  EXPECT_EQ(values.GetString(1), "1e+21");
  EXPECT_EQ(counts.Value(1), 1);
}

TEST(JsonListBuilderTest, TextThatIsNotTheListIsAnErrorQuotingIt) {
  JsonListBuilder top(OfflineType::kValueCounts);
  arrow::Status st = top.Append(R"([{"value":"a"}])");
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("not {\"value\": v, \"count\": n}"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find(R"([{"value":"a"}])"), std::string::npos) << st.message();
  JsonListBuilder last(OfflineType::kStringList);
  EXPECT_FALSE(last.Append("grocery").ok());
  EXPECT_FALSE(last.Append(R"([[1]])").ok());
}

TEST(JsonListBuilderTest, DeltaTypesAreNestedJson) {
  EXPECT_EQ(ListDeltaType(OfflineType::kStringList), R"({"type":"array","elementType":"string","containsNull":true})");
  EXPECT_NE(ListDeltaType(OfflineType::kValueCounts).find(R"("name":"count","type":"long")"), std::string::npos);
}

}  // namespace
}  // namespace freshet

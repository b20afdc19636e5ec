#include "run/table_feed.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace freshet {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A spec with one table (no source: PUT only) joined by a feature.
Result<Spec> ProfilesSpec() {
  return ParseSpec(
      "name: t\nentity: user\ntimestamp: ts\ntables:\n  - {name: profiles, key: user_id}\n"
      "joins:\n  - {table: profiles, on: user}\n"
      "features:\n  - {name: s, aggregation: last, field: profiles.segment, window: {type: lifetime}}\n",
      "t.yaml");
}

TEST(TableFeedTest, PutRowsAreLoggedDurablyAndAnUnfinishedLineIsCutAtStart) {
  Result<Spec> spec = ProfilesSpec();
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "freshet_table_feed_test";
  std::filesystem::remove_all(dir);
  const std::string log = (dir / "tables" / "profiles.jsonl").string();
  {
    MetricsRegistry metrics;
    TableFeed feed(*spec, metrics, dir.string());
    std::vector<std::pair<size_t, std::string>> errors;
    Result<size_t> put = feed.Put("profiles", "{\"user_id\":\"a\",\"segment\":\"vip\"}\n\n{\"segment\":\"x\"}\n", &errors);
    ASSERT_TRUE(put.ok());
    EXPECT_EQ(*put, 1u);
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].first, 3u);
    EXPECT_FALSE(feed.Put("nope", "{}", &errors).ok());
  }
  EXPECT_EQ(ReadAll(log), "{\"user_id\":\"a\",\"segment\":\"vip\"}\n");
  // A crash in the middle of a write leaves part of a row that was never acknowledged.
  { std::ofstream(log, std::ios::app) << "{\"user_id\":\"b\",\"seg"; }
  MetricsRegistry metrics;
  TableFeed feed(*spec, metrics, dir.string());
  EXPECT_EQ(ReadAll(log), "{\"user_id\":\"a\",\"segment\":\"vip\"}\n");
  std::vector<std::pair<size_t, std::string>> errors;
  ASSERT_TRUE(feed.Put("profiles", "{\"user_id\":\"c\"}", &errors).ok());
  EXPECT_EQ(ReadAll(log), "{\"user_id\":\"a\",\"segment\":\"vip\"}\n{\"user_id\":\"c\"}\n");
  std::filesystem::remove_all(dir);
}

// A PUT row marked "_deleted": true deletes its key where it arrives; it needs no valid_from. Another mark is
// refused with the reason.
TEST(TableFeedTest, APutRowMarkedDeletedDeletesItsKey) {
  Result<Spec> spec = ParseSpec(
      "name: t\nentity: user\ntimestamp: ts\ntables:\n  - {name: profiles, key: user_id, valid_from: at}\n"
      "joins:\n  - {table: profiles, on: user}\n"
      "features:\n  - {name: s, aggregation: last, field: profiles.segment, window: {type: lifetime}}\n",
      "t.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "freshet_table_feed_delete_test";
  std::filesystem::remove_all(dir);
  MetricsRegistry metrics;
  TableFeed feed(*spec, metrics, dir.string());
  PipelineLanes lanes(*spec, /*partitioned=*/false);
  std::vector<std::pair<size_t, std::string>> errors;
  ASSERT_TRUE(feed.Put("profiles", "{\"user_id\":\"a\",\"at\":1,\"segment\":\"vip\"}\n"
                                   "{\"user_id\":\"b\",\"at\":1,\"segment\":\"new\"}\n", &errors).ok());
  std::vector<std::string> warnings;
  ASSERT_TRUE(feed.Poll(lanes, nullptr, 0, &warnings).ok());
  EXPECT_EQ(feed.tables().keys(0), 2u);
  Result<size_t> put = feed.Put("profiles", "{\"user_id\":\"a\",\"_deleted\":true}\n"
                                            "{\"user_id\":\"b\",\"_deleted\":\"yes\"}\n", &errors);
  ASSERT_TRUE(put.ok());
  EXPECT_EQ(*put, 1u);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].first, 2u);
  EXPECT_NE(errors[0].second.find("'_deleted' must be true"), std::string::npos) << errors[0].second;
  ASSERT_TRUE(feed.Poll(lanes, nullptr, 0, &warnings).ok());
  EXPECT_EQ(feed.tables().keys(0), 1u);  // b only.
  std::filesystem::remove_all(dir);
}

// A checkpoint written before Kafka tables (format 1: no Kafka section before the tables' state) still restores.
TEST(TableFeedTest, AFormatOneCheckpointRestores) {
  Result<Spec> spec = ProfilesSpec();
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "freshet_table_feed_v1_test";
  std::filesystem::remove_all(dir);
  MetricsRegistry metrics;
  TableFeed feed(*spec, metrics, dir.string());
  Result<std::string> v2 = feed.Encode();
  ASSERT_TRUE(v2.ok());
  std::string set_state;
  ByteWriter out(&set_state);
  TableSet(*spec).Save(out);
  // Format 2 is format 1 with its version number raised and a Kafka section (here: none, one byte 0) inserted
  // right before the tables' state.
  const size_t kafka_at = v2->size() - set_state.size() - 1;
  ASSERT_EQ((*v2)[kafka_at], '\0');
  std::string v1 = v2->substr(0, kafka_at) + set_state;
  v1[0] = 1;
  MetricsRegistry restored_metrics;
  TableFeed restored(*spec, restored_metrics, dir.string());
  EXPECT_TRUE(restored.Restore(v1).ok());
  EXPECT_TRUE(restored.Restore(*v2).ok());
  v1[0] = 3;  // A format from the future.
  EXPECT_FALSE(restored.Restore(v1).ok());
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace freshet

#include "skew/skew.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "offline/offline_table.h"

namespace freshet {
namespace {

TEST(SkewValuesMatch, ComparesByTypeWithARelativeToleranceForDoubles) {
  EXPECT_TRUE(SkewValuesMatch(Value::Int(3), Value::Int(3)));
  EXPECT_FALSE(SkewValuesMatch(Value::Int(3), Value::Int(4)));
  EXPECT_TRUE(SkewValuesMatch(Value::Int(2), Value::Double(2.0)));
  EXPECT_TRUE(SkewValuesMatch(Value::Double(1e12), Value::Double(1e12 + 100)));  // 100 <= 1e-9 * 1e12.
  EXPECT_FALSE(SkewValuesMatch(Value::Double(1e12), Value::Double(1e12 + 2000)));
  EXPECT_TRUE(SkewValuesMatch(Value::Double(1.0), Value::Double(1.0 + 5e-10)));
  EXPECT_FALSE(SkewValuesMatch(Value::Double(0.0), Value::Double(2e-9)));  // Below 1 the tolerance is 1e-9.
  EXPECT_TRUE(SkewValuesMatch(Value::Null(), Value::Null()));
  EXPECT_FALSE(SkewValuesMatch(Value::Null(), Value::Int(0)));
  EXPECT_FALSE(SkewValuesMatch(Value::Double(0), Value::Null()));
  EXPECT_TRUE(SkewValuesMatch(Value::String("a"), Value::String("a")));
  EXPECT_FALSE(SkewValuesMatch(Value::String("a"), Value::String("b")));
  EXPECT_FALSE(SkewValuesMatch(Value::String("1"), Value::Int(1)));
}

TEST(FeatureSkewAccumulator, CountsMatchesMissingExtraAndDifferences) {
  FeatureSkewAccumulator acc;
  acc.Add(Value::Int(10), Value::Int(10));     // exact, |diff| 0
  acc.Add(Value::Int(7), Value::Int(10));      // mismatch, |diff| 3
  acc.Add(Value::Null(), Value::Int(4));       // missing
  acc.Add(Value::Int(5), Value::Null());       // extra
  acc.Add(Value::Null(), Value::Null());       // exact
  acc.Add(Value::Double(2.5), Value::Int(3));  // mismatch, |diff| 0.5
  FeatureSkew s = acc.Finish("f", 0.5);
  EXPECT_EQ(s.feature, "f");
  EXPECT_EQ(s.compared, 6u);
  EXPECT_EQ(s.exact, 2u);
  EXPECT_EQ(s.missing, 1u);
  EXPECT_EQ(s.extra, 1u);
  EXPECT_DOUBLE_EQ(s.match_rate(), 2.0 / 6);
  EXPECT_DOUBLE_EQ(s.mismatch_rate(), 4.0 / 6);
  ASSERT_TRUE(s.mean_abs_diff.has_value());
  EXPECT_DOUBLE_EQ(*s.mean_abs_diff, (0 + 3 + 0.5) / 3);
  EXPECT_DOUBLE_EQ(*s.max_abs_diff, 3);
  EXPECT_TRUE(s.psi.has_value());
  EXPECT_TRUE(s.breached);
  EXPECT_FALSE(acc.Finish("f", 0.7).breached);
  EXPECT_FALSE(acc.Finish("f", 4.0 / 6).breached);  // Breached only above the limit.
}

TEST(FeatureSkewAccumulator, StringFeaturesHaveNoDifferencesOrPsi) {
  FeatureSkewAccumulator acc;
  acc.Add(Value::String("a"), Value::String("a"));
  acc.Add(Value::String("a"), Value::String("b"));
  acc.Add(Value::Null(), Value::String("b"));
  FeatureSkew s = acc.Finish("last_category", 0.001);
  EXPECT_EQ(s.compared, 3u);
  EXPECT_EQ(s.exact, 1u);
  EXPECT_EQ(s.missing, 1u);
  EXPECT_EQ(s.extra, 0u);
  EXPECT_FALSE(s.mean_abs_diff.has_value());
  EXPECT_FALSE(s.max_abs_diff.has_value());
  EXPECT_FALSE(s.psi.has_value());
  FeatureSkew empty = FeatureSkewAccumulator().Finish("none", 0.001);
  EXPECT_EQ(empty.compared, 0u);
  EXPECT_FALSE(empty.breached);
  EXPECT_DOUBLE_EQ(empty.mismatch_rate(), 0.0);
}

TEST(PopulationStabilityIndex, IsZeroForTheSameDistribution) {
  std::vector<double> values = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  ASSERT_TRUE(PopulationStabilityIndex(values, values).has_value());
  EXPECT_NEAR(*PopulationStabilityIndex(values, values), 0.0, 1e-15);
}

TEST(PopulationStabilityIndex, MatchesAHandComputation) {
  // Deciles of 1..10 (linear interpolation) are 1.9, 2.8, ..., 9.1: one expected value per bin, share 0.1.
  // The actual values fall half in the first bin and half in the last; the 8 bins between are empty (1e-4).
  std::vector<double> expected = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  std::vector<double> actual = {1, 1, 1, 1, 1, 10, 10, 10, 10, 10};
  const double want = 2 * (0.5 - 0.1) * std::log(0.5 / 0.1) + 8 * (1e-4 - 0.1) * std::log(1e-4 / 0.1);
  ASSERT_TRUE(PopulationStabilityIndex(expected, actual).has_value());
  EXPECT_NEAR(*PopulationStabilityIndex(expected, actual), want, 1e-12);
  EXPECT_NEAR(want, 6.80823, 1e-5);
}

TEST(PopulationStabilityIndex, BinsAreClosedOnTheRightSoTiesStayInTheLowerBin) {
  // Every expected value is 5: all nine edges are 5, and 5 falls in the first bin, 6 in the last.
  std::vector<double> expected(10, 5.0);
  std::vector<double> actual = {5, 5, 6, 6};
  const double want = (0.5 - 1.0) * std::log(0.5 / 1.0) + (0.5 - 1e-4) * std::log(0.5 / 1e-4);
  EXPECT_NEAR(*PopulationStabilityIndex(expected, actual), want, 1e-12);
  EXPECT_FALSE(PopulationStabilityIndex({}, actual).has_value());
  EXPECT_FALSE(PopulationStabilityIndex(expected, {}).has_value());
}

TEST(SkewReport, RendersJsonWithNullsForAbsentNumbers) {
  SkewReport report;
  report.since_ms = 1000;
  report.answers = 4;
  report.max_mismatch_rate = 0.5;
  FeatureSkew f;
  f.feature = "f\"1";
  f.compared = 4;
  f.exact = 3;
  f.missing = 1;
  f.mean_abs_diff = 0.5;
  f.max_abs_diff = 1;
  report.features.push_back(f);
  FeatureSkew g;
  g.feature = "g";
  g.compared = 2;
  g.breached = true;
  report.features.push_back(g);
  EXPECT_EQ(SkewReportJson(report),
            "{\"since\": 1000, \"until\": null, \"answers\": 4, \"not_exact_answers\": 0, "
            "\"max_mismatch_rate\": 0.5, \"features\": ["
            "{\"feature\": \"f\\\"1\", \"compared\": 4, \"exact\": 3, \"match_rate\": 0.75, \"mismatch_rate\": 0.25, "
            "\"missing\": 1, \"extra\": 0, \"mean_abs_diff\": 0.5, \"max_abs_diff\": 1, \"psi\": null, "
            "\"breached\": false}, "
            "{\"feature\": \"g\", \"compared\": 2, \"exact\": 0, \"match_rate\": 0, \"mismatch_rate\": 1, "
            "\"missing\": 0, \"extra\": 0, \"mean_abs_diff\": null, \"max_abs_diff\": null, \"psi\": null, "
            "\"breached\": true}], \"breached\": [\"g\"]}");
  const std::string table = SkewReportTable(report);
  EXPECT_NE(table.find("BREACHED"), std::string::npos) << table;
  EXPECT_NE(table.find("75.000%"), std::string::npos) << table;
  EXPECT_NE(table.find("breached (mismatch rate above 0.5): g"), std::string::npos) << table;
}

// ComputeSkew end to end: a JSON-lines events file and a feature_log table written here.
class ComputeSkewTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("freshet_skew_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    Result<Spec> spec = ParseSpec(R"(name: t
entity: user
timestamp: ts
skew: {max_mismatch_rate: 0.3}
features:
  - name: n
    aggregation: count
    window: {type: lifetime}
  - name: total
    aggregation: sum
    field: amount
    window: {type: lifetime}
  - name: cat
    aggregation: last
    field: category
    window: {type: lifetime}
)",
                                  "t.yaml");
    ASSERT_TRUE(spec.ok()) << spec.status().message();
    spec_ = std::move(spec).value();
    std::ofstream events(dir_ / "events.jsonl");
    events << R"({"user": "alice", "ts": 1000, "amount": 10, "category": "a"})" "\n"
           << R"({"user": "bob", "ts": 1500, "amount": 1, "category": "z"})" "\n"
           << R"({"user": "alice", "ts": 2000, "amount": 5, "category": "b"})" "\n"
           << R"({"user": "alice", "ts": 3000, "amount": 7, "category": "c"})" "\n";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  struct Logged {
    std::string entity;
    int64_t as_of_ms;
    std::string served_features;
    std::optional<int64_t> n;
    std::optional<double> total;
    std::optional<std::string> cat;
  };

  void WriteFeatureLog(const std::vector<Logged>& rows, bool with_served_list, bool with_cat) {
    OfflineTableOptions o;
    o.table_dir = (dir_ / "feature_log").string();
    o.staging_dir = (dir_ / "_staging").string();
    o.columns = {{"request_id", OfflineType::kString, false}, {"entity", OfflineType::kString, false},
                 {"as_of", OfflineType::kTimestamp, false}, {"served_at", OfflineType::kTimestamp, false}};
    if (with_served_list) o.columns.push_back({"served_features", OfflineType::kString, false});
    o.columns.push_back({"n", OfflineType::kInt64, true});
    o.columns.push_back({"total", OfflineType::kDouble, true});
    if (with_cat) o.columns.push_back({"cat", OfflineType::kString, true});
    o.partition_column = "served_date";
    auto table = OfflineTable::Open(o);
    ASSERT_TRUE(table.ok()) << table.status().message();
    OfflineTable& t = **table;
    for (const Logged& r : rows) {
      t.BeginRow(r.as_of_ms + 5);
      t.PutString("req");
      t.PutString(r.entity);
      t.PutTimestampMs(r.as_of_ms);
      t.PutTimestampMs(r.as_of_ms + 5);
      if (with_served_list) t.PutString(r.served_features);
      r.n ? t.PutInt(*r.n) : t.PutNull();
      r.total ? t.PutDouble(*r.total) : t.PutNull();
      if (with_cat) r.cat ? t.PutString(*r.cat) : t.PutNull();
    }
    auto staged = t.Stage(-1);
    ASSERT_TRUE(staged.ok()) << staged.status().message();
    ASSERT_TRUE(t.Publish(**staged).ok());
  }

  SkewOptions Options() const {
    SkewOptions options;
    options.feature_log_dir = (dir_ / "feature_log").string();
    options.events = EventInput::JsonLines((dir_ / "events.jsonl").string());
    return options;
  }

  std::filesystem::path dir_;
  Spec spec_;
};

TEST_F(ComputeSkewTest, RecomputesEveryAnswerAndComparesTheFeaturesItHeld) {
  WriteFeatureLog({{"alice", 2500, "n,total,cat", 2, 15.0, "b"},          // all match
                   {"alice", 2000, "n,total,cat", 1, 10.0, "a"},          // recomputed 2, 15, "b": all differ
                   {"bob", 2999, "n,total", 1, std::nullopt, "ignored"},  // total missing; cat not held
                   {"alice", 3000, "n,total,cat", 9, 9.0, "x"},           // as of the newest event: skipped
                   {"carol", 1200, "n", 0, std::nullopt, std::nullopt}},  // unknown entity: count 0
                  /*with_served_list=*/true, /*with_cat=*/true);
  Result<SkewReport> report = ComputeSkew(spec_, Options());
  ASSERT_TRUE(report.ok()) << report.status().message();
  EXPECT_EQ(report->answers, 4u);
  ASSERT_TRUE(report->until_ms.has_value());
  EXPECT_EQ(*report->until_ms, 3000);
  EXPECT_FALSE(report->since_ms.has_value());
  EXPECT_DOUBLE_EQ(report->max_mismatch_rate, 0.3);
  ASSERT_EQ(report->features.size(), 3u);

  const FeatureSkew& n = report->features[0];
  EXPECT_EQ(n.compared, 4u);
  EXPECT_EQ(n.exact, 3u);
  EXPECT_EQ(n.missing + n.extra, 0u);
  EXPECT_DOUBLE_EQ(*n.mean_abs_diff, 0.25);
  EXPECT_DOUBLE_EQ(*n.max_abs_diff, 1);
  // Recomputed [2, 2, 1, 0], served [2, 1, 1, 0]: the shares of the bins holding 1 and 2 swap (1/4 <-> 1/2).
  EXPECT_NEAR(*n.psi, 0.5 * std::log(2.0), 1e-12);
  EXPECT_FALSE(n.breached);  // 0.25 <= 0.3

  const FeatureSkew& total = report->features[1];
  EXPECT_EQ(total.compared, 3u);
  EXPECT_EQ(total.exact, 1u);
  EXPECT_EQ(total.missing, 1u);
  EXPECT_EQ(total.extra, 0u);
  EXPECT_DOUBLE_EQ(*total.mean_abs_diff, 2.5);
  EXPECT_DOUBLE_EQ(*total.max_abs_diff, 5);
  EXPECT_TRUE(total.breached);

  const FeatureSkew& cat = report->features[2];
  EXPECT_EQ(cat.compared, 2u);
  EXPECT_EQ(cat.exact, 1u);
  EXPECT_FALSE(cat.psi.has_value());
  EXPECT_TRUE(cat.breached);
  EXPECT_EQ(report->breached(), (std::vector<std::string>{"total", "cat"}));

  // An explicit range: only bob's answer and alice's at 2500 fall in [2100, 3000).
  SkewOptions options = Options();
  options.since_ms = 2100;
  options.until_ms = 3000;
  report = ComputeSkew(spec_, options);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->answers, 2u);
  EXPECT_EQ(report->features[0].exact, 2u);
  EXPECT_TRUE(report->breached() == (std::vector<std::string>{"total"}));
}

TEST_F(ComputeSkewTest, WithoutAServedListEveryFeatureColumnCounts) {
  WriteFeatureLog({{"alice", 2500, "", 2, 15.0, std::nullopt}, {"bob", 2000, "", 1, std::nullopt, std::nullopt}},
                  /*with_served_list=*/false, /*with_cat=*/false);
  Result<SkewReport> report = ComputeSkew(spec_, Options());
  ASSERT_TRUE(report.ok()) << report.status().message();
  EXPECT_EQ(report->answers, 2u);
  EXPECT_EQ(report->features[0].compared, 2u);
  EXPECT_EQ(report->features[0].exact, 2u);
  EXPECT_EQ(report->features[1].compared, 2u);
  EXPECT_EQ(report->features[1].missing, 1u);
  EXPECT_EQ(report->features[2].compared, 0u);  // No column: never served.
}

TEST_F(ComputeSkewTest, NoFeatureLogTableSaysWhoWritesIt) {
  Result<SkewReport> report = ComputeSkew(spec_, Options());
  ASSERT_FALSE(report.ok());
  EXPECT_NE(report.status().message().find("no feature_log table"), std::string::npos) << report.status().message();
  EXPECT_NE(report.status().message().find("freshet run"), std::string::npos);
}

}  // namespace
}  // namespace freshet

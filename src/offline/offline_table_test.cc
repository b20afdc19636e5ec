#include "offline/offline_table.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "offline/parquet_scan.h"

namespace freshet {
namespace {

class OfflineTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("freshet_offline_" + std::to_string(::getpid()) + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  OfflineTableOptions Options() const {
    OfflineTableOptions o;
    o.table_dir = (dir_ / "events").string();
    o.staging_dir = (dir_ / "_staging" / "events").string();
    o.columns = {{"seq", OfflineType::kInt64, false}, {"event_time", OfflineType::kTimestamp, false},
                 {"entity", OfflineType::kString, false}, {"amount", OfflineType::kDouble, true}};
    o.partition_column = "event_date";
    return o;
  }

  static void AddRow(OfflineTable& t, int64_t seq, int64_t time_ms, const std::string& entity, std::optional<double> x) {
    t.BeginRow(time_ms);
    t.PutInt(seq);
    t.PutTimestampMs(time_ms);
    t.PutString(entity);
    x ? t.PutDouble(*x) : t.PutNull();
  }

  // Every (seq, time, entity, amount or -1) of the table, in file order.
  std::vector<std::tuple<int64_t, int64_t, std::string, double>> ReadAll() const {
    std::vector<std::tuple<int64_t, int64_t, std::string, double>> rows;
    Result<std::vector<std::string>> files = DeltaTableFiles((dir_ / "events").string());
    EXPECT_TRUE(files.ok()) << files.status().message();
    for (const std::string& f : *files) {
      auto scanner = ParquetScanner::Open(f, {"seq", "event_time", "entity", "amount"});
      EXPECT_TRUE(scanner.ok()) << scanner.status().message();
      ScanBatch b;
      while (true) {
        Result<bool> more = (*scanner)->Next(&b);
        EXPECT_TRUE(more.ok());
        if (!*more) break;
        for (size_t r = 0; r < b.rows; ++r) {
          rows.emplace_back(b.columns[0].ints[r], b.columns[1].ints[r], std::string(b.columns[2].strings[r]),
                            b.columns[3].valid[r] ? b.columns[3].doubles[r] : -1.0);
        }
      }
    }
    std::sort(rows.begin(), rows.end());
    return rows;
  }

  std::filesystem::path dir_;
};

constexpr int64_t kDay = 86'400'000;
constexpr int64_t kT0 = 1'700'000'000'000;

TEST_F(OfflineTableTest, StagedRowsAppearOnlyOncePublishedAndPartitionByUtcDate) {
  auto table = OfflineTable::Open(Options());
  ASSERT_TRUE(table.ok()) << table.status().message();
  AddRow(**table, 1, kT0, "u1", 2.5);
  AddRow(**table, 2, kT0 + kDay, "u2", std::nullopt);
  AddRow(**table, 3, kT0 + 1, "u1", -1.25);
  Result<std::optional<StagedCommit>> staged = (*table)->Stage(7);
  ASSERT_TRUE(staged.ok()) << staged.status().message();
  ASSERT_TRUE(staged->has_value());
  EXPECT_EQ((*staged)->files.size(), 2u);  // Two dates.
  EXPECT_TRUE(ReadAll().empty());          // Staged, not yet in the table.

  Result<StagedCommit> decoded = StagedCommit::Decode((*staged)->Encode());
  ASSERT_TRUE(decoded.ok());
  ASSERT_TRUE((*table)->Publish(*decoded).ok());
  ASSERT_TRUE((*table)->Publish(*decoded).ok());  // Again, as recovery would: no second commit.
  EXPECT_EQ((*table)->log().latest_version(), 2);  // 0 creates the table, 1 adds its zero-row file.
  auto rows = ReadAll();
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0], std::make_tuple(int64_t{1}, kT0, std::string("u1"), 2.5));
  EXPECT_EQ(rows[1], std::make_tuple(int64_t{2}, kT0 + kDay, std::string("u2"), -1.0));
  EXPECT_EQ(rows[2], std::make_tuple(int64_t{3}, kT0 + 1, std::string("u1"), -1.25));
  // kT0 is 2023-11-14T22:13:20Z; the files are in date order.
  EXPECT_EQ(decoded->files[0].file.path.rfind("event_date=2023-11-14/part-", 0), 0u) << decoded->files[0].file.path;
  EXPECT_EQ(decoded->files[1].file.path.rfind("event_date=2023-11-15/part-", 0), 0u) << decoded->files[1].file.path;
  EXPECT_EQ((*table)->log().TxnVersion("freshet").value_or(-1), 7);
}

TEST_F(OfflineTableTest, AStageNoCheckpointRecordedIsDroppedOnReopen) {
  {
    auto table = OfflineTable::Open(Options());
    ASSERT_TRUE(table.ok());
    AddRow(**table, 1, kT0, "u1", 1.0);
    auto staged = (*table)->Stage(1);
    ASSERT_TRUE(staged.ok() && staged->has_value());
    ASSERT_TRUE((*table)->Publish(**staged).ok());
    AddRow(**table, 2, kT0, "u2", 2.0);
    ASSERT_TRUE((*table)->Stage(2).ok());  // "Crash" before the checkpoint that would record it.
  }
  auto table = OfflineTable::Open(Options());
  ASSERT_TRUE(table.ok());
  ASSERT_TRUE((*table)->DropStaging().ok());
  EXPECT_TRUE(std::filesystem::is_empty(Options().staging_dir));
  auto rows = ReadAll();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(std::get<0>(rows[0]), 1);
}

TEST_F(OfflineTableTest, OtherColumnsAreRefusedUnlessOverwriting) {
  {
    auto table = OfflineTable::Open(Options());
    ASSERT_TRUE(table.ok());
    AddRow(**table, 1, kT0, "u1", 1.0);
    auto staged = (*table)->Stage(1);
    ASSERT_TRUE((*table)->Publish(**staged).ok());
  }
  OfflineTableOptions changed = Options();
  changed.columns.back().name = "total";
  auto refused = OfflineTable::Open(changed);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("freshet backfill"), std::string::npos) << refused.status().message();

  auto table = OfflineTable::Open(changed, /*overwrite=*/true);
  ASSERT_TRUE(table.ok()) << table.status().message();
  auto staged = (*table)->Stage(2);  // No rows: still a commit, emptying the table under the new schema.
  ASSERT_TRUE(staged.ok() && staged->has_value());
  EXPECT_EQ((*staged)->removes.size(), 2u);  // The zero-row file of the new table and the one with a row.
  ASSERT_TRUE((*table)->Publish(**staged).ok());
  Result<std::vector<std::string>> files = DeltaTableFiles(changed.table_dir);
  ASSERT_TRUE(files.ok());
  EXPECT_TRUE(files->empty());
  table->reset();  // Its writer lock goes with it.
  EXPECT_TRUE(OfflineTable::Open(changed).ok());
}

TEST_F(OfflineTableTest, ScannerNamesAMissingColumn) {
  auto table = OfflineTable::Open(Options());
  ASSERT_TRUE(table.ok());
  AddRow(**table, 1, kT0, "u1", 1.0);
  auto staged = (*table)->Stage(1);
  ASSERT_TRUE((*table)->Publish(**staged).ok());
  Result<std::vector<std::string>> files = DeltaTableFiles(Options().table_dir);
  ASSERT_TRUE(files.ok());
  auto scanner = ParquetScanner::Open(files->at(0), {"seq", "nope"});
  ASSERT_FALSE(scanner.ok());
  EXPECT_NE(scanner.status().message().find("no column 'nope'"), std::string::npos);
  EXPECT_FALSE(DeltaTableFiles((dir_ / "missing").string()).ok());
}

// Freshet's replay starts from the newest Parquet checkpoint: with the JSON commits it summarizes deleted, the
// table reads the same, and a writer opening it again knows its txn version.
TEST_F(OfflineTableTest, ReplayStartsFromTheNewestCheckpoint) {
  {
    auto table = OfflineTable::Open(Options());
    ASSERT_TRUE(table.ok()) << table.status().message();
    for (int64_t k = 0; k < 25; ++k) {
      AddRow(**table, k, kT0 + k, "u" + std::to_string(k % 3), static_cast<double>(k));
      auto staged = (*table)->Stage(k + 1);
      ASSERT_TRUE(staged.ok() && staged->has_value());
      ASSERT_TRUE((*table)->Publish(**staged).ok());
    }
    EXPECT_EQ((*table)->log().latest_version(), 26);
  }
  const std::filesystem::path log = dir_ / "events" / "_delta_log";
  ASSERT_TRUE(std::filesystem::exists(log / "00000000000000000010.checkpoint.parquet"));
  ASSERT_TRUE(std::filesystem::exists(log / "00000000000000000020.checkpoint.parquet"));
  for (int64_t v = 0; v <= 20; ++v) std::filesystem::remove(log / DeltaCommitFileName(v));
  auto rows = ReadAll();
  ASSERT_EQ(rows.size(), 25u);
  for (int64_t k = 0; k < 25; ++k) EXPECT_EQ(std::get<0>(rows[k]), k);
  auto table = OfflineTable::Open(Options());
  ASSERT_TRUE(table.ok()) << table.status().message();
  EXPECT_EQ((*table)->log().TxnVersion("freshet").value_or(-1), 25);
  // A second writer is refused while this one holds the table.
  auto second = OfflineTable::Open(Options());
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("open for writing by another Freshet process"), std::string::npos);
}

// Members of a consumer group write one table: each publishes with its own app id and staging folder; a writer
// whose log is behind loses the race for a version, reads the log again and commits at the next one; rows are
// sorted by seq in every file; a commit staged by one writer and published by another (the new owner of a dead
// member's partitions), then by its writer too, lands once.
TEST_F(OfflineTableTest, SharedWritersRetryALostVersionAndPublishEachCommitOnce) {
  auto options_of = [&](const std::string& member) {
    OfflineTableOptions o = Options();
    o.staging_dir = (dir_ / "_staging" / member / "events").string();
    o.app_id = "freshet-events-" + member;
    o.shared_writers = true;
    o.sort_by_first_column = true;
    return o;
  };
  auto a = OfflineTable::Open(options_of("a"));
  ASSERT_TRUE(a.ok()) << a.status().message();
  auto b = OfflineTable::Open(options_of("b"));  // Not refused: the lock is shared.
  ASSERT_TRUE(b.ok()) << b.status().message();
  AddRow(**a, 30, kT0, "u1", 1.0);
  AddRow(**a, 10, kT0, "u2", 2.0);  // Out of seq order: sorted when staged.
  auto staged_a = (*a)->Stage(1);
  ASSERT_TRUE(staged_a.ok() && staged_a->has_value());
  AddRow(**b, 20, kT0, "u3", 3.0);
  auto staged_b = (*b)->Stage(1);
  ASSERT_TRUE(staged_b.ok() && staged_b->has_value());
  const int64_t before = (*b)->log().latest_version();
  ASSERT_TRUE((*a)->Publish(**staged_a).ok());
  // b's log still ends at `before`: its commit loses that version's race and goes in at the next.
  EXPECT_EQ((*b)->log().latest_version(), before);
  ASSERT_TRUE((*b)->Publish(**staged_b).ok());
  // b publishes a's staged commit again (as a's partitions' new owner would): it is in already.
  ASSERT_TRUE((*b)->Publish(**staged_a, "freshet-events-a").ok());
  ASSERT_TRUE((*a)->Publish(**staged_a).ok());
  auto rows = ReadAll();
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(std::get<0>(rows[0]), 10);
  EXPECT_EQ(std::get<0>(rows[2]), 30);
  // Within its file, a's rows are in seq order (replays need it).
  Result<std::vector<std::string>> files = DeltaTableFiles((dir_ / "events").string());
  ASSERT_TRUE(files.ok());
  for (const std::string& f : *files) {
    auto scanner = ParquetScanner::Open(f, {"seq"});
    ASSERT_TRUE(scanner.ok());
    ScanBatch batch;
    int64_t last = -1;
    while (*(*scanner)->Next(&batch)) {
      for (size_t r = 0; r < batch.rows; ++r) {
        EXPECT_GT(batch.columns[0].ints[r], last) << f;
        last = batch.columns[0].ints[r];
      }
    }
  }
  // An exclusive writer (compact, vacuum, a run without a group) is refused while group members write.
  EXPECT_FALSE(OfflineTable::Open(Options()).ok());
}

// Listing a table's files only reads: a log folder without commits lists nothing and stays without any.
TEST_F(OfflineTableTest, ListingFilesWritesNothing) {
  const std::filesystem::path log = dir_ / "empty" / "_delta_log";
  std::filesystem::create_directories(log);
  Result<std::vector<std::string>> files = DeltaTableFiles((dir_ / "empty").string());
  ASSERT_TRUE(files.ok()) << files.status().message();
  EXPECT_TRUE(files->empty());
  EXPECT_TRUE(std::filesystem::is_empty(log));
}

}  // namespace
}  // namespace freshet

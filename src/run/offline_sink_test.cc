#include "run/offline_sink.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "engine/test_specs.h"
#include "offline/parquet_scan.h"

namespace freshet {
namespace {

class OfflineSinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("freshet_sink_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    spec_ = test_specs::BaseSpec();
    test_specs::AddFeature(spec_, "n", AggKind::kCount, "", WindowSpec{});
    paths_ = OfflinePathsFor(spec_, dir_.string());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<OfflineSink> Open() {
    auto sink = OfflineSink::Open(spec_, paths_, OfflineSinkOptions{});
    EXPECT_TRUE(sink.ok()) << sink.status().message();
    return std::move(sink).value();
  }

  void Add(OfflineSink& sink, int64_t seq) {
    sink.AddEvent(seq, kT0 + seq, "u1", kT0, "{}");
    sink.AddFeatures(seq, "u1", kT0 + seq, kT0, {Value::Int(seq + 1)});
  }

  // The seq column of a table, sorted.
  std::vector<int64_t> Seqs(const std::string& table_dir) {
    std::vector<int64_t> seqs;
    Result<std::vector<std::string>> files = DeltaTableFiles(table_dir);
    EXPECT_TRUE(files.ok()) << files.status().message();
    for (const std::string& f : *files) {
      auto scanner = ParquetScanner::Open(f, {"seq"});
      EXPECT_TRUE(scanner.ok());
      ScanBatch b;
      while (*(*scanner)->Next(&b)) seqs.insert(seqs.end(), b.columns[0].ints.begin(), b.columns[0].ints.end());
    }
    std::sort(seqs.begin(), seqs.end());
    return seqs;
  }

  static constexpr int64_t kT0 = 1'767'225'600'000;  // 2026-01-01
  std::filesystem::path dir_;
  Spec spec_;
  OfflinePaths paths_;
};

TEST_F(OfflineSinkTest, ACrashBetweenCheckpointAndPublishIsPublishedOnRecovery) {
  std::string position;
  {
    auto sink = Open();
    Add(*sink, 0);
    Add(*sink, 1);
    Result<std::string> staged = sink->Stage(5);
    ASSERT_TRUE(staged.ok());
    position = *staged;  // "Checkpoint 5 written"; then the crash, before Publish.
  }
  EXPECT_TRUE(Seqs(paths_.events).empty());
  auto sink = Open();
  ASSERT_TRUE(sink->Recover(position, 5).ok());
  EXPECT_EQ(Seqs(paths_.events), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(Seqs(paths_.features), (std::vector<int64_t>{0, 1}));
  ASSERT_TRUE(sink->Recover(position, 5).ok());  // Recovering twice adds nothing.
  EXPECT_EQ(Seqs(paths_.events), (std::vector<int64_t>{0, 1}));
}

TEST_F(OfflineSinkTest, CommitsNewerThanTheRestoredCheckpointAreRolledBackAndWrittenAgain) {
  std::string position5;
  {
    auto sink = Open();
    Add(*sink, 0);
    position5 = *sink->Stage(5);
    ASSERT_TRUE(sink->Publish().ok());
    Add(*sink, 1);
    ASSERT_TRUE(sink->Stage(6).ok());
    ASSERT_TRUE(sink->Publish().ok());  // Checkpoint 6 is then found damaged: restart from 5.
  }
  EXPECT_EQ(Seqs(paths_.events), (std::vector<int64_t>{0, 1}));
  auto sink = Open();
  Result<std::string> note = sink->Recover(position5, 5);
  ASSERT_TRUE(note.ok());
  EXPECT_NE(note->find("removed 2 files"), std::string::npos) << *note;
  EXPECT_EQ(Seqs(paths_.events), (std::vector<int64_t>{0}));
  Add(*sink, 1);  // Event 1 is read again and committed with checkpoint 7.
  ASSERT_TRUE(sink->Stage(7).ok());
  ASSERT_TRUE(sink->Publish().ok());
  EXPECT_EQ(Seqs(paths_.events), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(Seqs(paths_.features), (std::vector<int64_t>{0, 1}));
}

TEST_F(OfflineSinkTest, WithoutACheckpointEveryCommittedRowIsDropped) {
  {
    auto sink = Open();
    Add(*sink, 0);
    ASSERT_TRUE(sink->Stage(1).ok());
    ASSERT_TRUE(sink->Publish().ok());
    Add(*sink, 1);
    ASSERT_TRUE(sink->Spill().ok());  // Staged without a checkpoint: never published.
  }
  auto sink = Open();
  ASSERT_TRUE(sink->Recover(std::nullopt, std::nullopt).ok());  // The checkpoints were deleted by hand.
  EXPECT_TRUE(Seqs(paths_.events).empty());
  EXPECT_TRUE(std::filesystem::is_empty(paths_.Staging("events")));
  Add(*sink, 0);
  ASSERT_TRUE(sink->Stage(1).ok());  // Sequences start again at 1: still published.
  ASSERT_TRUE(sink->Publish().ok());
  EXPECT_EQ(Seqs(paths_.events), (std::vector<int64_t>{0}));
}

TEST_F(OfflineSinkTest, AFailedCheckpointsRowsGoWithTheNextOne) {
  auto sink = Open();
  Add(*sink, 0);
  ASSERT_TRUE(sink->Stage(1).ok());  // Checkpoint 1 fails to write: no Publish.
  Add(*sink, 1);
  Result<std::string> position = sink->Stage(2);
  ASSERT_TRUE(position.ok());
  ASSERT_TRUE(sink->Publish().ok());
  EXPECT_EQ(Seqs(paths_.events), (std::vector<int64_t>{0, 1}));
  Result<std::vector<std::string>> files = DeltaTableFiles(paths_.events);
  EXPECT_EQ(files->size(), 3u);  // Both stages' files and the new table's zero-row file.
}

}  // namespace
}  // namespace freshet

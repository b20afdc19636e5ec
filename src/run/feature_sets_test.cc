#include "run/feature_sets.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace freshet {
namespace {

namespace fs = std::filesystem;

class FeatureSetsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    data_ = fs::temp_directory_path() / ("freshet_sets_" + std::to_string(::getpid()) + "_" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(data_);
    fs::create_directories(data_ / "sets");
  }
  void TearDown() override { fs::remove_all(data_); }
  fs::path data_;
};

TEST_F(FeatureSetsTest, TheManifestReadsBackWhatWasWritten) {
  EXPECT_FALSE(ReadSetsManifest(data_.string())->has_value());  // None yet: a fresh start.
  SetsManifest manifest{.names = {"users", "merchants"}, .checkpoints = {{"users", 7}, {"merchants", 12}}};
  ASSERT_TRUE(WriteSetsManifest(data_.string(), manifest).ok());
  Result<std::optional<SetsManifest>> read = ReadSetsManifest(data_.string());
  ASSERT_TRUE(read.ok()) << read.status().message();
  ASSERT_TRUE(read->has_value());
  EXPECT_EQ((*read)->names, manifest.names);
  EXPECT_EQ((*read)->checkpoints, manifest.checkpoints);
  EXPECT_FALSE(fs::exists(SetsManifestPath(data_.string()) + ".tmp"));
}

TEST_F(FeatureSetsTest, ADamagedManifestNamesItsLineAndTheWayOut) {
  std::ofstream(SetsManifestPath(data_.string())) << "freshet feature sets 1\n7 users\nseven merchants\n";
  Result<std::optional<SetsManifest>> read = ReadSetsManifest(data_.string());
  ASSERT_FALSE(read.ok());
  EXPECT_NE(read.status().message().find("manifest:3:"), std::string::npos) << read.status().message();
  EXPECT_NE(read.status().message().find("--reset"), std::string::npos) << read.status().message();
}

TEST_F(FeatureSetsTest, ADataDirectoryOfOtherSetsIsRefused) {
  const SetsManifest manifest{.names = {"users", "merchants"}, .checkpoints = {{"users", 1}, {"merchants", 1}}};
  EXPECT_TRUE(CheckDataDirSets(data_.string(), {"merchants", "users"}, manifest).ok());  // Order does not matter.
  Status changed = CheckDataDirSets(data_.string(), {"users", "devices"}, manifest);
  EXPECT_NE(changed.message().find("feature sets users, merchants, but this run has users, devices"),
            std::string::npos) << changed.message();
  EXPECT_NE(changed.message().find("--reset"), std::string::npos);
  Status one = CheckDataDirSets(data_.string(), {"users"}, manifest);
  EXPECT_NE(one.message().find("this run has one spec"), std::string::npos) << one.message();
  EXPECT_TRUE(CheckDataDirSets(data_.string(), {"users"}, std::nullopt).ok());
  // A single-spec run's checkpoints are not read as a set's.
  fs::create_directories(data_ / "checkpoints");
  std::ofstream(data_ / "checkpoints" / "checkpoint-1.ckpt") << "x";
  Status single = CheckDataDirSets(data_.string(), {"users", "merchants"}, std::nullopt);
  EXPECT_NE(single.message().find("a run with one spec"), std::string::npos) << single.message();
}

}  // namespace
}  // namespace freshet

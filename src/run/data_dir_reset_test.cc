#include "run/data_dir_reset.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "engine/test_specs.h"

namespace freshet {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kNoon = 1'767'268'800'000;  // 2026-01-01T12:00:00Z

class DataDirResetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("freshet_reset_" + std::to_string(::getpid()) + "_" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    data_ = root_ / "data";
    spec_ = test_specs::BaseSpec();
    test_specs::AddFeature(spec_, "n", AggKind::kCount, "", WindowSpec{});
  }
  void TearDown() override { fs::remove_all(root_); }

  // A file at `relative` under the data directory (its folders created) holding `text`.
  void Put(const std::string& relative, const std::string& text) {
    fs::create_directories((data_ / relative).parent_path());
    std::ofstream(data_ / relative) << text;
  }
  static std::string Read(const fs::path& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  fs::path root_;
  fs::path data_;
  Spec spec_;
};

TEST_F(DataDirResetTest, MovesTheFeatureSetsStateToo) {
  // A run with several feature sets keeps each set's checkpoints and dead letters, and their manifest, in sets/.
  Put("sets/manifest", "manifest");
  Put("sets/users/checkpoints/checkpoint-3.ckpt", "ckpt");
  Result<DataDirReset> reset = MoveRunStateAside(spec_, data_.string(), kNoon);
  ASSERT_TRUE(reset.ok()) << reset.status().message();
  EXPECT_EQ(reset->moved, (std::vector<std::string>{"sets"}));
  EXPECT_EQ(Read(fs::path(reset->folder) / "sets" / "users" / "checkpoints" / "checkpoint-3.ckpt"), "ckpt");
  EXPECT_FALSE(fs::exists(data_ / "sets"));
}

TEST_F(DataDirResetTest, MovesTheRunStateAsideAndDeletesNothing) {
  Put("checkpoints/checkpoint-7.ckpt", "ckpt");
  Put("dead_letters/file.jsonl", "dead");
  Put("offline/events/_delta_log/0.json", "log");
  Put("ingest/segment-0.log", "acknowledged");
  Result<DataDirReset> reset = MoveRunStateAside(spec_, data_.string(), kNoon + 999);
  ASSERT_TRUE(reset.ok()) << reset.status().message();
  const fs::path folder = data_ / "reset-20260101T120000Z";
  EXPECT_EQ(reset->folder, folder.string());
  EXPECT_EQ(reset->moved, (std::vector<std::string>{"checkpoints", "dead_letters", "offline"}));
  EXPECT_EQ(Read(folder / "checkpoints" / "checkpoint-7.ckpt"), "ckpt");
  EXPECT_EQ(Read(folder / "dead_letters" / "file.jsonl"), "dead");
  EXPECT_EQ(Read(folder / "offline" / "events" / "_delta_log" / "0.json"), "log");
  EXPECT_FALSE(fs::exists(data_ / "checkpoints"));
  EXPECT_FALSE(fs::exists(data_ / "dead_letters"));
  EXPECT_FALSE(fs::exists(data_ / "offline"));
  EXPECT_EQ(Read(data_ / "ingest" / "segment-0.log"), "acknowledged") << "acknowledged events stay";
  ASSERT_EQ(reset->report.size(), 4u);
  EXPECT_EQ(reset->report[0], "--reset: moved " + (data_ / "checkpoints").string() + "/ to " +
                                  (folder / "checkpoints").string() + "/");
  EXPECT_NE(reset->report[3].find("kept " + (data_ / "ingest").string()), std::string::npos) << reset->report[3];

  // Again in the same second: a folder of its own, the first one untouched.
  Put("checkpoints/checkpoint-1.ckpt", "second");
  reset = MoveRunStateAside(spec_, data_.string(), kNoon);
  ASSERT_TRUE(reset.ok()) << reset.status().message();
  EXPECT_EQ(reset->folder, (data_ / "reset-20260101T120000Z-2").string());
  EXPECT_EQ(reset->moved, (std::vector<std::string>{"checkpoints"}));
  EXPECT_EQ(Read(data_ / "reset-20260101T120000Z-2" / "checkpoints" / "checkpoint-1.ckpt"), "second");
  EXPECT_EQ(Read(folder / "checkpoints" / "checkpoint-7.ckpt"), "ckpt");
}

TEST_F(DataDirResetTest, NothingToMoveIsSaidAndCreatesNothing) {
  Result<DataDirReset> reset = MoveRunStateAside(spec_, data_.string(), kNoon);
  ASSERT_TRUE(reset.ok()) << reset.status().message();
  EXPECT_TRUE(reset->folder.empty());
  EXPECT_TRUE(reset->moved.empty());
  ASSERT_EQ(reset->report.size(), 1u);
  EXPECT_NE(reset->report[0].find("nothing to move"), std::string::npos) << reset->report[0];
  EXPECT_FALSE(fs::exists(data_));
}

TEST_F(DataDirResetTest, AnOfflineStoreElsewhereIsNeverMoved) {
  Put("checkpoints/checkpoint-1.ckpt", "ckpt");
  Put("offline/events/x", "not the spec's store");
  const fs::path lake = root_ / "lake";
  spec_.offline.path = lake.string();

  // With content: a run without a checkpoint would roll it back, so nothing is moved and the message says why.
  fs::create_directories(lake / "events");
  Result<DataDirReset> refused = MoveRunStateAside(spec_, data_.string(), kNoon);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find(lake.string()), std::string::npos) << refused.status().message();
  EXPECT_NE(refused.status().message().find("nothing was moved"), std::string::npos) << refused.status().message();
  EXPECT_TRUE(fs::exists(data_ / "checkpoints" / "checkpoint-1.ckpt"));

  // Empty: the data directory's state is moved; the offline store and the data directory's own offline/ (not
  // the spec's store) stay.
  fs::remove(lake / "events");
  Result<DataDirReset> reset = MoveRunStateAside(spec_, data_.string(), kNoon);
  ASSERT_TRUE(reset.ok()) << reset.status().message();
  EXPECT_EQ(reset->moved, (std::vector<std::string>{"checkpoints"}));
  EXPECT_TRUE(fs::exists(lake));
  EXPECT_TRUE(fs::exists(data_ / "offline" / "events" / "x"));

  // offline.path naming the data directory's offline/ (here through a symlinked data directory) is the default.
  Put("checkpoints/checkpoint-2.ckpt", "ckpt");
  fs::create_directory_symlink(data_, root_ / "data-link");
  spec_.offline.path = (root_ / "data-link" / "offline").string();
  reset = MoveRunStateAside(spec_, data_.string(), kNoon + 1000);
  ASSERT_TRUE(reset.ok()) << reset.status().message();
  EXPECT_EQ(reset->moved, (std::vector<std::string>{"checkpoints", "offline"}));
}

}  // namespace
}  // namespace freshet

// Tests for GroupCheckpoints: claims number epochs without gaps or doubles, the restore takes the state written
// under a partition's highest epoch (fencing: a member that lost the partition writes under an older epoch,
// however new its checkpoint), and a member keeps the last checkpoint of a partition it gave up until the next
// owner has saved that partition.
#include "state/group_checkpoints.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

namespace freshet {
namespace {

namespace fs = std::filesystem;

class GroupCheckpointsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("freshet_group_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  GroupCheckpoints Member(const std::string& name, int keep = 1) {
    Result<GroupCheckpoints> group = GroupCheckpoints::Open(dir_.string(), name, keep);
    EXPECT_TRUE(group.ok()) << group.status().message();
    return std::move(group).value();
  }

  // Writes a checkpoint of `member` whose state is `state`, holding `epochs`.
  static uint64_t Write(GroupCheckpoints& member, const std::map<int32_t, uint64_t>& epochs, const std::string& state) {
    Checkpoint c;
    c.sequence = member.store().next_sequence();
    c.positions = {{"epochs", GroupCheckpoints::EncodeEpochs(epochs)}};
    c.engine_state = state;
    EXPECT_TRUE(member.store().Write(c).ok());
    EXPECT_TRUE(member.AfterWrite(c.sequence, epochs).ok());
    return c.sequence;
  }

  std::string NewestState(GroupCheckpoints& member, int32_t partition) {
    std::vector<std::string> warnings;
    auto found = member.Newest({partition}, &warnings);
    EXPECT_TRUE(found.ok());
    if (!found->contains(partition)) return "";
    return found->at(partition).checkpoint->engine_state;
  }

  fs::path dir_;
};

TEST_F(GroupCheckpointsTest, ClaimsCountUpAndTheHighestEpochsStateWins) {
  GroupCheckpoints a = Member("a");
  GroupCheckpoints b = Member("b");
  ASSERT_EQ(*a.Claim(3), 1u);
  Write(a, {{3, 1}}, "a1");
  EXPECT_EQ(NewestState(b, 3), "a1");
  ASSERT_EQ(*b.Claim(3), 2u);
  EXPECT_FALSE(a.StillOwns(3, 1));
  EXPECT_TRUE(b.StillOwns(3, 2));
  Write(b, {{3, 2}}, "b1");
  // a has not noticed and writes again, newer in time but under its older claim: b's state stays the newest.
  Write(a, {{3, 1}}, "a2");
  Write(a, {{3, 1}}, "a3");
  EXPECT_EQ(NewestState(a, 3), "b1");
  Write(b, {{3, 2}}, "b2");
  EXPECT_EQ(NewestState(a, 3), "b2");
  EXPECT_EQ(NewestState(a, 4), "");  // Nobody ever held partition 4.
}

TEST_F(GroupCheckpointsTest, TheLastStateOfAGivenUpPartitionStaysUntilItsNextOwnerSavesIt) {
  GroupCheckpoints a = Member("a", /*keep=*/1);
  ASSERT_EQ(*a.Claim(1), 1u);
  ASSERT_EQ(*a.Claim(2), 1u);
  Write(a, {{1, 1}, {2, 1}}, "both");
  Write(a, {{1, 1}}, "one");  // Partition 2 was given up.
  Write(a, {{1, 1}}, "one again");
  Write(a, {{1, 1}}, "one more");
  EXPECT_EQ(NewestState(a, 2), "both");  // Kept: nobody has saved partition 2 since.
  GroupCheckpoints b = Member("b");
  ASSERT_EQ(*b.Claim(2), 2u);
  Write(b, {{2, 2}}, "b");
  Write(a, {{1, 1}}, "and one more");
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(dir_ / "members" / "a")) files += entry.path().extension() == ".ckpt";
  EXPECT_EQ(files, 1u);  // Now only the newest is needed.
  EXPECT_EQ(NewestState(b, 2), "b");
  EXPECT_EQ(NewestState(b, 1), "and one more");
}

}  // namespace
}  // namespace freshet

// GroupCheckpoints: the checkpoint folder that the `freshet run` processes of one Kafka consumer group share
// (`checkpoint.path`, on storage every one of them reaches), so that a partition moves between processes with
// its state.
//
//   <path>/members/<member>/checkpoint-<seq>.ckpt   one process's checkpoints (state/checkpoint.h): the state and
//                                                   offset of the partitions it owned then, its offline rows'
//                                                   staged commit, and the epoch under which it owned each
//                                                   partition (position "epochs": "P=E P=E ...")
//   <path>/partitions/<P>/epoch-<N>                 claims: created exclusively (O_EXCL) by the process that
//                                                   gained partition P for the N-th time; holds its member name
//   <path>/partitions/<P>/saved-<N>                 created once the owner of epoch N has checkpointed P
//
// The state a process restores for P is the one written under P's highest epoch, then the highest sequence of
// that member. This is the fencing rule: a process that lost P without noticing (its session expired during a
// long pause) can still write a checkpoint holding P, but under its older epoch, which a restore never prefers
// to the new owner's. Before each checkpoint a process also drops the partitions claimed by others since
// (StillOwns), so it stops writing them at the latest one checkpoint interval later.
//
// A member's old checkpoints are deleted (Prune) once none of them is needed: each partition in them has a newer
// checkpoint of this member under the same epoch, or a later owner has saved it (saved-<higher epoch>). So the last
// state a process wrote for a partition it gave up stays until the next owner has checkpointed that partition,
// even if that owner dies first. Files of processes that ended are left for an operator to delete once their
// partitions are saved elsewhere (see the README).
//
// Not thread-safe: one thread (the runtime's, under its checkpoint ordering) uses it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "state/checkpoint.h"

namespace freshet {

class GroupCheckpoints {
 public:
  // Opens (creating) `path` for member `member` (a name unique to this process: MemberName()). `keep`: how many
  // of this member's newest checkpoints are always kept.
  static Result<GroupCheckpoints> Open(const std::string& path, std::string member, int keep);

  // A member name for this process: host, pid and start time, unique in the group.
  static std::string MemberName();

  // Claims partition P for this process: creates epoch-<N> exclusively, N one more than the highest claim
  // (retrying on a race with another claimant). Returns N.
  Result<uint64_t> Claim(int32_t partition);
  // Whether no process has claimed P since this process's claim `epoch`.
  bool StillOwns(int32_t partition, uint64_t epoch) const;

  // The newest state of each of `partitions` in any member's checkpoints (see the file comment); a partition
  // that none holds is left out. Damaged files are skipped with a warning.
  struct Found {
    std::string member;
    std::shared_ptr<const Checkpoint> checkpoint;
  };
  Result<std::map<int32_t, Found>> Newest(const std::vector<int32_t>& partitions,
                                          std::vector<std::string>* warnings) const;

  // This member's checkpoint files (written with store().Write).
  CheckpointStore& store() { return *store_; }
  // After store().Write of checkpoint `sequence` holding `epochs` (partition -> epoch): marks the partitions
  // saved and deletes this member's checkpoints that no partition needs any more.
  Status AfterWrite(uint64_t sequence, const std::map<int32_t, uint64_t>& epochs);

  const std::string& member() const { return member_; }
  const std::string& path() const { return path_; }

  // The "epochs" position text and back.
  static std::string EncodeEpochs(const std::map<int32_t, uint64_t>& epochs);
  static std::optional<std::map<int32_t, uint64_t>> DecodeEpochs(std::string_view text);

 private:
  GroupCheckpoints(std::string path, std::string member) : path_(std::move(path)), member_(std::move(member)) {}
  std::string PartitionDir(int32_t partition) const;
  // The highest N of the partition's `<prefix>-<N>` files (0 without one).
  uint64_t Highest(int32_t partition, std::string_view prefix) const;

  std::string path_;
  std::string member_;
  int keep_ = 3;
  std::unique_ptr<CheckpointStore> store_;
  std::map<uint64_t, std::map<int32_t, uint64_t>> written_;  // This member's files: sequence -> epochs.
};

}  // namespace freshet

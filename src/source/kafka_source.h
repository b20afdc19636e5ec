// KafkaSource: events from a Kafka topic, through librdkafka's consumer, in a consumer group.
//
// Each message value is one JSON event (what a file line is for FileSource). A record's stream is its
// partition and its `end.offset` the message's offset + 1, so a position names, per partition, the offset of
// the next message to read:
//
//   kafka <topic> <partition>=<next offset> <partition>=<next offset> ...
//
// Exactly once: the group's committed offsets are only a report for lag monitors. Freshet's own checkpoint
// holds the positions it restores from; Commit, called after a checkpoint is durable, copies them to the group
// (never ahead of a checkpoint). On assignment a partition starts at the offset the restored position names;
// one it does not name starts at the group's committed offset, else at `start` (earliest or latest).
//
// Several processes per group: with a RebalanceListener (the runtime's, when `checkpoint.path` names a shared
// folder) a partition moves with its state. The group uses cooperative-sticky assignment: only the partitions
// that move are revoked (the listener checkpoints them first) and assigned (the listener restores them and names
// the offset to read from). Without a listener a revocation is only warned about (one process per group).
//
// Not thread-safe: one thread polls, commits and reads health. The librdkafka handle runs its own threads.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "source/source.h"

struct rd_kafka_message_s;  // librdkafka's rd_kafka_message_t.

namespace freshet {

struct KafkaSourceOptions {
  std::string brokers;  // bootstrap.servers
  std::string topic;
  std::string group;
  std::string start = "earliest";  // A partition the group never committed: "earliest" or "latest".
  int64_t session_timeout_ms = 45000;
  std::vector<std::pair<std::string, std::string>> properties;  // Passed to librdkafka as given (security...).
};

// What the source knows about its group membership, for metrics and /health.
struct KafkaPartitionStatus {
  int32_t partition = 0;
  int64_t next_offset = -1;      // Of the next message to hand out (-1: none read or restored yet).
  int64_t committed = -1;        // Last offset committed to the group by Commit (-1: none yet).
  int64_t high_watermark = -1;   // The partition's end offset as of the last fetch (-1: unknown).
};

// What the runtime does when the group moves partitions. Called on the polling thread, inside Poll, before the
// source takes up (assign) or gives up (revoke) the partitions; the source hands out no message of a partition
// polled before its revocation.
class RebalanceListener {
 public:
  virtual ~RebalanceListener() = default;
  // Partitions gained: restores their state; returns the offset to read each one from (a partition left out
  // starts at the group's committed offset, else at `start`). An error is reported as the source's problem
  // and the partitions are not taken up.
  virtual Result<std::map<int32_t, int64_t>> OnAssigned(const std::vector<int32_t>& partitions) = 0;
  // Partitions about to be given up: checkpoints them, then forgets their state. `lost`: the session expired
  // and another process may own them already (their state must not be written any more).
  virtual void OnRevoked(const std::vector<int32_t>& partitions, bool lost) = 0;
};

class KafkaSource final : public Source {
 public:
  explicit KafkaSource(KafkaSourceOptions options);
  ~KafkaSource() override;
  KafkaSource(const KafkaSource&) = delete;
  KafkaSource& operator=(const KafkaSource&) = delete;

  // Creates the consumer and joins the group (the assignment comes with the first polls). An error names
  // the option librdkafka refused.
  Status Open();

  std::string_view name() const override { return options_.topic; }
  Status Poll(std::vector<SourceRecord>* out, size_t max_records, int timeout_ms) override;
  std::string position() const override;
  std::string PositionAfter(std::span<const SourceRecord> batch, size_t count) const override;
  Status Seek(std::string_view position) override;
  bool exhausted() const override { return false; }

  // Commits `position` (a position() or PositionAfter of this source) to the group, asynchronously; the
  // destructor commits the last one again and waits for it. Safe to call from another thread than Poll's.
  void Commit(std::string_view position);

  // Why the source cannot read now (brokers unreachable, group not joined), or nullopt when it is fine.
  std::optional<std::string> problem() const;
  std::vector<KafkaPartitionStatus> partitions() const;
  uint64_t rebalances() const { return rebalances_.load(); }
  // Since when (steady clock, ns) no partition has been assigned to this process; nullopt while some are.
  std::optional<int64_t> unassigned_since_ns() const;

  // Makes the group move partitions with their state (see RebalanceListener); set before the first Poll.
  void SetRebalanceListener(RebalanceListener* listener) { listener_ = listener; }

  // Parses a position's text into partition -> next offset; nullopt when it is not one of this topic's.
  static std::optional<std::map<int32_t, int64_t>> ParsePosition(std::string_view text, std::string_view topic);

 private:
  struct Impl;
  friend struct Impl;
  std::string Format(const std::map<int32_t, int64_t>& offsets) const;
  Status Gather(uint64_t rebalances_before);
  Status Keep(ssize_t got, uint64_t rebalances_before);
  void CommitOffsets(std::string_view position, bool wait);

  KafkaSourceOptions options_;
  std::unique_ptr<Impl> impl_;
  std::map<int32_t, int64_t> next_;       // Partition -> offset after the last record handed out (or restored).
  std::map<int32_t, int64_t> batch_start_;  // next_ before the latest Poll.
  std::vector<char> arena_;               // Texts of the latest batch, each followed by parse padding.
  struct Kept {                           // A message of the latest batch, its text in arena_.
    size_t at, size;
    int32_t partition;
    int64_t offset;
    int64_t arrival_ns;
  };
  std::vector<Kept> kept_;
  static constexpr size_t kMaxBatch = 4096;
  static constexpr size_t kSlice = 128;  // Messages taken from one partition's queue before the next one's.
  std::vector<rd_kafka_message_s*> messages_;  // Poll scratch.
  std::atomic<uint64_t> rebalances_{0};
  RebalanceListener* listener_ = nullptr;
};

}  // namespace freshet

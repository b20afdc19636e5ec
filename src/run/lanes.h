// PipelineLanes: the pipelines of one `freshet run` (or backfill), one per input stream.
//
// A Kafka source's partitions are inputs of their own: each has its own lateness clock (M), feature state,
// deduplication ids and input order (its offsets), so that no value depends on how the partitions' messages
// interleave (see the README's Semantics). A file or HTTP source is one input: one lane, or, with
// `parallelism` N > 1, N shard lanes and a judge (run/sharded_input.h): the judge holds the input's lateness
// clock, deduplication ids and counters (its engine has no entity); shard k holds the state of the entities
// whose name hashes to k (ShardOf), and follows the judge's clock. Offline rows of all lanes share one `seq`
// numbering, so that seq stays unique in the tables and orders a replay that routes each event back to its
// partition's lane.
//
// Not thread-safe: the caller locks (the runtime: lanes are made under its exclusive lock).
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "engine/dedup.h"
#include "engine/feature_engine.h"
#include "run/event_path.h"
#include "run/offline_sink.h"
#include "spec/spec.h"
#include "table/table_set.h"

namespace freshet {

class PipelineLanes {
 public:
  struct Lane {
    Lane(const Spec& spec, uint32_t stream_in)
        : stream(stream_in), engine(spec), dedup(MakeDeduplicator(spec)),
          path(engine, counters, dedup ? &*dedup : nullptr, nullptr) {}
    uint32_t stream;
    FeatureEngine engine;
    PipelineCounters counters;
    std::optional<Deduplicator> dedup;  // With `dedup` in the spec.
    EventPath path;
    // With a ttl: the low watermark at which this lane's idle entities are next swept (Runtime::ExpireIdle). Kept
    // with the lane, since a Kafka lane moves index when another partition is revoked.
    int64_t next_expiry_sweep_ms = std::numeric_limits<int64_t>::min();
  };

  // `partitioned`: a lane per stream (Kafka partitions); otherwise one lane for every stream, or with `shards`
  // > 1 that many shard lanes and a judge.
  PipelineLanes(const Spec& spec, bool partitioned, size_t shards = 1);

  bool partitioned() const { return partitioned_; }
  bool sharded() const { return judge_ != nullptr; }
  // Sharded: the judge (lateness, deduplication and the input's counters), else null.
  Lane* judge() { return judge_.get(); }
  // Every lane whose counters count events: the lanes, and the judge when sharded.
  std::vector<const Lane*> counting_lanes() const;
  // Sharded: the shard lane that holds an entity (a hash of its name, the same in every run).
  uint32_t ShardOf(std::string_view entity) const;
  // The index of a stream's lane, made on first use.
  uint32_t IndexOf(uint32_t stream);
  Lane& For(uint32_t stream) { return *lanes_[IndexOf(stream)]; }
  // The stream's lane if it has one (makes none).
  const Lane* Find(uint32_t stream) const;
  Lane& at(size_t index) { return *lanes_[index]; }
  const Lane& at(size_t index) const { return *lanes_[index]; }
  size_t size() const { return lanes_.size(); }
  // An engine with no entities: answers for entities no lane has.
  const FeatureEngine& blank() const { return blank_; }

  // For the lanes there are and those made later.
  void SetOfflineSink(OfflineSink* offline);
  // `prefetched_by_caller`: as EventPath::SetTables (Runtime::ProcessShard prefetches ahead; backfill does not).
  void SetTables(const TableSet* tables, bool prefetched_by_caller = false);
  void SkipLinesWithoutEntity();  // EventPath::SkipLinesWithoutEntity.

  // The newest event time accepted by any lane (min() before any): a table version at or before it is late.
  int64_t newest_event_ms() const;

  // The state of every lane for a checkpoint. Unpartitioned: the one lane's EncodePipelineState bytes (what
  // checkpoints always held). Partitioned: a marker byte, the shared offline seq, then each lane's stream and
  // pipeline state. Sharded: another marker byte, the shard count, the judge's then each shard's pipeline
  // state. `run`, if given, runs work(k) for every lane k at once (the runtime's shard threads): each shard's
  // state is encoded on its own thread.
  using RunPerLane = std::function<void(const std::function<void(size_t)>&)>;
  // `part_bytes`, if given, gets each shard's state size (sharded only).
  std::string Encode(const RunPerLane* run = nullptr, std::vector<size_t>* part_bytes = nullptr) const;
  // Restores what Encode wrote into fresh lanes; a partitioned state into unpartitioned lanes (or the reverse) is
  // refused with a message saying so. A file or HTTP state of another shard count is re-sharded (Reshard), and a
  // note says so. `notes` as for DecodePipelineState.
  Status Decode(std::string_view bytes, std::vector<std::string>* notes);

  // Consumer-group members (the runtime with a shared `checkpoint.path`): partitions come and go.
  // Numbers offline rows by place (EventPath::SharedSequence::from_place).
  void NumberRowsByPlace() { offline_seq_.from_place = true; }
  // Forgets a stream's lane (a revoked partition, checkpointed first). Lane indices of the others may change.
  void Remove(uint32_t stream);
  // Restores the lanes of `streams` from bytes Encode wrote (partitioned), replacing lanes they have; the
  // other lanes in `bytes` are skipped. A stream `bytes` does not hold is left as it is.
  Status DecodeStreams(std::string_view bytes, const std::vector<uint32_t>& streams, std::vector<std::string>* notes);

  // Over all lanes; entity_count counts the entities held (not expired ones).
  size_t entity_count() const;
  int64_t low_watermark_ms() const;  // The lowest lane's (the one furthest behind); min() with no lane.
  size_t MemoryBytes() const;
  // The seq the next accepted event's offline rows get: every event accepted so far has a lower one (what a
  // live explanation's replay of the events table stops before, and where a reference-table version arriving now
  // stands in the stream's order, table/table_history.h).
  uint64_t next_offline_seq() const;

 private:
  const Spec& spec_;
  const bool partitioned_;
  const FeatureEngine blank_;
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::map<uint32_t, uint32_t> index_of_stream_;
  OfflineSink* offline_ = nullptr;
  const TableSet* tables_ = nullptr;
  bool tables_prefetched_by_caller_ = false;
  bool skip_without_entity_ = false;
  std::string EncodeShards(const RunPerLane* run, std::vector<size_t>* part_bytes) const;
  // `shards_format`: written by EncodeShards; otherwise the state of one lane, refused unless this has one shard.
  Status DecodeShards(std::string_view bytes, bool shards_format, std::vector<std::string>* notes);
  Status Reshard(std::optional<std::string_view> judge, std::span<const std::string_view> shards,
                 std::vector<std::string>* notes);
  Status MoveEntities(const Lane& from);

  EventPath::SharedSequence offline_seq_;  // Partitioned: the next offline row's seq (shared by threads).
  std::unique_ptr<Lane> judge_;            // Sharded only.
};

}  // namespace freshet

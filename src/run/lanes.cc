#include "run/lanes.h"

#include <algorithm>
#include <limits>
#include <span>

#include "common/bytes.h"

namespace freshet {
namespace {

constexpr uint8_t kLanesStateMarker = 0xF1;
constexpr uint8_t kShardsStateMarker = 0xF2;

// FNV-1a, 64 bits: stable across runs, builds and machines, since a restored shard must get its entities' events.
uint64_t StableHash(std::string_view text) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string EncodeLane(const PipelineLanes::Lane& lane) {
  return EncodePipelineState(lane.engine, lane.counters, lane.dedup ? &*lane.dedup : nullptr);
}

std::string ParallelismText(uint64_t shards) { return "parallelism " + std::to_string(shards); }

}  // namespace

PipelineLanes::PipelineLanes(const Spec& spec, bool partitioned, size_t shards)
    : spec_(spec), partitioned_(partitioned), blank_(spec) {
  if (partitioned_) return;
  for (size_t k = 0; k < std::max<size_t>(shards, 1); ++k) lanes_.push_back(std::make_unique<Lane>(spec, 0));
  if (shards > 1) judge_ = std::make_unique<Lane>(spec, 0);
}

std::vector<const PipelineLanes::Lane*> PipelineLanes::counting_lanes() const {
  std::vector<const Lane*> out;
  for (const auto& lane : lanes_) out.push_back(lane.get());
  if (judge_) out.push_back(judge_.get());
  return out;
}

uint32_t PipelineLanes::ShardOf(std::string_view entity) const {
  return static_cast<uint32_t>(StableHash(entity) % lanes_.size());
}

uint32_t PipelineLanes::IndexOf(uint32_t stream) {
  if (!partitioned_) return 0;
  auto it = index_of_stream_.find(stream);
  if (it != index_of_stream_.end()) return it->second;
  auto lane = std::make_unique<Lane>(spec_, stream);
  lane->path.SetOfflineSink(offline_);
  lane->path.SetOfflineSequence(&offline_seq_);
  lane->path.SetTables(tables_, tables_prefetched_by_caller_);
  if (skip_without_entity_) lane->path.SkipLinesWithoutEntity();
  lanes_.push_back(std::move(lane));
  const uint32_t index = static_cast<uint32_t>(lanes_.size() - 1);
  index_of_stream_.emplace(stream, index);
  return index;
}

const PipelineLanes::Lane* PipelineLanes::Find(uint32_t stream) const {
  if (!partitioned_) return lanes_[0].get();
  auto it = index_of_stream_.find(stream);
  return it == index_of_stream_.end() ? nullptr : lanes_[it->second].get();
}

void PipelineLanes::SetOfflineSink(OfflineSink* offline) {
  offline_ = offline;
  for (auto& lane : lanes_) lane->path.SetOfflineSink(offline);
}

void PipelineLanes::SetTables(const TableSet* tables, bool prefetched_by_caller) {
  tables_ = tables;
  tables_prefetched_by_caller_ = prefetched_by_caller;
  for (auto& lane : lanes_) lane->path.SetTables(tables, prefetched_by_caller);
}

void PipelineLanes::SkipLinesWithoutEntity() {
  skip_without_entity_ = true;
  for (auto& lane : lanes_) lane->path.SkipLinesWithoutEntity();
}

uint64_t PipelineLanes::next_offline_seq() const {
  if (judge_) return judge_->counters.seq;  // Sharded: the judge numbers the input's accepted events.
  return partitioned_ ? offline_seq_.next : lanes_[0]->counters.seq;
}

int64_t PipelineLanes::newest_event_ms() const {
  int64_t newest = std::numeric_limits<int64_t>::min();
  for (const auto& lane : lanes_) newest = std::max(newest, lane->engine.max_time_ms());
  return newest;
}

std::string PipelineLanes::EncodeShards(const RunPerLane* run, std::vector<size_t>* part_bytes) const {
  std::vector<std::string> shards(lanes_.size());
  const std::function<void(size_t)> work = [&](size_t k) { shards[k] = EncodeLane(*lanes_[k]); };
  if (run != nullptr) {
    (*run)(work);
  } else {
    for (size_t k = 0; k < lanes_.size(); ++k) work(k);
  }
  std::string out;
  ByteWriter w(&out);
  w.PutU8(kShardsStateMarker);
  w.PutVarint(lanes_.size());
  w.PutBytes(EncodeLane(*judge_));
  for (const std::string& shard : shards) w.PutBytes(shard);
  if (part_bytes != nullptr) {
    for (const std::string& shard : shards) part_bytes->push_back(shard.size());
  }
  return out;
}

std::string PipelineLanes::Encode(const RunPerLane* run, std::vector<size_t>* part_bytes) const {
  if (judge_) return EncodeShards(run, part_bytes);
  const auto& encode = EncodeLane;
  if (!partitioned_) return encode(*lanes_[0]);
  std::string out;
  ByteWriter w(&out);
  w.PutU8(kLanesStateMarker);
  w.PutU64(offline_seq_.next);
  w.PutVarint(lanes_.size());
  for (const auto& lane : lanes_) {
    w.PutVarint(lane->stream);
    w.PutBytes(encode(*lane));
  }
  return out;
}

Status PipelineLanes::Decode(std::string_view bytes, std::vector<std::string>* notes) {
  const bool lanes_format = !bytes.empty() && static_cast<uint8_t>(bytes[0]) == kLanesStateMarker;
  const bool shards_format = !bytes.empty() && static_cast<uint8_t>(bytes[0]) == kShardsStateMarker;
  auto decode = [&](std::string_view state, Lane& lane) {
    return DecodePipelineState(state, &lane.engine, &lane.counters, lane.dedup ? &*lane.dedup : nullptr, notes);
  };
  if (!partitioned_ && !lanes_format && (shards_format || judge_)) return DecodeShards(bytes, shards_format, notes);
  if (!partitioned_) {
    if (lanes_format) {
      return Status::Invalid("it was written by a pipeline reading Kafka partitions, and this spec's source is not "
                             "Kafka; start fresh with `freshet run --reset` (it moves the old checkpoints aside)");
    }
    return decode(bytes, *lanes_[0]);
  }
  if (!lanes_format) {
    return Status::Invalid("it was written by a pipeline reading a file or HTTP source, and this spec reads Kafka; "
                           "start fresh with `freshet run --reset` (it moves the old checkpoints aside)");
  }
  ByteReader in(bytes);
  uint8_t marker;
  uint64_t count = 0, offline_seq = 0;
  if (!in.ReadU8(&marker) || !in.ReadU64(&offline_seq) || !in.ReadCount(&count)) {
    return Status::Invalid("it is incomplete");
  }
  offline_seq_.next = offline_seq;
  for (uint64_t k = 0; k < count; ++k) {
    uint64_t stream;
    std::string_view state;
    if (!in.ReadVarint(&stream) || stream > UINT32_MAX || !in.ReadBytes(&state)) {
      return Status::Invalid("it is incomplete");
    }
    Status decoded = decode(state, For(static_cast<uint32_t>(stream)));
    if (!decoded.ok()) return Status::Invalid("partition " + std::to_string(stream) + ": " + decoded.message());
  }
  return Status::Ok();
}

Status PipelineLanes::DecodeShards(std::string_view bytes, bool shards_format, std::vector<std::string>* notes) {
  auto decode = [&](std::string_view state, Lane& lane) {
    return DecodePipelineState(state, &lane.engine, &lane.counters, lane.dedup ? &*lane.dedup : nullptr, notes);
  };
  // A state of one lane (of parallelism 1, or of a version before sharding) counts as one shard.
  uint64_t count = 1;
  ByteReader in(bytes);
  uint8_t marker;
  if (shards_format && (!in.ReadU8(&marker) || !in.ReadCount(&count))) return Status::Invalid("it is incomplete");
  std::optional<std::string_view> judge;  // Sharded: the judge's state, then each shard's.
  std::vector<std::string_view> shards;
  if (shards_format) {
    std::string_view state;
    for (uint64_t k = 0; k <= count; ++k) {
      if (!in.ReadBytes(&state)) return Status::Invalid("it is incomplete");
      if (k == 0) {
        judge = state;
      } else {
        shards.push_back(state);
      }
    }
    if (count < 2) return Status::Invalid("it is malformed (a sharded state of " + std::to_string(count) + " shard)");
  } else {
    shards.push_back(bytes);
  }
  if (count != lanes_.size()) return Reshard(judge, shards, notes);
  if (judge_ == nullptr) return decode(shards[0], *lanes_[0]);
  FRESHET_RETURN_IF_ERROR(decode(*judge, *judge_));
  for (size_t k = 0; k < lanes_.size(); ++k) {
    Status decoded = decode(shards[k], *lanes_[k]);
    if (!decoded.ok()) return Status::Invalid("shard " + std::to_string(k) + ": " + decoded.message());
  }
  return Status::Ok();
}

// Another shard count than the checkpoint's. The input's state (lateness clock M, deduplication ids, seq and
// the input's counters) is the old judge's, or the one lane's; every entity moves, with its feature states, its
// expiry bookkeeping and its newest event time, to the shard its name hashes to now (ShardOf). A checkpoint is
// taken between chunks, when every shard follows the input's M (run/sharded_input.h), so each new shard starts
// at that M: every value is as it would have been with the new count from the start (README, Semantics).
Status PipelineLanes::Reshard(std::optional<std::string_view> judge, std::span<const std::string_view> shards,
                              std::vector<std::string>* notes) {
  auto decode = [&](std::string_view state, Lane& lane) {
    return DecodePipelineState(state, &lane.engine, &lane.counters, lane.dedup ? &*lane.dedup : nullptr, notes);
  };
  std::vector<std::unique_ptr<Lane>> old;
  for (size_t k = 0; k < shards.size(); ++k) {
    old.push_back(std::make_unique<Lane>(spec_, 0));
    Status decoded = decode(shards[k], *old.back());
    if (!decoded.ok()) return Status::Invalid("shard " + std::to_string(k) + ": " + decoded.message());
  }
  // The input's state without entities: the old judge's as it is, or the one lane's clock, counters and ids.
  std::string input_state;
  if (judge) {
    input_state = std::string(*judge);
  } else {
    const Lane& one = *old[0];
    FeatureEngine clock(spec_);
    clock.FollowClock(one.engine.max_time_ms());
    clock.AddCounters(EngineCounters{.admitted = one.engine.counters().admitted,
                                     .late = one.engine.counters().late, .expired = 0, .skipped = {}});
    PipelineCounters counters = one.counters;
    counters.newest_event_ms.clear();
    input_state = EncodePipelineState(clock, counters, one.dedup ? &*one.dedup : nullptr);
  }
  Lane& input = judge_ ? *judge_ : *lanes_[0];
  FRESHET_RETURN_IF_ERROR(decode(input_state, input));
  for (auto& lane : lanes_) lane->engine.FollowClock(input.engine.max_time_ms());
  for (const auto& from : old) {
    EngineCounters entity_counters = from->engine.counters();  // Of the entities' features (sharded: no admissions).
    if (!judge) entity_counters.admitted = entity_counters.late = 0;  // Counted by the input's state above.
    lanes_[0]->engine.AddCounters(entity_counters);
    FRESHET_RETURN_IF_ERROR(MoveEntities(*from));
  }
  if (notes != nullptr) {
    notes->push_back("the checkpoint's state was written with " + ParallelismText(shards.size()) +
                     " and is re-sharded to " + ParallelismText(lanes_.size()) +
                     " (each entity moved to the shard its name hashes to)");
  }
  return Status::Ok();
}

// Every entity of `from` into the lane its name hashes to (through its saved bytes, as the online store keeps
// them), with its newest event time.
Status PipelineLanes::MoveEntities(const Lane& from) {
  std::string bytes;
  for (uint32_t e = 0; e < from.engine.entity_count(); ++e) {
    if (!from.engine.entity_live(e)) continue;
    const std::string& name = from.engine.entity_name(e);
    Lane& to = *lanes_[ShardOf(name)];
    bytes.clear();
    ByteWriter w(&bytes);
    from.engine.SaveEntity(e, w);
    ByteReader r(bytes);
    FRESHET_RETURN_IF_ERROR(to.engine.LoadEntity(name, r));
    const uint32_t index = *to.engine.FindEntity(name);
    std::vector<int64_t>& newest = to.counters.newest_event_ms;
    if (index >= newest.size()) newest.resize(index + 1, std::numeric_limits<int64_t>::min());
    if (e < from.counters.newest_event_ms.size()) newest[index] = from.counters.newest_event_ms[e];
  }
  return Status::Ok();
}

void PipelineLanes::Remove(uint32_t stream) {
  auto it = index_of_stream_.find(stream);
  if (!partitioned_ || it == index_of_stream_.end()) return;
  lanes_.erase(lanes_.begin() + it->second);
  index_of_stream_.clear();
  for (uint32_t k = 0; k < lanes_.size(); ++k) index_of_stream_.emplace(lanes_[k]->stream, k);
}

Status PipelineLanes::DecodeStreams(std::string_view bytes, const std::vector<uint32_t>& streams,
                                    std::vector<std::string>* notes) {
  if (!partitioned_ || bytes.empty() || static_cast<uint8_t>(bytes[0]) != kLanesStateMarker) {
    return Status::Invalid("it does not hold Kafka partitions' state");
  }
  ByteReader in(bytes);
  uint8_t marker;
  uint64_t count = 0, offline_seq = 0;
  if (!in.ReadU8(&marker) || !in.ReadU64(&offline_seq) || !in.ReadCount(&count)) return Status::Invalid("it is incomplete");
  for (uint64_t k = 0; k < count; ++k) {
    uint64_t stream;
    std::string_view state;
    if (!in.ReadVarint(&stream) || stream > UINT32_MAX || !in.ReadBytes(&state)) return Status::Invalid("it is incomplete");
    if (std::find(streams.begin(), streams.end(), static_cast<uint32_t>(stream)) == streams.end()) continue;
    Remove(static_cast<uint32_t>(stream));  // A fresh lane: decoding needs empty state.
    Lane& lane = For(static_cast<uint32_t>(stream));
    Status decoded =
        DecodePipelineState(state, &lane.engine, &lane.counters, lane.dedup ? &*lane.dedup : nullptr, notes);
    if (!decoded.ok()) return Status::Invalid("partition " + std::to_string(stream) + ": " + decoded.message());
  }
  return Status::Ok();
}

size_t PipelineLanes::entity_count() const {
  size_t n = 0;
  for (const auto& lane : lanes_) n += lane->engine.live_entity_count();
  return n;
}

int64_t PipelineLanes::low_watermark_ms() const {
  if (lanes_.empty()) return std::numeric_limits<int64_t>::min();
  int64_t low = std::numeric_limits<int64_t>::max();
  for (const auto& lane : lanes_) low = std::min(low, lane->engine.low_watermark_ms());
  return low;
}

size_t PipelineLanes::MemoryBytes() const {
  size_t bytes = 0;
  for (const Lane* lane : counting_lanes()) {
    bytes += lane->engine.MemoryBytes() + (lane->dedup ? lane->dedup->MemoryBytes() : 0);
  }
  return bytes;
}

}  // namespace freshet

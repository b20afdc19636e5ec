#include "run/lanes.h"

#include <algorithm>
#include <limits>

#include "common/bytes.h"

namespace freshet {
namespace {

constexpr uint8_t kLanesStateMarker = 0xF1;

}  // namespace

PipelineLanes::PipelineLanes(const Spec& spec, bool partitioned)
    : spec_(spec), partitioned_(partitioned), blank_(spec) {
  if (!partitioned_) lanes_.push_back(std::make_unique<Lane>(spec, 0));
}

uint32_t PipelineLanes::IndexOf(uint32_t stream) {
  if (!partitioned_) return 0;
  auto it = index_of_stream_.find(stream);
  if (it != index_of_stream_.end()) return it->second;
  auto lane = std::make_unique<Lane>(spec_, stream);
  lane->path.SetOfflineSink(offline_);
  lane->path.SetOfflineSequence(&offline_seq_);
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

std::string PipelineLanes::Encode() const {
  auto encode = [](const Lane& lane) {
    return EncodePipelineState(lane.engine, lane.counters, lane.dedup ? &*lane.dedup : nullptr);
  };
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
  auto decode = [&](std::string_view state, Lane& lane) {
    return DecodePipelineState(state, &lane.engine, &lane.counters, lane.dedup ? &*lane.dedup : nullptr, notes);
  };
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
  for (const auto& lane : lanes_) n += lane->engine.entity_count();
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
  for (const auto& lane : lanes_) bytes += lane->engine.MemoryBytes() + (lane->dedup ? lane->dedup->MemoryBytes() : 0);
  return bytes;
}

}  // namespace freshet

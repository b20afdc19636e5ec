#include "run/event_path.h"

namespace freshet {
namespace {

constexpr uint32_t kPipelineStateVersion = 1;

}  // namespace

std::string EncodePipelineState(const FeatureEngine& engine, const PipelineCounters& counters) {
  std::string engine_bytes;
  ByteWriter engine_out(&engine_bytes);
  engine.SaveState(engine_out);
  std::string bytes;
  ByteWriter out(&bytes);
  out.PutU32(kPipelineStateVersion);
  out.PutBytes(engine_bytes);
  out.PutU64(counters.seq);
  out.PutU64(counters.lines_read);
  out.PutU64(counters.rejected);
  out.PutU64(counters.newest_event_ms.size());
  for (int64_t t : counters.newest_event_ms) out.PutI64(t);
  return bytes;
}

Status DecodePipelineState(std::string_view bytes, FeatureEngine* engine, PipelineCounters* counters) {
  ByteReader in(bytes);
  uint32_t version = 0;
  std::string_view engine_bytes;
  if (!in.ReadU32(&version) || version != kPipelineStateVersion || !in.ReadBytes(&engine_bytes)) {
    return Status::Invalid("it was written by another version of freshet; move the data directory aside");
  }
  ByteReader engine_in(engine_bytes);
  FRESHET_RETURN_IF_ERROR(engine->LoadState(engine_in));
  uint64_t entities = 0;
  bool ok = in.ReadU64(&counters->seq) && in.ReadU64(&counters->lines_read) && in.ReadU64(&counters->rejected) &&
            in.ReadU64(&entities) && entities <= bytes.size();
  counters->newest_event_ms.resize(ok ? entities : 0);
  for (uint64_t e = 0; ok && e < entities; ++e) ok = in.ReadI64(&counters->newest_event_ms[e]);
  if (!ok) return Status::Invalid("it is incomplete");
  return Status::Ok();
}

EventPath::EventPath(FeatureEngine& engine, PipelineCounters& counters, OfflineSink* offline)
    : engine_(engine), counters_(counters), offline_(offline), parser_(engine.spec().fields) {}

EventPath::Outcome EventPath::Process(std::string_view text, size_t capacity, int64_t wall_ms) {
  ++counters_.lines_read;
  if (!parser_.Parse(text, capacity, &event_, &reason_)) {
    ++counters_.rejected;
    return Outcome::kRejected;
  }
  if (!engine_.Admit(event_.time_ms)) return Outcome::kLate;
  const uint64_t seq = counters_.seq++;
  engine_.Extract(event_, seq, &pending_);
  engine_.Apply(pending_, engine_.low_watermark_ms());
  std::vector<int64_t>& newest = counters_.newest_event_ms;
  if (pending_.entity >= newest.size()) newest.resize(pending_.entity + 1, std::numeric_limits<int64_t>::min());
  newest[pending_.entity] = std::max(newest[pending_.entity], event_.time_ms);
  if (offline_ != nullptr) {
    const std::string& entity = engine_.entity_name(pending_.entity);
    offline_->AddEvent(static_cast<int64_t>(seq), event_.time_ms, entity, wall_ms, text);
    if (offline_->writes_features()) {
      engine_.QueryIndex(pending_.entity, event_.time_ms, &values_);
      offline_->AddFeatures(static_cast<int64_t>(seq), entity, event_.time_ms, wall_ms, values_);
    }
  }
  return Outcome::kAccepted;
}

}  // namespace freshet

#include "run/event_path.h"

#include <algorithm>

namespace freshet {
namespace {

// 1: engine state and counters. 2: also the duplicates counter and the deduplication state.
constexpr uint32_t kPipelineStateVersion = 2;

// Newest time among the entities' newest accepted events: M, for a deduplicator starting without saved ids.
int64_t NewestAccepted(const PipelineCounters& counters) {
  int64_t newest = std::numeric_limits<int64_t>::min();
  for (int64_t t : counters.newest_event_ms) newest = std::max(newest, t);
  return newest;
}

}  // namespace

std::string EncodePipelineState(const FeatureEngine& engine, const PipelineCounters& counters,
                                const Deduplicator* dedup) {
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
  out.PutU64(counters.duplicates);
  // The deduplication state, with the field its ids were read from; empty without deduplication.
  std::string dedup_bytes;
  if (dedup != nullptr) {
    ByteWriter dedup_out(&dedup_bytes);
    dedup_out.PutString(engine.spec().dedup->field);
    dedup->SaveState(dedup_out);
  }
  out.PutBytes(dedup_bytes);
  return bytes;
}

Status DecodePipelineState(std::string_view bytes, FeatureEngine* engine, PipelineCounters* counters,
                           Deduplicator* dedup, std::vector<std::string>* notes) {
  auto note = [&](std::string text) {
    if (notes != nullptr) notes->push_back(std::move(text));
  };
  ByteReader in(bytes);
  uint32_t version = 0;
  std::string_view engine_bytes;
  if (!in.ReadU32(&version) || version < 1 || version > kPipelineStateVersion || !in.ReadBytes(&engine_bytes)) {
    return Status::Invalid("it was written by another version of freshet; move the data directory aside");
  }
  ByteReader engine_in(engine_bytes);
  FRESHET_RETURN_IF_ERROR(engine->LoadState(engine_in));
  uint64_t entities = 0;
  bool ok = in.ReadU64(&counters->seq) && in.ReadU64(&counters->lines_read) && in.ReadU64(&counters->rejected) &&
            in.ReadU64(&entities) && entities <= bytes.size();
  counters->newest_event_ms.resize(ok ? entities : 0);
  for (uint64_t e = 0; ok && e < entities; ++e) ok = in.ReadI64(&counters->newest_event_ms[e]);
  std::string_view dedup_bytes;
  counters->duplicates = 0;
  if (ok && version >= 2) ok = in.ReadU64(&counters->duplicates) && in.ReadBytes(&dedup_bytes);
  if (!ok) return Status::Invalid("it is incomplete");

  if (dedup == nullptr) {
    if (!dedup_bytes.empty()) note("the spec no longer has `dedup`: the event ids the checkpoint remembers are dropped");
    return Status::Ok();
  }
  const std::string& field = engine->spec().dedup->field;
  ByteReader dedup_in(dedup_bytes);
  std::string_view saved_field;
  if (dedup_bytes.empty() || !dedup_in.ReadString(&saved_field)) {
    note("the checkpoint was written without `dedup`: deduplication starts with no remembered ids, so a resend of "
         "an event accepted before it is not recognized");
  } else if (saved_field != field) {
    note("the checkpoint's remembered ids are of the field '" + std::string(saved_field) + "', not '" + field +
         "': deduplication starts with no remembered ids");
  } else {
    Status loaded = dedup->LoadState(dedup_in);
    if (!loaded.ok()) return Status::Invalid(loaded.message());
    return Status::Ok();
  }
  dedup->AdvanceMaxTime(NewestAccepted(*counters));
  return Status::Ok();
}

EventPath::EventPath(FeatureEngine& engine, PipelineCounters& counters, Deduplicator* dedup, OfflineSink* offline)
    : engine_(engine), counters_(counters), dedup_(dedup), offline_(offline), parser_(engine.spec().fields) {
  FRESHET_CHECK((dedup != nullptr) == engine.spec().dedup.has_value());
  if (dedup != nullptr) dedup_slot_ = engine.spec().dedup->field_slot;
}

EventPath::Outcome EventPath::Judge(FeatureEngine& clock, Deduplicator* dedup, PipelineCounters& counters,
                                    std::string_view entity, const Value* id, int64_t time_ms) {
  // Lateness first (a late event is late, duplicate or not), then deduplication, then admission.
  if (dedup != nullptr && !clock.IsLate(time_ms) && !dedup->Admit(entity, *id, time_ms)) {
    ++counters.duplicates;
    return Outcome::kDuplicate;
  }
  return clock.Admit(time_ms) ? Outcome::kAccepted : Outcome::kLate;
}

void EventPath::ApplyAdmitted(FeatureEngine& engine, PipelineCounters& counters, const ParsedEvent& event,
                              uint64_t seq, PendingEvent* pending) {
  engine.Extract(event, seq, pending);
  engine.Apply(*pending, engine.low_watermark_ms());
  std::vector<int64_t>& newest = counters.newest_event_ms;
  if (pending->entity >= newest.size()) newest.resize(pending->entity + 1, std::numeric_limits<int64_t>::min());
  newest[pending->entity] = std::max(newest[pending->entity], event.time_ms);
}

EventPath::Outcome EventPath::Process(std::string_view text, size_t capacity, int64_t wall_ms, const RecordPlace* place) {
  ++counters_.lines_read;
  // Parse fills the slots only once the line is a JSON object: cleared, an unfilled entity slot is not stale.
  if (skip_without_entity_) event_.slots.clear();
  return AfterParse(parser_.Parse(text, capacity, &event_, &reason_), text, wall_ms, place);
}

EventPath::Outcome EventPath::ProcessShared(const SharedLines& lines, size_t index, std::string_view text,
                                            int64_t wall_ms, const RecordPlace* place) {
  ++counters_.lines_read;
  // Most lines of a set keyed by another field are other sets' events: skipped before any field is copied.
  if (skip_without_entity_ && parser_.SharedLineLacksEntity(lines, index)) return Outcome::kNotForSet;
  if (skip_without_entity_) event_.slots.clear();  // As in Process.
  return AfterParse(parser_.ParseShared(lines, index, &event_, &reason_), text, wall_ms, place);
}

EventPath::Outcome EventPath::AfterParse(bool parsed, std::string_view text, int64_t wall_ms,
                                         const RecordPlace* place) {
  if (!parsed) {
    if (skip_without_entity_ && event_.slots.size() > kEntitySlot && event_.slots[kEntitySlot].is_missing()) {
      return Outcome::kNotForSet;
    }
    ++counters_.rejected;
    return Outcome::kRejected;
  }
  if (lookups_ != nullptr) {
    if (const int failed = lookups_->DeadLetterLookup(engine_.spec()); failed >= 0) {
      reason_ = LookupFailureReason(*lookups_, failed);
      ++counters_.rejected;
      return Outcome::kRejected;
    }
  }
  const Outcome judged = Judge(engine_, dedup_, counters_, event_.entity,
                               dedup_ != nullptr ? &event_.slots[dedup_slot_] : nullptr, event_.time_ms);
  if (judged != Outcome::kAccepted) return judged;
  const uint64_t seq = counters_.seq++;
  ApplyAdmitted(engine_, counters_, event_, seq, &pending_);
  if (offline_ != nullptr) {
    const std::string& entity = engine_.entity_name(pending_.entity);
    if (offline_->writes_features()) engine_.QueryIndex(pending_.entity, event_.time_ms, &values_);
    // With a shared numbering, taking the number and adding the rows is one step: each table file must be in
    // seq order (replays depend on it), also when several threads add rows.
    std::unique_lock<std::mutex> lock;
    if (offline_seq_ != nullptr) lock = std::unique_lock<std::mutex>(offline_seq_->mutex);
    const int64_t row_seq = offline_seq_ != nullptr && offline_seq_->from_place && place != nullptr
                                ? place->partition << 40 | place->offset
                                : static_cast<int64_t>(offline_seq_ != nullptr ? offline_seq_->next++ : seq);
    if (lookups_ != nullptr) lookups_record_ = lookups_->Record(engine_.spec());
    offline_->AddEvent(row_seq, event_.time_ms, entity, wall_ms, text, place,
                       lookups_ != nullptr ? std::string_view(lookups_record_) : std::string_view());
    if (offline_->writes_features()) offline_->AddFeatures(row_seq, entity, event_.time_ms, wall_ms, values_);
  }
  return Outcome::kAccepted;
}

}  // namespace freshet

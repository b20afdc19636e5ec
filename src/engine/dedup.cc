#include "engine/dedup.h"

#include <charconv>

namespace freshet {
namespace {

constexpr uint8_t kDedupStateVersion = 1;

int64_t Distance(int64_t a, int64_t b) { return a > b ? a - b : b - a; }

// Heap bytes of a key's text: none while it fits the string's inline buffer; else its capacity, the
// terminating zero and malloc's header.
size_t HeapTextBytes(const std::string& text) {
  static const size_t kInlineCapacity = std::string().capacity();
  return text.capacity() > kInlineCapacity ? text.capacity() + 1 + 16 : 0;
}

int64_t WithinMs(const Spec& spec) {
  FRESHET_CHECK(spec.dedup.has_value());
  return spec.dedup->within_ms;
}

int64_t WatermarkDelayMs(const Spec& spec) {
  return spec.watermark ? spec.watermark->max_out_of_orderness_ms + spec.watermark->allowed_lateness_ms : 0;
}

}  // namespace

Deduplicator::Deduplicator(int64_t within_ms, int64_t watermark_delay_ms)
    : within_ms_(within_ms), watermark_delay_ms_(watermark_delay_ms) {
  FRESHET_CHECK(within_ms > 0 && watermark_delay_ms >= 0);
}

Deduplicator::Deduplicator(const Spec& spec)
    : Deduplicator(WithinMs(spec), WatermarkDelayMs(spec)) {}

bool Deduplicator::IdText(const Value& id, std::string* out) {
  if (id.type == ValueType::kString && !id.s.empty()) {
    out->assign(id.s);
    return true;
  }
  if (id.type == ValueType::kInt) {
    char digits[24];
    auto [end, ec] = std::to_chars(digits, digits + sizeof(digits), id.i);
    (void)ec;
    out->assign(digits, end);
    return true;
  }
  return false;
}

void Deduplicator::EncodeKey(std::string_view entity, std::string_view id) const {
  key_.clear();
  ByteWriter out(&key_);
  out.PutVarint(entity.size());
  out.PutRaw(entity);
  out.PutRaw(id);
}

int64_t Deduplicator::Bound() const {
  if (max_time_ms_ == std::numeric_limits<int64_t>::min()) return max_time_ms_;
  return max_time_ms_ - within_ms_ - watermark_delay_ms_;  // Event times lie in years 0001-9999: no overflow.
}

bool Deduplicator::IsDuplicate(std::string_view entity, const Value& id, int64_t time_ms) const {
  std::string id_text;
  if (!IdText(id, &id_text)) return false;
  EncodeKey(entity, id_text);
  auto it = index_.find(std::string_view(key_));
  if (it == index_.end()) return false;
  const int64_t bound = Bound();
  for (const Entry* e = it->second; e != nullptr; e = e->newer) {
    if (e->time_ms >= bound && Distance(time_ms, e->time_ms) <= within_ms_) return true;
  }
  return false;
}

bool Deduplicator::Admit(std::string_view entity, const Value& id, int64_t time_ms) {
  if (IdText(id, &id_)) {
    EncodeKey(entity, id_);
    // One probe: the entry is appended first so that the index can view its key; a duplicate takes it back.
    Entry& entry = entries_.emplace_back(Entry{key_, time_ms, nullptr});
    auto [it, inserted] = index_.try_emplace(std::string_view(entry.key), &entry);
    if (!inserted) {
      const int64_t bound = Bound();
      Entry* newest = nullptr;
      for (Entry* e = it->second; e != nullptr; e = e->newer) {
        if (e->time_ms >= bound && Distance(time_ms, e->time_ms) <= within_ms_) {
          entries_.pop_back();
          return false;
        }
        newest = e;
      }
      newest->newer = &entry;
    }
    heap_text_bytes_ += HeapTextBytes(entry.key);
  }
  AdvanceMaxTime(time_ms);
  Expire();
  return true;
}

void Deduplicator::AdvanceMaxTime(int64_t time_ms) {
  if (time_ms > max_time_ms_) max_time_ms_ = time_ms;
}

void Deduplicator::Expire() {
  const int64_t bound = Bound();
  while (!entries_.empty() && entries_.front().time_ms < bound) {
    Entry& oldest = entries_.front();
    // The front is the earliest accepted entry, so the oldest of its key: the one the index points to.
    auto it = index_.find(std::string_view(oldest.key));
    FRESHET_CHECK(it != index_.end() && it->second == &oldest);
    Entry* next = oldest.newer;
    index_.erase(it);
    if (next != nullptr) index_.emplace(std::string_view(next->key), next);
    heap_text_bytes_ -= HeapTextBytes(oldest.key);
    entries_.pop_front();
  }
}

size_t Deduplicator::MemoryBytes() const {
  // Each slot of the index: its key and value, and a control byte.
  const size_t index_bytes = index_.capacity() * (sizeof(std::pair<std::string_view, Entry*>) + 1);
  return entries_.size() * sizeof(Entry) + heap_text_bytes_ + index_bytes;
}

void Deduplicator::Clear() {
  index_.clear();
  entries_.clear();
  heap_text_bytes_ = 0;
  max_time_ms_ = std::numeric_limits<int64_t>::min();
}

void Deduplicator::SaveState(ByteWriter& out) const {
  out.PutU8(kDedupStateVersion);
  out.PutI64(max_time_ms_);
  out.PutVarint(entries_.size());
  for (const Entry& e : entries_) {
    out.PutBytes(e.key);
    out.PutI64(e.time_ms);
  }
}

Status Deduplicator::LoadState(ByteReader& in) {
  Clear();
  uint8_t version = 0;
  int64_t max_time_ms = 0;
  uint64_t count = 0;
  if (!in.ReadU8(&version) || version != kDedupStateVersion) {
    return Status::Invalid("the deduplication state has an unknown format version " +
                           std::to_string(version));
  }
  bool ok = in.ReadI64(&max_time_ms) && in.ReadCount(&count, /*min_element_bytes=*/9);
  for (uint64_t k = 0; ok && k < count; ++k) {
    std::string_view key;
    int64_t time_ms = 0;
    ok = in.ReadBytes(&key) && !key.empty() && in.ReadI64(&time_ms);
    if (!ok) break;
    Entry& entry = entries_.emplace_back(Entry{std::string(key), time_ms, nullptr});
    heap_text_bytes_ += HeapTextBytes(entry.key);
    auto [it, inserted] = index_.try_emplace(std::string_view(entry.key), &entry);
    if (!inserted) {
      Entry* newest = it->second;
      while (newest->newer != nullptr) newest = newest->newer;
      newest->newer = &entry;
    }
  }
  if (!ok) {
    const size_t offset = in.failed() ? in.failed_at() : in.offset();
    Clear();
    return Status::Invalid("the deduplication state is malformed at byte " + std::to_string(offset));
  }
  max_time_ms_ = max_time_ms;
  Expire();
  return Status::Ok();
}

std::optional<Deduplicator> MakeDeduplicator(const Spec& spec) {
  if (!spec.dedup) return std::nullopt;
  return std::optional<Deduplicator>(std::in_place, spec);
}

}  // namespace freshet

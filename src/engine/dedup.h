// Deduplicator: event-id deduplication, the rule between the lateness rule and admission (README,
// "Parsing and lateness"), shared by `freshet run`, `freshet backfill` and `freshet historical`.
//
// The rule, in input order, for an event of entity E with id v at time t that the lateness rule let through:
// it is a duplicate when an earlier accepted event of E with id v and time t' is remembered and
// |t - t'| <= within. An accepted event is remembered while t' >= M - within - delay, where M is the largest
// time accepted before and delay the watermark's max_out_of_orderness + allowed_lateness (0 without a
// watermark). With a watermark that costs nothing: an event that is not late has t >= M - delay, so it
// cannot match anything older. Without one, a resend more than `within` older than the newest accepted event
// is no longer recognized, and is accepted.
//
// Ids: a non-empty string is its text, an integer its decimal text (42 and "42" are one id), as for entities.
// Any other value (missing, null, "", a fraction or an integer beyond int64, a boolean, an object, an array)
// is no id: such an event is never a duplicate and is not remembered.
//
// Memory: one entry per remembered (entity, id, time): 48 bytes in a deque in acceptance order, plus its
// share of the index (25-byte slots at a load of 7/16 to 7/8: 29-57 bytes). Measured: 85-105 bytes per id
// when the entity and id text together fit in 14 bytes, 150-170 bytes with 36-character ids, whose text is
// on the heap. Entries are forgotten oldest-accepted first as they pass the bound above, a few per accepted
// event, never by a scan; one may outlive the bound by as long as an older-accepted one takes to pass it (at
// most the watermark's delay).
//
//   std::optional<Deduplicator> dedup = MakeDeduplicator(spec);
//   if (dedup && !engine.IsLate(t) && !dedup->Admit(event.entity, event.slots[spec.dedup->field_slot], t)) {
//     ...  // A duplicate: dead-letter it; the engine never sees it.
//   }
//
// Not thread-safe; not copyable or movable (its index points into its own entries).
#pragma once

#include <cstdint>
#include <deque>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include <absl/container/flat_hash_map.h>

#include "common/bytes.h"
#include "common/status.h"
#include "common/value.h"
#include "spec/spec.h"

namespace freshet {

class Deduplicator {
 public:
  // `within_ms` > 0: the largest event-time distance between two events taken as one. `watermark_delay_ms`:
  // the spec's max_out_of_orderness + allowed_lateness, 0 without a watermark.
  Deduplicator(int64_t within_ms, int64_t watermark_delay_ms);
  // The spec's: its dedup.within and its watermark. The spec must have a `dedup` section.
  explicit Deduplicator(const Spec& spec);
  Deduplicator(const Deduplicator&) = delete;
  Deduplicator& operator=(const Deduplicator&) = delete;

  // The id text of a field value ("42" for the integer 42), into *out; false when the value is no id.
  static bool IdText(const Value& id, std::string* out);

  // The rule for an event that the lateness rule admits (FeatureEngine::IsLate is false), in input order.
  // False: a duplicate, and nothing changes. True: the event is taken as accepted: its id, if it has one, is
  // remembered, M advances, and entries that no later event can match are forgotten. Call it for every
  // admitted event, with or without an id, so that M is the engine's.
  bool Admit(std::string_view entity, const Value& id, int64_t time_ms);

  // Whether an event would be a duplicate; changes nothing.
  bool IsDuplicate(std::string_view entity, const Value& id, int64_t time_ms) const;

  // Raises M to at least `time_ms`, e.g. to the newest accepted time of a checkpoint written before
  // deduplication was configured (whose state holds no ids).
  void AdvanceMaxTime(int64_t time_ms);

  // Remembered (entity, id, time) entries.
  size_t size() const { return entries_.size(); }
  // The largest time admitted (M); the smallest int64 before any.
  int64_t max_time_ms() const { return max_time_ms_; }
  // Approximate heap bytes: entries, their text, and the index. Constant time.
  size_t MemoryBytes() const;

  // Appends the state: a version byte, M, then every entry in acceptance order (entity, id, time).
  void SaveState(ByteWriter& out) const;
  // Replaces the state by what SaveState wrote. `within` and the watermark delay are this object's, not the
  // saved one's: entries beyond the bound are forgotten at once. On failure (another version, malformed
  // input) the state is empty and the message names the byte offset.
  Status LoadState(ByteReader& in);

 private:
  struct Entry {
    std::string key;        // EncodeKey(entity, id): the index keys view this text.
    int64_t time_ms;
    Entry* newer;           // The next-accepted entry with the same key, or null.
  };

  // Writes the index key of (entity, id) into key_: the entity's length, the entity, then the id.
  void EncodeKey(std::string_view entity, std::string_view id) const;
  // Appends an accepted entry with key key_.
  void Remember(int64_t time_ms);
  // Forgets entries, oldest-accepted first, while the oldest is older than the bound.
  void Expire();
  // The earliest time a remembered entry may have.
  int64_t Bound() const;
  void Clear();

  int64_t within_ms_;
  int64_t watermark_delay_ms_;
  int64_t max_time_ms_ = std::numeric_limits<int64_t>::min();
  // Entries in acceptance order. A deque: appending and popping the front never move the others, so the
  // index may point into them.
  std::deque<Entry> entries_;
  // Per key, the oldest remembered entry with that key (its `newer` chain holds the rest); the key views
  // that entry's text.
  absl::flat_hash_map<std::string_view, Entry*> index_;
  size_t heap_text_bytes_ = 0;  // Of the entries' keys, for MemoryBytes.
  mutable std::string key_;  // Scratch: the key being looked up.
  std::string id_;           // Scratch: the id text of the event being admitted.
};

// The spec's deduplicator, or nullopt when the spec has no `dedup` section.
std::optional<Deduplicator> MakeDeduplicator(const Spec& spec);

}  // namespace freshet

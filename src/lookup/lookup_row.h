// LookupRow and EventLookups: what the lookups (`lookups:` in the spec) answered for one event, as the event
// path reads it and as the events table records it.
//
// An answer is a JSON object; the fields the spec reads from it (FieldRegistry::looked_up(): credit.score) are
// extracted once, when it arrives, so that filling an event's slots is a copy of Values. The events table's
// `lookups` cell is one JSON object with a member per lookup of the spec: its answer, or null when it has none
// (no answer, a timeout or an error under on_timeout: missing). Replays (backfill, historical) decode that cell
// and so see the very values the stream saw: the same text, parsed by the same code.
//
// Thread-safety: a LookupRow is immutable once made and shared (the cache, the batch, the parser read it).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/value.h"
#include "spec/spec.h"

namespace freshet {

struct LookupRow {
  std::string json;          // The answer, a minified JSON object.
  std::vector<Value> cells;  // Per FieldRegistry::looked_up() entry: its field (Missing for other lookups').
  std::string text;          // The bytes of the string cells.
};
using LookupRowPtr = std::shared_ptr<const LookupRow>;

// The row of lookup `lookup` (index in Spec::lookups) from `json`, which must be a JSON object; otherwise an
// error saying what it is.
Result<LookupRowPtr> MakeLookupRow(const FieldRegistry& fields, int lookup, std::string_view json);

// The lookups of one event, one entry per lookup of the spec.
struct EventLookups {
  enum class Failure : uint8_t { kNone, kTimeout, kError };
  std::vector<LookupRowPtr> rows;   // Null: no answer; the lookup's fields are missing.
  std::vector<Failure> failures;    // Why there is no answer, when it failed.

  void Reset(size_t lookups) {
    rows.assign(lookups, nullptr);
    failures.assign(lookups, Failure::kNone);
  }
  // Sets every looked-up slot of `slots` from the rows.
  void Fill(const FieldRegistry& fields, std::vector<Value>& slots) const;
  // The first lookup whose failure sends the event to the dead letters (on_timeout: dead_letter), or -1.
  int DeadLetterLookup(const Spec& spec) const;
  // The events table's `lookups` cell: {"credit": {...}, "fx": null}.
  std::string Record(const Spec& spec) const;
};

// Reads a `lookups` cell back into *out (Reset to the spec's lookups first). A lookup the cell does not name
// has no answer; one the spec does not have is ignored.
Status DecodeRecordedLookups(const Spec& spec, std::string_view recorded, EventLookups* out);

// The dead-letter reason of an event that lookup `lookup` failed: "lookup_timeout" or "lookup_error".
std::string LookupFailureReason(const EventLookups& lookups, int lookup);

}  // namespace freshet

// EventParser: one JSON line -> the fields a spec needs, or the reason the line is rejected.
//
// The whole line is validated as JSON (simdjson DOM: UTF-8, structure, numbers), so a line is either a
// well-formed JSON object or rejected; a malformed value in a field the spec never reads still rejects it.
// Duplicate keys: the last one wins. Numbers: integers that fit int64 are kInt, others kDouble
// (unsigned integers above int64 max included); integers beyond uint64, or numbers beyond the double
// range, are rejected as invalid JSON numbers. A field whose schema entry has `from_string` reads a string
// holding a number ("12.5") as that number (NumberInString); any other string stays a string.
//
// Not thread-safe: one parser per thread. Strings in a ParsedEvent point into the parser and are valid
// until the next call to Parse.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/value.h"
#include "spec/field_registry.h"
#include "spec/value_expr.h"

namespace freshet {

class TableSet;
struct EventLookups;
class SharedLines;

// Bytes that must be readable past the end of a line given to EventParser::Parse (simdjson reads ahead).
inline constexpr size_t kParsePaddingBytes = 64;

// Lines longer than this are rejected without being parsed.
inline constexpr size_t kMaxLineBytes = 1 << 20;

// The dead-letter reason of a line longer than kMaxLineBytes: one text wherever such a line is rejected (the
// parser, the sharded and historical readers, HTTP ingest), so that dead letters can be grepped for it.
std::string LineTooLongReason();

struct ParsedEvent {
  int64_t time_ms = 0;
  // Integer entities are rendered as their decimal text; a composite key is encoded (common/entity_key.h). May
  // point into the parser: valid until its next Parse.
  std::string_view entity;
  std::vector<Value> slots;  // Indexed like the FieldRegistry the parser was built with.
  OwnedStrings owned;        // Strings that derived fields made (the slots' views point into them).
};

class EventParser {
 public:
  // `fields` slot 0 names the entity field and slot 1 the timestamp field.
  explicit EventParser(const FieldRegistry& fields);
  ~EventParser();
  EventParser(const EventParser&) = delete;
  EventParser& operator=(const EventParser&) = delete;

  // Parses `line`, of which `capacity` >= line.size() + kParsePaddingBytes bytes are readable.
  // On success fills *event and returns true. On rejection returns false and sets *reason to a short
  // explanation naming the field at fault ("field 'ts': expected epoch milliseconds ... ").
  bool Parse(std::string_view line, size_t capacity, ParsedEvent* event, std::string* reason);

  // The reference tables that fill the joined fields (FieldRegistry::joined) of each parsed event, before the
  // derived fields are computed; null (the default): joined fields stay missing. Not owned.
  // `prefetched_by_caller`: the caller prefetches each line's table slots some lines ahead (PrefetchAhead in
  // table/table_set.h), so Parse does not prefetch them again at its start (too late to help, and not free).
  void SetTables(const TableSet* tables, bool prefetched_by_caller = false);
  // The answers of the spec's lookups for the next events parsed (FieldRegistry::looked_up() slots), set before
  // each Parse; null: looked-up fields stay missing. Not owned; must outlive the Parse.
  void SetLookups(const EventLookups* lookups);

  // Convenience for tests and small inputs: copies `line` into a padded buffer first.
  bool ParseCopy(std::string_view line, ParsedEvent* event, std::string* reason);

  // Like Parse, for line `index` of `lines`, whose JSON was read once for every parser (SharedLines): takes this
  // parser's fields from there, so the event and the reason of a rejection are the ones Parse gives for the line.
  // `lines` must have been built with this parser's FieldRegistry among its registries.
  bool ParseShared(const SharedLines& lines, size_t index, ParsedEvent* event, std::string* reason);
  // Whether line `index` of `lines` is a JSON object without this parser's entity field (a single-field key):
  // answered from the shared reading, without filling an event (a feature set skips another set's events so).
  bool SharedLineLacksEntity(const SharedLines& lines, size_t index);

 private:
  // After the fields are read: the entity and timestamp checked, then joined, looked-up and derived fields.
  bool Complete(ParsedEvent* event, std::string* reason);
  std::string NotAnObjectReason() const;
  // This parser's slots as slots of `lines` (the first ParseShared of a SharedLines maps them).
  void MapSharedSlots(const SharedLines& lines);
  // A composite key: its parts (strings or integers as text) encoded into event->entity, or false with the
  // reason naming the part that is missing or not a key.
  bool EncodeCompositeKey(ParsedEvent* event, std::string* reason);
  std::string KeyFieldList() const;  // "user_id, merchant_id"
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Lines whose JSON is read once for several parsers (several feature sets over one source, run/feature_sets.h):
// each line is parsed once and the fields that any of the parsers' registries reads are kept, so that each
// EventParser takes its own from there (ParseShared) instead of parsing the line again. A field's `from_string`
// is each parser's own (applied by ParseShared). Strings are copied out of the JSON parser, so every line added
// since the last Clear stays readable. Not thread-safe while adding; reading (ParseShared) may be concurrent.
class SharedLines {
 public:
  explicit SharedLines(std::span<const FieldRegistry* const> registries);
  ~SharedLines();
  SharedLines(const SharedLines&) = delete;
  SharedLines& operator=(const SharedLines&) = delete;

  void Clear();
  // Reads `line`, of which `capacity` >= line.size() + kParsePaddingBytes bytes are readable, as the next line.
  void Add(std::string_view line, size_t capacity);
  size_t size() const;

 private:
  friend class EventParser;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace freshet

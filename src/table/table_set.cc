#include "table/table_set.h"

#include <absl/container/flat_hash_map.h>
#include <absl/container/flat_hash_set.h>
#include <absl/hash/hash.h>
#include <emmintrin.h>
#include <simdjson.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <charconv>
#include <utility>

#include "common/huge_pages.h"
#include "common/text_hash.h"
#include "common/time.h"

namespace freshet {
namespace {

// State format of Save/Load.
constexpr uint32_t kTableSetVersion = 1;

// A column value of a version; strings live in the version's `text`. 16 bytes, so that a version's first cells fit
// beside the key in the first two cache lines of its slot (see KeyMap::Slot).
struct StoredCell {
  int64_t i = 0;  // kInt, kBool (0 or 1); kDouble: the double's bits; kString: offset << 32 | length in the text.
  ValueType type = ValueType::kMissing;
  double d() const { return std::bit_cast<double>(i); }
  uint32_t offset() const { return static_cast<uint32_t>(static_cast<uint64_t>(i) >> 32); }
  uint32_t length() const { return static_cast<uint32_t>(static_cast<uint64_t>(i)); }
  void SetText(uint32_t offset, uint32_t length) { i = static_cast<int64_t>(uint64_t{offset} << 32 | length); }
};

// The cells of a version: the first few inline, so that a lookup reads them from the map's slot (one cache miss
// per event and join, not three).
class CellList {
 public:
  void push_back(const StoredCell& cell) {
    if (size_ < inline_.size()) {
      inline_[size_] = cell;
    } else {
      if (more_ == nullptr) more_ = std::make_unique<std::vector<StoredCell>>();
      more_->push_back(cell);
    }
    ++size_;
  }
  size_t size() const { return size_; }
  const StoredCell& operator[](size_t k) const { return k < inline_.size() ? inline_[k] : (*more_)[k - inline_.size()]; }
  size_t heap_bytes() const { return more_ == nullptr ? 0 : sizeof(*more_) + more_->capacity() * sizeof(StoredCell); }

 private:
  std::array<StoredCell, 2> inline_;
  uint32_t size_ = 0;
  std::unique_ptr<std::vector<StoredCell>> more_;  // Pointer-sized: the rest of the slot's hot part stays in place.
};

// valid_from of VersionList's newest when the key has no version: later than any valid_from (years 0001-9999).
constexpr int64_t kNoVersionMs = std::numeric_limits<int64_t>::max();

// Fields in the order a lookup reads them (KeyMap::Slot).
struct Version {
  int64_t valid_from_ms = kAlwaysValidMs;
  CellList cells;    // One per joined column of the table (Table::columns order).
  std::string text;  // The bytes of the string cells.
};

// A key's versions: the one with the greatest valid_from inline (what almost every event reads), the older ones,
// ascending by valid_from, beside it.
class VersionList {
 public:
  // Adds `v`; one with the same valid_from is replaced (the later arrival wins). Returns whether it was new.
  bool Insert(Version v) {
    if (!has_newest()) {
      newest_ = std::move(v);
      return true;
    }
    if (v.valid_from_ms == newest_.valid_from_ms) {
      newest_ = std::move(v);
      return false;
    }
    if (v.valid_from_ms > newest_.valid_from_ms) {
      older_.push_back(std::move(newest_));
      newest_ = std::move(v);
      return true;
    }
    auto at = std::lower_bound(older_.begin(), older_.end(), v.valid_from_ms,
                               [](const Version& o, int64_t t) { return o.valid_from_ms < t; });
    if (at != older_.end() && at->valid_from_ms == v.valid_from_ms) {
      *at = std::move(v);
      return false;
    }
    older_.insert(at, std::move(v));
    return true;
  }
  // The version with the greatest valid_from <= t, or null.
  const Version* Find(int64_t t) const {
    if (newest_.valid_from_ms <= t) return &newest_;  // Never with no version: kNoVersionMs > every t.
    for (auto it = older_.rbegin(); it != older_.rend(); ++it) {
      if (it->valid_from_ms <= t) return &*it;
    }
    return nullptr;
  }
  size_t size() const { return older_.size() + (has_newest() ? 1 : 0); }
  // Drops every version (the key was deleted); returns how many.
  size_t Clear() {
    const size_t dropped = size();
    newest_ = NoVersion();
    older_.clear();
    return dropped;
  }
  bool has_older() const { return !older_.empty(); }
  // Drops the versions no event at `horizon` or later can see: those older than the greatest valid_from <=
  // horizon. Returns how many.
  size_t Prune(int64_t horizon) {
    if (has_newest() && newest_.valid_from_ms <= horizon) {
      const size_t dropped = older_.size();
      older_.clear();
      return dropped;
    }
    // The first version after the horizon; the one before it stays (it is what an event at the horizon sees).
    auto after = std::upper_bound(older_.begin(), older_.end(), horizon,
                                  [](int64_t t, const Version& o) { return t < o.valid_from_ms; });
    if (after - older_.begin() <= 1) return 0;
    const size_t dropped = static_cast<size_t>(after - older_.begin()) - 1;
    older_.erase(older_.begin(), after - 1);
    return dropped;
  }
  // Every version, ascending by valid_from.
  template <typename Fn>
  void ForEach(Fn fn) const {
    for (const Version& v : older_) fn(v);
    if (has_newest()) fn(newest_);
  }
  size_t heap_bytes() const { return older_.capacity() * sizeof(Version); }

 private:
  static Version NoVersion() {
    Version none;
    none.valid_from_ms = kNoVersionMs;
    return none;
  }
  bool has_newest() const { return newest_.valid_from_ms != kNoVersionMs; }

  Version newest_ = NoVersion();  // First: a lookup reads it beside the key (KeyMap::Slot).
  std::vector<Version> older_;
};

// Keys to their versions: open addressing with linear probing over a power-of-two array kept at most half full,
// so that a key almost always sits in its home slot (hash & mask). Prefetch can then fetch that slot from memory
// while the event is still being parsed, and the lookup in Fill finds it in the cache. Each slot holds the key's
// hash, the key and its versions, the fields a lookup reads first. Keys are never removed: a deleted key (a Kafka
// tombstone) keeps its slot with no versions, and pruning empties no key's list, since it keeps each key's
// version at the horizon.
class KeyMap {
 public:
  // What a lookup reads (the hash, the key, the newest version's valid_from, first two cells and text) is in the
  // slot's first 128 bytes, two cache lines, which Prefetch fetches (static_assert below); the rest (more cells,
  // older versions) is read rarely. Aligned so that those bytes are two lines, not three.
  struct alignas(64) Slot {
    uint64_t hash = 0;  // 0: empty (Hash never returns 0).
    std::string key;
    VersionList list;
  };
  static constexpr size_t kHotBytes = 128;

  static uint64_t Hash(std::string_view key) { return HashText(key) | 1; }

  const VersionList* Find(std::string_view key, uint64_t hash) const {
    if (slots_.empty()) return nullptr;
    for (size_t i = hash & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.hash == 0) return nullptr;
      if (slot.hash == hash && SameText(slot.key, key)) return &slot.list;
    }
  }
  VersionList* Find(std::string_view key, uint64_t hash) {
    return const_cast<VersionList*>(std::as_const(*this).Find(key, hash));
  }
  VersionList& FindOrInsert(std::string_view key) {
    if ((size_ + 1) * 2 > slots_.size()) Rehash(std::max<size_t>(16, slots_.size() * 2));
    const uint64_t hash = Hash(key);
    for (size_t i = hash & mask_;; i = (i + 1) & mask_) {
      Slot& slot = slots_[i];
      if (slot.hash == hash && SameText(slot.key, key)) return slot.list;
      if (slot.hash == 0) {
        slot.hash = hash;
        slot.key = std::string(key);
        ++size_;
        return slot.list;
      }
    }
  }
  // Starts fetching the home slot of `hash` and the slot after it into the cache: at most half full, a key is in
  // one of the two about 9 times in 10 (linear probing: about a quarter of the keys are past their home slot,
  // most of them in the next; perf showed Fill waiting there 4 times as often as at the home slot when only the
  // home slot was fetched).
  void Prefetch(uint64_t hash) const {
    if (slots_.empty()) return;
    for (size_t i : {hash & mask_, (hash + 1) & mask_}) {
      const char* at = reinterpret_cast<const char*>(&slots_[i]);
      for (size_t line = 0; line < kHotBytes; line += 64) __builtin_prefetch(at + line);  // The hot part (Slot).
    }
    // GCC counts __builtin_prefetch as no side effect, so it found this function pure and deleted its calls (GCC
    // 12, -O2: no prefetch was issued at all until this line); the volatile asm is a side effect it keeps.
    asm volatile("");
  }
  // Makes room for `more` keys beyond those held, at once: a large table loaded row by row would otherwise be
  // rehashed into a new array at every doubling (each array's pages faulted in anew).
  // Returns whether the slots moved.
  bool Reserve(size_t more) {
    size_t capacity = std::max<size_t>(16, slots_.size());
    while ((size_ + more) * 2 > capacity) capacity *= 2;
    if (capacity <= slots_.size()) return false;
    Rehash(capacity);
    return true;
  }
  size_t size() const { return size_; }
  size_t capacity() const { return slots_.size(); }
  void clear() {
    slots_.clear();
    mask_ = 0;
    size_ = 0;
  }
  // Visits every (key, list) in slot order.
  template <typename Fn>
  void ForEach(Fn fn) const {
    for (const Slot& slot : slots_) {
      if (slot.hash != 0) fn(slot.key, slot.list);
    }
  }

 private:
  void Rehash(size_t capacity) {
    Slots old = std::move(slots_);
    slots_ = Slots(capacity);
    mask_ = slots_.size() - 1;
    for (Slot& slot : old) {
      if (slot.hash == 0) continue;
      size_t i = slot.hash & mask_;
      while (slots_[i].hash != 0) i = (i + 1) & mask_;
      slots_[i] = std::move(slot);
    }
  }

  // In huge pages when large (common/huge_pages.h): a lookup then rarely waits for a page walk.
  using Slots = std::vector<Slot, HugePageAllocator<Slot>>;
  Slots slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// The hot part of a slot: its hash, key and newest version (VersionList's first member), with no padding between
// (every member is 8-aligned).
static_assert(sizeof(uint64_t) + sizeof(std::string) + sizeof(Version) <= KeyMap::kHotBytes);

// One joined column: the slot it fills and its path in the row.
struct Column {
  int slot = -1;
  std::vector<std::string> path;  // "address.city" -> {"address", "city"}.
};

struct Table {
  int join_slot = -1;  // The event field holding the key; -1 when no join reads the table.
  std::vector<Column> columns;
  std::string on;  // The join's event field when it is a top-level name (Prefetch finds it in the raw line).
  // Where Prefetch last found `on` in a line (RawKey's hint); atomic because the sharded parse prefetches from
  // several threads.
  mutable std::atomic<size_t> on_at{0};
  KeyMap versions;  // A deleted key stays with no versions.
  size_t version_count = 0;
  size_t live_keys = 0;  // Keys with a version.
  // The keys with more than one version: only they can have versions to prune, so pruning does not visit every
  // key of a large table.
  absl::flat_hash_set<std::string> several;
};

// Drops every version of `key` (a deletion): events from here on see none.
void Delete(Table& table, const std::string& key) {
  VersionList* list = table.versions.Find(key, KeyMap::Hash(key));
  if (list == nullptr || list->size() == 0) return;
  table.version_count -= list->Clear();
  --table.live_keys;
  table.several.erase(key);
}

std::vector<std::string> SplitPath(std::string_view dotted) {
  std::vector<std::string> parts;
  while (true) {
    const size_t dot = dotted.find('.');
    parts.emplace_back(dotted.substr(0, dot));
    if (dot == std::string_view::npos) return parts;
    dotted.remove_prefix(dot + 1);
  }
}

// The element at `path` in `object`, or an error when some part is absent.
simdjson::simdjson_result<simdjson::dom::element> At(simdjson::dom::object object, const std::vector<std::string>& path) {
  simdjson::dom::element element;
  for (size_t k = 0; k < path.size(); ++k) {
    if (object.at_key(path[k]).get(element) != simdjson::SUCCESS) return simdjson::NO_SUCH_FIELD;
    if (k + 1 < path.size() && element.get_object().get(object) != simdjson::SUCCESS) return simdjson::NO_SUCH_FIELD;
  }
  return element;
}

StoredCell CellOf(simdjson::dom::element element, std::string* text) {
  using simdjson::dom::element_type;
  StoredCell cell;
  switch (element.type()) {
    case element_type::INT64: cell.type = ValueType::kInt; cell.i = int64_t(element); break;
    case element_type::UINT64:
      cell.type = ValueType::kDouble;
      cell.i = std::bit_cast<int64_t>(static_cast<double>(uint64_t(element)));
      break;
    case element_type::DOUBLE: cell.type = ValueType::kDouble; cell.i = std::bit_cast<int64_t>(double(element)); break;
    case element_type::BOOL: cell.type = ValueType::kBool; cell.i = bool(element) ? 1 : 0; break;
    case element_type::NULL_VALUE: cell.type = ValueType::kNull; break;
    case element_type::STRING: {
      const std::string_view s(element);
      cell.type = ValueType::kString;
      cell.SetText(static_cast<uint32_t>(text->size()), static_cast<uint32_t>(s.size()));
      text->append(s);
      break;
    }
    case element_type::ARRAY:
    case element_type::OBJECT: cell.type = ValueType::kComposite; break;
  }
  return cell;
}

// Writes the value of `cell` into `out` field by field. Returning a Value built on the stack made the core wait
// at the copy into the slot: a one-byte store (the type) read back at once as 16 bytes cannot be forwarded (perf
// annotate: a third of Fill's samples there).
void SetValue(const StoredCell& cell, const std::string& text, Value& out) {
  out.i = cell.i;
  out.s = std::string_view();
  switch (cell.type) {
    case ValueType::kInt:
    case ValueType::kDouble:  // i holds the double's bits.
    case ValueType::kNull:
    case ValueType::kComposite: out.type = cell.type; break;
    case ValueType::kBool: out.type = ValueType::kBool; out.i = 0; out.b = cell.i != 0; break;
    case ValueType::kString:
      out.type = ValueType::kString;
      out.i = 0;
      out.s = std::string_view(text).substr(cell.offset(), cell.length());
      break;
    default: out.type = ValueType::kMissing; out.i = 0; break;
  }
}

// The text of a key: a non-empty string, or an integer's decimal digits (as entities read); nullopt otherwise.
std::optional<std::string_view> KeyText(const Value& value, char (&digits)[24]) {
  if (value.type == ValueType::kString && !value.s.empty()) return value.s;
  if (value.type == ValueType::kInt) {
    auto [end, ec] = std::to_chars(digits, digits + sizeof(digits), value.i);
    (void)ec;
    return std::string_view(digits, end - digits);
  }
  return std::nullopt;
}

simdjson::dom::parser& ThreadParser() {
  thread_local simdjson::dom::parser parser;
  return parser;
}

}  // namespace

namespace table_internal {

std::optional<std::string_view> RawKey(std::string_view line, std::string_view quoted_name,
                                       std::atomic<size_t>& hint) {
  size_t at = hint.load(std::memory_order_relaxed);
  if (!SameText(line.substr(std::min(at, line.size()), quoted_name.size()), quoted_name)) {
    at = line.find(quoted_name);
    if (at == std::string_view::npos) return std::nullopt;
    hint.store(at, std::memory_order_relaxed);
  }
  size_t k = at + quoted_name.size();
  while (k < line.size() && (line[k] == ' ' || line[k] == ':')) ++k;
  if (k >= line.size()) return std::nullopt;
  if (line[k] == '"') {
    size_t end = k + 1;
    if (end + 16 <= line.size()) {
      // The next 16 bytes at once (SSE2, in every x86-64): the first quote or backslash among them. A byte loop was
      // most of RawKey's ~140 instructions per event (callgrind).
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(line.data() + end));
      const unsigned quote = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8('"'))));
      const unsigned escape = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8('\\'))));
      if (quote != 0 && (escape & ((quote & -quote) - 1)) == 0) {  // A quote, and no backslash before it.
        return line.substr(end, static_cast<size_t>(std::countr_zero(quote)));
      }
      if (escape != 0) return std::nullopt;
      end += 16;  // Neither among them: the loop below goes on after them.
    }
    // Near the line's end or a key of 16 bytes or more: one pass for the closing quote and escapes.
    for (; end < line.size() && line[end] != '"'; ++end) {
      if (line[end] == '\\') return std::nullopt;
    }
    if (end >= line.size()) return std::nullopt;
    return line.substr(k + 1, end - k - 1);
  }
  size_t end = k + (line[k] == '-' ? 1 : 0);
  while (end < line.size() && line[end] >= '0' && line[end] <= '9') ++end;
  return line.substr(k, end - k);
}

}  // namespace table_internal

Result<TableRow> ParseTableRow(const TableSpec& table, std::string_view json,
                               std::optional<std::string_view> key_given) {
  simdjson::dom::element root;
  if (auto error = ThreadParser().parse(json.data(), json.size()).get(root)) {
    return Status::Invalid(std::string("invalid JSON: ") + simdjson::error_message(error));
  }
  simdjson::dom::object object;
  if (root.get_object().get(object) != simdjson::SUCCESS) {
    return Status::Invalid("not a JSON object; each row must be one JSON object like {\"" + table.key + "\": ...}");
  }
  TableRow row;
  row.json = std::string(json);
  if (key_given && key_given->empty()) {
    return Status::Invalid("the message key is empty; the key of table '" + table.name + "' is the message key");
  }
  simdjson::dom::element key;
  if (At(object, SplitPath(table.key)).get(key) != simdjson::SUCCESS) {
    if (!key_given) {
      return Status::Invalid("field '" + table.key + "' (the key of table '" + table.name + "') is missing");
    }
    row.key = std::string(*key_given);
  } else {
    char digits[24];
    Value key_value = key.type() == simdjson::dom::element_type::INT64 ? Value::Int(int64_t(key))
                      : key.is_string()                               ? Value::String(std::string_view(key))
                                                                      : Value::Null();
    std::optional<std::string_view> key_text = KeyText(key_value, digits);
    if (!key_text) {
      return Status::Invalid("field '" + table.key + "' (the key of table '" + table.name +
                             "') must be a non-empty string or an integer");
    }
    if (key_given && *key_text != *key_given) {
      return Status::Invalid("field '" + table.key + "' is '" + std::string(*key_text) +
                             "' but the message key is '" + std::string(*key_given) +
                             "'; the row's key field, when present, must be the message key");
    }
    row.key = std::string(*key_text);
  }
  // A file row or a PUT row has no null value to delete its key with, as a Kafka tombstone does: "_deleted": true
  // says it. No valid_from is needed: a deletion applies where it arrives in the input order.
  if (simdjson::dom::element deleted; object["_deleted"].get(deleted) == simdjson::SUCCESS) {
    const std::string_view text = deleted.is_string() ? std::string_view(deleted) : std::string_view();
    const bool yes = deleted.is_bool() ? bool(deleted) : text == "true";
    if (!deleted.is_bool() && !yes && text != "false") {
      return Status::Invalid("field '_deleted' must be true (the row deletes its key) or false (a CSV cell: true or "
                             "false)");
    }
    if (yes) return TableRow{std::move(row.key), kAlwaysValidMs, std::string(kDeletedRow)};
  }
  if (table.valid_from.empty()) return row;
  simdjson::dom::element from;
  if (At(object, SplitPath(table.valid_from)).get(from) != simdjson::SUCCESS) {
    return Status::Invalid("field '" + table.valid_from + "' (valid_from of table '" + table.name +
                           "') is missing; every row of a table with valid_from says from when it applies");
  }
  if (from.type() == simdjson::dom::element_type::INT64) {
    row.valid_from_ms = int64_t(from);
  } else if (from.is_string()) {
    Result<int64_t> parsed = ParseRfc3339Ms(std::string_view(from));
    if (!parsed.ok()) {
      return Status::Invalid("field '" + table.valid_from + "' (valid_from): " + parsed.status().message());
    }
    row.valid_from_ms = *parsed;
  } else {
    return Status::Invalid("field '" + table.valid_from + "' (valid_from) must be epoch milliseconds as a JSON "
                           "integer or RFC 3339 text");
  }
  if (row.valid_from_ms < kMinTimeMs || row.valid_from_ms > kMaxTimeMs) {
    return Status::Invalid("field '" + table.valid_from + "' (valid_from) is outside years 0001-9999");
  }
  return row;
}

struct TableSet::Impl {
  std::vector<Table> tables;
  std::vector<int> filled_tables;  // The tables a join reads, in join order.
  uint64_t generation = 0;
};

TableSet::TableSet(const Spec& spec) : impl_(std::make_unique<Impl>()) {
  impl_->tables = std::vector<Table>(spec.tables.size());  // Table holds an atomic: not movable, so no resize.
  for (const JoinSpec& join : spec.joins) {
    Table& table = impl_->tables[static_cast<size_t>(join.table_index)];
    table.join_slot = join.on_slot;
    if (join.on.find('.') == std::string::npos) table.on = "\"" + join.on + "\"";
    impl_->filled_tables.push_back(join.table_index);
  }
  for (const FieldRegistry::Joined& joined : spec.fields.joined()) {
    Table& table = impl_->tables[static_cast<size_t>(spec.joins[static_cast<size_t>(joined.join)].table_index)];
    table.columns.push_back(Column{joined.slot, SplitPath(joined.column)});
  }
}

TableSet::~TableSet() = default;

bool TableSet::empty() const { return impl_->tables.empty(); }

void TableSet::Reserve(size_t table, size_t rows) {
  if (impl_->tables[table].versions.Reserve(rows)) ++impl_->generation;  // Save writes the keys in slot order.
}

uint64_t TableSet::generation() const { return impl_->generation; }

bool TableSet::Add(size_t table_index, const TableRow& row, int64_t newest_event_ms) {
  ++impl_->generation;
  Table& table = impl_->tables[table_index];
  if (row.deleted()) {
    Delete(table, row.key);
    return false;
  }
  Version version;
  version.valid_from_ms = row.valid_from_ms;
  simdjson::dom::element root;
  simdjson::dom::object object;
  if (!table.columns.empty() && ThreadParser().parse(row.json.data(), row.json.size()).get(root) == simdjson::SUCCESS &&
      root.get_object().get(object) == simdjson::SUCCESS) {
    for (const Column& column : table.columns) {
      simdjson::dom::element element;
      version.cells.push_back(At(object, column.path).get(element) == simdjson::SUCCESS
                                  ? CellOf(element, &version.text)
                                  : StoredCell{});
    }
  }
  VersionList& list = table.versions.FindOrInsert(row.key);
  if (list.size() == 0) ++table.live_keys;
  if (list.Insert(std::move(version))) ++table.version_count;
  if (list.has_older()) table.several.insert(row.key);
  return row.valid_from_ms != kAlwaysValidMs && row.valid_from_ms <= newest_event_ms;
}

void TableSet::Fill(std::vector<Value>& slots, int64_t time_ms) const {
  for (int t : impl_->filled_tables) {
    const Table& table = impl_->tables[static_cast<size_t>(t)];
    char digits[24];
    std::optional<std::string_view> key = KeyText(slots[static_cast<size_t>(table.join_slot)], digits);
    if (!key) continue;  // No key: the joined fields stay missing.
    const VersionList* list = table.versions.Find(*key, KeyMap::Hash(*key));
    if (list == nullptr) continue;
    const Version* it = list->Find(time_ms);
    if (it == nullptr) continue;
    for (size_t c = 0; c < table.columns.size(); ++c) {
      Value& out = slots[static_cast<size_t>(table.columns[c].slot)];
      if (c < it->cells.size()) {
        SetValue(it->cells[c], it->text, out);
      } else {
        out = Value::Missing();
      }
    }
  }
}

namespace {

// Calls fn(table index, key hash) for each joined table whose key `line` names (RawKey).
template <typename Fn>
void ForEachRawKeyHash(const std::vector<Table>& tables, const std::vector<int>& filled, std::string_view line, Fn fn) {
  for (int t : filled) {
    const Table& table = tables[static_cast<size_t>(t)];
    if (table.on.empty()) continue;
    if (std::optional<std::string_view> key = table_internal::RawKey(line, table.on, table.on_at)) {
      fn(static_cast<size_t>(t), KeyMap::Hash(*key));
    }
  }
}

}  // namespace

// One line (the parse's own prefetch, once per event): straight to the prefetch, with no batch and no allocation.
void TableSet::Prefetch(std::string_view line) const {
  ForEachRawKeyHash(impl_->tables, impl_->filled_tables, line,
                    [&](size_t t, uint64_t hash) { impl_->tables[t].versions.Prefetch(hash); });
}

void TableSet::PrefetchBatch::Add(std::string_view line) {
  ForEachRawKeyHash(tables_.impl_->tables, tables_.impl_->filled_tables, line,
                    [&](size_t t, uint64_t hash) { pending_.emplace_back(t, hash); });
}

void TableSet::PrefetchBatch::Issue() {
  for (const auto& [table, hash] : pending_) tables_.impl_->tables[table].versions.Prefetch(hash);
  pending_.clear();
}

size_t TableSet::Prune(int64_t horizon_ms) {
  if (horizon_ms == std::numeric_limits<int64_t>::min()) return 0;
  size_t dropped = 0;
  for (Table& table : impl_->tables) {
    for (auto it = table.several.begin(); it != table.several.end();) {
      VersionList& list = *table.versions.Find(*it, KeyMap::Hash(*it));  // `several` holds keys of the map.
      const size_t n = list.Prune(horizon_ms);
      table.version_count -= n;
      dropped += n;
      if (list.has_older()) {
        ++it;
      } else {
        table.several.erase(it++);
      }
    }
  }
  if (dropped > 0) ++impl_->generation;
  return dropped;
}

size_t TableSet::versions(size_t table) const { return impl_->tables[table].version_count; }
size_t TableSet::keys(size_t table) const { return impl_->tables[table].live_keys; }

size_t TableSet::MemoryBytes() const {
  size_t bytes = 0;
  for (const Table& table : impl_->tables) {
    bytes += table.versions.capacity() * sizeof(KeyMap::Slot);
    table.versions.ForEach([&](const std::string& key, const VersionList& list) {
      bytes += (key.capacity() > 15 ? key.capacity() : 0) + list.heap_bytes();
      list.ForEach([&](const Version& v) { bytes += (v.text.capacity() > 15 ? v.text.capacity() : 0) + v.cells.heap_bytes(); });
    });
  }
  return bytes;
}

void TableSet::Save(ByteWriter& out) const {
  out.PutU32(kTableSetVersion);
  out.PutVarint(impl_->tables.size());
  for (const Table& table : impl_->tables) {
    out.PutVarint(table.columns.size());
    out.PutVarint(table.versions.size());
    table.versions.ForEach([&](const std::string& key, const VersionList& list) {
      out.PutString(key);
      out.PutVarint(list.size());
      list.ForEach([&](const Version& v) {
        out.PutI64(v.valid_from_ms);
        out.PutString(v.text);
        out.PutVarint(v.cells.size());
        for (size_t k = 0; k < v.cells.size(); ++k) {
          const StoredCell& c = v.cells[k];
          out.PutU8(static_cast<uint8_t>(c.type));
          const bool text = c.type == ValueType::kString;  // Format 1: i 0, then offset and length.
          out.PutI64(text ? 0 : c.i);
          out.PutU32(text ? c.offset() : 0);
          out.PutU32(text ? c.length() : 0);
        }
      });
    });
  }
}

Status TableSet::Load(ByteReader& in) {
  ++impl_->generation;
  const Status damaged = Status::Invalid("the reference tables' state is damaged or of another spec");
  uint32_t version = 0;
  uint64_t tables = 0;
  if (!in.ReadU32(&version) || version != kTableSetVersion || !in.ReadVarint(&tables) ||
      tables != impl_->tables.size()) {
    return damaged;
  }
  for (Table& table : impl_->tables) {
    uint64_t columns = 0, keys = 0;
    if (!in.ReadVarint(&columns) || columns != table.columns.size() || !in.ReadVarint(&keys)) return damaged;
    table.versions.clear();
    table.several.clear();
    table.version_count = 0;
    table.live_keys = 0;
    for (uint64_t k = 0; k < keys; ++k) {
      std::string_view key;
      uint64_t count = 0;
      if (!in.ReadString(&key) || !in.ReadVarint(&count)) return damaged;
      VersionList& list = table.versions.FindOrInsert(key);
      for (uint64_t n = 0; n < count; ++n) {
        Version v;
        std::string_view text;
        uint64_t cells = 0;
        if (!in.ReadI64(&v.valid_from_ms) || !in.ReadString(&text) || !in.ReadVarint(&cells) || cells != columns) {
          return damaged;
        }
        v.text = std::string(text);
        for (uint64_t c = 0; c < cells; ++c) {
          StoredCell cell;
          uint8_t type = 0;
          uint32_t offset = 0, length = 0;
          if (!in.ReadU8(&type) || !in.ReadI64(&cell.i) || !in.ReadU32(&offset) || !in.ReadU32(&length) ||
              uint64_t{offset} + length > v.text.size()) {
            return damaged;
          }
          cell.type = static_cast<ValueType>(type);
          if (cell.type == ValueType::kString) cell.SetText(offset, length);
          v.cells.push_back(cell);
        }
        if (list.Insert(std::move(v))) ++table.version_count;
      }
      if (list.has_older()) table.several.insert(std::string(key));
      if (list.size() > 0) ++table.live_keys;
    }
  }
  return Status::Ok();
}

}  // namespace freshet

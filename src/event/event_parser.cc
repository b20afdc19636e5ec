#include "event/event_parser.h"

#include <simdjson.h>

#include <charconv>
#include <cstring>
#include <span>

#include "common/entity_key.h"
#include "common/text_hash.h"
#include "common/time.h"
#include "lookup/lookup_row.h"
#include "table/table_set.h"

static_assert(freshet::kParsePaddingBytes >= simdjson::SIMDJSON_PADDING, "padding must cover simdjson read-ahead");

namespace freshet {
namespace {

// A trie of the dotted field paths the spec reads: "device.os" is child "device", then "os".
struct PathNode {
  struct Child {
    std::string name;
    int slot = -1;  // >= 0 when the path ending here is a registered field.
    FieldSchema schema;  // The slot's declared type; with from_string, a number in a string becomes that number.
    std::unique_ptr<PathNode> node;  // Set when longer paths continue below this name.
  };
  std::vector<Child> children;

  Child* Find(std::string_view name) {
    for (auto& c : children) {
      if (SameText(c.name, name)) return &c;
    }
    return nullptr;
  }
};

Value ScalarOf(simdjson::dom::element element) {
  using simdjson::dom::element_type;
  switch (element.type()) {
    case element_type::INT64: return Value::Int(int64_t(element));
    case element_type::UINT64: return Value::Double(static_cast<double>(uint64_t(element)));
    case element_type::DOUBLE: return Value::Double(double(element));
    case element_type::STRING: return Value::String(std::string_view(element));
    case element_type::BOOL: return Value::Bool(bool(element));
    case element_type::NULL_VALUE: return Value::Null();
    case element_type::ARRAY:
    case element_type::OBJECT: return Value::Composite();
  }
  return Value::Composite();
}

// `value` as a field of `schema` reads it: with from_string, a string holding a number is that number.
Value ReadAs(const FieldSchema& schema, Value value) {
  if (schema.from_string && value.type == ValueType::kString) {
    if (std::optional<Value> number = NumberInString(value.s, schema.type)) return *number;
  }
  return value;
}

// Adds `path` ("device.os") to the trie as `slot`.
void AddPath(PathNode& root, std::string_view path, int slot, const FieldSchema& schema) {
  PathNode* node = &root;
  while (true) {
    size_t dot = path.find('.');
    std::string_view head = path.substr(0, dot);
    PathNode::Child* child = node->Find(head);
    if (child == nullptr) {
      node->children.push_back(PathNode::Child{std::string(head), -1, FieldSchema(), nullptr});
      child = &node->children.back();
    }
    if (dot == std::string_view::npos) {
      child->slot = slot;
      child->schema = schema;
      return;
    }
    if (child->node == nullptr) child->node = std::make_unique<PathNode>();
    node = child->node.get();
    path = path.substr(dot + 1);
  }
}

// `slots` must be the span of the trie's slots.
void Extract(simdjson::dom::object object, PathNode& node, std::span<Value> slots) {
  for (auto field : object) {
    PathNode::Child* child = node.Find(field.key);
    if (child == nullptr) continue;
    if (child->slot >= 0) slots[child->slot] = ReadAs(child->schema, ScalarOf(field.value));
    if (child->node != nullptr) {
      simdjson::dom::object inner;
      if (field.value.get_object().get(inner) == simdjson::SUCCESS) {
        Extract(inner, *child->node, slots);
      }
    }
  }
}

constexpr std::string_view kEmptyLineReason = "empty line; each line must be one JSON object";

bool IsBlank(std::string_view line) { return line.find_first_not_of(" \t\r") == std::string_view::npos; }

// Where copies of a batch's strings live: blocks that are never moved, so views into them stay valid until Clear
// (which keeps the blocks for the next batch).
class StringArena {
 public:
  std::string_view Copy(std::string_view text) {
    if (blocks_.empty() || used_ + text.size() > blocks_[current_].size) NextBlock(text.size());
    char* at = blocks_[current_].bytes.get() + used_;
    std::memcpy(at, text.data(), text.size());
    used_ += text.size();
    return std::string_view(at, text.size());
  }
  void Clear() {
    current_ = 0;
    used_ = 0;
  }

 private:
  static constexpr size_t kBlockBytes = 256 << 10;
  struct Block {
    std::unique_ptr<char[]> bytes;
    size_t size;
  };
  void NextBlock(size_t at_least) {
    if (!blocks_.empty()) ++current_;
    if (current_ == blocks_.size() || blocks_[current_].size < at_least) {
      const size_t size = std::max(kBlockBytes, at_least);
      blocks_.insert(blocks_.begin() + static_cast<ptrdiff_t>(current_), Block{std::make_unique<char[]>(size), size});
    }
    used_ = 0;
  }
  std::vector<Block> blocks_;
  size_t current_ = 0;
  size_t used_ = 0;
};

}  // namespace

struct SharedLines::Impl {
  // What reading a line gave: its fields, or why it is no JSON object (each parser words the reason).
  enum class Read : uint8_t { kObject, kTooLong, kBlank, kInvalidJson, kNotAnObject };
  struct Line {
    Read read;
    simdjson::error_code error;  // kInvalidJson: why.
    size_t first_value;          // kObject: the line's fields start at values[first_value].
  };
  simdjson::dom::parser parser;
  PathNode root;
  std::vector<std::string> paths;  // Every path any registry reads; a slot here is an index into it.
  std::vector<Line> lines;
  std::vector<Value> values;  // paths.size() per line read as an object.
  StringArena strings;

  int SlotOf(std::string_view path) const {
    for (size_t k = 0; k < paths.size(); ++k) {
      if (paths[k] == path) return static_cast<int>(k);
    }
    return -1;
  }
};

struct EventParser::Impl {
  simdjson::dom::parser parser;
  PathNode root;
  std::vector<std::string> paths;
  char entity_digits[24];
  std::vector<int> key_slots;   // A composite key's slots (FieldRegistry::key_slots); empty for one field.
  std::string entity_key;       // A composite key, encoded (common/entity_key.h).
  std::string key_digits;       // The integer parts of a composite key, as text.
  std::string padded;  // For ParseCopy.
  std::vector<FieldRegistry::Derived> derived;
  const TableSet* tables = nullptr;
  bool prefetch_at_parse = false;  // Tables given, and the caller does not prefetch ahead.
  const FieldRegistry* fields = nullptr;
  const EventLookups* lookups = nullptr;
  // ParseShared: the SharedLines the slots were mapped for, and per read slot, its slot there.
  const SharedLines* shared = nullptr;
  struct SharedSlot {
    int slot;
    int shared_slot;
    FieldSchema schema;  // The slot's, for its from_string.
  };
  std::vector<SharedSlot> shared_slots;
  int entity_shared_slot = -1;
};

EventParser::EventParser(const FieldRegistry& fields) : impl_(std::make_unique<Impl>()) {
  impl_->paths = fields.paths();
  impl_->key_slots = fields.key_slots();
  impl_->derived = fields.derived();
  impl_->fields = &fields;
  for (size_t slot = 0; slot < fields.paths().size(); ++slot) {
    if (fields.is_computed(static_cast<int>(slot))) continue;  // Derived or joined, not read.
    AddPath(impl_->root, fields.paths()[slot], static_cast<int>(slot), fields.schema(slot));
  }
}

EventParser::~EventParser() = default;

bool EventParser::EncodeCompositeKey(ParsedEvent* event, std::string* reason) {
  Impl& impl = *impl_;
  std::string_view parts[kMaxKeyFields];
  // Integer parts as text, each in its own stretch of key_digits (reserved first, so the views stay valid).
  impl.key_digits.resize(impl.key_slots.size() * 24);
  for (size_t k = 0; k < impl.key_slots.size(); ++k) {
    const Value& part = event->slots[impl.key_slots[k]];
    if (part.type == ValueType::kString && !part.s.empty()) {
      parts[k] = part.s;
    } else if (part.type == ValueType::kInt) {
      char* begin = impl.key_digits.data() + k * 24;
      auto [end, ec] = std::to_chars(begin, begin + 24, part.i);
      (void)ec;
      parts[k] = std::string_view(begin, end - begin);
    } else {
      const std::string& name = impl.paths[impl.key_slots[k]];
      *reason = "field '" + name + "' (part of the entity key [" + KeyFieldList() + "]) " +
                (part.is_missing() ? std::string("is missing")
                                   : "must be a non-empty string or an integer, got " +
                                         (part.type == ValueType::kString ? std::string("an empty string")
                                                                          : ValueTypeName(part.type)));
      return false;
    }
  }
  impl.entity_key.clear();
  AppendEntityKey(std::span<const std::string_view>(parts, impl.key_slots.size()), &impl.entity_key);
  event->entity = impl.entity_key;
  return true;
}

std::string EventParser::KeyFieldList() const {
  std::string out;
  for (int slot : impl_->key_slots) out += (out.empty() ? "" : ", ") + impl_->paths[slot];
  return out;
}

std::string LineTooLongReason() { return "line is longer than " + std::to_string(kMaxLineBytes) + " bytes"; }

bool EventParser::Parse(std::string_view line, size_t capacity, ParsedEvent* event, std::string* reason) {
  Impl& impl = *impl_;
  if (line.size() > kMaxLineBytes) {
    *reason = LineTooLongReason();
    return false;
  }
  if (IsBlank(line)) {
    *reason = kEmptyLineReason;
    return false;
  }
  if (impl.prefetch_at_parse) impl.tables->Prefetch(line);  // Overlaps the table's cache misses with the parse.
  simdjson::dom::element root;
  auto error = impl.parser.parse(reinterpret_cast<const uint8_t*>(line.data()), line.size(), false).get(root);
  (void)capacity;
  if (error) {
    *reason = std::string("invalid JSON: ") + simdjson::error_message(error);
    return false;
  }
  simdjson::dom::object object;
  if (root.get_object().get(object) != simdjson::SUCCESS) {
    *reason = NotAnObjectReason();
    return false;
  }
  event->slots.assign(impl.paths.size(), Value::Missing());
  Extract(object, impl.root, event->slots);
  return Complete(event, reason);
}

std::string EventParser::NotAnObjectReason() const {
  return "not a JSON object; each line must be one JSON object like {\"" + impl_->paths[kEntitySlot] + "\": ..., \"" +
         impl_->paths[kTimestampSlot] + "\": ...}";
}

bool EventParser::Complete(ParsedEvent* event, std::string* reason) {
  Impl& impl = *impl_;
  const Value& entity = event->slots[kEntitySlot];
  const std::string& entity_name = impl.paths[kEntitySlot];
  if (!impl.key_slots.empty()) {
    if (!EncodeCompositeKey(event, reason)) return false;
  } else if (entity.type == ValueType::kString && !entity.s.empty()) {
    event->entity = entity.s;
  } else if (entity.type == ValueType::kInt) {
    auto [end, ec] = std::to_chars(impl.entity_digits, impl.entity_digits + sizeof(impl.entity_digits), entity.i);
    (void)ec;
    event->entity = std::string_view(impl.entity_digits, end - impl.entity_digits);
  } else if (entity.is_missing()) {
    *reason = "field '" + entity_name + "' (the entity) is missing";
    return false;
  } else {
    *reason = "field '" + entity_name + "' (the entity) must be a non-empty string or an integer, got " +
              (entity.type == ValueType::kString ? std::string("an empty string") : ValueTypeName(entity.type));
    return false;
  }

  const Value& ts = event->slots[kTimestampSlot];
  const std::string& ts_name = impl.paths[kTimestampSlot];
  if (ts.type == ValueType::kInt) {
    if (ts.i < kMinTimeMs || ts.i > kMaxTimeMs) {
      *reason = "field '" + ts_name + "' (the timestamp): " + std::to_string(ts.i) +
                " is outside years 0001-9999 as epoch milliseconds";
      return false;
    }
    event->time_ms = ts.i;
  } else if (ts.type == ValueType::kString) {
    Result<int64_t> parsed = ParseRfc3339Ms(ts.s);
    if (!parsed.ok()) {
      *reason = "field '" + ts_name + "' (the timestamp): " + parsed.status().message();
      return false;
    }
    event->time_ms = *parsed;
  } else if (ts.is_missing()) {
    *reason = "field '" + ts_name + "' (the timestamp) is missing";
    return false;
  } else {
    *reason = "field '" + ts_name + "' (the timestamp) must be epoch milliseconds as a JSON integer or RFC 3339 "
              "text, got " + std::string(ValueTypeName(ts.type));
    return false;
  }
  event->owned.clear();
  if (impl.tables != nullptr) impl.tables->Fill(event->slots, event->time_ms);
  if (impl.lookups != nullptr) impl.lookups->Fill(*impl.fields, event->slots);
  for (const FieldRegistry::Derived& d : impl.derived) {
    event->slots[static_cast<size_t>(d.slot)] = d.expr->Eval(event->slots, event->time_ms, &event->owned);
  }
  return true;
}

void EventParser::SetTables(const TableSet* tables, bool prefetched_by_caller) {
  impl_->tables = tables;
  impl_->prefetch_at_parse = tables != nullptr && !prefetched_by_caller;
}

void EventParser::MapSharedSlots(const SharedLines& lines) {
  Impl& impl = *impl_;
  impl.shared = &lines;
  impl.shared_slots.clear();
  for (size_t slot = 0; slot < impl.paths.size(); ++slot) {
    if (impl.fields->is_computed(static_cast<int>(slot))) continue;
    const int shared_slot = lines.impl_->SlotOf(impl.paths[slot]);
    FRESHET_CHECK(shared_slot >= 0);  // `lines` was built without this parser's registry.
    impl.shared_slots.push_back({static_cast<int>(slot), shared_slot, impl.fields->schema(slot)});
    if (slot == kEntitySlot) impl.entity_shared_slot = shared_slot;
  }
}

bool EventParser::SharedLineLacksEntity(const SharedLines& lines, size_t index) {
  Impl& impl = *impl_;
  if (impl.shared != &lines) MapSharedSlots(lines);
  const SharedLines::Impl::Line& line = lines.impl_->lines[index];
  return impl.key_slots.empty() && impl.entity_shared_slot >= 0 && line.read == SharedLines::Impl::Read::kObject &&
         lines.impl_->values[line.first_value + static_cast<size_t>(impl.entity_shared_slot)].is_missing();
}

bool EventParser::ParseShared(const SharedLines& lines, size_t index, ParsedEvent* event, std::string* reason) {
  Impl& impl = *impl_;
  if (impl.shared != &lines) MapSharedSlots(lines);
  const SharedLines::Impl::Line& line = lines.impl_->lines[index];
  using Read = SharedLines::Impl::Read;
  switch (line.read) {
    case Read::kTooLong: *reason = LineTooLongReason(); return false;
    case Read::kBlank: *reason = kEmptyLineReason; return false;
    case Read::kInvalidJson: *reason = std::string("invalid JSON: ") + simdjson::error_message(line.error); return false;
    case Read::kNotAnObject: *reason = NotAnObjectReason(); return false;
    case Read::kObject: break;
  }
  event->slots.assign(impl.paths.size(), Value::Missing());
  const Value* values = lines.impl_->values.data() + line.first_value;
  for (const Impl::SharedSlot& s : impl.shared_slots) {
    event->slots[static_cast<size_t>(s.slot)] = ReadAs(s.schema, values[s.shared_slot]);
  }
  return Complete(event, reason);
}

SharedLines::SharedLines(std::span<const FieldRegistry* const> registries) : impl_(std::make_unique<Impl>()) {
  for (const FieldRegistry* fields : registries) {
    for (size_t slot = 0; slot < fields->paths().size(); ++slot) {
      const std::string& path = fields->paths()[slot];
      if (fields->is_computed(static_cast<int>(slot)) || impl_->SlotOf(path) >= 0) continue;
      impl_->paths.push_back(path);
      // No schema: each parser applies its own `from_string` (ParseShared).
      AddPath(impl_->root, path, static_cast<int>(impl_->paths.size() - 1), FieldSchema());
    }
  }
}

SharedLines::~SharedLines() = default;

void SharedLines::Clear() {
  impl_->lines.clear();
  impl_->values.clear();
  impl_->strings.Clear();
}

size_t SharedLines::size() const { return impl_->lines.size(); }

void SharedLines::Add(std::string_view text, size_t capacity) {
  Impl& impl = *impl_;
  (void)capacity;  // Parse below relies on the padding, as EventParser::Parse does.
  Impl::Line line{Impl::Read::kObject, simdjson::SUCCESS, impl.values.size()};
  simdjson::dom::element root;
  simdjson::dom::object object;
  if (text.size() > kMaxLineBytes) {
    line.read = Impl::Read::kTooLong;
  } else if (IsBlank(text)) {
    line.read = Impl::Read::kBlank;
  } else if ((line.error = impl.parser.parse(reinterpret_cast<const uint8_t*>(text.data()), text.size(), false)
                               .get(root))) {
    line.read = Impl::Read::kInvalidJson;
  } else if (root.get_object().get(object) != simdjson::SUCCESS) {
    line.read = Impl::Read::kNotAnObject;
  } else {
    impl.values.resize(line.first_value + impl.paths.size(), Value::Missing());
    const std::span<Value> fields(impl.values.data() + line.first_value, impl.paths.size());
    Extract(object, impl.root, fields);
    // The strings point into the JSON parser, which the next line reuses.
    for (Value& value : fields) {
      if (value.type == ValueType::kString) value.s = impl.strings.Copy(value.s);
    }
  }
  impl.lines.push_back(line);
}

void EventParser::SetLookups(const EventLookups* lookups) { impl_->lookups = lookups; }

bool EventParser::ParseCopy(std::string_view line, ParsedEvent* event, std::string* reason) {
  impl_->padded.assign(line);
  impl_->padded.append(kParsePaddingBytes, '\0');
  return Parse(std::string_view(impl_->padded.data(), line.size()), impl_->padded.size(), event, reason);
}

}  // namespace freshet

#include "lookup/lookup_row.h"

#include <simdjson.h>

#include "serve/json.h"

namespace freshet {
namespace {

// "address.city" as a JSON pointer, "/address/city" (~ and / escaped).
std::string Pointer(std::string_view dotted) {
  std::string out = "/";
  for (char c : dotted) {
    if (c == '.') out += '/';
    else if (c == '~') out += "~0";
    else if (c == '/') out += "~1";
    else out += c;
  }
  return out;
}

simdjson::dom::parser& ThreadParser() {
  thread_local simdjson::dom::parser parser;
  return parser;
}

}  // namespace

Result<LookupRowPtr> MakeLookupRow(const FieldRegistry& fields, int lookup, std::string_view json) {
  simdjson::dom::element root;
  if (auto error = ThreadParser().parse(json.data(), json.size()).get(root)) {
    return Status::Invalid(std::string("the answer is not JSON: ") + simdjson::error_message(error));
  }
  simdjson::dom::object object;
  if (root.get_object().get(object) != simdjson::SUCCESS) {
    return Status::Invalid("the answer is not a JSON object");
  }
  auto row = std::make_shared<LookupRow>();
  row->json = simdjson::minify(object);
  const std::vector<FieldRegistry::Joined>& columns = fields.looked_up();
  row->cells.assign(columns.size(), Value::Missing());
  row->text.reserve(json.size());  // Unescaped strings are no longer than the text: the views stay valid.
  for (size_t k = 0; k < columns.size(); ++k) {
    if (columns[k].join != lookup) continue;
    simdjson::dom::element element;
    if (object.at_pointer(Pointer(columns[k].column)).get(element) != simdjson::SUCCESS) continue;
    using simdjson::dom::element_type;
    Value& cell = row->cells[k];
    switch (element.type()) {
      case element_type::INT64: cell = Value::Int(int64_t(element)); break;
      case element_type::UINT64: cell = Value::Double(static_cast<double>(uint64_t(element))); break;
      case element_type::DOUBLE: cell = Value::Double(double(element)); break;
      case element_type::BOOL: cell = Value::Bool(bool(element)); break;
      case element_type::NULL_VALUE: cell = Value::Null(); break;
      case element_type::STRING: {
        const std::string_view s(element);
        const size_t at = row->text.size();
        row->text.append(s);
        cell = Value::String(std::string_view(row->text.data() + at, s.size()));
        break;
      }
      case element_type::ARRAY:
      case element_type::OBJECT: cell = Value::Composite(); break;
    }
  }
  return LookupRowPtr(std::move(row));
}

void EventLookups::Fill(const FieldRegistry& fields, std::vector<Value>& slots) const {
  const std::vector<FieldRegistry::Joined>& columns = fields.looked_up();
  for (size_t k = 0; k < columns.size(); ++k) {
    const LookupRow* row = rows[static_cast<size_t>(columns[k].join)].get();
    slots[static_cast<size_t>(columns[k].slot)] = row != nullptr ? row->cells[k] : Value::Missing();
  }
}

int EventLookups::DeadLetterLookup(const Spec& spec) const {
  for (size_t l = 0; l < failures.size(); ++l) {
    if (failures[l] != Failure::kNone && spec.lookups[l].dead_letter_on_timeout) return static_cast<int>(l);
  }
  return -1;
}

std::string EventLookups::Record(const Spec& spec) const {
  std::string out;
  JsonWriter json(&out);
  json.BeginObject();
  for (size_t l = 0; l < spec.lookups.size(); ++l) {
    json.Key(spec.lookups[l].name);
    if (rows[l] != nullptr) {
      json.Raw(rows[l]->json);
    } else {
      json.Null();
    }
  }
  json.EndObject();
  return out;
}

Status DecodeRecordedLookups(const Spec& spec, std::string_view recorded, EventLookups* out) {
  out->Reset(spec.lookups.size());
  if (recorded.empty()) return Status::Ok();
  simdjson::dom::element root;
  simdjson::dom::object object;
  if (ThreadParser().parse(recorded.data(), recorded.size()).get(root) != simdjson::SUCCESS ||
      root.get_object().get(object) != simdjson::SUCCESS) {
    return Status::Invalid("the events table's lookups cell is not a JSON object: " + std::string(recorded.substr(0, 80)));
  }
  // Minified first: MakeLookupRow reuses the thread's parser, which owns `object`.
  std::vector<std::string> answers(spec.lookups.size());
  std::vector<bool> has(spec.lookups.size(), false);
  for (size_t l = 0; l < spec.lookups.size(); ++l) {
    simdjson::dom::element answer;
    if (object.at_key(spec.lookups[l].name).get(answer) != simdjson::SUCCESS || answer.is_null()) continue;
    answers[l] = simdjson::minify(answer);
    has[l] = true;
  }
  for (size_t l = 0; l < spec.lookups.size(); ++l) {
    if (!has[l]) continue;
    Result<LookupRowPtr> row = MakeLookupRow(spec.fields, static_cast<int>(l), answers[l]);
    if (!row.ok()) return Status::Invalid("lookup '" + spec.lookups[l].name + "' in the events table: " + row.status().message());
    out->rows[l] = std::move(*row);
  }
  return Status::Ok();
}

std::string LookupFailureReason(const EventLookups& lookups, int lookup) {
  return lookups.failures[static_cast<size_t>(lookup)] == EventLookups::Failure::kTimeout ? "lookup_timeout"
                                                                                            : "lookup_error";
}

}  // namespace freshet

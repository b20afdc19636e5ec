#include "offline/list_column.h"

#include <simdjson.h>

#include <charconv>

namespace freshet {

namespace {

std::shared_ptr<arrow::DataType> ValueCountType() {
  return arrow::struct_({arrow::field("value", arrow::utf8(), false), arrow::field("count", arrow::int64(), false)});
}

// A list element as text (see the header); false for an object or array, which no feature list holds.
bool ElementText(simdjson::dom::element e, std::string* out) {
  char buf[64];
  switch (e.type()) {
    case simdjson::dom::element_type::STRING: *out = std::string_view(e.get_string().value_unsafe()); return true;
    case simdjson::dom::element_type::BOOL: *out = e.get_bool().value_unsafe() ? "true" : "false"; return true;
    case simdjson::dom::element_type::INT64: *out = std::to_string(e.get_int64().value_unsafe()); return true;
    case simdjson::dom::element_type::UINT64: *out = std::to_string(e.get_uint64().value_unsafe()); return true;
    case simdjson::dom::element_type::DOUBLE: {
      auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), e.get_double().value_unsafe());
      out->assign(buf, end);
      return true;
    }
    default: return false;
  }
}

}  // namespace

bool IsListColumn(OfflineType type) { return type == OfflineType::kStringList || type == OfflineType::kValueCounts; }

std::shared_ptr<arrow::DataType> ListArrowType(OfflineType type) {
  if (type == OfflineType::kValueCounts) return arrow::list(arrow::field("element", ValueCountType(), false));
  return arrow::list(arrow::field("element", arrow::utf8(), true));
}

std::string ListDeltaType(OfflineType type) {
  if (type == OfflineType::kValueCounts) {
    return R"({"type":"array","elementType":{"type":"struct","fields":[)"
           R"({"name":"value","type":"string","nullable":false,"metadata":{}},)"
           R"({"name":"count","type":"long","nullable":false,"metadata":{}}]},"containsNull":false})";
  }
  return R"({"type":"array","elementType":"string","containsNull":true})";
}

struct JsonListBuilder::Impl {
  OfflineType type;
  std::shared_ptr<arrow::ListBuilder> list;
  arrow::StringBuilder* strings = nullptr;     // kStringList's items.
  arrow::StructBuilder* pairs = nullptr;       // kValueCounts's items ...
  arrow::StringBuilder* values = nullptr;      // ... and their fields.
  arrow::Int64Builder* counts = nullptr;
  simdjson::dom::parser parser;
  std::string text;

  arrow::Status Element(simdjson::dom::element e) {
    if (type == OfflineType::kStringList) {
      if (e.is_null()) return strings->AppendNull();
      if (!ElementText(e, &text)) return arrow::Status::Invalid("a list element is an object or array");
      return strings->Append(text);
    }
    simdjson::dom::element value;
    int64_t count = 0;
    if (e["value"].get(value) != simdjson::SUCCESS || e["count"].get(count) != simdjson::SUCCESS ||
        !ElementText(value, &text)) {
      return arrow::Status::Invalid("a top_k element is not {\"value\": v, \"count\": n}");
    }
    ARROW_RETURN_NOT_OK(pairs->Append());
    ARROW_RETURN_NOT_OK(values->Append(text));
    return counts->Append(count);
  }
};

JsonListBuilder::JsonListBuilder(OfflineType type) : impl_(std::make_unique<Impl>()) {
  Impl& i = *impl_;
  i.type = type;
  if (type == OfflineType::kValueCounts) {
    auto values = std::make_shared<arrow::StringBuilder>();
    auto counts = std::make_shared<arrow::Int64Builder>();
    auto pairs = std::make_shared<arrow::StructBuilder>(
        ValueCountType(), arrow::default_memory_pool(), std::vector<std::shared_ptr<arrow::ArrayBuilder>>{values, counts});
    i.values = values.get();
    i.counts = counts.get();
    i.pairs = pairs.get();
    i.list = std::make_shared<arrow::ListBuilder>(arrow::default_memory_pool(), pairs, ListArrowType(type));
  } else {
    auto strings = std::make_shared<arrow::StringBuilder>();
    i.strings = strings.get();
    i.list = std::make_shared<arrow::ListBuilder>(arrow::default_memory_pool(), strings, ListArrowType(type));
  }
}

JsonListBuilder::~JsonListBuilder() = default;

arrow::Status JsonListBuilder::Append(std::string_view json) {
  Impl& i = *impl_;
  simdjson::dom::array items;
  if (i.parser.parse(json.data(), json.size()).get(items) != simdjson::SUCCESS) {
    return arrow::Status::Invalid("not a JSON list: ", json.substr(0, 80));
  }
  ARROW_RETURN_NOT_OK(i.list->Append());
  for (simdjson::dom::element e : items) {
    arrow::Status st = i.Element(e);
    if (!st.ok()) return arrow::Status::Invalid(st.message(), " in ", json.substr(0, 80));
  }
  return arrow::Status::OK();
}

arrow::Status JsonListBuilder::AppendNull() { return impl_->list->AppendNull(); }

arrow::Status JsonListBuilder::Finish(std::shared_ptr<arrow::Array>* out) { return impl_->list->Finish(out); }

}  // namespace freshet

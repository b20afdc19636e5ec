#include "spec/request_features.h"

#include <optional>

namespace freshet {

Value RequestParamFromText(std::string_view text) {
  if (text == "true") return Value::Bool(true);
  if (text == "false") return Value::Bool(false);
  if (std::optional<Value> number = NumberInString(text, FieldType::kNumber)) return *number;
  return Value::String(text);
}

void EvaluateRequestFeatures(const RequestFeatures& request, std::string_view entity, int64_t as_of_ms,
                             const std::function<Value(int)>& feature_value, const RequestParams& params,
                             std::vector<Value>* out, OwnedStrings* owned) {
  out->assign(request.items.size(), Value::Null());
  std::vector<Value> slots(request.inputs.size());
  for (size_t s = 0; s < request.inputs.size(); ++s) {
    const RequestInput& input = request.inputs[s];
    switch (input.kind) {
      case RequestInput::Kind::kEntity: slots[s] = Value::String(entity); break;
      case RequestInput::Kind::kTime: slots[s] = Value::Int(as_of_ms); break;
      case RequestInput::Kind::kFeature: slots[s] = feature_value(input.index); break;
      case RequestInput::Kind::kRequestFeature: break;  // Filled below, once computed.
      case RequestInput::Kind::kParam:
        slots[s] = Value::Missing();
        for (const auto& [name, value] : params) {
          if (name == input.param) slots[s] = value;
        }
        break;
    }
  }
  for (size_t j = 0; j < request.items.size(); ++j) {
    (*out)[j] = request.items[j].expr->Eval(slots, as_of_ms, owned);
    // Later items read this one through its slot, when any does.
    for (size_t s = 0; s < request.inputs.size(); ++s) {
      const RequestInput& input = request.inputs[s];
      if (input.kind == RequestInput::Kind::kRequestFeature && input.index == static_cast<int>(j)) slots[s] = (*out)[j];
    }
  }
}

}  // namespace freshet

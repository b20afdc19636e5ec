#include "common/value.h"

namespace freshet {

const char* ValueTypeName(ValueType type) {
  switch (type) {
    case ValueType::kMissing: return "missing";
    case ValueType::kNull: return "null";
    case ValueType::kBool: return "boolean";
    case ValueType::kInt: return "integer";
    case ValueType::kDouble: return "number";
    case ValueType::kString: return "string";
    case ValueType::kComposite: return "object or array";
  }
  return "unknown";
}

}  // namespace freshet

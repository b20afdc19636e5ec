#include "common/entity_key.h"

namespace freshet {

void AppendEntityKey(std::span<const std::string_view> parts, std::string* out) {
  for (size_t k = 0; k < parts.size(); ++k) {
    if (k > 0) out->push_back(kKeySeparator);
    for (char c : parts[k]) {
      if (c == kKeySeparator || c == kKeyEscape) out->push_back(kKeyEscape);
      out->push_back(c);
    }
  }
}

std::string EncodeEntityKey(std::span<const std::string_view> parts) {
  std::string out;
  AppendEntityKey(parts, &out);
  return out;
}

bool DecodeEntityKey(std::string_view key, std::vector<std::string>* parts) {
  parts->assign(1, std::string());
  for (size_t k = 0; k < key.size(); ++k) {
    if (key[k] == kKeyEscape) {
      if (++k == key.size()) return false;
      parts->back().push_back(key[k]);
    } else if (key[k] == kKeySeparator) {
      parts->emplace_back();
    } else {
      parts->back().push_back(key[k]);
    }
  }
  return true;
}

std::string EntityKeyDisplay(std::string_view key, size_t fields) {
  if (fields < 2) return std::string(key);
  std::vector<std::string> parts;
  if (!DecodeEntityKey(key, &parts)) return std::string(key);
  std::string out;
  for (size_t k = 0; k < parts.size(); ++k) out += (k > 0 ? "/" : "") + parts[k];
  return out;
}

}  // namespace freshet

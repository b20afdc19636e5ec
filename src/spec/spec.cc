// Spec parsing: YAML text -> validated Spec, with every problem reported by line and column.
//
// The accepted keys come from the table in spec_options.h. This file walks the YAML tree section by
// section: ReadMap checks a map's keys against the table (unknown, duplicate, missing), the Read* helpers
// check one value's shape and convert it, and the Parse* functions assemble the Spec and check the rules
// that span keys (slide divides size, feature names are unique, ...). Problems are collected, not thrown,
// so one run reports all of them.
#include "spec/spec.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>

#include "common/text.h"
#include "common/time.h"
#include "spec/spec_options.h"
#include "spec/value_expr.h"

namespace freshet {

namespace {

constexpr std::pair<AggKind, const char*> kAggNames[] = {
    {AggKind::kCount, "count"},
    {AggKind::kSum, "sum"},
    {AggKind::kMean, "mean"},
    {AggKind::kMin, "min"},
    {AggKind::kMax, "max"},
    {AggKind::kStddev, "stddev"},
    {AggKind::kLast, "last"},
    {AggKind::kCountDistinct, "count_distinct"},
    {AggKind::kApproxCountDistinct, "approx_count_distinct"},
    {AggKind::kFirst, "first"},
    {AggKind::kApproxPercentile, "approx_percentile"},
    {AggKind::kTopK, "top_k"},
    {AggKind::kLastK, "last_k"},
};

constexpr std::pair<WindowKind, const char*> kWindowNames[] = {
    {WindowKind::kLifetime, "lifetime"},
    {WindowKind::kSliding, "sliding"},
    {WindowKind::kTumbling, "tumbling"},
    {WindowKind::kSession, "session"},
};

}  // namespace

const char* AggKindName(AggKind kind) {
  for (const auto& [k, name] : kAggNames) {
    if (k == kind) return name;
  }
  return "unknown";
}

bool AggNeedsNumber(AggKind kind) {
  switch (kind) {
    case AggKind::kSum:
    case AggKind::kMean:
    case AggKind::kMin:
    case AggKind::kMax:
    case AggKind::kStddev:
    case AggKind::kApproxPercentile:
      return true;
    default:
      return false;
  }
}

std::string PercentileFeatureName(std::string_view name, int64_t ppm) {
  // The percent, ppm / 10^4, without trailing zeros, '.' written as '_'.
  std::string out = std::string(name) + "_p" + std::to_string(ppm / 10000);
  std::string decimals = std::to_string(10000 + ppm % 10000).substr(1);
  while (!decimals.empty() && decimals.back() == '0') decimals.pop_back();
  if (!decimals.empty()) out += "_" + decimals;
  return out;
}

const char* WindowKindName(WindowKind kind) {
  for (const auto& [k, name] : kWindowNames) {
    if (k == kind) return name;
  }
  return "unknown";
}

namespace {

// ---------------------------------------------------------------------------------------------------
// Table and text helpers.

// Splits a ", "-separated table list ("sliding, tumbling").
std::vector<std::string_view> SplitList(std::string_view list) {
  std::vector<std::string_view> items;
  while (!list.empty()) {
    size_t comma = list.find(',');
    std::string_view item = list.substr(0, comma);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    if (!item.empty()) items.push_back(item);
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return items;
}

bool InList(std::string_view list, std::string_view value) {
  for (std::string_view item : SplitList(list)) {
    if (item == value) return true;
  }
  return false;
}

// "a, b or c".
std::string JoinOr(const std::vector<std::string_view>& items) {
  std::string out;
  for (size_t k = 0; k < items.size(); ++k) {
    if (k > 0) out += k + 1 == items.size() ? " or " : ", ";
    out += items[k];
  }
  return out;
}

std::string Join(const std::vector<std::string_view>& items) {
  std::string out;
  for (size_t k = 0; k < items.size(); ++k) {
    if (k > 0) out += ", ";
    out += items[k];
  }
  return out;
}

const SpecOption* FindOption(std::string_view section, std::string_view key) {
  for (const SpecOption& o : SpecOptions()) {
    if (o.section == section && o.key == key) return &o;
  }
  return nullptr;
}

std::vector<std::string_view> SectionKeys(std::string_view section) {
  std::vector<std::string_view> keys;
  for (const SpecOption& o : SpecOptions()) {
    if (o.section == section) keys.push_back(o.key);
  }
  return keys;
}

// The section holding the keys of a kMap or kList option's value.
std::string ChildSection(const SpecOption& option) {
  std::string path = option.section.empty() ? std::string(option.key)
                                            : std::string(option.section) + "." + std::string(option.key);
  if (option.type == SpecValueType::kList) path += "[]";
  return path;
}

// The events file `path` of the spec file `spec_file` as one canonical name: resolved against the spec's folder
// when relative, made absolute (against the working directory), and its folder canonical (symlinks resolved,
// "." and ".." gone, as far as the folders exist). So the one file named by a relative path, an absolute path
// or a path through a symlinked folder gets the one name that the file source's checkpoints record. The file
// name itself is kept as given, also when it is a symlink: a followed symlink may be re-pointed at a new file on
// rotation, which the source must see. Falls back to the lexically normal absolute path when the folder cannot
// be resolved (e.g. no permission).
std::string CanonicalEventsPath(const std::string& spec_file, const std::string& path) {
  std::filesystem::path resolved(path);
  if (resolved.is_relative()) resolved = std::filesystem::path(spec_file).parent_path() / resolved;
  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(resolved, ec);
  if (ec) return resolved.lexically_normal().string();
  const std::filesystem::path name = absolute.filename();
  if (name.empty() || name == "." || name == "..") {
    std::filesystem::path canonical = std::filesystem::weakly_canonical(absolute, ec);
    return (ec ? absolute.lexically_normal() : canonical).string();
  }
  std::filesystem::path folder = std::filesystem::weakly_canonical(absolute.parent_path(), ec);
  if (ec) return absolute.lexically_normal().string();
  return (folder / name).string();
}

bool IsIdentifier(std::string_view s) {
  if (s.empty()) return false;
  auto alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; };
  if (!alpha(s[0])) return false;
  return std::all_of(s.begin() + 1, s.end(), [&](char c) { return alpha(c) || (c >= '0' && c <= '9'); });
}

bool IsFieldPath(std::string_view s) {
  size_t start = 0;
  while (true) {
    size_t dot = s.find('.', start);
    if (!IsIdentifier(s.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start))) {
      return false;
    }
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

// A valid identifier that looks like `s`, for "try 'x'" hints.
std::string SanitizeIdentifier(std::string_view s) {
  std::string out;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    out += ok ? c : '_';
  }
  if (out.empty() || (out[0] >= '0' && out[0] <= '9')) out.insert(0, "f_");  // Not '_': reserved for feature names.
  return out;
}

bool AllDigits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// "0s", "0ms", "00m": a zero duration, which ParseDurationMs rejects but a watermark may use.
bool IsZeroDuration(std::string_view s) {
  size_t digits = 0;
  while (digits < s.size() && s[digits] == '0') ++digits;
  if (digits == 0) return false;
  std::string_view unit = s.substr(digits);
  return unit == "ms" || unit == "s" || unit == "m" || unit == "h" || unit == "d";
}

const char* NodeKindName(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Scalar:
      return "a single value";
    default:
      return "nothing";
  }
}

// What a value of this option looks like, for "expected ..." messages.
std::string ExpectedValue(const SpecOption& o) {
  std::string what;
  switch (o.type) {
    case SpecValueType::kString: what = "text"; break;
    case SpecValueType::kName: what = "a name ([A-Za-z_][A-Za-z0-9_]*)"; break;
    case SpecValueType::kFieldPath: what = "a field path (names separated by dots)"; break;
    case SpecValueType::kDuration: what = "a duration (an integer and a unit: ms, s, m, h, d)"; break;
    case SpecValueType::kBool: what = "true or false"; break;
    case SpecValueType::kFraction: what = "a number from 0 to 1"; break;
    case SpecValueType::kInt:
      what = "an integer from " + std::to_string(o.min_value) + " to " + std::to_string(o.max_value);
      break;
    case SpecValueType::kChoice: what = "one of " + Join(SplitList(o.choices)); break;
    case SpecValueType::kExpression: what = "an expression"; break;
    case SpecValueType::kMap: what = "a map of keys"; break;
    case SpecValueType::kList: what = "a list"; break;
    case SpecValueType::kFractionList: what = "a list of numbers from 0 to 1"; break;
    case SpecValueType::kFieldPaths: what = "a field path, or a list of field paths"; break;
  }
  if (!o.example.empty()) what += ", e.g. " + std::string(o.key) + ": " + std::string(o.example);
  return what;
}

// What to write for a missing key: a map or list is explained by its description, a value by its shape.
std::string MissingKeyHelp(const SpecOption& o) {
  if (o.type == SpecValueType::kMap || o.type == SpecValueType::kList) {
    std::string help(o.description);
    if (!o.example.empty()) help += " For example: " + std::string(o.key) + ": " + std::string(o.example);
    return help;
  }
  return "expected " + ExpectedValue(o);
}

// The condition of an option, as prose ("type is sliding or tumbling").
std::string ConditionText(const SpecOption& o) {
  std::string values = JoinOr(SplitList(o.when_values));
  return std::string(o.when_key) + (o.when_negated ? " is not " : " is ") + values;
}

// ---------------------------------------------------------------------------------------------------
// The parser.

// One key: value pair of a YAML map, matched to its table row.
struct Entry {
  const SpecOption* option = nullptr;
  YAML::Node key;
  YAML::Node value;
};

// A YAML map whose keys have been checked against the table.
struct MapView {
  std::string section;
  YAML::Mark mark;
  std::vector<Entry> entries;

  const Entry* Find(std::string_view key) const {
    for (const Entry& e : entries) {
      if (e.option->key == key) return &e;
    }
    return nullptr;
  }
};

// A scalar value, or an absent key's default (then `node` is null and `mark` is the map's).
struct ScalarValue {
  std::string text;
  YAML::Mark mark;
  const YAML::Node* node = nullptr;
};

class SpecParser {
 public:
  SpecParser(std::string_view text, const std::string& file) : text_(text), file_(file) {}

  Result<Spec> Parse(std::vector<SpecDiagnostic>* diagnostics);

 private:
  void Error(const YAML::Mark& mark, std::string message);
  YAML::Mark ValueMark(const Entry& e) const;
  YAML::Mark MarkInScalar(const YAML::Node& node, size_t offset) const;

  std::optional<MapView> ReadMap(const YAML::Node& node, const YAML::Mark& fallback, const SpecOption& option,
                                 const std::string& section, const std::string& what);
  void CheckCondition(const MapView& map, std::string_view when_key, std::string_view value);

  std::optional<ScalarValue> Scalar(const MapView& map, std::string_view key);
  std::optional<std::string> ReadString(const MapView& map, std::string_view key);
  std::optional<std::string> ReadName(const MapView& map, std::string_view key);
  std::optional<std::string> ReadFieldPath(const MapView& map, std::string_view key);
  void ReadEntity(const MapView& map, Spec* spec);
  std::optional<std::string> ReadChoice(const MapView& map, std::string_view key);
  std::optional<int64_t> ReadDuration(const MapView& map, std::string_view key);
  std::optional<bool> ReadBool(const MapView& map, std::string_view key);
  std::optional<int> ReadInt(const MapView& map, std::string_view key);
  std::optional<double> ReadFraction(const MapView& map, std::string_view key);
  std::optional<std::vector<int64_t>> ReadPercentiles(const MapView& map);
  // `field: [a, b]` of count_distinct and approx_count_distinct: fills feature.tuple_fields and tuple_slots.
  void ReadFieldList(const Entry& entry, Spec* spec, FeatureSpec* feature);

  void ParseTop(const YAML::Node& root, Spec* spec);
  void ParseWatermark(const Entry& entry, Spec* spec);
  void ParseDedup(const Entry& entry, Spec* spec);
  void ParseSource(const Entry& entry, Spec* spec);
  // Reads `properties` (librdkafka's, name: value) of a Kafka source map into *out; false after an error, which
  // names it under `section` ("source", "tables[].source").
  bool ReadKafkaProperties(const MapView& map, const std::string& section,
                           std::vector<std::pair<std::string, std::string>>* out);
  void ParseOnline(const Entry& entry, Spec* spec);
  void ParseServe(const Entry& entry, Spec* spec);
  void ParseCheckpoint(const Entry& entry, Spec* spec);
  // A path of the spec, made absolute against the spec file's folder (as the user reads it).
  std::string ResolveAgainstSpec(const std::string& path) const {
    std::filesystem::path resolved(path);
    if (resolved.is_relative()) resolved = (std::filesystem::path(file_).parent_path() / resolved).lexically_normal();
    return resolved.string();
  }
  void ParseFreshnessSlo(const Entry& entry, Spec* spec);
  void ParseRequestFeatures(const Entry& entry, Spec* spec);
  void CheckColumnName(const YAML::Mark& mark, const std::string& what, const std::string& name, const Spec& spec);
  void ParseOffline(const Entry& entry, Spec* spec);
  void ParseFeatureLog(const Entry& entry, Spec* spec);
  void ParseSkew(const Entry& entry, Spec* spec);
  void ParseFeatures(const Entry& entry, Spec* spec);
  void ParseDerive(const Entry& entry, Spec* spec);
  void ParseTables(const Entry& entry, Spec* spec);
  void ParseJoins(const Entry& entry, Spec* spec);
  void ParseLookups(const Entry& entry, Spec* spec);
  // The {field} names of a lookup's key or url template, or an error at `mark`.
  bool ReadTemplateFields(const std::string& text, const YAML::Mark& mark, LookupSpec* lookup);
  void ResolveJoinedFields(Spec* spec);
  std::vector<YAML::Mark> join_marks_;  // Of each join's `on`, parallel to Spec::joins.
  std::vector<YAML::Mark> lookup_marks_;  // Of each lookup's key or url, parallel to Spec::lookups.
  void ParseFeature(const YAML::Node& item, const SpecOption& list_option, Spec* spec,
                    std::map<std::string, int>* first_line_by_name);
  std::optional<WindowSpec> ParseWindow(const Entry& entry);

  // The schema and the checks of field references against it (the section "The schema" below).
  enum class FieldRole : uint8_t { kEntity, kTimestamp, kFeatureField, kDedup };
  struct FieldUse {
    std::string path;
    FieldRole role = FieldRole::kEntity;
    size_t feature = 0;  // kFeatureField: index in Spec::features.
    YAML::Mark mark;     // Where the field is named.
  };
  struct WhereUse {
    size_t feature = 0;  // Index in Spec::features.
    YAML::Node node;     // The `where` value, for positions inside it.
  };
  void NoteFieldUse(std::string path, FieldRole role, size_t feature, const YAML::Mark& mark);
  void NoteWhere(size_t feature, const YAML::Node& node);
  void ParseSchema(const Entry& entry, Spec* spec);
  std::optional<FieldType> ReadFieldType(const std::string& field, const std::string& text, const YAML::Mark& mark);
  void CheckFieldUses(Spec* spec);
  void CheckFieldAgainstSchema(const Spec& spec, const FieldUse& use);
  void CheckWhereAgainstSchema(const Spec& spec, const WhereUse& use);
  void WarnUnquotedWords(Spec* spec);
  char QuoteFor(const YAML::Node& node) const;

  std::string_view text_;
  std::string file_;
  std::vector<SpecDiagnostic> diagnostics_;
  std::vector<FieldUse> field_uses_;
  std::vector<WhereUse> where_uses_;
};

void SpecParser::Error(const YAML::Mark& mark, std::string message) {
  SpecDiagnostic d;
  d.line = mark.line >= 0 ? mark.line + 1 : 1;
  d.column = mark.column >= 0 ? mark.column + 1 : 1;
  d.message = std::move(message);
  diagnostics_.push_back(std::move(d));
}

// Where a value is; an empty value (`key:`) has no useful mark of its own, so point at its key.
YAML::Mark SpecParser::ValueMark(const Entry& e) const {
  if (e.value.IsNull() || e.value.Mark().is_null()) return e.key.Mark();
  return e.value.Mark();
}

// The position of byte `offset` of a scalar's text, when the scalar is written on one line with no
// escapes (then the text appears verbatim in the file); otherwise the start of the scalar.
YAML::Mark SpecParser::MarkInScalar(const YAML::Node& node, size_t offset) const {
  YAML::Mark mark = node.Mark();
  if (mark.is_null() || mark.pos < 0 || static_cast<size_t>(mark.pos) >= text_.size()) return mark;
  const std::string& scalar = node.Scalar();
  if (scalar.find('\n') != std::string::npos || offset > scalar.size()) return mark;
  std::string_view raw = text_.substr(static_cast<size_t>(mark.pos));
  size_t start = 0;
  if (raw[0] == '"' || raw[0] == '\'') {
    start = 1;
  } else if (node.Tag() != "?") {
    return mark;  // A block scalar (| or >) or a tagged value.
  }
  if (raw.substr(start, scalar.size()) != scalar) return mark;
  mark.column += static_cast<int>(start + offset);
  return mark;
}

// Checks a map against the table rows of `section`: reports values that are not maps, keys that are not
// names, duplicates, unknown keys (with the closest valid one), and missing unconditionally required
// keys. `fallback` positions errors about an empty value.
std::optional<MapView> SpecParser::ReadMap(const YAML::Node& node, const YAML::Mark& fallback,
                                           const SpecOption& option, const std::string& section,
                                           const std::string& what) {
  if (!node.IsMap()) {
    YAML::Mark mark = node.IsNull() || node.Mark().is_null() ? fallback : node.Mark();
    std::string expected = "expected a map of keys for " + what;
    if (!option.example.empty()) expected += " (e.g. " + std::string(option.example) + ")";
    Error(mark, expected + ", got " + NodeKindName(node));
    return std::nullopt;
  }
  MapView view;
  view.section = section;
  view.mark = node.Mark();
  std::map<std::string, int> first_line;
  std::vector<std::string_view> suggested;  // Keys offered for a typo; not reported missing as well.
  for (const auto& kv : node) {
    const YAML::Node& key = kv.first;
    if (!key.IsScalar()) {
      Error(key.Mark(), std::string("a key must be a plain name, got ") + NodeKindName(key));
      continue;
    }
    const std::string& name = key.Scalar();
    if (auto it = first_line.find(name); it != first_line.end()) {
      Error(key.Mark(), "duplicate key '" + name + "'; it is already set at line " + std::to_string(it->second) +
                            "; remove one of them");
      continue;
    }
    first_line[name] = key.Mark().line + 1;
    const SpecOption* o = FindOption(section, name);
    if (o == nullptr) {
      std::vector<std::string_view> keys = SectionKeys(section);
      std::string message = "unknown key '" + name + "'";
      if (auto close = ClosestMatch(name, keys)) {
        message += "; did you mean '" + std::string(*close) + "'?";
        suggested.push_back(*close);
      }
      message += (message.back() == '?' ? " " : "; ") + std::string("valid keys: ") + Join(keys);
      Error(key.Mark(), message);
      continue;
    }
    view.entries.push_back(Entry{o, key, kv.second});
  }
  for (const SpecOption& o : SpecOptions()) {
    if (o.section != section || !o.required || !o.when_key.empty() || view.Find(o.key) != nullptr) continue;
    if (std::find(suggested.begin(), suggested.end(), o.key) != suggested.end()) continue;
    Error(view.mark, "missing required key '" + std::string(o.key) + "': " + MissingKeyHelp(o));
  }
  return view;
}

// Applies the conditions that depend on `when_key` now that its value is known: a key given where it
// does not apply is an error, and so is a missing key that the value requires.
void SpecParser::CheckCondition(const MapView& map, std::string_view when_key, std::string_view value) {
  auto applies = [&](const SpecOption& o) {
    return o.when_key != when_key || InList(o.when_values, value) != o.when_negated;
  };
  std::vector<std::string_view> valid_here;
  for (const SpecOption& o : SpecOptions()) {
    if (o.section == map.section && applies(o)) valid_here.push_back(o.key);
  }
  for (const Entry& e : map.entries) {
    if (applies(*e.option)) continue;
    std::string message;
    if (!e.option->misuse_hint.empty()) {
      message = std::string(e.option->misuse_hint);
    } else {
      message = "'" + std::string(e.option->key) + "' does not apply when " + std::string(when_key) + " is " +
                std::string(value) + " (only when " + ConditionText(*e.option) + "); valid keys here: " +
                Join(valid_here);
    }
    Error(e.key.Mark(), message);
  }
  for (const SpecOption& o : SpecOptions()) {
    if (o.section != map.section || o.when_key != when_key || !o.required || !applies(o)) continue;
    if (map.Find(o.key) != nullptr) continue;
    Error(map.mark, "missing required key '" + std::string(o.key) + "' (needed when " + std::string(when_key) +
                        " is " + std::string(value) + "): " + MissingKeyHelp(o));
  }
}

// The scalar text of `key`, or its table default when absent. Reports empty values and values that are
// maps or lists. Returns nullopt after an error, or when the key is absent and has no default.
std::optional<ScalarValue> SpecParser::Scalar(const MapView& map, std::string_view key) {
  const SpecOption* o = FindOption(map.section, key);
  FRESHET_CHECK(o != nullptr);
  const Entry* e = map.Find(key);
  if (e == nullptr) {
    if (o->default_value.empty()) return std::nullopt;
    return ScalarValue{std::string(o->default_value), map.mark, nullptr};
  }
  if (!e->value.IsScalar()) {
    std::string got = e->value.IsNull() ? "'" + std::string(key) + "' has no value" :
                                          "'" + std::string(key) + "' is " + NodeKindName(e->value);
    Error(ValueMark(*e), got + "; expected " + ExpectedValue(*o));
    return std::nullopt;
  }
  return ScalarValue{e->value.Scalar(), e->value.Mark(), &e->value};
}

std::optional<std::string> SpecParser::ReadString(const MapView& map, std::string_view key) {
  auto v = Scalar(map, key);
  if (!v) return std::nullopt;
  if (v->text.empty()) {
    Error(v->mark, "'" + std::string(key) + "' is empty; expected " + ExpectedValue(*FindOption(map.section, key)));
    return std::nullopt;
  }
  return v->text;
}

std::optional<std::string> SpecParser::ReadName(const MapView& map, std::string_view key) {
  auto v = Scalar(map, key);
  if (!v) return std::nullopt;
  if (!IsIdentifier(v->text)) {
    Error(v->mark, "invalid " + std::string(key) + " '" + v->text +
                       "': use letters, digits and underscores, not starting with a digit; try '" +
                       SanitizeIdentifier(v->text) + "'");
    return std::nullopt;
  }
  return v->text;
}

std::optional<std::string> SpecParser::ReadFieldPath(const MapView& map, std::string_view key) {
  auto v = Scalar(map, key);
  if (!v) return std::nullopt;
  if (!IsFieldPath(v->text)) {
    Error(v->mark, "invalid field path '" + v->text + "' for '" + std::string(key) +
                       "': write field names (letters, digits, underscores) separated by dots, e.g. "
                       "amount or device.os");
    return std::nullopt;
  }
  return v->text;
}

// `entity`: one field path, or a list of distinct ones (a composite key). Sets entity_fields, and entity_field
// to the first.
void SpecParser::ReadEntity(const MapView& map, Spec* spec) {
  const Entry* e = map.Find("entity");
  if (e == nullptr) return;  // Reported as missing.
  if (!e->value.IsSequence()) {
    if (auto entity = ReadFieldPath(map, "entity")) spec->entity_fields = {*entity};
  } else if (e->value.size() < 2 || e->value.size() > kMaxKeyFields) {
    Error(ValueMark(*e), "a composite 'entity' lists 2 to " + std::to_string(kMaxKeyFields) + " fields, got " +
                             std::to_string(e->value.size()) + "; for one field write entity: user_id");
  } else {
    std::vector<std::string> fields;
    for (const YAML::Node& item : e->value) {
      const std::string text = item.IsScalar() ? item.Scalar() : "";
      if (!IsFieldPath(text)) {
        Error(item.Mark(), "invalid key field '" + text + "' in 'entity': write field names (letters, digits, "
                           "underscores) separated by dots, e.g. entity: [user_id, merchant_id]");
      } else if (std::find(fields.begin(), fields.end(), text) != fields.end()) {
        Error(item.Mark(), "key field '" + text + "' is listed twice in 'entity'; list each field once");
      } else {
        fields.push_back(text);
      }
    }
    if (fields.size() == e->value.size()) spec->entity_fields = std::move(fields);
  }
  if (!spec->entity_fields.empty()) spec->entity_field = spec->entity_fields.front();
}

std::optional<std::string> SpecParser::ReadChoice(const MapView& map, std::string_view key) {
  const SpecOption* o = FindOption(map.section, key);
  auto v = Scalar(map, key);
  if (!v) return std::nullopt;
  std::vector<std::string_view> choices = SplitList(o->choices);
  if (std::find(choices.begin(), choices.end(), v->text) != choices.end()) return v->text;
  std::string message = "unknown " + std::string(key) + " '" + v->text + "'";
  if (auto close = ClosestMatch(v->text, choices)) message += "; did you mean '" + std::string(*close) + "'?";
  message += (message.back() == '?' ? " " : "; ") + std::string("valid: ") + Join(choices);
  Error(v->mark, message);
  return std::nullopt;
}

std::optional<int64_t> SpecParser::ReadDuration(const MapView& map, std::string_view key) {
  const SpecOption* o = FindOption(map.section, key);
  auto v = Scalar(map, key);
  if (!v) return std::nullopt;
  if (AllDigits(v->text)) {
    Error(v->mark, "'" + std::string(key) + "' needs a unit: write " + v->text + "m, not " + v->text +
                       " (units: ms, s, m, h, d)");
    return std::nullopt;
  }
  if (o->zero_allowed && IsZeroDuration(v->text)) return 0;
  Result<int64_t> ms = ParseDurationMs(v->text);
  if (!ms.ok()) {
    FRESHET_CHECK(v->node != nullptr);  // Table defaults are valid.
    Error(v->mark, "'" + std::string(key) + "': " + ms.status().message());
    return std::nullopt;
  }
  return *ms;
}

std::optional<bool> SpecParser::ReadBool(const MapView& map, std::string_view key) {
  auto v = Scalar(map, key);
  if (!v) return std::nullopt;
  if (v->text == "true" || v->text == "True" || v->text == "TRUE") return true;
  if (v->text == "false" || v->text == "False" || v->text == "FALSE") return false;
  Error(v->mark, "'" + std::string(key) + "' must be true or false, got '" + v->text + "'");
  return std::nullopt;
}

std::optional<int> SpecParser::ReadInt(const MapView& map, std::string_view key) {
  const SpecOption* o = FindOption(map.section, key);
  auto v = Scalar(map, key);
  if (!v) return std::nullopt;
  int n = 0;
  auto [ptr, ec] = std::from_chars(v->text.data(), v->text.data() + v->text.size(), n);
  if (ec != std::errc() || ptr != v->text.data() + v->text.size() || n < o->min_value || n > o->max_value) {
    Error(v->mark, "'" + std::string(key) + "' must be an integer from " + std::to_string(o->min_value) + " to " +
                       std::to_string(o->max_value) + ", got '" + v->text + "'");
    return std::nullopt;
  }
  return n;
}

std::optional<double> SpecParser::ReadFraction(const MapView& map, std::string_view key) {
  auto v = Scalar(map, key);
  if (!v) return std::nullopt;
  double x = 0;
  auto [ptr, ec] = std::from_chars(v->text.data(), v->text.data() + v->text.size(), x);
  if (ec != std::errc() || ptr != v->text.data() + v->text.size() || !(x >= 0 && x <= 1)) {
    Error(v->mark, "'" + std::string(key) + "' must be a number from 0 to 1 (0.001 is one in a thousand), got '" +
                       v->text + "'");
    return std::nullopt;
  }
  return x;
}

// approx_percentile's `percentiles`: each a number from 0 to 1 with at most 6 decimals, in millionths, no
// two equal.
void SpecParser::ReadFieldList(const Entry& entry, Spec* spec, FeatureSpec* feature) {
  if (feature->agg != AggKind::kCountDistinct && feature->agg != AggKind::kApproxCountDistinct) {
    Error(ValueMark(entry), std::string("only count_distinct and approx_count_distinct take a list of fields (to count "
                                        "distinct combinations); ") + AggKindName(feature->agg) +
                                " takes one field, e.g. field: amount");
    return;
  }
  if (entry.value.size() < 2 || entry.value.size() > 8) {
    Error(ValueMark(entry), "'field' lists " + std::to_string(entry.value.size()) +
                                " fields; list 2 to 8 (or write one field without brackets)");
    return;
  }
  std::vector<std::string> fields;
  for (const YAML::Node& item : entry.value) {
    const std::string text = item.IsScalar() ? item.Scalar() : "";
    if (!IsFieldPath(text)) {
      Error(item.Mark(), "invalid field path " + (item.IsScalar() ? "'" + text + "'" : std::string(NodeKindName(item))) +
                             " in 'field': write field names separated by dots, e.g. [merchant_id, device.id]");
      return;
    }
    if (std::find(fields.begin(), fields.end(), text) != fields.end()) {
      Error(item.Mark(), "field '" + text + "' is listed twice in 'field'; list each field once");
      return;
    }
    fields.push_back(text);
  }
  std::string joined;
  for (const std::string& f : fields) joined += (joined.empty() ? "[" : ", ") + f;
  feature->field = joined + "]";
  feature->tuple_fields = fields;
  size_t k = 0;
  for (const YAML::Node& item : entry.value) {
    feature->tuple_slots.push_back(spec->fields.Intern(fields[k]));
    NoteFieldUse(fields[k++], FieldRole::kFeatureField, spec->features.size(), item.Mark());
  }
  feature->field_slot = feature->tuple_slots.front();
}

std::optional<std::vector<int64_t>> SpecParser::ReadPercentiles(const MapView& map) {
  const Entry* e = map.Find("percentiles");
  if (e == nullptr) return std::nullopt;  // Reported as missing by CheckCondition.
  if (!e->value.IsSequence() || e->value.size() == 0) {
    Error(ValueMark(*e), std::string("'percentiles' is ") + (e->value.IsSequence() ? "an empty list" : NodeKindName(e->value)) +
                             "; expected " + ExpectedValue(*e->option));
    return std::nullopt;
  }
  std::vector<int64_t> out;
  bool ok = true;
  for (const YAML::Node& item : e->value) {
    const std::string text = item.IsScalar() ? item.Scalar() : "";
    double x = -1;
    if (item.IsScalar()) {
      auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), x);
      if (ec != std::errc() || ptr != text.data() + text.size()) x = -1;
    }
    if (!(x >= 0 && x <= 1)) {
      Error(item.Mark(), "each percentile must be a number from 0 to 1 (0.95 for the 95th percentile), got " +
                             (item.IsScalar() ? "'" + text + "'" : std::string(NodeKindName(item))));
      ok = false;
      continue;
    }
    const int64_t ppm = std::llround(x * 1e6);
    if (std::fabs(x * 1e6 - static_cast<double>(ppm)) > 1e-6) {
      Error(item.Mark(), "percentile '" + text + "' has more than 6 decimals; round it, e.g. to " +
                             std::to_string(static_cast<double>(ppm) / 1e6).substr(0, 8));
      ok = false;
      continue;
    }
    if (std::find(out.begin(), out.end(), ppm) != out.end()) {
      Error(item.Mark(), "percentile '" + text + "' is listed twice; each becomes a feature of its own, so list it once");
      ok = false;
      continue;
    }
    out.push_back(ppm);
  }
  if (!ok) return std::nullopt;
  return out;
}

// For a slide that does not divide size: the nearest slides that do, in the slide's own unit where
// possible ("6m or 10m" for a 7m slide of a 1h window).
std::string NearestDivisors(int64_t size_ms, int64_t slide_ms) {
  static constexpr int64_t kUnitsMs[] = {86400000, 3600000, 60000, 1000, 1};
  for (int64_t unit : kUnitsMs) {
    if (slide_ms % unit != 0 || size_ms % unit != 0) continue;
    const int64_t n = size_ms / unit;
    const int64_t h = slide_ms / unit;
    if (n > 1'000'000'000'000LL) return "";  // Too many candidates to search; no suggestion.
    int64_t lower = 0, upper = 0;
    for (int64_t d = 1; d * d <= n; ++d) {
      if (n % d != 0) continue;
      for (int64_t c : {d, n / d}) {
        if (c < h && c > lower) lower = c;
        if (c > h && (upper == 0 || c < upper)) upper = c;
      }
    }
    std::vector<std::string> options;
    if (lower > 0) options.push_back(FormatDuration(lower * unit));
    if (upper > 0) options.push_back(FormatDuration(upper * unit));
    if (options.empty()) return "";
    return options.size() == 1 ? options[0] : options[0] + " or " + options[1];
  }
  return "";
}

std::optional<WindowSpec> SpecParser::ParseWindow(const Entry& entry) {
  const SpecOption& option = *entry.option;
  std::optional<MapView> map = ReadMap(entry.value, ValueMark(entry), option, ChildSection(option), "'window'");
  if (!map) return std::nullopt;
  std::optional<std::string> type = ReadChoice(*map, "type");
  if (!type) return std::nullopt;
  CheckCondition(*map, "type", *type);
  WindowSpec window;
  for (const auto& [kind, name] : kWindowNames) {
    if (*type == name) window.kind = kind;
  }
  bool ok = true;
  switch (window.kind) {
    case WindowKind::kLifetime:
      break;
    case WindowKind::kSliding: {
      std::optional<int64_t> size = ReadDuration(*map, "size");
      std::optional<int64_t> slide;
      if (map->Find("slide") != nullptr) {
        slide = ReadDuration(*map, "slide");
        ok = ok && slide.has_value();
      }
      ok = ok && size.has_value();
      if (size && slide && *size % *slide != 0) {
        std::string message = "slide " + FormatDuration(*slide) + " does not divide size " + FormatDuration(*size);
        if (*slide > *size) message = "slide " + FormatDuration(*slide) + " is longer than size " + FormatDuration(*size);
        std::string nearest = NearestDivisors(*size, *slide);
        if (!nearest.empty()) message += "; the nearest slides that do divide it are " + nearest;
        message += " (or omit slide for a continuous window)";
        Error(map->Find("slide")->value.Mark(), message);
        ok = false;
      }
      if (ok) {
        window.size_ms = *size;
        window.slide_ms = slide.value_or(0);
      }
      break;
    }
    case WindowKind::kTumbling: {
      std::optional<int64_t> size = ReadDuration(*map, "size");
      ok = size.has_value();
      if (ok) window.size_ms = window.slide_ms = *size;
      break;
    }
    case WindowKind::kSession: {
      std::optional<int64_t> gap = ReadDuration(*map, "gap");
      ok = gap.has_value();
      if (ok) window.gap_ms = *gap;
      break;
    }
  }
  if (!ok) return std::nullopt;
  return window;
}

// A name that becomes an output column (a feature, a request feature): not the entity or timestamp field,
// not starting with '_', not a column of the offline tables. `what`: "feature name", "request feature name".
void SpecParser::CheckColumnName(const YAML::Mark& mark, const std::string& what, const std::string& name,
                                 const Spec& spec) {
  for (const auto& [column, role] : {std::pair{spec.entity_field, "entity"},
                                     std::pair{spec.timestamp_field, "timestamp"}}) {
    if (!column.empty() && name == column) {
      Error(mark, what + " '" + name + "' is the " + role +
                      " field; both become output columns, side by side, so pick another name");
    }
  }
  // The offline tables' own columns, and names the Redis feature hash uses for itself.
  static constexpr std::string_view kReserved[] = {"seq",        "entity",     "event_time",      "processing_time",
                                                   "request_id", "as_of",      "served_at",       "served_features",
                                                   "exact",      "event_date", "served_date",     "ingest_time",
                                                   "raw"};
  if (name.starts_with("_")) {
    Error(mark, what + " '" + name + "' starts with '_', which is reserved for Freshet's own fields (the "
                "Redis feature hash holds _event_time_ms and _updated_ms); drop the leading underscore");
  } else if (std::find(std::begin(kReserved), std::end(kReserved), name) != std::end(kReserved)) {
    Error(mark, what + " '" + name + "' is a column the offline tables already have (seq, entity, event_time, "
                "processing_time, request_id, as_of, served_at, served_features, exact, event_date, served_date, "
                "ingest_time, raw); pick another name");
  }
}

void SpecParser::ParseFeature(const YAML::Node& item, const SpecOption& list_option, Spec* spec,
                              std::map<std::string, int>* first_line_by_name) {
  std::optional<MapView> map =
      ReadMap(item, item.Mark(), list_option, ChildSection(list_option), "each item of 'features'");
  if (!map) return;
  FeatureSpec feature;
  feature.line = map->mark.line + 1;

  std::optional<std::string> name = ReadName(*map, "name");
  if (name) {
    feature.name = *name;
    const YAML::Mark& mark = map->Find("name")->value.Mark();
    auto [it, inserted] = first_line_by_name->emplace(*name, feature.line);
    if (!inserted) {
      Error(mark, "duplicate feature name '" + *name + "'; the first one is at line " + std::to_string(it->second) +
                      "; feature names are output columns and must be unique");
    }
    CheckColumnName(mark, "feature name", *name, *spec);
  }

  std::optional<std::string> agg_name = ReadChoice(*map, "aggregation");
  if (agg_name) {
    for (const auto& [kind, text] : kAggNames) {
      if (*agg_name == text) feature.agg = kind;
    }
    CheckCondition(*map, "aggregation", *agg_name);
  }

  // Fields are interned in this order (where, then field), whatever the order of the keys in the file.
  if (const Entry* where = map->Find("where")) {
    if (std::optional<ScalarValue> v = Scalar(*map, "where")) {
      if (v->text.empty()) {
        Error(v->mark, "'where' is empty; remove it to count every event, or write a condition such as "
                       "\"type == 'purchase'\"");
      } else {
        size_t offset = 0;
        Result<Expr> expr = Expr::Parse(v->text, spec->fields, &offset);
        if (expr.ok()) {
          feature.where_text = v->text;
          feature.where = std::move(expr).value();
          NoteWhere(spec->features.size(), where->value);
        } else {
          Error(MarkInScalar(where->value, offset), "in 'where': " + expr.status().message());
        }
      }
    }
  }
  const Entry* field_entry = map->Find("field");
  if (agg_name && AggNeedsField(feature.agg) && field_entry != nullptr && field_entry->value.IsSequence()) {
    ReadFieldList(*field_entry, spec, &feature);
  } else if (agg_name && AggNeedsField(feature.agg)) {
    if (std::optional<std::string> field = ReadFieldPath(*map, "field")) {
      feature.field = *field;
      feature.field_slot = spec->fields.Intern(*field);
      NoteFieldUse(*field, FieldRole::kFeatureField, spec->features.size(), map->Find("field")->value.Mark());
    }
  }

  if (const Entry* window = map->Find("window")) {
    if (std::optional<WindowSpec> w = ParseWindow(*window)) feature.window = *w;
  }

  if (feature.agg == AggKind::kApproxCountDistinct) {
    if (std::optional<int> precision = ReadInt(*map, "precision")) feature.precision = *precision;
  }
  if (AggGivesJsonList(feature.agg)) {
    if (std::optional<int> k = ReadInt(*map, "k")) feature.k = *k;
  }
  if (agg_name && feature.agg == AggKind::kApproxPercentile) {
    // One feature per percentile, each an output column of its own.
    std::optional<std::vector<int64_t>> percentiles = ReadPercentiles(*map);
    if (!percentiles) return;
    for (int64_t ppm : *percentiles) {
      FeatureSpec one;
      one.agg = feature.agg;
      one.field = feature.field;
      one.field_slot = feature.field_slot;
      one.where_text = feature.where_text;
      if (feature.where) {  // Expr is move-only: parse the text again (it parsed above).
        size_t offset = 0;
        Result<Expr> again = Expr::Parse(feature.where_text, spec->fields, &offset);
        FRESHET_CHECK(again.ok());
        one.where = std::move(again).value();
      }
      one.window = feature.window;
      one.line = feature.line;
      one.name = PercentileFeatureName(feature.name, ppm);
      one.percentile_ppm = ppm;
      auto [it, inserted] = first_line_by_name->emplace(one.name, feature.line);
      if (!inserted && !feature.name.empty()) {
        Error(map->Find("percentiles")->value.Mark(),
              "percentile feature '" + one.name + "' has the name of the feature at line " + std::to_string(it->second) +
                  "; rename one of them");
      }
      spec->features.push_back(std::move(one));
    }
    return;
  }
  spec->features.push_back(std::move(feature));
}

void SpecParser::ParseFeatures(const Entry& entry, Spec* spec) {
  const SpecOption& option = *entry.option;
  if (!entry.value.IsSequence()) {
    Error(ValueMark(entry), std::string("'features' is ") + NodeKindName(entry.value) +
                                "; expected a list of features, each starting with '- name: ...'");
    return;
  }
  if (entry.value.size() == 0) {
    Error(ValueMark(entry), "'features' is empty; declare at least one feature, e.g. "
                            "- {name: n_events, aggregation: count, window: {type: lifetime}}");
    return;
  }
  std::map<std::string, int> first_line_by_name;
  for (const auto& item : entry.value) ParseFeature(item, option, spec, &first_line_by_name);
}

void SpecParser::ParseWatermark(const Entry& entry, Spec* spec) {
  std::optional<MapView> map =
      ReadMap(entry.value, ValueMark(entry), *entry.option, ChildSection(*entry.option), "'watermark'");
  if (!map) return;
  std::optional<int64_t> out_of_orderness = ReadDuration(*map, "max_out_of_orderness");
  std::optional<int64_t> lateness = ReadDuration(*map, "allowed_lateness");
  if (out_of_orderness && lateness) spec->watermark = WatermarkSpec{*out_of_orderness, *lateness};
}

void SpecParser::ParseDedup(const Entry& entry, Spec* spec) {
  std::optional<MapView> map =
      ReadMap(entry.value, ValueMark(entry), *entry.option, ChildSection(*entry.option), "'dedup'");
  if (!map) return;
  std::optional<std::string> field = ReadFieldPath(*map, "field");
  std::optional<int64_t> within = ReadDuration(*map, "within");
  if (!field || !within) return;
  for (const auto& [column, role] : {std::pair{spec->entity_field, "entity"},
                                     std::pair{spec->timestamp_field, "timestamp"}}) {
    if (*field == column) {
      Error(map->Find("field")->value.Mark(),
            "dedup field '" + *field + "' is the " + role + " field; the id must be a field of its own that the "
            "producer sets once per event and keeps on a resend, e.g. field: event_id");
      return;
    }
  }
  // Interned after every feature's fields, so that adding dedup to a spec leaves the features' slots as they were.
  spec->dedup = DedupSpec{*field, spec->fields.Intern(*field), *within};
  NoteFieldUse(*field, FieldRole::kDedup, 0, map->Find("field")->value.Mark());
}

void SpecParser::ParseSource(const Entry& entry, Spec* spec) {
  std::optional<MapView> map =
      ReadMap(entry.value, ValueMark(entry), *entry.option, ChildSection(*entry.option), "'source'");
  if (!map) return;
  std::optional<std::string> type = ReadChoice(*map, "type");
  if (!type) return;
  CheckCondition(*map, "type", *type);
  SourceSpec source;
  source.type = *type;
  if (*type == "file") {
    std::optional<std::string> path = ReadString(*map, "path");
    std::optional<bool> follow = ReadBool(*map, "follow");
    if (!path || !follow) return;
    source.path = CanonicalEventsPath(file_, *path);
    source.follow = *follow;
  }
  if (*type == "http") {
    std::optional<int64_t> window = ReadDuration(*map, "idempotency_window");
    if (!window) return;
    source.idempotency_window_ms = *window;
  }
  if (*type == "kafka") {
    std::optional<std::string> brokers = ReadString(*map, "brokers");
    std::optional<std::string> topic = ReadString(*map, "topic");
    std::optional<std::string> group = ReadString(*map, "group");
    std::optional<std::string> start = ReadChoice(*map, "start");
    std::optional<int64_t> session_timeout = ReadDuration(*map, "session_timeout");
    std::optional<int> max_lag = ReadInt(*map, "max_lag");
    std::optional<int64_t> max_rebalance = ReadDuration(*map, "max_rebalance");
    if (!brokers || !topic || !group || !start || !session_timeout || !max_lag || !max_rebalance) return;
    source.max_lag = *max_lag;
    source.max_rebalance_ms = *max_rebalance;
    source.brokers = *brokers;
    source.topic = *topic;
    source.group = *group;
    source.start = *start;
    source.session_timeout_ms = *session_timeout;
    if (!ReadKafkaProperties(*map, "source", &source.properties)) return;
  }
  spec->source = std::move(source);
}

bool SpecParser::ReadKafkaProperties(const MapView& map, const std::string& section,
                                     std::vector<std::pair<std::string, std::string>>* out) {
  const Entry* properties = map.Find("properties");
  if (properties == nullptr) return true;
  if (!properties->value.IsMap()) {
    Error(properties->value.Mark(), section + ".properties must be a map of librdkafka property names to values, "
                                              "e.g. properties: {security.protocol: SASL_SSL}");
    return false;
  }
  for (const auto& item : properties->value) {
    if (!item.second.IsScalar()) {
      Error(item.second.Mark(), section + ".properties." + item.first.as<std::string>() +
                                    " must be a single value (text or a number), as librdkafka takes it");
      return false;
    }
    out->emplace_back(item.first.as<std::string>(), item.second.as<std::string>());
  }
  return true;
}

void SpecParser::ParseOnline(const Entry& entry, Spec* spec) {
  std::optional<MapView> map =
      ReadMap(entry.value, ValueMark(entry), *entry.option, ChildSection(*entry.option), "'online'");
  if (!map) return;
  std::optional<std::string> type = ReadChoice(*map, "type");
  if (!type) return;
  CheckCondition(*map, "type", *type);
  spec->online.type = *type;
  if (*type == "redis") {
    if (auto host = ReadString(*map, "host")) spec->online.host = *host;
    if (auto port = ReadInt(*map, "port")) spec->online.port = *port;
    if (auto flush = ReadDuration(*map, "flush_interval")) spec->online.flush_interval_ms = *flush;
  }
}

void SpecParser::ParseServe(const Entry& entry, Spec* spec) {
  std::optional<MapView> map =
      ReadMap(entry.value, ValueMark(entry), *entry.option, ChildSection(*entry.option), "'serve'");
  if (!map) return;
  if (auto host = ReadString(*map, "host")) spec->serve.host = *host;
  if (auto port = ReadInt(*map, "port")) spec->serve.port = *port;
  if (auto max = ReadInt(*map, "max_connections")) spec->serve.max_connections = *max;
  // The server counts these in whole seconds; a shorter value would round to no time at all.
  for (const auto& [key, out] : {std::pair{"header_timeout", &spec->serve.header_timeout_ms},
                                 std::pair{"body_timeout", &spec->serve.body_timeout_ms}}) {
    std::optional<int64_t> ms = ReadDuration(*map, key);
    if (ms && *ms < 1000) {
      Error(map->Find(key)->value.Mark(), "serve." + std::string(key) + " must be at least 1s, got " +
                                              FormatDuration(*ms) + "; write " + key + ": 1s or more");
    } else if (ms) {
      *out = *ms;
    }
  }
  if (auto rate = ReadInt(*map, "min_body_rate_kib")) spec->serve.min_body_rate_kib = *rate;
  if (auto mib = ReadInt(*map, "max_buffered_request_mib")) spec->serve.max_buffered_request_mib = *mib;
}

void SpecParser::ParseCheckpoint(const Entry& entry, Spec* spec) {
  std::optional<MapView> map =
      ReadMap(entry.value, ValueMark(entry), *entry.option, ChildSection(*entry.option), "'checkpoint'");
  if (!map) return;
  if (auto interval = ReadDuration(*map, "interval")) spec->checkpoint.interval_ms = *interval;
  if (auto keep = ReadInt(*map, "keep")) spec->checkpoint.keep = *keep;
  if (auto path = ReadString(*map, "path")) spec->checkpoint.path = ResolveAgainstSpec(*path);
}

void SpecParser::ParseOffline(const Entry& entry, Spec* spec) {
  std::optional<MapView> map =
      ReadMap(entry.value, ValueMark(entry), *entry.option, ChildSection(*entry.option), "'offline'");
  if (!map) return;
  if (auto enabled = ReadBool(*map, "enabled")) spec->offline.enabled = *enabled;
  if (auto features = ReadBool(*map, "features")) {
    if (*features && !spec->watermark) {
      Error(map->Find("features")->value.Mark(),
            "the features table needs a 'watermark': without one no event is ever late, so nothing bounds how far "
            "back an event may arrive and the rows of out-of-order events could not be exact as of their time; add "
            "watermark: {max_out_of_orderness: 5s, allowed_lateness: 1m} (your own bounds), or remove this key");
    }
    spec->offline.features = *features && spec->watermark;
  }
  if (auto path = ReadString(*map, "path")) spec->offline.path = ResolveAgainstSpec(*path);
  if (auto retention = ReadDuration(*map, "retention")) spec->offline.retention_ms = *retention;
  if (auto every = ReadInt(*map, "compact_every")) spec->offline.compact_every = *every;
}

void SpecParser::ParseFeatureLog(const Entry& entry, Spec* spec) {
  std::optional<MapView> map =
      ReadMap(entry.value, ValueMark(entry), *entry.option, ChildSection(*entry.option), "'feature_log'");
  if (!map) return;
  if (auto enabled = ReadBool(*map, "enabled")) spec->feature_log.enabled = *enabled;
  if (auto rate = ReadFraction(*map, "sample_rate")) spec->feature_log.sample_rate = *rate;
  if (auto queue = ReadInt(*map, "queue")) spec->feature_log.queue = *queue;
  if (auto mb = ReadInt(*map, "max_buffered_mb")) spec->feature_log.max_buffered_bytes = int64_t{*mb} << 20;
}

void SpecParser::ParseSkew(const Entry& entry, Spec* spec) {
  std::optional<MapView> map =
      ReadMap(entry.value, ValueMark(entry), *entry.option, ChildSection(*entry.option), "'skew'");
  if (!map) return;
  if (auto rate = ReadFraction(*map, "max_mismatch_rate")) spec->skew.max_mismatch_rate = *rate;
  if (auto interval = ReadDuration(*map, "interval")) spec->skew.interval_ms = *interval;
}

void SpecParser::ParseFreshnessSlo(const Entry& entry, Spec* spec) {
  std::optional<MapView> map =
      ReadMap(entry.value, ValueMark(entry), *entry.option, ChildSection(*entry.option), "'freshness_slo'");
  if (!map) return;
  std::optional<int64_t> p99 = ReadDuration(*map, "p99");
  std::optional<int64_t> window = ReadDuration(*map, "window");
  if (p99 && window) spec->freshness_slo = FreshnessSloSpec{*p99, *window};
}

// ---------------------------------------------------------------------------------------------------
// The schema. `schema:` declares the type of event fields. The parse functions above note every field the
// spec reads (NoteFieldUse, NoteWhere); once the whole spec is read, CheckFieldUses checks those notes against
// the schema, or, without one, warns of unquoted words in `where` that are most likely meant as text.

// Other names for the schema's types, for hints: one name per type keeps specs alike.
constexpr std::pair<std::string_view, FieldType> kFieldTypeAliases[] = {
    {"double", FieldType::kNumber},   {"float", FieldType::kNumber},   {"decimal", FieldType::kNumber},
    {"numeric", FieldType::kNumber},  {"integer", FieldType::kInt},    {"long", FieldType::kInt},
    {"int64", FieldType::kInt},       {"boolean", FieldType::kBool},   {"str", FieldType::kString},
    {"text", FieldType::kString},     {"datetime", FieldType::kTimestamp}, {"time", FieldType::kTimestamp},
};

constexpr FieldType kDeclarableTypes[] = {FieldType::kString, FieldType::kNumber, FieldType::kInt, FieldType::kBool,
                                          FieldType::kTimestamp};

bool IsNumeric(FieldType type) { return type == FieldType::kNumber || type == FieldType::kInt; }

const SchemaFieldSpec* FindSchemaField(const Spec& spec, std::string_view path) {
  for (const SchemaFieldSpec& f : spec.schema) {
    if (f.path == path) return &f;
  }
  return nullptr;
}

// "'amount' is declared number in 'schema' (line 7)".
bool IsDerivedField(const Spec& spec, std::string_view path) {
  return std::any_of(spec.derived.begin(), spec.derived.end(), [&](const DerivedFieldSpec& d) { return d.name == path; });
}

// "credit.score" is under the prefix "credit".
bool IsUnder(std::string_view path, std::string_view prefix) {
  return path.size() > prefix.size() && path.starts_with(prefix) && path[prefix.size()] == '.';
}

// A field of a joined table ("profiles.segment" with a join of profiles) or of a lookup's answer ("credit.score"):
// its value is the row's, not the event's.
bool IsJoinedField(const Spec& spec, std::string_view path) {
  return std::any_of(spec.joins.begin(), spec.joins.end(), [&](const JoinSpec& j) { return IsUnder(path, j.table); }) ||
         std::any_of(spec.lookups.begin(), spec.lookups.end(),
                     [&](const LookupSpec& l) { return IsUnder(path, l.name); });
}

// Derived or joined: not an event field, so the schema does not declare it.
bool IsComputedField(const Spec& spec, std::string_view path) {
  return IsDerivedField(spec, path) || IsJoinedField(spec, path);
}

std::string Declared(const SchemaFieldSpec& f) {
  return "'" + f.path + "' is declared " + FieldTypeName(f.schema.type) + " in 'schema' (line " +
         std::to_string(f.line) + ")";
}

// "; did you mean 'amount'?" when a schema field is close to `path`; "" otherwise.
std::string DidYouMeanField(const Spec& spec, std::string_view path) {
  std::vector<std::string_view> paths;
  for (const SchemaFieldSpec& f : spec.schema) paths.push_back(f.path);
  if (auto close = ClosestMatch(path, paths)) return "; did you mean '" + std::string(*close) + "'?";
  return "";
}

// Whether a literal of `literal` type can ever equal a value of the declared `type`. null can: `field == null`
// tests for a JSON null.
bool LiteralFits(FieldType type, ValueType literal) {
  if (literal == ValueType::kNull) return true;
  switch (type) {
    case FieldType::kAny: return true;
    case FieldType::kString: return literal == ValueType::kString;
    case FieldType::kNumber:
    case FieldType::kInt: return literal == ValueType::kInt || literal == ValueType::kDouble;
    case FieldType::kBool: return literal == ValueType::kBool;
    case FieldType::kTimestamp: return literal == ValueType::kString || literal == ValueType::kInt;
  }
  return true;
}

// Whether values of two declared types can ever be equal.
bool TypesComparable(FieldType a, FieldType b) {
  if (IsNumeric(a) && IsNumeric(b)) return true;
  if (a == FieldType::kTimestamp || b == FieldType::kTimestamp) {
    const FieldType other = a == FieldType::kTimestamp ? b : a;
    return other == FieldType::kTimestamp || other == FieldType::kString || other == FieldType::kInt;
  }
  return a == b;
}

// The text of a condition with one operand's text replaced, for "write it as ..." hints: `type == purchase`
// with the right side replaced by 'purchase'. For `in`, the replaced operand alone.
std::string RewriteCondition(std::string_view where, const ExprCondition& condition, const ExprOperandInfo& operand,
                             std::string_view replacement) {
  if (condition.kind != ExprCondition::Kind::kCompare) return std::string(replacement);
  const size_t start = std::min(condition.lhs.offset, condition.rhs.offset);
  const size_t end = std::max(condition.lhs.offset + condition.lhs.length, condition.rhs.offset + condition.rhs.length);
  std::string out(where.substr(start, end - start));
  out.replace(operand.offset - start, operand.length, replacement);
  return out;
}

void SpecParser::NoteFieldUse(std::string path, FieldRole role, size_t feature, const YAML::Mark& mark) {
  field_uses_.push_back(FieldUse{std::move(path), role, feature, mark});
}

void SpecParser::NoteWhere(size_t feature, const YAML::Node& node) { where_uses_.push_back(WhereUse{feature, node}); }

// The quote to suggest inside a `where` value: the one its YAML scalar is not quoted with.
char SpecParser::QuoteFor(const YAML::Node& node) const {
  const YAML::Mark mark = node.Mark();
  const bool single_quoted = mark.pos >= 0 && static_cast<size_t>(mark.pos) < text_.size() && text_[mark.pos] == '\'';
  return single_quoted ? '"' : '\'';
}

std::optional<FieldType> SpecParser::ReadFieldType(const std::string& field, const std::string& text,
                                                   const YAML::Mark& mark) {
  std::vector<std::string_view> names;
  for (FieldType type : kDeclarableTypes) {
    if (text == FieldTypeName(type)) return type;
    names.push_back(FieldTypeName(type));
  }
  std::string message = "unknown type '" + text + "' for field '" + field + "'";
  std::string hint;
  for (const auto& [alias, type] : kFieldTypeAliases) {
    if (alias == text) hint = "; write " + std::string(FieldTypeName(type));
  }
  if (hint.empty()) {
    if (auto close = ClosestMatch(text, names)) hint = "; did you mean '" + std::string(*close) + "'?";
  }
  Error(mark, message + hint + (hint.ends_with('?') ? " " : "; ") +
                  "the types are string, number (an integer or a fraction), int, bool and timestamp");
  return std::nullopt;
}

void SpecParser::ParseSchema(const Entry& entry, Spec* spec) {
  static const std::string kEntrySection = "schema.<field>";
  const YAML::Node& node = entry.value;
  if (!node.IsMap() || node.size() == 0) {
    std::string got = node.IsMap() ? "empty" : node.IsNull() ? "without a value" : NodeKindName(node);
    Error(ValueMark(entry), "'schema' is " + got + "; expected a map of field paths to types, e.g. schema: "
                            "{user_id: string, ts: timestamp, amount: number}, or no 'schema' at all");
    return;
  }
  spec->has_schema = true;
  std::vector<YAML::Mark> marks;  // Of each entry's key, parallel to spec->schema.
  for (const auto& kv : node) {
    const YAML::Node& key = kv.first;
    const YAML::Node& value = kv.second;
    if (!key.IsScalar() || !IsFieldPath(key.Scalar())) {
      Error(key.Mark(), "invalid field path " + (key.IsScalar() ? "'" + key.Scalar() + "'" : NodeKindName(key)) +
                            " in 'schema': write field names (letters, digits, underscores) separated by dots, "
                            "e.g. amount or device.os");
      continue;
    }
    const std::string& path = key.Scalar();
    if (const SchemaFieldSpec* first = FindSchemaField(*spec, path)) {
      Error(key.Mark(), "field '" + path + "' is declared twice in 'schema'; the first is at line " +
                            std::to_string(first->line) + "; remove one of them");
      continue;
    }
    SchemaFieldSpec field;
    field.path = path;
    field.line = key.Mark().line + 1;
    if (value.IsScalar() && !value.Scalar().empty()) {
      std::optional<FieldType> type = ReadFieldType(path, value.Scalar(), value.Mark());
      if (!type) continue;
      field.schema.type = *type;
    } else if (value.IsMap()) {
      std::optional<MapView> map = ReadMap(value, key.Mark(), *entry.option, kEntrySection, "'schema." + path + "'");
      if (!map) continue;
      std::optional<ScalarValue> type_text = Scalar(*map, "type");
      if (!type_text) continue;  // Missing (ReadMap said so) or not a single value (Scalar said so).
      std::optional<FieldType> type = ReadFieldType(path, type_text->text, type_text->mark);
      if (!type) continue;
      CheckCondition(*map, "type", FieldTypeName(*type));
      field.schema.type = *type;
      if (IsNumeric(*type)) {
        if (std::optional<bool> from_string = ReadBool(*map, "from_string")) field.schema.from_string = *from_string;
      }
    } else {
      Error(value.IsNull() || value.Mark().is_null() ? key.Mark() : value.Mark(),
            "field '" + path + "' in 'schema' has " + (value.IsNull() ? std::string("no type") : NodeKindName(value)) +
                "; write its type (" + path + ": number; the types are string, number, int, bool and timestamp) "
                "or a map (" + path + ": {type: number, from_string: true})");
      continue;
    }
    if (field.schema.type == FieldType::kTimestamp && !spec->timestamp_field.empty() &&
        path != spec->timestamp_field) {
      Error(value.IsMap() ? key.Mark() : value.Mark(),
            "'" + path + "' is declared timestamp, the type of the spec's timestamp field ('" +
                spec->timestamp_field + "') and of no other; declare it string or int, as its events hold it");
    }
    spec->schema.push_back(std::move(field));
    marks.push_back(key.Mark());
  }
  // A field holds a value or nested fields, not both.
  for (size_t inner = 0; inner < spec->schema.size(); ++inner) {
    for (const SchemaFieldSpec& outer : spec->schema) {
      if (!spec->schema[inner].path.starts_with(outer.path + ".")) continue;
      Error(marks[inner], "'" + spec->schema[inner].path + "' is a field inside '" + outer.path + "', which line " +
                              std::to_string(outer.line) + " declares " + FieldTypeName(outer.schema.type) +
                              "; a field holds a value or nested fields, not both: remove one of the two");
    }
  }
}

void SpecParser::CheckFieldAgainstSchema(const Spec& spec, const FieldUse& use) {
  // A derived field's type is whatever its expression gives; the event fields it reads were checked.
  if (use.role == FieldRole::kFeatureField && IsComputedField(spec, use.path)) return;
  const SchemaFieldSpec* f = FindSchemaField(spec, use.path);
  std::string role;       // What the spec reads the field as, for messages.
  std::string type_hint;  // The type to declare it with.
  switch (use.role) {
    case FieldRole::kEntity: role = "the entity"; type_hint = "string (or int)"; break;
    case FieldRole::kTimestamp: role = "the timestamp"; type_hint = "timestamp"; break;
    case FieldRole::kDedup: role = "the dedup id"; type_hint = "string (or int)"; break;
    case FieldRole::kFeatureField:
      role = "read by feature '" + spec.features[use.feature].name + "'";
      type_hint = AggNeedsNumber(spec.features[use.feature].agg) ? "number" : "string (or the type its events hold)";
      break;
  }
  if (f == nullptr) {
    const std::string hint = DidYouMeanField(spec, use.path);
    Error(use.mark, "field '" + use.path + "' (" + role + ") is not declared in 'schema'" +
                        (hint.empty() ? "; with" : hint + " With") +
                        " a schema, every field the spec reads must be declared: add " + use.path + ": " + type_hint);
    return;
  }
  const FieldType type = f->schema.type;
  switch (use.role) {
    case FieldRole::kEntity:
      if (type != FieldType::kString && type != FieldType::kInt) {
        Error(use.mark, "the entity field " + Declared(*f) + ", but an entity is a non-empty string or an integer; "
                        "declare it string or int");
      }
      break;
    case FieldRole::kTimestamp:
      if (type != FieldType::kTimestamp) {
        Error(use.mark, "the timestamp field " + Declared(*f) + "; declare it timestamp (RFC 3339 text or epoch "
                        "milliseconds as an integer, as events hold it)");
      }
      break;
    case FieldRole::kDedup:
      if (type != FieldType::kString && type != FieldType::kInt) {
        Error(use.mark, "the dedup field " + Declared(*f) + ", but ids are strings or integers (read like the "
                        "entity), so no event would ever be a duplicate; declare it string or int");
      }
      break;
    case FieldRole::kFeatureField: {
      const AggKind agg = spec.features[use.feature].agg;
      if (AggNeedsNumber(agg) && !IsNumeric(type)) {
        Error(use.mark, std::string(AggKindName(agg)) + " needs a numeric field, but " + Declared(*f) +
                            "; aggregate a field declared number or int, or count its values with count_distinct");
      }
      break;
    }
  }
}

void SpecParser::ParseDerive(const Entry& entry, Spec* spec) {
  const SpecOption& option = *entry.option;
  if (!entry.value.IsSequence()) {
    Error(ValueMark(entry), std::string("'derive' is ") + NodeKindName(entry.value) +
                                "; expected a list, each item like - {name: amount_usd, expr: \"amount * 1.1\"}");
    return;
  }
  std::map<std::string, int> line_by_name;
  for (const auto& item : entry.value) {
    std::optional<MapView> map = ReadMap(item, item.Mark(), option, ChildSection(option), "each item of 'derive'");
    if (!map) continue;
    DerivedFieldSpec derived;
    derived.line = map->mark.line + 1;
    std::optional<std::string> name = ReadName(*map, "name");
    const Entry* expr_entry = map->Find("expr");
    std::optional<ScalarValue> expr_text = expr_entry != nullptr ? Scalar(*map, "expr") : std::nullopt;
    if (!name || !expr_text) continue;
    const YAML::Mark& name_mark = map->Find("name")->value.Mark();
    if (*name == spec->entity_field || *name == spec->timestamp_field) {
      Error(name_mark, "derived field '" + *name + "' would replace the " +
                           (*name == spec->entity_field ? "entity" : "timestamp") + " field; pick another name");
      continue;
    }
    if (auto [it, inserted] = line_by_name.emplace(*name, derived.line); !inserted) {
      Error(name_mark, "duplicate derived field '" + *name + "'; the first one is at line " + std::to_string(it->second));
      continue;
    }
    // Its name must not be a field that an earlier expression reads from the event: that expression would
    // see the event's value, and a reader of the spec would expect this one.
    const auto& paths = spec->fields.paths();
    if (std::find(paths.begin(), paths.end(), *name) != paths.end()) {
      Error(name_mark, "derived field '" + *name + "' is read by an earlier derived field as an event field; "
                       "define '" + *name + "' above the derived fields that use it");
      continue;
    }
    size_t offset = 0;
    Result<ValueExpr> expr = ValueExpr::Parse(expr_text->text, spec->fields, &offset);
    if (!expr.ok()) {
      Error(MarkInScalar(expr_entry->value, offset), "in 'expr' of derived field '" + *name + "': " + expr.status().message());
      continue;
    }
    // With a schema, the event fields it reads must be declared (the derived fields above it need not be).
    if (spec->has_schema) {
      for (const ValueExpr::FieldReference& ref : expr->FieldReferences()) {
        if (line_by_name.count(ref.path) > 0 || FindSchemaField(*spec, ref.path) != nullptr) continue;
        if (IsJoinedField(*spec, ref.path)) continue;
        Error(MarkInScalar(expr_entry->value, ref.offset),
              "in 'expr' of derived field '" + *name + "': unknown field '" + ref.path +
                  "': 'schema' does not declare it" + DidYouMeanField(*spec, ref.path) +
                  (DidYouMeanField(*spec, ref.path).empty() ? "; if events carry it, add it to 'schema' with its type"
                                                            : ""));
      }
    }
    // Interned after its expression, so that the expression cannot read the field being defined.
    const auto& now = spec->fields.paths();
    if (std::find(now.begin(), now.end(), *name) != now.end()) {
      Error(MarkInScalar(expr_entry->value, 0), "derived field '" + *name + "' reads itself; an expression can read "
                                                "event fields and the derived fields above it");
      continue;
    }
    derived.name = *name;
    derived.expr_text = expr_text->text;
    derived.canonical = expr->ToString();
    derived.slot = spec->fields.Intern(*name);
    spec->fields.AddDerived(derived.slot, std::make_shared<const ValueExpr>(std::move(expr).value()));
    spec->derived.push_back(std::move(derived));
  }
}

void SpecParser::ParseTables(const Entry& entry, Spec* spec) {
  const SpecOption& option = *entry.option;
  if (!entry.value.IsSequence()) {
    Error(ValueMark(entry), std::string("'tables' is ") + NodeKindName(entry.value) +
                                "; expected a list, each item like - {name: profiles, key: user_id}");
    return;
  }
  for (const auto& item : entry.value) {
    std::optional<MapView> map = ReadMap(item, item.Mark(), option, ChildSection(option), "each item of 'tables'");
    if (!map) continue;
    TableSpec table;
    table.line = map->mark.line + 1;
    std::optional<std::string> name = ReadName(*map, "name");
    std::optional<std::string> key = ReadFieldPath(*map, "key");
    if (!name || !key) continue;
    if (map->Find("valid_from") != nullptr) {
      std::optional<std::string> path = ReadFieldPath(*map, "valid_from");
      if (!path) continue;
      table.valid_from = *path;
    }
    for (const TableSpec& other : spec->tables) {
      if (other.name == *name) {
        Error(map->Find("name")->value.Mark(), "duplicate table '" + *name + "'; the first one is at line " +
                                                   std::to_string(other.line));
      }
    }
    table.name = *name;
    table.key = *key;
    if (const Entry* source = map->Find("source")) {
      std::optional<MapView> source_map =
          ReadMap(source->value, ValueMark(*source), *source->option, ChildSection(*source->option),
                  "'tables[].source'");
      if (!source_map) continue;
      std::optional<std::string> type = ReadChoice(*source_map, "type");
      if (!type) continue;
      CheckCondition(*source_map, "type", *type);
      table.source_type = *type;
      if (*type == "file") {
        std::optional<std::string> path = ReadString(*source_map, "path");
        std::optional<std::string> format = ReadChoice(*source_map, "format");
        if (!path || !format) continue;
        table.path = CanonicalEventsPath(file_, *path);
        table.format = *format;
      } else {
        std::optional<std::string> brokers = ReadString(*source_map, "brokers");
        std::optional<std::string> topic = ReadString(*source_map, "topic");
        std::optional<int64_t> catch_up = ReadDuration(*source_map, "catch_up");
        if (!brokers || !topic || !catch_up ||
            !ReadKafkaProperties(*source_map, "tables[].source", &table.properties)) {
          continue;
        }
        table.brokers = *brokers;
        table.topic = *topic;
        table.catch_up_ms = *catch_up;
      }
    }
    spec->tables.push_back(std::move(table));
  }
}

void SpecParser::ParseJoins(const Entry& entry, Spec* spec) {
  const SpecOption& option = *entry.option;
  if (!entry.value.IsSequence()) {
    Error(ValueMark(entry), std::string("'joins' is ") + NodeKindName(entry.value) +
                                "; expected a list, each item like - {table: profiles, on: user_id}");
    return;
  }
  for (const auto& item : entry.value) {
    std::optional<MapView> map = ReadMap(item, item.Mark(), option, ChildSection(option), "each item of 'joins'");
    if (!map) continue;
    JoinSpec join;
    join.line = map->mark.line + 1;
    std::optional<std::string> table = ReadName(*map, "table");
    std::optional<std::string> on = ReadFieldPath(*map, "on");
    if (!table || !on) continue;
    const YAML::Mark& table_mark = map->Find("table")->value.Mark();
    for (size_t t = 0; t < spec->tables.size(); ++t) {
      if (spec->tables[t].name == *table) join.table_index = static_cast<int>(t);
    }
    if (join.table_index < 0) {
      std::vector<std::string_view> names;
      for (const TableSpec& t : spec->tables) names.push_back(t.name);
      const auto close = ClosestMatch(*table, names);
      Error(table_mark, "join of unknown table '" + *table + "'" +
                            (close ? "; did you mean '" + std::string(*close) + "'?"
                                   : "; declare it in 'tables' (" + (names.empty() ? std::string("none is declared")
                                                                                   : "declared: " + Join(names)) +
                                         ")"));
      continue;
    }
    for (const JoinSpec& other : spec->joins) {
      if (other.table == *table) {
        Error(table_mark, "table '" + *table + "' is joined twice (first at line " + std::to_string(other.line) +
                              "); its fields are named " + *table + ".<column>, so one join per table");
      }
    }
    join.table = *table;
    join.on = *on;
    spec->joins.push_back(std::move(join));
    join_marks_.push_back(map->Find("on")->value.Mark());
  }
}

bool SpecParser::ReadTemplateFields(const std::string& text, const YAML::Mark& mark, LookupSpec* lookup) {
  size_t at = 0;
  while ((at = text.find('{', at)) != std::string::npos) {
    const size_t close = text.find('}', at);
    const std::string field = close == std::string::npos ? "" : text.substr(at + 1, close - at - 1);
    const bool valid = !field.empty() && std::all_of(field.begin(), field.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.';
    });
    if (!valid) {
      Error(mark, "'" + text + "': each {...} must name an event field, like {user_id} or {device.id}");
      return false;
    }
    lookup->template_fields.push_back(field);
    at = close + 1;
  }
  if (text.find('}') != std::string::npos && lookup->template_fields.empty()) {
    Error(mark, "'" + text + "': a '}' without its '{'");
    return false;
  }
  return true;
}

void SpecParser::ParseLookups(const Entry& entry, Spec* spec) {
  const SpecOption& option = *entry.option;
  if (!entry.value.IsSequence()) {
    Error(ValueMark(entry), std::string("'lookups' is ") + NodeKindName(entry.value) +
                                "; expected a list, each item like - {name: credit, type: redis, key: \"credit:{user_id}\"}");
    return;
  }
  for (const auto& item : entry.value) {
    std::optional<MapView> map = ReadMap(item, item.Mark(), option, ChildSection(option), "each item of 'lookups'");
    if (!map) continue;
    LookupSpec lookup;
    lookup.line = map->mark.line + 1;
    std::optional<std::string> name = ReadName(*map, "name");
    std::optional<std::string> type = ReadChoice(*map, "type");
    if (!name || !type) continue;
    CheckCondition(*map, "type", *type);
    for (const LookupSpec& other : spec->lookups) {
      if (other.name == *name) {
        Error(map->Find("name")->value.Mark(), "duplicate lookup '" + *name + "'; the first one is at line " +
                                                   std::to_string(other.line));
      }
    }
    for (const TableSpec& table : spec->tables) {
      if (table.name == *name) {
        Error(map->Find("name")->value.Mark(), "lookup '" + *name + "' has the name of the table at line " +
                                                   std::to_string(table.line) + "; both name fields <name>.<field>");
      }
    }
    lookup.name = *name;
    lookup.type = *type;
    const char* template_key = *type == "redis" ? "key" : "url";
    std::optional<std::string> text = ReadString(*map, template_key);
    if (!text) continue;
    (*type == "redis" ? lookup.key : lookup.url) = *text;
    if (!ReadTemplateFields(*text, map->Find(template_key)->value.Mark(), &lookup)) continue;
    if (*type == "http" && !text->starts_with("http://")) {
      Error(map->Find("url")->value.Mark(), "'" + *text + "': the url must start with http:// (https is not "
                                            "supported; put a local proxy in front of a TLS service)");
      continue;
    }
    if (*type == "redis") {
      std::optional<std::string> host = ReadString(*map, "host");
      std::optional<int> port = ReadInt(*map, "port");
      if (!host || !port) continue;
      lookup.host = *host;
      lookup.port = *port;
    }
    std::optional<int64_t> timeout = ReadDuration(*map, "timeout");
    std::optional<int> in_flight = ReadInt(*map, "max_in_flight");
    std::optional<std::string> on_timeout = ReadChoice(*map, "on_timeout");
    if (!timeout || !in_flight || !on_timeout) continue;
    lookup.timeout_ms = *timeout;
    lookup.max_in_flight = *in_flight;
    lookup.dead_letter_on_timeout = *on_timeout == "dead_letter";
    if (const Entry* cache = map->Find("cache")) {
      std::optional<MapView> cache_map =
          ReadMap(cache->value, ValueMark(*cache), *cache->option, ChildSection(*cache->option), "'lookups[].cache'");
      if (!cache_map) continue;
      std::optional<int64_t> ttl = ReadDuration(*cache_map, "ttl");
      std::optional<int> entries = ReadInt(*cache_map, "max_entries");
      if (!ttl || !entries) continue;
      lookup.cache_ttl_ms = *ttl;
      lookup.cache_max_entries = *entries;
    }
    spec->lookups.push_back(std::move(lookup));
    lookup_marks_.push_back(map->Find(template_key)->value.Mark());
  }
}

// After every expression: the slots named <table>.<column> are filled from the joined row, and each join's `on`
// field is read from the event (interned last, so that adding a join leaves the other fields' slots as they were).
void SpecParser::ResolveJoinedFields(Spec* spec) {
  const size_t read_slots = spec->fields.size();
  for (size_t slot = 0; slot < read_slots; ++slot) {
    const std::string path = spec->fields.paths()[slot];
    for (size_t j = 0; j < spec->joins.size(); ++j) {
      const std::string& table = spec->joins[j].table;
      if (path.size() > table.size() && path.starts_with(table) && path[table.size()] == '.') {
        spec->fields.AddJoined(static_cast<int>(slot), static_cast<int>(j), path.substr(table.size() + 1));
      }
    }
  }
  for (size_t slot = 0; slot < read_slots; ++slot) {
    const std::string path = spec->fields.paths()[slot];
    for (size_t l = 0; l < spec->lookups.size(); ++l) {
      const std::string& name = spec->lookups[l].name;
      if (IsUnder(path, name)) spec->fields.AddLookedUp(static_cast<int>(slot), static_cast<int>(l), path.substr(name.size() + 1));
    }
  }
  for (LookupSpec& lookup : spec->lookups) {
    // The template reads event fields, before anything is derived, joined or looked up.
    for (const std::string& field : lookup.template_fields) {
      if (IsComputedField(*spec, field)) {
        Error(lookup_marks_[static_cast<size_t>(&lookup - spec->lookups.data())],
              "lookup '" + lookup.name + "' reads '{" + field + "}', a " +
                  (IsDerivedField(*spec, field) ? "derived" : "joined or looked-up") +
                  " field; its key must be made of fields of the event itself");
        continue;
      }
      if (spec->has_schema && FindSchemaField(*spec, field) == nullptr) {
        Error(lookup_marks_[static_cast<size_t>(&lookup - spec->lookups.data())],
              "lookup '" + lookup.name + "' reads '{" + field + "}', which 'schema' does not declare" +
                  DidYouMeanField(*spec, field));
        continue;
      }
      lookup.template_slots.push_back(spec->fields.Intern(field));
    }
  }
  for (JoinSpec& join : spec->joins) {
    // The key is read from the event before any field is derived or joined.
    if (IsComputedField(*spec, join.on)) {
      Error(join_marks_[static_cast<size_t>(&join - spec->joins.data())],
            "join of '" + join.table + "' on '" + join.on + "', a " +
                (IsDerivedField(*spec, join.on) ? "derived" : "joined") +
                " field; `on` must be a field of the event itself, since joins are made before derived fields");
      continue;
    }
    join.on_slot = spec->fields.Intern(join.on);
  }
}

void SpecParser::ParseRequestFeatures(const Entry& entry, Spec* spec) {
  const SpecOption& option = *entry.option;
  if (!entry.value.IsSequence()) {
    Error(ValueMark(entry), std::string("'request_features' is ") + NodeKindName(entry.value) +
                                "; expected a list, each item like - {name: ratio, expr: \"param.amount / avg_amount\"}");
    return;
  }
  RequestFeatures& request = spec->request_features;
  request.fields.Intern(spec->entity_field);
  request.fields.Intern(spec->timestamp_field);
  std::map<std::string, int> line_by_name;
  for (const FeatureSpec& f : spec->features) line_by_name.emplace(f.name, f.line);
  std::vector<bool> resolved;  // Per slot of request.fields: its input is known.
  for (const auto& item : entry.value) {
    std::optional<MapView> map =
        ReadMap(item, item.Mark(), option, ChildSection(option), "each item of 'request_features'");
    if (!map) continue;
    RequestFeatureSpec feature;
    feature.line = map->mark.line + 1;
    std::optional<std::string> name = ReadName(*map, "name");
    const Entry* expr_entry = map->Find("expr");
    std::optional<ScalarValue> expr_text = expr_entry != nullptr ? Scalar(*map, "expr") : std::nullopt;
    if (!name || !expr_text) continue;
    const YAML::Mark& name_mark = map->Find("name")->value.Mark();
    CheckColumnName(name_mark, "request feature name", *name, *spec);
    if (auto [it, inserted] = line_by_name.emplace(*name, feature.line); !inserted) {
      Error(name_mark, "request feature '" + *name + "' has the name of the feature or request feature at line " +
                           std::to_string(it->second) + "; names are output columns and must be unique");
      continue;
    }
    size_t offset = 0;
    Result<ValueExpr> expr = ValueExpr::Parse(expr_text->text, request.fields, &offset);
    if (!expr.ok()) {
      Error(MarkInScalar(expr_entry->value, offset),
            "in 'expr' of request feature '" + *name + "': " + expr.status().message());
      continue;
    }
    // Every name it reads is a feature, an earlier request feature, a parameter, the entity or the time.
    request.inputs.resize(request.fields.size());
    resolved.resize(request.fields.size(), false);
    for (const ValueExpr::FieldReference& ref : expr->FieldReferences()) {
      const int slot = request.fields.Intern(ref.path);
      if (resolved[slot]) continue;  // By an earlier reference.
      resolved[slot] = true;
      RequestInput input;
      if (slot == kEntitySlot) {
        input.kind = RequestInput::Kind::kEntity;
      } else if (ref.path.starts_with("param.") && ref.path.find('.', 6) == std::string::npos) {
        input.kind = RequestInput::Kind::kParam;
        input.param = ref.path.substr(6);
      } else {
        auto by_name = [&](const auto& list) {
          for (size_t k = 0; k < list.size(); ++k) {
            if (list[k].name == ref.path) return static_cast<int>(k);
          }
          return -1;
        };
        input.index = by_name(spec->features);
        input.kind = RequestInput::Kind::kFeature;
        if (input.index < 0) {
          input.index = by_name(request.items);
          input.kind = RequestInput::Kind::kRequestFeature;
        }
        if (input.index < 0) {
          std::string valid;
          for (const FeatureSpec& f : spec->features) valid += (valid.empty() ? "" : ", ") + f.name;
          for (const RequestFeatureSpec& r : request.items) valid += ", " + r.name;
          Error(MarkInScalar(expr_entry->value, ref.offset),
                "in 'expr' of request feature '" + *name + "': '" + ref.path + "' is " +
                    (ref.path == *name ? std::string("this request feature itself")
                                       : "neither a feature nor an earlier request feature") +
                    "; an expression reads features (" + valid + "), param.NAME (a request parameter), '" +
                    spec->entity_field + "' (the entity) and '" + spec->timestamp_field + "' (the as-of time)");
          input.kind = RequestInput::Kind::kParam;  // Never evaluated: the spec is refused.
        }
      }
      request.inputs[slot] = std::move(input);
    }
    feature.name = *name;
    feature.expr_text = expr_text->text;
    feature.expr = std::make_shared<const ValueExpr>(std::move(expr).value());
    request.items.push_back(std::move(feature));
  }
  // Slots 0 and 1 (entity, time) get theirs even when no expression names them.
  request.inputs.resize(request.fields.size());
  request.inputs[kEntitySlot].kind = RequestInput::Kind::kEntity;
  request.inputs[kTimestampSlot].kind = RequestInput::Kind::kTime;
  for (const RequestInput& input : request.inputs) {
    if (input.kind == RequestInput::Kind::kFeature) request.feature_inputs.push_back(input.index);
    if (input.kind == RequestInput::Kind::kParam && !input.param.empty()) request.params.push_back(input.param);
  }
  std::sort(request.feature_inputs.begin(), request.feature_inputs.end());
  request.feature_inputs.erase(std::unique(request.feature_inputs.begin(), request.feature_inputs.end()),
                               request.feature_inputs.end());
  std::sort(request.params.begin(), request.params.end());
}

void SpecParser::CheckWhereAgainstSchema(const Spec& spec, const WhereUse& use) {
  const FeatureSpec& feature = spec.features[use.feature];
  const std::string_view where = feature.where_text;
  const char quote = QuoteFor(use.node);
  const auto at = [&](const ExprOperandInfo& o) { return MarkInScalar(use.node, o.offset); };
  const auto source = [&](const ExprOperandInfo& o) { return where.substr(o.offset, o.length); };
  const auto quoted = [&](std::string_view text) { return std::string(1, quote) + std::string(text) + quote; };
  // The schema entry of a field operand, or nullptr after reporting it unknown.
  const auto declared = [&](const ExprOperandInfo& o) -> const SchemaFieldSpec* {
    if (IsComputedField(spec, o.path)) return nullptr;  // Of the type its expression or row gives: not checked.
    const SchemaFieldSpec* f = FindSchemaField(spec, o.path);
    if (f == nullptr) {
      std::string hint = DidYouMeanField(spec, o.path);
      Error(at(o), "in 'where': unknown field '" + o.path + "': 'schema' does not declare it" +
                       (hint.empty() ? "; if events carry it, add it to 'schema' with its type" : hint));
    }
    return f;
  };
  // A literal that a value of the field's declared type never equals.
  const auto mismatch = [&](const ExprCondition& condition, const SchemaFieldSpec& f, const ExprOperandInfo& literal) {
    std::string message = "in 'where': " + Declared(f) + ", but " + std::string(source(literal)) + " is ";
    switch (literal.literal_type) {
      case ValueType::kString: message += "text"; break;
      case ValueType::kBool: message += "a boolean"; break;
      default: message += "a number"; break;
    }
    message += ", so the comparison is never true";
    std::string_view text = source(literal);
    if (f.schema.type == FieldType::kString && literal.literal_type != ValueType::kString) {
      message += "; to compare with the text, quote it: " + RewriteCondition(where, condition, literal, quoted(text));
    } else if (IsNumeric(f.schema.type) && literal.literal_type == ValueType::kString) {
      const std::string_view inner = text.substr(1, text.size() - 2);
      if (NumberInString(inner, FieldType::kNumber)) {
        message += "; write the number without quotes: " + RewriteCondition(where, condition, literal, inner);
      } else {
        message += "; compare it with a number, such as " + f.path + " > 10";
      }
    } else if (f.schema.type == FieldType::kBool) {
      message += "; compare it with true or false";
    }
    Error(at(literal), message);
  };
  const auto ordering_bool = [&](const ExprCondition& condition, const SchemaFieldSpec& f, const ExprOperandInfo& o) {
    if (condition.op == "==" || condition.op == "!=" || f.schema.type != FieldType::kBool) return false;
    Error(at(o), "in 'where': '" + condition.op + "' orders values, but " + Declared(f) +
                     " and booleans have no order, so it is never true; use == or !=");
    return true;
  };

  for (const ExprCondition& condition : feature.where->Conditions()) {
    const ExprOperandInfo& lhs = condition.lhs;
    switch (condition.kind) {
      case ExprCondition::Kind::kTest: {
        if (!lhs.is_field) break;
        const SchemaFieldSpec* f = declared(lhs);
        if (f != nullptr && f->schema.type != FieldType::kBool) {
          Error(at(lhs), "in 'where': a field alone is a condition that holds only when it is the boolean true, "
                         "but " + Declared(*f) + ", so it is never true; compare it, such as " + f->path +
                         (IsNumeric(f->schema.type) ? " > 0" : " == " + quoted("yes")));
        }
        break;
      }
      case ExprCondition::Kind::kIn: {
        if (!lhs.is_field) break;
        const SchemaFieldSpec* f = declared(lhs);
        if (f == nullptr) break;
        for (const ExprOperandInfo& item : condition.list) {
          if (!LiteralFits(f->schema.type, item.literal_type)) mismatch(condition, *f, item);
        }
        break;
      }
      case ExprCondition::Kind::kCompare: {
        const ExprOperandInfo& rhs = condition.rhs;
        if (lhs.is_field && rhs.is_field) {
          const SchemaFieldSpec* left = declared(lhs);
          const SchemaFieldSpec* right = FindSchemaField(spec, rhs.path);
          if (right == nullptr) {
            // Most likely text written without quotes: `type == purchase`.
            const std::string hint = DidYouMeanField(spec, rhs.path);
            Error(at(rhs), "in 'where': " + rhs.path + " (without quotes) is a field name, and 'schema' does not "
                           "declare a field '" + rhs.path + "'" + (hint.empty() ? "; to" : hint + " Or, to") +
                           " compare with the text, quote it: " +
                           RewriteCondition(where, condition, rhs, quoted(source(rhs))));
            break;
          }
          if (left == nullptr) break;
          if (!TypesComparable(left->schema.type, right->schema.type)) {
            Error(at(rhs), "in 'where': " + Declared(*left) + " and " + Declared(*right) +
                               ", so the comparison is never true");
          } else if (!ordering_bool(condition, *left, lhs)) {
            ordering_bool(condition, *right, rhs);
          }
          break;
        }
        if (!lhs.is_field && !rhs.is_field) break;
        const ExprOperandInfo& field = lhs.is_field ? lhs : rhs;
        const ExprOperandInfo& literal = lhs.is_field ? rhs : lhs;
        const SchemaFieldSpec* f = declared(field);
        if (f == nullptr) break;
        if (!LiteralFits(f->schema.type, literal.literal_type)) {
          mismatch(condition, *f, literal);
        } else {
          ordering_bool(condition, *f, field);
        }
        break;
      }
    }
  }
}

// Whether `path` is `<table>.<column>` of a table some join reads.
bool IsJoinedColumn(const Spec& spec, std::string_view path) {
  for (const JoinSpec& join : spec.joins) {
    if (join.table_index < 0) continue;
    const std::string& table = spec.tables[static_cast<size_t>(join.table_index)].name;
    if (path.size() > table.size() + 1 && path.starts_with(table) && path[table.size()] == '.') return true;
  }
  return false;
}

// Without a schema: a comparison of a field with a field on its right that is named nowhere else in the spec is most
// likely text without quotes (`type == purchase`, always false). A warning, not an error: the spec may mean it.
void SpecParser::WarnUnquotedWords(Spec* spec) {
  std::vector<std::string> named;  // Fields the spec reads other than as one side of a field-to-field comparison.
  for (const FieldUse& use : field_uses_) named.push_back(use.path);
  for (const WhereUse& use : where_uses_) {
    for (const ExprCondition& c : spec->features[use.feature].where->Conditions()) {
      const bool field_to_field = c.kind == ExprCondition::Kind::kCompare && c.lhs.is_field && c.rhs.is_field;
      if (field_to_field) continue;
      if (c.lhs.is_field) named.push_back(c.lhs.path);
      if (c.kind == ExprCondition::Kind::kCompare && c.rhs.is_field) named.push_back(c.rhs.path);
    }
  }
  const auto is_named = [&](const std::string& path) {
    return std::find(named.begin(), named.end(), path) != named.end();
  };
  for (const WhereUse& use : where_uses_) {
    const FeatureSpec& feature = spec->features[use.feature];
    for (const ExprCondition& c : feature.where->Conditions()) {
      if (c.kind != ExprCondition::Kind::kCompare || !c.lhs.is_field || !c.rhs.is_field) continue;
      // Only the right side: `price > cost` with cost read elsewhere compares two fields on purpose, as does a
      // joined table's column (`amount > profiles.credit_limit`).
      if (is_named(c.rhs.path) || IsJoinedColumn(*spec, c.rhs.path)) continue;
      const ExprOperandInfo* word = &c.rhs;
      const std::string quoted = std::string(1, QuoteFor(use.node)) + word->path + QuoteFor(use.node);
      const YAML::Mark mark = MarkInScalar(use.node, word->offset);
      SpecDiagnostic d;
      d.line = mark.line + 1;
      d.column = mark.column + 1;
      d.message = "in 'where' of feature '" + feature.name + "': " + word->path + " (without quotes) is a field "
                  "name, and nothing else in the spec reads a field '" + word->path + "', so this compares with a "
                  "field that events most likely lack (always false); to compare with the text, quote it: " +
                  RewriteCondition(feature.where_text, c, *word, quoted);
      spec->warnings.push_back(std::move(d));
    }
  }
}

void SpecParser::CheckFieldUses(Spec* spec) {
  if (!spec->has_schema) {
    WarnUnquotedWords(spec);
    return;
  }
  for (const FieldUse& use : field_uses_) CheckFieldAgainstSchema(*spec, use);
  for (const WhereUse& use : where_uses_) CheckWhereAgainstSchema(*spec, use);
  for (size_t slot = 0; slot < spec->fields.size(); ++slot) {
    if (const SchemaFieldSpec* f = FindSchemaField(*spec, spec->fields.paths()[slot])) {
      spec->fields.SetSchema(slot, f->schema);
    }
  }
}

void SpecParser::ParseTop(const YAML::Node& root, Spec* spec) {
  static const SpecOption kRoot("", "", SpecValueType::kMap, "");
  YAML::Mark start;
  start.line = start.column = 0;
  if (root.IsNull()) {
    Error(start, "the spec is empty; expected a map with the keys " + Join(SectionKeys("")) +
                     " (required: name, entity, timestamp, features)");
    return;
  }
  std::optional<MapView> map = ReadMap(root, start, kRoot, "", "the spec");
  if (!map) return;
  if (auto name = ReadString(*map, "name")) spec->name = *name;
  ReadEntity(*map, spec);
  if (auto timestamp = ReadFieldPath(*map, "timestamp")) spec->timestamp_field = *timestamp;
  if (!spec->entity_field.empty() && spec->entity_field == spec->timestamp_field) {
    Error(map->Find("timestamp")->value.Mark(),
          "entity and timestamp are both '" + spec->entity_field + "'; they must be different fields");
  }
  // Slots 0 and 1 are the entity and timestamp fields, then a composite key's other fields, before any field a
  // feature reads.
  spec->fields.Intern(spec->entity_field);
  spec->fields.Intern(spec->timestamp_field);
  if (spec->entity_fields.size() > 1) {
    std::vector<int> key_slots;
    for (const std::string& field : spec->entity_fields) {
      if (field == spec->timestamp_field) {
        Error(map->Find("entity")->value.Mark(), "'" + field + "' is both a key field and the timestamp; they must "
                                                 "be different fields");
      }
      key_slots.push_back(spec->fields.Intern(field));
    }
    spec->fields.SetKeySlots(std::move(key_slots));
  }
  for (const std::string& field : spec->entity_fields) {
    NoteFieldUse(field, FieldRole::kEntity, 0, map->Find("entity")->value.Mark());
  }
  if (!spec->timestamp_field.empty()) {
    NoteFieldUse(spec->timestamp_field, FieldRole::kTimestamp, 0, map->Find("timestamp")->value.Mark());
  }
  if (const Entry* e = map->Find("schema")) ParseSchema(*e, spec);

  if (const Entry* e = map->Find("watermark")) ParseWatermark(*e, spec);
  if (auto ttl = ReadDuration(*map, "ttl")) {
    spec->ttl_ms = *ttl;
    if (!spec->watermark) {
      Error(map->Find("ttl")->value.Mark(),
            "ttl needs a watermark: expiry is measured against the low watermark so that replays expire the same "
            "entities; add watermark: {max_out_of_orderness: 5s, allowed_lateness: 0s} or remove ttl");
    }
  }
  if (const Entry* e = map->Find("source")) ParseSource(*e, spec);
  if (auto parallelism = ReadInt(*map, "parallelism")) spec->parallelism = *parallelism;
  if (const Entry* e = map->Find("online")) ParseOnline(*e, spec);
  if (const Entry* e = map->Find("serve")) ParseServe(*e, spec);
  if (const Entry* e = map->Find("checkpoint")) ParseCheckpoint(*e, spec);
  if (const Entry* e = map->Find("freshness_slo")) ParseFreshnessSlo(*e, spec);
  // The features table defaults to on with a watermark and off without one (see ParseOffline).
  spec->offline.features = spec->watermark.has_value();
  if (const Entry* e = map->Find("offline")) ParseOffline(*e, spec);
  if (const Entry* e = map->Find("feature_log")) ParseFeatureLog(*e, spec);
  if (const Entry* e = map->Find("skew")) ParseSkew(*e, spec);
  if (const Entry* e = map->Find("tables")) ParseTables(*e, spec);
  if (const Entry* e = map->Find("joins")) ParseJoins(*e, spec);  // Before the expressions that read joined fields.
  if (const Entry* e = map->Find("lookups")) ParseLookups(*e, spec);  // Likewise.
  if (const Entry* e = map->Find("derive")) ParseDerive(*e, spec);  // Before the features that read them.
  if (const Entry* e = map->Find("features")) ParseFeatures(*e, spec);
  if (const Entry* e = map->Find("dedup")) ParseDedup(*e, spec);
  ResolveJoinedFields(spec);
  if (const Entry* e = map->Find("request_features")) ParseRequestFeatures(*e, spec);  // They read features.
  CheckFieldUses(spec);
}

// yaml-cpp reports tabs in indentation as a generic syntax error; say what it is.
std::string TabHint(std::string_view text, int line) {
  int current = 0;
  size_t start = 0;
  while (current < line && start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) return "";
    start = nl + 1;
    ++current;
  }
  std::string_view row = text.substr(start, text.find('\n', start) - start);
  if (row.find('\t') != std::string_view::npos) return " (this line has a tab; YAML indents with spaces only)";
  return "";
}

// Records the shape of one YAML document from the parser's events: enough to tell an empty document
// from a real one, and where it starts. Used to find what YAML::Load would silently skip.
class DocumentProbe : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override { start_ = mark; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& mark, YAML::anchor_t) override { Saw(mark, true); }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override { Saw(mark, false); }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t, const std::string&) override {
    Saw(mark, false);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {
    Saw(mark, false);
  }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
    Saw(mark, false);
  }
  void OnMapEnd() override {}

  bool only_null() const { return only_null_; }
  const YAML::Mark& first_mark() const { return first_mark_; }
  const YAML::Mark& start() const { return start_; }

 private:
  void Saw(const YAML::Mark& mark, bool is_null) {
    if (!seen_) first_mark_ = mark;
    seen_ = true;
    only_null_ = only_null_ && is_null;
  }
  bool seen_ = false;
  bool only_null_ = true;
  YAML::Mark first_mark_;
  YAML::Mark start_;
};

Result<Spec> SpecParser::Parse(std::vector<SpecDiagnostic>* diagnostics) {
  Spec spec;
  spec.file = file_;
  try {
    // yaml-cpp 0.7 reads a stray ',' where a document should start as an empty document and never moves
    // past it (YAML::LoadAll loops forever; YAML::Load returns null). So look at the first two documents
    // with the event parser, then build the tree of the first with YAML::Load.
    std::istringstream in{std::string(text_)};
    YAML::Parser parser(in);
    bool usable = true;
    for (int document = 0; document < 2 && usable; ++document) {
      DocumentProbe probe;
      if (!parser.HandleNextDocument(probe)) break;
      const YAML::Mark& mark = probe.first_mark();
      const bool stray_comma = probe.only_null() && mark.pos >= 0 &&
                               static_cast<size_t>(mark.pos) < text_.size() && text_[mark.pos] == ',';
      if (stray_comma) {
        Error(mark, "invalid YAML: unexpected ','; commas separate items only inside [ ] or { }");
        usable = false;
      } else if (document == 1 && !probe.only_null()) {
        Error(probe.start(), "a spec file holds one YAML document; remove the '---' separator or split the file");
      }
    }
    if (usable) ParseTop(YAML::Load(std::string(text_)), &spec);
  } catch (const YAML::ParserException& e) {
    Error(e.mark, "invalid YAML: " + e.msg + TabHint(text_, e.mark.line));
  } catch (const YAML::Exception& e) {
    Error(e.mark, "cannot read the spec: " + e.msg);
  }
  const auto by_position = [](const SpecDiagnostic& a, const SpecDiagnostic& b) {
    return std::pair(a.line, a.column) < std::pair(b.line, b.column);
  };
  std::stable_sort(diagnostics_.begin(), diagnostics_.end(), by_position);
  std::stable_sort(spec.warnings.begin(), spec.warnings.end(), by_position);
  if (diagnostics != nullptr) *diagnostics = diagnostics_;
  if (diagnostics_.empty()) return spec;
  std::string message;
  for (const SpecDiagnostic& d : diagnostics_) {
    if (!message.empty()) message += '\n';
    message += file_ + ":" + std::to_string(d.line) + ":" + std::to_string(d.column) + ": error: " + d.message;
  }
  return Status::Invalid(std::move(message));
}

// Markdown for one option's type and requirement: "duration; required when type is sliding or tumbling".
std::string ReferenceType(const SpecOption& o) {
  std::string out;
  switch (o.type) {
    case SpecValueType::kString: out = "string"; break;
    case SpecValueType::kName: out = "name"; break;
    case SpecValueType::kFieldPath: out = "field path"; break;
    case SpecValueType::kDuration: out = "duration"; break;
    case SpecValueType::kBool: out = "boolean"; break;
    case SpecValueType::kFraction: out = "number 0..1"; break;
    case SpecValueType::kInt: out = "integer " + std::to_string(o.min_value) + ".." + std::to_string(o.max_value); break;
    case SpecValueType::kChoice: {
      std::vector<std::string_view> choices = SplitList(o.choices);
      out = "one of ";
      for (size_t k = 0; k < choices.size(); ++k) out += (k > 0 ? ", `" : "`") + std::string(choices[k]) + "`";
      break;
    }
    case SpecValueType::kExpression: out = "expression"; break;
    case SpecValueType::kMap: out = "map"; break;
    case SpecValueType::kList: out = "list of maps"; break;
    case SpecValueType::kFractionList: out = "list of numbers 0..1"; break;
    case SpecValueType::kFieldPaths: out = "field path, or a list of them"; break;
  }
  std::string condition;
  if (!o.when_key.empty()) {
    condition = " when `" + std::string(o.when_key) + "`" + (o.when_negated ? " is not " : " is ") +
                JoinOr(SplitList(o.when_values));
  }
  if (o.required) {
    out += "; required" + condition;
  } else {
    if (!condition.empty()) out += "; only" + condition;
    if (!o.default_value.empty()) out += "; default `" + std::string(o.default_value) + "`";
    else out += "; optional";
  }
  return out;
}

}  // namespace

std::string SpecReferenceMarkdown() {
  std::ostringstream out;
  out << "A spec is a YAML file. Durations are an integer and a unit: `500ms`, `30s`, `5m`, `1h`, `1d`.\n";
  std::string section = "\x01";
  for (const SpecOption& o : SpecOptions()) {
    if (o.section != section) {
      section = std::string(o.section);
      out << "\n### " << (section.empty() ? "Top level" : "`" + section + "`") << "\n\n";
    }
    out << "- `" << o.key << "` (" << ReferenceType(o) << "): " << o.description;
    if (!o.example.empty()) out << " Example: `" << o.key << ": " << o.example << "`.";
    out << "\n";
  }
  return out.str();
}

std::string SpecWarningsText(const Spec& spec) {
  std::string out;
  for (const SpecDiagnostic& d : spec.warnings) {
    out += spec.file + ":" + std::to_string(d.line) + ":" + std::to_string(d.column) + ": warning: " + d.message + "\n";
  }
  return out;
}

Result<Spec> ParseSpec(std::string_view yaml_text, const std::string& file, std::vector<SpecDiagnostic>* diagnostics) {
  return SpecParser(yaml_text, file).Parse(diagnostics);
}

Result<Spec> LoadSpec(const std::string& path, std::vector<SpecDiagnostic>* diagnostics) {
  if (diagnostics != nullptr) diagnostics->clear();
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return Status::Invalid(path + ": error: this is a folder; give the spec file (YAML) inside it");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    const std::string reason = err != 0 ? std::strerror(err) : "cannot open";
    return Status::NotFound(path + ": error: cannot read the spec file: " + reason);
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return Status::IoError(path + ": error: cannot read the spec file: " + std::strerror(errno));
  return ParseSpec(text.str(), path, diagnostics);
}

}  // namespace freshet

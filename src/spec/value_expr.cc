#include "spec/value_expr.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <optional>

#include "common/text_hash.h"

namespace freshet {

// What a node is known to give before any event is seen: fields are kAny; literals and most operators are
// known. Used to refuse at load time what could only ever be null ("a" * 2, lower(3)).
enum class StaticType { kAny, kNumber, kString, kBool, kNull };

enum class Op {
  kLiteral, kField, kTime, kNeg, kNot, kAnd, kOr, kAdd, kSub, kMul, kDiv, kMod,
  kEq, kNe, kLt, kLe, kGt, kGe, kIf, kCoalesce, kAbs, kLog, kRound, kLower, kUpper, kLength, kHourOfDay, kDayOfWeek,
};

struct ValueNode {
  Op op = Op::kLiteral;
  Value literal;              // kLiteral (strings point into `text`).
  std::string text;           // kLiteral string storage; kField, kTime: the path (for ToString).
  int slot = -1;              // kField.
  size_t offset = 0;          // kField: where the text names it.
  StaticType type = StaticType::kAny;
  std::vector<std::unique_ptr<ValueNode>> args;
};

namespace {

struct FunctionInfo {
  std::string_view name;
  Op op;
  size_t min_args, max_args;
  std::string_view usage;
};

constexpr FunctionInfo kFunctions[] = {
    {"if", Op::kIf, 3, 3, "if(condition, then, else)"},
    {"coalesce", Op::kCoalesce, 1, 16, "coalesce(a, b, ...)"},
    {"abs", Op::kAbs, 1, 1, "abs(number)"},
    {"log", Op::kLog, 1, 1, "log(number)"},
    {"round", Op::kRound, 1, 2, "round(number) or round(number, digits)"},
    {"lower", Op::kLower, 1, 1, "lower(text)"},
    {"upper", Op::kUpper, 1, 1, "upper(text)"},
    {"length", Op::kLength, 1, 1, "length(text)"},
    {"hour_of_day", Op::kHourOfDay, 1, 1, "hour_of_day(epoch_ms)"},
    {"day_of_week", Op::kDayOfWeek, 1, 1, "day_of_week(epoch_ms)"},
};

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

class Parser {
 public:
  Parser(std::string_view text, FieldRegistry& fields) : text_(text), fields_(fields) {}

  Result<std::unique_ptr<ValueNode>> ParseAll() {
    std::unique_ptr<ValueNode> root = ParseOr();
    if (!error_ && Peek() != '\0') Fail(pos_, "unexpected '" + std::string(1, Peek()) + "' after a complete expression");
    if (error_) return Status::Invalid(*error_);
    return root;
  }
  size_t error_offset() const { return error_offset_; }

 private:
  // --- lexing
  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n')) ++pos_;
  }
  char Peek() {
    SkipSpace();
    return pos_ < text_.size() ? text_[pos_] : '\0';
  }
  bool Eat(std::string_view token) {
    SkipSpace();
    if (text_.substr(pos_, token.size()) != token) return false;
    pos_ += token.size();
    return true;
  }
  static bool IsIdentStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
  static bool IsIdent(char c) { return IsIdentStart(c) || (c >= '0' && c <= '9'); }
  // The identifier at the cursor, without consuming it.
  std::string_view PeekWord() {
    SkipSpace();
    size_t end = pos_;
    if (end < text_.size() && IsIdentStart(text_[end])) {
      while (end < text_.size() && IsIdent(text_[end])) ++end;
    }
    return text_.substr(pos_, end - pos_);
  }
  bool EatWord(std::string_view word) {
    if (PeekWord() != word) return false;
    pos_ += word.size();
    return true;
  }
  void Fail(size_t at, std::string message) {
    if (error_) return;
    error_ = std::move(message);
    error_offset_ = at;
  }

  static std::unique_ptr<ValueNode> Node(Op op, StaticType type) {
    auto node = std::make_unique<ValueNode>();
    node->op = op;
    node->type = type;
    return node;
  }
  static std::string_view TypeName(StaticType t) {
    switch (t) {
      case StaticType::kNumber: return "a number";
      case StaticType::kString: return "text";
      case StaticType::kBool: return "a boolean";
      case StaticType::kNull: return "null";
      case StaticType::kAny: return "a field";
    }
    return "?";
  }
  // Refuses an operand whose type is known and not `want` (kAny operands are checked per event).
  void Expect(const ValueNode& operand, StaticType want, size_t at, std::string_view what) {
    if (operand.type == StaticType::kAny || operand.type == want) return;
    Fail(at, std::string(what) + " takes " + std::string(TypeName(want)) + ", not " +
                 std::string(TypeName(operand.type)) + (operand.type == StaticType::kNull ? "" : " (always null)"));
  }

  // --- grammar
  std::unique_ptr<ValueNode> ParseOr() {
    auto left = ParseAnd();
    while (!error_ && EatWord("or")) {
      auto node = Node(Op::kOr, StaticType::kBool);
      node->args.push_back(std::move(left));
      node->args.push_back(ParseAnd());
      left = std::move(node);
    }
    return left;
  }
  std::unique_ptr<ValueNode> ParseAnd() {
    auto left = ParseNot();
    while (!error_ && EatWord("and")) {
      auto node = Node(Op::kAnd, StaticType::kBool);
      node->args.push_back(std::move(left));
      node->args.push_back(ParseNot());
      left = std::move(node);
    }
    return left;
  }
  std::unique_ptr<ValueNode> ParseNot() {
    if (EatWord("not")) {
      auto node = Node(Op::kNot, StaticType::kBool);
      node->args.push_back(ParseNot());
      return node;
    }
    return ParseCompare();
  }
  std::unique_ptr<ValueNode> ParseCompare() {
    auto left = ParseAdd();
    static constexpr std::pair<std::string_view, Op> kOps[] = {{"==", Op::kEq}, {"!=", Op::kNe}, {"<=", Op::kLe},
                                                               {">=", Op::kGe}, {"<", Op::kLt},  {">", Op::kGt}};
    for (const auto& [token, op] : kOps) {
      if (error_ || !Eat(token)) continue;
      auto node = Node(op, StaticType::kBool);
      node->args.push_back(std::move(left));
      node->args.push_back(ParseAdd());
      return node;
    }
    if (!error_ && Peek() == '=') Fail(pos_, "'=' is not an operator here; compare with '=='");
    return left;
  }
  std::unique_ptr<ValueNode> ParseAdd() {
    auto left = ParseMul();
    while (!error_) {
      Peek();  // To the operator, so that an error points at it.
      const size_t at = pos_;
      Op op;
      if (Eat("+")) op = Op::kAdd;
      else if (Eat("-")) op = Op::kSub;
      else break;
      left = Arithmetic(op, std::move(left), ParseMul(), at);
    }
    return left;
  }
  std::unique_ptr<ValueNode> ParseMul() {
    auto left = ParseUnary();
    while (!error_) {
      Peek();  // To the operator, so that an error points at it.
      const size_t at = pos_;
      Op op;
      if (Eat("*")) op = Op::kMul;
      else if (Eat("/")) op = Op::kDiv;
      else if (Eat("%")) op = Op::kMod;
      else break;
      left = Arithmetic(op, std::move(left), ParseUnary(), at);
    }
    return left;
  }
  std::unique_ptr<ValueNode> Arithmetic(Op op, std::unique_ptr<ValueNode> left, std::unique_ptr<ValueNode> right,
                                        size_t at) {
    if (error_) return left;
    static constexpr std::string_view kNames[] = {"'+'", "'-'", "'*'", "'/'", "'%'"};
    const std::string_view name = kNames[static_cast<int>(op) - static_cast<int>(Op::kAdd)];
    Expect(*left, StaticType::kNumber, at, std::string(name));
    Expect(*right, StaticType::kNumber, at, std::string(name));
    auto node = Node(op, StaticType::kNumber);
    node->args.push_back(std::move(left));
    node->args.push_back(std::move(right));
    return node;
  }
  std::unique_ptr<ValueNode> ParseUnary() {
    Peek();
    const size_t at = pos_;
    if (Eat("-")) {
      auto operand = ParseUnary();
      if (error_) return operand;
      // A negative literal stays a literal (so that -9223372036854775808 reads).
      Expect(*operand, StaticType::kNumber, at, "'-'");
      auto node = Node(Op::kNeg, StaticType::kNumber);
      node->args.push_back(std::move(operand));
      return node;
    }
    return ParsePrimary();
  }
  std::unique_ptr<ValueNode> ParsePrimary() {
    const char c = Peek();
    const size_t at = pos_;
    if (c == '\0') {
      Fail(at, "the expression ends where a value was expected (a field, a number, 'text', or a function call)");
      return Node(Op::kLiteral, StaticType::kNull);
    }
    if (Eat("(")) {
      auto inner = ParseOr();
      if (!error_ && !Eat(")")) Fail(pos_, "missing ')' to close the '(' at offset " + std::to_string(at));
      return inner;
    }
    if (c == '\'' || c == '"') return ParseString(c);
    if ((c >= '0' && c <= '9') || c == '.') return ParseNumber();
    const std::string_view word = PeekWord();
    if (word.empty()) {
      Fail(at, "unexpected '" + std::string(1, c) + "'; expected a field, a number, 'text', or a function call");
      return Node(Op::kLiteral, StaticType::kNull);
    }
    pos_ += word.size();
    if (word == "true" || word == "false") {
      auto node = Node(Op::kLiteral, StaticType::kBool);
      node->literal = Value::Bool(word == "true");
      return node;
    }
    if (word == "null") {
      auto node = Node(Op::kLiteral, StaticType::kNull);
      node->literal = Value::Null();
      return node;
    }
    if (word == "and" || word == "or" || word == "not") {
      Fail(at, "'" + std::string(word) + "' needs a value before it");
      return Node(Op::kLiteral, StaticType::kNull);
    }
    if (Peek() == '(') return ParseCall(word, at);
    std::string path(word);
    while (Peek() == '.') {
      ++pos_;
      const std::string_view part = PeekWord();
      if (part.empty()) {
        Fail(pos_, "a field path continues with a name after '.', as in device.os");
        return Node(Op::kLiteral, StaticType::kNull);
      }
      pos_ += part.size();
      path += ".";
      path += part;
    }
    const int slot = fields_.Intern(path);
    auto node = Node(slot == kTimestampSlot ? Op::kTime : Op::kField, StaticType::kAny);
    node->slot = slot;
    node->offset = at;
    node->text = path;
    return node;
  }
  std::unique_ptr<ValueNode> ParseCall(std::string_view name, size_t at) {
    const FunctionInfo* info = nullptr;
    for (const FunctionInfo& f : kFunctions) {
      if (f.name == name) info = &f;
    }
    if (info == nullptr) {
      std::string_view closest;
      size_t best = 3;
      std::string all;
      for (const FunctionInfo& f : kFunctions) {
        all += (all.empty() ? "" : ", ") + std::string(f.name);
        const size_t d = EditDistance(name, f.name);
        if (d < best) best = d, closest = f.name;
      }
      Fail(at, "unknown function '" + std::string(name) + "'" +
                   (closest.empty() ? "" : "; did you mean '" + std::string(closest) + "'?") + " (functions: " + all + ")");
      return Node(Op::kLiteral, StaticType::kNull);
    }
    Eat("(");
    auto node = Node(info->op, StaticType::kAny);
    std::vector<size_t> arg_at;
    if (!Eat(")")) {
      while (!error_) {
        arg_at.push_back(pos_);
        node->args.push_back(ParseOr());
        if (error_ || Eat(")")) break;
        if (!Eat(",")) {
          Fail(pos_, "expected ',' or ')' in the call of " + std::string(info->name));
          break;
        }
      }
    }
    if (error_) return node;
    if (node->args.size() < info->min_args || node->args.size() > info->max_args) {
      Fail(at, std::string(info->name) + " takes " +
                   (info->min_args == info->max_args ? std::to_string(info->min_args)
                                                     : std::to_string(info->min_args) + " to " + std::to_string(info->max_args)) +
                   " argument(s), got " + std::to_string(node->args.size()) + ": " + std::string(info->usage));
      return node;
    }
    const std::string what = std::string(info->name) + "()";
    switch (info->op) {
      case Op::kIf:
        node->type = node->args[1]->type == node->args[2]->type ? node->args[1]->type : StaticType::kAny;
        break;
      case Op::kCoalesce: {
        StaticType t = StaticType::kNull;
        for (const auto& a : node->args) {
          if (a->type == StaticType::kNull) continue;
          t = t == StaticType::kNull || t == a->type ? a->type : StaticType::kAny;
        }
        node->type = t;
        break;
      }
      case Op::kAbs: case Op::kLog: case Op::kRound: case Op::kHourOfDay: case Op::kDayOfWeek:
        for (size_t k = 0; k < node->args.size(); ++k) Expect(*node->args[k], StaticType::kNumber, arg_at[k], what);
        node->type = StaticType::kNumber;
        break;
      case Op::kLower: case Op::kUpper:
        Expect(*node->args[0], StaticType::kString, arg_at[0], what);
        node->type = StaticType::kString;
        break;
      case Op::kLength:
        Expect(*node->args[0], StaticType::kString, arg_at[0], what);
        node->type = StaticType::kNumber;
        break;
      default:
        break;
    }
    return node;
  }
  std::unique_ptr<ValueNode> ParseString(char quote) {
    const size_t at = pos_;
    ++pos_;
    auto node = Node(Op::kLiteral, StaticType::kString);
    while (pos_ < text_.size() && text_[pos_] != quote) {
      if (text_[pos_] == '\\' && pos_ + 1 < text_.size()) ++pos_;
      node->text += text_[pos_++];
    }
    if (pos_ >= text_.size()) {
      Fail(at, std::string("text starting here has no closing ") + quote);
      return node;
    }
    ++pos_;
    return node;  // literal is pointed at `text` in Finish (the node may still move).
  }
  std::unique_ptr<ValueNode> ParseNumber() {
    const size_t at = pos_;
    size_t end = pos_;
    bool fraction = false;
    while (end < text_.size() &&
           (std::isdigit(static_cast<unsigned char>(text_[end])) || text_[end] == '.' || text_[end] == 'e' ||
            text_[end] == 'E' || ((text_[end] == '+' || text_[end] == '-') && end > pos_ &&
                                  (text_[end - 1] == 'e' || text_[end - 1] == 'E')))) {
      if (!std::isdigit(static_cast<unsigned char>(text_[end]))) fraction = true;
      ++end;
    }
    const std::string_view digits = text_.substr(pos_, end - pos_);
    pos_ = end;
    auto node = Node(Op::kLiteral, StaticType::kNumber);
    if (!fraction) {
      int64_t i = 0;
      auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), i);
      if (ec == std::errc() && ptr == digits.data() + digits.size()) {
        node->literal = Value::Int(i);
        return node;
      }
    }
    double d = 0;
    auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), d);
    if (ec != std::errc() || ptr != digits.data() + digits.size()) {
      Fail(at, "'" + std::string(digits) + "' is not a number");
      return node;
    }
    node->literal = Value::Double(d);
    return node;
  }

  std::string_view text_;
  FieldRegistry& fields_;
  size_t pos_ = 0;
  std::optional<std::string> error_;
  size_t error_offset_ = 0;
};

// Points string literals at their own storage, now that the tree no longer moves.
void Finish(ValueNode& node) {
  if (node.op == Op::kLiteral && node.type == StaticType::kString) node.literal = Value::String(node.text);
  for (auto& a : node.args) Finish(*a);
}

bool IsNull(const Value& v) { return v.type == ValueType::kMissing || v.type == ValueType::kNull; }

Value Arith(Op op, const Value& a, const Value& b) {
  if (!a.is_number() || !b.is_number()) return Value::Null();
  if (op == Op::kDiv) {
    const double divisor = b.as_double();
    if (divisor == 0) return Value::Null();
    return Value::Double(a.as_double() / divisor);
  }
  if (a.type == ValueType::kInt && b.type == ValueType::kInt) {
    int64_t r = 0;
    switch (op) {
      case Op::kAdd: if (__builtin_add_overflow(a.i, b.i, &r)) return Value::Null(); return Value::Int(r);
      case Op::kSub: if (__builtin_sub_overflow(a.i, b.i, &r)) return Value::Null(); return Value::Int(r);
      case Op::kMul: if (__builtin_mul_overflow(a.i, b.i, &r)) return Value::Null(); return Value::Int(r);
      case Op::kMod:
        if (b.i == 0 || (b.i == -1 && a.i == std::numeric_limits<int64_t>::min())) return b.i == 0 ? Value::Null() : Value::Int(0);
        return Value::Int(a.i % b.i);
      default: return Value::Null();
    }
  }
  const double x = a.as_double(), y = b.as_double();
  switch (op) {
    case Op::kAdd: return Value::Double(x + y);
    case Op::kSub: return Value::Double(x - y);
    case Op::kMul: return Value::Double(x * y);
    case Op::kMod: return y == 0 ? Value::Null() : Value::Double(std::fmod(x, y));
    default: return Value::Null();
  }
}

// -1, 0, 1; or nullopt when the two are not ordered (different types, booleans).
std::optional<int> Order(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.type == ValueType::kInt && b.type == ValueType::kInt) return a.i < b.i ? -1 : a.i > b.i ? 1 : 0;
    const double x = a.as_double(), y = b.as_double();
    if (std::isnan(x) || std::isnan(y)) return std::nullopt;
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.type == ValueType::kString && b.type == ValueType::kString) {
    const int c = a.s.compare(b.s);
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  return std::nullopt;
}

Value Compare(Op op, const Value& a, const Value& b) {
  if (IsNull(a) || IsNull(b)) return Value::Null();
  if (op == Op::kEq || op == Op::kNe) {
    bool equal;
    if (a.type == ValueType::kString && b.type == ValueType::kString) equal = SameText(a.s, b.s);  // No memcmp call.
    else if (a.type == ValueType::kBool && b.type == ValueType::kBool) equal = a.b == b.b;
    else if (std::optional<int> o = Order(a, b)) equal = *o == 0;
    else equal = false;  // Different types, composites, NaN.
    return Value::Bool(op == Op::kEq ? equal : !equal);
  }
  const std::optional<int> o = Order(a, b);
  if (!o) return Value::Null();
  switch (op) {
    case Op::kLt: return Value::Bool(*o < 0);
    case Op::kLe: return Value::Bool(*o <= 0);
    case Op::kGt: return Value::Bool(*o > 0);
    default: return Value::Bool(*o >= 0);
  }
}

// Kleene logic: nullopt is unknown.
std::optional<bool> Truth(const Value& v) {
  if (v.type == ValueType::kBool) return v.b;
  return std::nullopt;
}

Value FromTruth(std::optional<bool> t) { return t ? Value::Bool(*t) : Value::Null(); }

int64_t FloorDiv(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

Value Eval(const ValueNode& n, std::span<const Value> slots, int64_t time_ms, OwnedStrings* owned);

// The value of a leaf (a literal, a field, the event's time): what Eval gives for it.
inline Value Leaf(const ValueNode& n, std::span<const Value> slots, int64_t time_ms) {
  switch (n.op) {
    case Op::kLiteral: return n.literal;
    case Op::kField: {
      const Value& v = slots[static_cast<size_t>(n.slot)];
      return v.type == ValueType::kMissing || v.type == ValueType::kComposite ? Value::Null() : v;
    }
    default: return Value::Int(time_ms);  // Op::kTime.
  }
}

bool IsLeaf(Op op) { return op == Op::kLiteral || op == Op::kField || op == Op::kTime; }

Value Eval(const ValueNode& n, std::span<const Value> slots, int64_t time_ms, OwnedStrings* owned) {
  // Leaves are read in place, not through a call of Eval each: most operands are fields and literals, and the
  // call per node was most of an expression's cost (callgrind: ~45 instructions per node, two derived fields
  // over a joined table 357 instructions per event).
  auto arg = [&](size_t k) {
    const ValueNode& a = *n.args[k];
    return IsLeaf(a.op) ? Leaf(a, slots, time_ms) : Eval(a, slots, time_ms, owned);
  };
  switch (n.op) {
    case Op::kLiteral:
    case Op::kField:
    case Op::kTime: return Leaf(n, slots, time_ms);
    case Op::kNeg: {
      const Value v = arg(0);
      if (v.type == ValueType::kInt) {
        return v.i == std::numeric_limits<int64_t>::min() ? Value::Null() : Value::Int(-v.i);
      }
      return v.type == ValueType::kDouble ? Value::Double(-v.d) : Value::Null();
    }
    case Op::kNot: {
      const std::optional<bool> t = Truth(arg(0));
      return t ? Value::Bool(!*t) : Value::Null();
    }
    case Op::kAnd: {
      const std::optional<bool> a = Truth(arg(0));
      if (a == false) return Value::Bool(false);
      const std::optional<bool> b = Truth(arg(1));
      if (b == false) return Value::Bool(false);
      return FromTruth(a && b ? std::optional<bool>(true) : std::nullopt);
    }
    case Op::kOr: {
      const std::optional<bool> a = Truth(arg(0));
      if (a == true) return Value::Bool(true);
      const std::optional<bool> b = Truth(arg(1));
      if (b == true) return Value::Bool(true);
      return FromTruth(a && b ? std::optional<bool>(false) : std::nullopt);
    }
    case Op::kAdd: case Op::kSub: case Op::kMul: case Op::kDiv: case Op::kMod: {
      const Value a = arg(0);
      const Value b = arg(1);
      return Arith(n.op, a, b);
    }
    case Op::kEq: case Op::kNe: case Op::kLt: case Op::kLe: case Op::kGt: case Op::kGe: {
      const Value a = arg(0);
      const Value b = arg(1);
      return Compare(n.op, a, b);
    }
    case Op::kIf: return Truth(arg(0)) == true ? arg(1) : arg(2);
    case Op::kCoalesce:
      for (size_t k = 0; k < n.args.size(); ++k) {
        Value v = arg(k);
        if (!IsNull(v)) return v;
      }
      return Value::Null();
    case Op::kAbs: {
      const Value v = arg(0);
      if (v.type == ValueType::kInt) {
        return v.i == std::numeric_limits<int64_t>::min() ? Value::Null() : Value::Int(v.i < 0 ? -v.i : v.i);
      }
      return v.type == ValueType::kDouble ? Value::Double(std::fabs(v.d)) : Value::Null();
    }
    case Op::kLog: {
      const Value v = arg(0);
      if (!v.is_number() || !(v.as_double() > 0)) return Value::Null();
      return Value::Double(std::log(v.as_double()));
    }
    case Op::kRound: {
      const Value v = arg(0);
      int64_t digits = 0;
      if (n.args.size() == 2) {
        const Value d = arg(1);
        if (d.type != ValueType::kInt || d.i < -18 || d.i > 18) return Value::Null();
        digits = d.i;
      }
      if (v.type == ValueType::kInt && digits >= 0) return v;
      if (!v.is_number()) return Value::Null();
      const double scale = std::pow(10.0, static_cast<double>(digits));
      const double r = std::round(v.as_double() * scale) / scale;
      if (v.type == ValueType::kInt) {
        if (!(std::fabs(r) < 9.2e18)) return Value::Null();
        return Value::Int(static_cast<int64_t>(r));
      }
      return Value::Double(r);
    }
    case Op::kLower: case Op::kUpper: {
      const Value v = arg(0);
      if (v.type != ValueType::kString) return Value::Null();
      auto text = std::make_shared<std::string>(v.s);
      for (char& c : *text) {
        if (n.op == Op::kLower && c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
        if (n.op == Op::kUpper && c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
      }
      const std::string_view view = *text;
      owned->push_back(std::move(text));
      return Value::String(view);
    }
    case Op::kLength: {
      const Value v = arg(0);
      if (v.type != ValueType::kString) return Value::Null();
      int64_t points = 0;
      for (unsigned char c : v.s) points += (c & 0xC0) != 0x80;  // Bytes that start a code point.
      return Value::Int(points);
    }
    case Op::kHourOfDay: case Op::kDayOfWeek: {
      const Value v = arg(0);
      if (v.type != ValueType::kInt) return Value::Null();
      const int64_t day_ms = 86'400'000;
      const int64_t days = FloorDiv(v.i, day_ms);
      if (n.op == Op::kHourOfDay) return Value::Int((v.i - days * day_ms) / 3'600'000);
      // 1970-01-01 was a Thursday (ISO day 4).
      return Value::Int(((days % 7) + 7 + 3) % 7 + 1);
    }
  }
  return Value::Null();
}

void Render(const ValueNode& n, std::string& out) {
  static constexpr std::pair<Op, std::string_view> kInfix[] = {
      {Op::kAnd, " and "}, {Op::kOr, " or "}, {Op::kAdd, " + "}, {Op::kSub, " - "}, {Op::kMul, " * "},
      {Op::kDiv, " / "},   {Op::kMod, " % "}, {Op::kEq, " == "}, {Op::kNe, " != "}, {Op::kLt, " < "},
      {Op::kLe, " <= "},   {Op::kGt, " > "},  {Op::kGe, " >= "}};
  switch (n.op) {
    case Op::kLiteral:
      switch (n.literal.type) {
        case ValueType::kString: out += "'" + n.text + "'"; return;
        case ValueType::kInt: out += std::to_string(n.literal.i); return;
        case ValueType::kDouble: {
          char buffer[32];
          auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), n.literal.d);
          (void)ec;
          out.append(buffer, end);
          return;
        }
        case ValueType::kBool: out += n.literal.b ? "true" : "false"; return;
        default: out += "null"; return;
      }
    case Op::kField: case Op::kTime: out += n.text; return;
    case Op::kNeg: out += "(-"; Render(*n.args[0], out); out += ")"; return;
    case Op::kNot: out += "(not "; Render(*n.args[0], out); out += ")"; return;
    default: break;
  }
  for (const auto& [op, token] : kInfix) {
    if (op != n.op) continue;
    out += "(";
    Render(*n.args[0], out);
    out += token;
    Render(*n.args[1], out);
    out += ")";
    return;
  }
  for (const FunctionInfo& f : kFunctions) {
    if (f.op != n.op) continue;
    out += f.name;
    out += "(";
    for (size_t k = 0; k < n.args.size(); ++k) {
      if (k > 0) out += ", ";
      Render(*n.args[k], out);
    }
    out += ")";
    return;
  }
}

}  // namespace

Result<ValueExpr> ValueExpr::Parse(std::string_view text, FieldRegistry& fields, size_t* error_offset) {
  Parser parser(text, fields);
  Result<std::unique_ptr<ValueNode>> root = parser.ParseAll();
  if (!root.ok()) {
    if (error_offset != nullptr) *error_offset = parser.error_offset();
    return root.status();
  }
  Finish(**root);
  return ValueExpr(std::move(root).value());
}

Value ValueExpr::Eval(std::span<const Value> slots, int64_t time_ms, OwnedStrings* owned) const {
  return freshet::Eval(*root_, slots, time_ms, owned);
}

std::string ValueExpr::ToString() const {
  std::string out;
  Render(*root_, out);
  return out;
}

namespace {
void CollectFields(const ValueNode& n, std::vector<ValueExpr::FieldReference>* out) {
  if (n.op == Op::kField) out->push_back({n.text, n.offset});
  for (const auto& a : n.args) CollectFields(*a, out);
}
}  // namespace

std::vector<ValueExpr::FieldReference> ValueExpr::FieldReferences() const {
  std::vector<FieldReference> out;
  CollectFields(*root_, &out);
  return out;
}

ValueExpr::ValueExpr(std::unique_ptr<ValueNode> root) : root_(std::move(root)) {}
ValueExpr::ValueExpr(ValueExpr&&) noexcept = default;
ValueExpr& ValueExpr::operator=(ValueExpr&&) noexcept = default;
ValueExpr::~ValueExpr() = default;

}  // namespace freshet

// The `where` expression language: a lazy lexer, a recursive-descent parser with bounded depth, and a
// flat program that Eval walks without allocating.
//
// The program is a vector of nodes addressed by index. `and` / `or` chains are n-ary nodes (their
// children sit contiguously in `children`), so a long chain such as `a and b and c and ...` costs one
// level of recursion, not one per term. Nesting depth (parentheses and `not`) is capped at kMaxDepth,
// which bounds the recursion of Parse, Eval and ToString alike.
#include "spec/expr.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

#include "common/text_hash.h"

namespace freshet {
namespace {

// Longest accepted expression, in bytes. A `where` clause is one line of a spec; anything longer is
// almost certainly generated or pasted by mistake.
constexpr size_t kMaxExprBytes = 4096;

// Deepest accepted nesting of parentheses and `not`.
constexpr int kMaxDepth = 64;

enum class CmpOp : uint8_t { kEq, kNe, kLt, kLe, kGt, kGe };

const char* CmpOpText(CmpOp op) {
  switch (op) {
    case CmpOp::kEq: return "==";
    case CmpOp::kNe: return "!=";
    case CmpOp::kLt: return "<";
    case CmpOp::kLe: return "<=";
    case CmpOp::kGt: return ">";
    case CmpOp::kGe: return ">=";
  }
  return "?";
}

// The outcome of comparing two values. kUnordered: the values are unequal and have no order
// (different types, NaN, composites).
enum class Order : uint8_t { kLess, kEqual, kGreater, kUnordered };

// Compares an int64 with a double exactly, without rounding the integer to a double first
// (2^53 + 1 must not equal 2^53).
Order CompareIntDouble(int64_t i, double d) {
  constexpr double kTwoPow63 = 9223372036854775808.0;
  if (std::isnan(d)) return Order::kUnordered;
  if (d >= kTwoPow63) return Order::kLess;
  if (d < -kTwoPow63) return Order::kGreater;
  // Now -2^63 <= d < 2^63, so truncating d to int64 is exact and cannot overflow.
  const int64_t whole = static_cast<int64_t>(d);
  if (i < whole) return Order::kLess;
  if (i > whole) return Order::kGreater;
  const double fraction = d - static_cast<double>(whole);  // Exact: `whole` came from d.
  if (fraction > 0) return Order::kLess;
  if (fraction < 0) return Order::kGreater;
  return Order::kEqual;
}

Order Flip(Order order) {
  if (order == Order::kLess) return Order::kGreater;
  if (order == Order::kGreater) return Order::kLess;
  return order;
}

// Both values must be numbers.
Order CompareNumbers(const Value& x, const Value& y) {
  if (x.type == ValueType::kInt) {
    if (y.type == ValueType::kInt) return x.i < y.i ? Order::kLess : x.i > y.i ? Order::kGreater : Order::kEqual;
    return CompareIntDouble(x.i, y.d);
  }
  if (y.type == ValueType::kInt) return Flip(CompareIntDouble(y.i, x.d));
  if (x.d < y.d) return Order::kLess;
  if (x.d > y.d) return Order::kGreater;
  if (x.d == y.d) return Order::kEqual;
  return Order::kUnordered;  // NaN.
}

// SameText: without a call to memcmp for the short values `where` compares (`type == 'view'`), once per event.
bool SameBytes(std::string_view a, std::string_view b) { return SameText(a, b); }

Order CompareBytes(std::string_view a, std::string_view b) {
  const size_t common = a.size() < b.size() ? a.size() : b.size();
  const int c = common == 0 ? 0 : std::memcmp(a.data(), b.data(), common);  // memcmp compares unsigned bytes.
  if (c != 0) return c < 0 ? Order::kLess : Order::kGreater;
  return a.size() < b.size() ? Order::kLess : a.size() > b.size() ? Order::kGreater : Order::kEqual;
}

bool Holds(CmpOp op, Order order) {
  switch (op) {
    case CmpOp::kEq: return order == Order::kEqual;
    case CmpOp::kNe: return order != Order::kEqual;
    case CmpOp::kLt: return order == Order::kLess;
    case CmpOp::kLe: return order == Order::kLess || order == Order::kEqual;
    case CmpOp::kGt: return order == Order::kGreater;
    case CmpOp::kGe: return order == Order::kGreater || order == Order::kEqual;
  }
  return false;
}

// `x op y` under the semantics documented in expr.h.
inline bool Compare(const Value& x, CmpOp op, const Value& y) {
  if (x.type == ValueType::kMissing || y.type == ValueType::kMissing) return false;
  const bool is_equality = op == CmpOp::kEq || op == CmpOp::kNe;
  if (x.type == ValueType::kString && y.type == ValueType::kString) {
    if (is_equality) return SameBytes(x.s, y.s) == (op == CmpOp::kEq);
    return Holds(op, CompareBytes(x.s, y.s));
  }
  if (x.is_number() && y.is_number()) return Holds(op, CompareNumbers(x, y));
  // Booleans and nulls have no order; neither do values of different types or composites.
  if (!is_equality) return false;
  bool equal = false;
  if (x.type == y.type) {
    if (x.type == ValueType::kBool) equal = x.b == y.b;
    if (x.type == ValueType::kNull) equal = true;
  }
  return equal == (op == CmpOp::kEq);
}

// Read by Eval for a slot beyond the span it was given.
const Value kMissingValue;

}  // namespace

// The compiled program behind an Expr. Immutable once Parse returns.
struct ExprNode {
  enum class Kind : uint8_t {
    kOr,       // Any of children[first, first + count) holds.
    kAnd,      // All of children[first, first + count) hold.
    kNot,      // nodes[first] does not hold.
    kCompare,  // lhs op rhs.
    kIn,       // lhs equals one of lists[first, first + count).
    kTest,     // lhs is the boolean true.
  };

  // A field (slot >= 0) or a literal (slot < 0).
  struct Operand {
    int32_t slot = -1;
    uint32_t path_index = 0;  // Fields: index in `paths`, for ToString.
    Value literal;
  };

  struct Node {
    Kind kind = Kind::kTest;
    CmpOp op = CmpOp::kEq;
    uint32_t first = 0;
    uint32_t count = 0;
    Operand lhs;
    Operand rhs;
  };

  ExprNode() = default;
  ExprNode(const ExprNode&) = delete;  // Literal Values point into `strings`; a copy would dangle.
  ExprNode& operator=(const ExprNode&) = delete;

  static const Value& Resolve(const Operand& operand, std::span<const Value> slots) {
    if (operand.slot < 0) return operand.literal;
    const size_t slot = static_cast<size_t>(operand.slot);
    return slot < slots.size() ? slots[slot] : kMissingValue;
  }

  bool EvalNode(uint32_t index, std::span<const Value> slots) const {
    const Node& node = nodes[index];
    switch (node.kind) {
      case Kind::kOr:
        for (uint32_t k = 0; k < node.count; ++k) {
          if (EvalNode(children[node.first + k], slots)) return true;
        }
        return false;
      case Kind::kAnd:
        for (uint32_t k = 0; k < node.count; ++k) {
          if (!EvalNode(children[node.first + k], slots)) return false;
        }
        return true;
      case Kind::kNot:
        return !EvalNode(node.first, slots);
      case Kind::kCompare:
        return Compare(Resolve(node.lhs, slots), node.op, Resolve(node.rhs, slots));
      case Kind::kIn: {
        const Value& x = Resolve(node.lhs, slots);
        for (uint32_t k = 0; k < node.count; ++k) {
          if (Compare(x, CmpOp::kEq, lists[node.first + k])) return true;
        }
        return false;
      }
      case Kind::kTest: {
        const Value& x = Resolve(node.lhs, slots);
        return x.type == ValueType::kBool && x.b;
      }
    }
    return false;
  }

  void PrintNode(uint32_t index, std::string* out) const;
  void PrintOperand(const Operand& operand, std::string* out) const;

  std::vector<Node> nodes;
  std::vector<uint32_t> children;
  std::vector<Value> lists;
  // Where things are written, for Conditions(); Eval never reads these. Per node, the spans of lhs and rhs
  // (zero for nodes without operands), and per entry of `lists`, its span.
  struct Span {
    uint32_t offset = 0;
    uint32_t length = 0;
  };
  std::vector<std::pair<Span, Span>> operand_spans;
  std::vector<Span> list_spans;
  std::deque<std::string> strings;  // Text of string literals; a deque never moves its elements.
  std::vector<std::string> paths;   // Distinct field paths, in order of first appearance.
  uint32_t root = 0;
};

namespace {

void PrintLiteral(const Value& value, std::string* out) {
  switch (value.type) {
    case ValueType::kNull: out->append("null"); return;
    case ValueType::kBool: out->append(value.b ? "true" : "false"); return;
    case ValueType::kInt: out->append(std::to_string(value.i)); return;
    case ValueType::kDouble: {
      char buffer[64];
      const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value.d);  // Shortest round trip.
      const std::string_view text(buffer, static_cast<size_t>(result.ptr - buffer));
      out->append(text);
      // Keep it a double when read back: "1000" would parse as an integer.
      if (text.find_first_of(".e") == std::string_view::npos) out->append(".0");
      return;
    }
    case ValueType::kString:
      out->push_back('\'');
      for (char c : value.s) {
        switch (c) {
          case '\\': out->append("\\\\"); break;
          case '\'': out->append("\\'"); break;
          case '\n': out->append("\\n"); break;
          case '\t': out->append("\\t"); break;
          default: out->push_back(c);
        }
      }
      out->push_back('\'');
      return;
    case ValueType::kMissing:
    case ValueType::kComposite:
      break;
  }
  out->append("?");  // Literals are never missing or composite.
}

}  // namespace

void ExprNode::PrintOperand(const Operand& operand, std::string* out) const {
  if (operand.slot >= 0) {
    out->append(paths[operand.path_index]);
  } else {
    PrintLiteral(operand.literal, out);
  }
}

void ExprNode::PrintNode(uint32_t index, std::string* out) const {
  const Node& node = nodes[index];
  switch (node.kind) {
    case Kind::kOr:
    case Kind::kAnd:
      out->push_back('(');
      for (uint32_t k = 0; k < node.count; ++k) {
        if (k > 0) out->append(node.kind == Kind::kOr ? " or " : " and ");
        PrintNode(children[node.first + k], out);
      }
      out->push_back(')');
      return;
    case Kind::kNot:
      out->append("(not ");
      PrintNode(node.first, out);
      out->push_back(')');
      return;
    case Kind::kCompare:
      out->push_back('(');
      PrintOperand(node.lhs, out);
      out->push_back(' ');
      out->append(CmpOpText(node.op));
      out->push_back(' ');
      PrintOperand(node.rhs, out);
      out->push_back(')');
      return;
    case Kind::kIn:
      out->push_back('(');
      PrintOperand(node.lhs, out);
      out->append(" in [");
      for (uint32_t k = 0; k < node.count; ++k) {
        if (k > 0) out->append(", ");
        PrintLiteral(lists[node.first + k], out);
      }
      out->append("])");
      return;
    case Kind::kTest:
      PrintOperand(node.lhs, out);
      return;
  }
}

namespace {

enum class Tok : uint8_t {
  kEnd,
  kField,
  kString,
  kInt,
  kDouble,
  kTrue,
  kFalse,
  kNull,
  kAnd,
  kOr,
  kNot,
  kIn,
  kLParen,
  kRParen,
  kLBracket,
  kRBracket,
  kComma,
  kEq,
  kNe,
  kLt,
  kLe,
  kGt,
  kGe,
};

struct Token {
  Tok kind = Tok::kEnd;
  size_t offset = 0;  // Byte offset of the token's first character.
  size_t length = 0;  // Bytes of source text.
  std::string text;   // kField: the dotted path. kString: the text with escapes resolved.
  int64_t int_value = 0;
  double double_value = 0;
};

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsIdentStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsIdentChar(char c) { return IsIdentStart(c) || IsDigit(c); }

bool IsLiteral(Tok kind) {
  return kind == Tok::kString || kind == Tok::kInt || kind == Tok::kDouble || kind == Tok::kTrue ||
         kind == Tok::kFalse || kind == Tok::kNull;
}
bool StartsOperand(Tok kind) { return kind == Tok::kField || IsLiteral(kind); }
bool StartsCondition(Tok kind) { return kind == Tok::kNot || kind == Tok::kLParen || StartsOperand(kind); }
bool IsComparison(Tok kind) { return kind >= Tok::kEq && kind <= Tok::kGe; }

CmpOp ToCmpOp(Tok kind) {
  switch (kind) {
    case Tok::kNe: return CmpOp::kNe;
    case Tok::kLt: return CmpOp::kLt;
    case Tok::kLe: return CmpOp::kLe;
    case Tok::kGt: return CmpOp::kGt;
    case Tok::kGe: return CmpOp::kGe;
    default: return CmpOp::kEq;
  }
}

std::optional<Tok> KeywordKind(std::string_view word) {
  if (word == "and") return Tok::kAnd;
  if (word == "or") return Tok::kOr;
  if (word == "not") return Tok::kNot;
  if (word == "in") return Tok::kIn;
  if (word == "true") return Tok::kTrue;
  if (word == "false") return Tok::kFalse;
  if (word == "null") return Tok::kNull;
  return std::nullopt;
}

std::string ToLower(std::string_view text) {
  std::string lower(text);
  for (char& c : lower) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return lower;
}

// A character as it should appear in a message: printable ASCII as is, anything else as \xNN.
std::string Printable(char c) {
  const auto byte = static_cast<unsigned char>(c);
  if (byte >= 0x20 && byte < 0x7f) return std::string(1, c);
  return fmt::format("\\x{:02X}", byte);
}

std::string Printable(std::string_view text) {
  std::string out;
  for (char c : text) out += Printable(c);
  return out;
}

// Parses one expression into an ExprNode. Tokens are lexed one at a time, so the first problem from
// the left is the one reported.
class Parser {
 public:
  Parser(std::string_view text, ExprNode& program) : text_(text), program_(program) {}

  Status Parse() {
    if (text_.size() > kMaxExprBytes) {
      return Fail(kMaxExprBytes, fmt::format("the expression is {} bytes long, over the limit of {} bytes; "
                                             "shorten it or split it across several features",
                                             text_.size(), kMaxExprBytes));
    }
    FRESHET_RETURN_IF_ERROR(Advance());
    if (tok_.kind == Tok::kEnd) {
      return Fail(tok_.offset, "the expression is empty; write a condition such as amount > 10, "
                               "or leave out `where` to keep every event");
    }
    FRESHET_ASSIGN_OR_RETURN(program_.root, ParseOr(0));
    if (tok_.kind != Tok::kEnd) return UnexpectedAfterCondition(std::nullopt);
    return Status::Ok();
  }

  size_t error_offset() const { return error_offset_; }

  // Interns every field path of a successfully parsed program and points its operands at the slots.
  void InternFields(FieldRegistry& fields) {
    std::vector<int32_t> slot_of_path;
    slot_of_path.reserve(program_.paths.size());
    for (const std::string& path : program_.paths) slot_of_path.push_back(fields.Intern(path));
    for (ExprNode::Node& node : program_.nodes) {
      for (ExprNode::Operand* operand : {&node.lhs, &node.rhs}) {
        if (operand->slot >= 0) operand->slot = slot_of_path[operand->path_index];
      }
    }
  }

 private:
  Status Fail(size_t offset, std::string message) {
    error_offset_ = offset;
    return Status::Invalid(std::move(message));
  }

  static size_t Column(size_t offset) { return offset + 1; }

  // "end of expression", "field 'device.os'", "number 5", "string 'abc'", "'and'".
  std::string Describe(Tok kind, size_t offset, size_t length) const {
    constexpr size_t kMaxShown = 32;
    std::string_view source = text_.substr(offset, length);
    std::string shown = Printable(source.substr(0, kMaxShown));
    if (source.size() > kMaxShown) shown += "...";
    switch (kind) {
      case Tok::kEnd: return "end of expression";
      case Tok::kField: return fmt::format("field '{}'", shown);
      case Tok::kInt:
      case Tok::kDouble: return fmt::format("number {}", shown);
      case Tok::kString: return fmt::format("string {}", shown);
      default: return fmt::format("'{}'", shown);
    }
  }
  std::string DescribeCurrent() const { return Describe(tok_.kind, tok_.offset, tok_.length); }
  std::string DescribePrevious() const { return Describe(prev_kind_, prev_offset_, prev_length_); }

  // ---- Lexer ----

  // Moves to the next token.
  Status Advance() {
    prev_kind_ = tok_.kind;
    prev_offset_ = tok_.offset;
    prev_length_ = tok_.length;
    while (pos_ < text_.size() && IsSpace(text_[pos_])) ++pos_;
    tok_ = Token();
    tok_.offset = pos_;
    if (pos_ >= text_.size()) return Status::Ok();
    const char c = text_[pos_];
    Status status;
    if (c == '\'' || c == '"') {
      status = LexString();
    } else if (IsDigit(c) || c == '-') {
      status = LexNumber();
    } else if (IsIdentStart(c)) {
      status = LexWord();
    } else {
      status = LexSymbol();
    }
    tok_.length = pos_ - tok_.offset;
    return status;
  }

  Status LexString() {
    const size_t start = pos_;
    const char quote = text_[pos_++];
    while (true) {
      if (pos_ >= text_.size() || (text_[pos_] == '\\' && pos_ + 1 >= text_.size())) {
        return Fail(start, fmt::format("unterminated string starting at column {}; end it with a matching {} "
                                       "(write \\{} for a quote inside the string)",
                                       Column(start), quote, quote));
      }
      const char c = text_[pos_];
      if (c == quote) {
        ++pos_;
        break;
      }
      if (c != '\\') {
        tok_.text.push_back(c);
        ++pos_;
        continue;
      }
      const char escaped = text_[pos_ + 1];
      switch (escaped) {
        case '\\': tok_.text.push_back('\\'); break;
        case '\'': tok_.text.push_back('\''); break;
        case '"': tok_.text.push_back('"'); break;
        case 'n': tok_.text.push_back('\n'); break;
        case 't': tok_.text.push_back('\t'); break;
        default:
          return Fail(pos_, fmt::format("unknown escape '\\{}' at column {} in the string starting at column {}; "
                                        "the escapes are \\\\ \\' \\\" \\n and \\t",
                                        Printable(escaped), Column(pos_), Column(start)));
      }
      pos_ += 2;
    }
    tok_.kind = Tok::kString;
    return Status::Ok();
  }

  Status LexNumber() {
    const size_t start = pos_;
    const auto digits = [&] {
      while (pos_ < text_.size() && IsDigit(text_[pos_])) ++pos_;
    };
    const auto at = [&](size_t k) { return k < text_.size() ? text_[k] : '\0'; };
    if (at(pos_) == '-') {
      ++pos_;
      if (!IsDigit(at(pos_))) {
        return Fail(start, fmt::format("'-' at column {} must start a negative number such as -5 (no space after "
                                       "the '-'); arithmetic is not supported",
                                       Column(start)));
      }
    }
    digits();
    bool is_double = false;
    if (at(pos_) == '.') {
      is_double = true;
      ++pos_;
      if (!IsDigit(at(pos_))) {
        return Fail(start, fmt::format("invalid number '{}' at column {}: expected digits after the decimal "
                                       "point, such as 1.5",
                                       Printable(text_.substr(start, pos_ - start)), Column(start)));
      }
      digits();
    }
    if (at(pos_) == 'e' || at(pos_) == 'E') {
      is_double = true;
      ++pos_;
      if (at(pos_) == '+' || at(pos_) == '-') ++pos_;
      if (!IsDigit(at(pos_))) {
        return Fail(start, fmt::format("invalid number '{}' at column {}: expected digits in the exponent, "
                                       "such as 1e6",
                                       Printable(text_.substr(start, pos_ - start)), Column(start)));
      }
      digits();
    }
    if (IsIdentChar(at(pos_)) || at(pos_) == '.') {
      while (IsIdentChar(at(pos_)) || at(pos_) == '.') ++pos_;
      return Fail(start, fmt::format("invalid number '{}' at column {}: a number cannot run into letters or "
                                     "dots; field names start with a letter or '_'",
                                     Printable(text_.substr(start, pos_ - start)), Column(start)));
    }
    const char* first = text_.data() + start;
    const char* last = text_.data() + pos_;
    if (!is_double) {
      const auto [end, error] = std::from_chars(first, last, tok_.int_value);
      if (error == std::errc() && end == last) {
        tok_.kind = Tok::kInt;
        return Status::Ok();
      }
      // Beyond int64: read it as a double, as the event parser does.
    }
    const auto [end, error] = std::from_chars(first, last, tok_.double_value);
    if (error != std::errc() || end != last || !std::isfinite(tok_.double_value)) {
      return Fail(start, fmt::format("number '{}' at column {} is out of range; numbers must fit a 64-bit "
                                     "floating point value (about 1e-308 to 1e308 in magnitude)",
                                     Printable(text_.substr(start, pos_ - start)), Column(start)));
    }
    tok_.kind = Tok::kDouble;
    return Status::Ok();
  }

  Status LexWord() {
    const size_t start = pos_;
    const auto identifier = [&] {
      const size_t begin = pos_;
      while (pos_ < text_.size() && IsIdentChar(text_[pos_])) ++pos_;
      return text_.substr(begin, pos_ - begin);
    };
    const std::string_view first = identifier();
    if (std::optional<Tok> keyword = KeywordKind(first)) {
      tok_.kind = *keyword;
      return Status::Ok();
    }
    while (pos_ < text_.size() && text_[pos_] == '.') {
      const size_t dot = pos_++;
      if (pos_ >= text_.size() || !IsIdentStart(text_[pos_])) {
        return Fail(dot, fmt::format("field name '{}' at column {} has no name after its '.'; write a dotted "
                                     "path such as device.os",
                                     Printable(text_.substr(start, pos_ - start)), Column(start)));
      }
      const size_t component_start = pos_;
      const std::string_view component = identifier();
      if (KeywordKind(component)) {
        return Fail(component_start,
                    fmt::format("'{}' at column {} is a keyword and cannot be part of the field name '{}'",
                                component, Column(component_start), text_.substr(start, pos_ - start)));
      }
    }
    tok_.kind = Tok::kField;
    tok_.text.assign(text_.substr(start, pos_ - start));
    return Status::Ok();
  }

  Status LexSymbol() {
    const size_t start = pos_;
    const auto at = [&](size_t k) { return k < text_.size() ? text_[k] : '\0'; };
    const auto unknown = [&](std::string_view op, std::string_view advice) {
      return Fail(start, fmt::format("unknown operator '{}' at column {}; {}", op, Column(start), advice));
    };
    const auto single = [&](Tok kind) {
      tok_.kind = kind;
      pos_ += 1;
      return Status::Ok();
    };
    const auto pair = [&](Tok kind) {
      tok_.kind = kind;
      pos_ += 2;
      return Status::Ok();
    };
    const char c = text_[pos_];
    const char next = at(pos_ + 1);
    switch (c) {
      case '(': return single(Tok::kLParen);
      case ')': return single(Tok::kRParen);
      case '[': return single(Tok::kLBracket);
      case ']': return single(Tok::kRBracket);
      case ',': return single(Tok::kComma);
      case '<':
        if (next == '=') return pair(Tok::kLe);
        if (next == '>') return unknown("<>", "did you mean '!='?");
        return single(Tok::kLt);
      case '>':
        if (next == '=') return pair(Tok::kGe);
        return single(Tok::kGt);
      case '=':
        if (next == '=') {
          if (at(pos_ + 2) == '=') return unknown("===", "did you mean '=='?");
          return pair(Tok::kEq);
        }
        if (next == '<') return unknown("=<", "did you mean '<='?");
        if (next == '>') return unknown("=>", "did you mean '>='?");
        return unknown("=", "did you mean '=='?");
      case '!':
        if (next == '=') {
          if (at(pos_ + 2) == '=') return unknown("!==", "did you mean '!='?");
          return pair(Tok::kNe);
        }
        return unknown("!", "use 'not' to negate a condition, or '!=' for not equal");
      case '&': return unknown(next == '&' ? "&&" : "&", "did you mean 'and'?");
      case '|': return unknown(next == '|' ? "||" : "|", "did you mean 'or'?");
      case '.':
        if (IsDigit(next)) {
          return Fail(start, fmt::format("a number at column {} starts with '.'; write a digit before the "
                                         "decimal point, such as 0.5",
                                         Column(start)));
        }
        break;
      default: break;
    }
    return Fail(start, fmt::format("unexpected character '{}' at column {}; an expression is made of field names, "
                                   "'strings', numbers, true, false, null, the operators == != < <= > >=, "
                                   "in [...], and, or, not, and parentheses",
                                   Printable(c), Column(start)));
  }

  // ---- Parser ----

  Status TooDeep(size_t offset) {
    return Fail(offset, fmt::format("the expression nests more than {} levels deep (parentheses and 'not') at "
                                    "column {}; simplify it",
                                    kMaxDepth, Column(offset)));
  }

  uint32_t AddNode(ExprNode::Node node, std::pair<ExprNode::Span, ExprNode::Span> spans = {}) {
    program_.nodes.push_back(std::move(node));
    program_.operand_spans.push_back(spans);
    return static_cast<uint32_t>(program_.nodes.size() - 1);
  }

  uint32_t AddJunction(ExprNode::Kind kind, const std::vector<uint32_t>& terms) {
    ExprNode::Node node;
    node.kind = kind;
    node.first = static_cast<uint32_t>(program_.children.size());
    node.count = static_cast<uint32_t>(terms.size());
    program_.children.insert(program_.children.end(), terms.begin(), terms.end());
    return AddNode(std::move(node));
  }

  // or_expr := and_expr ("or" and_expr)*   and   and_expr := not_expr ("and" not_expr)*
  Result<uint32_t> ParseJunction(ExprNode::Kind kind, int depth) {
    const bool is_or = kind == ExprNode::Kind::kOr;
    const Tok keyword = is_or ? Tok::kOr : Tok::kAnd;
    const auto parse_term = [&]() { return is_or ? ParseJunction(ExprNode::Kind::kAnd, depth) : ParseNot(depth); };
    std::vector<uint32_t> terms;
    FRESHET_ASSIGN_OR_RETURN(uint32_t first, parse_term());
    terms.push_back(first);
    while (tok_.kind == keyword) {
      const size_t keyword_offset = tok_.offset;
      FRESHET_RETURN_IF_ERROR(Advance());
      if (!StartsCondition(tok_.kind)) {
        return Fail(tok_.offset, fmt::format("'{}' at column {} needs a condition on its right, but found {}",
                                             is_or ? "or" : "and", Column(keyword_offset), DescribeCurrent()));
      }
      FRESHET_ASSIGN_OR_RETURN(uint32_t term, parse_term());
      terms.push_back(term);
    }
    if (terms.size() == 1) return terms[0];
    return AddJunction(kind, terms);
  }

  Result<uint32_t> ParseOr(int depth) { return ParseJunction(ExprNode::Kind::kOr, depth); }

  // not_expr := "not" not_expr | primary
  Result<uint32_t> ParseNot(int depth) {
    if (tok_.kind != Tok::kNot) return ParsePrimary(depth);
    if (depth >= kMaxDepth) return TooDeep(tok_.offset);
    const size_t not_offset = tok_.offset;
    FRESHET_RETURN_IF_ERROR(Advance());
    if (!StartsCondition(tok_.kind)) {
      return Fail(tok_.offset, fmt::format("'not' at column {} needs a condition on its right, such as "
                                           "not (country == 'US'), but found {}",
                                           Column(not_offset), DescribeCurrent()));
    }
    FRESHET_ASSIGN_OR_RETURN(uint32_t child, ParseNot(depth + 1));
    ExprNode::Node node;
    node.kind = ExprNode::Kind::kNot;
    node.first = child;
    return AddNode(std::move(node));
  }

  // primary := "(" or_expr ")" | operand [ cmp_op operand | "in" "[" literal ("," literal)* "]" ]
  Result<uint32_t> ParsePrimary(int depth) {
    if (tok_.kind == Tok::kLParen) {
      if (depth >= kMaxDepth) return TooDeep(tok_.offset);
      const size_t open = tok_.offset;
      FRESHET_RETURN_IF_ERROR(Advance());
      if (tok_.kind == Tok::kRParen) {
        return Fail(open, fmt::format("empty parentheses at column {}; put a condition inside, such as "
                                      "(amount > 10)",
                                      Column(open)));
      }
      FRESHET_ASSIGN_OR_RETURN(uint32_t inner, ParseOr(depth + 1));
      if (tok_.kind != Tok::kRParen) return UnexpectedAfterCondition(open);
      FRESHET_RETURN_IF_ERROR(Advance());
      last_was_bare_ = false;
      return inner;
    }
    if (!StartsOperand(tok_.kind)) return ExpectedCondition();

    ExprNode::Node node;
    std::pair<ExprNode::Span, ExprNode::Span> spans;
    spans.first = CurrentSpan();
    FRESHET_RETURN_IF_ERROR(ParseOperand(&node.lhs));
    last_was_bare_ = false;
    if (IsComparison(tok_.kind)) {
      node.kind = ExprNode::Kind::kCompare;
      node.op = ToCmpOp(tok_.kind);
      FRESHET_RETURN_IF_ERROR(Advance());
      if (!StartsOperand(tok_.kind)) {
        return Fail(tok_.offset, fmt::format("expected a value (field name, 'string', number, true, false or "
                                             "null) after '{}' but found {}",
                                             CmpOpText(node.op), DescribeCurrent()));
      }
      spans.second = CurrentSpan();
      FRESHET_RETURN_IF_ERROR(ParseOperand(&node.rhs));
      if (IsComparison(tok_.kind)) {
        return Fail(tok_.offset, fmt::format("comparisons cannot be chained: found '{}' at column {} right "
                                             "after a comparison; join two comparisons with 'and', such as "
                                             "a < b and b < c",
                                             CmpOpText(ToCmpOp(tok_.kind)), Column(tok_.offset)));
      }
      return AddNode(std::move(node), spans);
    }
    if (tok_.kind == Tok::kIn) {
      node.kind = ExprNode::Kind::kIn;
      FRESHET_RETURN_IF_ERROR(ParseInList(&node));
      return AddNode(std::move(node), spans);
    }
    node.kind = ExprNode::Kind::kTest;
    last_was_bare_ = true;
    return AddNode(std::move(node), spans);
  }

  ExprNode::Span CurrentSpan() const {
    return ExprNode::Span{static_cast<uint32_t>(tok_.offset), static_cast<uint32_t>(tok_.length)};
  }

  // Consumes the current token, which must start an operand.
  Status ParseOperand(ExprNode::Operand* operand) {
    if (tok_.kind == Tok::kField) {
      uint32_t index = 0;
      while (index < program_.paths.size() && program_.paths[index] != tok_.text) ++index;
      if (index == program_.paths.size()) program_.paths.push_back(tok_.text);
      operand->slot = 0;  // Made the registry's slot by InternFields once the whole expression parses.
      operand->path_index = index;
    } else {
      operand->slot = -1;
      operand->literal = TakeLiteral();
    }
    return Advance();
  }

  // The current token, which must be a literal, as a Value. String text moves into the program.
  Value TakeLiteral() {
    switch (tok_.kind) {
      case Tok::kString:
        program_.strings.push_back(std::move(tok_.text));
        return Value::String(program_.strings.back());
      case Tok::kInt: return Value::Int(tok_.int_value);
      case Tok::kDouble: return Value::Double(tok_.double_value);
      case Tok::kTrue: return Value::Bool(true);
      case Tok::kFalse: return Value::Bool(false);
      default: return Value::Null();
    }
  }

  // "in" "[" literal ("," literal)* "]", or an empty list; the current token is "in".
  Status ParseInList(ExprNode::Node* node) {
    const size_t in_offset = tok_.offset;
    FRESHET_RETURN_IF_ERROR(Advance());
    if (tok_.kind != Tok::kLBracket) {
      return Fail(tok_.offset, fmt::format("'in' at column {} must be followed by a list in brackets, such as "
                                           "['US', 'CA'], but found {}",
                                           Column(in_offset), DescribeCurrent()));
    }
    const size_t open = tok_.offset;
    FRESHET_RETURN_IF_ERROR(Advance());
    node->first = static_cast<uint32_t>(program_.lists.size());
    node->count = 0;
    if (tok_.kind == Tok::kRBracket) return Advance();
    while (true) {
      if (tok_.kind == Tok::kField) {
        return Fail(tok_.offset, fmt::format("the list after 'in' can hold only literal values ('string', "
                                             "number, true, false or null), but found {} at column {}; compare "
                                             "two fields with ==",
                                             DescribeCurrent(), Column(tok_.offset)));
      }
      if (!IsLiteral(tok_.kind)) {
        if (tok_.kind == Tok::kRBracket) {
          return Fail(tok_.offset, fmt::format("expected a value after ',' in the list at column {} but found "
                                               "']'; remove the trailing comma",
                                               Column(open)));
        }
        return Fail(tok_.offset, fmt::format("expected a value ('string', number, true, false or null) in the "
                                             "list that starts at column {} but found {}",
                                             Column(open), DescribeCurrent()));
      }
      program_.list_spans.push_back(CurrentSpan());
      program_.lists.push_back(TakeLiteral());
      ++node->count;
      FRESHET_RETURN_IF_ERROR(Advance());
      if (tok_.kind == Tok::kComma) {
        FRESHET_RETURN_IF_ERROR(Advance());
        continue;
      }
      if (tok_.kind == Tok::kRBracket) return Advance();
      return Fail(tok_.offset, fmt::format("expected ',' or ']' in the list that starts at column {} but found {}",
                                           Column(open), DescribeCurrent()));
    }
  }

  // The current token cannot start a condition.
  Status ExpectedCondition() {
    const size_t column = Column(tok_.offset);
    switch (tok_.kind) {
      case Tok::kAnd:
      case Tok::kOr: {
        const char* word = tok_.kind == Tok::kAnd ? "and" : "or";
        return Fail(tok_.offset, fmt::format("'{}' at column {} needs a condition on its left, such as "
                                             "amount > 10 {} country == 'US'",
                                             word, column, word));
      }
      case Tok::kRParen:
        return Fail(tok_.offset,
                    fmt::format("unmatched ')' at column {}; remove it or add a matching '(' before it", column));
      case Tok::kIn:
        return Fail(tok_.offset, fmt::format("'in' at column {} needs a value on its left, such as "
                                             "country in ['US', 'CA']",
                                             column));
      default: break;
    }
    if (IsComparison(tok_.kind)) {
      const char* op = CmpOpText(ToCmpOp(tok_.kind));
      return Fail(tok_.offset, fmt::format("'{}' at column {} needs a value on its left, such as amount {} 10", op,
                                           column, op));
    }
    return Fail(tok_.offset, fmt::format("expected a condition (a field name, a value, 'not' or '(') at column {} "
                                         "but found {}",
                                         column, DescribeCurrent()));
  }

  // A complete condition is followed by something that cannot follow it. `open_paren`: the offset of
  // the '(' being closed, if any.
  Status UnexpectedAfterCondition(std::optional<size_t> open_paren) {
    if (tok_.kind == Tok::kEnd && open_paren) {
      return Fail(tok_.offset, fmt::format("missing ')' to close the '(' at column {}; found end of expression",
                                           Column(*open_paren)));
    }
    if (tok_.kind == Tok::kRParen && !open_paren) {
      return Fail(tok_.offset, fmt::format("unmatched ')' at column {}; remove it or add a matching '(' before it",
                                           Column(tok_.offset)));
    }
    std::string expected =
        last_was_bare_ ? "an operator (==, !=, <, <=, >, >=, in), 'and', 'or'" : std::string("'and', 'or'");
    if (open_paren) {
      expected += fmt::format(" or ')' (to close the '(' at column {})", Column(*open_paren));
    } else {
      expected += " or end of expression";
    }
    std::string message = fmt::format("expected {} after {}, but found {} at column {}", expected,
                                      DescribePrevious(), DescribeCurrent(), Column(tok_.offset));
    // "AND", "Not": a keyword in the wrong case reads as a field name.
    std::string_view word;
    if (tok_.kind == Tok::kField) word = tok_.text;
    if (prev_kind_ == Tok::kField && KeywordKind(ToLower(text_.substr(prev_offset_, prev_length_)))) {
      word = text_.substr(prev_offset_, prev_length_);
    }
    if (!word.empty() && KeywordKind(ToLower(word))) {
      message += fmt::format("; keywords are lowercase: write '{}'", ToLower(word));
    } else if (StartsCondition(tok_.kind) && !last_was_bare_) {
      message += "; join conditions with 'and' or 'or'";
    }
    return Fail(tok_.offset, std::move(message));
  }

  std::string_view text_;
  ExprNode& program_;
  size_t pos_ = 0;  // Next byte to lex.
  Token tok_;       // The current token.
  Tok prev_kind_ = Tok::kEnd;
  size_t prev_offset_ = 0;
  size_t prev_length_ = 0;
  bool last_was_bare_ = false;  // The last primary parsed was a bare operand (it could still take an operator).
  size_t error_offset_ = 0;
};

}  // namespace

Result<Expr> Expr::Parse(std::string_view text, FieldRegistry& fields, size_t* error_offset) {
  auto program = std::make_unique<ExprNode>();
  Parser parser(text, *program);
  Status status = parser.Parse();
  if (!status.ok()) {
    if (error_offset != nullptr) *error_offset = parser.error_offset();
    return status;
  }
  parser.InternFields(fields);
  return Expr(std::move(program));
}

bool Expr::Eval(std::span<const Value> slots) const {
  return root_ != nullptr && root_->EvalNode(root_->root, slots);
}

std::vector<ExprCondition> Expr::Conditions() const {
  std::vector<ExprCondition> out;
  if (root_ == nullptr) return out;
  const ExprNode& program = *root_;
  auto operand = [&](const ExprNode::Operand& o, ExprNode::Span span) {
    ExprOperandInfo info;
    info.is_field = o.slot >= 0;
    if (info.is_field) info.path = program.paths[o.path_index];
    else info.literal_type = o.literal.type;
    info.offset = span.offset;
    info.length = span.length;
    return info;
  };
  for (size_t k = 0; k < program.nodes.size(); ++k) {
    const ExprNode::Node& node = program.nodes[k];
    const auto& [lhs_span, rhs_span] = program.operand_spans[k];
    ExprCondition condition;
    switch (node.kind) {
      case ExprNode::Kind::kCompare:
        condition.kind = ExprCondition::Kind::kCompare;
        condition.op = CmpOpText(node.op);
        condition.rhs = operand(node.rhs, rhs_span);
        break;
      case ExprNode::Kind::kIn:
        condition.kind = ExprCondition::Kind::kIn;
        for (uint32_t j = node.first; j < node.first + node.count; ++j) {
          ExprOperandInfo item;
          item.literal_type = program.lists[j].type;
          item.offset = program.list_spans[j].offset;
          item.length = program.list_spans[j].length;
          condition.list.push_back(std::move(item));
        }
        break;
      case ExprNode::Kind::kTest:
        condition.kind = ExprCondition::Kind::kTest;
        break;
      default:
        continue;  // and, or, not: their conditions are nodes of their own.
    }
    condition.lhs = operand(node.lhs, lhs_span);
    out.push_back(std::move(condition));
  }
  std::sort(out.begin(), out.end(),
            [](const ExprCondition& a, const ExprCondition& b) { return a.lhs.offset < b.lhs.offset; });
  return out;
}

std::string Expr::ToString() const {
  std::string out;
  if (root_ != nullptr) root_->PrintNode(root_->root, &out);
  return out;
}

Expr::Expr(std::unique_ptr<ExprNode> root) : root_(std::move(root)) {}
Expr::Expr(Expr&&) noexcept = default;
Expr& Expr::operator=(Expr&&) noexcept = default;
Expr::~Expr() = default;

}  // namespace freshet

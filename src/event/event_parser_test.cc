#include "event/event_parser.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <random>

#include "event/dead_letters.h"
#include "event/line_reader.h"

namespace freshet {
namespace {

class EventParserTest : public ::testing::Test {
 protected:
  EventParserTest() {
    fields_.Intern("user_id");
    fields_.Intern("ts");
    amount_ = fields_.Intern("amount");
    os_ = fields_.Intern("device.os");
    device_ = fields_.Intern("device");
    parser_ = std::make_unique<EventParser>(fields_);
  }
  // Returns the rejection reason, or "" when the line parses.
  std::string Reject(std::string_view line) {
    std::string reason;
    return parser_->ParseCopy(line, &event_, &reason) ? "" : reason;
  }

  FieldRegistry fields_;
  int amount_, os_, device_;
  std::unique_ptr<EventParser> parser_;
  ParsedEvent event_;
};

TEST_F(EventParserTest, ExtractsTypedFieldsAndNestedPaths) {
  ASSERT_EQ(Reject(R"({"user_id":"u1","ts":1767225600000,"amount":12.5,"device":{"os":"ios","v":[1,2]},"x":null})"), "");
  EXPECT_EQ(event_.entity, "u1");
  EXPECT_EQ(event_.time_ms, 1767225600000);
  EXPECT_EQ(event_.slots[amount_].type, ValueType::kDouble);
  EXPECT_DOUBLE_EQ(event_.slots[amount_].d, 12.5);
  EXPECT_EQ(event_.slots[os_].type, ValueType::kString);
  EXPECT_EQ(event_.slots[os_].s, "ios");
  EXPECT_EQ(event_.slots[device_].type, ValueType::kComposite);
}

TEST_F(EventParserTest, MissingAndNullAreDistinct) {
  ASSERT_EQ(Reject(R"({"user_id":"u1","ts":5,"amount":null})"), "");
  EXPECT_EQ(event_.slots[amount_].type, ValueType::kNull);
  EXPECT_EQ(event_.slots[os_].type, ValueType::kMissing);
  ASSERT_EQ(Reject(R"({"user_id":"u1","ts":5,"device":"flat"})"), "");
  EXPECT_EQ(event_.slots[os_].type, ValueType::kMissing);  // device is not an object: no device.os.
}

TEST_F(EventParserTest, IntegerEntityIsItsDecimalText) {
  ASSERT_EQ(Reject(R"({"user_id":-42,"ts":5})"), "");
  EXPECT_EQ(event_.entity, "-42");
}

TEST_F(EventParserTest, RfcTimestampAndDuplicateKeysLastWins) {
  ASSERT_EQ(Reject(R"({"user_id":"a","ts":"2026-01-01T01:00:00+01:00","amount":1,"amount":2})"), "");
  EXPECT_EQ(event_.time_ms, 1767225600000);
  EXPECT_EQ(event_.slots[amount_].i, 2);
}

TEST_F(EventParserTest, NumbersKeepTheirKind) {
  ASSERT_EQ(Reject(R"({"user_id":"a","ts":1,"amount":9223372036854775807})"), "");
  EXPECT_EQ(event_.slots[amount_].type, ValueType::kInt);
  ASSERT_EQ(Reject(R"({"user_id":"a","ts":1,"amount":18446744073709551615})"), "");
  EXPECT_EQ(event_.slots[amount_].type, ValueType::kDouble);
  ASSERT_EQ(Reject(R"({"user_id":"a","ts":1,"amount":1e3})"), "");
  EXPECT_EQ(event_.slots[amount_].type, ValueType::kDouble);
}

TEST(EventParserFromString, ANumberInAStringConvertsOnlyWhereTheSchemaSaysSo) {
  FieldRegistry fields;
  fields.Intern("user_id");
  fields.Intern("ts");
  const int amount = fields.Intern("amount");
  const int count = fields.Intern("count");
  const int label = fields.Intern("label");
  fields.SetSchema(amount, FieldSchema{FieldType::kNumber, true});
  fields.SetSchema(count, FieldSchema{FieldType::kInt, true});
  fields.SetSchema(label, FieldSchema{FieldType::kString, false});
  EventParser parser(fields);
  ParsedEvent event;
  std::string reason;
  const auto parse = [&](const std::string& values) {
    const std::string line = R"({"user_id":"u1","ts":5,)" + values + "}";
    EXPECT_TRUE(parser.ParseCopy(line, &event, &reason)) << reason;
  };
  parse(R"("amount":"12.5","count":"7","label":"12.5")");
  EXPECT_EQ(event.slots[amount].type, ValueType::kDouble);
  EXPECT_DOUBLE_EQ(event.slots[amount].d, 12.5);
  EXPECT_EQ(event.slots[count].type, ValueType::kInt);
  EXPECT_EQ(event.slots[count].i, 7);
  EXPECT_EQ(event.slots[label].type, ValueType::kString);  // No from_string: text stays text.
  parse(R"("amount":"-3","count":"7.5")");
  EXPECT_EQ(event.slots[amount].type, ValueType::kInt);  // Integers read as integers, as in JSON.
  EXPECT_EQ(event.slots[amount].i, -3);
  EXPECT_EQ(event.slots[count].type, ValueType::kString);  // int takes no fraction: stays text (wrong type).
  parse(R"("amount":"1e3","count":"9223372036854775808")");
  EXPECT_DOUBLE_EQ(event.slots[amount].d, 1000.0);
  EXPECT_EQ(event.slots[count].type, ValueType::kString);  // Beyond int64.
  // Not JSON number syntax: stays text.
  for (const char* text : {"\" 12\"", "\"12 \"", "\"+1\"", "\"01\"", "\".5\"", "\"1.\"", "\"NaN\"", "\"inf\"", "\"\"",
                           "\"12abc\"", "\"1e999\""}) {
    parse(std::string(R"("amount":)") + text);
    EXPECT_EQ(event.slots[amount].type, ValueType::kString) << text;
  }
  parse(R"("amount":12)");  // A number stays a number.
  EXPECT_EQ(event.slots[amount].type, ValueType::kInt);
}

TEST_F(EventParserTest, RejectsMalformedLinesWithAReason) {
  struct Case {
    std::string line;
    std::string phrase;
  };
  const std::vector<Case> cases = {
      {"", "empty line"},
      {"   \t", "empty line"},
      {R"({"user_id":"u1","ts":5)", "invalid JSON"},
      {R"({"user_id":"u1","ts":5}})", "invalid JSON"},
      {R"([1,2,3])", "not a JSON object"},
      {R"("just a string")", "not a JSON object"},
      {R"({"ts":5})", "'user_id' (the entity) is missing"},
      {R"({"user_id":"","ts":5})", "empty string"},
      {R"({"user_id":1.5,"ts":5})", "non-empty string or an integer"},
      {R"({"user_id":true,"ts":5})", "non-empty string or an integer"},
      {R"({"user_id":null,"ts":5})", "non-empty string or an integer"},
      {R"({"user_id":"u1"})", "'ts' (the timestamp) is missing"},
      {R"({"user_id":"u1","ts":1.5})", "must be epoch milliseconds"},
      {R"({"user_id":"u1","ts":"yesterday"})", "invalid timestamp"},
      {R"({"user_id":"u1","ts":"2026-01-01T00:00:00"})", "offset is missing"},
      {R"({"user_id":"u1","ts":99999999999999999})", "outside years"},
      {R"({"user_id":"u1","ts":5,"amount":123456789012345678901234567890})", "invalid JSON"},
      {R"({"user_id":"u1","ts":5,"amount":1e400})", "invalid JSON"},
      {R"({"user_id":"u1","ts":5,"amount":NaN})", "invalid JSON"},
      {"{\"user_id\":\"u\xff\",\"ts\":5}", "invalid JSON"},
      {"{\"user_id\":\"u1\",\"ts\":5,\"x\":\"\xc3\x28\"}", "invalid JSON"},
      {R"({"user_id":"u1","ts":5,"x":[1,2,,]})", "invalid JSON"},
  };
  for (const Case& c : cases) {
    const std::string reason = Reject(c.line);
    EXPECT_NE(reason.find(c.phrase), std::string::npos) << "line: " << c.line << "\nreason: " << reason;
  }
}

TEST_F(EventParserTest, DeepNestingIsRejectedNotACrash) {
  std::string deep = R"({"user_id":"u1","ts":5,"x":)";
  for (int k = 0; k < 100000; ++k) deep += "[";
  for (int k = 0; k < 100000; ++k) deep += "]";
  deep += "}";
  EXPECT_NE(Reject(deep).find("invalid JSON"), std::string::npos);
}

TEST_F(EventParserTest, RandomBytesNeverCrash) {
  std::mt19937_64 rng(7);
  const std::string seed_line = R"({"user_id":"u1","ts":1767225600000,"amount":12.5,"device":{"os":"ios"}})";
  for (int k = 0; k < 20000; ++k) {
    std::string line = seed_line;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = rng() % line.size();
      switch (rng() % 3) {
        case 0: line[pos] = static_cast<char>(rng() % 256); break;
        case 1: line.erase(pos, 1 + rng() % 5); break;
        default: line.insert(pos, 1, static_cast<char>(rng() % 256));
      }
      if (line.empty()) line = "{";
    }
    std::string reason;
    if (!parser_->ParseCopy(line, &event_, &reason)) {
      EXPECT_FALSE(reason.empty());
    }
  }
}

TEST(EventParserCompositeKey, EncodesThePartsAndNamesAMissingOne) {
  FieldRegistry fields;
  fields.Intern("user_id");
  fields.Intern("ts");
  fields.SetKeySlots({0, fields.Intern("merchant_id")});
  EventParser parser(fields);
  ParsedEvent event;
  std::string reason;
  ASSERT_TRUE(parser.ParseCopy(R"({"user_id":"a\u001f","merchant_id":"b","ts":1})", &event, &reason)) << reason;
  EXPECT_EQ(event.entity, "a\x1E\x1F\x1F" "b");
  ASSERT_TRUE(parser.ParseCopy(R"({"user_id":7,"merchant_id":"m","ts":1})", &event, &reason)) << reason;
  EXPECT_EQ(event.entity, "7\x1Fm");
  EXPECT_FALSE(parser.ParseCopy(R"({"user_id":"u1","ts":1})", &event, &reason));
  EXPECT_EQ(reason, "field 'merchant_id' (part of the entity key [user_id, merchant_id]) is missing");
  EXPECT_FALSE(parser.ParseCopy(R"({"user_id":"","merchant_id":"m","ts":1})", &event, &reason));
  EXPECT_EQ(reason, "field 'user_id' (part of the entity key [user_id, merchant_id]) must be a non-empty string or "
                    "an integer, got an empty string");
}

TEST(LineReader, NumbersLinesStripsCarriageReturnsAndHandlesNoFinalNewline) {
  char path[] = "/tmp/freshet_line_reader_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::string text = "a\r\n\nccc\n" + std::string(kMaxLineBytes + 10, 'x') + "\nlast";
  ASSERT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  close(fd);
  LineReader reader;
  ASSERT_TRUE(reader.Open(path).ok());
  Line line;
  std::vector<std::pair<uint64_t, std::string>> got;
  std::vector<bool> too_long;
  while (reader.Next(&line)) {
    got.emplace_back(line.number, std::string(line.text.substr(0, 4)));
    too_long.push_back(line.too_long);
  }
  std::remove(path);
  ASSERT_EQ(got.size(), 5u);
  EXPECT_EQ(got[0], (std::pair<uint64_t, std::string>{1, "a"}));
  EXPECT_EQ(got[1], (std::pair<uint64_t, std::string>{2, ""}));
  EXPECT_EQ(got[2], (std::pair<uint64_t, std::string>{3, "ccc"}));
  EXPECT_TRUE(too_long[3]);
  EXPECT_EQ(got[4], (std::pair<uint64_t, std::string>{5, "last"}));
  EXPECT_EQ(reader.bytes_consumed(), text.size());
}

TEST(DeadLetters, EscapesAndReplacesInvalidUtf8) {
  std::string out;
  AppendJsonEscaped("a\"b\\c\n\x01 \xc3\xa9 \xff", &out);
  EXPECT_EQ(out, "a\\\"b\\\\c\\n\\u0001 \xc3\xa9 \xEF\xBF\xBD");
}


// Several feature sets read each line once (SharedLines); each parser must then give exactly what its own Parse
// gives: the same fields in its own slots, its own from_string, the same rejections and reasons. Lines of every
// kind, and enough of them (one with a string longer than an arena block) that the copied strings span blocks.
TEST(SharedLines, EachParserGetsWhatItsOwnParseGives) {
  FieldRegistry users, merchants;
  for (const char* path : {"user_id", "ts", "amount", "device.os", "tags"}) users.Intern(path);
  users.SetSchema(2, FieldSchema{FieldType::kNumber, /*from_string=*/true});
  for (const char* path : {"merchant_id", "ts", "device", "amount", "note"}) merchants.Intern(path);
  std::vector<std::string> lines = {
      R"({"user_id":"u1","merchant_id":"m1","ts":5,"amount":"12.5","device":{"os":"ios"},"note":"a"})",
      R"({"user_id":7,"ts":"2026-01-01T00:00:00Z","amount":3,"amount":"4","device":"flat"})",
      R"({"merchant_id":"m2","ts":6,"amount":1e3,"device":{"os":null},"tags":[1,2]})",
      R"({"user_id":"u1","ts":)", "[1,2]", "   ", R"({"user_id":"","merchant_id":2.5,"ts":true})",
      R"({"user_id":"u\"q","merchant_id":"m\u00e9","ts":9,"note":")" + std::string(300 << 10, 'x') + R"("})"};
  std::mt19937 rng(15);
  for (int k = 0; k < 3000; ++k) {
    lines.push_back(R"({"user_id":"u)" + std::to_string(rng() % 50) + R"(","merchant_id":"m)" +
                    std::to_string(rng() % 9) + R"(","ts":)" + std::to_string(1000 + k) + R"(,"amount":")" +
                    std::to_string(rng() % 900) + R"(","note":"n)" + std::to_string(k) + R"("})");
  }
  const FieldRegistry* registries[] = {&users, &merchants};
  SharedLines shared(registries);
  std::vector<std::string> padded;
  for (const std::string& line : lines) padded.push_back(line + std::string(kParsePaddingBytes, '\0'));
  for (const std::string& p : padded) shared.Add(std::string_view(p.data(), p.size() - kParsePaddingBytes), p.size());
  ASSERT_EQ(shared.size(), lines.size());
  for (const FieldRegistry* fields : registries) {
    EventParser alone(*fields), sharing(*fields);
    for (size_t k = 0; k < lines.size(); ++k) {
      ParsedEvent a, b;
      std::string why_a, why_b;
      const bool parsed = alone.ParseCopy(lines[k], &a, &why_a);
      ASSERT_EQ(sharing.ParseShared(shared, k, &b, &why_b), parsed) << k;
      EXPECT_EQ(sharing.SharedLineLacksEntity(shared, k), !parsed && !a.slots.empty() && a.slots[kEntitySlot].is_missing()) << k;
      if (!parsed) {
        EXPECT_EQ(why_b, why_a) << k;
        continue;
      }
      EXPECT_EQ(b.entity, a.entity) << k;
      EXPECT_EQ(b.time_ms, a.time_ms) << k;
      ASSERT_EQ(b.slots.size(), a.slots.size());
      for (size_t slot = 0; slot < a.slots.size(); ++slot) {
        const Value &x = a.slots[slot], &y = b.slots[slot];
        EXPECT_EQ(y.type, x.type) << k << " " << fields->paths()[slot];
        if (x.type == ValueType::kString) {
          EXPECT_EQ(y.s, x.s) << k;
        } else if (x.is_number()) {
          EXPECT_EQ(y.as_double(), x.as_double()) << k;
        }
      }
    }
  }
}

}  // namespace
}  // namespace freshet

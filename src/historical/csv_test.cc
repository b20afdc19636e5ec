#include "historical/csv.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>

namespace freshet {
namespace {

TEST(Csv, ParsesQuotedFieldsAndKeepsRawText) {
  const std::string text = "user_id,ts,note\r\nu1,5,\"a, \"\"b\"\"\nc\"\n\nu2,6,\n";
  Result<std::vector<CsvRecord>> records = ParseCsv(text, "e.csv");
  ASSERT_TRUE(records.ok()) << records.status().message();
  ASSERT_EQ(records->size(), 3u);
  EXPECT_EQ((*records)[0].fields, (std::vector<std::string>{"user_id", "ts", "note"}));
  EXPECT_EQ((*records)[1].fields, (std::vector<std::string>{"u1", "5", "a, \"b\"\nc"}));
  EXPECT_EQ((*records)[1].raw, "u1,5,\"a, \"\"b\"\"\nc\"");
  EXPECT_EQ((*records)[1].line, 2u);
  EXPECT_EQ((*records)[2].fields, (std::vector<std::string>{"u2", "6", ""}));
  EXPECT_EQ((*records)[2].line, 5u);
}

TEST(Csv, UnterminatedQuoteNamesTheLine) {
  Result<std::vector<CsvRecord>> records = ParseCsv("a,b\nx,\"oops\n", "e.csv");
  ASSERT_FALSE(records.ok());
  EXPECT_NE(records.status().message().find("e.csv:2: unterminated quoted field"), std::string::npos);
}

TEST(Csv, FieldsAreQuotedOnlyWhenNeeded) {
  std::string out;
  AppendCsvField("plain", &out);
  out += '|';
  AppendCsvField("a,b", &out);
  out += '|';
  AppendCsvField("say \"hi\"", &out);
  EXPECT_EQ(out, "plain|\"a,b\"|\"say \"\"hi\"\"\"");
}

TEST(Csv, DoublesReadBackToTheSameValue) {
  std::mt19937_64 rng(3);
  for (int k = 0; k < 10000; ++k) {
    uint64_t bits = rng();
    double d;
    std::memcpy(&d, &bits, sizeof(d));
    if (!std::isfinite(d)) continue;
    std::string out;
    AppendCsvValue(Value::Double(d), &out);
    EXPECT_EQ(std::strtod(out.c_str(), nullptr), d) << out;
  }
  std::string out;
  AppendCsvValue(Value::Int(-9223372036854775807LL - 1), &out);
  out += ',';
  AppendCsvValue(Value::Null(), &out);
  out += ',';
  AppendCsvValue(Value::Bool(true), &out);
  out += ',';
  AppendCsvValue(Value::String("x,y"), &out);
  EXPECT_EQ(out, "-9223372036854775808,,true,\"x,y\"");
}

}  // namespace
}  // namespace freshet

// Tests for the `serve` map's limits against hostile clients (issue 11): values read into ServeSpec, the
// defaults when absent, and the errors for a misspelt key and for values the server cannot take, each naming
// the file, line and column, the key, and what to write instead.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "spec/spec.h"

namespace freshet {
namespace {

constexpr char kHead[] =
    "name: t\nentity: user_id\ntimestamp: ts\nfeatures:\n"
    "  - {name: n, aggregation: count, window: {type: lifetime}}\n";

TEST(ServeSpecTest, LimitsAreReadWithTheirDefaults) {
  Result<Spec> defaults = ParseSpec(std::string(kHead), "t.yaml");
  ASSERT_TRUE(defaults.ok()) << defaults.status().message();
  EXPECT_EQ(defaults->serve.max_connections, 10000);
  EXPECT_EQ(defaults->serve.header_timeout_ms, 10000);
  EXPECT_EQ(defaults->serve.body_timeout_ms, 10000);
  EXPECT_EQ(defaults->serve.min_body_rate_kib, 64);
  EXPECT_EQ(defaults->serve.max_buffered_request_mib, 256);

  Result<Spec> spec = ParseSpec(std::string(kHead) +
                                    "serve: {port: 0, max_connections: 500, header_timeout: 3s, body_timeout: 1m, "
                                    "min_body_rate_kib: 16, max_buffered_request_mib: 64}\n",
                                "t.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  EXPECT_EQ(spec->serve.max_connections, 500);
  EXPECT_EQ(spec->serve.header_timeout_ms, 3000);
  EXPECT_EQ(spec->serve.body_timeout_ms, 60000);
  EXPECT_EQ(spec->serve.min_body_rate_kib, 16);
  EXPECT_EQ(spec->serve.max_buffered_request_mib, 64);
}

TEST(ServeSpecTest, BadLimitsSayWhereAndHowToFix) {
  const struct {
    std::string serve;
    std::vector<std::string> phrases;
  } kCases[] = {
      {"{max_conections: 10}", {"t.yaml:6:", "unknown key 'max_conections'; did you mean 'max_connections'?"}},
      {"{max_connections: 0}", {"t.yaml:6:", "'max_connections' must be an integer from 1 to 1000000, got '0'"}},
      {"{header_timeout: 500ms}", {"t.yaml:6:", "serve.header_timeout must be at least 1s, got 500ms",
                                   "header_timeout: 1s or more"}},
      {"{body_timeout: 10}", {"t.yaml:6:", "'body_timeout' needs a unit: write 10m, not 10"}},
      {"{max_buffered_request_mib: 8}",
       {"t.yaml:6:", "'max_buffered_request_mib' must be an integer from 16 to 1048576, got '8'"}},
  };
  for (const auto& c : kCases) {
    Result<Spec> spec = ParseSpec(std::string(kHead) + "serve: " + c.serve + "\n", "t.yaml");
    ASSERT_FALSE(spec.ok()) << c.serve;
    for (const std::string& phrase : c.phrases) {
      EXPECT_NE(spec.status().message().find(phrase), std::string::npos)
          << c.serve << ": no '" << phrase << "' in:\n" << spec.status().message();
    }
  }
}

}  // namespace
}  // namespace freshet

#include "gen/generator.h"

#include <gtest/gtest.h>
#include <simdjson.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/time.h"

namespace freshet {
namespace {

constexpr int64_t kStart = 1767225600000;  // 2026-01-01T00:00:00Z.

std::string Capture(const GeneratorOptions& options, bool entities = false) {
  char* data = nullptr;
  size_t size = 0;
  FILE* out = open_memstream(&data, &size);
  EXPECT_NE(out, nullptr);
  Status status = entities ? GenerateEntities(options, out) : GenerateEvents(options, out);
  EXPECT_TRUE(status.ok()) << status.message();
  std::fclose(out);
  std::string text(data, size);
  std::free(data);
  return text;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    EXPECT_NE(end, std::string::npos) << "the output must end with a newline";
    if (end == std::string::npos) end = text.size();
    lines.push_back(text.substr(begin, end - begin));
    begin = end + 1;
  }
  return lines;
}

// One event line checked against the documented contract, independently of the generator's code.
struct Checked {
  bool ok = false;
  std::string why;  // Why a line was rejected.
  std::string user_id;
  int64_t ts = 0;
  bool ts_is_text = false;
  std::string type;
  std::string category;
  std::string item_id;
  double amount = 0;
  bool success = false;
  std::string device;
};

const std::set<std::string>& KnownCategories() {
  static const std::set<std::string> categories = {"books",  "electronics", "clothing", "home",
                                                   "toys",   "sports",      "beauty",   "grocery",
                                                   "garden", "automotive",  "music",    "games"};
  return categories;
}

bool IsIdWithNumber(std::string_view text, char prefix, uint64_t max) {
  if (text.size() < 2 || text[0] != prefix || text[1] == '0') return false;
  uint64_t n = 0;
  for (char c : text.substr(1)) {
    if (c < '0' || c > '9') return false;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  return n >= 1 && n <= max;
}

Checked Check(simdjson::dom::parser& parser, const std::string& line, uint64_t users) {
  Checked c;
  auto reject = [&](std::string why) {
    c.ok = false;
    c.why = std::move(why);
    return c;
  };
  simdjson::dom::element root;
  if (parser.parse(simdjson::padded_string(line)).get(root) != simdjson::SUCCESS) return reject("json");
  simdjson::dom::object object;
  if (root.get_object().get(object) != simdjson::SUCCESS) return reject("not object");
  std::vector<std::string> keys;
  for (auto field : object) keys.emplace_back(field.key);
  std::string_view text;
  if (object["user_id"].get_string().get(text) != simdjson::SUCCESS) return reject("user_id");
  c.user_id = std::string(text);
  simdjson::dom::element ts;
  if (object["ts"].get(ts) != simdjson::SUCCESS) return reject("ts missing");
  if (ts.type() == simdjson::dom::element_type::INT64) {
    c.ts = int64_t(ts);
  } else if (ts.type() == simdjson::dom::element_type::STRING) {
    Result<int64_t> parsed = ParseRfc3339Ms(std::string_view(ts));
    if (!parsed.ok()) return reject("ts text");
    c.ts = *parsed;
    c.ts_is_text = true;
    if (std::string_view(ts) != FormatRfc3339(c.ts)) return reject("BUG: ts not as FormatRfc3339 writes it");
  } else {
    return reject("ts type");
  }
  if (object["type"].get_string().get(text) != simdjson::SUCCESS) return reject("type");
  c.type = std::string(text);
  // From here on a rejection is a generator bug, not a deliberate malformation.
  if (line.find(' ') != std::string::npos) return reject("BUG: space in line");
  if (!IsIdWithNumber(c.user_id, 'u', users)) return reject("BUG: user_id " + c.user_id);
  std::vector<std::string> expected_keys;
  if (c.type == "view") {
    expected_keys = {"user_id", "ts", "type", "category", "item_id"};
  } else if (c.type == "purchase") {
    expected_keys = {"user_id", "ts", "type", "category", "item_id", "amount"};
  } else if (c.type == "refund") {
    expected_keys = {"user_id", "ts", "type", "item_id", "amount"};
  } else if (c.type == "login") {
    expected_keys = {"user_id", "ts", "type", "success", "device"};
  } else {
    return reject("BUG: type " + c.type);
  }
  if (keys != expected_keys) return reject("BUG: keys of " + line);
  if (c.type == "view" || c.type == "purchase") {
    if (object["category"].get_string().get(text) != simdjson::SUCCESS) return reject("BUG: category");
    c.category = std::string(text);
    if (KnownCategories().count(c.category) == 0) return reject("BUG: category " + c.category);
  }
  if (c.type != "login") {
    if (object["item_id"].get_string().get(text) != simdjson::SUCCESS) return reject("BUG: item_id");
    c.item_id = std::string(text);
    if (!IsIdWithNumber(c.item_id, 'i', 1'000'000)) return reject("BUG: item_id " + c.item_id);
  }
  if (c.type == "purchase" || c.type == "refund") {
    simdjson::dom::element amount = object["amount"];
    if (amount.type() != simdjson::dom::element_type::DOUBLE) return reject("BUG: amount is not a decimal");
    c.amount = double(amount);
    const double cents = c.amount * 100;
    if (!(c.amount > 0) || std::abs(cents - std::round(cents)) > 1e-6) return reject("BUG: amount " + line);
  }
  if (c.type == "login") {
    if (object["success"].get_bool().get(c.success) != simdjson::SUCCESS) return reject("BUG: success");
    if (object["device"].get_string().get(text) != simdjson::SUCCESS) return reject("BUG: device");
    c.device = std::string(text);
    if (c.device != "ios" && c.device != "android" && c.device != "web")
      return reject("BUG: device " + c.device);
  }
  c.ok = true;
  return c;
}

std::vector<Checked> CheckAll(const std::string& text, uint64_t users) {
  simdjson::dom::parser parser;
  std::vector<Checked> checked;
  for (const std::string& line : Lines(text)) checked.push_back(Check(parser, line, users));
  return checked;
}

GeneratorOptions Small() {
  GeneratorOptions options;
  options.users = 500;
  options.events = 20000;
  options.duration_ms = 6 * 3600 * 1000;
  return options;
}

TEST(GeneratorTest, SameSeedSameBytesOtherSeedOtherBytes) {
  GeneratorOptions options = Small();
  options.disorder_ms = 3000;
  options.late_share = 0.02;
  options.malformed_share = 0.05;
  options.timestamp_format = TimestampFormat::kMixed;
  const std::string first = Capture(options);
  EXPECT_EQ(first, Capture(options));
  options.seed = 2;
  const std::string other = Capture(options);
  EXPECT_NE(first, other);
  EXPECT_EQ(Lines(other).size(), 20000u);
}

TEST(GeneratorTest, EveryLineFollowsTheContract) {
  const GeneratorOptions options = Small();
  const std::vector<Checked> events = CheckAll(Capture(options), options.users);
  ASSERT_EQ(events.size(), 20000u);
  std::map<std::string, int> by_type;
  for (const Checked& e : events) {
    ASSERT_TRUE(e.ok) << e.why;
    EXPECT_FALSE(e.ts_is_text);
    ++by_type[e.type];
  }
  // Views dominate; purchases, logins and refunds all occur.
  EXPECT_GT(by_type["view"], 20000 * 0.6);
  EXPECT_GT(by_type["purchase"], 20000 * 0.01);
  EXPECT_GT(by_type["login"], 20000 * 0.03);
  EXPECT_GT(by_type["refund"], 0);
  EXPECT_LT(by_type["refund"], by_type["purchase"]);
}

TEST(GeneratorTest, TimesStayInTheSpanInOrderAndSpreadEvenly) {
  GeneratorOptions options = Small();
  options.start_ms = kStart + 123;
  const std::vector<Checked> events = CheckAll(Capture(options), options.users);
  ASSERT_EQ(events.size(), 20000u);
  const int64_t end = options.start_ms + options.duration_ms;
  int quarters[4] = {};
  for (size_t i = 0; i < events.size(); ++i) {
    ASSERT_TRUE(events[i].ok) << events[i].why;
    ASSERT_GE(events[i].ts, options.start_ms);
    ASSERT_LT(events[i].ts, end);
    if (i > 0) {
      ASSERT_LE(events[i - 1].ts, events[i].ts) << "line " << i + 1;
    }
    ++quarters[(events[i].ts - options.start_ms) * 4 / options.duration_ms];
  }
  for (int q : quarters) EXPECT_NEAR(q, 5000, 600);
  EXPECT_LT(events.front().ts - options.start_ms, options.duration_ms / 100);
  EXPECT_LT(end - events.back().ts, options.duration_ms / 100);
}

TEST(GeneratorTest, DensityIsEvenUpToTheEdges) {
  GeneratorOptions options;
  options.users = 100000;
  options.events = 200000;
  options.duration_ms = 2 * 3600 * 1000;
  const std::string text = Capture(options);
  int first_minute = 0;
  int last_minute = 0;
  int lines = 0;
  for (size_t at = text.find("\"ts\":"); at != std::string::npos; at = text.find("\"ts\":", at + 1)) {
    const int64_t ts = std::strtoll(text.c_str() + at + 5, nullptr, 10);
    first_minute += ts < kStart + 60'000;
    last_minute += ts >= kStart + options.duration_ms - 60'000;
    ++lines;
  }
  ASSERT_EQ(lines, 200000);
  // 200000 / 120 minutes; visits cluster events, so allow about three standard deviations.
  EXPECT_NEAR(first_minute, 1667, 250);
  EXPECT_NEAR(last_minute, 1667, 250);
}

TEST(GeneratorTest, ExactLineCountInEdgeCases) {
  GeneratorOptions options;
  options.events = 0;
  EXPECT_EQ(Capture(options), "");
  options.events = 1;
  EXPECT_EQ(Lines(Capture(options)).size(), 1u);
  options.users = 1;
  options.events = 5000;
  options.duration_ms = 1000;  // Far more events than the visits' own pace allows.
  std::vector<Checked> events = CheckAll(Capture(options), options.users);
  ASSERT_EQ(events.size(), 5000u);
  for (const Checked& e : events) {
    ASSERT_TRUE(e.ok) << e.why;
    EXPECT_EQ(e.user_id, "u1");
    EXPECT_GE(e.ts, kStart);
    EXPECT_LT(e.ts, kStart + 1000);
  }
  // Before 1970, in both timestamp formats.
  options = Small();
  options.start_ms = *ParseRfc3339Ms("1960-02-29T23:59:00Z");
  options.timestamp_format = TimestampFormat::kMixed;
  events = CheckAll(Capture(options), options.users);
  ASSERT_EQ(events.size(), 20000u);
  for (size_t i = 0; i < events.size(); ++i) {
    ASSERT_TRUE(events[i].ok) << events[i].why;
    ASSERT_GE(events[i].ts, options.start_ms);
    ASSERT_LT(events[i].ts, options.start_ms + options.duration_ms);
    if (i > 0) {
      ASSERT_LE(events[i - 1].ts, events[i].ts);
    }
  }
}

TEST(GeneratorTest, DisorderIsBoundedAndOnlyReorders) {
  GeneratorOptions options = Small();
  const std::string in_order = Capture(options);
  options.disorder_ms = 5000;
  const std::string disordered = Capture(options);
  const std::vector<Checked> events = CheckAll(disordered, options.users);
  ASSERT_EQ(events.size(), 20000u);
  int64_t max_ts = INT64_MIN;
  int64_t max_lag = 0;
  int inversions = 0;
  for (const Checked& e : events) {
    ASSERT_TRUE(e.ok) << e.why;
    if (e.ts < max_ts) {
      ++inversions;
      max_lag = std::max(max_lag, max_ts - e.ts);
    }
    max_ts = std::max(max_ts, e.ts);
  }
  EXPECT_LE(max_lag, 5000);
  EXPECT_GT(max_lag, 2500);
  EXPECT_GT(inversions, 100);
  // The same events, only in another order.
  std::vector<std::string> a = Lines(in_order);
  std::vector<std::string> b = Lines(disordered);
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  EXPECT_EQ(a, b);
}

// Many events per millisecond and a long disorder: the bound must hold exactly, not just on average.
TEST(GeneratorTest, DisorderBoundHoldsAtHighDensity) {
  GeneratorOptions options;
  options.users = 10000;
  options.events = 300'000;
  options.duration_ms = 40'000;
  options.disorder_ms = 10'000;  // Buckets of 10 ms, with about 75 events each.
  const std::string text = Capture(options);
  int64_t max_ts = INT64_MIN;
  int64_t max_lag = 0;
  int lines = 0;
  for (size_t at = text.find("\"ts\":"); at != std::string::npos; at = text.find("\"ts\":", at + 1)) {
    const int64_t ts = std::strtoll(text.c_str() + at + 5, nullptr, 10);
    if (ts < max_ts) max_lag = std::max(max_lag, max_ts - ts);
    max_ts = std::max(max_ts, ts);
    ++lines;
  }
  ASSERT_EQ(lines, 300'000);
  EXPECT_LE(max_lag, 10'000);
  EXPECT_GT(max_lag, 9'900);
}

TEST(GeneratorTest, LateShareWritesEventsFarBehindTheStream) {
  GeneratorOptions options = Small();
  options.disorder_ms = 2000;
  options.late_share = 0.05;
  const std::vector<Checked> events = CheckAll(Capture(options), options.users);
  ASSERT_EQ(events.size(), 20000u);
  const int64_t late_lag = 2 * 2000 + 5 * 60 * 1000;
  int64_t max_ts = INT64_MIN;
  int late = 0;
  int in_between = 0;
  for (const Checked& e : events) {
    ASSERT_TRUE(e.ok) << e.why;
    const int64_t lag = max_ts == INT64_MIN ? 0 : max_ts - e.ts;
    if (lag >= late_lag) {
      ++late;
    } else if (lag > 2000) {
      ++in_between;  // Only late events still held at the end of the stream may land here.
    }
    max_ts = std::max(max_ts, e.ts);
  }
  EXPECT_NEAR(late / 20000.0, 0.05, 0.012);
  EXPECT_LT(in_between, 20000 * 0.005);
}

TEST(GeneratorTest, MalformedShareIsRejectedAtAboutTheRequestedRate) {
  GeneratorOptions options = Small();
  options.malformed_share = 0.1;
  options.timestamp_format = TimestampFormat::kRfc3339;
  const std::vector<Checked> events = CheckAll(Capture(options), options.users);
  ASSERT_EQ(events.size(), 20000u);
  std::map<std::string, int> reasons;
  int rejected = 0;
  for (const Checked& e : events) {
    if (e.ok) {
      EXPECT_TRUE(e.ts_is_text);
      continue;
    }
    ASSERT_EQ(e.why.rfind("BUG", 0), std::string::npos) << e.why;
    ++rejected;
    ++reasons[e.why];
  }
  EXPECT_NEAR(rejected / 20000.0, 0.1, 0.015);
  // Every kind of damage shows up: broken JSON (truncated, bad UTF-8, empty line), not an object, no user_id,
  // no ts, ts of a wrong type, ts an invalid RFC 3339 text.
  for (const char* reason : {"json", "not object", "user_id", "ts missing", "ts type", "ts text"}) {
    EXPECT_GT(reasons[reason], 50) << reason;
  }
  EXPECT_GT(reasons["json"], 3 * 150);  // Truncated, invalid UTF-8 and empty lines all fail to parse.
}

TEST(GeneratorTest, MalformedKindsIncludeEmptyLinesAndInvalidUtf8) {
  GeneratorOptions options = Small();
  options.malformed_share = 0.2;
  const std::vector<std::string> lines = Lines(Capture(options));
  ASSERT_EQ(lines.size(), 20000u);
  int empty = 0;
  int bad_utf8 = 0;
  for (const std::string& line : lines) {
    if (line.empty()) ++empty;
    if (!simdjson::validate_utf8(line.data(), line.size())) ++bad_utf8;
  }
  EXPECT_NEAR(empty, 20000 * 0.2 / 8, 150);
  EXPECT_NEAR(bad_utf8, 20000 * 0.2 / 8, 150);
}

TEST(GeneratorTest, TimestampFormatsWriteTheSameInstants) {
  GeneratorOptions options = Small();
  const std::vector<Checked> epoch = CheckAll(Capture(options), options.users);
  options.timestamp_format = TimestampFormat::kRfc3339;
  const std::vector<Checked> text = CheckAll(Capture(options), options.users);
  options.timestamp_format = TimestampFormat::kMixed;
  const std::vector<Checked> mixed = CheckAll(Capture(options), options.users);
  ASSERT_EQ(epoch.size(), text.size());
  ASSERT_EQ(epoch.size(), mixed.size());
  int mixed_text = 0;
  for (size_t i = 0; i < epoch.size(); ++i) {
    ASSERT_TRUE(text[i].ok && mixed[i].ok) << text[i].why << mixed[i].why;
    EXPECT_TRUE(text[i].ts_is_text);
    EXPECT_EQ(text[i].ts, epoch[i].ts);
    EXPECT_EQ(mixed[i].ts, epoch[i].ts);
    mixed_text += mixed[i].ts_is_text;
  }
  EXPECT_NEAR(mixed_text, 10000, 400);
  // The text form is exactly FormatRfc3339 of the instant.
  options.timestamp_format = TimestampFormat::kRfc3339;
  const std::string first = Lines(Capture(options)).front();
  EXPECT_NE(first.find(FormatRfc3339(epoch.front().ts)), std::string::npos) << first;
}

TEST(GeneratorTest, ActivityIsSkewed) {
  GeneratorOptions options;
  options.users = 1000;
  options.events = 100000;
  std::vector<int64_t> per_user(options.users + 1, 0);
  for (const Checked& e : CheckAll(Capture(options), options.users)) {
    ASSERT_TRUE(e.ok) << e.why;
    ++per_user[std::stoul(e.user_id.substr(1))];
  }
  std::sort(per_user.begin() + 1, per_user.end(), std::greater<>());
  int64_t top_1_percent = 0;
  int64_t bottom_half = 0;
  for (size_t i = 1; i <= 10; ++i) top_1_percent += per_user[i];
  for (size_t i = 501; i <= 1000; ++i) bottom_half += per_user[i];
  // Zipf(1) over 1000 users gives the top 10 about 39% of visits and the bottom 500 about 9%.
  EXPECT_GT(top_1_percent, 100000 * 0.25);
  EXPECT_LT(bottom_half, 100000 * 0.15);
  EXPECT_GT(top_1_percent, 2 * bottom_half);
}

TEST(GeneratorTest, AttackersFailManyLoginsInARowAndRefundsMatchPurchases) {
  GeneratorOptions options;
  options.users = 1000;
  options.events = 100000;
  const std::vector<Checked> events = CheckAll(Capture(options), options.users);
  std::map<std::string, int> failure_run;
  std::map<std::string, int> longest_run;
  std::map<std::pair<std::string, std::string>, std::vector<double>> purchases;
  int logins = 0;
  int failures = 0;
  int refunds = 0;
  for (const Checked& e : events) {
    ASSERT_TRUE(e.ok) << e.why;
    if (e.type == "login") {
      ++logins;
      failures += !e.success;
      int& run = failure_run[e.user_id];
      run = e.success ? 0 : run + 1;
      longest_run[e.user_id] = std::max(longest_run[e.user_id], run);
    } else if (e.type == "purchase") {
      purchases[{e.user_id, e.item_id}].push_back(e.amount);
    } else if (e.type == "refund") {
      ++refunds;
      const auto& earlier = purchases[{e.user_id, e.item_id}];
      EXPECT_NE(std::find(earlier.begin(), earlier.end(), e.amount), earlier.end())
          << "a refund must give back an earlier purchase of the same user and item";
    }
  }
  EXPECT_GT(refunds, 10);
  EXPECT_GT(failures, 0);
  EXPECT_LT(failures, logins / 2) << "most logins succeed";
  int attackers = 0;
  for (const auto& [user, run] : longest_run) attackers += run >= 5;
  EXPECT_GE(attackers, 1);
  EXPECT_LE(attackers, 20);
}

TEST(GeneratorTest, EntityRowsAreWellFormedAndLabelAttackers) {
  GeneratorOptions options;
  options.users = 1000;
  options.entity_rows = 20000;
  options.duration_ms = 10 * 3600 * 1000;
  const std::string csv = Capture(options, /*entities=*/true);
  EXPECT_EQ(csv, Capture(options, /*entities=*/true));
  // The users with runs of failed logins, from the events of the same seed.
  options.events = 100000;
  std::set<std::string> failing_users;
  std::map<std::string, int> run;
  for (const Checked& e : CheckAll(Capture(options), options.users)) {
    if (e.type != "login") continue;
    run[e.user_id] = e.success ? 0 : run[e.user_id] + 1;
    if (run[e.user_id] >= 5) failing_users.insert(e.user_id);
  }
  ASSERT_FALSE(failing_users.empty());

  const std::vector<std::string> lines = Lines(csv);
  ASSERT_EQ(lines.size(), 20001u);
  EXPECT_EQ(lines[0], "user_id,ts,label");
  int64_t previous_ts = INT64_MIN;
  int labelled[2][2] = {};  // [failing user][label]
  for (size_t i = 1; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    const size_t comma1 = line.find(',');
    const size_t comma2 = line.find(',', comma1 + 1);
    ASSERT_NE(comma2, std::string::npos) << line;
    const std::string user = line.substr(0, comma1);
    ASSERT_TRUE(IsIdWithNumber(user, 'u', options.users)) << line;
    char* end = nullptr;
    const int64_t ts = std::strtoll(line.c_str() + comma1 + 1, &end, 10);
    ASSERT_EQ(end, line.c_str() + comma2) << line;
    EXPECT_GE(ts, kStart);
    EXPECT_LT(ts, kStart + options.duration_ms * 11 / 10);
    EXPECT_GE(ts, previous_ts);
    previous_ts = ts;
    const std::string label = line.substr(comma2 + 1);
    ASSERT_TRUE(label == "0" || label == "1") << line;
    ++labelled[failing_users.count(user)][label == "1"];
  }
  EXPECT_GT(previous_ts, kStart + options.duration_ms);  // The rows reach into the extra 10%.
  const double failing_rate = labelled[1][1] / double(labelled[1][0] + labelled[1][1]);
  const double other_rate = labelled[0][1] / double(labelled[0][0] + labelled[0][1]);
  EXPECT_GT(labelled[1][0] + labelled[1][1], 50);
  EXPECT_GT(failing_rate, 0.6);
  EXPECT_LT(other_rate, 0.06);
}

// Removes `,"event_id":"eN"` from a line; returns N (0 when there is none).
uint64_t TakeEventId(std::string* line) {
  const std::string key = ",\"event_id\":\"e";
  const size_t at = line->find(key);
  if (at == std::string::npos) return 0;
  const size_t end = line->find('"', at + key.size());
  const uint64_t n = std::stoull(line->substr(at + key.size(), end - at - key.size()));
  line->erase(at, end + 1 - at);
  return n;
}

TEST(GeneratorTest, EventIdsNumberTheLinesAndChangeNothingElse) {
  GeneratorOptions options = Small();
  options.disorder_ms = 5000;
  options.late_share = 0.01;
  const std::vector<std::string> plain = Lines(Capture(options));
  options.event_ids = true;
  std::vector<std::string> with_ids = Lines(Capture(options));
  ASSERT_EQ(with_ids.size(), plain.size());
  simdjson::dom::parser parser;
  for (size_t k = 0; k < with_ids.size(); ++k) {
    // Right after ts: {"user_id":"u1","ts":1767225600000,"event_id":"e1","type":...
    EXPECT_NE(with_ids[k].find(",\"event_id\":\"e" + std::to_string(k + 1) + "\",\"type\":"), std::string::npos)
        << with_ids[k];
    EXPECT_EQ(TakeEventId(&with_ids[k]), k + 1);
    EXPECT_EQ(with_ids[k], plain[k]);
  }
}

TEST(GeneratorTest, DuplicateShareResendsEarlierLinesByteForByteALittleLater) {
  GeneratorOptions options = Small();
  options.disorder_ms = 2000;
  options.event_ids = true;  // So every original line is unique.
  const std::vector<std::string> originals = Lines(Capture(options));
  options.duplicate_share = 0.05;
  const std::string text = Capture(options);
  EXPECT_EQ(Capture(options), text);  // Deterministic.
  const std::vector<std::string> lines = Lines(text);
  // Dropping every line seen before gives the stream without resends: turning the knob reshuffles nothing.
  // Each resend follows its original by 1 to kMaxResendDelayLines original lines.
  std::map<std::string, size_t> first_at;  // Line text -> originals written when it first appeared.
  std::vector<std::string> without_resends;
  size_t resends = 0;
  for (const std::string& line : lines) {
    auto [it, first] = first_at.emplace(line, without_resends.size());
    if (first) {
      without_resends.push_back(line);
      continue;
    }
    ++resends;
    const size_t behind = without_resends.size() - it->second;
    EXPECT_GE(behind, 1u);
    EXPECT_LE(behind, kMaxResendDelayLines + 1) << line;
  }
  EXPECT_EQ(without_resends, originals);
  EXPECT_EQ(lines.size(), originals.size() + resends);
  EXPECT_NEAR(static_cast<double>(resends) / static_cast<double>(options.events), 0.05, 0.01);
  options.duplicate_share = 1.5;
  EXPECT_NE(ValidateGeneratorOptions(options).message().find("--duplicate-share"), std::string::npos);
}

TEST(GeneratorTest, RejectsBadOptions) {
  GeneratorOptions options;
  options.users = 0;
  EXPECT_EQ(ValidateGeneratorOptions(options).code(), StatusCode::kInvalidArgument);
  options = GeneratorOptions{};
  options.late_share = 1.5;
  Status status = ValidateGeneratorOptions(options);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("--late-share"), std::string::npos) << status.message();
  options = GeneratorOptions{};
  options.malformed_share = std::nan("");
  EXPECT_FALSE(ValidateGeneratorOptions(options).ok());
  options = GeneratorOptions{};
  options.duration_ms = 0;
  EXPECT_FALSE(ValidateGeneratorOptions(options).ok());
  EXPECT_FALSE(ParseTimestampFormat("iso").ok());
  EXPECT_EQ(*ParseTimestampFormat("rfc3339"), TimestampFormat::kRfc3339);
}

TEST(GeneratorTest, ReportsWriteErrors) {
  FILE* full = std::fopen("/dev/full", "w");
  if (full == nullptr) GTEST_SKIP() << "no /dev/full";
  GeneratorOptions options = Small();
  Status status = GenerateEvents(options, full);
  std::fclose(full);
  EXPECT_EQ(status.code(), StatusCode::kIoError);
}

TEST(GeneratorTest, MerchantsNamePurchasesAndRefundsWithoutChangingAnythingElse) {
  GeneratorOptions options = Small();
  const std::vector<std::string> plain = Lines(Capture(options));
  options.merchants = 7;
  const std::vector<std::string> lines = Lines(Capture(options));
  ASSERT_EQ(lines.size(), plain.size());
  size_t named = 0;
  for (size_t k = 0; k < lines.size(); ++k) {
    const size_t at = lines[k].find(",\"merchant_id\":\"m");
    const bool sale = lines[k].find("\"type\":\"purchase\"") != std::string::npos ||
                      lines[k].find("\"type\":\"refund\"") != std::string::npos;
    if (at == std::string::npos) {
      EXPECT_FALSE(sale) << lines[k];
      EXPECT_EQ(lines[k], plain[k]);
      continue;
    }
    ++named;
    // Right after item_id "i<item>": merchant 1 + item % 7; without it the line is the plain one.
    const size_t item_at = lines[k].rfind("\"item_id\":\"i", at) + 12;
    const uint64_t item = std::stoull(lines[k].substr(item_at, at - 1 - item_at));
    const size_t end = lines[k].find('"', at + 17);
    EXPECT_EQ(lines[k].substr(at + 17, end - at - 17), std::to_string(1 + item % 7)) << lines[k];
    EXPECT_EQ(lines[k].substr(0, at) + lines[k].substr(end + 1), plain[k]);
  }
  EXPECT_GT(named, lines.size() / 100);  // Purchases and refunds: a few percent of the lines.
}

}  // namespace
}  // namespace freshet

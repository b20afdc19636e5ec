#include "table/table_set.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <tuple>

#include "event/event_parser.h"
#include "event/line_reader.h"
#include "table/table_file.h"

namespace freshet {
namespace {

constexpr std::string_view kSpec = R"(name: t
entity: user
timestamp: ts
tables:
  - {name: profiles, key: user_id, valid_from: updated_at}
  - {name: plans, key: id}
joins:
  - {table: profiles, on: user}
  - {table: plans, on: plan}
derive:
  - {name: age, expr: "ts - profiles.created_ms"}
features:
  - {name: vip, aggregation: count, where: "profiles.segment == 'vip'", window: {type: lifetime}}
  - {name: price, aggregation: sum, field: plans.price, window: {type: lifetime}}
  - {name: age_max, aggregation: max, field: age, window: {type: lifetime}}
)";

Spec LoadTestSpec() {
  Result<Spec> spec = ParseSpec(kSpec, "t.yaml");
  EXPECT_TRUE(spec.ok()) << spec.status().message();
  return std::move(spec).value();
}

TableRow Row(const Spec& spec, size_t table, std::string_view json) {
  Result<TableRow> row = ParseTableRow(spec.tables[table], json);
  EXPECT_TRUE(row.ok()) << json << ": " << row.status().message();
  return row.ok() ? *row : TableRow{};
}

int Slot(const Spec& spec, std::string_view path) {
  const auto& paths = spec.fields.paths();
  return static_cast<int>(std::find(paths.begin(), paths.end(), path) - paths.begin());
}

// Parses an event through the parser with `tables`, returning the value of field `path`.
Value Field(const Spec& spec, const TableSet& tables, std::string_view event, std::string_view path,
            std::string* keep) {
  EventParser parser(spec.fields);
  parser.SetTables(&tables);
  ParsedEvent parsed;
  std::string reason;
  EXPECT_TRUE(parser.ParseCopy(event, &parsed, &reason)) << reason;
  Value v = parsed.slots[static_cast<size_t>(Slot(spec, path))];
  if (v.type == ValueType::kString) {
    *keep = std::string(v.s);
    v.s = *keep;
  }
  return v;
}

// Pruning at horizon H keeps, per key, the version an event at H sees and every newer one: events at H or
// later see what they saw before.
TEST(TableSetTest, PruningKeepsWhatEventsAtOrAfterTheHorizonSee) {
  const Spec spec = LoadTestSpec();
  TableSet tables(spec);
  const int64_t none = std::numeric_limits<int64_t>::min();
  for (int64_t from : {1000, 2000, 3000, 4000}) {
    tables.Add(0, Row(spec, 0, R"({"user_id":"a","updated_at":)" + std::to_string(from) + R"(,"segment":"s)" +
                                   std::to_string(from) + R"("})"), none);
  }
  tables.Add(0, Row(spec, 0, R"({"user_id":"b","updated_at":5000,"segment":"b5"})"), none);
  EXPECT_EQ(tables.versions(0), 5u);
  EXPECT_EQ(tables.Prune(none), 0u);
  EXPECT_EQ(tables.Prune(999), 0u);
  EXPECT_EQ(tables.Prune(2500), 1u);  // 1000 goes; 2000 is what an event at 2500 sees.
  std::string keep;
  EXPECT_EQ(Field(spec, tables, R"({"user":"a","ts":2500})", "profiles.segment", &keep).s, "s2000");
  EXPECT_EQ(Field(spec, tables, R"({"user":"a","ts":3999})", "profiles.segment", &keep).s, "s3000");
  EXPECT_EQ(tables.Prune(4000), 2u);  // The newest is at the horizon: only it stays.
  EXPECT_EQ(tables.versions(0), 2u);
  EXPECT_EQ(Field(spec, tables, R"({"user":"a","ts":4000})", "profiles.segment", &keep).s, "s4000");
  EXPECT_EQ(Field(spec, tables, R"({"user":"b","ts":5000})", "profiles.segment", &keep).s, "b5");
  // A version arriving after pruning still takes its place.
  tables.Add(0, Row(spec, 0, R"({"user_id":"a","updated_at":6000,"segment":"s6000"})"), none);
  EXPECT_EQ(tables.Prune(5000), 0u);
  EXPECT_EQ(Field(spec, tables, R"({"user":"a","ts":5000})", "profiles.segment", &keep).s, "s4000");
  EXPECT_EQ(Field(spec, tables, R"({"user":"a","ts":6000})", "profiles.segment", &keep).s, "s6000");
  EXPECT_EQ(tables.versions(0), 3u);
}

TEST(TableSetTest, AnEventSeesTheGreatestValidFromAtOrBeforeItsTime) {
  const Spec spec = LoadTestSpec();
  TableSet tables(spec);
  const int64_t none = std::numeric_limits<int64_t>::min();
  EXPECT_FALSE(tables.Add(0, Row(spec, 0, R"({"user_id":"a","updated_at":1000,"segment":"basic","created_ms":10})"), none));
  EXPECT_FALSE(tables.Add(0, Row(spec, 0, R"({"user_id":"a","updated_at":3000,"segment":"vip","created_ms":20})"), none));
  std::string keep;
  EXPECT_TRUE(Field(spec, tables, R"({"user":"a","ts":500})", "profiles.segment", &keep).is_missing());
  EXPECT_EQ(Field(spec, tables, R"({"user":"a","ts":1000})", "profiles.segment", &keep).s, "basic");
  EXPECT_EQ(Field(spec, tables, R"({"user":"a","ts":2999})", "profiles.segment", &keep).s, "basic");
  EXPECT_EQ(Field(spec, tables, R"({"user":"a","ts":3000})", "profiles.segment", &keep).s, "vip");
  // Derived fields read joined ones.
  EXPECT_EQ(Field(spec, tables, R"({"user":"a","ts":3000})", "age", &keep).i, 2980);
  // No key in the event, an unknown key: missing.
  EXPECT_TRUE(Field(spec, tables, R"({"user":"b","ts":3000})", "profiles.segment", &keep).is_missing());
  // An event's own field named like the table is not read.
  EXPECT_TRUE(Field(spec, tables, R"({"user":"b","ts":3000,"profiles":{"segment":"x"}})", "profiles.segment", &keep)
                  .is_missing());
  // Same valid_from again: the later arrival replaces it. Late: at or before the newest event time.
  EXPECT_TRUE(tables.Add(0, Row(spec, 0, R"({"user_id":"a","updated_at":1000,"segment":"new"})"), 1000));
  EXPECT_EQ(Field(spec, tables, R"({"user":"a","ts":2000})", "profiles.segment", &keep).s, "new");
  EXPECT_EQ(tables.versions(0), 2u);
  EXPECT_EQ(tables.keys(0), 1u);
}

// A version that arrives after an event's line was prefetched but before it is parsed (between two events of one
// batch) is what the event sees, also when the arrival grows the key map and moves every slot.
TEST(TableSetTest, AVersionArrivingAfterTheLineWasPrefetchedIsSeen) {
  const Spec spec = LoadTestSpec();
  TableSet tables(spec);
  const int64_t none = std::numeric_limits<int64_t>::min();
  tables.Add(0, Row(spec, 0, R"({"user_id":"a","updated_at":1000,"segment":"basic"})"), none);
  const std::string first = R"({"user":"a","ts":2000})", second = R"({"user":"a","ts":2001})";
  tables.Prefetch(first);
  tables.Prefetch(second);
  std::string keep;
  EXPECT_EQ(Field(spec, tables, first, "profiles.segment", &keep).s, "basic");
  tables.Add(0, Row(spec, 0, R"({"user_id":"a","updated_at":2001,"segment":"vip"})"), 2000);
  for (int k = 0; k < 100; ++k) {  // Grows the map: the prefetched slot is no longer where "a" lives.
    tables.Add(0, Row(spec, 0, R"({"user_id":"k)" + std::to_string(k) + R"(","updated_at":1})"), 2000);
  }
  EXPECT_EQ(Field(spec, tables, second, "profiles.segment", &keep).s, "vip");
  EXPECT_EQ(Field(spec, tables, first, "profiles.segment", &keep).s, "basic");
}

// Over a batch of lines each line is prefetched once, kTablePrefetchAhead to 2 * kTablePrefetchAhead lines before
// it is processed (the first ones at the batch's start), in batches of kTablePrefetchAhead lines.
TEST(TablePrefetchTest, EachLineOfABatchIsPrefetchedOnceAheadOfIt) {
  for (size_t n : {0u, 1u, 5u, 9u, 17u, 40u}) {
    const size_t begin = 2, end = begin + n;
    std::vector<int> times(end, 0);
    for (size_t k = begin; k < end; ++k) {
      size_t asked = 0;
      PrefetchAhead(begin, k, end, [&](size_t j) {
        ASSERT_GE(j, k);
        ASSERT_LT(j, k + 2 * kTablePrefetchAhead);
        EXPECT_TRUE(k == begin || j >= k + kTablePrefetchAhead) << "line " << j << " asked for late, at " << k;
        ++times[j];
        ++asked;
      });
      EXPECT_TRUE(asked == 0 || k == begin || (k - begin) % kTablePrefetchAhead == 0) << "not a batch, at " << k;
    }
    for (size_t j = begin; j < end; ++j) EXPECT_EQ(times[j], 1) << "line " << j << " of " << n;
  }
}

// Lines read from a file of more than one read buffer, looked at ahead as historical does to prefetch their
// slots: each coming line is visited at most once, in order, before it is read and at most 2 *
// kTablePrefetchAhead lines ahead, in batches (only lines at a refill may go without); and Next, which takes the
// visited lines' ends from LookAhead, returns exactly what a reader that never looks ahead returns (a CR before
// the newline, an overlong line, a last line without a newline included).
TEST(TablePrefetchTest, LinesOfAStreamAreVisitedOnceAheadOfThemAndReadUnchanged) {
  const std::string path = (std::filesystem::temp_directory_path() / "freshet_prefetch_stream_test.jsonl").string();
  const size_t lines = 120000;  // About 7 MB: the reader refills its 4 MB buffer.
  {
    std::ofstream out(path, std::ios::binary);
    for (size_t k = 1; k <= lines; ++k) {
      out << R"({"user":"u)" << k << R"(","ts":)" << k << R"(,"pad":")" << std::string(k % 40, 'x') << "\"}";
      if (k == 5000) out << std::string(kMaxLineBytes + 10, 'y');  // Too long: read truncated, flagged.
      out << (k % 7 == 0 ? "\r\n" : "\n");
    }
    out << "last line without a newline";
  }
  auto read_all = [&](bool look_ahead, std::vector<size_t>* visited, size_t* batches) {
    std::vector<std::tuple<std::string, uint64_t, uint64_t, bool>> got;
    LineReader reader;
    EXPECT_TRUE(reader.Open(path).ok());
    Line line;
    while (reader.Next(&line)) {
      got.emplace_back(std::string(line.text), line.number, line.end_offset, line.too_long);
      if (!look_ahead || reader.lines_ahead() >= kTablePrefetchAhead) continue;
      const size_t before = visited->size();
      reader.LookAhead(2 * kTablePrefetchAhead, [&](std::string_view coming) {
        const size_t at = coming.find("\"ts\":") + 5;
        visited->push_back(std::stoul(std::string(coming.substr(at, coming.find(',', at) - at))));
      });
      if (visited->size() > before) ++*batches;
      for (size_t k = before; k < visited->size(); ++k) {
        EXPECT_GT((*visited)[k], line.number) << "visited after it was read";
        EXPECT_LE((*visited)[k], line.number + 2 * kTablePrefetchAhead);
        EXPECT_TRUE(k == 0 || (*visited)[k] > (*visited)[k - 1]) << "twice or out of order: " << (*visited)[k];
      }
    }
    EXPECT_TRUE(reader.status().ok());
    return got;
  };
  std::vector<size_t> visited, unused;
  size_t batches = 0, unused_batches = 0;
  const auto plain = read_all(false, &unused, &unused_batches);
  const auto ahead = read_all(true, &visited, &batches);
  ASSERT_EQ(plain.size(), lines + 1);
  EXPECT_TRUE(std::get<3>(plain[4999]));
  EXPECT_EQ(std::get<0>(plain[6]).back(), '}');  // The CR is stripped.
  EXPECT_TRUE(ahead == plain);
  // In batches of about kTablePrefetchAhead lines (so that their page walks overlap), not one line per read.
  EXPECT_LE(batches, lines / kTablePrefetchAhead + 10);
  EXPECT_GE(visited.size(), lines - 3 * (2 * kTablePrefetchAhead + 1));  // The first line and refills may miss.
  std::filesystem::remove(path);
}

// RawKey (what the prefetch hashes) against the key a JSON parser reads, for string keys of every length from 1
// to 40 (the 16-byte search and the byte loop after it), at the line's end, with escapes before and after the key's
// closing quote, integers, and a hint that is wrong.
TEST(TablePrefetchTest, RawKeyFindsTheKeyTheParserReads) {
  using table_internal::RawKey;
  std::atomic<size_t> hint{0};
  for (size_t n = 1; n <= 40; ++n) {
    const std::string key = std::string(n - 1, 'k') + std::to_string(n % 10);
    for (const std::string& tail : {std::string(",\"ts\":1,\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxx\"}"), std::string("}"),
                                    std::string(",\"t\":\"a\\\"b\"}")}) {
      const std::string line = "{\"user_id\":\"" + key + "\"" + tail;
      std::optional<std::string_view> got = RawKey(line, "\"user_id\"", hint);
      ASSERT_TRUE(got.has_value()) << line;
      EXPECT_EQ(*got, key) << line;
      const std::string spaced = "{\"ts\": 5, \"user_id\" : \"" + key + "\"" + tail;  // The hint is wrong now.
      got = RawKey(spaced, "\"user_id\"", hint);
      ASSERT_TRUE(got.has_value()) << spaced;
      EXPECT_EQ(*got, key) << spaced;
    }
  }
  // An escape inside the key: no guess (the parser would unescape it), whether the key is short or long.
  EXPECT_FALSE(RawKey(R"({"user_id":"a\"b","ts":1,"pad":"xxxxxxxxxxxxxxxxxxxx"})", "\"user_id\"", hint));
  EXPECT_FALSE(RawKey(R"({"user_id":"aaaaaaaaaaaaaaaaaaaa\nb","ts":1})", "\"user_id\"", hint));
  EXPECT_EQ(RawKey(R"({"user_id":-42,"ts":1,"pad":"xxxxxxxxxxxxxxxxxxxx"})", "\"user_id\"", hint), "-42");
  EXPECT_EQ(RawKey(R"({"user_id":7})", "\"user_id\"", hint), "7");
  EXPECT_FALSE(RawKey(R"({"user_id":"unterminated)", "\"user_id\"", hint));
  EXPECT_FALSE(RawKey(R"({"ts":1})", "\"user_id\"", hint));
}

TEST(TableSetTest, WithoutValidFromTheLatestArrivalWinsAndIntegerKeysReadAsText) {
  const Spec spec = LoadTestSpec();
  TableSet tables(spec);
  EXPECT_FALSE(tables.Add(1, Row(spec, 1, R"({"id":7,"price":10})"), 5000));
  std::string keep;
  EXPECT_EQ(Field(spec, tables, R"({"user":"a","ts":1,"plan":"7"})", "plans.price", &keep).i, 10);
  EXPECT_FALSE(tables.Add(1, Row(spec, 1, R"({"id":"7","price":12.5})"), 5000));  // Never late.
  EXPECT_EQ(Field(spec, tables, R"({"user":"a","ts":1,"plan":7})", "plans.price", &keep).d, 12.5);
  EXPECT_EQ(tables.versions(1), 1u);
}

TEST(TableSetTest, SaveAndLoadKeepEveryVersion) {
  const Spec spec = LoadTestSpec();
  TableSet tables(spec);
  const int64_t none = std::numeric_limits<int64_t>::min();
  tables.Add(0, Row(spec, 0, R"({"user_id":"a","updated_at":1000,"segment":"basic"})"), none);
  tables.Add(0, Row(spec, 0, R"({"user_id":"a","updated_at":3000,"segment":"vip"})"), none);
  tables.Add(1, Row(spec, 1, R"({"id":"p","price":3})"), none);
  std::string bytes;
  ByteWriter out(&bytes);
  tables.Save(out);
  TableSet restored(spec);
  ByteReader in(bytes);
  ASSERT_TRUE(restored.Load(in).ok());
  std::string keep;
  EXPECT_EQ(Field(spec, restored, R"({"user":"a","ts":2000})", "profiles.segment", &keep).s, "basic");
  EXPECT_EQ(Field(spec, restored, R"({"user":"a","ts":4000})", "profiles.segment", &keep).s, "vip");
  EXPECT_EQ(Field(spec, restored, R"({"user":"a","ts":4000,"plan":"p"})", "plans.price", &keep).i, 3);
  ByteReader truncated(std::string_view(bytes).substr(0, bytes.size() - 3));
  TableSet damaged(spec);
  EXPECT_FALSE(damaged.Load(truncated).ok());
}

// A checkpoint reuses the bytes of an earlier Save while the generation stays: every change to what Save writes
// must move it, and nothing else may (or the reuse would never happen).
TEST(TableSetTest, TheGenerationMovesExactlyWhenWhatSaveWritesChanges) {
  const Spec spec = LoadTestSpec();
  TableSet tables(spec);
  const int64_t none = std::numeric_limits<int64_t>::min();
  auto saved = [&] {
    std::string bytes;
    ByteWriter out(&bytes);
    tables.Save(out);
    return bytes;
  };
  uint64_t generation = tables.generation();
  std::string bytes = saved();
  auto expect_change = [&](bool changed, const char* what) {
    const std::string now = saved();
    EXPECT_EQ(tables.generation() != generation, changed) << what;
    EXPECT_EQ(now != bytes, changed) << what;
    generation = tables.generation();
    bytes = now;
  };
  tables.Add(0, Row(spec, 0, R"({"user_id":"a","updated_at":1000,"segment":"basic"})"), none);
  expect_change(true, "a new key");
  tables.Add(0, Row(spec, 0, R"({"user_id":"a","updated_at":1000,"segment":"vip"})"), none);
  expect_change(true, "a version replaced (same valid_from)");
  tables.Add(0, Row(spec, 0, R"({"user_id":"a","updated_at":3000,"segment":"new"})"), none);
  expect_change(true, "a newer version");
  EXPECT_EQ(tables.Prune(2000), 0u);
  expect_change(false, "a prune that dropped nothing");
  EXPECT_EQ(tables.Prune(3000), 1u);
  expect_change(true, "a prune that dropped a version");
  tables.Add(0, Row(spec, 0, R"({"user_id":"a","_deleted":true})"), none);
  expect_change(true, "a deletion");
  (void)tables.keys(0);
  (void)tables.MemoryBytes();
  tables.Reserve(0, 0);  // As every poll of a table file does.
  expect_change(false, "reading, and reserving no room");
  tables.Reserve(0, 1000);
  EXPECT_NE(tables.generation(), generation) << "a rehash";
  generation = tables.generation();
  bytes = saved();
  TableSet restored(spec);
  const uint64_t before_load = restored.generation();
  ByteReader in(bytes);
  ASSERT_TRUE(restored.Load(in).ok());
  EXPECT_NE(restored.generation(), before_load);
}

TEST(TableSetTest, BadRowsSayWhatIsWrong) {
  const Spec spec = LoadTestSpec();
  EXPECT_NE(ParseTableRow(spec.tables[0], R"({"updated_at":1})").status().message().find("'user_id'"),
            std::string::npos);
  EXPECT_NE(ParseTableRow(spec.tables[0], R"({"user_id":"a"})").status().message().find("valid_from"),
            std::string::npos);
  EXPECT_NE(ParseTableRow(spec.tables[0], R"({"user_id":"a","updated_at":"yesterday"})").status().message().find(
                "valid_from"),
            std::string::npos);
  EXPECT_NE(ParseTableRow(spec.tables[0], R"([1])").status().message().find("JSON object"), std::string::npos);
  Result<TableRow> text_time = ParseTableRow(spec.tables[0], R"({"user_id":5,"updated_at":"1970-01-01T00:00:01Z"})");
  ASSERT_TRUE(text_time.ok());
  EXPECT_EQ(text_time->key, "5");
  EXPECT_EQ(text_time->valid_from_ms, 1000);
}

TEST(TableFileTest, CsvRowsBecomeJsonAndAppendedLinesAreReadOnce) {
  const Spec spec = LoadTestSpec();
  TableSpec table = spec.tables[1];
  table.format = "csv";
  const std::string path = (std::filesystem::temp_directory_path() / "freshet_table_file_test.csv").string();
  { std::ofstream(path) << "id,price,name\np1,10,\"a, \"\"b\"\"\"\np2,x"; }
  TableFileReader reader(table, path);
  std::vector<TableRow> rows;
  std::vector<std::string> errors;
  ASSERT_TRUE(reader.ReadNew(&rows, &errors).ok());
  ASSERT_EQ(rows.size(), 1u);  // The last line has no newline yet.
  EXPECT_EQ(rows[0].json, R"({"id":"p1","price":10,"name":"a, \"b\""})");
  { std::ofstream(path, std::ios::app) << "\n,1\np3,1,2,3\n"; }
  rows.clear();
  ASSERT_TRUE(reader.ReadNew(&rows, &errors).ok());
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].json, R"({"id":"p2","price":"x"})");
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0], path + ":4: field 'id' (the key of table 'plans') is missing");
  EXPECT_EQ(errors[1], path + ":5: the row has 4 cells, the header 3 columns");
  // Restored at an offset, the header is read again.
  TableFileReader resumed(table, path);
  resumed.Seek(reader.offset(), reader.lines());
  { std::ofstream(path, std::ios::app) << "p4,4\n"; }
  rows.clear();
  ASSERT_TRUE(resumed.ReadNew(&rows, &errors).ok());
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].json, R"({"id":"p4","price":4})");
  std::filesystem::remove(path);
}

TEST(TableSpecTest, JoinsAreCheckedAtLoad) {
  const std::string head = "name: t\nentity: user\ntimestamp: ts\ntables:\n  - {name: profiles, key: user_id}\n";
  const std::string feature = "features:\n  - {name: n, aggregation: count, window: {type: lifetime}}\n";
  Result<Spec> unknown = ParseSpec(head + "joins:\n  - {table: profile, on: user}\n" + feature, "t.yaml");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("t.yaml:7:13: error: join of unknown table 'profile'; did you mean "
                                            "'profiles'?"),
            std::string::npos)
      << unknown.status().message();
  Result<Spec> twice =
      ParseSpec(head + "joins:\n  - {table: profiles, on: user}\n  - {table: profiles, on: x}\n" + feature, "t.yaml");
  ASSERT_FALSE(twice.ok());
  EXPECT_NE(twice.status().message().find("joined twice"), std::string::npos);
  Result<Spec> derived_on = ParseSpec(head + "joins:\n  - {table: profiles, on: k}\nderive:\n  - {name: k, expr: \"1\"}\n" +
                                          feature, "t.yaml");
  ASSERT_FALSE(derived_on.ok());
  EXPECT_NE(derived_on.status().message().find("t.yaml:7:27: error: join of 'profiles' on 'k', a derived field"),
            std::string::npos)
      << derived_on.status().message();
  // With a schema, joined fields need no declaration; the event's own fields still do.
  Result<Spec> schema = ParseSpec(
      head + "schema: {user: string, ts: timestamp}\njoins:\n  - {table: profiles, on: user}\n"
             "features:\n  - {name: s, aggregation: last, field: profiles.segment, where: \"profiles.age > 3\", "
             "window: {type: lifetime}}\n",
      "t.yaml");
  EXPECT_TRUE(schema.ok()) << schema.status().message();
}

// A deletion (Kafka tombstone) hides every version of its key from the events after it, whatever their time;
// a new version brings the key back; Save/Load keep the deleted state.
TEST(TableSetTest, ADeletionHidesTheKeyUntilANewVersionArrives) {
  const Spec spec = LoadTestSpec();
  TableSet tables(spec);
  const int64_t none = std::numeric_limits<int64_t>::min();
  tables.Add(0, Row(spec, 0, R"({"user_id":"a","updated_at":1000,"segment":"basic"})"), none);
  tables.Add(0, Row(spec, 0, R"({"user_id":"a","updated_at":3000,"segment":"vip"})"), none);
  tables.Add(0, Row(spec, 0, R"({"user_id":"b","updated_at":1000,"segment":"b"})"), none);
  EXPECT_FALSE(tables.Add(0, TableRow{"a", kAlwaysValidMs, std::string(kDeletedRow)}, 5000));  // Never late.
  tables.Add(0, TableRow{"nobody", kAlwaysValidMs, std::string(kDeletedRow)}, none);
  std::string keep;
  EXPECT_TRUE(Field(spec, tables, R"({"user":"a","ts":500})", "profiles.segment", &keep).is_missing());
  EXPECT_TRUE(Field(spec, tables, R"({"user":"a","ts":4000})", "profiles.segment", &keep).is_missing());
  EXPECT_EQ(Field(spec, tables, R"({"user":"b","ts":4000})", "profiles.segment", &keep).s, "b");
  EXPECT_EQ(tables.versions(0), 1u);
  EXPECT_EQ(tables.keys(0), 1u);

  std::string bytes;
  ByteWriter out(&bytes);
  tables.Save(out);
  TableSet loaded(spec);
  ByteReader in(bytes);
  ASSERT_TRUE(loaded.Load(in).ok());
  EXPECT_EQ(loaded.keys(0), 1u);
  EXPECT_TRUE(Field(spec, loaded, R"({"user":"a","ts":4000})", "profiles.segment", &keep).is_missing());
  loaded.Add(0, Row(spec, 0, R"({"user_id":"a","updated_at":2000,"segment":"back"})"), none);
  EXPECT_TRUE(Field(spec, loaded, R"({"user":"a","ts":1500})", "profiles.segment", &keep).is_missing());
  EXPECT_EQ(Field(spec, loaded, R"({"user":"a","ts":4000})", "profiles.segment", &keep).s, "back");
  EXPECT_EQ(loaded.keys(0), 2u);
}

// A row given with its key (a Kafka message key) may leave the key field out; when present it must agree.
TEST(TableSetTest, ARowWithAGivenKeyNeedsNoKeyFieldButMustNotContradictIt) {
  const Spec spec = LoadTestSpec();
  Result<TableRow> row = ParseTableRow(spec.tables[0], R"({"updated_at":1000,"segment":"vip"})", "k1");
  ASSERT_TRUE(row.ok()) << row.status().message();
  EXPECT_EQ(row->key, "k1");
  EXPECT_EQ(row->valid_from_ms, 1000);
  row = ParseTableRow(spec.tables[0], R"({"user_id":"k1","updated_at":1000})", "k1");
  EXPECT_TRUE(row.ok());
  row = ParseTableRow(spec.tables[0], R"({"user_id":"k2","updated_at":1000})", "k1");
  ASSERT_FALSE(row.ok());
  EXPECT_NE(row.status().message().find("the message key is 'k1'"), std::string::npos) << row.status().message();
  EXPECT_FALSE(ParseTableRow(spec.tables[0], R"({"updated_at":1000})", "").ok());
  EXPECT_FALSE(ParseTableRow(spec.tables[0], R"({"user_id":"k1"})", "k1").ok());  // valid_from still needed.
}

}  // namespace
}  // namespace freshet

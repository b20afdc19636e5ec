// EventPath with deduplication (the order of the rules, what a duplicate leaves alone) and the pipeline state
// it is checkpointed in: versions 1 and 2, and a `dedup` that changed between writing and reading.
#include "run/event_path.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "spec/spec.h"

namespace freshet {
namespace {

constexpr const char* kSpecText = R"(name: t
entity: user
timestamp: ts
watermark: {max_out_of_orderness: 1s, allowed_lateness: 0s}
dedup: {field: id, within: 10s}
features:
  - {name: n, aggregation: count, window: {type: lifetime}}
)";

Spec ParseOrDie(const std::string& text) {
  Result<Spec> spec = ParseSpec(text, "t.yaml");
  EXPECT_TRUE(spec.ok()) << spec.status().message();
  return std::move(spec).value();
}

std::string Line(const char* user, const char* id, int64_t ts) {
  return std::string("{\"user\":\"") + user + "\",\"ts\":" + std::to_string(ts) + ",\"id\":\"" + id + "\"}";
}

// One pipeline: engine, counters, deduplicator (when the spec has `dedup`) and its event path.
struct Pipeline {
  explicit Pipeline(const Spec& spec) : engine(spec), dedup(MakeDeduplicator(spec)),
                                        path(engine, counters, dedup ? &*dedup : nullptr, nullptr) {}

  EventPath::Outcome Process(const std::string& line) {
    padded = line + std::string(kParsePaddingBytes, '\0');
    return path.Process(std::string_view(padded.data(), line.size()), padded.size(), 0);
  }

  FeatureEngine engine;
  PipelineCounters counters;
  std::optional<Deduplicator> dedup;
  EventPath path;
  std::string padded;
};

using Outcome = EventPath::Outcome;

TEST(EventPathTest, LatenessComesFirstThenDeduplicationAndADuplicateMovesNothing) {
  const Spec spec = ParseOrDie(kSpecText);
  Pipeline p(spec);
  EXPECT_EQ(p.Process(Line("u1", "a", 10000)), Outcome::kAccepted);
  EXPECT_EQ(p.Process(Line("u1", "a", 10500)), Outcome::kDuplicate);  // Had it moved M, 9000 would be late.
  EXPECT_EQ(p.Process(Line("u2", "b", 9000)), Outcome::kAccepted);
  EXPECT_EQ(p.Process(Line("u1", "a", 8999)), Outcome::kLate);  // Late wins over duplicate.
  EXPECT_EQ(p.Process(Line("u1", "a", 9999)), Outcome::kDuplicate);
  EXPECT_EQ(p.Process(R"({"user":"u1","ts":10000})"), Outcome::kAccepted);  // No id: never a duplicate.
  EXPECT_EQ(p.Process(R"({"user":"u1","ts":10000,"id":null})"), Outcome::kAccepted);
  EXPECT_EQ(p.Process(R"({"user":"u1","ts":10000,"id":1.5})"), Outcome::kAccepted);
  EXPECT_EQ(p.Process(R"({"user":"u1","ts":10000,"id":1.5})"), Outcome::kAccepted);
  EXPECT_EQ(p.Process(R"({"user":"u1","ts":10000,"id":7})"), Outcome::kAccepted);
  EXPECT_EQ(p.Process(R"({"user":"u1","ts":10000,"id":"7"})"), Outcome::kDuplicate);
  EXPECT_EQ(p.counters.duplicates, 3u);
  EXPECT_EQ(p.counters.seq, 7u);  // Accepted events only.
  EXPECT_EQ(p.counters.lines_read, 11u);
  EXPECT_EQ(p.engine.counters().admitted, 7u);
  EXPECT_EQ(p.engine.counters().late, 1u);
  std::vector<Value> values;
  p.engine.Query("u1", 20000, &values);
  EXPECT_EQ(values[0].i, 6);
}

TEST(EventPathTest, CheckpointedStateRemembersTheIds) {
  const Spec spec = ParseOrDie(kSpecText);
  Pipeline p(spec);
  ASSERT_EQ(p.Process(Line("u1", "a", 10000)), Outcome::kAccepted);
  ASSERT_EQ(p.Process(Line("u1", "a", 10000)), Outcome::kDuplicate);
  const std::string bytes = EncodePipelineState(p.engine, p.counters, &*p.dedup);

  Pipeline restored(spec);
  std::vector<std::string> notes;
  ASSERT_TRUE(DecodePipelineState(bytes, &restored.engine, &restored.counters, &*restored.dedup, &notes).ok());
  EXPECT_TRUE(notes.empty());
  EXPECT_EQ(restored.counters.duplicates, 1u);
  EXPECT_EQ(restored.dedup->size(), 1u);
  EXPECT_EQ(restored.Process(Line("u1", "a", 10000)), Outcome::kDuplicate);
  EXPECT_EQ(restored.Process(Line("u1", "b", 10000)), Outcome::kAccepted);
}

// Version 1, as freshet wrote it before deduplication: the engine state and the counters.
std::string VersionOneState(const FeatureEngine& engine, const PipelineCounters& counters) {
  std::string engine_bytes;
  ByteWriter engine_out(&engine_bytes);
  engine.SaveState(engine_out);
  std::string bytes;
  ByteWriter out(&bytes);
  out.PutU32(1);
  out.PutBytes(engine_bytes);
  out.PutU64(counters.seq);
  out.PutU64(counters.lines_read);
  out.PutU64(counters.rejected);
  out.PutU64(counters.newest_event_ms.size());
  for (int64_t t : counters.newest_event_ms) out.PutI64(t);
  return bytes;
}

TEST(EventPathTest, VersionOneLoadsWithNoRememberedIds) {
  const Spec spec = ParseOrDie(kSpecText);
  Pipeline before(spec);
  ASSERT_EQ(before.Process(Line("u1", "a", 10000)), Outcome::kAccepted);
  ASSERT_EQ(before.Process(Line("u2", "b", 12000)), Outcome::kAccepted);
  const std::string bytes = VersionOneState(before.engine, before.counters);

  Pipeline restored(spec);
  std::vector<std::string> notes;
  ASSERT_TRUE(DecodePipelineState(bytes, &restored.engine, &restored.counters, &*restored.dedup, &notes).ok());
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("written without `dedup`"), std::string::npos) << notes[0];
  EXPECT_EQ(restored.counters.seq, 2u);
  EXPECT_EQ(restored.counters.duplicates, 0u);
  EXPECT_EQ(restored.dedup->size(), 0u);
  EXPECT_EQ(restored.dedup->max_time_ms(), 12000);  // M from the counters.
  EXPECT_EQ(restored.Process(Line("u2", "b", 12000)), Outcome::kAccepted);  // Not recognized: said so.
  EXPECT_EQ(restored.Process(Line("u2", "b", 12000)), Outcome::kDuplicate);
}

TEST(EventPathTest, ADedupChangedBetweenCheckpointAndRestoreIsHandledAndSaid) {
  const Spec spec = ParseOrDie(kSpecText);
  Pipeline p(spec);
  ASSERT_EQ(p.Process(Line("u1", "a", 10000)), Outcome::kAccepted);
  const std::string with_dedup = EncodePipelineState(p.engine, p.counters, &*p.dedup);

  // Removed: the ids are dropped.
  std::string without_text = kSpecText;
  without_text.replace(without_text.find("dedup:"), without_text.find("features:") - without_text.find("dedup:"), "");
  const Spec without = ParseOrDie(without_text);
  Pipeline plain(without);
  std::vector<std::string> notes;
  ASSERT_TRUE(DecodePipelineState(with_dedup, &plain.engine, &plain.counters, nullptr, &notes).ok());
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("no longer has `dedup`"), std::string::npos) << notes[0];
  EXPECT_EQ(plain.Process(Line("u1", "a", 10000)), Outcome::kAccepted);

  // Added: a checkpoint without dedup state.
  const std::string without_dedup = EncodePipelineState(plain.engine, plain.counters, nullptr);
  Pipeline added(spec);
  notes.clear();
  ASSERT_TRUE(DecodePipelineState(without_dedup, &added.engine, &added.counters, &*added.dedup, &notes).ok());
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("written without `dedup`"), std::string::npos) << notes[0];

  // Another field: its ids are not this field's.
  std::string other_text = kSpecText;
  other_text.replace(other_text.find("field: id"), 9, "field: request_id");
  const Spec other = ParseOrDie(other_text);
  Pipeline switched(other);
  notes.clear();
  ASSERT_TRUE(DecodePipelineState(with_dedup, &switched.engine, &switched.counters, &*switched.dedup, &notes).ok());
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("of the field 'id', not 'request_id'"), std::string::npos) << notes[0];
  EXPECT_EQ(switched.dedup->size(), 0u);

  // Another `within`: the ids are kept, no note.
  std::string longer_text = kSpecText;
  longer_text.replace(longer_text.find("within: 10s"), 11, "within: 1h");
  const Spec longer = ParseOrDie(longer_text);
  Pipeline widened(longer);
  notes.clear();
  ASSERT_TRUE(DecodePipelineState(with_dedup, &widened.engine, &widened.counters, &*widened.dedup, &notes).ok());
  EXPECT_TRUE(notes.empty());
  EXPECT_EQ(widened.Process(Line("u1", "a", 10000)), Outcome::kDuplicate);
}

TEST(EventPathTest, DamagedPipelineStateFailsCleanly) {
  const Spec spec = ParseOrDie(kSpecText);
  Pipeline p(spec);
  ASSERT_EQ(p.Process(Line("u1", "a", 10000)), Outcome::kAccepted);
  const std::string bytes = EncodePipelineState(p.engine, p.counters, &*p.dedup);
  for (size_t cut = 0; cut < bytes.size(); cut += 7) {
    Pipeline restored(spec);
    EXPECT_FALSE(DecodePipelineState(bytes.substr(0, cut), &restored.engine, &restored.counters, &*restored.dedup)
                     .ok())
        << cut;
  }
  std::string future = bytes;
  future[0] = 3;
  Pipeline restored(spec);
  EXPECT_FALSE(DecodePipelineState(future, &restored.engine, &restored.counters, &*restored.dedup).ok());
}

}  // namespace
}  // namespace freshet

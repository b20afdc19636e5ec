// Tests for CheckpointStore: the documented file layout, round trips, keeping the newest `keep`, and
// falling back past damaged files (a flipped byte anywhere, truncation, wrong magic) with a warning that
// names the file and the reason; temporary files left by a crash are removed. Each test works in its
// own directory under /tmp, removed at the end.
#include "state/checkpoint.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "engine/feature_engine.h"
#include "event/event_parser.h"
#include "spec/spec.h"

namespace freshet {
namespace {

namespace fs = std::filesystem;

// A fresh directory under /tmp, removed with everything in it when the test ends.
class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/freshet-checkpoint-test-XXXXXX";
    const char* made = ::mkdtemp(pattern);
    EXPECT_NE(made, nullptr);
    path_ = made != nullptr ? made : "/tmp/freshet-checkpoint-test-failed";
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::set<std::string> FileNames(const std::string& directory) {
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(directory)) names.insert(entry.path().filename().string());
  return names;
}

Checkpoint MakeCheckpoint(uint64_t sequence) {
  Checkpoint c;
  c.sequence = sequence;
  c.written_unix_ms = 1767225600000 + static_cast<int64_t>(sequence);
  c.spec_fingerprint = 0x0123456789ABCDEFull;
  c.positions = {{"events.jsonl", "offset=" + std::to_string(sequence * 1000)},
                 {"http", std::string("binary\0position", 15)}};
  c.engine_state = "engine state #" + std::to_string(sequence) + std::string(200, static_cast<char>('a' + sequence % 26));
  return c;
}

CheckpointStore MustOpen(const std::string& directory, int keep = 3) {
  Result<CheckpointStore> store = CheckpointStore::Open(directory, keep);
  EXPECT_TRUE(store.ok()) << store.status().message();
  return std::move(store).value();
}

std::optional<Checkpoint> MustLoad(CheckpointStore& store, std::vector<std::string>* warnings) {
  Result<std::optional<Checkpoint>> loaded = store.LoadNewestValid(warnings);
  EXPECT_TRUE(loaded.ok()) << loaded.status().message();
  return loaded.ok() ? std::move(loaded).value() : std::nullopt;
}

void ExpectSameCheckpoint(const Checkpoint& a, const Checkpoint& b) {
  EXPECT_EQ(a.sequence, b.sequence);
  EXPECT_EQ(a.written_unix_ms, b.written_unix_ms);
  EXPECT_EQ(a.spec_fingerprint, b.spec_fingerprint);
  EXPECT_EQ(a.positions, b.positions);
  EXPECT_EQ(a.engine_state, b.engine_state);
}

uint64_t ReadLe(const std::string& bytes, size_t offset, int width) {
  uint64_t v = 0;
  for (int k = 0; k < width; ++k) v |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[offset + k])) << (8 * k);
  return v;
}

TEST(CheckpointTest, FileFollowsTheDocumentedLayout) {
  TempDir dir;
  CheckpointStore store = MustOpen(dir.path());
  const Checkpoint c = MakeCheckpoint(42);
  ASSERT_TRUE(store.Write(c).ok());
  const std::string path = dir.path() + "/checkpoint-00000000000000000042.ckpt";
  ASSERT_EQ(CheckpointStore::FileName(42), "checkpoint-00000000000000000042.ckpt");
  const std::string bytes = ReadFile(path);
  ASSERT_GT(bytes.size(), 60u);
  EXPECT_EQ(bytes.substr(0, 12), "FRESHETCKPT1");
  EXPECT_EQ(ReadLe(bytes, 12, 4), 1u) << "format version";
  EXPECT_EQ(ReadLe(bytes, 16, 8), bytes.size()) << "total length";
  EXPECT_EQ(ReadLe(bytes, 24, 8), 42u);
  EXPECT_EQ(static_cast<int64_t>(ReadLe(bytes, 32, 8)), c.written_unix_ms);
  EXPECT_EQ(ReadLe(bytes, 40, 8), c.spec_fingerprint);
  EXPECT_EQ(static_cast<uint8_t>(bytes[48]), 2u) << "two positions";
  EXPECT_EQ(bytes.substr(49, 13), std::string("\x0c") + "events.jsonl");
  // The engine state ends the body, followed by the CRC-32C of everything before the CRC.
  EXPECT_EQ(bytes.substr(bytes.size() - 4 - c.engine_state.size(), c.engine_state.size()), c.engine_state);
  EXPECT_EQ(ReadLe(bytes, bytes.size() - 4, 4), Crc32c(std::string_view(bytes).substr(0, bytes.size() - 4)));
  EXPECT_EQ(bytes, EncodeCheckpoint(c)) << "Write and EncodeCheckpoint agree";
  EXPECT_EQ(store.last_size_bytes(), bytes.size());
  EXPECT_GE(store.last_write_ms(), 0.0);
  EXPECT_EQ(FileNames(dir.path()), std::set<std::string>{"checkpoint-00000000000000000042.ckpt"})
      << "no temporary file is left behind";
}

TEST(CheckpointTest, WriteThenLoadRoundTrips) {
  TempDir dir;
  CheckpointStore store = MustOpen(dir.path());
  EXPECT_EQ(store.next_sequence(), 1u);
  const Checkpoint c = MakeCheckpoint(store.next_sequence());
  ASSERT_TRUE(store.Write(c).ok());
  EXPECT_EQ(store.next_sequence(), 2u);
  std::vector<std::string> warnings;
  std::optional<Checkpoint> loaded = MustLoad(store, &warnings);
  ASSERT_TRUE(loaded.has_value());
  ExpectSameCheckpoint(*loaded, c);
  EXPECT_TRUE(warnings.empty());

  // A store opened later on the same directory continues the numbering.
  CheckpointStore reopened = MustOpen(dir.path());
  EXPECT_EQ(reopened.next_sequence(), 2u);
}

TEST(CheckpointTest, ZeroWrittenTimeIsStampedWithTheClock) {
  TempDir dir;
  CheckpointStore store = MustOpen(dir.path());
  Checkpoint c = MakeCheckpoint(1);
  c.written_unix_ms = 0;
  const int64_t before = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch()).count();
  ASSERT_TRUE(store.Write(c).ok());
  const int64_t after = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch()).count();
  std::optional<Checkpoint> loaded = MustLoad(store, nullptr);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_GE(loaded->written_unix_ms, before);
  EXPECT_LE(loaded->written_unix_ms, after);
}

TEST(CheckpointTest, KeepsOnlyTheNewest) {
  TempDir dir;
  CheckpointStore store = MustOpen(dir.path());
  WriteFile(dir.path() + "/notes.txt", "not a checkpoint");
  for (uint64_t s = 1; s <= 6; ++s) ASSERT_TRUE(store.Write(MakeCheckpoint(s)).ok());
  EXPECT_EQ(FileNames(dir.path()), (std::set<std::string>{"checkpoint-00000000000000000004.ckpt",
                                                          "checkpoint-00000000000000000005.ckpt",
                                                          "checkpoint-00000000000000000006.ckpt", "notes.txt"}));
  std::optional<Checkpoint> loaded = MustLoad(store, nullptr);
  ASSERT_TRUE(loaded.has_value());
  ExpectSameCheckpoint(*loaded, MakeCheckpoint(6));

  TempDir one_dir;
  CheckpointStore one = MustOpen(one_dir.path(), 1);
  for (uint64_t s = 10; s <= 12; ++s) ASSERT_TRUE(one.Write(MakeCheckpoint(s)).ok());
  EXPECT_EQ(FileNames(one_dir.path()), std::set<std::string>{"checkpoint-00000000000000000012.ckpt"});
  EXPECT_FALSE(CheckpointStore::Open(one_dir.path(), 0).ok());
}

TEST(CheckpointTest, AFlippedByteAnywhereFallsBackToThePreviousWithAWarning) {
  TempDir dir;
  CheckpointStore store = MustOpen(dir.path());
  for (uint64_t s = 1; s <= 3; ++s) ASSERT_TRUE(store.Write(MakeCheckpoint(s)).ok());
  const std::string newest = dir.path() + "/checkpoint-00000000000000000003.ckpt";
  const std::string good = ReadFile(newest);
  for (size_t at = 0; at < good.size(); ++at) {
    std::string damaged = good;
    damaged[at] = static_cast<char>(damaged[at] ^ (1 << (at % 8)));
    WriteFile(newest, damaged);
    std::vector<std::string> warnings;
    std::optional<Checkpoint> loaded = MustLoad(store, &warnings);
    ASSERT_TRUE(loaded.has_value()) << "flip at " << at;
    ASSERT_EQ(loaded->sequence, 2u) << "flip at " << at;
    ExpectSameCheckpoint(*loaded, MakeCheckpoint(2));
    ASSERT_EQ(warnings.size(), 1u) << "flip at " << at;
    EXPECT_NE(warnings[0].find(newest), std::string::npos) << warnings[0];
    // The reason: the magic, the version or the length when those are hit, else the checksum.
    const char* reason = at < 12 ? "wrong magic" : at < 16 ? "format version" : at < 24 ? "" : "checksum mismatch";
    EXPECT_NE(warnings[0].find(reason), std::string::npos) << "flip at " << at << ": " << warnings[0];
  }
  // A damaged length says so, too: one byte more than the file has.
  std::string damaged = good;
  const uint64_t longer = good.size() + 1;
  for (int k = 0; k < 8; ++k) damaged[16 + k] = static_cast<char>(longer >> (8 * k));
  WriteFile(newest, damaged);
  std::vector<std::string> warnings;
  ASSERT_TRUE(MustLoad(store, &warnings).has_value());
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("truncated at byte " + std::to_string(good.size())), std::string::npos) << warnings[0];
}

TEST(CheckpointTest, ATruncatedNewestFallsBackNamingTheByte) {
  TempDir dir;
  CheckpointStore store = MustOpen(dir.path());
  for (uint64_t s = 1; s <= 3; ++s) ASSERT_TRUE(store.Write(MakeCheckpoint(s)).ok());
  const std::string newest = dir.path() + "/checkpoint-00000000000000000003.ckpt";
  const std::string good = ReadFile(newest);
  for (size_t size = 0; size < good.size(); ++size) {
    WriteFile(newest, good.substr(0, size));
    std::vector<std::string> warnings;
    std::optional<Checkpoint> loaded = MustLoad(store, &warnings);
    ASSERT_TRUE(loaded.has_value()) << "truncated to " << size;
    ASSERT_EQ(loaded->sequence, 2u);
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_NE(warnings[0].find(newest), std::string::npos) << warnings[0];
    EXPECT_NE(warnings[0].find("truncated at byte " + std::to_string(size)), std::string::npos) << warnings[0];
  }
}

TEST(CheckpointTest, FallsBackPastSeveralDamagedFilesAndGivesNulloptWhenAllAre) {
  TempDir dir;
  CheckpointStore store = MustOpen(dir.path());
  for (uint64_t s = 1; s <= 3; ++s) ASSERT_TRUE(store.Write(MakeCheckpoint(s)).ok());
  const std::string second = dir.path() + "/checkpoint-00000000000000000002.ckpt";
  const std::string third = dir.path() + "/checkpoint-00000000000000000003.ckpt";
  WriteFile(third, "GARBAGE, not a checkpoint at all");
  std::string flipped = ReadFile(second);
  flipped[flipped.size() / 2] ^= 0x40;
  WriteFile(second, flipped);
  std::vector<std::string> warnings;
  std::optional<Checkpoint> loaded = MustLoad(store, &warnings);
  ASSERT_TRUE(loaded.has_value());
  ExpectSameCheckpoint(*loaded, MakeCheckpoint(1));
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_NE(warnings[0].find(third), std::string::npos);
  EXPECT_NE(warnings[0].find("wrong magic"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[1].find(second), std::string::npos);
  EXPECT_NE(warnings[1].find("checksum mismatch"), std::string::npos) << warnings[1];

  WriteFile(dir.path() + "/checkpoint-00000000000000000001.ckpt", "");
  warnings.clear();
  EXPECT_FALSE(MustLoad(store, &warnings).has_value());
  EXPECT_EQ(warnings.size(), 3u);
}

TEST(CheckpointTest, ARenamedFileIsNotTakenForAnother) {
  TempDir dir;
  CheckpointStore store = MustOpen(dir.path());
  for (uint64_t s = 1; s <= 2; ++s) ASSERT_TRUE(store.Write(MakeCheckpoint(s)).ok());
  fs::copy_file(dir.path() + "/checkpoint-00000000000000000001.ckpt",
                dir.path() + "/checkpoint-00000000000000000007.ckpt");
  std::vector<std::string> warnings;
  std::optional<Checkpoint> loaded = MustLoad(store, &warnings);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_EQ(loaded->sequence, 2u);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("checkpoint-00000000000000000007.ckpt"), std::string::npos) << warnings[0];
  EXPECT_EQ(store.next_sequence(), 8u) << "a sequence seen in the directory is never reused";
}

TEST(CheckpointTest, TemporaryFilesLeftByACrashAreIgnoredAndRemoved) {
  TempDir dir;
  CheckpointStore store = MustOpen(dir.path());
  ASSERT_TRUE(store.Write(MakeCheckpoint(1)).ok());
  // A crash in the middle of writing checkpoint 2: a partial temporary file, newer than any checkpoint.
  const std::string partial = EncodeCheckpoint(MakeCheckpoint(2));
  WriteFile(dir.path() + "/checkpoint-00000000000000000002.ckpt.tmp", partial.substr(0, partial.size() / 2));
  // Even a complete one is not trusted: it was never renamed into place, so it was never durable.
  WriteFile(dir.path() + "/checkpoint-00000000000000000003.ckpt.tmp", EncodeCheckpoint(MakeCheckpoint(3)));
  std::vector<std::string> warnings;
  std::optional<Checkpoint> loaded = MustLoad(store, &warnings);
  ASSERT_TRUE(loaded.has_value());
  ExpectSameCheckpoint(*loaded, MakeCheckpoint(1));
  EXPECT_EQ(warnings.size(), 2u);
  for (const std::string& w : warnings) EXPECT_NE(w.find("interrupted checkpoint write"), std::string::npos) << w;
  EXPECT_EQ(FileNames(dir.path()), std::set<std::string>{"checkpoint-00000000000000000001.ckpt"});
  // Writing over a leftover temporary file of the same sequence works.
  WriteFile(dir.path() + "/checkpoint-00000000000000000002.ckpt.tmp", "partial");
  ASSERT_TRUE(store.Write(MakeCheckpoint(2)).ok());
  EXPECT_EQ(FileNames(dir.path()), (std::set<std::string>{"checkpoint-00000000000000000001.ckpt",
                                                          "checkpoint-00000000000000000002.ckpt"}));
}

TEST(CheckpointTest, AnEmptyOrNewDirectoryHasNoCheckpoint) {
  TempDir dir;
  const std::string nested = dir.path() + "/a/b/checkpoints";
  CheckpointStore store = MustOpen(nested);
  EXPECT_TRUE(fs::is_directory(nested)) << "created with its parents";
  std::vector<std::string> warnings;
  EXPECT_FALSE(MustLoad(store, &warnings).has_value());
  EXPECT_TRUE(warnings.empty());

  WriteFile(dir.path() + "/a/file", "x");
  Result<CheckpointStore> not_a_directory = CheckpointStore::Open(dir.path() + "/a/file");
  ASSERT_FALSE(not_a_directory.ok());
  EXPECT_NE(not_a_directory.status().message().find(dir.path() + "/a/file"), std::string::npos);
}

TEST(CheckpointTest, WriteFailsWithThePathWhenTheDirectoryIsGone) {
  TempDir dir;
  const std::string gone = dir.path() + "/gone";
  CheckpointStore store = MustOpen(gone);
  fs::remove_all(gone);
  const Status status = store.Write(MakeCheckpoint(1));
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find(gone), std::string::npos) << status.message();
  EXPECT_FALSE(store.LoadNewestValid(nullptr).ok());
}

// The runtime's path: engine state and source positions into a checkpoint, then back into a fresh engine.
TEST(CheckpointTest, EngineStateRestoresThroughACheckpoint) {
  Spec spec;
  spec.name = "ckpt";
  spec.entity_field = "user";
  spec.timestamp_field = "ts";
  spec.watermark = WatermarkSpec{5, 0};
  ASSERT_EQ(spec.fields.Intern("user"), kEntitySlot);
  ASSERT_EQ(spec.fields.Intern("ts"), kTimestampSlot);
  FeatureSpec distinct;
  distinct.name = "kinds";
  distinct.agg = AggKind::kCountDistinct;
  distinct.field = "kind";
  distinct.field_slot = spec.fields.Intern("kind");
  distinct.window = WindowSpec{WindowKind::kSession, 0, 0, 100};
  spec.features.push_back(std::move(distinct));
  FeatureSpec count;
  count.name = "n";
  count.window = WindowSpec{WindowKind::kSliding, 1000, 100, 0};
  spec.features.push_back(std::move(count));

  const std::vector<std::string> kinds = {"view", "buy", "view", "login", "buy"};
  std::vector<ParsedEvent> events(kinds.size());
  for (size_t k = 0; k < kinds.size(); ++k) {
    events[k].time_ms = 1000 + static_cast<int64_t>(k) * 10;
    events[k].entity = k % 2 == 0 ? "alice" : "bob";
    events[k].slots.assign(spec.fields.size(), Value::Missing());
    events[k].slots[kEntitySlot] = Value::String(events[k].entity);
    events[k].slots[kTimestampSlot] = Value::Int(events[k].time_ms);
    events[k].slots[2] = Value::String(kinds[k]);
  }
  FeatureEngine engine(spec);
  uint64_t seq = 0;
  ASSERT_EQ(engine.ProcessBatch(events.data(), events.size(), &seq), 0u);

  TempDir dir;
  CheckpointStore store = MustOpen(dir.path());
  Checkpoint c;
  c.sequence = store.next_sequence();
  c.spec_fingerprint = engine.spec_fingerprint();
  c.positions = {{"events.jsonl", "5"}};
  ByteWriter state(&c.engine_state);
  engine.SaveState(state);
  ASSERT_TRUE(store.Write(c).ok());

  std::optional<Checkpoint> loaded = MustLoad(store, nullptr);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_EQ(loaded->spec_fingerprint, SpecFingerprint(spec));
  EXPECT_EQ(loaded->positions, c.positions);
  FeatureEngine restored(spec);
  ByteReader reader(loaded->engine_state);
  const Status status = restored.LoadState(reader);
  ASSERT_TRUE(status.ok()) << status.message();
  std::vector<Value> values;
  restored.Query("alice", 1040, &values);
  ASSERT_EQ(values.size(), 2u);
  EXPECT_EQ(values[0].i, 2);  // view (twice), buy.
  EXPECT_EQ(values[1].i, 3);
  restored.Query("bob", 1040, &values);
  EXPECT_EQ(values[0].i, 2);  // buy, login.
  EXPECT_EQ(values[1].i, 2);
  EXPECT_EQ(restored.counters().admitted, 5u);
  EXPECT_FALSE(restored.Admit(1034)) << "M = 1040 and a delay of 5 survive the restore";
  EXPECT_TRUE(restored.Admit(1035));
}

}  // namespace
}  // namespace freshet

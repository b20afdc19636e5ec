#include "source/file_source.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "event/event_parser.h"

namespace freshet {
namespace {

// A fresh directory under /tmp, removed with everything in it at the end of the test.
class TempDir {
 public:
  TempDir() {
    char name[] = "/tmp/freshet_file_source_XXXXXX";
    FRESHET_CHECK(::mkdtemp(name) != nullptr);
    path_ = name;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

void AppendFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::app);
  out << bytes;
}

struct Got {
  std::string text;
  uint64_t line = 0;
  bool too_long = false;
  bool operator==(const Got&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Got& g) {
  return os << "{line " << g.line << ": '" << g.text << "'" << (g.too_long ? " too_long" : "") << "}";
}

// Polls once and copies the records out, checking the padding promise on the way.
std::vector<Got> PollOnce(Source& source, size_t max_records, int timeout_ms) {
  std::vector<SourceRecord> batch;
  Status status = source.Poll(&batch, max_records, timeout_ms);
  EXPECT_TRUE(status.ok()) << status.message();
  EXPECT_LE(batch.size(), max_records);
  std::vector<Got> got;
  for (const SourceRecord& r : batch) {
    EXPECT_GE(r.capacity, r.text.size() + kParsePaddingBytes);
    got.push_back({std::string(r.text), r.line_number, r.too_long});
  }
  return got;
}

// Reads a non-following source to its end, in batches of `max_records`.
std::vector<Got> ReadToEnd(Source& source, size_t max_records = 1000) {
  std::vector<Got> all;
  for (int i = 0; i < 100000 && !source.exhausted(); ++i) {
    for (Got& g : PollOnce(source, max_records, 0)) all.push_back(std::move(g));
  }
  EXPECT_TRUE(source.exhausted());
  return all;
}

// Polls a following source until `count` records arrived or 5 s passed.
std::vector<Got> ReadFollowing(Source& source, size_t count) {
  std::vector<Got> all;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (all.size() < count && std::chrono::steady_clock::now() < deadline) {
    for (Got& g : PollOnce(source, 7, 50)) all.push_back(std::move(g));
  }
  return all;
}

std::vector<Got> Numbered(const std::vector<std::string>& texts, uint64_t first_line = 1) {
  std::vector<Got> out;
  for (size_t i = 0; i < texts.size(); ++i) out.push_back({texts[i], first_line + i, false});
  return out;
}

TEST(FileSourceTest, LinesCrlfEmptyAndNoFinalNewline) {
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  WriteFile(path, "{\"a\":1}\r\n{\"b\":2}\n\n\r\n{\"c\":3}");
  FileSource source(path, /*follow=*/false);
  std::vector<SourceRecord> batch;
  ASSERT_TRUE(source.Poll(&batch, 100, 0).ok());
  ASSERT_EQ(batch.size(), 5u);
  const char* texts[] = {"{\"a\":1}", "{\"b\":2}", "", "", "{\"c\":3}"};
  const uint64_t ends[] = {9, 17, 18, 20, 27};
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(batch[i].text, texts[i]) << i;
    EXPECT_EQ(batch[i].line_number, i + 1);
    EXPECT_EQ(batch[i].end.offset, ends[i]) << i;
    EXPECT_EQ(batch[i].end.stream, 0u);
    EXPECT_FALSE(batch[i].too_long);
  }
  EXPECT_TRUE(source.exhausted());
  EXPECT_EQ(source.name(), path);
  ASSERT_TRUE(source.Poll(&batch, 100, 0).ok());
  EXPECT_TRUE(batch.empty());
}

// An exhausted source still waits out the timeout: `freshet run` polls in a loop, which spun on a whole core
// once a file read without following had ended.
TEST(FileSourceTest, ExhaustedSourceWaitsOutTheTimeout) {
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  WriteFile(path, "{\"a\":1}\n");
  FileSource source(path, /*follow=*/false);
  ASSERT_EQ(ReadToEnd(source).size(), 1u);
  std::vector<SourceRecord> batch;
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(source.Poll(&batch, 100, 60).ok());
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(60));
  EXPECT_TRUE(batch.empty());
}

TEST(FileSourceTest, MissingFileIsAnError) {
  TempDir dir;
  FileSource source(dir.File("nope.jsonl"), false);
  std::vector<SourceRecord> batch;
  Status status = source.Poll(&batch, 10, 0);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("nope.jsonl"), std::string::npos) << status.message();
}

TEST(FileSourceTest, ArrivalTimeIsWhenTheLineWasRead) {
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  WriteFile(path, "a\n");
  const int64_t before =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
  FileSource source(path, false);
  std::vector<SourceRecord> batch;
  ASSERT_TRUE(source.Poll(&batch, 10, 0).ok());
  const int64_t after =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
  ASSERT_EQ(batch.size(), 1u);
  EXPECT_GE(batch[0].arrival_ns, before);
  EXPECT_LE(batch[0].arrival_ns, after);
}

TEST(FileSourceTest, OverlongLineIsReportedAndSkipped) {
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  const std::string huge(kMaxLineBytes + kMaxLineBytes / 2, 'x');
  WriteFile(path, "first\n" + huge + "\nlast\n");
  FileSource source(path, false);
  std::vector<Got> got = ReadToEnd(source, 2);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0], (Got{"first", 1, false}));
  EXPECT_EQ(got[1], (Got{"", 2, true}));
  EXPECT_EQ(got[2], (Got{"last", 3, false}));
}

// Lines of varied lengths, some with CRLF, the last without a newline.
std::vector<std::string> MakeLines(int count, std::mt19937& rng, std::string* file) {
  std::vector<std::string> lines;
  file->clear();
  for (int i = 0; i < count; ++i) {
    std::string line = "{\"i\":" + std::to_string(i) + ",\"pad\":\"" + std::string(rng() % 300, 'p') + "\"}";
    lines.push_back(line);
    *file += line;
    if (i + 1 < count) *file += (rng() % 4 == 0) ? "\r\n" : "\n";
  }
  return lines;
}

TEST(FileSourceTest, PositionsAreExactForEveryPrefix) {
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  std::mt19937 rng(7);
  std::string bytes;
  const std::vector<std::string> lines = MakeLines(120, rng, &bytes);
  WriteFile(path, bytes);
  const std::vector<Got> expected = Numbered(lines);

  for (size_t n = 0; n <= lines.size(); ++n) {
    FileSource first(path, false);
    std::vector<Got> head;
    while (head.size() < n) {
      for (Got& g : PollOnce(first, std::min<size_t>(n - head.size(), 1 + rng() % 13), 0)) head.push_back(g);
    }
    ASSERT_EQ(head, std::vector<Got>(expected.begin(), expected.begin() + n));
    const std::string position = first.position();

    FileSource second(path, false);
    Status seek = second.Seek(position);
    ASSERT_TRUE(seek.ok()) << seek.message();
    EXPECT_TRUE(second.TakeWarnings().empty());
    std::vector<Got> rest = ReadToEnd(second, 1 + rng() % 50);
    EXPECT_EQ(rest, std::vector<Got>(expected.begin() + n, expected.end())) << "after " << n << ": " << position;
  }
}

TEST(FileSourceTest, PositionsAreExactAcrossBufferRefills) {
  // Larger than the source's read buffer, so lines straddle reads and the buffer is refilled and compacted.
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  std::mt19937 rng(3);
  std::string bytes;
  const std::vector<std::string> lines = MakeLines(70000, rng, &bytes);
  ASSERT_GT(bytes.size(), size_t{10} << 20);
  WriteFile(path, bytes);

  FileSource source(path, false);
  std::vector<std::pair<size_t, std::string>> saved;  // (records read before, position)
  size_t read = 0;
  std::vector<SourceRecord> batch;
  while (!source.exhausted()) {
    ASSERT_TRUE(source.Poll(&batch, 1 + rng() % 3000, 0).ok());
    for (size_t i = 0; i < batch.size(); ++i) {
      ASSERT_EQ(batch[i].text, lines[read + i]);
      ASSERT_EQ(batch[i].line_number, read + i + 1);
    }
    if (!batch.empty() && rng() % 8 == 0) {
      size_t count = rng() % (batch.size() + 1);
      saved.emplace_back(read + count, source.PositionAfter(batch, count));
    }
    read += batch.size();
  }
  ASSERT_EQ(read, lines.size());
  saved.emplace_back(read, source.position());
  ASSERT_GE(saved.size(), 4u);
  for (const auto& [before, position] : saved) {
    FileSource resumed(path, false);
    ASSERT_TRUE(resumed.Seek(position).ok());
    size_t next = before;
    while (!resumed.exhausted()) {
      ASSERT_TRUE(resumed.Poll(&batch, 5000, 0).ok());
      for (const SourceRecord& r : batch) {
        ASSERT_LT(next, lines.size());
        ASSERT_EQ(r.text, lines[next]) << position;
        ASSERT_EQ(r.line_number, ++next);
      }
    }
    EXPECT_EQ(next, lines.size());
  }
}

TEST(FileSourceTest, PositionAfterNamesEachPlaceInABatch) {
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  std::mt19937 rng(11);
  std::string bytes;
  const std::vector<std::string> lines = MakeLines(40, rng, &bytes);
  WriteFile(path, bytes);
  const std::vector<Got> expected = Numbered(lines);

  FileSource source(path, false);
  std::vector<SourceRecord> skip;
  ASSERT_TRUE(source.Poll(&skip, 5, 0).ok());  // The batch under test starts at line 6.
  std::vector<SourceRecord> batch;
  ASSERT_TRUE(source.Poll(&batch, 20, 0).ok());
  ASSERT_EQ(batch.size(), 20u);
  EXPECT_EQ(source.PositionAfter(batch, batch.size()), source.position());
  for (size_t count = 0; count <= batch.size(); ++count) {
    FileSource resumed(path, false);
    ASSERT_TRUE(resumed.Seek(source.PositionAfter(batch, count)).ok());
    EXPECT_EQ(ReadToEnd(resumed), std::vector<Got>(expected.begin() + 5 + count, expected.end())) << count;
  }
}

TEST(FileSourceTest, FollowSeesAppendedLinesButNotPartialOnes) {
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  WriteFile(path, "one\n");
  FileSource source(path, /*follow=*/true);
  EXPECT_EQ(PollOnce(source, 10, 0), Numbered({"one"}));
  EXPECT_FALSE(source.exhausted());

  AppendFile(path, "{\"partial\":");
  EXPECT_TRUE(PollOnce(source, 10, 60).empty());
  const std::string before_newline = source.position();
  EXPECT_NE(before_newline.find(";offset=4;line=1;"), std::string::npos) << before_newline;

  AppendFile(path, "true}\r\nthree\n");
  EXPECT_EQ(ReadFollowing(source, 2), Numbered({"{\"partial\":true}", "three"}, 2));
  EXPECT_FALSE(source.exhausted());
  EXPECT_TRUE(source.TakeWarnings().empty());
}

TEST(FileSourceTest, FollowWaitsForDataUpToTheTimeout) {
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  WriteFile(path, "");
  FileSource source(path, true);

  auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(PollOnce(source, 10, 100).empty());
  auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_GE(waited, std::chrono::milliseconds(95));
  EXPECT_LT(waited, std::chrono::milliseconds(1000));

  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(80));
    AppendFile(path, "late\n");
  });
  start = std::chrono::steady_clock::now();
  EXPECT_EQ(PollOnce(source, 10, 3000), Numbered({"late"}));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(1500));
  writer.join();
}

std::vector<std::string> Range(const std::string& prefix, int from, int to) {
  std::vector<std::string> out;
  for (int i = from; i < to; ++i) out.push_back("{\"" + prefix + "\":" + std::to_string(i) + "}");
  return out;
}

std::string Join(const std::vector<std::string>& lines) {
  std::string out;
  for (const std::string& line : lines) out += line + "\n";
  return out;
}

TEST(FileSourceTest, RenameRotationFinishesTheOldFileFirst) {
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  WriteFile(path, Join(Range("old", 0, 100)));
  FileSource source(path, true);
  std::vector<Got> got = PollOnce(source, 50, 0);
  ASSERT_EQ(got.size(), 50u);

  // logrotate: rename, the writer still appends to the old file (ending without a newline), then a new file.
  ASSERT_EQ(::rename(path.c_str(), dir.File("events.jsonl.1").c_str()), 0);
  AppendFile(dir.File("events.jsonl.1"), Join(Range("old", 100, 120)) + "{\"old\":120}");
  std::vector<Got> mid = PollOnce(source, 1000, 0);  // The path is missing for now: wait, keep reading old.
  for (Got& g : mid) got.push_back(g);
  WriteFile(path, Join(Range("new", 0, 30)));
  for (Got& g : ReadFollowing(source, 121 + 30 - got.size())) got.push_back(g);

  std::vector<Got> expected = Numbered(Range("old", 0, 121));
  for (Got& g : Numbered(Range("new", 0, 30))) expected.push_back(g);
  EXPECT_EQ(got, expected);
  std::vector<std::string> warnings = source.TakeWarnings();
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("rotated"), std::string::npos) << warnings[0];

  // Positions name the new file now.
  FileSource resumed(path, false);
  ASSERT_TRUE(resumed.Seek(source.position()).ok());
  AppendFile(path, "{\"new\":30}\n");
  EXPECT_EQ(ReadToEnd(resumed), Numbered({"{\"new\":30}"}, 31));
  EXPECT_TRUE(resumed.TakeWarnings().empty());
}

TEST(FileSourceTest, RotationAfterEveryFewLinesLosesAndRepeatsNothing) {
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  WriteFile(path, "");
  FileSource source(path, true);
  std::vector<Got> got;
  std::vector<Got> expected;
  for (int generation = 0; generation < 6; ++generation) {
    const std::string prefix = "g" + std::to_string(generation);
    AppendFile(path, Join(Range(prefix, 0, 10)));
    for (Got& g : PollOnce(source, 3, 0)) got.push_back(g);  // Read a little of it, not all.
    ASSERT_EQ(::rename(path.c_str(), dir.File("events.jsonl." + std::to_string(generation)).c_str()), 0);
    AppendFile(dir.File("events.jsonl." + std::to_string(generation)), Join(Range(prefix, 10, 15)));
    WriteFile(path, "");
    for (Got& g : Numbered(Range(prefix, 0, 15))) expected.push_back(g);
    // Like tail -F, the source must see each rotated file before the next rotation; let it catch up.
    for (Got& g : ReadFollowing(source, expected.size() - got.size())) got.push_back(g);
  }
  EXPECT_EQ(got, expected);
  EXPECT_EQ(source.TakeWarnings().size(), 5u);  // Five switches seen; the sixth new file is not read yet.
}

TEST(FileSourceTest, CopyTruncateStartsAgainFromTheTop) {
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  WriteFile(path, Join(Range("before", 0, 20)));
  FileSource source(path, true);
  EXPECT_EQ(ReadFollowing(source, 20), Numbered(Range("before", 0, 20)));

  // copytruncate: the rotated copy keeps the old lines; the file is cut to 0 and the writer goes on.
  ASSERT_EQ(::truncate(path.c_str(), 0), 0);
  AppendFile(path, Join(Range("after", 0, 5)));
  std::vector<Got> got = ReadFollowing(source, 5);
  EXPECT_EQ(got, Numbered(Range("after", 0, 5)));
  std::vector<std::string> warnings = source.TakeWarnings();
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("truncated"), std::string::npos) << warnings[0];

  FileSource resumed(path, false);
  ASSERT_TRUE(resumed.Seek(source.position()).ok());
  AppendFile(path, Join(Range("after", 5, 7)));
  EXPECT_EQ(ReadToEnd(resumed), Numbered(Range("after", 5, 7), 6));
}

TEST(FileSourceTest, SeekFindsTheFileRotatedWhileStopped) {
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  WriteFile(path, Join(Range("old", 0, 10)));
  std::string position;
  {
    FileSource source(path, false);
    ASSERT_EQ(PollOnce(source, 4, 0).size(), 4u);
    position = source.position();
  }
  ASSERT_EQ(::rename(path.c_str(), dir.File("events.jsonl.1").c_str()), 0);
  WriteFile(path, Join(Range("new", 0, 3)));

  for (bool follow : {false, true}) {
    FileSource resumed(path, follow);
    Status seek = resumed.Seek(position);
    ASSERT_TRUE(seek.ok()) << seek.message();
    std::vector<std::string> warnings = resumed.TakeWarnings();
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_NE(warnings[0].find("events.jsonl.1"), std::string::npos) << warnings[0];
    std::vector<Got> expected = Numbered(Range("old", 4, 10), 5);
    for (Got& g : Numbered(Range("new", 0, 3))) expected.push_back(g);
    EXPECT_EQ(follow ? ReadFollowing(resumed, expected.size()) : ReadToEnd(resumed), expected) << follow;
  }
}

TEST(FileSourceTest, SeekWhenTheRecordedFileIsGoneRefusesOrReadsTheNewFileAsTold) {
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  WriteFile(path, Join(Range("old", 0, 10)));
  FileSource source(path, false);
  ASSERT_EQ(PollOnce(source, 4, 0).size(), 4u);
  const std::string position = source.position();

  // Deleted and recreated: the new file may well reuse the inode number; its first bytes tell it apart.
  ASSERT_EQ(::unlink(path.c_str()), 0);
  WriteFile(path, Join(Range("fresh", 0, 20)));
  FileSource refusing(path, false);
  Status refused = refusing.Seek(position);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.message().find("--new-events-file"), std::string::npos) << refused.message();
  EXPECT_NE(refused.message().find("freshet run --reset"), std::string::npos) << refused.message();

  FileSource resumed(path, false, FileSource::Replaced::kReadFromStart);
  ASSERT_TRUE(resumed.Seek(position).ok());
  std::vector<std::string> warnings = resumed.TakeWarnings();
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("gone"), std::string::npos) << warnings[0];
  EXPECT_EQ(ReadToEnd(resumed), Numbered(Range("fresh", 0, 20)));

  // No file at all: an error.
  ASSERT_EQ(::unlink(path.c_str()), 0);
  FileSource nothing(path, true, FileSource::Replaced::kReadFromStart);
  Status seek = nothing.Seek(position);
  ASSERT_FALSE(seek.ok());
  EXPECT_NE(seek.message().find("freshet run --reset"), std::string::npos) << seek.message();
}

// `cp events.jsonl x && mv x events.jsonl` while stopped: a new inode with the bytes read before, perhaps more.
// It goes on after the checkpoint's line; a file that differs anywhere in what was read is not taken for it.
TEST(FileSourceTest, SeekResumesACopyOfTheRecordedFileAtItsOffset) {
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  // Long enough that the head (1 KiB) and tail (4 KiB) hashes cover different bytes.
  WriteFile(path, Join(Range("old", 0, 1000)));
  FileSource source(path, false);
  ASSERT_EQ(PollOnce(source, 600, 0).size(), 600u);
  const std::string position = source.position();

  const std::string original = Join(Range("old", 0, 1000));
  for (bool appended : {false, true}) {
    WriteFile(dir.File("x"), appended ? original + Join(Range("more", 0, 5)) : original);
    ASSERT_EQ(::rename(dir.File("x").c_str(), path.c_str()), 0);
    FileSource resumed(path, false);
    Status seek = resumed.Seek(position);
    ASSERT_TRUE(seek.ok()) << seek.message();
    std::vector<std::string> warnings = resumed.TakeWarnings();
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_NE(warnings[0].find("copy"), std::string::npos) << warnings[0];
    std::vector<Got> expected = Numbered(Range("old", 600, 1000), 601);
    if (appended) {
      for (Got& g : Numbered(Range("more", 0, 5), 1001)) expected.push_back(g);
    }
    EXPECT_EQ(ReadToEnd(resumed), expected) << appended;
  }

  // Changed within the 4 KiB before the offset: refused. (A change between the first KiB and the last 4 KiB
  // read, keeping the length, is not seen: the fingerprint does not cover those bytes.)
  std::vector<std::string> lines = Range("old", 0, 1000);
  lines[590] = Range("odd", 590, 591)[0];
  WriteFile(dir.File("x"), Join(lines));
  ASSERT_EQ(::rename(dir.File("x").c_str(), path.c_str()), 0);
  FileSource edited(path, false);
  Status refused = edited.Seek(position);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.message().find("does not begin with the bytes read"), std::string::npos) << refused.message();

  // Shorter than the offset: refused.
  WriteFile(dir.File("x"), Join(Range("old", 0, 500)));
  ASSERT_EQ(::rename(dir.File("x").c_str(), path.c_str()), 0);
  FileSource shorter(path, false);
  EXPECT_FALSE(shorter.Seek(position).ok());
}

// A position written before the tail hash existed still resumes a copy, by its first bytes and length.
TEST(FileSourceTest, SeekResumesACopyFromAPositionWithoutTail) {
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  WriteFile(path, Join(Range("old", 0, 10)));
  FileSource source(path, false);
  ASSERT_EQ(PollOnce(source, 4, 0).size(), 4u);
  std::string position = source.position();
  const size_t tail = position.find(";tail=");
  ASSERT_NE(tail, std::string::npos) << position;
  position.erase(tail, position.find(";path=") - tail);
  std::filesystem::copy_file(path, dir.File("x"));
  ASSERT_EQ(::rename(dir.File("x").c_str(), path.c_str()), 0);
  FileSource resumed(path, false);
  Status seek = resumed.Seek(position);
  ASSERT_TRUE(seek.ok()) << seek.message();
  EXPECT_EQ(ReadToEnd(resumed), Numbered(Range("old", 4, 10), 5));
}

// While following: a copy moved over the path goes on where the old file ended, not from its start.
TEST(FileSourceTest, FollowGoesOnInACopyMovedOverThePath) {
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  WriteFile(path, Join(Range("old", 0, 20)));
  FileSource source(path, true);
  std::vector<Got> got = ReadFollowing(source, 20);
  std::filesystem::copy_file(path, dir.File("x"));
  AppendFile(dir.File("x"), Join(Range("more", 0, 3)));
  ASSERT_EQ(::rename(dir.File("x").c_str(), path.c_str()), 0);
  for (Got& g : ReadFollowing(source, 3)) got.push_back(g);
  std::vector<Got> expected = Numbered(Range("old", 0, 20));
  for (Got& g : Numbered(Range("more", 0, 3), 21)) expected.push_back(g);
  EXPECT_EQ(got, expected);
  std::vector<std::string> warnings = source.TakeWarnings();
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("copy"), std::string::npos) << warnings[0];

  // Its positions name the copy and resume in it.
  FileSource resumed(path, false);
  ASSERT_TRUE(resumed.Seek(source.position()).ok());
  AppendFile(path, Join(Range("more", 3, 4)));
  EXPECT_EQ(ReadToEnd(resumed), Numbered(Range("more", 3, 4), 24));
}

TEST(FileSourceTest, SeekBeyondATruncatedFileIsAnError) {
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  WriteFile(path, Join(Range("x", 0, 10)));
  FileSource source(path, false);
  ASSERT_EQ(PollOnce(source, 8, 0).size(), 8u);
  const std::string position = source.position();
  ASSERT_EQ(::truncate(path.c_str(), 20), 0);  // Same file (inode), now shorter than the offset.

  FileSource resumed(path, false);
  Status seek = resumed.Seek(position);
  ASSERT_FALSE(seek.ok());
  EXPECT_NE(seek.message().find("truncated"), std::string::npos) << seek.message();
}

TEST(FileSourceTest, SeekRejectsPositionsOfOtherFilesAndGarbage) {
  TempDir dir;
  WriteFile(dir.File("a.jsonl"), "a\n");
  WriteFile(dir.File("b.jsonl"), "b\n");
  FileSource a(dir.File("a.jsonl"), false);
  ASSERT_EQ(PollOnce(a, 1, 0).size(), 1u);
  FileSource b(dir.File("b.jsonl"), false);
  Status other = b.Seek(a.position());
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.message().find("a.jsonl"), std::string::npos) << other.message();
  EXPECT_NE(other.message().find("freshet run --reset"), std::string::npos) << other.message();
  EXPECT_FALSE(b.Seek("ingest:seq=1;segment=0;offset=20").ok());
  EXPECT_FALSE(b.Seek("file:dev=1;inode=x").ok());
}

// A checkpoint records the path as the source was given it. Before spec paths were canonical that was the path
// as written (relative to the working directory, or through a symlinked folder); the same file named another way
// must resume, not be refused as another file (issue 13).
TEST(FileSourceTest, SeekAcceptsTheRecordedFileUnderAnotherName) {
  TempDir dir;
  std::filesystem::create_directory(dir.File("real"));
  std::filesystem::create_directory_symlink(dir.File("real"), dir.File("link"));
  const std::string real = dir.File("real/events.jsonl");
  const std::string linked = dir.File("link/events.jsonl");
  WriteFile(real, Join(Range("e", 0, 10)));
  const std::filesystem::path previous = std::filesystem::current_path();

  // Recorded relative to the spec's folder, the working directory of that run; resumed by the absolute path
  // through the symlink from another working directory, where the recorded relative path names nothing.
  std::filesystem::current_path(dir.File("real"));
  FileSource relative("events.jsonl", false);
  ASSERT_EQ(PollOnce(relative, 4, 0).size(), 4u);
  const std::string relative_position = relative.position();
  ASSERT_NE(relative_position.find(";path=events.jsonl"), std::string::npos) << relative_position;
  std::filesystem::current_path("/");
  FileSource by_link(linked, false);
  Status seek = by_link.Seek(relative_position);
  std::filesystem::current_path(previous);
  ASSERT_TRUE(seek.ok()) << seek.message();
  EXPECT_EQ(ReadToEnd(by_link), Numbered(Range("e", 4, 10), 5));
  EXPECT_TRUE(by_link.TakeWarnings().empty());
  EXPECT_NE(by_link.position().find(";path=" + linked), std::string::npos)
      << "the next checkpoint records the new name";

  // Recorded through the symlink; resumed by the real path.
  FileSource first(linked, false);
  ASSERT_EQ(PollOnce(first, 3, 0).size(), 3u);
  FileSource by_real(real, false);
  seek = by_real.Seek(first.position());
  ASSERT_TRUE(seek.ok()) << seek.message();
  EXPECT_EQ(ReadToEnd(by_real), Numbered(Range("e", 3, 10), 4));

  // Recorded through the symlink, then rotated while stopped: the path names a new file, but the two names
  // are one path, so the rotated file is found and finished first, as for an equal path.
  const std::string position = first.position();
  ASSERT_EQ(::rename(real.c_str(), (real + ".1").c_str()), 0);
  WriteFile(real, Join(Range("new", 0, 2)));
  FileSource rotated(real, false);
  seek = rotated.Seek(position);
  ASSERT_TRUE(seek.ok()) << seek.message();
  std::vector<Got> got = ReadToEnd(rotated);
  ASSERT_EQ(got.size(), 9u);
  EXPECT_EQ(got.front().text, Range("e", 3, 4)[0]);
  EXPECT_EQ(got.back().text, Range("new", 1, 2)[0]);
}

TEST(FileSourceTest, PositionBeforeReadingSeeksToTheStart) {
  TempDir dir;
  const std::string path = dir.File("events.jsonl");
  WriteFile(path, "a\nb\n");
  FileSource fresh(path, false);
  const std::string position = fresh.position();
  FileSource resumed(path, false);
  ASSERT_TRUE(resumed.Seek(position).ok());
  EXPECT_EQ(ReadToEnd(resumed), Numbered({"a", "b"}));
  EXPECT_TRUE(resumed.TakeWarnings().empty());
}

}  // namespace
}  // namespace freshet

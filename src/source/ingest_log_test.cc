#include "source/ingest_log.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <functional>
#include <iostream>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "event/event_parser.h"

namespace freshet {
namespace {

class TempDir {
 public:
  TempDir() {
    char name[] = "/tmp/freshet_ingest_log_XXXXXX";
    FRESHET_CHECK(::mkdtemp(name) != nullptr);
    path_ = name;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// CRC-32C computed bit by bit, independently of the log's table-driven one.
uint32_t ReferenceCrc32c(std::string_view bytes) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char c : bytes) {
    crc ^= c;
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
  }
  return crc ^ 0xFFFFFFFFu;
}

std::string Le(uint64_t value, int bytes) {
  std::string out;
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>(value >> (8 * i)));
  return out;
}

// A record framed as the file format documents it, built by hand.
std::string Frame(std::string_view line, int64_t arrival_ns) {
  const std::string length = Le(line.size(), 4);
  const std::string arrival = Le(static_cast<uint64_t>(arrival_ns), 8);
  const uint32_t crc = ReferenceCrc32c(length + arrival + std::string(line));
  return length + Le(crc, 4) + arrival + std::string(line);
}

std::unique_ptr<IngestLog> OpenLog(const std::string& dir, uint64_t segment_bytes = uint64_t{64} << 20) {
  auto log = IngestLog::Open(dir, IngestLogOptions{segment_bytes});
  EXPECT_TRUE(log.ok()) << log.status().message();
  return log.ok() ? std::move(log).value() : nullptr;
}

uint64_t AppendOrDie(IngestLog& log, const std::vector<std::string>& lines, int64_t arrival_ns = 0) {
  std::vector<std::string_view> views(lines.begin(), lines.end());
  Result<uint64_t> result = log.Append(views, arrival_ns);
  EXPECT_TRUE(result.ok()) << result.status().message();
  return result.ok() ? *result : 0;
}

struct Got {
  std::string text;
  uint64_t line = 0;
  int64_t arrival_ns = 0;
  bool operator==(const Got&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Got& g) {
  return os << "{#" << g.line << " '" << g.text << "' @" << g.arrival_ns << "}";
}

std::vector<Got> PollOnce(Source& source, size_t max_records, int timeout_ms) {
  std::vector<SourceRecord> batch;
  Status status = source.Poll(&batch, max_records, timeout_ms);
  EXPECT_TRUE(status.ok()) << status.message();
  std::vector<Got> got;
  for (const SourceRecord& r : batch) {
    EXPECT_GE(r.capacity, r.text.size() + kParsePaddingBytes);
    EXPECT_FALSE(r.too_long);
    got.push_back({std::string(r.text), r.line_number, r.arrival_ns});
  }
  return got;
}

// Reads until a Poll without waiting returns nothing.
std::vector<Got> ReadAvailable(Source& source, size_t max_records = 1000) {
  std::vector<Got> all;
  while (true) {
    std::vector<Got> got = PollOnce(source, max_records, 0);
    if (got.empty()) return all;
    for (Got& g : got) all.push_back(std::move(g));
  }
}

std::vector<std::string> Lines(const std::string& prefix, int from, int to) {
  std::vector<std::string> out;
  for (int i = from; i < to; ++i) out.push_back("{\"" + prefix + "\":" + std::to_string(i) + "}");
  return out;
}

std::vector<Got> Expected(const std::vector<std::string>& lines, uint64_t first_sequence, int64_t arrival_ns) {
  std::vector<Got> out;
  for (size_t i = 0; i < lines.size(); ++i) out.push_back({lines[i], first_sequence + i + 1, arrival_ns});
  return out;
}

std::vector<std::string> SegmentFiles(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

TEST(IngestLogTest, AppendsAreReadBackInOrderWithArrivalTimes) {
  TempDir dir;
  auto log = OpenLog(dir.Sub("log"));
  ASSERT_NE(log, nullptr);
  EXPECT_EQ(AppendOrDie(*log, Lines("a", 0, 3), 111), 3u);
  EXPECT_EQ(AppendOrDie(*log, {}, 5), 3u);
  EXPECT_EQ(AppendOrDie(*log, {"", "{\"b\":1}"}, 222), 5u);
  EXPECT_EQ(log->durable_sequence(), 5u);

  IngestLogSource source(log.get());
  std::vector<Got> expected = Expected(Lines("a", 0, 3), 0, 111);
  for (Got& g : Expected({"", "{\"b\":1}"}, 3, 222)) expected.push_back(g);
  EXPECT_EQ(ReadAvailable(source, 2), expected);
  EXPECT_EQ(source.position(), "ingest:seq=5;segment=0;offset=" + std::to_string(5 * 16 + 3 * 7 + 7));
  EXPECT_FALSE(source.exhausted());
  EXPECT_EQ(source.name(), "ingest");
  EXPECT_EQ(SegmentFiles(dir.Sub("log")), std::vector<std::string>{"ingest-00000000000000000000.log"});
}

TEST(IngestLogTest, OnDiskFormatIsTheDocumentedFraming) {
  TempDir dir;
  const std::string path = dir.Sub("log/ingest-00000000000000000000.log");
  {
    auto log = OpenLog(dir.Sub("log"));
    AppendOrDie(*log, {"{\"x\":1}", "hello"}, -42);
  }
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(bytes, Frame("{\"x\":1}", -42) + Frame("hello", -42));
  EXPECT_EQ(ReferenceCrc32c("123456789"), 0xE3069283u);  // The reference itself, against the standard check.

  // A record written by hand in the documented format is read back.
  std::ofstream(path, std::ios::binary | std::ios::app) << Frame("by hand", 7);
  auto log = OpenLog(dir.Sub("log"));
  EXPECT_TRUE(log->TakeWarnings().empty());
  IngestLogSource source(log.get());
  std::vector<Got> got = ReadAvailable(source);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[2], (Got{"by hand", 3, 7}));
  EXPECT_EQ(AppendOrDie(*log, {"after"}), 4u);
}

TEST(IngestLogTest, OverlongLinesAreRefusedWhole) {
  TempDir dir;
  auto log = OpenLog(dir.Sub("log"));
  const std::string big(kMaxLineBytes + 1, 'x');
  std::vector<std::string_view> lines = {"ok", big};
  Result<uint64_t> result = log->Append(lines, 0);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("line 2"), std::string::npos) << result.status().message();
  EXPECT_EQ(log->durable_sequence(), 0u);
}

TEST(IngestLogTest, TornOrCorruptTailIsCutOffOnReopen) {
  struct Damage {
    const char* name;
    std::function<void(const std::string& path)> apply;
    size_t surviving;
  };
  const std::vector<Damage> damages = {
      {"garbage bytes", [](const std::string& p) { std::ofstream(p, std::ios::binary | std::ios::app) << "\x07garbage"; },
       10},
      {"header only", [](const std::string& p) { std::ofstream(p, std::ios::binary | std::ios::app) << Frame("0123456789", 1).substr(0, 16); },
       10},
      {"half a record", [](const std::string& p) { std::ofstream(p, std::ios::binary | std::ios::app) << Frame("0123456789", 1).substr(0, 21); },
       10},
      {"zeros", [](const std::string& p) { std::ofstream(p, std::ios::binary | std::ios::app) << std::string(4096, '\0'); },
       10},
      {"flipped byte in the last record",
       [](const std::string& p) {
         std::fstream f(p, std::ios::binary | std::ios::in | std::ios::out);
         f.seekp(-3, std::ios::end);
         f.put('#');
       },
       9},
  };
  for (const Damage& damage : damages) {
    SCOPED_TRACE(damage.name);
    TempDir dir;
    const std::string path = dir.Sub("log/ingest-00000000000000000000.log");
    uint64_t intact_size = 0;
    {
      auto log = OpenLog(dir.Sub("log"));
      AppendOrDie(*log, Lines("r", 0, 10), 5);
      intact_size = std::filesystem::file_size(path);
    }
    damage.apply(path);
    auto log = OpenLog(dir.Sub("log"));
    ASSERT_NE(log, nullptr);
    std::vector<std::string> warnings = log->TakeWarnings();
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_NE(warnings[0].find("cut off"), std::string::npos) << warnings[0];
    EXPECT_EQ(log->durable_sequence(), damage.surviving);
    if (damage.surviving == 10) {
      EXPECT_EQ(std::filesystem::file_size(path), intact_size);
    }

    // Earlier records survive, and appends continue right after them.
    EXPECT_EQ(AppendOrDie(*log, {"next"}, 6), damage.surviving + 1);
    IngestLogSource source(log.get());
    std::vector<Got> expected = Expected(Lines("r", 0, static_cast<int>(damage.surviving)), 0, 5);
    expected.push_back({"next", damage.surviving + 1, 6});
    EXPECT_EQ(ReadAvailable(source), expected);
  }
}

TEST(IngestLogTest, DamageInASealedSegmentIsAnErrorForTheReader) {
  TempDir dir;
  {
    auto log = OpenLog(dir.Sub("log"), 200);
    for (int i = 0; i < 20; ++i) AppendOrDie(*log, Lines("r", i, i + 1));
    ASSERT_GT(log->segment_count(), 2u);
  }
  {
    std::fstream f(dir.Sub("log/ingest-00000000000000000000.log"), std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(18);
    f.put('#');
  }
  auto log = OpenLog(dir.Sub("log"), 200);
  // Open reads earlier segments only for their idempotency keys: it warns, and the reader reports the error.
  std::vector<std::string> warnings = log->TakeWarnings();
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("damaged at offset 0"), std::string::npos) << warnings[0];
  IngestLogSource source(log.get());
  std::vector<SourceRecord> batch;
  Status status = source.Poll(&batch, 100, 0);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("damaged"), std::string::npos) << status.message();
  EXPECT_NE(status.message().find("ingest-00000000000000000000.log"), std::string::npos) << status.message();
}

TEST(IngestLogTest, SegmentsRollAndPositionsAreExactAcrossThem) {
  TempDir dir;
  auto log = OpenLog(dir.Sub("log"), 256);
  std::vector<std::string> all;
  std::mt19937 rng(5);
  while (all.size() < 150) {
    std::vector<std::string> lines = Lines("s", static_cast<int>(all.size()), static_cast<int>(all.size() + 1 + rng() % 4));
    AppendOrDie(*log, lines, static_cast<int64_t>(all.size()));
    all.insert(all.end(), lines.begin(), lines.end());
  }
  const size_t total = all.size();
  // Every record is 16 + 9..11 bytes, so each 256-byte segment holds a handful of appends.
  EXPECT_GE(log->segment_count(), 10u);
  EXPECT_EQ(SegmentFiles(dir.Sub("log")).size(), log->segment_count());

  IngestLogSource reader(log.get());
  std::vector<Got> expected = ReadAvailable(reader, 7);
  ASSERT_EQ(expected.size(), total);
  for (size_t i = 0; i < total; ++i) {
    EXPECT_EQ(expected[i].text, all[i]);
    EXPECT_EQ(expected[i].line, i + 1);
  }

  for (size_t n = 0; n <= total; ++n) {
    IngestLogSource first(log.get());
    std::vector<Got> head;
    while (head.size() < n) {
      for (Got& g : PollOnce(first, std::min<size_t>(n - head.size(), 1 + rng() % 9), 0)) head.push_back(g);
    }
    IngestLogSource second(log.get());
    Status seek = second.Seek(first.position());
    ASSERT_TRUE(seek.ok()) << seek.message();
    EXPECT_EQ(ReadAvailable(second, 1 + rng() % 20), std::vector<Got>(expected.begin() + n, expected.end()))
        << n << " " << first.position();
  }

  // PositionAfter inside a batch that crosses segments.
  IngestLogSource batcher(log.get());
  std::vector<SourceRecord> batch;
  ASSERT_TRUE(batcher.Poll(&batch, 40, 0).ok());
  ASSERT_EQ(batch.size(), 40u);
  ASSERT_NE(batch.front().end.stream, batch.back().end.stream);
  EXPECT_EQ(batcher.PositionAfter(batch, 40), batcher.position());
  for (size_t count = 0; count <= 40; ++count) {
    IngestLogSource resumed(log.get());
    ASSERT_TRUE(resumed.Seek(batcher.PositionAfter(batch, count)).ok());
    EXPECT_EQ(ReadAvailable(resumed), std::vector<Got>(expected.begin() + count, expected.end())) << count;
  }

  // After a reopen too.
  const std::string position = batcher.position();
  log.reset();
  log = OpenLog(dir.Sub("log"), 256);
  IngestLogSource reopened(log.get());
  ASSERT_TRUE(reopened.Seek(position).ok());
  EXPECT_EQ(ReadAvailable(reopened), std::vector<Got>(expected.begin() + 40, expected.end()));
}

TEST(IngestLogTest, DeleteBeforeDropsOnlyWholeSegmentsBehindThePosition) {
  TempDir dir;
  auto log = OpenLog(dir.Sub("log"), 300);
  for (int i = 0; i < 100; ++i) AppendOrDie(*log, Lines("d", i, i + 1));
  // Bases from the file names, to compute independently which segments may go.
  std::vector<uint64_t> bases;
  for (const std::string& name : SegmentFiles(dir.Sub("log"))) bases.push_back(std::stoull(name.substr(7, 20)));
  ASSERT_GE(bases.size(), 5u);

  IngestLogSource reader(log.get());
  std::vector<Got> first50 = PollOnce(reader, 50, 0);
  ASSERT_EQ(first50.size(), 50u);
  const std::string position = reader.position();
  ASSERT_TRUE(log->DeleteBefore(50).ok());

  std::vector<uint64_t> kept;
  for (size_t i = 0; i < bases.size(); ++i) {
    const bool later_one_starts_before = i + 1 < bases.size() && bases[i + 1] < 50;
    if (!later_one_starts_before) kept.push_back(bases[i]);
  }
  std::vector<uint64_t> remaining;
  for (const std::string& name : SegmentFiles(dir.Sub("log"))) remaining.push_back(std::stoull(name.substr(7, 20)));
  EXPECT_EQ(remaining, kept);
  EXPECT_LT(remaining.size(), bases.size());
  EXPECT_LE(remaining.front(), 50u);
  EXPECT_EQ(log->first_sequence(), remaining.front());

  // The checkpointed position still resumes exactly; the reader that was there goes on.
  IngestLogSource resumed(log.get());
  ASSERT_TRUE(resumed.Seek(position).ok());
  EXPECT_EQ(ReadAvailable(resumed), Expected(Lines("d", 50, 100), 50, 0));
  EXPECT_EQ(ReadAvailable(reader), Expected(Lines("d", 50, 100), 50, 0));
  // A fresh reader starts at the oldest segment kept.
  IngestLogSource fresh(log.get());
  std::vector<Got> from_oldest = ReadAvailable(fresh);
  ASSERT_FALSE(from_oldest.empty());
  EXPECT_EQ(from_oldest.front().line, remaining.front() + 1);

  // So does a position taken before reading.
  IngestLogSource unread(log.get());
  EXPECT_EQ(unread.position(), IngestLogPosition({remaining.front(), remaining.front(), 0}).ToString());

  // A position in a deleted segment cannot be honoured.
  IngestLogSource stale(log.get());
  Status seek = stale.Seek("ingest:seq=1;segment=0;offset=25");
  ASSERT_FALSE(seek.ok());
  EXPECT_NE(seek.message().find("oldest segment"), std::string::npos) << seek.message();

  // The segment being written is never deleted.
  ASSERT_TRUE(log->DeleteBefore(1000).ok());
  EXPECT_EQ(log->segment_count(), 1u);
  EXPECT_EQ(AppendOrDie(*log, {"z"}), 101u);
}

TEST(IngestLogTest, SeekToTheEndOfADeletedSegmentContinuesInTheNext) {
  TempDir dir;
  auto log = OpenLog(dir.Sub("log"), 100);
  for (int i = 0; i < 12; ++i) AppendOrDie(*log, Lines("e", i, i + 1));  // 23-byte records: 4 per segment.
  ASSERT_EQ(log->segment_count(), 3u);
  // A checkpoint at the end of segment 0 (4 records, 92 bytes); segment 0 was deleted behind a later one.
  ASSERT_TRUE(log->DeleteBefore(6).ok());
  EXPECT_EQ(log->first_sequence(), 4u);
  IngestLogSource source(log.get());
  Status seek = source.Seek("ingest:seq=4;segment=0;offset=92");
  ASSERT_TRUE(seek.ok()) << seek.message();
  EXPECT_EQ(ReadAvailable(source), Expected(Lines("e", 4, 12), 4, 0));
}

TEST(IngestLogTest, SeekRejectsBadPositions) {
  TempDir dir;
  auto log = OpenLog(dir.Sub("log"));
  AppendOrDie(*log, Lines("b", 0, 5));
  IngestLogSource source(log.get());
  EXPECT_FALSE(source.Seek("file:dev=1;inode=2;offset=0;line=0;head=0;path=x").ok());
  EXPECT_FALSE(source.Seek("ingest:seq=1;segment=0").ok());
  Status mid = source.Seek("ingest:seq=1;segment=0;offset=7");  // Not a record boundary.
  ASSERT_FALSE(mid.ok());
  EXPECT_NE(mid.message().find("no record starts there"), std::string::npos) << mid.message();
  Status beyond = source.Seek("ingest:seq=9;segment=0;offset=9999");
  ASSERT_FALSE(beyond.ok());
  EXPECT_NE(beyond.message().find("durable bytes"), std::string::npos) << beyond.message();
}

TEST(IngestLogTest, SecondOpenOfTheSameDirectoryFails) {
  TempDir dir;
  auto log = OpenLog(dir.Sub("log"));
  auto second = IngestLog::Open(dir.Sub("log"));
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("in use"), std::string::npos) << second.status().message();
}

TEST(IngestLogTest, ReaderFollowsAppendsFromOtherThreads) {
  TempDir dir;
  auto log = OpenLog(dir.Sub("log"));
  IngestLogSource source(log.get());
  EXPECT_TRUE(PollOnce(source, 10, 0).empty());
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    AppendOrDie(*log, {"pushed"}, 9);
  });
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(PollOnce(source, 10, 5000), (std::vector<Got>{{"pushed", 1, 9}}));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(2000));
  writer.join();
  const auto idle = std::chrono::steady_clock::now();
  EXPECT_TRUE(PollOnce(source, 10, 60).empty());
  EXPECT_GE(std::chrono::steady_clock::now() - idle, std::chrono::milliseconds(55));
}

TEST(IngestLogTest, ConcurrentAppendersShareSyncsAndEveryAckedRecordIsReadOnce) {
  TempDir dir;
  auto log = OpenLog(dir.Sub("log"), 16 << 10);  // Small segments: rolls happen amid concurrent appends.
  constexpr int kThreads = 4;
  constexpr int kAppendsPerThread = 300;
  struct Ack {
    uint64_t end_sequence;
    std::vector<std::string> lines;
  };
  std::vector<std::vector<Ack>> acks(kThreads);
  std::atomic<bool> go{false};
  std::atomic<int> finished{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      while (!go) std::this_thread::yield();
      int next = 0;
      for (int a = 0; a < kAppendsPerThread; ++a) {
        std::vector<std::string> lines = Lines("t" + std::to_string(t), next, next + 1 + static_cast<int>(rng() % 3));
        next += static_cast<int>(lines.size());
        acks[t].push_back({AppendOrDie(*log, lines, t), lines});
      }
      ++finished;
    });
  }
  // A reader follows along while the appends run.
  std::vector<Got> read;
  IngestLogSource source(log.get());
  go = true;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (finished < kThreads && std::chrono::steady_clock::now() < deadline) {
    for (Got& g : PollOnce(source, 97, 20)) read.push_back(std::move(g));
  }
  for (auto& thread : threads) thread.join();
  size_t total = 0;
  for (const auto& per_thread : acks) {
    for (const Ack& ack : per_thread) total += ack.lines.size();
  }
  for (Got& g : ReadAvailable(source, 97)) read.push_back(std::move(g));
  ASSERT_EQ(read.size(), total);
  EXPECT_TRUE(PollOnce(source, 10, 0).empty());

  // Record k (line k + 1) is where the Append that acknowledged it said; each is read exactly once.
  for (int t = 0; t < kThreads; ++t) {
    uint64_t previous_end = 0;
    for (const Ack& ack : acks[t]) {
      EXPECT_GT(ack.end_sequence, previous_end);  // One thread's appends are in its order.
      previous_end = ack.end_sequence;
      for (size_t i = 0; i < ack.lines.size(); ++i) {
        const uint64_t sequence = ack.end_sequence - ack.lines.size() + i;
        ASSERT_LT(sequence, read.size());
        EXPECT_EQ(read[sequence], (Got{ack.lines[i], sequence + 1, t}));
      }
    }
  }
  const uint64_t appends = kThreads * kAppendsPerThread;
  std::cout << "[ info ] " << appends << " appends, " << log->sync_count() << " syncs, " << log->segment_count()
            << " segments\n";
  EXPECT_LE(log->sync_count(), appends + log->segment_count());
}

// A child process appends from two threads and reports each acknowledged count on a pipe; it is killed
// with SIGKILL at a random moment. Every acknowledged record must be in the log after it is reopened.
TEST(IngestLogTest, AcknowledgedRecordsSurviveKillNine) {
  TempDir dir;
  const std::string log_dir = dir.Sub("log");
  constexpr int kRounds = 6;
  constexpr int kWriters = 2;
  std::mt19937 rng(2024);
  // acked[round][writer]: records the child reported as acknowledged.
  std::vector<std::array<uint64_t, kWriters>> acked(kRounds);
  for (int round = 0; round < kRounds; ++round) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(fds[0]);
      auto log = IngestLog::Open(log_dir, IngestLogOptions{8 << 10});
      if (!log.ok()) ::_exit(3);
      std::vector<std::thread> writers;
      for (int w = 0; w < kWriters; ++w) {
        writers.emplace_back([&, w] {
          for (uint64_t i = 0;; ++i) {
            const std::string line = "{\"round\":" + std::to_string(round) + ",\"w\":" + std::to_string(w) +
                                     ",\"i\":" + std::to_string(i) + "}";
            std::string_view view = line;
            if (!(*log)->Append(std::span<const std::string_view>(&view, 1), round).ok()) ::_exit(4);
            const uint64_t report[2] = {static_cast<uint64_t>(w), i + 1};
            if (::write(fds[1], report, sizeof(report)) != sizeof(report)) ::_exit(5);
          }
        });
      }
      for (auto& writer : writers) writer.join();
      ::_exit(0);
    }
    ::close(fds[1]);
    // Killed at a random moment after the first acknowledgement (waited for: on a loaded machine the child may
    // take long to start), so that every round has acknowledged records to look for.
    pollfd first_ack{fds[0], POLLIN, 0};
    ASSERT_EQ(::poll(&first_ack, 1, 60'000), 1) << "round " << round << ": no acknowledgement within 60 s";
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 150));
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    int wstatus = 0;
    ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(wstatus)) << "child exited with " << WEXITSTATUS(wstatus);
    acked[round].fill(0);
    uint64_t report[2];
    while (::read(fds[0], report, sizeof(report)) == sizeof(report)) {
      acked[round][report[0]] = std::max(acked[round][report[0]], report[1]);
    }
    ::close(fds[0]);
    EXPECT_GT(acked[round][0] + acked[round][1], 0u) << "round " << round << ": nothing was acknowledged";
  }

  auto log = OpenLog(log_dir, 8 << 10);
  ASSERT_NE(log, nullptr);
  for (const std::string& warning : log->TakeWarnings()) std::cout << "[ info ] " << warning << "\n";
  IngestLogSource source(log.get());
  std::vector<Got> all = ReadAvailable(source);
  // Per round and writer the records are 0, 1, 2, ... with no gap or repeat, and at least as many as acked;
  // rounds follow each other.
  std::vector<std::array<uint64_t, kWriters>> found(kRounds);
  for (auto& f : found) f.fill(0);
  int last_round = 0;
  for (size_t k = 0; k < all.size(); ++k) {
    int round = -1, w = -1;
    unsigned long long i = 0;
    ASSERT_EQ(std::sscanf(all[k].text.c_str(), "{\"round\":%d,\"w\":%d,\"i\":%llu}", &round, &w, &i), 3) << all[k].text;
    ASSERT_GE(round, last_round);
    ASSERT_LT(round, kRounds);
    ASSERT_TRUE(w == 0 || w == 1);
    last_round = round;
    ASSERT_EQ(i, found[round][w]) << "round " << round << " writer " << w;
    ++found[round][w];
    EXPECT_EQ(all[k].line, k + 1);
    EXPECT_EQ(all[k].arrival_ns, round);
  }
  for (int round = 0; round < kRounds; ++round) {
    for (int w = 0; w < kWriters; ++w) {
      EXPECT_GE(found[round][w], acked[round][w]) << "round " << round << " writer " << w;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Idempotency keys

Result<KeyedAppend> AppendKeyed(IngestLog& log, const std::vector<std::string>& lines, std::string_view key,
                                std::string_view receipt = "ack") {
  std::vector<std::string_view> views(lines.begin(), lines.end());
  return log.AppendOnce(views, 7, IngestKey{key, receipt});
}

KeyedAppend::Outcome OutcomeOf(const Result<KeyedAppend>& r) {
  EXPECT_TRUE(r.ok()) << r.status().message();
  return r.ok() ? r->outcome : KeyedAppend::Outcome::kKeyReused;
}

// A clock the test moves by hand.
struct FakeClock {
  std::shared_ptr<std::atomic<int64_t>> now = std::make_shared<std::atomic<int64_t>>(1'700'000'000'000);
  std::function<int64_t()> fn() const {
    return [n = now] { return n->load(); };
  }
};

std::unique_ptr<IngestLog> OpenKeyed(const std::string& dir, const FakeClock& clock, int64_t window_ms = 60'000,
                                     uint64_t segment_bytes = uint64_t{64} << 20) {
  auto log = IngestLog::Open(dir, IngestLogOptions{segment_bytes, window_ms, clock.fn()});
  EXPECT_TRUE(log.ok()) << log.status().message();
  return log.ok() ? std::move(log).value() : nullptr;
}

TEST(IngestLogKeysTest, AKeyIsRememberedWithItsBatchAcrossReopen) {
  TempDir dir;
  FakeClock clock;
  {
    auto log = OpenKeyed(dir.Sub("log"), clock);
    Result<KeyedAppend> first = AppendKeyed(*log, Lines("a", 0, 3), "key-1", "receipt-1");
    ASSERT_EQ(OutcomeOf(first), KeyedAppend::Outcome::kAppended);
    EXPECT_EQ(first->sequence, 3u);
    Result<KeyedAppend> again = AppendKeyed(*log, Lines("a", 0, 3), "key-1", "receipt-other");
    ASSERT_EQ(OutcomeOf(again), KeyedAppend::Outcome::kReplayed);
    EXPECT_EQ(again->receipt, "receipt-1");
    EXPECT_EQ(OutcomeOf(AppendKeyed(*log, Lines("a", 0, 4), "key-1")), KeyedAppend::Outcome::kKeyReused);
    EXPECT_EQ(OutcomeOf(AppendKeyed(*log, Lines("b", 0, 2), "key-2")), KeyedAppend::Outcome::kAppended);
    AppendOrDie(*log, Lines("plain", 0, 1));
    EXPECT_EQ(log->durable_sequence(), 6u);  // Key records are not counted.
  }
  auto log = OpenKeyed(dir.Sub("log"), clock);
  ASSERT_NE(log, nullptr);
  EXPECT_TRUE(log->TakeWarnings().empty());
  EXPECT_EQ(log->key_count(), 2u);
  Result<KeyedAppend> replay = AppendKeyed(*log, Lines("a", 0, 3), "key-1");
  ASSERT_EQ(OutcomeOf(replay), KeyedAppend::Outcome::kReplayed);
  EXPECT_EQ(replay->receipt, "receipt-1");
  EXPECT_EQ(OutcomeOf(AppendKeyed(*log, Lines("b", 0, 3), "key-2")), KeyedAppend::Outcome::kKeyReused);
  // Readers see every line once, numbered without the key records.
  IngestLogSource source(log.get());
  std::vector<Got> expected = Expected(Lines("a", 0, 3), 0, 7);
  for (const Got& g : Expected(Lines("b", 0, 2), 3, 7)) expected.push_back(g);
  for (const Got& g : Expected(Lines("plain", 0, 1), 5, 0)) expected.push_back(g);
  EXPECT_EQ(ReadAvailable(source), expected);
}

TEST(IngestLogKeysTest, AKeyIsForgottenAfterTheWindow) {
  TempDir dir;
  FakeClock clock;
  {
    auto log = OpenKeyed(dir.Sub("log"), clock, /*window_ms=*/60'000);
    ASSERT_EQ(OutcomeOf(AppendKeyed(*log, Lines("a", 0, 2), "old")), KeyedAppend::Outcome::kAppended);
    clock.now->fetch_add(30'000);
    ASSERT_EQ(OutcomeOf(AppendKeyed(*log, Lines("b", 0, 2), "young")), KeyedAppend::Outcome::kAppended);
    clock.now->fetch_add(30'001);  // "old" is past the window, "young" is not.
    EXPECT_EQ(OutcomeOf(AppendKeyed(*log, Lines("b", 0, 2), "young")), KeyedAppend::Outcome::kReplayed);
    EXPECT_EQ(OutcomeOf(AppendKeyed(*log, Lines("a", 0, 2), "old")), KeyedAppend::Outcome::kAppended);
    EXPECT_EQ(log->key_count(), 2u);
  }
  // After a restart too: keys are timed by when they were logged, not when they were read back.
  clock.now->fetch_add(45'000);
  auto log = OpenKeyed(dir.Sub("log"), clock, 60'000);
  EXPECT_EQ(log->key_count(), 1u);  // The second "old"; "young" is forgotten.
  EXPECT_EQ(OutcomeOf(AppendKeyed(*log, Lines("b", 0, 2), "young")), KeyedAppend::Outcome::kAppended);
  EXPECT_EQ(OutcomeOf(AppendKeyed(*log, Lines("a", 0, 2), "old")), KeyedAppend::Outcome::kReplayed);
}

// A batch whose append fails is not logged, so its key must not be remembered: the resend is logged.
TEST(IngestLogKeysTest, AKeyIsNotRememberedWhenItsAppendFailed) {
  TempDir dir;
  FakeClock clock;
  auto log = OpenKeyed(dir.Sub("log"), clock);
  ASSERT_EQ(OutcomeOf(AppendKeyed(*log, Lines("a", 0, 2), "first")), KeyedAppend::Outcome::kAppended);
  const uint64_t size = std::filesystem::file_size(dir.Sub("log/ingest-00000000000000000000.log"));
  // The file may not grow past its size now: the write fails (EFBIG), and the log undoes it.
  struct rlimit saved;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  auto* previous = ::signal(SIGXFSZ, SIG_IGN);
  struct rlimit limit = saved;
  limit.rlim_cur = size + 10;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limit), 0);
  Result<KeyedAppend> failed = AppendKeyed(*log, Lines("b", 0, 5), "second");
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &saved), 0);
  ::signal(SIGXFSZ, previous);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(log->key_count(), 1u);
  EXPECT_EQ(std::filesystem::file_size(dir.Sub("log/ingest-00000000000000000000.log")), size);

  // The resend is logged, as the batch's first durable copy.
  EXPECT_EQ(OutcomeOf(AppendKeyed(*log, Lines("b", 0, 5), "second")), KeyedAppend::Outcome::kAppended);
  EXPECT_EQ(log->durable_sequence(), 7u);
}

// A crash in the middle of a keyed batch (its key record written, not all its lines): the batch was never
// acknowledged, so recovery cuts it off whole, key record included, and the key is not remembered.
TEST(IngestLogKeysTest, ATornKeyedBatchIsCutOffWithItsKey) {
  TempDir dir;
  FakeClock clock;
  const std::string path = dir.Sub("log/ingest-00000000000000000000.log");
  uint64_t intact = 0;
  {
    auto log = OpenKeyed(dir.Sub("log"), clock);
    ASSERT_EQ(OutcomeOf(AppendKeyed(*log, Lines("a", 0, 2), "whole")), KeyedAppend::Outcome::kAppended);
    intact = std::filesystem::file_size(path);
    ASSERT_EQ(OutcomeOf(AppendKeyed(*log, Lines("b", 0, 4), "torn")), KeyedAppend::Outcome::kAppended);
  }
  // Keep the key record and two whole lines of the second batch, then half a line.
  const uint64_t full = std::filesystem::file_size(path);
  const uint64_t line_bytes = 16 + Lines("b", 0, 1)[0].size();
  std::filesystem::resize_file(path, full - 2 * line_bytes + 5);
  auto log = OpenKeyed(dir.Sub("log"), clock);
  ASSERT_NE(log, nullptr);
  std::vector<std::string> warnings = log->TakeWarnings();
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("idempotency key"), std::string::npos) << warnings[0];
  EXPECT_EQ(std::filesystem::file_size(path), intact);
  EXPECT_EQ(log->durable_sequence(), 2u);
  EXPECT_EQ(log->key_count(), 1u);
  EXPECT_EQ(OutcomeOf(AppendKeyed(*log, Lines("a", 0, 2), "whole")), KeyedAppend::Outcome::kReplayed);
  EXPECT_EQ(OutcomeOf(AppendKeyed(*log, Lines("b", 0, 4), "torn")), KeyedAppend::Outcome::kAppended);
  IngestLogSource source(log.get());
  std::vector<Got> expected = Expected(Lines("a", 0, 2), 0, 7);
  for (const Got& g : Expected(Lines("b", 0, 4), 2, 7)) expected.push_back(g);
  EXPECT_EQ(ReadAvailable(source), expected);
}

// Segments are deleted once checkpointed, long before their keys' window ends: the keys move to the key file.
TEST(IngestLogKeysTest, KeysOutliveTheSegmentsTheyWereLoggedIn) {
  TempDir dir;
  FakeClock clock;
  {
    auto log = OpenKeyed(dir.Sub("log"), clock, 60'000, /*segment_bytes=*/256);
    for (int k = 0; k < 12; ++k) {
      ASSERT_EQ(OutcomeOf(AppendKeyed(*log, Lines("k" + std::to_string(k), 0, 3), "key-" + std::to_string(k))),
                KeyedAppend::Outcome::kAppended);
    }
    ASSERT_GT(log->segment_count(), 4u);
    ASSERT_TRUE(log->DeleteBefore(log->durable_sequence()).ok());
    EXPECT_LE(log->segment_count(), 2u);
    EXPECT_TRUE(std::filesystem::exists(dir.Sub("log/idempotency-keys")));
  }
  auto log = OpenKeyed(dir.Sub("log"), clock, 60'000, 256);
  ASSERT_NE(log, nullptr);
  EXPECT_EQ(log->key_count(), 12u);
  for (int k = 0; k < 12; ++k) {
    EXPECT_EQ(OutcomeOf(AppendKeyed(*log, Lines("k" + std::to_string(k), 0, 3), "key-" + std::to_string(k))),
              KeyedAppend::Outcome::kReplayed)
        << k;
  }
  // Expired keys leave the file at its next rewrite.
  clock.now->fetch_add(60'001);
  AppendOrDie(*log, Lines("later", 0, 20));
  ASSERT_TRUE(log->DeleteBefore(log->durable_sequence()).ok());
  EXPECT_EQ(log->key_count(), 0u);
  log.reset();
  log = OpenKeyed(dir.Sub("log"), clock, 3'600'000, 256);  // A longer window does not bring them back.
  EXPECT_EQ(log->key_count(), 0u);
}

// Two sends of one batch at once (a client that timed out and resent): one is logged, the other replays it.
TEST(IngestLogKeysTest, ConcurrentSendsOfOneKeyLogTheBatchOnce) {
  TempDir dir;
  FakeClock clock;
  auto log = OpenKeyed(dir.Sub("log"), clock);
  for (int round = 0; round < 20; ++round) {
    const std::string key = "k" + std::to_string(round);
    std::atomic<int> appended{0}, replayed{0};
    std::vector<std::thread> senders;
    for (int t = 0; t < 4; ++t) {
      senders.emplace_back([&] {
        Result<KeyedAppend> r = AppendKeyed(*log, Lines(key, 0, 50), key);
        if (r.ok() && r->outcome == KeyedAppend::Outcome::kAppended) ++appended;
        if (r.ok() && r->outcome == KeyedAppend::Outcome::kReplayed) ++replayed;
      });
    }
    for (std::thread& t : senders) t.join();
    EXPECT_EQ(appended.load(), 1);
    EXPECT_EQ(replayed.load(), 3);
  }
  EXPECT_EQ(log->durable_sequence(), 20u * 50u);
}

}  // namespace
}  // namespace freshet

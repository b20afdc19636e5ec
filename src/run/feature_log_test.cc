#include "run/feature_log.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <future>
#include <thread>
#include <vector>

#include "engine/test_specs.h"
#include "offline/delta_log.h"

namespace freshet {
namespace {

// A spec with one count feature and a fresh folder for its tables (removed again by the destructor).
struct LogTable {
  explicit LogTable(const std::string& name)
      : dir(std::filesystem::temp_directory_path() / (name + "_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(dir);
    spec = test_specs::BaseSpec();
    test_specs::AddFeature(spec, "n", AggKind::kCount, "", WindowSpec{});
  }
  ~LogTable() { std::filesystem::remove_all(dir); }
  OfflinePaths paths() const { return OfflinePathsFor(spec, dir.string()); }

  const std::filesystem::path dir;
  Spec spec;
};

// One answer to log: feature 0 of entity "u1" reads 3.
struct OneAnswer {
  OneAnswer() {
    FeatureLookup lookup;
    lookup.known = true;
    lookup.values = {Value::Int(3)};
    lookups[0] = lookup;
  }
  const int features[1] = {0};
  const std::string_view entities[1] = {"u1"};
  FeatureLookup lookups[1];
};

// The writer runs in the idle scheduling class. On a machine with no idle CPU it must still commit (it is
// raised to a normal thread once starved past two commit intervals), and Stop must not wait for idle CPU.
TEST(FeatureLogWriterTest, CommitsAndStopsWhileEveryCoreIsBusy) {
  LogTable table("freshet_feature_log");
  MetricsRegistry metrics;
  auto writer = FeatureLogWriter::Start(table.spec, table.paths(), metrics, /*commit_interval_ms=*/100);
  ASSERT_TRUE(writer.ok()) << writer.status().message();

  // Busy threads at normal priority on every core (and one more), for as long as the test runs.
  std::atomic<bool> done{false};
  std::vector<std::thread> burners;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned k = 0; k <= cores; ++k) {
    burners.emplace_back([&done] {
      volatile uint64_t spin = 0;
      while (!done.load(std::memory_order_relaxed)) spin = spin + 1;
    });
  }

  const OneAnswer answer;
  Counter& committed = metrics.GetCounter("freshet_feature_log_committed_total", "");
  uint64_t logged = 0;
  // A backlog whose writing takes the writer tens of milliseconds of CPU: in the idle class, with every
  // core busy, it gets well under 1% of a core, so writing it there would take many seconds.
  auto log_burst = [&] {
    for (int k = 0; k < 50000; ++k, ++logged) {
      (*writer)->Log("r", 1000, answer.features, answer.entities, answer.lookups);
    }
  };
  log_burst();
  // Answers keep coming, as they do on a busy server: one of them finds the writer starved and raises it.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (committed.value() < 50000 && std::chrono::steady_clock::now() < deadline) {
    (*writer)->Log("r", 1000, answer.features, answer.entities, answer.lookups);
    ++logged;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_GE(committed.value(), 50000u) << "the backlog was not committed within 10 s while every core was busy";

  log_burst();
  const auto stop_start = std::chrono::steady_clock::now();
  EXPECT_TRUE((*writer)->Stop().ok());
  EXPECT_LT(std::chrono::steady_clock::now() - stop_start, std::chrono::seconds(8))
      << "Stop waited for idle CPU to write the backlog";
  done.store(true);
  for (std::thread& t : burners) t.join();
  EXPECT_EQ(committed.value(), logged);  // Stop wrote and committed everything queued.
}

// Log never waits for the writer. The writer runs in the idle scheduling class; on a busy machine a lock it
// held when preempted kept serving threads waiting until there was idle CPU (the lookups' p99 read hundreds of
// milliseconds with the feature log on). Here the writer is held in the middle of recycling written answers.
TEST(FeatureLogWriterTest, LogNeverWaitsForAPausedWriter) {
  LogTable table("freshet_feature_log_paused");
  MetricsRegistry metrics;
  auto writer = FeatureLogWriter::Start(table.spec, table.paths(), metrics, /*commit_interval_ms=*/100);
  ASSERT_TRUE(writer.ok()) << writer.status().message();
  std::promise<void> entered;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> recycled{0};
  (*writer)->SetRecycleHookForTest([&] {
    // Hold the writer once half of the first round's answers are back on the free list, so that Log both
    // reuses recycled answers and allocates new ones meanwhile.
    if (recycled.fetch_add(1) == 2500) {
      entered.set_value();
      released.wait();
    }
  });

  const OneAnswer answer;
  for (int k = 0; k < 5000; ++k) (*writer)->Log("r", 1000, answer.features, answer.entities, answer.lookups);
  ASSERT_EQ(entered.get_future().wait_for(std::chrono::seconds(20)), std::future_status::ready)
      << "the writer did not take the answers within 20 s";

  auto logging = std::async(std::launch::async, [&] {
    for (int k = 0; k < 20000; ++k) (*writer)->Log("r", 1000, answer.features, answer.entities, answer.lookups);
  });
  const std::future_status logged = logging.wait_for(std::chrono::seconds(20));
  release.set_value();
  logging.wait();
  EXPECT_EQ(logged, std::future_status::ready) << "Log waited for the writer held in the middle of its work";

  EXPECT_TRUE((*writer)->Stop().ok());
  Counter& committed = metrics.GetCounter("freshet_feature_log_committed_total", "");
  Counter& shed = metrics.GetCounter("freshet_feature_log_shed_total", "");
  EXPECT_EQ(committed.value() + shed.value(), 25000u);  // Every answer written or counted as shed.
}

// Rows wait in memory for the next commit; with a long commit interval they must still stay within
// feature_log.max_buffered_bytes: beyond it the writer commits early, and every answer reaches the table.
TEST(FeatureLogWriterTest, BufferedRowsStayWithinTheByteBudget) {
  LogTable table("freshet_feature_log_budget");
  constexpr int64_t kBudget = 64 << 10;
  table.spec.feature_log.max_buffered_bytes = kBudget;
  MetricsRegistry metrics;
  const OfflinePaths paths = table.paths();
  auto writer = FeatureLogWriter::Start(table.spec, paths, metrics, /*commit_interval_ms=*/3'600'000);
  ASSERT_TRUE(writer.ok()) << writer.status().message();

  const OneAnswer answer;
  Counter& committed = metrics.GetCounter("freshet_feature_log_committed_total", "");
  Gauge& buffered = metrics.GetGauge("freshet_feature_log_buffered_bytes", "");
  // About 60 bytes a row: 20,000 answers are some 1.2 MB, many times the budget.
  constexpr uint64_t kAnswers = 20000;
  double most_buffered = 0;
  for (uint64_t k = 0; k < kAnswers; ++k) {
    const std::string entity = "user-" + std::to_string(k);
    const std::string_view entities[] = {entity};
    (*writer)->Log("request-" + std::to_string(k), 1000, answer.features, entities, answer.lookups);
    if (k % 500 == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // Lets the (idle-class) writer keep up.
      most_buffered = std::max(most_buffered, buffered.value());
    }
  }
  // Well before the hour is up, all but the last budget's worth are committed.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (committed.value() + 2000 < kAnswers && std::chrono::steady_clock::now() < deadline) {
    most_buffered = std::max(most_buffered, buffered.value());
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GE(committed.value() + 2000, kAnswers) << "rows waited in memory for the hourly commit";
  // A writer starved of CPU (it runs in the idle class) may have taken every answer in one round, between two
  // samples; the last rows then wait for the hourly commit, and the gauge reports them once they are written.
  while (buffered.value() == 0 && committed.value() < kAnswers && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  most_buffered = std::max(most_buffered, buffered.value());
  EXPECT_LE(most_buffered, static_cast<double>(kBudget));
  EXPECT_GT(most_buffered, 0.0);  // The gauge does report the rows waiting.

  EXPECT_TRUE((*writer)->Stop().ok());
  EXPECT_EQ(committed.value(), kAnswers);
  // Every answer is in the table, once: the commits' files hold kAnswers rows between them.
  Result<std::vector<DeltaFile>> files = DeltaLog::ReadActiveFiles(paths.feature_log);
  ASSERT_TRUE(files.ok()) << files.status().message();
  uint64_t rows = 0;
  for (const DeltaFile& f : *files) rows += f.num_records;
  EXPECT_EQ(rows, kAnswers);
  EXPECT_GT(files->size(), 2u);
}

}  // namespace
}  // namespace freshet

#include "run/feature_log.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <thread>
#include <vector>

#include "engine/test_specs.h"

namespace freshet {
namespace {

// The writer runs in the idle scheduling class. On a machine with no idle CPU it must still commit (it is
// raised to a normal thread once starved past two commit intervals), and Stop must not wait for idle CPU.
TEST(FeatureLogWriterTest, CommitsAndStopsWhileEveryCoreIsBusy) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("freshet_feature_log_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  Spec spec = test_specs::BaseSpec();
  test_specs::AddFeature(spec, "n", AggKind::kCount, "", WindowSpec{});
  MetricsRegistry metrics;
  auto writer = FeatureLogWriter::Start(spec, OfflinePathsFor(spec, dir.string()), metrics, /*commit_interval_ms=*/100);
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

  const int features[] = {0};
  const std::string_view entities[] = {"u1"};
  FeatureLookup lookup;
  lookup.known = true;
  lookup.values = {Value::Int(3)};
  const FeatureLookup lookups[] = {lookup};
  Counter& committed = metrics.GetCounter("freshet_feature_log_committed_total", "");
  uint64_t logged = 0;
  // A backlog whose writing takes the writer tens of milliseconds of CPU: in the idle class, with every
  // core busy, it gets well under 1% of a core, so writing it there would take many seconds.
  auto log_burst = [&] {
    for (int k = 0; k < 50000; ++k, ++logged) (*writer)->Log("r", 1000, features, entities, lookups);
  };
  log_burst();
  // Answers keep coming, as they do on a busy server: one of them finds the writer starved and raises it.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (committed.value() < 50000 && std::chrono::steady_clock::now() < deadline) {
    (*writer)->Log("r", 1000, features, entities, lookups);
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
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace freshet

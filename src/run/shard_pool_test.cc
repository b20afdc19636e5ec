// ShardPool: every shard's work runs once per Run, each shard always on the same thread, and Run returns only once
// all of it is done; through the spinning hand-off, the sleeping one (no spin, or a pause longer than the spin
// between runs) and with more shards than cores.
#include "run/shard_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace freshet {
namespace {

// Runs the pool `runs` times; each run every shard adds to its own counter (unsynchronized: the fork-join must
// order them) after a little work, and the caller checks all counters right after Run returns.
void ExpectForkJoin(size_t shards, int64_t spin_ns, int runs, std::chrono::microseconds pause) {
  ShardPool pool(shards, spin_ns);
  std::vector<uint64_t> counts(shards, 0);
  std::vector<std::thread::id> thread_of(shards);
  std::atomic<int> wrong_thread{0};
  for (int r = 0; r < runs; ++r) {
    pool.Run([&](size_t shard) {
      volatile uint64_t sink = 0;
      for (size_t k = 0; k < 200 * (shard + 1); ++k) sink = sink + k;  // Uneven work: shard 0 finishes first.
      if (r == 0) thread_of[shard] = std::this_thread::get_id();
      if (thread_of[shard] != std::this_thread::get_id()) wrong_thread.fetch_add(1);
      ++counts[shard];
    });
    for (size_t s = 0; s < shards; ++s) {
      ASSERT_EQ(counts[s], static_cast<uint64_t>(r + 1)) << "shard " << s << " run " << r << " spin " << spin_ns;
    }
    if (pause.count() > 0) std::this_thread::sleep_for(pause);
  }
  EXPECT_EQ(wrong_thread.load(), 0);
  EXPECT_EQ(thread_of[0], std::this_thread::get_id());  // Shard 0 on the caller's thread.
}

TEST(ShardPoolTest, SpinningHandOff) { ExpectForkJoin(2, ShardPool::kSpinNs, 10000, {}); }

TEST(ShardPoolTest, SleepingHandOff) { ExpectForkJoin(2, 0, 5000, {}); }

TEST(ShardPoolTest, WakesThreadsThatStoppedSpinning) {
  ExpectForkJoin(2, 20'000, 50, std::chrono::microseconds(2000));  // Each pause outlasts the spin.
}

TEST(ShardPoolTest, MoreShardsThanCores) {
  const size_t shards = 2 * std::max(1u, std::thread::hardware_concurrency()) + 1;
  ExpectForkJoin(shards, -1, 2000, {});
}

TEST(ShardPoolTest, OneShardRunsOnTheCaller) { ExpectForkJoin(1, -1, 10, {}); }

}  // namespace
}  // namespace freshet

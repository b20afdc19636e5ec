// ShardPool: fork-join over the processing threads of `freshet run` (the shards of a file or HTTP source, the
// lanes of Kafka partitions).
//
// Run(work) calls work(0) on the calling thread and work(1..n-1) on the pool's threads, and returns once all are
// done. Each shard's thread is the same from call to call (a shard's state stays in its core's cache).
//
// A thread that waits (a pool thread for the next work, the caller for the others to finish) first spins for a
// while, then sleeps on a condition variable. The file source hands work over a few times per batch of records,
// and a sleep and wake-up (a futex each way, and the wake-up latency of an idle core) cost about as much as the
// serial work in between (the judge, reading the next batch): spinning keeps the other core's thread awake
// through it. The spin is bounded (an idle pipeline sleeps) and off when there are more threads than cores the
// process may use (a spinning thread would take the core of the thread it waits for).
//
// Run is called from one thread at a time.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace freshet {

class ShardPool {
 public:
  static constexpr int64_t kSpinNs = 200'000;  // How long a waiting thread spins before it sleeps.

  // `spin_ns`: as kSpinNs; the default spins only if `shards` <= the cores the process may use (its affinity).
  explicit ShardPool(size_t shards, int64_t spin_ns = -1);
  ~ShardPool();
  ShardPool(const ShardPool&) = delete;
  ShardPool& operator=(const ShardPool&) = delete;

  void Run(const std::function<void(size_t)>& work);

 private:
  // Spins until ready() or spin_ns_ have passed; returns ready().
  bool SpinUntil(const std::function<bool()>& ready) const;
  void Loop(size_t shard);

  int64_t spin_ns_;
  std::mutex mutex_;
  std::condition_variable start_, done_;
  const std::function<void(size_t)>* work_ = nullptr;  // Published by the release of generation_.
  std::atomic<uint64_t> generation_{0};
  std::atomic<size_t> remaining_{0};
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

}  // namespace freshet

#include "run/shard_pool.h"

#include <sched.h>

#include <algorithm>
#include <chrono>

namespace freshet {
namespace {

// The cores this process may run on (taskset, a cpuset), which may be fewer than the machine's.
size_t UsableCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace

ShardPool::ShardPool(size_t shards, int64_t spin_ns) {
  spin_ns_ = spin_ns >= 0 ? spin_ns : shards <= UsableCores() ? kSpinNs : 0;
  for (size_t s = 1; s < shards; ++s) threads_.emplace_back([this, s] { Loop(s); });
}

ShardPool::~ShardPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true, std::memory_order_release);
  }
  start_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void ShardPool::Run(const std::function<void(size_t)>& work) {
  if (threads_.empty()) return work(0);
  work_ = &work;
  remaining_.store(threads_.size(), std::memory_order_relaxed);
  {
    // Under the lock, so that a thread about to sleep sees the new generation or gets the notification.
    std::lock_guard<std::mutex> lock(mutex_);
    generation_.fetch_add(1, std::memory_order_release);
  }
  start_.notify_all();
  work(0);
  const auto all_done = [&] { return remaining_.load(std::memory_order_acquire) == 0; };
  if (!SpinUntil(all_done)) {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, all_done);
  }
  work_ = nullptr;
}

bool ShardPool::SpinUntil(const std::function<bool()>& ready) const {
  if (spin_ns_ == 0) return ready();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::nanoseconds(spin_ns_);
  for (;;) {
    // The clock is read every 64 pauses (a few microseconds), not on every try.
    for (int k = 0; k < 64; ++k) {
      if (ready()) return true;
      __builtin_ia32_pause();
    }
    if (std::chrono::steady_clock::now() >= deadline) return ready();
  }
}

void ShardPool::Loop(size_t shard) {
  uint64_t seen = 0;
  const std::function<bool()> started = [&] {
    return stop_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen;
  };
  while (true) {
    if (!SpinUntil(started)) {
      std::unique_lock<std::mutex> lock(mutex_);
      start_.wait(lock, started);
    }
    if (stop_.load(std::memory_order_acquire)) return;
    seen = generation_.load(std::memory_order_acquire);
    (*work_)(shard);
    if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mutex_);  // The caller either sees 0 or is waiting: no lost wake-up.
      done_.notify_one();
    }
  }
}

}  // namespace freshet

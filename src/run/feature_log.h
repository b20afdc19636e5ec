// FeatureLogWriter: logs what the serving API answered into the offline feature_log table, so that
// `freshet skew` can recompute every answer through the offline path and compare.
//
// Logging never slows serving noticeably: Log copies the answer into one compact record in a bounded queue
// and returns; a background thread, in the idle scheduling class (only CPU time nobody else wants), writes
// queued answers to the table and commits them every `commit_interval_ms` (and at Stop). When the queue is full the answer is shed and counted in freshet_feature_log_shed_total,
// never dropped silently. Written rows wait in memory for their commit only up to feature_log.max_buffered_bytes
// (freshet_feature_log_buffered_bytes); beyond it they are committed at once, so memory stays bounded whatever
// the interval. Sampling is by a hash of the entity key, so an entity is logged always or never.
//
// Logged answers are not events: a crash loses what was queued and not yet committed (at most one commit
// interval), which freshet_feature_log_committed_total lets you see; events themselves are never lost.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "common/status.h"
#include "offline/offline_table.h"
#include "offline/tables.h"
#include "serve/feature_service.h"
#include "serve/metrics.h"
#include "spec/spec.h"

namespace freshet {

class FeatureLogWriter {
 public:
  static Result<std::unique_ptr<FeatureLogWriter>> Start(const Spec& spec, const OfflinePaths& paths,
                                                         MetricsRegistry& metrics, int64_t commit_interval_ms);
  ~FeatureLogWriter();

  // Queues the answer (its sampled entities); never blocks on I/O.
  void Log(std::string_view request_id, int64_t as_of_ms, std::span<const int> features,
           std::span<const std::string_view> entities, std::span<const FeatureLookup> lookups);
  // Writes and commits everything queued, then stops the thread.
  Status Stop();

  // True when `entity` is in the sample (sample_rate of the spec).
  bool Sampled(std::string_view entity) const;

  // For tests: called on the writer thread before it recycles each written answer. Set before the first Log.
  void SetRecycleHookForTest(std::function<void()> hook) { recycle_hook_ = std::move(hook); }

 private:
  // One answer, compact: a handful of buffers however many entities it holds, reused from answer to
  // answer (the serving thread pays for this copy, so it must stay cheap).
  struct Answer {
    std::string request_id;
    int64_t as_of_ms = 0;
    int64_t served_ms = 0;
    std::vector<int> features;         // Spec indices, in the order served.
    std::string text;                  // Entity names and string values, back to back.
    std::vector<std::pair<uint32_t, uint32_t>> entity_spans;  // Per logged entity: its name in `text`.
    std::vector<uint8_t> exact;        // Per logged entity: the lookup's `exact`.
    struct Cell {
      ValueType type = ValueType::kNull;
      int64_t i = 0;
      double d = 0;
      uint32_t begin = 0, end = 0;  // kString: the value is text[begin, end).
    };
    std::vector<Cell> cells;  // Per logged entity, one per served feature.
    size_t entities() const { return entity_spans.size(); }
  };
  // Serving threads and the writer share no lock: the writer runs in the idle class, and a lock it held
  // when preempted would keep serving threads waiting until the machine had idle CPU (on a busy machine, the
  // lookups' p99 read hundreds of milliseconds with the log on). Answers travel in nodes on lock-free stacks.
  struct Node {
    Answer answer;
    Node* next = nullptr;
  };
  // Any thread pushes; a consumer takes the whole stack at once (so there is no ABA problem), except the free
  // list, which serving threads pop one node at a time under free_pop_mutex_ (a lock among them only).
  class NodeStack {
   public:
    ~NodeStack() { Delete(TakeAll()); }
    void Push(Node* node) {
      node->next = head_.load(std::memory_order_relaxed);
      while (!head_.compare_exchange_weak(node->next, node, std::memory_order_release, std::memory_order_relaxed)) {
      }
    }
    Node* TakeAll() { return head_.exchange(nullptr, std::memory_order_acquire); }
    bool empty() const { return head_.load(std::memory_order_relaxed) == nullptr; }
    // Pops one node; the caller must exclude other poppers (pushes may go on meanwhile).
    Node* PopExclusive() {
      Node* head = head_.load(std::memory_order_acquire);
      while (head != nullptr &&
             !head_.compare_exchange_weak(head, head->next, std::memory_order_acquire, std::memory_order_acquire)) {
      }
      return head;
    }
    static void Delete(Node* node) {
      while (node != nullptr) delete std::exchange(node, node->next);
    }

   private:
    std::atomic<Node*> head_{nullptr};
  };

  FeatureLogWriter(const Spec& spec, MetricsRegistry& metrics, int64_t commit_interval_ms);
  void Loop();
  // Returns a written (or shed) answer's node to the free list, or frees it: at once on a serving thread,
  // through garbage_ on the writer.
  void Recycle(Node* node, bool serving);
  // Writes the answers of `nodes` (oldest first) to the table, commits when `commit`, and recycles the nodes.
  Status WriteAndCommit(std::vector<Node*>& nodes, bool commit);
  // Stages and publishes the buffered rows as one commit.
  Status Commit();

  const Spec& spec_;
  const int64_t commit_interval_ms_;
  std::unique_ptr<OfflineTable> table_;
  uint64_t sample_threshold_ = 0;  // Hash below: sampled.
  bool sample_all_ = true;

  NodeStack queue_;                          // Answers to write, newest on top.
  std::atomic<size_t> queued_entities_{0};   // Entities in queue_: what feature_log.queue bounds.
  // Written answers, cleared but with their buffers, for Log to fill again: in steady state logging allocates
  // nothing, and the writer frees nothing a serving thread allocated (a free into another thread's malloc
  // arena takes that arena's lock, which a preempted idle-class writer could hold against serving). Large
  // answers (batches) go to garbage_ instead, which Log frees on a serving thread.
  NodeStack free_;
  std::mutex free_pop_mutex_;
  std::atomic<size_t> free_count_{0};
  NodeStack garbage_;
  // Log calls under way: Stop's last write waits for them, so that no answer is queued after it.
  std::atomic<int> active_logs_{0};
  std::atomic<bool> stopping_{false};
  std::function<void()> recycle_hook_;

  std::mutex mutex_;  // For wake_ and status_; never taken by Log.
  std::condition_variable wake_;
  std::thread thread_;
  Status status_;

  // The writer runs in the idle scheduling class (see Loop). A writer starved past two commit intervals, or
  // one that Stop waits for, is raised to a normal thread until its next commit.
  void RaiseWriter();
  std::atomic<int> writer_tid_{0};
  std::atomic<int64_t> last_commit_ms_{0};
  std::atomic<bool> writer_raised_{false};

  Counter* logged_ = nullptr;
  Counter* shed_ = nullptr;
  Counter* committed_ = nullptr;
  Counter* errors_ = nullptr;
  Gauge* queued_ = nullptr;
  Gauge* buffered_ = nullptr;
};

}  // namespace freshet

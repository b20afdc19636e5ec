#include "run/feature_log.h"

#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "common/time.h"

namespace freshet {
namespace {

// The writer wakes when this many entities are queued, or every 200 ms.
constexpr size_t kWakeEntities = 4096;
// Written answers kept for reuse: enough for the answers between two wakes of the writer at 20,000 lookups/s;
// only small ones (single lookups), so that the pool stays under about 8 MB. A batch's answer costs little per
// entity however it is allocated.
constexpr size_t kRecycledAnswers = 8192;
constexpr size_t kRecycledAnswerBytes = 1024;

// Moves the calling thread to the idle scheduling class; where that is refused, to the lowest priority.
void EnterIdleClass() {
  sched_param idle{};
  if (::sched_setscheduler(0, SCHED_IDLE, &idle) != 0) {
    (void)::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), 19);
  }
}

// FNV-1a 64 then a final mix: stable across runs and machines, so a sample is reproducible.
uint64_t EntityHash(std::string_view entity) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : entity) h = (h ^ c) * 1099511628211ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

}  // namespace

FeatureLogWriter::FeatureLogWriter(const Spec& spec, MetricsRegistry& metrics, int64_t commit_interval_ms)
    : spec_(spec), commit_interval_ms_(commit_interval_ms) {
  logged_ = &metrics.GetCounter("freshet_feature_log_answers_total", "Answers (per entity) queued for the feature log.");
  shed_ = &metrics.GetCounter("freshet_feature_log_shed_total",
                              "Answers (per entity) not logged because the feature-log queue was full.");
  committed_ = &metrics.GetCounter("freshet_feature_log_committed_total",
                                   "Answers (per entity) committed to the feature_log table.");
  errors_ = &metrics.GetCounter("freshet_feature_log_errors_total", "Failed feature-log writes or commits.");
  queued_ = &metrics.GetGauge("freshet_feature_log_queued", "Answers waiting to be written to the feature log.");
  buffered_ = &metrics.GetGauge("freshet_feature_log_buffered_bytes",
                                "Bytes of feature-log rows written and waiting in memory for their commit (at most "
                                "feature_log.max_buffered_mb).");
}

Result<std::unique_ptr<FeatureLogWriter>> FeatureLogWriter::Start(const Spec& spec, const OfflinePaths& paths,
                                                                 MetricsRegistry& metrics, int64_t commit_interval_ms) {
  std::unique_ptr<FeatureLogWriter> w(new FeatureLogWriter(spec, metrics, commit_interval_ms));
  FRESHET_ASSIGN_OR_RETURN(w->table_, OfflineTable::Open(TableOptions(paths, "feature_log", FeatureLogColumns(spec))));
  FRESHET_RETURN_IF_ERROR(w->table_->DropStaging());
  w->sample_all_ = spec.feature_log.sample_rate >= 1.0;
  if (!w->sample_all_) w->sample_threshold_ = static_cast<uint64_t>(std::ldexp(spec.feature_log.sample_rate, 64));
  w->thread_ = std::thread([raw = w.get()] { raw->Loop(); });
  return w;
}

FeatureLogWriter::~FeatureLogWriter() { (void)Stop(); }

bool FeatureLogWriter::Sampled(std::string_view entity) const {
  return sample_all_ || EntityHash(entity) < sample_threshold_;
}

void FeatureLogWriter::Log(std::string_view request_id, int64_t as_of_ms, std::span<const int> features,
                           std::span<const std::string_view> entities, std::span<const FeatureLookup> lookups) {
  // Large answers the writer is done with are freed here, on a serving thread (see garbage_).
  if (!garbage_.empty()) NodeStack::Delete(garbage_.TakeAll());
  Node* node = nullptr;
  if (!free_.empty()) {
    std::lock_guard<std::mutex> lock(free_pop_mutex_);
    node = free_.PopExclusive();
  }
  if (node != nullptr) free_count_.fetch_sub(1, std::memory_order_relaxed);
  else node = new Node;
  Answer& answer = node->answer;
  answer.request_id.assign(request_id);
  answer.as_of_ms = as_of_ms;
  answer.served_ms = WallClockMs();
  answer.features.assign(features.begin(), features.end());
  answer.text.clear();
  answer.entity_spans.clear();
  answer.exact.clear();
  answer.cells.clear();
  answer.cells.reserve(entities.size() * features.size());
  for (size_t e = 0; e < entities.size() && e < lookups.size(); ++e) {
    if (!Sampled(entities[e])) continue;
    const uint32_t name_begin = static_cast<uint32_t>(answer.text.size());
    answer.text.append(entities[e]);
    answer.entity_spans.emplace_back(name_begin, static_cast<uint32_t>(answer.text.size()));
    answer.exact.push_back(lookups[e].exact ? 1 : 0);
    for (size_t k = 0; k < features.size(); ++k) {
      Answer::Cell cell;
      const Value v = k < lookups[e].values.size() ? lookups[e].values[k] : Value::Null();
      cell.type = v.type;
      if (v.type == ValueType::kInt) cell.i = v.i;
      if (v.type == ValueType::kDouble) cell.d = v.d;
      if (v.type == ValueType::kBool) cell.i = v.b ? 1 : 0;
      if (v.type == ValueType::kString) {
        cell.begin = static_cast<uint32_t>(answer.text.size());
        answer.text.append(v.s);
        cell.end = static_cast<uint32_t>(answer.text.size());
      }
      answer.cells.push_back(cell);
    }
  }
  const size_t n = answer.entities();
  const int64_t answer_served_ms = answer.served_ms;
  // Stop's last write waits for the calls under way, and a call that starts after Stop sees stopping_
  // (both sequentially consistent): an answer is either written or shed, never left in the queue.
  active_logs_.fetch_add(1);
  const size_t bound = static_cast<size_t>(spec_.feature_log.queue);
  const bool refused = n == 0 || stopping_.load();
  const size_t before = refused ? 0 : queued_entities_.fetch_add(n);
  if (refused || before + n > bound) {
    if (!refused) queued_entities_.fetch_sub(n);
    if (n > 0) shed_->Increment(n);
    Recycle(node, /*serving=*/true);
    active_logs_.fetch_sub(1);
    return;
  }
  queue_.Push(node);
  active_logs_.fetch_sub(1);
  queued_->Set(static_cast<double>(before + n));
  const bool wake = before < kWakeEntities && before + n >= kWakeEntities;
  logged_->Increment(n);
  if (!writer_raised_.load(std::memory_order_relaxed) &&
      answer_served_ms - last_commit_ms_.load(std::memory_order_relaxed) > 2 * commit_interval_ms_ + 1000) {
    RaiseWriter();  // Starved by a machine with no idle CPU: commits must still happen.
  }
  // Only when the batch fills: waking the writer for every answer cost a context switch per lookup. Without
  // the mutex, a writer about to wait may miss this; it then wakes at its 200 ms tick.
  if (wake) wake_.notify_one();
}

Status FeatureLogWriter::Commit() {
  const uint64_t rows = table_->buffered_rows();
  if (rows == 0) return Status::Ok();
  FRESHET_ASSIGN_OR_RETURN(std::optional<StagedCommit> staged, table_->Stage(std::nullopt));
  if (staged) FRESHET_RETURN_IF_ERROR(table_->Publish(*staged));
  committed_->Increment(rows);
  buffered_->Set(0);
  return Status::Ok();
}

void FeatureLogWriter::Recycle(Node* node, bool serving) {
  const Answer& a = node->answer;
  const bool small = a.cells.capacity() * sizeof(Answer::Cell) + a.text.capacity() <= kRecycledAnswerBytes;
  if (small) {
    if (free_count_.fetch_add(1, std::memory_order_relaxed) < kRecycledAnswers) {
      free_.Push(node);
      return;
    }
    free_count_.fetch_sub(1, std::memory_order_relaxed);
  }
  if (serving) delete node;
  else garbage_.Push(node);
}

Status FeatureLogWriter::WriteAndCommit(std::vector<Node*>& nodes, bool commit) {
  std::vector<int> position(spec_.features.size());  // Spec feature -> its place among the served ones, or -1.
  std::string served;
  const uint64_t budget = static_cast<uint64_t>(spec_.feature_log.max_buffered_bytes);
  Status early;  // A failed early commit: the rows stay buffered, and the error is reported once, below.
  for (const Node* node : nodes) {
    const Answer& a = node->answer;
    std::fill(position.begin(), position.end(), -1);
    served.clear();
    for (size_t k = 0; k < a.features.size(); ++k) {
      position[static_cast<size_t>(a.features[k])] = static_cast<int>(k);
      served += (k == 0 ? "" : ",") + spec_.features[static_cast<size_t>(a.features[k])].name;
    }
    for (size_t e = 0; e < a.entities(); ++e) {
      const auto [begin, end] = a.entity_spans[e];
      table_->BeginRow(a.served_ms);
      table_->PutString(a.request_id);
      table_->PutString(std::string_view(a.text).substr(begin, end - begin));
      table_->PutTimestampMs(a.as_of_ms);
      table_->PutTimestampMs(a.served_ms);
      table_->PutString(served);
      table_->PutBool(a.exact[e] != 0);
      for (size_t f = 0; f < spec_.features.size(); ++f) {
        Value v = Value::Null();
        if (position[f] >= 0) {
          const Answer::Cell& cell = a.cells[e * a.features.size() + static_cast<size_t>(position[f])];
          switch (cell.type) {
            case ValueType::kInt: v = Value::Int(cell.i); break;
            case ValueType::kDouble: v = Value::Double(cell.d); break;
            case ValueType::kBool: v = Value::Bool(cell.i != 0); break;
            case ValueType::kString: v = Value::String(std::string_view(a.text).substr(cell.begin, cell.end - cell.begin)); break;
            default: break;
          }
        }
        PutFeatureValue(*table_, spec_.features[f], v);
      }
    }
    // Rows wait for the commit interval only within the budget: a long interval under heavy serving would
    // otherwise hold every answer of the interval in memory (gigabytes in an hour at 20,000 lookups/s).
    if (early.ok() && table_->buffered_bytes() >= budget) early = Commit();
  }
  buffered_->Set(static_cast<double>(table_->buffered_bytes()));
  for (Node* node : nodes) {
    if (recycle_hook_) recycle_hook_();
    Recycle(node, /*serving=*/false);
  }
  nodes.clear();
  FRESHET_RETURN_IF_ERROR(early);
  return commit ? Commit() : Status::Ok();
}

void FeatureLogWriter::Loop() {
  // Only CPU time nobody else wants (SCHED_IDLE): on a busy machine answers come first and logging sheds
  // (counted). At nice 10 the writer's bursts still took slices from the serving threads: the single-lookup
  // p99.9 at 20,000 requests/s read about 20 ms, against 3 to 6 ms in the idle class. See RaiseWriter for
  // how a starved writer still commits.
  writer_tid_.store(static_cast<int>(::syscall(SYS_gettid)));
  last_commit_ms_.store(WallClockMs());
  if (!writer_raised_.load()) EnterIdleClass();
  auto last_commit = std::chrono::steady_clock::now();
  std::vector<Node*> taken;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait_for(lock, std::chrono::milliseconds(200),
                     [&] { return stopping_.load() || queued_entities_.load() >= kWakeEntities; });
    }
    const bool stopping = stopping_.load();
    if (stopping) {
      // Log calls that saw stopping_ false finish queueing first (a few instructions each).
      while (active_logs_.load() != 0) std::this_thread::yield();
    }
    // Oldest first: the stack holds the newest on top.
    size_t entities = 0;
    for (Node* node = queue_.TakeAll(); node != nullptr; node = node->next) {
      taken.push_back(node);
      entities += node->answer.entities();
    }
    std::reverse(taken.begin(), taken.end());
    queued_->Set(static_cast<double>(queued_entities_.fetch_sub(entities) - entities));
    const bool due = std::chrono::steady_clock::now() - last_commit >= std::chrono::milliseconds(commit_interval_ms_);
    Status written = WriteAndCommit(taken, due || stopping);
    if (due || stopping) {
      last_commit = std::chrono::steady_clock::now();
      last_commit_ms_.store(WallClockMs());
      if (!stopping && writer_raised_.exchange(false)) {
        EnterIdleClass();
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_) RaiseWriter();  // Stop came in between: its final commit must not wait for idle CPU.
      }
    }
    if (!written.ok()) {
      errors_->Increment();
      std::fprintf(stderr, "freshet run: warning: feature log: %s\n", written.message().c_str());
      std::lock_guard<std::mutex> lock(mutex_);
      status_ = written;
    }
    if (stopping) return;
  }
}

void FeatureLogWriter::RaiseWriter() {
  if (writer_raised_.exchange(true)) return;
  const int tid = writer_tid_.load();
  if (tid == 0) return;  // Not started yet: Loop sees writer_raised_ and stays a normal thread.
  sched_param normal{};
  (void)::sched_setscheduler(tid, SCHED_OTHER, &normal);
  (void)::setpriority(PRIO_PROCESS, static_cast<id_t>(tid), 0);
}

Status FeatureLogWriter::Stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);  // So that the writer cannot miss the wake-up below.
    if (stopping_.load() && !thread_.joinable()) return status_;
    stopping_.store(true);
  }
  RaiseWriter();  // A graceful shutdown must not wait for idle CPU.
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mutex_);
  return status_;
}

}  // namespace freshet

#include "run/runtime.h"

#include <simdjson.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <numeric>
#include <shared_mutex>
#include <condition_variable>
#include <functional>
#include <span>
#include <thread>

#include "common/bytes.h"
#include "common/time.h"
#include "engine/dedup.h"
#include "engine/feature_engine.h"
#include "event/dead_letters.h"
#include "run/feature_log.h"
#include "run/feature_sets.h"
#include "run/lanes.h"
#include "offline/tables.h"
#include "run/table_feed.h"
#include "run/event_path.h"
#include "run/offline_sink.h"
#include "run/skew_monitor.h"
#include "event/event_parser.h"
#include "serve/http_server.h"
#include "source/file_source.h"
#include "source/kafka_source.h"
#include "source/ingest_log.h"
#include "state/checkpoint.h"
#include "state/forked_snapshot.h"
#include "state/group_checkpoints.h"
#include "store/redis_store.h"
#include "run/redis_serving.h"
#include "run/shard_pool.h"
#include "run/sharded_input.h"
#include "lookup/lookup_stage.h"
#include "historical/explain.h"
#include "serve/json.h"

namespace freshet {
namespace {

constexpr size_t kPollRecords = 4096;
constexpr uint64_t kOfflineBufferBytes = 256ull << 20;  // Checkpoint early beyond this many buffered offline bytes.
constexpr int64_t kCheckpointRetryMs = 1000;             // After a failed checkpoint, the next try waits this long.
// Records processed per shard per exclusive lock: bounds a lookup's wait. A file or HTTP source on several shards
// takes more per lock: each chunk costs a fork-join of the shard threads (run/sharded_input.h), whose hand-off
// outweighed the work of 256 records (bench/README.md, "The file source on two threads").
constexpr size_t kRecordsPerLock = 256;
constexpr size_t kShardedRecordsPerLock = 1024;
constexpr int64_t kTablePollMs = 200;  // How often `freshet run` looks for rows appended to table files.

// Freshness buckets, in seconds: fine below a second, where the targets are.
constexpr double kFreshnessBuckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                        0.5,    1,     2.5,    5,     10,   30,    60,   300};

// The p99 of freshness over a sliding window of wall-clock seconds: one bucket histogram per second.
class SloWindow {
 public:
  explicit SloWindow(int64_t window_ms) : seconds_(std::max<int64_t>(1, window_ms / 1000)) {}

  void Observe(double seconds, int64_t now_s) {
    std::lock_guard<std::mutex> lock(mutex_);
    Slot& slot = SlotFor(now_s);
    size_t b = 0;
    while (b < std::size(kFreshnessBuckets) && seconds > kFreshnessBuckets[b]) ++b;
    ++slot.counts[b];
  }

  // The p99 over the window (the upper bound of the bucket holding it), or nullopt without events.
  std::optional<double> P99(int64_t now_s) const { return Quantile(0.99, now_s); }

  // The q-quantile over the window (0 < q <= 1), as P99.
  std::optional<double> Quantile(double q, int64_t now_s) const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<uint64_t> merged(std::size(kFreshnessBuckets) + 1, 0);
    uint64_t total = 0;
    for (const Slot& slot : slots_) {
      if (slot.second <= now_s - seconds_ || slot.second > now_s) continue;
      for (size_t b = 0; b < merged.size(); ++b) {
        merged[b] += slot.counts[b];
        total += slot.counts[b];
      }
    }
    if (total == 0) return std::nullopt;
    const uint64_t rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(total)));
    uint64_t seen = 0;
    for (size_t b = 0; b < merged.size(); ++b) {
      seen += merged[b];
      if (seen >= rank) return b < std::size(kFreshnessBuckets) ? kFreshnessBuckets[b] : INFINITY;
    }
    return INFINITY;
  }

 private:
  struct Slot {
    int64_t second = -1;
    std::vector<uint64_t> counts = std::vector<uint64_t>(std::size(kFreshnessBuckets) + 1, 0);
  };
  Slot& SlotFor(int64_t now_s) {
    if (slots_.empty()) slots_.resize(static_cast<size_t>(seconds_ + 1));
    Slot& slot = slots_[static_cast<size_t>(now_s % static_cast<int64_t>(slots_.size()))];
    if (slot.second != now_s) {
      slot.second = now_s;
      std::fill(slot.counts.begin(), slot.counts.end(), 0);
    }
    return slot;
  }

  int64_t seconds_;
  mutable std::mutex mutex_;
  std::vector<Slot> slots_;
};

bool IsKafka(const Spec& spec) { return spec.source && spec.source->type == "kafka"; }

// The processing threads: `parallelism`, 0 meaning one per core.
size_t Parallelism(const Spec& spec) {
  const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  return static_cast<size_t>(spec.parallelism > 0 ? spec.parallelism : cores);
}

// Shards of a file or HTTP source: `parallelism`, 0 meaning one per core, except where several threads do not work
// yet: one feature set of several (`in_set`) and async lookups take one thread unless `parallelism` says more (which
// they refuse). A checkpoint written with another count (or by a version before sharding: one) is re-sharded on
// restore (PipelineLanes::Decode).
size_t InputShards(const Spec& spec, bool in_set) {
  if (IsKafka(spec)) return 1;
  if (spec.parallelism == 0 && (in_set || !spec.lookups.empty())) return 1;
  return Parallelism(spec);
}

// The source as the second and later feature sets of a run see it (Runtime::StartSets): the first set's, read
// once. The sets are handed each batch by the run loop, not by Poll, and checkpoint together, so each records the
// same position; the first set seeks the source on restore.
class SharedSourceView final : public Source {
 public:
  explicit SharedSourceView(Source& source) : source_(source) {}
  std::string_view name() const override { return source_.name(); }
  Status Poll(std::vector<SourceRecord>*, size_t, int) override {
    return Status::Internal("a feature set's view of the shared source is handed batches, not polled");
  }
  std::string position() const override { return source_.position(); }
  std::string PositionAfter(std::span<const SourceRecord> batch, size_t count) const override {
    return source_.PositionAfter(batch, count);
  }
  Status Seek(std::string_view) override { return Status::Ok(); }
  bool exhausted() const override { return source_.exhausted(); }

 private:
  Source& source_;
};

// What makes a runtime one feature set of several in one process (Runtime::StartSets).
struct SetMember {
  bool active = false;
  Source* shared_source = nullptr;  // The first set's source; null for the first set itself.
  std::string data_dir;             // The run's (each set's own is a folder in it, FeatureSetDir).
  uint64_t restore_at_most = 0;     // The set's checkpoint sequence in the manifest; 0: start fresh.
};

}  // namespace

struct Runtime::Impl final : public FeatureService, public RebalanceListener {
  Impl(const Spec& spec, RuntimeOptions options, SetMember member = {})
      : spec_(spec),
        options_(std::move(options)),
        member_(std::move(member)),
        lanes_(spec, IsKafka(spec), InputShards(spec, member_.active)) {}
  ~Impl() {
    if (checkpoint_thread_.joinable()) checkpoint_thread_.join();
  }

  // ---- FeatureService ----
  const Spec& spec() const override { return spec_; }

  Status Lookup(std::span<const std::string_view> entities, int64_t as_of_ms, std::span<const int> features,
                const std::function<void(std::span<const FeatureLookup>)>& consume) const override {
    thread_local std::vector<FeatureLookup> lookups;
    thread_local std::vector<Value> values;
    lookups.resize(entities.size());
    std::shared_lock<std::shared_mutex> lock(mutex_);
    for (size_t k = 0; k < entities.size(); ++k) {
      FeatureLookup& out = lookups[k];
      // An entity lives in one lane: its Kafka partition's (the topic is keyed by entity), or the only one.
      std::optional<uint32_t> index;
      const PipelineLanes::Lane* lane = nullptr;
      for (size_t l = 0; l < lanes_.size() && !index; ++l) {
        index = lanes_.at(l).engine.FindEntity(entities[k]);
        if (index) lane = &lanes_.at(l);
      }
      const FeatureEngine& engine = lane != nullptr ? lane->engine : lanes_.blank();
      out.known = index.has_value();
      out.newest_event_ms = std::nullopt;
      if (lane != nullptr && *index < lane->counters.newest_event_ms.size()) {
        out.newest_event_ms = lane->counters.newest_event_ms[*index];
      }
      out.exact = engine.IsExactAsOf(out.newest_event_ms, as_of_ms) && engine.ExpiryExactAsOf(index, as_of_ms);
      engine.QueryIndex(index, as_of_ms, &values);
      out.values.resize(features.size());
      for (size_t f = 0; f < features.size(); ++f) out.values[f] = values[features[f]];
    }
    consume(std::span<const FeatureLookup>(lookups.data(), entities.size()));
    return Status::Ok();
  }

  void LogAnswer(std::string_view request_id, int64_t as_of_ms, std::span<const int> features,
                 std::span<const std::string_view> entities, std::span<const FeatureLookup> lookups) override {
    if (feature_log_ != nullptr) feature_log_->Log(request_id, as_of_ms, features, entities, lookups);
  }

  Result<size_t> PutTableRows(std::string_view table, std::string_view body,
                              std::vector<std::pair<size_t, std::string>>* errors) override {
    if (table_feed_ == nullptr) return FeatureService::PutTableRows(table, body, errors);
    return table_feed_->Put(table, body, errors);
  }

  Result<IngestAck> Ingest(std::string_view body, IngestFormat format) override {
    return IngestWithKey(body, format, std::string_view());
  }

  Result<IngestAck> IngestWithKey(std::string_view body, IngestFormat format, std::string_view key) override {
    if (ingest_log_ == nullptr) {
      return Status::Invalid("this pipeline reads events from '" + std::string(spec_.source->path) +
                             "'; POST /v1/ingest needs `source: {type: http}` in the spec");
    }
    const int64_t arrival_ns = SteadyClockNs();
    std::vector<std::string_view> lines;
    std::vector<std::string> owned;
    if (format == IngestFormat::kJsonLines) {
      // Lines as a file has them: a final newline ends the last line rather than starting an empty one, a
      // trailing '\r' is cut, and a blank line is a line: it is logged, then rejected and dead-lettered by the
      // parser like a blank line of a file.
      size_t start = 0;
      while (start < body.size()) {
        size_t end = body.find('\n', start);
        if (end == std::string_view::npos) end = body.size();
        std::string_view line = body.substr(start, end - start);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        lines.push_back(line);
        start = end + 1;
      }
    } else {
      simdjson::dom::parser parser;
      simdjson::dom::element root;
      if (parser.parse(body.data(), body.size()).get(root) != simdjson::SUCCESS) {
        return Status::Invalid("the body is not valid JSON; send a JSON array of event objects, or JSON lines with "
                               "Content-Type: application/x-ndjson");
      }
      simdjson::dom::array array;
      if (root.get_array().get(array) != simdjson::SUCCESS) {
        return Status::Invalid("the body is JSON but not an array; send [{...}, {...}] or JSON lines");
      }
      for (simdjson::dom::element element : array) owned.push_back(simdjson::minify(element));
      for (const std::string& s : owned) lines.push_back(s);
    }
    if (lines.empty()) return IngestAck{};
    // The parser's verdict on each line, for the answer: the pipeline applies the same parser to what is logged.
    IngestAck ack;
    {
      thread_local std::unique_ptr<EventParser> parser;
      thread_local const Spec* parser_spec = nullptr;
      if (parser_spec != &spec_) {
        parser = std::make_unique<EventParser>(spec_.fields);
        parser_spec = &spec_;
      }
      ParsedEvent event;
      std::string reason, padded;
      for (size_t k = 0; k < lines.size(); ++k) {
        padded.assign(lines[k]);
        padded.append(kParsePaddingBytes, '\0');
        const bool ok = lines[k].size() <= kMaxLineBytes &&
                        parser->Parse(std::string_view(padded.data(), lines[k].size()), padded.size(), &event, &reason);
        if (ok) {
          ++ack.accepted;
          continue;
        }
        ++ack.rejected;
        if (ack.errors.size() < kMaxIngestErrors) {
          ack.errors.emplace_back(k + 1, lines[k].size() > kMaxLineBytes ? LineTooLongReason() : reason);
        }
      }
    }
    // With a key, the acknowledgement is logged with the batch (as a receipt), for a resend to get it back.
    std::string receipt;
    if (!key.empty()) {
      ByteWriter out(&receipt);
      out.PutVarint(ack.accepted);
      out.PutVarint(ack.rejected);
      out.PutVarint(ack.errors.size());
      for (const auto& [line, reason] : ack.errors) {
        out.PutVarint(line);
        out.PutString(std::string_view(reason).substr(0, 1000));
      }
    }
    Result<KeyedAppend> appended = KeyedAppend{};
    if (key.empty()) {
      Result<uint64_t> sequence = ingest_log_->Append(lines, arrival_ns);
      if (!sequence.ok()) appended = sequence.status();
    } else {
      appended = ingest_log_->AppendOnce(lines, arrival_ns, IngestKey{key, receipt});
    }
    if (!appended.ok()) {
      SetHealthReason("ingest", "ingest is refusing events: the ingest log cannot be written (" +
                                    appended.status().message() + ")");
      return appended.status();
    }
    SetHealthReason("ingest", std::nullopt);
    if (!key.empty()) idempotency_keys_->Set(static_cast<double>(ingest_log_->key_count()));
    switch (appended->outcome) {
      case KeyedAppend::Outcome::kAppended: ingested_->Increment(lines.size()); return ack;
      case KeyedAppend::Outcome::kKeyReused:
        ack = IngestAck{};
        ack.key_outcome = IngestAck::KeyOutcome::kKeyReused;
        ack.first_logged_ms = appended->logged_ms;
        return ack;
      case KeyedAppend::Outcome::kReplayed: break;
    }
    // The first acknowledgement, as logged.
    IngestAck first;
    first.key_outcome = IngestAck::KeyOutcome::kReplayed;
    first.first_logged_ms = appended->logged_ms;
    ByteReader in(appended->receipt);
    uint64_t errors = 0;
    in.ReadVarint(&first.accepted);
    in.ReadVarint(&first.rejected);
    in.ReadCount(&errors, 2);
    for (uint64_t k = 0; k < errors && !in.failed(); ++k) {
      uint64_t line = 0;
      std::string_view reason;
      if (in.ReadVarint(&line) && in.ReadString(&reason)) first.errors.emplace_back(line, std::string(reason));
    }
    if (in.failed()) return Status::Internal("the acknowledgement logged with this Idempotency-Key cannot be read");
    ingest_replays_->Increment();
    return first;
  }

  HealthReport Health() const override {
    HealthReport report;
    {
      std::lock_guard<std::mutex> lock(health_mutex_);
      report.reasons = health_reasons_;
    }
    if (spec_.freshness_slo) {
      std::optional<double> p99 = slo_window_->P99(WallClockMs() / 1000);
      if (p99 && *p99 * 1000.0 > static_cast<double>(spec_.freshness_slo->p99_ms)) {
        report.reasons.push_back("freshness p99 over the last " + FormatDuration(spec_.freshness_slo->window_ms) +
                                 " is above " + std::to_string(*p99) + " s, over the SLO of " +
                                 FormatDuration(spec_.freshness_slo->p99_ms));
      }
    }
    if (redis_ != nullptr) {
      const RedisWriterHealth health = redis_->Health();
      if (!health.connected && health.consecutive_failures > 0) {
        report.reasons.push_back("online store redis://" + spec_.online.host + ":" + std::to_string(spec_.online.port) +
                                 " unreachable (" + health.last_error + "); " + std::to_string(health.pending_entities) +
                                 " entities pending, retrying with backoff");
      } else if (!health.in_sync) {
        // Until the full sync's marker is written, Redis may lack entities (and `freshet serve` refuses).
        report.reasons.push_back("online store redis://" + spec_.online.host + ":" + std::to_string(spec_.online.port) +
                                 " out of sync: " + health.out_of_sync_reason + "; resyncing every entity, " +
                                 std::to_string(health.pending_entities) + " still to write");
      }
    }
    // With several feature sets the server asks the first: the others' reasons (their Redis writer, offline store,
    // checkpoints) count too, named by set.
    for (const Impl* set : all_sets_) {
      if (set == this) continue;
      for (const std::string& reason : set->Health().reasons) {
        report.reasons.push_back("feature set '" + set->spec_.name + "': " + reason);
      }
    }
    report.ok = report.reasons.empty();
    return report;
  }

  // Every metric is in metrics_, which the HTTP server writes (the Redis writer's through functions:
  // RegisterRedisMetrics). With several feature sets, metrics_ is the first set's, and the first set appends each
  // set's event counts and entities, labelled by set (AppendSetMetrics).
  void AppendMetrics(std::string* out) const override {
    if (!all_sets_.empty()) AppendSetMetrics(out);
  }
  std::vector<const Impl*> all_sets_;  // The first of several sets: every set, itself included (metrics, health).
  void AppendSetMetrics(std::string* out) const;

  // ---- The web console: GET /v1/ui/{view} and /v1/explain/{entity} (serve/feature_service.h) ----
  Result<std::string> ConsoleJson(std::string_view view) const override;
  Result<std::string> ExplainJson(std::string_view entity, int feature, int64_t at_ms) const override;
  // Called by Run every turn: once a second, the pipeline's totals go into console_history_.
  void SampleConsole();
  std::string ConsolePipelineJson() const;
  std::string ConsoleFeaturesJson() const;
  std::string ConsoleDeadLettersJson() const;
  struct ConsoleSample {
    int64_t wall_ms = 0;
    uint64_t in = 0, accepted = 0, rejected = 0, late = 0, duplicates = 0;  // Totals so far.
    double watermark_lag_seconds = 0;
    std::optional<double> freshness_p50_seconds, freshness_p99_seconds;  // Over the SLO window (default 1m).
  };
  static constexpr size_t kConsoleHistorySeconds = 300;
  mutable std::mutex console_mutex_;
  std::deque<ConsoleSample> console_history_;  // The last kConsoleHistorySeconds samples, oldest first.
  std::optional<OfflinePaths> console_offline_paths_;  // Where explanations read events; none without offline.
  // The last checkpoint's duration, for the console (the metric may be a histogram).
  std::atomic<double> console_checkpoint_seconds_{0};
  static constexpr int kMaxExplainsAtOnce = 2;
  mutable std::atomic<int> explains_running_{0};
  // A live explanation covers every event accepted before it was asked. The moment it covers (its cut) is taken
  // on the processing thread between batches, where a checkpoint is taken too: there the value a lookup serves
  // is read and the events-table seq noted; once the checkpoint that holds those events is published, the
  // explanation replays the table up to that seq. So the value replayed and the value served cover the very
  // same events.
  struct ExplainCut {
    std::string entity;
    int feature = 0;
    int64_t at_ms = 0;
    // Set at the cut.
    std::string served_json = "null";
    bool served_exact = true;
    int64_t seq_below = 0;  // The events table's events accepted before the cut.
    uint64_t dead_letter_bytes = 0;  // The dead-letter file's length at the cut.
    // Set once the checkpoint holding the cut's events is published (or failed).
    bool done = false;
    Status status;
  };
  static constexpr int64_t kExplainCutTimeoutMs = 60'000;
  mutable std::mutex explain_mutex_;
  mutable std::condition_variable explain_cv_;
  mutable std::vector<std::shared_ptr<ExplainCut>> explains_waiting_;  // Asked, not cut yet.
  bool explains_closed_ = false;  // After the last checkpoint: no cut will come.
  uint64_t seq_at_checkpoint_ = 0;  // lanes_.next_offline_seq() when the last checkpoint was taken.
  // Waits for the cut of an explanation of `entity` (called by ExplainJson).
  Result<std::shared_ptr<ExplainCut>> AwaitExplainCut(std::string_view entity, int feature, int64_t at_ms) const;
  // On the processing thread: cuts the explanations waiting (their lookups, the seq).
  std::vector<std::shared_ptr<ExplainCut>> CutExplains();
  void FinishExplains(const std::vector<std::shared_ptr<ExplainCut>>& cuts, const Status& status);
  // On the processing thread, every turn: whether explanations wait for a checkpoint. When nothing was accepted
  // since the last checkpoint and it is published, they are cut and answered at once, without one.
  bool ExplainsWantCheckpoint();
  void CloseExplains();

  // ---- A member of a Kafka consumer group (`checkpoint.path`): partitions move with their state ----
  Result<std::map<int32_t, int64_t>> OnAssigned(const std::vector<int32_t>& partitions) override;
  void OnRevoked(const std::vector<int32_t>& partitions, bool lost) override;
  // Restores `partitions` from checkpoint `found` (their newest state); returns their offsets.
  Status RestorePartitions(const GroupCheckpoints::Found& found, const std::vector<int32_t>& partitions,
                           std::map<int32_t, int64_t>* offsets);
  // Forgets partitions this process gave up (or lost) after their last checkpoint.
  void DropPartitions(const std::vector<int32_t>& partitions);
  // The claims of this process (partition -> epoch) that no other process has taken over since.
  std::map<int32_t, uint64_t> CurrentClaims();
  std::optional<GroupCheckpoints> group_;
  std::map<int32_t, uint64_t> epochs_;  // Partitions this process owns, with the epoch of its claim.
  CheckpointStore& Store() { return group_ ? group_->store() : *checkpoints_; }

  // ---- Set-up ----
  Status Open();
  Status Restore();
  Status RecoverOffline(std::optional<std::string_view> position, std::optional<uint64_t> sequence);
  Status Checkpoint(bool wait);
  // `snapshot`: the child encoding the checkpoint's state (ForkEncoding), whose bytes go into checkpoint.engine_state.
  // The reference tables' versions as TableSet::Save wrote them, and the TableSet::generation they are of.
  struct TableVersions {
    uint64_t generation = 0;
    std::shared_ptr<const std::string> bytes;  // Null: not encoded (yet).
  };
  // `tables`: with bytes when they were not left to the child (reused, or encoded in place).
  Status WriteCheckpoint(freshet::Checkpoint& checkpoint, OfflineSink::TakenRows rows, ForkedSnapshot* snapshot,
                         TableVersions tables);
  // A child encoding the lanes' state as it is now, with each shard's size; null (with a warning, once) if the
  // process cannot fork.
  std::shared_ptr<ForkedSnapshot> ForkEncoding(bool encode_tables);
  // The child's state into checkpoint.engine_state and its tables' versions (when it encoded them) into *tables,
  // its shard sizes and memory into the gauges.
  Status TakeEncoding(ForkedSnapshot& snapshot, freshet::Checkpoint& checkpoint,
                      std::shared_ptr<const std::string>* tables);
  void SetShardBytes(const std::vector<size_t>& part_bytes);  // freshet_checkpoint_shard_bytes (sharded only).
  std::string& TablesPosition(freshet::Checkpoint& checkpoint);  // The "tables" position of `checkpoint`.
  bool fork_warned_ = false;
  // `lines`: the batch read once for several feature sets (else each record is parsed here).
  Status ProcessBatch(std::vector<SourceRecord>& batch, const SharedLines* lines);
  void UpsertChanged();
  // The gauges of the state (entities, watermark, remembered ids): after each batch and after a restore.
  void SetStateGauges();
  void CheckSlo();
  void SetHealthReason(const std::string& key, std::optional<std::string> reason);

  // Exposes the Redis writer's own counters and histograms in metrics_, read at each scrape.
  void RegisterRedisMetrics();
  void UpdateKafkaStatus();  // Partition gauges and the source's health, every half second.

  // What one shard's processing of a chunk produced, merged by ProcessBatch.
  using ShardOutput = ShardedInput::Output;
  // `lines`: as in ProcessBatch, records[0] being its line `first_line`.
  void ProcessShard(size_t shard, std::span<const SourceRecord> records, std::span<const uint32_t> lane_of,
                    int64_t wall_ms, const SharedLines* lines, size_t first_line, ShardOutput& out);
  void RunShards(const std::function<void(size_t)>& work) {
    if (pool_) {
      pool_->Run(work);
    } else {
      work(0);
    }
  }
  std::vector<ShardOutput> shards_{1};  // One per processing thread (lane k goes to shard k % size).
  std::unique_ptr<ShardPool> pool_;     // With more than one shard.
  std::unique_ptr<ShardedInput> sharded_input_;  // A file or HTTP source on several shards.
  PipelineLanes::RunPerLane RunShardsFunction() {
    return [this](const std::function<void(size_t)>& work) { RunShards(work); };
  }
  std::mutex dead_letters_mutex_;       // Shards write dead letters concurrently.
  // With `lookups`: the stage that answers them per batch (before the lock), and the answers of the batch; the
  // chunk being processed reads them from chunk_lookups_ (its first record's).
  std::unique_ptr<LookupStage> lookup_stage_;
  std::vector<EventLookups> batch_lookups_;
  const EventLookups* chunk_lookups_ = nullptr;
  void ResolveLookups(const std::vector<SourceRecord>& batch);

  const Spec& spec_;
  RuntimeOptions options_;
  SetMember member_;
  std::string restored_source_position_;  // The restored checkpoint's, empty without one (sets compare them).
  uint64_t last_written_sequence_ = 0;    // Of the last checkpoint written (the sets' manifest records it).
  // The run loop's steps, for one runtime and for several feature sets over one source (Runtime::Run).
  bool OfflineHeld();                       // Reading waits while offline rows wait for a checkpoint.
  bool offline_held_ = false;
  // Applies a polled batch (read already as `lines` with several feature sets) and does the turn's chores.
  Status AfterPoll(std::vector<SourceRecord>& batch, const SharedLines* lines = nullptr);
  bool CheckpointDue();
  void NoteCheckpointFailure(const Status& status);
  Status Finish(Status final_checkpoint);   // After the loop: flushes and stops the writers.
  // Deletes the ingest log's segments before a checkpointed source position (an HTTP source).
  void ReleaseIngestLog(const std::string& source_position);
  mutable std::shared_mutex mutex_;  // Exclusive: processing (and making lanes); shared: lookups.
  PipelineLanes lanes_;  // A lane per Kafka partition, else one.
  KafkaSource* kafka_ = nullptr;  // source_ when it is Kafka.
  int64_t last_partition_metrics_ms_ = 0;

  std::unique_ptr<IngestLog> ingest_log_;
  std::unique_ptr<Source> source_;
  std::optional<CheckpointStore> checkpoints_;
  DeadLetterWriter dead_letters_;
  std::string dead_letter_path_;
  int64_t last_checkpoint_ms_ = 0;

  MetricsRegistry metrics_;
  Counter* lines_in_ = nullptr;
  Counter* accepted_ = nullptr;
  Counter* rejected_total_ = nullptr;
  Counter* late_ = nullptr;
  Counter* duplicate_ = nullptr;
  // freshet_events_skipped_total, per feature that reads a field and per reason.
  struct SkipCounter {
    size_t feature = 0;
    SkipReason reason = SkipReason::kMissing;
    Counter* counter = nullptr;
  };
  std::vector<SkipCounter> skipped_;
  Counter* ingested_ = nullptr;
  Counter* ingest_replays_ = nullptr;
  Gauge* idempotency_keys_ = nullptr;
  Counter* checkpoints_total_ = nullptr;
  Gauge* watermark_ = nullptr;
  Gauge* watermark_lag_ = nullptr;
  Gauge* entities_ = nullptr;
  Counter* expired_ = nullptr;
  // With a ttl: drops idle entities. A sweep visits every entity, so a lane is swept each time its low watermark
  // has moved by an eighth of the ttl (Lane::next_expiry_sweep_ms), not per batch.
  void ExpireIdle();
  Gauge* dedup_ids_ = nullptr;
  Gauge* recent_events_ = nullptr;
  Gauge* state_bytes_ = nullptr;
  Histogram* checkpoint_seconds_ = nullptr;
  Gauge* checkpoint_bytes_ = nullptr;
  Gauge* checkpoint_pause_ = nullptr;  // How long the last checkpoint stopped processing (settle, encode).
  Gauge* slo_breached_ = nullptr;
  Histogram* freshness_ = nullptr;
  std::unique_ptr<SloWindow> slo_window_;
  bool slo_breach_logged_ = false;

  mutable std::mutex health_mutex_;
  std::vector<std::string> health_reasons_;
  std::vector<std::pair<std::string, std::string>> health_by_key_;

  std::unique_ptr<OfflineSink> offline_;  // Null with `offline: {enabled: false}`.
  std::unique_ptr<TableFeed> table_feed_;  // With `tables` in the spec.
  // The reference tables' versions as the last checkpoint encoded them. A checkpoint of tables unchanged since (a
  // profile table usually changes far less often than checkpoints are taken) writes these bytes again instead of
  // encoding tens of MB anew. Set on the checkpoint thread, read at the next cut, which joins that thread first.
  TableVersions encoded_tables_;
  int64_t last_table_poll_ms_ = 0;
  // Reads what the table files gained, under the exclusive lock (between event batches).
  Status PollTables();
  std::thread checkpoint_thread_;         // Writes the checkpoint prepared by Checkpoint(); one at a time.
  std::atomic<bool> checkpoint_running_{false};
  // When the last checkpoint failed (WallClockMs), 0 after a success: the next try waits kCheckpointRetryMs.
  std::atomic<int64_t> checkpoint_failed_ms_{0};
  Counter* checkpoint_failures_ = nullptr;
  std::unique_ptr<FeatureLogWriter> feature_log_;
  std::unique_ptr<SkewMonitor> skew_monitor_;  // With skew.interval.

  std::unique_ptr<HttpServer> server_;
  std::unique_ptr<RedisWriter> redis_;
  uint64_t redis_resyncs_seen_ = 0;  // RedisWriterMetrics::resyncs_requested answered so far.
  // Hands every entity to the Redis writer and marks the full sync, answering resync request `resyncs_seen`.
  void ResyncRedis(uint64_t resyncs_seen) {
    ChangeAll();
    const size_t entities = changed_.size();
    UpsertChanged();
    redis_->MarkFullSync(resyncs_seen, entities);
  }
  // Entities changed by a chunk, (lane << 32 | entity index), with their first arrival.
  std::vector<std::pair<uint64_t, int64_t>> changed_;
  void ChangeAll() {
    for (size_t l = 0; l < lanes_.size(); ++l) {
      const FeatureEngine& engine = lanes_.at(l).engine;
      for (uint32_t e = 0; e < engine.entity_count(); ++e) {
        if (engine.entity_live(e)) changed_.emplace_back(uint64_t{l} << 32 | e, 0);
      }
    }
  }
  std::vector<Value> values_;
};

Status Runtime::Impl::Open() {
  const std::string& dir = options_.data_dir;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::IoError("cannot create data directory '" + dir + "': " + ec.message());
  const std::string source_label = spec_.source ? spec_.source->type : "none";
  const MetricLabels labels = {{"source", source_label}};
  lines_in_ = &metrics_.GetCounter("freshet_events_in_total", "Lines read from the source.", labels);
  accepted_ = &metrics_.GetCounter("freshet_events_accepted_total", "Events accepted and applied.", labels);
  rejected_total_ = &metrics_.GetCounter("freshet_events_rejected_total",
                                         "Lines rejected (malformed, bad entity or timestamp) and dead-lettered.", labels);
  late_ = &metrics_.GetCounter("freshet_events_late_total", "Events dropped as late and dead-lettered.", labels);
  duplicate_ = &metrics_.GetCounter("freshet_events_duplicate_total",
                                    "Events dropped as duplicates of an accepted event (same entity and id) and "
                                    "dead-lettered.",
                                    labels);
  for (size_t k = 0; k < spec_.features.size(); ++k) {
    if (spec_.features[k].field_slot < 0) continue;  // count reads no field and skips nothing.
    for (SkipReason reason : kSkipReasons) {
      skipped_.push_back(SkipCounter{
          k, reason,
          &metrics_.GetCounter("freshet_events_skipped_total",
                               "Accepted events a feature skipped: they passed its `where`, but its field was missing, "
                               "null, or of the wrong type (not the schema's type, or one its aggregation cannot "
                               "take, e.g. a number in a string for sum or mean).",
                               {{"feature", spec_.features[k].name}, {"reason", SkipReasonName(reason)}})});
    }
  }
  ingested_ = &metrics_.GetCounter("freshet_ingest_events_total", "Events acknowledged by POST /v1/ingest.");
  ingest_replays_ = &metrics_.GetCounter("freshet_ingest_replays_total",
                                         "Ingest requests answered from their Idempotency-Key: resends of a "
                                         "logged batch, not logged again.");
  idempotency_keys_ = &metrics_.GetGauge("freshet_ingest_idempotency_keys",
                                         "Idempotency keys remembered (those of the source's idempotency_window).");
  checkpoints_total_ = &metrics_.GetCounter("freshet_checkpoints_total", "Checkpoints written.");
  checkpoint_failures_ = &metrics_.GetCounter(
      "freshet_checkpoint_failures_total", "Checkpoints that could not be written (retried; nothing is lost).");
  watermark_ = &metrics_.GetGauge("freshet_watermark_seconds",
                                  "Low watermark, in seconds since the Unix epoch: no event earlier than this is "
                                  "accepted any more (0 before the first event).");
  watermark_lag_ = &metrics_.GetGauge("freshet_watermark_lag_seconds",
                                      "Wall clock minus the low watermark (0 without a watermark).");
  entities_ = &metrics_.GetGauge("freshet_state_entities", "Entities with state.");
  expired_ = &metrics_.GetCounter("freshet_state_entities_expired_total",
                                  "Entities dropped from the state by the spec's ttl (no event for longer than ttl, "
                                  "measured against the low watermark); 0 without a ttl.");
  dedup_ids_ = &metrics_.GetGauge("freshet_dedup_ids", "Event ids remembered for deduplication (0 without dedup).");
  recent_events_ = &metrics_.GetGauge("freshet_state_recent_events",
                                      "Recent events kept (per feature with a lifetime, tiled or session window) so "
                                      "that rows and lookups as of any time after the low watermark are exact "
                                      "(at the last checkpoint).");
  state_bytes_ = &metrics_.GetGauge("freshet_state_bytes",
                                    "Approximate bytes of feature and deduplication state (at the last checkpoint).");
  checkpoint_seconds_ = &metrics_.GetHistogram("freshet_checkpoint_duration_seconds",
                                               "Time to take and write a checkpoint, of those written.",
                                               kDurationBucketsSeconds);
  checkpoint_bytes_ = &metrics_.GetGauge("freshet_checkpoint_size_bytes", "Size of the last checkpoint.");
  checkpoint_pause_ = &metrics_.GetGauge("freshet_checkpoint_pause_seconds",
                                         "How long the last checkpoint stopped processing (recent events settled, "
                                         "the process forked; the state is encoded and written meanwhile).");
  slo_breached_ = &metrics_.GetGauge("freshet_freshness_slo_breached", "1 while the freshness SLO is breached.");
  if (spec_.freshness_slo) {
    // The p99 the SLO compares with it is computed inside (SloWindow) for /health; dashboards take it from
    // the freshet_freshness_seconds histogram: histogram_quantile(0.99, rate(..._bucket[window])).
    metrics_.GetGauge("freshet_freshness_slo_target_seconds", "The freshness SLO's p99 target.")
        .Set(static_cast<double>(spec_.freshness_slo->p99_ms) / 1000.0);
  }
  freshness_ = &metrics_.GetHistogram("freshet_freshness_seconds",
                                      "Time from an event's arrival at the source until lookups see it.",
                                      kFreshnessBuckets);
  slo_window_ = std::make_unique<SloWindow>(spec_.freshness_slo ? spec_.freshness_slo->window_ms : 60000);

  if (!spec_.source) {
    return Status::Invalid(spec_.file + ": `freshet run` needs a `source` section: {type: file, path: ...}, "
                           "{type: http} or {type: kafka, ...}");
  }
  // Kafka: partitions are the unit of parallelism, lane k (a partition) is processed by shard k % parallelism.
  // A file or HTTP source: lane k is shard k (run/sharded_input.h).
  const size_t parallelism = IsKafka(spec_) ? Parallelism(spec_) : lanes_.size();
  shards_.resize(parallelism);
  // Kafka: librdkafka's fetch thread needs a core too, so a waiting shard sleeps rather than spins (not measured
  // with spinning).
  if (parallelism > 1) pool_ = std::make_unique<ShardPool>(parallelism, IsKafka(spec_) ? 0 : -1);
  if (lanes_.sharded()) sharded_input_ = std::make_unique<ShardedInput>(spec_, lanes_, RunShardsFunction());
  if (!spec_.lookups.empty()) {
    if (sharded_input_) {
      return Status::Invalid(spec_.file + ": `lookups` do not work yet with a file or HTTP source on several threads "
                             "(parallelism " + std::to_string(spec_.parallelism) + "); set parallelism: 1");
    }
    lookup_stage_ = std::make_unique<LookupStage>(spec_, metrics_);
  }
  if (member_.shared_source != nullptr) {
    source_ = std::make_unique<SharedSourceView>(*member_.shared_source);
    lanes_.SkipLinesWithoutEntity();  // Events of the other sets.
  } else if (spec_.source->type == "kafka") {
    const SourceSpec& k = *spec_.source;
    auto kafka = std::make_unique<KafkaSource>(
        KafkaSourceOptions{k.brokers, k.topic, k.group, k.start, k.session_timeout_ms, k.properties});
    kafka_ = kafka.get();
    source_ = std::move(kafka);
  } else if (spec_.source->type == "http") {
    FRESHET_ASSIGN_OR_RETURN(ingest_log_, IngestLog::Open((std::filesystem::path(dir) / "ingest").string(),
                                                          {.key_window_ms = spec_.source->idempotency_window_ms}));
    for (const std::string& w : ingest_log_->TakeWarnings()) std::fprintf(stderr, "freshet run: warning: %s\n", w.c_str());
    idempotency_keys_->Set(static_cast<double>(ingest_log_->key_count()));
    source_ = std::make_unique<IngestLogSource>(ingest_log_.get());
  } else {
    // A file at the path that replaced the checkpoint's and does not continue it is read from its start only
    // when that cannot count an event twice unnoticed: the operator says it is new, or event-id deduplication
    // with a watermark remembers every accepted event that is not late (a re-read older one is late).
    const bool dedup_covers_rereads = spec_.dedup.has_value() && spec_.watermark.has_value();
    source_ = std::make_unique<FileSource>(spec_.source->path, spec_.source->follow,
                                           options_.new_events_file || dedup_covers_rereads
                                               ? FileSource::Replaced::kReadFromStart
                                               : FileSource::Replaced::kRefuse);
  }
  if (!spec_.checkpoint.path.empty()) {
    if (kafka_ == nullptr) {
      return Status::Invalid(spec_.file + ": checkpoint.path (a checkpoint folder shared by the processes of a Kafka "
                             "consumer group) needs `source: {type: kafka, ...}`; remove it to keep checkpoints in the "
                             "data directory");
    }
    if (!spec_.tables.empty()) {
      return Status::Invalid(spec_.file + ": reference tables (`tables:`) do not work yet with checkpoint.path (several "
                             "processes in one consumer group): each process would record its own copy of a table's "
                             "history. Run one process per group without checkpoint.path, or drop the tables");
    }
    FRESHET_ASSIGN_OR_RETURN(GroupCheckpoints group, GroupCheckpoints::Open(spec_.checkpoint.path,
                                                                            GroupCheckpoints::MemberName(),
                                                                            spec_.checkpoint.keep));
    group_.emplace(std::move(group));
    lanes_.NumberRowsByPlace();
    std::fprintf(stderr, "freshet run: member '%s' of consumer group '%s', checkpoints in '%s'\n",
                 group_->member().c_str(), spec_.source->group.c_str(), spec_.checkpoint.path.c_str());
  }
  std::filesystem::create_directories(std::filesystem::path(dir) / "dead_letters", ec);
  dead_letter_path_ = (std::filesystem::path(dir) / "dead_letters" / (spec_.source->type + ".jsonl")).string();
  FRESHET_ASSIGN_OR_RETURN(
      CheckpointStore store,
      CheckpointStore::Open((std::filesystem::path(dir) / "checkpoints").string(), spec_.checkpoint.keep));
  checkpoints_.emplace(std::move(store));
  std::optional<OfflinePaths> offline_paths;
  if (spec_.offline.enabled) {
    if (!spec_.watermark) {
      std::fprintf(stderr, "freshet run: note: the spec has no watermark, so the offline features table is not "
                           "written (its rows of out-of-order events could not be exact); the events table is, for "
                           "`freshet historical`. Add a watermark to write features rows.\n");
    }
    // Several feature sets share one offline store: one events table (the first set writes it), and a
    // features_<set> table and feature log per set.
    offline_paths = member_.active ? FeatureSetOfflinePaths(spec_, member_.data_dir) : OfflinePathsFor(spec_, dir);
    if (group_) offline_paths->group_member = group_->member();
    console_offline_paths_ = offline_paths;
    const bool write_events = !member_.active || member_.shared_source == nullptr;
    FRESHET_ASSIGN_OR_RETURN(offline_, OfflineSink::Open(spec_, *offline_paths,
                                                         OfflineSinkOptions{.events = write_events,
                                                                            .features = spec_.offline.features}));
    lanes_.SetOfflineSink(offline_.get());
    if (sharded_input_) sharded_input_->SetOfflineSink(offline_.get());
  }
  if (!spec_.tables.empty()) {
    table_feed_ = std::make_unique<TableFeed>(spec_, metrics_, dir);
    lanes_.SetTables(&table_feed_->tables(), /*prefetched_by_caller=*/true);  // ProcessShard prefetches ahead.
    if (sharded_input_) sharded_input_->SetTables(&table_feed_->tables());
  }
  FRESHET_RETURN_IF_ERROR(Restore());
  // The table files as they are now come before any event read from here on.
  if (table_feed_ != nullptr) FRESHET_RETURN_IF_ERROR(PollTables());
  if (offline_paths && spec_.feature_log.enabled) {
    FRESHET_ASSIGN_OR_RETURN(feature_log_,
                             FeatureLogWriter::Start(spec_, *offline_paths, metrics_, spec_.checkpoint.interval_ms));
    if (spec_.skew.interval_ms > 0) skew_monitor_ = std::make_unique<SkewMonitor>(spec_, *offline_paths, metrics_);
  }

  if (spec_.online.type == "redis") {
    RedisWriterOptions redis;
    redis.connection.host = spec_.online.host;
    redis.connection.port = spec_.online.port;
    if (const char* password = std::getenv("FRESHET_REDIS_PASSWORD")) redis.connection.password = password;
    redis.spec_name = spec_.name;
    redis.flush_interval_ms = spec_.online.flush_interval_ms;
    redis.key_ttl_ms = spec_.ttl_ms.value_or(0);
    FRESHET_ASSIGN_OR_RETURN(redis_, RedisWriter::Start(redis));
    RegisterRedisMetrics();
    // After a restart the restored state is written again: Redis may have missed the last writes.
    ResyncRedis(/*resyncs_seen=*/0);
  }

  if (member_.active) return Status::Ok();  // Runtime::StartSets serves every set from one server.
  HttpServerOptions http;
  http.host = options_.host.empty() ? spec_.serve.host : options_.host;
  http.port = options_.port >= 0 ? options_.port : spec_.serve.port;
  ApplyServeSpec(spec_.serve, &http);
  http.bearer_token = options_.bearer_token;
  server_ = std::make_unique<HttpServer>(*this, metrics_, http);
  FRESHET_RETURN_IF_ERROR(server_->Start());
  if (group_) kafka_->SetRebalanceListener(this);
  return Status::Ok();
}

Status Runtime::Impl::Restore() {
  if (group_) {
    // A new member: its partitions' state comes with their assignment (OnAssigned). Its dead letters follow
    // those of earlier runs in the data directory.
    std::error_code ec;
    // No offline recovery either: the tables hold other members' commits, which are theirs to recover (a
    // partition's new owner publishes what its checkpoint recorded; nothing is ever rolled back).
    const uintmax_t size = std::filesystem::exists(dead_letter_path_) ? std::filesystem::file_size(dead_letter_path_, ec) : 0;
    FRESHET_RETURN_IF_ERROR(dead_letters_.OpenAt(dead_letter_path_, std::string(source_->name()), ec ? 0 : size));
    last_checkpoint_ms_ = WallClockMs();
    return Status::Ok();
  }
  std::vector<std::string> warnings;
  FRESHET_ASSIGN_OR_RETURN(
      std::optional<freshet::Checkpoint> checkpoint,
      checkpoints_->LoadNewestValid(&warnings, member_.active ? member_.restore_at_most : UINT64_MAX));
  for (const std::string& w : warnings) std::fprintf(stderr, "freshet run: warning: %s\n", w.c_str());
  uint64_t dead_letter_bytes = 0;
  if (checkpoint && checkpoint->spec_fingerprint != lanes_.blank().spec_fingerprint()) {
    return Status::Invalid("the newest checkpoint in '" + checkpoints_->directory() +
                           "' was written for a different spec (its features, windows or watermark changed); "
                           "start fresh with `freshet run --reset` (it moves the old checkpoints aside), or backfill the new spec");
  }
  if (member_.active && member_.restore_at_most > 0 &&
      (!checkpoint || checkpoint->sequence != member_.restore_at_most)) {
    return Status::Invalid("feature set '" + spec_.name + "': checkpoint " + std::to_string(member_.restore_at_most) +
                           ", the one the sets' manifest names, is missing or damaged in '" +
                           checkpoints_->directory() + "', so the sets cannot restore at one source position; start "
                           "fresh with `freshet run --reset` (it moves the old state aside)");
  }
  if (checkpoint) {
    std::vector<std::string> notes;
    Status decoded = lanes_.Decode(checkpoint->engine_state, &notes);
    for (const std::string& n : notes) std::fprintf(stderr, "freshet run: note: %s\n", n.c_str());
    if (!decoded.ok()) {
      return Status::Invalid("checkpoint " + std::to_string(checkpoint->sequence) + " in '" + checkpoints_->directory() +
                             "' cannot be restored: " + decoded.message());
    }
    std::optional<std::string_view> offline_position;
    for (const auto& [name, position] : checkpoint->positions) {
      if (name == "source") {
        FRESHET_RETURN_IF_ERROR(source_->Seek(position));
        restored_source_position_ = position;
      }
      if (name == "dead_letters") dead_letter_bytes = std::stoull(position);
      if (name == "offline") offline_position = position;
      if (name == "tables" && table_feed_ != nullptr) FRESHET_RETURN_IF_ERROR(table_feed_->Restore(position));
    }
    FRESHET_RETURN_IF_ERROR(RecoverOffline(offline_position, checkpoint->sequence));
    uint64_t admitted = 0;
    for (const PipelineLanes::Lane* counting : lanes_.counting_lanes()) {
      const PipelineLanes::Lane& lane = *counting;
      lines_in_->Increment(lane.counters.lines_read);
      accepted_->Increment(lane.engine.counters().admitted);
      late_->Increment(lane.engine.counters().late);
      duplicate_->Increment(lane.counters.duplicates);
      rejected_total_->Increment(lane.counters.rejected);
      admitted += lane.engine.counters().admitted;
    }
    state_bytes_->Set(static_cast<double>(lanes_.MemoryBytes()));
    std::fprintf(stderr, "freshet run: restored checkpoint %llu: %zu entities, %llu events accepted\n",
                 static_cast<unsigned long long>(checkpoint->sequence), lanes_.entity_count(),
                 static_cast<unsigned long long>(admitted));
  }
  if (!checkpoint) FRESHET_RETURN_IF_ERROR(RecoverOffline(std::nullopt, std::nullopt));
  FRESHET_RETURN_IF_ERROR(dead_letters_.OpenAt(dead_letter_path_, std::string(source_->name()), dead_letter_bytes));
  SetStateGauges();  // What was restored, not 0 until the next event.
  last_checkpoint_ms_ = WallClockMs();
  seq_at_checkpoint_ = lanes_.next_offline_seq();
  return Status::Ok();
}

// Makes the offline tables hold exactly the events the restored checkpoint covers (none without one).
Status Runtime::Impl::RecoverOffline(std::optional<std::string_view> position, std::optional<uint64_t> sequence) {
  if (offline_ == nullptr) return Status::Ok();
  FRESHET_ASSIGN_OR_RETURN(std::string note, offline_->Recover(position, sequence));
  if (!note.empty()) std::fprintf(stderr, "freshet run: %s\n", note.c_str());
  return Status::Ok();
}

// A checkpoint in two halves. Here, on the processing thread (nothing moves meanwhile): the dead letters are
// synced, the positions copied, the engine state snapshotted (a forked child encodes it), the offline rows
// taken. Then, on a background thread so that processing goes on: the offline rows are written as staged Parquet
// files, the child's state is taken, the checkpoint (recording them) is written, and the staged files are
// published. One checkpoint is in flight at a time; a checkpoint
// due while the previous one is still being written waits for the next turn. With `wait` (shutdown) the
// previous one is awaited and this one written before returning.
Status Runtime::Impl::Checkpoint(bool wait) {
  if (checkpoint_thread_.joinable()) {
    if (!wait && checkpoint_running_.load()) return Status::Ok();
    checkpoint_thread_.join();
  }
  const auto start = std::chrono::steady_clock::now();
  FRESHET_ASSIGN_OR_RETURN(uint64_t dead_letter_bytes, dead_letters_.Sync());
  auto checkpoint = std::make_shared<freshet::Checkpoint>();
  checkpoint->sequence = Store().next_sequence();
  checkpoint->spec_fingerprint = lanes_.blank().spec_fingerprint();
  checkpoint->positions = {{"source", source_->position()}, {"dead_letters", std::to_string(dead_letter_bytes)}};
  if (table_feed_ != nullptr) {
    // The positions now; the versions (a large table's are tens of MB) after them on the checkpoint thread
    // (WriteCheckpoint): those of the last checkpoint if the tables have not changed since, else as the forked
    // child below encoded them (or this thread, when the process cannot fork).
    FRESHET_ASSIGN_OR_RETURN(std::string tables, table_feed_->Encode(/*with_versions=*/false));
    checkpoint->positions.emplace_back("tables", std::move(tables));
  }
  if (group_) checkpoint->positions.emplace_back("epochs", GroupCheckpoints::EncodeEpochs(CurrentClaims()));
  // Settled on the shards' threads (little work: Apply settles as it goes), then encoded from a copy-on-write
  // image of the process in a forked child (state/forked_snapshot.h), so that no shard stops while the state is
  // encoded and written: processing pauses for the settle and the fork only. If the process cannot fork, each
  // shard encodes its part on its own thread, as before, and processing waits for that.
  std::vector<size_t> recent(lanes_.size(), 0);
  const auto settle = [&](size_t l) { recent[l] = lanes_.at(l).engine.SettleRecent(); };
  if (sharded_input_) {
    RunShards(settle);
  } else {
    for (size_t l = 0; l < lanes_.size(); ++l) settle(l);
  }
  recent_events_->Set(static_cast<double>(std::accumulate(recent.begin(), recent.end(), size_t{0})));
  // The tables' versions: those of the last checkpoint when the tables have not changed since, else encoded anew.
  TableVersions tables;
  if (table_feed_ != nullptr) tables.generation = table_feed_->tables().generation();
  if (encoded_tables_.generation == tables.generation) tables.bytes = encoded_tables_.bytes;
  std::shared_ptr<ForkedSnapshot> snapshot = ForkEncoding(table_feed_ != nullptr && tables.bytes == nullptr);
  if (snapshot == nullptr) {
    const PipelineLanes::RunPerLane run = RunShardsFunction();
    std::vector<size_t> part_bytes;
    checkpoint->engine_state = lanes_.Encode(sharded_input_ ? &run : nullptr, &part_bytes);
    if (table_feed_ != nullptr && tables.bytes == nullptr) {
      std::string bytes;
      ByteWriter out(&bytes);
      table_feed_->tables().Save(out);
      tables.bytes = std::make_shared<const std::string>(std::move(bytes));
    }
    SetShardBytes(part_bytes);
    state_bytes_->Set(static_cast<double>(lanes_.MemoryBytes()));
  }
  auto rows = std::make_shared<OfflineSink::TakenRows>();
  if (offline_ != nullptr) *rows = offline_->TakeRows();
  last_checkpoint_ms_ = WallClockMs();
  seq_at_checkpoint_ = lanes_.next_offline_seq();
  checkpoint_pause_->Set(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  checkpoint_running_ = true;
  auto write = [this, checkpoint, rows, start, snapshot, tables, cuts = CutExplains()]() {
    Status status = WriteCheckpoint(*checkpoint, std::move(*rows), snapshot.get(), tables);
    if (status.ok()) {
      console_checkpoint_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      checkpoints_total_->Increment();
      checkpoint_seconds_->Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      checkpoint_bytes_->Set(static_cast<double>(Store().last_size_bytes()));
      SetHealthReason("checkpoint", std::nullopt);
      checkpoint_failed_ms_ = 0;
    } else {
      std::fprintf(stderr, "freshet run: checkpoint failed (retried; no event is lost): %s\n", status.message().c_str());
      SetHealthReason("checkpoint", "the last checkpoint failed: " + status.message());
      checkpoint_failures_->Increment();
      checkpoint_failed_ms_ = WallClockMs();
    }
    FinishExplains(cuts, status);  // After the metrics: an explanation's answer finds this checkpoint counted.
    checkpoint_running_ = false;
    return status;
  };
  if (wait) return write();
  checkpoint_thread_ = std::thread(write);
  return Status::Ok();
}

Status Runtime::Impl::WriteCheckpoint(freshet::Checkpoint& checkpoint, OfflineSink::TakenRows rows,
                                     ForkedSnapshot* snapshot, TableVersions tables) {
  if (offline_ != nullptr) {
    // The rows of the events this checkpoint covers, staged; published once the checkpoint is durable. Rows
    // that cannot be staged (a full disk) stay in the sink for the next checkpoint, and this one is not
    // written: its positions would cover events whose rows are not on disk.
    Result<std::string> staged = offline_->StageTaken(std::move(rows), checkpoint.sequence);
    if (!staged.ok()) return Status::IoError("cannot write the offline store: " + staged.status().message());
    checkpoint.positions.emplace_back("offline", std::move(*staged));
  }
  // A state that cannot be had (the encoding child failed) fails this checkpoint like a full disk: its rows stay
  // staged for the next one, which encodes the state anew.
  if (snapshot != nullptr) {
    const bool child_encoded_tables = table_feed_ != nullptr && tables.bytes == nullptr;
    FRESHET_RETURN_IF_ERROR(TakeEncoding(*snapshot, checkpoint, child_encoded_tables ? &tables.bytes : nullptr));
  }
  if (table_feed_ != nullptr) {
    FRESHET_CHECK(tables.bytes != nullptr);  // Reused, encoded in place, or taken from the child just now.
    TablesPosition(checkpoint).append(*tables.bytes);
    encoded_tables_ = std::move(tables);
  }
  FRESHET_RETURN_IF_ERROR(Store().Write(checkpoint));
  if (group_) {
    for (const auto& [name, position] : checkpoint.positions) {
      if (name != "epochs") continue;
      Status pruned = group_->AfterWrite(checkpoint.sequence, *GroupCheckpoints::DecodeEpochs(position));
      if (!pruned.ok()) std::fprintf(stderr, "freshet run: warning: %s\n", pruned.message().c_str());
    }
  }
  // The group learns the offsets only now that a checkpoint holds them (lag monitors; never ahead of it).
  if (kafka_ != nullptr) kafka_->Commit(checkpoint.positions[0].second);
  if (offline_ != nullptr) FRESHET_RETURN_IF_ERROR(offline_->Publish());
  last_written_sequence_ = checkpoint.sequence;
  // Several sets: the log is cut once every set's checkpoint is in the manifest (Runtime::Run), since until then
  // a restart restores the previous ones.
  if (!member_.active) ReleaseIngestLog(checkpoint.positions[0].second);
  return Status::Ok();
}

// The child's bytes: the lanes' state, the reference tables' versions (TableSet::Save, with `encode_tables`),
// then each shard's size, the state's memory, the tables' bytes and the count of shards (u64 each), at the end so
// that the parent cuts them off without copying the state. The memory is counted in the child too: it visits every
// entity's every feature (0.1 s and more with 1M entities), which processing need not wait for; and so are the
// tables' versions (a 1M-key table's stopped processing for about 0.1 s per checkpoint when encoded in place).
std::shared_ptr<ForkedSnapshot> Runtime::Impl::ForkEncoding(bool encode_tables) {
  Result<std::unique_ptr<ForkedSnapshot>> forked = ForkedSnapshot::Start([this, encode_tables] {
    std::vector<size_t> part_bytes;
    std::string out = lanes_.Encode(nullptr, &part_bytes);
    ByteWriter w(&out);
    const size_t tables_start = out.size();
    if (encode_tables) table_feed_->tables().Save(w);
    const size_t tables_bytes = out.size() - tables_start;
    for (size_t n : part_bytes) w.PutU64(n);
    w.PutU64(lanes_.MemoryBytes());
    w.PutU64(tables_bytes);
    w.PutU64(part_bytes.size());
    return out;
  });
  if (forked.ok()) return std::shared_ptr<ForkedSnapshot>(std::move(*forked));
  if (!fork_warned_) {
    std::fprintf(stderr, "freshet run: warning: %s; checkpoints stop processing while the state is encoded\n",
                 forked.status().message().c_str());
    fork_warned_ = true;
  }
  return nullptr;
}

Status Runtime::Impl::TakeEncoding(ForkedSnapshot& snapshot, freshet::Checkpoint& checkpoint,
                                   std::shared_ptr<const std::string>* tables) {
  FRESHET_ASSIGN_OR_RETURN(std::string bytes, snapshot.Wait());
  auto u64_at = [&](size_t end) {  // The u64 that starts `end` bytes before the end.
    uint64_t v = 0;
    ByteReader(std::string_view(bytes).substr(bytes.size() - end, 8)).ReadU64(&v);
    return v;
  };
  const uint64_t parts = bytes.size() >= 24 ? u64_at(8) : UINT64_MAX;
  if (parts > (bytes.size() - 24) / 8) return Status::Internal("the encoded state has no shard sizes at its end");
  const size_t trailer = 8 * (parts + 3);
  const uint64_t tables_bytes = u64_at(16);
  if (tables_bytes > bytes.size() - trailer || (tables_bytes > 0) != (tables != nullptr)) {
    return Status::Internal("the encoded state's reference tables are not where its end says");
  }
  std::vector<size_t> part_bytes;
  for (uint64_t k = 0; k < parts; ++k) part_bytes.push_back(static_cast<size_t>(u64_at(trailer - 8 * k)));
  state_bytes_->Set(static_cast<double>(u64_at(24)));
  bytes.resize(bytes.size() - trailer);
  if (tables != nullptr) {
    *tables = std::make_shared<const std::string>(bytes, bytes.size() - tables_bytes, tables_bytes);
    bytes.resize(bytes.size() - tables_bytes);
  }
  checkpoint.engine_state = std::move(bytes);
  SetShardBytes(part_bytes);
  return Status::Ok();
}

std::string& Runtime::Impl::TablesPosition(freshet::Checkpoint& checkpoint) {
  for (auto& [name, position] : checkpoint.positions) {
    if (name == "tables") return position;
  }
  FRESHET_CHECK(false);  // Checkpoint adds it whenever the spec has tables.
  __builtin_unreachable();
}

void Runtime::Impl::SetShardBytes(const std::vector<size_t>& part_bytes) {
  for (size_t k = 0; k < part_bytes.size() && sharded_input_; ++k) {
    metrics_.GetGauge("freshet_checkpoint_shard_bytes", "Size of each shard's state in the last checkpoint.",
                      {{"shard", std::to_string(k)}}).Set(static_cast<double>(part_bytes[k]));
  }
}

void Runtime::Impl::ReleaseIngestLog(const std::string& source_position) {
  if (ingest_log_ == nullptr) return;
  Result<IngestLogPosition> position = IngestLogPosition::Parse(source_position);
  if (position.ok()) (void)ingest_log_->DeleteBefore(position->sequence);
}

// ---- A member of a consumer group ----
// Called by the Kafka source inside Poll, on the processing thread: no batch is being processed meanwhile.

Result<std::map<int32_t, int64_t>> Runtime::Impl::OnAssigned(const std::vector<int32_t>& partitions) {
  if (partitions.empty()) return std::map<int32_t, int64_t>();  // The end of a rebalance that gave this one nothing.
  const auto start = std::chrono::steady_clock::now();
  // A checkpoint being written publishes to the offline tables, as the restore may (PublishFrom): one at a time,
  // since a table's Delta log is not thread-safe.
  if (checkpoint_thread_.joinable()) checkpoint_thread_.join();
  std::map<int32_t, uint64_t> claimed;
  for (int32_t p : partitions) {
    // Claimed before reading: a process still writing p under an older claim is never restored over this one.
    FRESHET_ASSIGN_OR_RETURN(claimed[p], group_->Claim(p));
  }
  std::vector<std::string> warnings;
  FRESHET_ASSIGN_OR_RETURN(auto found, group_->Newest(partitions, &warnings));
  for (const std::string& w : warnings) std::fprintf(stderr, "freshet run: warning: %s\n", w.c_str());
  // Partitions restored from the same checkpoint are restored together (one decode, one publish).
  std::map<const freshet::Checkpoint*, std::vector<int32_t>> by_checkpoint;
  for (const auto& [p, f] : found) by_checkpoint[f.checkpoint.get()].push_back(p);
  std::map<int32_t, int64_t> offsets;
  for (const auto& [checkpoint, group] : by_checkpoint) {
    FRESHET_RETURN_IF_ERROR(RestorePartitions(found.at(group.front()), group, &offsets));
  }
  epochs_.insert(claimed.begin(), claimed.end());
  std::string names;
  for (int32_t p : partitions) {
    names += (names.empty() ? "" : ", ") + std::to_string(p) +
             (offsets.contains(p) ? " (from offset " + std::to_string(offsets[p]) + ")" : " (no checkpoint)");
  }
  std::fprintf(stderr, "freshet run: group assigned partitions %s; restored in %.3f s\n", names.c_str(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return offsets;
}

Status Runtime::Impl::RestorePartitions(const GroupCheckpoints::Found& found, const std::vector<int32_t>& partitions,
                                        std::map<int32_t, int64_t>* offsets) {
  const freshet::Checkpoint& checkpoint = *found.checkpoint;
  const std::string where = "checkpoint " + std::to_string(checkpoint.sequence) + " of member '" + found.member +
                            "' in '" + group_->path() + "'";
  if (checkpoint.spec_fingerprint != lanes_.blank().spec_fingerprint()) {
    return Status::Invalid(where + " was written for a different spec (its features, windows or watermark "
                           "changed); every process of a group must run the same spec; to start over, use a new "
                           "checkpoint.path and group");
  }
  for (const auto& [name, position] : checkpoint.positions) {
    if (name == "source") {
      std::optional<std::map<int32_t, int64_t>> at = KafkaSource::ParsePosition(position, spec_.source->topic);
      if (!at) return Status::Invalid(where + " holds no position in topic '" + spec_.source->topic + "'");
      for (int32_t p : partitions) {
        if (at->contains(p)) (*offsets)[p] = at->at(p);
      }
    }
    // Its writer may have died between the checkpoint and the offline commit: the rows it covers go in now.
    if (name == "offline" && offline_ != nullptr) FRESHET_RETURN_IF_ERROR(offline_->PublishFrom(position, found.member));
  }
  std::vector<std::string> notes;
  std::vector<uint32_t> streams(partitions.begin(), partitions.end());
  {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    Status decoded = lanes_.DecodeStreams(checkpoint.engine_state, streams, &notes);
    if (!decoded.ok()) return Status::Invalid(where + " cannot be restored: " + decoded.message());
  }
  for (const std::string& n : notes) std::fprintf(stderr, "freshet run: note: %s\n", n.c_str());
  if (redis_ != nullptr) {
    // Redis may lack the last writes of the process that had them.
    for (uint32_t stream : streams) {
      const PipelineLanes::Lane* lane = lanes_.Find(stream);
      if (lane == nullptr) continue;
      const uint64_t index = lanes_.IndexOf(stream);
      for (uint32_t e = 0; e < lane->engine.entity_count(); ++e) changed_.emplace_back(index << 32 | e, 0);
    }
    UpsertChanged();
  }
  SetStateGauges();
  return Status::Ok();
}

void Runtime::Impl::OnRevoked(const std::vector<int32_t>& partitions, bool lost) {
  const auto start = std::chrono::steady_clock::now();
  // Lost (librdkafka's word for a revocation after the group moved on without this member: a missed session
  // timeout, or a failed commit): when no other process has claimed them yet, they are handed over like revoked
  // ones; otherwise their state is not written again (the new owner's claim fences it).
  const bool claimed_elsewhere = std::any_of(partitions.begin(), partitions.end(), [&](int32_t p) {
    auto it = epochs_.find(p);
    return it != epochs_.end() && !group_->StillOwns(p, it->second);
  });
  if (lost && claimed_elsewhere) {
    std::fprintf(stderr, "freshet run: warning: partitions were lost (this process missed its session timeout) and "
                         "another process claimed them; their events since the last checkpoint are read again by "
                         "their new owner\n");
    for (int32_t p : partitions) epochs_.erase(p);
  } else {
    // Handed over in order: checkpointed (state, offline rows and offsets), then given up.
    Status written = Checkpoint(/*wait=*/true);
    if (!written.ok()) {
      std::fprintf(stderr, "freshet run: warning: the checkpoint of revoked partitions failed (%s); their new owner "
                           "restores an older checkpoint and reads the events since again\n", written.message().c_str());
    }
    if (redis_ != nullptr) (void)redis_->Flush(5000);
  }
  DropPartitions(partitions);
  std::fprintf(stderr, "freshet run: group revoked %zu partition(s); handed over in %.3f s\n", partitions.size(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
}

void Runtime::Impl::DropPartitions(const std::vector<int32_t>& partitions) {
  std::unique_lock<std::shared_mutex> lock(mutex_);
  for (int32_t p : partitions) {
    lanes_.Remove(static_cast<uint32_t>(p));
    epochs_.erase(p);
  }
}

std::map<int32_t, uint64_t> Runtime::Impl::CurrentClaims() {
  for (auto it = epochs_.begin(); it != epochs_.end();) {
    if (group_->StillOwns(it->first, it->second)) {
      ++it;
      continue;
    }
    // Fenced: another process claimed it. This checkpoint does not name it, so its state here is never restored.
    SetHealthReason("fenced", "partition " + std::to_string(it->first) + " was claimed by another process of the "
                              "group while this one still read it (a missed session timeout?); its state here is "
                              "no longer checkpointed");
    it = epochs_.erase(it);
  }
  return epochs_;
}

// One shard's share of a chunk of records: the records of its lanes, in order. Runs on the shard's thread, so
// it touches only its lanes, its ShardOutput and the thread-safe sinks (offline rows, dead letters).
void Runtime::Impl::ProcessShard(size_t shard, std::span<const SourceRecord> records, std::span<const uint32_t> lane_of,
                                 int64_t wall_ms, const SharedLines* lines, size_t first_line, ShardOutput& out) {
  const bool partitioned = lanes_.partitioned();
  // Joined tables: their slots for this shard's records are prefetched some records ahead (table/table_set.h).
  const TableSet* tables = table_feed_ != nullptr && !spec_.joins.empty() ? &table_feed_->tables() : nullptr;
  std::optional<TableSet::PrefetchBatch> prefetch;
  if (tables != nullptr) prefetch.emplace(*tables);
  for (size_t k = 0; k < records.size(); ++k) {
    if (tables != nullptr) {
      PrefetchAhead(0, k, records.size(), [&](size_t j) {
        if (lane_of[j] % shards_.size() == shard) prefetch->Add(records[j].text);
      });
      prefetch->Issue();
    }
    if (lane_of[k] % shards_.size() != shard) continue;
    const SourceRecord& record = records[k];
    PipelineLanes::Lane& lane = lanes_.at(lane_of[k]);
    const RecordPlace place{static_cast<int64_t>(record.end.stream), static_cast<int64_t>(record.end.offset) - 1};
    auto dead_letter = [&](std::string_view reason, std::string_view raw) {
      std::lock_guard<std::mutex> lock(dead_letters_mutex_);
      if (partitioned) {
        dead_letters_.WriteAt(place.partition, place.offset, reason, raw);
      } else {
        dead_letters_.Write(record.line_number, reason, raw);
      }
    };
    if (record.too_long) {
      ++lane.counters.lines_read;
      ++lane.counters.rejected;
      ++out.rejected;
      dead_letter(LineTooLongReason(), "");
      continue;
    }
    if (chunk_lookups_ != nullptr) lane.path.SetLookups(&chunk_lookups_[k]);
    const RecordPlace* at = partitioned ? &place : nullptr;
    const EventPath::Outcome outcome = lines != nullptr
                                           ? lane.path.ProcessShared(*lines, first_line + k, record.text, wall_ms, at)
                                           : lane.path.Process(record.text, record.capacity, wall_ms, at);
    switch (outcome) {
      case EventPath::Outcome::kRejected:
        ++out.rejected;
        dead_letter(lane.path.reason(), record.text);
        continue;
      case EventPath::Outcome::kLate:
        ++out.late;
        dead_letter("late", record.text);
        continue;
      case EventPath::Outcome::kDuplicate:
        ++out.duplicates;
        dead_letter("duplicate", record.text);
        continue;
      case EventPath::Outcome::kNotForSet: continue;
      case EventPath::Outcome::kAccepted: break;
    }
    out.arrivals.push_back(record.arrival_ns);
    if (redis_ != nullptr) out.changed.emplace_back(uint64_t{lane_of[k]} << 32 | lane.path.entity(), record.arrival_ns);
    ++out.accepted;
  }
}

Status Runtime::Impl::PollTables() {
  last_table_poll_ms_ = WallClockMs();
  std::vector<std::string> warnings;
  Status polled;
  {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    polled = table_feed_->Poll(lanes_, offline_.get(), last_table_poll_ms_, &warnings);
  }
  for (const std::string& w : warnings) std::fprintf(stderr, "freshet run: warning: %s\n", w.c_str());
  return polled;
}

void Runtime::Impl::ResolveLookups(const std::vector<SourceRecord>& batch) {
  std::vector<LookupStage::Line> lines(batch.size());
  for (size_t k = 0; k < batch.size(); ++k) {
    if (!batch[k].too_long) lines[k] = {batch[k].text, batch[k].capacity};
  }
  lookup_stage_->Resolve(lines, &batch_lookups_);
}

Status Runtime::Impl::ProcessBatch(std::vector<SourceRecord>& batch, const SharedLines* lines) {
  FRESHET_CHECK(lines == nullptr || (!sharded_input_ && lines->size() == batch.size()));
  // Lookups first, without the lock (lookups of features go on meanwhile); then the batch in input order.
  if (lookup_stage_) ResolveLookups(batch);
  size_t k = 0;
  std::vector<int64_t> arrivals;
  arrivals.reserve(batch.size());
  uint64_t accepted = 0, rejected = 0, late = 0, duplicates = 0;
  const int64_t batch_wall_ms = WallClockMs();
  std::vector<uint32_t> lane_of;
  if (sharded_input_) sharded_input_->Parse(batch);  // All of it at once, without the lock.
  const size_t per_lock = (sharded_input_ ? kShardedRecordsPerLock : kRecordsPerLock) * shards_.size();
  while (k < batch.size()) {
    const size_t end = std::min(batch.size(), k + per_lock);
    {
      std::unique_lock<std::shared_mutex> lock(mutex_);
      const std::span<const SourceRecord> records(batch.data() + k, end - k);
      for (ShardOutput& out : shards_) out = ShardOutput{};
      if (sharded_input_) {
        sharded_input_->Process(k, end, batch_wall_ms, redis_ != nullptr,
                                [&](const SourceRecord& record, std::string_view reason) {
                                  dead_letters_.Write(record.line_number, reason, record.text);
                                }, &shards_[0]);
      } else {
        lane_of.resize(end - k);
        for (size_t r = k; r < end; ++r) lane_of[r - k] = lanes_.IndexOf(static_cast<uint32_t>(batch[r].end.stream));
        if (lookup_stage_) chunk_lookups_ = batch_lookups_.data() + k;
        RunShards([&](size_t shard) { ProcessShard(shard, records, lane_of, batch_wall_ms, lines, k, shards_[shard]); });
      }
      for (ShardOutput& out : shards_) {
        accepted += out.accepted;
        rejected += out.rejected;
        late += out.late;
        duplicates += out.duplicates;
        arrivals.insert(arrivals.end(), out.arrivals.begin(), out.arrivals.end());
        changed_.insert(changed_.end(), out.changed.begin(), out.changed.end());
      }
      k = end;
    }
    if (redis_ != nullptr) UpsertChanged();
  }
  ExpireIdle();
  // Dead letters become readable with the batch that produced them, not at the next checkpoint.
  if (rejected + late + duplicates > 0) dead_letters_.Flush();
  // Visible now: every lookup from here on sees these events.
  const int64_t now_ns = SteadyClockNs();
  const int64_t now_s = WallClockMs() / 1000;
  for (int64_t arrival : arrivals) {
    const double seconds = static_cast<double>(now_ns - arrival) / 1e9;
    freshness_->Observe(seconds);
    slo_window_->Observe(seconds, now_s);
  }
  lines_in_->Increment(batch.size());
  accepted_->Increment(accepted);
  rejected_total_->Increment(rejected);
  late_->Increment(late);
  duplicate_->Increment(duplicates);
  SetStateGauges();
  return Status::Ok();
}

void Runtime::Impl::RegisterRedisMetrics() {
  RedisWriter& redis = *redis_;  // Lives until the runtime ends, after the HTTP server that scrapes.
  const auto counter = [&](const char* name, const char* help, uint64_t RedisWriterMetrics::*field) {
    metrics_.SetCounterFunction(name, help, [&redis, field] { return static_cast<double>(redis.Metrics().*field); });
  };
  counter("freshet_redis_entities_written_total", "Entities written to Redis.", &RedisWriterMetrics::entities_written);
  counter("freshet_redis_batches_written_total", "Pipelined batches written to Redis.",
          &RedisWriterMetrics::batches_written);
  counter("freshet_redis_written_bytes_total", "State, key and field bytes in the batches written to Redis.",
          &RedisWriterMetrics::bytes_written);
  counter("freshet_redis_write_errors_total", "Failed Redis batches (kept and retried).",
          &RedisWriterMetrics::write_errors);
  counter("freshet_redis_connect_errors_total", "Failed Redis connection attempts.",
          &RedisWriterMetrics::connect_errors);
  counter("freshet_redis_resyncs_total",
          "Rewrites of every entity to Redis after a reconnect or after Redis lost its data.",
          &RedisWriterMetrics::resyncs_requested);
  counter("freshet_redis_data_lost_total",
          "Times Redis was found without the sync marker while in sync: flushed, or restarted empty.",
          &RedisWriterMetrics::marker_losses);
  metrics_.SetGaugeFunction("freshet_redis_connected",
                            "1 while the last Redis connect, write or check (every second) succeeded.",
                            [&redis] { return redis.Health().connected ? 1.0 : 0.0; });
  metrics_.SetGaugeFunction("freshet_redis_in_sync",
                            "1 while Redis holds every entity (the sync marker is written and no resync is due).",
                            [&redis] { return redis.Health().in_sync ? 1.0 : 0.0; });
  metrics_.SetGaugeFunction("freshet_redis_pending_entities", "Changed entities waiting to be written to Redis.",
                            [&redis] { return static_cast<double>(redis.Health().pending_entities); });
  const auto histogram = [&](const char* name, const char* help, LatencyHistogram RedisWriterMetrics::*field) {
    const std::vector<double> bounds = (redis.Metrics().*field).upper_bounds_seconds;
    metrics_.SetHistogramFunction(name, help, bounds, [&redis, field] {
      const LatencyHistogram h = redis.Metrics().*field;
      Histogram::Snapshot snapshot{.cumulative = h.cumulative_counts, .count = h.count, .sum = h.sum_seconds};
      snapshot.cumulative.push_back(h.count);  // The +Inf bucket.
      return snapshot;
    });
  };
  histogram("freshet_redis_write_duration_seconds", "Time to write a pipelined batch to Redis (send to EXEC reply).",
            &RedisWriterMetrics::batch_latency);
  histogram("freshet_redis_freshness_seconds", "Time from an event's arrival until Redis holds its effect.",
            &RedisWriterMetrics::freshness);
}

void Runtime::Impl::UpdateKafkaStatus() {
  const int64_t now = WallClockMs();
  if (now - last_partition_metrics_ms_ < 500) return;
  last_partition_metrics_ms_ = now;
  const std::vector<KafkaPartitionStatus> partitions = kafka_->partitions();
  const SourceSpec& source = *spec_.source;
  std::optional<std::string> problem = kafka_->problem();
  if (!problem) {
    if (std::optional<int64_t> since = kafka_->unassigned_since_ns();
        since && SteadyClockNs() - *since > source.max_rebalance_ms * 1'000'000) {
      problem = "no partition of topic '" + source.topic + "' has been assigned to this process for more than " +
                FormatDuration(source.max_rebalance_ms) + " (joining group '" + source.group +
                "', a rebalance that does not finish, or more members than partitions)";
    }
  }
  for (const KafkaPartitionStatus& p : partitions) {
    const int64_t lag = p.high_watermark >= 0 && p.next_offset >= 0 ? p.high_watermark - p.next_offset : 0;
    if (!problem && source.max_lag > 0 && lag > source.max_lag) {
      problem = "partition " + std::to_string(p.partition) + " of topic '" + source.topic + "' lags " +
                std::to_string(lag) + " messages behind its end, more than source.max_lag " +
                std::to_string(source.max_lag);
    }
  }
  SetHealthReason("kafka", problem);
  metrics_.GetGauge("freshet_kafka_assigned_partitions", "Partitions of the topic assigned to this process.")
      .Set(static_cast<double>(partitions.size()));
  Counter& rebalances = metrics_.GetCounter("freshet_kafka_rebalances_total",
                                            "Group rebalances this process took part in (assignments and revocations).");
  if (const uint64_t seen = kafka_->rebalances(); seen > rebalances.value()) rebalances.Increment(seen - rebalances.value());
  for (const KafkaPartitionStatus& p : partitions) {
    const MetricLabels labels = {{"partition", std::to_string(p.partition)}};
    metrics_.GetGauge("freshet_kafka_consumed_offset", "Offset of the next message to process, per partition.", labels)
        .Set(static_cast<double>(p.next_offset));
    metrics_.GetGauge("freshet_kafka_committed_offset", "Offset last committed to the group (after a checkpoint).", labels)
        .Set(static_cast<double>(p.committed));
    if (p.high_watermark >= 0 && p.next_offset >= 0) {
      metrics_.GetGauge("freshet_kafka_lag_messages", "Messages in the partition not yet processed.", labels)
          .Set(static_cast<double>(std::max<int64_t>(0, p.high_watermark - p.next_offset)));
    }
    const PipelineLanes::Lane* lane = lanes_.Find(static_cast<uint32_t>(p.partition));
    const int64_t newest = lane != nullptr ? lane->engine.max_time_ms() : std::numeric_limits<int64_t>::min();
    if (newest != std::numeric_limits<int64_t>::min()) {
      metrics_.GetGauge("freshet_kafka_event_time_lag_seconds",
                        "Wall clock minus the newest accepted event time of the partition: the processing delay "
                        "for live traffic, the data's age for replayed history.",
                        labels)
          .Set(static_cast<double>(now - newest) / 1000.0);
    }
  }
}

void Runtime::Impl::SetStateGauges() {
  size_t ids = 0;
  for (const PipelineLanes::Lane* lane : lanes_.counting_lanes()) ids += lane->dedup ? lane->dedup->size() : 0;
  // The engines count skips (restored with the checkpoint); the counters follow their sum over the lanes.
  for (const SkipCounter& c : skipped_) {
    uint64_t skipped = 0;
    for (size_t l = 0; l < lanes_.size(); ++l) skipped += lanes_.at(l).engine.counters().skipped[c.feature][c.reason];
    if (skipped > c.counter->value()) c.counter->Increment(skipped - c.counter->value());
  }
  entities_->Set(static_cast<double>(lanes_.entity_count()));
  uint64_t expired = 0;
  for (size_t l = 0; l < lanes_.size(); ++l) expired += lanes_.at(l).engine.counters().expired;
  if (expired > expired_->value()) expired_->Increment(expired - expired_->value());
  const int64_t low_ms = lanes_.low_watermark_ms();
  watermark_->Set(low_ms == std::numeric_limits<int64_t>::min() ? 0.0 : static_cast<double>(low_ms) / 1000.0);
  dedup_ids_->Set(static_cast<double>(ids));
}

void Runtime::Impl::ExpireIdle() {
  if (!spec_.ttl_ms) return;
  const int64_t step_ms = std::max<int64_t>(1, *spec_.ttl_ms / 8);
  std::vector<uint32_t> dropped;
  std::unique_lock<std::shared_mutex> lock(mutex_);
  for (size_t l = 0; l < lanes_.size(); ++l) {
    PipelineLanes::Lane& lane = lanes_.at(l);
    const int64_t low_ms = lane.engine.low_watermark_ms();
    if (low_ms == std::numeric_limits<int64_t>::min() || low_ms < lane.next_expiry_sweep_ms) continue;
    lane.next_expiry_sweep_ms = low_ms + step_ms;
    dropped.clear();
    lane.engine.ExpireIdle(&dropped);
    // A freed index starts again from no event (the next entity that takes it).
    for (uint32_t e : dropped) {
      if (e < lane.counters.newest_event_ms.size()) lane.counters.newest_event_ms[e] = std::numeric_limits<int64_t>::min();
    }
  }
}

// Hands every entity in changed_ to the Redis writer: its state blob and its features as of its newest
// event. The writer coalesces per entity and writes in the background.
void Runtime::Impl::UpsertChanged() {
  std::sort(changed_.begin(), changed_.end());
  std::string blob;
  for (size_t k = 0; k < changed_.size(); ++k) {
    if (k > 0 && changed_[k - 1].first == changed_[k].first) continue;  // Sorted: the first has the earliest arrival.
    const PipelineLanes::Lane& lane = lanes_.at(changed_[k].first >> 32);
    const FeatureEngine& engine = lane.engine;
    const std::vector<int64_t>& newest = lane.counters.newest_event_ms;
    const uint32_t entity = static_cast<uint32_t>(changed_[k].first);
    if (!engine.entity_live(entity)) continue;  // Expired since: Redis lets its keys expire (PEXPIRE ttl).
    blob.clear();
    ByteWriter out(&blob);
    std::vector<std::pair<std::string, std::string>> fields;
    {
      std::shared_lock<std::shared_mutex> lock(mutex_);
      WriteRedisStateHeader(newest[entity], engine.low_watermark_ms(), out);
      engine.SaveEntity(entity, out);
      engine.QueryIndex(entity, newest[entity], &values_);
      for (size_t f = 0; f < values_.size(); ++f) {
        std::string text;
        if (AppendRedisFeatureText(values_[f], &text)) fields.emplace_back(spec_.features[f].name, std::move(text));
      }
    }
    redis_->Upsert(engine.entity_name(entity), blob, std::move(fields), newest[entity], changed_[k].second);
  }
  changed_.clear();
}

void Runtime::Impl::SetHealthReason(const std::string& key, std::optional<std::string> reason) {
  std::lock_guard<std::mutex> lock(health_mutex_);
  auto it = std::find_if(health_by_key_.begin(), health_by_key_.end(), [&](const auto& p) { return p.first == key; });
  if (reason) {
    if (it == health_by_key_.end()) health_by_key_.emplace_back(key, *reason);
    else it->second = *reason;
  } else if (it != health_by_key_.end()) {
    health_by_key_.erase(it);
  }
  health_reasons_.clear();
  for (const auto& [k, r] : health_by_key_) health_reasons_.push_back(r);
}

void Runtime::Impl::CheckSlo() {
  if (!spec_.freshness_slo) return;
  std::optional<double> p99 = slo_window_->P99(WallClockMs() / 1000);
  const bool breached = p99 && *p99 * 1000.0 > static_cast<double>(spec_.freshness_slo->p99_ms);
  slo_breached_->Set(breached ? 1 : 0);
  if (breached && !slo_breach_logged_) {
    std::fprintf(stderr, "freshet run: warning: freshness SLO breached: p99 %.3f s over the last %s, target %s\n", *p99,
                 FormatDuration(spec_.freshness_slo->window_ms).c_str(),
                 FormatDuration(spec_.freshness_slo->p99_ms).c_str());
  }
  slo_breach_logged_ = breached;
}

// ---- The web console ----
// Figures come from the runtime's own counters and gauges (not from /metrics text, whose names may change).

namespace {

std::string ValueJsonText(const Value& value, bool json_list) {
  std::string out;
  JsonWriter json(&out);
  json.FeatureValue(value, json_list);
  return out;
}

void OptionalDouble(JsonWriter& json, std::string_view key, std::optional<double> value) {
  json.Key(key);
  if (value && std::isfinite(*value)) json.Double(*value);
  else json.Null();
}

// The upper bound of the bucket holding the q-quantile of a latency histogram, in seconds; nullopt when empty.
std::optional<double> HistogramQuantile(const LatencyHistogram& h, double q) {
  if (h.count == 0) return std::nullopt;
  const uint64_t rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(h.count)));
  for (size_t b = 0; b < h.cumulative_counts.size(); ++b) {
    if (h.cumulative_counts[b] >= rank) return h.upper_bounds_seconds[b];
  }
  return std::nullopt;
}

std::string WindowShortText(const WindowSpec& w) {
  switch (w.kind) {
    case WindowKind::kLifetime: return "lifetime";
    case WindowKind::kSliding:
      return "sliding " + FormatDuration(w.size_ms) + (w.slide_ms != 0 ? " every " + FormatDuration(w.slide_ms) : "");
    case WindowKind::kTumbling: return "tumbling " + FormatDuration(w.size_ms);
    case WindowKind::kSession: return "session, gap " + FormatDuration(w.gap_ms);
  }
  return "";
}

}  // namespace

void Runtime::Impl::SampleConsole() {
  const int64_t now = WallClockMs();
  std::lock_guard<std::mutex> lock(console_mutex_);
  if (!console_history_.empty() && now / 1000 == console_history_.back().wall_ms / 1000) return;
  ConsoleSample sample;
  sample.wall_ms = now;
  sample.in = lines_in_->value();
  sample.accepted = accepted_->value();
  sample.rejected = rejected_total_->value();
  sample.late = late_->value();
  sample.duplicates = duplicate_->value();
  sample.watermark_lag_seconds = watermark_lag_->value();
  sample.freshness_p50_seconds = slo_window_->Quantile(0.5, now / 1000);
  sample.freshness_p99_seconds = slo_window_->Quantile(0.99, now / 1000);
  console_history_.push_back(sample);
  while (console_history_.size() > kConsoleHistorySeconds) console_history_.pop_front();
}

Result<std::string> Runtime::Impl::ConsoleJson(std::string_view view) const {
  if (view == "pipeline") return ConsolePipelineJson();
  if (view == "features") return ConsoleFeaturesJson();
  if (view == "dead-letters") return ConsoleDeadLettersJson();
  return Status::NotFound("no console view '" + std::string(view) + "'");
}

std::string Runtime::Impl::ConsolePipelineJson() const {
  const int64_t now = WallClockMs();
  std::string body;
  JsonWriter json(&body);
  json.BeginObject();
  json.Key("spec").String(spec_.name);
  json.Key("source").String(spec_.source ? spec_.source->type : "none");
  json.Key("now_ms").Int(now);
  const HealthReport health = Health();
  json.Key("health").BeginObject().Key("ok").Bool(health.ok).Key("reasons").BeginArray();
  for (const std::string& reason : health.reasons) json.String(reason);
  json.EndArray().EndObject();
  json.Key("totals").BeginObject();
  json.Key("in").Uint(lines_in_->value()).Key("accepted").Uint(accepted_->value());
  json.Key("rejected").Uint(rejected_total_->value()).Key("late").Uint(late_->value());
  json.Key("duplicates").Uint(duplicate_->value());
  json.EndObject();
  int64_t low_watermark_ms = std::numeric_limits<int64_t>::min();
  {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    low_watermark_ms = lanes_.low_watermark_ms();
  }
  json.Key("watermark_ms");
  if (spec_.watermark && low_watermark_ms != std::numeric_limits<int64_t>::min()) {
    json.Int(low_watermark_ms);
  } else {
    json.Null();  // No watermark (or no event yet): nothing is settled.
  }
  json.Key("watermark_lag_seconds").Double(watermark_lag_->value());
  json.Key("freshness").BeginObject();
  OptionalDouble(json, "p50_seconds", slo_window_->Quantile(0.5, now / 1000));
  OptionalDouble(json, "p99_seconds", slo_window_->Quantile(0.99, now / 1000));
  OptionalDouble(json, "slo_p99_seconds",
                 spec_.freshness_slo ? std::optional<double>(spec_.freshness_slo->p99_ms / 1000.0) : std::nullopt);
  json.Key("window").String(FormatDuration(spec_.freshness_slo ? spec_.freshness_slo->window_ms : 60000));
  json.EndObject();
  json.Key("checkpoint").BeginObject();
  json.Key("age_seconds").Double(static_cast<double>(now - last_checkpoint_ms_) / 1000.0);
  json.Key("duration_seconds").Double(console_checkpoint_seconds_.load());
  json.Key("size_bytes").Double(checkpoint_bytes_->value());
  json.Key("written").Uint(checkpoints_total_->value());
  json.Key("failures").Uint(checkpoint_failures_->value());
  json.Key("interval_seconds").Double(spec_.checkpoint.interval_ms / 1000.0);
  json.EndObject();
  json.Key("state").BeginObject();
  json.Key("entities").Double(entities_->value()).Key("bytes").Double(state_bytes_->value());
  json.Key("recent_events").Double(recent_events_->value()).Key("dedup_ids").Double(dedup_ids_->value());
  json.EndObject();
  json.Key("online").BeginObject().Key("type").String(spec_.online.type);
  if (redis_ != nullptr) {
    const RedisWriterHealth h = redis_->Health();
    const RedisWriterMetrics m = redis_->Metrics();
    json.Key("address").String(spec_.online.host + ":" + std::to_string(spec_.online.port));
    json.Key("connected").Bool(h.connected).Key("in_sync").Bool(h.in_sync);
    json.Key("pending_entities").Uint(h.pending_entities).Key("last_error").String(h.last_error);
    json.Key("entities_written").Uint(m.entities_written).Key("write_errors").Uint(m.write_errors);
    OptionalDouble(json, "write_mean_seconds",
                   m.batch_latency.count > 0
                       ? std::optional<double>(m.batch_latency.sum_seconds / static_cast<double>(m.batch_latency.count))
                       : std::nullopt);
    OptionalDouble(json, "write_p99_seconds", HistogramQuantile(m.batch_latency, 0.99));
  }
  json.EndObject();
  json.Key("kafka").BeginArray();
  if (kafka_ != nullptr) {
    for (const KafkaPartitionStatus& p : kafka_->partitions()) {
      json.BeginObject().Key("partition").Int(p.partition).Key("consumed").Int(p.next_offset);
      json.Key("committed").Int(p.committed).Key("lag");
      if (p.high_watermark >= 0 && p.next_offset >= 0) json.Int(std::max<int64_t>(0, p.high_watermark - p.next_offset));
      else json.Null();
      json.EndObject();
    }
  }
  json.EndArray();
  // Per second: the events of each kind over the second before each sample, and the lag and freshness then.
  json.Key("history").BeginArray();
  {
    std::lock_guard<std::mutex> lock(console_mutex_);
    for (size_t k = 1; k < console_history_.size(); ++k) {
      const ConsoleSample& a = console_history_[k - 1];
      const ConsoleSample& b = console_history_[k];
      const double seconds = std::max(0.001, static_cast<double>(b.wall_ms - a.wall_ms) / 1000.0);
      json.BeginObject().Key("t_ms").Int(b.wall_ms);
      json.Key("in").Double(static_cast<double>(b.in - a.in) / seconds);
      json.Key("accepted").Double(static_cast<double>(b.accepted - a.accepted) / seconds);
      json.Key("rejected").Double(static_cast<double>(b.rejected - a.rejected) / seconds);
      json.Key("late").Double(static_cast<double>(b.late - a.late) / seconds);
      json.Key("duplicates").Double(static_cast<double>(b.duplicates - a.duplicates) / seconds);
      json.Key("watermark_lag_seconds").Double(b.watermark_lag_seconds);
      OptionalDouble(json, "freshness_p50_seconds", b.freshness_p50_seconds);
      OptionalDouble(json, "freshness_p99_seconds", b.freshness_p99_seconds);
      json.EndObject();
    }
  }
  json.EndArray();
  json.EndObject();
  return body;
}

std::string Runtime::Impl::ConsoleFeaturesJson() const {
  constexpr size_t kSample = 2000;  // Entities whose current values make the histograms.
  constexpr size_t kBins = 10;
  const int64_t now = WallClockMs();
  const size_t features = spec_.features.size();
  std::vector<std::vector<double>> numbers(features);
  std::vector<std::map<std::string, uint64_t>> texts(features);
  std::vector<uint64_t> with_value(features, 0);
  size_t sampled = 0;
  size_t total = 0;
  {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    total = lanes_.entity_count();
    const size_t step = std::max<size_t>(1, total / kSample);
    std::vector<Value> values;
    size_t seen = 0;
    for (size_t l = 0; l < lanes_.size(); ++l) {
      const FeatureEngine& engine = lanes_.at(l).engine;
      for (uint32_t e = 0; e < engine.entity_count(); ++e) {
        if (!engine.entity_live(e) || seen++ % step != 0 || sampled >= kSample) continue;
        ++sampled;
        engine.QueryIndex(e, now, &values);
        for (size_t f = 0; f < features; ++f) {
          const Value& v = values[f];
          const bool empty = v.is_missing() || v.is_null() ||
                             (v.type == ValueType::kInt && v.i == 0 &&
                              (spec_.features[f].agg == AggKind::kCount || spec_.features[f].agg == AggKind::kSum ||
                               spec_.features[f].agg == AggKind::kCountDistinct ||
                               spec_.features[f].agg == AggKind::kApproxCountDistinct));
          if (!empty) ++with_value[f];
          if (v.is_number()) numbers[f].push_back(v.as_double());
          else if (v.type == ValueType::kString) ++texts[f][std::string(v.s)];
          else if (v.type == ValueType::kBool) ++texts[f][v.b ? "true" : "false"];
        }
      }
    }
  }
  const std::vector<SkewMonitor::Check> skew_history =
      skew_monitor_ != nullptr ? skew_monitor_->History() : std::vector<SkewMonitor::Check>();
  std::string body;
  JsonWriter json(&body);
  json.BeginObject();
  json.Key("as_of_ms").Int(now);
  json.Key("skew_interval_ms").Int(spec_.skew.interval_ms);
  json.Key("entities").Uint(total).Key("sampled").Uint(sampled);
  json.Key("features").BeginArray();
  for (size_t f = 0; f < features; ++f) {
    const FeatureSpec& spec = spec_.features[f];
    json.BeginObject();
    json.Key("name").String(spec.name).Key("aggregation").String(AggKindName(spec.agg));
    json.Key("field");
    if (spec.field.empty()) json.Null();
    else json.String(spec.field);
    json.Key("where");
    if (spec.where_text.empty()) json.Null();
    else json.String(spec.where_text);
    json.Key("window").String(WindowShortText(spec.window));
    uint64_t skipped = 0;  // Over every reason.
    for (const SkipCounter& c : skipped_) {
      if (c.feature == f) skipped += c.counter->value();
    }
    json.Key("skipped_fields").Uint(skipped);
    json.Key("with_value").Uint(with_value[f]);
    json.Key("share_with_value").Double(sampled == 0 ? 0.0 : static_cast<double>(with_value[f]) / static_cast<double>(sampled));
    // The skew checks of `skew.interval` (run/skew_monitor.h): the latest, and the mismatch rate over time.
    json.Key("skew").BeginArray();
    for (const SkewMonitor::Check& check : skew_history) {
      if (f >= check.features.size()) continue;
      const FeatureSkew& skew = check.features[f];
      json.BeginObject().Key("t_ms").Int(check.wall_ms).Key("compared").Uint(skew.compared);
      json.Key("mismatch_rate").Double(skew.mismatch_rate());
      OptionalDouble(json, "psi", skew.psi);
      json.Key("breached").Bool(skew.breached).EndObject();
    }
    json.EndArray();
    json.Key("histogram").BeginArray();
    if (!numbers[f].empty()) {
      const auto [lo, hi] = std::minmax_element(numbers[f].begin(), numbers[f].end());
      const double low = *lo, high = *hi;
      const double width = high > low ? (high - low) / kBins : 1.0;
      std::vector<uint64_t> counts(high > low ? kBins : 1, 0);
      for (double x : numbers[f]) counts[std::min(counts.size() - 1, static_cast<size_t>((x - low) / width))]++;
      for (size_t b = 0; b < counts.size(); ++b) {
        json.BeginObject().Key("from").Double(low + width * static_cast<double>(b));
        json.Key("to").Double(high > low ? low + width * static_cast<double>(b + 1) : high);
        json.Key("count").Uint(counts[b]).EndObject();
      }
    } else {
      std::vector<std::pair<uint64_t, std::string>> top;
      for (const auto& [text, count] : texts[f]) top.emplace_back(count, text);
      std::sort(top.begin(), top.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
      if (top.size() > kBins) top.resize(kBins);
      for (const auto& [count, text] : top) json.BeginObject().Key("value").String(text).Key("count").Uint(count).EndObject();
    }
    json.EndArray();
    json.EndObject();
  }
  json.EndArray();
  json.EndObject();
  return body;
}

std::string Runtime::Impl::ConsoleDeadLettersJson() const {
  constexpr size_t kTailBytes = 256 << 10;  // The latest letters are read from the end of the file.
  constexpr size_t kLatest = 50;
  std::vector<std::string> lines;
  if (std::FILE* file = std::fopen(dead_letter_path_.c_str(), "rb")) {
    std::fseek(file, 0, SEEK_END);
    const long size = std::ftell(file);
    const long from = std::max<long>(0, size - static_cast<long>(kTailBytes));
    std::fseek(file, from, SEEK_SET);
    std::string tail(static_cast<size_t>(size - from), '\0');
    tail.resize(std::fread(tail.data(), 1, tail.size(), file));
    std::fclose(file);
    size_t start = from > 0 ? tail.find('\n') + 1 : 0;  // A cut first line is not shown.
    while (start < tail.size()) {
      size_t end = tail.find('\n', start);
      if (end == std::string::npos) break;  // Not yet complete.
      lines.push_back(tail.substr(start, end - start));
      start = end + 1;
    }
  }
  std::map<std::string, uint64_t> recent_reasons;
  simdjson::dom::parser parser;
  std::string body;
  JsonWriter json(&body);
  json.BeginObject();
  json.Key("file").String(dead_letter_path_);
  json.Key("totals").BeginObject();
  json.Key("rejected").Uint(rejected_total_->value()).Key("late").Uint(late_->value());
  json.Key("duplicates").Uint(duplicate_->value());
  json.EndObject();
  json.Key("latest").BeginArray();
  const size_t first = lines.size() > kLatest ? lines.size() - kLatest : 0;
  for (size_t k = 0; k < lines.size(); ++k) {
    simdjson::dom::element letter;
    if (parser.parse(lines[k]).get(letter) != simdjson::SUCCESS) continue;
    std::string_view reason, raw;
    if (letter["reason"].get_string().get(reason) != simdjson::SUCCESS) continue;
    ++recent_reasons[std::string(reason)];
    if (k < first) continue;
    json.BeginObject().Key("reason").String(reason);
    uint64_t line = 0;
    json.Key("line");
    if (letter["line"].get_uint64().get(line) == simdjson::SUCCESS) json.Uint(line);
    else json.Null();
    json.Key("raw").String(letter["raw"].get_string().get(raw) == simdjson::SUCCESS ? raw : std::string_view());
    json.EndObject();
  }
  json.EndArray();
  json.Key("recent_by_reason").BeginObject();
  for (const auto& [reason, count] : recent_reasons) json.Key(reason).Uint(count);
  json.EndObject();
  json.Key("history").BeginArray();
  {
    std::lock_guard<std::mutex> lock(console_mutex_);
    for (size_t k = 1; k < console_history_.size(); ++k) {
      const ConsoleSample& a = console_history_[k - 1];
      const ConsoleSample& b = console_history_[k];
      json.BeginObject().Key("t_ms").Int(b.wall_ms);
      json.Key("rejected").Uint(b.rejected - a.rejected).Key("late").Uint(b.late - a.late);
      json.Key("duplicates").Uint(b.duplicates - a.duplicates).EndObject();
    }
  }
  json.EndArray();
  json.EndObject();
  return body;
}

Result<std::string> Runtime::Impl::ExplainJson(std::string_view entity, int feature, int64_t at_ms) const {
  if (!console_offline_paths_) {
    return Status::NotFound("explanations read the offline store, which this spec turns off (offline: {enabled: "
                            "false}); enable it, or run `freshet explain --events FILE`");
  }
  // Each explanation replays the events table: a few at a time, so that clicks (or a script) cannot take every
  // blocking thread and the disk from ingest and lookups.
  if (explains_running_.fetch_add(1) >= kMaxExplainsAtOnce) {
    explains_running_.fetch_sub(1);
    return Status::IoError("the server is busy explaining other values (" + std::to_string(kMaxExplainsAtOnce) +
                           " at a time); retry in a moment");
  }
  struct Release {
    std::atomic<int>& running;
    ~Release() { running.fetch_sub(1); }
  } release{explains_running_};
  FRESHET_ASSIGN_OR_RETURN(std::shared_ptr<ExplainCut> cut, AwaitExplainCut(entity, feature, at_ms));
  ExplainInput input;
  input.events = EventInput::EventsTable(console_offline_paths_->events);
  input.events.seq_below = cut->seq_below;
  input.dead_letter_files = {dead_letter_path_};
  input.dead_letter_bytes = cut->dead_letter_bytes;
  input.series = true;
  FRESHET_ASSIGN_OR_RETURN(Explanation explanation, Explain(spec_, input, std::string(entity), feature, at_ms));
  std::string extra = "\"served\":" + cut->served_json + ",\"served_exact\":" +
                      (cut->served_exact ? "true" : "false") +
                      ",\"agrees\":" + (cut->served_json == explanation.value_json ? "true" : "false") +
                      ",\"covers\":\"every event accepted before this request (a checkpoint taken for it commits them "
                      "to the offline store), with the late and duplicate ones dead-lettered before it; served is what "
                      "a lookup answered at that same moment\"";
  return ExplanationJson(spec_, explanation, extra);
}

Result<std::shared_ptr<Runtime::Impl::ExplainCut>> Runtime::Impl::AwaitExplainCut(std::string_view entity,
                                                                                  int feature, int64_t at_ms) const {
  auto cut = std::make_shared<ExplainCut>();
  cut->entity = std::string(entity);
  cut->feature = feature;
  cut->at_ms = at_ms;
  std::unique_lock<std::mutex> lock(explain_mutex_);
  if (explains_closed_) return Status::IoError("the pipeline is stopping; explanations are no longer answered");
  explains_waiting_.push_back(cut);
  const bool cut_in_time = explain_cv_.wait_for(lock, std::chrono::milliseconds(kExplainCutTimeoutMs),
                                                [&] { return cut->done; });
  if (!cut_in_time) {
    std::erase(explains_waiting_, cut);
    return Status::IoError("no checkpoint could be taken within " + FormatDuration(kExplainCutTimeoutMs) +
                           " to commit the events this explanation covers (a slow disk, or a long checkpoint under "
                           "way); retry in a moment");
  }
  if (!cut->status.ok()) {
    return Status::IoError("the checkpoint that commits the events this explanation covers failed (" +
                           cut->status.message() + "); retry once /health is ok");
  }
  return cut;
}

std::vector<std::shared_ptr<Runtime::Impl::ExplainCut>> Runtime::Impl::CutExplains() {
  std::vector<std::shared_ptr<ExplainCut>> cuts;
  {
    std::lock_guard<std::mutex> lock(explain_mutex_);
    cuts.swap(explains_waiting_);
  }
  const int64_t seq_below = static_cast<int64_t>(lanes_.next_offline_seq());
  // Every batch ends with its dead letters handed to the file, so its length now covers the cut's.
  std::error_code error;
  const uint64_t dead_letter_bytes = std::filesystem::file_size(dead_letter_path_, error);
  for (const std::shared_ptr<ExplainCut>& cut : cuts) {
    cut->seq_below = seq_below;
    cut->dead_letter_bytes = error ? std::numeric_limits<uint64_t>::max() : dead_letter_bytes;
    const std::string_view entities[1] = {cut->entity};
    const int features[1] = {cut->feature};
    cut->status = Lookup(entities, cut->at_ms, features, [&](std::span<const FeatureLookup> lookups) {
      cut->served_json =
          ValueJsonText(lookups[0].values[0], AggGivesJsonList(spec_.features[static_cast<size_t>(cut->feature)].agg));
      cut->served_exact = lookups[0].exact;
    });
  }
  return cuts;
}

void Runtime::Impl::FinishExplains(const std::vector<std::shared_ptr<ExplainCut>>& cuts, const Status& status) {
  if (cuts.empty()) return;
  {
    std::lock_guard<std::mutex> lock(explain_mutex_);
    for (const std::shared_ptr<ExplainCut>& cut : cuts) {
      if (cut->status.ok()) cut->status = status;
      cut->done = true;
    }
  }
  explain_cv_.notify_all();
}

bool Runtime::Impl::ExplainsWantCheckpoint() {
  {
    std::lock_guard<std::mutex> lock(explain_mutex_);
    if (explains_waiting_.empty()) return false;
  }
  if (checkpoint_running_.load()) return false;  // The next turn's checkpoint cuts them.
  if (checkpoint_failed_ms_.load() == 0 && lanes_.next_offline_seq() == seq_at_checkpoint_) {
    FinishExplains(CutExplains(), Status::Ok());
    return false;
  }
  return true;
}

void Runtime::Impl::CloseExplains() {
  std::vector<std::shared_ptr<ExplainCut>> left;
  {
    std::lock_guard<std::mutex> lock(explain_mutex_);
    explains_closed_ = true;
    left.swap(explains_waiting_);
  }
  FinishExplains(left, Status::IoError("the pipeline is stopping"));
}

bool Runtime::Impl::OfflineHeld() {
  // Rows that failed to reach the offline store wait in memory; past a bound, events wait in the source
  // instead (a file, the ingest log, Kafka) until a checkpoint writes the rows.
  const bool held = offline_ != nullptr && offline_->unstaged_bytes() > kOfflineBufferBytes;
  if (held != offline_held_) {
    SetHealthReason("offline_hold", held ? std::optional<std::string>("reading paused: offline rows wait for "
                                                                      "a checkpoint that can write them")
                                         : std::nullopt);
    offline_held_ = held;
  }
  return held;
}

Status Runtime::Impl::AfterPoll(std::vector<SourceRecord>& batch, const SharedLines* lines) {
  if (table_feed_ != nullptr && WallClockMs() - last_table_poll_ms_ >= kTablePollMs) {
    Status tables = PollTables();
    SetHealthReason("tables", !tables.ok() ? std::optional<std::string>(tables.message()) : table_feed_->problem());
  }
  if (!batch.empty()) FRESHET_RETURN_IF_ERROR(ProcessBatch(batch, lines));
  // Also without events, so that the degraded state ends once the failures leave the window.
  if (lookup_stage_) SetHealthReason("lookups", lookup_stage_->Health());
  if (kafka_ != nullptr) UpdateKafkaStatus();
  const int64_t low = lanes_.low_watermark_ms();
  watermark_lag_->Set(low == std::numeric_limits<int64_t>::min() ? 0.0 : (WallClockMs() - low) / 1000.0);
  CheckSlo();
  SampleConsole();
  if (redis_ != nullptr) {
    // The writer asks for a full rewrite after a reconnect (Redis may have restarted without persistence)
    // and when its periodic check finds the sync marker gone (FLUSHALL, or a restart it did not see), even
    // while no event arrives.
    const uint64_t resyncs = redis_->Metrics().resyncs_requested;
    if (resyncs > redis_resyncs_seen_) {
      ResyncRedis(resyncs);
      redis_resyncs_seen_ = resyncs;
    }
  }
  return Status::Ok();
}

bool Runtime::Impl::CheckpointDue() {
  // Offline rows wait in memory for the checkpoint that commits them; a burst checkpoints early.
  const bool offline_full = offline_ != nullptr && offline_->buffered_bytes() > kOfflineBufferBytes;
  const int64_t failed_ms = checkpoint_failed_ms_.load();
  const bool retry_due = failed_ms == 0 || WallClockMs() - failed_ms >= kCheckpointRetryMs;
  return retry_due && (offline_full || ExplainsWantCheckpoint() ||
                       WallClockMs() - last_checkpoint_ms_ >= spec_.checkpoint.interval_ms);
}

void Runtime::Impl::NoteCheckpointFailure(const Status& status) {
  std::fprintf(stderr, "freshet run: checkpoint failed (retried; no event is lost): %s\n", status.message().c_str());
  SetHealthReason("checkpoint", "the last checkpoint failed: " + status.message());
  checkpoint_failures_->Increment();
  checkpoint_failed_ms_ = WallClockMs();
}

Status Runtime::Impl::Finish(Status final_checkpoint) {
  CloseExplains();
  // The consumer's close revokes every partition: the final checkpoint holds them already.
  if (group_) kafka_->SetRebalanceListener(nullptr);
  if (redis_ != nullptr) {
    Status flushed = redis_->Flush(5000);
    if (!flushed.ok()) std::fprintf(stderr, "freshet run: warning: %s\n", flushed.message().c_str());
  }
  if (server_) server_->Stop();
  skew_monitor_.reset();
  if (feature_log_ != nullptr) {
    Status logged = feature_log_->Stop();
    if (!logged.ok()) std::fprintf(stderr, "freshet run: warning: feature log: %s\n", logged.message().c_str());
  }
  return final_checkpoint;
}

Runtime::Runtime(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Runtime::Runtime(std::vector<std::unique_ptr<Impl>> sets, std::unique_ptr<HttpServer> server, std::string data_dir)
    : sets_(std::move(sets)), server_(std::move(server)), data_dir_(std::move(data_dir)) {}
Runtime::~Runtime() {
  if (server_) server_->Stop();
  if (impl_ && impl_->server_) impl_->server_->Stop();
}

int Runtime::port() const {
  if (server_) return server_->port();
  return impl_->server_ ? impl_->server_->port() : 0;
}

Result<std::unique_ptr<Runtime>> Runtime::Start(const Spec& spec, RuntimeOptions options) {
  auto impl = std::make_unique<Impl>(spec, std::move(options));
  FRESHET_RETURN_IF_ERROR(impl->Open());
  return std::unique_ptr<Runtime>(new Runtime(std::move(impl)));
}

Status Runtime::Run(const std::atomic<bool>& stop) {
  if (!sets_.empty()) return RunSets(stop);
  Impl& s = *impl_;
  std::vector<SourceRecord> batch;
  Status failure;
  while (!stop.load()) {
    const bool held = s.OfflineHeld();
    batch.clear();
    Status polled = held ? Status::Ok() : s.source_->Poll(&batch, kPollRecords, 50);
    if (held) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    for (const std::string& w : s.source_->TakeWarnings()) std::fprintf(stderr, "freshet run: warning: %s\n", w.c_str());
    if (!polled.ok()) {
      s.SetHealthReason("source", "event source '" + std::string(s.source_->name()) + "': " + polled.message());
      failure = polled;
      break;
    }
    FRESHET_RETURN_IF_ERROR(s.AfterPoll(batch));
    if (s.CheckpointDue()) {
      Status written = s.Checkpoint(/*wait=*/false);
      if (!written.ok()) s.NoteCheckpointFailure(written);
    }
    if (s.options_.exit_when_exhausted && s.source_->exhausted()) break;
  }
  FRESHET_RETURN_IF_ERROR(s.Finish(s.Checkpoint(/*wait=*/true)));
  return failure;
}

Result<std::unique_ptr<Runtime>> Runtime::StartSets(const std::vector<Spec>& specs, RuntimeOptions options) {
  FRESHET_RETURN_IF_ERROR(CheckFeatureSets(specs));
  std::vector<std::string> names;
  for (const Spec& spec : specs) names.push_back(spec.name);
  FRESHET_ASSIGN_OR_RETURN(std::optional<SetsManifest> manifest, ReadSetsManifest(options.data_dir));
  FRESHET_RETURN_IF_ERROR(CheckDataDirSets(options.data_dir, names, manifest));
  std::vector<std::unique_ptr<Impl>> sets;
  for (const Spec& spec : specs) {
    RuntimeOptions set_options = options;
    set_options.data_dir = FeatureSetDir(options.data_dir, spec.name);
    SetMember member{.active = true,
                     .shared_source = sets.empty() ? nullptr : sets.front()->source_.get(),
                     .data_dir = options.data_dir,
                     .restore_at_most = manifest ? manifest->checkpoints.at(spec.name) : 0};
    auto impl = std::make_unique<Impl>(spec, std::move(set_options), std::move(member));
    FRESHET_RETURN_IF_ERROR(impl->Open());
    if (!sets.empty() && impl->restored_source_position_ != sets.front()->restored_source_position_) {
      return Status::Invalid("feature set '" + spec.name + "' restored a checkpoint at another source position than '" +
                             specs.front().name + "' (the manifest names checkpoints of different moments); start "
                             "fresh with `freshet run --reset`");
    }
    sets.push_back(std::move(impl));
  }
  const Spec& first = specs.front();
  HttpServerOptions http;
  http.host = options.host.empty() ? first.serve.host : options.host;
  http.port = options.port >= 0 ? options.port : first.serve.port;
  ApplyServeSpec(first.serve, &http);
  http.bearer_token = options.bearer_token;
  auto server = std::make_unique<HttpServer>(*sets.front(), sets.front()->metrics_, http);
  for (const std::unique_ptr<Impl>& set : sets) {
    server->AddFeatureSet(set->spec_.name, *set);
    sets.front()->all_sets_.push_back(set.get());
  }
  FRESHET_RETURN_IF_ERROR(server->Start());
  return std::unique_ptr<Runtime>(new Runtime(std::move(sets), std::move(server), options.data_dir));
}

void Runtime::Impl::AppendSetMetrics(std::string* out) const {
  struct Family {
    const char* name;
    const char* type;
    const char* help;
    double (*read)(const Impl&);
  };
  static constexpr Family kFamilies[] = {
      {"freshet_set_events_accepted_total", "counter", "Events a feature set accepted and applied.",
       [](const Impl& s) { return static_cast<double>(s.accepted_->value()); }},
      {"freshet_set_events_rejected_total", "counter", "Lines a feature set rejected and dead-lettered.",
       [](const Impl& s) { return static_cast<double>(s.rejected_total_->value()); }},
      {"freshet_set_events_late_total", "counter", "Events a feature set dropped as late.",
       [](const Impl& s) { return static_cast<double>(s.late_->value()); }},
      {"freshet_set_state_entities", "gauge", "Entities with state, per feature set.",
       [](const Impl& s) { return s.entities_->value(); }},
  };
  for (const Family& family : kFamilies) {
    *out += std::string("# HELP ") + family.name + " " + family.help + "\n# TYPE " + family.name + " " + family.type +
            "\n";
    for (const Impl* set : all_sets_) {
      *out += std::string(family.name) + "{feature_set=\"" + set->spec_.name + "\"} " +
              std::to_string(static_cast<int64_t>(family.read(*set))) + "\n";
    }
  }
}

Status Runtime::CheckpointSets() {
  SetsManifest manifest;
  for (const std::unique_ptr<Impl>& set : sets_) {
    Status written = set->Checkpoint(/*wait=*/true);
    if (!written.ok()) {
      set->NoteCheckpointFailure(written);
      return written;
    }
    manifest.names.push_back(set->spec_.name);
    manifest.checkpoints[set->spec_.name] = set->last_written_sequence_;
  }
  Status recorded = WriteSetsManifest(data_dir_, manifest);
  if (!recorded.ok()) {
    sets_.front()->NoteCheckpointFailure(recorded);
    return recorded;
  }
  sets_.front()->ReleaseIngestLog(sets_.front()->source_->position());
  return Status::Ok();
}

// Like Run for one spec: the first set's source is polled, each batch is read once (its JSON parsed, the fields
// of every set extracted) and goes to every set in turn. The sets checkpoint together (synchronously, so that
// each records the same source position).
Status Runtime::RunSets(const std::atomic<bool>& stop) {
  Impl& first = *sets_.front();
  std::vector<const FieldRegistry*> registries;
  for (const std::unique_ptr<Impl>& set : sets_) registries.push_back(&set->spec_.fields);
  SharedLines lines(registries);
  std::vector<SourceRecord> batch;
  Status failure;
  while (!stop.load()) {
    bool held = false;
    for (const std::unique_ptr<Impl>& set : sets_) held = set->OfflineHeld() || held;
    batch.clear();
    Status polled = held ? Status::Ok() : first.source_->Poll(&batch, kPollRecords, 50);
    if (held) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    for (const std::string& w : first.source_->TakeWarnings()) std::fprintf(stderr, "freshet run: warning: %s\n", w.c_str());
    if (!polled.ok()) {
      first.SetHealthReason("source", "event source '" + std::string(first.source_->name()) + "': " + polled.message());
      failure = polled;
      break;
    }
    lines.Clear();
    for (const SourceRecord& record : batch) lines.Add(record.text, record.capacity);
    bool due = false;
    for (const std::unique_ptr<Impl>& set : sets_) {
      FRESHET_RETURN_IF_ERROR(set->AfterPoll(batch, &lines));
      due = set->CheckpointDue() || due;
    }
    if (due) (void)CheckpointSets();  // A failure is noted and retried.
    if (first.options_.exit_when_exhausted && first.source_->exhausted()) break;
  }
  Status final_checkpoint = CheckpointSets();
  server_->Stop();
  for (const std::unique_ptr<Impl>& set : sets_) {
    Status finished = set->Finish(final_checkpoint);
    if (!finished.ok()) return finished;
  }
  return failure;
}

}  // namespace freshet

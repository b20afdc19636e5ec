#include "store/redis_store.h"

#include <absl/container/flat_hash_map.h>
#include <fmt/format.h>
#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <iterator>
#include <list>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "common/time.h"

namespace freshet {
namespace {

using SteadyClock = std::chrono::steady_clock;
using SteadyTime = SteadyClock::time_point;

struct ContextDeleter {
  void operator()(redisContext* context) const { redisFree(context); }
};
using ContextPtr = std::unique_ptr<redisContext, ContextDeleter>;

struct ReplyDeleter {
  void operator()(redisReply* reply) const { freeReplyObject(reply); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

// Upper bounds of the latency histograms, in seconds (0.5 ms .. 1 min; above that is +Inf).
constexpr double kLatencyBoundsSeconds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                            0.25,   0.5,   1,      2.5,   5,    10,    30,   60};
constexpr size_t kNumLatencyBounds = std::size(kLatencyBoundsSeconds);

// Keys per MGET command in RedisReader::MGetState.
constexpr size_t kMGetChunk = 1000;

int64_t SteadyNs(SteadyTime t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

timeval ToTimeval(int ms) {
  timeval tv;
  tv.tv_sec = ms / 1000;
  tv.tv_usec = (ms % 1000) * 1000;
  return tv;
}

void AppendInt(int64_t value, std::string* out) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  out->append(buf, end);
}

std::string_view ReplyText(const redisReply* reply) {
  return std::string_view(reply->str, reply->len);
}

// The context's error as a Status: what failed, where, and a hint for the common causes.
Status ContextError(const redisContext* context, std::string_view what,
                    const RedisConnectionOptions& options) {
  std::string_view detail = context->errstr;
  std::string hint;
  if (context->err == REDIS_ERR_IO && detail.find("temporarily unavailable") != std::string_view::npos) {
    hint = fmt::format(" (no reply within command_timeout_ms={}; is the server overloaded?)",
                       options.command_timeout_ms);
  } else if (context->err == REDIS_ERR_EOF) {
    hint = " (the server closed the connection; was it restarted or did it hit a client limit?)";
  }
  return Status::IoError(fmt::format("redis {}: {}: {}{}", options.Address(), what, detail, hint));
}

// Sends one command (argv) and returns its reply; a connection error or an error reply is a Status.
Result<ReplyPtr> RunCommand(redisContext* context, std::initializer_list<std::string_view> args,
                            std::string_view what, std::string_view hint,
                            const RedisConnectionOptions& options) {
  std::vector<const char*> argv;
  std::vector<size_t> lengths;
  for (std::string_view arg : args) {
    argv.push_back(arg.data());
    lengths.push_back(arg.size());
  }
  ReplyPtr reply(static_cast<redisReply*>(
      redisCommandArgv(context, static_cast<int>(argv.size()), argv.data(), lengths.data())));
  if (reply == nullptr) return ContextError(context, what, options);
  if (reply->type == REDIS_REPLY_ERROR) {
    return Status::IoError(
        fmt::format("redis {}: {}: {}{}", options.Address(), what, ReplyText(reply.get()), hint));
  }
  return reply;
}

// Connects, sets timeouts, authenticates, selects the database and PINGs, so that a returned connection
// is known to be usable.
Result<ContextPtr> ConnectRedis(const RedisConnectionOptions& options) {
  const timeval connect_timeout = ToTimeval(options.connect_timeout_ms);
  const bool unix_socket = options.host.starts_with('/');
  ContextPtr context(unix_socket
                         ? redisConnectUnixWithTimeout(options.host.c_str(), connect_timeout)
                         : redisConnectWithTimeout(options.host.c_str(), options.port, connect_timeout));
  if (context == nullptr) {
    return Status::IoError(
        fmt::format("redis {}: cannot allocate a connection (out of memory)", options.Address()));
  }
  if (context->err != 0) {
    return Status::IoError(fmt::format(
        "redis {}: cannot connect: {} (is redis-server running there? check the Redis host and port)",
        options.Address(), context->errstr));
  }
  if (redisSetTimeout(context.get(), ToTimeval(options.command_timeout_ms)) != REDIS_OK) {
    return ContextError(context.get(), "cannot set the command timeout", options);
  }
  if (!unix_socket) redisEnableKeepAlive(context.get());  // Best effort: a failure only loses keepalives.
  if (!options.password.empty()) {
    constexpr std::string_view kHint = " (check the Redis username and password)";
    Result<ReplyPtr> auth =
        options.username.empty()
            ? RunCommand(context.get(), {"AUTH", options.password}, "authentication failed", kHint, options)
            : RunCommand(context.get(), {"AUTH", options.username, options.password}, "authentication failed",
                         kHint, options);
    if (!auth.ok()) return auth.status();
  }
  if (options.db != 0) {
    std::string db;
    AppendInt(options.db, &db);
    Result<ReplyPtr> select =
        RunCommand(context.get(), {"SELECT", db}, fmt::format("cannot select database {}", options.db),
                   " (the server's `databases` setting limits the database number)", options);
    if (!select.ok()) return select.status();
  }
  Result<ReplyPtr> ping = RunCommand(context.get(), {"PING"}, "PING failed",
                                     " (a password may be required: set the Redis password)", options);
  if (!ping.ok()) return ping.status();
  return context;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Key layout and value text
// ------------------------------------------------------------------------------------------------

RedisKeyLayout::RedisKeyLayout(std::string_view spec_name)
    : state_prefix_(fmt::format("freshet:{}:state:", spec_name)),
      features_prefix_(fmt::format("freshet:{}:features:", spec_name)),
      marker_key_(fmt::format("freshet:{}:marker", spec_name)) {}

std::string RedisKeyLayout::StateKey(std::string_view entity) const {
  std::string key;
  StateKeyInto(entity, &key);
  return key;
}

std::string RedisKeyLayout::FeaturesKey(std::string_view entity) const {
  std::string key;
  FeaturesKeyInto(entity, &key);
  return key;
}

void RedisKeyLayout::StateKeyInto(std::string_view entity, std::string* out) const {
  out->assign(state_prefix_);
  out->append(entity);
}

void RedisKeyLayout::FeaturesKeyInto(std::string_view entity, std::string* out) const {
  out->assign(features_prefix_);
  out->append(entity);
}

bool AppendRedisFeatureText(const Value& value, std::string* out) {
  char buf[64];
  switch (value.type) {
    case ValueType::kInt:
      AppendInt(value.i, out);
      return true;
    case ValueType::kDouble: {
      auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value.d);  // Shortest round trip.
      out->append(buf, end);
      return true;
    }
    case ValueType::kBool:
      out->append(value.b ? "true" : "false");
      return true;
    case ValueType::kString:
      out->append(value.s);
      return true;
    case ValueType::kMissing:
    case ValueType::kNull:
    case ValueType::kComposite:
      return false;
  }
  return false;
}

// ------------------------------------------------------------------------------------------------
// Options
// ------------------------------------------------------------------------------------------------

std::string RedisConnectionOptions::Address() const {
  if (host.starts_with('/')) return host;
  return fmt::format("{}:{}", host, port);
}

Status RedisConnectionOptions::Validate() const {
  if (host.empty())
    return Status::Invalid("redis options: host is empty; set a host name, an IP or a socket path");
  if (!host.starts_with('/') && (port < 1 || port > 65535)) {
    return Status::Invalid(fmt::format("redis options: port {} is out of range; use 1..65535", port));
  }
  if (db < 0) return Status::Invalid(fmt::format("redis options: db {} is negative; use 0 or more", db));
  if (connect_timeout_ms <= 0 || command_timeout_ms <= 0) {
    return Status::Invalid(fmt::format(
        "redis options: connect_timeout_ms ({}) and command_timeout_ms ({}) must be positive milliseconds",
        connect_timeout_ms, command_timeout_ms));
  }
  if (!username.empty() && password.empty()) {
    return Status::Invalid("redis options: a username needs a password; set both or neither");
  }
  return Status::Ok();
}

Status RedisWriterOptions::Validate() const {
  FRESHET_RETURN_IF_ERROR(connection.Validate());
  if (spec_name.empty())
    return Status::Invalid("redis writer: spec_name is empty; set it to the spec's name");
  if (flush_interval_ms <= 0) {
    return Status::Invalid(
        fmt::format("redis writer: flush_interval_ms {} must be positive", flush_interval_ms));
  }
  if (max_batch == 0) return Status::Invalid("redis writer: max_batch must be at least 1");
  if (check_interval_ms <= 0) {
    return Status::Invalid(
        fmt::format("redis writer: check_interval_ms {} must be positive", check_interval_ms));
  }
  if (initial_backoff_ms <= 0 || max_backoff_ms < initial_backoff_ms) {
    return Status::Invalid(
        fmt::format("redis writer: backoff must satisfy 0 < initial_backoff_ms ({}) <= max_backoff_ms ({})",
                    initial_backoff_ms, max_backoff_ms));
  }
  return Status::Ok();
}

Status CheckRedis(const RedisConnectionOptions& options) {
  FRESHET_RETURN_IF_ERROR(options.Validate());
  Result<ContextPtr> context = ConnectRedis(options);
  return context.ok() ? Status::Ok() : context.status();
}

// ------------------------------------------------------------------------------------------------
// RedisWriter
// ------------------------------------------------------------------------------------------------

namespace {

// Fixed-bucket latency histogram (kLatencyBoundsSeconds); the caller locks.
struct Histogram {
  uint64_t bucket_counts[kNumLatencyBounds + 1] = {};  // Non-cumulative; the last is +Inf.
  uint64_t count = 0;
  double sum_seconds = 0;

  void Observe(double seconds) {
    const size_t bucket =
        std::lower_bound(std::begin(kLatencyBoundsSeconds), std::end(kLatencyBoundsSeconds), seconds) -
        std::begin(kLatencyBoundsSeconds);
    ++bucket_counts[bucket];
    ++count;
    sum_seconds += seconds;
  }

  LatencyHistogram Snapshot() const {
    LatencyHistogram out;
    out.upper_bounds_seconds.assign(std::begin(kLatencyBoundsSeconds), std::end(kLatencyBoundsSeconds));
    uint64_t running = 0;
    for (size_t i = 0; i < kNumLatencyBounds; ++i) {
      running += bucket_counts[i];
      out.cumulative_counts.push_back(running);
    }
    out.count = count;
    out.sum_seconds = sum_seconds;
    return out;
  }
};

// One entity's latest pending write.
struct PendingWrite {
  std::string entity;
  std::string state_blob;
  std::vector<std::pair<std::string, std::string>> feature_fields;
  int64_t event_time_ms = 0;
  int64_t oldest_arrival_ns = 0;  // 0: unknown.
  SteadyTime first_queued;        // When the entity became pending; kept across coalescing and retries.
  uint64_t first_seq = 0;         // The Upsert sequence number of that moment (for Flush).
};

// Pending writes, oldest first_queued (and first_seq) first. A list so that nodes (and the entity
// strings the index points into) never move, and batches splice out and back in O(batch).
using WriteQueue = std::list<PendingWrite>;

// 16 hex digits, different for every writer (for the marker: which process wrote it).
std::string RandomRunId() {
  std::random_device random;
  return fmt::format("{:08x}{:08x}", random(), random());
}

int64_t EarlierArrival(int64_t a, int64_t b) {
  if (a == 0) return b;
  if (b == 0) return a;
  return std::min(a, b);
}

}  // namespace

struct RedisWriter::Impl {
  explicit Impl(RedisWriterOptions o)
      : options(std::move(o)), keys(options.spec_name), run_id(RandomRunId()) {}

  void Run();
  WriteQueue TakeBatch();                      // Requires mu.
  void ReturnBatch(WriteQueue batch);          // Requires mu.
  Status Connect(bool* reconnected);           // Flush thread only.
  Status CheckMarker(bool* present);           // Flush thread only.
  // Writes the batch and, when `marker` is not empty, the sync marker with that text, in one MULTI/EXEC.
  Status WriteBatch(const WriteQueue& batch, std::string_view marker);  // Flush thread only.
  bool FlushedThrough(uint64_t seq) const {    // Requires mu.
    return (queue.empty() || queue.front().first_seq > seq) && in_flight_min_seq > seq;
  }
  // A full sync is marked and every upsert it covers is written or in the next batch. Requires mu.
  bool MarkerDue() const {
    return marker_seq.has_value() && (queue.empty() || queue.front().first_seq > *marker_seq);
  }
  // Redis lost, or may have lost, what was written: the caller must upsert everything again. Requires mu.
  void RequestResync(std::string reason) {
    in_sync = false;
    out_of_sync_reason = std::move(reason);
    marker_seq.reset();  // A marker now would vouch for writes that went to the lost Redis.
    ++resyncs_requested;
  }

  const RedisWriterOptions options;
  const RedisKeyLayout keys;
  ContextPtr context;  // Used by the flush thread only.

  mutable std::mutex mu;
  std::condition_variable wake;      // Wakes the flush thread: work arrived, Flush, Stop.
  std::condition_variable progress;  // Wakes Flush callers after every attempt.
  WriteQueue queue;
  absl::flat_hash_map<std::string_view, WriteQueue::iterator> index;  // entity -> its node in queue.
  size_t in_flight = 0;                                               // Entities in the batch being written.
  uint64_t in_flight_min_seq = UINT64_MAX;
  SteadyTime in_flight_oldest;
  uint64_t next_seq = 1;
  int flush_waiters = 0;
  bool stop = false;
  SteadyTime retry_at;  // No attempt before this (backoff after a failure).
  int64_t backoff_ms = 0;
  bool connected = false;
  std::string last_error;
  uint64_t consecutive_failures = 0;
  int64_t last_success_unix_ms = 0;
  uint64_t upserts = 0;
  uint64_t coalesced = 0;
  // The sync marker (see MarkFullSync). armed: MarkFullSync was called, so the periodic check runs.
  const std::string run_id;           // Random per writer: tells in the marker which process wrote it.
  bool armed = false;
  std::optional<uint64_t> marker_seq;  // The marker is due once every Upsert up to this seq is written.
  size_t marker_entities = 0;
  bool in_sync = false;
  std::string out_of_sync_reason = "starting: every entity is being written";
  uint64_t resyncs_requested = 0;
  uint64_t marker_losses = 0;
  SteadyTime next_check;  // Of the periodic check; the epoch: at once.

  std::mutex stop_mu;  // Serializes Stop (join).
  std::thread thread;

  mutable std::mutex stats_mu;  // Written by the flush thread after each attempt.
  RedisWriterMetrics counters;  // Counters only; the histograms are below.
  Histogram batch_latency;
  Histogram freshness;
};

RedisWriter::RedisWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RedisWriter::~RedisWriter() {
  Stop();
}

Result<std::unique_ptr<RedisWriter>> RedisWriter::Start(RedisWriterOptions options) {
  FRESHET_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<RedisWriter> writer(new RedisWriter(std::make_unique<Impl>(std::move(options))));
  Impl* impl = writer->impl_.get();
  impl->thread = std::thread([impl] { impl->Run(); });
  return writer;
}

const RedisKeyLayout& RedisWriter::keys() const {
  return impl_->keys;
}

void RedisWriter::Upsert(std::string entity, std::string state_blob,
                         std::vector<std::pair<std::string, std::string>> feature_fields,
                         int64_t event_time_ms, int64_t arrival_ns) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  ++s.upserts;
  const uint64_t seq = s.next_seq++;
  if (auto found = s.index.find(entity); found != s.index.end()) {
    PendingWrite& write = *found->second;
    write.state_blob = std::move(state_blob);
    write.feature_fields = std::move(feature_fields);
    write.event_time_ms = event_time_ms;
    write.oldest_arrival_ns = EarlierArrival(write.oldest_arrival_ns, arrival_ns);
    ++s.coalesced;
    return;
  }
  s.queue.push_back(PendingWrite{std::move(entity), std::move(state_blob), std::move(feature_fields),
                                 event_time_ms, arrival_ns, SteadyClock::now(), seq});
  s.index.emplace(s.queue.back().entity, std::prev(s.queue.end()));
  // The flush thread sleeps indefinitely only on an empty queue, and otherwise until the oldest write
  // is due; it needs waking when work first arrives and when a full batch is ready.
  if (s.queue.size() == 1 || s.queue.size() == s.options.max_batch) s.wake.notify_one();
}

Status RedisWriter::Flush(int64_t timeout_ms) {
  Impl& s = *impl_;
  std::unique_lock lock(s.mu);
  const uint64_t target = s.next_seq - 1;  // Every Upsert made so far.
  if (s.FlushedThrough(target)) return Status::Ok();
  ++s.flush_waiters;
  s.retry_at = std::min(s.retry_at, SteadyClock::now());  // Try now rather than after the current backoff.
  s.wake.notify_one();
  const auto deadline = SteadyClock::now() + std::chrono::milliseconds(std::max<int64_t>(timeout_ms, 0));
  s.progress.wait_until(lock, deadline, [&] { return s.stop || s.FlushedThrough(target); });
  --s.flush_waiters;
  if (s.FlushedThrough(target)) return Status::Ok();
  return Status::IoError(
      fmt::format("redis {}: flush incomplete: {} entities still pending after {} ms{}; last error: {} (they "
                  "stay pending "
                  "and are retried; check that Redis is reachable)",
                  s.options.connection.Address(), s.queue.size() + s.in_flight, timeout_ms,
                  s.stop ? " (writer stopped)" : "", s.last_error.empty() ? "none" : s.last_error));
}

void RedisWriter::Stop() {
  Impl& s = *impl_;
  std::lock_guard stop_lock(s.stop_mu);
  {
    std::lock_guard lock(s.mu);
    s.stop = true;
  }
  s.wake.notify_all();
  s.progress.notify_all();
  if (s.thread.joinable()) s.thread.join();
}

RedisWriterHealth RedisWriter::Health() const {
  const Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  RedisWriterHealth health;
  health.connected = s.connected;
  health.last_error = s.last_error;
  health.consecutive_failures = s.consecutive_failures;
  health.pending_entities = s.queue.size() + s.in_flight;
  std::optional<SteadyTime> oldest;
  if (!s.queue.empty()) oldest = s.queue.front().first_queued;
  if (s.in_flight > 0) oldest = oldest ? std::min(*oldest, s.in_flight_oldest) : s.in_flight_oldest;
  if (oldest) {
    health.oldest_pending_age_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - *oldest).count();
  }
  health.last_success_unix_ms = s.last_success_unix_ms;
  health.in_sync = s.in_sync;
  if (!s.in_sync) health.out_of_sync_reason = s.out_of_sync_reason;
  return health;
}

RedisWriterMetrics RedisWriter::Metrics() const {
  const Impl& s = *impl_;
  RedisWriterMetrics metrics;
  {
    std::lock_guard lock(s.stats_mu);
    metrics = s.counters;
    metrics.batch_latency = s.batch_latency.Snapshot();
    metrics.freshness = s.freshness.Snapshot();
  }
  std::lock_guard lock(s.mu);
  metrics.upserts = s.upserts;
  metrics.coalesced = s.coalesced;
  metrics.resyncs_requested = s.resyncs_requested;
  metrics.marker_losses = s.marker_losses;
  return metrics;
}

void RedisWriter::MarkFullSync(uint64_t resyncs_seen, size_t entities) {
  Impl& s = *impl_;
  std::lock_guard lock(s.mu);
  s.armed = true;
  if (resyncs_seen < s.resyncs_requested) return;  // Outdated: the full sync that answers the newer request
                                                   // will mark itself.
  s.marker_seq = s.next_seq - 1;
  s.marker_entities = entities;
  s.wake.notify_one();
}

void RedisWriter::Impl::Run() {
  std::unique_lock lock(mu);
  while (!stop) {
    const SteadyTime now = SteadyClock::now();
    // Three kinds of work: a write (pending entities, or the marker once what it covers is written), a
    // reconnect, and, once armed, the periodic check. The check is what notices a Redis that went away or
    // lost its data while nothing is written, so it runs whether or not writes are pending.
    std::optional<SteadyTime> write_at;
    if (!queue.empty() || MarkerDue()) {
      const bool urgent = flush_waiters > 0 || queue.size() >= options.max_batch || queue.empty();
      write_at = std::max(
          urgent ? now : queue.front().first_queued + std::chrono::milliseconds(options.flush_interval_ms),
          retry_at);
    } else if (!connected) {
      write_at = retry_at;  // Keep reconnecting while idle, so that Health tells the truth.
    }
    const bool checking = armed && connected;
    if (!write_at && !checking) {
      wake.wait(lock);
      continue;
    }
    SteadyTime next_attempt = write_at.value_or(SteadyTime::max());
    if (checking) next_attempt = std::min(next_attempt, next_check);
    if (now < next_attempt) {
      wake.wait_until(lock, next_attempt);
      continue;  // Woken early or on time: decide again.
    }

    const bool check = checking && now >= next_check;
    const bool was_armed = armed;
    WriteQueue batch;
    std::string marker;  // Its text when this batch completes a full sync.
    std::optional<uint64_t> marker_for;
    if (!check) {
      batch = TakeBatch();
      if (MarkerDue()) {
        marker_for = marker_seq;
        marker = fmt::format(R"({{"run_id":"{}","synced_unix_ms":{},"entities":{}}})", run_id, WallClockMs(),
                             marker_entities);
      }
    }
    lock.unlock();
    bool reconnected = false;
    Status status = context != nullptr ? Status::Ok() : Connect(&reconnected);
    // After a reconnect the marker tells whether Redis lost its data (only for the message: a full sync
    // follows either way, since a Redis restarted from an older snapshot has the marker but not our
    // latest writes). The entities of a full sync in progress may have gone to the lost Redis, so its
    // marker is not written now.
    std::optional<bool> marker_present;
    if (status.ok() && was_armed && (check || reconnected)) {
      bool present = false;
      status = CheckMarker(&present);
      if (status.ok()) marker_present = present;
    }
    if (reconnected) marker.clear();
    if (status.ok() && (!batch.empty() || !marker.empty())) status = WriteBatch(batch, marker);
    if (!status.ok()) context.reset();  // Start over on a fresh connection: no half-read replies.
    lock.lock();

    in_flight = 0;
    in_flight_min_seq = UINT64_MAX;
    connected = status.ok();
    if (status.ok()) {
      consecutive_failures = 0;
      backoff_ms = 0;
      retry_at = SteadyTime();
      if (!batch.empty()) last_success_unix_ms = WallClockMs();
      auto lost = [&] {
        return fmt::format("Redis lost its data (the marker key {} is missing: flushed, or restarted without "
                           "persistence)",
                           keys.MarkerKey());
      };
      if (reconnected) {
        RequestResync(marker_present == false
                          ? lost()
                          : "reconnected to Redis, which may have missed writes (rewriting every entity)");
      } else if (marker_present == false && in_sync) {
        ++marker_losses;
        RequestResync(lost());
      }
      if (!marker.empty() && marker_seq == marker_for) {
        marker_seq.reset();
        in_sync = true;
        out_of_sync_reason.clear();
      }
      if (check || reconnected) {
        next_check = SteadyClock::now() + std::chrono::milliseconds(options.check_interval_ms);
      }
    } else {
      last_error = status.message();
      ++consecutive_failures;
      backoff_ms = backoff_ms == 0 ? options.initial_backoff_ms
                                   : std::min<int64_t>(backoff_ms * 2, options.max_backoff_ms);
      retry_at = SteadyClock::now() + std::chrono::milliseconds(backoff_ms);
      ReturnBatch(std::move(batch));
    }
    progress.notify_all();
  }
}

WriteQueue RedisWriter::Impl::TakeBatch() {
  WriteQueue batch;
  const size_t n = std::min(queue.size(), options.max_batch);
  batch.splice(batch.begin(), queue, queue.begin(), std::next(queue.begin(), static_cast<ptrdiff_t>(n)));
  in_flight = n;
  in_flight_min_seq = UINT64_MAX;
  for (const PendingWrite& write : batch) {
    index.erase(std::string_view(write.entity));
    in_flight_min_seq = std::min(in_flight_min_seq, write.first_seq);
  }
  if (!batch.empty()) in_flight_oldest = batch.front().first_queued;
  return batch;
}

void RedisWriter::Impl::ReturnBatch(WriteQueue batch) {
  for (auto it = batch.begin(); it != batch.end();) {
    auto found = index.find(std::string_view(it->entity));
    if (found == index.end()) {
      index.emplace(it->entity, it);  // The iterator stays valid when the node is spliced into queue.
      ++it;
      continue;
    }
    // The entity was upserted again while its batch was in flight: the newer write wins, but it takes
    // the failed write's place, age and arrival, which are older.
    const WriteQueue::iterator newer = found->second;
    newer->first_queued = it->first_queued;
    newer->first_seq = it->first_seq;
    newer->oldest_arrival_ns = EarlierArrival(newer->oldest_arrival_ns, it->oldest_arrival_ns);
    batch.splice(it, queue, newer);
    it = batch.erase(it);
  }
  queue.splice(queue.begin(), batch);
}

Status RedisWriter::Impl::Connect(bool* reconnected) {
  Result<ContextPtr> connected_context = ConnectRedis(options.connection);
  std::lock_guard lock(stats_mu);
  if (!connected_context.ok()) {
    ++counters.connect_errors;
    return connected_context.status();
  }
  context = std::move(connected_context).value();
  *reconnected = counters.connects > 0;
  ++counters.connects;
  return Status::Ok();
}

// EXISTS on the marker: also the liveness check of a connection that has nothing to write.
Status RedisWriter::Impl::CheckMarker(bool* present) {
  FRESHET_ASSIGN_OR_RETURN(ReplyPtr reply, RunCommand(context.get(), {"EXISTS", keys.MarkerKey()},
                                                      "checking the sync marker", "", options.connection));
  if (reply->type != REDIS_REPLY_INTEGER) {
    return Status::IoError(
        fmt::format("redis {}: unexpected reply type {} to EXISTS (is this a Redis server?)",
                    options.connection.Address(), reply->type));
  }
  *present = reply->integer > 0;
  return Status::Ok();
}

Status RedisWriter::Impl::WriteBatch(const WriteQueue& batch, std::string_view marker) {
  redisContext* c = context.get();
  const SteadyTime started = SteadyClock::now();
  std::string updated_ms;
  AppendInt(WallClockMs(), &updated_ms);

  // Commands are appended as argv with lengths: every byte of entities and values is kept.
  std::vector<const char*> argv;
  std::vector<size_t> lengths;
  uint64_t bytes = 0;
  auto add = [&](std::string_view arg) {
    argv.push_back(arg.data());
    lengths.push_back(arg.size());
    bytes += arg.size();
  };
  bool append_ok = true;
  auto append = [&] {
    append_ok &=
        redisAppendCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lengths.data()) == REDIS_OK;
    argv.clear();
    lengths.clear();
  };

  std::string state_key;
  std::string features_key;
  std::string event_time;
  std::string ttl_ms;  // With a key ttl, both keys of an entity expire that long after its last write.
  if (options.key_ttl_ms > 0) AppendInt(options.key_ttl_ms, &ttl_ms);
  add("MULTI");
  append();
  for (const PendingWrite& write : batch) {
    keys.StateKeyInto(write.entity, &state_key);
    keys.FeaturesKeyInto(write.entity, &features_key);
    add("SET");
    add(state_key);
    add(write.state_blob);
    if (!ttl_ms.empty()) {
      add("PX");
      add(ttl_ms);
    }
    append();
    add("DEL");
    add(features_key);
    append();
    add("HSET");
    add(features_key);
    for (const auto& [name, value] : write.feature_fields) {
      add(name);
      add(value);
    }
    event_time.clear();
    AppendInt(write.event_time_ms, &event_time);
    add(kRedisEventTimeField);  // Last, so that they win over a feature of the same name.
    add(event_time);
    add(kRedisUpdatedField);
    add(updated_ms);
    append();
    if (!ttl_ms.empty()) {
      add("PEXPIRE");
      add(features_key);
      add(ttl_ms);
      append();
    }
  }
  if (!marker.empty()) {
    add("SET");
    add(keys.MarkerKey());
    add(marker);
    append();
  }
  add("EXEC");
  append();
  if (!append_ok) {
    return Status::IoError(fmt::format("redis {}: cannot build a batch of {} entities (out of memory)",
                                       options.connection.Address(), batch.size()));
  }

  // Replies: +OK for MULTI, +QUEUED (or an error) per command, then EXEC's array (or EXECABORT).
  // Every reply is read, even after an error, although the connection is dropped on failure anyway.
  const size_t per_entity = ttl_ms.empty() ? 3 : 4;
  const size_t replies = per_entity * batch.size() + 2 + (marker.empty() ? 0 : 1);
  std::string first_error;
  for (size_t i = 0; i < replies; ++i) {
    void* raw = nullptr;
    if (redisGetReply(c, &raw) != REDIS_OK) {
      return ContextError(c, fmt::format("writing a batch of {} entities", batch.size()), options.connection);
    }
    ReplyPtr reply(static_cast<redisReply*>(raw));
    if (reply->type == REDIS_REPLY_ERROR && first_error.empty()) first_error = ReplyText(reply.get());
    if (i + 1 < replies || reply->type != REDIS_REPLY_ARRAY) continue;
    for (size_t e = 0; e < reply->elements && first_error.empty(); ++e) {
      if (reply->element[e]->type == REDIS_REPLY_ERROR) first_error = ReplyText(reply->element[e]);
    }
    if (first_error.empty()) {
      const SteadyTime done = SteadyClock::now();
      const int64_t done_ns = SteadyNs(done);
      std::lock_guard lock(stats_mu);
      counters.entities_written += batch.size();
      ++counters.batches_written;
      counters.bytes_written += bytes;
      batch_latency.Observe(std::chrono::duration<double>(done - started).count());
      for (const PendingWrite& write : batch) {
        if (write.oldest_arrival_ns > 0) {
          freshness.Observe(static_cast<double>(std::max<int64_t>(done_ns - write.oldest_arrival_ns, 0)) *
                            1e-9);
        }
      }
      return Status::Ok();
    }
  }
  {
    std::lock_guard lock(stats_mu);
    ++counters.write_errors;
  }
  return Status::IoError(
      fmt::format("redis {}: writing a batch of {} entities failed: {}{}", options.connection.Address(),
                  batch.size(), first_error.empty() ? "the transaction was not executed" : first_error,
                  first_error.starts_with("OOM") ? " (Redis is out of memory: raise maxmemory)" : ""));
}

// ------------------------------------------------------------------------------------------------
// RedisReader
// ------------------------------------------------------------------------------------------------

struct RedisReader::Impl {
  Impl(RedisConnectionOptions o, std::string_view spec_name) : options(std::move(o)), keys(spec_name) {}

  // Sends the commands pipelined and hands each reply, with its command's index, to on_reply (which
  // returns a Status). Reconnects and retries once after a connection error. Requires mu.
  template <typename OnReply>
  Status Pipeline(const std::vector<std::vector<std::string_view>>& commands, OnReply on_reply);

  const RedisConnectionOptions options;
  const RedisKeyLayout keys;
  std::mutex mu;
  ContextPtr context;
};

template <typename OnReply>
Status RedisReader::Impl::Pipeline(const std::vector<std::vector<std::string_view>>& commands,
                                   OnReply on_reply) {
  Status status;
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (context == nullptr) {
      Result<ContextPtr> connected = ConnectRedis(options);
      if (!connected.ok()) return connected.status();
      context = std::move(connected).value();
    }
    redisContext* c = context.get();
    std::vector<const char*> argv;
    std::vector<size_t> lengths;
    for (const std::vector<std::string_view>& command : commands) {
      argv.clear();
      lengths.clear();
      for (std::string_view arg : command) {
        argv.push_back(arg.data());
        lengths.push_back(arg.size());
      }
      if (redisAppendCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lengths.data()) != REDIS_OK) {
        context.reset();
        return Status::IoError(
            fmt::format("redis {}: cannot build a read (out of memory)", options.Address()));
      }
    }
    status = Status::Ok();
    bool connection_failed = false;
    for (size_t i = 0; i < commands.size(); ++i) {
      void* raw = nullptr;
      if (redisGetReply(c, &raw) != REDIS_OK) {
        status = ContextError(c, "reading", options);
        connection_failed = true;
        break;
      }
      ReplyPtr reply(static_cast<redisReply*>(raw));
      if (reply->type == REDIS_REPLY_ERROR) {
        if (status.ok()) {
          status = Status::IoError(
              fmt::format("redis {}: reading failed: {}", options.Address(), ReplyText(reply.get())));
        }
        continue;  // Keep reading: the connection stays in step with its replies.
      }
      if (status.ok()) status = on_reply(i, reply.get());
    }
    if (!connection_failed) return status;
    context.reset();  // A stale or broken connection: retry once on a fresh one.
  }
  return status;
}

RedisReader::RedisReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RedisReader::~RedisReader() = default;

Result<std::unique_ptr<RedisReader>> RedisReader::Create(RedisConnectionOptions options,
                                                         std::string_view spec_name) {
  FRESHET_RETURN_IF_ERROR(options.Validate());
  if (spec_name.empty())
    return Status::Invalid("redis reader: spec_name is empty; set it to the spec's name");
  return std::unique_ptr<RedisReader>(new RedisReader(std::make_unique<Impl>(std::move(options), spec_name)));
}

const RedisKeyLayout& RedisReader::keys() const {
  return impl_->keys;
}

namespace {

Status UnexpectedReply(const RedisConnectionOptions& options, std::string_view command,
                       const redisReply* reply) {
  return Status::IoError(fmt::format("redis {}: unexpected reply type {} to {} (is this a Redis server?)",
                                     options.Address(), reply->type, command));
}

// A GET or MGET element: a string, or nil for no key (or a key of another type, for MGET).
Result<std::optional<std::string>> StringOrNil(const RedisConnectionOptions& options,
                                               std::string_view command, const redisReply* reply) {
  if (reply->type == REDIS_REPLY_NIL) return std::optional<std::string>();
  if (reply->type == REDIS_REPLY_STRING) return std::optional<std::string>(std::string(ReplyText(reply)));
  return UnexpectedReply(options, command, reply);
}

}  // namespace

Result<std::optional<std::string>> RedisReader::GetState(std::string_view entity) {
  Impl& s = *impl_;
  const std::string key = s.keys.StateKey(entity);
  std::optional<std::string> state;
  std::lock_guard lock(s.mu);
  FRESHET_RETURN_IF_ERROR(s.Pipeline({{"GET", key}}, [&](size_t, const redisReply* reply) -> Status {
    FRESHET_ASSIGN_OR_RETURN(state, StringOrNil(s.options, "GET", reply));
    return Status::Ok();
  }));
  return state;
}

Result<std::vector<std::optional<std::string>>> RedisReader::MGetState(
    std::span<const std::string> entities, bool* marker_present) {
  Impl& s = *impl_;
  std::vector<std::optional<std::string>> states(entities.size());
  if (entities.empty() && marker_present == nullptr) return states;
  std::vector<std::string> keys;
  keys.reserve(entities.size());
  for (const std::string& entity : entities) keys.push_back(s.keys.StateKey(entity));
  // The marker goes first in every MGET, so that each chunk's states and marker are one atomic read: a
  // separate EXISTS could see the marker of a full sync that finished after the states were read.
  const size_t skip = marker_present != nullptr ? 1 : 0;
  std::vector<std::vector<std::string_view>> commands;
  for (size_t begin = 0; begin < keys.size() || (begin == 0 && skip > 0); begin += kMGetChunk) {
    std::vector<std::string_view>& command = commands.emplace_back();
    command.push_back("MGET");
    if (skip > 0) command.push_back(s.keys.MarkerKey());
    command.insert(command.end(), keys.begin() + static_cast<ptrdiff_t>(begin),
                   keys.begin() + static_cast<ptrdiff_t>(std::min(begin + kMGetChunk, keys.size())));
  }
  bool every_marker = true;
  std::lock_guard lock(s.mu);
  FRESHET_RETURN_IF_ERROR(s.Pipeline(commands, [&](size_t chunk, const redisReply* reply) -> Status {
    const size_t begin = chunk * kMGetChunk;
    const size_t expected = commands[chunk].size() - 1;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != expected) {
      return UnexpectedReply(s.options, "MGET", reply);
    }
    if (skip > 0 && reply->element[0]->type == REDIS_REPLY_NIL) every_marker = false;
    for (size_t i = skip; i < expected; ++i) {
      FRESHET_ASSIGN_OR_RETURN(states[begin + i - skip], StringOrNil(s.options, "MGET", reply->element[i]));
    }
    return Status::Ok();
  }));
  if (marker_present != nullptr) *marker_present = every_marker;
  return states;
}

Result<std::optional<std::string>> RedisReader::GetMarker() {
  Impl& s = *impl_;
  std::optional<std::string> marker;
  std::lock_guard lock(s.mu);
  FRESHET_RETURN_IF_ERROR(
      s.Pipeline({{"GET", s.keys.MarkerKey()}}, [&](size_t, const redisReply* reply) -> Status {
        FRESHET_ASSIGN_OR_RETURN(marker, StringOrNil(s.options, "GET", reply));
        return Status::Ok();
      }));
  return marker;
}

Result<std::optional<std::vector<std::pair<std::string, std::string>>>> RedisReader::GetFeatures(
    std::string_view entity) {
  Impl& s = *impl_;
  const std::string key = s.keys.FeaturesKey(entity);
  std::optional<std::vector<std::pair<std::string, std::string>>> fields;
  std::lock_guard lock(s.mu);
  FRESHET_RETURN_IF_ERROR(s.Pipeline({{"HGETALL", key}}, [&](size_t, const redisReply* reply) -> Status {
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements % 2 != 0) {
      return UnexpectedReply(s.options, "HGETALL", reply);
    }
    if (reply->elements == 0) return Status::Ok();  // No such hash.
    std::vector<std::pair<std::string, std::string>> pairs;
    pairs.reserve(reply->elements / 2);
    for (size_t i = 0; i < reply->elements; i += 2) {
      const redisReply* name = reply->element[i];
      const redisReply* value = reply->element[i + 1];
      if (name->type != REDIS_REPLY_STRING || value->type != REDIS_REPLY_STRING) {
        return UnexpectedReply(s.options, "HGETALL", reply);
      }
      pairs.emplace_back(std::string(ReplyText(name)), std::string(ReplyText(value)));
    }
    fields = std::move(pairs);
    return Status::Ok();
  }));
  return fields;
}

}  // namespace freshet

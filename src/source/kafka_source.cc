#include "source/kafka_source.h"

#include <librdkafka/rdkafka.h>

#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <set>

#include "common/time.h"
#include "event/event_parser.h"
#include "source/kafka_config.h"

namespace freshet {

struct KafkaSource::Impl {
  explicit Impl(KafkaSource* owner) : source(owner) {}
  ~Impl() {
    DetachAll();
    if (queue != nullptr) rd_kafka_queue_destroy(queue);
    if (rk != nullptr) {
      rd_kafka_consumer_close(rk);
      // librdkafka 2.0.2 aborts in rd_kafka_destroy (an assert on the cooperative-sticky assignor's state) when the
      // consumer got its JoinGroup response but not yet its first assignment (librdkafka #4312, fixed in 2.3.0):
      // seen as SIGABRT when SIGTERM came during the first rebalance of a restarted process (its debug log: join
      // state wait-sync at "Closing consumer"). Once an assignment came (Rebalance), that state exists for good; until
      // then the handle is left undestroyed. consumer_close has left the group and stopped fetching, so what stays is
      // memory and idle threads, which the process's exit (the one owner of a KafkaSource is the runtime) ends.
      if (synced) rd_kafka_destroy(rk);
    }
  }

  static void OnRebalance(rd_kafka_t* rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* list, void* opaque) {
    static_cast<Impl*>(opaque)->Rebalance(rk, err, list);
  }
  static void OnError(rd_kafka_t*, int err, const char* reason, void* opaque) {
    static_cast<Impl*>(opaque)->SetProblem(std::string("Kafka: ") + rd_kafka_err2name(static_cast<rd_kafka_resp_err_t>(err)) +
                                           ": " + reason);
  }
  static void OnCommit(rd_kafka_t*, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* offsets, void* opaque) {
    Impl* self = static_cast<Impl*>(opaque);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR || err == RD_KAFKA_RESP_ERR__NO_OFFSET) {
      self->SetProblem(std::nullopt);
      std::lock_guard<std::mutex> lock(self->mutex);
      for (int k = 0; offsets != nullptr && k < offsets->cnt; ++k) {
        if (offsets->elems[k].err == RD_KAFKA_RESP_ERR_NO_ERROR && offsets->elems[k].offset >= 0) {
          self->committed[offsets->elems[k].partition] = offsets->elems[k].offset;
        }
      }
    } else {
      self->SetProblem(std::string("committing offsets to group failed: ") + rd_kafka_err2str(err));
    }
  }

  void Rebalance(rd_kafka_t* handle, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* list) {
    const bool cooperative = std::strcmp(rd_kafka_rebalance_protocol(handle), "COOPERATIVE") == 0;
    source->rebalances_.fetch_add(1);
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
      synced = true;
      if (source->listener_ != nullptr && !TakeUpRestored(list)) return;
      for (int k = 0; k < list->cnt; ++k) {
        auto it = source->next_.find(list->elems[k].partition);
        // Where the restored checkpoint (or this process's reading so far) stands; else the group's offset.
        list->elems[k].offset = it != source->next_.end() ? it->second : RD_KAFKA_OFFSET_STORED;
      }
      rd_kafka_error_t* error = nullptr;
      if (cooperative) {
        error = rd_kafka_incremental_assign(handle, list);
      } else if (rd_kafka_assign(handle, list) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        SetProblem("assigning partitions failed");
      }
      if (error != nullptr) {
        SetProblem(std::string("assigning partitions failed: ") + rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
      }
      if (!cooperative) DetachAll();  // An eager assignment replaces the whole one.
      for (int k = 0; k < list->cnt; ++k) Detach(handle, list->elems[k].partition);
      for (int k = 0; k < list->cnt; ++k) assigned_in_poll.insert(list->elems[k].partition);
      std::lock_guard<std::mutex> lock(mutex);
      for (int k = 0; k < list->cnt; ++k) assigned[list->elems[k].partition] = true;
      rebalancing = false;  // A cooperative rebalance ends with an assignment (maybe of nothing).
    } else {
      // Revoked (or lost): another member may read these partitions now, without the state built here.
      std::string names;
      for (int k = 0; k < list->cnt; ++k) names += (names.empty() ? "" : ", ") + std::to_string(list->elems[k].partition);
      if (source->listener_ != nullptr) {
        GiveUp(handle, list);
      } else if (!closing && list->cnt > 0) {
        revoked_warning = "partitions " + names + " of topic '" + source->options_.topic +
                          "' were revoked from this process by a group rebalance (another process joined group '" +
                          source->options_.group + "', or this one missed its session timeout); one process per "
                          "group is supported for now, so if another process reads them, its features for their "
                          "entities start without this process's state";
      }
      if (cooperative) {
        rd_kafka_error_t* error = rd_kafka_incremental_unassign(handle, list);
        if (error != nullptr) rd_kafka_error_destroy(error);
        for (int k = 0; k < list->cnt; ++k) DropQueue(list->elems[k].partition);
      } else {
        rd_kafka_assign(handle, nullptr);
        DetachAll();
      }
      std::lock_guard<std::mutex> lock(mutex);
      for (int k = 0; k < list->cnt; ++k) assigned.erase(list->elems[k].partition);
      if (assigned.empty()) unassigned_since_ns = SteadyClockNs();
    }
  }

  // Asks the listener to restore the gained partitions; on success their offsets are where it restored them
  // to. On failure nothing is assigned: the group sees this member hold them without reading, and /health says
  // why (the state could not be read; fix the shared folder and restart).
  bool TakeUpRestored(rd_kafka_topic_partition_list_t* list) {
    std::vector<int32_t> partitions;
    for (int k = 0; k < list->cnt; ++k) partitions.push_back(list->elems[k].partition);
    Result<std::map<int32_t, int64_t>> offsets = source->listener_->OnAssigned(partitions);
    if (!offsets.ok()) {
      SetProblem("partitions assigned by the group cannot be restored: " + offsets.status().message());
      return false;
    }
    for (int32_t p : partitions) {
      source->next_.erase(p);
      source->batch_start_.erase(p);
    }
    for (const auto& [p, offset] : *offsets) source->next_[p] = source->batch_start_[p] = offset;
    return true;
  }

  // Hands revoked partitions to the listener (it checkpoints them) and forgets where they stood: whoever gets
  // them next (maybe this process again) reads on from their checkpoint.
  void GiveUp(rd_kafka_t* handle, rd_kafka_topic_partition_list_t* list) {
    rebalancing = true;
    std::vector<int32_t> partitions;
    for (int k = 0; k < list->cnt; ++k) partitions.push_back(list->elems[k].partition);
    if (!partitions.empty()) source->listener_->OnRevoked(partitions, rd_kafka_assignment_lost(handle) != 0);
    for (int32_t p : partitions) {
      source->next_.erase(p);
      source->batch_start_.erase(p);
    }
  }

  // Each assigned partition's messages go to a queue of its own instead of the consumer queue, so that Poll can
  // take them round-robin: a fetch brings tens of thousands of one partition's messages in a row (a whole
  // producer batch per partition per fetch), and a batch of one partition would keep one processing shard busy
  // while the others wait (bench/README.md, Kafka source). Messages fetched before the detach are still in the
  // consumer queue; Poll hands those out first. A partition whose queue cannot be had stays on the consumer queue.
  void Detach(rd_kafka_t* handle, int32_t partition) {
    if (partition_queues.contains(partition)) return;
    rd_kafka_queue_t* q = rd_kafka_queue_get_partition(handle, source->options_.topic.c_str(), partition);
    if (q == nullptr) return;
    rd_kafka_queue_forward(q, nullptr);
    rd_kafka_queue_cb_event_enable(q, &Impl::OnEnqueued, this);
    partition_queues[partition] = q;
  }
  void DropQueue(int32_t partition) {
    auto it = partition_queues.find(partition);
    if (it == partition_queues.end()) return;
    rd_kafka_queue_cb_event_enable(it->second, nullptr, nullptr);
    rd_kafka_queue_destroy(it->second);
    partition_queues.erase(it);
  }
  void DetachAll() {
    while (!partition_queues.empty()) DropQueue(partition_queues.begin()->first);
  }
  // From librdkafka's threads when a queue Poll reads gets an element while empty: wakes a waiting Poll.
  static void OnEnqueued(rd_kafka_t*, void* opaque) {
    Impl* self = static_cast<Impl*>(opaque);
    {
      std::lock_guard<std::mutex> lock(self->wake_mutex);
      self->woken = true;
    }
    self->wake.notify_one();
  }
  // Waits until a queue got something since the last ClearWake, or for timeout_ms.
  void ClearWake() {
    std::lock_guard<std::mutex> lock(wake_mutex);
    woken = false;
  }
  void WaitWake(int timeout_ms) {
    std::unique_lock<std::mutex> lock(wake_mutex);
    wake.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return woken; });
  }

  void SetProblem(std::optional<std::string> text) {
    std::lock_guard<std::mutex> lock(mutex);
    problem = std::move(text);
  }

  KafkaSource* source;
  rd_kafka_t* rk = nullptr;
  rd_kafka_queue_t* queue = nullptr;  // The consumer queue: callbacks, and messages of partitions not detached.
  std::map<int32_t, rd_kafka_queue_t*> partition_queues;  // Assigned partition -> its own message queue (Detach).
  std::mutex wake_mutex;
  std::condition_variable wake;
  bool woken = false;
  bool closing = false;
  // An assignment came (librdkafka has run the group's SyncGroup through), so rd_kafka_destroy is safe: see ~Impl.
  bool synced = false;
  std::string revoked_warning;
  std::string last_commit;  // The newest position handed to Commit.
  mutable std::mutex mutex;  // Guards what other threads read: problem, committed, assigned.
  std::optional<std::string> problem;
  std::map<int32_t, int64_t> committed;
  std::map<int32_t, bool> assigned;
  // From a revocation until the assignment that ends the rebalance: no offsets are committed then. librdkafka
  // 2.0.2 loses the whole assignment when a commit made during a rebalance meets the generation the rejoin bumped
  // (librdkafka issue 4059, fixed in 2.8); the next checkpoint after the rebalance commits them.
  std::atomic<bool> rebalancing{false};
  bool IsAssigned(int32_t partition) const {
    std::lock_guard<std::mutex> lock(mutex);
    return assigned.contains(partition);
  }
  int64_t unassigned_since_ns = SteadyClockNs();  // When `assigned` last became empty (or the source was made).
  std::set<int32_t> assigned_in_poll;  // Partitions the current Poll's rebalance callbacks assigned.

  // A partition this process held before the current Poll's rebalance callbacks and still holds after them.
  bool KeptThrough(int32_t partition, const std::map<int32_t, int64_t>& held_before) const {
    return held_before.contains(partition) && !assigned_in_poll.contains(partition) && IsAssigned(partition);
  }

  // Seeks the partitions this process kept through a rebalance back to where its handing out stands.
  // librdkafka 2.0.2's batch consume can lose messages of such partitions when a rebalance callback runs inside
  // the call (its "Consume Batch API" known issue with rebalancing): they are neither returned nor fetched again,
  // and the next ones come with a gap. Seen in the group test: a process kept partition 6 while another of its
  // partitions was revoked, and its events table went on at offset 759 after 702 (702..758 never read). So Poll
  // hands out nothing of these partitions from a call that ran a rebalance callback, and re-reads them.
  // `held_before`: where each partition stood before the call (for kept ones also after it: nothing of theirs
  // was handed out).
  void RewindKept(const std::map<int32_t, int64_t>& held_before, const std::string& topic, std::string* warning) {
    rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(static_cast<int>(held_before.size()));
    for (const auto& [partition, offset] : held_before) {
      if (!KeptThrough(partition, held_before)) continue;
      rd_kafka_topic_partition_list_add(list, topic.c_str(), partition)->offset = offset;
    }
    if (list->cnt > 0) {
      rd_kafka_error_t* error = rd_kafka_seek_partitions(rk, list, kSeekTimeoutMs);
      std::string failed = error != nullptr ? rd_kafka_error_string(error) : "";
      for (int k = 0; k < list->cnt && failed.empty(); ++k) {
        if (list->elems[k].err != RD_KAFKA_RESP_ERR_NO_ERROR) failed = rd_kafka_err2str(list->elems[k].err);
      }
      if (error != nullptr) rd_kafka_error_destroy(error);
      if (!failed.empty()) {
        *warning = "after a group rebalance, re-reading the partitions this process kept from where it stands failed (" +
                   failed + "); messages fetched during the rebalance may be skipped";
      }
    }
    rd_kafka_topic_partition_list_destroy(list);
  }
  static constexpr int kSeekTimeoutMs = 5000;
};

KafkaSource::KafkaSource(KafkaSourceOptions options) : options_(std::move(options)) {}

KafkaSource::~KafkaSource() {
  if (!impl_) return;
  impl_->closing = true;
  // The last checkpoint's offsets, committed synchronously: an asynchronous commit could still be in flight.
  std::string last;
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    last = impl_->last_commit;
  }
  if (!last.empty()) CommitOffsets(last, /*wait=*/true);
  // Closes the consumer now, while the members declared after impl_ live: closing runs the group's last revoke
  // through Impl::Rebalance, which reads listener_, next_ and batch_start_ (destroyed before impl_ otherwise).
  impl_.reset();
}

Status KafkaSource::Open() {
  if (impl_) return Status::Ok();
  auto impl = std::make_unique<Impl>(this);
  char error[512];
  const KafkaProperties settings = {
      {"bootstrap.servers", options_.brokers},
      {"group.id", options_.group},
      {"client.id", "freshet"},
      // Offsets reach the group only through Commit, after a durable checkpoint.
      {"enable.auto.commit", "false"},
      {"enable.auto.offset.store", "false"},
      {"auto.offset.reset", options_.start == "latest" ? "latest" : "earliest"},
      {"session.timeout.ms", std::to_string(options_.session_timeout_ms)},
      {"partition.assignment.strategy", "cooperative-sticky"},
      // Uncommitted transactional messages never become events.
      {"isolation.level", "read_committed"},
      // Keep fetching ahead while the local queue holds fewer messages than this (the default, 100000, made
      // librdkafka 2.0.2 pause a partition's fetching for about a second whenever processing caught up with it:
      // 0.22 M events/s instead of 0.7 in bench/kafka_bench.sh). Memory stays bounded by
      // queued.max.messages.kbytes (64 MB by default).
      {"queued.min.messages", "1000000"},
      // Up to 8 MB per partition per fetch instead of 1 MB: each fetch is a round trip on librdkafka's one broker
      // thread, during which no new messages arrive; with 1 MB the processing threads waited for it (bench/README,
      // Kafka: 1.23 -> 1.47-1.54 M events/s with two threads). The queue's bound above caps the memory.
      {"max.partition.fetch.bytes", "8388608"},
  };
  FRESHET_ASSIGN_OR_RETURN(rd_kafka_conf_t * conf, MakeKafkaConf("Kafka source", settings, options_.properties));
  rd_kafka_conf_set_opaque(conf, impl.get());
  rd_kafka_conf_set_rebalance_cb(conf, &Impl::OnRebalance);
  rd_kafka_conf_set_error_cb(conf, &Impl::OnError);
  rd_kafka_conf_set_offset_commit_cb(conf, &Impl::OnCommit);
  impl->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, error, sizeof(error));
  if (impl->rk == nullptr) {
    rd_kafka_conf_destroy(conf);
    return Status::Invalid(std::string("Kafka source: cannot create the consumer: ") + error);
  }
  rd_kafka_poll_set_consumer(impl->rk);
  impl->queue = rd_kafka_queue_get_consumer(impl->rk);
  rd_kafka_queue_cb_event_enable(impl->queue, &Impl::OnEnqueued, impl.get());
  rd_kafka_topic_partition_list_t* topics = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(topics, options_.topic.c_str(), RD_KAFKA_PARTITION_UA);
  const rd_kafka_resp_err_t err = rd_kafka_subscribe(impl->rk, topics);
  rd_kafka_topic_partition_list_destroy(topics);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return Status::Invalid("Kafka source: cannot subscribe to topic '" + options_.topic + "': " + rd_kafka_err2str(err));
  }
  impl_ = std::move(impl);
  return Status::Ok();
}

Status KafkaSource::Poll(std::vector<SourceRecord>* out, size_t max_records, int timeout_ms) {
  out->clear();
  FRESHET_RETURN_IF_ERROR(Open());
  batch_start_ = next_;
  arena_.clear();
  kept_.clear();
  messages_.resize(std::min<size_t>(max_records, kMaxBatch));
  impl_->assigned_in_poll.clear();
  const uint64_t rebalances_before = rebalances_.load();
  impl_->ClearWake();
  FRESHET_RETURN_IF_ERROR(Gather(rebalances_before));
  if (kept_.empty() && timeout_ms > 0) {
    impl_->WaitWake(timeout_ms);  // Woken by a message or a callback arriving in any queue read here.
    FRESHET_RETURN_IF_ERROR(Gather(rebalances_before));
  }
  const bool rebalanced = rebalances_.load() != rebalances_before;
  if (!impl_->revoked_warning.empty()) Warn(std::exchange(impl_->revoked_warning, {}));
  if (!kept_.empty()) impl_->SetProblem(std::nullopt);
  if (rebalanced) {
    std::string warning;
    impl_->RewindKept(batch_start_, options_.topic, &warning);
    if (!warning.empty()) Warn(std::move(warning));
  }
  out->reserve(kept_.size());
  for (const Kept& k : kept_) {
    SourceRecord record;
    record.text = std::string_view(arena_.data() + k.at, k.size);
    record.capacity = k.size + kParsePaddingBytes;
    record.line_number = static_cast<uint64_t>(k.offset);
    record.arrival_ns = k.arrival_ns;
    record.end = SourceOffset{static_cast<uint64_t>(k.partition), static_cast<uint64_t>(k.offset + 1)};
    if (k.size > kMaxLineBytes) {
      record.too_long = true;
      record.text = {};
    }
    out->push_back(record);
  }
  return Status::Ok();
}

// Fills kept_ up to messages_.size(): first the consumer queue (it serves the rebalance and error callbacks, and
// holds the messages fetched before their partition was detached, which come before the partition's queue's);
// then, if it had no message and no rebalance ran in this Poll, the partitions' own queues round-robin, kSlice
// messages of each at a time, so that a batch interleaves the partitions (and so the shards' work).
Status KafkaSource::Gather(uint64_t rebalances_before) {
  const size_t room = messages_.size() - kept_.size();
  if (room == 0) return Status::Ok();
  ssize_t got = rd_kafka_consume_batch_queue(impl_->queue, 0, messages_.data(), room);
  FRESHET_RETURN_IF_ERROR(Keep(got, rebalances_before));
  if (got > 0 || rebalances_.load() != rebalances_before) return Status::Ok();
  bool more = true;
  while (more && kept_.size() < messages_.size()) {
    more = false;
    for (const auto& [partition, queue] : impl_->partition_queues) {
      const size_t want = std::min(kSlice, messages_.size() - kept_.size());
      if (want == 0) break;
      got = rd_kafka_consume_batch_queue(queue, 0, messages_.data(), want);
      FRESHET_RETURN_IF_ERROR(Keep(got, rebalances_before));
      more = more || got == static_cast<ssize_t>(want);
    }
  }
  return Status::Ok();
}

// Copies the `got` messages in messages_ that are to be handed out into the arena (kept_), and frees them all.
Status KafkaSource::Keep(ssize_t got, uint64_t rebalances_before) {
  const bool rebalanced = rebalances_.load() != rebalances_before;
  const int64_t received_ns = SteadyClockNs();  // One clock read per batch: they arrived together.
  for (ssize_t m = 0; m < got; ++m) {
    rd_kafka_message_t* message = messages_[m];
    if (message->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      if (message->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        impl_->SetProblem(std::string("Kafka: ") + rd_kafka_message_errstr(message));
      }
      rd_kafka_message_destroy(message);
      char fatal[256];
      if (rd_kafka_fatal_error(impl_->rk, fatal, sizeof(fatal)) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (ssize_t rest = m + 1; rest < got; ++rest) rd_kafka_message_destroy(messages_[rest]);
        return Status::IoError("Kafka consumer failed for good: " + std::string(fatal));
      }
      continue;
    }
    const int32_t partition = message->partition;
    const int64_t offset = message->offset;
    auto it = next_.find(partition);
    // Fetched before the partition was revoked within this call: its checkpoint does not cover it, and the
    // process that gains the partition reads it again.
    const bool given_up = listener_ != nullptr && it == next_.end() && !impl_->IsAssigned(partition);
    // Or already handed out (a refetch after a seek), or of a partition kept through a rebalance in this call
    // (re-read after the seek in Poll: the batch may lack some of its messages).
    const bool reread = rebalanced && impl_->KeptThrough(partition, batch_start_);
    if (given_up || (it != next_.end() && offset < it->second) || reread) {
      rd_kafka_message_destroy(message);
      continue;
    }
    const size_t at = arena_.size();
    arena_.resize(at + message->len + kParsePaddingBytes);
    if (message->len > 0) std::memcpy(arena_.data() + at, message->payload, message->len);
    kept_.push_back(Kept{at, message->len, partition, offset, received_ns});
    if (it != next_.end()) {
      it->second = offset + 1;
    } else {
      next_[partition] = offset + 1;
    }
    rd_kafka_message_destroy(message);
  }
  return Status::Ok();
}

std::string KafkaSource::Format(const std::map<int32_t, int64_t>& offsets) const {
  std::string text = "kafka " + options_.topic;
  for (const auto& [partition, offset] : offsets) text += " " + std::to_string(partition) + "=" + std::to_string(offset);
  return text;
}

std::string KafkaSource::position() const { return Format(next_); }

std::string KafkaSource::PositionAfter(std::span<const SourceRecord> batch, size_t count) const {
  std::map<int32_t, int64_t> offsets = batch_start_;
  for (size_t k = 0; k < count && k < batch.size(); ++k) {
    offsets[static_cast<int32_t>(batch[k].end.stream)] = static_cast<int64_t>(batch[k].end.offset);
  }
  return Format(offsets);
}

std::optional<std::map<int32_t, int64_t>> KafkaSource::ParsePosition(std::string_view text, std::string_view topic) {
  auto next_word = [&]() {
    while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
    const size_t end = std::min(text.find(' '), text.size());
    std::string_view word = text.substr(0, end);
    text.remove_prefix(end);
    return word;
  };
  if (next_word() != "kafka" || next_word() != topic) return std::nullopt;
  std::map<int32_t, int64_t> offsets;
  for (std::string_view word = next_word(); !word.empty(); word = next_word()) {
    const size_t eq = word.find('=');
    int32_t partition = 0;
    int64_t offset = 0;
    if (eq == std::string_view::npos ||
        std::from_chars(word.data(), word.data() + eq, partition).ec != std::errc() ||
        std::from_chars(word.data() + eq + 1, word.data() + word.size(), offset).ec != std::errc() || partition < 0 ||
        offset < 0) {
      return std::nullopt;
    }
    offsets[partition] = offset;
  }
  return offsets;
}

Status KafkaSource::Seek(std::string_view position) {
  std::optional<std::map<int32_t, int64_t>> offsets = ParsePosition(position, options_.topic);
  if (!offsets) {
    return Status::Invalid("the checkpoint's source position '" + std::string(position) +
                           "' is not a position in Kafka topic '" + options_.topic +
                           "' (was the spec's source changed?); start fresh with `freshet run --reset` (it moves the old "
                           "checkpoints aside) to read the topic from the group's offsets");
  }
  next_ = std::move(*offsets);
  batch_start_ = next_;
  return Status::Ok();
}

void KafkaSource::Commit(std::string_view position) {
  if (!impl_) return;
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->last_commit = std::string(position);
  }
  CommitOffsets(position, /*wait=*/false);
}

void KafkaSource::CommitOffsets(std::string_view position, bool wait) {
  std::optional<std::map<int32_t, int64_t>> offsets = ParsePosition(position, options_.topic);
  if (!offsets || offsets->empty()) return;
  if (listener_ != nullptr) {
    if (impl_->rebalancing.load()) return;
    // Only partitions this process still holds: the new owner of one it gave up commits that one's offsets.
    std::erase_if(*offsets, [&](const auto& entry) { return !impl_->IsAssigned(entry.first); });
    if (offsets->empty()) return;
  }
  rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(static_cast<int>(offsets->size()));
  for (const auto& [partition, offset] : *offsets) {
    rd_kafka_topic_partition_list_add(list, options_.topic.c_str(), partition)->offset = offset;
  }
  const rd_kafka_resp_err_t err = rd_kafka_commit(impl_->rk, list, wait ? 0 : 1);
  if (wait && err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR__NO_OFFSET) {
    std::fprintf(stderr, "freshet run: warning: committing the last checkpoint's offsets to Kafka group '%s' failed "
                 "(%s); the group's offsets lag behind, the next start reads on from the checkpoint all the same\n",
                 options_.group.c_str(), rd_kafka_err2str(err));
  }
  rd_kafka_topic_partition_list_destroy(list);
}

std::optional<std::string> KafkaSource::problem() const {
  if (!impl_) return std::nullopt;
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->problem;
}

std::optional<int64_t> KafkaSource::unassigned_since_ns() const {
  if (!impl_) return std::nullopt;
  std::lock_guard<std::mutex> lock(impl_->mutex);
  if (!impl_->assigned.empty()) return std::nullopt;
  return impl_->unassigned_since_ns;
}

std::vector<KafkaPartitionStatus> KafkaSource::partitions() const {
  std::vector<KafkaPartitionStatus> out;
  if (!impl_) return out;
  std::lock_guard<std::mutex> lock(impl_->mutex);
  for (const auto& [partition, assigned] : impl_->assigned) {
    KafkaPartitionStatus s;
    s.partition = partition;
    if (auto it = next_.find(partition); it != next_.end()) s.next_offset = it->second;
    if (auto it = impl_->committed.find(partition); it != impl_->committed.end()) s.committed = it->second;
    int64_t low = 0, high = 0;
    if (rd_kafka_get_watermark_offsets(impl_->rk, options_.topic.c_str(), partition, &low, &high) ==
            RD_KAFKA_RESP_ERR_NO_ERROR &&
        high >= 0) {
      s.high_watermark = high;
    }
    out.push_back(s);
  }
  return out;
}

}  // namespace freshet

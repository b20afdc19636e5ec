#include "table/kafka_table_reader.h"

#include <librdkafka/rdkafka.h>
#include <simdjson.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include "source/kafka_config.h"

namespace freshet {
namespace {

constexpr int kMetadataTimeoutMs = 2000;
constexpr int kProbeIntervalMs = 2000;  // How often the watcher checks that the brokers answer.

// The row (or deletion) message `m` carries, or why it is none.
Result<TableRow> RowOf(const TableSpec& table, const rd_kafka_message_t& m) {
  if (m.key == nullptr) {
    return Status::Invalid("the message has no key; produce each row with its table key as the message key");
  }
  const std::string_view key(static_cast<const char*>(m.key), m.key_len);
  if (key.empty() || !simdjson::validate_utf8(key.data(), key.size())) {
    return Status::Invalid("the message key is empty or not UTF-8 text; the message key is the table key");
  }
  if (m.payload == nullptr) return TableRow{std::string(key), kAlwaysValidMs, std::string(kDeletedRow)};
  if (m.len == 0) {
    return Status::Invalid("the message value is empty; a row is a JSON object, a deletion a null value (tombstone)");
  }
  return ParseTableRow(table, std::string_view(static_cast<const char*>(m.payload), m.len), key);
}

}  // namespace

struct KafkaTableReader::Impl {
  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stopping = true;
    }
    wake.notify_all();
    if (watcher.joinable()) watcher.join();
    if (queue != nullptr) rd_kafka_queue_destroy(queue);
    if (topic_handle != nullptr) rd_kafka_topic_destroy(topic_handle);
    if (rk != nullptr) {
      rd_kafka_consumer_close(rk);
      rd_kafka_destroy(rk);
    }
  }

  static void OnError(rd_kafka_t*, int err, const char* reason, void* opaque) {
    Impl* self = static_cast<Impl*>(opaque);
    self->SetProblem("Kafka: " + std::string(rd_kafka_err2name(static_cast<rd_kafka_resp_err_t>(err))) + ": " +
                     reason);
  }

  void SetProblem(std::optional<std::string> text) {
    std::lock_guard<std::mutex> lock(mutex);
    problem = std::move(text);
  }

  // The watcher thread: looks the topic's partitions up until it has them and assigns them (from `start`, else
  // their beginning), then checks every kProbeIntervalMs that the brokers answer, so that problem() clears once
  // they do again (librdkafka reports a broker going away, not its return).
  void Watch() {
    std::unique_lock<std::mutex> lock(mutex);
    while (!stopping) {
      lock.unlock();
      const rd_kafka_metadata_t* metadata = nullptr;
      const rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, topic_handle, &metadata, kMetadataTimeoutMs);
      std::optional<std::string> why;
      if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        why = "cannot reach the Kafka brokers " + brokers + " to read topic '" + topic + "': " + rd_kafka_err2str(err);
      } else if (metadata->topic_cnt < 1 || metadata->topics[0].err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        const rd_kafka_resp_err_t topic_err =
            metadata->topic_cnt < 1 ? RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART : metadata->topics[0].err;
        const bool unknown = topic_err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
        why = "topic '" + topic + "' cannot be read from " + brokers + ": " + rd_kafka_err2str(topic_err) +
              (unknown ? " (create it, or fix tables[].source.topic)" : "");
      } else if (partitions.load() < 0) {
        why = Assign(metadata->topics[0]);
      }
      if (metadata != nullptr) rd_kafka_metadata_destroy(metadata);
      SetProblem(why);
      lock.lock();
      wake.wait_for(lock, std::chrono::milliseconds(kProbeIntervalMs), [&] { return stopping; });
    }
  }

  std::optional<std::string> Assign(const rd_kafka_metadata_topic_t& meta) {
    rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(meta.partition_cnt);
    for (int k = 0; k < meta.partition_cnt; ++k) {
      const int32_t p = meta.partitions[k].id;
      auto it = start.find(p);
      rd_kafka_topic_partition_list_add(list, topic.c_str(), p)->offset =
          it != start.end() ? it->second : RD_KAFKA_OFFSET_BEGINNING;
    }
    const rd_kafka_resp_err_t err = rd_kafka_assign(rk, list);
    rd_kafka_topic_partition_list_destroy(list);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      return "cannot assign the partitions of topic '" + topic + "': " + rd_kafka_err2str(err);
    }
    partitions.store(meta.partition_cnt);
    return std::nullopt;
  }

  std::string brokers, topic;
  std::map<int32_t, int64_t> start;  // Where to read each partition from (Seek); read by the watcher once.
  rd_kafka_t* rk = nullptr;
  rd_kafka_topic_t* topic_handle = nullptr;
  rd_kafka_queue_t* queue = nullptr;
  std::thread watcher;
  mutable std::mutex mutex;  // Guards problem and stopping.
  std::condition_variable wake;
  bool stopping = false;
  std::optional<std::string> problem;
  std::atomic<int> partitions{-1};  // Assigned partitions; -1 until assigned.
  std::set<int32_t> at_end;         // Partitions read to their end at least once (the polling thread's).
  std::vector<rd_kafka_message_t*> messages;  // ReadNew scratch.
};

KafkaTableReader::KafkaTableReader(const TableSpec& table) : table_(table) {}

KafkaTableReader::~KafkaTableReader() = default;

Status KafkaTableReader::Open() {
  if (impl_) return Status::Ok();
  auto impl = std::make_unique<Impl>();
  impl->brokers = table_.brokers;
  impl->topic = table_.topic;
  impl->start = next_;
  const KafkaProperties settings = {
      {"bootstrap.servers", table_.brokers},
      {"client.id", "freshet-table-" + table_.name},
      // librdkafka's consumer queue needs a group; it is never joined (partitions are assigned, not subscribed)
      // and nothing is committed to it: the checkpoint holds the offsets.
      {"group.id", "freshet-table-" + table_.name},
      {"enable.auto.commit", "false"},
      {"enable.auto.offset.store", "false"},
      // A checkpoint's offset past the topic's end (the topic was made again): read it from its start.
      {"auto.offset.reset", "earliest"},
      // Tells when a partition has been read to its end (caught_up).
      {"enable.partition.eof", "true"},
      {"isolation.level", "read_committed"},
  };
  FRESHET_ASSIGN_OR_RETURN(rd_kafka_conf_t * conf,
                           MakeKafkaConf("table '" + table_.name + "' (Kafka)", settings, table_.properties));
  rd_kafka_conf_set_opaque(conf, impl.get());
  rd_kafka_conf_set_error_cb(conf, &Impl::OnError);
  char error[512];
  impl->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, error, sizeof(error));
  if (impl->rk == nullptr) {
    rd_kafka_conf_destroy(conf);
    return Status::Invalid("table '" + table_.name + "': cannot create the Kafka consumer: " + error);
  }
  rd_kafka_poll_set_consumer(impl->rk);
  impl->queue = rd_kafka_queue_get_consumer(impl->rk);
  impl->topic_handle = rd_kafka_topic_new(impl->rk, table_.topic.c_str(), nullptr);
  impl->watcher = std::thread([raw = impl.get()] { raw->Watch(); });
  impl_ = std::move(impl);
  return Status::Ok();
}

Status KafkaTableReader::ReadNew(std::vector<TableRow>* rows, std::vector<RejectedMessage>* rejected, size_t max,
                                 int timeout_ms) {
  FRESHET_RETURN_IF_ERROR(Open());
  impl_->messages.resize(max);
  const ssize_t got = rd_kafka_consume_batch_queue(impl_->queue, timeout_ms, impl_->messages.data(), max);
  for (ssize_t k = 0; k < got; ++k) {
    rd_kafka_message_t* m = impl_->messages[static_cast<size_t>(k)];
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      impl_->at_end.insert(m->partition);
    } else if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      impl_->SetProblem("topic '" + table_.topic + "': " + rd_kafka_message_errstr(m));
    } else {
      next_[m->partition] = m->offset + 1;
      Result<TableRow> row = RowOf(table_, *m);
      if (row.ok()) {
        rows->push_back(std::move(row).value());
      } else {
        const char* payload = static_cast<const char*>(m->payload);
        rejected->push_back(RejectedMessage{m->partition, m->offset, row.status().message(),
                                            payload == nullptr ? "" : std::string(payload, m->len)});
      }
    }
    rd_kafka_message_destroy(m);
  }
  return Status::Ok();
}

bool KafkaTableReader::caught_up() const {
  if (!impl_) return false;
  const int partitions = impl_->partitions.load();
  return partitions >= 0 && impl_->at_end.size() >= static_cast<size_t>(partitions);
}

std::optional<std::string> KafkaTableReader::problem() const {
  if (!impl_) return std::nullopt;
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->problem;
}

}  // namespace freshet

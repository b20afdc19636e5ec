#include "source/kafka_producer.h"

#include <librdkafka/rdkafka.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "source/kafka_config.h"

namespace freshet {

struct KafkaLineProducer::Impl {
  ~Impl() {
    if (topic != nullptr) rd_kafka_topic_destroy(topic);
    if (rk != nullptr) rd_kafka_destroy(rk);
  }
  static void OnDelivery(rd_kafka_t*, const rd_kafka_message_t* message, void* opaque) {
    Impl* self = static_cast<Impl*>(opaque);
    if (message->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      if (self->failed.fetch_add(1) == 0) self->first_error = rd_kafka_err2str(message->err);
    }
  }
  rd_kafka_t* rk = nullptr;
  rd_kafka_topic_t* topic = nullptr;
  std::atomic<uint64_t> failed{0};
  std::string first_error;
};

std::string_view FindEntityKey(std::string_view line, std::string_view field) {
  const std::string needle = "\"" + std::string(field) + "\":";
  const size_t at = line.find(needle);
  if (at == std::string_view::npos) return {};
  size_t k = at + needle.size();
  while (k < line.size() && line[k] == ' ') ++k;
  if (k < line.size() && line[k] == '"') {
    const size_t end = line.find('"', k + 1);
    if (end == std::string_view::npos) return {};
    std::string_view key = line.substr(k + 1, end - k - 1);
    return key.find('\\') == std::string_view::npos ? key : std::string_view{};  // Escapes: leave unkeyed.
  }
  size_t end = k;
  while (end < line.size() && (line[end] == '-' || (line[end] >= '0' && line[end] <= '9'))) ++end;
  return line.substr(k, end - k);
}

KafkaLineProducer::KafkaLineProducer(KafkaProducerOptions options) : options_(std::move(options)) {}

KafkaLineProducer::~KafkaLineProducer() {
  if (file_ != nullptr) std::fclose(file_);
}

Result<std::unique_ptr<KafkaLineProducer>> KafkaLineProducer::Open(KafkaProducerOptions options) {
  std::unique_ptr<KafkaLineProducer> producer(new KafkaLineProducer(std::move(options)));
  auto impl = std::make_unique<Impl>();
  char error[512];
  const KafkaProperties settings = {
      {"bootstrap.servers", producer->options_.brokers},
      {"client.id", "freshet-generate"},
      {"enable.idempotence", "true"},  // acks=all, ordered, no duplicates on retry.
      {"linger.ms", "20"},
      {"batch.num.messages", "10000"},
      {"compression.type", "lz4"},
      {"queue.buffering.max.messages", "1000000"},
  };
  FRESHET_ASSIGN_OR_RETURN(rd_kafka_conf_t * conf,
                           MakeKafkaConf("Kafka producer", settings, producer->options_.properties));
  rd_kafka_conf_set_opaque(conf, impl.get());
  rd_kafka_conf_set_dr_msg_cb(conf, &Impl::OnDelivery);
  impl->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, error, sizeof(error));
  if (impl->rk == nullptr) {
    rd_kafka_conf_destroy(conf);
    return Status::Invalid(std::string("Kafka producer: cannot create it: ") + error);
  }
  impl->topic = rd_kafka_topic_new(impl->rk, producer->options_.topic.c_str(), nullptr);
  producer->impl_ = std::move(impl);
  return producer;
}

Status KafkaLineProducer::Send(std::string_view line) {
  const std::string_view key = FindEntityKey(line, options_.entity_field);
  while (true) {
    const int rc = rd_kafka_produce(impl_->topic, RD_KAFKA_PARTITION_UA, RD_KAFKA_MSG_F_COPY,
                                    const_cast<char*>(line.data()), line.size(), key.empty() ? nullptr : key.data(),
                                    key.size(), nullptr);
    if (rc == 0) break;
    const rd_kafka_resp_err_t err = rd_kafka_last_error();
    if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      return Status::IoError("Kafka producer: cannot send to topic '" + options_.topic + "': " + rd_kafka_err2str(err));
    }
    rd_kafka_poll(impl_->rk, 50);  // Let deliveries drain the queue.
  }
  ++sent_;
  if ((sent_ & 0x3FF) == 0) rd_kafka_poll(impl_->rk, 0);
  return Status::Ok();
}

ssize_t KafkaLineProducer::WriteCookie(void* cookie, const char* data, size_t size) {
  KafkaLineProducer* self = static_cast<KafkaLineProducer*>(cookie);
  std::string_view text(data, size);
  while (!text.empty()) {
    const size_t newline = text.find('\n');
    if (newline == std::string_view::npos) {
      self->pending_.append(text);
      break;
    }
    Status sent = Status::Ok();
    if (self->pending_.empty()) {
      sent = self->Send(text.substr(0, newline));
    } else {
      self->pending_.append(text.substr(0, newline));
      sent = self->Send(self->pending_);
      self->pending_.clear();
    }
    if (!sent.ok()) {
      self->send_error_ = sent;
      errno = EIO;
      return -1;
    }
    text.remove_prefix(newline + 1);
  }
  return static_cast<ssize_t>(size);
}

FILE* KafkaLineProducer::file() {
  if (file_ == nullptr) {
    cookie_io_functions_t io{};
    io.write = &KafkaLineProducer::WriteCookie;
    file_ = fopencookie(this, "w", io);
  }
  return file_;
}

Status KafkaLineProducer::Finish() {
  if (file_ != nullptr) {
    std::fclose(file_);
    file_ = nullptr;
  }
  if (!send_error_.ok()) return send_error_;
  if (!pending_.empty()) {
    FRESHET_RETURN_IF_ERROR(Send(pending_));
    pending_.clear();
  }
  const rd_kafka_resp_err_t flushed = rd_kafka_flush(impl_->rk, 120000);
  if (flushed != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return Status::IoError("Kafka producer: " + std::to_string(rd_kafka_outq_len(impl_->rk)) +
                           " messages were not acknowledged within 120 s by " + options_.brokers + " (" +
                           rd_kafka_err2str(flushed) + ")");
  }
  if (impl_->failed.load() > 0) {
    return Status::IoError("Kafka producer: " + std::to_string(impl_->failed.load()) + " of " + std::to_string(sent_) +
                           " messages were not delivered to topic '" + options_.topic + "': " + impl_->first_error);
  }
  return Status::Ok();
}

}  // namespace freshet

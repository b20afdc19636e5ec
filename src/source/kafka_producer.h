// KafkaLineProducer: writes JSON-lines events to a Kafka topic, one message per line, keyed by the entity so
// that all of an entity's events land in one partition (what a Kafka source needs; see kafka_source.h).
//
//   FRESHET_ASSIGN_OR_RETURN(auto producer, KafkaLineProducer::Open({"127.0.0.1:9092", "events", "user_id"}));
//   FILE* out = producer->file();   // Lines written here become messages (`freshet generate --kafka`).
//   ...
//   FRESHET_RETURN_IF_ERROR(producer->Finish());   // Flushes, then fails if any message was not delivered.
//
// Delivery is acks=all with idempotence, so a retried send is neither lost nor doubled and each partition keeps
// the order the lines were written in. A line whose entity field cannot be found (a malformed line) is sent
// without a key, to a partition of librdkafka's choosing.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace freshet {

struct KafkaProducerOptions {
  std::string brokers;
  std::string topic;
  std::string entity_field = "user_id";  // The top-level field whose text value keys each message.
  std::vector<std::pair<std::string, std::string>> properties;  // Passed to librdkafka as given.
};

class KafkaLineProducer {
 public:
  static Result<std::unique_ptr<KafkaLineProducer>> Open(KafkaProducerOptions options);
  ~KafkaLineProducer();
  KafkaLineProducer(const KafkaLineProducer&) = delete;
  KafkaLineProducer& operator=(const KafkaLineProducer&) = delete;

  // Sends one line (without its newline) as a message; waits while librdkafka's queue is full.
  Status Send(std::string_view line);
  // A stdio stream whose complete lines are sent with Send (a final line without a newline is sent by Finish).
  FILE* file();
  // Sends what file() still holds, waits until every message is acknowledged (or fails), and reports failures.
  Status Finish();

  uint64_t sent() const { return sent_; }

 private:
  struct Impl;
  explicit KafkaLineProducer(KafkaProducerOptions options);
  static ssize_t WriteCookie(void* cookie, const char* data, size_t size);

  KafkaProducerOptions options_;
  std::unique_ptr<Impl> impl_;
  FILE* file_ = nullptr;
  std::string pending_;  // An incomplete line written to file().
  uint64_t sent_ = 0;
  Status send_error_ = Status::Ok();
};

// The text of the top-level string (or integer) field `field` in a JSON object line, without parsing the rest;
// empty when not found. For message keys.
std::string_view FindEntityKey(std::string_view line, std::string_view field);

}  // namespace freshet

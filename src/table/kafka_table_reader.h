// KafkaTableReader: the rows of a reference table kept in a Kafka topic (`tables[].source`, type kafka), best a
// compacted one: each message is one row, its key the table key and its value the row as a JSON object; a null
// value (a tombstone) deletes the key (TableRow with kDeletedRow). A message that is no row (no key, a value that
// is not a JSON object, a key field that names another key, a bad valid_from) is handed back as rejected, with
// its partition, offset and reason; the reader goes on.
//
// Every partition is read from its start, or from where Seek put it (a checkpoint's offsets), without a consumer
// group: a table is state rebuilt from the topic, and Freshet's checkpoint holds where each partition stands. The
// topic's partitions are looked up on a thread of the reader's own (so that an unreachable broker never blocks
// the caller), which also checks every few seconds that the brokers answer: problem() says why not.
//
// Partitions added to the topic after the reader started are read after a restart. Not thread-safe;
// librdkafka and the watcher run threads of their own.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "spec/spec.h"
#include "table/table_set.h"

namespace freshet {

// A message that is no row of the table.
struct RejectedMessage {
  int32_t partition = 0;
  int64_t offset = 0;
  std::string reason;
  std::string raw;  // The message value (empty for a tombstone).
};

class KafkaTableReader {
 public:
  explicit KafkaTableReader(const TableSpec& table);
  ~KafkaTableReader();
  KafkaTableReader(const KafkaTableReader&) = delete;
  KafkaTableReader& operator=(const KafkaTableReader&) = delete;

  // Where each partition is to be read from (partition -> offset of the next message); a partition not named
  // starts at its beginning. Only before the first ReadNew.
  void Seek(std::map<int32_t, int64_t> next) { next_ = std::move(next); }
  // Where each partition read so far stands: the offset after the last message handed out.
  const std::map<int32_t, int64_t>& next() const { return next_; }
  const std::string& topic() const { return table_.topic; }

  // Appends the rows of the messages fetched since the last call (at most `max`, in each partition's order) to
  // *rows and the other messages to *rejected. Waits up to `timeout_ms` when none has been fetched. Fails only
  // when the Kafka client cannot be made (a property librdkafka refuses).
  Status ReadNew(std::vector<TableRow>* rows, std::vector<RejectedMessage>* rejected, size_t max, int timeout_ms);

  // Whether every partition of the topic has been read to its end (the end it had when the reader reached it).
  bool caught_up() const;
  // Why the topic cannot be read now (brokers unreachable, no such topic), or nullopt.
  std::optional<std::string> problem() const;

 private:
  struct Impl;
  Status Open();

  const TableSpec& table_;
  std::map<int32_t, int64_t> next_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace freshet

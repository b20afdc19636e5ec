// TableFeed: the reference tables of `freshet run` — their state (TableSet, read by every lane's parser), where
// each table file was read up to, and the versions' numbering — fed between event batches, so that each version
// has one place in the stream's order: before the event numbered PipelineLanes::next_offline_seq().
//
// Rows come from each table's file source and from PUT /v1/tables/{name} (a row with "_deleted": true deletes its
// key, ParseTableRow): Put appends the valid rows of a request
// to the table's put log, <data_dir>/tables/<name>.jsonl, and fsyncs it before the request is acknowledged; the
// log is then read like a table file. So an acknowledged row survives a crash (kill -9, power loss), and it takes
// its place in the stream when Poll reads it.
//
// Rows also come from each table's Kafka topic (KafkaTableReader): a message's value is a row, a null value
// deletes its key (a version kDeletedRow, recorded in the history like any other). At the first Poll every topic
// is read to its end (for at most the table's catch_up), so that the table as it stands comes before the first
// event; then each Poll takes what has arrived. A message that is no row goes to the table's dead letters,
// <data_dir>/dead_letters/table_<name>.jsonl (with its partition, offset and reason), and is counted.
//
// Every version goes to the offline store's table history (OfflineSink::AddTableVersion) with that place, and
// the checkpoint holds the state (Encode/Restore, under the position name "tables"): the tables, where each file
// and each topic partition was read up to, and the length of each table's dead letters. So a restart (kill -9
// included) resumes each file and topic right after the rows the restored state holds, and the history holds
// each version once.
//
// Metrics: freshet_table_versions_total{table}, freshet_table_late_versions_total{table} (a version whose
// valid_from is at or before the newest accepted event time: events already processed did not see it),
// freshet_table_rejected_rows_total{table}, freshet_table_keys{table}, freshet_table_versions_held{table} (after
// pruning: each Poll drops the versions the low watermark has passed, TableSet::Prune).
//
// Not thread-safe: the runtime calls Poll, Add, Encode and Restore under its exclusive lock, and problem() on
// the thread that calls Poll.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/bytes.h"
#include "common/status.h"
#include "event/dead_letters.h"
#include "run/lanes.h"
#include "run/offline_sink.h"
#include "serve/metrics.h"
#include "spec/spec.h"
#include "table/kafka_table_reader.h"
#include "table/table_file.h"
#include "table/table_set.h"

namespace freshet {

class TableFeed {
 public:
  TableFeed(const Spec& spec, MetricsRegistry& metrics, const std::string& data_dir);

  TableSet& tables() { return tables_; }

  // Reads what each table file gained since the last call and adds its rows as versions. Rows that cannot be
  // read are counted and returned as "FILE:LINE: MESSAGE" warnings; a file that cannot be read fails.
  Status Poll(PipelineLanes& lanes, OfflineSink* offline, int64_t wall_ms, std::vector<std::string>* warnings);

  // PUT /v1/tables/{name}: appends the rows of `body` (JSON lines) that can be read to the table's put log,
  // durably, and returns how many; each other row's 1-based line and reason go to *errors. NotFound for a table
  // the spec lacks. Thread-safe (its own lock), so the HTTP threads call it without the runtime's lock.
  Result<size_t> Put(std::string_view name, std::string_view body, std::vector<std::pair<size_t, std::string>>* errors);
  // The index of table `name`, or -1.
  int IndexOf(std::string_view name) const;

  // The checkpoint's part; syncs the Kafka tables' dead letters (their length is part of it). It is the
  // positions and counters (small) followed by the tables' versions (tables().Save: tens of MB for a large table).
  // With `with_versions` false only the first half is returned, and the caller appends tables().Save's bytes of
  // the same moment (the runtime has its forked child encode them, so that processing does not wait for them).
  Result<std::string> Encode(bool with_versions = true);
  Status Restore(std::string_view bytes);

  // Why a Kafka table cannot be read now (brokers unreachable, no such topic, not read to its end within
  // catch_up), for /health; nullopt when every table is fine.
  std::optional<std::string> problem() const;

 private:
  struct KafkaTable {
    size_t table;
    std::unique_ptr<KafkaTableReader> reader;
    std::string dead_letter_path;
    std::unique_ptr<DeadLetterWriter> dead_letters;
    uint64_t restored_dead_letter_bytes = 0;  // Kept by the checkpoint; what was written after it is cut off.
    bool catch_up_missed = false;
  };
  void Add(size_t table, const TableRow& row, PipelineLanes& lanes, OfflineSink* offline, int64_t wall_ms);
  // Restore's part for the Kafka tables: each topic's offsets and dead-letter length.
  Status RestoreKafka(ByteReader& in);
  // The first Poll: opens the Kafka tables' dead letters and reads each topic to its end (CatchUp).
  Status Start(PipelineLanes& lanes, OfflineSink* offline, int64_t wall_ms, std::vector<std::string>* warnings);
  // Adds the rows of table `k`'s messages fetched so far (waiting up to timeout_ms for some); dead-letters the
  // others.
  Status ReadKafka(KafkaTable& k, int timeout_ms, PipelineLanes& lanes, OfflineSink* offline, int64_t wall_ms,
                   std::vector<std::string>* warnings);
  // Drops the versions no event to come can see (TableSet::Prune) and updates the versions-held gauge.
  void Prune(PipelineLanes& lanes);

  const Spec& spec_;
  TableSet tables_;
  struct Reader {
    size_t table;
    std::unique_ptr<TableSpec> spec;  // Of the put log (a jsonl file); null for the table's own source.
    std::unique_ptr<TableFileReader> reader;
  };
  std::vector<Reader> readers_;  // The tables' file sources, then one put log per table.
  std::vector<KafkaTable> kafka_;  // The tables' Kafka sources.
  bool started_ = false;
  std::mutex put_mutex_;
  std::vector<int64_t> next_version_;                      // Per table: the next version's number.
  std::vector<Counter*> versions_, late_, rejected_;
  std::vector<Gauge*> keys_, held_;
};

}  // namespace freshet

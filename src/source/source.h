// Source: where `freshet run` reads events from, with positions a checkpoint can record and a restart can
// seek back to, so that after a crash no event is lost and none is counted twice.
//
// A source hands out records (one event line each) in batches. Every record says where it came from (its
// line number, for dead letters), when the source first saw it (for freshness metrics) and where the source
// stands just after it. A position is opaque text that names a place between two records; it is what a
// checkpoint stores next to the state:
//
//   std::vector<SourceRecord> batch;
//   FRESHET_RETURN_IF_ERROR(source.Seek(checkpoint.position));   // on restart, before the first Poll
//   while (running) {
//     FRESHET_RETURN_IF_ERROR(source.Poll(&batch, 4096, /*timeout_ms=*/100));
//     for (const SourceRecord& record : batch) Process(record);
//     if (CheckpointDue()) WriteCheckpoint(state, source.position());
//     for (std::string& warning : source.TakeWarnings()) LogWarning(warning);
//   }
//
// Positions are exact: Seek(p) followed by Poll yields exactly the records that followed p, whatever batch
// sizes were used before and after. A source is made of one or more streams, each an ordered sequence of
// records with increasing offsets: a file (and, after rotation, the file that replaced it), a segment of the
// ingest log, a Kafka partition. A position records the offset reached in every stream.
//
// Implementations: FileSource (file_source.h), IngestLogSource (ingest_log.h). Sources are not thread-safe:
// one thread polls a source.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace freshet {

// Where a record ends within its stream. Together with the record's line number this is all a single-stream
// source needs to name the position after the record; see Source::PositionAfter.
struct SourceOffset {
  // The stream the record belongs to. FileSource: the index of the file among those the source has read
  // (0, then 1 after the first rotation, ...). IngestLogSource: the segment's base sequence number. A Kafka
  // source: the partition.
  uint64_t stream = 0;
  // The offset just after the record in that stream. FileSource: byte offset just past the line's newline.
  // IngestLogSource: byte offset in the segment just past the record. Kafka: the record's offset + 1.
  uint64_t offset = 0;
};

// One event line handed out by Source::Poll.
struct SourceRecord {
  // The line without its newline (and without a trailing '\r'). Valid until the next Poll or Seek; at least
  // `capacity` >= text.size() + kParsePaddingBytes bytes are readable from text.data(), so EventParser can
  // parse it in place. Empty when `too_long`.
  std::string_view text;
  size_t capacity = 0;
  // 1-based number of the line within its file (FileSource), or of the record within the log
  // (IngestLogSource: its sequence number + 1). For dead letters.
  uint64_t line_number = 0;
  // std::chrono::steady_clock time, in nanoseconds since its epoch, when the source first saw the record:
  // FileSource, when the read that brought the line's end returned; IngestLogSource, when the HTTP request
  // that carried it was accepted. For freshness metrics; comparable only within one boot of the machine.
  int64_t arrival_ns = 0;
  // Where the source stands just after this record.
  SourceOffset end;
  // The line was longer than kMaxLineBytes; its text is not kept (reject it, with its line number).
  bool too_long = false;
};

// A stream of event records with seekable positions. See the file comment for the contract.
class Source {
 public:
  virtual ~Source() = default;

  // Names the source in dead letters and logs: the file's path, "ingest", a Kafka topic.
  virtual std::string_view name() const = 0;

  // Replaces *out with the next records, at most `max_records` (> 0), in order. Returns as soon as at least
  // one record is available; otherwise waits up to `timeout_ms` (0: do not wait) for new data and returns
  // with *out empty when none came. Record texts stay valid until the next Poll or Seek. An error (an
  // unreadable file, a damaged log) is returned as a Status that says what and where; the source should not
  // be polled again after one.
  virtual Status Poll(std::vector<SourceRecord>* out, size_t max_records, int timeout_ms) = 0;

  // The position just after the last record returned (before any record: where reading starts), as text
  // that Seek accepts, also in another process after a restart. Costs a small string: call it when a
  // checkpoint is taken, not per record.
  virtual std::string position() const = 0;

  // The position just after the first `count` records of `batch`, which must be exactly what the latest
  // Poll returned (count 0: the position before that Poll; count batch.size(): position()). For a checkpoint
  // taken in the middle of a batch. Sources with several streams (Kafka partitions) fold the records'
  // offsets into the positions the batch started from, so they need the whole prefix, not just one record.
  virtual std::string PositionAfter(std::span<const SourceRecord> batch, size_t count) const = 0;

  // Makes the next Poll continue just after `position`, which an earlier position() or PositionAfter of a
  // source of the same kind and configuration returned. A position that cannot be honoured (its file is
  // gone, or shorter than the offset; its log segment was deleted) is an error that says why and what to
  // do. Where a source can still continue safely but not exactly, it does and says so in a warning.
  virtual Status Seek(std::string_view position) = 0;

  // True once a finite source (a file read without following) has returned its last record: Poll will
  // return nothing more. Sources that follow new data never become exhausted.
  virtual bool exhausted() const = 0;

  // Returns and clears the warnings gathered so far (rotation detected, a torn log tail repaired, a
  // checkpointed file gone), each a full sentence naming the file. The caller logs them.
  std::vector<std::string> TakeWarnings() { return std::exchange(warnings_, {}); }

 protected:
  void Warn(std::string message) { warnings_.push_back(std::move(message)); }

 private:
  std::vector<std::string> warnings_;
};

}  // namespace freshet

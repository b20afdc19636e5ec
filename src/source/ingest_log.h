// IngestLog: the durable log behind HTTP push. `POST /v1/ingest` appends the request's lines and answers
// only once Append has returned, that is once the lines are on disk (fsync); `freshet run` reads the log
// through an IngestLogSource, which is a Source like any file.
//
// On disk: a directory of segment files `ingest-<base>.log`, where <base> (20 digits) is the sequence
// number of the segment's first record; sequence numbers count records from the log's creation, from 0.
// A segment is a run of records, each
//     [u32 length][u32 crc32c][i64 arrival_ns][length bytes: the line]
// little-endian, where the CRC-32C (Castagnoli) covers the length, arrival_ns and line bytes, in that order.
// Appends go to the last segment; once it would grow past IngestLogOptions::segment_bytes a new one starts.
//
// Durability: concurrent Appends share fsyncs (group commit): each Append writes its records, then either
// syncs the file itself or waits for a sync already under way to finish and, if that did not cover its
// records, for the next one. An Append returns only after a sync that covers its records. Readers
// (IngestLogSource) see records only once they are synced, so a checkpoint never names a position that a
// crash could take away.
//
// Recovery, on Open: the last segment is read through; at the first record that is incomplete or fails its
// CRC (a crash in the middle of a write), that record and everything after it are cut off (ftruncate +
// fsync) and a warning says where and how many bytes. Such bytes were never acknowledged: a record is
// acknowledged only after a sync, and a sync covers every earlier record, so everything acknowledged lies
// before the first damaged record. Earlier segments were synced when the log moved past them and are not
// re-read at Open; a damaged record there is reported as an error by the reader that meets it.
//
// A directory is used by one IngestLog at a time (an exclusive flock on it; a second Open fails).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "source/source.h"

namespace freshet {

// A place in the ingest log, between two records. Text form: `ingest:seq=S;segment=B;offset=O`.
struct IngestLogPosition {
  uint64_t sequence = 0;  // Records before this place, counted from the log's creation.
  uint64_t segment = 0;   // Base sequence number of the segment the place is in.
  uint64_t offset = 0;    // Byte offset in that segment.

  std::string ToString() const;
  static Result<IngestLogPosition> Parse(std::string_view text);
};

struct IngestLogOptions {
  // A new segment starts when a write would take the current one past this many bytes (an Append larger than
  // this gets a segment of its own). Default: 64 MiB.
  uint64_t segment_bytes = uint64_t{64} << 20;
};

class IngestLog {
 public:
  // Opens the log in `dir`, creating the directory and the first segment when there are none, and repairs
  // a torn tail (see the file comment; TakeWarnings says what was cut). An error when the directory cannot
  // be created or read, or another IngestLog (in this or another process) has it open.
  static Result<std::unique_ptr<IngestLog>> Open(const std::string& dir, IngestLogOptions options = {});
  ~IngestLog();
  IngestLog(const IngestLog&) = delete;
  IngestLog& operator=(const IngestLog&) = delete;

  // Appends `lines` as consecutive records, all with `arrival_ns` (steady-clock nanoseconds when the request
  // was accepted), and returns once they are durable: the sequence number after them (so the records have
  // sequence numbers result - lines.size() .. result - 1). A line longer than kMaxLineBytes is refused
  // (InvalidArgument naming it; nothing is appended). After a failed fsync every later Append fails too:
  // the log's state on disk is then unknown, and the process should restart and recover. Thread-safe.
  Result<uint64_t> Append(std::span<const std::string_view> lines, int64_t arrival_ns);

  // Deletes the segments all of whose records come before `sequence` and that are followed by a segment
  // starting before it too (a segment the position is at the very end of is kept, so that a checkpointed
  // position always names an existing segment). Never deletes the segment being written. Call it with the
  // sequence of a position that a completed checkpoint recorded. Thread-safe.
  Status DeleteBefore(uint64_t sequence);

  // The sequence number after the last durable record. Thread-safe.
  uint64_t durable_sequence() const;
  // The base sequence number of the oldest segment kept. Thread-safe.
  uint64_t first_sequence() const;
  // Segments on disk, and fsyncs done by Appends so far (less than the Appends when they shared syncs).
  size_t segment_count() const;
  uint64_t sync_count() const;

  const std::string& dir() const { return dir_; }

  // Returns and clears the warnings from Open (a torn tail cut off).
  std::vector<std::string> TakeWarnings();

 private:
  friend class IngestLogSource;

  struct Segment {
    uint64_t base = 0;
    std::string path;
    uint64_t bytes = 0;  // Bytes written (all durable once the segment is not the last).
  };

  // What a reader may read of one segment.
  struct SegmentView {
    bool found = false;
    std::string path;
    uint64_t readable_bytes = 0;  // Durable bytes.
    bool sealed = false;          // No more records will be added; next_base starts the next segment.
    uint64_t next_base = 0;
  };

  IngestLog(std::string dir, IngestLogOptions options);
  Status Recover();
  Status RollLocked();
  Status FailLocked(Status status);
  // What may be read of the segment starting at record `base` (found is false when there is none).
  SegmentView View(uint64_t base) const;
  // Waits until records past `sequence` are durable (true) or `timeout_ms` passes (false).
  bool WaitForMore(uint64_t sequence, int64_t timeout_ms) const;

  const std::string dir_;
  const IngestLogOptions options_;
  int dir_fd_ = -1;

  mutable std::mutex mutex_;
  mutable std::condition_variable synced_;  // A sync finished (or failed), or a segment was added.
  std::deque<Segment> segments_;            // Ordered by base; the last is being written.
  int active_fd_ = -1;
  uint64_t next_sequence_ = 0;     // After the last record written.
  uint64_t durable_sequence_ = 0;  // After the last record synced.
  uint64_t durable_bytes_ = 0;     // Synced bytes of the last segment.
  bool syncing_ = false;           // An Append is syncing the last segment, without the mutex.
  uint64_t sync_count_ = 0;
  Status failure_;                 // Set for good by a failed write that could not be undone, or fsync.
  std::vector<std::string> warnings_;
};

// Reads an IngestLog's records in order, as they become durable, following new appends. The log must outlive
// the source. Without a Seek, reading starts at the oldest segment kept. Positions are IngestLogPosition
// text; SourceRecord::end is {segment base, offset in it}; line_number is the record's sequence number + 1.
// Not thread-safe (one polling thread), but Appends may run concurrently on other threads.
class IngestLogSource final : public Source {
 public:
  explicit IngestLogSource(IngestLog* log);
  ~IngestLogSource() override;
  IngestLogSource(const IngestLogSource&) = delete;
  IngestLogSource& operator=(const IngestLogSource&) = delete;

  std::string_view name() const override { return "ingest"; }
  Status Poll(std::vector<SourceRecord>* out, size_t max_records, int timeout_ms) override;
  std::string position() const override;
  std::string PositionAfter(std::span<const SourceRecord> batch, size_t count) const override;
  // Errors: a position before the oldest segment kept (deleted by DeleteBefore), beyond the durable end, or
  // not at a record boundary.
  Status Seek(std::string_view position) override;
  bool exhausted() const override { return false; }

 private:
  Status OpenSegment(const std::string& path, uint64_t base, uint64_t offset);
  Result<bool> NextRecord(SourceRecord* record);

  IngestLog* log_;
  bool started_ = false;
  int fd_ = -1;
  uint64_t read_offset_ = 0;  // Offset in the segment of the next byte to read into the buffer.
  std::unique_ptr<char[]> buffer_;  // Bytes [begin_, end_) are read but not yet parsed.
  size_t begin_ = 0;
  size_t end_ = 0;
  IngestLogPosition position_;     // After the last record handed out.
  IngestLogPosition batch_start_;  // Where the latest Poll started.
};

}  // namespace freshet

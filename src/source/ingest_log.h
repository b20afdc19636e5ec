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
// before the first damaged record. Earlier segments were synced when the log moved past them and are read at
// Open only for their idempotency keys (a damaged record there gets a warning); the reader that meets a damaged
// record reports it as an error.
//
// Idempotency keys (AppendOnce): a batch sent with a producer's key is written as a key record followed by
// its line records, in the same write and sync as any batch. A key record is framed like a line, with the top
// bit of its length field set (lines are at most kMaxLineBytes, so the bit is free); its payload is
//     [u8 version = 1][i64 logged_ms][u32 line count][u64 digest_a][u64 digest_b][varint + key][varint + receipt]
// little-endian, where logged_ms is wall-clock time and the digest is a hash of the batch's lines. Key records
// are not events: readers skip them and sequence numbers do not count them. Recovery cuts a torn tail back to
// the key record of an incomplete keyed batch, so a key is remembered exactly when its whole batch is in the
// log: acknowledged or not, a batch that is in the log in full is never logged again under its key, and one
// that is not is not remembered. The keys of deleted segments are kept in `idempotency-keys` (rewritten,
// atomically, before DeleteBefore deletes a segment): [8 bytes "FRKEYS01"][varint count][per key: the key
// record's payload, varint length first][u32 crc32c of everything before]. Open reads that file, then the key
// records of every kept segment, and forgets keys older than IngestLogOptions::key_window_ms. A Freshet from
// before key records reads a log that holds one as damaged at that record.
//
// A directory is used by one IngestLog at a time (an exclusive flock on it; a second Open fails).
#pragma once

#include <absl/container/flat_hash_map.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
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
  // How long AppendOnce remembers a key, from when its batch was logged (wall clock). Default: 24 hours.
  int64_t key_window_ms = int64_t{24} * 3600 * 1000;
  // The wall clock (epoch ms) that keys are timed by; empty: the system clock. Tests set it.
  std::function<int64_t()> wall_clock_ms = nullptr;
};

// The longest idempotency key and receipt AppendOnce takes.
inline constexpr size_t kMaxIngestKeyBytes = 256;
inline constexpr size_t kMaxIngestReceiptBytes = 64 << 10;

// A batch's idempotency key, for AppendOnce.
struct IngestKey {
  std::string_view key;      // The producer's key: 1 to kMaxIngestKeyBytes bytes.
  std::string_view receipt;  // What a resend is answered with (the caller's encoding of its acknowledgement).
};

// What AppendOnce did.
struct KeyedAppend {
  enum class Outcome {
    kAppended,  // The key was new: the batch is logged and durable, and the key remembered with it.
    kReplayed,  // The key was logged with the same lines: nothing was written; `receipt` is the first one's.
    kKeyReused  // The key was logged with other lines: nothing was written.
  };
  Outcome outcome = Outcome::kAppended;
  uint64_t sequence = 0;  // kAppended: as Append's result.
  std::string receipt;    // kReplayed: the receipt given with the first batch.
  int64_t logged_ms = 0;  // kReplayed, kKeyReused: when the first batch was logged (epoch ms).
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

  // Append for a batch sent with an idempotency key (see the file comment). When the key was logged within
  // key_window_ms, writes nothing and says whether the lines were the same (kReplayed, with the first receipt)
  // or not (kKeyReused); otherwise appends the batch and its key record together, as Append does. A resend
  // that arrives while the first is still being written waits for it. Empty `lines`: nothing is written or
  // remembered. Errors: those of Append, and InvalidArgument for an empty or overlong key or receipt. Thread-safe.
  Result<KeyedAppend> AppendOnce(std::span<const std::string_view> lines, int64_t arrival_ns, const IngestKey& key);

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
  // Idempotency keys remembered (logged within key_window_ms, or not yet forgotten). Thread-safe.
  size_t key_count() const;

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

  // A remembered idempotency key. Entries are kept in the order logged; an entry whose batch failed is
  // `dropped` (no longer in key_ids_) and freed when it reaches the front.
  struct KeyEntry {
    std::string key;
    uint64_t digest[2] = {0, 0};
    int64_t logged_ms = 0;
    uint64_t end_sequence = 0;  // While pending: after the batch's records once written (0 before).
    bool pending = false;       // Being written by an AppendOnce: durable once durable_sequence_ >= end_sequence.
    bool dropped = false;
    std::string receipt;
  };

  IngestLog(std::string dir, IngestLogOptions options);
  Status Recover();
  Status LoadKeys(const std::string& snapshot);
  Status RollLocked();
  // Writes `frames` (holding `lines` line records) to the last segment and waits until they are durable.
  // Requires the mutex held (through `lock`).
  // `end_sequence` (when given) gets the sequence after the records as soon as they are written.
  Result<uint64_t> WriteLocked(std::unique_lock<std::mutex>& lock, const std::string& frames, size_t lines,
                               uint64_t* end_sequence = nullptr);
  // Checks the lines and frames them as records after `frames`.
  static Status FrameLines(std::span<const std::string_view> lines, int64_t arrival_ns, std::string* frames);
  // DeleteBefore's deletions, once the keys are safe. Requires the mutex held.
  Status DeleteSegmentsLocked(uint64_t sequence);
  // Remembers a key read back from the log or the key file, unless it is older than the window.
  void RememberLocked(KeyEntry entry, int64_t now_ms);
  // Forgets keys logged more than key_window_ms before `now_ms`.
  void ExpireKeysLocked(int64_t now_ms);
  int64_t NowMs() const;
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

  std::deque<KeyEntry> keys_;     // Oldest first. Elements do not move while they are in the deque.
  uint64_t keys_front_id_ = 0;    // The id of keys_.front(); each key logged takes the next id.
  absl::flat_hash_map<std::string_view, uint64_t> key_ids_;  // Key (viewing KeyEntry::key) -> id.
  std::mutex delete_mutex_;       // One DeleteBefore at a time: the key file of the newest one wins.
  bool keys_file_ = false;        // The key file exists (so it is rewritten even when no key is left).
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

// FileSource: JSON lines from a file, optionally following it as it grows and as it is rotated (tail -F).
//
// Lines are numbered from 1 within each file; a trailing '\r' is stripped; a line longer than kMaxLineBytes
// is handed out as `too_long` without its text and reading goes on at the next line (as LineReader does).
//
// Without `follow` the file is read once to its end; a last line without a newline is a line, and then the
// source is exhausted. With `follow` the source keeps reading what is appended later: a last line without a
// newline is held back until its newline arrives, and Poll waits for new data (checking about every 20 ms).
// While following, the source also notices rotation:
//   - the path now names a different file (logrotate's rename + create): the old file, which the source
//     keeps open, is read to its end first (a last line without a newline is then a line of its own), then
//     the new file is read from its start;
//   - the file shrank below the offset read so far (copytruncate): it is read again from its start. Lines
//     appended between the source's last read and the truncation went only to the copy and are lost; a
//     warning says so.
// A path that does not exist for a while (between the rename and the create) is waited for. Rotation that
// truncates and then grows the file past the offset read before the source looks is not detectable.
//
// Positions are text: `file:dev=D;inode=I;offset=O;line=L;head=H;tail=T;path=P`, where O is the byte offset
// just after the last line returned, L its line number, H a hash of the file's first min(O, 1024) bytes, which
// tells a file apart from a later one that reuses the same inode number, and T a hash of the min(O, 4096) bytes
// before O. (H, T and O together are the fingerprint of what was read; positions written before T existed have
// no `tail=` and are compared by H and O alone.) Seek(position) resumes:
//   1. in the file at the path, when it is the recorded file (same device and inode, and the fingerprint), at O;
//      an error when it is now shorter than O (truncated below the offset);
//   2. otherwise in the recorded file found under another name in the same folder (rotated while Freshet
//      was down, e.g. events.jsonl.1), at O; once it is read to its end, the file at the path follows from
//      its start (a warning says so);
//   3. otherwise, the recorded file is gone, and the file at the path is another file (a new inode). When it
//      is at least O bytes long with the fingerprint of what was read (a copy of the file, perhaps with lines
//      appended: `cp events.jsonl x && mv x events.jsonl`), it is resumed at O, line L, with a warning;
//   4. otherwise it holds other bytes: a new file (logrotate's, its predecessor deleted or compressed) or the
//      old one rewritten (reordered, edited). Reading it from its start could accept again events that the
//      checkpoint already counted, so what happens is the `replaced` policy the source was made with:
//      kRefuse (an error naming the ways out) or kReadFromStart (with a warning; for a spec whose event-id
//      deduplication counts a re-read event once, or when the operator said the file is new).
// An error when there is no file at the path. The path in the position must be the source's path; a
// checkpoint made for another file is an error.
//
// While following, a rotation to a file that has the fingerprint of the old file up to where it was read to
// its end (a copy moved over the path, perhaps with more lines) continues in it at that offset; any other new
// file is read from its start, as logrotate's is.
//
// Not thread-safe. Holds a 4 MiB read buffer.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "source/source.h"

namespace freshet {

class FileSource final : public Source {
 public:
  // What Seek does when the file at the path is neither the recorded file nor a copy of what was read of it
  // (case 4 above).
  enum class Replaced {
    kRefuse,         // An error: reading it from its start could count events a second time.
    kReadFromStart,  // Read it from its start, with a warning.
  };

  // `path` is used as given (resolve it first) and names the source. Nothing is opened until Open, Seek or
  // the first Poll.
  FileSource(std::string path, bool follow, Replaced replaced = Replaced::kRefuse);
  ~FileSource() override;
  FileSource(const FileSource&) = delete;
  FileSource& operator=(const FileSource&) = delete;

  // Opens the file to read it from its start; an error if it cannot be opened. The first Poll calls this
  // when neither Open nor Seek was called.
  Status Open();

  std::string_view name() const override { return path_; }
  Status Poll(std::vector<SourceRecord>* out, size_t max_records, int timeout_ms) override;
  std::string position() const override;
  std::string PositionAfter(std::span<const SourceRecord> batch, size_t count) const override;
  Status Seek(std::string_view position) override;
  bool exhausted() const override { return exhausted_; }

 private:
  enum class Change { kNone, kRotated, kTruncated };

  Status OpenAt(const std::string& path, int fd, uint64_t offset, uint64_t line);
  void CloseFile();
  Result<size_t> ReadMore();
  bool NextLine(bool at_end, SourceRecord* record);
  void Compact();
  Result<Change> CheckForChange() const;
  Status SwitchFile(Change change);
  std::string Format(uint64_t offset, uint64_t line) const;

  std::string path_;
  bool follow_ = false;
  Replaced replaced_ = Replaced::kRefuse;

  // The file being read.
  int fd_ = -1;
  bool opened_ = false;
  std::string open_path_;      // path_, or the rotated name Seek found the recorded file under.
  uint64_t dev_ = 0;
  uint64_t inode_ = 0;
  uint64_t file_index_ = 0;    // SourceOffset::stream of its records.
  std::string head_;           // The file's first bytes, up to 1024, for the head hash.

  // Read buffer: bytes [begin_, end_) are read but not yet handed out; file offset of begin_ is
  // consumed_offset_ (the file descriptor stands at consumed_offset_ + end_ - begin_).
  std::unique_ptr<char[]> buffer_;
  size_t begin_ = 0;
  size_t end_ = 0;
  uint64_t consumed_offset_ = 0;
  bool skipping_long_line_ = false;
  // When each read returned, by the buffer index its bytes end at, for arrival times.
  std::vector<std::pair<size_t, int64_t>> arrivals_;
  size_t arrival_cursor_ = 0;

  // The position after the last line handed out.
  uint64_t emitted_offset_ = 0;
  uint64_t emitted_line_ = 0;
  // The position when the latest Poll started, for PositionAfter(batch, 0).
  uint64_t batch_start_offset_ = 0;
  uint64_t batch_start_line_ = 0;

  Change pending_change_ = Change::kNone;  // Detected, applied at the next Poll (after its lines are out).
  bool exhausted_ = false;
};

}  // namespace freshet

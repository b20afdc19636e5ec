#include "source/file_source.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string_view>
#include <thread>

#include "common/time.h"
#include "event/event_parser.h"

namespace freshet {
namespace {

constexpr size_t kBufferBytes = 4 << 20;  // Must exceed kMaxLineBytes + 2 + kReadBytes.
constexpr size_t kReadBytes = 1 << 20;
constexpr size_t kBufferCapacity = kBufferBytes + kParsePaddingBytes;  // Padding past the last byte read.
constexpr size_t kHeadBytes = 1024;
constexpr size_t kTailBytes = 4096;
constexpr auto kFollowInterval = std::chrono::milliseconds(20);
constexpr std::string_view kPositionPrefix = "file:";

static_assert(kBufferBytes > kMaxLineBytes + 2 + kReadBytes);

std::string Errno() { return std::strerror(errno); }

// FNV-1a, 64 bits: tells files apart by their first bytes (not a security measure).
uint64_t HeadHash(std::string_view bytes) {
  uint64_t hash = 0xcbf29ce484222325ULL;
  for (unsigned char c : bytes) {
    hash ^= c;
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

std::string Hex16(uint64_t value) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string text(16, '0');
  for (int i = 15; i >= 0; --i, value >>= 4) text[i] = kDigits[value & 15];
  return text;
}

// Reads up to `length` bytes at `offset` of `fd` into *out (fewer at the end of the file).
Status ReadRange(int fd, const std::string& path, uint64_t offset, size_t length, std::string* out) {
  out->assign(length, '\0');
  size_t got = 0;
  while (got < length) {
    ssize_t n = ::pread(fd, out->data() + got, length - got, static_cast<off_t>(offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::IoError("cannot read events file '" + path + "': " + Errno());
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  out->resize(got);
  return Status::Ok();
}

// Reads up to `length` bytes from the start of `fd` into *out (fewer at the end of the file).
Status ReadHead(int fd, const std::string& path, size_t length, std::string* out) {
  return ReadRange(fd, path, 0, length, out);
}

// What was read of a file up to `offset`: hashes of its first min(offset, kHeadBytes) bytes and, when known,
// of the min(offset, kTailBytes) bytes before `offset`.
struct Fingerprint {
  uint64_t offset = 0;
  uint64_t head = 0;
  std::optional<uint64_t> tail;
};

// The hash of the bytes of `fd` before `offset` that a fingerprint's tail covers.
Result<uint64_t> TailHash(int fd, const std::string& path, uint64_t offset) {
  const uint64_t length = std::min<uint64_t>(offset, kTailBytes);
  std::string tail;
  FRESHET_RETURN_IF_ERROR(ReadRange(fd, path, offset - length, static_cast<size_t>(length), &tail));
  if (tail.size() != length) {
    return Status::IoError("events file '" + path + "' ended before offset " + std::to_string(offset) +
                           " while reading it");
  }
  return HeadHash(tail);
}

// Whether the file `fd` (named `path`) begins with what the fingerprint describes: at least `offset` bytes,
// the same first bytes, and the same bytes before `offset` (when the fingerprint has them).
Result<bool> HasFingerprint(int fd, const std::string& path, const Fingerprint& fingerprint) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status::IoError("cannot stat events file '" + path + "': " + Errno());
  if (static_cast<uint64_t>(st.st_size) < fingerprint.offset) return false;
  std::string head;
  FRESHET_RETURN_IF_ERROR(ReadHead(fd, path, std::min<uint64_t>(fingerprint.offset, kHeadBytes), &head));
  if (HeadHash(head) != fingerprint.head) return false;
  if (!fingerprint.tail) return true;
  FRESHET_ASSIGN_OR_RETURN(uint64_t tail, TailHash(fd, path, fingerprint.offset));
  return tail == *fingerprint.tail;
}

struct FilePosition {
  uint64_t dev = 0;
  uint64_t inode = 0;
  uint64_t offset = 0;
  uint64_t line = 0;
  uint64_t head = 0;
  std::optional<uint64_t> tail;  // Absent in positions written before it was recorded.
  std::string path;
};

Result<FilePosition> ParsePosition(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return Status::Invalid("cannot resume from file position '" + std::string(text) + "': " + std::string(why) +
                           "; expected file:dev=D;inode=I;offset=O;line=L;head=H;tail=T;path=P as written by a "
                           "checkpoint");
  };
  if (text.substr(0, kPositionPrefix.size()) != kPositionPrefix) return bad("it is not a file position");
  std::string_view rest = text.substr(kPositionPrefix.size());
  FilePosition position;
  const std::pair<std::string_view, uint64_t*> numbers[] = {{"dev", &position.dev},
                                                            {"inode", &position.inode},
                                                            {"offset", &position.offset},
                                                            {"line", &position.line},
                                                            {"head", &position.head}};
  for (const auto& [key, value] : numbers) {
    size_t eq = rest.find('=');
    size_t semi = rest.find(';');
    if (eq == std::string_view::npos || semi == std::string_view::npos || eq > semi || rest.substr(0, eq) != key) {
      return bad("field '" + std::string(key) + "' is missing or out of order");
    }
    std::string_view digits = rest.substr(eq + 1, semi - eq - 1);
    int base = key == "head" ? 16 : 10;
    auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), *value, base);
    if (ec != std::errc() || ptr != digits.data() + digits.size() || digits.empty()) {
      return bad("field '" + std::string(key) + "' is not a number");
    }
    rest.remove_prefix(semi + 1);
  }
  if (rest.substr(0, 5) == "tail=") {
    size_t semi = rest.find(';');
    if (semi == std::string_view::npos) return bad("field 'path' is missing");
    std::string_view digits = rest.substr(5, semi - 5);
    uint64_t tail = 0;
    auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), tail, 16);
    if (ec != std::errc() || ptr != digits.data() + digits.size() || digits.empty()) {
      return bad("field 'tail' is not a number");
    }
    position.tail = tail;
    rest.remove_prefix(semi + 1);
  }
  if (rest.substr(0, 5) != "path=") return bad("field 'path' is missing");
  position.path = std::string(rest.substr(5));
  return position;
}

// Finds a regular file in `dir` other than `skip_name` with the given device and inode; empty if none.
std::string FindByInode(const std::string& dir, uint64_t dev, uint64_t inode) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return "";
  std::string found;
  while (dirent* entry = ::readdir(d)) {
    std::string candidate = dir + "/" + entry->d_name;
    struct stat st;
    if (::lstat(candidate.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (static_cast<uint64_t>(st.st_dev) == dev && static_cast<uint64_t>(st.st_ino) == inode) {
      found = candidate;
      break;
    }
  }
  ::closedir(d);
  return found;
}

// How a refusal to resume says to start over.
constexpr std::string_view kStartFresh = "start fresh with `freshet run --reset` (it moves the old checkpoints aside)";

// `path` made absolute and canonical (symlinks resolved) as far as it exists; empty when that fails.
std::filesystem::path Canonical(const std::string& path) {
  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(path, ec);
  if (ec) return {};
  std::filesystem::path canonical = std::filesystem::weakly_canonical(absolute, ec);
  return ec ? std::filesystem::path() : canonical;
}

// Whether a checkpoint's position names the file at `path`, the source's path, although its recorded path is
// spelled differently: a checkpoint written before spec paths were canonical recorded the path as the spec gave
// it (relative to that run's working directory, or through a symlink). It is the same file when
//   - both paths name one existing file now (same device and inode);
//   - their canonical forms are equal (as far as they exist);
//   - or the file the position recorded (its device and inode) is the file at `path` now.
// Seek's checks of the file itself (first bytes, length) come after this, as for an equal path.
bool NamesSameFile(const FilePosition& position, const std::string& path) {
  if (position.path == path) return true;
  std::error_code ec;
  if (std::filesystem::equivalent(position.path, path, ec) && !ec) return true;
  const std::filesystem::path recorded = Canonical(position.path);
  if (!recorded.empty() && recorded == Canonical(path)) return true;
  struct stat st;
  return (position.dev != 0 || position.inode != 0) && ::stat(path.c_str(), &st) == 0 &&
         static_cast<uint64_t>(st.st_dev) == position.dev && static_cast<uint64_t>(st.st_ino) == position.inode;
}

std::string DirectoryOf(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

FileSource::FileSource(std::string path, bool follow, Replaced replaced)
    : path_(std::move(path)), follow_(follow), replaced_(replaced) {}

FileSource::~FileSource() { CloseFile(); }

void FileSource::CloseFile() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Status FileSource::Open() {
  int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const bool missing = errno == ENOENT;
    std::string message = "cannot open events file '" + path_ + "': " + Errno();
    if (missing) {
      message += "; the spec's source.path names it (relative to the spec's folder): write events there first, "
                 "e.g. `freshet generate --users 1000 --events 100000 --output " + path_ +
                 "`, or point source.path at your events";
    }
    return Status::IoError(message);
  }
  return OpenAt(path_, fd, 0, 0);
}

// Takes `fd` (the file `path`) as the file being read, positioned after `offset` bytes and `line` lines.
Status FileSource::OpenAt(const std::string& path, int fd, uint64_t offset, uint64_t line) {
  CloseFile();
  fd_ = fd;
  struct stat st;
  if (::fstat(fd_, &st) != 0) return Status::IoError("cannot stat events file '" + path + "': " + Errno());
  if (::lseek(fd_, static_cast<off_t>(offset), SEEK_SET) < 0) {
    return Status::IoError("cannot seek in events file '" + path + "': " + Errno());
  }
  FRESHET_RETURN_IF_ERROR(ReadHead(fd_, path, std::min<uint64_t>(offset, kHeadBytes), &head_));
  opened_ = true;
  open_path_ = path;
  dev_ = static_cast<uint64_t>(st.st_dev);
  inode_ = static_cast<uint64_t>(st.st_ino);
  if (buffer_ == nullptr) buffer_ = std::make_unique_for_overwrite<char[]>(kBufferCapacity);  // Not zeroed.
  begin_ = end_ = 0;
  arrivals_.clear();
  arrival_cursor_ = 0;
  consumed_offset_ = emitted_offset_ = batch_start_offset_ = offset;
  emitted_line_ = batch_start_line_ = line;
  skipping_long_line_ = false;
  pending_change_ = Change::kNone;
  exhausted_ = false;
  return Status::Ok();
}

// Moves the unconsumed bytes to the front of the buffer. Only between Polls' records: it moves their text.
void FileSource::Compact() {
  if (begin_ == 0) return;
  std::memmove(buffer_.get(), buffer_.get() + begin_, end_ - begin_);
  size_t kept = 0;
  for (size_t i = arrival_cursor_; i < arrivals_.size(); ++i) {
    if (arrivals_[i].first <= begin_) continue;
    arrivals_[kept++] = {arrivals_[i].first - begin_, arrivals_[i].second};
  }
  arrivals_.resize(kept);
  arrival_cursor_ = 0;
  end_ -= begin_;
  begin_ = 0;
}

// Reads what the file has beyond the buffer, up to the room left. Returns the bytes read (0 at the end).
Result<size_t> FileSource::ReadMore() {
  size_t room = kBufferBytes - end_;
  size_t want = std::min(room, kReadBytes);
  if (want == 0) return size_t{0};
  ssize_t n;
  do {
    n = ::read(fd_, buffer_.get() + end_, want);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Status::IoError("cannot read events file '" + open_path_ + "': " + Errno());
  if (n == 0) return size_t{0};
  const uint64_t read_offset = consumed_offset_ + (end_ - begin_);
  if (read_offset < kHeadBytes && head_.size() == read_offset) {
    size_t take = std::min<size_t>(static_cast<size_t>(n), kHeadBytes - read_offset);
    head_.append(buffer_.get() + end_, take);
  }
  end_ += static_cast<size_t>(n);
  arrivals_.emplace_back(end_, SteadyClockNs());
  return static_cast<size_t>(n);
}

// Hands out the next complete line, or at `at_end` (nothing more will come) the last unterminated one.
// Returns false when more bytes are needed; skips the bytes of an overlong line seen so far.
bool FileSource::NextLine(bool at_end, SourceRecord* record) {
  const char* start = buffer_.get() + begin_;
  const size_t available = end_ - begin_;
  const char* newline = static_cast<const char*>(std::memchr(start, '\n', available));
  size_t length;
  size_t consumed;
  if (newline != nullptr) {
    length = static_cast<size_t>(newline - start);
    consumed = length + 1;
  } else if (at_end && (available > 0 || skipping_long_line_)) {
    length = consumed = available;
  } else if (available > kMaxLineBytes + 2) {
    // Drop the overlong line's bytes seen so far; the line is reported once its end is found.
    consumed_offset_ += available;
    begin_ = end_;
    skipping_long_line_ = true;
    return false;
  } else {
    return false;
  }
  int64_t arrival_ns;
  if (consumed == 0) {
    arrival_ns = arrivals_.empty() ? SteadyClockNs() : arrivals_.back().second;
  } else {
    const size_t last_byte = begin_ + consumed - 1;
    while (arrivals_[arrival_cursor_].first <= last_byte) ++arrival_cursor_;
    arrival_ns = arrivals_[arrival_cursor_].second;
  }
  begin_ += consumed;
  consumed_offset_ += consumed;
  if (skipping_long_line_) {
    length = 0;
    record->too_long = true;
    skipping_long_line_ = false;
  } else {
    if (length > 0 && start[length - 1] == '\r') --length;
    record->too_long = length > kMaxLineBytes;
    if (record->too_long) length = 0;
  }
  record->text = std::string_view(start, length);
  record->capacity = length + kParsePaddingBytes;
  record->line_number = ++emitted_line_;
  record->arrival_ns = arrival_ns;
  record->end = SourceOffset{file_index_, consumed_offset_};
  emitted_offset_ = consumed_offset_;
  return true;
}

// Whether the file was truncated below what was read, or the path now names another file. Following only.
Result<FileSource::Change> FileSource::CheckForChange() const {
  struct stat st;
  if (::fstat(fd_, &st) != 0) return Status::IoError("cannot stat events file '" + open_path_ + "': " + Errno());
  const uint64_t read_offset = consumed_offset_ + (end_ - begin_);
  if (static_cast<uint64_t>(st.st_size) < read_offset && open_path_ == path_) return Change::kTruncated;
  if (::stat(path_.c_str(), &st) != 0) return Change::kNone;  // Renamed away; wait for the new file.
  if (static_cast<uint64_t>(st.st_dev) != dev_ || static_cast<uint64_t>(st.st_ino) != inode_) return Change::kRotated;
  return Change::kNone;
}

// Continues with the file now at the path (rotation) or the same file from its start (truncation). The
// current file must have been read to its end and all its lines handed out.
Status FileSource::SwitchFile(Change change) {
  const uint64_t old_line = emitted_line_;
  const uint64_t old_offset = emitted_offset_;
  const std::string old_path = open_path_;
  if (change == Change::kTruncated) {
    int fd = ::dup(fd_);
    if (fd < 0) return Status::IoError("cannot reopen events file '" + path_ + "': " + Errno());
    FRESHET_RETURN_IF_ERROR(OpenAt(path_, fd, 0, 0));
    Warn("events file '" + path_ + "' was truncated below the " + std::to_string(old_offset) +
         " bytes read (copytruncate rotation); reading it again from its start. Lines appended after line " +
         std::to_string(old_line) + " and before the truncation are only in the rotated copy.");
  } else {
    int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {  // Renamed away again already: keep the old file, look again later.
      pending_change_ = Change::kNone;
      return Status::Ok();
    }
    if (fd < 0) return Status::IoError("cannot open rotated events file '" + path_ + "': " + Errno());
    // A copy of the old file moved over the path (perhaps with lines appended) goes on where the old one ended;
    // a new file (logrotate's) starts at its start.
    Result<bool> copy = false;
    if (Result<uint64_t> tail = TailHash(fd_, old_path, old_offset); tail.ok()) {
      const Fingerprint read_so_far{old_offset, HeadHash(std::string_view(head_).substr(0, old_offset)), *tail};
      copy = HasFingerprint(fd, path_, read_so_far);
    }
    if (!copy.ok()) {
      ::close(fd);
      return copy.status();
    }
    if (*copy) {
      FRESHET_RETURN_IF_ERROR(OpenAt(path_, fd, old_offset, old_line));
      ++file_index_;
      Warn("events file '" + path_ + "' was replaced by another file (inode " + std::to_string(inode_) +
           ") that begins with the " + std::to_string(old_offset) +
           " bytes read of the previous one (a copy moved over it, perhaps with lines appended): going on "
           "after line " + std::to_string(old_line) + " instead of reading it again from its start.");
      return Status::Ok();
    }
    FRESHET_RETURN_IF_ERROR(OpenAt(path_, fd, 0, 0));
    Warn("events file '" + path_ + "' was rotated: read the previous file" +
         (old_path == path_ ? std::string() : " '" + old_path + "'") + " to its end (line " +
         std::to_string(old_line) + ", offset " + std::to_string(old_offset) +
         "); reading the new file from its start.");
  }
  ++file_index_;
  return Status::Ok();
}

Status FileSource::Poll(std::vector<SourceRecord>* out, size_t max_records, int timeout_ms) {
  out->clear();
  if (!opened_) FRESHET_RETURN_IF_ERROR(Open());
  if (pending_change_ != Change::kNone) FRESHET_RETURN_IF_ERROR(SwitchFile(pending_change_));
  batch_start_offset_ = emitted_offset_;
  batch_start_line_ = emitted_line_;
  if (exhausted_) {
    // Nothing more will come; still wait as Poll promises, or a caller's poll loop spins on a core.
    std::this_thread::sleep_for(std::chrono::milliseconds(std::max(timeout_ms, 0)));
    return Status::Ok();
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(std::max(timeout_ms, 0));
  SourceRecord record;
  while (out->size() < max_records) {
    if (NextLine(/*at_end=*/false, &record)) {
      out->push_back(record);
      continue;
    }
    // More bytes are needed. The buffer may only move while no record of this Poll points into it.
    if (out->empty()) {
      if (begin_ == end_) {
        begin_ = end_ = 0;
        arrivals_.clear();
        arrival_cursor_ = 0;
      } else if (kBufferBytes - end_ < kReadBytes) {
        Compact();
      }
    } else if (kBufferBytes - end_ < kReadBytes) {
      break;
    }
    FRESHET_ASSIGN_OR_RETURN(size_t n, ReadMore());
    if (n > 0) continue;

    // At the end of the file as it is now.
    if (!follow_) {
      // A file found under its rotated name by Seek is followed by the file at the path, if there is one.
      struct stat st;
      const bool then_path = open_path_ != path_ && ::stat(path_.c_str(), &st) == 0;
      if (NextLine(/*at_end=*/true, &record)) out->push_back(record);
      if (then_path) {
        if (!out->empty()) {
          pending_change_ = Change::kRotated;
          break;
        }
        FRESHET_RETURN_IF_ERROR(SwitchFile(Change::kRotated));
        batch_start_offset_ = emitted_offset_;
        batch_start_line_ = emitted_line_;
        continue;
      }
      exhausted_ = true;
      break;
    }
    if (!out->empty()) break;
    FRESHET_ASSIGN_OR_RETURN(Change change, CheckForChange());
    if (change == Change::kNone) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) break;
      std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(kFollowInterval, deadline - now));
      continue;
    }
    // The old file is done: read what was appended to it before the change, hand out its unterminated
    // last line, then switch.
    if (change == Change::kRotated) {
      FRESHET_ASSIGN_OR_RETURN(size_t more, ReadMore());
      if (more > 0) continue;  // Its lines first; the change is seen again at its end.
    }
    if (NextLine(/*at_end=*/true, &record)) {
      out->push_back(record);
      pending_change_ = change;
      break;
    }
    FRESHET_RETURN_IF_ERROR(SwitchFile(change));
    batch_start_offset_ = emitted_offset_;
    batch_start_line_ = emitted_line_;
  }
  return Status::Ok();
}

std::string FileSource::Format(uint64_t offset, uint64_t line) const {
  const std::string_view head(head_.data(), std::min<uint64_t>({offset, kHeadBytes, head_.size()}));
  std::string text(kPositionPrefix);
  text += "dev=" + std::to_string(dev_) + ";inode=" + std::to_string(inode_) + ";offset=" + std::to_string(offset) +
          ";line=" + std::to_string(line) + ";head=" + Hex16(HeadHash(head));
  // The bytes before the offset are in the file, read already; were they not readable now, the position
  // goes without its tail and Seek compares by the head alone.
  Result<uint64_t> tail = offset == 0 ? Result<uint64_t>(HeadHash("")) : TailHash(fd_, open_path_, offset);
  if (tail.ok()) text += ";tail=" + Hex16(*tail);
  text += ";path=" + path_;
  return text;
}

std::string FileSource::position() const { return Format(emitted_offset_, emitted_line_); }

std::string FileSource::PositionAfter(std::span<const SourceRecord> batch, size_t count) const {
  FRESHET_CHECK(count <= batch.size());
  if (count == 0) return Format(batch_start_offset_, batch_start_line_);
  const SourceRecord& last = batch[count - 1];
  FRESHET_CHECK(last.end.stream == file_index_);  // A batch never spans two files.
  return Format(last.end.offset, last.line_number);
}

Status FileSource::Seek(std::string_view position_text) {
  FRESHET_ASSIGN_OR_RETURN(FilePosition position, ParsePosition(position_text));
  if (!NamesSameFile(position, path_)) {
    return Status::Invalid("the checkpoint was reading events file '" + position.path + "' but the source is now '" +
                           path_ + "', another file; point the source back at that file, or " +
                           std::string(kStartFresh));
  }
  const std::string where = "line " + std::to_string(position.line) + ", offset " + std::to_string(position.offset);
  // Opens `path` if it is the recorded file: the same device and inode, and the same first bytes and bytes
  // before the offset (an inode number can be reused by a later file). *fd_out is -1 when it is another file
  // or there is none.
  auto open_if_recorded = [&](const std::string& path, int* fd_out) -> Status {
    *fd_out = -1;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Status::Ok();
    struct stat st;
    if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_dev) != position.dev ||
        static_cast<uint64_t>(st.st_ino) != position.inode) {
      ::close(fd);
      return Status::Ok();
    }
    const uint64_t head_length = std::min<uint64_t>(position.offset, kHeadBytes);
    std::string head;
    Status read = ReadHead(fd, path, head_length, &head);
    if (!read.ok()) {
      ::close(fd);
      return read;
    }
    const bool head_matches = head.size() == head_length && HeadHash(head) == position.head;
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    bool tail_matches = true;  // The bytes before the offset too, when the position has their hash.
    if (size >= position.offset && head_matches && position.tail) {
      Result<uint64_t> tail = TailHash(fd, path, position.offset);
      if (!tail.ok()) {
        ::close(fd);
        return tail.status();
      }
      tail_matches = *tail == *position.tail;
    }
    if (size >= position.offset && head_matches && tail_matches) {
      *fd_out = fd;
      return Status::Ok();
    }
    ::close(fd);
    if (size >= position.offset || (head.size() == head_length && !head_matches)) return Status::Ok();  // Another.
    // The recorded file, truncated; or too short to tell it from a new file by its first bytes.
    return Status::Invalid("cannot resume events file '" + path + "' at " + where + ": the file is now only " +
                           std::to_string(size) +
                           " bytes long, so it was truncated below the checkpoint (or replaced); restore it, or "
                           "read it from its start: " + std::string(kStartFresh));
  };

  CloseFile();
  opened_ = false;
  if (position.dev == 0 && position.inode == 0 && position.offset == 0) return Open();  // Before any file.
  int fd;
  FRESHET_RETURN_IF_ERROR(open_if_recorded(path_, &fd));
  if (fd >= 0) return OpenAt(path_, fd, position.offset, position.line);

  const std::string rotated = FindByInode(DirectoryOf(path_), position.dev, position.inode);
  if (!rotated.empty()) {
    FRESHET_RETURN_IF_ERROR(open_if_recorded(rotated, &fd));
    if (fd >= 0) {
      FRESHET_RETURN_IF_ERROR(OpenAt(rotated, fd, position.offset, position.line));
      Warn("events file '" + path_ + "' was rotated since the checkpoint: resuming in '" + rotated + "' at " + where +
           ", then reading '" + path_ + "' from its start.");
      return Status::Ok();
    }
  }

  fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Status::NotFound("cannot resume events file '" + path_ + "' at " + where + ": " + Errno() +
                            ", and the file the checkpoint was reading (inode " + std::to_string(position.inode) +
                            ") is not in its folder either; restore the file, or " + std::string(kStartFresh));
  }
  // The recorded file is gone. The file at the path continues it when it begins with what was read of it.
  const Fingerprint read_so_far{position.offset, position.head, position.tail};
  Result<bool> copy = HasFingerprint(fd, path_, read_so_far);
  if (!copy.ok()) {
    ::close(fd);
    return copy.status();
  }
  if (*copy) {
    FRESHET_RETURN_IF_ERROR(OpenAt(path_, fd, position.offset, position.line));
    Warn("events file '" + path_ + "' is another file than the checkpoint was reading (inode " +
         std::to_string(inode_) + ", not " + std::to_string(position.inode) + "), but it begins with the " +
         std::to_string(position.offset) + " bytes read of that one" +
         (position.tail ? std::string() : std::string(" (compared by its first bytes and length only: the "
                                                      "checkpoint predates the hash of the bytes before its offset)")) +
         ", so it is a copy (perhaps with lines appended): resuming after " + where + ".");
    return Status::Ok();
  }
  const std::string why = "events file '" + path_ + "' is not the file the checkpoint was reading (inode " +
                          std::to_string(position.inode) + ", read up to " + where +
                          "), which is gone, and it does not begin with the bytes read of that one";
  if (replaced_ == Replaced::kRefuse) {
    ::close(fd);
    return Status::Invalid(
        why + ". It is either a new file (rotated while Freshet was stopped, the previous one deleted or "
              "compressed) or the old one rewritten; reading it from its start could count events a second time. "
              "If it holds only events not read before, run with `freshet run --new-events-file` to read it from "
              "its start; or put the file that was being read back at its path; or " + std::string(kStartFresh));
  }
  FRESHET_RETURN_IF_ERROR(OpenAt(path_, fd, 0, 0));
  Warn(why + ": reading it from its start as a new file. Lines of the old file after line " +
       std::to_string(position.line) + " were not read.");
  return Status::Ok();
}

}  // namespace freshet

#include "source/ingest_log.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "common/bytes.h"
#include "common/files.h"
#include "common/time.h"
#include "event/event_parser.h"

namespace freshet {
namespace {

constexpr size_t kHeaderBytes = 16;  // u32 length, u32 crc32c, i64 arrival_ns.
constexpr size_t kReadBytes = 1 << 20;
constexpr size_t kBufferBytes = 4 << 20;  // Holds a whole record of kMaxLineBytes and a read.
constexpr size_t kBufferCapacity = kBufferBytes + kParsePaddingBytes;  // Padding past the last byte read.
constexpr std::string_view kSegmentPrefix = "ingest-";
constexpr std::string_view kSegmentSuffix = ".log";
constexpr std::string_view kPositionPrefix = "ingest:";
// In a record's length field: the record is an idempotency key record, not a line (see the header).
constexpr uint32_t kKeyRecordFlag = 0x8000'0000u;
constexpr uint8_t kKeyPayloadVersion = 1;
constexpr std::string_view kKeysFile = "idempotency-keys";
constexpr std::string_view kKeysMagic = "FRKEYS01";

static_assert(kBufferBytes > kHeaderBytes + kMaxLineBytes + kReadBytes);

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), slicing by 8 bytes at a time.
struct Crc32cTables {
  uint32_t table[8][256];
};

constexpr Crc32cTables MakeCrc32cTables() {
  Crc32cTables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    t.table[0][i] = crc;
  }
  for (int k = 1; k < 8; ++k) {
    for (uint32_t i = 0; i < 256; ++i) t.table[k][i] = (t.table[k - 1][i] >> 8) ^ t.table[0][t.table[k - 1][i] & 0xff];
  }
  return t;
}

constexpr Crc32cTables kCrc32c = MakeCrc32cTables();

// Continues `crc` (the CRC-32C of the bytes before, 0 for none) over `size` more bytes.
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  const auto& t = kCrc32c.table;
  crc = ~crc;
  while (size >= 8) {
    const uint32_t lo = crc ^ (uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24);
    const uint32_t hi = uint32_t{p[4]} | uint32_t{p[5]} << 8 | uint32_t{p[6]} << 16 | uint32_t{p[7]} << 24;
    crc = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^ t[3][hi & 0xff] ^
          t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
    p += 8;
    size -= 8;
  }
  while (size-- > 0) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xff];
  return ~crc;
}

void PutU32(uint32_t value, char* out) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>(value >> (8 * i));
}
void PutU64(uint64_t value, char* out) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(value >> (8 * i));
}
uint32_t GetU32(const char* in) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value |= uint32_t{static_cast<unsigned char>(in[i])} << (8 * i);
  return value;
}
uint64_t GetU64(const char* in) {
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value |= uint64_t{static_cast<unsigned char>(in[i])} << (8 * i);
  return value;
}

// The CRC of a record: over its length and arrival_ns fields, then its line.
uint32_t RecordCrc(const char* header, const char* line, size_t length) {
  uint32_t crc = Crc32cExtend(0, header, 4);
  crc = Crc32cExtend(crc, header + 8, 8);
  return Crc32cExtend(crc, line, length);
}

void AppendRecord(std::string_view line, int64_t arrival_ns, std::string* out, uint32_t flags = 0) {
  char header[kHeaderBytes];
  PutU32(static_cast<uint32_t>(line.size()) | flags, header);
  PutU64(static_cast<uint64_t>(arrival_ns), header + 8);
  PutU32(RecordCrc(header, line.data(), line.size()), header + 4);
  out->append(header, kHeaderBytes);
  out->append(line);
}

// How the record at the start of `bytes` checks out.
enum class RecordCheck { kOk, kIncomplete, kBadLength, kBadCrc };

// `is_key` (when given) tells a key record from a line.
RecordCheck CheckRecord(std::string_view bytes, size_t* record_bytes, bool* is_key = nullptr) {
  if (bytes.size() < kHeaderBytes) return RecordCheck::kIncomplete;
  const uint32_t length = GetU32(bytes.data()) & ~kKeyRecordFlag;
  if (is_key != nullptr) *is_key = (GetU32(bytes.data()) & kKeyRecordFlag) != 0;
  if (length > kMaxLineBytes) return RecordCheck::kBadLength;
  if (bytes.size() < kHeaderBytes + length) return RecordCheck::kIncomplete;
  if (RecordCrc(bytes.data(), bytes.data() + kHeaderBytes, length) != GetU32(bytes.data() + 4)) {
    return RecordCheck::kBadCrc;
  }
  *record_bytes = kHeaderBytes + length;
  return RecordCheck::kOk;
}

std::string Errno() { return std::strerror(errno); }

std::string SegmentName(uint64_t base) {
  std::string digits = std::to_string(base);
  return std::string(kSegmentPrefix) + std::string(20 - digits.size(), '0') + digits + std::string(kSegmentSuffix);
}

// The base of a segment file name, or false if `name` is not one.
bool ParseSegmentName(std::string_view name, uint64_t* base) {
  if (name.size() != kSegmentPrefix.size() + 20 + kSegmentSuffix.size()) return false;
  if (name.substr(0, kSegmentPrefix.size()) != kSegmentPrefix) return false;
  if (name.substr(name.size() - kSegmentSuffix.size()) != kSegmentSuffix) return false;
  std::string_view digits = name.substr(kSegmentPrefix.size(), 20);
  auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), *base);
  return ec == std::errc() && ptr == digits.data() + digits.size();
}

Status WriteAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::IoError(Errno());
    data += n;
    size -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

Result<std::string> ReadWholeFile(int fd, const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status::IoError("cannot stat ingest log segment '" + path + "': " + Errno());
  std::string bytes(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < bytes.size()) {
    ssize_t n = ::pread(fd, bytes.data() + got, bytes.size() - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::IoError("cannot read ingest log segment '" + path + "': " + Errno());
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  bytes.resize(got);
  return bytes;
}

// A batch's digest, to tell a resend from other lines under the same key: two 64-bit hashes (MurmurHash64A's
// mixing, two seeds) over each line's length and bytes. Not cryptographic; it separates a producer's batches.
uint64_t LinesHash(std::span<const std::string_view> lines, uint64_t seed) {
  constexpr uint64_t m = 0xc6a4a7935bd1e995ull;
  uint64_t h = seed ^ (lines.size() * m);
  auto mix = [&h](uint64_t k) {
    k *= m;
    k ^= k >> 47;
    k *= m;
    h ^= k;
    h *= m;
  };
  for (std::string_view line : lines) {
    mix(line.size());
    size_t i = 0;
    for (; i + 8 <= line.size(); i += 8) mix(GetU64(line.data() + i));
    uint64_t tail = 0;
    for (size_t k = 0; i + k < line.size(); ++k) tail |= uint64_t{static_cast<unsigned char>(line[i + k])} << (8 * k);
    mix(tail);
  }
  h ^= h >> 47;
  h *= m;
  h ^= h >> 47;
  return h;
}

// A key record's payload (see the header).
std::string EncodeKeyPayload(std::string_view key, const uint64_t digest[2], int64_t logged_ms, uint32_t lines,
                             std::string_view receipt) {
  ByteWriter w;
  w.PutU8(kKeyPayloadVersion);
  w.PutI64(logged_ms);
  w.PutU32(lines);
  w.PutU64(digest[0]);
  w.PutU64(digest[1]);
  w.PutString(key);
  w.PutString(receipt);
  return w.Take();
}

struct DecodedKey {
  std::string_view key, receipt;
  uint64_t digest[2] = {0, 0};
  int64_t logged_ms = 0;
  uint32_t lines = 0;
};

bool DecodeKeyPayload(std::string_view bytes, DecodedKey* out) {
  ByteReader r(bytes);
  uint8_t version = 0;
  return r.ReadU8(&version) && version == kKeyPayloadVersion && r.ReadI64(&out->logged_ms) &&
         r.ReadU32(&out->lines) && r.ReadU64(&out->digest[0]) && r.ReadU64(&out->digest[1]) &&
         r.ReadString(&out->key) && r.ReadString(&out->receipt) && r.at_end() && !out->key.empty();
}

// What a walk over a segment's bytes found.
struct SegmentScan {
  uint64_t intact_bytes = 0;  // Up to the end of the last whole record, or the key record of a torn batch.
  uint64_t lines = 0;         // Line records in intact_bytes.
  RecordCheck stop = RecordCheck::kOk;  // Why the walk stopped before the end, if it did.
  bool torn_batch = false;    // A keyed batch was incomplete: cut back to its key record.
  std::vector<DecodedKey> keys;  // Of whole batches only; viewing the scanned bytes.
};

SegmentScan ScanSegment(std::string_view bytes) {
  SegmentScan scan;
  uint64_t offset = 0;
  uint64_t batch_start = 0, batch_lines_before = 0;
  uint32_t batch_lines_left = 0;  // Lines still to come of the keyed batch begun at batch_start.
  DecodedKey batch_key;
  while (offset < bytes.size()) {
    size_t record_bytes = 0;
    bool is_key = false;
    scan.stop = CheckRecord(bytes.substr(offset), &record_bytes, &is_key);
    DecodedKey key;
    if (scan.stop == RecordCheck::kOk && is_key &&
        (batch_lines_left > 0 || !DecodeKeyPayload(bytes.substr(offset + kHeaderBytes, record_bytes - kHeaderBytes), &key) ||
         key.lines == 0)) {
      scan.stop = RecordCheck::kBadCrc;  // Whole and checked, yet not a key record this version wrote.
    }
    if (scan.stop != RecordCheck::kOk) break;
    if (is_key) {
      batch_start = offset;
      batch_lines_before = scan.lines;
      batch_lines_left = key.lines;
      batch_key = key;
    } else {
      ++scan.lines;
      if (batch_lines_left > 0 && --batch_lines_left == 0) scan.keys.push_back(batch_key);
    }
    offset += record_bytes;
  }
  scan.intact_bytes = offset;
  if (batch_lines_left > 0) {
    scan.torn_batch = true;
    scan.intact_bytes = batch_start;
    scan.lines = batch_lines_before;
  }
  return scan;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// IngestLogPosition

std::string IngestLogPosition::ToString() const {
  return std::string(kPositionPrefix) + "seq=" + std::to_string(sequence) + ";segment=" + std::to_string(segment) +
         ";offset=" + std::to_string(offset);
}

Result<IngestLogPosition> IngestLogPosition::Parse(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return Status::Invalid("cannot resume from ingest log position '" + std::string(text) + "': " + std::string(why) +
                           "; expected ingest:seq=S;segment=B;offset=O as written by a checkpoint");
  };
  if (text.substr(0, kPositionPrefix.size()) != kPositionPrefix) return bad("it is not an ingest log position");
  std::string_view rest = text.substr(kPositionPrefix.size());
  IngestLogPosition position;
  const std::pair<std::string_view, uint64_t*> fields[] = {
      {"seq", &position.sequence}, {"segment", &position.segment}, {"offset", &position.offset}};
  for (size_t i = 0; i < std::size(fields); ++i) {
    const auto& [key, value] = fields[i];
    size_t eq = rest.find('=');
    size_t end = i + 1 < std::size(fields) ? rest.find(';') : rest.size();
    if (eq == std::string_view::npos || end == std::string_view::npos || eq > end || rest.substr(0, eq) != key) {
      return bad("field '" + std::string(key) + "' is missing or out of order");
    }
    std::string_view digits = rest.substr(eq + 1, end - eq - 1);
    auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), *value);
    if (digits.empty() || ec != std::errc() || ptr != digits.data() + digits.size()) {
      return bad("field '" + std::string(key) + "' is not a number");
    }
    rest.remove_prefix(std::min(end + 1, rest.size()));
  }
  if (position.sequence < position.segment) return bad("seq is before its segment's first record");
  return position;
}

// ---------------------------------------------------------------------------------------------------------
// IngestLog

IngestLog::IngestLog(std::string dir, IngestLogOptions options) : dir_(std::move(dir)), options_(options) {}

IngestLog::~IngestLog() {
  if (active_fd_ >= 0) ::close(active_fd_);
  if (dir_fd_ >= 0) ::close(dir_fd_);  // Also releases the flock.
}

Result<std::unique_ptr<IngestLog>> IngestLog::Open(const std::string& dir, IngestLogOptions options) {
  std::unique_ptr<IngestLog> log(new IngestLog(dir, options));
  FRESHET_RETURN_IF_ERROR(log->Recover());
  return log;
}

Status IngestLog::Recover() {
  std::error_code ec;
  const bool existed = std::filesystem::exists(dir_, ec);
  std::filesystem::create_directories(dir_, ec);
  if (ec) return Status::IoError("cannot create ingest log directory '" + dir_ + "': " + ec.message());
  dir_fd_ = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd_ < 0) return Status::IoError("cannot open ingest log directory '" + dir_ + "': " + Errno());
  if (::flock(dir_fd_, LOCK_EX | LOCK_NB) != 0) {
    return Status::IoError("ingest log directory '" + dir_ + "' is in use by another Freshet process (" + Errno() +
                           "); give each process its own directory");
  }
  if (!existed) {
    // Make the new directory's entry durable in its parent.
    std::string parent = std::filesystem::path(dir_).lexically_normal().parent_path().string();
    int parent_fd = ::open(parent.empty() ? "." : parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (parent_fd >= 0) {
      ::fsync(parent_fd);
      ::close(parent_fd);
    }
  }

  std::vector<uint64_t> bases;
  DIR* d = ::opendir(dir_.c_str());
  if (d == nullptr) return Status::IoError("cannot list ingest log directory '" + dir_ + "': " + Errno());
  while (dirent* entry = ::readdir(d)) {
    uint64_t base;
    if (ParseSegmentName(entry->d_name, &base)) bases.push_back(base);
  }
  ::closedir(d);
  std::sort(bases.begin(), bases.end());

  if (bases.empty()) {
    const std::string path = dir_ + "/" + SegmentName(0);
    active_fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (active_fd_ < 0) return Status::IoError("cannot create ingest log segment '" + path + "': " + Errno());
    if (::fsync(dir_fd_) != 0) return Status::IoError("cannot sync ingest log directory '" + dir_ + "': " + Errno());
    segments_.push_back(Segment{0, path, 0});
    return Status::Ok();
  }

  for (uint64_t base : bases) {
    const std::string path = dir_ + "/" + SegmentName(base);
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return Status::IoError("cannot stat '" + path + "': " + Errno());
    segments_.push_back(Segment{base, path, static_cast<uint64_t>(st.st_size)});
  }

  // Idempotency keys: those of deleted segments from the key file, then those of every kept segment. Earlier
  // segments are read only for their key records; damage there is the reader's to report.
  const int64_t now_ms = NowMs();
  std::string keys_path = dir_ + "/" + std::string(kKeysFile);
  if (std::filesystem::exists(keys_path, ec)) {
    keys_file_ = true;
    FRESHET_RETURN_IF_ERROR(LoadKeys(keys_path));
  }
  for (size_t i = 0; i + 1 < segments_.size(); ++i) {
    const int fd = ::open(segments_[i].path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Status::IoError("cannot open ingest log segment '" + segments_[i].path + "': " + Errno());
    Result<std::string> sealed = ReadWholeFile(fd, segments_[i].path);
    ::close(fd);
    if (!sealed.ok()) return sealed.status();
    const SegmentScan scan = ScanSegment(*sealed);
    for (const DecodedKey& k : scan.keys) {
      RememberLocked(KeyEntry{std::string(k.key), {k.digest[0], k.digest[1]}, k.logged_ms, 0, false, false,
                              std::string(k.receipt)},
                     now_ms);
    }
    if (scan.intact_bytes < sealed->size()) {
      warnings_.push_back("ingest log segment '" + segments_[i].path + "' is damaged at offset " +
                          std::to_string(scan.intact_bytes) + "; idempotency keys logged after it are not known");
    }
  }

  // Read the last segment through; cut off a torn or corrupt tail, and an incomplete keyed batch.
  Segment& last = segments_.back();
  active_fd_ = ::open(last.path.c_str(), O_RDWR | O_APPEND | O_CLOEXEC);
  if (active_fd_ < 0) return Status::IoError("cannot open ingest log segment '" + last.path + "': " + Errno());
  FRESHET_ASSIGN_OR_RETURN(std::string bytes, ReadWholeFile(active_fd_, last.path));
  const SegmentScan scan = ScanSegment(bytes);
  const uint64_t offset = scan.intact_bytes;
  const uint64_t records = scan.lines;
  const RecordCheck check = scan.stop;
  for (const DecodedKey& k : scan.keys) {
    RememberLocked(KeyEntry{std::string(k.key), {k.digest[0], k.digest[1]}, k.logged_ms, 0, false, false,
                            std::string(k.receipt)},
                   now_ms);
  }
  if (offset < bytes.size()) {
    const char* why = scan.torn_batch && check == RecordCheck::kOk ? "a batch sent with an idempotency key whose "
                                                                     "records are not all there"
                      : check == RecordCheck::kIncomplete          ? "an incomplete record"
                      : check == RecordCheck::kBadLength           ? "a record with an impossible length"
                                                                   : "a record whose CRC does not match";
    if (::ftruncate(active_fd_, static_cast<off_t>(offset)) != 0) {
      return Status::IoError("cannot cut the torn tail off ingest log segment '" + last.path + "': " + Errno());
    }
    warnings_.push_back("ingest log segment '" + last.path + "' ended in " + why + " at offset " +
                        std::to_string(offset) + " (a crash during a write): cut off its last " +
                        std::to_string(bytes.size() - offset) + " bytes" +
                        (scan.torn_batch && check != RecordCheck::kOk ? ", back to the start of the batch sent with "
                                                                        "an idempotency key that it was part of"
                                                                      : "") +
                        "; the " +
                        std::to_string(records) + " records before it are intact, and the cut bytes were never "
                        "acknowledged.");
  }
  // What survived a crash may still be only in the page cache: make it durable before readers see it.
  if (::fdatasync(active_fd_) != 0) {
    return Status::IoError("cannot sync ingest log segment '" + last.path + "': " + Errno());
  }
  last.bytes = offset;
  next_sequence_ = durable_sequence_ = last.base + records;
  durable_bytes_ = offset;
  return Status::Ok();
}

int64_t IngestLog::NowMs() const { return options_.wall_clock_ms ? options_.wall_clock_ms() : WallClockMs(); }

Status IngestLog::LoadKeys(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::IoError("cannot open '" + path + "': " + Errno());
  Result<std::string> bytes = ReadWholeFile(fd, path);
  ::close(fd);
  if (!bytes.ok()) return bytes.status();
  const std::string_view all(*bytes);
  bool ok = all.size() >= kKeysMagic.size() + 4 && all.substr(0, kKeysMagic.size()) == kKeysMagic &&
            Crc32cExtend(0, all.data(), all.size() - 4) == GetU32(all.data() + all.size() - 4);
  std::vector<DecodedKey> keys;
  if (ok) {
    ByteReader r(all.substr(kKeysMagic.size(), all.size() - kKeysMagic.size() - 4));
    uint64_t count = 0;
    ok = r.ReadCount(&count, 1);
    for (uint64_t k = 0; ok && k < count; ++k) {
      std::string_view payload;
      DecodedKey key;
      ok = r.ReadBytes(&payload) && DecodeKeyPayload(payload, &key);
      keys.push_back(key);
    }
    ok = ok && r.at_end();
  }
  if (!ok) {
    // Written whole by a rename, so this is damage from outside: say so, and go on without those keys.
    warnings_.push_back("the idempotency key file '" + path + "' is damaged; keys of batches logged in deleted "
                        "segments are forgotten, so a resend of such a batch would be logged again");
    return Status::Ok();
  }
  const int64_t now_ms = NowMs();
  for (const DecodedKey& k : keys) {
    RememberLocked(KeyEntry{std::string(k.key), {k.digest[0], k.digest[1]}, k.logged_ms, 0, false, false,
                            std::string(k.receipt)},
                   now_ms);
  }
  return Status::Ok();
}

void IngestLog::RememberLocked(KeyEntry entry, int64_t now_ms) {
  if (entry.logged_ms < now_ms - options_.key_window_ms) return;
  if (auto it = key_ids_.find(entry.key); it != key_ids_.end()) {
    KeyEntry& known = keys_[it->second - keys_front_id_];
    if (known.logged_ms == entry.logged_ms && known.digest[0] == entry.digest[0] &&
        known.digest[1] == entry.digest[1]) {
      return;  // The same batch, in the key file and in a kept segment.
    }
    // The key was used again after its window: the later batch holds it.
    key_ids_.erase(it);
    known.dropped = true;
  }
  keys_.push_back(std::move(entry));
  key_ids_[keys_.back().key] = keys_front_id_ + keys_.size() - 1;
}

void IngestLog::ExpireKeysLocked(int64_t now_ms) {
  while (!keys_.empty()) {
    KeyEntry& front = keys_.front();
    if (!front.dropped) {
      if (front.pending || front.logged_ms >= now_ms - options_.key_window_ms) return;
      if (auto it = key_ids_.find(front.key); it != key_ids_.end() && it->second == keys_front_id_) key_ids_.erase(it);
    }
    keys_.pop_front();
    ++keys_front_id_;
  }
}

size_t IngestLog::key_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return key_ids_.size();
}

Status IngestLog::FailLocked(Status status) {
  failure_ = status;
  synced_.notify_all();
  return status;
}

// Seals the last segment (synced) and starts a new one. Requires the mutex held and no sync under way.
Status IngestLog::RollLocked() {
  Segment& old = segments_.back();
  if (::fdatasync(active_fd_) != 0) {
    return FailLocked(Status::IoError("cannot sync ingest log segment '" + old.path + "': " + Errno() +
                                      "; restart Freshet to recover the log"));
  }
  ++sync_count_;
  durable_sequence_ = next_sequence_;
  durable_bytes_ = old.bytes;
  const std::string path = dir_ + "/" + SegmentName(next_sequence_);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    return FailLocked(Status::IoError("cannot create ingest log segment '" + path + "': " + Errno()));
  }
  if (::fsync(dir_fd_) != 0) {
    ::close(fd);
    return FailLocked(Status::IoError("cannot sync ingest log directory '" + dir_ + "': " + Errno()));
  }
  ::close(active_fd_);
  active_fd_ = fd;
  segments_.push_back(Segment{next_sequence_, path, 0});
  durable_bytes_ = 0;
  synced_.notify_all();
  return Status::Ok();
}

Status IngestLog::FrameLines(std::span<const std::string_view> lines, int64_t arrival_ns, std::string* frames) {
  size_t total = frames->size();
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].size() > kMaxLineBytes) {
      return Status::Invalid("line " + std::to_string(i + 1) + " of the request is " +
                             std::to_string(lines[i].size()) + " bytes long; lines may be at most " +
                             std::to_string(kMaxLineBytes) + " bytes");
    }
    total += kHeaderBytes + lines[i].size();
  }
  frames->reserve(total);
  for (std::string_view line : lines) AppendRecord(line, arrival_ns, frames);
  return Status::Ok();
}

Result<uint64_t> IngestLog::Append(std::span<const std::string_view> lines, int64_t arrival_ns) {
  std::string frames;
  FRESHET_RETURN_IF_ERROR(FrameLines(lines, arrival_ns, &frames));
  std::unique_lock<std::mutex> lock(mutex_);
  return WriteLocked(lock, frames, lines.size());
}

Result<KeyedAppend> IngestLog::AppendOnce(std::span<const std::string_view> lines, int64_t arrival_ns,
                                          const IngestKey& key) {
  if (key.key.empty() || key.key.size() > kMaxIngestKeyBytes) {
    return Status::Invalid("an idempotency key must be 1 to " + std::to_string(kMaxIngestKeyBytes) +
                           " bytes long; this one is " + std::to_string(key.key.size()));
  }
  if (key.receipt.size() > kMaxIngestReceiptBytes) {
    return Status::Invalid("an idempotency receipt may be at most " + std::to_string(kMaxIngestReceiptBytes) + " bytes");
  }
  KeyedAppend result;
  if (lines.empty()) {
    result.sequence = durable_sequence();
    return result;
  }
  KeyEntry entry;
  entry.key = std::string(key.key);
  entry.digest[0] = LinesHash(lines, 0x9e3779b97f4a7c15ull);
  entry.digest[1] = LinesHash(lines, 0xd1b54a32d192ed03ull);
  entry.logged_ms = NowMs();
  entry.pending = true;
  entry.receipt = std::string(key.receipt);
  // The key record first: recovery knows from it how many line records must follow for the batch to count.
  std::string frames;
  AppendRecord(EncodeKeyPayload(entry.key, entry.digest, entry.logged_ms, static_cast<uint32_t>(lines.size()),
                                entry.receipt),
               arrival_ns, &frames, kKeyRecordFlag);
  FRESHET_RETURN_IF_ERROR(FrameLines(lines, arrival_ns, &frames));

  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    if (!failure_.ok()) return failure_;
    ExpireKeysLocked(entry.logged_ms);
    auto it = key_ids_.find(entry.key);
    if (it == key_ids_.end()) break;
    const KeyEntry& known = keys_[it->second - keys_front_id_];
    if (known.pending && (known.end_sequence == 0 || known.end_sequence > durable_sequence_)) {
      synced_.wait(lock);  // The first send is still being written: its outcome decides.
      continue;
    }
    result.outcome = known.digest[0] == entry.digest[0] && known.digest[1] == entry.digest[1]
                         ? KeyedAppend::Outcome::kReplayed
                         : KeyedAppend::Outcome::kKeyReused;
    result.logged_ms = known.logged_ms;
    if (result.outcome == KeyedAppend::Outcome::kReplayed) result.receipt = known.receipt;
    return result;
  }
  keys_.push_back(std::move(entry));
  const uint64_t id = keys_front_id_ + keys_.size() - 1;
  KeyEntry& mine = keys_.back();  // Stays in place: only entries before it are popped, and never while pending.
  key_ids_[mine.key] = id;
  Result<uint64_t> written = WriteLocked(lock, frames, lines.size(), &mine.end_sequence);
  mine.pending = false;
  if (!written.ok()) {
    // Not durable (or not known to be): not remembered. After a failed sync a restart's recovery decides.
    key_ids_.erase(mine.key);
    mine.dropped = true;
    mine.receipt = std::string();
    synced_.notify_all();  // A resend waiting for this outcome.
    return written.status();
  }
  result.sequence = *written;
  return result;
}

Result<uint64_t> IngestLog::WriteLocked(std::unique_lock<std::mutex>& lock, const std::string& frames, size_t lines,
                                        uint64_t* end_sequence) {
  // Start a new segment first if these records would overflow the current one.
  while (true) {
    if (!failure_.ok()) return failure_;
    const uint64_t bytes = segments_.back().bytes;
    if (bytes == 0 || bytes + frames.size() <= options_.segment_bytes) break;
    if (syncing_) {
      synced_.wait(lock);
      continue;
    }
    FRESHET_RETURN_IF_ERROR(RollLocked());
  }
  Segment& segment = segments_.back();
  if (!frames.empty()) {
    Status written = WriteAll(active_fd_, frames.data(), frames.size());
    if (!written.ok()) {
      // Undo a partial write so that later records follow whole ones; if that fails too, stop for good.
      Status failed = Status::IoError("cannot write to ingest log segment '" + segment.path + "': " +
                                      written.message());
      if (::ftruncate(active_fd_, static_cast<off_t>(segment.bytes)) != 0) return FailLocked(failed);
      return failed;
    }
    segment.bytes += frames.size();
    next_sequence_ += lines;
    if (end_sequence != nullptr) *end_sequence = next_sequence_;
  }
  const uint64_t mine = next_sequence_;

  // Group commit: sync unless a sync that covers these records is done; one Append syncs for all waiting.
  while (durable_sequence_ < mine) {
    if (!failure_.ok()) return failure_;
    if (syncing_) {
      synced_.wait(lock);
      continue;
    }
    syncing_ = true;
    const uint64_t target_sequence = next_sequence_;
    const uint64_t target_bytes = segments_.back().bytes;
    const int fd = active_fd_;  // A roll waits for syncing_ to clear, so fd stays open.
    lock.unlock();
    const int rc = ::fdatasync(fd);
    const int sync_errno = errno;
    lock.lock();
    syncing_ = false;
    if (rc != 0) {
      return FailLocked(Status::IoError("cannot sync ingest log segment '" + segments_.back().path +
                                        "': " + std::strerror(sync_errno) + "; restart Freshet to recover the log"));
    }
    ++sync_count_;
    durable_sequence_ = std::max(durable_sequence_, target_sequence);
    durable_bytes_ = std::max(durable_bytes_, target_bytes);
    synced_.notify_all();
  }
  return mine;
}

Status IngestLog::DeleteBefore(uint64_t sequence) {
  std::lock_guard<std::mutex> one_at_a_time(delete_mutex_);
  // The keys of the segments about to go must outlive them: write every remembered key to the key file first
  // (outside the mutex, so that appends go on meanwhile).
  std::string keys_file;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (segments_.size() < 2 || segments_[1].base >= sequence) return Status::Ok();
    if (!keys_file_ && key_ids_.empty()) return DeleteSegmentsLocked(sequence);
    const int64_t now_ms = NowMs();
    ExpireKeysLocked(now_ms);
    std::string entries;
    ByteWriter out(&entries);
    uint64_t count = 0;
    for (const KeyEntry& k : keys_) {
      if (k.dropped || (k.pending && (k.end_sequence == 0 || k.end_sequence > durable_sequence_))) continue;
      out.PutBytes(EncodeKeyPayload(k.key, k.digest, k.logged_ms, 0, k.receipt));
      ++count;
    }
    keys_file.append(kKeysMagic);
    ByteWriter(&keys_file).PutVarint(count);
    keys_file.append(entries);
  }
  char crc[4];
  PutU32(Crc32cExtend(0, keys_file.data(), keys_file.size()), crc);
  keys_file.append(crc, 4);
  const std::string path = dir_ + "/" + std::string(kKeysFile);
  const std::string temp = path + ".tmp";
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::IoError("cannot create '" + temp + "': " + Errno());
  Status wrote = WriteAll(fd, keys_file.data(), keys_file.size());
  if (wrote.ok() && ::fsync(fd) != 0) wrote = Status::IoError(Errno());
  ::close(fd);
  if (wrote.ok() && ::rename(temp.c_str(), path.c_str()) != 0) wrote = Status::IoError(Errno());
  if (wrote.ok() && ::fsync(dir_fd_) != 0) wrote = Status::IoError(Errno());
  if (!wrote.ok()) {
    return Status::IoError("cannot write the idempotency key file '" + path + "' (" + wrote.message() +
                           "); the segments it would keep the keys of are not deleted");
  }
  std::lock_guard<std::mutex> lock(mutex_);
  keys_file_ = true;
  return DeleteSegmentsLocked(sequence);
}

Status IngestLog::DeleteSegmentsLocked(uint64_t sequence) {
  while (segments_.size() > 1 && segments_[1].base < sequence) {
    if (::unlink(segments_.front().path.c_str()) != 0 && errno != ENOENT) {
      return Status::IoError("cannot delete ingest log segment '" + segments_.front().path + "': " + Errno());
    }
    segments_.pop_front();
  }
  return Status::Ok();
}

uint64_t IngestLog::durable_sequence() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return durable_sequence_;
}

uint64_t IngestLog::first_sequence() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return segments_.front().base;
}

size_t IngestLog::segment_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return segments_.size();
}

uint64_t IngestLog::sync_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return sync_count_;
}

std::vector<std::string> IngestLog::TakeWarnings() {
  std::lock_guard<std::mutex> lock(mutex_);
  return std::exchange(warnings_, {});
}

IngestLog::SegmentView IngestLog::View(uint64_t base) const {
  std::lock_guard<std::mutex> lock(mutex_);
  SegmentView view;
  for (size_t i = 0; i < segments_.size(); ++i) {
    if (segments_[i].base != base) continue;
    view.found = true;
    view.path = segments_[i].path;
    view.sealed = i + 1 < segments_.size();
    view.readable_bytes = view.sealed ? segments_[i].bytes : durable_bytes_;
    view.next_base = view.sealed ? segments_[i + 1].base : 0;
    break;
  }
  return view;
}

bool IngestLog::WaitForMore(uint64_t sequence, int64_t timeout_ms) const {
  std::unique_lock<std::mutex> lock(mutex_);
  synced_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                   [&] { return durable_sequence_ > sequence || !failure_.ok(); });
  return durable_sequence_ > sequence;
}

// ---------------------------------------------------------------------------------------------------------
// IngestLogSource

IngestLogSource::IngestLogSource(IngestLog* log) : log_(log) {}

IngestLogSource::~IngestLogSource() {
  if (fd_ >= 0) ::close(fd_);
}

Status IngestLogSource::OpenSegment(const std::string& path, uint64_t base, uint64_t offset) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) return Status::IoError("cannot open ingest log segment '" + path + "': " + Errno());
  if (buffer_ == nullptr) buffer_ = std::make_unique_for_overwrite<char[]>(kBufferCapacity);  // Not zeroed.
  // The buffer holds no bytes of the previous segment; records handed out from it keep their text.
  FRESHET_CHECK(begin_ == end_);
  read_offset_ = offset;
  position_.segment = base;
  position_.offset = offset;
  started_ = true;
  return Status::Ok();
}

// Hands out the next whole record in the buffer; false when more bytes are needed.
Result<bool> IngestLogSource::NextRecord(SourceRecord* record) {
  std::string_view bytes(buffer_.get() + begin_, end_ - begin_);
  size_t record_bytes = 0;
  bool is_key = false;
  RecordCheck check = CheckRecord(bytes, &record_bytes, &is_key);
  while (check == RecordCheck::kOk && is_key) {  // Not an event: step over it, as over no record at all.
    begin_ += record_bytes;
    position_.offset += record_bytes;
    bytes.remove_prefix(record_bytes);
    check = CheckRecord(bytes, &record_bytes, &is_key);
  }
  if (check == RecordCheck::kIncomplete) return false;
  if (check != RecordCheck::kOk) {
    return Status::IoError("ingest log segment '" + SegmentName(position_.segment) + "' in '" + log_->dir() +
                           "' is damaged at offset " + std::to_string(position_.offset) + " (record " +
                           std::to_string(position_.sequence) + ": " +
                           (check == RecordCheck::kBadCrc ? "CRC mismatch" : "impossible length") +
                           "); the records from there on cannot be read");
  }
  const size_t length = record_bytes - kHeaderBytes;
  record->text = std::string_view(bytes.data() + kHeaderBytes, length);
  // The buffer keeps kParsePaddingBytes readable bytes past its end.
  record->capacity = static_cast<size_t>(buffer_.get() + kBufferCapacity - record->text.data());
  record->arrival_ns = static_cast<int64_t>(GetU64(bytes.data() + 8));
  record->too_long = false;
  begin_ += record_bytes;
  position_.offset += record_bytes;
  ++position_.sequence;
  record->line_number = position_.sequence;
  record->end = SourceOffset{position_.segment, position_.offset};
  return true;
}

Status IngestLogSource::Poll(std::vector<SourceRecord>* out, size_t max_records, int timeout_ms) {
  out->clear();
  if (!started_) {
    const uint64_t first = log_->first_sequence();
    IngestLog::SegmentView view = log_->View(first);
    if (!view.found) return Status::Internal("ingest log lost its first segment");
    position_.sequence = first;
    FRESHET_RETURN_IF_ERROR(OpenSegment(view.path, first, 0));
  }
  batch_start_ = position_;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(std::max(timeout_ms, 0));
  SourceRecord record;
  while (out->size() < max_records) {
    FRESHET_ASSIGN_OR_RETURN(bool got, NextRecord(&record));
    if (got) {
      out->push_back(record);
      continue;
    }
    // More bytes are needed. The buffer may only move while no record of this Poll points into it.
    const size_t room = kBufferBytes - end_;
    if (room < kReadBytes) {
      if (!out->empty()) break;
      std::memmove(buffer_.get(), buffer_.get() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
    }
    const IngestLog::SegmentView view = log_->View(position_.segment);
    if (!view.found) {
      return Status::IoError("ingest log segment '" + SegmentName(position_.segment) + "' in '" + log_->dir() +
                             "' was deleted while being read; DeleteBefore must only be given checkpointed positions");
    }
    if (read_offset_ < view.readable_bytes) {
      const size_t want = static_cast<size_t>(std::min<uint64_t>(
          {view.readable_bytes - read_offset_, kBufferBytes - end_, kReadBytes}));
      ssize_t n;
      do {
        n = ::pread(fd_, buffer_.get() + end_, want, static_cast<off_t>(read_offset_));
      } while (n < 0 && errno == EINTR);
      if (n < 0) return Status::IoError("cannot read ingest log segment '" + view.path + "': " + Errno());
      if (n == 0) {
        return Status::IoError("ingest log segment '" + view.path + "' is shorter than the log wrote (" +
                               std::to_string(read_offset_) + " < " + std::to_string(view.readable_bytes) +
                               " bytes); was it changed by something else?");
      }
      end_ += static_cast<size_t>(n);
      read_offset_ += static_cast<uint64_t>(n);
      continue;
    }
    if (begin_ != end_) {
      return Status::IoError("ingest log segment '" + view.path + "' ends in the middle of a record at offset " +
                             std::to_string(position_.offset) + "; the log is damaged");
    }
    if (view.sealed) {
      if (position_.sequence != view.next_base) {
        return Status::IoError("ingest log segment '" + view.path + "' holds records up to " +
                               std::to_string(position_.sequence) + " but the next segment starts at record " +
                               std::to_string(view.next_base) + "; the log is damaged");
      }
      const IngestLog::SegmentView next = log_->View(view.next_base);
      if (!next.found) {
        return Status::IoError("ingest log segment '" + SegmentName(view.next_base) + "' in '" + log_->dir() +
                               "' was deleted before it was read");
      }
      FRESHET_RETURN_IF_ERROR(OpenSegment(next.path, view.next_base, 0));
      continue;
    }
    // Caught up with what is durable.
    if (!out->empty()) break;
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) break;
    const int64_t wait_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count() + 1;  // Round up.
    if (!log_->WaitForMore(position_.sequence, wait_ms)) break;
  }
  return Status::Ok();
}

std::string IngestLogSource::position() const {
  if (!started_) {
    const uint64_t first = log_->first_sequence();
    return IngestLogPosition{first, first, 0}.ToString();
  }
  return position_.ToString();
}

std::string IngestLogSource::PositionAfter(std::span<const SourceRecord> batch, size_t count) const {
  FRESHET_CHECK(count <= batch.size());
  if (count == 0) return batch_start_.ToString();
  const SourceRecord& last = batch[count - 1];
  return IngestLogPosition{last.line_number, last.end.stream, last.end.offset}.ToString();
}

Status IngestLogSource::Seek(std::string_view position_text) {
  FRESHET_ASSIGN_OR_RETURN(IngestLogPosition position, IngestLogPosition::Parse(position_text));
  const std::string where = "record " + std::to_string(position.sequence) + " (segment " +
                            std::to_string(position.segment) + ", offset " + std::to_string(position.offset) + ")";
  IngestLog::SegmentView view = log_->View(position.segment);
  if (!view.found) {
    // The checkpoint was at the very end of a segment that has since been deleted: the same place is the
    // start of the next one.
    view = log_->View(position.sequence);
    if (!view.found) {
      const uint64_t first = log_->first_sequence();
      if (position.sequence < first) {
        return Status::NotFound("cannot resume the ingest log '" + log_->dir() + "' at " + where +
                                ": its oldest segment starts at record " + std::to_string(first) +
                                " (older ones were deleted); start fresh with `freshet run --reset` (it moves "
                                "the old checkpoints aside; the log is then read from its oldest record)");
      }
      return Status::NotFound("cannot resume the ingest log '" + log_->dir() + "' at " + where +
                              ": the log has no segment " + std::to_string(position.segment) +
                              " (durable records: up to " + std::to_string(log_->durable_sequence()) +
                              "); is this the log the checkpoint was made with?");
    }
    position.segment = position.sequence;
    position.offset = 0;
  }
  if (position.offset > view.readable_bytes) {
    return Status::NotFound("cannot resume the ingest log '" + log_->dir() + "' at " + where + ": segment '" +
                            view.path + "' has only " + std::to_string(view.readable_bytes) +
                            " durable bytes; is this the log the checkpoint was made with?");
  }
  begin_ = end_ = 0;
  FRESHET_RETURN_IF_ERROR(OpenSegment(view.path, position.segment, position.offset));
  position_ = position;
  batch_start_ = position;
  // The place must be a record boundary: a whole record starts there, or the durable bytes end there.
  if (position.offset < view.readable_bytes) {
    const size_t want = static_cast<size_t>(
        std::min<uint64_t>(view.readable_bytes - position.offset, kHeaderBytes + kMaxLineBytes));
    std::string bytes(want, '\0');
    ssize_t n = ::pread(fd_, bytes.data(), want, static_cast<off_t>(position.offset));
    size_t record_bytes = 0;
    if (n < 0 || CheckRecord(std::string_view(bytes.data(), static_cast<size_t>(std::max<ssize_t>(n, 0))),
                             &record_bytes) != RecordCheck::kOk) {
      started_ = false;
      return Status::Invalid("cannot resume the ingest log '" + log_->dir() + "' at " + where +
                             ": no record starts there; is this the log the checkpoint was made with?");
    }
  }
  return Status::Ok();
}

}  // namespace freshet

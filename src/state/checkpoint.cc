#include "state/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <system_error>

#include "common/bytes.h"
#include "common/files.h"
#include "common/time.h"

namespace freshet {
namespace {

constexpr std::string_view kMagic = "FRESHETCKPT1";
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kLengthOffset = 16;      // Of the U64 total length.
constexpr size_t kPrefixBytes = 24;       // Magic, version, total length: enough to judge the rest.
constexpr size_t kCrcBytes = 4;
constexpr size_t kSmallestFileBytes = 48 + 1 + 1 + kCrcBytes;  // No positions, empty engine state.
constexpr std::string_view kNamePrefix = "checkpoint-";
constexpr std::string_view kNameSuffix = ".ckpt";
constexpr std::string_view kTempSuffix = ".tmp";
constexpr size_t kSequenceDigits = 20;

std::string Hex32(uint32_t v) {
  char buffer[16];
  std::snprintf(buffer, sizeof(buffer), "0x%08" PRIx32, v);
  return buffer;
}

std::string SystemError(const std::string& what, const std::string& path) {
  return what + " '" + path + "': " + std::strerror(errno) +
         "; check that the disk has space and the checkpoint directory is writable";
}

// Everything before the engine state's bytes, the total length included.
std::string EncodeHeader(const Checkpoint& c, int64_t written_unix_ms) {
  ByteWriter w;
  w.PutRaw(kMagic);
  w.PutU32(kFormatVersion);
  w.PutU64(0);  // The total length, patched below.
  w.PutU64(c.sequence);
  w.PutI64(written_unix_ms);
  w.PutU64(c.spec_fingerprint);
  w.PutVarint(c.positions.size());
  for (const auto& [source, position] : c.positions) {
    w.PutString(source);
    w.PutString(position);
  }
  w.PutVarint(c.engine_state.size());
  w.PatchU64(kLengthOffset, w.size() + c.engine_state.size() + kCrcBytes);
  return w.Take();
}

std::string EncodeTrailer(const std::string& header, const std::string& engine_state) {
  ByteWriter w;
  w.PutU32(Crc32c(engine_state, Crc32c(header)));
  return w.Take();
}

// The sequence of a checkpoint file name, and whether it is a temporary file; nullopt for other names.
std::optional<uint64_t> ParseFileName(std::string_view name, bool* temporary) {
  if (!name.starts_with(kNamePrefix)) return std::nullopt;
  name.remove_prefix(kNamePrefix.size());
  if (name.size() < kSequenceDigits) return std::nullopt;
  uint64_t sequence = 0;
  const char* end = name.data() + kSequenceDigits;
  auto [ptr, ec] = std::from_chars(name.data(), end, sequence);
  if (ec != std::errc() || ptr != end) return std::nullopt;
  name.remove_prefix(kSequenceDigits);
  if (name == kNameSuffix) {
    *temporary = false;
  } else if (name.starts_with(kNameSuffix) && name.substr(kNameSuffix.size()) == kTempSuffix) {
    *temporary = true;
  } else {
    return std::nullopt;
  }
  return sequence;
}

struct DirectoryEntry {
  uint64_t sequence;
  bool temporary;
  std::string path;
  std::string name;
};

Result<std::vector<DirectoryEntry>> ListCheckpointFiles(const std::string& directory) {
  std::vector<DirectoryEntry> entries;
  std::error_code ec;
  std::filesystem::directory_iterator it(directory, ec);
  for (; !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    bool temporary = false;
    if (std::optional<uint64_t> sequence = ParseFileName(name, &temporary)) {
      entries.push_back(DirectoryEntry{*sequence, temporary, it->path().string(), name});
    }
  }
  if (ec) {
    return Status::IoError("cannot list checkpoint directory '" + directory + "': " + ec.message() +
                           "; check that it exists and is readable");
  }
  return entries;
}

}  // namespace

std::string CheckpointStore::FileName(uint64_t sequence) {
  char digits[32];
  std::snprintf(digits, sizeof(digits), "%020" PRIu64, sequence);
  return std::string(kNamePrefix) + digits + std::string(kNameSuffix);
}

std::string EncodeCheckpoint(const Checkpoint& checkpoint) {
  std::string bytes = EncodeHeader(checkpoint, checkpoint.written_unix_ms);
  const std::string trailer = EncodeTrailer(bytes, checkpoint.engine_state);
  bytes += checkpoint.engine_state;
  bytes += trailer;
  return bytes;
}

Result<Checkpoint> DecodeCheckpoint(std::string file) {
  const size_t size = file.size();
  const size_t magic_seen = std::min(size, kMagic.size());
  if (std::string_view(file).substr(0, magic_seen) != kMagic.substr(0, magic_seen)) {
    return Status::Invalid("wrong magic: not a Freshet checkpoint file (it should start with \"FRESHETCKPT1\")");
  }
  if (size < kPrefixBytes) {
    return Status::Invalid("truncated at byte " + std::to_string(size) + " (the header alone takes " +
                           std::to_string(kPrefixBytes) + " bytes)");
  }
  ByteReader r(file);
  std::string_view magic;
  uint32_t version;
  uint64_t total;
  (void)r.ReadRaw(kMagic.size(), &magic);
  (void)r.ReadU32(&version);
  (void)r.ReadU64(&total);
  if (version != kFormatVersion) {
    return Status::Invalid("format version " + std::to_string(version) + " is not supported (this build reads " +
                           std::to_string(kFormatVersion) + ")");
  }
  if (total > size) {
    return Status::Invalid("truncated at byte " + std::to_string(size) + " (the checkpoint is " +
                           std::to_string(total) + " bytes long)");
  }
  if (total < size) {
    return Status::Invalid(std::to_string(size - total) + " unexpected bytes after the end of the checkpoint at byte " +
                           std::to_string(total));
  }
  if (size < kSmallestFileBytes) {
    return Status::Invalid("malformed: a length of " + std::to_string(size) + " bytes is shorter than any checkpoint");
  }
  uint32_t stored_crc = 0;
  for (size_t k = 0; k < kCrcBytes; ++k) {
    stored_crc |= static_cast<uint32_t>(static_cast<uint8_t>(file[size - kCrcBytes + k])) << (8 * k);
  }
  const uint32_t computed_crc = Crc32c(std::string_view(file).substr(0, size - kCrcBytes));
  if (stored_crc != computed_crc) {
    return Status::Invalid("checksum mismatch (stored CRC-32C " + Hex32(stored_crc) + ", computed " +
                           Hex32(computed_crc) + "): the file is damaged");
  }
  Checkpoint c;
  uint64_t positions, state_bytes;
  ByteReader body(std::string_view(file).substr(0, size - kCrcBytes));
  (void)body.ReadRaw(kPrefixBytes, &magic);
  if (!body.ReadU64(&c.sequence) || !body.ReadI64(&c.written_unix_ms) || !body.ReadU64(&c.spec_fingerprint) ||
      !body.ReadCount(&positions, 2)) {
    return Status::Invalid("malformed header at byte " + std::to_string(body.failed_at()));
  }
  c.positions.reserve(static_cast<size_t>(positions));
  for (uint64_t k = 0; k < positions; ++k) {
    std::string_view source, position;
    if (!body.ReadString(&source) || !body.ReadString(&position)) {
      return Status::Invalid("malformed source position #" + std::to_string(k) + " at byte " +
                             std::to_string(body.failed_at()));
    }
    c.positions.emplace_back(std::string(source), std::string(position));
  }
  if (!body.ReadVarint(&state_bytes) || state_bytes != body.remaining()) {
    return Status::Invalid("malformed: the engine state's length at byte " + std::to_string(body.offset()) +
                           " does not match the file");
  }
  // Reuse the file's buffer for the engine state rather than copying it.
  const size_t state_offset = body.offset();
  file.resize(size - kCrcBytes);
  file.erase(0, state_offset);
  c.engine_state = std::move(file);
  return c;
}

Result<CheckpointStore> CheckpointStore::Open(std::string directory, int keep) {
  if (keep < 1) {
    return Status::Invalid("checkpoint keep must be at least 1, got " + std::to_string(keep));
  }
  std::error_code ec;
  const bool created = std::filesystem::create_directories(directory, ec);
  if (ec) {
    return Status::IoError("cannot create checkpoint directory '" + directory + "': " + ec.message() +
                           "; check the path and its permissions");
  }
  if (!std::filesystem::is_directory(directory, ec)) {
    return Status::IoError("checkpoint directory '" + directory + "' is not a directory; choose another path");
  }
  if (created) {
    std::filesystem::path parent = std::filesystem::absolute(directory, ec).parent_path();
    if (!ec) FRESHET_RETURN_IF_ERROR(SyncDirectory(parent.string()));
  }
  CheckpointStore store(std::move(directory), keep);
  FRESHET_ASSIGN_OR_RETURN(std::vector<DirectoryEntry> entries, ListCheckpointFiles(store.directory_));
  for (const DirectoryEntry& e : entries) {
    if (e.sequence != UINT64_MAX) store.next_sequence_ = std::max(store.next_sequence_, e.sequence + 1);
  }
  return store;
}

Status CheckpointStore::Write(const Checkpoint& checkpoint) {
  const auto start = std::chrono::steady_clock::now();
  const int64_t written = checkpoint.written_unix_ms != 0 ? checkpoint.written_unix_ms : WallClockMs();
  const std::string header = EncodeHeader(checkpoint, written);
  const std::string trailer = EncodeTrailer(header, checkpoint.engine_state);
  const std::string path = directory_ + "/" + FileName(checkpoint.sequence);
  const std::string temporary = path + std::string(kTempSuffix);
  Status status = WriteFileDurably(temporary, {header, checkpoint.engine_state, trailer}, "checkpoint file");
  if (status.ok() && ::rename(temporary.c_str(), path.c_str()) != 0) {
    status = Status::IoError(SystemError("cannot rename the new checkpoint into place as", path));
  }
  if (!status.ok()) {
    ::unlink(temporary.c_str());
    return status;
  }
  FRESHET_RETURN_IF_ERROR(SyncDirectory(directory_));
  if (checkpoint.sequence != UINT64_MAX) next_sequence_ = std::max(next_sequence_, checkpoint.sequence + 1);

  // Keep the newest `keep_`; the rest are no longer needed once the new one is durable.
  Result<std::vector<DirectoryEntry>> listed = ListCheckpointFiles(directory_);
  if (listed.ok()) {
    std::vector<DirectoryEntry>& entries = *listed;
    std::erase_if(entries, [](const DirectoryEntry& e) { return e.temporary; });
    std::sort(entries.begin(), entries.end(),
              [](const DirectoryEntry& a, const DirectoryEntry& b) { return a.sequence > b.sequence; });
    for (size_t k = static_cast<size_t>(keep_); k < entries.size(); ++k) ::unlink(entries[k].path.c_str());
  }

  last_size_bytes_ = header.size() + checkpoint.engine_state.size() + trailer.size();
  last_write_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return Status::Ok();
}

Result<std::optional<Checkpoint>> CheckpointStore::LoadNewestValid(std::vector<std::string>* warnings,
                                                                  uint64_t at_most) {
  FRESHET_ASSIGN_OR_RETURN(std::vector<DirectoryEntry> entries, ListCheckpointFiles(directory_));
  auto warn = [&](std::string message) {
    if (warnings != nullptr) warnings->push_back(std::move(message));
  };
  std::vector<DirectoryEntry> checkpoints;
  for (DirectoryEntry& e : entries) {
    if (e.temporary) {
      if (::unlink(e.path.c_str()) == 0) {
        warn(e.path + ": removed, a temporary file left by an interrupted checkpoint write");
      } else {
        warn(e.path + ": ignored, a temporary file left by an interrupted checkpoint write (cannot remove it: " +
             std::strerror(errno) + ")");
      }
      continue;
    }
    if (e.sequence != UINT64_MAX) next_sequence_ = std::max(next_sequence_, e.sequence + 1);
    checkpoints.push_back(std::move(e));
  }
  std::sort(checkpoints.begin(), checkpoints.end(),
            [](const DirectoryEntry& a, const DirectoryEntry& b) { return a.sequence > b.sequence; });
  for (const DirectoryEntry& e : checkpoints) {
    if (e.sequence > at_most) continue;
    Result<std::string> bytes = ReadWholeFile(e.path);
    if (!bytes.ok()) {
      warn(e.path + ": skipped, " + bytes.status().message());
      continue;
    }
    Result<Checkpoint> checkpoint = DecodeCheckpoint(std::move(bytes).value());
    if (!checkpoint.ok()) {
      warn(e.path + ": skipped, " + checkpoint.status().message());
      continue;
    }
    if (checkpoint->sequence != e.sequence) {
      warn(e.path + ": skipped, it holds checkpoint sequence " + std::to_string(checkpoint->sequence) +
           ", not the one its name says (renamed by hand?)");
      continue;
    }
    return std::optional<Checkpoint>(std::move(checkpoint).value());
  }
  return std::optional<Checkpoint>();
}

}  // namespace freshet

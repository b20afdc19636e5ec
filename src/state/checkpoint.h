// Checkpoints: the engine's state together with the source positions it reflects, written atomically to a
// directory so that `freshet run` can be killed at any moment (kill -9, power loss) and resume exactly:
// restore the newest valid checkpoint, seek every source to its position, go on. No event is lost or
// counted twice, provided positions and state are taken at the same point of the stream.
//
//   FRESHET_ASSIGN_OR_RETURN(CheckpointStore store, CheckpointStore::Open("/var/lib/freshet/fraud"));
//   std::vector<std::string> warnings;
//   FRESHET_ASSIGN_OR_RETURN(std::optional<Checkpoint> last, store.LoadNewestValid(&warnings));
//   for (const std::string& w : warnings) log(w);
//   if (last) { ByteReader r(last->engine_state); FRESHET_RETURN_IF_ERROR(engine.LoadState(r)); ... }
//   ...
//   Checkpoint c{store.next_sequence(), 0, engine.spec_fingerprint(), positions, state_bytes};
//   FRESHET_RETURN_IF_ERROR(store.Write(c));
//
// File format (checkpoint-<sequence, 20 digits>.ckpt; integers little-endian, see common/bytes.h):
//   offset 0   magic "FRESHETCKPT1" (12 bytes)
//          12  U32 format version (1)
//          16  U64 total length of the file in bytes, this trailer included
//          24  U64 checkpoint sequence number (also in the file name)
//          32  I64 wall-clock time of writing, Unix epoch milliseconds
//          40  U64 spec fingerprint (FeatureEngine::spec_fingerprint)
//          48  Varint number of source positions, then each as String source name, String position
//              Varint length of the engine state, then the engine state (FeatureEngine::SaveState)
//   last 4     U32 CRC-32C of every byte before it
//
// Durability: Write writes a temporary file (checkpoint-<sequence>.ckpt.tmp) in the same directory,
// fsyncs it, renames it into place and fsyncs the directory, so a crash leaves either the complete new
// checkpoint or none, never a partial one under a checkpoint name. LoadNewestValid removes leftover
// temporary files and, should a checkpoint still be damaged (disk corruption, a copy cut short), skips it
// with a warning and falls back to the one before.
//
// Not thread-safe; one process writes a directory at a time.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace freshet {

struct Checkpoint {
  // Orders checkpoints: the newest valid one wins. CheckpointStore::next_sequence gives the next free one.
  uint64_t sequence = 0;
  // When the checkpoint was written, Unix epoch milliseconds. 0 when writing: Write stamps the clock.
  int64_t written_unix_ms = 0;
  // FeatureEngine::spec_fingerprint of the engine whose state this is.
  uint64_t spec_fingerprint = 0;
  // (source name, position) per source; positions are opaque strings produced by the sources.
  std::vector<std::pair<std::string, std::string>> positions;
  // FeatureEngine::SaveState bytes.
  std::string engine_state;
};

class CheckpointStore {
 public:
  // Opens (creating it and its parents if missing) a checkpoint directory that keeps the newest `keep`
  // checkpoints (at least 1). Fails when the directory cannot be created or listed.
  static Result<CheckpointStore> Open(std::string directory, int keep = 3);

  // Writes `checkpoint` durably (see the file comment), then deletes all but the newest `keep`
  // checkpoints. Fails with the path and the system's reason when any step fails; the previous
  // checkpoints are then untouched.
  Status Write(const Checkpoint& checkpoint);

  // The newest checkpoint that is intact, or nullopt when there is none (an empty directory, or every
  // file damaged). Each damaged file skipped adds a warning naming it and why ("checksum mismatch",
  // "truncated at byte N", "wrong magic"), and each temporary file left by an interrupted write is
  // removed with a note. Fails only when the directory cannot be read. `at_most`: only checkpoints of that
  // sequence or lower count (several feature sets restore the sequences their manifest names, even when a crash
  // left a newer checkpoint of one set).
  Result<std::optional<Checkpoint>> LoadNewestValid(std::vector<std::string>* warnings,
                                                    uint64_t at_most = UINT64_MAX);

  // One more than the largest sequence of any checkpoint file seen in the directory or written (1 when
  // there is none): the sequence to give the next checkpoint.
  uint64_t next_sequence() const { return next_sequence_; }

  const std::string& directory() const { return directory_; }
  int keep() const { return keep_; }

  // Metrics of the last successful Write: wall time from start to the directory fsync, and file size.
  double last_write_ms() const { return last_write_ms_; }
  uint64_t last_size_bytes() const { return last_size_bytes_; }

  // "checkpoint-00000000000000000042.ckpt"
  static std::string FileName(uint64_t sequence);

 private:
  CheckpointStore(std::string directory, int keep) : directory_(std::move(directory)), keep_(keep) {}

  std::string directory_;
  int keep_;
  uint64_t next_sequence_ = 1;
  double last_write_ms_ = 0;
  uint64_t last_size_bytes_ = 0;
};

// The checkpoint file bytes of `checkpoint` (written_unix_ms as given), for tools and tests; Write
// produces the same bytes without copying the engine state.
std::string EncodeCheckpoint(const Checkpoint& checkpoint);

// Decodes and verifies a whole checkpoint file. On failure the message is the reason alone
// ("checksum mismatch ...", "truncated at byte N ...", "wrong magic ..."), for the caller to prefix with
// the file name.
Result<Checkpoint> DecodeCheckpoint(std::string file_bytes);

}  // namespace freshet

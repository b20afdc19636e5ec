// DeadLetterWriter: where rejected and late events go, one JSON object per line:
//   {"source":"events.jsonl","line":12,"reason":"late","raw":"{...original line...}"}
// or, for a Kafka message, "partition" and "offset" in place of "line".
// `raw` is the original line as a JSON string; bytes that are not valid UTF-8 become U+FFFD.
// Writing is buffered; Flush, Sync, Close (or the destructor) write the buffer out. A writer without a path counts only.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "common/status.h"

namespace freshet {

// Appends `text` to *out as the body of a JSON string (no quotes), escaping as JSON requires and
// replacing invalid UTF-8 with U+FFFD.
void AppendJsonEscaped(std::string_view text, std::string* out);

class DeadLetterWriter {
 public:
  DeadLetterWriter() = default;
  ~DeadLetterWriter();
  DeadLetterWriter(const DeadLetterWriter&) = delete;
  DeadLetterWriter& operator=(const DeadLetterWriter&) = delete;

  // Opens (truncates) `path`; an empty path writes nothing.
  Status Open(const std::string& path, std::string source_name);
  // Opens `path` for appending after cutting it back to `keep_bytes` (what a checkpoint recorded), so
  // dead letters written after that checkpoint are not written twice when their events are read again.
  Status OpenAt(const std::string& path, std::string source_name, uint64_t keep_bytes);
  // Hands buffered letters to the OS (no fsync), so readers of the file see them; a crash may still
  // lose them, which the next checkpoint's cut-back and the replay make good.
  void Flush();
  // Writes buffered letters, fsyncs, and returns the file's length: the length a checkpoint records.
  Result<uint64_t> Sync();
  void Write(uint64_t line, std::string_view reason, std::string_view raw);
  // For a message of a partitioned source (Kafka): {"source":"topic","partition":3,"offset":812,...}.
  void WriteAt(int64_t partition, int64_t offset, std::string_view reason, std::string_view raw);
  Status Close();
  uint64_t written() const { return written_; }

 private:
  void WriteLetter(std::string_view place, std::string_view reason, std::string_view raw);

  std::FILE* file_ = nullptr;
  std::string source_name_;
  std::string buffer_;
  uint64_t written_ = 0;
};

}  // namespace freshet

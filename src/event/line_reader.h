// LineReader: reads a JSON-lines file in large chunks and hands out its lines, numbered from 1, each
// followed by kParsePaddingBytes readable bytes so EventParser can parse it in place.
//
// A trailing '\r' is stripped. A line longer than kMaxLineBytes is returned truncated with
// `too_long` set, and reading goes on at the next line. Not thread-safe.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace freshet {

struct Line {
  std::string_view text;
  size_t capacity = 0;      // Readable bytes from text.data(): text.size() + padding at least.
  uint64_t number = 0;      // 1-based physical line number.
  uint64_t end_offset = 0;  // Byte offset in the file just past this line's newline.
  bool too_long = false;
};

class LineReader {
 public:
  LineReader() = default;
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // Opens `path` ("-" for standard input).
  Status Open(const std::string& path);

  // Reads the next line into *line. Returns false at end of file (or on a read error, see status()).
  bool Next(Line* line);

  // A read error met by Next, if any.
  const Status& status() const { return status_; }

  // Bytes consumed so far and the file's size (0 when unknown, e.g. a pipe), for progress reports.
  uint64_t bytes_consumed() const { return consumed_offset_; }
  uint64_t file_size() const { return file_size_; }

  // The bytes read from the file but not yet returned as lines (they start at file offset bytes_consumed()),
  // valid until the next Next: lets a caller look at the coming lines, e.g. to prefetch what they will need.
  std::string_view Unread() const { return std::string_view(buffer_.data() + begin_, end_ - begin_); }

 private:
  bool Fill();

  std::FILE* file_ = nullptr;
  bool owns_file_ = false;
  bool eof_ = false;
  std::vector<char> buffer_;
  size_t begin_ = 0;  // Start of unconsumed data in buffer_.
  size_t end_ = 0;    // End of valid data in buffer_.
  uint64_t line_number_ = 0;
  uint64_t consumed_offset_ = 0;
  uint64_t file_size_ = 0;
  Status status_;
};

}  // namespace freshet

// LineReader: reads a JSON-lines file in large chunks and hands out its lines, numbered from 1, each
// followed by kParsePaddingBytes readable bytes so EventParser can parse it in place.
//
// A trailing '\r' is stripped. A line longer than kMaxLineBytes is returned truncated with
// `too_long` set, and reading goes on at the next line. Not thread-safe.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
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

  // Looks at the coming lines before Next returns them, e.g. to prefetch what they will need: calls visit(text) for
  // each line not visited yet, in order (the text as in the file: a CR before the newline stays), until `lines`
  // visited lines (at most kMaxAhead) wait to be returned, as far as the bytes read hold whole lines (after a
  // refill, the first lines of the new bytes may go unvisited). Next takes the ends of visited lines from here
  // rather than searching for them again (a second search per line was ~2% of a joined run's events).
  static constexpr size_t kMaxAhead = 64;
  template <typename Visit>
  void LookAhead(size_t lines, Visit visit) {
    lines = std::min(lines, kMaxAhead);
    while (ahead_count_ < lines) {
      const uint64_t from = ahead_count_ > 0 ? ahead_ends_[(ahead_first_ + ahead_count_ - 1) % kMaxAhead] + 1
                                             : consumed_offset_;
      const char* start = buffer_.data() + begin_ + (from - consumed_offset_);
      const char* newline = static_cast<const char*>(std::memchr(start, '\n', buffer_.data() + end_ - start));
      if (newline == nullptr) return;
      ahead_ends_[(ahead_first_ + ahead_count_) % kMaxAhead] = from + static_cast<uint64_t>(newline - start);
      ++ahead_count_;
      visit(std::string_view(start, static_cast<size_t>(newline - start)));
    }
  }
  // Visited lines that Next has not returned yet.
  size_t lines_ahead() const { return ahead_count_; }

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
  // File offsets of the newlines that end the lines LookAhead visited and Next has not returned: a ring.
  std::array<uint64_t, kMaxAhead> ahead_ends_{};
  size_t ahead_first_ = 0;
  size_t ahead_count_ = 0;
};

}  // namespace freshet

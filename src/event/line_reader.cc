#include "event/line_reader.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "event/event_parser.h"

namespace freshet {
namespace {
constexpr size_t kChunkBytes = 4 << 20;
}  // namespace

LineReader::~LineReader() {
  if (file_ != nullptr && owns_file_) std::fclose(file_);
}

Status LineReader::Open(const std::string& path) {
  if (path == "-") {
    file_ = stdin;
    owns_file_ = false;
  } else {
    file_ = std::fopen(path.c_str(), "rb");
    if (file_ == nullptr) {
      return Status::IoError("cannot open events file '" + path + "': " + std::strerror(errno));
    }
    owns_file_ = true;
    struct stat st;
    if (fstat(fileno(file_), &st) == 0 && S_ISREG(st.st_mode)) file_size_ = static_cast<uint64_t>(st.st_size);
  }
  buffer_.assign(kChunkBytes + kParsePaddingBytes, '\0');
  return Status::Ok();
}

// Moves unconsumed bytes to the front and reads more. Returns false when nothing more can be read.
bool LineReader::Fill() {
  if (eof_) return false;
  if (begin_ > 0) {
    std::memmove(buffer_.data(), buffer_.data() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  if (end_ + kParsePaddingBytes >= buffer_.size()) {
    buffer_.resize(buffer_.size() * 2);
  }
  size_t room = buffer_.size() - kParsePaddingBytes - end_;
  size_t n = std::fread(buffer_.data() + end_, 1, room, file_);
  if (n == 0) {
    if (std::ferror(file_)) status_ = Status::IoError(std::string("read error: ") + std::strerror(errno));
    eof_ = true;
    return false;
  }
  end_ += n;
  return true;
}

bool LineReader::Next(Line* line) {
  if (file_ == nullptr) return false;
  bool too_long = false;
  while (true) {
    const char* start = buffer_.data() + begin_;
    const char* nl;
    if (ahead_count_ > 0) {  // LookAhead found it.
      nl = start + (ahead_ends_[ahead_first_] - consumed_offset_);
      ahead_first_ = (ahead_first_ + 1) % kMaxAhead;
      --ahead_count_;
    } else {
      nl = static_cast<const char*>(std::memchr(start, '\n', end_ - begin_));
    }
    if (nl != nullptr || (eof_ && end_ > begin_)) {
      size_t len = nl != nullptr ? static_cast<size_t>(nl - start) : end_ - begin_;
      size_t consumed = nl != nullptr ? len + 1 : len;
      ++line_number_;
      consumed_offset_ += consumed;
      begin_ += consumed;
      if (too_long) {
        // The start of this line was dropped while skipping; report it without its text.
        line->text = std::string_view();
        line->too_long = true;
      } else {
        if (len > 0 && start[len - 1] == '\r') --len;
        line->text = std::string_view(start, len);
        line->too_long = len > kMaxLineBytes;
      }
      line->capacity = line->text.size() + kParsePaddingBytes;
      line->number = line_number_;
      line->end_offset = consumed_offset_;
      return true;
    }
    if (end_ - begin_ > kMaxLineBytes + 2) {
      // Skip the overlong line's bytes seen so far; keep looking for its end.
      consumed_offset_ += end_ - begin_;
      begin_ = end_;
      too_long = true;
    }
    if (!Fill()) {
      if (end_ > begin_) continue;  // Last line without a trailing newline.
      if (too_long) {
        ++line_number_;
        line->text = std::string_view();
        line->too_long = true;
        line->capacity = kParsePaddingBytes;
        line->number = line_number_;
        line->end_offset = consumed_offset_;
        return true;
      }
      return false;
    }
  }
}

}  // namespace freshet

#include "event/dead_letters.h"

#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <cstring>

namespace freshet {
namespace {

// Length of the valid UTF-8 sequence at text[pos], or 0 if it is not valid.
size_t Utf8SequenceLength(std::string_view text, size_t pos) {
  const auto c = static_cast<unsigned char>(text[pos]);
  size_t len;
  uint32_t min;
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) len = 2, min = 0x80;
  else if ((c & 0xF0) == 0xE0) len = 3, min = 0x800;
  else if ((c & 0xF8) == 0xF0) len = 4, min = 0x10000;
  else return 0;
  if (pos + len > text.size()) return 0;
  uint32_t cp = c & (0x7F >> len);
  for (size_t k = 1; k < len; ++k) {
    const auto cc = static_cast<unsigned char>(text[pos + k]);
    if ((cc & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (cc & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

}  // namespace

void AppendJsonEscaped(std::string_view text, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (size_t pos = 0; pos < text.size();) {
    const auto c = static_cast<unsigned char>(text[pos]);
    if (c >= 0x80) {
      const size_t len = Utf8SequenceLength(text, pos);
      if (len == 0) {
        out->append("\xEF\xBF\xBD");
        ++pos;
      } else {
        out->append(text.substr(pos, len));
        pos += len;
      }
      continue;
    }
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      default:
        if (c < 0x20) {
          out->append("\\u00");
          out->push_back(kHex[c >> 4]);
          out->push_back(kHex[c & 15]);
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
    ++pos;
  }
}

DeadLetterWriter::~DeadLetterWriter() { (void)Close(); }

Status DeadLetterWriter::Open(const std::string& path, std::string source_name) {
  source_name_ = std::move(source_name);
  if (path.empty()) return Status::Ok();
  file_ = std::fopen(path.c_str(), "wb");
  if (file_ == nullptr) {
    return Status::IoError("cannot open dead-letter file '" + path + "': " + std::strerror(errno));
  }
  return Status::Ok();
}

Status DeadLetterWriter::OpenAt(const std::string& path, std::string source_name, uint64_t keep_bytes) {
  source_name_ = std::move(source_name);
  std::error_code ec;
  if (std::filesystem::exists(path, ec) && std::filesystem::file_size(path, ec) > keep_bytes) {
    std::filesystem::resize_file(path, keep_bytes, ec);
    if (ec) return Status::IoError("cannot cut dead-letter file '" + path + "' back to its checkpointed length: " + ec.message());
  }
  file_ = std::fopen(path.c_str(), "ab");
  if (file_ == nullptr) {
    return Status::IoError("cannot open dead-letter file '" + path + "': " + std::strerror(errno));
  }
  return Status::Ok();
}

void DeadLetterWriter::Flush() {
  if (file_ == nullptr || buffer_.empty()) return;
  std::fwrite(buffer_.data(), 1, buffer_.size(), file_);
  buffer_.clear();
  std::fflush(file_);
}

Result<uint64_t> DeadLetterWriter::Sync() {
  if (file_ == nullptr) return uint64_t{0};
  std::fwrite(buffer_.data(), 1, buffer_.size(), file_);
  buffer_.clear();
  if (std::fflush(file_) != 0 || fsync(fileno(file_)) != 0) {
    return Status::IoError(std::string("cannot write dead letters: ") + std::strerror(errno));
  }
  const long size = std::ftell(file_);
  if (size < 0) return Status::IoError(std::string("cannot size dead-letter file: ") + std::strerror(errno));
  return static_cast<uint64_t>(size);
}

void DeadLetterWriter::Write(uint64_t line, std::string_view reason, std::string_view raw) {
  WriteLetter(",\"line\":" + std::to_string(line), reason, raw);
}

void DeadLetterWriter::WriteAt(int64_t partition, int64_t offset, std::string_view reason, std::string_view raw) {
  WriteLetter(",\"partition\":" + std::to_string(partition) + ",\"offset\":" + std::to_string(offset), reason, raw);
}

void DeadLetterWriter::WriteLetter(std::string_view place, std::string_view reason, std::string_view raw) {
  ++written_;
  if (file_ == nullptr) return;
  buffer_.append("{\"source\":\"");
  AppendJsonEscaped(source_name_, &buffer_);
  buffer_.append("\"");
  buffer_.append(place);
  buffer_.append(",\"reason\":\"");
  AppendJsonEscaped(reason, &buffer_);
  buffer_.append("\",\"raw\":\"");
  AppendJsonEscaped(raw, &buffer_);
  buffer_.append("\"}\n");
  if (buffer_.size() > (1 << 20)) {
    std::fwrite(buffer_.data(), 1, buffer_.size(), file_);
    buffer_.clear();
  }
}

Status DeadLetterWriter::Close() {
  if (file_ == nullptr) return Status::Ok();
  std::fwrite(buffer_.data(), 1, buffer_.size(), file_);
  buffer_.clear();
  const bool failed = std::fclose(file_) != 0;
  file_ = nullptr;
  if (failed) return Status::IoError(std::string("cannot write dead-letter file: ") + std::strerror(errno));
  return Status::Ok();
}

}  // namespace freshet

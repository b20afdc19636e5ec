// Bytes: the binary encoding of Freshet's saved state (checkpoints, online-store values).
//
// ByteWriter appends to a std::string; ByteReader reads the same encoding back and is safe on hostile
// input: every read is bounds-checked, returns false on truncation or a malformed value, and leaves a
// sticky failed() flag with the byte offset where decoding stopped. Nothing is ever read out of bounds.
//
// Encodings (all little-endian, independent of the host):
//   U8, U32, U64, I64, Double   fixed width; a double is its IEEE-754 bits (NaN payloads and -0 kept)
//   Varint                      unsigned LEB128, at most 10 bytes; a value above 2^64 - 1 is rejected
//   SignedVarint                zigzag, then Varint (small negative numbers stay short)
//   Bytes / String              Varint length, then the bytes
//
//   ByteWriter w;
//   w.PutVarint(3);
//   w.PutString("u1");
//   ByteReader r(w.bytes());
//   uint64_t n; std::string_view name;
//   if (!r.ReadVarint(&n) || !r.ReadString(&name)) return Status::Invalid(...);
//
// Not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>

namespace freshet {

// Appends encoded values to a string: its own buffer, or a caller's string given at construction.
class ByteWriter {
 public:
  ByteWriter() : out_(&own_) {}
  // Appends to *out, which must outlive the writer.
  explicit ByteWriter(std::string* out) : out_(out) {}
  ByteWriter(const ByteWriter&) = delete;
  ByteWriter& operator=(const ByteWriter&) = delete;

  void PutU8(uint8_t v) { out_->push_back(static_cast<char>(v)); }
  void PutU32(uint32_t v) { PutFixed(v, 4); }
  void PutU64(uint64_t v) { PutFixed(v, 8); }
  void PutI64(int64_t v) { PutFixed(static_cast<uint64_t>(v), 8); }
  void PutDouble(double v) {
    uint64_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    PutFixed(bits, 8);
  }
  void PutBool(bool v) { PutU8(v ? 1 : 0); }
  void PutVarint(uint64_t v) {
    char buffer[10];
    size_t n = 0;
    while (v >= 0x80) {
      buffer[n++] = static_cast<char>((v & 0x7F) | 0x80);
      v >>= 7;
    }
    buffer[n++] = static_cast<char>(v);
    out_->append(buffer, n);
  }
  void PutSignedVarint(int64_t v) {
    PutVarint((static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63));
  }
  // Length-prefixed bytes.
  void PutBytes(std::string_view bytes) {
    PutVarint(bytes.size());
    out_->append(bytes);
  }
  void PutString(std::string_view text) { PutBytes(text); }
  // Bytes with no length prefix (the reader must know how many to expect).
  void PutRaw(std::string_view bytes) { out_->append(bytes); }
  void PutRaw(const void* data, size_t size) { out_->append(static_cast<const char*>(data), size); }

  // Overwrites 8 bytes at `offset` (already written) with `v`, e.g. a length known only at the end.
  void PatchU64(size_t offset, uint64_t v) {
    for (int k = 0; k < 8; ++k) (*out_)[offset + k] = static_cast<char>(v >> (8 * k));
  }

  size_t size() const { return out_->size(); }
  void Reserve(size_t bytes) { out_->reserve(bytes); }
  const std::string& bytes() const { return *out_; }
  // Moves the written bytes out; the writer is then empty.
  std::string Take() {
    std::string taken = std::move(*out_);
    out_->clear();
    return taken;
  }

 private:
  void PutFixed(uint64_t v, int width) {
    char buffer[8];
    for (int k = 0; k < width; ++k) buffer[k] = static_cast<char>(v >> (8 * k));
    out_->append(buffer, static_cast<size_t>(width));
  }

  std::string own_;
  std::string* out_;
};

// Reads what ByteWriter wrote, from a view that must outlive the reader. Every Read* returns false and
// sets failed() when the input is truncated or malformed; once failed, every later read fails too, so a
// decoder may check once at the end. Outputs are left unchanged on failure.
class ByteReader {
 public:
  explicit ByteReader(std::string_view data) : data_(data) {}

  bool ReadU8(uint8_t* v) {
    if (!Need(1)) return false;
    *v = static_cast<uint8_t>(data_[pos_++]);
    return true;
  }
  bool ReadU32(uint32_t* v) {
    uint64_t x;
    if (!ReadFixed(4, &x)) return false;
    *v = static_cast<uint32_t>(x);
    return true;
  }
  bool ReadU64(uint64_t* v) { return ReadFixed(8, v); }
  bool ReadI64(int64_t* v) {
    uint64_t x;
    if (!ReadFixed(8, &x)) return false;
    *v = static_cast<int64_t>(x);
    return true;
  }
  bool ReadDouble(double* v) {
    uint64_t bits;
    if (!ReadFixed(8, &bits)) return false;
    std::memcpy(v, &bits, sizeof(bits));
    return true;
  }
  // Accepts only 0 and 1.
  bool ReadBool(bool* v) {
    uint8_t x;
    if (!ReadU8(&x)) return false;
    if (x > 1) return Fail();
    *v = x == 1;
    return true;
  }
  bool ReadVarint(uint64_t* v);
  bool ReadSignedVarint(int64_t* v) {
    uint64_t x;
    if (!ReadVarint(&x)) return false;
    *v = static_cast<int64_t>((x >> 1) ^ (~(x & 1) + 1));
    return true;
  }
  // A Varint that must fit 32 bits.
  bool ReadVarint32(uint32_t* v) {
    uint64_t x;
    if (!ReadVarint(&x)) return false;
    if (x > UINT32_MAX) return Fail();
    *v = static_cast<uint32_t>(x);
    return true;
  }
  // A Varint element count, rejected when the remaining input cannot hold that many elements of at
  // least `min_element_bytes` each (so hostile counts never cause huge allocations).
  bool ReadCount(uint64_t* n, size_t min_element_bytes = 1) {
    uint64_t x;
    if (!ReadVarint(&x)) return false;
    if (min_element_bytes > 0 && x > remaining() / min_element_bytes) return Fail();
    *n = x;
    return true;
  }
  // Length-prefixed bytes; the view points into the reader's input.
  bool ReadBytes(std::string_view* bytes) {
    uint64_t n;
    if (!ReadVarint(&n)) return false;
    return ReadRaw(n, bytes);
  }
  bool ReadString(std::string_view* text) { return ReadBytes(text); }
  // Exactly `size` bytes with no prefix.
  bool ReadRaw(uint64_t size, std::string_view* bytes) {
    if (!Need(size)) return false;
    *bytes = data_.substr(pos_, static_cast<size_t>(size));
    pos_ += static_cast<size_t>(size);
    return true;
  }

  // Marks the input malformed at the current offset (for checks a decoder makes on decoded values).
  bool Fail() {
    if (!failed_) {
      failed_ = true;
      failed_at_ = pos_;
    }
    return false;
  }

  bool failed() const { return failed_; }
  // Offset where decoding failed: the first byte that could not be read or made the value invalid.
  size_t failed_at() const { return failed_at_; }
  size_t offset() const { return pos_; }
  size_t remaining() const { return data_.size() - pos_; }
  bool at_end() const { return pos_ == data_.size(); }

 private:
  bool Need(uint64_t n) {
    if (failed_) return false;
    if (n > data_.size() - pos_) {
      failed_ = true;
      failed_at_ = data_.size();  // Truncated: the input ended where more was needed.
      return false;
    }
    return true;
  }
  bool ReadFixed(int width, uint64_t* v) {
    if (!Need(static_cast<uint64_t>(width))) return false;
    uint64_t x = 0;
    for (int k = 0; k < width; ++k) x |= static_cast<uint64_t>(static_cast<uint8_t>(data_[pos_ + k])) << (8 * k);
    pos_ += static_cast<size_t>(width);
    *v = x;
    return true;
  }

  std::string_view data_;
  size_t pos_ = 0;
  bool failed_ = false;
  size_t failed_at_ = 0;
};

inline bool ByteReader::ReadVarint(uint64_t* v) {
  if (failed_) return false;
  uint64_t x = 0;
  size_t p = pos_;
  for (int shift = 0; shift < 70; shift += 7) {
    if (p >= data_.size()) {
      failed_ = true;
      failed_at_ = data_.size();
      return false;
    }
    const uint8_t byte = static_cast<uint8_t>(data_[p++]);
    // The tenth byte may carry only the top bit of a 64-bit value.
    if (shift == 63 && byte > 1) {
      pos_ = p - 1;
      return Fail();
    }
    x |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if ((byte & 0x80) == 0) {
      pos_ = p;
      *v = x;
      return true;
    }
  }
  return Fail();  // Unreachable: the tenth byte either ends the varint or fails above.
}

// CRC-32C (Castagnoli, the polynomial of iSCSI, ext4 and RocksDB), computed in software by slicing-by-8.
// Crc32c(a + b) == Crc32c(b, Crc32c(a)), so a long input can be checksummed in pieces.
// Crc32c("123456789") == 0xE3069283.
uint32_t Crc32c(std::string_view data, uint32_t crc = 0);

}  // namespace freshet

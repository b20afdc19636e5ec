// Tests for ByteWriter / ByteReader (round trips, exact encodings, truncation at every byte, hostile input)
// and CRC-32C (published check values).
#include "common/bytes.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace freshet {
namespace {

std::string Hex(const std::string& bytes) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

TEST(BytesTest, FixedWidthValuesAreLittleEndian) {
  ByteWriter w;
  w.PutU8(0xAB);
  w.PutU32(0x01020304u);
  w.PutU64(0x1122334455667788ull);
  w.PutI64(-2);
  w.PutDouble(1.0);  // 0x3FF0000000000000.
  w.PutBool(true);
  EXPECT_EQ(Hex(w.bytes()),
            "ab"
            "04030201"
            "8877665544332211"
            "feffffffffffffff"
            "000000000000f03f"
            "01");
}

TEST(BytesTest, VarintEncodingsMatchLeb128) {
  struct Case {
    uint64_t value;
    const char* hex;
  };
  for (const Case& c : {Case{0, "00"}, Case{1, "01"}, Case{127, "7f"}, Case{128, "8001"}, Case{300, "ac02"},
                        Case{16384, "808001"}, Case{UINT64_MAX, "ffffffffffffffffff01"}}) {
    ByteWriter w;
    w.PutVarint(c.value);
    EXPECT_EQ(Hex(w.bytes()), c.hex) << c.value;
  }
  // Zigzag: 0 -> 0, -1 -> 1, 1 -> 2, -2 -> 3, INT64_MIN -> UINT64_MAX.
  struct SignedCase {
    int64_t value;
    const char* hex;
  };
  for (const SignedCase& c : {SignedCase{0, "00"}, SignedCase{-1, "01"}, SignedCase{1, "02"}, SignedCase{-2, "03"},
                              SignedCase{-64, "7f"}, SignedCase{64, "8001"},
                              SignedCase{std::numeric_limits<int64_t>::min(), "ffffffffffffffffff01"}}) {
    ByteWriter w;
    w.PutSignedVarint(c.value);
    EXPECT_EQ(Hex(w.bytes()), c.hex) << c.value;
  }
}

// Writes a fixed mix of every kind of value; Check reads it back and says whether all matched.
void WriteSample(ByteWriter& w) {
  w.PutU8(7);
  w.PutU32(0xDEADBEEFu);
  w.PutU64(UINT64_MAX);
  w.PutI64(std::numeric_limits<int64_t>::min());
  w.PutDouble(-0.0);
  w.PutDouble(std::numeric_limits<double>::quiet_NaN());
  w.PutBool(false);
  w.PutVarint(0);
  w.PutVarint(UINT64_MAX);
  w.PutSignedVarint(std::numeric_limits<int64_t>::max());
  w.PutSignedVarint(-123456789);
  w.PutString("");
  w.PutString(std::string("h\xC3\xA9llo\0x", 8));  // Any bytes, NUL included.
  w.PutBytes(std::string(300, 'z'));
}

bool ReadSample(ByteReader& r) {
  uint8_t u8;
  uint32_t u32;
  uint64_t u64, v0, vmax;
  int64_t i64, s1, s2;
  double zero, nan;
  bool b;
  std::string_view empty, hello, zs;
  if (!r.ReadU8(&u8) || !r.ReadU32(&u32) || !r.ReadU64(&u64) || !r.ReadI64(&i64) || !r.ReadDouble(&zero) ||
      !r.ReadDouble(&nan) || !r.ReadBool(&b) || !r.ReadVarint(&v0) || !r.ReadVarint(&vmax) ||
      !r.ReadSignedVarint(&s1) || !r.ReadSignedVarint(&s2) || !r.ReadString(&empty) || !r.ReadString(&hello) ||
      !r.ReadBytes(&zs)) {
    return false;
  }
  EXPECT_EQ(u8, 7);
  EXPECT_EQ(u32, 0xDEADBEEFu);
  EXPECT_EQ(u64, UINT64_MAX);
  EXPECT_EQ(i64, std::numeric_limits<int64_t>::min());
  EXPECT_EQ(zero, 0.0);
  EXPECT_TRUE(std::signbit(zero));
  EXPECT_TRUE(std::isnan(nan));
  EXPECT_FALSE(b);
  EXPECT_EQ(v0, 0u);
  EXPECT_EQ(vmax, UINT64_MAX);
  EXPECT_EQ(s1, std::numeric_limits<int64_t>::max());
  EXPECT_EQ(s2, -123456789);
  EXPECT_EQ(empty, "");
  EXPECT_EQ(hello, std::string("h\xC3\xA9llo\0x", 8));
  EXPECT_EQ(zs, std::string(300, 'z'));
  return true;
}

TEST(BytesTest, RoundTripOfEveryKind) {
  ByteWriter w;
  WriteSample(w);
  ByteReader r(w.bytes());
  ASSERT_TRUE(ReadSample(r));
  EXPECT_TRUE(r.at_end());
  EXPECT_FALSE(r.failed());
}

TEST(BytesTest, TruncationAtEveryByteFailsCleanly) {
  ByteWriter w;
  WriteSample(w);
  const std::string& full = w.bytes();
  for (size_t cut = 0; cut < full.size(); ++cut) {
    // A copy of exactly `cut` bytes, so that reading past it would be caught by sanitizers.
    const std::string prefix = full.substr(0, cut);
    ByteReader r(prefix);
    EXPECT_FALSE(ReadSample(r)) << "cut at " << cut;
    EXPECT_TRUE(r.failed()) << "cut at " << cut;
    EXPECT_EQ(r.failed_at(), cut) << "truncation is reported where the input ends";
    uint8_t x;
    EXPECT_FALSE(r.ReadU8(&x)) << "failure is sticky";
  }
}

TEST(BytesTest, HostileLengthsAndVarintsAreRejected) {
  {
    ByteWriter w;
    w.PutVarint(uint64_t{1} << 62);  // A length far beyond the input.
    w.PutRaw("abc");
    ByteReader r(w.bytes());
    std::string_view s;
    EXPECT_FALSE(r.ReadBytes(&s));
    EXPECT_TRUE(r.failed());
  }
  {
    // Eleven continuation bytes: longer than any 64-bit varint.
    const std::string overlong(11, '\x80');
    ByteReader r(overlong);
    uint64_t v;
    EXPECT_FALSE(r.ReadVarint(&v));
    EXPECT_TRUE(r.failed());
  }
  {
    // Ten bytes whose last carries more than the 64th bit: overflow.
    const std::string overflow = std::string(9, '\xff') + '\x02';
    ByteReader r(overflow);
    uint64_t v;
    EXPECT_FALSE(r.ReadVarint(&v));
    EXPECT_EQ(r.failed_at(), 9u);
  }
  {
    ByteWriter w;
    w.PutVarint(uint64_t{1} << 32);
    ByteReader r(w.bytes());
    uint32_t v;
    EXPECT_FALSE(r.ReadVarint32(&v));
  }
  {
    ByteWriter w;
    w.PutVarint(5);  // Five elements of at least 2 bytes need 10 bytes; only 9 follow.
    w.PutRaw(std::string(9, 'x'));
    ByteReader r(w.bytes());
    uint64_t n = 77;
    EXPECT_FALSE(r.ReadCount(&n, 2));
    EXPECT_EQ(n, 77u) << "outputs are untouched on failure";
    ByteReader r2(w.bytes());
    EXPECT_TRUE(r2.ReadCount(&n, 1));
    EXPECT_EQ(n, 5u);
  }
  {
    const std::string two("\x02", 1);
    ByteReader r(two);
    bool b;
    EXPECT_FALSE(r.ReadBool(&b)) << "a boolean is 0 or 1";
  }
}

TEST(BytesTest, RandomBytesNeverCrashTheReader) {
  std::mt19937_64 rng(5);
  for (int round = 0; round < 2000; ++round) {
    std::string bytes(rng() % 40, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    ByteReader r(bytes);
    for (int step = 0; step < 20 && !r.failed(); ++step) {
      std::string_view s;
      uint64_t v;
      int64_t i;
      switch (rng() % 4) {
        case 0: (void)r.ReadBytes(&s); break;
        case 1: (void)r.ReadVarint(&v); break;
        case 2: (void)r.ReadSignedVarint(&i); break;
        default: (void)r.ReadU64(&v); break;
      }
      ASSERT_LE(r.offset(), bytes.size());
    }
  }
}

TEST(BytesTest, WriterAppendsToACallersString) {
  std::string out = "prefix:";
  {
    ByteWriter w(&out);
    w.PutString("ab");
    w.PutU64(0);
    w.PatchU64(out.size() - 8, 0x0102030405060708ull);
  }
  EXPECT_EQ(out.substr(0, 7), "prefix:");
  EXPECT_EQ(Hex(out.substr(7)), "02616208070605040302" "01");
  ByteWriter own;
  own.PutU8(1);
  EXPECT_EQ(own.Take(), std::string("\x01", 1));
  EXPECT_EQ(own.size(), 0u);
}

TEST(BytesTest, Crc32cMatchesPublishedCheckValues) {
  // The standard check value, and the test vectors of RFC 3720 (iSCSI), appendix B.4.
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c(""), 0u);
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  std::string ascending(32, '\0'), descending(32, '\0');
  for (int k = 0; k < 32; ++k) {
    ascending[k] = static_cast<char>(k);
    descending[k] = static_cast<char>(31 - k);
  }
  EXPECT_EQ(Crc32c(ascending), 0x46DD794Eu);
  EXPECT_EQ(Crc32c(descending), 0x113FDB5Cu);
}

TEST(BytesTest, Crc32cExtendsAcrossPiecesAndSeesEveryBit) {
  std::mt19937_64 rng(9);
  std::string data(1000, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  const uint32_t whole = Crc32c(data);
  for (size_t cut : {0, 1, 7, 8, 9, 500, 999, 1000}) {
    EXPECT_EQ(Crc32c(data.substr(cut), Crc32c(data.substr(0, cut))), whole) << cut;
  }
  // The slicing path (8 bytes at a time) agrees with a bit-at-a-time definition.
  uint32_t bitwise = 0xFFFFFFFFu;
  for (unsigned char c : data) {
    bitwise ^= c;
    for (int k = 0; k < 8; ++k) bitwise = (bitwise >> 1) ^ ((bitwise & 1) ? 0x82F63B78u : 0);
  }
  EXPECT_EQ(whole, ~bitwise);
  for (size_t bit = 0; bit < data.size() * 8; bit += 37) {
    std::string flipped = data;
    flipped[bit / 8] = static_cast<char>(flipped[bit / 8] ^ (1 << (bit % 8)));
    EXPECT_NE(Crc32c(flipped), whole) << bit;
  }
}

}  // namespace
}  // namespace freshet

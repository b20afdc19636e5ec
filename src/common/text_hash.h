// TextHash and TextEq: the hash and equality of the engine's hot string maps (entity names, interned values),
// inline and cheap for the short keys they hold (ids such as "u668139", categories), with heterogeneous lookup,
// so that a std::string key is found by a std::string_view without building a string.
//
// Why not absl::Hash: in Debian's Abseil build it is an out-of-line call per key (absl::string_view is not
// std::string_view there, and std::string_view falls back to std::hash); the engine hashes two or three keys per
// event (the entity twice: prefetch and lookup; a distinct-count value), which cost about 6% of the core rate.
// The mix is wyhash's (a 64x64->128-bit multiply folded to 64 bits), with a per-process seed taken from an
// address (randomized by ASLR), as absl's is, so that keys chosen to collide in one process do not in another.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace freshet {
namespace text_hash_internal {

inline uint64_t Load64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline uint64_t Load32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
// The 128-bit product of a and b, folded: every bit of the result depends on every bit of both.
inline uint64_t Mix(uint64_t a, uint64_t b) {
  const unsigned __int128 product = static_cast<unsigned __int128>(a) * b;
  return static_cast<uint64_t>(product) ^ static_cast<uint64_t>(product >> 64);
}
inline constexpr uint64_t kOdd0 = 0xa0761d6478bd642fULL;  // wyhash's constants.
inline constexpr uint64_t kOdd1 = 0xe7037ed1a0b428dbULL;
inline constexpr uint64_t kOdd2 = 0x8ebc6af09c88c6e3ULL;
inline const char kSeedAnchor = 0;
inline uint64_t Seed() { return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(&kSeedAnchor)); }

}  // namespace text_hash_internal

inline size_t HashText(std::string_view text) {
  using text_hash_internal::kOdd0, text_hash_internal::kOdd1, text_hash_internal::kOdd2, text_hash_internal::Load32,
      text_hash_internal::Load64, text_hash_internal::Mix;
  const char* p = text.data();
  const size_t n = text.size();
  uint64_t seed = text_hash_internal::Seed() ^ kOdd0;
  uint64_t a = 0, b = 0;
  // Two words that, with the length, determine the text: overlapping loads from both ends up to 16 bytes.
  if (n <= 16) {
    if (n >= 8) {
      a = Load64(p);
      b = Load64(p + n - 8);
    } else if (n >= 4) {
      a = Load32(p);
      b = Load32(p + n - 4);
    } else if (n > 0) {
      a = (uint64_t{static_cast<unsigned char>(p[0])} << 16) | (uint64_t{static_cast<unsigned char>(p[n >> 1])} << 8) |
          static_cast<unsigned char>(p[n - 1]);
    }
  } else {
    size_t left = n;
    for (; left > 16; left -= 16, p += 16) seed = Mix(Load64(p) ^ seed ^ kOdd1, Load64(p + 8) ^ seed);
    a = Load64(p + left - 16);
    b = Load64(p + left - 8);
  }
  // Both words meet the seed before they are multiplied: a word that zeroes its factor (and so makes every value of
  // the other word collide) depends on the seed, which differs per process.
  return static_cast<size_t>(Mix(kOdd1 ^ n, Mix(a ^ seed ^ kOdd1, b ^ seed ^ kOdd2)));
}

// Equality without a call to memcmp for texts up to 16 bytes (the common keys).
inline bool SameText(std::string_view x, std::string_view y) {
  using text_hash_internal::Load32, text_hash_internal::Load64;
  const size_t n = x.size();
  if (n != y.size()) return false;
  const char* p = x.data();
  const char* q = y.data();
  if (n >= 8 && n <= 16) return ((Load64(p) ^ Load64(q)) | (Load64(p + n - 8) ^ Load64(q + n - 8))) == 0;
  if (n >= 4 && n < 8) return ((Load32(p) ^ Load32(q)) | (Load32(p + n - 4) ^ Load32(q + n - 4))) == 0;
  // 1 to 3 bytes: the first, middle and last cover them all (short category values such as 'vip' called memcmp:
  // perf put a derived field's comparison at a third of its cost in the call).
  if (n > 0 && n < 4) return p[0] == q[0] && p[n / 2] == q[n / 2] && p[n - 1] == q[n - 1];
  return n == 0 || std::memcmp(p, q, n) == 0;
}

struct TextHash {
  using is_transparent = void;
  size_t operator()(std::string_view text) const {
    size_t hash = HashText(text);
    // An empty volatile asm, which emits nothing: without it GCC 12 at -O2 -DNDEBUG finds absl's map.prefetch(key)
    // free of side effects once the hash is inline (__builtin_prefetch counts as none) and deletes the whole call,
    // so the engine's entity lookups miss the cache again (measured: FindOrAddEntity 4x its samples).
    asm volatile("" : "+r"(hash));
    return hash;
  }
};

struct TextEq {
  using is_transparent = void;
  bool operator()(std::string_view x, std::string_view y) const { return SameText(x, y); }
};

}  // namespace freshet

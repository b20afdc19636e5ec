// Composite entity keys (spec `entity: [user_id, merchant_id]`) as one string.
//
// The engine, the stores and the offline tables key everything by one entity string. A composite key is
// encoded into one so that they stay untouched: the parts joined by the unit separator 0x1F, with every 0x1F
// and 0x1E (the escape) inside a part preceded by 0x1E. The encoding is injective (two different part lists never
// give the same string, whatever bytes the parts hold), so Redis keys, checkpoints and tables built from it are
// unambiguous too. A key of one field is not encoded at all: it is its value, as before.
//
//   EncodeEntityKey({"u1", "m7"})       == "u1\x1Fm7"
//   EncodeEntityKey({"a\x1Fb", "c"})    == "a\x1E\x1Fb\x1Fc"
//   DecodeEntityKey("u1\x1Fm7", &parts) -> parts == {"u1", "m7"}
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace freshet {

// The most fields a composite key may have.
inline constexpr size_t kMaxKeyFields = 8;

inline constexpr char kKeySeparator = '\x1F';
inline constexpr char kKeyEscape = '\x1E';

// Appends the encoding of `parts` (two or more) to *out.
void AppendEntityKey(std::span<const std::string_view> parts, std::string* out);

// The encoding of `parts`, a new string.
std::string EncodeEntityKey(std::span<const std::string_view> parts);

// Splits an encoded key into its parts (replacing *parts); false when `key` is not an encoding (an escape at
// its end).
bool DecodeEntityKey(std::string_view key, std::vector<std::string>* parts);

// The parts joined by '/' for people (messages, logs): "u1/m7". Not unambiguous; never a key.
std::string EntityKeyDisplay(std::string_view key, size_t fields);

}  // namespace freshet

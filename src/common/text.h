// Small text helpers for protocol parsing and error messages (ASCII only: HTTP header names and tokens).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace freshet {

inline char AsciiLower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

// `text` with ASCII letters lowercased.
inline std::string AsciiLowered(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = AsciiLower(c);
  return out;
}

// True when `a` and `b` are equal ignoring the case of ASCII letters.
inline bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t k = 0; k < a.size(); ++k) {
    if (AsciiLower(a[k]) != AsciiLower(b[k])) return false;
  }
  return true;
}

// `text` without leading and trailing spaces and tabs.
inline std::string_view TrimBlanks(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

// `text` in single quotes for an error message, cut after its first 100 bytes ("...") so that a huge
// input cannot make a huge message.
inline std::string QuotedForMessage(std::string_view text) {
  constexpr size_t kMaxShown = 100;
  std::string out = "'";
  out.append(text.substr(0, kMaxShown));
  if (text.size() > kMaxShown) out.append("...");
  out.push_back('\'');
  return out;
}

// The Levenshtein distance between `a` and `b` (insertions, deletions and substitutions of one byte each),
// ignoring the case of ASCII letters.
size_t EditDistance(std::string_view a, std::string_view b);

// The candidate closest to `word` by EditDistance when it is close enough to be a likely typo of it: at most
// a third of the candidate's length apart (at least 1, at most 3). The first of equally close candidates wins;
// nullopt when none is close. For "did you mean ...?" in messages about unknown names. Candidates whose
// length differs from the word's by more than that are skipped without computing the distance, so the cost
// is bounded by the candidates' lengths, however long the word.
std::optional<std::string_view> ClosestMatch(std::string_view word, const std::vector<std::string_view>& candidates);

}  // namespace freshet

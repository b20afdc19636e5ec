// TableSet: the reference tables of a spec (`tables:`) as the event path joins them (`joins:`).
//
// Each table maps a key to its versions, ordered by valid_from. A version arrives at a point of the event stream
// (Add, between two events) and from then on an event at time t whose join field holds the key
// sees the version with the greatest valid_from <= t among those that arrived (a table without `valid_from`: the
// latest that arrived). No such version: the event's joined fields stay missing. This is the time rule of the
// README's Semantics; tests/reference.py implements it by brute force.
//
// Only the columns the spec reads (FieldRegistry::joined) are kept per version, so the lookup per event and join
// is one hash probe and a short scan of that key's versions.
//
// Not thread-safe: Add and Load under the caller's exclusive lock; Fill (const) from any number of threads between
// them. Strings that Fill puts into slots point into the set and are valid until the next Add or Load.
#pragma once

#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/bytes.h"
#include "common/status.h"
#include "common/value.h"
#include "spec/spec.h"

namespace freshet {

// valid_from of a version of a table without `valid_from`: before every event.
inline constexpr int64_t kAlwaysValidMs = std::numeric_limits<int64_t>::min();

// The `json` of a deletion of its key (a Kafka tombstone): JSON null, never a row (rows are JSON objects). The
// table history stores it as such (row "null", valid_from null).
inline constexpr std::string_view kDeletedRow = "null";

// One row of a reference table, as received: its key, valid_from, and the row as a JSON object text (or
// kDeletedRow).
struct TableRow {
  std::string key;
  int64_t valid_from_ms = kAlwaysValidMs;
  std::string json;
  bool deleted() const { return json == kDeletedRow; }
};

// Reads a row (one JSON object) of `table`: its key and valid_from. On failure says which field is wrong and
// how to fix it (the caller adds file:line). `key`: the key given beside the row (a Kafka message key); the row's
// key field may then be absent, and must name the same key when present. A row with "_deleted": true (or the text
// "true", a CSV cell) deletes its key: a TableRow with kDeletedRow, whatever its other fields.
Result<TableRow> ParseTableRow(const TableSpec& table, std::string_view json,
                               std::optional<std::string_view> key = std::nullopt);

class TableSet {
 public:
  explicit TableSet(const Spec& spec);
  ~TableSet();
  TableSet(const TableSet&) = delete;
  TableSet& operator=(const TableSet&) = delete;

  bool empty() const;

  // Makes room for `rows` more keys of table `table` before they are added (the rows of a file, a batch of a
  // topic): the table is then sized once, not at every doubling. Rows of keys already held waste some room.
  void Reserve(size_t table, size_t rows);

  // Adds a version of table `table` arriving now, before the next event the caller parses. A version with the
  // valid_from of one the key already has replaces it (the later arrival wins). Returns true when the version is
  // late: it has a valid_from and the stream already accepted an event at or after it (`newest_event_ms`), which
  // saw an older version (or none). A deletion (row.deleted()) drops every version of its key: events from here
  // on see none until a new one arrives; it is never late.
  bool Add(size_t table, const TableRow& row, int64_t newest_event_ms);

  // Starts fetching into the cache what Fill will read for the event in raw JSON `line` (a large table's lookup
  // misses the cache). Called some events ahead of the line's parse (PrefetchAhead), so that the memory
  // access overlaps the work on the events before it: one parse is shorter than the miss.
  void Prefetch(std::string_view line) const;

  // Prefetch for several lines at once: each line's keys are found and hashed as it is added, and Issue then
  // prefetches all their slots back to back. Why: a prefetch whose page is not in the TLB holds up the core until
  // the page walk ends (on this VM a walk through two levels of page tables, guest and host, outlasts the
  // core's reorder window), so prefetches issued one per event made every event wait for one walk; issued
  // together, their walks overlap. One per thread.
  class PrefetchBatch {
   public:
    explicit PrefetchBatch(const TableSet& tables) : tables_(tables) {}
    void Add(std::string_view line);
    void Issue();

   private:
    const TableSet& tables_;
    std::vector<std::pair<size_t, uint64_t>> pending_;  // (table, key hash)
  };

  // Fills every joined slot of `slots` (parsed by EventParser, join fields set) for an event at `time_ms`.
  void Fill(std::vector<Value>& slots, int64_t time_ms) const;

  // Drops the versions that no event at `horizon_ms` or later can see: for each key, those older than its
  // version with the greatest valid_from <= horizon_ms. With horizon_ms the earliest time a future event can be
  // accepted at (the low watermark, lateness included) the values events see stay exact; the offline history keeps
  // every version. Returns how many were dropped. min() drops nothing.
  size_t Prune(int64_t horizon_ms);

  // Versions held in memory, and keys (with a version), of table `table`.
  size_t versions(size_t table) const;
  size_t keys(size_t table) const;
  size_t MemoryBytes() const;

  // Counts the changes to what Save writes (Add, Prune that dropped something, Load, Reserve): equal generations,
  // equal bytes, so that a checkpoint can reuse the bytes of an earlier one while the tables did not change.
  uint64_t generation() const;

  // The held versions (their joined columns), for a checkpoint; Load expects a fresh set of the same spec.
  void Save(ByteWriter& out) const;
  Status Load(ByteReader& in);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

namespace table_internal {
// The key text of field `quoted_name` ("name" with its quotes) in a raw JSON line, found by text search: a
// string without escapes or an integer's digits, what the parsed value's key text would be. A guess (the name could
// appear inside a string value); only Prefetch uses it, so a wrong guess costs a wasted prefetch, never a value.
// `hint`: where the name was found in the line before (events of one producer keep their field order), tried
// first: one comparison instead of a search through the line's quotes (the search was ~10% of a join's cost).
std::optional<std::string_view> RawKey(std::string_view line, std::string_view quoted_name,
                                       std::atomic<size_t>& hint);
}  // namespace table_internal

// How many events ahead of the one being parsed their table slots are prefetched: between kTablePrefetchAhead and
// twice that, in batches of about kTablePrefetchAhead lines (TableSet::PrefetchBatch). At the start of the event's
// own parse the prefetch arrived late (a DRAM miss plus a page walk outlast the parse of a ~90-byte line); a few
// events ahead it has their parses to arrive, and a batch's misses in flight stay near what the core tracks (its
// line fill buffers).
inline constexpr size_t kTablePrefetchAhead = 8;

// Before line k of lines [begin, end) is processed, in order: calls prefetch_line(j) for the lines whose table
// slots are due now, a batch at every kTablePrefetchAhead-th line: at k == begin the lines up to begin + 2 *
// kTablePrefetchAhead, then at k = begin + n * kTablePrefetchAhead the lines from k + kTablePrefetchAhead to k + 2 *
// kTablePrefetchAhead. So each line is asked for once, kTablePrefetchAhead to 2 * kTablePrefetchAhead lines before
// it (the first batch: up to that). prefetch_line adds line j's raw JSON to a TableSet::PrefetchBatch, which the
// caller issues after this returns. A prefetch is only a hint: a version added between it and the line's parse
// changes nothing the line sees.
template <typename PrefetchLine>
void PrefetchAhead(size_t begin, size_t k, size_t end, PrefetchLine prefetch_line) {
  if (k != begin && (k - begin) % kTablePrefetchAhead != 0) return;
  for (size_t j = k == begin ? k : k + kTablePrefetchAhead; j < k + 2 * kTablePrefetchAhead && j < end; ++j) {
    prefetch_line(j);
  }
}

}  // namespace freshet

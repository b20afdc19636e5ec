// Windows: which events a feature's value as of time t covers, and the per-entity state that keeps
// just enough of them. Each window is a template over an aggregation (aggregate/aggregations.h) with
//   State                                  per-entity state; default-constructed = no events
//   Add(State&, Input, time, seq, low, ctx)  fold in one event; `low` is the earliest time any future
//                                          event can have (lets windows drop what can never be read)
//   Query(const State&, t, ctx) -> Value   the feature value as of t
//   MemoryBytes(const State&)
//   Serialize(const State&, ByteWriter&, ctx)       checkpoints and the online store: everything the
//   Deserialize(State&, ByteReader&, ctx) -> bool    state holds, so that a loaded state continues exactly
//                                                   as the saved one would; false on malformed input
//
// Query is exact for every t at or after the newest event the state holds. Windows whose kAsOfExact is
// true (continuous sliding windows, which keep the events themselves) are also exact for every t at or
// after `low`, given the events in any order. The others (lifetime, tiled, session) support exact answers
// before their newest event through rewinding, for a caller that adds events in (time, input order) order
// and keeps the recent ones (FeatureEngine, engine/feature_engine.cc):
//   Mark                                   what an event's Add is about to change: its tile or session before
//                                          it, with the aggregate as an AggMarks mark (aggregations.h)
//   MarkBefore(const State&, time, input) -> Mark   just before Add, in time order
//   Rewind(State&, span<const E*> from)    back to the state before *from[0]; `from` are the recent events
//                                          from there on, each with `.time`, `.input` and its Mark in
//                                          `.before`, in order
//   QueryAsOf(const State&, t, span<const E*> after, ctx)  the value as of t, where `after` are the recent
//                                          events later than t, in order (every other event is at or before t)
//   InsertEarlier(State&, x, time, seq, span<E*> overtaken, Mark* mark, ctx) -> bool
//                                          for an x that Agg::Commutes (MayCommute, aggregations.h): x comes just before the
//                                          recent events `overtaken` (the newest ones, in order). When x joins
//                                          the partial aggregate they are all in, without changing which tile
//                                          or session any event is in, adds x, updates their marks as if x had
//                                          come first, sets x's mark and returns true (AggMarks::InsertFirst);
//                                          otherwise changes nothing and returns false (the caller rewinds)
//   SerializeMark / DeserializeMark
// Rewinding never needs what a window dropped: with a low watermark `low` (> INT64_MIN), tiles and sessions
// are kept while a query as of any t >= min(newest, low) can read them, and no event before `low` is added.
// Events a window can no longer show for such t are dropped as they expire.
//
// Semantics (the spec reference in README.md is the contract):
//   lifetime                 all events with time <= t
//   sliding size S (continuous)   t - S < time <= t
//   sliding size S, slide H  tiles of H aligned to the epoch: the tile holding t and the S/H - 1 before it
//   tumbling size S          the tile of S holding t
//   session gap G            the run of events, gaps < G, ending at the newest; empty once t - newest >= G
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <vector>

#include "aggregate/aggregations.h"
#include "common/time.h"

namespace freshet {

template <typename Agg>
class LifetimeWindow {
 public:
  static constexpr bool kAsOfExact = false;
  using State = typename Agg::State;
  void Add(State& s, const typename Agg::Input& x, int64_t time, uint64_t seq, int64_t, const AggContext& c) const {
    Agg::Add(s, x, time, seq, c);
  }
  Value Query(const State& s, int64_t, const AggContext& c) const { return Agg::Finalize(s, c); }
  size_t MemoryBytes(const State& s) const { return Agg::MemoryBytes(s); }
  void Serialize(const State& s, ByteWriter& w, const AggContext& c) const { Agg::Serialize(s, w, c); }
  bool Deserialize(State& s, ByteReader& r, AggContext& c) const { return Agg::Deserialize(s, r, c); }

  // The aggregate before the event.
  struct Mark {
    typename AggMarks<Agg>::Mark agg;
  };
  Mark MarkBefore(const State& s, int64_t, const typename Agg::Input& x) const {
    return Mark{AggMarks<Agg>::Before(s, x)};
  }
  template <typename E>
  void Rewind(State& s, std::span<const E* const> from) const { RewindMarks<Agg>(s, from); }
  template <typename E>
  bool InsertEarlier(State& s, const typename Agg::Input& x, int64_t time, uint64_t seq, std::span<E* const> overtaken,
                     Mark* mark, const AggContext& c) const {
    mark->agg = AggMarks<Agg>::InsertFirst(s, x, time, seq, overtaken, c);
    return true;
  }
  template <typename E>
  Value QueryAsOf(const State& s, int64_t, std::span<const E* const> after, const AggContext& c) const {
    return Agg::Finalize(AggMarks<Agg>::Rewound(s, after), c);
  }
  size_t MarkMemoryBytes(const Mark& m) const { return AggMarks<Agg>::MemoryBytes(m.agg); }
  void SerializeMark(const Mark& m, ByteWriter& w, const AggContext& c) const {
    AggMarks<Agg>::Serialize(m.agg, w, c);
  }
  bool DeserializeMark(Mark& m, ByteReader& r, AggContext& c) const {
    return AggMarks<Agg>::Deserialize(m.agg, r, c);
  }
};

// Hopping/tumbling windows: partial aggregates per tile of `tile_ms`, at most `tiles` of them, sorted.
template <typename Agg>
class TiledWindow {
 public:
  static constexpr bool kAsOfExact = false;
  struct Tile {
    int64_t index;
    typename Agg::State state;
  };
  using State = std::vector<Tile>;

  TiledWindow(int64_t tile_ms, int64_t tiles) : tile_ms_(tile_ms), tiles_(tiles) {}

  void Add(State& s, const typename Agg::Input& x, int64_t time, uint64_t seq, int64_t low, const AggContext& c) const {
    const int64_t index = FloorDiv(time, tile_ms_);
    if (s.empty() || index > s.back().index) {
      s.push_back(Tile{index, typename Agg::State{}});
      Agg::Add(s.back().state, x, time, seq, c);
      // Drop tiles that no query at or after this event, or at or after `low`, can cover.
      const int64_t from = low == std::numeric_limits<int64_t>::min() ? index : std::min(index, FloorDiv(low, tile_ms_));
      const int64_t oldest = from - tiles_ + 1;
      size_t expired = 0;
      while (expired < s.size() && s[expired].index < oldest) ++expired;
      if (expired > 0) s.erase(s.begin(), s.begin() + static_cast<ptrdiff_t>(expired));
      return;
    }
    if (index < s.back().index - tiles_ + 1) return;  // Out of order and already outside every window.
    auto it = std::lower_bound(s.begin(), s.end(), index, [](const Tile& a, int64_t i) { return a.index < i; });
    if (it == s.end() || it->index != index) it = s.insert(it, Tile{index, typename Agg::State{}});
    Agg::Add(it->state, x, time, seq, c);
  }

  Value Query(const State& s, int64_t t, const AggContext& c) const { return QueryTiles(s, t, nullptr, c); }

  // The event's tile before it (absent: the event opened it).
  struct Mark {
    bool existed;
    typename AggMarks<Agg>::Mark agg;
  };
  Mark MarkBefore(const State& s, int64_t time, const typename Agg::Input& x) const {
    if (!s.empty() && s.back().index == FloorDiv(time, tile_ms_)) return Mark{true, AggMarks<Agg>::Before(s.back().state, x)};
    return Mark{false, typename AggMarks<Agg>::Mark{}};
  }
  // Every tile that an event from from[0] on touched goes back to before the first such event.
  template <typename E>
  void Rewind(State& s, std::span<const E* const> from) const {
    size_t k = 0;
    while (k < from.size()) {
      const int64_t index = FloorDiv(from[k]->time, tile_ms_);
      size_t end = k + 1;
      while (end < from.size() && FloorDiv(from[end]->time, tile_ms_) == index) ++end;
      auto it = std::lower_bound(s.begin(), s.end(), index, [](const Tile& a, int64_t i) { return a.index < i; });
      if (it != s.end() && it->index == index) {  // Always: the tile of a recent event is kept.
        if (from[k]->before.existed) {
          RewindMarks<Agg>(it->state, from.subspan(k, end - k));
        } else {
          s.erase(it);
        }
      }
      k = end;
    }
  }
  // Only within the newest tile, which the overtaken events must all be in, and which none of them opened.
  template <typename E>
  bool InsertEarlier(State& s, const typename Agg::Input& x, int64_t time, uint64_t seq, std::span<E* const> overtaken,
                     Mark* mark, const AggContext& c) const {
    const int64_t index = FloorDiv(time, tile_ms_);
    if (s.empty() || s.back().index != index || FloorDiv(overtaken.back()->time, tile_ms_) != index ||
        !overtaken.front()->before.existed) {
      return false;
    }
    *mark = Mark{true, AggMarks<Agg>::InsertFirst(s.back().state, x, time, seq, overtaken, c)};
    return true;
  }
  // The tiles before t's are complete as of t; t's own tile is as it was before the events after t in it.
  template <typename E>
  Value QueryAsOf(const State& s, int64_t t, std::span<const E* const> after, const AggContext& c) const {
    const int64_t index = FloorDiv(t, tile_ms_);
    size_t in_tile = 0;
    while (in_tile < after.size() && FloorDiv(after[in_tile]->time, tile_ms_) == index) ++in_tile;
    if (in_tile == 0) return QueryTiles(s, t, nullptr, c);
    if (!after.front()->before.existed) return QueryTiles(s, t, &kAbsent, c);
    auto it = std::lower_bound(s.begin(), s.end(), index, [](const Tile& a, int64_t i) { return a.index < i; });
    if (it == s.end() || it->index != index) return QueryTiles(s, t, &kAbsent, c);  // Cannot happen.
    const typename Agg::State before = AggMarks<Agg>::Rewound(it->state, after.subspan(0, in_tile));
    return QueryTiles(s, t, &before, c);
  }
  size_t MarkMemoryBytes(const Mark& m) const { return AggMarks<Agg>::MemoryBytes(m.agg); }
  void SerializeMark(const Mark& m, ByteWriter& w, const AggContext& c) const {
    w.PutBool(m.existed);
    AggMarks<Agg>::Serialize(m.agg, w, c);
  }
  bool DeserializeMark(Mark& m, ByteReader& r, AggContext& c) const {
    return r.ReadBool(&m.existed) && AggMarks<Agg>::Deserialize(m.agg, r, c);
  }

  size_t MemoryBytes(const State& s) const {
    size_t bytes = s.capacity() * sizeof(Tile);
    for (const Tile& tile : s) bytes += Agg::MemoryBytes(tile.state);
    return bytes;
  }

  // The number of tiles, then each tile's index (SignedVarint) and partial aggregate, oldest first.
  void Serialize(const State& s, ByteWriter& w, const AggContext& c) const {
    w.PutVarint(s.size());
    for (const Tile& tile : s) {
      w.PutSignedVarint(tile.index);
      Agg::Serialize(tile.state, w, c);
    }
  }
  // Tiles must be strictly ascending.
  bool Deserialize(State& s, ByteReader& r, AggContext& c) const {
    uint64_t n;
    if (!r.ReadCount(&n, 2)) return false;
    State out;
    out.reserve(static_cast<size_t>(n));
    for (uint64_t k = 0; k < n; ++k) {
      Tile tile{0, typename Agg::State{}};
      if (!r.ReadSignedVarint(&tile.index) || !Agg::Deserialize(tile.state, r, c)) return false;
      if (!out.empty() && tile.index <= out.back().index) return r.Fail();
      out.push_back(std::move(tile));
    }
    s = std::move(out);
    return true;
  }

 private:
  // Merges the tiles of the window as of t, in order; `last_tile` (not null): t's own tile is this instead
  // (&kAbsent: no such tile).
  static inline const typename Agg::State kAbsent{};
  Value QueryTiles(const State& s, int64_t t, const typename Agg::State* last_tile, const AggContext& c) const {
    const int64_t last = FloorDiv(t, tile_ms_);
    const int64_t first = last - tiles_ + 1;
    auto covers = [&](const Tile& tile) {
      return tile.index >= first && tile.index <= last && (last_tile == nullptr || tile.index < last);
    };
    const typename Agg::State* only = nullptr;
    size_t covered = 0;
    for (const Tile& tile : s) {
      if (covers(tile)) {
        only = &tile.state;
        ++covered;
      }
    }
    const bool has_last = last_tile != nullptr && last_tile != &kAbsent;
    if (has_last) {
      only = last_tile;
      ++covered;
    }
    if (covered == 0) return Agg::Finalize(typename Agg::State{}, c);
    if (covered == 1) return Agg::Finalize(*only, c);
    typename Agg::State merged{};
    for (const Tile& tile : s) {
      if (covers(tile)) Agg::Merge(merged, tile.state, c);
    }
    if (has_last) Agg::Merge(merged, *last_tile, c);
    return Agg::Finalize(merged, c);
  }

  int64_t tile_ms_;
  int64_t tiles_;
};

// True for aggregations whose Merge of partial states gives exactly what adding the inputs one by one gives
// (count, min, max); floating-point sums are not among them, since the order of additions shows in the bits.
template <typename Agg>
concept ExactlyMergeable = requires { requires Agg::kExactMerge; };

// Continuous sliding window: the events themselves (time, input order, extracted input), sorted by time.
// A query as of t reads only the events in (t - size, t], so the window is exact for every t it still holds
// the events of: with a low watermark (`low` > INT64_MIN) it keeps every event after min(newest, low) - size,
// so that queries as of any t >= low are exact whatever order the events came in; without one, the
// events after newest - size.
//
// For exactly mergeable aggregations the state also keeps a summary (the partial aggregate) of every full
// block of kBlock consecutive entries, and of every kSuper consecutive blocks, so a query merges summaries
// and scans at most two partial blocks: O(n / (kBlock * kSuper) + kSuper + kBlock) instead of O(n) for a
// busy entity's 24 h max.
// Blocks are aligned to absolute positions (entries ever erased from the front + index), so erasing the
// expired prefix keeps them; an out-of-order insert recomputes the blocks from its position on.
template <typename Agg>
class ContinuousWindow {
 public:
  struct Entry {
    int64_t time;
    uint64_t seq;
    typename Agg::Input input;
  };
  static constexpr bool kAsOfExact = true;
  static constexpr bool kBlocks = ExactlyMergeable<Agg>;
  static constexpr size_t kBlock = 64;  // Entries per block.
  static constexpr size_t kSuper = 64;  // Blocks per super-block.
  struct BlockIndex {
    uint64_t erased = 0;                      // Entries erased from the front so far.
    uint64_t first_block = 0;                 // Absolute block number of blocks[0].
    std::vector<typename Agg::State> blocks;  // Summaries of full blocks, in order.
    uint64_t first_super = 0;                 // Super-block number of supers[0]; super n is blocks
    std::vector<typename Agg::State> supers;  // [n * kSuper, (n + 1) * kSuper), all of them in `blocks`.
  };
  // Allocated once an entity has a full block: most entities never do, and pay one pointer.
  struct BlockIndexPtr {
    std::unique_ptr<BlockIndex> p;
    BlockIndexPtr() = default;
    BlockIndexPtr(BlockIndexPtr&&) noexcept = default;
    BlockIndexPtr& operator=(BlockIndexPtr&&) noexcept = default;
    BlockIndexPtr(const BlockIndexPtr& o) : p(o.p ? std::make_unique<BlockIndex>(*o.p) : nullptr) {}
    BlockIndexPtr& operator=(const BlockIndexPtr& o) {
      p = o.p ? std::make_unique<BlockIndex>(*o.p) : nullptr;
      return *this;
    }
  };
  struct NoBlocks {};
  struct State : std::vector<Entry> {
    [[no_unique_address]] std::conditional_t<kBlocks, BlockIndexPtr, NoBlocks> index;
  };

  explicit ContinuousWindow(int64_t size_ms) : size_ms_(size_ms) {}

  void Add(State& s, const typename Agg::Input& x, int64_t time, uint64_t seq, int64_t low, const AggContext& c) const {
    // Never inside a window that a query as of min(newest, low) or later reads.
    if (!s.empty() && time <= KeptAfter(s.back().time, low)) return;
    const Entry entry{time, seq, x};
    size_t at = s.size();
    if (s.empty() || !Before(entry, s.back())) {
      s.push_back(entry);
    } else {
      auto it = s.insert(std::upper_bound(s.begin(), s.end(), entry, Before), entry);
      at = static_cast<size_t>(it - s.begin());
    }
    if constexpr (kBlocks) UpdateBlocks(s, at, c);
    // Expire lazily: erase the expired prefix once it is a quarter of the entries, so that each entry
    // is moved O(1) times on average.
    const int64_t horizon = KeptAfter(s.back().time, low);
    if (s.front().time <= horizon) {
      auto live = std::upper_bound(s.begin(), s.end(), horizon, [](int64_t h, const Entry& e) { return h < e.time; });
      const size_t expired = static_cast<size_t>(live - s.begin());
      if (expired * 4 >= s.size() || expired >= 64) {
        s.erase(s.begin(), live);
        if constexpr (kBlocks) DropErasedBlocks(s, expired);
      }
    }
  }

  Value Query(const State& s, int64_t t, const AggContext& c) const {
    const auto first = std::upper_bound(s.begin(), s.end(), t - size_ms_,
                                        [](int64_t h, const Entry& e) { return h < e.time; });
    const auto last = std::upper_bound(first, s.end(), t, [](int64_t h, const Entry& e) { return h < e.time; });
    typename Agg::State state{};
    size_t lo = static_cast<size_t>(first - s.begin());
    const size_t hi = static_cast<size_t>(last - s.begin());
    if constexpr (kBlocks) {
      if (s.index.p != nullptr) lo = MergeBlocks(s, *s.index.p, lo, hi, state, c);
    }
    for (size_t k = lo; k < hi; ++k) Agg::Add(state, s[k].input, s[k].time, s[k].seq, c);
    return Agg::Finalize(state, c);
  }

  size_t MemoryBytes(const State& s) const {
    size_t bytes = s.capacity() * sizeof(Entry);
    if constexpr (kBlocks) {
      if (s.index.p) {
        bytes += sizeof(BlockIndex) + (s.index.p->blocks.capacity() + s.index.p->supers.capacity()) *
                                          sizeof(typename Agg::State);
      }
    }
    return bytes;
  }

  // The number of entries, then each entry's time (SignedVarint), input order (Varint) and input, in
  // order. Entries already expired but not yet erased are kept, so the loaded state is the saved one.
  void Serialize(const State& s, ByteWriter& w, const AggContext& c) const {
    w.PutVarint(s.size());
    for (const Entry& e : s) {
      w.PutSignedVarint(e.time);
      w.PutVarint(e.seq);
      Agg::SerializeInput(e.input, w, c);
    }
  }
  // Entries must be in (time, seq) order.
  bool Deserialize(State& s, ByteReader& r, AggContext& c) const {
    uint64_t n;
    if (!r.ReadCount(&n, 2)) return false;
    State out;
    out.reserve(static_cast<size_t>(n));
    for (uint64_t k = 0; k < n; ++k) {
      Entry e{0, 0, typename Agg::Input{}};
      if (!r.ReadSignedVarint(&e.time) || !r.ReadVarint(&e.seq) || !Agg::DeserializeInput(e.input, r, c)) {
        return false;
      }
      if (!out.empty() && Before(e, out.back())) return r.Fail();
      out.push_back(e);
    }
    s = std::move(out);
    if constexpr (kBlocks) UpdateBlocks(s, 0, c);
    return true;
  }

 private:
  static bool Before(const Entry& a, const Entry& b) { return a.time != b.time ? a.time < b.time : a.seq < b.seq; }

  // Events at or before this time are never read again: no query before min(newest, low) is answered
  // from this state (INT64_MIN: no low watermark, so only queries at or after the newest event).
  int64_t KeptAfter(int64_t newest, int64_t low) const {
    const int64_t from = low == std::numeric_limits<int64_t>::min() ? newest : std::min(newest, low);
    return from - size_ms_;
  }

  // Merges into `state` the summaries of the full blocks (and super-blocks) inside entries [lo, hi), and the
  // entries before the first of them; returns where the caller's scan continues.
  size_t MergeBlocks(const State& s, const BlockIndex& b, size_t lo, size_t hi, typename Agg::State& state,
                     const AggContext& c) const {
    const uint64_t a_lo = b.erased + lo, a_hi = b.erased + hi;
    uint64_t block = std::max<uint64_t>((a_lo + kBlock - 1) / kBlock, b.first_block);
    const uint64_t end_block = std::min<uint64_t>(a_hi / kBlock, b.first_block + b.blocks.size());
    if (block < end_block) {
      for (size_t k = lo; k < block * kBlock - b.erased; ++k) Agg::Add(state, s[k].input, s[k].time, s[k].seq, c);
      while (block < end_block) {
        const uint64_t n = block / kSuper;
        if (block % kSuper == 0 && block + kSuper <= end_block && n >= b.first_super &&
            n < b.first_super + b.supers.size()) {
          Agg::Merge(state, b.supers[n - b.first_super], c);
          block += kSuper;
        } else {
          Agg::Merge(state, b.blocks[block - b.first_block], c);
          ++block;
        }
      }
      lo = block * kBlock - b.erased;
    }
    return lo;
  }

  // Entries from index `changed` on are new or moved: recompute the summaries of the full blocks from there.
  void UpdateBlocks(State& s, size_t changed, const AggContext& c) const {
    if (s.index.p == nullptr) {
      if (s.size() < kBlock) return;
      s.index.p = std::make_unique<BlockIndex>();  // Blocks aligned to the entries present now.
      changed = 0;
    }
    BlockIndex& b = *s.index.p;
    const uint64_t from_block = std::max<uint64_t>((b.erased + changed) / kBlock, b.first_block);
    if (b.blocks.empty()) b.first_block = (b.erased + kBlock - 1) / kBlock;  // The first block wholly present.
    const uint64_t keep = from_block > b.first_block ? from_block - b.first_block : 0;
    if (b.blocks.size() > keep) b.blocks.resize(keep);
    // Super-blocks keep only those whose blocks all survived.
    while (!b.supers.empty() && (b.first_super + b.supers.size()) * kSuper > b.first_block + b.blocks.size()) {
      b.supers.pop_back();
    }
    const uint64_t full_blocks = (b.erased + s.size()) / kBlock;
    for (uint64_t block = b.first_block + b.blocks.size(); block < full_blocks; ++block) {
      typename Agg::State summary{};
      for (uint64_t k = block * kBlock - b.erased; k < (block + 1) * kBlock - b.erased; ++k) {
        Agg::Add(summary, s[k].input, s[k].time, s[k].seq, c);
      }
      b.blocks.push_back(summary);
    }
    // Then summarize every newly complete super-block.
    const uint64_t blocks_end = b.first_block + b.blocks.size();
    if (b.supers.empty()) b.first_super = (b.first_block + kSuper - 1) / kSuper;
    for (uint64_t n = b.first_super + b.supers.size(); (n + 1) * kSuper <= blocks_end; ++n) {
      typename Agg::State summary{};
      for (uint64_t block = n * kSuper; block < (n + 1) * kSuper; ++block) {
        Agg::Merge(summary, b.blocks[block - b.first_block], c);
      }
      b.supers.push_back(summary);
    }
  }

  // After erasing `expired` entries from the front: summaries of blocks no longer wholly present go.
  void DropErasedBlocks(State& s, size_t expired) const {
    if (s.index.p == nullptr) return;
    BlockIndex& b = *s.index.p;
    b.erased += expired;
    const uint64_t first_present = (b.erased + kBlock - 1) / kBlock;
    if (first_present > b.first_block) {
      const uint64_t drop = std::min<uint64_t>(first_present - b.first_block, b.blocks.size());
      b.blocks.erase(b.blocks.begin(), b.blocks.begin() + static_cast<ptrdiff_t>(drop));
      b.first_block = first_present;
    }
    const uint64_t first_super = (b.first_block + kSuper - 1) / kSuper;
    if (first_super > b.first_super) {
      const uint64_t drop = std::min<uint64_t>(first_super - b.first_super, b.supers.size());
      b.supers.erase(b.supers.begin(), b.supers.begin() + static_cast<ptrdiff_t>(drop));
      b.first_super = first_super;
    }
  }

  int64_t size_ms_;
};

// Session window: disjoint sessions; events less than `gap_ms` apart share a session. The newest session
// lives inline (the common in-order case touches nothing else); older ones, kept only while a late event
// could still reach them, are in `older`, sorted by start.
template <typename Agg>
class SessionWindow {
 public:
  static constexpr bool kAsOfExact = false;
  struct Session {
    int64_t start;
    int64_t end;
    typename Agg::State state;
  };
  struct State {
    bool has_newest = false;
    Session newest{0, 0, typename Agg::State{}};
    std::vector<Session> older;
  };

  explicit SessionWindow(int64_t gap_ms) : gap_ms_(gap_ms) {}

  void Add(State& s, const typename Agg::Input& x, int64_t time, uint64_t seq, int64_t low,
           const AggContext& c) const {
    if (!s.has_newest) {
      s.has_newest = true;
      s.newest = Session{time, time, typename Agg::State{}};
      Agg::Add(s.newest.state, x, time, seq, c);
      return;
    }
    Session& n = s.newest;
    if (time >= n.start && time < n.end + gap_ms_) {
      // Joins the newest session and cannot reach an older one (those end at least a gap before it).
      n.end = std::max(n.end, time);
      Agg::Add(n.state, x, time, seq, c);
    } else if (time >= n.end + gap_ms_) {
      // Starts a new session; the previous newest is kept only while a late event could still reach it.
      if (n.end + gap_ms_ > low) s.older.push_back(std::move(n));
      n = Session{time, time, typename Agg::State{}};
      Agg::Add(n.state, x, time, seq, c);
    } else {
      AddOutOfOrder(s, x, time, seq, c);
    }
    size_t dead = 0;
    while (dead < s.older.size() && s.older[dead].end + gap_ms_ <= low) ++dead;
    if (dead > 0) s.older.erase(s.older.begin(), s.older.begin() + static_cast<ptrdiff_t>(dead));
  }

  Value Query(const State& s, int64_t t, const AggContext& c) const {
    if (!s.has_newest || t - s.newest.end >= gap_ms_) return Agg::Finalize(typename Agg::State{}, c);
    return Agg::Finalize(s.newest.state, c);
  }

  // In time order an event either joins the newest session or opens one: if it joins, the session's end and
  // aggregate before it.
  struct Mark {  // The flag last, so that it shares the padding after a small aggregate mark (a recent event's size).
    int64_t end;
    typename AggMarks<Agg>::Mark agg;
    bool joined;
  };
  Mark MarkBefore(const State& s, int64_t time, const typename Agg::Input& x) const {
    if (s.has_newest && time < s.newest.end + gap_ms_) {
      return Mark{s.newest.end, AggMarks<Agg>::Before(s.newest.state, x), true};
    }
    return Mark{0, typename AggMarks<Agg>::Mark{}, false};
  }
  // Built in time order, sessions only ever grow at the newest one or open a new one: going back before
  // *from[0] drops the sessions it and later events opened and restores the one it joined.
  template <typename E>
  void Rewind(State& s, std::span<const E* const> from) const {
    const E& e = *from.front();
    if (!s.has_newest) return;
    if (e.before.joined && s.newest.start <= e.time) {
      // It joined the newest session (the common case of a busy key's late event): only that one changes,
      // as below, without moving sessions through `older`.
      RewindSession(s.newest, from);
      return;
    }
    s.older.push_back(std::move(s.newest));
    std::vector<Session>& all = s.older;
    size_t keep = 0;
    while (keep < all.size() && (e.before.joined ? all[keep].start <= e.time : all[keep].start < e.time)) ++keep;
    if (e.before.joined && keep > 0) RewindSession(all[keep - 1], from);
    all.resize(keep);
    s.has_newest = !all.empty();
    if (s.has_newest) {
      s.newest = std::move(all.back());
      all.pop_back();
    } else {
      s.newest = Session{0, 0, typename Agg::State{}};
    }
  }
  // When x falls in the newest session (at or after its start; the overtaken events are later, so in it too, and
  // each joined it in time order): no session moves. The session's end before x is the first overtaken event's
  // mark; the end before that event is now x's time, since every event before x in time order is at or before it.
  template <typename E>
  bool InsertEarlier(State& s, const typename Agg::Input& x, int64_t time, uint64_t seq, std::span<E* const> overtaken,
                     Mark* mark, const AggContext& c) const {
    if (!s.has_newest || time < s.newest.start || !overtaken.front()->before.joined) return false;
    Mark& first = overtaken.front()->before;
    *mark = Mark{first.end, AggMarks<Agg>::InsertFirst(s.newest.state, x, time, seq, overtaken, c), true};
    first.end = std::max(first.end, time);
    return true;
  }
  // The latest event at or before t is the one just before after[0]. If after[0] joined a session, that
  // session before it (and the events after t in it); otherwise the latest session that starts at or before
  // t, which no later event joined.
  template <typename E>
  Value QueryAsOf(const State& s, int64_t t, std::span<const E* const> after, const AggContext& c) const {
    const Mark& m = after.front()->before;
    const Session* latest = nullptr;
    if (s.has_newest && s.newest.start <= (m.joined ? after.front()->time : t)) {
      latest = &s.newest;
    } else {
      for (const Session& session : s.older) {
        if (session.start <= (m.joined ? after.front()->time : t)) latest = &session;
      }
    }
    if (m.joined) {
      if (t - m.end >= gap_ms_ || latest == nullptr) return Agg::Finalize(typename Agg::State{}, c);
      size_t in_session = 0;
      while (in_session < after.size() && after[in_session]->time <= latest->end) ++in_session;
      return Agg::Finalize(AggMarks<Agg>::Rewound(latest->state, after.subspan(0, in_session)), c);
    }
    if (latest == nullptr || t - latest->end >= gap_ms_) return Agg::Finalize(typename Agg::State{}, c);
    return Agg::Finalize(latest->state, c);
  }
  size_t MarkMemoryBytes(const Mark& m) const { return AggMarks<Agg>::MemoryBytes(m.agg); }
  void SerializeMark(const Mark& m, ByteWriter& w, const AggContext& c) const {
    w.PutBool(m.joined);
    if (!m.joined) return;
    w.PutSignedVarint(m.end);
    AggMarks<Agg>::Serialize(m.agg, w, c);
  }
  bool DeserializeMark(Mark& m, ByteReader& r, AggContext& c) const {
    if (!r.ReadBool(&m.joined)) return false;
    if (!m.joined) return true;
    return r.ReadSignedVarint(&m.end) && AggMarks<Agg>::Deserialize(m.agg, r, c);
  }

  size_t MemoryBytes(const State& s) const {
    size_t bytes = s.older.capacity() * sizeof(Session) + Agg::MemoryBytes(s.newest.state);
    for (const Session& session : s.older) bytes += Agg::MemoryBytes(session.state);
    return bytes;
  }

  // Whether there is a newest session; if so, it (start and end as SignedVarints, then the aggregate),
  // then the number of older sessions and each of them, oldest first.
  void Serialize(const State& s, ByteWriter& w, const AggContext& c) const {
    w.PutBool(s.has_newest);
    if (!s.has_newest) return;
    SerializeSession(s.newest, w, c);
    w.PutVarint(s.older.size());
    for (const Session& session : s.older) SerializeSession(session, w, c);
  }
  // Every session must have start <= end.
  bool Deserialize(State& s, ByteReader& r, AggContext& c) const {
    State out;
    if (!r.ReadBool(&out.has_newest)) return false;
    if (out.has_newest) {
      if (!DeserializeSession(out.newest, r, c)) return false;
      uint64_t n;
      if (!r.ReadCount(&n, 3)) return false;
      out.older.reserve(static_cast<size_t>(n));
      for (uint64_t k = 0; k < n; ++k) {
        Session session{0, 0, typename Agg::State{}};
        if (!DeserializeSession(session, r, c)) return false;
        out.older.push_back(std::move(session));
      }
    }
    s = std::move(out);
    return true;
  }

 private:
  // The session that from[0] joined, back to before it: its end as from[0]'s mark says, and its aggregate
  // without the events of `from` in it (those up to its end).
  template <typename E>
  static void RewindSession(Session& joined, std::span<const E* const> from) {
    size_t in_session = 0;
    while (in_session < from.size() && from[in_session]->time <= joined.end) ++in_session;
    joined.end = from.front()->before.end;
    RewindMarks<Agg>(joined.state, from.subspan(0, in_session));
  }

  // An event before the newest session's start: it may join or bridge any sessions it is near.
  void AddOutOfOrder(State& st, const typename Agg::Input& x, int64_t time, uint64_t seq, const AggContext& c) const {
    std::vector<Session>& s = st.older;
    s.push_back(std::move(st.newest));
    size_t first = 0;
    while (first < s.size() && s[first].end + gap_ms_ <= time) ++first;
    size_t last = first;
    while (last < s.size() && s[last].start - gap_ms_ < time) ++last;
    if (first == last) {
      s.insert(s.begin() + static_cast<ptrdiff_t>(first), Session{time, time, typename Agg::State{}});
      last = first + 1;
    }
    Session& joined = s[first];
    for (size_t k = first + 1; k < last; ++k) {
      Agg::Merge(joined.state, s[k].state, c);
      joined.end = std::max(joined.end, s[k].end);
    }
    if (last > first + 1) {
      s.erase(s.begin() + static_cast<ptrdiff_t>(first + 1), s.begin() + static_cast<ptrdiff_t>(last));
    }
    joined.start = std::min(joined.start, time);
    joined.end = std::max(joined.end, time);
    Agg::Add(joined.state, x, time, seq, c);
    st.newest = std::move(s.back());
    s.pop_back();
  }

  static void SerializeSession(const Session& session, ByteWriter& w, const AggContext& c) {
    w.PutSignedVarint(session.start);
    w.PutSignedVarint(session.end);
    Agg::Serialize(session.state, w, c);
  }
  static bool DeserializeSession(Session& session, ByteReader& r, AggContext& c) {
    if (!r.ReadSignedVarint(&session.start) || !r.ReadSignedVarint(&session.end)) return false;
    if (session.start > session.end) return r.Fail();
    return Agg::Deserialize(session.state, r, c);
  }

  int64_t gap_ms_;
};

}  // namespace freshet

// The list-valued aggregations: top_k and last_k. Same verbs as aggregations.h; Finalize returns the list as
// JSON text (a Value of type string kept in AggContext::rendered), which HTTP answers embed as a JSON array
// and Redis, CSV and the offline store keep as text (see AggGivesJsonList in spec/spec.h).
//
// top_k [[]]: [{"value":v,"count":n},...], the k most frequent values, by count descending; ties: booleans
//   (false first), then numbers by value, then strings bytewise. Values compare as in count_distinct (1 and
//   1.0 are one value, written 1). The state is a Misra-Gries summary of C = TopKAgg::Capacity(k) counters: exact
//   while the window holds at most C distinct values; beyond, each kept count c of a value with true count f
//   among the window's n values satisfies f - n/(C+1) <= c <= f, every value with f > n/(C+1) is kept, and
//   merging two summaries keeps that bound for the union (Agarwal et al., "Mergeable summaries", 2012), which
//   tiles and sessions rely on.
// last_k [[]]: [v,...], the values of the k newest events, newest first; time ties by input order, the later
//   first. Exactly mergeable.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <functional>
#include <string>
#include <vector>

#include "aggregate/aggregations.h"

namespace freshet {


// Aggregations whose Finalize keeps text in AggContext::rendered, which their owner clears when states change.
template <typename Agg>
concept RendersText = requires { requires Agg::kRendersText; };

struct TopKAgg {
  static constexpr bool kRendersText = true;
  using Input = CountDistinctAgg::Input;
  struct Counter {
    Input key;
    int64_t count = 0;
  };
  struct State {
    std::vector<Counter> counters;  // At most Capacity(k), in no particular order, every count > 0.
  };
  // The number of counters: exact up to this many distinct values.
  static size_t Capacity(int k) { return std::max<size_t>(64, 4 * static_cast<size_t>(k)); }

  static bool MakeInput(const Value& v, AggContext& c, Input* out) { return CountDistinctAgg::MakeInput(v, c, out); }
  // The counter of x, or end().
  static std::vector<Counter>::iterator Find(State& s, const Input& x) {
    return std::find_if(s.counters.begin(), s.counters.end(), [&](const Counter& m) { return m.key == x; });
  }
  static bool Holds(const State& s, const Input& x) {
    return std::any_of(s.counters.begin(), s.counters.end(), [&](const Counter& m) { return m.key == x; });
  }
  static void Add(State& s, const Input& x, int64_t, uint64_t, const AggContext& c) {
    auto it = Find(s, x);
    if (it != s.counters.end()) {
      ++it->count;
      return;
    }
    if (s.counters.size() < Capacity(c.k)) {
      s.counters.push_back(Counter{x, 1});
      return;
    }
    // Misra-Gries: a new value with every counter taken takes one from each (and from itself).
    for (Counter& counter : s.counters) --counter.count;
    DropEmpty(s);
  }
  static void Merge(State& s, const State& o, const AggContext& c) {
    for (const Counter& theirs : o.counters) {
      auto it = Find(s, theirs.key);
      if (it != s.counters.end()) {
        it->count += theirs.count;
      } else {
        s.counters.push_back(theirs);
      }
    }
    const size_t capacity = Capacity(c.k);
    if (s.counters.size() <= capacity) return;
    // Subtract the (C+1)-th largest count from every counter and keep the positive ones.
    std::vector<int64_t> counts;
    counts.reserve(s.counters.size());
    for (const Counter& counter : s.counters) counts.push_back(counter.count);
    std::nth_element(counts.begin(), counts.begin() + static_cast<ptrdiff_t>(capacity), counts.end(),
                     std::greater<int64_t>());
    const int64_t cut = counts[capacity];
    for (Counter& counter : s.counters) counter.count -= cut;
    DropEmpty(s);
  }
  static void DropEmpty(State& s) {
    std::erase_if(s.counters, [](const Counter& counter) { return counter.count <= 0; });
  }
  static Value Finalize(const State& s, const AggContext& c);
  static size_t MemoryBytes(const State& s) { return s.counters.capacity() * sizeof(Counter); }
  // The number of counters, then each one's value (CountDistinctAgg's key encoding) and count.
  static void Serialize(const State& s, ByteWriter& w, const AggContext& c) {
    w.PutVarint(s.counters.size());
    for (const Counter& counter : s.counters) {
      CountDistinctAgg::SerializeInput(counter.key, w, c);
      w.PutSignedVarint(counter.count);
    }
  }
  static bool Deserialize(State& s, ByteReader& r, AggContext& c) {
    uint64_t n;
    if (!r.ReadCount(&n, 3)) return false;
    State out;
    out.counters.resize(static_cast<size_t>(n));
    for (Counter& counter : out.counters) {
      if (!CountDistinctAgg::DeserializeInput(counter.key, r, c) || !r.ReadSignedVarint(&counter.count)) return false;
      if (counter.count <= 0) return r.Fail();
    }
    s = std::move(out);
    return true;
  }
  static void SerializeInput(const Input& x, ByteWriter& w, const AggContext& c) {
    CountDistinctAgg::SerializeInput(x, w, c);
  }
  static bool DeserializeInput(Input& x, ByteReader& r, AggContext& c) { return CountDistinctAgg::DeserializeInput(x, r, c); }
};

struct LastKAgg {
  static constexpr bool kExactMerge = true;  // The k newest by (time, input order) whatever the merge order.
  static constexpr bool kRendersText = true;
  using Input = Scalar;
  struct Item {
    int64_t time_ms = 0;
    uint64_t seq = 0;
    Scalar value;
  };
  struct State {
    std::vector<Item> items;  // At most k, newest first.
  };
  static bool Newer(int64_t time_ms, uint64_t seq, const Item& than) {
    return time_ms != than.time_ms ? time_ms > than.time_ms : seq > than.seq;
  }
  static bool MakeInput(const Value& v, AggContext& c, Input* out) { return MakeScalar(v, c, out); }
  static void Add(State& s, const Input& x, int64_t time_ms, uint64_t seq, const AggContext& c) {
    const size_t k = static_cast<size_t>(c.k);
    if (s.items.size() >= k && !Newer(time_ms, seq, s.items.back())) return;
    auto it = std::find_if(s.items.begin(), s.items.end(), [&](const Item& i) { return Newer(time_ms, seq, i); });
    s.items.insert(it, Item{time_ms, seq, x});
    if (s.items.size() > k) s.items.pop_back();
  }
  static void Merge(State& s, const State& o, const AggContext& c) {
    for (const Item& i : o.items) Add(s, i.value, i.time_ms, i.seq, c);
  }
  static Value Finalize(const State& s, const AggContext& c);
  static size_t MemoryBytes(const State& s) { return s.items.capacity() * sizeof(Item); }
  // The number of items, then each one's time, input order and value, newest first.
  static void Serialize(const State& s, ByteWriter& w, const AggContext& c) {
    w.PutVarint(s.items.size());
    for (const Item& i : s.items) {
      w.PutSignedVarint(i.time_ms);
      w.PutVarint(i.seq);
      SerializeScalar(i.value, w, c);
    }
  }
  static bool Deserialize(State& s, ByteReader& r, AggContext& c) {
    uint64_t n;
    if (!r.ReadCount(&n, 3)) return false;
    State out;
    for (uint64_t k = 0; k < n; ++k) {
      Item i;
      if (!r.ReadSignedVarint(&i.time_ms) || !r.ReadVarint(&i.seq) || !DeserializeScalar(&i.value, r, c)) return false;
      Add(out, i.value, i.time_ms, i.seq, c);  // Re-sorted and cut to this feature's k.
    }
    s = std::move(out);
    return true;
  }
  static void SerializeInput(const Input& x, ByteWriter& w, const AggContext& c) { SerializeScalar(x, w, c); }
  static bool DeserializeInput(Input& x, ByteReader& r, AggContext& c) { return DeserializeScalar(&x, r, c); }
};

// Marks (see AggMarks in aggregations.h) that do not copy the list per recent event.
//
// top_k: most events add one to a counter or open one, which taking it back undoes; only an event that may meet
// every counter taken (a Misra-Gries decrement: its value is not counted and at least 64 counters, the smallest
// capacity, are) keeps a copy of the summary before it.
template <>
struct AggMarks<TopKAgg> {
  using State = TopKAgg::State;
  struct Mark {
    bool copied = false;
    State before;  // The summary before the event, when copied.
  };
  static Mark Before(const State& s, const TopKAgg::Input& x) {
    if (s.counters.size() < TopKAgg::Capacity(1) || TopKAgg::Holds(s, x)) return Mark{};
    return Mark{true, s};
  }
  // Undoes the events newest first: each one's copy, or its count taken back.
  template <typename E>
  static State Rewound(const State& s, std::span<const E* const> events) {
    State out = s;
    for (size_t k = events.size(); k-- > 0;) {
      const Mark& m = events[k]->before.agg;
      if (m.copied) {
        out = m.before;
        continue;
      }
      auto it = TopKAgg::Find(out, events[k]->input);
      if (it != out.counters.end() && --it->count == 0) out.counters.erase(it);
    }
    return out;
  }
  static size_t MemoryBytes(const Mark& m) { return m.copied ? TopKAgg::MemoryBytes(m.before) : 0; }
  static void Serialize(const Mark& m, ByteWriter& w, const AggContext& c) {
    w.PutBool(m.copied);
    if (m.copied) TopKAgg::Serialize(m.before, w, c);
  }
  static bool Deserialize(Mark& m, ByteReader& r, AggContext& c) {
    Mark out;
    if (!r.ReadBool(&out.copied) || (out.copied && !TopKAgg::Deserialize(out.before, r, c))) return false;
    m = std::move(out);
    return true;
  }
};

// last_k: an event either changes nothing, or goes into the list and may push its oldest value out. The mark keeps
// the list's length and oldest item before it; undoing removes the event's item (by input order) and puts the
// pushed-out item back.
template <>
struct AggMarks<LastKAgg> {
  using State = LastKAgg::State;
  struct Mark {
    uint32_t size = 0;
    LastKAgg::Item oldest;  // When size > 0.
  };
  static Mark Before(const State& s, const LastKAgg::Input&) {
    if (s.items.empty()) return Mark{};
    return Mark{static_cast<uint32_t>(s.items.size()), s.items.back()};
  }
  template <typename E>
  static State Rewound(const State& s, std::span<const E* const> events) {
    State out = s;
    for (size_t k = events.size(); k-- > 0;) {
      const Mark& m = events[k]->before.agg;
      std::erase_if(out.items, [&](const LastKAgg::Item& i) { return i.seq == events[k]->seq && i.time_ms == events[k]->time; });
      if (out.items.size() < m.size) out.items.push_back(m.oldest);
    }
    return out;
  }
  static size_t MemoryBytes(const Mark&) { return 0; }
  static void Serialize(const Mark& m, ByteWriter& w, const AggContext& c) {
    w.PutVarint(m.size);
    if (m.size == 0) return;
    w.PutSignedVarint(m.oldest.time_ms);
    w.PutVarint(m.oldest.seq);
    SerializeScalar(m.oldest.value, w, c);
  }
  static bool Deserialize(Mark& m, ByteReader& r, AggContext& c) {
    Mark out;
    uint64_t size;
    if (!r.ReadVarint(&size) || size > 100) return r.Fail();
    out.size = static_cast<uint32_t>(size);
    if (size > 0 && (!r.ReadSignedVarint(&out.oldest.time_ms) || !r.ReadVarint(&out.oldest.seq) ||
                     !DeserializeScalar(&out.oldest.value, r, c))) {
      return false;
    }
    m = out;
    return true;
  }
};

}  // namespace freshet

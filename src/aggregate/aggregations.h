// The aggregations of Freshet's feature spec, as small values with four verbs.
//
// Each aggregation is a struct of static functions over two value types:
//   Input  what one event contributes, extracted once (a compact copy: numbers, or interned string ids)
//   State  the partial aggregate
// and the verbs
//   MakeInput(Value, AggContext&, Input*) -> false when the value cannot contribute (wrong type)
//   Add(State&, Input, time_ms, seq, ctx)  fold one event in (time and input order matter only to `last`)
//   Merge(State&, const State&, ctx)       combine two partials (tiles, sessions)
//   Finalize(const State&, ctx) -> Value   read the result; never changes the state
//   MemoryBytes(const State&)               heap bytes held by the state, for state-size metrics
// and, for checkpoints and the online store (encoding in common/bytes.h),
//   Serialize(const State&, ByteWriter&, ctx)         append the state
//   Deserialize(State&, ByteReader&, ctx) -> bool      replace the state by a serialized one; false (and
//                                                      the reader failed) on malformed input
//   SerializeInput / DeserializeInput                 the same for an Input (continuous windows keep them)
// and optionally
//   Commutes(const Input&) -> bool         adding this input commutes with every other Add (see MayCommute)
// Strings are written as their text, never as StringPool ids, and re-interned into ctx on load, so a
// state saved by one process loads into another whose pool numbers strings differently.
// A default-constructed State is the empty aggregate. The windows in window/ hold and combine them.
//
// Semantics (empty-window value in brackets): count [0]; sum [0] exact integer when every input is an
// integer and the total fits int64, else a double; mean [null]; min/max [null] by numeric value, keeping
// the winner's type (an integer wins a tie with an equal double); stddev [null] population; last [null] the value of the latest event, ties broken by
// input order; count_distinct [0] exact (strings by text, numbers by value, booleans);
// approx_count_distinct [0] HyperLogLog (see hyperloglog.h); first [null] the value of the earliest event,
// ties broken by input order; approx_percentile [null] the nearest-rank percentile (see quantile_sketch.h).
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "aggregate/hyperloglog.h"
#include "aggregate/quantile_sketch.h"
#include "aggregate/rendered_texts.h"
#include "aggregate/small_vector.h"
#include "aggregate/string_pool.h"
#include "common/bytes.h"
#include "common/value.h"

namespace freshet {

// Per-feature context shared by all of a feature's states.
struct AggContext {
  StringPool strings;  // last, count_distinct: string values by id.
  int precision = 14;  // approx_count_distinct.
  int64_t percentile_ppm = 500000;  // approx_percentile: the percentile in millionths (0.95 is 950000).
  int k = 1;  // top_k, last_k: the length of the list.
  // top_k, last_k: the JSON text of the lists Finalize returned (see rendered_texts.h).
  mutable RenderedTexts rendered;
};

// A number as it appeared in the event: an int64 or a double.
struct Numeric {
  bool is_int = true;
  union {
    int64_t i;
    double d;
  };
  Numeric() : i(0) {}
  static Numeric Int(int64_t x) { Numeric n; n.i = x; return n; }
  static Numeric Double(double x) { Numeric n; n.is_int = false; n.d = x; return n; }
  double as_double() const { return is_int ? static_cast<double>(i) : d; }
  long double as_long_double() const { return is_int ? static_cast<long double>(i) : d; }
  Value ToValue() const { return is_int ? Value::Int(i) : Value::Double(d); }
};

// Serialized as a tag byte (0 integer, 1 double), then a SignedVarint or the double's bits.
inline void SerializeNumeric(const Numeric& n, ByteWriter& w) {
  w.PutU8(n.is_int ? 0 : 1);
  if (n.is_int) {
    w.PutSignedVarint(n.i);
  } else {
    w.PutDouble(n.d);
  }
}

inline bool DeserializeNumeric(Numeric* n, ByteReader& r) {
  uint8_t tag;
  if (!r.ReadU8(&tag)) return false;
  if (tag == 0) {
    int64_t i;
    if (!r.ReadSignedVarint(&i)) return false;
    *n = Numeric::Int(i);
    return true;
  }
  if (tag == 1) {
    double d;
    if (!r.ReadDouble(&d)) return false;
    *n = Numeric::Double(d);
    return true;
  }
  return r.Fail();
}

inline bool MakeNumeric(const Value& v, Numeric* out) {
  if (v.type == ValueType::kInt) {
    *out = Numeric::Int(v.i);
    return true;
  }
  if (v.type == ValueType::kDouble) {
    *out = Numeric::Double(v.d);
    return true;
  }
  return false;
}

// A scalar kept by value: bool, int, double, or an interned string.
struct Scalar {
  ValueType type = ValueType::kNull;
  union {
    bool b;
    int64_t i;
    double d;
    uint32_t str;
  };
  Scalar() : i(0) {}

  Value ToValue(const AggContext& ctx) const {
    switch (type) {
      case ValueType::kBool: return Value::Bool(b);
      case ValueType::kInt: return Value::Int(i);
      case ValueType::kDouble: return Value::Double(d);
      case ValueType::kString: return Value::String(ctx.strings.Get(str));
      default: return Value::Null();
    }
  }
};

inline bool MakeScalar(const Value& v, AggContext& ctx, Scalar* out) {
  out->type = v.type;
  switch (v.type) {
    case ValueType::kBool: out->b = v.b; return true;
    case ValueType::kInt: out->i = v.i; return true;
    case ValueType::kDouble: out->d = v.d; return true;
    case ValueType::kString: out->str = ctx.strings.Intern(v.s); return true;
    default: return false;
  }
}

// Serialized as a tag byte (0 null, 1 bool, 2 integer, 3 double, 4 string), then the value; a string
// by its text.
inline void SerializeScalar(const Scalar& x, ByteWriter& w, const AggContext& ctx) {
  switch (x.type) {
    case ValueType::kBool: w.PutU8(1); w.PutBool(x.b); return;
    case ValueType::kInt: w.PutU8(2); w.PutSignedVarint(x.i); return;
    case ValueType::kDouble: w.PutU8(3); w.PutDouble(x.d); return;
    case ValueType::kString: w.PutU8(4); w.PutString(ctx.strings.Get(x.str)); return;
    default: w.PutU8(0); return;
  }
}

inline bool DeserializeScalar(Scalar* x, ByteReader& r, AggContext& ctx) {
  uint8_t tag;
  if (!r.ReadU8(&tag)) return false;
  Scalar out;
  switch (tag) {
    case 0: out.type = ValueType::kNull; break;
    case 1: out.type = ValueType::kBool; if (!r.ReadBool(&out.b)) return false; break;
    case 2: out.type = ValueType::kInt; if (!r.ReadSignedVarint(&out.i)) return false; break;
    case 3: out.type = ValueType::kDouble; if (!r.ReadDouble(&out.d)) return false; break;
    case 4: {
      std::string_view text;
      if (!r.ReadString(&text)) return false;
      out.type = ValueType::kString;
      out.str = ctx.strings.Intern(text);
      break;
    }
    default: return r.Fail();
  }
  *x = out;
  return true;
}

struct CountAgg {
  static constexpr bool kExactMerge = true;  // Merging partial states equals adding one by one, bit for bit.
  struct Input {};
  using State = int64_t;
  static bool MakeInput(const Value&, AggContext&, Input*) { return true; }
  static void Add(State& s, const Input&, int64_t, uint64_t, const AggContext&) { ++s; }
  static bool Commutes(const Input&) { return true; }  // See MayCommute.
  static void Merge(State& s, const State& o, const AggContext&) { s += o; }
  static Value Finalize(const State& s, const AggContext&) { return Value::Int(s); }
  static size_t MemoryBytes(const State&) { return 0; }
  static void Serialize(const State& s, ByteWriter& w, const AggContext&) { w.PutSignedVarint(s); }
  static bool Deserialize(State& s, ByteReader& r, AggContext&) { return r.ReadSignedVarint(&s); }
  static void SerializeInput(const Input&, ByteWriter&, const AggContext&) {}
  static bool DeserializeInput(Input&, ByteReader& r, AggContext&) { return !r.failed(); }
};

struct SumAgg {
  using Input = Numeric;
  struct State {
    __int128 int_sum = 0;  // Exact sum of the integer inputs.
    double double_sum = 0;
    bool has_double = false;
  };
  static bool MakeInput(const Value& v, AggContext&, Input* out) { return MakeNumeric(v, out); }
  // An integer goes to the exact integer sum; a double's rounding depends on what the double sum held before it.
  static bool Commutes(const Input& x) { return x.is_int; }
  static void Add(State& s, const Input& x, int64_t, uint64_t, const AggContext&) {
    if (x.is_int) {
      s.int_sum += x.i;
    } else {
      s.double_sum += x.d;
      s.has_double = true;
    }
  }
  static void Merge(State& s, const State& o, const AggContext&) {
    s.int_sum += o.int_sum;
    s.double_sum += o.double_sum;
    s.has_double |= o.has_double;
  }
  static Value Finalize(const State& s, const AggContext&) {
    constexpr __int128 kMin = INT64_MIN, kMax = INT64_MAX;
    if (!s.has_double && s.int_sum >= kMin && s.int_sum <= kMax) return Value::Int(static_cast<int64_t>(s.int_sum));
    return Value::Double(static_cast<double>(s.int_sum) + s.double_sum);
  }
  static size_t MemoryBytes(const State&) { return 0; }
  // A flags byte (1: has a double part, 2: the integer sum needs 128 bits), the integer sum (a
  // SignedVarint, or low and high U64), then the double sum when there is one.
  static void Serialize(const State& s, ByteWriter& w, const AggContext&) {
    constexpr __int128 kMin = INT64_MIN, kMax = INT64_MAX;
    const bool wide = s.int_sum < kMin || s.int_sum > kMax;
    w.PutU8(static_cast<uint8_t>((s.has_double ? 1 : 0) | (wide ? 2 : 0)));
    if (wide) {
      const auto bits = static_cast<unsigned __int128>(s.int_sum);
      w.PutU64(static_cast<uint64_t>(bits));
      w.PutU64(static_cast<uint64_t>(bits >> 64));
    } else {
      w.PutSignedVarint(static_cast<int64_t>(s.int_sum));
    }
    if (s.has_double) w.PutDouble(s.double_sum);
  }
  static bool Deserialize(State& s, ByteReader& r, AggContext&) {
    uint8_t flags;
    if (!r.ReadU8(&flags)) return false;
    if (flags > 3) return r.Fail();
    State out;
    if (flags & 2) {
      uint64_t low, high;
      if (!r.ReadU64(&low) || !r.ReadU64(&high)) return false;
      out.int_sum = static_cast<__int128>((static_cast<unsigned __int128>(high) << 64) | low);
    } else {
      int64_t narrow;
      if (!r.ReadSignedVarint(&narrow)) return false;
      out.int_sum = narrow;
    }
    out.has_double = (flags & 1) != 0;
    if (out.has_double && !r.ReadDouble(&out.double_sum)) return false;
    s = out;
    return true;
  }
  static void SerializeInput(const Input& x, ByteWriter& w, const AggContext&) { SerializeNumeric(x, w); }
  static bool DeserializeInput(Input& x, ByteReader& r, AggContext&) { return DeserializeNumeric(&x, r); }
};

struct MeanAgg {
  using Input = Numeric;
  struct State {
    int64_t count = 0;
    SumAgg::State sum;
  };
  static bool MakeInput(const Value& v, AggContext&, Input* out) { return MakeNumeric(v, out); }
  static bool Commutes(const Input& x) { return SumAgg::Commutes(x); }
  static void Add(State& s, const Input& x, int64_t t, uint64_t q, const AggContext& c) {
    ++s.count;
    SumAgg::Add(s.sum, x, t, q, c);
  }
  static void Merge(State& s, const State& o, const AggContext& c) {
    s.count += o.count;
    SumAgg::Merge(s.sum, o.sum, c);
  }
  static Value Finalize(const State& s, const AggContext&) {
    if (s.count == 0) return Value::Null();
    return Value::Double((static_cast<double>(s.sum.int_sum) + s.sum.double_sum) / static_cast<double>(s.count));
  }
  static size_t MemoryBytes(const State&) { return 0; }
  static void Serialize(const State& s, ByteWriter& w, const AggContext& c) {
    w.PutSignedVarint(s.count);
    SumAgg::Serialize(s.sum, w, c);
  }
  static bool Deserialize(State& s, ByteReader& r, AggContext& c) {
    State out;
    if (!r.ReadSignedVarint(&out.count) || !SumAgg::Deserialize(out.sum, r, c)) return false;
    s = out;
    return true;
  }
  static void SerializeInput(const Input& x, ByteWriter& w, const AggContext&) { SerializeNumeric(x, w); }
  static bool DeserializeInput(Input& x, ByteReader& r, AggContext&) { return DeserializeNumeric(&x, r); }
};

template <bool kMin>
struct ExtremeAgg {
  static constexpr bool kExactMerge = true;  // Order-independent, ties included (see Add).
  using Input = Numeric;
  struct State {
    bool has = false;
    Numeric value;
  };
  static bool MakeInput(const Value& v, AggContext&, Input* out) { return MakeNumeric(v, out); }
  static void Add(State& s, const Input& x, int64_t, uint64_t, const AggContext&) {
    // On a tie between an integer and a double of equal value the integer wins, so the result does
    // not depend on the order events arrive in.
    const long double a = x.as_long_double(), b = s.value.as_long_double();
    if (!s.has || (kMin ? a < b : a > b) || (a == b && x.is_int && !s.value.is_int)) {
      s.has = true;
      s.value = x;
    }
  }
  static void Merge(State& s, const State& o, const AggContext& c) {
    if (o.has) Add(s, o.value, 0, 0, c);
  }
  static Value Finalize(const State& s, const AggContext&) { return s.has ? s.value.ToValue() : Value::Null(); }
  static size_t MemoryBytes(const State&) { return 0; }
  static void Serialize(const State& s, ByteWriter& w, const AggContext&) {
    w.PutBool(s.has);
    if (s.has) SerializeNumeric(s.value, w);
  }
  static bool Deserialize(State& s, ByteReader& r, AggContext&) {
    State out;
    if (!r.ReadBool(&out.has)) return false;
    if (out.has && !DeserializeNumeric(&out.value, r)) return false;
    s = out;
    return true;
  }
  static void SerializeInput(const Input& x, ByteWriter& w, const AggContext&) { SerializeNumeric(x, w); }
  static bool DeserializeInput(Input& x, ByteReader& r, AggContext&) { return DeserializeNumeric(&x, r); }
};
using MinAgg = ExtremeAgg<true>;
using MaxAgg = ExtremeAgg<false>;

// Population standard deviation by Welford's update and Chan et al.'s parallel merge.
struct StddevAgg {
  using Input = Numeric;
  struct State {
    int64_t count = 0;
    double mean = 0;
    double m2 = 0;  // Sum of squared deviations from the mean.
  };
  static bool MakeInput(const Value& v, AggContext&, Input* out) { return MakeNumeric(v, out); }
  static void Add(State& s, const Input& x, int64_t, uint64_t, const AggContext&) {
    const double v = x.as_double();
    ++s.count;
    const double delta = v - s.mean;
    s.mean += delta / static_cast<double>(s.count);
    s.m2 += delta * (v - s.mean);
  }
  static void Merge(State& s, const State& o, const AggContext&) {
    if (o.count == 0) return;
    if (s.count == 0) {
      s = o;
      return;
    }
    const double n = static_cast<double>(s.count + o.count);
    const double delta = o.mean - s.mean;
    s.m2 += o.m2 + delta * delta * static_cast<double>(s.count) * static_cast<double>(o.count) / n;
    s.mean += delta * static_cast<double>(o.count) / n;
    s.count += o.count;
  }
  static Value Finalize(const State& s, const AggContext&) {
    if (s.count == 0) return Value::Null();
    return Value::Double(std::sqrt(std::max(0.0, s.m2 / static_cast<double>(s.count))));
  }
  static size_t MemoryBytes(const State&) { return 0; }
  static void Serialize(const State& s, ByteWriter& w, const AggContext&) {
    w.PutSignedVarint(s.count);
    w.PutDouble(s.mean);
    w.PutDouble(s.m2);
  }
  static bool Deserialize(State& s, ByteReader& r, AggContext&) {
    State out;
    if (!r.ReadSignedVarint(&out.count) || !r.ReadDouble(&out.mean) || !r.ReadDouble(&out.m2)) return false;
    s = out;
    return true;
  }
  static void SerializeInput(const Input& x, ByteWriter& w, const AggContext&) { SerializeNumeric(x, w); }
  static bool DeserializeInput(Input& x, ByteReader& r, AggContext&) { return DeserializeNumeric(&x, r); }
};

// The value of the latest (kLatest) or the earliest event by event time; a tie in time goes to the later
// (kLatest) or the earlier event in input order. `last` and `first` are the two instances.
template <bool kLatest>
struct TimeExtremeAgg {
  using Input = Scalar;
  struct State {
    bool has = false;
    int64_t time_ms = 0;
    uint64_t seq = 0;  // Input order: breaks a tie on time.
    Scalar value;
  };
  // Whether an event at (time_ms, seq) replaces the one the state holds.
  static bool Wins(const State& s, int64_t time_ms, uint64_t seq) {
    if (!s.has) return true;
    if (time_ms != s.time_ms) return kLatest ? time_ms > s.time_ms : time_ms < s.time_ms;
    return kLatest ? seq > s.seq : seq < s.seq;
  }
  static bool MakeInput(const Value& v, AggContext& c, Input* out) { return MakeScalar(v, c, out); }
  static void Add(State& s, const Input& x, int64_t time_ms, uint64_t seq, const AggContext&) {
    if (Wins(s, time_ms, seq)) s = State{true, time_ms, seq, x};
  }
  // (time, input order) orders all events strictly: the winner is the same in any order of Adds.
  static bool Commutes(const Input&) { return true; }
  static void Merge(State& s, const State& o, const AggContext& c) {
    if (o.has) Add(s, o.value, o.time_ms, o.seq, c);
  }
  static Value Finalize(const State& s, const AggContext& c) { return s.has ? s.value.ToValue(c) : Value::Null(); }
  static size_t MemoryBytes(const State&) { return 0; }
  static void Serialize(const State& s, ByteWriter& w, const AggContext& c) {
    w.PutBool(s.has);
    if (!s.has) return;
    w.PutSignedVarint(s.time_ms);
    w.PutVarint(s.seq);
    SerializeScalar(s.value, w, c);
  }
  static bool Deserialize(State& s, ByteReader& r, AggContext& c) {
    State out;
    if (!r.ReadBool(&out.has)) return false;
    if (out.has && (!r.ReadSignedVarint(&out.time_ms) || !r.ReadVarint(&out.seq) ||
                    !DeserializeScalar(&out.value, r, c))) {
      return false;
    }
    s = out;
    return true;
  }
  static void SerializeInput(const Input& x, ByteWriter& w, const AggContext& c) { SerializeScalar(x, w, c); }
  static bool DeserializeInput(Input& x, ByteReader& r, AggContext& c) { return DeserializeScalar(&x, r, c); }
};
using LastAgg = TimeExtremeAgg<true>;
using FirstAgg = TimeExtremeAgg<false>;

// The nearest-rank percentile p of the numeric values: with n values sorted ascending, the one at rank
// max(1, ceil(p * n)) (p = 0 is the minimum, p = 1 the maximum), as a double; null for no values. Exact up
// to QuantileSketch::kLevelCapacity values in the window, then within the rank bound of quantile_sketch.h.
// p comes from AggContext::percentile_ppm, so the rank is computed in integers, without rounding.
struct ApproxPercentileAgg {
  using Input = double;
  struct State {
    QuantileSketch sketch;
  };
  static bool MakeInput(const Value& v, AggContext&, Input* out) {
    if (!v.is_number()) return false;
    *out = v.as_double();
    return true;
  }
  static void Add(State& s, const Input& x, int64_t, uint64_t, const AggContext&) { s.sketch.Add(x); }
  static void Merge(State& s, const State& o, const AggContext&) { s.sketch.Merge(o.sketch); }
  // The rank of percentile `ppm` (millionths) among n values: max(1, ceil(ppm * n / 10^6)).
  static uint64_t Rank(int64_t ppm, uint64_t n) {
    const unsigned __int128 scaled = static_cast<unsigned __int128>(ppm) * n;
    const uint64_t rank = static_cast<uint64_t>((scaled + 999999) / 1000000);
    return std::max<uint64_t>(rank, 1);
  }
  static Value Finalize(const State& s, const AggContext& c) {
    if (s.sketch.count() == 0) return Value::Null();
    return Value::Double(s.sketch.ValueAtRank(Rank(c.percentile_ppm, s.sketch.count())));
  }
  static size_t MemoryBytes(const State& s) { return s.sketch.memory_bytes(); }
  static void Serialize(const State& s, ByteWriter& w, const AggContext&) { s.sketch.Serialize(w); }
  static bool Deserialize(State& s, ByteReader& r, AggContext&) { return s.sketch.Deserialize(r); }
  static void SerializeInput(const Input& x, ByteWriter& w, const AggContext&) { w.PutDouble(x); }
  static bool DeserializeInput(Input& x, ByteReader& r, AggContext&) { return r.ReadDouble(&x); }
};

// Exact distinct count over a sorted set of normalized keys; the first few live inline in the state.
struct CountDistinctAgg {
  // Numbers are normalized so that 1 and 1.0 are one value; strings are interned ids.
  struct Input {
    uint8_t kind = 0;  // 0 bool, 1 integer (or integral double), 2 other double, 3 string.
    uint64_t bits = 0;
    bool operator<(const Input& o) const { return kind != o.kind ? kind < o.kind : bits < o.bits; }
    bool operator==(const Input& o) const { return kind == o.kind && bits == o.bits; }
  };
  using State = SmallVector<Input, 3>;
  static bool MakeInput(const Value& v, AggContext& c, Input* out) {
    if (v.type == ValueType::kString) {
      *out = Input{3, c.strings.Intern(v.s)};
      return true;
    }
    return MakeNonStringInput(v, out);
  }
  // The key of a boolean or number; false for anything else.
  static bool MakeNonStringInput(const Value& v, Input* out) {
    switch (v.type) {
      case ValueType::kBool: *out = Input{0, v.b ? 1u : 0u}; return true;
      case ValueType::kInt: *out = Input{1, static_cast<uint64_t>(v.i)}; return true;
      case ValueType::kDouble: {
        const double d = v.d;
        if (d == std::trunc(d) && d >= -9223372036854775808.0 && d < 9223372036854775808.0) {
          *out = Input{1, static_cast<uint64_t>(static_cast<int64_t>(d))};
        } else {
          uint64_t bits;
          const double canonical = d == 0 ? 0.0 : d;
          std::memcpy(&bits, &canonical, sizeof(bits));
          *out = Input{2, bits};
        }
        return true;
      }
      default: return false;
    }
  }
  static bool Commutes(const Input&) { return true; }  // A sorted set.
  static void Add(State& s, const Input& x, int64_t, uint64_t, const AggContext&) {
    Input* it = Place(s, x);
    if (it == s.end() || !(*it == x)) s.insert(it, x);
  }
  // Where x is or would go in the sorted set.
  static Input* Place(State& s, const Input& x) {
    // Most sets are small: a scan to the key's place mispredicts once, a binary search at every step.
    Input* it = s.begin();
    if (s.size() <= kScanBelow) {
      while (it != s.end() && *it < x) ++it;
    } else {
      it = std::lower_bound(s.begin(), s.end(), x);
    }
    return it;
  }
  static constexpr uint32_t kScanBelow = 16;
  static void Merge(State& s, const State& o, const AggContext& c) {
    if (s.empty()) {
      s = o;
      return;
    }
    for (const Input& x : o) Add(s, x, 0, 0, c);
  }
  static Value Finalize(const State& s, const AggContext&) { return Value::Int(static_cast<int64_t>(s.size())); }
  static size_t MemoryBytes(const State& s) { return s.heap_bytes(); }

  // A key: its kind byte, then a boolean byte, a SignedVarint, a double's bits, or a string's text.
  static void SerializeInput(const Input& x, ByteWriter& w, const AggContext& c) {
    w.PutU8(x.kind);
    switch (x.kind) {
      case 0: w.PutBool(x.bits != 0); return;
      case 1: w.PutSignedVarint(static_cast<int64_t>(x.bits)); return;
      case 2: w.PutU64(x.bits); return;
      default: w.PutString(c.strings.Get(static_cast<uint32_t>(x.bits))); return;
    }
  }
  static bool DeserializeInput(Input& x, ByteReader& r, AggContext& c) {
    Input out;
    if (!r.ReadU8(&out.kind)) return false;
    switch (out.kind) {
      case 0: {
        bool b;
        if (!r.ReadBool(&b)) return false;
        out.bits = b ? 1 : 0;
        break;
      }
      case 1: {
        int64_t i;
        if (!r.ReadSignedVarint(&i)) return false;
        out.bits = static_cast<uint64_t>(i);
        break;
      }
      case 2:
        if (!r.ReadU64(&out.bits)) return false;
        break;
      case 3: {
        std::string_view text;
        if (!r.ReadString(&text)) return false;
        out.bits = c.strings.Intern(text);
        break;
      }
      default: return r.Fail();
    }
    x = out;
    return true;
  }
  // The number of keys, then each key. The set is sorted by pool id for strings, which differ between
  // processes, so a loaded set is sorted again.
  static void Serialize(const State& s, ByteWriter& w, const AggContext& c) {
    w.PutVarint(s.size());
    for (const Input& x : s) SerializeInput(x, w, c);
  }
  static bool Deserialize(State& s, ByteReader& r, AggContext& c) {
    uint64_t n;
    if (!r.ReadCount(&n, 2)) return false;
    std::vector<Input> keys(static_cast<size_t>(n));
    for (Input& x : keys) {
      if (!DeserializeInput(x, r, c)) return false;
    }
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    State out;
    out.reserve(static_cast<uint32_t>(keys.size()));
    for (const Input& x : keys) out.push_back(x);
    s = std::move(out);
    return true;
  }
};

// The key of a combination of field values (count_distinct over a list of fields), as bytes that two
// combinations share only when each of their values is equal as CountDistinctAgg compares them: per value its
// kind byte, then 8 bytes of its normalized bits, or a string's length (Varint) and text. The length prefix
// keeps ("a,b", "c") and ("a", "b,c") apart. False when a value is not a boolean, number or string.
inline bool AppendTupleKey(const Value& v, std::string* out) {
  CountDistinctAgg::Input key;
  if (v.type == ValueType::kString) {
    key.kind = 3;
  } else if (!CountDistinctAgg::MakeNonStringInput(v, &key)) {
    return false;
  }
  ByteWriter w(out);
  w.PutU8(key.kind);
  if (key.kind == 3) {
    w.PutString(v.s);
  } else {
    w.PutU64(key.bits);
  }
  return true;
}

struct ApproxCountDistinctAgg {
  using Input = uint64_t;  // The value's 64-bit hash.
  struct State {
    HyperLogLog sketch{0};  // Precision 0 marks "not yet created"; see Sketch().
  };
  static bool MakeInput(const Value& v, AggContext& c, Input* out) {
    CountDistinctAgg::Input key;
    if (v.type == ValueType::kString) {
      *out = HashBytes(v.s.data(), v.s.size(), 0x5354524Eu);  // Hash the text, not the pool id.
      return true;
    }
    if (!CountDistinctAgg::MakeInput(v, c, &key)) return false;
    *out = HashBytes(&key.bits, sizeof(key.bits), 0x4E554D00u + key.kind);
    return true;
  }
  // The sparse list is a sorted set and the dense registers are maxima: the same sketch in any order.
  static bool Commutes(const Input&) { return true; }
  static void Add(State& s, const Input& x, int64_t, uint64_t, const AggContext& c) {
    if (s.sketch.precision() == 0) s.sketch = HyperLogLog(c.precision);
    s.sketch.AddHash(x);
  }
  static void Merge(State& s, const State& o, const AggContext& c) {
    if (o.sketch.precision() == 0) return;
    if (s.sketch.precision() == 0) s.sketch = HyperLogLog(c.precision);
    s.sketch.Merge(o.sketch);
  }
  static Value Finalize(const State& s, const AggContext&) {
    return Value::Int(s.sketch.precision() == 0 ? 0 : static_cast<int64_t>(s.sketch.Estimate()));
  }
  static size_t MemoryBytes(const State& s) { return s.sketch.memory_bytes(); }
  // A presence byte, then the sketch (see HyperLogLog::Serialize), whose precision must be the feature's.
  static void Serialize(const State& s, ByteWriter& w, const AggContext&) {
    const bool created = s.sketch.precision() != 0;
    w.PutBool(created);
    if (created) s.sketch.Serialize(w);
  }
  static bool Deserialize(State& s, ByteReader& r, AggContext& c) {
    bool created;
    if (!r.ReadBool(&created)) return false;
    if (!created) {
      s = State{};
      return true;
    }
    HyperLogLog sketch(c.precision);
    if (!sketch.Deserialize(r, c.precision)) return false;
    s.sketch = std::move(sketch);
    return true;
  }
  static void SerializeInput(const Input& x, ByteWriter& w, const AggContext&) { w.PutU64(x); }
  static bool DeserializeInput(Input& x, ByteReader& r, AggContext&) { return r.ReadU64(&x); }
};

// Marks: what FeatureEngine keeps per recent event to rewind a partial aggregate to before that event (see
// window/windows.h). By default a copy of the state before the event: small for every aggregation but the
// set of count_distinct (copied, and allocated, per event) and a HyperLogLog's registers once dense (2^p
// bytes per recent event of a busy key). count_distinct instead keeps the size of its set, and rewinds by
// removing the values that its events added.
//   Mark
//   Before(const State&, const Input&) -> Mark        just before Add
//   Rewound(const State&, span<const E*> events) -> State
//       `events` are the events added to the state from events[0] on, in order, each with `input` and its
//       mark in `before.agg`; returns the state as it was before events[0].
//   Rewind(State&, span<const E*> events)     optional: the same in place (RewindMarks below calls it when
//       there is one), for rewinding a window's own state without copying it (count_distinct's set is copied
//       to the heap once it holds more than a few values, and a busy key's late events rewind it often).
//   InsertFirst(State&, const Input& x, time, seq, span<E*> events, ctx) -> Mark
//       only for an x that Agg::Commutes (MayCommute below): x comes, in (time, input order) order, just before `events`, which
//       (as above) are every event added to the state from events[0] on. Adds x to the state, updates the
//       events' marks to what they would have been had x been added first, and returns x's mark: the same
//       state and marks as rewinding to before events[0] and adding x and then the events, without undoing
//       and redoing every event.
template <typename Agg>
struct AggMarks {
  using Mark = typename Agg::State;
  static Mark Before(const typename Agg::State& s, const typename Agg::Input&) { return s; }
  template <typename E>
  static typename Agg::State Rewound(const typename Agg::State&, std::span<const E* const> events) {
    return events.front()->before.agg;
  }
  // Each later event's state before it now holds x as well: since x commutes, adding it last gives that state.
  template <typename E>
  static Mark InsertFirst(typename Agg::State& s, const typename Agg::Input& x, int64_t time, uint64_t seq,
                          std::span<E* const> events, const AggContext& c) {
    Mark mark = events.front()->before.agg;
    for (E* e : events) Agg::Add(e->before.agg, x, time, seq, c);
    Agg::Add(s, x, time, seq, c);
    return mark;
  }
  static size_t MemoryBytes(const Mark& m) { return Agg::MemoryBytes(m); }
  static void Serialize(const Mark& m, ByteWriter& w, const AggContext& c) { Agg::Serialize(m, w, c); }
  static bool Deserialize(Mark& m, ByteReader& r, AggContext& c) { return Agg::Deserialize(m, r, c); }
};

template <>
struct AggMarks<CountDistinctAgg> {
  using State = CountDistinctAgg::State;
  // The size of the set before the event: the event added a value when the next mark (or the final set)
  // is larger. Reading it costs nothing on the hot path; the set is searched only when rewinding.
  using Mark = uint32_t;
  static Mark Before(const State& s, const CountDistinctAgg::Input&) { return s.size(); }
  template <typename E>
  static State Rewound(const State& s, std::span<const E* const> events) {
    State out = s;
    Rewind(out, events);
    return out;
  }
  template <typename E>
  static void Rewind(State& s, std::span<const E* const> events) {
    const uint32_t final_size = s.size();
    for (size_t k = 0; k < events.size(); ++k) {
      const uint32_t after = k + 1 < events.size() ? events[k + 1]->before.agg : final_size;
      if (after == events[k]->before.agg) continue;
      CountDistinctAgg::Input* it = CountDistinctAgg::Place(s, events[k]->input);
      if (it != s.end() && *it == events[k]->input) s.erase(it);
    }
  }
  // x's value is new before events[0] when no earlier event brought it: then the set before each event up to
  // the first one that held the value (which no longer adds it), or before every event if none did, is one
  // larger. Whether an earlier event brought it shows in the first event with that value (did it add it?), or,
  // when no event has it, in the set itself.
  template <typename E>
  static Mark InsertFirst(State& s, const CountDistinctAgg::Input& x, int64_t, uint64_t, std::span<E* const> events,
                          const AggContext&) {
    const Mark mark = events.front()->before.agg;
    size_t holder = 0;  // The first event with x's value.
    while (holder < events.size() && !(events[holder]->input == x)) ++holder;
    if (holder < events.size()) {
      const uint32_t after = holder + 1 < events.size() ? events[holder + 1]->before.agg : s.size();
      if (after == events[holder]->before.agg) return mark;  // The value was there before events[0].
    } else {
      CountDistinctAgg::Input* it = CountDistinctAgg::Place(s, x);
      if (it != s.end() && *it == x) return mark;
      s.insert(it, x);
    }
    const size_t grows = std::min(holder + 1, events.size());
    for (size_t k = 0; k < grows; ++k) ++events[k]->before.agg;
    return mark;
  }
  static size_t MemoryBytes(const Mark&) { return 0; }
  static void Serialize(const Mark& m, ByteWriter& w, const AggContext&) { w.PutVarint(m); }
  static bool Deserialize(Mark& m, ByteReader& r, AggContext&) {
    uint64_t size;
    if (!r.ReadVarint(&size) || size > UINT32_MAX) return r.Fail();
    m = static_cast<uint32_t>(size);
    return true;
  }
};

// Aggregations with a Commutes(input): whether adding that input commutes with every other Add, i.e. the state
// after any set of events that includes it is the same, bit for bit, in whatever order they were added. Then an
// event that arrives after later events of its key, but joins the same partial aggregate, is added as it comes
// (AggMarks::InsertFirst) instead of rewinding and re-applying the events it overtakes. This is the one place
// that decides it, per aggregation: count, count_distinct, approx_count_distinct, first and last always; sum and
// mean for integers (a double's rounding depends on the sum before it). Not min and max (a tie between 0.0 and
// -0.0 keeps the first), stddev (floating point), approx_percentile (its compaction depends on the order), top_k
// (its summary depends on the order beyond the exact range) and last_k (list marks that assume time order).
template <typename Agg>
concept MayCommute = requires(const typename Agg::Input& x) {
  { Agg::Commutes(x) } -> std::same_as<bool>;
};

// Rewinds `s` in place to before events[0] (see AggMarks): with the aggregation's Rewind when it has one,
// else by assigning what Rewound returns.
template <typename Agg, typename E>
void RewindMarks(typename Agg::State& s, std::span<const E* const> events) {
  if constexpr (requires { AggMarks<Agg>::Rewind(s, events); }) {
    AggMarks<Agg>::Rewind(s, events);
  } else {
    s = AggMarks<Agg>::Rewound(s, events);
  }
}

}  // namespace freshet

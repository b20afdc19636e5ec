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
// A default-constructed State is the empty aggregate. The windows in window/ hold and combine them.
//
// Semantics (empty-window value in brackets): count [0]; sum [0] exact integer when every input is an
// integer and the total fits int64, else a double; mean [null]; min/max [null] by numeric value, keeping
// the winner's type (an integer wins a tie with an equal double); stddev [null] population; last [null] the value of the latest event, ties broken by
// input order; count_distinct [0] exact (strings by text, numbers by value, booleans);
// approx_count_distinct [0] HyperLogLog (see hyperloglog.h).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "aggregate/hyperloglog.h"
#include "aggregate/small_vector.h"
#include "aggregate/string_pool.h"
#include "common/value.h"

namespace freshet {

// Per-feature context shared by all of a feature's states.
struct AggContext {
  StringPool strings;  // last, count_distinct: string values by id.
  int precision = 14;  // approx_count_distinct.
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

struct CountAgg {
  struct Input {};
  using State = int64_t;
  static bool MakeInput(const Value&, AggContext&, Input*) { return true; }
  static void Add(State& s, const Input&, int64_t, uint64_t, const AggContext&) { ++s; }
  static void Merge(State& s, const State& o, const AggContext&) { s += o; }
  static Value Finalize(const State& s, const AggContext&) { return Value::Int(s); }
  static size_t MemoryBytes(const State&) { return 0; }
};

struct SumAgg {
  using Input = Numeric;
  struct State {
    __int128 int_sum = 0;  // Exact sum of the integer inputs.
    double double_sum = 0;
    bool has_double = false;
  };
  static bool MakeInput(const Value& v, AggContext&, Input* out) { return MakeNumeric(v, out); }
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
};

struct MeanAgg {
  using Input = Numeric;
  struct State {
    int64_t count = 0;
    SumAgg::State sum;
  };
  static bool MakeInput(const Value& v, AggContext&, Input* out) { return MakeNumeric(v, out); }
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
};

template <bool kMin>
struct ExtremeAgg {
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
};

struct LastAgg {
  using Input = Scalar;
  struct State {
    bool has = false;
    int64_t time_ms = 0;
    uint64_t seq = 0;  // Input order: the later event wins a tie on time.
    Scalar value;
  };
  static bool MakeInput(const Value& v, AggContext& c, Input* out) { return MakeScalar(v, c, out); }
  static void Add(State& s, const Input& x, int64_t time_ms, uint64_t seq, const AggContext&) {
    if (!s.has || time_ms > s.time_ms || (time_ms == s.time_ms && seq > s.seq)) {
      s.has = true;
      s.time_ms = time_ms;
      s.seq = seq;
      s.value = x;
    }
  }
  static void Merge(State& s, const State& o, const AggContext& c) {
    if (o.has) Add(s, o.value, o.time_ms, o.seq, c);
  }
  static Value Finalize(const State& s, const AggContext& c) { return s.has ? s.value.ToValue(c) : Value::Null(); }
  static size_t MemoryBytes(const State&) { return 0; }
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
      case ValueType::kString: *out = Input{3, c.strings.Intern(v.s)}; return true;
      default: return false;
    }
  }
  static void Add(State& s, const Input& x, int64_t, uint64_t, const AggContext&) {
    auto it = std::lower_bound(s.begin(), s.end(), x);
    if (it == s.end() || !(*it == x)) s.insert(it, x);
  }
  static void Merge(State& s, const State& o, const AggContext& c) {
    if (s.empty()) {
      s = o;
      return;
    }
    for (const Input& x : o) Add(s, x, 0, 0, c);
  }
  static Value Finalize(const State& s, const AggContext&) { return Value::Int(static_cast<int64_t>(s.size())); }
  static size_t MemoryBytes(const State& s) { return s.heap_bytes(); }
};

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
};

}  // namespace freshet

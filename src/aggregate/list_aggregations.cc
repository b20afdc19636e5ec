#include "aggregate/list_aggregations.h"

#include <cstring>

#include "serve/json.h"

namespace freshet {

namespace {

double KeyDouble(const CountDistinctAgg::Input& key) {
  double d;
  std::memcpy(&d, &key.bits, sizeof(d));
  return d;
}

// A Value of the list text, kept in the feature's context until its states change.
Value Kept(const std::string& text, const AggContext& ctx) { return Value::String(ctx.rendered.Keep(text)); }

}  // namespace

static void WriteKeyJson(const CountDistinctAgg::Input& key, const AggContext& ctx, JsonWriter& json) {
  switch (key.kind) {
    case 0: json.Bool(key.bits != 0); return;
    case 1: json.Int(static_cast<int64_t>(key.bits)); return;
    case 2: json.Double(KeyDouble(key)); return;
    default: json.String(ctx.strings.Get(static_cast<uint32_t>(key.bits))); return;
  }
}

// Whether a ranks before b among equally frequent values: booleans (false first), then numbers by value (an
// integer and a double compared exactly, as long doubles), then strings bytewise.
static bool TieBefore(const CountDistinctAgg::Input& a, const CountDistinctAgg::Input& b, const AggContext& c) {
  auto group = [](uint8_t kind) { return kind == 0 ? 0 : kind == 3 ? 2 : 1; };
  if (group(a.kind) != group(b.kind)) return group(a.kind) < group(b.kind);
  switch (a.kind) {
    case 0: return a.bits < b.bits;
    case 3: return c.strings.Get(static_cast<uint32_t>(a.bits)) < c.strings.Get(static_cast<uint32_t>(b.bits));
    default: {
      auto number = [](const CountDistinctAgg::Input& x) {
        return x.kind == 1 ? static_cast<long double>(static_cast<int64_t>(x.bits)) : KeyDouble(x);
      };
      return number(a) < number(b);
    }
  }
}

Value TopKAgg::Finalize(const State& s, const AggContext& c) {
  thread_local std::vector<const Counter*> ranked;
  ranked.clear();
  for (const Counter& counter : s.counters) ranked.push_back(&counter);
  const size_t k = std::min(ranked.size(), static_cast<size_t>(c.k));
  std::partial_sort(ranked.begin(), ranked.begin() + static_cast<ptrdiff_t>(k), ranked.end(),
                    [&](const Counter* a, const Counter* b) {
                      return a->count != b->count ? a->count > b->count : TieBefore(a->key, b->key, c);
                    });
  thread_local std::string text;
  text.clear();
  JsonWriter json(&text);
  json.BeginArray();
  for (size_t i = 0; i < k; ++i) {
    json.BeginObject().Key("value");
    WriteKeyJson(ranked[i]->key, c, json);
    json.Key("count").Int(ranked[i]->count).EndObject();
  }
  json.EndArray();
  return Kept(text, c);
}

Value LastKAgg::Finalize(const State& s, const AggContext& c) {
  thread_local std::string text;
  text.clear();
  JsonWriter json(&text);
  json.BeginArray();
  for (const Item& item : s.items) json.FeatureValue(item.value.ToValue(c));
  json.EndArray();
  return Kept(text, c);
}

}  // namespace freshet

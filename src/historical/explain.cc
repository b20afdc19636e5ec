#include "historical/explain.h"

#include <simdjson.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <numeric>
#include <sstream>

#include "aggregate/list_aggregations.h"
#include "common/time.h"
#include "engine/feature_engine.h"
#include "event/event_parser.h"
#include "serve/json.h"
#include "serve/spec_json.h"

namespace freshet {
namespace {

// The feature's window operator, asked how many events it holds: a count over the same window, so that which
// events a window covers comes from the window code itself (window/windows.h), not from a second description.
class WindowProbe {
 public:
  explicit WindowProbe(const FeatureSpec& feature) {
    FeatureSpec count;
    count.name = feature.name;
    count.agg = AggKind::kCount;
    count.window = feature.window;
    op_ = MakeFeatureOperator(count, /*buffered=*/false);
    storage_.resize(op_->state_bytes() + op_->state_align());
    InputCell cell;
    (void)op_->Extract(Value::Null(), &cell);
    cell_ = cell;
  }

  // How many of the events at `times` (in time order) the window as of t holds.
  int64_t CountAsOf(const std::vector<int64_t>& times, int64_t t) {
    void* state = Aligned();
    op_->Construct(state);
    uint64_t seq = 0;
    for (int64_t time : times) op_->Apply(state, cell_, time, seq++, std::numeric_limits<int64_t>::min());
    const Value value = op_->Query(state, t);
    op_->Destroy(state);
    return value.type == ValueType::kInt ? value.i : 0;
  }

 private:
  void* Aligned() {
    void* p = storage_.data();
    size_t space = storage_.size();
    return std::align(op_->state_align(), op_->state_bytes(), p, space);
  }
  std::unique_ptr<FeatureOperator> op_;
  std::vector<unsigned char> storage_;
  InputCell cell_;
};

std::string ValueJson(const Value& value, bool json_list = false) {
  std::string out;
  JsonWriter json(&out);
  json.FeatureValue(value, json_list);
  return out;
}

// What one observed event of the entity is, for the feature, before windows are looked at.
struct Observed {
  ExplainedEvent event;
  EventFate fate = EventFate::kAccepted;
  bool where_true = true;
  bool field_usable = true;
  size_t order = 0;  // Input order among the observed events.
};

std::string FieldDescription(const FeatureSpec& f, const Value& field) {
  const std::string name = "field '" + f.field + "'";
  switch (field.type) {
    case ValueType::kMissing: return name + " is missing";
    case ValueType::kNull: return name + " is null";
    case ValueType::kComposite: return name + " is an object or array, not a value " + AggKindName(f.agg) + " takes";
    case ValueType::kString:
      return name + " is a string, and " + AggKindName(f.agg) + " takes numbers (a number in quotes is text)";
    default: return name + " is a " + ValueTypeName(field.type) + ", which " + AggKindName(f.agg) + " does not take";
  }
}

// Judges one event for the feature: its `where`, and its field by the operator's own Extract.
void Judge(const FeatureSpec& f, FeatureOperator& op, const ParsedEvent& event, Observed* out) {
  out->where_true = !f.where || f.where->Eval(event.slots);
  if (f.field_slot < 0) return;
  const Value field = event.slots[static_cast<size_t>(f.field_slot)];
  if (field.type != ValueType::kMissing) out->event.field_json = ValueJson(field);
  InputCell cell;
  out->field_usable = field.is_present_non_null() && op.Extract(field, &cell);
  if (!out->field_usable) out->event.detail = FieldDescription(f, field);
}

std::string WindowText(const WindowSpec& w, int64_t at) {
  switch (w.kind) {
    case WindowKind::kLifetime: return "lifetime: every event at or before " + FormatRfc3339(at);
    case WindowKind::kSliding:
      if (w.slide_ms == 0) {
        return "sliding " + FormatDuration(w.size_ms) + ": events with " + FormatRfc3339(at - w.size_ms) +
               " < time <= " + FormatRfc3339(at);
      } else {
        const int64_t start = (FloorDiv(at, w.slide_ms) - (w.size_ms / w.slide_ms - 1)) * w.slide_ms;
        return "sliding " + FormatDuration(w.size_ms) + " in tiles of " + FormatDuration(w.slide_ms) +
               ": the tile holding the as-of time and the " + std::to_string(w.size_ms / w.slide_ms - 1) +
               " before it, events from " + FormatRfc3339(start) + " to " + FormatRfc3339(at);
      }
    case WindowKind::kTumbling:
      return "tumbling " + FormatDuration(w.size_ms) + ": the bucket holding the as-of time, events from " +
             FormatRfc3339(FloorDiv(at, w.size_ms) * w.size_ms) + " to " + FormatRfc3339(at);
    case WindowKind::kSession:
      return "session, gap " + FormatDuration(w.gap_ms) +
             ": the run of contributing events less than the gap apart that ends at the newest one, empty once the "
             "as-of time is a gap or more after it";
  }
  return "";
}

std::string Joined(const std::vector<std::string>& items, const char* separator) {
  std::string out;
  for (size_t k = 0; k < items.size(); ++k) out += (k > 0 ? separator : "") + items[k];
  return out;
}

std::string Arithmetic(const FeatureSpec& f, const std::vector<const ExplainedEvent*>& counted,
                       const std::string& value) {
  std::vector<std::string> fields;
  for (const ExplainedEvent* e : counted) fields.push_back(e->field_json);
  const std::string n = std::to_string(counted.size());
  if (counted.empty()) {
    return "no event counts: the empty window's value, " + value;
  }
  switch (f.agg) {
    case AggKind::kCount: return n + (counted.size() == 1 ? " event counts" : " events count") + " = " + value;
    case AggKind::kSum: return Joined(fields, " + ") + " = " + value;
    case AggKind::kMean: return "(" + Joined(fields, " + ") + ") / " + n + " = " + value;
    case AggKind::kMin: return "min(" + Joined(fields, ", ") + ") = " + value;
    case AggKind::kMax: return "max(" + Joined(fields, ", ") + ") = " + value;
    case AggKind::kStddev:
      return "population standard deviation of [" + Joined(fields, ", ") + "] (" + n + " values) = " + value;
    case AggKind::kLast: {
      const ExplainedEvent* latest = counted.front();
      for (const ExplainedEvent* e : counted) {
        if (e->time_ms >= latest->time_ms) latest = e;
      }
      return "the field of the latest counted event (" + FormatRfc3339(latest->time_ms) + ", #" +
             std::to_string(latest->number) + ") = " + value;
    }
    case AggKind::kFirst: {
      const ExplainedEvent* earliest = counted.front();
      for (const ExplainedEvent* e : counted) {
        if (e->time_ms < earliest->time_ms) earliest = e;
      }
      return "the field of the earliest counted event (" + FormatRfc3339(earliest->time_ms) + ", #" +
             std::to_string(earliest->number) + ") = " + value;
    }
    case AggKind::kApproxPercentile: {
      const double p = static_cast<double>(f.percentile_ppm) / 1e6;
      char text[32];
      std::snprintf(text, sizeof(text), "%g", p);
      return "percentile " + std::string(text) + " (nearest rank; exact up to 256 values, then within the sketch's "
             "rank error) of [" + Joined(fields, ", ") + "] (" + n + " values) = " + value;
    }
    case AggKind::kCountDistinct: return "distinct values among [" + Joined(fields, ", ") + "] = " + value;
    case AggKind::kApproxCountDistinct:
      return "HyperLogLog estimate of the distinct values among [" + Joined(fields, ", ") + "] = " + value;
    case AggKind::kTopK:
      return "the " + std::to_string(f.k) + " most frequent of [" + Joined(fields, ", ") +
             "] with their counts (exact up to " + std::to_string(TopKAgg::Capacity(f.k)) +
             " distinct values, then Misra-Gries lower bounds) = " + value;
    case AggKind::kLastK:
      return "the fields of the " + std::to_string(f.k) + " latest counted events, newest first = " + value;
  }
  return value;
}

// Adds the late and duplicate events of `entity` that a dead-letter file of `freshet run` holds.
Status ReadDeadLetters(const Spec& spec, const std::string& path, uint64_t max_bytes, const std::string& entity,
                       std::vector<Observed>* observed) {
  std::ifstream in(path);
  if (!in) return Status::Ok();
  EventParser parser(spec.fields);
  simdjson::dom::parser json;
  ParsedEvent event;
  std::string line, reason_text;
  uint64_t read = 0;
  while (std::getline(in, line)) {
    read += line.size() + 1;
    if (read > max_bytes) break;  // Written after the moment explained.

    simdjson::dom::element doc;
    if (json.parse(line).get(doc) != simdjson::SUCCESS) continue;  // A line cut by a crash: not an explanation.
    std::string_view reason, raw;
    uint64_t number = 0;
    if (doc["reason"].get_string().get(reason) || doc["raw"].get_string().get(raw)) continue;
    if (reason != "late" && reason != "duplicate") continue;
    if (doc["line"].get_uint64().get(number) != simdjson::SUCCESS &&
        doc["offset"].get_uint64().get(number) != simdjson::SUCCESS) {
      number = 0;
    }
    if (!parser.ParseCopy(raw, &event, &reason_text) || event.entity != entity) continue;
    Observed o;
    o.fate = reason == "late" ? EventFate::kLate : EventFate::kDuplicate;
    o.event.number = number;
    o.event.time_ms = event.time_ms;
    o.event.raw = std::string(raw);
    observed->push_back(std::move(o));
  }
  return Status::Ok();
}

}  // namespace

const char* VerdictName(Verdict verdict) {
  switch (verdict) {
    case Verdict::kCounted: return "counted";
    case Verdict::kAfterAsOf: return "after_as_of";
    case Verdict::kOutsideWindow: return "outside_window";
    case Verdict::kWhereFalse: return "where_false";
    case Verdict::kFieldMissing: return "field_missing";
    case Verdict::kLate: return "late";
    case Verdict::kDuplicate: return "duplicate";
  }
  return "";
}

Result<Explanation> Explain(const Spec& spec, const ExplainInput& input, const std::string& entity, int feature,
                            int64_t at_ms) {
  if (feature < 0 || static_cast<size_t>(feature) >= spec.features.size()) {
    return Status::Invalid("no feature number " + std::to_string(feature) + " in the spec");
  }
  const FeatureSpec& f = spec.features[static_cast<size_t>(feature)];
  std::unique_ptr<FeatureOperator> op = MakeFeatureOperator(f, /*buffered=*/false);
  Explanation out;
  out.entity = entity;
  out.feature = feature;
  out.at_ms = at_ms;
  out.window_text = WindowText(f.window, at_ms);
  out.source = input.events.Describe();

  // Pass 1: the value, and each of the entity's events with its fate.
  std::vector<Observed> observed;
  PointInTimeOptions options;
  options.observer = [&](const ParsedEvent& event, std::string_view raw, uint64_t number, EventFate fate) {
    if (event.entity != entity) return;
    Observed o;
    o.fate = fate;
    o.order = observed.size();
    o.event.number = number;
    o.event.time_ms = event.time_ms;
    o.event.raw = std::string(raw);
    Judge(f, *op, event, &o);
    observed.push_back(std::move(o));
  };
  HistoricalStats stats;
  RowAnswerFn answer = [&](size_t, const std::vector<Value>& values) {
    out.value_json = ValueJson(values[static_cast<size_t>(feature)], AggGivesJsonList(f.agg));
  };
  FRESHET_RETURN_IF_ERROR(ComputePointInTime(spec, input.events, {EntityTime{entity, at_ms}}, options, answer, &stats));
  out.events_read = stats.events_read;
  for (const std::string& path : input.dead_letter_files) {
    if (!std::filesystem::exists(path)) continue;
    const size_t before = observed.size();
    FRESHET_RETURN_IF_ERROR(ReadDeadLetters(spec, path, input.dead_letter_bytes, entity, &observed));
    for (size_t k = before; k < observed.size(); ++k) observed[k].order = k;
    out.source += ", dead letters '" + path + "'";
  }

  // The verdicts that need no window; the rest contribute, and their window decides.
  std::vector<Observed*> contributing;
  for (Observed& o : observed) {
    ExplainedEvent& e = o.event;
    if (o.fate == EventFate::kLate) {
      e.verdict = Verdict::kLate;
      e.detail = "late: dropped by the lateness rule (its time is more than max_out_of_orderness + allowed_lateness "
                 "before the largest event time accepted before it)";
    } else if (o.fate == EventFate::kDuplicate) {
      e.verdict = Verdict::kDuplicate;
      e.detail = "duplicate: an accepted event of this entity has the same " +
                 (spec.dedup ? "'" + spec.dedup->field + "'" : std::string("id")) + " within the dedup window";
    } else if (e.time_ms > at_ms) {
      e.verdict = Verdict::kAfterAsOf;
      e.detail = "after the as-of time " + FormatRfc3339(at_ms);
    } else if (!o.where_true) {
      e.verdict = Verdict::kWhereFalse;
      e.detail = "where (" + f.where_text + ") is false for it";
    } else if (!o.field_usable) {
      e.verdict = Verdict::kFieldMissing;  // Detail set by Judge.
    } else {
      contributing.push_back(&o);
    }
  }
  WindowProbe probe(f);
  if (f.window.kind == WindowKind::kSession) {
    std::stable_sort(contributing.begin(), contributing.end(), [](const Observed* a, const Observed* b) {
      return a->event.time_ms != b->event.time_ms ? a->event.time_ms < b->event.time_ms : a->order < b->order;
    });
    std::vector<int64_t> times;
    for (const Observed* o : contributing) times.push_back(o->event.time_ms);
    const int64_t held = probe.CountAsOf(times, at_ms);
    for (size_t k = 0; k < contributing.size(); ++k) {
      const bool in = static_cast<int64_t>(contributing.size() - k) <= held;
      contributing[k]->event.verdict = in ? Verdict::kCounted : Verdict::kOutsideWindow;
      if (!in) {
        contributing[k]->event.detail =
            held == 0 ? "the session ended: the as-of time is " + FormatDuration(f.window.gap_ms) +
                            " or more after the newest contributing event"
                      : "in an earlier session (a gap of " + FormatDuration(f.window.gap_ms) +
                            " or more separates it from the latest one)";
      }
    }
  } else {
    for (Observed* o : contributing) {
      const bool in = probe.CountAsOf({o->event.time_ms}, at_ms) == 1;
      o->event.verdict = in ? Verdict::kCounted : Verdict::kOutsideWindow;
      if (!in) o->event.detail = "outside the window: " + out.window_text;
    }
  }
  std::sort(observed.begin(), observed.end(), [](const Observed& a, const Observed& b) {
    return a.event.time_ms != b.event.time_ms ? a.event.time_ms < b.event.time_ms : a.order < b.order;
  });
  for (Observed& o : observed) out.events.push_back(std::move(o.event));
  std::vector<const ExplainedEvent*> counted;
  for (const ExplainedEvent& e : out.events) {
    if (e.verdict == Verdict::kCounted) counted.push_back(&e);
  }
  out.arithmetic = Arithmetic(f, counted, out.value_json);

  // Pass 2: the value as of each accepted event of the entity (the operators' exact answers at those times).
  if (input.series) {
    std::vector<EntityTime> rows;
    for (const ExplainedEvent& e : out.events) {
      if (e.verdict != Verdict::kLate && e.verdict != Verdict::kDuplicate) rows.push_back(EntityTime{entity, e.time_ms});
    }
    rows.push_back(EntityTime{entity, at_ms});
    out.series.resize(rows.size());
    RowAnswerFn keep = [&](size_t row, const std::vector<Value>& values) {
      out.series[row] = {rows[row].time_ms,
                         ValueJson(values[static_cast<size_t>(feature)], AggGivesJsonList(f.agg))};
    };
    FRESHET_RETURN_IF_ERROR(ComputePointInTime(spec, input.events, rows, PointInTimeOptions(), keep, &stats));
    std::stable_sort(out.series.begin(), out.series.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
  }
  return out;
}

std::string ExplanationJson(const Spec& spec, const Explanation& e, const std::string& extra_members) {
  const FeatureSpec& f = spec.features[static_cast<size_t>(e.feature)];
  std::string body;
  JsonWriter json(&body);
  json.BeginObject();
  json.Key("entity").String(e.entity);
  json.Key("feature").String(f.name);
  FeatureDefinitionMembers(json, f);
  json.Key("window").String(e.window_text);
  json.Key("at").String(FormatRfc3339(e.at_ms));
  json.Key("at_ms").Int(e.at_ms);
  json.Key("source").String(e.source);
  json.Key("events_read").Uint(e.events_read);
  json.Key("arithmetic").String(e.arithmetic);
  size_t counted = 0;
  for (const ExplainedEvent& event : e.events) counted += event.verdict == Verdict::kCounted ? 1 : 0;
  json.Key("counted").Uint(counted);
  json.Key("excluded").Uint(e.events.size() - counted);
  json.Key("events").BeginArray();
  for (const ExplainedEvent& event : e.events) {
    json.BeginObject();
    json.Key("number").Uint(event.number);
    json.Key("time").String(FormatRfc3339(event.time_ms));
    json.Key("time_ms").Int(event.time_ms);
    json.Key("verdict").String(VerdictName(event.verdict));
    json.Key("detail").String(event.detail);
    json.Key("field");
    if (event.field_json.empty()) json.Null();
    else json.Raw(event.field_json);
    json.Key("raw").String(event.raw);
    json.EndObject();
  }
  json.EndArray();
  json.Key("series").BeginArray();
  for (const auto& [time_ms, value] : e.series) json.BeginObject().Key("at_ms").Int(time_ms).Key("value").Raw(value).EndObject();
  json.EndArray();
  json.Key("value").Raw(e.value_json.empty() ? "null" : e.value_json);
  json.EndObject();
  if (!extra_members.empty()) body.insert(body.size() - 1, "," + extra_members);
  return body;
}

std::string ExplanationText(const Spec& spec, const Explanation& e) {
  const FeatureSpec& f = spec.features[static_cast<size_t>(e.feature)];
  std::ostringstream out;
  out << f.name << " of " << e.entity << " as of " << FormatRfc3339(e.at_ms) << " = " << e.value_json << "\n";
  out << "  " << AggKindName(f.agg);
  if (!f.field.empty()) out << " of '" << f.field << "'";
  if (!f.where_text.empty()) out << " where " << f.where_text;
  out << "\n  window: " << e.window_text << "\n  arithmetic: " << e.arithmetic << "\n  from: " << e.source << "\n";
  size_t counted = 0;
  for (const ExplainedEvent& event : e.events) counted += event.verdict == Verdict::kCounted ? 1 : 0;
  out << "events of " << e.entity << ": " << e.events.size() << " (" << counted << " counted, "
      << e.events.size() - counted << " excluded)\n";
  for (const ExplainedEvent& event : e.events) {
    out << "  " << (event.verdict == Verdict::kCounted ? "+ " : "- ") << FormatRfc3339(event.time_ms) << "  #"
        << event.number << "  " << VerdictName(event.verdict);
    if (!event.field_json.empty() && !f.field.empty()) out << "  " << f.field << "=" << event.field_json;
    if (!event.detail.empty()) out << "  (" << event.detail << ")";
    out << "\n";
  }
  return out.str();
}

}  // namespace freshet

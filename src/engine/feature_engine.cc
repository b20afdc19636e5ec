#include "engine/feature_engine.h"

#include <cstring>
#include <type_traits>

#include "aggregate/aggregations.h"
#include "window/windows.h"

namespace freshet {
namespace {

template <typename Agg, template <typename> class Window>
class WindowedOperator final : public FeatureOperator {
 public:
  using Input = typename Agg::Input;
  static_assert(sizeof(Input) <= sizeof(InputCell::bytes), "an aggregation input must fit an InputCell");
  static_assert(std::is_trivially_copyable_v<Input>);

  WindowedOperator(Window<Agg> window, int precision) : window_(std::move(window)) { ctx_.precision = precision; }

  bool Extract(const Value& field, InputCell* cell) override {
    Input input;
    if (!Agg::MakeInput(field, ctx_, &input)) return false;
    std::memcpy(cell->bytes, &input, sizeof(Input));
    return true;
  }

  void Apply(uint32_t entity, const InputCell& cell, int64_t time_ms, uint64_t seq, int64_t low_ms) override {
    if (entity >= states_.size()) states_.resize(entity + 1);
    Input input;
    std::memcpy(&input, cell.bytes, sizeof(Input));
    window_.Add(states_[entity], input, time_ms, seq, low_ms, ctx_);
  }

  Value Query(uint32_t entity, int64_t t) const override {
    if (entity >= states_.size()) return EmptyValue();
    return window_.Query(states_[entity], t, ctx_);
  }

  Value EmptyValue() const override { return Agg::Finalize(typename Agg::State{}, ctx_); }

  size_t MemoryBytes() const override {
    size_t bytes = states_.capacity() * sizeof(State) + ctx_.strings.memory_bytes();
    for (const State& s : states_) bytes += window_.MemoryBytes(s);
    return bytes;
  }

 private:
  using State = typename Window<Agg>::State;
  Window<Agg> window_;
  AggContext ctx_;
  std::vector<State> states_;  // Indexed by entity.
};

template <typename Agg>
std::unique_ptr<FeatureOperator> MakeWindowed(const FeatureSpec& f) {
  const WindowSpec& w = f.window;
  switch (w.kind) {
    case WindowKind::kLifetime:
      return std::make_unique<WindowedOperator<Agg, LifetimeWindow>>(LifetimeWindow<Agg>(), f.precision);
    case WindowKind::kSliding:
    case WindowKind::kTumbling: {
      const int64_t slide = w.kind == WindowKind::kTumbling ? w.size_ms : w.slide_ms;
      if (slide == 0) {
        return std::make_unique<WindowedOperator<Agg, ContinuousWindow>>(ContinuousWindow<Agg>(w.size_ms),
                                                                         f.precision);
      }
      return std::make_unique<WindowedOperator<Agg, TiledWindow>>(TiledWindow<Agg>(slide, w.size_ms / slide),
                                                                  f.precision);
    }
    case WindowKind::kSession:
      return std::make_unique<WindowedOperator<Agg, SessionWindow>>(SessionWindow<Agg>(w.gap_ms), f.precision);
  }
  return nullptr;
}

}  // namespace

std::unique_ptr<FeatureOperator> MakeFeatureOperator(const FeatureSpec& feature) {
  switch (feature.agg) {
    case AggKind::kCount: return MakeWindowed<CountAgg>(feature);
    case AggKind::kSum: return MakeWindowed<SumAgg>(feature);
    case AggKind::kMean: return MakeWindowed<MeanAgg>(feature);
    case AggKind::kMin: return MakeWindowed<MinAgg>(feature);
    case AggKind::kMax: return MakeWindowed<MaxAgg>(feature);
    case AggKind::kStddev: return MakeWindowed<StddevAgg>(feature);
    case AggKind::kLast: return MakeWindowed<LastAgg>(feature);
    case AggKind::kCountDistinct: return MakeWindowed<CountDistinctAgg>(feature);
    case AggKind::kApproxCountDistinct: return MakeWindowed<ApproxCountDistinctAgg>(feature);
  }
  return nullptr;
}

FeatureEngine::FeatureEngine(const Spec& spec) : spec_(spec) {
  for (const FeatureSpec& f : spec.features) operators_.push_back(MakeFeatureOperator(f));
  counters_.skipped.assign(spec.features.size(), 0);
  if (spec.watermark) {
    has_watermark_ = true;
    delay_ms_ = spec.watermark->max_out_of_orderness_ms + spec.watermark->allowed_lateness_ms;
  }
}

bool FeatureEngine::Admit(int64_t time_ms) {
  if (has_watermark_ && max_time_ms_ != std::numeric_limits<int64_t>::min() && time_ms < max_time_ms_ - delay_ms_) {
    ++counters_.late;
    return false;
  }
  ++counters_.admitted;
  if (time_ms > max_time_ms_) {
    max_time_ms_ = time_ms;
    if (has_watermark_) low_ms_ = max_time_ms_ - delay_ms_;
  }
  return true;
}

uint32_t FeatureEngine::FindOrAddEntity(std::string_view entity) {
  auto [it, inserted] = entities_.try_emplace(absl::string_view(entity.data(), entity.size()),
                                             static_cast<uint32_t>(entity_names_.size()));
  if (inserted) entity_names_.emplace_back(entity);
  return it->second;
}

std::optional<uint32_t> FeatureEngine::FindEntity(std::string_view entity) const {
  auto it = entities_.find(absl::string_view(entity.data(), entity.size()));
  if (it == entities_.end()) return std::nullopt;
  return it->second;
}

void FeatureEngine::Extract(const ParsedEvent& event, uint64_t seq, PendingEvent* out) {
  out->time_ms = event.time_ms;
  out->seq = seq;
  out->entity = FindOrAddEntity(event.entity);
  out->cells.resize(operators_.size());
  for (size_t k = 0; k < operators_.size(); ++k) {
    const FeatureSpec& f = spec_.features[k];
    InputCell& cell = out->cells[k];
    cell.present = false;
    if (f.where && !f.where->Eval(event.slots)) continue;
    const Value field = f.field_slot >= 0 ? event.slots[f.field_slot] : Value::Null();
    if (f.field_slot >= 0 && !field.is_present_non_null()) {
      ++counters_.skipped[k];
      continue;
    }
    if (!operators_[k]->Extract(field, &cell)) {
      ++counters_.skipped[k];
      continue;
    }
    cell.present = true;
  }
}

void FeatureEngine::Apply(const PendingEvent& event, int64_t low_ms) {
  for (size_t k = 0; k < operators_.size(); ++k) {
    if (event.cells[k].present) operators_[k]->Apply(event.entity, event.cells[k], event.time_ms, event.seq, low_ms);
  }
}

void FeatureEngine::QueryIndex(std::optional<uint32_t> entity, int64_t t, std::vector<Value>* out) const {
  out->resize(operators_.size());
  for (size_t k = 0; k < operators_.size(); ++k) {
    (*out)[k] = entity ? operators_[k]->Query(*entity, t) : operators_[k]->EmptyValue();
  }
}

void FeatureEngine::Query(std::string_view entity, int64_t t, std::vector<Value>* out) const {
  QueryIndex(FindEntity(entity), t, out);
}

size_t FeatureEngine::MemoryBytes() const {
  size_t bytes = entity_names_.capacity() * sizeof(std::string) + entities_.capacity() * (sizeof(std::string) + 8);
  for (const std::string& name : entity_names_) bytes += name.capacity() > 15 ? name.capacity() + 1 : 0;
  for (const auto& op : operators_) bytes += op->MemoryBytes();
  return bytes;
}

}  // namespace freshet

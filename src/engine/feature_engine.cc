#include "engine/feature_engine.h"

#include <cinttypes>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <new>
#include <type_traits>

#include "aggregate/aggregations.h"
#include "window/windows.h"

namespace freshet {
namespace {

template <typename Agg, template <typename> class Window>
class WindowedOperator final : public FeatureOperator {
 public:
  using Input = typename Agg::Input;
  using State = typename Window<Agg>::State;
  static_assert(sizeof(Input) <= sizeof(InputCell::bytes), "an aggregation input must fit an InputCell");
  static_assert(std::is_trivially_copyable_v<Input>);

  WindowedOperator(Window<Agg> window, int precision) : window_(std::move(window)) { ctx_.precision = precision; }

  bool Extract(const Value& field, InputCell* cell) override {
    Input input;
    if (!Agg::MakeInput(field, ctx_, &input)) return false;
    std::memcpy(cell->bytes, &input, sizeof(Input));
    return true;
  }

  size_t state_bytes() const override { return sizeof(State); }
  size_t state_align() const override { return alignof(State); }
  void Construct(void* state) const override { new (state) State(); }
  void Destroy(void* state) const override { static_cast<State*>(state)->~State(); }

  void Apply(void* state, const InputCell& cell, int64_t time_ms, uint64_t seq, int64_t low_ms) override {
    Input input;
    std::memcpy(&input, cell.bytes, sizeof(Input));
    window_.Add(*static_cast<State*>(state), input, time_ms, seq, low_ms, ctx_);
  }

  Value Query(const void* state, int64_t t) const override {
    return window_.Query(*static_cast<const State*>(state), t, ctx_);
  }

  Value EmptyValue() const override { return Agg::Finalize(typename Agg::State{}, ctx_); }

  size_t StateMemoryBytes(const void* state) const override {
    return window_.MemoryBytes(*static_cast<const State*>(state));
  }
  size_t MemoryBytes() const override { return ctx_.strings.memory_bytes(); }

  void SaveState(const void* state, ByteWriter& out) const override {
    window_.Serialize(*static_cast<const State*>(state), out, ctx_);
  }
  bool LoadState(void* state, ByteReader& in) override {
    return window_.Deserialize(*static_cast<State*>(state), in, ctx_);
  }
  void MoveState(void* to, void* from) const override {
    *static_cast<State*>(to) = std::move(*static_cast<State*>(from));
  }

 private:
  Window<Agg> window_;
  AggContext ctx_;
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

// Saved-state formats; a reader refuses versions it does not know.
constexpr uint8_t kEngineStateVersion = 1;
constexpr uint8_t kEntityStateVersion = 1;

// Quotes text for SpecStateDescription so that no value can run into the next one.
std::string Quoted(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  out += '"';
  return out;
}

std::string FingerprintText(uint64_t fingerprint) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%016" PRIx64, fingerprint);
  return buffer;
}

// The first line in which two spec descriptions differ, for the message that refuses a state.
std::string FirstDifference(std::string_view saved, std::string_view current) {
  auto next_line = [](std::string_view& text) {
    const size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
    return line;
  };
  while (!saved.empty() || !current.empty()) {
    const std::string_view a = next_line(saved), b = next_line(current);
    if (a == b) continue;
    if (a.empty()) return "this spec has " + std::string(b) + ", which the saved state lacks";
    if (b.empty()) return "the saved state has " + std::string(a) + ", which this spec lacks";
    return "the saved state has " + std::string(a) + " where this spec has " + std::string(b);
  }
  return "the descriptions agree, so the state was written by a different Freshet version";
}

}  // namespace

std::string SpecStateDescription(const Spec& spec) {
  std::string out;
  if (spec.watermark) {
    out += "watermark max_out_of_orderness_ms=" + std::to_string(spec.watermark->max_out_of_orderness_ms) +
           " allowed_lateness_ms=" + std::to_string(spec.watermark->allowed_lateness_ms) + "\n";
  } else {
    out += "watermark none\n";
  }
  for (const FeatureSpec& f : spec.features) {
    const WindowSpec& w = f.window;
    out += "feature " + Quoted(f.name) + " aggregation=" + AggKindName(f.agg) + " field=" + Quoted(f.field) +
           " where=" + Quoted(f.where ? f.where->ToString() : f.where_text) + " window=" + WindowKindName(w.kind) +
           " size_ms=" + std::to_string(w.size_ms) + " slide_ms=" + std::to_string(w.slide_ms) +
           " gap_ms=" + std::to_string(w.gap_ms) + " precision=" + std::to_string(f.precision) + "\n";
  }
  return out;
}

uint64_t SpecFingerprint(const Spec& spec) {
  uint64_t hash = 0xCBF29CE484222325ULL;  // FNV-1a, 64 bits.
  for (char c : SpecStateDescription(spec)) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 0x100000001B3ULL;
  }
  return hash;
}

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
  for (const FeatureSpec& f : spec.features) {
    int group = -1;
    if (f.where) {
      for (size_t g = 0; g < where_exprs_.size() && group < 0; ++g) {
        if (where_exprs_[g]->ToString() == f.where->ToString()) group = static_cast<int>(g);
      }
      if (group < 0) {
        group = static_cast<int>(where_exprs_.size());
        where_exprs_.push_back(&*f.where);
      }
    }
    where_group_.push_back(group);
    operators_.push_back(MakeFeatureOperator(f));
    const size_t align = operators_.back()->state_align();
    row_bytes_ = (row_bytes_ + align - 1) / align * align;
    offsets_.push_back(row_bytes_);
    row_bytes_ += operators_.back()->state_bytes();
  }
  row_bytes_ = (row_bytes_ + alignof(std::max_align_t) - 1) / alignof(std::max_align_t) * alignof(std::max_align_t);
  if (row_bytes_ == 0) row_bytes_ = alignof(std::max_align_t);
  counters_.skipped.assign(spec.features.size(), 0);
  if (spec.watermark) {
    has_watermark_ = true;
    delay_ms_ = spec.watermark->max_out_of_orderness_ms + spec.watermark->allowed_lateness_ms;
  }
  fingerprint_ = SpecFingerprint(spec);
}

bool FeatureEngine::Admit(int64_t time_ms) {
  if (IsLate(time_ms)) {
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

FeatureEngine::~FeatureEngine() {
  for (uint32_t e = 0; e < entity_names_.size(); ++e) {
    for (size_t k = 0; k < operators_.size(); ++k) operators_[k]->Destroy(Row(e) + offsets_[k]);
  }
}

uint32_t FeatureEngine::FindOrAddEntity(std::string_view entity) {
  auto [it, inserted] = entities_.try_emplace(absl::string_view(entity.data(), entity.size()),
                                             static_cast<uint32_t>(entity_names_.size()));
  if (inserted) {
    const uint32_t index = it->second;
    if ((index >> kRowChunkShift) >= row_chunks_.size()) {
      row_chunks_.push_back(std::make_unique_for_overwrite<unsigned char[]>(row_bytes_ * kRowsPerChunk));
    }
    unsigned char* row = Row(index);
    for (size_t k = 0; k < operators_.size(); ++k) operators_[k]->Construct(row + offsets_[k]);
    entity_names_.emplace_back(entity);
  }
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
  where_results_.resize(where_exprs_.size());
  for (size_t g = 0; g < where_exprs_.size(); ++g) where_results_[g] = where_exprs_[g]->Eval(event.slots);
  for (size_t k = 0; k < operators_.size(); ++k) {
    const FeatureSpec& f = spec_.features[k];
    InputCell& cell = out->cells[k];
    cell.present = false;
    if (where_group_[k] >= 0 && !where_results_[where_group_[k]]) continue;
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
  unsigned char* row = Row(event.entity);
  for (size_t k = 0; k < operators_.size(); ++k) {
    if (event.cells[k].present) {
      operators_[k]->Apply(row + offsets_[k], event.cells[k], event.time_ms, event.seq, low_ms);
    }
  }
}

size_t FeatureEngine::ProcessBatch(const ParsedEvent* events, size_t count, uint64_t* seq) {
  constexpr size_t kLookahead = 8;
  if (batch_.size() < count) batch_.resize(count);
  batch_low_ms_.resize(count);
  size_t admitted = 0, late = 0;
  for (size_t k = 0; k < count; ++k) {
    if (k + kLookahead < count) {
      const std::string_view next = events[k + kLookahead].entity;
      entities_.prefetch(absl::string_view(next.data(), next.size()));
    }
    if (!Admit(events[k].time_ms)) {
      ++late;
      continue;
    }
    PendingEvent& pending = batch_[admitted];
    Extract(events[k], (*seq)++, &pending);
    // A row spans several cache lines (the features' states side by side); Apply below touches most.
    const uintptr_t row = reinterpret_cast<uintptr_t>(Row(pending.entity));
    for (uintptr_t line = row & ~uintptr_t{63}; line < row + row_bytes_; line += 64) {
      __builtin_prefetch(reinterpret_cast<const void*>(line), 1);
    }
    batch_low_ms_[admitted] = low_ms_;
    ++admitted;
  }
  for (size_t k = 0; k < admitted; ++k) Apply(batch_[k], batch_low_ms_[k]);
  return late;
}

void FeatureEngine::QueryIndex(std::optional<uint32_t> entity, int64_t t, std::vector<Value>* out) const {
  out->resize(operators_.size());
  for (size_t k = 0; k < operators_.size(); ++k) {
    (*out)[k] = entity ? operators_[k]->Query(Row(*entity) + offsets_[k], t) : operators_[k]->EmptyValue();
  }
}

void FeatureEngine::Query(std::string_view entity, int64_t t, std::vector<Value>* out) const {
  QueryIndex(FindEntity(entity), t, out);
}

size_t FeatureEngine::MemoryBytes() const {
  size_t bytes = entity_names_.capacity() * sizeof(std::string) + entities_.capacity() * (sizeof(std::string) + 8);
  for (const std::string& name : entity_names_) bytes += name.capacity() > 15 ? name.capacity() + 1 : 0;
  bytes += row_chunks_.size() * row_bytes_ * kRowsPerChunk;
  for (const auto& op : operators_) bytes += op->MemoryBytes();
  for (uint32_t e = 0; e < entity_names_.size(); ++e) {
    for (size_t k = 0; k < operators_.size(); ++k) bytes += operators_[k]->StateMemoryBytes(Row(e) + offsets_[k]);
  }
  return bytes;
}

}  // namespace freshet

namespace freshet {

void FeatureEngine::Reset() {
  for (uint32_t e = 0; e < entity_names_.size(); ++e) {
    for (size_t k = 0; k < operators_.size(); ++k) operators_[k]->Destroy(Row(e) + offsets_[k]);
  }
  entity_names_.clear();
  entities_.clear();
  row_chunks_.clear();
  max_time_ms_ = std::numeric_limits<int64_t>::min();
  low_ms_ = std::numeric_limits<int64_t>::min();
  counters_.admitted = 0;
  counters_.late = 0;
  counters_.skipped.assign(operators_.size(), 0);
}

void FeatureEngine::SaveState(ByteWriter& out) const {
  out.PutU8(kEngineStateVersion);
  out.PutU64(fingerprint_);
  out.PutString(SpecStateDescription(spec_));
  out.PutI64(max_time_ms_);
  out.PutI64(low_ms_);
  out.PutVarint(counters_.admitted);
  out.PutVarint(counters_.late);
  out.PutVarint(counters_.skipped.size());
  for (uint64_t skipped : counters_.skipped) out.PutVarint(skipped);
  out.PutVarint(entity_names_.size());
  for (uint32_t e = 0; e < entity_names_.size(); ++e) {
    out.PutString(entity_names_[e]);
    const unsigned char* row = Row(e);
    for (size_t k = 0; k < operators_.size(); ++k) operators_[k]->SaveState(row + offsets_[k], out);
  }
}

Status FeatureEngine::LoadState(ByteReader& in) {
  if (!entity_names_.empty() || counters_.admitted != 0 || counters_.late != 0) {
    return Status::Invalid("FeatureEngine::LoadState needs a fresh engine, but this one has already processed "
                           "events; construct a new engine from the spec and load into that");
  }
  auto malformed = [&](const std::string& where) {
    const size_t at = in.failed() ? in.failed_at() : in.offset();
    Reset();
    return Status::Invalid("saved engine state is malformed or truncated at byte " + std::to_string(at) + where +
                           "; the checkpoint is damaged: restore an older one or start without it");
  };
  uint8_t version;
  uint64_t fingerprint;
  std::string_view description;
  if (!in.ReadU8(&version)) return malformed("");
  if (version != kEngineStateVersion) {
    return Status::Invalid("saved engine state has format version " + std::to_string(version) +
                           ", but this build of Freshet reads version " + std::to_string(kEngineStateVersion) +
                           "; restore it with the Freshet version that wrote it, or start without it");
  }
  if (!in.ReadU64(&fingerprint) || !in.ReadString(&description)) return malformed(" (header)");
  if (fingerprint != fingerprint_) {
    return Status::Invalid("saved engine state was written for another spec: spec fingerprint " +
                           FingerprintText(fingerprint) + " does not match this spec's fingerprint " +
                           FingerprintText(fingerprint_) + " (" + FirstDifference(description, SpecStateDescription(spec_)) +
                           "); run with the spec the state was written with, or start without the saved state");
  }
  uint64_t admitted, late, features, entities;
  if (!in.ReadI64(&max_time_ms_) || !in.ReadI64(&low_ms_) || !in.ReadVarint(&admitted) || !in.ReadVarint(&late) ||
      !in.ReadVarint(&features)) {
    return malformed(" (lateness state and counters)");
  }
  if (features != operators_.size()) {
    in.Fail();
    return malformed(" (it counts " + std::to_string(features) + " features, the spec has " +
                     std::to_string(operators_.size()) + ")");
  }
  counters_.admitted = admitted;
  counters_.late = late;
  for (uint64_t& skipped : counters_.skipped) {
    if (!in.ReadVarint(&skipped)) return malformed(" (skip counters)");
  }
  if (!in.ReadCount(&entities)) return malformed(" (entity count)");
  for (uint64_t e = 0; e < entities; ++e) {
    std::string_view name;
    if (!in.ReadString(&name)) return malformed(" (name of entity #" + std::to_string(e) + ")");
    const uint32_t index = FindOrAddEntity(name);
    if (index != e) {
      in.Fail();
      return malformed(" (entity '" + std::string(name) + "' appears twice)");
    }
    unsigned char* row = Row(index);
    for (size_t k = 0; k < operators_.size(); ++k) {
      if (!operators_[k]->LoadState(row + offsets_[k], in)) {
        return malformed(" (entity '" + std::string(name) + "', feature '" + spec_.features[k].name + "')");
      }
    }
  }
  return Status::Ok();
}

void FeatureEngine::SaveEntity(uint32_t entity, ByteWriter& out) const {
  FRESHET_CHECK(entity < entity_names_.size());
  out.PutU8(kEntityStateVersion);
  out.PutU64(fingerprint_);
  const unsigned char* row = Row(entity);
  for (size_t k = 0; k < operators_.size(); ++k) operators_[k]->SaveState(row + offsets_[k], out);
}

Status FeatureEngine::LoadEntity(std::string_view entity, ByteReader& in) {
  uint8_t version;
  uint64_t fingerprint;
  if (!in.ReadU8(&version) || !in.ReadU64(&fingerprint)) {
    return Status::Invalid("saved state of entity '" + std::string(entity) + "' is truncated at byte " +
                           std::to_string(in.failed_at()) + " (header); it cannot be loaded");
  }
  if (version != kEntityStateVersion) {
    return Status::Invalid("saved state of entity '" + std::string(entity) + "' has format version " +
                           std::to_string(version) + ", but this build of Freshet reads version " +
                           std::to_string(kEntityStateVersion));
  }
  if (fingerprint != fingerprint_) {
    return Status::Invalid("saved state of entity '" + std::string(entity) + "' was written for another spec: " +
                           "spec fingerprint " + FingerprintText(fingerprint) + " does not match this spec's " +
                           "fingerprint " + FingerprintText(fingerprint_) +
                           "; clear the store or run with the spec that wrote it");
  }
  // Decode into a scratch row first, so that a malformed state leaves the entity as it was.
  auto scratch = std::make_unique_for_overwrite<unsigned char[]>(row_bytes_);
  for (size_t k = 0; k < operators_.size(); ++k) operators_[k]->Construct(scratch.get() + offsets_[k]);
  size_t failed_feature = operators_.size();
  for (size_t k = 0; k < operators_.size() && failed_feature == operators_.size(); ++k) {
    if (!operators_[k]->LoadState(scratch.get() + offsets_[k], in)) failed_feature = k;
  }
  if (failed_feature == operators_.size()) {
    unsigned char* row = Row(FindOrAddEntity(entity));
    for (size_t k = 0; k < operators_.size(); ++k) operators_[k]->MoveState(row + offsets_[k], scratch.get() + offsets_[k]);
  }
  for (size_t k = 0; k < operators_.size(); ++k) operators_[k]->Destroy(scratch.get() + offsets_[k]);
  if (failed_feature != operators_.size()) {
    return Status::Invalid("saved state of entity '" + std::string(entity) + "' is malformed or truncated at byte " +
                           std::to_string(in.failed_at()) + " (feature '" + spec_.features[failed_feature].name +
                           "'); it cannot be loaded");
  }
  return Status::Ok();
}

}  // namespace freshet

#include "run/feature_log.h"

#include <chrono>
#include <cmath>
#include <cstdio>

#include "common/time.h"

namespace freshet {
namespace {

// FNV-1a 64 then a final mix: stable across runs and machines, so a sample is reproducible.
uint64_t EntityHash(std::string_view entity) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : entity) h = (h ^ c) * 1099511628211ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

}  // namespace

FeatureLogWriter::FeatureLogWriter(const Spec& spec, MetricsRegistry& metrics, int64_t commit_interval_ms)
    : spec_(spec), commit_interval_ms_(commit_interval_ms) {
  logged_ = &metrics.GetCounter("freshet_feature_log_answers_total", "Answers (per entity) queued for the feature log.");
  shed_ = &metrics.GetCounter("freshet_feature_log_shed_total",
                              "Answers (per entity) not logged because the feature-log queue was full.");
  committed_ = &metrics.GetCounter("freshet_feature_log_committed_total",
                                   "Answers (per entity) committed to the feature_log table.");
  errors_ = &metrics.GetCounter("freshet_feature_log_errors_total", "Failed feature-log writes or commits.");
  queued_ = &metrics.GetGauge("freshet_feature_log_queued", "Answers waiting to be written to the feature log.");
}

Result<std::unique_ptr<FeatureLogWriter>> FeatureLogWriter::Start(const Spec& spec, const OfflinePaths& paths,
                                                                 MetricsRegistry& metrics, int64_t commit_interval_ms) {
  std::unique_ptr<FeatureLogWriter> w(new FeatureLogWriter(spec, metrics, commit_interval_ms));
  FRESHET_ASSIGN_OR_RETURN(w->table_, OfflineTable::Open(TableOptions(paths, "feature_log", FeatureLogColumns(spec))));
  FRESHET_RETURN_IF_ERROR(w->table_->DropStaging());
  w->sample_all_ = spec.feature_log.sample_rate >= 1.0;
  if (!w->sample_all_) w->sample_threshold_ = static_cast<uint64_t>(std::ldexp(spec.feature_log.sample_rate, 64));
  w->thread_ = std::thread([raw = w.get()] { raw->Loop(); });
  return w;
}

FeatureLogWriter::~FeatureLogWriter() { (void)Stop(); }

bool FeatureLogWriter::Sampled(std::string_view entity) const {
  return sample_all_ || EntityHash(entity) < sample_threshold_;
}

void FeatureLogWriter::Log(std::string_view request_id, int64_t as_of_ms, std::span<const int> features,
                           std::span<const std::string_view> entities, std::span<const FeatureLookup> lookups) {
  const int64_t now = WallClockMs();
  std::string served;
  for (int f : features) served += (served.empty() ? "" : ",") + spec_.features[static_cast<size_t>(f)].name;
  std::deque<Entry> batch;
  for (size_t e = 0; e < entities.size() && e < lookups.size(); ++e) {
    if (!Sampled(entities[e])) continue;
    Entry entry;
    entry.request_id = std::string(request_id);
    entry.entity = std::string(entities[e]);
    entry.as_of_ms = as_of_ms;
    entry.served_ms = now;
    entry.served_features = served;
    const size_t n = spec_.features.size();
    entry.types.assign(n, ValueType::kMissing);
    entry.ints.assign(n, 0);
    entry.doubles.assign(n, 0);
    entry.strings.resize(n);
    for (size_t k = 0; k < features.size() && k < lookups[e].values.size(); ++k) {
      const size_t f = static_cast<size_t>(features[k]);
      const Value& v = lookups[e].values[k];
      entry.types[f] = v.type;
      if (v.type == ValueType::kInt) entry.ints[f] = v.i;
      if (v.type == ValueType::kDouble) entry.doubles[f] = v.d;
      if (v.type == ValueType::kBool) entry.ints[f] = v.b ? 1 : 0;
      if (v.type == ValueType::kString) entry.strings[f] = std::string(v.s);
    }
    batch.push_back(std::move(entry));
  }
  if (batch.empty()) return;
  const size_t n = batch.size();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ || queue_.size() + n > static_cast<size_t>(spec_.feature_log.queue)) {
      shed_->Increment(n);
      return;
    }
    for (Entry& entry : batch) queue_.push_back(std::move(entry));
    queued_->Set(static_cast<double>(queue_.size()));
  }
  logged_->Increment(n);
  wake_.notify_one();
}

Status FeatureLogWriter::WriteAndCommit(std::deque<Entry>& entries, bool commit) {
  for (const Entry& entry : entries) {
    table_->BeginRow(entry.served_ms);
    table_->PutString(entry.request_id);
    table_->PutString(entry.entity);
    table_->PutTimestampMs(entry.as_of_ms);
    table_->PutTimestampMs(entry.served_ms);
    table_->PutString(entry.served_features);
    for (size_t f = 0; f < spec_.features.size(); ++f) {
      Value v;
      switch (entry.types[f]) {
        case ValueType::kInt: v = Value::Int(entry.ints[f]); break;
        case ValueType::kDouble: v = Value::Double(entry.doubles[f]); break;
        case ValueType::kBool: v = Value::Bool(entry.ints[f] != 0); break;
        case ValueType::kString: v = Value::String(entry.strings[f]); break;
        default: v = Value::Null(); break;
      }
      PutFeatureValue(*table_, spec_.features[f], v);
    }
  }
  entries.clear();
  if (!commit || table_->buffered_rows() == 0) return Status::Ok();
  const uint64_t rows = table_->buffered_rows();
  FRESHET_ASSIGN_OR_RETURN(std::optional<StagedCommit> staged, table_->Stage(std::nullopt));
  if (staged) FRESHET_RETURN_IF_ERROR(table_->Publish(*staged));
  committed_->Increment(rows);
  return Status::Ok();
}

void FeatureLogWriter::Loop() {
  auto last_commit = std::chrono::steady_clock::now();
  std::deque<Entry> taken;
  while (true) {
    bool stopping = false;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait_for(lock, std::chrono::milliseconds(200), [&] { return stopping_ || queue_.size() >= 4096; });
      taken.swap(queue_);
      queued_->Set(0);
      stopping = stopping_;
    }
    const bool due = std::chrono::steady_clock::now() - last_commit >= std::chrono::milliseconds(commit_interval_ms_);
    Status written = WriteAndCommit(taken, due || stopping);
    if (due || stopping) last_commit = std::chrono::steady_clock::now();
    if (!written.ok()) {
      errors_->Increment();
      std::fprintf(stderr, "freshet run: warning: feature log: %s\n", written.message().c_str());
      std::lock_guard<std::mutex> lock(mutex_);
      status_ = written;
    }
    if (stopping) return;
  }
}

Status FeatureLogWriter::Stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ && !thread_.joinable()) return status_;
    stopping_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mutex_);
  return status_;
}

}  // namespace freshet

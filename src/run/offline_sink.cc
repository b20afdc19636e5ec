#include "run/offline_sink.h"

#include <tuple>

#include "common/bytes.h"

namespace freshet {
namespace {

// The checkpoint position: for each table ("events", "features") its unpublished staged commit, if any.
std::string EncodeStaged(const std::optional<StagedCommit>& events, const std::optional<StagedCommit>& features) {
  std::string bytes;
  ByteWriter out(&bytes);
  for (const std::optional<StagedCommit>* c : {&events, &features}) {
    out.PutU8(c->has_value() ? 1 : 0);
    if (c->has_value()) out.PutString((*c)->Encode());
  }
  return bytes;
}

Status DecodeStaged(std::string_view bytes, std::optional<StagedCommit>* events, std::optional<StagedCommit>* features) {
  ByteReader in(bytes);
  for (std::optional<StagedCommit>* c : {events, features}) {
    uint8_t present = 0;
    std::string_view encoded;
    if (!in.ReadU8(&present)) return Status::Invalid("the checkpoint's offline position is damaged");
    if (present == 0) continue;
    if (!in.ReadString(&encoded)) return Status::Invalid("the checkpoint's offline position is damaged");
    FRESHET_ASSIGN_OR_RETURN(*c, StagedCommit::Decode(encoded));
  }
  return Status::Ok();
}

// Folds `more` into `into`: one commit that adds both's files (and does what the first one removes).
void Fold(std::optional<StagedCommit>& into, StagedCommit more) {
  if (!into) {
    into = std::move(more);
    return;
  }
  for (StagedCommit::File& f : more.files) into->files.push_back(std::move(f));
  into->txn_version = more.txn_version;
  into->replace_metadata = into->replace_metadata || more.replace_metadata;
}

}  // namespace

Result<std::unique_ptr<OfflineSink>> OfflineSink::Open(const Spec& spec, const OfflinePaths& paths,
                                                       OfflineSinkOptions options) {
  std::unique_ptr<OfflineSink> sink(new OfflineSink(spec));
  sink->partitioned_ = spec.source && spec.source->type == "kafka";
  if (options.events) {
    FRESHET_ASSIGN_OR_RETURN(sink->events_, OfflineTable::Open(TableOptions(paths, "events", EventsTableColumns(sink->partitioned_))));
  }
  if (options.features) {
    FRESHET_ASSIGN_OR_RETURN(sink->features_,
                             OfflineTable::Open(TableOptions(paths, "features", FeaturesTableColumns(spec)),
                                                options.overwrite_features));
  }
  return sink;
}

Result<std::string> OfflineSink::Recover(std::optional<std::string_view> recorded, std::optional<uint64_t> sequence) {
  std::optional<StagedCommit> events, features;
  if (recorded) FRESHET_RETURN_IF_ERROR(DecodeStaged(*recorded, &events, &features));
  std::string log;
  size_t removed = 0;
  std::optional<int64_t> keep_up_to;
  if (sequence) keep_up_to = static_cast<int64_t>(*sequence);
  for (auto [table, staged] : {std::pair{events_.get(), &events}, std::pair{features_.get(), &features}}) {
    if (table == nullptr) continue;
    if (*staged) FRESHET_RETURN_IF_ERROR(table->Publish(**staged));
    FRESHET_ASSIGN_OR_RETURN(size_t n, table->RollBackAfter(keep_up_to));
    removed += n;
    FRESHET_RETURN_IF_ERROR(table->DropStaging());
  }
  if (removed > 0) {
    log = "offline store: removed " + std::to_string(removed) +
          " files committed after the restored checkpoint; their events are read again";
  }
  return log;
}

void OfflineSink::AddEvent(int64_t seq, int64_t event_time_ms, std::string_view entity, int64_t ingest_ms,
                           std::string_view raw, const RecordPlace* place) {
  if (events_ == nullptr) return;
  std::lock_guard<std::mutex> lock(add_mutex_);
  OfflineTable& t = *events_;
  t.BeginRow(event_time_ms);
  t.PutInt(seq);
  t.PutTimestampMs(event_time_ms);
  t.PutString(entity);
  t.PutTimestampMs(ingest_ms);
  t.PutString(raw);
  if (partitioned_) {
    t.PutInt(place != nullptr ? place->partition : 0);
    t.PutInt(place != nullptr ? place->offset : 0);
  }
}

void OfflineSink::AddFeatures(int64_t seq, std::string_view entity, int64_t event_time_ms, int64_t processing_ms,
                              const std::vector<Value>& values) {
  if (features_ == nullptr) return;
  if ((from_ms_ && event_time_ms < *from_ms_) || (to_ms_ && event_time_ms >= *to_ms_)) return;
  std::lock_guard<std::mutex> lock(add_mutex_);
  OfflineTable& t = *features_;
  ++feature_rows_;
  t.BeginRow(event_time_ms);
  t.PutInt(seq);
  t.PutString(entity);
  t.PutTimestampMs(event_time_ms);
  t.PutTimestampMs(processing_ms);
  for (size_t f = 0; f < values.size(); ++f) PutFeatureValue(t, spec_.features[f], values[f]);
}

uint64_t OfflineSink::buffered_bytes() const {
  return (events_ ? events_->buffered_bytes() : 0) + (features_ ? features_->buffered_bytes() : 0);
}

OfflineSink::TakenRows OfflineSink::TakeRows() {
  TakenRows rows;
  if (events_ != nullptr) rows.events = events_->TakeRows();
  if (features_ != nullptr) rows.features = features_->TakeRows();
  return rows;
}

Status OfflineSink::StageInto(TakenRows& rows, std::optional<int64_t> txn_version) {
  for (auto [table, staged, taken] : {std::tuple{events_.get(), &events_staged_, &rows.events},
                                      std::tuple{features_.get(), &features_staged_, &rows.features}}) {
    if (table == nullptr) continue;
    FRESHET_ASSIGN_OR_RETURN(std::optional<StagedCommit> c, table->StageRows(*taken, txn_version));
    if (c) Fold(*staged, std::move(*c));
    if (*staged && txn_version) (*staged)->txn_version = txn_version;
  }
  return Status::Ok();
}

Status OfflineSink::Spill() {
  TakenRows rows = TakeRows();
  return StageInto(rows, std::nullopt);
}

Result<std::string> OfflineSink::Stage(uint64_t checkpoint_sequence) {
  return StageTaken(TakeRows(), checkpoint_sequence);
}

Result<std::string> OfflineSink::StageTaken(TakenRows rows, uint64_t checkpoint_sequence) {
  unstaged_bytes_ += OfflineTable::RowsBytes(rows.events) + OfflineTable::RowsBytes(rows.features);
  unstaged_.push_back(std::move(rows));
  while (!unstaged_.empty()) {
    TakenRows& oldest = unstaged_.front();
    const uint64_t bytes = OfflineTable::RowsBytes(oldest.events) + OfflineTable::RowsBytes(oldest.features);
    Status staged = StageInto(oldest, static_cast<int64_t>(checkpoint_sequence));
    // A table staged before the other failed gave up its rows: count only what is still held.
    unstaged_bytes_ -= bytes - (OfflineTable::RowsBytes(oldest.events) + OfflineTable::RowsBytes(oldest.features));
    FRESHET_RETURN_IF_ERROR(staged);
    unstaged_.pop_front();
  }
  return EncodeStaged(events_staged_, features_staged_);
}

Status OfflineSink::PublishFrom(std::string_view recorded, const std::string& member) {
  std::optional<StagedCommit> events, features;
  FRESHET_RETURN_IF_ERROR(DecodeStaged(recorded, &events, &features));
  for (auto [table, staged, name] : {std::tuple{events_.get(), &events, "events"},
                                     std::tuple{features_.get(), &features, "features"}}) {
    if (table != nullptr && *staged) FRESHET_RETURN_IF_ERROR(table->Publish(**staged, TableAppId(name, member)));
  }
  return Status::Ok();
}

Status OfflineSink::Publish() {
  for (auto [table, staged] : {std::pair{events_.get(), &events_staged_}, std::pair{features_.get(), &features_staged_}}) {
    if (table == nullptr || !*staged) continue;
    FRESHET_RETURN_IF_ERROR(table->Publish(**staged));
    staged->reset();
  }
  return Status::Ok();
}

}  // namespace freshet

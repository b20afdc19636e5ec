#include "run/offline_sink.h"

#include <tuple>

#include "common/bytes.h"
#include "table/table_history.h"

namespace freshet {
namespace {

// The checkpoint position: for each table ("events", "features", then each reference table's history) its
// unpublished staged commit, if any. Positions written before reference tables end after the features.
std::string EncodeStaged(const std::vector<const std::optional<StagedCommit>*>& commits) {
  std::string bytes;
  ByteWriter out(&bytes);
  for (const std::optional<StagedCommit>* c : commits) {
    out.PutU8(c->has_value() ? 1 : 0);
    if (c->has_value()) out.PutString((*c)->Encode());
  }
  return bytes;
}

Status DecodeStaged(std::string_view bytes, const std::vector<std::optional<StagedCommit>*>& commits) {
  ByteReader in(bytes);
  for (size_t k = 0; k < commits.size(); ++k) {
    uint8_t present = 0;
    std::string_view encoded;
    if (k >= 2 && in.remaining() == 0) break;  // Written before this table's history existed.
    if (!in.ReadU8(&present)) return Status::Invalid("the checkpoint's offline position is damaged");
    if (present == 0) continue;
    if (!in.ReadString(&encoded)) return Status::Invalid("the checkpoint's offline position is damaged");
    FRESHET_ASSIGN_OR_RETURN(*commits[k], StagedCommit::Decode(encoded));
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
  sink->lookups_ = !spec.lookups.empty();
  if (options.events) {
    FRESHET_ASSIGN_OR_RETURN(sink->events_, OfflineTable::Open(TableOptions(
                                                paths, "events", EventsTableColumns(sink->partitioned_, spec.entity_fields, sink->lookups_))));
  }
  if (options.features) {
    FRESHET_ASSIGN_OR_RETURN(sink->features_,
                             OfflineTable::Open(TableOptions(paths, "features", FeaturesTableColumns(spec)),
                                                options.overwrite_features));
  }
  if (options.events) {
    for (const TableSpec& table : spec.tables) {
      FRESHET_ASSIGN_OR_RETURN(std::unique_ptr<OfflineTable> history,
                               OfflineTable::Open(TableHistoryOptions(paths, table.name)));
      sink->histories_.push_back(History{std::move(history), std::nullopt});
    }
  }
  return sink;
}

Result<std::string> OfflineSink::Recover(std::optional<std::string_view> recorded, std::optional<uint64_t> sequence) {
  std::vector<std::optional<StagedCommit>> staged(2 + histories_.size());
  std::vector<std::optional<StagedCommit>*> slots;
  for (auto& s : staged) slots.push_back(&s);
  if (recorded) FRESHET_RETURN_IF_ERROR(DecodeStaged(*recorded, slots));
  std::vector<OfflineTable*> tables = {events_.get(), features_.get()};
  for (History& h : histories_) tables.push_back(h.table.get());
  std::string log;
  size_t removed = 0;
  std::optional<int64_t> keep_up_to;
  if (sequence) keep_up_to = static_cast<int64_t>(*sequence);
  for (size_t k = 0; k < tables.size(); ++k) {
    OfflineTable* table = tables[k];
    if (table == nullptr) continue;
    if (staged[k]) FRESHET_RETURN_IF_ERROR(table->Publish(*staged[k]));
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
                           std::string_view raw, const RecordPlace* place, std::string_view lookups) {
  if (events_ == nullptr) return;
  std::lock_guard<std::mutex> lock(add_mutex_);
  OfflineTable& t = *events_;
  t.BeginRow(event_time_ms);
  t.PutInt(seq);
  t.PutTimestampMs(event_time_ms);
  t.PutString(entity);
  PutKeyParts(t, spec_.entity_fields, entity, &key_parts_);
  t.PutTimestampMs(ingest_ms);
  t.PutString(raw);
  if (partitioned_) {
    t.PutInt(place != nullptr ? place->partition : 0);
    t.PutInt(place != nullptr ? place->offset : 0);
  }
  if (lookups_) {
    if (lookups.empty()) {
      t.PutNull();
    } else {
      t.PutString(lookups);
    }
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
  PutKeyParts(t, spec_.entity_fields, entity, &key_parts_);
  t.PutTimestampMs(event_time_ms);
  t.PutTimestampMs(processing_ms);
  for (size_t f = 0; f < values.size(); ++f) PutFeatureValue(t, spec_.features[f], values[f]);
}

void OfflineSink::AddTableVersion(size_t table, int64_t version, int64_t seq, const TableRow& row,
                                  int64_t arrival_ms) {
  if (table >= histories_.size()) return;
  std::lock_guard<std::mutex> lock(add_mutex_);
  PutTableVersion(*histories_[table].table, version, seq, row, arrival_ms);
}

uint64_t OfflineSink::buffered_bytes() const {
  uint64_t bytes = (events_ ? events_->buffered_bytes() : 0) + (features_ ? features_->buffered_bytes() : 0);
  for (const History& h : histories_) bytes += h.table->buffered_bytes();
  return bytes;
}

uint64_t OfflineSink::TakenRows::Bytes() const {
  uint64_t bytes = OfflineTable::RowsBytes(events) + OfflineTable::RowsBytes(features);
  for (const OfflineTable::RowsPtr& h : histories) bytes += OfflineTable::RowsBytes(h);
  return bytes;
}

OfflineSink::TakenRows OfflineSink::TakeRows() {
  TakenRows rows;
  if (events_ != nullptr) rows.events = events_->TakeRows();
  if (features_ != nullptr) rows.features = features_->TakeRows();
  for (History& h : histories_) rows.histories.push_back(h.table->TakeRows());
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
  for (size_t k = 0; k < histories_.size() && k < rows.histories.size(); ++k) {
    History& h = histories_[k];
    FRESHET_ASSIGN_OR_RETURN(std::optional<StagedCommit> c, h.table->StageRows(rows.histories[k], txn_version));
    if (c) Fold(h.staged, std::move(*c));
    if (h.staged && txn_version) h.staged->txn_version = txn_version;
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
  unstaged_bytes_ += rows.Bytes();
  unstaged_.push_back(std::move(rows));
  while (!unstaged_.empty()) {
    TakenRows& oldest = unstaged_.front();
    const uint64_t bytes = oldest.Bytes();
    Status staged = StageInto(oldest, static_cast<int64_t>(checkpoint_sequence));
    // A table staged before the other failed gave up its rows: count only what is still held.
    unstaged_bytes_ -= bytes - oldest.Bytes();
    FRESHET_RETURN_IF_ERROR(staged);
    unstaged_.pop_front();
  }
  std::vector<const std::optional<StagedCommit>*> commits = {&events_staged_, &features_staged_};
  for (const History& h : histories_) commits.push_back(&h.staged);
  return EncodeStaged(commits);
}

Status OfflineSink::PublishFrom(std::string_view recorded, const std::string& member) {
  // Group members have no reference-table histories (Runtime refuses `tables` with checkpoint.path), so a
  // member's position holds the events and features commits only.
  std::optional<StagedCommit> events, features;
  FRESHET_RETURN_IF_ERROR(DecodeStaged(recorded, {&events, &features}));
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
  for (History& h : histories_) {
    if (!h.staged) continue;
    FRESHET_RETURN_IF_ERROR(h.table->Publish(*h.staged));
    h.staged.reset();
  }
  return Status::Ok();
}

}  // namespace freshet

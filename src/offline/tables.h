// The offline store's tables: where they live, their columns, and how a feature value becomes a cell.
//
// <offline>/events        every accepted event, partitioned by event_date:
//                         seq (long: order of acceptance), event_time (timestamp), entity (string), [a composite
//                         key's parts, one string column per key field], ingest_time (timestamp: when Freshet
//                         accepted it), raw (string: the JSON line as received), with `lookups` in the spec also
//                         lookups (string: what each lookup answered, as JSON text)
// <offline>/features      after each accepted event, its entity's features as of the event's time, partitioned by
//                         event_date: seq, entity, [key parts], event_time, processing_time (timestamp), then one
//                         column per feature
// <offline>/feature_log   what the serving API answered, partitioned by served_date: request_id (string),
//                         entity, as_of (timestamp), served_at (timestamp), served_features (string: the
//                         comma-separated names of the features the answer held), exact (boolean: the answer's
//                         "exact"; null in logs written before the column existed), then one column per feature
//                         (null where the answer had no value or did not hold the feature)
// <offline>/_staging/     files waiting for the checkpoint that commits them (not part of any table)
//
// Feature columns are typed by aggregation: count, count_distinct and approx_count_distinct are long; sum,
// mean, min, max, stddev and approx_percentile are double (an integer sum is exact up to 2^53); last and first are
// string (a number as its shortest decimal text, a boolean as true/false); top_k is list<struct<value: string,
// count: long>> and last_k list<string>, their values as text like last's (offline/list_column.h; the feature
// log keeps the list's JSON text). A feature with no value (mean of an empty window) is null.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/value.h"
#include "offline/offline_table.h"
#include "spec/spec.h"

namespace freshet {

struct OfflinePaths {
  std::string root;
  std::string events;
  std::string features;
  std::string feature_log;
  std::string staging_override;  // When set, the staging folder of every table (an output outside root).
  int64_t retention_ms = int64_t{7} * 86'400'000;  // offline.retention.
  int compact_every = 0;                            // offline.compact_every.
  // Set when this process is one of several members of a Kafka consumer group writing the tables (their
  // shared `checkpoint.path`): names its staging folder and Delta app ids, and makes the tables shared.
  std::string group_member;
  std::string Staging(const std::string& table) const {
    if (!staging_override.empty()) return staging_override;
    return group_member.empty() ? root + "/_staging/" + table : root + "/_staging/" + group_member + "/" + table;
  }
};

// The spec's offline folder: offline.path, or <data_dir>/offline.
OfflinePaths OfflinePathsFor(const Spec& spec, const std::string& data_dir);

// With `partitioned` (a Kafka source) the events table also has `partition` and `offset`: each event's place
// in its partition, which orders the per-partition replay of backfill and historical. With a composite key
// (`key_fields` of two or more) both tables have, after `entity` (the encoded key), one string column per key
// field, named as the field, holding its part (KeyColumns). With `lookups` (the spec has lookups) it also has
// `lookups`: the answers the event was processed with (lookup/lookup_row.h), which replays use instead of asking
// the store again.
std::vector<OfflineColumn> EventsTableColumns(bool partitioned = false, const std::vector<std::string>& key_fields = {},
                                              bool lookups = false);
std::vector<OfflineColumn> FeaturesTableColumns(const Spec& spec);
// The key-part columns of a composite key: none for a single key field.
std::vector<OfflineColumn> KeyColumns(const std::vector<std::string>& key_fields);
// Puts the parts of the encoded key `entity` into KeyColumns(key_fields) (nulls where it is not an encoding of
// that many parts). `parts` is scratch.
void PutKeyParts(OfflineTable& table, const std::vector<std::string>& key_fields, std::string_view entity,
                 std::vector<std::string>* parts);
std::vector<OfflineColumn> FeatureLogColumns(const Spec& spec);

// The column type of a feature (see the file comment).
OfflineType FeatureColumnType(const FeatureSpec& feature);
// A feature value as the feature's column holds it: for a long column Int or Null, for a double column
// Double or Null, for a string column String or Null (numbers and booleans as text, written into *scratch,
// which must outlive the result's use).
Value FeatureCell(const FeatureSpec& feature, const Value& value, std::string* scratch);
// Appends FeatureCell(feature, value) to `table`.
void PutFeatureValue(OfflineTable& table, const FeatureSpec& feature, const Value& value);

// The Delta txn appId with which table `name` of group member `member` (empty: no group) commits.
std::string TableAppId(const std::string& name, const std::string& member);

// Options for opening table `name` ("events", "features", "feature_log") of `paths`.
OfflineTableOptions TableOptions(const OfflinePaths& paths, const std::string& name, std::vector<OfflineColumn> columns);

// One event of the events table, as replay needs it: its order and its line (the other columns are derived
// from the line, so replay does not decode them).
struct StoredEvent {
  int64_t seq = 0;
  // The table of a Kafka pipeline: the message's partition and offset (see EventsTableColumns).
  bool has_place = false;
  int64_t partition = 0;
  int64_t offset = 0;
  std::string_view raw;
  std::string_view lookups;  // The `lookups` cell; empty when the table has none.
  size_t raw_capacity = 0;  // Bytes readable from raw.data(): at least raw.size() + kParsePaddingBytes, so
                            // EventParser can parse it in place.
};

// Calls `each` for every event of the events table at `table_dir`, in the order they were accepted (seq),
// stopping early with the first error `each` returns.
Status ReplayEventsTable(const std::string& table_dir, const std::function<Status(const StoredEvent&)>& each);

// The Kafka partitions the events table holds events of (none for a table without a partition column).
Result<std::vector<int64_t>> EventsTablePartitions(const std::string& table_dir);

}  // namespace freshet

// Training/serving skew: how far the features the serving API answered differ from the features the
// point-in-time computation gives for the same (entity, as_of).
//
// Every answer of the offline `feature_log` table (offline/tables.h) with as_of in [since, until) is
// recomputed by ComputeFeatureValues (historical/historical.h), the very code `freshet historical` runs,
// over the offline `events` table (or a JSON-lines file). Per feature, over the answers that logged it:
//   exact          served and recomputed agree: both null, equal integers or strings, or doubles with
//                  |a - b| <= 1e-9 * max(1, |a|, |b|);
//   missing        served null but the recomputation has a value;
//   extra          served a value but the recomputation has none;
//   mean/max |diff| over the answers where both are numbers (absent when there are none);
//   psi            the population stability index of the served numbers against the recomputed ones:
//                  10 bins cut at the deciles of the recomputed numbers (right-closed), an empty bin's
//                  share taken as 1e-4; absent for string features or when either side has no number.
// A feature breaches when its mismatch rate (1 - exact / compared) exceeds spec.skew.max_mismatch_rate.
//
// Answers the server itself marked `"exact": false` (as of a time before the entity's horizon: its state may
// have held later events, see the README's lookup rule) are not compared: they are counted in not_exact and
// reported, since a difference there is the documented limit of a past-time lookup, not skew.
//
// Answers as of times later than the newest event cannot be recomputed fully yet (their events may not be
// in the events table), so `until` defaults to the newest event time.
//
//   SkewOptions options{.feature_log_dir = paths.feature_log, .events = EventInput::EventsTable(paths.events)};
//   FRESHET_ASSIGN_OR_RETURN(SkewReport report, ComputeSkew(spec, options));
//   std::fputs(SkewReportTable(report).c_str(), stdout);
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/value.h"
#include "historical/historical.h"
#include "spec/spec.h"

namespace freshet {

struct SkewOptions {
  std::string feature_log_dir;     // The feature_log Delta table.
  EventInput events;               // The events table, or a JSON-lines file.
  std::optional<int64_t> since_ms; // Inclusive; absent: from the first answer.
  std::optional<int64_t> until_ms; // Exclusive; absent: the newest event time among the events.
  bool progress = false;           // Progress line on stderr while the events are replayed.
};

// The comparison of one feature.
struct FeatureSkew {
  std::string feature;
  uint64_t compared = 0;  // Answers that logged this feature.
  uint64_t exact = 0;
  uint64_t missing = 0;
  uint64_t extra = 0;
  std::optional<double> mean_abs_diff;
  std::optional<double> max_abs_diff;
  std::optional<double> psi;
  bool breached = false;

  // exact / compared; 1 when nothing was compared.
  double match_rate() const { return compared == 0 ? 1.0 : static_cast<double>(exact) / compared; }
  double mismatch_rate() const { return compared == 0 ? 0.0 : static_cast<double>(compared - exact) / compared; }
};

struct SkewReport {
  std::optional<int64_t> since_ms;
  std::optional<int64_t> until_ms;  // The bound used (the newest event time when not given).
  uint64_t answers = 0;             // Answers in [since, until) that were compared.
  uint64_t not_exact = 0;           // Answers in [since, until) served with "exact": false, not compared.
  double max_mismatch_rate = 0;
  std::vector<FeatureSkew> features;  // Spec order.

  // Names of the breached features, in spec order.
  std::vector<std::string> breached() const;
};

// Accumulates the comparison of one feature, answer by answer. Values are cells as the feature's offline
// column holds them (FeatureCell): Null, Int, Double or String.
class FeatureSkewAccumulator {
 public:
  void Add(const Value& served, const Value& recomputed);
  // The statistics so far; breached when the mismatch rate exceeds `max_mismatch_rate`.
  FeatureSkew Finish(std::string feature, double max_mismatch_rate) const;

 private:
  uint64_t compared_ = 0, exact_ = 0, missing_ = 0, extra_ = 0;
  uint64_t diffs_ = 0;
  double sum_abs_diff_ = 0, max_abs_diff_ = 0;
  std::vector<double> served_numbers_, recomputed_numbers_;
};

// Whether a served and a recomputed cell agree (see the file comment).
bool SkewValuesMatch(const Value& served, const Value& recomputed);

// The population stability index of `actual` against `expected`: sum over 10 bins of
// (a - e) * ln(a / e), a and e the shares of each side in the bin (1e-4 for an empty bin); bins are cut at
// the deciles of `expected` (linear interpolation between order statistics), each bin right-closed.
// Absent when either side is empty.
std::optional<double> PopulationStabilityIndex(std::vector<double> expected, const std::vector<double>& actual);

// Reads the feature log, recomputes its answers and compares them. Fails (naming the folder and how to fix)
// when there is no feature_log table, or the events cannot be read.
Result<SkewReport> ComputeSkew(const Spec& spec, const SkewOptions& options);

// The report as one JSON object: {"since", "until", "answers", "max_mismatch_rate", "features": [...],
// "breached": [...]}, absent numbers as null; no trailing newline.
std::string SkewReportJson(const SkewReport& report);

// The report as an aligned text table with a heading line, for people.
std::string SkewReportTable(const SkewReport& report);

}  // namespace freshet

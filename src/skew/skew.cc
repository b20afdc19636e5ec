#include "skew/skew.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <deque>
#include <filesystem>

#include "common/time.h"
#include "event/dead_letters.h"
#include "offline/parquet_scan.h"
#include "offline/tables.h"

namespace freshet {
namespace {

constexpr double kRelativeTolerance = 1e-9;
constexpr double kEmptyBinShare = 1e-4;
constexpr int kPsiBins = 10;

// The answers of the feature log in the asked range: keys for the recomputation, and the served cells
// (Missing where the answer's file has no column for the feature). Strings are owned by `strings`.
struct LoggedAnswers {
  std::vector<EntityTime> keys;
  std::vector<std::vector<Value>> served;
  std::vector<uint8_t> exact;  // Per answer: 0 when the server marked it "exact": false.
  std::deque<std::string> strings;
};

Value ServedCell(const ScanColumn& column, size_t row, std::deque<std::string>* strings) {
  if (!column.valid[row]) return Value::Null();
  switch (column.type) {
    case OfflineType::kInt64:
    case OfflineType::kTimestamp:
    case OfflineType::kBool: return Value::Int(column.ints[row]);
    case OfflineType::kDouble: return Value::Double(column.doubles[row]);
    case OfflineType::kString:
    case OfflineType::kStringList:  // (The feature log keeps lists as their JSON text: FeatureLogColumns.)
    case OfflineType::kValueCounts: return Value::String(strings->emplace_back(column.strings[row]));
  }
  return Value::Null();
}

constexpr const char* kServedFeatures = "served_features";
constexpr const char* kExact = "exact";

// Marks in *held the spec features named in `list` (comma-separated names).
void HeldFeatures(const Spec& spec, std::string_view list, std::vector<uint8_t>* held) {
  std::fill(held->begin(), held->end(), 0);
  while (!list.empty()) {
    const size_t comma = list.find(',');
    const std::string_view name = list.substr(0, comma);
    for (size_t k = 0; k < spec.features.size(); ++k) {
      if (spec.features[k].name == name) (*held)[k] = 1;
    }
    list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
  }
}

Result<LoggedAnswers> ReadFeatureLog(const Spec& spec, const SkewOptions& options) {
  if (!std::filesystem::is_directory(std::filesystem::path(options.feature_log_dir) / "_delta_log")) {
    return Status::NotFound("there is no feature_log table at '" + options.feature_log_dir +
                            "' yet: `freshet run` writes it when its serving API answers lookups (feature_log.enabled "
                            "in the spec); point --data-dir (or the spec's offline.path) at the data of that run");
  }
  FRESHET_ASSIGN_OR_RETURN(std::vector<std::string> files, DeltaTableFiles(options.feature_log_dir));
  LoggedAnswers answers;
  for (const std::string& file : files) {
    std::vector<std::string> columns = {"entity", "as_of"};
    FRESHET_ASSIGN_OR_RETURN(std::unique_ptr<ParquetScanner> probe, ParquetScanner::Open(file, columns));
    const std::vector<std::string>& names = probe->column_names();
    // Which features an answer held: its served_features list when the table has one, else every feature
    // with a column.
    const bool has_served_list = std::find(names.begin(), names.end(), kServedFeatures) != names.end();
    if (has_served_list) columns.push_back(kServedFeatures);
    // Logs written before the column existed have no `exact`: their answers are compared as before.
    int exact_index = -1;
    if (std::find(names.begin(), names.end(), kExact) != names.end()) {
      exact_index = static_cast<int>(columns.size());
      columns.push_back(kExact);
    }
    std::vector<int> scan_index(spec.features.size(), -1);  // Per feature: its column in the scan, if logged.
    for (size_t k = 0; k < spec.features.size(); ++k) {
      if (std::find(names.begin(), names.end(), spec.features[k].name) != names.end()) {
        scan_index[k] = static_cast<int>(columns.size());
        columns.push_back(spec.features[k].name);
      }
    }
    probe.reset();
    std::vector<uint8_t> held(spec.features.size(), 1);
    FRESHET_ASSIGN_OR_RETURN(std::unique_ptr<ParquetScanner> scanner, ParquetScanner::Open(file, columns));
    ScanBatch batch;
    while (true) {
      FRESHET_ASSIGN_OR_RETURN(bool more, scanner->Next(&batch));
      if (!more) break;
      for (size_t r = 0; r < batch.rows; ++r) {
        if (!batch.columns[0].valid[r] || !batch.columns[1].valid[r]) continue;
        const int64_t as_of = batch.columns[1].ints[r];
        if (options.since_ms && as_of < *options.since_ms) continue;
        if (options.until_ms && as_of >= *options.until_ms) continue;
        answers.keys.push_back(EntityTime{std::string(batch.columns[0].strings[r]), as_of});
        if (has_served_list) HeldFeatures(spec, batch.columns[2].valid[r] ? batch.columns[2].strings[r] : "", &held);
        const ScanColumn* exact = exact_index >= 0 ? &batch.columns[static_cast<size_t>(exact_index)] : nullptr;
        answers.exact.push_back(exact != nullptr && exact->valid[r] && exact->ints[r] == 0 ? 0 : 1);
        std::vector<Value>& served = answers.served.emplace_back(spec.features.size(), Value::Missing());
        for (size_t k = 0; k < spec.features.size(); ++k) {
          if (scan_index[k] >= 0 && held[k]) served[k] = ServedCell(batch.columns[scan_index[k]], r, &answers.strings);
        }
      }
    }
  }
  return answers;
}

template <typename Number>
void AppendNumber(Number value, std::string* out) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  out->append(buf, end);
}

void AppendJsonNumber(std::optional<double> value, std::string* out) {
  if (!value || !std::isfinite(*value)) {
    out->append("null");
    return;
  }
  AppendNumber(*value, out);
}

void AppendJsonString(std::string_view text, std::string* out) {
  out->push_back('"');
  AppendJsonEscaped(text, out);
  out->push_back('"');
}

std::string Printf(const char* format, double value) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), format, value);
  return buf;
}

}  // namespace

bool SkewValuesMatch(const Value& served, const Value& recomputed) {
  if (served.is_null() || recomputed.is_null() || served.is_missing() || recomputed.is_missing()) {
    return (served.is_null() || served.is_missing()) == (recomputed.is_null() || recomputed.is_missing());
  }
  if (served.type == ValueType::kInt && recomputed.type == ValueType::kInt) return served.i == recomputed.i;
  if (served.is_number() && recomputed.is_number()) {
    const double a = served.as_double(), b = recomputed.as_double();
    return std::abs(a - b) <= kRelativeTolerance * std::max({1.0, std::abs(a), std::abs(b)});
  }
  if (served.type == ValueType::kString && recomputed.type == ValueType::kString) return served.s == recomputed.s;
  if (served.type == ValueType::kBool && recomputed.type == ValueType::kBool) return served.b == recomputed.b;
  return false;
}

void FeatureSkewAccumulator::Add(const Value& served, const Value& recomputed) {
  ++compared_;
  if (SkewValuesMatch(served, recomputed)) ++exact_;
  const bool served_null = !served.is_present_non_null();
  const bool recomputed_null = !recomputed.is_present_non_null();
  if (served_null && !recomputed_null) ++missing_;
  if (!served_null && recomputed_null) ++extra_;
  if (served.is_number() && recomputed.is_number()) {
    const double diff = std::abs(served.as_double() - recomputed.as_double());
    ++diffs_;
    sum_abs_diff_ += diff;
    max_abs_diff_ = std::max(max_abs_diff_, diff);
  }
  if (served.is_number()) served_numbers_.push_back(served.as_double());
  if (recomputed.is_number()) recomputed_numbers_.push_back(recomputed.as_double());
}

FeatureSkew FeatureSkewAccumulator::Finish(std::string feature, double max_mismatch_rate) const {
  FeatureSkew s;
  s.feature = std::move(feature);
  s.compared = compared_;
  s.exact = exact_;
  s.missing = missing_;
  s.extra = extra_;
  if (diffs_ > 0) {
    s.mean_abs_diff = sum_abs_diff_ / static_cast<double>(diffs_);
    s.max_abs_diff = max_abs_diff_;
  }
  s.psi = PopulationStabilityIndex(recomputed_numbers_, served_numbers_);
  s.breached = s.mismatch_rate() > max_mismatch_rate;
  return s;
}

std::optional<double> PopulationStabilityIndex(std::vector<double> expected, const std::vector<double>& actual) {
  if (expected.empty() || actual.empty()) return std::nullopt;
  std::sort(expected.begin(), expected.end());
  const size_t n = expected.size();
  double edges[kPsiBins - 1];
  for (int k = 1; k < kPsiBins; ++k) {
    const double pos = static_cast<double>(k) * static_cast<double>(n - 1) / kPsiBins;
    const size_t lo = static_cast<size_t>(pos);
    const double frac = pos - static_cast<double>(lo);
    edges[k - 1] = lo + 1 < n ? expected[lo] + frac * (expected[lo + 1] - expected[lo]) : expected[lo];
  }
  // Bin of x: the number of edges below it, so each bin (edge[i-1], edge[i]] is closed on the right.
  auto bin = [&](double x) { return std::lower_bound(edges, edges + kPsiBins - 1, x) - edges; };
  double expected_count[kPsiBins] = {}, actual_count[kPsiBins] = {};
  for (double x : expected) expected_count[bin(x)] += 1;
  for (double x : actual) actual_count[bin(x)] += 1;
  double psi = 0;
  for (int i = 0; i < kPsiBins; ++i) {
    const double e = expected_count[i] > 0 ? expected_count[i] / static_cast<double>(expected.size()) : kEmptyBinShare;
    const double a = actual_count[i] > 0 ? actual_count[i] / static_cast<double>(actual.size()) : kEmptyBinShare;
    psi += (a - e) * std::log(a / e);
  }
  return psi;
}

std::vector<std::string> SkewReport::breached() const {
  std::vector<std::string> names;
  for (const FeatureSkew& f : features) {
    if (f.breached) names.push_back(f.feature);
  }
  return names;
}

Result<SkewReport> ComputeSkew(const Spec& spec, const SkewOptions& options) {
  FRESHET_ASSIGN_OR_RETURN(LoggedAnswers answers, ReadFeatureLog(spec, options));
  PointInTimeOptions compute_options;
  compute_options.progress = options.progress;
  FRESHET_ASSIGN_OR_RETURN(FeatureValues recomputed,
                           ComputeFeatureValues(spec, options.events, answers.keys, compute_options));

  SkewReport report;
  report.since_ms = options.since_ms;
  report.until_ms = options.until_ms;
  if (!report.until_ms && recomputed.stats.has_events) report.until_ms = recomputed.stats.max_event_time_ms;
  report.max_mismatch_rate = spec.skew.max_mismatch_rate;
  std::vector<FeatureSkewAccumulator> accumulators(spec.features.size());
  std::string scratch;
  for (size_t r = 0; r < answers.keys.size(); ++r) {
    // Without a given `until`, answers at or after the newest event (none at all when there are no events)
    // could not be recomputed fully: skip them.
    if (!report.until_ms || answers.keys[r].time_ms >= *report.until_ms) continue;
    if (!answers.exact[r]) {
      ++report.not_exact;
      continue;
    }
    ++report.answers;
    for (size_t k = 0; k < spec.features.size(); ++k) {
      const Value& served = answers.served[r][k];
      if (served.is_missing()) continue;
      accumulators[k].Add(served, FeatureCell(spec.features[k], recomputed.rows[r][k], &scratch));
    }
  }
  for (size_t k = 0; k < spec.features.size(); ++k) {
    report.features.push_back(accumulators[k].Finish(spec.features[k].name, report.max_mismatch_rate));
  }
  return report;
}

std::string SkewReportJson(const SkewReport& report) {
  std::string out = "{\"since\": ";
  if (report.since_ms) AppendNumber(*report.since_ms, &out); else out.append("null");
  out.append(", \"until\": ");
  if (report.until_ms) AppendNumber(*report.until_ms, &out); else out.append("null");
  out.append(", \"answers\": ");
  AppendNumber(report.answers, &out);
  out.append(", \"not_exact_answers\": ");
  AppendNumber(report.not_exact, &out);
  out.append(", \"max_mismatch_rate\": ");
  AppendJsonNumber(report.max_mismatch_rate, &out);
  out.append(", \"features\": [");
  for (size_t k = 0; k < report.features.size(); ++k) {
    const FeatureSkew& f = report.features[k];
    out.append(k == 0 ? "{" : ", {");
    out.append("\"feature\": ");
    AppendJsonString(f.feature, &out);
    out.append(", \"compared\": ");
    AppendNumber(f.compared, &out);
    out.append(", \"exact\": ");
    AppendNumber(f.exact, &out);
    out.append(", \"match_rate\": ");
    AppendJsonNumber(f.match_rate(), &out);
    out.append(", \"mismatch_rate\": ");
    AppendJsonNumber(f.mismatch_rate(), &out);
    out.append(", \"missing\": ");
    AppendNumber(f.missing, &out);
    out.append(", \"extra\": ");
    AppendNumber(f.extra, &out);
    out.append(", \"mean_abs_diff\": ");
    AppendJsonNumber(f.mean_abs_diff, &out);
    out.append(", \"max_abs_diff\": ");
    AppendJsonNumber(f.max_abs_diff, &out);
    out.append(", \"psi\": ");
    AppendJsonNumber(f.psi, &out);
    out.append(", \"breached\": ");
    out.append(f.breached ? "true" : "false");
    out.push_back('}');
  }
  out.append("], \"breached\": [");
  const std::vector<std::string> breached = report.breached();
  for (size_t k = 0; k < breached.size(); ++k) {
    if (k > 0) out.append(", ");
    AppendJsonString(breached[k], &out);
  }
  out.append("]}");
  return out;
}

std::string SkewReportTable(const SkewReport& report) {
  const auto when = [](const std::optional<int64_t>& ms, const char* open_end) {
    return ms ? FormatRfc3339(*ms) : std::string(open_end);
  };
  std::string out = "skew: " + std::to_string(report.answers) + " answers as of [" + when(report.since_ms, "start") +
                    ", " + when(report.until_ms, "newest event") + "); max mismatch rate " +
                    Printf("%g", report.max_mismatch_rate) + "\n";
  if (report.not_exact > 0) {
    out.append("not compared: " + std::to_string(report.not_exact) + " answers served with \"exact\": false (as of a " +
               "time before the entity's horizon; `freshet historical` answers those)\n");
  }
  out.push_back('\n');
  std::vector<std::vector<std::string>> rows = {
      {"feature", "compared", "exact", "match", "mismatch", "missing", "extra", "mean|diff|", "max|diff|", "psi", ""}};
  const auto optional = [](const std::optional<double>& v, const char* format) {
    return v ? Printf(format, *v) : std::string("-");
  };
  for (const FeatureSkew& f : report.features) {
    rows.push_back({f.feature, std::to_string(f.compared), std::to_string(f.exact),
                    Printf("%.3f%%", 100 * f.match_rate()), Printf("%.3f%%", 100 * f.mismatch_rate()),
                    std::to_string(f.missing), std::to_string(f.extra), optional(f.mean_abs_diff, "%.6g"),
                    optional(f.max_abs_diff, "%.6g"), optional(f.psi, "%.4f"), f.breached ? "BREACHED" : "ok"});
  }
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      const std::string pad(widths[c] - row[c].size(), ' ');
      if (c > 0) line.append("  ");
      // Names and the verdict to the left, numbers to the right.
      line.append(c == 0 || c + 1 == row.size() ? row[c] + pad : pad + row[c]);
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out.append(line).push_back('\n');
  }
  const std::vector<std::string> breached = report.breached();
  out.push_back('\n');
  if (breached.empty()) {
    out.append("no feature's mismatch rate is above " + Printf("%g", report.max_mismatch_rate) + "\n");
  } else {
    std::string names;
    for (const std::string& n : breached) names += (names.empty() ? "" : ", ") + n;
    out.append("breached (mismatch rate above " + Printf("%g", report.max_mismatch_rate) + "): " + names + "\n");
  }
  return out;
}

}  // namespace freshet

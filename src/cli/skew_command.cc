// `freshet skew`: compares what the serving API answered (the offline feature_log table) with the
// point-in-time recomputation of the same answers (the code of `freshet historical`), feature by feature.
#include <unistd.h>

#include <cstdio>
#include <optional>
#include <string>

#include "cli/commands.h"
#include "run/feature_sets.h"
#include "historical/historical.h"
#include "offline/tables.h"
#include "skew/skew.h"
#include "spec/spec.h"

namespace freshet::cli {

void RegisterSkew(CLI::App& app, int* exit_code) {
  struct Args {
    std::string spec;
    std::string data_dir = "freshet-data";
    std::string since;
    std::string until;
    std::string events;
    std::string feature_set;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "skew",
      "Training/serving skew: recompute every logged serving answer (offline feature_log table) as of its time from "
      "the offline events table, and compare per feature: exact matches, missing and extra values, mean and max "
      "absolute difference, population stability index. Exit code 0: every feature's mismatch rate is within "
      "skew.max_mismatch_rate; 1: some feature's is above it; 2: the check could not run (usage, spec, missing "
      "table, unreadable files)");
  cmd->add_option("--spec", args->spec, "Feature spec (YAML)")->required();
  cmd->add_option("--data-dir", args->data_dir,
                  "The data folder of `freshet run`, holding offline/feature_log and offline/events (unless the spec "
                  "sets offline.path)")
      ->capture_default_str();
  cmd->add_option("--since", args->since, "Only answers as of this time or later (epoch ms or RFC 3339)");
  cmd->add_option("--until", args->until,
                  "Only answers as of times before this (epoch ms or RFC 3339). Default: the newest event time among "
                  "the events, since answers as of later times cannot be recomputed fully yet");
  cmd->add_option("--events", args->events,
                  "Recompute from this JSON-lines file instead of the offline events table");
  cmd->add_option("--set", args->feature_set,
                  "The spec is feature set NAME (its `name`) of a run with several: read its feature_log_<NAME> table");
  cmd->add_flag("--json", args->json, "Print the report as one JSON object on stdout (default: an aligned table)");
  cmd->callback([args, exit_code] {
    *exit_code = 2;
    std::optional<Spec> spec = LoadSpecOrReport(args->spec, exit_code);
    if (!spec) return;
    if (!args->feature_set.empty() && args->feature_set != spec->name) {
      std::fprintf(stderr, "freshet skew: --set %s: the spec's `name` is '%s'; give that set's spec\n",
                   args->feature_set.c_str(), spec->name.c_str());
      return;
    }
    const OfflinePaths paths = args->feature_set.empty() ? OfflinePathsFor(*spec, args->data_dir)
                                                         : FeatureSetOfflinePaths(*spec, args->data_dir);
    SkewOptions options;
    options.feature_log_dir = paths.feature_log;
    options.events = args->events.empty() ? EventInput::EventsTable(paths.events) : EventInput::JsonLines(args->events);
    options.progress = isatty(STDERR_FILENO) != 0;
    for (auto [text, bound, name] : {std::tuple{&args->since, &options.since_ms, "--since"},
                                     std::tuple{&args->until, &options.until_ms, "--until"}}) {
      if (text->empty()) continue;
      Result<int64_t> ms = ParseTimeText(*text);
      if (!ms.ok()) {
        std::fprintf(stderr, "freshet skew: %s: %s (give epoch milliseconds or RFC 3339, e.g. 2026-01-01T00:00:00Z)\n",
                     name, ms.status().message().c_str());
        return;
      }
      *bound = *ms;
    }
    if (options.since_ms && options.until_ms && *options.since_ms >= *options.until_ms) {
      std::fprintf(stderr, "freshet skew: --since must be before --until\n");
      return;
    }
    Result<SkewReport> report = ComputeSkew(*spec, options);
    if (!report.ok()) {
      std::fprintf(stderr, "freshet skew: %s\n", report.status().message().c_str());
      return;
    }
    std::fprintf(stderr, "skew: %llu answers compared against %s\n",
                 static_cast<unsigned long long>(report->answers), options.events.Describe().c_str());
    if (args->json) {
      std::printf("%s\n", SkewReportJson(*report).c_str());
    } else {
      std::fputs(SkewReportTable(*report).c_str(), stdout);
    }
    std::fflush(stdout);
    *exit_code = report->breached().empty() ? 0 : 1;
  });
}

}  // namespace freshet::cli

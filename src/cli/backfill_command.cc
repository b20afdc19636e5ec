// `freshet backfill`: recompute features from history through the streaming path (see run/backfill.h).
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "historical/historical.h"
#include "run/backfill.h"
#include "spec/spec.h"

namespace freshet::cli {

void RegisterBackfill(CLI::App& app, int* exit_code) {
  struct Args {
    std::vector<std::string> specs;
    BackfillOptions options;
    std::string from, to;
    std::vector<std::string> tables;
    bool no_checkpoint = false;
    bool no_progress = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "backfill",
      "Recompute the features table from the offline events table (or files) through the streaming operators, and "
      "write a checkpoint `freshet run` continues from");
  cmd->add_option("--spec", args->specs,
                  "Feature spec (YAML); with a data directory of several feature sets, the --spec files of the run (or "
                  "only the set's) and --set")
      ->required();
  cmd->add_option("--set", args->options.feature_set,
                  "The feature set to rebuild, of a run with several (`freshet run --spec a.yaml --spec b.yaml`): its "
                  "features_<set> table and checkpoint are replaced, the other sets' are not touched");
  cmd->add_option("--data-dir", args->options.data_dir,
                  "The data directory of `freshet run`: its offline events table is read, the checkpoint written there")
      ->capture_default_str();
  cmd->add_option("--events", args->options.events_files,
                  "Read these JSON-lines files, in order, instead of the events table (the stream then reads its "
                  "source from the start: point it at the events that follow)");
  cmd->add_option("--from", args->from, "Write features rows for event times from T (epoch ms or RFC 3339)");
  cmd->add_option("--to", args->to, "... up to, not including, T; every event is applied to the state regardless");
  cmd->add_option("--output", args->options.output_dir,
                  "The features table (a Delta table folder) to replace; default: the spec's offline features table");
  cmd->add_option("--table", args->tables,
                  "With --events: a reference table's rows, NAME=FILE, all known before the first event (repeatable); "
                  "from the events table the tables' history is replayed where each version arrived");
  cmd->add_flag("--no-checkpoint", args->no_checkpoint, "Write no checkpoint (only the features table)");
  cmd->add_flag("--no-progress", args->no_progress, "Never show progress (shown by default on a terminal)");
  cmd->callback([args, exit_code] {
    std::optional<Spec> spec;
    std::string names;
    for (const std::string& path : args->specs) {
      std::optional<Spec> loaded = LoadSpecOrReport(path, exit_code);
      if (!loaded) return;
      names += (names.empty() ? "" : ", ") + loaded->name;
      if (args->specs.size() == 1 || loaded->name == args->options.feature_set) spec = std::move(loaded);
    }
    if (args->specs.size() > 1 && args->options.feature_set.empty()) {
      std::fprintf(stderr, "freshet backfill: several --spec files (%s): say which set to rebuild with --set NAME\n",
                   names.c_str());
      *exit_code = 2;
      return;
    }
    if (!args->options.feature_set.empty() && (!spec || spec->name != args->options.feature_set)) {
      std::fprintf(stderr, "freshet backfill: --set %s: no --spec file has that `name` (they have: %s)\n",
                   args->options.feature_set.c_str(), names.c_str());
      *exit_code = 2;
      return;
    }
    for (auto [text, out, name] : {std::tuple{&args->from, &args->options.from_ms, "--from"},
                                   std::tuple{&args->to, &args->options.to_ms, "--to"}}) {
      if (text->empty()) continue;
      Result<int64_t> t = ParseTimeText(*text);
      if (!t.ok()) {
        std::fprintf(stderr, "freshet backfill: %s: %s\n", name, t.status().message().c_str());
        *exit_code = 2;
        return;
      }
      *out = *t;
    }
    Result<std::vector<std::pair<std::string, std::string>>> tables = ParseTableOptions(args->tables);
    if (ReportFailure("backfill", tables.status(), exit_code)) return;
    args->options.table_files = std::move(*tables);
    args->options.write_checkpoint = !args->no_checkpoint;
    args->options.progress = !args->no_progress && isatty(STDERR_FILENO);
    BackfillStats stats;
    Status status = RunBackfill(*spec, args->options, &stats);
    if (ReportFailure("backfill", status, exit_code)) return;
    std::fprintf(stderr,
                 "backfill: %llu events read, %llu accepted, %llu rejected, %llu late, %llu duplicates; %llu features "
                 "rows in %.2f s",
                 static_cast<unsigned long long>(stats.lines), static_cast<unsigned long long>(stats.accepted),
                 static_cast<unsigned long long>(stats.rejected), static_cast<unsigned long long>(stats.late),
                 static_cast<unsigned long long>(stats.duplicates), static_cast<unsigned long long>(stats.feature_rows),
                 stats.seconds);
    if (stats.checkpoint_sequence) {
      std::fprintf(stderr, "; checkpoint %llu written", static_cast<unsigned long long>(*stats.checkpoint_sequence));
    }
    std::fprintf(stderr, "\n");
    *exit_code = 0;
  });
}

}  // namespace freshet::cli

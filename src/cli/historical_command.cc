// `freshet historical`: point-in-time feature values for entity rows (CSV or Parquet in and out), from a
// file of events or the offline events table that `freshet run` writes.
#include <unistd.h>

#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "historical/historical.h"
#include "offline/tables.h"
#include "spec/spec.h"

namespace freshet::cli {

void RegisterHistorical(CLI::App& app, int* exit_code) {
  struct Args {
    std::string spec;
    std::string events;
    std::string data_dir = "freshet-data";
    std::vector<std::string> tables;
    HistoricalOptions options;
    bool no_progress = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "historical",
      "Compute point-in-time feature values for entity rows (a training set) from a file of events or from the "
      "offline events table that `freshet run` writes");
  cmd->add_option("--spec", args->spec, "Feature spec (YAML)")->required();
  cmd->add_option("--events", args->events,
                  "Events, JSON lines ('-' for stdin). Without it, the offline events table is replayed in the order "
                  "`freshet run` accepted the events (offline.path, or <data-dir>/offline/events)");
  cmd->add_option("--data-dir", args->data_dir, "The data folder of `freshet run`, whose offline events table is read "
                                                "when --events is not given")
      ->capture_default_str();
  cmd->add_option("--entities", args->options.entities_path,
                  "Entity rows: CSV with a header, or .parquet; needs the spec's entity column (string or integer) and "
                  "timestamp column (epoch ms, RFC 3339, or a Parquet timestamp); other columns pass through")
      ->required();
  cmd->add_option("--output", args->options.output_path,
                  "Output: CSV ('-' for stdout), or Parquet (zstd) when it ends in .parquet; the input columns, then "
                  "one column per feature")
      ->required();
  cmd->add_option("--dead-letters", args->options.dead_letters_path,
                  "Write rejected, late and duplicate events here (JSON lines with line number, or seq for the events "
                  "table, and reason)");
  cmd->add_option("--table", args->tables,
                  "With --events: a reference table's rows, NAME=FILE (JSON lines; CSV or Parquet when it ends in "
                  ".csv or .parquet), all known up front: an event at t joins the version with the greatest "
                  "valid_from <= t. Repeatable. Without --events the tables' history in the offline store is replayed "
                  "as the stream saw it");
  cmd->add_flag("--no-progress", args->no_progress, "Never show progress (shown by default on a terminal)");
  cmd->callback([args, exit_code] {
    std::optional<Spec> spec = LoadSpecOrReport(args->spec, exit_code);
    if (!spec) return;
    args->options.events = args->events.empty()
                               ? EventInput::EventsTable(OfflinePathsFor(*spec, args->data_dir).events)
                               : EventInput::JsonLines(args->events);
    Result<std::vector<std::pair<std::string, std::string>>> tables = ParseTableOptions(args->tables);
    if (ReportFailure("historical", tables.status(), exit_code)) return;
    if (!tables->empty() && args->events.empty()) {
      ReportFailure("historical", Status::Invalid("--table goes with --events; without --events the tables' "
                                                  "history in the offline store is used"), exit_code);
      return;
    }
    args->options.events.table_files = std::move(*tables);
    args->options.progress = !args->no_progress && isatty(STDERR_FILENO);
    HistoricalStats stats;
    Status status = RunHistorical(*spec, args->options, &stats);
    if (ReportFailure("historical", status, exit_code)) return;
    // Skipped fields (a feature's field missing, null or of the wrong type) only when there are any.
    std::string skipped = SkippedFieldsSummary(*spec, stats);
    if (!skipped.empty()) skipped = "; " + skipped;
    char table_cost[64] = "";
    if (!spec->tables.empty()) {
      std::snprintf(table_cost, sizeof(table_cost), ", the reference tables %.2f CPU s before them", stats.tables_cpu_seconds);
    }
    std::fprintf(stderr,
                 "historical: %llu events read, %llu accepted, %llu rejected, %llu late, %llu duplicates%s; %llu rows "
                 "written in %.2f s; the events took %.2f CPU s%s\n",
                 static_cast<unsigned long long>(stats.events_read), static_cast<unsigned long long>(stats.accepted),
                 static_cast<unsigned long long>(stats.rejected), static_cast<unsigned long long>(stats.late),
                 static_cast<unsigned long long>(stats.duplicates), skipped.c_str(),
                 static_cast<unsigned long long>(stats.rows), stats.seconds, stats.events_cpu_seconds,
                 table_cost);
    *exit_code = 0;
  });
}

}  // namespace freshet::cli

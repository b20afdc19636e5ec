// `freshet historical`: point-in-time feature values for a CSV of entity rows.
#include <unistd.h>

#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "historical/historical.h"
#include "spec/spec.h"

namespace freshet::cli {

void RegisterHistorical(CLI::App& app, int* exit_code) {
  struct Args {
    std::string spec;
    HistoricalOptions options;
    bool no_progress = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "historical", "Compute point-in-time feature values for entity rows (a training set) from a file of events");
  cmd->add_option("--spec", args->spec, "Feature spec (YAML)")->required();
  cmd->add_option("--events", args->options.events_path, "Events, JSON lines ('-' for stdin)")->required();
  cmd->add_option("--entities", args->options.entities_path,
                  "CSV with a header; needs the spec's entity and timestamp columns, other columns pass through")
      ->required();
  cmd->add_option("--output", args->options.output_path, "Output CSV ('-' for stdout)")->required();
  cmd->add_option("--dead-letters", args->options.dead_letters_path,
                  "Write rejected and late events here (JSON lines with line number and reason)");
  cmd->add_flag("--no-progress", args->no_progress, "Never show progress (shown by default on a terminal)");
  cmd->callback([args, exit_code] {
    Result<Spec> spec = LoadSpec(args->spec);
    if (!spec.ok()) {
      std::fprintf(stderr, "%s\n", spec.status().message().c_str());
      *exit_code = 2;
      return;
    }
    args->options.progress = !args->no_progress && isatty(STDERR_FILENO);
    HistoricalStats stats;
    Status status = RunHistorical(*spec, args->options, &stats);
    if (!status.ok()) {
      std::fprintf(stderr, "freshet historical: %s\n", status.message().c_str());
      *exit_code = status.code() == StatusCode::kInvalidArgument ? 2 : 1;
      return;
    }
    std::fprintf(stderr,
                 "historical: %llu events read, %llu accepted, %llu rejected, %llu late; %llu rows written in %.2f s\n",
                 static_cast<unsigned long long>(stats.events_read), static_cast<unsigned long long>(stats.accepted),
                 static_cast<unsigned long long>(stats.rejected), static_cast<unsigned long long>(stats.late),
                 static_cast<unsigned long long>(stats.rows), stats.seconds);
    *exit_code = 0;
  });
}

}  // namespace freshet::cli

// freshet: the command-line entry point. Subcommands live in their own files (see commands.h).
#include <CLI/CLI.hpp>

#include "cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"Freshet: real-time feature engine for machine learning"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "freshet 0.1.0");
  int exit_code = 0;
  freshet::cli::RegisterValidate(app, &exit_code);
  freshet::cli::RegisterHistorical(app, &exit_code);
  freshet::cli::RegisterGenerate(app, &exit_code);
  freshet::cli::RegisterRun(app, &exit_code);
  freshet::cli::RegisterServe(app, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  return exit_code;
}

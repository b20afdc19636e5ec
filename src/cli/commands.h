// The `freshet` subcommands. Each Register* adds one subcommand to the CLI11 app; when that subcommand
// runs, its callback stores the process exit code in *exit_code (0 ok, 1 failure, 2 user error).
#pragma once

#include <CLI/CLI.hpp>

namespace freshet::cli {

void RegisterValidate(CLI::App& app, int* exit_code);
void RegisterHistorical(CLI::App& app, int* exit_code);
void RegisterGenerate(CLI::App& app, int* exit_code);
void RegisterRun(CLI::App& app, int* exit_code);
void RegisterServe(CLI::App& app, int* exit_code);

}  // namespace freshet::cli

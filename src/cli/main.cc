// freshet: the command-line entry point. Subcommands live in their own files (see commands.h).
#include <CLI/CLI.hpp>

#include <cstdlib>
#include <fstream>

#include "cli/commands.h"

namespace freshet::cli {

Result<std::string> ReadBearerToken(const std::string& token_file) {
  if (token_file.empty()) {
    const char* token = std::getenv("FRESHET_TOKEN");
    return std::string(token == nullptr ? "" : token);
  }
  std::ifstream in(token_file);
  std::string token;
  if (!in || !std::getline(in, token) || token.empty()) {
    return Status::Invalid("cannot read a bearer token from the first line of '" + token_file + "'");
  }
  return token;
}

}  // namespace freshet::cli

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
  freshet::cli::RegisterSkew(app, &exit_code);
  freshet::cli::RegisterBackfill(app, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  return exit_code;
}

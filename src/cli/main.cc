// freshet: the command-line entry point. Subcommands live in their own files (see commands.h).
#include <CLI/CLI.hpp>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cli/commands.h"
#include "common/text.h"

namespace freshet::cli {

Result<std::string> ReadBearerToken(const std::string& token_file) {
  // Whitespace as the HTTP server trims it from the token (std::isspace: space, \t, \n, \v, \f, \r).
  const auto trimmed = [](std::string_view text) {
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) text.remove_prefix(1);
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.remove_suffix(1);
    return std::string(text);
  };
  // A token that is only whitespace would be trimmed to nothing and leave ingest and admin endpoints open
  // without a word: refuse it, naming where it came from.
  if (token_file.empty()) {
    const char* token = std::getenv("FRESHET_TOKEN");
    if (token == nullptr || token[0] == '\0') return std::string();  // Unset or empty: no token required.
    std::string value = trimmed(token);
    if (value.empty()) {
      return Status::Invalid(
          "FRESHET_TOKEN holds only whitespace, which would leave ingest and admin endpoints without "
          "authentication; set it to the bearer token, or unset it to run without one");
    }
    return value;
  }
  std::ifstream in(token_file);
  std::string line;
  if (!in || !std::getline(in, line)) {
    return Status::Invalid("cannot read a bearer token from the first line of '" + token_file +
                           "' (--token-file): the file cannot be read or is empty");
  }
  std::string value = trimmed(line);
  if (value.empty()) {
    return Status::Invalid("the first line of '" + token_file +
                           "' (--token-file) is empty or only whitespace, which would leave ingest and "
                           "admin endpoints without authentication; put the bearer token on the first line "
                           "of the file");
  }
  return value;
}

namespace {

// When the first argument is meant as a subcommand (it is not an option) but names none, prints
// "freshet: unknown command 'X'; did you mean 'Y'?" (or the list of commands when none is close) to stderr
// and returns true. The app has no positional arguments of its own, so a first word can only be a command.
bool ReportUnknownCommand(const CLI::App& app, int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') return false;
  const std::string word = argv[1];
  std::vector<std::string_view> names;
  for (const CLI::App* command : app.get_subcommands(std::function<bool(const CLI::App*)>())) {
    if (command->check_name(word)) return false;
    names.push_back(command->get_name());
  }
  std::string message = "freshet: unknown command " + QuotedForMessage(word);
  if (std::optional<std::string_view> close = ClosestMatch(word, names)) {
    message += "; did you mean '" + std::string(*close) + "'?";
  } else {
    message += "; the commands are";
    for (size_t k = 0; k < names.size(); ++k) message += (k == 0 ? " " : ", ") + std::string(names[k]);
  }
  std::fprintf(stderr, "%s (see freshet --help)\n", message.c_str());
  return true;
}

}  // namespace
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
  freshet::cli::RegisterCompact(app, &exit_code);
  freshet::cli::RegisterVacuum(app, &exit_code);
  freshet::cli::RegisterExplain(app, &exit_code);
  if (freshet::cli::ReportUnknownCommand(app, argc, argv)) return 2;
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  return exit_code;
}

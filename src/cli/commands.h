// The `freshet` subcommands. Each Register* adds one subcommand to the CLI11 app; when that subcommand
// runs, its callback stores the process exit code in *exit_code (0 ok, 1 failure, 2 user error).
#pragma once

#include <CLI/CLI.hpp>

#include <cstdio>
#include <optional>
#include <string>

#include "common/status.h"
#include "spec/spec.h"

namespace freshet::cli {

void RegisterValidate(CLI::App& app, int* exit_code);
void RegisterHistorical(CLI::App& app, int* exit_code);
void RegisterGenerate(CLI::App& app, int* exit_code);
void RegisterRun(CLI::App& app, int* exit_code);
void RegisterServe(CLI::App& app, int* exit_code);
void RegisterSkew(CLI::App& app, int* exit_code);
void RegisterBackfill(CLI::App& app, int* exit_code);
void RegisterCompact(CLI::App& app, int* exit_code);
void RegisterVacuum(CLI::App& app, int* exit_code);
void RegisterExplain(CLI::App& app, int* exit_code);

// On failure prints "freshet COMMAND: MESSAGE" to stderr, sets *exit_code (2 for what the invocation can fix:
// invalid arguments or missing inputs; 1 otherwise) and returns true; returns false when `status` is ok.
inline bool ReportFailure(const char* command, const Status& status, int* exit_code) {
  if (status.ok()) return false;
  std::fprintf(stderr, "freshet %s: %s\n", command, status.message().c_str());
  *exit_code = status.code() == StatusCode::kInvalidArgument || status.code() == StatusCode::kNotFound ? 2 : 1;
  return true;
}

// The spec at `path`, or nullopt after printing why it is not valid (file, line, field) to stderr and setting
// *exit_code to 2. A valid spec's warnings go to stderr as well.
inline std::optional<Spec> LoadSpecOrReport(const std::string& path, int* exit_code) {
  Result<Spec> spec = LoadSpec(path);
  if (!spec.ok()) {
    std::fprintf(stderr, "%s\n", spec.status().message().c_str());
    *exit_code = 2;
    return std::nullopt;
  }
  std::fputs(SpecWarningsText(*spec).c_str(), stderr);
  return std::move(*spec);
}

// The (name, path) pairs of `--table NAME=FILE` options; fails naming the option without '=' or a name.
inline Result<std::vector<std::pair<std::string, std::string>>> ParseTableOptions(const std::vector<std::string>& args) {
  std::vector<std::pair<std::string, std::string>> tables;
  for (const std::string& arg : args) {
    const size_t eq = arg.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == arg.size()) {
      return Status::Invalid("--table " + arg + ": expected NAME=FILE, e.g. --table profiles=profiles.jsonl");
    }
    tables.emplace_back(arg.substr(0, eq), arg.substr(eq + 1));
  }
  return tables;
}

// The bearer token for ingest and admin endpoints, without surrounding whitespace: the first line of
// `token_file` when given, else the FRESHET_TOKEN environment variable, else empty (no token required; an
// empty FRESHET_TOKEN counts as unset). Never from the spec. Fails (kInvalidArgument, a message naming the
// file or FRESHET_TOKEN) when the file cannot be read or the token is only whitespace.
Result<std::string> ReadBearerToken(const std::string& token_file);

}  // namespace freshet::cli

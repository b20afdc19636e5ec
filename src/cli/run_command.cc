// `freshet run`: the continuous pipeline (see run/runtime.h).
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "common/time.h"
#include "run/data_dir_reset.h"
#include "run/feature_sets.h"
#include "run/runtime.h"
#include "spec/spec.h"

namespace freshet::cli {
namespace {

std::atomic<bool> g_stop{false};

void OnSignal(int) { g_stop.store(true); }

}  // namespace

void RegisterRun(CLI::App& app, int* exit_code) {
  struct Args {
    std::vector<std::string> specs;
    std::string data_dir = "freshet-data";
    std::string token_file;
    std::string host;
    int port = -1;
    bool exit_at_end = false;
    bool reset = false;
    bool new_events_file = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "run", "Run the continuous pipeline: consume events, keep features up to date, serve them over HTTP");
  cmd->add_option("--spec", args->specs,
                  "Feature spec (YAML) with a `source` section; give --spec several times to run several feature sets "
                  "over one source (each spec one set, named by its `name`)")
      ->required();
  cmd->add_option("--data-dir", args->data_dir, "Checkpoints, dead letters and the ingest log go here")
      ->capture_default_str();
  cmd->add_option("--token-file", args->token_file,
                  "File holding the bearer token required for ingest and admin endpoints (or set FRESHET_TOKEN)");
  cmd->add_option("--host", args->host, "Listen address (default: the spec's serve.host, 127.0.0.1)");
  cmd->add_option("--port", args->port, "Listen port (default: the spec's serve.port; 0 picks a free one)");
  cmd->add_flag("--exit-at-end", args->exit_at_end,
                "With a file source that does not follow: checkpoint and exit once the file is read");
  cmd->add_flag("--reset", args->reset,
                "Start fresh instead of restoring: first move the data directory's checkpoints/, dead_letters/ and "
                "offline/ (when it is the spec's offline store) aside into <data-dir>/reset-<UTC time>/; nothing is "
                "deleted");
  cmd->add_flag("--new-events-file", args->new_events_file,
                "With a file source: the file at source.path replaced the one the checkpoint was reading and holds "
                "only events not read before (e.g. rotated while stopped, its predecessor deleted): read it from its "
                "start. Without it such a file is refused unless the spec has dedup and a watermark");
  cmd->callback([args, exit_code] {
    std::vector<Spec> specs;
    specs.reserve(args->specs.size());
    for (const std::string& path : args->specs) {
      std::optional<Spec> loaded = LoadSpecOrReport(path, exit_code);
      if (!loaded) return;
      specs.push_back(std::move(*loaded));
    }
    const Spec* spec = &specs.front();
    // Before anything is moved or started: a token that cannot be used is an error of the invocation.
    Result<std::string> token = ReadBearerToken(args->token_file);
    if (!token.ok()) {
      std::fprintf(stderr, "freshet run: %s\n", token.status().message().c_str());
      *exit_code = 2;
      return;
    }
    if (args->reset) {
      Result<DataDirReset> reset = MoveRunStateAside(*spec, args->data_dir, WallClockMs());
      if (ReportFailure("run", reset.status(), exit_code)) return;
      for (const std::string& line : reset->report) std::fprintf(stderr, "freshet run: %s\n", line.c_str());
    }
    RuntimeOptions options;
    options.data_dir = args->data_dir;
    options.host = args->host;
    options.port = args->port;
    options.exit_when_exhausted = args->exit_at_end;
    options.new_events_file = args->new_events_file;
    options.bearer_token = *token;
    std::signal(SIGTERM, OnSignal);
    std::signal(SIGINT, OnSignal);
    // A file-size limit (ulimit -f) then fails a write with EFBIG, handled like a full disk (ingest refused,
    // checkpoint retried), instead of killing the process.
    std::signal(SIGXFSZ, SIG_IGN);
    const auto start = [&]() -> Result<std::unique_ptr<Runtime>> {
      if (specs.size() > 1) return Runtime::StartSets(specs, options);
      // A data directory of several sets is refused, not read as an empty one.
      FRESHET_ASSIGN_OR_RETURN(std::optional<SetsManifest> manifest, ReadSetsManifest(args->data_dir));
      FRESHET_RETURN_IF_ERROR(CheckDataDirSets(args->data_dir, {spec->name}, manifest));
      return Runtime::Start(*spec, options);
    };
    Result<std::unique_ptr<Runtime>> runtime = start();
    if (!runtime.ok()) {
      std::fprintf(stderr, "freshet run: %s\n", runtime.status().message().c_str());
      *exit_code = runtime.status().code() == StatusCode::kInvalidArgument ? 2 : 1;
      return;
    }
    std::string names;
    for (const Spec& s : specs) names += (names.empty() ? "" : ", ") + s.name;
    std::fprintf(stderr, "freshet run: serving %s on http://%s:%d (data in %s)\n", names.c_str(),
                 (args->host.empty() ? spec->serve.host : args->host).c_str(), (*runtime)->port(),
                 args->data_dir.c_str());
    std::fflush(stderr);
    Status status = (*runtime)->Run(g_stop);
    if (!status.ok()) {
      std::fprintf(stderr, "freshet run: %s\n", status.message().c_str());
      *exit_code = 1;
      return;
    }
    *exit_code = 0;
  });
}

}  // namespace freshet::cli

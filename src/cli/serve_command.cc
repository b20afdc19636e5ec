// `freshet serve`: answer feature lookups from the Redis online store (see run/redis_serving.h).
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "cli/commands.h"
#include "run/redis_serving.h"
#include "serve/http_server.h"
#include "serve/metrics.h"
#include "spec/spec.h"

namespace freshet::cli {
namespace {
std::atomic<bool> g_serve_stop{false};
void OnServeSignal(int) { g_serve_stop.store(true); }
}  // namespace

void RegisterServe(CLI::App& app, int* exit_code) {
  struct Args {
    std::string spec;
    std::string host;
    int port = -1;
    std::string token_file;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "serve", "Serve feature lookups from the Redis online store that `freshet run` writes (any number of instances)");
  cmd->add_option("--spec", args->spec, "Feature spec (YAML) with online: {type: redis, ...}")->required();
  cmd->add_option("--host", args->host, "Listen address (default: the spec's serve.host, 127.0.0.1)");
  cmd->add_option("--port", args->port, "Listen port (default: the spec's serve.port; 0 picks a free one)");
  cmd->add_option("--token-file", args->token_file, "Bearer token for admin endpoints (or FRESHET_TOKEN)");
  cmd->callback([args, exit_code] {
    std::optional<Spec> spec = LoadSpecOrReport(args->spec, exit_code);
    if (!spec) return;
    // Before connecting to Redis: a token that cannot be used is an error of the invocation.
    Result<std::string> token = ReadBearerToken(args->token_file);
    if (!token.ok()) {
      std::fprintf(stderr, "freshet serve: %s\n", token.status().message().c_str());
      *exit_code = 2;
      return;
    }
    Result<std::unique_ptr<FeatureService>> service = MakeRedisFeatureService(*spec);
    if (!service.ok()) {
      std::fprintf(stderr, "freshet serve: %s\n", service.status().message().c_str());
      *exit_code = 2;
      return;
    }
    HttpServerOptions http;
    http.host = args->host.empty() ? spec->serve.host : args->host;
    http.port = args->port >= 0 ? args->port : spec->serve.port;
    ApplyServeSpec(spec->serve, &http);
    http.bearer_token = *token;
    MetricsRegistry metrics;
    HttpServer server(**service, metrics, http);
    if (Status started = server.Start(); !started.ok()) {
      std::fprintf(stderr, "freshet serve: %s\n", started.message().c_str());
      *exit_code = 1;
      return;
    }
    std::fprintf(stderr, "freshet serve: serving %s from redis://%s:%d on http://%s:%d\n", spec->name.c_str(),
                 spec->online.host.c_str(), spec->online.port, http.host.c_str(), server.port());
    std::fflush(stderr);
    std::signal(SIGTERM, OnServeSignal);
    std::signal(SIGINT, OnServeSignal);
    while (!g_serve_stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    server.Stop();
    *exit_code = 0;
  });
}

}  // namespace freshet::cli

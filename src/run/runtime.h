// Runtime: `freshet run`, the continuous pipeline on one machine.
//
//   source (file, or the durable HTTP ingest log) -> parse -> lateness -> FeatureEngine -> serving
//                                 \-> dead letters (files under the data directory, with reasons)
//
// One processing thread reads batches from the source and applies them to the engine under an exclusive
// lock; HTTP threads answer lookups under a shared lock, finalizing every window as of the request time.
// Every checkpoint interval (and at shutdown) the engine state, the source position and the dead-letter
// file's length are written together, atomically (state/checkpoint.h). On start the newest valid
// checkpoint is restored: the source seeks back to its position and the dead-letter file is cut back to its
// length, so after a crash (kill -9 included) no accepted event is lost and none is counted twice.
//
// Freshness: for each event, the time from its arrival at the source until the batch holding it is
// visible to lookups, in a histogram; with `freshness_slo` in the spec, /health turns degraded while the
// p99 over the SLO window exceeds the target, and a warning is logged once per breach.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "serve/feature_service.h"
#include "serve/metrics.h"
#include "spec/spec.h"

namespace freshet {

class HttpServer;

struct RuntimeOptions {
  std::string data_dir;      // Checkpoints, dead letters and the ingest log live here. Created if missing.
  std::string bearer_token;  // Required for ingest and admin endpoints when not empty.
  std::string host;          // Overrides spec.serve.host when not empty.
  int port = -1;             // Overrides spec.serve.port when >= 0.
  bool exit_when_exhausted = false;  // Stop (after a final checkpoint) once a non-follow file is read.
  // With a file source: when the file at the path replaced the one the checkpoint was reading and does not
  // begin with what was read of it, read it from its start as a new file instead of refusing to start.
  bool new_events_file = false;
};

class Runtime {
 public:
  // Opens the data directory, restores the newest valid checkpoint, and starts the HTTP server.
  static Result<std::unique_ptr<Runtime>> Start(const Spec& spec, RuntimeOptions options);
  // Several feature sets over one source (`freshet run --spec a.yaml --spec b.yaml`, run/feature_sets.h): the
  // first spec's source is read once, each batch's JSON parsed once (SharedLines: each set takes its fields from
  // there), and every batch is applied to each set in turn, by one thread; each set has
  // its own engine, lateness clock, deduplication ids, checkpoints and dead letters (under <data dir>/sets/<name>),
  // Redis keys (by its name) and features_<name> table; the first set writes the shared events table. The sets
  // checkpoint together, at one source position, and a manifest names each set's checkpoint of that moment. One
  // HTTP server answers /v1/features/{set}/{entity} and POST /v1/features with "feature_set"; /health gathers every
  // set's reasons and /metrics adds each set's counts (freshet_set_*); /v1/spec (without ?feature_set=), ingest
  // and the console are the first set's. `specs` must outlive the runtime.
  static Result<std::unique_ptr<Runtime>> StartSets(const std::vector<Spec>& specs, RuntimeOptions options);
  ~Runtime();

  // Processes events until `stop` becomes true (or the source is exhausted with exit_when_exhausted), then
  // writes a final checkpoint, flushes, and stops the server.
  Status Run(const std::atomic<bool>& stop);

  int port() const;

 private:
  struct Impl;
  explicit Runtime(std::unique_ptr<Impl> impl);
  Runtime(std::vector<std::unique_ptr<Impl>> sets, std::unique_ptr<HttpServer> server, std::string data_dir);
  Status RunSets(const std::atomic<bool>& stop);
  Status CheckpointSets();  // Every set at once, then the manifest.
  std::unique_ptr<Impl> impl_;
  // Several feature sets: one runtime each (the first reads the source), and the server in front of them.
  std::vector<std::unique_ptr<Impl>> sets_;
  std::unique_ptr<HttpServer> server_;
  std::string data_dir_;
};

}  // namespace freshet

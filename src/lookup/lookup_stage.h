// LookupStage: the lookups (`lookups:` in the spec) of a batch of event lines, between reading and applying.
//
// For each line it reads the fields the key (or url) templates name, renders each lookup's target, answers it
// from the cache or sends it (each distinct target of a batch once; up to max_in_flight at once, answers in any
// order), and returns per line what each lookup answered. The caller then processes the batch's lines in input
// order with those answers (EventPath::SetLookups): every event waits for its own lookups, and the order of the
// events, of an entity or not, stays the input order. A line that cannot be parsed gets no lookups (it is
// rejected later). Late and duplicate events are looked up too: they are judged only after.
//
// Metrics, per lookup (label `lookup`): freshet_lookup_latency_seconds (sending to answer), _requests_total,
// _timeouts_total, _errors_total, _cache_hits_total, _cache_misses_total, freshet_lookup_in_flight. Health():
// a reason while more than half of the requests of the last 30 s (at least 10) failed.
//
// Not thread-safe: the processing thread calls Resolve; Health from any thread.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "lookup/lookup_row.h"
#include "serve/metrics.h"
#include "spec/spec.h"

namespace freshet {

class LookupStage {
 public:
  LookupStage(const Spec& spec, MetricsRegistry& metrics);
  ~LookupStage();

  struct Line {
    std::string_view text;
    size_t capacity = 0;  // >= text.size() + kParsePaddingBytes readable bytes; 0: not parsed (too long).
  };
  // Answers every lookup of every line; (*out)[k] is line k's. Blocks until each is answered or timed out.
  void Resolve(const std::vector<Line>& lines, std::vector<EventLookups>* out);

  // Why /health should say degraded (the store fails), or nullopt.
  std::optional<std::string> Health() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace freshet

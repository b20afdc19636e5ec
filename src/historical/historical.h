// Point-in-time ("historical") feature computation: for each entity row (entity, t, labels...) the
// features as of t, computed by the same FeatureEngine operators as the streaming runtime.
//
// How: events are read in input order through the parser and the lateness rule (Admit), extracted,
// and held in a reorder buffer by event time. Because no admitted event can be earlier than the low
// watermark (M - out_of_orderness - lateness), events and entity rows below it are final: they are
// released in time order, each event applied and each row answered once every event at or before its
// time is applied. With a watermark the buffer stays as small as the lateness horizon; without one it
// holds all events until the end of input.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"
#include "spec/spec.h"

namespace freshet {

struct HistoricalOptions {
  std::string events_path;
  std::string entities_path;
  std::string output_path;
  std::string dead_letters_path;  // Empty: dead letters are counted, not written.
  bool progress = false;          // Progress line on stderr.
};

struct HistoricalStats {
  uint64_t events_read = 0;  // Lines read.
  uint64_t accepted = 0;
  uint64_t rejected = 0;
  uint64_t late = 0;
  uint64_t rows = 0;
  double seconds = 0;
};

Status RunHistorical(const Spec& spec, const HistoricalOptions& options, HistoricalStats* stats);

}  // namespace freshet

// `freshet run --reset`: start a data directory fresh by moving the state of earlier runs aside, never deleting it.
//
//   Result<DataDirReset> reset = MoveRunStateAside(spec, "freshet-data", WallClockMs());
//   for (const std::string& line : reset->report) std::fprintf(stderr, "freshet run: %s\n", line.c_str());
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "spec/spec.h"

namespace freshet {

struct DataDirReset {
  std::string folder;                // Where things were moved: <data dir>/reset-<UTC time>; empty if nothing was.
  std::vector<std::string> moved;    // The names moved ("checkpoints", "dead_letters", "sets", "offline"), in that order.
  std::vector<std::string> report;   // One line each for the user: what moved where, what was kept and why.
};

// Moves, from `data_dir`, the folders a run restores from or appends to: checkpoints/, dead_letters/ and sets/
// (those of a run with several feature sets), and
// offline/ when it is the spec's offline store (offline.path not set, or naming that folder), into a new
// folder <data_dir>/reset-<UTC time as YYYYMMDDTHHMMSSZ> (with -2, -3, ... added if that name is taken). The
// next run then starts with no checkpoint, as on an empty data directory. The HTTP ingest log (ingest/) is
// kept: it holds acknowledged events, which the fresh run reads again from the oldest one kept.
//
// Nothing is moved when none of them exists (folder empty). An error, before anything is moved, when the spec
// writes an offline store outside the data directory that already has content: a run without a checkpoint
// rolls such a store back (removing the rows earlier runs streamed into it), so it must be moved aside by hand.
// `now_ms`: the wall-clock time (epoch ms) that names the folder.
Result<DataDirReset> MoveRunStateAside(const Spec& spec, const std::string& data_dir, int64_t now_ms);

}  // namespace freshet

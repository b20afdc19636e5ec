// Serving from Redis: `freshet serve`, a Freshet instance that holds no state of its own and answers
// lookups from the entity states that `freshet run` writes to Redis (online: {type: redis}).
//
// The state blob of an entity (key freshet:{spec}:state:{entity}) is: u8 version (1), i64 newest event
// time (epoch ms), then FeatureEngine::SaveEntity's bytes. A lookup MGETs the blobs, loads them into a
// scratch engine and finalizes every window as of the request time, exactly as the embedded store does.
// The same MGET reads the sync marker (see store/redis_store.h): without it Redis lost its data and `freshet
// run` has not yet written it back, so a missing blob proves nothing and the lookup fails with IoError (503)
// instead of answering "unknown"; /health is then degraded too.
#pragma once

#include <memory>
#include <string>

#include "common/bytes.h"
#include "common/status.h"
#include "serve/feature_service.h"
#include "spec/spec.h"

namespace freshet {

// Writes the header of an entity's Redis state blob (before FeatureEngine::SaveEntity's bytes): a version,
// the entity's newest event time and the engine's low watermark (lookups as of a time at or after either
// are exact).
void WriteRedisStateHeader(int64_t newest_event_ms, int64_t low_watermark_ms, ByteWriter& out);

// A FeatureService backed by Redis; Ingest is refused (events go to `freshet run`).
Result<std::unique_ptr<FeatureService>> MakeRedisFeatureService(const Spec& spec);

}  // namespace freshet

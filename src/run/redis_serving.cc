#include "run/redis_serving.h"

#include <atomic>
#include <cstdlib>
#include <limits>

#include "engine/feature_engine.h"
#include "serve/metrics.h"
#include "store/redis_store.h"

namespace freshet {
namespace {

constexpr uint8_t kRedisStateVersion = 2;  // 2: the low watermark after the newest event time.

class RedisFeatureService final : public FeatureService {
 public:
  RedisFeatureService(const Spec& spec, std::unique_ptr<RedisReader> reader)
      : spec_(spec),
        reader_(std::move(reader)),
        refused_no_marker_(metrics_.GetCounter("freshet_serve_refused_no_marker_total",
                                               "Lookups refused (503) because Redis held no sync marker: it lost its "
                                               "data and `freshet run` had not yet written it back.")) {}

  const Spec& spec() const override { return spec_; }
  // Every lookup is a round trip to Redis.
  bool LookupBlocks() const override { return true; }

  Status Lookup(std::span<const std::string_view> entities, int64_t as_of_ms, std::span<const int> features,
                const std::function<void(std::span<const FeatureLookup>)>& consume) const override {
    std::vector<std::string> keys(entities.begin(), entities.end());
    bool marker_present = false;
    FRESHET_ASSIGN_OR_RETURN(std::vector<std::optional<std::string>> blobs,
                             reader_->MGetState(keys, &marker_present));
    // Without the marker a missing state may be an entity that Redis lost: answering "unknown, count 0"
    // would be wrong with a 200, so refuse (503, retry) until `freshet run` has written everything back.
    if (!marker_present) {
      refused_no_marker_.Increment();
      return Status::IoError(NoMarkerReason() + "; not answering rather than calling its entities unknown");
    }
    FeatureEngine scratch(spec_);  // Holds only this request's entities.
    std::vector<FeatureLookup> lookups(entities.size());
    std::vector<Value> values;
    for (size_t k = 0; k < entities.size(); ++k) {
      FeatureLookup& out = lookups[k];
      std::optional<uint32_t> index;
      if (blobs[k]) {
        ByteReader in(*blobs[k]);
        uint8_t version = 0;
        int64_t newest = 0, low = std::numeric_limits<int64_t>::min();
        if (!in.ReadU8(&version) || (version != kRedisStateVersion && version != 1) || !in.ReadI64(&newest) ||
            (version >= 2 && !in.ReadI64(&low))) {
          return Status::Internal("the Redis state of '" + std::string(entities[k]) + "' is not in a format this " +
                                  "freshet reads (version " + std::to_string(version) + ")");
        }
        FRESHET_RETURN_IF_ERROR(scratch.LoadEntity(entities[k], in));
        index = scratch.FindEntity(entities[k]);
        out.known = true;
        out.newest_event_ms = newest;
        // Exact at or after the newest event, or at or after the low watermark when the state was written.
        out.exact = as_of_ms >= newest || (scratch.keeps_recent() && as_of_ms >= low &&
                                           scratch.ExpiryExactAsOf(index, as_of_ms));
      }
      scratch.QueryIndex(index, as_of_ms, &values);
      out.values.resize(features.size());
      for (size_t f = 0; f < features.size(); ++f) out.values[f] = values[features[f]];
    }
    consume(lookups);
    return Status::Ok();
  }

  Result<IngestAck> Ingest(std::string_view, IngestFormat) override {
    return Status::Invalid("this instance serves from Redis and takes no events; push them to `freshet run`");
  }

  HealthReport Health() const override {
    HealthReport report;
    Result<std::optional<std::string>> marker = reader_->GetMarker();
    if (!marker.ok()) {
      report.ok = false;
      report.reasons.push_back("online store " + Address() + " unreachable: " + marker.status().message());
    } else if (!marker->has_value()) {
      report.ok = false;
      report.reasons.push_back(NoMarkerReason() + "; lookups answer 503 until it is back");
    }
    return report;
  }

  void AppendMetrics(std::string* out) const override { metrics_.AppendText(out); }

 private:
  std::string Address() const { return "redis://" + spec_.online.host + ":" + std::to_string(spec_.online.port); }

  std::string NoMarkerReason() const {
    return "online store " + Address() + " has no sync marker (key " + reader_->keys().MarkerKey() +
           "): Redis lost its data (flushed, or restarted without persistence) and `freshet run` has not finished "
           "writing every entity back, or no `freshet run` has written to it yet";
  }

  const Spec& spec_;
  std::unique_ptr<RedisReader> reader_;
  MetricsRegistry metrics_;  // This service's own metrics; the HTTP server's registry has the rest.
  Counter& refused_no_marker_;
};

}  // namespace

void WriteRedisStateHeader(int64_t newest_event_ms, int64_t low_watermark_ms, ByteWriter& out) {
  out.PutU8(kRedisStateVersion);
  out.PutI64(newest_event_ms);
  out.PutI64(low_watermark_ms);
}

Result<std::unique_ptr<FeatureService>> MakeRedisFeatureService(const Spec& spec) {
  if (spec.online.type != "redis") {
    return Status::Invalid(spec.file + ": `freshet serve` reads from Redis; set online: {type: redis, host: ..., "
                           "port: ...} (the embedded store is served by `freshet run` itself)");
  }
  RedisConnectionOptions options;
  options.host = spec.online.host;
  options.port = spec.online.port;
  if (const char* password = std::getenv("FRESHET_REDIS_PASSWORD")) options.password = password;
  FRESHET_ASSIGN_OR_RETURN(std::unique_ptr<RedisReader> reader, RedisReader::Create(options, spec.name));
  return std::unique_ptr<FeatureService>(new RedisFeatureService(spec, std::move(reader)));
}

}  // namespace freshet

// A librdkafka configuration from Freshet's settings and the spec's `properties`, shared by every Kafka client
// Freshet makes (the event source, the reference-table reader, `freshet generate`'s producer), so that a refused
// property is reported the same way everywhere.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

struct rd_kafka_conf_s;  // librdkafka's rd_kafka_conf_t.

namespace freshet {

using KafkaProperties = std::vector<std::pair<std::string, std::string>>;

// A new configuration with `settings`, then `properties` (which override them, as the README promises), set in
// that order. An error names the client (`client`, e.g. "Kafka source") and the property librdkafka refused,
// with its reason. The caller owns the result (rd_kafka_new takes it, else rd_kafka_conf_destroy).
Result<rd_kafka_conf_s*> MakeKafkaConf(std::string_view client, const KafkaProperties& settings,
                                       const KafkaProperties& properties);

}  // namespace freshet

#include "source/kafka_config.h"

#include <librdkafka/rdkafka.h>

namespace freshet {

Result<rd_kafka_conf_t*> MakeKafkaConf(std::string_view client, const KafkaProperties& settings,
                                       const KafkaProperties& properties) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char error[512];
  for (const KafkaProperties* list : {&settings, &properties}) {
    for (const auto& [key, value] : *list) {
      if (rd_kafka_conf_set(conf, key.c_str(), value.c_str(), error, sizeof(error)) != RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        return Status::Invalid(std::string(client) + ": property " + key + "=" + value +
                               " was refused by librdkafka: " + error);
      }
    }
  }
  return conf;
}

}  // namespace freshet

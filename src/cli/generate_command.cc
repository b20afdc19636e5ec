// `freshet generate`: writes the synthetic fraud-detection workload (see gen/generator.h) as JSON lines, and
// optionally a CSV of entity rows for point-in-time queries.
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>

#include "source/kafka_producer.h"
#include "cli/commands.h"
#include "common/status.h"
#include "common/time.h"
#include "gen/generator.h"

namespace freshet::cli {
namespace {

// The command line as typed; converted to GeneratorOptions when the subcommand runs.
struct GenerateArgs {
  GeneratorOptions options;  // Numeric options are bound here directly, so their defaults live in one place.
  std::string start = FormatRfc3339(GeneratorOptions{}.start_ms);
  std::string duration = FormatDuration(GeneratorOptions{}.duration_ms);
  std::string disorder = "0";
  std::string timestamp_format = TimestampFormatName(GeneratorOptions{}.timestamp_format);
  std::string output = "-";
  std::string entities;
  std::string kafka;  // Brokers: send the events to a Kafka topic instead of writing them.
  std::string topic = "events";
  bool progress = false;
  CLI::Option* progress_option = nullptr;
};

// A duration that may also be zero ("0", "0s", ...).
Result<int64_t> ParseDurationOrZero(std::string_view text) {
  size_t zeros = 0;
  while (zeros < text.size() && text[zeros] == '0') ++zeros;
  if (zeros > 0 && (zeros == text.size() || !(text[zeros] >= '0' && text[zeros] <= '9'))) {
    std::string_view unit = text.substr(zeros);
    if (unit.empty() || ParseDurationMs("1" + std::string(unit)).ok()) return int64_t{0};
  }
  return ParseDurationMs(text);
}

// Turns the typed text options into args->options; the message names the option at fault.
Status ResolveOptions(GenerateArgs* args) {
  Result<int64_t> start = ParseRfc3339Ms(args->start);
  if (!start.ok()) return Status::Invalid("--start: " + start.status().message());
  args->options.start_ms = *start;
  Result<int64_t> duration = ParseDurationMs(args->duration);
  if (!duration.ok()) return Status::Invalid("--duration: " + duration.status().message());
  args->options.duration_ms = *duration;
  Result<int64_t> disorder = ParseDurationOrZero(args->disorder);
  if (!disorder.ok()) {
    return Status::Invalid("--disorder: " + disorder.status().message() + ", or 0 for none");
  }
  args->options.disorder_ms = *disorder;
  Result<TimestampFormat> format = ParseTimestampFormat(args->timestamp_format);
  if (!format.ok()) return Status::Invalid("--timestamp-format: " + format.status().message());
  args->options.timestamp_format = *format;
  const bool events_to_stdout = args->options.events > 0 && (args->output.empty() || args->output == "-");
  if (!args->entities.empty()) {
    if (args->entities == "-" && events_to_stdout) {
      return Status::Invalid(
          "--entities - and the events would both go to stdout; give --output FILE, "
          "--entities FILE, or --events 0 to write only the entity rows");
    }
    if (args->entities == args->output && args->options.events > 0) {
      return Status::Invalid("--entities and --output name the same file '" + args->output +
                             "'; give them different paths");
    }
  }
  return ValidateGeneratorOptions(args->options);
}

// 950 -> "950", 45'000 -> "45.0K", 4'500'000 -> "4.5M".
std::string ShortCount(uint64_t count) {
  char text[32];
  if (count < 10'000) {
    std::snprintf(text, sizeof text, "%llu", static_cast<unsigned long long>(count));
  } else if (count < 1'000'000) {
    std::snprintf(text, sizeof text, "%.1fK", static_cast<double>(count) / 1e3);
  } else {
    std::snprintf(text, sizeof text, "%.1fM", static_cast<double>(count) / 1e6);
  }
  return text;
}

// Draws "generate [#########-----------]  45%  4.5M/10.0M lines" on stderr, at most ten times a second.
class ProgressBar {
 public:
  void Update(uint64_t done, uint64_t total) {
    const auto now = std::chrono::steady_clock::now();
    const bool finished = done >= total;
    if (!finished && drawn_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    drawn_ = true;
    constexpr int kWidth = 30;
    const double fraction = total == 0 ? 1.0 : static_cast<double>(done) / static_cast<double>(total);
    const int filled = static_cast<int>(fraction * kWidth);
    std::string bar(static_cast<size_t>(filled), '#');
    bar.append(static_cast<size_t>(kWidth - filled), '-');
    std::fprintf(stderr, "\rgenerate [%s] %3d%%  %s/%s lines", bar.c_str(), static_cast<int>(fraction * 100),
                 ShortCount(done).c_str(), ShortCount(total).c_str());
    if (finished) std::fputc('\n', stderr);
    std::fflush(stderr);
  }

 private:
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_draw_;
};

// Opens `path` for writing ("-" or empty means stdout). On failure returns nullptr and sets *error.
FILE* OpenOutput(const std::string& path, const char* what, Status* error) {
  if (path.empty() || path == "-") return stdout;
  FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) {
    *error = Status::Invalid(std::string("cannot open the ") + what + " file '" + path + "': " +
                             std::strerror(errno) + "; check that its directory exists and is writable");
  }
  return file;
}

// Writes `status` to stderr if it is an error; returns the exit code (0 ok, 2 user error, 1 failure).
int Report(const Status& status) {
  if (status.ok()) return 0;
  std::cerr << "freshet generate: " << status.message() << "\n";
  return status.code() == StatusCode::kInvalidArgument ? 2 : 1;
}

// Closes a file OpenOutput opened (stdout stays open).
Status CloseOutput(FILE* file, const std::string& path) {
  if (file == stdout) return Status::Ok();
  if (std::fclose(file) != 0) {
    return Status::IoError("cannot finish writing '" + path + "': " + std::strerror(errno) +
                           "; check that the disk is not full");
  }
  return Status::Ok();
}

int RunGenerate(GenerateArgs* args) {
  Status status = ResolveOptions(args);
  if (!status.ok()) return Report(status);
  GeneratorOptions& options = args->options;

  if (!args->entities.empty()) {
    FILE* file = OpenOutput(args->entities, "entities", &status);
    if (file == nullptr) return Report(status);
    status = GenerateEntities(options, file);
    Status closed = CloseOutput(file, args->entities);
    if (status.ok()) status = closed;
    if (!status.ok()) return Report(status);
    if (options.events == 0) return 0;
  }

  if (!args->kafka.empty()) {
    if (!args->output.empty() && args->output != "-") {
      return Report(Status::Invalid("--kafka sends the events to a topic; leave out --output " + args->output));
    }
    Result<std::unique_ptr<KafkaLineProducer>> producer =
        KafkaLineProducer::Open(KafkaProducerOptions{args->kafka, args->topic, "user_id", {}});
    if (!producer.ok()) return Report(producer.status());
    const bool show_progress = args->progress_option->count() > 0 ? args->progress : isatty(STDERR_FILENO) == 1;
    ProgressBar bar;
    if (show_progress) options.on_progress = [&bar](uint64_t done, uint64_t total) { bar.Update(done, total); };
    status = GenerateEvents(options, (*producer)->file());
    Status finished = (*producer)->Finish();
    if (status.ok()) status = finished;
    if (status.ok()) {
      std::cerr << "freshet generate: sent " << (*producer)->sent() << " events to Kafka topic '" << args->topic
                << "' at " << args->kafka << ", keyed by user_id\n";
    }
    return Report(status);
  }

  FILE* out = OpenOutput(args->output, "output", &status);
  if (out == nullptr) return Report(status);
  const bool output_is_file = out != stdout;
  const bool show_progress =
      args->progress_option->count() > 0 ? args->progress : output_is_file && isatty(STDERR_FILENO) == 1;
  ProgressBar bar;
  if (show_progress) options.on_progress = [&bar](uint64_t done, uint64_t total) { bar.Update(done, total); };
  status = GenerateEvents(options, out);
  Status closed = CloseOutput(out, args->output);
  if (status.ok()) status = closed;
  return Report(status);
}

}  // namespace

void RegisterGenerate(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand(
      "generate",
      "Write a synthetic fraud-detection event stream as JSON lines (views, purchases, refunds, logins of "
      "users with skewed activity), deterministic for a given seed");
  GeneratorOptions& o = args->options;
  cmd->add_option("--users", o.users, "Number of distinct users")->capture_default_str();
  cmd->add_option("--events", o.events, "Number of lines to write (0: only the entity rows)")
      ->capture_default_str();
  cmd->add_option("--start", args->start, "Start of the event time span (RFC 3339)")->capture_default_str();
  cmd->add_option("--duration", args->duration, "Length of the event time span (e.g. 24h, 90m)")
      ->capture_default_str();
  cmd->add_option("--seed", o.seed, "Random seed; the same options and seed give byte-identical output")
      ->capture_default_str();
  cmd->add_option("--disorder", args->disorder,
                  "Bounded out-of-orderness: events may be written up to this much behind the newest written "
                  "(e.g. 5s; 0: in order)")
      ->capture_default_str();
  cmd->add_option(
         "--late-share", o.late_share,
         "Share of events (0..1) written far behind the stream: 2-3x --disorder plus 5 minutes or more")
      ->capture_default_str();
  cmd->add_option(
         "--malformed-share", o.malformed_share,
         "Share of lines (0..1) that are malformed in varied ways (bad JSON, missing or bad user_id/ts, "
         "invalid UTF-8, empty lines)")
      ->capture_default_str();
  cmd->add_flag("--event-ids", o.event_ids,
                "Give every line a unique \"event_id\" (e1, e2, ... in written order), for "
                "`dedup: {field: event_id}`");
  cmd->add_option("--merchants", o.merchants,
                  "Purchases and refunds name the merchant selling the item, \"merchant_id\": \"m1\".. \"m<N>\" "
                  "(1 + item number mod N), for merchant features; 0 (the default): no merchant_id")
      ->capture_default_str();
  cmd->add_option("--duplicate-share", o.duplicate_share,
                  "Share of lines (0..1) written again, byte for byte, 1-50 lines later, as an at-least-once "
                  "producer resends; in addition to --events")
      ->capture_default_str();
  cmd->add_option("--timestamp-format", args->timestamp_format,
                  "How ts is written: epoch-ms (integer), rfc3339 (UTC text) or mixed (either, at random)")
      ->capture_default_str();
  cmd->add_option("--kafka", args->kafka,
                  "Send the events to a Kafka topic at these brokers (host:port,...) instead of writing them: one "
                  "message per line, keyed by user_id (all of a user's events in one partition), acks=all, "
                  "idempotent; malformed lines without a user_id go unkeyed");
  cmd->add_option("--topic", args->topic, "The topic for --kafka (it must exist)")->capture_default_str();
  cmd->add_option("--output,-o", args->output, "File to write the events to ('-': stdout)")
      ->capture_default_str();
  CLI::Option* entities =
      cmd->add_option("--entities", args->entities,
                      "Also write entity rows (CSV user_id,ts,label) for point-in-time queries to this file");
  cmd->add_option("--entity-rows", o.entity_rows, "Number of entity rows")
      ->capture_default_str()
      ->needs(entities);
  args->progress_option = cmd->add_flag(
      "--progress,!--no-progress", args->progress,
      "Show a progress bar on stderr (default: on when stderr is a terminal and the output is a file)");
  cmd->callback([args, exit_code]() { *exit_code = RunGenerate(args.get()); });
}

}  // namespace freshet::cli

// pipeline_bench: throughput of Freshet's feature pipeline over a file of events, as in bench/README.md.
//
//   pipeline_bench --spec SPEC --events EVENTS.jsonl --mode core|json [--repeat N]
//
// core  the aggregation core with events already parsed: the file is parsed into memory first (not timed,
//       one ParsedEvent per line, strings in an arena), then each repetition runs a fresh FeatureEngine over
//       all events in batches of 256
//       (FeatureEngine::ProcessBatch: Admit, Extract with `where` and field checks, Apply to window state).
// json  from JSON lines on disk to updated state: LineReader + EventParser + the same engine steps.
// Prints one line per repetition and a summary with the median and the median absolute deviation, plus
// the process's peak resident memory (run each mode in its own process to read it per mode).
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "engine/feature_engine.h"
#include "event/event_parser.h"
#include "event/line_reader.h"
#include "spec/spec.h"

namespace freshet {
namespace {

struct Options {
  std::string spec;
  std::string events;
  std::string mode = "json";
  int repeat = 5;
};

// Parsed events kept in memory: fixed-width slots per event, strings in one arena.
struct ParsedCorpus {
  std::vector<ParsedEvent> events;
  std::vector<std::unique_ptr<char[]>> arena_blocks;
  char* arena_pos = nullptr;
  size_t arena_left = 0;

  std::string_view Store(std::string_view s) {
    if (s.size() > arena_left) {
      const size_t block = std::max<size_t>(64 << 20, s.size());
      arena_blocks.push_back(std::make_unique<char[]>(block));
      arena_pos = arena_blocks.back().get();
      arena_left = block;
    }
    std::memcpy(arena_pos, s.data(), s.size());
    std::string_view stored(arena_pos, s.size());
    arena_pos += s.size();
    arena_left -= s.size();
    return stored;
  }
};

double PeakRssMb() {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

// CPU time of the calling thread: unlike wall time, it leaves out the time other processes on the
// shared machine held the core, so it also shows per run (still not cache or memory-bandwidth contention).
double ThreadCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

struct RunResult {
  uint64_t events = 0;
  double seconds = 0;
  double cpu_seconds = 0;
  size_t state_bytes = 0;
  size_t entities = 0;
};

RunResult RunCore(const Spec& spec, const ParsedCorpus& corpus) {
  const auto start = std::chrono::steady_clock::now();
  const double cpu_start = ThreadCpuSeconds();
  FeatureEngine engine(spec);
  constexpr size_t kBatch = 256;
  const size_t n = corpus.events.size();
  uint64_t seq = 0;
  for (size_t begin = 0; begin < n; begin += kBatch) {
    engine.ProcessBatch(&corpus.events[begin], std::min(kBatch, n - begin), &seq);
  }
  RunResult r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.cpu_seconds = ThreadCpuSeconds() - cpu_start;
  r.events = n;
  r.state_bytes = engine.MemoryBytes();
  r.entities = engine.entity_count();
  return r;
}

RunResult RunJson(const Spec& spec, const std::string& path) {
  const auto start = std::chrono::steady_clock::now();
  const double cpu_start = ThreadCpuSeconds();
  FeatureEngine engine(spec);
  EventParser parser(spec.fields);
  LineReader reader;
  if (Status s = reader.Open(path); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.message().c_str());
    std::exit(1);
  }
  ParsedEvent event;
  PendingEvent pending;
  std::string reason;
  Line line;
  uint64_t lines = 0, seq = 0;
  while (reader.Next(&line)) {
    ++lines;
    if (line.too_long || !parser.Parse(line.text, line.capacity, &event, &reason)) continue;
    if (!engine.Admit(event.time_ms)) continue;
    engine.Extract(event, seq++, &pending);
    engine.Apply(pending, engine.low_watermark_ms());
  }
  RunResult r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.cpu_seconds = ThreadCpuSeconds() - cpu_start;
  r.events = lines;
  r.state_bytes = engine.MemoryBytes();
  r.entities = engine.entity_count();
  return r;
}

ParsedCorpus LoadCorpus(const Spec& spec, const std::string& path) {
  ParsedCorpus corpus;
  EventParser parser(spec.fields);
  LineReader reader;
  if (Status s = reader.Open(path); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.message().c_str());
    std::exit(1);
  }
  ParsedEvent event;
  std::string reason;
  Line line;
  while (reader.Next(&line)) {
    if (line.too_long || !parser.Parse(line.text, line.capacity, &event, &reason)) continue;
    ParsedEvent& kept = corpus.events.emplace_back();
    kept.time_ms = event.time_ms;
    kept.entity = corpus.Store(event.entity);
    kept.slots = event.slots;
    for (Value& v : kept.slots) {
      if (v.type == ValueType::kString) v.s = corpus.Store(v.s);
    }
  }
  return corpus;
}

int Main(int argc, char** argv) {
  Options o;
  for (int k = 1; k + 1 < argc; k += 2) {
    std::string flag = argv[k];
    if (flag == "--spec") o.spec = argv[k + 1];
    else if (flag == "--events") o.events = argv[k + 1];
    else if (flag == "--mode") o.mode = argv[k + 1];
    else if (flag == "--repeat") o.repeat = std::atoi(argv[k + 1]);
    else {
      std::fprintf(stderr, "unknown flag %s\nusage: pipeline_bench --spec SPEC --events FILE --mode core|json [--repeat N]\n",
                   flag.c_str());
      return 2;
    }
  }
  if (o.spec.empty() || o.events.empty() || (o.mode != "core" && o.mode != "json") || o.repeat < 1) {
    std::fprintf(stderr, "usage: pipeline_bench --spec SPEC --events FILE --mode core|json [--repeat N]\n");
    return 2;
  }
  Result<Spec> spec = LoadSpec(o.spec);
  if (!spec.ok()) {
    std::fprintf(stderr, "%s\n", spec.status().message().c_str());
    return 2;
  }
  ParsedCorpus corpus;
  if (o.mode == "core") {
    corpus = LoadCorpus(*spec, o.events);
    std::fprintf(stderr, "loaded %zu parsed events (peak RSS so far %.0f MB)\n", corpus.events.size(), PeakRssMb());
  }
  std::vector<double> rates;
  for (int rep = 0; rep < o.repeat; ++rep) {
    RunResult r = o.mode == "core" ? RunCore(*spec, corpus) : RunJson(*spec, o.events);
    const double rate = r.events / r.seconds;
    rates.push_back(rate);
    std::printf("%s run %d: %llu events in %.3f s = %.2f M events/s (%.2f per CPU second); %zu entities, state %.0f MB\n",
                o.mode.c_str(), rep + 1, static_cast<unsigned long long>(r.events), r.seconds, rate / 1e6,
                r.events / r.cpu_seconds / 1e6, r.entities, r.state_bytes / 1048576.0);
    std::fflush(stdout);
  }
  std::vector<double> sorted = rates;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2];
  std::vector<double> deviations;
  for (double r : rates) deviations.push_back(std::fabs(r - median));
  std::sort(deviations.begin(), deviations.end());
  std::printf("%s: median %.2f M events/s (MAD %.2f, %d runs); peak RSS %.0f MB\n", o.mode.c_str(), median / 1e6,
              deviations[deviations.size() / 2] / 1e6, o.repeat, PeakRssMb());
  return 0;
}

}  // namespace
}  // namespace freshet

int main(int argc, char** argv) { return freshet::Main(argc, argv); }

// ShardedInput: a file or HTTP source processed on `parallelism` threads, every value as on one thread.
//
// The source is one input with one order: one lateness clock M, deduplication over the whole input, one `seq`
// numbering (README, Semantics). So the rules that depend on that order run in it, before events are handed to
// shards, and a batch of records goes through three steps:
//
//   parse   in parallel, each thread taking blocks of the batch: the parser's verdict, and the parsed event with its
//           strings copied (the parser's own live until its next parse) and its entity's shard
//           (PipelineLanes::ShardOf). One fork-join for the whole batch (a poll's 4096 records), before the runtime
//           takes its exclusive lock: the parse touches no lane. Then, chunk by chunk, each chunk under that lock
//           (which bounds a lookup's wait):
//   judge   on the calling thread, in input order: rejections, the lateness rule by the input's M, deduplication
//           and admission (EventPath::Judge, on the lanes' judge), dead letters (so their file is as on one
//           thread), and the seq of each accepted event;
//   apply   in parallel, each thread its shard's accepted events in input order: the shard's engine raised to the
//           input's M as of the event (FeatureEngine::FollowClock: its recent-event buffers fold as one engine's
//           would), the event applied, and its features row as of the event's time taken.
//
// Then the shards' offline rows are added in seq order (each table file must be in seq order), and every shard
// follows the input's M at the chunk's end, so that lookups (IsExactAsOf) and settling use the same low
// watermark as one engine.
//
// Each step is a fork-join of the shard threads (`run`), so the hand-offs per batch are 1 + its chunks: fewer,
// larger chunks cost less (bench/README.md, "The file source on two threads").
//
// Not thread-safe: the runtime calls Process under its exclusive lock; `run` runs the shard threads.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "event/event_parser.h"
#include "run/lanes.h"
#include "run/offline_sink.h"
#include "source/source.h"
#include "spec/spec.h"

namespace freshet {

class ShardedInput {
 public:
  // What one step of processing produced, merged by the runtime (the Kafka path's shards produce the same).
  struct Output {
    uint64_t accepted = 0, rejected = 0, late = 0, duplicates = 0;
    std::vector<int64_t> arrivals;                      // Of the accepted records, for freshness.
    std::vector<std::pair<uint64_t, int64_t>> changed;  // (lane << 32 | entity index, arrival), if asked for.
  };
  using DeadLetter = std::function<void(const SourceRecord& record, std::string_view reason)>;

  // `lanes` must be sharded; `run` runs work(k) for every shard k at once and returns when all are done.
  ShardedInput(const Spec& spec, PipelineLanes& lanes, PipelineLanes::RunPerLane run);
  ~ShardedInput();

  void SetOfflineSink(OfflineSink* offline) { offline_ = offline; }
  // The reference tables the parsers fill joined fields from; they change only between calls of Process.
  void SetTables(const TableSet* tables);

  // The parse step for a batch of records (they must stay valid until the next Parse). Needs no lock: it touches
  // no lane, only the parsers and the tables (which change only between batches).
  void Parse(std::span<const SourceRecord> batch);
  // Judges and applies the parsed batch's records [begin, end), in input order; chunks in order, each once.
  // `wall_ms` stamps the offline rows; `track_changed` fills out->changed (for the online store). Dead letters go
  // to `dead_letter`, in input order, on this thread.
  void Process(size_t begin, size_t end, int64_t wall_ms, bool track_changed, const DeadLetter& dead_letter,
               Output* out);

 private:
  struct Parsed;  // One record after the parse step.
  struct Shard;   // One shard thread's parser and scratch.

  static constexpr size_t kParseBlock = 256;  // Records a parse thread takes at a time.
  void ParseBlocks(size_t shard);
  void ParseBlock(size_t shard, size_t begin, size_t end);
  void Judge(size_t begin, size_t end, const DeadLetter& dead_letter, Output* out);
  void Apply(size_t shard, bool track_changed);
  void AddOfflineRows(int64_t wall_ms);

  const Spec& spec_;
  PipelineLanes& lanes_;
  PipelineLanes::RunPerLane run_;
  OfflineSink* offline_ = nullptr;
  const TableSet* tables_ = nullptr;  // Joined; the parse step prefetches their slots some records ahead.
  std::span<const SourceRecord> batch_;  // The batch Parse was given.
  std::vector<Parsed> parsed_;           // Per record of the batch.
  std::atomic<size_t> next_block_{0};    // The next block of the batch to parse.
  std::vector<std::unique_ptr<Shard>> shards_;
  uint64_t first_seq_ = 0;  // The chunk's first accepted event's seq.
};

}  // namespace freshet

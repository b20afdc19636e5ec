// ShardedInput against one EventPath over the same lines (disorder, late, duplicate and malformed lines): the same
// outcomes and dead letters in the same order, the same exactness for every entity as of every time and the same
// value for every exact one, on 2 or 3 shards, also after the sharded state is encoded and decoded; and another
// shard count refused.
#include "run/sharded_input.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <thread>
#include <vector>

#include "run/event_path.h"
#include "spec/spec.h"

namespace freshet {
namespace {

constexpr const char* kSpecText = R"(name: t
entity: user
timestamp: ts
watermark: {max_out_of_orderness: 2s, allowed_lateness: 3s}
dedup: {field: id, within: 1m}
features:
  - {name: n, aggregation: count, window: {type: lifetime}}
  - {name: n_10s, aggregation: count, window: {type: sliding, size: 10s, slide: 1s}}
  - {name: s_5s, aggregation: sum, field: v, window: {type: sliding, size: 5s}}
  - {name: last_v, aggregation: last, field: v, window: {type: session, gap: 4s}}
)";

Spec ParseOrDie(const std::string& text) {
  Result<Spec> spec = ParseSpec(text, "t.yaml");
  EXPECT_TRUE(spec.ok()) << spec.status().message();
  return std::move(spec).value();
}

// Lines with disorder (up to 4 s behind), some far behind (late), resends (duplicates) and malformed ones.
std::vector<std::string> Lines(size_t count) {
  std::mt19937 rng(7);
  std::vector<std::string> lines;
  int64_t now = 1'000'000;
  for (size_t k = 0; k < count; ++k) {
    now += static_cast<int64_t>(rng() % 300);
    const uint32_t kind = rng() % 100;
    if (kind < 3) {
      lines.push_back(kind == 0 ? "" : "{\"user\":");
    } else if (kind < 8 && !lines.empty()) {
      lines.push_back(lines[lines.size() - 1 - rng() % std::min<size_t>(lines.size(), 20)]);
    } else {
      const int64_t t = now - static_cast<int64_t>(rng() % (kind < 10 ? 20000 : 4000));
      lines.push_back("{\"user\":\"u" + std::to_string(rng() % 23) + "\",\"ts\":" + std::to_string(t) +
                      ",\"id\":\"e" + std::to_string(k) + "\",\"v\":" + std::to_string(rng() % 50) + "}");
    }
  }
  return lines;
}

struct Letter {
  uint64_t line;
  std::string reason;
  bool operator==(const Letter&) const = default;
};

// Runs work(k) for every shard k on its own thread, as the runtime's pool does.
PipelineLanes::RunPerLane Threads(size_t shards) {
  return [shards](const std::function<void(size_t)>& work) {
    std::vector<std::thread> threads;
    for (size_t k = 1; k < shards; ++k) threads.emplace_back(work, k);
    work(0);
    for (std::thread& t : threads) t.join();
  };
}

class ShardedInputTest : public ::testing::Test {
 protected:
  ShardedInputTest() : spec_(ParseOrDie(kSpecText)), lines_(Lines(4000)) {
    for (size_t k = 0; k < lines_.size(); ++k) padded_.push_back(lines_[k] + std::string(kParsePaddingBytes, '\0'));
  }

  SourceRecord Record(size_t k) const {
    SourceRecord r;
    r.text = std::string_view(padded_[k].data(), lines_[k].size());
    r.capacity = padded_[k].size();
    r.line_number = k + 1;
    return r;
  }

  // The lines (`from` to `to`, default all) through one lane's EventPath, as a one-thread run does.
  std::vector<Letter> RunOne(PipelineLanes& lanes, size_t from = 0, size_t to = SIZE_MAX) {
    std::vector<Letter> letters;
    PipelineLanes::Lane& lane = lanes.at(0);
    for (size_t k = from; k < std::min(to, lines_.size()); ++k) {
      const SourceRecord r = Record(k);
      switch (lane.path.Process(r.text, r.capacity, 0)) {
        case EventPath::Outcome::kAccepted: break;
        case EventPath::Outcome::kRejected: letters.push_back({k + 1, "rejected"}); break;
        case EventPath::Outcome::kLate: letters.push_back({k + 1, "late"}); break;
        case EventPath::Outcome::kDuplicate: letters.push_back({k + 1, "duplicate"}); break;
        case EventPath::Outcome::kNotForSet: break;  // Only with SkipLinesWithoutEntity.
      }
    }
    return letters;
  }

  // The same lines through ShardedInput, `from` to `to`, as the runtime hands them over: batches of 900 lines,
  // each parsed at once, then judged and applied in chunks of 300.
  void RunSharded(ShardedInput& input, size_t from, size_t to, std::vector<Letter>* letters) {
    std::vector<SourceRecord> records;
    for (size_t k = from; k < to; ++k) records.push_back(Record(k));
    const auto dead_letter = [&](const SourceRecord& r, std::string_view reason) {
      const bool kept = reason == "late" || reason == "duplicate";
      letters->push_back({r.line_number, kept ? std::string(reason) : "rejected"});
    };
    for (size_t b = 0; b < records.size(); b += 900) {
      const size_t batch_end = std::min(records.size(), b + 900);
      input.Parse(std::span<const SourceRecord>(records.data() + b, batch_end - b));
      for (size_t k = 0; k < batch_end - b; k += 300) {
        ShardedInput::Output out;
        input.Process(k, std::min(batch_end - b, k + 300), 0, false, dead_letter, &out);
      }
    }
  }

  // Every entity's values and exactness as of times around and after the horizon, from whichever lane has it.
  std::vector<std::string> Answers(const PipelineLanes& lanes) {
    std::vector<std::string> answers;
    std::vector<Value> values;
    const int64_t low = lanes.low_watermark_ms();
    for (int user = 0; user < 24; ++user) {
      const std::string entity = "u" + std::to_string(user);
      for (int64_t t = low - 6000; t <= low + 9000; t += 500) {
        std::string answer = entity + "@" + std::to_string(t) + ":";
        for (size_t l = 0; l < lanes.size(); ++l) {
          const PipelineLanes::Lane& lane = lanes.at(l);
          std::optional<uint32_t> index = lane.engine.FindEntity(entity);
          if (!index) continue;
          // An inexact answer may include events after t: which ones depends on when the recent-event log was
          // last trimmed (also across a restart), which is not defined by the semantics.
          if (!lane.engine.IsExactAsOf(lane.counters.newest_event_ms[*index], t)) {
            answer += "inexact";
            continue;
          }
          lane.engine.QueryIndex(index, t, &values);
          for (const Value& v : values) {
            answer += v.is_null() || v.is_missing() ? "null" : v.type == ValueType::kInt ? std::to_string(v.i)
                                                              : std::to_string(v.as_double());
            answer += ",";
          }
        }
        answers.push_back(answer);
      }
    }
    return answers;
  }

  const Spec spec_;
  std::vector<std::string> lines_, padded_;
};

TEST_F(ShardedInputTest, EveryValueAndDeadLetterAsOnOneThread) {
  PipelineLanes one(spec_, false);
  const std::vector<Letter> want_letters = RunOne(one);
  size_t late = 0, duplicates = 0;
  for (const Letter& l : want_letters) {
    late += l.reason == "late";
    duplicates += l.reason == "duplicate";
  }
  ASSERT_GT(late, 10u);  // The lines exercise every rule.
  ASSERT_GT(duplicates, 10u);
  const std::vector<std::string> want = Answers(one);

  for (size_t shards : {2u, 3u}) {
    PipelineLanes lanes(spec_, false, shards);
    ShardedInput input(spec_, lanes, Threads(shards));
    std::vector<Letter> letters;
    RunSharded(input, 0, lines_.size(), &letters);
    EXPECT_EQ(letters, want_letters) << shards;
    EXPECT_EQ(lanes.low_watermark_ms(), one.low_watermark_ms()) << shards;
    EXPECT_EQ(lanes.entity_count(), one.entity_count()) << shards;
    EXPECT_EQ(Answers(lanes), want) << shards;
    size_t nonempty = 0;
    for (size_t k = 0; k < lanes.size(); ++k) nonempty += lanes.at(k).engine.entity_count() > 0;
    EXPECT_EQ(nonempty, shards);  // The entities are spread over the shards.
  }
}

TEST_F(ShardedInputTest, ContinuesExactlyFromItsEncodedStateWithAnyShardCount) {
  PipelineLanes one(spec_, false);
  RunOne(one);
  const std::vector<std::string> want = Answers(one);

  PipelineLanes first(spec_, false, 3);
  std::vector<Letter> letters;
  {
    ShardedInput input(spec_, first, Threads(3));
    RunSharded(input, 0, 1700, &letters);
  }
  const PipelineLanes::RunPerLane run = Threads(3);
  const std::string state = first.Encode(&run);
  EXPECT_EQ(state, first.Encode());  // Encoded on the shards' threads or not, the same bytes.

  // The same count, and other counts (re-sharded: every entity moved to the shard its name hashes to now).
  for (size_t shards : {3u, 2u, 4u}) {
    PipelineLanes restored(spec_, false, shards);
    std::vector<std::string> notes;
    ASSERT_TRUE(restored.Decode(state, &notes).ok()) << shards;
    EXPECT_EQ(notes.size(), shards == 3 ? 0u : 1u) << shards;
    EXPECT_EQ(restored.entity_count(), first.entity_count()) << shards;
    EXPECT_EQ(restored.next_offline_seq(), first.next_offline_seq()) << shards;
    ShardedInput input(spec_, restored, Threads(shards));
    std::vector<Letter> rest = letters;
    RunSharded(input, 1700, lines_.size(), &rest);
    EXPECT_EQ(Answers(restored), want) << shards;
    EXPECT_EQ(restored.entity_count(), one.entity_count()) << shards;
    EXPECT_EQ(restored.next_offline_seq(), one.next_offline_seq()) << shards;
  }
  // Shards into one lane.
  PipelineLanes single(spec_, false);
  std::vector<std::string> notes;
  ASSERT_TRUE(single.Decode(state, &notes).ok());
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("written with parallelism 3 and is re-sharded to parallelism 1"), std::string::npos)
      << notes[0];
  RunOne(single, 1700);
  EXPECT_EQ(Answers(single), want);
  EXPECT_EQ(single.next_offline_seq(), one.next_offline_seq());
  // One lane (parallelism 1, or any earlier version's checkpoint) into shards.
  PipelineLanes part(spec_, false);
  RunOne(part, 0, 1700);
  PipelineLanes two(spec_, false, 2);
  ASSERT_TRUE(two.Decode(part.Encode(), nullptr).ok());
  ShardedInput input(spec_, two, Threads(2));
  RunSharded(input, 1700, lines_.size(), &letters);
  EXPECT_EQ(Answers(two), want);
  EXPECT_EQ(two.next_offline_seq(), one.next_offline_seq());
}

}  // namespace
}  // namespace freshet

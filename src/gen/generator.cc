#include "gen/generator.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <queue>
#include <string>
#include <vector>

#include "common/time.h"

namespace freshet {
namespace {

// ---------------------------------------------------------------------------------------------------------
// Random numbers: xoshiro256** seeded through splitmix64. Each concern (the workload, disorder, lateness,
// malformed lines, timestamp styles, entity rows) draws from its own stream, so turning one knob does not
// reshuffle the others: the same seed with and without --disorder gives the same events, only reordered.

enum RngStream : uint64_t {
  kWorkloadStream = 1,
  kDisorderStream = 2,
  kLateStream = 3,
  kMalformedStream = 4,
  kTimestampStyleStream = 5,
  kEntityStream = 6,
  kUserLayoutStream = 7,
  kDuplicateStream = 8,
};

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// A stateless 64-bit mix, for per-user attributes that must not cost memory.
uint64_t Mix64(uint64_t x) {
  return SplitMix64(&x);
}

// Natural logarithm of x in (0, 1], to about 1e-6 relative: cheaper than std::log, and the same on every
// machine. x = m * 2^e with m in [1, 2); log m = 2 atanh(s) with s = (m - 1) / (m + 1) in [0, 1/3), by its
// series.
double FastLog(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const int exponent = static_cast<int>((bits >> 52) & 0x7FF) - 1023;
  bits = (bits & 0x000FFFFFFFFFFFFFULL) | 0x3FF0000000000000ULL;
  double m;
  std::memcpy(&m, &bits, sizeof m);
  const double s = (m - 1.0) / (m + 1.0);
  const double s2 = s * s;
  const double series =
      s * (2.0 + s2 * (2.0 / 3 + s2 * (2.0 / 5 + s2 * (2.0 / 7 + s2 * (2.0 / 9 + s2 * (2.0 / 11))))));
  return exponent * 0.6931471805599453 + series;
}

class Rng {
 public:
  Rng(uint64_t seed, RngStream stream)
      : Rng(seed ^ (static_cast<uint64_t>(stream) * 0xD1B54A32D192ED03ULL)) {}

  // A generator seeded from one word, e.g. a draw of another generator.
  explicit Rng(uint64_t seed_word) {
    for (uint64_t& word : s_) word = SplitMix64(&seed_word);
  }

  uint64_t Next() {
    const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }

  // Uniform in [0, 1).
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

  // Uniform in [0, n), n > 0 (Lemire's multiply-shift; the bias is far below anything observable here).
  uint64_t Below(uint64_t n) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(Next()) * n) >> 64);
  }

  // Uniform in [lo, hi].
  int64_t Between(int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(Below(static_cast<uint64_t>(hi - lo) + 1));
  }

  bool Chance(double p) { return Uniform() < p; }

  // Exponential with mean 1 (to about 1e-6 relative).
  double Exponential() { return -FastLog(1.0 - Uniform()); }

  // Roughly standard normal (Irwin-Hall of four uniforms, rescaled), bounded to about +-3.5.
  double NormalIsh() { return (Uniform() + Uniform() + Uniform() + Uniform() - 2.0) * 1.7320508075688772; }

 private:
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

// ---------------------------------------------------------------------------------------------------------
// The catalog: categories with a popularity weight and a median price, devices, items per category.

struct Category {
  std::string_view name;
  uint32_t weight;      // Relative popularity.
  double median_price;  // Currency units.
};

constexpr Category kCategories[] = {
    {"books", 14, 15.0}, {"electronics", 12, 180.0}, {"clothing", 13, 40.0}, {"home", 10, 50.0},
    {"toys", 8, 25.0},   {"sports", 7, 45.0},        {"beauty", 8, 20.0},    {"grocery", 11, 30.0},
    {"garden", 4, 35.0}, {"automotive", 3, 60.0},    {"music", 5, 12.0},     {"games", 5, 40.0},
};
constexpr int kCategoryCount = sizeof(kCategories) / sizeof(kCategories[0]);
constexpr uint8_t kElectronics = 1;
constexpr uint32_t kItemsPerCategory = 5000;

constexpr std::string_view kDevices[] = {"ios", "android", "web"};
constexpr uint8_t kDeviceAndroid = 1;
constexpr uint8_t kDeviceWeb = 2;
static_assert(kCategories[kElectronics].name == "electronics");
static_assert(kDevices[kDeviceAndroid] == "android" && kDevices[kDeviceWeb] == "web");

constexpr uint32_t CategoryWeightTotal() {
  uint32_t total = 0;
  for (const Category& c : kCategories) total += c.weight;
  return total;
}

// Maps a uniform draw in [0, total weight) to a category.
uint8_t CategoryFromDraw(uint64_t draw) {
  uint8_t c = 0;
  while (c + 1 < kCategoryCount && draw >= kCategories[c].weight) {
    draw -= kCategories[c].weight;
    ++c;
  }
  return c;
}

uint8_t RandomCategory(Rng& rng) {
  return CategoryFromDraw(rng.Below(CategoryWeightTotal()));
}

// Item numbers are 1 + category * kItemsPerCategory + a skewed index, so a few items per category are
// popular.
uint32_t RandomItem(Rng& rng, uint8_t category) {
  const double u = rng.Uniform();
  return 1 + category * kItemsPerCategory + static_cast<uint32_t>(u * u * u * kItemsPerCategory);
}

// A log-normal-ish price around the category's median, in cents, at least 1.
uint32_t RandomPriceCents(Rng& rng, uint8_t category, double scale) {
  const double price = kCategories[category].median_price * scale * std::exp(0.7 * rng.NormalIsh());
  return static_cast<uint32_t>(std::max<int64_t>(1, std::llround(price * 100.0)));
}

// ---------------------------------------------------------------------------------------------------------
// Users: ranks 0..n-1 by activity, picked with Zipf weights through an alias table (Walker/Vose): O(1) per
// pick. A fixed permutation maps ranks to user numbers 1..n so the busiest users are not u1..u10.
//
// Each rank's alias column sits next to its last purchase (for refunds) in one 16-byte slot, so a visit costs
// one cache miss, and the workload prefetches that slot while the previous visits run.

// A purchase remembered for a later refund; 0 cents means none.
struct LastPurchase {
  uint32_t item = 0;
  uint32_t amount_cents = 0;
};

class UserTable {
 public:
  UserTable(uint64_t users, double exponent, uint64_t seed) : users_(users), slots_(users) {
    BuildAliasTable(exponent);
    Rng layout(seed, kUserLayoutStream);
    offset_ = layout.Below(users_);
    multiplier_ = layout.Below(users_) | 1;
    while (std::gcd(multiplier_, users_) != 1) ++multiplier_;
    salt_ = layout.Next();
  }

  uint64_t users() const { return users_; }

  // Picking a rank takes two halves so the memory access can be prefetched in between: DrawColumn, then
  // RankOf with the same draw.
  uint32_t DrawColumn(uint64_t draw) const { return static_cast<uint32_t>(((draw >> 32) * users_) >> 32); }
  void Prefetch(uint32_t column) const { __builtin_prefetch(&slots_[column]); }
  // The rank for `draw`, picked with weight 1 / (rank + 1)^exponent.
  uint32_t RankOf(uint64_t draw) const {
    const uint32_t column = DrawColumn(draw);
    const Slot& slot = slots_[column];
    return static_cast<uint32_t>(draw) < slot.threshold ? column : slot.alias;
  }

  LastPurchase& last_purchase(uint32_t rank) { return slots_[rank].last_purchase; }

  // The user number (1-based) of a rank.
  uint32_t UserNumber(uint32_t rank) const {
    return static_cast<uint32_t>((rank * multiplier_ + offset_) % users_) + 1;
  }

  // About 1 in 500 users are attackers; rank 30 always is (when there are more than 30 users), so every
  // workload of a reasonable size has one. The 30 busiest users never are.
  bool IsAttacker(uint32_t rank) const {
    if (rank < kFirstAttackerRank) return false;
    return rank == kFirstAttackerRank || Mix64(rank ^ salt_) % 500 == 0;
  }

  // Stable per-user traits, derived from the rank so they cost no memory.
  uint8_t FavoriteCategory(uint32_t rank) const {
    return CategoryFromDraw(Mix64(rank ^ salt_ ^ 0x5A5A5A5AULL) % CategoryWeightTotal());
  }
  uint8_t UsualDevice(uint32_t rank) const {
    const uint64_t draw = Mix64(rank ^ salt_ ^ 0xA5A5A5A5ULL) % 100;
    return draw < 40 ? 0 : draw < 75 ? 1 : 2;  // ios 40%, android 35%, web 25%.
  }

 private:
  static constexpr uint32_t kFirstAttackerRank = 30;

  struct Slot {
    uint32_t threshold = UINT32_MAX;  // Column r is kept when the low 32 bits of the draw are below this,
    uint32_t alias = 0;               // otherwise the draw goes to this rank.
    LastPurchase last_purchase;
  };

  void BuildAliasTable(double exponent) {
    const uint64_t n = users_;
    // Residual probabilities scaled so they average 1; freed when the table is built.
    std::vector<double> scaled(n);
    double total = 0;
    for (uint64_t r = 0; r < n; ++r) {
      const double weight = exponent == 1.0 ? 1.0 / static_cast<double>(r + 1)
                                            : std::pow(static_cast<double>(r + 1), -exponent);
      scaled[r] = weight;
      total += weight;
    }
    for (double& p : scaled) p = p * static_cast<double>(n) / total;
    // Small entries stack up from the front of `work`, large ones down from the back.
    std::vector<uint32_t> work(n);
    uint64_t small_count = 0;
    uint64_t large_begin = n;
    for (uint64_t r = 0; r < n; ++r) {
      slots_[r].alias = static_cast<uint32_t>(r);
      if (scaled[r] < 1.0) {
        work[small_count++] = static_cast<uint32_t>(r);
      } else {
        work[--large_begin] = static_cast<uint32_t>(r);
      }
    }
    while (small_count > 0 && large_begin < n) {
      const uint32_t small = work[--small_count];
      const uint32_t large = work[large_begin];
      slots_[small].threshold = static_cast<uint32_t>(scaled[small] * 4294967296.0);
      slots_[small].alias = large;
      scaled[large] = (scaled[large] + scaled[small]) - 1.0;
      if (scaled[large] < 1.0) {
        ++large_begin;
        work[small_count++] = large;
      }
    }
  }

  uint64_t users_;
  std::vector<Slot> slots_;
  uint64_t offset_ = 0;
  uint64_t multiplier_ = 1;
  uint64_t salt_ = 0;
};

// ---------------------------------------------------------------------------------------------------------
// Events and visits.

enum class EventType : uint8_t { kView, kPurchase, kRefund, kLogin };

struct Event {
  int64_t ts = 0;
  uint32_t user = 0;  // User number, written as "u<user>".
  uint32_t item = 0;  // Item number, written as "i<item>".
  uint32_t amount_cents = 0;
  EventType type = EventType::kView;
  uint8_t category = 0;
  uint8_t device = 0;
  bool success = false;
};

// One user's visit in progress. Its steps run in this order: refund, failed logins, a successful login,
// views, purchases.
struct Visit {
  int64_t start_ts = 0;
  int64_t next_ts = 0;  // When the next step happens.
  Rng pace{0};          // Draws the waits between steps, and nothing else, so they can be replayed.
  uint32_t rank = 0;
  uint32_t user = 0;
  uint32_t budget = 0;       // Events the visit may still write.
  uint32_t planned = 0;      // Steps planned at the start.
  uint32_t refund_item = 0;  // The purchase a refund step gives back, taken from the user at planning.
  uint32_t refund_cents = 0;
  uint8_t refunds = 0;
  uint8_t failed_logins = 0;
  uint8_t successful_logins = 0;
  uint8_t views = 0;
  uint8_t purchases = 0;
  uint8_t category = 0;  // The category the visit mostly browses.
  uint8_t device = 0;
  bool attack = false;
  static constexpr int kRemembered = 4;
  uint8_t viewed_count = 0;
  uint32_t viewed_items[kRemembered] = {};
  uint8_t viewed_categories[kRemembered] = {};
};

enum class StepKind : uint8_t { kRefund, kFailedLogin, kLogin, kView, kPurchase, kDone };

StepKind PendingStep(const Visit& visit) {
  if (visit.refunds > 0) return StepKind::kRefund;
  if (visit.failed_logins > 0) return StepKind::kFailedLogin;
  if (visit.successful_logins > 0) return StepKind::kLogin;
  if (visit.views > 0) return StepKind::kView;
  if (visit.purchases > 0) return StepKind::kPurchase;
  return StepKind::kDone;
}

// The longest a visit waits between two of its events (a view 2 s + up to 118 s after the previous one).
constexpr int64_t kMaxStepGapMs = 120'000;

// Marks step `kind` of the visit done and returns the wait until the next one, drawn from visit.pace only.
int64_t FinishStep(Visit& visit, StepKind kind) {
  Rng& pace = visit.pace;
  switch (kind) {
    case StepKind::kRefund:
      --visit.refunds;
      return pace.Between(5'000, 60'000);
    case StepKind::kFailedLogin:
      --visit.failed_logins;
      return visit.attack ? pace.Between(1'000, 4'000) : pace.Between(3'000, 15'000);
    case StepKind::kLogin:
      --visit.successful_logins;
      return pace.Between(1'000, 10'000);
    case StepKind::kView:
      --visit.views;
      if (visit.views == 0) return pace.Between(10'000, 90'000);  // Then decides to buy.
      return 2'000 +
             std::min<int64_t>(kMaxStepGapMs - 2'000, static_cast<int64_t>(pace.Exponential() * 20'000.0));
    case StepKind::kPurchase:
      --visit.purchases;
      return pace.Between(5'000, 20'000);
    case StepKind::kDone:
      break;
  }
  FRESHET_CHECK(false);
  return 0;
}

// Calls on_step(ts) for each step of a copy of the visit, from its start on, until on_step returns false. The
// visit itself is unchanged: this replays its pace stream.
template <typename OnStep>
void ReplaySteps(const Visit& visit, OnStep on_step) {
  Visit replay = visit;
  int64_t ts = replay.start_ts;
  for (StepKind kind = PendingStep(replay); kind != StepKind::kDone; kind = PendingStep(replay)) {
    if (!on_step(ts)) return;
    ts += FinishStep(replay, kind);
  }
}

// How many events a unit rate of visit starts writes in the time left, K(t). A step at offset o from its
// visit's start is written if the visit starts before t - o, so K(t) = k E[max(0, t - o)] for k steps per
// visit, the expectation over steps: k (t - mean offset) once t is longer than any visit, more for shorter t,
// never below t. k is the running mean over all visits (a biased k would tilt the density towards one end);
// the offsets come from the first kSampleVisits visits (visit shapes do not change over time), and before
// those are in from the mean offset so far, blended with a prior.
class VisitProfile {
 public:
  void Record(const Visit& visit) {
    planned_steps_ += visit.planned;
    visits_ += 1;
    if (frozen_) return;
    ReplaySteps(visit, [&](int64_t ts) {
      offsets_.push_back(ts - visit.start_ts);
      offsets_sum_ += static_cast<double>(ts - visit.start_ts);
      return true;
    });
    if (visits_ < kSampleVisits) return;
    std::sort(offsets_.begin(), offsets_.end());
    prefix_sums_.resize(offsets_.size() + 1, 0.0);
    for (size_t i = 0; i < offsets_.size(); ++i) {
      prefix_sums_[i + 1] = prefix_sums_[i] + static_cast<double>(offsets_[i]);
    }
    frozen_ = true;
  }

  double EventsPerUnitRate(double time_left_ms) const {
    constexpr double kPriorVisits = 16;
    constexpr double kPriorStepsPerVisit = 4.5;
    constexpr double kPriorSteps = 64;
    constexpr double kPriorMeanOffsetMs = 55'000;
    const double steps_per_visit =
        (planned_steps_ + kPriorStepsPerVisit * kPriorVisits) / (visits_ + kPriorVisits);
    if (frozen_ && time_left_ms <= static_cast<double>(offsets_.back())) {
      const auto below =
          std::lower_bound(offsets_.begin(), offsets_.end(), time_left_ms,
                           [](int64_t offset, double t) { return static_cast<double>(offset) < t; });
      const auto n = static_cast<size_t>(below - offsets_.begin());
      const double per_step =
          (time_left_ms * static_cast<double>(n) - prefix_sums_[n]) / static_cast<double>(offsets_.size());
      return std::max(steps_per_visit * per_step, time_left_ms);
    }
    const double mean_offset = frozen_ ? offsets_sum_ / static_cast<double>(offsets_.size())
                                       : (offsets_sum_ + kPriorMeanOffsetMs * kPriorSteps) /
                                             (static_cast<double>(offsets_.size()) + kPriorSteps);
    return std::max(steps_per_visit * (time_left_ms - mean_offset), time_left_ms);
  }

 private:
  static constexpr double kSampleVisits = 2048;
  double planned_steps_ = 0;
  double visits_ = 0;
  std::vector<int64_t> offsets_;  // Of every step of the sampled visits; sorted once frozen.
  double offsets_sum_ = 0;
  std::vector<double> prefix_sums_;  // prefix_sums_[i]: sum of the i smallest offsets.
  bool frozen_ = false;
};

// The visits in progress, ordered by the time of their next event: a timing wheel with one bucket per
// millisecond over a span longer than any step of a visit, plus a bitmap of the non-empty buckets. Every
// visit waits within [now, now + span), so the earliest one is in the first non-empty bucket from now on;
// finding it scans a few bitmap words, and adding or removing a visit is O(1). (A binary heap of the ~2000
// visits in flight of a typical run cost a dozen unpredictable branches per event: half the generator's
// time.)
//
// Visits due in the same millisecond come out last-in first-out, deterministically.
class VisitWheel {
 public:
  struct Entry {
    int64_t ts;
    uint32_t slot;
  };

  // A wheel where no visit is due before `now`.
  explicit VisitWheel(int64_t now) : heads_(kBuckets, kNone), bits_(kBuckets / 64, 0), now_(now) {}

  bool empty() const { return count_ == 0; }

  // Adds visit `slot`, due at `ts`: no earlier than the last visit popped, and less than kSpanMs after it
  // unless the wheel is empty.
  void Push(Entry entry) {
    // An empty wheel may jump ahead; the visits added later come no earlier, as visit starts are in order.
    if (count_ == 0 && entry.ts - now_ >= kSpanMs) now_ = entry.ts;
    FRESHET_CHECK(entry.ts >= now_ && entry.ts - now_ < kSpanMs);
    if (entry.slot >= next_.size()) next_.resize(entry.slot + 1);
    const size_t bucket = static_cast<size_t>(entry.ts) & (kBuckets - 1);
    next_[entry.slot] = heads_[bucket];
    heads_[bucket] = entry.slot;
    bits_[bucket / 64] |= uint64_t{1} << (bucket % 64);
    ++count_;
    if (top_valid_ && entry.ts <= top_.ts) top_valid_ = false;  // The new visit comes first.
  }

  // The earliest visit. Requires !empty().
  const Entry& top() {
    if (!top_valid_) FindTop();
    return top_;
  }

  // Removes the earliest visit.
  void Pop() {
    const Entry& entry = top();
    const size_t bucket = static_cast<size_t>(entry.ts) & (kBuckets - 1);
    heads_[bucket] = next_[entry.slot];
    if (heads_[bucket] == kNone) bits_[bucket / 64] &= ~(uint64_t{1} << (bucket % 64));
    --count_;
    now_ = entry.ts;
    top_valid_ = false;
  }

  // Hints that a visit will be added at `ts` soon.
  void PrefetchBucket(int64_t ts) const {
    __builtin_prefetch(&heads_[static_cast<size_t>(ts) & (kBuckets - 1)]);
  }

  // Moves the earliest visit to `ts`, later.
  void RescheduleTop(int64_t ts) {
    const uint32_t slot = top().slot;
    Pop();
    Push({ts, slot});
  }

 private:
  static constexpr int64_t kSpanMs = int64_t{1} << 17;
  static_assert(kSpanMs > kMaxStepGapMs);
  static constexpr size_t kBuckets = static_cast<size_t>(kSpanMs);
  static constexpr uint32_t kNone = UINT32_MAX;

  void FindTop() {
    const size_t start = static_cast<size_t>(now_) & (kBuckets - 1);
    size_t word = start / 64;
    uint64_t bits = bits_[word] & (~uint64_t{0} << (start % 64));
    size_t scanned = 0;
    while (bits == 0) {
      FRESHET_CHECK(++scanned <= bits_.size());
      word = (word + 1) % bits_.size();
      bits = bits_[word];
    }
    const size_t bucket = word * 64 + static_cast<size_t>(__builtin_ctzll(bits));
    top_ = {now_ + static_cast<int64_t>((bucket - start) & (kBuckets - 1)), heads_[bucket]};
    top_valid_ = true;
  }

  std::vector<uint32_t> heads_;  // Per bucket, the last visit added, or kNone.
  std::vector<uint64_t> bits_;   // Bit b is set when bucket b is not empty.
  std::vector<uint32_t> next_;   // Per visit slot, the visit added before it to the same bucket.
  size_t count_ = 0;
  int64_t now_;  // When the last visit popped was due; none is due earlier.
  Entry top_ = {0, kNone};
  bool top_valid_ = false;
};

// Produces the workload's events in nondecreasing ts order, exactly options.events of them.
//
// Visits start as a Poisson process whose rate is re-aimed at every start so that the events not yet allotted
// to a visit fill the time left: with U events unallotted and t left, the rate is U / K(t), K(t) being how
// many events a unit rate of visit starts writes before the end (see VisitProfile). That keeps the density
// even over [start, end), up to its last seconds, and ends with exactly `events` events.
//
// Each visit is allotted the steps that fall within [start, end) (counted by replaying its pace stream when
// it may cross an edge). Visits start from a warm-up period before the span, whose steps are not written, so
// the stream opens with visits already in progress instead of ramping up.
class Workload {
 public:
  Workload(const GeneratorOptions& options, UserTable& users)
      : users_(users),
        rng_(options.seed, kWorkloadStream),
        start_ms_(options.start_ms),
        end_ms_(options.start_ms + options.duration_ms),
        unallotted_(options.events),
        clock_ms_(static_cast<double>(start_ms_ - WarmupMs(options))),
        last_ts_(start_ms_ - WarmupMs(options)),
        queue_(last_ts_) {
    queued_user_draw_ = rng_.Next();
    users_.Prefetch(users_.DrawColumn(queued_user_draw_));
    ScheduleNextStart();
  }

  // Fills *event with the next event; false once all events were produced.
  bool Next(Event* event) {
    while (true) {
      if (has_next_start_ && (queue_.empty() || next_start_ms_ <= queue_.top().ts)) {
        StartVisit();
        continue;
      }
      if (queue_.empty()) return false;  // Everything was allotted and produced.
      const uint32_t slot = queue_.top().slot;
      Visit& visit = visits_[slot];
      const int64_t ts = visit.next_ts;
      const StepKind kind = PendingStep(visit);
      const bool write = ts >= start_ms_;  // Warm-up steps only advance the visit.
      last_ts_ = ts;
      visit.next_ts = ts + FinishStep(visit, kind);
      queue_.PrefetchBucket(visit.next_ts);  // Read while the event is filled in.
      if (write) {
        FillEvent(visit, kind, ts, event);
        --visit.budget;
      }
      if (visit.budget > 0) {
        queue_.RescheduleTop(visit.next_ts);
      } else {
        queue_.Pop();
        free_slots_.push_back(slot);
      }
      if (!queue_.empty()) __builtin_prefetch(&visits_[queue_.top().slot]);
      if (write) return true;
    }
  }

 private:
  static int64_t WarmupMs(const GeneratorOptions& options) {
    constexpr int64_t kWarmupMs = 10 * 60 * 1000;
    return std::min({kWarmupMs, options.duration_ms, options.start_ms - kMinTimeMs});
  }

  void ScheduleNextStart() {
    has_next_start_ = unallotted_ > 0;
    if (!has_next_start_) return;
    clock_ms_ = std::max(clock_ms_, static_cast<double>(last_ts_));
    const double time_left_ms = static_cast<double>(end_ms_) - clock_ms_;
    const double gap_ms =
        rng_.Exponential() * profile_.EventsPerUnitRate(time_left_ms) / static_cast<double>(unallotted_);
    clock_ms_ += gap_ms < time_left_ms ? gap_ms : rng_.Uniform() * time_left_ms;
    next_start_ms_ = std::min(static_cast<int64_t>(std::floor(clock_ms_)), end_ms_ - 1);
    next_start_ms_ = std::max(next_start_ms_, last_ts_);
    // Users are picked two visits ahead, so the table reads are in flight while the visits before them run.
    next_rank_ = users_.RankOf(queued_user_draw_);
    users_.Prefetch(next_rank_);
    queued_user_draw_ = rng_.Next();
    users_.Prefetch(users_.DrawColumn(queued_user_draw_));
  }

  void StartVisit() {
    uint32_t slot;
    if (free_slots_.empty()) {
      slot = static_cast<uint32_t>(visits_.size());
      visits_.emplace_back();
    } else {
      slot = free_slots_.back();
      free_slots_.pop_back();
    }
    Visit& visit = visits_[slot];
    visit = Visit{};
    visit.start_ts = next_start_ms_;
    visit.next_ts = next_start_ms_;
    visit.pace = Rng(rng_.Next());
    visit.rank = next_rank_;
    visit.user = users_.UserNumber(visit.rank);
    PlanVisit(visit);
    visit.planned =
        visit.refunds + visit.failed_logins + visit.successful_logins + visit.views + visit.purchases;
    visit.budget = static_cast<uint32_t>(std::min<uint64_t>(StepsInSpan(visit), unallotted_));
    unallotted_ -= visit.budget;
    profile_.Record(visit);
    if (visit.budget > 0) {
      queue_.Push({visit.next_ts, slot});
    } else {
      free_slots_.push_back(slot);
    }
    ScheduleNextStart();
  }

  // How many of the visit's steps fall within [start, end), replaying its pace stream if it may cross an
  // edge.
  uint32_t StepsInSpan(const Visit& visit) const {
    if (visit.start_ts >= start_ms_ &&
        visit.start_ts + static_cast<int64_t>(visit.planned) * kMaxStepGapMs < end_ms_) {
      return visit.planned;
    }
    uint32_t steps = 0;
    ReplaySteps(visit, [&](int64_t ts) {
      if (ts >= end_ms_) return false;
      steps += ts >= start_ms_;
      return true;
    });
    return steps;
  }

  void PlanVisit(Visit& visit) {
    if (users_.IsAttacker(visit.rank) && rng_.Chance(0.5)) {
      visit.attack = true;
      visit.device = rng_.Chance(0.7) ? kDeviceWeb : kDeviceAndroid;
      visit.category = kElectronics;
      visit.failed_logins = static_cast<uint8_t>(rng_.Between(5, 20));
      if (rng_.Chance(0.3)) {
        visit.successful_logins = 1;
        visit.views = static_cast<uint8_t>(rng_.Between(1, 3));
        visit.purchases = static_cast<uint8_t>(rng_.Between(1, 3));
      }
      return;
    }
    visit.device = rng_.Chance(0.9) ? users_.UsualDevice(visit.rank) : static_cast<uint8_t>(rng_.Below(3));
    visit.category = rng_.Chance(0.6) ? users_.FavoriteCategory(visit.rank) : RandomCategory(rng_);
    LastPurchase& last = users_.last_purchase(visit.rank);
    if (last.amount_cents > 0 && rng_.Chance(0.04)) {
      visit.refunds = 1;
      visit.refund_item = last.item;
      visit.refund_cents = last.amount_cents;
      last = LastPurchase{};
    }
    if (rng_.Chance(0.3)) {
      visit.successful_logins = 1;
      if (rng_.Chance(0.03)) visit.failed_logins = rng_.Chance(0.8) ? 1 : 2;  // A mistyped password.
    }
    visit.views = static_cast<uint8_t>(1 + std::min(29.0, std::floor(rng_.Exponential() * 3.0)));
    if (rng_.Chance(0.12)) visit.purchases = 1;
  }

  // Fills *event for the visit's step of kind `kind`, at `ts`.
  void FillEvent(Visit& visit, StepKind kind, int64_t ts, Event* event) {
    *event = Event{};
    event->ts = ts;
    event->user = visit.user;
    switch (kind) {
      case StepKind::kRefund:
        event->type = EventType::kRefund;
        event->item = visit.refund_item;
        event->amount_cents = visit.refund_cents;
        break;
      case StepKind::kFailedLogin:
      case StepKind::kLogin:
        event->type = EventType::kLogin;
        event->success = kind == StepKind::kLogin;
        event->device = visit.device;
        break;
      case StepKind::kView: {
        event->type = EventType::kView;
        event->category = (visit.attack || rng_.Chance(0.75)) ? visit.category : RandomCategory(rng_);
        event->item = RandomItem(rng_, event->category);
        const int remembered = visit.viewed_count % Visit::kRemembered;
        visit.viewed_items[remembered] = event->item;
        visit.viewed_categories[remembered] = event->category;
        ++visit.viewed_count;
        break;
      }
      case StepKind::kPurchase:
        event->type = EventType::kPurchase;
        if (visit.viewed_count > 0 && rng_.Chance(0.8)) {
          const int pick =
              static_cast<int>(rng_.Below(std::min<int>(visit.viewed_count, Visit::kRemembered)));
          event->category = visit.viewed_categories[pick];
          event->item = visit.viewed_items[pick];
        } else {
          event->category = RandomCategory(rng_);
          event->item = RandomItem(rng_, event->category);
        }
        event->amount_cents = RandomPriceCents(rng_, event->category, visit.attack ? 3.0 : 1.0);
        users_.last_purchase(visit.rank) = LastPurchase{event->item, event->amount_cents};
        break;
      case StepKind::kDone:
        FRESHET_CHECK(false);
    }
  }

  UserTable& users_;
  Rng rng_;
  const int64_t start_ms_;
  const int64_t end_ms_;
  uint64_t unallotted_;  // Events not yet promised to a visit.
  VisitProfile profile_;
  double clock_ms_;  // Start time of the latest visit, with sub-millisecond precision.
  int64_t last_ts_;  // Time of the latest step taken.
  bool has_next_start_ = false;
  int64_t next_start_ms_ = 0;
  VisitWheel queue_;
  std::vector<Visit> visits_;
  std::vector<uint32_t> free_slots_;
  uint32_t next_rank_ = 0;         // The user of the next visit.
  uint64_t queued_user_draw_ = 0;  // Picks the user of the visit after.
};

// ---------------------------------------------------------------------------------------------------------
// Formatting. Lines are formatted straight into a large buffer with std::to_chars and written with fwrite.

// The ways a line can be malformed; kNone is a well-formed line.
enum class Fault : uint8_t {
  kNone,
  kTruncated,
  kNotObject,
  kNoUserId,
  kNoTs,
  kTsWrongType,
  kTsBadRfc3339,
  kBadUtf8,
  kEmptyLine,
};
constexpr int kFaultKinds = 8;

char* Put(char* p, std::string_view text) {
  std::memcpy(p, text.data(), text.size());
  return p + text.size();
}

char* PutInt(char* p, int64_t value) {
  return std::to_chars(p, p + 24, value).ptr;
}

// Writes cents as a decimal with one or two decimals: 2350 -> "23.5", 2345 -> "23.45", 2300 -> "23.0".
char* PutAmount(char* p, uint32_t cents) {
  p = PutInt(p, cents / 100);
  *p++ = '.';
  *p++ = static_cast<char>('0' + cents / 10 % 10);
  if (cents % 10 != 0) *p++ = static_cast<char>('0' + cents % 10);
  return p;
}

constexpr std::string_view kTypeNames[] = {"view", "purchase", "refund", "login"};

// Writes event lines (well-formed or malformed as the options ask) through a large buffer.
class LineWriter {
 public:
  LineWriter(FILE* out, const GeneratorOptions& options)
      : out_(out),
        format_(options.timestamp_format),
        malformed_share_(options.malformed_share),
        event_ids_(options.event_ids),
        merchants_(options.merchants),
        duplicate_share_(options.duplicate_share),
        total_(options.events),
        on_progress_(options.on_progress),
        style_rng_(options.seed, kTimestampStyleStream),
        malformed_rng_(options.seed, kMalformedStream),
        duplicate_rng_(options.seed, kDuplicateStream),
        buffer_(new char[kBufferBytes]) {}

  bool failed() const { return !status_.ok(); }

  void Write(const Event& event) {
    if (pos_ > kBufferBytes - kMaxLineBytes) Flush();
    const bool rfc3339 = format_ == TimestampFormat::kRfc3339 ||
                         (format_ == TimestampFormat::kMixed && (style_rng_.Next() >> 63) != 0);
    Fault fault = Fault::kNone;
    int variant = 0;
    if (malformed_share_ > 0 && malformed_rng_.Chance(malformed_share_)) {
      fault = static_cast<Fault>(1 + malformed_rng_.Below(kFaultKinds));
      variant = static_cast<int>(malformed_rng_.Below(4));
    }
    char* const line = buffer_.get() + pos_;
    char* p = FormatLine(line, event, rfc3339, fault, variant);
    if (fault == Fault::kTruncated) {
      // Keep 1 .. length-1 characters: the closing brace is always lost, so the line never parses.
      p = line + 1 + malformed_rng_.Below(static_cast<uint64_t>(p - line) - 1);
    }
    *p++ = '\n';
    pos_ = static_cast<size_t>(p - buffer_.get());
    if ((++written_ & 0xFFFF) == 0 && on_progress_) on_progress_(written_, total_);
    if (duplicate_share_ > 0 && duplicate_rng_.Chance(duplicate_share_)) {
      const auto delay = duplicate_rng_.Between(1, static_cast<int64_t>(kMaxResendDelayLines));
      resends_.push({written_ + static_cast<uint64_t>(delay), resend_sequence_++, std::string(line, p)});
    }
    WriteResends(written_);
  }

  Status Finish() {
    WriteResends(UINT64_MAX);
    Flush();
    if (status_.ok() && std::fflush(out_) != 0) status_ = WriteError();
    if (on_progress_) on_progress_(written_, total_);
    return status_;
  }

 private:
  static constexpr size_t kBufferBytes = size_t{1} << 20;
  static constexpr size_t kMaxLineBytes = 512;

  // A line to be written again once `after` original lines are written.
  struct Resend {
    uint64_t after;
    uint64_t sequence;
    std::string line;  // With its newline.
  };
  struct LaterResendFirst {
    bool operator()(const Resend& a, const Resend& b) const {
      return a.after > b.after || (a.after == b.after && a.sequence > b.sequence);
    }
  };

  // Writes the resends due once `written` original lines are out, in order.
  void WriteResends(uint64_t written) {
    while (!resends_.empty() && resends_.top().after <= written) {
      if (pos_ > kBufferBytes - kMaxLineBytes) Flush();
      const std::string& line = resends_.top().line;
      std::memcpy(buffer_.get() + pos_, line.data(), line.size());
      pos_ += line.size();
      resends_.pop();
    }
  }

  void Flush() {
    if (pos_ > 0 && status_.ok() && std::fwrite(buffer_.get(), 1, pos_, out_) != pos_) status_ = WriteError();
    pos_ = 0;
  }

  static Status WriteError() {
    return Status::IoError(std::string("cannot write the generated events: ") + std::strerror(errno) +
                           "; check that the output path is writable and the disk is not full");
  }

  char* PutTs(char* p, int64_t ts, bool rfc3339) {
    if (!rfc3339) return PutEpochMs(p, ts);
    *p++ = '"';
    p = PutRfc3339(p, ts);
    *p++ = '"';
    return p;
  }

  // Writes epoch milliseconds. Consecutive events mostly share all but their last five digits, so the text of
  // those leading digits is cached.
  char* PutEpochMs(char* p, int64_t ts) {
    constexpr int64_t kLowDigits = 5;
    constexpr int64_t kLowRange = 100000;
    if (ts < kLowRange) return PutInt(p, ts);
    const int64_t high = ts / kLowRange;
    if (high != cached_high_) {
      cached_high_ = high;
      cached_high_length_ = static_cast<size_t>(PutInt(cached_high_text_, high) - cached_high_text_);
    }
    p = Put(p, std::string_view(cached_high_text_, cached_high_length_));
    auto low = static_cast<uint32_t>(ts - high * kLowRange);
    for (int64_t i = kLowDigits - 1; i >= 0; --i) {
      p[i] = static_cast<char>('0' + low % 10);
      low /= 10;
    }
    return p + kLowDigits;
  }

  // Writes "YYYY-MM-DDThh:mm:ss.mmmZ", as FormatRfc3339 does. The date changes rarely, so its text is cached
  // and FormatRfc3339 runs once per day of event time; the time of day is written here.
  char* PutRfc3339(char* p, int64_t ts) {
    constexpr int64_t kDayMs = 24 * 3600 * 1000;
    const int64_t day = FloorDiv(ts, kDayMs);
    if (day != cached_day_) {
      const std::string text = FormatRfc3339(day * kDayMs);
      std::memcpy(cached_date_, text.data(), kDateLength);
      cached_day_ = day;
    }
    p = Put(p, std::string_view(cached_date_, kDateLength));
    const auto ms_of_day = static_cast<uint32_t>(ts - day * kDayMs);
    p = PutTwoDigits(p, ms_of_day / 3'600'000);
    *p++ = ':';
    p = PutTwoDigits(p, ms_of_day / 60'000 % 60);
    *p++ = ':';
    p = PutTwoDigits(p, ms_of_day / 1000 % 60);
    *p++ = '.';
    const uint32_t millis = ms_of_day % 1000;
    *p++ = static_cast<char>('0' + millis / 100);
    p = PutTwoDigits(p, millis % 100);
    *p++ = 'Z';
    return p;
  }

  static char* PutTwoDigits(char* p, uint32_t value) {
    *p++ = static_cast<char>('0' + value / 10);
    *p++ = static_cast<char>('0' + value % 10);
    return p;
  }

  char* FormatLine(char* p, const Event& e, bool rfc3339, Fault fault, int variant) {
    switch (fault) {
      case Fault::kEmptyLine:
        return p;
      case Fault::kNotObject:
        switch (variant) {
          case 0:  // An array of the values.
            p = Put(p, "[\"u");
            p = PutInt(p, e.user);
            p = Put(p, "\",");
            p = PutTs(p, e.ts, rfc3339);
            p = Put(p, ",\"");
            p = Put(p, kTypeNames[static_cast<int>(e.type)]);
            return Put(p, "\"]");
          case 1:  // A bare string.
            *p++ = '"';
            p = Put(p, kTypeNames[static_cast<int>(e.type)]);
            *p++ = '"';
            return p;
          case 2:  // A bare number.
            return PutInt(p, e.ts);
          default:
            return Put(p, "null");
        }
      default:
        break;
    }
    *p++ = '{';
    if (fault != Fault::kNoUserId) {
      p = Put(p, "\"user_id\":\"u");
      p = PutInt(p, e.user);
      if (fault == Fault::kBadUtf8) {
        static constexpr std::string_view kBadSequences[] = {"\xff", "\xc3(", "\xe2\x82", "\xc0\xaf"};
        p = Put(p, kBadSequences[variant]);
      }
      p = Put(p, "\",");
    }
    if (fault != Fault::kNoTs) {
      p = Put(p, "\"ts\":");
      if (fault == Fault::kTsWrongType) {
        static constexpr std::string_view kOpen[] = {"", "[", "{\"ms\":", ""};
        static constexpr std::string_view kClose[] = {"", "]", "}", ""};
        if (variant == 0 || variant == 3) {
          p = Put(p, variant == 0 ? "true" : "false");
        } else {
          p = Put(p, kOpen[variant]);
          p = PutInt(p, e.ts);
          p = Put(p, kClose[variant]);
        }
      } else if (fault == Fault::kTsBadRfc3339) {
        *p++ = '"';
        char* text = p;
        p = PutRfc3339(p, e.ts);
        switch (variant) {
          case 0:  // The offset is missing.
            --p;
            break;
          case 1:  // Month 13.
            text[5] = '1';
            text[6] = '3';
            break;
          case 2:  // Hour 24.
            text[11] = '2';
            text[12] = '4';
            break;
          default:  // Not a time at all.
            p = Put(text, "yesterday");
            break;
        }
        *p++ = '"';
      } else {
        p = PutTs(p, e.ts, rfc3339);
      }
      *p++ = ',';
    }
    if (event_ids_) {
      p = Put(p, "\"event_id\":\"e");
      p = PutInt(p, static_cast<int64_t>(written_ + 1));
      p = Put(p, "\",");
    }
    p = Put(p, "\"type\":\"");
    p = Put(p, kTypeNames[static_cast<int>(e.type)]);
    *p++ = '"';
    switch (e.type) {
      case EventType::kView:
        p = Put(p, ",\"category\":\"");
        p = Put(p, kCategories[e.category].name);
        p = Put(p, "\",\"item_id\":\"i");
        p = PutInt(p, e.item);
        *p++ = '"';
        break;
      case EventType::kPurchase:
        p = Put(p, ",\"category\":\"");
        p = Put(p, kCategories[e.category].name);
        p = Put(p, "\",\"item_id\":\"i");
        p = PutInt(p, e.item);
        p = PutMerchant(p, e.item);
        p = Put(p, "\",\"amount\":");
        p = PutAmount(p, e.amount_cents);
        break;
      case EventType::kRefund:
        p = Put(p, ",\"item_id\":\"i");
        p = PutInt(p, e.item);
        p = PutMerchant(p, e.item);
        p = Put(p, "\",\"amount\":");
        p = PutAmount(p, e.amount_cents);
        break;
      case EventType::kLogin:
        p = Put(p, e.success ? ",\"success\":true,\"device\":\"" : ",\"success\":false,\"device\":\"");
        p = Put(p, kDevices[e.device]);
        *p++ = '"';
        break;
    }
    *p++ = '}';
    return p;
  }

  // With merchants: `","merchant_id":"m<k>` after an item id (whose closing quote the caller writes).
  char* PutMerchant(char* p, uint32_t item) const {
    if (merchants_ == 0) return p;
    p = Put(p, "\",\"merchant_id\":\"m");
    return PutInt(p, static_cast<int64_t>(1 + item % merchants_));
  }

  static constexpr size_t kDateLength = 11;  // "YYYY-MM-DDT"

  FILE* out_;
  TimestampFormat format_;
  double malformed_share_;
  bool event_ids_;
  uint32_t merchants_;
  double duplicate_share_;
  uint64_t total_;
  const GeneratorProgressFn& on_progress_;
  Rng style_rng_;
  Rng malformed_rng_;
  Rng duplicate_rng_;
  std::unique_ptr<char[]> buffer_;
  size_t pos_ = 0;
  uint64_t written_ = 0;  // Original lines written (resends not counted).
  std::priority_queue<Resend, std::vector<Resend>, LaterResendFirst> resends_;  // Earliest due first.
  uint64_t resend_sequence_ = 0;
  int64_t cached_high_ = -1;
  char cached_high_text_[24] = {};
  size_t cached_high_length_ = 0;
  int64_t cached_day_ = INT64_MIN;
  char cached_date_[kDateLength] = {};
  Status status_;
};

// Bounded disorder: each event gets a release key ts + U[0, disorder_ms] and leaves in key order, kept in a
// ring of buckets width_ms wide (1 ms unless the disorder is longer than kBuckets / 2 ms), first in first out
// within a bucket. If f leaves before e, either f's bucket comes first, so ts(f) <= key(f) < key(e) <=
// ts(e) + disorder_ms, or they share a bucket and f came in first, so ts(f) <= ts(e): no event is written
// more than disorder_ms behind the newest written before it. A bucket leaves once the input has passed it, as
// later inputs have keys no smaller than their ts.
class DisorderBuffer {
 public:
  explicit DisorderBuffer(int64_t disorder_ms)
      : width_ms_(std::max<int64_t>(1, (disorder_ms + kBuckets / 2 - 1) / (kBuckets / 2))),
        heads_(kBuckets, kNone),
        tails_(kBuckets, kNone) {}

  // Calls emit(event) for the events whose bucket no event at or after `ts` can reach, in leaving order.
  template <typename Emit>
  void ReleaseBefore(int64_t ts, Emit emit) {
    const int64_t target = FloorDiv(ts, width_ms_);
    if (held_ == 0) next_bucket_ = target;
    // Every held event sits in the kBuckets buckets from next_bucket_ on, so this loop ends within as many.
    while (next_bucket_ < target && held_ > 0) Drain(next_bucket_++, emit);
    next_bucket_ = std::max(next_bucket_, target);
  }

  // Holds `event` until its `key` (ts <= key <= ts + disorder_ms) is passed. Call ReleaseBefore(event.ts)
  // first.
  void Add(const Event& event, int64_t key) {
    uint32_t node;
    if (free_.empty()) {
      node = static_cast<uint32_t>(nodes_.size());
      nodes_.emplace_back();
    } else {
      node = free_.back();
      free_.pop_back();
    }
    nodes_[node] = {event, kNone};
    const size_t bucket = static_cast<size_t>(FloorDiv(key, width_ms_)) & (kBuckets - 1);
    if (tails_[bucket] == kNone) {
      heads_[bucket] = node;
    } else {
      nodes_[tails_[bucket]].next = node;
    }
    tails_[bucket] = node;
    ++held_;
  }

  // Calls emit(event) for every event still held, in leaving order.
  template <typename Emit>
  void ReleaseAll(Emit emit) {
    while (held_ > 0) Drain(next_bucket_++, emit);
  }

 private:
  static constexpr int64_t kBuckets = 2048;
  static constexpr uint32_t kNone = UINT32_MAX;

  struct Node {
    Event event;
    uint32_t next;
  };

  template <typename Emit>
  void Drain(int64_t bucket_index, Emit& emit) {
    const size_t bucket = static_cast<size_t>(bucket_index) & (kBuckets - 1);
    for (uint32_t node = heads_[bucket]; node != kNone; node = nodes_[node].next) {
      emit(nodes_[node].event);
      free_.push_back(node);
      --held_;
    }
    heads_[bucket] = kNone;
    tails_[bucket] = kNone;
  }

  const int64_t width_ms_;
  std::vector<uint32_t> heads_;  // Per bucket, its first node (the earliest added), or kNone.
  std::vector<uint32_t> tails_;  // Per bucket, its last node, or kNone.
  std::vector<Node> nodes_;
  std::vector<uint32_t> free_;
  size_t held_ = 0;
  int64_t next_bucket_ = 0;  // The lowest bucket index that may hold events.
};

// Reorders the in-order workload as the options ask, then hands events to the LineWriter: bounded disorder
// (see DisorderBuffer), then lateness, where a late_share of events is held until the newest written ts
// passes ts + lateness.
class Reorderer {
 public:
  Reorderer(LineWriter* writer, const GeneratorOptions& options)
      : writer_(writer),
        disorder_ms_(options.disorder_ms),
        late_share_(options.late_share),
        disorder_(options.disorder_ms),
        disorder_rng_(options.seed, kDisorderStream),
        late_rng_(options.seed, kLateStream) {}

  void Push(const Event& event) {
    if (disorder_ms_ == 0) {
      PassLateStage(event);
      return;
    }
    disorder_.ReleaseBefore(event.ts, [this](const Event& e) { PassLateStage(e); });
    disorder_.Add(event, event.ts + disorder_rng_.Between(0, disorder_ms_));
  }

  // Writes everything still held: the disorder buffer in leaving order, then the late events.
  void Finish() {
    disorder_.ReleaseAll([this](const Event& e) { PassLateStage(e); });
    while (!late_.empty()) {
      writer_->Write(late_.top().event);
      late_.pop();
    }
  }

 private:
  struct Held {
    int64_t key;
    uint64_t sequence;
    Event event;
  };
  struct LaterFirst {
    bool operator()(const Held& a, const Held& b) const {
      return a.key > b.key || (a.key == b.key && a.sequence > b.sequence);
    }
  };

  void PassLateStage(const Event& event) {
    if (late_share_ > 0 && late_rng_.Chance(late_share_)) {
      const int64_t lateness_ms =
          kLateMinMs + disorder_ms_ * 2 + late_rng_.Between(0, disorder_ms_) + late_rng_.Between(0, 60'000);
      late_.push({event.ts + lateness_ms, sequence_++, event});
      return;
    }
    writer_->Write(event);
    max_written_ts_ = std::max(max_written_ts_, event.ts);
    while (!late_.empty() && late_.top().key <= max_written_ts_) {
      writer_->Write(late_.top().event);
      late_.pop();
    }
  }

  LineWriter* writer_;
  int64_t disorder_ms_;
  double late_share_;
  DisorderBuffer disorder_;
  Rng disorder_rng_;
  Rng late_rng_;
  uint64_t sequence_ = 0;
  int64_t max_written_ts_ = INT64_MIN;
  std::priority_queue<Held, std::vector<Held>, LaterFirst> late_;  // Earliest release first.
};

// True for a share in [0, 1]; false for NaN.
bool IsShare(double share) {
  return share >= 0.0 && share <= 1.0;
}

std::string ShortNumber(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", value);
  return text;
}

}  // namespace

Result<TimestampFormat> ParseTimestampFormat(std::string_view text) {
  if (text == "epoch-ms") return TimestampFormat::kEpochMs;
  if (text == "rfc3339") return TimestampFormat::kRfc3339;
  if (text == "mixed") return TimestampFormat::kMixed;
  return Status::Invalid(
      "unknown timestamp format '" + std::string(text) +
      "'; use epoch-ms (integer milliseconds), rfc3339 (UTC text) or mixed (either, at random)");
}

const char* TimestampFormatName(TimestampFormat format) {
  switch (format) {
    case TimestampFormat::kEpochMs:
      return "epoch-ms";
    case TimestampFormat::kRfc3339:
      return "rfc3339";
    case TimestampFormat::kMixed:
      return "mixed";
  }
  return "?";
}

Status ValidateGeneratorOptions(const GeneratorOptions& options) {
  if (options.users < 1 || options.users > kMaxGeneratorUsers) {
    return Status::Invalid("--users " + std::to_string(options.users) + " is out of range; use 1.." +
                           std::to_string(kMaxGeneratorUsers));
  }
  if (options.duration_ms <= 0) return Status::Invalid("--duration must be greater than zero");
  if (options.start_ms < kMinTimeMs || options.start_ms > kMaxTimeMs - options.duration_ms) {
    return Status::Invalid("--start plus --duration must lie within years 0001-9999");
  }
  if (options.disorder_ms < 0 || options.disorder_ms > (int64_t{1} << 52)) {
    return Status::Invalid("--disorder must be 0 or a positive duration such as 5s");
  }
  if (!IsShare(options.late_share)) {
    return Status::Invalid("--late-share " + ShortNumber(options.late_share) + " is out of range; use 0..1");
  }
  if (!IsShare(options.malformed_share)) {
    return Status::Invalid("--malformed-share " + ShortNumber(options.malformed_share) +
                           " is out of range; use 0..1");
  }
  if (!IsShare(options.duplicate_share)) {
    return Status::Invalid("--duplicate-share " + ShortNumber(options.duplicate_share) +
                           " is out of range; use 0..1");
  }
  if (!(options.zipf_exponent >= 0.0 && options.zipf_exponent <= 10.0)) {
    return Status::Invalid("the Zipf exponent must lie in 0..10");
  }
  return Status::Ok();
}

Status GenerateEvents(const GeneratorOptions& options, FILE* out) {
  FRESHET_RETURN_IF_ERROR(ValidateGeneratorOptions(options));
  UserTable users(options.users, options.zipf_exponent, options.seed);
  Workload workload(options, users);
  LineWriter writer(out, options);
  Reorderer reorderer(&writer, options);
  Event event;
  uint64_t produced = 0;
  while (workload.Next(&event)) {
    reorderer.Push(event);
    if ((++produced & 0xFFFF) == 0 && writer.failed()) break;  // Stop early when the output is broken.
  }
  if (!writer.failed()) {
    FRESHET_CHECK(produced == options.events);
    reorderer.Finish();
  }
  return writer.Finish();
}

Status GenerateEntities(const GeneratorOptions& options, FILE* out) {
  FRESHET_RETURN_IF_ERROR(ValidateGeneratorOptions(options));
  const UserTable users(options.users, options.zipf_exponent, options.seed);
  Rng rng(options.seed, kEntityStream);
  const int64_t span_ms = options.duration_ms + options.duration_ms / 10;
  std::string text = "user_id,ts,label\n";
  text.reserve(size_t{1} << 16);
  bool ok = true;
  // Row times are the order statistics of uniform draws over the span, produced in ascending order without
  // holding them: the next one is the minimum of the i uniforms still to draw over the rest of the span.
  double position = 0.0;
  for (uint64_t left = options.entity_rows; left > 0; --left) {
    position += (1.0 - position) * (1.0 - std::pow(1.0 - rng.Uniform(), 1.0 / static_cast<double>(left)));
    const int64_t offset_ms =
        std::min(span_ms - 1, static_cast<int64_t>(position * static_cast<double>(span_ms)));
    const uint32_t rank = users.RankOf(rng.Next());
    const bool label = rng.Chance(users.IsAttacker(rank) ? 0.85 : 0.02);
    char row[64];
    char* p = row;
    *p++ = 'u';
    p = PutInt(p, users.UserNumber(rank));
    *p++ = ',';
    p = PutInt(p, options.start_ms + offset_ms);
    *p++ = ',';
    *p++ = label ? '1' : '0';
    *p++ = '\n';
    text.append(row, p);
    if (text.size() >= (size_t{1} << 16) - 64) {
      ok = ok && std::fwrite(text.data(), 1, text.size(), out) == text.size();
      text.clear();
    }
  }
  ok = ok && std::fwrite(text.data(), 1, text.size(), out) == text.size();
  ok = ok && std::fflush(out) == 0;
  if (!ok) {
    return Status::IoError(std::string("cannot write the entity rows: ") + std::strerror(errno) +
                           "; check that the path is writable and the disk is not full");
  }
  return Status::Ok();
}

}  // namespace freshet

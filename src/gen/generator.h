// The synthetic fraud-detection workload behind `freshet generate` and examples/fraud.
//
// GenerateEvents writes JSON lines, one event per line, keys in this order and no spaces:
//
//   {"user_id":"u123","ts":1767225600000,"type":"view","category":"books","item_id":"i4711"}
//   {"user_id":"u123","ts":...,"type":"purchase","category":"books","item_id":"i4711","amount":23.5}
//   {"user_id":"u123","ts":...,"type":"refund","item_id":"i4711","amount":23.5}
//   {"user_id":"u123","ts":...,"type":"login","success":true,"device":"ios"}
//
// `ts` is epoch milliseconds (a JSON integer) or RFC 3339 UTC text, see TimestampFormat. `amount` is a
// positive number of currency units with at most two decimals, always written with a decimal point. With
// `event_ids`, every line also has a unique id right after `ts`: {"user_id":"u123","ts":...,"event_id":"e17",...}.
//
// The workload: users u1..uN have Zipf-skewed activity (exponent `zipf_exponent`, so a few users are very
// active and most rarely appear). A user's visit is a burst of views seconds to a couple of minutes apart,
// sometimes starting with a login (and, rarely, a refund of the user's last purchase) and sometimes ending
// with a purchase, usually of an item viewed in the visit. About 0.2% of users are attackers (never among the
// 30 most active): half their visits are runs of 5-20 failed logins a few seconds apart, sometimes followed
// by a success and quick expensive purchases.
//
// Output is deterministic: the same options (seed included) give byte-identical output, on any machine with
// the same C library. Events lie in [start_ms, start_ms + duration_ms) and are written in nondecreasing `ts`
// order, except as asked by `disorder_ms`, `late_share` and `duplicate_share`. Exactly `events` lines are
// written, plus the resends of `duplicate_share`.
//
// Example:
//   GeneratorOptions options;
//   options.events = 1'000'000;
//   options.disorder_ms = 5000;
//   Status status = GenerateEvents(options, stdout);
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string_view>

#include "common/status.h"

namespace freshet {

// How events write `ts`.
enum class TimestampFormat {
  kEpochMs,  // A JSON integer of milliseconds since the Unix epoch (the default).
  kRfc3339,  // A JSON string, RFC 3339 UTC with milliseconds: "2026-01-01T00:00:00.123Z".
  kMixed,    // Each line picks one of the two at random (50/50).
};

// Parses "epoch-ms", "rfc3339" or "mixed"; the error lists the valid names.
Result<TimestampFormat> ParseTimestampFormat(std::string_view text);

// The name ParseTimestampFormat accepts for `format`.
const char* TimestampFormatName(TimestampFormat format);

// Called with the number of lines written so far and the total, from the generating thread.
using GeneratorProgressFn = std::function<void(uint64_t done, uint64_t total)>;

// What to generate. The defaults are those of `freshet generate`.
struct GeneratorOptions {
  uint64_t users = 1000;                   // Distinct users, u1..u<users>. 1 .. kMaxGeneratorUsers.
  uint64_t events = 100000;                // Lines written by GenerateEvents (malformed ones included).
  int64_t start_ms = 1767225600000;        // 2026-01-01T00:00:00Z.
  int64_t duration_ms = 24 * 3600 * 1000;  // Events span [start_ms, start_ms + duration_ms). > 0.
  uint64_t seed = 1;

  // Bounded out-of-orderness: each event may be written after events up to `disorder_ms` newer than it, never
  // more. 0 writes events in nondecreasing ts order.
  int64_t disorder_ms = 0;

  // Share (0..1) of events held back and written once the stream has moved kLateMinMs + 2..3 x disorder_ms
  // (plus up to a minute) past them, so a watermark with that out-of-orderness finds them late. Events still
  // held at the end of the stream are written last, and may then be less late than that.
  double late_share = 0;

  // Share (0..1) of lines replaced by a malformed line, in varied ways: truncated JSON, not an object,
  // user_id missing, ts missing, ts of a wrong type, ts an invalid RFC 3339 text, invalid UTF-8, an empty
  // line.
  double malformed_share = 0;

  TimestampFormat timestamp_format = TimestampFormat::kEpochMs;

  // Give every line an "event_id" ("e1", "e2", ... in the order the lines are written; a resend keeps its id).
  bool event_ids = false;

  // > 0: purchases and refunds name the merchant selling the item, "merchant_id":"m<k>" right after item_id, with
  // k = 1 + item % merchants (no random draw, so the lines are otherwise those written without it).
  uint32_t merchants = 0;

  // Share (0..1) of lines written again, byte for byte, 1 to kMaxResendDelayLines lines later, like a
  // producer that resends what it is not sure was delivered. Resends are written in addition to `events`.
  double duplicate_share = 0;

  // Rows written by GenerateEntities.
  uint64_t entity_rows = 10000;

  // Zipf exponent of user activity: the user of rank r (0-based) is picked with weight 1 / (r + 1)^exponent.
  double zipf_exponent = 1.0;

  // Optional progress report, called about every 65536 lines and once at the end.
  GeneratorProgressFn on_progress;
};

// The largest `users` accepted: the generator keeps 16 bytes per user (and 12 more while it sets up).
inline constexpr uint64_t kMaxGeneratorUsers = 20'000'000;

// The most lines a resend (see GeneratorOptions::duplicate_share) follows its original by.
inline constexpr uint64_t kMaxResendDelayLines = 50;

// The least lateness of a late event (see GeneratorOptions::late_share): five minutes.
inline constexpr int64_t kLateMinMs = 5 * 60 * 1000;

// Checks the options; the message names the offending option and its valid range.
Status ValidateGeneratorOptions(const GeneratorOptions& options);

// Writes options.events event lines to `out` (see the file comment). Returns an IoError if writing fails.
// Memory stays bounded whatever `events` is: 16 bytes per user, the visits in progress, and the events held
// back for disorder or lateness (about the event rate times disorder_ms, or times the lateness for late
// ones).
Status GenerateEvents(const GeneratorOptions& options, FILE* out);

// Writes a CSV of entity rows for point-in-time queries: the header `user_id,ts,label`, then
// options.entity_rows rows in nondecreasing ts order. `ts` is epoch milliseconds in
// [start_ms, start_ms + duration_ms + duration_ms / 10); users are drawn with the same skew as the events;
// `label` is 1 with probability 0.85 for attackers (the users with runs of failed logins) and 0.02 for
// others.
Status GenerateEntities(const GeneratorOptions& options, FILE* out);

}  // namespace freshet

#!/usr/bin/env bash
# The fraud example on the embedded default, live: `freshet run` serves the fraud features (one joined with a
# profile table, examples/fraud/profiles.jsonl) over HTTP while
# generated events are pushed to it at their event-time pace; a few users' features change on screen.
# Then the same events become a point-in-time training set with `freshet historical`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
echo "== 0. set up the machine and build freshet (the first time takes a few minutes: packages, then the build)"
# Only what the demo needs: scripts/test.sh installs the test tools (the Kafka broker's jars, chromium, ...) later.
bash scripts/setup.sh --demo
# The demo builds only the `freshet` command, optimized and without debug information or tests: about half the
# compile work of scripts/test.sh's build (which configures the same folder back to its own settings).
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
  -DFRESHET_BUILD_TESTS=OFF -DFRESHET_BUILD_BENCH=OFF >/dev/null
ninja -C build freshet | sed -u 's/^/   /'
bin="$here/build/freshet"
ex="$here/examples/fraud"
work="$here/out/demo"
rm -rf "$work" && mkdir -p "$work"
seconds=${DEMO_SECONDS:-40}
lag_s=3  # The lookups below ask for the features as of this long ago: longer than the stream's disorder.

echo "== 1. generate ${seconds} s of fraud-workload events starting now (300 users, some disorder and malformed lines)"
start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
"$bin" generate --users 300 --events $((seconds * 400)) --start "$start" --duration "${seconds}s" --seed 7 \
  --disorder 2s --malformed-share 0.002 --output "$work/events.jsonl"
head -n 2 "$work/events.jsonl"

echo
echo "== 2. start freshet run (embedded store, HTTP source) on $ex/live.yaml"
"$bin" run --spec "$ex/live.yaml" --data-dir "$work/data" --port 0 2> "$work/run.log" &
run_pid=$!
trap 'kill $run_pid 2>/dev/null || true; kill ${feed_pid:-0} 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do grep -q "serving" "$work/run.log" 2>/dev/null && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.]*:[0-9]*' "$work/run.log" | head -n 1)
echo "serving on $url"
echo "   the web console: open $url/ui in a browser (pipeline, features, an entity's values explained, dead letters)"

echo
echo "== 3. push the events over HTTP as they become due, and watch three users' features change"
echo "   (answers as of ${lag_s} s ago: the generator puts some events up to 2 s late in the stream, and an answer as"
echo "   of a moment whose events have all arrived is the one the training data will agree with, in step 7)"
"$here/.venv/bin/python" scripts/feed.py --url "$url" --events "$work/events.jsonl" 2> "$work/feed.log" &
feed_pid=$!
top_users=$(set +o pipefail; grep -a -o '"user_id":"[^"]*"' "$work/events.jsonl" | sort | uniq -c | sort -rn \
  | head -n 3 | sed 's/.*"user_id":"\([^"]*\)"/\1/' | tr '\n' ' ')
for round in $(seq 1 $((seconds / 5))); do
  sleep 5
  echo "-- after $((round * 5)) s: $(grep -o 'freshet_events_accepted_total{[^}]*} [0-9]*' <(curl -s "$url/metrics") | awk '{print $2}') events accepted"
  for u in $top_users; do
    at=$(( $(date +%s%3N) - lag_s * 1000 ))
    echo "   $u $(curl -s "$url/v1/features/$u?at=$at" | "$here/.venv/bin/python" -c '
import json, sys, time
d = json.load(sys.stdin)
age = d["newest_event_age_ms"]
newest = "no event yet" if age is None else "newest event %.1f s ago" % (time.time() - (d["as_of_ms"] - age) / 1000)
print(json.dumps(d["features"]), newest)')"
  done
done
wait $feed_pid || true

echo
echo "== 4. query it yourself while it runs, e.g.:"
first=$(echo $top_users | cut -d' ' -f1)
echo "   curl -s '$url/v1/features/$first?features=purchase_count_30m,max_purchase_24h'"
curl -s "$url/v1/features/$first?features=purchase_count_30m,max_purchase_24h"; echo
echo "   curl -s -X POST $url/v1/features -d '{\"entities\": [\"$first\", \"nobody\"]}'"
curl -s -X POST "$url/v1/features" -d "{\"entities\": [\"$first\", \"nobody\"]}"; echo
echo "   curl -s '$url/v1/explain/$first?feature=purchase_count_30m'   # the events behind a value (also at $url/ui#entity)"
curl -s "$url/v1/explain/$first?feature=purchase_count_30m" | "$here/.venv/bin/python" -c '
import json, sys
x = json.load(sys.stdin)
print("   %s = %s: %s (%d counted, %d excluded)" % (x.get("feature"), x.get("value"), x.get("arithmetic"), x.get("counted", 0), x.get("excluded", 0)) if "error" not in x else "   " + x["error"])' || true
echo "   curl -s $url/health; curl -s $url/metrics | grep -E '^freshet_(freshness_slo_breached|events_(accepted|rejected|late)_total)'"
curl -s "$url/health"; echo
curl -s "$url/metrics" | grep -E '^freshet_(freshness_slo_breached|events_(accepted|rejected|late)_total)' || true

kill -TERM $run_pid && wait $run_pid || true
echo
echo "== 5. the same events as a point-in-time training set (freshet historical), as of now, for those users"
{ echo "user_id,ts"; for u in $top_users; do echo "$u,$(date -u +%Y-%m-%dT%H:%M:%SZ)"; done; } > "$work/entities.csv"
"$bin" historical --spec "$ex/live.yaml" --events "$work/events.jsonl" --table "profiles=$ex/profiles.jsonl" \
  --entities "$work/entities.csv" --output "$work/features.csv" --dead-letters "$work/dead_letters.jsonl"
column -s, -t < "$work/features.csv"
echo
echo "== 6. the offline store that freshet run wrote (Delta Lake tables; here read with pandas through the Python SDK)"
"$here/.venv/bin/python" - "$ex/live.yaml" "$work/data" <<'PY'
import sys
import freshet
spec, data = sys.argv[1], sys.argv[2]
for table in ("events", "features", "feature_log"):
    df = freshet.read_offline_table(spec, table, data_dir=data)
    print(f"{table}: {len(df)} rows; columns {', '.join(df.columns)}")
features = freshet.read_offline_table(spec, "features", data_dir=data)
print(features.sort_values("seq").tail(3).drop(columns=["event_date"]).to_string(index=False))
PY
echo
echo "== 7. training/serving skew: every answer served above, recomputed offline as of its time (freshet skew)"
"$bin" skew --spec "$ex/live.yaml" --data-dir "$work/data" --until "$(date -u +%Y-%m-%dT%H:%M:%SZ)" || \
  echo "(exit 1: some feature above skew.max_mismatch_rate; events that arrive after an answer cause such skew)"
echo
echo "Files: $work (events, run.log, data/checkpoints, data/dead_letters, data/offline, features.csv)"

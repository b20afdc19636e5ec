#!/usr/bin/env bash
# The training half: see bench/README.md. Release build, repeated runs, medians, one core.
#   bench/offline.sh [--events N] [--users N] [--rows N] [--repeat N]
# 1. `freshet run` streams the events file once, writing the offline events and features tables (timed once).
# 2. `freshet backfill` recomputes the features table from the events table (target: 10M events in < 20 s).
# 3. `freshet historical` builds a training set of N labelled rows from the events table (target: 1M rows in < 15 s).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$here/bench/workload.sh"
parse_workload_args bench/offline.sh 3 "$@"

source "$here/bench/release_build.sh"
release_build freshet

generate_workload
work="$data/offline_${events}_${users}"
mkdir -p "$work"
sed "s|path: events.jsonl|path: $ev|" "$here/examples/fraud/fraud.yaml" > "$work/fraud.yaml"

if [ ! -d "$work/data/offline/events/_delta_log" ]; then
  echo "== stream: freshet run over the events file, writing the offline store (once) =="
  /usr/bin/time -f "%e %M" -o "$work/time.txt" taskset -c 0 "$build/freshet" run --spec "$work/fraud.yaml" \
    --data-dir "$work/data" --port 0 --exit-at-end 2>/dev/null
  read -r secs rss < "$work/time.txt"
  echo "stream with offline store: $secs s, peak RSS $((rss / 1024)) MB"
fi
du -sh "$work/data/offline/events" "$work/data/offline/features" | sed 's/^/offline table size: /'

echo "== backfill: $events events from the events table to the features table (one core) =="
timed_runs --quiet backfill "$build/freshet" backfill --spec "$work/fraud.yaml" --data-dir "$work/data" \
  --no-checkpoint --no-progress --output "$work/backfill_features"

echo "== training set: $rows entity rows over the events table (one core) =="
timed_runs --quiet "training set" "$build/freshet" historical --spec "$work/fraud.yaml" --data-dir "$work/data" \
  --entities "$ent" --output "$work/training.parquet" --no-progress

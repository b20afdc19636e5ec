#!/usr/bin/env bash
# The training half: see bench/README.md. Release build, repeated runs, medians, one core.
#   bench/offline.sh [--events N] [--users N] [--rows N] [--repeat N]
# 1. `freshet run` streams the events file once, writing the offline events and features tables (timed once).
# 2. `freshet backfill` recomputes the features table from the events table (target: 10M events in < 20 s).
# 3. `freshet historical` builds a training set of N labelled rows from the events table (target: 1M rows in < 15 s).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
events=10000000 users=1000000 rows=1000000 repeat=3
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --users) users=$2; shift 2 ;;
    --rows) rows=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    *) echo "usage: bench/offline.sh [--events N] [--users N] [--rows N] [--repeat N]" >&2; exit 2 ;;
  esac
done

source "$here/bench/release_build.sh"
release_build freshet

data="$here/bench/data"
ev="$data/events_${events}_${users}.jsonl"
ent="$data/entities_${rows}_${users}.csv"
if [ ! -s "$ev" ] || [ ! -s "$ent" ]; then
  echo "generating $events events for $users users over 24h and $rows entity rows" >&2
  "$build/freshet" generate --users "$users" --events "$events" --duration 24h --seed 42 --disorder 2s \
    --output "$ev" --entities "$ent" --entity-rows "$rows"
fi
work="$data/offline_${events}_${users}"
mkdir -p "$work"
sed "s|path: events.jsonl|path: $ev|" "$here/examples/fraud/fraud.yaml" > "$work/fraud.yaml"

median() { sort -n | awk -v what="$1" '{a[NR]=$1} END {printf "%s: median %.2f s over %d runs\n", what, a[int((NR+1)/2)], NR}'; }

if [ ! -d "$work/data/offline/events/_delta_log" ]; then
  echo "== stream: freshet run over the events file, writing the offline store (once) =="
  /usr/bin/time -f "%e %M" -o "$work/time.txt" taskset -c 0 "$build/freshet" run --spec "$work/fraud.yaml" \
    --data-dir "$work/data" --port 0 --exit-at-end 2>/dev/null
  read -r secs rss < "$work/time.txt"
  echo "stream with offline store: $secs s, peak RSS $((rss / 1024)) MB"
fi
du -sh "$work/data/offline/events" "$work/data/offline/features" | sed 's/^/offline table size: /'

echo "== backfill: $events events from the events table to the features table (one core) =="
times=()
for k in $(seq 1 "$repeat"); do
  /usr/bin/time -f "%e %M" -o "$work/time.txt" taskset -c 0 "$build/freshet" backfill --spec "$work/fraud.yaml" \
    --data-dir "$work/data" --no-checkpoint --no-progress --output "$work/backfill_features" 2>/dev/null
  read -r secs rss < "$work/time.txt"
  echo "backfill run $k: $secs s, peak RSS $((rss / 1024)) MB"
  times+=("$secs")
done
printf '%s\n' "${times[@]}" | median backfill

echo "== training set: $rows entity rows over the events table (one core) =="
times=()
for k in $(seq 1 "$repeat"); do
  /usr/bin/time -f "%e %M" -o "$work/time.txt" taskset -c 0 "$build/freshet" historical --spec "$work/fraud.yaml" \
    --data-dir "$work/data" --entities "$ent" --output "$work/training.parquet" --no-progress 2>/dev/null
  read -r secs rss < "$work/time.txt"
  echo "training set run $k: $secs s, peak RSS $((rss / 1024)) MB"
  times+=("$secs")
done
printf '%s\n' "${times[@]}" | median "training set"

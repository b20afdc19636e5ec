#!/usr/bin/env bash
# Throughput benchmark of the fraud example: see bench/README.md. Release build, repeated runs, medians.
#   bench/run.sh [--events N] [--users N] [--rows N] [--repeat N]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
events=10000000 users=1000000 rows=1000000 repeat=5
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --users) users=$2; shift 2 ;;
    --rows) rows=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    *) echo "usage: bench/run.sh [--events N] [--users N] [--rows N] [--repeat N]" >&2; exit 2 ;;
  esac
done

source "$here/bench/release_build.sh"
release_build freshet pipeline_bench

data="$here/bench/data"
mkdir -p "$data"
ev="$data/events_${events}_${users}.jsonl"
ent="$data/entities_${rows}_${users}.csv"
spec="$data/fraud.yaml"
cp "$here/examples/fraud/fraud.yaml" "$spec"
if [ ! -s "$ev" ] || [ ! -s "$ent" ]; then
  echo "generating $events events for $users users over 24h and $rows entity rows" >&2
  /usr/bin/time -f "generate: %e s, peak RSS %M KB" "$build/freshet" generate --users "$users" --events "$events" \
    --duration 24h --seed 42 --disorder 2s --output "$ev" --entities "$ent" --entity-rows "$rows"
fi

echo "== core: aggregation with events already parsed (one core) =="
taskset -c 0 "$build/pipeline_bench" --spec "$spec" --events "$ev" --mode core --repeat "$repeat"
echo "== json: JSON lines on disk to updated state (one core) =="
taskset -c 0 /usr/bin/time -f "json: peak RSS %M KB" "$build/pipeline_bench" --spec "$spec" --events "$ev" --mode json --repeat "$repeat"
echo "== historical: $rows entity rows over $events events (one core) =="
times=()
for k in $(seq 1 "$repeat"); do
  /usr/bin/time -f "%e %M" -o "$data/time.txt" taskset -c 0 "$build/freshet" historical --spec "$spec" --events "$ev" \
    --entities "$ent" --output "$data/out.csv" --no-progress
  read -r secs rss < "$data/time.txt"
  echo "historical run $k: $secs s, peak RSS $((rss / 1024)) MB"
  times+=("$secs")
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "historical: median %.2f s over %d runs\n", a[int((NR+1)/2)], NR}'

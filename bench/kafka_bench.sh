#!/usr/bin/env bash
# Kafka source throughput: `freshet run` (release build, the fraud spec, offline tables off) reading a keyed topic
# from a local Kafka 3.9.1 broker (scripts/kafka.sh) with parallelism 1 and 2, against the same events read from
# a file (one thread), alternating in one run.
#   bench/kafka_bench.sh [--events N] [--users N] [--partitions N] [--repeat N]
# A run's time is from the process's start until /metrics counts every message read (freshet_events_in_total),
# polled every 50 ms; the rate is events / that time. Prints each run and the medians. See bench/README.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
events=2000000 users=200000 partitions=8 repeat=3
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --users) users=$2; shift 2 ;;
    --partitions) partitions=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    *) echo "usage: bench/kafka_bench.sh [--events N] [--users N] [--partitions N] [--repeat N]" >&2; exit 2 ;;
  esac
done

source "$here/bench/release_build.sh"
release_build freshet
bin="$build/freshet"
data="$here/bench/data/kafka"
rm -rf "$data"
mkdir -p "$data"
broker_dir="$data/broker"
trap 'bash "$here/scripts/kafka.sh" stop "$broker_dir" >/dev/null 2>&1 || true' EXIT
brokers="$(bash "$here/scripts/kafka.sh" start "$broker_dir")"
bash "$here/scripts/kafka.sh" topic "$broker_dir" events "$partitions" >/dev/null
ev="$data/events.jsonl"
gen=(--users "$users" --events "$events" --duration 24h --seed 42 --disorder 2s)
echo "generating $events events for $users users into a file and into topic 'events' ($partitions partitions)" >&2
"$bin" generate "${gen[@]}" --output "$ev"
"$bin" generate "${gen[@]}" --kafka "$brokers" --topic events --no-progress 2>&1 | grep -v GETPID >&2 || true

# spec_for SOURCE [PARALLELISM]: the fraud spec with that source, offline tables off, a free port.
spec_for() {
  sed -e "s|^source: .*|source: $1|" "$here/examples/fraud/fraud.yaml"
  printf 'offline: {enabled: false}\nserve: {port: 0}\nparallelism: %s\n' "${2:-1}"
}

# timed_run LABEL SPEC: starts `freshet run`, waits until every event is read, stops it; prints the run's time.
timed_run() {
  local label=$1 spec=$2 dir="$data/run-$RANDOM"
  local start end port="" n=0
  start=$(date +%s.%N)
  "$bin" run --spec "$spec" --data-dir "$dir" 2> "$dir.log" &
  local pid=$!
  while [ -z "$port" ]; do
    port=$(grep -o 'http://127.0.0.1:[0-9]*' "$dir.log" 2>/dev/null | head -1 | sed 's/.*://') || true
    kill -0 "$pid" 2>/dev/null || { cat "$dir.log" >&2; exit 1; }
    sleep 0.02
  done
  while [ "$n" != "$events" ]; do
    n=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^freshet_events_in_total/ {printf "%d", $2}') || true
    sleep 0.05
  done
  end=$(date +%s.%N)
  kill "$pid"; wait "$pid" || true
  rm -rf "$dir"
  awk -v l="$label" -v s="$start" -v e="$end" -v n="$events" \
    'BEGIN {printf "%s: %d events in %.2f s = %.2f M events/s\n", l, n, e - s, n / (e - s) / 1e6}'
}

for p in 1 2; do
  spec_for "{type: kafka, brokers: \"$brokers\", topic: events, group: bench-GROUP}" "$p" > "$data/kafka-p$p.yaml"
done
spec_for "{type: file, path: $ev}" > "$data/file.yaml"
results="$data/results.txt"
: > "$results"
for k in $(seq 1 "$repeat"); do
  for p in 1 2; do
    sed "s/bench-GROUP/bench-$p-$k-$RANDOM/" "$data/kafka-p$p.yaml" > "$data/kafka-run.yaml"
    timed_run "kafka-p$p run $k" "$data/kafka-run.yaml" | tee -a "$results"
  done
  timed_run "file run $k" "$data/file.yaml" | tee -a "$results"
done
for kind in kafka-p1 kafka-p2 file; do
  grep "^$kind" "$results" | awk '{print $(NF-2)}' | sort -n |
    awk -v k="$kind" '{a[NR]=$1} END {printf "%s: median %.2f M events/s over %d runs\n", k, a[int((NR+1)/2)], NR}'
done

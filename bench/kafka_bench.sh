#!/usr/bin/env bash
# Kafka source throughput: `freshet run` (release build, the fraud spec, offline tables off) reading a keyed topic
# from a local Kafka 3.9.1 broker (scripts/kafka.sh) with parallelism 1 and 2, against the same events read from
# a file (one thread), alternating in one run.
#   bench/kafka_bench.sh [--events N] [--users N] [--partitions N] [--repeat N] [--bin FRESHET]
#                        [--properties "name: value, ..."]
# --properties: librdkafka properties for the Kafka source (its `properties:` map), e.g. fetch sizes to try.
# --bin: that binary instead of a release build (bench/release_build.sh, which runs scripts/setup.sh first).
# Each run also prints the CPU seconds of freshet's threads (processing, librdkafka's broker thread) and of the
# broker's JVM while it ran, and the load average: on a shared 2-core machine these say more than the wall time.
# A run's time is from the process's start until /metrics counts every message read (freshet_events_in_total),
# polled every 50 ms; the rate is events / that time. "Once reading": from the first poll that saw some events read
# to the end (the events after it / that time), without the start-up and the group join. Prints each run and the
# medians. See bench/README.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
events=2000000 users=200000 partitions=8 repeat=3 bin= properties=
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --users) users=$2; shift 2 ;;
    --partitions) partitions=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --bin) bin=$(realpath "$2"); shift 2 ;;
    --properties) properties=$2; shift 2 ;;
    *) echo "usage: bench/kafka_bench.sh [--events N] [--users N] [--partitions N] [--repeat N] [--bin F]" \
            "[--properties \"name: value, ...\"]" >&2
       exit 2 ;;
  esac
done

source "$here/bench/release_build.sh"
release_freshet_unless_given
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
  local start end port="" n=0 jvm0 jvm1 threads
  local jvm_pid
  jvm_pid=$(cat "$broker_dir/pid")
  jvm0=$(awk '{print $14 + $15}' "/proc/$jvm_pid/stat")
  start=$(date +%s.%N)
  "$bin" run --spec "$spec" --data-dir "$dir" 2> "$dir.log" &
  local pid=$!
  while [ -z "$port" ]; do
    port=$(grep -o 'http://127.0.0.1:[0-9]*' "$dir.log" 2>/dev/null | head -1 | sed 's/.*://') || true
    kill -0 "$pid" 2>/dev/null || { cat "$dir.log" >&2; exit 1; }
    sleep 0.02
  done
  local first_t="" first_n=0
  while [ "$n" != "$events" ]; do
    n=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^freshet_events_in_total/ {printf "%d", $2}') || true
    if [ -z "$first_t" ] && [ "${n:-0}" -gt 0 ] && [ "$n" != "$events" ]; then first_t=$(date +%s.%N) first_n=$n; fi
    sleep 0.05
  done
  end=$(date +%s.%N)
  [ -n "$first_t" ] || first_t=$start
  jvm1=$(awk '{print $14 + $15}' "/proc/$jvm_pid/stat")
  # CPU seconds per thread name (librdkafka's rdk:*, freshet's processing threads), in clock ticks of 1/100 s.
  threads=$(for t in /proc/"$pid"/task/*; do printf '%s %s\n' "$(tr ' ' _ < "$t/comm")" \
    "$(awk '{print $14 + $15}' "$t/stat")"; done |
    awk '{a[$1] += $2} END {for (k in a) if (a[k] > 0) printf "%s %.2f s, ", k, a[k] / 100}')
  kill "$pid"; wait "$pid" || true
  rm -rf "$dir"
  awk -v l="$label" -v s="$start" -v e="$end" -v n="$events" -v j=$((jvm1 - jvm0)) -v th="$threads" \
    -v load="$(cut -d' ' -f1 /proc/loadavg)" -v f="$first_t" -v fn="$first_n" \
    'BEGIN {printf "%s: %d events in %.2f s = %.2f M events/s, %.2f M events/s once reading (CPU: %sbroker JVM %.2f s; load %s)\n",
            l, n, e - s, n / (e - s) / 1e6, (n - fn) / (e - f) / 1e6, th, j / 100, load}'
}

for p in 1 2; do
  spec_for "{type: kafka, brokers: \"$brokers\", topic: events, group: bench-GROUP${properties:+, properties: {$properties\}}}" \
    "$p" > "$data/kafka-p$p.yaml"
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
# median KIND CUT: the median of KIND's rates, each the number just before CUT in its line of the results.
median() {
  grep "^$1" "$results" | sed "s/ M events\/s$2.*//" | awk '{print $NF}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
for kind in kafka-p1 kafka-p2 file; do
  printf '%s: median %.2f M events/s over %d runs, %.2f M events/s once reading\n' "$kind" "$(median "$kind" ", ")" \
    "$(grep -c "^$kind" "$results")" "$(median "$kind" " once reading")"
done

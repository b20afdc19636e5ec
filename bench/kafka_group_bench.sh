#!/usr/bin/env bash
# Rebalance time of a consumer group of `freshet run` processes sharing a checkpoint folder (checkpoint.path):
# the time from one process's kill -9 to its partitions being processed by the other.
#   bench/kafka_group_bench.sh [--events N] [--users N] [--session-timeout DURATION] [--repeat N] [--bin PATH]
# Each repeat: a fresh topic (8 partitions) with N generated events (keyed by user), two processes A and B in a new
# group; once both hold partitions (and 2 s of checkpoints later), A is kill -9'd; the time runs until B's /metrics
# (polled every 100 ms; the gauge is refreshed every 0.5 s) shows all 8 partitions assigned. B restores A's
# partitions from A's checkpoints inside the assignment, before it reads them: once they count as assigned, B is
# processing them (its log says how long the restore took).
# What bounds it: the group notices a silent member only after source.session_timeout (librdkafka's
# session.timeout.ms; Freshet's default 45s, the bench's default 6s, the broker's minimum), then a cooperative
# rebalance (a join/sync round trip) and the restore of the partitions' state. Prints each run and the median.
# Without --bin, builds the Release binary (bench/release_build.sh). See bench/README.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
events=200000 users=20000 session=6s repeat=3 bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --users) users=$2; shift 2 ;;
    --session-timeout) session=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    *) echo "usage: bench/kafka_group_bench.sh [--events N] [--users N] [--session-timeout D] [--repeat N] [--bin PATH]" >&2
       exit 2 ;;
  esac
done
source "$here/bench/release_build.sh"
release_freshet_unless_given
data="$here/bench/data/kafka-group"
rm -rf "$data"
mkdir -p "$data"
broker_dir="$data/broker"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  bash "$here/scripts/kafka.sh" stop "$broker_dir" >/dev/null 2>&1 || true
}
trap cleanup EXIT
brokers="$(bash "$here/scripts/kafka.sh" start "$broker_dir")"

# metric PORT NAME: the sum of a metric's samples (0 when absent).
metric() {
  curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 {s += $2} END {printf "%d", s}'
}
# wait_for WHAT CONDITION: polls CONDITION every 100 ms, for at most 120 s.
wait_for() {
  local deadline=$(( $(date +%s) + 120 ))
  until eval "$2"; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out waiting for $1" >&2; exit 1; }
    sleep 0.1
  done
}
# start NAME SPEC: starts `freshet run`, waits for its port; sets $pid and $port.
start() {
  local log="$data/$1.log"
  "$bin" run --spec "$2" --data-dir "$data/$1" 2> "$log" &
  pid=$!
  pids+=("$pid")
  port=$(freshet_port "$log" "$pid")
}

results="$data/results.txt"
: > "$results"
for k in $(seq 1 "$repeat"); do
  topic="events-$k"
  bash "$here/scripts/kafka.sh" topic "$broker_dir" "$topic" 8 >/dev/null
  "$bin" generate --users "$users" --events "$events" --duration 24h --seed "$k" --disorder 2s \
    --kafka "$brokers" --topic "$topic" --no-progress 2>&1 | grep -v GETPID >&2 || true
  spec="$data/spec-$k.yaml"
  sed -e "s|^source: .*|source: {type: kafka, brokers: \"$brokers\", topic: $topic, group: bench-$k, session_timeout: $session}|" \
    "$here/examples/fraud/fraud.yaml" > "$spec"
  printf 'offline: {path: "%s"}\nserve: {port: 0}\nparallelism: 1\ncheckpoint: {interval: 1s, path: "%s"}\n' \
    "$data/offline-$k" "$data/checkpoints-$k" >> "$spec"
  start "a-$k" "$spec"; pid_a=$pid port_a=$port
  start "b-$k" "$spec"; port_b=$port
  wait_for "both processes to hold partitions" '[ "$(metric "$port_a" freshet_kafka_assigned_partitions)" -gt 0 ] &&
    [ "$(metric "$port_b" freshet_kafka_assigned_partitions)" -gt 0 ]'
  sleep 2  # A few checkpoints (every 1 s) of the partitions each holds.
  killed=$(date +%s.%N)
  kill -9 "$pid_a"
  wait_for "the survivor to hold all 8 partitions" '[ "$(metric "$port_b" freshet_kafka_assigned_partitions)" -eq 8 ]'
  assigned=$(date +%s.%N)
  restore=$(grep -o "restored in [0-9.]* s" "$data/b-$k.log" | tail -1)
  awk -v k="$k" -v s="$killed" -v a="$assigned" -v t="$session" -v r="$restore" \
    'BEGIN {printf "run %d: kill -9 to all partitions restored and assigned to the survivor %.2f s (session timeout %s; the last restore: %s)\n", k, a - s, t, r}' |
    tee -a "$results"
  grep "restored in" "$data/b-$k.log" | tail -1 >&2 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
done
sed 's/.*survivor \([0-9.]*\) s.*/\1/' "$results" | sort -n |
  awk '{a[NR]=$1} END {printf "median kill -9 to all partitions held by the survivor: %.2f s over %d runs\n", a[int((NR+1)/2)], NR}'

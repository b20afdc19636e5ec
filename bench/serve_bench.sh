#!/usr/bin/env bash
# Serving latency of `freshet run` over loopback with 1,000,000 entities loaded (see bench/README.md), measured
# open loop at fixed rates with bench/loadgen.cc: request k is due at k/rate, and its latency counts from then,
# even when it had to wait for a free connection (no coordinated omission, unlike a closed-loop wrk run).
#   bench/serve_bench.sh [--entities N] [--seconds S] [--warmup S] [--rate R] [--batch-rate R] [--repeat N]
#                        [--connections C] [--capacity-seconds S] [--loadgen-cpus LIST] [--server-cpus LIST]
#   --rate              single-entity lookups per second (default 20000: the target's rate)
#   --batch-rate        batches of 100 per second (default 1000, i.e. 100,000 entities/s: five times the
#                       entities of the single-lookup target, and an eighth to a fifth of the closed-loop
#                       batch capacity of this 2-core machine (4,500-8,200/s measured), so the p99 shows
#                       service time under a steady load rather than queueing at saturation)
#   --repeat            open-loop runs of each kind per server (default 1); the summary gives each run and the
#                       median p99 (the machine is shared: one run's tail may be another tenant's burst)
#   --connections       keep-alive connections (default 8, as an inference service's client pool might keep)
#   --capacity-seconds  length of one closed-loop wrk run per kind, for the capacity at saturation (default 5;
#                       0 skips it)
#   --loadgen-cpus, --server-cpus   taskset CPU lists (default: unpinned, client and server share both cores)
set -Eeuo pipefail
# Any failure says what failed and where (set -E: also inside functions and command substitutions), not just exit 1.
trap 'status=$?; echo "bench/serve_bench.sh: line $LINENO${FUNCNAME:+ (in ${FUNCNAME[0]})}: \`$BASH_COMMAND\` failed with status $status" >&2' ERR
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage="usage: bench/serve_bench.sh [--entities N] [--seconds S] [--warmup S] [--rate R] [--batch-rate R] [--repeat N] [--connections C] [--capacity-seconds S] [--loadgen-cpus LIST] [--server-cpus LIST]"
entities=1000000 seconds=15 warmup=3 rate=20000 batch_rate=1000 repeat=1 connections=8 capacity_seconds=5
loadgen_cpus="" server_cpus=""
while [ $# -gt 0 ]; do
  case "$1" in
    --entities) entities=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --batch-rate) batch_rate=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --capacity-seconds) capacity_seconds=$2; shift 2 ;;
    --loadgen-cpus) loadgen_cpus=$2; shift 2 ;;
    --server-cpus) server_cpus=$2; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
client_pin=() server_pin=()
[ -n "$loadgen_cpus" ] && client_pin=(taskset -c "$loadgen_cpus")
[ -n "$server_cpus" ] && server_pin=(taskset -c "$server_cpus")
source "$here/bench/release_build.sh"
release_build freshet loadgen
data="$here/bench/data/serve"
rm -rf "$data" && mkdir -p "$data"
# Every entity gets 3 events (a view, a purchase, a login) in the hour before noon, 2026-01-01 (UTC).
source "$here/bench/serve_workload.sh"
serve_workload "$entities" "$data/events.jsonl"
sed -e 's|source: {type: file, path: events.jsonl}|source: {type: file, path: events.jsonl}\nserve: {port: 0}\ncheckpoint: {interval: 1h}|' \
  "$here/examples/fraud/fraud.yaml" > "$data/spec.yaml"

# CPU time in clock ticks of the server process (all its threads), and of every other process except this
# script's shell (whose children's time, the load generator's included, is reported by loadgen itself): the
# second tells whether other work on the shared machine disturbed a measurement.
source "$here/bench/cpu_ticks.sh"
ticks_per_s=$(getconf CLK_TCK)
cpu_start() { t_wall=$(date +%s.%N); t_server=$(process_ticks "$pid"); t_other=$(other_ticks "$$" "$pid"); t_steal=$(steal_ticks); }
cpu_report() {
  local wall server other steal
  wall=$(awk -v a="$t_wall" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
  server=$(( $(process_ticks "$pid") - t_server )) other=$(( $(other_ticks "$$" "$pid") - t_other ))
  steal=$(( $(steal_ticks) - t_steal ))
  awk -v w="$wall" -v s="$server" -v o="$other" -v st="$steal" -v hz="$ticks_per_s" 'BEGIN {
    if (o < 0) o = 0;
    note = (o / hz / w > 0.1 || st / hz / w > 0.05) ? "DISTURBED: other work on the machine, repeat the measurement" : "quiet"
    printf "  cpu           server %.2f cores; other processes %.2f cores; host steal %.2f cores (%s)\n",
      s / hz / w, o / hz / w, st / hz / w, note }'
}

start_server() {
  "${server_pin[@]}" "$build/freshet" run --spec "$data/spec.yaml" --data-dir "$data/state" 2> "$data/run.log" &
  pid=$!
  for _ in $(seq 1 300); do grep -q serving "$data/run.log" && break; sleep 0.1; done
  url=$(grep -o 'http://[0-9.]*:[0-9]*' "$data/run.log" | head -n 1 || true)
  if [ -z "$url" ]; then
    echo "bench/serve_bench.sh: freshet run did not start serving within 30 s; its log, $data/run.log, ends:" >&2
    tail -n 20 "$data/run.log" >&2
    exit 1
  fi
  for _ in $(seq 1 600); do
    n=$(curl -s "$url/metrics" | awk '/^freshet_events_accepted_total/ {print $2}')
    [ "${n:-0}" -ge $((entities * 3)) ] && break
    sleep 0.5
  done
  sleep 1
  cpu_start; sleep 2
  echo "idle server (no requests, all events loaded):"; cpu_report
}

summary=() capacity=()
# run_loadgen LABEL LOG RATE BATCH: one open-loop run, its report, and a line for the summary.
run_loadgen() {
  local out="$data/loadgen.out"
  echo "== $1, $3 req/s, $connections connections, ${seconds}s after ${warmup}s of warmup (feature log $2)"
  cpu_start
  "${client_pin[@]}" "$build/loadgen" --url "$url" --rate "$3" --batch "$4" --entities "$entities" \
    --connections "$connections" --duration "$seconds" --warmup "$warmup" | tee "$out"
  cpu_report
  summary+=("$(awk -v what="$1" -v log_state="$2" '
    / rate / {answered = $5} / errors / {errors = $2}
    $1 == "p50" {p50 = $2} $1 == "p99" {p99 = $2} $1 == "p99.9" {p999 = $2} $1 == "max" {max = $2}
    END {printf "%-22s %-4s %10s %9s %9s %9s %9s %7s", what, log_state, answered, p50, p99, p999, max, errors}' "$out")")
}
# Closed loop at saturation (wrk, as many requests as the connections allow): the capacity, not the latency.
run_capacity() {
  [ "$capacity_seconds" = 0 ] && return
  echo "-- capacity, $2: wrk closed loop at saturation, $connections connections, ${capacity_seconds}s"
  ENTITIES=$entities BATCH=$1 "${client_pin[@]}" wrk -t2 -c"$connections" -d"${capacity_seconds}s" --latency \
    -s "$here/bench/lookup.lua" "$url" | grep -E "Requests/sec|^ +50%|^ +99%" | sed 's/^ */  /' | tee "$data/wrk.out"
  capacity+=("$(printf "%-22s %-4s %10s" "$2" "$3" "$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$data/wrk.out")")")
}
# The capacity runs come last: at saturation the feature log falls behind, and its backlog would still be
# draining during a measurement that followed.
measure() {
  local k
  for k in $(seq 1 "$repeat"); do
    run_loadgen "single-entity lookups" "$1" "$rate" 0
    run_loadgen "batches of 100" "$1" "$batch_rate" 100
  done
  run_capacity 0 "single-entity lookups" "$1"
  run_capacity 100 "batches of 100" "$1"
}

# Only a server this script started (`kill 0` would signal the whole process group, the caller included).
trap '[ -z "${pid:-}" ] || kill "$pid" 2>/dev/null || true' EXIT
start_server
echo "loaded: $(curl -s "$url/metrics" | grep -E '^freshet_state_entities') entities, RSS $(ps -o rss= -p $pid | awk '{printf "%d MB", $1/1024}')"
measure on
echo "feature log: $(curl -s "$url/metrics" | grep -E '^freshet_feature_log_(answers|shed)_total' | tr '\n' ' ')"
kill -TERM $pid; wait $pid || true
# The same state (restored from the checkpoint), with the feature log off: the cost of logging.
printf 'feature_log: {enabled: false}\n' >> "$data/spec.yaml"
start_server
measure off
kill -TERM $pid; wait $pid || true

echo
echo "== summary: latency from each request's scheduled time, ms (targets: single lookups p99 <= 1 ms at 20,000 req/s;"
echo "   batches of 100 p99 <= 5 ms); loadgen $([ -n "$loadgen_cpus" ] && echo "on CPUs $loadgen_cpus" || echo unpinned),"\
  "server $([ -n "$server_cpus" ] && echo "on CPUs $server_cpus" || echo unpinned)"
printf "%-22s %-4s %10s %9s %9s %9s %9s %7s\n" "what" "log" "answered/s" "p50" "p99" "p99.9" "max" "errors"
printf '%s\n' "${summary[@]}" | sort -s -k1,1
if [ "$repeat" -gt 1 ]; then
  echo "median p99 over $repeat runs, ms:"
  # The label is every field before the last six (answered/s, p50, p99, p99.9, max, errors).
  printf '%s\n' "${summary[@]}" | awk '{label = $1; for (i = 2; i <= NF - 6; i++) label = label " " $i; print label "\t" $(NF - 3)}' |
    sort -t$'\t' -k1,1 -k2,2g | awk -F'\t' '{v[$1, ++n[$1]] = $2} END {
      for (key in n) {c = n[key]; m = c % 2 ? v[key, (c + 1) / 2] : (v[key, c / 2] + v[key, c / 2 + 1]) / 2;
        printf "%-27s %.3f\n", key, m}}' | sort
fi
if [ ${#capacity[@]} -gt 0 ]; then
  echo "capacity at saturation (wrk closed loop, ${capacity_seconds}s; its latencies are not comparable):"
  printf "%-22s %-4s %10s\n" "what" "log" "req/s"
  printf '%s\n' "${capacity[@]}"
fi

#!/usr/bin/env bash
# The file source on several threads (issue 10): `freshet run --exit-at-end` over one generated file with
# `parallelism: 1` and `parallelism: 2`, alternating in one run (release build, examples/fraud/fraud.yaml).
#   bench/file_parallel_bench.sh [--events N] [--users N] [--repeat N] [--offline] [--rt] [--bin FRESHET]...
# A run's time is the process's wall time, start to exit (start-up and the final checkpoint included); the rate is
# lines / that time. Each run also prints its CPU time and the load average before it (the machine is shared). Offline tables are off unless --offline (then the events and features tables are written).
# Prints each run, the medians and their ratio. See bench/README.md. --bin: that binary instead of a release build
# (bench/release_build.sh, which runs scripts/setup.sh first); several --bin: each round runs every binary with
# parallelism 1 then 2 (an A/B on the same machine), medians per binary. --rt: each run at real-time priority
# (`chrt -f 1`, needs root), so that other processes on a shared machine do not take its cores; their cache and
# memory traffic still slow it (compare CPU seconds too).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
events=2000000 users=200000 repeat=5 offline=false bins=() prio=()
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --users) users=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --offline) offline=true; shift ;;
    --rt) prio=(chrt -f 1); shift ;;
    --bin) bins+=("$(realpath "$2")"); shift 2 ;;
    *) echo "usage: bench/file_parallel_bench.sh [--events N] [--users N] [--repeat N] [--offline] [--rt] [--bin F]..." >&2
       exit 2 ;;
  esac
done

source "$here/bench/release_build.sh"
if [ ${#bins[@]} -eq 0 ]; then
  bin=
  release_freshet_unless_given
  bins=("$bin")
fi
data="$here/bench/data/file_parallel"
rm -rf "$data"
mkdir -p "$data"
ev="$data/events.jsonl"
echo "generating $events events for $users users" >&2
"${bins[0]}" generate --users "$users" --events "$events" --duration 24h --seed 42 --disorder 2s --output "$ev"
lines=$(wc -l < "$ev")

for p in 1 2; do
  sed -e "s|^source: .*|source: {type: file, path: $ev}|" "$here/examples/fraud/fraud.yaml" > "$data/p$p.yaml"
  printf 'offline: {enabled: %s}\nserve: {port: 0}\nparallelism: %s\n' "$offline" "$p" >> "$data/p$p.yaml"
done

results="$data/results.txt"
: > "$results"
for k in $(seq 1 "$repeat"); do
  for ((b = 0; b < ${#bins[@]}; b++)); do
    bin="${bins[b]}"
    for p in 1 2; do
      dir="$data/run-b$b-p$p-$k"
      /usr/bin/time -f "%e %U %S" -o "$dir.time" "${prio[@]}" "$bin" run --spec "$data/p$p.yaml" --data-dir "$dir" \
        --exit-at-end 2> "$dir.log" || { cat "$dir.log" >&2; exit 1; }
      rm -rf "$dir"
      # The CPU time (user + system) shows what the threads cost besides what they gain.
      awk -v l="b$b p$p" -v k="$k" -v n="$lines" -v load="$(cut -d' ' -f1 /proc/loadavg)" -v bin="$bin" \
        '{printf "%s run %d: %d lines in %.2f s, %.2f s CPU, load %s = %.3f M events/s (%s)\n", l, k, n, $1, $2 + $3,
          load, n / $1 / 1e6, bin}' "$dir.time" | tee -a "$results"
    done
  done
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for ((b = 0; b < ${#bins[@]}; b++)); do
  for p in 1 2; do
    rate=$(grep "^b$b p$p " "$results" | sed 's/.*= \([0-9.]*\) M events.*/\1/' | median)
    cpu=$(grep "^b$b p$p " "$results" | sed 's/.* s, \([0-9.]*\) s CPU.*/\1/' | median)
    echo "b$b parallelism $p: median $rate M events/s, median $cpu CPU s over $repeat runs (${bins[b]})"
  done
done | tee "$data/medians.txt"
# Also the median of each round's own ratio (its p2 run right after its p1 run): on a loaded machine the load
# changes less within a round than across rounds.
for ((b = 0; b < ${#bins[@]}; b++)); do
  grep "^b$b " "$data/medians.txt" | awk -v b="$b" '{m[NR]=$5} END {printf "b%s speed-up of parallelism 2 over 1: %.2fx", b, m[2] / m[1]}'
  grep "^b$b " "$results" | sed 's/.*= \([0-9.]*\) M events.*/\1/' | paste - - | awk '{print $2 / $1}' | median |
    awk '{printf " (median of the rounds'"'"' own ratios: %.2fx)\n", $1}'
done

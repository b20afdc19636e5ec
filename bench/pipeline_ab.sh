#!/usr/bin/env bash
# Throughput of two pipeline_bench binaries, alternating, in one session: the before/after comparison of a change
# to the engine's hot path on a shared machine, where only runs interleaved in time compare (see bench/README.md).
#   bench/pipeline_ab.sh [--rounds N] [--repeat N] [--cpu C] [--modes "core json"] [--events FILE] BEFORE_BIN AFTER_BIN
# BEFORE_BIN and AFTER_BIN are pipeline_bench binaries (release builds; build one of an older commit in a git
# worktree). Each round runs, per mode, BEFORE then AFTER (the order alternates from round to round), each
# `pipeline_bench --spec examples/fraud/fraud.yaml --events FILE --mode M --repeat N` pinned to core C under
# /usr/bin/time. A binary from before the spec's `schema:` section gets the spec without it (same features;
# it then checks no field types, which is the cost the schema added). Default events: the bench/run.sh workload.
# Prints one line per process (medians of its repeats: wall-clock rate, rate per CPU second of the engine thread,
# the process's user+sys seconds, peak RSS) and, per mode, the medians over rounds and after/before.
set -Eeuo pipefail
trap 'status=$?; echo "bench/pipeline_ab.sh: line $LINENO: \`$BASH_COMMAND\` failed with status $status" >&2' ERR
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage='usage: bench/pipeline_ab.sh [--rounds N] [--repeat N] [--cpu C] [--modes "core json"] [--events FILE] BEFORE_BIN AFTER_BIN'
rounds=3 repeat=3 cpu=0 modes="core json" events="$here/bench/data/events_10000000_1000000.jsonl"
while [ $# -gt 2 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --cpu) cpu=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    --events) events=$2; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
[ $# -eq 2 ] || { echo "$usage" >&2; exit 2; }
[ -f "$events" ] || { echo "bench/pipeline_ab.sh: no events file $events; bench/run.sh generates it (or pass --events)" >&2; exit 2; }
bins=("$(realpath "$1")" "$(realpath "$2")")
labels=(before after)
out="$here/bench/data/pipeline_ab"
mkdir -p "$out"

# The spec each binary reads: the example, or the example without `schema:` for a binary that refuses the key.
spec_full="$here/examples/fraud/fraud.yaml"
spec_bare="$out/fraud_no_schema.yaml"
awk '/^schema:/ {skip = 1; next} skip && /^  / {next} {skip = 0; print}' "$spec_full" > "$spec_bare"
specs=()
for bin in "${bins[@]}"; do
  if "$bin" --spec "$spec_full" --events /dev/null --mode json --repeat 1 > /dev/null 2>&1; then
    specs+=("$spec_full")
  else
    specs+=("$spec_bare")
  fi
done

results="$out/results.tsv"
: > "$results"
# measure LABEL BIN SPEC MODE: one process; appends label, mode, wall M/s, CPU M/s, user+sys s, peak RSS MB.
measure() {
  local label=$1 bin=$2 spec=$3 mode=$4 log="$out/$1-$4.log"
  taskset -c "$cpu" /usr/bin/time -f "time %U %S %M" "$bin" --spec "$spec" --events "$events" --mode "$mode" \
    --repeat "$repeat" > "$log" 2>&1
  awk -v l="$label" -v m="$mode" '
    / run [0-9]+:/ { w = $0; sub(/.* = /, "", w); sub(/ M events.*/, "", w); c = $0; sub(/.*\(/, "", c)
                     sub(/ per CPU.*/, "", c); wall[++n] = w; cpu[n] = c }
    /^time / { cpus = $2 + $3; rss = $4 / 1024 }
    function median(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    END { printf "%s\t%s\t%.2f\t%.2f\t%.1f\t%.0f\n", l, m, median(wall, n), median(cpu, n), cpus, rss }' "$log" |
    tee -a "$results"
}

printf "binary\tmode\tM ev/s\tM ev/s per CPU s\tuser+sys s\tpeak RSS MB  (before=%s with %s, after=%s with %s; %s)\n" \
  "${bins[0]}" "$(basename "${specs[0]}")" "${bins[1]}" "$(basename "${specs[1]}")" "$(date -u '+%F %T UTC')"
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then order=(0 1); else order=(1 0); fi
  for mode in $modes; do
    for i in "${order[@]}"; do measure "${labels[$i]}" "${bins[$i]}" "${specs[$i]}" "$mode"; done
  done
  echo "  (round $r done; load average $(cut -d' ' -f1-3 /proc/loadavg))"
done
echo "medians over $rounds rounds:"
for mode in $modes; do
  awk -F'\t' -v m="$mode" '$2==m { k = $1; w[k, ++n[k]] = $3; c[k, n[k]] = $4; r[k, n[k]] = $6 }
    function median(a, k, n,   i, j, t, v) { for (i = 1; i <= n; i++) v[i] = a[k, i]
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
      return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }
    END { wb = median(w, "before", n["before"]); wa = median(w, "after", n["after"])
          cb = median(c, "before", n["before"]); ca = median(c, "after", n["after"])
          printf "  %-5s before %.2f M ev/s (%.2f per CPU s, %.0f MB)  after %.2f M ev/s (%.2f per CPU s, %.0f MB)  after/before %.3f (per CPU s %.3f)\n",
            m, wb, cb, median(r, "before", n["before"]), wa, ca, median(r, "after", n["after"]), wa / wb, ca / cb }' "$results"
done

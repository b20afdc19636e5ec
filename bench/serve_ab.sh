#!/usr/bin/env bash
# Serving latency of two freshet binaries, alternating, in one session: the before/after comparison of a change
# to the serving path on a shared machine, where only runs interleaved in time compare (see bench/README.md).
#   bench/serve_ab.sh [--rounds N] [--seconds S] [--entities N] BEFORE_BIN AFTER_BIN
# Each round runs BEFORE then AFTER (the order alternates from round to round): each loads the serve_bench
# workload (3 events for each of --entities users) into `freshet run` with the feature log on (the default),
# then bench/loadgen measures, open loop, single lookups at 20,000/s and batches of 100 at 1,000/s, --seconds
# each after 3 s of warmup. Prints one line per measurement and the medians per binary.
set -Eeuo pipefail
trap 'status=$?; echo "bench/serve_ab.sh: line $LINENO: \`$BASH_COMMAND\` failed with status $status" >&2' ERR
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage="usage: bench/serve_ab.sh [--rounds N] [--seconds S] [--entities N] BEFORE_BIN AFTER_BIN"
rounds=4 seconds=15 entities=1000000
while [ $# -gt 2 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --entities) entities=$2; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
[ $# -eq 2 ] || { echo "$usage" >&2; exit 2; }
bins=("$(realpath "$1")" "$(realpath "$2")")
labels=(before after)
source "$here/bench/release_build.sh"
release_build loadgen
data="$here/bench/data/serve_ab"
rm -rf "$data" && mkdir -p "$data"
source "$here/bench/serve_workload.sh"
serve_workload "$entities" "$data/events.jsonl"

pid=""
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true' EXIT
results="$data/results.tsv"
: > "$results"
# measure LABEL BIN: one load and the two open-loop measurements.
measure() {
  local label=$1 bin=$2 run="$data/run-$1" url n
  rm -rf "$run" && mkdir -p "$run"
  # Without its `schema:` section, which binaries before it do not know (the features are the same).
  awk '/^schema:/ {skip = 1; next} skip && /^  / {next} {skip = 0; print}' "$here/examples/fraud/fraud.yaml" |
    sed -e 's|source: {type: file, path: events.jsonl}|source: {type: file, path: ../events.jsonl}\nserve: {port: 0}\ncheckpoint: {interval: 1h}|' \
    > "$run/spec.yaml"
  "$bin" run --spec "$run/spec.yaml" --data-dir "$run/state" 2> "$run/run.log" &
  pid=$!
  for _ in $(seq 1 300); do grep -q serving "$run/run.log" && break; sleep 0.1; done
  url=$(grep -o 'http://[0-9.]*:[0-9]*' "$run/run.log" | head -n 1 || true)
  [ -n "$url" ] || { echo "bench/serve_ab.sh: $bin did not start serving; see $run/run.log" >&2; exit 1; }
  for _ in $(seq 1 1200); do
    n=$(curl -s "$url/metrics" | awk '/^freshet_events_accepted_total/ {print $2}')
    [ "${n:-0}" -ge $((entities * 3)) ] && break
    sleep 0.5
  done
  for kind in "single 20000 0" "batch100 1000 100"; do
    set -- $kind
    "$build/loadgen" --url "$url" --rate "$2" --batch "$3" --entities "$entities" --connections 8 \
      --duration "$seconds" --warmup 3 > "$run/loadgen-$1.out"
    awk -v l="$label" -v k="$1" '$1=="p50"{p50=$2} $1=="p99"{p99=$2} $1=="p99.9"{p999=$2} / rate /{ans=$5}
      / errors /{err=$2} END{printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l, k, ans, p50, p99, p999, err}' \
      "$run/loadgen-$1.out" | tee -a "$results"
  done
  kill -TERM "$pid"; wait "$pid" || true; pid=""
}

printf "binary\tkind\tanswered/s\tp50\tp99\tp99.9\terrors (ms; before=%s, after=%s)\n" "${bins[0]}" "${bins[1]}"
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then order=(0 1); else order=(1 0); fi
  for i in "${order[@]}"; do measure "${labels[$i]}" "${bins[$i]}"; done
done
echo "medians over $rounds rounds (ms):"
for label in before after; do
  for kind in single batch100; do
    awk -F'\t' -v l="$label" -v k="$kind" '$1==l && $2==k {p50[++n]=$4; p99[n]=$5; p999[n]=$6}
      function median(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
      END { printf "  %-6s %-8s p50 %.3f  p99 %.3f  p99.9 %.3f\n", l, k, median(p50, n), median(p99, n), median(p999, n) }' "$results"
  done
done

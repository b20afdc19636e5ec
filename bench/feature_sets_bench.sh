#!/usr/bin/env bash
# The cost of a second feature set over the same events: `freshet run --exit-at-end` over one generated file with
# examples/fraud/fraud.yaml alone, then with fraud.yaml + merchants.yaml, alternating, REPEAT times each; prints
# each run's wall, user and system seconds and peak RSS, then the medians of CPU seconds (user + system: the
# machine may be shared, where wall time lies) and their ratio.
#   bash bench/feature_sets_bench.sh [--bin build/freshet] [--events 1000000] [--users 100000] [--repeat 3]
set -euo pipefail
BIN=build/freshet EVENTS=1000000 USERS=100000 REPEAT=3
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=$2; shift 2 ;;
    --events) EVENTS=$2; shift 2 ;;
    --users) USERS=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    *) echo "unknown option $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
BIN=$(realpath "$BIN")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp examples/fraud/fraud.yaml examples/fraud/merchants.yaml "$WORK/"
"$BIN" generate --users "$USERS" --events "$EVENTS" --merchants 500 --output "$WORK/events.jsonl" 2>/dev/null
cd "$WORK"
for k in $(seq "$REPEAT"); do
  for mode in one two; do
    rm -rf "data-$mode"
    specs=(--spec fraud.yaml)
    [ "$mode" = two ] && specs+=(--spec merchants.yaml)
    /usr/bin/time -f "$mode %e %U %S %M" -o "time-$mode-$k" "$BIN" run "${specs[@]}" --data-dir "data-$mode" \
      --exit-at-end --port 0 >/dev/null 2>&1
    read -r m wall user sys rss < "time-$mode-$k"
    echo "$mode: wall ${wall}s user ${user}s sys ${sys}s peak RSS $((rss / 1024)) MB"
  done
done
python3 - "$REPEAT" <<'PY'
import statistics, sys
cpu = {m: [sum(map(float, open(f"time-{m}-{k}").read().split()[2:4])) for k in range(1, int(sys.argv[1]) + 1)]
       for m in ("one", "two")}
one, two = statistics.median(cpu["one"]), statistics.median(cpu["two"])
print(f"median CPU s: fraud alone {one:.2f}, fraud + merchants {two:.2f}, ratio {two / one:.2f}")
PY

#!/usr/bin/env bash
# The join's cost in instructions per event, which the machine's noise does not move (but which is blind to
# memory stalls, the other half of a join's cost): valgrind's callgrind counts the instructions of `freshet
# historical` over the first N events of bench/join_bench.sh's data, plain spec and joined spec (with a profile
# table of just those events' users), each minus the same run over 1 event, so that the start-up and the table
# load cancel. Run bench/join_bench.sh once first (it makes the data). Slow: about a minute per binary.
#
#   bench/join_instructions.sh [--events N] [--bin FRESHET]...
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
events=200000 bins=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --events) events="$2"; shift 2 ;;
    --bin) bins+=("$2"); shift 2 ;;
    *) echo "unknown option $1; see the comment at the top of $0" >&2; exit 2 ;;
  esac
done
[[ ${#bins[@]} -gt 0 ]] || bins=("$here/build-release/freshet")
command -v valgrind > /dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
data="$here/bench/data/join"
[[ -f "$data/events_2000000.jsonl" && -f "$data/profiles_1000000.jsonl" && -f "$data/joined.yaml" ]] ||
  { echo "no data in $data: run bench/join_bench.sh once first" >&2; exit 1; }
ev="$data/ins_events_$events.jsonl" one="$data/ins_events_1.jsonl" prof="$data/ins_profiles_$events.jsonl"
head -n "$events" "$data/events_2000000.jsonl" > "$ev"
head -n 1 "$ev" > "$one"
python3 - "$ev" "$data/profiles_1000000.jsonl" "$prof" <<'PY'
import json, sys
users = {json.loads(line)["user_id"] for line in open(sys.argv[1])}
with open(sys.argv[3], "w") as out:
    for line in open(sys.argv[2]):
        if json.loads(line)["user_id"] in users:
            out.write(line)
PY
count() {  # instructions of one run
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" > /dev/null 2> "$data/ins_err" ||
    { cat "$data/ins_err" >&2; exit 1; }
  sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$data/ins_err"
}
for bin in "${bins[@]}"; do
  common=(historical --no-progress --entities "$data/entities.csv" --output "$data/ins_out.parquet")
  p1=$(count "$bin" "${common[@]}" --spec "$data/plain.yaml" --events "$one")
  pn=$(count "$bin" "${common[@]}" --spec "$data/plain.yaml" --events "$ev")
  j1=$(count "$bin" "${common[@]}" --spec "$data/joined.yaml" --events "$one" --table "profiles=$prof")
  jn=$(count "$bin" "${common[@]}" --spec "$data/joined.yaml" --events "$ev" --table "profiles=$prof")
  awk -v b="$bin" -v n="$events" -v p1="$p1" -v pn="$pn" -v j1="$j1" -v jn="$jn" 'BEGIN {
    p = (pn - p1) / (n - 1); j = (jn - j1) / (n - 1)
    printf "%s: instructions per event plain %.0f, joined %.0f: join + derive %+.0f (%+.1f%%)\n", b, p, j, j - p, 100 * (j - p) / p }'
done

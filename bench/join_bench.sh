#!/usr/bin/env bash
# The cost of a joined reference table (issue 12): the fraud spec against the same spec plus a 1M-key profile
# table and two derived fields reading it, through `freshet historical --events E [--table profiles=P]` (parse,
# join, derive, lateness, state). Runs alternate: plain, joined. Each prints the CPU seconds (user + system) the
# events took, as historical reports them (from the first event on: the table is loaded before it), the table
# load's CPU seconds, and the whole process's; then the medians and the per-event cost of the join and the derived
# fields: events(joined) / events(plain) - 1. CPU seconds, because wall time on the shared machine lies; the
# events' own figure, because the one-off load varies far more than the events do (on this VM a fresh page's
# first touch is sometimes slow) and would drown them in a subtraction.
#
#   bench/join_bench.sh [--events N] [--keys N] [--repeat N] [--settle SECONDS] [--bin FRESHET]...
# --settle: a pause before each run (a run right after a large one varied by up to 1.6x on this VM).
# Several --bin: each round runs every binary in turn (an A/B on the same loaded machine); medians per binary.
# --path run: the same specs through the pipeline instead, `freshet run --exit-at-end` with the events file as its
# source (and the profile file as the table's file source in the joined spec), parallelism 1, the defaults
# otherwise (embedded online store, offline store in the data directory, checkpoints). The events' CPU seconds are
# the whole run's (user + system, the forked checkpoint encoders included) minus those of the same run over the
# first event only: the one-off work (the table's load, its history written to the offline store, the last
# checkpoint) cancels, and what a checkpoint costs more for holding the table stays in, once per checkpoint the
# events' offline rows trigger.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
events=2000000 keys=1000000 repeat=3 settle=0 path=historical bins=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --events) events="$2"; shift 2 ;;
    --keys) keys="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    --settle) settle="$2"; shift 2 ;;
    --bin) bins+=("$2"); shift 2 ;;
    --path) path="$2"; shift 2 ;;
    *) echo "unknown option $1; see the comment at the top of $0" >&2; exit 2 ;;
  esac
done
[[ ${#bins[@]} -gt 0 ]] || bins=("$here/build/freshet")
source_events="$here/bench/data/events_10000000_1000000.jsonl"
if [[ ! -s "$source_events" ]]; then  # The bench workload (bench/workload.sh's generate_workload, defaults).
  source "$here/bench/workload.sh"; build="$(dirname "${bins[0]}")" events_wanted=$events
  events=10000000 users=1000000 rows=1000000 generate_workload; events=$events_wanted
fi
data="$here/bench/data/join"
mkdir -p "$data"
ev="$data/events_$events.jsonl" one="$data/events_1.jsonl" prof="$data/profiles_$keys.jsonl"
[[ -f "$ev" ]] || head -n "$events" "$source_events" > "$ev"
head -n 1 "$ev" > "$one"
[[ -f "$data/entities.csv" ]] || head -n 1001 "$here/bench/data/entities_1000000_1000000.csv" > "$data/entities.csv"
if [[ ! -f "$prof" ]]; then
  python3 - "$keys" "$prof" <<'PY'
import json, random, sys
keys, path = int(sys.argv[1]), sys.argv[2]
rng = random.Random(12)
t0 = 1767225600000
with open(path, "w") as out:
    for k in range(keys):
        out.write(json.dumps({"user_id": f"u{k}", "updated_at": t0 - rng.randrange(1, 10**6) * 60000,
                              "segment": rng.choice(["vip", "regular", "new", "dormant"]),
                              "created_ms": t0 - rng.randrange(1, 2000) * 86400000}) + "\n")
PY
fi
plain="$data/plain.yaml" joined="$data/joined.yaml"
sed '/^source:/d' "$here/examples/fraud/fraud.yaml" > "$plain"
{ cat "$plain"; cat <<'Y'
tables:
  - {name: profiles, key: user_id, valid_from: updated_at}
joins:
  - {table: profiles, on: user_id}
derive:
  - {name: account_age_d, expr: "(ts - profiles.created_ms) / 86400000"}
  - {name: is_vip, expr: "profiles.segment == 'vip'"}
Y
} > "$joined"
run() {  # prints "EVENTS_CPU TABLES_CPU PROCESS_CPU" of one historical run of binary $bin
  sleep "$settle"
  /usr/bin/time -f '%U %S' -o "$data/time" "$bin" historical --no-progress --spec "$@" --entities "$data/entities.csv" \
    --output "$data/out.parquet" > /dev/null 2> "$data/err" || { cat "$data/err" >&2; echo "freshet historical failed: $bin $*" >&2; exit 1; }
  local events tables
  events=$(sed -n 's/.*the events took \([0-9.]*\) CPU s.*/\1/p' "$data/err")
  tables=$(sed -n 's/.*the reference tables \([0-9.]*\) CPU s.*/\1/p' "$data/err")
  [[ -n "$events" ]] || { cat "$data/err" >&2; echo "no event CPU figure in the output of $bin (older than this script?)" >&2; exit 1; }
  awk -v e="$events" -v t="${tables:-0}" '{printf "%.2f %.2f %.2f\n", e, t, $1 + $2}' "$data/time"
}
# Prints "CPU_SECONDS" of one `freshet run --exit-at-end` of binary $bin over spec $1 (plain or joined, its table's
# source then the profile file) with events file $2 as its source.
run_stream() {
  sleep "$settle"
  local spec="$data/stream.yaml" dir="$data/stream-data"
  { sed "s|valid_from: updated_at}|valid_from: updated_at, source: {type: file, path: $prof}}|" "$1"
    echo "source: {type: file, path: $2}"; echo "parallelism: 1"; } > "$spec"
  rm -rf "$dir"
  /usr/bin/time -f '%U %S' -o "$data/time" "$bin" run --spec "$spec" --data-dir "$dir" --port 0 --exit-at-end \
    > /dev/null 2> "$data/err" || { cat "$data/err" >&2; echo "freshet run failed: $bin $spec" >&2; exit 1; }
  awk '{printf "%.2f\n", $1 + $2}' "$data/time"
}
declare -A P J L PW JW R
for ((b = 0; b < ${#bins[@]}; b++)); do P[$b]="" J[$b]="" L[$b]="" PW[$b]="" JW[$b]="" R[$b]=""; done
for ((r = 0; r < repeat; r++)); do
  for ((b = 0; b < ${#bins[@]}; b++)); do
    bin="${bins[b]}"
    if [[ "$path" == run ]]; then
      p1=$(run_stream "$plain" "$one") pw=$(run_stream "$plain" "$ev") j1=$(run_stream "$joined" "$one")
      jw=$(run_stream "$joined" "$ev")
      p=$(awk -v a="$pw" -v b="$p1" 'BEGIN {printf "%.2f", a - b}') j=$(awk -v a="$jw" -v b="$j1" 'BEGIN {printf "%.2f", a - b}')
      l=$(awk -v a="$j1" -v b="$p1" 'BEGIN {printf "%.2f", a - b}')
    else
      read -r p _ pw < <(run "$plain" --events "$ev")
      read -r j l jw < <(run "$joined" --events "$ev" --table "profiles=$prof")
    fi
    P[$b]+="$p " J[$b]+="$j " L[$b]+="$l " PW[$b]+="$pw " JW[$b]+="$jw " R[$b]+="$(awk -v p="$p" -v j="$j" 'BEGIN {print j / p}') "
    echo "round $((r + 1)) $bin: events plain $p s, joined $j s; table load $l s; whole runs $pw s, $jw s (load average $(cut -d' ' -f1 /proc/loadavg))"
  done
done
median() { printf '%s\n' $@ | sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
for ((b = 0; b < ${#bins[@]}; b++)); do
  p=$(median ${P[$b]}) j=$(median ${J[$b]}) l=$(median ${L[$b]}) pw=$(median ${PW[$b]}) jw=$(median ${JW[$b]})
  r=$(median ${R[$b]})
  awk -v bin="${bins[b]}" -v p="$p" -v j="$j" -v l="$l" -v pw="$pw" -v jw="$jw" -v r="$r" 'BEGIN {
    printf "%s medians: events plain %.2f, joined %.2f CPU s: join + derive per event %+.0f%% of plain (median of the per-round ratios %+.0f%%); table load %.2f CPU s; whole runs %.2f, %.2f CPU s\n",
           bin, p, j, 100 * (j - p) / p, 100 * (r - 1), l, pw, jw }'
done

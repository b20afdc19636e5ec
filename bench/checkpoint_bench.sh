#!/usr/bin/env bash
# Checkpoint cost with many entities (issue 10): `freshet run` reads a generated file of N events (default 3M) whose
# user ids are then rewritten to U distinct ones in turn (default 1M; the generator's skewed activity alone gives
# far fewer distinct users than --users), so that U entities hold state (examples/fraud/fraud.yaml, offline tables off, checkpoints every 2 s) with
# `parallelism: 1` and `parallelism: 2`; once every event is read, it waits for two more checkpoints and prints
# the last one's figures from /metrics: entities held, checkpoint size, each shard's state bytes, the time
# processing stopped for it (freshet_checkpoint_pause_seconds: the settle on the shards' threads and the fork of the
# process whose copy encodes the state) and the mean duration of the checkpoints taken after the input was read
# (take, encode and write; the encoding in the forked child, the write on a background thread).
# It also prints how long reading the file took from the start (checkpoints every 2 s meanwhile): what pauses and the
# forked child's copied pages cost the processing.
#   bench/checkpoint_bench.sh [--events N] [--users N] [--repeat N] [--bin FRESHET]...
# Several --bin: each repeat runs them in turn on the same file (a before/after under the same load).
# See bench/README.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
events=3000000 users=1000000 repeat=2 bin= bins=()
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --users) users=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --bin) bins+=("$(realpath "$2")"); shift 2 ;;
    *) echo "usage: bench/checkpoint_bench.sh [--events N] [--users N] [--repeat N] [--bin F]" >&2; exit 2 ;;
  esac
done
source "$here/bench/release_build.sh"
[ ${#bins[@]} -gt 0 ] && bin=${bins[0]}
release_freshet_unless_given
[ ${#bins[@]} -gt 0 ] || bins=("$bin")
data="$here/bench/data/checkpoint"
rm -rf "$data"
mkdir -p "$data"
ev="$data/events.jsonl"
echo "generating $events events for $users users" >&2
"$bin" generate --users "$users" --events "$events" --duration 24h --seed 42 --disorder 2s --output "$ev.gen" 2>/dev/null
python3 - "$users" "$ev.gen" "$ev" <<'PY'
import re, sys
users, source, target = int(sys.argv[1]), sys.argv[2], sys.argv[3]
pattern = re.compile(rb'"user_id":"[^"]*"')
with open(source, "rb") as f, open(target, "wb") as out:
    for n, line in enumerate(f):
        out.write(pattern.sub(b'"user_id":"u%d"' % (n % users), line, count=1))
PY
rm "$ev.gen"
lines=$(wc -l < "$ev")

metric() {  # metric PORT NAME: the sum of the samples of NAME (all labels)
  curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%.6f", s}'
}
for k in $(seq 1 "$repeat"); do
  for bin in "${bins[@]}"; do
    for p in 1 2; do
      spec="$data/p$p.yaml" dir="$data/run-p$p-$k"
      sed -e "s|^source: .*|source: {type: file, path: $ev, follow: true}|" "$here/examples/fraud/fraud.yaml" > "$spec"
      printf 'offline: {enabled: false}\nserve: {port: 0}\nparallelism: %s\ncheckpoint: {interval: 2s}\n' "$p" >> "$spec"
      started=$(date +%s.%N)
      "$bin" run --spec "$spec" --data-dir "$dir" 2> "$dir.log" &
      pid=$!
      port=$(freshet_port "$dir.log" "$pid")
      while [ "$(metric "$port" freshet_events_in_total | cut -d. -f1)" != "$lines" ]; do sleep 0.2; done
      read_s=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
      c0=$(metric "$port" freshet_checkpoints_total | cut -d. -f1)
      s0=$(metric "$port" freshet_checkpoint_duration_seconds_sum)
      while [ "$(metric "$port" freshet_checkpoints_total | cut -d. -f1)" -lt $((c0 + 2)) ]; do sleep 0.2; done
      c1=$(metric "$port" freshet_checkpoints_total | cut -d. -f1)
      s1=$(metric "$port" freshet_checkpoint_duration_seconds_sum)
      shards=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^freshet_checkpoint_shard_bytes/ {printf "%s=%.1f MB ", $1, $2 / 1e6}')
      awk -v p="$p" -v k="$k" -v e="$(metric "$port" freshet_state_entities)" \
        -v size="$(metric "$port" freshet_checkpoint_size_bytes)" -v pause="$(metric "$port" freshet_checkpoint_pause_seconds)" \
        -v mean="$(awk -v a="$s0" -v b="$s1" -v n=$((c1 - c0)) 'BEGIN {printf "%.3f", (b - a) / n}')" \
        -v shards="$shards" -v read_s="$read_s" -v load="$(cut -d' ' -f1 /proc/loadavg)" -v who="$([ ${#bins[@]} -gt 1 ] && echo "$bin: ")" \
        'BEGIN {printf "%sp%s run %d: %d entities, checkpoint %.1f MB, processing paused %.3f s, mean checkpoint %.3f s; %sread in %s s; load %s\n",
                who, p, k, e, size / 1e6, pause, mean, shards, read_s, load}' | tee -a "$data/results.txt"
      kill "$pid"; wait "$pid" || true
      rm -rf "$dir"
    done
  done
done

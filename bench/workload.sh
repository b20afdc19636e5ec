# Sourced by bench/run.sh and bench/offline.sh: their common arguments, the generated fraud workload, and
# timed repetitions.

# parse_workload_args SCRIPT DEFAULT_REPEAT ARGS...: sets events, users, rows and repeat.
parse_workload_args() {
  local script=$1
  events=10000000 users=1000000 rows=1000000 repeat=$2
  shift 2
  while [ $# -gt 0 ]; do
    case "$1" in
      --events) events=$2; shift 2 ;;
      --users) users=$2; shift 2 ;;
      --rows) rows=$2; shift 2 ;;
      --repeat) repeat=$2; shift 2 ;;
      *) echo "usage: $script [--events N] [--users N] [--rows N] [--repeat N]" >&2; exit 2 ;;
    esac
  done
}

# generate_workload: sets data, ev (the events file) and ent (the entity rows), generating them once with the
# release build's `freshet generate` (deterministic: seed 42, 24 h of event time, 2 s of disorder).
generate_workload() {
  data="$here/bench/data"
  mkdir -p "$data"
  ev="$data/events_${events}_${users}.jsonl"
  ent="$data/entities_${rows}_${users}.csv"
  if [ ! -s "$ev" ] || [ ! -s "$ent" ]; then
    echo "generating $events events for $users users over 24h and $rows entity rows" >&2
    /usr/bin/time -f "generate: %e s, peak RSS %M KB" "$build/freshet" generate --users "$users" --events "$events" \
      --duration 24h --seed 42 --disorder 2s --output "$ev" --entities "$ent" --entity-rows "$rows"
  fi
}

# timed_runs [--quiet] LABEL COMMAND...: runs COMMAND $repeat times on core 0, printing each run's time and peak
# resident memory, then the median time. --quiet drops the command's stderr.
timed_runs() {
  local quiet=0
  if [ "$1" = --quiet ]; then quiet=1; shift; fi
  local label=$1
  shift
  local times=() k secs rss
  for k in $(seq 1 "$repeat"); do
    if [ "$quiet" = 1 ]; then
      /usr/bin/time -f "%e %M" -o "$data/time.txt" taskset -c 0 "$@" 2>/dev/null
    else
      /usr/bin/time -f "%e %M" -o "$data/time.txt" taskset -c 0 "$@"
    fi
    read -r secs rss < "$data/time.txt"
    echo "$label run $k: $secs s, peak RSS $((rss / 1024)) MB"
    times+=("$secs")
  done
  printf '%s\n' "${times[@]}" | sort -n |
    awk -v what="$label" '{a[NR]=$1} END {printf "%s: median %.2f s over %d runs\n", what, a[int((NR+1)/2)], NR}'
}

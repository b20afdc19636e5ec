#!/usr/bin/env bash
# Alternating A/B rounds of pipeline_bench over one events file, for figures of the form "this spec (or binary)
# against that one, in the same session": each round runs every configuration once, in order, core mode
# (--repeat 3, median printed by pipeline_bench) then json mode under /usr/bin/time for the peak RSS, pinned to
# core 0 like bench/run.sh. The machine is shared: compare medians over rounds, never single runs.
#
#   bench/compare_specs.sh EVENTS ROUNDS LABEL=BINARY:SPEC [LABEL=BINARY:SPEC ...]
#
# Prints one line per run, prefixed by the round and the label; bench/README.md explains how the figures in it
# were taken with this.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 EVENTS ROUNDS LABEL=BINARY:SPEC [LABEL=BINARY:SPEC ...]" >&2
  exit 2
fi
events=$1
rounds=$2
shift 2
for round in $(seq 1 "$rounds"); do
  for config in "$@"; do
    label=${config%%=*}
    rest=${config#*=}
    binary=${rest%%:*}
    spec=${rest#*:}
    taskset -c 0 "$binary" --spec "$spec" --events "$events" --mode core --repeat 3 2>&1 |
      grep -E '^core' | sed "s/^/round $round $label: /"
    taskset -c 0 /usr/bin/time -f "json peak RSS %M KB" "$binary" --spec "$spec" --events "$events" --mode json \
      --repeat 1 2>&1 | grep -E '^json' | sed "s/^/round $round $label: /"
  done
done

#!/usr/bin/env bash
# Throughput benchmark of the fraud example: see bench/README.md. Release build, repeated runs, medians.
#   bench/run.sh [--events N] [--users N] [--rows N] [--repeat N]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$here/bench/workload.sh"
parse_workload_args bench/run.sh 5 "$@"

source "$here/bench/release_build.sh"
release_build freshet pipeline_bench

generate_workload
spec="$data/fraud.yaml"
cp "$here/examples/fraud/fraud.yaml" "$spec"

echo "== core: aggregation with events already parsed (one core) =="
taskset -c 0 "$build/pipeline_bench" --spec "$spec" --events "$ev" --mode core --repeat "$repeat"
echo "== json: JSON lines on disk to updated state (one core) =="
taskset -c 0 /usr/bin/time -f "json: peak RSS %M KB" "$build/pipeline_bench" --spec "$spec" --events "$ev" --mode json --repeat "$repeat"
echo "== historical: $rows entity rows over $events events (one core) =="
timed_runs historical "$build/freshet" historical --spec "$spec" --events "$ev" --entities "$ent" \
  --output "$data/out.csv" --no-progress

#!/usr/bin/env bash
# Serving latency of `freshet run` over loopback with 1,000,000 entities loaded (see bench/README.md).
#   bench/serve_bench.sh [--entities N] [--seconds S] [--connections C]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
entities=1000000 seconds=15 connections=8
while [ $# -gt 0 ]; do
  case "$1" in
    --entities) entities=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    *) echo "usage: bench/serve_bench.sh [--entities N] [--seconds S] [--connections C]" >&2; exit 2 ;;
  esac
done
source "$here/bench/release_build.sh"
release_build freshet
data="$here/bench/data/serve"
rm -rf "$data" && mkdir -p "$data"
# Every entity gets 3 events (a view, a purchase, a login) in the hour before noon.
awk -v n="$entities" 'BEGIN {
  base = 1767268800000 - 3600000;
  for (i = 1; i <= n; i++) {
    t = base + (i * 37) % 3600000;
    printf "{\"user_id\":\"u%d\",\"ts\":%d,\"type\":\"view\",\"category\":\"c%d\"}\n", i, t, i % 12;
    printf "{\"user_id\":\"u%d\",\"ts\":%d,\"type\":\"purchase\",\"amount\":%d.5,\"category\":\"c%d\"}\n", i, t + 1, i % 500, i % 12;
    printf "{\"user_id\":\"u%d\",\"ts\":%d,\"type\":\"login\",\"success\":false}\n", i, t + 2;
  }
}' | sort -t, -k2,2 > "$data/events.jsonl"
sed -e 's|source: {type: file, path: events.jsonl}|source: {type: file, path: events.jsonl}\nserve: {port: 0}\ncheckpoint: {interval: 1h}|' \
  "$here/examples/fraud/fraud.yaml" > "$data/spec.yaml"
start_server() {
  "$build/freshet" run --spec "$data/spec.yaml" --data-dir "$data/state" 2> "$data/run.log" &
  pid=$!
  for _ in $(seq 1 300); do grep -q serving "$data/run.log" && break; sleep 0.1; done
  url=$(grep -o 'http://[0-9.]*:[0-9]*' "$data/run.log" | head -n 1)
  for _ in $(seq 1 600); do
    n=$(curl -s "$url/metrics" | awk '/^freshet_events_accepted_total/ {print $2}')
    [ "${n:-0}" -ge $((entities * 3)) ] && break
    sleep 0.5
  done
}
measure() {
  echo "== single-entity lookups: GET /v1/features/{entity} (wrk, $connections connections, ${seconds}s; $1)"
  ENTITIES=$entities BATCH=0 wrk -t2 -c"$connections" -d"${seconds}s" --latency -s "$here/bench/lookup.lua" "$url" \
    | grep -E "Requests/sec|Latency|50%|75%|90%|99%"
  echo "== batches of 100 entities: POST /v1/features ($1)"
  ENTITIES=$entities BATCH=100 wrk -t2 -c"$connections" -d"${seconds}s" --latency -s "$here/bench/lookup.lua" "$url" \
    | grep -E "Requests/sec|Latency|50%|75%|90%|99%"
}
trap 'kill ${pid:-0} 2>/dev/null || true' EXIT
start_server
echo "loaded: $(curl -s "$url/metrics" | grep -E '^freshet_state_entities') entities, RSS $(ps -o rss= -p $pid | awk '{printf "%d MB", $1/1024}')"
measure "every answer logged to the feature log"
echo "feature log: $(curl -s "$url/metrics" | grep -E '^freshet_feature_log_(answers|shed)_total' | tr '\n' ' ')"
kill -TERM $pid; wait $pid || true
# The same state (restored from the checkpoint), with the feature log off: the cost of logging.
printf 'feature_log: {enabled: false}\n' >> "$data/spec.yaml"
start_server
measure "feature log off"
kill -TERM $pid; wait $pid || true

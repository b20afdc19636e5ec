#!/usr/bin/env bash
# Freshness under sustained HTTP ingest (see bench/README.md): wrk pushes batches of 1000 events to
# POST /v1/ingest for a while; the runtime's freshness histogram (arrival at the source -> visible to lookups)
# gives the p99. Prints the ingest rate and the histogram.
#   bench/freshness_bench.sh [--seconds S] [--connections C] [--rate EVENTS_PER_S]   (default 200000)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds=15 connections=2 rate=200000
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    *) echo "usage: bench/freshness_bench.sh [--seconds S] [--connections C] [--rate EVENTS_PER_S (0: unthrottled)]" >&2; exit 2 ;;
  esac
done
source "$here/bench/release_build.sh"
release_build freshet
data="$here/bench/data/freshness"
rm -rf "$data" && mkdir -p "$data"
"$build/freshet" generate --users 100000 --events 1000 --seed 3 --start "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  --duration 1s --output "$data/body.jsonl"
sed -e 's|port: 8080|port: 0|' "$here/examples/fraud/live.yaml" > "$data/spec.yaml"
"$build/freshet" run --spec "$data/spec.yaml" --data-dir "$data/state" 2> "$data/run.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do grep -q serving "$data/run.log" && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.]*:[0-9]*' "$data/run.log" | head -n 1)
REQUESTS_PER_SECOND=$((rate / 1000)) CONNECTIONS=$connections BODY_FILE="$data/body.jsonl" wrk -t1 -c"$connections" -d"${seconds}s" -s "$here/bench/ingest.lua" "$url" \
  | grep -E "Requests/sec|Latency"
sleep 1
metrics=$(curl -s "$url/metrics")
accepted=$(echo "$metrics" | awk '/^freshet_events_accepted_total/ {print $2}')
echo "accepted: $accepted events in ${seconds}s = $((accepted / seconds)) events/s"
echo "$metrics" | grep -E '^freshet_freshness_seconds_(bucket|count)'
echo "$metrics" | awk '/^freshet_freshness_seconds_bucket/ { split($1, a, "\""); b[n] = a[2]; c[n++] = $2 }
  /^freshet_freshness_seconds_count/ { total = $2 }
  END { for (i = 0; i < n; i++) if (c[i] >= 0.99 * total) { print "freshness p99 <= " b[i] " s"; exit } }'
kill -TERM $pid; wait $pid || true

#!/usr/bin/env bash
# Freshness under sustained HTTP ingest (see bench/README.md): wrk pushes batches of 1000 events to
# POST /v1/ingest for a while; the runtime's freshness histogram (arrival at the source -> visible to lookups)
# gives the p99. Prints the ingest rate and the histogram.
#   bench/freshness_bench.sh [--seconds S] [--connections C] [--rate EVENTS_PER_S] [--redis]   (default 200000)
# With --redis the online store is a redis-server started here on a free loopback port, and the p99 of
# freshet_redis_freshness_seconds (arrival -> Redis holds the effect) is printed too.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds=15 connections=4 rate=200000 redis=0
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --redis) redis=1; shift ;;
    *) echo "usage: bench/freshness_bench.sh [--seconds S] [--connections C] [--rate EVENTS_PER_S (0: unthrottled)] [--redis]" >&2; exit 2 ;;
  esac
done
source "$here/bench/release_build.sh"
release_build freshet
data="$here/bench/data/freshness"
rm -rf "$data" && mkdir -p "$data"
"$build/freshet" generate --users 100000 --events 1000 --seed 3 --start "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  --duration 1s --output "$data/body.jsonl"
sed -e 's|port: 8080|port: 0|' "$here/examples/fraud/live.yaml" > "$data/spec.yaml"
redis_pid=0
if [ "$redis" = 1 ]; then
  redis_port=$("$here/.venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no > "$data/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping > /dev/null 2>&1 && break; sleep 0.1; done
  printf 'online: {type: redis, host: 127.0.0.1, port: %s}\n' "$redis_port" >> "$data/spec.yaml"
fi
"$build/freshet" run --spec "$data/spec.yaml" --data-dir "$data/state" 2> "$data/run.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; [ "$redis_pid" = 0 ] || kill $redis_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do grep -q serving "$data/run.log" && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.]*:[0-9]*' "$data/run.log" | head -n 1)
REQUESTS_PER_SECOND=$((rate / 1000)) BODY_FILE="$data/body.jsonl" wrk -t1 -c"$connections" -d"${seconds}s" -s "$here/bench/ingest.lua" "$url" \
  | grep -E "Requests/sec|Latency"
sleep 1
metrics=$(curl -s "$url/metrics")
accepted=$(echo "$metrics" | awk '/^freshet_events_accepted_total/ {print $2}')
echo "accepted: $accepted events in ${seconds}s = $((accepted / seconds)) events/s"
p99() {  # The smallest bucket bound holding 99% of histogram $1.
  echo "$metrics" | awk -v h="$1" '$0 ~ "^" h "_bucket" { split($1, a, "\""); b[n] = a[2]; c[n++] = $2 }
    $0 ~ "^" h "_count" { total = $2 }
    END { for (i = 0; i < n; i++) if (c[i] >= 0.99 * total) { print h " p99 <= " b[i] " s (" total " events)"; exit } }'
}
echo "$metrics" | grep -E '^freshet_freshness_seconds_(bucket|count)'
p99 freshet_freshness_seconds
if [ "$redis" = 1 ]; then
  sleep 1  # The last flush.
  metrics=$(curl -s "$url/metrics")
  echo "$metrics" | grep -E '^freshet_redis_(freshness_seconds_count|entities_written_total|batches_written_total|write_errors_total)'
  p99 freshet_redis_freshness_seconds
fi
kill -TERM $pid; wait $pid || true

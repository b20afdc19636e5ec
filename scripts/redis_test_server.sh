#!/usr/bin/env bash
# A throwaway local redis-server for trying `freshet run` by hand (tests start their own; see
# tests/redis_server.py). No persistence; bound to 127.0.0.1.
#
#   scripts/redis_test_server.sh start [PORT]   # default 6399; prints the port
#   scripts/redis_test_server.sh status [PORT]
#   scripts/redis_test_server.sh stop [PORT]
set -euo pipefail

cmd="${1:-}"
port="${2:-6399}"
pidfile="/tmp/freshet-redis-${port}.pid"

running() { [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "$cmd" in
  start)
    if running; then echo "redis-server already running on 127.0.0.1:${port} (pid $(cat "$pidfile"))"; exit 0; fi
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir /tmp \
      --daemonize yes --pidfile "$pidfile" --logfile "/tmp/freshet-redis-${port}.log"
    for _ in $(seq 100); do
      if redis-cli -p "$port" ping >/dev/null 2>&1; then echo "$port"; exit 0; fi
      sleep 0.05
    done
    echo "redis-server did not answer on 127.0.0.1:${port}; see /tmp/freshet-redis-${port}.log" >&2
    exit 1
    ;;
  status)
    if running; then echo "running on 127.0.0.1:${port} (pid $(cat "$pidfile"))"; else echo "not running"; exit 1; fi
    ;;
  stop)
    if running; then kill "$(cat "$pidfile")"; fi
    rm -f "$pidfile" "/tmp/freshet-redis-${port}.log"
    ;;
  *)
    echo "usage: $0 start|status|stop [PORT]" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# A throwaway single-node Apache Kafka broker (KRaft: broker and controller in one JVM) for tests, the demo and
# benchmarks. Everything it has lives in one folder DIR: configuration, data, pid, log, bootstrap address.
# The broker comes from the class path that scripts/setup.sh resolves from scripts/kafka/pom.xml (no Kafka
# installation, no ZooKeeper). It listens on 127.0.0.1 only, on free ports chosen at the first start of DIR and
# kept for later starts of the same DIR, so a restarted broker has its old address and data.
#
#   scripts/kafka.sh start DIR               # start in the background; waits until it answers, prints HOST:PORT
#   scripts/kafka.sh run DIR                 # the same broker in the foreground (exec java; output to
#                                            #   DIR/broker.log): for a supervisor such as tests/kafka_broker.py
#   scripts/kafka.sh wait DIR [SECONDS]      # wait until the broker in DIR answers a metadata request
#   scripts/kafka.sh stop DIR                # SIGTERM (controlled shutdown), SIGKILL after KAFKA_STOP_TIMEOUT (30 s)
#   scripts/kafka.sh kill DIR                # SIGKILL at once, like a crash
#   scripts/kafka.sh status DIR              # "running at HOST:PORT (pid N)" or "not running" (exit 1)
#   scripts/kafka.sh topic DIR NAME PARTITIONS   # create a topic (replication factor 1) unless it exists
#   scripts/kafka.sh bootstrap DIR           # print HOST:PORT
#
# DIR/bootstrap holds "127.0.0.1:PORT"; DIR/pid the broker's pid; DIR/broker.log its output; DIR/data the log dir.
# Topics are not created automatically (auto.create.topics.enable=false); retention is unlimited, so events with
# old timestamps are kept. Progress goes to stderr; stdout carries only the bootstrap address.
#
# Environment: KAFKA_CLASSPATH_FILE (default .cache/kafka/classpath), KAFKA_HEAP (default -Xmx512m -Xms128m),
# KAFKA_START_TIMEOUT (default 60 s), KAFKA_STOP_TIMEOUT (default 30 s), JAVA (default java).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
classpath_file="${KAFKA_CLASSPATH_FILE:-$here/.cache/kafka/classpath}"
java="${JAVA:-java}"
heap="${KAFKA_HEAP:--Xmx512m -Xms128m}"
start_timeout="${KAFKA_START_TIMEOUT:-60}"
stop_timeout="${KAFKA_STOP_TIMEOUT:-30}"

say() { echo "kafka.sh: $*" >&2; }
die() { say "$*"; exit 1; }
usage() {
  echo "usage: $0 start|run|wait|stop|kill|status|bootstrap DIR | topic DIR NAME PARTITIONS" >&2
  exit 2
}

classpath() {
  [[ -s "$classpath_file" ]] || die "no Kafka class path at $classpath_file; run scripts/setup.sh"
  cat "$classpath_file"
}

# A pid that is alive (a zombie waiting for its parent to reap it is not).
alive() {
  local pid="$1" state
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo X)"
  [[ "$state" != Z && "$state" != X ]]
}

broker_pid() { [[ -f "$dir/pid" ]] && cat "$dir/pid" || true; }
running() { alive "$(broker_pid)"; }

# Two distinct TCP ports on 127.0.0.1 that were free a moment ago (the kernel's pick): broker, controller.
free_ports() {
  python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))'
}

# A random cluster id as Kafka writes them: 16 bytes, URL-safe base64 without padding, not starting with "-".
cluster_id() {
  local id
  while :; do
    id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ "$id" != -* && "$id" != AAAAAAAAAAAAAAAAAAAAAA && "$id" != AAAAAAAAAAAAAAAAAAAAAQ ]] && break
  done
  echo "$id"
}

write_config() {
  local port="$1" cport="$2"
  cat > "$dir/server.properties" <<EOF
# Written by scripts/kafka.sh: a single-node KRaft broker for tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${cport}
listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${cport}
advertised.listeners=PLAINTEXT://127.0.0.1:${port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=${dir}/data
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
log.retention.ms=-1
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
# After a crash (kill -9) the restarted broker cannot register until the controller has expired the dead
# incarnation's session: 9 s by default, 3 s here (a crash restart takes ~8 s instead of ~15 s).
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
EOF
  echo "127.0.0.1:${port}" > "$dir/bootstrap"
  echo "$cport" > "$dir/controller_port"
}

write_log4j() {
  cat > "$dir/log4j.properties" <<'EOF'
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.clients=WARN
log4j.logger.kafka.log.LogCleaner=WARN
EOF
  cat > "$dir/tools-log4j.properties" <<'EOF'
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF
}

# Quick-starting JVM flags for the short-lived command-line tools.
tool_java() {
  "$java" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$dir/tools-log4j.properties" -cp "$(classpath)" "$@"
}

# Configuration and storage for DIR: new ports and a formatted log dir the first time, as they were afterwards.
prepare() {
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  classpath >/dev/null
  new_ports=""
  if [[ ! -f "$dir/server.properties" ]]; then
    local ports
    new_ports=1
    read -r -a ports <<<"$(free_ports)"
    write_config "${ports[0]}" "${ports[1]}"
  fi
  write_log4j
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    say "formatting $dir/data"
    tool_java kafka.tools.StorageTool format --ignore-formatted -t "$(cluster_id)" \
      -c "$dir/server.properties" >"$dir/format.log" 2>&1 ||
      { cat "$dir/format.log" >&2; die "formatting the storage failed"; }
  fi
}

broker_exec() {
  # Heap and GC as bin/kafka-server-start.sh, with a smaller heap for a 2-core CI machine.
  # shellcheck disable=SC2086
  exec "$java" $heap -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$dir/log4j.properties" -Dkafka.logs.dir="$dir/logs" \
    -cp "$(classpath)" kafka.Kafka "$dir/server.properties"
}

# Marks where this start's output begins in DIR/broker.log (which restarts append to).
mark_log() { stat -c %s "$dir/broker.log" 2>/dev/null > "$dir/log_offset" || echo 0 > "$dir/log_offset"; }

# Waits until the broker has logged that it started (this start: past DIR/log_offset; so not some other process
# on the port) and answers a metadata request naming itself (kcat, i.e. librdkafka) or, without kcat, accepts
# connections. Fails at once if the process is gone.
wait_ready() {
  local timeout="$1" bootstrap port deadline from
  bootstrap="$(cat "$dir/bootstrap")"
  port="${bootstrap##*:}"
  from="$(cat "$dir/log_offset" 2>/dev/null || echo 0)"
  deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    if ! running; then
      say "the broker in $dir exited; see $dir/broker.log"
      return 1
    fi
    if tail -c +$((from + 1)) "$dir/broker.log" 2>/dev/null | grep -q "Kafka Server started" &&
       (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      if ! command -v kcat >/dev/null ||
         kcat -L -b "$bootstrap" -m 2 -X log_level=0 2>/dev/null | grep -q "broker 1 at 127.0.0.1:$port"; then
        return 0
      fi
    fi
    sleep 0.2
  done
  say "the broker in $dir did not answer within ${timeout}s; see $dir/broker.log"
  return 1
}

# SIGTERM and up to KAFKA_STOP_TIMEOUT seconds for a controlled shutdown, then SIGKILL; or SIGKILL at once.
stop_broker() {
  local signal="$1" pid deadline
  pid="$(broker_pid)"
  if alive "$pid"; then
    kill "-$signal" "$pid" 2>/dev/null || true
    deadline=$((SECONDS + stop_timeout))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if alive "$pid"; then
      [[ "$signal" == KILL ]] ||
      say "the broker (pid $pid) did not stop within ${stop_timeout}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      while alive "$pid"; do sleep 0.05; done
    fi
  fi
  rm -f "$dir/pid"
}

cmd="${1:-}"
dir="${2:-}"
[[ -n "$cmd" && -n "$dir" ]] || usage

case "$cmd" in
  start)
    if [[ -d "$dir" ]] && running; then
      say "already running (pid $(broker_pid))"
      cat "$dir/bootstrap"
      exit 0
    fi
    started=$SECONDS
    for attempt in 1 2 3; do
      prepare
      say "starting the broker at $(cat "$dir/bootstrap") in $dir"
      mark_log
      # SIGHUP ignored (the JVM keeps it so), so that the broker outlives the terminal that started it.
      ( trap '' HUP; broker_exec ) </dev/null >>"$dir/broker.log" 2>&1 &
      echo $! > "$dir/pid"
      if wait_ready "$start_timeout"; then
        say "the broker answers at $(cat "$dir/bootstrap") (pid $(broker_pid), $((SECONDS - started))s)"
        cat "$dir/bootstrap"
        exit 0
      fi
      stop_broker KILL
      # Ports that someone took since they were chosen: other ones, but only for a DIR that never ran.
      if ! [[ -n "$new_ports" && $attempt -lt 3 ]] || ! grep -q "Address already in use" "$dir/broker.log"; then
        grep -E "ERROR|FATAL|Exception" "$dir/broker.log" | tail -n 5 >&2 || true
        exit 1
      fi
      say "a port was taken; trying other ones"
      rm -f "$dir/server.properties" "$dir/bootstrap" "$dir/controller_port"
      : > "$dir/broker.log"
    done
    ;;
  run)
    if [[ -d "$dir" ]] && running; then die "a broker is already running in $dir (pid $(broker_pid))"; fi
    prepare
    echo $$ > "$dir/pid"
    mark_log
    broker_exec </dev/null >>"$dir/broker.log" 2>&1
    ;;
  wait)
    dir="$(cd "$dir" && pwd)"
    wait_ready "${3:-$start_timeout}" || { grep -E "ERROR|FATAL|Exception" "$dir/broker.log" | tail -n 5 >&2; exit 1; }
    cat "$dir/bootstrap"
    ;;
  stop | kill)
    [[ -d "$dir" ]] || exit 0
    if [[ "$cmd" == stop ]]; then stop_broker TERM; else stop_timeout=10 stop_broker KILL; fi
    ;;
  status)
    if [[ -d "$dir" ]] && running; then
      echo "running at $(cat "$dir/bootstrap") (pid $(broker_pid))"
    else
      echo "not running"
      exit 1
    fi
    ;;
  bootstrap)
    cat "$dir/bootstrap"
    ;;
  topic)
    [[ $# -eq 4 && "$4" =~ ^[1-9][0-9]*$ ]] || usage
    dir="$(cd "$dir" && pwd)"
    tool_java org.apache.kafka.tools.TopicCommand --bootstrap-server "$(cat "$dir/bootstrap")" --create \
      --if-not-exists --topic "$3" --partitions "$4" --replication-factor 1 >&2
    ;;
  *)
    usage
    ;;
esac

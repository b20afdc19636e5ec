"""A throwaway Apache Kafka broker for end-to-end tests, and helpers to produce to it and look inside it.

The broker is scripts/kafka.sh's single-node KRaft broker (Kafka 3.9, broker and controller in one JVM, from the
class path that scripts/setup.sh resolves), run in the foreground as a child process on free loopback ports with
its data in a temporary folder. It dies with the test process (PR_SET_PDEATHSIG) even if the test crashes;
`stop()` kills it at once like a crash, `stop(graceful=True)` shuts it down cleanly, and `start()` brings it
back on the same port with the same data (topics, messages, committed offsets).

    from kafka_broker import KafkaBroker

    with KafkaBroker() as kafka:                 # or use the `kafka_broker` pytest fixture
        kafka.create_topic("events", partitions=8)
        kafka.produce("events", [("u1", b'{"user_id": "u1"}'), ("u2", b"...")])
        subprocess.run([FRESHET_BIN, "run", ..., "--kafka", kafka.bootstrap])   # "127.0.0.1:PORT"
        kafka.end_offsets("events")              # {partition: high watermark}
        kafka.committed("freshet", "events")     # {partition: committed offset or None}
        kafka.stop(); kafka.start()              # crash and restart: same port, same data

The helpers use confluent_kafka (its wheel bundles its own librdkafka; Freshet and kcat use Debian's 2.0.2).
Keys without a partition are placed by librdkafka's default partitioner (consistent_random: CRC32 of the key),
not the Java client's murmur2.

Run this file to check that it works: .venv/bin/python tests/kafka_broker.py
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

from child_server import ChildServer, die_with_parent

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "scripts" / "kafka.sh"
CLASSPATH_FILE = Path(os.environ.get("KAFKA_CLASSPATH_FILE", ROOT / ".cache" / "kafka" / "classpath"))
KAFKA4_CLASSPATH_FILE = ROOT / ".cache" / "kafka4" / "classpath"  # scripts/kafka4/pom.xml: a Kafka 4.x broker



_die_with_parent = die_with_parent  # Runs in the child before exec.


def _kill_at_exit(ref: weakref.ref) -> None:
    broker = ref()
    if broker is not None:
        broker.stop()


def _coordinator_not_ready(e: Exception) -> bool:
    from confluent_kafka import KafkaError
    err = e.args[0] if e.args else None
    return isinstance(err, KafkaError) and (err.retriable() or err.code() in (
        KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError._TIMED_OUT))


class KafkaBrokerError(RuntimeError):
    """The broker did not start or did not answer."""


class KafkaBroker(ChildServer):
    """One single-node Kafka broker on 127.0.0.1 with its data in `dir`.

    dir: folder for its configuration, data and logs; None for a new temporary folder, removed by close().
    The ports are chosen at the first start and kept across restarts.
    """

    def __init__(self, dir: str | os.PathLike | None = None, classpath_file: Path = CLASSPATH_FILE):
        if not classpath_file.is_file():
            raise FileNotFoundError(f"{classpath_file} not found; run scripts/setup.sh")
        self.classpath_file = classpath_file
        self._own_dir = dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="freshet-kafka-") if dir is None else dir).resolve()
        self._proc: subprocess.Popen | None = None
        self._started_once = False
        self._log_from = 0
        self.bootstrap: str | None = None  # "127.0.0.1:PORT" once started
        self.start_seconds: float | None = None  # how long the last start() took
        atexit.register(_kill_at_exit, weakref.ref(self))

    @property
    def port(self) -> int:
        return int(self.bootstrap.rsplit(":", 1)[1])

    @property
    def log(self) -> Path:
        """The broker's output (appended to across restarts)."""
        return self.dir / "broker.log"

    # Life cycle.

    def start(self, timeout: float = 180.0) -> KafkaBroker:
        """Starts the broker and waits until it answers a metadata request. At the first start a port taken by
        someone else in the meantime is replaced by other free ones (up to 5 tries); later starts keep it."""
        if self.running:
            return self
        began = time.monotonic()
        for attempt in range(1 if self._started_once else 5):
            error = self._start_once(timeout)
            if error is None:
                self._started_once = True
                self.start_seconds = time.monotonic() - began
                return self
            if self._started_once or "Address already in use" not in error:
                break
            for name in ("server.properties", "bootstrap", "controller_port"):  # New ports next time.
                (self.dir / name).unlink(missing_ok=True)
            self.bootstrap = None
        raise KafkaBrokerError(f"the Kafka broker in {self.dir} did not start: {error}")

    def _start_once(self, timeout: float) -> str | None:
        """None once the broker answers; else why not (the process is gone by then)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._log_from = self.log.stat().st_size if self.log.exists() else 0
        with open(self.dir / "run.log", "ab") as out:
            env = dict(os.environ, KAFKA_CLASSPATH_FILE=str(self.classpath_file))
            self._proc = subprocess.Popen(["bash", str(KAFKA_SH), "run", str(self.dir)], stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=out, env=env, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return self._tail()
            if self.bootstrap is None and (self.dir / "bootstrap").is_file():
                text = (self.dir / "bootstrap").read_text().strip()
                self.bootstrap = text or None
            if self.bootstrap is not None and self._answers():
                return None
            time.sleep(0.1)
        self.stop()
        return f"no answer within {timeout:.0f}s\n{self._tail()}"

    def _answers(self) -> bool:
        """This start of the broker has logged that it started (so no other process holds the port), and it
        accepts connections and lists itself (node 1) in a metadata response."""
        try:
            with open(self.log, "rb") as log:
                log.seek(self._log_from)
                if b"Kafka Server started" not in log.read():
                    return False
        except OSError:
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
        except OSError:
            return False
        try:
            metadata = self.admin().list_topics(timeout=2)
        except Exception:  # KafkaException while it is still starting.
            return False
        return 1 in metadata.brokers

    def _tail(self, lines: int = 25) -> str:
        parts = []
        for name in ("run.log", "broker.log"):
            path = self.dir / name
            if path.is_file():
                parts.append(f"--- {path} (end)\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)

    def stop(self, graceful: bool = False, timeout: float = 30.0) -> None:
        """Kills the broker at once (SIGKILL, like a crash); with graceful=True, SIGTERM (a controlled shutdown)
        and SIGKILL after `timeout` seconds. Reaps it. Safe to call twice."""
        if self._proc is None:
            return
        try:
            self._proc.send_signal(signal.SIGCONT)  # In case it was paused.
            self._proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            self._proc.wait(timeout if graceful else None)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        except ProcessLookupError:
            pass
        self._proc.wait()
        self._proc = None
        (self.dir / "pid").unlink(missing_ok=True)


    def close(self) -> None:
        """Stops the broker and removes its folder if it made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # Clients and helpers (confluent_kafka).

    def config(self, extra: dict | None = None) -> dict:
        """A librdkafka configuration for this broker: {"bootstrap.servers": ..., **extra}."""
        return {"bootstrap.servers": self.bootstrap, **(extra or {})}

    def admin(self):
        from confluent_kafka.admin import AdminClient
        return AdminClient(self.config({"log_level": 0}))

    def create_topic(self, name: str, partitions: int = 1, config: dict[str, str] | None = None,
                     timeout: float = 30.0) -> None:
        """Creates a topic (replication factor 1) and waits until every partition has a leader."""
        from confluent_kafka.admin import NewTopic
        admin = self.admin()
        futures = admin.create_topics([NewTopic(name, partitions, 1, config=dict(config or {}))],
                                      operation_timeout=timeout, request_timeout=timeout)
        futures[name].result(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            topic = admin.list_topics(topic=name, timeout=5).topics.get(name)
            if (topic is not None and topic.error is None and len(topic.partitions) == partitions
                    and all(p.leader >= 0 for p in topic.partitions.values())):
                return
            time.sleep(0.05)
        raise KafkaBrokerError(f"topic {name} has no leaders after {timeout}s")

    def partitions(self, topic: str) -> list[int]:
        metadata = self.admin().list_topics(topic=topic, timeout=10).topics[topic]
        if metadata.error is not None:
            raise KafkaBrokerError(f"topic {topic}: {metadata.error}")
        return sorted(metadata.partitions)

    def produce(self, topic: str, messages, partition: int | None = None,
                producer_config: dict | None = None) -> list[tuple[int, int]]:
        """Produces [(key, value)] (str or bytes, or None) in order, acks=all, and waits until all are
        acknowledged. partition: all to this one; None: by key (librdkafka's partitioner). Returns the
        (partition, offset) of each message; raises if any delivery failed."""
        from confluent_kafka import KafkaException, Producer
        # Idempotent: a batch retried under load (a slow broker) cannot land after later ones or twice, so each
        # partition holds the messages in the order given, which tests' references assume.
        producer = Producer(self.config({"acks": "all", "linger.ms": 5, "enable.idempotence": True,
                                         **(producer_config or {})}))
        results: list[tuple[int, int] | None] = []
        errors = []

        def delivered(index):
            def report(err, msg):
                if err is not None:
                    errors.append(f"message {index}: {err}")
                else:
                    results[index] = (msg.partition(), msg.offset())
            return report

        for i, (key, value) in enumerate(messages):
            results.append(None)
            kwargs = {} if partition is None else {"partition": partition}
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=delivered(i), **kwargs)
                    break
                except BufferError:  # Local queue full: let deliveries drain.
                    producer.poll(0.1)
            producer.poll(0)
        remaining = producer.flush(60)
        if remaining or errors:
            raise KafkaException(f"produce to {topic}: {remaining} undelivered; " + "; ".join(errors[:5]))
        return results

    def _consumer(self, group: str = "freshet-kafka-broker-helper", extra: dict | None = None):
        from confluent_kafka import Consumer
        return Consumer(self.config({"group.id": group, "enable.auto.commit": False, "log_level": 0, **(extra or {})}))

    def end_offsets(self, topic: str) -> dict[int, int]:
        """{partition: high watermark} (the offset the next message will get)."""
        consumer = self._consumer()
        try:
            from confluent_kafka import TopicPartition
            return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                    for p in self.partitions(topic)}
        finally:
            consumer.close()

    def committed(self, group: str, topic: str, timeout: float = 30.0) -> dict[int, int | None]:
        """{partition: the group's committed offset, or None where it has none}. Retries while the group
        coordinator is not ready (NOT_COORDINATOR and the like: the first group request of a fresh broker creates
        __consumer_offsets, and librdkafka's committed() does not retry that itself)."""
        from confluent_kafka import KafkaException, TopicPartition
        consumer = self._consumer(group)
        deadline = time.monotonic() + timeout
        try:
            wanted = [TopicPartition(topic, p) for p in self.partitions(topic)]
            while True:
                try:
                    parts = consumer.committed(wanted, timeout=10)
                    return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in parts}
                except KafkaException as e:
                    if not _coordinator_not_ready(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        finally:
            consumer.close()

    def consume(self, topic: str, group: str, count: int, timeout: float = 30.0, commit: bool = True,
                from_beginning: bool = True) -> list:
        """Reads `count` messages as a member of `group` (subscribe; from the earliest offset when the group has
        none committed) and, with commit=True, commits what it read before leaving. Returns the confluent_kafka
        Message objects in the order received. Raises if fewer arrive within `timeout` seconds."""
        consumer = self._consumer(group, {"auto.offset.reset": "earliest" if from_beginning else "latest"})
        got = []
        try:
            consumer.subscribe([topic])
            deadline = time.monotonic() + timeout
            while len(got) < count and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error() is not None:
                    raise KafkaBrokerError(f"consume {topic}: {msg.error()}")
                got.append(msg)
            if len(got) < count:
                raise KafkaBrokerError(f"consume {topic}: {len(got)} of {count} messages within {timeout}s")
            if commit and got:
                consumer.commit(asynchronous=False)
        finally:
            consumer.close()
        return got


try:
    import pytest

    @pytest.fixture
    def kafka_broker():
        """A started KafkaBroker for one test, killed and removed afterwards (import it into a test module)."""
        if not CLASSPATH_FILE.is_file():
            pytest.skip(f"{CLASSPATH_FILE} not found; run scripts/setup.sh")
        broker = KafkaBroker()
        try:
            broker.start()
            yield broker
        finally:
            broker.close()
except ImportError:  # Usable without pytest.
    pass


def self_check(log=print) -> None:
    """Start; an 8-partition topic; 1000 keyed messages; consume them with a group and commit; committed ==
    end offsets; crash (kill -9) and restart on the same port: data and offsets survive; graceful stop."""
    with KafkaBroker() as kafka:
        log(f"kafka_broker: started at {kafka.bootstrap} in {kafka.start_seconds:.1f}s")
        kafka.create_topic("selfcheck", partitions=8)
        assert kafka.partitions("selfcheck") == list(range(8))
        sent = [(f"user{i % 37}", f'{{"user_id": "user{i % 37}", "n": {i}}}'.encode()) for i in range(1000)]
        placed = kafka.produce("selfcheck", sent)
        key_partition = {}
        for (key, _), (partition, _) in zip(sent, placed):
            assert key_partition.setdefault(key, partition) == partition, f"{key} in two partitions"
        assert len(set(key_partition.values())) > 1, "every key landed in one partition"
        ends = kafka.end_offsets("selfcheck")
        assert sum(ends.values()) == 1000 and set(ends) == set(range(8)), ends
        assert kafka.committed("g1", "selfcheck") == {p: None for p in range(8)}

        got = kafka.consume("selfcheck", "g1", 1000)
        per_key: dict[str, list[bytes]] = {}
        for msg in got:
            per_key.setdefault(msg.key().decode(), []).append(msg.value())
        for key, values in per_key.items():  # Every message once, and each key's in the order produced.
            assert values == [v for k, v in sent if k == key], key
        assert len(got) == 1000
        assert kafka.committed("g1", "selfcheck") == ends

        port, data = kafka.port, kafka.dir
        kafka.stop()  # kill -9
        assert not kafka.running
        kafka.start()
        log(f"kafka_broker: restarted after kill -9 in {kafka.start_seconds:.1f}s")
        assert kafka.port == port and kafka.dir == data
        assert kafka.end_offsets("selfcheck") == ends
        assert kafka.committed("g1", "selfcheck") == ends
        again = kafka.consume("selfcheck", "g2", 1000, commit=False)
        assert sorted((m.partition(), m.offset(), m.key(), m.value()) for m in again) == \
            sorted((m.partition(), m.offset(), m.key(), m.value()) for m in got)
        placed_more = kafka.produce("selfcheck", [("user1", b"after restart")])
        assert placed_more[0][1] == ends[placed_more[0][0]]
        [msg] = kafka.consume("selfcheck", "g1", 1)  # The group resumes where it committed.
        assert msg.value() == b"after restart"

        began = time.monotonic()
        kafka.stop(graceful=True)
        log(f"kafka_broker: graceful stop in {time.monotonic() - began:.1f}s")
        kafka.start()
        log(f"kafka_broker: restarted after a graceful stop in {kafka.start_seconds:.1f}s")
        assert kafka.port == port
        assert sum(kafka.end_offsets("selfcheck").values()) == 1001
        directory = kafka.dir
    assert not directory.exists()


if __name__ == "__main__":
    self_check(lambda line: print(line, file=sys.stderr))
    print("kafka_broker.py: ok")

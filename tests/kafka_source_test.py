"""`freshet run` reading a Kafka topic (source: {type: kafka}) against a real broker (tests/kafka_broker.py).

Semantics per partition: the input order is the partition's offset order and the lateness rule's M is kept per
partition, so the expected values are tests/reference.py run over each partition's messages on its own. Exactly
once: across kill -9s, every message is counted once (lookups equal the reference), the events table holds every
accepted message once with its partition and offset, the dead letters hold every rejected or late message once
with its partition and offset, and the group's committed offsets reach the end offsets (committed only after
checkpoints). Poison messages (not JSON, 2 MB, invalid UTF-8) are dead-lettered and their partition goes on.
A broker restart mid-stream loses and doubles nothing, and /health says degraded while it is down.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import deltalake
import pytest

import reference
from fraud_features import FEATURES_YAML
from kafka_broker import kafka_broker  # noqa: F401  (the fixture)
from asof_exact_test import _features_table, _same
from run_recovery_test import Server

BIN = os.environ.get("FRESHET_BIN", str(Path(__file__).resolve().parent.parent / "build" / "freshet"))
TOPIC = "events"
GROUP = "freshet-test"
PARTITIONS = 8

SPEC = """name: kafka_e2e
entity: user_id
timestamp: ts
watermark: {{max_out_of_orderness: 3s, allowed_lateness: 10s}}
source: {{type: kafka, brokers: "{brokers}", topic: {topic}, group: {group}, session_timeout: 10s}}
serve: {{port: 0}}
checkpoint: {{interval: 200ms, keep: 3}}
features:
{features}"""


def _generate(tmp: Path, events: int, seed: int, users: int = 300) -> list[bytes]:
    path = tmp / "all.jsonl"
    subprocess.run([BIN, "generate", "--users", str(users), "--events", str(events), "--seed", str(seed),
                    "--disorder", "2s", "--late-share", "0.01", "--malformed-share", "0.01",
                    "--output", str(path)], check=True)
    return path.read_bytes().splitlines()


def _key(line: bytes) -> bytes:
    """The message key: the entity (all of its events in one partition), or a stand-in for a malformed line."""
    try:
        record = json.loads(line)
        if isinstance(record, dict) and isinstance(record.get("user_id"), str):
            return record["user_id"].encode()
    except ValueError:
        pass
    return b"malformed"


def _write_spec(tmp: Path, brokers: str) -> Path:
    spec = tmp / "spec.yaml"
    spec.write_text(SPEC.format(brokers=brokers, topic=TOPIC, group=GROUP, features=FEATURES_YAML))
    return spec


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def _lines_read(server: Server) -> float:
    try:
        return server.metric("freshet_events_in_total")
    except Exception:  # noqa: BLE001  (not up yet)
        return -1


def _per_partition_reference(spec: reference.Spec, placed: dict[tuple[int, int], bytes]):
    """The reference over each partition's messages in offset order: accepted events, and dead letters by place."""
    accepted: list[reference.Event] = []
    dead: dict[tuple[int, int], str] = {}
    accepted_places: set[tuple[int, int]] = set()
    for partition in sorted({p for p, _ in placed}):
        offsets = sorted(o for p, o in placed if p == partition)
        events, letters = reference.read_events(b"\n".join(placed[(partition, o)] for o in offsets) + b"\n", spec)
        accepted += events
        dead_lines = {d.line for d in letters}
        for letter in letters:
            dead[(partition, offsets[letter.line - 1])] = letter.reason
        accepted_places |= {(partition, offsets[k]) for k in range(len(offsets)) if k + 1 not in dead_lines}
    return accepted, dead, accepted_places


def _check_everything(tmp: Path, server: Server, spec_path: Path, placed: dict[tuple[int, int], bytes],
                      broker) -> None:
    spec = reference.load_spec(str(spec_path))
    accepted, dead, accepted_places = _per_partition_reference(spec, placed)
    assert len(accepted) > 0.9 * len(placed)

    # Lookups as of the end: every entity equals the reference over its partition's accepted events.
    evaluator = reference.Evaluator(spec, accepted)
    at = max(e.time_ms for e in accepted) + 1
    entities = sorted({e.entity for e in accepted})
    body = json.dumps({"entities": entities, "at": at}).encode()
    answer = server.post("/v1/features", body, "application/json")
    mismatches = []
    for result in answer["results"]:
        for j, feature in enumerate(spec.features):
            expected, _ = evaluator.value(j, result["entity"], at)
            if not _same(feature, expected, result["features"][feature.name]):
                mismatches.append(f"{result['entity']} {feature.name}: reference {expected!r}, "
                                  f"served {result['features'][feature.name]!r}")
    assert not mismatches, f"{len(mismatches)} values differ from the per-partition reference:\n" + \
        "\n".join(mismatches[:10])

    # Dead letters: each rejected or late message once, named by partition and offset, with the reference's reason.
    letters = [json.loads(line) for line in (tmp / "data" / "dead_letters" / "kafka.jsonl").read_text().splitlines()]
    got = {}
    for letter in letters:
        place = (letter["partition"], letter["offset"])
        assert place not in got, f"dead letter for {place} written twice"
        assert letter["source"] == TOPIC
        got[place] = letter["reason"]
    assert set(got) == set(dead), (f"dead letters: {len(set(got) - set(dead))} unexpected, "
                                   f"{len(set(dead) - set(got))} missing")
    wrong = [(p, got[p], dead[p]) for p in dead if (got[p] == "late") != (dead[p] == "late")]
    assert not wrong, f"{len(wrong)} dead letters with another reason than the reference's: {wrong[:5]}"

    # The group's committed offsets reach the end offsets: a durable checkpoint covers every message, and with it
    # the offline tables' commit (offsets are committed only after it). Before that, the newest rows may still be
    # waiting for their checkpoint, which on a loaded machine comes late (seen: 5,878 rows not yet committed).
    ends = broker.end_offsets(TOPIC)
    _wait(lambda: broker.committed(GROUP, TOPIC) == ends, 60, f"committed offsets to reach {ends}")

    # Offline events table: every accepted message exactly once, with its partition and offset.
    table = deltalake.DeltaTable(str(tmp / "data" / "offline" / "events")).to_pyarrow_table().to_pylist()
    places = [(row["partition"], row["offset"]) for row in table]
    assert len(places) == len(set(places)), f"{len(places) - len(set(places))} events written twice"
    assert set(places) == accepted_places, (f"events table: {len(set(places) - accepted_places)} unexpected, "
                                            f"{len(accepted_places - set(places))} missing")
    seqs = [row["seq"] for row in table]
    assert len(seqs) == len(set(seqs)), "seq is not unique across partitions"




def _produce(broker, lines: list[bytes]) -> dict[tuple[int, int], bytes]:
    places = broker.produce(TOPIC, [(_key(line), line) for line in lines])
    return {place: line for place, line in zip(places, lines)}


@pytest.fixture
def topic(kafka_broker):  # noqa: F811
    kafka_broker.create_topic(TOPIC, partitions=PARTITIONS, config={"max.message.bytes": "4000000"})
    return kafka_broker


def test_kill9_mid_stream_counts_every_message_once_per_partition(topic, tmp_path: Path) -> None:
    broker = topic
    lines = _generate(tmp_path, 30_000, seed=7)
    spec_path = _write_spec(tmp_path, broker.bootstrap)
    placed = _produce(broker, lines[:15_000])

    server = Server(spec_path, tmp_path / "data", tmp_path / "run.log")
    _wait(lambda: _lines_read(server) >= 3_000, 60, "the first messages to be processed")
    server.kill()
    placed.update(_produce(broker, lines[15_000:]))  # Arrive while it is down.
    server = Server(spec_path, tmp_path / "data", tmp_path / "run.log")
    _wait(lambda: _lines_read(server) >= 20_000, 60, "more messages to be processed")
    server.kill()
    server = Server(spec_path, tmp_path / "data", tmp_path / "run.log")
    try:
        _wait(lambda: _lines_read(server) >= len(placed), 120, f"all {len(placed)} messages to be read")
        time.sleep(0)  # (no fixed wait: the count is the condition)
        assert _lines_read(server) == len(placed), "more lines read than messages: something was counted twice"
        _check_everything(tmp_path, server, spec_path, placed, broker)
    finally:
        assert server.terminate() == 0
    _check_backfill_and_historical(tmp_path, spec_path, placed)


def _check_backfill_and_historical(tmp: Path, spec_path: Path, placed: dict[tuple[int, int], bytes]) -> None:
    """Backfill and historical replay the events table per partition: the same rows and values as the stream."""
    data_dir = tmp / "data"
    streamed = _features_table(data_dir)
    subprocess.run([BIN, "backfill", "--spec", str(spec_path), "--data-dir", str(data_dir), "--no-progress"],
                   check=True, timeout=300)
    backfilled = _features_table(data_dir)
    assert backfilled.num_rows == streamed.num_rows
    if not backfilled.equals(streamed):
        differ = [f"seq {a['seq']}: streamed {a}, backfilled {b}"
                  for a, b in zip(streamed.to_pylist(), backfilled.to_pylist()) if a != b]
        raise AssertionError(f"{len(differ)} backfilled rows differ from the streamed ones\n" + "\n".join(differ[:5]))

    spec = reference.load_spec(str(spec_path))
    accepted, _, _ = _per_partition_reference(spec, placed)
    evaluator = reference.Evaluator(spec, accepted)
    entities = sorted({e.entity for e in accepted})
    newest = {}
    for e in accepted:
        newest[e.entity] = max(newest.get(e.entity, e.time_ms), e.time_ms)
    rows = [(entity, t) for entity in entities for t in (newest[entity] - 600_000, newest[entity], newest[entity] + 1)]
    with open(tmp / "rows.csv", "w") as f:
        f.write("user_id,ts\n" + "".join(f"{entity},{t}\n" for entity, t in rows))
    subprocess.run([BIN, "historical", "--spec", str(spec_path), "--data-dir", str(data_dir), "--entities",
                    str(tmp / "rows.csv"), "--output", str(tmp / "historical.csv"), "--no-progress"],
                   check=True, timeout=300)
    import csv
    with open(tmp / "historical.csv", newline="") as f:
        answers = list(csv.DictReader(f))
    mismatches = []
    for (entity, t), answer in zip(rows, answers):
        for j, feature in enumerate(spec.features):
            expected, _ = evaluator.value(j, entity, t)
            cell = answer[feature.name]
            got = None if cell == "" else (cell if feature.aggregation == "last" else float(cell))
            if not _same(feature, expected, got):
                mismatches.append(f"{entity} at {t} {feature.name}: reference {expected!r}, historical {cell!r}")
    assert not mismatches, (f"{len(mismatches)} historical values differ from the per-partition reference:\n"
                            + "\n".join(mismatches[:10]))


def test_poison_messages_are_dead_lettered_and_the_partition_goes_on(topic, tmp_path: Path) -> None:
    broker = topic
    good = [json.dumps({"user_id": "u1", "ts": 1_000 + k, "type": "view", "category": "c"}).encode() for k in range(3)]
    poison = [b"not json at all", b'{"user_id": "u1", "ts": 2000, "pad": "' + b"x" * 2_000_000 + b'"}',
              b'{"user_id": "u1", "ts": 2001, "type": "\xff\xfe"}']
    places = broker.produce(TOPIC, [(b"u1", good[0])] + [(b"u1", p) for p in poison] + [(b"u1", g) for g in good[1:]],
                            producer_config={"message.max.bytes": 4_000_000})
    partition = places[0][0]
    assert all(p == partition for p, _ in places)
    spec_path = _write_spec(tmp_path, broker.bootstrap)
    server = Server(spec_path, tmp_path / "data", tmp_path / "run.log")
    try:
        _wait(lambda: _lines_read(server) >= len(places), 60, "all messages to be read")
        assert server.metric("freshet_events_accepted_total") == 3
        assert server.metric("freshet_events_rejected_total") == 3
        answer = json.loads(server.get("/v1/features/u1"))
        assert answer["known"] is True
    finally:
        assert server.terminate() == 0
    letters = [json.loads(line) for line in (tmp_path / "data" / "dead_letters" / "kafka.jsonl").read_text().splitlines()]
    # The producer may reorder a 2 MB message against small ones (its own batch): compare by place.
    reasons = {(d["partition"], d["offset"]): d["reason"] for d in letters}
    assert len(letters) == 3 and set(reasons) == set(places[1:4]), (letters, places)
    assert "longer than" in reasons[places[2]], reasons[places[2]]


def test_broker_restart_mid_stream_loses_and_doubles_nothing(topic, tmp_path: Path) -> None:
    broker = topic
    lines = _generate(tmp_path, 12_000, seed=11)
    spec_path = _write_spec(tmp_path, broker.bootstrap)
    placed = _produce(broker, lines[:6_000])
    server = Server(spec_path, tmp_path / "data", tmp_path / "run.log")
    try:
        _wait(lambda: _lines_read(server) >= 6_000, 60, "the first half to be read")
        broker.stop()  # kill -9
        _wait(lambda: json.loads(_health(server)).get("status") == "degraded", 60, "/health to say degraded")
        broker.start()
        placed.update(_produce(broker, lines[6_000:]))
        _wait(lambda: _lines_read(server) >= len(placed), 120, f"all {len(placed)} messages to be read")
        assert _lines_read(server) == len(placed)
        _wait(lambda: json.loads(_health(server)).get("status") == "ok", 60, "/health to be ok again")
        _check_everything(tmp_path, server, spec_path, placed, broker)
    finally:
        assert server.terminate() == 0


def _health(server: Server) -> str:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=10) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:  # 503 while degraded
        return e.read().decode()


def test_generate_sends_every_line_to_kafka_keyed_by_user(kafka_broker, tmp_path: Path) -> None:  # noqa: F811
    kafka_broker.create_topic("generated", partitions=4)
    args = ["--users", "50", "--events", "5000", "--seed", "3", "--disorder", "2s", "--malformed-share", "0.01"]
    subprocess.run([BIN, "generate", *args, "--kafka", kafka_broker.bootstrap, "--topic", "generated"], check=True,
                   timeout=120)
    subprocess.run([BIN, "generate", *args, "--output", str(tmp_path / "same.jsonl")], check=True, timeout=60)
    expected = (tmp_path / "same.jsonl").read_bytes().splitlines()
    messages = kafka_broker.consume("generated", "check", len(expected), timeout=60)
    assert kafka_broker.end_offsets("generated") == {p: n for p, n in
                                                    _count_by_partition(messages).items()} | {
        p: 0 for p in range(4) if p not in _count_by_partition(messages)}
    partition_of: dict[bytes, int] = {}
    by_partition: dict[int, list[bytes]] = {}
    for m in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        by_partition.setdefault(m.partition(), []).append(m.value())
        if _key(m.value()) != b"malformed":  # Every event is keyed by its user_id.
            assert m.key() == _key(m.value()), (m.key(), m.value())
        if m.key() is not None:  # A truncated line may still show its user_id, and is keyed by it.
            assert partition_of.setdefault(m.key(), m.partition()) == m.partition(), f"{m.key()} in two partitions"
    assert sorted(v for vs in by_partition.values() for v in vs) == sorted(expected)
    # Each partition holds its lines in the order generate wrote them (lines that occur once: blank malformed lines
    # repeat).
    position: dict[bytes, int] = {}
    repeated = set()
    for k, line in enumerate(expected):
        if line in position:
            repeated.add(line)
        position.setdefault(line, k)
    for values in by_partition.values():
        order = [position[v] for v in values if v not in repeated]
        assert order == sorted(order)


def _count_by_partition(messages) -> dict[int, int]:
    counts: dict[int, int] = {}
    for m in messages:
        counts[m.partition()] = counts.get(m.partition(), 0) + 1
    return counts


def test_health_is_degraded_while_no_partition_is_assigned(kafka_broker, tmp_path: Path) -> None:  # noqa: F811
    """Another member of the group holds the topic's only partition: after source.max_rebalance /health says why."""
    import threading

    from confluent_kafka import Consumer
    kafka_broker.create_topic(TOPIC, partitions=1)
    holder = Consumer(kafka_broker.config({"group.id": GROUP, "partition.assignment.strategy": "cooperative-sticky",
                                           "session.timeout.ms": 10000, "log_level": 0}))
    holder.subscribe([TOPIC])
    _wait(lambda: holder.poll(0.2) is None and len(holder.assignment()) == 1, 30, "the holder's assignment")
    stop = threading.Event()
    polling = threading.Thread(target=lambda: [holder.poll(0.1) for _ in iter(stop.is_set, True)], daemon=True)
    polling.start()
    spec_path = _write_spec(tmp_path, kafka_broker.bootstrap)
    spec_path.write_text(spec_path.read_text().replace("session_timeout: 10s", "session_timeout: 10s, max_rebalance: 1s"))
    server = Server(spec_path, tmp_path / "data", tmp_path / "run.log")
    try:
        health = _wait(lambda: (lambda h: h if "no partition" in h else None)(_health(server)), 60,
                       "/health to report no assigned partition")
        assert json.loads(health)["status"] == "degraded", health
        assert server.metric("freshet_kafka_assigned_partitions") == 0
    finally:
        assert server.terminate() == 0
        stop.set()
        polling.join(timeout=10)
        holder.close()


def _run_to_end(spec_path: Path, data_dir: Path, total: int, entities: list[str], at: int):
    """Runs `freshet run` until it has read `total` messages; returns its lookups, dead letters and offline rows."""
    server = Server(spec_path, data_dir, data_dir.parent / (data_dir.name + ".log"))
    try:
        _wait(lambda: _lines_read(server) >= total, 120, f"all {total} messages to be read")
        answer = server.post("/v1/features", json.dumps({"entities": entities, "at": at}).encode(), "application/json")
    finally:
        assert server.terminate() == 0
    letters = sorted(tuple(sorted(json.loads(line).items()))
                     for line in (data_dir / "dead_letters" / "kafka.jsonl").read_text().splitlines())
    events = deltalake.DeltaTable(str(data_dir / "offline" / "events")).to_pyarrow_table().to_pylist()
    place_of = {row["seq"]: (row["partition"], row["offset"]) for row in events}
    events = sorted((row["partition"], row["offset"], row["entity"], row["event_time"], row["raw"]) for row in events)
    features = deltalake.DeltaTable(str(data_dir / "offline" / "features")).to_pyarrow_table()
    features = sorted((place_of[row.pop("seq")], json.dumps(row, default=str, sort_keys=True))
                      for row in features.drop_columns(["processing_time"]).to_pylist())
    return answer["results"], letters, events, features


def test_parallelism_changes_no_value(kafka_broker, tmp_path: Path) -> None:  # noqa: F811
    """The same topic read with 1 and 4 processing threads: identical lookups, dead letters and offline tables."""
    kafka_broker.create_topic(TOPIC, partitions=PARTITIONS)
    lines = _generate(tmp_path, 20_000, seed=5)
    placed = _produce(kafka_broker, lines)
    spec = reference.load_spec(str(_write_spec(tmp_path, kafka_broker.bootstrap)))
    accepted, _, _ = _per_partition_reference(spec, placed)
    entities = sorted({e.entity for e in accepted})
    at = max(e.time_ms for e in accepted) + 1
    runs = []
    for parallelism in (1, 4):
        spec_path = tmp_path / f"spec-{parallelism}.yaml"
        spec_path.write_text(SPEC.format(brokers=kafka_broker.bootstrap, topic=TOPIC, group=f"p{parallelism}",
                                         features=FEATURES_YAML) + f"parallelism: {parallelism}\n")
        runs.append(_run_to_end(spec_path, tmp_path / f"data-{parallelism}", len(placed), entities, at))
    names = ["lookups", "dead letters", "events table", "features table"]
    for name, one, four in zip(names, runs[0], runs[1]):
        assert one == four, f"{name} differ between parallelism 1 and 4"
    assert len(runs[0][2]) == len(accepted) and len(runs[0][3]) == len(accepted)
    # Rows written by 4 threads are still in seq order in every file: a backfill replays them (it refuses files
    # out of seq order) to the same features.
    subprocess.run([BIN, "backfill", "--spec", str(tmp_path / "spec-4.yaml"), "--data-dir", str(tmp_path / "data-4"),
                    "--no-progress"], check=True, timeout=300)

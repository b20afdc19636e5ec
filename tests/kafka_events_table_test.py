"""A Kafka event source and a Kafka compacted-topic table together (what a Kafka shop runs), against a real broker
(tests/kafka_broker.py) and the brute-force reference (tests/reference.py).

Events (table_join_test's workload plus malformed lines) go to a 4-partition topic keyed by user; the profile
table (kafka_table_test's messages: versions before, between and after the events, late ones, tombstones, three
malformed messages; plus a row marked "_deleted": true) to a 3-partition compacted topic. Part of both is
produced before `freshet run` starts, more while it runs; the last third of both is produced interleaved, with a
kill -9 in the middle of it.

Where a version stands among the events is the runtime's choice when both topics grow at once (the table is polled
every 200 ms, between event batches). It records that place, the seq of the first event after the version, in the
table history, and the events table records each event's seq. The reference takes both (reference.
read_partitioned_events: each partition on its own, a version seen by the events with a seq at or after its own),
after the test has checked them: where a phase of the table was read before the next events were produced, the
recorded place is exactly that boundary; within a partition the seqs rise with the offsets. Lookups, every features
row, each key's history, a bit-for-bit backfill and `freshet historical` from the store equal the reference; the
events table holds every accepted message once; the dead letters of both topics name each bad message once; the
group's committed offsets reach the end offsets.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import deltalake
import pytest

import reference
from feature_runs import check_offline_paths, lookup_mismatches, same_value, with_parallelism
from kafka_broker import kafka_broker  # noqa: F401  (the fixture)
from kafka_table_test import TOPIC as TABLE_TOPIC, _live_keys, _phases, _spec
from run_process import get_bytes, start_run, wait_for
from table_join_test import Workload, _crash_once_checkpointed, _metric, _wait_checkpoint_after, _wait_metric

BIN = os.environ.get("FRESHET_BIN", str(Path(__file__).resolve().parent.parent / "build" / "freshet"))
EVENTS_TOPIC = "events"
GROUP = "freshet-joins"
EVENT_PARTITIONS = 4
FILE_EVENTS = "source: {type: file, path: events.jsonl, follow: true}\n"

Message = tuple[bytes | None, bytes | None]
Place = tuple[int, int]


def _events_spec(brokers: str) -> str:
    text = _spec(brokers)
    assert FILE_EVENTS in text
    return text.replace(FILE_EVENTS, f'source: {{type: kafka, brokers: "{brokers}", topic: {EVENTS_TOPIC}, '
                                     f"group: {GROUP}, session_timeout: 10s}}\n")


def _event_batches(work: Workload) -> list[list[Message]]:
    """Each batch's events keyed by user, with malformed ones among them (dead-lettered by place)."""
    batches = [[(e["user"].encode(), json.dumps(e).encode()) for e in batch] for batch in work.batches]
    batches[0][5:5] = [(b"u4", b"not json"), (b"u7", json.dumps({"user": "u7", "amount": 3}).encode())]
    batches[2][40:40] = [(b"u1", b'{"user": "u1", "ts": "yesterday", "amount": 1}'), (b"u2", b"[1, 2]")]
    return batches


def _interleave(a: list[Message], b: list[Message], chunks: int) -> list[tuple[int, list[Message]]]:
    """a and b cut into `chunks` pieces each, alternating: [(0, a piece), (1, b piece), ...]."""
    out = []
    for k in range(chunks):
        out.append((0, a[len(a) * k // chunks:len(a) * (k + 1) // chunks]))
        out.append((1, b[len(b) * k // chunks:len(b) * (k + 1) // chunks]))
    return [(topic, piece) for topic, piece in out if piece]


class Produced:
    """Every message produced so far, by topic and place."""

    def __init__(self, broker):
        self.broker = broker
        self.table: list[tuple[Place, Message]] = []  # in produce order
        self.events: dict[Place, bytes] = {}

    def send(self, pieces: list[tuple[int, list[Message]]]) -> None:
        for topic, messages in pieces:
            places = self.broker.produce(TABLE_TOPIC if topic == 0 else EVENTS_TOPIC, messages)
            if topic == 0:
                self.table += list(zip(places, messages))
            else:
                self.events.update({place: value for place, (_, value) in zip(places, messages)})

    def partitions(self) -> dict[int, list[tuple[int, bytes]]]:
        out: dict[int, list[tuple[int, bytes]]] = {}
        for (partition, offset), value in self.events.items():
            out.setdefault(partition, []).append((offset, value))
        return out


def _recorded_versions(data_dir: Path) -> list[dict]:
    """The table history in arrival order (version)."""
    history = deltalake.DeltaTable(str(data_dir / "offline" / "table_profiles")).to_pyarrow_table()
    return history.sort_by("version").to_pylist()


def _events_table(data_dir: Path) -> list[dict]:
    return deltalake.DeltaTable(str(data_dir / "offline" / "events")).to_pyarrow_table().to_pylist()


@pytest.mark.parametrize("parallelism", [1, 2])
def test_kafka_events_join_a_kafka_table_exactly(kafka_broker, tmp_path: Path, parallelism: int) -> None:  # noqa: F811
    """On one thread, and on two (the partitions' lanes shared among them, each table poll between batches)."""
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}")
    work = Workload(seed=12)
    table_phases = _phases(work)
    table_phases[2].insert(3, (b"u7", b'{"user_id": "u7", "_deleted": true}'))  # A deletion without a tombstone.
    batches = _event_batches(work)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(with_parallelism(_events_spec(kafka_broker.bootstrap), parallelism))
    spec = reference.load_spec(str(spec_path))
    kafka_broker.create_topic(TABLE_TOPIC, partitions=3, config={"cleanup.policy": "compact"})
    kafka_broker.create_topic(EVENTS_TOPIC, partitions=EVENT_PARTITIONS)
    produced = Produced(kafka_broker)

    def accepted_in(messages: list[Message]) -> int:
        return len(reference.read_events(b"".join(v + b"\n" for _, v in messages), spec)[0])

    # Before the start: the table's first phase and the first events. The topic as it stands is read before any
    # event, so its versions stand before seq 0.
    produced.send([(0, table_phases[0]), (1, batches[0])])
    command = [BIN, "run", "--spec", str(spec_path), "--data-dir", str(tmp_path / "data")]
    proc, port = start_run(command, tmp_path / "run1.log", seconds=60)
    lines = len(batches[0])
    _wait_metric(port, "freshet_events_in_total", lines)
    boundaries = {0: 0, 1: accepted_in(batches[0])}  # table phase -> the seq its versions must stand at
    interleaved_from = boundaries[1] + accepted_in(batches[1])  # the last phase's versions stand at or after it

    # While it runs: the second phase, read (the versions counted) before the second events are produced.
    versions_so_far = len(table_phases[0])
    produced.send([(0, table_phases[1])])
    versions_so_far += len(table_phases[1])
    _wait_metric(port, "freshet_table_versions_total", versions_so_far)
    produced.send([(1, batches[1])])
    lines += len(batches[1])
    _wait_metric(port, "freshet_events_in_total", lines)
    proc, port = _crash_once_checkpointed(proc, port, command, tmp_path / "run2.log", seconds=60)

    # The third phase and the last events, interleaved, so the runtime decides where each version stands; a kill -9
    # once the first of these events are read, checkpointed or not.
    pieces = _interleave(table_phases[2], batches[2], chunks=6)
    produced.send(pieces[:6])
    wait_for(lambda: _metric(port, "freshet_events_in_total") > lines, 30, "some of the last events to be read")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc, port = start_run(command, tmp_path / "run3.log", seconds=60)
    produced.send(pieces[6:])
    lines += len(batches[2])
    try:
        _wait_metric(port, "freshet_events_in_total", lines, seconds=60)
        bad_table = sum(1 for _, (key, value) in produced.table
                        if isinstance(reference.kafka_table_version(spec, "profiles", key, value, 0), str))
        assert bad_table == 3
        _wait_metric(port, "freshet_table_versions_total", len(produced.table) - bad_table)
        _wait_metric(port, "freshet_table_rejected_rows_total", bad_table)
        # A checkpoint after everything: the offline rows are committed with it, and the offsets after it.
        _wait_checkpoint_after(port, seconds=60)
        wait_for(lambda: kafka_broker.committed(GROUP, EVENTS_TOPIC) == kafka_broker.end_offsets(EVENTS_TOPIC), 60,
                 "the group's committed offsets to reach the end offsets")
        history = _recorded_versions(tmp_path / "data")
        events_rows = _events_table(tmp_path / "data")
        seq_of = {(r["partition"], r["offset"]): r["seq"] for r in events_rows}
        versions = [reference.TableVersion("profiles", json.loads(h["row"]), h["seq"], h["key"]) for h in history]
        events, dead = reference.read_partitioned_events(spec, produced.partitions(), versions, seq_of)
        assert len(dead) == 4 and len(events) == sum(accepted_in(b) for b in batches)

        # The recorded places: the phases read before events were produced stand exactly at their boundary; the
        # interleaved phase somewhere among the last events.
        _check_history(spec, produced.table, history, table_phases, boundaries, (interleaved_from, len(events)))
        late = reference.late_versions_among(spec, events, versions).get("profiles", 0)
        assert late > 0
        assert _metric(port, "freshet_table_late_versions_total") == late
        assert _metric(port, "freshet_table_keys") == _live_keys(spec, versions)
        # Nothing pruned: a partition's lane may yet bring events older than every other lane's watermark.
        assert _metric(port, "freshet_table_versions_held") == _versions_since_deletion(spec, versions)
        t_end = max(e.time_ms for e in events)
        mismatches = lookup_mismatches(
            lambda user, at: json.loads(get_bytes(port, f"/v1/features/{user}?at={at}")), spec, events, t_end)
        assert not mismatches, "\n".join(mismatches[:20])
        # Explanations replay the events table with the table history too: the joined features agree.
        by_entity = reference.group_by_entity(events)
        for user in ("u3", "u7", "u19", "u1"):
            for feature in spec.features:
                x = json.loads(get_bytes(port, f"/v1/explain/{user}?feature={feature.name}&at={t_end}"))
                expected, _ = reference.feature_value(feature, by_entity[user], t_end, spec)
                if not (x["agrees"] and same_value(expected, x["value"])):
                    mismatches.append(f"explain {user} {feature.name}: reference {expected!r}, {x!r}")
        assert not mismatches, "\n".join(mismatches[:5])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0

    # The events table: every accepted message once, by place; the dead letters: every rejected one once.
    places = [(r["partition"], r["offset"]) for r in events_rows]
    assert len(places) == len(set(places)) == len(events)
    assert set(places) == set(produced.events) - set(dead)
    assert sorted(r["seq"] for r in events_rows) == list(range(len(events)))
    letters = [json.loads(line) for line in
               (tmp_path / "data" / "dead_letters" / "kafka.jsonl").read_bytes().splitlines()]
    assert sorted((d["partition"], d["offset"]) for d in letters) == sorted(dead)
    table_letters = [json.loads(line) for line in
                     (tmp_path / "data" / "dead_letters" / "table_profiles.jsonl").read_bytes().splitlines()]
    assert sorted((d["partition"], d["offset"]) for d in table_letters) == sorted(
        place for place, (key, value) in produced.table
        if isinstance(reference.kafka_table_version(spec, "profiles", key, value, 0), str))

    # Every features row, a backfill bit for bit, and historical from the store.
    streamed = check_offline_paths(spec_path, tmp_path / "data", spec, events, users=(1, 3, 4, 7, 12, 19), every=23)
    assert streamed.column("seq").to_pylist() == [e.line - 1 for e in events]


def _versions_since_deletion(spec: reference.Spec, versions: list[reference.TableVersion]) -> int:
    """The versions (rows) no later deletion of their key dropped."""
    held: dict[str, int] = {}
    for v in versions:
        key = reference.version_key(spec, v)
        held[key] = 0 if v.row is None else held.get(key, 0) + 1
    return sum(held.values())


def _check_history(spec: reference.Spec, table: list[tuple[Place, Message]], history: list[dict],
                   phases: list[list[Message]], boundaries: dict[int, int], interleaved: tuple[int, int]) -> None:
    """Each version once, each key's in produce order (one key, one partition); the versions of each phase in
    `boundaries` at its seq, the other phase's (produced interleaved with events) within `interleaved`."""
    assert [h["version"] for h in history] == list(range(len(history)))
    starts = [sum(len(p) for p in phases[:k]) for k in range(len(phases))]
    produced: dict[str, list] = {}
    for k, (_, (key, value)) in enumerate(table):
        v = reference.kafka_table_version(spec, "profiles", key, value, 0)
        if not isinstance(v, str):
            produced.setdefault(v.key, []).append((v.row, max(p for p, start in enumerate(starts) if start <= k)))
    recorded: dict[str, list] = {}
    for h in history:
        recorded.setdefault(h["key"], []).append((json.loads(h["row"]), h["seq"]))
    assert sorted(recorded) == sorted(produced)
    for key, rows in produced.items():
        assert [row for row, _ in recorded[key]] == [row for row, _ in rows], key
        for (_, seq), (_, phase) in zip(recorded[key], rows):
            if phase in boundaries:
                assert seq == boundaries[phase], (key, phase, seq, boundaries[phase])
            else:
                assert interleaved[0] <= seq <= interleaved[1], (key, phase, seq, interleaved)

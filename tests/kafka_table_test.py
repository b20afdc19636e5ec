"""A reference table read from a compacted Kafka topic (tables[].source: {type: kafka}) against a real broker
(tests/kafka_broker.py) and the brute-force reference (tests/reference.py).

The topic (3 partitions, cleanup.policy=compact) gets the profile versions of table_join_test's workload before
`freshet run` starts, between the event batches (events come from a followed file) and with valid_from before,
between and after the events (late ones too); some rows carry their key only as the message key; tombstones
delete keys before and between the batches (one key comes back later); malformed messages (not JSON, a key field
that names another key, an empty value) go to the table's dead letters with their partition and offset. The run
is killed (kill -9) after a checkpoint and resumes from the checkpoint's offsets. The stream's lookups, its
features table, the table history, a backfill and `freshet historical` from the store all equal the reference
fed the same interleaving. A table whose brokers cannot be reached makes /health degraded with the reason.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import deltalake
import pytest

import reference
from kafka_broker import kafka_broker  # noqa: F401  (the fixture)
from run_process import append_bytes, get_bytes, json_lines, start_run, wait_for
from asof_exact_test import _features_table
from feature_runs import (check_backfill_rewrites_bit_for_bit, features_table_mismatches,
                          historical_store_at_times_mismatches,
                          lookup_mismatches)
from table_join_test import SPEC, Workload, _crash_once_checkpointed, _metric, _reference, _wait_metric

BIN = os.environ.get("FRESHET_BIN", str(Path(__file__).resolve().parent.parent / "build" / "freshet"))
TOPIC = "profiles"
FILE_SOURCE = "    source: {type: file, path: profiles.jsonl}\n"


def _spec(brokers: str, catch_up: str = "30s") -> str:
    assert FILE_SOURCE in SPEC
    return SPEC.replace(FILE_SOURCE, f'    source: {{type: kafka, brokers: "{brokers}", topic: {TOPIC}, '
                                     f"catch_up: {catch_up}}}\n")


def _message(row: dict, key: str | None = None, keep_key_field: bool = True) -> tuple[bytes | None, bytes]:
    key = key if key is not None else row["user_id"]
    body = row if keep_key_field else {k: v for k, v in row.items() if k != "user_id"}
    return key.encode(), json.dumps(body).encode()


def _phases(work: Workload) -> list[list[tuple[bytes | None, bytes | None]]]:
    """The messages produced before batch k (k = 0, 1, 2): the workload's rows plus deletions and bad messages."""
    p0 = [_message(r) for r in work.phases[0]]
    p0 += [_message({"user_id": "u19", "updated_at": 1767225600000 - 2 * 86400000, "segment": "vip",
                     "created_ms": 0}),
           (b"u19", None)]  # Deleted before any event: u19's events see no profile.
    p1 = [_message(r, keep_key_field=k % 2 == 0) for k, r in enumerate(work.phases[1])]
    p1 += [(b"u3", None),  # u3 had versions: its events from batch 2 on see none.
           _message({"user_id": "u19", "updated_at": 1767225600000 - 86400000, "segment": "vip",
                     "created_ms": 1767225600000 - 50 * 86400000})]  # u19 again, late.
    p2 = [_message(r) for r in work.phases[2]]
    p2 += [(b"u1", b"not json"),
           _message({"user_id": "u5", "updated_at": 1767225600000, "segment": "vip"}, key="u2"),
           (b"u6", b""),  # A compacted topic refuses messages without a key; an empty value is no row either.
           (b"u99", None)]  # A deletion of a key the table never had.
    return [p0, p1, p2]


def _versions(spec: reference.Spec, work: Workload, phases) -> tuple[list[reference.TableVersion], int]:
    """The reference's versions (each phase before its batch's first line) and how many messages are no row."""
    versions, bad = [], 0
    for k, phase in enumerate(phases):
        before = sum(len(b) for b in work.batches[:k])
        for key, value in phase:
            v = reference.kafka_table_version(spec, "profiles", key, value, before)
            if isinstance(v, str):
                bad += 1
            else:
                versions.append(v)
    return versions, bad


def _live_keys(spec: reference.Spec, versions: list[reference.TableVersion]) -> int:
    live: set[str] = set()
    for v in versions:
        (live.discard if v.row is None else live.add)(reference.version_key(spec, v))
    return len(live)


def test_kafka_table_joins_equal_the_reference(kafka_broker, tmp_path: Path) -> None:  # noqa: F811
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}")
    work = Workload(seed=12)
    phases = _phases(work)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(_spec(kafka_broker.bootstrap))
    ref_spec = reference.load_spec(str(spec_path))
    versions, bad = _versions(ref_spec, work, phases)
    assert bad == 3
    kafka_broker.create_topic(TOPIC, partitions=3, config={"cleanup.policy": "compact"})
    placed = [kafka_broker.produce(TOPIC, phases[0])]

    (tmp_path / "events.jsonl").write_bytes(b"")
    command = [BIN, "run", "--spec", str(spec_path), "--data-dir", str(tmp_path / "data")]
    proc, port = start_run(command, tmp_path / "run1.log", seconds=60)
    produced = len(phases[0])
    # The topic as it stood at the start came before the first event: read at once, no waiting needed.
    assert _metric(port, "freshet_table_versions_total") == produced
    lines = 0
    for k in range(3):
        if k > 0:
            placed.append(kafka_broker.produce(TOPIC, phases[k]))
            produced += len(phases[k])
            good = sum(1 for v in versions if v.before_line <= lines)
            _wait_metric(port, "freshet_table_versions_total", good)
        append_bytes(tmp_path / "events.jsonl", json_lines(work.batches[k]))
        lines += len(work.batches[k])
        _wait_metric(port, "freshet_events_in_total", lines)
        if k == 1:
            # A crash once everything so far is checkpointed: the restart reads the topic on from the checkpoint's
            # offsets, so no message becomes a version twice.
            proc, port = _crash_once_checkpointed(proc, port, command, tmp_path / "run2.log", seconds=60)
            so_far = [v for v in versions if v.before_line < lines]
            assert _metric(port, "freshet_table_keys") == _live_keys(ref_spec, so_far)
    _wait_metric(port, "freshet_table_rejected_rows_total", bad)

    try:
        spec, events = _reference(spec_path, work.events_bytes(), versions)
        late = reference.late_versions(spec, work.events_bytes(), versions)["profiles"]
        assert late > 0
        assert _metric(port, "freshet_table_late_versions_total") == late
        assert _metric(port, "freshet_table_keys") == _live_keys(spec, versions)
        # Lookups as of the last event.
        t_end = events[-1].time_ms
        mismatches = lookup_mismatches(
            lambda user, at: json.loads(get_bytes(port, f"/v1/features/{user}?at={at}")), spec, events, t_end)
        assert not mismatches, "\n".join(mismatches[:20])
        # The deletion mattered: u3 ends without a profile.
        assert reference.joined_row(spec, "profiles", "u3", t_end, lines + 1, versions) is None
        assert reference.joined_row(spec, "profiles", "u3", t_end, len(work.batches[0]), versions) is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0

    # Dead letters: each bad message once (across the restart), with its partition, offset and reason.
    letters = [json.loads(line) for line in
               (tmp_path / "data" / "dead_letters" / "table_profiles.jsonl").read_bytes().splitlines()]
    bad_places = [placed[2][k] for k in range(len(work.phases[2]), len(work.phases[2]) + 3)]
    assert sorted((d["partition"], d["offset"]) for d in letters) == sorted(bad_places)
    assert all(d["source"] == TOPIC and d["reason"] for d in letters)
    assert any("message key" in d["reason"] for d in letters)

    # The features table: each event's row as of its time over the events up to it.
    streamed = _features_table(tmp_path / "data")
    assert streamed.column("seq").to_pylist() == list(range(len(events)))
    mismatches = features_table_mismatches(spec, streamed.to_pylist(), events)
    assert not mismatches, "\n".join(mismatches[:20])

    # The history: every version once (deletions as row "null"), at the seq of the first event after it. Across
    # partitions the arrival order is the broker's; per key (one partition) it is the produce order.
    history_dir = tmp_path / "data" / "offline" / "table_profiles"
    history = deltalake.DeltaTable(str(history_dir)).to_pyarrow_table().sort_by("version").to_pylist()
    assert [h["version"] for h in history] == list(range(len(versions)))

    def per_key(items):
        out: dict[str, list] = {}
        for key, seq, row in items:
            out.setdefault(key, []).append((seq, row))
        return out
    assert per_key((h["key"], h["seq"], json.loads(h["row"])) for h in history) == \
        per_key((reference.version_key(spec, v), v.before_line, v.row) for v in versions)

    # A backfill from the store replays the recorded arrival order, deletions included: the same features table.
    check_backfill_rewrites_bit_for_bit(spec_path, tmp_path / "data", streamed)

    # `freshet historical` from the store likewise, at times between and after the events (deleted keys included).
    mismatches += historical_store_at_times_mismatches(spec_path, tmp_path / "data", spec, events,
                                                       users=(1, 3, 4, 19, 12), every=29)
    assert not mismatches, "\n".join(mismatches[:20])


def test_an_empty_topic_is_caught_up_at_once(kafka_broker, tmp_path: Path) -> None:  # noqa: F811
    """Every partition's end is known even when it holds nothing: the start does not wait out catch_up."""
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}")
    kafka_broker.create_topic(TOPIC, partitions=2, config={"cleanup.policy": "compact"})
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(_spec(kafka_broker.bootstrap, catch_up="5m"))
    (tmp_path / "events.jsonl").write_bytes(b"")
    proc, port = start_run([BIN, "run", "--spec", str(spec_path), "--data-dir", str(tmp_path / "data")],
                           tmp_path / "run.log", seconds=60)
    try:
        assert "catch_up" not in (tmp_path / "run.log").read_text()
        kafka_broker.produce(TOPIC, [_message({"user_id": "a", "updated_at": 1, "segment": "vip"})])
        _wait_metric(port, "freshet_table_versions_total", 1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_unreachable_brokers_make_health_degraded(tmp_path: Path) -> None:
    """Nothing listens at the table's brokers: `freshet run` starts after catch_up and /health says why."""
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # Closed again: nothing listens there.
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(_spec(f"127.0.0.1:{port}", catch_up="1s"))
    (tmp_path / "events.jsonl").write_bytes(b"")
    proc, http_port = start_run([BIN, "run", "--spec", str(spec_path), "--data-dir", str(tmp_path / "data")],
                                tmp_path / "run.log")
    try:
        import urllib.error
        import urllib.request

        def health() -> dict | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=10) as r:
                    body = r.read()
            except urllib.error.HTTPError as e:  # 503 while degraded
                body = e.read()
            answer = json.loads(body)
            return answer if answer.get("status") == "degraded" and "table 'profiles'" in body.decode() else None
        answer = wait_for(health, 30, "/health to say the table's brokers cannot be reached")
        assert "Kafka" in json.dumps(answer)
        assert "catch_up" in (tmp_path / "run.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_kafka_table_spec_errors_name_the_line(tmp_path: Path) -> None:
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(_spec("127.0.0.1:9").replace(f", topic: {TOPIC}", ", path: profiles.jsonl"))
    result = subprocess.run([BIN, "validate", "--spec", str(spec_path)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "missing required key 'topic'" in result.stderr
    assert "'path' does not apply when type is kafka" in result.stderr

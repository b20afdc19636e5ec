"""Reference tables joined to the stream, exact in time, against the brute-force reference (tests/reference.py).

A profile table changes while events stream: versions before the first event, between batches, valid from before,
between and after the events, and late ones (valid_from already passed by the stream). Features filter and
aggregate on joined fields (profiles.segment) and on a field derived from one (account_age_d from
profiles.created_ms). The stream's lookups, its features table, a backfill and `freshet historical` from the offline
store all equal the reference fed the same interleaving; `freshet historical --events --table` equals the reference
with every version known up front. The run is killed (kill -9) once after a checkpoint and resumes.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import deltalake
import pytest

import reference
from feature_runs import features_table_mismatches, lookup_mismatches, with_parallelism
from run_process import start_run
from run_process import append_bytes as _append, get_bytes as _get, json_lines as _lines

BIN = os.environ.get("FRESHET_BIN", str(Path(__file__).resolve().parent.parent / "build" / "freshet"))

SPEC = """name: joins
entity: user
timestamp: ts
watermark: {max_out_of_orderness: 1s, allowed_lateness: 1s}
source: {type: file, path: events.jsonl, follow: true}
serve: {port: 0}
checkpoint: {interval: 300ms}
tables:
  - name: profiles
    key: user_id
    valid_from: updated_at
    source: {type: file, path: profiles.jsonl}
joins:
  - {table: profiles, on: user}
derive:
  - {name: account_age_d, expr: "(ts - profiles.created_ms) / 86400000"}
features:
  - {name: vip_spend, aggregation: sum, field: amount, where: "profiles.segment == 'vip'", window: {type: lifetime}}
  - {name: last_segment, aggregation: last, field: profiles.segment, window: {type: lifetime}}
  - {name: max_age_d, aggregation: max, field: account_age_d, window: {type: sliding, size: 1h}}
  - {name: n_old_accounts, aggregation: count, where: "account_age_d > 30", window: {type: lifetime}}
  - {name: n_events, aggregation: count, window: {type: lifetime}}
"""

T0 = 1767225600000  # 2026-01-01T00:00:00Z
DAY = 86400000
SEGMENTS = ["vip", "basic", "new"]


def _require_binary() -> None:
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")


class Workload:
    """Events in time order in three batches, and profile versions before and between them."""

    def __init__(self, seed: int):
        rng = random.Random(seed)
        self.batches: list[list[dict]] = []
        t = T0
        for _ in range(3):
            batch = []
            for _ in range(120):
                t += rng.randint(1, 20) * 1000
                batch.append({"user": f"u{rng.randint(0, 19)}", "ts": t, "amount": rng.randint(1, 100)})
            self.batches.append(batch)
        ends = [b[-1]["ts"] for b in self.batches]

        def row(user: int, valid_from: int) -> dict:
            return {"user_id": f"u{user}", "updated_at": valid_from, "segment": rng.choice(SEGMENTS),
                    "created_ms": T0 - rng.randint(0, 90) * DAY}

        # Before any event: some valid from before the first event, some from inside each batch (not late: no
        # event has reached them yet), one as RFC 3339 text.
        self.phases: list[list[dict]] = [
            [row(u, T0 - DAY) for u in range(0, 6)]
            + [row(u, rng.randint(T0, ends[0])) for u in range(3, 9)]
            + [row(u, rng.randint(ends[0], ends[2])) for u in range(0, 10, 3)],
        ]
        self.phases[0].append({"user_id": "u9", "updated_at": "2026-01-01T00:10:00Z", "segment": "vip",
                               "created_ms": T0 - 40 * DAY})
        # After batch 1: late versions (valid_from inside batch 1) and future ones.
        self.phases.append([row(u, rng.randint(T0, ends[0])) for u in range(0, 8, 2)]
                           + [row(u, rng.randint(ends[0] + 1, ends[1])) for u in range(10, 16)])
        # After batch 2: new users, late versions, a version without a key (rejected, not in the reference).
        self.phases.append([row(u, rng.randint(T0, ends[1])) for u in range(12, 18)]
                           + [row(u, ends[1] + 1) for u in (1, 2)])
        self.bad_row = {"updated_at": ends[1], "segment": "vip"}

    def versions(self, up_front: bool = False) -> list[reference.TableVersion]:
        """The versions with where they arrived: phase k before the first line of batch k."""
        out: list[reference.TableVersion] = []
        for k, phase in enumerate(self.phases):
            before = 0 if up_front else sum(len(b) for b in self.batches[:k])
            out += reference.table_versions("profiles", phase, before)
        return out

    def events_bytes(self) -> bytes:
        return b"".join(_lines(b) for b in self.batches)


def _metric(port: int, name: str) -> float:
    total = 0.0
    for line in _get(port, "/metrics").decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait_metric(port: int, name: str, value: float, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        got = _metric(port, name)
        if got >= value:
            assert got == value, f"{name}: {got}, expected {value}"
            return
        assert time.monotonic() < deadline, f"{name} stayed at {got}, waiting for {value}"
        time.sleep(0.05)


def _wait_checkpoint_after(port: int, seconds: float = 30) -> None:
    """Waits until a checkpoint starts and completes after this call."""
    seen = _metric(port, "freshet_checkpoints_total")
    # The counter counts checkpoints written: the first one counted after this call may have started before it
    # (its state cut before the last events; seen with a Kafka source), so the second one.
    _wait_metric_above(port, "freshet_checkpoints_total", seen + 2, seconds)


def _crash_once_checkpointed(proc, port: int, command: list[str], log: Path,
                             seconds: float = 30) -> tuple[subprocess.Popen, int]:
    """kill -9 once everything read so far is checkpointed, then the same command again: its process and port."""
    _wait_checkpoint_after(port)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return start_run(command, log, seconds=seconds)


def _wait_metric_above(port: int, name: str, value: float, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while _metric(port, name) < value:
        assert time.monotonic() < deadline, f"{name} did not reach {value}"
        time.sleep(0.05)


def _answer_of(port: int):
    return lambda entity, at_ms: json.loads(_get(port, f"/v1/features/{entity}?at={at_ms}"))


def _reference(spec_path: Path, data: bytes, versions) -> tuple[reference.Spec, list[reference.Event]]:
    spec = reference.load_spec(str(spec_path))
    events, dead = reference.read_events(data, spec, versions)
    assert not dead
    return spec, events


def _stream(tmp: Path, work: Workload, parallelism: int) -> int:
    """Runs the workload through `freshet run` (on `parallelism` threads) with a kill -9 after batch 2; returns the
    port of the last run (still running)."""
    spec = tmp / "spec.yaml"
    spec.write_text(with_parallelism(SPEC, parallelism))
    (tmp / "profiles.jsonl").write_bytes(_lines(work.phases[0]))
    (tmp / "events.jsonl").write_bytes(b"")
    command = [BIN, "run", "--spec", str(spec), "--data-dir", str(tmp / "data")]
    proc, port = start_run(command, tmp / "run1.log")
    versions = len(work.phases[0])
    _wait_metric(port, "freshet_table_versions_total", versions)
    lines = 0
    for k in range(3):
        if k > 0:
            body = _lines(work.phases[k]) + (_lines([work.bad_row]) if k == 2 else b"")
            _append(tmp / "profiles.jsonl", body)
            versions += len(work.phases[k])
            _wait_metric(port, "freshet_table_versions_total", versions)
            if k == 2:
                _wait_metric(port, "freshet_table_rejected_rows_total", 1)
        _append(tmp / "events.jsonl", _lines(work.batches[k]))
        lines += len(work.batches[k])
        _wait_metric(port, "freshet_events_in_total", lines)
        if k == 1:
            # A crash once everything so far is checkpointed: the restart restores the tables from the checkpoint
            # and reads neither file again from its start.
            proc, port = _crash_once_checkpointed(proc, port, command, tmp / "run2.log")
            assert _metric(port, "freshet_table_keys") == len({r["user_id"] for p in work.phases[:2] for r in p})
    _stream.proc = proc  # type: ignore[attr-defined]
    return port


@pytest.mark.parametrize("parallelism", [0, 2])
def test_joins_equal_the_reference_live_in_the_store_and_in_replays(tmp_path: Path, parallelism: int) -> None:
    """On one thread and on two shards (whose parsers join the tables)."""
    _require_binary()
    work = Workload(seed=12)
    port = _stream(tmp_path, work, parallelism)
    proc = _stream.proc  # type: ignore[attr-defined]
    spec_path = tmp_path / "spec.yaml"
    ref_spec, events = _reference(spec_path, work.events_bytes(), work.versions())
    assert len(events) == 360

    # Late table data, counted as the reference counts it (the counters continue across the restart).
    late = reference.late_versions(ref_spec, work.events_bytes(), work.versions())["profiles"]
    assert late > 0
    assert _metric(port, "freshet_table_late_versions_total") == late
    assert _metric(port, "freshet_table_rejected_rows_total") == 1

    # Stream lookups as of the last event (exact: at the newest event or later).
    mismatches = lookup_mismatches(_answer_of(port), ref_spec, events, events[-1].time_ms)
    assert not mismatches, "\n".join(mismatches[:20])

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0

    # The features table: each event's row as of its time over the events up to it (events are in time order).
    offline = tmp_path / "data" / "offline"
    rows = deltalake.DeltaTable(str(offline / "features")).to_pyarrow_table().sort_by("seq").to_pylist()
    assert [r["seq"] for r in rows] == list(range(len(events)))
    mismatches = features_table_mismatches(ref_spec, rows, events)
    assert not mismatches, "\n".join(mismatches[:20])

    # The table's history: every version once, at the seq of the first event after it.
    history = deltalake.DeltaTable(str(offline / "table_profiles")).to_pyarrow_table().sort_by("version").to_pylist()
    assert [(h["seq"], json.loads(h["row"])) for h in history] == [(v.before_line, v.row) for v in work.versions()]
    assert [h["version"] for h in history] == list(range(len(history)))

    # A backfill from the store replays the recorded arrival order: the very same features table.
    streamed = deltalake.DeltaTable(str(offline / "features")).to_pyarrow_table().drop_columns(["processing_time"])
    subprocess.run([BIN, "backfill", "--spec", str(spec_path), "--data-dir", str(tmp_path / "data"),
                    "--no-progress", "--no-checkpoint"], check=True)
    backfilled = deltalake.DeltaTable(str(offline / "features")).to_pyarrow_table().drop_columns(["processing_time"])
    assert backfilled.sort_by("seq").equals(streamed.sort_by("seq"))

    # Historical from the store and from files, for rows between and after the events.
    times = sorted({e.time_ms for e in events})
    rows_csv = tmp_path / "rows.csv"
    keys = [(f"u{u}", times[k] + 500) for u in range(20) for k in range(0, len(times), 37)]
    rows_csv.write_text("user,ts\n" + "".join(f"{u},{t}\n" for u, t in keys))
    entity_rows = reference.read_entity_rows(str(rows_csv), ref_spec)

    def historical(extra: list[str], out: Path) -> list[dict]:
        subprocess.run([BIN, "historical", "--spec", str(spec_path), "--entities", str(rows_csv), "--output",
                        str(out), "--no-progress", *extra], check=True)
        import csv
        with open(out, newline="") as f:
            return list(csv.DictReader(f))

    def compare(label: str, got: list[dict], ref_events: list[reference.Event]) -> None:
        expected = reference.compute(ref_spec, ref_events, entity_rows)
        for row, values in zip(got, expected):
            for feature, value in zip(ref_spec.features, values):
                cell = row[feature.name]
                want = reference.format_value(value)
                if feature.aggregation in ("last",) or want == "" or cell == "":
                    ok = cell == want
                else:
                    ok = math.isclose(float(cell), float(want), rel_tol=1e-9, abs_tol=1e-9)
                if not ok:
                    mismatches.append(f"{label} {row['user']}@{row['ts']} {feature.name}: reference {want!r}, got {cell!r}")
        assert not mismatches, "\n".join(mismatches[:20])

    compare("historical (store)", historical(["--data-dir", str(tmp_path / "data")], tmp_path / "h_store.csv"),
            events)
    # From files, every version known up front: the greatest valid_from <= t. The bad row makes the file an error
    # that names its line; a clean copy is read.
    result = subprocess.run([BIN, "historical", "--spec", str(spec_path), "--entities", str(rows_csv), "--output",
                             str(tmp_path / "bad.csv"), "--events", str(tmp_path / "events.jsonl"), "--table",
                             f"profiles={tmp_path / 'profiles.jsonl'}"], capture_output=True, text=True)
    bad_line = sum(len(p) for p in work.phases) + 1
    assert result.returncode == 2
    assert f"profiles.jsonl:{bad_line}: field 'user_id' (the key of table 'profiles') is missing" in result.stderr
    (tmp_path / "clean.jsonl").write_bytes(b"".join(_lines(p) for p in work.phases))
    _, up_front = _reference(spec_path, work.events_bytes(), work.versions(up_front=True))
    compare("historical (files)",
            historical(["--events", str(tmp_path / "events.jsonl"), "--table", f"profiles={tmp_path / 'clean.jsonl'}"],
                       tmp_path / "h_files.csv"), up_front)
    # The two differ: late versions apply to earlier events only when known up front.
    assert reference.compute(ref_spec, up_front, entity_rows) != reference.compute(ref_spec, events, entity_rows)


def test_put_rows_are_durable_and_joined(tmp_path: Path) -> None:
    """PUT /v1/tables/{name}: acknowledged rows are in the put log and become versions that later events join."""
    _require_binary()
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("    source: {type: file, path: profiles.jsonl}\n", ""))
    (tmp_path / "events.jsonl").write_bytes(b"")
    proc, port = start_run([BIN, "run", "--spec", str(spec), "--data-dir", str(tmp_path / "data")],
                           tmp_path / "run.log")
    try:
        body = (json.dumps({"user_id": "a", "updated_at": T0, "segment": "vip", "created_ms": T0 - 50 * DAY}) + "\n" +
                json.dumps({"segment": "basic"}) + "\n").encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/tables/profiles", data=body, method="PUT")
        with urllib.request.urlopen(request, timeout=10) as r:
            answer = json.loads(r.read())
        assert answer["accepted"] == 1 and answer["rejected"] == 1
        assert answer["errors"][0]["line"] == 2 and "user_id" in answer["errors"][0]["reason"]
        assert (tmp_path / "data" / "tables" / "profiles.jsonl").read_bytes().count(b"\n") == 1
        _wait_metric(port, "freshet_table_versions_total", 1)
        _append(tmp_path / "events.jsonl", _lines([{"user": "a", "ts": T0 + 1000, "amount": 7}]))
        _wait_metric(port, "freshet_events_in_total", 1)
        answer = json.loads(_get(port, f"/v1/features/a?at={T0 + 1000}"))
        assert answer["features"]["vip_spend"] == 7
        assert answer["features"]["last_segment"] == "vip"
        assert answer["features"]["n_old_accounts"] == 1
        missing = urllib.request.Request(f"http://127.0.0.1:{port}/v1/tables/nope", data=b"{}", method="PUT")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(missing, timeout=10)
        assert err.value.code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.mark.parametrize("fork", [True, False])
def test_rows_added_after_a_checkpoint_are_in_the_next_one_across_kill9(tmp_path: Path, fork: bool) -> None:
    """A checkpoint of tables unchanged since the last one reuses that one's encoded versions: rows added in between
    must make the next checkpoint encode them again. A checkpoint, new rows (a new key, a newer version of an old
    one; no event, so nothing is pruned), a checkpoint, kill -9: the restart holds every version (the file is not
    read again: its offset is restored) and events join them. The tables are encoded by the forked child, or (a
    process that cannot fork) on the processing thread."""
    _require_binary()
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    row = lambda user, at, segment: {"user_id": user, "updated_at": at, "segment": segment,  # noqa: E731
                                     "created_ms": T0 - 40 * DAY}
    (tmp_path / "profiles.jsonl").write_bytes(_lines([row("a", T0, "vip")]))
    (tmp_path / "events.jsonl").write_bytes(b"")
    command = [BIN, "run", "--spec", str(spec), "--data-dir", str(tmp_path / "data")]
    if not fork:
        command = ["env", "FRESHET_TEST_FORK_FAILS=1"] + command
    proc, port = start_run(command, tmp_path / "run1.log")
    try:
        _wait_metric(port, "freshet_table_versions_total", 1)
        _wait_checkpoint_after(port)
        _append(tmp_path / "profiles.jsonl", _lines([row("b", T0, "basic"), row("a", T0 + 10_000, "basic")]))
        _wait_metric(port, "freshet_table_versions_total", 3)
        proc, port = _crash_once_checkpointed(proc, port, command, tmp_path / "run2.log")
        assert _metric(port, "freshet_table_keys") == 2
        assert _metric(port, "freshet_table_versions_held") == 3
        events = [{"user": "a", "ts": T0 + 1000, "amount": 5}, {"user": "b", "ts": T0 + 2000, "amount": 7},
                  {"user": "a", "ts": T0 + 20_000, "amount": 11}]
        _append(tmp_path / "events.jsonl", _lines(events))
        _wait_metric(port, "freshet_events_in_total", 3)
        a = json.loads(_get(port, f"/v1/features/a?at={T0 + 20_000}"))["features"]
        b = json.loads(_get(port, f"/v1/features/b?at={T0 + 20_000}"))["features"]
        assert (a["vip_spend"], a["last_segment"], a["n_events"]) == (5, "basic", 2)
        assert (b["vip_spend"], b["last_segment"], b["n_old_accounts"]) == (0, "basic", 1)
        assert (b"cannot fork" in (tmp_path / "run1.log").read_bytes()) == (not fork)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _wait_metric_equal(port: int, name: str, value: float, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while (got := _metric(port, name)) != value:
        assert time.monotonic() < deadline, f"{name} stayed at {got}, waiting for {value}"
        time.sleep(0.05)


@pytest.mark.parametrize("parallelism", [0, 2])
def test_versions_the_watermark_passed_are_pruned_and_values_stay_exact(tmp_path: Path, parallelism: int) -> None:
    """Each key has a version every minute; as the low watermark (M - 1s - 1s) passes them, the live table drops
    the versions no future event can see: the versions held equal the reference's count of visible ones, stay far
    below the versions received, and every feature still equals the reference (which never prunes). The offline
    history keeps every version. With `parallelism: 2` (the sharded file source) the input's clock decides."""
    _require_binary()
    rng = random.Random(7)
    users, minutes = 12, 40
    rows = [{"user_id": f"u{u}", "updated_at": T0 + m * 60000, "segment": rng.choice(SEGMENTS),
             "created_ms": T0 - rng.randint(0, 90) * DAY} for m in range(minutes) for u in range(users)]
    rng.shuffle(rows)
    batches, t = [], T0
    for _ in range(3):
        batch = []
        for _ in range(200):
            t += rng.randint(1, 5000)
            batch.append({"user": f"u{rng.randrange(users)}", "ts": t, "amount": rng.randint(1, 100)})
        batches.append(batch)
    assert T0 + minutes * 60000 / 2 < t < T0 + minutes * 60000
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC + f"parallelism: {parallelism}\n")
    (tmp_path / "profiles.jsonl").write_bytes(_lines(rows))
    (tmp_path / "events.jsonl").write_bytes(b"")
    proc, port = start_run([BIN, "run", "--spec", str(spec), "--data-dir", str(tmp_path / "data")],
                           tmp_path / "run.log")
    try:
        versions = reference.table_versions("profiles", rows, 0)
        ref_spec = reference.load_spec(str(spec))
        _wait_metric(port, "freshet_table_versions_total", len(rows))
        _wait_metric_equal(port, "freshet_table_versions_held", len(rows))  # No event yet: nothing pruned.
        lines = 0
        for batch in batches:
            _append(tmp_path / "events.jsonl", _lines(batch))
            lines += len(batch)
            _wait_metric(port, "freshet_events_in_total", lines)
            horizon = max(e["ts"] for e in [x for b in batches for x in b][:lines]) - 2000  # M - 1s - 1s
            held = reference.visible_versions(ref_spec, "profiles", versions, horizon)
            _wait_metric_equal(port, "freshet_table_versions_held", held)
        assert held < len(rows) / 2
        _, events = _reference(spec, b"".join(_lines(b) for b in batches), versions)
        mismatches = lookup_mismatches(_answer_of(port), ref_spec, events, events[-1].time_ms)
        assert not mismatches, "\n".join(mismatches[:20])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    # The features table, row by row, against the reference (each event's values as of its time).
    offline = tmp_path / "data" / "offline"
    table = deltalake.DeltaTable(str(offline / "features")).to_pyarrow_table().sort_by("seq").to_pylist()
    assert len(table) == len(events)
    mismatches = features_table_mismatches(ref_spec, table, events)
    assert not mismatches, "\n".join(mismatches[:20])
    history = deltalake.DeltaTable(str(offline / "table_profiles")).to_pyarrow_table()
    assert history.num_rows == len(rows)


def _write_parquet(path: Path, rows: list[dict]) -> None:
    """Writes `rows` as a Parquet file (updated_at a timestamp column, active a boolean one; a key absent from a
    row is a null cell) beside `path`, then renames it over `path`, as the README says to replace a table file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    columns = {
        "user_id": pa.array([r["user_id"] for r in rows], pa.string()),
        "updated_at": pa.array([r["updated_at"] for r in rows], pa.timestamp("ms")),
        "segment": pa.array([r.get("segment") for r in rows], pa.string()),
        "created_ms": pa.array([r["created_ms"] for r in rows], pa.int64()),
        "active": pa.array([r["active"] for r in rows], pa.bool_()),
    }
    temporary = path.with_suffix(".tmp")
    pq.write_table(pa.table(columns), temporary)
    os.replace(temporary, path)


def test_parquet_table_file_is_read_again_when_replaced(tmp_path: Path) -> None:
    """A Parquet table file replaced while events stream: changed and new rows become versions where the new file
    was read, unchanged rows do not, a key left out keeps its last version; lookups equal the reference."""
    _require_binary()
    rng = random.Random(5)

    def row(u: int, valid_from: int) -> dict:
        r = {"user_id": f"u{u}", "updated_at": valid_from, "segment": rng.choice(SEGMENTS),
             "created_ms": T0 - rng.randint(0, 90) * DAY, "active": rng.random() < 0.5}
        return r

    first = [row(u, T0 - DAY) for u in range(8)] + [row(u, T0 + 30000) for u in range(0, 8, 3)]
    del first[4]["segment"]  # A null cell: the joined segment is missing.
    batches, t = [], T0
    for _ in range(2):
        batch = []
        for _ in range(80):
            t += rng.randint(1, 1500)
            batch.append({"user": f"u{rng.randrange(10)}", "ts": t, "amount": rng.randint(1, 100)})
        batches.append(batch)
    # The replacement: u1 left out, u0 and u5 changed (u5 late: valid from inside batch 1), u8 and u9 new, the
    # rest unchanged.
    second = [r for r in first if r["user_id"] != "u1"]
    second[0] = row(0, batches[0][-1]["ts"] + 1)
    second = [r if r["user_id"] != "u5" else row(5, batches[0][10]["ts"]) for r in second]
    second += [row(8, T0), row(9, batches[1][5]["ts"])]
    changed = [r for r in second if r not in first]
    assert len(changed) == 4

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("source: {type: file, path: profiles.jsonl}",
                                 "source: {type: file, path: profiles.parquet, format: parquet}")
                    + '  - {name: n_active, aggregation: count, where: "profiles.active == true", '
                      'window: {type: lifetime}}\n')
    _write_parquet(tmp_path / "profiles.parquet", first)
    (tmp_path / "events.jsonl").write_bytes(b"")
    proc, port = start_run([BIN, "run", "--spec", str(spec), "--data-dir", str(tmp_path / "data")],
                           tmp_path / "run.log")
    try:
        _wait_metric(port, "freshet_table_versions_total", len(first))
        _append(tmp_path / "events.jsonl", _lines(batches[0]))
        _wait_metric(port, "freshet_events_in_total", len(batches[0]))
        _write_parquet(tmp_path / "profiles.parquet", second)
        _wait_metric(port, "freshet_table_versions_total", len(first) + len(changed))
        _append(tmp_path / "events.jsonl", _lines(batches[1]))
        _wait_metric(port, "freshet_events_in_total", len(batches[0]) + len(batches[1]))
        # A crash after a checkpoint: the restart finds the file it had read, learns its rows and adds none again.
        _wait_checkpoint_after(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc, port = start_run([BIN, "run", "--spec", str(spec), "--data-dir", str(tmp_path / "data")],
                               tmp_path / "run2.log")
        _wait_metric(port, "freshet_events_in_total", len(batches[0]) + len(batches[1]))
        _wait_checkpoint_after(port)  # Table polls have run since the restart.
        assert _metric(port, "freshet_table_versions_total") == len(first) + len(changed)
        versions = (reference.table_versions("profiles", first, 0)
                    + reference.table_versions("profiles", changed, len(batches[0])))
        ref_spec, events = _reference(spec, b"".join(_lines(b) for b in batches), versions)
        late = reference.late_versions(ref_spec, b"".join(_lines(b) for b in batches), versions)["profiles"]
        assert late >= 1
        assert _metric(port, "freshet_table_late_versions_total") == late
        mismatches = lookup_mismatches(_answer_of(port), ref_spec, events, events[-1].time_ms)
        assert not mismatches, "\n".join(mismatches[:20])
        assert "u1" in {e.entity for e in events[len(batches[0]):]}, "the left-out key must be joined after"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

    # `freshet historical --table profiles=FILE.parquet`: the file's rows, all known up front.
    import csv
    rows_csv = tmp_path / "rows.csv"
    keys = [(f"u{u}", batches[k][-1]["ts"] + 1) for u in range(10) for k in range(2)]
    rows_csv.write_text("user,ts\n" + "".join(f"{u},{t}\n" for u, t in keys))
    out = tmp_path / "h.csv"
    subprocess.run([BIN, "historical", "--spec", str(spec), "--entities", str(rows_csv), "--output", str(out),
                    "--no-progress", "--events", str(tmp_path / "events.jsonl"), "--table",
                    f"profiles={tmp_path / 'profiles.parquet'}"], check=True)
    with open(out, newline="") as f:
        got = list(csv.DictReader(f))
    _, up_front = _reference(spec, b"".join(_lines(b) for b in batches),
                             reference.table_versions("profiles", second, 0))
    expected = reference.compute(ref_spec, up_front, reference.read_entity_rows(str(rows_csv), ref_spec))
    assert len(got) == len(expected) == len(keys)
    for row, values in zip(got, expected):
        for feature, value in zip(ref_spec.features, values):
            want, cell = reference.format_value(value), row[feature.name]
            exact = feature.aggregation == "last" or want == "" or cell == ""
            ok = cell == want if exact else math.isclose(float(cell), float(want), rel_tol=1e-9)
            if not ok:
                mismatches.append(f"historical {row['user']}@{row['ts']} {feature.name}: reference {want!r}, "
                                  f"got {cell!r}")
    assert not mismatches, "\n".join(mismatches[:20])

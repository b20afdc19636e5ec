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
from feature_runs import with_parallelism
from run_process import start_run

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


def _lines(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read()


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
    _wait_metric_above(port, "freshet_checkpoints_total", seen + 1, seconds)


def _wait_metric_above(port: int, name: str, value: float, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while _metric(port, name) < value:
        assert time.monotonic() < deadline, f"{name} did not reach {value}"
        time.sleep(0.05)


def _same(expected, got) -> bool:
    if expected is None or expected is reference.MISSING:
        return got is None or (isinstance(got, float) and math.isnan(got))
    if got is None:
        return False
    if isinstance(expected, str):
        return got == expected
    return math.isclose(float(expected), float(got), rel_tol=1e-9, abs_tol=1e-9)


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
            _wait_checkpoint_after(port)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc, port = start_run(command, tmp / "run2.log")
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
    t_end = events[-1].time_ms
    by_user = reference.group_by_entity(events)
    mismatches = []
    for user, user_events in sorted(by_user.items()):
        answer = json.loads(_get(port, f"/v1/features/{user}?at={t_end}"))
        assert answer["exact"] is True
        for feature in ref_spec.features:
            expected, _ = reference.feature_value(feature, user_events, t_end, ref_spec)
            got = answer["features"][feature.name]
            if not _same(expected, got):
                mismatches.append(f"lookup {user} {feature.name}: reference {expected!r}, stream {got!r}")
    assert not mismatches, "\n".join(mismatches[:20])

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0

    # The features table: each event's row as of its time over the events up to it (events are in time order).
    offline = tmp_path / "data" / "offline"
    rows = deltalake.DeltaTable(str(offline / "features")).to_pyarrow_table().sort_by("seq").to_pylist()
    assert [r["seq"] for r in rows] == list(range(len(events)))
    prefix: dict[str, list[reference.Event]] = {}
    for row, event in zip(rows, events):
        prefix.setdefault(event.entity, []).append(event)
        for feature in ref_spec.features:
            expected, _ = reference.feature_value(feature, prefix[event.entity], event.time_ms, ref_spec)
            if not _same(expected, row[feature.name]):
                mismatches.append(f"seq {row['seq']} {feature.name}: reference {expected!r}, table {row[feature.name]!r}")
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

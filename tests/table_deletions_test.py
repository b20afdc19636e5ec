"""Deleting a key of a reference table from a table file or with PUT /v1/tables/{name}: a row
{"<key>": "k", "_deleted": true}, as a Kafka tombstone deletes (README: "Reference tables and joins", Deletions).

table_join_test's workload and spec (a followed JSON-lines table file, events between its phases) gain deletions:
u19 deleted in the file before any event, u3 deleted by an appended line after the first events, u5 deleted and u19
given a row again with PUT after the second batch; a row whose `_deleted` is neither true nor false is rejected.
A kill -9 after a checkpoint. The stream's lookups, every features row, the history (deletions as row null), a
backfill bit for bit and `freshet historical` from the store equal the reference fed the same arrival order; from
files (`--events --table`, every row known before the first event, in file order) a deletion hides the key's rows
listed before it.
"""
from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import deltalake
import pyarrow as pa
import pyarrow.parquet as pq

import reference
from feature_runs import check_offline_paths, historical_store_mismatches, lookup_mismatches
from run_process import append_bytes, get_bytes, json_lines, start_run
from table_join_test import (BIN, DAY, SPEC, T0, Workload, _crash_once_checkpointed, _metric, _reference,
                             _require_binary, _wait_metric)


def _phases(work: Workload) -> list[list[dict]]:
    """The rows before batch k: the workload's, with deletions. Phase 2 is sent with PUT."""
    p0 = work.phases[0] + [{"user_id": "u19", "updated_at": T0 - 2 * DAY, "segment": "vip", "created_ms": 0},
                           {"user_id": "u19", "_deleted": True}]  # Deleted before any event.
    p1 = work.phases[1] + [{"user_id": "u3", "_deleted": True, "segment": "ignored"},  # u3 had versions.
                           {"user_id": "u7", "_deleted": False, "updated_at": T0, "segment": "vip", "created_ms": 0}]
    p2 = work.phases[2] + [{"user_id": "u5", "_deleted": True},
                           {"user_id": "u19", "updated_at": T0 - DAY, "segment": "vip", "created_ms": T0 - 50 * DAY}]
    return [p0, p1, p2]


BAD_ROW = {"user_id": "u4", "_deleted": "yes"}


def _put(port: int, rows: list[dict]) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/tables/profiles", data=json_lines(rows),
                                     method="PUT")
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def test_deletions_from_a_file_and_put_equal_the_reference(tmp_path: Path) -> None:
    _require_binary()
    work = Workload(seed=21)
    phases = _phases(work)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(SPEC)
    spec = reference.load_spec(str(spec_path))
    (tmp_path / "profiles.jsonl").write_bytes(json_lines(phases[0]))
    (tmp_path / "events.jsonl").write_bytes(b"")
    command = [BIN, "run", "--spec", str(spec_path), "--data-dir", str(tmp_path / "data")]
    proc, port = start_run(command, tmp_path / "run1.log")
    received = len(phases[0])
    _wait_metric(port, "freshet_table_versions_total", received)
    lines = 0
    for k, batch in enumerate(work.batches):
        if k == 1:
            append_bytes(tmp_path / "profiles.jsonl", json_lines(phases[1] + [BAD_ROW]))
        if k == 2:
            answer = _put(port, phases[2] + [BAD_ROW])
            assert answer["accepted"] == len(phases[2]) and answer["rejected"] == 1
            assert "_deleted" in answer["errors"][0]["reason"]
        if k > 0:
            received += len(phases[k])
            _wait_metric(port, "freshet_table_versions_total", received)
        append_bytes(tmp_path / "events.jsonl", json_lines(batch))
        lines += len(batch)
        _wait_metric(port, "freshet_events_in_total", lines)
        if k == 1:
            proc, port = _crash_once_checkpointed(proc, port, command, tmp_path / "run2.log")
    versions = [v for k, phase in enumerate(phases)
                for v in reference.file_table_versions(spec, "profiles", phase, sum(map(len, work.batches[:k])))]
    try:
        spec, events = _reference(spec_path, work.events_bytes(), versions)
        assert _metric(port, "freshet_table_rejected_rows_total") == 2  # The bad row in the file and in the PUT.
        live = {reference.version_key(spec, v) for v in versions if v.row is not None} - {"u3", "u5"}
        assert _metric(port, "freshet_table_keys") == len(live)
        late = reference.late_versions(spec, work.events_bytes(), versions)["profiles"]
        assert _metric(port, "freshet_table_late_versions_total") == late
        t_end = events[-1].time_ms
        mismatches = lookup_mismatches(
            lambda user, at: json.loads(get_bytes(port, f"/v1/features/{user}?at={at}")), spec, events, t_end)
        assert not mismatches, "\n".join(mismatches[:20])
        # The deletions mattered: u3 and u5 end without a row, u19 has one again.
        for key, row in (("u3", None), ("u5", None)):
            assert reference.joined_row(spec, "profiles", key, t_end, lines + 1, versions) is row
            assert reference.joined_row(spec, "profiles", key, t_end, len(work.batches[0]), versions) is not None
        assert reference.joined_row(spec, "profiles", "u19", t_end, lines + 1, versions) is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0

    # The history: every version once at its place, deletions as row null (and no valid_from).
    history = deltalake.DeltaTable(str(tmp_path / "data" / "offline" / "table_profiles")).to_pyarrow_table()
    history = history.sort_by("version").to_pylist()
    assert [(h["seq"], h["key"], json.loads(h["row"])) for h in history] == \
        [(v.before_line, reference.version_key(spec, v), v.row) for v in versions]
    assert all(h["valid_from"] is None for h in history if h["row"] == "null")

    check_offline_paths(spec_path, tmp_path / "data", spec, events, users=(1, 3, 4, 5, 7, 19), every=29)

    # From files, every row known up front in file order: a deletion hides the rows of its key listed before it.
    rows_csv = tmp_path / "rows.csv"  # The entity rows check_offline_paths wrote.
    table_file = tmp_path / "all_rows.jsonl"
    table_file.write_bytes(b"".join(json_lines(p) for p in phases))
    up_front = [v for p in phases for v in reference.file_table_versions(spec, "profiles", p, 0)]
    _, up_front_events = _reference(spec_path, work.events_bytes(), up_front)
    mismatches = historical_store_mismatches(
        spec_path, None, rows_csv, spec, up_front_events,
        inputs=["--events", str(tmp_path / "events.jsonl"), "--table", f"profiles={table_file}"])
    assert not mismatches, "\n".join(mismatches[:20])
    assert reference.joined_row(spec, "profiles", "u5", t_end, 1, up_front) is None
    # The same rows as CSV, where `_deleted` is a cell with the text true (or false, or empty).
    columns = ["user_id", "updated_at", "segment", "created_ms", "_deleted"]
    csv_file = tmp_path / "all_rows.csv"
    csv_file.write_text(",".join(columns) + "\n" + "".join(
        ",".join("" if c not in row else str(row[c]).lower() if c == "_deleted" else str(row[c]) for c in columns)
        + "\n" for p in phases for row in p))
    mismatches = historical_store_mismatches(
        spec_path, None, rows_csv, spec, up_front_events,
        inputs=["--events", str(tmp_path / "events.jsonl"), "--table", f"profiles={csv_file}"])
    assert not mismatches, "\n".join(mismatches[:20])
    # And as Parquet: `_deleted` a boolean column (null where a row has none), updated_at a timestamp column.
    parquet_file = tmp_path / "all_rows.parquet"
    rows = [row for p in phases for row in p]
    pq.write_table(pa.table({
        "user_id": pa.array([r["user_id"] for r in rows], pa.string()),
        "updated_at": pa.array([reference.event_time_ms(r["updated_at"]) if "updated_at" in r else None
                                for r in rows], pa.timestamp("ms")),
        "segment": pa.array([r.get("segment") for r in rows], pa.string()),
        "created_ms": pa.array([r.get("created_ms") for r in rows], pa.int64()),
        "_deleted": pa.array([r.get("_deleted") for r in rows], pa.bool_()),
    }), parquet_file)
    mismatches = historical_store_mismatches(
        spec_path, None, rows_csv, spec, up_front_events,
        inputs=["--events", str(tmp_path / "events.jsonl"), "--table", f"profiles={parquet_file}"])
    assert not mismatches, "\n".join(mismatches[:20])

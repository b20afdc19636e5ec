"""The offline store end to end: what `freshet run` writes is readable by pyarrow, DuckDB and the deltalake
package as it is; the features table equals the brute-force reference (tests/reference.py); a backfill
through the same operators writes the very same features table; and a backfill's checkpoint hands its
state to `freshet run`, which then continues exactly as if it had streamed everything.
"""
from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import deltalake
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import reference
from fraud_features import FEATURES_YAML

BIN = os.environ.get("FRESHET_BIN", str(Path(__file__).resolve().parent.parent / "build" / "freshet"))

SPEC = """name: offline
entity: user_id
timestamp: ts
watermark: {{max_out_of_orderness: 3s, allowed_lateness: 10s}}
source: {{type: file, path: {events}}}
serve: {{port: 0}}
features:
{features}{extra}"""


def _require_binary() -> None:
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")


def _generate(path: Path, events: int, seed: int, disorder: str = "2s", late: str = "0.01",
              malformed: str = "0.01", users: int = 200) -> None:
    subprocess.run([BIN, "generate", "--users", str(users), "--events", str(events), "--seed", str(seed),
                    "--disorder", disorder, "--late-share", late, "--malformed-share", malformed,
                    "--output", str(path)], check=True)


def _write_spec(tmp: Path, events: str, extra: str = "") -> Path:
    spec = tmp / "spec.yaml"
    spec.write_text(SPEC.format(events=events, extra=extra, features=FEATURES_YAML))
    return spec


def _run_to_end(spec: Path, data: Path) -> None:
    subprocess.run([BIN, "run", "--spec", str(spec), "--data-dir", str(data), "--exit-at-end"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _features(table_dir: Path) -> pa.Table:
    """The features table without processing_time (a wall clock), ordered by seq."""
    t = deltalake.DeltaTable(str(table_dir)).to_pyarrow_table()
    return t.drop_columns(["processing_time"]).sort_by("seq")


def test_tables_read_back_with_pyarrow_duckdb_and_deltalake(tmp_path: Path) -> None:
    _require_binary()
    _generate(tmp_path / "events.jsonl", 20000, 1)
    spec = _write_spec(tmp_path, "events.jsonl")
    _run_to_end(spec, tmp_path / "data")
    events_dir = tmp_path / "data" / "offline" / "events"

    delta = deltalake.DeltaTable(str(events_dir))
    assert delta.metadata().partition_columns == ["event_date"]
    by_delta = delta.to_pyarrow_table().sort_by("seq")
    files = delta.file_uris()
    by_pyarrow = pa.concat_tables(pq.read_table(f) for f in files).sort_by("seq")
    file_list = ", ".join(f"'{f}'" for f in files)
    by_duckdb = duckdb.sql(f"SELECT seq, epoch_ms(event_time) AS t, entity, raw FROM read_parquet([{file_list}]) "
                           "ORDER BY seq").fetchall()

    # What went in: the accepted lines, by the reference's reading of the same file.
    ref_spec = reference.load_spec(str(spec))
    accepted, _ = reference.read_events((tmp_path / "events.jsonl").read_bytes(), ref_spec)
    lines = reference.split_lines((tmp_path / "events.jsonl").read_bytes())
    assert by_delta.num_rows == by_pyarrow.num_rows == len(by_duckdb) == len(accepted)
    assert by_pyarrow.column("seq").to_pylist() == list(range(len(accepted)))
    assert by_pyarrow.column("raw").to_pylist() == [lines[e.line - 1].decode() for e in accepted]
    assert by_delta.column("raw").to_pylist() == by_pyarrow.column("raw").to_pylist()
    assert [(r[0], r[1], r[2]) for r in by_duckdb] == [(k, e.time_ms, e.entity) for k, e in enumerate(accepted)]
    # Timestamps are UTC timestamps; partitions are the UTC dates of the events.
    assert by_pyarrow.schema.field("event_time").type == pa.timestamp("us", tz="UTC")
    dates = {str(d) for d in by_delta.column("event_date").to_pylist()}
    assert dates == {reference_date(e.time_ms) for e in accepted}
    # Files are sized for readers: one per partition per checkpoint, not one per event.
    assert len(files) <= 4 * len(dates)
    meta = pq.ParquetFile(files[0]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"


def reference_date(ms: int) -> str:
    import datetime
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc).strftime("%Y-%m-%d")


def _same(expected, got, feature: reference.Feature) -> bool:
    if expected is None or expected is reference.MISSING:
        return got is None or (isinstance(got, float) and math.isnan(got))
    if got is None:
        return False
    if feature.aggregation == "last":
        return got == reference.format_value(expected)
    return math.isclose(float(expected), float(got), rel_tol=1e-9, abs_tol=1e-9)


def test_features_table_equals_the_brute_force_reference(tmp_path: Path) -> None:
    """Each row: the entity's features as of the event's time, over the events accepted up to it. With
    events in time order that is exactly the reference's value at that time over that prefix."""
    _require_binary()
    _generate(tmp_path / "events.jsonl", 4000, 3, disorder="0", late="0", users=40)
    spec = _write_spec(tmp_path, "events.jsonl")
    _run_to_end(spec, tmp_path / "data")
    table = _features(tmp_path / "data" / "offline" / "features").to_pylist()

    ref_spec = reference.load_spec(str(spec))
    accepted, _ = reference.read_events((tmp_path / "events.jsonl").read_bytes(), ref_spec)
    assert [r["seq"] for r in table] == list(range(len(accepted)))
    prefix: dict[str, list[reference.Event]] = {}
    mismatches = []
    for row, event in zip(table, accepted):
        prefix.setdefault(event.entity, []).append(event)
        assert row["entity"] == event.entity
        assert int(row["event_time"].timestamp() * 1000) == event.time_ms
        for feature in ref_spec.features:
            expected, _ = reference.feature_value(feature, prefix[event.entity], event.time_ms)
            if not _same(expected, row[feature.name], feature):
                mismatches.append(f"seq {row['seq']} {feature.name}: reference {expected!r}, table {row[feature.name]!r}")
    assert not mismatches, "\n".join(mismatches[:20])


def test_backfill_writes_what_the_stream_wrote(tmp_path: Path) -> None:
    """The proof of one computation path: stream, then backfill the same events, same table."""
    _require_binary()
    _generate(tmp_path / "events.jsonl", 30000, 5)
    spec = _write_spec(tmp_path, "events.jsonl")
    _run_to_end(spec, tmp_path / "data")
    streamed = _features(tmp_path / "data" / "offline" / "features")
    subprocess.run([BIN, "backfill", "--spec", str(spec), "--data-dir", str(tmp_path / "data"), "--no-progress"],
                   check=True)
    backfilled = _features(tmp_path / "data" / "offline" / "features")
    assert backfilled.num_rows == streamed.num_rows > 0
    assert backfilled.equals(streamed)
    history = deltalake.DeltaTable(str(tmp_path / "data" / "offline" / "features")).history()
    assert history[0]["operation"] == "CREATE OR REPLACE TABLE"

    # --from/--to keep the rows of that time range only, computed over all events.
    times = streamed.column("event_time").to_pylist()
    lo, hi = times[len(times) // 3], times[2 * len(times) // 3]
    subprocess.run([BIN, "backfill", "--spec", str(spec), "--data-dir", str(tmp_path / "data"), "--no-progress",
                    "--from", lo.isoformat(), "--to", hi.isoformat(), "--no-checkpoint"], check=True)
    ranged = _features(tmp_path / "data" / "offline" / "features")
    mask = [lo <= t < hi for t in times]
    assert ranged.equals(streamed.filter(pa.array(mask)))


def test_backfill_then_stream_equals_streaming_everything(tmp_path: Path) -> None:
    _require_binary()
    _generate(tmp_path / "all.jsonl", 30000, 7)
    lines = (tmp_path / "all.jsonl").read_bytes().splitlines(keepends=True)
    half = len(lines) // 2
    (tmp_path / "history.jsonl").write_bytes(b"".join(lines[:half]))
    (tmp_path / "live.jsonl").write_bytes(b"".join(lines[half:]))

    everything = tmp_path / "everything"
    everything.mkdir()
    _run_to_end(_write_spec(everything, str(tmp_path / "all.jsonl")), everything / "data")

    handoff = tmp_path / "handoff"
    handoff.mkdir()
    spec = _write_spec(handoff, str(tmp_path / "live.jsonl"))
    subprocess.run([BIN, "backfill", "--spec", str(spec), "--data-dir", str(handoff / "data"), "--no-progress",
                    "--events", str(tmp_path / "history.jsonl")], check=True)
    _run_to_end(spec, handoff / "data")
    assert _features(handoff / "data" / "offline" / "features").equals(
        _features(everything / "data" / "offline" / "features"))


def test_a_changed_spec_is_backfilled_and_the_stream_continues(tmp_path: Path) -> None:
    _require_binary()
    _generate(tmp_path / "all.jsonl", 20000, 9)
    lines = (tmp_path / "all.jsonl").read_bytes().splitlines(keepends=True)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(lines[:12000]))
    spec = _write_spec(tmp_path, "events.jsonl")
    _run_to_end(spec, tmp_path / "data")

    # A new feature: the stream refuses the old checkpoint, the backfill rebuilds from the events table.
    extra = ("  - {name: views_1h, aggregation: count, where: \"type == 'view'\", "
             "window: {type: sliding, size: 1h}}\n")
    spec = _write_spec(tmp_path, "events.jsonl", extra)
    refused = subprocess.run([BIN, "run", "--spec", str(spec), "--data-dir", str(tmp_path / "data"), "--exit-at-end"],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "backfill" in refused.stderr, refused.stderr
    subprocess.run([BIN, "backfill", "--spec", str(spec), "--data-dir", str(tmp_path / "data"), "--no-progress"],
                   check=True)
    with open(events, "ab") as f:  # The source goes on.
        f.write(b"".join(lines[12000:]))
    _run_to_end(spec, tmp_path / "data")
    continued = _features(tmp_path / "data" / "offline" / "features")
    assert "views_1h" in continued.column_names
    # The feature log keeps its history and gains the new column.
    log_schema = deltalake.DeltaTable(str(tmp_path / "data" / "offline" / "feature_log")).schema().to_arrow()
    assert "views_1h" in log_schema.names and "purchases_30m" in log_schema.names

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "events.jsonl").write_bytes(events.read_bytes())
    _run_to_end(_write_spec(fresh, "events.jsonl", extra), fresh / "data")
    assert continued.equals(_features(fresh / "data" / "offline" / "features"))

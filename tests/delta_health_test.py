"""Delta tables that stay healthy for months (issue 13), end to end against real readers:

- every `add` carries per-column stats (numRecords, nullCount, minValues, maxValues) that the deltalake package
  reads and that equal what pyarrow computes from the file itself (strings cut as the protocol allows);
- the log is checkpointed in Parquet every 10 commits (`_last_checkpoint` points at the newest);
- a running `freshet run` compacts by itself (offline.compact_every) and keeps every row exactly once, while
  `freshet compact` and `freshet vacuum` refuse to touch its tables; stopped, `freshet compact` rewrites the rest;
- removed files stay for time travel within offline.retention and only `freshet vacuum` deletes them;
- after all that, deltalake, pyarrow, pandas and DuckDB (glob and delta_scan) read the same rows, and so does the
  run when it starts again on the same tables;
- an empty table is readable by every reader; another writer's append is refused at the next start, saying how
  to undo it.
"""
from __future__ import annotations

import glob
import http.client
import json
import os
import random
import subprocess
import sysconfig
from pathlib import Path

import deltalake
import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import dedup_test as dd

SPEC = """name: delta_health
entity: user_id
timestamp: ts
source: {{type: http}}
serve: {{port: 0}}
checkpoint: {{interval: 200ms, keep: 3}}
offline: {{{offline}}}
features:
  - {{name: n_events, aggregation: count, window: {{type: lifetime}}}}
"""
DAY_MS = 86_400_000
BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _spec(tmp: Path, name: str = "spec.yaml", offline: str = "compact_every: 6") -> Path:
    path = tmp / name
    path.write_text(SPEC.format(offline=offline))
    return path


def _freshet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([dd.BIN, *args], capture_output=True, text=True, timeout=300)


def _ingest(server: dd.Server, lines: list[str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/v1/ingest", body=("\n".join(lines) + "\n").encode(),
                     headers={"Content-Type": "application/x-ndjson"})
        r = conn.getresponse()
        body = json.loads(r.read())
        assert r.status == 200, body
        return body["accepted"]
    finally:
        conn.close()


def _versions(table: Path) -> int:
    return len(glob.glob(str(table / "_delta_log" / "*.json")))


def _events(rng: random.Random, first: int, n: int) -> list[str]:
    """Events over two UTC days (two partitions), with notes of 0-80 characters, some beyond ASCII, so that the
    raw column's stats are cut."""
    out = []
    for k in range(first, first + n):
        note = "".join(rng.choice("abcxyz~\u00e9\u4e2d\U0001f600") for _ in range(rng.randrange(0, 80)))
        out.append(json.dumps({"user_id": f"u{k % 7}", "ts": BASE_MS + (k % 2) * DAY_MS + k, "note": note},
                              ensure_ascii=False))
    return out


def _post_in_commits(server: dd.Server, table: Path, batches: list[list[str]]) -> None:
    """Posts each batch and waits for a new commit of `table`, so that each batch is a commit of its own."""
    for batch in batches:
        before = _versions(table)
        assert _ingest(server, batch) == len(batch)
        dd._wait(lambda: _versions(table) > before, "a commit of the events table")


def _truncated_max(s: str) -> str:
    """The protocol's string max as Freshet writes it: the value, or its first 32 characters and a tie-breaker."""
    if len(s) <= 32:
        return s
    cut = 32
    while cut < len(s) and s[cut] == "\U0010ffff":
        cut += 1
    if cut >= len(s):
        return s
    return s[:cut] + ("\x7f" if ord(s[cut]) < 0x7F else "\U0010ffff")


def _check_stats(table: Path) -> int:
    """Every active file's stats, as deltalake reads them, equal min/max/null counts pyarrow computes from the
    file. Returns how many files were checked."""
    actions = pa.table(deltalake.DeltaTable(str(table)).get_add_actions(flatten=True))
    checked = 0
    for row in actions.to_pylist():
        data = pq.ParquetFile(table / row["path"]).read()  # The file alone, without partition columns.
        assert row["num_records"] == data.num_rows, row["path"]
        for name in data.column_names:
            column = data.column(name)
            assert row[f"null_count.{name}"] == column.null_count, (row["path"], name)
            if column.null_count == len(column):
                continue
            low, high = pc.min_max(column).values()
            low, high = low.as_py(), high.as_py()
            if pa.types.is_string(column.type):
                low, high = low[:32], _truncated_max(high)
            assert row[f"min.{name}"] == low, (row["path"], name, row[f"min.{name}"], low)
            assert row[f"max.{name}"] == high, (row["path"], name, row[f"max.{name}"], high)
        checked += 1
    return checked


def _duckdb() -> duckdb.DuckDBPyConnection:
    """DuckDB with the delta extension of the duckdb-ext-delta package loaded from its file (no network)."""
    found = glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "duckdb_ext", "extensions", "*", "*",
                                   "delta.duckdb_extension"))
    assert found, "duckdb-ext-delta is not installed (scripts/requirements.txt)"
    con = duckdb.connect(config={"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"})
    con.execute(f"LOAD '{found[0]}'")
    return con


def _every_reader(table: Path) -> dict[str, pa.Table]:
    """The table as deltalake, pyarrow.dataset, pandas, DuckDB's glob and DuckDB's delta_scan read it."""
    con = _duckdb()
    return {
        "deltalake": deltalake.DeltaTable(str(table)).to_pyarrow_table(),
        "pyarrow": ds.dataset(str(table), format="parquet", partitioning="hive").to_table(),
        "pandas": pa.Table.from_pandas(pd.read_parquet(str(table)), preserve_index=False),
        # Partition folders only: `*/*.parquet` would also match the log's Parquet checkpoints.
        "duckdb glob": con.sql(f"SELECT * FROM read_parquet('{table}/*=*/*.parquet', hive_partitioning = true, "
                               "union_by_name = true)").fetch_arrow_table(),
        "duckdb delta_scan": con.sql(f"SELECT * FROM delta_scan('{table}')").fetch_arrow_table(),
    }


def _seqs_and_raws(t: pa.Table) -> tuple[list[int], list[str]]:
    t = t.sort_by("seq")
    return t.column("seq").to_pylist(), t.column("raw").to_pylist()


def test_stats_checkpoints_compaction_retention_vacuum_and_every_reader(tmp_path: Path) -> None:
    dd._require_binary()
    spec = _spec(tmp_path)
    data = tmp_path / "data"
    events = data / "offline" / "events"
    rng = random.Random(13)
    lines = _events(rng, 0, 27 * 40)
    batches = [lines[k:k + 40] for k in range(0, len(lines), 40)]

    server = dd.Server(spec, data, tmp_path / "run.log")
    try:
        _post_in_commits(server, events, batches)
        # While the run writes the tables, the upkeep commands refuse, saying why.
        for command in (["compact"], ["vacuum", "--dry-run"]):
            refused = _freshet(*command, "--spec", str(spec), "--data-dir", str(data))
            assert refused.returncode == 2, refused
            assert "open for writing by another Freshet process" in refused.stderr, refused.stderr
            assert refused.stdout == ""
    finally:
        assert server.terminate() == 0

    log = events / "_delta_log"
    commits = [json.loads(line) for path in sorted(log.glob("*.json")) for line in path.read_text().splitlines()]
    optimize = [c for c in commits if c.get("commitInfo", {}).get("operation") == "OPTIMIZE"]
    assert len(optimize) >= 4, "offline.compact_every: 6 compacts inside the run"
    assert (log / "00000000000000000010.checkpoint.parquet").exists()
    last = json.loads((log / "_last_checkpoint").read_text())
    assert last["version"] >= 20 and last["version"] % 10 == 0
    checkpoint = pq.read_table(log / f"{last['version']:020d}.checkpoint.parquet")
    assert {"add", "remove", "metaData", "protocol", "txn"} <= set(checkpoint.column_names)
    assert checkpoint.column("add").drop_null().to_pylist(), "the checkpoint holds the active files"

    expected_raws = sorted(lines)
    table = deltalake.DeltaTable(str(events))
    seqs, raws = _seqs_and_raws(table.to_pyarrow_table())
    assert seqs == list(range(len(lines))) and sorted(raws) == expected_raws, "every row once after compaction"
    assert _check_stats(events) >= 2

    # The run starts again from the checkpointed log and continues the seq; this time it does not compact, and,
    # stopped, `freshet compact` rewrites the small files it left. The old version stays readable.
    more = _events(rng, len(lines), 3 * 40)
    lines += more
    no_auto = _spec(tmp_path, "spec_no_auto.yaml", "compact_every: 0")
    server = dd.Server(no_auto, data, tmp_path / "run2.log")
    try:
        _post_in_commits(server, events, [more[k:k + 40] for k in range(0, len(more), 40)])
    finally:
        assert server.terminate() == 0
    table = deltalake.DeltaTable(str(events))
    seqs, raws = _seqs_and_raws(table.to_pyarrow_table())
    assert seqs == list(range(len(lines))) and sorted(raws) == sorted(lines)
    version_before = table.version()
    files_before = table.file_uris()
    compacted = _freshet("compact", "--spec", str(spec), "--data-dir", str(data), "--table", "events")
    assert compacted.returncode == 0, compacted.stderr
    assert "rewritten" in compacted.stderr, compacted.stderr
    after = deltalake.DeltaTable(str(events))
    assert after.version() > version_before and len(after.file_uris()) < len(files_before)
    assert _seqs_and_raws(after.to_pyarrow_table()) == (seqs, raws)
    assert _check_stats(events) >= 1
    old = deltalake.DeltaTable(str(events), version=version_before)
    assert _seqs_and_raws(old.to_pyarrow_table()) == (seqs, raws), "time travel within the retention"

    # Within the default retention (7 days) vacuum deletes nothing; with 0s it deletes the removed files.
    kept = _freshet("vacuum", "--spec", str(spec), "--data-dir", str(data))
    assert kept.returncode == 0 and kept.stdout == "", kept
    assert all(os.path.exists(f) for f in files_before)
    spec_now = _spec(tmp_path, "spec_now.yaml", "retention: 0s")
    dry = _freshet("vacuum", "--spec", str(spec_now), "--data-dir", str(data), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    listed = dry.stdout.split()
    assert listed and all(os.path.exists(p) for p in listed), dry
    vacuumed = _freshet("vacuum", "--spec", str(spec_now), "--data-dir", str(data))
    assert vacuumed.returncode == 0 and vacuumed.stdout.split() == listed, vacuumed
    assert not any(os.path.exists(p) for p in listed)

    for reader, t in _every_reader(events).items():
        assert _seqs_and_raws(t) == (seqs, raws), reader


def test_an_empty_table_is_readable_by_every_reader(tmp_path: Path) -> None:
    dd._require_binary()
    spec = _spec(tmp_path)
    data = tmp_path / "data"
    server = dd.Server(spec, data, tmp_path / "run.log")
    assert server.terminate() == 0
    for name in ("events", "feature_log"):
        table = data / "offline" / name
        for reader, t in _every_reader(table).items():
            assert t.num_rows == 0, (name, reader)
            assert {"entity"} <= set(t.column_names), (name, reader, t.column_names)


def test_another_writers_append_is_refused_at_the_next_start(tmp_path: Path) -> None:
    dd._require_binary()
    spec = _spec(tmp_path)
    data = tmp_path / "data"
    events = data / "offline" / "events"
    lines = _events(random.Random(1), 0, 30)
    server = dd.Server(spec, data, tmp_path / "run.log")
    try:
        _post_in_commits(server, events, [lines])
    finally:
        assert server.terminate() == 0
    table = deltalake.DeltaTable(str(events))
    version = table.version()
    rows = table.to_pyarrow_table().slice(0, 3)
    deltalake.write_deltalake(str(events), rows, mode="append", partition_by=["event_date"])

    refused = subprocess.run([dd.BIN, "run", "--spec", str(spec), "--data-dir", str(data)], capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode != 0
    assert "another writer appended" in refused.stderr and f"restore({version})" in refused.stderr, refused.stderr

    # Undone as the message says, the run starts and continues the seq after its own rows.
    deltalake.DeltaTable(str(events)).restore(version)
    server = dd.Server(spec, data, tmp_path / "run2.log")
    try:
        _post_in_commits(server, events, [_events(random.Random(2), 30, 10)])
    finally:
        assert server.terminate() == 0
    seqs = sorted(deltalake.DeltaTable(str(events)).to_pyarrow_table().column("seq").to_pylist())
    assert seqs == list(range(40))

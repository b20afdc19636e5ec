"""`freshet historical` over the offline events table, and its Parquet input and output.

The events table is written here as `freshet run` lays it out (offline/tables.h: seq, event_time, entity,
ingest_time, raw, partitioned by event_date) with the `deltalake` package: the accepted events of a random case
from historical_diff_test.py, in acceptance order, over several commits. Then:

- `freshet historical` without --events (reading the table) must write exactly what `--events FILE` writes over
  the same file, and both must agree with the brute-force reference (tests/reference.py);
- `--output X.parquet` must hold the same rows as the CSV, with the documented column types;
- `--entities X.parquet` (entity as string or integer; time as timestamp, epoch-ms integer or RFC 3339 text)
  must give the hand-computed features, passing the other columns through;
- the events table that `freshet run --exit-at-end` writes gives what the events file gives.
"""

from __future__ import annotations

import csv
import datetime
import glob
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from deltalake import write_deltalake

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import historical_diff_test as diff  # noqa: E402
import reference as ref  # noqa: E402

FRESHET_BIN = diff.FRESHET_BIN
UTC = datetime.timezone.utc

EVENTS_SCHEMA = pa.schema([
    ("seq", pa.int64()), ("event_time", pa.timestamp("us", tz="UTC")), ("entity", pa.string()),
    ("ingest_time", pa.timestamp("us", tz="UTC")), ("raw", pa.string()), ("event_date", pa.date32()),
])


def utc(ms: int) -> datetime.datetime:
    return datetime.datetime(1970, 1, 1, tzinfo=UTC) + datetime.timedelta(milliseconds=ms)


def write_events_table(table_dir: str, events: list[tuple[str, int, bytes]], commits: int = 3) -> None:
    """Writes (entity, event_time_ms, raw line) in acceptance order as the events table, in `commits` commits."""
    rows = [{"seq": seq, "event_time": utc(t), "entity": entity, "ingest_time": utc(1_800_000_000_000 + seq),
             "raw": raw.decode("utf-8"), "event_date": utc(t).date()}
            for seq, (entity, t, raw) in enumerate(events)]
    size = max(1, -(-len(rows) // commits))
    for k in range(0, max(len(rows), 1), size):
        # Freshet's writer keeps each file in seq order (the replay merges files by seq); `deltalake` may reorder
        # the rows of a partitioned write, so each date of a commit is written on its own.
        chunk = rows[k:k + size]
        for date in sorted({row["event_date"] for row in chunk}):
            part = pa.Table.from_pylist([row for row in chunk if row["event_date"] == date], schema=EVENTS_SCHEMA)
            write_deltalake(table_dir, part, partition_by=["event_date"], mode="append")
    for path in glob.glob(os.path.join(table_dir, "*", "*.parquet")):
        seqs = pq.read_table(path, columns=["seq"]).column("seq").to_pylist()
        assert seqs == sorted(seqs), f"{path}: the test wrote a file out of seq order"


def accepted_events(events_path: str, spec_path: str) -> list[tuple[str, int, bytes]]:
    """The events `freshet run` would store: those the reference accepts, with their raw line (no CR)."""
    spec = ref.load_spec(spec_path)
    with open(events_path, "rb") as f:
        data = f.read()
    lines = ref.split_lines(data)
    events, _ = ref.read_events(data, spec)
    return [(e.entity, e.time_ms, lines[e.line - 1].rstrip(b"\r")) for e in events]


def run(args: list[str], expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([FRESHET_BIN, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == expect, (f"freshet {' '.join(args)} exited {result.returncode}, expected {expect}\n"
                                         f"stderr:\n{result.stderr[-3000:]}")
    return result


def historical(spec: str, entities: str, output: str, events: str | None = None, data_dir: str | None = None,
               expect: int = 0) -> subprocess.CompletedProcess:
    args = ["historical", "--spec", spec, "--entities", entities, "--output", output, "--no-progress"]
    if events is not None:
        args += ["--events", events]
    if data_dir is not None:
        args += ["--data-dir", data_dir]
    return run(args, expect)


@pytest.fixture(scope="module", autouse=True)
def binary():
    diff.require_binary()


# Seeds 3 and 8 start just before the epoch, so their events span two dates (two partitions per commit).
@pytest.mark.parametrize("seed", [0, 3, 5, 8, 13, 22])
def test_events_table_gives_what_the_events_file_gives(seed, tmp_path):
    paths = diff.write_case(diff.draw_case(seed), str(tmp_path))
    data_dir = tmp_path / "data"
    stored = accepted_events(paths["events.jsonl"], paths["spec.yaml"])
    assert stored, "the case has no accepted events"
    write_events_table(str(data_dir / "offline" / "events"), stored)

    from_file = str(tmp_path / "from_file.csv")
    from_table = str(tmp_path / "from_table.csv")
    historical(paths["spec.yaml"], paths["entities.csv"], from_file, events=paths["events.jsonl"])
    result = historical(paths["spec.yaml"], paths["entities.csv"], from_table, data_dir=str(data_dir))
    assert f"{len(stored)} events read, {len(stored)} accepted, 0 rejected, 0 late" in result.stderr
    with open(from_file, "rb") as a, open(from_table, "rb") as b:
        file_bytes, table_bytes = a.read(), b.read()
    assert table_bytes == file_bytes, f"seed {seed}: the events table and the events file give different output"

    # Both against the reference (the dead letters are the file run's: the table holds accepted events only).
    paths["output.csv"] = from_file
    subprocess.run([FRESHET_BIN, "historical", "--spec", paths["spec.yaml"], "--events", paths["events.jsonl"],
                    "--entities", paths["entities.csv"], "--output", from_file, "--dead-letters", paths["dead.jsonl"],
                    "--no-progress"], check=True, capture_output=True)
    paths["output.csv"] = from_table
    problems = diff.compare(paths, f"seed {seed} from the events table")
    assert not problems, "\n".join(problems)

    # Parquet output from the table: the same rows, typed.
    out_parquet = str(tmp_path / "from_table.parquet")
    historical(paths["spec.yaml"], paths["entities.csv"], out_parquet, data_dir=str(data_dir))
    check_parquet_matches_csv(paths, from_table, out_parquet)


FEATURE_TYPES = {"count": pa.int64(), "count_distinct": pa.int64(), "approx_count_distinct": pa.int64(),
                 "sum": pa.float64(), "mean": pa.float64(), "min": pa.float64(), "max": pa.float64(),
                 "stddev": pa.float64(), "last": pa.string(), "first": pa.string(), "approx_percentile": pa.float64()}


def check_parquet_matches_csv(paths: dict, csv_path: str, parquet_path: str) -> None:
    spec = ref.load_spec(paths["spec.yaml"])
    rows = ref.read_entity_rows(paths["entities.csv"], spec)
    with open(csv_path, newline="", encoding="utf-8") as f:
        csv_rows = list(csv.reader(f))[1:]
    table = pq.read_table(parquet_path)
    names = rows.header + [feature.name for feature in spec.features]
    assert table.column_names == names
    for column in rows.header:
        want = pa.timestamp("us", tz="UTC") if column == spec.timestamp_field else pa.string()
        assert table.schema.field(column).type == want, column
    for feature in spec.features:
        assert table.schema.field(feature.name).type == FEATURE_TYPES[feature.aggregation], feature.name
    assert table.num_rows == len(rows.rows)
    assert table.column(spec.timestamp_field).cast(pa.int64()).to_pylist() == [t * 1000 for _, t in rows.keys]
    data = table.to_pydict()
    for r, (cells, csv_row) in enumerate(zip(rows.rows, csv_rows)):
        for k, column in enumerate(rows.header):
            if column != spec.timestamp_field:
                assert data[column][r] == cells[k], (r, column)
        for j, feature in enumerate(spec.features):
            got, text = data[feature.name][r], csv_row[len(rows.header) + j]
            where = f"row {r} feature {feature.name}: parquet {got!r}, csv {text!r}"
            if feature.aggregation in ("last", "first"):
                assert (got or "") == text, where
            elif text == "":
                assert got is None, where
            elif FEATURE_TYPES[feature.aggregation] == pa.int64():
                assert got == int(text), where
            else:
                assert isinstance(got, float) and got == float(text), where


# ------------------------------------------------------------------------------------------------
# Parquet entities
# ------------------------------------------------------------------------------------------------

SMALL_SPEC = """name: small
entity: user
timestamp: ts
features:
  - name: n
    aggregation: count
    window: {type: lifetime}
  - name: total
    aggregation: sum
    field: amount
    window: {type: sliding, size: 10s}
  - name: cat
    aggregation: last
    field: category
    window: {type: lifetime}
"""

SMALL_EVENTS = [  # (user as written in the event, ts, amount, category)
    (7, 1_000, 10, "a"), ("bob", 1_500, 1.5, "z"), (7, 2_000, 5, "b"), ("7", 12_500, 7, None), ("bob", 30_000, 2, "y"),
]

# (user, ts ms, label, score, flag) and the features by hand: n, total (10 s sliding: (t-10s, t]), cat.
SMALL_ROWS = [
    ("7", 2_000, "r0", 1.5, True, 2, 15, "b"),
    ("7", 12_000, "r1", None, False, 2, 0, "b"),      # 2_000 is out of (2_000, 12_000]: the left edge is open
    ("7", 12_500, "r2", 2.25, None, 3, 7, "b"),       # the last event has no category: "b" stays
    ("bob", 999, "r3", 0.0, True, 0, 0, None),
    ("bob", 39_999, "r4, with comma", -1.0, False, 2, 2, "y"),  # (29_999, 39_999] holds 30_000
    ("nobody", 5_000, "r5", 3.0, True, 0, 0, None),
]


def write_small_case(tmp_path) -> tuple[str, str]:
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL_SPEC)
    events = tmp_path / "small.jsonl"
    with open(events, "w") as f:
        for user, t, amount, category in SMALL_EVENTS:
            record = {"user": user, "ts": t, "amount": amount}
            if category is not None:
                record["category"] = category
            f.write(json.dumps(record) + "\n")
    return str(spec), str(events)


def rfc3339(ms: int) -> str:
    return utc(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@pytest.mark.parametrize("time_kind", ["timestamp", "epoch_ms", "rfc3339"])
@pytest.mark.parametrize("entity_kind", ["string", "integer"])
def test_parquet_entities(time_kind, entity_kind, tmp_path):
    spec, events = write_small_case(tmp_path)
    rows = SMALL_ROWS if entity_kind == "string" else [r for r in SMALL_ROWS if r[0].isdigit()]
    if time_kind == "timestamp":
        times = pa.array([utc(r[1]) for r in rows], pa.timestamp("ms", tz="UTC"))
    elif time_kind == "epoch_ms":
        times = pa.array([r[1] for r in rows], pa.int64())
    else:
        times = pa.array([rfc3339(r[1]) for r in rows], pa.string())
    users = pa.array([r[0] for r in rows]) if entity_kind == "string" else pa.array([int(r[0]) for r in rows], pa.int32())
    entities = pa.table({"label": [r[2] for r in rows], "user": users, "ts": times,
                         "score": pa.array([r[3] for r in rows], pa.float64()),
                         "flag": pa.array([r[4] for r in rows], pa.bool_())})
    entities_path = str(tmp_path / "entities.parquet")
    pq.write_table(entities, entities_path)

    # CSV output: the input cells as text, then the features.
    out_csv = str(tmp_path / "out.csv")
    historical(spec, entities_path, out_csv, events=events)
    with open(out_csv, newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    assert table[0] == ["label", "user", "ts", "score", "flag", "n", "total", "cat"]
    assert len(table) == len(rows) + 1
    for row, got in zip(rows, table[1:]):
        user, t, label, score, flag, n, total, cat = row
        want_time = {"timestamp": rfc3339(t), "epoch_ms": str(t), "rfc3339": rfc3339(t)}[time_kind]
        want_score = "" if score is None else repr(score).removesuffix(".0") if score == int(score) else repr(score)
        want_flag = "" if flag is None else ("true" if flag else "false")
        assert got == [label, user, want_time, want_score, want_flag, str(n), str(total), cat or ""], row

    # Parquet output: the input columns keep their types.
    out_parquet = str(tmp_path / "out.parquet")
    historical(spec, entities_path, out_parquet, events=events)
    result = pq.read_table(out_parquet)
    assert result.column_names == ["label", "user", "ts", "score", "flag", "n", "total", "cat"]
    for name in ("label", "user", "ts", "score", "flag"):
        assert result.schema.field(name).type == entities.schema.field(name).type, name
        assert result.column(name).to_pylist() == entities.column(name).to_pylist(), name
    assert result.schema.field("n").type == pa.int64()
    assert result.schema.field("total").type == pa.float64()
    assert result.schema.field("cat").type == pa.string()
    assert result.column("n").to_pylist() == [r[5] for r in rows]
    assert result.column("total").to_pylist() == [float(r[6]) for r in rows]
    assert result.column("cat").to_pylist() == [r[7] for r in rows]


def test_csv_entities_to_parquet_output_by_hand(tmp_path):
    spec, events = write_small_case(tmp_path)
    entities = tmp_path / "entities.csv"
    entities.write_text("user,ts,label\n" + "".join(
        f'{r[0]},{r[1] if k % 2 else rfc3339(r[1])},"{r[2]}"\n' for k, r in enumerate(SMALL_ROWS)))
    out = str(tmp_path / "out.parquet")
    historical(spec, str(entities), out, events=events)
    result = pq.read_table(out)
    assert result.schema.field("user").type == pa.string()
    assert result.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert result.schema.field("label").type == pa.string()
    assert result.column("ts").to_pylist() == [utc(r[1]) for r in SMALL_ROWS]
    assert result.column("label").to_pylist() == [r[2] for r in SMALL_ROWS]
    assert result.column("n").to_pylist() == [r[5] for r in SMALL_ROWS]
    assert result.column("total").to_pylist() == [float(r[6]) for r in SMALL_ROWS]
    assert result.column("cat").to_pylist() == [r[7] for r in SMALL_ROWS]
    assert pq.ParquetFile(out).metadata.row_group(0).column(0).compression == "ZSTD"


def test_small_case_from_the_events_table(tmp_path):
    """The hand-computed features again, with the events read from a table whose commits interleave dates."""
    spec, events = write_small_case(tmp_path)
    with open(events, "rb") as f:
        lines = f.read().splitlines()
    stored = [(str(user), t, line) for (user, t, _, _), line in zip(SMALL_EVENTS, lines)]
    write_events_table(str(tmp_path / "data" / "offline" / "events"), stored, commits=2)
    entities = tmp_path / "entities.csv"
    entities.write_text("user,ts\n" + "".join(f"{r[0]},{r[1]}\n" for r in SMALL_ROWS))
    out = str(tmp_path / "out.csv")
    historical(spec, str(entities), out, data_dir=str(tmp_path / "data"))
    with open(out, newline="") as f:
        got = list(csv.reader(f))[1:]
    assert got == [[r[0], str(r[1]), str(r[5]), str(r[6]), r[7] or ""] for r in SMALL_ROWS]


def test_offline_path_of_the_spec_is_used(tmp_path):
    spec, events = write_small_case(tmp_path)
    with open(spec, "a") as f:
        f.write("offline:\n  path: elsewhere\n")
    with open(events, "rb") as f:
        lines = f.read().splitlines()
    write_events_table(str(tmp_path / "elsewhere" / "events"),
                       [(str(u), t, line) for (u, t, _, _), line in zip(SMALL_EVENTS, lines)], commits=1)
    entities = tmp_path / "entities.csv"
    entities.write_text("user,ts\n7,2000\n")
    out = str(tmp_path / "out.csv")
    historical(spec, str(entities), out, data_dir=str(tmp_path / "unused"))
    assert open(out).read() == "user,ts,n,total,cat\n7,2000,2,15,b\n"


def test_errors_name_the_problem(tmp_path):
    spec, events = write_small_case(tmp_path)
    entities = tmp_path / "entities.csv"
    entities.write_text("user,ts\n7,2000\n")
    result = historical(spec, str(entities), str(tmp_path / "o.csv"), data_dir=str(tmp_path / "nodata"), expect=2)
    assert "is not a Delta table" in result.stderr and "--events" in result.stderr, result.stderr
    assert not (tmp_path / "o.csv").exists(), "a failed run leaves no output file"

    no_time = str(tmp_path / "no_time.parquet")
    pq.write_table(pa.table({"user": ["7"], "when": [1]}), no_time)
    result = historical(spec, no_time, str(tmp_path / "o.csv"), events=events, expect=2)
    assert "needs the column 'ts'" in result.stderr and "when" in result.stderr, result.stderr

    bad_type = str(tmp_path / "bad_type.parquet")
    pq.write_table(pa.table({"user": [1.5], "ts": [1]}), bad_type)
    result = historical(spec, bad_type, str(tmp_path / "o.csv"), events=events, expect=2)
    assert "column 'user' has type double" in result.stderr, result.stderr

    null_time = str(tmp_path / "null_time.parquet")
    pq.write_table(pa.table({"user": ["7", "7"], "ts": pa.array([1, None], pa.int64())}), null_time)
    result = historical(spec, null_time, str(tmp_path / "o.csv"), events=events, expect=2)
    assert "row 2: column 'ts' is null" in result.stderr, result.stderr

    clash = str(tmp_path / "clash.parquet")
    pq.write_table(pa.table({"user": ["7"], "ts": [1], "n": [3]}), clash)
    result = historical(spec, clash, str(tmp_path / "o.csv"), events=events, expect=2)
    assert "already has a column named 'n'" in result.stderr, result.stderr


def test_a_file_out_of_seq_order_is_refused(tmp_path):
    """A table file rewritten out of acceptance order (by another tool) would replay differently: refused."""
    spec, events = write_small_case(tmp_path)
    with open(events, "rb") as f:
        lines = f.read().splitlines()
    rows = [{"seq": seq, "event_time": utc(t), "entity": str(u), "ingest_time": utc(1_800_000_000_000),
             "raw": line.decode(), "event_date": utc(t).date()}
            for seq, ((u, t, _, _), line) in enumerate(zip(SMALL_EVENTS, lines))]
    rows.reverse()
    write_deltalake(str(tmp_path / "data" / "offline" / "events"), pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA))
    entities = tmp_path / "entities.csv"
    entities.write_text("user,ts\n7,2000\n")
    result = historical(spec, str(entities), str(tmp_path / "o.csv"), data_dir=str(tmp_path / "data"), expect=2)
    assert "is not in seq order" in result.stderr and "--events" in result.stderr, result.stderr


def test_events_table_written_by_freshet_run(tmp_path):
    """The events table as `freshet run` writes it (late and malformed lines left out), read back by historical."""
    events = tmp_path / "events.jsonl"
    entities = tmp_path / "entities.csv"
    run(["generate", "--users", "60", "--events", "6000", "--seed", "3", "--disorder", "20s", "--late-share", "0.02",
         "--malformed-share", "0.02", "--output", str(events), "--entities", str(entities), "--entity-rows", "500"])
    entity, timestamp = diff.infer_entity_and_timestamp(str(events), str(entities))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "from_run", "entity": entity, "timestamp": timestamp,
        "watermark": {"max_out_of_orderness": "20s", "allowed_lateness": "10s"},
        "source": {"type": "file", "path": str(events)}, "serve": {"port": 0},
        "features": diff.FRAUD_FEATURES}, sort_keys=False))
    data = tmp_path / "data"
    run(["run", "--spec", str(spec), "--data-dir", str(data), "--exit-at-end"])
    assert (data / "offline" / "events" / "_delta_log").is_dir()

    from_file, from_table = str(tmp_path / "from_file.csv"), str(tmp_path / "from_table.csv")
    paths = {"spec.yaml": str(spec), "events.jsonl": str(events), "entities.csv": str(entities),
             "dead.jsonl": str(tmp_path / "dead.jsonl"), "output.csv": from_table}
    run(["historical", "--spec", str(spec), "--events", str(events), "--entities", str(entities), "--output",
         from_file, "--dead-letters", paths["dead.jsonl"], "--no-progress"])
    result = historical(str(spec), str(entities), from_table, data_dir=str(data))
    accepted = len(accepted_events(str(events), str(spec)))
    assert f"{accepted} events read, {accepted} accepted, 0 rejected, 0 late" in result.stderr, result.stderr
    with open(from_file, "rb") as a, open(from_table, "rb") as b:
        assert a.read() == b.read()
    problems = diff.compare(paths, "events table of freshet run")
    assert not problems, "\n".join(problems)

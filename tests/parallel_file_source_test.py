"""File and HTTP sources on several threads (issue 10, part 2): no value depends on `parallelism`.

A file or HTTP source is one input with one order: the lateness rule's M, deduplication and the offline `seq`
are decided in that order before events are handed to the shards (by a hash of the entity), each shard holding
its entities' state (run/sharded_input.h). So with `parallelism` 1, 2 and 4 over the same generated input
(disorder, late, malformed and duplicate lines):
  - every entity's lookup (POST /v1/features, as of two times after the horizon, and an unknown entity);
  - the offline `events` and `features` tables (read with deltalake/pyarrow, ordered by seq, wall-clock columns
    dropped);
  - the dead-letter file, byte for byte (but for the path of the file read);
are identical, and agree with the brute-force reference (tests/reference.py): the accepted lines in order, the
dead letters' lines and reasons, every features row, and the lookups of a sample of entities; and a backfill
(one thread) rewrites the features table of 4 shards as it was.
The same for the HTTP source (POST /v1/ingest), smaller. Then kill -9 mid-run with parallelism 2 and a restart:
every event in the events table exactly once (seq unique and complete, the reference's lines), the last restart
with parallelism 4 (the checkpoint's state re-sharded). And a file read in three parts by parallelism 1, then 2,
then 1 again (each restart re-shards the checkpoint's state): lookups, tables and dead letters as the reference's.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import deltalake
import pyarrow.parquet
import pytest

import reference
from asof_exact_test import _ms, _row_mismatches, _same
from dedup_test import Server

ROOT = Path(__file__).resolve().parent.parent
BIN = os.environ.get("FRESHET_BIN", str(ROOT / "build" / "freshet"))
SECONDS = 300


def _require_binary() -> None:
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")


def _generate(out: Path, events: int, seed: int) -> bytes:
    subprocess.run([BIN, "generate", "--users", "300", "--events", str(events), "--seed", str(seed),
                    "--duration", "6h", "--disorder", "3s", "--late-share", "0.01", "--malformed-share", "0.01",
                    "--event-ids", "--duplicate-share", "0.03", "--output", str(out)],
                   check=True, timeout=SECONDS, capture_output=True)
    return out.read_bytes()


def _spec(folder: Path, parallelism: int, source: str) -> Path:
    """The fraud example with deduplication, frequent checkpoints (encoded mid-run) and `parallelism`."""
    text = (ROOT / "examples" / "fraud" / "fraud.yaml").read_text()
    assert "timestamp: ts\n" in text and "source: {type: file, path: events.jsonl}" in text
    assert "\nschema:\n" in text and "checkpoint:" not in text and "parallelism" not in text
    text = text.replace("timestamp: ts\n", "timestamp: ts\ndedup: {field: event_id, within: 1h}\n"
                                           f"parallelism: {parallelism}\n")
    text = text.replace("\nschema:\n", "\nschema:\n  event_id: string\n")
    text = text.replace("source: {type: file, path: events.jsonl}",
                        f"source: {source}\ncheckpoint: {{interval: 100ms}}\nserve: {{port: 0}}")
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "spec.yaml"
    spec.write_text(text)
    return spec


def _wait(condition, what: str, timeout: float = SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _read_all(server: Server, lines: int) -> None:
    _wait(lambda: server.metric("freshet_events_in_total") >= lines, f"{lines} lines to be read")


def _lookups(server: Server, users: list[str], times: list[int]) -> list[Any]:
    answers = []
    for t in times:
        body = json.dumps({"entities": users + ["nobody"], "at": t}).encode()
        answer = json.loads(server.request("POST", "/v1/features", body))
        answers.append([(r["entity"], r["known"], r["exact"], r["features"]) for r in answer["results"]])
    return answers


def _tables(data_dir: Path) -> dict[str, list[dict]]:
    """The offline tables ordered by seq, without the wall-clock columns. Each file must be in seq order (replays
    and `freshet historical` read them so), whichever shard produced its rows."""
    out = {}
    for name, wall in (("events", "ingest_time"), ("features", "processing_time")):
        delta = deltalake.DeltaTable(str(data_dir / "offline" / name))
        for file in delta.file_uris():
            seqs = pyarrow.parquet.read_table(file, columns=["seq"]).column("seq").to_pylist()
            assert seqs == sorted(seqs), f"{file} is not in seq order"
        table = delta.to_pyarrow_table()
        out[name] = table.drop_columns([wall]).sort_by("seq").to_pylist()
    return out


def _outcome(folder: Path, parallelism: int, source: str, data: bytes, lines: int, users: list[str],
             times: list[int]) -> dict[str, Any]:
    """Runs the pipeline over `data` (a file, or POSTed to /v1/ingest) to its end; what it answered and wrote."""
    spec = _spec(folder, parallelism, source)
    if source.startswith("{type: file"):
        (folder / "events.jsonl").write_bytes(data)
    server = Server(spec, folder / "data", folder / "run.log")
    try:
        if source == "{type: http}":
            chunks = _lines_with_ends(data)
            for k in range(0, len(chunks), 250):
                server.request("POST", "/v1/ingest", b"".join(chunks[k:k + 250]), "application/x-ndjson")
        _read_all(server, lines)
        lookups = _lookups(server, users, times)
    finally:
        assert server.terminate() == 0, (folder / "run.log").read_text()
    # The dead letters, as written but for the source's path (each run reads its own copy).
    dead = b"".join(p.read_bytes() for p in sorted((folder / "data" / "dead_letters").glob("*.jsonl")))
    return {"lookups": lookups, "tables": _tables(folder / "data"),
            "dead_letters": dead.replace(str(folder).encode(), b"FOLDER")}


def _reference(tmp: Path, data: bytes) -> tuple[reference.Spec, list[reference.Event], list[reference.DeadLetter]]:
    spec = reference.load_spec(str(_spec(tmp / "reference", 1, "{type: http}")))
    events, dead = reference.read_events(data, spec)
    return spec, events, dead


def _check_against_reference(spec: reference.Spec, events: list[reference.Event], dead: list[reference.DeadLetter],
                             data: bytes, outcome: dict[str, Any], users: list[str], times: list[int]) -> None:
    lines = reference.split_lines(data)
    stored = outcome["tables"]["events"]
    assert [r["seq"] for r in stored] == list(range(len(events)))
    assert [r["raw"].encode() for r in stored] == [lines[e.line - 1].rstrip(b"\r") for e in events]
    letters = [json.loads(line) for line in outcome["dead_letters"].splitlines()]
    assert [(d["line"], d["reason"] if d["reason"] in ("late", "duplicate") else "rejected") for d in letters] == \
           [(d.line, d.reason if d.reason in ("late", "duplicate") else "rejected") for d in dead]
    mismatches = _row_mismatches(spec, outcome["tables"]["features"], events)
    assert not mismatches, "\n".join(mismatches[:20])
    by_entity = reference.group_by_entity(events)
    for t, answers in zip(times, outcome["lookups"]):
        for entity, known, exact, features in answers[::10]:  # A sample: every tenth entity (and no other).
            assert known == (entity in by_entity) and exact, (entity, t)
            for feature in spec.features:
                expected, _ = reference.feature_value(feature, by_entity.get(entity, []), t, spec)
                assert _same(feature, expected, features[feature.name]), (entity, t, feature.name, expected,
                                                                          features[feature.name])


def _users(events: list[reference.Event]) -> list[str]:
    return sorted({e.entity for e in events})


def _times(events: list[reference.Event]) -> list[int]:
    """The newest accepted time, and 30 s before it (after the horizon: 5 s + 1 m behind it)."""
    newest = max(e.time_ms for e in events)
    return [newest, newest - 30_000]


def test_file_source_values_do_not_depend_on_parallelism(tmp_path: Path) -> None:
    _require_binary()
    data = _generate(tmp_path / "generated.jsonl", 20000, seed=21)
    spec, events, dead = _reference(tmp_path, data)
    reasons = {d.reason for d in dead}
    assert {"late", "duplicate"} <= reasons and len(reasons) > 2, reasons  # Every kind of dead letter occurs.
    users, times = _users(events), _times(events)
    source = "{type: file, path: events.jsonl}"
    outcomes = {p: _outcome(tmp_path / f"p{p}", p, source, data, len(events) + len(dead), users, times)
                for p in (1, 2, 4)}
    for p in (2, 4):
        assert outcomes[p]["dead_letters"] == outcomes[1]["dead_letters"], p
        for name in ("events", "features"):
            assert outcomes[p]["tables"][name] == outcomes[1]["tables"][name], (p, name)
        assert outcomes[p]["lookups"] == outcomes[1]["lookups"], p
    _check_against_reference(spec, events, dead, data, outcomes[4], users, times)
    # A backfill (one thread, from the events table) rewrites the features table of 4 shards as it was.
    subprocess.run([BIN, "backfill", "--spec", str(tmp_path / "p4" / "spec.yaml"), "--data-dir",
                    str(tmp_path / "p4" / "data"), "--no-progress"], check=True, timeout=SECONDS, capture_output=True)
    assert _tables(tmp_path / "p4" / "data")["features"] == outcomes[1]["tables"]["features"]


def test_http_source_values_do_not_depend_on_parallelism(tmp_path: Path) -> None:
    _require_binary()
    data = _generate(tmp_path / "generated.jsonl", 4000, seed=22)
    spec, events, dead = _reference(tmp_path, data)
    users, times = _users(events), _times(events)
    outcomes = {p: _outcome(tmp_path / f"p{p}", p, "{type: http}", data, len(events) + len(dead), users, times)
                for p in (1, 2)}
    assert outcomes[2] == outcomes[1]
    _check_against_reference(spec, events, dead, data, outcomes[2], users, times)


def _lines_with_ends(data: bytes) -> list[bytes]:
    """The lines as the sources split them: at '\n' only."""
    return [line + b"\n" for line in data.split(b"\n")[:-1]] if data.endswith(b"\n") else \
        [line + b"\n" for line in data.split(b"\n")]


def test_kill_and_restart_with_parallelism_2(tmp_path: Path) -> None:
    _require_binary()
    data = _generate(tmp_path / "generated.jsonl", 100000, seed=23)
    _, events, dead = _reference(tmp_path, data)
    lines = _lines_with_ends(data)
    assert len(lines) == len(events) + len(dead)
    spec = _spec(tmp_path / "run", 2, "{type: file, path: events.jsonl, follow: true}")
    events_file = tmp_path / "run" / "events.jsonl"
    events_file.write_bytes(b"")
    log = tmp_path / "run" / "run.log"
    # The file grows while the pipeline follows it; it is killed twice while reading, after a checkpoint.
    done = 0
    for written, kill_at in ((0.4, 0.2), (0.8, 0.6)):
        with open(events_file, "ab") as out:
            out.write(b"".join(lines[done:int(written * len(lines))]))
        done = int(written * len(lines))
        server = Server(spec, tmp_path / "run" / "data", log)
        _wait(lambda: server.metric("freshet_events_in_total") >= kill_at * len(lines)
              and server.metric("freshet_checkpoints_total") > 0, f"{kill_at} of the lines to be read")
        server.kill()
    # Another parallelism takes over the shards' state: re-sharded.
    spec = _spec(tmp_path / "run", 4, "{type: file, path: events.jsonl, follow: true}")
    server = Server(spec, tmp_path / "run" / "data", log)
    try:
        assert log.read_text(errors="replace").count("restored checkpoint") == 2
        assert "written with parallelism 2 and is re-sharded to parallelism 4" in log.read_text(errors="replace")
        with open(events_file, "ab") as out:
            out.write(b"".join(lines[done:]))
        _read_all(server, len(lines))
    finally:
        assert server.terminate() == 0, log.read_text(errors="replace")
    stored = deltalake.DeltaTable(str(tmp_path / "run" / "data" / "offline" / "events")).to_pyarrow_table(
        columns=["seq", "raw"]).sort_by("seq")
    assert stored.column("seq").to_pylist() == list(range(len(events))), "an event lost or doubled"
    assert [raw.encode() for raw in stored.column("raw").to_pylist()] == \
           [lines[e.line - 1].rstrip(b"\n").rstrip(b"\r") for e in events]


def _children(pid: int) -> set[int]:
    """The processes `pid`'s threads forked that are still there."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:  # The thread ended meanwhile (no such file, or no such process while it is reaped).
            pass
    return found


def _alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # Gone (no such file, or no such process while it is reaped).
        return False


def test_kill_while_a_checkpoint_is_encoded_and_the_shards_go_on(tmp_path: Path) -> None:
    """A checkpoint's state is encoded by a forked child (state/forked_snapshot.h) while both shards go on with
    the next events: seen here as the events read rising while that child lives. kill -9 right then: the child
    dies with the process, and the restart (from the checkpoint before) loses no event and counts none twice;
    tables, dead letters and lookups are the reference's. 40,000 entities, so that encoding takes a while."""
    _require_binary()
    generated = _generate(tmp_path / "generated.jsonl", 120000, seed=25)
    # One user per line in turn (the generator's 300 users give a small state that encodes at once).
    data = b"".join(re.sub(rb'"user_id":"[^"]*"', b'"user_id":"u%d"' % (n % 40000), line, count=1)
                    for n, line in enumerate(generated.splitlines(keepends=True)))
    spec, events, dead = _reference(tmp_path, data)
    users, times = _users(events)[::10], _times(events)  # A sample (a request holds at most 10,000 entities).
    lines = _lines_with_ends(data)
    folder = tmp_path / "run"
    source = "{type: file, path: events.jsonl, follow: true}"
    (folder / "events.jsonl").parent.mkdir(parents=True, exist_ok=True)
    (folder / "events.jsonl").write_bytes(b"")
    log = folder / "run.log"
    # Each checkpoint's encoding child waits 2 s before it encodes (a test hook), so that it is alive while the
    # events go on however fast this machine encodes 40,000 entities.
    server = Server(_spec(folder, 2, source), folder / "data", log, env={"FRESHET_TEST_SNAPSHOT_DELAY_MS": "2000"})
    done, step = 0, 1000
    encoder = None
    deadline = time.monotonic() + SECONDS
    try:
        while encoder is None and done < len(lines) // 2:
            assert time.monotonic() < deadline, "no checkpoint was seen being encoded while events went on"
            with open(folder / "events.jsonl", "ab") as out:
                out.write(b"".join(lines[done:done + step]))
            done += step
            _read_all(server, done)
            for child in _children(server.proc.pid):
                read = server.metric("freshet_events_in_total")
                with open(folder / "events.jsonl", "ab") as out:
                    out.write(b"".join(lines[done:done + step]))
                done += step
                _wait(lambda: server.metric("freshet_events_in_total") > read or not _alive(child),
                      "events or the child")
                # After a checkpoint was written, so that the restart restores one (the one in flight never is).
                if server.metric("freshet_events_in_total") > read and _alive(child) and \
                        server.metric("freshet_checkpoints_total") > 0:
                    encoder = child
                    break
    finally:
        server.kill()
    assert encoder is not None, "no checkpoint was seen being encoded while events went on"
    _wait(lambda: not _alive(encoder), "the encoding child to die with its process", timeout=10)
    server = Server(_spec(folder, 2, source), folder / "data", log)
    try:
        with open(folder / "events.jsonl", "ab") as out:
            out.write(b"".join(lines[done:]))
        _read_all(server, len(lines))
        lookups = _lookups(server, users, times)
    finally:
        assert server.terminate() == 0, log.read_text(errors="replace")
    assert log.read_text(errors="replace").count("restored checkpoint") == 1
    dead_letters = b"".join(p.read_bytes() for p in sorted((folder / "data" / "dead_letters").glob("*.jsonl")))
    outcome = {"lookups": lookups, "tables": _tables(folder / "data"), "dead_letters": dead_letters}
    _check_against_reference(spec, events, dead, data, outcome, users, times)


def test_restore_with_another_parallelism(tmp_path: Path) -> None:
    """Parallelism 1, then 2, then 1 over one growing file: each restart moves every entity to the shard its name
    hashes to now; the values are the reference's, as if one run had read it all."""
    _require_binary()
    data = _generate(tmp_path / "generated.jsonl", 20000, seed=24)
    spec, events, dead = _reference(tmp_path, data)
    users, times = _users(events), _times(events)
    lines = _lines_with_ends(data)
    folder = tmp_path / "run"
    source = "{type: file, path: events.jsonl, follow: true}"
    _spec(folder, 1, source)
    (folder / "events.jsonl").write_bytes(b"")
    log = folder / "run.log"
    done = 0
    for part, parallelism in ((1, 1), (2, 2), (3, 1)):
        server = Server(_spec(folder, parallelism, source), folder / "data", log)
        try:
            with open(folder / "events.jsonl", "ab") as out:
                out.write(b"".join(lines[done:len(lines) * part // 3]))
            done = len(lines) * part // 3
            _read_all(server, done)
            if part == 3:
                lookups = _lookups(server, users, times)
        finally:
            assert server.terminate() == 0, log.read_text(errors="replace")
    text = log.read_text(errors="replace")
    assert "written with parallelism 1 and is re-sharded to parallelism 2" in text, text
    assert "written with parallelism 2 and is re-sharded to parallelism 1" in text, text
    dead_letters = b"".join(p.read_bytes() for p in sorted((folder / "data" / "dead_letters").glob("*.jsonl")))
    outcome = {"lookups": lookups, "tables": _tables(folder / "data"), "dead_letters": dead_letters}
    _check_against_reference(spec, events, dead, data, outcome, users, times)

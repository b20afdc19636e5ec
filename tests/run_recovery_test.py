"""`freshet run` survives kill -9: after several crashes at random moments and restarts, the values it
serves equal `freshet historical` over the same events at the same time, and the dead letters hold each
rejected or late line exactly once, and the offline events table each accepted line exactly once. Covers the file source (followed while it grows) and HTTP pushes.

The comparison is against `freshet historical`, which tests/historical_diff_test.py checks against the
independent brute-force reference in tests/reference.py.
"""
from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fraud_features import FEATURES_YAML

BIN = os.environ.get("FRESHET_BIN", str(Path(__file__).resolve().parent.parent / "build" / "freshet"))

SPEC = """name: recovery
entity: user_id
timestamp: ts
watermark: {{max_out_of_orderness: 3s, allowed_lateness: 10s}}
source: {source}
serve: {{port: 0}}
checkpoint: {{interval: 200ms, keep: 3}}
features:
{features}\
  - {{name: approx_items, aggregation: approx_count_distinct, field: item_id, precision: 10, window: {{type: lifetime}}}}
"""

AS_OF = "2026-01-02T00:10:00Z"


def _require_binary() -> None:
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")


def _generate(tmp: Path, events: int, seed: int) -> list[bytes]:
    path = tmp / "all.jsonl"
    subprocess.run([BIN, "generate", "--users", "300", "--events", str(events), "--seed", str(seed),
                    "--disorder", "2s", "--late-share", "0.01", "--malformed-share", "0.01",
                    "--output", str(path)], check=True)
    return path.read_bytes().splitlines(keepends=True)


class Server:
    """One `freshet run` process; kill() is SIGKILL, no goodbye."""

    def __init__(self, spec: Path, data_dir: Path, log: Path):
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([BIN, "run", "--spec", str(spec), "--data-dir", str(data_dir)],
                                     stdout=self.log, stderr=subprocess.PIPE)
        self.startup = b""  # What it said until it served.
        line = b""
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            self.log.write(line)
            self.startup += line
            match = re.search(rb"http://127\.0\.0\.1:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                return
            if not line and self.proc.poll() is not None:
                break
        raise AssertionError(f"freshet run did not start: {line!r}")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return r.read().decode()

    def post(self, path: str, body: bytes, content_type: str) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, method="POST",
                                     headers={"Content-Type": content_type})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def metric(self, name: str) -> float:
        for line in self.get("/metrics").splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"metric {name} not found")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.write(self.proc.stderr.read())
        self.log.close()

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        said = self.proc.stderr.read()  # Everything it said after starting.
        self.log.write(said)
        self.log.close()
        if code != 0:  # Into the test's captured output: the log file goes with pytest's old temp folders.
            sys.stderr.write(f"freshet run exited with {code}; the end of its stderr:\n")
            sys.stderr.write(said[-4000:].decode(errors="replace") + "\n")
        return code


def _expected(tmp: Path, spec: Path, events: Path, users: list[str]) -> dict[str, dict[str, str]]:
    entities = tmp / "entities.csv"
    with open(entities, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "ts"])
        for u in users:
            w.writerow([u, AS_OF])
    out = tmp / "expected.csv"
    subprocess.run([BIN, "historical", "--spec", str(spec), "--events", str(events), "--entities", str(entities),
                    "--output", str(out), "--dead-letters", str(tmp / "expected_dead.jsonl"), "--no-progress"],
                   check=True)
    with open(out, newline="") as f:
        return {row["user_id"]: row for row in csv.DictReader(f)}


def _served(server: Server, users: list[str]) -> dict[str, dict]:
    body = json.dumps({"entities": users, "at": AS_OF}).encode()
    answer = server.post("/v1/features", body, "application/json")
    return {r["entity"]: r["features"] for r in answer["results"]}


def _same(expected: str, got) -> bool:
    if got is None:
        return expected == ""
    if isinstance(got, bool):
        return expected == ("true" if got else "false")
    if isinstance(got, (int, float)):
        return expected != "" and float(expected) == float(got)  # Same operators: the same bits.
    return expected == str(got)


def _check(tmp: Path, spec: Path, all_events: Path, server: Server) -> None:
    users = sorted({json.loads(l)["user_id"] for l in all_events.read_bytes().splitlines()
                    if _is_event(l)} | {"nobody"})
    expected = _expected(tmp, spec, all_events, users)
    served = _served(server, users)
    mismatches = []
    for u in users:
        for name, value in served[u].items():
            if not _same(expected[u][name], value):
                mismatches.append(f"{u} {name}: historical {expected[u][name]!r}, served {value!r}")
    assert not mismatches, "\n".join(mismatches[:20])
    # Every rejected or late line is dead-lettered exactly once, crashes notwithstanding.
    dead_dir = next((tmp / "data" / "dead_letters").iterdir())
    served_dead = [json.loads(l) for l in dead_dir.read_text().splitlines()]
    expected_dead = [json.loads(l) for l in (tmp / "expected_dead.jsonl").read_text().splitlines()]
    assert sorted(d["reason"] == "late" for d in served_dead) == sorted(d["reason"] == "late" for d in expected_dead)
    assert len(served_dead) == len(expected_dead)


def _check_offline(tmp: Path, all_events: Path) -> None:
    """After the last stop: the offline events table holds every accepted line exactly once (crashes
    notwithstanding), and the features table one row per accepted event."""
    import deltalake
    from reference import split_lines

    dead = {json.loads(l)["line"] for l in (tmp / "expected_dead.jsonl").read_text().splitlines()}
    accepted = sorted(l.rstrip(b"\r") for n, l in enumerate(split_lines(all_events.read_bytes()), start=1)
                      if n not in dead)
    events = deltalake.DeltaTable(str(tmp / "data" / "offline" / "events")).to_pyarrow_table(columns=["seq", "raw"])
    assert sorted(events.column("seq").to_pylist()) == list(range(len(accepted)))
    assert sorted(r.encode() for r in events.column("raw").to_pylist()) == accepted
    features = deltalake.DeltaTable(str(tmp / "data" / "offline" / "features")).to_pyarrow_table(columns=["seq"])
    assert sorted(features.column("seq").to_pylist()) == list(range(len(accepted)))


def _is_event(line: bytes) -> bool:
    try:
        value = json.loads(line)
        return isinstance(value, dict) and isinstance(value.get("user_id"), str) and value["user_id"] != ""
    except ValueError:
        return False


STATE_GAUGES = ("freshet_state_entities", "freshet_watermark_seconds")


def _check_restored_gauges(server: Server) -> bool:
    """Right after a restart the state gauges show at least what was restored (they are set on restore, not only
    by the next event). True when the restart restored a checkpoint with entities (so the check said something)."""
    match = re.search(rb"restored checkpoint \d+: (\d+) entities", server.startup)
    if match is None or int(match.group(1)) == 0:
        return False
    try:
        assert server.metric("freshet_state_entities") >= int(match.group(1))
        assert server.metric("freshet_watermark_seconds") > 1.7e9  # The generated events are of 2026.
    except BaseException:
        server.kill()
        raise
    return True


def _wait_for(server: Server, metric: str, target: float, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.metric(metric) >= target:
            return
        time.sleep(0.05)
    raise AssertionError(f"{metric} did not reach {target}: {server.metric(metric)}")


@pytest.mark.parametrize("seed", [1, 2])
def test_file_source_survives_kill_minus_nine(tmp_path: Path, seed: int) -> None:
    _require_binary()
    rng = random.Random(seed)
    lines = _generate(tmp_path, 40000, seed)
    (tmp_path / "spec.yaml").write_text(SPEC.format(features=FEATURES_YAML, source="{type: file, path: events.jsonl, follow: true}"))
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"")
    written = 0
    restored = 0
    for crash in range(5):
        server = Server(tmp_path / "spec.yaml", tmp_path / "data", tmp_path / "run.log")
        restored += _check_restored_gauges(server)
        # Append the next part of the stream while it runs, then crash at a random moment.
        chunk = lines[written:written + len(lines) // 6]
        with open(events, "ab") as f:
            f.write(b"".join(chunk))
        written += len(chunk)
        time.sleep(rng.uniform(0.05, 0.6))
        server.kill()
    with open(events, "ab") as f:
        f.write(b"".join(lines[written:]))
    server = Server(tmp_path / "spec.yaml", tmp_path / "data", tmp_path / "run.log")
    try:
        restored += _check_restored_gauges(server)
        assert restored > 0
        _wait_for(server, "freshet_events_in_total", len(lines))
        _check(tmp_path, tmp_path / "spec.yaml", events, server)
        assert server.metric("freshet_events_in_total") == len(lines)  # Nothing counted twice.
        gauges = {name: server.metric(name) for name in STATE_GAUGES}
    finally:
        assert server.terminate() == 0
    _check_offline(tmp_path, events)
    # Restarted with nothing new to read: the gauges show the restored state at once, not 0 until an event.
    server = Server(tmp_path / "spec.yaml", tmp_path / "data", tmp_path / "run.log")
    try:
        assert {name: server.metric(name) for name in STATE_GAUGES} == gauges
        assert gauges["freshet_state_entities"] > 0 and gauges["freshet_watermark_seconds"] > 1.7e9
    finally:
        assert server.terminate() == 0


def test_http_pushes_survive_kill_minus_nine(tmp_path: Path) -> None:
    _require_binary()
    rng = random.Random(7)
    lines = _generate(tmp_path, 30000, 5)
    (tmp_path / "spec.yaml").write_text(SPEC.format(features=FEATURES_YAML, source="{type: http}"))
    acked: list[bytes] = []
    position = 0
    batch = 500
    for crash in range(4):
        server = Server(tmp_path / "spec.yaml", tmp_path / "data", tmp_path / "run.log")
        _check_restored_gauges(server)
        stop_at = min(len(lines), position + len(lines) // 5)
        while position < stop_at:
            body = b"".join(lines[position:position + batch])
            ack = server.post("/v1/ingest", body, "application/x-ndjson")
            sent = lines[position:position + batch]  # Blank lines too: logged, then dead-lettered like a file's.
            assert ack["accepted"] + ack["rejected"] == len(sent), ack  # Every line is logged.
            acked.extend(sent)
            position += batch
        time.sleep(rng.uniform(0.0, 0.3))  # The pipeline is still applying the log: crash mid-way.
        server.kill()
    server = Server(tmp_path / "spec.yaml", tmp_path / "data", tmp_path / "run.log")
    _check_restored_gauges(server)
    try:
        while position < len(lines):
            body = b"".join(lines[position:position + batch])
            server.post("/v1/ingest", body, "application/x-ndjson")
            acked.extend(lines[position:position + batch])
            position += batch
        _wait_for(server, "freshet_events_in_total", len(acked))
        all_events = tmp_path / "acked.jsonl"
        all_events.write_bytes(b"".join(acked))
        _check(tmp_path, tmp_path / "spec.yaml", all_events, server)
        assert server.metric("freshet_events_in_total") == len(acked)
    finally:
        assert server.terminate() == 0
    _check_offline(tmp_path, all_events)


def test_freshness_slo_breach_degrades_health_and_warns_once(tmp_path: Path) -> None:
    _require_binary()
    lines = _generate(tmp_path, 20000, 3)
    spec = SPEC.format(features=FEATURES_YAML, source="{type: http}").replace("checkpoint:", "freshness_slo: {p99: 1ms, window: 1m}\ncheckpoint:")
    (tmp_path / "spec.yaml").write_text(spec)
    server = Server(tmp_path / "spec.yaml", tmp_path / "data", tmp_path / "run.log")
    try:
        assert json.loads(server.get("/health"))["status"] == "ok"
        for start in range(0, len(lines), 5000):  # Big pushes: their events wait well over 1 ms.
            server.post("/v1/ingest", b"".join(lines[start:start + 5000]), "application/x-ndjson")
        _wait_for(server, "freshet_events_in_total", len(lines))
        deadline = time.monotonic() + 30
        while True:  # The SLO is checked between polls of the source: wait for the check, not a fixed time.
            try:
                server.get("/health")
            except urllib.error.HTTPError as e:
                assert e.code == 503
                body = json.loads(e.read())
                assert body["status"] == "degraded" and any("freshness" in r for r in body["reasons"]), body
                break
            assert time.monotonic() < deadline, "/health should answer 503 while the SLO is breached"
            time.sleep(0.05)
        assert server.metric("freshet_freshness_slo_breached") == 1
        # The p99 the SLO saw is over its 1 ms target: more than 1% of the freshness histogram is above 1 ms.
        assert server.metric("freshet_freshness_slo_target_seconds") == 0.001
        assert (server.metric('freshet_freshness_seconds_bucket{le="0.001"}')
                < 0.99 * server.metric("freshet_freshness_seconds_count"))
    finally:
        assert server.terminate() == 0
    log = (tmp_path / "run.log").read_bytes().decode(errors="replace")
    assert log.count("freshness SLO breached") == 1, log

"""Event-id deduplication (`dedup: {field: event_id, within: ...}`), end to end.

- `freshet historical` and `freshet run --exit-at-end` agree with the brute-force reference (tests/reference.py)
  on a generated stream in which some lines are resent (`freshet generate --event-ids --duplicate-share`),
  with a watermark (resends late or duplicate) and without one (resends more than `within` behind the newest
  event are accepted again).
- The at-least-once producer: a client pushes batches of events with unique ids to `POST /v1/ingest` and resends
  every batch whose acknowledgement it did not get, while `freshet run` is killed with SIGKILL at random moments
  and restarted on its data directory; some acknowledgements are also lost on the way (the client drops them).
  At the end every event counts exactly once: the offline `events` table holds each id once, and each entity's
  lifetime count is its number of distinct events. Without `dedup` in the spec this test fails: resent batches
  are counted twice.
"""
from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml

import historical_diff_test as diff
import reference as ref

BIN = os.environ.get("FRESHET_BIN", str(Path(__file__).resolve().parent.parent / "build" / "freshet"))

FEATURES = [
    {"name": "n_events", "aggregation": "count", "window": {"type": "lifetime"}},
    {"name": "purchases_30m", "aggregation": "count", "where": "type == 'purchase'",
     "window": {"type": "sliding", "size": "30m", "slide": "1m"}},
    {"name": "amount_sum_1h", "aggregation": "sum", "field": "amount", "window": {"type": "sliding", "size": "1h"}},
    {"name": "categories_session", "aggregation": "count_distinct", "field": "category",
     "window": {"type": "session", "gap": "30m"}},
    {"name": "last_type", "aggregation": "last", "field": "type", "window": {"type": "lifetime"}},
]


def _require_binary() -> None:
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")


def _generate(out: Path, *extra: str) -> None:
    subprocess.run([BIN, "generate", *extra, "--output", str(out), "--no-progress"], check=True, timeout=120)


def _dead_letters(path: Path) -> dict[int, str]:
    if not path.exists():
        return {}
    return {int(d["line"]): d["reason"] for d in map(json.loads, path.read_text().splitlines())}


def _reason_class(reason: str) -> str:
    return reason if reason in ("late", "duplicate") else "rejected"


# ------------------------------------------------------------------------------------------------------------
# The three paths against the reference
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("watermark,within", [({"max_out_of_orderness": "3s", "allowed_lateness": "30s"}, "24h"),
                                              (None, "20s")])
def test_historical_and_run_agree_with_the_reference(tmp_path: Path, watermark, within) -> None:
    _require_binary()
    paths = {name: str(tmp_path / name) for name in ("spec.yaml", "events.jsonl", "entities.csv", "output.csv",
                                                     "dead.jsonl")}
    # 6000 events over 2 h: a line every 1.2 s, so a resend 1-50 lines later is up to a minute behind: with the
    # watermark some are late, some duplicates; without it, some are more than 20 s behind the newest event.
    _generate(Path(paths["events.jsonl"]), "--users", "60", "--events", "6000", "--seed", "11", "--duration", "2h",
              "--disorder", "2s", "--late-share", "0.005", "--malformed-share", "0.01", "--event-ids",
              "--duplicate-share", "0.05", "--entities", paths["entities.csv"], "--entity-rows", "800")
    spec = {"name": "dedup_diff", "entity": "user_id", "timestamp": "ts", "dedup": {"field": "event_id",
                                                                                   "within": within},
            "features": FEATURES}
    if watermark is not None:
        spec["watermark"] = watermark
    spec["source"] = {"type": "file", "path": "events.jsonl"}
    Path(paths["spec.yaml"]).write_text(yaml.safe_dump(spec, sort_keys=False))

    data = Path(paths["events.jsonl"]).read_bytes()
    events, dead = ref.read_events(data, ref.load_spec(paths["spec.yaml"]))
    want_dead = {d.line: _reason_class(d.reason) for d in dead}
    reasons = Counter(want_dead.values())
    assert reasons["duplicate"] > 50, reasons  # The case exercises the rule...
    ids = Counter(ref.event_id(e.record.get("event_id")) for e in events)
    if watermark is None:
        assert max(ids.values()) > 1, "no resend is accepted twice: the no-watermark bound is not exercised"
    else:
        assert reasons["late"] > 0 and max(ids.values()) == 1

    # freshet historical: every value and every dead letter.
    diff.run_engine(paths)
    problems = diff.compare(paths, "historical")
    assert not problems, "\n".join(problems)
    got_dead = {line: _reason_class(reason) for line, reason in _dead_letters(Path(paths["dead.jsonl"])).items()}
    assert got_dead == want_dead
    result = subprocess.run([BIN, "historical", "--spec", paths["spec.yaml"], "--events", paths["events.jsonl"],
                             "--entities", paths["entities.csv"], "--output", str(tmp_path / "again.csv"),
                             "--no-progress"], capture_output=True, text=True, timeout=120, check=True)
    assert f"{reasons['late']} late, {reasons['duplicate']} duplicates;" in result.stderr, result.stderr

    # freshet run over the file: the events table holds exactly the accepted lines, in input order, and the
    # dead letters say the same as the reference.
    subprocess.run([BIN, "run", "--spec", paths["spec.yaml"], "--data-dir", str(tmp_path / "data"), "--port", "0",
                    "--exit-at-end"], check=True, timeout=300, capture_output=True)
    import deltalake

    table = deltalake.DeltaTable(str(tmp_path / "data" / "offline" / "events")).to_pyarrow_table(columns=["seq", "raw"])
    stored = sorted(zip(table.column("seq").to_pylist(), table.column("raw").to_pylist()))
    lines = ref.split_lines(data)
    assert [raw.encode() for _, raw in stored] == [lines[e.line - 1].rstrip(b"\r") for e in events]
    assert [seq for seq, _ in stored] == list(range(len(events)))
    run_dead = {line: _reason_class(reason)
                for line, reason in _dead_letters(tmp_path / "data" / "dead_letters" / "file.jsonl").items()}
    assert run_dead == want_dead


# ------------------------------------------------------------------------------------------------------------
# The at-least-once producer against kill -9
# ------------------------------------------------------------------------------------------------------------

HTTP_SPEC = """name: dedup_http
entity: user_id
timestamp: ts
watermark: {max_out_of_orderness: 3s, allowed_lateness: 10m}
dedup: {field: event_id, within: 1h}
source: {type: http}
serve: {port: 0}
checkpoint: {interval: 200ms, keep: 3}
features:
  - {name: n_events, aggregation: count, window: {type: lifetime}}
"""


class Server:
    """One `freshet run` on a free port, its stderr in a log file; kill() is SIGKILL."""

    def __init__(self, spec: Path, data_dir: Path, log: Path, env: dict[str, str] | None = None):
        self.log_path = log
        start = log.stat().st_size if log.exists() else 0
        self.log = open(log, "ab")
        self.proc = subprocess.Popen([BIN, "run", "--spec", str(spec), "--data-dir", str(data_dir)],
                                     stdout=self.log, stderr=self.log, env=None if env is None else dict(os.environ, **env))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = log.read_bytes()[start:].decode(errors="replace")
            match = re.search(r"http://127\.0\.0\.1:(\d+)", text)
            if match:
                self.port = int(match.group(1))
                self.startup = text  # What it said until it served.
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.proc.kill()
        raise AssertionError(f"freshet run did not start:\n{log.read_bytes()[start:].decode(errors='replace')}")

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, method=method,
                                     headers={"Content-Type": content_type})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    def metric(self, name: str) -> float:
        for line in self.request("GET", "/metrics").decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"metric {name} not found")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.log.close()
        return code


class Producer(threading.Thread):
    """Pushes the batches in order, one every 10 ms or so, each until acknowledged: on an error or a lost
    acknowledgement it sends the same batch again, to whichever server is up. Drops a tenth of the
    acknowledgements it does get."""

    def __init__(self, batches: list[bytes], seed: int):
        super().__init__(daemon=True)
        self.batches = batches
        self.rng = random.Random(seed)
        self.server: Server | None = None
        self.acked = 0  # Batches acknowledged (and kept).
        self.dropped_acks = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for body in self.batches:
                while True:
                    server = self.server
                    if server is None:
                        time.sleep(0.01)  # Between a kill and the restart.
                        continue
                    try:
                        ack = json.loads(server.request("POST", "/v1/ingest", body, "application/x-ndjson"))
                    except (OSError, http.client.HTTPException, ValueError):
                        time.sleep(0.01)  # Refused, reset or cut off: no acknowledgement, so send it again.
                        continue
                    assert ack["accepted"] + ack["rejected"] == body.count(b"\n"), ack
                    if self.rng.random() < 0.1:
                        self.dropped_acks += 1  # As if the answer were lost on the way: send it again.
                        continue
                    self.acked += 1
                    time.sleep(0.01)  # Its pace: the servers live long enough to checkpoint now and then.
                    break
        except BaseException as e:  # noqa: BLE001 - reported by the test thread.
            self.error = e


STATE_GAUGES = ("freshet_state_entities", "freshet_watermark_seconds", "freshet_dedup_ids")


def _check_restored_gauges(server: Server) -> bool:
    """Right after a restart the state gauges show at least what was restored (they are set on restore, not only
    by the next event). True when a checkpoint with entities was restored."""
    match = re.search(r"restored checkpoint \d+: (\d+) entities", server.startup)
    if match is None or int(match.group(1)) == 0:
        return False
    assert server.metric("freshet_state_entities") >= int(match.group(1))
    assert server.metric("freshet_watermark_seconds") > 1.7e9  # The generated events are of 2026.
    assert server.metric("freshet_dedup_ids") > 0
    return True


def _wait(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_event_counts_once_through_kills_and_resends(tmp_path: Path) -> None:
    _require_binary()
    rng = random.Random(5)
    events_path = tmp_path / "events.jsonl"
    # A line every 1.1 s of event time: a batch spans less than the allowed lateness, so a resent batch is
    # duplicates, not late events.
    _generate(events_path, "--users", "200", "--events", "20000", "--seed", "5", "--duration", "6h",
              "--disorder", "2s", "--event-ids")
    lines = events_path.read_bytes().splitlines(keepends=True)
    records = [json.loads(line) for line in lines]
    batch = 100
    producer = Producer([b"".join(lines[k:k + batch]) for k in range(0, len(lines), batch)], seed=9)
    spec = tmp_path / "spec.yaml"
    spec.write_text(HTTP_SPEC)
    log = tmp_path / "run.log"

    producer.start()
    kills = 0
    restored_with_state = 0
    while kills < 6:
        server = Server(spec, tmp_path / "data", log)
        try:
            restored_with_state += _check_restored_gauges(server)
            producer.server = server
            target = producer.acked + rng.randint(5, 25)
            _wait(lambda: producer.acked >= target or producer.error is not None or not producer.is_alive(),
                  "the producer to get acknowledgements")
            time.sleep(rng.uniform(0, 0.05))  # A random moment: mid-request, mid-apply or mid-checkpoint.
        finally:
            producer.server = None
            server.kill()
        kills += 1
    server = Server(spec, tmp_path / "data", log)
    try:
        restored_with_state += _check_restored_gauges(server)
        assert restored_with_state > 0
        producer.server = server
        producer.join(timeout=300)
        assert producer.error is None, repr(producer.error)
        assert not producer.is_alive() and producer.acked == len(producer.batches)
        assert producer.dropped_acks > 0
        # Every dropped acknowledgement put a whole batch into the log twice (kills may have added more copies).
        copies = len(lines) + producer.dropped_acks * batch

        def read() -> float:
            return server.metric("freshet_events_accepted_total") + server.metric("freshet_events_duplicate_total")

        _wait(lambda: read() >= copies, f"{copies} events to be read")
        assert server.metric("freshet_events_accepted_total") == len(lines), "some event was counted twice"
        assert server.metric("freshet_events_duplicate_total") >= producer.dropped_acks * batch
        assert server.metric("freshet_events_late_total") == 0

        users = sorted({r["user_id"] for r in records})
        answer = json.loads(server.request("POST", "/v1/features", json.dumps({"entities": users}).encode()))
        served = {r["entity"]: r["features"]["n_events"] for r in answer["results"]}
        assert served == dict(Counter(r["user_id"] for r in records))
        gauges = {name: server.metric(name) for name in STATE_GAUGES}
    finally:
        code = server.terminate()
    assert code == 0
    # Restarted with nothing new to read: the gauges show the restored state at once, not 0 until an event.
    server = Server(spec, tmp_path / "data", log)
    try:
        assert {name: server.metric(name) for name in STATE_GAUGES} == gauges
        assert gauges["freshet_state_entities"] == len(users) and gauges["freshet_dedup_ids"] > 0
    finally:
        assert server.terminate() == 0
    dead = _dead_letters(tmp_path / "data" / "dead_letters" / "http.jsonl")
    assert set(dead.values()) == {"duplicate"}

    import deltalake

    table = deltalake.DeltaTable(str(tmp_path / "data" / "offline" / "events")).to_pyarrow_table(columns=["raw"])
    stored = Counter(json.loads(raw)["event_id"] for raw in table.column("raw").to_pylist())
    assert stored.most_common(1)[0][1] == 1, f"counted twice: {[i for i, n in stored.items() if n > 1][:10]}"
    assert set(stored) == {r["event_id"] for r in records}

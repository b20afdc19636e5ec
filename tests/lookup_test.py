"""Async lookups (`lookups:`) against real stores, checked against the brute-force reference (tests/reference.py).

Redis: a real redis-server holds a hash per user (some users have none); features filter and aggregate on the
looked-up fields and on a field derived from one. The stream is killed (kill -9) after a checkpoint and resumes.
The features table equals the reference fed the answers the server held, every event is in it once, each events
row records the answer its event used, a backfill rewrites the features table bit for bit, and `freshet
historical` from the offline store equals the reference without the store (it is stopped first).

HTTP: a local server answers each user's first request slowest (so answers complete out of order), some users
never in time (timeouts), some with 404. Each event still comes out in input order (a last_k of the input
position), timeouts are counted, and with on_timeout: dead_letter the timed-out events are dead letters with
reason lookup_timeout, as the reference says.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import deltalake
import pytest

import reference
from redis_server import REDIS_SERVER, RedisServer, free_port, redis_server  # noqa: F401  (pytest fixture)
from feature_runs import features_table_mismatches, historical_store_mismatches
from run_process import start_run
from run_process import append_bytes as _append, get_bytes as _get, json_lines as _lines

BIN = os.environ.get("FRESHET_BIN", str(Path(__file__).resolve().parent.parent / "build" / "freshet"))

T0 = 1767225600000  # 2026-01-01T00:00:00Z
USERS = 20

REDIS_SPEC = """name: credit
entity: user
timestamp: ts
watermark: {{max_out_of_orderness: 2s, allowed_lateness: 1s}}
source: {{type: file, path: events.jsonl, follow: true}}
serve: {{port: 0}}
checkpoint: {{interval: 300ms}}
lookups:
  - name: credit
    type: redis
    key: "credit:{{user}}"
    port: {port}
    timeout: 2s
    max_in_flight: 100
    cache: {{ttl: 60s, max_entries: 8}}
derive:
  - {{name: risk, expr: "amount * 1000 / credit.score"}}
features:
  - {{name: gold_spend, aggregation: sum, field: amount, where: "credit.tier == 'gold'", window: {{type: lifetime}}}}
  - {{name: max_score, aggregation: max, field: credit.score, window: {{type: sliding, size: 1h}}}}
  - {{name: mean_risk, aggregation: mean, field: risk, window: {{type: lifetime}}}}
  - {{name: n_high, aggregation: count, where: "credit.limit > 500", window: {{type: lifetime}}}}
  - {{name: last_tier, aggregation: last, field: credit.tier, window: {{type: lifetime}}}}
  - {{name: n_events, aggregation: count, window: {{type: lifetime}}}}
"""


def _require_binary() -> None:
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")


def _metric(port: int, name: str, labels: str = "") -> float:
    total = 0.0
    for line in _get(port, "/metrics").decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{" + labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait(condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _health_ok(port: int) -> bool:
    try:
        _get(port, "/health")
        return True
    except urllib.error.HTTPError:
        return False


def _events(batches: int, per_batch: int, seed: int) -> list[list[dict]]:
    import random
    rng = random.Random(seed)
    out, t, n = [], T0, 0
    for _ in range(batches):
        batch = []
        for _ in range(per_batch):
            t += rng.randint(1, 10) * 1000
            batch.append({"user": f"u{rng.randint(0, USERS - 1)}", "ts": t, "amount": rng.randint(1, 100), "n": n})
            n += 1
        out.append(batch)
    return out


def test_redis_lookups_equal_the_reference_across_a_crash_and_in_replays(tmp_path: Path, redis_server) -> None:  # noqa: F811
    _require_binary()
    client = redis_server.client()
    served: dict[str, dict[str, str]] = {}
    for u in range(USERS - 5):  # u15..u19 have no hash: their looked-up fields are missing
        fields = {"score": str(300 + 37 * u), "tier": "gold" if u % 3 == 0 else "silver",
                  "limit": f"{100 * u}.5" if u % 2 else str(100 * u)}
        client.command("HSET", f"credit:u{u}", *[x for kv in fields.items() for x in kv])
        served[f"credit:u{u}"] = fields

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(REDIS_SPEC.format(port=redis_server.port))
    (tmp_path / "events.jsonl").write_bytes(b"")
    batches = _events(3, 150, seed=5)
    command = [BIN, "run", "--spec", str(spec_path), "--data-dir", str(tmp_path / "data")]
    proc, port = start_run(command, tmp_path / "run1.log")
    lines = 0
    for k, batch in enumerate(batches):
        _append(tmp_path / "events.jsonl", _lines(batch))
        lines += len(batch)
        _wait(lambda: _metric(port, "freshet_events_in_total") >= lines, f"{lines} lines read")
        if k == 1:
            # Each event is a cache hit or a miss (repeats of a key within one batch share its one request); the
            # second batch finds answers of the first in the cache.
            assert _metric(port, "freshet_lookup_requests_total") > 0
            assert _metric(port, "freshet_lookup_latency_seconds_count") > 0
            hits = _metric(port, "freshet_lookup_cache_hits_total")
            misses = _metric(port, "freshet_lookup_cache_misses_total")
            assert hits + misses == lines and hits > 0
            assert _metric(port, "freshet_lookup_timeouts_total") == 0
            # kill -9 once everything so far is checkpointed; the restart reads on from there.
            seen = _metric(port, "freshet_checkpoints_total")
            _wait(lambda: _metric(port, "freshet_checkpoints_total") >= seen + 1, "a checkpoint")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc, port = start_run(command, tmp_path / "run2.log")
    health = json.loads(_get(port, "/health"))
    assert health["status"] == "ok", health
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0

    ref_spec = reference.load_spec(str(spec_path))
    data = b"".join(_lines(b) for b in batches)

    def answer_of(name: str, key: str):
        assert name == "credit"
        return reference.redis_hash_row(served.get(key, {}))

    events, dead = reference.read_events(data, ref_spec, lookup_answers=answer_of)
    assert not dead and len(events) == lines

    offline = tmp_path / "data" / "offline"
    # Every event once, in input order, each with the answer it used.
    stored = deltalake.DeltaTable(str(offline / "events")).to_pyarrow_table().sort_by("seq").to_pylist()
    assert [json.loads(r["raw"])["n"] for r in stored] == list(range(lines))
    for r in stored:
        raw = json.loads(r["raw"])
        assert json.loads(r["lookups"]) == {"credit": answer_of("credit", f"credit:{raw['user']}")}, r

    rows = deltalake.DeltaTable(str(offline / "features")).to_pyarrow_table().sort_by("seq").to_pylist()
    assert [r["seq"] for r in rows] == list(range(lines))
    mismatches = features_table_mismatches(ref_spec, rows, events)
    assert not mismatches, "\n".join(mismatches[:20])

    # Replays use the recorded answers: with the store gone they still give the stream's values.
    redis_server.stop()
    streamed = deltalake.DeltaTable(str(offline / "features")).to_pyarrow_table().drop_columns(["processing_time"])
    subprocess.run([BIN, "backfill", "--spec", str(spec_path), "--data-dir", str(tmp_path / "data"),
                    "--no-progress", "--no-checkpoint"], check=True)
    backfilled = deltalake.DeltaTable(str(offline / "features")).to_pyarrow_table().drop_columns(["processing_time"])
    assert backfilled.sort_by("seq").equals(streamed.sort_by("seq"))

    times = sorted(e.time_ms for e in events)
    rows_csv = tmp_path / "rows.csv"
    keys = [(f"u{u}", times[k] + 500) for u in range(USERS) for k in range(0, len(times), 41)]
    rows_csv.write_text("user,ts\n" + "".join(f"{u},{t}\n" for u, t in keys))
    mismatches += historical_store_mismatches(spec_path, tmp_path / "data", rows_csv, ref_spec, events)
    assert not mismatches, "\n".join(mismatches[:20])

    # From a file there are no recorded answers, and historical does not call the store: it says so.
    result = subprocess.run([BIN, "historical", "--spec", str(spec_path), "--entities", str(rows_csv), "--output",
                             str(tmp_path / "x.csv"), "--events", str(tmp_path / "events.jsonl")],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "lookups" in result.stderr, result.stderr


class SlowCreditServer:
    """GET /credit/{user}: u0..u4 answer their first request after `slow_s` (later ones at once), u5 and u6 never
    in time (after `dead_s`), u7 is 404; the others answer at once. Every answer is a fixed function of the user."""

    def __init__(self, slow_s: float, dead_s: float):
        self.slow_s, self.dead_s = slow_s, dead_s
        self.requests: list[str] = []  # users in the order their requests arrived
        self.answered: list[int] = []  # indexes into `requests`, in the order their answers were sent
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                user = self.path.rsplit("/", 1)[-1]
                with server.lock:
                    first = user not in server.requests
                    index = len(server.requests)
                    server.requests.append(user)
                number = int(user[1:])
                if number in (5, 6):
                    time.sleep(server.dead_s)
                elif number < 5 and first:
                    time.sleep(server.slow_s)
                answer = server.answer(user)
                body = b"" if answer is None else json.dumps(answer).encode()
                try:
                    self.send_response(404 if answer is None else 200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    return  # The client gave up (a timeout).
                with server.lock:
                    server.answered.append(index)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def answer(user: str) -> dict | None:
        number = int(user[1:])
        if number == 7:
            return None
        return {"score": 500 + 11 * number, "tier": "gold" if number % 2 else "silver", "nested": {"x": number / 4}}

    def answer_of(self, name: str, url: str):
        user = url.rsplit("/", 1)[-1]
        if int(user[1:]) in (5, 6):
            return reference.TIMEOUT
        return self.answer(user)


HTTP_SPEC = """name: credit_http
entity: user
timestamp: ts
watermark: {{max_out_of_orderness: 2s, allowed_lateness: 1s}}
source: {{type: file, path: events.jsonl, follow: true}}
serve: {{port: 0}}
checkpoint: {{interval: 200ms}}
lookups:
  - name: credit
    type: http
    url: "http://127.0.0.1:{port}/credit/{{user}}"
    timeout: 1s
    max_in_flight: 4
    on_timeout: {on_timeout}
features:
  - {{name: order, aggregation: last_k, k: 5, field: n, window: {{type: lifetime}}}}
  - {{name: gold_n, aggregation: count, where: "credit.tier == 'gold'", window: {{type: lifetime}}}}
  - {{name: sum_x, aggregation: sum, field: credit.nested.x, window: {{type: lifetime}}}}
  - {{name: n_events, aggregation: count, window: {{type: lifetime}}}}
"""


@pytest.mark.parametrize("on_timeout", ["dead_letter", "missing"])
def test_http_lookups_keep_input_order_and_count_timeouts(tmp_path: Path, on_timeout: str) -> None:
    _require_binary()
    server = SlowCreditServer(slow_s=0.3, dead_s=2.5)
    try:
        spec_path = tmp_path / "spec.yaml"
        spec_path.write_text(HTTP_SPEC.format(port=server.port, on_timeout=on_timeout))
        batches = _events(3, 60, seed=9)
        (tmp_path / "events.jsonl").write_bytes(b"")
        command = [BIN, "run", "--spec", str(spec_path), "--data-dir", str(tmp_path / "data")]
        proc, port = start_run(command, tmp_path / "run1.log")
        lines = 0
        for k, batch in enumerate(batches):
            if k == 1:
                seen = _metric(port, "freshet_checkpoints_total")
                _wait(lambda: _metric(port, "freshet_checkpoints_total") >= seen + 1, "a checkpoint")
            _append(tmp_path / "events.jsonl", _lines(batch))
            lines += len(batch)
            if k == 1:
                # kill -9 while the batch's lookups are in flight: its events were never accepted, so the restart
                # reads them again and looks them up again.
                _wait(lambda: _metric(port, "freshet_lookup_in_flight") > 0, "lookups in flight")
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                proc, port = start_run(command, tmp_path / "run2.log")
            _wait(lambda: _metric(port, "freshet_events_in_total") >= lines, f"{lines} lines read")
        assert _metric(port, "freshet_lookup_timeouts_total") > 0
        assert _metric(port, "freshet_lookup_errors_total") == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        server.httpd.shutdown()

    ref_spec = reference.load_spec(str(spec_path))
    data = b"".join(_lines(b) for b in batches)
    events, dead = reference.read_events(data, ref_spec, lookup_answers=server.answer_of)
    dead_file = tmp_path / "data" / "dead_letters" / "file.jsonl"
    got_dead = [json.loads(x) for x in dead_file.read_text().splitlines()] if dead_file.exists() else []
    assert [(d["line"], d["reason"]) for d in got_dead] == [(d.line, d.reason) for d in dead]
    if on_timeout == "dead_letter":
        assert dead and all(d.reason == "lookup_timeout" for d in dead)
    else:
        assert not dead

    offline = tmp_path / "data" / "offline"
    rows = deltalake.DeltaTable(str(offline / "features")).to_pyarrow_table().sort_by("seq").to_pylist()
    assert len(rows) == len(events)
    mismatches = features_table_mismatches(ref_spec, rows, events)
    assert not mismatches, "\n".join(mismatches[:20])
    # Every event once (the crash lost none and repeated none). The slow first answers completed after faster ones
    # sent later, yet every entity's events were applied in input order (the last_k of the input position `n`
    # above equals the reference's).
    stored = deltalake.DeltaTable(str(offline / "events")).to_pyarrow_table().sort_by("seq").to_pylist()
    assert [json.loads(r["raw"])["n"] for r in stored] == [e.record["n"] for e in events]
    # ...and the answers did come back out of order: some slow first answer was sent after the answer to a request
    # that arrived after it. (Which requests arrive first is not fixed: several are sent at once.)
    slow_first = {server.requests.index(u) for u in {"u0", "u1", "u2", "u3", "u4"} if u in server.requests}
    overtaken = [i for i in slow_first if i in server.answered
                 and any(j > i for j in server.answered[:server.answered.index(i)])]
    assert overtaken, (server.requests, server.answered)


def test_health_is_degraded_while_the_store_fails(tmp_path: Path) -> None:
    """No Redis on the lookup's port: every request fails, the errors are counted, `/health` says why, and the
    events go on with their looked-up fields missing (on_timeout: missing). Once Redis is up, the failures leave
    the 30 s window and `/health` is ok again, with no further events needed."""
    _require_binary()
    if not os.path.exists(REDIS_SERVER):
        pytest.skip(f"{REDIS_SERVER} is not installed")
    redis_port = free_port()
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(REDIS_SPEC.format(port=redis_port))
    batch = _events(1, 40, seed=3)[0]
    (tmp_path / "events.jsonl").write_bytes(_lines(batch))
    proc, port = start_run([BIN, "run", "--spec", str(spec_path), "--data-dir", str(tmp_path / "data")],
                           tmp_path / "run.log")
    try:
        _wait(lambda: _metric(port, "freshet_events_in_total") >= len(batch), "the events read")
        assert _metric(port, "freshet_lookup_errors_total") >= 10
        assert _metric(port, "freshet_events_accepted_total") == len(batch)
        try:
            _get(port, "/health")
            raise AssertionError("/health answered 200 while every lookup failed")
        except urllib.error.HTTPError as e:
            assert e.code == 503
            health = json.loads(e.read())
        assert health["status"] == "degraded"
        assert any("lookup 'credit'" in r and "timed out or failed" in r for r in health["reasons"]), health
        with RedisServer(port=redis_port):
            _wait(lambda: _health_ok(port),
                  "/health ok again", seconds=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

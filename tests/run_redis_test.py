"""`freshet run` with the Redis online store, against a real redis-server on a free loopback port.

Checks the documented key layout (a plain hash per entity that any Redis client reads), that the hash holds
the features as of the entity's newest event (compared with `freshet historical` at that time), and that
Redis going down mid-run degrades /health and loses nothing once it is back; and that a Redis which lost its
data (restarted empty, FLUSHALL) while no event arrives is found and written back, with `freshet serve` answering
503 rather than "unknown" in between.
"""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from redis_server import RedisClient, RedisServer  # noqa: E402
from run_recovery_test import AS_OF, BIN, Server, _expected, _require_binary, _same  # noqa: E402

SPEC = """name: fr
entity: user_id
timestamp: ts
watermark: {{max_out_of_orderness: 2s, allowed_lateness: 5s}}
source: {{type: file, path: events.jsonl, follow: true}}
online: {{type: redis, port: {port}, flush_interval: 50ms}}
serve: {{port: 0}}
checkpoint: {{interval: 500ms}}
parallelism: {parallelism}
features:
  - {{name: purchases_30m, aggregation: count, where: "type == 'purchase'", window: {{type: sliding, size: 30m, slide: 1m}}}}
  - {{name: max_amount_24h, aggregation: max, field: amount, where: "type == 'purchase'", window: {{type: sliding, size: 24h}}}}
  - {{name: last_category, aggregation: last, field: category, window: {{type: lifetime}}}}
  - {{name: categories_session, aggregation: count_distinct, field: category, window: {{type: session, gap: 30m}}}}
"""


def _hashes(client: RedisClient) -> dict[str, dict[str, str]]:
    out = {}
    for key in client.command("KEYS", "freshet:fr:features:*"):
        out[key.split(":", 3)[3]] = client.command("HGETALL", key)  # A dict of field -> text.
    return out


def _expected_at_newest(tmp: Path, spec: Path, events: Path, newest: dict[str, int]) -> dict[str, dict[str, str]]:
    entities = tmp / "entities.csv"
    with open(entities, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "ts"])
        for user, t in newest.items():
            w.writerow([user, t])
    out = tmp / "expected.csv"
    subprocess.run([BIN, "historical", "--spec", str(spec), "--events", str(events), "--entities", str(entities),
                    "--output", str(out), "--no-progress"], check=True)
    with open(out, newline="") as f:
        return {row["user_id"]: row for row in csv.DictReader(f)}


# With parallelism 2 the file source's entities live in two shards, each handing its changed entities to Redis.
@pytest.mark.parametrize("parallelism", [1, 2])
def test_redis_holds_features_and_survives_an_outage(tmp_path: Path, parallelism: int) -> None:
    _require_binary()
    redis = RedisServer().start()
    try:
        spec = tmp_path / "spec.yaml"
        spec.write_text(SPEC.format(port=redis.port, parallelism=parallelism))
        all_events = tmp_path / "all.jsonl"
        subprocess.run([BIN, "generate", "--users", "200", "--events", "20000", "--seed", "9", "--disorder", "1s",
                        "--output", str(all_events)], check=True)
        lines = all_events.read_bytes().splitlines(keepends=True)
        events = tmp_path / "events.jsonl"
        events.write_bytes(b"".join(lines[:10000]))
        server = Server(spec, tmp_path / "data", tmp_path / "run.log")
        try:
            deadline = time.time() + 30
            while server.metric("freshet_events_in_total") < 10000 and time.time() < deadline:
                time.sleep(0.05)
            # Redis goes down: the pipeline goes on, /health says why, nothing is lost.
            redis.stop()
            with open(events, "ab") as f:
                f.write(b"".join(lines[10000:]))
            deadline = time.time() + 30
            health = ""
            while time.time() < deadline:
                try:
                    health = server.get("/health")
                except Exception as e:  # 503 while degraded
                    health = e.read().decode() if hasattr(e, "read") else str(e)
                if "unreachable" in health:
                    break
                time.sleep(0.1)
            assert "unreachable" in health, health
            redis.start()
            with RedisClient(redis.port) as client:
                deadline = time.time() + 30
                while time.time() < deadline and server.metric("freshet_events_in_total") < len(lines):
                    time.sleep(0.05)
                # After the reconnect the pipeline rewrites every entity (Redis may have restarted empty); wait
                # until that resync has drained and every entity is back, not just for an empty queue.
                users = {json.loads(l)["user_id"] for l in lines}
                hashes = {}
                while time.time() < deadline:
                    if (server.metric("freshet_redis_connected") == 1
                            and server.metric("freshet_redis_pending_entities") == 0):
                        hashes = _hashes(client)
                        if set(hashes) == users:
                            break
                    time.sleep(0.1)
        finally:
            assert server.terminate() == 0
        newest = {user: int(h["_event_time_ms"]) for user, h in hashes.items()}
        users = {json.loads(l)["user_id"] for l in lines}
        assert set(hashes) == users  # Every entity made it, the outage notwithstanding.
        expected = _expected_at_newest(tmp_path, spec, all_events, newest)
        for user, h in hashes.items():
            for name in ("purchases_30m", "max_amount_24h", "last_category", "categories_session"):
                assert _same(expected[user][name], h.get(name)), (user, name, expected[user][name], h.get(name))

        # Another instance, with no state of its own, serves any entity from Redis, as of any time.
        serve = subprocess.Popen([BIN, "serve", "--spec", str(spec), "--port", "0"], stderr=subprocess.PIPE)
        try:
            line = serve.stderr.readline().decode()
            port = int(line.rsplit(":", 1)[1])
            ask = sorted(users) + ["nobody"]
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/features", method="POST",
                                             data=json.dumps({"entities": ask, "at": AS_OF}).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as r:
                served = {x["entity"]: x for x in json.loads(r.read())["results"]}
            as_of = _expected(tmp_path, spec, all_events, ask)
            for user in ask:
                for name, value in served[user]["features"].items():
                    assert _same(as_of[user][name], value), (user, name, as_of[user][name], value)
            assert served["nobody"]["known"] is False
        finally:
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(timeout=30) == 0
    finally:
        redis.stop()


# ---- Redis loses its data while ingest is quiet: found and resynced without waiting for an event ----

def _health(server: Server) -> str:
    """The run's /health body, whether ok (200) or degraded (503)."""
    try:
        return server.get("/health")
    except urllib.error.HTTPError as e:
        return e.read().decode()


def _serve_lookup(port: int, users: list[str]) -> tuple[int, dict]:
    """POST /v1/features to a `freshet serve` at AS_OF: (HTTP status, parsed body)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/features", method="POST",
                                     data=json.dumps({"entities": users, "at": AS_OF}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _without_updated(hashes: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """The hashes without _updated_ms, the one field a rewrite of the same state changes."""
    return {user: {k: v for k, v in h.items() if k != "_updated_ms"} for user, h in hashes.items()}


def _wait_for(condition, timeout: float, what, poll: float = 0.05):
    """Polls condition() until it returns something truthy (returned) or `timeout` seconds pass (fails, saying
    `what`, or what() when it is a function, so that it can tell the state at the deadline)."""
    deadline = time.time() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
        time.sleep(poll)


@pytest.mark.parametrize("loss", ["restart_empty", "flushall"])
def test_redis_that_lost_its_data_is_resynced_while_ingest_is_quiet(tmp_path: Path, loss: str) -> None:
    """Redis is restarted empty (or FLUSHALLed) after the last event: without any new event, `freshet run`
    notices (its marker key is gone), says so in /health, and writes every entity back; meanwhile `freshet
    serve` answers 503 instead of calling every entity unknown."""
    _require_binary()
    redis = RedisServer().start()
    try:
        spec = tmp_path / "spec.yaml"
        spec.write_text(SPEC.format(port=redis.port, parallelism=1))
        events = tmp_path / "events.jsonl"
        subprocess.run([BIN, "generate", "--users", "100", "--events", "3000", "--seed", "5", "--disorder", "1s",
                        "--output", str(events)], check=True)
        lines = events.read_bytes().splitlines()
        users = sorted({json.loads(l)["user_id"] for l in lines})
        server = Server(spec, tmp_path / "data", tmp_path / "run.log")
        serve = subprocess.Popen([BIN, "serve", "--spec", str(spec), "--port", "0"], stderr=subprocess.PIPE)
        try:
            serve_port = int(serve.stderr.readline().decode().rsplit(":", 1)[1])
            with RedisClient(redis.port) as client:
                # Quiet: every event is in, every entity is in Redis and serve knows them all.
                _wait_for(lambda: server.metric("freshet_events_in_total") >= len(lines), 60, "every event read")
                _wait_for(lambda: set(_hashes(client)) == set(users), 60, "every entity in Redis")
                _wait_for(lambda: json.loads(_health(server))["status"] == "ok", 60, "/health ok")
                status, body = _wait_for(
                    lambda: (lambda r: r if r[0] == 200 and all(x["known"] for x in r[1]["results"]) else None)(
                        _serve_lookup(serve_port, users)), 60, "serve to know every entity")
                served_before = body["results"]
                hashes_before = _without_updated(_hashes(client))

            if loss == "restart_empty":
                # Killed while nothing is being written: the run must notice by itself, within seconds.
                redis.stop()
                _wait_for(lambda: "unreachable" in _health(server), 30, "/health to say Redis is unreachable")
                _wait_for(lambda: server.metric("freshet_redis_connected") == 0, 30, "freshet_redis_connected 0")
            # The run is held (SIGSTOP) while Redis loses its data, and Redis then holds every write for 4 s: so
            # the run cannot write the data back before this test has seen the gap from both sides, however fast
            # it is (or however late its reconnect backoff lets it in). Reads go on during the pause: serve's
            # lookups and the run's marker check. A resync held past the run's 2 s command timeout is retried.
            server.proc.send_signal(signal.SIGSTOP)
            try:
                if loss == "restart_empty":
                    redis.start()  # Same port, empty: nothing was persisted.
                with RedisClient(redis.port) as client:
                    if loss == "flushall":
                        client.command("FLUSHALL")
                    assert client.command("DBSIZE") == 0
                    client.command("CLIENT", "PAUSE", 4000, "WRITE")
            finally:
                server.proc.send_signal(signal.SIGCONT)

            # While the marker is missing: serve refuses with the reason (not 200 with zeros), and the run's
            # /health is degraded because Redis lost its data.
            seen = {"serve": None, "health": None}

            def gap_seen():
                if seen["serve"] is None:
                    status, body = _serve_lookup(serve_port, users[:3])
                    assert status in (200, 503), (status, body)
                    if status == 200:  # Only once the run has written everything back, never with zeros.
                        assert all(x["known"] for x in body["results"]), body
                    elif "marker" in body.get("error", ""):
                        seen["serve"] = body["error"]
                if seen["health"] is None:
                    health = _health(server)
                    if "lost its data" in health:
                        seen["health"] = health
                return seen["serve"] is not None and seen["health"] is not None

            _wait_for(gap_seen, 30, lambda: f"serve's 503 and a degraded /health while the marker is missing: {seen}",
                      poll=0.02)

            # Without any new event, everything comes back.
            with RedisClient(redis.port) as client:
                _wait_for(lambda: _without_updated(_hashes(client)) == hashes_before, 60,
                          "the run to write every entity back")
                assert client.command("DBSIZE") > 0
            _wait_for(lambda: json.loads(_health(server))["status"] == "ok", 60, "/health ok again")
            assert server.metric("freshet_redis_connected") == 1
            assert server.metric("freshet_redis_in_sync") == 1
            assert server.metric("freshet_redis_resyncs_total") >= 1
            assert server.metric("freshet_events_in_total") == len(lines)  # Nothing new was ingested.
            status, body = _wait_for(lambda: (lambda r: r if r[0] == 200 else None)(_serve_lookup(serve_port, users)),
                                     30, "serve to answer 200 again")
            assert body["results"] == served_before
        finally:
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(timeout=30) == 0
            assert server.terminate() == 0
    finally:
        redis.stop()

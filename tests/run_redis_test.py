"""`freshet run` with the Redis online store, against a real redis-server on a free loopback port.

Checks the documented key layout (a plain hash per entity that any Redis client reads), that the hash holds
the features as of the entity's newest event (compared with `freshet historical` at that time), and that
Redis going down mid-run degrades /health and loses nothing once it is back.
"""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
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


def test_redis_holds_features_and_survives_an_outage(tmp_path: Path) -> None:
    _require_binary()
    redis = RedisServer().start()
    try:
        spec = tmp_path / "spec.yaml"
        spec.write_text(SPEC.format(port=redis.port))
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

"""`Idempotency-Key` on `POST /v1/ingest`, end to end.

- A batch resent with its key is answered with the first acknowledgement (the same JSON, plus `"replayed": true`
  and an `Idempotent-Replayed: true` header) and is not logged again, also after a kill -9 and restart; the same
  key with other events is refused with 422 and logs nothing.
- The at-least-once producer: a client sends batches, each with its own key, and resends every batch whose
  acknowledgement it did not get (errors, connections cut by SIGKILL, and a tenth of the acknowledgements dropped
  on purpose), while `freshet run` is killed at random moments and restarted on its data directory. The spec has
  no `dedup`: the keys alone must make every event count exactly once (the events table holds each event once,
  each entity's lifetime count is its number of events). Without the keys' support this test fails: a resent
  batch is logged and counted twice.
"""
from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections import Counter
from pathlib import Path

import dedup_test as dd

SPEC = """name: idempotency
entity: user_id
timestamp: ts
source: {type: http}
serve: {port: 0}
checkpoint: {interval: 200ms, keep: 3}
features:
  - {name: n_events, aggregation: count, window: {type: lifetime}}
"""


def _ingest(server: dd.Server, body: bytes, key: str | None) -> tuple[int, dict, dict]:
    """POSTs a batch; returns (status, JSON body, headers with lower-case names)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        headers = {"Content-Type": "application/x-ndjson"}
        if key is not None:
            headers["Idempotency-Key"] = key
        conn.request("POST", "/v1/ingest", body=body, headers=headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read()), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def test_a_resend_gets_the_first_acknowledgement_and_other_events_get_422(tmp_path: Path) -> None:
    dd._require_binary()
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    log = tmp_path / "run.log"
    good = [json.dumps({"user_id": f"u{k % 3}", "ts": 1767225600000 + k}) for k in range(5)]
    body = ("\n".join(good[:2] + ["not json"] + good[2:] + ['{"user_id": "u1"}']) + "\n").encode()
    server = dd.Server(spec, tmp_path / "data", log)
    try:
        status, first, headers = _ingest(server, body, "batch-1")
        assert status == 200 and first["accepted"] == 5 and first["rejected"] == 2, first
        assert [e["line"] for e in first["errors"]] == [3, 7]
        assert "replayed" not in first and "idempotent-replayed" not in headers

        status, again, headers = _ingest(server, body, "batch-1")
        assert status == 200
        assert again == {**first, "replayed": True}
        assert headers.get("idempotent-replayed") == "true"

        status, refused, _ = _ingest(server, body.replace(b"u1", b"u9"), "batch-1")
        assert status == 422, refused
        assert "batch-1" in refused["error"] and "new key" in refused["error"], refused

        status, bad, _ = _ingest(server, body, "x" * 300)
        assert status == 400 and "Idempotency-Key" in bad["error"], bad
        dd._wait(lambda: server.metric("freshet_events_in_total") >= 7, "the batch to be read")
        assert server.metric("freshet_ingest_replays_total") == 1
        assert server.metric("freshet_ingest_idempotency_keys") == 1
    finally:
        server.kill()

    # After kill -9 the key is known from the ingest log.
    server = dd.Server(spec, tmp_path / "data", log)
    try:
        status, replay, headers = _ingest(server, body, "batch-1")
        assert status == 200 and replay == {**first, "replayed": True}
        assert _ingest(server, body.replace(b"u1", b"u9"), "batch-1")[0] == 422
        status, other, _ = _ingest(server, body, "batch-2")  # Another key: the same events again, as sent.
        assert status == 200 and "replayed" not in other
        dd._wait(lambda: server.metric("freshet_events_accepted_total") >= 10, "both batches to be read")
        time.sleep(0.3)
        assert server.metric("freshet_events_accepted_total") == 10
        answer = json.loads(server.request("GET", "/v1/features/u1"))
        assert answer["features"]["n_events"] == 2 * sum(1 for line in good if '"u1"' in line)
    finally:
        assert server.terminate() == 0


class Producer(threading.Thread):
    """Pushes the batches in order, each with its key, until acknowledged: on an error or a lost
    acknowledgement it sends the same batch with the same key again, to whichever server is up. Drops a tenth
    of the acknowledgements it does get. Every answer must be the first one's."""

    def __init__(self, batches: list[bytes], seed: int):
        super().__init__(daemon=True)
        self.batches = batches
        self.rng = random.Random(seed)
        self.server: dd.Server | None = None
        self.acked = 0
        self.dropped_acks = 0
        self.replays = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for k, body in enumerate(self.batches):
                key = f"producer-7/batch-{k}"
                while True:
                    server = self.server
                    if server is None:
                        time.sleep(0.01)
                        continue
                    try:
                        status, ack, headers = _ingest(server, body, key)
                    except (OSError, http.client.HTTPException, ValueError):
                        time.sleep(0.01)  # Refused, reset or cut off: no acknowledgement, so send it again.
                        continue
                    if status != 200:
                        assert status == 503, (status, ack)  # Only a server in trouble may refuse it.
                        time.sleep(0.01)
                        continue
                    assert ack["accepted"] + ack["rejected"] == body.count(b"\n"), ack
                    self.replays += bool(ack.get("replayed"))
                    if self.rng.random() < 0.1:
                        self.dropped_acks += 1  # As if the answer were lost on the way: send it again.
                        continue
                    self.acked += 1
                    time.sleep(0.01)
                    break
        except BaseException as e:  # noqa: BLE001 - reported by the test thread.
            self.error = e


def test_every_event_counts_once_through_kills_and_resends_without_dedup(tmp_path: Path) -> None:
    dd._require_binary()
    rng = random.Random(17)
    events_path = tmp_path / "events.jsonl"
    dd._generate(events_path, "--users", "200", "--events", "20000", "--seed", "17", "--duration", "6h",
                 "--event-ids")
    lines = events_path.read_bytes().splitlines(keepends=True)
    records = [json.loads(line) for line in lines]
    batch = 100
    producer = Producer([b"".join(lines[k:k + batch]) for k in range(0, len(lines), batch)], seed=3)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    log = tmp_path / "run.log"

    producer.start()
    for _ in range(6):
        server = dd.Server(spec, tmp_path / "data", log)
        try:
            producer.server = server
            target = producer.acked + rng.randint(5, 25)
            dd._wait(lambda: producer.acked >= target or producer.error is not None or not producer.is_alive(),
                     "the producer to get acknowledgements")
            time.sleep(rng.uniform(0, 0.05))  # A random moment: mid-request, mid-sync or mid-checkpoint.
        finally:
            producer.server = None
            server.kill()
    server = dd.Server(spec, tmp_path / "data", log)
    try:
        producer.server = server
        producer.join(timeout=300)
        assert producer.error is None, repr(producer.error)
        assert not producer.is_alive() and producer.acked == len(producer.batches)
        assert producer.dropped_acks > 0 and producer.replays >= producer.dropped_acks

        dd._wait(lambda: server.metric("freshet_events_in_total") >= len(lines), f"{len(lines)} events to be read")
        time.sleep(0.5)  # Anything logged twice would be read by now.
        assert server.metric("freshet_events_accepted_total") == len(lines), "some event was counted twice"
        users = sorted({r["user_id"] for r in records})
        answer = json.loads(server.request("POST", "/v1/features", json.dumps({"entities": users}).encode()))
        served = {r["entity"]: r["features"]["n_events"] for r in answer["results"]}
        assert served == dict(Counter(r["user_id"] for r in records))
    finally:
        assert server.terminate() == 0

    import deltalake

    table = deltalake.DeltaTable(str(tmp_path / "data" / "offline" / "events")).to_pyarrow_table(columns=["raw"])
    stored = Counter(json.loads(raw)["event_id"] for raw in table.column("raw").to_pylist())
    assert stored.most_common(1)[0][1] == 1, f"counted twice: {[i for i, n in stored.items() if n > 1][:10]}"
    assert set(stored) == {r["event_id"] for r in records}

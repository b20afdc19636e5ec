"""Feature logging and skew inside `freshet run`: every answer of the serving API lands in the offline
feature_log table under its request id, with exactly the values served; sampling is by entity and sheds are
counted; `freshet skew` finds zero skew when there is none, and names the feature and the size of the
difference when events arrive after the value was served (a real cause of training/serving skew); the
scheduled check inside `freshet run` exports the same finding as metrics.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import deltalake
import pytest

from run_recovery_test import Server

BIN = os.environ.get("FRESHET_BIN", str(Path(__file__).resolve().parent.parent / "build" / "freshet"))

SPEC = """name: logging
entity: user
timestamp: ts
source: {{type: http}}
serve: {{port: 0}}
checkpoint: {{interval: 200ms}}
{extra}
features:
  - {{name: purchases_1h, aggregation: count, where: "type == 'purchase'", window: {{type: sliding, size: 1h}}}}
  - {{name: amount_sum_1h, aggregation: sum, field: amount, window: {{type: sliding, size: 1h}}}}
  - {{name: last_type, aggregation: last, field: type, window: {{type: lifetime}}}}
"""

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _require_binary() -> None:
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")


def _event(user: str, minute: float, kind: str, amount: float) -> bytes:
    return json.dumps({"user": user, "ts": T0 + int(minute * 60_000), "type": kind, "amount": amount}).encode() + b"\n"


def _lookup(server: Server, entities: list[str], at_ms: int, features: list[str] | None = None,
            request_id: str | None = None) -> tuple[str, dict]:
    body = {"entities": entities, "at": at_ms}
    if features is not None:
        body["features"] = features
    headers = {"Content-Type": "application/json"}
    if request_id:
        headers["X-Request-Id"] = request_id
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}/v1/features", data=json.dumps(body).encode(),
                                 method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        answer = json.loads(r.read())
        assert r.headers["X-Request-Id"] == answer["request_id"]
        return answer["request_id"], {x["entity"]: x["features"] for x in answer["results"]}


def _ingest(server: Server, lines: list[bytes]) -> None:
    ack = server.post("/v1/ingest", b"".join(lines), "application/x-ndjson")
    assert ack["accepted"] == len(lines)


def _start(tmp: Path, extra: str = "") -> Server:
    (tmp / "spec.yaml").write_text(SPEC.format(extra=extra))
    return Server(tmp / "spec.yaml", tmp / "data", tmp / "run.log")


def _skew(tmp: Path, *args: str) -> tuple[int, dict]:
    r = subprocess.run([BIN, "skew", "--spec", str(tmp / "spec.yaml"), "--data-dir", str(tmp / "data"), "--json",
                        *args], capture_output=True, text=True)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def test_answers_are_logged_as_served(tmp_path: Path) -> None:
    _require_binary()
    server = _start(tmp_path)
    try:
        _ingest(server, [_event("u1", 1, "purchase", 10), _event("u1", 2, "view", 0), _event("u2", 3, "purchase", 5)])
        _wait_for(lambda: server.metric("freshet_events_accepted_total") == 3, "the three events")
        served = {}
        rid, served["a"] = _lookup(server, ["u1", "u2", "nobody"], T0 + 10 * 60_000, request_id="req-a")
        assert rid == "req-a"
        # Committed on its own (every 200 ms): the next answer goes into a later commit.
        table = tmp_path / "data" / "offline" / "feature_log"
        _wait_for(lambda: (table / "_delta_log").is_dir() and
                  len(deltalake.DeltaTable(str(table)).to_pyarrow_table()) == 3, "the first answers' commit")
        rid_b, served["b"] = _lookup(server, ["u1"], T0 + 90 * 60_000, features=["purchases_1h"])
        # As of a time before u1's newest event (no watermark: the horizon is that event): "exact": false.
        answer_c = server.post("/v1/features", json.dumps({"entities": ["u1"], "at": T0 + 90_000}).encode(),
                               "application/json")
        assert [x["exact"] for x in answer_c["results"]] == [False], answer_c
        rid_c, served["c"] = answer_c["request_id"], {x["entity"]: x["features"] for x in answer_c["results"]}
        assert served["a"]["u1"] == {"purchases_1h": 1, "amount_sum_1h": 10, "last_type": "view"}
        assert served["b"]["u1"] == {"purchases_1h": 0}
    finally:
        assert server.terminate() == 0
    log = deltalake.DeltaTable(str(tmp_path / "data" / "offline" / "feature_log")).to_pyarrow_table().to_pylist()
    rows = {(r["request_id"], r["entity"]): r for r in log}
    assert set(rows) == {("req-a", "u1"), ("req-a", "u2"), ("req-a", "nobody"), (rid_b, "u1"), (rid_c, "u1")}
    as_of = {"a": T0 + 10 * 60_000, "b": T0 + 90 * 60_000, "c": T0 + 90_000}
    for (rid, entity), r in rows.items():
        key = {"req-a": "a", rid_b: "b", rid_c: "c"}[rid]
        assert int(r["as_of"].timestamp() * 1000) == as_of[key]
        assert r["exact"] is (key != "c"), (rid, entity, r["exact"])
        values = served[key][entity]
        assert r["served_features"] == ",".join(values)
        for name in ("purchases_1h", "amount_sum_1h", "last_type"):
            if name in values:
                got, want = r[name], values[name]
                if want is None:
                    assert got is None or (isinstance(got, float) and math.isnan(got)), (name, got)
                elif name == "last_type":
                    assert got == want
                else:
                    assert float(got) == float(want), (name, got, want)
            else:
                assert r[name] is None  # Not served: not logged as a value.


def test_sampling_by_entity_and_shedding_are_counted(tmp_path: Path) -> None:
    _require_binary()
    server = _start(tmp_path, "feature_log: {sample_rate: 0.5}")
    users = [f"u{k}" for k in range(200)]
    try:
        for _ in range(3):
            _lookup(server, users, T0)
        logged_metric = server.metric("freshet_feature_log_answers_total")
    finally:
        assert server.terminate() == 0
    log = deltalake.DeltaTable(str(tmp_path / "data" / "offline" / "feature_log")).to_pyarrow_table().to_pylist()
    per_entity: dict[str, int] = {}
    for r in log:
        per_entity[r["entity"]] = per_entity.get(r["entity"], 0) + 1
    assert set(per_entity.values()) == {3}          # An entity is logged always or never.
    assert 60 <= len(per_entity) <= 140             # About half of 200.
    assert logged_metric == len(log)

    small = tmp_path / "small"
    small.mkdir()
    server = _start(small, "feature_log: {queue: 1}")
    try:
        for _ in range(20):
            _lookup(server, users[:50], T0)
        shed = server.metric("freshet_feature_log_shed_total")
        logged = server.metric("freshet_feature_log_answers_total")
    finally:
        assert server.terminate() == 0
    assert shed > 0 and shed + logged == 20 * 50   # Shed and counted, never silently dropped.
    committed = deltalake.DeltaTable(str(small / "data" / "offline" / "feature_log")).to_pyarrow_table().num_rows
    assert committed == logged


def _wait_for(check, what: str, seconds: float = 60.0):
    """Polls check() until it returns a true value (returned), or fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.05)


def test_skew_is_zero_without_cause_and_named_with_late_events(tmp_path: Path) -> None:
    _require_binary()
    server = _start(tmp_path, "skew: {max_mismatch_rate: 0.01, interval: 500ms}")
    users = [f"u{k}" for k in range(20)]
    try:
        _ingest(server, [_event(u, 1 + k % 7, "purchase", 2 * k + 1) for k, u in enumerate(users)])
        _ingest(server, [_event("clock", 200, "view", 0)])  # Events up to minute 200: answers before it recompute.
        _wait_for(lambda: server.metric("freshet_events_accepted_total") >= len(users) + 1, "the events applied")
        for minute in (10, 20, 30):
            _lookup(server, users, T0 + minute * 60_000)
        # Committed with a checkpoint (interval 200 ms), the events table with them.
        code, report = _wait_for(lambda: (lambda r: r if r[1]["answers"] == 60 else None)(_skew(tmp_path)),
                                 "the 60 answers in the feature log")
        assert code == 0, report
        assert report["answers"] == 60
        for f in report["features"]:
            assert f["compared"] == 60 and f["exact"] == 60 and f["mismatch_rate"] == 0, f
        assert report["breached"] == []

        # Events that happened before the answers' times but arrive after them: what was served lacks them.
        _ingest(server, [_event(u, 5, "view", 100.0) for u in users[:10]])
        code, report = _wait_for(lambda: (lambda r: r if r[0] == 1 else None)(_skew(tmp_path)),
                                 "the late events in the events table")
        assert code == 1, report
        by_name = {f["feature"]: f for f in report["features"]}
        assert report["breached"] == ["amount_sum_1h", "last_type"]
        # u0..u9 got +100 in amount_sum_1h for the answers at minutes 10, 20 and 30: 30 of 60 answers.
        assert by_name["amount_sum_1h"]["exact"] == 30
        assert by_name["amount_sum_1h"]["mean_abs_diff"] == pytest.approx(50.0)  # Over all 60 answers.
        assert by_name["amount_sum_1h"]["max_abs_diff"] == pytest.approx(100.0)
        assert by_name["amount_sum_1h"]["psi"] > 0
        assert by_name["purchases_1h"]["mismatch_rate"] == 0  # Views do not count as purchases.

        # The scheduled check inside freshet run saw the same.
        deadline = time.time() + 20
        while time.time() < deadline and server.metric("freshet_skew_breached") != 1:
            time.sleep(0.2)
        assert server.metric("freshet_skew_breached") == 1
        assert server.metric("freshet_skew_checks_total") >= 1
    finally:
        assert server.terminate() == 0
    log = (tmp_path / "run.log").read_bytes().decode(errors="replace")
    assert "skew above skew.max_mismatch_rate" in log and "amount_sum_1h" in log, log

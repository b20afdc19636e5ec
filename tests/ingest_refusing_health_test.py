"""While the ingest log cannot be written (a full disk; here a file-size limit set on the running process), POST
/v1/ingest answers an error and /health is degraded with the reason, not "ok"; once writes succeed again, both
recover and every acknowledged event is counted once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from run_process import start_run

BIN = os.environ.get("FRESHET_BIN", str(Path(__file__).resolve().parent.parent / "build" / "freshet"))

SPEC = """name: refusing
entity: user_id
timestamp: ts
source: {type: http}
serve: {port: 0}
offline: {enabled: false}
features:
  - {name: n_events, aggregation: count, window: {type: lifetime}}
"""
LIMIT = 256 * 1024  # Bytes any file of the process may reach while the limit holds.


def _request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                     headers={"Content-Type": "application/x-ndjson"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _batch(first: int, count: int) -> bytes:
    return "".join(json.dumps({"user_id": "u1", "ts": 1767225600000 + k, "pad": "x" * 200}) + "\n"
                   for k in range(first, first + count)).encode()


def test_health_is_degraded_while_ingest_is_refused(tmp_path: Path) -> None:
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")
    (tmp_path / "spec.yaml").write_text(SPEC)
    log = tmp_path / "run.log"
    proc, port = start_run([BIN, "run", "--spec", str(tmp_path / "spec.yaml"), "--data-dir", str(tmp_path / "data")],
                           log)
    try:
        subprocess.run(["prlimit", "--pid", str(proc.pid), f"--fsize={LIMIT}:unlimited"], check=True)

        acknowledged = 0
        refused = None
        for k in range(200):  # 100 events of ~250 bytes per batch: the log reaches the limit within a few.
            status, body = _request(port, "POST", "/v1/ingest", _batch(k * 100, 100))
            if status != 200:
                refused = (status, body)
                break
            acknowledged += 100
        assert refused is not None, "the ingest log never reached the file-size limit"
        assert refused[0] >= 500 and "log" in refused[1], refused
        status, body = _request(port, "GET", "/health")
        assert status == 503, body
        assert any("ingest is refusing events" in r for r in json.loads(body)["reasons"]), body
        assert proc.poll() is None, log.read_text(errors="replace")

        subprocess.run(["prlimit", "--pid", str(proc.pid), "--fsize=unlimited"], check=True)
        deadline = time.monotonic() + 30
        while True:  # The log may start a new segment or go on with the old one: retry until one is taken.
            status, body = _request(port, "POST", "/v1/ingest", _batch(10**6, 100))
            if status == 200:
                acknowledged += 100
                break
            assert time.monotonic() < deadline, (status, body)
            time.sleep(0.1)
        assert _request(port, "GET", "/health")[0] == 200
        deadline = time.monotonic() + 30
        while json.loads(_request(port, "GET", "/v1/features/u1")[1])["features"]["n_events"] != acknowledged:
            assert time.monotonic() < deadline, "every acknowledged event counted once"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

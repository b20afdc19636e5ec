"""A checkpoint whose offline rows cannot be written (a full disk, a folder gone) does not stop `freshet run`: the
rows stay in memory, /health is degraded with the reason, freshet_checkpoint_failures_total counts the failures,
and the next checkpoint after the cause is gone writes them. Every event still lands in the events table once."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import deltalake
import pytest

from run_process import start_run

BIN = os.environ.get("FRESHET_BIN", str(Path(__file__).resolve().parent.parent / "build" / "freshet"))

SPEC = """name: offline_failure
entity: user_id
timestamp: ts
watermark: {max_out_of_orderness: 1s, allowed_lateness: 1s}
source: {type: http}
serve: {port: 0}
checkpoint: {interval: 200ms}
features:
  - {name: n_events, aggregation: count, window: {type: lifetime}}
"""


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _metric(port: int, name: str) -> float:
    for line in _get(port, "/metrics")[1].splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not found")


def _ingest(port: int, first: int, count: int) -> None:
    body = "".join(json.dumps({"user_id": f"u{k % 7}", "ts": 1767225600000 + k}) + "\n"
                   for k in range(first, first + count)).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/ingest", data=body, method="POST",
                                     headers={"Content-Type": "application/x-ndjson"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert json.loads(r.read())["accepted"] == count


def _wait(what: str, condition, proc: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"freshet run exited while waiting for {what}:\n{log.read_text(errors='replace')}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log.read_text(errors='replace')}"
        time.sleep(0.05)


def test_a_failing_offline_write_is_retried_not_fatal(tmp_path: Path) -> None:
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")
    (tmp_path / "spec.yaml").write_text(SPEC)
    data = tmp_path / "data"
    log = tmp_path / "run.log"
    proc, port = start_run([BIN, "run", "--spec", str(tmp_path / "spec.yaml"), "--data-dir", str(data)], log)
    try:
        _ingest(port, 0, 100)
        _wait("the first events' checkpoint", lambda: _metric(port, "freshet_events_accepted_total") == 100 and
              _metric(port, "freshet_checkpoints_total") >= 2, proc, log)

        # The staging folder of the events table becomes a plain file: every staged Parquet file fails to open
        # (as on a full disk), and root's permissions cannot get round it.
        staging = data / "offline" / "_staging" / "events"
        shutil.rmtree(staging)
        staging.write_text("in the way\n")
        _ingest(port, 100, 100)
        _wait("a failed checkpoint", lambda: _metric(port, "freshet_checkpoint_failures_total") >= 2, proc, log)
        status, body = _get(port, "/health")
        assert status == 503 and "checkpoint" in body and "offline store" in body, body
        # Still serving and still taking events while the offline store cannot be written.
        _ingest(port, 200, 100)
        _wait("the third batch", lambda: _metric(port, "freshet_events_accepted_total") == 300, proc, log)
        assert json.loads(_get(port, "/v1/features/u0")[1])["features"]["n_events"] == 43

        staging.unlink()
        staging.mkdir()
        checkpoints = _metric(port, "freshet_checkpoints_total")
        _wait("a checkpoint after the repair", lambda: _metric(port, "freshet_checkpoints_total") >= checkpoints + 2,
              proc, log)
        _wait("health ok", lambda: _get(port, "/health")[0] == 200, proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text(errors="replace")
    assert "checkpoint failed" in log.read_text(errors="replace")

    events = deltalake.DeltaTable(str(data / "offline" / "events")).to_pyarrow_table()
    times = sorted(events.column("event_time").cast("int64").to_pylist())
    assert times == [(1767225600000 + k) * 1000 for k in range(300)], "every event once in the events table"

"""`freshet run` under hostile HTTP load with few descriptors (issue 11): 300 slowloris connections against a
process limited to 256 open files, while ingests go on and checkpoints are written. The server must stay up,
take no more connections than its descriptors allow (leaving room for checkpoints and files), answer every
ingest, answer /health within a few seconds, and not spin on accept."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from run_process import start_run

BIN = os.environ.get("FRESHET_BIN", str(Path(__file__).resolve().parent.parent / "build" / "freshet"))

SPEC = """name: hostile
entity: user_id
timestamp: ts
source: {type: http}
serve: {port: 0, header_timeout: 4s}
checkpoint: {interval: 1s}
features:
  - {name: n_events, aggregation: count, window: {type: lifetime}}
"""

SLOW_CONNECTIONS = 300
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class SlowClients(threading.Thread):
    """`count` connections, each sending a request line and then a header one byte per `interval` seconds,
    never finishing it (slowloris). A connection the server closes is opened again, so the pressure stays."""

    def __init__(self, port: int, count: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.port, self.count, self.interval = port, count, interval
        self.stop = threading.Event()
        self.reopened = 0
        self.connected = 0  # Open at the last round.

    def _open(self) -> socket.socket | None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        if s.connect_ex(("127.0.0.1", self.port)) not in (0, 115):  # 115: EINPROGRESS
            s.close()
            return None
        return s

    def run(self) -> None:
        sockets: list[socket.socket | None] = [None] * self.count
        sent = [0] * self.count
        head = b"GET /health HTTP/1.1\r\nX-Slow: "
        while not self.stop.is_set():
            connected = 0
            for k in range(self.count):
                s = sockets[k]
                if s is not None:
                    try:
                        if s.recv(1, socket.MSG_DONTWAIT) == b"":  # The server closed it.
                            raise ConnectionResetError
                    except BlockingIOError:
                        pass
                    except OSError:
                        s.close()
                        s = sockets[k] = None
                        self.reopened += 1
                if s is None:
                    s = sockets[k] = self._open()
                    sent[k] = 0
                    if s is None:
                        continue
                try:
                    s.send(head[sent[k]:sent[k] + 1] if sent[k] < len(head) else b"a")
                    sent[k] += 1
                    connected += 1
                except BlockingIOError:
                    connected += 1  # Still connecting.
                except OSError:
                    pass  # Closed; reopened on the next round.
            self.connected = connected
            self.stop.wait(self.interval)
        for s in sockets:
            if s is not None:
                s.close()


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _get(port: int, path: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not found")


def test_run_with_256_descriptors_survives_300_slow_connections(tmp_path: Path) -> None:
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    spec = tmp_path / "hostile.yaml"
    spec.write_text(SPEC)
    log = tmp_path / "run.log"
    proc, port = start_run(["prlimit", "--nofile=256:256", BIN, "run", "--spec", str(spec), "--data-dir",
                            str(tmp_path / "data")], log)
    slow = None
    try:
        # The cap follows the limit: 256 less a reserve of 64, said once.
        assert "at most 192 connections" in log.read_text(errors="replace"), log.read_text(errors="replace")

        slow = SlowClients(port, SLOW_CONNECTIONS, 0.5)
        slow.start()
        # Let the slow connections fill the server before timing anything.
        wait_until = time.monotonic() + 30
        while slow.connected < SLOW_CONNECTIONS // 2 and time.monotonic() < wait_until:
            time.sleep(0.1)
        assert slow.connected >= SLOW_CONNECTIONS // 2, f"only {slow.connected} slow connections open"

        _, text = _get(port, "/metrics", 10)
        checkpoints_before = _metric(text.decode(), "freshet_checkpoints_total")
        ticks_before, wall_before = _cpu_ticks(proc.pid), time.monotonic()
        ingested = 0
        health_seconds = []
        window_end = time.monotonic() + 12
        k = 0
        while time.monotonic() < window_end:
            assert proc.poll() is None, "freshet run exited under load:\n" + log.read_text(errors="replace")
            body = json.dumps({"user_id": f"u{k % 7}", "ts": 1767225600000 + k}).encode() + b"\n"
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/ingest", data=body, method="POST",
                                             headers={"Content-Type": "application/x-ndjson"})
            with urllib.request.urlopen(request, timeout=10) as r:
                assert r.status == 200
                assert json.loads(r.read())["accepted"] == 1
            ingested += 1
            if k % 10 == 0:
                started = time.monotonic()
                status, answer = _get(port, "/health", 10)
                health_seconds.append(time.monotonic() - started)
                assert status == 200, answer
            k += 1
            time.sleep(0.05)
        ticks = _cpu_ticks(proc.pid) - ticks_before
        wall = time.monotonic() - wall_before

        assert ingested > 20
        assert max(health_seconds) < 5, f"/health took {max(health_seconds):.2f} s under load"
        # A checkpoint is written under the load (it needs descriptors the connections must not have taken).
        checkpoints_deadline = time.monotonic() + 30
        while True:
            _, text = _get(port, "/metrics", 10)
            metrics = text.decode()
            if _metric(metrics, "freshet_checkpoints_total") >= checkpoints_before + 2:
                break
            assert time.monotonic() < checkpoints_deadline, "no checkpoint written under load:\n" + metrics
            time.sleep(0.2)
        assert _metric(metrics, "freshet_checkpoint_failures_total") == 0
        assert _metric(metrics, "freshet_http_connections_max") == 192
        # A connection accepted at the cap is counted until the one it replaces is closed: a few per event loop
        # over the cap, out of the reserve (seen once: 195). The server says how many.
        over_cap = _metric(metrics, "freshet_http_connections_over_cap_max")
        assert over_cap > 0, over_cap
        assert _metric(metrics, "freshet_http_connections_open") <= 192 + over_cap
        # More slow clients than places, reopened as they are shed: the oldest make room for the newest (and
        # for the ingests), so none lives to its header timeout here; that is the unit tests' business.
        assert _metric(metrics, "freshet_http_connections_shed_total") > 0
        # Not spinning: well under one core on average (a loop spinning on accept takes a whole one).
        assert ticks < 0.5 * wall * CLOCK_TICKS, f"{ticks} CPU ticks in {wall:.1f} s"
        assert proc.poll() is None, log.read_text(errors="replace")
    finally:
        if slow is not None:
            slow.stop.set()
            slow.join(timeout=10)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

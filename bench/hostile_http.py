#!/usr/bin/env python3
"""Hostile HTTP load against `freshet run` (issue 11): reports figures, asserts nothing.

  slowloris  N connections each sending a request's header section one byte per INTERVAL seconds, never
             finishing it (reopened when the server closes them), while ingests go on and a legitimate client
             times GET /health. Reports whether the run stayed up, ingest and /health latencies, the server's
             CPU ticks and RSS, and its connection metrics.
  bodies     N connections each sending a POST /v1/ingest of BODY_MIB MiB short of its last bytes, held; the
             server's RSS before, while they are held, and after the clients go.

Examples (the figures in the issue 11 report):
  bench/hostile_http.py slowloris --bin build-release/freshet --nofile 256 --connections 300 --interval 0.5 --seconds 60
  bench/hostile_http.py slowloris --bin build-release/freshet --connections 10000 --interval 3 --seconds 60
  bench/hostile_http.py bodies --bin build-release/freshet --connections 60 --body-mib 8
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

SPEC = """name: hostile
entity: user_id
timestamp: ts
source: {{type: http}}
serve: {{port: 0{serve}}}
checkpoint: {{interval: 1s}}
features:
  - {{name: n_events, aggregation: count, window: {{type: lifetime}}}}
"""
TICKS = os.sysconf("SC_CLK_TCK")


def start(binary: str, nofile: int | None, workdir: Path, serve: str) -> tuple[subprocess.Popen, int, Path]:
    spec = workdir / "hostile.yaml"
    spec.write_text(SPEC.format(serve=serve))
    log = workdir / "run.log"
    command = [binary, "run", "--spec", str(spec), "--data-dir", str(workdir / "data")]
    if nofile:
        command = ["prlimit", f"--nofile={nofile}:{nofile}"] + command
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        match = re.search(rb"http://127\.0\.0\.1:(\d+)", log.read_bytes())
        if match:
            return proc, int(match.group(1)), log
        time.sleep(0.05)
    raise SystemExit("freshet run did not start:\n" + log.read_text(errors="replace"))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def metrics(port: int) -> dict[str, float]:
    """The server's HTTP and checkpoint metrics; empty when it does not answer within 30 s."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            text = r.read().decode()
    except OSError as e:
        print(f"(GET /metrics failed: {e!r})")
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("freshet_http_") or line.startswith("freshet_checkpoint"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def raise_own_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def summary(values: list[float]) -> str:
    if not values:
        return "none"
    values = sorted(values)
    return (f"n={len(values)} median={statistics.median(values) * 1000:.1f} ms "
            f"p99={values[min(len(values) - 1, int(len(values) * 0.99))] * 1000:.1f} ms max={values[-1] * 1000:.1f} ms")


class SlowClients(threading.Thread):
    def __init__(self, port: int, count: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.port, self.count, self.interval = port, count, interval
        self.stop = threading.Event()
        self.reopened = 0
        self.connected = 0

    def run(self) -> None:
        sockets: list[socket.socket | None] = [None] * self.count
        sent = [0] * self.count
        head = b"GET /health HTTP/1.1\r\nX-Slow: "
        while not self.stop.is_set():
            round_start = time.monotonic()
            connected = 0
            for k in range(self.count):
                s = sockets[k]
                if s is not None:
                    try:
                        if s.recv(1, socket.MSG_DONTWAIT) == b"":
                            raise ConnectionResetError
                    except BlockingIOError:
                        pass
                    except OSError:
                        s.close()
                        s = sockets[k] = None
                        self.reopened += 1
                if s is None:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.setblocking(False)
                    if s.connect_ex(("127.0.0.1", self.port)) not in (0, 115):
                        s.close()
                        continue
                    sockets[k] = s
                    sent[k] = 0
                try:
                    s.send(head[sent[k]:sent[k] + 1] if sent[k] < len(head) else b"a")
                    sent[k] += 1
                    connected += 1
                except BlockingIOError:
                    connected += 1
                except OSError:
                    pass
            self.connected = connected
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - round_start)))
        for s in sockets:
            if s is not None:
                s.close()


def slowloris(args: argparse.Namespace) -> None:
    raise_own_nofile()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port, log = start(args.bin, args.nofile, Path(tmp), "")
        print(f"server pid {proc.pid} port {port}; start-up log:\n{log.read_text(errors='replace').strip()}")
        slow = SlowClients(port, args.connections, args.interval)
        slow.start()
        ingest_latency: list[float] = []
        ingest_failures: list[str] = []
        health_latency: list[float] = []
        health_failures: list[str] = []
        done = threading.Event()

        def ingest() -> None:
            k = 0
            while not done.is_set():
                body = json.dumps({"user_id": f"u{k % 100}", "ts": 1767225600000 + k}).encode() + b"\n"
                request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/ingest", data=body, method="POST",
                                                 headers={"Content-Type": "application/x-ndjson"})
                started = time.monotonic()
                try:
                    with urllib.request.urlopen(request, timeout=30) as r:
                        r.read()
                    ingest_latency.append(time.monotonic() - started)
                except (OSError, urllib.error.URLError) as e:
                    ingest_failures.append(repr(e))
                k += 1
                done.wait(0.05)

        ingester = threading.Thread(target=ingest, daemon=True)
        ingester.start()
        warm_until = time.monotonic() + 60
        while slow.connected < args.connections * 0.9 and time.monotonic() < warm_until:
            time.sleep(0.2)
        print(f"slow connections open (client side): {slow.connected}")
        before = metrics(port)
        ticks0, wall0 = cpu_ticks(proc.pid), time.monotonic()
        end = wall0 + args.seconds
        while time.monotonic() < end and proc.poll() is None:
            started = time.monotonic()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as r:
                    r.read()
                health_latency.append(time.monotonic() - started)
            except (OSError, urllib.error.URLError) as e:
                health_failures.append(repr(e))
            time.sleep(1)
        alive = proc.poll() is None
        ticks, wall = cpu_ticks(proc.pid) - ticks0 if alive else -1, time.monotonic() - wall0
        after = metrics(port) if alive else {}
        rss = rss_mib(proc.pid) if alive else float("nan")
        done.set()
        slow.stop.set()
        ingester.join(timeout=60)
        slow.join(timeout=60)
        stop_server = time.monotonic()
        stop(proc)
        print(f"run stayed up: {alive}; exit code after SIGTERM: {proc.returncode} "
              f"(stop took {time.monotonic() - stop_server:.1f} s)")
        print(f"window {wall:.1f} s: server CPU {ticks} ticks ({ticks / TICKS / wall * 100:.1f}% of a core), "
              f"RSS {rss:.1f} MiB")
        print(f"slow connections reopened by the client: {slow.reopened}")
        print(f"ingest: {summary(ingest_latency)}; failures {len(ingest_failures)} {ingest_failures[:3]}")
        print(f"GET /health: {summary(health_latency)}; failures {len(health_failures)} {health_failures[:3]}")
        for name in sorted(after):
            if "_bucket" in name or "duration_seconds" in name:
                continue
            if after[name] != before.get(name, 0) or "connections" in name:
                print(f"  {name}: {before.get(name, 0):g} -> {after[name]:g}")


def bodies(args: argparse.Namespace) -> None:
    raise_own_nofile()
    size = args.body_mib * (1 << 20) - 64  # Within the 8 MiB limit with room to spare.
    line = json.dumps({"user_id": "u1", "ts": 1767225600000}).encode() + b"\n"
    body = (line * (size // len(line) + 1))[:size]
    head = (f"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port, _ = start(args.bin, args.nofile, Path(tmp), "")
        time.sleep(2)
        print(f"RSS before: {rss_mib(proc.pid):.1f} MiB")
        for round_number in range(1, args.rounds + 1):
            # A second round matters: glibc serves it from its arenas (the first round's frees raised the
            # dynamic mmap threshold), whose free memory stays resident unless trimmed.
            hold_bodies(args, port, proc.pid, head, body, round_number)
        stop(proc)


def hold_bodies(args: argparse.Namespace, port: int, pid: int, head: bytes, body: bytes, round_number: int) -> None:
    sockets: list[socket.socket] = []
    outcomes: list[str] = []
    lock = threading.Lock()

    def send_one() -> None:
        s = socket.create_connection(("127.0.0.1", port))
        with lock:
            sockets.append(s)
        try:
            s.sendall(head + body[:-args.hold])
            outcome = "held"
        except OSError as e:
            outcome = f"send failed ({e.__class__.__name__})"
        s.settimeout(0.5)
        try:
            answer = s.recv(200)
            if answer:
                outcome = answer.split(b"\r\n", 1)[0].decode()
        except OSError:
            pass
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=send_one) for _ in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(2)
    during = rss_mib(pid)
    m = metrics(port)
    print(f"round {round_number}: RSS while held: {during:.1f} MiB; buffered_request_bytes "
          f"{m.get('freshet_http_buffered_request_bytes', float('nan')) / (1 << 20):.1f} MiB; "
          f"503s so far {m.get('freshet_http_buffer_budget_refusals_total', 0):g}")
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o] = counts.get(o, 0) + 1
    print(f"round {round_number}: client outcomes: {counts}")
    for s in sockets:
        s.close()
    went = time.monotonic()
    for after_seconds in (1, 3, 10):
        time.sleep(max(0.0, went + after_seconds - time.monotonic()))
        print(f"round {round_number}: RSS {after_seconds} s after the clients went: {rss_mib(pid):.1f} MiB")
    m = metrics(port)
    print(f"round {round_number}: buffered_request_bytes after: "
          f"{m.get('freshet_http_buffered_request_bytes', float('nan')):g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("slowloris")
    s.add_argument("--bin", required=True)
    s.add_argument("--nofile", type=int, default=None, help="run the server under prlimit --nofile=N:N")
    s.add_argument("--connections", type=int, default=300)
    s.add_argument("--interval", type=float, default=0.5, help="seconds between bytes of each slow connection")
    s.add_argument("--seconds", type=float, default=60)
    s.set_defaults(run=slowloris)
    b = sub.add_parser("bodies")
    b.add_argument("--bin", required=True)
    b.add_argument("--nofile", type=int, default=None)
    b.add_argument("--connections", type=int, default=60)
    b.add_argument("--body-mib", type=int, default=8)
    b.add_argument("--hold", type=int, default=10, help="bytes of each body not sent")
    b.add_argument("--rounds", type=int, default=2)
    b.set_defaults(run=bodies)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()

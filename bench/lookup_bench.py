#!/usr/bin/env python3
"""Async lookups (issue 12 part 3): `freshet run` over one generated file with the fraud spec, plain and with a Redis
lookup per event (examples/fraud/fraud.yaml plus `lookups: [{name: credit, type: redis, key: "credit:{user_id}",
max_in_flight: 100}]` and one feature on credit.score), alternating in one run against a redis-server on loopback
holding a hash for every user.

    .venv/bin/python bench/lookup_bench.py --bin build-release/freshet [--events N] [--users N] [--repeat N]
        [--cache]   # with cache: {ttl: 60s, max_entries: 1000000} on the lookup

Each run follows the file (so /metrics can be read at the end), and its time is from start until every line is
processed (freshet_events_in_total); the rate is lines / that time, and the CPU seconds are the process's. The
lookup's p99 comes from the freshet_lookup_latency_seconds histogram (upper bucket bound), and the freshness p99
(arrival to visible) from freshet_freshness_seconds, for both specs: the difference is the latency lookups add.
Prints each run and the medians. See bench/README.md.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "tests"))
from redis_server import RedisServer  # noqa: E402
from run_process import start_run  # noqa: E402


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def p99(text: str, name: str) -> float:
    buckets = []
    for line in text.splitlines():
        m = re.match(rf'{name}_bucket\{{.*le="([^"]+)"\}} (\S+)', line)
        if m:
            buckets.append((float(m.group(1)), float(m.group(2))))
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    total = buckets[-1][1]
    for bound, count in buckets:
        if count >= 0.99 * total:
            return bound
    return float("inf")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache", action="store_true")
    args = parser.parse_args()
    data = HERE / "bench" / "data" / "lookup"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    events = data / "events.jsonl"
    subprocess.run([args.bin, "generate", "--users", str(args.users), "--events", str(args.events), "--duration",
                    "24h", "--seed", "42", "--disorder", "2s", "--output", str(events)], check=True)
    lines = sum(1 for _ in open(events, "rb"))
    user_ids = sorted({line.split(b'"user_id":"', 1)[1].split(b'"', 1)[0] for line in open(events, "rb")})

    with RedisServer() as redis:
        # Every user's hash, loaded with one pipelined stream of commands.
        with socket.create_connection(("127.0.0.1", redis.port)) as s:
            body = bytearray()
            for k, user in enumerate(user_ids):
                key = b"credit:" + user
                score = str(300 + k % 550).encode()
                parts = [b"HSET", key, b"score", score, b"tier", b"gold" if k % 3 == 0 else b"silver"]
                body += b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
            s.sendall(bytes(body))
            s.shutdown(socket.SHUT_WR)
            while s.recv(1 << 20):
                pass
        base = (HERE / "examples" / "fraud" / "fraud.yaml").read_text()
        base = re.sub(r"(?m)^source: .*$", f"source: {{type: file, path: {events}, follow: true}}", base)
        base += "offline: {enabled: false}\nserve: {port: 0}\ncheckpoint: {interval: 1h}\n"
        cache = "    cache: {ttl: 60s, max_entries: 1000000}\n" if args.cache else ""
        specs = {
            "plain": base,
            "lookup": base.replace("features:\n", "lookups:\n  - name: credit\n    type: redis\n"
                                   "    key: \"credit:{user_id}\"\n" f"    port: {redis.port}\n"
                                   "    max_in_flight: 100\n" + cache + "features:\n"
                                   "  - {name: max_score_1h, aggregation: max, field: credit.score, "
                                   "window: {type: sliding, size: 1h}}\n", 1),
        }
        results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in specs}
        for name, text in specs.items():
            (data / f"{name}.yaml").write_text(text)
        for k in range(args.repeat):
            for name in specs:
                run_dir = data / f"run-{name}-{k}"
                load = os.getloadavg()[0]
                started = time.monotonic()
                proc, port = start_run([args.bin, "run", "--spec", str(data / f"{name}.yaml"), "--data-dir",
                                        str(run_dir)], data / f"{name}-{k}.log", seconds=120)
                while True:
                    text = metrics(port)
                    if metric(text, "freshet_events_in_total") >= lines:
                        break
                    time.sleep(0.05)
                seconds = time.monotonic() - started
                cpu = cpu_seconds(proc.pid)
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=120)
                shutil.rmtree(run_dir, ignore_errors=True)
                look = p99(text, "freshet_lookup_latency_seconds") if name == "lookup" else float("nan")
                fresh = p99(text, "freshet_freshness_seconds")
                requests = metric(text, "freshet_lookup_requests_total")
                results[name].append((lines / seconds / 1e6, cpu, look, fresh))
                print(f"{name} run {k + 1}: {lines} lines in {seconds:.2f} s, {cpu:.2f} CPU-s, load {load:.1f}: "
                      f"{lines / seconds / 1e6:.3f} M events/s, {lines / cpu / 1e6:.3f} M per CPU-s; "
                      f"lookup requests {requests:.0f}, lookup p99 <= {look * 1000:.2f} ms, "
                      f"freshness p99 <= {fresh * 1000:.1f} ms", flush=True)
    for name, rows in results.items():
        print(f"{name}: median {statistics.median(r[0] for r in rows):.3f} M events/s, "
              f"{statistics.median(lines / r[1] / 1e6 for r in rows):.3f} M per CPU-s, "
              f"lookup p99 {statistics.median(r[2] for r in rows) * 1000:.2f} ms, "
              f"freshness p99 {statistics.median(r[3] for r in rows) * 1000:.1f} ms over {len(rows)} runs")


if __name__ == "__main__":
    main()

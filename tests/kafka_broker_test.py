"""The project's Kafka broker (scripts/kafka.sh, tests/kafka_broker.py) on this machine.

Proves that scripts/setup.sh leaves a broker that starts, keeps its data and committed offsets across a crash, and
that Debian's librdkafka (2.0.2 on Debian 12, the one Freshet links) works against it: kcat, which links the
system librdkafka, lists, produces, and consumes with a consumer group that commits.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kafka_broker import KAFKA_SH, kafka_broker, self_check  # noqa: E402,F401

KCAT = shutil.which("kcat")


def test_self_check():
    """start, 8 partitions, 1000 keyed messages, a group reads and commits, kill -9 and restart on the same port:
    messages and offsets survive (tests/kafka_broker.py's own check)."""
    self_check(print)


def _kcat(*args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run([KCAT, *args], input=input, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, f"kcat {' '.join(args)} -> {proc.returncode}\n{proc.stderr.decode(errors='replace')}"
    return proc


def _kcat_group_read(bootstrap: str, group: str, topic: str) -> list[dict]:
    """Everything the group has not committed yet, read by kcat's balanced consumer (-G) until the end of every
    partition; kcat commits on close."""
    out = _kcat("-b", bootstrap, "-G", group, "-X", "auto.offset.reset=earliest", "-e", "-q", "-J", topic).stdout
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def test_kcat_with_system_librdkafka(kafka_broker):
    if KCAT is None:
        pytest.fail("kcat is not installed; run scripts/setup.sh")
    version = _kcat("-V").stdout.decode()
    match = re.search(r"librdkafka (\S+)", version)
    print(f"kcat links librdkafka {match.group(1) if match else '?'}")
    bootstrap = kafka_broker.bootstrap

    # The topic through scripts/kafka.sh (org.apache.kafka.tools.TopicCommand); twice: --if-not-exists.
    for _ in range(2):
        subprocess.run(["bash", str(KAFKA_SH), "topic", str(kafka_broker.dir), "kc", "4"], check=True, timeout=120)

    metadata = json.loads(_kcat("-L", "-J", "-b", bootstrap, "-t", "kc").stdout)
    assert [b["id"] for b in metadata["brokers"]] == [1]
    [topic] = metadata["topics"]
    assert topic["topic"] == "kc" and len(topic["partitions"]) == 4

    # kcat produces 200 keyed messages (half with the idempotent producer), Python 100 more.
    lines = [f"user{i % 23}|{{\"n\": {i}}}" for i in range(200)]
    _kcat("-P", "-b", bootstrap, "-t", "kc", "-K", "|", input="\n".join(lines[:100]).encode() + b"\n")
    _kcat("-P", "-b", bootstrap, "-t", "kc", "-K", "|", "-X", "enable.idempotence=true",
          input="\n".join(lines[100:]).encode() + b"\n")
    kafka_broker.produce("kc", [(f"py{i % 5}", f'{{"py": {i}}}'.encode()) for i in range(100)])
    ends = kafka_broker.end_offsets("kc")
    assert sum(ends.values()) == 300, ends

    got = _kcat_group_read(bootstrap, "kcat-group", "kc")
    assert len(got) == 300
    assert sorted((m["partition"], m["offset"]) for m in got) == sorted(
        (p, o) for p, end in ends.items() for o in range(end))
    from_kcat = [f"{m['key']}|{m['payload']}" for m in got if m["key"].startswith("user")]
    assert sorted(from_kcat) == sorted(lines)
    for key in {m["key"] for m in got}:  # One partition per key, in the order produced.
        mine = [m for m in got if m["key"] == key]
        assert len({m["partition"] for m in mine}) == 1, key
    user0 = [m["payload"] for m in sorted(got, key=lambda m: m["offset"]) if m["key"] == "user0"]
    assert user0 == [line.split("|", 1)[1] for line in lines if line.startswith("user0|")]

    # kcat's group committed everything on close; a second run reads nothing; Python sees the same offsets.
    assert kafka_broker.committed("kcat-group", "kc") == ends
    assert _kcat_group_read(bootstrap, "kcat-group", "kc") == []

    # librdkafka's transactional producer (2.0.2) against the broker's transaction coordinator.
    _kcat("-P", "-b", bootstrap, "-t", "kc", "-K", "|", "-X", "transactional.id=freshet-test",
          input=b"tx|{\"tx\": 1}\n")
    [tx] = _kcat_group_read(bootstrap, "kcat-group", "kc")
    assert tx["key"] == "tx" and tx["payload"] == '{"tx": 1}'


def test_kafka_sh_start_stop(tmp_path):
    """scripts/kafka.sh as the demo and benchmarks use it: a background broker, stopped with SIGTERM."""
    sh = ["bash", str(KAFKA_SH)]
    folder = str(tmp_path / "kafka")
    try:
        started = subprocess.run([*sh, "start", folder], capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr
        bootstrap = started.stdout.strip()
        assert re.fullmatch(r"127\.0\.0\.1:\d+", bootstrap) and (tmp_path / "kafka" / "bootstrap").read_text().strip() \
            == bootstrap
        status = subprocess.run([*sh, "status", folder], capture_output=True, text=True)
        assert status.returncode == 0 and bootstrap in status.stdout
        again = subprocess.run([*sh, "start", folder], capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and again.stdout.strip() == bootstrap  # Already running: same address.
        pid = int((tmp_path / "kafka" / "pid").read_text())
        subprocess.run([*sh, "stop", folder], check=True, timeout=120)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        assert subprocess.run([*sh, "status", folder], capture_output=True).returncode == 1
        assert "Kafka Server started" in (tmp_path / "kafka" / "broker.log").read_text()
    finally:
        subprocess.run([*sh, "kill", folder], timeout=60)

"""`GET /metrics` of `freshet run` follows the Prometheus conventions (issue 13), and its values agree with what
the run did.

`freshet run` reads a generated stream (with malformed and late lines) from a file, writes to a real
redis-server on a free loopback port and checkpoints; the test answers a few HTTP requests, then scrapes
/metrics and parses it with the Prometheus client library's own parser (`text_string_to_metric_families`).
It checks:

- the conventions: every family has HELP and TYPE; names match [a-zA-Z_:][a-zA-Z0-9_:]*; counters end in
  _total; no name is in milliseconds (`_ms`, `milliseconds`); every histogram has increasing `le` bounds ending
  at +Inf, cumulative bucket counts that never decrease, and a +Inf bucket equal to its _count;
- process_* (as the client libraries export them) with plausible values, and freshet_build_info;
- the values, against the brute-force reference (tests/reference.py) run on the same lines: lines in, accepted,
  rejected and late events, entities with state, the low watermark in seconds, one freshness observation
  per accepted event; and, within the run's own figures, one checkpoint-duration observation per checkpoint
  and one Redis write-latency observation per batch written.

`freshet serve` (the Redis-backed lookup server) is held to the same rules in a second test.
"""
from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference as ref  # noqa: E402
from redis_server import RedisServer  # noqa: E402
from run_process import start_run  # noqa: E402

BIN = os.environ.get("FRESHET_BIN", str(Path(__file__).resolve().parent.parent / "build" / "freshet"))

SPEC = """name: metrics
entity: user_id
timestamp: ts
watermark: {{max_out_of_orderness: 2s, allowed_lateness: 3s}}
source: {{type: file, path: events.jsonl, follow: true}}
online: {{type: redis, port: {port}, flush_interval: 20ms}}
serve: {{port: 0}}
checkpoint: {{interval: 200ms}}
features:
  - {{name: purchases_30m, aggregation: count, where: "type == 'purchase'", window: {{type: sliding, size: 30m, slide: 1m}}}}
  - {{name: amount_sum_1h, aggregation: sum, field: amount, window: {{type: sliding, size: 1h}}}}
  - {{name: last_category, aggregation: last, field: category, window: {{type: lifetime}}}}
"""

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}, through the Prometheus parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no sample {name}{labels or ''} in /metrics"
    return samples[key]


def _check_conventions(text: str) -> None:
    """The naming and exposition rules, on the raw text and on the parsed families."""
    helps = set(re.findall(r"^# HELP (\S+) ", text, re.M))
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.match(r"[^{ ]+", line).group(0)
            family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
            assert family in types and family in helps, f"sample without its family's HELP and TYPE: {line!r}"
            # One number format: integers without exponent (no "1e+06" for a count).
            value = line.rsplit(" ", 1)[1]
            if value not in ("+Inf", "-Inf", "NaN") and float(value) == int(float(value)) and abs(float(value)) < 2**53:
                assert re.fullmatch(r"-?\d+", value), f"an integer written as {value!r}: {line!r}"
    families = list(text_string_to_metric_families(text))
    assert families
    for family in families:
        # The parser strips _total from a counter's family name; the exposition's own name is in TYPE.
        exposed = family.name + "_total" if family.type == "counter" else family.name
        assert exposed in types, f"{family.name}: family without TYPE (exposed as {sorted(types)})"
        assert exposed in helps and family.documentation, f"{exposed}: no HELP text"
        assert NAME.match(exposed), f"invalid metric name {exposed!r}"
        assert "_ms" not in exposed and "milliseconds" not in exposed, f"{exposed}: not in base units"
        if family.type == "counter":
            assert types[exposed] == "counter" and exposed.endswith("_total"), exposed
            for s in family.samples:
                assert s.name.endswith("_total") or s.name.endswith("_created"), s
                assert s.value >= 0, s
        if family.type == "histogram":
            series: dict[tuple, list] = {}
            counts: dict[tuple, float] = {}
            for s in family.samples:
                rest = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                if s.name.endswith("_bucket"):
                    series.setdefault(rest, []).append((float(s.labels["le"]), s.value))
                elif s.name.endswith("_count"):
                    counts[rest] = s.value
            assert series and set(series) == set(counts), f"{exposed}: buckets and _count series differ"
            for rest, buckets in series.items():
                bounds = [b for b, _ in buckets]
                assert bounds == sorted(set(bounds)), f"{exposed}{rest}: bounds not increasing: {bounds}"
                assert bounds[-1] == math.inf, f"{exposed}{rest}: last bucket is not +Inf"
                values = [v for _, v in buckets]
                assert values == sorted(values), f"{exposed}{rest}: cumulative counts decrease: {values}"
                assert values[-1] == counts[rest], f"{exposed}{rest}: +Inf bucket {values[-1]} != _count"


@pytest.fixture
def redis():
    server = RedisServer().start()
    yield server
    server.stop()


def test_metrics_follow_prometheus_conventions_and_agree_with_the_run(tmp_path: Path, redis) -> None:
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")
    (tmp_path / "spec.yaml").write_text(SPEC.format(port=redis.port))
    events = tmp_path / "events.jsonl"
    subprocess.run([BIN, "generate", "--users", "150", "--events", "6000", "--seed", "13", "--duration", "2h",
                    "--disorder", "1s", "--late-share", "0.02", "--malformed-share", "0.03", "--output",
                    str(events), "--no-progress"], check=True, timeout=120)
    data = events.read_bytes()
    lines = ref.split_lines(data)
    accepted, dead = ref.read_events(data, ref.load_spec(str(tmp_path / "spec.yaml")))
    late = sum(1 for d in dead if d.reason == "late")
    assert late > 0 and len(dead) - late > 0, "the stream should have late and malformed lines"

    proc, port = start_run([BIN, "run", "--spec", str(tmp_path / "spec.yaml"), "--data-dir", str(tmp_path / "data")],
                           tmp_path / "run.log")
    try:
        deadline = time.monotonic() + 60
        while True:  # Until every line is read, checkpointed and written to Redis.
            samples = _samples(_get(port, "/metrics"))
            done = (_value(samples, "freshet_events_in_total", source="file") == len(lines)
                    and _value(samples, "freshet_checkpoints_total") >= 2
                    and _value(samples, "freshet_redis_pending_entities") == 0
                    and _value(samples, "freshet_redis_entities_written_total") > 0)
            if done:
                break
            assert time.monotonic() < deadline, f"the run did not take every line in time: {samples}"
            time.sleep(0.05)
        _get(port, "/health")
        _get(port, "/v1/features/u1")
        # A checkpoint (every 200 ms) or a Redis batch can end between the reading of its counter and of its
        # histogram in one scrape: take a scrape in which none did.
        while True:
            text = _get(port, "/metrics")
            samples = _samples(text)
            if (_value(samples, "freshet_checkpoint_duration_seconds_count")
                    == _value(samples, "freshet_checkpoints_total")
                    and _value(samples, "freshet_redis_write_duration_seconds_count")
                    == _value(samples, "freshet_redis_batches_written_total")):
                break
            assert time.monotonic() < deadline, f"histogram counts never matched their counters:\n{text}"
            time.sleep(0.05)
        # The kernel's other account of the process's memory, read right after the scrape (kB).
        status = dict(line.split(":", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines())
        vm_rss, vm_size = (float(status[key].split()[0]) * 1024 for key in ("VmRSS", "VmSize"))
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, (tmp_path / "run.log").read_text(errors="replace")
    (tmp_path / "metrics.txt").write_text(text)  # For a look after a failure.

    _check_conventions(text)
    samples = _samples(text)

    # Values against the reference.
    assert _value(samples, "freshet_events_in_total", source="file") == len(lines)
    assert _value(samples, "freshet_events_accepted_total", source="file") == len(accepted)
    assert _value(samples, "freshet_events_rejected_total", source="file") == len(dead) - late
    assert _value(samples, "freshet_events_late_total", source="file") == late
    assert len(accepted) == len(lines) - len(dead)  # Accepted: the lines fed minus the dead-lettered.
    assert _value(samples, "freshet_state_entities") == len({e.entity for e in accepted})
    # L = M - max_out_of_orderness - allowed_lateness, M the newest accepted event time.
    watermark_s = (max(e.time_ms for e in accepted) - 2000 - 3000) / 1000
    assert _value(samples, "freshet_watermark_seconds") == pytest.approx(watermark_s, abs=1e-9)
    assert _value(samples, "freshet_freshness_seconds_count") == len(accepted)
    # Within the run's own figures (equal counts: the scrape above was taken when they matched).
    assert _value(samples, "freshet_checkpoint_duration_seconds_count") >= 2
    assert _value(samples, "freshet_checkpoint_duration_seconds_sum") > 0
    assert _value(samples, "freshet_redis_write_duration_seconds_count") > 0
    assert _value(samples, "freshet_redis_written_bytes_total") > 0
    assert _value(samples, "freshet_http_request_duration_seconds_count", route="/v1/features/{entity}") >= 1

    # Process metrics, as the client libraries export them.
    assert 0 < _value(samples, "process_cpu_seconds_total") < 3600
    assert _value(samples, "process_resident_memory_bytes") > 1 << 20
    assert _value(samples, "process_virtual_memory_bytes") >= _value(samples, "process_resident_memory_bytes")
    assert _value(samples, "process_resident_memory_bytes") == pytest.approx(vm_rss, rel=0.25)
    assert _value(samples, "process_virtual_memory_bytes") == pytest.approx(vm_size, rel=0.25)
    assert _value(samples, "process_open_fds") > 0
    assert _value(samples, "process_max_fds") >= _value(samples, "process_open_fds")
    assert time.time() - 600 < _value(samples, "process_start_time_seconds") <= time.time()
    info = [(s.labels, s.value) for f in text_string_to_metric_families(text) if f.name == "freshet_build_info"
            for s in f.samples]
    assert len(info) == 1 and info[0][1] == 1, info
    assert info[0][0]["version"] == subprocess.run([BIN, "--version"], capture_output=True, text=True,
                                                   check=True).stdout.split()[-1]
    assert re.fullmatch(r"[0-9a-f]{12}|unknown", info[0][0]["commit"]), info


def test_serve_metrics_follow_the_same_conventions(tmp_path: Path, redis) -> None:
    """`freshet serve` has its own metrics (and a registry of its own for them): the same rules, the process
    metrics, and a lookup refused while Redis holds no sync marker (no `freshet run` wrote to it) counted once."""
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")
    (tmp_path / "spec.yaml").write_text(SPEC.format(port=redis.port))
    proc, port = start_run([BIN, "serve", "--spec", str(tmp_path / "spec.yaml"), "--port", "0"], tmp_path / "serve.log")
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            _get(port, "/v1/features/u1")
        assert refused.value.code == 503
        text = _get(port, "/metrics")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, (tmp_path / "serve.log").read_text(errors="replace")
    _check_conventions(text)
    samples = _samples(text)
    assert _value(samples, "freshet_serve_refused_no_marker_total") == 1
    assert _value(samples, "freshet_http_requests_total", route="/v1/features/{entity}", status="503") == 1
    assert _value(samples, "process_open_fds") > 0 and _value(samples, "process_resident_memory_bytes") > 0
    assert "freshet_build_info{" in text

"""One rule for lines, whether read from a file or pushed to `POST /v1/ingest`: a blank line is a line, rejected
and dead-lettered with the same reason; a final newline ends the last line rather than starting an empty one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from run_process import start_run

BIN = os.environ.get("FRESHET_BIN", str(Path(__file__).resolve().parent.parent / "build" / "freshet"))

SPEC = """name: lines
entity: user_id
timestamp: ts
source: {source}
serve: {{port: 0}}
features:
  - {{name: n_events, aggregation: count, window: {{type: lifetime}}}}
"""

BODY = (b'{"user_id":"u1","ts":1767225600000}\n'
        b'\n'
        b'   \n'
        b'\r\n'
        b'{"user_id":"u2","ts":1767225600001}\r\n'
        b'\t\n'
        b'{"user_id":"u1","ts":1767225600002}\n')


def _dead_letters(path: Path) -> list[tuple[int, str, str]]:
    return [(d["line"], d["reason"], d["raw"]) for d in map(json.loads, path.read_text().splitlines())]


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not found")


def _start_http(tmp_path: Path, data_dir: Path) -> tuple[subprocess.Popen, int]:
    """`freshet run` with an HTTP source; returns the process and its port once it serves."""
    (tmp_path / "http.yaml").write_text(SPEC.format(source="{type: http}"))
    return start_run([BIN, "run", "--spec", str(tmp_path / "http.yaml"), "--data-dir", str(data_dir)],
                     tmp_path / "run.log")


def test_blank_lines_are_rejected_alike_from_a_file_and_from_ingest(tmp_path: Path) -> None:
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")
    # From a file.
    (tmp_path / "events.jsonl").write_bytes(BODY)
    (tmp_path / "file.yaml").write_text(SPEC.format(source="{type: file, path: events.jsonl}"))
    subprocess.run([BIN, "run", "--spec", str(tmp_path / "file.yaml"), "--data-dir", str(tmp_path / "file-data"),
                    "--exit-at-end"], check=True, capture_output=True, timeout=120)
    from_file = _dead_letters(tmp_path / "file-data" / "dead_letters" / "file.jsonl")
    assert [line for line, _, _ in from_file] == [2, 3, 4, 6]
    assert {reason for _, reason, _ in from_file} == {"empty line; each line must be one JSON object"}

    # Pushed: the same lines, the same dead letters (ingest records are numbered from 1 like lines).
    proc, port = _start_http(tmp_path, tmp_path / "http-data")
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/ingest", data=BODY, method="POST",
                                         headers={"Content-Type": "application/x-ndjson"})
        with urllib.request.urlopen(request, timeout=10) as r:
            ack = json.loads(r.read())
        # The answer says what the parser thinks of each line; every line is logged and the blank ones are
        # dead-lettered by the pipeline.
        assert (ack["accepted"], ack["rejected"]) == (3, 4), ack
        assert [e["line"] for e in ack["errors"]] == [2, 3, 4, 6], ack
        assert {e["reason"] for e in ack["errors"]} == {"empty line; each line must be one JSON object"}, ack
        deadline = time.monotonic() + 30
        while _metric(port, "freshet_events_in_total") < 7 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _metric(port, "freshet_events_rejected_total") == 4
        assert _metric(port, "freshet_events_accepted_total") == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert _dead_letters(tmp_path / "http-data" / "dead_letters" / "http.jsonl") == from_file


def test_ingest_answers_accepted_rejected_and_the_first_errors(tmp_path: Path) -> None:
    """Garbage pushed to /v1/ingest is counted as rejected in the answer, with line numbers and reasons."""
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")
    proc, port = _start_http(tmp_path, tmp_path / "data")
    try:
        garbage = [b"not json", b'{"user_id": "u1"}', b'["an", "array"]'] + \
                  [b'{"user_id":"u%d","ts":1767225600000}' % k for k in range(2)] + [b"{" * 3] * 12
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/ingest", data=b"\n".join(garbage) + b"\n",
                                         method="POST", headers={"Content-Type": "application/x-ndjson"})
        with urllib.request.urlopen(request, timeout=10) as r:
            ack = json.loads(r.read())
        assert (ack["accepted"], ack["rejected"]) == (2, 15), ack
        assert [e["line"] for e in ack["errors"]] == [1, 2, 3, 6, 7, 8, 9, 10, 11, 12], ack  # the first ten
        assert "ts" in ack["errors"][1]["reason"], ack["errors"][1]
        deadline = time.monotonic() + 30
        while _metric(port, "freshet_events_in_total") < len(garbage) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _metric(port, "freshet_events_rejected_total") == 15
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0

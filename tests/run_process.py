"""Starting `freshet run` in an end-to-end test: the process, with its output in a log file, and the port it
serves on, read from its "serving ... on http://127.0.0.1:PORT" line; asking it for JSON and waiting (with a
deadline) for a condition on its answers."""
from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Sequence


def start_run(command: Sequence[str], log: Path, seconds: float = 30) -> tuple[subprocess.Popen, int]:
    """Runs `command` (`freshet run ...`, possibly behind a wrapper such as prlimit), stdout and stderr to `log`;
    returns the process and its port once it serves. Fails with the log if it exits or `seconds` pass first."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(command), stdout=out, stderr=out)
    deadline = time.monotonic() + seconds
    while True:
        match = re.search(rb"http://127\.0\.0\.1:(\d+)", log.read_bytes())
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"freshet run did not start serving:\n{log.read_text(errors='replace')}")
        time.sleep(0.02)


def get_json(url: str, body: dict | None = None) -> tuple[int, Any]:
    """GET `url` (POST `body` as JSON when given): the status and the parsed answer, errors included."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    """Polls `condition` until it is truthy (and returns its value); fails naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def wait_accepted(base: str, events: int, seconds: float, what: str = "all events accepted") -> None:
    """Until the console's pipeline view at `base` counts `events` accepted events."""
    wait_for(lambda: get_json(base + "/v1/ui/pipeline")[1]["totals"]["accepted"] == events, seconds, what)


def json_lines(rows: list[dict]) -> bytes:
    """Rows as JSON lines, each ended by a newline."""
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def append_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def get_bytes(port: int, path: str) -> bytes:
    """The body of GET http://127.0.0.1:PORT/PATH."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read()

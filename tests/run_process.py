"""Starting `freshet run` in an end-to-end test: the process, with its output in a log file, and the port it
serves on, read from its "serving ... on http://127.0.0.1:PORT" line."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Sequence


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

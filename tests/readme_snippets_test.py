"""Every shell, Python and SQL block of README.md runs as written (issue 13: docs and behaviour cannot drift).

Each ```sh / ```bash / ```python / ```sql block is one test case. It runs in a fresh folder laid out as the
README assumes, the repository's root: `examples/` copied (without any events.jsonl written there before) and
`build/freshet`, a link to the binary under test (FRESHET_BIN), with `build/` first on PATH, so both `freshet` and
`build/freshet` work as the README says. Shell blocks run with `bash -e -o pipefail` (any failing command fails the
case), Python blocks with this interpreter (the project's .venv), SQL blocks with DuckDB; each has a deadline.

An HTML comment on the line before a block says how to run it, directives separated by `;`:
  <!-- snippet: skip, REASON -->     not run; the reason is required, and the skips are few (checked below).
  <!-- snippet: name: N -->          names the block, for `after`.
  <!-- snippet: after: N -->         block N (and what it needs, in turn) runs first, in the same folder.
  <!-- snippet: background: URL -->  a long-running command (`freshet run`): started, then the test waits for URL to
                                     answer 200 before going on; at the end it gets SIGTERM and must exit 0.
The README's port 8080 is replaced by a free loopback port in every block of a case, so that tests running at
the same time on one machine do not collide.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = os.environ.get("FRESHET_BIN", str(ROOT / "build" / "freshet"))
RUNNABLE = {"sh", "bash", "python", "sql"}
MAX_SKIPS = 4
BLOCK_SECONDS = 300  # A shared, loaded two-core machine; the blocks take seconds on an idle one.
SERVE_SECONDS = 60
MARKER = re.compile(r"^<!--\s*snippet:\s*(.*?)\s*-->$")


@dataclass
class Block:
    """One fenced block of the README with what its marker says."""

    line: int  # Of the opening fence.
    lang: str
    code: str
    skip: Optional[str] = None
    name: Optional[str] = None
    after: Optional[str] = None
    background: Optional[str] = None
    directives: Dict[str, str] = field(default_factory=dict)


def _parse_marker(text: str, where: str) -> Dict[str, str]:
    if text.startswith("skip"):
        reason = text[len("skip"):].lstrip(" ,:").strip()
        assert reason, f"{where}: a skipped snippet must say why: <!-- snippet: skip, REASON -->"
        return {"skip": reason}
    directives: Dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition(":")
        key, value = key.strip(), value.strip()
        assert sep and key in ("name", "after", "background") and value, (
            f"{where}: unknown snippet directive '{part}'; expected skip, REASON or name: N; after: N; background: URL")
        directives[key] = value
    return directives


def parse_blocks(markdown: Path) -> List[Block]:
    """All fenced blocks of `markdown`, with the directives of the marker just before each."""
    lines = markdown.read_text(encoding="utf-8").splitlines()
    blocks: List[Block] = []
    pending: Optional[Dict[str, str]] = None
    pending_line = 0
    number = 0
    while number < len(lines):
        line = lines[number]
        number += 1
        marker = MARKER.match(line.strip())
        if marker:
            pending = _parse_marker(marker.group(1), f"{markdown.name}:{number}")
            pending_line = number
            continue
        if line.startswith("```"):
            assert pending is None or pending_line == number - 1, (
                f"{markdown.name}:{pending_line}: a snippet marker must be on the line just before its block")
            lang = line[3:].strip()
            start = number
            body: List[str] = []
            while number < len(lines) and not lines[number].startswith("```"):
                body.append(lines[number])
                number += 1
            assert number < len(lines), f"{markdown.name}:{start}: a block that is never closed"
            number += 1
            directives = pending or {}
            blocks.append(Block(start, lang, "\n".join(body) + "\n", skip=directives.get("skip"),
                                name=directives.get("name"), after=directives.get("after"),
                                background=directives.get("background"), directives=directives))
            pending = None
            continue
        assert pending is None, f"{markdown.name}:{pending_line}: a snippet marker that no block follows"
    return blocks


BLOCKS = parse_blocks(README)
BY_NAME = {b.name: b for b in BLOCKS if b.name}


def _chain(block: Block) -> List[Block]:
    """The blocks to run for `block`, those it comes after first."""
    chain = [block]
    while chain[0].after:
        before = BY_NAME[chain[0].after]
        assert before not in chain, f"README.md:{block.line}: `after` goes round in a circle"
        chain.insert(0, before)
    return chain


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _folder(tmp: Path) -> Path:
    """A fresh folder laid out as the README's commands expect: the repository's root."""
    shutil.copytree(ROOT / "examples", tmp / "examples", ignore=shutil.ignore_patterns("events.jsonl", "__pycache__"))
    (tmp / "build").mkdir()
    (tmp / "build" / "freshet").symlink_to(Path(BIN).resolve())
    return tmp


def _wait_until_answers(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVE_SECONDS
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the background snippet exited ({proc.returncode}) before {url} answered:\n" \
                                    f"{log.read_text(errors='replace')}"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer 200 within {SERVE_SECONDS} s:\n{log.read_text(errors='replace')}")


def _run(block: Block, folder: Path, env: Dict[str, str], port: int) -> subprocess.CompletedProcess:
    code = block.code.replace("8080", str(port))
    where = f"README.md:{block.line}"
    if block.lang in ("sh", "bash"):
        command = ["bash", "-e", "-o", "pipefail", "-c", code]
    elif block.lang == "python":
        script = folder / f"snippet_{block.line}.py"
        script.write_text(code)
        command = [sys.executable, str(script)]
    else:  # sql
        # DuckDB loads the delta extension (delta_scan) from the duckdb-ext-delta package's folder, as the README
        # says, never from the network.
        command = [sys.executable, "-c",
                   "import duckdb, os, sys, sysconfig; "
                   "ext = os.path.join(sysconfig.get_paths()['purelib'], 'duckdb_ext', 'extensions'); "
                   "con = duckdb.connect(config={'extension_directory': ext, 'autoinstall_known_extensions': False}); "
                   "rows = con.sql(sys.argv[1]).fetchall(); print(rows); sys.exit(0 if rows else 3)", code]
    try:
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=BLOCK_SECONDS)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{where} did not finish within {BLOCK_SECONDS} s:\n{e.stdout}\n{e.stderr}") from e
    assert done.returncode == 0, (f"{where} ({block.lang}) failed with exit {done.returncode}:\n--- stdout\n"
                                  f"{done.stdout}\n--- stderr\n{done.stderr}\n--- block\n{code}")
    return done


def test_readme_says_how_to_build_and_where_the_binary_lands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "cmake -S . -B build" in text and "ninja -C build" in text
    assert "the command is then `build/freshet`" in text
    assert 'export PATH="$PWD/build:$PATH"' in text


def test_markers_are_few_and_consistent() -> None:
    runnable = [b for b in BLOCKS if b.lang in RUNNABLE]
    skipped = [b for b in runnable if b.skip]
    assert len(runnable) >= 6
    assert len(skipped) <= MAX_SKIPS, [f"README.md:{b.line}: {b.skip}" for b in skipped]
    names = [b.name for b in BLOCKS if b.name]
    assert len(names) == len(set(names)), names
    for b in BLOCKS:
        assert not b.directives or b.lang in RUNNABLE, f"README.md:{b.line}: a marker on a ```{b.lang} block"
        if b.after:
            assert b.after in BY_NAME, f"README.md:{b.line}: after '{b.after}', which no block is named"
            assert not BY_NAME[b.after].skip, f"README.md:{b.line}: after a skipped block"
        if b.background:
            assert b.background.startswith("http://"), f"README.md:{b.line}: background needs a URL to wait for"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in RUNNABLE and not b.skip],
                         ids=lambda b: f"line{b.line}-{b.lang}")
def test_readme_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    if not os.access(BIN, os.X_OK):
        pytest.fail(f"no freshet binary at {BIN}: build it, or set FRESHET_BIN")
    folder = _folder(tmp_path / "root")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHET_")}
    env["PATH"] = f"{folder / 'build'}{os.pathsep}{env.get('PATH', '')}"
    env["FRESHET_BIN"] = str(folder / "build" / "freshet")
    port = _free_port()
    background: List[tuple] = []
    try:
        for step in _chain(block):
            if step.background:
                log = tmp_path / f"background_{step.line}.log"
                with open(log, "wb") as out:
                    proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", step.code.replace("8080", str(port))],
                                            cwd=folder, env=env, stdout=out, stderr=out, start_new_session=True)
                background.append((step, proc, log))
                _wait_until_answers(step.background.replace("8080", str(port)), proc, log)
            else:
                _run(step, folder, env, port)
    finally:
        failures = []
        for step, proc, log in reversed(background):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=SERVE_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
            if code != 0:
                failures.append(f"README.md:{step.line} exited {code} on SIGTERM:\n{log.read_text(errors='replace')}")
        assert not failures, "\n".join(failures)

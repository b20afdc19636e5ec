"""A file source whose file changed identity while `freshet run` was stopped (issue 13): no event is accepted twice.

Each case runs `freshet run --exit-at-end` on a file source (examples/fraud/fraud.yaml: a watermark of 5 s + 1 m),
changes the file as an operator or logrotate would, runs again on the same data directory, and compares the
offline `events` table (every accepted event, as its raw line) with the input lines: each accepted exactly once.
  - a copy with the same content moved over the path (`cp events.jsonl x && mv x events.jsonl`: a new inode);
  - a copy with lines appended;
  - logrotate while stopped: renamed to events.jsonl.1, appended to there, a new events.jsonl;
  - a different file (the old one deleted): refused, naming --new-events-file and --reset, then read from its start
    with --new-events-file;
  - the file rewritten with other first bytes but repeating events, under a spec with `dedup`: read from its start,
    the repeats counted once;
  - while following (`follow: true`, the run going on): a copy with lines appended moved over the path.
Before the fix the copy was read again from its start and the events within the lateness horizon were accepted
twice.
"""
from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import List

import deltalake

from run_process import start_run

ROOT = Path(__file__).resolve().parent.parent
BIN = os.environ.get("FRESHET_BIN", str(ROOT / "build" / "freshet"))
SECONDS = 120


def _lines(tmp: Path, events: int = 2000) -> List[str]:
    """Generated events, in time order with unique ids, none late or malformed."""
    out = tmp / "generated.jsonl"
    subprocess.run([BIN, "generate", "--users", "50", "--events", str(events), "--seed", "7", "--event-ids",
                    "--output", str(out)], check=True, timeout=SECONDS)
    return out.read_text().splitlines(keepends=True)


def _spec(tmp: Path, dedup: bool = False, follow: bool = False) -> Path:
    text = (ROOT / "examples" / "fraud" / "fraud.yaml").read_text()
    assert "timestamp: ts\n" in text and "source: {type: file, path: events.jsonl}" in text
    assert "checkpoint:" not in text
    if dedup:
        text = text.replace("timestamp: ts\n", "timestamp: ts\ndedup: {field: event_id, within: 1h}\n")
        # The example declares its event fields in `schema:`; the dedup id must be declared too.
        assert "\nschema:\n" in text
        text = text.replace("\nschema:\n", "\nschema:\n  event_id: string\n")
    if follow:
        text = text.replace("source: {type: file, path: events.jsonl}",
                            "source: {type: file, path: events.jsonl, follow: true}\ncheckpoint: {interval: 200ms}")
    spec = tmp / "spec.yaml"
    spec.write_text(text)
    return spec


def _first_run(tmp: Path, count: int | None = None, dedup: bool = False) -> tuple[List[str], Path, Path]:
    """The generated lines, the spec, and events.jsonl holding the first `count` lines (all by default), read once to
    its end."""
    lines = _lines(tmp)
    spec = _spec(tmp, dedup=dedup)
    events = tmp / "events.jsonl"
    _write(events, lines[:count])
    _run_ok(spec)
    return lines, spec, events


def _run(spec: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([BIN, "run", "--spec", str(spec), "--data-dir", str(spec.parent / "data"), "--port", "0",
                           "--exit-at-end", *extra], capture_output=True, text=True, timeout=SECONDS)


def _run_ok(spec: Path, *extra: str) -> str:
    done = _run(spec, *extra)
    assert done.returncode == 0, done.stderr
    return done.stderr


def _accepted(spec: Path) -> collections.Counter:
    table = deltalake.DeltaTable(str(spec.parent / "data" / "offline" / "events")).to_pandas()
    return collections.Counter(raw + "\n" for raw in table["raw"])


def _assert_each_once(spec: Path, lines: List[str]) -> None:
    accepted = _accepted(spec)
    twice = {line: n for line, n in accepted.items() if n > 1}
    assert not twice, f"{len(twice)} events accepted more than once, e.g. {next(iter(twice))}"
    assert accepted == collections.Counter(lines), (
        f"accepted {sum(accepted.values())} events, expected the {len(lines)} input lines once each")


def _write(path: Path, lines: List[str]) -> None:
    path.write_text("".join(lines))


def _replace_by_copy(events: Path, lines: List[str]) -> int:
    """`cp events.jsonl x && mv x events.jsonl`, with `lines` as the copy's content; returns the new inode."""
    copy = events.parent / "x"
    _write(copy, lines)
    old_inode = events.stat().st_ino
    os.rename(copy, events)
    assert events.stat().st_ino != old_inode
    return events.stat().st_ino


def test_a_copy_with_the_same_content_is_resumed_where_it_was(tmp_path: Path) -> None:
    lines, spec, events = _first_run(tmp_path)
    shutil.copy(events, tmp_path / "x")
    os.rename(tmp_path / "x", events)
    stderr = _run_ok(spec)
    _assert_each_once(spec, lines)
    assert "copy" in stderr and "resuming after line 2000" in stderr, stderr


def test_a_copy_with_lines_appended_goes_on_with_the_new_lines(tmp_path: Path) -> None:
    lines, spec, events = _first_run(tmp_path, 1500)
    _replace_by_copy(events, lines)
    stderr = _run_ok(spec)
    _assert_each_once(spec, lines)
    assert "resuming after line 1500" in stderr, stderr


def test_logrotate_while_stopped_finishes_the_rotated_file_then_reads_the_new_one(tmp_path: Path) -> None:
    lines, spec, events = _first_run(tmp_path, 1500)
    os.rename(events, tmp_path / "events.jsonl.1")
    with open(tmp_path / "events.jsonl.1", "a") as rotated:  # The writer had appended to it before reopening.
        rotated.write("".join(lines[1500:1700]))
    _write(events, lines[1700:])
    stderr = _run_ok(spec)
    assert "events.jsonl.1" in stderr, stderr
    _assert_each_once(spec, lines)


def test_a_different_file_is_refused_unless_said_to_be_new(tmp_path: Path) -> None:
    lines, spec, events = _first_run(tmp_path, 1000)
    events.unlink()
    _write(events, lines[1000:])

    refused = _run(spec)
    assert refused.returncode == 2, refused.stderr
    assert "--new-events-file" in refused.stderr and "freshet run --reset" in refused.stderr, refused.stderr
    assert str(events) in refused.stderr, refused.stderr
    _assert_each_once(spec, lines[:1000])  # Nothing read from it.

    stderr = _run_ok(spec, "--new-events-file")
    assert "reading it from its start as a new file" in stderr, stderr
    _assert_each_once(spec, lines)


def test_a_rewritten_file_under_dedup_is_read_again_and_repeats_count_once(tmp_path: Path) -> None:
    lines, spec, events = _first_run(tmp_path, 1500, dedup=True)
    # Rewritten: the first line dropped (other first bytes), the rest repeated, new lines after.
    _replace_by_copy(events, lines[1:])
    stderr = _run_ok(spec)
    assert "reading it from its start as a new file" in stderr, stderr
    _assert_each_once(spec, lines)


def test_following_a_copy_with_lines_appended_goes_on_after_what_was_read(tmp_path: Path) -> None:
    lines = _lines(tmp_path)
    spec = _spec(tmp_path, follow=True)
    events = tmp_path / "events.jsonl"
    _write(events, lines[:1500])
    log = tmp_path / "run.log"
    proc, _ = start_run([BIN, "run", "--spec", str(spec), "--data-dir", str(tmp_path / "data"), "--port", "0"], log)
    try:
        def committed(count: int) -> None:  # The events table is committed with each checkpoint (200 ms).
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                try:
                    if sum(_accepted(spec).values()) >= count:
                        return
                except Exception:  # noqa: BLE001 - no table yet.
                    pass
                assert proc.poll() is None, log.read_text()
                time.sleep(0.1)
            raise AssertionError(f"fewer than {count} events committed within {SECONDS} s:\n{log.read_text()}")

        committed(1500)
        _replace_by_copy(events, lines)
        committed(2000)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=SECONDS) == 0, log.read_text()
    _assert_each_once(spec, lines)
    assert "copy moved over it" in log.read_text(), log.read_text()

"""`freshet run` restores a data directory however the spec is named, and `--reset` starts one fresh (issue 13).

The file source's checkpoint position records the events file's path. It used to be the path as the spec
resolved it, so a data directory first run with `--spec spec.yaml` from the spec's folder (recorded
'ev3d.jsonl') was refused when started with the spec's absolute path, or through a symlinked folder. Now the
path is canonical, and a same file under another name is accepted.

Run by ctest (which sets FRESHET_BIN), or by hand:
    FRESHET_BIN=build/freshet .venv/bin/python -m pytest -q tests/run_restore_paths_test.py
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

BIN = os.environ.get("FRESHET_BIN")
pytestmark = pytest.mark.skipif(not BIN, reason="set FRESHET_BIN to the freshet binary")

SPEC = """name: paths
entity: user_id
timestamp: ts
watermark: {max_out_of_orderness: 5s, allowed_lateness: 1h}
source: {type: file, path: ev3d.jsonl}
serve: {port: 0}
checkpoint: {interval: 1h}
features:
  - {name: events, aggregation: count, window: {type: lifetime}}
  - {name: total, aggregation: sum, field: amount, window: {type: lifetime}}
"""

T0 = 1767268800000  # 2026-01-01T12:00:00Z


def events(first: int, count: int) -> list[str]:
    """`count` events from number `first` on; every seventh line is malformed (a dead letter)."""
    lines = []
    for i in range(first, first + count):
        if i % 7 == 3:
            lines.append('{"user_id": "u1", "ts": \n')
        else:
            lines.append(json.dumps({"user_id": f"u{i % 5}", "ts": T0 + i * 1000, "amount": i}) + "\n")
    return lines


def valid(lines: list[str]) -> int:
    return sum(1 for line in lines if line.endswith("}\n"))


def run(spec: str, data: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([BIN, "run", "--spec", spec, "--data-dir", str(data), "--exit-at-end", *extra],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def offline_raw(data: Path) -> list[str]:
    import deltalake
    table = deltalake.DeltaTable(str(data / "offline" / "events")).to_pyarrow_table(columns=["raw"])
    return [str(raw) for raw in table.column("raw").to_pylist()]


def dead_lines(data: Path) -> list[int]:
    path = data / "dead_letters" / "file.jsonl"
    return [json.loads(line)["line"] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The spec's real folder, a symlink to it, and a data directory elsewhere."""
    real = tmp_path / "specs"
    real.mkdir()
    (real / "spec.yaml").write_text(SPEC)
    link = tmp_path / "linked"
    link.symlink_to(real, target_is_directory=True)
    return real, link, tmp_path / "data"


def test_relative_then_absolute_through_a_symlink_restores(folders, tmp_path: Path) -> None:
    real, link, data = folders
    first, second = events(0, 40), events(40, 30)
    (real / "ev3d.jsonl").write_text("".join(first))

    # First run: the spec named relative to the working directory, the spec's folder.
    r = run("spec.yaml", data, real)
    assert r.returncode == 0, r.stderr
    assert "restored checkpoint" not in r.stderr

    # More events arrive; the second run names the spec by an absolute path through the symlinked folder.
    with open(real / "ev3d.jsonl", "a") as f:
        f.write("".join(second))
    r = run(str(link / "spec.yaml"), data, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "the checkpoint was reading" not in r.stderr, r.stderr
    restored = re.search(r"restored checkpoint \d+: \d+ entities, (\d+) events accepted", r.stderr)
    assert restored, r.stderr
    assert int(restored.group(1)) == valid(first), r.stderr

    # Every valid line once in the offline events table, every malformed one once in the dead letters.
    raw = offline_raw(data)
    assert len(raw) == valid(first + second)
    assert sorted(raw) == sorted(line.rstrip("\n") for line in first + second if line.endswith("}\n"))
    expected_dead = [n + 1 for n, line in enumerate(first + second) if not line.endswith("}\n")]
    assert dead_lines(data) == expected_dead

    # A third start, from yet another working directory with the real absolute path: nothing new, nothing twice.
    r = run(str(real / "spec.yaml"), data, data)
    assert r.returncode == 0, r.stderr
    assert f"{valid(first + second)} events accepted" in r.stderr, r.stderr
    assert len(offline_raw(data)) == valid(first + second)


def test_reset_moves_the_earlier_state_aside_and_starts_fresh(folders, tmp_path: Path) -> None:
    real, _, data = folders
    lines = events(0, 30)
    (real / "ev3d.jsonl").write_text("".join(lines))
    r = run("spec.yaml", data, real)
    assert r.returncode == 0, r.stderr

    # Another events file for the same data directory: refused, and the refusal says how to start fresh.
    other = tmp_path / "other"
    other.mkdir()
    (other / "spec.yaml").write_text(SPEC)
    other_lines = events(100, 20)
    (other / "ev3d.jsonl").write_text("".join(other_lines))
    r = run(str(other / "spec.yaml"), data, tmp_path)
    assert r.returncode == 2, r.stderr
    assert "the checkpoint was reading events file" in r.stderr, r.stderr
    assert "freshet run --reset" in r.stderr, r.stderr

    r = run(str(other / "spec.yaml"), data, tmp_path, "--reset")
    assert r.returncode == 0, r.stderr
    assert "restored checkpoint" not in r.stderr, r.stderr
    resets = sorted(data.glob("reset-*"))
    assert len(resets) == 1 and re.fullmatch(r"reset-\d{8}T\d{6}Z", resets[0].name), resets
    for name in ["checkpoints", "dead_letters", "offline"]:
        assert f"moved {data / name}/ to {resets[0] / name}/" in r.stderr, r.stderr
        assert (resets[0] / name).is_dir()
    # The earlier run's state is all there, moved; the fresh run has only the other file's events.
    assert len(offline_raw(resets[0])) == valid(lines)
    assert len(list((resets[0] / "checkpoints").glob("checkpoint-*.ckpt"))) >= 1
    assert len(offline_raw(data)) == valid(other_lines)
    assert dead_lines(data) == [n + 1 for n, line in enumerate(other_lines) if not line.endswith("}\n")]

    # A reset of a fresh data directory says there was nothing to move.
    r = run(str(other / "spec.yaml"), tmp_path / "empty-data", tmp_path, "--reset")
    assert r.returncode == 0, r.stderr
    assert "nothing to move" in r.stderr, r.stderr

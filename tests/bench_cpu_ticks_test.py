"""bench/cpu_ticks.sh, the CPU-time readings of bench/serve_bench.sh, under the script's `set -Eeuo pipefail`:
a process that exits while /proc is read must not fail the measurement (it made serve_bench.sh exit 1 with no
message, issue 13), and any failure of serve_bench.sh must say what failed.

Needs no freshet binary:
    .venv/bin/python -m pytest -q tests/bench_cpu_ticks_test.py
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICKS = ROOT / "bench" / "cpu_ticks.sh"
SERVE_BENCH = ROOT / "bench" / "serve_bench.sh"


def stat_line(pid: int, comm: str, utime: int, stime: int, cutime: int, cstime: int) -> str:
    # Fields after "(comm) ": state is field 3 of the line; utime, stime, cutime, cstime are fields 14-17.
    rest = ["S"] + ["0"] * 10 + [str(utime), str(stime), str(cutime), str(cstime)] + ["0"] * 5
    return f"{pid} ({comm}) " + " ".join(rest) + "\n"


def bash(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_a_process_that_vanished_while_proc_was_read_is_not_counted(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, comm, ticks in [(1, "init", (1, 2, 3, 4)), (42, "the server", (100, 0, 0, 0)),
                             (77, "a (tricky) name", (10, 20, 0, 0))]:
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "stat").write_text(stat_line(pid, comm, *ticks))
    # Gone between the glob and the read: the folder was listed, its stat is no more (cat fails on it).
    (proc / "500").mkdir()
    (proc / "500" / "stat").symlink_to(proc / "500" / "gone")
    # Exited while being read: nothing in it.
    (proc / "501").mkdir()
    (proc / "501" / "stat").write_text("")
    (proc / "stat").write_text("cpu  1 2 3 4 5 6 7 8 9 10\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    r = bash(f'set -Eeuo pipefail; source "{TICKS}"\n'
             # Assignments, as serve_bench.sh's cpu_start has: a failing substitution fails the script.
             'other=$(other_ticks 9999 42); server=$(process_ticks 42); steal=$(steal_ticks)\n'
             'echo "other=$other server=$server steal=$steal"',
             env={"proc_root": str(proc)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "other=40 server=100 steal=8", r.stdout


def test_other_ticks_never_fails_while_processes_come_and_go() -> None:
    # Short-lived processes start and exit all the time, as on the shared machine the benchmark runs on.
    churn = subprocess.Popen(["bash", "-c", "while :; do /bin/true & /bin/true & wait; done"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = bash(f'set -Eeuo pipefail; source "{TICKS}"\n'
                 'for i in $(seq 1 300); do t=$(other_ticks "$$" 0); [ "$t" -gt 0 ]; done; echo ok')
    finally:
        churn.kill()
        churn.wait()
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stdout, r.stderr)


def test_serve_bench_reads_proc_through_cpu_ticks() -> None:
    text = SERVE_BENCH.read_text()
    assert 'source "$here/bench/cpu_ticks.sh"' in text
    assert not re.search(r"cat /proc/\[0-9\]\*/stat", text), "serve_bench.sh reads /proc itself again"
    assert subprocess.run(["bash", "-n", str(SERVE_BENCH)]).returncode == 0


def test_a_failure_in_serve_bench_says_what_failed() -> None:
    # The script's own error handling (its `set` and ERR trap lines), around a failing command substitution in a
    # function, as the measurement that used to fail silently was.
    lines = SERVE_BENCH.read_text().splitlines()
    prelude = [line for line in lines if line.startswith("set -") or line.startswith("trap ") and line.endswith(" ERR")]
    assert len(prelude) == 2, prelude
    r = bash("\n".join(prelude) + "\nmeasure() { local t; t=$(false | cat); echo never; }\nmeasure\necho never\n")
    assert r.returncode != 0
    assert "never" not in r.stdout
    assert "bench/serve_bench.sh: line" in r.stderr and "failed with status 1" in r.stderr, r.stderr
    assert "(in measure)" in r.stderr, r.stderr

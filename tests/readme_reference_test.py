"""The README's spec reference is what `freshet validate --reference` prints (the parser's own key table), so the
documentation cannot drift from the parser: a key added, renamed or re-described fails here until
`scripts/readme_reference.py` rewrites the README's copy."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = os.environ.get("FRESHET_BIN", str(ROOT / "build" / "freshet"))


def _check(readme: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_reference.py"), "--check", "--bin", BIN,
                           "--readme", str(readme)], capture_output=True, text=True, timeout=60)


def test_the_readme_spec_reference_is_the_parsers(tmp_path: Path) -> None:
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")
    result = _check(ROOT / "README.md")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_stale_copy_is_caught_and_rewritten(tmp_path: Path) -> None:
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")
    stale = (ROOT / "README.md").read_text().replace("(string; required): Name of the feature set",
                                                     "(string; required): The feature set's name", 1)
    assert stale != (ROOT / "README.md").read_text()
    (tmp_path / "README.md").write_text(stale)
    result = _check(tmp_path / "README.md")
    assert result.returncode == 1 and "+- `name` (string; required): Name of the feature set" in result.stdout
    subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_reference.py"), "--bin", BIN,
                    "--readme", str(tmp_path / "README.md")], check=True, capture_output=True, timeout=60)
    assert _check(tmp_path / "README.md").returncode == 0
    assert "(string; required): Name of the feature set" in (tmp_path / "README.md").read_text()

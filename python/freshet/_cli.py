"""Finding and running the ``freshet`` command-line binary.

Offline work (training sets, skew reports) is computed by the same C++ binary that serves features live, so
that both give the same values bit for bit. This module finds that binary and runs its commands.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional, Sequence, Union

from freshet.errors import CommandNotAvailableError, FreshetError

PathLike = Union[str, "os.PathLike[str]"]

#: The environment variable naming the binary when ``binary=`` is not given.
BINARY_ENV = "FRESHET_BIN"

# python/freshet/_cli.py -> the repository root, for an editable install inside a Freshet checkout.
_REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def _repo_binary() -> Path:
    return _REPO_ROOT / "build" / "freshet"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_binary(binary: Optional[PathLike] = None) -> str:
    """Returns the path of the ``freshet`` binary to run.

    Looks, in order, at ``binary`` (a path, or a name on PATH), the ``FRESHET_BIN`` environment variable,
    ``freshet`` on PATH, and ``build/freshet`` of the Freshet checkout this package was installed from
    (``pip install -e python``). The first one given wins: a ``binary`` or ``FRESHET_BIN`` that does not
    exist is an error rather than a reason to look further.

    Raises:
        FreshetError: no binary was found; the message says how to build one or point to it.

    Example::

        >>> freshet.find_binary()            # doctest: +SKIP
        '/work/main/build/freshet'
    """
    for given, origin in ((binary, "binary="), (os.environ.get(BINARY_ENV) or None, BINARY_ENV)):
        if given is None:
            continue
        text = os.fspath(given)
        path = Path(text)
        if _is_executable(path):
            return str(path)
        on_path = shutil.which(text) if os.sep not in text else None
        if on_path:
            return on_path
        raise FreshetError(
            f"the freshet binary given by {origin} ({text!r}) does not exist or is not executable; "
            f"build it (cmake -S . -B build -G Ninja && ninja -C build freshet) or fix the path")
    on_path = shutil.which("freshet")
    if on_path:
        return on_path
    if _is_executable(_repo_binary()):
        return str(_repo_binary())
    raise FreshetError(
        "cannot find the freshet binary: pass binary='/path/to/freshet', set the FRESHET_BIN environment "
        f"variable, or put `freshet` on PATH (looked also at {_repo_binary()}; build it in the Freshet "
        "checkout with: cmake -S . -B build -G Ninja && ninja -C build freshet)")


def run(binary: str, args: Sequence[str], *, ok_codes: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
    """Runs ``binary args...`` to completion and returns it; raises FreshetError on other exit codes.

    The error message is the command's own stderr (Freshet's messages say what is wrong and how to fix it).
    """
    command = [binary, *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise FreshetError(f"cannot run {binary}: {e}") from e
    if done.returncode not in ok_codes:
        stderr = done.stderr.strip()
        name = " ".join(args[:1])
        raise FreshetError(
            f"freshet {name} failed (exit {done.returncode}): {stderr or '(no message)'}",
            exit_code=done.returncode, stderr=done.stderr)
    return done


@functools.lru_cache(maxsize=64)
def _help_text(binary: str, mtime_ns: int, command: str) -> str:
    del mtime_ns  # Part of the cache key only: a rebuilt binary is asked again.
    args = [command, "--help"] if command else ["--help"]
    done = subprocess.run([binary, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return done.stdout + done.stderr


def help_text(binary: str, command: str = "") -> str:
    """The ``--help`` text of ``freshet [command]`` (cached per binary build)."""
    try:
        mtime_ns = os.stat(binary).st_mtime_ns
    except OSError:
        mtime_ns = 0
    return _help_text(binary, mtime_ns, command)


def has_command(binary: str, command: str) -> bool:
    """Whether the binary offers the subcommand ``command`` (as listed by ``freshet --help``)."""
    for line in help_text(binary).splitlines():
        words = line.split()
        if words and words[0] == command:
            return True
    return False


def has_option(binary: str, command: str, option: str) -> bool:
    """Whether ``freshet command --help`` lists ``option`` (e.g. ``--data-dir``)."""
    pattern = re.compile(r"(^|[\s,])" + re.escape(option) + r"(?![\w-])")
    return any(pattern.search(line) for line in help_text(binary, command).splitlines())


def require_command(binary: str, command: str, purpose: str) -> None:
    """Raises CommandNotAvailableError when the binary has no ``command``."""
    if not has_command(binary, command):
        raise CommandNotAvailableError(
            f"the freshet binary {binary} has no `{command}` command, which {purpose} needs; build a newer "
            "freshet (ninja -C build freshet) or point FRESHET_BIN / binary= to one")

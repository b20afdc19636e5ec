"""What a feature spec declares, as far as the SDK needs it: entity and timestamp fields, features, offline path.

The spec is read by the ``freshet`` binary itself (``freshet validate --spec``), the same parser that
``freshet run`` and ``freshet historical`` use, so the SDK never disagrees with them about a spec and an
invalid spec is reported with the binary's ``FILE:LINE:COLUMN`` messages.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from freshet import _cli
from freshet._cli import PathLike
from freshet.errors import FreshetError

#: Aggregations whose value is a count: never null, an integer (int64 columns).
COUNT_AGGREGATIONS = frozenset({"count", "count_distinct", "approx_count_distinct"})
#: Aggregations whose value is a number that may be null (float64 columns, NaN for null).
NUMBER_AGGREGATIONS = frozenset({"sum", "mean", "min", "max", "stddev"})
#: Aggregations whose value is the text of an event field (object columns of str, None for null).
TEXT_AGGREGATIONS = frozenset({"last"})


@dataclass(frozen=True)
class FeatureInfo:
    """One feature of a spec: its name (the output column) and its aggregation (``count``, ``mean``, ...)."""

    name: str
    aggregation: str

    @property
    def dtype(self) -> str:
        """The pandas dtype the SDK gives this feature's column: ``int64``, ``float64`` or ``object``."""
        if self.aggregation in COUNT_AGGREGATIONS:
            return "int64"
        if self.aggregation in NUMBER_AGGREGATIONS:
            return "float64"
        return "object"


@dataclass(frozen=True)
class SpecInfo:
    """The parts of a feature spec the SDK uses.

    Attributes:
        path: The spec file.
        name: The spec's ``name``.
        entity: The ``entity`` field: the column of entity ids in an entity DataFrame.
        timestamp: The ``timestamp`` field: the column of the times features are asked "as of".
        features: The features, in spec order (the order of output columns).
    """

    path: Path
    name: str
    entity: str
    timestamp: str
    features: Tuple[FeatureInfo, ...]

    @property
    def feature_names(self) -> List[str]:
        """The feature names, in spec order."""
        return [f.name for f in self.features]


def load_spec(spec: PathLike, binary: Optional[PathLike] = None) -> SpecInfo:
    """Reads a spec through ``freshet validate --spec`` and returns what it declares.

    Raises:
        FileNotFoundError: there is no such file.
        FreshetError: the spec is invalid (the message lists every problem with its line and column), or
            the ``freshet`` binary cannot be found.

    Example::

        >>> info = freshet.load_spec("examples/fraud/fraud.yaml")   # doctest: +SKIP
        >>> info.entity, info.timestamp, info.feature_names[:2]
        ('user_id', 'ts', ['purchase_count_30m', 'avg_txn_amount_1h'])
    """
    path = Path(os.fspath(spec))
    if not path.is_file():
        raise FileNotFoundError(f"no spec file at {path}")
    resolved = path.resolve()
    exe = _cli.find_binary(binary)
    return _load_spec_cached(exe, str(resolved), resolved.stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _load_spec_cached(binary: str, path: str, mtime_ns: int) -> SpecInfo:
    del mtime_ns  # Part of the cache key only: an edited spec is read again.
    done = _cli.run(binary, ["validate", "--spec", path])
    return parse_validate_summary(done.stdout, Path(path))


_SUMMARY_KEY = re.compile(r"^(spec|entity|timestamp|features):\s+(.*?)\s*$")
_SUMMARY_FEATURE = re.compile(r"^\s+([A-Za-z_][A-Za-z0-9_]*)\s+([a-z_]+)\(")


def parse_validate_summary(text: str, path: Path) -> SpecInfo:
    """Parses the summary ``freshet validate --spec`` prints for a valid spec (see validate_command.cc)."""
    values: Dict[str, str] = {}
    features: List[FeatureInfo] = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = _SUMMARY_KEY.match(line)
        if not match or match.group(1) in values:
            continue
        values[match.group(1)] = match.group(2)
        if match.group(1) == "features":
            count = int(match.group(2))
            for row in lines[index + 1:index + 1 + count]:
                feature = _SUMMARY_FEATURE.match(row)
                if not feature:
                    raise FreshetError(f"cannot read the feature line {row!r} of `freshet validate`; is the "
                                       "binary newer than this SDK?")
                features.append(FeatureInfo(feature.group(1), feature.group(2)))
    missing = [key for key in ("spec", "entity", "timestamp", "features") if key not in values]
    if missing or len(features) != int(values.get("features", "0")):
        raise FreshetError(f"cannot read {', '.join(missing) or 'the features'} from the output of "
                           f"`freshet validate --spec {path}`; is the binary newer than this SDK?\n{text}")
    return SpecInfo(path=path, name=values["spec"], entity=values["entity"], timestamp=values["timestamp"],
                    features=tuple(features))


def offline_root(spec: PathLike, data_dir: Optional[PathLike] = None) -> Path:
    """The folder of a spec's offline tables (``events``, ``features``, ``feature_log``).

    That is the spec's ``offline.path`` (relative to the spec file's folder) when it sets one, otherwise
    ``<data_dir>/offline``.

    Raises:
        ValueError: the spec sets no ``offline.path`` and ``data_dir`` is None.
    """
    path = Path(os.fspath(spec))
    text = path.read_text(encoding="utf-8")
    configured = _top_level_map(text, "offline").get("path")
    if configured:
        folder = Path(configured)
        return folder if folder.is_absolute() else path.resolve().parent / folder
    if data_dir is None:
        raise ValueError(f"{path} sets no offline.path, so its offline tables are in <data dir>/offline: pass "
                         "data_dir= (the --data-dir of `freshet run`)")
    return Path(os.fspath(data_dir)) / "offline"


def _strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a # at the start or after a space, outside quotes)."""
    quote = ""
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _scalar(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return text


def _split_flow(text: str) -> List[str]:
    """Splits the inside of a YAML flow map at its top-level commas."""
    parts: List[str] = []
    depth, quote, start = 0, "", 0
    for i, c in enumerate(text):
        if quote:
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def _key_value(item: str) -> Optional[Tuple[str, str]]:
    match = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:(?:\s+(.*))?$", item, re.S)
    if not match:
        return None
    return match.group(1), (match.group(2) or "").strip()


def _top_level_map(text: str, key: str) -> Dict[str, str]:
    """The scalar entries of the top-level map ``key`` of a YAML document, in block or flow style.

    A deliberately small reader for the one thing the SDK needs without the binary (``offline.path``):
    ``offline: {path: x}`` or ``offline:`` followed by indented ``path: x``. Nested values are skipped.
    """
    lines = [_strip_comment(line).rstrip() for line in text.splitlines()]
    for index, line in enumerate(lines):
        if not line or line[0] in " \t-#":
            continue
        entry = _key_value(line)
        if entry is None or entry[0] != key:
            continue
        value = entry[1]
        result: Dict[str, str] = {}
        if value.startswith("{") and value.endswith("}"):
            for item in _split_flow(value[1:-1]):
                pair = _key_value(item)
                if pair and not pair[1].startswith(("{", "[")):
                    result[pair[0]] = _scalar(pair[1])
            return result
        if value:
            return result  # A scalar, not a map.
        indent: Optional[int] = None
        for child in lines[index + 1:]:
            if not child.strip():
                continue
            width = len(child) - len(child.lstrip())
            if width == 0:
                break
            if indent is None:
                indent = width
            if width != indent:
                continue
            pair = _key_value(child)
            if pair and pair[1] and not pair[1].startswith(("{", "[")):
                result[pair[0]] = _scalar(pair[1])
        return result
    return {}

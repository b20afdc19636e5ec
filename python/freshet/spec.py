"""What a feature spec declares, as far as the SDK needs it: entity and timestamp fields, features, offline path.

The spec is read by the ``freshet`` binary itself (``freshet validate --spec``), the same parser that
``freshet run`` and ``freshet historical`` use, so the SDK never disagrees with them about a spec and an
invalid spec is reported with the binary's ``FILE:LINE:COLUMN`` messages.
"""
from __future__ import annotations

import difflib
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from freshet import _cli
from freshet._cli import PathLike
from freshet.errors import FreshetError

#: Aggregations whose value is a count: never null, an integer (int64 columns).
COUNT_AGGREGATIONS = frozenset({"count", "count_distinct", "approx_count_distinct"})
#: Aggregations whose value is a number that may be null (float64 columns, NaN for null).
NUMBER_AGGREGATIONS = frozenset({"sum", "mean", "min", "max", "stddev", "approx_percentile"})
#: Aggregations whose value is the text of an event field (object columns of str, None for null).
TEXT_AGGREGATIONS = frozenset({"last", "first"})
#: Aggregations whose value is a list (object columns of Python lists): top_k gives [{"value": v, "count": n}, ...],
#: last_k [v, ...]. Freshet writes them as JSON text in CSV and Redis (v typed as in JSON), and as Parquet lists in
#: the offline store and historical's Parquet output (v as text, like a ``last`` value).
LIST_AGGREGATIONS = frozenset({"top_k", "last_k"})


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
        entity: The ``entity`` field: the column of entity ids in an entity DataFrame (with a composite key, the
            first key field).
        timestamp: The ``timestamp`` field: the column of the times features are asked "as of".
        features: The features, in spec order (the order of output columns).
        offline_path: The spec's ``offline.path``, resolved; None when it sets none (``<data dir>/offline``).
        request_features: The names of its ``request_features`` (computed per row after the features).
        request_params: The request parameters they read (``param.NAME``): entity-frame columns of those names
            are handed to ``freshet historical`` as the rows' parameters.
        key_fields: With a composite key (``entity: [user_id, merchant_id]``), every key field in order, each a
            column of an entity DataFrame; empty for a key of one field.
    """

    path: Path
    name: str
    entity: str
    timestamp: str
    features: Tuple[FeatureInfo, ...]
    offline_path: Optional[Path] = None
    request_features: Tuple[str, ...] = ()
    request_params: Tuple[str, ...] = ()
    key_fields: Tuple[str, ...] = ()

    @property
    def key_columns(self) -> Tuple[str, ...]:
        """The entity DataFrame columns that hold the key: every key field, or the entity field alone."""
        return self.key_fields or (self.entity,)

    @property
    def feature_names(self) -> List[str]:
        """The feature names, in spec order."""
        return [f.name for f in self.features]

    def select(self, features: Optional[Union[str, Iterable[str]]]) -> Tuple[FeatureInfo, ...]:
        """The features named by ``features`` (all of them, in spec order, for None), in the order given.

        A name may carry the spec's name as a prefix, Feast style (``"fraud:purchase_count_30m"``).

        Raises:
            ValueError: an unknown or repeated name; the message lists the valid names and the closest one.
        """
        if features is None:
            return self.features
        names = select_feature_names(features, self.feature_names, self.name, f"spec {self.path}")
        by_name = {f.name: f for f in self.features}
        return tuple(by_name[n] for n in names)


def select_feature_names(features: Union[str, Iterable[str]], valid: Sequence[str], spec_name: Optional[str],
                         where: str) -> List[str]:
    """Validates requested feature names against ``valid``; returns them without a ``spec_name:`` prefix.

    Raises:
        ValueError: an unknown name (with a did-you-mean and the valid names), a repeated one, a non-string,
            or an empty selection.
    """
    requested = [features] if isinstance(features, str) else list(features)
    if not requested:
        raise ValueError(f"features= is empty; name at least one of {list(valid)} (or leave it out for all)")
    out: List[str] = []
    for name in requested:
        if not isinstance(name, str):
            raise ValueError(f"feature names are strings, not {name!r}")
        bare = name
        if spec_name and ":" in name:
            prefix, _, rest = name.partition(":")
            if prefix == spec_name:
                bare = rest
        if bare not in valid:
            close = difflib.get_close_matches(bare, valid, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise ValueError(f"unknown feature {name!r} in features= (not in {where}){hint} Valid features: "
                             f"{', '.join(valid)}")
        if bare in out:
            raise ValueError(f"feature {bare!r} is named twice in features=")
        out.append(bare)
    return out


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
    done = _cli.run(binary, ["validate", "--spec", path, "--json"])
    return parse_validate_json(done.stdout, Path(path))


def parse_validate_json(text: str, path: Path) -> SpecInfo:
    """Reads what ``freshet validate --spec FILE --json`` prints for a valid spec."""
    try:
        doc = json.loads(text)
        features = tuple(FeatureInfo(f["name"], f["aggregation"]) for f in doc["features"])
        offline = doc.get("offline_path")
        entity = doc["entity"]
        key_fields = tuple(str(f) for f in entity) if isinstance(entity, list) else ()
        return SpecInfo(path=path, name=doc["spec"], entity=key_fields[0] if key_fields else entity,
                        timestamp=doc["timestamp"], features=features, offline_path=Path(offline) if offline else None,
                        key_fields=key_fields,
                        request_features=tuple(r["name"] for r in doc.get("request_features", [])),
                        request_params=tuple(doc.get("request_params", [])))
    except (ValueError, KeyError, TypeError) as e:
        raise FreshetError(f"cannot read the output of `freshet validate --spec {path} --json` ({e}); is the "
                           f"binary older than this SDK?\n{text}") from e


@dataclass(frozen=True)
class SourceInfo:
    """A spec's ``source``: its type (``file``, ``http``, ``kafka``) and, for a file, its resolved path."""

    type: str
    path: Optional[Path] = None


def spec_source(info: SpecInfo, binary: str) -> Optional[SourceInfo]:
    """The spec's ``source`` as ``freshet validate --spec`` describes it; None when it has none."""
    return _spec_source_cached(binary, str(info.path), info.path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _spec_source_cached(binary: str, path: str, mtime_ns: int) -> Optional[SourceInfo]:
    del mtime_ns
    done = _cli.run(binary, ["validate", "--spec", path])
    # "source:    <type> <path>[ (follow)]" (src/cli/validate_command.cc).
    for line in done.stdout.splitlines():
        if line.startswith("source:"):
            rest = line[len("source:"):].strip()
            kind, _, where = rest.partition(" ")
            if where.endswith(" (follow)"):
                where = where[:-len(" (follow)")]
            return SourceInfo(kind, Path(where) if kind == "file" and where else None)
    return None


def offline_root(spec: PathLike, data_dir: Optional[PathLike] = None, binary: Optional[PathLike] = None) -> Path:
    """The folder of a spec's offline tables (``events``, ``features``, ``feature_log``).

    That is the spec's ``offline.path`` (relative to the spec file's folder) when it sets one, otherwise
    ``<data_dir>/offline``.

    Raises:
        ValueError: the spec sets no ``offline.path`` and ``data_dir`` is None.
    """
    info = load_spec(spec, binary)
    if info.offline_path is not None:
        return info.offline_path
    if data_dir is None:
        raise ValueError(f"{info.path} sets no offline.path, so its offline tables are in <data dir>/offline: pass "
                         "data_dir= (the --data-dir of `freshet run`)")
    return Path(os.fspath(data_dir)) / "offline"

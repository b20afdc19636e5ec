"""Point-in-time correct training sets: feature values "as of" each row of an entity DataFrame."""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from freshet import _cli, _convert
from freshet._cli import PathLike
from freshet.errors import CommandNotAvailableError, FreshetError
from freshet.spec import LIST_AGGREGATIONS, FeatureInfo, SpecInfo, load_spec, spec_source

#: Events as get_historical_features takes them: a JSON-lines file, a DataFrame of events, or an iterable of
#: events (mappings, or JSON text lines).
Events = Union[PathLike, pd.DataFrame, Iterable[Union[Mapping[str, Any], str, bytes]]]

_ROW_ID = "_freshet_row"


def get_historical_features(
    spec: PathLike,
    entity_df: pd.DataFrame,
    events: Optional[Events] = None,
    data_dir: Optional[PathLike] = None,
    binary: Optional[PathLike] = None,
    *,
    features: Optional[Union[str, Sequence[str]]] = None,
    output_format: Literal["auto", "csv", "parquet"] = "auto",
) -> pd.DataFrame:
    """Returns ``entity_df`` with one column per feature appended, each value as of its row's time.

    Feast's ``store.get_historical_features(entity_df, features=[...]).to_df()``.

    The values are computed by ``freshet historical``, the same operators ``freshet run`` serves from, so a
    training set built here matches what the model sees live. For each row, only events of the row's entity
    with an event time at or before the row's time count (and that were not late by the spec's watermark):
    no value leaks from the future.

    Args:
        spec: The feature spec (YAML file).
        entity_df: The rows to compute features for. Must have the spec's ``entity`` column (string or
            integer ids) and ``timestamp`` column: datetime64 (tz-aware, or naive meaning UTC), integer epoch
            milliseconds, or RFC 3339 text. Other columns (labels, ...) are kept as they are.
        events: The events: a JSON-lines file, a DataFrame with one event per row (a missing value leaves
            the field out of that event; datetimes become epoch ms), or an iterable of event dicts or
            JSON text lines. None: with ``data_dir``, the offline events table that ``freshet run`` wrote
            under it (needs a ``freshet historical`` with ``--data-dir``); without, the spec's own events:
            its ``offline.path`` events table when it sets one and the table exists, else the file of its
            ``source: {type: file, path: ...}``.
        data_dir: The ``--data-dir`` of ``freshet run``; used only when ``events`` is None.
        binary: The ``freshet`` binary; default: see :func:`freshet.find_binary`.
        features: The features to compute, by name (``"purchase_count_30m"``, or Feast style with the spec's
            name: ``"fraud:purchase_count_30m"``), in the order their columns should have; default: all, in
            spec order. An unknown name raises ValueError naming the valid ones.
        output_format: How the CLI hands the values back: ``csv``, ``parquet`` (typed, and tells an empty
            string from null in ``last`` features), or ``auto``: Parquet when the binary supports it.

    Returns:
        A new DataFrame: ``entity_df``'s columns, index, row order and dtypes unchanged, then one column per
        selected feature (all in spec order by default): int64 for counts (count, count_distinct, approx_count_distinct), float64 with
        NaN for null for sum, mean, min, max, stddev, approx_percentile, and object (str or None) for ``last`` and
        ``first``. With the default ``features``, the spec's ``request_features`` follow, each computed from the
        row's feature values and its ``param.NAME`` parameters, read from ``entity_df``'s column ``NAME``
        (missing or NaN: null), typed by their values (int64, float64, bool or object).

    Raises:
        ValueError: ``entity_df`` lacks the entity or timestamp column, already has a column named like a
            selected feature, or holds an id or time that cannot be read (the message names the row);
            ``features`` names an unknown feature.
        FreshetError: the spec is invalid, the binary is missing, or ``freshet historical`` failed.

    Example::

        >>> rows = pd.DataFrame({"user_id": ["u1", "u2"],
        ...                      "ts": pd.to_datetime(["2026-01-01 12:00", "2026-01-01 18:00"], utc=True),
        ...                      "label": [0, 1]})
        >>> train = freshet.get_historical_features("examples/fraud/fraud.yaml", rows,
        ...                                         events="examples/fraud/events.jsonl")  # doctest: +SKIP
        >>> list(train.columns)                                                            # doctest: +SKIP
        ['user_id', 'ts', 'label', 'purchase_count_30m', 'avg_txn_amount_1h', ...]
    """
    exe = _cli.find_binary(binary)
    info = load_spec(spec, exe)
    selected = info.select(features)
    _check_entity_frame(entity_df, info, selected)
    result = entity_df.copy()
    if len(entity_df) == 0:
        for feature in selected:
            result[feature.name] = pd.Series([], index=entity_df.index, dtype=feature.dtype)
        return result
    keys = [_convert.entities_to_text(entity_df[column]) for column in info.key_columns]
    times = _convert.times_to_epoch_ms(entity_df[info.timestamp])
    row_id = _row_id_column(info)

    with tempfile.TemporaryDirectory(prefix="freshet-historical-") as tmp:
        folder = Path(tmp)
        rows_path = folder / "entities.csv"
        # The request features' parameters (param.NAME) are the entity rows' columns NAME, when entity_df has them.
        params = [p for p in info.request_params
                  if p in entity_df.columns and p not in (*info.key_columns, info.timestamp)]
        param_texts = [[_param_text(v) for v in entity_df[p].tolist()] for p in params]
        with open(rows_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow([*info.key_columns, info.timestamp, row_id, *params])
            writer.writerows(zip(*keys, times.tolist(), range(len(entity_df)), *param_texts))
        use_parquet = output_format == "parquet" or (
            output_format == "auto" and "parquet" in _cli.help_text(exe, "historical").lower())
        output_path = folder / ("features.parquet" if use_parquet else "features.csv")
        args = ["historical", "--spec", str(info.path), "--entities", str(rows_path), "--output", str(output_path),
                "--no-progress"]
        args += _events_args(exe, events, data_dir, folder, info)
        _cli.run(exe, args)
        if use_parquet:
            values = _read_parquet(output_path, info, row_id, len(entity_df))
        else:
            values = _read_csv(output_path, info, row_id, len(entity_df))
    for feature in selected:
        result[feature.name] = values[feature.name].to_numpy()
    if features is None:
        for name in info.request_features:
            result[name] = values[name].to_numpy()
    return result


def _param_text(value: Any) -> str:
    """A request parameter's cell as `freshet historical` reads it: JSON-like text, empty for null."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _check_entity_frame(entity_df: pd.DataFrame, info: SpecInfo, selected: Tuple[FeatureInfo, ...]) -> None:
    if not isinstance(entity_df, pd.DataFrame):
        raise ValueError(f"entity_df must be a pandas DataFrame, not {type(entity_df).__name__}")
    roles = [(column, "entity key" if info.key_fields else "entity") for column in info.key_columns]
    for column, role in (*roles, (info.timestamp, "timestamp")):
        matches = int((entity_df.columns == column).sum())
        if matches == 0:
            raise ValueError(
                f"entity_df has no column {column!r}, the {role} field of {info.path}; it has "
                f"{list(entity_df.columns)}. Rename your column, e.g. entity_df.rename(columns={{'...': {column!r}}})")
        if matches > 1:
            raise ValueError(f"entity_df has {matches} columns named {column!r}; keep one")
    clashes = [f.name for f in selected if f.name in entity_df.columns]
    if clashes:
        raise ValueError(f"entity_df already has columns named like features of {info.path}: {clashes}; drop or "
                         "rename them first (the feature values are added as new columns)")


def _row_id_column(info: SpecInfo) -> str:
    taken = {*info.key_columns, info.timestamp, *info.feature_names}
    name = _ROW_ID
    while name in taken:
        name += "_"
    return name


def _events_args(binary: str, events: Optional[Events], data_dir: Optional[PathLike], folder: Path,
                 info: SpecInfo) -> List[str]:
    if events is None and data_dir is None:
        return _spec_events_args(binary, info)
    if events is None:
        if not _cli.has_option(binary, "historical", "--data-dir"):
            raise CommandNotAvailableError(
                f"the freshet binary {binary} cannot read the offline events table (`freshet historical` has no "
                "--data-dir); pass events= (a JSON-lines file), or build a newer freshet")
        return ["--data-dir", os.fspath(data_dir)]
    if isinstance(events, (str, os.PathLike)):
        path = Path(os.fspath(events))
        if not path.is_file():
            raise FileNotFoundError(f"no events file at {path}")
        return ["--events", str(path)]
    path = folder / "events.jsonl"
    if isinstance(events, pd.DataFrame):
        if info.timestamp in events.columns:
            column = events[info.timestamp]
            if pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
                _convert.check_ms_values(column.dropna().to_numpy(), f"events column {info.timestamp!r}",
                                         stacklevel=5)
        events = _frame_events(events)
    suspicious, example, count = 0, None, 0
    with open(path, "wb") as f:
        for event in events:
            if isinstance(event, bytes):
                line = event.rstrip(b"\r\n")
            elif isinstance(event, str):
                line = event.rstrip("\r\n").encode("utf-8")
            else:
                if isinstance(event, Mapping) and _convert.looks_like_seconds(event.get(info.timestamp)):
                    suspicious += 1
                    example = event.get(info.timestamp) if example is None else example
                line = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            count += 1
            f.write(line + b"\n")
    if suspicious:
        _convert.warn_seconds(f"events field {info.timestamp!r}", example, suspicious, count, stacklevel=4)
    return ["--events", str(path)]


def _spec_events_args(binary: str, info: SpecInfo) -> List[str]:
    """No events and no data_dir: the spec's offline events table (offline.path), or its file source."""
    if info.offline_path is not None and (info.offline_path / "events" / "_delta_log").is_dir():
        if not _cli.has_option(binary, "historical", "--data-dir"):
            raise CommandNotAvailableError(
                f"the freshet binary {binary} cannot read the offline events table (`freshet historical` has no "
                "--data-dir); pass events= (a JSON-lines file), or build a newer freshet")
        return []  # `freshet historical` without --events reads the spec's offline.path.
    source = spec_source(info, binary)
    if source is not None and source.type == "file" and source.path is not None:
        if not source.path.is_file():
            raise FileNotFoundError(
                f"no events file at {source.path} (the file source of {info.path}); create it (e.g. `freshet "
                "generate --output ...`), or pass events= (a JSON-lines file, a DataFrame or a list of events) "
                "or data_dir= (the --data-dir of `freshet run`)")
        return ["--events", str(source.path)]
    kind = f"its source is {source.type}" if source is not None else "it has no source"
    where = (f"its offline.path events table ({info.offline_path / 'events'}) does not exist yet"
             if info.offline_path is not None else "it sets no offline.path")
    raise ValueError(f"give the events (a JSON-lines file, a DataFrame or a list of events), or data_dir= (the "
                     f"--data-dir of `freshet run`) to read its offline events table: {info.path} names no events "
                     f"file ({kind}, and {where})")


def _frame_events(frame: pd.DataFrame) -> Iterable[Mapping[str, Any]]:
    """The rows of a DataFrame as events: missing values (None, NaN, NaT) leave the field out, datetimes
    become epoch milliseconds, numpy scalars Python ones (floats keep every bit)."""
    columns = [str(c) for c in frame.columns]
    for values in frame.itertuples(index=False, name=None):
        event = {}
        for column, value in zip(columns, values):
            if value is None or value is pd.NaT or value is pd.NA:
                continue
            if isinstance(value, float) and value != value:  # NaN
                continue
            if isinstance(value, (pd.Timestamp, np.datetime64)):
                value = _convert.time_to_request(value)
            elif isinstance(value, np.generic):
                value = value.item()
            event[column] = value
        yield event


def _check_rows(ids: "np.ndarray[Any, Any]", count: int, output: Path) -> None:
    if len(ids) != count or not np.array_equal(ids, np.arange(count)):
        raise FreshetError(f"freshet historical returned {len(ids)} rows in an unexpected order for {count} "
                           f"entity rows ({output}); this is a bug, please report it")


def _read_csv(path: Path, info: SpecInfo, row_id: str, count: int) -> pd.DataFrame:
    text = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
    missing = [name for name in [row_id, *info.feature_names] if name not in text.columns]
    if missing:
        raise FreshetError(f"the output of freshet historical lacks the columns {missing}")
    _check_rows(text[row_id].astype(np.int64).to_numpy(), count, path)
    frame = pd.DataFrame({f.name: _convert.feature_column(text[f.name], f.aggregation) for f in info.features})
    for name in info.request_features:
        frame[name] = _request_column_from_text(text[name])
    return frame


def _request_column_from_text(column: pd.Series) -> pd.Series:
    """A request feature's CSV column: numbers when every non-empty cell is one, else text; empty is null."""
    present = column[column != ""]
    numbers = pd.to_numeric(present, errors="coerce")
    if len(present) > 0 and not numbers.isna().any():
        return pd.to_numeric(column.where(column != ""), errors="coerce")
    if len(present) > 0 and present.isin(["true", "false"]).all():
        return column.map({"true": True, "false": False, "": None}).astype(object)
    return column.astype(object).where(column != "", None)


def _read_parquet(path: Path, info: SpecInfo, row_id: str, count: int) -> pd.DataFrame:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    missing = [name for name in [row_id, *info.feature_names] if name not in table.column_names]
    if missing:
        raise FreshetError(f"the output of freshet historical lacks the columns {missing}")
    ids = np.asarray(table.column(row_id).to_pandas().astype(np.int64))
    _check_rows(ids, count, path)
    columns = {}
    for feature in info.features:
        values = table.column(feature.name).to_pandas()
        if feature.dtype == "int64":
            columns[feature.name] = values.astype(np.int64)
        elif feature.dtype == "float64":
            columns[feature.name] = values.astype(np.float64)
        elif feature.aggregation in LIST_AGGREGATIONS:  # Parquet lists: Python lists, their values as text.
            columns[feature.name] = pd.Series(table.column(feature.name).to_pylist(), dtype=object)
        else:
            columns[feature.name] = values.astype(object).where(values.notna(), None)
    for name in info.request_features:
        columns[name] = table.column(name).to_pandas()
    return pd.DataFrame(columns)

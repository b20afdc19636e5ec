"""Conversions between pandas/Python values and what Freshet reads: entity ids, times, feature values."""
from __future__ import annotations

import datetime as dt
import json
import math
import numbers
import warnings
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np
import pandas as pd

from freshet.spec import COUNT_AGGREGATIONS, LIST_AGGREGATIONS, NUMBER_AGGREGATIONS, TEXT_AGGREGATIONS

#: A point in time as the SDK accepts it: epoch milliseconds, RFC 3339 text, or a datetime (naive = UTC).
TimeLike = Union[int, str, dt.datetime, pd.Timestamp, np.datetime64]


class TimestampUnitWarning(UserWarning):
    """An integer time looks like epoch seconds, but Freshet reads integer times as epoch milliseconds.

    Raised as a warning (the value is used as milliseconds, as given); make it an error with
    ``warnings.simplefilter("error", freshet.TimestampUnitWarning)``.
    """


#: Integers in [SECONDS_LOW, SECONDS_HIGH) are taken for epoch seconds given by mistake: as seconds they are
#: 1973-03-03 .. 5138-11-16, as milliseconds only 1970-01-02 .. 1973-03-03. Smaller values (the first day of
#: 1970 in milliseconds, as tests use) are not warned about.
SECONDS_LOW = 100_000_000
SECONDS_HIGH = 100_000_000_000


def _utc_text(ms: float) -> str:
    try:
        return pd.Timestamp(int(ms), unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    except (ValueError, OverflowError):
        return "out of range"


def looks_like_seconds(value: Any) -> bool:
    """Whether a number given as epoch milliseconds is more likely epoch seconds (see SECONDS_LOW)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return False
    number = float(value)
    return math.isfinite(number) and SECONDS_LOW <= number < SECONDS_HIGH


def warn_seconds(what: str, example: Any, count: int = 1, total: int = 1, stacklevel: int = 3) -> None:
    """Warns (TimestampUnitWarning) that ``what`` holds times that look like epoch seconds."""
    number = float(example)
    share = f"{count} of {total} values, e.g. " if total > 1 else ""
    warnings.warn(
        f"{what}: {share}{example!r} looks like epoch seconds ({_utc_text(number * 1000)} as seconds), but Freshet "
        f"reads integer times as epoch milliseconds, so it was used as {_utc_text(number)}. Pass milliseconds "
        f"(seconds * 1000, e.g. {int(number * 1000)}), a datetime / pd.Timestamp, or RFC 3339 text such as "
        f"'{_utc_text(number * 1000)}'.", TimestampUnitWarning, stacklevel=stacklevel)


def check_ms_values(values: "np.ndarray[Any, Any]", what: str, stacklevel: int = 5) -> None:
    """Warns when integer epoch-ms values look like epoch seconds (numeric arrays, or objects of numbers)."""
    if len(values) == 0:
        return
    if values.dtype.kind in "iuf":
        numbers_ = values.astype(np.float64)
        mask = np.isfinite(numbers_) & (numbers_ >= SECONDS_LOW) & (numbers_ < SECONDS_HIGH)
    else:
        mask = np.array([looks_like_seconds(v) for v in values], dtype=bool)
    count = int(mask.sum())
    if count:
        example = values[int(np.flatnonzero(mask)[0])]
        warn_seconds(what, example.item() if isinstance(example, np.generic) else example, count, len(values),
                     stacklevel=stacklevel)


def time_to_request(at: Optional[TimeLike], what: str = "at") -> Optional[Union[int, str]]:
    """``at`` as the serving API and the CLI take it: epoch ms (int) or RFC 3339 text; None stays None.

    An integer that looks like epoch seconds is used as given, with a TimestampUnitWarning.
    """
    if at is None:
        return None
    if isinstance(at, (bool, np.bool_)):
        raise ValueError(f"a time must be epoch milliseconds, RFC 3339 text or a datetime, not {at!r}")
    if isinstance(at, (int, np.integer)):
        if looks_like_seconds(at):
            warn_seconds(f"{what}={int(at)}", int(at), stacklevel=4)
        return int(at)
    if isinstance(at, (float, np.floating)):
        raise ValueError(f"{what}={at!r}: a time must be integer epoch milliseconds, RFC 3339 text or a datetime, "
                         "not a float (time.time() gives seconds: pass int(time.time() * 1000))")
    if isinstance(at, str):
        return at
    if isinstance(at, (dt.datetime, pd.Timestamp, np.datetime64)):
        stamp = pd.Timestamp(at)
        if pd.isna(stamp):
            raise ValueError("a time must not be NaT")
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        return int(stamp.value // 1_000_000)  # Floor to the millisecond: events at or before it count.
    raise ValueError(f"a time must be epoch milliseconds, RFC 3339 text or a datetime, not {type(at).__name__}")


def _first_bad(mask: "np.ndarray[Any, np.dtype[np.bool_]]", series: "pd.Series[Any]") -> str:
    position = int(np.flatnonzero(mask)[0])
    return f"row {position} (index {series.index[position]!r}): {series.iloc[position]!r}"


def times_to_epoch_ms(series: "pd.Series[Any]") -> "np.ndarray[Any, np.dtype[np.int64]]":
    """Epoch milliseconds (floored) of a column of times.

    Accepts datetime64 columns (tz-aware, or naive meaning UTC), integer columns of epoch milliseconds
    (floats too when every value is a whole number), and text or object columns of RFC 3339 / ISO 8601
    times or datetime objects (text without an offset means UTC).

    Raises:
        ValueError: a value is missing or cannot be read as a time; the message names the first such row.
    """
    name = series.name
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(object)
    missing = series.isna().to_numpy()
    if missing.any():
        raise ValueError(f"column {name!r} has a missing time at {_first_bad(missing, series)}; every entity row "
                         "needs the time its features are asked as of")
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        if isinstance(series.dtype, pd.DatetimeTZDtype):
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)
        return series.to_numpy().astype("datetime64[ms]").astype(np.int64)
    if pd.api.types.is_bool_dtype(series.dtype):
        raise ValueError(f"column {name!r} holds booleans, not times")
    if pd.api.types.is_integer_dtype(series.dtype):
        ints = series.to_numpy(dtype=np.int64)
        check_ms_values(ints, f"column {name!r}")
        return ints
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values) | (values != np.floor(values)) | (np.abs(values) >= 2.0**63)
        if bad.any():
            raise ValueError(f"column {name!r} must hold whole epoch milliseconds; {_first_bad(bad, series)}")
        check_ms_values(values, f"column {name!r}")
        return values.astype(np.int64)
    # Text, datetime objects, or a mix.
    objects = series.to_numpy(dtype=object)
    numeric = np.array([isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in objects], dtype=bool)
    if numeric.all():
        ints = np.array([int(v) for v in objects], dtype=np.int64)
        check_ms_values(ints, f"column {name!r}")
        return ints
    if numeric.any():
        raise ValueError(f"column {name!r} mixes integers with other values; {_first_bad(numeric, series)} is "
                         "an integer but other rows are not")
    text = np.array([isinstance(v, str) for v in objects], dtype=bool)
    if not text.all():
        return _objects_to_epoch_ms(series, objects)
    # Text with and without an offset is read in two groups: pandas would otherwise read the ones without
    # in the offset of the others. RFC 3339 allows 't' and 'z'; pandas reads only 'T' and 'Z'.
    texts = pd.Series(objects, dtype=object).str.strip().str.upper()  # Indexed by position.
    has_offset = texts.str.contains(_OFFSET, regex=True).to_numpy(dtype=bool)
    out = np.empty(len(objects), dtype=np.int64)
    for group in (has_offset, ~has_offset):
        if group.any():
            out[group] = _parse_text(texts[group], series)
    return out


_OFFSET = r"(?:Z|[+-][0-9][0-9](?::?[0-9][0-9])?)$"


def _parse_text(texts: "pd.Series[Any]", whole: "pd.Series[Any]") -> "np.ndarray[Any, np.dtype[np.int64]]":
    """Epoch ms of RFC 3339 / ISO 8601 texts (naive: UTC); ``texts`` is indexed by position in ``whole``."""
    try:
        parsed = pd.to_datetime(texts, utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError) as e:
        bad = pd.to_datetime(texts, utc=True, format="ISO8601", errors="coerce").isna().to_numpy()
        position = int(texts.index[bad][0] if bad.any() else texts.index[0])
        reason = (str(e).splitlines()[0] if str(e) else type(e).__name__).split(". You might")[0]
        raise ValueError(f"column {whole.name!r} has a value that is not an RFC 3339 time at row {position} (index "
                         f"{whole.index[position]!r}): {whole.iloc[position]!r} ({reason}); use e.g. "
                         "'2026-01-01T12:00:00Z', epoch milliseconds or datetime64 values") from e
    values: "np.ndarray[Any, np.dtype[np.int64]]" = (
        parsed.dt.tz_localize(None).to_numpy().astype("datetime64[ms]").astype(np.int64))
    return values


def _objects_to_epoch_ms(series: "pd.Series[Any]", objects: "np.ndarray[Any, Any]") -> "np.ndarray[Any, np.dtype[np.int64]]":
    """One value at a time: datetime objects (naive = UTC), Timestamps, numpy datetimes, and text."""
    out = np.empty(len(objects), dtype=np.int64)
    for position, value in enumerate(objects):
        if isinstance(value, str):
            text = pd.Series([value.strip().upper()], index=[position], dtype=object)
            out[position] = _parse_text(text, series)[0]
            continue
        try:
            converted = time_to_request(value, what=f"column {series.name!r} row {position}")
        except ValueError as e:
            raise ValueError(f"column {series.name!r} row {position} (index {series.index[position]!r}): {e}") from e
        assert isinstance(converted, int)  # Not None (no missing values here) and not text (handled above).
        out[position] = converted
    return out


def entities_to_text(series: "pd.Series[Any]") -> List[str]:
    """Entity ids as the text Freshet keys them by: strings as they are, integers in decimal.

    Whole-number floats (an integer column that pandas widened) are taken as integers.

    Raises:
        ValueError: an id is missing, empty, or neither a string nor an integer.
    """
    name = series.name
    out: List[str] = []
    for position, value in enumerate(series.to_numpy(dtype=object)):
        text = entity_text(value)
        if text is None:
            raise ValueError(f"column {name!r} row {position} (index {series.index[position]!r}) holds {value!r}; "
                             "entity ids are non-empty strings or integers")
        out.append(text)
    return out


def entity_text(value: Any) -> Optional[str]:
    """The text of one entity id, or None when it is not a valid one."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, (bool, np.bool_)) or value is None:
        return None
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isfinite(number) and number == math.floor(number) and abs(number) < 2.0**63:
            return str(int(number))
    return None


def feature_column(texts: "pd.Series[Any]", aggregation: str) -> "pd.Series[Any]":
    """A feature column from the CSV text of ``freshet historical`` (empty text: null), typed by aggregation.

    Counts become int64, numeric aggregations float64 (NaN for null), ``last`` object (str, None for null).
    The CSV cannot tell an empty string from null, so ``last`` of an empty string reads as None.
    """
    values = texts.to_numpy(dtype=object)
    if aggregation in COUNT_AGGREGATIONS:
        return pd.Series(values.astype(np.int64), index=texts.index, name=texts.name)
    if aggregation in NUMBER_AGGREGATIONS:
        numbers_text = np.where(values == "", "nan", values).astype(str)
        return pd.Series(numbers_text.astype(np.float64), index=texts.index, name=texts.name)
    if aggregation in LIST_AGGREGATIONS:  # The list's JSON text.
        return pd.Series([json.loads(v) for v in values], index=texts.index, name=texts.name, dtype=object)
    return pd.Series([None if v == "" else v for v in values], index=texts.index, name=texts.name, dtype=object)


class JsonFloat(float):
    """A float read from JSON that keeps its text, so ``last`` values can be shown as Freshet writes them."""

    text: str

    def __new__(cls, text: str) -> "JsonFloat":
        value = super().__new__(cls, text)
        value.text = text
        return value


def json_value_text(value: Any) -> Optional[str]:
    """A ``last`` value from the JSON API as the text ``freshet historical`` writes for it in CSV.

    The server writes a double as its shortest round-trip text, with ``.0`` appended when that text has no
    ``.`` or exponent; the CSV writer does not append it. Floats parsed as JsonFloat keep that text.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = value.text if isinstance(value, JsonFloat) else repr(value)
        return text[:-2] if text.endswith(".0") and "e" not in text else text
    return str(value)


def typed_frame(keys: List[Any], rows: List[Mapping[str, Any]], features: List[str], aggregations: Dict[str, str],
                index_name: Union[str, List[str]]) -> pd.DataFrame:
    """A frame of online feature values with the same column dtypes as ``get_historical_features``.

    One row per key, in the order given (a key may repeat); ``rows[i]`` holds the values of ``keys[i]``. With a
    list of index names (a composite entity key) the keys are tuples and the index a MultiIndex.
    """
    columns: Dict[str, Any] = {}
    for name in features:
        raw = [row.get(name) for row in rows]
        aggregation = aggregations.get(name, "")
        if aggregation in COUNT_AGGREGATIONS:
            columns[name] = np.array(raw, dtype=np.int64)
        elif aggregation in NUMBER_AGGREGATIONS:
            columns[name] = np.array([math.nan if v is None else float(v) for v in raw], dtype=np.float64)
        elif aggregation in TEXT_AGGREGATIONS:
            columns[name] = np.array([json_value_text(v) for v in raw], dtype=object)
        else:
            columns[name] = np.array(raw, dtype=object)
    if isinstance(index_name, list):
        index: pd.Index = pd.MultiIndex.from_tuples(keys, names=index_name) if keys else pd.MultiIndex.from_tuples(
            [], names=index_name)
    else:
        index = pd.Index(keys, name=index_name, dtype=object)
    return pd.DataFrame(columns, index=index)

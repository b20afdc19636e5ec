"""Training/serving skew: what the serving API answered, compared with the offline recomputation."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

from freshet import _cli, _convert
from freshet._cli import PathLike
from freshet._convert import TimeLike
from freshet.errors import FreshetError

#: The columns of a skew report, one row per feature (the feature name is the index).
SKEW_COLUMNS = ["compared", "exact", "match_rate", "mismatch_rate", "missing", "extra", "mean_abs_diff",
                "max_abs_diff", "psi", "breached"]
_INT_COLUMNS = ("compared", "exact", "missing", "extra")
_FLOAT_COLUMNS = ("match_rate", "mismatch_rate", "mean_abs_diff", "max_abs_diff", "psi")


def skew_report(
    spec: PathLike,
    since: Optional[TimeLike] = None,
    until: Optional[TimeLike] = None,
    data_dir: Optional[PathLike] = None,
    binary: Optional[PathLike] = None,
) -> pd.DataFrame:
    """Compares logged online answers with the offline recomputation, per feature (``freshet skew``).

    ``freshet run`` logs what its serving API answered (the ``feature_log`` offline table) and keeps every
    accepted event (the ``events`` table); ``freshet skew`` recomputes each logged answer from the events,
    as of the same time, and counts how often they differ.

    Args:
        spec: The feature spec (YAML file) of the pipeline.
        since, until: Only answers as of times in [since, until) (epoch ms, RFC 3339 text or datetimes;
            naive = UTC). ``freshet skew`` defaults ``until`` to the newest event time: answers as of later
            times cannot be fully recomputed yet (pass a later ``until`` once no more events can arrive).
        data_dir: The ``--data-dir`` of ``freshet run`` (not needed when the spec sets ``offline.path``).
        binary: The ``freshet`` binary; default: see :func:`freshet.find_binary`.

    Returns:
        A DataFrame indexed by feature (spec order) with the columns ``compared`` (answers that logged the
        feature), ``exact`` (served and recomputed agree: both null, equal, or doubles within 1e-9
        relative), ``match_rate``, ``mismatch_rate`` (1 - exact / compared), ``missing`` (served null, the
        recomputation has a value), ``extra`` (served a value, the recomputation has none),
        ``mean_abs_diff`` and ``max_abs_diff`` (over answers where both are numbers), ``psi`` (population
        stability index of served against recomputed numbers; NaN for strings or without numbers) and
        ``breached`` (mismatch rate above the spec's ``skew.max_mismatch_rate``).
        ``report.attrs`` holds the report's ``since`` and ``until`` (epoch ms or None, as the report gives
        them), ``answers`` (compared), ``not_exact_answers`` (answers the server marked ``"exact": false``,
        not compared), ``max_mismatch_rate`` and ``breached`` (the names of the breached features).
        A breach is a finding, not an error: nothing is raised for it.

    Raises:
        CommandNotAvailableError: the binary has no ``skew`` command.
        FreshetError: ``freshet skew`` failed (its message is in the error).

    Example::

        >>> report = freshet.skew_report("live.yaml", data_dir="freshet-data")     # doctest: +SKIP
        >>> report[["compared", "mismatch_rate", "breached"]]
                            compared  mismatch_rate  breached
        feature
        purchase_count_30m       812            0.0     False
        ...
    """
    exe = _cli.find_binary(binary)
    _cli.require_command(exe, "skew", "skew_report")
    args = ["skew", "--spec", os.fspath(spec), "--json"]
    if data_dir is not None:
        args += ["--data-dir", os.fspath(data_dir)]
    for flag, value in (("--since", since), ("--until", until)):
        converted = _convert.time_to_request(value, what=flag.lstrip("-"))
        if converted is not None:
            args += [flag, str(converted)]
    # Exit code 1 means a threshold was crossed: the report is still the answer.
    done = _cli.run(exe, args, ok_codes=(0, 1))
    try:
        report = json.loads(done.stdout)
    except ValueError as e:
        raise FreshetError(f"freshet skew (exit {done.returncode}) printed no JSON report: "
                           f"{done.stderr.strip() or done.stdout[:200]!r}", exit_code=done.returncode,
                           stderr=done.stderr) from e
    return skew_frame(report)


def skew_frame(report: Dict[str, Any]) -> pd.DataFrame:
    """The DataFrame of a ``freshet skew --json`` report (see :func:`skew_report`)."""
    if not isinstance(report, dict) or not isinstance(report.get("features"), list):
        raise FreshetError(f"the skew report has no 'features' list: {str(report)[:200]}")
    rows: List[Dict[str, Any]] = report["features"]
    frame = pd.DataFrame(
        {column: [row.get(column) for row in rows] for column in SKEW_COLUMNS},
        index=pd.Index([str(row.get("feature")) for row in rows], name="feature", dtype=object))
    for column in _INT_COLUMNS:
        values = frame[column]
        frame[column] = values.astype(np.int64) if values.notna().all() else values.astype("Int64")
    for column in _FLOAT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(np.float64)
    frame["breached"] = np.array([bool(value) for value in frame["breached"]], dtype=bool)
    for key in ("since", "until", "answers", "not_exact_answers", "max_mismatch_rate", "breached"):
        frame.attrs[key] = report.get(key)
    return frame

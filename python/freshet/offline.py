"""Reading the offline tables ``freshet run`` writes (Delta Lake tables of Parquet files)."""
from __future__ import annotations

from typing import List, Literal, Optional

import pandas as pd

from freshet._cli import PathLike
from freshet.spec import offline_root

#: The offline tables: every accepted event, the features after each event, and the served answers.
OfflineTable = Literal["events", "features", "feature_log"]
TABLES = ("events", "features", "feature_log")


def read_offline_table(
    spec: PathLike,
    table: OfflineTable = "features",
    data_dir: Optional[PathLike] = None,
    columns: Optional[List[str]] = None,
) -> pd.DataFrame:
    """Reads an offline table of a pipeline into a DataFrame (needs the ``deltalake`` package).

    The tables live in the spec's ``offline.path`` (relative to the spec's folder) or, when it sets none,
    in ``<data_dir>/offline``. They hold what committed checkpoints of ``freshet run`` made durable:

    Rows of ``events`` and ``features`` come sorted by ``seq``.

    - ``events``: every accepted event: ``seq`` (order of acceptance), ``event_time``, ``entity``,
      ``ingest_time``, ``raw`` (the JSON line as received), ``event_date`` (partition).
    - ``features``: after each accepted event, its entity's features as of the event's time: ``seq``,
      ``entity``, ``event_time``, ``processing_time``, then one column per feature.
    - ``feature_log``: what the serving API answered: ``request_id``, ``entity``, ``as_of``,
      ``served_at``, then one column per feature.

    Args:
        spec: The feature spec (YAML file) of the pipeline.
        table: ``events``, ``features`` (default) or ``feature_log``.
        data_dir: The ``--data-dir`` of ``freshet run`` (not needed when the spec sets ``offline.path``).
        columns: Read only these columns.

    Raises:
        ValueError: an unknown table name, or no ``data_dir`` for a spec without ``offline.path``.
        FileNotFoundError: the table does not exist (yet): ``freshet run`` creates it at its first checkpoint.
        ImportError: the ``deltalake`` package is missing (``pip install deltalake``).

    Example::

        >>> events = freshet.read_offline_table("live.yaml", "events", data_dir="freshet-data")  # doctest: +SKIP
        >>> events[["seq", "entity", "event_time"]].head(2)
           seq entity                       event_time
        0    0   u702 2026-01-01 00:00:00.113000+00:00
        1    1   u926 2026-01-01 00:00:00.417000+00:00
    """
    if table not in TABLES:
        raise ValueError(f"unknown offline table {table!r}; the tables are {', '.join(TABLES)}")
    try:
        from deltalake import DeltaTable
    except ImportError as e:
        raise ImportError("read_offline_table needs the deltalake package: pip install deltalake "
                          "(or pip install 'freshet[offline]')") from e
    path = offline_root(spec, data_dir) / table
    if not (path / "_delta_log").is_dir():
        raise FileNotFoundError(f"no Delta table at {path}: `freshet run` writes it at its first checkpoint "
                                "(check data_dir and the spec's offline section)")
    frame: pd.DataFrame = DeltaTable(str(path)).to_pandas(columns=columns)
    if "seq" in frame.columns:  # Files come in no particular order; seq is the order of acceptance.
        frame = frame.sort_values("seq", kind="stable").reset_index(drop=True)
    return frame

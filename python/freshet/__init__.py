"""Freshet for Python: features for training and serving from one engine.

- :class:`Client` talks to a running ``freshet run`` (or ``freshet serve``): online feature lookups,
  event ingest, health, spec.
- :func:`get_historical_features` builds point-in-time correct training sets with ``freshet historical``,
  the same operators that serve features live.
- :func:`skew_report` compares what was served with the offline recomputation (``freshet skew``).
- :func:`read_offline_table` reads the Delta tables ``freshet run`` writes (events, features, feature_log).

Example::

    import freshet, pandas as pd

    rows = pd.DataFrame({"user_id": ["u1"], "ts": [pd.Timestamp("2026-01-01 12:00", tz="UTC")], "label": [1]})
    train = freshet.get_historical_features("fraud.yaml", rows, events="events.jsonl")

    client = freshet.Client("http://127.0.0.1:8080")
    live = client.get_online_features(["u1", "u2"], as_frame=True)
    live = client.get_online_features(features=["purchase_count_30m"], entity_rows=[{"user_id": "u1"}])
"""
from freshet._cli import find_binary
from freshet._convert import TimestampUnitWarning
from freshet.client import Client
from freshet.errors import CommandNotAvailableError, FreshetError
from freshet.historical import get_historical_features
from freshet.offline import read_offline_table
from freshet.skew import skew_frame, skew_report
from freshet.spec import FeatureInfo, SpecInfo, load_spec

__version__ = "0.1.0"

__all__ = [
    "Client",
    "CommandNotAvailableError",
    "FeatureInfo",
    "FreshetError",
    "SpecInfo",
    "TimestampUnitWarning",
    "find_binary",
    "get_historical_features",
    "load_spec",
    "read_offline_table",
    "skew_frame",
    "skew_report",
]

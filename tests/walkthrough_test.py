"""examples/fraud/walkthrough.py runs from start to end and its figures make sense.

Checked independently of Freshet where possible: the live rows' online counts are recomputed here from the
generated events; the labels are shown to be learnable by an AUC of a raw count computed here; the model's
AUC beats chance; online and point-in-time features agree; the skew check (when the binary has `freshet
skew`) finds no mismatch; the offline tables hold every event and every served answer.
"""
from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parent.parent
BIN = os.environ.get("FRESHET_BIN", str(ROOT / "build" / "freshet"))
SIZES = ["--users", "1000", "--events", "100000", "--entity-rows", "6000", "--seed", "7", "--train-share", "0.7"]
MINUTE_MS = 60_000


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")
    out = tmp_path_factory.mktemp("walkthrough")
    env = dict(os.environ, FRESHET_BIN=BIN, PYTHONPATH=str(ROOT / "python"))
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "fraud" / "walkthrough.py"), *SIZES,
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"out": out, "stdout": done.stdout, "summary": json.loads((out / "summary.json").read_text())}


def test_every_step_ran(walkthrough: Dict[str, Any]) -> None:
    for number in range(1, 7):
        assert f"\n== {number}. " in walkthrough["stdout"]
    assert "\n== done in" in walkthrough["stdout"]
    summary = walkthrough["summary"]
    assert summary["run_exit_code"] == 0
    assert summary["train_rows"] == 4200 and summary["test_rows"] == 1800 and summary["live_rows"] == 1800


def _events_by_user(path: Path) -> Dict[str, List[Tuple[int, str, Any]]]:
    by_user: Dict[str, List[Tuple[int, str, Any]]] = {}
    for line in path.read_text().splitlines():
        e = json.loads(line)
        by_user.setdefault(e["user_id"], []).append((e["ts"], e["type"], e.get("success")))
    for events in by_user.values():
        events.sort(key=lambda x: x[0])
    return by_user


def _count(events: List[Tuple[int, str, Any]], low_exclusive: int, high: int, want: Any) -> int:
    times = [e[0] for e in events]
    lo, hi = bisect.bisect_right(times, low_exclusive), bisect.bisect_right(times, high)
    return sum(1 for e in events[lo:hi] if want(e))


def test_live_features_match_counts_computed_from_the_events(walkthrough: Dict[str, Any]) -> None:
    out = walkthrough["out"]
    by_user = _events_by_user(out / "events.jsonl")
    live = pd.read_csv(out / "live_scores.csv")
    live["ts_ms"] = pd.to_datetime(live["ts"], utc=True, format="ISO8601").astype("int64") // 1_000_000
    failed = lambda e: e[1] == "login" and e[2] is False  # noqa: E731
    purchase = lambda e: e[1] == "purchase"  # noqa: E731
    mismatches = []
    for user, t, served_failed, served_purchases in zip(live["user_id"], live["ts_ms"], live["failed_logins_10m"],
                                                        live["purchase_count_30m"]):
        events = by_user.get(user, [])
        # failed_logins_10m: continuous sliding 10m, t - 10m < time <= t.
        want_failed = _count(events, t - 10 * MINUTE_MS, t, failed)
        # purchase_count_30m: 1-minute tiles aligned to the epoch, the tile holding t and the 29 before it.
        first_tile = (t // MINUTE_MS - 29) * MINUTE_MS
        want_purchases = _count(events, first_tile - 1, t, purchase)
        if served_failed != want_failed or served_purchases != want_purchases:
            mismatches.append((user, t, served_failed, want_failed, served_purchases, want_purchases))
    assert not mismatches, mismatches[:10]
    assert live["purchase_count_30m"].sum() > 100 and live["failed_logins_10m"].sum() > 10


def test_the_model_learned_the_signal_there_is(walkthrough: Dict[str, Any]) -> None:
    summary = walkthrough["summary"]
    out = walkthrough["out"]
    live = pd.read_csv(out / "live_scores.csv")
    assert summary["test_positives"] == int(live["label"].sum()) > 10
    # The labels are learnable: failed logins over the previous day, counted here from the raw events, rank
    # the later rows better than chance.
    by_user = _events_by_user(out / "events.jsonl")
    live["ts_ms"] = pd.to_datetime(live["ts"], utc=True, format="ISO8601").astype("int64") // 1_000_000
    raw = [_count(by_user.get(u, []), t - 1440 * MINUTE_MS, t, lambda e: e[1] == "login" and e[2] is False)
           for u, t in zip(live["user_id"], live["ts_ms"])]
    raw_auc = roc_auc_score(live["label"], raw)
    assert raw_auc > 0.55
    # The model does at least about as well on rows it never saw, offline and live alike.
    assert summary["auc_test"] > 0.55 and summary["auc_test"] > raw_auc - 0.05
    assert summary["auc_live"] == summary["auc_test"]
    assert roc_auc_score(live["label"], live["score"]) == pytest.approx(summary["auc_live"], abs=1e-12)


def test_serving_agrees_with_training(walkthrough: Dict[str, Any]) -> None:
    summary = walkthrough["summary"]
    assert summary["online_vs_historical_mismatches"] == 0
    if "offline_events" in summary:  # The binary writes the offline tables.
        assert summary["offline_events"] == 100000
        assert summary["feature_log_answers"] == summary["live_rows"]
    assert summary["skew_status"] == "ok"
    assert summary["skew"]["answers"] > 1000
    assert min(summary["skew"]["compared"].values()) > 1000
    assert max(summary["skew"]["mismatch_rate"].values()) == 0

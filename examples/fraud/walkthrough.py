#!/usr/bin/env python3
"""A fraud model from end to end with Freshet's Python SDK: training set, model, live scoring, skew check.

    .venv/bin/python examples/fraud/walkthrough.py [--users 1000] [--events 100000] [--entity-rows 6000]

1. `freshet generate` writes a day of synthetic events (views, purchases, logins; a few attacker users) and
   labelled entity rows (user_id, ts, label).
2. `freshet run` starts the pipeline with an HTTP source; the first part of the day is pushed to it
   (Client.ingest).
3. The entity rows of that first part become a training set with point-in-time features
   (get_historical_features over the whole event file: no row sees an event after its own time).
4. A scikit-learn LogisticRegression is trained on it; its AUC on the later rows is reported.
5. The rest of the day is streamed to the pipeline in time order; at each later entity row's time, the
   user's features are fetched online (Client.get_online_features) and scored. The online features must be
   exactly the point-in-time ones of the same rows: training and serving agree.
6. The pipeline stops; `freshet skew` (skew_report) recomputes every served answer from the offline events
   table and reports the mismatch rate per feature.

About the labels: `freshet generate` labels a row 1 with probability 0.85 when its user is one of the few
attackers (users whose visits are often runs of failed logins) and 0.02 otherwise, so most positives are
noise and even a perfect attacker detector reaches an AUC of only about 0.6. An AUC clearly above 0.5 means
the features carry the signal there is.

Everything is written under --out (default out/walkthrough): events, rows, the spec, the pipeline's data
folder and log, live_scores.csv (each later row with its online features and score), and summary.json with
the figures.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
try:
    import freshet
except ImportError:  # Not installed (scripts/setup.sh installs it): use the checkout's copy.
    sys.path.insert(0, str(ROOT / "python"))
    import freshet

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

# The fraud features of examples/fraud/live.yaml, plus two over the last day that describe a user's login
# habits (attackers fail often), served by `freshet run` from events pushed over HTTP.
SPEC = """# Written by examples/fraud/walkthrough.py.
name: fraud_walkthrough
entity: user_id
timestamp: ts
watermark: {max_out_of_orderness: 5s, allowed_lateness: 1m}
source: {type: http}
serve: {host: 127.0.0.1, port: 0}
checkpoint: {interval: 2s}
features:
  - {name: purchase_count_30m, aggregation: count, where: "type == 'purchase'", window: {type: sliding, size: 30m, slide: 1m}}
  - {name: avg_txn_amount_1h, aggregation: mean, field: amount, where: "type == 'purchase'", window: {type: sliding, size: 1h}}
  - {name: unique_categories_session, aggregation: count_distinct, field: category, where: "type == 'view'", window: {type: session, gap: 30m}}
  - {name: failed_logins_10m, aggregation: count, where: "type == 'login' and success == false", window: {type: sliding, size: 10m}}
  - {name: max_purchase_24h, aggregation: max, field: amount, where: "type == 'purchase'", window: {type: sliding, size: 24h}}
  - {name: failed_logins_24h, aggregation: count, where: "type == 'login' and success == false", window: {type: sliding, size: 24h, slide: 10m}}
  - {name: logins_24h, aggregation: count, where: "type == 'login'", window: {type: sliding, size: 24h, slide: 10m}}
"""


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def say(text: str) -> None:
    print(f"   {text}", flush=True)


class RunningPipeline:
    """`freshet run` in the background; its log goes to a file."""

    def __init__(self, binary: str, spec: Path, data_dir: Path, token_file: Path, log: Path) -> None:
        self.log: IO[bytes] = open(log, "wb")
        self.proc = subprocess.Popen([binary, "run", "--spec", str(spec), "--data-dir", str(data_dir),
                                      "--port", "0", "--token-file", str(token_file)],
                                     stdout=self.log, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        self.url = ""
        deadline = time.time() + 30
        while time.time() < deadline and not self.url:
            line = self.proc.stderr.readline()
            self.log.write(line)
            if not line and self.proc.poll() is not None:
                break
            if b"http://" in line:
                self.url = line[line.index(b"http://"):].split()[0].decode()
        if not self.url:
            self.stop()
            raise SystemExit(f"freshet run did not start; see {log}")
        # Keep draining its stderr so that it never blocks on a full pipe.
        self._drain = threading.Thread(target=self._copy_stderr, daemon=True)
        self._drain.start()

    def _copy_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.write(line)
            self.log.flush()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # A final checkpoint commits the offline tables.
        code = self.proc.wait(timeout=120)
        if hasattr(self, "_drain"):
            self._drain.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.log.close()
        return code


def wait_processed(client: freshet.Client, count: int, timeout: float = 120.0) -> None:
    """Waits until the pipeline has applied `count` events (pushes are acknowledged before they are applied)."""
    deadline = time.time() + timeout
    while True:
        done = sum(v for k, v in client.metrics().items() if k.startswith("freshet_events_in_total"))
        if done >= count:
            return
        if time.time() > deadline:
            raise SystemExit(f"the pipeline applied only {done:.0f} of {count} events in {timeout:.0f} s")
        time.sleep(0.002)


def auc(labels: "pd.Series[int]", scores: "np.ndarray[Any, Any]") -> Optional[float]:
    if labels.nunique() < 2:
        return None
    return float(roc_auc_score(labels, scores))


def model_inputs(frame: pd.DataFrame, features: List[str]) -> "np.ndarray[Any, Any]":
    """The features as model inputs: no value (e.g. the mean of an empty window) counts as 0."""
    return frame[features].astype(float).fillna(0.0).to_numpy()


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones, for json.dumps."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--users", type=int, default=1000, help="distinct users in the generated events")
    parser.add_argument("--events", type=int, default=100000, help="generated events over one day")
    parser.add_argument("--entity-rows", type=int, default=6000, help="labelled (user, time) rows")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--train-share", type=float, default=0.7,
                        help="the earliest share of entity rows trains the model; the rest are scored live")
    parser.add_argument("--spec", type=Path, help="use this spec (it needs an http source) instead of the built-in one")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "walkthrough", help="output folder")
    parser.add_argument("--binary", help="the freshet binary (default: FRESHET_BIN, PATH, or build/freshet)")
    args = parser.parse_args()

    try:
        binary = freshet.find_binary(args.binary)
    except freshet.FreshetError as e:
        print(f"walkthrough: {e}", file=sys.stderr)
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    shutil.rmtree(data_dir, ignore_errors=True)  # A fresh pipeline: no checkpoint of an earlier run.
    summary: Dict[str, Any] = {"binary": binary}
    started = time.time()

    step(f"1. generate {args.events} events of {args.users} users over one day, and {args.entity_rows} labelled rows")
    events_path, rows_path = out / "events.jsonl", out / "rows.csv"
    subprocess.run([binary, "generate", "--users", str(args.users), "--events", str(args.events), "--duration", "24h",
                    "--seed", str(args.seed), "--output", str(events_path), "--entities", str(rows_path),
                    "--entity-rows", str(args.entity_rows)], check=True)
    lines = events_path.read_bytes().splitlines(keepends=True)
    say(f"{events_path}: {lines[0].decode().strip()} ...")
    times = np.array([json.loads(line)["ts"] for line in lines], dtype=np.int64)
    rows = pd.read_csv(rows_path)
    rows["ts"] = pd.to_datetime(rows["ts"], unit="ms", utc=True)  # The SDK takes datetimes, epoch ms or text.
    say(f"{rows_path}: {len(rows)} rows, {int(rows['label'].sum())} labelled 1")

    spec = args.spec or out / "walkthrough.yaml"
    if args.spec is None:
        spec.write_text(SPEC)
    info = freshet.load_spec(spec, binary)
    features = info.feature_names
    say(f"spec {spec}: {len(features)} features: {', '.join(features)}")

    step("2. start the pipeline: freshet run (HTTP source), and push the first part of the day to it")
    token_file = out / "token"
    token_file.write_text(secrets.token_hex(16) + "\n")
    token_file.chmod(0o600)
    pipeline = RunningPipeline(binary, spec, data_dir, token_file, out / "run.log")
    try:
        client = freshet.Client(pipeline.url, token=token_file.read_text().strip(), timeout=30)
        say(f"serving on {pipeline.url}; health: {client.health()}")
        rows = rows.sort_values("ts", kind="stable").reset_index(drop=True)
        split = int(len(rows) * args.train_share)
        cutoff_ms = int(rows["ts"].iloc[split - 1].value // 1_000_000)
        history = int(np.searchsorted(times, cutoff_ms, side="right"))  # Events are in time order.
        accepted = client.ingest(lines[:history])
        wait_processed(client, history)
        say(f"pushed {accepted} events up to {pd.Timestamp(cutoff_ms, unit='ms', tz='UTC')} (Client.ingest)")

        step(f"3. training set: the first {split} rows with point-in-time features (get_historical_features)")
        train_rows, test_rows = rows.iloc[:split], rows.iloc[split:]
        train = freshet.get_historical_features(spec, train_rows, events=events_path, binary=binary)
        say("computed from the whole event file: each row sees only events at or before its own time")
        print(train.tail(5).to_string(max_cols=12), flush=True)

        step("4. train a LogisticRegression on log(1 + feature) and measure it on the later rows")
        model: Pipeline = make_pipeline(FunctionTransformer(np.log1p), StandardScaler(),
                                        LogisticRegression(max_iter=1000))
        model.fit(model_inputs(train, features), train["label"])
        test = freshet.get_historical_features(spec, test_rows, events=events_path, binary=binary)
        offline_scores = model.predict_proba(model_inputs(test, features))[:, 1]
        summary.update(train_rows=len(train), test_rows=len(test), train_positives=int(train["label"].sum()),
                       test_positives=int(test["label"].sum()),
                       auc_train=auc(train["label"], model.predict_proba(model_inputs(train, features))[:, 1]),
                       auc_test=auc(test["label"], offline_scores))
        say(f"AUC on the {len(train)} training rows: {summary['auc_train']}")
        say(f"AUC on the {len(test)} later rows ({summary['test_positives']} positives): {summary['auc_test']}")
        coefficients = {name: round(float(c), 3) for name, c in zip(features, model[-1].coef_[0])}
        say(f"coefficients (standardized log features): {coefficients}")

        step(f"5. stream the rest of the day in time order and score each of the {len(test_rows)} later rows live")
        sent = history
        online: List[pd.DataFrame] = []
        lookup_ms: List[float] = []
        stream_started = time.time()
        for user, ts in zip(test_rows["user_id"], test_rows["ts"]):
            at_ms = int(ts.value // 1_000_000)
            due = int(np.searchsorted(times, at_ms, side="right"))
            if due > sent:
                client.ingest(lines[sent:due])
                sent = due
                wait_processed(client, sent)
            t0 = time.perf_counter()
            online.append(client.get_online_features([user], at=at_ms, as_frame=True))
            lookup_ms.append((time.perf_counter() - t0) * 1000)
        if sent < len(lines):
            client.ingest(lines[sent:])
            wait_processed(client, len(lines))
        served = pd.concat(online)
        live_scores = model.predict_proba(model_inputs(served, features))[:, 1]
        # Training/serving agreement: the online values of each row equal its point-in-time values.
        mismatches = 0
        for name in features:
            a, b = served[name].to_numpy(), test[name].to_numpy()
            same = [(x == y) or (x is None and y is None) or (isinstance(x, float) and isinstance(y, float)
                                                              and math.isnan(x) and math.isnan(y))
                    for x, y in zip(a, b)]
            mismatches += len(same) - sum(same)
        summary.update(live_rows=len(served), online_vs_historical_mismatches=mismatches,
                       auc_live=auc(test["label"], live_scores),
                       lookup_ms_p50=float(np.percentile(lookup_ms, 50)) if lookup_ms else None)
        say(f"streamed {len(lines) - history} events and looked up {len(served)} rows in "
            f"{time.time() - stream_started:.1f} s (lookup p50 {summary['lookup_ms_p50']:.2f} ms)")
        say(f"online features equal the point-in-time training features: {mismatches} mismatching values "
            f"of {len(served) * len(features)}")
        say(f"live AUC: {summary['auc_live']} (offline on the same rows: {summary['auc_test']})")
        scored = test[["user_id", "ts", "label"]].reset_index(drop=True).join(
            served.reset_index(drop=True)[features + ["known"]]).assign(score=live_scores)
        scored.to_csv(out / "live_scores.csv", index=False)
        say(f"rows, online features and scores in {out / 'live_scores.csv'}")
        say("the five highest live scores:")
        top = test[["user_id", "ts", "label"]].assign(score=live_scores).nlargest(5, "score")
        print(top.to_string(index=False), flush=True)
    finally:
        code = pipeline.stop()
    summary["run_exit_code"] = code
    say(f"freshet run stopped (exit {code}); log in {out / 'run.log'}")

    step("6. training/serving skew: recompute every served answer from the offline events table (skew_report)")
    try:
        logged = freshet.read_offline_table(spec, "feature_log", data_dir=data_dir, columns=["request_id"])
        stored = freshet.read_offline_table(spec, "events", data_dir=data_dir, columns=["seq"])
        summary.update(feature_log_answers=len(logged), offline_events=len(stored))
        say(f"offline tables (read_offline_table): {len(stored)} events, {len(logged)} logged answers")
    except (FileNotFoundError, ImportError) as e:
        say(f"offline tables not readable: {e}")
    try:
        report = freshet.skew_report(spec, data_dir=data_dir, binary=binary)
    except freshet.CommandNotAvailableError as e:
        summary["skew"] = None
        summary["skew_status"] = "unavailable"
        say(f"skipped: {e}")
    else:
        print(report[["compared", "exact", "mismatch_rate", "mean_abs_diff", "psi", "breached"]].to_string(),
              flush=True)
        summary["skew"] = {"answers": report.attrs.get("answers"), "breached": report.attrs.get("breached"),
                           "compared": {k: int(v) for k, v in report["compared"].items()},
                           "mismatch_rate": {k: float(v) for k, v in report["mismatch_rate"].items()}}
        summary["skew_status"] = "breached" if report["breached"].any() else "ok"
        say(f"{report.attrs.get('answers')} answers checked; "
            + ("no feature above the mismatch threshold" if summary["skew_status"] == "ok"
               else f"above the threshold: {report.attrs.get('breached')}"))

    summary["seconds"] = round(time.time() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_plain) + "\n")
    step(f"done in {summary['seconds']} s; figures in {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

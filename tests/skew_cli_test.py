"""`freshet skew`: logged serving answers against their point-in-time recomputation.

The offline tables are written here with the `deltalake` package in the layout of offline/tables.h: the events
table (as in historical_offline_test.py) and a feature_log table whose served values come from the brute-force
reference (tests/reference.py), so they are what a correct serving path answers. Then:

- unchanged, the report has no mismatch and the command exits 0 (answers as of times after the newest event are
  left out by default: their served values here are wrong on purpose);
- with some logged values changed, the report names each changed feature with the number of mismatches and the
  size of the difference, and the command exits 1;
- with events that arrived after the answers were served (times <= as_of, appended to the events table), the
  answers of that entity from then on mismatch by exactly the events added;
- --since/--until select the answers; errors exit 2 with a message.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import shutil
import subprocess
import sys

import pyarrow as pa
import pytest
from deltalake import write_deltalake

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import historical_offline_test as hot  # noqa: E402
import reference as ref  # noqa: E402

FRESHET_BIN = hot.FRESHET_BIN

SPEC = """name: shop
entity: user
timestamp: ts
skew:
  max_mismatch_rate: 0.001
features:
  - name: n
    aggregation: count
    window: {type: lifetime}
  - name: spent_1h
    aggregation: sum
    field: amount
    window: {type: sliding, size: 1h}
  - name: avg_10m
    aggregation: mean
    field: amount
    window: {type: sliding, size: 10m, slide: 1m}
  - name: last_cat
    aggregation: last
    field: category
    window: {type: lifetime}
"""
FEATURES = ["n", "spent_1h", "avg_10m", "last_cat"]
USERS = ["u0", "u1", "u2", "u3", "u4", "u5"]
BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

LOG_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("entity", pa.string()), ("as_of", pa.timestamp("us", tz="UTC")),
    ("served_at", pa.timestamp("us", tz="UTC")), ("served_features", pa.string()), ("n", pa.int64()),
    ("spent_1h", pa.float64()), ("avg_10m", pa.float64()), ("last_cat", pa.string()), ("served_date", pa.date32()),
])


def draw_events(rng: random.Random) -> list[bytes]:
    lines, t = [], BASE_MS
    for _ in range(400):
        t += rng.randint(1, 60_000)
        record = {"user": rng.choice(USERS), "ts": t - rng.choice([0, 0, 0, rng.randint(0, 120_000)])}
        if rng.random() < 0.9:
            record["amount"] = rng.randint(1, 500) if rng.random() < 0.5 else round(rng.uniform(0, 300), 2)
        if rng.random() < 0.8:
            record["category"] = rng.choice(["books", "games", "food", "toys"])
        lines.append(json.dumps(record).encode())
    return lines


class Case:
    """Spec, events (file and table) and the answers to log, in a folder."""

    def __init__(self, folder):
        self.folder = folder
        self.spec = str(folder / "spec.yaml")
        (folder / "spec.yaml").write_text(SPEC)
        rng = random.Random(11)
        self.lines = draw_events(rng)
        self.events_file = str(folder / "events.jsonl")
        with open(self.events_file, "wb") as f:
            f.write(b"\n".join(self.lines) + b"\n")
        self.spec_ref = ref.load_spec(self.spec)
        self.events, dead = ref.read_events(b"\n".join(self.lines), self.spec_ref)
        assert not dead
        self.newest = max(e.time_ms for e in self.events)
        first = min(e.time_ms for e in self.events)
        # 150 answers before the newest event, 5 after it (left out by default).
        self.answers = []
        for k in range(155):
            entity = rng.choice(USERS + ["ghost"])
            as_of = rng.randint(first - 60_000, self.newest - 1) if k < 150 else self.newest + rng.randint(0, 60_000)
            served = FEATURES if rng.random() < 0.8 else ["n", "last_cat"]
            self.answers.append({"request_id": f"r{k}", "entity": entity, "as_of": as_of, "served": list(served)})
        self.recompute_reference(self.events)

    def recompute_reference(self, events) -> None:
        """Each answer's served values: the reference's features, null for features the answer did not hold."""
        evaluator = ref.Evaluator(self.spec_ref, events)
        for a in self.answers:
            values = {}
            for j, name in enumerate(FEATURES):
                value = evaluator.value(j, a["entity"], a["as_of"])[0] if name in a["served"] else None
                values[name] = value
            a["values"] = values
        for a in self.answers[150:]:  # after the newest event: wrong on purpose, must never be compared
            a["values"] = {"n": 999, "spent_1h": 1e6, "avg_10m": -1.0, "last_cat": "wrong"}

    def data_dir(self, name: str, extra_events: list[tuple[str, int, bytes]] = ()) -> str:
        data = self.folder / name
        stored = [(e.entity, e.time_ms, self.lines[e.line - 1]) for e in self.events] + list(extra_events)
        hot.write_events_table(str(data / "offline" / "events"), stored, commits=2)
        return str(data)


def write_feature_log(data_dir: str, answers: list[dict], with_exact: bool = False) -> None:
    """The log as `freshet run` writes it; without `with_exact` as logs written before the `exact` column."""
    rows = []
    for a in answers:
        v = a["values"]
        rows.append({
            "request_id": a["request_id"], "entity": a["entity"], "as_of": hot.utc(a["as_of"]),
            "served_at": hot.utc(a["as_of"] + 3), "served_features": ",".join(a["served"]),
            "n": v["n"], "spent_1h": None if v["spent_1h"] is None else float(v["spent_1h"]),
            "avg_10m": None if v["avg_10m"] is None else float(v["avg_10m"]),
            "last_cat": None if v["last_cat"] is None else str(v["last_cat"]),
            "served_date": hot.utc(a["as_of"] + 3).date(),
        })
        if with_exact:
            rows[-1]["exact"] = a.get("exact", True)
    schema = LOG_SCHEMA.insert(5, pa.field("exact", pa.bool_())) if with_exact else LOG_SCHEMA
    write_deltalake(os.path.join(data_dir, "offline", "feature_log"), pa.Table.from_pylist(rows, schema=schema),
                    partition_by=["served_date"], mode="append")


def skew(case: Case, data_dir: str, *extra: str, expect: int) -> subprocess.CompletedProcess:
    args = [FRESHET_BIN, "skew", "--spec", case.spec, "--data-dir", data_dir, *extra]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == expect, (f"{' '.join(args)} exited {result.returncode}, expected {expect}\n"
                                         f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")
    return result


def report_of(result: subprocess.CompletedProcess) -> dict:
    report = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert set(report) == {"since", "until", "answers", "not_exact_answers", "max_mismatch_rate", "features",
                           "breached"}
    return report


def by_feature(report: dict) -> dict:
    assert [f["feature"] for f in report["features"]] == FEATURES
    return {f["feature"]: f for f in report["features"]}


def compared_counts(case: Case) -> dict:
    return {name: sum(1 for a in case.answers[:150] if name in a["served"]) for name in FEATURES}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    hot.diff.require_binary()
    return Case(tmp_path_factory.mktemp("skew"))


def test_answers_equal_to_the_recomputation_show_no_skew(case):
    data = case.data_dir("clean")
    write_feature_log(data, case.answers)
    report = report_of(skew(case, data, "--json", expect=0))
    assert report["answers"] == 150
    assert report["since"] is None
    assert report["until"] == case.newest
    assert report["max_mismatch_rate"] == 0.001
    assert report["breached"] == []
    counts = compared_counts(case)
    for name, f in by_feature(report).items():
        assert f["compared"] == counts[name], name
        assert f["exact"] == counts[name], (name, f)
        assert (f["match_rate"], f["mismatch_rate"], f["missing"], f["extra"], f["breached"]) == (1, 0, 0, 0, False)
        if name == "last_cat":
            assert f["mean_abs_diff"] is None and f["max_abs_diff"] is None and f["psi"] is None
        else:
            assert f["max_abs_diff"] <= 1e-6 and f["mean_abs_diff"] <= 1e-6, (name, f)
            assert 0 <= f["psi"] < 0.01, (name, f)

    table = skew(case, data, expect=0).stdout
    for name in FEATURES:
        assert any(line.startswith(name + " ") and line.rstrip().endswith("ok") for line in table.splitlines()), table
    assert "BREACHED" not in table

    # The same report from the events file.
    from_file = report_of(skew(case, data, "--json", "--events", case.events_file, expect=0))
    assert from_file == report


def test_changed_logged_values_are_reported_per_feature(case):
    data = case.data_dir("changed")
    answers = json.loads(json.dumps(case.answers))
    held = {name: [a for a in answers[:150] if name in a["served"]] for name in FEATURES}
    for a in held["spent_1h"][:7]:
        a["values"]["spent_1h"] += 5.0
    for a in held["n"][10:13]:
        a["values"]["n"] = None
    for a in held["last_cat"][20:22]:
        a["values"]["last_cat"] = "not-a-category"
    write_feature_log(data, answers)
    result = skew(case, data, "--json", expect=1)
    report = report_of(result)
    features = by_feature(report)
    counts = compared_counts(case)

    spent = features["spent_1h"]
    assert (spent["compared"], spent["exact"], spent["missing"], spent["extra"]) == (counts["spent_1h"],
                                                                                      counts["spent_1h"] - 7, 0, 0)
    assert spent["mismatch_rate"] == pytest.approx(7 / counts["spent_1h"])
    assert spent["max_abs_diff"] == pytest.approx(5.0, abs=1e-6)
    assert spent["mean_abs_diff"] == pytest.approx(35 / counts["spent_1h"], abs=1e-6)
    assert spent["breached"]

    n = features["n"]
    assert (n["compared"], n["exact"], n["missing"], n["extra"]) == (counts["n"], counts["n"] - 3, 3, 0)
    assert n["max_abs_diff"] == 0 and n["mean_abs_diff"] == 0  # the nulls have no difference

    cat = features["last_cat"]
    assert (cat["compared"], cat["exact"]) == (counts["last_cat"], counts["last_cat"] - 2)

    assert features["avg_10m"]["exact"] == counts["avg_10m"] and not features["avg_10m"]["breached"]
    assert report["breached"] == ["n", "spent_1h", "last_cat"]

    table = skew(case, data, expect=1).stdout
    spent_line = next(line for line in table.splitlines() if line.startswith("spent_1h "))
    assert spent_line.split()[1:3] == [str(counts["spent_1h"]), str(counts["spent_1h"] - 7)], spent_line
    assert spent_line.rstrip().endswith("BREACHED") and " 5 " in spent_line, spent_line
    assert "breached (mismatch rate above 0.001): n, spent_1h, last_cat" in table


def test_answers_served_as_not_exact_are_counted_and_not_compared(case):
    # The server marks a lookup as of a time before the entity's horizon "exact": false (its state may hold later
    # events): the feature log keeps that mark, and such an answer is reported apart, not as skew. Here every
    # fifth answer carries wrong values: marked not exact they are left out; marked exact they breach.
    answers = json.loads(json.dumps(case.answers))
    wrong = [a for k, a in enumerate(answers[:150]) if k % 5 == 0]
    for a in wrong:
        a["values"] = {"n": 999, "spent_1h": 1e6, "avg_10m": -1.0, "last_cat": "wrong"}
        a["exact"] = False
    data = case.data_dir("not_exact")
    write_feature_log(data, answers, with_exact=True)
    report = report_of(skew(case, data, "--json", expect=0))
    assert (report["answers"], report["not_exact_answers"], report["breached"]) == (150 - len(wrong), len(wrong), [])
    for name, f in by_feature(report).items():
        assert f["exact"] == f["compared"], (name, f)
    table = skew(case, data, expect=0).stdout
    assert f'not compared: {len(wrong)} answers served with "exact": false' in table, table

    for a in wrong:
        a["exact"] = True
    data = case.data_dir("wrongly_exact")
    write_feature_log(data, answers, with_exact=True)
    report = report_of(skew(case, data, "--json", expect=1))
    assert (report["answers"], report["not_exact_answers"]) == (150, 0)
    assert report["breached"] == FEATURES


def test_events_that_arrived_after_serving_make_their_answers_mismatch(case):
    # Two events of u1 without amount or category, at times some answers of u1 were served as of: a count that
    # the serving path could not have seen. Only n changes, by 1 or 2, for u1's answers as of those times or later.
    u1 = sorted(a["as_of"] for a in case.answers[:150] if a["entity"] == "u1")
    assert len(u1) >= 4
    t1, t2 = u1[len(u1) // 4], u1[len(u1) // 2]
    late = [("u1", t1, json.dumps({"user": "u1", "ts": t1}).encode()),
            ("u1", t2, json.dumps({"user": "u1", "ts": t2, "note": "late"}).encode())]
    data = case.data_dir("late", extra_events=late)
    write_feature_log(data, case.answers)
    report = report_of(skew(case, data, "--json", expect=1))
    assert report["until"] == case.newest  # the added events are older than the newest
    features = by_feature(report)
    affected = [a for a in case.answers[:150] if a["entity"] == "u1" and a["as_of"] >= t1]
    diffs = [(1 if a["as_of"] >= t1 else 0) + (1 if a["as_of"] >= t2 else 0) for a in affected]
    n = features["n"]
    assert n["compared"] - n["exact"] == len(affected)
    assert n["max_abs_diff"] == 2
    assert n["mean_abs_diff"] == pytest.approx(sum(diffs) / n["compared"])
    assert report["breached"] == ["n"]
    for name in ("spent_1h", "avg_10m", "last_cat"):
        assert features[name]["exact"] == features[name]["compared"], name


def test_since_and_until_select_the_answers(case):
    data = case.data_dir("range")
    write_feature_log(data, case.answers)
    times = sorted(a["as_of"] for a in case.answers)
    since, until = times[40], times[120]
    want = sum(1 for t in times if since <= t < until)
    report = report_of(skew(case, data, "--json", "--since", hot.rfc3339(since), "--until", str(until), expect=0))
    assert (report["since"], report["until"], report["answers"]) == (since, until, want)
    # An explicit --until past the newest event takes the answers after it too: their served values are wrong.
    report = report_of(skew(case, data, "--json", "--until", str(case.newest + 10**7), expect=1))
    assert report["answers"] == 155
    assert by_feature(report)["n"]["compared"] - by_feature(report)["n"]["exact"] == 5


def test_errors_exit_2_with_a_message(case, tmp_path):
    data = str(tmp_path / "empty")
    result = skew(case, data, "--json", expect=2)
    assert result.stdout == ""
    assert "no feature_log table" in result.stderr and "freshet run" in result.stderr, result.stderr
    clean = case.data_dir("errors")
    write_feature_log(clean, case.answers)
    result = skew(case, clean, "--since", "yesterday", expect=2)
    assert "--since" in result.stderr and "RFC 3339" in result.stderr, result.stderr
    result = skew(case, clean, "--since", "2000", "--until", "1000", expect=2)
    assert "--since must be before --until" in result.stderr
    shutil.rmtree(os.path.join(clean, "offline", "events"))
    result = skew(case, clean, expect=2)
    assert "is not a Delta table" in result.stderr, result.stderr

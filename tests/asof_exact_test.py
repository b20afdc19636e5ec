"""Features "as of" a time are exact also when events arrive out of order (issue 9).

The offline `features` table has one row per accepted event: the entity's features as of the event's time, over
the events accepted up to and including it (acceptance order). An event that arrives after a later one of the
same entity must not see that later event. Lookups `GET /v1/features/{entity}?at=T` are exact, and say so with
`"exact": true`, for every T at or after the horizon (the largest accepted event time M, over all entities, minus
max_out_of_orderness and allowed_lateness) and for every T at or after the entity's newest event; earlier T
answer `"exact": false`.

Every value is checked against the independent brute-force reference (tests/reference.py) over the right set of
events; a backfill must rewrite the features table bit for bit, and `freshet historical` over the input up to a
line must answer that line's row.
"""
from __future__ import annotations

import csv
import datetime
import json
import math
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deltalake
import pyarrow as pa
import pytest

import reference
from run_recovery_test import Server

BIN = os.environ.get("FRESHET_BIN", str(Path(__file__).resolve().parent.parent / "build" / "freshet"))

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _require_binary() -> None:
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")


def _ms(moment: datetime.datetime) -> int:
    return (moment - EPOCH) // datetime.timedelta(milliseconds=1)


def _features_table(data_dir: Path) -> pa.Table:
    """The features table without processing_time (a wall clock), ordered by seq."""
    t = deltalake.DeltaTable(str(data_dir / "offline" / "features")).to_pyarrow_table()
    return t.drop_columns(["processing_time"]).sort_by("seq")


def _same(feature: reference.Feature, expected: Any, got: Any) -> bool:
    """A reference value against a value from the features table or a JSON answer: null as null (or NaN),
    `last` as its text, numbers to 1e-9 (the reference is exact arithmetic, the engine double precision)."""
    if expected is None or expected is reference.MISSING:
        return got is None or (isinstance(got, float) and math.isnan(got))
    if got is None or (isinstance(got, float) and math.isnan(got)):
        return False
    if feature.aggregation == "last":
        return reference.format_value(got) == reference.format_value(expected)
    if isinstance(got, (bool, str)):
        return False
    return math.isclose(float(expected), float(got), rel_tol=1e-9, abs_tol=1e-9)


def _same_as_text(feature: reference.Feature, cell: str, got: Any) -> bool:
    """A cell of `freshet historical`'s CSV against a value of the features table."""
    if cell == "":
        return got is None or (isinstance(got, float) and math.isnan(got))
    if got is None or (isinstance(got, float) and math.isnan(got)):
        return False
    if feature.aggregation == "last":
        return got == cell
    return math.isclose(float(cell), float(got), rel_tol=1e-9, abs_tol=1e-9)


def _row_mismatches(spec: reference.Spec, table: list[dict], accepted: list[reference.Event]) -> list[str]:
    """Every (row, feature) of the features table that differs from the reference over the entity's accepted
    events up to and including the row's event, as of the row's event time."""
    assert [r["seq"] for r in table] == list(range(len(accepted)))
    # Which events qualify for a feature does not depend on the row: keep each (feature, entity)'s qualifying
    # prefix, in acceptance order, as the reference's Evaluator does over all events.
    qualifying: dict[tuple[int, str], list[reference.Event]] = {}
    mismatches = []
    for row, event in zip(table, accepted):
        assert row["entity"] == event.entity, (row["seq"], row["entity"], event.entity)
        assert _ms(row["event_time"]) == event.time_ms, (row["seq"], row["event_time"], event.time_ms)
        for j, feature in enumerate(spec.features):
            prefix = qualifying.setdefault((j, event.entity), [])
            if reference.qualifies(feature, event):
                prefix.append(event)
            expected, _ = reference.value_from_qualifying(feature, prefix, event.time_ms)
            if not _same(feature, expected, row[feature.name]):
                mismatches.append(f"seq {row['seq']} (line {event.line}, entity {event.entity}, t {event.time_ms}) "
                                  f"{feature.name}: reference {expected!r}, table {row[feature.name]!r}")
    return mismatches


# ---------------------------------------------------------------------------------------------------
# a. The example of issue 9
# ---------------------------------------------------------------------------------------------------

ISSUE_SPEC = """name: issue9
entity: user_id
timestamp: ts
watermark: {max_out_of_orderness: 5s, allowed_lateness: 1m}
source: {type: file, path: events.jsonl}
serve: {port: 0}
features:
  - {name: n, aggregation: count, window: {type: lifetime}}
  - {name: last_category, aggregation: last, field: category, window: {type: lifetime}}
  - {name: n_1h, aggregation: count, window: {type: tumbling, size: 1h}}
  - {name: n_sliding_tiled, aggregation: count, window: {type: sliding, size: 10s, slide: 1s}}
  - {name: n_sliding, aggregation: count, window: {type: sliding, size: 10s}}
  - {name: n_session, aggregation: count, window: {type: session, gap: 1m}}
  - {name: ts_sum, aggregation: sum, field: ts, window: {type: lifetime}}
  - {name: ts_mean, aggregation: mean, field: ts, window: {type: sliding, size: 1m}}
  - {name: ts_min, aggregation: min, field: ts, window: {type: session, gap: 1m}}
  - {name: ts_max, aggregation: max, field: ts, window: {type: lifetime}}
  - {name: ts_stddev, aggregation: stddev, field: ts, window: {type: tumbling, size: 1m}}
  - {name: categories, aggregation: count_distinct, field: category, window: {type: sliding, size: 1m, slide: 10s}}
  - {name: categories_approx, aggregation: approx_count_distinct, field: category, precision: 10, window: {type: lifetime}}
  - {name: bc_views, aggregation: count, where: "category in ['b', 'c']", window: {type: lifetime}}
"""

ISSUE_EVENTS = b"""{"user_id":"u","ts":1000,"type":"view","category":"a"}
{"user_id":"u","ts":3000,"type":"view","category":"b"}
{"user_id":"u","ts":2000,"type":"view","category":"c"}
"""


def test_issue_9_an_out_of_order_event_does_not_see_the_later_one(tmp_path: Path) -> None:
    _require_binary()
    (tmp_path / "events.jsonl").write_bytes(ISSUE_EVENTS)
    (tmp_path / "spec.yaml").write_text(ISSUE_SPEC)
    subprocess.run([BIN, "run", "--spec", str(tmp_path / "spec.yaml"), "--data-dir", str(tmp_path / "data"),
                    "--exit-at-end"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    table = _features_table(tmp_path / "data").to_pylist()
    assert len(table) == 3
    row = table[2]
    assert _ms(row["event_time"]) == 2000
    held = (row["n"], row["last_category"], row["n_1h"])
    assert held == (2, "c", 2), f"the row of the ts-2000 event holds (count, last, tumbling count) {held}: {row}"
    held = (row["ts_sum"], row["ts_max"], row["bc_views"])
    assert held == (3000, 2000, 1), f"the row of the ts-2000 event holds (sum ts, max ts, count b/c) {held}: {row}"

    spec = reference.load_spec(str(tmp_path / "spec.yaml"))
    accepted, dead = reference.read_events(ISSUE_EVENTS, spec)
    assert len(accepted) == 3 and not dead
    mismatches = _row_mismatches(spec, table, accepted)
    assert not mismatches, "\n".join(mismatches)


# ---------------------------------------------------------------------------------------------------
# A generated workload with disorder, late and malformed lines, shared by the tests below
# ---------------------------------------------------------------------------------------------------

MAX_OUT_OF_ORDERNESS_MS = 10_000
ALLOWED_LATENESS_MS = 30_000

# Thirty minutes of events (so that many of an entity's events are within the disorder of each other, and many
# entities have events within the lateness horizon at the end); every window type and aggregation, with filters.
WORKLOAD_SPEC = """name: asof
entity: user_id
timestamp: ts
watermark: {{max_out_of_orderness: 10s, allowed_lateness: 30s}}
source: {{type: file, path: {events}, follow: false}}
serve: {{port: 0}}
checkpoint: {{interval: 1h}}
features:
  - {{name: events_total, aggregation: count, window: {{type: lifetime}}}}
  - {{name: last_category, aggregation: last, field: category, window: {{type: lifetime}}}}
  - {{name: last_login_ok, aggregation: last, field: success, where: "type == 'login'", window: {{type: lifetime}}}}
  - {{name: view_categories, aggregation: count_distinct, field: category, where: "type == 'view'", window: {{type: lifetime}}}}
  - {{name: max_purchase, aggregation: max, field: amount, where: "type == 'purchase'", window: {{type: lifetime}}}}
  - {{name: views_10m, aggregation: count, where: "type == 'view'", window: {{type: sliding, size: 10m, slide: 1m}}}}
  - {{name: spend_10m, aggregation: sum, field: amount, where: "type == 'purchase'", window: {{type: sliding, size: 10m, slide: 1m}}}}
  - {{name: categories_5m_approx, aggregation: approx_count_distinct, field: category, precision: 10, window: {{type: sliding, size: 5m, slide: 30s}}}}
  - {{name: events_2m, aggregation: count, window: {{type: sliding, size: 2m}}}}
  - {{name: mean_amount_10m, aggregation: mean, field: amount, where: "type in ['purchase', 'refund']", window: {{type: sliding, size: 10m}}}}
  - {{name: stddev_amount_15m, aggregation: stddev, field: amount, window: {{type: sliding, size: 15m}}}}
  - {{name: min_purchase_10m, aggregation: min, field: amount, where: "type == 'purchase' and amount > 5", window: {{type: sliding, size: 10m}}}}
  - {{name: views_5m_tumbling, aggregation: count, where: "type == 'view'", window: {{type: tumbling, size: 5m}}}}
  - {{name: spend_15m_tumbling, aggregation: sum, field: amount, window: {{type: tumbling, size: 15m}}}}
  - {{name: devices_10m_tumbling, aggregation: count_distinct, field: device, where: "type == 'login'", window: {{type: tumbling, size: 10m}}}}
  - {{name: session_events, aggregation: count, window: {{type: session, gap: 20s}}}}
  - {{name: session_categories, aggregation: count_distinct, field: category, where: "not (type == 'login')", window: {{type: session, gap: 1m}}}}
  - {{name: session_failed_logins, aggregation: count, where: "type == 'login' and success == false", window: {{type: session, gap: 2m}}}}
  - {{name: session_max_amount, aggregation: max, field: amount, window: {{type: session, gap: 2m}}}}
"""


@dataclass
class Workload:
    events_path: Path
    spec_path: Path
    spec: reference.Spec
    lines: list[bytes]
    accepted: list[reference.Event]
    dead: list[reference.DeadLetter]


@dataclass
class Streamed:
    data_dir: Path
    table: pa.Table  # read right after `freshet run --exit-at-end`, before any backfill


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    _require_binary()
    tmp = tmp_path_factory.mktemp("asof")
    events = tmp / "events.jsonl"
    subprocess.run([BIN, "generate", "--users", "60", "--events", "6000", "--seed", "9", "--duration", "30m",
                    "--disorder", "20s", "--late-share", "0.02", "--malformed-share", "0.01", "--no-progress",
                    "--output", str(events)], check=True, timeout=60)
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(WORKLOAD_SPEC.format(events=events))
    spec = reference.load_spec(str(spec_path))
    assert spec.watermark == (MAX_OUT_OF_ORDERNESS_MS, ALLOWED_LATENESS_MS)
    data = events.read_bytes()
    accepted, dead = reference.read_events(data, spec)
    return Workload(events, spec_path, spec, reference.split_lines(data), accepted, dead)


@pytest.fixture(scope="module")
def streamed(workload: Workload, tmp_path_factory: pytest.TempPathFactory) -> Streamed:
    data_dir = tmp_path_factory.mktemp("asof-run") / "data"
    subprocess.run([BIN, "run", "--spec", str(workload.spec_path), "--data-dir", str(data_dir), "--exit-at-end"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    return Streamed(data_dir, _features_table(data_dir))


# ---------------------------------------------------------------------------------------------------
# b. Every features row equals the reference over the prefix
# ---------------------------------------------------------------------------------------------------


def _out_of_order_exposure(workload: Workload) -> tuple[int, dict[str, int]]:
    """How many rows are out of order (the event's time is below the entity's largest time seen before it), and
    per feature how many of those rows have a qualifying event of the entity, accepted before, later than the
    row's time: one the row must leave out."""
    spec = workload.spec
    newest: dict[str, int] = {}
    newest_qualifying: dict[tuple[int, str], int] = {}
    out_of_order = 0
    exposed = {f.name: 0 for f in spec.features}
    for event in workload.accepted:
        before = newest.get(event.entity)
        if before is not None and event.time_ms < before:
            out_of_order += 1
        for j, feature in enumerate(spec.features):
            key = (j, event.entity)
            if key in newest_qualifying and newest_qualifying[key] > event.time_ms:
                exposed[feature.name] += 1
            if reference.qualifies(feature, event):
                newest_qualifying[key] = max(newest_qualifying.get(key, event.time_ms), event.time_ms)
        newest[event.entity] = event.time_ms if before is None else max(before, event.time_ms)
    return out_of_order, exposed


def test_workload_exercises_disorder_lateness_and_every_window(workload: Workload) -> None:
    """The workload is what the other tests need: many out-of-order events per entity, all of them accepted
    (within the watermark), some late and malformed lines, and every window type exposed to disorder."""
    rows = len(workload.accepted)
    late = sum(1 for d in workload.dead if d.reason == "late")
    assert late > 0.01 * len(workload.lines) and len(workload.dead) - late > 0.005 * len(workload.lines)
    out_of_order, exposed = _out_of_order_exposure(workload)
    assert out_of_order > 0.10 * rows, (out_of_order, rows)
    for kind in ("lifetime", "sliding-tiled", "sliding", "tumbling", "session"):
        names = [f.name for f in workload.spec.features
                 if f.window.kind + ("-tiled" if f.window.slide_ms else "") == kind]
        assert names and max(exposed[n] for n in names) > 0.10 * rows, (kind, {n: exposed[n] for n in names}, rows)


def test_features_rows_equal_the_reference_over_the_prefix(workload: Workload, streamed: Streamed) -> None:
    """Each row: the reference's value as of the event's time over the entity's events accepted up to and
    including it. Out-of-order rows must leave out the later events accepted before them."""
    mismatches = _row_mismatches(workload.spec, streamed.table.to_pylist(), workload.accepted)
    by_feature: dict[str, int] = {}
    for m in mismatches:
        name = m.split(": reference")[0].rsplit(" ", 1)[1]
        by_feature[name] = by_feature.get(name, 0) + 1
    assert not mismatches, (f"{len(mismatches)} mismatches of {len(workload.accepted)} rows x "
                            f"{len(workload.spec.features)} features; per feature {by_feature}\n"
                            + "\n".join(mismatches[:20]))


# ---------------------------------------------------------------------------------------------------
# c. Lookups at or after the horizon are exact, and say so
# ---------------------------------------------------------------------------------------------------


def _wait_until_read(server: Server, lines: int, timeout_s: float = 60) -> None:
    """Until every line of the file has been read and applied (the counter moves after the batch is visible)."""
    deadline = time.monotonic() + timeout_s
    read = 0.0
    while time.monotonic() < deadline:
        read = server.metric("freshet_events_in_total")
        if read >= lines:
            return
        time.sleep(0.05)
    raise AssertionError(f"freshet run read {read} of {lines} lines in {timeout_s} s")


def _stop(server: Server) -> None:
    """SIGTERM, then SIGKILL if it is not gone within the deadline."""
    server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
        raise AssertionError("freshet run did not stop within 30 s of SIGTERM")
    finally:
        server.log.write(server.proc.stderr.read())
        server.log.close()
    assert code == 0, code


def test_lookups_at_or_after_the_horizon_are_exact(workload: Workload, tmp_path: Path) -> None:
    spec = workload.spec
    evaluator = reference.Evaluator(spec, workload.accepted)
    newest: dict[str, int] = {}
    for event in workload.accepted:
        newest[event.entity] = max(newest.get(event.entity, event.time_ms), event.time_ms)
    horizon = max(newest.values()) - MAX_OUT_OF_ORDERNESS_MS - ALLOWED_LATENESS_MS
    rng = random.Random(21)
    entities = sorted(newest)
    recent = [e for e in entities if newest[e] >= horizon]
    assert len(recent) >= 10, f"only {len(recent)} entities have events at or after the horizon"
    # Between the horizon and the entity's newest event: where the live state holds events after T.
    exact_points = [(e, rng.randint(horizon, newest[e])) for e in (rng.choice(recent) for _ in range(240))]
    exact_points += [(e, horizon) for e in recent[:5]] + [(e, newest[e]) for e in recent[:5]]
    # At or after the entity's newest event, whatever the horizon.
    exact_points += [(e, newest[e] + rng.choice([0, 1, 999, 60_000, 3_600_000])) for e in
                     (rng.choice(entities) for _ in range(60))]
    # Below the horizon and below the entity's newest event: the answer may include later events.
    inexact_points = [(e, rng.randint(min(horizon, newest[e]) - 600_000, min(horizon, newest[e]) - 1))
                      for e in (rng.choice(entities) for _ in range(20))]
    # An entity's earlier events that arrived out of order: entities whose newest event is right at the end
    # make the points just below the horizon the most telling.
    inexact_points += [(e, horizon - 1) for e in recent[:5]]

    server = Server(workload.spec_path, tmp_path / "data", tmp_path / "run.log")
    value_mismatches, flag_mismatches = [], []
    try:
        _wait_until_read(server, len(workload.lines))
        for entity, at in exact_points:
            answer = json.loads(server.get(f"/v1/features/{entity}?at={at}"))
            assert answer["as_of_ms"] == at, answer
            for j, feature in enumerate(spec.features):
                expected, _ = evaluator.value(j, entity, at)
                got = answer["features"][feature.name]
                if not _same(feature, expected, got):
                    value_mismatches.append(
                        f"{entity} at {at} (horizon {horizon}, newest {newest[entity]}) {feature.name}: "
                        f"reference {expected!r}, served {got!r}")
            if answer.get("exact") is not True:
                flag_mismatches.append(f"{entity} at {at} (horizon {horizon}, newest {newest[entity]}): "
                                       f"exact {answer.get('exact', 'missing')!r}, expected true")
        for entity, at in inexact_points:
            answer = json.loads(server.get(f"/v1/features/{entity}?at={at}"))
            if answer.get("exact") is not False:
                flag_mismatches.append(f"{entity} at {at} (horizon {horizon}, newest {newest[entity]}): "
                                       f"exact {answer.get('exact', 'missing')!r}, expected false")
    finally:
        _stop(server)
    assert not value_mismatches and not flag_mismatches, (
        f"{len(value_mismatches)} values differ from the reference over all accepted events, "
        f"{len(flag_mismatches)} wrong `exact` flags of {len(exact_points) + len(inexact_points)} lookups\n"
        + "\n".join(value_mismatches[:15] + flag_mismatches[:5]))


# ---------------------------------------------------------------------------------------------------
# d. A backfill rewrites the same table; e. historical over the input up to a line answers that line's row
# ---------------------------------------------------------------------------------------------------


def test_backfill_rewrites_the_streamed_features_bit_for_bit(workload: Workload, streamed: Streamed) -> None:
    subprocess.run([BIN, "backfill", "--spec", str(workload.spec_path), "--data-dir", str(streamed.data_dir),
                    "--no-progress"], check=True, timeout=120)
    backfilled = _features_table(streamed.data_dir)
    assert backfilled.num_rows == streamed.table.num_rows == len(workload.accepted)
    if not backfilled.equals(streamed.table):
        differ = [f"seq {a['seq']}: streamed {a}, backfilled {b}"
                  for a, b in zip(streamed.table.to_pylist(), backfilled.to_pylist()) if a != b]
        raise AssertionError(f"{len(differ)} rows differ\n" + "\n".join(differ[:5]))


def test_historical_over_the_input_up_to_a_line_answers_its_row(workload: Workload, streamed: Streamed,
                                                                tmp_path: Path) -> None:
    spec = workload.spec
    rows = streamed.table.to_pylist()
    out_of_order = set()
    newest: dict[str, int] = {}
    for seq, event in enumerate(workload.accepted):
        if event.entity in newest and event.time_ms < newest[event.entity]:
            out_of_order.add(seq)
        newest[event.entity] = max(newest.get(event.entity, event.time_ms), event.time_ms)
    rng = random.Random(5)
    # Mostly rows of out-of-order events, the interesting ones; some in order.
    picks = rng.sample(sorted(out_of_order), 15) + rng.sample(range(len(workload.accepted)), 5)
    mismatches = []
    for seq in picks:
        event = workload.accepted[seq]
        prefix = tmp_path / f"prefix-{seq}.jsonl"
        prefix.write_bytes(b"".join(line + b"\n" for line in workload.lines[:event.line]))
        entities = tmp_path / f"entities-{seq}.csv"
        with open(entities, "w", newline="") as f:
            csv.writer(f).writerows([["user_id", "ts"], [event.entity, event.time_ms]])
        out = tmp_path / f"out-{seq}.csv"
        subprocess.run([BIN, "historical", "--spec", str(workload.spec_path), "--events", str(prefix), "--entities",
                        str(entities), "--output", str(out), "--no-progress"], check=True, timeout=60,
                       stderr=subprocess.DEVNULL)
        with open(out, newline="") as f:
            (answer,) = list(csv.DictReader(f))
        entity_prefix = [e for e in workload.accepted[:seq + 1] if e.entity == event.entity]
        for feature in spec.features:
            if not _same_as_text(feature, answer[feature.name], rows[seq][feature.name]):
                expected, _ = reference.feature_value(feature, entity_prefix, event.time_ms)  # to tell who is wrong
                mismatches.append(f"seq {seq} (line {event.line}, entity {event.entity}, t {event.time_ms}) "
                                  f"{feature.name}: historical {answer[feature.name]!r}, "
                                  f"table {rows[seq][feature.name]!r}, reference {expected!r}")
    assert not mismatches, f"{len(mismatches)} mismatches\n" + "\n".join(mismatches[:20])

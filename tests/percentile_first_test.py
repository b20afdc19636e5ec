"""approx_percentile and first in every window type, through every path that computes features (issue 15).

A workload of a few busy users (so that windows hold well over the sketch's 256 exact values) with 20 s of
disorder within the watermark runs through `freshet run`; every row of the features table is checked against
the brute-force reference (tests/reference.py) over the events accepted up to it: `first` equal, each
percentile within the sketch's rank bound (equal while the window holds at most 256 values). Then: a backfill
rewrites the table bit for bit; a run stopped half way and resumed from its checkpoint writes the same table
as one run; lookups at or after the horizon are within the bound of the reference over all events; and
`freshet historical` answers rows at arbitrary times within it too.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import reference
from asof_exact_test import Server, _stop, _wait_until_read
from feature_runs import (Workload, check_backfill_rewrites_bit_for_bit, check_resumed_run_writes_the_same_rows,
                          generated_events, historical_answers, make_workload, sample_rows, stream)

MAX_OUT_OF_ORDERNESS_MS = 10_000
ALLOWED_LATENESS_MS = 30_000

SPEC = """name: percentiles
entity: user_id
timestamp: ts
watermark: {{max_out_of_orderness: 10s, allowed_lateness: 30s}}
source: {{type: file, path: {events}, follow: false}}
serve: {{port: 0}}
features:
  - {{name: ts_life, aggregation: approx_percentile, field: ts, percentiles: [0.5, 0.95, 0.07], window: {{type: lifetime}}}}
  - {{name: amount_life, aggregation: approx_percentile, field: amount, percentiles: [0.5], where: "type == 'purchase'", window: {{type: lifetime}}}}
  - {{name: ts_10m, aggregation: approx_percentile, field: ts, percentiles: [0.5, 0.95], window: {{type: sliding, size: 10m, slide: 1m}}}}
  - {{name: ts_5m, aggregation: approx_percentile, field: ts, percentiles: [0.95], window: {{type: sliding, size: 5m}}}}
  - {{name: ts_15m, aggregation: approx_percentile, field: ts, percentiles: [0, 1, 0.5], window: {{type: tumbling, size: 15m}}}}
  - {{name: ts_session, aggregation: approx_percentile, field: ts, percentiles: [0.5, 0.999], window: {{type: session, gap: 1m}}}}
  - {{name: first_category, aggregation: first, field: category, window: {{type: lifetime}}}}
  - {{name: first_amount_10m, aggregation: first, field: amount, window: {{type: sliding, size: 10m, slide: 1m}}}}
  - {{name: first_type_5m, aggregation: first, field: type, window: {{type: sliding, size: 5m}}}}
  - {{name: first_ts_15m, aggregation: first, field: ts, window: {{type: tumbling, size: 15m}}}}
  - {{name: first_category_session, aggregation: first, field: category, window: {{type: session, gap: 1m}}}}
"""


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    tmp = tmp_path_factory.mktemp("percentiles")
    return make_workload(tmp, generated_events(tmp / "events.jsonl"), lambda events: SPEC.format(events=events))


@pytest.fixture(scope="module")
def streamed(workload: Workload, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    return stream(workload, tmp_path_factory.mktemp("percentiles-run") / "data")


def _ok(feature: reference.Feature, window: list[reference.Event], expected: Any, got: Any) -> bool:
    """The engine's value against the reference's window: first equal (as text, the column's type),
    approx_percentile within the rank bound."""
    if isinstance(got, float) and got != got:
        got = None
    if feature.aggregation == "approx_percentile":
        values = [reference.resolve(e.record, feature.field) for e in window]
        return reference.approx_percentile_ok(values, feature.percentile, got)
    if expected is None:
        return got is None
    return got is not None and reference.format_value(got) == reference.format_value(expected)


def test_the_workload_reaches_the_sketch_and_disorder_in_every_window(workload: Workload) -> None:
    """Each window type has rows whose window holds more than 256 values (the sketch compacts) and rows of
    out-of-order events that must leave out later events accepted before them."""
    spec = workload.spec
    newest: dict[str, int] = {}
    overtaken = 0
    big: dict[str, int] = {}
    qualifying: dict[tuple[int, str], list[reference.Event]] = {}
    for event in workload.accepted:
        if event.time_ms < newest.get(event.entity, event.time_ms):
            overtaken += 1
        newest[event.entity] = max(newest.get(event.entity, event.time_ms), event.time_ms)
        for j, feature in enumerate(spec.features):
            if feature.aggregation != "approx_percentile":
                continue
            prefix = qualifying.setdefault((j, event.entity), [])
            if reference.qualifies(feature, event):
                prefix.append(event)
            _, window = reference.value_from_qualifying(feature, prefix, event.time_ms)
            kind = feature.window.kind + ("-tiled" if feature.window.slide_ms else "")
            if len(window) > reference.QUANTILE_LEVEL_CAPACITY:
                big[kind] = big.get(kind, 0) + 1
    assert overtaken > 0.1 * len(workload.accepted), overtaken
    for kind in ("lifetime", "sliding-tiled", "sliding", "tumbling", "session"):
        assert big.get(kind, 0) > 100, (kind, big)


def test_features_rows_are_within_the_bounds_of_the_reference(workload: Workload,
                                                               streamed: tuple[Path, pa.Table]) -> None:
    spec = workload.spec
    table = streamed[1].to_pylist()
    assert [r["seq"] for r in table] == list(range(len(workload.accepted)))
    qualifying: dict[tuple[int, str], list[reference.Event]] = {}
    mismatches = []
    for row, event in zip(table, workload.accepted):
        assert row["entity"] == event.entity
        for j, feature in enumerate(spec.features):
            prefix = qualifying.setdefault((j, event.entity), [])
            if reference.qualifies(feature, event):
                prefix.append(event)
            expected, window = reference.value_from_qualifying(feature, prefix, event.time_ms)
            if not _ok(feature, window, expected, row[feature.name]):
                mismatches.append(f"seq {row['seq']} (line {event.line}, {event.entity}, t {event.time_ms}) "
                                  f"{feature.name}: reference {expected!r} over {len(window)} values, "
                                  f"table {row[feature.name]!r}")
    assert not mismatches, f"{len(mismatches)} mismatches\n" + "\n".join(mismatches[:20])


def test_percentile_columns_are_doubles_and_first_strings(streamed: tuple[Path, pa.Table]) -> None:
    schema = streamed[1].schema
    for name in ("ts_life_p50", "ts_life_p95", "ts_life_p7", "amount_life_p50", "ts_10m_p95", "ts_5m_p95", "ts_15m_p0",
                 "ts_15m_p100", "ts_session_p99_9"):
        assert schema.field(name).type == pa.float64(), (name, schema)
    for name in ("first_category", "first_amount_10m", "first_ts_15m"):
        assert schema.field(name).type == pa.string(), (name, schema)


def test_backfill_rewrites_the_streamed_table_bit_for_bit(workload: Workload,
                                                           streamed: tuple[Path, pa.Table]) -> None:
    check_backfill_rewrites_bit_for_bit(workload.spec_path, *streamed)


def test_a_run_resumed_from_its_checkpoint_writes_the_same_rows(workload: Workload, tmp_path: Path,
                                                                streamed: tuple[Path, pa.Table]) -> None:
    """The sketches, first values and recent events with their marks go through a checkpoint half way."""
    check_resumed_run_writes_the_same_rows(workload, tmp_path, streamed[1])


def test_lookups_at_or_after_the_horizon_are_within_the_bounds(workload: Workload, tmp_path: Path) -> None:
    spec = workload.spec
    evaluator = reference.Evaluator(spec, workload.accepted)
    newest: dict[str, int] = {}
    for event in workload.accepted:
        newest[event.entity] = max(newest.get(event.entity, event.time_ms), event.time_ms)
    horizon = max(newest.values()) - MAX_OUT_OF_ORDERNESS_MS - ALLOWED_LATENESS_MS
    rng = random.Random(3)
    points = [(e, rng.randint(min(horizon, newest[e]), newest[e] + 120_000)) for e in sorted(newest) for _ in range(10)]
    server = Server(workload.spec_path, tmp_path / "data", tmp_path / "run.log")
    mismatches = []
    try:
        _wait_until_read(server, len(workload.lines))
        for entity, at in points:
            answer = json.loads(server.get(f"/v1/features/{entity}?at={at}"))
            assert answer["exact"] is True, answer
            for j, feature in enumerate(spec.features):
                expected, window = evaluator.value(j, entity, at)
                if not _ok(feature, window, expected, answer["features"][feature.name]):
                    mismatches.append(f"{entity} at {at} {feature.name}: reference {expected!r} over {len(window)} "
                                      f"values, served {answer['features'][feature.name]!r}")
    finally:
        _stop(server)
    assert not mismatches, f"{len(mismatches)} mismatches\n" + "\n".join(mismatches[:20])


def test_historical_rows_are_within_the_bounds(workload: Workload, tmp_path: Path) -> None:
    spec = workload.spec
    evaluator = reference.Evaluator(spec, workload.accepted)
    rows = sample_rows(workload, seed=4, count=300, after_ms=600_000, at_events=100)
    answers = historical_answers(workload, tmp_path, ["user_id", "ts"], [[e, t] for e, t in rows])
    mismatches = []
    for (entity, t), answer in zip(rows, answers, strict=True):
        for j, feature in enumerate(spec.features):
            expected, window = evaluator.value(j, entity, t)
            cell = answer[feature.name]
            got: Any = None
            if cell != "":
                got = float(cell) if feature.aggregation == "approx_percentile" else cell
            if feature.aggregation == "first" and expected is not None:
                ok = cell == reference.format_value(expected)
            else:
                ok = _ok(feature, window, expected, got)
            if not ok:
                mismatches.append(f"{entity} at {t} {feature.name}: reference {expected!r} over {len(window)} values, "
                                  f"historical {cell!r}")
    assert not mismatches, f"{len(mismatches)} mismatches\n" + "\n".join(mismatches[:20])

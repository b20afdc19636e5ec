"""top_k, last_k and count_distinct over a list of fields in every window type, through every path that computes
features (issue 15).

A workload of a few busy users with 20 s of disorder within the watermark runs through `freshet run`. Its
item_id values are many and skewed, so top_k windows go beyond the summary's exact capacity (64 distinct values
at k <= 16) in every window type, while category stays within it. Every row of the features table is checked
against the brute-force reference (tests/reference.py) over the events accepted up to it: last_k and
count_distinct equal, top_k equal while exact and within the Misra-Gries bound beyond, approx_count_distinct
within its bound (the table's lists hold their values as text, mapped back to the window's values). Then: the
columns are Parquet lists (read back with pyarrow and DuckDB); a backfill rewrites the table bit for bit; a
run resumed from its checkpoint writes the same table; lookups at or after the horizon answer JSON lists within
the bounds; `freshet historical` answers rows at arbitrary times within them too.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import deltalake
import duckdb
import pyarrow as pa
import pytest

import reference
from asof_exact_test import BIN, Server, _stop, _wait_until_read
from feature_runs import (Workload, check_backfill_rewrites_bit_for_bit, check_resumed_run_writes_the_same_rows,
                          generated_events, historical_answers, make_workload, sample_rows, stream)

MAX_OUT_OF_ORDERNESS_MS = 10_000
ALLOWED_LATENESS_MS = 30_000

SPEC = """name: lists
entity: user_id
timestamp: ts
watermark: {{max_out_of_orderness: 10s, allowed_lateness: 30s}}
source: {{type: file, path: {events}, follow: false}}
serve: {{port: 0}}
features:
  - {{name: top_item_life, aggregation: top_k, k: 3, field: item_id, window: {{type: lifetime}}}}
  - {{name: top_item_10m, aggregation: top_k, k: 2, field: item_id, window: {{type: sliding, size: 10m, slide: 1m}}}}
  - {{name: top_item_5m, aggregation: top_k, k: 3, field: item_id, window: {{type: sliding, size: 5m}}}}
  - {{name: top_item_15m, aggregation: top_k, k: 4, field: item_id, window: {{type: tumbling, size: 15m}}}}
  - {{name: top_item_session, aggregation: top_k, k: 3, field: item_id, window: {{type: session, gap: 1m}}}}
  - {{name: top_category_10m, aggregation: top_k, k: 3, field: category, where: "type == 'view'", window: {{type: sliding, size: 10m, slide: 1m}}}}
  - {{name: top_amount_life, aggregation: top_k, k: 2, field: amount, window: {{type: lifetime}}}}
  - {{name: last_category_life, aggregation: last_k, k: 3, field: category, window: {{type: lifetime}}}}
  - {{name: last_amount_10m, aggregation: last_k, k: 2, field: amount, window: {{type: sliding, size: 10m, slide: 1m}}}}
  - {{name: last_type_5m, aggregation: last_k, k: 4, field: type, window: {{type: sliding, size: 5m}}}}
  - {{name: last_ts_15m, aggregation: last_k, k: 3, field: ts, window: {{type: tumbling, size: 15m}}}}
  - {{name: last_item_session, aggregation: last_k, k: 5, field: item_id, window: {{type: session, gap: 1m}}}}
  - {{name: pairs_life, aggregation: count_distinct, field: [category, type], window: {{type: lifetime}}}}
  - {{name: pairs_10m, aggregation: count_distinct, field: [type, device], window: {{type: sliding, size: 10m, slide: 1m}}}}
  - {{name: pairs_5m, aggregation: count_distinct, field: [category, item_id], window: {{type: sliding, size: 5m}}}}
  - {{name: pairs_15m, aggregation: count_distinct, field: [category, type], window: {{type: tumbling, size: 15m}}}}
  - {{name: pairs_session, aggregation: count_distinct, field: [item_id, category], window: {{type: session, gap: 1m}}}}
  - {{name: approx_pairs_life, aggregation: approx_count_distinct, field: [category, item_id], window: {{type: lifetime}}}}
  - {{name: approx_pairs_5m, aggregation: approx_count_distinct, field: [type, category], precision: 6, window: {{type: sliding, size: 5m}}}}
"""


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    tmp = tmp_path_factory.mktemp("lists")
    return make_workload(tmp, generated_events(tmp / "events.jsonl"), lambda events: SPEC.format(events=events))


@pytest.fixture(scope="module")
def streamed(workload: Workload, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    return stream(workload, tmp_path_factory.mktemp("lists-run") / "data")


def _ok(feature: reference.Feature, window: list[reference.Event], expected: Any, got: Any) -> bool:
    """The engine's value (lists as parsed JSON) against the reference's window."""
    if feature.aggregation == "top_k":
        values = [reference.input_value(feature, e.record) for e in window]
        return reference.top_k_ok(values, feature.k, got)
    if feature.aggregation == "approx_count_distinct":
        return got is not None and reference.approx_count_distinct_ok(expected, got, feature.precision)
    return reference.typed(got) == reference.typed(expected)


def _parsed(feature: reference.Feature, cell: Any) -> Any:
    """A CSV cell as the value it holds: the lists' JSON text parsed, counts as integers."""
    if feature.aggregation in reference.LIST_AGGREGATIONS:
        return None if cell is None else json.loads(cell)
    return int(cell) if isinstance(cell, str) else cell


def test_the_workload_reaches_both_top_k_regimes_and_disorder_in_every_window(workload: Workload) -> None:
    """Each window type has top_k rows beyond the exact capacity and rows within it, and many events arrive out
    of order (their rows must leave out later events accepted before them)."""
    newest: dict[str, int] = {}
    overtaken = 0
    regimes: dict[tuple[str, bool], int] = {}
    qualifying: dict[tuple[int, str], list[reference.Event]] = {}
    for event in workload.accepted:
        if event.time_ms < newest.get(event.entity, event.time_ms):
            overtaken += 1
        newest[event.entity] = max(newest.get(event.entity, event.time_ms), event.time_ms)
        for j, feature in enumerate(workload.spec.features):
            if feature.aggregation != "top_k" or feature.field != "item_id":
                continue
            prefix = qualifying.setdefault((j, event.entity), [])
            if reference.qualifies(feature, event):
                prefix.append(event)
            _, window = reference.value_from_qualifying(feature, prefix, event.time_ms)
            distinct = len(reference.value_counts([reference.input_value(feature, e.record) for e in window]))
            kind = feature.window.kind + ("-tiled" if feature.window.slide_ms else "")
            beyond = distinct > reference.top_k_capacity(feature.k)
            regimes[(kind, beyond)] = regimes.get((kind, beyond), 0) + 1
    assert overtaken > 0.1 * len(workload.accepted), overtaken
    for kind in ("lifetime", "sliding-tiled", "sliding", "tumbling", "session"):
        assert regimes.get((kind, True), 0) > 100 and regimes.get((kind, False), 0) > 20, (kind, regimes)


def test_features_rows_match_the_reference(workload: Workload, streamed: tuple[Path, pa.Table]) -> None:
    spec = workload.spec
    table = streamed[1].to_pylist()
    assert [r["seq"] for r in table] == list(range(len(workload.accepted)))
    qualifying: dict[tuple[int, str], list[reference.Event]] = {}
    mismatches = []
    by_feature: dict[str, int] = {}
    for row, event in zip(table, workload.accepted):
        assert row["entity"] == event.entity
        for j, feature in enumerate(spec.features):
            prefix = qualifying.setdefault((j, event.entity), [])
            if reference.qualifies(feature, event):
                prefix.append(event)
            expected, window = reference.value_from_qualifying(feature, prefix, event.time_ms)
            got = row[feature.name]
            if feature.aggregation in reference.LIST_AGGREGATIONS:
                got = reference.list_from_table(feature.aggregation, got,
                                                [reference.input_value(feature, e.record) for e in window])
            if not _ok(feature, window, expected, got):
                by_feature[feature.name] = by_feature.get(feature.name, 0) + 1
                mismatches.append(f"seq {row['seq']} (line {event.line}, {event.entity}, t {event.time_ms}) "
                                  f"{feature.name}: reference {expected!r} over {len(window)} values, table {got!r}")
    assert not mismatches, f"{len(mismatches)} mismatches, by feature {by_feature}\n" + "\n".join(mismatches[:20])


def test_list_columns_are_parquet_lists_and_pair_counts_longs(streamed: tuple[Path, pa.Table]) -> None:
    """top_k is list<struct<value: string, count: int64>>, last_k list<string>, in the Delta schema and in the
    files, which DuckDB reads as lists too (the same values as pyarrow through Delta)."""
    data_dir, table = streamed
    top = pa.list_(pa.field("element", pa.struct([pa.field("value", pa.string(), False),
                                                 pa.field("count", pa.int64(), False)]), False))
    for name in ("top_item_life", "top_item_5m", "top_category_10m", "top_amount_life"):
        assert table.schema.field(name).type == top, (name, table.schema.field(name).type)
    for name in ("last_category_life", "last_amount_10m", "last_ts_15m", "last_item_session"):
        assert table.schema.field(name).type == pa.list_(pa.field("element", pa.string())), (name, table.schema)
    for name in ("pairs_life", "pairs_session", "approx_pairs_life"):
        assert table.schema.field(name).type == pa.int64(), (name, table.schema)
    files = deltalake.DeltaTable(str(data_dir / "offline" / "features")).file_uris()
    query = ("SELECT seq, top_item_life[1].value, top_item_life[1].count, len(top_item_life), last_ts_15m[1], "
             "len(last_ts_15m) FROM read_parquet(?) ORDER BY seq")
    got = duckdb.connect().execute(query, [files]).fetchall()

    def first(cell: list | None) -> Any:
        return cell[0] if cell else None
    expected = [(r["seq"], (first(r["top_item_life"]) or {}).get("value"), (first(r["top_item_life"]) or {}).get("count"),
                 None if r["top_item_life"] is None else len(r["top_item_life"]), first(r["last_ts_15m"]),
                 None if r["last_ts_15m"] is None else len(r["last_ts_15m"])) for r in table.to_pylist()]
    assert any(e[3] for e in expected) and any(e[5] for e in expected)
    assert got == expected, next((g, e) for g, e in zip(got, expected) if g != e)


def test_backfill_rewrites_the_streamed_table_bit_for_bit(workload: Workload,
                                                           streamed: tuple[Path, pa.Table]) -> None:
    check_backfill_rewrites_bit_for_bit(workload.spec_path, *streamed)


def test_a_run_resumed_from_its_checkpoint_writes_the_same_rows(workload: Workload, tmp_path: Path,
                                                                streamed: tuple[Path, pa.Table]) -> None:
    """The summaries, lists, pair sets and recent events with their marks go through a checkpoint half way."""
    check_resumed_run_writes_the_same_rows(workload, tmp_path, streamed[1])


def test_lookups_at_or_after_the_horizon_answer_json_lists_within_the_bounds(workload: Workload,
                                                                            tmp_path: Path) -> None:
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
                got = answer["features"][feature.name]
                if feature.aggregation in reference.LIST_AGGREGATIONS:
                    assert isinstance(got, list), (feature.name, got)
                if not _ok(feature, window, expected, got):
                    mismatches.append(f"{entity} at {at} {feature.name}: reference {expected!r} over {len(window)} "
                                      f"values, served {got!r}")
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
            got = _parsed(feature, answer[feature.name])
            if not _ok(feature, window, expected, got):
                mismatches.append(f"{entity} at {t} {feature.name}: reference {expected!r} over {len(window)} values, "
                                  f"historical {answer[feature.name]!r}")
    assert not mismatches, f"{len(mismatches)} mismatches\n" + "\n".join(mismatches[:20])


def test_historical_parquet_and_sdk_frames_hold_lists(workload: Workload, tmp_path: Path) -> None:
    """`freshet historical --output x.parquet` writes the lists as Parquet lists (the values as text), holding the
    same lists as its CSV's JSON text; the SDK's frame from it holds them as Python lists."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))  # The SDK of this checkout.
    import freshet
    import pandas as pd
    import pyarrow.parquet as pq

    rows = sample_rows(workload, seed=6, count=40, after_ms=600_000)
    answers = historical_answers(workload, tmp_path, ["user_id", "ts"], [[e, t] for e, t in rows])
    out = tmp_path / "out.parquet"
    subprocess.run([BIN, "historical", "--spec", str(workload.spec_path), "--events", str(workload.events_path),
                    "--entities", str(tmp_path / "entities.csv"), "--output", str(out), "--no-progress"], check=True,
                   timeout=300, stderr=subprocess.DEVNULL)
    table = pq.read_table(out)
    frame = freshet.get_historical_features(
        str(workload.spec_path), pd.DataFrame({"user_id": [e for e, _ in rows], "ts": [t for _, t in rows]}),
        events=str(workload.events_path), binary=BIN, output_format="parquet")
    for feature in workload.spec.features:
        if feature.aggregation not in reference.LIST_AGGREGATIONS:
            continue
        assert pa.types.is_list(table.schema.field(feature.name).type), (feature.name, table.schema)
        expected = []
        for answer in answers:
            parsed = json.loads(answer[feature.name])
            if feature.aggregation == "top_k":
                expected.append([{"value": reference.list_element_text(i["value"]), "count": i["count"]}
                                 for i in parsed])
            else:
                expected.append([reference.list_element_text(v) for v in parsed])
        assert table.column(feature.name).to_pylist() == expected, feature.name
        assert list(frame[feature.name]) == expected, feature.name
    assert any(expected)

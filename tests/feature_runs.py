"""The steps that the end-to-end tests of aggregations, keys and expiry share: a workload (an events file, its spec
and what tests/reference.py accepts of it), a `freshet run` to the end of the file, and the two replay checks
(a backfill rewrites the features table bit for bit; a run stopped part way and resumed from its checkpoint writes
the same table), and `freshet historical` over entity rows. The checks against the reference of exact features
(features-table rows, lookups) are here too; checks of sketches stay in each test file, since each has its own
notion of "right" (within a rank bound, within a Misra-Gries bound)."""
from __future__ import annotations

import csv
import math
import random
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

import reference
from asof_exact_test import BIN, _features_table, _require_binary

SpecText = Callable[[Path], str]  # the spec's text over an events file


@dataclass
class Workload:
    events_path: Path
    spec_path: Path
    spec: reference.Spec
    lines: list[bytes]
    accepted: list[reference.Event]
    spec_text: SpecText
    bad_lines: list[int] = field(default_factory=list)


def generated_events(path: Path, seed: int = 15, users: int = 8, events: int = 4000) -> bytes:
    """`freshet generate` of a few busy users over 30 minutes with 20 s of disorder and 1% late events."""
    _require_binary()
    subprocess.run([BIN, "generate", "--users", str(users), "--events", str(events), "--seed", str(seed),
                    "--duration", "30m", "--disorder", "20s", "--late-share", "0.01", "--no-progress",
                    "--output", str(path)], check=True, timeout=60)
    return path.read_bytes()


def make_workload(tmp: Path, data: bytes, spec_text: SpecText) -> Workload:
    """Writes `data` (if not there yet) and its spec to `tmp`; the reference reads both."""
    _require_binary()
    events = tmp / "events.jsonl"
    if not events.exists():
        events.write_bytes(data)
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(spec_text(events))
    spec = reference.load_spec(str(spec_path))
    accepted, _ = reference.read_events(data, spec)
    return Workload(events, spec_path, spec, reference.split_lines(data), accepted, spec_text)


def with_parallelism(text: str, parallelism: int) -> str:
    """A spec's text with `parallelism` set (0 leaves it out: the default)."""
    return text + (f"parallelism: {parallelism}\n" if parallelism else "")


def run_to_end(spec_path: Path, data_dir: Path) -> None:
    subprocess.run([BIN, "run", "--spec", str(spec_path), "--data-dir", str(data_dir), "--exit-at-end"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)


def stream(workload: Workload, data_dir: Path, parallelism: int = 0) -> tuple[Path, pa.Table]:
    """`freshet run --exit-at-end` over the workload (on `parallelism` threads); the data directory and its
    features table."""
    spec_path = workload.spec_path
    if parallelism:
        spec_path = data_dir.parent / f"spec-p{parallelism}.yaml"
        spec_path.write_text(with_parallelism(workload.spec_text(workload.events_path), parallelism))
    run_to_end(spec_path, data_dir)
    return data_dir, _features_table(data_dir)


def check_backfill_rewrites_bit_for_bit(spec_path: Path, data_dir: Path, table: pa.Table) -> None:
    """`freshet backfill` over the data directory's events table writes the very same features table."""
    subprocess.run([BIN, "backfill", "--spec", str(spec_path), "--data-dir", str(data_dir), "--no-progress"],
                   check=True, timeout=300, stderr=subprocess.DEVNULL)
    backfilled = _features_table(data_dir)
    if not backfilled.equals(table):
        differ = [f"seq {a['seq']}: streamed {a}, backfilled {b}"
                  for a, b in zip(table.to_pylist(), backfilled.to_pylist()) if a != b]
        raise AssertionError(f"{len(differ)} rows differ ({backfilled.num_rows} rows backfilled, {table.num_rows} "
                             "streamed)\n" + "\n".join(differ[:5]))


def check_resumed_run_writes_the_same_rows(workload: Workload, tmp: Path, table: pa.Table, parts: int = 2) -> None:
    """The input arrives in `parts` pieces, each read by a `freshet run --exit-at-end` that resumes from the
    previous one's checkpoint: the features table equals the single run's."""
    events = tmp / "events.jsonl"
    cuts = [len(workload.lines) * k // parts for k in range(parts + 1)]
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(workload.spec_text(events))
    data_dir = tmp / "data"
    events.write_bytes(b"")
    for k in range(parts):
        with open(events, "ab") as f:
            f.write(b"".join(line + b"\n" for line in workload.lines[cuts[k]:cuts[k + 1]]))
        run_to_end(spec_path, data_dir)
    resumed = _features_table(data_dir)
    assert resumed.equals(table), "the resumed run's features table differs from the single run's"


def historical_answers(workload: Workload, tmp: Path, header: list[str], rows: list[list[Any]]) -> list[dict]:
    """`freshet historical` over the workload's events file for the entity rows (`header`: the key columns and the
    time column): the output CSV's rows, one per entity row, in order."""
    entities_csv = tmp / "entities.csv"
    with open(entities_csv, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    out = tmp / "out.csv"
    subprocess.run([BIN, "historical", "--spec", str(workload.spec_path), "--events", str(workload.events_path),
                    "--entities", str(entities_csv), "--output", str(out), "--no-progress"], check=True, timeout=300,
                   stderr=subprocess.DEVNULL)
    with open(out, newline="", encoding="utf-8") as f:
        answers = list(csv.DictReader(f))
    assert len(answers) == len(rows), (len(answers), len(rows))
    return answers


def sample_rows(workload: Workload, seed: int, count: int, after_ms: int, at_events: int = 0) -> list[tuple]:
    """(entity, t) rows: `count` at random times from a minute before the first event to `after_ms` after the
    last, then `at_events` at the times of random accepted events."""
    rng = random.Random(seed)
    times = [e.time_ms for e in workload.accepted]
    entities = sorted({e.entity for e in workload.accepted}, key=repr)
    rows = [(rng.choice(entities), rng.randint(min(times) - 60_000, max(times) + after_ms)) for _ in range(count)]
    return rows + [(e.entity, e.time_ms) for e in rng.sample(workload.accepted, at_events)]


def same_value(expected: Any, got: Any) -> bool:
    """A served or stored value against the reference's: missing or None equal null (or NaN); strings exactly;
    numbers to 1e-9 relative."""
    if expected is None or expected is reference.MISSING:
        return got is None or (isinstance(got, float) and math.isnan(got))
    if got is None:
        return False
    if isinstance(expected, str):
        return got == expected
    return math.isclose(float(expected), float(got), rel_tol=1e-9, abs_tol=1e-9)


def features_table_mismatches(spec: reference.Spec, rows: list[dict], events: list[reference.Event]) -> list[str]:
    """Each features-table row (in seq order) against the reference: the row of event k is its entity's value as of
    its time over the entity's events up to it (for workloads whose accepted events are in time order)."""
    mismatches = []
    prefix: dict[str, list[reference.Event]] = {}
    for row, event in zip(rows, events):
        prefix.setdefault(event.entity, []).append(event)
        for feature in spec.features:
            expected, _ = reference.feature_value(feature, prefix[event.entity], event.time_ms, spec)
            got = row[feature.name]
            if feature.aggregation == "last_k":  # A Parquet list of the values' texts (README, "The offline store").
                got = None if got is None else list(got)
                expected = None if expected is None else [reference.list_element_text(v) for v in expected]
                same = expected == got
            else:
                same = same_value(expected, got)
            if not same:
                mismatches.append(f"seq {row['seq']} {feature.name}: reference {expected!r}, table {got!r}")
    return mismatches


def lookup_mismatches(get_answer: Callable[[str, int], dict], spec: reference.Spec, events: list[reference.Event],
                      at_ms: int) -> list[str]:
    """Every entity's served features as of `at_ms` (`get_answer(entity, at_ms)`: the GET /v1/features answer) against
    the reference over all its events; an answer as of a time at or after the entity's newest event must say exact."""
    mismatches = []
    for entity, entity_events in sorted(reference.group_by_entity(events).items()):
        answer = get_answer(entity, at_ms)
        if answer.get("exact") is not True and at_ms >= max(e.time_ms for e in entity_events):
            mismatches.append(f"lookup {entity}: not exact as of {at_ms}: {answer!r}")
        for feature in spec.features:
            expected, _ = reference.feature_value(feature, entity_events, at_ms, spec)
            got = answer["features"][feature.name]
            if not same_value(expected, got):
                mismatches.append(f"lookup {entity} {feature.name}: reference {expected!r}, stream {got!r}")
    return mismatches


def check_offline_paths(spec_path: Path, data_dir: Path, spec: reference.Spec, events: list[reference.Event],
                        users: tuple[int, ...], every: int) -> pa.Table:
    """The run's features table equals the reference row for row, a backfill rewrites it bit for bit, and `freshet
    historical` from the store agrees at the times of historical_store_at_times_mismatches. Returns the table."""
    streamed = _features_table(data_dir)
    mismatches = features_table_mismatches(spec, streamed.to_pylist(), events)
    assert not mismatches, "\n".join(mismatches[:20])
    check_backfill_rewrites_bit_for_bit(spec_path, data_dir, streamed)
    mismatches = historical_store_at_times_mismatches(spec_path, data_dir, spec, events, users, every)
    assert not mismatches, "\n".join(mismatches[:20])
    return streamed


def historical_store_at_times_mismatches(spec_path: Path, data_dir: Path, spec: reference.Spec,
                                         events: list[reference.Event], users: tuple[int, ...],
                                         every: int) -> list[str]:
    """historical_store_mismatches for users u<N> in `users`, each at every `every`-th distinct event time + 0.5 s
    (between and after the events); the entity rows go to rows.csv beside `data_dir`."""
    times = sorted({e.time_ms for e in events})
    rows_csv = data_dir.parent / "rows.csv"
    rows_csv.write_text("user,ts\n" + "".join(f"u{u},{times[k] + 500}\n" for u in users
                                              for k in range(0, len(times), every)))
    return historical_store_mismatches(spec_path, data_dir, rows_csv, spec, events)


def historical_store_mismatches(spec_path: Path, data_dir: Path | None, rows_csv: Path, spec: reference.Spec,
                                events: list[reference.Event], inputs: list[str] | None = None) -> list[str]:
    """`freshet historical` from the offline store (`--data-dir`; or from `inputs`, e.g. --events F --table T=F,
    when given) for the entity rows in `rows_csv` (columns user, ts), each answer against reference.compute over
    `events`: texts equal for `last` and empty cells, numbers to 1e-9."""
    out = rows_csv.with_suffix(".out.csv")
    inputs = inputs if inputs is not None else ["--data-dir", str(data_dir)]
    subprocess.run([BIN, "historical", "--spec", str(spec_path), "--entities", str(rows_csv), "--output", str(out),
                    "--no-progress", *inputs], check=True)
    with open(out, newline="") as f:
        got = list(csv.DictReader(f))
    expected = reference.compute(spec, events, reference.read_entity_rows(str(rows_csv), spec))
    assert len(got) == len(expected), (len(got), len(expected))
    mismatches = []
    for row, values in zip(got, expected):
        for feature, value in zip(spec.features, values):
            want, cell = reference.format_value(value), row[feature.name]
            same = cell == want if feature.aggregation == "last" or "" in (want, cell) else \
                math.isclose(float(cell), float(want), rel_tol=1e-9, abs_tol=1e-9)
            if not same:
                mismatches.append(f"historical {row['user']}@{row['ts']} {feature.name}: reference {want!r}, "
                                  f"got {cell!r}")
    return mismatches

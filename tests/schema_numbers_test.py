"""Field types end to end (issue 13): a spec's `schema:` and numbers in strings.

On one generated stream whose fields are sometimes of another type (`"amount": "12.5"`, `" 3"`, `"abc"`, `true`,
an object, null, absent; `"category": 5`), three specs that differ only in their schema:
- `from_string`: `amount: {type: number, from_string: true}`, so "12.5" reads as 12.5 (in `where` too);
- `typed`: `amount: number`, so "12.5" is of the wrong type, skipped and counted;
- `plain`: no schema at all, as before schemas.
For each, `freshet historical` agrees with the brute-force reference (tests/reference.py, which reads the schema
itself) in every cell and in the skipped-field counts of its summary line, and `freshet run` on the same file
exposes the same counts as freshet_events_skipped_total{feature,reason} in /metrics.

Run by ctest (which sets FRESHET_BIN), or by hand:
    FRESHET_BIN=build/freshet .venv/bin/python -m pytest -q tests/schema_numbers_test.py
"""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

import historical_diff_test as diff
import reference as ref
from run_process import start_run

BIN = os.environ.get("FRESHET_BIN")
pytestmark = pytest.mark.skipif(not BIN, reason="set FRESHET_BIN to the freshet binary")

T0 = 1767268800000  # 2026-01-01T12:00:00Z
USERS = [f"u{k}" for k in range(6)]

FEATURES = [
    {"name": "purchases", "aggregation": "count", "where": "type == 'purchase'", "window": {"type": "lifetime"}},
    {"name": "total", "aggregation": "sum", "field": "amount", "where": "type == 'purchase'",
     "window": {"type": "lifetime"}},
    {"name": "big_purchases", "aggregation": "count", "where": "type == 'purchase' and amount > 10",
     "window": {"type": "sliding", "size": "30m"}},
    {"name": "avg_amount_1h", "aggregation": "mean", "field": "amount", "window": {"type": "sliding", "size": "1h"}},
    {"name": "max_amount", "aggregation": "max", "field": "amount", "window": {"type": "tumbling", "size": "1h"}},
    {"name": "last_category", "aggregation": "last", "field": "category", "window": {"type": "lifetime"}},
    {"name": "categories", "aggregation": "count_distinct", "field": "category",
     "window": {"type": "session", "gap": "20m"}},
]

SCHEMAS = {
    "from_string": {"user_id": "string", "ts": "timestamp", "type": "string",
                    "amount": {"type": "number", "from_string": True}, "category": "string"},
    "typed": {"user_id": "string", "ts": "timestamp", "type": "string", "amount": "number", "category": "string"},
    "plain": None,
}

AMOUNTS = [12, 7.5, 25, "12.5", "7", "-3", "1e2", "30", " 3", "abc", "", True, {"v": 1}, None, "MISSING"]
CATEGORIES = ["books", "toys", "food", 5, None, "MISSING"]


def draw_events(rng: random.Random) -> bytes:
    lines = []
    t = T0
    for _ in range(600):
        t += rng.randrange(0, 90_000)
        event = {"user_id": rng.choice(USERS), "ts": t, "type": rng.choice(["purchase", "purchase", "view"])}
        amount, category = rng.choice(AMOUNTS), rng.choice(CATEGORIES)
        if amount != "MISSING":
            event["amount"] = amount
        if category != "MISSING":
            event["category"] = category
        lines.append(json.dumps(event))
    return ("\n".join(lines) + "\n").encode()


def write_case(folder: Path, schema: dict | None, events: bytes, rng: random.Random) -> dict:
    spec = {"name": "schema_numbers", "entity": "user_id", "timestamp": "ts"}
    if schema is not None:
        spec["schema"] = schema
    spec.update({"source": {"type": "file", "path": "events.jsonl"}, "serve": {"port": 0}, "features": FEATURES})
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: str(folder / name) for name in ("spec.yaml", "events.jsonl", "entities.csv", "output.csv",
                                                    "dead.jsonl")}
    Path(paths["spec.yaml"]).write_text(yaml.safe_dump(spec, sort_keys=False, width=1000))
    Path(paths["events.jsonl"]).write_bytes(events)
    last = max(json.loads(line)["ts"] for line in events.splitlines())
    rows = [(rng.choice(USERS), rng.randrange(T0, last + 3_600_000)) for _ in range(200)]
    Path(paths["entities.csv"]).write_text("user_id,ts\n" + "".join(f"{u},{t}\n" for u, t in rows))
    return paths


def summary_text(skips: dict[str, dict[str, int]]) -> str:
    """The reference's skip counts as `freshet historical` words them (features in spec order)."""
    total = sum(sum(by_reason.values()) for by_reason in skips.values())
    if total == 0:
        return ""
    parts = []
    for feature in FEATURES:
        by_reason = skips.get(feature["name"])
        if by_reason:
            parts.append(feature["name"] + ": " + ", ".join(f"{by_reason[r]} {r}" for r in
                                                            ("missing", "null", "wrong_type") if r in by_reason))
    return f"; {total} skipped field{'' if total == 1 else 's'} ({'; '.join(parts)});"


def scrape_skips(port: int) -> dict[str, dict[str, int]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    skips: dict[str, dict[str, int]] = {}
    for feature, reason, value in re.findall(
            r'^freshet_events_skipped_total\{feature="([^"]+)",reason="([^"]+)"\} (\S+)$', text, re.M):
        if float(value) > 0:
            skips.setdefault(feature, {})[reason] = int(float(value))
    return skips


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return float("nan")


@pytest.mark.parametrize("variant", list(SCHEMAS))
def test_numbers_in_strings_converted_or_counted_as_the_reference_says(variant: str, tmp_path: Path) -> None:
    rng = random.Random(13)
    events = draw_events(rng)
    paths = write_case(tmp_path / variant, SCHEMAS[variant], events, rng)
    spec = ref.load_spec(paths["spec.yaml"])
    accepted, dead = ref.read_events(events, spec)
    assert not dead
    want_skips = ref.skip_counts(spec, accepted)

    # What each variant should show at all: with from_string the strings "12.5", "7", "-3", "1e2" and "30" are
    # numbers (for `where` and aggregations alike); with a schema, `last` skips the category 5; without one it
    # takes it.
    raw_numbers = sum(ref.is_number(json.loads(line).get("amount")) for line in events.splitlines())
    read_numbers = sum(ref.is_number(e.record.get("amount")) for e in accepted)
    assert (read_numbers > raw_numbers) == (variant == "from_string")
    assert ("wrong_type" in want_skips.get("last_category", {})) == (variant != "plain")
    assert "wrong_type" in want_skips["total"]  # " 3", "abc", "", true, an object: never numbers.

    # freshet historical: every cell, and the summary's skip counts.
    diff.run_engine(paths)
    problems = diff.compare(paths, f"historical ({variant})")
    assert not problems, "\n".join(problems)
    result = subprocess.run([BIN, "historical", "--spec", paths["spec.yaml"], "--events", paths["events.jsonl"],
                             "--entities", paths["entities.csv"], "--output", str(tmp_path / "again.csv"),
                             "--no-progress"], capture_output=True, text=True, timeout=120, check=True)
    assert summary_text(want_skips) in result.stderr, (want_skips, result.stderr)

    # freshet run over the same file: /metrics counts the same skips once every event is processed.
    proc, port = start_run([BIN, "run", "--spec", paths["spec.yaml"], "--data-dir", str(tmp_path / "data")],
                           tmp_path / "run.log")
    try:
        deadline = time.monotonic() + 60
        while metric(port, "freshet_events_accepted_total") < len(accepted):
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.05)
        deadline = time.monotonic() + 30  # The counters follow the engines' counts on the metrics tick.
        while (got := scrape_skips(port)) != want_skips and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == want_skips
    finally:
        proc.terminate()
        proc.wait(timeout=60)

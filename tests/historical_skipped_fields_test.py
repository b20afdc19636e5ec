"""`freshet historical` reports the events each feature skipped (issue 13): a field missing, null or of a type the
aggregation cannot take, such as a number in a string (`"amount": "12.5"`), which a sum or mean skips. The summary
line names them as "N skipped fields (feature: N reason, ...; ...)" with the reasons missing, null and wrong_type,
and says nothing of them when there are none.

Run by ctest (which sets FRESHET_BIN), or by hand:
    FRESHET_BIN=build/freshet .venv/bin/python -m pytest -q tests/historical_skipped_fields_test.py
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

BIN = os.environ.get("FRESHET_BIN")
pytestmark = pytest.mark.skipif(not BIN, reason="set FRESHET_BIN to the freshet binary")

SPEC = """name: skips
entity: user_id
timestamp: ts
features:
  - {name: purchases, aggregation: count, where: "type == 'purchase'", window: {type: lifetime}}
  - {name: total, aggregation: sum, field: amount, where: "type == 'purchase'", window: {type: lifetime}}
  - {name: avg_amount, aggregation: mean, field: amount, where: "type == 'purchase'", window: {type: lifetime}}
  - {name: last_category, aggregation: last, field: category, window: {type: lifetime}}
"""

T0 = 1767268800000


def historical(tmp: Path, events: list[dict]) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    (tmp / "spec.yaml").write_text(SPEC)
    (tmp / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (tmp / "entities.csv").write_text(f"user_id,ts\nu1,{T0 + 60_000}\n")
    r = subprocess.run([BIN, "historical", "--spec", str(tmp / "spec.yaml"), "--events", str(tmp / "events.jsonl"),
                        "--entities", str(tmp / "entities.csv"), "--output", str(tmp / "out.csv"), "--no-progress"],
                       capture_output=True, text=True, timeout=60)
    row = {}
    if r.returncode == 0:
        with open(tmp / "out.csv", newline="") as f:
            row = next(csv.DictReader(f))
    return r, row


def test_a_number_in_a_string_is_a_skipped_field_and_reported(tmp_path: Path) -> None:
    events = [
        {"user_id": "u1", "ts": T0 + 1000, "type": "purchase", "amount": 10, "category": "books"},
        {"user_id": "u1", "ts": T0 + 2000, "type": "purchase", "amount": "12.5", "category": "toys"},  # a string
        {"user_id": "u1", "ts": T0 + 3000, "type": "purchase", "amount": "7"},  # a string, and no category
        {"user_id": "u1", "ts": T0 + 4000, "type": "purchase", "amount": None, "category": "food"},  # null
        {"user_id": "u1", "ts": T0 + 5000, "type": "view", "category": "food"},  # not a purchase: not a skip
    ]
    r, row = historical(tmp_path, events)
    assert r.returncode == 0, r.stderr
    assert row["purchases"] == "4" and row["total"] == "10" and row["avg_amount"] == "10", row
    # total and avg_amount skip the two strings and the null; last_category skips the event without a category.
    assert ("; 7 skipped fields (total: 1 null, 2 wrong_type; avg_amount: 1 null, 2 wrong_type; "
            "last_category: 1 missing); 1 rows written") in r.stderr, r.stderr


def test_no_skips_no_mention(tmp_path: Path) -> None:
    events = [{"user_id": "u1", "ts": T0 + 1000, "type": "purchase", "amount": 12.5, "category": "books"}]
    r, row = historical(tmp_path, events)
    assert r.returncode == 0, r.stderr
    assert row["total"] == "12.5", row
    assert "skipped" not in r.stderr, r.stderr
    assert "0 duplicates; 1 rows written" in r.stderr, r.stderr

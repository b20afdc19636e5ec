"""Differential test: `freshet historical` against the brute-force reference (tests/reference.py).

Each seed draws a small random case — a spec, a JSON-lines event file, an entities CSV — built so that
the edges of the semantics come up often: events exactly at row times and at t - size, on tile
boundaries, with equal timestamps, out of order within the allowed lateness and beyond it, sessions
that merge and expire, mixed timestamp formats, mixed value types, malformed lines. The engine's output
is compared cell by cell with the reference, and its dead letters line by line.

Over the 30 seeds every aggregation meets every window type (lifetime, continuous sliding, hopping
sliding, tumbling, session). A larger case from `freshet generate` with a fraud-like spec runs too.

The binary is $FRESHET_BIN (set by ctest), else build/freshet in the repository. To debug one seed:

    .venv/bin/python tests/historical_diff_test.py --seed 7 --out /tmp/case7

writes that case's files, runs the engine on them if it exists, and prints every mismatch.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import random
import subprocess
import sys
import warnings
from dataclasses import dataclass

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import reference as ref  # noqa: E402

FRESHET_BIN = os.environ.get("FRESHET_BIN") or os.path.join(REPO, "build", "freshet")
SEEDS = range(30)
MAX_DETAILED_MISMATCHES = 8

# ------------------------------------------------------------------------------------------------
# Drawing a random case
# ------------------------------------------------------------------------------------------------

WINDOW_SHAPES = ("lifetime", "continuous", "hopping", "tumbling", "session")
# Each (aggregation, window shape) pair is given to one seed, so 30 seeds cover all 55.
COVERAGE = [(agg, shape) for agg in ref.AGGREGATIONS for shape in WINDOW_SHAPES]

FIELDS_FOR = {
    "count": [None],
    "sum": ["amount", "amount", "device.ver", "big", "score"],
    "mean": ["amount", "amount", "device.ver", "score"],
    "min": ["amount", "device.ver", "big", "score"],
    "max": ["amount", "device.ver", "big", "score"],
    "stddev": ["amount", "amount", "score", "device.ver"],
    "last": ["amount", "category", "type", "device.os", "success"],
    "count_distinct": ["category", "category", "amount", "device.os", "big", "item"],
    "approx_count_distinct": ["item", "item", "category", "amount"],
    "first": ["amount", "category", "type", "device.os", "success"],
    "approx_percentile": ["amount", "amount", "device.ver", "big", "score"],
}

WHERE_ATOMS = [
    "type == 'purchase'", 'type == "view"', "type != 'login'", "type in ['purchase', 'view']", "type < 'p'",
    "amount > 50", "amount >= 100.5", "amount < 0", "amount <= 10", "amount == 10", "amount != 100",
    "amount == null", "amount != null", "amount > -5.5",
    "device.os == 'ios'", "device.os in ['ios', 'android']", "device.os != 'web'", "device.ver >= 3",
    "device.ver in [1, 2.0, 5]", "success == false", "success", "success != true",
    "category in ['books', 1, true, null]", "category == 'a,b'", "category > 'f'", "category == 'it\\'s'",
    "nosuch == 1", "nosuch != 1", "device.nosuch in [1]", "score > 0.5", "big > 0", "true", "1 == 1.0",
    "category", "device.ver", "not amount", "not type",  # bare operands: true only for the boolean true
    'category == "say \\"hi\\""', "(type == 'view') and (category in ['ünï', 'toys'])",
]


def format_duration(ms: int) -> str:
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def draw_window(rng: random.Random, shape: str) -> dict:
    if shape == "lifetime":
        return {"type": "lifetime"}
    if shape == "continuous":
        size = rng.choice([3000, 5000, 7000, 10_000, 15_000, 30_000, 45_000, 60_000, 90_000, 120_000, 300_000,
                           600_000, 2500])
        return {"type": "sliding", "size": format_duration(size)}
    if shape == "hopping":
        while True:
            slide = rng.choice([1000, 2000, 5000, 10_000, 15_000, 30_000, 60_000, 1500])
            size = slide * rng.randint(1, 10)
            if 3000 <= size <= 600_000:
                return {"type": "sliding", "size": format_duration(size), "slide": format_duration(slide)}
    if shape == "tumbling":
        return {"type": "tumbling", "size": format_duration(
            rng.choice([3000, 5000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1500]))}
    return {"type": "session", "gap": format_duration(
        rng.choice([2000, 5000, 10_000, 30_000, 60_000, 120_000, 300_000, 3500]))}


def draw_where(rng: random.Random, depth: int = 0) -> str:
    r = rng.random()
    if depth >= 2 or r < 0.45:
        return rng.choice(WHERE_ATOMS)
    if r < 0.6:
        return "not " + ("(" + draw_where(rng, depth + 1) + ")" if rng.random() < 0.7 else rng.choice(WHERE_ATOMS))
    a, b = draw_where(rng, depth + 1), draw_where(rng, depth + 1)
    text = f"{a} {rng.choice(['and', 'or'])} {b}"  # unparenthesized: precedence decides
    return f"({text})" if rng.random() < 0.5 else text


# Derived fields (`derive`), in an order where each reads only the ones above it. They meet the same edge values
# as event fields (missing, null, wrong types, composites, int64 overflow).
DERIVE_POOL = [
    ("amount_x", "amount * 1.5 + 2"),
    ("amount_r", "round(amount)"),
    ("ratio", "amount / big"),
    ("rem", "big % 7 - amount % 3"),
    ("doubled", "big + big"),
    ("is_big", "amount > 100 or type == 'purchase'"),
    ("cat_up", "upper(category)"),
    ("cat_len", "length(category)"),
    ("hour", "hour_of_day(ts)"),
    ("dow", "day_of_week(ts)"),
    ("pick", "if(success, amount, coalesce(score, -1))"),
    ("log_amount", "round(log(amount), 3)"),
    ("neg", "-big"),
    ("abs_amount", "abs(amount)"),
    ("ver_kind", "if(device.ver >= 3, 'new', 'old')"),
    ("not_login", "not (type == 'login') and success != false"),
    ("chained", "coalesce(amount_x, 0) - 1"),
]
DERIVED_WHERE = ["is_big == true", "hour >= 12", "cat_up == 'BOOKS'", "dow < 6", "not_login", "pick > 50",
                 "ver_kind == 'new'"]


def draw_derive(seed: int, features: list[dict]) -> list[dict]:
    """For even seeds: some derived fields, and features that read them (a random stream of its own, so that the
    rest of the case is what it would be without them)."""
    if seed % 2 != 0:
        return []
    rng = random.Random(10_000 + seed)
    chosen = [d for d in DERIVE_POOL if rng.random() < 0.45 or d[0] == "amount_x"]
    names = [name for name, _ in chosen]
    for k in range(3):
        agg = rng.choice(["sum", "max", "last", "count_distinct", "mean", "count"])
        feature = {"name": f"d{k}_{agg}", "aggregation": agg}
        if agg != "count":
            feature["field"] = rng.choice(names)
        where = [w for w in DERIVED_WHERE if w.split()[0] in names]
        if where and rng.random() < 0.6:
            feature["where"] = rng.choice(where)
        feature["window"] = draw_window(rng, rng.choice(WINDOW_SHAPES))
        features.append(feature)
    return [{"name": name, "expr": expr} for name, expr in chosen]


def draw_spec(rng: random.Random, seed: int) -> dict:
    pairs = [COVERAGE[k] for k in range(len(COVERAGE)) if k % len(SEEDS) == seed % len(SEEDS)]
    target = rng.randint(6, 9)
    while len(pairs) < target:
        pairs.append((rng.choice(ref.AGGREGATIONS), rng.choice(WINDOW_SHAPES)))
    if seed % 3 == 1:  # int64 overflow of an integer sum turns it into a float sum
        pairs.append(("sum", rng.choice(["lifetime", "continuous"])))
    features = []
    for k, (agg, shape) in enumerate(pairs):
        feature = {"name": f"f{k}_{agg}", "aggregation": agg}
        field = "big" if seed % 3 == 1 and k == len(pairs) - 1 else rng.choice(FIELDS_FOR[agg])
        if field is not None:
            feature["field"] = field
        if rng.random() < 0.5:
            feature["where"] = draw_where(rng)
        feature["window"] = draw_window(rng, shape)
        if agg == "approx_count_distinct" and rng.random() < 0.8:
            feature["precision"] = rng.choice([4, 6, 8, 10, 12, 14])
        if agg == "approx_percentile":
            feature["percentiles"] = rng.sample([0, 0.001, 0.07, 0.25, 0.5, 0.9, 0.95, 0.999, 1], rng.randint(1, 3))
        features.append(feature)
    spec = {"name": f"diff_{seed}", "entity": "user", "timestamp": "ts"}
    if rng.random() < 0.6:
        spec["watermark"] = {
            "max_out_of_orderness": format_duration(rng.choice([1000, 2000, 5000, 10_000])),
            "allowed_lateness": format_duration(rng.choice([1000, 5000, 10_000, 30_000])),
        }
    derive = draw_derive(seed, features)
    if derive:
        spec["derive"] = derive
    spec["features"] = features
    return spec


def durations_of(spec: dict) -> tuple[list[int], list[int]]:
    """(every size, slide and gap in the spec; the tile lengths) in ms."""
    all_ms, tiles = [], []
    for f in spec["features"]:
        w = f["window"]
        for key in ("size", "slide", "gap"):
            if key in w:
                all_ms.append(ref.parse_duration_ms(w[key]))
        if w["type"] == "tumbling":
            tiles.append(ref.parse_duration_ms(w["size"]))
        if w["type"] == "sliding" and "slide" in w:
            tiles.append(ref.parse_duration_ms(w["slide"]))
    return all_ms or [10_000], tiles or [1000]


EPOCH = datetime.datetime(1970, 1, 1)


def rfc3339(ms: int, rng: random.Random, extra_digits: bool = True) -> str:
    """An RFC 3339 text for `ms`, in one of the forms the engine must read (all parse back to ms)."""
    offset_min = rng.choice([0, 0, 0, 60, -330, 345, -480, 14 * 60 - 1])
    local = EPOCH + datetime.timedelta(milliseconds=ms + offset_min * 60_000)
    second = f"{local.second:02d}"
    if local.second == 59 and rng.random() < 0.3:
        second = "60"  # a leap second reads as :59
    millis = local.microsecond // 1000
    r = rng.random()
    if millis == 0 and r < 0.4:
        fraction = ""
    elif r < 0.55:
        fraction = f".{millis:03d}"
    elif r < 0.75 and extra_digits:
        fraction = f".{millis:03d}" + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 6)))
    else:
        fraction = "." + (f"{millis:03d}".rstrip("0") or "0")
    if offset_min == 0 and rng.random() < 0.75:
        offset = "Z"
    else:
        sign = "-" if offset_min < 0 or (offset_min == 0 and rng.random() < 0.3) else "+"
        offset = f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    separator = rng.choice("TTTTt ")
    return (f"{local.year:04d}-{local.month:02d}-{local.day:02d}{separator}"
            f"{local.hour:02d}:{local.minute:02d}:{second}{fraction}{offset}")


def time_value(ms: int, rng: random.Random):
    return ms if rng.random() < 0.55 else rfc3339(ms, rng)


MISSING = ref.MISSING


def pick(rng: random.Random, weighted: list[tuple]):
    total = sum(w for w, _ in weighted)
    r = rng.uniform(0, total)
    for w, value in weighted:
        r -= w
        if r <= 0:
            return value
    return weighted[-1][1]


def draw_fields(rng: random.Random) -> dict:
    fields = {
        "type": pick(rng, [(35, "purchase"), (30, "view"), (20, "login"), (5, "logout"), (4, MISSING),
                           (2, "Purchase"), (2, 1), (2, None)]),
        "amount": pick(rng, [(40, rng.randint(-20, 500)), (30, round(rng.uniform(-20, 500), 2)),
                             (5, rng.uniform(-1, 1) * 10 ** rng.randint(-3, 4)), (6, rng.choice([0, 1, 10, 100])),
                             (3, 10.0), (3, True), (3, "12"), (4, None), (6, MISSING), (2, {"v": 1}), (2, [1, 2]),
                             (1, -0.0), (1, 2**63 + 2048),  # beyond int64: read as a double
                             (1, 2**64)]),  # beyond uint64: the line is rejected
        "category": pick(rng, [(40, rng.choice(["books", "games", "food", "toys"])),
                               (12, rng.choice(["a,b", 'say "hi"', "new\nline", "ünï", "it's", "1", "true", ""])),
                               (3, 1), (3, 1.0), (2, 2.5), (3, True), (2, False), (4, None), (6, MISSING),
                               (2, {"c": "books"}), (2, ["books"])]),
        "success": pick(rng, [(40, True), (40, False), (5, "false"), (5, 0), (5, None), (5, MISSING)]),
        "device": pick(rng, [(70, {"os": rng.choice(["ios", "android", "web"]), "ver": rng.randint(1, 5)}),
                             (10, MISSING), (5, "ios"), (5, {"os": None}), (5, {}),
                             (5, {"os": "ios", "ver": 2.5})]),
        "big": pick(rng, [(65, rng.randint(-10**6, 10**6)),
                          (10, rng.choice([2**62, 2**62, 2**62 + 12345, 2**63 - 1, -(2**62), -(2**63)])),
                          (25, MISSING)]),
        "score": pick(rng, [(80, rng.random()), (20, MISSING)]),
        "item": pick(rng, [(50, f"i{rng.randint(0, 3000)}"), (40, rng.randint(0, 3000)), (10, MISSING)]),
    }
    return {k: v for k, v in fields.items() if v is not MISSING}


def malformed_line(rng: random.Random, t: int) -> bytes:
    choices = [
        "", "   ", "{", '{"user": "alice", "ts": ', "[1, 2, 3]", "17", '"text"', "null",
        f'{{"user": "alice", "ts": {t}, "amount": NaN}}', f'{{"user": "alice", "ts": {t}, "amount": Infinity}}',
        f'{{"user": "alice", "ts": {t}, "amount": -Infinity}}',
        f'{{"ts": {t}}}', f'{{"user": null, "ts": {t}}}', f'{{"user": "", "ts": {t}}}', f'{{"user": true, "ts": {t}}}',
        f'{{"user": 4.5, "ts": {t}}}', f'{{"user": 42.0, "ts": {t}}}', f'{{"user": {{"id": 1}}, "ts": {t}}}',
        f'{{"user": ["bob"], "ts": {t}}}',
        '{"user": "alice", "ts": 1.5}', '{"user": "alice", "ts": 1e12}', f'{{"user": "alice", "ts": {t}.0}}',
        '{"user": "alice", "ts": "2026-01-01"}', f'{{"user": "alice", "ts": "{t}"}}',
        '{"user": "alice", "ts": "2026-01-01T00:00:00"}',
        '{"user": "alice", "ts": "2026-02-30T00:00:00Z"}', '{"user": "alice", "ts": "2026-01-01T25:00:00Z"}',
        '{"user": "alice", "ts": true}', '{"user": "alice"}', '{"user": "alice", "ts": null}',
        '{"user": "alice", "ts": 99999999999999999999}', '{"user": "alice", "ts": "0000-06-01T00:00:00Z"}',
        '{"user": "alice", "ts": {"ms": 1}}', '{"user": "alice", "ts": 300000000000000}',
        f'{{"user": "alice", "user": null, "ts": {t}}}', f'{{"user": "alice", "ts": {t}}} x',
        f'{{"user": "alice", "ts": {t}}}{{}}',
        f'{{"user": null, "ts": {t + 10**8}}}',  # rejected far-future event: must not move the watermark
        f'{{"user": "alice", "ts": "{rfc3339(t, rng)}", "ts": "soon"}}',
    ]
    r = rng.random()
    if r < 0.1:
        return b'{"user": "\xff\xfe", "ts": 0}'  # invalid UTF-8
    if r < 0.25:
        return f'{{"user": null, "ts": {t + 10**8}}}'.encode()  # rejected far-future line: M must not move
    return rng.choice(choices).encode("utf-8")


@dataclass
class Case:
    seed: int
    spec: dict
    events: bytes
    entities_csv: str


def draw_events(rng: random.Random, seed: int, spec: dict, entities: list) -> tuple[bytes, list[tuple[str, int]]]:
    """The events file, and the (entity, time) of every event meant to be on time."""
    all_ms, tiles = durations_of(spec)
    longest = max(all_ms)
    watermark = spec.get("watermark")
    slack = (ref.parse_duration_ms(watermark["max_out_of_orderness"]) +
             ref.parse_duration_ms(watermark["allowed_lateness"])) if watermark else 0
    weights = [rng.uniform(1, 4) for _ in entities]
    clock = base_time(seed)
    max_time = None  # the largest on-time event time so far, as the reference will see it
    times_by_entity: dict[str, list[int]] = {}
    event_times: list[tuple[str, int]] = []
    lines: list[bytes] = []
    for _ in range(rng.randint(50, 400)):
        if rng.random() < 0.03:
            lines.append(malformed_line(rng, clock))
            continue
        step = pick(rng, [(15, 0), (5, 1), (35, rng.randint(1, 3000)), (10, rng.randint(3000, 20_000)),
                          (20, rng.choice(all_ms) + rng.choice([-1, 0, 1])), (5, rng.randint(longest, 3 * longest))])
        clock += step
        if rng.random() < 0.1:  # snap to a tile boundary, or just before one
            tile = rng.choice(tiles)
            clock = -(-clock // tile) * tile - rng.choice([0, 0, 1])
        entity = rng.choices(entities, weights)[0]
        key = str(entity)
        t = clock
        if rng.random() < 0.18 and max_time is not None:  # out of order
            mine = times_by_entity.get(key)
            kind = rng.random()
            if watermark and kind < 0.35:  # exactly at the lateness bound, or beyond it
                t = max_time - slack - rng.choice([0, 0, 1, rng.randint(1, 60_000)])
            elif mine and kind < 0.7:  # a window length or gap away from one of its own events: sessions merge
                t = rng.choice(mine) + rng.choice([-1, 1]) * (rng.choice(all_ms) - rng.choice([0, 1]))
            else:
                t = max_time - rng.randint(0, max(slack, 5000))
        clock = max(clock, t)
        late = watermark is not None and max_time is not None and t < max_time - slack
        if not late:
            max_time = t if max_time is None else max(max_time, t)
            times_by_entity.setdefault(key, []).append(t)
            event_times.append((key, t))
        record = {"user": entity if entity != 42 or rng.random() < 0.5 else "42", "ts": time_value(t, rng)}
        record.update(draw_fields(rng))
        if rng.random() < 0.5:
            keys = list(record)
            rng.shuffle(keys)
            record = {k: record[k] for k in keys}
        text = json.dumps(record, ensure_ascii=rng.random() < 0.5)
        if rng.random() < 0.03:  # duplicate key: the last one wins
            text = '{"user": "decoy", ' + text[1:]
        lines.append(text.encode("utf-8"))
    newline = b"\r\n" if seed % 7 == 5 else b"\n"  # CR LF: the CR is JSON whitespace
    return newline.join(lines) + (newline if rng.random() < 0.8 else b""), event_times


def draw_entity_rows(rng: random.Random, seed: int, spec: dict, entities: list,
                     event_times: list[tuple[str, int]]) -> str:
    """The entities CSV. Rows sit at event times, just before and after them, a window length or gap
    later (the t - size edges), on tile boundaries, before everything, long after everything, and at
    entities with no events."""
    all_ms, tiles = durations_of(spec)
    longest = max(all_ms)
    base = base_time(seed)
    known = [str(e) for e in entities]
    columns = ["row_id", "user", "ts", "label"]
    rng.shuffle(columns)
    first_time = min((t for _, t in event_times), default=base)
    last_time = max((t for _, t in event_times), default=base)
    rows = []
    for row_id in range(rng.randint(100, 300)):
        entity = rng.choice(known) if rng.random() < 0.9 else rng.choice(["nobody", "zed", "4 2", "042"])
        mine = [t for e, t in event_times if e == entity] or [t for _, t in event_times] or [base]
        x = rng.choice(mine)
        t = pick(rng, [
            (30, x + rng.choice([0, 0, -1, 1])),
            (25, x + rng.choice(all_ms) + rng.choice([-1, 0, 1])),
            (15, (x // (tile := rng.choice(tiles))) * tile + rng.choice([0, -1, tile - 1, tile])),
            (5, first_time - rng.randint(1, 10_000)),
            (10, last_time + rng.randint(0, 3 * longest)),
            (15, rng.randint(first_time - 10_000, last_time + 60_000)),
        ])
        label = pick(rng, [(80, f"r{row_id}"), (5, "has, comma"), (5, 'say "q"'), (5, ""), (5, "multi\nline")])
        cells = {"row_id": str(row_id), "user": entity, "ts": str(t) if rng.random() < 0.6 else rfc3339(t, rng),
                 "label": label}
        rows.append([cells[c] for c in columns])
    newline = "\r\n" if seed % 4 == 2 else "\n"  # RFC 4180 line ends in some seeds

    def cell(text: str) -> str:  # sometimes quoted when it need not be, which RFC 4180 allows
        quoted = ref.quote_csv(text)
        return '"' + text.replace('"', '""') + '"' if quoted == text and rng.random() < 0.1 else quoted

    return "".join(",".join(cell(c) for c in row) + newline for row in [columns] + rows)


def base_time(seed: int) -> int:
    """Where a seed's events start: 2026-01-01, or just before the epoch so that tiles straddle zero."""
    return -300_000 + seed * 37 if seed % 5 == 3 else 1767225600000 + seed * 7919


def draw_case(seed: int) -> Case:
    rng = random.Random(seed)
    spec = draw_spec(rng, seed)
    entities = ["alice", "bob", "carol", 42, "dave", "ü-名", "  padded "][: rng.randint(3, 7)]
    if seed % 3 == 0:
        entities.append("o'brien, jr")
    events, event_times = draw_events(rng, seed, spec, entities)
    return Case(seed, spec, events, draw_entity_rows(rng, seed, spec, entities, event_times))


def write_case(case: Case, folder: str) -> dict:
    os.makedirs(folder, exist_ok=True)
    paths = {name: os.path.join(folder, name) for name in ("spec.yaml", "events.jsonl", "entities.csv",
                                                            "output.csv", "dead.jsonl")}
    with open(paths["spec.yaml"], "w", encoding="utf-8") as f:
        yaml.safe_dump(case.spec, f, sort_keys=False, allow_unicode=True, width=1000)
    with open(paths["events.jsonl"], "wb") as f:
        f.write(case.events)
    with open(paths["entities.csv"], "w", encoding="utf-8", newline="") as f:
        f.write(case.entities_csv)
    return paths


# ------------------------------------------------------------------------------------------------
# Running the engine and comparing
# ------------------------------------------------------------------------------------------------


def run_engine(paths: dict) -> None:
    command = [FRESHET_BIN, "historical", "--spec", paths["spec.yaml"], "--events", paths["events.jsonl"],
               "--entities", paths["entities.csv"], "--output", paths["output.csv"],
               "--dead-letters", paths["dead.jsonl"]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (f"{' '.join(command)}\nexited {result.returncode}\n"
                                    f"stderr:\n{result.stderr[-3000:]}")


def parse_number(text: str):
    try:
        return int(text) if text.lstrip("-").isdigit() else float(text)
    except ValueError:
        return None


def cell_matches(feature: ref.Feature, expected, got: str, window_values: list) -> bool:
    """Whether the engine's CSV text `got` is an acceptable rendering of the reference value."""
    agg = feature.aggregation
    if agg == "approx_count_distinct":
        estimate = parse_number(got)
        return estimate is not None and ref.approx_count_distinct_ok(expected, estimate, feature.precision)
    if agg == "approx_percentile":
        number = None if got == "" else parse_number(got)
        return (got == "" or number is not None) and ref.approx_percentile_ok(window_values, feature.percentile,
                                                                               None if number is None else float(number))
    if expected is None:
        return got == ""
    if isinstance(expected, bool):
        return got == ("true" if expected else "false")
    if isinstance(expected, str):
        return got == expected
    number = parse_number(got)
    if number is None or (isinstance(number, float) and not math.isfinite(number)):
        return False
    if isinstance(expected, int):
        if agg in ("min", "max"):  # 1 and 1.0 tie by value; either may be the one written
            return number == expected
        return isinstance(number, int) and number == expected
    if math.isclose(number, expected, rel_tol=1e-9, abs_tol=1e-9):
        return True
    # Floating-point accumulation loses precision relative to the magnitudes summed, not to the result,
    # so a correct double-precision engine may differ from the exact reference by that much.
    floats = [float(v) for v in window_values]
    if agg == "sum":
        return abs(number - expected) <= 1e-9 * sum(abs(v) for v in floats)
    if agg == "mean":
        return abs(number - expected) <= 1e-9 * sum(abs(v) for v in floats) / len(floats)
    if agg == "stddev":
        second_moment = sum(v * v for v in floats) / len(floats)
        return abs(number * number - expected * expected) <= 1e-9 * max(second_moment, 1.0)
    return False


def describe_feature(feature: ref.Feature) -> str:
    w = feature.window
    window = {"lifetime": "lifetime", "tumbling": f"tumbling {w.size_ms}ms", "session": f"session gap {w.gap_ms}ms",
              "sliding": f"sliding {w.size_ms}ms" + (f" slide {w.slide_ms}ms" if w.slide_ms else " continuous")}
    text = f"{feature.aggregation}({feature.field or ''}) over {window[w.kind]}"
    if feature.where_text:
        text += f" where {feature.where_text}"
    if feature.aggregation == "approx_count_distinct":
        text += f" precision {feature.precision}"
    return text


def describe_event(event: ref.Event, feature: ref.Feature) -> str:
    value = ref.resolve(event.record, feature.field) if feature.field else ""
    return f"line {event.line} t={event.time_ms} {value!r}"


def explain_mismatch(feature: ref.Feature, entity: str, t: int, expected, got: str,
                     entity_events: list[ref.Event], window: list[ref.Event], where: str) -> str:
    lines = [
        f"{where}: entity={entity!r} t={t} ({ref_time_text(t)}) feature {feature.name}: {describe_feature(feature)}",
        f"  expected {ref.format_value(expected)!r}  got {got!r}",
        f"  window events per the reference ({len(window)}):",
    ]
    lines += [f"    {describe_event(e, feature)}" for e in window[:40]]
    if len(window) > 40:
        lines.append(f"    ... {len(window) - 40} more")
    span = max(feature.window.size_ms, feature.window.gap_ms, 1000)
    nearby = [e for e in entity_events if e not in window and t - 2 * span <= e.time_ms <= t + 1000]
    if nearby:
        lines.append("  other events of this entity near t (excluded by time, where, field or window):")
        for e in nearby[:20]:
            passes = feature.where is None or ref.eval_where(feature.where, e.record)
            lines.append(f"    {describe_event(e, feature)} where={passes}")
    return "\n".join(lines)


def ref_time_text(ms: int) -> str:
    return (EPOCH + datetime.timedelta(milliseconds=ms)).isoformat(timespec="milliseconds") + "Z"


def compare(paths: dict, label: str) -> list[str]:
    """Every difference between the engine's output (already written) and the reference, as text."""
    spec = ref.load_spec(paths["spec.yaml"])
    with open(paths["events.jsonl"], "rb") as f:
        data = f.read()
    raw_lines = ref.split_lines(data)
    events, dead = ref.read_events(data, spec)
    rows = ref.read_entity_rows(paths["entities.csv"], spec)
    by_entity = ref.group_by_entity(events)
    evaluator = ref.Evaluator(spec, events)
    problems: list[str] = []

    with open(paths["output.csv"], newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    want_header = rows.header + [feature.name for feature in spec.features]
    if not table or table[0] != want_header:
        return [f"{label}: output header {table[0] if table else None} != {want_header}"]
    got_rows = table[1:]
    if len(got_rows) != len(rows.rows):
        problems.append(f"{label}: {len(got_rows)} output rows, expected {len(rows.rows)}")

    counts: dict[str, int] = {}
    detailed = 0
    for k, (row, got_row) in enumerate(zip(rows.rows, got_rows)):
        where = f"{label} row {k + 2}"
        if len(got_row) != len(want_header) or got_row[: len(row)] != row:
            problems.append(f"{where}: input cells {row} came back as {got_row[: len(row)]} "
                            f"({len(got_row)} cells, expected {len(want_header)})")
            continue
        entity, t = rows.keys[k]
        entity_events = by_entity.get(entity, [])
        for j, feature in enumerate(spec.features):
            expected, window = evaluator.value(j, entity, t)
            got = got_row[len(row) + j]
            values = [ref.resolve(e.record, feature.field) for e in window] if feature.field else []
            if cell_matches(feature, expected, got, values):
                continue
            counts[feature.name] = counts.get(feature.name, 0) + 1
            if detailed < MAX_DETAILED_MISMATCHES:
                detailed += 1
                problems.append(explain_mismatch(feature, entity, t, expected, got, entity_events, window,
                                                 where))
    for name, n in counts.items():
        problems.append(f"{label}: feature {name}: {n} mismatching rows in total")

    # Dead letters: the same lines, and the same ones marked late.
    got_dead: dict[int, str] = {}
    if os.path.exists(paths["dead.jsonl"]):
        with open(paths["dead.jsonl"], encoding="utf-8") as f:
            for text in f:
                if text.strip():
                    record = json.loads(text)
                    got_dead[int(record["line"])] = str(record.get("reason"))
    want_dead = {d.line: d.reason for d in dead}

    def show(line: int) -> str:
        return repr(raw_lines[line - 1][:160]) if 1 <= line <= len(raw_lines) else "(no such line)"

    for line in sorted(set(want_dead) | set(got_dead)):
        want, got = want_dead.get(line), got_dead.get(line)
        if want is None:
            problems.append(f"{label}: dead letter for line {line} ({got}) but the reference accepts it: {show(line)}")
        elif got is None:
            problems.append(f"{label}: no dead letter for line {line}, reference says {want!r}: {show(line)}")
        elif (want == "late") != (got == "late"):
            problems.append(f"{label}: line {line} dead-lettered as {got!r}, reference says {want!r}: {show(line)}")
    return problems


def require_binary() -> None:
    if not (os.path.isfile(FRESHET_BIN) and os.access(FRESHET_BIN, os.X_OK)):
        pytest.skip(f"freshet binary not found at {FRESHET_BIN}: build it (ninja -C build freshet) or set FRESHET_BIN")


@pytest.mark.parametrize("seed", list(SEEDS))
def test_random_case_matches_reference(seed, tmp_path):
    require_binary()
    paths = write_case(draw_case(seed), str(tmp_path))
    run_engine(paths)
    problems = compare(paths, f"seed {seed}")
    if problems:
        pytest.fail(f"seed {seed}: engine differs from the reference (case files in {tmp_path}; rerun with: "
                    f".venv/bin/python tests/historical_diff_test.py --seed {seed} --out DIR)\n" + "\n".join(problems),
                    pytrace=False)


def test_every_aggregation_meets_every_window_type():
    """The seeds together cover the full aggregation x window grid (guards the generator, not the engine)."""
    seen = set()
    for seed in SEEDS:
        rng = random.Random(seed)
        for feature in draw_spec(rng, seed)["features"]:
            w = feature["window"]
            shape = {"lifetime": "lifetime", "tumbling": "tumbling", "session": "session"}.get(w["type"])
            shape = shape or ("hopping" if "slide" in w else "continuous")
            seen.add((feature["aggregation"], shape))
    assert seen == set(COVERAGE)


# ------------------------------------------------------------------------------------------------
# A larger case from `freshet generate`
# ------------------------------------------------------------------------------------------------

FRAUD_FEATURES = [
    {"name": "purchases_30m", "aggregation": "count", "where": "type == 'purchase'",
     "window": {"type": "sliding", "size": "30m", "slide": "1m"}},
    {"name": "mean_amount_1h", "aggregation": "mean", "field": "amount", "window": {"type": "sliding", "size": "1h"}},
    {"name": "categories_viewed_session", "aggregation": "count_distinct", "field": "category",
     "where": "type == 'view'", "window": {"type": "session", "gap": "30m"}},
    {"name": "failed_logins_10m", "aggregation": "count", "where": "type == 'login' and success == false",
     "window": {"type": "sliding", "size": "10m"}},
    {"name": "max_amount_24h", "aggregation": "max", "field": "amount", "window": {"type": "sliding", "size": "24h"}},
]


def infer_entity_and_timestamp(events_path: str, entities_path: str) -> tuple[str, str]:
    """The generator's entity and timestamp field names: the spec example's if present, else from the data."""
    with open(entities_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        sample_rows = [row for _, row in zip(range(50), reader)]
    for name in ("fraud.yaml", "spec.yaml"):
        example = os.path.join(REPO, "examples", "fraud", name)
        if os.path.exists(example):
            with open(example, encoding="utf-8") as f:
                doc = yaml.safe_load(f) or {}
            if doc.get("entity") in header and doc.get("timestamp") in header:
                return doc["entity"], doc["timestamp"]
    records = []
    with open(events_path, "rb") as f:
        for raw in f:
            try:
                value = ref.parse_json_line(raw)
            except ValueError:
                continue
            if isinstance(value, dict):
                records.append(value)
            if len(records) >= 200:
                break
    timestamps, entities = [], []
    for k, column in enumerate(header):
        present = [r[column] for r in records if column in r]
        if len(present) < 0.9 * len(records):
            continue
        if all(ref.row_time_ms(row[k]) is not None for row in sample_rows) and \
                sum(ref.event_time_ms(v) is not None for v in present) >= 0.9 * len(present):
            timestamps.append(column)
        elif sum(ref.entity_key(v) is not None for v in present) >= 0.9 * len(present):
            entities.append(column)
    if len(timestamps) != 1 or len(entities) != 1:
        pytest.fail(f"cannot tell the entity and timestamp columns of {entities_path} (header {header}): "
                    f"timestamp candidates {timestamps}, entity candidates {entities}")
    return entities[0], timestamps[0]


EXAMPLE_SPEC = os.path.join(REPO, "examples", "fraud", "fraud.yaml")


@pytest.mark.parametrize("which", ["brief", "example"])
def test_generated_fraud_case_matches_reference(which, tmp_path):
    """The five fraud features of the design brief, and examples/fraud/fraud.yaml as shipped."""
    require_binary()
    if which == "example" and not os.path.exists(EXAMPLE_SPEC):
        pytest.skip(f"{EXAMPLE_SPEC} does not exist")
    help_result = subprocess.run([FRESHET_BIN, "generate", "--help"], capture_output=True, text=True, timeout=60)
    if help_result.returncode != 0:
        pytest.skip(f"`freshet generate` is not available yet: {help_result.stderr.strip()[:300]}")
    paths = {name: str(tmp_path / name) for name in ("spec.yaml", "events.jsonl", "entities.csv", "output.csv",
                                                     "dead.jsonl")}
    command = [FRESHET_BIN, "generate", "--users", "200", "--events", "20000", "--seed", "7", "--disorder", "30s",
               "--late-share", "0.01", "--malformed-share", "0.01", "--output", paths["events.jsonl"],
               "--entities", paths["entities.csv"], "--entity-rows", "2000"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}: {result.stderr[-2000:]}"
    if which == "example":
        with open(EXAMPLE_SPEC, encoding="utf-8") as f:
            spec = yaml.safe_load(f)
    else:
        entity, timestamp = infer_entity_and_timestamp(paths["events.jsonl"], paths["entities.csv"])
        spec = {"name": "fraud_diff", "entity": entity, "timestamp": timestamp,
                "watermark": {"max_out_of_orderness": "30s", "allowed_lateness": "30s"}, "features": FRAUD_FEATURES}
    with open(paths["spec.yaml"], "w", encoding="utf-8") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    run_engine(paths)
    problems = compare(paths, f"generated fraud case ({which} spec)")
    if problems:
        pytest.fail(f"engine differs from the reference (files in {tmp_path}):\n" + "\n".join(problems), pytrace=False)
    with open(paths["output.csv"], newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    for feature in spec["features"]:
        if all(row[feature["name"]] in ("", "0") for row in table):
            warnings.warn(f"generated fraud case: {feature['name']} is empty or 0 in every row; does the "
                          f"generator write the fields this spec reads (type, amount, category, success)?")


# ------------------------------------------------------------------------------------------------
# Debugging one seed by hand
# ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description="Write one random case, run the engine on it, show mismatches.")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", required=True, help="folder for spec.yaml, events.jsonl, entities.csv, output")
    args = parser.parse_args()
    paths = write_case(draw_case(args.seed), args.out)
    print(f"case written to {args.out}")
    print(f"engine:    {FRESHET_BIN} historical --spec {paths['spec.yaml']} --events {paths['events.jsonl']} "
          f"--entities {paths['entities.csv']} --output {paths['output.csv']} --dead-letters {paths['dead.jsonl']}")
    print(f"reference: {sys.executable} {os.path.join(HERE, 'reference.py')} --spec {paths['spec.yaml']} "
          f"--events {paths['events.jsonl']} --entities {paths['entities.csv']} "
          f"--output {os.path.join(args.out, 'reference.csv')}")
    if not os.access(FRESHET_BIN, os.X_OK):
        print(f"no engine binary at {FRESHET_BIN}; set FRESHET_BIN to compare")
        return 0
    run_engine(paths)
    problems = compare(paths, f"seed {args.seed}")
    print("\n".join(problems) if problems else "no differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

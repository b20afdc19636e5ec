"""Tests of the brute-force reference (tests/reference.py) on tiny cases whose answers were worked out by hand.

The differential test trusts the reference; these cases are why it may. Every expected value below was
computed by hand from the written semantics, never by running the reference.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref  # noqa: E402

JAN_1_2026_MS = 1767225600000  # 56 years after 1970, 14 of them leap (1972..2024): 20454 days * 86400000.


def make_spec(features: list[dict], watermark: dict | None = None) -> ref.Spec:
    doc = {"name": "t", "entity": "user", "timestamp": "ts", "features": features}
    if watermark is not None:
        doc["watermark"] = watermark
    return ref.parse_spec(doc)


def jsonl(*records) -> bytes:
    """One line per record: dicts are dumped as JSON, str/bytes are written as they are."""
    out = []
    for r in records:
        if isinstance(r, bytes):
            out.append(r)
        elif isinstance(r, str):
            out.append(r.encode("utf-8"))
        else:
            out.append(json.dumps(r).encode("utf-8"))
    return b"\n".join(out) + b"\n"


def value_at(feature: dict, records: list, t: int, entity: str = "u", watermark: dict | None = None):
    spec = make_spec([dict(name="f", **feature)], watermark)
    events, _ = ref.read_events(jsonl(*records), spec)
    return ref.feature_value(spec.features[0], ref.group_by_entity(events).get(entity, []), t)[0]


def ev(ts, **fields) -> dict:
    return {"user": "u", "ts": ts, **fields}


# ------------------------------------------------------------------------------------------------
# Durations and timestamps
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, ms",
    [("500ms", 500), ("3s", 3000), ("30m", 1_800_000), ("1h", 3_600_000), ("2d", 172_800_000), ("90s", 90_000)],
)
def test_duration(text, ms):
    assert ref.parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["0s", "10", "s", "1.5s", "-1s", "1 s", "1sec", "1M"])
def test_duration_rejects(text):
    with pytest.raises(ref.ReferenceError):
        ref.parse_duration_ms(text)


@pytest.mark.parametrize(
    "text, ms",
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:00.001Z", 1),
        ("1970-01-01T01:00:00.250+01:00", 250),
        ("1970-01-01T00:00:00.250-01:30", 5_400_250),
        ("1970-01-01t00:00:01.9999Z", 1999),  # fraction cut to 3 digits, not rounded
        ("1970-01-01 00:00:01.5Z", 1500),  # short fraction: .5 = 500 ms
        ("1970-01-01T00:00:01.12z", 1120),
        ("1969-12-31T23:59:59.5Z", -500),
        ("1969-12-31T23:59:59.9999Z", -1),  # truncation goes toward the past for negative times too
        ("1970-01-01T00:00:60Z", 59_000),  # leap second reads as :59
        ("1970-01-01T00:00:60.5Z", 59_500),
        ("2026-01-01T00:00:00Z", JAN_1_2026_MS),
        ("2025-12-31T19:00:00-05:00", JAN_1_2026_MS),
        ("2024-02-29T00:00:00Z", JAN_1_2026_MS - (366 + 365 - 59) * 86_400_000),  # 2024-02-29 is day 59 of 2024
        ("0001-01-01T00:00:00Z", -62135596800000),
        ("9999-12-31T23:59:59.999Z", 253402300799999),
    ],
)
def test_rfc3339(text, ms):
    assert ref.parse_rfc3339_ms(text) == ms


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-01T00:00:00",  # no offset
        "2026-01-01",
        "2026-02-29T00:00:00Z",  # 2026 is not a leap year
        "2026-04-31T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-01-01T24:00:00Z",
        "2026-01-01T00:60:00Z",
        "2026-01-01T00:00:61Z",
        "2026-01-01T00:00:00.Z",
        "2026-01-01T00:00:00+0100",
        "2026-01-01T00:00:00+24:00",
        "2026-1-01T00:00:00Z",
        "2026-01-01X00:00:00Z",
        "2026-01-01T00:00:00Z ",
        "2026-01-01T00:00:00Z\n",
        "0000-12-31T00:00:00Z",
        "0001-01-01T00:30:00+01:00",  # before year 1 in UTC
        "9999-12-31T23:59:59.999-00:01",  # after year 9999 in UTC
        "\u0662026-01-01T00:00:00Z",  # a non-ASCII digit
    ],
)
def test_rfc3339_rejects(text):
    assert ref.parse_rfc3339_ms(text) is None


def test_event_time_values():
    assert ref.event_time_ms(1767225600000) == JAN_1_2026_MS
    assert ref.event_time_ms(-5) == -5
    assert ref.event_time_ms(1.5) is None
    assert ref.event_time_ms(1e12) is None
    assert ref.event_time_ms(True) is None
    assert ref.event_time_ms(None) is None
    assert ref.event_time_ms(253402300800000) is None  # year 10000


def test_entity_values():
    assert ref.entity_key("u1") == "u1"
    assert ref.entity_key(42) == "42"
    assert ref.entity_key(-7) == "-7"
    for bad in ["", None, True, False, 1.5, 42.0, {"a": 1}, [1]]:
        assert ref.entity_key(bad) is None


# ------------------------------------------------------------------------------------------------
# Reading events: rejections, duplicate keys, lateness
# ------------------------------------------------------------------------------------------------


def test_rejected_lines_and_numbers():
    spec = make_spec([{"name": "n", "aggregation": "count", "window": {"type": "lifetime"}}])
    data = jsonl(
        ev(1000),  # 1 ok
        "",  # 2 empty
        "   ",  # 3 whitespace only
        '{"user": "u", "ts": 1',  # 4 truncated
        "[1, 2]",  # 5 array
        "42",  # 6 scalar
        b'{"user": "\xff", "ts": 1}',  # 7 invalid UTF-8
        '{"user": "u", "ts": 1, "x": NaN}',  # 8 NaN is not JSON
        '{"user": "u", "ts": 1, "x": Infinity}',  # 9
        '{"ts": 1}',  # 10 no entity
        '{"user": null, "ts": 1}',  # 11
        '{"user": "", "ts": 1}',  # 12
        '{"user": true, "ts": 1}',  # 13
        '{"user": 1.5, "ts": 1}',  # 14
        '{"user": {"id": 1}, "ts": 1}',  # 15
        '{"user": "u", "ts": 1.5}',  # 16 float time
        '{"user": "u", "ts": 1e12}',  # 17
        '{"user": "u", "ts": 99999999999999999999}',  # 18 beyond int64
        '{"user": "u", "ts": "2026-01-01"}',  # 19
        '{"user": "u"}',  # 20 no time
        '{"user": "u", "ts": null}',  # 21
        '{"user": "u", "user": null, "ts": 1}',  # 22 duplicate key: the last (null) wins
        '{"user": null, "user": 42, "ts": "1970-01-01T00:00:02Z"}',  # 23 ok: entity 42
        '{"user": "u", "ts": 1} {}',  # 24 trailing text
        '{"user": "u", "ts": 5, "s": "\\ud800"}',  # 25 lone surrogate
        '  {"user": "u", "ts": 3}  ',  # 26 ok, surrounding whitespace
        '{"user": "u", "ts": true}',  # 27
        '{"user": "u", "ts": 4, "big": 99999999999999999999}',  # 28 beyond uint64: rejected
        '{"user": "u", "ts": 4, "big": 18446744073709551615}',  # 29 ok: uint64 max becomes a float
    )
    events, dead = ref.read_events(data, spec)
    assert [(e.line, e.entity, e.time_ms) for e in events] == [
        (1, "u", 1000), (23, "42", 2000), (26, "u", 3), (29, "u", 4)]
    assert [d.line for d in dead] == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 24,
                                      25, 27, 28]
    assert all(d.reason != "late" for d in dead)
    assert events[3].record["big"] == 2.0**64 and isinstance(events[3].record["big"], float)


def test_line_numbers_without_final_newline():
    spec = make_spec([])
    events, dead = ref.read_events(b'{"user":"a","ts":1}\n\n{"user":"b","ts":2}', spec)
    assert [e.line for e in events] == [1, 3]
    assert [d.line for d in dead] == [2]
    assert ref.read_events(b"", spec) == ([], [])


def test_lateness():
    # max_out_of_orderness 5s + allowed_lateness 10s: late when time < M - 15000.
    spec = make_spec([], {"max_out_of_orderness": "5s", "allowed_lateness": "10s"})
    data = jsonl(
        ev(100_000),  # 1 M = 100000
        ev(90_000),  # 2 ok (>= 85000)
        ev(85_000),  # 3 ok: exactly the bound
        ev(84_999),  # 4 late
        '{"user": null, "ts": 900000}',  # 5 rejected: must not move M
        ev(84_000),  # 6 late (M is still 100000)
        ev(200_000),  # 7 M = 200000
        ev(185_000),  # 8 ok
        ev(184_999),  # 9 late
        ev(1),  # 10 late: late events do not update M...
        ev(184_999),  # 11 ...so this is still late
        ev(190_000),  # 12 ok, M stays 200000
        ev(185_000),  # 13 ok
    )
    events, dead = ref.read_events(data, spec)
    assert [e.line for e in events] == [1, 2, 3, 7, 8, 12, 13]
    assert [(d.line, d.reason == "late") for d in dead] == [(4, True), (5, False), (6, True), (9, True), (10, True),
                                                            (11, True)]


def test_no_watermark_nothing_is_late():
    spec = make_spec([])
    events, dead = ref.read_events(jsonl(ev(100_000), ev(1), ev(-5_000_000)), spec)
    assert [e.line for e in events] == [1, 2, 3] and dead == []


def dedup_spec(within: str, watermark: dict | None = None) -> ref.Spec:
    doc = {"name": "t", "entity": "user", "timestamp": "ts", "features": [], "dedup": {"field": "id", "within": within}}
    if watermark is not None:
        doc["watermark"] = watermark
    return ref.parse_spec(doc)


def test_dedup_with_a_watermark():
    # within 10s; late when time < M - 5000.
    spec = dedup_spec("10s", {"max_out_of_orderness": "4s", "allowed_lateness": "1s"})
    data = jsonl(
        ev(100_000, id="a"),  # 1 accepted, M = 100000
        ev(100_000, id="a"),  # 2 duplicate of 1
        ev(110_000, id="a"),  # 3 duplicate: 10000 apart is still within
        ev(110_001, id="a"),  # 4 accepted: 10001 apart; M = 110001
        ev(104_000, id="a"),  # 5 late (< 105001), though it matches 1 and 4
        ev(105_001, id="a"),  # 6 duplicate of 1 (5001 apart) and of 4
        {"user": "v", "ts": 110_001, "id": "a"},  # 7 accepted: another entity
        ev(110_001, id=7),  # 8 accepted
        ev(110_001, id="7"),  # 9 duplicate of 8: 7 and "7" are one id
        ev(110_001, id=7.0),  # 10 accepted: a fraction is no id
        ev(110_001, id=7.0),  # 11 accepted, again
        ev(110_001, id=""),  # 12 accepted: "" is no id
        ev(110_001, id=None),  # 13 accepted: null is no id
        ev(110_001),  # 14 accepted: missing
        ev(120_000, id="b"),  # 15 accepted, M = 120000
        ev(130_000, id="b"),  # 16 duplicate of 15, and a duplicate does not move M...
        ev(115_000, id="c"),  # 17 ...so 115000 is not late (>= 115000)
    )
    events, dead = ref.read_events(data, spec)
    assert [e.line for e in events] == [1, 4, 7, 8, 10, 11, 12, 13, 14, 15, 17]
    assert [(d.line, d.reason) for d in dead] == [(2, "duplicate"), (3, "duplicate"), (5, "late"), (6, "duplicate"),
                                                  (9, "duplicate"), (16, "duplicate")]


def test_dedup_without_a_watermark_forgets_ids_more_than_within_behind_the_newest():
    spec = dedup_spec("10s")
    data = jsonl(
        ev(100_000, id="a"),  # 1 accepted
        ev(110_000, id="x"),  # 2 accepted, M = 110000: 1 is exactly within behind, still remembered
        ev(100_000, id="a"),  # 3 duplicate of 1
        ev(110_001, id="y"),  # 4 accepted, M = 110001: 1 is forgotten
        ev(100_000, id="a"),  # 5 accepted: a resend more than within behind the newest event
        ev(100_000, id="a"),  # 6 accepted: 5 is no more remembered than 1 (100000 < M - within)
    )
    events, dead = ref.read_events(data, spec)
    assert [e.line for e in events] == [1, 2, 4, 5, 6]
    assert [(d.line, d.reason) for d in dead] == [(3, "duplicate")]


# ------------------------------------------------------------------------------------------------
# Windows: every edge
# ------------------------------------------------------------------------------------------------

COUNT = {"aggregation": "count"}


def count_at(window: dict, times: list[int], t: int) -> int:
    return value_at({**COUNT, "window": window}, [ev(x) for x in times], t)


def test_lifetime():
    assert count_at({"type": "lifetime"}, [-10**12, 0, 5, 6], 5) == 3  # 6 is after t
    assert count_at({"type": "lifetime"}, [5], 4) == 0


def test_continuous_sliding_edges():
    w = {"type": "sliding", "size": "10s"}
    # t = 20000 covers (10000, 20000].
    assert count_at(w, [10_000], 20_000) == 0
    assert count_at(w, [10_001], 20_000) == 1
    assert count_at(w, [20_000], 20_000) == 1
    assert count_at(w, [20_001], 20_000) == 0
    assert count_at(w, [9_999, 10_000, 10_001, 15_000, 20_000, 20_001], 20_000) == 3
    # Negative times: t = -1 covers (-10001, -1].
    assert count_at(w, [-10_001, -10_000, -1, 0], -1) == 2


def test_hopping_sliding_edges():
    w = {"type": "sliding", "size": "10s", "slide": "5s"}
    # t = 12000: tile 2 (10000..14999); two tiles back to tile 1, i.e. times 5000..12000.
    assert count_at(w, [4_999, 5_000, 12_000, 12_001, 14_999], 12_000) == 2
    # t = 14999 still tile 2: 5000..14999.
    assert count_at(w, [4_999, 5_000, 14_999], 14_999) == 2
    # t = 15000 moves to tile 3: 10000..15000.
    assert count_at(w, [5_000, 9_999, 10_000, 15_000], 15_000) == 2
    # Negative: t = -1 is tile -1 (-5000..-1); from tile -2: times -10000..-1.
    assert count_at(w, [-10_001, -10_000, -5_001, -1, 0], -1) == 3
    # t = 0 is tile 0: from tile -1, times -5000..0.
    assert count_at(w, [-5_001, -5_000, 0, 1], 0) == 2


def test_hopping_one_tile_equals_tumbling():
    w = {"type": "sliding", "size": "5s", "slide": "5s"}
    assert count_at(w, [4_999, 5_000, 7_000, 9_999], 7_000) == 2


def test_tumbling_edges():
    w = {"type": "tumbling", "size": "10s"}
    assert count_at(w, [9_999, 10_000, 19_999, 20_000], 19_999) == 2
    assert count_at(w, [9_999, 10_000, 19_999, 20_000], 20_000) == 1
    assert count_at(w, [10_000, 15_000], 14_999) == 1
    # Negative: t = -1 is tile -1 = -10000..-1.
    assert count_at(w, [-10_001, -10_000, -1, 0], -1) == 2
    assert count_at(w, [-10_001, -10_000, -1, 0], 0) == 1


def test_session_edges():
    w = {"type": "session", "gap": "10s"}
    times = [0, 9_999, 19_998, 29_998]  # gaps 9999, 9999 (join), 10000 (split)
    assert count_at(w, times, 19_998) == 3
    assert count_at(w, times, 25_000) == 3  # 5002 after the latest: still open
    assert count_at(w, times, 29_997) == 3  # 9999 after the latest: still open
    assert count_at(w, times, 29_998) == 1  # the new session
    assert count_at(w, times, 39_997) == 1
    assert count_at(w, times, 39_998) == 0  # exactly gap after the latest: expired
    assert count_at(w, times, -1) == 0
    assert count_at(w, [], 5) == 0


def test_session_orders_by_time_not_input():
    w = {"type": "session", "gap": "10s"}
    # Input order 20000, 0, 10000: by time the gaps are 10000 and 10000, so only 20000 at t=20000.
    assert count_at(w, [20_000, 0, 10_000], 20_000) == 1
    # With 5000: gaps 5000, 5000, 10000 -> still split before 20000. With 15000 too: all gaps 5000, one session.
    assert count_at(w, [20_000, 0, 10_000, 5_000], 20_000) == 1
    assert count_at(w, [20_000, 0, 10_000, 5_000, 15_000], 20_000) == 5
    # Equal times join (difference 0 < gap).
    assert count_at(w, [7, 7, 7], 7) == 3


def test_session_uses_only_contributing_events():
    # The view at 5000 does not qualify; the purchases at 0 and 10000 are 10000 apart: split.
    feature = {**COUNT, "where": "type == 'purchase'", "window": {"type": "session", "gap": "10s"}}
    records = [ev(0, type="purchase"), ev(5_000, type="view"), ev(10_000, type="purchase")]
    assert value_at(feature, records, 10_000) == 1
    # And the session ends at the latest qualifying event, not at later non-qualifying ones.
    records = [ev(0, type="purchase"), ev(9_000, type="view")]
    assert value_at(feature, records, 10_000) == 0


# ------------------------------------------------------------------------------------------------
# Aggregations
# ------------------------------------------------------------------------------------------------

LIFETIME = {"type": "lifetime"}


def agg(aggregation: str, values: list, field: str = "x", t: int = 10**6, **extra):
    """The aggregation over events at times 1, 2, 3, ... with field `x` set to each value (MISSING: absent)."""
    records = []
    for k, v in enumerate(values, start=1):
        records.append(ev(k) if v is ref.MISSING else ev(k, **{field: v}))
    return value_at({"aggregation": aggregation, "field": field, "window": LIFETIME, **extra}, records, t)


def test_count_counts_every_event_even_without_the_field():
    assert value_at({**COUNT, "window": LIFETIME}, [ev(1), ev(2, x=None), ev(3, x={"a": 1})], 10) == 3
    assert value_at({**COUNT, "window": LIFETIME}, [], 10) == 0


def test_sum():
    assert agg("sum", []) == 0
    assert agg("sum", [1, 2, 3]) == 6 and isinstance(agg("sum", [1, 2, 3]), int)
    assert agg("sum", [1, 2.5]) == 3.5
    assert agg("sum", [1, 2.0]) == 3.0 and isinstance(agg("sum", [1, 2.0]), float)
    # Skipped: bool, string, null, missing, object, array.
    assert agg("sum", [5, True, "7", None, ref.MISSING, {"v": 1}, [1]]) == 5
    # The exact total decides: 2**62 + 2**62 overflows int64, so a float; adding -2**62 brings it back.
    assert agg("sum", [2**62, 2**62]) == 2.0**63 and isinstance(agg("sum", [2**62, 2**62]), float)
    assert agg("sum", [2**62, 2**62, -(2**62)]) == 2**62
    assert agg("sum", [2**63 - 1, 1, -1]) == 2**63 - 1
    assert agg("sum", [-(2**63), -1]) == -(2.0**63)  # -9223372036854775809 as a double rounds to -2**63
    # Exact float total: 0.1 + 0.2 + 0.3 summed exactly and rounded once.
    assert agg("sum", [0.1, 0.2, 0.3]) == 0.6
    assert agg("sum", [1e16, 1.0, -1e16]) == 1.0


def test_mean():
    assert agg("mean", []) is None
    assert agg("mean", [1, 2]) == 1.5
    assert agg("mean", [1, 2, 4]) == 7 / 3
    assert agg("mean", [2, "x", True, 4.0]) == 3.0


def test_min_max():
    assert agg("min", []) is None and agg("max", []) is None
    assert agg("min", [3, 1.5, 2, -7, True, "-100"]) == -7
    assert agg("max", [3, 1.5, 2, -7, True, "100"]) == 3
    assert agg("max", [3, 3.5]) == 3.5
    assert agg("min", [2**53 + 1, 2.0**53]) == 2.0**53  # by value: 2**53 < 2**53 + 1
    # An integer wins a tie with an equal float, in either order.
    assert type(agg("min", [1.0, 1, 2])) is int and type(agg("min", [1, 1.0, 2])) is int
    assert type(agg("max", [2.0, 2, 1])) is int and type(agg("max", [2.0, 1])) is float


def test_stddev():
    assert agg("stddev", []) is None
    assert agg("stddev", [5]) == 0.0
    assert agg("stddev", [2, 4, 4, 4, 5, 5, 7, 9]) == 2.0  # mean 5; squared deviations sum to 32; 32/8 = 4
    assert agg("stddev", [1, 2]) == 0.5
    assert agg("stddev", [0.1, 0.1, 0.1]) == 0.0
    assert math.isclose(agg("stddev", [1, 2, 3, 4]), math.sqrt(1.25), rel_tol=1e-15)


def test_last():
    assert agg("last", []) is None
    assert value_at({"aggregation": "last", "field": "x", "window": LIFETIME},
                    [ev(5, x="a"), ev(3, x="b"), ev(5, x="c"), ev(4, x="d")], 10) == "c"  # tie: later line
    assert value_at({"aggregation": "last", "field": "x", "window": LIFETIME},
                    [ev(5, x="a"), ev(6, x=None), ev(7, x={"o": 1}), ev(8)], 10) == "a"  # unusable values skipped
    last = {"aggregation": "last", "field": "x", "window": LIFETIME}
    assert value_at(last, [ev(1, x=1), ev(2, x=False)], 10) is False
    assert value_at({"aggregation": "last", "field": "x", "window": LIFETIME}, [ev(1, x=1), ev(2, x=2.5)], 1) == 1


def test_count_distinct():
    assert agg("count_distinct", []) == 0
    # 1 and 1.0 are one value; "1" and true are two more; null, missing, object, array are skipped.
    assert agg("count_distinct", [1, 1.0, "1", True, None, ref.MISSING, {"a": 1}, [1], 1]) == 3
    assert agg("count_distinct", [True, False, True, 0, "true"]) == 4
    assert agg("count_distinct", ["a", "A", "a", "a "]) == 3
    assert agg("count_distinct", [0, -0.0, 0.0]) == 1
    assert agg("count_distinct", [2**62, 2**62 + 1]) == 2


def test_approx_count_distinct_reference_is_exact_and_the_rule():
    assert agg("approx_count_distinct", ["a", "b", "a", 1, 1.0], precision=10) == 3
    assert ref.approx_count_distinct_ok(32, 32, 10)  # 2**10 / 32 = 32: must be exact
    assert not ref.approx_count_distinct_ok(32, 33, 10)
    # Above 32 at p=10: within 4 * 1.04 / 32 = 13%.
    assert ref.approx_count_distinct_ok(100, 113, 10)
    assert not ref.approx_count_distinct_ok(100, 114, 10)
    assert ref.approx_count_distinct_ok(0, 0, 4) and not ref.approx_count_distinct_ok(0, 1, 4)


def test_nested_field():
    feature = {"aggregation": "sum", "field": "device.ver", "window": LIFETIME}
    records = [ev(1, device={"ver": 2}), ev(2, device={"os": "ios"}), ev(3, device="ios"), ev(4, device={"ver": 5})]
    assert value_at(feature, records, 10) == 7


def test_integer_and_string_entities_are_the_same():
    feature = {**COUNT, "window": LIFETIME}
    records = [{"user": 42, "ts": 1}, {"user": "42", "ts": 2}, {"user": "042", "ts": 3}]
    assert value_at(feature, records, 10, entity="42") == 2
    assert value_at(feature, records, 10, entity="042") == 1


def test_unknown_entity_gets_empty_values():
    assert value_at({**COUNT, "window": LIFETIME}, [ev(1)], 10, entity="nobody") == 0
    assert value_at({"aggregation": "mean", "field": "x", "window": LIFETIME}, [ev(1, x=1)], 10, entity="zz") is None


def test_late_events_do_not_contribute():
    wm = {"max_out_of_orderness": "1s", "allowed_lateness": "1s"}
    records = [ev(10_000), ev(7_999), ev(8_000)]  # 7999 < 10000 - 2000: late
    assert value_at({**COUNT, "window": LIFETIME}, records, 20_000, watermark=wm) == 2


# ------------------------------------------------------------------------------------------------
# where expressions
# ------------------------------------------------------------------------------------------------

RECORD = {
    "type": "purchase",
    "amount": 10,
    "price": 10.0,
    "ok": True,
    "no": False,
    "nothing": None,
    "device": {"os": "ios", "ver": 3},
    "tags": ["a"],
    "obj": {"k": 1},
    "name": "é",
    "one": 1,
}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("type == 'purchase'", True),
        ('type == "purchase"', True),
        ("type != 'purchase'", False),
        ("amount == 10.0", True),  # numbers by value
        ("price == 10", True),
        ("amount > 9.5 and amount < 10.5", True),
        ("amount >= 10 and amount <= 10", True),
        ("amount > -1", True),
        ("amount < -1", False),
        ("missing == 1", False),
        ("missing != 1", False),  # a missing field makes != false too
        ("not missing == 1", True),
        ("missing in [1, 2]", False),
        ("not (missing != 1)", True),
        ("device.os == 'ios'", True),
        ("device.os.x == 'ios'", False),  # missing
        ("device.ver in [1, 2, 3.0]", True),
        ("device.os in ['android', 'web']", False),
        ("type < 'q'", True),  # bytewise: 'p' < 'q'
        ("type > 'purchasd'", True),
        ("type > 'Z'", True),  # bytewise: 'p' (0x70) > 'Z' (0x5A); case matters
        ("type < 'Zebra'", False),
        ("name > 'z'", True),  # é is 0xC3 0xA9 in UTF-8, above 'z'
        ("ok == true", True),
        ("ok != false", True),
        ("ok == 1", False),  # a bool is not a number
        ("one == true", False),
        ("one != true", True),
        ("ok > false", False),  # booleans are not ordered
        ("ok", True),  # bare operand: only boolean true
        ("no", False),
        ("one", False),
        ("type", False),
        ("missing", False),
        ("not no", True),
        ("nothing == null", True),
        ("nothing != null", False),
        ("nothing <= null", False),
        ("nothing in [1, null]", True),
        ("amount == null", False),
        ("amount != null", True),
        ("type == 10", False),
        ("type != 10", True),
        ("type < 10", False),  # different types are not ordered
        ("obj == obj", False),  # objects/arrays: == false, != true, ordering false
        ("tags != 'a'", True),
        ("tags < 'b'", False),
        ("tags in ['a']", False),
        ("1 == 1", True),
        ("'it\\'s' == \"it's\"", True),  # backslash escape
        ("not ok or ok and no", False),  # (not ok) or (ok and no)
        ("ok or ok and no", True),  # and binds tighter: ok or (ok and no)
        ("(ok or ok) and no", False),
        ("not not ok", True),
        ("type in ['view', 'purchase'] and not (amount > 100 or device.os == 'android')", True),
    ],
)
def test_where(text, expected):
    assert ref.eval_where(ref.parse_where(text), RECORD) is expected


@pytest.mark.parametrize("text", ["", "a ==", "a == b ==", "(a == 1", "a in []", "a in [b]", "and", "a = 1", "'x",
                                  "a.in == 1", "a == 1 b"])
def test_where_syntax_errors(text):
    with pytest.raises(ref.ReferenceError):
        ref.parse_where(text)


# ------------------------------------------------------------------------------------------------
# The CLI end to end: exact output text
# ------------------------------------------------------------------------------------------------


def test_cli_output(tmp_path):
    (tmp_path / "spec.yaml").write_text(
        "name: t\n"
        "entity: user\n"
        "timestamp: ts\n"
        "watermark: {max_out_of_orderness: 1s, allowed_lateness: 1s}\n"
        "features:\n"
        "  - {name: n, aggregation: count, window: {type: sliding, size: 10s}}\n"
        "  - {name: total, aggregation: sum, field: amount, window: {type: lifetime}}\n"
        "  - {name: avg, aggregation: mean, field: amount, window: {type: lifetime}}\n"
        "  - {name: cat, aggregation: last, field: cat, window: {type: lifetime}}\n"
        "  - {name: flag, aggregation: last, field: flag, window: {type: lifetime}}\n"
        "  - {name: views, aggregation: count, where: \"type == 'view'\", window: {type: tumbling, size: 1m}}\n"
    )
    (tmp_path / "events.jsonl").write_bytes(jsonl(
        {"user": "a", "ts": "1970-01-01T00:00:01Z", "amount": 1, "cat": 'x,"y"', "flag": True, "type": "view"},
        {"user": "a", "ts": 2000, "amount": 2.5, "cat": "line\nbreak"},
        "not json",
        {"user": "a", "ts": -1000, "amount": 100},  # late: -1000 < 2000 - 2000
        {"user": 7, "ts": 61000, "amount": 4, "type": "view"},
    ))
    (tmp_path / "rows.csv").write_text(
        'id,user,ts,note\n'
        '1,a,1999,"x, y"\n'
        '2,a,1970-01-01T00:00:12.000Z,\n'
        '3,7,60000,\n'
        '4,7,61000,\n'
        '5,ghost,0,\n'
    )
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference.py")
    result = subprocess.run(
        [sys.executable, script, "--spec", str(tmp_path / "spec.yaml"), "--events", str(tmp_path / "events.jsonl"),
         "--entities", str(tmp_path / "rows.csv"), "--output", str(tmp_path / "out.csv"),
         "--dead-letters", str(tmp_path / "dead.jsonl")],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.csv").read_text() == (
        "id,user,ts,note,n,total,avg,cat,flag,views\n"
        '1,a,1999,"x, y",1,1,1.0,"x,""y""",true,1\n'
        '2,a,1970-01-01T00:00:12.000Z,,0,3.5,1.75,"line\nbreak",true,1\n'  # (2000, 12000] excludes 2000
        "3,7,60000,,0,0,,,,0\n"
        "4,7,61000,,1,4,4.0,,,1\n"
        "5,ghost,0,,0,0,,,,0\n"
    )
    dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert [(d["line"], d["reason"] == "late") for d in dead] == [(3, False), (4, True)]


def test_percentile_features_are_named_and_ranked_exactly() -> None:
    spec = ref.parse_spec({"name": "p", "entity": "u", "timestamp": "ts", "features": [
        {"name": "amt", "aggregation": "approx_percentile", "field": "x", "percentiles": [0.5, 0.999, 0, 1, 0.07],
         "window": {"type": "lifetime"}}]})
    assert [f.name for f in spec.features] == ["amt_p50", "amt_p99_9", "amt_p0", "amt_p100", "amt_p7"]
    assert ref.percentile_rank(spec.features[4].percentile, 100) == 7  # 0.07 * 100 is 7.000000000000001 in doubles
    assert ref.percentile_rank(ref.Fraction(0), 5) == 1 and ref.percentile_rank(ref.Fraction(1), 5) == 5


def test_approx_percentile_ok_is_exact_up_to_the_capacity_and_bounded_beyond() -> None:
    half = ref.Fraction(1, 2)
    assert ref.approx_percentile_ok([3, 1, 2], half, 2.0)
    assert not ref.approx_percentile_ok([3, 1, 2], half, 3.0)
    assert ref.approx_percentile_ok([], half, None) and not ref.approx_percentile_ok([1], half, None)
    values = list(range(1, 1001))  # n = 1000: L = 2 levels, E = 2 * 1000 / 256 = 7.8 ranks
    assert ref.percentile_rank_error_bound(1000) == ref.Fraction(2000, 256)
    assert ref.approx_percentile_ok(values, half, 507.0) and ref.approx_percentile_ok(values, half, 493.0)
    assert not ref.approx_percentile_ok(values, half, 509.0) and not ref.approx_percentile_ok(values, half, 491.0)
    assert not ref.approx_percentile_ok(values, half, 500.5)  # not a value of the window


def test_top_k_orders_ties_and_merges_equal_numbers() -> None:
    values = ["b", "a", 2, 2.0, True, False, "a", "b", 1.5]
    assert ref.top_k(values, 3) == [{"value": 2, "count": 2}, {"value": "a", "count": 2}, {"value": "b", "count": 2}]
    assert ref.top_k(values, 9)[3:] == [{"value": False, "count": 1}, {"value": True, "count": 1},
                                        {"value": 1.5, "count": 1}]
    assert ref.top_k([], 3) == []


def test_top_k_ok_is_exact_within_the_capacity_and_bounded_beyond() -> None:
    few = ["x"] * 5 + ["y"] * 3
    assert ref.top_k_ok(few, 1, [{"value": "x", "count": 5}])
    assert not ref.top_k_ok(few, 1, [{"value": "x", "count": 4}])  # exact while few distinct values
    assert not ref.top_k_ok([1, 1], 1, [{"value": True, "count": 2}])  # True is not 1
    many = ["hot"] * 300 + [f"v{i}" for i in range(1000)]  # 1300 values, 1001 distinct: slack 1300/65 = 20
    assert ref.top_k_ok(many, 1, [{"value": "hot", "count": 280}])
    assert not ref.top_k_ok(many, 1, [{"value": "hot", "count": 279}])
    assert not ref.top_k_ok(many, 1, [{"value": "hot", "count": 301}])
    assert not ref.top_k_ok(many, 2, [{"value": "v1", "count": 1}, {"value": "hot", "count": 290}])  # order


def test_a_list_of_fields_counts_combinations_and_skips_by_the_first_bad_field() -> None:
    spec = ref.parse_spec({"name": "p", "entity": "u", "timestamp": "ts", "features": [
        {"name": "pairs", "aggregation": "count_distinct", "field": ["a", "b"], "window": {"type": "lifetime"}}]})
    feature = spec.features[0]
    records = [{"a": "x,y", "b": "z"}, {"a": "x", "b": "y,z"}, {"a": 1, "b": "q"}, {"a": 1.0, "b": "q"}]
    assert len({ref.distinct_key(ref.input_value(feature, r)) for r in records}) == 3
    assert ref.input_skip_reason(feature, {"a": None}) == "null"
    assert ref.input_skip_reason(feature, {"a": 1}) == "missing"
    assert ref.input_skip_reason(feature, {"a": [1], "b": None}) == "wrong_type"

"""State that expires (`ttl`, issue 15 part 4), through every path that computes features.

A workload of users that go idle for longer than the ttl (and some for a little longer than it, less than
ttl + the watermark's delay, so that an out-of-order event can still join the old life), with disorder within
the watermark and a few late events, runs through `freshet run`. Compared with the brute-force reference
(tests/reference.py, `assign_lives` / `life_as_of`): every row of the features table, lookups at and after the
horizon (idle entities answer their empty-window values, lifetime features included), and `freshet historical`
rows at arbitrary times. Then: the state's entity count falls and the expiries are counted; a backfill and a run
resumed from its checkpoint write the same table; a restart restores the same entities; and with Redis, both keys
of an entity carry an expiry of the ttl, refreshed on write, checked on a real redis-server.
"""
from __future__ import annotations

import json
import random
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest

import reference
from asof_exact_test import BIN, _ms
from asof_exact_test import _same as _same_number
from asof_exact_test import _same_as_text as _same_number_text
from feature_runs import (Workload, check_backfill_rewrites_bit_for_bit, check_resumed_run_writes_the_same_rows,
                          historical_answers, make_workload, sample_rows, stream)
from redis_server import RedisClient, RedisServer
from run_recovery_test import Server

TTL_MS = 20 * 60_000
DELAY_MS = 30_000 + 30_000  # max_out_of_orderness + allowed_lateness
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

SPEC = """name: expiry
entity: user_id
timestamp: ts
ttl: 20m
watermark: {{max_out_of_orderness: 30s, allowed_lateness: 30s}}
source: {{type: file, path: {events}, follow: {follow}}}
serve: {{port: 0}}
checkpoint: {{interval: 200ms}}
{online}features:
  - {{name: n_life, aggregation: count, window: {{type: lifetime}}}}
  - {{name: amount_life, aggregation: sum, field: amount, window: {{type: lifetime}}}}
  - {{name: last_category, aggregation: last, field: category, window: {{type: lifetime}}}}
  - {{name: first_category, aggregation: first, field: category, window: {{type: lifetime}}}}
  - {{name: purchases_10m, aggregation: count, where: "type == 'purchase'", window: {{type: sliding, size: 10m, slide: 1m}}}}
  - {{name: n_5m, aggregation: count, window: {{type: sliding, size: 5m}}}}
  - {{name: max_amount_15m, aggregation: max, field: amount, window: {{type: tumbling, size: 15m}}}}
  - {{name: n_session, aggregation: count, window: {{type: session, gap: 5m}}}}
  - {{name: categories_1h, aggregation: count_distinct, field: category, window: {{type: sliding, size: 1h, slide: 5m}}}}
  - {{name: mean_amount_2h, aggregation: mean, field: amount, window: {{type: sliding, size: 2h}}}}
"""


def _spec_text(events: Path, follow: bool = False, redis_port: int | None = None) -> str:
    online = f"online: {{type: redis, port: {redis_port}, flush_interval: 50ms}}\n" if redis_port else ""
    return SPEC.format(events=events, follow="true" if follow else "false", online=online)


def _same(feature: reference.Feature, expected, got) -> bool:
    """asof_exact_test's comparison (numbers to 1e-9, null as null), with `first` compared as text like `last`."""
    if feature.aggregation == "first" and expected is not None and got is not None:
        return reference.format_value(got) == reference.format_value(expected)
    return _same_number(feature, expected, got)


def _same_as_text(feature: reference.Feature, cell: str, expected) -> bool:
    if feature.aggregation in ("first", "last"):
        return cell == reference.format_value(expected)
    return _same_number_text(feature, cell, expected)


def _generate(seed: int, users: int = 30) -> bytes:
    """Each user: bursts of events seconds to minutes apart, separated by idle gaps, some just over the ttl
    (within ttl + the watermark's delay, where an out-of-order event can still bridge them), some far over it.
    Lines are in arrival order: event time plus up to 50 s of disorder, and now and then an event far behind
    (late)."""
    rng = random.Random(seed)
    events = []
    for u in range(users):
        t = START_MS + rng.randint(0, 30 * 60_000)
        for _ in range(rng.randint(20, 60)):
            roll = rng.random()
            if roll < 0.08:
                t += TTL_MS + rng.randint(1, DELAY_MS)  # just over the ttl
            elif roll < 0.14:
                t += TTL_MS + rng.randint(DELAY_MS, 3 * TTL_MS)  # far over it
            elif roll < 0.17:
                t += TTL_MS - rng.randint(0, 30_000)  # just under it (or exactly it)
            else:
                t += rng.randint(1_000, 4 * 60_000)
            kind = rng.choice(["view", "view", "purchase"])
            events.append({"user_id": f"u{u}", "ts": t, "type": kind, "amount": rng.randint(1, 500),
                           "category": rng.choice("abcdefg")})
    arrival = []
    for e in events:
        delay = rng.randint(0, 50_000) if rng.random() < 0.3 else 0
        if rng.random() < 0.01:
            delay = 5 * 60_000  # late
        arrival.append((e["ts"] + delay, e))
    arrival.sort(key=lambda pair: pair[0])
    return b"".join(json.dumps(e).encode() + b"\n" for _, e in arrival)


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    """The accepted events carry their lives (reference.assign_lives)."""
    work = make_workload(tmp_path_factory.mktemp("expiry"), _generate(seed=15), _spec_text)
    reference.assign_lives(work.accepted, work.spec)
    return work


@pytest.fixture(scope="module")
def streamed(workload: Workload, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    return stream(workload, tmp_path_factory.mktemp("expiry-run") / "data")


def _expected_row(spec: reference.Spec, feature_index: int, entity_prefix: list[reference.Event], t: int):
    """The reference value of one feature as of t over the entity's events accepted so far (the lives rule)."""
    feature = spec.features[feature_index]
    life = reference.life_as_of(spec, entity_prefix, t)
    qualifying = [e for e in entity_prefix if reference.qualifies(feature, e, spec) and e.life == life]
    return reference.value_from_qualifying(feature, qualifying, t)[0]


def test_the_workload_expires_entities_and_bridges_gaps(workload: Workload) -> None:
    """Lives end (many times), and some gaps of more than the ttl lie within one life (an event arrived out of
    order across them, or the watermark had not passed them yet): the case the engine must not expire."""
    lives = {(e.entity, e.life) for e in workload.accepted}
    assert len(lives) - len({e.entity for e in workload.accepted}) > 50, len(lives)
    by_life: dict[tuple[str, int], list[int]] = {}
    for e in workload.accepted:
        by_life.setdefault((e.entity, e.life), []).append(e.time_ms)
    inner_gaps = sum(1 for times in by_life.values() for a, b in zip(sorted(times), sorted(times)[1:])
                     if b - a > TTL_MS)
    assert inner_gaps > 5, inner_gaps


@pytest.mark.parametrize("parallelism", [0, 2])
def test_features_rows_equal_the_reference(workload: Workload, streamed: tuple[Path, pa.Table], parallelism: int,
                                           tmp_path: Path) -> None:
    """On one thread and on two shards (each expiring its own entities)."""
    spec = workload.spec
    table = (stream(workload, tmp_path / "data", parallelism) if parallelism else streamed)[1].to_pylist()
    assert [r["seq"] for r in table] == list(range(len(workload.accepted)))
    prefix: dict[str, list[reference.Event]] = {}
    mismatches = []
    for row, event in zip(table, workload.accepted):
        assert row["entity"] == event.entity
        assert _ms(row["event_time"]) == event.time_ms
        entity_prefix = prefix.setdefault(event.entity, [])
        entity_prefix.append(event)
        for j, feature in enumerate(spec.features):
            expected = _expected_row(spec, j, entity_prefix, event.time_ms)
            if not _same(feature, expected, row[feature.name]):
                mismatches.append(f"seq {row['seq']} ({event.entity}, t {event.time_ms}, life {event.life}) "
                                  f"{feature.name}: reference {expected!r}, table {row[feature.name]!r}")
    assert not mismatches, f"{len(mismatches)} mismatches\n" + "\n".join(mismatches[:20])


def test_backfill_rewrites_the_streamed_table_bit_for_bit(workload: Workload,
                                                           streamed: tuple[Path, pa.Table]) -> None:
    check_backfill_rewrites_bit_for_bit(workload.spec_path, *streamed)


def test_a_run_resumed_from_its_checkpoint_writes_the_same_rows(workload: Workload, tmp_path: Path,
                                                                streamed: tuple[Path, pa.Table]) -> None:
    """The lives (each entity's newest event, the free indices of expired ones) go through a checkpoint."""
    check_resumed_run_writes_the_same_rows(workload, tmp_path, streamed[1], parts=3)


def _live_bounds(workload: Workload) -> tuple[int, int, int]:
    """After the whole input: (entities no sweep may drop, entities a sweep may still hold, all entities). A
    sweep runs whenever the low watermark L has moved by ttl/8, so at the end the entities idle longer than
    ttl + ttl/8 before the final L are gone, and those idle at most ttl are held."""
    low = max(e.time_ms for e in workload.accepted) - DELAY_MS
    newest: dict[str, int] = {}
    for e in workload.accepted:
        newest[e.entity] = max(newest.get(e.entity, e.time_ms), e.time_ms)
    held = sum(1 for t in newest.values() if low - t <= TTL_MS)
    may_hold = sum(1 for t in newest.values() if low - t <= TTL_MS + TTL_MS // 8)
    return held, may_hold, len(newest)


def _wait_metric(server: Server, name: str, target: float, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    value = 0.0
    while time.monotonic() < deadline:
        value = server.metric(name)
        if value >= target:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} reached {value}, not {target}, in {timeout_s} s")


def test_lookups_count_and_restart_keep_the_expiry(workload: Workload, tmp_path: Path) -> None:
    """Lookups at and after the horizon equal the reference (idle entities answer empty windows); the state's
    entity count falls to what the ttl leaves, every dropped entity is counted, and a restart restores the same."""
    spec = workload.spec
    data_dir = tmp_path / "data"
    server = Server(workload.spec_path, data_dir, tmp_path / "run.log")
    evaluator = reference.Evaluator(spec, workload.accepted)
    newest: dict[str, int] = {}
    for e in workload.accepted:
        newest[e.entity] = max(newest.get(e.entity, e.time_ms), e.time_ms)
    horizon = max(newest.values()) - DELAY_MS
    rng = random.Random(7)
    points = []
    for entity in sorted(newest):
        points += [(entity, rng.randint(horizon, horizon + 3 * TTL_MS)) for _ in range(4)]
        if newest[entity] + TTL_MS >= horizon:  # the edge, where the state still holds the entity
            points += [(entity, newest[entity] + TTL_MS), (entity, newest[entity] + TTL_MS + 1)]
    mismatches = []
    inexact = 0
    try:
        _wait_metric(server, "freshet_events_in_total", len(workload.lines))
        for entity, at in points:
            answer = json.loads(server.get(f"/v1/features/{entity}?at={at}"))
            if not answer["exact"]:
                inexact += 1
                continue
            for j, feature in enumerate(spec.features):
                expected, _ = evaluator.value(j, entity, at)
                if not _same(feature, expected, answer["features"][feature.name]):
                    mismatches.append(f"{entity} at {at} (newest {newest[entity]}) {feature.name}: reference "
                                      f"{expected!r}, served {answer['features'][feature.name]!r}")
        held, may_hold, everyone = _live_bounds(workload)
        entities = server.metric("freshet_state_entities")
        expired = server.metric("freshet_state_entities_expired_total")
        assert held <= entities <= may_hold < everyone, (held, entities, may_hold, everyone)
        lives = len({(e.entity, e.life) for e in workload.accepted})
        # Every life that ended is counted once: those a later event of the entity ended, and the entities dropped.
        assert expired == (lives - everyone) + (everyone - entities), (expired, lives, everyone, entities)
        assert server.terminate() == 0
    except BaseException:
        if server.proc.poll() is None:
            server.kill()
        raise
    assert inexact <= len(points) // 20, inexact
    assert not mismatches, f"{len(mismatches)} mismatches\n" + "\n".join(mismatches[:20])
    restarted = Server(workload.spec_path, data_dir, tmp_path / "run2.log")
    try:
        assert restarted.metric("freshet_state_entities") == entities
        assert restarted.metric("freshet_state_entities_expired_total") == expired
        idle = max(newest, key=lambda e: -newest[e])  # idle the longest: dropped, answers empty windows
        answer = json.loads(restarted.get(f"/v1/features/{idle}"))
        assert answer["features"]["n_life"] == 0 and answer["features"]["last_category"] is None, answer
    finally:
        assert restarted.terminate() == 0


def test_historical_rows_equal_the_reference(workload: Workload, tmp_path: Path) -> None:
    spec = workload.spec
    evaluator = reference.Evaluator(spec, workload.accepted)
    rows = sample_rows(workload, seed=4, count=400, after_ms=2 * TTL_MS)
    # At the edges of expiry: ttl and ttl + 1 ms after events.
    for e in random.Random(5).sample(workload.accepted, 150):
        rows += [(e.entity, e.time_ms), (e.entity, e.time_ms + TTL_MS), (e.entity, e.time_ms + TTL_MS + 1)]
    answers = historical_answers(workload, tmp_path, ["user_id", "ts"], [[e, t] for e, t in rows])
    mismatches = []
    expired_rows = 0
    for (entity, t), answer in zip(rows, answers, strict=True):
        expired_rows += reference.life_as_of(spec, evaluator.by_entity[entity], t) == reference.EXPIRED
        for j, feature in enumerate(spec.features):
            expected, _ = evaluator.value(j, entity, t)
            if expected is None:
                ok = answer[feature.name] == ""
            else:
                ok = _same_as_text(feature, answer[feature.name], expected)
            if not ok:
                mismatches.append(f"{entity} at {t} {feature.name}: reference {expected!r}, "
                                  f"historical {answer[feature.name]!r}")
    assert expired_rows > 100, expired_rows
    assert not mismatches, f"{len(mismatches)} mismatches\n" + "\n".join(mismatches[:20])


def test_redis_keys_expire_with_the_ttl(workload: Workload, tmp_path: Path) -> None:
    redis = RedisServer().start()
    try:
        spec_path = tmp_path / "spec.yaml"
        spec_path.write_text(_spec_text(workload.events_path, redis_port=redis.port))
        server = Server(spec_path, tmp_path / "data", tmp_path / "run.log")
        try:
            _wait_metric(server, "freshet_events_in_total", len(workload.lines))
            _wait_metric(server, "freshet_redis_in_sync", 1)
            with RedisClient(redis.port) as client:
                deadline = time.monotonic() + 30
                while server.metric("freshet_redis_pending_entities") > 0 and time.monotonic() < deadline:
                    time.sleep(0.05)
                keys = client.command("KEYS", "freshet:expiry:*")
                entity_keys = [k for k in keys if ":state:" in k or ":features:" in k]
                assert entity_keys, keys
                for key in entity_keys:
                    ttl = client.command("PTTL", key)
                    assert 0 < ttl <= TTL_MS, (key, ttl)
                # The marker is not an entity's: it never expires.
                assert client.command("PTTL", "freshet:expiry:marker") == -1
            _expect_served_from_redis(workload, spec_path)
        finally:
            assert server.terminate() == 0
    finally:
        redis.stop()


def _expect_served_from_redis(workload: Workload, spec_path: Path) -> None:
    """`freshet serve` answers from the Redis states (which carry each entity's newest event) with the same expiry:
    empty windows more than ttl after an entity's newest event, the reference's values before."""
    spec = workload.spec
    evaluator = reference.Evaluator(spec, workload.accepted)
    newest: dict[str, int] = {}
    for e in workload.accepted:
        newest[e.entity] = max(newest.get(e.entity, e.time_ms), e.time_ms)
    serve = subprocess.Popen([BIN, "serve", "--spec", str(spec_path), "--port", "0"], stderr=subprocess.PIPE)
    try:
        port = int(serve.stderr.readline().decode().rsplit(":", 1)[1])
        held = [entity for entity in sorted(newest) if client_known(port, entity)]
        assert held, "no entity is in Redis"
        mismatches = []
        for entity in held:
            for at in (newest[entity], newest[entity] + TTL_MS, newest[entity] + TTL_MS + 1):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/features/{entity}?at={at}", timeout=30) as r:
                    answer = json.loads(r.read())
                for j, feature in enumerate(spec.features):
                    expected, _ = evaluator.value(j, entity, at)
                    if not _same(feature, expected, answer["features"][feature.name]):
                        mismatches.append(f"{entity} at {at}: {feature.name} reference {expected!r}, served "
                                          f"{answer['features'][feature.name]!r}")
        assert not mismatches, "\n".join(mismatches[:20])
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=30) == 0


def client_known(port: int, entity: str) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/features/{entity}", timeout=30) as r:
        return bool(json.loads(r.read())["known"])

"""Composite entity keys (`entity: [user_id, merchant_id]`, issue 15 part 2), through every path.

A workload keyed by (user, merchant) pairs whose values include the key encoding's separator and escape bytes,
slashes, percent signs and integers, built so that naive joins of the parts collide: ("a\\x1f", "b") and
("a", "\\x1fb") must stay two entities (while 7 and "7" are one value: an integer id is its decimal text, as for
a single key). Compared with the brute-force reference (tests/reference.py groups by the
tuple): every row of the features table, lookups by path (GET /v1/features/{user_id}/{merchant_id}) and by POST
objects, the Python SDK's `entity_rows`, and `freshet historical` with a column per key field (the offline
events and features tables have one too). An event without a key
field is a dead letter naming it. With Redis, every pair has keys of its own (checked on a real redis-server).
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import deltalake
import pyarrow as pa
import pytest

import reference
from asof_exact_test import BIN, _same, _same_as_text
from feature_runs import Workload, historical_answers, make_workload, sample_rows, stream
from redis_server import RedisClient, RedisServer
from run_recovery_test import Server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))  # The SDK of this checkout.

SPEC = """name: pairs
entity: [user_id, merchant_id]
timestamp: ts
watermark: {{max_out_of_orderness: 10s, allowed_lateness: 10s}}
source: {{type: file, path: {events}, follow: false}}
serve: {{port: 0}}
{online}features:
  - {{name: n, aggregation: count, window: {{type: lifetime}}}}
  - {{name: amount_10m, aggregation: sum, field: amount, window: {{type: sliding, size: 10m, slide: 1m}}}}
  - {{name: last_category, aggregation: last, field: category, window: {{type: lifetime}}}}
  - {{name: n_session, aggregation: count, window: {{type: session, gap: 2m}}}}
  - {{name: max_amount_5m, aggregation: max, field: amount, window: {{type: sliding, size: 5m}}}}
"""

# Values that break a naive encoding: the separator and escape bytes, at the ends too, slashes and '%'.
USERS = ["u1", "a\x1f", "a", 7, "7x", "\x1e", "sl/ash", "100%", "é"]
MERCHANTS = ["m1", "b", "\x1fb", "x", 12, "\x1e\x1f", "m/2", "%2F"]
START_MS = 1_767_225_600_000


def encode(parts: tuple) -> str:
    """The key encoding as README documents it, written independently of the engine: the parts joined by 0x1F,
    with 0x1F and 0x1E inside a part preceded by 0x1E."""
    return "\x1f".join("".join("\x1e" + c if c in "\x1e\x1f" else c for c in str(p)) for p in parts)


def _spec_text(events: Path, redis_port: int | None = None) -> str:
    online = f"online: {{type: redis, port: {redis_port}, flush_interval: 50ms}}\n" if redis_port else ""
    return SPEC.format(events=events, online=online)


def _generate(seed: int) -> tuple[bytes, list[int]]:
    """Events of every pair in a random order (with some disorder), and the line numbers of the events missing a
    key field or with an empty one."""
    rng = random.Random(seed)
    lines, bad = [], []
    t = START_MS
    for number in range(1, 3001):
        t += rng.randint(0, 3_000)
        event = {"user_id": rng.choice(USERS), "merchant_id": rng.choice(MERCHANTS),
                 "ts": t - (rng.randint(0, 8_000) if rng.random() < 0.2 else 0),
                 "amount": rng.randint(1, 900), "category": rng.choice("abc")}
        if rng.random() < 0.01:
            del event["merchant_id"]
            bad.append(number)
        elif rng.random() < 0.005:
            event["user_id"] = ""
            bad.append(number)
        lines.append(json.dumps(event, ensure_ascii=False).encode() + b"\n")
    return b"".join(lines), bad


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    data, bad = _generate(seed=3)
    work = make_workload(tmp_path_factory.mktemp("pairs"), data, _spec_text)
    work.bad_lines = bad
    return work


@pytest.fixture(scope="module")
def streamed(workload: Workload, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    return stream(workload, tmp_path_factory.mktemp("pairs-run") / "data")


def test_the_workload_has_pairs_that_naive_joins_would_merge(workload: Workload) -> None:
    pairs = {e.entity for e in workload.accepted}
    assert ("a\x1f", "b") in pairs and ("a", "\x1fb") in pairs
    naive = {"\x1f".join(p) for p in pairs}
    assert len(naive) < len(pairs)  # a join without escaping would merge some
    assert len({encode(p) for p in pairs}) == len(pairs)


@pytest.mark.parametrize("parallelism", [0, 2])
def test_features_rows_equal_the_reference(workload: Workload, streamed: tuple[Path, pa.Table], parallelism: int,
                                           tmp_path: Path) -> None:
    """On one thread and on two shards (pairs are sharded by their encoded key)."""
    spec = workload.spec
    table = (stream(workload, tmp_path / "data", parallelism) if parallelism else streamed)[1].to_pylist()
    assert len(table) == len(workload.accepted)
    prefix: dict[tuple, list[reference.Event]] = {}
    mismatches = []
    for row, event in zip(table, workload.accepted):
        assert row["entity"] == encode(event.entity), (row["entity"], event.entity)
        assert (row["user_id"], row["merchant_id"]) == tuple(str(p) for p in event.entity), (row, event.entity)
        entity_prefix = prefix.setdefault(event.entity, [])
        entity_prefix.append(event)
        for j, feature in enumerate(spec.features):
            expected, _ = reference.feature_value(feature, entity_prefix, event.time_ms, spec)
            if not _same(feature, expected, row[feature.name]):
                mismatches.append(f"seq {row['seq']} {event.entity!r} {feature.name}: reference {expected!r}, "
                                  f"table {row[feature.name]!r}")
    assert not mismatches, f"{len(mismatches)} mismatches\n" + "\n".join(mismatches[:20])


def test_the_events_table_has_a_column_per_key_field(workload: Workload, streamed: tuple[Path, pa.Table]) -> None:
    """After the encoded `entity`, the parts as they are (the features table's are checked with its rows)."""
    events = deltalake.DeltaTable(str(streamed[0] / "offline" / "events")).to_pyarrow_table().sort_by("seq")
    assert events.column_names[:5] == ["seq", "event_time", "entity", "user_id", "merchant_id"], events.column_names
    assert events.schema.field("user_id").type == pa.string()
    got = list(zip(events.column("user_id").to_pylist(), events.column("merchant_id").to_pylist()))
    assert got == [tuple(str(p) for p in e.entity) for e in workload.accepted]
    assert streamed[1].column_names[:4] == ["seq", "entity", "user_id", "merchant_id"], streamed[1].column_names


def test_an_event_without_a_key_field_is_a_dead_letter_naming_it(workload: Workload,
                                                                 streamed: tuple[Path, pa.Table]) -> None:
    dead = {int(d["line"]): d["reason"] for d in map(json.loads, (streamed[0] / "dead_letters" / "file.jsonl")
                                                     .read_text().splitlines())}
    for line in workload.bad_lines:
        assert line in dead, line
        assert "part of the entity key [user_id, merchant_id]" in dead[line], dead[line]
        assert "'merchant_id'" in dead[line] or "'user_id'" in dead[line], dead[line]


def _path(parts: tuple) -> str:
    return "/v1/features/" + "/".join(urllib.parse.quote(str(p), safe="") for p in parts)


def test_lookups_by_path_post_and_sdk_equal_the_reference(workload: Workload, tmp_path: Path) -> None:
    import freshet

    spec = workload.spec
    evaluator = reference.Evaluator(spec, workload.accepted)
    pairs = sorted({e.entity for e in workload.accepted}, key=repr)
    at = max(e.time_ms for e in workload.accepted) + 60_000
    server = Server(workload.spec_path, tmp_path / "data", tmp_path / "run.log")
    mismatches = []
    try:
        _wait_read(server, len(workload.lines))
        body = json.dumps({"entities": [{"user_id": u, "merchant_id": m} for u, m in pairs], "at": at}).encode()
        posted = server.post("/v1/features", body, "application/json")["results"]
        client = freshet.Client(f"http://127.0.0.1:{server.port}")
        frame = client.get_online_features(entity_rows=[{"user_id": u, "merchant_id": m} for u, m in pairs],
                                           at=at, as_frame=True)
        assert list(frame.index.names) == ["user_id", "merchant_id"]
        for k, pair in enumerate(pairs):
            got = json.loads(server.get(_path(pair) + f"?at={at}"))
            assert got["entity"] == {"user_id": str(pair[0]), "merchant_id": str(pair[1])}, got["entity"]
            assert posted[k]["entity"] == got["entity"]
            for j, feature in enumerate(spec.features):
                expected, _ = evaluator.value(j, (str(pair[0]), str(pair[1])), at)
                for how, value in (("GET", got["features"][feature.name]),
                                   ("POST", posted[k]["features"][feature.name]),
                                   ("SDK", frame.iloc[k][feature.name])):
                    if not _same(feature, expected, None if value != value else value):
                        mismatches.append(f"{how} {pair!r} {feature.name}: reference {expected!r}, served {value!r}")
        # A path with the wrong number of parts is not an endpoint; a POST id that is not an object is refused.
        for path, status in ((_path(("u1",)), 404), (_path(("u1", "m1", "x")), 404)):
            try:
                server.get(path)
                raise AssertionError(f"{path} answered")
            except urllib.error.HTTPError as e:
                assert e.code == status, (path, e.code)
        try:
            server.post("/v1/features", b'{"entities": ["u1"]}', "application/json")
            raise AssertionError("a bare id was taken for a composite key")
        except urllib.error.HTTPError as e:
            assert e.code == 400 and "user_id" in e.read().decode()
    finally:
        assert server.terminate() == 0
    assert not mismatches, f"{len(mismatches)} mismatches\n" + "\n".join(mismatches[:20])


def _wait_read(server: Server, lines: int) -> None:
    import time
    deadline = time.monotonic() + 60
    while server.metric("freshet_events_in_total") < lines:
        assert time.monotonic() < deadline, "freshet run did not read every line within 60 s"
        time.sleep(0.05)


def test_historical_takes_a_column_per_key_field(workload: Workload, tmp_path: Path) -> None:
    spec = workload.spec
    evaluator = reference.Evaluator(spec, workload.accepted)
    rows = sample_rows(workload, seed=5, count=400, after_ms=600_000)
    # The key columns in another order than the spec's.
    answers = historical_answers(workload, tmp_path, ["merchant_id", "user_id", "ts"], [[m, u, t] for (u, m), t in rows])
    mismatches = []
    for (pair, t), answer in zip(rows, answers, strict=True):
        assert (answer["user_id"], answer["merchant_id"]) == (str(pair[0]), str(pair[1]))
        for j, feature in enumerate(spec.features):
            expected, _ = evaluator.value(j, pair, t)
            ok = answer[feature.name] == "" if expected is None else _same_as_text(feature, answer[feature.name],
                                                                                    expected)
            if not ok:
                mismatches.append(f"{pair!r} at {t} {feature.name}: reference {expected!r}, "
                                  f"historical {answer[feature.name]!r}")
    assert not mismatches, f"{len(mismatches)} mismatches\n" + "\n".join(mismatches[:20])
    # Without one of the key columns: an error naming it.
    missing = tmp_path / "missing.csv"
    missing.write_text("user_id,ts\nu1,1\n")
    run = subprocess.run([BIN, "historical", "--spec", str(workload.spec_path), "--events", str(workload.events_path),
                          "--entities", str(missing), "--output", str(tmp_path / "x.csv"), "--no-progress"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "merchant_id" in run.stderr, run.stderr


def test_redis_keys_of_pairs_are_unambiguous(workload: Workload, tmp_path: Path) -> None:
    redis = RedisServer().start()
    try:
        spec_path = tmp_path / "spec.yaml"
        spec_path.write_text(_spec_text(workload.events_path, redis_port=redis.port))
        server = Server(spec_path, tmp_path / "data", tmp_path / "run.log")
        try:
            _wait_read(server, len(workload.lines))
            import time
            deadline = time.monotonic() + 30
            while (server.metric("freshet_redis_in_sync") < 1 or server.metric("freshet_redis_pending_entities") > 0):
                assert time.monotonic() < deadline, "the Redis writer did not catch up within 30 s"
                time.sleep(0.05)
            pairs = {e.entity for e in workload.accepted}
            with RedisClient(redis.port) as client:
                keys = client.command("KEYS", "freshet:pairs:features:*", raw=True)
                assert len(keys) == len(pairs), (len(keys), len(pairs))
                evaluator = reference.Evaluator(workload.spec, workload.accepted)
                for pair in pairs:
                    key = b"freshet:pairs:features:" + encode(pair).encode()
                    fields = client.command("HGETALL", key)
                    expected, _ = evaluator.value(0, pair, 2**62)
                    assert fields["n"] == str(expected), (pair, fields)
        finally:
            assert server.terminate() == 0
    finally:
        redis.stop()


def test_sdk_training_set_takes_both_key_columns(workload: Workload) -> None:
    import freshet
    import pandas as pd

    spec = workload.spec
    evaluator = reference.Evaluator(spec, workload.accepted)
    pairs = sorted({e.entity for e in workload.accepted}, key=repr)[:10]
    t = max(e.time_ms for e in workload.accepted)
    rows = pd.DataFrame({"user_id": [u for u, _ in pairs], "merchant_id": [m for _, m in pairs], "ts": t,
                         "label": range(len(pairs))})
    train = freshet.get_historical_features(str(workload.spec_path), rows, events=str(workload.events_path),
                                            binary=BIN)
    assert list(train.columns[:4]) == ["user_id", "merchant_id", "ts", "label"]
    for k, pair in enumerate(pairs):
        expected, _ = evaluator.value(0, pair, t)
        assert train["n"].iloc[k] == expected, (pair, train["n"].iloc[k], expected)

"""Request-time features (issue 12): `request_features` computed at lookup time from the entity's features and
the request's parameters, and in `freshet historical` from the row's features and columns, agree with the
independent reference (tests/reference.py: the brute-force feature values, then its own `derive` evaluator over
them).

- GET /v1/features?param.amount=..., POST /v1/features {"params": ...} against a live `freshet run`;
- `freshet historical` (CSV and Parquet output) with an `amount` column in the entity rows;
- the SDK's get_online_features(params=...);
- errors: an unknown name in an expression located at file:line:col, an unknown parameter, explaining a request
  feature.
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import urllib.parse

import pyarrow.parquet as pq
import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "python"))
import reference as ref  # noqa: E402
from run_process import get_json, start_run, wait_accepted, wait_for  # noqa: E402

FRESHET_BIN = os.environ.get("FRESHET_BIN", os.path.join(HERE, "..", "build", "freshet"))

SPEC = """\
name: request
entity: user_id
timestamp: ts
watermark: {max_out_of_orderness: 30s, allowed_lateness: 30s}
source: {type: file, path: events.jsonl}
checkpoint: {interval: 1h}
features:
  - name: purchase_count_30m
    aggregation: count
    where: "type == 'purchase'"
    window: {type: sliding, size: 30m, slide: 1m}
  - name: avg_amount_1h
    aggregation: mean
    field: amount
    where: "type == 'purchase'"
    window: {type: sliding, size: 1h}
  - name: last_category
    aggregation: last
    field: category
    window: {type: lifetime}
request_features:
  - {name: amount_over_avg_1h, expr: "param.amount / avg_amount_1h"}
  - {name: purchases_after, expr: "purchase_count_30m + 1"}
  - {name: tier, expr: "if(coalesce(avg_amount_1h, 0) > 100, 'high', 'low')"}
  - {name: shouting_category, expr: "upper(last_category)"}
  - {name: ratio_doubled, expr: "amount_over_avg_1h * 2"}
  - {name: per_purchase, expr: "param.amount / purchase_count_30m"}
  - {name: hour, expr: "hour_of_day(ts)"}
  - {name: is_self, expr: "user_id == param.user"}
"""

REQUEST_NAMES = ["amount_over_avg_1h", "purchases_after", "tier", "shouting_category", "ratio_doubled",
                 "per_purchase", "hour", "is_self"]


def close(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    d = tmp_path_factory.mktemp("request")
    subprocess.run([FRESHET_BIN, "generate", "--users", "30", "--events", "3000", "--seed", "12", "--disorder", "1m",
                    "--output", str(d / "events.jsonl")], check=True, capture_output=True)
    (d / "spec.yaml").write_text(SPEC)
    spec = ref.load_spec(str(d / "spec.yaml"))
    doc = yaml.safe_load(SPEC)
    parsed = ref.parse_request_features(doc)
    events, _ = ref.read_events((d / "events.jsonl").read_bytes(), spec)
    return d, spec, parsed, events


def expected(spec, parsed, evaluator, entity: str, t: int, params: dict) -> tuple[dict, dict]:
    """The reference's features of the entity as of t, and its request features over them."""
    features = {f.name: evaluator.value(k, entity, t)[0] for k, f in enumerate(spec.features)}
    return features, ref.request_feature_values(parsed, spec.entity_field, entity, t, features, params)


def cases(events, count: int):
    """(entity, t) pairs: for a few entities with purchases, at their newest event and 20 minutes later (a
    lookup is exact at or after the entity's newest event)."""
    entities = sorted({e.entity for e in events if e.record.get("type") == "purchase"})[:count]
    out = []
    for entity in entities:
        newest = max(e.time_ms for e in events if e.entity == entity)
        out += [(entity, newest), (entity, newest + 20 * 60 * 1000)]
    return out


def check(answer: dict, spec, parsed, evaluator, entity: str, t: int, params: dict) -> None:
    features, request = expected(spec, parsed, evaluator, entity, t, params)
    for name, value in features.items():
        assert close(answer[name], value), (entity, t, name, answer[name], value)
    for name in REQUEST_NAMES:
        assert close(answer[name], request[name]), (entity, t, name, answer[name], request[name], params)


def test_lookups_agree_with_reference(workload, tmp_path):
    d, spec, parsed, events = workload
    evaluator = ref.Evaluator(spec, events)
    proc, port = start_run([FRESHET_BIN, "run", "--spec", str(d / "spec.yaml"), "--data-dir", str(tmp_path / "data"),
                            "--port", "0"], tmp_path / "run.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_accepted(base, len(events), 60)
        seen_null = seen_value = False
        for entity, t in cases(events, 6):
            params = {"amount": 12.5, "user": entity}
            q = urllib.parse.urlencode({"at": t, "param.amount": "12.5", "param.user": entity})
            status, got = get_json(f"{base}/v1/features/{urllib.parse.quote(entity)}?{q}")
            assert status == 200 and got["exact"], got
            check(got["features"], spec, parsed, evaluator, entity, t, params)
            # POST, with typed parameters (an integer amount) and one entity more.
            status, got = get_json(base + "/v1/features", {"entities": [entity, "nobody"], "at": t,
                                                           "params": {"amount": 40, "user": "nobody"}})
            assert status == 200, got
            check(got["results"][0]["features"], spec, parsed, evaluator, entity, t, {"amount": 40, "user": "nobody"})
            check(got["results"][1]["features"], spec, parsed, evaluator, "nobody", t, {"amount": 40, "user": "nobody"})
            seen_null |= got["results"][0]["features"]["per_purchase"] is None
            seen_value |= got["results"][0]["features"]["amount_over_avg_1h"] is not None
            # Without parameters, those reading one are null; asked for alone, a request feature still reads
            # the features it needs.
            status, got = get_json(f"{base}/v1/features/{urllib.parse.quote(entity)}?at={t}&features=ratio_doubled,tier")
            assert status == 200 and list(got["features"]) == ["ratio_doubled", "tier"], got
            _, request = expected(spec, parsed, evaluator, entity, t, {})
            assert got["features"]["ratio_doubled"] is None and got["features"]["tier"] == request["tier"]
        # The workload has both a null (a division by a zero count) and values.
        assert seen_null and seen_value
        # The SDK passes parameters and returns request features with the features.
        import freshet
        client = freshet.Client(base)
        entity, t = cases(events, 1)[0]
        got = client.get_online_features([entity], at=t, params={"amount": 12.5, "user": entity})[entity]
        check(got, spec, parsed, evaluator, entity, t, {"amount": 12.5, "user": entity})
        # Errors say what is wrong.
        status, err = get_json(f"{base}/v1/features/{entity}?param.amont=3")
        assert status == 400 and "'amont'" in err["error"] and "amount, user" in err["error"], err
        status, err = get_json(f"{base}/v1/explain/{entity}?feature=tier")
        assert status == 400 and "request feature" in err["error"], err
        status, spec_json = get_json(base + "/v1/spec")
        assert [r["name"] for r in spec_json["request_features"]] == REQUEST_NAMES
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("output", ["rows.csv", "rows.parquet"])
def test_historical_rows_agree_with_reference(workload, tmp_path, output):
    d, spec, parsed, events = workload
    evaluator = ref.Evaluator(spec, events)
    rows = []
    for k, (entity, t) in enumerate(cases(events, 10)):
        rows.append({"user_id": entity, "ts": t - 7 * 60 * 1000 * (k % 3), "amount": ["12.5", "40", ""][k % 3],
                     "user": entity if k % 2 else "x"})
    with open(tmp_path / "entities.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["user_id", "ts", "amount", "user"])
        w.writeheader()
        w.writerows(rows)
    out = subprocess.run([FRESHET_BIN, "historical", "--spec", str(d / "spec.yaml"), "--events",
                          str(d / "events.jsonl"), "--entities", str(tmp_path / "entities.csv"), "--output",
                          str(tmp_path / output)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    if output.endswith(".parquet"):
        table = pq.read_table(tmp_path / output)
        got_rows = table.to_pylist()
        # Typed by their values: an integer column, a double one, text.
        assert str(table.schema.field("purchases_after").type) == "int64"
        assert str(table.schema.field("amount_over_avg_1h").type) == "double"
        assert str(table.schema.field("tier").type) == "string"
        assert str(table.schema.field("is_self").type) == "bool"
    else:
        with open(tmp_path / output, newline="") as f:
            got_rows = list(csv.DictReader(f))
    assert len(got_rows) == len(rows)
    for row, got in zip(rows, got_rows):
        params = {"user": row["user"]}
        if row["amount"]:
            params["amount"] = json.loads(row["amount"])
        features, request = expected(spec, parsed, evaluator, row["user_id"], int(row["ts"]), params)
        for name in REQUEST_NAMES:
            want = request[name]
            if output.endswith(".csv"):
                text = got[name]
                if want is None:
                    assert text == "", (name, row, text)
                elif isinstance(want, bool):
                    assert text == ("true" if want else "false"), (name, row, text)
                elif isinstance(want, (int, float)):
                    assert close(float(text), float(want)), (name, row, text, want)
                else:
                    assert text == want, (name, row, text, want)
            else:
                assert close(got[name], want), (name, row, got[name], want)


def test_spec_errors_are_located(tmp_path):
    bad = SPEC.replace('"purchase_count_30m + 1"', '"purchase_count_3m + 1"')
    (tmp_path / "bad.yaml").write_text(bad)
    out = subprocess.run([FRESHET_BIN, "validate", "--spec", str(tmp_path / "bad.yaml")], capture_output=True,
                         text=True)
    assert out.returncode != 0
    line = bad.splitlines().index(next(x for x in bad.splitlines() if "purchase_count_3m" in x)) + 1
    column = bad.splitlines()[line - 1].index("purchase_count_3m") + 1
    assert f"bad.yaml:{line}:{column}: error:" in out.stderr, out.stderr
    assert "'purchase_count_3m' is neither a feature nor an earlier request feature" in out.stderr
    clash = SPEC.replace("{name: hour,", "{name: avg_amount_1h,")
    (tmp_path / "clash.yaml").write_text(clash)
    out = subprocess.run([FRESHET_BIN, "validate", "--spec", str(tmp_path / "clash.yaml")], capture_output=True,
                         text=True)
    assert out.returncode != 0 and "names are output columns and must be unique" in out.stderr, out.stderr


def test_freshet_serve_from_redis_computes_request_features(workload, tmp_path):
    """`freshet serve` (no state of its own: the features come from Redis) answers request features too."""
    from redis_server import RedisServer

    d, spec, parsed, events = workload
    evaluator = ref.Evaluator(spec, events)
    redis = RedisServer().start()
    try:
        (tmp_path / "events.jsonl").write_bytes((d / "events.jsonl").read_bytes())
        (tmp_path / "spec.yaml").write_text(SPEC.replace("checkpoint: {interval: 1h}",
                                                         f"online: {{type: redis, port: {redis.port}}}"))
        proc, port = start_run([FRESHET_BIN, "run", "--spec", str(tmp_path / "spec.yaml"), "--data-dir",
                                str(tmp_path / "data"), "--port", "0"], tmp_path / "run.log")
        try:
            base = f"http://127.0.0.1:{port}"
            wait_accepted(base, len(events), 60)
            wait_for(lambda: get_json(base + "/v1/ui/pipeline")[1]["online"]["pending_entities"] == 0 and
                     get_json(base + "/health")[1]["status"] == "ok", 60, "every entity written to Redis")
            serve = subprocess.Popen([FRESHET_BIN, "serve", "--spec", str(tmp_path / "spec.yaml"), "--port", "0"],
                                     stderr=subprocess.PIPE)
            try:
                serve_port = int(serve.stderr.readline().decode().rsplit(":", 1)[1])
                at = max(e.time_ms for e in events) + 60_000  # After every entity's newest event: exact.
                entities = [entity for entity, _ in cases(events, 5)][::2] + ["nobody"]
                params = {"amount": 25.0, "user": entities[0]}
                status, got = get_json(f"http://127.0.0.1:{serve_port}/v1/features",
                                       {"entities": entities, "at": at, "params": params})
                assert status == 200, got
                for entity, result in zip(entities, got["results"]):
                    check(result["features"], spec, parsed, evaluator, entity, at, params)
            finally:
                serve.terminate()
                serve.wait(timeout=30)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        redis.stop()


def test_sdk_training_set_has_request_features(workload):
    """get_historical_features hands entity_df's parameter columns to `freshet historical` and returns the
    request features after the features, equal to the reference."""
    import pandas as pd

    import freshet

    d, spec, parsed, events = workload
    evaluator = ref.Evaluator(spec, events)
    pairs = cases(events, 5)
    rows = pd.DataFrame({"user_id": [e for e, _ in pairs], "ts": [t for _, t in pairs],
                         "amount": [12.5 if k % 2 else float("nan") for k in range(len(pairs))],
                         "user": [e if k % 3 else "x" for k, (e, _) in enumerate(pairs)]})
    train = freshet.get_historical_features(str(d / "spec.yaml"), rows, events=str(d / "events.jsonl"),
                                            binary=FRESHET_BIN)
    assert list(train.columns)[-len(REQUEST_NAMES):] == REQUEST_NAMES
    for k, (entity, t) in enumerate(pairs):
        params = {"user": rows["user"][k]}
        if k % 2:
            params["amount"] = 12.5
        _, request = expected(spec, parsed, evaluator, entity, t, params)
        for name in REQUEST_NAMES:
            got = train[name][k]
            got = None if got is None or (isinstance(got, float) and math.isnan(got)) else got
            if isinstance(got, (bool,)) or hasattr(got, "dtype") and got.dtype == bool:
                got = bool(got)
            elif hasattr(got, "item"):
                got = got.item()
            assert close(got, request[name]), (name, entity, t, got, request[name])

"""The Python SDK (python/freshet) against a real `freshet run` and the `freshet historical` CLI.

- Client.get_online_features equals the HTTP API's raw JSON, and equals values computed here from the events
  that were ingested (counts, max, sum, last, distinct count), for string and integer entity ids.
- get_historical_features equals `freshet historical` run directly on a CSV, value for value, for datetime
  (UTC, naive, other zones), epoch-ms and RFC 3339 timestamps, with the original columns, dtypes, index and row
  order kept; events as a file, a list of dicts or a DataFrame give the same values.
- Errors: the server's messages (unknown feature, bad time, missing token) as FreshetError; bad frames as
  ValueError; a missing binary with a message saying how to fix it.
- skew_report against the `freshet skew --json` contract (through a stand-in binary), and against the real
  command when the binary has it; read_offline_table on Delta tables.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))  # The SDK of this checkout, installed or not.

import freshet  # noqa: E402

BIN = os.environ.get("FRESHET_BIN", str(ROOT / "build" / "freshet"))
START_MS = 1767225600000  # 2026-01-01T00:00:00Z
HOUR_MS = 3600 * 1000
TOKEN = "sdk-test-token"

ONLINE_SPEC = """name: sdk_online
entity: user_id
timestamp: ts
source: {type: http}
serve: {port: 0}
checkpoint: {interval: 500ms}
features:
  - {name: events_total, aggregation: count, window: {type: lifetime}}
  - {name: purchases_1h, aggregation: count, where: "type == 'purchase'", window: {type: sliding, size: 1h}}
  - {name: amount_max, aggregation: max, field: amount, window: {type: lifetime}}
  - {name: purchase_sum, aggregation: sum, field: amount, where: "type == 'purchase'", window: {type: lifetime}}
  - {name: last_type, aggregation: last, field: type, window: {type: lifetime}}
  - {name: categories, aggregation: count_distinct, field: category, window: {type: lifetime}}
"""

# Every aggregation and window kind, with a watermark, so lateness matters.
HISTORICAL_SPEC = """name: sdk_historical
entity: user_id
timestamp: ts
watermark: {max_out_of_orderness: 3s, allowed_lateness: 10s}
features:
  - {name: purchases_30m, aggregation: count, where: "type == 'purchase'", window: {type: sliding, size: 30m, slide: 1m}}
  - {name: avg_amount_1h, aggregation: mean, field: amount, where: "type == 'purchase'", window: {type: sliding, size: 1h}}
  - {name: categories_session, aggregation: count_distinct, field: category, where: "type == 'view'", window: {type: session, gap: 30m}}
  - {name: failed_logins_10m, aggregation: count, where: "type == 'login' and success == false", window: {type: sliding, size: 10m}}
  - {name: max_amount_24h, aggregation: max, field: amount, where: "type == 'purchase'", window: {type: sliding, size: 24h}}
  - {name: min_amount, aggregation: min, field: amount, window: {type: lifetime}}
  - {name: stddev_amount, aggregation: stddev, field: amount, window: {type: lifetime}}
  - {name: last_category, aggregation: last, field: category, window: {type: lifetime}}
  - {name: last_success, aggregation: last, field: success, window: {type: lifetime}}
  - {name: amount_sum_tumbling, aggregation: sum, field: amount, window: {type: tumbling, size: 1h}}
  - {name: approx_items, aggregation: approx_count_distinct, field: item_id, precision: 10, window: {type: lifetime}}
"""


def _require_binary() -> None:
    if not Path(BIN).exists():
        pytest.skip(f"freshet binary not found at {BIN}; build it or set FRESHET_BIN")


# ------------------------------------------------------------------------------------------ the live server


class Server:
    """One `freshet run` on a free port, with a bearer token for ingest."""

    def __init__(self, spec: Path, data_dir: Path, log: Path) -> None:
        self._start(["--spec", str(spec), "--data-dir", str(data_dir)], log)

    def _start(self, args: list, log: Path, cwd: Path | None = None) -> None:
        """Runs `freshet run ARGS` (in `cwd`) and returns once it says where it serves."""
        self.log = open(log, "ab")
        env = dict(os.environ, FRESHET_TOKEN=TOKEN)
        self.proc = subprocess.Popen([BIN, "run", *args], cwd=cwd, stdout=self.log, stderr=subprocess.PIPE, env=env)
        deadline = time.time() + 30
        line = b""
        while time.time() < deadline:
            line = self.proc.stderr.readline()  # type: ignore[union-attr]
            self.log.write(line)
            match = re.search(rb"(http://127\.0\.0\.1:\d+)", line)
            if match:
                self.url = match.group(1).decode()
                # Keep reading its stderr, so that it never blocks on a full pipe.
                self._drain = threading.Thread(target=self._copy_stderr, daemon=True)
                self._drain.start()
                return
            if not line and self.proc.poll() is not None:
                break
        raise AssertionError(f"freshet run did not start: {line!r}")

    def _copy_stderr(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.log.write(line)

    def stop(self) -> int:
        """SIGTERM (a final checkpoint), then the exit code; stopping twice is harmless."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._drain.join(timeout=10)
        if not self.log.closed:
            self.proc.stderr.close()  # type: ignore[union-attr]
            self.log.close()
        return code


def _generate(out: Path, *args: str) -> None:
    subprocess.run([BIN, "generate", *args, "--output", str(out)], check=True, capture_output=True)


def _wait_processed(client: freshet.Client, count: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    seen = 0.0
    while time.time() < deadline:
        seen = sum(v for k, v in client.metrics().items() if k.startswith("freshet_events_in_total"))
        if seen >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the server processed {seen} of {count} events")


@pytest.fixture(scope="module")
def online(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    """A running pipeline fed with 20,000 generated events (6 hours, in time order) plus a few with integer ids."""
    _require_binary()
    tmp = tmp_path_factory.mktemp("online")
    spec = tmp / "spec.yaml"
    spec.write_text(ONLINE_SPEC)
    events_path = tmp / "events.jsonl"
    _generate(events_path, "--users", "200", "--events", "20000", "--duration", "6h", "--seed", "11")
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    events += [{"user_id": 42, "ts": START_MS + HOUR_MS, "type": "purchase", "amount": 5, "category": "books"},
               {"user_id": "42", "ts": START_MS + 2 * HOUR_MS, "type": "view", "category": "toys"}]
    server = Server(spec, tmp / "data", tmp / "run.log")
    client = freshet.Client(server.url, token=TOKEN)
    try:
        accepted = client.ingest(events[:7000]) + client.ingest(json.dumps(e) for e in events[7000:])
        assert accepted == len(events)
        _wait_processed(client, len(events))
        yield {"tmp": tmp, "spec": spec, "server": server, "client": client, "events": events,
               "as_of": START_MS + 6 * HOUR_MS}
    finally:
        server.stop()


def _raw_lookup(url: str, body: Dict[str, Any]) -> Dict[str, Any]:
    request = urllib.request.Request(url + "/v1/features", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: Dict[str, Any] = json.loads(response.read())
    return answer


def _expected_online(events: List[Dict[str, Any]], as_of: int) -> Dict[str, Dict[str, Any]]:
    """The online spec's features as of `as_of`, computed directly from the events."""
    by_user: Dict[str, List[Dict[str, Any]]] = {}
    for e in events:
        by_user.setdefault(str(e["user_id"]), []).append(e)
    expected: Dict[str, Dict[str, Any]] = {}
    for user, evs in by_user.items():
        evs = [e for e in evs if e["ts"] <= as_of]
        amounts = [e["amount"] for e in evs if e.get("amount") is not None]
        latest = max(range(len(evs)), key=lambda i: (evs[i]["ts"], i))  # Ties: the later one in input order.
        expected[user] = {
            "events_total": len(evs),
            "purchases_1h": sum(1 for e in evs if e["type"] == "purchase" and as_of - HOUR_MS < e["ts"]),
            "amount_max": max(amounts) if amounts else None,
            "purchase_sum": math.fsum(e["amount"] for e in evs if e["type"] == "purchase"),
            "last_type": evs[latest]["type"],
            "categories": len({e["category"] for e in evs if "category" in e}),
        }
    return expected


# ------------------------------------------------------------------------------------------- online lookups


def test_online_features_equal_the_raw_http_answer(online: Dict[str, Any]) -> None:
    client: freshet.Client = online["client"]
    users = sorted({str(e["user_id"]) for e in online["events"]}) + ["nobody"]
    raw = _raw_lookup(client.url, {"entities": users, "at": online["as_of"]})
    raw_by_entity = {r["entity"]: r for r in raw["results"]}
    got = client.get_online_features(users, at=online["as_of"])
    assert list(got) == users
    for user in users:
        assert got[user] == raw_by_entity[user]["features"], user
    # RFC 3339 text and a datetime for `at` mean the same moment as epoch ms.
    assert client.get_online_features(users[:5], at="2026-01-01T06:00:00Z") == {u: got[u] for u in users[:5]}
    as_dt = pd.Timestamp("2026-01-01 06:00:00")  # Naive: UTC.
    assert client.get_online_features(users[:5], at=as_dt) == {u: got[u] for u in users[:5]}

    frame = client.get_online_features(users, at=online["as_of"], as_frame=True)
    assert list(frame.index) == users
    assert list(frame.columns) == [f["name"] for f in client.spec()["features"]] + ["known"]
    assert frame.attrs["as_of_ms"] == online["as_of"]
    assert frame["events_total"].dtype == np.int64 and frame["amount_max"].dtype == np.float64
    assert frame["last_type"].dtype == object and frame["known"].dtype == bool
    for user in users:
        row = frame.loc[user]
        assert bool(row["known"]) == raw_by_entity[user]["known"] == (user != "nobody")
        for name, value in raw_by_entity[user]["features"].items():
            if value is None:
                assert row[name] is None or (isinstance(row[name], float) and math.isnan(row[name])), (user, name)
            else:
                assert row[name] == value, (user, name)


def test_online_features_equal_values_computed_from_the_ingested_events(online: Dict[str, Any]) -> None:
    client: freshet.Client = online["client"]
    expected = _expected_online(online["events"], online["as_of"])
    assert len(expected) > 100
    got = client.get_online_features(list(expected), at=online["as_of"])
    mismatches = []
    for user, want in expected.items():
        for name, value in want.items():
            served = got[user][name]
            if name == "purchase_sum":
                ok = math.isclose(served, value, rel_tol=1e-12, abs_tol=1e-9)
            elif name in ("events_total", "purchases_1h", "categories"):
                ok = type(served) is int and served == value
            else:
                ok = served == value
            if not ok:
                mismatches.append(f"{user} {name}: served {served!r}, expected {value!r}")
    assert not mismatches, "\n".join(mismatches[:20])
    # The data is not degenerate: the values differ between users.
    assert len({v["events_total"] for v in expected.values()}) > 10
    assert sum(v["purchases_1h"] for v in expected.values()) > 0


def test_integer_entity_ids_are_their_decimal_text(online: Dict[str, Any]) -> None:
    client: freshet.Client = online["client"]
    got = client.get_online_features([42, "42"], at=online["as_of"], features=["events_total", "amount_max"])
    assert got == {42: {"events_total": 2, "amount_max": 5}}
    single = client.get_online_features(42, at=online["as_of"], features=["categories", "last_type"])
    assert single == {42: {"categories": 2, "last_type": "view"}}


def test_unknown_feature_and_bad_time_are_server_errors(online: Dict[str, Any]) -> None:
    client: freshet.Client = online["client"]
    with pytest.raises(freshet.FreshetError) as info:
        client.get_online_features(["u1"], features=["events_total", "no_such_feature"])
    assert info.value.status == 400
    assert "unknown feature 'no_such_feature'" in info.value.message
    assert "events_total" in info.value.message and "purchases_1h" in info.value.message  # The valid names.
    with pytest.raises(freshet.FreshetError) as info:
        client.get_online_features(["u1"], at="yesterday-ish")
    assert info.value.status == 400 and "yesterday-ish" in info.value.message


def test_ingest_needs_the_token(online: Dict[str, Any]) -> None:
    client = freshet.Client(online["client"].url, token="wrong")
    with pytest.raises(freshet.FreshetError) as info:
        client.ingest([{"user_id": "u1", "ts": START_MS, "type": "view"}])
    assert info.value.status == 401


def test_health_and_spec(online: Dict[str, Any]) -> None:
    client: freshet.Client = online["client"]
    assert client.health()["status"] in ("ok", "degraded")
    spec = client.spec()
    assert spec["name"] == "sdk_online" and spec["entity"] == "user_id"
    assert [f["aggregation"] for f in spec["features"]] == ["count", "count", "max", "sum", "last", "count_distinct"]


def test_unreachable_server_is_a_freshet_error() -> None:
    with pytest.raises(freshet.FreshetError, match="cannot reach freshet"):
        freshet.Client("http://127.0.0.1:9", timeout=2).health()


# ----------------------------------------------------------------------------------------- historical


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """Generated events (disordered, with late and malformed lines) and labelled entity rows."""
    _require_binary()
    tmp = tmp_path_factory.mktemp("historical")
    spec = tmp / "spec.yaml"
    spec.write_text(HISTORICAL_SPEC)
    events = tmp / "events.jsonl"
    subprocess.run([BIN, "generate", "--users", "300", "--events", "30000", "--duration", "12h", "--seed", "5",
                    "--disorder", "2s", "--late-share", "0.01", "--malformed-share", "0.005",
                    "--output", str(events), "--entities", str(tmp / "rows.csv"), "--entity-rows", "1500"],
                   check=True, capture_output=True)
    rows = pd.read_csv(tmp / "rows.csv")
    # Extra columns of several dtypes, a string index, and a shuffled order: all must come back unchanged.
    rng = np.random.default_rng(3)
    rows["weight"] = rng.random(len(rows))
    rows["note"] = [f"row, \"{i}\"" for i in range(len(rows))]
    rows["segment"] = pd.Categorical(rng.choice(["a", "b"], len(rows)))
    rows["flag"] = rng.random(len(rows)) < 0.5
    rows["maybe"] = pd.array([None if i % 7 == 0 else i for i in range(len(rows))], dtype="Int64")
    rows = rows.sample(frac=1.0, random_state=4)
    rows.index = pd.Index([f"r{i}" for i in rows.index])
    return {"tmp": tmp, "spec": spec, "events": events, "rows": rows}


def _cli_historical(work: Dict[str, Any], ts_text: List[str], name: str) -> List[Dict[str, str]]:
    """`freshet historical` run directly, on user_id and the given timestamp texts (the CLI parses them)."""
    entities = work["tmp"] / f"{name}.csv"
    with open(entities, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "ts"])
        w.writerows(zip(work["rows"]["user_id"], ts_text))
    out = work["tmp"] / f"{name}.out.csv"
    subprocess.run([BIN, "historical", "--spec", str(work["spec"]), "--events", str(work["events"]),
                    "--entities", str(entities), "--output", str(out), "--no-progress"], check=True,
                   capture_output=True)
    with open(out, newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_values(got: pd.DataFrame, expected: List[Dict[str, str]], spec: Path) -> None:
    info = freshet.load_spec(spec, BIN)
    assert len(got) == len(expected)
    mismatches = []
    for feature in info.features:
        column = got[feature.name]
        for position, (value, row) in enumerate(zip(column.tolist(), expected)):
            text = row[feature.name]
            if feature.aggregation in ("count", "count_distinct", "approx_count_distinct"):
                ok = text != "" and int(text) == value
            elif feature.aggregation == "last":
                ok = (value is None) if text == "" else value == text
            else:
                ok = math.isnan(value) if text == "" else float(text) == value  # The same bits.
            if not ok:
                mismatches.append(f"row {position} {feature.name}: CLI {text!r}, SDK {value!r}")
    assert not mismatches, "\n".join(mismatches[:20])


def _assert_frame_kept(got: pd.DataFrame, original: pd.DataFrame, spec: Path) -> None:
    info = freshet.load_spec(spec, BIN)
    assert list(got.columns) == list(original.columns) + info.feature_names
    pd.testing.assert_frame_equal(got[list(original.columns)], original)  # Values, dtypes, index, order.
    dtypes = {"count": "int64", "count_distinct": "int64", "approx_count_distinct": "int64", "last": "object"}
    for feature in info.features:
        assert str(got[feature.name].dtype) == dtypes.get(feature.aggregation, "float64"), feature


def _epoch_texts(rows: pd.DataFrame) -> List[str]:
    return [str(v) for v in rows["ts"]]


@pytest.mark.parametrize("kind", ["utc", "naive", "berlin", "epoch_ms", "rfc3339"])
def test_historical_equals_the_cli_value_for_value(workload: Dict[str, Any], kind: str) -> None:
    rows: pd.DataFrame = workload["rows"].copy()
    ms = rows["ts"].to_numpy()
    if kind == "utc":
        rows["ts"] = pd.to_datetime(ms, unit="ms", utc=True)
    elif kind == "naive":
        rows["ts"] = pd.to_datetime(ms, unit="ms")
    elif kind == "berlin":
        rows["ts"] = pd.to_datetime(ms, unit="ms", utc=True).tz_convert("Europe/Berlin")
    elif kind == "rfc3339":
        # Alternate Z and +02:00 offsets; the expected values come from the CLI parsing the same text.
        stamps = pd.to_datetime(ms, unit="ms", utc=True)
        texts = []
        for i, stamp in enumerate(stamps):
            if i % 2:
                texts.append((stamp + pd.Timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+02:00")
            else:
                texts.append(stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
        rows["ts"] = texts
    expected = _cli_historical(workload, list(rows["ts"]) if kind == "rfc3339" else _epoch_texts(workload["rows"]),
                               f"expected_{kind}")
    got = freshet.get_historical_features(workload["spec"], rows, events=workload["events"], binary=BIN)
    _assert_frame_kept(got, rows, workload["spec"])
    _assert_same_values(got, expected, workload["spec"])
    # Not a degenerate workload: plenty of non-empty values.
    assert (got["purchases_30m"] > 0).sum() > 20 and got["avg_amount_1h"].notna().sum() > 20
    assert got["last_category"].notna().sum() > 100


def test_historical_csv_and_parquet_outputs_agree(workload: Dict[str, Any]) -> None:
    rows = workload["rows"]
    expected = _cli_historical(workload, _epoch_texts(rows), "expected_csv")
    got = freshet.get_historical_features(workload["spec"], rows, events=workload["events"], binary=BIN,
                                          output_format="csv")
    _assert_same_values(got, expected, workload["spec"])
    parquet = freshet.get_historical_features(workload["spec"], rows, events=workload["events"], binary=BIN,
                                              output_format="parquet")
    _assert_same_values(parquet, expected, workload["spec"])


def test_historical_events_as_dicts_or_a_frame(workload: Dict[str, Any]) -> None:
    rows = workload["rows"].iloc[:300]
    from_file = freshet.get_historical_features(workload["spec"], rows, events=workload["events"], binary=BIN)
    # Only the well-formed lines: the malformed ones are rejected and do not move the watermark.
    events: List[Dict[str, Any]] = []
    for line in workload["events"].read_bytes().splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(value.get("user_id"), str) and isinstance(value.get("ts"), int):
            events.append(value)
    assert len(events) > 29000
    from_dicts = freshet.get_historical_features(workload["spec"], rows, events=events, binary=BIN)
    pd.testing.assert_frame_equal(from_dicts, from_file)
    from_frame = freshet.get_historical_features(workload["spec"], rows, events=pd.DataFrame(events), binary=BIN)
    pd.testing.assert_frame_equal(from_frame, from_file)


def test_historical_is_point_in_time(workload: Dict[str, Any]) -> None:
    """A row's values ignore events after its time: the same row with future events removed gives the same."""
    rows = workload["rows"].sort_values("ts").iloc[[300, 900]]
    lines = workload["events"].read_bytes().splitlines()
    for cutoff in rows["ts"]:
        # The input up to the first event more than the lateness horizon (3 s + 10 s) after the row's time:
        # any later line at or before the row's time is late, so the rest cannot change the row's values.
        end = len(lines)
        for i, line in enumerate(lines):
            try:
                ts = json.loads(line).get("ts")
            except (ValueError, AttributeError):
                continue
            if isinstance(ts, int) and ts > cutoff + 13000:
                end = i
                break
        assert 0 < end < len(lines)
        row = rows[rows["ts"] == cutoff]
        full = freshet.get_historical_features(workload["spec"], row, events=workload["events"], binary=BIN)
        cut = freshet.get_historical_features(workload["spec"], row, events=lines[:end], binary=BIN)
        pd.testing.assert_frame_equal(full, cut)
        assert full["last_category"].notna().all()


def test_historical_empty_frame_keeps_columns(workload: Dict[str, Any]) -> None:
    rows = workload["rows"].iloc[:0]
    got = freshet.get_historical_features(workload["spec"], rows, events=workload["events"], binary=BIN)
    _assert_frame_kept(got, rows, workload["spec"])
    assert len(got) == 0


def test_historical_argument_errors(workload: Dict[str, Any], tmp_path: Path) -> None:
    rows = workload["rows"]
    with pytest.raises(ValueError, match="no column 'user_id'"):
        freshet.get_historical_features(workload["spec"], rows.rename(columns={"user_id": "user"}),
                                        events=workload["events"], binary=BIN)
    with pytest.raises(ValueError, match="missing time"):
        bad = rows.copy()
        bad["ts"] = bad["ts"].astype("Int64")
        bad.iloc[3, bad.columns.get_loc("ts")] = pd.NA
        freshet.get_historical_features(workload["spec"], bad, events=workload["events"], binary=BIN)
    with pytest.raises(ValueError, match="not an RFC 3339 time"):
        bad = rows.copy()
        bad["ts"] = ["2026-01-01T00:00:00Z"] * (len(bad) - 1) + ["half past nine"]
        freshet.get_historical_features(workload["spec"], bad, events=workload["events"], binary=BIN)
    with pytest.raises(ValueError, match="already has columns named like features"):
        clash = rows.assign(purchases_30m=1)
        freshet.get_historical_features(workload["spec"], clash, events=workload["events"], binary=BIN)
    with pytest.raises(ValueError, match="entity ids are non-empty strings or integers"):
        bad = rows.copy()
        bad.iloc[5, bad.columns.get_loc("user_id")] = ""
        freshet.get_historical_features(workload["spec"], bad, events=workload["events"], binary=BIN)
    broken = tmp_path / "broken.yaml"
    broken.write_text(HISTORICAL_SPEC.replace("aggregation: stddev", "aggregation: stdev"))
    with pytest.raises(freshet.FreshetError, match=r"broken\.yaml:\d+:\d+: error:.*stdev"):
        freshet.get_historical_features(broken, rows, events=workload["events"], binary=BIN)


def test_integer_entities_and_timestamps(tmp_path: Path) -> None:
    _require_binary()
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: ints\nentity: account\ntimestamp: at\nfeatures:\n"
                    "  - {name: n, aggregation: count, window: {type: sliding, size: 1h}}\n"
                    "  - {name: total, aggregation: sum, field: x, window: {type: lifetime}}\n")
    events: List[Dict[str, Any]] = [{"account": 7, "at": 1000, "x": 1}, {"account": "7", "at": 2000, "x": 2},
              {"account": 8, "at": 1500, "x": 10}, {"account": 7, "at": 3_600_000 + 1500, "x": 4}]
    rows = pd.DataFrame({"account": [7, 8, 7, 9, 7], "at": [999, 1500, 2000, 5, 3_600_000 + 1500]})
    got = freshet.get_historical_features(spec, rows, events=events, binary=BIN)
    # Independent: counts of events at or before each row's time (within the hour), and sums of x.
    # The last row's hour is (1500, 3601500]: the events at 2000 and 3601500.
    assert got["n"].tolist() == [0, 1, 2, 0, 2]
    assert got["total"].tolist() == [0.0, 10.0, 3.0, 0.0, 7.0]


def test_text_times_with_and_without_offsets(tmp_path: Path) -> None:
    """Text without an offset is UTC even next to text with one; 't' and 'z' are RFC 3339 too."""
    _require_binary()
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\nentity: e\ntimestamp: ts\nfeatures:\n"
                    "  - {name: n, aggregation: count, window: {type: lifetime}}\n")
    events = [{"e": "a", "ts": 1000}, {"e": "a", "ts": 2000}, {"e": "a", "ts": 3000}]
    texts = ["1970-01-01T00:00:02Z", "1970-01-01T01:00:02.000+01:00", "1970-01-01 00:00:02", "1970-01-01t00:00:02z",
             "1970-01-01T00:00:01.999Z", "1969-12-31T19:00:03-05:00", pd.Timestamp("1970-01-01 00:00:03")]
    rows = pd.DataFrame({"e": "a", "ts": texts})
    got = freshet.get_historical_features(spec, rows, events=events, binary=BIN)
    assert got["n"].tolist() == [2, 2, 2, 2, 1, 3, 3]
    only_text = freshet.get_historical_features(spec, rows.iloc[:-1], events=events, binary=BIN)  # One column of str.
    assert only_text["n"].tolist() == [2, 2, 2, 2, 1, 3]


def test_missing_binary_says_how_to_fix(workload: Dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(freshet.FreshetError, match="does not exist.*build it"):
        freshet.get_historical_features(workload["spec"], workload["rows"], events=workload["events"],
                                        binary="/nonexistent/freshet")
    monkeypatch.setenv("FRESHET_BIN", "/nonexistent/freshet")
    with pytest.raises(freshet.FreshetError, match="FRESHET_BIN"):
        freshet.find_binary()
    monkeypatch.delenv("FRESHET_BIN")
    monkeypatch.setenv("PATH", "/nonexistent")
    from freshet import _cli
    monkeypatch.setattr(_cli, "_REPO_ROOT", Path("/nonexistent"))
    with pytest.raises(freshet.FreshetError, match="cannot find the freshet binary.*FRESHET_BIN.*PATH"):
        freshet.find_binary()
    monkeypatch.setenv("FRESHET_BIN", BIN)
    assert freshet.find_binary() == BIN


# --------------------------------------------------------------------------------------------------- skew

FAKE_SKEW = """#!{python}
# A stand-in for `freshet` that speaks the `freshet skew --json` contract, to test the SDK's side of it.
import json, os, sys
args = sys.argv[1:]
if args == ["--help"]:
    print("Subcommands:\\n  validate   Check a spec\\n  skew       Compare served and recomputed features")
    sys.exit(0)
with open(os.environ["FAKE_ARGS"], "w") as f:
    json.dump(args, f)
mode = os.environ["FAKE_MODE"]
if mode == "error":
    print("freshet skew: no feature_log table under /x/offline; run `freshet run` first", file=sys.stderr)
    sys.exit(2)
report = {{"since": "2026-01-01T00:00:00.000Z", "until": "2026-01-02T00:00:00.000Z", "answers": 120,
          "max_mismatch_rate": 0.001,
          "features": [
            {{"feature": "a", "compared": 120, "exact": 120, "match_rate": 1.0, "mismatch_rate": 0.0, "missing": 0,
             "extra": 0, "mean_abs_diff": 0.0, "max_abs_diff": 0.0, "psi": 0.0, "breached": False}},
            {{"feature": "b", "compared": 100, "exact": 90, "match_rate": 0.9, "mismatch_rate": 0.1, "missing": 20,
             "extra": 1, "mean_abs_diff": 0.25, "max_abs_diff": 3.5, "psi": None, "breached": True}}],
          "breached": ["b"]}}
print(json.dumps(report))
sys.exit(1 if mode == "breach" else 0)
"""


@pytest.fixture()
def fake_skew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    fake = tmp_path / "freshet"
    fake.write_text(FAKE_SKEW.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("FAKE_ARGS", str(tmp_path / "args.json"))
    return fake


def test_skew_report_reads_the_contract(fake_skew: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "breach")  # Exit 1: a threshold was crossed, not an error.
    report = freshet.skew_report(tmp_path / "spec.yaml", since=pd.Timestamp("2026-01-01", tz="UTC"),
                                 until="2026-01-02T00:00:00Z", data_dir=tmp_path / "data", binary=fake_skew)
    args = json.loads((tmp_path / "args.json").read_text())
    assert args == ["skew", "--spec", str(tmp_path / "spec.yaml"), "--json", "--data-dir", str(tmp_path / "data"),
                    "--since", str(START_MS), "--until", "2026-01-02T00:00:00Z"]
    assert list(report.index) == ["a", "b"] and report.index.name == "feature"
    assert list(report.columns) == freshet.skew.SKEW_COLUMNS
    assert report.loc["b", "compared"] == 100 and report.loc["b", "missing"] == 20
    assert report["compared"].dtype == np.int64 and report["mismatch_rate"].dtype == np.float64
    assert report.loc["b", "mismatch_rate"] == 0.1 and report.loc["b", "max_abs_diff"] == 3.5
    assert math.isnan(report["psi"].iloc[1])
    assert report["breached"].tolist() == [False, True]
    assert report.attrs["breached"] == ["b"] and report.attrs["answers"] == 120
    assert report.attrs["max_mismatch_rate"] == 0.001

    monkeypatch.setenv("FAKE_MODE", "ok")
    assert freshet.skew_report(tmp_path / "spec.yaml", binary=fake_skew)["exact"].tolist() == [120, 90]
    assert json.loads((tmp_path / "args.json").read_text()) == ["skew", "--spec", str(tmp_path / "spec.yaml"),
                                                                "--json"]


def test_skew_report_error_carries_stderr(fake_skew: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "error")
    with pytest.raises(freshet.FreshetError, match="no feature_log table") as info:
        freshet.skew_report(tmp_path / "spec.yaml", binary=fake_skew)
    assert info.value.exit_code == 2


# ------------------------------------------------------------------------------------------ offline tables


def test_read_offline_table_finds_the_folder(tmp_path: Path) -> None:
    deltalake = pytest.importorskip("deltalake")
    frame = pd.DataFrame({"seq": [2, 0, 1], "entity": ["c", "a", "b"], "n": [3, 1, 2]})
    deltalake.write_deltalake(str(tmp_path / "data" / "offline" / "features"), frame)
    spec = tmp_path / "spec.yaml"
    one_feature = "features: [{name: n, aggregation: count, window: {type: lifetime}}]\n"
    spec.write_text("name: t\nentity: e\ntimestamp: ts\n" + one_feature)
    got = freshet.read_offline_table(spec, "features", data_dir=tmp_path / "data")
    assert got["entity"].tolist() == ["a", "b", "c"]  # Sorted by seq.
    with pytest.raises(ValueError, match="pass data_dir"):
        freshet.read_offline_table(spec, "features")
    with pytest.raises(FileNotFoundError, match="no Delta table"):
        freshet.read_offline_table(spec, "events", data_dir=tmp_path / "data")
    with pytest.raises(ValueError, match="unknown offline table"):
        freshet.read_offline_table(spec, "feature", data_dir=tmp_path / "data")  # type: ignore[arg-type]
    # offline.path, relative to the spec's folder, in flow and block style (data_dir is then not needed).
    deltalake.write_deltalake(str(tmp_path / "conf" / "tables" / "events"), frame)
    for text in ("offline: {path: tables, enabled: true}  # here\n",
                 "offline:\n  enabled: true\n  path: 'tables'   # comment\n"):
        nested = tmp_path / "conf" / "spec.yaml"
        nested.write_text("name: t\nentity: e\ntimestamp: ts\n" + text + one_feature)
        assert freshet.read_offline_table(nested, "events")["n"].tolist() == [1, 2, 3]


def test_real_skew_and_offline_tables(online: Dict[str, Any]) -> None:
    """After the pipeline stops, its offline tables hold what was ingested and served (when it writes them)."""
    server: Server = online["server"]
    client: freshet.Client = online["client"]
    users = sorted({str(e["user_id"]) for e in online["events"]})
    served = client.get_online_features(users, at=online["as_of"], as_frame=True)  # Logged in feature_log.
    assert server.stop() == 0
    data = online["tmp"] / "data"
    events = freshet.read_offline_table(online["spec"], "events", data_dir=data)
    assert len(events) == len(online["events"])
    assert events["seq"].tolist() == list(range(len(events)))
    assert sorted(events["entity"].unique()) == sorted({str(e["user_id"]) for e in online["events"]})
    # A training set from the offline events table equals one from the events themselves, and the served values.
    rows = pd.DataFrame({"user_id": users, "ts": online["as_of"], "label": range(len(users))})
    from_events = freshet.get_historical_features(online["spec"], rows, events=online["events"], binary=BIN)
    pd.testing.assert_frame_equal(from_events.set_index("user_id")[served.columns[:-1]],
                                  served.drop(columns="known"), check_names=False, check_index_type=False)
    from_table = freshet.get_historical_features(online["spec"], rows, data_dir=data, binary=BIN)
    pd.testing.assert_frame_equal(from_table, from_events)
    # The answers were as of the end of the stream, after the newest event: --until's default stops there.
    report = freshet.skew_report(online["spec"], until=online["as_of"] + 1, data_dir=data, binary=BIN)
    assert report.attrs["answers"] > len(users)
    assert list(report.index) == freshet.load_spec(online["spec"], BIN).feature_names
    assert report["compared"].min() >= len(users)
    assert (report["exact"] == report["compared"]).all() and not report["breached"].any(), report
    assert (report["mismatch_rate"] == 0).all()

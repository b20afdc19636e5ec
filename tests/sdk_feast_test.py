"""The SDK as a Feast user expects it, against a real `freshet run` and `freshet historical`.

- get_historical_features(spec, entity_df, features=[...]): only the chosen features, in the order asked, with the
  values computed here from the events; an unknown name is a ValueError with a did-you-mean and the valid names.
- get_historical_features(spec, entity_df) without events reads the spec's file source.
- get_online_features keeps the caller's rows and order, duplicates included, and takes Feast's entity_rows=.
- Times that look like epoch seconds (at=, entity_df timestamps, events) warn with TimestampUnitWarning.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pandas as pd
import pytest

import sdk_test as st
from sdk_test import BIN, HOUR_MS, START_MS, freshet

SPEC = """name: feast_like
entity: user_id
timestamp: ts
source: {type: file, path: events.jsonl}
features:
  - {name: n_events, aggregation: count, window: {type: lifetime}}
  - {name: purchases_1h, aggregation: count, where: "type == 'purchase'", window: {type: sliding, size: 1h}}
  - {name: amount_total, aggregation: sum, field: amount, window: {type: lifetime}}
  - {name: last_type, aggregation: last, field: type, window: {type: lifetime}}
"""


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    st._require_binary()
    tmp = tmp_path_factory.mktemp("feast")
    spec = tmp / "spec.yaml"
    spec.write_text(SPEC)
    st._generate(tmp / "events.jsonl", "--users", "40", "--events", "4000", "--duration", "6h", "--seed", "7")
    events = [json.loads(line) for line in (tmp / "events.jsonl").read_text().splitlines()]
    users = sorted({e["user_id"] for e in events})
    rows = pd.DataFrame({"user_id": [users[i % len(users)] for i in range(60)],
                         "ts": [START_MS + (i * 6 * HOUR_MS) // 60 for i in range(60)],
                         "label": [i % 2 for i in range(60)]})
    return {"tmp": tmp, "spec": spec, "events": events, "rows": rows}


def _expected(events: List[Dict[str, Any]], user: str, at: int) -> Dict[str, Any]:
    mine = [e for e in events if e["user_id"] == user and e["ts"] <= at]
    return {"n_events": len(mine),
            "purchases_1h": sum(1 for e in mine if e["type"] == "purchase" and e["ts"] > at - HOUR_MS),
            "amount_total": math.fsum(e["amount"] for e in mine if e.get("amount") is not None)}


def test_historical_features_subset_in_the_order_asked(offline: Dict[str, Any]) -> None:
    rows = offline["rows"]
    got = freshet.get_historical_features(offline["spec"], rows, events=offline["spec"].parent / "events.jsonl",
                                          binary=BIN, features=["amount_total", "feast_like:n_events"])
    assert list(got.columns) == ["user_id", "ts", "label", "amount_total", "n_events"]
    pd.testing.assert_frame_equal(got[["user_id", "ts", "label"]], rows)
    for (user, at), n, total in zip(zip(rows["user_id"], rows["ts"]), got["n_events"], got["amount_total"]):
        want = _expected(offline["events"], user, at)
        assert n == want["n_events"] and math.isclose(total, want["amount_total"], rel_tol=1e-12, abs_tol=1e-9)
    assert got["n_events"].sum() > 100  # Not degenerate.
    one = freshet.get_historical_features(offline["spec"], rows, events=offline["events"], binary=BIN,
                                          features="purchases_1h")
    assert list(one.columns) == ["user_id", "ts", "label", "purchases_1h"]
    assert one["purchases_1h"].tolist() == [_expected(offline["events"], u, t)["purchases_1h"]
                                            for u, t in zip(rows["user_id"], rows["ts"])]
    # A column named like an unselected feature is no clash.
    kept = freshet.get_historical_features(offline["spec"], rows.assign(last_type="x"), events=offline["events"],
                                           binary=BIN, features=["n_events"])
    assert list(kept.columns) == ["user_id", "ts", "label", "last_type", "n_events"]
    empty = freshet.get_historical_features(offline["spec"], rows.iloc[:0], events=offline["events"], binary=BIN,
                                            features=["n_events"])
    assert list(empty.columns) == ["user_id", "ts", "label", "n_events"] and len(empty) == 0


def test_historical_unknown_feature_names_the_valid_ones(offline: Dict[str, Any]) -> None:
    with pytest.raises(ValueError) as info:
        freshet.get_historical_features(offline["spec"], offline["rows"], events=offline["events"], binary=BIN,
                                        features=["n_event"])
    message = str(info.value)
    assert "unknown feature 'n_event'" in message and "did you mean 'n_events'?" in message
    assert "n_events, purchases_1h, amount_total, last_type" in message
    with pytest.raises(ValueError, match="unknown feature 'zzz'.*Valid features: n_events"):
        freshet.get_historical_features(offline["spec"], offline["rows"], events=offline["events"], binary=BIN,
                                        features=["n_events", "zzz"])
    with pytest.raises(ValueError, match="named twice"):
        freshet.get_historical_features(offline["spec"], offline["rows"], events=offline["events"], binary=BIN,
                                        features=["n_events", "n_events"])


def test_historical_without_events_reads_the_spec_file_source(offline: Dict[str, Any], tmp_path: Path) -> None:
    rows = offline["rows"]
    default = freshet.get_historical_features(offline["spec"], rows, binary=BIN)
    explicit = freshet.get_historical_features(offline["spec"], rows, events=offline["events"], binary=BIN)
    pd.testing.assert_frame_equal(default, explicit)
    assert default["n_events"].tolist() == [_expected(offline["events"], u, t)["n_events"]
                                            for u, t in zip(rows["user_id"], rows["ts"])]
    no_source = tmp_path / "http.yaml"
    no_source.write_text(SPEC.replace("source: {type: file, path: events.jsonl}", "source: {type: http}"))
    with pytest.raises(ValueError, match="give the events.*its source is http"):
        freshet.get_historical_features(no_source, rows, binary=BIN)
    missing = tmp_path / "missing.yaml"
    missing.write_text(SPEC)
    with pytest.raises(FileNotFoundError, match=r"no events file at .*events\.jsonl \(the file source of"):
        freshet.get_historical_features(missing, rows, binary=BIN)


# --------------------------------------------------------------------------------------------------- online


@pytest.fixture(scope="module")
def online(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    st._require_binary()
    tmp = tmp_path_factory.mktemp("feast_online")
    spec = tmp / "spec.yaml"
    spec.write_text(st.ONLINE_SPEC)
    st._generate(tmp / "events.jsonl", "--users", "30", "--events", "3000", "--duration", "3h", "--seed", "3")
    events = [json.loads(line) for line in (tmp / "events.jsonl").read_text().splitlines()]
    server = st.Server(spec, tmp / "data", tmp / "run.log")
    client = freshet.Client(server.url, token=st.TOKEN)
    try:
        assert client.ingest(events) == len(events)
        st._wait_processed(client, len(events))
        yield {"client": client, "events": events, "as_of": START_MS + 3 * HOUR_MS, "server": server}
    finally:
        client.close()
        server.stop()


def test_online_rows_keep_the_callers_order_and_duplicates(online: Dict[str, Any]) -> None:
    client: freshet.Client = online["client"]
    expected = st._expected_online(online["events"], online["as_of"])
    users = sorted(expected)
    asked = [users[3], users[1], users[3], "nobody", users[1], users[3]]
    frame = client.get_online_features(asked, at=online["as_of"], as_frame=True)
    assert list(frame.index) == asked and frame.index.name == "entity"
    assert frame["events_total"].tolist() == [expected.get(u, {}).get("events_total", 0) for u in asked]
    assert frame["known"].tolist() == [u != "nobody" for u in asked]
    assert frame.attrs["as_of_ms"] == online["as_of"]
    # The dict form has one key per entity, in first-seen order.
    assert list(client.get_online_features(asked, at=online["as_of"])) == [users[3], users[1], "nobody"]


def test_online_entity_rows_feast_style(online: Dict[str, Any]) -> None:
    client: freshet.Client = online["client"]
    expected = st._expected_online(online["events"], online["as_of"])
    users = sorted(expected)
    rows = [{"user_id": users[0]}, {"user_id": users[5]}, {"user_id": users[0]}]
    got = client.get_online_features(features=["sdk_online:events_total", "purchases_1h"], entity_rows=rows,
                                     at=online["as_of"])
    assert got == {u: {"events_total": expected[u]["events_total"], "purchases_1h": expected[u]["purchases_1h"]}
                   for u in (users[0], users[5])}
    frame = client.get_online_features(features=["events_total"], entity_rows=rows, at=online["as_of"],
                                       as_frame=True).reset_index()
    assert list(frame.columns) == ["user_id", "events_total", "known"]
    assert frame["user_id"].tolist() == [users[0], users[5], users[0]]
    assert frame["events_total"].tolist() == [expected[r["user_id"]]["events_total"] for r in rows]
    with pytest.raises(ValueError, match=r"entity_rows\[1\] has the keys \['user'\].*entity field.*'user_id'"):
        client.get_online_features(entity_rows=[{"user_id": "u1"}, {"user": "u1"}])
    with pytest.raises(ValueError, match="either as entities= or as entity_rows="):
        client.get_online_features(["u1"], entity_rows=[{"user_id": "u1"}])
    with pytest.raises(ValueError, match="give the entities"):
        client.get_online_features(features=["events_total"])


# ---------------------------------------------------------------------------------------- epoch seconds


def _unit_warnings(caught: List[warnings.WarningMessage]) -> List[str]:
    return [str(w.message) for w in caught if issubclass(w.category, freshet.TimestampUnitWarning)]


def test_times_that_look_like_seconds_warn(online: Dict[str, Any], offline: Dict[str, Any]) -> None:
    client: freshet.Client = online["client"]
    seconds = online["as_of"] // 1000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client.get_online_features(["u1"], at=seconds)
    (message,) = _unit_warnings(caught)
    assert f"at={seconds}" in message and "epoch seconds" in message and str(seconds * 1000) in message

    rows = offline["rows"].assign(ts=offline["rows"]["ts"] // 1000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        freshet.get_historical_features(offline["spec"], rows, events=offline["events"], binary=BIN,
                                        features=["n_events"])
    (message,) = _unit_warnings(caught)
    assert "column 'ts'" in message and f"60 of 60 values" in message

    in_seconds = [dict(e, ts=e["ts"] // 1000) for e in offline["events"][:50]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        freshet.get_historical_features(offline["spec"], offline["rows"], events=in_seconds, binary=BIN,
                                        features=["n_events"])
    (message,) = _unit_warnings(caught)
    assert "events field 'ts'" in message and "50 of 50" in message

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert client.ingest([{"user_id": "seconds_user", "ts": seconds, "type": "view"},
                              {"user_id": "seconds_user", "ts": seconds * 1000, "type": "view"}]) == 2
    (message,) = _unit_warnings(caught)
    assert "ingest: field 'ts'" in message and "1 of 2" in message

    # Milliseconds, datetimes and small test times (the first day of 1970) do not warn.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client.get_online_features(["u1"], at=online["as_of"])
        client.get_online_features(["u1"], at=pd.Timestamp(online["as_of"], unit="ms"))
        freshet.get_historical_features(offline["spec"], offline["rows"].assign(ts=5000), events=offline["events"],
                                        binary=BIN, features=["n_events"])
        client.ingest([{"user_id": "seconds_user", "ts": online["as_of"], "type": "view"}])
    assert _unit_warnings(caught) == []
    with pytest.raises(ValueError, match=r"time\.time\(\) gives seconds"):
        client.get_online_features(["u1"], at=1767225600.5)  # type: ignore[arg-type]

"""`freshet explain` and GET /v1/explain/{entity} (issue 14): an explanation must agree with the value.

On a generated workload with out-of-order, late, malformed and duplicate lines:
- over the events file, for entities with late, duplicate and filtered events and every feature at several
  times, the events explain counts are exactly the window's events of the independent reference
  (tests/reference.py), their re-aggregation by the reference equals the value explain states, and that equals
  the reference's value; every other event of the entity is excluded with the reason the reference gives;
- over a running `freshet run`'s offline store (after a checkpoint), GET /v1/explain answers what a lookup
  serves, its counted events re-aggregated by the reference give the served value, and its late and duplicate
  events come from the dead-letter file; `freshet explain --data-dir` says the same;
- bad requests (unknown feature, bad time) get errors that name what is wrong.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import urllib.parse

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference as ref  # noqa: E402
from run_process import get_json, start_run, wait_accepted, wait_for  # noqa: E402

FRESHET_BIN = os.environ.get("FRESHET_BIN", os.path.join(HERE, "..", "build", "freshet"))

SPEC = """\
name: explain
entity: user_id
timestamp: ts
watermark: {max_out_of_orderness: 30s, allowed_lateness: 30s}
dedup: {field: event_id, within: 10m}
source: {type: file, path: events.jsonl}
checkpoint: {interval: 1s}
features:
  - name: failed_logins_10m
    aggregation: count
    where: "type == 'login' and success == false"
    window: {type: sliding, size: 10m}
  - name: purchase_amount_30m
    aggregation: sum
    field: amount
    where: "type == 'purchase'"
    window: {type: sliding, size: 30m, slide: 5m}
  - name: avg_amount_1h
    aggregation: mean
    field: amount
    window: {type: sliding, size: 1h}
  - name: max_amount_day
    aggregation: max
    field: amount
    window: {type: tumbling, size: 1d}
  - name: last_category
    aggregation: last
    field: category
    window: {type: lifetime}
  - name: categories_session
    aggregation: count_distinct
    field: category
    where: "type == 'view'"
    window: {type: session, gap: 10m}
"""


def close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    d = tmp_path_factory.mktemp("explain")
    subprocess.run([FRESHET_BIN, "generate", "--users", "40", "--events", "4000", "--seed", "14", "--disorder", "2m",
                    "--late-share", "0.03", "--malformed-share", "0.01", "--event-ids", "--duplicate-share", "0.03",
                    "--output", str(d / "events.jsonl")], check=True, capture_output=True)
    (d / "spec.yaml").write_text(SPEC)
    spec = ref.load_spec(str(d / "spec.yaml"))
    data = (d / "events.jsonl").read_bytes()
    events, dead = ref.read_events(data, spec)
    lines = ref.split_lines(data)
    # Entities of the late and duplicate lines, by parsing those lines.
    dropped = {}
    for letter in dead:
        parsed = ref.parse_event(lines[letter.line - 1], letter.line, spec)
        if not isinstance(parsed, str):
            dropped.setdefault(parsed.entity, []).append((letter.line, letter.reason))
    return d, spec, events, dropped, lines


def explain(args: list[str]) -> dict:
    out = subprocess.run([FRESHET_BIN, "explain", "--json", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def check_against_reference(x: dict, spec, events, dropped, entity: str, feature_index: int, at: int,
                            number_is_line: bool) -> None:
    feature = spec.features[feature_index]
    evaluator = ref.Evaluator(spec, events)
    expected, window_events = evaluator.value(feature_index, entity, at)
    counted = [e for e in x["events"] if e["verdict"] == "counted"]
    # The counted events, re-aggregated by the reference, give the stated value, which is the reference's.
    reparsed = [ref.parse_event(e["raw"].encode(), e["number"], spec) for e in counted]
    assert close(ref.aggregate(feature, reparsed), x["value"]), (x["arithmetic"], x["value"])
    assert close(x["value"], expected), (entity, feature.name, at, x["value"], expected)
    # Exactly the reference window's events count (by their raw lines), and every other one is excluded.
    assert sorted(e["raw"] for e in counted) == sorted(ref_raw(ev) for ev in window_events)
    entity_events = [e for e in events if e.entity == entity]
    qualifying = {e.line for e in entity_events if ref.qualifies(feature, e)}
    for e in x["events"]:
        v = e["verdict"]
        if v in ("late", "duplicate"):
            continue
        line = e["number"] if number_is_line else None
        if line is None:
            continue
        event = next(ev for ev in entity_events if ev.line == line)
        if v == "after_as_of":
            assert event.time_ms > at
        elif v in ("where_false", "field_missing"):
            assert line not in qualifying
        elif v == "outside_window":
            assert line in qualifying and event.time_ms <= at and line not in {w.line for w in window_events}
    if number_is_line:
        listed = {(e["number"], e["verdict"]) for e in x["events"] if e["verdict"] in ("late", "duplicate")}
        assert listed == set(dropped.get(entity, [])), (listed, dropped.get(entity))
        assert {e["number"] for e in x["events"] if e["verdict"] not in ("late", "duplicate")} == \
            {e.line for e in entity_events}


RAW_BY_LINE: dict[int, str] = {}


def ref_raw(event) -> str:
    return RAW_BY_LINE[event.line]


def test_explain_over_events_file_agrees_with_reference(workload):
    d, spec, events, dropped, lines = workload
    RAW_BY_LINE.update({k + 1: line.decode(errors="replace") for k, line in enumerate(lines)})
    # Entities with late or duplicate lines, most first; and times inside and after their activity.
    chosen = sorted(dropped, key=lambda e: -len(dropped[e]))[:3]
    assert chosen and any(r == "late" for e in chosen for _, r in dropped[e]), dropped
    verdicts_seen = set()
    for entity in chosen:
        times = sorted(e.time_ms for e in events if e.entity == entity)
        for at in (times[len(times) // 2], times[-1], times[-1] + 20 * 60 * 1000):
            for k, feature in enumerate(spec.features):
                x = explain(["--spec", str(d / "spec.yaml"), "--events", str(d / "events.jsonl"),
                             "--entity", entity, "--feature", feature.name, "--at", str(at)])
                check_against_reference(x, spec, events, dropped, entity, k, at, number_is_line=True)
                verdicts_seen |= {e["verdict"] for e in x["events"]}
    # The workload exercises every reason.
    assert verdicts_seen >= {"counted", "after_as_of", "outside_window", "where_false", "field_missing", "late",
                             "duplicate"}, verdicts_seen


def test_explain_text_and_errors(workload):
    d, spec, events, dropped, lines = workload
    entity = next(iter(dropped))
    at = max(e.time_ms for e in events if e.entity == entity)
    out = subprocess.run([FRESHET_BIN, "explain", "--spec", str(d / "spec.yaml"), "--events", str(d / "events.jsonl"),
                          "--entity", entity, "--feature", "failed_logins_10m", "--at", str(at)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.startswith(f"failed_logins_10m of {entity} as of ")
    assert "arithmetic:" in out.stdout and "window: sliding 10m" in out.stdout
    bad = subprocess.run([FRESHET_BIN, "explain", "--spec", str(d / "spec.yaml"), "--events", str(d / "events.jsonl"),
                          "--entity", entity, "--feature", "failed_login_10m", "--at", str(at)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert "'failed_login_10m' is not a feature" in bad.stderr and "did you mean 'failed_logins_10m'" in bad.stderr
    bad = subprocess.run([FRESHET_BIN, "explain", "--spec", str(d / "spec.yaml"), "--events", str(d / "events.jsonl"),
                          "--entity", entity, "--feature", "failed_logins_10m", "--at", "yesterday"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--at 'yesterday'" in bad.stderr and "RFC 3339" in bad.stderr


def test_live_explain_agrees_with_served_value(workload, tmp_path):
    d, spec, events, dropped, lines = workload
    RAW_BY_LINE.update({k + 1: line.decode(errors="replace") for k, line in enumerate(lines)})
    proc, port = start_run([FRESHET_BIN, "run", "--spec", str(d / "spec.yaml"), "--data-dir", str(tmp_path / "data"),
                            "--port", "0"], tmp_path / "run.log")
    base = f"http://127.0.0.1:{port}"
    try:
        # All events accepted, then a checkpoint that commits them to the offline store.
        wait_accepted(base, len(events), 30)
        written = get_json(base + "/v1/ui/pipeline")[1]["checkpoint"]["written"]
        wait_for(lambda: get_json(base + "/v1/ui/pipeline")[1]["checkpoint"]["written"] >= written + 2, 30,
                 "a checkpoint begun after the last event (one may have been under way)")
        chosen = sorted(dropped, key=lambda e: -len(dropped[e]))[:2]
        for entity in chosen:
            at = max(e.time_ms for e in events if e.entity == entity)
            for k, feature in enumerate(spec.features):
                q = urllib.parse.urlencode({"feature": feature.name, "at": at})
                status, x = get_json(f"{base}/v1/explain/{urllib.parse.quote(entity)}?{q}")
                assert status == 200, x
                _, served = get_json(f"{base}/v1/features/{urllib.parse.quote(entity)}?features={feature.name}&at={at}")
                assert close(x["served"], served["features"][feature.name]) and x["agrees"] is True, x
                check_against_reference(x, spec, events, dropped, entity, k, at, number_is_line=False)
                # Late and duplicate events come from the dead-letter file, with their line numbers there.
                listed = {(e["number"], e["verdict"]) for e in x["events"] if e["verdict"] in ("late", "duplicate")}
                assert listed == set(dropped.get(entity, []))
                assert len(x["series"]) >= 1
                # The CLI over the same data directory says the same.
                y = explain(["--spec", str(d / "spec.yaml"), "--data-dir", str(tmp_path / "data"), "--entity", entity,
                             "--feature", feature.name, "--at", str(at)])
                assert [(e["raw"], e["verdict"]) for e in y["events"]] == [(e["raw"], e["verdict"]) for e in x["events"]]
        status, err = get_json(f"{base}/v1/explain/{chosen[0]}?feature=nope")
        assert status == 400 and "nope" in err["error"]
        status, err = get_json(f"{base}/v1/explain/{chosen[0]}")
        assert status == 400 and "feature" in err["error"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def dropped_entities(data: bytes, spec, dead) -> dict:
    lines = ref.split_lines(data)
    dropped = {}
    for letter in dead:
        parsed = ref.parse_event(lines[letter.line - 1], letter.line, spec)
        if not isinstance(parsed, str):
            dropped.setdefault(parsed.entity, []).append((letter.line, letter.reason))
    return dropped


def test_live_explain_covers_events_since_the_last_checkpoint(workload, tmp_path):
    """With no checkpoint due for an hour, every event accepted so far is explained: the request takes the
    checkpoint that commits them, and the served value read at that same moment equals the replayed one. The
    events file grows in two steps while the run follows it."""
    d, spec, _, _, lines = workload
    RAW_BY_LINE.update({k + 1: line.decode(errors="replace") for k, line in enumerate(lines)})
    live = tmp_path / "live"
    live.mkdir()
    (live / "spec.yaml").write_text(SPEC.replace("checkpoint: {interval: 1s}", "checkpoint: {interval: 1h}")
                                    .replace("source: {type: file, path: events.jsonl}",
                                             "source: {type: file, path: events.jsonl, follow: true}"))
    data = (d / "events.jsonl").read_bytes()
    cut = data.index(b"\n", len(data) * 3 // 5) + 1
    (live / "events.jsonl").write_bytes(data[:cut])
    proc, port = start_run([FRESHET_BIN, "run", "--spec", str(live / "spec.yaml"), "--data-dir",
                            str(tmp_path / "data"), "--port", "0"], tmp_path / "run.log")
    base = f"http://127.0.0.1:{port}"
    try:
        for step, so_far in enumerate((data[:cut], data)):
            if step == 1:
                with open(live / "events.jsonl", "ab") as f:
                    f.write(data[cut:])
            events, dead = ref.read_events(so_far, spec)
            dropped = dropped_entities(so_far, spec, dead)
            wait_accepted(base, len(events), 60, f"the {len(events)} events of step {step} accepted")
            # Step 0: no checkpoint was written since the start; the events are in memory only.
            pipeline = get_json(base + "/v1/ui/pipeline")[1]
            if step == 0:
                assert pipeline["checkpoint"]["written"] == 0, pipeline["checkpoint"]
            chosen = sorted(dropped, key=lambda e: -len(dropped[e]))[:2]
            for entity in chosen:
                at = max(e.time_ms for e in events if e.entity == entity)
                for k, feature in enumerate(spec.features):
                    q = urllib.parse.urlencode({"feature": feature.name, "at": at})
                    status, x = get_json(f"{base}/v1/explain/{urllib.parse.quote(entity)}?{q}")
                    assert status == 200, x
                    _, served = get_json(f"{base}/v1/features/{urllib.parse.quote(entity)}?"
                                         f"features={feature.name}&at={at}")
                    assert x["agrees"] is True and x["served_exact"] is True, x
                    assert close(x["served"], served["features"][feature.name]), (x, served)
                    check_against_reference(x, spec, events, dropped, entity, k, at, number_is_line=False)
                    listed = {(e["number"], e["verdict"]) for e in x["events"] if e["verdict"] in ("late", "duplicate")}
                    assert listed == set(dropped.get(entity, []))
            # Explanations took a checkpoint (the interval is an hour); asked again with nothing new, none more.
            written = get_json(base + "/v1/ui/pipeline")[1]["checkpoint"]["written"]
            assert written >= step + 1
            status, _ = get_json(f"{base}/v1/explain/{urllib.parse.quote(chosen[0])}?feature={spec.features[0].name}")
            assert status == 200
            assert get_json(base + "/v1/ui/pipeline")[1]["checkpoint"]["written"] == written
    finally:
        proc.terminate()
        proc.wait(timeout=30)

"""Several feature sets in one `freshet run` (issue 15 part 3): `--spec users.yaml --spec merchants.yaml` over one
events file, each set keyed by its own field, with its own features and `where` filters.

Compared with the brute-force reference (tests/reference.py), per set: every row of its features_<set> table, and
lookups through /v1/features/{set}/{entity} and POST /v1/features with "feature_set". Then: a backfill of one set
(--set) rewrites its table bit for bit and leaves the other set's table at its Delta version; a run killed with
SIGKILL and restarted restores both sets (every event counted once); a data directory is refused when the list of
sets changed.
"""
from __future__ import annotations

import json
import random
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import deltalake
import pyarrow as pa
import pytest
from prometheus_client.parser import text_string_to_metric_families

import reference
import sdk_test  # noqa: F401 - puts this checkout's SDK on sys.path
import freshet
from asof_exact_test import BIN, _require_binary, _row_mismatches, _same
from run_process import start_run

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

USERS = """name: users
entity: user_id
timestamp: ts
watermark: {{max_out_of_orderness: 30s, allowed_lateness: 30s}}
source: {{type: file, path: {events}, follow: {follow}}}
serve: {{port: 0}}
checkpoint: {{interval: {interval}}}
features:
  - {{name: n_1h, aggregation: count, window: {{type: sliding, size: 1h, slide: 1m}}}}
  - {{name: amount_24h, aggregation: sum, field: amount, window: {{type: sliding, size: 24h}}}}
  - {{name: merchants_1h, aggregation: count_distinct, field: merchant_id, window: {{type: sliding, size: 1h, slide: 5m}}}}
  - {{name: last_category, aggregation: last, field: category, window: {{type: lifetime}}}}
"""

MERCHANTS = """name: merchants
entity: merchant_id
timestamp: ts
watermark: {{max_out_of_orderness: 30s, allowed_lateness: 30s}}
source: {{type: file, path: {events}, follow: {follow}}}
serve: {{port: 0}}
checkpoint: {{interval: {interval}}}
features:
  - {{name: purchases_10m, aggregation: count, where: "type == 'purchase'", window: {{type: sliding, size: 10m}}}}
  - {{name: mean_amount_1h, aggregation: mean, field: amount, window: {{type: tumbling, size: 1h}}}}
  - {{name: users_session, aggregation: count_distinct, field: user_id, window: {{type: session, gap: 10m}}}}
  - {{name: max_amount, aggregation: max, field: amount, window: {{type: lifetime}}}}
"""


def _generate(seed: int, events: int = 4000) -> bytes:
    """Users buying from merchants, in arrival order: event time plus up to 40 s of disorder, now and then an event
    far behind (late). A few lines lack merchant_id: the merchants set rejects them, the users set takes them (their
    time is behind the newest, so they move neither set's watermark)."""
    rng = random.Random(seed)
    t = START_MS
    out = []
    newest = t
    for _ in range(events):
        t += rng.randint(0, 8_000)
        event = {"user_id": f"u{rng.randint(0, 60)}", "merchant_id": f"m{rng.randint(0, 15)}",
                 "ts": t - (rng.randint(0, 40_000) if rng.random() < 0.3 else 0),
                 "type": rng.choice(["view", "view", "purchase"]), "amount": rng.randint(1, 900),
                 "category": rng.choice("abcdef")}
        if rng.random() < 0.01:
            event["ts"] = t - 5 * 60_000  # late
        if rng.random() < 0.01:
            del event["merchant_id"]
            event["ts"] = newest - 1_000
        newest = max(newest, event["ts"])
        out.append(json.dumps(event).encode() + b"\n")
    return b"".join(out)


@dataclass
class Workload:
    events_path: Path
    spec_paths: dict[str, Path]  # set name -> spec file
    specs: dict[str, reference.Spec]
    accepted: dict[str, list[reference.Event]]
    dead: dict[str, list[reference.DeadLetter]]
    lines: list[bytes]


def _write_specs(folder: Path, events: Path, follow: bool = False, interval: str = "200ms") -> dict[str, Path]:
    paths = {}
    for name, text in (("users", USERS), ("merchants", MERCHANTS)):
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(text.format(events=events, follow="true" if follow else "false", interval=interval))
    return paths


def _spec_args(paths: dict[str, Path]) -> list[str]:
    return [arg for name in ("users", "merchants") for arg in ("--spec", str(paths[name]))]


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    _require_binary()
    tmp = tmp_path_factory.mktemp("sets")
    events = tmp / "events.jsonl"
    data = _generate(seed=153)
    events.write_bytes(data)
    paths = _write_specs(tmp, events)
    specs = {name: reference.load_spec(str(path)) for name, path in paths.items()}
    read = {name: reference.read_events(data, spec) for name, spec in specs.items()}
    accepted = {name: events for name, (events, _) in read.items()}
    dead = {name: dead for name, (_, dead) in read.items()}
    assert len(accepted["merchants"]) < len(accepted["users"])  # the lines without merchant_id
    return Workload(events, paths, specs, accepted, dead, reference.split_lines(data))


def _features_table(data_dir: Path, name: str) -> pa.Table:
    t = deltalake.DeltaTable(str(data_dir / "offline" / f"features_{name}")).to_pyarrow_table()
    return t.drop_columns(["processing_time"]).sort_by("seq")


def _delta_version(data_dir: Path, table: str) -> int:
    return deltalake.DeltaTable(str(data_dir / "offline" / table)).version()


@pytest.fixture(scope="module")
def streamed(workload: Workload, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("sets-run") / "data"
    subprocess.run([BIN, "run", *_spec_args(workload.spec_paths), "--data-dir", str(data_dir), "--exit-at-end"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    return data_dir


@pytest.mark.parametrize("name", ["users", "merchants"])
def test_each_sets_features_rows_equal_the_reference(workload: Workload, streamed: Path, name: str) -> None:
    table = _features_table(streamed, name).to_pylist()
    mismatches = _row_mismatches(workload.specs[name], table, workload.accepted[name])
    assert not mismatches, f"{len(mismatches)} mismatches\n" + "\n".join(mismatches[:20])


def test_dead_letters_per_set(workload: Workload, streamed: Path) -> None:
    """Each set dead-letters its own late lines; a line without merchant_id is not the merchants set's (skipped,
    not rejected), so the reference's rejections of it are left out."""
    for name in ("users", "merchants"):
        letters = [json.loads(line) for line in
                   (streamed / "sets" / name / "dead_letters" / "file.jsonl").read_text().splitlines()]
        expected = [(d.line, d.reason) for d in workload.dead[name]
                    if not (name == "merchants" and "merchant_id" in d.reason)]
        assert [(d["line"], d["reason"]) for d in letters] == expected, name
    assert any("merchant_id" in d.reason for d in workload.dead["merchants"])


def test_one_shared_events_table(workload: Workload, streamed: Path) -> None:
    events = deltalake.DeltaTable(str(streamed / "offline" / "events")).to_pyarrow_table().sort_by("seq")
    assert events.column("raw").to_pylist() == [workload.lines[e.line - 1].decode() for e in workload.accepted["users"]]
    assert not (streamed / "offline" / "features").exists()


def test_backfill_of_one_set_leaves_the_other_alone(workload: Workload, streamed: Path) -> None:
    users_version = _delta_version(streamed, "features_users")
    merchants_before = _features_table(streamed, "merchants")
    merchants_version = _delta_version(streamed, "features_merchants")
    subprocess.run([BIN, "backfill", *_spec_args(workload.spec_paths), "--set", "merchants", "--data-dir",
                    str(streamed), "--no-progress"], check=True, timeout=300, stderr=subprocess.DEVNULL)
    assert _delta_version(streamed, "features_users") == users_version
    assert _delta_version(streamed, "features_merchants") == merchants_version + 1
    assert _features_table(streamed, "merchants").equals(merchants_before)
    # The run continues from the backfill's checkpoint of merchants and the stream's of users.
    done = subprocess.run([BIN, "run", *_spec_args(workload.spec_paths), "--data-dir", str(streamed), "--exit-at-end"],
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    assert _features_table(streamed, "merchants").equals(merchants_before)


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


def _post(port: int, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _error(port: int, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="GET" if data is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=10)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    raise AssertionError(f"{path} answered 200")


def _wait_lines(port: int, lines: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    seen = 0.0
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("freshet_events_in_total"):
                    seen = float(line.rsplit(" ", 1)[1])
        if seen >= lines:
            return
        time.sleep(0.05)
    raise AssertionError(f"read {seen} lines, not {lines}, in {timeout_s} s")


def _lookup_mismatches(workload: Workload, port: int, name: str, rng: random.Random) -> list[str]:
    spec = workload.specs[name]
    evaluator = reference.Evaluator(spec, workload.accepted[name])
    entities = sorted(evaluator.by_entity)
    horizon = max(e.time_ms for e in workload.accepted[name])
    mismatches = []
    for entity in entities:
        at = horizon + rng.randint(0, 3_600_000)
        answers = [_get(port, f"/v1/features/{name}/{entity}?at={at}")["features"],
                   _post(port, "/v1/features", {"feature_set": name, "entities": [entity], "at": at})["results"][0]
                   ["features"]]
        for answer in answers:
            for j, feature in enumerate(spec.features):
                expected, _ = evaluator.value(j, entity, at)
                if not _same(feature, expected, answer[feature.name]):
                    mismatches.append(f"{name} {entity} at {at} {feature.name}: reference {expected!r}, served "
                                      f"{answer[feature.name]!r}")
    return mismatches


def _console_mismatches(workload: Workload, port: int) -> list[str]:
    """The console's per-set views (`feature_set=` on /v1/ui/features and /v1/explain): each set's features, and
    an explanation of each set's lifetime feature whose value is the reference's."""
    assert _get(port, "/v1/ui/pipeline")["feature_sets"] == ["users", "merchants"]
    mismatches = []
    for name, feature_name in (("users", "last_category"), ("merchants", "max_amount")):
        spec = workload.specs[name]
        listed = [f["name"] for f in _get(port, f"/v1/ui/features?feature_set={name}")["features"]]
        assert listed == [f.name for f in spec.features], (name, listed)
        evaluator = reference.Evaluator(spec, workload.accepted[name])
        j = [f.name for f in spec.features].index(feature_name)
        at = max(e.time_ms for e in workload.accepted[name])
        for entity in sorted(evaluator.by_entity)[:5]:
            x = _get(port, f"/v1/explain/{entity}?feature={feature_name}&at={at}&feature_set={name}")
            expected, _ = evaluator.value(j, entity, at)
            if not _same(spec.features[j], expected, x["value"]):
                mismatches.append(f"explain {name} {entity} {feature_name}: reference {expected!r}, {x['value']!r}")
    status, body = _error(port, "/v1/explain/u1?feature=n_1h&feature_set=nope")
    assert status == 404 and body["feature_sets"] == ["users", "merchants"], body
    return mismatches


def test_lookups_per_set_and_kill_restart(workload: Workload, tmp_path: Path) -> None:
    """Half the events, kill -9 once they are read, the rest appended, a restart: both sets' lookups and tables
    equal the reference over every event once."""
    events = tmp_path / "events.jsonl"
    half = len(workload.lines) // 2
    events.write_bytes(b"".join(line + b"\n" for line in workload.lines[:half]))
    paths = _write_specs(tmp_path, events, follow=True)
    data_dir = tmp_path / "data"
    command = [BIN, "run", *_spec_args(paths), "--data-dir", str(data_dir)]
    proc, port = start_run(command, tmp_path / "run1.log")
    try:
        _wait_lines(port, half)
        time.sleep(0.5)  # a checkpoint interval or two, so that the kill comes after one (any moment is correct)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with open(events, "ab") as f:
        f.write(b"".join(line + b"\n" for line in workload.lines[half:]))
    proc, port = start_run(command, tmp_path / "run2.log")
    try:
        assert (tmp_path / "run2.log").read_text().count("restored checkpoint") == 2
        _wait_lines(port, len(workload.lines))
        rng = random.Random(5)
        mismatches = _lookup_mismatches(workload, port, "users", rng) + \
            _lookup_mismatches(workload, port, "merchants", rng)
        # The SDK, one client per set: the set's spec (its entity field) and its values.
        for name, entity_field in (("users", "user_id"), ("merchants", "merchant_id")):
            client = freshet.Client(f"http://127.0.0.1:{port}", feature_set=name)
            assert client.spec()["entity"] == entity_field
            entity = workload.accepted[name][0].entity
            at = max(e.time_ms for e in workload.accepted[name])
            frame = client.get_online_features(entity_rows=[{entity_field: entity}], at=at, as_frame=True)
            served = _get(port, f"/v1/features/{name}/{entity}?at={at}")["features"]
            for feature, value in served.items():
                got = frame.iloc[0][feature]
                if value is None:
                    assert got is None or got != got, (name, feature, got)  # null: None or NaN
                elif isinstance(value, str):
                    assert got == value, (name, feature, got, value)
                else:
                    assert float(got) == pytest.approx(float(value)), (name, feature, got, value)
            client.close()
        # Each set's counts, labelled by set, against the reference.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        families = {f.name for f in text_string_to_metric_families(metrics)}  # Prometheus' own parser reads it
        assert {"freshet_set_events_accepted", "freshet_set_state_entities"} <= families, families
        for name in ("users", "merchants"):
            late = sum(1 for d in workload.dead[name] if d.reason == "late")
            assert f'freshet_set_events_accepted_total{{feature_set="{name}"}} {len(workload.accepted[name])}\n' \
                in metrics, metrics
            assert f'freshet_set_events_late_total{{feature_set="{name}"}} {late}\n' in metrics, metrics
        assert _post(port, "/v1/features/merchants", {"entities": ["m1"]})["results"][0]["entity"] == "m1"
        mismatches += _console_mismatches(workload, port)
        status, body = _error(port, "/v1/features/u1")
        assert status == 404 and body["feature_sets"] == ["users", "merchants"], body
        status, body = _error(port, "/v1/features", {"entities": ["u1"]})
        assert status == 400 and "feature_set" in body["error"], body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not mismatches, f"{len(mismatches)} mismatches\n" + "\n".join(mismatches[:20])
    for name in ("users", "merchants"):
        table = _features_table(data_dir, name).to_pylist()
        row_mismatches = _row_mismatches(workload.specs[name], table, workload.accepted[name])
        assert not row_mismatches, f"{name}: {len(row_mismatches)} mismatches\n" + "\n".join(row_mismatches[:20])


def test_a_changed_list_of_sets_is_refused(workload: Workload, streamed: Path) -> None:
    only_users = subprocess.run([BIN, "run", "--spec", str(workload.spec_paths["users"]), "--data-dir", str(streamed),
                                 "--exit-at-end"], capture_output=True, timeout=60)
    assert only_users.returncode != 0
    message = only_users.stderr.decode()
    assert "several feature sets (users, merchants)" in message and "--reset" in message, message


def test_a_crash_between_the_sets_checkpoints(workload: Workload, tmp_path: Path) -> None:
    """As if a run died after users wrote a checkpoint but before merchants did (and before the manifest): the sets
    restore the checkpoints the manifest names, of one source position, users' newer offline commits are rolled
    back, and the rest of the events are read again for both, once."""
    events = tmp_path / "events.jsonl"
    third = len(workload.lines) // 3
    events.write_bytes(b"".join(line + b"\n" for line in workload.lines[:third]))
    paths = _write_specs(tmp_path, events, interval="1h")  # one checkpoint per run: at its end
    data_dir = tmp_path / "data"
    command = [BIN, "run", *_spec_args(paths), "--data-dir", str(data_dir), "--exit-at-end"]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    manifest = (data_dir / "sets" / "manifest").read_bytes()
    with open(events, "ab") as f:
        f.write(b"".join(line + b"\n" for line in workload.lines[third:2 * third]))
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    newest = sorted((data_dir / "sets" / "merchants" / "checkpoints").iterdir())[-1]
    newest.unlink()  # merchants' checkpoint of the second run was never written
    (data_dir / "sets" / "manifest").write_bytes(manifest)  # nor the manifest naming both
    with open(events, "ab") as f:
        f.write(b"".join(line + b"\n" for line in workload.lines[2 * third:]))
    done = subprocess.run(command, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    for name in ("users", "merchants"):
        table = _features_table(data_dir, name).to_pylist()
        mismatches = _row_mismatches(workload.specs[name], table, workload.accepted[name])
        assert not mismatches, f"{name}: {len(mismatches)} mismatches\n" + "\n".join(mismatches[:20])


def test_http_ingest_feeds_every_set(workload: Workload, tmp_path: Path) -> None:
    """`source: {type: http}`: events posted once reach both sets (the first set's ingest log is the source)."""
    paths = {}
    for name, text in (("users", USERS), ("merchants", MERCHANTS)):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(text.format(events="x", follow="false", interval="200ms").replace(
            "{type: file, path: x, follow: false}", "{type: http}"))
    proc, port = start_run([BIN, "run", *_spec_args(paths), "--data-dir", str(tmp_path / "data")],
                           tmp_path / "run.log")
    try:
        for start in range(0, len(workload.lines), 500):
            body = b"".join(line + b"\n" for line in workload.lines[start:start + 500])
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/ingest", data=body, method="POST",
                                         headers={"Content-Type": "application/x-ndjson"})
            urllib.request.urlopen(req, timeout=30).read()
        _wait_lines(port, len(workload.lines))
        rng = random.Random(9)
        mismatches = _lookup_mismatches(workload, port, "users", rng) + \
            _lookup_mismatches(workload, port, "merchants", rng)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not mismatches, f"{len(mismatches)} mismatches\n" + "\n".join(mismatches[:20])


@pytest.mark.parametrize("change, message", [
    (("name: merchants", "name: users"), "feature set name 'users' is used by two --spec files"),
    (("follow: false", "follow: true"), "its `source` differs from the first spec's"),
    (("features:", "parallelism: 2\nfeatures:"), "parallelism: 2 is not supported with several feature sets"),
])
def test_sets_that_cannot_run_together_are_refused(workload: Workload, tmp_path: Path, change: tuple[str, str],
                                                   message: str) -> None:
    paths = _write_specs(tmp_path, workload.events_path)
    paths["merchants"].write_text(paths["merchants"].read_text().replace(*change, 1))
    done = subprocess.run([BIN, "run", *_spec_args(paths), "--data-dir", str(tmp_path / "data"), "--exit-at-end"],
                          capture_output=True, timeout=60)
    assert done.returncode == 2, done.stderr.decode()
    assert message in done.stderr.decode() and str(paths["merchants"]) in done.stderr.decode(), done.stderr.decode()
    assert not (tmp_path / "data" / "sets").exists()


def test_health_names_the_set_whose_store_is_down(workload: Workload, tmp_path: Path) -> None:
    """/health is the first set's server, but a later set's trouble (its Redis unreachable) degrades it, named."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    paths = _write_specs(tmp_path, workload.events_path, follow=True)
    paths["merchants"].write_text(paths["merchants"].read_text().replace(
        "features:", f"online: {{type: redis, port: {closed_port}}}\nfeatures:", 1))
    proc, port = start_run([BIN, "run", *_spec_args(paths), "--data-dir", str(tmp_path / "data")], tmp_path / "run.log")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = 200, _get(port, "/health")
            except urllib.error.HTTPError as e:
                status, body = e.code, json.loads(e.read())
            if any(r.startswith("feature set 'merchants': online store redis://") for r in body.get("reasons", [])):
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.05)
        assert status == 503, body
    finally:
        proc.kill()
        proc.wait()


DEVICES = """name: devices
entity: device_id
timestamp: ts
watermark: {{max_out_of_orderness: 30s, allowed_lateness: 30s}}
source: {{type: file, path: {events}, follow: false}}
schema:
  device_id: string
  ts: timestamp
  amount: {{type: number, from_string: true}}
  device.os: string
features:
  - {{name: n_10m, aggregation: count, window: {{type: sliding, size: 10m}}}}
  - {{name: amount_1h, aggregation: sum, field: amount, window: {{type: sliding, size: 1h}}}}
  - {{name: last_os, aggregation: last, field: device.os, window: {{type: lifetime}}}}
"""


def _with_devices(seed: int) -> bytes:
    """_generate's events with a device: a top-level device_id (absent from a tenth of the lines, a number in a few:
    the devices set skips the first, rejects the second), a nested device.os, and amounts quoted as text now and
    then (a number to the devices set, whose schema says from_string; the wrong type to the users set). Plus two
    lines every set rejects: invalid JSON, and an array."""
    rng = random.Random(seed)
    out = []
    for line in _generate(seed).splitlines():
        event = json.loads(line)
        if rng.random() < 0.9:
            event["device_id"] = f"d{rng.randint(0, 9)}"
        elif rng.random() < 0.3:
            event["device_id"] = 17.5
        event["device"] = {"os": rng.choice(["ios", "android", "web"])}
        if rng.random() < 0.2:
            event["amount"] = f"{event['amount']}.5"
        out.append(json.dumps(event).encode())
    out[100:100] = [b'{"user_id": "u1", "ts": ', b'[1, 2]']
    return b"".join(line + b"\n" for line in out)


def _same_rejection(engine: str, ref: str) -> bool:
    """The engine's dead-letter reason against the reference's, which words it shorter: late and duplicate equal,
    a rejection names the same field (or begins alike: invalid JSON, not a JSON object)."""
    field = re.search(r"'[^']+'", ref)
    if ref in ("late", "duplicate") or field is None:
        return engine == ref or (ref not in ("late", "duplicate") and engine.startswith(ref))
    return field.group(0) in engine


def test_sets_reading_different_fields_each_get_their_own(tmp_path: Path) -> None:
    """The JSON of each line is read once for all sets; each set must still get exactly its own fields (its own
    slots, its own `from_string`, nested paths) and every event meant for it. Against the reference, per set: each
    features row (a set that saw no events, or another set's values or conversion, fails) and the dead letters (a
    line without device_id is skipped by the devices set, not dead-lettered; one with a number there is rejected)."""
    events = tmp_path / "events.jsonl"
    data = _with_devices(seed=1515)
    events.write_bytes(data)
    paths = {"users": tmp_path / "users.yaml", "devices": tmp_path / "devices.yaml"}
    paths["users"].write_text(USERS.format(events=events, follow="false", interval="200ms"))
    paths["devices"].write_text(DEVICES.format(events=events))
    data_dir = tmp_path / "data"
    subprocess.run([BIN, "run", "--spec", str(paths["users"]), "--spec", str(paths["devices"]), "--data-dir",
                    str(data_dir), "--exit-at-end"], check=True, capture_output=True, timeout=300)
    lines = reference.split_lines(data)
    for name, path in paths.items():
        spec = reference.load_spec(str(path))
        accepted, dead = reference.read_events(data, spec)
        assert len(accepted) > 3000, name
        mismatches = _row_mismatches(spec, _features_table(data_dir, name).to_pylist(), accepted)
        assert not mismatches, f"{name}: {len(mismatches)} mismatches\n" + "\n".join(mismatches[:20])
        letters = [json.loads(line) for line in
                   (data_dir / "sets" / name / "dead_letters" / "file.jsonl").read_text().splitlines()]

        def skipped(d: reference.DeadLetter) -> bool:  # by the later set: a JSON object without its entity field
            try:
                record = json.loads(lines[d.line - 1])
            except ValueError:
                return False
            return name == "devices" and isinstance(record, dict) and "device_id" not in record
        expected = [(d.line, d.reason) for d in dead if not skipped(d)]
        assert [d["line"] for d in letters] == [line for line, _ in expected], name
        for letter, (line, reason) in zip(letters, expected):
            assert _same_rejection(letter["reason"], reason), (name, line, letter["reason"], reason)
        assert any(reason.startswith("invalid JSON") for _, reason in expected), name
    devices_dead = [json.loads(line)["reason"] for line in
                    (data_dir / "sets" / "devices" / "dead_letters" / "file.jsonl").read_text().splitlines()]
    assert any("device_id" in reason for reason in devices_dead)

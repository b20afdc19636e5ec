"""Every Python example of python/README.md, and the Python SDK snippet of README.md, run as written.

python/README.md: its ```python blocks run in order, as one session, in a folder laid out as the page says
(fraud.yaml, events.jsonl, live.yaml) with `freshet run --spec live.yaml --data-dir freshet-data` started here on
a free loopback port (the page's http://127.0.0.1:8080 is replaced by its URL). Between blocks the test waits,
with a deadline, until the server has processed what was ingested (and, before the offline-table block, until
the tables are committed). Then the session's results are checked against values computed here from the events.

README.md: the block of its "Python SDK" section runs against `freshet run --spec fraud.yaml` (default data
directory), with `entity_df` given, like a reader who has the pipeline running.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pandas as pd
import pytest

import sdk_test as st
from sdk_test import BIN, ROOT, freshet

MIN = 60_000
HOUR = 60 * MIN


def _python_blocks(markdown: Path, section: str = "") -> List[Tuple[int, str]]:
    """The ```python blocks of a Markdown file (of one `## `/`### ` section when given), with their line."""
    lines = markdown.read_text(encoding="utf-8").splitlines()
    blocks: List[Tuple[int, str]] = []
    inside = None
    current_section = ""
    for number, line in enumerate(lines, 1):
        if inside is None:
            if line.startswith("#"):
                current_section = line.lstrip("#").strip()
            if line.strip() == "```python" and (not section or current_section == section):
                inside = (number + 1, [])
        elif line.strip() == "```":
            blocks.append((inside[0], "\n".join(inside[1])))
            inside = None
        else:
            inside[1].append(line)
    return blocks


def _run_block(code: str, namespace: Dict[str, Any], where: str) -> None:
    exec(compile(code, where, "exec"), namespace)  # noqa: S102 - the documentation's own examples.


def _metric_sum(client: freshet.Client, prefix: str) -> float:
    return sum(v for k, v in client.metrics().items() if k == prefix or k.startswith(prefix + "{"))


def _wait(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _caught_up(client: freshet.Client) -> bool:
    metrics = client.metrics()
    acked = sum(v for k, v in metrics.items() if k.startswith("freshet_ingest_events_total"))
    seen = sum(v for k, v in metrics.items() if k.startswith("freshet_events_in_total"))
    return seen >= acked


def _events(path: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _max_purchase_24h(events: List[Dict[str, Any]], user: str, at_ms: int) -> float:
    amounts = [e["amount"] for e in events if e["user_id"] == user and e["type"] == "purchase"
               and at_ms - 24 * HOUR < e["ts"] <= at_ms]
    return max(amounts) if amounts else math.nan


def _folder(tmp: Path) -> Path:
    shutil.copy(ROOT / "examples" / "fraud" / "fraud.yaml", tmp / "fraud.yaml")
    shutil.copy(ROOT / "examples" / "fraud" / "profiles.jsonl", tmp / "profiles.jsonl")  # live.yaml's table.
    live = (ROOT / "examples" / "fraud" / "live.yaml").read_text()
    assert "checkpoint: {interval: 10s}" in live
    (tmp / "live.yaml").write_text(live.replace("checkpoint: {interval: 10s}", "checkpoint: {interval: 200ms}"))
    st._generate(tmp / "events.jsonl", "--users", "100", "--events", "20000", "--seed", "1")
    return tmp


class _Run(st.Server):
    """`freshet run` in a given folder, with extra arguments (a free port)."""

    def __init__(self, cwd: Path, args: List[str], log: Path) -> None:  # noqa: D107
        self._start([*args, "--port", "0"], log, cwd=cwd)


def test_python_readme_examples_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st._require_binary()
    folder = _folder(tmp_path)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("FRESHET_BIN", BIN)
    monkeypatch.setenv("FRESHET_TOKEN", st.TOKEN)
    blocks = _python_blocks(ROOT / "python" / "README.md")
    assert len(blocks) >= 6
    server = _Run(folder, ["--spec", "live.yaml", "--data-dir", "freshet-data"], tmp_path / "run.log")
    try:
        probe = freshet.Client(server.url)
        namespace: Dict[str, Any] = {"__name__": "readme"}
        for line, code in blocks:
            assert "http://127.0.0.1:8080" in code or "Client(" not in code, line
            code = code.replace("http://127.0.0.1:8080", server.url)
            _wait(lambda: _caught_up(probe), "the server to process the ingested events")
            if "read_offline_table" in code or "skew_report" in code:
                # The tables are committed with each checkpoint: wait for the ingested events and logged answers.
                def committed() -> bool:
                    metrics = probe.metrics()
                    answers = metrics.get("freshet_feature_log_answers_total", 0)
                    if not answers or metrics.get("freshet_feature_log_committed_total", 0) < answers:
                        return False
                    try:
                        table = freshet.read_offline_table("live.yaml", "events", data_dir="freshet-data")
                    except FileNotFoundError:
                        return False
                    return len(table) == 4
                _wait(committed, "the offline tables to be committed")
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # No example warns unless it shows the warning.
                warnings.simplefilter("always", freshet.TimestampUnitWarning)
                _run_block(code, namespace, f"python/README.md:{line}")
    finally:
        assert server.stop() == 0

    # The results, against values computed here from the events.
    events = _events(folder / "events.jsonl")
    entity_df = namespace["entity_df"]
    assert list(namespace["subset"].columns) == ["user_id", "ts", "label", "purchase_count_30m", "max_purchase_24h"]
    assert list(namespace["train"].columns) == ["user_id", "ts", "label"] + freshet.load_spec("fraud.yaml", BIN).feature_names
    row_ms = [int(t.value // 1_000_000) for t in entity_df["ts"]]
    want = [_max_purchase_24h(events, u, t) for u, t in zip(entity_df["user_id"], row_ms)]
    for frame in ("train", "subset", "same", "from_frame"):
        got = namespace[frame]["max_purchase_24h"].tolist()
        assert all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(got, want)), (frame, got, want)
    assert any(not math.isnan(v) for v in want)
    pd.testing.assert_series_equal(namespace["subset"]["purchase_count_30m"], namespace["train"]["purchase_count_30m"])

    online = namespace["online"].reset_index()
    assert online["user_id"].tolist() == ["u1", "u2", "u1"]
    assert online["purchase_count_30m"].tolist() == [2, 0, 2]  # u1's purchases at 00:00 and 00:04.
    assert online["max_purchase_24h"].tolist()[0] == 23.5 and math.isnan(online["max_purchase_24h"][1])
    assert online["known"].tolist() == [True, True, True]
    assert len(namespace["frame"]) == 2
    caught = namespace["caught"]
    assert [w.category for w in caught] == [freshet.TimestampUnitWarning]
    assert "1767226200000" in str(caught[0].message)
    assert len(namespace["events"]) == 4  # The offline events table: what was ingested.
    assert namespace["events"]["entity"].tolist() == ["u1", "u1", "u2", "u3"]
    assert namespace["report"].attrs["answers"] >= 3
    # live.yaml saw only the ingested events (00:00-00:06): u1's purchases are within 24 h of its rows, u2 has none.
    live_max = namespace["train_live"]["max_purchase_24h"].tolist()
    assert live_max[0] == 23.5 and math.isnan(live_max[1]) and live_max[2] == 23.5


def test_readme_python_sdk_snippet_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README.md's snippet: a pipeline on fraud.yaml (its file source) with the default data directory."""
    st._require_binary()
    folder = _folder(tmp_path)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("FRESHET_BIN", BIN)
    blocks = _python_blocks(ROOT / "README.md", section="Python SDK")
    assert len(blocks) == 1
    line, code = blocks[0]
    server = _Run(folder, ["--spec", "fraud.yaml"], tmp_path / "run.log")
    try:
        client = freshet.Client(server.url)
        total = len(_events(folder / "events.jsonl"))
        _wait(lambda: _metric_sum(client, "freshet_events_in_total") >= total, "the events file to be read")
        client.get_online_features(["u1"])  # An answer in feature_log, so that `freshet skew` has its table.
        _wait(lambda: os.path.isdir(folder / "freshet-data" / "offline" / "feature_log" / "_delta_log"),
              "the feature_log table", timeout=60)
        entity_df = pd.DataFrame({"user_id": ["u1", "u2"], "ts": [1767268800000, 1767290400000]})
        namespace: Dict[str, Any] = {"entity_df": entity_df}
        _run_block(code.replace("http://127.0.0.1:8080", server.url), namespace, f"README.md:{line}")
    finally:
        assert server.stop() == 0
    info = freshet.load_spec(folder / "fraud.yaml", BIN)
    assert list(namespace["train"].columns) == ["user_id", "ts"] + info.feature_names
    events = _events(folder / "events.jsonl")
    want = [_max_purchase_24h(events, u, t) for u, t in zip(entity_df["user_id"], entity_df["ts"])]
    got = namespace["train"]["max_purchase_24h"].tolist()
    assert all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(got, want)), (got, want)

"""The console's Kafka partition table (issue 14) against a real broker (tests/kafka_broker.py): the per-partition
consumed offset, committed offset and lag that GET /v1/ui/pipeline gives and the pipeline page shows in a headless
browser equal /metrics' freshet_kafka_{consumed,committed}_offset and freshet_kafka_lag_messages per partition,
and the broker's own end offsets and the group's committed offsets.

Compared once the pipeline has read every message, when the figures stand still (while messages flow, /metrics
is refreshed every half second and the page every two): first before any checkpoint (the group has no offsets:
the consumed and committed columns differ), then after the checkpoint that an explanation takes commits them.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from console_browser_test import browser, screenshot_dir, text, wait_until  # noqa: E402,F401  (browser: fixture)
from explain_test import FRESHET_BIN, wait_for  # noqa: E402
from kafka_broker import kafka_broker  # noqa: E402,F401  (the fixture)
from run_process import start_run  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

TOPIC = "events"
GROUP = "console"
PARTITIONS = 4

SPEC = """name: console_kafka
entity: user_id
timestamp: ts
watermark: {{max_out_of_orderness: 3s, allowed_lateness: 10s}}
source: {{type: kafka, brokers: "{brokers}", topic: {topic}, group: {group}, session_timeout: 10s}}
checkpoint: {{interval: 1h}}
features:
  - name: events_1h
    aggregation: count
    window: {{type: sliding, size: 1h}}
"""


def get(base: str, path: str) -> str:
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return r.read().decode()


def partition_metrics(base: str) -> dict[str, dict[int, int]]:
    """freshet_kafka_{consumed_offset,committed_offset,lag_messages} per partition, from /metrics."""
    out: dict[str, dict[int, int]] = {"consumed": {}, "committed": {}, "lag": {}}
    names = {"freshet_kafka_consumed_offset": "consumed", "freshet_kafka_committed_offset": "committed",
             "freshet_kafka_lag_messages": "lag"}
    for line in get(base, "/metrics").splitlines():
        m = re.fullmatch(r'(freshet_kafka_\w+)\{partition="(\d+)"\} (\S+)', line)
        if m and m.group(1) in names:
            out[names[m.group(1)]][int(m.group(2))] = int(float(m.group(3)))
    return out


def shown_partitions(driver) -> dict[int, tuple[int, int, int]]:
    """The page's Kafka table: partition -> (consumed, committed, lag)."""
    shown = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "#kafka tr")[1:]:
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        shown[int(cells[0])] = (int(cells[1]), int(cells[2]), int(cells[3]))
    return shown


def check_page_api_metrics(base: str, driver, what: str) -> dict[str, dict[int, int]]:
    """The API's and the page's per-partition figures equal /metrics' (the page once it has polled)."""
    metrics = partition_metrics(base)
    api = json.loads(get(base, "/v1/ui/pipeline"))["kafka"]
    assert {k["partition"]: k["consumed"] for k in api} == metrics["consumed"], what
    assert {k["partition"]: k["committed"] for k in api} == metrics["committed"], what
    assert {k["partition"]: k["lag"] for k in api} == metrics["lag"], what
    want = {p: (metrics["consumed"][p], metrics["committed"][p], metrics["lag"][p]) for p in metrics["consumed"]}
    wait_until(driver, lambda d: shown_partitions(d) == want, f"the page's Kafka table {what} ({want})")
    return metrics


def test_kafka_partition_table_equals_metrics_and_broker(kafka_broker, browser, tmp_path: Path):  # noqa: F811
    kafka_broker.create_topic(TOPIC, partitions=PARTITIONS)
    subprocess.run([FRESHET_BIN, "generate", "--users", "50", "--events", "3000", "--seed", "9",
                    "--output", str(tmp_path / "events.jsonl")], check=True, capture_output=True)
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    kafka_broker.produce(TOPIC, [(json.loads(line)["user_id"].encode(), line) for line in lines])
    ends = kafka_broker.end_offsets(TOPIC)
    assert sum(ends.values()) == len(lines) and all(v > 0 for v in ends.values()), ends
    (tmp_path / "spec.yaml").write_text(SPEC.format(brokers=kafka_broker.bootstrap, topic=TOPIC, group=GROUP))
    proc, port = start_run([FRESHET_BIN, "run", "--spec", str(tmp_path / "spec.yaml"), "--data-dir",
                            str(tmp_path / "data"), "--port", "0"], tmp_path / "run.log")
    base = f"http://127.0.0.1:{port}"
    try:
        # Every message read; no checkpoint is due for an hour, so the group has no offset yet: the consumed and
        # committed columns differ.
        wait_for(lambda: (lambda m: m["consumed"] == ends and m["lag"] == {p: 0 for p in ends})(partition_metrics(base)),
                 90, "the consumed offsets at the end offsets")
        browser.get(base + "/ui#pipeline")
        wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#kafka tr")) == PARTITIONS + 1,
                   "the Kafka partition table")
        before = check_page_api_metrics(base, browser, "before a checkpoint")
        assert all(before["committed"][p] != ends[p] for p in ends), before
        assert all(v is None for v in kafka_broker.committed(GROUP, TOPIC).values())
        # An explanation takes a checkpoint, which commits the offsets to the group: the broker, /metrics, the API
        # and the page all say so.
        entity = json.loads(lines[0])["user_id"]
        assert json.loads(get(base, f"/v1/explain/{entity}?feature=events_1h"))["agrees"] is True
        wait_for(lambda: kafka_broker.committed(GROUP, TOPIC) == ends, 60, "the group's offsets at the end")
        wait_for(lambda: partition_metrics(base)["committed"] == ends, 30, "the committed-offset gauges")
        check_page_api_metrics(base, browser, "after a checkpoint")
        assert text(browser, '[data-figure="totals.in"]') == str(len(lines))
        browser.save_screenshot(str(screenshot_dir() / "pipeline-kafka.png"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)

"""The web console at /ui (issue 14), in a real headless browser: Debian's chromium through chromedriver and
Selenium.

Against a running `freshet run` on a generated workload (late, malformed and duplicate lines, all processed and
checkpointed), each page is loaded, waited on (with deadlines) until its data shows, and the numbers it shows
are compared with the JSON endpoints it reads; the entity page explains an entity with late and filtered
events. Screenshots are kept under the build folder (FRESHET_BIN's folder/ui-screenshots), or in
$FRESHET_UI_SCREENSHOT_DIR (scripts/ui_screenshots.sh points it at docs/ui for the README).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import explain_test  # noqa: E402
import reference as ref  # noqa: E402
from run_process import start_run  # noqa: E402

FRESHET_BIN = explain_test.FRESHET_BIN
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


def js_json(value) -> str:
    """JSON.stringify of a parsed feature value, as the page shows it (a double with no fraction loses its '.0')."""
    if isinstance(value, float):
        text = str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", text)
    return json.dumps(value)


def fmt(value, unit=None) -> str:
    """The console's format() (ui/console.js) for the figures compared here."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if unit == "s":
        return f"{value:.3f} s" if abs(value) < 10 else f"{value:.1f} s"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    d = tmp_path_factory.mktemp("console")
    # A live feed (screenshots) carries the last day's events, so that the watermark lag reads as live.
    recent = (["--start", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 86400)), "--duration", "1d"]
              if os.environ.get("FRESHET_UI_LIVE_FEED") else [])
    subprocess.run([FRESHET_BIN, "generate", "--users", "30", "--events", "2000", "--seed", "3", "--disorder", "2m",
                    "--late-share", "0.03", "--malformed-share", "0.02", "--event-ids", "--duplicate-share", "0.03",
                    *recent, "--output", str(d / "events.jsonl")], check=True, capture_output=True)
    (d / "spec.yaml").write_text(explain_test.SPEC.replace(
        "checkpoint: {interval: 1s}",
        "checkpoint: {interval: 1s}\nfreshness_slo: {p99: 1s, window: 1m}\nskew: {interval: 1s}").replace(
        "path: events.jsonl}", "path: feed.jsonl, follow: true}"))
    spec = ref.load_spec(str(d / "spec.yaml"))
    data = (d / "events.jsonl").read_bytes()
    events, dead = ref.read_events(data, spec)
    lines = ref.split_lines(data)
    (d / "feed.jsonl").write_bytes(b"")
    proc, port = start_run([FRESHET_BIN, "run", "--spec", str(d / "spec.yaml"), "--data-dir", str(d / "data"),
                            "--port", "0"], d / "run.log")
    base = f"http://127.0.0.1:{port}"
    try:
        feed(d / "feed.jsonl", lines)
        explain_test.wait_for(lambda: get(base, "/v1/ui/pipeline")["totals"]["accepted"] == len(events), 30,
                              "all events accepted")
        written = get(base, "/v1/ui/pipeline")["checkpoint"]["written"]
        explain_test.wait_for(lambda: get(base, "/v1/ui/pipeline")["checkpoint"]["written"] >= written + 2, 30,
                              "a checkpoint begun after the last event (one may have been under way)")
        # Lookups (logged by the feature log) for the in-process skew check to compare, once they are committed.
        for entity in sorted({e.entity for e in events})[:10]:
            at = max(e.time_ms for e in events if e.entity == entity)
            get(base, f"/v1/features/{urllib.parse.quote(entity)}?at={at}")
        explain_test.wait_for(lambda: any(f["skew"] and f["skew"][-1]["compared"] == 10
                                          for f in get(base, "/v1/ui/features")["features"]), 30,
                              "a skew check over the logged lookups")
        yield base, spec, events, dead, lines
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def feed(path: Path, lines: list[bytes]) -> None:
    """Appends the events to the file the pipeline follows, in 40 chunks. With FRESHET_UI_LIVE_FEED (set by
    scripts/ui_screenshots.sh) the chunks are paced half a second apart, so that the screenshots' charts show
    events arriving over time; the tests themselves wait for conditions only."""
    pace = 0.5 if os.environ.get("FRESHET_UI_LIVE_FEED") else 0.0
    chunk = max(1, len(lines) // 40 + 1)
    for start in range(0, len(lines), chunk):
        with open(path, "ab") as f:
            f.write(b"".join(line + b"\n" for line in lines[start:start + chunk]))
        if pace:
            time.sleep(pace)  # Pacing the feed (screenshots only), not waiting for anything.


def get(base: str, path: str):
    return explain_test.get_json(base + path)[1]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.fail("chromium and chromium-driver are not installed; scripts/setup.sh installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def screenshot_dir() -> Path:
    folder = Path(os.environ.get("FRESHET_UI_SCREENSHOT_DIR") or Path(FRESHET_BIN).resolve().parent / "ui-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_until(driver, condition, what: str, seconds: float = 15):
    deadline = time.monotonic() + seconds
    while True:
        try:
            value = condition(driver)
        except Exception:  # The page may be re-rendering the element being read.
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; page error: "
                                 f"{driver.find_element(By.ID, 'updated').text!r}")
        time.sleep(0.05)


def text(driver, css: str, seconds: float = 15) -> str:
    """The element's text; read again when the page re-rendered it between finding and reading (the console
    refreshes its tables every few seconds, so a read can meet an element that was just replaced)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return driver.find_element(By.CSS_SELECTOR, css).text
        except StaleElementReferenceException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_pipeline_page(pipeline, browser):
    base, spec, events, dead, lines = pipeline
    browser.get(base + "/ui#pipeline")
    wait_until(browser, lambda d: text(d, '[data-figure="totals.accepted"]') == str(len(events)), "accepted total")
    api = get(base, "/v1/ui/pipeline")
    late = sum(1 for x in dead if x.reason == "late")
    duplicates = sum(1 for x in dead if x.reason == "duplicate")
    assert api["totals"] == {"in": len(lines), "accepted": len(events), "rejected": len(dead) - late - duplicates,
                             "late": late, "duplicates": duplicates}
    for key in ("in", "accepted", "rejected", "late", "duplicates"):
        assert text(browser, f'[data-figure="totals.{key}"]') == fmt(api["totals"][key]), key
    assert text(browser, '[data-figure="state.entities"]') == fmt(api["state"]["entities"])
    assert text(browser, '[data-figure="online.type"]') == "embedded"
    assert text(browser, '[data-figure="freshness.slo_p99_seconds"]') == fmt(1.0, "s")
    assert text(browser, '[data-figure="checkpoint.written"]') != ""
    health = browser.find_element(By.ID, "health")
    assert health.get_attribute("data-status") == ("ok" if api["health"]["ok"] else "degraded")
    # The charts draw the history once there are two samples.
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-rates svg path[stroke='#1a7']"),
               "the events chart")
    browser.save_screenshot(str(screenshot_dir() / "pipeline.png"))


def test_features_page(pipeline, browser):
    base, spec, events, dead, lines = pipeline
    browser.get(base + "/ui#features")
    wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#features-table tbody tr")) == len(spec.features),
               "the features table")
    api = get(base, "/v1/ui/features")
    for feature in api["features"]:
        row = f'#features-table tr[data-feature="{feature["name"]}"]'
        assert text(browser, row + ' td[data-col="skipped"]') == str(feature["skipped_fields"])
        shown = text(browser, row + ' td[data-col="share"]')
        assert shown.endswith(" %") and abs(float(shown[:-2]) - 100 * feature["share_with_value"]) <= 0.05001, shown
    for feature in api["features"]:
        latest = feature["skew"][-1]
        row = f'#features-table tr[data-feature="{feature["name"]}"]'
        assert latest["compared"] == 10, latest
        assert text(browser, row + ' [data-skew="mismatch"]') == f'{100 * latest["mismatch_rate"]:.2f} %'
        assert text(browser, row + ' [data-skew="psi"]') == ("–" if latest["psi"] is None else f'{latest["psi"]:.4f}')
    # Skipped fields: the feature over every event's amount skips the events without one.
    assert next(f for f in api["features"] if f["name"] == "avg_amount_1h")["skipped_fields"] > 0
    browser.save_screenshot(str(screenshot_dir() / "features.png"))


def test_entity_page_explains_late_and_filtered_events(pipeline, browser):
    base, spec, events, dead, lines = pipeline
    late_entities = {}
    for letter in dead:
        parsed = ref.parse_event(lines[letter.line - 1], letter.line, spec)
        if not isinstance(parsed, str) and letter.reason == "late":
            late_entities[parsed.entity] = late_entities.get(parsed.entity, 0) + 1
    # An entity with late events, and a feature with a `where` for which some of its events count.
    def candidates():
        for entity in sorted(late_entities, key=lambda e: -late_entities[e]):
            at = max(e.time_ms for e in events if e.entity == entity)
            for feature in ("categories_session", "purchase_amount_30m", "failed_logins_10m"):
                x = get(base, f"/v1/explain/{urllib.parse.quote(entity)}?feature={feature}&at={at}")
                if {"late", "where_false", "counted"} <= {e["verdict"] for e in x["events"]}:
                    yield entity, feature, at
    entity, feature, at = next(candidates())
    browser.get(f"{base}/ui#entity/{urllib.parse.quote(entity)}/{feature}/{at}")
    wait_until(browser, lambda d: d.find_element(By.ID, "explain").get_attribute("data-loaded") == "true",
               "the explanation", seconds=30)
    api = get(base, f"/v1/explain/{urllib.parse.quote(entity)}?feature={feature}&at={at}")
    assert text(browser, "#explained-value") == js_json(api["value"])
    assert text(browser, "#arithmetic") == api["arithmetic"]
    verdicts = [r.get_attribute("data-verdict") for r in browser.find_elements(By.CSS_SELECTOR, "#explain-events tr[data-verdict]")]
    assert verdicts == [e["verdict"] for e in api["events"]]
    assert "late" in verdicts and "where_false" in verdicts and "counted" in verdicts, verdicts
    assert api["agrees"] is True
    served = get(base, f"/v1/features/{urllib.parse.quote(entity)}?at={at}")
    for name, value in served["features"].items():
        assert text(browser, f'#current-values tr[data-feature="{name}"] td.v') == js_json(value), name
    # Tall enough to show the events with their verdicts below the charts (at most 2,600 pixels).
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1400, min(max(1000, height + 100), 2600))
    browser.save_screenshot(str(screenshot_dir() / "entity.png"))
    browser.set_window_size(1400, 1000)


def test_dead_letters_page(pipeline, browser):
    base, spec, events, dead, lines = pipeline
    browser.get(base + "/ui#dead-letters")
    api = get(base, "/v1/ui/dead-letters")
    wait_until(browser, lambda d: text(d, '[data-dl="totals.late"]') == str(api["totals"]["late"]), "the totals")
    for key in ("rejected", "late", "duplicates"):
        assert text(browser, f'[data-dl="totals.{key}"]') == str(api["totals"][key])
    rows = browser.find_elements(By.CSS_SELECTOR, "#dl-latest tbody tr")
    assert len(rows) == len(api["latest"]) == min(50, len(dead))
    assert rows[0].find_elements(By.TAG_NAME, "td")[1].text == api["latest"][-1]["reason"]
    assert sum(api["recent_by_reason"].values()) == len(dead)
    browser.save_screenshot(str(screenshot_dir() / "dead-letters.png"))


def test_degraded_health_is_shown_with_its_reasons(browser, tmp_path):
    """/health's reasons are the pipeline page's banner: here an online store (Redis) that cannot be reached."""
    with socket.socket() as s:  # A loopback port nobody listens on.
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    subprocess.run([FRESHET_BIN, "generate", "--users", "5", "--events", "100", "--output", str(tmp_path / "events.jsonl")],
                   check=True, capture_output=True)
    (tmp_path / "spec.yaml").write_text(f"""\
name: unreachable_redis
entity: user_id
timestamp: ts
source: {{type: file, path: events.jsonl}}
online: {{type: redis, host: 127.0.0.1, port: {closed_port}}}
features:
  - {{name: n, aggregation: count, window: {{type: lifetime}}}}
""")
    proc, port = start_run([FRESHET_BIN, "run", "--spec", str(tmp_path / "spec.yaml"), "--data-dir", str(tmp_path / "data"),
                            "--port", "0"], tmp_path / "run.log")
    base = f"http://127.0.0.1:{port}"
    try:
        explain_test.wait_for(lambda: get(base, "/v1/ui/pipeline")["totals"]["accepted"] == 100, 30, "the events")
        browser.get(base + "/ui#pipeline")
        wait_until(browser, lambda d: d.find_element(By.ID, "health").get_attribute("data-status") == "degraded",
                   "the degraded banner")
        # The Redis writer's reason changes as it retries ("unreachable", then "out of sync: starting" between two
        # connect attempts), and the page polls every 2 s: wait until the banner shows what /health says now.
        unreachable = f"redis://127.0.0.1:{closed_port} unreachable"
        last = {}

        def banner_matches_health(_driver) -> bool:
            health = get(base, "/health")
            shown = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#health li")]
            last.update(health=health, shown=shown)
            return (health["status"] == "degraded" and unreachable in health["reasons"][0] and
                    shown == health["reasons"])

        wait_until(browser, banner_matches_health, f"the banner to show /health's reasons (last: {last})")
        assert text(browser, '[data-figure="online.type"]') == "redis"
        assert text(browser, '[data-figure="online.connected"]') == "no"
        browser.save_screenshot(str(screenshot_dir() / "pipeline-degraded.png"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_run_of_several_feature_sets_offers_a_choice_of_set(browser, tmp_path):
    """`freshet run --spec users.yaml --spec merchants.yaml`: the console's set selector lists both; choosing the
    merchants set shows its features, and the entity explorer explains a merchant's feature with the set's value."""
    import feature_sets_test as sets  # noqa: E402  (its workload generator and two specs)
    events = tmp_path / "events.jsonl"
    events.write_bytes(sets._generate(seed=4, events=600))
    paths = sets._write_specs(tmp_path, events)
    proc, port = start_run([FRESHET_BIN, "run", *sets._spec_args(paths), "--data-dir", str(tmp_path / "data")],
                           tmp_path / "run.log")
    base = f"http://127.0.0.1:{port}"
    try:
        explain_test.wait_for(lambda: get(base, "/v1/ui/pipeline")["totals"]["in"] == 600, 30, "every line read")
        browser.get(base + "/ui#features")
        wait_until(browser, lambda d: d.find_element(By.ID, "set-select").is_displayed(), "the set selector")
        options = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#set-select option")]
        assert options == ["users", "merchants"], options
        users = [f["name"] for f in get(base, "/v1/ui/features?feature_set=users")["features"]]
        merchants = [f["name"] for f in get(base, "/v1/ui/features?feature_set=merchants")["features"]]
        assert set(users).isdisjoint(merchants)

        def shown(d):
            return [r.get_attribute("data-feature") for r in d.find_elements(By.CSS_SELECTOR, "#features-table tbody tr")]
        wait_until(browser, lambda d: shown(d) == users, "the users set's features")
        browser.find_element(By.CSS_SELECTOR, '#set-select option[value="merchants"]').click()
        wait_until(browser, lambda d: shown(d) == merchants, "the merchants set's features")
        assert text(browser, "#spec-name") == "merchants"

        browser.get(f"{base}/ui#entity/m3/max_amount")
        browser.find_element(By.CSS_SELECTOR, '#set-select option[value="merchants"]').click()
        browser.find_element(By.ID, "entity-input").clear()
        browser.find_element(By.ID, "entity-input").send_keys("m3")
        wait_until(browser, lambda d: "max_amount" in [o.get_attribute("value") for o in
                                                        d.find_elements(By.CSS_SELECTOR, "#feature-select option")],
                   "the merchants set's features in the explorer")
        browser.find_element(By.CSS_SELECTOR, '#feature-select option[value="max_amount"]').click()
        browser.find_element(By.CSS_SELECTOR, "#entity-form button").click()
        wait_until(browser, lambda d: d.find_element(By.ID, "explain").get_attribute("data-loaded") == "true",
                   "the explanation", seconds=30)
        api = get(base, "/v1/explain/m3?feature=max_amount&feature_set=merchants")
        served = get(base, "/v1/features/merchants/m3")["features"]["max_amount"]
        assert api["value"] == served and served is not None
        assert text(browser, "#explained-value") == js_json(api["value"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)

#!/usr/bin/env bash
# Regenerates the console screenshots the README shows (docs/ui/*.png): runs the browser test
# (tests/console_browser_test.py: a live `freshet run` on a generated workload, headless chromium) with its
# screenshots pointed at docs/ui. Needs scripts/setup.sh (chromium, chromium-driver, selenium) and build/freshet.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
# FRESHET_UI_LIVE_FEED paces the events into the followed file over some 20 s, so the charts show a live feed.
FRESHET_BIN="${FRESHET_BIN:-$here/build/freshet}" FRESHET_UI_SCREENSHOT_DIR="$here/docs/ui" FRESHET_UI_LIVE_FEED=1 \
  "$here/.venv/bin/python" -m pytest -q tests/console_browser_test.py tests/console_kafka_test.py
ls -l docs/ui/*.png

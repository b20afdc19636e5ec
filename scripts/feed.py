#!/usr/bin/env python3
"""Pushes JSON-lines events to a running `freshet run` (POST /v1/ingest) at their event-time pace.

Events are sent once their timestamp (epoch ms, field `ts`) is due on the wall clock, in batches, so a
stream generated with `freshet generate --start <now>` arrives live. Progress goes to stderr.

    scripts/feed.py --url http://127.0.0.1:8080 --events events.jsonl [--token-file F] [--batch-ms 200]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request


def post(url: str, body: bytes, token: str | None) -> int:
    headers = {"Content-Type": "application/x-ndjson"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url + "/v1/ingest", data=body, method="POST", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["accepted"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--events", required=True)
    parser.add_argument("--token-file")
    parser.add_argument("--batch-ms", type=int, default=200, help="send what became due every this many ms")
    args = parser.parse_args()
    token = open(args.token_file).read().strip() if args.token_file else os.environ.get("FRESHET_TOKEN")
    pending: list[bytes] = []
    sent = 0
    started = time.time()
    with open(args.events, "rb") as f:
        for line in f:
            try:
                value = json.loads(line)
                due_ms = value.get("ts", 0) if isinstance(value, dict) else 0
            except ValueError:
                due_ms = 0  # Malformed lines go along with the next batch; freshet dead-letters them.
            if not isinstance(due_ms, int):
                due_ms = 0
            # An event is never sent before its time (a lookup "as of now" must not see the future); the ones
            # that became due meanwhile go together, at most batch-ms after their time.
            wait = due_ms / 1000.0 - time.time()
            if (wait > 0 and pending) or len(pending) >= 5000:
                sent += post(args.url, b"".join(pending), token)
                pending.clear()
                print(f"\rfeed: {sent} events sent in {time.time() - started:.0f} s", end="", file=sys.stderr)
                wait = due_ms / 1000.0 - time.time()
            if wait > 0:
                time.sleep(max(wait, args.batch_ms / 1000.0))
            pending.append(line)
    if pending:
        sent += post(args.url, b"".join(pending), token)
    print(f"\rfeed: {sent} events sent in {time.time() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (urllib.error.URLError, ConnectionError) as e:
        print(f"\nfeed: stopped: {e}", file=sys.stderr)
        sys.exit(1)

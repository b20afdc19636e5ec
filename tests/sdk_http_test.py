"""freshet.Client's HTTP session against a scripted stand-in server on a free loopback port.

- One keep-alive connection per thread, reused; a connection the server closed while idle is replaced.
- Lookups are retried on 503 and on a connection closed without an answer, a bounded number of times.
- Every ingest batch carries an Idempotency-Key, the same on its resends and new for the next batch.
- A server that does not answer within the read timeout is an error at once (not retried); a server that
  comes up late is reached through the retries of refused connections.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

import sdk_test  # noqa: F401 - puts this checkout's SDK on sys.path
import freshet

SPEC = {"name": "fake", "entity": "user_id", "timestamp": "ts",
        "features": [{"name": "n", "aggregation": "count"}]}


class Fake:
    """A threaded HTTP/1.1 server; `script` holds actions for the next requests ("ok" when empty)."""

    def __init__(self, port: int = 0) -> None:
        self.connections = 0
        self.requests: List[Tuple[str, str, Dict[str, str], bytes]] = []
        self.script: List[str] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with fake.lock:
                    fake.connections += 1

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with fake.lock:
                    fake.requests.append((method, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    action = fake.script.pop(0) if fake.script else "ok"
                if action == "drop":  # Close without answering.
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action == "hang":
                    time.sleep(3)
                    self.close_connection = True
                    return
                if action == "503":
                    self._send(503, {"error": "busy"}, {"Retry-After": "0"})
                    return
                if self.path == "/v1/spec":
                    self._send(200, SPEC)
                elif self.path == "/v1/features":
                    asked = json.loads(body)
                    self._send(200, {"as_of_ms": 1767225600000, "results": [
                        {"entity": str(e), "known": True, "features": {"n": len(str(e))}} for e in asked["entities"]]})
                elif self.path == "/v1/ingest":
                    self._send(200, {"accepted": body.count(b"\n"), "rejected": 0, "errors": []})
                else:
                    self._send(200, {"status": "ok"})
                if action == "close-after":  # Answer, then close the idle connection without saying so.
                    self.wfile.flush()
                    self.close_connection = True

            def _send(self, status: int, doc: Any, headers: Optional[Dict[str, str]] = None) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._answer("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._answer("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def fake() -> Iterator[Fake]:
    server = Fake()
    yield server
    server.stop()


def _lookups(fake: Fake) -> List[Tuple[str, str, Dict[str, str], bytes]]:
    return [r for r in fake.requests if r[1] == "/v1/features"]


def test_one_keep_alive_connection_per_thread(fake: Fake) -> None:
    with freshet.Client(fake.url) as client:
        for i in range(30):
            assert client.get_online_features([f"u{i}"]) == {f"u{i}": {"n": len(f"u{i}")}}
        client.health()
        client.spec()
        assert fake.connections == 1 and len(fake.requests) == 32

        errors: List[BaseException] = []

        def work() -> None:
            try:
                for _ in range(10):
                    assert client.get_online_features(["abc"]) == {"abc": {"n": 3}}
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not errors and len(fake.requests) == 72
        assert fake.connections == 5  # The main thread's, and one for each of the 4 threads.

        # The server closes the idle connection: the next request goes on a new one, without an error.
        fake.script = ["close-after"]
        client.health()
        deadline = time.time() + 10
        while time.time() < deadline:
            assert client.get_online_features(["x"]) == {"x": {"n": 1}}
            if fake.connections == 6:
                break
        assert fake.connections == 6


def test_lookups_are_retried_on_503_and_dropped_connections(fake: Fake) -> None:
    client = freshet.Client(fake.url, retries=3, backoff=0.01)
    fake.script = ["503", "drop", "503"]
    assert client.get_online_features(["u1", "u2", "u1"]) == {"u1": {"n": 2}, "u2": {"n": 2}}
    assert len(_lookups(fake)) == 4
    fake.script = ["503"] * 10
    with pytest.raises(freshet.FreshetError) as info:
        freshet.Client(fake.url, retries=2, backoff=0.01).get_online_features(["u1"])
    assert info.value.status == 503 and len(_lookups(fake)) == 4 + 3  # Bounded: 1 + 2 retries.
    fake.script = ["503"]
    with pytest.raises(freshet.FreshetError):
        freshet.Client(fake.url, retries=0).get_online_features(["u1"])
    client.close()


def test_ingest_batches_carry_an_idempotency_key_kept_on_resends(fake: Fake) -> None:
    client = freshet.Client(fake.url, token="t", retries=3, backoff=0.01)
    fake.script = ["ok", "drop", "503"]  # The spec (for the timestamp field), then two failed sends.
    assert client.ingest([{"user_id": "u1", "ts": 1767225600000}, {"user_id": "u2", "ts": 1767225600001}]) == 2
    assert client.ingest([{"user_id": "u3", "ts": 1767225600002}]) == 1
    sends = [r for r in fake.requests if r[1] == "/v1/ingest"]
    assert len(sends) == 4
    keys = [headers.get("idempotency-key") for _, _, headers, _ in sends]
    assert keys[0] and keys[0] == keys[1] == keys[2] and keys[3] and keys[3] != keys[0]
    assert all(headers.get("authorization") == "Bearer t" for _, _, headers, _ in sends)
    assert sends[0][3] == sends[2][3]  # The same body each time.


def test_read_timeout_is_not_retried(fake: Fake) -> None:
    client = freshet.Client(fake.url, timeout=0.5, retries=3, backoff=0.01)
    fake.script = ["hang"]
    started = time.monotonic()
    with pytest.raises(freshet.FreshetError, match=r"no answer .* within 0\.5 s"):
        client.get_online_features(["u1"])
    assert time.monotonic() - started < 2.5
    assert len(_lookups(fake)) == 1


def test_refused_connections_are_retried_until_the_server_is_up() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(freshet.FreshetError, match=r"cannot reach freshet.*after 3 attempts"):
        freshet.Client(f"http://127.0.0.1:{port}", retries=2, backoff=0.01).health()
    servers: List[Fake] = []
    starter = threading.Timer(0.3, lambda: servers.append(Fake(port)))
    starter.start()
    try:
        client = freshet.Client(f"http://127.0.0.1:{port}", retries=8, backoff=0.05, max_backoff=0.5)
        assert client.get_online_features(["u1"]) == {"u1": {"n": 2}}
        client.close()
    finally:
        starter.join()
        for s in servers:
            s.stop()

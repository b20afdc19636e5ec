"""A throwaway redis-server for end-to-end tests, and a minimal Redis client to look inside it.

The server runs as a child process on a free loopback port, without persistence, and dies with the test
process (PR_SET_PDEATHSIG) even if the test crashes; `stop()` kills it at once, like a crash.

    from redis_server import RedisServer

    with RedisServer() as redis:                 # or use the `redis_server` pytest fixture
        subprocess.run([FRESHET_BIN, "run", ..., "--redis-port", str(redis.port)])
        client = redis.client()
        client.command("HGETALL", "freshet:fraud:features:u1")   # -> {"_event_time_ms": "...", ...}
        redis.stop(); redis.start()              # restart on the same port (empty: nothing is persisted)

The client speaks RESP2 with every argument as a length-prefixed bulk string (binary-safe). Replies come
back as: simple strings and bulk strings -> str (bytes with `raw=True`), integers -> int, nil -> None,
arrays -> list, and HGETALL -> dict. An error reply raises RedisError.

Run this file to check that it works: .venv/bin/python tests/redis_server.py
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

from child_server import ChildServer, die_with_parent

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"



class RedisError(Exception):
    """An error reply from Redis (for example WRONGTYPE or NOAUTH)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_die_with_parent = die_with_parent  # Runs in the child before exec.


class RedisClient:
    """A blocking RESP2 client for tests: one connection, one command at a time."""

    def __init__(self, port: int, host: str = "127.0.0.1", password: str | None = None, timeout: float = 5.0):
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._buf = b""
        if password is not None:
            self.command("AUTH", password)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RedisClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def command(self, *args, raw: bool = False):
        """Sends one command (str, bytes or int arguments) and returns its parsed reply."""
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._sock.sendall(b"".join(parts))
        reply = self._read_reply(raw)
        if str(args[0]).upper() == "HGETALL" and isinstance(reply, list):
            return dict(zip(reply[0::2], reply[1::2]))
        return reply

    def _read_line(self) -> bytes:
        while b"\r\n" not in self._buf:
            self._fill()
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _read_exact(self, n: int) -> bytes:
        while len(self._buf) < n + 2:
            self._fill()
        data, self._buf = self._buf[:n], self._buf[n + 2:]
        return data

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self._buf += chunk

    def _read_reply(self, raw: bool):
        line = self._read_line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest if raw else rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self._read_exact(n)
            return data if raw else data.decode(errors="surrogateescape")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read_reply(raw) for _ in range(n)]
        raise RedisError(f"unexpected reply from redis: {line!r}")


class RedisServer(ChildServer):
    """One redis-server child process on 127.0.0.1.

    port: fixed port, or None for a free one (chosen at the first start and kept across restarts).
    password: passed as --requirepass. extra_args: more redis-server options, e.g. ["--maxmemory", "1mb"].
    """

    def __init__(self, port: int | None = None, password: str | None = None, extra_args: list[str] | None = None):
        if not os.path.exists(REDIS_SERVER):
            raise FileNotFoundError(f"{REDIS_SERVER} not found; install it with: apt-get install redis-server")
        self.port = port
        self.password = password
        self.extra_args = list(extra_args or [])
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Starts the server and waits until it answers PING. With no fixed port, a port taken in the
        meantime by someone else is replaced by another free one (up to 5 tries)."""
        fixed = self.port is not None
        for _ in range(1 if fixed else 5):
            if self.port is None:
                self.port = free_port()
            if self._start_once(timeout):
                return self
            if not fixed:
                self.port = None
        raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}")

    def _start_once(self, timeout: float) -> bool:
        self.stop()
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", "/tmp", "--loglevel", "warning"]
        if self.password is not None:
            args += ["--requirepass", self.password]
        args += self.extra_args
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:  # Exited: most likely the port is taken.
                self._proc = None
                return False
            if self._answers_ping():
                return True
            time.sleep(0.02)
        self.stop()
        return False

    def _answers_ping(self) -> bool:
        try:
            with RedisClient(self.port, password=self.password, timeout=0.5) as c:
                return c.command("PING") == "PONG"
        except (OSError, RedisError):
            return False

    def stop(self) -> None:
        """Kills the server at once (SIGKILL, like a crash) and reaps it. Safe to call twice."""
        if self._proc is None:
            return
        try:
            self._proc.send_signal(signal.SIGCONT)  # In case it was paused.
            self._proc.kill()
        except ProcessLookupError:
            pass
        self._proc.wait()
        self._proc = None


    def client(self) -> RedisClient:
        return RedisClient(self.port, password=self.password)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


try:
    import pytest

    @pytest.fixture
    def redis_server():
        """A started RedisServer for one test, killed afterwards (import it into a test module)."""
        if not os.path.exists(REDIS_SERVER):
            pytest.skip(f"{REDIS_SERVER} is not installed")
        server = RedisServer().start()
        try:
            yield server
        finally:
            server.stop()
except ImportError:  # Usable without pytest.
    pass


if __name__ == "__main__":
    with RedisServer() as redis:
        client = redis.client()
        assert client.command("SET", b"k \x00:\xff", b"v\x00") == "OK"
        assert client.command("GET", b"k \x00:\xff", raw=True) == b"v\x00"
        assert client.command("HSET", "h", "a", 1, "b", "x") == 2
        assert client.command("HGETALL", "h") == {"a": "1", "b": "x"}
        assert client.command("GET", "missing") is None
        try:
            client.command("HGETALL", b"k \x00:\xff")
            raise AssertionError("expected WRONGTYPE")
        except RedisError as e:
            assert "WRONGTYPE" in str(e)
        port = redis.port
        redis.stop()
        assert not redis.running
        redis.start()
        assert redis.port == port and redis.client().command("DBSIZE") == 0
    with RedisServer(password="pw") as redis:
        try:
            RedisClient(redis.port).command("PING")
            raise AssertionError("expected NOAUTH")
        except RedisError as e:
            assert "NOAUTH" in str(e)
        assert redis.client().command("PING") == "PONG"
    print("redis_server.py: ok")

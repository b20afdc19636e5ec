"""What the tests' throwaway servers (redis_server.RedisServer, kafka_broker.KafkaBroker) share: a child process
in `self._proc` that can be hung and resumed like a stuck server, and that dies with the test process."""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the test process dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class ChildServer:
    """Mixin for a server run as the child process `self._proc` (None while stopped)."""

    _proc = None

    def pause(self) -> None:
        """SIGSTOP: the server accepts connections but answers nothing (a hung server)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

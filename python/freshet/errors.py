"""The one exception type the SDK raises for failures reported by Freshet itself."""
from __future__ import annotations

from typing import Any, Mapping, Optional


class FreshetError(RuntimeError):
    """Freshet refused a request or a ``freshet`` command failed.

    Raised for an HTTP answer of 4xx/5xx from the serving API (``status`` is the HTTP status and ``message``
    the server's own ``error`` text, which says what to fix), for a server that cannot be reached
    (``status`` is None), and for a ``freshet`` command that exited with an error (``exit_code`` and the
    command's ``stderr``). Mistakes in the arguments given to the SDK itself (a DataFrame without the
    spec's entity column, a timestamp that cannot be read) raise ``ValueError`` instead.

    Example::

        try:
            client.get_online_features(["u1"], features=["no_such_feature"])
        except freshet.FreshetError as e:
            print(e.status, e.message)   # 400 unknown feature 'no_such_feature'; valid features: ...
    """

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        body: Optional[Mapping[str, Any]] = None,
        exit_code: Optional[int] = None,
        stderr: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message: str = message
        #: The HTTP status of the answer, or None when the error did not come from an HTTP answer.
        self.status: Optional[int] = status
        #: The parsed JSON body of the error answer (``{"error": ..., ...}``), when there was one.
        self.body: Optional[Mapping[str, Any]] = body
        #: The exit code of the failed ``freshet`` command, when the error came from one.
        self.exit_code: Optional[int] = exit_code
        #: What the failed ``freshet`` command wrote to stderr.
        self.stderr: Optional[str] = stderr


class CommandNotAvailableError(FreshetError):
    """The ``freshet`` binary in use has no such command or option (it is older than this SDK).

    The message names the binary and what is missing; build a newer ``freshet`` or pass another one with
    ``binary=`` or the ``FRESHET_BIN`` environment variable.
    """

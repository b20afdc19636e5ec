"""A client of the HTTP API of ``freshet run`` / ``freshet serve``: online features, ingest, health, spec."""
from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Iterable, List, Literal, Mapping, Optional, Sequence, Union, overload

import numpy as np
import pandas as pd

from freshet import _convert
from freshet._convert import TimeLike
from freshet.errors import FreshetError

#: An entity id: a non-empty string, or an integer (the same entity as its decimal text).
EntityId = Union[str, int]
#: One event for ingest: a mapping (serialized as JSON), or one JSON text line.
Event = Union[Mapping[str, Any], str, bytes]

#: The serving API answers at most this many entities per request; larger lookups are split.
MAX_ENTITIES_PER_REQUEST = 10_000
# Ingest bodies are cut at about this size (the server refuses bodies over 8 MiB).
_INGEST_BATCH_BYTES = 4 << 20


class Client:
    """A connection to a Freshet serving API (``freshet run`` or ``freshet serve``).

    Args:
        url: The base URL, e.g. ``http://127.0.0.1:8080`` (as ``freshet run`` prints it at start).
        token: The bearer token for ``ingest`` (the server's ``--token-file`` / ``FRESHET_TOKEN``);
            default: the ``FRESHET_TOKEN`` environment variable, if set. Lookups need no token.
        timeout: Seconds to wait for each HTTP answer.

    Thread-safety: a Client holds no connection state; it may be shared between threads.

    Example::

        >>> client = freshet.Client("http://127.0.0.1:8080")                      # doctest: +SKIP
        >>> client.get_online_features(["u1", "u2"], features=["purchase_count_30m"])
        {'u1': {'purchase_count_30m': 2}, 'u2': {'purchase_count_30m': 0}}
        >>> client.get_online_features(["u1", "u2"], as_frame=True)               # doctest: +SKIP
                purchase_count_30m  avg_txn_amount_1h  ...  known
        entity
        u1                       2              31.25  ...   True
        u2                       0                NaN  ...  False
    """

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 5.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, e.g. http://127.0.0.1:8080; got {url!r}")
        self.url = url.rstrip("/")
        self.token = token if token is not None else (os.environ.get("FRESHET_TOKEN") or None)
        self.timeout = timeout
        self._aggregations: Optional[Dict[str, str]] = None

    def __repr__(self) -> str:
        return f"freshet.Client({self.url!r})"

    # ---------------------------------------------------------------------------------------------- lookups

    @overload
    def get_online_features(self, entities: Union[EntityId, Iterable[EntityId]],
                            features: Optional[Sequence[str]] = ..., at: Optional[TimeLike] = ...,
                            as_frame: Literal[False] = ...) -> Dict[EntityId, Dict[str, Any]]: ...

    @overload
    def get_online_features(self, entities: Union[EntityId, Iterable[EntityId]],
                            features: Optional[Sequence[str]] = ..., at: Optional[TimeLike] = ...,
                            *, as_frame: Literal[True]) -> pd.DataFrame: ...

    @overload
    def get_online_features(self, entities: Union[EntityId, Iterable[EntityId]],
                            features: Optional[Sequence[str]], at: Optional[TimeLike],
                            as_frame: Literal[True]) -> pd.DataFrame: ...

    @overload
    def get_online_features(self, entities: Union[EntityId, Iterable[EntityId]],
                            features: Optional[Sequence[str]] = ..., at: Optional[TimeLike] = ...,
                            as_frame: bool = ...) -> Union[Dict[EntityId, Dict[str, Any]], pd.DataFrame]: ...

    def get_online_features(
        self,
        entities: Union[EntityId, Iterable[EntityId]],
        features: Optional[Sequence[str]] = None,
        at: Optional[TimeLike] = None,
        as_frame: bool = False,
    ) -> Union[Dict[EntityId, Dict[str, Any]], pd.DataFrame]:
        """Looks up the current (or ``at``) feature values of entities (``POST /v1/features``).

        Args:
            entities: One entity id or several (strings or integers). Duplicates are asked once.
                More than 10,000 are split into several requests, all answered as of the same time.
            features: Feature names to return (default: all, in spec order). An unknown name is an error.
            at: The time the values are "as of": epoch ms, RFC 3339 text, or a datetime (naive means UTC).
                Default: now. Windows are finalized at that moment (a purchase 40 minutes ago no longer
                counts in a 30-minute window). Exact for any time at or after the entity's newest event.
            as_frame: Return a DataFrame instead of a dict.

        Returns:
            ``{entity: {feature: value}}`` with the server's JSON values (int, float, str, bool or None), keyed
            by the ids as given; or, with ``as_frame``, a DataFrame indexed by entity id (one row per distinct
            entity, in the order given) with one column per feature, typed as ``get_historical_features``
            types them (int64 counts, float64 with NaN for null, str for ``last``), plus a bool column
            ``known`` (False: the server has no events for the entity, and its values are the empty-window
            ones). ``frame.attrs["as_of_ms"]`` holds the time of the answer.

        Raises:
            FreshetError: the server refused the request (e.g. 400 for an unknown feature, with the
                server's message listing the valid names) or could not be reached.
        """
        ids = _distinct_entities(entities)
        names = list(features) if features is not None else None
        at_value = _convert.time_to_request(at)
        results: Dict[str, Any] = {}
        as_of_ms: Optional[int] = None
        for start in range(0, max(len(ids), 1), MAX_ENTITIES_PER_REQUEST):
            chunk = ids[start:start + MAX_ENTITIES_PER_REQUEST]
            body: Dict[str, Any] = {"entities": chunk}
            if names is not None:
                body["features"] = names
            if at_value is not None:
                body["at"] = at_value
            elif as_of_ms is not None:
                body["at"] = as_of_ms  # Every part of a split lookup is answered as of the same moment.
            answer = self._request_json("POST", "/v1/features", json.dumps(body).encode("utf-8"),
                                        "application/json", parse_float=_convert.JsonFloat)
            as_of_ms = int(answer["as_of_ms"])
            for requested, result in zip(chunk, answer["results"]):
                results[_convert.entity_text(requested) or str(requested)] = result
        if not as_frame:
            return {entity: {name: _plain(value) for name, value in results[_key(entity)]["features"].items()}
                    for entity in ids}
        feature_names = names if names is not None else (
            list(results[_key(ids[0])]["features"]) if ids else list(self._feature_aggregations()))
        rows = {entity: results[_key(entity)]["features"] for entity in ids}
        frame = _convert.typed_frame(rows, feature_names, self._feature_aggregations(), index_name="entity")
        frame["known"] = np.array([bool(results[_key(e)]["known"]) for e in ids], dtype=bool)
        frame.attrs["as_of_ms"] = as_of_ms
        return frame

    # ----------------------------------------------------------------------------------------------- ingest

    def ingest(self, events: Iterable[Event]) -> int:
        """Pushes events to a pipeline with an HTTP source (``POST /v1/ingest``, JSON lines).

        Each event is a mapping (sent as JSON) or one JSON text line (sent as it is, so a malformed line
        reaches the server's dead letters like it would from a file). Bodies are cut at about 4 MiB; each is
        acknowledged once durable. Sends the bearer token when the client has one.

        Returns:
            The number of events the server accepted (lines it could not parse are rejected and
            dead-lettered by the server, and not counted).

        Raises:
            FreshetError: e.g. 401 without the right token, 400 when the pipeline reads a file instead
                (the server says so), 413 for a single event over the body limit.

        Example::

            >>> client.ingest([{"user_id": "u1", "ts": 1767225600000, "type": "purchase", "amount": 9.5}])
            1
        """
        accepted = 0
        batch: List[bytes] = []
        size = 0
        for event in events:
            line = _event_line(event)
            if batch and size + len(line) > _INGEST_BATCH_BYTES:
                accepted += self._ingest_body(b"".join(batch))
                batch, size = [], 0
            batch.append(line)
            size += len(line)
        if batch:
            accepted += self._ingest_body(b"".join(batch))
        return accepted

    def _ingest_body(self, body: bytes) -> int:
        answer = self._request_json("POST", "/v1/ingest", body, "application/x-ndjson", auth=True)
        return int(answer["accepted"])

    # ------------------------------------------------------------------------------------- server metadata

    def health(self) -> Dict[str, Any]:
        """The server's health (``GET /health``): ``{"status": "ok"}`` or ``{"status": "degraded",
        "reasons": [...]}``. A degraded server (HTTP 503) is reported, not raised."""
        return self._request_json("GET", "/health", ok_statuses=(200, 503))

    def spec(self) -> Dict[str, Any]:
        """The spec the server runs, as JSON (``GET /v1/spec``): name, entity, timestamp, features, ..."""
        return self._request_json("GET", "/v1/spec")

    def metrics(self) -> Dict[str, float]:
        """The server's Prometheus metrics (``GET /metrics``) as ``{'name{labels}': value}``.

        Example::

            >>> client.metrics()['freshet_events_in_total{source="http"}']   # doctest: +SKIP
            200.0
        """
        text = self._request("GET", "/metrics")[1].decode("utf-8")
        samples: Dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            try:
                samples[name] = float(value)
            except ValueError:
                continue
        return samples

    def _feature_aggregations(self) -> Dict[str, str]:
        if self._aggregations is None:
            spec = self.spec()
            self._aggregations = {f["name"]: f["aggregation"] for f in spec.get("features", [])}
        return self._aggregations

    # -------------------------------------------------------------------------------------------------- HTTP

    def _request(self, method: str, path: str, body: Optional[bytes] = None, content_type: Optional[str] = None,
                 auth: bool = False, ok_statuses: Sequence[int] = (200,)) -> "tuple[int, bytes]":
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            payload = e.read()
            if e.code in ok_statuses:
                return e.code, payload
            raise _http_error(method, path, e.code, payload) from None
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as e:
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            raise FreshetError(f"cannot reach freshet at {self.url} ({method} {path}): {reason}; is `freshet run` "
                               "(or `freshet serve`) running there?") from e

    def _request_json(self, method: str, path: str, body: Optional[bytes] = None,
                      content_type: Optional[str] = None, auth: bool = False,
                      ok_statuses: Sequence[int] = (200,), parse_float: Any = None) -> Dict[str, Any]:
        status, payload = self._request(method, path, body, content_type, auth, ok_statuses)
        try:
            value = json.loads(payload, parse_float=parse_float)
        except ValueError as e:
            raise FreshetError(f"{method} {path} answered {status} with a body that is not JSON: "
                               f"{payload[:200]!r}", status=status) from e
        if not isinstance(value, dict):
            raise FreshetError(f"{method} {path} answered {status} with JSON that is not an object", status=status)
        return value


def _http_error(method: str, path: str, status: int, payload: bytes) -> FreshetError:
    body: Optional[Dict[str, Any]] = None
    try:
        parsed = json.loads(payload)
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    if body is not None and isinstance(body.get("error"), str):
        message = body["error"]
    else:
        message = payload.decode("utf-8", "replace").strip() or f"HTTP {status}"
    return FreshetError(f"{message} (HTTP {status} from {method} {path})", status=status, body=body)


def _distinct_entities(entities: Union[EntityId, Iterable[EntityId]]) -> List[EntityId]:
    items: Iterable[Any] = [entities] if isinstance(entities, (str, int, np.integer)) else entities
    ids: List[EntityId] = []
    seen = set()
    for entity in items:
        text = _convert.entity_text(entity)
        if text is None:
            raise ValueError(f"{entity!r} is not an entity id; ids are non-empty strings or integers")
        if text not in seen:
            seen.add(text)
            ids.append(entity if isinstance(entity, str) else int(text))
    return ids


def _key(entity: EntityId) -> str:
    return entity if isinstance(entity, str) else str(entity)


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, _convert.JsonFloat) else value


def _event_line(event: Event) -> bytes:
    if isinstance(event, bytes):
        return event.rstrip(b"\r\n") + b"\n"
    if isinstance(event, str):
        return event.rstrip("\r\n").encode("utf-8") + b"\n"
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"

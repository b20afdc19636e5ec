"""A client of the HTTP API of ``freshet run`` / ``freshet serve``: online features, ingest, health, spec."""
from __future__ import annotations

import http.client
import json
import os
import random
import select
import socket
import threading
import time
import urllib.parse
import uuid
import weakref
from typing import Any, Dict, Iterable, List, Literal, Mapping, Optional, Sequence, Tuple, Union, overload

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


#: HTTP statuses a request is retried on (with backoff): the server or a proxy in front is busy or restarting.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class Client:
    """A connection to a Freshet serving API (``freshet run`` or ``freshet serve``); Feast's ``FeatureStore``
    for the online side.

    Args:
        url: The base URL, e.g. ``http://127.0.0.1:8080`` (as ``freshet run`` prints it at start).
        token: The bearer token for ``ingest`` (the server's ``--token-file`` / ``FRESHET_TOKEN``);
            default: the ``FRESHET_TOKEN`` environment variable, if set. Lookups need no token.
        timeout: Seconds to wait for each answer once a request is sent (the read timeout). An answer that
            does not come in time raises FreshetError and is not retried.
        connect_timeout: Seconds to wait for a connection to be set up; default: ``timeout``.
        retries: How many times a request is sent again after a connection error (refused, reset, a
            connection timeout) or an answer of 429, 502, 503 or 504, with exponential backoff
            (``backoff`` * 2^n seconds, jittered, at most ``max_backoff``; a ``Retry-After`` is honoured up
            to ``max_backoff``). Lookups, health, spec and metrics are idempotent; every ingest batch carries
            an ``Idempotency-Key`` (the same on each resend), so the server logs a resent batch only once.
            0: never retry. A keep-alive connection the server closed while idle is always replaced at once.
        backoff: The first retry's delay in seconds.
        max_backoff: The longest delay between two attempts, in seconds.
        feature_set: With a server running several feature sets (``freshet run --spec users.yaml --spec
            merchants.yaml``), the set to look up, by its spec's ``name``: lookups send ``"feature_set"`` and
            ``spec()`` is that set's. Default: the server's only set (or, with several, lookups are refused
            with the list of sets).

    Connections: each thread that uses the Client gets one keep-alive HTTP/1.1 connection, reused for its
    requests (no proxy from the environment is used). ``close()`` (or ``with freshet.Client(...) as c:``)
    closes them; a Client may be shared between threads.

    Example::

        >>> client = freshet.Client("http://127.0.0.1:8080")                      # doctest: +SKIP
        >>> client.get_online_features(["u1", "u2"], features=["purchase_count_30m"])
        {'u1': {'purchase_count_30m': 2}, 'u2': {'purchase_count_30m': 0}}
        >>> client.get_online_features(entity_rows=[{"user_id": "u1"}], features=["purchase_count_30m"],
        ...                            as_frame=True)                             # doctest: +SKIP
                 purchase_count_30m
        user_id
        u1                        2
    """

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 5.0, *,
                 connect_timeout: Optional[float] = None, retries: int = 3, backoff: float = 0.1,
                 max_backoff: float = 2.0, feature_set: Optional[str] = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, e.g. http://127.0.0.1:8080; got {url!r}")
        if retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("retries, backoff and max_backoff must not be negative")
        if timeout <= 0 or (connect_timeout is not None and connect_timeout <= 0):
            raise ValueError("timeout and connect_timeout must be positive (seconds)")
        self.url = url.rstrip("/")
        self.token = token if token is not None else (os.environ.get("FRESHET_TOKEN") or None)
        self.timeout = timeout
        self.connect_timeout = connect_timeout if connect_timeout is not None else timeout
        self.retries = int(retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._pool = _ConnectionPool(self.url)
        self._spec_doc: Optional[Dict[str, Any]] = None
        # A server running several feature sets (`freshet run --spec a.yaml --spec b.yaml`): the set this client
        # looks up and whose spec it reads; None: the server's only (or first) set.
        self.feature_set = feature_set

    def __repr__(self) -> str:
        if self.feature_set is not None:
            return f"freshet.Client({self.url!r}, feature_set={self.feature_set!r})"
        return f"freshet.Client({self.url!r})"

    def close(self) -> None:
        """Closes the client's keep-alive connections (a later request opens a new one)."""
        self._pool.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------- lookups

    @overload
    def get_online_features(self, entities: Optional[Union[EntityId, Iterable[EntityId]]] = ...,
                            features: Optional[Sequence[str]] = ..., at: Optional[TimeLike] = ...,
                            as_frame: Literal[False] = ..., *,
                            entity_rows: Optional[Iterable[Mapping[str, Any]]] = ...,
                            params: Optional[Mapping[str, Any]] = ...,
                            ) -> Dict[EntityId, Dict[str, Any]]: ...

    @overload
    def get_online_features(self, entities: Optional[Union[EntityId, Iterable[EntityId]]] = ...,
                            features: Optional[Sequence[str]] = ..., at: Optional[TimeLike] = ...,
                            *, as_frame: Literal[True],
                            entity_rows: Optional[Iterable[Mapping[str, Any]]] = ...,
                            params: Optional[Mapping[str, Any]] = ...) -> pd.DataFrame: ...

    @overload
    def get_online_features(self, entities: Optional[Union[EntityId, Iterable[EntityId]]],
                            features: Optional[Sequence[str]], at: Optional[TimeLike],
                            as_frame: Literal[True], *,
                            entity_rows: Optional[Iterable[Mapping[str, Any]]] = ...,
                            params: Optional[Mapping[str, Any]] = ...) -> pd.DataFrame: ...

    @overload
    def get_online_features(self, entities: Optional[Union[EntityId, Iterable[EntityId]]] = ...,
                            features: Optional[Sequence[str]] = ..., at: Optional[TimeLike] = ...,
                            as_frame: bool = ..., *, entity_rows: Optional[Iterable[Mapping[str, Any]]] = ...,
                            params: Optional[Mapping[str, Any]] = ...,
                            ) -> Union[Dict[EntityId, Dict[str, Any]], pd.DataFrame]: ...

    def get_online_features(
        self,
        entities: Optional[Union[EntityId, Iterable[EntityId]]] = None,
        features: Optional[Sequence[str]] = None,
        at: Optional[TimeLike] = None,
        as_frame: bool = False,
        *,
        entity_rows: Optional[Iterable[Mapping[str, Any]]] = None,
        params: Optional[Mapping[str, Any]] = None,
    ) -> Union[Dict[EntityId, Dict[str, Any]], pd.DataFrame]:
        """Looks up the current (or ``at``) feature values of entities (``POST /v1/features``).

        Feast's ``store.get_online_features(features=[...], entity_rows=[{"user_id": "u1"}]).to_df()``.

        Args:
            entities: One entity id or several (strings or integers), e.g. ``["u1", "u2", "u1"]``.
            features: Feature names to return (default: all, in spec order); Feast-style names prefixed
                with the spec's name (``"fraud:purchase_count_30m"``) are accepted. An unknown name is an
                error (the server's message lists the valid names).
            at: The time the values are "as of": epoch ms, RFC 3339 text, or a datetime (naive means UTC).
                Default: now. Windows are finalized at that moment (a purchase 40 minutes ago no longer
                counts in a 30-minute window). Exact for any time at or after the entity's newest event.
                An integer that looks like epoch seconds warns (TimestampUnitWarning).
            as_frame: Return a DataFrame instead of a dict.
            entity_rows: Instead of ``entities``, Feast style: one mapping per row with the spec's entity
                field as its only key, e.g. ``[{"user_id": "u1"}, {"user_id": "u2"}]``. Another key is
                a ValueError naming the entity field. With a composite key (``entity: [user_id,
                merchant_id]``) each row has every key field, ``[{"user_id": "u1", "merchant_id": "m7"}]``;
                the result is then keyed by ``(user_id, merchant_id)`` tuples (a MultiIndex in a frame).
            params: Request parameters for the spec's ``request_features`` (``param.NAME`` in their
                expressions), e.g. ``{"amount": 12.5}``; the request features are returned with the features.

        Returns:
            Without ``as_frame``: ``{entity: {feature: value}}`` with the server's JSON values (int, float,
            str, bool or None), keyed by the ids as given (first spelling), one key per distinct entity.
            With ``as_frame``: a DataFrame with one row per id given, in the order given, duplicates
            included, indexed by entity id (index name ``entity``, or the spec's entity field for
            ``entity_rows``, so ``frame.reset_index()`` gives Feast's ``to_df()``), one column per feature,
            typed as ``get_historical_features`` types them (int64 counts, float64 with NaN for null, str for
            ``last``), plus a bool column ``known`` (False: the server has no events for the entity, and its
            values are the empty-window ones). ``frame.attrs["as_of_ms"]`` holds the time of the answer.
            Each distinct entity is asked once; more than 10,000 are split into several requests, all
            answered as of the same time.

        Raises:
            ValueError: neither or both of ``entities`` and ``entity_rows``, or an entity row without the
                spec's entity field.
            FreshetError: the server refused the request (e.g. 400 for an unknown feature, with the
                server's message listing the valid names) or could not be reached.
        """
        index_name = "entity"
        if entity_rows is not None:
            if entities is not None:
                raise ValueError("give the entities either as entities= or as entity_rows=, not both")
            entity = self._spec_json().get("entity", "")
            fields = [str(f) for f in entity] if isinstance(entity, list) else [str(entity)]
            requested = _entity_row_ids(entity_rows, fields)
            index_name = fields if len(fields) > 1 else (fields[0] or index_name)
        elif entities is None:
            raise ValueError("give the entities: get_online_features(['u1', 'u2']) or, Feast style, "
                             "get_online_features(features=[...], entity_rows=[{'<entity field>': 'u1'}, ...])")
        else:
            requested = _entity_ids(entities)
        names = self._feature_names(features)
        at_value = _convert.time_to_request(at)
        distinct: Dict[str, EntityId] = {}  # Text -> the first spelling given.
        for entity in requested:
            distinct.setdefault(_key(entity), entity)
        keys = list(distinct)
        results: Dict[str, Any] = {}
        as_of_ms: Optional[int] = None
        for start in range(0, max(len(keys), 1), MAX_ENTITIES_PER_REQUEST):
            chunk = keys[start:start + MAX_ENTITIES_PER_REQUEST]
            body: Dict[str, Any] = {"entities": [_request_entity(distinct[k], index_name) for k in chunk]}
            if self.feature_set is not None:
                body["feature_set"] = self.feature_set
            if names is not None:
                body["features"] = names
            if params:
                body["params"] = dict(params)
            if at_value is not None:
                body["at"] = at_value
            elif as_of_ms is not None:
                body["at"] = as_of_ms  # Every part of a split lookup is answered as of the same moment.
            answer = self._request_json("POST", "/v1/features", json.dumps(body).encode("utf-8"),
                                        "application/json", parse_float=_convert.JsonFloat)
            as_of_ms = int(answer["as_of_ms"])
            for key, result in zip(chunk, answer["results"]):
                results[key] = result
        if not as_frame:
            return {distinct[k]: {name: _plain(value) for name, value in results[k]["features"].items()}
                    for k in keys}
        feature_names = names if names is not None else (
            list(results[keys[0]]["features"]) if keys else list(self._feature_aggregations()))
        rows = [results[_key(entity)]["features"] for entity in requested]
        frame = _convert.typed_frame(list(requested), rows, feature_names, self._feature_aggregations(),
                                     index_name=index_name)
        frame["known"] = np.array([bool(results[_key(e)]["known"]) for e in requested], dtype=bool)
        frame.attrs["as_of_ms"] = as_of_ms
        return frame

    def _feature_names(self, features: Optional[Union[str, Sequence[str]]]) -> Optional[List[str]]:
        if features is None:
            return None
        names = [features] if isinstance(features, str) else list(features)
        if any(isinstance(n, str) and ":" in n for n in names):
            spec_name = self._spec_json().get("name")
            prefix = f"{spec_name}:"
            names = [n[len(prefix):] if isinstance(n, str) and n.startswith(prefix) else n for n in names]
        return names

    # ----------------------------------------------------------------------------------------------- ingest

    def ingest(self, events: Union[pd.DataFrame, Iterable[Event]]) -> int:
        """Pushes events to a pipeline with an HTTP source (``POST /v1/ingest``, JSON lines).

        Feast's ``store.push(push_source_name, df)``; the events then update the online features and the
        offline events table.

        Each event is a mapping (sent as JSON) or one JSON text line (sent as it is, so a malformed line
        reaches the server's dead letters like it would from a file); a DataFrame is one event per row (a
        missing value leaves the field out; datetimes become epoch ms). Bodies are cut at about 4 MiB; each
        is acknowledged once durable, and carries a new ``Idempotency-Key`` that is sent again with any
        retry of it, so a batch whose acknowledgement was lost is logged once. Sends the bearer token when
        the client has one. An event whose timestamp field is an integer that looks like epoch seconds warns
        (TimestampUnitWarning); Freshet reads it as milliseconds.

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
        if isinstance(events, pd.DataFrame):
            from freshet.historical import _frame_events

            events = _frame_events(events)
        ts_field = self._timestamp_field()
        accepted = 0
        batch: List[bytes] = []
        size = 0
        count = suspicious = 0
        example: Any = None
        for event in events:
            count += 1
            if ts_field is not None and isinstance(event, Mapping) and _convert.looks_like_seconds(event.get(ts_field)):
                suspicious += 1
                example = event.get(ts_field) if example is None else example
            line = _event_line(event)
            if batch and size + len(line) > _INGEST_BATCH_BYTES:
                accepted += self._ingest_body(b"".join(batch))
                batch, size = [], 0
            batch.append(line)
            size += len(line)
        if suspicious:
            _convert.warn_seconds(f"ingest: field {ts_field!r}", example, suspicious, count)
        if batch:
            accepted += self._ingest_body(b"".join(batch))
        return accepted

    def _ingest_body(self, body: bytes) -> int:
        answer = self._request_json("POST", "/v1/ingest", body, "application/x-ndjson", auth=True,
                                    headers={"Idempotency-Key": uuid.uuid4().hex})
        return int(answer["accepted"])

    def _timestamp_field(self) -> Optional[str]:
        try:
            field = self._spec_json().get("timestamp")
        except FreshetError:
            return None  # The ingest itself says what is wrong.
        return field if isinstance(field, str) else None

    # ------------------------------------------------------------------------------------- server metadata

    def health(self) -> Dict[str, Any]:
        """The server's health (``GET /health``): ``{"status": "ok"}`` or ``{"status": "degraded",
        "reasons": [...]}``. A degraded server (HTTP 503) is reported, not raised."""
        return self._request_json("GET", "/health", ok_statuses=(200, 503))

    def spec(self) -> Dict[str, Any]:
        """The spec the server runs, as JSON (``GET /v1/spec``): name, entity, timestamp, features, ...

        Feast's ``store.list_feature_views()``. With ``feature_set``, that set's spec."""
        if self.feature_set is not None:
            return self._request_json("GET", "/v1/spec?feature_set=" + urllib.parse.quote(self.feature_set))
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

    def _spec_json(self) -> Dict[str, Any]:
        if self._spec_doc is None:
            self._spec_doc = self.spec()
        return self._spec_doc

    def _feature_aggregations(self) -> Dict[str, str]:
        return {f["name"]: f["aggregation"] for f in self._spec_json().get("features", [])}

    # -------------------------------------------------------------------------------------------------- HTTP

    def _delay(self, attempt: int, retry_after: Optional[str] = None) -> float:
        delay = min(self.max_backoff, self.backoff * (2 ** attempt)) * random.uniform(0.5, 1.0)
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), self.max_backoff))
            except ValueError:
                pass  # An HTTP date: the backoff alone.
        return delay

    def _request(self, method: str, path: str, body: Optional[bytes] = None, content_type: Optional[str] = None,
                 auth: bool = False, ok_statuses: Sequence[int] = (200,),
                 headers: Optional[Mapping[str, str]] = None) -> "tuple[int, bytes]":
        sent = {"Accept": "application/json"}
        if content_type:
            sent["Content-Type"] = content_type
        if auth and self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        if headers:
            sent.update(headers)
        attempt = 0
        replaced_stale = False
        while True:
            error: BaseException
            try:
                conn, reused = self._pool.get(self.connect_timeout, self.timeout)
            except (OSError, http.client.HTTPException) as e:  # Refused, unreachable, a connect timeout.
                error = e
            else:
                try:
                    conn.request(method, self._pool.prefix + path, body=body, headers=sent)
                    response = conn.getresponse()
                    payload = response.read()
                except socket.timeout as e:
                    self._pool.discard(conn)
                    raise FreshetError(f"freshet at {self.url} sent no answer to {method} {path} within "
                                       f"{self.timeout:g} s (Client(timeout=...)); the server may be overloaded "
                                       "or stuck") from e
                except (OSError, http.client.HTTPException) as e:
                    self._pool.discard(conn)
                    if reused and not replaced_stale:
                        replaced_stale = True  # The server closed the idle connection: a new one, at once.
                        continue
                    error = e
                else:
                    if response.will_close:
                        self._pool.discard(conn)
                    status = response.status
                    if status in ok_statuses:
                        return status, payload
                    if status in RETRY_STATUSES and attempt < self.retries:
                        time.sleep(self._delay(attempt, response.getheader("Retry-After")))
                        attempt += 1
                        continue
                    raise _http_error(method, path, status, payload)
            if attempt < self.retries:
                time.sleep(self._delay(attempt))
                attempt += 1
                continue
            tries = f" (after {attempt + 1} attempts)" if attempt else ""
            raise FreshetError(f"cannot reach freshet at {self.url} ({method} {path}): {str(error) or type(error).__name__}"
                               f"{tries}; is `freshet run` (or `freshet serve`) running there?") from error

    def _request_json(self, method: str, path: str, body: Optional[bytes] = None,
                      content_type: Optional[str] = None, auth: bool = False,
                      ok_statuses: Sequence[int] = (200,), parse_float: Any = None,
                      headers: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
        status, payload = self._request(method, path, body, content_type, auth, ok_statuses, headers)
        try:
            value = json.loads(payload, parse_float=parse_float)
        except ValueError as e:
            raise FreshetError(f"{method} {path} answered {status} with a body that is not JSON: "
                               f"{payload[:200]!r}", status=status) from e
        if not isinstance(value, dict):
            raise FreshetError(f"{method} {path} answered {status} with JSON that is not an object", status=status)
        return value


class _ConnectionPool:
    """One keep-alive HTTP/1.1 connection per thread (and process), to the host of one base URL."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self._local = threading.local()
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._all: "weakref.WeakSet[http.client.HTTPConnection]" = weakref.WeakSet()

    def get(self, connect_timeout: float, read_timeout: float) -> "tuple[http.client.HTTPConnection, bool]":
        """This thread's connection (reused: True) or a new one, connected."""
        if self._pid != os.getpid():  # A forked child must not share its parent's sockets.
            self._local = threading.local()
            self._all = weakref.WeakSet()
            self._pid = os.getpid()
        slot = getattr(self._local, "slot", None)
        if slot is None:
            slot = self._local.slot = _Slot()
        conn = slot.conn
        if conn is not None:
            if conn.sock is not None and not _closed_by_peer(conn.sock):
                conn.sock.settimeout(read_timeout)
                return conn, True
            self.discard(conn)
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=connect_timeout)
        try:
            conn.connect()
        except BaseException:
            conn.close()
            raise
        assert conn.sock is not None
        conn.sock.settimeout(read_timeout)
        slot.conn = conn
        with self._lock:
            self._all.add(conn)
        return conn, False

    def discard(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        slot = getattr(self._local, "slot", None)
        if slot is not None and slot.conn is conn:
            slot.conn = None
        with self._lock:
            self._all.discard(conn)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit, modules may be gone.
            pass

    def close(self) -> None:
        with self._lock:
            conns = list(self._all)
            self._all = weakref.WeakSet()
        for conn in conns:
            conn.close()
        self._local = threading.local()


class _Slot:
    """A thread's connection; closed when the thread ends (its thread-local data is dropped)."""

    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn: Optional[http.client.HTTPConnection] = None

    def __del__(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether an idle keep-alive socket is readable: the server closed it (or sent what nobody asked for)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


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


def _entity_ids(entities: Union[EntityId, Iterable[EntityId]]) -> List[EntityId]:
    """The ids as given, in order, duplicates kept; integers (and whole floats) as int."""
    items: Iterable[Any] = [entities] if isinstance(entities, (str, int, np.integer)) else entities
    ids: List[EntityId] = []
    for entity in items:
        text = _convert.entity_text(entity)
        if text is None:
            raise ValueError(f"{entity!r} is not an entity id; ids are non-empty strings or integers")
        ids.append(entity if isinstance(entity, str) else int(text))
    return ids


def _entity_row_ids(entity_rows: Iterable[Mapping[str, Any]], fields: List[str]) -> List[Any]:
    """The ids of Feast-style entity rows ``[{field: id}, ...]``, in order, duplicates kept; with a composite key
    (several fields) each id is the tuple of the row's key values, in key order."""
    if len(fields) > 1:
        return [_composite_row_id(position, row, fields) for position, row in enumerate(_rows(entity_rows, fields))]
    field = fields[0]
    if isinstance(entity_rows, Mapping):
        raise ValueError(f"entity_rows is a list of mappings, e.g. [{{{field!r}: 'u1'}}], not one mapping")
    ids: List[EntityId] = []
    for position, row in enumerate(entity_rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"entity_rows[{position}] is {row!r}; each row is a mapping like {{{field!r}: 'u1'}}")
        other = [k for k in row if k != field]
        if field not in row or other:
            raise ValueError(
                f"entity_rows[{position}] has the keys {list(row)}, but the entity field of the served spec is "
                f"{field!r}: each row must be {{{field!r}: <id>}} (e.g. {{{field!r}: 'u1'}})")
        value = row[field]
        text = _convert.entity_text(value)
        if text is None:
            raise ValueError(f"entity_rows[{position}][{field!r}] is {value!r}; ids are non-empty strings or integers")
        ids.append(value if isinstance(value, str) else int(text))
    return ids


def _rows(entity_rows: Iterable[Mapping[str, Any]], fields: List[str]) -> Iterable[Mapping[str, Any]]:
    if isinstance(entity_rows, Mapping):
        raise ValueError(f"entity_rows is a list of mappings, e.g. [{_row_example(fields)}], not one mapping")
    return entity_rows


def _row_example(fields: List[str]) -> str:
    return "{" + ", ".join(f"{f!r}: '{chr(ord('a') + k)}1'" for k, f in enumerate(fields)) + "}"


def _composite_row_id(position: int, row: Mapping[str, Any], fields: List[str]) -> Tuple[EntityId, ...]:
    """A composite key's row as the tuple of its key values."""
    if not isinstance(row, Mapping) or set(row) != set(fields):
        keys = list(row) if isinstance(row, Mapping) else row
        raise ValueError(f"entity_rows[{position}] is {keys!r}, but the served spec's entity key is {fields}: each row "
                         f"must have exactly these keys, e.g. {_row_example(fields)}")
    parts: List[EntityId] = []
    for field in fields:
        value = row[field]
        text = _convert.entity_text(value)
        if text is None:
            raise ValueError(f"entity_rows[{position}][{field!r}] is {value!r}; key values are non-empty strings or "
                             "integers")
        parts.append(value if isinstance(value, str) else int(text))
    return tuple(parts)


def _request_entity(entity: Any, index_name: Union[str, List[str]]) -> Any:
    """An entity as POST /v1/features takes it: the id, or for a composite key an object of its fields."""
    return dict(zip(index_name, entity)) if isinstance(entity, tuple) else entity


def _key(entity: Any) -> str:
    if isinstance(entity, tuple):  # A composite key: unambiguous text of its parts.
        return json.dumps([_key(part) for part in entity])
    return entity if isinstance(entity, str) else str(entity)


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, _convert.JsonFloat) else value


def _event_line(event: Event) -> bytes:
    if isinstance(event, bytes):
        return event.rstrip(b"\r\n") + b"\n"
    if isinstance(event, str):
        return event.rstrip("\r\n").encode("utf-8") + b"\n"
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"

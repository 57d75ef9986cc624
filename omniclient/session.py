"""The connection under ``OmniClient``: one ``httpx.Client``, each call with the retries that
omniclient/client.py's docstring lists, and event streams that reconnect.

``ApiSession._send`` is the one place httpx's transport errors become omniclient's own
(omniclient/errors.py), with ``raise ... from``.
"""

from __future__ import annotations

import email.utils
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Self
from urllib.parse import quote

import httpx
from httpx_sse import EventSource, ServerSentEvent

from omniclient.errors import MissingApiKey, OmniClientError, OmniConnectionError, OmniError
from omniclient.events import Json

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 30.0
"""Default limit on connecting and on each read or write, seconds."""
MAX_TRIES = 5
"""Tries of one request answered 429 or 503 (or broken in flight, where replay is safe)."""
MAX_RETRY_WAIT_S = 60.0
"""The most one call sleeps between its tries, in all, seconds."""
BACKOFF_S = 0.5
"""First wait when the server names none (no ``Retry-After``); doubles each try, seconds."""
MAX_WAIT_S = 60
"""The longest ``Prefer: wait`` / ``?wait=`` the contract allows, seconds."""
STREAM_READ_TIMEOUT_S = 45.0
"""Silence after which an event stream counts as dropped: three of the server's 15 s pings."""
STREAM_RECONNECTS = 5
"""Reconnects of an event stream in a row without an event in between, before giving up (a stream
the server ended cleanly after sending something does not count)."""
RETRY_STATUSES = frozenset({429, 503})
IDEMPOTENCY_HEADER = "Idempotency-Key"
USER_AGENT = "omniclient/0.1.0"

DROPPED = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.TimeoutException)
"""A request that went out and got no (whole) answer; ConnectError and SSEError are not here."""


class ApiSession:
    """One ``httpx.Client`` to Omni's API and the plumbing every call goes through; use as a
    context manager, or call ``close()``."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = (url or os.environ.get("OMNI_URL") or DEFAULT_URL).rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise OmniClientError(f"the API URL must start with http:// or https://: {self.url!r}")
        key = api_key if api_key is not None else os.environ.get("OMNI_API_KEY", "")
        if not key:
            raise MissingApiKey("no API key: pass api_key or set OMNI_API_KEY")
        self.timeout = timeout
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.url,
            headers={"X-API-Key": key, "User-Agent": USER_AGENT, "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _waiting(self, wait: float | None) -> httpx.Timeout | None:
        return None if wait is None else self._slow_answer(self.timeout + wait_s(wait))

    def _slow_answer(self, read_s: float) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=max(self.timeout, read_s))

    def _pages(self, kind: str, page_size: int, **filters: str | None) -> Iterator[Json]:
        """``GET /v1/<kind>`` with ``filters`` (``status``, ``task``, ``created_after``,
        ``created_before``), page after page: every item, in order."""
        params: dict[str, Any] = {k: v for k, v in filters.items() if v is not None}
        params["limit"] = page_size
        while True:
            page = self._json("GET", f"/v1/{kind}", params=params)
            yield from page[kind]
            if page.get("next_page_token") is None:
                return
            params["page_token"] = page["next_page_token"]

    def _json(self, method: str, path: str, **kwargs: Any) -> Json:
        response = self._send(method, path, **kwargs)
        try:
            data = response.json()
        except ValueError as exc:
            raise OmniClientError(
                f"{method} {path} answered {response.status_code} without JSON"
            ) from exc
        if not isinstance(data, dict):
            raise OmniClientError(f"{method} {path} answered {type(data).__name__}, not an object")
        return data

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Json | None = None,
        content: Callable[[], Iterator[bytes]] | None = None,
        headers: dict[str, str] | None = None,
        create: bool = False,
        idempotency_key: str | None = None,
        replay_safe: bool | None = None,
        tries: int = MAX_TRIES,
        stream: bool = False,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """One call, with the retries listed in omniclient/client.py; a 2xx response or a raise.

        ``create``: send an ``Idempotency-Key`` (``idempotency_key``, else a new UUID), the same
        on every try. ``replay_safe``: retry a connection that broke in flight (default: GETs
        only). ``stream``: the caller reads and closes the response.
        """
        headers = dict(headers or {})
        if idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = idempotency_key
        elif create:
            headers[IDEMPOTENCY_HEADER] = str(uuid.uuid4())
        if replay_safe is None:
            replay_safe = method == "GET"
        waited = 0.0
        for attempt in range(1, tries + 1):
            request = self._http.build_request(
                method,
                path,
                params=params,
                json=json,
                content=content() if content is not None else None,
                headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
            delay = BACKOFF_S * 2 ** (attempt - 1)
            try:
                response = self._http.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol) as exc:
                message = f"cannot reach the Omni API at {self.url}: {exc}"
                raise OmniConnectionError(message) from exc
            except DROPPED as exc:
                if not replay_safe or attempt == tries or waited + delay > MAX_RETRY_WAIT_S:
                    raise OmniConnectionError(
                        f"{method} {path} to {self.url} got no answer: {describe(exc)}"
                    ) from exc
            else:
                if response.is_success:
                    return response
                if stream:
                    response.read()
                    response.close()
                if response.status_code not in RETRY_STATUSES or attempt == tries:
                    raise OmniError.from_response(response)
                delay = _retry_after(response.headers.get("Retry-After"), delay)
                if waited + delay > MAX_RETRY_WAIT_S:
                    raise OmniError.from_response(response)
            self._sleep(delay)
            waited += delay
        raise AssertionError("unreachable: the last try returns or raises")

    def _follow(
        self, path: str, *, last: Callable[[ServerSentEvent], bool], resume: bool
    ) -> Iterator[ServerSentEvent]:
        """An event stream's events up to and including ``last``, reconnecting when it drops.

        ``resume``: reconnect with ``Last-Event-ID`` (the job stream replays what came after it).
        Only the first connection fails fast; once connected, a refused reconnect is one more try.
        A stream the server closed cleanly after sending anything (an event or a ping) ended on
        purpose, at an event boundary (its lifetime, a shutdown): it is no failure, so a job
        outlives any number of such streams.
        """
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        timeout = httpx.Timeout(self.timeout, read=max(self.timeout, STREAM_READ_TIMEOUT_S))
        last_id = ""
        failures = 0
        connected = False
        while True:
            if resume and last_id:
                headers["Last-Event-ID"] = last_id
            try:
                response = self._send("GET", path, headers=headers, stream=True, timeout=timeout)
            except OmniConnectionError as exc:
                if not connected:
                    raise
                reason = str(exc)
            else:
                connected = True
                try:
                    if response.status_code == 204:  # the server: you already have the end
                        return
                    for sse in EventSource(response).iter_sse():
                        last_id = sse.id or last_id
                        # httpx-sse 0.4.3 turns a comment (ping) after an id into an empty event.
                        if not sse.data:
                            continue
                        failures = 0
                        yield sse
                        if last(sse):
                            return
                    reason = "the stream ended before its last event"
                    if response.num_bytes_downloaded:
                        failures = 0  # ended on purpose, not broken: the next one starts afresh
                except DROPPED as exc:
                    reason = describe(exc)
                finally:
                    response.close()
            failures += 1
            self._reconnect(
                failures,
                f"the event stream {path} from {self.url} broke {failures} times: {reason}",
            )

    def _reconnect(self, failures: int, message: str) -> None:
        """A stream broke ``failures`` times in a row: past ``STREAM_RECONNECTS`` raise
        ``message``, else wait the backoff before the next try."""
        if failures > STREAM_RECONNECTS:
            raise OmniConnectionError(message)
        self._sleep(min(BACKOFF_S * 2 ** (failures - 1), MAX_RETRY_WAIT_S))


def describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__  # httpx's timeouts often carry no message


def resource_path(collection: str, resource_id: str, *rest: str) -> str:
    # An id is one path segment, whatever it holds ("../x" must not walk elsewhere).
    return "/".join(["/v1", collection, quote(resource_id, safe=""), *rest])


def wait_s(wait: float | None) -> int:
    if wait is None or not 0 < wait <= MAX_WAIT_S:
        raise ValueError(f"wait must be more than 0 and at most {MAX_WAIT_S} seconds: {wait!r}")
    return math.ceil(wait)


def _retry_after(value: str | None, default: float) -> float:
    """``Retry-After`` in seconds (a number or an HTTP date); ``default`` when absent or bad."""
    if not value:
        return default
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())

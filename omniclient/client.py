"""A synchronous client for Omni's public HTTP API (docs/cli.md; the contract is CONTRACT.md).

``OmniClient`` and the events it yields. What it raises is drawn in omniclient/errors.py;
transport errors from httpx are translated into those at one place, ``OmniClient._send``, with
``raise ... from``. Retries, in order of how safe they are:

* 429 and 503 mean the request was not taken: every call retries them, honouring ``Retry-After``,
  at most ``MAX_TRIES`` tries and ``MAX_RETRY_WAIT_S`` of waiting in all. A POST that creates
  something sends one ``Idempotency-Key`` and reuses it on each try, so no retry makes a duplicate.
* A connection that broke after the request went out (read error, read timeout) is retried only
  where a replay cannot create a second resource: GETs, and ``POST /v1/jobs``, whose
  ``Idempotency-Key`` the contract honours.
* A refused connection is never retried: a server that is not listening is reported at once.
* Event streams reconnect on their own (``STREAM_RECONNECTS``), resuming from ``Last-Event-ID``.
  A stream the server ended cleanly after sending something (its maximum lifetime, a restart) is
  resumed after the first backoff and is not counted as a failure: a job outlives many streams.
"""

from __future__ import annotations

import email.utils
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import IO, Any, NamedTuple
from urllib.parse import quote

import httpx
from httpx_sse import EventSource, ServerSentEvent

from omniclient.errors import MissingApiKey, OmniClientError, OmniConnectionError, OmniError
from omniclient.upload import upload_source

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
UPLOAD_TIMEOUT_S = 300.0
"""How long a batch upload may wait for its answer (the server validates every line), seconds."""
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
"""Job and batch statuses that never change again."""
RETRY_STATUSES = frozenset({429, 503})
IDEMPOTENCY_HEADER = "Idempotency-Key"
USER_AGENT = "omniclient/0.1.0"

_DROPPED = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.TimeoutException)
"""A request that went out and got no (whole) answer; ConnectError and SSEError are not here."""

Json = dict[str, Any]


class JobEvent(NamedTuple):
    """One event of ``GET /v1/jobs/ID/events``: the status as name, its id, the job."""

    name: str
    id: str
    data: Json


class BatchEvent(NamedTuple):
    """One event of ``GET /v1/batches/ID/events``: progress, item or done, with its data."""

    name: str
    data: Json


class OmniClient:
    """Omni's API over one ``httpx.Client``; use as a context manager, or call ``close()``."""

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

    def __enter__(self) -> OmniClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Jobs

    def submit(
        self,
        task: str,
        input: Json,
        metadata: dict[str, str] | None = None,
        wait: float | None = None,
        webhook: str | None = None,
    ) -> Json:
        """``POST /v1/jobs``: the job, queued; with ``wait``, finished if it finished in time."""
        body: Json = {"task": task, "input": input}
        if metadata:
            body["metadata"] = metadata
        if webhook:
            body["webhook"] = webhook
        headers = {"Prefer": f"wait={_wait_s(wait)}"} if wait is not None else {}
        return self._json(
            "POST",
            "/v1/jobs",
            json=body,
            headers=headers,
            create=True,
            replay_safe=True,
            timeout=self._waiting(wait),
        )

    def get_job(self, job_id: str, wait: float | None = None) -> Json:
        """``GET /v1/jobs/ID``; with ``wait``, answers once the job is terminal or time is up."""
        params = {"wait": _wait_s(wait)} if wait is not None else None
        return self._json("GET", _path("jobs", job_id), params=params, timeout=self._waiting(wait))

    def cancel_job(self, job_id: str) -> Json:
        """``POST /v1/jobs/ID/cancel``; an already terminal job raises ``OmniError`` 409."""
        return self._json("POST", _path("jobs", job_id, "cancel"))

    def job_events(self, job_id: str) -> Iterator[JobEvent]:
        """The job's current state, then each change, ending with its terminal status."""
        path = _path("jobs", job_id, "events")
        for sse in self._follow(path, last=lambda sse: sse.event in TERMINAL, resume=True):
            yield JobEvent(sse.event, sse.id, sse.json())

    # Batches

    def submit_batch(
        self,
        task: str,
        items: Iterable[Json] | str | os.PathLike[str] | IO[bytes] | IO[str],
        metadata: dict[str, str] | None = None,
    ) -> Json:
        """``POST /v1/batches``: a list of inputs as JSON, or an NDJSON file streamed from disk.

        ``items`` is a path or an open file of NDJSON (one input per line; ``?task=`` names the
        task), or an iterable of input dicts. A file is read in pieces, never whole; a retry reads
        it again from the start, so a file that cannot seek is tried once.
        """
        if isinstance(items, str | os.PathLike) or hasattr(items, "read"):
            if metadata:
                raise ValueError("metadata needs a JSON batch (a list of items), not NDJSON")
            upload = upload_source(items)  # type: ignore[arg-type]
            headers = {"Content-Type": "application/x-ndjson"}
            if upload.size is not None:
                headers["Content-Length"] = str(upload.size)
            return self._json(
                "POST",
                "/v1/batches",
                params={"task": task},
                content=upload.chunks,
                headers=headers,
                create=True,
                tries=MAX_TRIES if upload.replayable else 1,
                timeout=self._slow_answer(UPLOAD_TIMEOUT_S),
            )
        body: Json = {"task": task, "items": list(items)}
        if metadata:
            body["metadata"] = metadata
        return self._json(
            "POST",
            "/v1/batches",
            json=body,
            create=True,
            timeout=self._slow_answer(UPLOAD_TIMEOUT_S),
        )

    def get_batch(self, batch_id: str) -> Json:
        return self._json("GET", _path("batches", batch_id))

    def cancel_batch(self, batch_id: str) -> Json:
        """``POST /v1/batches/ID/cancel``: items not yet started end cancelled."""
        return self._json("POST", _path("batches", batch_id, "cancel"))

    def retry_batch(self, batch_id: str) -> Json:
        """``POST /v1/batches/ID/retry``: each failed item gets a new job."""
        return self._json("POST", _path("batches", batch_id, "retry"), create=True)

    def batch_results(self, batch_id: str, status: str | None = None) -> Iterator[str]:
        """Each line of the NDJSON results, in input order, as the server sent it (no newline)."""
        params = {"status": status} if status else None
        response = self._send(
            "GET", _path("batches", batch_id, "results"), params=params, stream=True
        )
        count = 0
        try:
            for line in response.iter_lines():
                if line:
                    count += 1
                    yield line
        except _DROPPED as exc:
            raise OmniConnectionError(
                f"the results stream from {self.url} broke after {count} lines: {exc}"
            ) from exc
        finally:
            response.close()

    def batch_events(self, batch_id: str) -> Iterator[BatchEvent]:
        """``progress`` (the batch), ``item`` (one item finished) ..., ending with ``done``.

        After a reconnect the server starts again with a progress event.
        """
        path = _path("batches", batch_id, "events")
        for sse in self._follow(path, last=lambda sse: sse.event == "done", resume=False):
            yield BatchEvent(sse.event, sse.json())

    # Plumbing

    def _waiting(self, wait: float | None) -> httpx.Timeout | None:
        return None if wait is None else self._slow_answer(self.timeout + _wait_s(wait))

    def _slow_answer(self, read_s: float) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=max(self.timeout, read_s))

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
        replay_safe: bool | None = None,
        tries: int = MAX_TRIES,
        stream: bool = False,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """One call, with the retries the module docstring lists; a 2xx response or a raise.

        ``create``: send an ``Idempotency-Key``, the same on every try. ``replay_safe``: retry a
        connection that broke in flight (default: GETs only). ``stream``: the caller reads and
        closes the response.
        """
        headers = dict(headers or {})
        if create:
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
            except _DROPPED as exc:
                if not replay_safe or attempt == tries or waited + delay > MAX_RETRY_WAIT_S:
                    raise OmniConnectionError(
                        f"{method} {path} to {self.url} got no answer: {_describe(exc)}"
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
                except _DROPPED as exc:
                    reason = _describe(exc)
                finally:
                    response.close()
            failures += 1
            if failures > STREAM_RECONNECTS:
                raise OmniConnectionError(
                    f"the event stream {path} from {self.url} broke {failures} times: {reason}"
                )
            self._sleep(min(BACKOFF_S * 2 ** (failures - 1), MAX_RETRY_WAIT_S))


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__  # httpx's timeouts often carry no message


def _path(collection: str, resource_id: str, *rest: str) -> str:
    # An id is one path segment, whatever it holds ("../x" must not walk elsewhere).
    return "/".join(["/v1", collection, quote(resource_id, safe=""), *rest])


def _wait_s(wait: float | None) -> int:
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

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
* A batch part (``POST /v1/batches/ID/items``) carries a key derived from the batch, the part's
  number and its bytes, so a replay, or the same file sent again to resume an upload, appends
  nothing twice.
* Event streams reconnect on their own (``STREAM_RECONNECTS``), resuming from ``Last-Event-ID``.
  A stream the server ended cleanly after sending something (its maximum lifetime, a restart) is
  resumed after the first backoff and is not counted as a failure: a job outlives many streams.
* A batch results download that breaks resumes with ``?after=`` the last index it yielded.
"""

from __future__ import annotations

import email.utils
import hashlib
import json as jsonlib
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import IO, Any, NamedTuple
from urllib.parse import quote

import httpx
from httpx_sse import EventSource, ServerSentEvent

from omniclient.errors import MissingApiKey, OmniClientError, OmniConnectionError, OmniError
from omniclient.upload import (
    PART_MAX_BYTES,
    PART_MAX_ITEMS,
    Part,
    part_upload,
    plan_parts,
    splittable,
    upload_source,
)

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
BUSY_WAIT_S = 8.0
"""Longest wait between two tries of a part or a close refused while a part is being appended."""
RETRY_STATUSES = frozenset({429, 503})
IDEMPOTENCY_HEADER = "Idempotency-Key"
NDJSON = "application/x-ndjson"
USER_AGENT = "omniclient/0.1.0"

_BUSY = ("is being appended", "still being accepted")
"""What the ingress's 409 says when a part is being appended: ask again once it is answered."""
_DROPPED = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.TimeoutException)
"""A request that went out and got no (whole) answer; ConnectError and SSEError are not here."""

Json = dict[str, Any]


class JobEvent(NamedTuple):
    """One event of ``GET /v1/jobs/ID/events``: the status as name, its id, the job."""

    name: str
    id: str
    data: Json


class BatchEvent(NamedTuple):
    """One event of ``GET /v1/batches/ID/events``: progress, item or done, with its data and id
    (a cursor over completions: the stream resumes after it)."""

    name: str
    data: Json
    id: str = ""


class UploadProgress(NamedTuple):
    """Where a batch upload stands, told to ``submit_batch``'s ``on_upload`` as it goes."""

    batch_id: str | None
    """None until the batch exists (a single request's batch is made by its answer)."""
    sent_bytes: int
    total_bytes: int | None
    parts_done: int
    parts: int
    items_accepted: int
    items: int | None
    """The file's items (non-blank lines), when it was planned; else None."""


OnUpload = Callable[[UploadProgress], None]


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
        *,
        part_bytes: int = PART_MAX_BYTES,
        part_items: int = PART_MAX_ITEMS,
        batch_id: str | None = None,
        on_upload: OnUpload | None = None,
    ) -> Json:
        """``POST /v1/batches``: a list of inputs as JSON, or an NDJSON file streamed from disk.

        ``items`` is a path or an open file of NDJSON (one input per line; ``?task=`` names the
        task), or an iterable of input dicts. A file is read in pieces, never whole; a retry reads
        it again from the start, so a file that cannot seek is tried once.

        A file over one request's limits (``part_bytes``, ``part_items``) is sent in parts: an
        open batch, each part (``add_batch_items``), then ``close_batch``; the answer is the
        closed batch. With ``batch_id`` the file's parts go to that open batch instead: sent
        again after an interrupted upload, the parts it already has append nothing.
        ``on_upload`` is told the progress of the upload as each piece goes out and as each part
        is accepted.
        """
        if isinstance(items, str | os.PathLike) or hasattr(items, "read"):
            if metadata:
                raise ValueError("metadata needs a JSON batch (a list of items), not NDJSON")
            source: str | os.PathLike[str] | IO[bytes] | IO[str] = items  # type: ignore[assignment]
            if splittable(source):
                parts = plan_parts(source, part_bytes, part_items)
                if len(parts) > 1 or batch_id is not None:
                    return self._submit_parts(task, source, parts, batch_id, on_upload)
                return self._submit_file(task, source, parts[0], on_upload)
            if batch_id is not None:
                raise ValueError("batch_id needs a path or a seekable binary file")
            return self._submit_file(task, source, None, on_upload)
        if batch_id is not None:
            raise ValueError("batch_id needs an NDJSON file, not a list of items")
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

    def open_batch(self, task: str) -> Json:
        """``POST /v1/batches?task=T&open=1``: an empty batch that takes parts until closed."""
        return self._json(
            "POST",
            "/v1/batches",
            params={"task": task, "open": "1"},
            content=lambda: iter(()),
            headers={"Content-Type": NDJSON, "Content-Length": "0"},
            create=True,
        )

    def add_batch_items(
        self,
        batch_id: str,
        items: str | os.PathLike[str] | IO[bytes],
        key: str | None = None,
        *,
        part: Part | None = None,
        on_sent: Callable[[int], None] | None = None,
    ) -> Json:
        """``POST /v1/batches/ID/items``: one NDJSON part (a whole file, or ``part`` of it),
        indexed after the parts before it; the batch. The ``Idempotency-Key`` is ``key``, else
        one derived from the batch, the part's number and its bytes, so sending the same part
        again appends nothing."""
        upload = part_upload(items, part, on_sent) if part else upload_source(items, on_sent)
        if key is None and part is not None:
            key = f"part-{batch_id}-{part.number}-{part.digest[:32]}"
        elif key is None:
            # A file that cannot be read twice gets a key of its own: still one per try.
            digest = _file_digest(items) if upload.replayable else uuid.uuid4().hex
            key = f"part-{batch_id}-1-{digest[:32]}"
        headers = {"Content-Type": NDJSON}
        if upload.size is not None:
            headers["Content-Length"] = str(upload.size)
        return self._while_busy(
            lambda: self._json(
                "POST",
                _path("batches", batch_id, "items"),
                content=upload.chunks,
                headers=headers,
                idempotency_key=key,
                replay_safe=upload.replayable,
                tries=MAX_TRIES if upload.replayable else 1,
                timeout=self._slow_answer(UPLOAD_TIMEOUT_S),
            )
        )

    def close_batch(self, batch_id: str) -> Json:
        """``POST /v1/batches/ID/close``: no more parts; the batch runs to its end."""
        return self._while_busy(lambda: self._json("POST", _path("batches", batch_id, "close")))

    def _while_busy(self, call: Callable[[], Json]) -> Json:
        """``call``, again while the batch answers 409 because a part is being appended (this
        very part, when a replay after a dropped answer overtook its first try): it will be
        answered shortly. ``MAX_RETRY_WAIT_S`` of waiting at most."""
        waited = 0.0
        delay = BACKOFF_S
        while True:
            try:
                return call()
            except OmniError as exc:
                busy = exc.status == 409 and any(m in str(exc.detail) for m in _BUSY)
                if not busy or waited + delay > MAX_RETRY_WAIT_S:
                    raise
            self._sleep(delay)
            waited += delay
            delay = min(delay * 2, BUSY_WAIT_S)

    def get_batch(self, batch_id: str) -> Json:
        return self._json("GET", _path("batches", batch_id))

    def get_batch_item(self, batch_id: str, index: int) -> Json:
        """``GET /v1/batches/ID/items/INDEX``: one item's results line."""
        return self._json("GET", _path("batches", batch_id, "items", str(int(index))))

    def cancel_batch(self, batch_id: str) -> Json:
        """``POST /v1/batches/ID/cancel``: items not yet started end cancelled."""
        return self._json("POST", _path("batches", batch_id, "cancel"))

    def retry_batch(self, batch_id: str) -> Json:
        """``POST /v1/batches/ID/retry``: exactly the failed items run again."""
        return self._json("POST", _path("batches", batch_id, "retry"), create=True)

    def batch_results(
        self, batch_id: str, status: str | None = None, after: int | None = None
    ) -> Iterator[str]:
        """Each line of the NDJSON results, in input order, as the server sent it (no newline).

        ``after``: only the items after that index. A download that breaks resumes by itself
        after the last index it yielded (``STREAM_RECONNECTS`` breaks in a row at most)."""
        path = _path("batches", batch_id, "results")
        count = 0
        failures = 0
        while True:
            params: dict[str, Any] = {}
            if status:
                params["status"] = status
            if after is not None:
                params["after"] = str(after)
            try:
                response = self._send("GET", path, params=params or None, stream=True)
            except OmniConnectionError:
                if not count and not failures:
                    raise  # nothing reached us yet: report it at once, as any call does
                reason = "no connection"
            else:
                try:
                    for line in response.iter_lines():
                        if line:
                            count += 1
                            failures = 0
                            index = line_index(line)
                            after = index if index is not None else after
                            yield line
                    # An outage after the first line ends the stream cleanly but short: with
                    # every status asked for, the last index tells (one read of the batch).
                    last = -1 if after is None else after
                    if status or last >= (_total(self.get_batch(batch_id)) or 0) - 1:
                        return
                    reason = f"the stream ended after item {after}, short of the batch's end"
                except _DROPPED as exc:
                    reason = _describe(exc)
                finally:
                    response.close()
            failures += 1
            self._reconnect(
                failures,
                f"the results stream from {self.url} broke after {count} lines "
                f"({failures} times in a row): {reason}",
            )

    def batch_events(self, batch_id: str) -> Iterator[BatchEvent]:
        """``progress`` (the batch), ``item`` (one item finished) ..., ending with ``done``.

        A reconnect resumes with ``Last-Event-ID``: the server sends a fresh ``progress``, then
        the item events after that id, so no item event is lost or repeated."""
        path = _path("batches", batch_id, "events")
        for sse in self._follow(path, last=lambda sse: sse.event == "done", resume=True):
            yield BatchEvent(sse.event, sse.json(), sse.id)

    def _submit_file(
        self,
        task: str,
        source: str | os.PathLike[str] | IO[bytes] | IO[str],
        part: Part | None,
        on_upload: OnUpload | None,
    ) -> Json:
        """The whole file as one ``POST /v1/batches``."""
        report = _UploadReport(on_upload, [part] if part else [], None)
        upload = upload_source(source, report.sent if on_upload else None)
        if report.total_bytes is None:
            report.total_bytes = upload.size
        headers = {"Content-Type": NDJSON}
        if upload.size is not None:
            headers["Content-Length"] = str(upload.size)
        created = self._json(
            "POST",
            "/v1/batches",
            params={"task": task},
            content=upload.chunks,
            headers=headers,
            create=True,
            tries=MAX_TRIES if upload.replayable else 1,
            timeout=self._slow_answer(UPLOAD_TIMEOUT_S),
        )
        report.accepted(created, part)
        return created

    def _submit_parts(
        self,
        task: str,
        source: str | os.PathLike[str] | IO[bytes],
        parts: list[Part],
        batch_id: str | None,
        on_upload: OnUpload | None,
    ) -> Json:
        """Open a batch (unless ``batch_id`` names one), send each part, close it.

        A part refused for its content (413, 422) cancels a batch this call opened, so no half
        of the file runs as if it were the whole; the error names the file's lines. Any other
        failure leaves the batch open, and the same file sent again with its id resumes."""
        opened = batch_id is None
        if batch_id is None:
            batch_id = str(self.open_batch(task)["id"])
        report = _UploadReport(on_upload, parts, batch_id)
        report.tell()
        for part in parts:
            try:
                batch = self.add_batch_items(
                    batch_id,
                    source,
                    part=part,
                    on_sent=report.sent if on_upload else None,
                )
            except OmniError as exc:
                raise self._part_failed(exc, batch_id, part, len(parts), opened) from exc
            except OmniConnectionError as exc:
                raise OmniConnectionError(
                    f"{exc}; batch {batch_id} has parts 1..{part.number - 1} of {len(parts)} "
                    "and stays open: send the same file to it again to resume (omni batch submit "
                    f"--batch {batch_id})"
                ) from exc
            report.accepted(batch, part)
        return self.close_batch(batch_id)

    def _part_failed(
        self, exc: OmniError, batch_id: str, part: Part, parts: int, opened: bool
    ) -> OmniError:
        """``exc`` with the file's line numbers instead of the part's, and what became of the
        batch."""
        where = f"part {part.number} of {parts} (lines {part.first_line}-{part.last_line})"
        fate = f"batch {batch_id} stays open"
        if opened and exc.status in (413, 422):
            try:
                self.cancel_batch(batch_id)
                fate = f"batch {batch_id} was cancelled"
            except OmniClientError:
                fate = f"batch {batch_id} could not be cancelled: cancel it yourself"
        errors = [_shift_line(error, part.first_line - 1) for error in exc.errors]
        detail = f"{where}: {exc.detail or exc.title}; {fate}"
        return OmniError(exc.status, exc.title, detail, errors, exc.body)

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
        idempotency_key: str | None = None,
        replay_safe: bool | None = None,
        tries: int = MAX_TRIES,
        stream: bool = False,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """One call, with the retries the module docstring lists; a 2xx response or a raise.

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


class _UploadReport:
    """Tells ``on_upload`` where an upload stands: bytes sent, parts and items accepted."""

    def __init__(self, on_upload: OnUpload | None, parts: list[Part], batch_id: str | None):
        self._on_upload = on_upload
        self.batch_id = batch_id
        self.parts = len(parts) or 1
        self.total_bytes: int | None = sum(p.size for p in parts) if parts else None
        self.items: int | None = sum(p.items for p in parts) if parts else None
        self.parts_done = 0
        self.items_accepted = 0
        self._done_bytes = 0  # the parts accepted so far
        self._sending = 0  # of the part going out, this try

    def sent(self, so_far: int) -> None:
        self._sending = so_far
        self.tell()

    def accepted(self, batch: Json, part: Part | None = None) -> None:
        self.batch_id = str(batch.get("id") or self.batch_id)
        self.parts_done += 1
        self._done_bytes += part.size if part else self._sending
        self._sending = 0
        self.items_accepted += part.items if part else int(_total(batch) or 0)
        self.tell()

    def tell(self) -> None:
        if self._on_upload is None:
            return
        self._on_upload(
            UploadProgress(
                batch_id=self.batch_id,
                sent_bytes=self._done_bytes + self._sending,
                total_bytes=self.total_bytes,
                parts_done=self.parts_done,
                parts=self.parts,
                items_accepted=self.items_accepted,
                items=self.items,
            )
        )


def _total(batch: Json) -> int | None:
    counts = batch.get("counts")
    total = counts.get("total") if isinstance(counts, dict) else None
    return total if isinstance(total, int) else None


_INDEX = re.compile(r'\{\s*"index"\s*:\s*(\d+)')


def line_index(line: str) -> int | None:
    """A results line's ``index``: from its start, where the server writes it, without parsing
    a line that may hold kilobytes of vectors; parsed whole only if it is not there."""
    match = _INDEX.match(line)
    if match:
        return int(match.group(1))
    try:
        index = jsonlib.loads(line).get("index")
    except (ValueError, AttributeError):
        return None
    return index if isinstance(index, int) else None


def _shift_line(error: dict[str, Any], by: int) -> dict[str, Any]:
    """A 422 error of a part, its ``["body", "line", N, ...]`` renumbered as the file's line."""
    loc = error.get("loc")
    if not isinstance(loc, list) or not by:
        return error
    shifted = list(loc)
    for i, value in enumerate(shifted[:-1]):
        if value == "line" and isinstance(shifted[i + 1], int):
            shifted[i + 1] += by
            break
    return {**error, "loc": shifted}


def _file_digest(source: str | os.PathLike[str] | IO[bytes] | IO[str]) -> str:
    """SHA-256 of a whole upload's bytes (hex), read once."""
    digest = hashlib.sha256()
    for chunk in upload_source(source).chunks():
        digest.update(chunk)
    return digest.hexdigest()


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

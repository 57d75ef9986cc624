"""A synchronous client for Omni's public HTTP API (docs/cli.md; the contract is CONTRACT.md).

``OmniClient`` and the events it yields (omniclient/events.py). What it raises is drawn in
omniclient/errors.py; transport errors from httpx are translated into those at one place,
``OmniClient._send`` (omniclient/session.py), with ``raise ... from``. The class is built in three
layers: ``ApiSession`` (omniclient/session.py: the connection, each call and its retries, event
streams), ``Batches`` (omniclient/batches.py: uploads and the other batch calls) and
``OmniClient`` here (jobs, a batch's results and events). Retries, in order of how safe they are:

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

import json as jsonlib
import re
from collections.abc import Iterator
from typing import Any

from omniclient.batches import BUSY_WAIT_S, NDJSON, UPLOAD_TIMEOUT_S, Batches, batch_total
from omniclient.errors import OmniConnectionError
from omniclient.events import TERMINAL, BatchEvent, JobEvent, Json, OnUpload, UploadProgress
from omniclient.session import (
    BACKOFF_S,
    DEFAULT_URL,
    DROPPED,
    IDEMPOTENCY_HEADER,
    MAX_RETRY_WAIT_S,
    MAX_TRIES,
    MAX_WAIT_S,
    RETRY_STATUSES,
    STREAM_READ_TIMEOUT_S,
    STREAM_RECONNECTS,
    TIMEOUT_S,
    USER_AGENT,
    describe,
    resource_path,
    wait_s,
)

__all__ = [
    "BACKOFF_S",
    "BUSY_WAIT_S",
    "DEFAULT_URL",
    "IDEMPOTENCY_HEADER",
    "MAX_RETRY_WAIT_S",
    "MAX_TRIES",
    "MAX_WAIT_S",
    "NDJSON",
    "RETRY_STATUSES",
    "STREAM_READ_TIMEOUT_S",
    "STREAM_RECONNECTS",
    "TERMINAL",
    "TIMEOUT_S",
    "UPLOAD_TIMEOUT_S",
    "USER_AGENT",
    "BatchEvent",
    "JobEvent",
    "Json",
    "OmniClient",
    "OnUpload",
    "UploadProgress",
    "line_index",
]


class OmniClient(Batches):
    """Omni's API over one ``httpx.Client``; use as a context manager, or call ``close()``."""

    # Jobs

    def submit(
        self,
        task: str,
        input: Json,
        metadata: dict[str, str] | None = None,
        wait: float | None = None,
        webhook: str | None = None,
        cache: bool = True,
    ) -> Json:
        """``POST /v1/jobs``: the job, queued; with ``wait``, finished if it finished in time.
        An identical earlier input may answer it at once (``timings.cache_hit``) unless
        ``cache`` is False."""
        body: Json = {"task": task, "input": input}
        if metadata:
            body["metadata"] = metadata
        if webhook:
            body["webhook"] = webhook
        if not cache:
            body["cache"] = False
        headers = {"Prefer": f"wait={wait_s(wait)}"} if wait is not None else {}
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
        params = {"wait": wait_s(wait)} if wait is not None else None
        return self._json(
            "GET", resource_path("jobs", job_id), params=params, timeout=self._waiting(wait)
        )

    def list_jobs(
        self,
        *,
        status: str | None = None,
        task: str | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
        page_size: int = 100,
    ) -> Iterator[Json]:
        """``GET /v1/jobs``, every page: this key's jobs (summaries), newest first."""
        return self._pages(
            "jobs", page_size, status=status, task=task, created_after=created_after,
            created_before=created_before,
        )  # fmt: skip

    def retry_job(self, job_id: str) -> Json:
        """``POST /v1/jobs/ID/retry``: a failed job again, as a new job (its ``retry_of``)."""
        return self._json("POST", resource_path("jobs", job_id, "retry"))

    def cancel_job(self, job_id: str) -> Json:
        """``POST /v1/jobs/ID/cancel``; an already terminal job raises ``OmniError`` 409."""
        return self._json("POST", resource_path("jobs", job_id, "cancel"))

    def delete_job(self, job_id: str) -> None:
        """``DELETE /v1/jobs/ID``: the job and everything of it gone (one running is stopped)."""
        self._send("DELETE", resource_path("jobs", job_id))

    def job_events(self, job_id: str) -> Iterator[JobEvent]:
        """The job's current state, then each change, ending with its terminal status."""
        path = resource_path("jobs", job_id, "events")
        for sse in self._follow(path, last=lambda sse: sse.event in TERMINAL, resume=True):
            yield JobEvent(sse.event, sse.id, sse.json())

    # Batches: the results and the events (uploads and the rest: omniclient/batches.py)

    def batch_results(
        self, batch_id: str, status: str | None = None, after: int | None = None
    ) -> Iterator[str]:
        """Each line of the NDJSON results, in input order, as the server sent it (no newline).

        ``after``: only the items after that index. A download that breaks resumes by itself
        after the last index it yielded (``STREAM_RECONNECTS`` breaks in a row at most)."""
        path = resource_path("batches", batch_id, "results")
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
                    if status or last >= (batch_total(self.get_batch(batch_id)) or 0) - 1:
                        return
                    reason = f"the stream ended after item {after}, short of the batch's end"
                except DROPPED as exc:
                    reason = describe(exc)
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
        path = resource_path("batches", batch_id, "events")
        for sse in self._follow(path, last=lambda sse: sse.event == "done", resume=True):
            yield BatchEvent(sse.event, sse.json(), sse.id)


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

"""A batch's progress on stderr, from its upload to its end: a rich bar on a terminal, plain
lines anywhere else.

The upload is driven by ``OmniClient.submit_batch``'s ``on_upload`` (items sent, estimated from
bytes, and parts accepted), the run by ``OmniClient.batch_events``: the counts come from the
server's ``progress`` and ``done`` events; ``item`` events seen since keep the display moving
between two progress events. One bar serves both: its items are first sent, then finished.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from omniclient.events import TERMINAL, BatchEvent, UploadProgress

PLAIN_INTERVAL_S = 1.0
"""Least time between two plain progress lines, seconds (the last line is always printed)."""
MIN_RATE_WINDOW_S = 0.5
"""Watching time before a rate (and so an ETA) is shown, seconds."""
_FINISHED = ("succeeded", "failed", "cancelled")


class Tally:
    """What is known of a batch's counts, and how fast it is moving since watching began.

    Each count is the larger of two lower bounds: the last progress event's, and the items that
    item events have shown ending that way since. Neither overcounts, whichever order the server
    sends them in; ``done`` carries the exact final counts.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.batch: dict[str, Any] = {}
        self._reported: dict[str, int] = {}
        self._item_status: dict[int, str] = {}  # index -> latest terminal status seen
        self._item_counts: Counter[str] = Counter()
        self._start: tuple[float, int] | None = None  # (time, completed) at the first event
        self.started = clock()

    def apply(self, event: BatchEvent) -> None:
        if event.name in ("progress", "done"):
            self.batch = event.data
            counts = event.data.get("counts") or {}
            self._reported = {k: int(v) for k, v in counts.items() if isinstance(v, int)}
            if event.name == "done":
                self._item_status.clear()
                self._item_counts.clear()
        elif event.name == "item":
            index, status = event.data.get("index"), event.data.get("status")
            if isinstance(index, int) and status in TERMINAL:
                previous = self._item_status.get(index)
                if previous is not None:
                    self._item_counts[previous] -= 1
                self._item_status[index] = status
                self._item_counts[status] += 1
        if self._start is None:
            self._start = (self._clock(), self.completed)

    def count(self, status: str) -> int:
        return max(self._reported.get(status, 0), self._item_counts[status])

    @property
    def total(self) -> int:
        return self._reported.get("total", 0)

    @property
    def completed(self) -> int:
        done = sum(self.count(s) for s in _FINISHED)
        return min(done, self.total) if self.total else done

    @property
    def rate(self) -> float | None:
        """Items finished per second since the first event; None until there is a fair sample."""
        if self._start is None:
            return None
        elapsed = self._clock() - self._start[0]
        if elapsed < MIN_RATE_WINDOW_S:
            return None
        return (self.completed - self._start[1]) / elapsed

    @property
    def eta_s(self) -> float | None:
        rate = self.rate
        if not rate:
            return None
        return (self.total - self.completed) / rate

    def counts_text(self) -> str:
        return " ".join(f"{s}={self.count(s)}" for s in _FINISHED)

    def rate_text(self) -> str:
        rate = self.rate
        return "-" if rate is None else f"{rate:.1f}/s"

    def eta_text(self) -> str:
        eta = self.eta_s
        return "-" if eta is None else f"{math.ceil(eta)}s"

    def line(self) -> str:
        """``progress 420/1000 succeeded=410 failed=10 cancelled=0 rate=85.2/s eta=7s``."""
        return (
            f"progress {self.completed}/{self.total} {self.counts_text()} "
            f"rate={self.rate_text()} eta={self.eta_text()}"
        )

    def summary(self) -> str:
        """``batch ID succeeded: 1000 items, succeeded=990 failed=10 cancelled=0 in 12.3s``."""
        elapsed = self._clock() - self.started
        return (
            f"batch {self.batch.get('id', '?')} {self.batch.get('status', '?')}: "
            f"{self.total} items, {self.counts_text()} in {elapsed:.1f}s"
        )


def upload_line(upload: UploadProgress) -> str:
    """``upload part 2/10: 200000/1000000 items accepted``."""
    items = "?" if upload.items is None else str(upload.items)
    return (
        f"upload part {upload.parts_done}/{upload.parts}: "
        f"{upload.items_accepted}/{items} items accepted"
    )


def items_sent(upload: UploadProgress) -> int:
    """Items sent so far: those accepted, and the part going out's share by its bytes sent."""
    if not upload.items or not upload.total_bytes:
        return upload.items_accepted
    share = upload.items * upload.sent_bytes // upload.total_bytes
    return min(upload.items, max(upload.items_accepted, share))


class BatchProgress:
    """Shows an upload and then a ``Tally`` on stderr as they go; a context manager around
    both."""

    def __init__(self, tally: Tally, console: Console | None = None) -> None:
        self.tally = tally
        self._console = console or Console(stderr=True)
        self._rich = self._console.is_terminal and not self._console.is_dumb_terminal
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_line = float("-inf")
        self._upload_started: float | None = None
        self._parts_reported = 0

    def __enter__(self) -> BatchProgress:
        if self._rich:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[counts]}"),
                TextColumn("{task.fields[rate]} eta {task.fields[eta]}"),
                TimeElapsedColumn(),
                console=self._console,
            )
            self._progress.start()
            self._task = self._progress.add_task("batch", total=None, counts="", rate="-", eta="-")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the bar (it stays on screen); what is written after goes below it."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def note(self, message: str) -> None:
        """A line on stderr that does not tear the bar."""
        if self._progress is not None:
            self._progress.console.print(message, highlight=False, markup=False)
        else:
            click.echo(message, err=True)

    def upload(self, upload: UploadProgress) -> None:
        """The upload moved on: bytes went out, or a part was accepted. Plain lines come once
        per accepted part of a file sent in several (a single request says nothing here)."""
        now = time.monotonic()
        if self._upload_started is None:
            self._upload_started = now
        if self._progress is not None and self._task is not None:
            sent = items_sent(upload)
            elapsed = now - self._upload_started
            rate = f"{sent / elapsed:.1f}/s" if elapsed >= MIN_RATE_WINDOW_S else "-"
            self._progress.update(
                self._task,
                description=f"upload {upload.parts_done}/{upload.parts}",
                total=upload.items,
                completed=sent,
                counts=f"accepted={upload.items_accepted}",
                rate=rate,
                eta="-",
                refresh=upload.parts_done > self._parts_reported,  # a part accepted: show it
            )
            self._parts_reported = upload.parts_done
            return
        if upload.parts > 1 and upload.parts_done > self._parts_reported:
            self._parts_reported = upload.parts_done
            click.echo(upload_line(upload), err=True)

    def update(self, event: BatchEvent) -> None:
        self.tally.apply(event)
        final = event.name == "done"
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task,
                description=f"batch {self.tally.batch.get('id', '')}",
                total=self.tally.total or None,
                completed=self.tally.completed,
                counts=self.tally.counts_text(),
                rate=self.tally.rate_text(),
                eta=self.tally.eta_text(),
            )
            return
        now = time.monotonic()
        if final or now - self._last_line >= PLAIN_INTERVAL_S:
            self._last_line = now
            click.echo(self.tally.line(), err=True)

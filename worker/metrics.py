"""Prometheus metrics of the worker, served at ``GET /metrics`` on its health port
(``worker/health.py``); docs/observability.md lists them.

A worker is one process, so the metrics live in prometheus-client's default registry (which also
carries its ``process_*`` and ``python_*`` metrics). The processor and the consumer call the
functions below at the points where a job's fate is decided; each is a few counter operations.

Every job a worker claims is counted once in ``omni_worker_jobs_total``, when its message is
settled, with the outcome the processor decided for it (``aborted`` if none was: an unexpected
error nacked it). A delivery that needs no work (the job is missing, already finished, or twice
in one micro-batch) is counted as ``skipped`` without being claimed.

A batch's chunk is counted the same way in ``omni_worker_chunks_total`` (one per claimed chunk
delivery, by outcome), and its items in ``omni_worker_chunk_items_total`` (by the item's outcome,
once the chunk's commit is written): counted per chunk, never per item, so a chunk of 256 items
costs a few counter operations.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest

OUTCOMES = (
    "succeeded",  # the result is written
    "failed",  # the job failed for good (an error, its time limit, attempts exhausted)
    "retried",  # a transient error: released, redelivered after a backoff
    "cancelled",  # cancelled while it ran; nothing written
    "lost",  # another attempt owns the job now (a lease lapsed), or another writer ended it
    "released",  # given back at shutdown, unfinished or never started; redelivered elsewhere
    "skipped",  # nothing to do (missing, already finished, duplicate delivery)
    "aborted",  # nacked after an unexpected error (a bug); redelivered
)
"""The ``outcome`` label of ``omni_worker_jobs_total``."""

QUEUE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, 600.0, 1800.0, 3600.0)  # fmt: skip
"""Bounds of the queue time histogram, seconds: a backlog may be minutes to an hour deep."""
INFERENCE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                       120.0, 300.0)  # fmt: skip
"""Bounds of the inference time histogram, seconds: up to the longest task time limit."""
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Bounds of the micro-batch size histogram, jobs."""

JOBS = Counter(
    "omni_worker_jobs",
    "Jobs this worker settled, by task and outcome (see docs/observability.md for the outcomes).",
    ["task", "outcome"],
)
CHUNKS = Counter(
    "omni_worker_chunks",
    "Batch chunks this worker settled, by task and outcome.",
    ["task", "outcome"],
)
CHUNK_ITEMS = Counter(
    "omni_worker_chunk_items",
    "Batch items whose outcome this worker wrote (in their chunk's commit), by task and outcome.",
    ["task", "outcome"],
)
QUEUE_SECONDS = Histogram(
    "omni_worker_queue_seconds",
    "Time from a job message's publication to this worker taking it (first deliveries), seconds.",
    ["task"],
    buckets=QUEUE_BUCKETS_S,
)
INFERENCE_SECONDS = Histogram(
    "omni_worker_inference_seconds",
    "Time of one micro-batch's model call (a batch that failed as a whole: its reruns), seconds.",
    ["task"],
    buckets=INFERENCE_BUCKETS_S,
)
BATCH_SIZE = Histogram(
    "omni_worker_batch_size",
    "Jobs in one micro-batch's model call.",
    ["task"],
    buckets=BATCH_SIZE_BUCKETS,
)
MODEL_LOAD_SECONDS = Gauge(
    "omni_worker_model_load_seconds",
    "How long loading the task's model took at start, seconds.",
    ["task"],
)
JOBS_IN_FLIGHT = Gauge(
    "omni_worker_jobs_in_flight",
    "Jobs claimed by this worker whose message is not settled yet.",
    ["task"],
)
HELD_CHUNKS = Gauge(
    "omni_worker_held_chunks",
    "Batch chunks of the task held back, unpublished, behind their batches' windows "
    "(docs/scheduling.md): backlog the subscriptions do not show. One worker per task reports "
    "it (a lease in Firestore), the others report 0, so a sum over pods counts it once; the "
    "HPA scales on it beside the subscriptions' backlog.",
    ["task"],
)
REDELIVERIES = Counter(
    "omni_worker_redeliveries",
    "Messages Pub/Sub delivered again (delivery attempt above 1; known only on subscriptions "
    "with a dead-letter policy).",
    ["task"],
)
PREDICT_LOADED = Gauge(
    "omni_worker_predict_loaded_versions",
    "Model versions the predict task holds loaded (at most PREDICT_MAX_LOADED).",
)
PREDICT_EVICTIONS = Counter(
    "omni_worker_predict_evictions",
    "Model versions the predict task dropped, least recently used first, to load another.",
)
PREDICT_LISTINGS = Counter(
    "omni_worker_predict_repository_listings",
    "Listings of MODEL_REPOSITORY by the predict task (at start, and on a miss once the last "
    "listing is older than PREDICT_MISS_CACHE_S or the folders changed).",
)


class Received(Protocol):
    """The part of a received Pub/Sub message these metrics read."""

    @property
    def publish_time(self) -> datetime: ...
    @property
    def delivery_attempt(self) -> int | None: ...


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus's text format, and their content type."""
    return _generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def received(task: str, message: Received) -> None:
    """A message of ``task`` reached this worker: its time in the queue, or a redelivery.

    A redelivery's ``publish_time`` is its first publication's, so its queue time would count
    its earlier attempts and backoff: redeliveries are counted instead of timed."""
    attempt = message.delivery_attempt
    if attempt is not None and attempt > 1:
        REDELIVERIES.labels(task).inc()
        return
    # Clocks differ between hosts: a message never waited less than nothing.
    waited_s = (datetime.now(UTC) - message.publish_time).total_seconds()
    QUEUE_SECONDS.labels(task).observe(max(waited_s, 0.0))


def held_chunks(task: str, count: int) -> None:
    HELD_CHUNKS.labels(task).set(count)


def model_loaded(task: str, seconds: float) -> None:
    MODEL_LOAD_SECONDS.labels(task).set(seconds)


def batch_ran(task: str, size: int, seconds: float) -> None:
    """One micro-batch's model call: ``size`` jobs in ``seconds``."""
    INFERENCE_SECONDS.labels(task).observe(seconds)
    BATCH_SIZE.labels(task).observe(size)


def predict_loaded(versions: int, evicted: int = 0) -> None:
    """``predict`` holds ``versions`` model versions now, having dropped ``evicted`` of them."""
    PREDICT_LOADED.set(versions)
    if evicted:
        PREDICT_EVICTIONS.inc(evicted)


def predict_listed() -> None:
    """``predict`` listed its model repository once."""
    PREDICT_LISTINGS.inc()


def skipped(task: str, kind: str = "job") -> None:
    (JOBS if kind == "job" else CHUNKS).labels(task, "skipped").inc()


def chunk_items(task: str, succeeded: int, failed: int, cancelled: int) -> None:
    """A chunk's commit wrote these item outcomes."""
    for what, count in (("succeeded", succeeded), ("failed", failed), ("cancelled", cancelled)):
        if count:
            CHUNK_ITEMS.labels(task, what).inc(count)


# Claimed deliveries whose message is not settled yet: each one's task, and its outcome once the
# processor has decided it. A delivery is a key from its claim until its settlement (the processor
# settles every delivery it accepted, closing included), so nothing stays here for long.
_held: dict[object, tuple[str, str | None, str]] = {}
_held_lock = threading.Lock()  # guards _held: claims, outcomes and settlements come from
# different threads (a lane's gather thread, the settle threads, the callbacks)


def claimed(delivery: object, task: str, kind: str = "job") -> None:
    """``delivery`` (a job of ``task``, or a chunk: ``kind``) is claimed: in flight until
    ``settled``."""
    with _held_lock:
        if delivery in _held:
            return
        _held[delivery] = (task, None, kind)
    if kind == "job":
        JOBS_IN_FLIGHT.labels(task).inc()


def outcome(delivery: object, what: str) -> None:
    """What became of a claimed delivery's job (one of ``OUTCOMES``); counted at its settlement.
    The first outcome decided wins, as the first settlement of a delivery does."""
    with _held_lock:
        held = _held.get(delivery)
        if held is not None and held[1] is None:
            _held[delivery] = (held[0], what, held[2])


def settled(delivery: object) -> None:
    """``delivery``'s message is settled (acked, nacked or left for a later redelivery)."""
    with _held_lock:
        held = _held.pop(delivery, None)
    if held is None:
        return  # never claimed: a skip, a busy job's wait, a drain
    task, what, kind = held
    if kind == "job":
        JOBS_IN_FLIGHT.labels(task).dec()
        JOBS.labels(task, what or "aborted").inc()
    else:
        CHUNKS.labels(task, what or "aborted").inc()

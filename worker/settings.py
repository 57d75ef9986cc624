"""Worker settings, read once from the environment into one frozen object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from common.settings import DEFAULT_PROJECT, ConfigError, project_from
from common.tracing import EXPORTERS
from schemas.jobs import DEFAULT_RESULT_TTL_S, result_ttl_from_env
from schemas.messages import DEFAULT_SUBSCRIPTION_PREFIX, DEFAULT_TOPIC
from worker.modellock import BATCH_SHARE
from worker.rates import REPORT_S

MIN_LEASED_MESSAGES = 8
LEASED_BATCHES = 4
"""FlowControl ``max_messages`` per task's job subscription is this many of the task's largest
batch, and at least ``MIN_LEASED_MESSAGES``: every message in hand counts, from its receipt to its
ack, so the batch running, the one claimed and waiting, the one gathering and the one being settled
all take their share; with twice, the gathering batch filled only from what settling freed (mean
batch 17–20 of 32 under a backlog). Not more: every leased-but-idle message is a job stranded
(until its lease lapses) if this worker dies. ``WORKER_MAX_MESSAGES`` overrides it."""
CHUNK_MESSAGES = 2
"""``WORKER_CHUNK_MESSAGES``: FlowControl ``max_messages`` per task's chunk subscription, a count:
one chunk running and the next claimed. A chunk is hundreds of items, so a worker holding more only
strands them (until their leases lapse) if it dies, and keeps them from idle workers."""
BATCHING: dict[str, tuple[int, float]] = {
    # task: (jobs per batch at most, seconds to wait for more after the first)
    "embed": (32, 0.005),
    "similar": (16, 0.005),
    "entities": (32, 0.005),
    "predict": (32, 0.005),
    # Each series is its own Prophet fit: batching would only make jobs wait for each other.
    "forecast": (1, 0.0),
}
"""Micro-batching defaults, measured on 2 CPU cores (bench/throughput.py; docs/tasks.md). The wait
is short because a batch also grows by itself: messages that arrive while the model runs one batch
make up the next, so under load batches fill without waiting, and a lone job is not held back.
``WORKER_MAX_BATCH_<TASK>`` and ``WORKER_MAX_WAIT_MS_<TASK>`` override them."""
MAX_BATCH_LIMIT = 400
"""A batch's terminal writes share one Firestore commit. Firestore no longer caps a commit's writes
(the old 500-write limit is gone); its 10 MiB request limit remains, so this bounds a commit's
size and latency, with room for the counter shards the same commit moves (one per batch and one
per tenant)."""
LEASE_EXTENSION_S = 10
"""FlowControl ``max_duration_per_lease_extension``, seconds. The client keeps extending while a job
runs; a short extension brings a dead worker's messages back in seconds, not minutes."""
GRACE_S = 20.0
"""``WORKER_GRACE_S``: seconds the first SIGTERM gives in-hand jobs to finish. Kubernetes' default
grace is 30 s; what is still running after this is released and nacked, within the rest."""
JOB_LEASE_S = 20.0
"""``JOB_LEASE_S``: the lease a claim takes on its job document, renewed by the watcher while the
job runs. After a worker dies, a redelivered job waits at most this long for the lease to lapse."""
WATCH_INTERVAL_S = 1.0
"""How often the jobs in hand are checked for cancels and lost leases (and leases renewed)."""
RETRY_MIN_BACKOFF_S = 10.0
"""``WORKER_RETRY_BACKOFF_S``: the wait before redelivering a job that failed transiently; it
doubles with every delivery, up to ``RETRY_MAX_BACKOFF_S``."""
RETRY_MAX_BACKOFF_S = 600.0
MAX_ATTEMPTS = 5
"""``WORKER_MAX_ATTEMPTS``: deliveries before a job goes to the dead-letter topic; the same number
as the subscription's ``max_delivery_attempts`` (the worker enforces it only when the message
carries no delivery count, i.e. the subscription has no dead-letter policy)."""
FIRESTORE_TIMEOUT_S = 10.0
"""Seconds one Firestore operation may take, retries included."""
PREDICT_MAX_LOADED = 4
"""``PREDICT_MAX_LOADED``: model versions ``predict`` keeps loaded at once, a count. The least
recently used one is dropped to load another, so the worker's memory holds this many models
whatever the jobs ask for; size it (with the pod's memory limit) to the models actually served."""
PREDICT_MISS_CACHE_S = 5.0
"""``PREDICT_MISS_CACHE_S``: seconds a listing of ``MODEL_REPOSITORY`` answers for a model or
version it did not find, so a flood of jobs naming unknown models does not list the repository
each time. A model published later is found at most this long after (at once when the folder's
modification time shows it). 0: every miss lists again."""


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class WorkerSettings:
    project: str = DEFAULT_PROJECT
    subscription_prefix: str = DEFAULT_SUBSCRIPTION_PREFIX
    rate_report_s: float = REPORT_S
    """``WORKER_RATE_REPORT_S``: seconds between drain-rate reports (``worker/rates.py``)."""
    batch_share: float = BATCH_SHARE
    """``WORKER_BATCH_SHARE``: the least share of model calls batch chunks get while single jobs
    keep coming (``worker/modellock.py``), in (0, 1]."""
    jobs_topic: str = DEFAULT_TOPIC
    """``JOBS_TOPIC``: the topics' base name, where the worker publishes the chunks it releases
    (``worker/chunkpacer.py``)."""
    tasks: tuple[str, ...] = ()  # () : every task in the catalogue
    jobs_collection: str = "jobs"
    batches_collection: str = "batches"  # batch documents, and under each its chunks
    http_host: str = "127.0.0.1"
    http_port: int = 8090
    device: str = "auto"
    torch_threads: int = 0  # 0: every CPU this process may use
    max_leased_messages: int = 0  # 0: from the task's batch size (MIN_LEASED_MESSAGES)
    chunk_messages: int = CHUNK_MESSAGES
    lease_extension_s: int = LEASE_EXTENSION_S
    batching: tuple[tuple[str, int, float], ...] = ()  # overrides of BATCHING
    load_threads: int = 3
    grace_s: float = GRACE_S
    firestore_timeout_s: float = FIRESTORE_TIMEOUT_S
    job_lease_s: float = JOB_LEASE_S
    watch_interval_s: float = WATCH_INTERVAL_S
    max_attempts: int = MAX_ATTEMPTS
    task_timeout_s: float = 0.0  # 0: each task's own limit (schemas.tasks)
    result_ttl_s: float = DEFAULT_RESULT_TTL_S
    retry_backoff_s: tuple[float, float] = (RETRY_MIN_BACKOFF_S, RETRY_MAX_BACKOFF_S)
    fault_injection: bool = False
    model_repository: str | None = None
    predict_max_loaded: int = PREDICT_MAX_LOADED
    predict_miss_cache_s: float = PREDICT_MISS_CACHE_S
    log_level: str = "INFO"
    traces_exporter: str = "none"
    sentry_dsn: str | None = field(default=None, repr=False)  # holds a key: never printed

    def served_tasks(self) -> tuple[str, ...]:
        from schemas.tasks import TASKS

        return self.tasks or tuple(TASKS)

    def batch_policy(self, task: str) -> tuple[int, float]:
        """(largest batch, longest wait in seconds) for ``task``."""
        for name, size, wait_s in self.batching:
            if name == task:
                return size, wait_s
        return BATCHING.get(task, (1, 0.0))

    def leased_messages(self, task: str) -> int:
        """How many of ``task``'s job messages this worker may hold at once (its chunk messages:
        ``chunk_messages``)."""
        if self.max_leased_messages:
            return self.max_leased_messages
        return max(MIN_LEASED_MESSAGES, LEASED_BATCHES * self.batch_policy(task)[0])

    def timeout_for(self, task: str) -> float:
        """The time limit of one attempt of ``task``, seconds."""
        from schemas.tasks import get_task

        return self.task_timeout_s or get_task(task).timeout_s

    def max_lease_s(self) -> float:
        """How long the Pub/Sub client may hold one message: the longest task limit, then a
        job lease and the grace period. Past it the message is redelivered even though this
        worker still holds it, so a hung worker cannot keep a job forever."""
        from schemas.tasks import TASKS

        longest = max(self.timeout_for(name) for name in TASKS)
        return longest + self.job_lease_s + self.grace_s

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if environ is None else environ
        try:
            settings = cls(
                project=project_from(env),
                jobs_topic=env.get("JOBS_TOPIC") or DEFAULT_TOPIC,
                batch_share=float(env.get("WORKER_BATCH_SHARE") or BATCH_SHARE),
                rate_report_s=float(env.get("WORKER_RATE_REPORT_S") or REPORT_S),
                subscription_prefix=env.get("JOBS_SUBSCRIPTION_PREFIX")
                or DEFAULT_SUBSCRIPTION_PREFIX,
                tasks=_task_list(env.get("WORKER_TASKS") or ""),
                batching=_batching(env),
                load_threads=int(env.get("WORKER_LOAD_THREADS") or 3),
                jobs_collection=env.get("JOBS_COLLECTION") or "jobs",
                batches_collection=env.get("BATCHES_COLLECTION") or "batches",
                http_host=env.get("WORKER_HTTP_HOST") or "127.0.0.1",
                http_port=int(env.get("WORKER_HTTP_PORT") or 8090),
                device=(env.get("WORKER_DEVICE") or "auto").lower(),
                torch_threads=int(env.get("TORCH_THREADS") or 0) or _cpus(),
                max_leased_messages=int(env.get("WORKER_MAX_MESSAGES") or 0),
                chunk_messages=int(env.get("WORKER_CHUNK_MESSAGES") or CHUNK_MESSAGES),
                grace_s=float(env.get("WORKER_GRACE_S") or GRACE_S),
                job_lease_s=float(env.get("JOB_LEASE_S") or JOB_LEASE_S),
                max_attempts=int(env.get("WORKER_MAX_ATTEMPTS") or MAX_ATTEMPTS),
                task_timeout_s=float(env.get("WORKER_TASK_TIMEOUT_S") or 0),
                result_ttl_s=result_ttl_from_env(env),
                retry_backoff_s=(
                    float(env.get("WORKER_RETRY_BACKOFF_S") or RETRY_MIN_BACKOFF_S),
                    RETRY_MAX_BACKOFF_S,
                ),
                fault_injection=env.get("WORKER_FAULT_INJECTION", "") == "1",
                model_repository=env.get("MODEL_REPOSITORY") or None,
                predict_max_loaded=int(env.get("PREDICT_MAX_LOADED") or PREDICT_MAX_LOADED),
                predict_miss_cache_s=float(env.get("PREDICT_MISS_CACHE_S") or PREDICT_MISS_CACHE_S),
                log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
                traces_exporter=(env.get("OTEL_TRACES_EXPORTER") or "none").lower(),
                sentry_dsn=env.get("SENTRY_DSN") or None,
            )
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"bad number in the environment: {exc}") from exc
        if not 0 < settings.batch_share <= 1:
            raise ConfigError("WORKER_BATCH_SHARE must be more than 0 and at most 1")
        if settings.device not in ("auto", "cpu", "cuda"):
            raise ConfigError("WORKER_DEVICE must be auto, cpu or cuda")
        if settings.traces_exporter not in EXPORTERS:
            raise ConfigError(f"OTEL_TRACES_EXPORTER must be one of {', '.join(EXPORTERS)}")
        if not 0 <= settings.http_port < 65536 or settings.max_leased_messages < 0:
            raise ConfigError("WORKER_HTTP_PORT or WORKER_MAX_MESSAGES is out of range")
        if settings.chunk_messages < 1:
            raise ConfigError("WORKER_CHUNK_MESSAGES must be at least 1")
        if min(settings.grace_s, settings.job_lease_s, settings.max_attempts) <= 0:
            raise ConfigError(
                "WORKER_GRACE_S, JOB_LEASE_S and WORKER_MAX_ATTEMPTS must be positive"
            )
        if settings.task_timeout_s < 0:
            raise ConfigError("WORKER_TASK_TIMEOUT_S must not be negative")
        if settings.predict_max_loaded < 1 or not 0 <= settings.predict_miss_cache_s <= 3600:
            raise ConfigError("PREDICT_MAX_LOADED must be at least 1, PREDICT_MISS_CACHE_S 0..3600")
        for task, size, wait_s in settings.batching:
            if not 1 <= size <= MAX_BATCH_LIMIT or not 0 <= wait_s <= 10:
                raise ConfigError(
                    f"{task}: WORKER_MAX_BATCH must be 1..{MAX_BATCH_LIMIT} and "
                    "WORKER_MAX_WAIT_MS 0..10000"
                )
        return settings


def _task_list(value: str) -> tuple[str, ...]:
    """``WORKER_TASKS``: comma-separated task names, each in the catalogue."""
    from schemas.tasks import TASKS

    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ConfigError(f"WORKER_TASKS names unknown task(s) {unknown}; known: {list(TASKS)}")
    return names


def _batching(env: Mapping[str, str]) -> tuple[tuple[str, int, float], ...]:
    """Per-task overrides: ``WORKER_MAX_BATCH_EMBED=64``, ``WORKER_MAX_WAIT_MS_EMBED=20``."""
    overrides = []
    for task, (size, wait_s) in BATCHING.items():
        key = task.upper()
        size_text = env.get(f"WORKER_MAX_BATCH_{key}")
        wait_text = env.get(f"WORKER_MAX_WAIT_MS_{key}")
        if size_text or wait_text:
            overrides.append(
                (
                    task,
                    int(size_text) if size_text else size,
                    float(wait_text) / 1000 if wait_text else wait_s,
                )
            )
    return tuple(overrides)

"""The worker's life: load models, pull, and leave in two stages.

1. Health server up at once (``/healthz`` answers while models load; ``/readyz`` does not).
2. Load the models of the served tasks (``WORKER_TASKS``), in parallel; record each load time.
3. Pull, two streams per served task: its jobs' subscription and its chunks' (each with its own
   flow control). Ready while every stream runs.
4. First SIGTERM/SIGINT: stop pulling and start no new job (the client nacks what it holds but
   has not dispatched); jobs in hand finish within ``WORKER_GRACE_S``; what still runs then stops
   at its next safe point, is released and nacked; exit 0. A second signal *within*
   ``SAME_REQUEST_WINDOW_S`` is the same request (a process group's signal plus a supervisor's
   forwarded one); a later one forces exit at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

from common import tracing
from common.errortracking import init_error_tracking
from schemas.messages import CHUNK_KIND, JOB_KIND, Topics, task_subscription
from worker import faults, metrics
from worker.chunkcache import ChunkCache
from worker.chunkpacer import ChunkPacer
from worker.chunkstore import ChunkStore
from worker.consumer import Consumer, stop_all
from worker.health import HealthServer
from worker.heldbacklog import HeldBacklog
from worker.processor import Processor
from worker.rates import DrainRates, RateReporter
from worker.resultcache import CacheWrites
from worker.settings import WorkerSettings
from worker.store import JobStore
from worker.tasks import ADAPTERS, Adapter

logger = logging.getLogger(__name__)

SAME_REQUEST_WINDOW_S = 2.0
"""Signals this close to the first one repeat it rather than force an exit."""
_WAIT_SLICE_S = 0.5
ABANDON_WAIT_S = 5.0
"""Seconds jobs stopped at the end of the grace period get to release themselves and nack."""


class Worker:
    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self._stop = threading.Event()
        self._first_signal_at: float | None = None
        self._adapters: dict[str, Adapter] = {}
        self._load_s: dict[str, float] = {}
        self._consumers: list[Consumer] = []
        self._processor: Processor | None = None
        self._ready_after_s: float | None = None
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}"

    # -- signals -------------------------------------------------------------------------------
    def request_stop(self, signum: int, _frame: FrameType | None = None) -> None:
        now = time.monotonic()
        if self._first_signal_at is None:
            self._first_signal_at = now
            logger.info("signal %s: finishing jobs in hand, then leaving", signum)
            self._stop.set()
        elif now - self._first_signal_at > SAME_REQUEST_WINDOW_S:
            logger.warning("second signal %s: leaving now", signum)
            os._exit(1)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    # -- lifecycle -----------------------------------------------------------------------------
    def _readiness(self) -> tuple[bool, dict[str, Any]]:
        served = self.settings.served_tasks()
        pulling = bool(self._consumers) and all(c.running for c in self._consumers)
        tasks = {}
        for name in served:
            adapter = self._adapters.get(name)
            entry: dict[str, Any] = {
                "loaded": name in self._load_s,
                "load_s": self._load_s.get(name),
                "device": getattr(adapter, "device", None),
                "batch": dict(
                    zip(("max_size", "max_wait_s"), self.settings.batch_policy(name), strict=True)
                ),
            }
            if self._processor is not None:
                entry.update(vars(self._processor.stats[name]))
                entry["inference_s"] = round(entry["inference_s"], 3)
            if adapter is not None and hasattr(adapter, "forward_passes"):
                entry["forward_passes"] = adapter.forward_passes
            entry["subscriptions"] = {
                c.name: {"pulling": c.running, "max_messages": c.max_messages}
                for c in self._consumers
                if c.task == name
            }
            tasks[name] = entry
        ready = pulling and not self._stop.is_set() and all(t["loaded"] for t in tasks.values())
        if ready and self._ready_after_s is None:
            self._ready_after_s = _process_age_s()  # the first time /readyz says ready
        return ready, {
            "pulling": pulling,
            "worker": self.worker_id,
            "rss_mb": _rss_mb(),
            "load_s": self._load_s.get("*"),
            "ready_after_s": self._ready_after_s,
            "tasks": tasks,
        }

    def load_models(self) -> None:
        """Load every served task's model, ``WORKER_LOAD_THREADS`` at a time (in parallel:
        much of a load is waiting on imports and files; measured in docs/tasks.md)."""
        started = time.perf_counter()
        served = self.settings.served_tasks()
        with ThreadPoolExecutor(max(1, self.settings.load_threads), "omni-load") as pool:
            for future in [pool.submit(self._load_one, name) for name in served]:
                future.result()  # a model that fails to load fails the start
        self._load_s["*"] = round(time.perf_counter() - started, 3)
        logger.info(
            "models loaded in %.2fs", self._load_s["*"], extra={"load_s": dict(self._load_s)}
        )

    def _load_one(self, name: str) -> None:
        if self._stop.is_set():
            return
        started = time.perf_counter()
        adapter = ADAPTERS[name](self.settings)
        adapter.load()
        self._load_s[name] = round(time.perf_counter() - started, 3)
        metrics.model_loaded(name, self._load_s[name])
        self._adapters[name] = adapter
        logger.info(
            "model %s loaded in %.2fs",
            name,
            self._load_s[name],
            extra={"task": name, "load_s": self._load_s[name]},
        )

    def run(self) -> int:
        """Serve until asked to stop; returns the process's exit code."""
        from google.cloud import firestore, pubsub_v1  # type: ignore[attr-defined]

        tracing.configure_tracing("omni-worker", self.settings.traces_exporter)
        init_error_tracking(self.settings.sentry_dsn, "omni-worker")
        health = HealthServer(self.settings.http_host, self.settings.http_port, self._readiness)
        health.start()
        try:
            self.load_models()
            if self._stop.is_set():
                return 0
            settings = self.settings
            client = firestore.Client(project=settings.project)
            # One client, one lease and the same timeouts for jobs and a batch's chunks.
            attempts = {
                "timeout_s": settings.firestore_timeout_s,
                "lease_s": settings.job_lease_s,
                "result_ttl_s": settings.result_ttl_s,
            }
            rates = DrainRates()  # reported for the ingress's estimates (schemas/eta.py)
            processor = Processor(
                JobStore(
                    client,
                    settings.jobs_collection,
                    **attempts,
                    cache=CacheWrites(
                        client,
                        settings.result_ttl_s,
                        getattr(self._adapters.get("predict"), "latest_version", None),
                    ),
                ),
                # Test-only faults wrap the adapters; the pipeline never knows of them.
                faults.with_faults(self._adapters) if settings.fault_injection else self._adapters,
                task_timeout_s=settings.timeout_for,
                batch_policy=settings.batch_policy,
                worker_id=self.worker_id,
                project=settings.project,
                max_attempts=settings.max_attempts,
                retry_backoff_s=settings.retry_backoff_s,
                watch_interval_s=settings.watch_interval_s,
                chunks=ChunkStore(client, settings.batches_collection, **attempts),
                pacer=ChunkPacer(
                    client,
                    pubsub_v1.PublisherClient(),
                    Topics(settings.project, settings.jobs_topic),
                    settings.firestore_timeout_s,
                ),
                batch_share=settings.batch_share,
                rates=rates,
                chunk_cache=ChunkCache(client, settings.firestore_timeout_s, settings.result_ttl_s),
            )
            if settings.fault_injection:
                logger.warning("fault injection is ON (WORKER_FAULT_INJECTION=1): tests only")
            processor.start()
            self._processor = processor
            backlog = HeldBacklog(client, self.worker_id, settings.served_tasks())
            reporter = RateReporter(client, self.worker_id, rates, settings.rate_report_s, backlog)
            reporter.start()
            for task in settings.served_tasks():
                # Jobs and chunks on subscriptions of their own: a batch's chunks never take
                # the leases that single jobs' micro-batches need.
                leases = {
                    JOB_KIND: settings.leased_messages(task),
                    CHUNK_KIND: settings.chunk_messages,
                }
                for kind, max_messages in leases.items():
                    name = task_subscription(task, kind, settings.subscription_prefix)
                    consumer = Consumer(
                        task,
                        f"projects/{settings.project}/subscriptions/{name}",
                        processor,
                        max_messages=max_messages,
                        lease_extension_s=settings.lease_extension_s,
                        max_lease_s=settings.max_lease_s(),
                    )
                    consumer.start()
                    self._consumers.append(consumer)
            logger.info(
                "worker ready %.1fs after its process started",
                _process_age_s() or 0.0,
                extra={"models": self._load_s},
            )
            while not self._stop.is_set():
                for consumer in self._consumers:
                    error = consumer.wait(_WAIT_SLICE_S / len(self._consumers))
                    if error is not None or not consumer.running:
                        logger.error("streaming pull of %s ended: %r", consumer.name, error)
                        return 1
            reporter.stop()
            processor.drain()
            stop_all(self._consumers, settings.grace_s, processor.abandon, ABANDON_WAIT_S)
            processor.close()
            logger.info("worker stopped")
            return 0
        finally:
            health.stop()


def _rss_mb() -> float | None:
    """This process's resident memory, MiB (Linux), for operators and the benchmarks."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _process_age_s() -> float | None:
    """Seconds since this process started (Linux), interpreter start-up and imports included."""
    try:
        with open("/proc/self/stat") as stat:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as uptime:
            now_s = float(uptime.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(now_s - start_ticks / os.sysconf("SC_CLK_TCK"), 2)

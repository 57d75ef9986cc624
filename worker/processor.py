"""What happens to each delivery: parse, gather into a micro-batch, claim, run, write, then ack.

Each served task has a *lane* (``worker.pipeline.lanes``): deliveries of that task are gathered
into a micro-batch, claimed in one Firestore transaction, run as one model call, and their outcomes
written in one transaction, before each message is settled. Each message is settled exactly once,
after its outcome is durable in Firestore:

    parse ── bad ─────────────────────────────────────────────────▶ ack (poison; logged)
    claim ── missing / terminal / twice in one batch ─────────────▶ ack (nothing to do)
          ── held by a live attempt ──▶ back into the lane once its lease may have lapsed
    run   ── ok ─────────────────────▶ write succeeded ─────────────▶ ack
          ── PermanentError / bug / unserved task ──▶ write failed ─▶ ack
          ── timeout ────────────────▶ write failed (timeout) ──────▶ ack
          ── cancelled / lost lease ─────────────────────────────────▶ ack (the other writer won)
          ── TransientError ─────────▶ release (queued, last_error) ─▶ redeliver after a backoff
                                                                     (10 s doubling to 600 s); the
                                                                     dead-letter topic after the
                                                                     maximum deliveries
          ── shutdown past the grace ▶ release ──────────────────────▶ nack
    claimed but not started when the worker drains ▶ release (attempt given back) ▶ nack

The processor is the coordinator; each stage is a role of ``worker.pipeline``:

    handle ─▶ lane (lanes: gather) ─▶ claimer (stage 1) ─▶ runner (stage 2) ─▶ settler (stage 3)
              every Firestore call through hold (outages, and the shutdown's two stages)

A message is a job's or a batch chunk's (``schemas.messages.parse``); a chunk goes to its task's
chunk lane and runs as one unit (``worker.chunkrun``). A message of a kind or version this release
cannot read is not poison: it is left for another worker (a newer one, during a rollout), never
acked.

A batch that fails as a whole (one bad input can fail a model call for everyone) is run again one
job at a time, so one job's error never becomes its neighbours'. A job cancelled while its batch
runs stops the batch only if every job in it stopped; otherwise its result is simply not written.

Firestore being unreachable is not a task failure: the processor holds the messages (their leases
are extended by the client) and retries with backoff, so an outage cannot burn delivery attempts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from schemas.chunks import ChunkMessage
from schemas.messages import BATCH, UnknownMessage, parse
from worker import metrics
from worker.attempts import Held, StopReason, Watcher
from worker.chunkcache import ChunkCache
from worker.chunkpacer import ChunkPacer
from worker.chunkrun import ChunkInFlight, ChunkRunner
from worker.chunkstore import ChunkClaim, ChunkStoreLike
from worker.modellock import BATCH_SHARE, ModelLock
from worker.pipeline.claimer import Claimer
from worker.pipeline.delivery import Delivery, M, Message, Store
from worker.pipeline.hold import Hold
from worker.pipeline.lanes import Lane
from worker.pipeline.runner import LaneStats, Runner
from worker.pipeline.settler import Settler
from worker.rates import DrainRates
from worker.store import Claim
from worker.tasks import Adapter

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
"""The time limit of a task the catalogue does not know (it fails anyway, as unsupported)."""
UNKNOWN_MESSAGE_DELAY_S = 10
"""Seconds a message this release cannot read is left before Pub/Sub delivers it again (to any
worker: a newer one reads it). Not at once: every worker of this release would spin on it."""


class Processor:
    def __init__(
        self,
        store: Store,
        adapters: Mapping[str, Adapter],
        *,
        task_timeout_s: Callable[[str], float],
        batch_policy: Callable[[str], tuple[int, float]] = lambda _task: (1, 0.0),
        max_attempts: int = 5,
        retry_backoff_s: tuple[float, float] = (10.0, 600.0),
        watch_interval_s: float = 1.0,
        worker_id: str = "",
        project: str = "",
        chunks: ChunkStoreLike | None = None,
        pacer: ChunkPacer | None = None,
        batch_share: float = BATCH_SHARE,
        rates: DrainRates | None = None,
        chunk_cache: ChunkCache | None = None,
    ):
        self._store = store
        self._chunk_store = chunks
        self._task_timeout_s = task_timeout_s
        self.hold = Hold()
        self.watcher = Watcher(self._check, watch_interval_s, store.lease_s)
        # One model call at a time across every task (worker/modellock.py), jobs before chunks.
        # Claims and writes happen outside it.
        self._model_lock = ModelLock(batch_share)
        self._claimer = Claimer(
            store,
            hold=self.hold,
            watcher=self.watcher,
            timeout_for=self._timeout_for,
            worker_id=worker_id,
        )
        self._settler = Settler(
            store,
            hold=self.hold,
            watcher=self.watcher,
            timeout_for=self._timeout_for,
            max_attempts=max_attempts,
            retry_backoff_s=retry_backoff_s,
            project=project,
            rates=rates,
        )

        def runner(batch_class: bool, stats: dict[str, LaneStats] | None = None) -> Runner:
            return Runner(
                adapters,
                model_lock=self._model_lock,
                watcher=self.watcher,
                settler=self._settler,
                hold=self.hold,
                timeout_for=self._timeout_for,
                batch_class=batch_class,
                stats=stats,
            )

        interactive = runner(False)
        self.stats: dict[str, LaneStats] = interactive.stats
        # Jobs sent with "priority": "batch" take the same path in lanes of their own, whose model
        # calls wait as a chunk's do; one set of counters per task, whatever the class.
        runners = {False: interactive, True: runner(True, self.stats)}
        self._lanes, self._batch_job_lanes = (
            {
                task: Lane(
                    task,
                    *batch_policy(task),
                    claim=self._claimer.claim_batch,
                    run=runners[batch_class].run_batch,
                    kind="batch-" if batch_class else "",
                )
                for task in adapters
            }
            for batch_class in (False, True)
        )
        # One chunk lane per task: a chunk is a batch by itself, so its lane takes one at a
        # time, claiming the next while one runs.
        self._chunk_lanes: dict[str, Lane[ChunkMessage, ChunkInFlight]] = {}
        if chunks is not None:
            chunk_runner = ChunkRunner(
                chunks,
                adapters,
                model_lock=self._model_lock,
                watcher=self.watcher,
                settle_pool=self._settler.pool,
                hold=self.hold,
                retry_when_free=self._claimer.retry_when_free,
                timeout_for=self._timeout_for,
                batch_size=lambda task: batch_policy(task)[0],
                backoff_s=self._settler.backoff_s,
                draining=self.hold.draining,
                max_attempts=max_attempts,
                worker_id=worker_id,
                pacer=pacer,
                rates=rates,
                cache=chunk_cache,
            )
            self._chunk_lanes = {
                task: Lane(
                    task,
                    1,
                    0.0,
                    claim=chunk_runner.claim_batch,
                    run=chunk_runner.run_batch,
                    kind="chunk-",
                )
                for task in adapters
            }
        # Every delivery not yet settled: close() nacks what is left, so no callback waits forever.
        self._outstanding: set[Delivery[Any]] = set()
        self._outstanding_lock = threading.Lock()  # guards _outstanding (callbacks, settlers)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.watcher.start()
        for lane in self._lanes.values():
            lane.start()
        for lane in self._batch_job_lanes.values():
            lane.start()
        for chunk_lane in self._chunk_lanes.values():
            chunk_lane.start()

    def drain(self) -> None:
        """Shutdown, stage one: start no new job; jobs in hand go on. Deliveries waiting for
        another attempt's lease are nacked now rather than when their timer fires."""
        self.hold.drain()
        self._claimer.drain()

    def abandon(self) -> None:
        """Shutdown, stage two (the grace period is over): jobs in hand stop at their next safe
        point, are released and nacked; Firestore retries give up."""
        self.hold.abandon()
        stopped = self.watcher.stop_all(StopReason.SHUTDOWN)
        if stopped:
            logger.warning("grace period over: releasing %d job(s) in hand", stopped)

    def close(self) -> None:
        for lane in self._lanes.values():
            lane.close()
        for lane in self._batch_job_lanes.values():
            lane.close()
        for chunk_lane in self._chunk_lanes.values():
            chunk_lane.close()
        self._settler.close()
        self.watcher.close()
        with self._outstanding_lock:
            left = list(self._outstanding)
        if left:
            logger.warning("closing with %d message(s) unsettled; nacked", len(left))
        for delivery in left:
            delivery.nack()

    # -- messages --------------------------------------------------------------------------------
    def handle(self, messages: Sequence[Message]) -> None:
        """Put each message in its task's lane; return once every one of them is settled."""
        deliveries = []
        for message in messages:
            delivery = self._accept(message)
            if delivery is not None:
                deliveries.append(delivery)
        for delivery in deliveries:
            delivery.wait()

    def _accept(self, message: Message) -> Delivery[Any] | None:
        try:
            parsed = parse(message.data, dict(message.attributes))
        except UnknownMessage as exc:
            # A kind or version of a newer release (a rollout in progress): never poison.
            logger.warning(
                "message %s of an unknown kind or version left for another worker: %s",
                message.message_id,
                exc,
            )
            message.drop()  # out of lease management, then a nack that takes effect later
            message.modify_ack_deadline(UNKNOWN_MESSAGE_DELAY_S)
            return None
        except ValueError as exc:
            logger.error("unreadable message %s acked: %s", message.message_id, exc)
            message.ack()
            return None
        if isinstance(parsed, ChunkMessage):
            return self._enter(Delivery(message, parsed, self._forget), self._chunk_lanes)
        lanes = self._batch_job_lanes if parsed.priority == BATCH else self._lanes
        return self._enter(Delivery(message, parsed, self._forget), lanes)

    def _enter(self, delivery: Delivery[M], lanes: Mapping[str, Lane[M, Any]]) -> Delivery[M]:
        with self._outstanding_lock:
            self._outstanding.add(delivery)
        task = delivery.job.task
        lane = lanes.get(task)
        if self.hold.draining.is_set():
            delivery.nack()  # not started: another worker takes it at once
        elif lane is None:
            # Only a misrouted message gets here (the consumer passes its own task's only), or
            # a chunk to a worker built without a chunk store (tests); whoever serves the task
            # has its own copy, or will get this one back.
            logger.error("no lane for task %r; message nacked", task)
            delivery.nack()
        else:
            lane.put(delivery)
        return delivery

    def _check(self, claims: Sequence[Held]) -> dict[str, str]:
        """The watcher's check: jobs in the job store, chunks in the chunk store."""
        jobs = [claim for claim in claims if isinstance(claim, Claim)]
        chunks = [claim for claim in claims if isinstance(claim, ChunkClaim)]
        verdicts = self._store.check(jobs) if jobs else {}
        if chunks and self._chunk_store is not None:
            verdicts.update(self._chunk_store.check(chunks))
        return verdicts

    def _forget(self, delivery: Delivery[Any]) -> None:
        with self._outstanding_lock:
            self._outstanding.discard(delivery)
        metrics.settled(delivery)

    def _timeout_for(self, task: str) -> float:
        try:
            return self._task_timeout_s(task)
        except Exception:  # noqa: BLE001 - a task unknown here still gets a limit
            return DEFAULT_TIMEOUT_S

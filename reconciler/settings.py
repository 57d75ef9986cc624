"""Reconciler settings, read once from the environment into one frozen object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from common.settings import DEFAULT_PROJECT, ConfigError, project_from
from schemas.jobs import DEFAULT_RESULT_TTL_S, parse_duration, result_ttl_from_env
from schemas.messages import DEFAULT_TOPIC

INTERVAL_S = 60.0
"""``RECONCILE_INTERVAL_S``: seconds between sweeps."""
STALE_AFTER_S = 600.0
"""``RECONCILE_STALE_AFTER_S``: a job (or a batch's chunk) ``queued`` this long without a change,
or ``running`` this long past its lease, is re-published. Above the subscription's longest retry
backoff (600 s), so a job waiting for its redelivery is not re-published, and best above the usual
time a backlog takes to drain (a re-published job that was only waiting in the backlog runs once
anyway, but costs a duplicate delivery). Each further re-publish of a job waits twice as long."""
GIVE_UP_AFTER_S = 24 * 3600.0
"""``RECONCILE_GIVE_UP_AFTER_S``: a job (chunk) still ``queued`` this long after it was created
ends ``failed`` with code ``not_dispatched`` (a chunk: each of its queued items)."""
BATCH_LIMIT = 500
"""Jobs (chunks, open batches) looked at per query per sweep."""


@dataclass(frozen=True)
class ReconcilerSettings:
    project: str = DEFAULT_PROJECT
    jobs_topic: str = DEFAULT_TOPIC  # the topics' base name (schemas.messages.task_topic)
    jobs_collection: str = "jobs"
    batches_collection: str = "batches"
    interval_s: float = INTERVAL_S
    stale_after_s: float = STALE_AFTER_S
    give_up_after_s: float = GIVE_UP_AFTER_S
    result_ttl_s: float = DEFAULT_RESULT_TTL_S
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReconcilerSettings:
        env = os.environ if environ is None else environ
        try:
            return cls(
                project=project_from(env),
                jobs_topic=env.get("JOBS_TOPIC") or DEFAULT_TOPIC,
                jobs_collection=env.get("JOBS_COLLECTION") or "jobs",
                batches_collection=env.get("BATCHES_COLLECTION") or "batches",
                interval_s=parse_duration(env.get("RECONCILE_INTERVAL_S") or str(INTERVAL_S)),
                stale_after_s=parse_duration(
                    env.get("RECONCILE_STALE_AFTER_S") or str(STALE_AFTER_S)
                ),
                give_up_after_s=parse_duration(
                    env.get("RECONCILE_GIVE_UP_AFTER_S") or str(GIVE_UP_AFTER_S)
                ),
                result_ttl_s=result_ttl_from_env(env),
                log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

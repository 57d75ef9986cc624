"""Ingress settings, read once from the environment into one frozen object.

The Google clients read ``PUBSUB_EMULATOR_HOST`` and ``FIRESTORE_EMULATOR_HOST`` themselves when
they are built; every other variable is read here and nowhere else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from common.settings import DEFAULT_PROJECT, ConfigError, project_from
from common.tracing import EXPORTERS
from ingress.limits.ratelimit import LimitPolicy, limits_from
from schemas.chunks import CHUNK_ITEMS, DEFAULT_CHUNK_ITEMS, DEFAULT_WINDOW_CHUNKS
from schemas.jobs import DEFAULT_RESULT_TTL_S, result_ttl_from_env
from schemas.messages import DEFAULT_TOPIC
from schemas.webhooks import WEBHOOK_DELIVERIES_COLLECTION

MAX_BODY_BYTES = 1024 * 1024
"""Largest ``POST /v1/jobs`` body, bytes: a job and its input live in one Firestore document."""
MAX_BATCH_BODY_BYTES = 32 * 1024 * 1024
"""Largest ``POST /v1/batches`` body, bytes: Cloud Run's HTTP/1 request limit."""
MAX_JSON_BATCH_BODY_BYTES = 2 * 1024 * 1024
"""Largest ``POST /v1/batches`` body in the JSON form, bytes. Parsed whole, a JSON document costs
about 24 bytes of Python heap per byte of tiny objects; large batches go through NDJSON, which is
read a line at a time (docs/limits.md)."""
MAX_BATCH_ITEMS = 100_000
"""Most items in one batch (the contract asks for at least 100,000)."""
LARGE_UPLOAD_BYTES = 1024 * 1024
"""A batch body over this many bytes (or of unknown length) is a large upload: it takes one of
``MAX_LARGE_UPLOADS`` slots while it is read and accepted."""
MAX_LARGE_UPLOADS = 1
"""Large uploads one ingress process accepts at once; more get 503 with ``Retry-After``. Each may
hold up to ``MAX_BATCH_BODY_BYTES`` of items in memory (peak figures in docs/limits.md)."""
UPLOAD_MIN_BYTES_PER_S = 256 * 1024
"""The slowest a batch body may arrive, bytes a second of waiting for the client (2 Mbit/s: a
32 MiB body within ~140 s); slower gets 408. Without it, one client trickling a large upload
holds the process's upload slot, and a thread, for as long as it likes
(``ingress/limits/uploads.py``)."""
UPLOAD_GRACE_S = 10.0
"""Seconds a batch body may fall behind ``UPLOAD_MIN_BYTES_PER_S`` (so, at its start, the longest
it may go without a byte)."""
PUBLISH_TIMEOUT_S = 10.0
"""Seconds a publish may take before the client gets 503 and the job is marked failed."""
FIRESTORE_TIMEOUT_S = 10.0
"""Seconds one Firestore call may take, retries included, before the client gets 503."""
SSE_PING_S = 15.0
"""Seconds between ``: ping`` comments on a quiet event stream (they also reveal a gone client)."""
RETRY_AFTER_S = 5
"""``Retry-After`` on a 503, seconds."""
STREAM_MAX_LIFETIME_S = 3300.0
"""Seconds a job event stream stays open before the server closes it cleanly (the client resumes
with ``Last-Event-ID``): under Cloud Run's 3,600 s request timeout, so the server, not the
platform, ends it."""
OPEN_BATCH_TTL_S = 24 * 3600.0
"""Seconds an open batch takes parts; one not closed by then is cancelled (by the reconciler)."""
INSTANCES_COLLECTION = "ingress_instances"
"""Where each serving process keeps its heartbeat document (``ingress/limits/instances.py``)."""
HEARTBEAT_S = 10.0
"""Seconds between a process's heartbeats (``INSTANCE_HEARTBEAT_S``)."""
HEALTH_CACHE_S = 5.0
"""Seconds one process reuses its last backend check for ``/health``: a flood of unauthenticated
probes costs at most one Pub/Sub and one Firestore call per interval."""


def _chunk_items(env: Mapping[str, str]) -> tuple[tuple[str, int], ...]:
    """Items per chunk for each task: ``CHUNK_ITEMS`` (schemas/chunks.py), each overridden by
    ``CHUNK_ITEMS_<TASK>`` (``CHUNK_ITEMS_EMBED=512``)."""
    sizes = dict(CHUNK_ITEMS)
    for task in CHUNK_ITEMS:
        value = env.get(f"CHUNK_ITEMS_{task.upper()}")
        if value:
            try:
                sizes[task] = int(value)
            except ValueError:
                sizes[task] = 0
            if sizes[task] <= 0:
                raise ConfigError(f"CHUNK_ITEMS_{task.upper()} must be a positive number")
    return tuple(sorted(sizes.items()))


def _tenant_limits(env: Mapping[str, str]) -> LimitPolicy:
    """``TENANT_LIMITS`` (JSON) or ``TENANT_LIMITS_FILE`` (the same JSON, mounted); a bad policy
    stops the ingress at start, naming the entry."""
    try:
        return limits_from(env.get("TENANT_LIMITS"), env.get("TENANT_LIMITS_FILE") or None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class Settings:
    project: str = DEFAULT_PROJECT
    jobs_topic: str = DEFAULT_TOPIC
    """The topics' base name: task *t*'s jobs go to ``<jobs_topic>-t``, its chunks to
    ``<jobs_topic>-t-chunks`` (``schemas.messages.task_topic``)."""
    jobs_collection: str = "jobs"
    batches_collection: str = "batches"
    tenant_limits: LimitPolicy = LimitPolicy()
    """Per-tenant request rates and jobs-in-flight caps (``ingress/limits/ratelimit.py``); none by
    default."""
    instance_heartbeat_s: float = HEARTBEAT_S
    instances_collection: str = INSTANCES_COLLECTION
    api_keys: str = ""
    api_keys_file: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    max_batch_body_bytes: int = MAX_BATCH_BODY_BYTES
    max_json_batch_body_bytes: int = MAX_JSON_BATCH_BODY_BYTES
    max_batch_items: int = MAX_BATCH_ITEMS
    large_upload_bytes: int = LARGE_UPLOAD_BYTES
    max_large_uploads: int = MAX_LARGE_UPLOADS
    upload_min_bytes_per_s: int = UPLOAD_MIN_BYTES_PER_S
    upload_grace_s: float = UPLOAD_GRACE_S
    publish_timeout_s: float = PUBLISH_TIMEOUT_S
    firestore_timeout_s: float = FIRESTORE_TIMEOUT_S
    retry_after_s: int = RETRY_AFTER_S
    sse_ping_s: float = SSE_PING_S
    stream_max_lifetime_s: float = STREAM_MAX_LIFETIME_S
    health_cache_s: float = HEALTH_CACHE_S
    open_batch_ttl_s: float = OPEN_BATCH_TTL_S
    chunk_items: tuple[tuple[str, int], ...] = tuple(sorted(CHUNK_ITEMS.items()))
    """Items per chunk, per task (``chunk_items_for``)."""
    metrics_port: int | None = None
    """A second port serving only ``/metrics`` (Cloud Run's collector sidecar scrapes it); None
    serves ``/metrics`` on the main port, as ``make run`` and the tests do."""
    result_ttl_s: float = DEFAULT_RESULT_TTL_S
    batch_window_chunks: int = DEFAULT_WINDOW_CHUNKS
    """``BATCH_WINDOW_CHUNKS``: chunks of one batch published at once (``common/pacing.py``)."""
    result_cache: bool = True
    """``RESULT_CACHE``: ``off`` answers no job from the result cache (results are still
    written to it, so turning it on again finds them)."""
    log_level: str = "INFO"
    traces_exporter: str = "none"
    sentry_dsn: str | None = None
    webhook_secrets: str = ""
    webhook_secrets_file: str | None = None
    webhook_allow_private: bool = False
    webhook_deliveries_collection: str = WEBHOOK_DELIVERIES_COLLECTION

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        tenant_limits = _tenant_limits(env)
        chunk_items = _chunk_items(env)
        try:
            settings = cls(
                project=project_from(env),
                jobs_topic=env.get("JOBS_TOPIC") or DEFAULT_TOPIC,
                jobs_collection=env.get("JOBS_COLLECTION") or "jobs",
                batches_collection=env.get("BATCHES_COLLECTION") or "batches",
                tenant_limits=tenant_limits,
                instance_heartbeat_s=float(env.get("INSTANCE_HEARTBEAT_S") or HEARTBEAT_S),
                instances_collection=env.get("INSTANCES_COLLECTION") or INSTANCES_COLLECTION,
                api_keys=env.get("API_KEYS", ""),
                api_keys_file=env.get("API_KEYS_FILE") or None,
                max_body_bytes=int(env.get("MAX_BODY_BYTES") or MAX_BODY_BYTES),
                max_batch_body_bytes=int(env.get("MAX_BATCH_BODY_BYTES") or MAX_BATCH_BODY_BYTES),
                max_json_batch_body_bytes=int(
                    env.get("MAX_JSON_BATCH_BODY_BYTES") or MAX_JSON_BATCH_BODY_BYTES
                ),
                max_batch_items=int(env.get("MAX_BATCH_ITEMS") or MAX_BATCH_ITEMS),
                large_upload_bytes=int(env.get("LARGE_UPLOAD_BYTES") or LARGE_UPLOAD_BYTES),
                max_large_uploads=int(env.get("MAX_LARGE_UPLOADS") or MAX_LARGE_UPLOADS),
                upload_min_bytes_per_s=int(
                    env.get("UPLOAD_MIN_BYTES_PER_S") or UPLOAD_MIN_BYTES_PER_S
                ),
                upload_grace_s=float(env.get("UPLOAD_GRACE_S") or UPLOAD_GRACE_S),
                publish_timeout_s=float(env.get("PUBLISH_TIMEOUT_S") or PUBLISH_TIMEOUT_S),
                firestore_timeout_s=float(env.get("FIRESTORE_TIMEOUT_S") or FIRESTORE_TIMEOUT_S),
                result_ttl_s=result_ttl_from_env(env),
                batch_window_chunks=int(env.get("BATCH_WINDOW_CHUNKS") or DEFAULT_WINDOW_CHUNKS),
                result_cache=(env.get("RESULT_CACHE") or "on").lower() not in {"off", "0", "false"},
                sse_ping_s=float(env.get("SSE_PING_S") or SSE_PING_S),
                stream_max_lifetime_s=float(
                    env.get("STREAM_MAX_LIFETIME_S") or STREAM_MAX_LIFETIME_S
                ),
                health_cache_s=float(env.get("HEALTH_CACHE_S") or HEALTH_CACHE_S),
                open_batch_ttl_s=float(env.get("OPEN_BATCH_TTL_S") or OPEN_BATCH_TTL_S),
                chunk_items=chunk_items,
                metrics_port=int(env["METRICS_PORT"]) if env.get("METRICS_PORT") else None,
                log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
                traces_exporter=(env.get("OTEL_TRACES_EXPORTER") or "none").lower(),
                sentry_dsn=env.get("SENTRY_DSN") or None,
                webhook_secrets=env.get("WEBHOOK_SECRETS", ""),
                webhook_secrets_file=env.get("WEBHOOK_SECRETS_FILE") or None,
                webhook_allow_private=env.get("WEBHOOK_ALLOW_PRIVATE", "") == "1",
                webhook_deliveries_collection=env.get("WEBHOOK_DELIVERIES_COLLECTION")
                or WEBHOOK_DELIVERIES_COLLECTION,
            )
        except ValueError as exc:
            raise ConfigError(f"bad number in the environment: {exc}") from exc
        if not settings.api_keys and not settings.api_keys_file:
            raise ConfigError(
                "set API_KEYS (tenant:key,...) or API_KEYS_FILE (tenant:sha256hex lines)"
            )
        if settings.batch_window_chunks <= 0:
            raise ConfigError("BATCH_WINDOW_CHUNKS must be a positive number of chunks")
        if min(settings.max_body_bytes, settings.max_batch_body_bytes) <= 0 or (
            settings.max_batch_items <= 0 or settings.publish_timeout_s <= 0
        ):
            raise ConfigError(
                "MAX_BODY_BYTES, MAX_BATCH_BODY_BYTES, MAX_BATCH_ITEMS and PUBLISH_TIMEOUT_S "
                "must be positive"
            )
        if (
            min(
                settings.max_json_batch_body_bytes,
                settings.large_upload_bytes,
                settings.max_large_uploads,
                settings.upload_min_bytes_per_s,
                settings.upload_grace_s,
            )
            <= 0
        ):
            raise ConfigError(
                "MAX_JSON_BATCH_BODY_BYTES, LARGE_UPLOAD_BYTES, MAX_LARGE_UPLOADS, "
                "UPLOAD_MIN_BYTES_PER_S and UPLOAD_GRACE_S must be positive"
            )
        if settings.stream_max_lifetime_s <= 0 or settings.health_cache_s < 0:
            raise ConfigError(
                "STREAM_MAX_LIFETIME_S must be positive and HEALTH_CACHE_S not negative"
            )
        if settings.metrics_port is not None and not 0 < settings.metrics_port < 65536:
            raise ConfigError("METRICS_PORT must be a TCP port (1..65535)")
        if settings.traces_exporter not in EXPORTERS:
            raise ConfigError(f"OTEL_TRACES_EXPORTER must be one of {', '.join(EXPORTERS)}")
        if not 0 < settings.instance_heartbeat_s <= 300:
            raise ConfigError("INSTANCE_HEARTBEAT_S must be more than 0 and at most 300 seconds")
        if settings.open_batch_ttl_s <= 0:
            raise ConfigError("OPEN_BATCH_TTL_S must be positive")
        if not 0 < settings.sse_ping_s <= 60:
            raise ConfigError("SSE_PING_S must be more than 0 and at most 60 seconds")
        return settings

    def chunk_items_for(self, task: str) -> int:
        """Most items in one chunk of ``task``."""
        return dict(self.chunk_items).get(task, DEFAULT_CHUNK_ITEMS)

    def __repr__(self) -> str:
        # Keys must never reach a log line, even through a debug print of the settings.
        return (
            f"Settings(project={self.project!r}, jobs_topic={self.jobs_topic!r}, "
            f"api_keys={'[set]' if self.api_keys else '[unset]'}, "
            f"api_keys_file={self.api_keys_file!r})"
        )

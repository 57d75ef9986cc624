"""Worker settings, read once from the environment into one frozen object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from schemas.messages import DEFAULT_SUBSCRIPTION

DEFAULT_PROJECT = "omni-local"
MAX_LEASED_MESSAGES = 8
"""FlowControl ``max_messages``: jobs leased at once. Few on purpose: every leased-but-idle message
is a job stranded (until its lease lapses) if this worker dies."""
LEASE_EXTENSION_S = 10
"""FlowControl ``max_duration_per_lease_extension``, seconds. The client keeps extending while a job
runs; a short extension brings a dead worker's messages back in seconds, not minutes."""
CALLBACK_THREADS = 4
"""Threads running message callbacks (Firestore I/O overlaps the model's work)."""
SHUTDOWN_GRACE_S = 25.0
"""Seconds the first SIGTERM gives in-hand jobs to finish (below k8s' 30 s default grace)."""
FIRESTORE_TIMEOUT_S = 10.0
"""Seconds one Firestore operation may take, retries included."""


class ConfigError(ValueError):
    """The environment does not describe a runnable worker."""


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class WorkerSettings:
    project: str = DEFAULT_PROJECT
    subscription: str = DEFAULT_SUBSCRIPTION
    jobs_collection: str = "jobs"
    http_host: str = "127.0.0.1"
    http_port: int = 8090
    device: str = "auto"
    torch_threads: int = 0  # 0: every CPU this process may use
    max_leased_messages: int = MAX_LEASED_MESSAGES
    lease_extension_s: int = LEASE_EXTENSION_S
    callback_threads: int = CALLBACK_THREADS
    shutdown_grace_s: float = SHUTDOWN_GRACE_S
    firestore_timeout_s: float = FIRESTORE_TIMEOUT_S
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if environ is None else environ
        try:
            settings = cls(
                project=env.get("GOOGLE_CLOUD_PROJECT") or DEFAULT_PROJECT,
                subscription=env.get("JOBS_SUBSCRIPTION") or DEFAULT_SUBSCRIPTION,
                jobs_collection=env.get("JOBS_COLLECTION") or "jobs",
                http_host=env.get("WORKER_HTTP_HOST") or "127.0.0.1",
                http_port=int(env.get("WORKER_HTTP_PORT") or 8090),
                device=(env.get("WORKER_DEVICE") or "auto").lower(),
                torch_threads=int(env.get("TORCH_THREADS") or 0) or _cpus(),
                max_leased_messages=int(env.get("WORKER_MAX_MESSAGES") or MAX_LEASED_MESSAGES),
                shutdown_grace_s=float(env.get("WORKER_SHUTDOWN_GRACE_S") or SHUTDOWN_GRACE_S),
                log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
            )
        except ValueError as exc:
            raise ConfigError(f"bad number in the environment: {exc}") from exc
        if settings.device not in ("auto", "cpu", "cuda"):
            raise ConfigError("WORKER_DEVICE must be auto, cpu or cuda")
        if not 0 <= settings.http_port < 65536 or settings.max_leased_messages < 1:
            raise ConfigError("WORKER_HTTP_PORT or WORKER_MAX_MESSAGES is out of range")
        return settings

"""Webhook sender settings, read once from the environment into one frozen object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from common.settings import DEFAULT_PROJECT, ConfigError, project_from
from schemas.jobs import parse_duration
from schemas.webhooks import DEFAULT_BACKOFF_S, WEBHOOK_DELIVERIES_COLLECTION, parse_backoff

POLL_S = 1.0
"""``WEBHOOK_POLL_S``: seconds between looks for newly finished jobs and due attempts; the most a
webhook waits before its first attempt (plus the POST itself)."""
BATCH_CHECK_S = 5.0
"""``WEBHOOK_BATCH_CHECK_S``: seconds between two looks at one running batch's counts."""
TIMEOUT_S = 10.0
"""``WEBHOOK_TIMEOUT_S``: seconds one attempt may take in all: the lookup, the connect, sending
the request and receiving the response's status line."""
CONCURRENCY = 16
"""``WEBHOOK_CONCURRENCY``: attempts in flight at once, per sender process."""
TENANT_IN_FLIGHT = 2
"""``WEBHOOK_TENANT_IN_FLIGHT``: attempts one tenant may have in flight at once, per sender
process (a count of attempts; ledgers without a tenant count as one tenant). Below
``WEBHOOK_CONCURRENCY``, so a tenant whose receivers answer only at the deadline holds at most
this many slots (2 of 16) and the others keep sending; seven such tenants still leave two."""
LEASE_MARGIN_S = 50.0
"""A claim's lease is the attempt's deadline plus this, seconds: the payload's read and the
outcome's write (10 s each at most) and room to spare. Past the lease another sender may take the
attempt again, which cannot happen while the first still sends: its deadline came first."""


@dataclass(frozen=True)
class SenderSettings:
    project: str = DEFAULT_PROJECT
    jobs_collection: str = "jobs"
    batches_collection: str = "batches"
    deliveries_collection: str = WEBHOOK_DELIVERIES_COLLECTION
    secrets: str = ""
    secrets_file: str | None = None
    allow_private: bool = False
    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S
    poll_s: float = POLL_S
    batch_check_s: float = BATCH_CHECK_S
    timeout_s: float = TIMEOUT_S
    concurrency: int = CONCURRENCY
    tenant_in_flight: int = TENANT_IN_FLIGHT
    log_level: str = "INFO"
    http_host: str = "0.0.0.0"  # noqa: S104 (a pod's probes and scrapes come from outside it)
    http_port: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SenderSettings:
        env = os.environ if environ is None else environ
        try:
            settings = cls(
                project=project_from(env),
                jobs_collection=env.get("JOBS_COLLECTION") or "jobs",
                batches_collection=env.get("BATCHES_COLLECTION") or "batches",
                deliveries_collection=env.get("WEBHOOK_DELIVERIES_COLLECTION")
                or WEBHOOK_DELIVERIES_COLLECTION,
                secrets=env.get("WEBHOOK_SECRETS", ""),
                secrets_file=env.get("WEBHOOK_SECRETS_FILE") or None,
                allow_private=env.get("WEBHOOK_ALLOW_PRIVATE", "") == "1",
                backoff_s=parse_backoff(env.get("WEBHOOK_BACKOFF_S")),
                poll_s=parse_duration(env.get("WEBHOOK_POLL_S") or str(POLL_S)),
                batch_check_s=parse_duration(
                    env.get("WEBHOOK_BATCH_CHECK_S") or str(BATCH_CHECK_S)
                ),
                timeout_s=parse_duration(env.get("WEBHOOK_TIMEOUT_S") or str(TIMEOUT_S)),
                concurrency=int(env.get("WEBHOOK_CONCURRENCY") or CONCURRENCY),
                tenant_in_flight=int(env.get("WEBHOOK_TENANT_IN_FLIGHT") or TENANT_IN_FLIGHT),
                log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
                http_host=env.get("WEBHOOK_HTTP_HOST") or "0.0.0.0",  # noqa: S104
                http_port=int(env["WEBHOOK_HTTP_PORT"]) if env.get("WEBHOOK_HTTP_PORT") else None,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if settings.poll_s <= 0 or settings.timeout_s <= 0 or settings.concurrency <= 0:
            raise ConfigError(
                "WEBHOOK_POLL_S, WEBHOOK_TIMEOUT_S and WEBHOOK_CONCURRENCY must be positive"
            )
        if not 1 <= settings.tenant_in_flight < settings.concurrency:
            raise ConfigError(
                "WEBHOOK_TENANT_IN_FLIGHT must be at least 1 and below WEBHOOK_CONCURRENCY "
                f"({settings.concurrency}), so one tenant leaves room for the others"
            )
        return settings

    @property
    def lease_s(self) -> float:
        """How long a sender holds an attempt it took (``delivering``)."""
        return self.timeout_s + LEASE_MARGIN_S

    def __repr__(self) -> str:
        # Signing secrets must never reach a log line.
        return (
            f"SenderSettings(project={self.project!r}, allow_private={self.allow_private}, "
            f"secrets={'[set]' if self.secrets else '[unset]'}, "
            f"secrets_file={self.secrets_file!r})"
        )

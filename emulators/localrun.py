"""``make run``: the whole pipeline on this machine, under one supervisor.

Starts both emulators, provisions them, starts ``WORKERS`` workers, the dead-letter function
(functions-framework on ``127.0.0.1:$DEADLETTER_PORT``, fed by a push subscription), the reconciler,
the webhook sender and the ingress (gunicorn on ``127.0.0.1:$PORT``), prints the URL and a working
``curl``, and stops everything on Ctrl-C or SIGTERM.

Once the stack is up, a worker, the reconciler, the webhook sender, the dead-letter function or
the ingress's gunicorn master that dies is started again after a back-off, as Kubernetes would
(``emulators/supervisor.py``); an emulator that dies ends the stack, since a new one would start
empty. While the stack starts, a part that exits before it answers (an emulator, the dead-letter
function, the ingress, a worker) ends it with its error: a configuration mistake shows at once
instead of as a crash loop.

``local_stack()`` is the same sequence as a context manager, for benchmarks and tests; it
restarts nothing (nothing watches the children while the block runs).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from common.settings import DEFAULT_PROJECT, project_from
from emulators.process import (
    START_TIMEOUT_S,
    firestore_command,
    listener_on,
    pubsub_command,
    wait_until_answers,
)
from emulators.provision import Resources, provision
from emulators.supervisor import Supervisor

ROOT = Path(__file__).resolve().parent.parent
DEV_API_KEYS = "dev:dev-key-123"
"""Used by ``make run`` (and only by it) when ``API_KEYS`` is unset."""
DEV_WEBHOOK_SECRETS = "dev:whsec_b21uaS1kZXYtd2ViaG9vay1zZWNyZXQtMzItYnl0ZXM="  # noqa: S105
"""For local development only: tenant ``dev``'s webhook signing secret under ``make run`` (and
docker-compose.yml) when ``WEBHOOK_SECRETS`` is unset. Published in the repository, so it proves
nothing; a real deployment mounts its secrets from Secret Manager (``WEBHOOK_SECRETS_FILE``).
``whsec_`` + base64 of the 32 bytes ``omni-dev-webhook-secret-32-bytes``."""
WORKER_READY_TIMEOUT_S = 180.0
"""Seconds a worker may take to load its models and start pulling."""

TIER_EMULATORS, TIER_WORKERS, TIER_INGRESS = 0, 1, 2


@dataclass(frozen=True)
class StackConfig:
    project: str = DEFAULT_PROJECT
    host: str = "127.0.0.1"
    port: int = 8080
    pubsub_port: int = 8085
    firestore_port: int = 8086
    workers: int = 1
    worker_http_port: int = 8090
    deadletter_port: int = 8087
    api_keys: str = DEV_API_KEYS
    webhook_secrets: str = DEV_WEBHOOK_SECRETS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StackConfig:
        env = os.environ if environ is None else environ
        return cls(
            project=project_from(env),
            port=int(env.get("PORT") or 8080),
            pubsub_port=int(env.get("PUBSUB_PORT") or 8085),
            firestore_port=int(env.get("FIRESTORE_PORT") or 8086),
            workers=int(env.get("WORKERS") or 1),
            worker_http_port=int(env.get("WORKER_HTTP_PORT") or 8090),
            deadletter_port=int(env.get("DEADLETTER_PORT") or 8087),
            api_keys=env.get("API_KEYS") or DEV_API_KEYS,
            webhook_secrets=env.get("WEBHOOK_SECRETS") or DEV_WEBHOOK_SECRETS,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ports(self) -> dict[str, int]:
        named = {
            "PORT": self.port,
            "PUBSUB_PORT": self.pubsub_port,
            "FIRESTORE_PORT": self.firestore_port,
            "DEADLETTER_PORT": self.deadletter_port,
        }
        for i in range(self.workers):
            named[f"WORKER_HTTP_PORT+{i}"] = self.worker_http_port + i
        return named


def _check_ports_free(config: StackConfig) -> None:
    """Refuse to start when something already listens on one of the ports.

    Only a listener counts: the connections of a ``make run`` stopped a moment ago linger in
    TIME_WAIT for a minute, and every server of the stack binds through them (``listener_on``)."""
    for name, port in config.ports().items():
        if listener_on(config.host, port):
            raise SystemExit(
                f"port {port} ({name}) is in use: stop what holds it or set {name.split('+')[0]}"
            )


def deadletter_command(host: str, port: int) -> list[str]:
    """functions-framework serving the dead-letter function, as Cloud Run functions would."""
    return [
        *(sys.executable, "-m", "functions_framework"),
        *("--source", str(ROOT / "deadletter" / "main.py"), "--target", "on_dead_letter"),
        *("--signature-type", "cloudevent", "--host", host, "--port", str(port)),
    ]


def _first_key(api_keys: str) -> str:
    return api_keys.split(",")[0].partition(":")[2]


def _tenants(pairs: str) -> set[str]:
    """The tenants named in ``tenant:value`` pairs (never the values)."""
    return {pair.partition(":")[0].strip() for pair in pairs.split(",") if pair.strip()}


def start_stack(config: StackConfig, supervisor: Supervisor, data_dir: str) -> None:
    """Start every part under ``supervisor`` and return once the ingress and workers are ready.

    Raises ``RuntimeError`` if a part exits before it answers (restarts begin with
    ``Supervisor.wait``), ``InterruptedError`` if a signal arrives first."""
    _check_ports_free(config)
    pubsub = supervisor.spawn(
        "pubsub",
        pubsub_command(config.host, config.pubsub_port, config.project, data_dir),
        tier=TIER_EMULATORS,
    )
    firestore = supervisor.spawn(
        "firestore", firestore_command(config.host, config.firestore_port), tier=TIER_EMULATORS
    )
    pubsub_host = f"{config.host}:{config.pubsub_port}"
    firestore_host = f"{config.host}:{config.firestore_port}"
    stopping = lambda: supervisor.stopping  # noqa: E731
    wait_until_answers(
        f"http://{pubsub_host}/", pubsub.process, START_TIMEOUT_S, "pubsub", stopping
    )
    wait_until_answers(
        f"http://{firestore_host}/", firestore.process, START_TIMEOUT_S, "firestore", stopping
    )

    env = {
        **os.environ,
        "GOOGLE_CLOUD_PROJECT": config.project,
        "PUBSUB_EMULATOR_HOST": pubsub_host,
        "FIRESTORE_EMULATOR_HOST": firestore_host,
        "API_KEYS": config.api_keys,
        # The ingress refuses a webhook for a tenant with no signing secret, and the sender signs
        # with the same ones. WEBHOOK_ALLOW_PRIVATE=1 (development only) lets both accept a
        # receiver on this machine, e.g. http://127.0.0.1:9000/hook.
        "WEBHOOK_SECRETS": config.webhook_secrets,
        "WEBHOOK_ALLOW_PRIVATE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    deadletter_url = f"http://{config.host}:{config.deadletter_port}/"
    deadletter = supervisor.spawn(
        "deadletter",
        deadletter_command(config.host, config.deadletter_port),
        env=env,
        tier=TIER_WORKERS,
        restart=True,
    )
    # A CloudEvent function answers a bare GET with 405: that is "up".
    wait_until_answers(
        deadletter_url, deadletter.process, START_TIMEOUT_S, "deadletter", stopping, status=405
    )
    resources = Resources(project=config.project, dead_letter_endpoint=deadletter_url)
    provision(resources, emulator_host=pubsub_host)
    supervisor.log(
        "provisioned",
        topics=resources.topic + "-*",
        subscriptions=resources.subscription_prefix + "-*",
    )
    for name in ("reconciler", "webhooks"):
        supervisor.spawn(
            name, [sys.executable, "-m", name], env=env, tier=TIER_WORKERS, restart=True
        )
    supervisor.log(
        "webhook signing secrets: "
        + (
            "the development one for tenant dev (DEV_WEBHOOK_SECRETS in emulators/localrun.py)"
            if config.webhook_secrets == DEV_WEBHOOK_SECRETS
            else "from WEBHOOK_SECRETS"
        ),
        tenants=sorted(_tenants(config.webhook_secrets)),
    )

    workers = []
    for i in range(config.workers):
        worker_env = {**env, "WORKER_HTTP_PORT": str(config.worker_http_port + i)}
        workers.append(
            supervisor.spawn(
                f"worker-{i}",
                [sys.executable, "-m", "worker"],
                env=worker_env,  # a restarted worker serves on the same port
                tier=TIER_WORKERS,
                restart=True,
            )
        )
    ingress_env = {**env, "HOST": config.host, "PORT": str(config.port)}
    ingress = supervisor.spawn(
        "ingress",
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "ingress" / "gunicorn.conf.py")],
        env=ingress_env,
        tier=TIER_INGRESS,
        restart=True,
    )
    wait_until_answers(
        f"{config.url}/health", ingress.process, START_TIMEOUT_S, "ingress", stopping
    )
    for i, worker in enumerate(workers):
        port = config.worker_http_port + i
        wait_until_answers(
            f"http://{config.host}:{port}/readyz",
            worker.process,
            WORKER_READY_TIMEOUT_S,
            worker.name,
            stopping,
        )


def curl_example(config: StackConfig) -> str:
    key = _first_key(config.api_keys)
    return (
        f"curl -s -X POST {config.url}/v1/jobs -H 'X-API-Key: {key}' "
        "-H 'Content-Type: application/json' "
        """-d '{"task": "embed", "input": {"texts": ["a cat", "a kitten"]}}'"""
    )


@contextlib.contextmanager
def local_stack(config: StackConfig, output: IO[str]) -> Iterator[StackConfig]:
    """The whole pipeline, ready, for the duration of the block; stopped on every way out."""
    supervisor = Supervisor(output)
    with tempfile.TemporaryDirectory(prefix="omni-run-") as data_dir:
        try:
            start_stack(config, supervisor, data_dir)
            yield config
        finally:
            supervisor.stop_all()


def main() -> int:
    config = StackConfig.from_env()
    supervisor = Supervisor()
    supervisor.install_signal_handlers()
    reason = "unexpected error"
    with tempfile.TemporaryDirectory(prefix="omni-run-") as data_dir:
        try:
            start_stack(config, supervisor, data_dir)
            example = curl_example(config)
            supervisor.log(
                f"Omni is up at {config.url}. Try: {example} — or open {config.url}/console",
                url=config.url,
                curl=example,
                console=f"{config.url}/console",
            )
            reason = supervisor.wait()
        except InterruptedError:
            reason = supervisor.stop_reason
        except (RuntimeError, TimeoutError, OSError) as exc:
            reason = f"start failed: {exc}"
        finally:
            supervisor.log(f"stopping: {reason}")
            supervisor.stop_all()
    return 0 if reason.startswith("signal") else 1


if __name__ == "__main__":
    sys.exit(main())

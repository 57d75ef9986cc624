"""The running pipeline for integration tests: a real worker process and a real gunicorn ingress,
both on the session's emulators. Tests talk HTTP to the ingress, as a client would."""

from __future__ import annotations

import json
import secrets
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen
from typing import Any

import pytest

from emulators.localrun import ROOT
from emulators.process import free_port, stop_group, wait_until_answers
from tests.conftest import Emulators
from tests.support import json_lines, python_env

KEYS = {"tenant-a": "key-a-0123456789", "tenant-b": "key-b-0123456789"}
API_KEYS = ",".join(f"{tenant}:{key}" for tenant, key in KEYS.items())


@dataclass
class Service:
    process: Popen[bytes]
    url: str
    log_path: Path

    def log_lines(self) -> list[dict[str, Any]]:
        return json_lines(self.log_path)


def _start(
    name: str,
    argv: list[str],
    env: dict[str, str],
    ready_path: str,
    port: int,
    log_dir: Path,
    timeout_s: float,
) -> Service:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = Popen(
            argv, env=env, stdin=DEVNULL, stdout=log, stderr=STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(url + ready_path, process, timeout_s, name)
    except BaseException:
        stop_group(process, 10)
        raise
    return Service(process, url, log_path)


@pytest.fixture(scope="session")
def log_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="omni-test-logs-") as path:
        yield Path(path)


@pytest.fixture(scope="session")
def model_repository() -> Iterator[Path]:
    """The worker's ``MODEL_REPOSITORY``: empty at start; tests publish models into it."""
    with tempfile.TemporaryDirectory(prefix="omni-models-") as path:
        yield Path(path)


@pytest.fixture(scope="session")
def worker(emulators: Emulators, log_dir: Path, model_repository: Path) -> Iterator[Service]:
    """``python -m worker`` with every real model, pulling from the session's subscription."""
    port = free_port()
    env = python_env(
        **emulators.env(), WORKER_HTTP_PORT=str(port), MODEL_REPOSITORY=str(model_repository)
    )
    service = _start("worker", [sys.executable, "-m", "worker"], env, "/readyz", port, log_dir, 180)
    yield service
    stop_group(service.process, 30)


@pytest.fixture(scope="session")
def ingress(emulators: Emulators, log_dir: Path) -> Iterator[Service]:
    """gunicorn serving ``ingress:create_app()`` from its config file, two tenants' keys set."""
    service = start_ingress(emulators, log_dir, "ingress")
    yield service
    stop_group(service.process, 30)


SSE_PING_S = 1.0
"""The test ingress pings quiet event streams every second, so the tests see pings quickly."""


def start_ingress(emulators: Emulators, log_dir: Path, name: str, **extra: str) -> Service:
    """A gunicorn ingress on a free port; ``extra`` adds to its environment or overrides it
    (``API_KEYS`` included)."""
    port = free_port()
    defaults = {"API_KEYS": API_KEYS, "SSE_PING_S": str(SSE_PING_S)}
    env = python_env(**emulators.env(), **{**defaults, **extra}, HOST="127.0.0.1", PORT=str(port))
    argv = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "ingress" / "gunicorn.conf.py")]
    return _start(name, argv, env, "/health", port, log_dir, 60)


def fresh_tenants(*names: str) -> dict[str, str]:
    """Fresh tenant names for one test, by role (a random suffix): their counters, buckets and
    stream counts start empty. Each one's key is ``tenant_key(tenant)``."""
    suffix = secrets.token_hex(3)
    return {name: f"{name}-{suffix}" for name in names}


def tenant_key(tenant: str) -> dict[str, str]:
    """The API key header of a tenant of ``limited_ingress``."""
    return {"X-API-Key": f"key-{tenant}"}


@contextmanager
def limited_ingress(
    emulators: Emulators,
    log_dir: Path,
    name: str,
    names: list[str],
    limits: dict[str, Any],
    **extra: str,
) -> Iterator[Service]:
    """A gunicorn ingress whose tenants are ``names`` (key ``key-<tenant>``) under ``limits``
    (``TENANT_LIMITS``)."""
    service = start_ingress(
        emulators,
        log_dir,
        name,
        API_KEYS=",".join(f"{tenant}:key-{tenant}" for tenant in names),
        TENANT_LIMITS=json.dumps(limits),
        **extra,
    )
    try:
        yield service
    finally:
        stop_group(service.process, 30)


def sink_topic_named(emulators: Emulators, name: str) -> str:
    """A topic no subscription reads (created if missing): an ingress publishing to it leaves
    its jobs queued, and no worker of the session spends time on them."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    publisher = pubsub_v1.PublisherClient()
    with suppress(gexc.AlreadyExists):
        publisher.create_topic(name=publisher.topic_path(emulators.project, name), timeout=30)
    return name

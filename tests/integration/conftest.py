"""The running pipeline for integration tests: a real worker process and a real gunicorn ingress,
both on the session's emulators. Tests talk HTTP to the ingress, as a client would. What the tests
start on their own (another ingress, topics, chunks) is in tests/support/stacks.py and
tests/support/batchdocs.py."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulators.process import free_port, stop_group
from tests.support import python_env
from tests.support.stacks import Emulators, Service, start_ingress, start_service


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
    argv = [sys.executable, "-m", "worker"]
    service = start_service("worker", argv, env, "/readyz", port, log_dir, 180)
    yield service
    stop_group(service.process, 30)


@pytest.fixture(scope="session")
def ingress(emulators: Emulators, log_dir: Path) -> Iterator[Service]:
    """gunicorn serving ``ingress:create_app()`` from its config file, two tenants' keys set."""
    service = start_ingress(emulators, log_dir, "ingress")
    yield service
    stop_group(service.process, 30)

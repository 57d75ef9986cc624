"""Fixtures shared by every test layer.

Integration and end-to-end tests run against the official emulators, started here on free ports
(never the developer's 8085/8086) and stopped by process group when the session ends, whatever
way it ends. What the tests import (``Emulators``, helpers, fakes) is in tests/support/.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from emulators.process import running_emulators
from emulators.provision import Resources, provision
from emulators.reset import reset_firestore
from tests.support.stacks import PROJECT, Emulators


def pytest_configure(config: pytest.Config) -> None:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt.

    pytest runs fixture teardowns (which stop the emulators, workers and make run stacks by
    process group) only when it unwinds; a CI timeout's SIGTERM would otherwise kill it outright
    and leave every child, each in a session of its own, running.
    """

    def _interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)


@pytest.fixture(scope="session")
def emulators() -> Iterator[Emulators]:
    """Both emulators for the whole session, provisioned; this process's clients point at them."""
    keys = ("GOOGLE_CLOUD_PROJECT", "PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST")
    saved = {key: os.environ.get(key) for key in keys}
    with running_emulators(PROJECT) as (pubsub, firestore):
        running = Emulators(PROJECT, pubsub, firestore)
        os.environ.update(running.env())
        provision(Resources(project=PROJECT))
        try:
            yield running
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture
def clean_firestore(emulators: Emulators) -> Emulators:
    """A Firestore with no documents at the start of the test."""
    reset_firestore(emulators.firestore.address, emulators.project)
    return emulators

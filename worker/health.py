"""``/healthz`` (alive), ``/readyz`` (models loaded and pulling) and ``/metrics`` (Prometheus,
``worker/metrics.py``) on ``WORKER_HTTP_PORT``.

A stdlib server on a daemon thread (``common/healthserver.py``): the worker has no web
framework and needs none for three routes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from common.healthserver import HealthServer as _Server
from common.healthserver import json_answer
from worker import metrics

logger = logging.getLogger(__name__)


class HealthServer(_Server):
    """Serves the worker's state; ``readiness`` returns (ready, details)."""

    def __init__(self, host: str, port: int, readiness: Callable[[], tuple[bool, dict[str, Any]]]):
        def ready() -> tuple[int, bytes, str]:
            is_ready, details = readiness()
            return json_answer(200 if is_ready else 503, {"ready": is_ready, **details})

        super().__init__(
            host,
            port,
            {
                "/healthz": lambda: json_answer(200, {"ok": True, "service": "worker"}),
                "/readyz": ready,
                "/metrics": lambda: (200, *metrics.exposition()),
            },
            "omni-health",
        )

    def start(self) -> None:
        super().start()
        logger.info("health on port %s", self.port)

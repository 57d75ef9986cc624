"""``python -m webhooks``: deliver job and batch webhooks until SIGTERM or SIGINT.

With ``WEBHOOK_HTTP_PORT`` set, ``/healthz`` and ``/metrics`` are served on it
(``webhooks/health.py``).

Exit status: 0 after a clean stop (the attempts in hand finish first), 2 when the environment is
not a valid configuration.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from types import FrameType

from common.jsonlog import configure_logging
from common.settings import ConfigError
from schemas.webhooks import SigningSecrets
from webhooks.settings import SenderSettings


def main() -> int:
    try:
        settings = SenderSettings.from_env()
        signing = SigningSecrets.from_files(settings.secrets, settings.secrets_file)
    except (ConfigError, OSError, ValueError) as exc:
        print(json.dumps({"severity": "CRITICAL", "message": f"bad configuration: {exc}"}))
        return 2
    configure_logging(settings.log_level)
    # httpx logs every request with its whole URL, which may carry a receiver's token: the
    # sender's own "webhook attempt" line says what happened, without the URL.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    from google.cloud import firestore

    from webhooks.health import HealthServer, Heartbeat
    from webhooks.outbox import Outbox
    from webhooks.sender import Sender

    heartbeat = Heartbeat()
    sender = Sender(
        Outbox(firestore.Client(project=settings.project), settings),
        signing,
        settings,
        heartbeat=heartbeat,
    )
    server = None
    if settings.http_port is not None:
        server = HealthServer(settings.http_host, settings.http_port, heartbeat)
        server.start()
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        sender.run(stop)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

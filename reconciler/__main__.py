"""``python -m reconciler [--once]``: sweep every ``RECONCILE_INTERVAL_S`` (or once, for a cron).

SIGTERM or SIGINT ends the loop between sweeps. Exit status: 0 after a clean stop, 2 when the
environment is not a valid configuration, 1 when ``--once`` failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from types import FrameType

from common.jsonlog import configure_logging
from common.settings import ConfigError
from reconciler.settings import ReconcilerSettings

logger = logging.getLogger("reconciler")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="one sweep, then exit")
    args = parser.parse_args(argv)
    try:
        settings = ReconcilerSettings.from_env()
    except ConfigError as exc:
        print(json.dumps({"severity": "CRITICAL", "message": f"bad configuration: {exc}"}))
        return 2
    configure_logging(settings.log_level)

    from google.cloud import firestore, pubsub_v1  # type: ignore[attr-defined]

    from reconciler.sweep import Reconciler

    reconciler = Reconciler(
        settings, firestore.Client(project=settings.project), pubsub_v1.PublisherClient()
    )
    if args.once:
        try:
            reconciler.sweep()
        except Exception:
            logger.exception("sweep failed")
            return 1
        return 0

    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %s: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    logger.info(
        "reconciler running",
        extra={"interval_s": settings.interval_s, "stale_after_s": settings.stale_after_s},
    )
    while not stop.is_set():
        try:
            reconciler.sweep()
        except Exception:
            # A failed sweep (Firestore down) is retried at the next interval.
            logger.exception("sweep failed")
        stop.wait(settings.interval_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())

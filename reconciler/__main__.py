"""``python -m reconciler [--once]``: sweep every ``RECONCILE_INTERVAL_S`` (or once, for a cron).
``python -m reconciler redrive ...``: re-queue failed jobs in bulk (``reconciler/redrive.py``).

SIGTERM or SIGINT ends the loop between sweeps. Exit status: 0 after a clean stop (or a redrive),
2 when the environment or the arguments are not valid, 1 when ``--once`` or a redrive failed.
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


def _settings() -> ReconcilerSettings | None:
    """The settings, logging configured; None (said as a JSON line) when they are not valid."""
    try:
        settings = ReconcilerSettings.from_env()
    except ConfigError as exc:
        print(json.dumps({"severity": "CRITICAL", "message": f"bad configuration: {exc}"}))
        return None
    configure_logging(settings.log_level)
    return settings


def redrive(argv: list[str]) -> int:
    from reconciler.redrive import DEFAULT_CODES, MAX_JOBS, Redriver, Selection, parse_time

    parser = argparse.ArgumentParser(
        prog="python -m reconciler redrive",
        description="Re-queue failed jobs as new jobs (retry_of), each once; see "
        "reconciler/redrive.py.",
    )
    parser.add_argument("--task", required=True)
    parser.add_argument("--since", required=True, type=parse_time, help="failed at or after")
    parser.add_argument("--until", type=parse_time, help="failed before")
    parser.add_argument(
        "--error",
        action="append",
        dest="codes",
        help=f"an error code to redrive (repeatable; default {', '.join(DEFAULT_CODES)})",
    )
    parser.add_argument("--tenant")
    parser.add_argument("--limit", type=int, default=MAX_JOBS)
    parser.add_argument("--dry-run", action="store_true", help="list them, change nothing")
    args = parser.parse_args(argv)
    settings = _settings()
    if settings is None:
        return 2
    selection = Selection(
        task=args.task,
        since=args.since,
        until=args.until,
        codes=tuple(args.codes or DEFAULT_CODES),
        tenant=args.tenant,
        limit=args.limit,
    )

    from google.cloud import firestore, pubsub_v1  # type: ignore[attr-defined]

    redriver = Redriver(
        settings, firestore.Client(project=settings.project), pubsub_v1.PublisherClient()
    )
    count = 0
    try:
        for line in redriver.run(selection, args.dry_run):
            print(json.dumps(line), flush=True)
            count += 1
    except Exception:
        logger.exception("redrive stopped after %d jobs; running it again goes on", count)
        return 1
    summary = "would_redrive" if args.dry_run else "redriven"
    print(json.dumps({summary: count}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["redrive"]:
        return redrive(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="one sweep, then exit")
    args = parser.parse_args(argv)
    settings = _settings()
    if settings is None:
        return 2

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

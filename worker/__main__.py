"""``python -m worker``: pull jobs, run them on real models, write results to Firestore."""

from __future__ import annotations

import sys

from schemas.jsonlog import configure_logging
from worker.main import Worker
from worker.settings import WorkerSettings


def main() -> int:
    settings = WorkerSettings.from_env()
    configure_logging(settings.log_level)
    worker = Worker(settings)
    worker.install_signal_handlers()
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())

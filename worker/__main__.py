"""``python -m worker``: pull jobs, run them on real models, write results to Firestore."""

from __future__ import annotations

import logging
import os
import sys

# Before any model library loads OpenMP: its threads sleep between ops instead of spinning. The
# worker's own threads (Pub/Sub, Firestore, settling) share the cores with torch; spinning OpenMP
# threads starved them (bench/throughput.py: a backlog drained at 86 jobs/s spinning, 141 passive,
# on 2 cores beside the emulators). OMP_WAIT_POLICY=ACTIVE restores spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from common.jsonlog import capture_stderr, configure_logging
from common.settings import ConfigError
from worker.main import Worker
from worker.settings import WorkerSettings

EXIT_CONFIG = 2
"""Exit status for a bad environment (nothing will fix it but a new configuration)."""


def main() -> int:
    # Logging first, so that even a configuration error is one JSON line.
    configure_logging(os.environ.get("LOG_LEVEL") or "INFO")
    try:
        settings = WorkerSettings.from_env()
    except ConfigError as exc:
        logging.getLogger("worker").error("configuration error: %s", exc)
        return EXIT_CONFIG
    configure_logging(settings.log_level)
    # Model libraries (TensorFlow's C++ runtime above all) print plain text to stderr.
    capture_stderr()
    worker = Worker(settings)
    worker.install_signal_handlers()
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())

"""gunicorn settings for the ingress: ``gunicorn -c ingress/gunicorn.conf.py``.

gthread workers: requests are I/O-bound (Firestore, Pub/Sub) and the Google clients are thread-safe;
gevent and gRPC have a long history of hangs. An open event stream or long poll holds one thread
for its whole life, so a worker's ``threads`` is its cap on open streams: the default is sized for
1,000 of them (threads start only when needed). docs/streaming.md has the measurements behind it.
No ``preload_app``: gRPC channels must be created after the fork, which the app factory does in
each worker.

Metrics: every worker writes its Prometheus metrics to files in ``PROMETHEUS_MULTIPROC_DIR``, which
the master empties (or creates) at start, before anything imports prometheus-client; a dead
worker's live gauges are dropped in ``child_exit``. With ``METRICS_PORT`` set, the master serves
them, merged, on ``127.0.0.1:METRICS_PORT`` (``when_ready``) and the app's port has no
``/metrics``. See ``ingress/metrics.py``.
"""

import os
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

wsgi_app = "ingress:create_app()"
# Containers set HOST=0.0.0.0; anything else stays on loopback unless told otherwise.
bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = int(os.environ.get("GUNICORN_THREADS", "1100"))
# gthread stops accepting at worker_connections: room for every thread plus idle keep-alives.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", str(threads + 100)))
# With gthread, timeout is the worker heartbeat, not a per-request limit.
timeout = 60
graceful_timeout = 20
preload_app = False
# gunicorn 27 opens a control socket at a fixed path; two copies side by side would fight over it.
control_socket_disable = True
# The app logs each request as JSON itself (ingress.access); gunicorn's own lines go through the
# same formatter so every line this process prints is one JSON object.
accesslog = None
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "common.jsonlog.JsonFormatter"}},
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stdout",
        }
    },
    "root": {"level": "INFO", "handlers": ["stdout"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
        "gunicorn.access": {"level": "WARNING", "handlers": ["stdout"], "propagate": False},
    },
}


def on_starting(server):  # type: ignore[no-untyped-def]
    """Check the configuration once, in the master, before any worker boots.

    Without this, each worker would fail on its own and gunicorn would print the reason as a bare
    line; here a bad environment ends gunicorn with one JSON log line that says what to fix.
    """
    import sys

    # First: the imports below load prometheus-client, which picks its mode from the environment.
    server.omni_own_multiproc_dir = prepare_multiproc_dir(os.environ)

    from common.settings import ConfigError
    from ingress.auth import KeyRing
    from ingress.settings import Settings

    try:
        settings = Settings.from_env()
        KeyRing.from_files(settings.api_keys, settings.api_keys_file)
    except ConfigError as exc:
        server.log.error("configuration error: %s", exc)
        on_exit(server)
        sys.exit(3)
    server.omni_metrics_port = settings.metrics_port


def when_ready(server):  # type: ignore[no-untyped-def]
    """With ``METRICS_PORT``, serve every worker's metrics, merged, from the master on
    127.0.0.1 (prometheus-client's multiprocess pattern): the master outlives any worker, and
    the app's public port then has no ``/metrics`` (``create_app``)."""
    import sys

    port = getattr(server, "omni_metrics_port", None)
    if port is None:
        return
    from ingress.metrics import METRICS_HOST, serve_merged

    try:
        server.omni_metrics_server = serve_merged(port)
    except OSError as exc:
        server.log.error("cannot serve metrics on %s:%s: %s", METRICS_HOST, port, exc)
        on_exit(server)
        sys.exit(3)
    server.log.info("serving metrics on http://%s:%s/metrics", METRICS_HOST, port)


def post_fork(server, worker):  # type: ignore[no-untyped-def]
    """A worker does not serve the master's metrics port: close its inherited copy of the
    listening socket, so the port is free once the master has gone."""
    metrics_server = getattr(server, "omni_metrics_server", None)
    if metrics_server is not None:
        metrics_server.socket.close()


def prepare_multiproc_dir(environ):  # type: ignore[no-untyped-def]
    """Make ``PROMETHEUS_MULTIPROC_DIR`` an existing directory with no metric files in it, and
    return the directory if it was made here (None when the operator named it).

    Files left by an earlier run would be merged into this one's metrics. Only ``*.db`` files
    are removed from a directory the operator named (prometheus-client's documented practice);
    when the variable is unset, a fresh temporary directory is made and exported, so the
    workers forked later inherit it.
    """
    import tempfile

    named = environ.get(MULTIPROC_ENV)
    if not named:
        made = tempfile.mkdtemp(prefix="omni-prometheus-")
        environ[MULTIPROC_ENV] = made
        return made
    directory = Path(named)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    return None


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """A worker ended (however it ended): its live gauges (open event streams) stop counting.
    Its counters and histograms stay: they are totals of what it served."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # type: ignore[no-untyped-def]
    """Remove the metrics directory if ``on_starting`` made it (never one the operator named)."""
    import shutil

    made = getattr(server, "omni_own_multiproc_dir", None)
    if made:
        shutil.rmtree(made, ignore_errors=True)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """On SIGTERM, also end this worker's open event streams and long polls.

    gunicorn's graceful stop waits for every request in flight, and an event stream never ends by
    itself: without this, each shutdown would hold until ``graceful_timeout`` and then cut the
    streams mid-event. Ended here, each client resumes elsewhere with ``Last-Event-ID``.
    """
    import queue
    import signal
    import threading

    from ingress.services import EXTENSION

    watcher = worker.wsgi.extensions[EXTENSION].watcher
    previous = signal.getsignal(signal.SIGTERM)
    stop: queue.SimpleQueue[None] = queue.SimpleQueue()

    def close_streams() -> None:
        stop.get()
        watcher.close()

    # Started now, not from the handler: a signal handler should only do what cannot fail or block.
    threading.Thread(target=close_streams, name="omni-close-streams", daemon=True).start()

    def on_term(signum, frame):  # type: ignore[no-untyped-def]
        try:
            if callable(previous):
                previous(signum, frame)  # gunicorn's own graceful stop comes first
        finally:
            stop.put(None)  # SimpleQueue.put is safe in a signal handler

    signal.signal(signal.SIGTERM, on_term)


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """A worker is leaving (after its graceful stop): take it out of the instance registry now,
    so the other instances stop counting it at their next beat (``ingress/limits/instances.py``)."""
    from ingress.services import EXTENSION

    services = getattr(worker.wsgi, "extensions", {}).get(EXTENSION)
    if services is not None and services.instances is not None:
        services.instances.stop()

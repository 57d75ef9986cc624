"""gunicorn settings for the ingress: ``gunicorn -c ingress/gunicorn.conf.py``.

gthread workers: requests are I/O-bound (Firestore, Pub/Sub) and the Google clients are thread-safe;
gevent and gRPC have a long history of hangs. No ``preload_app``: gRPC channels must be created
after the fork, which the app factory does in each worker.
"""

import os

wsgi_app = "ingress:create_app()"
# Containers set HOST=0.0.0.0; anything else stays on loopback unless told otherwise.
bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
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
    "formatters": {"json": {"()": "schemas.jsonlog.JsonFormatter"}},
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

    from ingress.auth import KeyRing
    from ingress.settings import ConfigError, Settings

    try:
        settings = Settings.from_env()
        KeyRing.from_files(settings.api_keys, settings.api_keys_file)
    except ConfigError as exc:
        server.log.error("configuration error: %s", exc)
        sys.exit(3)

"""``/console``: a live page to try the pipeline in a browser — pick a task, submit, watch events.

Plain HTML, CSS and JavaScript from ``ingress/static/console/``, no build step. The page holds the
API key in memory only and sends it as the ``X-API-Key`` header; events are read with ``fetch``
streaming rather than ``EventSource``, which cannot send headers, so the key never appears in a URL
(docs/streaming.md, "The console"). The page itself needs no key: it is the same for everyone.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, redirect, send_from_directory

STATIC = Path(__file__).parent.parent / "static" / "console"
# Everything the page loads comes from this origin; no inline script or style can run.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

bp = Blueprint("console", __name__)


def _static(name: str) -> Response:
    response = send_from_directory(STATIC, name, max_age=0)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/console")
def page() -> Response:
    return _static("index.html")


@bp.get("/console/")
def page_slash() -> Response:
    return redirect("/console", code=308)  # type: ignore[return-value]


@bp.get("/console/<any('app.js', 'app.css'):name>")
def asset(name: str) -> Response:
    return _static(name)

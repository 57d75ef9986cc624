"""Optional Sentry error reporting (``SENTRY_DSN``), as the seed's gateway had: off unless the
variable is set, and then for errors only (traces go to OpenTelemetry, ``common/tracing.py``).

Events never carry an API key or a request body: Sentry's own scrubber already removes
``X-API-Key`` and ``Authorization``, and ``before_send`` drops every request header, cookie and
body, whatever the integrations collected (inputs are the tenants' data).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def init_error_tracking(dsn: str | None, service: str, environment: str | None = None) -> bool:
    """Start Sentry when ``dsn`` is set; returns whether it was started."""
    if not dsn:
        return False
    import sentry_sdk

    sentry_sdk.init(
        dsn=dsn,
        environment=environment or "production",
        server_name=service,
        traces_sample_rate=0.0,
        send_default_pii=False,
        include_local_variables=False,  # a frame's locals may hold a key or an input
        before_send=_scrubbed,
    )
    sentry_sdk.set_tag("service", service)
    logger.info("Sentry error reporting on", extra={"service": service})
    return True


def _scrubbed(event: Any, _hint: Any) -> Any:
    request = event.get("request")
    if isinstance(request, dict):
        for field in ("headers", "cookies", "data", "query_string", "env"):
            request.pop(field, None)
    return event

"""The submit-time check of a job's or a batch's ``webhook`` URL (``schemas/webhooks.py``)."""

from __future__ import annotations

from flask import g

from ingress.errors import ValidationFailed
from ingress.services import services
from schemas.errors import ProblemItem
from schemas.webhooks import checked_url, url_refusal


def checked_webhook(url: str | None, loc: list[str | int]) -> str | None:
    """``url`` once it may be a webhook for the calling tenant; 422 naming ``loc`` otherwise.

    Only the form and literal addresses are checked here (no DNS lookup on the request path);
    the sender checks every address the host resolves to before each attempt."""
    if url is None:
        return None
    settings = services().settings
    try:
        checked_url(url)
    except ValueError as exc:
        raise ValidationFailed([ProblemItem(loc=loc, msg=str(exc))]) from None
    reason = url_refusal(url, settings.webhook_allow_private)
    if reason is None and g.tenant not in services().signing:
        reason = "this tenant has no webhook signing secret; ask the operator for one"
    if reason is not None:
        raise ValidationFailed([ProblemItem(loc=loc, msg=reason)])
    return url

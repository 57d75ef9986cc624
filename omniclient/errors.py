"""The exceptions ``omniclient`` raises on purpose, one tree:

    OmniClientError               anything this client raises on purpose
    ├── MissingApiKey             no key given and none in OMNI_API_KEY
    ├── OmniError                 the API answered non-2xx (parsed from problem+json)
    └── OmniConnectionError       no answer: refused, reset, timed out, a stream that kept breaking

``OmniClient._send`` (omniclient/session.py) translates httpx's transport errors into these.
"""

from __future__ import annotations

from typing import Any

import httpx


class OmniClientError(Exception):
    """Base of every error this client raises on purpose."""


class MissingApiKey(OmniClientError):
    """No API key was given and ``OMNI_API_KEY`` is unset."""


class OmniConnectionError(OmniClientError):
    """The API could not be reached, or a connection to it kept breaking."""


class OmniError(OmniClientError):
    """The API answered non-2xx. Fields come from its ``application/problem+json`` body."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        body: Any = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors or []
        self.body = body
        super().__init__(f"{status} {title}: {detail}" if detail else f"{status} {title}")

    @classmethod
    def from_response(cls, response: httpx.Response) -> OmniError:
        """Parse a problem+json body; any other body (a proxy's HTML page) keeps its raw text."""
        title = response.reason_phrase or "Error"
        try:
            body: Any = response.json()
        except ValueError:
            return cls(response.status_code, title, body=response.text)
        if not isinstance(body, dict):
            return cls(response.status_code, title, body=body)
        errors = body.get("errors")
        return cls(
            status=int(body.get("status") or response.status_code),
            title=str(body.get("title") or title),
            detail=body.get("detail"),
            errors=[e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else [],
            body=body,
        )

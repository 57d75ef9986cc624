"""The ingress's exception tree, and the one handler that turns it into problem+json.

    ApiError                      status  when
    ├── BadRequest                400     the body is not valid JSON
    ├── Unauthorized              401     no key, or an unknown one
    ├── NotFound                  404     no such resource for this tenant
    ├── MethodNotAllowed          405     (from werkzeug, mapped below)
    ├── RequestTimeout            408     a batch body arriving too slowly, or stalled
    ├── Conflict                  409     state conflict, idempotency mismatch
    ├── PayloadTooLarge           413     body over the limit; a batch over the jobs-in-flight cap
    ├── UnsupportedMediaType      415     not JSON
    ├── ValidationFailed          422     input fails the task's schema, unknown task
    ├── TooManyRequests           429     over the tenant's rate or jobs-in-flight cap; Retry-After
    └── ServiceUnavailable        503     Pub/Sub or Firestore unreachable; carries Retry-After

Below the views, stores and the publisher raise outcomes of their own, which views turn into
the answers above (``StoreUnavailable`` and ``PublishFailed`` into 503 through
``services.unavailable``):

    StoreUnavailable (RuntimeError)   Firestore did not answer in time, or cannot serve now
    StoreRejected (ValueError)        Firestore refused the document itself: the input's fault
    AlreadyFinished                   a job or item is already terminal; carries its document

Google errors become these in one place, ``common/googleapi.py``, with ``raise ... from``;
anything else that escapes a view is a bug: logged with its stack, answered 500 without details.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from flask import Flask, Response, json
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from schemas.errors import PROBLEM_CONTENT_TYPE, Problem, ProblemItem

logger = logging.getLogger(__name__)


class StoreUnavailable(RuntimeError):
    """Firestore did not answer in time, or answered that it cannot serve now."""


class StoreRejected(ValueError):
    """Firestore refused the document itself (too deep, too large): the input's fault."""


class AlreadyFinished(Exception):
    """The job (or item) is in a terminal state; ``doc`` is what it holds."""

    def __init__(self, doc: dict[str, Any]):
        super().__init__(doc.get("status"))
        self.doc = doc


class ApiError(Exception):
    status: int = 500
    title: str = "Internal Server Error"
    slug: str = "internal"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ):
        super().__init__(detail or self.title)
        self.detail = detail
        self.headers = headers or {}
        if status is not None:
            self.status = status

    def problem(self) -> Problem:
        return Problem(
            type=f"/problems/{self.slug}", title=self.title, status=self.status, detail=self.detail
        )


class BadRequest(ApiError):
    status, title, slug = 400, "Bad Request", "bad-request"


class Unauthorized(ApiError):
    status, title, slug = 401, "Unauthorized", "unauthorized"

    def __init__(self, detail: str | None = None):
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="omni"'})


class NotFound(ApiError):
    status, title, slug = 404, "Not Found", "not-found"


class MethodNotAllowed(ApiError):
    status, title, slug = 405, "Method Not Allowed", "method-not-allowed"


class RequestTimeout(ApiError):
    status, title, slug = 408, "Request Timeout", "request-timeout"


class Conflict(ApiError):
    status, title, slug = 409, "Conflict", "conflict"


class PayloadTooLarge(ApiError):
    status, title, slug = 413, "Payload Too Large", "payload-too-large"


class UnsupportedMediaType(ApiError):
    status, title, slug = 415, "Unsupported Media Type", "unsupported-media-type"


MAX_REPORTED_ERRORS = 20
"""Validation errors listed in one 422 (``errors``); its ``detail`` says how many there were."""


class ValidationFailed(ApiError):
    status, title, slug = 422, "Unprocessable Content", "validation-failed"

    def __init__(self, errors: Sequence[ProblemItem], detail: str | None = None):
        super().__init__(detail or "; ".join(f"{_dotted(e.loc)}: {e.msg}" for e in errors))
        self.errors = list(errors)

    @classmethod
    def from_pydantic(cls, exc: ValidationError, prefix: Sequence[str | int]) -> ValidationFailed:
        """The first ``MAX_REPORTED_ERRORS`` of pydantic's errors; the detail says how many there
        were. A 1 MiB body can hold 100,000 bad ``metadata`` values: listing each would answer
        megabytes."""
        errors = exc.errors(include_url=False, include_input=False)
        items = [
            ProblemItem(loc=[*prefix, *error["loc"]], msg=error["msg"])
            for error in errors[:MAX_REPORTED_ERRORS]
        ]
        if len(errors) <= MAX_REPORTED_ERRORS:
            return cls(items)
        listed = "; ".join(f"{_dotted(e.loc)}: {e.msg}" for e in items[:3])
        return cls(items, f"{len(errors)} problems, the first {len(items)} listed: {listed}; ...")

    def problem(self) -> Problem:
        problem = super().problem()
        problem.errors = self.errors
        return problem


class TooManyRequests(ApiError):
    status, title, slug = 429, "Too Many Requests", "too-many-requests"

    def __init__(self, detail: str, retry_after_s: int, headers: dict[str, str] | None = None):
        super().__init__(detail, headers={**(headers or {}), "Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


class ServiceUnavailable(ApiError):
    status, title, slug = 503, "Service Unavailable", "service-unavailable"

    def __init__(self, detail: str, retry_after_s: int):
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


def _dotted(loc: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in loc)


_FROM_WERKZEUG: dict[int, type[ApiError]] = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


def problem_response(error: ApiError) -> Response:
    body: dict[str, Any] = error.problem().to_json_dict()
    response = Response(json.dumps(body), status=error.status, mimetype=PROBLEM_CONTENT_TYPE)
    response.headers.update(error.headers)
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        if error.status >= 500:
            logger.warning("answering %s: %s", error.status, error.detail)
        return problem_response(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        mapped = _FROM_WERKZEUG.get(error.code or 500)
        if mapped is None:
            return problem_response(ApiError(error.description, status=error.code or 500))
        translated = mapped(error.description)
        if isinstance(translated, MethodNotAllowed) and error.valid_methods:  # type: ignore[attr-defined]
            translated.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
        return problem_response(translated)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        logger.exception("unhandled error")
        return problem_response(ApiError("an internal error occurred; it has been logged"))

"""common/googleapi.py: the one translation of Google API errors and the one transaction policy."""

from __future__ import annotations

from typing import Any

import pytest
from google.api_core import exceptions as gexc

from common.googleapi import (
    TRANSACTION_ATTEMPTS,
    AlreadyExists,
    BackendError,
    Invalid,
    Missing,
    PreconditionFailed,
    Refused,
    failing_as,
    run_transaction,
    translated,
)


class Down(RuntimeError):
    """A service's transient error, as ``StoreUnavailable`` is the ingress's."""


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (gexc.AlreadyExists("there"), AlreadyExists),
        (gexc.FailedPrecondition("changed"), PreconditionFailed),
        (gexc.NotFound("gone"), Missing),
        (gexc.InvalidArgument("too large"), Invalid),
        (gexc.PermissionDenied("no"), Refused),
        (gexc.ServiceUnavailable("down"), Down),
        (gexc.DeadlineExceeded("slow"), Down),
        (gexc.Aborted("lock"), Down),
        (gexc.RetryError("gave up", None), Down),
        (TimeoutError(), Down),
    ],
)
def test_each_google_error_becomes_one_of_ours(raised: Exception, expected: type) -> None:
    with pytest.raises(expected) as info, translated(Down, "job read"):
        raise raised
    assert info.value.__cause__ is raised


def test_a_transient_error_names_the_call_and_the_error() -> None:
    expected = r"^Firestore job read failed: ServiceUnavailable$"
    with pytest.raises(Down, match=expected), translated(Down, "job read"):
        raise gexc.ServiceUnavailable("down")


def test_final_errors_share_one_base_and_invalid_is_a_refusal() -> None:
    assert issubclass(Invalid, Refused)
    for error in (AlreadyExists, PreconditionFailed, Missing, Refused):
        assert issubclass(error, BackendError)
    assert not issubclass(Down, BackendError)


def test_errors_that_are_not_google_pass_through_untouched() -> None:
    mine = KeyError("mine")
    with pytest.raises(KeyError) as info, translated(Down, "job read"):
        raise mine
    assert info.value is mine


def test_failing_as_makes_every_google_error_and_a_timeout_the_one_given() -> None:
    for raised in (gexc.NotFound("no topic"), gexc.ServiceUnavailable("down"), TimeoutError()):
        with pytest.raises(Down, match=r"^publish failed: "), failing_as(Down, "publish"):
            raise raised


class _FakeClient:
    def __init__(self) -> None:
        self.max_attempts: list[int] = []

    def transaction(self, max_attempts: int) -> str:
        self.max_attempts.append(max_attempts)
        return "transaction"


def _transactional(outcome: Any) -> Any:
    """``firestore.transactional`` standing in for the client's retry loop: each call of the
    wrapped function ends as ``outcome`` says (the real loop is exercised against the emulator
    in tests/integration/test_googleapi.py)."""

    def decorate(function: Any) -> Any:
        def call(transaction: Any) -> Any:
            if isinstance(outcome, BaseException):
                raise outcome
            return function(transaction)

        return call

    return decorate


def test_a_transaction_gets_the_bounded_attempts_and_returns_the_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from google.cloud import firestore

    monkeypatch.setattr(firestore, "transactional", _transactional(None))
    client = _FakeClient()
    result = run_transaction(client, lambda t: f"ran in {t}", unavailable=Down, what="cancel")  # type: ignore[arg-type]
    assert result == "ran in transaction"
    assert client.max_attempts == [TRANSACTION_ATTEMPTS]


def test_contention_past_the_attempts_is_the_services_transient_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from google.cloud import firestore

    exhausted = ValueError(f"Failed to commit transaction in {TRANSACTION_ATTEMPTS} attempts.")
    monkeypatch.setattr(firestore, "transactional", _transactional(exhausted))
    with pytest.raises(Down, match=r"^Firestore cancel contended: Failed to commit"):
        run_transaction(_FakeClient(), lambda t: None, unavailable=Down, what="cancel")  # type: ignore[arg-type]


def test_a_value_error_of_the_function_is_not_taken_for_contention(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from google.cloud import firestore

    monkeypatch.setattr(firestore, "transactional", _transactional(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        run_transaction(_FakeClient(), lambda t: None, unavailable=Down, what="cancel")  # type: ignore[arg-type]


def test_a_transient_error_of_another_backend_names_it() -> None:
    expected = r"^Pub/Sub topic creation failed: DeadlineExceeded$"
    with pytest.raises(Down, match=expected), translated(Down, "topic creation", "Pub/Sub"):
        raise gexc.DeadlineExceeded("slow")

"""schemas/ledgerstate.py: where a webhook delivery may go, decided on its ledger document alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import ledgerstate
from schemas.webhooks import DeliveryState
from webhooks.delivery import Outcome

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
LEASE_S = 60.0
BACKOFF = (5.0, 300.0)


def ledger(**fields: Any) -> dict[str, Any]:
    """A job's ledger just taken in (pending, due now), with ``fields`` over it."""
    doc = ledgerstate.opened("job", "j1", "t", "https://h/x", "succeeded", NOW, NOW)
    return {**doc, **fields}


def delivering(lease: str = "tok", until: datetime = NOW + timedelta(seconds=30)) -> dict[str, Any]:
    """Claimed: held by ``lease`` until ``until``."""
    return ledger(state="delivering", lease=lease, next_at=until)


# -- take in ---------------------------------------------------------------------------------------


def test_a_new_ledger_is_pending_and_due_now_with_no_attempts() -> None:
    # Arrange
    expire_at = NOW + timedelta(days=7)

    # Act
    doc = ledgerstate.opened("batch", "b1", "t", "https://h/x", "failed", NOW, expire_at)

    # Assert
    assert doc["state"] == "pending" and doc["next_at"] == NOW
    assert doc["event"] == "batch.failed" and doc["sequence"] == 1
    assert doc["attempts"] == [] and doc["attempt_count"] == 0 and doc["round_start"] == 0
    assert doc["lease"] is None and doc["expire_at"] == expire_at


def test_a_new_ledger_outlives_its_take_in_by_a_day_at_least() -> None:
    # Arrange: the resource expires in an hour
    expire_at = NOW + timedelta(hours=1)

    # Act
    doc = ledgerstate.opened("job", "j1", "t", "https://h/x", "succeeded", NOW, expire_at)

    # Assert
    assert doc["expire_at"] == NOW + timedelta(days=1)


@pytest.mark.parametrize("state", ["pending", "delivering", "succeeded", "failed"])
def test_a_retried_batchs_new_event_starts_a_new_round_from_any_state(state: str) -> None:
    # Arrange
    old = ledger(state=state, sequence=2, attempt_count=4, lease="old", next_at=None)
    later = NOW + timedelta(hours=1)
    new = ledgerstate.opened("batch", "b1", "t", "https://h/y", "succeeded", later, later)

    # Act
    changes = ledgerstate.reopened(old, new)

    # Assert
    assert changes["state"] == "pending" and changes["next_at"] == later
    assert changes["sequence"] == 3 and changes["round_start"] == 4
    assert changes["lease"] is None and changes["url"] == "https://h/y"
    assert "attempts" not in changes and "attempt_count" not in changes


# -- claim -----------------------------------------------------------------------------------------


def test_a_due_pending_delivery_is_claimed_with_a_lease() -> None:
    # Arrange
    doc = ledger()

    # Act
    move = ledgerstate.claim(doc, NOW, LEASE_S)

    # Assert
    assert isinstance(move, ledgerstate.Claimed)
    assert move.state is DeliveryState.DELIVERING
    assert move.changes == {
        "state": "delivering",
        "next_at": NOW + timedelta(seconds=LEASE_S),
        "lease": move.token,
        "updated_at": NOW,
    }


def test_each_claim_gets_a_fresh_token() -> None:
    # Arrange
    doc = ledger()

    # Act
    first = ledgerstate.claim(doc, NOW, LEASE_S)
    second = ledgerstate.claim(doc, NOW, LEASE_S)

    # Assert
    assert isinstance(first, ledgerstate.Claimed) and isinstance(second, ledgerstate.Claimed)
    assert first.token and first.token != second.token


def test_a_claim_whose_lease_lapsed_is_claimed_again() -> None:
    # Arrange: the sender died mid-attempt; its lease ran out a second ago
    doc = delivering("dead", until=NOW - timedelta(seconds=1))

    # Act
    move = ledgerstate.claim(doc, NOW, LEASE_S)

    # Assert
    assert isinstance(move, ledgerstate.Claimed) and move.token != "dead"


def test_a_live_lease_refuses_a_second_claim() -> None:
    # Arrange
    until = NOW + timedelta(seconds=30)
    doc = delivering(until=until)

    # Act
    move = ledgerstate.claim(doc, NOW, LEASE_S)

    # Assert
    assert move == ledgerstate.Refused("held by a live attempt", busy_until=until)


def test_a_pending_delivery_is_not_claimed_before_its_backoff() -> None:
    # Arrange
    doc = ledger(next_at=NOW + timedelta(seconds=5))

    # Act
    move = ledgerstate.claim(doc, NOW, LEASE_S)

    # Assert
    assert move == ledgerstate.Refused("not due yet")


@pytest.mark.parametrize("state", ["succeeded", "failed", "waiting", "?"])
def test_a_delivery_not_pending_or_delivering_is_never_claimed(state: str) -> None:
    # Arrange
    doc = ledger(state=state, next_at=NOW - timedelta(hours=1))

    # Act
    move = ledgerstate.claim(doc, NOW, LEASE_S)

    # Assert
    assert move == ledgerstate.Refused(f"not claimable: {state}")


def test_a_missing_ledger_is_not_claimed() -> None:
    # Act
    move = ledgerstate.claim(None, NOW, LEASE_S)

    # Assert
    assert move == ledgerstate.Refused("missing")


# -- the lease -------------------------------------------------------------------------------------


def test_only_the_current_token_holds_the_delivery() -> None:
    # Arrange
    doc = delivering("tok")

    # Act / Assert
    assert ledgerstate.holds(doc, "tok")
    assert not ledgerstate.holds(doc, "old")
    assert not ledgerstate.holds({**doc, "lease": None}, "tok")
    assert not ledgerstate.holds(None, "tok")


# -- an attempt's outcome --------------------------------------------------------------------------


def test_a_2xx_succeeds_and_records_the_attempt() -> None:
    # Arrange
    doc = delivering()

    # Act
    move = ledgerstate.recorded(doc, "tok", Outcome(status_code=204, latency_ms=12.5), NOW, BACKOFF)

    # Assert
    assert move == ledgerstate.Moved(
        DeliveryState.SUCCEEDED,
        {
            "attempts": [
                {
                    "attempt": 1,
                    "at": NOW,
                    "webhook_id": "msg_job_j1",
                    "status_code": 204,
                    "latency_ms": 12.5,
                    "error": None,
                }
            ],
            "attempt_count": 1,
            "state": "succeeded",
            "next_at": None,
            "lease": None,
            "updated_at": NOW,
        },
    )


def test_a_failed_attempt_backs_off_by_the_rounds_next_step() -> None:
    # Arrange
    doc = delivering()

    # Act
    move = ledgerstate.recorded(doc, "tok", Outcome(status_code=503), NOW, BACKOFF)

    # Assert
    assert isinstance(move, ledgerstate.Moved) and move.state is DeliveryState.PENDING
    assert move.changes["state"] == "pending"
    assert move.changes["next_at"] == NOW + timedelta(seconds=BACKOFF[0])
    assert move.changes["lease"] is None


def test_the_second_failed_attempt_takes_the_second_step() -> None:
    # Arrange
    doc = {**delivering(), "attempt_count": 1}

    # Act
    move = ledgerstate.recorded(doc, "tok", Outcome(error="ConnectTimeout"), NOW, BACKOFF)

    # Assert
    assert isinstance(move, ledgerstate.Moved)
    assert move.changes["next_at"] == NOW + timedelta(seconds=BACKOFF[1])


def test_a_failed_attempt_after_the_last_step_fails_the_delivery() -> None:
    # Arrange: one attempt plus one per backoff step already made
    doc = {**delivering(), "attempt_count": len(BACKOFF)}

    # Act
    move = ledgerstate.recorded(doc, "tok", Outcome(status_code=500), NOW, BACKOFF)

    # Assert
    assert isinstance(move, ledgerstate.Moved) and move.state is DeliveryState.FAILED
    assert move.changes["state"] == "failed" and move.changes["next_at"] is None
    assert move.changes["attempt_count"] == len(BACKOFF) + 1


def test_a_final_outcome_fails_at_once() -> None:
    # Arrange
    doc = delivering()

    # Act
    move = ledgerstate.recorded(doc, "tok", Outcome(error="refused", final=True), NOW, BACKOFF)

    # Assert
    assert isinstance(move, ledgerstate.Moved) and move.state is DeliveryState.FAILED


def test_no_backoff_means_no_retry() -> None:
    # Arrange
    doc = delivering()

    # Act
    move = ledgerstate.recorded(doc, "tok", Outcome(status_code=500), NOW, ())

    # Assert
    assert isinstance(move, ledgerstate.Moved) and move.state is DeliveryState.FAILED


def test_the_backoff_counts_from_the_rounds_start() -> None:
    # Arrange: 9 attempts in all, but the new round (from attempt 9) has made none
    doc = {**delivering(), "attempt_count": 9, "round_start": 9}

    # Act
    move = ledgerstate.recorded(doc, "tok", Outcome(status_code=500), NOW, BACKOFF)

    # Assert
    assert isinstance(move, ledgerstate.Moved) and move.state is DeliveryState.PENDING
    assert move.changes["next_at"] == NOW + timedelta(seconds=BACKOFF[0])
    assert move.changes["attempt_count"] == 10


def test_an_attempt_names_the_event_it_sent() -> None:
    # Arrange: a retried batch's third end
    doc = {**delivering(), "kind": "batch", "resource_id": "b1", "sequence": 3}

    # Act
    move = ledgerstate.recorded(doc, "tok", Outcome(status_code=200), NOW, BACKOFF)

    # Assert
    assert isinstance(move, ledgerstate.Moved)
    assert move.changes["attempts"][-1]["webhook_id"] == "msg_batch_b1_3"


def test_the_ledger_keeps_the_newest_attempts_only() -> None:
    # Arrange
    kept = [{"attempt": n} for n in range(1, ledgerstate.LEDGER_ATTEMPTS + 1)]
    doc = {**delivering(), "attempts": kept, "attempt_count": ledgerstate.LEDGER_ATTEMPTS}

    # Act
    move = ledgerstate.recorded(doc, "tok", Outcome(status_code=500), NOW, BACKOFF)

    # Assert
    assert isinstance(move, ledgerstate.Moved)
    attempts = move.changes["attempts"]
    assert len(attempts) == ledgerstate.LEDGER_ATTEMPTS
    assert attempts[0] == {"attempt": 2} and attempts[-1]["attempt"] == 51


def test_a_claim_that_lost_its_lease_records_nothing() -> None:
    # Arrange: the lease lapsed and another sender claimed it
    doc = delivering("newer")

    # Act
    move = ledgerstate.recorded(doc, "tok", Outcome(status_code=200), NOW, BACKOFF)

    # Assert
    assert move == ledgerstate.Refused("lost its lease")


def test_a_redelivered_claim_records_nothing() -> None:
    # Arrange: a redelivery cleared the lapsed lease
    doc = ledger(lease=None)

    # Act
    move = ledgerstate.recorded(doc, "tok", Outcome(status_code=200), NOW, BACKOFF)

    # Assert
    assert move == ledgerstate.Refused("lost its lease")


def test_a_missing_ledger_records_nothing() -> None:
    # Act
    move = ledgerstate.recorded(None, "tok", Outcome(status_code=200), NOW, BACKOFF)

    # Assert
    assert move == ledgerstate.Refused("lost its lease")


# -- redelivery ------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["succeeded", "failed"])
def test_a_finished_delivery_is_redelivered_in_a_new_round(state: str) -> None:
    # Arrange
    doc = ledger(state=state, next_at=None, attempt_count=8, round_start=0)

    # Act
    move = ledgerstate.redelivered(doc, NOW)

    # Assert
    assert move == ledgerstate.Moved(
        DeliveryState.PENDING,
        {"state": "pending", "next_at": NOW, "updated_at": NOW, "lease": None, "round_start": 8},
    )


def test_a_pending_delivery_is_redelivered_now_in_the_same_round() -> None:
    # Arrange
    doc = ledger(next_at=NOW + timedelta(hours=2), attempt_count=3, round_start=0)

    # Act
    move = ledgerstate.redelivered(doc, NOW)

    # Assert
    assert move == ledgerstate.Moved(
        DeliveryState.PENDING,
        {"state": "pending", "next_at": NOW, "updated_at": NOW, "lease": None},
    )


def test_a_lapsed_claim_is_redelivered_and_its_lease_cleared() -> None:
    # Arrange
    doc = delivering("dead", until=NOW - timedelta(seconds=1))

    # Act
    move = ledgerstate.redelivered(doc, NOW)

    # Assert
    assert isinstance(move, ledgerstate.Moved) and move.state is DeliveryState.PENDING
    assert move.changes["lease"] is None and "round_start" not in move.changes


def test_a_delivery_held_by_a_live_lease_is_not_redelivered() -> None:
    # Arrange
    until = NOW + timedelta(seconds=30)
    doc = delivering(until=until)

    # Act
    move = ledgerstate.redelivered(doc, NOW)

    # Assert
    assert move == ledgerstate.Refused("held by a live attempt", busy_until=until)


def test_a_redelivery_then_a_claim_then_a_failure_backs_off_from_the_first_step() -> None:
    # Arrange: a failed delivery whose round spent the whole schedule
    done = ledger(state="failed", next_at=None, attempt_count=len(BACKOFF) + 1)
    redelivery = ledgerstate.redelivered(done, NOW)
    assert isinstance(redelivery, ledgerstate.Moved)
    claim = ledgerstate.claim({**done, **redelivery.changes}, NOW, LEASE_S)
    assert isinstance(claim, ledgerstate.Claimed)
    held = {**done, **redelivery.changes, **claim.changes}

    # Act
    move = ledgerstate.recorded(held, claim.token, Outcome(status_code=500), NOW, BACKOFF)

    # Assert
    assert isinstance(move, ledgerstate.Moved) and move.state is DeliveryState.PENDING
    assert move.changes["next_at"] == NOW + timedelta(seconds=BACKOFF[0])

"""worker/attempts.py: stop reasons, stop tokens, the watcher's verdicts, and a call's metadata."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from worker.attempts import (
    CALL_METADATA,
    BatchStop,
    Held,
    StopReason,
    StopToken,
    Watcher,
    calling,
)
from worker.errors import Stopped
from worker.store import Claim


def test_stop_reasons_keep_the_values_logs_and_metrics_use() -> None:
    expected = ["cancelled", "lost", "timeout", "shutdown", "deadline"]
    assert [r.value for r in StopReason] == expected
    assert StopReason.LOST == "lost" and f"{StopReason.SHUTDOWN}" == "shutdown"


def test_a_token_past_its_deadline_reads_timeout() -> None:
    token = StopToken(0.0)
    time.sleep(0.01)
    assert token.reason is StopReason.TIMEOUT
    with pytest.raises(Stopped) as stopped:
        token.check()
    assert stopped.value.reason == "timeout"


def test_the_first_stop_reason_wins() -> None:
    token = StopToken(60.0)
    token.stop(StopReason.CANCELLED)
    token.stop(StopReason.SHUTDOWN)
    assert token.reason is StopReason.CANCELLED


def test_a_batch_stops_only_once_every_member_must() -> None:
    one, two = StopToken(60.0), StopToken(60.0)
    batch = BatchStop([one, two])
    one.stop(StopReason.CANCELLED)
    assert batch.reason is None
    two.stop(StopReason.LOST)
    assert batch.reason is StopReason.CANCELLED


@pytest.mark.parametrize("verdict", ["cancelled", "lost"])
def test_the_watcher_turns_a_store_verdict_into_a_stop_reason(verdict: str) -> None:
    def check(claims: Sequence[Held]) -> dict[str, str]:
        return {c.token: verdict for c in claims}

    watcher = Watcher(check, interval_s=0.0, lease_s=1.0)
    token = StopToken(60.0)
    watcher.add(Claim("j", 1, "tok", "embed", "t", {}, {}), token)
    watcher.check_once()
    assert token.reason is StopReason(verdict)


def test_a_call_s_metadata_is_set_only_within_it() -> None:
    assert CALL_METADATA.get() == ()
    with calling([{"k": "v"}]):
        assert CALL_METADATA.get() == [{"k": "v"}]
    assert CALL_METADATA.get() == ()


def test_a_jobs_deadline_stops_it_before_its_time_limit_with_its_own_reason() -> None:
    from datetime import UTC, datetime, timedelta

    passed = StopToken(60.0, datetime.now(UTC) - timedelta(seconds=1))
    ahead = StopToken(60.0, datetime.now(UTC) + timedelta(seconds=60))
    none = StopToken(60.0)

    assert passed.reason is StopReason.DEADLINE
    with pytest.raises(Stopped):
        passed.check()
    assert ahead.reason is None and none.reason is None
    ahead.deadline = time.monotonic() - 1  # its task's time limit, reached first
    assert ahead.reason is StopReason.TIMEOUT

"""worker/pipeline/runner.py: one model call per micro-batch, and how a failed call is split."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tests.support.pipeline_fakes import FakeStore, TextModel, claim, in_flight, text_claim
from worker.attempts import StopReason, StopToken, Watcher
from worker.errors import PermanentError, Stopped, TransientError
from worker.modellock import ModelLock
from worker.pipeline.hold import Hold
from worker.pipeline.runner import Runner
from worker.pipeline.settler import Settler


def runner(model: Any, store: FakeStore | None = None, hold: Hold | None = None) -> Runner:
    hold = hold or Hold()
    watcher = Watcher(lambda claims: {}, interval_s=1.0, lease_s=1.0)
    settler = Settler(
        store or FakeStore([]), hold=hold, watcher=watcher, timeout_for=lambda _: 60.0
    )
    return Runner(
        {"embed": model},
        model_lock=ModelLock(),
        watcher=watcher,
        settler=settler,
        hold=hold,
        timeout_for=lambda _: 60.0,
    )


def settled(worker: Runner) -> None:
    """Wait for the settle threads to write what the runner handed them."""
    worker._settler.close()


def kinds(outcomes: list[Any]) -> list[str]:
    return [
        "result" if isinstance(o, dict) else getattr(o, "code", None) or type(o).__name__
        for o in outcomes
    ]


def test_valid_inputs_run_as_one_call() -> None:
    model = TextModel()
    outcomes = runner(model).run("embed", [in_flight(text_claim(t)) for t in ("a", "b", "c")])
    assert model.sizes == [3] and kinds(outcomes) == ["result"] * 3


def test_a_failed_batch_runs_again_one_job_at_a_time() -> None:
    model = TextModel()
    batch = [in_flight(text_claim(t)) for t in ("ok-1", "bad", "ok-2")]
    outcomes = runner(model).run("embed", batch)
    assert model.sizes == [3, 1, 1, 1]
    assert kinds(outcomes) == ["result", "bad_text", "result"]


def test_an_unexpected_error_alone_fails_its_job_internal() -> None:
    class Buggy(TextModel):
        def run(self, inputs: list[BaseModel], stop: StopToken) -> list[dict[str, Any]]:
            super().run(inputs, stop)
            raise ZeroDivisionError

    outcomes = runner(Buggy()).run("embed", [in_flight(text_claim("a")), in_flight(claim())])
    assert kinds(outcomes) == ["internal", "internal"]


def test_a_transient_error_alone_is_its_job_s_outcome() -> None:
    model = TextModel()
    model.outcome = TransientError("busy")
    (outcome,) = runner(model).run("embed", [in_flight(claim())])
    assert isinstance(outcome, TransientError)


def test_invalid_input_and_a_misrouted_job_fail_alone_without_the_model() -> None:
    model = TextModel()
    batch = [
        in_flight(claim(input={"texts": []})),
        in_flight(claim(task="forecast")),
        in_flight(text_claim("ok")),
    ]
    outcomes = runner(model).run("embed", batch)
    assert kinds(outcomes) == ["invalid_input", "unsupported_task", "result"]
    assert model.sizes == [1]


def test_a_job_stopped_during_the_call_gets_no_result() -> None:
    class Cancelling(TextModel):
        def run(self, inputs: list[BaseModel], stop: StopToken) -> list[dict[str, Any]]:
            batch[0].stop.stop(StopReason.CANCELLED)  # seen by the watcher mid-call
            return super().run(inputs, stop)

    batch = [in_flight(text_claim("a")), in_flight(text_claim("b"))]
    outcomes = runner(Cancelling()).run("embed", batch)
    assert isinstance(outcomes[0], Stopped) and outcomes[0].reason == StopReason.CANCELLED
    assert kinds(outcomes)[1] == "result"


def test_a_call_every_job_stopped_ends_each_with_its_reason() -> None:
    batch = [in_flight(text_claim("a"), timeout_s=0.0), in_flight(text_claim("b"), timeout_s=0.0)]
    outcomes = runner(TextModel(sleep_s=1.0)).run("embed", batch)
    assert [o.reason for o in outcomes if isinstance(o, Stopped)] == ["timeout", "timeout"]


def test_a_run_batch_records_the_lane_s_stats_and_settles() -> None:
    store = FakeStore([])
    worker = runner(TextModel(), store)
    worker.run_batch("embed", [in_flight(text_claim(t)) for t in ("a", "b")])
    worker.run_batch("embed", [in_flight(text_claim("c"))])
    settled(worker)
    stats = worker.stats["embed"]
    assert (stats.batches, stats.jobs, stats.largest_batch, stats.mean_batch) == (2, 3, 2, 1.5)
    assert [status for status, _ in store.writes] == ["succeeded"] * 3


def test_a_draining_runner_gives_a_claimed_batch_back_unstarted() -> None:
    hold, store, model = Hold(), FakeStore([]), TextModel()
    worker = runner(model, store, hold)
    hold.drain()
    batch = [in_flight(text_claim("a"))]
    worker.run_batch("embed", batch)
    settled(worker)
    assert model.sizes == [] and store.writes == [("released", None)]
    assert batch[0].delivery.message.settled == ["nack"]  # type: ignore[attr-defined]


def test_a_bug_in_the_runner_nacks_its_batch() -> None:
    model = TextModel()
    worker = runner(model)
    batch = [in_flight(text_claim("a"))]
    worker.run_batch("paint", batch)  # no adapter, no stats: a bug if it ever happened
    assert batch[0].delivery.message.settled == ["nack"]  # type: ignore[attr-defined]


def test_permanent_errors_are_not_retried_as_a_batch_of_one() -> None:
    model = TextModel()
    model.outcome = PermanentError("bad_text", "no")
    assert kinds(runner(model).run("embed", [in_flight(claim())])) == ["bad_text"]
    assert model.sizes == [1]

"""worker/faults.py: faults injected by wrapping an adapter, a faulted job always run alone."""

from __future__ import annotations

import threading
import time

import pytest
from pydantic import BaseModel

from schemas.tasks.embed import EmbedInput
from tests.support.pipeline_fakes import FakeStore, TextModel, in_flight, text_claim
from worker.attempts import StopReason, StopToken, Watcher, calling
from worker.errors import PermanentError, Stopped, TransientError
from worker.faults import FAULT_KEY, FaultyAdapter, RunAlone, with_faults
from worker.modellock import ModelLock
from worker.pipeline.hold import Hold
from worker.pipeline.runner import Runner
from worker.pipeline.settler import Settler


class Packing(TextModel):
    device = "cpu"

    def run_packed(self, inputs: list[BaseModel], stop: StopToken) -> list[bytes]:
        self.sizes.append(len(inputs))
        return [b"packed"] * len(inputs)


def texts(*values: str) -> list[BaseModel]:
    return [EmbedInput(texts=[v]) for v in values]


def test_without_faulted_jobs_the_adapter_runs_as_it_is() -> None:
    model = Packing()
    wrapped = FaultyAdapter(model)
    with calling([{}, {"other": "x"}]):
        assert len(wrapped.run(texts("a", "b"), StopToken(60))) == 2
    assert wrapped.run_packed(texts("c"), StopToken(60)) == [b"packed"]  # a chunk's: no metadata
    assert wrapped.device == "cpu" and wrapped.name == "embed" and model.sizes == [2, 1]


def test_a_faulted_job_among_others_asks_to_run_alone_before_anything_runs() -> None:
    model = TextModel()
    with calling([{}, {FAULT_KEY: "transient"}]), pytest.raises(RunAlone):
        FaultyAdapter(model).run(texts("a", "b"), StopToken(60))
    assert model.sizes == []


@pytest.mark.parametrize(
    ("fault", "error", "code"),
    [
        ("transient", TransientError, None),
        ("nonsense", PermanentError, "bad_fault"),
        ("sleep=x", PermanentError, "bad_fault"),
    ],
)
def test_a_faulted_job_alone_misbehaves_as_asked(fault: str, error: type, code: str | None) -> None:
    model = TextModel()
    with calling([{FAULT_KEY: fault}]), pytest.raises(error) as raised:
        FaultyAdapter(model).run(texts("a"), StopToken(60))
    assert getattr(raised.value, "code", None) == code and model.sizes == []


def test_a_sleeping_fault_stops_at_its_safe_points() -> None:
    stop = StopToken(60)
    threading.Timer(0.1, stop.stop, args=(StopReason.CANCELLED,)).start()
    started = time.monotonic()
    with calling([{FAULT_KEY: "sleep=30"}]), pytest.raises(Stopped):
        FaultyAdapter(TextModel()).run(texts("a"), stop)
    assert time.monotonic() - started < 5


def test_a_faulted_job_never_fails_or_shares_a_call_with_its_neighbours() -> None:
    model = TextModel()
    hold = Hold()
    watcher = Watcher(lambda claims: {}, interval_s=1.0, lease_s=1.0)
    settler = Settler(FakeStore([]), hold=hold, watcher=watcher, timeout_for=lambda _: 60.0)
    runner = Runner(
        with_faults({"embed": model}),
        model_lock=ModelLock(),
        watcher=watcher,
        settler=settler,
        hold=hold,
        timeout_for=lambda _: 60.0,
    )
    batch = [
        in_flight(text_claim("a")),
        in_flight(text_claim("b", **{FAULT_KEY: "transient"})),
        in_flight(text_claim("c")),
    ]
    outcomes = runner.run("embed", batch)
    settler.close()
    assert isinstance(outcomes[1], TransientError)
    assert isinstance(outcomes[0], dict) and isinstance(outcomes[2], dict)
    assert model.sizes == [1, 1]  # the neighbours alone; the faulted job never reached the model

"""WORKER_DEVICE for both frameworks. torch is real (this machine has no GPU); TensorFlow's device
list is faked so that the GPU branches can be tested here too."""

from __future__ import annotations

from typing import Any

import pytest

from worker.tasks.embed import resolve_device
from worker.tasks.predict import PredictAdapter


def test_torch_takes_the_cpu_without_a_gpu_and_refuses_cuda() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match="WORKER_DEVICE=cuda"):
        resolve_device("cuda")


class FakeConfig:
    def __init__(self, gpus: list[str]):
        self.gpus = gpus
        self.hidden = False

    def list_physical_devices(self, kind: str) -> list[str]:
        return [] if self.hidden else list(self.gpus)

    def set_visible_devices(self, devices: list[Any], kind: str) -> None:
        assert devices == [] and kind == "GPU"
        self.hidden = True


class FakeTF:
    def __init__(self, gpus: list[str]):
        self.config = FakeConfig(gpus)


@pytest.mark.parametrize(
    ("requested", "gpus", "device", "hidden"),
    [
        ("auto", ["GPU:0"], "cuda", False),
        ("auto", [], "cpu", False),
        ("cpu", ["GPU:0"], "cpu", True),
        ("cuda", ["GPU:0"], "cuda", False),
    ],
)
def test_tensorflow_follows_worker_device(
    requested: str, gpus: list[str], device: str, hidden: bool
) -> None:
    tf = FakeTF(gpus)
    assert PredictAdapter(None, device=requested)._place(tf) == device
    assert tf.config.hidden is hidden


def test_tensorflow_refuses_cuda_without_a_gpu() -> None:
    with pytest.raises(RuntimeError, match="WORKER_DEVICE=cuda"):
        PredictAdapter(None, device="cuda")._place(FakeTF([]))

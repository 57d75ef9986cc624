"""Keras models for ``predict`` tests, built in a child process (TensorFlow stays out of the test
process): version *v* predicts the number *v* whatever the instance, so a result names the version
that served it twice over."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import python_env

BUILD = """
import sys
import keras, numpy as np
staging, versions = sys.argv[1], int(sys.argv[2])
for version in range(1, versions + 1):
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.layers[0].set_weights([np.zeros((1, 1)), np.array([float(version)])])
    model.save(f"{staging}/{version}/model.keras")
"""


def build_versions(staging: Path, versions: int) -> None:
    """``staging/1/model.keras`` .. ``staging/<versions>/model.keras``."""
    for version in range(1, versions + 1):
        (staging / str(version)).mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-c", BUILD, str(staging), str(versions)],
        capture_output=True,
        timeout=120,
        check=True,
        env=python_env(TF_CPP_MIN_LOG_LEVEL="3"),
    )

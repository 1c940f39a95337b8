"""Runs ``tests/layers/keras3_suite.py`` in a fresh interpreter without the legacy switch.

The rest of the suite runs with ``TF_USE_LEGACY_KERAS=1`` (tf-keras); the Keras 3 layer must work,
and import, without it. One run per installed Keras backend (JAX and PyTorch are skipped when not
installed).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    return env | {"TF_CPP_MIN_LOG_LEVEL": "3"} | extra


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_keras3_suite(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"Keras backend {backend!r} is not installed")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/layers/keras3_suite.py",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=_environment(KERAS_BACKEND=backend),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


def test_importing_keras3_does_not_switch_tf_keras():
    code = (
        "import os, recsampled, recsampled.keras3, tensorflow as tf; "
        "print(os.environ.get('TF_USE_LEGACY_KERAS'), tf.keras.__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "keras._tf_keras.keras"]


def test_keras3_works_when_tf_keras_is_already_keras_3():
    # A Keras 3 user's tf.keras is Keras 3: recsampled.keras3 imports, the tf-keras parts refuse
    # with the fix.
    code = (
        "import tensorflow as tf; tf.keras.layers; import recsampled.keras3; print('ok'); "
        "import recsampled.layers"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.stdout.strip() == "ok"
    assert "ImportError" in result.stderr and "TF_USE_LEGACY_KERAS" in result.stderr

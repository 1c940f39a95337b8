"""Sampled softmax for Keras 3 (``import keras``): an output layer and a model.

The same contract as :mod:`recsampled.layers` (the tf-keras layer): ``fit(x, y)`` with integer
targets trains with the sampled softmax, ``evaluate``/``predict`` use the full softmax, Keras
masks are honoured, the output can be tied to an ``Embedding``, and models save and load as
``.keras`` files. Written with ``keras.ops`` and ``keras.random`` only, so it does not depend on
TensorFlow's ``tf.keras`` or on TFRS, and importing it does **not** switch ``tf.keras`` to
Keras 2: if ``import recsampled`` set ``TF_USE_LEGACY_KERAS=1`` and nothing needed it yet, this
import takes it back (:func:`recsampled._keras_env.release_legacy_keras`).

- :class:`SampledSoftmax` (``layer.py``): the output layer.
- :class:`SampledSoftmaxModel` (``model.py``): a functional ``keras.Model`` whose ``fit`` trains
  the head with the sampled softmax (an override of ``compute_loss``/``compute_metrics``, the
  hooks every Keras 3 backend's ``train_step`` calls).
- :class:`UniformSampler`, :class:`LogUniformSampler`, :class:`UnigramSampler`
  (``samplers.py``): proposals written with ``keras.ops``.

Backends: TensorFlow, JAX (0.10.2) and PyTorch (2.13.0, CPU): the same tests pass on each
(``KERAS_BACKEND=jax`` / ``torch``; JAX and PyTorch are not dependencies, so the test skips
them when they are not installed).

Tests: ``tests/keras3/`` (run in a subprocess without ``TF_USE_LEGACY_KERAS``; see
``tests/layers/test_keras3.py``).
"""

# ruff: noqa: E402 (the variable must be released before keras imports TensorFlow)
from recsampled import _keras_env

_keras_env.release_legacy_keras()

import keras

if not keras.__version__.startswith("3."):  # pragma: no cover - keras 3 is a dependency
    raise ImportError(
        f"recsampled.keras3 needs Keras 3 (`pip install 'keras>=3'`); found keras "
        f"{keras.__version__}. For Keras 2 (tf-keras) use recsampled.layers."
    )

from recsampled.keras3.layer import SampledSoftmax
from recsampled.keras3.model import SampledSoftmaxModel
from recsampled.keras3.samplers import SAMPLERS, LogUniformSampler, UniformSampler, UnigramSampler

__all__ = [
    "SAMPLERS",
    "LogUniformSampler",
    "SampledSoftmax",
    "SampledSoftmaxModel",
    "UniformSampler",
    "UnigramSampler",
]

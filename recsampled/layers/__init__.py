"""Keras layers and models: a sampled-softmax output that fits like any layer.

- :class:`SampledSoftmax`: output layer over ``num_classes``; sampled softmax in training, full
  softmax in ``predict``/``evaluate``; optional weight tying with an ``Embedding``.
- :class:`SampledSoftmaxModel` / :class:`SampledSoftmaxSequential` (:class:`SampledSoftmaxMixin`):
  ``compile(optimizer=...)`` and ``fit(x, y)`` with integer ``y``; training logs
  ``sampled_loss`` (and ``sampled_accuracy``, ...), ``evaluate`` the full ``loss``,
  ``cross_entropy`` and ``perplexity``.
- :class:`LazyAdam`: Adam that updates only the rows of a sparse gradient; ``fit`` warns about
  optimizers that rewrite the whole output table every step (tf-keras ``SGD``, ``Adam``, ...).

These are tf-keras (Keras 2) classes; the Keras 3 ones are in :mod:`recsampled.keras3`.
"""

# ruff: noqa: E402 (TF_USE_LEGACY_KERAS must be set before the imports below)
from recsampled._keras_env import ensure_legacy_keras

ensure_legacy_keras()

from recsampled.layers.model import (
    SampledSoftmaxMixin,
    SampledSoftmaxModel,
    SampledSoftmaxSequential,
)
from recsampled.layers.optimizers import LazyAdam
from recsampled.layers.sampled_softmax import SampledSoftmax
from recsampled.samplers.registry import SAMPLERS, get_sampler

__all__ = [
    "LazyAdam",
    "SAMPLERS",
    "SampledSoftmax",
    "SampledSoftmaxMixin",
    "SampledSoftmaxModel",
    "SampledSoftmaxSequential",
    "get_sampler",
]

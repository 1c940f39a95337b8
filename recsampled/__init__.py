"""recsampled: sampled softmax, candidate samplers and retrieval tasks for TensorFlow.

Importing recsampled sets ``TF_USE_LEGACY_KERAS=1`` (tensorflow-recommenders needs Keras 2) before
TensorFlow binds ``tf.keras``; it raises ``ImportError`` with the fix if that is already too late.
"""

from recsampled._keras_env import ensure_legacy_keras

ensure_legacy_keras()

from recsampled import losses, samplers  # noqa: E402
from recsampled.losses import full_softmax_loss, sampled_logits, sampled_softmax_loss  # noqa: E402
from recsampled.samplers import (  # noqa: E402
    CandidateSampler,
    LogUniformSampler,
    SampledValues,
    UniformSampler,
    UnigramSampler,
)

__version__ = "0.1.0"

__all__ = [
    "CandidateSampler",
    "LogUniformSampler",
    "SampledValues",
    "UniformSampler",
    "UnigramSampler",
    "full_softmax_loss",
    "losses",
    "sampled_logits",
    "sampled_softmax_loss",
    "samplers",
]

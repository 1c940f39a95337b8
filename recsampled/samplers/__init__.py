"""Candidate samplers: each returns TF's ``(sampled_candidates, true_expected_count,
sampled_expected_count)`` triple and the probability of any id.

- :class:`UniformSampler`: ``1 / N``.
- :class:`LogUniformSampler`: Zipfian over ids sorted by popularity (TF's default).
- :class:`UnigramSampler`: item counts raised to a ``distortion``.
- :class:`QuadraticKernelSampler`: per-example ``q(i | h) ∝ α·(hᵀwᵢ)² + 1`` from a tree of
  kernel sums (Blanc & Rendle, 2018), with :class:`KernelSamplerRebuild` to follow training.

Where the in-batch inclusion probability of the retrieval task comes from
(``recsampled.samplers.frequency``):

- :class:`FixedFrequency`: from known item counts, ``1 - (1 - p_i)^B``.
- :class:`FrequencyEstimator`: the streaming estimator of Yi et al. (RecSys 2019), state in TF
  variables (checkpointed with the model).
"""

# ruff: noqa: E402 (TF_USE_LEGACY_KERAS must be set before the imports below)
from recsampled._keras_env import ensure_legacy_keras

ensure_legacy_keras()

from recsampled.samplers.base import (
    CandidateSampler,
    InverseTransformSampler,
    SampledValues,
    expected_count,
)
from recsampled.samplers.frequency import (
    FixedFrequency,
    FrequencyEstimator,
    batch_inclusion_probability,
)
from recsampled.samplers.kernel import KernelSamplerRebuild, QuadraticKernelSampler
from recsampled.samplers.log_uniform import LogUniformSampler
from recsampled.samplers.uniform import UniformSampler
from recsampled.samplers.unigram import UnigramSampler

__all__ = [
    "CandidateSampler",
    "FixedFrequency",
    "FrequencyEstimator",
    "InverseTransformSampler",
    "KernelSamplerRebuild",
    "LogUniformSampler",
    "QuadraticKernelSampler",
    "SampledValues",
    "UniformSampler",
    "UnigramSampler",
    "batch_inclusion_probability",
    "expected_count",
]

"""Candidate samplers: each returns TF's ``(sampled_candidates, true_expected_count,
sampled_expected_count)`` triple and the probability of any id.

- :class:`UniformSampler`: ``1 / N``.
- :class:`LogUniformSampler`: Zipfian over ids sorted by popularity (TF's default).
- :class:`UnigramSampler`: item counts raised to a ``distortion``.
- :class:`QuadraticKernelSampler`: the adaptive ``q(i | h) ∝ α·(hᵀwᵢ)² + 1`` from a tree of
  kernel sums (Blanc & Rendle, 2018), as the batch mixture ``q̄`` (``[S]`` ids shared by the
  batch) or per query, with :class:`KernelSamplerRebuild` to follow training.

Names for configs and saved layers (``recsampled.samplers.registry``): :data:`SAMPLERS`,
:func:`get_sampler`, :func:`serialize_sampler`. Every sampler passes the contract tests of
:class:`recsampled.testing.SamplerContract`; so can yours.

Where the in-batch inclusion probability of the retrieval task comes from
(``recsampled.samplers.frequency``):

- :class:`FixedFrequency`: from known item counts, ``1 - (1 - p_i)^B``.
- :class:`FrequencyEstimator`: the streaming estimator of Yi et al. (RecSys 2019), state in TF
  variables (checkpointed with the model).
- :class:`CandidateFrequency`: the protocol both implement.
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
    CandidateFrequency,
    FixedFrequency,
    FrequencyEstimator,
    batch_inclusion_probability,
)
from recsampled.samplers.kernel import KernelSamplerRebuild, QuadraticKernelSampler
from recsampled.samplers.log_uniform import LogUniformSampler
from recsampled.samplers.registry import SAMPLERS, get_sampler, serialize_sampler
from recsampled.samplers.uniform import UniformSampler
from recsampled.samplers.unigram import UnigramSampler

__all__ = [
    "SAMPLERS",
    "CandidateFrequency",
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
    "get_sampler",
    "serialize_sampler",
]

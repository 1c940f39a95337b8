"""Candidate samplers: each returns TF's ``(sampled_candidates, true_expected_count,
sampled_expected_count)`` triple and the probability of any id.

- :class:`UniformSampler`: ``1 / N``.
- :class:`LogUniformSampler`: Zipfian over ids sorted by popularity (TF's default).
- :class:`UnigramSampler`: item counts raised to a ``distortion``.
"""

from recsampled.samplers.base import (
    CandidateSampler,
    InverseTransformSampler,
    SampledValues,
    expected_count,
)
from recsampled.samplers.log_uniform import LogUniformSampler
from recsampled.samplers.uniform import UniformSampler
from recsampled.samplers.unigram import UnigramSampler

__all__ = [
    "CandidateSampler",
    "InverseTransformSampler",
    "LogUniformSampler",
    "SampledValues",
    "UniformSampler",
    "UnigramSampler",
    "expected_count",
]

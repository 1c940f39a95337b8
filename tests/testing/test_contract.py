"""``recsampled.testing.SamplerContract`` as a user would use it: a sampler of one's own passes,
and samplers that break the contract fail the check that covers what they break."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from recsampled.samplers import InverseTransformSampler
from recsampled.testing import SamplerContract


class SquareSampler(InverseTransformSampler):
    """A user's sampler: ``P(k) ∝ (k + 1)²``, by inverse transform of its CDF."""

    def __init__(self, num_classes: int, bias: float = 0.0):
        super().__init__(num_classes)
        weights = np.arange(1, num_classes + 1, dtype=np.float64) ** 2
        self._p = weights / weights.sum()
        drawn = self._p * (1 + bias * (np.arange(num_classes) % 2))  # odd ids too frequent
        self._cdf = tf.constant(np.cumsum(drawn / drawn.sum()), tf.float64)

    def probability(self, ids):
        return tf.gather(tf.constant(self._p, tf.float32), tf.convert_to_tensor(ids))

    def _from_uniform(self, u):
        ids = tf.searchsorted(self._cdf, u, side="right", out_type=tf.int64)
        return tf.minimum(ids, self.num_classes - 1)


class TestUsersOwnSampler(SamplerContract):
    def make_sampler(self):
        return SquareSampler(30)


def test_a_biased_sampler_fails_the_chi_square():
    """Draws 5% off their reported probability on half the ids: the contract catches it."""

    class Biased(SamplerContract):
        def make_sampler(self):
            return SquareSampler(30, bias=0.05)

    with pytest.raises(AssertionError, match="do not follow probability"):
        Biased().test_frequencies_match_probability_chi_square()


def test_a_sampler_with_a_wrong_per_query_flag_fails_the_shape_check():
    class Mislabelled(SquareSampler):
        per_query = True  # but it draws [S] ids shared by the batch

    class Contract(SamplerContract):
        def make_sampler(self):
            return Mislabelled(30)

    with pytest.raises(AssertionError):
        Contract().test_shapes_and_dtypes(unique=True)

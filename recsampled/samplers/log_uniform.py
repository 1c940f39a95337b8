"""Log-uniform (Zipfian) candidate sampler, drawn by TF's ``log_uniform_candidate_sampler``.

``P(k) = log((k + 2) / (k + 1)) / log(N + 1)`` for ``k`` in ``[0, N)``: it assumes ids are sorted
by decreasing frequency, which is how ``recsampled.data`` orders its vocabularies. This is the
default sampler of ``tf.nn.sampled_softmax_loss``.
"""

from __future__ import annotations

import math

import tensorflow as tf

from recsampled.samplers.base import CandidateSampler, SampledValues


class LogUniformSampler(CandidateSampler):
    """Draws class ``k`` with probability ``log((k+2)/(k+1)) / log(N+1)``.

    Example:
        >>> sampler = LogUniformSampler(num_classes=1000)
        >>> float(sampler.probability(tf.constant([0])))  # log(2) / log(1001)
        0.10034...
    """

    def probability(self, ids: tf.Tensor) -> tf.Tensor:
        k = tf.cast(tf.convert_to_tensor(ids), tf.float64)
        p = tf.math.log1p(1.0 / (k + 1.0)) / math.log(self.num_classes + 1.0)
        return tf.cast(p, tf.float32)

    def _sample(
        self, true_classes: tf.Tensor, num_sampled: int, unique: bool, seed: int | None
    ) -> SampledValues:
        return SampledValues(
            *tf.random.log_uniform_candidate_sampler(
                true_classes=true_classes,
                num_true=int(true_classes.shape[1]),
                num_sampled=num_sampled,
                unique=unique,
                range_max=self.num_classes,
                seed=seed,
            )
        )

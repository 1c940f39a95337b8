"""Uniform candidate sampler: ``P(k) = 1 / N``, drawn by TF's ``uniform_candidate_sampler``."""

from __future__ import annotations

import tensorflow as tf

from recsampled.samplers.base import CandidateSampler, SampledValues


class UniformSampler(CandidateSampler):
    """Draws every class with the same probability ``1 / num_classes``.

    Example:
        >>> sampler = UniformSampler(num_classes=1000)
        >>> values = sampler.sample(tf.constant([[3], [7]], tf.int64), num_sampled=16)
        >>> values.sampled_candidates.shape
        TensorShape([16])
    """

    def probability(self, ids: tf.Tensor) -> tf.Tensor:
        ids = tf.convert_to_tensor(ids)
        return tf.fill(tf.shape(ids), tf.constant(1.0 / self.num_classes, tf.float32))

    def _sample(
        self, true_classes: tf.Tensor, num_sampled: int, unique: bool, seed: int | None
    ) -> SampledValues:
        return SampledValues(
            *tf.random.uniform_candidate_sampler(
                true_classes=true_classes,
                num_true=int(true_classes.shape[1]),
                num_sampled=num_sampled,
                unique=unique,
                range_max=self.num_classes,
                seed=seed,
            )
        )

"""Uniform candidate sampler: ``P(k) = 1 / N`` (the distribution of TF's
``uniform_candidate_sampler``)."""

from __future__ import annotations

import tensorflow as tf

from recsampled.samplers.base import InverseTransformSampler


class UniformSampler(InverseTransformSampler):
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

    def _from_uniform(self, u: tf.Tensor) -> tf.Tensor:
        ids = tf.cast(tf.floor(u * self.num_classes), tf.int64)
        return tf.minimum(ids, self.num_classes - 1)

"""Log-uniform (Zipfian) candidate sampler, the default of ``tf.nn.sampled_softmax_loss``.

``P(k) = log((k + 2) / (k + 1)) / log(N + 1)`` for ``k`` in ``[0, N)``: it assumes ids are sorted
by decreasing frequency, which is how ``recsampled.data`` orders its vocabularies. Inverse
transform: ``k = floor(exp(u · log(N + 1))) - 1`` for ``u`` uniform in ``[0, 1)``, since
``P(k' <= k) = log(k + 2) / log(N + 1)``.
"""

from __future__ import annotations

import math

import tensorflow as tf

from recsampled.samplers.base import InverseTransformSampler


class LogUniformSampler(InverseTransformSampler):
    """Draws class ``k`` with probability ``log((k+2)/(k+1)) / log(N+1)``.

    Example:
        >>> sampler = LogUniformSampler(num_classes=1000)
        >>> round(float(sampler.probability(tf.constant(0))), 5)  # log(2) / log(1001)
        0.10033
    """

    def probability(self, ids: tf.Tensor) -> tf.Tensor:
        k = tf.cast(tf.convert_to_tensor(ids), tf.float64)
        p = tf.math.log1p(1.0 / (k + 1.0)) / math.log(self.num_classes + 1.0)
        return tf.cast(p, tf.float32)

    def _from_uniform(self, u: tf.Tensor) -> tf.Tensor:
        ids = tf.cast(tf.floor(tf.exp(u * math.log(self.num_classes + 1.0))), tf.int64) - 1
        return tf.clip_by_value(ids, 0, self.num_classes - 1)

"""Unigram (popularity) candidate sampler with distortion.

``P(k) = c_k^d / Σ_j c_j^d`` for item counts ``c`` and distortion ``d``, the distribution of
TF's ``fixed_unigram_candidate_sampler``: ``d = 1`` is the unigram (popularity) distribution,
``d = 0.75`` is word2vec's choice and ``d = 0`` is uniform over all ids (``0^0 = 1``, so zero
counts included).

Why not TF's op: ``fixed_unigram_candidate_sampler`` takes the counts as an op *attribute*; at
10^7 classes building that op took 104 s here (the attribute is serialised into the graph), so we
draw by inverse-CDF instead: one ``cumsum`` at construction (O(N)), then ``searchsorted`` per draw
(O(S log N)). ``unique=True`` rejects repeats as TF does (``recsampled.samplers.base``).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from recsampled._validation import check_non_negative_float, received
from recsampled.samplers.base import InverseTransformSampler


def _as_counts(counts: object) -> np.ndarray:
    try:
        array = np.asarray(counts, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"`counts` must be a 1-D array of non-negative numbers. {received('counts', counts)}"
        ) from e
    if array.ndim != 1 or array.size == 0:
        raise ValueError(
            "`counts` must be a non-empty 1-D array of non-negative numbers (one per class). "
            f"Received: counts with shape {array.shape}."
        )
    bad = np.flatnonzero(~np.isfinite(array) | (array < 0))
    if bad.size:
        raise ValueError(
            "`counts` must be finite and >= 0 for every class. "
            f"Received: counts[{bad[0]}]={array[bad[0]]} ({bad.size} bad entries in all)."
        )
    return array


class UnigramSampler(InverseTransformSampler):
    """Draws class ``k`` with probability proportional to ``counts[k] ** distortion``.

    Args:
        counts: ``[num_classes]`` non-negative item counts (for example interactions per item).
        distortion: exponent applied to the counts; 1.0 popularity, 0.75 word2vec, 0.0 uniform.
        name: optional module name.

    Raises:
        ValueError: if counts are not 1-D, contain a negative or non-finite value, or are all
            zero (with ``distortion > 0``); or if ``distortion`` is negative or not finite.

    Example:
        >>> sampler = UnigramSampler(counts=[10, 5, 0, 1], distortion=1.0)
        >>> sampler.probability(tf.constant([0, 2])).numpy()
        array([0.625, 0.   ], dtype=float32)
    """

    def __init__(self, counts: object, distortion: float = 1.0, name: str | None = None):
        array = _as_counts(counts)
        super().__init__(num_classes=array.size, name=name)
        self.distortion = check_non_negative_float("distortion", distortion)
        weights = np.power(array, self.distortion)
        total = weights.sum()
        if not total > 0:
            raise ValueError(
                "`counts` must have at least one positive entry (all classes have probability "
                f"zero otherwise). Received: counts of length {array.size}, all zero."
            )
        probs = weights / total
        cdf = np.cumsum(probs)
        cdf /= cdf[-1]
        self._num_supported = int(np.count_nonzero(probs))
        self._probs = tf.constant(probs, tf.float32)
        self._cdf = tf.constant(cdf, tf.float64)

    @property
    def num_supported_classes(self) -> int:
        return self._num_supported

    def probability(self, ids: tf.Tensor) -> tf.Tensor:
        return tf.gather(self._probs, tf.convert_to_tensor(ids))

    def _from_uniform(self, u: tf.Tensor) -> tf.Tensor:
        ids = tf.searchsorted(self._cdf, u, side="right", out_type=tf.int64)
        return tf.minimum(ids, self.num_classes - 1)

    def get_config(self) -> dict:
        return {"num_classes": self.num_classes, "distortion": self.distortion}

"""In-batch sampling probabilities: from known item counts, or estimated from the stream.

With in-batch negatives, the candidates of a step are the items of the batch. What the logQ
correction needs for an item ``i`` is the probability that ``i`` is *among* the candidates of a
step, the inclusion probability ``π(i)``. Both classes here return that quantity.

**From counts.** If each of the ``B`` rows of a batch draws its item independently with
probability ``p_i = count_i / Σ_j count_j``::

    π(i) = 1 - (1 - p_i)^B            (computed as -expm1(B·log1p(-p_i)))

the ``unique=True`` expected count of ``range_sampler.cc`` with ``num_tries = B``
(``recsampled.samplers.base``). For rare items ``π(i) ≈ B·p_i``; for items in nearly every batch
``π(i) → 1``, where the expected count ``B·p_i`` would exceed 1.

**Streaming** (Yi et al., RecSys 2019, "Sampling-Bias-Corrected Neural Modeling for Large Corpus
Item Recommendations", Algorithms 2 and 3). ``m`` hash functions ``h_k`` into ``H`` buckets, arrays
``A_k`` (the step at which a bucket was last seen) and ``B_k`` (a moving average of the number of
steps between two sightings), rate ``α``. At global step ``t``, for every *distinct* bucket
``h_k(y)`` hit by the items ``y`` of the batch::

    B_k[h] ← (1 - α)·B_k[h] + α·(t - A_k[h])
    A_k[h] ← t
    p̂(y) = 1 / max_k B_k[h_k(y)]

The gap between two batches containing ``y`` is geometric with mean ``1 / π(y)``, so ``p̂``
estimates the same inclusion probability as the count formula (an item is counted once per
batch, however many rows hold it). Collisions make a bucket look more frequent (shorter gaps);
the ``max`` over ``m`` hashes keeps the least collided bucket (Algorithm 3).

Two choices beyond the paper, both documented defaults:

- *Bias correction.* ``B`` starts at 0, so after ``c`` sightings the average carries the weight
  ``1 - (1 - α)^c`` instead of 1 and underestimates the gap for ``c ≲ 1/α`` (the estimate starts
  too high by up to ``1/α``). As Adam does (Kingma & Ba, 2015), we keep the sighting count ``C`` and
  read ``B / (1 - (1 - α)^C)``: a plain mean of the gaps while ``C ≪ 1/α``, the paper's average
  later. ``bias_correction=False`` reads ``B`` as the paper does.
- *First and unseen items.* ``A`` starts at 0, so a first sighting at step ``t`` counts a gap of
  ``t`` (as in the paper). An id with a bucket never seen returns ``p̂ = 0`` (no evidence that it
  is ever in a batch); estimates are clipped to at most 1.

Hashing is multiplicative (Knuth, TAOCP vol. 3, §6.4)::

    h_k(y) = (a_k·y mod 2^64) >> (64 - log2 H)

with fixed odd 64-bit constants ``a_k`` (:data:`HASH_MULTIPLIERS`), so ``H`` is a power of two and
the buckets of an id never change between runs or machines.
"""

from __future__ import annotations

import numbers
from typing import Protocol

import numpy as np
import tensorflow as tf

from recsampled._validation import check_bool, check_positive_int, received
from recsampled.samplers.unigram import _as_counts

# Odd 64-bit multipliers: the golden-ratio constant of Fibonacci hashing, then the mixing
# constants of SplitMix64 / MurmurHash3's fmix64 and of xxHash64. Fixed forever: changing one
# changes the bucket of every id and invalidates saved estimator state.
HASH_MULTIPLIERS: tuple[int, ...] = (
    0x9E3779B97F4A7C15,
    0xBF58476D1CE4E5B9,
    0x94D049BB133111EB,
    0xFF51AFD7ED558CCD,
    0xC4CEB9FE1A85EC53,
    0x9E3779B185EBCA87,
    0xC2B2AE3D27D4EB4F,
    0x165667B19E3779F9,
)


class CandidateFrequency(Protocol):
    """What the retrieval task needs of an in-batch probability source.

    :class:`FixedFrequency` and :class:`FrequencyEstimator` implement it; so can any object with
    these two methods (``recsampled.tasks.Retrieval(candidate_frequency=...)``).
    """

    def update(self, ids: tf.Tensor) -> object:
        """Records the items of one training batch."""

    def probability(self, ids: tf.Tensor) -> tf.Tensor:
        """Probability that each id is in a batch, shaped like ``ids``."""


def batch_inclusion_probability(probability: tf.Tensor, batch_size: int) -> tf.Tensor:
    """Probability that an item is in a batch of ``batch_size`` independent draws.

    Args:
        probability: float tensor of any shape, ``p_i``, the probability that one row draws ``i``.
        batch_size: B, rows per batch.

    Returns:
        float32 tensor shaped like ``probability``: ``1 - (1 - p)^B``.

    Example:
        >>> float(batch_inclusion_probability(tf.constant(0.5), batch_size=2))  # 1 - 0.5 ** 2
        0.75
    """
    batch_size = check_positive_int("batch_size", batch_size)
    p = tf.cast(tf.convert_to_tensor(probability), tf.float64)
    return tf.cast(-tf.math.expm1(float(batch_size) * tf.math.log1p(-p)), tf.float32)


class FixedFrequency(tf.Module):
    """In-batch inclusion probabilities from known item counts: ``1 - (1 - p_i)^B``.

    The counterpart of :class:`FrequencyEstimator` when the counts are known in advance (for
    example the training interactions per item). ``update`` does nothing, so both can be handed
    to ``recsampled.tasks.Retrieval(candidate_frequency=...)``.

    Args:
        counts: ``[num_candidates]`` non-negative counts, one per item id.
        batch_size: B, the number of rows per training batch.
        name: optional module name.

    Example:
        >>> frequency = FixedFrequency(counts=[3, 1, 0, 0], batch_size=2)
        >>> frequency.probability(tf.constant([0, 1, 2])).numpy()  # 1-(1/4)^2, 1-(3/4)^2, 0
        array([0.9375, 0.4375, 0.    ], dtype=float32)
    """

    def __init__(self, counts: object, batch_size: int, name: str | None = None):
        super().__init__(name=name)
        array = _as_counts(counts)
        if not array.sum() > 0:
            raise ValueError(
                "`counts` must have at least one positive entry. "
                f"Received: counts of length {array.size}, all zero."
            )
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.num_candidates = int(array.size)
        self._probability = batch_inclusion_probability(
            tf.constant(array / array.sum(), tf.float64), self.batch_size
        )

    def update(self, ids: tf.Tensor) -> None:
        """Does nothing: the counts are fixed. Present for the interface of the estimator."""
        del ids

    def probability(self, ids: tf.Tensor) -> tf.Tensor:
        """Inclusion probability of each id in a batch.

        Args:
            ids: int tensor of any shape with values in ``[0, num_candidates)``.

        Returns:
            float32 tensor shaped like ``ids``.
        """
        return tf.gather(self._probability, tf.convert_to_tensor(ids))


def _check_alpha(alpha: object) -> float:
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, numbers.Real)
        or not np.isfinite(alpha)
        or not 0 < alpha <= 1
    ):
        raise ValueError(f"`alpha` must be a number in (0, 1]. {received('alpha', alpha)}")
    return float(alpha)


def _scatter_update(variable: tf.Variable, indices: tf.Tensor, values: tf.Tensor) -> tf.Operation:
    """``variable[indices] = values``; in a replica of a ``tf.distribute`` strategy, whose
    ``SyncOnRead`` variables have no scatter ops, as a dense assign of the replica's copy."""
    if tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
        return variable.assign(tf.tensor_scatter_nd_update(variable, indices, values))
    return variable.scatter_nd_update(indices, values)


class FrequencyEstimator(tf.Module):
    """Streaming estimate of the probability that an item is in a batch (Yi et al., 2019).

    The state (``last_seen`` = A, ``gap`` = B, ``sightings`` = C, and the global ``step``) lives in
    non-trainable ``tf.Variable``s, so the estimator is saved and restored with any checkpoint of
    the model that holds it. ``update`` and ``probability`` run in graph mode (inside
    ``train_step``). Created under a ``tf.distribute`` strategy's scope, the variables are
    ``SyncOnRead`` with ``ONLY_FIRST_REPLICA`` aggregation: each replica updates and reads its own
    copy, and ``recsampled.tasks.Retrieval`` updates every copy with the ids of the whole global
    batch, so the copies agree (``tests/tasks/test_distributed.py``).

    Args:
        num_buckets: H, buckets per hash function; a power of two. Take it several times the
            number of distinct items to keep collisions rare.
        num_hashes: m, hash functions (at most ``len(HASH_MULTIPLIERS)``); the paper uses 1.
        alpha: α, the rate of the moving average of gaps; the paper uses 0.01. Smaller is less
            noisy (relative noise about ``sqrt(α/2·(1-π))``) but adapts more slowly (about
            ``1/α`` sightings).
        bias_correction: read ``B / (1 - (1-α)^C)`` instead of ``B`` (see the module docstring).
        name: optional module name.

    Example:
        >>> estimator = FrequencyEstimator(num_buckets=1024, alpha=0.5)
        >>> for ids in ([1, 2], [1, 1], [1, 3]):
        ...     _ = estimator.update(tf.constant(ids))
        >>> # 1 is in every batch; 3 first appears at step 3 (a gap of 3 since step 0); 4 never.
        >>> estimator.probability(tf.constant([1, 3, 4])).numpy()
        array([1.        , 0.33333334, 0.        ], dtype=float32)
    """

    def __init__(
        self,
        num_buckets: int = 2**20,
        num_hashes: int = 1,
        alpha: float = 0.01,
        *,
        bias_correction: bool = True,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.num_buckets = check_positive_int("num_buckets", num_buckets)
        if self.num_buckets & (self.num_buckets - 1) or self.num_buckets < 2:
            raise ValueError(
                "`num_buckets` must be a power of two >= 2 (multiplicative hashing keeps the top "
                f"log2(num_buckets) bits). {received('num_buckets', num_buckets)}"
            )
        self.num_hashes = check_positive_int("num_hashes", num_hashes)
        if self.num_hashes > len(HASH_MULTIPLIERS):
            raise ValueError(
                f"`num_hashes` must be at most {len(HASH_MULTIPLIERS)}. "
                f"{received('num_hashes', num_hashes)}"
            )
        self.alpha = _check_alpha(alpha)
        self.bias_correction = check_bool("bias_correction", bias_correction)
        self._shift = tf.constant(64 - int(self.num_buckets).bit_length() + 1, tf.uint64)
        self._multipliers = tf.constant(HASH_MULTIPLIERS[: self.num_hashes], tf.uint64)
        shape = [self.num_hashes, self.num_buckets]
        # One copy per replica under a tf.distribute strategy (SyncOnRead, saved from the first
        # replica): the retrieval task updates every copy with the same global batch's ids.
        state = {
            "trainable": False,
            "synchronization": tf.VariableSynchronization.ON_READ,
            "aggregation": tf.VariableAggregation.ONLY_FIRST_REPLICA,
        }
        with self.name_scope:
            self.step = tf.Variable(tf.constant(0, tf.int64), name="step", **state)
            self.last_seen = tf.Variable(tf.zeros(shape, tf.int64), name="A", **state)
            self.gap = tf.Variable(tf.zeros(shape, tf.float32), name="B", **state)
            self.sightings = tf.Variable(tf.zeros(shape, tf.int64), name="C", **state)

    def buckets(self, ids: tf.Tensor) -> tf.Tensor:
        """``[num_hashes, *ids.shape]`` int64 bucket of each id under each hash function."""
        ids = tf.convert_to_tensor(ids)
        if not ids.dtype.is_integer:
            raise ValueError(
                f"`ids` must be an integer tensor. Received: ids of dtype {ids.dtype.name}."
            )
        keys = tf.bitcast(tf.cast(ids, tf.int64), tf.uint64)
        multipliers = tf.reshape(self._multipliers, [-1] + [1] * ids.shape.rank)
        return tf.cast(
            tf.bitwise.right_shift(keys[tf.newaxis] * multipliers, self._shift), tf.int64
        )

    def update(self, ids: tf.Tensor) -> tf.Operation:
        """Records one step in which the items ``ids`` were in the batch.

        Args:
            ids: int tensor of any shape, the items of one batch; duplicates count once.

        Returns:
            The update op (for graph-mode control dependencies).
        """
        ids = tf.reshape(tf.convert_to_tensor(ids), [-1])
        step = self.step.assign_add(1)
        # Flat index k·H + h_k(y) of every (hash, bucket) pair hit, each distinct pair once.
        offsets = tf.range(self.num_hashes, dtype=tf.int64)[:, tf.newaxis] * self.num_buckets
        flat, _ = tf.unique(tf.reshape(self.buckets(ids) + offsets, [-1]))
        indices = tf.stack([flat // self.num_buckets, flat % self.num_buckets], axis=1)
        gaps = tf.cast(step - tf.gather_nd(self.last_seen, indices), tf.float32)
        average = (1.0 - self.alpha) * tf.gather_nd(self.gap, indices) + self.alpha * gaps
        return tf.group(
            _scatter_update(self.gap, indices, average),
            _scatter_update(self.last_seen, indices, tf.fill(tf.shape(flat), step)),
            # Indices are distinct: an update, not an add (SyncOnRead has neither).
            _scatter_update(self.sightings, indices, tf.gather_nd(self.sightings, indices) + 1),
        )

    def probability(self, ids: tf.Tensor) -> tf.Tensor:
        """Estimated probability that each id is in a batch.

        Args:
            ids: int tensor of any shape.

        Returns:
            float32 tensor shaped like ``ids``, in ``[0, 1]``; 0 for ids never seen.
        """
        buckets = self.buckets(ids)
        hash_index = tf.broadcast_to(
            tf.reshape(tf.range(self.num_hashes, dtype=tf.int64), [-1] + [1] * ids.shape.rank),
            tf.shape(buckets, out_type=tf.int64),
        )
        indices = tf.stack([hash_index, buckets], axis=-1)
        gap = tf.gather_nd(self.gap, indices)
        sightings = tf.gather_nd(self.sightings, indices)
        if self.bias_correction:
            decay = tf.pow(
                tf.constant(1.0 - self.alpha, tf.float64), tf.cast(sightings, tf.float64)
            )
            gap = tf.math.divide_no_nan(gap, tf.cast(1.0 - decay, tf.float32))
        probability = tf.minimum(tf.math.divide_no_nan(1.0, tf.reduce_max(gap, axis=0)), 1.0)
        # An id whose bucket is unseen under any hash was never in a batch (a seen id marks all
        # of its buckets); its other buckets only hold colliding ids.
        return tf.where(tf.reduce_all(sightings > 0, axis=0), probability, 0.0)

    def get_config(self) -> dict:
        """The constructor arguments, for configs and serialisation."""
        return {
            "num_buckets": self.num_buckets,
            "num_hashes": self.num_hashes,
            "alpha": self.alpha,
            "bias_correction": self.bias_correction,
        }

"""The candidate-sampler contract shared by every sampler in recsampled.

A sampler draws ``num_sampled`` candidate ids and reports, for the drawn ids and for the true
classes, the *expected count*: how many times the sampling procedure is expected to produce that
id. The triple it returns is the one ``tf.random.*_candidate_sampler`` ops return, so our samplers
plug into ``tf.nn.sampled_softmax_loss`` and TF's samplers plug into
``recsampled.sampled_softmax_loss``.

Expected counts (``tensorflow/core/kernels/range_sampler.cc``, ``ExpectedCountHelper``), with
``p`` the probability of one draw and ``num_tries`` the number of draws actually made::

    expected_count(p) = p * num_sampled                       if num_tries == num_sampled
                      = 1 - (1 - p) ** num_tries              otherwise (unique=True, rejections)

With ``unique=True`` the sampler draws with replacement and rejects repeats until it has
``num_sampled`` distinct ids, so ``num_tries >= num_sampled``.
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import tensorflow as tf

from recsampled._validation import check_num_sampled, check_optional_seed, received


class SampledValues(NamedTuple):
    """The triple of a candidate sampler, as TF's ``*_candidate_sampler`` ops return it.

    Attributes:
        sampled_candidates: ``[num_sampled]`` int64 ids shared by the batch, or
            ``[batch_size, num_sampled]`` ids drawn per example (adaptive samplers).
        true_expected_count: ``[batch_size, num_true]`` float32 expected counts of the labels.
        sampled_expected_count: float32 expected counts of ``sampled_candidates``, same shape.
    """

    sampled_candidates: tf.Tensor
    true_expected_count: tf.Tensor
    sampled_expected_count: tf.Tensor


def expected_count(probability: tf.Tensor, num_tries: tf.Tensor, num_sampled: int) -> tf.Tensor:
    """TF's expected count of an id with draw probability ``probability``.

    Args:
        probability: float tensor of any shape, the probability of the id in one draw.
        num_tries: scalar int tensor, the number of draws made.
        num_sampled: the number of candidates returned.

    Returns:
        float32 tensor shaped like ``probability``.
    """
    p = tf.cast(probability, tf.float64)
    tries = tf.cast(num_tries, tf.float64)
    with_replacement = p * float(num_sampled)
    with_rejection = -tf.math.expm1(tries * tf.math.log1p(-p))
    count = tf.where(tf.equal(num_tries, num_sampled), with_replacement, with_rejection)
    return tf.cast(count, tf.float32)


def as_true_classes(true_classes: tf.Tensor | object, num_classes: int | None = None) -> tf.Tensor:
    """Converts labels to the ``[batch_size, num_true]`` int64 tensor TF's samplers take.

    Args:
        true_classes: ``[batch_size, num_true]`` (or ``[batch_size]``) integer ids.
        num_classes: if given, and the values are known (eager), ids must lie in
            ``[0, num_classes)``.

    Raises:
        ValueError: for a non-integer dtype, a rank other than 1 or 2, or ids out of range.
    """
    tensor = tf.convert_to_tensor(true_classes)
    if not tensor.dtype.is_integer:
        raise ValueError(
            "`true_classes` must hold integer class ids of shape [batch_size, num_true]. "
            f"Received: true_classes of dtype {tensor.dtype.name}."
        )
    if tensor.shape.rank == 1:
        tensor = tensor[:, tf.newaxis]
    if tensor.shape.rank != 2:
        raise ValueError(
            "`true_classes` must have shape [batch_size, num_true]. "
            f"Received: true_classes with shape {tensor.shape}."
        )
    tensor = tf.cast(tensor, tf.int64)
    if num_classes is not None:
        check_ids_in_range("true_classes", tensor, num_classes)
    return tensor


def check_ids_in_range(name: str, ids: tf.Tensor, num_classes: int) -> None:
    """Raises ``ValueError`` (eager) if any id is outside ``[0, num_classes)``.

    In graph mode the values are unknown when the function is traced; TF's gather then reports
    an out-of-range id at run time.
    """
    if not tf.executing_eagerly() or tf.size(ids) == 0:
        return
    low = int(tf.reduce_min(ids))
    high = int(tf.reduce_max(ids))
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"`{name}` must hold class ids in [0, num_classes={num_classes}). "
            f"Received: an id equal to {bad}."
        )


class CandidateSampler(tf.Module, abc.ABC):
    """Base class of candidate samplers.

    Subclasses implement :meth:`probability` and :meth:`_sample`. Being a ``tf.Module``, a
    sampler that keeps state in ``tf.Variable``s is checkpointed with the model that holds it.

    Args:
        num_classes: the number of classes N; ids lie in ``[0, N)``.
    """

    def __init__(self, num_classes: int, name: str | None = None):
        super().__init__(name=name)
        from recsampled._validation import check_positive_int

        self.num_classes = check_positive_int("num_classes", num_classes)

    @abc.abstractmethod
    def probability(self, ids: tf.Tensor) -> tf.Tensor:
        """Probability that one draw returns each id.

        Args:
            ids: int tensor of any shape with values in ``[0, num_classes)``.

        Returns:
            float32 tensor shaped like ``ids``.
        """

    @property
    def num_supported_classes(self) -> int:
        """How many classes have non-zero probability (the most ``unique=True`` can draw)."""
        return self.num_classes

    def sample(
        self,
        true_classes: tf.Tensor,
        num_sampled: int,
        unique: bool = True,
        seed: int | None = None,
    ) -> SampledValues:
        """Draws ``num_sampled`` candidates shared by the batch.

        Args:
            true_classes: ``[batch_size, num_true]`` integer ids of the labels.
            num_sampled: S, the number of candidates to draw.
            unique: draw without repeats (by rejection, as TF does).
            seed: op-level seed. As with TF's random ops, repeated calls continue one stream;
                call ``tf.random.set_seed`` first for reproducible runs.

        Returns:
            A :class:`SampledValues` triple with ``[S]`` candidates.
        """
        if not isinstance(unique, bool):
            raise ValueError(f"`unique` must be a bool. {received('unique', unique)}")
        num_sampled = check_num_sampled(num_sampled, self.num_supported_classes, unique)
        seed = check_optional_seed("seed", seed)
        true_classes = as_true_classes(true_classes, self.num_classes)
        return self._sample(true_classes, num_sampled, unique, seed)

    @abc.abstractmethod
    def _sample(
        self, true_classes: tf.Tensor, num_sampled: int, unique: bool, seed: int | None
    ) -> SampledValues:
        """Draws candidates once the arguments are validated."""

    def get_config(self) -> dict:
        """The constructor arguments, for configs and serialisation."""
        return {"num_classes": self.num_classes}

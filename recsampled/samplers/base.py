"""The candidate-sampler contract shared by every sampler in recsampled.

A sampler draws ``num_sampled`` candidate ids and reports, for the drawn ids and for the true
classes, the *expected count*: how many times the sampling procedure is expected to produce that
id. The triple it returns is the one ``tf.random.*_candidate_sampler`` ops return, so our samplers
plug into ``tf.nn.sampled_softmax_loss`` and TF's samplers plug into
``recsampled.sampled_softmax_loss``.

Expected counts, with ``p`` the probability of one draw and ``num_tries`` the number of draws
made::

    unique=False:  expected_count(p) = p * num_sampled            (as TF)
    unique=True:   expected_count(p) = 1 - (1 - p) ** num_tries   (the inclusion probability)

With ``unique=True`` the sampler draws with replacement and rejects repeats until it has
``num_sampled`` distinct ids, so ``num_tries >= num_sampled``; ``1 - (1 - p)^num_tries`` is the
probability that ``num_tries`` independent draws include the id.

One deliberate difference from TF (``ExpectedCountHelper`` in
``tensorflow/core/kernels/range_sampler.cc``): when no repeat was drawn (``num_tries ==
num_sampled``) TF reports ``p * num_sampled`` even with ``unique=True``. That overstates the
inclusion probability of frequent ids (for p = 0.2 and S = 4 it reports 0.8 where the id is
included with probability ~0.6); measured on TF's log-uniform sampler with N = 30, S = 4, the head
id's inclusion rate is 15 standard errors away from TF's count over 3,000 draws, while
``1 - (1 - p)^num_tries`` stays within 2 (``tests/samplers/test_builtin.py``). The triples still
plug into ``tf.nn.sampled_softmax_loss`` and vice versa.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import tensorflow as tf

from recsampled._validation import check_bool, check_num_sampled, check_optional_seed


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


def expected_count(
    probability: tf.Tensor, num_tries: tf.Tensor | int, num_sampled: int, unique: bool
) -> tf.Tensor:
    """Expected count of an id with draw probability ``probability`` (module docstring).

    Args:
        probability: float tensor of any shape, the probability of the id in one draw.
        num_tries: int, the number of draws made (``num_sampled`` when not unique): a scalar,
            or a tensor that broadcasts against ``probability`` (e.g. ``[batch_size, 1]`` for
            draws made per query).
        num_sampled: S, the number of candidates returned.
        unique: whether repeats were rejected.

    Returns:
        float32 tensor shaped like ``probability``.
    """
    p = tf.cast(probability, tf.float64)
    if not unique:
        return tf.cast(p * float(num_sampled), tf.float32)
    tries = tf.cast(num_tries, tf.float64)
    return tf.cast(-tf.math.expm1(tries * tf.math.log1p(-p)), tf.float32)


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

    Subclasses implement :meth:`probability` and :meth:`_sample`; :meth:`sample` validates the
    arguments and calls :meth:`_sample`, and :func:`expected_count` turns probabilities into the
    counts of the triple. Being a ``tf.Module``, a sampler that keeps state in ``tf.Variable``s
    is checkpointed with the model that holds it.

    Two class attributes tell callers (the retrieval task, the Keras layer) how to call a
    sampler, so that nobody inspects signatures:

    - :attr:`needs_queries`: ``sample`` and ``probability`` take ``query_embeddings``
      (adaptive samplers, whose proposal depends on the queries of the batch).
    - :attr:`per_query`: ``sample`` draws per query, ``[batch_size, S]`` candidates, instead of
      ``[S]`` shared by the batch. A sampler whose constructor chooses the mode sets it on the
      instance (:class:`~recsampled.samplers.QuadraticKernelSampler`).

    Args:
        num_classes: the number of classes N; ids lie in ``[0, N)``.
        name: optional module name.
    """

    needs_queries: ClassVar[bool] = False
    per_query: bool = False

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
        *,
        query_embeddings: tf.Tensor | None = None,
    ) -> SampledValues:
        """Draws ``num_sampled`` candidates, shared by the batch (or per query).

        Args:
            true_classes: ``[batch_size, num_true]`` integer ids of the labels.
            num_sampled: S, the number of candidates to draw (per query when
                :attr:`per_query`).
            unique: draw without repeats (by rejection, as TF does).
            seed: op-level seed. As with TF's random ops, repeated calls continue one stream;
                call ``tf.random.set_seed`` first for reproducible runs.
            query_embeddings: ``[batch_size, embedding_dim]`` queries, for a sampler with
                :attr:`needs_queries`; other samplers ignore them.

        Returns:
            A :class:`SampledValues` triple with ``[S]`` candidates (``[batch_size, S]`` when
            :attr:`per_query`).
        """
        check_bool("unique", unique)
        num_sampled = check_num_sampled(num_sampled, self.num_supported_classes, unique)
        seed = check_optional_seed("seed", seed)
        true_classes = as_true_classes(true_classes, self.num_classes)
        if self.needs_queries:
            return self._sample(
                true_classes, num_sampled, unique, seed, query_embeddings=query_embeddings
            )
        return self._sample(true_classes, num_sampled, unique, seed)

    @abc.abstractmethod
    def _sample(
        self, true_classes: tf.Tensor, num_sampled: int, unique: bool, seed: int | None
    ) -> SampledValues:
        """Draws candidates once the arguments are validated.

        A sampler with :attr:`needs_queries` also takes ``query_embeddings`` (keyword).
        """

    def get_config(self) -> dict:
        """The constructor arguments, for configs and serialisation."""
        return {"num_classes": self.num_classes}


def draw_unique(
    draw: Callable[[tf.Tensor | int, tf.Tensor | int], tf.Tensor],
    num_sampled: int,
    *,
    first: int | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """The first ``num_sampled`` distinct ids of a stream of draws with replacement.

    Sequential rejection, done in rounds: ``draw(n, round_)`` returns ``[n]`` int64 ids, drawn
    independently (a different stream per ``round_``); each round doubles the stream until it
    holds ``num_sampled`` distinct ids, so few rounds are needed even for skewed distributions.

    Args:
        draw: ``(n, round_) -> [n]`` ids.
        num_sampled: S, distinct ids wanted (at most the support of the distribution).
        first: draws of the first round (default S). More than S saves a second round when a
            few repeats are likely; the result is the same function of the i.i.d. stream.

    Returns:
        ``([S] ids in order of first appearance, num_tries)``: ``num_tries`` is the scalar int64
        position of the S-th distinct id in the stream plus one, the draws sequential rejection
        would have made.
    """

    def missing(round_: tf.Tensor, stream: tf.Tensor) -> tf.Tensor:
        return tf.size(tf.unique(stream).y) < num_sampled

    def draw_more(round_: tf.Tensor, stream: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return round_ + 1, tf.concat([stream, draw(tf.size(stream), round_ + 1)], axis=0)

    _, stream = tf.while_loop(
        missing,
        draw_more,
        (tf.constant(0), draw(num_sampled if first is None else max(first, num_sampled), 0)),
        shape_invariants=(tf.TensorShape([]), tf.TensorShape([None])),
    )
    distinct, index = tf.unique(stream, out_idx=tf.int64)
    positions = tf.range(tf.shape(index, out_type=tf.int64)[0])
    first_seen = tf.math.unsorted_segment_min(positions, index, tf.size(distinct))
    sampled = tf.ensure_shape(distinct[:num_sampled], [num_sampled])
    return sampled, first_seen[num_sampled - 1] + 1


class InverseTransformSampler(CandidateSampler):
    """A sampler with a fixed distribution, drawn by inverse transform of uniform numbers.

    Subclasses define :meth:`probability` and :meth:`_from_uniform`, the map from ``u`` uniform in
    ``[0, 1)`` to ids. Draws use stateless RNG inside one traced function per ``(num_sampled,
    unique)``, seeded by a stateful draw with the op-level ``seed``: so calls are fast in eager
    mode, and reproducible after ``tf.random.set_seed`` as TF's samplers are.
    """

    @abc.abstractmethod
    def _from_uniform(self, u: tf.Tensor) -> tf.Tensor:
        """Maps ``[n]`` float64 numbers uniform in ``[0, 1)`` to ``[n]`` int64 ids."""

    def _sample(
        self, true_classes: tf.Tensor, num_sampled: int, unique: bool, seed: int | None
    ) -> SampledValues:
        key = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64, seed=seed)
        sampled, num_tries = self._draw(key, num_sampled, unique)
        return SampledValues(
            sampled_candidates=sampled,
            true_expected_count=expected_count(
                self.probability(true_classes), num_tries, num_sampled, unique
            ),
            sampled_expected_count=expected_count(
                self.probability(sampled), num_tries, num_sampled, unique
            ),
        )

    @tf.function(autograph=False)
    def _draw(self, key: tf.Tensor, num_sampled: int, unique: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """``[num_sampled]`` ids and the number of draws it took (``num_tries``)."""

        def draw(n: tf.Tensor | int, round_: tf.Tensor | int) -> tf.Tensor:
            seed = key + tf.stack([tf.constant(0, tf.int64), tf.cast(round_, tf.int64)])
            u = tf.random.stateless_uniform(tf.reshape(n, [1]), seed=seed, dtype=tf.float64)
            return self._from_uniform(u)

        if not unique:
            return draw(num_sampled, 0), tf.constant(num_sampled, tf.int64)
        return draw_unique(draw, num_sampled)


def repeated_per_row(ids: tf.Tensor) -> tf.Tensor:
    """``[rows, columns]`` bool: whether an earlier column of the same row holds the same id.

    Args:
        ids: ``[rows, columns]`` integer ids.

    Returns:
        ``[rows, columns]`` bool, False at the first occurrence of each id in its row.
    """
    order = tf.argsort(ids, axis=1, stable=True)  # equal ids in column order
    ordered = tf.gather(ids, order, batch_dims=1)
    repeat = tf.concat(
        [tf.zeros_like(ordered[:, :1], tf.bool), ordered[:, 1:] == ordered[:, :-1]], axis=1
    )
    return tf.gather(repeat, tf.argsort(order, axis=1), batch_dims=1)  # back to column order

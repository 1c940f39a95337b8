"""Training batches addressed by ``(epoch, batch)``, so that a resumed run continues exactly.

Each element is ``{"user_id": [B] int32, "item_id": [B] int32}`` (plus ``"weight"``), the
layout of ``recsampled.data.dataset.make_dataset``. The difference is how an epoch's order is
drawn: ``make_dataset`` takes it from a seed stream that advances each time the dataset object is
iterated in the current process, so a new process cannot reproduce the order of epoch ``e``, nor
start in its middle. Here the order of epoch ``e`` is::

    order_e = stateless_shuffle(range(num_rows), seed=[seed, e])

a function of the seed and the epoch alone, and batch ``b`` of epoch ``e`` holds the rows
``order_e[b·B : (b+1)·B]``. A run restored at ``Position(epoch=e, batch=b)`` therefore sees the
batches an uninterrupted run would have seen from there on; nothing is skipped or repeated.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from recsampled._validation import check_positive_int, received
from recsampled.data.dataset import id_columns
from recsampled.data.interactions import Interactions


class Position(NamedTuple):
    """Where training stands: ``batch`` batches of ``epoch`` (0-based) are done."""

    epoch: int
    batch: int


def steps_per_epoch(
    num_rows: int, batch_size: int, *, drop_remainder: bool = False, limit: int | None = None
) -> int:
    """Batches in one pass over ``num_rows`` rows, at most ``limit`` (None: no limit)."""
    batch_size = check_positive_int("batch_size", batch_size)
    steps = num_rows // batch_size if drop_remainder else -(-num_rows // batch_size)
    return steps if limit is None else min(steps, check_positive_int("limit", limit))


def training_batches(
    interactions: Interactions,
    *,
    batch_size: int,
    seed: int,
    start: Position,
    end_epoch: int,
    shuffle: bool = True,
    drop_remainder: bool = False,
    with_weights: bool = False,
    max_steps_per_epoch: int | None = None,
) -> tf.data.Dataset:
    """The batches from ``start`` to the end of epoch ``end_epoch - 1``, in order.

    Args:
        interactions: the training interactions.
        batch_size: B.
        seed: the order of every epoch derives from it and the epoch number.
        start: the first batch: batch ``start.batch`` of epoch ``start.epoch``.
        end_epoch: stop after the last batch of epoch ``end_epoch - 1``.
        shuffle: a new order in every epoch (else the rows in log order).
        drop_remainder: drop each epoch's last, smaller batch.
        with_weights: add ``"weight"`` (``interactions.weights``).
        max_steps_per_epoch: at most this many batches per epoch: the first ones of the
            epoch's order (None: all).

    Returns:
        A dataset with a known cardinality (the number of batches), prefetched.

    Example:
        >>> batches = training_batches(train, batch_size=256, seed=0,
        ...     start=Position(epoch=2, batch=10), end_epoch=5)  # doctest: +SKIP
    """
    num_batches = steps_per_epoch(
        len(interactions), batch_size, drop_remainder=drop_remainder, limit=max_steps_per_epoch
    )
    if num_batches == 0:
        raise ValueError(
            f"`batch_size` must be at most the number of training rows ({len(interactions)}) "
            f"with drop_remainder=True. {received('batch_size', batch_size)}"
        )
    if not (0 <= start.epoch <= end_epoch and 0 <= start.batch < num_batches):
        raise ValueError(
            f"`start` must lie within the {end_epoch} epochs of {num_batches} batches. "
            f"Received: start={start}."
        )
    columns = id_columns(interactions, with_weights=with_weights)
    num_rows = len(interactions)
    first_epoch, first_batch = start.epoch, start.batch

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        order = None
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(
                tf.range(num_rows), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
            )

        def gather(b: tf.Tensor) -> dict[str, tf.Tensor]:
            begin = tf.cast(b, tf.int32) * batch_size
            rows = tf.range(begin, tf.minimum(begin + batch_size, num_rows))
            if order is not None:
                rows = tf.gather(order, rows)
            return {name: tf.gather(column, rows) for name, column in columns.items()}

        begin = tf.where(epoch == first_epoch, tf.constant(first_batch, tf.int64), 0)
        return tf.data.Dataset.range(begin, num_batches).map(gather)

    total = (end_epoch - first_epoch) * num_batches - first_batch
    dataset = tf.data.Dataset.range(first_epoch, end_epoch).flat_map(epoch_batches)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(max(total, 0)))
    return dataset.prefetch(tf.data.AUTOTUNE)

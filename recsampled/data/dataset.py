"""Training batches of an interaction log as a ``tf.data.Dataset``: the one builder.

Each element is ``{"user_id": [B] int32, "item_id": [B] int32}`` (plus ``"weight": [B] float32``
on request), with ``B = batch_size`` (the last batch of an epoch may be smaller). An epoch visits
every row exactly once in the order::

    order_e = stateless_shuffle(range(num_rows), seed=[seed, e])

a function of the seed and the epoch alone, and batch ``b`` of epoch ``e`` holds the rows
``order_e[b·B : (b+1)·B]``. Memory stays at the id columns plus one permutation (a
``Dataset.shuffle`` buffer over 10^7 single rows would hold 10^7 tensors).

- :func:`training_batches` addresses batches by :class:`Position` ``(epoch, batch)``: a run
  restored at ``Position(e, b)`` sees the batches an uninterrupted run would have seen from
  there on; nothing is skipped or repeated (``recsampled train`` resumes with it).
- :func:`make_dataset` is one pass for ``Model.fit(dataset, epochs=...)``: each iteration of
  the dataset draws its epoch seed from a seeded stream, so passes differ, reproducibly.

Example:
    >>> from recsampled.data import synthetic
    >>> log = synthetic.generate(num_users=50, num_items=40, num_interactions=500,
    ...                          seed=0).to_interactions()
    >>> len(log), steps_per_epoch(len(log), batch_size=32)
    (173, 6)
    >>> batches = training_batches(log, batch_size=32, seed=0, start=Position(1, 2), end_epoch=3)
    >>> int(batches.cardinality())  # the last 4 batches of epoch 1 and the 6 of epoch 2
    10
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from recsampled._validation import check_optional_seed, check_positive_int, received
from recsampled.data.interactions import Interactions


class Position(NamedTuple):
    """Where training stands: ``batch`` batches of ``epoch`` (0-based) are done."""

    epoch: int
    batch: int


#: The first batch of a run.
START = Position(0, 0)


def steps_per_epoch(
    num_rows: int, batch_size: int, *, drop_remainder: bool = False, limit: int | None = None
) -> int:
    """Batches in one pass over ``num_rows`` rows, at most ``limit`` (None: no limit)."""
    batch_size = check_positive_int("batch_size", batch_size)
    steps = num_rows // batch_size if drop_remainder else -(-num_rows // batch_size)
    return steps if limit is None else min(steps, check_positive_int("limit", limit))


def id_columns(interactions: Interactions, *, with_weights: bool = False) -> dict[str, tf.Tensor]:
    """The encoded columns as tensors: ``user_id``, ``item_id`` ``[N]`` int32, ``weight`` float32.

    Raises:
        ValueError: if ``with_weights`` is set and the interactions have no weights.
    """
    if with_weights and interactions.weights is None:
        raise ValueError(
            "`with_weights=True` needs interaction weights, but these interactions have none. "
            "Pass `weight_col` to read_interactions. Received: with_weights=True."
        )
    columns = {
        "user_id": tf.constant(interactions.user_ids, tf.int32),
        "item_id": tf.constant(interactions.item_ids, tf.int32),
    }
    if with_weights:
        columns["weight"] = tf.constant(interactions.weights, tf.float32)
    return columns


def _epoch_batches(
    columns: dict[str, tf.Tensor],
    *,
    batch_size: int,
    num_batches: int,
    shuffle: bool,
    seed: tf.Tensor,
    epoch: tf.Tensor,
    first_batch: tf.Tensor | int = 0,
) -> tf.data.Dataset:
    """Batches ``first_batch .. num_batches - 1`` of one epoch, in the order of (seed, epoch)."""
    num_rows = int(columns["user_id"].shape[0])
    order = None
    if shuffle:
        order = tf.random.experimental.stateless_shuffle(
            tf.range(num_rows), seed=tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
        )

    def gather(b: tf.Tensor) -> dict[str, tf.Tensor]:
        begin = tf.cast(b, tf.int32) * batch_size
        rows = tf.range(begin, tf.minimum(begin + batch_size, num_rows))
        if order is not None:
            rows = tf.gather(order, rows)
        return {name: tf.gather(column, rows) for name, column in columns.items()}

    return tf.data.Dataset.range(first_batch, num_batches).map(gather)


def training_batches(
    interactions: Interactions,
    *,
    batch_size: int,
    seed: int,
    start: Position = START,
    end_epoch: int = 1,
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
    first_epoch, first_batch = start.epoch, start.batch

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        begin = tf.where(epoch == first_epoch, tf.constant(first_batch, tf.int64), 0)
        return _epoch_batches(
            columns, batch_size=batch_size, num_batches=num_batches, shuffle=shuffle,
            seed=tf.constant(seed, tf.int64), epoch=epoch, first_batch=begin,
        )  # fmt: skip

    total = (end_epoch - first_epoch) * num_batches - first_batch
    dataset = tf.data.Dataset.range(first_epoch, end_epoch).flat_map(epoch_batches)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(max(total, 0)))
    return prefetched(dataset)


def prefetched(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` with two batches prefetched and tf.data's autotuning off.

    The autotuning thread sleeps in doubling periods (10 ms, 20 ms, 40 ms, ...) and the end of an
    iterator waited for it: every ``Model.fit`` lasted a power of two of 10 ms (fits of 19, 33
    and 41 steps of the same model each took 0.64 s; 50 and 60 steps each 1.28 s, against
    0.69 s and 0.84 s for the same steps without that wait). These batches are in-memory gathers
    and slices: a fixed prefetch keeps the step fed.

    Example:
        >>> prefetched(tf.data.Dataset.range(3)).options().autotune.enabled
        False
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(2).with_options(options)


def make_dataset(
    interactions: Interactions,
    *,
    batch_size: int,
    shuffle: bool = True,
    seed: int | None = None,
    drop_remainder: bool = False,
    with_weights: bool = False,
) -> tf.data.Dataset:
    """Batches of encoded (user, item) pairs for training a retrieval model: one pass.

    The batches of epoch 0 of :func:`training_batches`, with the seed drawn anew (from a stream
    seeded by ``seed``) each time the dataset is iterated, so that every epoch of ``Model.fit``
    has its own order.

    Args:
        interactions: the training interactions.
        batch_size: rows per batch (B).
        shuffle: draw a new random order of the rows on every pass.
        seed: makes the orders reproducible; None draws them from the global seed.
        drop_remainder: drop the last batch when it has fewer than ``batch_size`` rows.
        with_weights: add ``"weight"`` (``interactions.weights``, which must exist).

    Returns:
        A finite dataset (one pass over the rows) of ``{"user_id", "item_id"[, "weight"]}``
        dicts, prefetched.

    Raises:
        ValueError: if ``batch_size`` is not a positive integer, ``seed`` not an integer, or
            weights are requested but absent.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    seed = check_optional_seed("seed", seed)
    columns = id_columns(interactions, with_weights=with_weights)
    num_batches = steps_per_epoch(len(interactions), batch_size, drop_remainder=drop_remainder)
    options = dict(batch_size=batch_size, num_batches=num_batches, shuffle=shuffle, epoch=0)
    if shuffle:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
        dataset = seeds.flat_map(lambda s: _epoch_batches(columns, seed=s, **options))
    else:
        dataset = _epoch_batches(columns, seed=tf.constant(0, tf.int64), **options)
    return prefetched(dataset)

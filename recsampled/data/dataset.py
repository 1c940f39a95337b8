"""Training batches of an interaction log as a ``tf.data.Dataset``.

Each element is ``{"user_id": [B] int32, "item_id": [B] int32}`` (plus ``"weight": [B] float32``
on request), with ``B = batch_size`` (the last batch may be smaller). Shuffling draws one full
permutation of the rows per pass (``tf.random.experimental.stateless_shuffle``) and gathers each
batch from it, so a pass visits every row exactly once and memory stays at the two id arrays plus
one permutation: a ``Dataset.shuffle`` buffer over 10^7 single rows would hold 10^7 tensors. With
a ``seed``, the sequence of permutations is the same in every run and differs between passes
(epochs of ``Model.fit``).
"""

from __future__ import annotations

import tensorflow as tf

from recsampled._validation import check_optional_seed, check_positive_int
from recsampled.data.interactions import Interactions


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


def make_dataset(
    interactions: Interactions,
    *,
    batch_size: int,
    shuffle: bool = True,
    seed: int | None = None,
    drop_remainder: bool = False,
    with_weights: bool = False,
) -> tf.data.Dataset:
    """Batches of encoded (user, item) pairs for training a retrieval model.

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

    Example:
        >>> dataset = make_dataset(log, batch_size=4096, seed=0)  # doctest: +SKIP
        >>> model.fit(dataset, epochs=3)  # doctest: +SKIP
    """
    batch_size = check_positive_int("batch_size", batch_size)
    seed = check_optional_seed("seed", seed)
    columns = id_columns(interactions, with_weights=with_weights)
    num_rows = len(interactions)
    num_batches = num_rows // batch_size if drop_remainder else -(-num_rows // batch_size)

    def batches(order: tf.Tensor | None) -> tf.data.Dataset:
        def gather(b: tf.Tensor) -> dict[str, tf.Tensor]:
            start = tf.cast(b, tf.int32) * batch_size
            rows = tf.range(start, tf.minimum(start + batch_size, num_rows))
            if order is not None:
                rows = tf.gather(order, rows)
            return {name: tf.gather(column, rows) for name, column in columns.items()}

        return tf.data.Dataset.range(num_batches).map(gather)

    if shuffle:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
        dataset = seeds.flat_map(
            lambda s: batches(
                tf.random.experimental.stateless_shuffle(tf.range(num_rows), seed=tf.stack([s, 0]))
            )
        )
    else:
        dataset = batches(None)
    return dataset.prefetch(tf.data.AUTOTUNE)

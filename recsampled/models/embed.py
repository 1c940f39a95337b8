"""``embed_ids``: every id through a tower, in batches (the one copy in the library).

Example:
    >>> tower = tf.keras.Sequential([tf.keras.layers.Embedding(100, 8)])
    >>> embed_ids(tower, np.arange(100), batch_size=32).shape
    (100, 8)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from recsampled._progress import progress
from recsampled._validation import check_positive_int

DEFAULT_BATCH_SIZE = 4096


def embed_ids(
    model: Callable[[tf.Tensor], tf.Tensor],
    ids: np.ndarray | int,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    desc: str | None = None,
) -> np.ndarray:
    """Runs ``model`` on int64 ``ids`` in batches and stacks the outputs.

    Args:
        model: maps ``[batch]`` int64 ids to ``[batch, embedding_dim]`` embeddings (a Keras
            tower, called with ``training=False``, or a loaded SavedModel).
        ids: ``[n]`` integer ids, or an int ``n`` for the ids ``0 .. n - 1``.
        batch_size: ids per call.
        desc: show progress with this label (None: no progress).

    Returns:
        ``[n, embedding_dim]`` float32 embeddings (``[0, 0]`` for no ids).

    Raises:
        ValueError: if the model's output is not ``[batch, embedding_dim]``.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    if isinstance(ids, int | np.integer) and not isinstance(ids, bool):
        ids = np.arange(check_positive_int("ids", ids))
    ids = np.asarray(ids, dtype=np.int64)
    kwargs = {"training": False} if isinstance(model, tf.keras.layers.Layer) else {}
    parts = []
    with progress(len(ids), desc or "", enabled=desc is not None) as bar:
        for start in range(0, len(ids), batch_size):
            batch = ids[start : start + batch_size]
            output = np.asarray(model(tf.constant(batch), **kwargs), dtype=np.float32)
            if output.ndim != 2 or output.shape[0] != len(batch):
                raise ValueError(
                    "The model must map [batch] ids to [batch, embedding_dim] embeddings. "
                    f"Received: output of shape {output.shape} for {len(batch)} ids."
                )
            parts.append(output)
            bar.update(len(batch))
    if not parts:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(parts, axis=0)

"""A tower as a SavedModel: the one wrapper that run directories and artifacts both use.

``tf.saved_model.load(path)(ids)`` with ``[n]`` int64 indices returns ``[n, embedding_dim]``
float32 embeddings, and the ``serving_default`` signature maps ``ids`` to ``{"embeddings": ...}``.
An artifact's ``query_model/`` is a copy of the run's ``towers/query/`` (no re-tracing), so the
two are the same program.

Example:
    >>> import tempfile
    >>> tower = tf.keras.Sequential([tf.keras.layers.Embedding(10, 4)])
    >>> path = save_tower(tower, tempfile.mkdtemp() + "/query")
    >>> load_tower(path)(tf.constant([0, 3], tf.int64)).shape
    TensorShape([2, 4])
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tensorflow as tf

IDS_SIGNATURE = tf.TensorSpec([None], tf.int64, name="ids")


class TowerModule(tf.Module):
    """A tower as a SavedModel: ``[n]`` int64 indices to ``[n, embedding_dim]`` float32.

    Args:
        tower: a Keras layer (called with ``training=False``) or any traceable callable of ids.
        name: the module's name.
    """

    def __init__(self, tower: Callable[[tf.Tensor], tf.Tensor], name: str | None = None):
        super().__init__(name=name)
        self.tower = tower

    def _embed(self, ids: tf.Tensor) -> tf.Tensor:
        if isinstance(self.tower, tf.keras.layers.Layer):
            return tf.cast(self.tower(ids, training=False), tf.float32)
        return tf.cast(self.tower(ids), tf.float32)

    @tf.function(input_signature=[IDS_SIGNATURE])
    def __call__(self, ids: tf.Tensor) -> tf.Tensor:
        return self._embed(ids)

    @tf.function(input_signature=[IDS_SIGNATURE])
    def serve(self, ids: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"embeddings": self._embed(ids)}


def save_tower(
    tower: Callable[[tf.Tensor], tf.Tensor], path: str | os.PathLike, *, name: str | None = None
) -> Path:
    """Saves ``tower`` as a SavedModel at ``path`` (see the module docstring).

    Args:
        tower: maps ``[n]`` int64 ids to ``[n, embedding_dim]`` embeddings.
        path: the SavedModel folder to write.
        name: the module's name (default: the folder's name followed by ``_tower``).

    Returns:
        ``path``.

    Raises:
        ValueError: if TensorFlow cannot save the tower with the ``[None]`` int64 signature.
    """
    path = Path(path)
    module = TowerModule(tower, name=name or f"{path.name}_tower")
    try:
        tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"The tower could not be saved as a SavedModel with the input signature "
            f"{IDS_SIGNATURE}: {e}"
        ) from e
    return path


def load_tower(path: str | os.PathLike) -> Any:
    """Loads a tower SavedModel written by :func:`save_tower`; call it on int64 indices."""
    return tf.saved_model.load(str(path))

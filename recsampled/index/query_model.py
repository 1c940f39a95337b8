"""The artifact's query model: a TF-Serving SavedModel that maps original user ids in the graph.

``query_model/1/`` (TF Serving's ``<model>/<version>/`` layout, so ``tensorflow_model_server
--model_base_path=ARTIFACT/query_model`` serves it) wraps the trained query tower, copied from
its SavedModel (a run's ``towers/query``): the tower's restored functions and variables are
saved again inside the wrapper, not re-traced from Keras code, so it computes what the run's
tower computes. Its entry points:

- ``serving_default``: ``user_ids`` ``[batch]`` (int64 or string, the dtype of ``user_ids.npy``,
  recorded as ``manifest.query_model.user_id_dtype``) -> ``embeddings`` ``[batch, D]`` float32,
  ``known`` ``[batch]`` bool, ``user_indices`` ``[batch]`` int64 (``-1`` where unknown). The ids
  are mapped by a ``tf.lookup.StaticHashTable`` over the artifact's user ids (stored in the graph
  as a constant: fine to tens of millions of ids, below protobuf's 2 GB limit).
- ``by_user_index``: ``user_indices`` ``[batch]`` int64 -> ``embeddings``; and the module's
  ``__call__`` (the same function), which :class:`~recsampled.index.Retriever` and the HTTP
  service call.

**Unknown ids** get a zero embedding and ``known = false``. The tower has no trained row for a
user outside its vocabulary (no OOV bucket), so any vector would be invented; a zero vector
scores 0 against every item, so a caller that ignores ``known`` gets arbitrary items rather than
confident-looking ones, and ``known`` lets it answer as the Retriever does (an error, or popular
items). Cosine callers must not normalise the zero rows (FAISS's ``normalize_L2`` leaves them 0).

Example:
    >>> import tempfile
    >>> from recsampled.models import save_tower
    >>> tower = tf.keras.Sequential([tf.keras.layers.Embedding(3, 4)])
    >>> folder = tempfile.mkdtemp()
    >>> _ = save_tower(tower, folder + "/tower")
    >>> path = save_query_model(folder + "/tower", np.array([196, 186, 22]), folder + "/qm/1")
    >>> model = tf.saved_model.load(str(path))
    >>> out = model.signatures["serving_default"](user_ids=tf.constant([22, 7], tf.int64))
    >>> out["embeddings"].shape, out["known"].numpy().tolist(), out["user_indices"].numpy()
    (TensorShape([2, 4]), [True, False], array([ 2, -1]))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from recsampled.models import load_tower

SERVING_SIGNATURE = "serving_default"
INDEX_SIGNATURE = "by_user_index"
UNKNOWN_USERS = "zero embedding, known=false"
INDICES_SPEC = tf.TensorSpec([None], tf.int64, name="user_indices")


def id_dtype(user_ids: np.ndarray) -> tf.DType:
    """``tf.string`` for unicode ids, else ``tf.int64``."""
    return tf.string if user_ids.dtype.kind == "U" else tf.int64


class QueryModule(tf.Module):
    """The query tower behind a user-id lookup (module docstring).

    Args:
        tower: the loaded tower SavedModel (``[n]`` int64 indices -> ``[n, D]`` float32).
        user_ids: ``[num_users]`` original ids in index order (int64 or unicode).
    """

    def __init__(self, tower: Any, user_ids: np.ndarray):
        super().__init__(name="query_model")
        self.tower = tower
        dtype = id_dtype(user_ids)
        keys = tf.constant(user_ids.astype(str) if dtype == tf.string else user_ids, dtype)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, tf.range(len(user_ids), dtype=tf.int64)),
            default_value=-1,
        )
        spec = tf.TensorSpec([None], dtype, name="user_ids")
        self.embed_user_ids = tf.function(self._by_ids, input_signature=[spec])

    @tf.function(input_signature=[INDICES_SPEC])
    def __call__(self, user_indices: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.tower(user_indices), tf.float32)

    @tf.function(input_signature=[INDICES_SPEC])
    def by_user_index(self, user_indices: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"embeddings": tf.cast(self.tower(user_indices), tf.float32)}

    def _by_ids(self, user_ids: tf.Tensor) -> dict[str, tf.Tensor]:
        indices = self.table.lookup(user_ids)
        known = indices >= 0
        embeddings = tf.cast(
            self.tower(tf.where(known, indices, tf.zeros_like(indices))), tf.float32
        )
        embeddings = tf.where(known[:, None], embeddings, tf.zeros_like(embeddings))
        return {"embeddings": embeddings, "known": known, "user_indices": indices}


def save_query_model(
    tower_dir: str | os.PathLike, user_ids: np.ndarray, path: str | os.PathLike
) -> Path:
    """Writes the TF-Serving query model at ``path`` (``.../query_model/1``).

    Args:
        tower_dir: a tower SavedModel (:func:`recsampled.models.save_tower`), wrapped as saved.
        user_ids: ``[num_users]`` original user ids in index order (int64 or unicode).
        path: the version folder to write.

    Returns:
        ``path``.
    """
    module = QueryModule(load_tower(tower_dir), np.asarray(user_ids))
    signatures = {SERVING_SIGNATURE: module.embed_user_ids, INDEX_SIGNATURE: module.by_user_index}
    tf.saved_model.save(module, str(path), signatures=signatures)
    return Path(path)


def describe(user_ids: np.ndarray, embedding_dim: int) -> dict[str, Any]:
    """The manifest's ``query_model`` entry: where the model is and how to call it."""
    dtype = "string" if id_dtype(user_ids) == tf.string else "int64"
    return {
        "path": "query_model/1",
        "user_id_dtype": dtype,
        "signatures": {
            SERVING_SIGNATURE: {
                "inputs": {"user_ids": f"[batch] {dtype}"},
                "outputs": {
                    "embeddings": f"[batch, {embedding_dim}] float32",
                    "known": "[batch] bool",
                    "user_indices": "[batch] int64 (-1 where unknown)",
                },
            },
            INDEX_SIGNATURE: {
                "inputs": {"user_indices": "[batch] int64"},
                "outputs": {"embeddings": f"[batch, {embedding_dim}] float32"},
            },
        },
        "unknown_users": UNKNOWN_USERS,
    }

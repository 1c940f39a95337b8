"""Two-tower retrieval model: a query tower and a candidate tower joined by a retrieval task.

Each tower maps integer ids to ``[batch_size, embedding_dim]`` embeddings::

    x = [ E_id[i] ; E_f[c_f(i)] for each categorical feature f ; mean_g E_g over the multi-hot
          set g(i) ; standardised numeric features n(i) ]
    z = W_L·relu(... relu(W_1·x + b_1) ...) + b_L      (an MLP when there are features or layers)
    v = z / ||z||                                      (optional L2 normalisation)

Side features are *per id*: tables with one row per id (MovieLens: genres per movie; age, gender
and occupation per user), held by the tower as non-trainable weights. A tower is therefore a
function of ids alone, which is what catalogue negatives need: ``Retrieval(candidate_model=
candidate_tower)`` embeds sampled ids with their features. With normalised towers the scores are
cosines, and the task's ``temperature`` sets the softmax's sharpness.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recsampled._validation import check_bool, check_positive_int, received
from recsampled.tasks.retrieval import Retrieval


def _feature_table(name: str, values: object, num_ids: int, kind: str) -> np.ndarray:
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"`{kind}['{name}']` must be an array. {received(name, values)}") from e
    if array.ndim not in (1, 2) or array.shape[0] != num_ids:
        raise ValueError(
            f"`{kind}['{name}']` must have one row per id: shape [num_ids={num_ids}] or "
            f"[num_ids, k]. Received: shape {array.shape}."
        )
    if kind == "categorical_features":
        if array.ndim == 1 and not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"`categorical_features['{name}']` must hold integer categories per id (or a "
                f"[num_ids, k] 0/1 multi-hot array). Received: dtype {array.dtype}."
            )
        if array.ndim == 1 and array.min() < 0:
            raise ValueError(
                f"`categorical_features['{name}']` must hold categories >= 0. "
                f"Received: a category equal to {array.min()}."
            )
        if array.ndim == 2 and not np.isin(array, (0, 1)).all():
            raise ValueError(
                f"`categorical_features['{name}']` as a 2-D array must be multi-hot (0 or 1). "
                f"Received: values other than 0 and 1."
            )
    elif not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise ValueError(
            f"`numeric_features['{name}']` must be finite numbers. Received: dtype {array.dtype}."
        )
    return array


class Tower(tf.keras.Model):
    """Embeds ids: an ID embedding plus per-id side features, an optional MLP and L2 norm.

    Args:
        num_ids: ids lie in ``[0, num_ids)``.
        embedding_dim: D, the output size (and the ID embedding's size).
        categorical_features: name -> ``[num_ids]`` int category of each id (embedded), or
            ``[num_ids, k]`` 0/1 multi-hot (the mean of the set's embeddings).
        numeric_features: name -> ``[num_ids]`` or ``[num_ids, k]`` numbers, standardised here
            (zero mean, unit variance per column).
        feature_dim: size of each categorical embedding; default ``embedding_dim``.
        hidden_units: sizes of the ReLU layers before the final linear layer to D.
        normalize: L2-normalise the output.
        name: model name.

    Example:
        >>> genres = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]  # one genre for each of 4 items
        >>> tower = Tower(4, 8, categorical_features={"genres": genres}, normalize=True)
        >>> tower(tf.constant([0, 3])).shape
        TensorShape([2, 8])
    """

    def __init__(
        self,
        num_ids: int,
        embedding_dim: int,
        *,
        categorical_features: Mapping[str, object] | None = None,
        numeric_features: Mapping[str, object] | None = None,
        feature_dim: int | None = None,
        hidden_units: Sequence[int] = (),
        normalize: bool = False,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.num_ids = check_positive_int("num_ids", num_ids)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        feature_dim = embedding_dim if feature_dim is None else feature_dim
        self.feature_dim = check_positive_int("feature_dim", feature_dim)
        if isinstance(hidden_units, int | str) or not isinstance(hidden_units, Sequence):
            raise ValueError(
                "`hidden_units` must be a sequence of positive integers. "
                f"{received('hidden_units', hidden_units)}"
            )
        self.hidden_units = tuple(check_positive_int("hidden_units", h) for h in hidden_units)
        self.normalize = check_bool("normalize", normalize)

        self.id_embedding = tf.keras.layers.Embedding(self.num_ids, self.embedding_dim)
        self._categorical_tables: list[tf.Variable] = []
        self._categorical_layers: list[tf.keras.layers.Layer] = []
        for key, values in sorted((categorical_features or {}).items()):
            array = _feature_table(key, values, self.num_ids, "categorical_features")
            if array.ndim == 1:
                table = self._table(key, array.astype(np.int64), tf.int64)
                layer = tf.keras.layers.Embedding(int(array.max()) + 1, self.feature_dim)
            else:  # multi-hot rows scaled to sum to one: a mean of embeddings, 0 for no category
                counts = np.maximum(array.sum(axis=1, keepdims=True), 1)
                table = self._table(key, array / counts, tf.float32)
                layer = tf.keras.layers.Dense(self.feature_dim, use_bias=False)
            self._categorical_tables.append(table)
            self._categorical_layers.append(layer)
        self._numeric: list[tf.Variable] = []
        for key, values in sorted((numeric_features or {}).items()):
            array = _feature_table(key, values, self.num_ids, "numeric_features").astype(float)
            array = array.reshape(self.num_ids, -1)
            scale = array.std(axis=0)
            array = (array - array.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
            self._numeric.append(self._table(key, array, tf.float32))
        has_features = bool(self._categorical_tables or self._numeric)
        self.mlp = None
        if has_features or self.hidden_units:
            self.mlp = tf.keras.Sequential(
                [tf.keras.layers.Dense(h, activation="relu") for h in self.hidden_units]
                + [tf.keras.layers.Dense(self.embedding_dim)]
            )

    def _table(self, key: str, array: np.ndarray, dtype: tf.DType) -> tf.Variable:
        return self.add_weight(
            name=f"{key}_table",
            shape=array.shape,
            dtype=dtype,
            initializer=tf.keras.initializers.Constant(array),
            trainable=False,
        )

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        """``[batch_size]`` int ids -> ``[batch_size, embedding_dim]`` float32 embeddings."""
        ids = tf.cast(ids, tf.int64)
        parts = [self.id_embedding(ids)]
        for table, layer in zip(self._categorical_tables, self._categorical_layers, strict=True):
            parts.append(layer(tf.gather(table, ids)))
        parts.extend(tf.gather(table, ids) for table in self._numeric)
        x = parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)
        if self.mlp is not None:
            x = self.mlp(x)
        if self.normalize:
            x = tf.math.l2_normalize(x, axis=-1)
        return x


class TwoTowerModel(tfrs.Model):
    """A ``tfrs.Model`` with a query tower, a candidate tower and a retrieval task.

    ``compute_loss`` reads the query ids, candidate ids (and optional weights) from a feature
    dict, embeds them with the towers and calls the task with the candidate ids, ``training``
    and ``compute_metrics=not training``. The towers are usable on their own
    (``model.query_model(user_ids)``), for export and for serving.

    Args:
        query_model: maps query ids to ``[batch_size, D]`` (for example a :class:`Tower`).
        candidate_model: maps candidate ids to ``[batch_size, D]``.
        task: a ``recsampled.tasks.Retrieval`` or ``tfrs.tasks.Retrieval``; default
            ``Retrieval(remove_accidental_hits=True)``.
        query_key: feature holding the query ids.
        candidate_key: feature holding the candidate ids.
        sample_weight_key: optional feature holding ``[batch_size]`` example weights.
        name: model name.

    Example:
        >>> model = TwoTowerModel(Tower(10, 4), Tower(20, 4))
        >>> model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
        >>> data = tf.data.Dataset.from_tensor_slices(
        ...     {"user_id": [1, 2, 3, 4], "item_id": [5, 6, 7, 5]}).batch(2)
        >>> history = model.fit(data, epochs=1, verbose=0)
    """

    def __init__(
        self,
        query_model: tf.keras.layers.Layer,
        candidate_model: tf.keras.layers.Layer,
        task: tf.keras.layers.Layer | None = None,
        *,
        query_key: str = "user_id",
        candidate_key: str = "item_id",
        sample_weight_key: str | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        for arg, value in (("query_model", query_model), ("candidate_model", candidate_model)):
            if not callable(value):
                raise ValueError(f"`{arg}` must be a callable tower. {received(arg, value)}")
        if task is not None and not isinstance(task, tfrs.tasks.base.Task):
            raise ValueError(
                "`task` must be a retrieval task (recsampled.tasks.Retrieval or "
                f"tfrs.tasks.Retrieval). {received('task', task)}"
            )
        self.query_model = query_model
        self.candidate_model = candidate_model
        self.task = task if task is not None else Retrieval(remove_accidental_hits=True)
        self.query_key = query_key
        self.candidate_key = candidate_key
        self.sample_weight_key = sample_weight_key

    def call(self, features: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        """``(query_embeddings, candidate_embeddings)`` of a feature dict."""
        return (
            self.query_model(features[self.query_key]),
            self.candidate_model(features[self.candidate_key]),
        )

    def compute_loss(self, features: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """The task's loss on one batch (and the update of its metrics)."""
        query_embeddings = self.query_model(features[self.query_key], training=training)
        candidate_ids = features[self.candidate_key]
        candidate_embeddings = self.candidate_model(candidate_ids, training=training)
        sample_weight = (
            features[self.sample_weight_key] if self.sample_weight_key is not None else None
        )
        return self.task(
            query_embeddings,
            candidate_embeddings,
            sample_weight=sample_weight,
            candidate_ids=candidate_ids,
            compute_metrics=not training,
            training=training,
        )

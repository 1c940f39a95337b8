"""Top-K metrics over the whole catalogue that stay right with :class:`recsampled.Retrieval`.

``tfrs.metrics.FactorizedTopK`` counts a hit in one of two ways:

- **by id** (``true_candidate_ids`` given): the ids of the index's top K are compared with the
  true ids. An index built from embeddings alone (``FactorizedTopK(candidates=movies.batch(128)
  .map(tower))``, the TFRS tutorial's) returns *row positions* as ids (int32): fed with real
  item ids it fails (``int32`` vs ``int64``) or, after a cast, silently scores near chance;
- **by score** (no ids): a hit when fewer than K index scores exceed the positive's score
  ``u·v``. Right for any exact index, whatever its identifiers.

``tfrs.tasks.Retrieval`` passes ``candidate_ids`` whenever it gets them, and
:class:`recsampled.Retrieval` needs them for ``candidate_frequency`` and catalogue negatives, so
the task asks :func:`metric_candidate_ids` what to pass: the ids, cast to the index's id dtype,
when the index holds ids; ``None`` (by score) for an exact index without ids; and an error that
says what to build when neither works.

An index also goes stale: ``BruteForce().index(tower(ids))`` keeps the embeddings of the moment
it was built. :class:`CandidateTopK` holds a :class:`CandidateIndex` over
``candidate_model(candidates)`` *with ids* and re-embeds the catalogue whenever Keras resets the
model's metrics, at the start of every ``fit`` epoch and every ``evaluate``, so validation never
scores old embeddings. (Within a training epoch the index is as old as the epoch; pass
``compute_metrics=not training`` to the task, as the TFRS tutorial suggests for speed.)

:func:`split_lookup` splits a tower that starts with a ``StringLookup`` (the tutorial's
``Sequential([StringLookup(...), Embedding(...)])``) into the lookup and an id tower, because
catalogue negatives are integer ids and the task embeds them with ``candidate_model``.

Tests: ``tests/tasks/test_topk.py`` (MovieLens 100K, the TFRS tutorial's setup).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf
from tensorflow_recommenders import layers as tfrs_layers
from tensorflow_recommenders import metrics as tfrs_metrics

from recsampled._validation import check_positive_int, received

_FIX = (
    "Build the metric over the ids the task gets, e.g. "
    "`recsampled.tasks.CandidateTopK(candidate_model, candidates=item_ids)` (with "
    "`lookup, candidate_model = recsampled.tasks.split_lookup(tower)` for a tower that starts "
    "with a StringLookup), or "
    "`tfrs.layers.factorized_top_k.Streaming(k=100).index_from_dataset(ids_and_embeddings)`."
)


def _index_id_dtype(index: Any) -> tf.DType | None:
    """The dtype of the ids an index returns, or None when it returns row positions."""
    if isinstance(index, CandidateIndex):
        return index.ids.dtype
    if isinstance(index, tfrs_layers.factorized_top_k.Streaming):
        spec = getattr(index, "_candidates", None)
        spec = None if spec is None else spec.element_spec
        return spec[0].dtype if isinstance(spec, tuple) else None
    if isinstance(index, tfrs_layers.factorized_top_k.BruteForce):
        return None  # its identifiers may be positions (`index(candidates)` without ids)
    identifiers = getattr(index, "_identifiers", None)
    return None if identifiers is None else identifiers.dtype


def metric_candidate_ids(
    metric: Any, candidate_ids: tf.Tensor | None, *, num_queries: int | tf.Tensor | None = None
) -> tf.Tensor | None:
    """The ``true_candidate_ids`` a retrieval task passes to ``metric.update_state``.

    Args:
        metric: a ``tfrs.metrics.Factorized`` metric (``FactorizedTopK``, :class:`CandidateTopK`,
            or your own, which gets the ids uncast).
        candidate_ids: ``[num_candidates]`` ids of the task's candidates (or None); the first
            ``num_queries`` rows are the positives.
        num_queries: the batch size B; the ids of the extra negatives beyond it are dropped.

    Returns:
        The ids, cast to the index's integer id dtype, when the index holds ids; None (score
        based) for an exact index that returns row positions (TFRS's ``BruteForce`` included);
        ``candidate_ids`` for metrics that are not a ``FactorizedTopK``.

    Raises:
        ValueError: when the index's ids cannot be matched with ``candidate_ids`` (string ids
            against integer ones, or an approximate index without ids), saying what to build.

    Example:
        >>> import tensorflow_recommenders as tfrs
        >>> index = tfrs.layers.factorized_top_k.Streaming(k=2).index_from_dataset(
        ...     tf.data.Dataset.from_tensor_slices(tf.eye(3)).batch(2))
        >>> metric = tfrs.metrics.FactorizedTopK(index, ks=[1])
        >>> print(metric_candidate_ids(metric, tf.constant([2, 0], tf.int64)))
        None
    """
    if candidate_ids is None:
        return None
    candidate_ids = tf.convert_to_tensor(candidate_ids)
    if num_queries is not None:
        candidate_ids = candidate_ids[:num_queries]
    if not isinstance(metric, tfrs_metrics.FactorizedTopK):
        return candidate_ids
    index = metric._candidates
    dtype = _index_id_dtype(index)
    if dtype is None:
        if index.is_exact():
            return None
        raise ValueError(
            f"The retrieval index {type(index).__name__} of the metric {metric.name!r} is "
            "approximate and returns row positions, not item ids, so the task's candidate_ids "
            f"cannot be matched against it. {_FIX}"
        )
    if dtype.is_integer and candidate_ids.dtype.is_integer:
        return tf.cast(candidate_ids, dtype)
    if dtype == candidate_ids.dtype:
        return candidate_ids
    raise ValueError(
        f"The retrieval index of the metric {metric.name!r} holds {dtype.name} ids but the "
        f"task's candidate_ids are {candidate_ids.dtype.name}, so no retrieved id could ever "
        f"match. {_FIX}"
    )


def _check_candidate_model(candidate_model: object) -> None:
    if not callable(candidate_model):
        raise ValueError(
            "`candidate_model` must be a callable mapping candidates to [n, embedding_dim] "
            f"embeddings (the candidate tower). {received('candidate_model', candidate_model)}"
        )


class CandidateIndex(tfrs_layers.factorized_top_k.TopK):
    """Exact top K over ``candidate_model(candidates)``, with ids, re-embedded by :meth:`refresh`.

    The embeddings live in one ``[num_candidates, embedding_dim]`` variable created once, so a
    traced ``tf.function`` (Keras' test step) always reads the latest :meth:`refresh`.

    Args:
        candidate_model: the candidate tower: ``[n]`` candidates to ``[n, embedding_dim]``.
        candidates: ``[num_candidates]`` inputs of the tower (int ids, or strings for a tower
            with its own lookup).
        ids: ``[num_candidates]`` ids returned for the candidates; default ``candidates``.
        k: default number of results.
        batch_size: candidates embedded per tower call in :meth:`refresh`.
        name: layer name.

    Example:
        >>> tower = tf.keras.layers.Embedding(5, 2, embeddings_initializer="ones")
        >>> index = CandidateIndex(tower, tf.range(5), k=2)
        >>> scores, ids = index(tf.ones([3, 2]))
        >>> ids.shape, scores.numpy()[0].tolist()
        (TensorShape([3, 2]), [2.0, 2.0])
    """

    def __init__(
        self,
        candidate_model: Any,
        candidates: Any,
        *,
        ids: Any = None,
        k: int = 100,
        batch_size: int = 4096,
        name: str | None = None,
    ) -> None:
        super().__init__(k=check_positive_int("k", k), name=name)
        _check_candidate_model(candidate_model)
        self.candidate_model = candidate_model
        self._inputs = tf.convert_to_tensor(candidates)
        self.ids = tf.convert_to_tensor(candidates if ids is None else ids)
        if self._inputs.shape.rank != 1 or self.ids.shape != self._inputs.shape:
            raise ValueError(
                "`candidates` and `ids` must be 1-D and of the same length. Received: "
                f"candidates with shape {self._inputs.shape}, ids with shape {self.ids.shape}."
            )
        self._batch_size = check_positive_int("batch_size", batch_size)
        self._embeddings = tf.Variable(self._embed(), trainable=False, name="embeddings")

    def _embed(self) -> tf.Tensor:
        """``[num_candidates, embedding_dim]`` float32 embeddings under the current weights."""
        size, step = int(self._inputs.shape[0]), self._batch_size
        embedded = [
            tf.cast(self.candidate_model(self._inputs[start : start + step]), tf.float32)
            for start in range(0, size, step)
        ]
        return tf.concat(embedded, axis=0)

    def refresh(self) -> None:
        """Re-embeds every candidate with the tower's current weights."""
        self._embeddings.assign(self._embed())

    def index(self, candidates: tf.Tensor, identifiers: tf.Tensor | None = None) -> CandidateIndex:
        """Not supported: the index embeds its candidates itself (:meth:`refresh`)."""
        raise NotImplementedError(
            "CandidateIndex embeds its candidates with its candidate_model; call `refresh()` "
            "instead of `index(...)`."
        )

    def call(self, queries: tf.Tensor, k: int | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """``(scores, ids)``, each ``[num_queries, k]``, best first."""
        k = min(self._k if k is None else k, int(self.ids.shape[0]))
        scores = tf.linalg.matmul(tf.cast(queries, tf.float32), self._embeddings, transpose_b=True)
        scores, rows = tf.math.top_k(scores, k=k)
        return scores, tf.gather(self.ids, rows)

    def is_exact(self) -> bool:
        return True


class _IndexRefresh(tf.keras.metrics.Metric):
    """Refreshes a :class:`CandidateIndex` whenever Keras resets the model's metrics.

    Its result, the number of refreshes so far, is logged as ``<metric name>/index_refreshes``.
    """

    def __init__(self, index: CandidateIndex, name: str) -> None:
        super().__init__(name=name, dtype=tf.int64)
        self._index = index
        self.refreshes = self.add_weight(name="refreshes", dtype=tf.int64, initializer="zeros")

    def update_state(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    def reset_state(self) -> None:
        self._index.refresh()
        self.refreshes.assign_add(1)

    def result(self) -> tf.Tensor:
        return tf.identity(self.refreshes)


class CandidateTopK(tfrs_metrics.FactorizedTopK):
    """``tfrs.metrics.FactorizedTopK`` over a fresh, id-carrying :class:`CandidateIndex`.

    Drop-in for the TFRS tutorial's ``FactorizedTopK(candidates=movies.batch(128).map(tower))``:
    logged under the same names (``factorized_top_k/top_100_categorical_accuracy``, ...), right
    with or without ``candidate_ids`` (by id when given, as TFRS does), and re-embedded at the
    start of every ``fit`` epoch and ``evaluate`` (Keras resets the model's metrics then).

    Args:
        candidate_model: the candidate tower the task uses (``[n]`` candidates to
            ``[n, embedding_dim]``).
        candidates: ``[num_candidates]`` tower inputs covering the catalogue.
        ids: ``[num_candidates]`` ids the task passes as ``candidate_ids``; default
            ``candidates``.
        ks: the K of each top-K accuracy.
        batch_size: candidates embedded per tower call.
        name: metric name, a prefix of the logged names.

    Example:
        >>> items = tf.keras.layers.Embedding(50, 4)
        >>> metric = CandidateTopK(items, tf.range(50), ks=[1, 10])
        >>> ids = tf.constant([3, 7])
        >>> _ = metric.update_state(tf.random.normal([2, 4]), items(ids), true_candidate_ids=ids)
        >>> [float(r) <= 1.0 for r in metric.result()[:2]]
        [True, True]
    """

    def __init__(
        self,
        candidate_model: Any,
        candidates: Any,
        *,
        ids: Any = None,
        ks: tuple[int, ...] | list[int] = (1, 5, 10, 50, 100),
        batch_size: int = 4096,
        name: str = "factorized_top_k",
    ) -> None:
        ks = list(ks)
        if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in ks):
            raise ValueError(
                f"`ks` must be a non-empty list of positive integers. {received('ks', ks)}"
            )
        index = CandidateIndex(
            candidate_model, candidates, ids=ids, k=max(ks), batch_size=batch_size
        )
        super().__init__(index, ks=ks, name=name)
        self._refresh = _IndexRefresh(index, name=f"{name}/index_refreshes")

    @property
    def index(self) -> CandidateIndex:
        """The :class:`CandidateIndex` the metric retrieves from."""
        return self._candidates


class LookupSplit(NamedTuple):
    """A tower split at its lookup: ``tower(x) == ids_tower(lookup(x))``."""

    lookup: tf.keras.layers.Layer
    ids_tower: tf.keras.Model


def split_lookup(tower: tf.keras.Sequential) -> LookupSplit:
    """Splits ``Sequential([StringLookup(...), Embedding(...), ...])`` into lookup and id tower.

    The id tower shares the tower's layers (and so its weights): train either, both change.
    Use it as the task's ``candidate_model`` (catalogue negatives are integer ids) and pass
    ``candidate_ids=lookup(titles)``. Ids lie in ``[0, lookup.vocabulary_size())``; 0 is the
    out-of-vocabulary id of a lookup with ``mask_token=None``.

    Raises:
        ValueError: if ``tower`` is not a ``Sequential`` whose first layer is a
            ``StringLookup`` or ``IntegerLookup``.

    Example:
        >>> tower = tf.keras.Sequential([
        ...     tf.keras.layers.StringLookup(vocabulary=["a", "b", "c"], mask_token=None),
        ...     tf.keras.layers.Embedding(4, 2)])
        >>> lookup, ids_tower = split_lookup(tower)
        >>> titles = tf.constant(["c", "a"])
        >>> ids = lookup(titles)
        >>> ids.numpy().tolist(), bool(tf.reduce_all(ids_tower(ids) == tower(titles)))
        ([3, 1], True)
    """
    lookups = (tf.keras.layers.StringLookup, tf.keras.layers.IntegerLookup)
    layers = getattr(tower, "layers", [])
    if (
        not isinstance(tower, tf.keras.Sequential)
        or not layers
        or not isinstance(layers[0], lookups)
    ):
        raise ValueError(
            "`tower` must be a tf.keras.Sequential whose first layer is a StringLookup or "
            "IntegerLookup; for another model, pass the part after the lookup as the task's "
            f"`candidate_model` yourself. {received('tower', tower)}"
        )
    lookup = layers[0]
    if not tower.built:  # Keras refuses a model's weights before its first call
        tower(tf.zeros([0], lookup._key_dtype))
    return LookupSplit(lookup, tf.keras.Sequential(layers[1:], name=f"{tower.name}_ids"))

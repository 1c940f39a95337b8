"""A retrieval task with the call signature of ``tfrs.tasks.Retrieval``, plus logQ from item
frequencies and negatives drawn from the whole catalogue (mixed negative sampling), and
in-batch negatives from the global batch under ``tf.distribute``.

**Global-batch negatives** (``global_batch_negatives=True``, the default; TFRS issues #561, #710).
Under a strategy with ``R > 1`` replicas in sync, replica ``r`` holds ``B_r`` queries ``U_r`` and
``B_c,r`` candidate rows ``C_r`` (ids ``y_r``). In the replica context the task gathers
(``ReplicaContext.all_gather``, axis 0)::

    C = [C_0; …; C_{R-1}],   y = [y_0; …; y_{R-1}],   (π_b and the positive ids likewise)

and scores ``U_r·Cᵀ``: the label of local row ``i`` is column ``o_r + i`` with
``o_r = Σ_{s<r} B_c,s`` (``replica_id_in_sync_group * local_batch`` for equal slices). Repeats
and accidental hits are removed by id over the columns of ``C``, so every replica sees the
columns, ids and labels of the single-device step on the global batch, restricted to its rows.
The loss of replica ``r`` is the SUM over its own rows, so ``Σ_r loss_r`` is the single-device
loss: this is what ``tfrs.Model.train_step`` (no rescaling) and the Keras optimizer (gradients
all-reduced with SUM across replicas) expect, and the default SUM reduction needs no scaling.
The gradient of ``all_gather`` all-reduces (SUM) the upstream gradients and keeps each replica's
own rows, so replica ``r``'s gradient on ``C_r`` holds every replica's loss terms and the SUM over
replicas of the variables' gradients is the single-device gradient (tested to 1e-5 on 2 and 4
logical devices, ``tests/tasks/test_distributed.py``).

- logQ uses the global batch: a :class:`~recsampled.samplers.frequency.FixedFrequency` must be
  built with the *global* batch size; a
  :class:`~recsampled.samplers.frequency.FrequencyEstimator` is updated once per global step with
  the gathered positive ids, in every replica, on ``SyncOnRead`` variables (one local copy per
  replica, saved from the first): the same update of the same state, so the copies stay equal.
- Catalogue negatives: one shared draw per global step. Every replica draws (a sampler with
  ``needs_queries`` sees the gathered queries) and keeps replica 0's ids and expected counts
  (gathered), so the ``S`` columns and their ``Q_c`` are exactly those of one draw, whatever the
  seeds. Per-replica draws would give ``R·S`` columns whose union has no closed-form inclusion
  probability under ``unique=True`` (each draw's ``num_tries`` is random). Per-query samplers
  draw for the local rows only (each row's proposal is its own).
- ``score_mask`` then covers the gathered columns: ``[B_r, Σ_s B_c,s]``.
- ``global_batch_negatives=False`` keeps each replica's own slice (as TFRS does), and with one
  replica or no strategy nothing is gathered.

**Scores.** For queries ``u_1..u_B`` and candidate columns ``j`` (the ``B_c >= B`` in-batch rows of
``candidate_embeddings``, whose first ``B`` rows are the positives, then ``S`` items drawn from
the catalogue by ``sampler``)::

    o_rj = u_r·v_j / τ - log q(i_j)           i_j the item id of column j

followed, as in TFRS, by accidental-hit removal, ``score_mask``, hard-negative mining, and the
categorical cross-entropy against the label column ``j = r`` (SUM over rows, ``sample_weight``).

**The correction.** ``q(i)`` is the probability that item ``i`` is among the candidates of a step
(Bengio & Senécal, 2008; TF's ``candidate_sampling.pdf``: ``Q(y|x)``, the probability of ``y`` in
the set of sampled classes). Two independent sources put items there:

- the batch, with inclusion probability ``π_b(i)``: ``candidate_sampling_probability`` for the
  in-batch columns (as in TFRS), or ``candidate_frequency.probability(i)`` for any id, from
  counts (``1 - (1 - p_i)^B``) or the streaming estimator of Yi et al. (2019);
- the catalogue sampler, ``S`` unique draws, with expected count ``Q_c(i)`` (TF's ``unique=True``
  expected count ``1 - (1 - P(i))^num_tries``, itself an inclusion probability).

An item is among the candidates if either source puts it there, so under independence::

    q(i) = 1 - (1 - π_b(i))·(1 - Q_c(i)) = π_b(i) + Q_c(i) - π_b(i)·Q_c(i)

used for *every* column, in-batch or sampled, positive or negative (the positive's own logit is
corrected too, as in Yi et al. 2019, TFRS and TF's sampled softmax). Yang et al. (WWW 2020,
"Mixed Negative Sampling for Learning Two-tower Neural Networks in Recommendations") correct by
the mixture of the two proposals, the sum of expected counts ``π_b + Q_c``; the two agree when
both are small and differ for items both sources include almost surely, where the sum would count
the item twice (``q → 2``) although it is one column. TFRS issue #635 asks exactly this question
and is open. Conventions:

- A source that is off contributes 0: ``Q_c = 0`` without catalogue sampling, so ``q = π_b``
  and the task is ``tfrs.tasks.Retrieval``; ``π_b = 0`` with ``in_batch_negatives=False``, so
  ``q = Q_c`` and the task is TF's sampled softmax over the candidate tower.
- ``π_b`` of a sampled item is ``candidate_frequency.probability``; with only a
  ``candidate_sampling_probability`` tensor it is unknown and taken as 0 (``q = Q_c``).
- With no probability known at all (no frequency, no tensor, no sampler) no correction applies.
- ``q`` is clipped to ``[1e-6, 1]`` by TFRS's ``SamplingProbablityCorrection``.

**One column per item.** ``q`` is the probability of a *set* membership, so each distinct item
must be one negative column: when the task knows the ids (``candidate_frequency``, ``num_sampled
> 0`` or ``in_batch_negatives=False``) a column whose id already appeared in an earlier column is
masked for every row but its own (it stays the label of its row). A sampled item that is also in
the batch is therefore never a second negative, and repeats of a popular item within the batch
count once. Positives never act as negatives: accidental hits (a column with the row's positive
id, other than the label) are removed over both sources, which is why ``remove_accidental_hits``
must be True in that mode. Masked logits get TFRS's ``MIN_FLOAT``.

**Columns by id** (``columns_by_id=True``, set by ``recsampled train``). Under the rules above,
row ``r`` scores its label column ``r`` and the first column of every other distinct id: the
masks depend on the row (which id is its positive), so they cost ``[B, C]`` passes. When equal
ids have equal candidate embeddings (an id tower), the label column ``r`` and the first column
holding ``r``'s positive are the same vector with the same ``q``, so the same loss comes from
one set of columns for all rows: the first occurrence of each distinct id, with row ``r``'s
label the column of its positive. No per-row mask remains: ``scores = (U/τ)·Cᵀ + b`` with
``b = -log q``, one matmul, one broadcast add, one softmax cross-entropy (tested against the
default rules, ``tests/tasks/test_retrieval.py``). A catalogue column whose id is also in the
batch is a repeat too. Outside XLA only the distinct columns are scored (``[B, n]``, ``n`` the
distinct ids: fewer columns on a log with popular items); under XLA, which compiles per shape,
every column is kept and a repeat gets the bias ``MIN_FLOAT``. The gradient of an id's
embedding is the same sum (all of it reaches the first row holding the id).

**Adaptive samplers.** A sampler with ``needs_queries`` (the
:class:`recsampled.samplers.QuadraticKernelSampler`) gets the batch's ``query_embeddings``. In its
batch-mixture mode it draws ``S`` ids shared by the batch from ``q̄ = (1/B)·Σ_b q(· | u_b)``, so
its columns are shared catalogue columns like those of any other sampler and ``Q_c`` is the
expected count under ``q̄``.

**Per-example catalogue negatives.** A sampler with ``per_query`` (the kernel sampler with
``mode="per_query"``) draws ``S`` ids *per query*: row ``r`` gets the ``B_c`` in-batch columns
and its own ``S`` sampled columns, and ``Q_c(i | u_r)`` depends on the row, so ``q`` is a
``[B, B_c + S]`` matrix (the sampler is asked for the expected count of every in-batch id under
every row's proposal). Repeats and accidental hits are removed row by row, with the same rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import tensorflow as tf
from tensorflow_recommenders import layers as tfrs_layers
from tensorflow_recommenders import metrics as tfrs_metrics
from tensorflow_recommenders.tasks import base

from recsampled._tf import compiling_with_xla
from recsampled._validation import check_bool, check_num_sampled, check_optional_seed, received
from recsampled.samplers.base import CandidateSampler, SampledValues, repeated_per_row
from recsampled.samplers.frequency import CandidateFrequency
from recsampled.tasks.topk import metric_candidate_ids

MIN_FLOAT = tfrs_layers.loss.MIN_FLOAT


def _check_optional_positive_float(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"`{name}` must be None or a number > 0. {received(name, value)}")
    return float(value)


def distinct_columns(ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``([num_distinct], [num_columns])`` int32: the first column holding each distinct id (in
    order of first appearance), and the distinct id of each column.

    Example:
        >>> first, index = distinct_columns(tf.constant([7, 3, 7, 7, 5]))
        >>> first.numpy(), index.numpy()
        (array([0, 1, 4], dtype=int32), array([0, 1, 0, 0, 2], dtype=int32))
    """
    distinct, index = tf.unique(ids, out_idx=tf.int32)
    first = tf.math.unsorted_segment_min(tf.range(tf.size(ids)), index, tf.size(distinct))
    return first, index


def repeated_columns(ids: tf.Tensor) -> tf.Tensor:
    """``[num_columns]`` bool: whether an earlier column holds the same id.

    Example:
        >>> repeated_columns(tf.constant([7, 3, 7, 7, 5])).numpy()
        array([False, False,  True,  True, False])
    """
    first, index = distinct_columns(ids)
    return tf.gather(first, index) < tf.range(tf.size(ids))


@tf.custom_gradient
def _gather_rows(rows: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """``tf.gather(rows, indices)`` with a dense gradient (``all_gather``'s gradient, under a
    strategy, takes no ``IndexedSlices``; ``rows`` is a batch, so dense is small)."""

    def gradient(upstream: tf.Tensor) -> tuple[tf.Tensor, None]:
        return tf.math.unsorted_segment_sum(upstream, indices, tf.shape(rows)[0]), None

    return tf.gather(rows, indices), gradient


def _dot(query_embeddings: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
    """``[B, C]`` scores of ``[B, D]`` queries (max over heads for ``[B, H, D]``) and ``[C, D]``
    columns, as in TFRS."""
    if len(tf.shape(query_embeddings)) == 3:
        return tf.math.reduce_max(tf.einsum("qne,ce->qnc", query_embeddings, columns), axis=1)
    return tf.linalg.matmul(query_embeddings, columns, transpose_b=True)


class _Batch(NamedTuple):
    """The candidates a replica scores: its own, or the gathered global batch (module doc)."""

    candidate_embeddings: tf.Tensor
    candidate_ids: tf.Tensor | None
    candidate_sampling_probability: tf.Tensor | None
    positive_ids: tf.Tensor | None  # the ids that update ``candidate_frequency``
    sampler_queries: tf.Tensor  # the queries a batch-mixture sampler sees
    label_offset: tf.Tensor | None  # column of the first local row's label; None: column 0
    context: tf.distribute.ReplicaContext | None  # set when gathering


def replica_context_to_gather() -> tf.distribute.ReplicaContext | None:
    """The replica context when running in one of several replicas in sync, else None.

    Example:
        >>> replica_context_to_gather() is None  # no strategy: one replica
        True
    """
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def _from_first_replica(context: tf.distribute.ReplicaContext, value: tf.Tensor) -> tf.Tensor:
    """Replica 0's ``value`` on every replica (same shape on each)."""
    return context.all_gather(value, axis=0)[: tf.shape(value)[0]]


def _remove_accidental_hits_per_row(
    labels: tf.Tensor, scores: tf.Tensor, column_ids: tf.Tensor
) -> tf.Tensor:
    """TFRS's ``RemoveAccidentalHits`` with ``[batch_size, num_columns]`` ids per row."""
    positive = tf.gather(column_ids, tf.argmax(labels, axis=1), batch_dims=1)
    duplicate = tf.cast(tf.equal(column_ids, positive[:, tf.newaxis]), labels.dtype) - labels
    return scores + duplicate * MIN_FLOAT


class Retrieval(tf.keras.layers.Layer, base.Task):
    """Retrieval task: ``tfrs.tasks.Retrieval`` plus frequency-based logQ and catalogue negatives.

    The first eight arguments, and every argument of :meth:`call` but ``training``, are those of
    ``tfrs.tasks.Retrieval``, with the same meaning; with none of the keyword-only arguments set,
    the loss is TFRS's (tested to 1e-6). See the module docstring for the math.

    Args:
        loss: loss on ``(labels, scores)``; default categorical cross-entropy from logits with
            SUM reduction, as in TFRS.
        metrics: ``tfrs.metrics.Factorized`` metric(s) over the whole corpus.
        batch_metrics: Keras metrics on ``(labels, scores)`` of the batch.
        loss_metrics: Keras metrics of the loss value.
        temperature: τ, scores are divided by it.
        num_hard_negatives: keep only the hardest negatives per row (TFRS's semantics).
        remove_accidental_hits: mask columns holding the row's positive id (needs
            ``candidate_ids``); must be True when any keyword-only option below is set.
        name: layer name.
        candidate_frequency: source of ``π_b`` for any id, updated with the batch's positive ids
            on every training call: :class:`recsampled.samplers.frequency.FixedFrequency` or
            :class:`recsampled.samplers.frequency.FrequencyEstimator`.
        sampler: catalogue sampler over ids ``[0, sampler.num_classes)`` (any
            :class:`recsampled.samplers.CandidateSampler`); draws ``num_sampled`` unique ids per
            step, shared by the batch, or per query for a sampler with ``per_query`` (module
            docstring).
        num_sampled: S, catalogue negatives per step; 0 turns catalogue sampling off.
        candidate_model: maps ``[S]`` int ids to ``[S, embedding_dim]`` embeddings: the candidate
            tower, or any embedding function over ids. Needed when ``num_sampled > 0``.
        in_batch_negatives: whether the other rows' candidates are negatives. False (with
            ``num_sampled > 0``) gives the sampled softmax: positive plus catalogue negatives.
        seed: op-level seed of the sampler.
        global_batch_negatives: under a ``tf.distribute`` strategy with several replicas,
            score each replica's queries against the candidates of the global batch (module
            docstring); False keeps per-replica negatives, as ``tfrs.tasks.Retrieval``.
        columns_by_id: score each distinct candidate id in one column, the first that holds
            it, and make that column the label of every row whose positive it is (module
            docstring, "Columns by id"). The loss equals the default rules' when equal ids have
            equal candidate embeddings (an id tower such as :class:`recsampled.models.Tower`);
            the step needs no per-row masks and is faster. Applies when the task treats ids as
            columns (``candidate_frequency`` or ``num_sampled > 0``, with in-batch negatives),
            with the default loss, 2-D queries, no hard negatives, no ``score_mask``, no
            batch metrics and a shared (not per-query) sampler; otherwise the default rules.

    Example:
        >>> from recsampled.samplers import UniformSampler
        >>> from recsampled.samplers.frequency import FixedFrequency
        >>> items = tf.keras.layers.Embedding(100, 8)
        >>> task = Retrieval(
        ...     remove_accidental_hits=True,
        ...     candidate_frequency=FixedFrequency(counts=tf.range(100, 0, -1), batch_size=4),
        ...     sampler=UniformSampler(num_classes=100), num_sampled=16, candidate_model=items)
        >>> ids = tf.constant([3, 1, 4, 1])
        >>> task(tf.random.normal([4, 8]), items(ids), candidate_ids=ids).shape
        TensorShape([])
    """

    def __init__(
        self,
        loss: tf.keras.losses.Loss | None = None,
        metrics: Sequence[tfrs_metrics.Factorized] | tfrs_metrics.Factorized | None = None,
        batch_metrics: list[tf.keras.metrics.Metric] | None = None,
        loss_metrics: list[tf.keras.metrics.Metric] | None = None,
        temperature: float | None = None,
        num_hard_negatives: int | None = None,
        remove_accidental_hits: bool = False,
        name: str | None = None,
        *,
        candidate_frequency: CandidateFrequency | None = None,
        sampler: CandidateSampler | None = None,
        num_sampled: int = 0,
        candidate_model: Callable[[tf.Tensor], tf.Tensor] | None = None,
        in_batch_negatives: bool = True,
        seed: int | None = None,
        global_batch_negatives: bool = True,
        columns_by_id: bool = False,
    ) -> None:
        super().__init__(name=name)
        self._default_loss = loss is None
        self._loss = (
            loss
            if loss is not None
            else tf.keras.losses.CategoricalCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.SUM
            )
        )
        self.factorized_metrics = metrics if metrics is not None else []
        self._batch_metrics = batch_metrics or []
        self._loss_metrics = loss_metrics or []
        self._temperature = _check_optional_positive_float("temperature", temperature)
        self._num_hard_negatives = num_hard_negatives
        self._remove_accidental_hits = check_bool("remove_accidental_hits", remove_accidental_hits)
        self._in_batch_negatives = check_bool("in_batch_negatives", in_batch_negatives)
        self._seed = check_optional_seed("seed", seed)
        self._global_batch_negatives = check_bool("global_batch_negatives", global_batch_negatives)
        self._columns_by_id = check_bool("columns_by_id", columns_by_id)
        if candidate_frequency is not None and not (
            callable(getattr(candidate_frequency, "update", None))
            and callable(getattr(candidate_frequency, "probability", None))
        ):
            raise ValueError(
                "`candidate_frequency` must have `update(ids)` and `probability(ids)` methods, "
                "like FixedFrequency or FrequencyEstimator. "
                f"{received('candidate_frequency', candidate_frequency)}"
            )
        self.candidate_frequency = candidate_frequency
        self._num_sampled = self._check_catalogue(sampler, num_sampled, candidate_model)
        self.sampler = sampler
        self.candidate_model = candidate_model
        self._by_id = (
            candidate_frequency is not None or self._num_sampled > 0 or not in_batch_negatives
        )
        if self._by_id and not self._remove_accidental_hits:
            raise ValueError(
                "`remove_accidental_hits` must be True with `candidate_frequency`, "
                "`num_sampled` > 0 or `in_batch_negatives=False`: the task then treats every "
                "item id as one column, and a positive must never act as a negative. "
                "Received: remove_accidental_hits=False."
            )
        self._correction = tfrs_layers.loss.SamplingProbablityCorrection()
        self._accidental_hits = tfrs_layers.loss.RemoveAccidentalHits()
        self._hard_negatives = (
            tfrs_layers.loss.HardNegativeMining(num_hard_negatives)
            if num_hard_negatives is not None
            else None
        )

    def _check_catalogue(
        self,
        sampler: CandidateSampler | None,
        num_sampled: object,
        candidate_model: Callable[[tf.Tensor], tf.Tensor] | None,
    ) -> int:
        if isinstance(num_sampled, bool) or not isinstance(num_sampled, int) or num_sampled < 0:
            raise ValueError(
                f"`num_sampled` must be an integer >= 0. {received('num_sampled', num_sampled)}"
            )
        if num_sampled == 0:
            if not self._in_batch_negatives:
                raise ValueError(
                    "`num_sampled` must be > 0 when `in_batch_negatives=False` (there would be "
                    "no negatives). Received: num_sampled=0."
                )
            return 0
        if not isinstance(sampler, CandidateSampler):
            raise ValueError(
                "`sampler` must be a recsampled CandidateSampler when `num_sampled` > 0. "
                f"{received('sampler', sampler)}"
            )
        if not callable(candidate_model):
            raise ValueError(
                "`candidate_model` must be a callable mapping int ids to embeddings (the "
                f"candidate tower) when `num_sampled` > 0. "
                f"{received('candidate_model', candidate_model)}"
            )
        return check_num_sampled(num_sampled, sampler.num_supported_classes, unique=True)

    @property
    def factorized_metrics(self) -> Sequence[tfrs_metrics.Factorized]:
        """The metrics over the whole corpus (as in ``tfrs.tasks.Retrieval``)."""
        return self._factorized_metrics

    @factorized_metrics.setter
    def factorized_metrics(
        self, value: Sequence[tfrs_metrics.Factorized] | tfrs_metrics.Factorized | None
    ) -> None:
        if not isinstance(value, Sequence):
            value = [value] if value is not None else []
        self._factorized_metrics = value

    def call(
        self,
        query_embeddings: tf.Tensor,
        candidate_embeddings: tf.Tensor,
        sample_weight: tf.Tensor | None = None,
        candidate_sampling_probability: tf.Tensor | None = None,
        candidate_ids: tf.Tensor | None = None,
        compute_metrics: bool = True,
        compute_batch_metrics: bool = True,
        score_mask: tf.Tensor | None = None,
        training: bool | None = None,
    ) -> tf.Tensor:
        """Computes the loss and updates the metrics.

        Args:
            query_embeddings: ``[batch_size, embedding_dim]`` queries, or
                ``[batch_size, num_heads, embedding_dim]`` for max-sim scoring (no factorized
                metrics then, as in TFRS).
            candidate_embeddings: ``[num_candidates, embedding_dim]``; row ``r < batch_size``
                is the positive of query ``r``, further rows are extra negatives.
            sample_weight: ``[batch_size]`` example weights.
            candidate_sampling_probability: ``[num_candidates]`` in-batch inclusion
                probabilities ``π_b``; not together with ``candidate_frequency``.
            candidate_ids: ``[num_candidates]`` int ids; needed for accidental hits and for the
                keyword-only options of the constructor.
            compute_metrics: update the factorized metrics.
            compute_batch_metrics: update the batch metrics.
            score_mask: ``[batch_size, num_candidates]`` bool, False drops a column for a row
                (catalogue columns are always kept).
            training: whether this is a training step; ``candidate_frequency`` is updated
                unless it is False (pass ``training=False`` when evaluating).

        Returns:
            Scalar loss.
        """
        candidate_ids = self._check_candidates(candidate_ids, candidate_sampling_probability)
        inputs = (query_embeddings, candidate_embeddings, candidate_ids)
        if self._use_columns_by_id(query_embeddings, score_mask, compute_batch_metrics):
            loss = self._loss_by_id(
                *inputs, candidate_sampling_probability, sample_weight, training=training
            )
            labels = scores = None
            compute_batch_metrics = False  # none to compute: a condition of the path
        else:
            loss, labels, scores = self._loss_by_rules(
                *inputs, candidate_sampling_probability, sample_weight, score_mask, training
            )
        return self._update_metrics(
            loss,
            *inputs,
            labels,
            scores,
            sample_weight=sample_weight,
            compute_metrics=compute_metrics,
            compute_batch_metrics=compute_batch_metrics,
        )

    def _loss_by_rules(
        self,
        query_embeddings: tf.Tensor,
        candidate_embeddings: tf.Tensor,
        candidate_ids: tf.Tensor | None,
        candidate_sampling_probability: tf.Tensor | None,
        sample_weight: tf.Tensor | None,
        score_mask: tf.Tensor | None,
        training: bool | None,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The loss under the per-row rules (module docstring), with its labels and scores."""
        num_queries = tf.shape(query_embeddings)[0]
        batch = self._global_batch(
            query_embeddings, candidate_embeddings, candidate_ids, candidate_sampling_probability
        )
        sampled = self._sample_catalogue(query_embeddings, batch)
        scores, column_ids = self._scores(
            query_embeddings, batch.candidate_embeddings, batch.candidate_ids, sampled
        )
        labels = self._labels(num_queries, tf.shape(scores)[1], batch.label_offset)
        if self._temperature is not None:
            scores = scores / self._temperature
        scores = self._sampling_correction(scores, batch, sampled, training)
        scores = self._remove_hits(labels, scores, column_ids)
        if self._by_id:
            scores = tf.where(self._negative_mask(column_ids, labels), MIN_FLOAT, scores)
        scores = self._apply_score_mask(scores, score_mask, sampled)
        if self._hard_negatives is not None:
            scores, labels = self._hard_negatives(scores, labels)
        loss = self._loss(y_true=labels, y_pred=scores, sample_weight=sample_weight)
        return loss, labels, scores

    # -- columns by id (module docstring) -------------------------------------------------

    def _use_columns_by_id(
        self, query_embeddings: tf.Tensor, score_mask: tf.Tensor | None, batch_metrics: bool
    ) -> bool:
        """Whether :meth:`call` takes the columns-by-id path (``columns_by_id``'s conditions)."""
        return (
            self._columns_by_id
            and self._by_id
            and self._in_batch_negatives
            and self._default_loss
            and query_embeddings.shape.rank == 2
            and self._hard_negatives is None
            and score_mask is None
            and not (batch_metrics and self._batch_metrics)
            and not (self._num_sampled and self.sampler.per_query)
        )

    def _loss_by_id(
        self,
        query_embeddings: tf.Tensor,
        candidate_embeddings: tf.Tensor,
        candidate_ids: tf.Tensor,
        candidate_sampling_probability: tf.Tensor | None,
        sample_weight: tf.Tensor | None,
        *,
        training: bool | None,
    ) -> tf.Tensor:
        """The loss with one column per distinct id: ``[B, C]`` scores
        ``u·v_j/τ + b_j``, ``b_j = -log q_j`` for a column holding the first occurrence of its
        id and ``MIN_FLOAT`` for a repeat, the label of row ``r`` the first column holding its
        positive; softmax cross-entropy summed over rows (weighted)."""
        num_queries = tf.shape(query_embeddings)[0]
        batch = self._global_batch(
            query_embeddings, candidate_embeddings, candidate_ids, candidate_sampling_probability
        )
        sampled = self._sample_catalogue(query_embeddings, batch)
        columns, column_ids = batch.candidate_embeddings, batch.candidate_ids
        if sampled is not None:
            ids = sampled.sampled_candidates
            embedded = tf.cast(self.candidate_model(ids), columns.dtype)
            columns = tf.concat([columns, embedded], axis=0)
            column_ids = tf.concat([column_ids, tf.cast(ids, column_ids.dtype)], axis=0)
        if self.candidate_frequency is not None and training is not False:
            self.candidate_frequency.update(batch.positive_ids)
        probability = self._column_probability(
            batch.candidate_sampling_probability, batch.candidate_ids, sampled
        )
        dtype = query_embeddings.dtype
        bias = (
            tf.zeros(tf.shape(column_ids), dtype)
            if probability is None
            else -tf.math.log(tf.clip_by_value(tf.cast(probability, dtype), 1e-6, 1.0))
        )
        first, index = distinct_columns(column_ids)
        offset = 0 if batch.label_offset is None else tf.cast(batch.label_offset, tf.int32)
        label_ids = index[offset : offset + num_queries]
        if compiling_with_xla():
            # XLA compiles per shape: keep every column, a repeat masked by its bias.
            repeated = tf.gather(first, index) < tf.range(tf.size(column_ids))
            bias = tf.where(repeated, tf.cast(MIN_FLOAT, dtype), bias)
            label_columns = tf.gather(first, label_ids)
        else:  # the distinct columns only: fewer columns, no mask
            columns, bias = _gather_rows(columns, first), tf.gather(bias, first)
            label_columns = label_ids
        queries = query_embeddings
        if self._temperature is not None:
            queries = queries / tf.cast(self._temperature, dtype)
        # Qᵀ·G then transposed is faster on the CPU than the Gᵀ·Q of transpose_b's gradient.
        scores = tf.linalg.matmul(queries, tf.transpose(columns)) + bias[tf.newaxis, :]
        labels = tf.one_hot(label_columns, tf.shape(scores)[1], dtype=dtype)
        losses = tf.nn.softmax_cross_entropy_with_logits(labels, scores)
        if sample_weight is not None:
            losses = losses * tf.cast(tf.reshape(sample_weight, [-1]), losses.dtype)
        return tf.reduce_sum(losses)

    # -- the steps of call, in order ------------------------------------------------------

    def _check_candidates(
        self,
        candidate_ids: tf.Tensor | None,
        candidate_sampling_probability: tf.Tensor | None,
    ) -> tf.Tensor | None:
        """``candidate_ids`` as a tensor, checked against what the options need."""
        if candidate_ids is not None:
            candidate_ids = tf.convert_to_tensor(candidate_ids)
        if self._by_id and candidate_ids is None:
            raise ValueError(
                "`candidate_ids` must be given when the task uses `candidate_frequency`, "
                "catalogue sampling or `in_batch_negatives=False`. Received: candidate_ids=None."
            )
        if self._by_id and not candidate_ids.dtype.is_integer:
            raise ValueError(
                "`candidate_ids` must be integer ids in the id space of the sampler and of "
                "`candidate_frequency`. Received: candidate_ids of dtype "
                f"{candidate_ids.dtype.name}."
            )
        if candidate_sampling_probability is not None and (
            self.candidate_frequency is not None or not self._in_batch_negatives
        ):
            raise ValueError(
                "`candidate_sampling_probability` must be None when the task has a "
                "`candidate_frequency` (it computes the probabilities itself) or "
                "`in_batch_negatives=False` (in-batch columns are then not negatives). "
                "Received: a candidate_sampling_probability tensor."
            )
        return candidate_ids

    def _global_batch(
        self,
        query_embeddings: tf.Tensor,
        candidate_embeddings: tf.Tensor,
        candidate_ids: tf.Tensor | None,
        candidate_sampling_probability: tf.Tensor | None,
    ) -> _Batch:
        """The replica's own candidates, or those of the global batch, gathered (module doc)."""
        num_queries = tf.shape(query_embeddings)[0]
        positive_ids = None if candidate_ids is None else candidate_ids[:num_queries]
        context = replica_context_to_gather() if self._global_batch_negatives else None
        if context is None:
            return _Batch(
                candidate_embeddings, candidate_ids, candidate_sampling_probability,
                positive_ids, query_embeddings, None, None,
            )  # fmt: skip
        self._check_distributed_frequency()
        sizes = context.all_gather(tf.shape(candidate_embeddings)[:1], axis=0)
        offset = tf.reduce_sum(sizes[: context.replica_id_in_sync_group])

        def gather(value: tf.Tensor | None) -> tf.Tensor | None:
            # tf.identity: under MultiWorkerMirroredStrategy a step's input tensor has no device,
            # and all_gather needs one (its destination).
            return None if value is None else context.all_gather(tf.identity(value), axis=0)

        queries = query_embeddings
        if self._num_sampled and self.sampler.needs_queries and not self.sampler.per_query:
            queries = gather(tf.stop_gradient(query_embeddings))  # the global batch mixture
        return _Batch(
            gather(candidate_embeddings),
            gather(candidate_ids),
            gather(candidate_sampling_probability),
            gather(positive_ids),
            queries,
            offset,
            context,
        )

    def _check_distributed_frequency(self) -> None:
        """A stateful ``candidate_frequency`` must live in the strategy (one copy per replica)."""
        variables = getattr(self.candidate_frequency, "variables", ())
        strategy = tf.distribute.get_strategy()
        if any(not strategy.extended.variable_created_in_scope(v) for v in variables):
            raise ValueError(
                "`candidate_frequency` must be created under `strategy.scope()` when the task "
                "runs in several replicas: its state is then one copy per replica, updated with "
                "the global batch. Received: a candidate_frequency created outside the scope."
            )

    @staticmethod
    def _labels(
        num_queries: tf.Tensor, num_columns: tf.Tensor, label_offset: tf.Tensor | None
    ) -> tf.Tensor:
        """``[B, num_columns]`` one-hot labels: row ``i``'s positive is column offset + i."""
        if label_offset is None:
            return tf.eye(num_queries, num_columns)
        return tf.one_hot(tf.range(num_queries) + tf.cast(label_offset, tf.int32), num_columns)

    def _sample_catalogue(self, query_embeddings: tf.Tensor, batch: _Batch) -> SampledValues | None:
        """The catalogue negatives of the step (None without catalogue sampling)."""
        if not self._num_sampled:
            return None
        if self.sampler.per_query and query_embeddings.shape.rank != 2:
            raise ValueError(
                "`query_embeddings` must have shape [batch_size, embedding_dim] with a "
                "per-example sampler (one query per row). Received: query_embeddings with "
                f"shape {query_embeddings.shape}."
            )
        sampled = self._draw(batch.candidate_ids, query_embeddings, batch.sampler_queries)
        if batch.context is None or self.sampler.per_query:
            return sampled
        # One shared draw per global step: replica 0's ids and expected counts on every replica.
        return SampledValues(*(_from_first_replica(batch.context, v) for v in sampled))

    def _scores(
        self,
        query_embeddings: tf.Tensor,
        candidate_embeddings: tf.Tensor,
        candidate_ids: tf.Tensor | None,
        sampled: SampledValues | None,
    ) -> tuple[tf.Tensor, tf.Tensor | None]:
        """``[B, num_columns]`` scores and the ids of the columns.

        Columns: the candidates, then the shared sampled ids (ids ``[num_columns]``), or per
        query the row's own sampled ids (ids ``[B, num_columns]``).
        """
        if sampled is None:
            return _dot(query_embeddings, candidate_embeddings), candidate_ids
        ids = sampled.sampled_candidates
        embedded = tf.cast(self.candidate_model(tf.reshape(ids, [-1])), candidate_embeddings.dtype)
        sampled_ids = tf.cast(ids, candidate_ids.dtype)
        if ids.shape.rank == 1:
            columns = tf.concat([candidate_embeddings, embedded], axis=0)
            column_ids = tf.concat([candidate_ids, sampled_ids], axis=0)
            return _dot(query_embeddings, columns), column_ids
        # [B, B_c + S]: the in-batch columns, then each row's own S sampled columns.
        embedded = tf.reshape(embedded, [tf.shape(ids)[0], self._num_sampled, -1])
        scores = tf.concat(
            [
                tf.linalg.matmul(query_embeddings, candidate_embeddings, transpose_b=True),
                tf.einsum("bd,bsd->bs", query_embeddings, embedded),
            ],
            axis=1,
        )
        in_batch = tf.tile(candidate_ids[tf.newaxis], [tf.shape(ids)[0], 1])
        return scores, tf.concat([in_batch, sampled_ids], axis=1)

    def _sampling_correction(
        self,
        scores: tf.Tensor,
        batch: _Batch,
        sampled: SampledValues | None,
        training: bool | None,
    ) -> tf.Tensor:
        """``scores - log q`` of every column (module docstring), if any ``q`` is known."""
        if self.candidate_frequency is not None and training is not False:
            self.candidate_frequency.update(batch.positive_ids)
        probability = self._column_probability(
            batch.candidate_sampling_probability, batch.candidate_ids, sampled
        )
        return scores if probability is None else self._correction(scores, probability)

    def _remove_hits(
        self, labels: tf.Tensor, scores: tf.Tensor, column_ids: tf.Tensor | None
    ) -> tf.Tensor:
        """Masks the columns holding the row's positive id, other than the label."""
        if not self._remove_accidental_hits:
            return scores
        if column_ids is None:
            raise ValueError(
                "When accidental hit removal is enabled, `candidate_ids` must be supplied. "
                "Received: candidate_ids=None."
            )
        if column_ids.shape.rank == 2:
            return _remove_accidental_hits_per_row(labels, scores, column_ids)
        return self._accidental_hits(labels, scores, column_ids)

    def _apply_score_mask(
        self, scores: tf.Tensor, score_mask: tf.Tensor | None, sampled: SampledValues | None
    ) -> tf.Tensor:
        """TFRS's ``score_mask`` over the candidates; catalogue columns are always kept."""
        if score_mask is None:
            return scores
        if sampled is not None:
            catalogue = tf.ones([tf.shape(scores)[0], self._num_sampled], tf.bool)
            score_mask = tf.concat([tf.cast(score_mask, tf.bool), catalogue], axis=1)
        return tf.where(score_mask, scores, MIN_FLOAT)

    def _draw(
        self, candidate_ids: tf.Tensor, query_embeddings: tf.Tensor, sampler_queries: tf.Tensor
    ) -> SampledValues:
        """``S`` unique catalogue ids with expected counts, for the batch's candidates.

        Shared: ``[S]`` ids; ``true_expected_count`` ``[B_c, 1]``, one per in-batch column.
        Per query (``sampler.per_query``): ``[B, S]`` ids; ``true_expected_count`` ``[B, B_c]``,
        every in-batch column under every row's proposal. A sampler with ``needs_queries``
        gets the queries (the kernel sampler's batch mixture, for one): ``sampler_queries``,
        those of the global batch when gathering, for a shared draw.
        """
        ids = tf.cast(candidate_ids, tf.int64)
        if self.sampler.per_query:
            true_classes = tf.tile(ids[tf.newaxis], [tf.shape(query_embeddings)[0], 1])
        else:
            true_classes = tf.reshape(ids, [-1, 1])
        if self.sampler.per_query:
            sampler_queries = query_embeddings
        extra = {"query_embeddings": sampler_queries} if self.sampler.needs_queries else {}
        values = self.sampler.sample(
            true_classes, self._num_sampled, unique=True, seed=self._seed, **extra
        )
        return SampledValues(*(tf.stop_gradient(v) for v in values))

    def _column_probability(
        self,
        candidate_sampling_probability: tf.Tensor | None,
        candidate_ids: tf.Tensor | None,
        sampled: SampledValues | None,
    ) -> tf.Tensor | None:
        """``[num_candidates (+ S)]`` q of every column (``[B, num_candidates + S]`` with
        per-example samples), or None for no correction."""
        in_batch = catalogue = None  # π_b of the in-batch and the sampled columns
        if candidate_sampling_probability is not None:
            in_batch = tf.cast(candidate_sampling_probability, tf.float32)
        elif self.candidate_frequency is not None and self._in_batch_negatives:
            in_batch = self.candidate_frequency.probability(candidate_ids)
            if sampled is not None:
                catalogue = self.candidate_frequency.probability(sampled.sampled_candidates)
        if sampled is None:
            return in_batch
        # Q_c of the in-batch columns, then of the sampled ones.
        if sampled.sampled_candidates.shape.rank == 2:  # per example: [B, B_c + S]
            counts = tf.concat([sampled.true_expected_count, sampled.sampled_expected_count], 1)
            axis = 1
            if in_batch is not None:
                in_batch = tf.broadcast_to(
                    tf.reshape(in_batch, [1, -1]), tf.shape(sampled.true_expected_count)
                )
        else:
            counts = tf.concat(
                [sampled.true_expected_count[:, 0], sampled.sampled_expected_count], 0
            )
            axis = 0
            if in_batch is not None:
                in_batch = tf.reshape(in_batch, [-1])
        if in_batch is None:
            return counts
        if catalogue is None:
            catalogue = tf.zeros_like(sampled.sampled_expected_count)
        batch = tf.concat([in_batch, catalogue], axis=axis)
        return batch + counts - batch * counts

    def _negative_mask(self, column_ids: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """``[batch_size, num_columns]`` bool: columns that must not act as negatives."""
        if column_ids.shape.rank == 2:  # per-example columns: the same rules, row by row
            num_candidates = tf.shape(column_ids)[1] - self._num_sampled
            repeated = repeated_per_row(column_ids)
            if not self._in_batch_negatives:
                repeated = tf.concat(
                    [
                        tf.ones_like(column_ids[:, :num_candidates], tf.bool),
                        repeated_per_row(column_ids[:, num_candidates:]),
                    ],
                    axis=1,
                )
            return tf.logical_and(repeated, tf.equal(labels, 0.0))
        num_candidates = tf.shape(column_ids)[0] - self._num_sampled
        if self._in_batch_negatives:
            repeated = repeated_columns(column_ids)
        else:
            # Only the sampled columns are negatives; repeats among them count once.
            repeated = tf.concat(
                [
                    tf.ones([num_candidates], tf.bool),
                    repeated_columns(column_ids[num_candidates:]),
                ],
                axis=0,
            )
        return tf.logical_and(repeated[tf.newaxis, :], tf.equal(labels, 0.0))

    def _update_metrics(
        self,
        loss: tf.Tensor,
        query_embeddings: tf.Tensor,
        candidate_embeddings: tf.Tensor,
        candidate_ids: tf.Tensor | None,
        labels: tf.Tensor,
        scores: tf.Tensor,
        *,
        sample_weight: tf.Tensor | None,
        compute_metrics: bool,
        compute_batch_metrics: bool,
    ) -> tf.Tensor:
        update_ops = [metric.update_state(loss) for metric in self._loss_metrics]
        if compute_metrics and len(tf.shape(query_embeddings)) == 2:
            for metric in self._factorized_metrics:
                update_ops.append(
                    metric.update_state(
                        query_embeddings,
                        # The positives only, without extra negatives.
                        candidate_embeddings[: tf.shape(query_embeddings)[0]],
                        # Ids the metric's index can match, or None to count hits by score.
                        true_candidate_ids=metric_candidate_ids(
                            metric, candidate_ids, num_queries=tf.shape(query_embeddings)[0]
                        ),
                        sample_weight=sample_weight,
                    )
                )
        if compute_batch_metrics:
            for metric in self._batch_metrics:
                update_ops.append(metric.update_state(labels, scores, sample_weight=sample_weight))
        with tf.control_dependencies(update_ops):
            return tf.identity(loss)

"""Tests of ``recsampled.tasks.Retrieval``: TFRS compatibility, and mixed negatives against NumPy.

Tolerances: with catalogue sampling off the task runs TFRS's own op chain, so losses agree to
1e-6 (relative and absolute; they are in fact equal). The NumPy reference is written loop by loop
in float64 from the math of the module docstring; float32 scores keep it within 1e-5 relative.
"""

from __future__ import annotations

# recsampled first: it sets TF_USE_LEGACY_KERAS before tensorflow_recommenders binds tf.keras.
import recsampled as rs

# isort: split
import itertools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recsampled.samplers.frequency import FixedFrequency, FrequencyEstimator
from recsampled.tasks import Retrieval
from recsampled.tasks.retrieval import distinct_columns, repeated_columns

MIN_FLOAT = float(np.finfo(np.float32).min / 100.0)


class FixedSampler(rs.CandidateSampler):
    """Returns the same draws every call, with known expected counts ``Q_c``."""

    def __init__(self, ids, expected_counts):
        super().__init__(num_classes=len(expected_counts))
        self.ids = np.asarray(ids, np.int64)
        self.counts = np.asarray(expected_counts, np.float32)

    def probability(self, ids):
        return tf.gather(tf.constant(self.counts), ids)

    def _sample(self, true_classes, num_sampled, unique, seed):
        assert num_sampled == self.ids.size and unique
        return rs.SampledValues(
            tf.constant(self.ids),
            self.probability(true_classes),
            self.probability(self.ids),
        )


class RecordingSampler(rs.CandidateSampler):
    """Delegates to a real sampler and keeps its last draw (for the NumPy reference)."""

    def __init__(self, sampler):
        super().__init__(num_classes=sampler.num_classes)
        self.sampler = sampler
        self.last = None

    def probability(self, ids):
        return self.sampler.probability(ids)

    def _sample(self, true_classes, num_sampled, unique, seed):
        self.last = self.sampler.sample(true_classes, num_sampled, unique=unique, seed=seed)
        return self.last


def reference_loss(
    queries,
    candidates,
    ids,
    sampled_embeddings=None,
    sampled_ids=(),
    in_batch_probability=None,
    sampled_in_batch_probability=None,
    in_batch_counts=None,
    sampled_counts=None,
    temperature=1.0,
    in_batch_negatives=True,
    sample_weight=None,
):
    """The loss of the module docstring, one row and one column at a time, in float64.

    ``in_batch_probability`` / ``sampled_in_batch_probability`` are π_b of the columns (None:
    unknown, 0); ``in_batch_counts`` / ``sampled_counts`` are Q_c (None: no catalogue, 0).
    """
    queries, candidates = np.float64(queries), np.float64(candidates)
    num_queries, num_candidates = len(queries), len(candidates)
    columns = candidates
    if len(sampled_ids):
        columns = np.concatenate([candidates, np.float64(sampled_embeddings)])
    column_ids = list(ids) + list(sampled_ids)
    num_sampled = len(sampled_ids)
    known = in_batch_probability is not None or sampled_counts is not None
    pi = np.zeros(len(column_ids))
    if in_batch_probability is not None and in_batch_negatives:
        pi[:num_candidates] = in_batch_probability
        if sampled_in_batch_probability is not None:
            pi[num_candidates:] = sampled_in_batch_probability
    counts = np.zeros(len(column_ids))
    if sampled_counts is not None:
        counts[:num_candidates] = in_batch_counts
        counts[num_candidates:] = sampled_counts
    total = 0.0
    for r in range(num_queries):
        logits = []
        for j, item in enumerate(column_ids):
            logit = queries[r] @ columns[j] / temperature
            if known:
                q = pi[j] + counts[j] - pi[j] * counts[j]  # 1 - (1 - π_b)(1 - Q_c)
                logit -= np.log(np.clip(q, 1e-6, 1.0))
            if j != r:
                hit = item == column_ids[r]
                if in_batch_negatives:
                    repeat = item in column_ids[:j]
                else:
                    repeat = j < num_candidates or item in column_ids[num_candidates:j]
                if hit or repeat:
                    logit = MIN_FLOAT
            logits.append(logit)
        logits = np.array(logits)
        top = logits.max()
        loss = top + np.log(np.exp(logits - top).sum()) - logits[r]
        total += loss * (1.0 if sample_weight is None else sample_weight[r])
    assert num_sampled == len(column_ids) - num_candidates
    return total


def _inputs(seed, num_queries=8, num_candidates=8, dim=4, num_ids=6, heads=None):
    rng = np.random.default_rng(seed)
    shape = (num_queries, heads, dim) if heads else (num_queries, dim)
    return dict(
        query_embeddings=tf.constant(rng.normal(size=shape), tf.float32),
        candidate_embeddings=tf.constant(rng.normal(size=(num_candidates, dim)), tf.float32),
        candidate_ids=tf.constant(rng.integers(0, num_ids, size=num_candidates)),
        candidate_sampling_probability=tf.constant(
            rng.uniform(1e-3, 1.0, size=num_candidates), tf.float32
        ),
        sample_weight=tf.constant(rng.uniform(0.1, 2.0, size=num_queries), tf.float32),
        score_mask=tf.constant(rng.uniform(size=(num_queries, num_candidates)) > 0.2),
    )


# -- compatibility with tfrs.tasks.Retrieval -------------------------------------------------

TASK_OPTIONS = [
    {},
    {"temperature": 0.2},
    {"remove_accidental_hits": True},
    {"num_hard_negatives": 3},
    {"temperature": 0.5, "remove_accidental_hits": True, "num_hard_negatives": 20},
]
CALL_OPTIONS = [
    (),
    ("candidate_sampling_probability",),
    ("sample_weight",),
    ("score_mask",),
    ("candidate_sampling_probability", "sample_weight", "score_mask"),
]


def _metrics():
    return dict(
        batch_metrics=[tf.keras.metrics.AUC(from_logits=True)],
        loss_metrics=[tf.keras.metrics.Mean()],
    )


@pytest.mark.parametrize(
    "index, options", list(enumerate(itertools.product(TASK_OPTIONS, CALL_OPTIONS)))
)
def test_loss_equals_tfrs_over_options(index, options):
    # Every combination of options; the seed and whether extra candidate rows (13 > 8 queries)
    # act as negatives rotate with the combination.
    task_options, call_options = options
    inputs = _inputs(seed=index, num_candidates=(8, 13)[index % 2])
    kwargs = {
        key: inputs[key]
        for key in ("query_embeddings", "candidate_embeddings", "candidate_ids", *call_options)
    }
    ours = Retrieval(**task_options, **_metrics())
    theirs = tfrs.tasks.Retrieval(**task_options, **_metrics())
    np.testing.assert_allclose(ours(**kwargs), theirs(**kwargs), rtol=1e-6, atol=1e-6)
    for mine, tfrs_metric in zip(
        ours._batch_metrics + ours._loss_metrics,
        theirs._batch_metrics + theirs._loss_metrics,
        strict=True,
    ):
        np.testing.assert_allclose(mine.result(), tfrs_metric.result(), rtol=1e-6)


def test_multi_head_queries_and_graph_mode_and_gradients_equal_tfrs():
    inputs = _inputs(4, num_candidates=10, heads=3)
    del inputs["score_mask"]
    options = {"temperature": 0.3, "remove_accidental_hits": True}

    def loss_and_gradients(task):
        @tf.function
        def run(queries, candidates):
            with tf.GradientTape() as tape:
                tape.watch([queries, candidates])
                loss = task(
                    queries,
                    candidates,
                    sample_weight=inputs["sample_weight"],
                    candidate_sampling_probability=inputs["candidate_sampling_probability"],
                    candidate_ids=inputs["candidate_ids"],
                )
            return loss, tape.gradient(loss, [queries, candidates])

        return run(inputs["query_embeddings"], inputs["candidate_embeddings"])

    ours = loss_and_gradients(Retrieval(**options))
    theirs = loss_and_gradients(tfrs.tasks.Retrieval(**options))
    for mine, expected in zip(tf.nest.flatten(ours), tf.nest.flatten(theirs), strict=True):
        np.testing.assert_allclose(mine, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("id_based", [True, False])
def test_factorized_top_k_metrics_equal_tfrs(id_based):
    rng = np.random.default_rng(7)
    corpus_ids = np.arange(40)
    corpus = tf.constant(rng.normal(size=(40, 4)), tf.float32)
    positives = rng.integers(0, 40, size=8)
    queries = tf.gather(corpus, positives) + tf.constant(rng.normal(size=(8, 4)), tf.float32)

    def metric():
        index = tfrs.layers.factorized_top_k.BruteForce(k=10)
        index.index(corpus, tf.constant(corpus_ids) if id_based else None)
        return tfrs.metrics.FactorizedTopK(candidates=index, ks=(1, 5, 10))

    kwargs = dict(
        candidate_ids=tf.constant(positives) if id_based else None,
        sample_weight=tf.constant(rng.uniform(0.5, 1.5, size=8), tf.float32),
    )
    ours = Retrieval(metrics=metric())
    theirs = tfrs.tasks.Retrieval(metrics=metric())
    candidates = tf.gather(corpus, positives)
    np.testing.assert_allclose(
        ours(queries, candidates, **kwargs), theirs(queries, candidates, **kwargs)
    )
    results = [m.result() for m in ours.factorized_metrics[0]._top_k_metrics]
    expected = [m.result() for m in theirs.factorized_metrics[0]._top_k_metrics]
    np.testing.assert_allclose(results, expected)
    assert max(float(r) for r in results) > 0


# -- frequency-based logQ --------------------------------------------------------------------


def test_frequency_without_repeats_equals_tfrs_with_those_probabilities():
    inputs = _inputs(3, num_candidates=8, num_ids=1000)
    ids = tf.range(8)  # distinct ids: no repeated column to mask
    frequency = FixedFrequency(counts=np.arange(20, 0, -1), batch_size=8)
    ours = Retrieval(remove_accidental_hits=True, temperature=0.5, candidate_frequency=frequency)
    theirs = tfrs.tasks.Retrieval(remove_accidental_hits=True, temperature=0.5)
    args = (inputs["query_embeddings"], inputs["candidate_embeddings"])
    expected = theirs(
        *args, candidate_ids=ids, candidate_sampling_probability=frequency.probability(ids)
    )
    np.testing.assert_allclose(ours(*args, candidate_ids=ids), expected, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_frequency_with_repeated_items_matches_reference(seed):
    inputs = _inputs(seed, num_candidates=10, num_ids=4)  # many repeats and accidental hits
    counts = np.array([5.0, 1.0, 3.0, 0.5])
    frequency = FixedFrequency(counts=counts, batch_size=8)
    task = Retrieval(remove_accidental_hits=True, temperature=0.7, candidate_frequency=frequency)
    ids = inputs["candidate_ids"]
    loss = task(
        inputs["query_embeddings"],
        inputs["candidate_embeddings"],
        candidate_ids=ids,
        sample_weight=inputs["sample_weight"],
    )
    p = counts / counts.sum()
    expected = reference_loss(
        inputs["query_embeddings"],
        inputs["candidate_embeddings"],
        ids.numpy(),
        in_batch_probability=1 - (1 - p[ids.numpy()]) ** 8,
        temperature=0.7,
        sample_weight=inputs["sample_weight"].numpy(),
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_estimator_is_updated_in_training_only_then_read():
    estimator = FrequencyEstimator(num_buckets=64, alpha=0.5)
    task = Retrieval(remove_accidental_hits=True, candidate_frequency=estimator)
    inputs = _inputs(0, num_candidates=8, num_ids=1000)
    ids = tf.constant([1, 2, 3, 4, 1, 2, 3, 4])
    args = (inputs["query_embeddings"], inputs["candidate_embeddings"])
    task(*args, candidate_ids=ids, training=False)
    assert int(estimator.step) == 0
    step = tf.function(lambda q, c: task(q, c, candidate_ids=ids, training=True))
    loss = step(*args)
    assert int(estimator.step) == 1
    # Read after the update: every id was seen once at step 1, so π_b = 1 and q = 1 (no shift).
    plain = Retrieval(
        remove_accidental_hits=True, candidate_frequency=FixedFrequency([1] * 5, 1000)
    )
    np.testing.assert_allclose(plain(*args, candidate_ids=ids, training=False), loss, rtol=1e-6)


# -- catalogue (mixed) negatives ---------------------------------------------------------------


def test_hand_worked_mixed_case():
    # Batch ids [0, 1]; the catalogue draws [1, 2]. With every q equal (π_b unknown, Q_c = 0.5)
    # the correction is a constant shift, so only the masks matter. Scores (D = 1):
    #   row 0, query 1: columns 0 (label) 1, 1 -> 2, sampled 1 (repeat of column 1: masked),
    #                   sampled 2 -> 3: loss = log(e^1 + e^2 + e^3) - 1 = 2.4076
    #   row 1, query 0: all scores 0, three unmasked columns: loss = log 3 = 1.0986
    embeddings = tf.constant([[1.0], [2.0], [3.0]])
    task = Retrieval(
        remove_accidental_hits=True,
        sampler=FixedSampler([1, 2], [0.5, 0.5, 0.5]),
        num_sampled=2,
        candidate_model=lambda ids: tf.gather(embeddings, ids),
    )
    loss = task(tf.constant([[1.0], [0.0]]), embeddings[:2], candidate_ids=tf.constant([0, 1]))
    expected = np.log(np.exp(1) + np.exp(2) + np.exp(3)) - 1 + np.log(3)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def _mixed_case(seed, num_candidates=10, num_ids=12, num_sampled=6):
    rng = np.random.default_rng(seed)
    inputs = _inputs(seed, num_candidates=num_candidates, num_ids=num_ids)
    table = tf.constant(rng.normal(size=(num_ids, 4)), tf.float32)
    # Sampled ids overlap the batch's ids (and so the rows' positives) on purpose.
    sampled_ids = rng.choice(num_ids, size=num_sampled, replace=False)
    counts = rng.uniform(0.05, 0.9, size=num_ids).astype(np.float32)
    return inputs, table, sampled_ids, counts


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("source", ["frequency", "tensor", "none", "sampled_softmax"])
def test_mixed_negatives_match_numpy_reference(seed, source):
    inputs, table, sampled_ids, counts = _mixed_case(seed)
    ids = inputs["candidate_ids"].numpy()
    item_counts = np.arange(12, 0, -1.0)
    frequency = FixedFrequency(counts=item_counts, batch_size=8)
    pi = frequency.probability(tf.range(12)).numpy()
    task = Retrieval(
        temperature=0.5,
        remove_accidental_hits=True,
        candidate_frequency=frequency if source == "frequency" else None,
        sampler=FixedSampler(sampled_ids, counts),
        num_sampled=len(sampled_ids),
        candidate_model=lambda i: tf.gather(table, i),
        in_batch_negatives=source != "sampled_softmax",
    )
    loss = task(
        inputs["query_embeddings"],
        inputs["candidate_embeddings"],
        sample_weight=inputs["sample_weight"],
        candidate_ids=inputs["candidate_ids"],
        candidate_sampling_probability=(tf.constant(pi[ids]) if source == "tensor" else None),
    )
    expected = reference_loss(
        inputs["query_embeddings"],
        inputs["candidate_embeddings"],
        ids,
        sampled_embeddings=tf.gather(table, sampled_ids),
        sampled_ids=sampled_ids,
        in_batch_probability=pi[ids] if source in ("frequency", "tensor") else None,
        sampled_in_batch_probability=pi[sampled_ids] if source == "frequency" else None,
        in_batch_counts=counts[ids],
        sampled_counts=counts[sampled_ids],
        temperature=0.5,
        in_batch_negatives=source != "sampled_softmax",
        sample_weight=inputs["sample_weight"].numpy(),
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_catalogue_columns_keep_score_mask_and_hard_negatives_shapes():
    inputs, table, sampled_ids, counts = _mixed_case(5)
    task = Retrieval(
        remove_accidental_hits=True,
        num_hard_negatives=4,
        batch_metrics=[tf.keras.metrics.TopKCategoricalAccuracy(k=2)],
        sampler=FixedSampler(sampled_ids, counts),
        num_sampled=len(sampled_ids),
        candidate_model=lambda i: tf.gather(table, i),
    )
    loss = task(
        inputs["query_embeddings"],
        inputs["candidate_embeddings"],
        candidate_ids=inputs["candidate_ids"],
        score_mask=inputs["score_mask"],
    )
    assert np.isfinite(loss.numpy()) and loss.shape == ()


def test_sampled_softmax_mode_equals_recsampled_sampled_softmax_loss():
    # in_batch_negatives=False: positive + S catalogue negatives, q = Q_c: TF's sampled softmax.
    rng = np.random.default_rng(11)
    table = tf.constant(rng.normal(size=(50, 4)), tf.float32)
    queries = tf.constant(rng.normal(size=(8, 4)), tf.float32)
    labels = tf.constant(rng.integers(0, 50, size=8))
    sampler = RecordingSampler(rs.UnigramSampler(counts=np.arange(50, 0, -1), distortion=0.75))
    task = Retrieval(
        remove_accidental_hits=True,
        sampler=sampler,
        num_sampled=10,
        candidate_model=lambda i: tf.gather(table, i),
        in_batch_negatives=False,
        seed=3,
    )
    loss = task(queries, tf.gather(table, labels), candidate_ids=labels)
    expected = rs.sampled_softmax_loss(
        weights=table,
        biases=tf.zeros([50]),
        labels=labels[:, tf.newaxis],
        inputs=queries,
        num_sampled=10,
        num_classes=50,
        sampled_values=sampler.last,
        remove_accidental_hits=True,
    )
    np.testing.assert_allclose(loss, tf.reduce_sum(expected), rtol=1e-5)


def test_real_sampler_in_graph_mode_trains_the_catalogue_embeddings():
    items = tf.keras.layers.Embedding(30, 4, embeddings_initializer="random_normal")
    sampler = RecordingSampler(rs.UniformSampler(num_classes=30))
    estimator = FrequencyEstimator(num_buckets=256, num_hashes=2)
    task = Retrieval(
        remove_accidental_hits=True,
        candidate_frequency=estimator,
        sampler=sampler,
        num_sampled=12,
        candidate_model=items,
        seed=1,
    )
    queries = tf.random.stateless_normal([6, 4], seed=[1, 2])
    ids = tf.constant([0, 1, 2, 2, 3, 4])

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = task(queries, items(ids), candidate_ids=ids, training=True)
        return loss, tape.gradient(loss, items.embeddings)

    loss, gradient = step()
    assert np.isfinite(loss.numpy())
    touched = np.flatnonzero(np.abs(tf.convert_to_tensor(gradient).numpy()).sum(axis=1))
    assert len(set(touched) - {0, 1, 2, 3, 4}) > 0  # catalogue-only items get gradients
    assert int(estimator.step) == 1
    assert items.embeddings.ref() in {v.ref() for v in task.trainable_variables}


# -- columns by id ----------------------------------------------------------------------------


def _by_id_case(seed, num_candidates=10, num_ids=5):
    """Candidates from an id table (equal ids, equal rows), many repeats and accidental hits."""
    rng = np.random.default_rng(seed)
    table = tf.constant(rng.normal(size=(num_ids + 7, 4)), tf.float32)
    ids = tf.constant(rng.integers(0, num_ids, size=num_candidates))
    queries = tf.constant(rng.normal(size=(8, 4)), tf.float32)
    weights = tf.constant(rng.uniform(0.1, 2.0, size=8), tf.float32)
    sampled = rng.choice(num_ids + 7, size=6, replace=False)  # overlaps the batch's ids
    counts = rng.uniform(0.05, 0.9, size=num_ids + 7).astype(np.float32)
    return table, ids, queries, weights, sampled, counts


def _by_id_tasks(source, table, sampled, counts):
    frequency = FixedFrequency(counts=np.arange(12, 0, -1.0), batch_size=8)
    options = dict(temperature=0.5, remove_accidental_hits=True)
    if source in ("frequency", "mixed"):
        options["candidate_frequency"] = frequency
    if source in ("mixed", "catalogue"):
        options |= dict(
            sampler=FixedSampler(sampled, counts),
            num_sampled=len(sampled),
            candidate_model=lambda i: tf.gather(table, i),
        )
    return Retrieval(**options), Retrieval(**options, columns_by_id=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("source", ["frequency", "mixed", "catalogue"])
@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_columns_by_id_equal_the_default_rules_with_an_id_table(seed, source, mode):
    # Loss and the gradients of the queries and of the id table equal those of the default rules
    # (and the NumPy reference) when equal ids have equal embeddings; float32 sums in another
    # order, so 1e-5 relative.
    table, ids, queries, weights, sampled, counts = _by_id_case(seed)
    default, by_id = _by_id_tasks(source, table, sampled, counts)
    assert by_id._use_columns_by_id(queries, None, True)

    def step(task, queries, table):
        with tf.GradientTape() as tape:
            tape.watch([queries, table])
            loss = task(queries, tf.gather(table, ids), candidate_ids=ids, sample_weight=weights)
        return loss, tape.gradient(loss, [queries, table])

    if mode != "eager":
        step = tf.function(step, jit_compile=mode == "xla")
    expected_loss, expected_gradients = step(default, queries, table)
    loss, gradients = step(by_id, queries, table)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    for got, want in zip(gradients, expected_gradients, strict=True):
        np.testing.assert_allclose(
            tf.convert_to_tensor(got), tf.convert_to_tensor(want), rtol=1e-5, atol=1e-6
        )
    pi = FixedFrequency(counts=np.arange(12, 0, -1.0), batch_size=8).probability(tf.range(12))
    catalogue = source != "frequency"
    reference = reference_loss(
        queries,
        tf.gather(table, ids),
        ids.numpy(),
        sampled_embeddings=tf.gather(table, sampled) if catalogue else None,
        sampled_ids=sampled if catalogue else (),
        in_batch_probability=pi.numpy()[ids.numpy()] if source != "catalogue" else None,
        sampled_in_batch_probability=pi.numpy()[sampled] if source == "mixed" else None,
        in_batch_counts=counts[ids.numpy()] if catalogue else None,
        sampled_counts=counts[sampled] if catalogue else None,
        temperature=0.5,
        sample_weight=weights.numpy(),
    )
    np.testing.assert_allclose(loss, reference, rtol=1e-5)


def test_columns_by_id_update_a_streaming_estimator_as_the_default_rules():
    # Three training steps with a FrequencyEstimator each: the same losses (the estimator is
    # updated before it is read, in both) and the same estimator state afterwards.
    table, ids, queries, weights, _, _ = _by_id_case(1)
    tasks = [
        Retrieval(
            remove_accidental_hits=True,
            candidate_frequency=FrequencyEstimator(num_buckets=64, alpha=0.5),
            columns_by_id=by_id,
        )
        for by_id in (False, True)
    ]
    losses = [[], []]
    for step in range(3):
        batch = tf.roll(ids, shift=step, axis=0)
        for task, out in zip(tasks, losses, strict=True):
            out.append(float(task(queries, tf.gather(table, batch), candidate_ids=batch)))
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    for name in ("step", "last_seen", "gap"):
        a, b = (getattr(task.candidate_frequency, name).numpy() for task in tasks)
        np.testing.assert_array_equal(a, b)


def test_columns_by_id_take_the_first_row_of_each_id():
    # With unequal rows for an equal id the two rules differ, as documented: the by-id loss
    # scores every row against the first row holding each id. Ids [0, 1, 0]: rows 0 and 2 share
    # id 0 and their label is column 0; column 2 (a repeat) drops out. D = 1, all q equal.
    candidates = tf.constant([[1.0], [2.0], [5.0]])
    queries = tf.constant([[1.0], [0.5], [1.0]])
    ids = tf.constant([0, 1, 0])
    frequency = FixedFrequency(counts=[1.0, 1.0], batch_size=1)
    options = dict(remove_accidental_hits=True, candidate_frequency=frequency)
    by_id = Retrieval(**options, columns_by_id=True)(queries, candidates, candidate_ids=ids)
    default = Retrieval(**options)(queries, candidates, candidate_ids=ids)
    # Row 0: columns (1, 2), label 1 -> log(e + e^2) - 1; row 1: (0.5, 1), label 1; row 2 as 0.
    row = lambda scores, label: np.log(np.exp(scores).sum()) - label  # noqa: E731
    expected = 2 * row(np.array([1.0, 2.0]), 1.0) + row(np.array([0.5, 1.0]), 1.0)
    np.testing.assert_allclose(by_id, expected, rtol=1e-6)
    # The default rules score row 2 against its own row (5) as the label: a different loss.
    assert abs(float(default) - expected) > 0.5


def test_columns_by_id_fall_back_where_they_do_not_apply():
    table, ids, queries, weights, sampled, counts = _by_id_case(0)
    frequency = FixedFrequency(counts=np.arange(12, 0, -1.0), batch_size=8)
    options = dict(remove_accidental_hits=True, columns_by_id=True)
    task = Retrieval(**options, candidate_frequency=frequency)
    mask = tf.ones([8, 10], tf.bool)
    assert not task._use_columns_by_id(queries, mask, False)  # a score_mask
    assert not task._use_columns_by_id(tf.ones([8, 2, 4]), None, False)  # multi-head queries
    assert not Retrieval(**options)._use_columns_by_id(queries, None, False)  # TFRS rules
    hard = Retrieval(**options, candidate_frequency=frequency, num_hard_negatives=3)
    assert not hard._use_columns_by_id(queries, None, False)
    lossy = Retrieval(
        **options,
        candidate_frequency=frequency,
        loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    assert not lossy._use_columns_by_id(queries, None, False)
    metered = Retrieval(**options, candidate_frequency=frequency, **_metrics())
    assert not metered._use_columns_by_id(queries, None, True)
    assert metered._use_columns_by_id(queries, None, False)
    # And the fallback is the default rules: equal losses with a score mask.
    default = Retrieval(remove_accidental_hits=True, candidate_frequency=frequency)
    args = (queries, tf.gather(table, ids))
    np.testing.assert_allclose(
        task(*args, candidate_ids=ids, score_mask=mask),
        default(*args, candidate_ids=ids, score_mask=mask),
        rtol=1e-6,
    )


def test_distinct_columns():
    first, index = distinct_columns(tf.constant([7, 3, 7, 7, 5, 3]))
    np.testing.assert_array_equal(tf.gather(first, index), [0, 1, 0, 0, 4, 1])


def test_repeated_columns():
    np.testing.assert_array_equal(
        repeated_columns(tf.constant([7, 3, 7, 7, 5, 3])), [0, 0, 1, 1, 0, 1]
    )


# -- bad input -------------------------------------------------------------------------------


def test_bad_constructor_arguments():
    table = tf.zeros([10, 2])
    sampler = rs.UniformSampler(num_classes=10)
    good = dict(
        remove_accidental_hits=True,
        sampler=sampler,
        num_sampled=3,
        candidate_model=lambda i: tf.gather(table, i),
    )
    bad = [
        (dict(temperature=0.0), "`temperature` must be None or a number > 0"),
        (dict(remove_accidental_hits="yes"), "`remove_accidental_hits` must be a bool"),
        ({**good, "num_sampled": -1}, "`num_sampled` must be an integer >= 0"),
        ({**good, "num_sampled": 11}, "`num_sampled` must be at most `num_classes`"),
        ({**good, "sampler": None}, "`sampler` must be a recsampled CandidateSampler"),
        ({**good, "candidate_model": None}, "`candidate_model` must be a callable"),
        ({**good, "remove_accidental_hits": False}, "`remove_accidental_hits` must be True"),
        (dict(in_batch_negatives=False), "`num_sampled` must be > 0"),
        (dict(candidate_frequency=object()), "`candidate_frequency` must have `update(ids)`"),
        ({**good, "seed": 1.5}, "`seed` must be None or an integer"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            Retrieval(**kwargs)


def test_bad_call_arguments():
    frequency = FixedFrequency(counts=[1, 2, 3], batch_size=2)
    task = Retrieval(remove_accidental_hits=True, candidate_frequency=frequency)
    q = tf.zeros([2, 2])
    with pytest.raises(ValueError, match="`candidate_ids` must be given"):
        task(q, q)
    with pytest.raises(ValueError, match="`candidate_ids` must be integer ids"):
        task(q, q, candidate_ids=tf.constant(["a", "b"]))
    with pytest.raises(ValueError, match="`candidate_sampling_probability` must be None"):
        task(q, q, candidate_ids=tf.constant([0, 1]), candidate_sampling_probability=[0.5, 0.5])
    with pytest.raises(ValueError, match="`candidate_ids` must be supplied"):
        Retrieval(remove_accidental_hits=True)(q, q)

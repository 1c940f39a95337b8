"""Retrieval with catalogue negatives from the kernel sampler (per query, and the batch mixture's
shared columns), against NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from recsampled.samplers import QuadraticKernelSampler
from recsampled.samplers.frequency import FixedFrequency
from recsampled.tasks import Retrieval
from recsampled.tasks.retrieval import MIN_FLOAT

NUM_IDS, DIM, NUM_SAMPLED = 14, 4, 5


class RecordingKernelSampler(QuadraticKernelSampler):
    """Keeps its last draw, for the reference."""

    def _sample(self, true_classes, num_sampled, unique, seed, *, query_embeddings=None):
        self.last = super()._sample(
            true_classes, num_sampled, unique, seed, query_embeddings=query_embeddings
        )
        return self.last


def brute_q(queries: np.ndarray, table: np.ndarray, alpha: float) -> np.ndarray:
    scores = alpha * (np.float64(queries) @ np.float64(table).T) ** 2 + 1.0
    return scores / scores.sum(axis=1, keepdims=True)


def reference_loss(
    queries, candidates, ids, table, sampled, tries, pi, in_batch_negatives, tau, q_kernel=None
):
    """Row by row: columns = in-batch then the row's own samples, q = 1 - (1 - π_b)(1 - Q_c)
    with ``Q_c = 1 - (1 - q(i | u_r))^T_r``; repeats within the row and hits masked.

    ``q_kernel``: ``[B, N]`` proposal of each row (default the per-query ``q(i | u_r)``); shared
    columns are rows of ``sampled`` that are all equal, with ``q̄`` on every row.
    """
    if q_kernel is None:
        q_kernel = brute_q(queries, table, 1.0)
    total = 0.0
    for r in range(len(queries)):
        column_ids = list(ids) + list(sampled[r])
        embeddings = np.concatenate([np.float64(candidates), np.float64(table[sampled[r]])])
        logits = []
        for j, item in enumerate(column_ids):
            logit = queries[r] @ embeddings[j] / tau
            q_c = -np.expm1(tries[r] * np.log1p(-q_kernel[r, item]))
            p_b = pi[item] if (pi is not None and in_batch_negatives) else 0.0
            logit -= np.log(np.clip(p_b + q_c - p_b * q_c, 1e-6, 1.0))
            if j != r:
                repeat = item in column_ids[:j]
                if not in_batch_negatives:
                    repeat = j < len(ids) or item in column_ids[len(ids) : j]
                if item == column_ids[r] or repeat:
                    logit = MIN_FLOAT
            logits.append(logit)
        logits = np.array(logits)
        top = logits.max()
        total += top + np.log(np.exp(logits - top).sum()) - logits[r]
    return total


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("mode", ["frequency", "sampled_softmax"])
def test_per_example_negatives_match_numpy_reference(seed, mode):
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(NUM_IDS, DIM)).astype(np.float32)
    queries = rng.normal(size=(6, DIM)).astype(np.float32)
    ids = rng.integers(0, NUM_IDS, size=6)  # repeats in the batch on purpose
    candidates = table[ids]
    sampler = RecordingKernelSampler(table, alpha=1.0, leaf_size=4, seed=seed, mode="per_query")
    frequency = FixedFrequency(counts=np.arange(NUM_IDS, 0, -1.0), batch_size=6)
    task = Retrieval(
        temperature=0.5,
        remove_accidental_hits=True,
        candidate_frequency=frequency if mode == "frequency" else None,
        sampler=sampler,
        num_sampled=NUM_SAMPLED,
        candidate_model=lambda i: tf.gather(table, i),
        in_batch_negatives=mode == "frequency",
    )
    loss = task(queries, candidates, candidate_ids=tf.constant(ids), training=False)
    sampled = sampler.last.sampled_candidates.numpy()
    assert sampled.shape == (6, NUM_SAMPLED)
    assert all(len(set(row)) == NUM_SAMPLED for row in sampled.tolist())
    # The number of draws per row, recovered from the reported counts (checked to 1e-5 in the
    # sampler's own tests).
    q = brute_q(queries, table, 1.0)
    counts = sampler.last.sampled_expected_count.numpy()
    tries = np.round(np.log1p(-counts[:, 0]) / np.log1p(-q[np.arange(6), sampled[:, 0]]))
    pi = frequency.probability(tf.range(NUM_IDS)).numpy() if mode == "frequency" else None
    expected = reference_loss(
        queries, candidates, ids, table, sampled, tries, pi, mode == "frequency", 0.5
    )
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("mode", ["frequency", "sampled_softmax"])
def test_batch_mixture_negatives_match_numpy_reference(seed, mode):
    """Shared columns from q̄: Q_c = 1 - (1 - q̄(i))^T for every row, combined with π_b."""
    rng = np.random.default_rng(seed + 10)
    table = rng.normal(size=(NUM_IDS, DIM)).astype(np.float32)
    queries = rng.normal(size=(6, DIM)).astype(np.float32)
    ids = rng.integers(0, NUM_IDS, size=6)
    sampler = RecordingKernelSampler(table, alpha=1.0, leaf_size=4, seed=seed)
    frequency = FixedFrequency(counts=np.arange(NUM_IDS, 0, -1.0), batch_size=6)
    task = Retrieval(
        temperature=0.5,
        remove_accidental_hits=True,
        candidate_frequency=frequency if mode == "frequency" else None,
        sampler=sampler,
        num_sampled=NUM_SAMPLED,
        candidate_model=lambda i: tf.gather(table, i),
        in_batch_negatives=mode == "frequency",
    )
    loss = task(queries, table[ids], candidate_ids=tf.constant(ids), training=False)
    shared = sampler.last.sampled_candidates.numpy()
    assert shared.shape == (NUM_SAMPLED,) and len(set(shared.tolist())) == NUM_SAMPLED
    q_bar = brute_q(queries, table, 1.0).mean(axis=0)
    counts = sampler.last.sampled_expected_count.numpy()
    tries = np.round(np.log1p(-counts[0]) / np.log1p(-q_bar[shared[0]]))
    pi = frequency.probability(tf.range(NUM_IDS)).numpy() if mode == "frequency" else None
    expected = reference_loss(
        queries,
        table[ids],
        ids,
        table,
        np.tile(shared, (6, 1)),
        np.full(6, tries),
        pi,
        mode == "frequency",
        0.5,
        q_kernel=np.tile(q_bar, (6, 1)),
    )
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("kernel_mode", ["per_query", "batch_mixture"])
def test_per_example_negatives_in_graph_mode_with_gradients(kernel_mode):
    rng = np.random.default_rng(3)
    table = tf.Variable(rng.normal(size=(NUM_IDS, DIM)).astype(np.float32))
    sampler = QuadraticKernelSampler(table, alpha=10.0, leaf_size=4, seed=1, mode=kernel_mode)
    task = Retrieval(
        remove_accidental_hits=True,
        sampler=sampler,
        num_sampled=NUM_SAMPLED,
        candidate_model=lambda i: tf.gather(table, i),
    )
    queries = tf.Variable(rng.normal(size=(5, DIM)).astype(np.float32))
    ids = tf.constant([0, 3, 3, 9, 13])

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = task(queries, tf.gather(table, ids), candidate_ids=ids)
        return loss, tape.gradient(loss, [queries, table])

    loss, (query_grad, table_grad) = step()
    assert np.isfinite(loss.numpy())
    assert np.all(np.isfinite(query_grad.numpy()))
    assert np.all(np.isfinite(tf.convert_to_tensor(table_grad).numpy()))


def test_multi_head_queries_are_refused_with_a_per_example_sampler():
    table = np.ones([NUM_IDS, DIM], np.float32)
    task = Retrieval(
        remove_accidental_hits=True,
        sampler=QuadraticKernelSampler(table, leaf_size=4, mode="per_query"),
        num_sampled=2,
        candidate_model=lambda i: tf.gather(table, i),
    )
    with pytest.raises(ValueError, match="`query_embeddings` must .*Received"):
        task(tf.ones([2, 3, DIM]), tf.ones([2, DIM]), candidate_ids=tf.constant([0, 1]))

"""The sampled softmax against TF's op (shared samples) and a NumPy reference (per example)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import recsampled as rs

N, D, B, S = 37, 8, 16, 12  # small N so that accidental hits happen often


def _problem(seed: int, num_true: int, num_shards: int):
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(N, D)).astype(np.float32)
    if num_shards == 1:
        w_vars = tf.Variable(weights)
    else:  # "div" partition: shard sizes differ by at most one, the first ones larger
        sizes = [N // num_shards + (i < N % num_shards) for i in range(num_shards)]
        w_vars = [tf.Variable(part) for part in np.split(weights, np.cumsum(sizes)[:-1])]
    biases = tf.Variable(rng.normal(size=N).astype(np.float32))
    inputs = tf.Variable(rng.normal(size=(B, D)).astype(np.float32))
    labels = tf.constant(rng.integers(0, N, size=(B, num_true)), tf.int64)
    return weights, w_vars, biases, inputs, labels


def _loss_and_grads(fn, w_vars, biases, inputs, **kwargs):
    variables = [*(w_vars if isinstance(w_vars, list) else [w_vars]), biases, inputs]
    with tf.GradientTape() as tape:
        loss = fn(weights=w_vars, biases=biases, inputs=inputs, **kwargs)
        total = tf.reduce_sum(loss * tf.range(1.0, B + 1.0))  # weight rows to test each one
    grads = tape.gradient(total, variables)
    return loss.numpy(), [tf.convert_to_tensor(g).numpy() for g in grads]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_true", [1, 3])
@pytest.mark.parametrize("remove_accidental_hits", [True, False])
@pytest.mark.parametrize("num_shards", [1, 3])
def test_matches_tf_op(seed, num_true, remove_accidental_hits, num_shards):
    _, w_vars, biases, inputs, labels = _problem(seed, num_true, num_shards)
    sampled_values = tf.random.log_uniform_candidate_sampler(
        labels, num_true, S, unique=True, range_max=N, seed=seed
    )
    hits = np.isin(sampled_values[0].numpy()[None, :], labels.numpy()).any()
    assert hits, "the test problem must contain accidental hits to test their removal"
    kwargs = dict(
        labels=labels,
        num_sampled=S,
        num_classes=N,
        num_true=num_true,
        sampled_values=sampled_values,
        remove_accidental_hits=remove_accidental_hits,
    )
    ours, our_grads = _loss_and_grads(rs.sampled_softmax_loss, w_vars, biases, inputs, **kwargs)
    theirs, tf_grads = _loss_and_grads(tf.nn.sampled_softmax_loss, w_vars, biases, inputs, **kwargs)
    assert ours.shape == (B,)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    assert len(our_grads) == len(tf_grads)
    for mine, ref in zip(our_grads, tf_grads, strict=True):
        np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler_cls", [rs.UniformSampler, rs.LogUniformSampler])
def test_our_sampler_triple_works_in_tf_op(sampler_cls):
    _, w, b, x, labels = _problem(5, 1, 1)
    values = sampler_cls(N).sample(labels, S, seed=7)
    theirs = tf.nn.sampled_softmax_loss(w, b, labels, x, S, N, sampled_values=values)
    ours = rs.sampled_softmax_loss(w, b, labels, x, S, N, sampled_values=values)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)


def test_unigram_triple_works_in_tf_op():
    _, w, b, x, labels = _problem(6, 2, 1)
    counts = np.arange(1, N + 1)[::-1]  # every class has a positive count: log Q is finite
    values = rs.UnigramSampler(counts, distortion=0.75).sample(labels, S, seed=7)
    theirs = tf.nn.sampled_softmax_loss(w, b, labels, x, S, N, num_true=2, sampled_values=values)
    ours = rs.sampled_softmax_loss(w, b, labels, x, S, N, num_true=2, sampled_values=values)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)


def test_default_sampler_is_tfs_default():
    """With ``sampled_values=None`` both draw from TF's log-uniform sampler with the seed."""
    _, w, b, x, labels = _problem(3, 1, 1)
    tf.random.set_seed(11)
    ours = rs.sampled_softmax_loss(w, b, labels, x, S, N, seed=5)
    tf.random.set_seed(11)
    theirs = tf.nn.sampled_softmax_loss(w, b, labels, x, S, N, seed=5)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)


def test_inside_tf_function_matches_eager():
    _, w, b, x, labels = _problem(4, 1, 1)
    values = rs.LogUniformSampler(N).sample(labels, S, seed=1)
    eager = rs.sampled_softmax_loss(w, b, labels, x, S, N, sampled_values=values)
    graph = tf.function(rs.sampled_softmax_loss)(w, b, labels, x, S, N, sampled_values=values)
    np.testing.assert_allclose(graph.numpy(), eager.numpy(), rtol=1e-6)


# --- Per-example candidates: a NumPy reference written from the math, not from the code. ---


def _numpy_reference(weights, biases, labels, inputs, sampled, true_q, sampled_q, remove_hits):
    """Loss and dLoss/dinputs of the sampled softmax with per-example candidates."""
    num_true = labels.shape[1]
    losses, grads = [], []
    for row in range(inputs.shape[0]):
        ids = np.concatenate([labels[row], sampled[row]])
        q = np.concatenate([true_q[row], sampled_q[row]])
        logits = weights[ids] @ inputs[row] + biases[ids] - np.log(q)
        if remove_hits:
            hit = np.isin(sampled[row], labels[row])
            logits[num_true:][hit] = np.finfo(np.float32).min
        target = np.r_[np.full(num_true, 1.0 / num_true), np.zeros(sampled.shape[1])]
        shifted = logits - logits.max()
        log_softmax = shifted - np.log(np.exp(shifted).sum())
        losses.append(-(target * log_softmax).sum())
        grads.append((np.exp(log_softmax) - target) @ weights[ids])
    return np.array(losses), np.array(grads)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_true", [1, 3])
@pytest.mark.parametrize("remove_accidental_hits", [True, False])
def test_per_example_candidates_match_numpy(seed, num_true, remove_accidental_hits):
    weights, w, b, x, labels = _problem(seed, num_true, 1)
    rng = np.random.default_rng(100 + seed)
    sampled = rng.integers(0, N, size=(B, S))
    sampled[:, 0] = labels.numpy()[:, 0]  # every row has an accidental hit in column 0
    true_q = rng.uniform(0.05, 2.0, size=(B, num_true)).astype(np.float32)
    sampled_q = rng.uniform(0.05, 2.0, size=(B, S)).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = rs.sampled_softmax_loss(
            w,
            b,
            labels,
            x,
            num_sampled=S,
            num_classes=N,
            num_true=num_true,
            sampled_values=(tf.constant(sampled), tf.constant(true_q), tf.constant(sampled_q)),
            remove_accidental_hits=remove_accidental_hits,
        )
        total = tf.reduce_sum(loss)
    grad_x = tape.gradient(total, x)
    ref_loss, ref_grad = _numpy_reference(
        weights,
        b.numpy(),
        labels.numpy(),
        x.numpy(),
        sampled,
        true_q,
        sampled_q,
        remove_accidental_hits,
    )
    np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_x.numpy(), ref_grad, rtol=1e-4, atol=1e-5)


def test_per_example_equal_rows_equal_shared_sample():
    _, w, b, x, labels = _problem(9, 2, 1)
    shared = rs.LogUniformSampler(N).sample(labels, S, seed=3)
    tiled = (
        tf.tile(shared[0][tf.newaxis], [B, 1]),
        shared[1],
        tf.tile(shared[2][tf.newaxis], [B, 1]),
    )
    a = rs.sampled_softmax_loss(w, b, labels, x, S, N, num_true=2, sampled_values=shared)
    c = rs.sampled_softmax_loss(w, b, labels, x, S, N, num_true=2, sampled_values=tiled)
    np.testing.assert_allclose(a.numpy(), c.numpy(), rtol=1e-6, atol=1e-6)


def test_sampled_logits_layout():
    """Hand-worked case: one row, label 2, candidates [2, 0]; Q = 1 everywhere.

    logits = h·w + b = [w_2·h, w_2·h, w_0·h] = [2, 2, 0]; the hit in column 1 gets -FLT_MAX.
    """
    w = tf.constant([[0.0, 0.0], [5.0, 5.0], [1.0, 1.0]])
    b = tf.zeros([3])
    x = tf.constant([[1.0, 1.0]])
    values = (tf.constant([2, 0], tf.int64), tf.ones([1, 1]), tf.ones([2]))
    logits, targets = rs.sampled_logits(
        w, b, [[2]], x, 2, 3, sampled_values=values, remove_accidental_hits=True
    )
    np.testing.assert_allclose(logits.numpy(), [[2.0, np.finfo(np.float32).min, 0.0]])
    np.testing.assert_allclose(targets.numpy(), [[1.0, 0.0, 0.0]])

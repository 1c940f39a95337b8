"""The full softmax loss against TF's dense cross-entropy and NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import recsampled as rs


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("num_true", [1, 3])
def test_matches_dense_cross_entropy(seed, num_true):
    rng = np.random.default_rng(seed)
    n, d, b = 23, 5, 7
    w = rng.normal(size=(n, d)).astype(np.float32)
    bias = rng.normal(size=n).astype(np.float32)
    x = rng.normal(size=(b, d)).astype(np.float32)
    labels = rng.integers(0, n, size=(b, num_true))
    dense = np.zeros((b, n), np.float32)
    for row, ids in enumerate(labels):
        for i in ids:  # a repeated label gets its share twice, as in the sampled loss
            dense[row, i] += 1.0 / num_true
    expected = tf.nn.softmax_cross_entropy_with_logits(dense, x @ w.T + bias).numpy()
    got = rs.full_softmax_loss(w, bias, labels, x, num_classes=n, num_true=num_true)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    shards = [w[:8], w[8:16], w[16:]]  # "div": ids in order across shards
    sharded = rs.full_softmax_loss(shards, bias, labels, x, num_classes=n, num_true=num_true)
    np.testing.assert_allclose(sharded.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_sampled_loss_with_every_class_sampled_and_no_correction_is_full_softmax():
    """If the 'sample' is every class exactly once with Q = 1, sampled softmax is the full one
    (the label column and its accidental-hit duplicate: one of them masked)."""
    rng = np.random.default_rng(3)
    n, d, b = 11, 4, 6
    w = rng.normal(size=(n, d)).astype(np.float32)
    bias = rng.normal(size=n).astype(np.float32)
    x = rng.normal(size=(b, d)).astype(np.float32)
    labels = rng.integers(0, n, size=(b, 1))
    values = (tf.range(n, dtype=tf.int64), tf.ones([b, 1]), tf.ones([n]))
    sampled = rs.sampled_softmax_loss(w, bias, labels, x, n, n, sampled_values=values)
    full = rs.full_softmax_loss(w, bias, labels, x, n)
    np.testing.assert_allclose(sampled.numpy(), full.numpy(), rtol=1e-5, atol=1e-5)

"""Bad arguments to the losses raise ValueError in the Keras template: argument, rule, value."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import recsampled as rs

N, D, B, S = 20, 4, 3, 5


def _args(**overrides):
    rng = np.random.default_rng(0)
    args = dict(
        weights=tf.constant(rng.normal(size=(N, D)), tf.float32),
        biases=tf.zeros([N]),
        labels=tf.constant([[1], [2], [3]], tf.int64),
        inputs=tf.constant(rng.normal(size=(B, D)), tf.float32),
        num_sampled=S,
        num_classes=N,
    )
    return args | overrides


BAD = [
    (dict(num_sampled=0), "`num_sampled` must be a positive integer. Received: num_sampled=0"),
    (dict(num_sampled=-2), "Received: num_sampled=-2 \\(of type int\\)"),
    (dict(num_sampled=2.0), "Received: num_sampled=2.0 \\(of type float\\)"),
    (dict(num_sampled=N + 1), "at most `num_classes`.*num_sampled=21, num_classes=20"),
    (dict(num_classes=0), "`num_classes` must be a positive integer"),
    (dict(num_true=0), "`num_true` must be a positive integer"),
    (dict(labels=[[N]]), r"`labels` must hold class ids in \[0, num_classes=20\)"),
    (dict(labels=tf.constant([[1], [-1], [2]])), "Received: an id equal to -1"),
    (dict(labels=tf.constant([[1.0], [2.0], [3.0]])), "`labels` must be integer class ids"),
    (dict(labels=tf.constant([[1, 2], [2, 3], [3, 4]])), r"num_true=1\]. Received: labels with"),
    (dict(labels=tf.constant([[1], [2]])), "same batch size"),
    (dict(inputs=tf.ones([B, D], tf.int32)), "`inputs` must be a float tensor"),
    (dict(inputs=tf.ones([B, D + 1])), "same dim"),
    (dict(inputs=tf.ones([B, 1, D])), r"`inputs` must have shape \[batch_size, dim\]"),
    (dict(weights=tf.ones([N - 1, D])), "at least num_classes=20 rows"),
    (dict(weights=tf.ones([N])), r"`weights` must be \[num_classes, dim\]"),
    (dict(weights=[]), "non-empty list of shards"),
    (dict(biases=tf.ones([N, 1])), r"`biases` must be a \[num_classes\] vector"),
    (dict(sampled_values=(1, 2)), "`sampled_values` must be a"),
    (
        dict(sampled_values=(tf.constant([1, 2, 3], tf.int64), tf.ones([B, 1]), tf.ones([3]))),
        r"must have shape \[num_sampled=5\]",
    ),
    (
        dict(sampled_values=(tf.constant([1.0] * S), tf.ones([B, 1]), tf.ones([S]))),
        "must hold integer ids",
    ),
    (
        dict(sampled_values=(tf.range(S, dtype=tf.int64), tf.ones([B, 1]), tf.ones([S + 1]))),
        "sampled_expected_count",
    ),
    (
        dict(sampled_values=(tf.range(S, dtype=tf.int64), tf.ones([B, 2]), tf.ones([S]))),
        "true_expected_count",
    ),
    (
        dict(sampled_values=(tf.zeros([B + 1, S], tf.int64), tf.ones([B, 1]), tf.ones([B + 1, S]))),
        "one row per example",
    ),
    (
        dict(
            sampled_values=(tf.constant([0, 1, 2, 3, N], tf.int64), tf.ones([B, 1]), tf.ones([S]))
        ),
        "`sampled_values\\[0\\]` must hold class ids",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), BAD)
def test_sampled_softmax_bad_arguments(overrides, message):
    with pytest.raises(ValueError, match=message):
        rs.sampled_softmax_loss(**_args(**overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(num_classes=-1), "`num_classes` must be a positive integer"),
        (dict(labels=[[N]]), r"in \[0, num_classes=20\)"),
        (dict(inputs=tf.ones([B, D + 1])), "same dim"),
    ],
)
def test_full_softmax_bad_arguments(overrides, message):
    args = _args(**overrides)
    del args["num_sampled"]
    with pytest.raises(ValueError, match=message):
        rs.full_softmax_loss(**args)


def test_good_arguments_pass():
    """The baseline of the table above is valid, so each failure comes from its one change."""
    assert rs.sampled_softmax_loss(**_args()).shape == (B,)

"""Full softmax cross-entropy with the arguments of ``sampled_softmax_loss`` (minus sampling).

``loss = logsumexp_j(h·w_j + b_j) - (1/T) Σ_t (h·w_{y_t} + b_{y_t})`` over all N classes: the
cross-entropy against the target ``1/T`` on each of the ``T = num_true`` labels, which is what the
sampled softmax estimates. It costs a ``[batch_size, N]`` matrix of logits: use it to evaluate,
and as the reference the sampled losses are compared with.
"""

from __future__ import annotations

import tensorflow as tf

from recsampled._validation import check_positive_int
from recsampled.losses.sampled_softmax import (
    Weights,
    _as_labels,
    _as_shards,
    _check_shapes,
    lookup,
)


def full_logits(
    weights: Weights, biases: Weights, inputs: tf.Tensor, num_classes: int
) -> tf.Tensor:
    """``[batch_size, num_classes]`` logits ``inputs · weightsᵀ + biases`` over every class.

    Args:
        weights: ``[num_classes, dim]``, or shards partitioned by ``"div"`` (concatenated in
            order, which is the ``"div"`` id order).
        biases: ``[num_classes]`` (or shards).
        inputs: ``[batch_size, dim]`` float.
        num_classes: N; extra rows of ``weights`` beyond N are ignored.
    """
    shards = _as_shards(weights)
    w = shards[0] if len(shards) == 1 else tf.concat(shards, axis=0)
    bias_shards = _as_shards(biases)
    b = bias_shards[0] if len(bias_shards) == 1 else tf.concat(bias_shards, axis=0)
    w = tf.cast(w[:num_classes], inputs.dtype)
    b = tf.cast(b[:num_classes], inputs.dtype)
    return tf.matmul(inputs, w, transpose_b=True) + b


def full_softmax_loss(
    weights: Weights,
    biases: Weights,
    labels: tf.Tensor,
    inputs: tf.Tensor,
    num_classes: int,
    num_true: int = 1,
    name: str = "full_softmax_loss",
) -> tf.Tensor:
    """Exact softmax cross-entropy over all classes, the quantity sampled softmax estimates.

    Args:
        weights: ``[num_classes, dim]`` tensor or variable, or a list of ``"div"`` shards.
        biases: ``[num_classes]`` biases.
        labels: ``[batch_size, num_true]`` integer ids (``[batch_size]`` when ``num_true == 1``).
        inputs: ``[batch_size, dim]`` float activations.
        num_classes: N.
        num_true: labels per example; each gets target ``1 / num_true``.
        name: name scope.

    Returns:
        ``[batch_size]`` per-example losses.
    """
    num_classes = check_positive_int("num_classes", num_classes)
    num_true = check_positive_int("num_true", num_true)
    with tf.name_scope(name):
        inputs = tf.convert_to_tensor(inputs)
        if not inputs.dtype.is_floating:
            raise ValueError(
                f"`inputs` must be a float tensor. Received: inputs of dtype {inputs.dtype.name}."
            )
        labels = _as_labels(labels, num_true, num_classes)
        _check_shapes(_as_shards(weights), biases, inputs, labels, num_classes)
        logits = full_logits(weights, biases, inputs, num_classes)
        # [B, T] label logits as row-wise dot products: gathering them from `logits` would give
        # a dense [B, N] gradient (2x slower and twice the memory at N = 10^6).
        true_w = tf.cast(lookup(weights, labels), inputs.dtype)  # [B, T, D]
        true_b = tf.cast(lookup(biases, labels), inputs.dtype)  # [B, T]
        true_logits = tf.reduce_sum(inputs[:, tf.newaxis, :] * true_w, axis=-1) + true_b
        return tf.reduce_logsumexp(logits, axis=1) - tf.reduce_mean(true_logits, axis=1)

"""Deterministic samplers and a NumPy reference for the layer tests."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import recsampled as rs


@tf.keras.utils.register_keras_serializable(package="recsampled_tests")
class FixedSampler(rs.CandidateSampler):
    """Always returns ``ids`` with expected count 1, so the logQ correction subtracts 0."""

    def __init__(self, num_classes: int, ids: list[int]):
        super().__init__(num_classes)
        self.ids = [int(i) for i in ids]

    def probability(self, ids: tf.Tensor) -> tf.Tensor:
        return tf.ones_like(tf.cast(ids, tf.float32))

    def _sample(self, true_classes, num_sampled, unique, seed) -> rs.SampledValues:
        ids = tf.constant(self.ids[:num_sampled], tf.int64)
        return rs.SampledValues(
            ids, tf.ones(tf.shape(true_classes), tf.float32), tf.ones([num_sampled], tf.float32)
        )

    def get_config(self) -> dict:
        return {"num_classes": self.num_classes, "ids": self.ids}


class PerExampleSampler(rs.CandidateSampler):
    """Row ``i`` gets ``(target_i + k) % N`` for ``k < S`` (so column 0 is an accidental hit).

    It takes ``query_embeddings`` as an adaptive sampler does, and records their shape.
    """

    needs_queries = True
    per_query = True

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.query_shapes: list[tf.TensorShape] = []

    def probability(self, ids: tf.Tensor) -> tf.Tensor:
        return tf.ones_like(tf.cast(ids, tf.float32))

    def _sample(self, true_classes, num_sampled, unique, seed, *, query_embeddings):
        self.query_shapes.append(query_embeddings.shape)
        ids = (true_classes[:, :1] + tf.range(num_sampled, dtype=tf.int64)) % self.num_classes
        ones = tf.ones(tf.shape(ids), tf.float32)
        return rs.SampledValues(ids, tf.ones(tf.shape(true_classes), tf.float32), ones)


def sampled_losses(
    hidden: np.ndarray, weights: np.ndarray, biases: np.ndarray, targets: np.ndarray, candidates
) -> np.ndarray:
    """``[n]`` sampled softmax losses with expected counts 1, accidental hits removed.

    ``candidates`` is ``[S]`` (shared) or ``[n, S]`` (per example).
    """
    hidden = hidden.astype(np.float64)
    candidates = np.broadcast_to(candidates, (len(targets), np.shape(candidates)[-1]))
    true_logit = np.einsum("nd,nd->n", hidden, weights[targets]) + biases[targets]
    logits = np.einsum("nd,nsd->ns", hidden, weights[candidates]) + biases[candidates]
    logits[candidates == targets[:, None]] = -np.inf
    all_logits = np.concatenate([true_logit[:, None], logits], axis=1)
    top = all_logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(all_logits - top).sum(axis=1))
    return lse - true_logit

"""Tests of the ``SampledSoftmax`` layer on its own: outputs, sampled loss, masks, tying, config."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import recsampled as rs
from recsampled.layers import SampledSoftmax, get_sampler
from tests.layers.fakes import FixedSampler, PerExampleSampler, sampled_losses

V, D = 20, 6


def make_head(**kwargs) -> SampledSoftmax:
    kwargs.setdefault("bias_initializer", "random_normal")
    head = SampledSoftmax(V, kwargs.pop("num_sampled", 5), **kwargs)
    head.build([None, D])
    return head


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("shape", [(4, D), (3, 5, D)])
def test_inference_is_the_full_softmax(shape):
    head = make_head()
    hidden = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    probabilities = head(hidden).numpy()  # training=False by default
    expected = softmax(hidden @ head.kernel.numpy().T + head.bias.numpy())
    assert probabilities.shape == shape[:-1] + (V,)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)


def test_training_call_passes_hidden_states_through():
    hidden = np.ones([2, 3, D], np.float32)
    np.testing.assert_array_equal(make_head()(hidden, training=True).numpy(), hidden)


def test_sampled_loss_matches_numpy_with_fixed_candidates():
    # Candidates {1, 3, 4, 7, 9}; the target 3 of row 1 is an accidental hit and must be removed.
    candidates = [1, 3, 4, 7, 9]
    head = make_head(sampler=FixedSampler(V, candidates))
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=[4, D]).astype(np.float32)
    targets = np.array([0, 3, 12, 19])
    loss = head.sampled_loss(targets, hidden).numpy()
    w, b = head.kernel.numpy(), head.bias.numpy()
    expected = sampled_losses(hidden, w, b, targets, np.array(candidates)).mean()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_sampled_loss_is_the_mean_over_real_steps():
    # Steps where mask is False carry garbage; the loss must be
    # sum(weight * loss over real steps) / (number of real steps).
    head = make_head(sampler=FixedSampler(V, [2, 5, 8, 11, 14]))
    rng = np.random.default_rng(2)
    hidden = rng.normal(size=[3, 4, D]).astype(np.float32)
    targets = rng.integers(0, V, size=[3, 4])
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
    hidden[~mask] = 1e3
    weight = np.array([1.0, 2.0, 0.5], np.float32)  # one weight per sequence
    loss = head.sampled_loss(targets, hidden, mask=mask, sample_weight=weight).numpy()
    per_step = sampled_losses(
        hidden[mask], head.kernel.numpy(), head.bias.numpy(), targets[mask], np.arange(2, 15, 3)
    )
    steps_weight = np.broadcast_to(weight[:, None], mask.shape)[mask]
    expected = (steps_weight * per_step).sum() / mask.sum()  # 7 real steps
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_per_example_sampler_gets_one_row_per_real_step():
    sampler = PerExampleSampler(V)
    head = make_head(sampler=sampler, num_sampled=4)
    rng = np.random.default_rng(3)
    hidden = rng.normal(size=[2, 3, D]).astype(np.float32)
    targets = rng.integers(0, V, size=[2, 3])
    mask = np.array([[1, 1, 0], [1, 1, 1]], bool)
    loss = head.sampled_loss(targets, hidden, mask=mask).numpy()
    assert sampler.query_shapes[-1] == (5, D)  # time flattened into batch, padding dropped
    candidates = (targets[mask][:, None] + np.arange(4)) % V
    expected = sampled_losses(
        hidden[mask], head.kernel.numpy(), head.bias.numpy(), targets[mask], candidates
    ).mean()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize(
    "sampler",
    ["log_uniform", "uniform", rs.UnigramSampler(np.arange(V, 0, -1), distortion=0.75)],
    ids=["log_uniform", "uniform", "unigram"],
)
def test_builtin_samplers_give_a_finite_loss_and_gradients(sampler):
    head = make_head(sampler=sampler)
    hidden = tf.Variable(np.random.default_rng(4).normal(size=[2, 3, D]).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = head.sampled_loss(np.ones([2, 3], np.int64), hidden)
    gradients = tape.gradient(loss, [hidden, head.kernel, head.bias])
    assert np.isfinite(loss.numpy()) and loss.numpy() > 0
    assert all(g is not None for g in gradients)


def test_tied_head_uses_the_embedding_table():
    embedding = tf.keras.layers.Embedding(V, D)
    embedding.build(None)
    head = make_head(tied_to=embedding)
    assert head.tied_to is embedding
    assert head.output_embeddings() is embedding.embeddings
    assert [w.name for w in head.weights] == [head.bias.name]  # no kernel of its own
    hidden = np.random.default_rng(5).normal(size=[2, D]).astype(np.float32)
    expected = softmax(hidden @ embedding.embeddings.numpy().T + head.bias.numpy())
    np.testing.assert_allclose(head(hidden).numpy(), expected, rtol=1e-5, atol=1e-6)
    with tf.GradientTape() as tape:
        loss = head.sampled_loss(np.array([1, 2]), hidden)
    assert tape.gradient(loss, embedding.embeddings) is not None


def test_tying_errors_name_the_mismatch():
    with pytest.raises(ValueError, match=r"output_dim=6, inputs with dim 8.*Dense\(6\)"):
        SampledSoftmax(V, 5, tied_to=tf.keras.layers.Embedding(V, D)).build([None, 8])
    with pytest.raises(ValueError, match=r"Embedding\(input_dim=21\) vs num_classes=20"):
        SampledSoftmax(V, 5, tied_to=tf.keras.layers.Embedding(V + 1, D))


def test_unlinked_tie_from_a_config_fails_with_the_fix():
    head = SampledSoftmax(V, 5, tied_to="embedding")
    head.build([None, D])
    with pytest.raises(tf.errors.InvalidArgumentError, match="not linked.*SampledSoftmaxModel"):
        head(np.zeros([1, D], np.float32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0}, "`num_classes` must be a positive integer"),
        ({"num_sampled": V + 1}, "`num_sampled` must be at most `num_classes`"),
        ({"num_sampled": 0}, "`num_sampled` must be a positive integer"),
        ({"sampler": "zipf"}, r"`sampler` must be one of \['log_uniform', 'uniform', 'unigram'\]"),
        ({"sampler": "unigram"}, "UnigramSampler"),
        ({"sampler": rs.UniformSampler(V + 1)}, "num_classes=21"),
        ({"sampler": 3}, "Received: sampler=3 \\(of type int\\)"),
        ({"tied_to": tf.keras.layers.Dense(3)}, "`tied_to` must be a tf.keras.layers.Embedding"),
        ({"remove_accidental_hits": "yes"}, "`remove_accidental_hits` must be a bool"),
        ({"seed": 1.5}, "`seed` must be None or an integer"),
    ],
)
def test_bad_arguments(kwargs, match):
    arguments = {"num_classes": V, "num_sampled": 5} | kwargs
    with pytest.raises(ValueError, match=match):
        SampledSoftmax(**arguments)


def test_bad_targets():
    head = make_head()
    hidden = tf.zeros([2, 3, D])
    with pytest.raises(ValueError, match=r"`y` must be given.*Received: y=None"):
        head.check_targets(None, hidden)
    one_hot = tf.one_hot(tf.zeros([2, 3], tf.int32), V)
    with pytest.raises(ValueError, match=r"one-hot.*np\.argmax\(y, axis=-1\).*float32"):
        head.check_targets(one_hot, hidden)
    with pytest.raises(ValueError, match=r"one-hot.*int32"):
        head.check_targets(tf.cast(one_hot, tf.int32), hidden)
    with pytest.raises(ValueError, match=r"Cast the ids to an integer type"):
        head.check_targets(tf.zeros([2, 3]), hidden)
    with pytest.raises(ValueError, match=r"one class id per output step"):
        head.check_targets(tf.zeros([2, 4], tf.int32), hidden)
    for bad in (-1, V):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"class ids in \[0, num_cl"):
            head.check_targets(tf.fill([2, 3], bad), hidden)
    assert head.check_targets(tf.ones([2, 3, 1], tf.int32), hidden).shape == (2, 3)


@pytest.mark.parametrize(
    "sampler",
    ["log_uniform", "uniform", FixedSampler(V, [1, 2, 3, 4, 5])],
    ids=lambda sampler: sampler if isinstance(sampler, str) else type(sampler).__name__,
)
def test_config_round_trip(sampler):
    head = SampledSoftmax(V, 5, sampler=sampler, seed=7, remove_accidental_hits=False)
    config = head.get_config()
    clone = SampledSoftmax.from_config(config)
    assert clone.get_config() == config
    assert type(clone.sampler) is type(head.sampler)
    assert clone.sampler.get_config() == head.sampler.get_config()


def test_sampler_names_resolve_through_one_dict():
    assert isinstance(get_sampler("log_uniform", V), rs.LogUniformSampler)
    assert isinstance(get_sampler("uniform", V), rs.UniformSampler)
    counts = {"class_name": "unigram", "config": {"counts": [3, 2, 1], "distortion": 1.0}}
    assert isinstance(get_sampler(counts, 3), rs.UnigramSampler)

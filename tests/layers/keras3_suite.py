"""Tests of ``recsampled.keras3`` (Keras 3), mirroring the tf-keras layer's tests.

Not collected by the main run (its name is not ``test_*``): ``tests/layers/test_keras3.py`` runs
this file with pytest in a subprocess without ``TF_USE_LEGACY_KERAS``, once per installed Keras
backend (``KERAS_BACKEND``).
"""

from __future__ import annotations

import keras  # noqa: I001 (after recsampled.keras3, which releases the legacy switch)
import numpy as np
import pytest
import scipy.stats
from keras import ops

from recsampled.keras3 import SampledSoftmax, SampledSoftmaxModel
from recsampled.keras3.samplers import LogUniformSampler, Sampler, UniformSampler, UnigramSampler

V, D, S, T = 50, 16, 16, 12


class FixedSampler(Sampler):
    """Always ``ids``, with ``P = 1/S`` so that ``log(S·P) = 0`` (no correction)."""

    def __init__(self, num_classes: int, ids: list[int]):
        super().__init__(num_classes)
        self.ids = [int(i) for i in ids]

    def probability(self, ids):
        return ops.full(ops.shape(ids), 1.0 / len(self.ids), dtype="float32")

    def sample(self, num_sampled, seed):
        return ops.convert_to_tensor(np.array(self.ids[:num_sampled], np.int32))

    def get_config(self):
        return {"num_classes": self.num_classes, "ids": self.ids}


def numpy_sampled_losses(hidden, w, b, targets, candidates):
    """``[n]`` sampled softmax losses without correction, accidental hits removed."""
    hidden = hidden.astype(np.float64)
    true = np.einsum("nd,nd->n", hidden, w[targets]) + b[targets]
    logits = hidden @ w[candidates].T + b[candidates]
    logits[np.asarray(candidates)[None, :] == targets[:, None]] = -np.inf
    everything = np.concatenate([true[:, None], logits], axis=1)
    top = everything.max(axis=1, keepdims=True)
    return top[:, 0] + np.log(np.exp(everything - top).sum(axis=1)) - true


def softmax(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def make_head(**kwargs) -> SampledSoftmax:
    kwargs.setdefault("bias_initializer", "random_normal")
    head = SampledSoftmax(V, kwargs.pop("num_sampled", 5), **kwargs)
    head.build((None, D))
    return head


@pytest.mark.parametrize("shape", [(4, D), (3, 5, D)])
def test_inference_is_the_full_softmax(shape):
    head = make_head()
    hidden = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    expected = softmax(
        hidden @ ops.convert_to_numpy(head.kernel).T + ops.convert_to_numpy(head.bias)
    )
    np.testing.assert_allclose(ops.convert_to_numpy(head(hidden)), expected, rtol=1e-5, atol=1e-6)


def test_training_call_passes_hidden_states_through():
    hidden = np.ones([2, 3, D], np.float32)
    np.testing.assert_array_equal(ops.convert_to_numpy(make_head()(hidden, training=True)), hidden)


def test_sampled_loss_matches_numpy_with_fixed_candidates():
    candidates = [1, 3, 4, 7, 9]  # target 3 of row 1 is an accidental hit
    head = make_head(sampler=FixedSampler(V, candidates))
    hidden = np.random.default_rng(1).normal(size=[4, D]).astype(np.float32)
    targets = np.array([0, 3, 12, 19])
    w, b = ops.convert_to_numpy(head.kernel), ops.convert_to_numpy(head.bias)
    expected = numpy_sampled_losses(hidden, w, b, targets, candidates).mean()
    loss = float(ops.convert_to_numpy(head.sampled_loss(targets, hidden)))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_sampled_loss_is_the_mean_over_real_steps():
    candidates = [2, 5, 8, 11, 14]
    head = make_head(sampler=FixedSampler(V, candidates))
    rng = np.random.default_rng(2)
    hidden = rng.normal(size=[3, 4, D]).astype(np.float32)
    targets = rng.integers(0, V, size=[3, 4])
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
    hidden[~mask] = 1e3  # garbage on padded steps must not matter
    weight = np.array([1.0, 2.0, 0.5], np.float32)
    loss = head.sampled_loss(targets, hidden, mask=mask, sample_weight=weight)
    w, b = ops.convert_to_numpy(head.kernel), ops.convert_to_numpy(head.bias)
    per_step = numpy_sampled_losses(hidden[mask], w, b, targets[mask], candidates)
    steps_weight = np.broadcast_to(weight[:, None], mask.shape)[mask]
    expected = (steps_weight * per_step).sum() / mask.sum()  # 7 real steps
    np.testing.assert_allclose(float(ops.convert_to_numpy(loss)), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "sampler",
    [UniformSampler(V), LogUniformSampler(V), UnigramSampler(np.arange(V, 0, -1), 0.75)],
    ids=["uniform", "log_uniform", "unigram"],
)
def test_samplers_draw_their_distribution(sampler):
    # Chi-square goodness of fit of 20,000 draws (fixed seed) against probability(); classes
    # with expected count < 5 are pooled. A wrong inverse transform fails at p < 1e-3.
    draws = ops.convert_to_numpy(sampler.sample(20_000, keras.random.SeedGenerator(3)))
    p = ops.convert_to_numpy(sampler.probability(np.arange(V)))
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-5)
    observed = np.bincount(draws, minlength=V)
    expected = p * draws.size
    big = expected >= 5
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    obs, exp = obs[keep].astype(np.float64), exp[keep].astype(np.float64)
    assert scipy.stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3


def test_tied_head_uses_the_embedding_table():
    embedding = keras.layers.Embedding(V, D)
    embedding.build((None,))
    head = make_head(tied_to=embedding)
    assert head.output_embeddings() is embedding.embeddings
    assert [w.name for w in head.weights] == ["bias"]
    hidden = np.random.default_rng(5).normal(size=[2, D]).astype(np.float32)
    table = ops.convert_to_numpy(embedding.embeddings)
    expected = softmax(hidden @ table.T + ops.convert_to_numpy(head.bias))
    np.testing.assert_allclose(ops.convert_to_numpy(head(hidden)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0}, "`num_classes` must be a positive integer"),
        ({"num_sampled": 0}, "`num_sampled` must be a positive integer"),
        ({"sampler": "zipf"}, "`sampler` must be 'log_uniform', 'uniform'"),
        ({"sampler": UniformSampler(V + 1)}, "num_classes=50"),
        ({"tied_to": keras.layers.Dense(3)}, "`tied_to` must be a keras.layers.Embedding"),
        ({"tied_to": keras.layers.Embedding(V + 1, D)}, r"input_dim=51\) vs num_classes=50"),
        ({"remove_accidental_hits": "yes"}, "`remove_accidental_hits` must be a bool"),
        ({"seed": 1.5}, "`seed` must be None or an integer"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SampledSoftmax(**({"num_classes": V, "num_sampled": 5} | kwargs))


def make_data(num_sequences: int, seed: int):
    """The Markov chain of the tf-keras tests: ``id -> (3 id + 1) % 49 + 1`` w.p. 0.9, 0-padded."""
    rng = np.random.default_rng(seed)
    ids = np.zeros([num_sequences, T + 1], np.int32)
    ids[:, 0] = rng.integers(1, V, num_sequences)
    for t in range(T):
        follow = (3 * ids[:, t] + 1) % (V - 1) + 1
        ids[:, t + 1] = np.where(rng.random(num_sequences) < 0.9, follow, rng.integers(1, V))
    lengths = rng.integers(4, T + 2, num_sequences)
    ids[np.arange(T + 1) >= lengths[:, None]] = 0
    return ids[:, :-1], ids[:, 1:]


def make_model(tied: bool = True, sampler="log_uniform") -> SampledSoftmaxModel:
    keras.utils.set_random_seed(0)
    inputs = keras.Input([None], dtype="int32")
    embedding = keras.layers.Embedding(V, D, mask_zero=True, name="embedding")
    x = keras.layers.Dense(D, activation="tanh")(embedding(inputs))
    head = SampledSoftmax(V, S, sampler=sampler, tied_to=embedding if tied else None, seed=1)
    return SampledSoftmaxModel(inputs, head(x))


def numpy_cross_entropy(probabilities, targets, mask):
    picked = np.take_along_axis(probabilities, targets[..., None], axis=-1)[..., 0]
    return -np.log(picked.astype(np.float64))[mask].mean()


@pytest.fixture(scope="module")
def trained():
    model = make_model()
    model.compile(optimizer=keras.optimizers.Adam(0.05), metrics=["accuracy"])
    x, y = make_data(320, seed=1)
    test = make_data(96, seed=2)
    before = model.evaluate(*test, batch_size=32, return_dict=True, verbose=0)
    history = model.fit(x, y, batch_size=32, epochs=4, validation_data=test, verbose=0)
    after = model.evaluate(*test, batch_size=96, return_dict=True, verbose=0)
    return model, before, after, history.history, test


def test_fit_with_integer_targets_reduces_the_full_cross_entropy(trained):
    _, before, after, history, _ = trained
    assert before["loss"] > 3.5  # uniform guessing: log(50) = 3.9
    assert after["loss"] < 0.7 * before["loss"]
    assert set(history) == {
        "sampled_loss",
        "sampled_accuracy",
        "val_loss",
        "val_cross_entropy",
        "val_perplexity",
        "val_accuracy",
    }


def test_evaluate_is_the_full_cross_entropy_over_real_steps(trained):
    model, _, after, _, (x, y) = trained
    probabilities = ops.convert_to_numpy(model.predict(x, verbose=0))
    assert probabilities.shape == (96, T, V)
    expected = numpy_cross_entropy(probabilities, y, x != 0)  # one batch: exact
    np.testing.assert_allclose(after["cross_entropy"], expected, rtol=1e-4)
    np.testing.assert_allclose(after["perplexity"], np.exp(expected), rtol=1e-4)


def test_training_loss_masks_padded_steps_and_averages_real_ones():
    candidates = list(range(1, 2 * S, 2))
    model = make_model(sampler=FixedSampler(V, candidates))
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    x, y = make_data(8, seed=3)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    hidden = ops.convert_to_numpy(model(x, training=True))
    head, mask = model.layers[-1], x != 0
    w, b = ops.convert_to_numpy(head.output_embeddings()), ops.convert_to_numpy(head.bias)
    expected = numpy_sampled_losses(hidden[mask], w, b, y[mask], candidates).mean()
    np.testing.assert_allclose(history.history["sampled_loss"][0], expected, rtol=1e-5)


def test_save_and_load_keep_predictions_tying_and_training(trained, tmp_path):
    model, _, _, _, (x, y) = trained
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded, SampledSoftmaxModel)
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded.predict(x, verbose=0)),
        ops.convert_to_numpy(model.predict(x, verbose=0)),
        atol=1e-6,
    )
    assert loaded.layers[-1].output_embeddings() is loaded.get_layer("embedding").embeddings
    assert set(loaded.fit(x, y, verbose=0).history) == {"sampled_loss", "sampled_accuracy"}


def test_misuse_errors_say_what_to_do():
    model = make_model()
    with pytest.raises(ValueError, match=r"`loss` must not be given to `compile`"):
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.compile(optimizer="adam")
    x, y = make_data(8, seed=4)
    with pytest.raises(ValueError, match=r"not one-hot.*np\.argmax"):
        model.fit(x, keras.utils.to_categorical(y, V), verbose=0)

"""Tests of ``fit``/``evaluate``/``predict``/save/load for models with a ``SampledSoftmax`` output.

The language model is the one of the classic question at toy size: ``Embedding(V, D,
mask_zero=True)``, ``LSTM(D, return_sequences=True)``, ``SampledSoftmax(V, S)`` tied to the
embedding; it is fitted once (module fixture). Tests that only need a masked sequence model use
``Dense`` instead of the LSTM, which traces and saves several times faster. Data: sequences of
a Markov chain where the next id follows ``id -> (3 * id + 1) % 49 + 1`` with probability 0.9,
padded with 0 (masked) after a random length.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tensorflow as tf

import recsampled as rs
from recsampled.layers import SampledSoftmax, SampledSoftmaxModel, SampledSoftmaxSequential
from tests.layers.fakes import FixedSampler, sampled_losses

V, D, S, T = 50, 16, 16, 12


def make_data(num_sequences: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.zeros([num_sequences, T + 1], np.int64)
    ids[:, 0] = rng.integers(1, V, num_sequences)
    for t in range(T):
        jump = rng.integers(1, V, num_sequences)
        follow = (3 * ids[:, t] + 1) % (V - 1) + 1
        ids[:, t + 1] = np.where(rng.random(num_sequences) < 0.9, follow, jump)
    lengths = rng.integers(4, T + 2, num_sequences)
    ids[np.arange(T + 1) >= lengths[:, None]] = 0
    return ids[:, :-1], ids[:, 1:]


def make_model(sampler="log_uniform", tied=True, lstm=False, seed=0) -> SampledSoftmaxModel:
    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input([None], dtype="int64")
    embedding = tf.keras.layers.Embedding(V, D, mask_zero=True, name="embedding")
    if lstm:
        x = tf.keras.layers.LSTM(D, return_sequences=True)(embedding(inputs))
    else:  # Dense keeps the mask of the embedding
        x = tf.keras.layers.Dense(D, activation="tanh")(embedding(inputs))
    head = SampledSoftmax(V, S, sampler=sampler, tied_to=embedding if tied else None)
    return SampledSoftmaxModel(inputs, head(x))


def numpy_cross_entropy(probabilities: np.ndarray, targets: np.ndarray, mask: np.ndarray):
    picked = np.take_along_axis(probabilities, targets[..., None], axis=-1)[..., 0]
    return -np.log(picked.astype(np.float64))[mask].mean()


@pytest.fixture(scope="module")
def trained() -> tuple[SampledSoftmaxModel, dict, tuple]:
    """The tied LSTM LM fitted for 40 steps, its cross-entropies before and after, test data."""
    model = make_model(lstm=True)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05), metrics=["accuracy"])
    x, y = make_data(320, seed=1)
    x_test, y_test = make_data(96, seed=2)
    before = model.evaluate(x_test, y_test, batch_size=32, return_dict=True, verbose=0)
    history = model.fit(x, y, batch_size=32, epochs=4, verbose=0)
    after = model.evaluate(x_test, y_test, batch_size=32, return_dict=True, verbose=0)
    return model, {"before": before, "after": after, "history": history.history}, (x_test, y_test)


def test_fit_with_integer_targets_reduces_the_full_cross_entropy(trained):
    _, results, _ = trained
    # Uniform guessing gives log(50) = 3.9; the chain's entropy rate is about 0.9.
    assert results["before"]["loss"] > 3.5
    assert results["after"]["loss"] < 0.7 * results["before"]["loss"]
    # Named for what they are; accuracy over the sampled classes, never on hidden states.
    assert set(results["history"]) == {"sampled_loss", "sampled_accuracy"}


def test_evaluate_reports_the_full_cross_entropy_over_real_steps(trained):
    model, _, (x_test, y_test) = trained
    # Batches of 40 split 96 sequences unevenly (40, 40, 16) with different numbers of real
    # steps: a per-batch average would differ from the per-step mean.
    result = model.evaluate(x_test, y_test, batch_size=40, return_dict=True, verbose=0)
    probabilities = model.predict(x_test, batch_size=40, verbose=0)
    mask = x_test != 0
    expected = numpy_cross_entropy(probabilities, y_test, mask)
    np.testing.assert_allclose(result["loss"], expected, rtol=1e-4)
    np.testing.assert_allclose(result["perplexity"], np.exp(expected), rtol=1e-4)
    accuracy = (probabilities.argmax(-1) == y_test)[mask].mean()
    np.testing.assert_allclose(result["accuracy"], accuracy, rtol=1e-5)


def test_predict_returns_distributions_over_the_vocabulary(trained):
    model, _, (x_test, _) = trained
    probabilities = model.predict(x_test[:5], verbose=0)
    assert probabilities.shape == (5, T, V)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)


def test_the_head_is_tied_to_the_embedding(trained):
    model, _, _ = trained
    head, embedding = model.layers[-1], model.get_layer("embedding")
    assert head.output_embeddings() is embedding.embeddings
    assert len(model.trainable_weights) == 5  # embeddings, 3 LSTM weights, bias


def test_training_loss_masks_padded_steps_and_averages_real_ones():
    model = make_model(sampler=FixedSampler(V, list(range(1, 2 * S, 2))))
    model.compile(optimizer=tf.keras.optimizers.SGD(0.0))
    x, y = make_data(8, seed=3)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    hidden = model(x, training=True).numpy()
    head, mask = model.layers[-1], x != 0
    per_step = sampled_losses(
        hidden[mask], head.output_embeddings().numpy(), head.bias.numpy(), y[mask],
        np.arange(1, 2 * S, 2),
    )  # fmt: skip
    np.testing.assert_allclose(history.history["sampled_loss"][0], per_step.mean(), rtol=1e-5)


def test_fit_errors_say_what_to_pass():
    model = make_model()
    x, y = make_data(8, seed=4)
    with pytest.raises(
        ValueError, match=r"`loss` must not be given to `compile`.*optimizer=\.\.\."
    ):
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")  # at compile
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"`y` must be given"):
        model.fit(x, verbose=0)
    with pytest.raises(ValueError, match=r"one-hot.*np\.argmax\(y, axis=-1\)"):
        model.fit(x, tf.keras.utils.to_categorical(y, V), verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class ids in \[0, num_classes=50"):
        model.fit(x, y + V, verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class ids in \[0, num_classes=50"):
        model.evaluate(x, y - V, verbose=0)


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("file_format", ["keras", "h5", "tf"])
def test_save_and_load_keep_predictions_and_tying(trained, tmp_path, file_format):
    if file_format == "tf":  # SavedModel traces every layer: use the faster Dense model
        model, (x_test, y_test) = make_model(), make_data(32, seed=7)
        model.compile(optimizer="adam")
        model.fit(x_test, y_test, verbose=0)
    else:
        model, _, (x_test, y_test) = trained
    path = str(tmp_path / f"model.{file_format}") if file_format != "tf" else str(tmp_path)
    model.save(path, save_format=file_format)
    loaded = tf.keras.models.load_model(path)  # no custom_objects, .h5 included
    assert isinstance(loaded, SampledSoftmaxModel)
    np.testing.assert_allclose(
        loaded.predict(x_test, verbose=0), model.predict(x_test, verbose=0), atol=1e-6
    )
    assert loaded.layers[-1].output_embeddings() is loaded.get_layer("embedding").embeddings
    if file_format == "tf":  # the loaded model trains on
        loaded.fit(x_test, y_test, verbose=0)
        assert np.isfinite(loaded.evaluate(x_test, y_test, verbose=0)[0])


def test_sequential_fits_and_round_trips(tmp_path):
    tf.keras.utils.set_random_seed(0)
    model = SampledSoftmaxSequential(
        [
            tf.keras.layers.Embedding(V, D),
            tf.keras.layers.GlobalAveragePooling1D(),
            SampledSoftmax(V, S, sampler="uniform"),
        ]
    )
    model.compile(optimizer="adam")
    x, y = make_data(32, seed=5)
    assert model.evaluate(x, y[:, -1], verbose=0)[0] > 0
    model.fit(x, y[:, -1], verbose=0)  # one target per sequence: [batch, dim] into the head
    model.save(tmp_path / "model.keras")
    loaded = tf.keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_a_sampler_without_a_full_config_loads_for_inference(tmp_path):
    counts = np.arange(V, 0, -1)
    model = make_model(sampler=rs.UnigramSampler(counts), tied=False)
    model.compile(optimizer="adam")
    x, y = make_data(16, seed=6)
    model.fit(x, y, verbose=0)
    model.save(tmp_path / "model.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = tf.keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    if loaded.layers[-1].sampler is None:  # UnigramSampler.get_config has no counts
        with pytest.raises(ValueError, match=r"has no sampler.*layer\.sampler = "):
            loaded.fit(x, y, verbose=0)
    else:
        ids = tf.range(V)
        np.testing.assert_allclose(
            loaded.layers[-1].sampler.probability(ids), rs.UnigramSampler(counts).probability(ids)
        )


def test_the_kernel_sampler_plugs_in():
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input([None], dtype="int64")
    embedding = tf.keras.layers.Embedding(V, D, mask_zero=True, name="embedding")
    embedding.build(None)  # the sampler's tree is built from the (tied) output embeddings
    sampler = rs.QuadraticKernelSampler(embedding.embeddings, alpha=100.0, seed=1)
    x = tf.keras.layers.Dense(D, activation="tanh")(embedding(inputs))
    model = SampledSoftmaxModel(inputs, SampledSoftmax(V, S, sampler=sampler, tied_to=embedding)(x))
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
    x, y = make_data(64, seed=8)
    before = model.evaluate(x, y, verbose=0)[0]
    model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert model.evaluate(x, y, verbose=0)[0] < 0.9 * before

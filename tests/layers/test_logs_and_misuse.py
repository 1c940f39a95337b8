"""Training logs that name what they are, callbacks on any logged key, and misuse errors.

Issue 15: the training ``loss`` was the sampled loss beside a ``val_loss`` that is the full
cross-entropy; ``metrics=["accuracy"]`` gave no training value; a plain ``tf.keras.Model``, a
compiled ``loss=`` and Keras 3 tensors failed late and cryptically; ``.h5`` needed
``custom_objects``.
"""

from __future__ import annotations

# recsampled first: it sets TF_USE_LEGACY_KERAS before tensorflow binds tf.keras.
import recsampled as rs

# isort: split
import warnings

import numpy as np
import pytest
import tensorflow as tf

from recsampled.layers import SampledSoftmax, SampledSoftmaxModel
from tests.layers.fakes import FixedSampler
from tests.layers.test_model import D, S, V, make_data, make_model

CANDIDATES = list(range(1, 2 * S, 2))


def test_logs_name_the_sampled_and_the_full_losses():
    model = make_model()
    model.compile(optimizer="adam", metrics=["accuracy"])
    x, y = make_data(64, seed=1)
    history = model.fit(x, y, validation_data=make_data(32, seed=2), epochs=2, verbose=0)
    assert set(history.history) == {
        "sampled_loss",  # the objective of fit: sampled softmax
        "sampled_accuracy",  # target above every sampled class
        "val_loss",  # full softmax cross-entropy (+ regularization losses)
        "val_cross_entropy",
        "val_perplexity",
        "val_accuracy",  # full-softmax accuracy
    }
    np.testing.assert_allclose(
        history.history["val_perplexity"], np.exp(history.history["val_cross_entropy"]), rtol=1e-5
    )
    assert set(model.evaluate(x, y, return_dict=True, verbose=0)) == {
        "loss",
        "cross_entropy",
        "perplexity",
        "accuracy",
    }


def numpy_sampled_accuracy(model, x, y) -> float:
    """How often the target's logit beats every sampled one (expected counts 1, hits removed)."""
    hidden = model(x, training=True).numpy()
    head, mask = model.layers[-1], x != 0
    w, b = head.output_embeddings().numpy(), head.bias.numpy()
    h, targets = hidden[mask].astype(np.float64), y[mask]
    true_logit = np.einsum("nd,nd->n", h, w[targets]) + b[targets]
    sampled = h @ w[CANDIDATES].T + b[CANDIDATES]
    sampled[np.array(CANDIDATES)[None, :] == targets[:, None]] = -np.inf
    return float(np.mean(true_logit >= sampled.max(axis=1)))  # ties: argmax takes column 0


def test_sampled_accuracy_matches_numpy():
    model = make_model(sampler=FixedSampler(V, CANDIDATES))
    model.compile(optimizer=tf.keras.optimizers.SGD(0.0), metrics=["accuracy"])  # frozen
    x, y = make_data(32, seed=3)
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    expected = numpy_sampled_accuracy(model, x, y)
    np.testing.assert_allclose(history.history["sampled_accuracy"][0], expected, atol=1e-6)


@pytest.mark.parametrize(
    "monitor", ["sampled_loss", "sampled_accuracy", "val_loss", "val_perplexity", "val_accuracy"]
)
def test_early_stopping_and_checkpoints_on_any_logged_key(monitor, tmp_path):
    model = make_model()
    model.compile(optimizer="adam", metrics=["accuracy"])
    path = str(tmp_path / "best.weights.h5")
    mode = "max" if "accuracy" in monitor else "min"
    callbacks = [
        tf.keras.callbacks.EarlyStopping(monitor=monitor, patience=0, mode=mode),
        tf.keras.callbacks.ModelCheckpoint(
            path, monitor=monitor, mode=mode, save_best_only=True, save_weights_only=True
        ),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras warns when a monitored key is missing
        model.fit(
            *make_data(64, seed=4),
            validation_data=make_data(32, seed=5),
            epochs=2,
            callbacks=callbacks,
            verbose=0,
        )
    assert (tmp_path / "best.weights.h5").exists()


def test_compile_with_a_loss_fails_at_compile():
    with pytest.raises(ValueError, match=r"`loss` must not be given to `compile`.*sampled_loss"):
        make_model().compile(optimizer="adam", loss="sparse_categorical_crossentropy")


def test_a_plain_keras_model_fails_at_the_first_step_with_the_fix():
    inputs = tf.keras.Input([None], dtype="int64")
    x = tf.keras.layers.Embedding(V, D)(inputs)
    model = tf.keras.Model(inputs, SampledSoftmax(V, S)(x))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"not a recsampled.layers.SampledSoftmaxModel.*compile"):
        model.fit(*make_data(8, seed=6), verbose=0)
    # Inference through the plain model stays fine: the full softmax.
    assert model.predict(make_data(2, seed=6)[0], verbose=0).shape == (2, 12, V)


def test_keras_3_tensors_say_to_use_the_keras_3_layer():
    keras = pytest.importorskip("keras")
    if not keras.__version__.startswith("3."):
        pytest.skip("standalone keras is not Keras 3")
    inputs = keras.Input([None], dtype="int32")
    with pytest.raises(TypeError, match=r"Keras 3 tensor.*recsampled\.keras3"):
        SampledSoftmax(V, S)(keras.layers.Embedding(V, D)(inputs))


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_h5_round_trip_without_custom_objects(tmp_path):
    model = make_model(sampler=FixedSampler(V, CANDIDATES))
    model.compile(optimizer=rs.layers.LazyAdam(0.01), metrics=["accuracy"])
    x, y = make_data(16, seed=7)
    model.fit(x, y, verbose=0)
    model.save(tmp_path / "model.h5")
    loaded = tf.keras.models.load_model(tmp_path / "model.h5")
    assert isinstance(loaded, SampledSoftmaxModel)
    assert isinstance(loaded.layers[-1].sampler, FixedSampler)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    loaded.fit(x, y, verbose=0)  # compiled on load: trains on


def test_keras_file_is_compiled_on_load(tmp_path):
    model = make_model()
    model.compile(optimizer="adam", metrics=["accuracy"])
    x, y = make_data(16, seed=8)
    model.fit(x, y, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = tf.keras.models.load_model(tmp_path / "model.keras")
    history = loaded.fit(x, y, verbose=0)
    assert set(history.history) == {"sampled_loss", "sampled_accuracy"}

"""Tests of ``LazyAdam`` and of the warning about optimizers that update a whole table densely."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tensorflow as tf

import recsampled as rs  # noqa: F401  (sets TF_USE_LEGACY_KERAS)
from recsampled.layers import LazyAdam, SampledSoftmax, SampledSoftmaxModel
from recsampled.layers.optimizers import DENSE_OPTIMIZERS, warn_if_dense_optimizer

ROWS, DIM = 6, 3


def sparse(indices, values) -> tf.IndexedSlices:
    return tf.IndexedSlices(
        tf.constant(values, tf.float32), tf.constant(indices, tf.int64), tf.constant([ROWS, DIM])
    )


def two_sparse_steps(optimizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Initial table, after step 1 (rows 1, 3, 1) and after step 2 (row 4 only)."""
    rng = np.random.default_rng(0)
    variable = tf.Variable(rng.normal(size=[ROWS, DIM]).astype(np.float32))
    start = variable.numpy()
    optimizer.apply_gradients([(sparse([1, 3, 1], rng.normal(size=[3, DIM])), variable)])
    first = variable.numpy()
    optimizer.apply_gradients([(sparse([4], rng.normal(size=[1, DIM])), variable)])
    return start, first, variable.numpy()


@pytest.mark.parametrize(
    "make",
    [
        lambda: LazyAdam(0.1),
        lambda: tf.keras.optimizers.Adagrad(0.1),
        lambda: tf.keras.optimizers.legacy.SGD(0.1, momentum=0.9),
    ],
    ids=["LazyAdam", "Adagrad", "legacy.SGD"],
)
def test_sparse_optimizers_leave_rows_without_gradient_alone(make):
    start, first, second = two_sparse_steps(make())
    np.testing.assert_array_equal(first[[0, 2, 4, 5]], start[[0, 2, 4, 5]])
    np.testing.assert_array_equal(second[[0, 1, 2, 3, 5]], first[[0, 1, 2, 3, 5]])
    assert not np.allclose(second[4], first[4])


@pytest.mark.parametrize(
    "make",
    [lambda: tf.keras.optimizers.Adam(0.1), lambda: tf.keras.optimizers.SGD(0.1, momentum=0.9)],
    ids=["Adam", "SGD"],
)
def test_dense_optimizers_move_rows_without_gradient(make):
    optimizer = make()
    assert type(optimizer) in DENSE_OPTIMIZERS
    _, first, second = two_sparse_steps(optimizer)
    assert not np.allclose(second[[1, 3]], first[[1, 3]])  # momentum of step 1 carried over


def test_tf_keras_sgd_keeps_momentum_slots_even_without_momentum():
    # Why SGD is in DENSE_OPTIMIZERS: m.assign(m * 0) and variable.assign_add(m) over all rows.
    optimizer = tf.keras.optimizers.SGD(0.1)
    two_sparse_steps(optimizer)
    assert [v.shape.as_list() for v in optimizer.variables[1:]] == [[ROWS, DIM]]


def test_lazy_adam_is_adam_on_the_rows_it_updates():
    lazy, adam = LazyAdam(0.1), tf.keras.optimizers.Adam(0.1)
    start, lazy_first, lazy_second = two_sparse_steps(lazy)
    _, adam_first, _ = two_sparse_steps(adam)
    # From zero moments Adam leaves rows without gradient alone too: the first steps agree,
    # with the duplicate index 1 summed.
    np.testing.assert_allclose(lazy_first, adam_first, atol=2e-6)  # float32 rounding
    # Step 2 of row 4 (first gradient of that row, at t=2): m = 0.1 g, v = 0.001 g^2.
    g = np.random.default_rng(0).normal(size=[4, DIM])[3].astype(np.float32)
    alpha = 0.1 * np.sqrt(1 - 0.999**2) / (1 - 0.9**2)
    expected = start[4] - alpha * 0.1 * g / (np.sqrt(0.001 * g**2) + 1e-7)
    np.testing.assert_allclose(lazy_second[4], expected, rtol=1e-5)


def test_lazy_adam_is_adam_on_dense_gradients_and_round_trips():
    rng = np.random.default_rng(1)
    gradients = rng.normal(size=[3, ROWS, DIM]).astype(np.float32)
    tables = []
    for optimizer in (LazyAdam(0.1), tf.keras.optimizers.Adam(0.1, jit_compile=False)):
        variable = tf.Variable(np.ones([ROWS, DIM], np.float32))
        for gradient in gradients:
            optimizer.apply_gradients([(tf.constant(gradient), variable)])
        tables.append(variable.numpy())
    np.testing.assert_allclose(tables[0], tables[1], rtol=1e-6)
    restored = tf.keras.optimizers.deserialize(tf.keras.optimizers.serialize(LazyAdam(0.02)))
    assert type(restored) is LazyAdam and restored.get_config()["learning_rate"] == 0.02
    with pytest.raises(ValueError, match="amsgrad"):
        LazyAdam(amsgrad=True)


def make_model(num_classes: int = 400, num_sampled: int = 8) -> SampledSoftmaxModel:
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input([None], dtype="int64")
    x = tf.keras.layers.Embedding(num_classes, 8)(inputs)
    x = tf.keras.layers.Dense(8, activation="tanh")(x)
    return SampledSoftmaxModel(inputs, SampledSoftmax(num_classes, num_sampled, seed=1)(x))


def dense_warnings(model: SampledSoftmaxModel, optimizer) -> list[str]:
    """The dense-optimizer warnings of ``fit``'s first step (making the train function)."""
    model.compile(optimizer=optimizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.make_train_function()
        model.make_train_function()  # made once: no second warning
    return [str(w.message) for w in caught if "updates all" in str(w.message)]


@pytest.mark.parametrize(
    "optimizer, warns",
    [
        (lambda: tf.keras.optimizers.Adam(), True),
        (lambda: tf.keras.optimizers.SGD(), True),
        (lambda: tf.keras.optimizers.legacy.Adam(), True),
        (lambda: LazyAdam(), False),
        (lambda: tf.keras.optimizers.Adagrad(), False),
        (lambda: tf.keras.optimizers.legacy.SGD(), False),
    ],
    ids=["Adam", "SGD", "legacy.Adam", "LazyAdam", "Adagrad", "legacy.SGD"],
)
def test_fit_warns_about_dense_optimizers(optimizer, warns):
    messages = dense_warnings(make_model(), optimizer())
    assert len(messages) == int(warns)
    if warns:
        assert "400 rows" in messages[0] and "LazyAdam" in messages[0]


def test_no_warning_when_the_table_is_small():
    assert dense_warnings(make_model(num_classes=50, num_sampled=8), "adam") == []
    assert not warn_if_dense_optimizer(tf.keras.optimizers.Adam(), 79, 8)


def test_fit_with_lazy_adam_updates_only_the_sampled_and_target_rows():
    model = make_model()
    model.compile(optimizer=LazyAdam(0.05))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 400, [4, 5]), rng.integers(0, 400, [4, 5])
    model.train_on_batch(x, y)  # moments of step 1's rows are now nonzero
    kernel = model.layers[-1].kernel.numpy()
    model.train_on_batch(x, (y + 7) % 400)
    changed = np.flatnonzero(np.any(model.layers[-1].kernel.numpy() != kernel, axis=1))
    assert 0 < changed.size <= 8 + y.size  # S sampled ids + the targets, not the table
    assert set(((y + 7) % 400).ravel()) <= set(changed)

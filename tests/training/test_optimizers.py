"""Sparse steps and row L2 of recsampled.training.optimizers, against NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from recsampled import config as config_module
from recsampled.config import ConfigError, TrainingConfig
from recsampled.layers import LazyAdam
from recsampled.training import optimizers
from recsampled.training.optimizers import OPTIMIZERS, SPARSE_OPTIMIZERS, make_optimizer

NUM_ROWS, DIM = 50, 4
TOLERANCE = 1e-6


def _lookup_step(optimizer, table, ids, targets):
    """One step of ``0.5·Σ_b ‖table[ids_b] - targets_b‖²`` (a sparse, IndexedSlices gradient)."""
    with tf.GradientTape() as tape:
        rows = tf.gather(table, ids)
        loss = 0.5 * tf.reduce_sum(tf.square(rows - targets))
    (gradient,) = tape.gradient(loss, [table])
    assert isinstance(gradient, tf.IndexedSlices)
    optimizer.apply_gradients([(gradient, table)])


def _case(seed):
    rng = np.random.default_rng(seed)
    start = rng.normal(size=(NUM_ROWS, DIM)).astype(np.float32)
    ids = rng.integers(0, NUM_ROWS // 2, size=16).astype(np.int32)  # duplicates, half the rows
    ids[:3] = ids[0]
    targets = rng.normal(size=(16, DIM)).astype(np.float32)
    grad = np.zeros_like(start, dtype=np.float64)
    np.add.at(grad, ids, start[ids].astype(np.float64) - targets)
    return start, ids, targets, grad, np.unique(ids)


def test_names_agree_with_the_config():
    assert tuple(OPTIMIZERS) == config_module.OPTIMIZERS
    assert SPARSE_OPTIMIZERS == config_module.SPARSE_OPTIMIZERS
    assert issubclass(OPTIMIZERS["lazy_adam"], LazyAdam)


@pytest.mark.parametrize("name", SPARSE_OPTIMIZERS)
@pytest.mark.parametrize("row_l2", [0.0, 0.3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rows_without_gradient_are_bit_for_bit_unchanged(name, row_l2, seed):
    start, ids, targets, _, touched = _case(seed)
    table = tf.Variable(start)
    optimizer = make_optimizer(name, learning_rate=0.1, row_l2=row_l2)
    for _ in range(3):
        _lookup_step(optimizer, table, ids, targets)
    after = table.numpy()
    untouched = np.setdiff1d(np.arange(NUM_ROWS), touched)
    np.testing.assert_array_equal(after[untouched], start[untouched])
    assert np.all(np.any(after[touched] != start[touched], axis=1))


def test_sparse_sgd_has_no_slot_and_keras_sgd_is_dense():
    start, ids, targets, _, touched = _case(0)
    untouched = np.setdiff1d(np.arange(NUM_ROWS), touched)
    sparse = make_optimizer("sgd", learning_rate=0.1)
    table = tf.Variable(start)
    _lookup_step(sparse, table, ids, targets)
    assert len(sparse.variables()) == 1  # the iteration counter only
    keras_sgd = tf.keras.optimizers.SGD(0.1)
    dense_table = tf.Variable(start)
    _lookup_step(keras_sgd, dense_table, ids, targets)
    assert any("m" in v.name for v in keras_sgd.variables())  # the momentum slot we avoid
    np.testing.assert_allclose(dense_table.numpy(), table.numpy(), atol=1e-7)
    np.testing.assert_array_equal(table.numpy()[untouched], start[untouched])


def test_dense_keras_l2_moves_every_row():
    """The contrast: L2 added to the loss makes the table's gradient dense."""
    start, ids, targets, _, _ = _case(0)
    table = tf.Variable(start)
    optimizer = make_optimizer("sgd", learning_rate=0.1)
    regularizer = tf.keras.regularizers.L2(0.3)
    with tf.GradientTape() as tape:
        rows = tf.gather(table, ids)
        loss = 0.5 * tf.reduce_sum(tf.square(rows - targets)) + regularizer(table)
    (gradient,) = tape.gradient(loss, [table])
    optimizer.apply_gradients([(tf.convert_to_tensor(gradient), table)])
    assert np.all(np.any(table.numpy() != start, axis=1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_row_l2_sgd_step_equals_numpy(seed):
    start, ids, targets, grad, touched = _case(seed)
    lr, l2 = 0.1, 0.3
    table = tf.Variable(start)
    _lookup_step(make_optimizer("sgd", learning_rate=lr, row_l2=l2), table, ids, targets)
    expected = start.astype(np.float64).copy()
    regularised = grad[touched] + l2 * expected[touched]  # once per unique row
    expected[touched] -= lr * regularised
    np.testing.assert_allclose(table.numpy(), expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_row_l2_adagrad_step_equals_numpy(seed):
    start, ids, targets, grad, touched = _case(seed)
    lr, l2 = 0.1, 0.3
    optimizer = make_optimizer("adagrad", learning_rate=lr, row_l2=l2)
    table = tf.Variable(start)
    _lookup_step(optimizer, table, ids, targets)
    initial, epsilon = optimizer.initial_accumulator_value, optimizer.epsilon
    expected = start.astype(np.float64).copy()
    g = grad[touched] + l2 * expected[touched]
    accumulator = initial + g**2
    expected[touched] -= lr * g / np.sqrt(accumulator + epsilon)
    np.testing.assert_allclose(table.numpy(), expected, atol=TOLERANCE, rtol=0)


def test_row_l2_zero_is_the_base_optimizer():
    start, ids, targets, _, _ = _case(3)
    ours, base = tf.Variable(start), tf.Variable(start)
    _lookup_step(make_optimizer("lazy_adam", learning_rate=0.01), ours, ids, targets)
    _lookup_step(LazyAdam(0.01), base, ids, targets)
    np.testing.assert_array_equal(ours.numpy(), base.numpy())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="row_l2"):
        make_optimizer("adam", learning_rate=0.1, row_l2=0.1)
    with pytest.raises(ValueError, match="name"):
        make_optimizer("adamw", learning_rate=0.1)
    with pytest.raises(ValueError, match="row_l2"):
        optimizers.SparseSGD(0.1, row_l2=-1.0)
    with pytest.raises(ConfigError, match="training.row_l2"):
        TrainingConfig(optimizer="adam", row_l2=0.1)
    with pytest.raises(ConfigError, match="training.row_l2"):
        TrainingConfig(optimizer="sgd", row_l2=-0.1)
    assert TrainingConfig(optimizer="lazy_adam", row_l2=0.1).row_l2 == 0.1


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_round_trip_through_keras_config(name):
    kwargs = {"row_l2": 0.2} if name in SPARSE_OPTIMIZERS else {}
    optimizer = make_optimizer(name, learning_rate=0.05, **kwargs)
    clone = type(optimizer).from_config(optimizer.get_config())
    assert clone.get_config() == optimizer.get_config()


def test_adagrad_sparse_step_is_one_fused_kernel():
    # The graph step runs TF's fused sparse Adagrad kernel (no scatter-gather-scatter); the
    # NumPy test above checks its result.
    table = tf.Variable(tf.ones([5, 2]))
    optimizer = make_optimizer("adagrad", learning_rate=0.1, row_l2=0.5)
    gradient = tf.IndexedSlices(tf.ones([2, 2]), tf.constant([1, 3]), tf.constant([5, 2]))
    step = tf.function(lambda: optimizer.apply_gradients([(gradient, table)]))
    kinds = [op.type for op in step.get_concrete_function().graph.get_operations()]
    assert kinds.count("ResourceSparseApplyAdagradV2") == 1
    assert "ResourceScatterAdd" not in kinds

"""The kernel sampler's batch mixture ``q̄ = (1/B)·Σ_b q(· | h_b)``: against brute force, its draws
by chi-square, the contract, expected counts, in TF's and our sampled softmax, snapshots, and the
timed rebuild callback."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import recsampled as rs
from recsampled.samplers import KernelSamplerRebuild, QuadraticKernelSampler
from recsampled.testing import SamplerContract, inclusion_statistics


def brute_force(queries: np.ndarray, table: np.ndarray, alpha: float) -> np.ndarray:
    """``[B, N]`` float64 ``q(i | h_b)``, every class scored."""
    scores = alpha * (np.float64(queries) @ np.float64(table).T) ** 2 + 1.0
    return scores / scores.sum(axis=1, keepdims=True)


def brute_mixture(queries: np.ndarray, table: np.ndarray, alpha: float) -> np.ndarray:
    """``[N]`` float64 ``q̄(i) = (1/B)·Σ_b q(i | h_b)``: the definition, not the closed form."""
    return brute_force(queries, table, alpha).mean(axis=0)


def random_table(seed: int, rows: int, dim: int, scale: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(rows, dim)) * scale).astype(np.float32)


# -- the algebra and q̄ against brute force --------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "num_classes", "dim", "batch_size", "leaf_size", "alpha"),
    [
        (0, 50, 4, 1, 4, 100.0),  # one query: q̄ is q(· | h)
        (1, 203, 8, 16, 6, 100.0),
        (2, 1000, 16, 64, 16, 10.0),
        (3, 37, 5, 7, 37, 0.0),  # alpha = 0: uniform
        (4, 300, 12, 33, 8, 1.0),
    ],
)
def test_mixture_equals_brute_force(seed, num_classes, dim, batch_size, leaf_size, alpha):
    """q̄ = α·wᵀHw + c (the closed form, in NumPy, to 1e-12) and probability() to 1e-6."""
    table = random_table(seed, num_classes, dim)
    queries = random_table(seed + 50, batch_size, dim, scale=1.0)
    reference = brute_mixture(queries, table, alpha)
    assert abs(reference.sum() - 1.0) < 1e-12
    # The algebra of the module docstring, independently of the sampler.
    h, w = np.float64(queries), np.float64(table)
    z = alpha * np.einsum("bd,de,be->b", h, w.T @ w, h) + num_classes  # Z(h_b)
    big_h = (h / (batch_size * z)[:, None]).T @ h
    closed = alpha * np.einsum("nd,de,ne->n", w, big_h, w) + np.sum(1.0 / (batch_size * z))
    np.testing.assert_allclose(closed, reference, rtol=1e-12)
    # The sampler's H, c and q̄.
    sampler = QuadraticKernelSampler(table, alpha=alpha, leaf_size=leaf_size)
    matrix, constant = sampler.mixture(queries)
    np.testing.assert_allclose(matrix.numpy(), big_h, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(float(constant), np.sum(1.0 / (batch_size * z)), rtol=1e-9)
    q = sampler.probability(tf.range(num_classes), queries).numpy()
    assert q.dtype == np.float32
    np.testing.assert_allclose(q, reference, rtol=1e-6)
    assert abs(q.astype(np.float64).sum() - 1.0) < 1e-6
    grid = np.array([[0, num_classes - 1, 3], [3, 3, 1]])
    np.testing.assert_allclose(
        sampler.probability(grid, queries).numpy(), reference[grid], rtol=1e-6
    )


# -- draws against q̄ ------------------------------------------------------------------------


def mixture_draw_counts(sampler, queries, num_sampled: int, runs: int) -> np.ndarray:
    """``[N]`` how often each class was drawn in ``runs`` calls of ``S`` draws with
    replacement (one graph)."""
    num_classes = sampler.num_classes
    all_ids = tf.range(num_classes, dtype=tf.int64)[tf.newaxis]
    included, _ = inclusion_statistics(
        lambda: sampler.sample(all_ids, num_sampled, unique=False, query_embeddings=queries),
        num_classes,
        runs,
    )
    return included


@pytest.mark.parametrize(
    ("seed", "num_classes", "leaf_size", "num_sampled"),
    [
        (0, 50, 4, 1),  # 13 leaves padded to 16: top cut at level 1, three levels of descent
        (1, 50, 4, 4),  # top cut at level 3, one level of descent
        (2, 37, 7, 2),  # leaves of 7, the last one partly padding
        (3, 64, 64, 8),  # a single leaf: no tree at all
    ],
)
def test_draws_follow_the_mixture_chi_square(seed, num_classes, leaf_size, num_sampled):
    """24,000 draws for five different queries; chi-square goodness of fit to q̄, p > 1e-3.

    The threshold: a correct sampler fails with probability 1e-3 per case (seeds are fixed, so
    the test is deterministic); the biased tree below shows that it can fail.
    """
    dim, alpha = 5, 100.0
    table = random_table(seed, num_classes, dim)
    queries = random_table(seed + 100, 5, dim, scale=1.0)
    sampler = QuadraticKernelSampler(table, alpha=alpha, leaf_size=leaf_size, seed=seed)
    tf.random.set_seed(seed)
    observed = mixture_draw_counts(sampler, queries, num_sampled, 24_000 // num_sampled)
    expected = brute_mixture(queries, table, alpha) * observed.sum()
    assert expected.min() >= 5, "test setup: every cell needs an expected count >= 5"
    result = stats.chisquare(observed, expected)
    assert result.pvalue > 1e-3, f"draws do not follow q̄: {result}"
    # ... and not the proposal of one query alone (the test sees the difference).
    single = brute_force(queries[:1], table, alpha)[0] * observed.sum()
    assert stats.chisquare(observed, single).pvalue < 1e-3


def test_a_biased_tree_fails_the_chi_square():
    """Left children 10% too heavy: detected by the test above."""
    table = random_table(4, 50, 5)
    queries = random_table(104, 5, 5, scale=1.0)
    sampler = QuadraticKernelSampler(table, alpha=100.0, leaf_size=4, seed=0)
    biased = sampler.node_stats.numpy()
    biased[2::2] *= 1.1
    sampler.node_stats.assign(biased)
    tf.random.set_seed(0)
    observed = mixture_draw_counts(sampler, queries, 1, 24_000)
    expected = brute_mixture(queries, table, 100.0) * observed.sum()
    assert stats.chisquare(observed, expected).pvalue < 1e-3


# -- the contract ---------------------------------------------------------------------------


class TestKernelMixtureContract(SamplerContract):
    """Three fixed queries, whatever the batch: the proposal is one fixed distribution, q̄."""

    num_classes, dim = 40, 6

    def make_sampler(self):
        table = random_table(0, self.num_classes, self.dim)
        return QuadraticKernelSampler(table, alpha=100.0, leaf_size=5, top_nodes_per_sample=1)

    def queries(self) -> tf.Tensor:
        return tf.constant(random_table(1, 3, self.dim, scale=1.0))

    def sample_kwargs(self, sampler, batch_size):
        return {"query_embeddings": self.queries()}

    def probability(self, sampler, ids):
        return sampler.probability(ids, self.queries())


# -- expected counts ------------------------------------------------------------------------


def test_expected_counts_equal_brute_force():
    """S·q̄ with replacement; 1 - (1 - q̄)^T with unique=True, one T for the batch; 1e-5."""
    num_classes, dim, num_sampled = 300, 16, 40
    table = random_table(5, num_classes, dim, scale=0.2)
    queries = random_table(6, 8, dim, scale=1.0)
    sampler = QuadraticKernelSampler(table, alpha=100.0, leaf_size=8)
    q = brute_mixture(queries, table, 100.0)
    labels = np.array([[3, 7], [0, 299], [150, 150]])  # 3 label rows, 8 queries: allowed

    values = sampler.sample(labels, num_sampled, unique=False, seed=1, query_embeddings=queries)
    sampled = values.sampled_candidates.numpy()
    assert sampled.shape == (num_sampled,) and values.sampled_candidates.dtype == tf.int64
    np.testing.assert_allclose(values.sampled_expected_count, num_sampled * q[sampled], rtol=1e-5)
    np.testing.assert_allclose(values.true_expected_count, num_sampled * q[labels], rtol=1e-5)

    values = sampler.sample(labels, num_sampled, seed=2, query_embeddings=queries)  # unique
    sampled = values.sampled_candidates.numpy()
    assert len(set(sampled.tolist())) == num_sampled
    counts = values.sampled_expected_count.numpy().astype(np.float64)
    tries = np.round(np.log1p(-counts) / np.log1p(-q[sampled]))
    assert tries.min() >= num_sampled and np.all(tries == tries[0])
    np.testing.assert_allclose(counts, -np.expm1(tries[0] * np.log1p(-q[sampled])), rtol=1e-5)
    np.testing.assert_allclose(
        values.true_expected_count, -np.expm1(tries[0] * np.log1p(-q[labels])), rtol=1e-5
    )


def test_expected_counts_carry_no_gradient():
    sampler = QuadraticKernelSampler(random_table(7, 30, 4), leaf_size=4)
    queries = tf.Variable(random_table(8, 2, 4, scale=1.0))
    with tf.GradientTape() as tape:
        values = sampler.sample([[0], [1]], 3, query_embeddings=queries)
        total = tf.reduce_sum(values.true_expected_count) + tf.reduce_sum(values[2])
    assert tape.gradient(total, queries) is None


# -- in the losses ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_values_in_tf_op_and_ours(seed):
    """The triple plugs into tf.nn.sampled_softmax_loss and ours: equal losses (1e-5)."""
    rng = np.random.default_rng(seed)
    num_classes, dim, batch = 120, 8, 10
    weights = rng.normal(size=(num_classes, dim)).astype(np.float32) * 0.3
    biases = rng.normal(size=num_classes).astype(np.float32)
    inputs = rng.normal(size=(batch, dim)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=(batch, 1))
    sampler = QuadraticKernelSampler(weights, alpha=100.0, leaf_size=8, seed=seed)
    values = sampler.sample(labels, 16, query_embeddings=inputs)
    common = dict(num_sampled=16, num_classes=num_classes, sampled_values=values)
    ours = rs.sampled_softmax_loss(weights, biases, labels, inputs, **common)
    theirs = tf.nn.sampled_softmax_loss(weights, biases, labels, inputs, **common)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)


# -- snapshot ---------------------------------------------------------------------------------


def test_stale_snapshot_until_rebuild():
    """q̄ is that of the snapshot, not of the variable, until update() / rebuild()."""
    num_classes, dim = 60, 4
    old, new = random_table(11, num_classes, dim), random_table(13, num_classes, dim)
    variable = tf.Variable(old)
    sampler = QuadraticKernelSampler(variable, alpha=10.0, leaf_size=4)
    queries = random_table(12, 5, dim, scale=1.0)
    variable.assign(new)
    ids = tf.range(num_classes)
    np.testing.assert_allclose(
        sampler.probability(ids, queries), brute_mixture(queries, old, 10.0), rtol=1e-5
    )
    values = sampler.sample([[0]], 5, unique=False, query_embeddings=queries)
    np.testing.assert_allclose(
        values.sampled_expected_count,
        5 * brute_mixture(queries, old, 10.0)[values.sampled_candidates.numpy()],
        rtol=1e-5,
    )
    sampler.update([3], new[3:4])
    partly = old.copy()
    partly[3] = new[3]
    np.testing.assert_allclose(
        sampler.probability(ids, queries), brute_mixture(queries, partly, 10.0), rtol=1e-5
    )
    tf.function(sampler.rebuild)()
    np.testing.assert_allclose(
        sampler.probability(ids, queries), brute_mixture(queries, new, 10.0), rtol=1e-5
    )


# -- the rebuild callback ---------------------------------------------------------------------


def test_rebuild_callback_times_its_rebuilds():
    """Rebuilds every 3 batches and at epoch ends (unless just done), timed, in the logs."""
    num_classes, dim = 50, 8
    rng = np.random.default_rng(14)
    inputs = tf.keras.Input([dim])
    output = rs.SampledSoftmax(num_classes, num_sampled=6)
    outputs = output(tf.keras.layers.Dense(dim)(inputs))
    sampler = QuadraticKernelSampler(output.kernel, alpha=100.0, leaf_size=4, seed=3)
    output.sampler = sampler
    model = rs.SampledSoftmaxModel(inputs, outputs)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.5))
    callback = KernelSamplerRebuild(sampler, every_n_batches=3)
    x = rng.normal(size=(192, dim)).astype(np.float32)
    y = rng.integers(0, num_classes, size=192)
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[callback])
    # 6 batches per epoch: after batches 3, 6 (= epoch end), 9, 12 (= epoch end).
    assert callback.batches == 12 and callback.rebuilds == 4
    assert callback.seconds_per_rebuild > 0
    np.testing.assert_allclose(
        callback.seconds_per_batch, callback.rebuild_seconds / 12, rtol=1e-12
    )
    assert history.history["kernel_rebuild_seconds_per_batch"][-1] == callback.seconds_per_batch
    table = sampler.table.numpy().reshape(-1, dim)[:num_classes]
    np.testing.assert_array_equal(table, output.kernel.numpy())


def test_rebuild_callback_reads_an_embedding_function():
    table = tf.Variable(random_table(20, 30, 4))
    sampler = QuadraticKernelSampler(table.numpy(), leaf_size=4)  # built from an array
    callback = KernelSamplerRebuild(sampler, embeddings=lambda: 2.0 * table)
    callback.on_train_batch_end(0)
    np.testing.assert_allclose(
        sampler.table.numpy().reshape(-1, 4)[:30], 2.0 * table.numpy(), rtol=1e-6
    )


# -- bad input --------------------------------------------------------------------------------


def test_bad_arguments():
    sampler = QuadraticKernelSampler(np.ones([10, 3], np.float32), leaf_size=4)
    bad = [
        (lambda: sampler.sample([[0]], 2), "query_embeddings"),
        (lambda: sampler.sample([[0]], 2, query_embeddings=np.ones([2, 4])), "query_embeddings"),
        (lambda: sampler.probability([0.5], np.ones([2, 3])), "ids"),
        (lambda: sampler.probability([0, 1], None), "query_embeddings"),
        (lambda: KernelSamplerRebuild(sampler, embeddings="table"), "embeddings"),
        (lambda: KernelSamplerRebuild(sampler, every_n_batches=0), "every_n_batches"),
    ]
    for call, argument in bad:
        with pytest.raises(ValueError, match=f"`{argument}` must .*Received"):
            call()

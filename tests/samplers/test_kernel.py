"""QuadraticKernelSampler: draws and probabilities against brute-force NumPy q(i | h), the tree
against a rebuild from scratch, stale snapshots, graph mode inside ``model.fit``, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import recsampled as rs
from recsampled.layers import SampledSoftmax, SampledSoftmaxModel
from recsampled.samplers import KernelSamplerRebuild, QuadraticKernelSampler
from recsampled.testing import SamplerContract


def brute_force(queries: np.ndarray, table: np.ndarray, alpha: float) -> np.ndarray:
    """``[B, N]`` float64 ``q(i | h_b) = (α·(h_bᵀwᵢ)² + 1) / Σ_j (α·(h_bᵀw_j)² + 1)``."""
    scores = alpha * (queries.astype(np.float64) @ table.astype(np.float64).T) ** 2 + 1.0
    return scores / scores.sum(axis=1, keepdims=True)


def random_table(seed: int, num_classes: int, dim: int, scale: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(num_classes, dim)) * scale).astype(np.float32)


# -- the contract ---------------------------------------------------------------------------


class TestKernelSamplerContract(SamplerContract):
    """Every row gets the same query ``h0``, so the proposal is one fixed distribution."""

    num_classes, dim = 40, 6

    def make_sampler(self):
        table = random_table(0, self.num_classes, self.dim)
        # 5 leaves of 8 (8 with padding): the draws go through the top cut, descent and leaves.
        return QuadraticKernelSampler(
            table, alpha=100.0, leaf_size=5, top_nodes_per_sample=1, mode="per_query"
        )

    def query(self) -> tf.Tensor:
        return tf.constant(random_table(1, 1, self.dim, scale=1.0))

    def sample_kwargs(self, sampler, batch_size):
        return {"query_embeddings": tf.repeat(self.query(), batch_size, axis=0)}

    def probability(self, sampler, ids):
        ids = tf.convert_to_tensor(ids)
        if ids.shape.rank == 1:
            return sampler.probability(ids[tf.newaxis], self.query())[0]
        return sampler.probability(ids, tf.repeat(self.query(), ids.shape[0], axis=0))

    def sampled_shape(self, batch_size, num_sampled):
        return (batch_size, num_sampled)


# -- draws and probabilities against brute force --------------------------------------------


@pytest.mark.parametrize(
    ("seed", "num_classes", "leaf_size", "num_sampled"),
    [
        (0, 50, 4, 1),  # 13 leaves padded to 16; top cut at the root: the whole descent
        (1, 50, 4, 4),  # top cut at level 2, two levels of descent
        (2, 37, 7, 2),  # leaves of 7, the last one partly padding
        (3, 64, 64, 8),  # a single leaf: no tree at all
    ],
)
def test_frequencies_match_brute_force_chi_square(seed, num_classes, leaf_size, num_sampled):
    """Three queries, 24,000 draws each; chi-square goodness of fit per query, p > 1e-3."""
    dim, alpha, repeats = 5, 100.0, 24_000 // num_sampled
    table = random_table(seed, num_classes, dim)
    queries = random_table(seed + 100, 3, dim, scale=1.0)
    sampler = QuadraticKernelSampler(
        table, alpha=alpha, leaf_size=leaf_size, top_nodes_per_sample=1, mode="per_query"
    )
    tf.random.set_seed(seed)
    batch = np.repeat(queries, repeats, axis=0)  # rows 0..repeats-1 are query 0, and so on
    values = sampler.sample(
        tf.zeros([len(batch), 1], tf.int64),
        num_sampled,
        unique=False,
        seed=seed,
        query_embeddings=batch,
    )
    draws = values.sampled_candidates.numpy().reshape(3, -1)
    q = brute_force(queries, table, alpha)
    for row in range(3):
        observed = np.bincount(draws[row], minlength=num_classes)
        expected = q[row] * draws.shape[1]
        assert expected.min() >= 5, "test setup: every cell needs an expected count >= 5"
        result = stats.chisquare(observed, expected)
        assert result.pvalue > 1e-3, f"query {row}: draws do not follow q(i | h): {result}"


def test_a_biased_tree_fails_the_chi_square():
    """The test above can fail: a tree whose left halves are 10% too heavy is detected."""
    table = random_table(4, 50, 5)
    queries = random_table(104, 1, 5, scale=1.0)
    sampler = QuadraticKernelSampler(
        table, alpha=100.0, leaf_size=4, top_nodes_per_sample=1, mode="per_query"
    )
    stats_ = sampler.node_stats.numpy()
    stats_[2::2] *= 1.1  # every left child
    sampler.node_stats.assign(stats_)
    tf.random.set_seed(0)
    values = sampler.sample(
        tf.zeros([24_000, 1], tf.int64),
        1,
        unique=False,
        seed=0,
        query_embeddings=np.repeat(queries, 24_000, 0),
    )
    observed = np.bincount(values.sampled_candidates.numpy().ravel(), minlength=50)
    expected = brute_force(queries, table, 100.0)[0] * 24_000
    assert stats.chisquare(observed, expected).pvalue < 1e-3


@pytest.mark.parametrize("alpha", [0.0, 1.0, 100.0])
def test_probability_and_expected_counts_equal_brute_force(alpha):
    """probability(), S·q with replacement, 1 - (1 - q)^T with unique=True; 1e-5 relative."""
    num_classes, dim, num_sampled = 300, 16, 12
    table = random_table(5, num_classes, dim, scale=0.2)
    queries = random_table(6, 4, dim, scale=1.0)
    sampler = QuadraticKernelSampler(table, alpha=alpha, leaf_size=8, mode="per_query")
    q = brute_force(queries, table, alpha)
    all_ids = np.tile(np.arange(num_classes), (4, 1))
    np.testing.assert_allclose(sampler.probability(all_ids, queries).numpy(), q, rtol=1e-5)

    labels = np.array([[3, 7], [0, 299], [150, 150], [42, 1]])
    rows = np.arange(4)[:, None]
    values = sampler.sample(labels, num_sampled, unique=False, seed=1, query_embeddings=queries)
    sampled = values.sampled_candidates.numpy()
    assert sampled.shape == (4, num_sampled) and values.sampled_candidates.dtype == tf.int64
    np.testing.assert_allclose(
        values.sampled_expected_count.numpy(), num_sampled * q[rows, sampled], rtol=1e-5
    )
    np.testing.assert_allclose(
        values.true_expected_count.numpy(), num_sampled * q[rows, labels], rtol=1e-5
    )

    values = sampler.sample(labels, num_sampled, unique=True, seed=2, query_embeddings=queries)
    sampled = values.sampled_candidates.numpy()
    assert all(len(set(row)) == num_sampled for row in sampled.tolist())
    counts = values.sampled_expected_count.numpy().astype(np.float64)
    # One number of tries T >= S per row explains every count of the row.
    tries = np.round(np.log1p(-counts) / np.log1p(-q[rows, sampled]))
    assert np.all(tries >= num_sampled) and np.all(tries == tries[:, :1])
    np.testing.assert_allclose(counts, -np.expm1(tries * np.log1p(-q[rows, sampled])), rtol=1e-5)
    np.testing.assert_allclose(
        values.true_expected_count.numpy(),
        -np.expm1(tries[:, :2] * np.log1p(-q[rows, labels])),
        rtol=1e-5,
    )


def test_expected_counts_carry_no_gradient():
    table = random_table(7, 30, 4)
    sampler = QuadraticKernelSampler(table, leaf_size=4, mode="per_query")
    queries = tf.Variable(random_table(8, 2, 4, scale=1.0))
    with tf.GradientTape() as tape:
        values = sampler.sample([[0], [1]], 3, query_embeddings=queries)
        total = tf.reduce_sum(values.true_expected_count + tf.reduce_sum(values[2]))
    assert tape.gradient(total, queries) is None


# -- the tree ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed, num_classes, dim, leaf_size", [(0, 203, 8, 6), (1, 1000, 16, 16)])
def test_rebuild_equals_a_numpy_reference_of_the_node_sums(seed, num_classes, dim, leaf_size):
    """Every node's packed Σ w wᵀ (and the float64 root) against float64 NumPy sums."""
    table = random_table(seed, num_classes, dim)
    sampler = QuadraticKernelSampler(table, alpha=100.0, leaf_size=leaf_size)
    rows, cols = np.triu_indices(dim)
    padded = np.zeros((sampler.num_leaves * leaf_size, dim))
    padded[:num_classes] = table
    outer = np.einsum("mli,mlj->mij", *[padded.reshape(-1, leaf_size, dim)] * 2)[:, rows, cols]
    levels = [outer]
    while len(levels[-1]) > 1:
        levels.append(levels[-1].reshape(-1, 2, len(rows)).sum(axis=1))
    reference = np.concatenate([np.zeros((1, len(rows))), *levels[::-1]])
    scale = np.abs(reference).max()
    np.testing.assert_allclose(sampler.node_stats.numpy(), reference, atol=1e-6 * scale)
    np.testing.assert_allclose(sampler.root_stats.numpy(), reference[1], atol=1e-12 * scale)
    assert not np.allclose(sampler.node_stats.numpy()[2], reference[3], atol=1e-3 * scale)


def test_updates_equal_a_rebuild_from_scratch():
    """Random updates (with repeated ids) leave every node as a fresh build would have it."""
    rng = np.random.default_rng(9)
    num_classes, dim = 203, 8
    table = random_table(9, num_classes, dim)
    sampler = QuadraticKernelSampler(table, alpha=100.0, leaf_size=6, mode="per_query")
    for _ in range(5):
        ids = rng.integers(0, num_classes, size=40)
        rows = rng.normal(size=(40, dim)).astype(np.float32)
        sampler.update(ids, rows)
        for i, row in zip(ids, rows, strict=True):
            table[i] = row  # the last row of a repeated id wins, as in update()
    fresh = QuadraticKernelSampler(table, alpha=100.0, leaf_size=6)
    np.testing.assert_array_equal(sampler.table.numpy(), fresh.table.numpy())
    scale = np.abs(fresh.node_stats.numpy()).max()
    np.testing.assert_allclose(
        sampler.node_stats.numpy(), fresh.node_stats.numpy(), atol=1e-5 * scale
    )
    np.testing.assert_allclose(sampler.root_stats.numpy(), fresh.root_stats.numpy(), rtol=1e-9)
    # Parents are the sums of their children, and the root is the float64 root.
    node = sampler.node_stats.numpy().astype(np.float64)
    for k in range(1, sampler.num_leaves):
        np.testing.assert_allclose(node[k], node[2 * k] + node[2 * k + 1], atol=1e-5 * scale)
    np.testing.assert_allclose(node[1], sampler.root_stats.numpy(), atol=1e-5 * scale)
    # And the probabilities follow the new table.
    queries = random_table(10, 3, dim, scale=1.0)
    np.testing.assert_allclose(
        sampler.probability(np.tile(np.arange(num_classes), (3, 1)), queries).numpy(),
        brute_force(queries, table, 100.0),
        rtol=1e-5,
    )


def test_stale_snapshot_until_rebuild():
    """Probabilities are those of the snapshot, not of the variable, until rebuild()."""
    num_classes, dim = 60, 4
    old = random_table(11, num_classes, dim)
    variable = tf.Variable(old)
    sampler = QuadraticKernelSampler(variable, alpha=10.0, leaf_size=4, mode="per_query")
    queries = random_table(12, 2, dim, scale=1.0)
    ids = np.tile(np.arange(num_classes), (2, 1))
    new = random_table(13, num_classes, dim)
    variable.assign(new)
    np.testing.assert_allclose(
        sampler.probability(ids, queries).numpy(), brute_force(queries, old, 10.0), rtol=1e-5
    )
    values = sampler.sample(ids[:, :1], 5, unique=False, query_embeddings=queries)
    np.testing.assert_allclose(
        values.sampled_expected_count.numpy(),
        5 * brute_force(queries, old, 10.0)[[[0], [1]], values.sampled_candidates.numpy()],
        rtol=1e-5,
    )
    sampler.update([3], new[3:4])  # one row moves; the others stay stale
    partly = old.copy()
    partly[3] = new[3]
    np.testing.assert_allclose(
        sampler.probability(ids, queries).numpy(), brute_force(queries, partly, 10.0), rtol=1e-5
    )
    tf.function(sampler.rebuild)()  # graph mode too
    np.testing.assert_allclose(
        sampler.probability(ids, queries).numpy(), brute_force(queries, new, 10.0), rtol=1e-5
    )


def test_memory_bytes_counts_the_state():
    sampler = QuadraticKernelSampler(np.zeros([100, 8], np.float32), leaf_size=8)
    # 16 leaves of 8 rows of 8 floats; 32 nodes of 36 packed floats; the float64 root.
    assert sampler.memory_bytes() == 16 * 8 * 8 * 4 + 32 * 36 * 4 + 36 * 8


# -- graph mode inside model.fit ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["batch_mixture", "per_query"])
def test_trains_inside_model_fit_with_rebuilds(mode):
    """SampledSoftmax + kernel sampler, fit in graph mode; a callback rebuilds the tree."""
    num_classes, dim = 50, 8
    rng = np.random.default_rng(14)
    inputs = tf.keras.Input([dim])
    hidden = tf.keras.layers.Dense(dim)(inputs)
    output = SampledSoftmax(num_classes, num_sampled=6)
    outputs = output(hidden)
    sampler = QuadraticKernelSampler(output.kernel, alpha=100.0, leaf_size=4, seed=3, mode=mode)
    output.sampler = sampler
    model = SampledSoftmaxModel(inputs, outputs)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.5))
    x = rng.normal(size=(256, dim)).astype(np.float32)
    y = rng.integers(0, num_classes, size=256)
    before = output.kernel.numpy().copy()
    history = model.fit(
        x, y, batch_size=32, epochs=2, verbose=0, callbacks=[KernelSamplerRebuild(sampler, 3)]
    )
    losses = history.history["sampled_loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert not np.allclose(output.kernel.numpy(), before)
    # The last rebuild (end of epoch) read the trained table.
    table = sampler.table.numpy().reshape(-1, dim)[:num_classes]
    np.testing.assert_array_equal(table, output.kernel.numpy())


def test_update_inside_a_tf_function_step():
    """update() of the rows a step changed, in graph mode, as a custom train step would."""
    table = random_table(15, 40, 4)
    variable = tf.Variable(table)
    sampler = QuadraticKernelSampler(variable, leaf_size=4)

    @tf.function
    def step(ids):
        variable.scatter_sub(tf.IndexedSlices(tf.ones([3, 4]) * 0.1, ids))
        sampler.update(ids, tf.gather(variable, ids))

    step(tf.constant([1, 5, 39], tf.int64))
    fresh = QuadraticKernelSampler(variable.numpy(), leaf_size=4)
    np.testing.assert_allclose(sampler.node_stats.numpy(), fresh.node_stats.numpy(), atol=1e-5)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"embeddings": np.zeros([5], np.float32)}, "embeddings"),
        ({"embeddings": np.zeros([5, 2], np.int32)}, "embeddings"),
        ({"embeddings": np.zeros([0, 2], np.float32)}, "embeddings"),
        ({"embeddings": "table"}, "embeddings"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"alpha": "big"}, "alpha"),
        ({"leaf_size": 0}, "leaf_size"),
        ({"leaf_size": 2.5}, "leaf_size"),
        ({"seed": "one"}, "seed"),
        ({"top_nodes_per_sample": 0}, "top_nodes_per_sample"),
        ({"mode": "sideways"}, "mode"),
    ],
)
def test_bad_constructor_arguments(kwargs, argument):
    kwargs = {"embeddings": np.zeros([10, 2], np.float32), **kwargs}
    with pytest.raises(ValueError, match=f"`{argument}` must .*Received"):
        QuadraticKernelSampler(**kwargs)


def test_bad_call_arguments():
    sampler = QuadraticKernelSampler(np.ones([10, 3], np.float32), leaf_size=4, mode="per_query")
    queries = np.ones([2, 3], np.float32)
    labels = [[0], [1]]
    bad = [
        (lambda: sampler.sample(labels, 2), "query_embeddings"),
        (lambda: sampler.sample(labels, 2, query_embeddings=np.ones([2, 4])), "query_embeddings"),
        (lambda: sampler.sample(labels, 2, query_embeddings=np.ones([3, 3])), "query_embeddings"),
        (lambda: sampler.sample(labels, 0, query_embeddings=queries), "num_sampled"),
        (lambda: sampler.sample(labels, 11, True, query_embeddings=queries), "num_sampled"),
        (lambda: sampler.sample(labels, 2, "yes", query_embeddings=queries), "unique"),
        (lambda: sampler.sample(labels, 2, seed=1.5, query_embeddings=queries), "seed"),
        (lambda: sampler.sample([[10], [0]], 2, query_embeddings=queries), "true_classes"),
        (lambda: sampler.probability([0, 1], queries), "ids"),
        (lambda: sampler.probability([[0], [1]], None), "query_embeddings"),
        (lambda: sampler.update([0], np.ones([1, 2])), "rows"),
        (lambda: sampler.rebuild(np.ones([9, 3])), "embeddings"),
        (lambda: sampler.rebuild(), "embeddings"),  # built from an array: nothing to reread
        (lambda: KernelSamplerRebuild(rs.UniformSampler(3)), "sampler"),
    ]
    for call, argument in bad:
        with pytest.raises(ValueError, match=f"`{argument}` must .*Received"):
            call()

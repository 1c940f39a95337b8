"""The contract every candidate sampler passes: define ``make_sampler()`` in a subclass.

Every recsampled sampler is tested with :class:`SamplerContract`, and a sampler of your own
can be too: subclass it in a pytest test module under a name starting with ``Test`` and define
``make_sampler()``; pytest then runs every check below on your sampler. The checks: shapes,
dtypes and id ranges of the triple (and that :attr:`~recsampled.CandidateSampler.per_query`
matches the shape), ``probability`` a distribution, expected counts ``S·p`` with replacement,
determinism under a seed, graph mode, a chi-square test of 200,000 draws against
``probability``, and with ``unique=True`` inclusion rates equal to the reported expected counts.

Statistical checks use fixed seeds, so they are deterministic; their thresholds are chosen so
that a correct sampler passes with high probability whatever the seed (p > 1e-3 for the
chi-square test; 3 standard errors per class for inclusion rates), and a sampler whose
frequencies are off by a few percent fails. Needs pytest and scipy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import recsampled as rs

__all__ = ["SamplerContract", "inclusion_statistics"]


def inclusion_statistics(
    sample_fn: Callable[[], rs.SampledValues], num_classes: int, runs: int
) -> tuple[np.ndarray, np.ndarray]:
    """Runs ``sample_fn`` ``runs`` times in one graph and counts what it drew.

    Args:
        sample_fn: returns a triple whose first row of true classes holds every id
            ``0..num_classes-1`` (so its ``true_expected_count[0]`` reports every class).
        num_classes: N.
        runs: R, the number of samples.

    Returns:
        ``([N] times each class was drawn, [N] summed reported expected counts)``, float64.
    """

    @tf.function
    def loop():
        def body(i, included, reported):
            sampled, true_count, _ = sample_fn()
            # [S] shared or [1, S] per-example ids: each run is one sample of S ids.
            flat = tf.reshape(sampled, [-1])
            hit = tf.reduce_sum(tf.one_hot(flat, num_classes, dtype=tf.float64), axis=0)
            return i + 1, included + hit, reported + tf.cast(true_count[0], tf.float64)

        zeros = tf.zeros([num_classes], tf.float64)
        _, included, reported = tf.while_loop(
            lambda i, *_: i < runs, body, (tf.constant(0), zeros, zeros)
        )
        return included, reported

    included, reported = loop()
    return included.numpy(), reported.numpy()


class SamplerContract:
    """Mixin of tests; subclasses define ``make_sampler`` returning a sampler with N ~ 20-60.

    Adaptive samplers (:attr:`~recsampled.CandidateSampler.needs_queries`) also override the
    hooks below (``sampled_shape`` too when they draw per query): every row of a batch then gets
    the same query, so the sampler's distribution is one fixed distribution and every test
    applies unchanged.

    Example:
        >>> from recsampled.samplers import UniformSampler
        >>> class TestMySampler(SamplerContract):
        ...     def make_sampler(self):
        ...         return UniformSampler(num_classes=30)
        >>> TestMySampler().test_probability_is_a_distribution()  # pytest runs every test_*
    """

    def make_sampler(self) -> rs.CandidateSampler:
        raise NotImplementedError

    def sample_kwargs(self, sampler: rs.CandidateSampler, batch_size: int) -> dict:
        """Extra keyword arguments of ``sample`` for a batch of ``batch_size`` rows."""
        return {}

    def probability(self, sampler: rs.CandidateSampler, ids: tf.Tensor) -> tf.Tensor:
        """The draw probability of ``ids`` (any shape) under the distribution the tests use."""
        return sampler.probability(ids)

    def sampled_shape(self, batch_size: int, num_sampled: int) -> tuple[int, ...]:
        """Shape of ``sampled_candidates``: ``(S,)`` shared, ``(B, S)`` per example."""
        return (num_sampled,)

    def _rows(self, ids: np.ndarray, num_sampled: int) -> np.ndarray:
        return ids.reshape(-1, num_sampled)

    # -- shapes, dtypes, ranges -------------------------------------------------------------

    @pytest.mark.parametrize("unique", [True, False])
    def test_shapes_and_dtypes(self, unique):
        sampler = self.make_sampler()
        labels = tf.constant([[0, 1], [2, 3], [1, 1]], tf.int64)
        values = sampler.sample(
            labels, num_sampled=7, unique=unique, seed=1, **self.sample_kwargs(sampler, 3)
        )
        assert isinstance(values, rs.SampledValues)
        assert values.sampled_candidates.shape == self.sampled_shape(3, 7)
        assert sampler.per_query == (values.sampled_candidates.shape.rank == 2)
        assert values.sampled_candidates.dtype == tf.int64
        assert values.true_expected_count.shape == (3, 2)
        assert values.true_expected_count.dtype == tf.float32
        assert values.sampled_expected_count.shape == self.sampled_shape(3, 7)
        assert values.sampled_expected_count.dtype == tf.float32
        ids = values.sampled_candidates.numpy()
        assert ids.min() >= 0 and ids.max() < sampler.num_classes
        assert np.all(values.sampled_expected_count.numpy() > 0)
        if unique:
            assert all(len(set(row.tolist())) == 7 for row in self._rows(ids, 7))

    def test_probability_is_a_distribution(self):
        sampler = self.make_sampler()
        p = self.probability(sampler, tf.range(sampler.num_classes)).numpy()
        assert p.shape == (sampler.num_classes,) and p.dtype == np.float32
        assert np.all(p >= 0)
        np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-5)
        grid = self.probability(sampler, tf.constant([[0, 1], [1, 0]])).numpy()
        np.testing.assert_array_equal(grid, [[p[0], p[1]], [p[1], p[0]]])

    def test_expected_counts_without_replacement_follow_probability(self):
        sampler = self.make_sampler()
        labels = tf.range(sampler.num_classes, dtype=tf.int64)[tf.newaxis]
        values = sampler.sample(
            labels, num_sampled=5, unique=False, seed=3, **self.sample_kwargs(sampler, 1)
        )
        p = self.probability(sampler, labels).numpy()
        np.testing.assert_allclose(values.true_expected_count.numpy(), 5 * p, rtol=1e-5)

    # -- determinism ------------------------------------------------------------------------

    def test_deterministic_under_a_seed(self):
        sampler = self.make_sampler()
        labels = tf.constant([[0], [1]], tf.int64)
        kwargs = self.sample_kwargs(sampler, 2)

        def run(global_seed: int, op_seed: int) -> list[np.ndarray]:
            tf.random.set_seed(global_seed)
            return [
                sampler.sample(
                    labels, 5, unique=u, seed=op_seed, **kwargs
                ).sampled_candidates.numpy()
                for u in (True, False, True)
            ]

        first, again = run(0, 42), run(0, 42)
        for a, b in zip(first, again, strict=True):
            np.testing.assert_array_equal(a, b)
        other = run(1, 43)
        assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))

    def test_works_inside_tf_function(self):
        sampler = self.make_sampler()
        kwargs = self.sample_kwargs(sampler, 2)
        fn = tf.function(lambda labels: sampler.sample(labels, 6, unique=True, seed=5, **kwargs))
        values = fn(tf.constant([[0], [3]], tf.int64))
        assert values.sampled_candidates.shape == self.sampled_shape(2, 6)
        ids = values.sampled_candidates.numpy()
        assert all(len(set(row.tolist())) == 6 for row in self._rows(ids, 6))

    # -- statistics -------------------------------------------------------------------------

    def test_frequencies_match_probability_chi_square(self):
        """200,000 draws with replacement; chi-square goodness of fit, p > 1e-3."""
        sampler = self.make_sampler()
        tf.random.set_seed(123)
        labels = tf.constant([[0]], tf.int64)
        kwargs = self.sample_kwargs(sampler, 1)
        draws = np.concatenate(
            [
                sampler.sample(labels, 20_000, unique=False, seed=7, **kwargs)
                .sampled_candidates.numpy()
                .reshape(-1)
                for _ in range(10)
            ]
        )
        p = self.probability(sampler, tf.range(sampler.num_classes)).numpy().astype(np.float64)
        observed = np.bincount(draws, minlength=sampler.num_classes)
        assert observed[p == 0].sum() == 0, "a class with probability zero was drawn"
        support = p > 0
        expected = p[support] / p[support].sum() * draws.size
        assert expected.min() >= 5, "test setup: every cell needs an expected count >= 5"
        result = stats.chisquare(observed[support], expected)
        assert result.pvalue > 1e-3, f"frequencies do not follow probability: {result}"

    def test_unique_inclusion_rates_match_expected_counts(self):
        """With unique=True, P(id in the sample) ~ its expected count (TF's semantics).

        Over R runs, the empirical inclusion rate of every class must lie within 3 standard
        errors sqrt(r (1 - r) / R) of the mean expected count reported for it.
        """
        sampler = self.make_sampler()
        n, runs, num_sampled = sampler.num_classes, 3000, 4
        tf.random.set_seed(321)
        all_ids = tf.range(n, dtype=tf.int64)[tf.newaxis]  # report the count of every class
        kwargs = self.sample_kwargs(sampler, 1)
        included, reported = inclusion_statistics(
            lambda: sampler.sample(all_ids, num_sampled, unique=True, seed=9, **kwargs), n, runs
        )
        rate, mean_count = included / runs, reported / runs
        se = np.sqrt(np.maximum(rate * (1 - rate), 1.0 / runs) / runs)
        worst = np.max(np.abs(rate - mean_count) / se)
        assert worst < 3.0, f"an inclusion rate is {worst:.1f} standard errors off"

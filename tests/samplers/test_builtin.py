"""Uniform, log-uniform and unigram samplers: the contract, and their distributions against
TF's own ops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

import recsampled as rs
from recsampled.testing import SamplerContract, inclusion_statistics

N = 30


class TestUniformSampler(SamplerContract):
    def make_sampler(self):
        return rs.UniformSampler(N)


class TestLogUniformSampler(SamplerContract):
    def make_sampler(self):
        return rs.LogUniformSampler(N)


class TestUnigramSampler(SamplerContract):
    def make_sampler(self):
        counts = np.arange(N, 0, -1) ** 1.5  # skewed, every class positive
        return rs.UnigramSampler(counts, distortion=0.75)


class TestUnigramSamplerWithZeroCounts(SamplerContract):
    def make_sampler(self):
        counts = np.where(np.arange(N) % 4 == 1, 0, np.arange(N) + 1)  # some classes never drawn
        return rs.UnigramSampler(counts, distortion=1.0)


@pytest.mark.parametrize(
    ("sampler", "tf_op"),
    [
        (rs.UniformSampler(N), tf.random.uniform_candidate_sampler),
        (rs.LogUniformSampler(N), tf.random.log_uniform_candidate_sampler),
    ],
)
def test_probability_equals_tf_ops_expected_count(sampler, tf_op):
    """TF reports expected count p * S when drawing with replacement: recover p from the op."""
    labels = tf.range(N, dtype=tf.int64)[tf.newaxis]
    _, true_count, _ = tf_op(labels, N, 8, unique=False, range_max=N)
    np.testing.assert_allclose(
        sampler.probability(labels).numpy(), true_count.numpy() / 8, rtol=1e-6
    )


def test_log_uniform_formula():
    """P(0) = log(2)/log(N+1), P(N-1) = log((N+1)/N)/log(N+1)."""
    p = rs.LogUniformSampler(N).probability(tf.constant([0, N - 1])).numpy()
    np.testing.assert_allclose(
        p, [math.log(2) / math.log(N + 1), math.log((N + 1) / N) / math.log(N + 1)], rtol=1e-6
    )


@pytest.mark.parametrize("distortion", [0.0, 0.75, 1.0])
def test_unigram_probability_equals_tf_fixed_unigram(distortion):
    counts = np.array([10, 5, 0, 1, 3, 7, 2, 0, 4, 6], dtype=np.float64)
    sampler = rs.UnigramSampler(counts, distortion=distortion)
    labels = tf.range(len(counts), dtype=tf.int64)[tf.newaxis]
    _, true_count, _ = tf.random.fixed_unigram_candidate_sampler(
        labels,
        len(counts),
        4,
        unique=False,
        range_max=len(counts),
        unigrams=counts.tolist(),
        distortion=distortion,
    )
    np.testing.assert_allclose(
        sampler.probability(labels).numpy(), true_count.numpy() / 4, rtol=1e-6
    )


def test_unique_expected_count_formula_equals_tf_when_repeats_were_drawn():
    """TF's unique expected count is 1 - (1 - p)^num_tries once a repeat was drawn: recover
    num_tries from TF's op and check ours gives TF's counts. Without repeats TF reports p * S
    and we keep 1 - (1 - p)^S (``recsampled.samplers.base`` says why)."""
    counts = np.array([50, 20, 10, 5, 5, 4, 3, 2, 1, 1], dtype=np.float64)
    p = counts / counts.sum()
    labels = tf.range(len(counts), dtype=tf.int64)[tf.newaxis]
    tf.random.set_seed(0)
    seen_both = set()
    for _ in range(40):
        _, true_count, _ = tf.random.fixed_unigram_candidate_sampler(
            labels, len(counts), 5, unique=True, range_max=len(counts), unigrams=counts.tolist()
        )
        theirs = true_count.numpy()[0]
        shortcut = np.allclose(theirs, 5 * p, rtol=1e-6)
        seen_both.add(shortcut)
        num_tries = 5 if shortcut else round(float(np.log1p(-theirs[1]) / np.log1p(-p[1])))
        ours = rs.samplers.expected_count(tf.constant(p), num_tries, 5, unique=True).numpy()
        expected = -np.expm1(num_tries * np.log1p(-p)) if shortcut else theirs
        np.testing.assert_allclose(ours, expected, rtol=1e-5)
    assert seen_both == {True, False}, "test setup: both cases must occur"


def test_tf_shortcut_overstates_inclusion_and_ours_does_not():
    """The measurement behind our one difference from TF's expected counts (see base.py)."""
    n, s, runs = 30, 4, 3000
    labels = tf.range(n, dtype=tf.int64)[tf.newaxis]
    tf.random.set_seed(5)
    included, tf_counts = inclusion_statistics(
        lambda: tf.random.log_uniform_candidate_sampler(
            labels, n, s, unique=True, range_max=n, seed=1
        ),
        n,
        runs,
    )
    rate = included / runs
    se = np.sqrt(rate[0] * (1 - rate[0]) / runs)
    assert abs(tf_counts[0] / runs - rate[0]) > 5 * se  # TF's count for the head id is off
    ours = TestLogUniformSampler().make_sampler()
    _, our_counts = inclusion_statistics(lambda: ours.sample(labels, s, seed=2), n, runs)
    assert abs(our_counts[0] / runs - rate[0]) < 3 * se


def test_unigram_zero_distortion_is_uniform_over_all_ids():
    p = rs.UnigramSampler([5, 0, 1, 0], distortion=0.0).probability(tf.range(4)).numpy()
    np.testing.assert_allclose(p, [0.25] * 4)


def test_unigram_handles_ten_million_classes():
    counts = 1.0 / np.arange(1, 10_000_001)
    p = counts / counts.sum()
    sampler = rs.UnigramSampler(counts)
    labels = tf.constant([[1000], [9_999_999]], tf.int64)
    values = sampler.sample(labels, 1024, unique=True, seed=1)
    ids = values.sampled_candidates.numpy()
    assert len(np.unique(ids)) == 1024 and ids.max() < 10_000_000
    # num_tries from the count of id 1000, then the count of the rarest id must agree with it.
    counts_out = values.true_expected_count.numpy()[:, 0]
    num_tries = np.log1p(-counts_out[0]) / np.log1p(-p[1000])
    assert num_tries >= 1024
    np.testing.assert_allclose(counts_out[1], -np.expm1(num_tries * np.log1p(-p[-1])), rtol=1e-3)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ([1.0, -2.0, 3.0], r"counts\[1\]=-2.0"),
        ([1.0, float("nan")], r"counts\[1\]=nan"),
        ([1.0, float("inf")], "finite"),
        ([0, 0, 0], "all zero"),
        ([], "non-empty 1-D"),
        ([[1, 2], [3, 4]], "non-empty 1-D"),
        (["a", "b"], "non-negative numbers"),
    ],
)
def test_unigram_bad_counts(counts, message):
    with pytest.raises(ValueError, match=message):
        rs.UnigramSampler(counts)


@pytest.mark.parametrize("distortion", [-0.5, float("nan"), "1"])
def test_unigram_bad_distortion(distortion):
    with pytest.raises(ValueError, match="`distortion` must be a finite number >= 0"):
        rs.UnigramSampler([1, 2, 3], distortion=distortion)


def test_unique_needs_enough_classes_with_probability():
    sampler = rs.UnigramSampler([3, 0, 2, 0])  # two classes can be drawn
    with pytest.raises(ValueError, match="at most `num_classes`.*num_sampled=3"):
        sampler.sample([[0]], 3, unique=True)
    assert sampler.sample([[0]], 3, unique=False).sampled_candidates.shape == (3,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_sampled=0), "`num_sampled` must be a positive integer. Received: num_sampled=0"),
        (dict(num_sampled=2.5), "`num_sampled` must be a positive integer"),
        (dict(num_sampled=N + 1), "at most `num_classes`"),
        (dict(true_classes=[[0.5]]), "integer class ids"),
        (dict(true_classes=[[N]]), r"in \[0, num_classes=30\). Received: an id equal to 30"),
        (dict(true_classes=[[-1]]), "Received: an id equal to -1"),
        (dict(true_classes=[[[0]]]), r"shape \[batch_size, num_true\]"),
        (dict(unique="yes"), "`unique` must be a bool"),
        (dict(seed=1.5), "`seed` must be None or an integer"),
    ],
)
@pytest.mark.parametrize("sampler_cls", [rs.UniformSampler, rs.LogUniformSampler])
def test_bad_sample_arguments(sampler_cls, kwargs, message):
    args = dict(true_classes=[[0]], num_sampled=3, unique=True, seed=None) | kwargs
    with pytest.raises(ValueError, match=message):
        sampler_cls(N).sample(**args)


@pytest.mark.parametrize("num_classes", [0, -3, 2.0, None, True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="`num_classes` must be a positive integer"):
        rs.UniformSampler(num_classes)


def test_repeated_per_row_marks_later_occurrences_within_each_row():
    from recsampled.samplers.base import repeated_per_row

    ids = tf.constant([[3, 1, 3, 3, 2], [5, 5, 4, 1, 4]])
    expected = [[False, False, True, True, False], [False, True, False, False, True]]
    assert repeated_per_row(ids).numpy().tolist() == expected

"""Tests of the in-batch inclusion probabilities: from counts, and the streaming estimator."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from recsampled.samplers.frequency import (
    FixedFrequency,
    FrequencyEstimator,
    batch_inclusion_probability,
)


def test_batch_inclusion_probability_hand_worked():
    # 1 - (1 - p)^B: p = 0.5, B = 2 -> 0.75; p = 0.1, B = 3 -> 1 - 0.729 = 0.271; tiny p -> B·p.
    got = batch_inclusion_probability(tf.constant([0.5, 0.1, 1e-12, 0.0, 1.0]), batch_size=3)
    np.testing.assert_allclose(got, [0.875, 0.271, 3e-12, 0.0, 1.0], rtol=1e-6)
    assert float(batch_inclusion_probability(tf.constant(0.5), batch_size=2)) == 0.75


def test_fixed_frequency_matches_numpy():
    counts = np.array([10.0, 0.0, 3.0, 1.0, 6.0])
    frequency = FixedFrequency(counts=counts, batch_size=4)
    p = counts / counts.sum()
    ids = tf.constant([[4, 0], [1, 2]])
    np.testing.assert_allclose(frequency.probability(ids), 1 - (1 - p[ids.numpy()]) ** 4, rtol=1e-6)
    assert frequency.update(ids) is None


def test_estimator_hand_worked_paper_updates():
    # alpha = 0.5, one hash, no bias correction (Algorithm 2 as written):
    #   step 1, items {1, 2}: B = 0.5·0 + 0.5·(1 - 0) = 0.5 for both, A = 1
    #   step 2, items {1}:    B(1) = 0.5·0.5 + 0.5·(2 - 1) = 0.75, A(1) = 2
    #   step 3, items {1, 3}: B(1) = 0.5·0.75 + 0.5·1 = 0.875; B(3) = 0.5·3 = 1.5
    # p̂ = 1 / B, clipped to 1: item 1 -> 1, item 2 -> 1 (1 / 0.5), item 3 -> 2/3, item 4 -> 0.
    estimator = FrequencyEstimator(num_buckets=1024, alpha=0.5, bias_correction=False)
    for ids in ([1, 2], [1, 1, 1], [3, 1]):  # repeats within a batch count once
        estimator.update(tf.constant(ids))
    np.testing.assert_allclose(estimator.probability(tf.constant([1, 2, 3, 4])), [1, 1, 2 / 3, 0])
    buckets = estimator.buckets(tf.constant([1, 3]))[0].numpy()
    np.testing.assert_allclose(tf.gather(estimator.gap[0], buckets), [0.875, 1.5])
    assert int(estimator.step) == 3


def test_estimator_bias_correction_hand_worked():
    # Same stream; the sighting counts C are 3, 1, 1, so the corrected gaps are
    # 0.875 / (1 - 0.5^3) = 1, 0.5 / (1 - 0.5) = 1 and 1.5 / 0.5 = 3: p̂ = 1, 1, 1/3.
    estimator = FrequencyEstimator(num_buckets=1024, alpha=0.5)
    for ids in ([1, 2], [1], [3, 1]):
        estimator.update(tf.constant(ids))
    np.testing.assert_allclose(estimator.probability(tf.constant([1, 2, 3])), [1, 1, 1 / 3])


def test_more_hashes_keep_the_least_collided_bucket():
    # Find ids a, b sharing a bucket under hash 0 but not under hash 1. Stream: a every step, b
    # every other step. One hash sees a's bucket every step (p̂(b) = 1, wrong); two hashes keep
    # b's own bucket under hash 1 (p̂(b) = 1/2).
    two = FrequencyEstimator(num_buckets=4, num_hashes=2, alpha=0.5)
    buckets = two.buckets(tf.range(64)).numpy()
    a, b = next(
        (i, j)
        for i in range(64)
        for j in range(i + 1, 64)
        if buckets[0, i] == buckets[0, j] and buckets[1, i] != buckets[1, j]
    )
    one = FrequencyEstimator(num_buckets=4, num_hashes=1, alpha=0.5)
    for step in range(40):
        ids = tf.constant([a, b] if step % 2 else [a])
        one.update(ids)
        two.update(ids)
    assert float(one.probability(tf.constant(b))) == 1.0
    np.testing.assert_allclose(two.probability(tf.constant(b)), 0.5, rtol=0.05)


def test_update_in_graph_mode_equals_eager():
    rng = np.random.default_rng(0)
    stream = rng.integers(0, 50, size=(20, 16))
    eager = FrequencyEstimator(num_buckets=64, num_hashes=3, alpha=0.1)
    graph = FrequencyEstimator(num_buckets=64, num_hashes=3, alpha=0.1)

    @tf.function
    def run(batches):
        for batch in batches:
            graph.update(batch)

    run(tf.constant(stream))
    for batch in stream:
        eager.update(tf.constant(batch))
    ids = tf.range(50)
    np.testing.assert_array_equal(graph.probability(ids), eager.probability(ids))


def test_checkpoint_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    stream = rng.integers(0, 100, size=(10, 8))
    saved = FrequencyEstimator(num_buckets=256, num_hashes=2, alpha=0.2)
    for batch in stream[:5]:
        saved.update(tf.constant(batch))
    path = tf.train.Checkpoint(estimator=saved).save(str(tmp_path / "ckpt"))
    restored = FrequencyEstimator(num_buckets=256, num_hashes=2, alpha=0.2)
    tf.train.Checkpoint(estimator=restored).restore(path).assert_consumed()
    for name in ("step", "last_seen", "gap", "sightings"):
        np.testing.assert_array_equal(getattr(restored, name), getattr(saved, name))
    for batch in stream[5:]:  # and both go on identically
        saved.update(tf.constant(batch))
        restored.update(tf.constant(batch))
    ids = tf.range(100)
    np.testing.assert_array_equal(restored.probability(ids), saved.probability(ids))
    assert all(not v.trainable for v in saved.variables)


def test_zipf_stream_estimates_then_reconverges_after_a_change():
    """Top-100 estimates within 10% of the true inclusion probabilities, twice.

    Setting: N = 1000 items, Zipf(1) popularities ``p_r ∝ 1/r``, batches of B = 1024 draws, so the
    100th item is in a batch with probability ``π = 1 - (1 - p_100)^1024 ≈ 0.75``.
    Tolerance: the gap between batches holding an item is geometric with mean ``1/π`` and
    variance ``(1-π)/π²``; its moving average at rate α has a relative standard deviation of
    about ``sqrt(α/(2-α)·(1-π))``, at most 1.0% for α = 0.003 and π >= 0.75 (1.2-1.5% observed,
    the estimator being unbiased). 10% is about 7 standard deviations, so the largest of 100
    errors (about 3 deviations) stays well inside for any seed.
    Warm-up: with bias correction the first sightings average plainly, so 1500 steps (more than
    1000 sightings of every top-100 item) suffice. After the ranks are permuted, an item that
    jumps from the tail to the top starts from a gap up to ~10x too long that decays as
    ``(1-α)^k``: below 3% after ``k ≈ ln(300)/α ≈ 1900`` sightings, hence 3000 steps. Shortly after
    the change (150 steps) the estimates are still off by more than 10%, which shows the
    convergence is real. H = 2^16 buckets and m = 2 hashes make a top-100 item collide in both
    hashes with under 1% probability.
    """
    num_items, batch_size, alpha = 1000, 1024, 0.003
    rng = np.random.default_rng(2019)
    popularity = 1.0 / np.arange(1, num_items + 1)
    popularity /= popularity.sum()
    estimator = FrequencyEstimator(num_buckets=2**16, num_hashes=2, alpha=alpha)

    @tf.function
    def run(batches):
        for batch in batches:
            estimator.update(batch)

    def feed(p, num_steps):
        run(tf.constant(rng.choice(num_items, size=(num_steps, batch_size), p=p)))

    def worst_relative_error(p):
        top = np.argsort(-p)[:100]
        true = 1.0 - (1.0 - p[top]) ** batch_size
        return np.max(np.abs(estimator.probability(tf.constant(top)).numpy() / true - 1.0))

    feed(popularity, 1500)
    assert worst_relative_error(popularity) < 0.10

    changed = np.empty(num_items)
    changed[rng.permutation(num_items)] = popularity  # the same Zipf law over permuted ranks
    feed(changed, 150)
    assert worst_relative_error(changed) > 0.10
    feed(changed, 2850)
    assert worst_relative_error(changed) < 0.10


def test_bad_arguments():
    bad = [
        (dict(num_buckets=1000), "`num_buckets` must be a power of two"),
        (dict(num_buckets=0), "`num_buckets` must be a positive integer"),
        (dict(num_buckets=1), "`num_buckets` must be a power of two"),
        (dict(num_hashes=0), "`num_hashes` must be a positive integer"),
        (dict(num_hashes=9), "`num_hashes` must be at most 8"),
        (dict(alpha=0.0), r"`alpha` must be a number in \(0, 1\]"),
        (dict(alpha=1.5), r"`alpha` must be a number in \(0, 1\]"),
        (dict(alpha=float("nan")), r"`alpha` must be a number in \(0, 1\]"),
        (dict(bias_correction=1), "`bias_correction` must be a bool"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            FrequencyEstimator(**kwargs)
    with pytest.raises(ValueError, match="`ids` must be an integer tensor"):
        FrequencyEstimator(num_buckets=8).update(tf.constant([1.0]))
    for counts, message in [
        ([0, 0], "at least one positive"),
        ([1, -1], "finite and >= 0"),
        ([[1, 2]], "non-empty 1-D"),
    ]:
        with pytest.raises(ValueError, match=message):
            FixedFrequency(counts=counts, batch_size=2)
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer"):
        FixedFrequency(counts=[1, 2], batch_size=0)

"""The synthetic log: determinism, shape of the data (Zipf skew, cluster affinity, time order),
scale, and planted structure that simple taste-aware models find and popularity does not."""

from __future__ import annotations

import time

import numpy as np
import pytest

from recsampled.data.splits import leave_last_out
from recsampled.data.synthetic import SIZES, generate


def test_deterministic_from_the_seed():
    a, b, c = generate(seed=5), generate(seed=5), generate(seed=6)
    for name in ("user_ids", "item_ids", "timestamps", "user_clusters", "item_clusters"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.item_ids, c.item_ids)


def test_shape_of_the_data():
    log = generate(num_users=500, num_items=2_000, num_interactions=40_000, seed=1)
    assert len(log) == 40_000 and log.user_ids.dtype == np.int64
    assert np.all(np.diff(log.timestamps) >= 0)  # a log in time order
    assert np.bincount(log.user_ids).min() >= 5  # min_user_interactions
    # Zipf skew: the top 1% of items take far more than 1% of the rows.
    counts = np.sort(np.bincount(log.item_ids, minlength=2_000))[::-1]
    assert counts[:20].sum() / counts.sum() > 0.1
    # Cluster affinity 0.8: the rest come from anywhere, and land in the user's cluster by
    # chance with probability about its share of popularity (about 1/20).
    same = log.user_clusters[log.user_ids] == log.item_clusters[log.item_ids]
    assert 0.8 < same.mean() < 0.86


def test_uniform_popularity_and_no_clusters():
    log = generate(num_items=100, num_clusters=1, zipf_exponent=0.0, num_interactions=50_000)
    counts = np.bincount(log.item_ids, minlength=100)
    assert counts.min() > 0.7 * counts.mean() and counts.max() < 1.3 * counts.mean()


def test_a_million_items_is_fast():
    start = time.perf_counter()
    log = generate(
        num_users=20_000, num_items=1_000_000, num_interactions=200_000, num_clusters=100
    )
    assert time.perf_counter() - start < 10  # measured about 0.5 s; generous for shared machines
    assert log.item_clusters.shape == (1_000_000,) and log.item_ids.max() < 1_000_000


def _recall_at(scores: np.ndarray, seen: np.ndarray, test_items: np.ndarray, k: int = 20) -> float:
    """Recall@k with one test item per user, ranking all items except those seen in training."""
    scores = np.where(seen > 0, -np.inf, scores.astype(np.float64))
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return float((top == test_items[:, None]).any(axis=1).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_structure_beats_popularity(seed):
    """Leave-last-out Recall@20 of three NumPy models on the same split:

    - popularity: training counts, the same list for everyone (the baseline);
    - cluster popularity: training counts among users of the same (true) cluster;
    - item-item co-occurrence: sum over the user's items of co-occurrence counts (no truth used).

    Measured over seeds 0-2: popularity about 0.13, cluster popularity about 0.40, item-item
    about 0.33. The bounds leave room for seed-to-seed noise (about 0.02 at 1000 test users).
    """
    synthetic = generate(
        num_users=1_000, num_items=1_000, num_interactions=30_000, num_clusters=10, seed=seed
    )
    log = synthetic.to_interactions()
    split = leave_last_out(log)
    train, test = split.train, split.test
    seen = np.zeros((log.num_users, log.num_items), np.float32)
    seen[train.user_ids, train.item_ids] = 1.0
    users = test.user_ids
    popularity = np.broadcast_to(seen.sum(axis=0), (users.size, log.num_items))
    user_cluster = synthetic.user_clusters[log.users.original_ids]
    by_cluster = np.zeros((user_cluster.max() + 1, log.num_items), np.float32)
    np.add.at(by_cluster, (user_cluster[train.user_ids], train.item_ids), 1.0)
    co_occurrence = seen.T @ seen
    np.fill_diagonal(co_occurrence, 0.0)

    baseline = _recall_at(popularity, seen[users], test.item_ids)
    cluster = _recall_at(by_cluster[user_cluster[users]], seen[users], test.item_ids)
    item_item = _recall_at(seen[users] @ co_occurrence, seen[users], test.item_ids)
    assert 0.05 < baseline < 0.25
    assert cluster > 2.0 * baseline
    assert item_item > 1.8 * baseline


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_users=0), "`num_users` must be a positive integer"),
        (dict(num_interactions=10), r"`num_interactions` must be at least num_users \* min_user"),
        (dict(num_items=5, num_clusters=6), "`num_clusters` must be at most num_items"),
        (dict(cluster_affinity=1.5), r"`cluster_affinity` must be a number in \[0, 1\]"),
        (dict(zipf_exponent=-1.0), "`zipf_exponent` must be a finite number >= 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(**kwargs)


def test_sizes_are_valid_arguments():
    assert set(SIZES) == {"tiny", "small", "medium", "large"}
    assert len(generate(**SIZES["tiny"])) == SIZES["tiny"]["num_interactions"]

"""Full-catalogue metrics: a hand-worked case, ties, a brute-force reference, batching."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsampled.evaluation import (
    RankingMetrics,
    embedding_scores,
    popularity_scores,
    ranking_metrics,
    sample_users,
    top_k,
)


def _evaluate(scores: np.ndarray, train: dict, test: dict, ks, **kwargs) -> RankingMetrics:
    """Metrics of a dense ``[num_users, num_items]`` score matrix; train/test: user -> items."""

    def pairs(sets: dict) -> tuple[np.ndarray, np.ndarray]:
        users = [u for u, items in sets.items() for _ in items]
        items = [i for items in sets.values() for i in items]
        return np.array(users, np.int64), np.array(items, np.int64)

    train_users, train_items = pairs(train)
    test_users, test_items = pairs(test)
    return ranking_metrics(
        lambda users: scores[users],
        num_users=scores.shape[0],
        num_items=scores.shape[1],
        train_user_ids=train_users,
        train_item_ids=train_items,
        test_user_ids=test_users,
        test_item_ids=test_items,
        ks=ks,
        **kwargs,
    )


def test_hand_worked_case():
    scores = np.array([[9, 8, 7, 6, 5, 4], [1, 2, 3, 4, 5, 6]], np.float64)
    # User 0: item 0 removed (training) -> ranking 1, 2, 3, 4, 5; test items 2 (rank 2), 4 (rank 4).
    # User 1: item 5 removed -> ranking 4, 3, 2, 1, 0; test item 0 at rank 5.
    metrics = _evaluate(scores, train={0: [0], 1: [5]}, test={0: [2, 4], 1: [0]}, ks=(2, 4))
    d2, d4 = 1 / math.log2(3), 1 / math.log2(5)  # discounts of ranks 2 and 4
    # Recall@2: user 0 finds 1 of 2, user 1 none -> (1/2 + 0) / 2. Recall@4: (2/2 + 0) / 2.
    assert metrics.recall == pytest.approx({2: 0.25, 4: 0.5})
    # NDCG@K: user 0's ideal DCG is over min(2, K) = 2 ranks: 1 + d2.
    assert metrics.ndcg == pytest.approx({2: d2 / (1 + d2) / 2, 4: (d2 + d4) / (1 + d2) / 2})
    assert metrics.hit_rate == pytest.approx({2: 0.5, 4: 0.5})
    assert metrics.mrr == pytest.approx((1 / 2 + 1 / 5) / 2)
    # Top 2: {1, 2} and {4, 3}; top 4: {1, 2, 3, 4} twice -> 4 of 6 items either way.
    assert metrics.coverage == pytest.approx({2: 4 / 6, 4: 4 / 6})
    assert (metrics.num_users, metrics.num_items) == (2, 6)
    assert metrics.as_dict()["ndcg@4"] == metrics.ndcg[4]


def test_ties_rank_the_smaller_index_first():
    # Four items tied: the ranking is 0, 1, 2, 3; item 2 has rank 3.
    metrics = _evaluate(np.ones((1, 4)), train={}, test={0: [2]}, ks=(2, 3))
    assert metrics.recall == {2: 0.0, 3: 1.0}
    assert metrics.mrr == pytest.approx(1 / 3)
    np.testing.assert_array_equal(top_k(np.array([[1.0, 3.0, 1.0, 3.0, 1.0]]), 3), [[1, 3, 0]])


def test_fewer_items_left_than_k():
    # 3 items, 2 in training: only item 2 can be recommended, whatever K.
    metrics = _evaluate(np.array([[3.0, 2.0, 1.0]]), {0: [0, 1]}, {0: [2]}, ks=(1, 5))
    assert metrics.recall == {1: 1.0, 5: 1.0}
    assert metrics.coverage == pytest.approx({1: 1 / 3, 5: 1 / 3})
    assert metrics.mrr == 1.0


def test_a_test_item_also_in_training_is_never_hit():
    # Item 0 is a training and a test item of user 0: removed from the ranking, still counted.
    metrics = _evaluate(np.array([[5.0, 4.0, 3.0]]), {0: [0]}, {0: [0, 1]}, ks=(3,))
    assert metrics.recall == {3: 0.5}
    assert metrics.mrr == 1.0  # item 1 is first once item 0 is removed


def _brute_force(scores, train, test, ks):
    """Per-user Python: sort the items left by (-score, index) and count."""
    recall, ndcg, hits, rr = {k: [] for k in ks}, {k: [] for k in ks}, {k: [] for k in ks}, []
    covered = {k: set() for k in ks}
    for user, relevant in test.items():
        left = [i for i in range(scores.shape[1]) if i not in set(train.get(user, []))]
        ranking = sorted(left, key=lambda i: (-scores[user, i], i))
        ranks = [ranking.index(i) + 1 for i in relevant if i in ranking]
        rr.append(1 / min(ranks) if ranks else 0.0)
        for k in ks:
            found = [r for r in ranks if r <= k]
            recall[k].append(len(found) / len(relevant))
            hits[k].append(float(bool(found)))
            ideal = sum(1 / math.log2(r + 1) for r in range(1, min(len(relevant), k) + 1))
            ndcg[k].append(sum(1 / math.log2(r + 1) for r in found) / ideal)
            covered[k].update(ranking[:k])
    return {
        "recall": {k: np.mean(v) for k, v in recall.items()},
        "ndcg": {k: np.mean(v) for k, v in ndcg.items()},
        "hit_rate": {k: np.mean(v) for k, v in hits.items()},
        "coverage": {k: len(c) / scores.shape[1] for k, c in covered.items()},
        "mrr": np.mean(rr),
    }


def _random_case(seed: int, integer_scores: bool):
    rng = np.random.default_rng(seed)
    num_users, num_items = 30, 40
    scores = rng.normal(size=(num_users, num_items))
    if integer_scores:  # many ties
        scores = np.round(scores * 2)
    train, test = {}, {}
    for user in range(num_users):
        items = rng.permutation(num_items)[: rng.integers(2, 38)]
        cut = rng.integers(1, items.size)
        train[user], test[user] = items[:cut].tolist(), items[cut:].tolist()
    return scores, train, test


@pytest.mark.parametrize("integer_scores", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force(seed, integer_scores):
    scores, train, test = _random_case(seed, integer_scores)
    ks = (1, 5, 10, 39)
    metrics = _evaluate(scores, train, test, ks)
    expected = _brute_force(scores, train, test, ks)
    for name in ("recall", "ndcg", "hit_rate", "coverage"):
        assert getattr(metrics, name) == pytest.approx(expected[name], abs=1e-12), name
    assert metrics.mrr == pytest.approx(expected["mrr"], abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_equals_unbatched(seed):
    # float64 embeddings: the score of a (user, item) is the same whatever the batch (float32
    # matmuls may round differently with the batch shape; the metrics code itself is row-wise).
    rng = np.random.default_rng(seed)
    queries, items = rng.normal(size=(50, 8)), rng.normal(size=(60, 8))
    train_users, train_items = rng.integers(50, size=300), rng.integers(60, size=300)
    test_users, test_items = rng.integers(50, size=80), rng.integers(60, size=80)
    arguments = dict(
        num_users=50, num_items=60, train_user_ids=train_users, train_item_ids=train_items,
        test_user_ids=test_users, test_item_ids=test_items, ks=(1, 10, 20),
    )  # fmt: skip
    results = [
        ranking_metrics(embedding_scores(queries, items), batch_size=size, **arguments)
        for size in (1, 7, 50, 1000)
    ]
    assert all(result == results[0] for result in results[1:])


def test_popularity_baseline_ranks_by_training_counts():
    counts = np.array([5, 9, 9, 1])
    score = popularity_scores(counts)
    np.testing.assert_array_equal(score(np.array([0, 3])), [[5, 9, 9, 1]] * 2)
    # User 0 trained on item 1: ranking 2, 0, 3 (item 2 ties item 1 at 9, item 1 is removed).
    metrics = ranking_metrics(
        score, num_users=1, num_items=4, train_user_ids=np.array([0]),
        train_item_ids=np.array([1]), test_user_ids=np.array([0]), test_item_ids=np.array([0]),
        ks=(1, 2),
    )  # fmt: skip
    assert metrics.recall == {1: 0.0, 2: 1.0}
    assert metrics.mrr == 0.5


def test_users_subset_and_sample_users():
    users = sample_users(np.array([4, 1, 1, 9, 7, 3]), max_users=3, seed=0)
    assert users.size == 3 and np.all(np.diff(users) > 0) and set(users) <= {1, 3, 4, 7, 9}
    np.testing.assert_array_equal(sample_users(np.array([2, 2, 0]), max_users=None), [0, 2])
    scores, train, test = _random_case(0, integer_scores=False)
    subset = _evaluate(scores, train, test, (5,), users=np.array([3, 4]))
    expected = _brute_force(scores, train, {3: test[3], 4: test[4]}, (5,))
    assert subset.num_users == 2
    assert subset.recall[5] == pytest.approx(expected["recall"][5])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ks": (0,)}, "`ks` must be a positive integer"),
        ({"ks": ()}, "`ks` must hold at least one"),
        ({"batch_size": 0}, "`batch_size` must be a positive integer"),
        ({"users": np.array([1])}, "`users` must be a non-empty set of users with test items"),
        (
            {"score": lambda users: np.zeros((users.size, 2))},
            "must return \\[batch, num_items=3\\]",
        ),
        ({"score": lambda users: np.full((users.size, 3), np.nan)}, "NaN"),
    ],
)
def test_bad_arguments(kwargs, match):
    score = kwargs.pop("score", lambda users: np.zeros((users.size, 3)))
    arguments = dict(
        num_users=2, num_items=3, train_user_ids=np.array([0]), train_item_ids=np.array([0]),
        test_user_ids=np.array([0]), test_item_ids=np.array([1]),
    )  # fmt: skip
    with pytest.raises(ValueError, match=match):
        ranking_metrics(score, **arguments, **kwargs)


def test_embedding_scores_checks_shapes():
    with pytest.raises(ValueError, match="same D"):
        embedding_scores(np.zeros((2, 3)), np.zeros((4, 5)))


def _interactions(user_ids, item_ids, num_users: int, num_items: int):
    """Interactions over indices ``0..num_users-1`` / ``0..num_items-1`` (vocabularies in order)."""
    from recsampled.data import Interactions, Vocabulary

    return Interactions(
        user_ids=np.asarray(user_ids, np.int32),
        item_ids=np.asarray(item_ids, np.int32),
        users=Vocabulary(np.arange(num_users), np.ones(num_users, np.int64)),
        items=Vocabulary(np.arange(num_items), np.ones(num_items, np.int64)),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interactions_and_arrays_give_the_same_metrics(seed):
    rng = np.random.default_rng(seed)
    queries, items = rng.normal(size=(50, 8)), rng.normal(size=(60, 8))
    train_u, train_i = rng.integers(50, size=300), rng.integers(60, size=300)
    test_u, test_i = rng.integers(50, size=80), rng.integers(60, size=80)
    train, test = _interactions(train_u, train_i, 50, 60), _interactions(test_u, test_i, 50, 60)
    score = embedding_scores(queries, items)
    by_arrays = ranking_metrics(
        score, num_users=50, num_items=60, train_user_ids=train_u, train_item_ids=train_i,
        test_user_ids=test_u, test_item_ids=test_i, ks=(1, 10),
    )  # fmt: skip
    assert ranking_metrics(score, train, test, ks=(1, 10)) == by_arrays
    assert ranking_metrics(score, train.user_items(), test.user_items(), num_users=50,
                           num_items=60, ks=(1, 10)) == by_arrays  # fmt: skip


def test_evaluate_scores_every_scorer_and_popularity_on_the_same_sample():
    from recsampled.evaluation import evaluate

    rng = np.random.default_rng(3)
    train = _interactions(rng.integers(40, size=400), rng.integers(30, size=400), 40, 30)
    test = _interactions(rng.integers(40, size=60), rng.integers(30, size=60), 40, 30)
    score = embedding_scores(rng.normal(size=(40, 4)), rng.normal(size=(30, 4)))
    result = evaluate({"model": score}, train, test, ks=(5,), max_users=10, seed=1)
    assert list(result) == ["model", "popularity"]
    users = sample_users(test.user_ids, 10, 1)
    assert result["model"] == ranking_metrics(score, train, test, ks=(5,), users=users)
    assert result["popularity"] == ranking_metrics(
        popularity_scores(train.item_counts), train, test, ks=(5,), users=users
    )
    assert list(evaluate({"m": score}, train, test, ks=(5,), popularity=False)) == ["m"]


def test_a_matrix_of_the_wrong_shape_is_an_error():
    train = _interactions([0, 1], [0, 1], 2, 3)
    with pytest.raises(ValueError, match=r"`train` must cover \[num_users=2, num_items=4\]"):
        ranking_metrics(lambda u: np.zeros((u.size, 4)), train, train, num_items=4)
    with pytest.raises(ValueError, match="`test` .* required"):
        ranking_metrics(lambda u: np.zeros((u.size, 3)), train, num_users=2, num_items=3)

"""Serving: export -> load -> recommend / similar_items / search, against NumPy brute force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from recsampled.index import (
    Recommendations,
    Retriever,
    UnknownItemError,
    UnknownUserError,
    embed_catalogue,
    export_artifact,
)
from tests.index.conftest import NUM_ITEMS, clustered, numpy_top_k, query_tower, random_seen


@pytest.fixture(scope="module")
def retriever(artifact_dir: Path) -> Retriever:
    return Retriever.load(artifact_dir)


def _user_embeddings(query_model: tf.keras.Model, users: np.ndarray) -> np.ndarray:
    return query_model(tf.constant(users, tf.int64)).numpy()


def test_saved_query_tower_equals_the_original(retriever: Retriever, query_model, data) -> None:
    users = np.arange(40)
    np.testing.assert_allclose(
        retriever.embed_users(data.user_ids[users]),
        _user_embeddings(query_model, users),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_recommend_equals_numpy(retriever: Retriever, query_model, data, exclude_seen) -> None:
    users = np.array([3, 0, 17, 39, 3, 8])  # repeats allowed; user 0..39 have 0-30 seen items
    queries = _user_embeddings(query_model, users)
    banned = [data.seen[u] for u in users] if exclude_seen else None
    rows, scores = numpy_top_k(queries, data.items, 10, "cosine", banned)
    top = retriever.recommend(data.user_ids[users], k=10, exclude_seen=exclude_seen)
    np.testing.assert_array_equal(top.rows, rows)
    np.testing.assert_array_equal(top.ids, data.item_ids[rows])
    np.testing.assert_allclose(top.scores, scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(top.queries, data.user_ids[users])
    if exclude_seen:
        for row, user in zip(top.rows, users, strict=True):
            assert not set(row) & set(data.seen[user])


def test_batching_does_not_change_results(artifact_dir: Path, retriever: Retriever, data) -> None:
    small = Retriever.load(artifact_dir, batch_size=3)
    users = data.user_ids[::-1]
    a, b = small.recommend(users, k=7), retriever.recommend(users, k=7)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)


def test_dot_metric_round_trip(tmp_path: Path) -> None:
    items = clustered(200, 6, seed=11)
    model = query_tower(15, 6, seed=1)
    seen = random_seen(15, 200, seed=3)
    export_artifact(
        tmp_path / "dot", item_embeddings=items, item_ids=np.arange(200) * 10, query_model=model,
        user_ids=[f"u{i}" for i in range(15)], metric="dot", index="flat", seen=seen,
    )  # fmt: skip
    retriever = Retriever.load(tmp_path / "dot")
    users = np.arange(15)
    rows, scores = numpy_top_k(_user_embeddings(model, users), items, 5, "dot",
                               [seen[u] for u in users])  # fmt: skip
    top = retriever.recommend([f"u{i}" for i in users], k=5)
    np.testing.assert_array_equal(top.ids, rows * 10)
    np.testing.assert_allclose(top.scores, scores, rtol=1e-5, atol=1e-5)


def test_exclude_seen_when_few_items_remain(tmp_path: Path) -> None:
    # 6 items; the user saw 4 of them, so only 2 can be recommended: the rest is padding
    items = np.eye(6, dtype=np.float32)
    model = tf.keras.Sequential([tf.keras.layers.Embedding(1, 6)])
    export_artifact(
        tmp_path / "tiny", item_embeddings=items, item_ids=list("abcdef"), query_model=model,
        user_ids=["x"], index="flat", seen=[[0, 2, 3, 5]],
    )  # fmt: skip
    top = Retriever.load(tmp_path / "tiny").recommend("x", k=4)
    assert sorted(top.ids[0, :2]) == ["b", "e"]
    assert top.ids[0, 2:].tolist() == ["", ""] and (top.rows[0, 2:] == -1).all()
    assert np.isneginf(top.scores[0, 2:]).all()
    assert len(top.to_frame()) == 2


def test_unknown_user_raises_with_the_id(retriever: Retriever, data) -> None:
    with pytest.raises(UnknownUserError, match=r"User id 77 is not in the artifact's user") as e:
        retriever.recommend([data.user_ids[0], 77, 78])
    assert e.value.user_ids == [77, 78]
    assert isinstance(e.value, KeyError)


def test_unknown_user_gets_popular_items(artifact_dir: Path, data) -> None:
    retriever = Retriever.load(artifact_dir, unknown_user="popular")
    top = retriever.recommend([77, data.user_ids[5]], k=5)
    popular = np.argsort(-data.popularity, kind="stable")[:5]
    np.testing.assert_array_equal(top.rows[0], popular)
    np.testing.assert_array_equal(top.scores[0], data.popularity[popular])
    assert top.fallback.tolist() == [True, False]
    np.testing.assert_array_equal(retriever.popular_items(5), data.item_ids[popular])


def test_popular_fallback_needs_popularity(tmp_path: Path) -> None:
    items = np.ones((5, 2), np.float32)
    export_artifact(tmp_path / "a", item_embeddings=items, item_ids=range(5), index="flat")
    with pytest.raises(ValueError, match="needs item popularity"):
        Retriever.load(tmp_path / "a", unknown_user="popular")
    with pytest.raises(ValueError, match="has no query tower"):
        Retriever.load(tmp_path / "a").recommend([1])


def test_similar_items_equals_numpy_without_the_item_itself(retriever: Retriever, data) -> None:
    rows = np.array([0, 5, 299])
    expected, scores = numpy_top_k(data.items[rows], data.items, 6, "cosine", [[r] for r in rows])
    top = retriever.similar_items(data.item_ids[rows], k=6)
    np.testing.assert_array_equal(top.rows, expected)
    np.testing.assert_allclose(top.scores, scores, rtol=1e-5, atol=1e-5)
    with pytest.raises(UnknownItemError, match="Item id 'nope' is not in the artifact"):
        retriever.similar_items(["item-000", "nope"])


@pytest.mark.parametrize("index_type", ["hnsw", "ivf", "ivfpq"])
def test_similar_items_and_search_on_ann_indexes(tmp_path: Path, index_type: str) -> None:
    items = clustered(2000, 8, seed=12)
    export_artifact(tmp_path / index_type, item_embeddings=items, item_ids=np.arange(2000),
                    index=index_type, sample_queries=clustered(100, 8, seed=13))  # fmt: skip
    retriever = Retriever.load(tmp_path / index_type)
    assert retriever.manifest.recall.reached
    top = retriever.similar_items([0, 1, 2], k=5)
    assert (top.rows != np.array([[0], [1], [2]])).all() and (top.rows >= 0).all()
    found = retriever.search(items[:50], k=10)
    exact, _ = numpy_top_k(items[:50], items, 10, "dot")
    hits = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.rows, exact, strict=True)])
    assert hits >= 0.9


def test_to_frame_long_format(retriever: Retriever, data) -> None:
    top = retriever.recommend(data.user_ids[:2], k=3)
    frame = top.to_frame()
    assert isinstance(top, Recommendations) and len(top) == 2
    assert frame.columns.tolist() == ["user", "rank", "item", "score", "fallback"]
    assert frame["rank"].tolist() == [1, 2, 3, 1, 2, 3]
    assert frame["user"].tolist() == [1000] * 3 + [1001] * 3
    assert frame["item"].tolist() == top.ids.ravel().tolist()
    pd.testing.assert_series_equal(
        frame["score"], pd.Series(top.scores.ravel(), name="score"), check_dtype=False
    )
    similar = retriever.similar_items("item-001", k=2).to_frame()
    assert similar.columns.tolist()[:3] == ["item", "rank", "similar_item"]


def test_scalar_user_and_bad_k(retriever: Retriever, data) -> None:
    assert retriever.recommend(int(data.user_ids[1]), k=4).ids.shape == (1, 4)
    for k in (0, -1, 2.5, "3"):
        with pytest.raises(ValueError, match="`k` must be a positive integer"):
            retriever.recommend(data.user_ids[:1], k=k)


def test_embed_catalogue_in_batches() -> None:
    tower = tf.keras.Sequential([tf.keras.layers.Embedding(NUM_ITEMS, 4)])
    embeddings = embed_catalogue(tower, NUM_ITEMS, batch_size=64)
    expected = tower(tf.range(NUM_ITEMS)).numpy()
    np.testing.assert_allclose(embeddings, expected)
    assert embeddings.dtype == np.float32


def test_users_short_of_k_after_an_ivf_search_get_exact_results(tmp_path: Path, query_model, data):
    """IVF probing one list finds fewer rows than k + seen: those users fall back to exact."""
    import faiss

    from recsampled.index.build import set_search_params

    path = tmp_path / "ivf"
    export_artifact(
        path, item_embeddings=data.items, item_ids=data.item_ids, query_model=query_model,
        user_ids=data.user_ids, metric="cosine", index="ivf", seen=data.seen,
    )  # fmt: skip
    retriever = Retriever.load(path)
    set_search_params(retriever.index, {"nprobe": 1})
    ivf = faiss.extract_index_ivf(retriever.index)
    users = np.arange(len(data.user_ids))
    k = max(ivf.invlists.list_size(i) for i in range(ivf.nlist)) + 1
    queries = _user_embeddings(query_model, users)
    normalised = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    _, plain_rows = retriever.index.search(np.ascontiguousarray(normalised, np.float32), k)
    top = retriever.recommend(data.user_ids[users], k=k)
    rows, _ = numpy_top_k(queries, data.items, k, "cosine", [data.seen[u] for u in users])
    assert (top.rows >= 0).all()
    short = (plain_rows < 0).any(axis=1)  # the premise: one list holds fewer than k rows
    np.testing.assert_array_equal(top.rows[short], rows[short])
    assert short.all() and ivf.nprobe == 1

"""The shared search (``recsampled.serving.queries``) against Retriever and NumPy brute force."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from recsampled.index.served import search_excluding
from recsampled.serving import queries as queries_module
from recsampled.serving.errors import ServiceError
from recsampled.serving.queries import answer, item_query, user_query, vector_query
from recsampled.serving.schemas import EmbeddingRequest, RecommendRequest, SimilarItemsRequest
from recsampled.serving.settings import ServingSettings
from recsampled.serving.state import ArtifactHolder

from .conftest import ITEM_IDS, NUM_ITEMS, USER_IDS, build

SETTINGS = ServingSettings()
TOL = 1e-5  # float32 scores: FAISS vs NumPy float64


@pytest.fixture(scope="module", params=["a", "dot"])
def artifact(request, artifacts):
    return ArtifactHolder(artifacts[request.param]).current


def brute_force(artifact, vectors: np.ndarray, banned: list[set[int]], k: int, allowed=None):
    """Top-k (rows, scores) in float64 over the stored item vectors."""
    retriever = artifact.retriever
    items = retriever.index.reconstruct_n(0, NUM_ITEMS).astype(np.float64)
    q = vectors.astype(np.float64)
    if retriever.metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    scores = q @ items.T
    out = []
    for b in range(len(q)):
        eligible = np.ones(NUM_ITEMS, bool)
        eligible[list(banned[b])] = False
        if allowed is not None:
            eligible &= np.isin(np.arange(NUM_ITEMS), allowed)
        candidates = np.flatnonzero(eligible)
        order = candidates[np.argsort(-scores[b, candidates], kind="stable")[:k]]
        out.append((order, scores[b, order]))
    return out


def seen_rows(retriever, user_id) -> set[int]:
    indptr, indices = retriever.seen
    u = int(retriever.user_indices([user_id])[0])
    return set(indices[indptr[u] : indptr[u + 1]].tolist())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_recommend_equals_retriever(artifact, seed):
    """Many requests with their own k in one answer() call == Retriever.recommend per request."""
    rng = np.random.default_rng(seed)
    retriever = artifact.retriever
    requests = [
        RecommendRequest(
            user_ids=rng.choice(USER_IDS, rng.integers(1, 6), replace=False).tolist(),
            k=int(rng.integers(1, 40)),
            exclude_seen=bool(rng.integers(2)),
        )
        for _ in range(12)
    ]
    queries = [user_query(artifact, r, SETTINGS) for r in requests]
    answers = answer(queries)
    for request, ranked in zip(requests, answers, strict=True):
        expected = retriever.recommend(
            request.user_ids, k=request.k, exclude_seen=request.exclude_seen
        )
        for b, r in enumerate(ranked):
            assert r.key == request.user_ids[b] and not r.fallback
            np.testing.assert_array_equal(r.rows, expected.rows[b])
            np.testing.assert_allclose(r.scores, expected.scores[b], rtol=0, atol=TOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_deny_and_allow_lists_match_brute_force(artifact, seed):
    rng = np.random.default_rng(seed)
    retriever = artifact.retriever
    users = rng.choice(USER_IDS, 4, replace=False).tolist()
    deny = rng.choice(NUM_ITEMS, 50, replace=False)
    allow = rng.choice(NUM_ITEMS, 40, replace=False)
    vectors = retriever.embed_users(users)
    for allow_rows in (None, allow):
        request = RecommendRequest(
            user_ids=users,
            k=15,
            deny_items=ITEM_IDS[deny].tolist(),
            allow_items=None if allow_rows is None else ITEM_IDS[allow_rows].tolist(),
        )
        (ranked,) = answer([user_query(artifact, request, SETTINGS)])
        banned = [seen_rows(retriever, u) | set(deny.tolist()) for u in users]
        expected = brute_force(artifact, vectors, banned, 15, allowed=allow_rows)
        for r, (rows, scores) in zip(ranked, expected, strict=True):
            np.testing.assert_array_equal(r.rows, rows)
            np.testing.assert_allclose(r.scores, scores, rtol=0, atol=TOL)
            assert not set(r.rows.tolist()) & banned[ranked.index(r)]


def test_popular_fallback_for_unknown_users(artifact):
    retriever = artifact.retriever
    request = RecommendRequest(
        user_ids=[USER_IDS[0], -5, USER_IDS[1]],
        k=7,
        unknown_user="popular",
        deny_items=[ITEM_IDS[artifact.popular_rows[0]]],
    )
    ranked = answer([user_query(artifact, request, SETTINGS)])[0]
    assert [r.fallback for r in ranked] == [False, True, False]
    order = np.argsort(-retriever.item_popularity, kind="stable")
    np.testing.assert_array_equal(ranked[1].rows, order[1:8])  # the most popular was denied
    np.testing.assert_array_equal(ranked[1].scores, retriever.item_popularity[order[1:8]])
    denied = order[0]
    for r, user in ((ranked[0], USER_IDS[0]), (ranked[2], USER_IDS[1])):  # the deny list applies
        wider = retriever.recommend([user], k=8).rows[0]
        np.testing.assert_array_equal(r.rows, wider[wider != denied][:7])


def test_similar_items_and_vectors_equal_retriever(artifact):
    retriever = artifact.retriever
    items = ITEM_IDS[[3, 77, 150]].tolist()
    vectors = np.random.default_rng(0).normal(size=(2, 8))
    queries = [
        item_query(artifact, SimilarItemsRequest(item_ids=items, k=9), SETTINGS),
        vector_query(artifact, EmbeddingRequest(query_embeddings=vectors.tolist(), k=5), SETTINGS),
        user_query(artifact, RecommendRequest(user_ids=[USER_IDS[3]], k=4), SETTINGS),
    ]
    similar, by_vector, by_user = answer(queries)
    expected = retriever.similar_items(items, k=9)
    for b, r in enumerate(similar):
        np.testing.assert_array_equal(r.rows, expected.rows[b])
        assert retriever.item_rows([items[b]])[0] not in r.rows
    expected = retriever.search(vectors, k=5)
    for b, r in enumerate(by_vector):
        assert r.key == b
        np.testing.assert_array_equal(r.rows, expected.rows[b])
        np.testing.assert_allclose(r.scores, expected.scores[b], atol=TOL)
    np.testing.assert_array_equal(by_user[0].rows, retriever.recommend([USER_IDS[3]], k=4).rows[0])


def test_k_as_large_as_the_catalogue(artifact):
    """k = N with seen items excluded: every unseen item once, best first."""
    retriever = artifact.retriever
    user = int(USER_IDS[5])
    (ranked,) = answer(
        [user_query(artifact, RecommendRequest(user_ids=[user], k=NUM_ITEMS), SETTINGS)]
    )
    rows = ranked[0].rows
    assert len(rows) == NUM_ITEMS - len(seen_rows(retriever, user))
    assert len(set(rows.tolist())) == len(rows) and not set(rows.tolist()) & seen_rows(
        retriever, user
    )
    assert np.all(np.diff(ranked[0].scores) <= 1e-6)


BAD_REQUESTS = [
    (RecommendRequest(user_ids=[USER_IDS[0]], k=NUM_ITEMS + 1), 422, "k"),
    (RecommendRequest(user_ids=["1000"]), 422, "user_ids.0"),
    (RecommendRequest(user_ids=[USER_IDS[0], 7]), 404, "user_ids.1"),
    (RecommendRequest(user_ids=[USER_IDS[0]], deny_items=["nope"]), 422, "deny_items.0"),
    (RecommendRequest(user_ids=[USER_IDS[0]], allow_items=[1]), 422, "allow_items.0"),
    (RecommendRequest(user_ids=list(range(1001))), 422, "user_ids"),
]


@pytest.mark.parametrize("request_, status, field", BAD_REQUESTS)
def test_bad_requests_name_the_field(artifact, request_, status, field):
    with pytest.raises(ServiceError) as info:
        user_query(artifact, request_, SETTINGS)
    assert info.value.status == status
    assert info.value.errors[0][0] == field
    assert f"`{field}" in info.value.message or "User id 7" in info.value.message


def test_bad_vector_and_item_requests(artifact):
    with pytest.raises(ServiceError, match=r"query_embeddings.1.*embedding_dim=8.*Received: 3"):
        vector_query(artifact, EmbeddingRequest(query_embeddings=[[0.0] * 8, [1.0] * 3]), SETTINGS)
    with pytest.raises(ServiceError, match="'item-999' is not in") as info:
        item_query(artifact, SimilarItemsRequest(item_ids=["item-001", "item-999"]), SETTINGS)
    assert info.value.status == 404 and info.value.ids == ["item-999"]


def test_exclude_seen_without_seen_items(artifacts, retrievers):
    """The default does nothing on an artifact without seen items; asking for it is a 422."""
    artifact = ArtifactHolder(artifacts["no_seen"]).current
    user = int(USER_IDS[2])
    (ranked,) = answer([user_query(artifact, RecommendRequest(user_ids=[user], k=5), SETTINGS)])
    expected = retrievers["a"].recommend([user], k=5, exclude_seen=False)
    np.testing.assert_array_equal(ranked[0].rows, expected.rows[0])
    with pytest.raises(ServiceError, match="`exclude_seen` must be false"):
        user_query(artifact, RecommendRequest(user_ids=[user], exclude_seen=True), SETTINGS)


@pytest.fixture(scope="module", params=["hnsw", "ivf"])
def approximate(request, tmp_path_factory):
    """An HNSW or IVF artifact searched with few candidates (efSearch 8, nprobe 1), so that lists
    differ from exact search and some users with many seen items are left short."""
    path = build(tmp_path_factory.mktemp("approximate") / request.param, seed=3,
                 index=request.param)  # fmt: skip
    artifact = ArtifactHolder(path).current
    index = artifact.retriever.index
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = 1
    else:
        faiss.downcast_index(index).hnsw.efSearch = 8
    return artifact


def test_batched_answers_equal_retriever_on_approximate_indexes(approximate, monkeypatch):
    """Rows of one batch with different k and seen counts: each equals the Retriever's list for
    that user or item alone (same width, same exact fallback for short rows)."""
    retriever = approximate.retriever
    completed = []  # rows the index left short, completed by search_excluding (exact search)

    def counted(index, vectors, k, **kwargs):
        completed.append(len(vectors))
        return search_excluding(index, vectors, k, **kwargs)

    monkeypatch.setattr(queries_module, "search_excluding", counted)
    rng = np.random.default_rng(5)
    requests = [
        RecommendRequest(
            user_ids=rng.choice(USER_IDS, 3, replace=False).tolist(), k=int(rng.integers(1, 30))
        )  # fmt: skip
        for _ in range(10)
    ]
    requests.append(RecommendRequest(user_ids=USER_IDS[:4].tolist(), k=60))  # > an IVF list
    items = ITEM_IDS[[1, 50, 299]].tolist()
    queries = [user_query(approximate, r, SETTINGS) for r in requests]
    queries.append(item_query(approximate, SimilarItemsRequest(item_ids=items, k=7), SETTINGS))
    *answers, similar = answer(queries)
    differs = 0  # rows where the approximate list is not the exact one: the test bites
    for request, ranked in zip(requests, answers, strict=True):
        expected = retriever.recommend(request.user_ids, k=request.k)
        vectors = approximate.embed(retriever.user_indices(request.user_ids))
        banned = [seen_rows(retriever, u) for u in request.user_ids]
        for b, (r, (rows, _)) in enumerate(
            zip(ranked, brute_force(approximate, vectors, banned, request.k), strict=True)
        ):
            np.testing.assert_array_equal(r.rows, expected.rows[b][expected.rows[b] >= 0])
            np.testing.assert_allclose(r.scores, expected.scores[b][: len(r.rows)], atol=TOL)
            differs += len(r.rows) != len(rows) or bool((r.rows != rows).any())
    expected = retriever.similar_items(items, k=7)
    for b, r in enumerate(similar):
        np.testing.assert_array_equal(r.rows, expected.rows[b])
    assert differs > 0
    ivf = faiss.try_extract_index_ivf(retriever.index) is not None
    assert bool(completed) == ivf  # IVF with one list probed leaves rows short; HNSW does not


def test_user_table_equals_the_tower(artifacts):
    """Every user's row of the table is the tower's embedding; without a table (limit 0) the
    tower runs per batch and the answers are the same."""
    with_table = ArtifactHolder(artifacts["a"]).current
    without = ArtifactHolder(artifacts["a"], user_table_bytes=0).current
    retriever = with_table.retriever
    assert with_table.user_table is not None and without.user_table is None
    assert with_table.user_table.shape == (len(USER_IDS), retriever.embedding_dim)
    np.testing.assert_allclose(
        with_table.user_table, retriever.embed_users(USER_IDS), rtol=0, atol=1e-6
    )
    request = RecommendRequest(user_ids=USER_IDS[[4, 0, 17]].tolist(), k=12)
    ranked = answer([user_query(with_table, request, SETTINGS)])[0]
    others = answer([user_query(without, request, SETTINGS)])[0]
    for r, o in zip(ranked, others, strict=True):
        np.testing.assert_array_equal(r.rows, o.rows)
    small = ArtifactHolder(artifacts["a"], user_table_bytes=len(USER_IDS) * 4).current
    assert small.user_table is None  # over the limit: the tower

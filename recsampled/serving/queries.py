"""Requests resolved into queries, and many queries answered by one shared search.

A request becomes a :class:`Query` against the artifact it started on: its ids checked against
the vocabularies (unknown users answered 404 or with popular items, as the request asks), its
``allow_items`` / ``deny_items`` turned into index rows. :func:`answer` then serves any number
of queries on one artifact with **one** embedding lookup (all users of all requests: a row of
the artifact's user table, or one query-tower call), one read of item vectors (all
``similar-items`` queries) and one FAISS search per width class:

For query row ``b`` with its ``k_b`` and excluded index rows ``E_b`` (the user's seen items, the
deny list, the item itself for ``similar-items``), the search asks for ``k_b + w_b`` rows, where
``w_b`` is ``|E_b|`` rounded up to a power of two
(:func:`recsampled.index.served.search_excluding`, which ``Retriever.recommend`` uses with the
same widths), drops ``E_b`` and keeps the first ``k_b``; a row an approximate index leaves
short gets exact search. Rows sharing ``(k_b, w_b)`` share a search, so the answer of a row
does not depend on the other rows of its batch and equals ``Retriever.recommend`` /
``similar_items`` / ``search`` for every index type. Rows with an allow list ``A_b`` are scored
exactly against the vectors of ``A_b \\ E_b`` instead, which no widening of a top-W search
could guarantee.

Example:
    >>> from recsampled.serving.state import ArtifactHolder  # doctest: +SKIP
    >>> artifact = ArtifactHolder("artifacts/movielens").current  # doctest: +SKIP
    >>> query = user_query(artifact, RecommendRequest(user_ids=[196], k=3), ServingSettings())
    ... # doctest: +SKIP
    >>> [len(r.rows) for r in answer([query])[0]]  # doctest: +SKIP
    [3]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from recsampled.index.build import prepare_vectors, search
from recsampled.index.served import search_excluding
from recsampled.serving.errors import ServiceError, invalid
from recsampled.serving.schemas import (
    EmbeddingRequest,
    RecommendRequest,
    SimilarItemsRequest,
)
from recsampled.serving.settings import ServingSettings
from recsampled.serving.state import LoadedArtifact

QueryKind = Literal["user", "item", "vector"]


@dataclasses.dataclass(frozen=True, eq=False)
class Query:
    """One request's queries, resolved against one artifact.

    Attributes:
        artifact: the artifact the request started on (it is answered on that one).
        kind: ``"user"`` (``/recommend``), ``"item"`` (``/similar-items``) or ``"vector"``.
        keys: ``[batch_size]`` what each result echoes: user ids, item ids, or positions.
        rows: ``[batch_size]`` int64 user indices (``-1``: unknown, popular items), item rows,
            or positions (vectors).
        k: items per query row.
        vectors: ``[batch_size, embedding_dim]`` float32 queries for ``kind="vector"``.
        exclude_seen: drop each user's seen items.
        allow: distinct item rows the results must come from, or ``None``.
        deny: item rows the results must not contain, or ``None``.
    """

    artifact: LoadedArtifact
    kind: QueryKind
    keys: list[Any]
    rows: np.ndarray
    k: int
    vectors: np.ndarray | None = None
    exclude_seen: bool = False
    allow: np.ndarray | None = None
    deny: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)


class Ranked(NamedTuple):
    """One query row's answer: ``[<= k]`` item rows and scores, best first."""

    key: Any
    rows: np.ndarray
    scores: np.ndarray
    fallback: bool


# -- resolving requests -----------------------------------------------------------------------


def _check_ids(values: Sequence[Any], vocabulary: np.ndarray, field: str) -> np.ndarray:
    """Ids of a request as an array of the vocabulary's type (integers or strings)."""
    integer = vocabulary.dtype.kind in "iu"  # np.issubdtype(dtype, np.integer), 20x cheaper
    kind, python_type = ("an integer", int) if integer else ("a string", str)
    for position, value in enumerate(values):
        if not isinstance(value, python_type):
            raise invalid(
                f"{field}.{position}",
                f"`{field}.{position}` must be {kind}: this artifact's ids are "
                f"{'integers' if integer else 'strings'}. Received: {value!r}.",
            )
    return np.array(values, dtype=np.int64 if integer else object)


def _check_k(k: int, artifact: LoadedArtifact, settings: ServingSettings) -> int:
    limit = min(artifact.retriever.num_items, settings.max_k)
    if k > limit:
        raise invalid(
            "k",
            f"`k` must be at most {limit} (the catalogue has {artifact.retriever.num_items} "
            f"items; the server allows k <= {settings.max_k}). Received: k={k}.",
        )
    return k


def _check_count(values: Sequence[Any], field: str, limit: int) -> None:
    if len(values) > limit:
        raise invalid(
            field,
            f"`{field}` must hold at most {limit} entries. Received: {len(values)} entries.",
        )


def _item_list(
    values: Sequence[Any] | None, artifact: LoadedArtifact, field: str, settings: ServingSettings
) -> np.ndarray | None:
    """``allow_items`` / ``deny_items`` as distinct index rows; unknown ids are a 422."""
    if values is None:
        return None
    _check_count(values, field, settings.max_list_items)
    retriever = artifact.retriever
    ids = _check_ids(values, retriever.item_ids, field)
    if not len(ids):
        return np.zeros(0, np.int64)
    rows = artifact.item_rows(ids)
    if (rows < 0).any():
        unknown = ids[rows < 0].tolist()
        first = int(np.flatnonzero(rows < 0)[0])
        raise ServiceError(
            422,
            "unknown_item",
            f"`{field}.{first}` is item id {unknown[0]!r}, which is not in the artifact's "
            f"catalogue ({retriever.num_items} items; {len(unknown)} unknown in `{field}`).",
            field=f"{field}.{first}",
            ids=unknown,
        )
    return np.unique(rows)


def user_query(
    artifact: LoadedArtifact, request: RecommendRequest, settings: ServingSettings
) -> Query:
    """Checks a ``/recommend`` request against ``artifact``.

    Raises:
        ServiceError: 404 ``unknown_user`` naming the ids (unless the request asks for the
            popular fallback), 422 for a broken rule (``k``, counts, id types, lists).
    """
    retriever = artifact.retriever
    _check_count(request.user_ids, "user_ids", settings.max_ids)
    k = _check_k(request.k, artifact, settings)
    if retriever.query_model is None or retriever.user_ids is None:
        raise ServiceError(
            422,
            "no_query_tower",
            "This artifact has no query tower or user vocabulary, so "
            "it cannot embed users; use /recommend-by-embedding or /similar-items.",
        )
    exclude_seen = request.exclude_seen
    if exclude_seen and retriever.seen is None:
        if "exclude_seen" in request.model_fields_set:  # asked for, not just the default
            raise invalid(
                "exclude_seen",
                "`exclude_seen` must be false: this artifact records no seen items.",
            )
        exclude_seen = False
    ids = _check_ids(request.user_ids, retriever.user_ids, "user_ids")
    indices = artifact.user_indices(ids)
    if indices.min() < 0:  # (`user_ids` holds at least one id)
        unknown = ids[indices < 0].tolist()
        if request.unknown_user == "error":
            raise ServiceError(
                404,
                "unknown_user",
                f"User id {unknown[0]!r} is not in the artifact's user vocabulary "
                f"({retriever.num_users} users; {len(unknown)} unknown in this request). "
                'Send "unknown_user": "popular" to get popular items for unknown users.',
                field=f"user_ids.{int(np.flatnonzero(indices < 0)[0])}",
                ids=unknown,
            )
        if artifact.popular_rows is None:
            raise invalid(
                "unknown_user",
                '`unknown_user` must be "error": this artifact has no item popularity.',
            )
    return Query(
        artifact,
        "user",
        list(request.user_ids),
        indices,
        k,
        exclude_seen=exclude_seen,
        allow=_item_list(request.allow_items, artifact, "allow_items", settings),
        deny=_item_list(request.deny_items, artifact, "deny_items", settings),
    )


def item_query(
    artifact: LoadedArtifact, request: SimilarItemsRequest, settings: ServingSettings
) -> Query:
    """Checks a ``/similar-items`` request; unknown items are a 404 naming them."""
    retriever = artifact.retriever
    _check_count(request.item_ids, "item_ids", settings.max_ids)
    k = _check_k(request.k, artifact, settings)
    ids = _check_ids(request.item_ids, retriever.item_ids, "item_ids")
    rows = artifact.item_rows(ids)
    if (rows < 0).any():
        unknown = ids[rows < 0].tolist()
        raise ServiceError(
            404,
            "unknown_item",
            f"Item id {unknown[0]!r} is not in the artifact's catalogue "
            f"({retriever.num_items} items; {len(unknown)} unknown in this request).",
            field=f"item_ids.{int(np.flatnonzero(rows < 0)[0])}",
            ids=unknown,
        )
    return Query(
        artifact,
        "item",
        list(request.item_ids),
        rows,
        k,
        allow=_item_list(request.allow_items, artifact, "allow_items", settings),
        deny=_item_list(request.deny_items, artifact, "deny_items", settings),
    )


def vector_query(
    artifact: LoadedArtifact, request: EmbeddingRequest, settings: ServingSettings
) -> Query:
    """Checks a ``/recommend-by-embedding`` request (each vector of the artifact's dimension)."""
    retriever = artifact.retriever
    _check_count(request.query_embeddings, "query_embeddings", settings.max_ids)
    k = _check_k(request.k, artifact, settings)
    dim = retriever.embedding_dim
    for position, vector in enumerate(request.query_embeddings):
        if len(vector) != dim:
            raise invalid(
                f"query_embeddings.{position}",
                f"`query_embeddings.{position}` must have embedding_dim={dim} numbers. "
                f"Received: {len(vector)} numbers.",
            )
    vectors = np.array(request.query_embeddings, dtype=np.float32).reshape(-1, dim)
    positions = list(range(len(vectors)))
    return Query(
        artifact,
        "vector",
        positions,
        np.arange(len(vectors), dtype=np.int64),
        k,
        vectors=vectors,
        allow=_item_list(request.allow_items, artifact, "allow_items", settings),
        deny=_item_list(request.deny_items, artifact, "deny_items", settings),
    )


# -- answering ---------------------------------------------------------------------------------


def _vectors(queries: Sequence[Query]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``[R, D]`` float32 query vectors of every searchable row (prepared for the metric), and
    its ``(query, position)``.

    One embedding call covers the known users of all queries; one read the vectors of all
    ``similar-items`` rows.
    """
    retriever = queries[0].artifact.retriever
    slots: dict[str, list[tuple[int, int]]] = {"user": [], "item": [], "vector": []}
    for q, query in enumerate(queries):
        for j, row in enumerate(query.rows.tolist()):
            if row >= 0:
                slots[query.kind].append((q, j))
    parts, owners = [], []
    if slots["user"]:
        users = np.array([queries[q].rows[j] for q, j in slots["user"]], np.int64)
        parts.append(queries[0].artifact.embed(users))
        owners += slots["user"]
    if slots["item"]:
        rows = np.array([queries[q].rows[j] for q, j in slots["item"]], np.int64)
        parts.append(retriever.item_vectors(rows))
        owners += slots["item"]
    if slots["vector"]:
        parts.append(np.stack([queries[q].vectors[j] for q, j in slots["vector"]]))
        owners += slots["vector"]
    if not parts:
        return np.zeros((0, retriever.embedding_dim), np.float32), []
    vectors = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return prepare_vectors(vectors, retriever.metric, name="query_embeddings"), owners


def _excluded(query: Query, position: int) -> np.ndarray:
    """Distinct index rows that query row ``position`` must not return."""
    parts = []
    if query.kind == "user" and query.exclude_seen:
        indptr, indices = query.artifact.retriever.seen
        user = query.rows[position]
        parts.append(indices[indptr[user] : indptr[user + 1]])
    if query.kind == "item":
        parts.append(query.rows[position : position + 1])
    if query.deny is not None:
        parts.append(query.deny)
    if not parts:
        return np.zeros(0, np.int64)
    if len(parts) == 1:
        return parts[0].astype(np.int64, copy=False)
    return np.unique(np.concatenate(parts)).astype(np.int64, copy=False)


def _search_classes(
    ks: list[int], exclusions: list[int], num_items: int
) -> dict[tuple[int, int], list[int]]:
    """Searched rows grouped by ``(k, excluded rows rounded up to a power of two)``: rows of a
    class share one search whose width (``k`` plus that power, at most ``num_items``) is the
    one ``Retriever.recommend`` uses for each of them alone."""
    classes: dict[tuple[int, int], list[int]] = {}
    for s, (k, count) in enumerate(zip(ks, exclusions, strict=True)):
        width = 0 if count == 0 else 1 << (count - 1).bit_length()
        classes.setdefault((k, min(width, num_items)), []).append(s)
    return classes


def _search(
    artifact: LoadedArtifact, vectors: np.ndarray, k: int, extra: int, excluded: list[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row of ``[B, D]`` prepared ``vectors``, the first ``k`` of ``k + extra`` searched rows
    not in its ``excluded``; ``search_excluding``'s rule (what ``Retriever.recommend`` returns),
    with the exclusion done by a set per row (a few numpy calls per batch instead of a few
    dozen: most of a lone request's search cost). Rows the index leaves short (fewer than
    ``min(k, N - |excluded|)`` kept) go to ``search_excluding``, which completes them with exact
    search."""
    retriever = artifact.retriever
    n = retriever.num_items
    top = search(retriever.index, vectors, min(n, k + extra))
    out: list = []
    short = []
    for b, (rows, ex) in enumerate(zip(top.rows.tolist(), excluded, strict=True)):
        banned = set(ex.tolist()) if len(ex) else ()
        kept = [i for i, row in enumerate(rows) if row >= 0 and row not in banned][:k]
        if len(kept) < min(k, n - len(ex)):
            short.append(b)
        if not kept or kept[-1] == len(kept) - 1:  # the first len(kept) rows: a view
            out.append((top.rows[b, : len(kept)], top.scores[b, : len(kept)]))
        else:
            out.append((top.rows[b, kept], top.scores[b, kept]))
    if short:
        exact = search_excluding(
            retriever.index,
            vectors[short],
            k,
            lengths=np.array([len(excluded[b]) for b in short], np.int64),
            excluded=np.concatenate([excluded[b] for b in short]),
            exact=artifact.exact_index,
        )
        for b, rows, scores in zip(short, exact.rows, exact.scores, strict=True):
            out[b] = (rows[rows >= 0], scores[rows >= 0])
    return out


def _scored_allow(query: Query, vector: np.ndarray, excluded: np.ndarray):
    """Exact top-k of the allow list without ``excluded``: scores of the stored vectors."""
    retriever = query.artifact.retriever
    candidates = query.allow[~np.isin(query.allow, excluded)] if len(excluded) else query.allow
    if not len(candidates):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    scores = retriever.item_vectors(candidates) @ vector  # `vector` is prepared already
    order = np.argsort(-scores, kind="stable")[: query.k]
    return candidates[order], scores[order].astype(np.float32)


def _popular(query: Query, position: int) -> Ranked:
    """Popular items for an unknown user (allow and deny lists still apply)."""
    artifact = query.artifact
    rows = artifact.popular_rows
    if query.allow is not None:
        rows = rows[np.isin(rows, query.allow)]
    if query.deny is not None:
        rows = rows[~np.isin(rows, query.deny)]
    rows = rows[: query.k]
    scores = artifact.retriever.item_popularity[rows].astype(np.float32)
    return Ranked(query.keys[position], rows, scores, True)


def answer(queries: Sequence[Query]) -> list[list[Ranked]]:
    """Answers queries on one artifact with one tower call and one FAISS search.

    Args:
        queries: queries resolved against the same :class:`LoadedArtifact`.

    Returns:
        Per query, one :class:`Ranked` per row, in request order.
    """
    if not queries:
        return []
    artifact = queries[0].artifact
    if any(q.artifact is not artifact for q in queries):
        raise ValueError("`queries` must all be resolved against the same artifact.")
    retriever = artifact.retriever
    vectors, owners = _vectors(queries)
    excluded = [_excluded(queries[q], j) for q, j in owners]
    searched = [s for s, (q, _) in enumerate(owners) if queries[q].allow is None]
    results: list[list[Ranked | None]] = [[None] * len(q) for q in queries]
    ks = [queries[owners[s][0]].k for s in searched]
    counts = [len(excluded[s]) for s in searched]
    for (k, width), members in _search_classes(ks, counts, retriever.num_items).items():
        slots = [searched[m] for m in members]
        found = _search(artifact, vectors[slots], k, width, [excluded[s] for s in slots])
        for s, (rows, scores) in zip(slots, found, strict=True):
            q, j = owners[s]
            results[q][j] = Ranked(queries[q].keys[j], rows, scores, False)
    for s, (q, j) in enumerate(owners):
        if queries[q].allow is not None:
            rows, scores = _scored_allow(queries[q], vectors[s], excluded[s])
            results[q][j] = Ranked(queries[q].keys[j], rows, scores, False)
    for q, query in enumerate(queries):  # the rows left are unknown users (index -1)
        for j, ranked in enumerate(results[q]):
            if ranked is None:
                results[q][j] = _popular(query, j)
    return results  # type: ignore[return-value]

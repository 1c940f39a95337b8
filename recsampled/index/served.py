"""The lists a Retriever serves: top-k after seen items are removed, the same for tuning.

To leave out the ``s`` items a user has seen, the index is asked for ``k + w`` rows and the first
``k`` unseen ones are kept, where ``w`` is ``s`` rounded up to a power of two (``0`` for no seen
item). The width therefore depends only on the user's own seen count, never on who else is in
the request: with an approximate index (HNSW searches with ``ef = max(efSearch, k + w)``) a user
gets the same list alone, in a batch or in ``--all-users``, and tuning can measure exactly that
list. Users are grouped by ``w`` (at most twice the rows a user needs). An approximate index may
return fewer than ``k`` unseen rows (an IVF probing few lists): such users get exact search over
the stored vectors.

**Served recall** (what :func:`recsampled.index.build_index` tunes with ``query_seen`` and the
manifest reports): for a query ``q`` with served rows ``A(q)`` and exact rows ``E(q)`` (exact
top-k of the items ``q`` has not seen, the same exclusion), ``mean_q |A(q) ∩ E(q)| / |E(q)|``
summed as ``Σ|A ∩ E| / Σ|E|`` (:func:`recsampled.index.build.recall_at_k`).

Example:
    >>> seen_width(np.array([0, 1, 3, 8, 9]))
    array([ 0,  1,  4,  8, 16])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import faiss
import numpy as np

from recsampled.index.build import SearchResult, search
from recsampled.index.shards import reconstruct_rows


def seen_width(counts: np.ndarray) -> np.ndarray:
    """``[n]`` extra rows fetched per user: its seen count rounded up to a power of two."""
    counts = np.asarray(counts, np.int64)
    width = np.zeros_like(counts)
    positive = counts > 0
    width[positive] = np.left_shift(1, np.ceil(np.log2(counts[positive])).astype(np.int64))
    too_small = width < counts  # float rounding of log2 near powers of two
    width[too_small] *= 2
    return width


def groups(counts: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Positions of users sharing a :func:`seen_width`, in batches of at most ``batch_size``."""
    width = seen_width(counts)
    order = np.argsort(width, kind="stable")
    edges = np.flatnonzero(np.diff(width[order])) + 1
    for group in np.split(order, edges):
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


def search_excluding(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    *,
    lengths: np.ndarray,
    excluded: np.ndarray,
    exact: Callable[[], faiss.Index],
) -> SearchResult:
    """Top ``k`` rows per query, leaving out its excluded rows.

    Args:
        index: the index to search.
        queries: ``[batch, D]`` prepared queries.
        k: rows per query.
        lengths: ``[batch]`` excluded rows per query.
        excluded: ``[sum(lengths)]`` the excluded rows, query after query.
        exact: the exact index over the same vectors (for queries left short).

    Returns:
        ``[batch, k]`` scores and rows (``-inf`` / ``-1`` where fewer than ``k`` remain).
    """
    batch, n = len(queries), np.int64(index.ntotal)
    owners = np.repeat(np.arange(batch, dtype=np.int64), lengths)
    width = int(min(n, k + int(seen_width(lengths).max(initial=0))))
    scores, rows = search(index, queries, width)
    banned = owners * n + excluded.astype(np.int64)

    def kept(rows: np.ndarray) -> np.ndarray:
        keep = rows >= 0
        if len(excluded):
            candidates = np.arange(batch, dtype=np.int64)[:, None] * n + rows
            keep &= ~np.isin(candidates, banned)
        return keep

    keep = kept(rows)
    short = keep.sum(axis=1) < np.minimum(k, n - lengths)
    if short.any():
        scores[short], rows[short] = search(exact(), queries[short], width)
        keep = kept(rows)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    rows = np.take_along_axis(rows, order, axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    valid = np.take_along_axis(keep, order, axis=1)
    out_rows = np.full((batch, k), -1, np.int64)
    out_scores = np.full((batch, k), -np.inf, np.float32)
    out_rows[:, : rows.shape[1]] = np.where(valid, rows, -1)
    out_scores[:, : rows.shape[1]] = np.where(valid, scores, -np.inf)
    return SearchResult(out_scores, out_rows)


def csr_rows(indptr: np.ndarray, indices: np.ndarray, users: np.ndarray) -> tuple:
    """``(lengths, rows)`` of the CSR rows ``users``, concatenated in order."""
    starts, ends = indptr[users], indptr[users + 1]
    lengths = (ends - starts).astype(np.int64)
    flat = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return lengths, indices[np.arange(int(lengths.sum())) + flat]


def exact_index_of(index: faiss.Index) -> faiss.Index:
    """An exact inner-product index over the vectors stored in ``index``."""
    vectors = reconstruct_rows(index, np.arange(index.ntotal, dtype=np.int64))
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, np.float32))
    return exact


class ServedSearch:
    """``search(index, queries, k)`` as a Retriever serves it: query ``i`` is user ``i`` of the
    CSR ``(indptr, indices)`` and its seen rows are left out (module docstring).

    Args:
        indptr: ``[num_queries + 1]`` CSR offsets of the queries' seen rows.
        indices: their item rows.
        batch_size: queries per search call (as :class:`~recsampled.index.Retriever`).
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, *, batch_size: int = 1024):
        self.indptr = np.asarray(indptr, np.int64)
        self.indices = np.asarray(indices, np.int64)
        self.batch_size = batch_size

    def __call__(self, index: faiss.Index, queries: np.ndarray, k: int) -> SearchResult:
        users = np.arange(len(queries))
        counts = self.indptr[users + 1] - self.indptr[users]
        scores = np.full((len(queries), k), -np.inf, np.float32)
        rows = np.full((len(queries), k), -1, np.int64)
        cache: list[faiss.Index] = []

        def exact() -> faiss.Index:
            if not cache:
                cache.append(exact_index_of(index))
            return cache[0]

        for part in groups(counts, self.batch_size):
            lengths, excluded = csr_rows(self.indptr, self.indices, users[part])
            result = search_excluding(
                index, queries[part], k, lengths=lengths, excluded=excluded, exact=exact
            )
            scores[part], rows[part] = result
        return SearchResult(scores, rows)

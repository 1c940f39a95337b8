"""Index shards: one catalogue split over N FAISS indexes of successive rows, searched together.

:func:`split_index` turns a built index into ``num_shards`` indexes over successive row ranges
(``numpy.array_split`` sizes): each is a clone of the built index emptied with ``reset()`` (for
IVF and PQ it keeps the trained quantizer and codebooks, so every shard shares them) to which
its rows are added. :class:`ShardedIndex` is a ``faiss.IndexShards`` with successive ids: a
search asks every shard (in threads) and merges their top-k by score, so with exact (Flat)
shards the results equal the unsharded index's. It also reconstructs item vectors by row
(``IndexShards`` itself cannot), routing each row to its shard. Search parameters set through
``faiss.ParameterSpace`` reach every shard.

Example:
    >>> vectors = np.random.default_rng(0).normal(size=(100, 4)).astype("float32")
    >>> flat = faiss.IndexFlatIP(4)
    >>> flat.add(vectors)
    >>> sharded = ShardedIndex(split_index(flat, vectors, 3))
    >>> sharded.ntotal, [s.ntotal for s in sharded.shard_list]
    (100, [34, 33, 33])
    >>> bool((sharded.search(vectors[:5], 3)[1] == flat.search(vectors[:5], 3)[1]).all())
    True
    >>> bool((sharded.reconstruct_batch(np.array([0, 99])) == vectors[[0, 99]]).all())
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np


def reconstruct_rows(index: faiss.Index, rows: np.ndarray) -> np.ndarray:
    """``[n, D]`` float32 stored vectors of ``rows`` (IVF indexes get a direct map first)."""
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(index, ShardedIndex):
        return index.reconstruct_batch(rows)
    try:
        return index.reconstruct_batch(rows)
    except RuntimeError:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None:
            raise
        ivf.make_direct_map()  # IVF indexes reconstruct by id only with a direct map
        return index.reconstruct_batch(rows)


class ShardedIndex(faiss.IndexShards):
    """``faiss.IndexShards`` over ``shards`` with successive ids, and reconstruction by row.

    Args:
        shards: indexes of the same dimension and metric; shard ``s`` holds the rows after
            those of shards ``0 .. s - 1``.
        threaded: search the shards in parallel threads.

    IVF shards get their direct map (row -> list entry) here, so that reconstruction never
    modifies an index while it serves.
    """

    shard_list: list[faiss.Index] | None = None  # declared: FAISS refuses unknown attributes
    offsets: np.ndarray | None = None

    def __init__(self, shards: Sequence[faiss.Index], *, threaded: bool = True):
        if not shards:
            raise ValueError("`shards` must hold at least one index. Received: shards=[].")
        super().__init__(shards[0].d, threaded, True)  # successive_ids=True
        self.shard_list = list(shards)
        for shard in self.shard_list:
            ivf = faiss.try_extract_index_ivf(shard)
            if ivf is not None:
                ivf.make_direct_map()  # reconstruction by row, made now (not on a request)
            self.add_shard(shard)
        self.offsets = np.cumsum([0] + [s.ntotal for s in self.shard_list]).astype(np.int64)

    def reconstruct_batch(self, rows: np.ndarray) -> np.ndarray:  # type: ignore[override]
        """``[n, D]`` float32 vectors of catalogue ``rows``, each read from its shard."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if len(rows) and (rows.min() < 0 or rows.max() >= self.ntotal):
            raise ValueError(f"`rows` must lie in [0, {self.ntotal}). Received: {rows.tolist()}.")
        out = np.zeros((len(rows), self.d), np.float32)
        owners = np.searchsorted(self.offsets, rows, side="right") - 1
        for shard in np.unique(owners):
            mask = owners == shard
            local = rows[mask] - self.offsets[shard]
            out[mask] = reconstruct_rows(self.shard_list[shard], local)
        return out

    def reconstruct(self, row: int) -> np.ndarray:  # type: ignore[override]
        """``[D]`` float32 vector of one catalogue row."""
        return self.reconstruct_batch(np.array([row]))[0]


def shard_ranges(num_items: int, num_shards: int) -> list[range]:
    """Successive row ranges of ``numpy.array_split`` sizes (the first ones one row longer)."""
    sizes = [len(part) for part in np.array_split(np.arange(num_items), num_shards)]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return [range(int(starts[s]), int(starts[s + 1])) for s in range(num_shards)]


def split_index(index: faiss.Index, vectors: np.ndarray, num_shards: int) -> list[faiss.Index]:
    """``num_shards`` indexes over successive rows of ``vectors`` (as stored in ``index``).

    Args:
        index: the built index over ``vectors`` (trained: IVF/PQ shards reuse its training).
        vectors: ``[num_items, D]`` float32 vectors exactly as added to ``index`` (normalised
            for cosine).
        num_shards: 1 to ``num_items``.

    Returns:
        The shards, in row order.
    """
    num_items = len(vectors)
    if not 1 <= num_shards <= num_items:
        raise ValueError(
            f"`shards` must be an integer in [1, num_items={num_items}]. "
            f"Received: shards={num_shards}."
        )
    empty = faiss.clone_index(index)
    empty.reset()  # keeps the training (quantizer, codebooks); HNSW graphs are rebuilt per shard
    shards = []
    for rows in shard_ranges(num_items, num_shards):
        shard = faiss.clone_index(empty)
        shard.add(np.ascontiguousarray(vectors[rows.start : rows.stop], np.float32))
        shards.append(shard)
    return shards

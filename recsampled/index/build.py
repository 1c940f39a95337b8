"""FAISS indexes over item embeddings, with search parameters tuned against exact search.

**Scores.** ``metric="dot"``: ``s(q, i) = qᵀvᵢ``, the score a two-tower model is trained with.
``metric="cosine"``: ``s(q, i) = qᵀvᵢ / (‖q‖·‖vᵢ‖)``, computed as the inner product of
L2-normalised vectors (FAISS wiki, "MetricType and distances"). Every index here therefore uses
``METRIC_INNER_PRODUCT``; exact search is ``IndexFlatIP``.

**Recall.** For a query ``q`` with exact top-k rows ``E(q)`` and approximate top-k rows ``A(q)``,
``recall@k = mean_q |A(q) ∩ E(q)| / k`` (the "k-recall@k" intersection measure of the FAISS
benchmarks). It is measured on a sample of real query embeddings.

**Index types** (FAISS ``index_factory`` strings; N items of dimension D;
``nlist = ⌊4·√N⌋``, capped so that every inverted list trains on at least 39 points, as the FAISS
wiki "Guidelines to choose an index" suggests for up to 10^6 vectors):

| type | factory | tuned |
|---|---|---|
| ``flat`` | ``Flat`` | nothing (exact) |
| ``hnsw`` | ``HNSW32,Flat`` (Malkov & Yashunin, 2018) | ``efSearch`` |
| ``ivf`` | ``IVF{nlist},Flat`` | ``nprobe`` |
| ``ivfpq`` | ``IVF{nlist},PQ{D/2}x4fs,RFlat`` | ``nprobe``, ``k_factor_rf`` |

(``ivfpq``: 4-bit fast-scan PQ codes, two dimensions per sub-quantizer, re-ranked exactly.)

``auto`` is ``flat`` below :data:`AUTO_EXACT_MAX_ITEMS` items and ``ivf`` above; if the tuned
index does not reach the target recall, ``auto`` falls back to ``flat`` with a warning. IVF-Flat,
not HNSW, because on 10^6 x 64 clustered embeddings (``benchmarks/index.md``) it builds 4-5x faster
and reaches recall@10 >= 0.95 at many times HNSW32's queries/s (HNSW32 with FAISS's default
``efConstruction=40`` needs ``efSearch=512`` for 0.96); the wiki's guidelines also suggest
``IVF{4√N..16√N},Flat`` up to 10^6 vectors.

**Tuning.** For each value of the secondary parameter (``k_factor_rf``, ivfpq only), the primary
one (``efSearch`` or ``nprobe``) rises along a grid until recall@k reaches the target; of the
configurations that reach it, the one with the most queries/s on the sample (best of 3) wins.
If none does, the one with the highest recall is kept, a warning says so, and the result
records it (:attr:`BuiltIndex.target_reached` is false): never silently worse than asked.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import faiss
import numpy as np

from recsampled._progress import progress
from recsampled._validation import check_positive_int, received

logger = logging.getLogger(__name__)

Metric = Literal["dot", "cosine"]
IndexType = Literal["flat", "hnsw", "ivf", "ivfpq"]
IndexChoice = Literal["flat", "hnsw", "ivf", "ivfpq", "auto"]

METRICS: tuple[str, ...] = ("dot", "cosine")
INDEX_TYPES: tuple[str, ...] = ("flat", "hnsw", "ivf", "ivfpq")
INDEX_CHOICES: tuple[str, ...] = (*INDEX_TYPES, "auto")

#: ``index="auto"`` builds exact search (``flat``) for catalogues smaller than this.
AUTO_EXACT_MAX_ITEMS = 100_000
#: The approximate index ``index="auto"`` builds for larger catalogues.
AUTO_ANN_INDEX: IndexType = "ivf"
DEFAULT_TARGET_RECALL = 0.95
#: recall@RECALL_K is what tuning targets and the manifest records.
RECALL_K = 10
#: At most this many sample queries are used for tuning (a random subset, fixed seed).
MAX_TUNING_QUERIES = 1000
HNSW_M = 32
MIN_POINTS_PER_LIST = 39
TRAIN_POINTS_PER_LIST = 64
EF_SEARCH_GRID: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
K_FACTOR_GRID: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
_ADD_CHUNK = 100_000


class SearchResult(NamedTuple):
    """Top-k search output in index rows.

    Attributes:
        scores: ``[num_queries, k]`` float32 scores, best first (``-inf`` where no row).
        rows: ``[num_queries, k]`` int64 index rows (``-1`` where the index returned fewer).
    """

    scores: np.ndarray
    rows: np.ndarray


@dataclasses.dataclass(frozen=True)
class SearchTrial:
    """One search configuration tried while tuning.

    Attributes:
        params: FAISS search parameters, e.g. ``{"nprobe": 16}``.
        recall: recall@k against exact search on the sample queries.
        queries_per_second: measured on the sample queries with the current FAISS threads.
    """

    params: dict[str, int]
    recall: float
    queries_per_second: float


@dataclasses.dataclass(frozen=True)
class BuiltIndex:
    """A FAISS index over item embeddings and how it was built and tuned.

    Attributes:
        index: the FAISS index (inner product), rows in item order, search parameters applied.
        index_type: ``"flat"``, ``"hnsw"``, ``"ivf"`` or ``"ivfpq"`` (what ``auto`` chose).
        factory: the ``faiss.index_factory`` string.
        metric: ``"dot"`` or ``"cosine"``.
        search_params: the chosen search parameters (empty for ``flat``).
        recall: measured recall@``recall_k`` against exact search (1.0 for ``flat``, exact).
        recall_k: the k of the recall.
        num_queries: number of sample queries the recall was measured on (0 for ``flat``).
        query_source: ``"sample_queries"``, ``"item_embeddings"`` (no real queries were given)
            or ``"exact"`` (``flat``: nothing to measure).
        target_recall: the recall asked for.
        trials: every configuration tried, in order.
        build_seconds: time to train the index and add the items.
        tune_seconds: time to compute exact neighbours and try the configurations.
    """

    index: faiss.Index
    index_type: IndexType
    factory: str
    metric: Metric
    search_params: dict[str, int]
    recall: float
    recall_k: int
    num_queries: int
    query_source: str
    target_recall: float
    trials: tuple[SearchTrial, ...]
    build_seconds: float
    tune_seconds: float

    @property
    def target_reached(self) -> bool:
        """Whether the measured recall is at least the target."""
        return self.recall >= self.target_recall


def check_metric(metric: object) -> Metric:
    """Returns ``metric`` if it is ``"dot"`` or ``"cosine"``, else raises ``ValueError``."""
    if metric not in METRICS:
        raise ValueError(f"`metric` must be one of {METRICS}. {received('metric', metric)}")
    return metric  # type: ignore[return-value]


def check_index_choice(index: object) -> IndexChoice:
    """Returns ``index`` if it is one of :data:`INDEX_CHOICES`, else raises ``ValueError``."""
    if index not in INDEX_CHOICES:
        raise ValueError(f"`index` must be one of {INDEX_CHOICES}. {received('index', index)}")
    return index  # type: ignore[return-value]


def check_target_recall(target_recall: object) -> float:
    """Returns ``target_recall`` as a float in ``(0, 1]``, else raises ``ValueError``."""
    if (
        isinstance(target_recall, bool)
        or not isinstance(target_recall, int | float | np.floating)
        or not 0.0 < float(target_recall) <= 1.0
    ):
        raise ValueError(
            "`target_recall` must be a number in (0, 1]. "
            f"{received('target_recall', target_recall)}"
        )
    return float(target_recall)


def prepare_vectors(
    vectors: object, metric: Metric, *, name: str = "item_embeddings"
) -> np.ndarray:
    """Returns a float32, C-contiguous copy of ``vectors``, L2-normalised for ``"cosine"``.

    Args:
        vectors: ``[n, embedding_dim]`` real numbers.
        metric: ``"dot"`` (kept as is) or ``"cosine"`` (rows scaled to unit norm; zero rows stay
            zero).
        name: the argument name used in error messages.

    Returns:
        ``[n, embedding_dim]`` float32 array, safe to hand to FAISS.

    Raises:
        ValueError: if ``vectors`` is not a 2-D array of finite numbers with at least one row
            and one column.
    """
    metric = check_metric(metric)
    try:
        array = np.asarray(vectors)
    except (TypeError, ValueError) as e:
        raise ValueError(f"`{name}` must be a 2-D float array. {received(name, vectors)}") from e
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"`{name}` must be a 2-D array of shape [n, embedding_dim] with n, embedding_dim > 0. "
            f"Received: {name} with shape {array.shape}."
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"`{name}` must hold real numbers. Received: dtype {array.dtype}.")
    array = np.array(array, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0]
        raise ValueError(
            f"`{name}` must hold finite numbers. Received: {array[tuple(bad)]} at row {bad[0]}, "
            f"column {bad[1]}."
        )
    if metric == "cosine":
        faiss.normalize_L2(array)
    return array


def default_nlist(num_items: int) -> int:
    """``⌊4·√N⌋`` inverted lists, at most ``N / 39`` (so that every list trains on 39 points)."""
    num_items = check_positive_int("num_items", num_items)
    return max(1, min(int(4 * math.sqrt(num_items)), num_items // MIN_POINTS_PER_LIST))


def factory_string(index_type: IndexType, num_items: int, embedding_dim: int) -> str:
    """The ``faiss.index_factory`` string of ``index_type`` for N items of dimension D.

    Example:
        >>> factory_string("ivf", 1_000_000, 64)
        'IVF4000,Flat'
    """
    if index_type not in INDEX_TYPES:
        raise ValueError(
            f"`index_type` must be one of {INDEX_TYPES}. {received('index_type', index_type)}"
        )
    if index_type == "flat":
        return "Flat"
    if index_type == "hnsw":
        return f"HNSW{HNSW_M},Flat"
    nlist = default_nlist(num_items)
    if index_type == "ivf":
        return f"IVF{nlist},Flat"
    # 4-bit fast-scan PQ: two dimensions per sub-quantizer (one if D is odd), re-ranked exactly.
    m = embedding_dim // 2 if embedding_dim % 2 == 0 else embedding_dim
    return f"IVF{nlist},PQ{m}x4fs,RFlat"


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> SearchResult:
    """Exact top-k by inner product (``IndexFlatIP``) of prepared vectors and queries.

    Args:
        vectors: ``[num_items, embedding_dim]`` float32 (normalised already for cosine).
        queries: ``[num_queries, embedding_dim]`` float32 (likewise).
        k: neighbours per query (at most ``num_items`` are returned with a row; the rest ``-1``).

    Returns:
        A :class:`SearchResult` with ``[num_queries, k]`` scores and rows.
    """
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return search(index, queries, k)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> SearchResult:
    """``index.search`` with int64 rows and ``-inf`` scores where the index found no row."""
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), int(k))
    rows = rows.astype(np.int64, copy=False)
    scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32, copy=False)
    return SearchResult(scores=scores, rows=rows)


def recall_at_k(found_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """``Σ_q |found(q) ∩ exact(q)| / Σ_q |exact(q)|`` (``-1`` rows never count).

    With full exact rows this is ``mean_q |found(q) ∩ exact(q)| / k``; where exact search has
    fewer than k rows (a user who has seen nearly every item, served lists), only its rows count.

    Args:
        found_rows: ``[num_queries, k]`` rows returned by the index under test.
        exact_rows: ``[num_queries, k]`` rows of exact search (``-1`` where there is none).

    Returns:
        The recall in ``[0, 1]``.
    """
    found_rows = np.asarray(found_rows)
    exact_rows = np.asarray(exact_rows)
    if found_rows.shape != exact_rows.shape or found_rows.ndim != 2:
        raise ValueError(
            "`found_rows` and `exact_rows` must have the same shape [num_queries, k]. "
            f"Received: shapes {found_rows.shape} and {exact_rows.shape}."
        )
    valid = int((exact_rows >= 0).sum())
    if valid == 0:
        return 1.0
    hits = (found_rows[:, :, None] == exact_rows[:, None, :]).any(axis=2) & (found_rows >= 0)
    return float(hits.sum() / valid)


def set_search_params(index: faiss.Index, params: Mapping[str, int]) -> None:
    """Applies FAISS search parameters (``nprobe``, ``efSearch``, ``k_factor_rf``) to ``index``.

    Raises:
        ValueError: if the index has no such parameter.
    """
    if not params:
        return
    text = ",".join(f"{name}={value}" for name, value in params.items())
    try:
        faiss.ParameterSpace().set_index_parameters(index, text)
    except RuntimeError as e:
        raise ValueError(
            f"Cannot set the search parameters {dict(params)} on a {type(index).__name__}: {e}"
        ) from e


def search_param_names(index: faiss.Index) -> tuple[str, ...]:
    """The tunable search parameters FAISS knows for ``index`` (e.g. ``("nprobe",)``)."""
    space = faiss.ParameterSpace()
    space.initialize(index)
    ranges = space.parameter_ranges
    names = [ranges.at(i).name for i in range(ranges.size())]
    return tuple(n for n in ("efSearch", "nprobe", "k_factor_rf") if n in names)


def create_index(
    vectors: np.ndarray,
    factory: str,
    *,
    seed: int = 0,
) -> faiss.Index:
    """Builds ``faiss.index_factory(D, factory, METRIC_INNER_PRODUCT)``, trains it, adds rows.

    Training uses a random sample of ``64·nlist`` rows for IVF indexes (FAISS warns under 39 per
    list, and k-means gains little beyond a few hundred). Rows are added in chunks so that a
    progress line can follow large catalogues.

    Args:
        vectors: ``[num_items, embedding_dim]`` prepared float32 vectors (see
            :func:`prepare_vectors`).
        factory: a FAISS factory string such as ``"HNSW32,Flat"``.
        seed: seeds the training sample.

    Returns:
        The index, with row ``i`` holding ``vectors[i]``.

    Raises:
        ValueError: if FAISS rejects the factory string or the training.
    """
    num_items, dim = vectors.shape
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(
            f"`factory` must be a FAISS index_factory string valid for dimension {dim}. "
            f"Received: factory={factory!r}. FAISS said: {e}"
        ) from e
    if not index.is_trained:
        ivf = faiss.try_extract_index_ivf(index)
        train_size = num_items if ivf is None else TRAIN_POINTS_PER_LIST * ivf.nlist
        train = vectors
        if train_size < num_items:
            rows = np.random.default_rng(seed).choice(num_items, train_size, replace=False)
            train = vectors[np.sort(rows)]
        logger.info("training %s on %d vectors", factory, len(train))
        try:
            index.train(train)
        except RuntimeError as e:
            raise ValueError(f"FAISS could not train {factory!r} on {len(train)} rows: {e}") from e
    with progress(num_items, f"adding to {factory}", unit="vectors") as bar:
        for start in range(0, num_items, _ADD_CHUNK):
            chunk = vectors[start : start + _ADD_CHUNK]
            index.add(chunk)
            bar.update(len(chunk))
    return index


#: ``searcher(index, queries, k)``: how tuning searches (plain :func:`search`, or served lists).
Searcher = Callable[[faiss.Index, np.ndarray, int], SearchResult]


def _time_search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    repeats: int = 1,
    searcher: Searcher | None = None,
) -> tuple[SearchResult, float]:
    """Searches ``repeats`` times; returns the result and the best queries/s (least noisy)."""
    searcher = searcher or search
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = searcher(index, queries, k)
        best = min(best, time.perf_counter() - start)
    return result, len(queries) / max(best, 1e-9)


def _primary_grid(index: faiss.Index, name: str) -> tuple[int, ...]:
    if name == "efSearch":
        return EF_SEARCH_GRID
    nlist = faiss.extract_index_ivf(index).nlist
    grid = [2**i for i in range(int(math.log2(nlist)) + 1)]
    return tuple(grid if grid[-1] == nlist else [*grid, nlist])


def tune_search_params(
    index: faiss.Index,
    queries: np.ndarray,
    exact_rows: np.ndarray,
    *,
    target_recall: float = DEFAULT_TARGET_RECALL,
    searcher: Searcher | None = None,
) -> tuple[dict[str, int], float, tuple[SearchTrial, ...]]:
    """Finds the fastest search parameters whose recall@k reaches ``target_recall``.

    The primary parameter (``efSearch`` or ``nprobe``) rises along its grid until the target is
    reached. With a secondary parameter (``k_factor_rf``: how many PQ candidates per result are
    re-ranked exactly), each of its values gets such a sweep, cut short when recall stops
    improving (the re-ranking depth, not the probes, limits it) or when the primary value exceeds
    that of a configuration already at the target (both parameters only add work). The
    configurations at the target are timed again (best of 3) and the fastest wins.

    Args:
        index: an approximate index (it keeps the chosen parameters on return).
        queries: ``[num_queries, embedding_dim]`` prepared float32 queries.
        exact_rows: ``[num_queries, k]`` exact top-k rows of the queries (of ``searcher`` on an
            exact index).
        target_recall: the recall@k to reach.
        searcher: how to search (default :func:`search`); ``recsampled.index.served.ServedSearch``
            measures the lists served with seen items left out.

    Returns:
        ``(params, recall, trials)``: the chosen parameters (the highest-recall ones if none
        reach the target), their recall, and every trial in order.
    """
    k = exact_rows.shape[1]
    names = search_param_names(index)
    primary = "efSearch" if "efSearch" in names else "nprobe" if "nprobe" in names else None
    if primary is None:  # nothing to tune: an exhaustive index
        result, qps = _time_search(index, queries, k, searcher=searcher)
        recall = recall_at_k(result.rows, exact_rows)
        return {}, recall, (SearchTrial({}, recall, qps),)
    secondaries = K_FACTOR_GRID if "k_factor_rf" in names else (None,)
    trials: list[SearchTrial] = []
    reached: list[SearchTrial] = []
    for secondary in secondaries:
        history: list[float] = []
        for value in _primary_grid(index, primary):
            if reached and value > min(t.params[primary] for t in reached):
                break
            params = {primary: int(value)}
            if secondary is not None:
                params["k_factor_rf"] = int(secondary)
            set_search_params(index, params)
            result, qps = _time_search(index, queries, k, searcher=searcher)
            trial = SearchTrial(params, recall_at_k(result.rows, exact_rows), qps)
            trials.append(trial)
            history.append(trial.recall)
            logger.info("  %s: recall@%d=%.4f, %.0f queries/s", params, k, trial.recall, qps)
            if trial.recall >= target_recall:
                reached.append(trial)
                break
            if secondary is not None and len(history) >= 3 and history[-1] <= history[-3] + 0.005:
                break  # a plateau: more probes will not help this re-ranking depth
    if reached:
        timed = []
        for trial in reached:
            set_search_params(index, trial.params)
            _, qps = _time_search(index, queries, k, repeats=3, searcher=searcher)
            timed.append((qps, trial))
        best = max(timed, key=lambda pair: pair[0])[1]
    else:
        best = max(trials, key=lambda t: (t.recall, t.queries_per_second))
    set_search_params(index, best.params)
    return dict(best.params), best.recall, tuple(trials)


def _tuning_queries(
    vectors: np.ndarray, sample_queries: object | None, metric: Metric, seed: int
) -> tuple[np.ndarray, str]:
    rng = np.random.default_rng(seed)
    if sample_queries is None:
        warnings.warn(
            "No `sample_queries` were given, so ANN recall is measured with item embeddings as "
            "queries, which may not resemble real queries. Pass query embeddings of real users.",
            stacklevel=3,
        )
        size = min(MAX_TUNING_QUERIES, len(vectors))
        return vectors[np.sort(rng.choice(len(vectors), size, replace=False))], "item_embeddings"
    queries = prepare_vectors(sample_queries, metric, name="sample_queries")
    if queries.shape[1] != vectors.shape[1]:
        raise ValueError(
            "`sample_queries` must have the embedding dimension of `item_embeddings` "
            f"({vectors.shape[1]}). Received: sample_queries with shape {queries.shape}."
        )
    if len(queries) > MAX_TUNING_QUERIES:
        queries = queries[np.sort(rng.choice(len(queries), MAX_TUNING_QUERIES, replace=False))]
    return queries, "sample_queries"


def _index_type(index: IndexChoice, num_items: int, factory: str | None) -> IndexType:
    """The index type ``index`` stands for (``auto``: by catalogue size)."""
    if factory is not None and index == "auto":
        raise ValueError(
            "`factory` needs an explicit `index` type (flat, hnsw, ivf or ivfpq), not 'auto'. "
            f"Received: factory={factory!r}, index='auto'."
        )
    if index != "auto":
        return index
    index_type: IndexType = "flat" if num_items < AUTO_EXACT_MAX_ITEMS else AUTO_ANN_INDEX
    logger.info("index=auto: %d items -> %s", num_items, index_type)
    return index_type


def _measure(
    index: faiss.Index,
    queries: np.ndarray,
    exact_rows: np.ndarray,
    *,
    target_recall: float,
    search_params: Mapping[str, int] | None,
    searcher: Searcher | None,
) -> tuple[dict[str, int], float, tuple[SearchTrial, ...]]:
    """Tunes the search parameters, or measures the recall of the given ones."""
    if search_params is None:
        return tune_search_params(
            index, queries, exact_rows, target_recall=target_recall, searcher=searcher
        )
    set_search_params(index, search_params)
    result, qps = _time_search(index, queries, exact_rows.shape[1], searcher=searcher)
    recall = recall_at_k(result.rows, exact_rows)
    return dict(search_params), recall, (SearchTrial(dict(search_params), recall, qps),)


def _below_target(result: BuiltIndex, *, requested: IndexChoice, vectors: np.ndarray) -> BuiltIndex:
    """``auto``: exact search instead, with a warning; otherwise the result, with a warning."""
    k, recall, params = result.recall_k, result.recall, result.search_params
    if requested == "auto":
        warnings.warn(
            f"index='auto': {result.factory} reached recall@{k}={recall:.4f} < target "
            f"{result.target_recall} at best ({params}); building exact search (flat) instead.",
            stacklevel=3,
        )
        exact = create_index(vectors, "Flat")  # prepared vectors: normalised for cosine
        return dataclasses.replace(
            result, index=exact, index_type="flat", factory="Flat", search_params={},
            recall=1.0, num_queries=0, query_source="exact",
        )  # fmt: skip
    warnings.warn(
        f"index={requested!r}: {result.factory} reached recall@{k}={recall:.4f} < target "
        f"{result.target_recall} at best ({params}); the index keeps these parameters and "
        "records the measured recall. Use index='flat' for exact search, or a lower "
        "`target_recall`.",
        stacklevel=3,
    )
    return result


def build_index(
    item_embeddings: object,
    *,
    index: IndexChoice = "auto",
    metric: Metric = "dot",
    sample_queries: object | None = None,
    target_recall: float = DEFAULT_TARGET_RECALL,
    recall_k: int = RECALL_K,
    factory: str | None = None,
    search_params: Mapping[str, int] | None = None,
    seed: int = 0,
    searcher: Searcher | None = None,
) -> BuiltIndex:
    """Builds a FAISS index over item embeddings and tunes it to a target recall@k.

    Args:
        item_embeddings: ``[num_items, embedding_dim]`` float item embeddings, row ``i`` the item
            of index row ``i``.
        index: ``"flat"`` (exact), ``"hnsw"``, ``"ivf"``, ``"ivfpq"`` or ``"auto"`` (flat below
            :data:`AUTO_EXACT_MAX_ITEMS` items, else IVF-Flat, falling back to flat when the target
            is not reached).
        metric: ``"dot"`` or ``"cosine"`` (the score the model was trained with).
        sample_queries: ``[num_queries, embedding_dim]`` real query embeddings to measure and tune
            recall on (at most :data:`MAX_TUNING_QUERIES` are used); if ``None``, item embeddings
            stand in, with a warning.
        target_recall: recall@``recall_k`` to reach against exact search, in ``(0, 1]``.
        recall_k: the k of the recall.
        factory: overrides the FAISS factory string of ``index`` (not with ``"auto"``).
        search_params: fixed search parameters (e.g. ``{"nprobe": 32}``): skips tuning but
            still measures the recall.
        seed: seeds the training and query samples.
        searcher: how recall is measured: ``searcher(index, queries, k)`` on the index under test
            against the same call on exact search (default :func:`search`: plain top-k).
            ``export_artifact`` passes a :class:`recsampled.index.served.ServedSearch` of the
            sample users' seen rows, so that the recall is that of the served lists; it needs
            ``sample_queries`` in the order of its rows, at most :data:`MAX_TUNING_QUERIES`.

    Returns:
        A :class:`BuiltIndex`.

    Raises:
        ValueError: on bad arguments or if FAISS rejects the factory string.

    Example:
        >>> items = np.random.default_rng(0).normal(size=(500, 8)).astype("float32")
        >>> built = build_index(items, index="ivf", metric="cosine", sample_queries=items[:50])
        >>> built.target_reached, built.search_params  # doctest: +SKIP
        (True, {'nprobe': 2})
    """
    index = check_index_choice(index)
    metric = check_metric(metric)
    target_recall = check_target_recall(target_recall)
    recall_k = check_positive_int("recall_k", recall_k)
    vectors = prepare_vectors(item_embeddings, metric)
    num_items, dim = vectors.shape
    index_type = _index_type(index, num_items, factory)
    factory = factory or factory_string(index_type, num_items, dim)
    start = time.perf_counter()
    built = create_index(vectors, factory, seed=seed)
    build_seconds = time.perf_counter() - start
    common = dict(
        index=built, index_type=index_type, factory=factory, metric=metric, recall_k=recall_k,
        target_recall=target_recall, build_seconds=build_seconds,
    )  # fmt: skip
    if index_type == "flat" and factory == "Flat":
        return BuiltIndex(
            **common, search_params={}, recall=1.0, num_queries=0, query_source="exact",
            trials=(), tune_seconds=0.0,
        )  # fmt: skip
    start = time.perf_counter()
    if searcher is not None and (
        sample_queries is None or len(np.asarray(sample_queries)) > MAX_TUNING_QUERIES
    ):
        raise ValueError(
            f"`searcher` needs `sample_queries` (at most {MAX_TUNING_QUERIES}, in its order). "
            f"Received: sample_queries={'None' if sample_queries is None else 'too many'}."
        )
    queries, source = _tuning_queries(vectors, sample_queries, metric, seed)
    k = min(recall_k, num_items)
    if searcher is None:
        exact_rows = exact_search(vectors, queries, k).rows
    else:
        exact = faiss.IndexFlatIP(dim)
        exact.add(vectors)
        exact_rows = searcher(exact, queries, k).rows
    logger.info("tuning %s on %d queries to recall@%d >= %s", factory, len(queries), k,
                target_recall)  # fmt: skip
    params, recall, trials = _measure(
        built, queries, exact_rows, target_recall=target_recall, search_params=search_params,
        searcher=searcher,
    )  # fmt: skip
    result = BuiltIndex(
        **common, search_params=params, recall=recall, num_queries=len(queries),
        query_source=source, trials=trials, tune_seconds=time.perf_counter() - start,
    )  # fmt: skip
    if result.target_reached:
        return result
    return _below_target(result, requested=index, vectors=vectors)


def describe_params(params: Mapping[str, Any]) -> str:
    """``{"nprobe": 8, "k_factor_rf": 4}`` -> ``"nprobe=8,k_factor_rf=4"`` (FAISS's syntax)."""
    return ",".join(f"{k}={v}" for k, v in params.items())


__all__ = [
    "AUTO_ANN_INDEX",
    "AUTO_EXACT_MAX_ITEMS",
    "BuiltIndex",
    "DEFAULT_TARGET_RECALL",
    "IndexChoice",
    "IndexType",
    "Metric",
    "RECALL_K",
    "SearchResult",
    "SearchTrial",
    "build_index",
    "create_index",
    "default_nlist",
    "exact_search",
    "factory_string",
    "prepare_vectors",
    "recall_at_k",
    "search",
    "set_search_params",
    "tune_search_params",
]

"""Full-catalogue ranking metrics: every test user against every item, training items removed.

The protocol of DESIGN.md (the LightGCN and KGAT evaluation code; Krichene & Rendle, KDD 2020,
"On Sampled Metrics for Item Recommendation", for why never against a few sampled negatives).
For a test user ``u`` with held-out items ``T_u`` and training items ``S_u``, rank all items
``i ∉ S_u`` by score, highest first; equal scores rank the smaller item index first (items are
numbered by decreasing popularity, so ties go to the more popular item). With ``R_u`` the top
``K`` of that ranking and ``rank_u(i)`` the 1-based position of ``i``::

    Recall@K   = |R_u ∩ T_u| / |T_u|
    HitRate@K  = 1 if R_u ∩ T_u ≠ ∅ else 0
    NDCG@K     = DCG / IDCG,  DCG = Σ_{i ∈ R_u ∩ T_u} 1 / log2(rank_u(i) + 1),
                 IDCG = Σ_{r=1}^{min(|T_u|, K)} 1 / log2(r + 1)
    MRR        = 1 / min_{i ∈ T_u} rank_u(i)        (over the whole ranking, no cut-off)
    Coverage@K = |∪_u R_u| / num_items              (over the users evaluated)

each averaged over the test users (a user counts once, whatever ``|T_u|``). A test item that is
also a training item of the user (possible with a split read from two files) is removed from the
ranking like every training item: it stays in ``T_u`` and can never be hit.

Scores come from a function of a batch of user ids (:func:`embedding_scores`: ``Q[u]·Cᵀ``;
:func:`popularity_scores`: training counts), so that a batch of ``[batch, num_items]`` scores is
the largest array held. Per-user values are computed row by row and averaged once at the end, so
the result does not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from recsampled._validation import check_positive_int, received
from recsampled.data.interactions import user_item_matrix

if TYPE_CHECKING:
    from recsampled.data.interactions import Interactions

ScoreFunction = Callable[[np.ndarray], np.ndarray]
"""Maps ``[batch]`` user indices to ``[batch, num_items]`` scores (higher is better)."""

MAX_SCORES_PER_BATCH = 2**25
"""A batch holds at most this many scores (128 MiB of float32)."""


@dataclass(frozen=True)
class RankingMetrics:
    """Full-catalogue metrics averaged over the test users evaluated.

    Attributes:
        ks: the cut-offs.
        recall: K -> mean Recall@K.
        ndcg: K -> mean NDCG@K.
        hit_rate: K -> share of users with a test item in their top K.
        coverage: K -> share of the catalogue in at least one user's top K.
        mrr: mean reciprocal rank of each user's best-ranked test item.
        num_users: test users evaluated.
        num_items: items ranked (the catalogue).
    """

    ks: tuple[int, ...]
    recall: dict[int, float]
    ndcg: dict[int, float]
    hit_rate: dict[int, float]
    coverage: dict[int, float]
    mrr: float
    num_users: int
    num_items: int

    def as_dict(self) -> dict[str, float | int]:
        """Flat ``{"recall@10": ..., "ndcg@10": ..., ..., "mrr": ..., "num_users": ...}``."""
        result: dict[str, float | int] = {}
        for name in ("recall", "ndcg", "hit_rate", "coverage"):
            result.update({f"{name}@{k}": v for k, v in getattr(self, name).items()})
        result.update(mrr=self.mrr, num_users=self.num_users, num_items=self.num_items)
        return result


def _sizes(matrix: sparse.csr_matrix, users: np.ndarray) -> np.ndarray:
    """``[len(users)]`` stored entries of each user's row."""
    return matrix.indptr[users + 1] - matrix.indptr[users]


def _pairs(matrix: sparse.csr_matrix, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(row, item)`` of every entry of the rows ``users``; ``row`` indexes ``users``."""
    sizes = _sizes(matrix, users)
    rows = np.repeat(np.arange(users.size), sizes)
    starts = np.repeat(matrix.indptr[users], sizes)
    offsets = np.arange(rows.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return rows, matrix.indices[starts + offsets].astype(np.int64)


def _user_items(
    log: Interactions | sparse.spmatrix | None,
    user_ids: np.ndarray | None,
    item_ids: np.ndarray | None,
    num_users: int,
    num_items: int,
    name: str,
) -> sparse.csr_matrix:
    """The ``[num_users, num_items]`` CSR of ``log`` (interactions or a sparse matrix), or of
    the arrays ``user_ids``/``item_ids``."""
    if log is None:
        if user_ids is None or item_ids is None:
            raise ValueError(
                f"`{name}` (interactions) or `{name}_user_ids` and `{name}_item_ids` are "
                f"required. Received: {name}=None."
            )
        return user_item_matrix(user_ids, item_ids, num_users, num_items)
    matrix = log.tocsr() if sparse.issparse(log) else log.user_items(num_users)
    if matrix.shape != (num_users, num_items):
        raise ValueError(
            f"`{name}` must cover [num_users={num_users}, num_items={num_items}]. "
            f"Received: {name} of shape {matrix.shape}."
        )
    return matrix


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """``[batch, k]`` indices of the ``k`` highest scores of each row, best first.

    Equal scores rank the smaller index first, so the result is unique (argpartition alone
    picks an arbitrary subset of the items tied at the boundary).

    Args:
        scores: ``[batch, num_items]`` scores; ``-inf`` marks removed items.
        k: at most ``num_items``.

    Example:
        >>> top_k(np.array([[0.5, 2.0, 0.5, 1.0]]), 3)
        array([[1, 3, 0]])
    """
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(scores, part, axis=1)
    threshold = values.min(axis=1, keepdims=True)
    # Rows whose tied items at the threshold are more than the places left: choose by index.
    needed = k - (scores > threshold).sum(axis=1)
    tied = (scores == threshold).sum(axis=1)
    for row in np.flatnonzero(tied > needed):
        s, t = scores[row], threshold[row, 0]
        above = np.flatnonzero(s > t)
        part[row] = np.concatenate([above, np.flatnonzero(s == t)[: k - above.size]])
    values = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -values), axis=1)
    return np.take_along_axis(part, order, axis=1)


def ranking_metrics(
    score_fn: ScoreFunction,
    train: Interactions | sparse.spmatrix | None = None,
    test: Interactions | sparse.spmatrix | None = None,
    *,
    num_users: int | None = None,
    num_items: int | None = None,
    train_user_ids: np.ndarray | None = None,
    train_item_ids: np.ndarray | None = None,
    test_user_ids: np.ndarray | None = None,
    test_item_ids: np.ndarray | None = None,
    ks: Sequence[int] = (10, 20, 50),
    batch_size: int = 256,
    users: np.ndarray | None = None,
) -> RankingMetrics:
    """Ranks the whole catalogue for every test user and averages the metrics (module docstring).

    Args:
        score_fn: ``[batch]`` user indices -> ``[batch, num_items]`` scores.
        train: the training interactions (their items are removed from each ranking), or their
            ``[num_users, num_items]`` sparse matrix (:meth:`Interactions.user_items`).
        test: the test interactions (the held-out items), or their sparse matrix.
        num_users: users lie in ``[0, num_users)`` (default: ``train``'s vocabulary).
        num_items: items lie in ``[0, num_items)`` (default: ``train``'s vocabulary).
        train_user_ids: ``[n_train]`` users of the training interactions, instead of ``train``.
        train_item_ids: ``[n_train]`` their items.
        test_user_ids: ``[n_test]`` users of the test interactions, instead of ``test``.
        test_item_ids: ``[n_test]`` their items.
        ks: cut-offs K.
        batch_size: users per batch (capped so that a batch holds at most
            :data:`MAX_SCORES_PER_BATCH` scores).
        users: the test users to evaluate (default: every user with a test item).

    Returns:
        The :class:`RankingMetrics`.

    Raises:
        ValueError: for bad arguments, or if ``score_fn`` returns the wrong shape or NaN.
    """
    num_users = check_positive_int(
        "num_users", num_users if num_users is not None else getattr(train, "num_users", None)
    )
    num_items = check_positive_int(
        "num_items", num_items if num_items is not None else getattr(train, "num_items", None)
    )
    batch_size = check_positive_int("batch_size", batch_size)
    ks = tuple(check_positive_int("ks", k) for k in ks)
    if not ks:
        raise ValueError(f"`ks` must hold at least one cut-off. {received('ks', ks)}")
    k_max = min(max(ks), num_items)
    seen = _user_items(train, train_user_ids, train_item_ids, num_users, num_items, "train")
    held_out = _user_items(test, test_user_ids, test_item_ids, num_users, num_items, "test")
    all_test_users = np.flatnonzero(np.diff(held_out.indptr) > 0)
    users = all_test_users if users is None else np.asarray(users, np.int64)
    if users.size == 0 or np.any(_sizes(held_out, users) == 0):
        raise ValueError(
            "`users` must be a non-empty set of users with test items. "
            f"Received: {users.size} users, "
            f"{int(np.sum(_sizes(held_out, users) == 0))} without any."
        )
    batch_size = max(1, min(batch_size, MAX_SCORES_PER_BATCH // num_items))
    discount = 1.0 / np.log2(np.arange(2, k_max + 2))
    ideal = np.cumsum(discount)

    per_user = {name: {k: [] for k in ks} for name in ("recall", "ndcg", "hit_rate")}
    reciprocal_ranks = []
    covered = {k: np.zeros(num_items, bool) for k in ks}
    for start in range(0, users.size, batch_size):
        batch = users[start : start + batch_size]
        scores = _unseen_scores(score_fn, batch, seen, num_items)

        top = top_k(scores, k_max)
        valid = np.isfinite(np.take_along_axis(scores, top, axis=1))  # not a removed item
        test_rows, test_items = _pairs(held_out, batch)
        hits = _hits(top, test_rows, test_items, num_items) & valid
        num_test = _sizes(held_out, batch)
        for k in ks:
            kk = min(k, k_max)
            found = hits[:, :kk]
            per_user["recall"][k].append(found.sum(axis=1) / num_test)
            per_user["hit_rate"][k].append(found.any(axis=1).astype(np.float64))
            dcg = (found * discount[:kk]).sum(axis=1)
            per_user["ndcg"][k].append(dcg / ideal[np.minimum(num_test, kk) - 1])
            covered[k][top[:, :kk][valid[:, :kk]]] = True
        reciprocal_ranks.append(_reciprocal_ranks(scores, test_rows, test_items))

    def mean(parts: list[np.ndarray]) -> float:
        return float(np.mean(np.concatenate(parts)))

    return RankingMetrics(
        ks=ks,
        recall={k: mean(v) for k, v in per_user["recall"].items()},
        ndcg={k: mean(v) for k, v in per_user["ndcg"].items()},
        hit_rate={k: mean(v) for k, v in per_user["hit_rate"].items()},
        coverage={k: float(c.mean()) for k, c in covered.items()},
        mrr=mean(reciprocal_ranks),
        num_users=int(users.size),
        num_items=num_items,
    )


def _unseen_scores(
    score_fn: ScoreFunction, batch: np.ndarray, seen: sparse.csr_matrix, num_items: int
) -> np.ndarray:
    """``[batch, num_items]`` checked scores of ``batch``, ``-inf`` on each user's seen items."""
    scores = np.array(score_fn(batch), copy=True)
    if scores.shape != (batch.size, num_items):
        raise ValueError(
            f"`score_fn` must return [batch, num_items={num_items}] scores. "
            f"Received: shape {scores.shape} for a batch of {batch.size} users."
        )
    if np.isnan(scores).any():
        raise ValueError("`score_fn` returned NaN scores; the model diverged or is broken.")
    scores = scores.astype(np.result_type(scores.dtype, np.float32), copy=False)
    rows, items = _pairs(seen, batch)
    scores[rows, items] = -np.inf
    return scores


def _hits(
    top: np.ndarray, test_rows: np.ndarray, test_items: np.ndarray, num_items: int
) -> np.ndarray:
    """``[batch, k]`` whether each recommended item is a test item of the row's user."""
    relevant = np.zeros((top.shape[0], num_items), bool)  # at most MAX_SCORES_PER_BATCH
    relevant[test_rows, test_items] = True
    return np.take_along_axis(relevant, top, axis=1)


def _reciprocal_ranks(
    scores: np.ndarray, test_rows: np.ndarray, test_items: np.ndarray
) -> np.ndarray:
    """``[batch]`` 1 / rank of each row's best-ranked test item (0 if all were removed)."""
    batch, num_items = scores.shape
    test_scores = scores[test_rows, test_items]
    best = np.full(batch, -np.inf, scores.dtype)
    np.maximum.at(best, test_rows, test_scores)
    # Among test items scoring `best`, the smallest index ranks first.
    first = np.full(batch, num_items, np.int64)
    at_best = test_scores == best[test_rows]
    np.minimum.at(first, test_rows[at_best], test_items[at_best])
    above = (scores > best[:, None]).sum(axis=1)
    tied_before = ((scores == best[:, None]) & (np.arange(num_items) < first[:, None])).sum(axis=1)
    rank = 1 + above + tied_before
    return np.where(np.isfinite(best), 1.0 / rank, 0.0)


def embedding_scores(
    query_embeddings: np.ndarray, candidate_embeddings: np.ndarray
) -> ScoreFunction:
    """Scores ``Q[users]·Cᵀ`` of a two-tower model.

    Args:
        query_embeddings: ``[num_users, embedding_dim]`` one row per user index.
        candidate_embeddings: ``[num_items, embedding_dim]`` one row per item index.

    Example:
        >>> score = embedding_scores(np.eye(2), np.array([[1.0, 0.0], [0.5, 0.5]]))
        >>> score(np.array([1]))
        array([[0. , 0.5]])
    """
    query_embeddings = np.asarray(query_embeddings)
    candidates_t = np.ascontiguousarray(np.asarray(candidate_embeddings).T)
    if query_embeddings.ndim != 2 or query_embeddings.shape[1] != candidates_t.shape[0]:
        raise ValueError(
            "`query_embeddings` and `candidate_embeddings` must be [num_users, D] and "
            f"[num_items, D] with the same D. Received: shapes {query_embeddings.shape} and "
            f"{candidates_t.T.shape}."
        )

    def score(users: np.ndarray) -> np.ndarray:
        return query_embeddings[users] @ candidates_t

    return score


def popularity_scores(item_counts: np.ndarray) -> ScoreFunction:
    """Scores every user alike by ``item_counts`` (the popularity baseline).

    Args:
        item_counts: ``[num_items]`` training interactions per item.
    """
    counts = np.asarray(item_counts, np.float64)

    def score(users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(counts, (users.size, counts.size))

    return score


def retrieval_scores(
    retrieve: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], num_items: int
) -> ScoreFunction:
    """Scores of a top-k retrieval (e.g. an approximate index): what it returned, else ``-inf``.

    ``retrieve(users)`` returns ``(rows [batch, depth], scores [batch, depth])``, row ``-1``
    where it found nothing. Items it did not return score ``-inf``, like removed items, so
    :func:`ranking_metrics` never ranks them: Recall, NDCG, HitRate and coverage at ``K <=
    depth`` are those of the retrieved list, and MRR counts a test item only if it was
    retrieved (reciprocal rank 0 beyond ``depth``).

    Example:
        >>> score = retrieval_scores(lambda u: (np.array([[2, -1]]), np.array([[0.9, 0.0]])), 3)
        >>> score(np.array([0]))
        array([[-inf, -inf,  0.9]], dtype=float32)
    """
    num_items = check_positive_int("num_items", num_items)

    def score(users: np.ndarray) -> np.ndarray:
        rows, values = retrieve(users)
        rows, values = np.asarray(rows), np.asarray(values, np.float32)
        if rows.ndim != 2 or rows.shape[0] != users.size or values.shape != rows.shape:
            raise ValueError(
                f"`retrieve` must return [batch={users.size}, depth] rows and scores. "
                f"Received: shapes {rows.shape} and {values.shape}."
            )
        out = np.full((users.size, num_items), -np.inf, np.float32)
        found = rows >= 0
        out[np.nonzero(found)[0], rows[found]] = values[found]
        return out

    return score


def sample_users(test_user_ids: np.ndarray, max_users: int | None, seed: int = 0) -> np.ndarray:
    """The distinct test users, or a seeded random subset of ``max_users`` of them (sorted)."""
    users = np.unique(test_user_ids)
    if max_users is None or users.size <= max_users:
        return users
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(users, size=max_users, replace=False))


def evaluate(
    scorers: Mapping[str, ScoreFunction],
    train: Interactions,
    test: Interactions,
    *,
    ks: Sequence[int] = (10, 20, 50),
    batch_size: int = 256,
    max_users: int | None = None,
    seed: int = 0,
    popularity: bool = True,
    ials: Mapping[str, object] | None = None,
    num_users: int | None = None,
    num_items: int | None = None,
) -> dict[str, RankingMetrics]:
    """The evaluation protocol in one call: every scorer, and popularity, on the same users.

    Training (``metrics.json``), ``recsampled evaluate`` and the benchmarks all call this, so
    that their numbers are comparable: the same test users (the seeded sample of
    :func:`sample_users`), the same removal of training items, the same cut-offs.

    Args:
        scorers: name -> score function (e.g. ``{"model": embedding_scores(Q, C)}``).
        train: the training interactions (removed from each ranking; popularity counts).
        test: the test interactions.
        ks: cut-offs K.
        batch_size: users per batch.
        max_users: evaluate a seeded sample of this many test users (None: all of them).
        seed: seeds the sample.
        popularity: add the popularity baseline under ``"popularity"`` (last).
        ials: add the iALS baseline under ``"ials"`` (before popularity), fitted on ``train``
            with these options of :func:`recsampled.evaluation.baselines.fit_ials` (e.g.
            ``{"factors": 64, "iterations": 15, "seed": 0}``); None: no iALS.
        num_users: users of the score functions (default: ``train``'s vocabulary).
        num_items: items (default: ``train``'s vocabulary).

    Returns:
        name -> :class:`RankingMetrics`, in the order of ``scorers`` (then ``"ials"``, then
        ``"popularity"``).

    Example:
        >>> from recsampled.data import synthetic, random_holdout
        >>> log = synthetic.generate(num_users=60, num_items=40, num_interactions=900,
        ...                          seed=0).to_interactions()
        >>> split = random_holdout(log, test_fraction=0.2, seed=0)
        >>> rng = np.random.default_rng(0)
        >>> scores = embedding_scores(rng.normal(size=(60, 4)), rng.normal(size=(40, 4)))
        >>> result = evaluate({"model": scores}, split.train, split.test, ks=(10,))
        >>> list(result), result["model"].num_users == result["popularity"].num_users
        (['model', 'popularity'], True)
    """
    num_users = train.num_users if num_users is None else num_users
    num_items = train.num_items if num_items is None else num_items
    seen, held_out = train.user_items(num_users), test.user_items(num_users)
    users = sample_users(test.user_ids, max_users, seed)
    scorers = dict(scorers)
    if ials is not None:
        from recsampled.evaluation.baselines import ials_scores  # noqa: PLC0415 - a cycle

        scorers["ials"] = ials_scores(train, num_users=num_users, **ials)
    if popularity:
        scorers["popularity"] = popularity_scores(train.item_counts)
    return {
        name: ranking_metrics(
            score,
            seen,
            held_out,
            num_users=num_users,
            num_items=num_items,
            ks=ks,
            batch_size=batch_size,
            users=users,
        )  # fmt: skip
        for name, score in scorers.items()
    }

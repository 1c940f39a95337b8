"""Evaluation: full-catalogue ranking metrics (never against sampled negatives).

- :func:`evaluate`: the protocol in one call: score functions and the popularity baseline on the
  same (sampled) test users; what training, ``recsampled evaluate`` and the benchmarks use.
- :func:`ials_scores` / :func:`fit_ials` (:mod:`recsampled.evaluation.baselines`): the iALS
  baseline (``implicit``'s CPU ALS) that ``evaluate(ials=...)`` puts beside popularity.
- :func:`ranking_metrics`: Recall@K, NDCG@K, HitRate@K, coverage@K and MRR of any score
  function over the whole catalogue, training items removed (:mod:`recsampled.evaluation.metrics`).
- :func:`embedding_scores` (two-tower ``Q·Cᵀ``), :func:`popularity_scores` (the baseline) and
  :func:`retrieval_scores` (the top-k list of an index: the rest is never ranked).
"""

from recsampled.evaluation.baselines import BASELINES, IALSFactors, fit_ials, ials_scores
from recsampled.evaluation.metrics import (
    RankingMetrics,
    embedding_scores,
    evaluate,
    popularity_scores,
    ranking_metrics,
    retrieval_scores,
    sample_users,
    top_k,
)

__all__ = [
    "BASELINES",
    "IALSFactors",
    "RankingMetrics",
    "embedding_scores",
    "evaluate",
    "fit_ials",
    "ials_scores",
    "popularity_scores",
    "ranking_metrics",
    "retrieval_scores",
    "sample_users",
    "top_k",
]

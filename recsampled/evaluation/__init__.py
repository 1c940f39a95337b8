"""Evaluation: full-catalogue ranking metrics (never against sampled negatives).

- :func:`evaluate`: the protocol in one call: score functions and the popularity baseline on the
  same (sampled) test users; what training, ``recsampled evaluate`` and the benchmarks use.
- :func:`ranking_metrics`: Recall@K, NDCG@K, HitRate@K, coverage@K and MRR of any score
  function over the whole catalogue, training items removed (:mod:`recsampled.evaluation.metrics`).
- :func:`embedding_scores` (two-tower ``Q·Cᵀ``), :func:`popularity_scores` (the baseline) and
  :func:`retrieval_scores` (the top-k list of an index: the rest is never ranked).
"""

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
    "RankingMetrics",
    "embedding_scores",
    "evaluate",
    "popularity_scores",
    "ranking_metrics",
    "retrieval_scores",
    "sample_users",
    "top_k",
]

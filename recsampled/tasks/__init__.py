"""Retrieval tasks: ``tfrs.tasks.Retrieval``'s contract plus frequency logQ and mixed negatives,
and the top-k metric over a candidate index (``recsampled.tasks.topk``)."""

# ruff: noqa: E402 (TF_USE_LEGACY_KERAS must be set before the imports below)
from recsampled._keras_env import ensure_legacy_keras

ensure_legacy_keras()

from recsampled.tasks.retrieval import Retrieval
from recsampled.tasks.topk import (
    CandidateIndex,
    CandidateTopK,
    LookupSplit,
    metric_candidate_ids,
    split_lookup,
)

__all__ = [
    "CandidateIndex",
    "CandidateTopK",
    "LookupSplit",
    "Retrieval",
    "metric_candidate_ids",
    "split_lookup",
]

"""Retrieval tasks: ``tfrs.tasks.Retrieval``'s contract plus frequency logQ and mixed negatives."""

from recsampled.tasks.retrieval import Retrieval

__all__ = ["Retrieval"]

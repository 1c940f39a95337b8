"""Retrieval tasks: ``tfrs.tasks.Retrieval``'s contract plus frequency logQ and mixed negatives."""

# ruff: noqa: E402 (TF_USE_LEGACY_KERAS must be set before the imports below)
from recsampled._keras_env import ensure_legacy_keras

ensure_legacy_keras()

from recsampled.tasks.retrieval import Retrieval

__all__ = ["Retrieval"]

"""Retrieval models: towers over ids with per-id side features, and the two-tower model."""

# ruff: noqa: E402 (TF_USE_LEGACY_KERAS must be set before the imports below)
from recsampled._keras_env import ensure_legacy_keras

ensure_legacy_keras()

from recsampled.models.two_tower import Tower, TwoTowerModel

__all__ = ["Tower", "TwoTowerModel"]

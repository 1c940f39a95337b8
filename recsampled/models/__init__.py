"""Retrieval models: towers over ids with per-id side features, and the two-tower model.

- :class:`Tower`, :class:`TwoTowerModel` (``two_tower.py``). Tests: ``tests/models``.
- :func:`save_tower`, :func:`load_tower`, :class:`TowerModule` (``saved.py``): a tower as a
  SavedModel, shared by run directories and artifacts.
- :func:`embed_ids` (``embed.py``): every id through a tower, in batches.
"""

# ruff: noqa: E402 (TF_USE_LEGACY_KERAS must be set before the imports below)
from recsampled._keras_env import ensure_legacy_keras

ensure_legacy_keras()

from recsampled.models.embed import embed_ids
from recsampled.models.saved import TowerModule, load_tower, save_tower
from recsampled.models.two_tower import Tower, TwoTowerModel

__all__ = ["Tower", "TowerModule", "TwoTowerModel", "embed_ids", "load_tower", "save_tower"]

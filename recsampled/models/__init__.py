"""Retrieval models: towers over ids with per-id side features, and the two-tower model."""

from recsampled.models.two_tower import Tower, TwoTowerModel

__all__ = ["Tower", "TwoTowerModel"]

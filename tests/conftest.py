"""Shared test fixtures. TF's C++ logging is quietened; nothing else is configured globally."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

MOVIELENS_100K = (
    Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "movielens-100k"
)


@pytest.fixture
def movielens_100k() -> Path:
    """Path to ../shared/datasets/movielens-100k; the test is skipped when it is absent."""
    if not (MOVIELENS_100K / "u.data").exists():
        pytest.skip(f"MovieLens 100K not found at {MOVIELENS_100K}")
    return MOVIELENS_100K

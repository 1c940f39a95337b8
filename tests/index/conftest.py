"""Shared fixtures of the index tests: small seeded data and one exported artifact per session."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

import recsampled  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)

# isort: split
import tensorflow as tf

from recsampled.index import export_artifact

NUM_ITEMS = 300
NUM_USERS = 40
DIM = 8


def clustered(num: int, dim: int, *, num_clusters: int = 20, seed: int = 0) -> np.ndarray:
    """``[num, dim]`` float32 draws from a Gaussian mixture (overlapping clusters)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_clusters, dim))
    labels = rng.integers(num_clusters, size=num)
    return (centers[labels] + 0.7 * rng.normal(size=(num, dim))).astype(np.float32)


def numpy_top_k(
    queries: np.ndarray, items: np.ndarray, k: int, metric: str, banned: list | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reference top-k (rows, scores) by brute force in float64; ``banned[b]`` rows excluded."""
    q, v = queries.astype(np.float64), items.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
    scores = q @ v.T
    for b, rows in enumerate(banned or []):
        scores[b, list(rows)] = -np.inf
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(scores, rows, axis=1)


def query_tower(num_users: int, dim: int, seed: int = 0) -> tf.keras.Model:
    """A tiny query tower: user index -> Embedding -> Dense -> [batch, dim]."""
    tf.keras.utils.set_random_seed(seed)
    model = tf.keras.Sequential(
        [tf.keras.layers.Embedding(num_users, 2 * dim), tf.keras.layers.Dense(dim)]
    )
    model(tf.constant([0], tf.int64))  # build the weights
    return model


def random_seen(num_users: int, num_items: int, seed: int = 0) -> list[np.ndarray]:
    """Item rows each user has seen: 0 to 30 distinct rows per user (some users none)."""
    rng = np.random.default_rng(seed)
    return [rng.choice(num_items, rng.integers(0, 31), replace=False) for _ in range(num_users)]


class Data:
    """The inputs of the session's artifact."""

    items = clustered(NUM_ITEMS, DIM, seed=1)
    item_ids = np.array([f"item-{i:03d}" for i in range(NUM_ITEMS)])
    user_ids = np.arange(1000, 1000 + NUM_USERS)
    seen = random_seen(NUM_USERS, NUM_ITEMS)
    popularity = np.random.default_rng(2).integers(0, 100, NUM_ITEMS)


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """FAISS on one thread: OpenMP threads spin badly on a shared, loaded machine (5x slower)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="session")
def data() -> type[Data]:
    return Data


@pytest.fixture(scope="session")
def query_model() -> tf.keras.Model:
    return query_tower(NUM_USERS, DIM)


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory, query_model: tf.keras.Model) -> Path:
    """A complete artifact (cosine, flat) with query tower, seen items and popularity."""
    path = tmp_path_factory.mktemp("artifacts") / "base"
    export_artifact(
        path,
        item_embeddings=Data.items,
        item_ids=Data.item_ids,
        query_model=query_model,
        user_ids=Data.user_ids,
        metric="cosine",
        index="flat",
        seen=Data.seen,
        item_popularity=Data.popularity,
        training_config={"epochs": 3, "learning_rate": 0.1, "data": Path("u.data")},
    )
    return path

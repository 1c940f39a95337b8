"""Fixtures of the serving tests: two small exported artifacts and a symlink that serves one.

The artifacts are built the way ``tests/index/conftest.py`` builds its own (seeded clustered
item embeddings, a tiny Keras query tower, seen items, popularity), with ``export_artifact``.
"""

from __future__ import annotations

import os
import shutil
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest

import recsampled  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)

# isort: split
import tensorflow as tf

from recsampled.index import Retriever, export_artifact
from tests.index.conftest import one_faiss_thread  # noqa: F401  (autouse: FAISS on one thread)

with warnings.catch_warnings():  # Starlette asks for httpx2 (not installed); httpx works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: F401  (re-exported for the tests)

NUM_ITEMS = 300
NUM_USERS = 40
DIM = 8


def clustered(num: int, dim: int, *, seed: int) -> np.ndarray:
    """``[num, dim]`` float32 draws from a Gaussian mixture of 20 overlapping clusters."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, dim))
    labels = rng.integers(20, size=num)
    return (centers[labels] + 0.7 * rng.normal(size=(num, dim))).astype(np.float32)


def query_tower(num_users: int, dim: int, seed: int) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(seed)
    model = tf.keras.Sequential(
        [tf.keras.layers.Embedding(num_users, 2 * dim), tf.keras.layers.Dense(dim)]
    )
    model(tf.constant([0], tf.int64))
    return model


ITEM_IDS = np.array([f"item-{i:03d}" for i in range(NUM_ITEMS)])
USER_IDS = np.arange(1000, 1000 + NUM_USERS)


def build(
    path: Path, *, seed: int, metric: str = "cosine", with_seen: bool = True, index: str = "flat"
) -> Path:
    """Exports an artifact (flat: exact search, by default) whose embeddings, tower and seen
    items depend on seed."""
    rng = np.random.default_rng(seed + 100)
    seen = [rng.choice(NUM_ITEMS, rng.integers(0, 31), replace=False) for _ in range(NUM_USERS)]
    export_artifact(
        path,
        item_embeddings=clustered(NUM_ITEMS, DIM, seed=seed),
        item_ids=ITEM_IDS,
        query_model=query_tower(NUM_USERS, DIM, seed),
        user_ids=USER_IDS,
        metric=metric,
        index=index,
        seen=seen if with_seen else None,
        item_popularity=rng.integers(0, 100, NUM_ITEMS),
    )
    return path


def point(link: Path, target: Path) -> None:
    """Points the symlink ``link`` at ``target`` atomically (a new link renamed over it)."""
    tmp = link.with_name(link.name + ".tmp")
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


def break_artifact(source: Path, target: Path) -> Path:
    """A copy of ``source`` whose FAISS index bytes were changed (its checksum fails)."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    index = target / "index.faiss"
    data = bytearray(index.read_bytes())
    data[-8:] = b"\x00" * 8
    index.write_bytes(bytes(data))
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``a`` and ``b`` (two different models over the same ids), ``broken`` (a corrupt copy of
    ``a``), ``dot`` (``a``'s data with the dot metric), ``no_seen`` (``a`` without seen items)."""
    root = tmp_path_factory.mktemp("serving")
    a = build(root / "a", seed=1)
    return {
        "a": a,
        "b": build(root / "b", seed=2),
        "dot": build(root / "dot", seed=1, metric="dot"),
        "no_seen": build(root / "no_seen", seed=1, with_seen=False),
        "broken": break_artifact(a, root / "broken"),
    }


@pytest.fixture(scope="session")
def retrievers(artifacts: dict[str, Path]) -> dict[str, Retriever]:
    return {name: Retriever.load(artifacts[name]) for name in ("a", "b", "dot")}

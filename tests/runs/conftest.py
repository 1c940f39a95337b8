"""A tiny run shared by the run tests: trained once per session, uninterrupted."""

from __future__ import annotations

import pytest

from recsampled.config import Config
from recsampled.runs import TrainResult, train

# 200 users, 300 items, ~3,600 training rows: 29 steps of 128 per epoch, 116 in all.
TINY = {
    "data": {
        "synthetic": {
            "num_users": 200, "num_items": 300, "num_interactions": 6000, "num_clusters": 5,
        },
    },
    "model": {"embedding_dim": 8, "normalize": True},
    "task": {
        "temperature": 0.1,
        "remove_accidental_hits": True,
        "logq": "streaming",  # its variables must be checkpointed for an exact resume
        "estimator": {"num_buckets": 1024},
    },
    "training": {
        "batch_size": 128, "epochs": 4, "optimizer": "adam", "learning_rate": 0.01,
        "checkpoint_every_steps": 10,
        "max_checkpoints": 100,
    },
    "evaluation": {"ks": [5, 10]},
}  # fmt: skip
STEPS_PER_EPOCH = 29


@pytest.fixture(scope="session")
def tiny_config() -> Config:
    return Config.from_dict(TINY)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_config: Config) -> TrainResult:
    """The tiny config trained without interruption."""
    return train(tiny_config, tmp_path_factory.mktemp("run") / "uninterrupted")

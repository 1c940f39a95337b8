"""``task.sampler: kernel`` in the config and the run builder: settings, validation, the sampler
over the candidate tower, the rebuild callback during ``recsampled train``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import tensorflow as tf

from recsampled.config import Config, ConfigError, KernelConfig
from recsampled.runs import train
from recsampled.runs.build import build_model, load_split, sampler_callbacks
from recsampled.samplers import KernelSamplerRebuild, QuadraticKernelSampler
from tests.runs.conftest import TINY


def kernel_config(**kernel) -> Config:
    values = copy.deepcopy(TINY)
    values["task"] = {
        "temperature": 0.1,
        "remove_accidental_hits": True,
        "negatives": "mixed",
        "logq": "counts",
        "sampler": "kernel",
        "num_sampled": 16,
        "kernel": kernel,
    }
    values["training"] = {"batch_size": 128, "epochs": 1, "learning_rate": 0.01}
    return Config.from_dict(values)


def test_kernel_settings_default_to_the_constructor_and_round_trip():
    config = kernel_config(alpha=10.0, mode="per_query", rebuild_every_steps=7, leaf_size=4)
    assert config.task.kernel == KernelConfig(10.0, "per_query", 7, 4)
    assert Config.from_yaml(config.to_yaml()) == config
    assert kernel_config().task.kernel == KernelConfig()
    assert KernelConfig().alpha == 100.0 and KernelConfig().mode == "batch_mixture"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kernel": {"mode": "sideways"}}, "`task.kernel.mode` must be one of"),
        ({"kernel": {"alpha": -1.0}}, "`task.kernel.alpha` must be >= 0"),
        ({"kernel": {"rebuild_every_steps": 0}}, "`task.kernel.rebuild_every_steps` must be > 0"),
        ({"kernel": {"leaf_size": 0}}, "`task.kernel.leaf_size` must be > 0"),
        ({"kernel": {"alpha": 5.0}, "sampler": "uniform"}, "`task.kernel` is not used by sampler"),
        ({"sampler": "kernal"}, "`task.sampler` must be one of .* or 'kernel'"),
    ],
)
def test_bad_kernel_settings(change, message):
    values = kernel_config().to_dict()
    values["task"].update(change)
    with pytest.raises(ConfigError, match=message):
        Config.from_dict(values)


def test_the_builder_makes_a_kernel_sampler_over_the_candidate_tower():
    config = kernel_config(alpha=10.0, rebuild_every_steps=5, leaf_size=4)
    split = load_split(config.data)
    model = build_model(config, split.train)
    sampler = model.task.sampler
    assert isinstance(sampler, QuadraticKernelSampler)
    assert (sampler.alpha, sampler.mode, sampler.leaf_size) == (10.0, "batch_mixture", 4)
    items = split.train.num_items
    table = model.candidate_model(tf.range(items)).numpy()
    np.testing.assert_allclose(
        sampler.table.numpy().reshape(-1, table.shape[1])[:items], table, rtol=1e-6
    )
    (callback,) = sampler_callbacks(config, model)
    assert isinstance(callback, KernelSamplerRebuild) and callback.every_n_batches == 5


def test_recsampled_train_with_the_kernel_sampler(tmp_path):
    """One epoch of 29 steps, rebuilds every 10 steps: trains, and the tree follows the tower."""
    config = kernel_config(alpha=10.0, rebuild_every_steps=10)
    result = train(config, tmp_path / "run")
    losses = [record["loss"] for record in result.history]
    assert len(losses) == 1 and np.isfinite(losses[0])
    assert result.metrics  # evaluated beside popularity, as every run

"""Smoke test of the defaults study on a tiny log: its report, its ranking computed from the
reported numbers, the budget, and that only validation data (never the test part) is ranked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines import bench_defaults as bench
from recsampled.data import leave_last_out, synthetic

TINY = ["--datasets", "few_per_user", "--scale", "0.01", "--epochs", "2", "--batch-size", "64",
        "--embedding-dim", "8", "--validation-users", "100",
        "--variants", "adam_lr0.005,adagrad_lr0.1,sgd_lr0.01"]  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    output = tmp_path_factory.mktemp("defaults") / "defaults.json"
    returned = bench.main([*TINY, "--output", str(output)])
    assert json.loads(output.read_text()) == json.loads(json.dumps(returned))
    assert output.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    return returned


def test_report_and_ranking_follow_the_numbers(report: dict) -> None:
    entry = report["datasets"]["few_per_user"]
    assert list(entry["variants"]) == ["adam_lr0.005", "adagrad_lr0.1", "sgd_lr0.01"]
    for name, result in entry["variants"].items():
        assert (result["optimizer"], result["learning_rate"]) == bench.VARIANTS[name][:2]
        assert len(result["curve"]) == len(result["loss"]) == len(result["epoch_seconds"]) == 2
        recalls = [c["recall@20"] for c in result["curve"]]
        assert result["best"]["recall@20"] == max(recalls) and result["last"] == result["curve"][-1]
        assert all(0 <= r <= 1 for r in recalls) and result["examples_per_second"] > 0
    ranking = report["ranking"]
    recipe = entry["variants"]["adam_lr0.005"]["last"]["recall@20"]
    for name, row in ranking["variants"].items():
        mine = entry["variants"][name]["last"]["recall@20"]
        assert row["relative_recall@20"] == {
            "few_per_user": pytest.approx(mine / max(1e-9, recipe))
        }
    means = {n: r["mean_relative_recall@20"] for n, r in ranking["variants"].items()}
    assert ranking["best"] == max(means, key=means.get)


def test_budget_skips_the_remaining_variants(tmp_path) -> None:
    result = bench.main([*TINY, "--budget-s", "0", "--output", str(tmp_path / "d.json")])
    entry = result["datasets"]["few_per_user"]
    assert list(entry["variants"]) == ["adam_lr0.005"]  # the budget is checked before each
    assert entry["skipped"] == ["adagrad_lr0.1", "sgd_lr0.01"]


def test_only_validation_data_is_ranked() -> None:
    config = bench.DefaultsBenchConfig(scale=0.01)
    fit, validation = bench.load("few_per_user", config)
    sizes = {k: max(50, int(v * 0.01)) if k.startswith("num_") else v
             for k, v in bench.SHAPES["few_per_user"].items()} | {"num_clusters": 20}  # fmt: skip
    test = leave_last_out(synthetic.generate(**sizes, seed=0).to_interactions()).test
    pairs = {
        name: set(zip(log.user_ids.tolist(), log.item_ids.tolist(), strict=True))
        for name, log in (("fit", fit), ("validation", validation), ("test", test))
    }
    assert len(validation) == np.unique(validation.user_ids).size > 0  # one per user
    assert not pairs["validation"] & pairs["test"] and not pairs["fit"] & pairs["test"]
    assert not pairs["fit"] & pairs["validation"]

"""The training pipeline end to end on a tiny config: outputs, artifacts, reruns, file data."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import numpy as np
import pytest

from recsampled.config import Config
from recsampled.data import Position, Vocabulary
from recsampled.data.synthetic import generate
from recsampled.evaluation import embedding_scores, ranking_metrics
from recsampled.models import load_tower
from recsampled.runs import RunDirectory, RunDirectoryError, load_split
from recsampled.runs import train as train_run
from tests.runs.conftest import STEPS_PER_EPOCH


def test_outputs_of_a_run(finished_run, tiny_config):
    run = RunDirectory(finished_run.run_dir)
    assert Config.from_yaml(run.config_file.read_text()) == tiny_config
    assert finished_run.resumed_from is None
    history = json.loads(run.history_file.read_text())
    assert history == finished_run.history
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert all(h["steps"] == STEPS_PER_EPOCH and np.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < history[0]["loss"]
    metrics = json.loads(run.metrics_file.read_text())
    assert metrics["model"] == finished_run.metrics.as_dict()
    assert metrics["popularity"] == finished_run.popularity.as_dict()
    assert metrics["split"] == "leave_last_out(num_test=1)"
    assert set(metrics["model"]) >= {"recall@5", "ndcg@10", "hit_rate@5", "coverage@10", "mrr"}
    # A checkpoint every 10 steps and at every epoch end (29 steps each), numbered by step.
    numbers = {int(p.name.split("-")[1].split(".")[0]) for p in run.checkpoints.glob("ckpt-*")}
    epoch_ends = {STEPS_PER_EPOCH * e for e in range(1, 5)}
    assert numbers == set(range(10, 4 * STEPS_PER_EPOCH, 10)) | epoch_ends
    assert "recall@5" in finished_run.table() and "popularity" in finished_run.table()


def test_exported_towers_and_vocabularies_reproduce_the_metrics(finished_run, tiny_config):
    run = RunDirectory(finished_run.run_dir)
    split = load_split(tiny_config.data)
    assert Vocabulary.load(run.vocabulary / "items.parquet") == split.train.items
    assert Vocabulary.load(run.vocabulary / "users.parquet") == split.train.users
    manifest = json.loads((run.towers / "towers.json").read_text())
    assert manifest["candidate"]["num_ids"] == split.train.num_items
    queries = load_tower(run.towers / "query")(np.arange(split.train.num_users)).numpy()
    items = load_tower(run.towers / "candidate")(np.arange(split.train.num_items)).numpy()
    assert items.shape == (split.train.num_items, tiny_config.model.embedding_dim)
    metrics = ranking_metrics(
        embedding_scores(queries, items),
        num_users=split.train.num_users,
        num_items=split.train.num_items,
        train_user_ids=split.train.user_ids,
        train_item_ids=split.train.item_ids,
        test_user_ids=split.test.user_ids,
        test_item_ids=split.test.item_ids,
        ks=tiny_config.evaluation.ks,
    )
    assert metrics.as_dict() == pytest.approx(finished_run.metrics.as_dict(), abs=1e-9)


def test_rerunning_a_finished_run_only_rewrites_the_outputs(finished_run, tiny_config):
    again = train_run(tiny_config, finished_run.run_dir)
    assert again.resumed_from == Position(4, 0)
    assert again.history == finished_run.history
    assert again.metrics == finished_run.metrics


def test_another_config_in_the_same_directory_is_refused(finished_run, tiny_config):
    # More epochs continue a run (test_more_epochs_continue_a_finished_run); fewer are refused.
    other = dataclasses.replace(
        tiny_config, training=dataclasses.replace(tiny_config.training, epochs=2)
    )
    with pytest.raises(
        RunDirectoryError,
        match=r"Differences \(saved != now\): training.epochs: 4 != 2\. "
        r"\(only a larger training.epochs continues a run\) Pass --force",
    ):
        train_run(other, finished_run.run_dir)
    other = dataclasses.replace(
        tiny_config,
        training=dataclasses.replace(tiny_config.training, epochs=7, learning_rate=0.02),
    )
    with pytest.raises(
        RunDirectoryError, match=r"Differences \(saved != now\): training.learning_rate: 0.01"
    ):
        train_run(other, finished_run.run_dir)


def test_more_epochs_continue_a_finished_run(tmp_path, finished_run, tiny_config):
    """4 epochs, then 6: the same history, towers and metrics as 6 epochs in one go."""
    extended_dir = tmp_path / "extended"
    shutil.copytree(finished_run.run_dir, extended_dir)
    six = dataclasses.replace(
        tiny_config, training=dataclasses.replace(tiny_config.training, epochs=6)
    )
    extended = train_run(six, extended_dir)
    assert extended.resumed_from == Position(4, 0)
    assert extended.history[:4] == finished_run.history
    assert [record["epoch"] for record in extended.history] == [1, 2, 3, 4, 5, 6]
    assert Config.from_yaml((extended_dir / "config.yaml").read_text()) == six
    fresh = train_run(six, tmp_path / "fresh")  # tolerances: see tests/runs/test_resume.py
    assert [r["steps"] for r in extended.history] == [r["steps"] for r in fresh.history]
    assert [r["loss"] for r in extended.history] == pytest.approx(
        [r["loss"] for r in fresh.history], rel=1e-5
    )
    assert extended.metrics.as_dict() == pytest.approx(fresh.metrics.as_dict(), abs=0.02)


def test_a_file_log_with_catalogue_negatives(tmp_path, caplog, tiny_config):
    log = generate(num_users=100, num_items=150, num_interactions=2000, num_clusters=5, seed=1)
    path = tmp_path / "log.csv"
    log.to_table().to_pandas().to_csv(path, index=False)
    config = Config.from_dict(
        tiny_config.to_dict()
        | {
            "data": {
                "source": "file",
                "path": str(path),
                "timestamp_col": "timestamp",
                "k_core": 2,
                "split": {"kind": "random_holdout", "test_fraction": 0.25},
            },
            "task": {
                "temperature": 0.1,
                "remove_accidental_hits": True,
                "negatives": "mixed",
                "num_sampled": 32,
                "sampler": "unigram",
                "distortion": 0.75,
                "logq": "counts",
            },
        }
    )
    config = Config.from_dict(config.to_dict() | {"training": {"epochs": 1, "batch_size": 64}})
    caplog.set_level(logging.INFO, logger="recsampled")
    result = train_run(config, tmp_path / "run")
    assert "log.csv (csv): read 2000 rows" in result.data_summary
    assert "random_holdout(test_fraction=0.25, seed=0)" in result.data_summary
    assert "epoch 1/1: loss" in caplog.text and "examples/s" in caplog.text
    assert len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
    assert 0 <= result.metrics.recall[10] <= 1

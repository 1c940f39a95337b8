"""Validation inside training: per-epoch validation metrics, early stopping, history.png."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsampled.config import Config, ConfigError
from recsampled.data import Position
from recsampled.data.splits import validation_split
from recsampled.evaluation import embedding_scores, evaluate
from recsampled.runs import RunDirectory, load_run, load_split
from recsampled.runs import train as train_run
from tests.runs.conftest import TINY

VALIDATION = {"per_user": 1, "seed": 3}


def _config(**training) -> Config:
    values = json.loads(json.dumps(TINY))
    values["data"]["split"] = {"validation": VALIDATION}
    values["training"].update(training)
    return Config.from_dict(values)


def _validation_metrics(config: Config, run_dir) -> dict[str, float]:
    """The saved towers' validation metrics, recomputed from scratch."""
    split = load_split(config.data)
    fit, validation, _ = validation_split(split.train, **VALIDATION)
    run = load_run(run_dir)
    scores = embedding_scores(run.query_embeddings(np.arange(fit.num_users)), run.item_embeddings())
    result = evaluate({"model": scores}, fit, validation, ks=config.evaluation.ks, popularity=False)
    return {
        "val_" + key.replace("@", "_at_"): value
        for key, value in result["model"].as_dict().items()
        if key not in ("num_users", "num_items")
    }


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory):
    config = _config()
    return config, train_run(config, tmp_path_factory.mktemp("validated") / "run")


def test_every_epoch_logs_its_validation_metrics(validated_run):
    config, result = validated_run
    run = RunDirectory(result.run_dir)
    history = json.loads(run.history_file.read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    for record in history:
        for k in config.evaluation.ks:
            assert 0 <= record[f"val_recall_at_{k}"] <= 1 and 0 <= record[f"val_ndcg_at_{k}"] <= 1
    # The last epoch's metrics are those of the saved towers (no early stopping here).
    assert _validation_metrics(config, result.run_dir) == pytest.approx(
        {k: v for k, v in history[-1].items() if k.startswith("val_")}, abs=1e-6
    )
    metrics = json.loads(run.metrics_file.read_text())
    split = load_split(config.data)
    assert metrics["validation_rows"] + metrics["train_rows"] <= len(split.train)
    assert metrics["test_rows"] == len(split.test)
    pytest.importorskip("matplotlib")
    assert run.history_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_early_stopping_restores_the_best_epoch(tmp_path, validated_run):
    # mode=min on a recall that rises with training: the best epoch is an early one.
    stopping = {"monitor": "val_recall_at_10", "patience": 1, "mode": "min"}
    config = _config(early_stopping=stopping)
    result = train_run(config, tmp_path / "run")
    history = result.history
    values = [r["val_recall_at_10"] for r in history]
    best = int(np.argmin(values)) + 1
    assert len(history) < config.training.epochs  # it stopped ...
    assert len(history) - best == stopping["patience"]  # ... patience epochs after the best
    assert history == validated_run[1].history[: len(history)]  # same run up to the stop
    restored = _validation_metrics(config, result.run_dir)
    assert restored == pytest.approx(
        {k: v for k, v in history[best - 1].items() if k.startswith("val_")}, abs=1e-6
    )
    assert restored["val_recall_at_10"] != pytest.approx(values[-1], abs=1e-9)
    # Run again: it is finished (stopped), nothing trains, the best epoch is restored again.
    again = train_run(config, tmp_path / "run")
    assert again.resumed_from == Position(len(history), 0)
    assert again.history == history and again.metrics == result.metrics


def test_bad_validation_settings():
    with pytest.raises(ConfigError, match="data.split.validation"):
        Config.from_dict({"training": {"early_stopping": {"monitor": "val_mrr"}}})
    with pytest.raises(ConfigError, match="data.split.validation"):
        Config.from_dict({"evaluation": {"validation_users": 10}})
    with pytest.raises(ConfigError, match="training.early_stopping.monitor"):
        _config(early_stopping={"monitor": "val_recall_at_20"})  # ks are 5 and 10 here
    with pytest.raises(ConfigError, match="data.split.validation.fraction"):
        Config.from_dict({"data": {"split": {"validation": {"fraction": 1.0}}}})
    assert Config().data.split.validation is None and Config().training.early_stopping is None

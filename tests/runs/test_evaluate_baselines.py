"""``recsampled evaluate`` shows iALS beside the model and popularity, on the same test users."""

from __future__ import annotations

import dataclasses
import json

import pytest

from recsampled.evaluation import evaluate
from recsampled.runs import evaluate_run
from recsampled.runs.build import evaluation_settings
from recsampled.runs.directory import load_run


def test_evaluate_shows_ials_computed_by_the_evaluation_protocol(finished_run):
    result = evaluate_run(finished_run.run_dir)
    assert list(result.columns()) == ["exact", "ials", "popularity"]
    assert result.table().splitlines()[0].split() == ["metric", "exact", "ials", "popularity"]
    assert result.as_dict()["metrics"]["ials"]["num_users"] == result.exact.num_users
    run = load_run(finished_run.run_dir)
    split, settings = run.split(), run.config.evaluation
    again = evaluate({}, split.train, split.test, **evaluation_settings(settings))
    assert result.ials.as_dict() == pytest.approx(again["ials"].as_dict(), abs=1e-9)  # seeded
    assert result.ials.recall[10] > result.popularity.recall[10]  # 5 planted clusters
    # The training report: the same iALS column in metrics.json and in the printed table.
    trained = json.loads((finished_run.run_dir / "metrics.json").read_text())
    assert list(trained)[-3:] == ["model", "ials", "popularity"]
    assert trained["ials"] == pytest.approx(result.ials.as_dict(), abs=1e-9)
    assert finished_run.baselines["ials"].as_dict() == trained["ials"]
    assert finished_run.table().splitlines()[0].split() == ["metric", "model", "ials", "popularity"]


def test_baselines_can_leave_ials_out(finished_run):
    run = load_run(finished_run.run_dir)
    evaluation = dataclasses.replace(run.config.evaluation, baselines=())
    run = dataclasses.replace(run, config=dataclasses.replace(run.config, evaluation=evaluation))
    assert list(evaluate_run(run).columns()) == ["exact", "popularity"]

"""The demo's journey (train, export, evaluate, recommend) on a tiny config: every step runs and
prints, and the artifact serves what the evaluation measured."""

from __future__ import annotations

import copy

from pipelines import demo
from recsampled.config import Config
from recsampled.index import Retriever
from tests.runs.conftest import TINY


def test_demo_runs_the_whole_journey(tmp_path, capsys):
    values = copy.deepcopy(TINY)
    values["training"]["epochs"] = 1
    config = tmp_path / "tiny.yaml"
    config.write_text(Config.from_dict(values).to_yaml())
    run_dir = tmp_path / "run"

    evaluation = demo.main(["--config", str(config), "--run-dir", str(run_dir)])

    out = capsys.readouterr().out
    for step in ("== 1. Train", "== 2. Export", "== 3. Evaluate", "== 4. Recommend"):
        assert step in out
    assert "recall@10" in out and out.count("held-out item") == demo.NUM_USERS_SHOWN
    artifact = Retriever.load(tmp_path / "run-artifacts")
    assert artifact.manifest.index.type == demo.INDEX and artifact.manifest.recall.reached
    assert evaluation.index is not None and evaluation.artifact["path"] == str(artifact.path)
    assert set(evaluation.exact.ks) == {5, 10}

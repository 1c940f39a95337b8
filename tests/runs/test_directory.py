"""The run directory's resume check, tower SavedModels (atomic writes: tests/test_io.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from recsampled.config import Config, load_config
from recsampled.models import Tower, load_tower
from recsampled.runs import RunDirectory, RunDirectoryError


def _fake_checkpoint(run: RunDirectory) -> None:
    checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0))
    tf.train.CheckpointManager(checkpoint, str(run.checkpoints), max_to_keep=1).save()


def test_a_checkpoint_of_another_config_is_an_error_unless_forced(tmp_path):
    run = RunDirectory(tmp_path / "run")
    config = Config()
    run.prepare(config)
    assert Config.from_yaml(run.config_file.read_text()) == config
    _fake_checkpoint(run)
    run.prepare(config)  # same config: resume
    epochs = config.training.epochs
    other = load_config(overrides=[f"training.epochs={epochs + 1}"])
    with pytest.raises(RunDirectoryError) as error:
        run.prepare(other)
    message = str(error.value)
    assert "holds a checkpoint of a different config" in message
    assert f"training.epochs: {epochs} != {epochs + 1}" in message and "--force" in message
    run.prepare(other, force=True)
    assert run.latest_checkpoint() is None
    assert Config.from_yaml(run.config_file.read_text()) == other


def test_without_a_checkpoint_a_new_config_simply_replaces_the_old(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.prepare(Config())
    run.prepare(load_config(overrides=["training.epochs=2"]))  # nothing to resume: no error


def test_a_checkpoint_without_its_config_is_an_error(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.prepare(Config())
    _fake_checkpoint(run)
    run.config_file.unlink()
    with pytest.raises(RunDirectoryError, match="config.yaml is missing"):
        run.prepare(Config())


def test_towers_round_trip_through_saved_models(tmp_path):
    query, candidate = Tower(5, 4, name="q"), Tower(7, 4, normalize=True, name="c")
    ids = tf.range(7, dtype=tf.int64)
    expected = candidate(ids).numpy()
    query(ids[:5])
    RunDirectory(tmp_path).save_towers(query_model=query, candidate_model=candidate,
                                       num_users=5, num_items=7, embedding_dim=4)  # fmt: skip
    loaded = load_tower(tmp_path / "towers" / "candidate")
    np.testing.assert_allclose(loaded(ids).numpy(), expected, rtol=1e-6)
    served = loaded.signatures["serving_default"](ids=ids)
    np.testing.assert_allclose(served["embeddings"].numpy(), expected, rtol=1e-6)
    assert load_tower(tmp_path / "towers" / "query")(ids[:2]).shape == (2, 4)


def test_a_run_written_before_manifests_still_resumes_and_owns_its_parts(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.prepare(Config())
    _fake_checkpoint(run)
    (run.path / ".recsampled-run.json").unlink()  # as recsampled wrote runs before issue 16
    assert run.foreign_entries() == []
    run.prepare(Config())  # resumes
    run.prepare(load_config(overrides=["training.epochs=2"]), force=True)
    assert run.latest_checkpoint() is None and sorted(run.manifest()["owned"]) == sorted(
        ["config.yaml", "checkpoints", "vocabulary", "towers", "history.json", "history.png",
         "metrics.json", "evaluation.json"]
    )  # fmt: skip


def test_an_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(RunDirectoryError, match="is a file, not a folder"):
        RunDirectory(tmp_path / "run").prepare(Config())

"""Resume: a run stopped anywhere and started again finishes with the uninterrupted run's result.

Why the comparison can be (and is) this tight: the tiny config draws no random numbers during
training (in-batch negatives with the streaming estimator, whose state is checkpointed), the order
of the batches is a function of (seed, epoch) (``recsampled.data.training_batches``), the checkpoint
holds the model, the optimiser slots, the estimator and the position, and TF's CPU kernels give
the same floats run after run. Both runs are bit-for-bit equal here; the stated tolerance (losses
to 1e-5 relative, metrics to one test user's ranking) leaves room only for float rounding that
differs between machines' thread pools. With catalogue negatives the runs would agree only
statistically: the task's sampler draws from a stateful TF random op whose position is not part
of any checkpoint, so a resumed run draws other (equally distributed) negatives.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsampled import cli
from recsampled.data import Position
from recsampled.runs import RunDirectory, pipeline
from recsampled.runs import train as train_run
from recsampled.training.callbacks import CheckpointCallback
from tests.runs.conftest import STEPS_PER_EPOCH

REPO = Path(__file__).resolve().parents[2]


class _Crash(Exception):
    pass


def _assert_same_result(run_dir: Path, finished_run) -> None:
    history = json.loads((run_dir / "history.json").read_text())
    expected = finished_run.history
    assert [h["steps"] for h in history] == [h["steps"] for h in expected]
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in expected], rel=1e-5)
    metrics = json.loads((run_dir / "metrics.json").read_text())["model"]
    one_user = 1.0 / metrics["num_users"]
    assert metrics == pytest.approx(finished_run.metrics.as_dict(), abs=one_user)


def test_crash_mid_epoch_then_resume(tmp_path, monkeypatch, caplog, tiny_config, finished_run):
    class CrashAfterStep40(CheckpointCallback):
        def save(self) -> str:
            path = super().save()
            if self.global_step == 40:
                raise _Crash
            return path

    monkeypatch.setattr(pipeline, "CheckpointCallback", CrashAfterStep40)
    run = RunDirectory(tmp_path / "run")
    with pytest.raises(_Crash):
        train_run(tiny_config, run.path)
    assert not run.metrics_file.exists()
    monkeypatch.undo()

    # A crash while writing ckpt-50 would leave its files but not update the index: plant such
    # a half-written checkpoint (and a later one), which must not be restored.
    for number in (50, 9999):
        (run.checkpoints / f"ckpt-{number}.index").write_bytes(b"\x00partial")
        (run.checkpoints / f"ckpt-{number}.data-00000-of-00001").write_bytes(b"")
    assert run.latest_checkpoint().endswith("ckpt-40")

    caplog.set_level(logging.INFO, logger="recsampled")
    caplog.clear()
    resumed = train_run(tiny_config, run.path)
    # Step 40 is batch 11 of the second epoch (29 batches per epoch).
    assert resumed.resumed_from == Position(epoch=1, batch=40 - STEPS_PER_EPOCH)
    assert "Resuming from" in caplog.text and "ckpt-40" in caplog.text
    assert "epoch 2/4" in caplog.text and "epoch 1/4" not in caplog.text
    _assert_same_result(run.path, finished_run)


def test_kill_9_during_training_then_rerun(tmp_path, tiny_config, finished_run):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(tiny_config.to_yaml())
    run = RunDirectory(tmp_path / "run")
    command = ["train", "--config", str(config_file), "--output", str(run.path)]
    environment = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "recsampled", *command],
        cwd=REPO,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    index = run.checkpoints / "checkpoint"
    deadline = time.monotonic() + 240
    try:
        while not index.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        process.kill()  # SIGKILL, as kill -9
        _, stderr = process.communicate()
    assert index.exists(), f"no checkpoint before the process ended:\n{stderr.decode()[-3000:]}"
    assert process.returncode == -9
    assert not run.metrics_file.exists()  # it was killed before finishing

    assert cli.main(command) == 0  # the same command again resumes and finishes
    _assert_same_result(run.path, finished_run)

"""``ProgressCallback``: lines within long epochs, from the checkpoint callback's counters."""

from __future__ import annotations

import logging
import types

import pytest

from recsampled.training import ProgressCallback


def _checkpoints(steps_per_epoch: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        steps_per_epoch=steps_per_epoch, epoch=0, batch=0, global_step=0, loss_sum=0.0
    )


def _run_epoch(progress: ProgressCallback, checkpoints: types.SimpleNamespace, losses) -> None:
    progress.on_epoch_begin(checkpoints.epoch)
    for loss in losses:  # what CheckpointCallback.on_train_batch_end does first
        checkpoints.batch += 1
        checkpoints.global_step += 1
        checkpoints.loss_sum += loss
        progress.on_train_batch_end(checkpoints.batch - 1)


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="recsampled")
    return lambda: [r.getMessage() for r in caplog.records if r.name.startswith("recsampled")]


def test_a_line_per_step_with_running_loss_and_none_for_the_last_step(lines):
    checkpoints = _checkpoints(steps_per_epoch=4)
    progress = ProgressCallback(checkpoints, num_rows=32, batch_size=8, epochs=2, interval=0.0)
    _run_epoch(progress, checkpoints, [4.0, 2.0, 3.0, 1.0])
    lines = lines()
    assert [line.split(":")[0].strip() for line in lines] == [
        "epoch 1/2 step 1/4",
        "epoch 1/2 step 2/4",
        "epoch 1/2 step 3/4",
    ]
    assert "loss 3.0000" in lines[1] and "loss 3.0000" in lines[2]  # running means 3, 3
    assert all("examples/s" in line and "ETA" in line for line in lines)


def test_no_line_within_the_interval_or_when_disabled(lines):
    for interval in (3600.0, None):
        checkpoints = _checkpoints(steps_per_epoch=4)
        progress = ProgressCallback(
            checkpoints, num_rows=32, batch_size=8, epochs=1, interval=interval
        )
        _run_epoch(progress, checkpoints, [1.0, 1.0, 1.0])
        assert lines() == []

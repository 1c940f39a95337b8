"""Keras callbacks of a resumable run: checkpoints with the training position, and progress.

:class:`TrainingState` holds, in variables saved with the model, where training stands (epoch,
batches done in it, global step), the running loss of the current epoch and the history of the
finished epochs. :class:`CheckpointCallback` keeps it current and writes a checkpoint of the
model, the optimiser, the frequency estimator and the state every ``every_steps`` steps and at
the end of every epoch. Restoring a checkpoint and building the batches from
``state.position`` (``recsampled.data.training_batches``) continues the run where it stopped.

Saving is atomic: ``tf.train.CheckpointManager`` writes the files of ``ckpt-N`` first and then
replaces the ``checkpoint`` index file (a temporary file renamed over it), and restoring reads
that index; a checkpoint cut short by a crash is never in the index, so it is never restored.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import tensorflow as tf

from recsampled.data.dataset import Position

logger = logging.getLogger(__name__)


class TrainingState(tf.Module):
    """Where training stands, saved in every checkpoint beside the model.

    Attributes:
        epoch: the current epoch (0-based); equals the number of epochs once training is done.
        batch: batches done in the current epoch.
        global_step: batches done in all.
        loss_sum: sum of the batch losses of the current epoch so far.
        history: JSON list of one record per finished epoch (``epoch``, ``loss``, ``steps``,
            and the ``val_*`` metrics of the epoch's logs, if any).
    """

    def __init__(self, name: str | None = None):
        super().__init__(name=name)
        with self.name_scope:
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.batch = tf.Variable(0, dtype=tf.int64, trainable=False, name="batch")
            self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="loss_sum")
            self.history = tf.Variable("[]", dtype=tf.string, trainable=False, name="history")

    @property
    def position(self) -> Position:
        """The next batch to train: ``(epoch, batch)``."""
        return Position(int(self.epoch.numpy()), int(self.batch.numpy()))

    def history_records(self) -> list[dict[str, Any]]:
        """The finished epochs, oldest first."""
        return json.loads(self.history.numpy().decode())


class CheckpointCallback(tf.keras.callbacks.Callback):
    """Keeps a :class:`TrainingState` current and checkpoints every N steps and every epoch.

    Args:
        manager: a ``tf.train.CheckpointManager`` whose checkpoint holds the model, optimiser
            and ``state`` (and anything else that must be restored together).
        state: the training state, already restored when resuming.
        steps_per_epoch: batches per epoch (a full epoch, not the rest of a resumed one).
        every_steps: also save every this many global steps; 0 saves at epoch ends only.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> state = TrainingState()
        >>> checkpoint = tf.train.Checkpoint(model=model, state=state)
        >>> manager = tf.train.CheckpointManager(checkpoint, tempfile.mkdtemp(), max_to_keep=2)
        >>> callback = CheckpointCallback(manager, state, steps_per_epoch=4, every_steps=2)
        >>> _ = model.fit(np.ones((8, 1)), np.ones((8, 1)), batch_size=2, callbacks=[callback],
        ...               verbose=0)
        >>> state.position, int(state.global_step.numpy()), manager.latest_checkpoint[-6:]
        (Position(epoch=1, batch=0), 4, 'ckpt-4')
    """

    def __init__(
        self,
        manager: tf.train.CheckpointManager,
        state: TrainingState,
        *,
        steps_per_epoch: int,
        every_steps: int = 0,
    ):
        super().__init__()
        self.manager = manager
        self.state = state
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        # Python mirrors of the state, written to the variables before each save.
        self.epoch, self.batch = state.position
        self.global_step = int(state.global_step.numpy())
        self.loss_sum = float(state.loss_sum.numpy())
        self.history = state.history_records()
        self.last_saved: str | None = manager.latest_checkpoint

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch != self.epoch:  # a fresh fit at another epoch: start it from its first batch
            self.epoch, self.batch, self.loss_sum = epoch, 0, 0.0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.batch += 1
        self.global_step += 1
        self.loss_sum += float((logs or {}).get("loss", float("nan")))
        last_of_epoch = self.batch == self.steps_per_epoch  # saved by on_epoch_end
        if self.every_steps and self.global_step % self.every_steps == 0 and not last_of_epoch:
            self.save()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        record = {
            "epoch": epoch + 1,
            "loss": self.loss_sum / max(self.batch, 1),
            "steps": self.batch,
        }
        # Validation metrics that an earlier callback wrote into the logs (ValidationCallback).
        record.update({k: float(v) for k, v in (logs or {}).items() if k.startswith("val_")})
        self.history.append(record)
        self.epoch, self.batch, self.loss_sum = epoch + 1, 0, 0.0
        self.save()

    def save(self) -> str:
        """Writes the state variables and a checkpoint numbered by the global step."""
        self.state.epoch.assign(self.epoch)
        self.state.batch.assign(self.batch)
        self.state.global_step.assign(self.global_step)
        self.state.loss_sum.assign(self.loss_sum)
        self.state.history.assign(json.dumps(self.history))
        self.last_saved = self.manager.save(checkpoint_number=self.global_step)
        return self.last_saved


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressCallback(tf.keras.callbacks.Callback):
    """Logs one line per epoch (loss, examples/s, elapsed time, ETA), and within long epochs a
    line every ``interval`` seconds (step, running loss, examples/s, ETA), to the
    ``recsampled.training.callbacks`` logger (INFO).

    Place it after :class:`CheckpointCallback` in the callback list: it reports the loss the
    checkpoint callback recorded for the epoch (the mean batch loss over the whole epoch, a
    resumed epoch included) and the checkpoint just written.

    Args:
        checkpoints: the run's :class:`CheckpointCallback`.
        num_rows: training rows (examples) per epoch.
        batch_size: B.
        epochs: the run's number of epochs.
        interval: seconds between two lines within an epoch (None: per epoch only).
    """

    def __init__(
        self,
        checkpoints: CheckpointCallback,
        *,
        num_rows: int,
        batch_size: int,
        epochs: int,
        interval: float | None = 30.0,
    ):
        super().__init__()
        self.interval = interval
        self._last_line = 0.0
        self.checkpoints = checkpoints
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.epochs = epochs
        self._started: float | None = None
        self._first_step = 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self._started is None:  # a resumed run calls fit twice
            self._started = time.perf_counter()
            self._first_step = self.checkpoints.global_step

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_started = self._last_line = time.perf_counter()
        self._epoch_first_batch = self.checkpoints.batch  # > 0 in a resumed epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        if self.interval is None or now - self._last_line < self.interval:
            return
        self._last_line = now
        steps_per_epoch = self.checkpoints.steps_per_epoch
        done = self.checkpoints.batch - self._epoch_first_batch
        if done <= 0 or self.checkpoints.batch >= steps_per_epoch:
            return  # the epoch line follows
        seconds = now - self._epoch_started
        remaining = self.epochs * steps_per_epoch - self.checkpoints.global_step
        logger.info(
            f"  epoch {self.checkpoints.epoch + 1}/{self.epochs} step "
            f"{self.checkpoints.batch}/{steps_per_epoch}: loss "
            f"{self.checkpoints.loss_sum / max(self.checkpoints.batch, 1):.4f}, "
            f"{done * self.batch_size / seconds:,.0f} examples/s, "
            f"ETA {_clock(remaining * seconds / done)}"
        )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        record = self.checkpoints.history[-1]
        steps_per_epoch = self.checkpoints.steps_per_epoch
        rows_done = min(steps_per_epoch * self.batch_size, self.num_rows)
        examples = rows_done - self._epoch_first_batch * self.batch_size
        seconds = max(now - self._epoch_started, 1e-9)
        steps = steps_per_epoch - self._epoch_first_batch
        remaining = self.epochs * steps_per_epoch - self.checkpoints.global_step
        # The latest epoch's pace, unless it is this process's first (which traces the step).
        if self.checkpoints.global_step - steps > self._first_step:
            eta = remaining * seconds / max(steps, 1)
        else:
            eta = remaining * (now - self._started) / max(steps, 1)
        saved = self.checkpoints.last_saved or "-"
        logger.info(
            f"epoch {epoch + 1}/{self.epochs}: loss {record['loss']:.4f}, "
            f"{examples / seconds:,.0f} examples/s, elapsed {_clock(now - self._started)}, "
            f"ETA {_clock(eta)} (checkpoint {saved.rsplit('/', 1)[-1]})"
        )

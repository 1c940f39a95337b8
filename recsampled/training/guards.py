"""Checks that stop a run before (or at once during) work that cannot succeed.

- :func:`check_split`: a train, test or validation part without rows, or a test part whose users
  are unknown to training, fails before training, naming the split and the file.
- :func:`check_weights`: all-zero or non-finite weights (the loss would be 0, or NaN, at every
  step).
- :func:`check_memory`: the embedding tables (and their optimiser slots) estimated up front,
  ``(num_users + num_items) · D · 4`` bytes per copy, against the memory available.
- :class:`FiniteLossGuard`: a Keras callback that raises a
  :class:`~recsampled.errors.TrainingError` at the first batch whose loss is NaN or inf, naming
  the step and the likely cause; placed before the checkpoint callback, it stops training before
  anything of that step is saved. A step can also make the weights non-finite while its own
  loss (computed before the update) was finite, so at every step that is checkpointed (every
  ``every_steps`` and at epoch ends) it checks the model's weights too.

Example:
    >>> estimate_table_bytes(num_users=1000, num_items=2000, embedding_dim=32, optimizer="adam")
    1152000
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from recsampled.errors import ConfigError, DataError, TrainingError

__all__ = [
    "FiniteLossGuard",
    "available_memory",
    "check_before_training",
    "check_memory",
    "check_split",
    "check_weights",
    "estimate_table_bytes",
    "likely_nan_causes",
    "nan_guard",
]

logger = logging.getLogger(__name__)

#: Copies of each embedding table an optimiser keeps beside the weights (its slots).
OPTIMIZER_SLOTS = {"adam": 2, "lazy_adam": 2, "adagrad": 1, "sgd": 0}


def _source(data: Any) -> str:
    if getattr(data, "source", "file") != "file":
        return "the synthetic log"
    test_path = getattr(data.split, "test_path", None)
    return f"{data.path}" + (f" and {test_path}" if test_path else "")


def check_split(data: Any, split: Any, *, validation: Any | None = None) -> None:
    """Raises if a part of the split is empty or its test users are unknown to training.

    Args:
        data: the config's ``data`` section (for the split's name and the files).
        split: the train/test :class:`~recsampled.data.splits.Split`.
        validation: the validation split carved from the training part, if any.

    Raises:
        DataError: naming the split (``data.split.kind``), the part and the file.
    """
    kind, source = data.split.kind, _source(data)
    parts = [("training", split.train), ("test", split.test)]
    if validation is not None:
        parts += [("fit (training minus validation)", validation.train)]
        parts += [("validation", validation.test)]
    for name, part in parts:
        if len(part) == 0:
            raise DataError(
                f"The {name} part of split {kind!r} of {source} is empty: no user has a {name} "
                f"row. Nothing would be trained or evaluated. Check data.split (e.g. a "
                "time_cut cutoff outside the timestamps, or users with a single interaction "
                "under leave_last_out), or the data.",
                source=source,
            )
    users = np.unique(np.asarray(split.test.user_ids))
    if len(users) and users.min() >= len(split.train.users):
        raise DataError(
            f"The test part of split {kind!r} of {source} has no user of the training part: "
            "every test user would be unknown to the model.",
            source=source,
        )
    if len(split.train.items) < 2:
        raise DataError(
            f"The training part of split {kind!r} of {source} has "
            f"{len(split.train.items)} distinct item(s); ranking needs at least 2.",
            source=source,
        )


def check_weights(data: Any, weights: np.ndarray | None) -> None:
    """Raises for weights (``data.weight_col``) that are all zero or not finite.

    Raises:
        DataError: naming the weight column and the file.
    """
    if weights is None or len(weights) == 0:
        return
    weights = np.asarray(weights, np.float64)
    column, source = getattr(data, "weight_col", None) or "weight", _source(data)
    bad = ~np.isfinite(weights)
    if bad.any():
        raise DataError(
            f"The weight column {column!r} of {source} has {int(bad.sum())} non-finite "
            f"value(s) (NaN or inf), e.g. at training row {int(np.flatnonzero(bad)[0])}; the "
            "loss would be NaN.",
            source=source,
        )
    if not np.any(weights):
        raise DataError(
            f"Every weight in column {column!r} of {source} is 0: the loss would be 0 at every "
            "step and nothing would be learnt. Check data.weight_col (or remove it).",
            source=source,
        )


def estimate_table_bytes(
    *, num_users: int, num_items: int, embedding_dim: int, optimizer: str
) -> int:
    """Bytes of the two float32 embedding tables and the optimiser's copies of them."""
    copies = 1 + OPTIMIZER_SLOTS.get(optimizer, 2)
    return (num_users + num_items) * embedding_dim * 4 * copies


def available_memory() -> int | None:
    """Bytes of memory available now (``/proc/meminfo``'s MemAvailable, or the free pages),
    or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(config: Any, *, num_users: int, num_items: int) -> int:
    """Raises if the embedding tables cannot fit in the memory available; returns the estimate.

    Raises:
        ConfigError: naming ``model.embedding_dim``, the estimated and the available bytes.
    """
    dim, optimizer = config.model.embedding_dim, config.training.optimizer
    needed = estimate_table_bytes(
        num_users=num_users, num_items=num_items, embedding_dim=dim, optimizer=optimizer
    )
    available = available_memory()
    if available is not None and needed > available:
        copies = 1 + OPTIMIZER_SLOTS.get(optimizer, 2)
        raise ConfigError(
            f"`model.embedding_dim` is too large for this machine: the embedding tables need "
            f"about {needed:,} bytes ({needed / 2**30:.1f} GiB: ({num_users:,} users + "
            f"{num_items:,} items) x {dim:,} x 4 bytes x {copies} copies with "
            f"optimizer={optimizer!r}), but {available:,} bytes ({available / 2**30:.1f} GiB) "
            f"are available. Lower model.embedding_dim. Received: model.embedding_dim={dim}."
        )
    return needed


def likely_nan_causes(config: Any) -> str:
    """The settings most likely to make the loss NaN or inf, in words."""
    training, task = config.training, config.task
    causes = []
    if training.learning_rate > (1.0 if training.optimizer in ("sgd", "adagrad") else 0.1):
        causes.append(f"training.learning_rate={training.learning_rate!r} is large")
    if task.temperature is not None and task.temperature < 0.01:
        causes.append(f"task.temperature={task.temperature!r} is small")
    if not causes:
        causes.append(f"too large a training.learning_rate ({training.learning_rate!r})")
    return " or ".join(causes) + ", or extreme weights or ratings in the data"


class FiniteLossGuard(tf.keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or inf (module docstring).

    Args:
        likely_cause: words for the message (:func:`likely_nan_causes`).
        checkpoints: the checkpoint folder, to name what is kept.
        every_steps: the checkpoint callback's ``every_steps``: the weights are checked at
            those global steps and at epoch ends (0: epoch ends only).

    Raises:
        TrainingError: from ``fit``, at that batch, before later callbacks (checkpoints) run.
    """

    def __init__(
        self,
        *,
        likely_cause: str = "",
        checkpoints: str | os.PathLike | None = None,
        every_steps: int = 0,
    ):
        super().__init__()
        self.likely_cause = likely_cause
        self.checkpoints = checkpoints
        self.every_steps = every_steps
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._stop(batch, f"the loss is {float(loss)}")
        if self.every_steps:
            step = int(self.model.optimizer.iterations.numpy())
            if step % self.every_steps == 0:
                self._check_weights(batch)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._check_weights(None)

    def _check_weights(self, batch: int | None) -> None:
        for variable in self.model.trainable_variables:
            if not bool(tf.reduce_all(tf.math.is_finite(variable))):
                self._stop(batch, f"the weights {variable.name} are no longer finite")

    def _stop(self, batch: int | None, what: str) -> None:
        step = int(self.model.optimizer.iterations.numpy())
        where = f"epoch {self._epoch + 1}" + ("" if batch is None else f", batch {batch + 1}")
        kept = (
            None if self.checkpoints is None else tf.train.latest_checkpoint(str(self.checkpoints))
        )
        raise TrainingError(
            f"Training stopped at step {step} ({where}): {what}. "
            f"Likely cause: {self.likely_cause or 'a large learning rate'}. "
            "Nothing of this step was saved (no towers written); "
            + (f"the last good checkpoint is {kept}." if kept else "no checkpoint was kept.")
            + " Fix the setting and start over with --force.",
            step=step,
        )


def check_before_training(
    config: Any, split: Any, *, fit_log: Any, validation: Any | None = None
) -> None:
    """:func:`check_split`, :func:`check_weights` (of the rows to fit) and
    :func:`check_memory`: the checks a run makes after loading its data, before any work."""
    check_split(config.data, split, validation=validation)
    check_weights(config.data, fit_log.weights)
    check_memory(config, num_users=len(split.train.users), num_items=len(split.train.items))


def nan_guard(config: Any, checkpoints: str | os.PathLike | None = None) -> FiniteLossGuard:
    """The :class:`FiniteLossGuard` of a run (its likely causes from ``config``)."""
    return FiniteLossGuard(
        likely_cause=likely_nan_causes(config),
        checkpoints=checkpoints,
        every_steps=config.training.checkpoint_every_steps,
    )

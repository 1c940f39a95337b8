"""Training runs: ``Model.fit`` with checkpoints every N steps and every epoch, and resume.

- :func:`train` (:mod:`recsampled.training.pipeline`): config -> run directory (config,
  checkpoints, vocabularies, towers, history, metrics); resumes from the last checkpoint.
- :class:`CheckpointCallback`, :class:`ProgressCallback`, :class:`TrainingState`
  (:mod:`recsampled.training.callbacks`): the callbacks, usable with any ``fit``.
- :func:`training_batches` (:mod:`recsampled.training.batches`): batches addressed by
  ``(epoch, batch)``, so that a resumed run continues exactly.
- :class:`RunDirectory` and atomic writers (:mod:`recsampled.training.outputs`).
"""

# ruff: noqa: E402 (TF_USE_LEGACY_KERAS must be set before the imports below)
from recsampled._keras_env import ensure_legacy_keras

ensure_legacy_keras()

from recsampled.training.batches import Position, steps_per_epoch, training_batches
from recsampled.training.build import build_model, load_split
from recsampled.training.callbacks import CheckpointCallback, ProgressCallback, TrainingState
from recsampled.training.outputs import (
    RunDirectory,
    RunDirectoryError,
    atomic_directory,
    load_tower,
    save_towers,
    write_atomic,
    write_json,
)
from recsampled.training.pipeline import TrainResult, train

__all__ = [
    "CheckpointCallback",
    "Position",
    "ProgressCallback",
    "RunDirectory",
    "RunDirectoryError",
    "TrainResult",
    "TrainingState",
    "atomic_directory",
    "build_model",
    "load_split",
    "load_tower",
    "save_towers",
    "steps_per_epoch",
    "train",
    "training_batches",
    "write_atomic",
    "write_json",
]

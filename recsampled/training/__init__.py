"""Reusable Keras pieces of a resumable run: checkpoints with the training position, progress.

- :class:`CheckpointCallback`, :class:`ProgressCallback`, :class:`TrainingState`
  (:mod:`recsampled.training.callbacks`): the callbacks, usable with any ``fit``.
- :func:`training_batches`, :class:`Position`, :func:`steps_per_epoch`: batches addressed by
  ``(epoch, batch)``, so that a resumed run continues exactly (defined in
  :mod:`recsampled.data.dataset`, the one ``tf.data`` builder).

A whole run from a config (``recsampled train``) is :func:`recsampled.runs.train`.
"""

# ruff: noqa: E402 (TF_USE_LEGACY_KERAS must be set before the imports below)
from recsampled._keras_env import ensure_legacy_keras

ensure_legacy_keras()

from recsampled.data.dataset import Position, steps_per_epoch, training_batches
from recsampled.training.callbacks import CheckpointCallback, ProgressCallback, TrainingState

__all__ = [
    "CheckpointCallback",
    "Position",
    "ProgressCallback",
    "TrainingState",
    "steps_per_epoch",
    "training_batches",
]

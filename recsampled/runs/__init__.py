"""A run from config to artifacts: build, train, the run directory, export, evaluate.

- :func:`build_model`, :func:`load_split` (``build.py``): the config's sections -> data and a
  compiled two-tower model. Tests: ``tests/runs/test_pipeline.py``.
- :func:`train` (``pipeline.py``): config -> run directory (config, checkpoints, vocabularies,
  towers, history, metrics); resumes from the last checkpoint. Tests: ``tests/runs``.
- :class:`RunDirectory`, :func:`load_run`, :class:`TrainedRun` (``directory.py``): the run
  directory, written and read in one module. Tests: ``tests/runs/test_directory.py``.
- :func:`export_run` (``export.py``): a run -> an artifact folder (``recsampled export``).
- :func:`evaluate_run` (``evaluate.py``): test-split metrics exact, through an artifact's index,
  and for popularity (``recsampled evaluate``). Tests: ``tests/test_cli_serving.py``.

Imports: ``runs`` uses ``data``, ``evaluation``, ``index``, ``models``, ``training`` and
``config``; none of them imports ``runs`` (``tests/test_layout.py``).
"""

# ruff: noqa: E402 (TF_USE_LEGACY_KERAS must be set before the imports below)
from recsampled._keras_env import ensure_legacy_keras

ensure_legacy_keras()

from recsampled.errors import RunDirectoryError, RunError
from recsampled.runs.build import build_model, load_split
from recsampled.runs.directory import RunDirectory, TrainedRun, load_run
from recsampled.runs.evaluate import RunEvaluation, evaluate_run
from recsampled.runs.export import export_run
from recsampled.runs.pipeline import TrainResult, train

__all__ = [
    "RunDirectory",
    "RunDirectoryError",
    "RunError",
    "RunEvaluation",
    "TrainResult",
    "TrainedRun",
    "build_model",
    "evaluate_run",
    "export_run",
    "load_run",
    "load_split",
    "train",
]

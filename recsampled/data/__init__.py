"""Interaction logs: read, validate, encode, split, generate, and feed to ``tf.data``.

- :func:`read_interactions` (``interactions.py``, ``readers.py``): CSV, TSV, Parquet, MovieLens
  files or in-memory tables to :class:`Interactions`: int32 indices, popularity-ordered
  :class:`Vocabulary` objects (``vocab.py``), item counts for the samplers, a :class:`LoadReport`.
  Bad data raises :class:`DataError` (``errors.py``) naming file, line, column and value, or is
  skipped and reported. Tests: ``tests/data/test_readers.py``, ``test_bad_input.py``,
  ``test_interactions.py``, ``test_vocab.py``.
- Splits (``splits.py``): :func:`leave_last_out`, :func:`random_holdout`, :func:`time_cut` and
  :func:`read_split` (train and test files split beforehand), each a :class:`Split` with a
  :class:`SplitReport`. Test: ``tests/data/test_splits.py``.
- ``synthetic.generate`` (``synthetic.py``): a seeded log with Zipf popularity and planted taste
  clusters, from a few hundred rows to 10^7. Test: ``tests/data/test_synthetic.py``.
- The one ``tf.data`` builder (``dataset.py``): :func:`training_batches` addressed by
  :class:`Position` ``(epoch, batch)`` (resumable), and :func:`make_dataset` (one pass for
  ``fit``). Tests: ``tests/data/test_dataset.py``, ``test_batches.py``. Imported on first use,
  so that ``import recsampled.data`` does not import TensorFlow.
- :func:`read_item_titles` (``metadata.py``): item titles from MovieLens files or a CSV.
- :func:`read_side_features` (``features.py``): categorical and numeric columns of a user or
  item table, aligned to a :class:`Vocabulary`, for the towers. Test:
  ``tests/data/test_features.py``.
"""

from __future__ import annotations

from typing import Any

from recsampled.data import synthetic
from recsampled.data.errors import BadRow, DataError
from recsampled.data.features import SideFeatures, read_side_features
from recsampled.data.interactions import Interactions, LoadReport, read_interactions
from recsampled.data.metadata import read_item_titles
from recsampled.data.splits import (
    Split,
    SplitReport,
    leave_last_out,
    random_holdout,
    read_split,
    time_cut,
)
from recsampled.data.vocab import Vocabulary

__all__ = [
    "BadRow",
    "DataError",
    "Interactions",
    "LoadReport",
    "Position",
    "Split",
    "SplitReport",
    "SideFeatures",
    "Vocabulary",
    "leave_last_out",
    "make_dataset",
    "read_item_titles",
    "random_holdout",
    "read_interactions",
    "read_side_features",
    "read_split",
    "steps_per_epoch",
    "synthetic",
    "time_cut",
    "training_batches",
]

_DATASET_NAMES = ("Position", "make_dataset", "steps_per_epoch", "training_batches")


def __getattr__(name: str) -> Any:
    """The ``tf.data`` names, imported (with TensorFlow) on first use."""
    if name in _DATASET_NAMES:
        from recsampled.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

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
- :func:`make_dataset` (``dataset.py``): training batches as a ``tf.data.Dataset``. Test:
  ``tests/data/test_dataset.py``.
"""

from recsampled.data import synthetic
from recsampled.data.dataset import make_dataset
from recsampled.data.errors import BadRow, DataError
from recsampled.data.interactions import Interactions, LoadReport, read_interactions
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
    "Split",
    "SplitReport",
    "Vocabulary",
    "leave_last_out",
    "make_dataset",
    "random_holdout",
    "read_interactions",
    "read_split",
    "synthetic",
    "time_cut",
]

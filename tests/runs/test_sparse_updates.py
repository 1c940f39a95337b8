"""The sparse optimisers in a real two-tower model: a ``fit`` step moves only the batch's rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from recsampled.config import Config
from recsampled.data.dataset import training_batches
from recsampled.runs import build_model, load_split
from tests.runs.conftest import TINY


def _embedding_tables(model) -> list[tf.Variable]:
    return [v for v in model.trainable_variables if v.shape[0] in (200, 300) and v.shape[1] == 8]


def _one_step(optimizer: str, row_l2: float):
    values = json.loads(json.dumps(TINY))
    values["training"].update(optimizer=optimizer, row_l2=row_l2)
    config = Config.from_dict(values)
    train = load_split(config.data).train
    model = build_model(config, train)
    tables = _embedding_tables(model)
    before = [t.numpy().copy() for t in tables]
    batch = next(iter(training_batches(train, batch_size=32, seed=0)))
    model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    users = np.unique(batch["user_id"].numpy())
    items = np.unique(batch["item_id"].numpy())
    return tables, before, users, items


@pytest.mark.parametrize(
    "optimizer, row_l2", [("sgd", 0.0), ("sgd", 0.1), ("adagrad", 0.1), ("lazy_adam", 0.1)]
)
def test_only_the_batch_rows_move(optimizer, row_l2):
    tables, before, users, items = _one_step(optimizer, row_l2)
    assert len(tables) == 2
    for table, start in zip(tables, before, strict=True):
        touched = users if table.shape[0] == 200 else items
        untouched = np.setdiff1d(np.arange(table.shape[0]), touched)
        after = table.numpy()
        np.testing.assert_array_equal(after[untouched], start[untouched])
        assert np.all(np.any(after[touched] != start[touched], axis=1))

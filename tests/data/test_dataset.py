"""tf.data batches: every row once per pass, reshuffled between passes, reproducible with a seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from recsampled.data import read_interactions
from recsampled.data.dataset import make_dataset
from recsampled.data.synthetic import generate


@pytest.fixture(scope="module")
def log():
    return generate(num_users=50, num_items=40, num_interactions=1_000, seed=0).to_interactions()


def _rows(dataset) -> np.ndarray:
    """(user, item) keys of every element of one pass, in order."""
    keys = [b["user_id"].numpy().astype(np.int64) * 1000 + b["item_id"].numpy() for b in dataset]
    return np.concatenate(keys)


def test_one_pass_visits_every_row_once(log):
    dataset = make_dataset(log, batch_size=64, seed=1)
    spec = dataset.element_spec
    assert spec["user_id"].dtype == tf.int32 and spec["item_id"].dtype == tf.int32
    batches = list(dataset)
    assert [len(b["user_id"]) for b in batches] == [64] * (len(log) // 64) + [len(log) % 64]
    expected = log.user_ids.astype(np.int64) * 1000 + log.item_ids
    np.testing.assert_array_equal(np.sort(_rows(batches)), np.sort(expected))


def test_shuffling_is_seeded_and_differs_between_passes(log):
    dataset = make_dataset(log, batch_size=100, seed=3)
    first, second = _rows(dataset), _rows(dataset)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, _rows(make_dataset(log, batch_size=100, seed=3)))
    assert not np.array_equal(first, _rows(make_dataset(log, batch_size=100, seed=4)))


def test_no_shuffle_keeps_row_order_and_drop_remainder(log):
    rows = _rows(make_dataset(log, batch_size=100, shuffle=False))
    np.testing.assert_array_equal(rows, log.user_ids.astype(np.int64) * 1000 + log.item_ids)
    dropped = list(make_dataset(log, batch_size=300, drop_remainder=True))
    assert [len(b["item_id"]) for b in dropped] == [300] * (len(log) // 300)


def test_weights():
    frame = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [4, 5, 6], "w": [0.5, 1.0, 2.0]})
    log = read_interactions(frame, weight_col="w")
    (batch,) = list(make_dataset(log, batch_size=8, shuffle=False, with_weights=True))
    np.testing.assert_array_equal(batch["weight"].numpy(), [0.5, 1.0, 2.0])
    with pytest.raises(ValueError, match="`with_weights=True` needs interaction weights"):
        make_dataset(read_interactions(frame), batch_size=8, with_weights=True)
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer"):
        make_dataset(log, batch_size=0)

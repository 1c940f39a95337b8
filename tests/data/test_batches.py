"""Batches addressed by (epoch, batch): a resumed stream is the tail of the uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest

from recsampled.data import Interactions, Position, Vocabulary, steps_per_epoch, training_batches


def _log(num_rows: int = 23) -> Interactions:
    rows = np.arange(num_rows, dtype=np.int32)
    return Interactions(
        user_ids=rows % 5,
        item_ids=rows,  # item id = row number, so batches show which rows they hold
        users=Vocabulary(np.arange(5)),
        items=Vocabulary(np.arange(num_rows)),
        weights=np.linspace(0, 1, num_rows, dtype=np.float32),
    )


def _items(dataset) -> list[list[int]]:
    return [batch["item_id"].numpy().tolist() for batch in dataset]


def test_steps_per_epoch():
    # 23 rows in batches of 5: 4 full batches and one of 3 (dropped with drop_remainder).
    assert steps_per_epoch(23, 5) == 5
    assert steps_per_epoch(23, 5, drop_remainder=True) == 4
    assert steps_per_epoch(25, 5) == 5


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_resumed_stream_is_the_tail_of_the_uninterrupted_one(drop_remainder):
    log = _log()
    options = dict(batch_size=5, seed=7, end_epoch=3, drop_remainder=drop_remainder)
    full = _items(training_batches(log, start=Position(0, 0), **options))
    per_epoch = steps_per_epoch(len(log), 5, drop_remainder=drop_remainder)
    assert len(full) == 3 * per_epoch
    for start in (Position(0, 3), Position(1, 0), Position(1, 2), Position(2, per_epoch - 1)):
        tail = _items(training_batches(log, start=start, **options))
        assert tail == full[start.epoch * per_epoch + start.batch :]


def test_each_epoch_is_a_new_permutation_of_the_rows():
    log = _log()
    batches = _items(training_batches(log, batch_size=5, seed=0, start=Position(0, 0), end_epoch=2))
    epochs = [sum(batches[:5], []), sum(batches[5:], [])]
    for rows in epochs:
        assert sorted(rows) == list(range(23))
    assert epochs[0] != epochs[1]
    same_seed = _items(
        training_batches(log, batch_size=5, seed=0, start=Position(1, 0), end_epoch=2)
    )
    other_seed = _items(
        training_batches(log, batch_size=5, seed=1, start=Position(1, 0), end_epoch=2)
    )
    assert sum(same_seed, []) == epochs[1] != sum(other_seed, [])


def test_without_shuffle_rows_keep_log_order_and_weights_follow():
    log = _log()
    dataset = training_batches(
        log, batch_size=10, seed=0, start=Position(0, 1), end_epoch=1, shuffle=False,
        with_weights=True,
    )  # fmt: skip
    batches = list(dataset)
    assert [b["item_id"].numpy().tolist() for b in batches] == [list(range(10, 20)), [20, 21, 22]]
    np.testing.assert_array_equal(batches[1]["weight"].numpy(), log.weights[20:])
    assert int(dataset.cardinality()) == 2


def test_bad_arguments():
    log = _log()
    with pytest.raises(ValueError, match="`start` must lie within"):
        training_batches(log, batch_size=5, seed=0, start=Position(0, 5), end_epoch=2)
    with pytest.raises(ValueError, match="`batch_size` must be at most the number of training"):
        training_batches(
            log, batch_size=50, seed=0, start=Position(0, 0), end_epoch=1, drop_remainder=True
        )
    log = _log()
    no_weights = Interactions(log.user_ids, log.item_ids, log.users, log.items)
    with pytest.raises(ValueError, match="needs interaction weights"):
        training_batches(no_weights, batch_size=5, seed=0, start=Position(0, 0), end_epoch=1,
                         with_weights=True)  # fmt: skip


def test_max_steps_per_epoch_takes_the_first_batches_of_each_epochs_order():
    log = _log()
    options = dict(batch_size=5, seed=3, start=Position(0, 0), end_epoch=2)
    full = _items(training_batches(log, **options))  # 5 batches per epoch
    capped = training_batches(log, max_steps_per_epoch=2, **options)
    assert int(capped.cardinality()) == 4
    assert _items(capped) == full[0:2] + full[5:7]
    resumed = _items(training_batches(log, **{**options, "start": Position(0, 1)},
                                      max_steps_per_epoch=2))  # fmt: skip
    assert resumed == full[1:2] + full[5:7]
    assert steps_per_epoch(23, 5, limit=2) == 2 and steps_per_epoch(23, 5, limit=9) == 5
    with pytest.raises(ValueError, match="`limit`"):
        steps_per_epoch(23, 5, limit=0)


def test_batches_are_prefetched_without_tf_data_autotuning():
    # Autotuning's thread made the end of every iterator wait for its doubling sleep (the
    # docstring of recsampled.data.dataset.prefetched); both builders turn it off, and a
    # dataset derived from theirs (map, cache) keeps the option.
    from recsampled.data import make_dataset

    log = _log()
    for dataset in (training_batches(log, batch_size=5, seed=0), make_dataset(log, batch_size=5)):
        assert dataset.options().autotune.enabled is False
        assert dataset.map(lambda b: b).cache().options().autotune.enabled is False
        assert sum(len(b["item_id"]) for b in dataset) == len(log)

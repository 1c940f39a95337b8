"""Splits: leave-last-out, random per-user holdout, global time cut, and files split beforehand.
Hand-worked cases, invariants on random logs, and unseen ids reported rather than crashing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from recsampled.data import DataError, read_interactions
from recsampled.data.splits import (
    leave_last_out,
    random_holdout,
    read_split,
    time_cut,
    validation_split,
)
from recsampled.data.synthetic import SIZES, generate

# user, item, timestamp. User 1: x@1, y@3, z@2 -> last is y. User 2: x@5, z@5 (tie: the later
# row, z, is last). User 3: one row -> stays in train. Item w is only user 4's last item -> it is
# unseen in training and its test row is removed.
LOG = pd.DataFrame(
    [
        (1, "x", 1),
        (1, "y", 3),
        (1, "z", 2),
        (2, "x", 5),
        (2, "z", 5),
        (3, "x", 9),
        (4, "y", 1),
        (4, "w", 2),
    ],
    columns=["user_id", "item_id", "ts"],
)


def _pairs(interactions) -> set[tuple]:
    frame = interactions.to_frame(original_ids=True)
    return set(zip(frame.user_id, frame.item_id, strict=True))


def test_leave_last_out_by_hand():
    log = read_interactions(LOG, timestamp_col="ts")
    split = leave_last_out(log)
    assert _pairs(split.test) == {(1, "y"), (2, "z")}
    assert _pairs(split.train) == {(1, "x"), (1, "z"), (2, "x"), (3, "x"), (4, "y")}
    report = split.report
    assert (report.test_rows, report.test_users, report.users_without_test) == (2, 2, 1)
    assert (report.unknown_user_rows, report.unknown_item_rows) == (0, 1)
    assert report.unknown_examples == ("item 'w'",)
    assert split.train.items is log.items and split.test.users is log.users
    assert "1 rows of items unseen in training (e.g. item 'w')" in report.summary()


def test_leave_last_out_invariants():
    log = generate(**SIZES["tiny"], seed=3).to_interactions()
    split = leave_last_out(log, num_test=2)
    assert len(split.train) + len(split.test) + split.report.unknown_item_rows == len(log)
    # Every test row is at least as late as every training row of its user.
    last_train = np.full(log.num_users, np.iinfo(np.int64).min)
    np.maximum.at(last_train, split.train.user_ids, split.train.timestamps)
    assert np.all(split.test.timestamps >= last_train[split.test.user_ids])
    assert np.bincount(split.test.user_ids).max() <= 2


def test_random_holdout_fractions_and_seed():
    log = generate(**SIZES["tiny"], seed=0).to_interactions()
    a = random_holdout(log, test_fraction=0.25, seed=7)
    b = random_holdout(log, test_fraction=0.25, seed=7)
    c = random_holdout(log, test_fraction=0.25, seed=8)
    np.testing.assert_array_equal(a.test.item_ids, b.test.item_ids)
    assert not np.array_equal(a.test.item_ids, c.test.item_ids)
    counts = log.user_counts
    expected = np.clip(np.floor(0.25 * counts + 0.5), 1, counts - 1)
    held = np.bincount(a.test.user_ids, minlength=log.num_users) + np.bincount(
        log.user_ids[_unknown_rows(log, a)], minlength=log.num_users
    )
    np.testing.assert_array_equal(held, expected)
    assert a.report.method == "random_holdout(test_fraction=0.25, seed=7)"


def _unknown_rows(log, split) -> np.ndarray:
    """Rows of the log in neither part of the split (removed unseen test rows)."""
    key = log.user_ids.astype(np.int64) * log.num_items + log.item_ids
    kept = np.concatenate(
        [
            p.user_ids.astype(np.int64) * log.num_items + p.item_ids
            for p in (split.train, split.test)
        ]
    )
    return ~np.isin(key, kept)


def test_time_cut():
    log = read_interactions(LOG, timestamp_col="ts")
    split = time_cut(log, cutoff=3)
    assert _pairs(split.test) == {(1, "y")}
    assert split.report.unknown_user_rows == 3  # users 2 and 3 have no row before the cut
    assert split.report.unknown_examples == ("user 2", "user 3")
    assert split.report.users_without_test == 1  # user 4
    by_fraction = time_cut(generate(**SIZES["tiny"]).to_interactions(), test_fraction=0.2)
    total = by_fraction.report.train_rows + by_fraction.report.test_rows
    assert 0.1 < by_fraction.report.test_rows / total < 0.25
    assert by_fraction.train.timestamps.max() < by_fraction.test.timestamps.min()


@pytest.mark.parametrize(
    "split, kwargs, message",
    [
        (leave_last_out, {}, "`leave_last_out` needs timestamps"),
        (time_cut, {"cutoff": 1}, "`time_cut` needs timestamps"),
        (leave_last_out, {"num_test": 0}, "`num_test` must be a positive integer"),
        (random_holdout, {"test_fraction": 1.0}, r"`test_fraction` must be a number in \(0, 1\)"),
        (random_holdout, {"seed": 1.5}, "`seed` must be None or an integer"),
    ],
)
def test_bad_split_arguments(split, kwargs, message):
    log = read_interactions(LOG.drop(columns="ts"))  # no timestamps
    with pytest.raises(ValueError, match=message):
        split(log, **kwargs)


def test_time_cut_arguments():
    log = read_interactions(LOG, timestamp_col="ts")
    with pytest.raises(ValueError, match="exactly one of `cutoff` and `test_fraction`"):
        time_cut(log)
    with pytest.raises(ValueError, match="`cutoff` must be a number"):
        time_cut(log, cutoff="5")


def test_read_split_reports_unknown_ids(write):
    train = write("train.csv", "user_id,item_id,r\n1,10,5\n1,11,4\n2,10,3\n2,12,5\n")
    test = write(
        "test.csv",
        "user_id,item_id,r\n"
        "1,12,5\n"  # kept
        "2,11,4\n"  # kept
        "9,10,5\n"  # unknown user
        "1,99,5\n"  # unknown item
        "1,12,5\n"  # duplicate
        "2,10,1\n"  # below min_rating
        "1,10,5\n",  # repeats a training pair (kept, reported)
    )
    split = read_split(train, test, rating_col="r", min_rating=3)
    report = split.report
    assert (report.unknown_user_rows, report.unknown_item_rows) == (1, 1)
    assert report.unknown_examples == ("user 9", "item 99")
    assert report.test_rows == 3 and report.test_rows_seen_in_train == 1
    assert report.test_load.below_min_rating == 1 and report.test_load.duplicates_removed == 1
    assert _pairs(split.test) == {(1, 12), (2, 11), (1, 10)}
    assert split.test.items is split.train.items


def test_read_split_with_text_ids_in_test(write):
    train = write("train.csv", "user_id,item_id\n1,10\n2,10\n2,11\n")
    # Mostly text ids: read as text; "1" still matches the integer id 1 of training.
    text = write("test.csv", "user_id,item_id\nu1,10\nu2,11\n1,11\n")
    split = read_split(train, text)
    assert _pairs(split.test) == {(1, 11)} and split.report.unknown_user_rows == 2
    # One stray text id among integers is a bad row of the test file: raised, or skipped.
    stray = write("stray.csv", "user_id,item_id\n1,11\n2,11\nu7,10\n")
    with pytest.raises(DataError, match=r"stray.csv, line 4, column 'user_id'"):
        read_split(train, stray)
    skipped = read_split(train, stray, on_bad_rows="skip")
    assert skipped.report.test_load.rows_skipped == 1 and skipped.report.test_rows == 2


def test_read_split_keeps_text_ids_verbatim(write):
    train = write("train.csv", "user_id,item_id\n1,007\n2,007\n2,7\n")
    test = write("test.csv", "user_id,item_id\n1,7\n2,007\n")
    split = read_split(train, test, id_dtype="str")
    assert _pairs(split.test) == {("1", "7"), ("2", "007")}


def test_read_split_with_nothing_known(write):
    train = write("train.csv", "user_id,item_id\n1,10\n")
    test = write("test.csv", "user_id,item_id\n2,20\n")
    with pytest.raises(DataError, match="no test row has a user and an item known in training"):
        read_split(train, test)


def test_movielens_leave_last_out(movielens_100k):
    split = leave_last_out(read_interactions(movielens_100k, min_rating=4))
    report = split.report
    assert report.train_rows + report.test_rows + report.unknown_item_rows == 55_375
    assert report.test_users + report.unknown_item_rows + report.users_without_test == 942


def _row_keys(interactions) -> set[tuple]:
    """(user, item, timestamp) of every row: the identity of a row of a deduplicated log."""
    timestamps = interactions.timestamps
    stamps = timestamps if timestamps is not None else np.zeros(len(interactions))
    return set(zip(interactions.user_ids, interactions.item_ids, stamps, strict=True))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("timestamps", [True, False])
def test_validation_is_carved_from_train_and_disjoint_from_train_and_test(seed, timestamps):
    log = generate(**SIZES["tiny"], seed=seed).to_interactions()
    outer = leave_last_out(log)
    train = outer.train if timestamps else dataclasses.replace(outer.train, timestamps=None)
    fit, validation, report = validation_split(train, per_user=2, fraction=0.2, seed=seed)
    assert len(fit) + len(validation) + report.unknown_item_rows == len(train)
    fit_rows, validation_rows = _row_keys(fit), _row_keys(validation)
    test_rows = _row_keys(
        outer.test if timestamps else dataclasses.replace(outer.test, timestamps=None)
    )
    assert len(fit_rows) == len(fit) and len(validation_rows) == len(validation) > 0
    assert not fit_rows & validation_rows
    assert (fit_rows | validation_rows) <= _row_keys(train)
    assert not validation_rows & test_rows and not fit_rows & test_rows
    assert fit.num_items == log.num_items and validation.num_users == log.num_users
    assert report.method.startswith("validation: ")
    if timestamps:  # each user's last interactions of the training part, at most per_user
        assert np.bincount(validation.user_ids).max() <= 2
        last_fit = np.full(log.num_users, np.iinfo(np.int64).min)
        np.maximum.at(last_fit, fit.user_ids, fit.timestamps)
        assert np.all(validation.timestamps >= last_fit[validation.user_ids])
    else:  # a seeded random holdout: another seed, other rows
        other = validation_split(train, fraction=0.2, seed=seed + 10).test
        assert _row_keys(other) != validation_rows
        again = validation_split(train, fraction=0.2, seed=seed).test
        assert _row_keys(again) == validation_rows


def test_validation_split_arguments():
    train = leave_last_out(generate(**SIZES["tiny"], seed=0).to_interactions()).train
    with pytest.raises(ValueError, match="per_user"):
        validation_split(train, per_user=0)
    with pytest.raises(ValueError, match="fraction"):
        validation_split(train, fraction=1.5)

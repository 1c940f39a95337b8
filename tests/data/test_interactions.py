"""Filtering and encoding: threshold, de-duplication, k-core (against a plain-Python reference),
popularity order, report arithmetic, and the Interactions container."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsampled.data import DataError, Interactions, Vocabulary, filters, read_interactions
from recsampled.data.filters import first_occurrences, k_core


def _reference_k_core(pairs: list[tuple[int, int]], k: int) -> list[int]:
    """Row indices kept by the k-core, by the definition: drop rows of rare users/items, repeat."""
    alive = list(range(len(pairs)))
    while True:
        users = [pairs[r][0] for r in alive]
        items = [pairs[r][1] for r in alive]
        kept = [r for r in alive if users.count(pairs[r][0]) >= k and items.count(pairs[r][1]) >= k]
        if kept == alive:
            return kept
        alive = kept


@settings(max_examples=80, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=40),
    k=st.integers(1, 4),
)
def test_k_core_matches_reference(pairs, k):
    users = np.array([p[0] for p in pairs], np.int32)
    items = np.array([p[1] for p in pairs], np.int32)
    keep = k_core(users, items, k, 7, 7)
    assert np.flatnonzero(keep).tolist() == _reference_k_core(pairs, k)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 5)), max_size=30)
)
def test_first_occurrences_keeps_the_earliest(rows):
    users, items, times = np.array(rows, np.int64).reshape(-1, 3).T
    keep = first_occurrences(users, items, 4, times)
    try:  # the same through the fallback for keys too wide to pack with their positions
        filters._PACK_BITS = 0
        np.testing.assert_array_equal(first_occurrences(users, items, 4, times), keep)
    finally:
        filters._PACK_BITS = 63
    expected = {}
    for r, (u, i, t) in enumerate(rows):
        if (u, i) not in expected or t < rows[expected[(u, i)]][2]:
            expected[(u, i)] = r
    assert np.flatnonzero(keep).tolist() == sorted(expected.values())
    no_time = first_occurrences(users, items, 4)
    firsts = {}
    for r, (u, i, _) in enumerate(rows):
        firsts.setdefault((u, i), r)
    assert np.flatnonzero(no_time).tolist() == sorted(firsts.values())


def test_threshold_dedupe_k_core_and_report(write):
    text = "u,i,r,t\n" + "\n".join(
        [
            "1,a,5,10",  # kept
            "1,a,4,5",  # duplicate of the row above, earlier: this one is kept instead
            "1,b,2,11",  # below min_rating
            "2,a,4,12",
            "2,b,5,13",
            "3,c,5,14",  # user 3 and item c have one row each: removed by the 2-core
            "1,b,4,15",
        ]
    )
    log = read_interactions(
        write("log.csv", text + "\n"),
        user_col="u",
        item_col="i",
        rating_col="r",
        timestamp_col="t",
        min_rating=4,
        k_core=2,
    )
    report = log.report
    assert (report.rows_read, report.below_min_rating, report.duplicates_removed) == (7, 1, 1)
    assert (report.k_core_removed, report.rows_kept) == (1, 4)
    assert report.rows_read == (
        report.rows_kept
        + report.rows_skipped
        + report.empty_rows
        + report.below_min_rating
        + report.duplicates_removed
        + report.k_core_removed
    )
    frame = log.to_frame(original_ids=True)
    assert frame[["user_id", "item_id", "timestamp"]].values.tolist() == [
        [1, "a", 5],
        [2, "a", 12],
        [2, "b", 13],
        [1, "b", 15],
    ]
    assert "below min_rating" in report.summary()


def test_everything_filtered_is_a_clear_error(write):
    with pytest.raises(DataError, match=r"no interactions left after filtering: 2 of 2 rows below"):
        read_interactions(
            write("log.csv", "user_id,item_id,r\n1,2,1\n2,3,2\n"), rating_col="r", min_rating=4
        )
    with pytest.raises(DataError, match="removed by the k-core with k_core=5"):
        read_interactions(write("log.csv", "user_id,item_id\n1,2\n2,3\n"), k_core=5)


def test_dedupe_can_be_turned_off():
    frame = pd.DataFrame({"user_id": [1, 1], "item_id": [2, 2]})
    assert len(read_interactions(frame)) == 1
    assert len(read_interactions(frame, dedupe=False)) == 2


def test_counts_feed_samplers():
    import recsampled as rs

    log = read_interactions(pd.DataFrame({"user_id": [1, 2, 3, 1], "item_id": [9, 9, 9, 4]}))
    np.testing.assert_array_equal(log.item_counts, [3, 1])
    sampler = rs.UnigramSampler(log.item_counts)
    np.testing.assert_allclose(sampler.probability(np.array([0, 1])).numpy(), [0.75, 0.25])


def test_select_and_validation():
    log = read_interactions(
        pd.DataFrame({"user_id": [1, 2, 3], "item_id": [9, 9, 8], "t": [3, 2, 1]}),
        timestamp_col="t",
    )
    part = log.select(np.array([True, False, True]))
    assert len(part) == 2 and part.items is log.items
    np.testing.assert_array_equal(part.timestamps, [3, 1])
    assert "rows=2" in repr(part)
    users = Vocabulary([1])
    with pytest.raises(ValueError, match="`item_ids` must be a 1-D int32 NumPy array"):
        Interactions(np.zeros(2, np.int32), np.zeros(2, np.int64), users, users)
    with pytest.raises(ValueError, match=r"`user_ids` must lie in \[0, 1\)"):
        Interactions(np.array([0, 1], np.int32), np.zeros(2, np.int32), users, users)
    with pytest.raises(
        ValueError, match="`timestamps` must be None or a 1-D NumPy array of length 2"
    ):
        Interactions(
            np.zeros(2, np.int32), np.zeros(2, np.int32), users, users, timestamps=np.zeros(3)
        )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_user_items_is_the_user_item_matrix_with_repeats_kept(seed):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"user": rng.integers(20, size=200), "item": rng.integers(15, size=200)})
    log = read_interactions(frame, user_col="user", item_col="item", dedupe=False)
    matrix = log.user_items()
    assert matrix.shape == (log.num_users, log.num_items)
    dense = np.zeros(matrix.shape, np.int64)  # reference: count every (user, item) row
    np.add.at(dense, (log.user_ids, log.item_ids), 1)
    np.testing.assert_array_equal(matrix.toarray(), dense)  # duplicates sum when densified
    np.testing.assert_array_equal(np.diff(matrix.indptr), log.user_counts)  # one entry per row
    for user in range(log.num_users):  # each row lists the user's items in log order
        np.testing.assert_array_equal(matrix[user].indices, log.item_ids[log.user_ids == user])
    assert log.user_items(num_users=log.num_users + 3).shape[0] == log.num_users + 3

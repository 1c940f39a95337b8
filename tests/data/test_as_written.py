"""Logs as people write them (issue 16): pandas' float ids and date-times, Parquet timestamps,
usual column names detected, a duplicated header column."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from recsampled.data import DataError, read_interactions, time_cut

# 2020-01-01T00:00:00Z is 1577836800 Unix seconds; a day is 86400.
DAY0 = 1577836800


def test_pandas_float_ids_are_integers(write):
    # A float column of ids, as pandas writes it after a merge with NaN: "255.0" is the id 255.
    path = write("log.csv", "user_id,item_id\n1.0,255.0\n2.0,3.0\n2.0,255.0\n")
    log = read_interactions(path)
    assert log.items.original_ids.dtype.kind == "i"
    assert sorted(log.items.original_ids.tolist()) == [3, 255]
    assert sorted(log.users.original_ids.tolist()) == [1, 2]
    frame = pd.DataFrame({"user_id": [1.0, 2.0], "item_id": [255.0, 3.0]})
    assert sorted(read_interactions(frame).items.original_ids.tolist()) == [3, 255]


@pytest.mark.parametrize("ids, line", [("255.0,2.5,3.0", 3), ("1.5,2.5,3.5", 2)])
def test_fractional_ids_name_file_line_and_column(write, ids, line):
    rows = "".join(f"{u},{i}\n" for u, i in zip((1, 2, 3), ids.split(","), strict=True))
    with pytest.raises(
        DataError, match=rf"log\.csv, line {line}, column 'item_id': expected an in"
    ):
        read_interactions(write("log.csv", "user_id,item_id\n" + rows))


def test_datetime_strings_are_timestamps_and_split_by_time(write):
    text = (
        "user_id,item_id,timestamp\n"
        "1,10,2020-01-01 00:00:00\n"  # no offset: UTC
        "2,11,2020-01-02T01:00:00+01:00\n"  # = 2020-01-02T00:00Z
        "1,11,2020-01-03\n"
        "2,12,2020-01-04T00:00:00.75Z\n"  # sub-second part truncated, as for Parquet
    )
    log = read_interactions(write("log.csv", text))
    assert log.timestamps.tolist() == [DAY0 + k * 86400 for k in range(4)]
    split = time_cut(log, cutoff=DAY0 + 2 * 86400)
    assert len(split.train) == 2 and len(split.test) == 1  # item 12 is unseen in training
    skipped = read_interactions(
        write("bad.csv", text + "2,13,not a date\n"), on_bad_rows="skip"
    )  # only the bad row is dropped, not every date-time row
    assert len(skipped) == 4 and skipped.report.rows_skipped == 1
    with pytest.raises(DataError, match=r"bad\.csv, line 6, column 'timestamp': expected a date"):
        read_interactions(write("bad.csv", text + "2,13,not a date\n"))


def test_parquet_and_frame_timestamp_columns(tmp_path):
    times = pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03"])
    frame = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [5, 6, 5], "timestamp": times})
    frame.to_parquet(tmp_path / "log.parquet")
    for source in (
        tmp_path / "log.parquet",
        frame,
        frame.assign(timestamp=times.tz_localize("UTC")),
    ):
        log = read_interactions(source)
        assert log.timestamps.tolist() == [DAY0, DAY0 + 86400, DAY0 + 2 * 86400]


@pytest.mark.parametrize(
    "header, expected",
    [
        ("userId,movieId,rating,timestamp", ("userId", "movieId", "rating", "timestamp")),
        ("user,item,score,ts", ("user", "item", "score", "ts")),
        ("customer_id,product_id,stars,time", ("customer_id", "product_id", "stars", "time")),
        ("user_id,item_id,other,x", ("user_id", "item_id", None, None)),
    ],
)
def test_usual_column_names_are_detected(write, caplog, header, expected):
    path = write("log.csv", f"{header}\n1,10,5,100\n2,10,3,200\n2,11,4,300\n")
    with caplog.at_level(logging.INFO, logger="recsampled.data.readers"):
        log = read_interactions(path)
    assert len(log) == 3
    assert (log.ratings is not None, log.timestamps is not None) == (
        expected[2] is not None,
        expected[3] is not None,
    )
    assert f"user={expected[0]!r}" in caplog.text and "log.csv" in caplog.text
    if expected[2] is not None:
        np.testing.assert_array_equal(read_interactions(path, min_rating=4).ratings, [5, 4])


@pytest.mark.parametrize(
    "header, named, fragments",
    [
        ("user,item,ts,time", {"timestamp_col": "ts"}, ["timestamps", "['ts', 'time']"]),
        ("userId,user,item,x", {"user_col": "user"}, ["user ids", "--set data.user_col=userId"]),
    ],
)
def test_ambiguous_columns_list_the_candidates(write, header, named, fragments):
    path = write("log.csv", f"{header}\n1,2,3,4\n")
    with pytest.raises(DataError) as info:
        read_interactions(path)
    assert all(f in str(info.value) for f in fragments + ["log.csv"]), str(info.value)
    assert len(read_interactions(path, **named)) == 1  # naming the column settles it


def test_duplicated_header_column_names_file_and_column(write, tmp_path):
    # Before: KeyError('Column user_id does not exist in schema') from delimited.py.
    with pytest.raises(DataError, match=r"log\.csv, header \(line 1\): column 'user_id' appears 2"):
        read_interactions(write("log.csv", "user_id,item_id,user_id\n1,2,3\n"))
    frame = pd.DataFrame([[1, 2, 3]], columns=["user_id", "item_id", "item_id"])
    with pytest.raises(DataError, match="column 'item_id' appears 2 times"):
        read_interactions(frame)


def test_errors_do_not_echo_a_line_that_is_no_header(write):
    path = write("shadow", "root:$6$s3cr3tSALT$hash:19000:0:99999:7:::\n")
    with pytest.raises(DataError) as info:
        read_interactions(path, format="csv")
    assert "s3cr3t" not in str(info.value) and "not shown" in str(info.value)
    with pytest.raises(DataError, match="not a regular file"):  # it exists: not "not found"
        read_interactions("/dev/null", format="csv")

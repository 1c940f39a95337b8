"""Reading logs: formats, columns, id types, popularity order, and the same result from every
route (CSV, TSV, Parquet, in-memory tables, fast and careful CSV paths)."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsampled.data import DataError, Interactions, read_interactions

# Items: b x3, a x2, c x2, d x1 -> popularity order b, a, c, d (a before c: equal counts, a < c).
# Users: u2 x3, u1 x3, u3 x2 -> u1, u2 (tie, u1 < u2), u3.
ROWS = [
    ("u1", "b", 5, 100),
    ("u2", "b", 3, 101),
    ("u3", "b", 4, 102),
    ("u1", "a", 4, 103),
    ("u2", "a", 2, 104),
    ("u1", "c", 1, 105),
    ("u3", "c", 5, 106),
    ("u2", "d", 4, 107),
]
COLUMNS = dict(timestamp_col="ts", rating_col="rating")


def _csv(rows, delimiter=",", header=("user_id", "item_id", "rating", "ts")) -> str:
    lines = [delimiter.join(header)] if header else []
    lines += [delimiter.join(str(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def _frame(rows=ROWS) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "ts"])


def assert_same(a: Interactions, b: Interactions) -> None:
    assert a.users == b.users and a.items == b.items
    np.testing.assert_array_equal(a.user_ids, b.user_ids)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    for name in ("timestamps", "ratings", "weights"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y)


def test_popularity_order_and_encoding(write):
    log = read_interactions(write("log.csv", _csv(ROWS)), **COLUMNS)
    assert log.items.original_ids.tolist() == ["b", "a", "c", "d"]
    assert log.items.counts.tolist() == [3, 2, 2, 1]
    assert log.users.original_ids.tolist() == ["u1", "u2", "u3"]
    np.testing.assert_array_equal(log.item_counts, log.items.counts)
    assert log.user_ids.dtype == np.int32 and log.item_ids.dtype == np.int32
    # Decoding gives back the rows, in file order.
    frame = log.to_frame(original_ids=True)
    assert list(zip(frame.user_id, frame.item_id, strict=True)) == [(u, i) for u, i, _, _ in ROWS]
    np.testing.assert_array_equal(log.timestamps, [r[3] for r in ROWS])
    np.testing.assert_array_equal(log.ratings, np.array([r[2] for r in ROWS], np.float32))
    assert log.timestamps.dtype == np.int64 and log.ratings.dtype == np.float32


def test_integer_ids_tie_break_is_numeric(write):
    # 10 and 9 are both seen twice: 9 < 10 numerically (as text "10" < "9").
    log = read_interactions(write("log.csv", "user_id,item_id\n1,10\n2,10\n1,9\n2,9\n3,7\n"))
    assert log.items.original_ids.tolist() == [9, 10, 7]
    assert log.items.is_integer and log.items.original_ids.dtype == np.int64


def test_every_route_gives_the_same_interactions(write, tmp_path):
    reference = read_interactions(write("log.csv", _csv(ROWS)), **COLUMNS)
    tsv = read_interactions(write("log.tsv", _csv(ROWS, "\t")), **COLUMNS)
    semicolon = read_interactions(
        write("log.txt", _csv(ROWS, ";")), format="csv", delimiter=";", **COLUMNS
    )
    pq.write_table(pa.Table.from_pandas(_frame()), tmp_path / "log.parquet")
    parquet = read_interactions(tmp_path / "log.parquet", **COLUMNS)
    frame = read_interactions(_frame(), **COLUMNS)
    table = read_interactions(pa.Table.from_pandas(_frame()), **COLUMNS)
    gz = tmp_path / "log.csv.gz"
    gz.write_bytes(gzip.compress(_csv(ROWS).encode()))
    compressed = read_interactions(gz, **COLUMNS)
    headerless = read_interactions(
        write("log.dat", _csv(ROWS, header=None)),
        format="csv",
        column_names=["user_id", "item_id", "rating", "ts"],
        **COLUMNS,
    )
    for other in (tsv, semicolon, parquet, frame, table, compressed, headerless):
        assert_same(reference, other)


def test_careful_path_matches_fast_path(write):
    """A blank line sends the reader down the careful path; the result must not change."""
    fast = read_interactions(write("a.csv", _csv(ROWS)), **COLUMNS)
    text = _csv(ROWS).replace("\nu3,b", "\n\nu3,b")
    careful = read_interactions(write("b.csv", text), **COLUMNS)
    assert_same(fast, careful)
    assert careful.report.empty_rows == 1 and careful.report.rows_read == len(ROWS) + 1


def test_id_dtypes(write):
    path = write("log.csv", "user_id,item_id\n1,007\n2,7\n3,7\n")
    assert read_interactions(path).items.original_ids.tolist() == [7]
    assert read_interactions(path, id_dtype="str").items.original_ids.tolist() == ["7", "007"]
    # Under "auto", a column that is mostly text holds text ids...
    mixed = read_interactions(write("m.csv", "user_id,item_id\n1,5\n2,x\n"))
    assert mixed.items.original_ids.tolist() == ["5", "x"]
    with pytest.raises(DataError, match=r"line 3, column 'item_id': expected a non-empty integer"):
        read_interactions(write("m2.csv", "user_id,item_id\n1,5\n2,x\n"), id_dtype="int")
    # ... and in a column that is mostly integers, a text id is a bad row, not a text id.
    stray = write("stray.csv", "user_id,item_id\n1,5\n2,6\n3,abc\n4,7\n")
    with pytest.raises(
        DataError, match=r"line 4, column 'item_id': expected an integer id, as most"
    ):
        read_interactions(stray)
    assert read_interactions(stray, on_bad_rows="skip").items.original_ids.tolist() == [5, 6, 7]
    assert len(read_interactions(stray, id_dtype="str")) == 4


def test_weights_and_float_timestamps(write):
    log = read_interactions(
        write("w.csv", "user_id,item_id,w,t\n1,2,0.5,1.5\n1,3,2,2.5\n"),
        weight_col="w",
        timestamp_col="t",
    )
    np.testing.assert_array_equal(log.weights, np.array([0.5, 2.0], np.float32))
    assert log.timestamps.dtype == np.float64


def test_movielens_100k(movielens_100k):
    log = read_interactions(movielens_100k / "u.data")
    assert (len(log), log.num_users, log.num_items) == (100_000, 943, 1682)
    assert log.report.format == "movielens-100k"
    assert log.items.original_ids[0] == 50 and log.items.counts[0] == 583  # Star Wars (1977)
    assert np.all(np.diff(log.items.counts) <= 0)
    implicit = read_interactions(movielens_100k, min_rating=4)  # the folder works too
    assert len(implicit) == 55_375 and implicit.report.below_min_rating == 44_625
    core = read_interactions(movielens_100k, min_rating=4, k_core=10)
    assert core.user_counts.min() >= 10 and core.item_counts.min() >= 10


def test_movielens_1m_and_latest_layouts(write, tmp_path):
    # Small files in the MovieLens layouts (made-up values, not MovieLens data).
    ml1m = write("ratings.dat", "1::20::5::978300760\n2::20::3::978302109\n2::30::4::978301968\n")
    log = read_interactions(ml1m)
    assert log.report.format == "movielens-1m"
    assert log.items.original_ids.tolist() == [20, 30]
    np.testing.assert_array_equal(log.ratings, [5, 3, 4])
    latest_dir = tmp_path / "ml-latest-small"
    latest_dir.mkdir()
    (latest_dir / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n2,1,3.0,964982224\n"
    )
    latest = read_interactions(latest_dir, min_rating=4)
    assert latest.report.format == "movielens-latest" and len(latest) == 2
    with pytest.raises(ValueError, match="`user_col` is fixed by format='movielens-1m'"):
        read_interactions(ml1m, user_col="uid")
    plain = read_interactions(latest_dir / "ratings.csv", min_rating=4)  # columns detected
    assert plain.report.format == "csv" and len(plain) == 2
    assert plain.timestamps.tolist() == [964982703, 964981247]


def test_format_guessing(write):
    with pytest.raises(DataError, match="cannot tell the format"):
        read_interactions(write("log.xyz", _csv(ROWS)))
    with pytest.raises(ValueError, match="`format` must be one of"):
        read_interactions(write("log.csv", _csv(ROWS)), format="excel")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(min_rating=4), "`min_rating` needs `rating_col`"),
        (dict(min_rating="4", rating_col="rating"), "`min_rating` must be None or a finite number"),
        (dict(k_core=0), "`k_core` must be a positive integer"),
        (dict(on_bad_rows="ignore"), "`on_bad_rows` must be one of"),
        (dict(id_dtype="float"), "`id_dtype` must be one of"),
        (dict(delimiter=",;"), "`delimiter` must be one character"),
        (dict(user_col=""), "`user_col` must be None or a column name"),
        (dict(user_col="rating", rating_col="rating"), "Each role needs its own column"),
    ],
)
def test_bad_arguments(write, kwargs, message):
    with pytest.raises(ValueError, match=message):
        header = ("user_id", "item_id", "r", "t")  # no column named like a rating
        read_interactions(write("log.csv", _csv(ROWS, header=header)), **kwargs)

"""Bad input: each kind of bad file gets an error naming file, line, column and value;
``on_bad_rows="skip"`` drops and reports exactly the bad rows; random garbage never escapes as
anything but a ``DataError``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsampled.data import DataError, read_interactions
from tests.data.test_readers import assert_same

HEADER = "user_id,item_id,rating,ts\n"
RATED = dict(rating_col="rating", timestamp_col="ts")

BAD_FILES = [
    # (name, content, read kwargs, fragments the message must contain)
    ("empty.csv", "", {}, ["empty.csv", "empty (0 bytes)"]),
    ("header.csv", HEADER, RATED, ["header.csv", "no data rows"]),
    ("header2.csv", HEADER.strip(), RATED, ["header2.csv", "no data rows"]),
    (
        "names.csv",  # a named user_col is not detected; `itm` is no item column's name
        "userid,itm,rating,ts\n1,2,3,4\n",
        dict(RATED, user_col="user_id"),
        ["names.csv", "header (line 1)", "user_col='user_id' (did you mean 'userid'?)", "item_col"],
    ),
    (
        "tabs.csv",
        HEADER.replace(",", "\t") + "1\t2\t3\t4\n",
        RATED,
        ["tabs.csv", "has no ','", "pass delimiter='\\t'"],
    ),
    (
        "rating.csv",
        HEADER + "1,2,3,4\n1,3,abc,5\n",
        RATED,
        ["rating.csv, line 3, column 'rating': expected a finite number, got 'abc'"],
    ),
    (
        "ts.csv",
        HEADER + "1,2,3,4\n1,3,4,2020-01-01\n",
        RATED,
        ["ts.csv, line 3, column 'ts': expected a finite number, got '2020-01-01'"],
    ),
    (
        "nan.csv",
        HEADER + "1,2,3,4\n1,3,nan,5\n",
        RATED,
        ["nan.csv, line 3, column 'rating': expected a finite number, got 'nan'"],
    ),
    (
        "empty_id.csv",
        HEADER + "1,2,3,4\n,3,4,5\n",
        RATED,
        ["empty_id.csv, line 3, column 'user_id': expected a non-empty id, got ''"],
    ),
    (
        "nan_id.csv",
        HEADER + "1,2,3,4\n1,NaN,4,5\n",
        RATED,
        ["nan_id.csv, line 3, column 'item_id': expected a non-empty id, got 'NaN'"],
    ),
    (
        "short.csv",
        HEADER + "1,2,3,4\n1,2\n",
        RATED,
        ["short.csv, line 3: expected 4 fields separated by ','", "got '1,2'"],
    ),
    (
        "long.csv",
        HEADER + "1,2,3,4\n1,2,3,4,5\n",
        RATED,
        ["long.csv, line 3: expected 4 fields"],
    ),
    (
        "weight.csv",
        "user_id,item_id,w\n1,2,1\n1,3,-2\n",
        dict(weight_col="w"),
        ["weight.csv, line 3, column 'w': expected a finite number >= 0, got '-2'"],
    ),
    (
        "ratings.dat",
        "1::2::3::4\n1::2:3::4::5\n",
        {},
        ["ratings.dat, line 2: expected 4 fields separated by '::'"],
    ),
    (
        "u.data",
        "1,2,3,4\n",
        {},
        ["u.data, line 1: expected 4 fields separated by '\\t'", "pass delimiter=','"],
    ),
    (
        "latin1.csv",
        "user_id,item_id\n1,Mis\xe9rables\n".encode("latin-1"),
        {},
        ["latin1.csv, line 2: expected text in 'utf-8', got '1,Mis", "encoding='latin-1'"],
    ),
    (
        "numbers.csv",
        "1,2,3,4\n5,6,7,8\n",
        RATED,
        ["numbers.csv", "looks like data", "pass column_names"],
    ),
]


@pytest.mark.parametrize(
    "name, content, kwargs, fragments", BAD_FILES, ids=[b[0] for b in BAD_FILES]
)
def test_bad_file_errors_name_the_place(write, name, content, kwargs, fragments):
    with pytest.raises(DataError) as info:
        read_interactions(write(name, content), **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_encoding_argument(write):
    path = write("latin1.csv", "user_id,item_id\n1,Mis\xe9rables\n2,x\n".encode("latin-1"))
    log = read_interactions(path, encoding="latin-1")
    assert log.items.original_ids.tolist() == ["Misérables", "x"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        read_interactions(tmp_path / "nowhere.csv")


def test_error_names_first_bad_row_and_counts_the_rest(write):
    path = write("log.csv", HEADER + "1,2,3,4\n1,x,abc,5\n\n2,2\n,3,4,5\n")
    with pytest.raises(DataError, match="line 3, column 'item_id'") as info:
        read_interactions(path, **RATED)  # line 3 has two bad values: the first column counts
    assert "3 bad rows in all" in str(info.value) and "on_bad_rows='skip'" in str(info.value)
    assert info.value.bad_row.line == 3 and info.value.bad_row.value == "x"


def test_skip_reports_every_bad_row(write):
    path = write("log.csv", HEADER + "1,2,3,4\n1,3,abc,5\n\n2,2\n,3,4,5\n2,4,5,6\n")
    log = read_interactions(path, on_bad_rows="skip", **RATED)
    report = log.report
    assert (report.rows_read, report.rows_kept, report.rows_skipped, report.empty_rows) == (
        6,
        2,
        3,
        1,
    )
    assert [(b.line, b.column) for b in report.bad_rows] == [
        (3, "rating"),
        (5, None),
        (6, "user_id"),
    ]
    assert "log.csv, line 5: expected 4 fields" in report.summary()
    clean = read_interactions(write("clean.csv", HEADER + "1,2,3,4\n2,4,5,6\n"), **RATED)
    assert_same(log, clean)


def test_every_row_bad_is_an_error_even_when_skipping(write):
    with pytest.raises(DataError, match="every row is bad"):
        read_interactions(write("log.csv", HEADER + "1,2,x,4\n"), on_bad_rows="skip", **RATED)


def test_parquet_and_tables_name_rows(tmp_path):
    frame = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [5.0, np.nan, 7.0]})
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "log.parquet")
    with pytest.raises(DataError, match=r"log.parquet, row 2, column 'item_id'"):
        read_interactions(tmp_path / "log.parquet")
    with pytest.raises(DataError, match=r"<table>, row 2, column 'item_id'"):
        read_interactions(frame)
    log = read_interactions(frame, on_bad_rows="skip")
    assert log.items.original_ids.tolist() == [5, 7] and log.report.rows_skipped == 1
    with pytest.raises(DataError, match=r"log.parquet, schema: expected columns"):
        read_interactions(tmp_path / "log.parquet", user_col="uid")
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="fake.parquet: not a readable Parquet file"):
        read_interactions(tmp_path / "fake.parquet")


def test_table_with_mixed_objects(tmp_path):
    frame = pd.DataFrame({"user_id": [1, "a", None], "item_id": [1, 2, 3]}, dtype=object)
    with pytest.raises(DataError, match=r"row 3, column 'user_id': expected a non-empty id"):
        read_interactions(frame)


def test_unsupported_column_type():
    table = pa.table({"user_id": [True, False], "item_id": [1, 2]})
    with pytest.raises(DataError, match="column 'user_id': expected integer or string ids"):
        read_interactions(table)


# Property-based tests. Each example reads one small file; examples are bounded for speed.
_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_SETTINGS
@given(
    content=st.one_of(
        st.binary(max_size=200),
        st.text(alphabet=st.sampled_from(list("ab1,2;\t\n\r \"'.-:eE#N/A")), max_size=200),
    ),
    on_bad_rows=st.sampled_from(["error", "skip"]),
    header=st.booleans(),
)
def test_garbage_raises_only_data_errors(write, content, on_bad_rows, header):
    if header:
        content = (HEADER.encode() if isinstance(content, bytes) else HEADER) + content
    path = write("garbage.csv", content)
    try:
        log = read_interactions(path, on_bad_rows=on_bad_rows, **RATED)
    except DataError as e:
        assert "garbage.csv" in str(e)
        return
    report = log.report
    dropped = report.rows_skipped + report.empty_rows + report.duplicates_removed
    assert report.rows_read == report.rows_kept + dropped
    assert len(log) == report.rows_kept > 0


_CORRUPTIONS = {
    # kind: (function of a row of 4 strings -> line, the column (None: whole row))
    "rating_text": (lambda r: ",".join([r[0], r[1], "abc", r[3]]), "rating"),
    "rating_empty": (lambda r: ",".join([r[0], r[1], "", r[3]]), "rating"),
    "ts_nan": (lambda r: ",".join([r[0], r[1], r[2], "NaN"]), "ts"),
    "user_empty": (lambda r: ",".join(["", r[1], r[2], r[3]]), "user_id"),
    "item_null": (lambda r: ",".join([r[0], "null", r[2], r[3]]), "item_id"),
    "item_text": (lambda r: ",".join([r[0], "x" + r[1], r[2], r[3]]), "item_id"),
    "too_few": (lambda r: ",".join(r[:2]), None),
    "too_many": (lambda r: ",".join([*r, "9"]), None),
}


@_SETTINGS
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 8), st.integers(1, 5), st.integers(0, 10**6)),
        min_size=1,
        max_size=30,
    ),
    corruptions=st.lists(
        st.tuples(st.integers(0, 29), st.sampled_from(sorted(_CORRUPTIONS))),
        max_size=8,
    ),
)
def test_injected_bad_rows_are_found_exactly(write, rows, corruptions):
    """Corrupt random rows of a valid file: skip finds exactly those, error names the first."""
    text_rows = [tuple(str(v) for v in row) for row in rows]
    lines = [",".join(r) for r in text_rows]
    bad = {}
    for index, kind in corruptions:
        if index < len(lines) and index not in bad:
            corrupt, column = _CORRUPTIONS[kind]
            lines[index], bad[index] = corrupt(text_rows[index]), column
    kwargs = dict(RATED, id_dtype="int", dedupe=False)
    path = write("log.csv", HEADER + "\n".join(lines) + "\n")
    clean_rows = [line for k, line in enumerate(lines) if k not in bad]
    if bad:
        with pytest.raises(DataError) as info:
            read_interactions(path, **kwargs)
        first = min(bad)
        assert info.value.bad_row.line == first + 2  # line 1 is the header
        assert info.value.bad_row.column == bad[first]
    if not clean_rows:
        with pytest.raises(DataError):
            read_interactions(path, on_bad_rows="skip", **kwargs)
        return
    log = read_interactions(path, on_bad_rows="skip", **kwargs)
    assert log.report.rows_skipped == len(bad)
    assert [b.line for b in log.report.bad_rows] == [k + 2 for k in sorted(bad)][:10]
    clean = read_interactions(write("clean.csv", HEADER + "\n".join(clean_rows) + "\n"), **kwargs)
    assert_same(log, clean)

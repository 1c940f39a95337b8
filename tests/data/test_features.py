"""Side-feature tables: alignment to a vocabulary, codes, missing rows and values, bad tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsampled.data import DataError, Vocabulary, read_side_features

ITEMS = Vocabulary([30, 10, 20])  # index order: the vocabulary's, not the table's
TABLE = "movieId,genre,year\n10,drama,1990\n20,comedy,2000\n30,drama,\n99,horror,1980\n"


def test_codes_and_values_follow_the_vocabulary(write):
    path = write("items.csv", TABLE.replace("30,drama,", "30,drama,2010"))
    features = read_side_features(path, ITEMS, categorical=["genre"], numeric=["year"])
    # drama (2 ids) is code 1, comedy code 2; item 99 is not in the vocabulary: ignored.
    assert features.vocabularies["genre"] == ["drama", "comedy"]
    assert features.categorical["genre"].tolist() == [1, 1, 2]  # items 30, 10, 20
    assert features.categorical["genre"].dtype == np.int64
    assert features.numeric["year"].tolist() == [2010.0, 1990.0, 2000.0]
    assert features.tower() == {
        "categorical": features.categorical,
        "numeric": features.numeric,
    }
    frame = pd.read_csv(path).astype({"movieId": str})  # text ids still match integer ids
    again = read_side_features(frame, ITEMS, categorical=["genre"], id_col="movieId")
    np.testing.assert_array_equal(again.categorical["genre"], features.categorical["genre"])


def test_missing_rows_and_values_error_or_default(write, tmp_path):
    path = write("items.csv", TABLE)
    with pytest.raises(DataError, match=r"items\.csv, line 4, column 'year': no value"):
        read_side_features(path, ITEMS, numeric=["year"])
    short = write("short.csv", "item_id,genre,year\n10,,1990\n20,comedy,2000\n")
    with pytest.raises(DataError, match=r"short\.csv: 1 of 3 items have no row \(the first: 30\)"):
        read_side_features(short, ITEMS, categorical=["genre"])
    features = read_side_features(
        short, ITEMS, categorical=["genre"], numeric=["year"], missing="default"
    )
    # Item 30 has no row, item 10 no genre: category 0; year of item 30: the mean, 1995.
    assert features.categorical["genre"].tolist() == [0, 0, 1]
    assert features.numeric["year"].tolist() == [1995.0, 1990.0, 2000.0]
    assert features.missing_ids == 1
    pd.read_csv(short).to_parquet(tmp_path / "short.parquet")
    parquet = read_side_features(
        tmp_path / "short.parquet", ITEMS, numeric=["year"], missing="default"
    )
    assert parquet.numeric["year"].tolist() == [1995.0, 1990.0, 2000.0]


@pytest.mark.parametrize(
    "text, kwargs, message",
    [
        ("item_id,x\n10,1\n10,2\n", {}, r"item 10 has more than one row \(lines 2 and 3\)"),
        ("item_id,x\n10,abc\n", {}, r"line 2, column 'x': expected a finite number, got 'abc'"),
        ("item_id,x\n10,1\n", {"numeric": ["y"]}, r"feature columns not found: \['y'\]"),
        ("item_id,x,x\n10,1,2\n", {}, "column 'x' appears 2 times"),
        ("item_id,x\n1.5,1\n", {}, r"line 2, column 'item_id': expected"),
    ],
)
def test_bad_tables_name_file_and_place(write, text, kwargs, message):
    path = write("t.csv", text)
    with pytest.raises(DataError, match=message) as info:
        read_side_features(path, ITEMS, **({"numeric": ["x"]} | kwargs), missing="default")
    assert "t.csv" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "at least one `categorical` or `numeric`"),
        ({"numeric": ["x"], "missing": "zero"}, "`missing` must be one of"),
        ({"numeric": ["x"], "categorical": ["x"]}, "distinct columns"),
    ],
)
def test_bad_arguments(write, kwargs, message):
    with pytest.raises(ValueError, match=message):
        read_side_features(write("t.csv", "item_id,x\n10,1\n"), ITEMS, **kwargs)

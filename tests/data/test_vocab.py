"""Vocabulary: lookups, decoding, validation, and save/load round trips."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsampled.data import Vocabulary


@pytest.mark.parametrize(
    "ids",
    [[30, 10, 20], ["b", "a", "ü-ñ"], np.array([7, -1], np.int32), pa.array(["x"])],
    ids=["int", "str", "int32", "arrow"],
)
def test_save_load_round_trip(tmp_path, ids):
    vocab = Vocabulary(ids, counts=np.arange(len(ids), 0, -1))
    vocab.save(tmp_path / "items.parquet")
    loaded = Vocabulary.load(tmp_path / "items.parquet")
    assert loaded == vocab
    expected = ids.to_pylist() if isinstance(ids, pa.Array) else np.asarray(ids).tolist()
    assert loaded.original_ids.tolist() == expected
    assert [p.name for p in tmp_path.iterdir()] == ["items.parquet"]  # no temporary file left


def test_save_replaces_atomically(tmp_path):
    path = tmp_path / "v.parquet"
    Vocabulary([1, 2]).save(path)
    Vocabulary(["a"]).save(path)
    assert Vocabulary.load(path).original_ids.tolist() == ["a"]


def test_lookup_and_decode():
    vocab = Vocabulary([50, 7, 3], counts=[9, 4, 4])
    np.testing.assert_array_equal(vocab.lookup([3, 50, 99]), [2, 0, -1])
    # Text ids match integer ids by value; non-integer text is unknown.
    np.testing.assert_array_equal(vocab.lookup(["7", "x", " 3"]), [1, -1, 2])
    assert vocab.lookup([]).shape == (0,)
    np.testing.assert_array_equal(vocab.decode([2, 0]), [3, 50])
    with pytest.raises(ValueError, match=r"`indices` must lie in \[0, 3\)"):
        vocab.decode([3])
    text = Vocabulary(["5", "a"])
    np.testing.assert_array_equal(text.lookup([5, 6]), [0, -1])
    assert len(text) == 2 and not text.is_integer and "size=2" in repr(text)


@pytest.mark.parametrize(
    "ids, counts, message",
    [
        ([1, 2, 1], None, r"`original_ids` must be distinct. Received: 1 appears 2 times"),
        (["a", None], None, "must not contain nulls"),
        ([1.5, 2.5], None, "must hold integer or string ids"),
        ([1, 2], [1], "`counts` must be 2 non-negative integers"),
        ([1, 2], [1, -1], "`counts` must be 2 non-negative integers"),
        ([1, 2], [1.0, 2.0], "`counts` must be 2 non-negative integers"),
    ],
)
def test_invalid_vocabularies(ids, counts, message):
    with pytest.raises(ValueError, match=message):
        Vocabulary(ids, counts)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        Vocabulary.load(tmp_path / "missing.parquet")
    (tmp_path / "text.parquet").write_text("hello")
    with pytest.raises(ValueError, match="not a vocabulary file"):
        Vocabulary.load(tmp_path / "text.parquet")
    pq.write_table(pa.table({"id": [1], "n": [2]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not a vocabulary file written by Vocabulary.save"):
        Vocabulary.load(tmp_path / "other.parquet")

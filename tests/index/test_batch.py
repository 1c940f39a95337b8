"""Batch recommendations (``write_recommendations``): every user's top-k, in chunks, equal to
``Retriever.recommend``; Parquet or CSV by suffix; atomic; with progress."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsampled._progress import configure_logging
from recsampled.index import Retriever
from recsampled.index.batch import write_recommendations


@pytest.fixture(scope="module")
def retriever(artifact_dir: Path) -> Retriever:
    return Retriever.load(artifact_dir)


def _read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_every_users_top_k_equals_recommend(retriever, data, tmp_path, suffix, chunk_size):
    path = tmp_path / f"recs{suffix}"
    rows = write_recommendations(retriever, path, k=6, chunk_size=chunk_size)
    frame = _read(path)
    top = retriever.recommend(data.user_ids, k=6)  # seen items excluded
    assert rows == len(frame) == 40 * 6
    assert frame.columns.tolist() == ["user_id", "rank", "item_id", "score"]
    assert frame["user_id"].tolist() == np.repeat(data.user_ids, 6).tolist()
    assert frame["rank"].tolist() == list(range(1, 7)) * 40
    assert frame["item_id"].tolist() == top.ids.ravel().tolist()
    np.testing.assert_allclose(frame["score"], top.scores.ravel(), rtol=1e-6, atol=1e-7)
    for user, items in frame.groupby("user_id")["item_id"]:  # never a seen item
        seen = data.item_ids[data.seen[int(user) - 1000]]
        assert not set(items) & set(seen)


def test_parquet_has_typed_columns_and_one_row_group_per_chunk(retriever, tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "recs.parquet"
    write_recommendations(retriever, path, k=3, chunk_size=16, exclude_seen=False)
    file = pq.ParquetFile(path)
    assert file.num_row_groups == 3  # 40 users in chunks of 16
    types = {f.name: str(f.type) for f in file.schema_arrow}
    assert types == {"user_id": "int64", "rank": "int32", "item_id": "string", "score": "float"}
    top = retriever.recommend(retriever.user_ids[:5], k=3, exclude_seen=False)
    assert pd.read_parquet(path)["item_id"][:15].tolist() == top.ids.ravel().tolist()


def test_given_users_and_progress(retriever, data, tmp_path):
    stream = io.StringIO()
    configure_logging(0, stream=stream)
    try:
        write_recommendations(retriever, tmp_path / "r.csv", k=2, user_ids=data.user_ids[:9])
    finally:
        configure_logging(-1)
        logging.getLogger("recsampled").handlers.clear()
    assert "recommending: 9/9" in stream.getvalue()
    assert _read(tmp_path / "r.csv")["user_id"].tolist() == np.repeat(data.user_ids[:9], 2).tolist()


def test_a_failure_midway_leaves_no_file(retriever, tmp_path, monkeypatch):
    calls, original = [], Retriever.recommend

    def failing(self, users, k=10, *, exclude_seen=True):
        calls.append(len(users))
        if len(calls) == 2:  # the second chunk: the first one is already in the file
            raise RuntimeError("disk on fire")
        return original(self, users, k, exclude_seen=exclude_seen)

    monkeypatch.setattr(Retriever, "recommend", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_recommendations(retriever, tmp_path / "recs.parquet", chunk_size=10)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary sibling


def test_bad_arguments(retriever, tmp_path):
    with pytest.raises(ValueError, match=r"`output` must end in \.parquet \(or \.pq\) or \.csv"):
        write_recommendations(retriever, tmp_path / "recs.json")
    for name, value in (("k", 0), ("chunk_size", -1)):
        with pytest.raises(ValueError, match=f"`{name}` must be a positive integer"):
            write_recommendations(retriever, tmp_path / "r.csv", **{name: value})
    assert list(tmp_path.iterdir()) == []

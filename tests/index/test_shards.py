"""Index shards: ``export_artifact(shards=N)`` equals one index (exact: identical ids, scores
within 1e-5), the manifest records each shard's checksum, and item vectors stay readable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from recsampled._io import sha256_part
from recsampled.errors import ArtifactError
from recsampled.index import Retriever, export_artifact
from recsampled.index.shards import ShardedIndex, split_index
from tests.index.conftest import Data, clustered

SHARDS = 3


def _export(path: Path, query_model, *, index: str, shards: int) -> Retriever:
    export_artifact(
        path, item_embeddings=Data.items, item_ids=Data.item_ids, query_model=query_model,
        user_ids=Data.user_ids, metric="cosine", index=index, seen=Data.seen,
        item_popularity=Data.popularity, shards=shards,
        sample_queries=clustered(200, Data.items.shape[1], seed=5),
    )  # fmt: skip
    return Retriever.load(path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, query_model) -> tuple[Retriever, Retriever]:
    folder = tmp_path_factory.mktemp("shards")
    single = _export(folder / "single", query_model, index="flat", shards=1)
    return single, _export(folder / "sharded", query_model, index="flat", shards=SHARDS)


def test_manifest_records_every_shard_with_its_checksum(pair) -> None:
    sharded = pair[1]
    shards = sharded.manifest.index.shards
    assert [s["file"] for s in shards] == [f"index-0000{i}-of-00003.faiss" for i in range(3)]
    assert [(s["start"], s["num_items"]) for s in shards] == [(0, 100), (100, 100), (200, 100)]
    for shard in shards:
        digest = sha256_part(sharded.path / shard["file"])
        assert shard["sha256"] == digest == sharded.manifest.files[shard["file"]]
    assert (
        "index.faiss" not in sharded.manifest.files and not (sharded.path / "index.faiss").exists()
    )
    assert isinstance(sharded.index, ShardedIndex) and sharded.index.ntotal == 300


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sharded_flat_search_equals_one_index(pair, seed: int) -> None:
    single, sharded = pair
    queries = clustered(50, Data.items.shape[1], seed=10 + seed)
    for k in (1, 10, 300):
        a, b = sharded.search(queries, k=k), single.search(queries, k=k)
        assert np.array_equal(a.rows, b.rows)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_sharded_recommend_and_similar_items_equal_one_index(pair) -> None:
    single, sharded = pair
    a, b = sharded.recommend(Data.user_ids, k=10), single.recommend(Data.user_ids, k=10)
    assert np.array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    items = Data.item_ids[::7]
    a, b = sharded.similar_items(items, k=5), single.similar_items(items, k=5)
    assert np.array_equal(a.ids, b.ids)


def test_item_vectors_by_row_across_shards(pair) -> None:
    single, sharded = pair
    rows = np.array([0, 99, 100, 101, 299, 150, 0])
    expected = Data.items[rows] / np.linalg.norm(Data.items[rows], axis=1, keepdims=True)
    np.testing.assert_allclose(sharded.item_vectors(rows), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(sharded.item_vectors(rows), single.item_vectors(rows))
    # The HTTP service reads vectors through the index object itself.
    np.testing.assert_array_equal(sharded.index.reconstruct_batch(rows), single.item_vectors(rows))
    assert sharded.item_vectors(np.zeros(0, np.int64)).shape == (0, 8)
    for bad in ([300], [-1], [[1, 2]], [0.5]):
        with pytest.raises(ValueError, match="`rows`"):
            sharded.item_vectors(np.array(bad))


def test_ivf_shards_share_the_quantizer_and_equal_one_ivf_index(tmp_path, query_model) -> None:
    single = _export(tmp_path / "single", query_model, index="ivf", shards=1)
    sharded = _export(tmp_path / "sharded", query_model, index="ivf", shards=SHARDS)
    assert sharded.manifest.index.search_params == single.manifest.index.search_params
    queries = clustered(50, Data.items.shape[1], seed=7)
    a, b = sharded.search(queries, k=10), single.search(queries, k=10)
    assert np.array_equal(a.rows, b.rows)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    rows = np.arange(0, 300, 13)
    np.testing.assert_array_equal(sharded.item_vectors(rows), single.item_vectors(rows))


def test_a_corrupt_or_inconsistent_shard_is_named(pair, tmp_path) -> None:
    path = tmp_path / "copy"
    shutil.copytree(pair[1].path, path)
    with open(path / "index-00001-of-00003.faiss", "r+b") as f:
        f.truncate(50)
    with pytest.raises(ArtifactError, match="is corrupt: its part .* has 50 bytes") as caught:
        Retriever.load(path)
    assert caught.value.part == "index-00001-of-00003.faiss"
    shutil.rmtree(path)
    shutil.copytree(pair[1].path, path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["index"]["shards"][1]["start"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"shards\[1\]` must start at row 100") as caught:
        Retriever.load(path)
    assert caught.value.part == "manifest.json"


def test_bad_shard_counts(tmp_path) -> None:
    items = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    for shards, message in ((0, "positive integer"), (6, r"in \[1, num_items=5\]"), (2.5, "")):
        with pytest.raises(ValueError, match=f"`shards` must be.*{message}"):
            export_artifact(
                tmp_path / "a", item_embeddings=items, item_ids=np.arange(5), shards=shards
            )
    assert not (tmp_path / "a").exists()


def test_split_index_of_hnsw_builds_one_graph_per_shard() -> None:
    vectors = clustered(400, 8, seed=3)
    hnsw = faiss.index_factory(8, "HNSW16,Flat", faiss.METRIC_INNER_PRODUCT)
    hnsw.add(vectors)
    shards = split_index(hnsw, vectors, 4)
    assert [s.ntotal for s in shards] == [100] * 4
    sharded = ShardedIndex(shards)
    np.testing.assert_array_equal(sharded.reconstruct_batch(np.arange(400)), vectors)

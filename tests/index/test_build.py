"""Index construction and tuning: exact search against NumPy, recall, ANN tuning to a target."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from recsampled.index import build
from recsampled.index.build import (
    build_index,
    default_nlist,
    exact_search,
    factory_string,
    prepare_vectors,
    recall_at_k,
)
from tests.index.conftest import clustered, numpy_top_k


@pytest.mark.parametrize("metric", ["dot", "cosine"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flat_search_equals_numpy_top_k(metric: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(500, 12)).astype(np.float32)
    queries = rng.normal(size=(40, 12)).astype(np.float32)
    built = build_index(items, index="flat", metric=metric)
    result = build.search(built.index, prepare_vectors(queries, metric), 10)
    rows, scores = numpy_top_k(queries, items, 10, metric)
    np.testing.assert_array_equal(result.rows, rows)
    np.testing.assert_allclose(result.scores, scores, rtol=1e-5, atol=1e-5)
    assert built.index_type == "flat" and built.recall == 1.0 and built.query_source == "exact"


def test_recall_at_k_hand_worked() -> None:
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 2, 9], [-1, 7, 8]])
    # row 0: {3, 2} of {1, 2, 3} -> 2 hits; row 1: none (-1 never counts) -> (2 + 0) / 6
    assert recall_at_k(found, exact) == pytest.approx(2 / 6)
    assert recall_at_k(exact, exact) == 1.0


def test_factory_strings_and_nlist() -> None:
    assert factory_string("flat", 10, 64) == "Flat"
    assert factory_string("hnsw", 10**6, 64) == "HNSW32,Flat"
    assert factory_string("ivf", 10**6, 64) == "IVF4000,Flat"
    assert factory_string("ivfpq", 10**6, 64) == "IVF4000,PQ32x4fs,RFlat"
    # 4 * sqrt(2000) = 178, but 2000 // 39 = 51 lists keep >= 39 training points per list
    assert default_nlist(2000) == 51
    assert default_nlist(10) == 1


def test_cosine_vectors_are_unit_norm_and_input_untouched() -> None:
    items = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    prepared = prepare_vectors(items, "cosine")
    np.testing.assert_allclose(prepared, [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)
    np.testing.assert_array_equal(items, [[3.0, 4.0], [0.0, 0.0]])


@pytest.mark.parametrize("index_type", ["hnsw", "ivf", "ivfpq"])
def test_ann_reaches_target_on_clustered_data(index_type: str) -> None:
    items = clustered(3000, 16, seed=3)
    queries = clustered(200, 16, seed=4)
    built = build_index(
        items, index=index_type, metric="cosine", sample_queries=queries, target_recall=0.95
    )
    assert built.target_reached, built.trials
    assert built.search_params and built.num_queries == 200
    # the recall recorded is the recall of the parameters left on the index
    exact = exact_search(prepare_vectors(items, "cosine"), prepare_vectors(queries, "cosine"), 10)
    found = build.search(built.index, prepare_vectors(queries, "cosine"), 10)
    assert recall_at_k(found.rows, exact.rows) == pytest.approx(built.recall)


def test_auto_is_exact_below_threshold_and_tuned_ann_above(monkeypatch) -> None:
    items = clustered(2000, 8, seed=5)
    queries = clustered(100, 8, seed=6)
    assert build_index(items, index="auto").index_type == "flat"
    monkeypatch.setattr(build, "AUTO_EXACT_MAX_ITEMS", 1000)
    built = build_index(items, index="auto", metric="dot", sample_queries=queries)
    assert built.index_type == build.AUTO_ANN_INDEX == "ivf" and built.target_reached


def test_auto_falls_back_to_flat_when_target_is_missed(monkeypatch) -> None:
    monkeypatch.setattr(build, "AUTO_EXACT_MAX_ITEMS", 1000)
    monkeypatch.setattr(build, "AUTO_ANN_INDEX", "hnsw")
    monkeypatch.setattr(build, "EF_SEARCH_GRID", (1,))  # a search too narrow to reach 0.999
    items = clustered(3000, 16, seed=7)
    queries = clustered(100, 16, seed=8)
    with pytest.warns(UserWarning, match="building exact search"):
        built = build_index(items, index="auto", sample_queries=queries, target_recall=0.999)
    assert built.index_type == "flat" and built.recall == 1.0
    assert built.trials and built.trials[0].recall < 0.999  # what was tried is kept


def test_explicit_ann_missing_target_warns_and_records_recall(monkeypatch) -> None:
    monkeypatch.setattr(build, "EF_SEARCH_GRID", (1,))
    items = clustered(3000, 16, seed=7)
    queries = clustered(100, 16, seed=8)
    with pytest.warns(UserWarning, match="< target 0.999"):
        built = build_index(items, index="hnsw", sample_queries=queries, target_recall=0.999)
    assert not built.target_reached and built.recall == built.trials[0].recall


def test_missing_sample_queries_warns_and_uses_items() -> None:
    items = clustered(600, 8, seed=9)
    with pytest.warns(UserWarning, match="No `sample_queries`"):
        built = build_index(items, index="ivf")
    assert built.query_source == "item_embeddings"


def test_fixed_search_params_skip_tuning() -> None:
    items = clustered(600, 8, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = build_index(items, index="ivf", search_params={"nprobe": 15}, target_recall=0.5)
    assert built.search_params == {"nprobe": 15} and len(built.trials) == 1


BAD_ARGUMENTS = [
    ({"index": "annoy"}, "`index` must be one of"),
    ({"metric": "l2"}, "`metric` must be one of"),
    ({"target_recall": 0.0}, "`target_recall` must be a number in (0, 1]"),
    ({"target_recall": 1.5}, "`target_recall` must be a number in (0, 1]"),
    ({"recall_k": 0}, "`recall_k` must be a positive integer"),
    ({"index": "auto", "factory": "HNSW16,Flat"}, "`factory` needs an explicit `index`"),
    ({"index": "hnsw", "factory": "NotAnIndex"}, "`factory` must be a FAISS index_factory"),
    ({"index": "ivf", "sample_queries": np.ones((3, 5))}, "`sample_queries` must have"),
]


@pytest.mark.parametrize("kwargs, message", BAD_ARGUMENTS)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    items = clustered(100, 4, seed=0)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_index(items, **kwargs)


@pytest.mark.parametrize(
    "vectors, message",
    [
        (np.ones(5), "must be a 2-D array"),
        (np.ones((0, 4)), "must be a 2-D array"),
        (np.array([[1.0, np.nan]]), "finite numbers. Received: nan at row 0, column 1"),
        (np.array([["a", "b"]]), "must hold real numbers"),
    ],
)
def test_bad_embeddings(vectors: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_index(vectors, index="flat")

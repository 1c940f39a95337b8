"""Smoke test of the index benchmark: a tiny run, then the report's invariants: recalls equal a
direct recomputation, queries/s and speed-ups agree, the target follows from the points."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines import bench_index
from recsampled.index.build import create_index, search, set_search_params

TINY = [
    "--num-items", "3000",
    "--dim", "8",
    "--num-queries", "200",
    "--num-clusters", "20",
    "--timing-queries", "50",
    "--threads", "1",
    "--repeats", "2",
    "--ef-search", "16,64",
    "--nprobe", "4,16",
    "--pq-nprobe", "16",
    "--pq-k-factor", "8",
    "--tfrs", "all",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    output = tmp_path_factory.mktemp("bench") / "index.json"
    returned = bench_index.main([*TINY, "--output", str(output)])
    report = json.loads(output.read_text())
    assert report == json.loads(json.dumps(returned))  # what main returns is what it wrote
    return report, output


def test_report_and_files(run: tuple[dict, Path]) -> None:
    report, output = run
    assert output.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert [e["name"] for e in report["indexes"]] == ["Flat", "HNSW", "IVF-Flat", "IVF-PQ"]
    assert report["settings"]["num_items"] == 3000 and report["machine"]["faiss_threads"] == 1
    assert report["data"] == {"num_items": 3000, "dim": 8, "num_queries": 200,
                              "metric": "cosine", "source": report["data"]["source"]}  # fmt: skip
    # Load: at the start, after each of the 2 rounds, at the end.
    assert [e.get("at", e.get("after_round")) for e in report["load"]] == ["start", 1, 2, "end"]
    tfrs = report["tfrs"]
    assert tfrs["recall"] == 1.0 and tfrs["qps_1_thread"] is None and tfrs["qps_all_threads"] > 0


def test_recalls_equal_a_direct_recomputation(run: tuple[dict, Path]) -> None:
    report, _ = run
    config = bench_index.IndexBenchConfig(num_items=3000, dim=8, num_queries=200, num_clusters=20)
    items, queries, _, _ = bench_index.load_data(config)
    scores = queries @ items.T  # exact top-10 by brute force in NumPy
    exact = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    flat = report["indexes"][0]["points"][0]
    assert flat["recall"] == 1.0
    hnsw = report["indexes"][1]
    index = create_index(items, hnsw["factory"], seed=0)
    for point in hnsw["points"]:
        set_search_params(index, point["params"])
        rows = search(index, queries, 10).rows
        recall = np.mean([len(set(r) & set(e)) / 10 for r, e in zip(rows, exact, strict=True)])
        assert point["recall"] == pytest.approx(recall, abs=1e-5)
    for entry in report["indexes"]:
        assert entry["build_seconds"] >= 0 and entry["size_bytes"] > 0
        for point in entry["points"]:
            assert 0.0 <= point["recall"] <= 1.0
            assert point["qps_1_thread"] > 0 and point["qps_all_threads"] > 0


def test_target_is_computed_from_the_points(run: tuple[dict, Path]) -> None:
    report, _ = run
    target = report["target"]
    assert report["flat"] == {k: report["indexes"][0]["points"][0][k] for k in bench_index.QPS_KEYS}
    for key in bench_index.QPS_KEYS:
        eligible = [
            p[key] for e in report["indexes"][1:] for p in e["points"] if p["recall"] >= 0.95
        ]
        best = target[key]["best"]
        assert (best is None) == (not eligible)
        if best is not None:
            assert best["recall"] >= 0.95 and best["qps"] == max(eligible)
            assert best["speedup_vs_flat"] == pytest.approx(
                best["qps"] / report["flat"][key], abs=0.006
            )
            assert target[key]["met"] == (best["speedup_vs_flat"] >= 10)
    assert target["met"] == (target["qps_1_thread"]["met"] and target["qps_all_threads"]["met"])

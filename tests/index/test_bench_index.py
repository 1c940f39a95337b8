"""Smoke test of the index benchmark: a tiny run, then the report's schema and its target check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import bench_index

TINY = [
    "--num-items", "3000",
    "--dim", "8",
    "--num-queries", "200",
    "--num-clusters", "20",
    "--timing-queries", "50",
    "--threads", "1",
    "--repeats", "1",
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


def test_writes_json_markdown_and_plot(run: tuple[dict, Path]) -> None:
    report, output = run
    assert output.with_suffix(".md").read_text().startswith("# Top-10 search: 3,000 items")
    assert output.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert [e["name"] for e in report["indexes"]] == ["Flat", "HNSW", "IVF-Flat", "IVF-PQ"]
    assert report["indexes"][0]["points"][0]["recall"] == 1.0  # Flat is exact
    assert report["tfrs"]["recall"] == 1.0 and report["tfrs"]["qps_1_thread"] is None


def test_every_point_is_measured(run: tuple[dict, Path]) -> None:
    report, _ = run
    for entry in report["indexes"]:
        assert entry["build_seconds"] >= 0 and entry["size_bytes"] > 0
        for point in entry["points"]:
            assert 0.0 <= point["recall"] <= 1.0
            assert point["qps_1_thread"] > 0 and point["qps_all_threads"] > 0


def test_target_is_computed_from_the_points(run: tuple[dict, Path]) -> None:
    report, _ = run
    target = report["target"]
    for key in ("qps_1_thread", "qps_all_threads"):
        best = target[key]["best"]
        if best is not None:
            assert best["recall"] >= 0.95
            assert best["speedup_vs_flat"] == pytest.approx(
                best["qps"] / report["flat"][key], abs=0.006
            )
            assert target[key]["met"] == (best["speedup_vs_flat"] >= 10)
    assert target["met"] == (target["qps_1_thread"]["met"] and target["qps_all_threads"]["met"])

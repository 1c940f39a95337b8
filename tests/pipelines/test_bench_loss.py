"""Smoke test of the loss benchmark: a tiny run, then the report's schema and arithmetic."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import tensorflow as tf

from pipelines import bench_loss

TINY = [
    "--sizes", "400",
    "--num-sampled", "8",
    "--batch-size", "16",
    "--dim", "4",
    "--repeats", "3",
    "--full-repeats", "2",
    "--warmup", "1",
    "--sampler-sizes", "300",
    "--tf-sampler-sizes", "300",
    "--sampler-num-sampled", "8",
    "--sampler-repeats", "2",
]  # fmt: skip


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    output = tmp_path_factory.mktemp("bench") / "loss.json"
    returned = bench_loss.main([*TINY, "--output", str(output)])
    report = json.loads(output.read_text())
    assert report == json.loads(json.dumps(returned))  # what main returns is what it wrote
    return report, output


def test_writes_json_only(run: tuple[dict, Path]) -> None:
    report, output = run
    assert report["schema_version"] == bench_loss.SCHEMA_VERSION
    assert report["complete"] is True and report["benchmark"] == "pipelines.bench_loss"
    assert not output.with_suffix(".md").exists()  # JSON is the output


def test_machine_settings_and_load(run: tuple[dict, Path]) -> None:
    report, _ = run
    machine = report["machine"]
    assert _positive(machine["cpu_count"])
    assert machine["tensorflow"] == tf.__version__
    assert isinstance(machine["platform"], str) and machine["platform"]
    settings = report["settings"]
    assert settings["sizes"] == [400] and settings["num_sampled"] == [8]
    assert (settings["batch_size"], settings["embedding_dim"]) == (16, 4)
    for when in ("start", "end"):
        load = report["load_average"][when]
        assert len(load) == 3 and all(x >= 0 for x in load)
    assert _positive(report["peak_rss_mb"]) and _positive(report["wall_s"])


def test_loss_points_are_consistent(run: tuple[dict, Path]) -> None:
    report, _ = run
    points = report["loss"]["points"]
    modes = [p["sampled_values"] for p in points]
    assert sorted(modes) == sorted(bench_loss.SAMPLED_VALUES_MODES)
    for p in points:
        assert (p["num_classes"], p["num_sampled"]) == (400, 8)
        for key in ("full_ms", "full_tf_ms", "tf_ms", "ours_ms"):
            assert _positive(p[key]), (key, p[key])
        # Ratios are those of the medians reported beside them.
        assert p["ratio_ours_tf"] == pytest.approx(p["ours_ms"] / p["tf_ms"])
        cpu = {v: p["timings"][v]["cpu_median_ms"] for v in ("tf", "ours")}
        assert p["ratio_ours_tf_cpu"] == pytest.approx(cpu["ours"] / cpu["tf"])
        assert p["speedup_tf_over_full"] == pytest.approx(p["full_ms"] / p["tf_ms"])
        assert p["speedup_ours_over_full"] == pytest.approx(p["full_ms"] / p["ours_ms"])
        assert p["speedup_ours_over_full_tf"] == pytest.approx(p["full_tf_ms"] / p["ours_ms"])
        assert p["within_ratio_target"] == (p["ratio_ours_tf"] <= bench_loss.RATIO_TARGET)
        # Per-round ratios: one per round where both ran; their mean lies within their range.
        for clock in ("wall", "cpu"):
            rounds = p["ratio_ours_tf_per_round"][clock]
            assert rounds["n"] == 3 and _positive(rounds["mean"]) and rounds["se"] >= 0
            assert _positive(rounds["median"])
        for variant, key in (("full", "full_ms"), ("tf", "tf_ms"), ("ours", "ours_ms")):
            timing = p["timings"][variant]
            assert timing["median_ms"] == p[key]
            assert timing["min_ms"] <= timing["q1_ms"] <= timing["median_ms"] <= timing["q3_ms"]
            assert _positive(timing["first_call_ms"])
        assert p["timings"]["full"]["repeats"] == 2
        assert p["timings"]["tf"]["repeats"] == p["timings"]["ours"]["repeats"] == 3
        # The sampled losses hand the optimizer sparse weight and bias gradients.
        for variant in ("tf", "ours"):
            assert p["gradient_types"][variant][:2] == ["IndexedSlices", "IndexedSlices"]


def test_targets_follow_the_points(run: tuple[dict, Path]) -> None:
    report, _ = run
    points, targets = report["loss"]["points"], report["targets"]
    ratio = targets["ratio_within_1_1x"]
    assert ratio["met"] == all(p["within_ratio_target"] for p in points)
    assert ratio["worst_ratio"] == max(p["ratio_ours_tf"] for p in points)
    assert ratio["met_by_cpu_time"] == all(
        p["ratio_ours_tf_cpu"] <= bench_loss.RATIO_TARGET for p in points
    )
    # N=10^6, S=1024 is not part of the tiny run.
    assert targets["speedup_500x_at_1e6_s1024"]["met"] is None


def test_sampler_points(run: tuple[dict, Path]) -> None:
    report, _ = run
    (point,) = report["samplers"]["points"]
    assert point["num_classes"] == 300 and _positive(point["construct_ms"])
    expected = {
        f"{library}|{mode}|{unique}"
        for library, mode in (("ours", "eager"), ("ours", "function"), ("tf", "function"))
        for unique in (True, False)
    }
    assert set(point["variants"]) == expected
    for variant in point["variants"].values():
        assert "error" not in variant, variant
        assert _positive(variant["median_ms"]) and _positive(variant["first_call_ms"])
        assert variant["repeats"] == 2


def test_skipped_full_softmax_is_reported_not_divided() -> None:
    point = {
        "num_classes": 10**6,
        "num_sampled": 1024,
        "sampled_values": "tf_op",
        "full_ms": None,
        "full_tf_ms": None,
        "tf_ms": 20.0,
        "ours_ms": 21.0,
        "ratio_ours_tf": 1.05,
        "ratio_ours_tf_cpu": 1.02,
        "speedup_tf_over_full": None,
        "speedup_ours_over_full": None,
        "speedup_ours_over_full_tf": None,
        "within_ratio_target": True,
    }
    targets = bench_loss.evaluate_targets([point])
    assert targets["ratio_within_1_1x"]["met"] is True
    assert targets["speedup_500x_at_1e6_s1024"]["met"] is None

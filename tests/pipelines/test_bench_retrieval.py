"""Smoke test of the retrieval benchmark: a ``--quick`` run, then the report's schema, and checks
that are computed from the reported numbers (not written by hand)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipelines import bench_retrieval as bench


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    output = tmp_path_factory.mktemp("bench") / "retrieval.json"
    missing = tmp_path_factory.mktemp("no-movielens")
    returned = bench.main(["--quick", "--movielens", str(missing), "--output", str(output)])
    report = json.loads(output.read_text())
    assert report == json.loads(json.dumps(returned))  # what main returns is what it wrote
    return report, output


def test_structure(run: tuple[dict, Path]) -> None:
    report, _ = run
    assert report["schema_version"] == bench.SCHEMA_VERSION
    assert report["settings"]["seeds"] == list(bench.QUICK.seeds)
    assert "movielens-100k" in report["skipped"]  # absent data is skipped, not an error
    entry = report["datasets"]["synthetic"]
    assert set(entry["popularity"]) == set(bench.METRICS)
    assert list(entry["variants"]) == list(bench.VARIANTS)
    for summary in entry["variants"].values():
        for key in (*bench.METRICS, "examples_per_second", "final_loss"):
            values = summary[key]["per_seed"]
            assert len(values) == len(bench.QUICK.seeds) and all(map(_finite, values))
            assert summary[key]["mean"] == pytest.approx(sum(values) / len(values))
            assert summary[key]["std"] >= 0
        assert all(0 <= summary[m]["mean"] <= 1 for m in bench.METRICS)
        assert summary["examples_per_second"]["mean"] > 0
    throughput = entry["fit_throughput"]
    assert len(throughput["epoch_seconds"]["tfrs"]) == bench.QUICK.throughput_rounds
    assert throughput["ours_over_tfrs"] == pytest.approx(
        throughput["examples_per_second"]["ours"] / throughput["examples_per_second"]["tfrs"]
    )
    seconds = throughput["epoch_seconds"]
    assert throughput["ours_over_tfrs_per_round"] == pytest.approx(
        [t / o for t, o in zip(seconds["tfrs"], seconds["ours"], strict=True)]
    )
    assert [b["variant"] for b in entry["step_breakdown"]] == ["tfrs", "ours", "mixed_logq"]
    for b in entry["step_breakdown"]:
        s = b["num_sampled"]
        assert b["multiply_adds"] == 3 * b["batch_size"] * (b["batch_size"] + s) * 32
        assert b["train_step_ms"] > 0 and b["score_matmuls_ms"] > 0 and b["fit_step_ms"] > 0
        assert b["floor_share_of_step"] == pytest.approx(b["floor_ms_at_peak"] / b["train_step_ms"])


def test_checks_are_computed_from_the_numbers(run: tuple[dict, Path]) -> None:
    report, output = run
    entry = report["datasets"]["synthetic"]
    checks = entry["checks"]
    recall = {name: v["recall@20"]["mean"] for name, v in entry["variants"].items()}
    beats = checks["logq_beats_in_batch"]
    assert set(beats["variants"]) == set(bench.LOGQ_VARIANTS)
    for name, v in beats["variants"].items():
        assert v["passed"] == (recall[name] > recall["in_batch"])
    assert beats["passed"] == all(recall[n] > recall["in_batch"] for n in bench.LOGQ_VARIANTS)
    best = checks["best_sampled_within_3_percent"]
    sampled = {k: r for k, r in recall.items() if k != "full_softmax"}
    assert best["best_variant"] == max(sampled, key=sampled.get)
    gap = 1 - sampled[best["best_variant"]] / recall["full_softmax"]
    assert best["relative_gap"] == pytest.approx(gap)
    assert best["passed"] == (gap <= 0.03)
    per_round = np.asarray(entry["fit_throughput"]["ours_over_tfrs_per_round"])
    se = per_round.std(ddof=1) / np.sqrt(per_round.size)
    assert checks["ours_at_least_tfrs_fit_throughput"]["passed"] == bool(
        per_round.mean() + 2 * se >= 1.0
    )
    assert output.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checks_follow_the_numbers() -> None:
    """Moving the numbers flips the verdicts: nothing is hard-coded."""

    def summary(recall: float) -> dict:
        return {"recall@20": {"mean": recall, "std": 0.01, "per_seed": [recall]}}

    variants = {name: summary(0.30) for name in bench.VARIANTS}
    variants["full_softmax"] = summary(0.305)
    variants["in_batch"] = summary(0.25)
    checks = bench.quality_checks(variants)
    assert checks["logq_beats_in_batch"]["passed"]
    assert checks["best_sampled_within_3_percent"]["passed"]  # 1 - 0.30 / 0.305 = 1.6%
    failing = copy.deepcopy(variants)
    failing["in_batch_logq_streaming"] = summary(0.24)
    failing["full_softmax"] = summary(0.40)
    checks = bench.quality_checks(failing)
    assert not checks["logq_beats_in_batch"]["passed"]
    assert not checks["logq_beats_in_batch"]["variants"]["in_batch_logq_streaming"]["passed"]
    assert checks["logq_beats_in_batch"]["variants"]["mixed_logq"]["passed"]
    assert not checks["best_sampled_within_3_percent"]["passed"]
    assert checks["best_sampled_within_3_percent"]["relative_gap"] == pytest.approx(0.25)
    throughput = {"examples_per_second": {"ours": 90.0, "tfrs": 100.0}}
    assert not bench.throughput_check(throughput)["passed"]
    # With per-round ratios: parity within noise passes, a clear slowdown fails.
    throughput["ours_over_tfrs_per_round"] = [0.98, 1.03, 0.99, 1.01]
    assert bench.throughput_check(throughput)["passed"]
    throughput["ours_over_tfrs_per_round"] = [0.90, 0.91, 0.89, 0.90]
    assert not bench.throughput_check(throughput)["passed"]


def test_summary_over_seeds() -> None:
    summary = bench.summarise([{"recall@20": 0.2}, {"recall@20": 0.4}])["recall@20"]
    assert summary["mean"] == pytest.approx(0.3)
    assert summary["std"] == pytest.approx(0.1414, abs=1e-4)  # sample standard deviation
    assert summary["per_seed"] == [0.2, 0.4]


def test_paired_differences() -> None:
    def summary(values: list[float]) -> dict:
        return {"recall@20": {"mean": sum(values) / len(values), "std": 0.0, "per_seed": values}}

    variants = {name: summary([0.33, 0.35, 0.31]) for name in bench.VARIANTS}
    variants["in_batch"] = summary([0.30, 0.33, 0.30])
    checks = bench.quality_checks(variants)
    paired = checks["logq_beats_in_batch"]["variants"]["mixed_logq"]["paired_difference"]
    assert paired["per_seed"] == pytest.approx([0.03, 0.02, 0.01])
    assert paired["t"] == pytest.approx(0.02 / (0.01 / 3**0.5))


def test_checks_are_recomputed_from_the_json(run: tuple[dict, Path]) -> None:
    """Editing a number in the JSON and recomputing changes the verdict: checks are derived."""
    report, _ = run
    edited = copy.deepcopy(report)
    entry = edited["datasets"]["synthetic"]
    entry["variants"]["in_batch"]["recall@20"]["mean"] = 1.0
    entry["fit_throughput"]["examples_per_second"]["ours"] = 0.5
    entry["fit_throughput"]["examples_per_second"]["tfrs"] = 1.0
    rounds = len(entry["fit_throughput"]["ours_over_tfrs_per_round"])
    entry["fit_throughput"]["ours_over_tfrs_per_round"] = [0.5, 0.6] * max(rounds // 2, 1)
    assert report["datasets"]["synthetic"]["checks"] == bench.all_checks(
        report["datasets"]["synthetic"]
    )
    checks = bench.all_checks(entry)
    assert not checks["logq_beats_in_batch"]["passed"]
    assert checks["best_sampled_within_3_percent"]["best_variant"] == "in_batch"
    assert not checks["ours_at_least_tfrs_fit_throughput"]["passed"]


def test_popularity_recall_equals_a_direct_recomputation(run: tuple[dict, Path]) -> None:
    report, _ = run
    data = bench.load("synthetic", bench.QUICK)
    train, test = data.train, data.test
    counts = np.bincount(train.item_ids, minlength=data.num_items).astype(float)
    recalls = []
    for user in np.unique(test.user_ids):
        scores = counts.copy()
        scores[train.item_ids[train.user_ids == user]] = -np.inf  # seen items removed
        top = np.argsort(-scores, kind="stable")[:20]
        held_out = set(test.item_ids[test.user_ids == user].tolist())
        recalls.append(len(held_out & set(top.tolist())) / len(held_out))
    popularity = report["datasets"]["synthetic"]["popularity"]
    assert popularity["recall@20"] == pytest.approx(np.mean(recalls), abs=2e-3)
    assert all(0.0 <= popularity[m] <= 1.0 for m in bench.METRICS)


@pytest.mark.skipif(not (bench.MOVIELENS / "u.data").exists(), reason="MovieLens 100K absent")
def test_movielens_tower_features() -> None:
    data = bench.load_movielens(bench.MOVIELENS)
    users, items = data.user_features, data.item_features
    assert (data.num_users, data.num_items) == (943, 1682)
    assert set(users["categorical"]) == {"gender", "occupation"} and set(users["numeric"]) == {
        "age"
    }
    for column in (*users["categorical"].values(), *users["numeric"].values()):
        assert column.shape == (943,)
    assert users["categorical"]["occupation"].max() == 20  # 21 occupations
    assert set(np.unique(users["categorical"]["gender"])) == {0, 1}
    assert 7 <= users["numeric"]["age"].min() and users["numeric"]["age"].max() <= 73
    genres = items["categorical"]["genres"]
    assert genres.shape == (1682, 19) and set(np.unique(genres)) == {0.0, 1.0}


def test_issue_shape_throughput_is_computed_from_its_timings() -> None:
    """The head-to-head of issue 17 on a tiny log: ratios and the floor follow the timings."""
    tiny = {"num_users": 300, "num_items": 200, "num_interactions": 6000, "num_clusters": 5,
            "seed": 0}  # fmt: skip
    result = bench.shape_throughput(2, steps=3, shape=tiny, dim=8, batch_size=64)
    assert set(result["tasks"]) == set(bench.SHAPE_TASKS)
    floor = result["floor"]
    assert floor["score_flops"] == 6 * 64 * 64 * 8
    assert floor["matmul_floor_ms"] == pytest.approx(
        floor["score_flops"] / (floor["gemm_gflops"] * 1e6)
    )
    assert floor["floor_ms"] == pytest.approx(floor["matmul_floor_ms"] + floor["gathers_ms"])
    assert floor["shape_floor_ms"] == pytest.approx(floor["step_matmuls_ms"] + floor["gathers_ms"])
    assert result["tasks"]["tfrs_recipe"]["over_tfrs"] == pytest.approx(1.0)
    for task in result["tasks"].values():
        assert task["examples_per_second"] == pytest.approx(1e3 * 64 / task["step_ms"])
        assert task["step_over_floor"] == pytest.approx(task["step_ms"] / floor["floor_ms"])
        shape_floor = task["step_ms"] / floor["shape_floor_ms"]
        assert task["step_over_shape_floor"] == pytest.approx(shape_floor)
        assert task["step_ms"] > 0 and task["step_cpu_ms"] > 0 and task["over_tfrs"] > 0


def test_catalogue_throughput_compares_the_by_id_step_with_the_default_rules() -> None:
    """The 10^6-item config's head-to-head, shrunk: the three tasks ran and the ratios follow."""
    small = ["data.synthetic.num_users=300", "data.synthetic.num_items=400",
             "data.synthetic.num_interactions=6000", "data.synthetic.num_clusters=5",
             "training.batch_size=64", "task.num_sampled=16"]  # fmt: skip
    result = bench.catalogue_throughput(2, steps=3, overrides=small)
    assert set(result["tasks"]) == set(bench.CATALOGUE_TASKS)
    assert result["shape"]["batch_size"] == 64 and result["shape"]["num_sampled"] == 16
    tasks = result["tasks"]
    assert tasks["tfrs_recipe"]["over_tfrs"] == pytest.approx(1.0)
    assert tasks["recsampled_default_rules"]["over_default_rules"] == pytest.approx(1.0)
    for task in tasks.values():
        assert task["examples_per_second"] == pytest.approx(1e3 * 64 / task["step_ms"])

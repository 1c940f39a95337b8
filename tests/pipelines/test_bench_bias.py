"""The bias study: its exact expectation against enumeration, and a ``--quick`` run's report."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines import bench_bias

ROOT = Path(__file__).resolve().parents[2]


def _sampled_gradient(e: np.ndarray, y: int, q: np.ndarray, ids: tuple, convention: str):
    """∂L̂/∂o of one draw, by hand: hits removed, negatives corrected by log(S·q)."""
    s = len(ids)
    a = e[y] if convention == "negatives_only" else e[y] / (s * q[y])
    terms = [0.0 if i == y else e[i] / (s * q[i]) for i in ids]
    denominator = a + sum(terms)
    grad = np.zeros_like(e)
    grad[y] = a / denominator - 1.0
    for i, term in zip(ids, terms, strict=True):
        grad[i] += term / denominator
    return grad


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_sampled", [1, 2, 3])
def test_expected_coefficients_equal_enumeration(seed: int, num_sampled: int) -> None:
    # Every ordered draw of S ids out of n = 5, weighted by its probability: the exact mean.
    rng = np.random.default_rng(seed)
    e = np.exp(rng.normal(0, 1.5, 5))
    q = rng.dirichlet(np.ones(5))
    y = int(rng.integers(5))
    got = bench_bias.expected_coefficients(e, y, q, [num_sampled])
    for convention in bench_bias.CONVENTIONS:
        exact = np.zeros(5)
        for ids in itertools.product(range(5), repeat=num_sampled):
            exact += np.prod(q[list(ids)]) * _sampled_gradient(e, y, q, ids, convention)
        np.testing.assert_allclose(got[(num_sampled, convention)], exact, rtol=1e-7, atol=1e-10)


def test_softmax_over_negatives_is_unbiased_and_tf_convention_is_not() -> None:
    rng = np.random.default_rng(3)
    e = np.exp(rng.normal(0, 2, 50))
    y = 7
    q = e.copy()
    q[y] = 0.0
    q /= q.sum()
    full = e / e.sum() - np.eye(50)[y]
    got = bench_bias.expected_coefficients(e, y, q, [4, 64])
    for s in (4, 64):
        np.testing.assert_allclose(got[(s, "negatives_only")], full, atol=1e-9)
    # With the softmax over all items and the positive corrected too, every corrected logit is
    # log Z - log S: the positive gets about 1/(S+1) of the sampled softmax, not p_y.
    p = e / e.sum()
    tf_conv = bench_bias.expected_coefficients(e, y, p, [4])[(4, "tf")]
    assert tf_conv[y] + 1 == pytest.approx(1 / 5, rel=0.1)
    assert abs(tf_conv[y] - full[y]) > 0.1


def test_categorical_draws_follow_the_probabilities() -> None:
    rng = np.random.default_rng(0)
    weights = rng.random((3, 6)) * np.array([0, 1, 1, 2, 5, 1])  # item 0 impossible
    dist = bench_bias.Categorical(weights)
    ids = dist.draw(20_000, rng)
    assert ids.shape == (3, 20_000) and ids.dtype == np.int64
    for row in range(3):
        freq = np.bincount(ids[row], minlength=6) / ids.shape[1]
        p = dist.probabilities[row]
        assert freq[0] == 0
        assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / ids.shape[1]) + 1e-12)


def test_kernel_proposal_is_the_formula() -> None:
    rng = np.random.default_rng(1)
    w, h = rng.normal(size=(40, 4)), rng.normal(size=(2, 4))
    dist = bench_bias.Categorical(bench_bias.kernel_weights(h, w, alpha=100.0))
    mass = 100.0 * (h @ w.T) ** 2 + 1
    np.testing.assert_allclose(dist.probabilities, mass / mass.sum(1, keepdims=True), rtol=1e-12)
    values = dist.sampled_values(np.array([[3], [4]]), 8, rng)
    assert values.sampled_candidates.shape == (2, 8)
    np.testing.assert_allclose(
        values.true_expected_count.numpy()[:, 0], 8 * dist.probabilities[[0, 1], [3, 4]], rtol=1e-6
    )


def test_samples_to_reach() -> None:
    grid = [4, 16, 64, 256]
    s, how = bench_bias.samples_to_reach(grid, [0.4, 0.2, 0.1, 0.05], 0.1)
    assert (s, how) == (pytest.approx(64), "interpolated")
    s, how = bench_bias.samples_to_reach(grid, [0.4, 0.2, 0.1, 0.05], 0.5)
    assert how == "extrapolated_below" and s == pytest.approx(4 * (0.4 / 0.5) ** 2)
    assert bench_bias.samples_to_reach(grid, [0.4, 0.2, 0.1, 0.05], 10.0) == (None, "below_grid")
    assert bench_bias.samples_to_reach(grid, [0.4, 0.3, 0.3, 0.3], 0.01) == (None, "above_grid")


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    output = tmp_path_factory.mktemp("bias") / "bias.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, "-m", "pipelines.bench_bias", "--quick", "--output", str(output)],
        check=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=600,
    )
    return json.loads(output.read_text()), output


def test_quick_report_structure(quick: tuple[dict, Path]) -> None:
    report, output = quick
    assert report["schema_version"] == bench_bias.SCHEMA_VERSION and report["complete"]
    assert set(report["datasets"]) == {"synthetic"}
    entry = report["datasets"]["synthetic"]
    settings = bench_bias.QUICK
    points = entry["bias"]["points"]
    assert {(p["proposal"], p["num_sampled"]) for p in points} == set(
        itertools.product(bench_bias.PROPOSALS, settings.bias_num_sampled)
    )
    for p in points:
        for c in bench_bias.CONVENTIONS:
            for part in bench_bias.PARTS:
                stats = p[c][part]
                assert set(stats) >= {"bias", "cosine", "per_draw_error", "mc_check"}
                assert all(math.isfinite(v) for v in stats.values())
                assert -1 <= stats["cosine"] <= 1 and stats["bias"] >= 0
    # The tree's batch mixture is the brute-force mixture.
    assert entry["bias"]["kernel_check"]["max_relative_difference_of_tree_mixture"] < 1e-4
    runs = entry["recall"]["runs"]
    assert [r["proposal"] for r in runs] == ["full_softmax", *bench_bias.TRAINED]
    for name in ("bias_synthetic.png", "bias_recall.png"):
        assert (output.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {r["metric"] for r in entry["bias"]["ratios"]} == set(bench_bias.RATIO_METRICS)
    for r in entry["bias"]["ratios"]:
        if r["ratio"] is not None:
            assert r["ratio"] == pytest.approx(r["reference_num_sampled"] / r["kernel_num_sampled"])


def test_quick_step_times_and_equal_time(quick: tuple[dict, Path]) -> None:
    entry = quick[0]["datasets"]["synthetic"]
    settings = bench_bias.QUICK
    times = entry["step_ms"]
    assert set(times) == {"full_softmax", *bench_bias.TRAINED}
    assert set(times["in_batch"]) == {str(settings.batch_size - 1)}
    for proposal in ("uniform", "unigram", "kernel", "kernel_mixture"):
        assert set(times[proposal]) == {str(s) for s in settings.bias_num_sampled}
        assert all(t["median_ms"] > 0 for t in times[proposal].values())
    for t in times["kernel_mixture"].values():  # the step plus its share of a tree rebuild
        share = t["rebuild_median_ms"] / settings.kernel_rebuild_every
        assert t["median_ms"] == pytest.approx(t["step_median_ms"] + share) and share > 0
    rows = entry["equal_time"]
    assert len(rows) == len(settings.bias_num_sampled) * len(bench_bias.TRAINED)
    bias = {
        (p["proposal"], p["num_sampled"]): p["tf"]["item_table"]["bias"]
        for p in entry["bias"]["points"]
    }
    for row in rows:  # the unigram at its own budget affords its own S, with its own bias
        if row["proposal"] == "unigram":
            s = row["unigram_num_sampled"]
            assert row["num_sampled"] == pytest.approx(s, rel=1e-6)
            assert row["bias"] == pytest.approx(bias[("unigram", s)], rel=1e-6)
        elif row["num_sampled"] is not None:
            assert row["bias"] is not None and row["bias"] > 0


def test_loglog_interpolation() -> None:
    assert bench_bias._loglog([1, 100], [10, 1000], 10) == pytest.approx(100)
    assert bench_bias._loglog([1, 100], [10, 1000], 1000) is None


def _curve(points: list[dict], proposal: str, convention: str, key: str, part: str) -> list:
    return [
        p[convention][part][key]
        for p in sorted(points, key=lambda p: p["num_sampled"])
        if p["proposal"] == proposal
    ]


@pytest.mark.parametrize("part", bench_bias.PARTS)
def test_quick_bias_is_sane(quick: tuple[dict, Path], part: str) -> None:
    points = quick[0]["datasets"]["synthetic"]["bias"]["points"]
    softmax = _curve(points, "softmax", "negatives_only", "bias", part)
    assert max(softmax) < 0.01  # the softmax proposal is (almost) unbiased
    for proposal in ("uniform", "unigram", "in_batch", "kernel", "kernel_mixture"):
        bias = _curve(points, proposal, "negatives_only", "bias", part)
        assert all(b > s for b, s in zip(bias, softmax, strict=True)), proposal
        assert all(x > y for x, y in itertools.pairwise(bias)), (proposal, bias)
        err = _curve(points, proposal, "negatives_only", "per_draw_error", part)
        assert all(e >= b for e, b in zip(err, bias, strict=True))  # Jensen
    for proposal in ("uniform", "unigram", "kernel"):
        err = _curve(points, proposal, "negatives_only", "per_draw_error", part)
        assert all(x > y for x, y in itertools.pairwise(err)), (proposal, err)
    # The kernel follows the model: one draw is closer to g than a uniform draw at every S.
    kernel = _curve(points, "kernel", "negatives_only", "per_draw_error", part)
    uniform = _curve(points, "uniform", "negatives_only", "per_draw_error", part)
    assert all(k < u for k, u in zip(kernel, uniform, strict=True))
    # The Monte Carlo mean of the draws agrees with the exact expectation.
    for p in points:
        for c in bench_bias.CONVENTIONS:
            assert 0.2 < p[c][part]["mc_check"] < 4, (p["proposal"], p["num_sampled"], c)


def test_quick_recall_is_sane(quick: tuple[dict, Path]) -> None:
    recall = quick[0]["datasets"]["synthetic"]["recall"]
    popularity = recall["popularity"]["recall@20"]
    for run in recall["runs"]:
        assert 0 <= run["metrics"]["recall@20"] <= 1
        assert run["steps"] > 0 and all(math.isfinite(x) for x in run["loss"])
    full = next(r for r in recall["runs"] if r["proposal"] == "full_softmax")
    assert full["metrics"]["recall@20"] > popularity


def test_never_drawn_items_get_no_expected_gradient() -> None:
    """q_i = 0 (an item the in-batch proposal never holds): coefficient 0 (by enumeration)."""
    e = np.array([1.0, 2.0, 3.0, 4.0])
    q = np.array([0.5, 0.0, 0.25, 0.25])
    got = bench_bias.expected_coefficients(e, 0, q, [2])
    for convention in bench_bias.CONVENTIONS:
        exact = np.zeros(4)
        for ids in itertools.product([0, 2, 3], repeat=2):
            exact += np.prod(q[list(ids)]) * _sampled_gradient(e, 0, q, ids, convention)
        np.testing.assert_allclose(got[(2, convention)], exact, rtol=1e-7, atol=1e-10)

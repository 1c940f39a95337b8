"""Smoke test of the kernel-sampler benchmark (``--quick``): the report's numbers and invariants,
and the chunked full-softmax step against autodiff."""

from __future__ import annotations

import json
import math

import numpy as np
import tensorflow as tf

from pipelines import bench_kernel


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_quick_run_writes_json(tmp_path):
    output = tmp_path / "kernel.json"
    returned = bench_kernel.main(["--quick", "--output", str(output)])
    report = json.loads(output.read_text())
    assert report == json.loads(json.dumps(returned))
    assert report["schema_version"] == bench_kernel.SCHEMA_VERSION and report["complete"]
    (point,) = report["samplers"]
    assert point["num_classes"] == 3000 and point["memory_bytes"] > 0
    for name in ("sample_mixture", "sample_per_query", "rebuild", "update"):
        assert _positive(point["times"][name]["median_ms"])
        assert _positive(point["times"][name]["cpu_median_ms"])
    step = report["step"]
    names = {"kernel_mixture", "unigram", "kernel_per_query", "unigram_small", "rebuild", "full"}
    names |= {"gemm_f32", "gemm_f64", "gemm_leaves"}
    assert set(step["times"]) == names
    assert all(_positive(t["median_ms"]) for t in step["times"].values())
    ratios = step["ratios"]
    assert math.isclose(ratios["rebuild_ms_per_step"], step["times"]["rebuild"]["median_ms"] / 100)
    # The amortised mixture step is the step plus the rebuild share.
    assert ratios["kernel_mixture_amortised_ms"] > step["times"]["kernel_mixture"]["min_ms"]
    amortised = ratios["kernel_mixture_amortised_over_unigram"]
    assert amortised["n"] == 2 and _positive(amortised["median"])
    # The arithmetic: flops over the GEMM rates of the same run.
    arithmetic, d = step["arithmetic"], step["embedding_dim"]
    rebuild_flops = 2.0 * step["num_classes"] * d * d
    assert arithmetic["flops"]["rebuild_root_f64"] == rebuild_flops
    rate = arithmetic["gflops_per_s"]["gemm_f32"]
    assert math.isclose(rate, rebuild_flops / step["times"]["gemm_f32"]["median_ms"] * 1e-6)
    floor = arithmetic["floor_ms"]
    assert math.isclose(
        floor["leaf_scoring_per_step"], arithmetic["flops"]["leaf_scoring_per_step"] / rate * 1e-6
    )
    assert floor["kernel_mixture_amortised_floor_over_unigram"] > 1.0
    cpu = ratios["kernel_mixture_amortised_over_unigram_cpu"]
    assert cpu["n"] == 2 and _positive(cpu["median"])
    for suffix in ("", "_cpu"):
        every = ratios[f"rebuild_every_for_target{suffix}"]
        assert every is None or (isinstance(every, int) and every >= 1)
    targets = report["targets"]
    assert targets["kernel_mixture_amortised_over_unigram"] == amortised["median"]
    assert targets["mixture_met"] == (amortised["median"] <= bench_kernel.TARGET_MIXTURE_RATIO)
    assert isinstance(targets["memory_met"], bool)


def test_chunked_full_softmax_step_equals_autodiff():
    """The hand-formed gradients of the chunked full-softmax step are autodiff's."""
    rng = np.random.default_rng(0)
    table, queries = rng.normal(size=(30, 4)), rng.normal(size=(7, 4))
    labels = tf.constant(rng.integers(0, 30, size=(7, 1)))

    def variables():
        return (
            tf.Variable(table, dtype=tf.float32),
            tf.Variable(rng.normal(size=30), dtype=tf.float32),
            tf.Variable(queries, dtype=tf.float32),
        )

    ours = variables()
    reference = [tf.Variable(v) for v in ours]
    bench_kernel._full_step(*ours, chunk=3)(labels)
    with tf.GradientTape() as tape:
        logits = tf.matmul(reference[2], reference[0], transpose_b=True) + reference[1]
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels[:, 0], logits))
    grads = tape.gradient(loss, reference)
    tf.keras.optimizers.Adagrad(0.1).apply_gradients(zip(grads, reference, strict=True))
    for a, b in zip(ours, reference, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)

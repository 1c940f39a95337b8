"""Smoke test of the kernel-sampler benchmark: ``--quick``, then the report's schema."""

from __future__ import annotations

import json
import math

from pipelines import bench_kernel


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_quick_run_writes_json_and_markdown(tmp_path):
    output = tmp_path / "kernel.json"
    returned = bench_kernel.main(["--quick", "--output", str(output)])
    report = json.loads(output.read_text())
    assert report == json.loads(json.dumps(returned))
    assert report["schema_version"] == bench_kernel.SCHEMA_VERSION
    (point,) = report["samplers"]
    assert point["num_classes"] == 3000 and point["memory_bytes"] > 0
    for name in ("sample", "rebuild", "update"):
        assert _positive(point["times"][name]["median_ms"])
        assert _positive(point["times"][name]["cpu_median_ms"])
    step = report["step"]["times"]
    assert set(step) == {"kernel", "unigram", "full"}
    assert all(_positive(t["median_ms"]) for t in step.values())
    targets = report["targets"]
    assert math.isclose(
        targets["kernel_over_unigram"],
        step["kernel"]["median_ms"] / step["unigram"]["median_ms"],
    )
    assert isinstance(targets["memory_met"], bool)
    markdown = output.with_suffix(".md").read_text()
    assert "Training step" in markdown and "Targets" in markdown


def test_chunked_full_softmax_step_equals_autodiff():
    """The hand-formed gradients of the chunked full-softmax step are autodiff's."""
    import numpy as np
    import tensorflow as tf

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

"""Smoke test of ``pipelines/lm_example.py`` and checks of its Markov chain's known entropy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines import lm_example


def test_chain_entropy_rate_and_stationary_law_match_the_dense_chain():
    chain = lm_example.make_markov_chain(120, 5, seed=3)
    # The dense chain: P[i, j] = T[c(i), c(j)] * within[j].
    dense = chain.transitions[chain.cluster_of][:, chain.cluster_of] * chain.within
    np.testing.assert_allclose(dense.sum(axis=1), 1.0, atol=1e-12)
    stationary = np.full(120, 1 / 120)
    for _ in range(500):
        stationary = stationary @ dense
    np.testing.assert_allclose(chain.stationary, stationary, atol=1e-12)
    assert np.all(np.diff(chain.stationary) <= 0)  # ids sorted by decreasing frequency
    rows = -(dense * np.log(dense)).sum(axis=1)
    np.testing.assert_allclose(chain.entropy_rate, stationary @ rows, rtol=1e-10)
    # Sampled sequences follow the chain: the true model's cross-entropy is the entropy rate.
    sequences = lm_example.sample_sequences(chain, 2000, 20, seed=1)
    cross_entropy = -np.log(dense[sequences[:, :-1], sequences[:, 1:]]).mean()
    np.testing.assert_allclose(cross_entropy, chain.entropy_rate, rtol=0.01)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:tf.keras.optimizers.Adam updates all")  # the quality run's
@pytest.mark.filterwarnings("ignore:Even though the `tf.config.experimental_run_functions_eagerly")
def test_end_to_end_on_a_tiny_configuration(tmp_path):
    import tensorflow as tf

    output = tmp_path / "lm.json"
    argv = [
        f"--output={output}",
        *("--vocab-size=200", "--num-clusters=4", "--num-sampled=20"),
        *("--embedding-dim=8", "--units=8", "--length=5", "--batch-size=16"),
        *("--quality-steps=3", "--test-sequences=32"),
        *("--speed-optimizers", "lazy_adam"),
        *("--speed-vocab-size=300", "--speed-num-sampled=20", "--speed-embedding-dim=8"),
        *("--speed-units=8", "--speed-batch-size=4"),
        *("--speed-length=3", "--speed-steps=2"),
    ]
    # Tracing eight tiny LSTM graphs costs most of a minute; eagerly the same steps take seconds.
    tf.config.run_functions_eagerly(True)
    try:
        lm_example.main(argv)
    finally:
        tf.config.run_functions_eagerly(False)
    results = json.loads(output.read_text())
    quality = results["quality"]
    assert quality["data"]["train_steps"] == 3
    for name in ("sampled", "full"):
        assert 0 < quality[name]["heldout_cross_entropy"] < 2 * np.log(200)
    assert quality["ratio"] == pytest.approx(
        quality["sampled"]["heldout_cross_entropy"] / quality["full"]["heldout_cross_entropy"]
    )
    speed = results["step_time"]["lazy_adam"]
    assert speed["sparse_updates"] is True
    for part, models in [
        ("whole", {"sampled", "full"}),
        ("output_layer", {"sampled", "full"}),
        ("body", {"default"}),
    ]:
        assert set(speed[part]) == models | {"load_average"}
        for r in (speed[part][name] for name in models):
            assert len(r["step_seconds"]) == len(r["cpu_seconds"]) == 2
            assert r["median_step_seconds"] > 0 and r["median_cpu_seconds"] >= 0
    assert speed["speedup"] > 0 and speed["output_layer_speedup"] > 0
    assert speed["speedup_bound_from_body"] == pytest.approx(
        speed["whole"]["full"]["median_step_seconds"]
        / speed["body"]["default"]["median_step_seconds"]
    )
    assert speed["speedup_cpu"] == pytest.approx(
        speed["whole"]["full"]["median_cpu_seconds"]
        / max(speed["whole"]["sampled"]["median_cpu_seconds"], 1e-9)
    )
    assert speed["passed"] == (min(speed["speedup"], speed["speedup_cpu"]) >= 20)
    assert results["settings"]["speed_optimizers"] == ["lazy_adam"]
    assert not output.with_suffix(".md").exists()  # JSON is the output


def test_sparse_flags_of_the_benchmark_optimizers_match_the_library():
    from recsampled.layers.optimizers import DENSE_OPTIMIZERS

    for name, (make, sparse) in lm_example.OPTIMIZERS.items():
        assert sparse == (type(make()) not in DENSE_OPTIMIZERS), name

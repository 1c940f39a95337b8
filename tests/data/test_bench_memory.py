"""Smoke test of ``pipelines/bench_memory.py`` on a tiny log, stages run in this process (the
benchmark itself runs each in a fresh one). Lives here with the data tests it exercises."""

from __future__ import annotations

from pipelines import bench_memory


def test_tiny_run_in_process(tmp_path):
    config = bench_memory.MemoryBenchConfig(
        num_users=50,
        num_items=80,
        num_interactions=1_000,
        num_clusters=4,
        train_steps=3,
        train_overrides=(
            "task.num_sampled=16",
            "task.estimator.num_buckets=1024",
            "training.batch_size=64",
            "evaluation.max_users=20",
        ),
    )
    report = bench_memory.run(config, str(tmp_path), run_stage=bench_memory._stage)
    stages = report["stages"]
    assert list(stages) == list(bench_memory.STAGES)
    assert stages["generate"]["rows"] == 1_000
    assert stages["generate"]["parquet_bytes"] > 0 and stages["generate"]["csv_bytes"] > 0
    assert stages["load_parquet"]["rows_kept"] == stages["load_csv"]["rows_kept"] > 0
    assert stages["dataset_pass"]["batches"] == -(-stages["dataset_pass"]["rows"] // 8192)
    raw = report["raw_id_columns"]["bytes"]
    for name in ("load_parquet", "load_csv"):
        stage = stages[name]
        assert stage["peak_above_baseline_bytes"] >= 0 and stage["seconds"] >= 0
        # Linux's RSS counters are synced lazily, so a peak may read a little under its baseline.
        peak, baseline = stage["peak_rss_bytes"], stage["baseline_rss_bytes"]
        assert stage["peak_above_baseline_bytes"] == max(peak - baseline, 0) and baseline > 0
        assert stage["ratio_to_raw_id_columns"] == round(
            stage["peak_above_baseline_bytes"] / raw, 3
        )
    ratios = [stages[n]["ratio_to_raw_id_columns"] for n in bench_memory.LOAD_STAGES]
    assert report["passed"] == (max(ratios) <= bench_memory.RATIO_TARGET)
    train = stages["train"]
    assert train["steps"] == train["steps_per_epoch"] == 3
    assert train["peak_above_baseline_bytes"] > 0
    assert 0.0 <= train["recall"]["20"] <= 1.0 and 0.0 <= train["popularity_recall"]["20"] <= 1.0
    assert report["raw_id_columns"] == {
        "dtype": "int64",
        "columns": 2,
        "rows": 1_000,
        "bytes": 16_000,
    }
    assert report["settings"]["num_interactions"] == 1_000


def test_command_line_options():
    config, args = bench_memory.harness.parse_options(
        bench_memory.MemoryBenchConfig,
        ["--rows", "1e5", "--stages", "load_csv", "--train-overrides", "a=1,b=2"],
        prog="bench_memory",
        output="x.json",
    )
    assert (config.num_interactions, config.stages) == (100_000, ("load_csv",))
    assert config.train_overrides == ("a=1", "b=2")

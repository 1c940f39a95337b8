"""Smoke test of ``pipelines/bench_memory.py`` on a tiny log, stages run in this process (the
benchmark itself runs each in a fresh one). Lives here with the data tests it exercises."""

from __future__ import annotations

from pipelines import bench_memory


def test_tiny_run_in_process(tmp_path):
    config = {
        "num_users": 50,
        "num_items": 80,
        "num_interactions": 1_000,
        "num_clusters": 4,
        "seed": 0,
        "train_steps": 3,
        "train_overrides": [
            "task.num_sampled=16",
            "task.estimator.num_buckets=1024",
            "training.batch_size=64",
            "evaluation.max_users=20",
        ],
    }
    report = bench_memory.run(
        config,
        str(tmp_path),
        ["load_parquet", "load_csv", "dataset_pass", "train"],
        run_stage=bench_memory._stage,
    )
    stages = report["stages"]
    assert set(stages) == {"generate", "load_parquet", "load_csv", "dataset_pass", "train"}
    assert stages["generate"]["rows"] == 1_000
    assert stages["load_parquet"]["rows_kept"] == stages["load_csv"]["rows_kept"] > 0
    for name in ("load_parquet", "load_csv"):
        stage = stages[name]
        assert stage["peak_above_baseline_bytes"] >= 0 and stage["seconds"] >= 0
        assert stage["ratio_to_raw_id_columns"] == round(
            stage["peak_above_baseline_bytes"] / report["raw_id_columns"]["bytes"], 3
        )
    train = stages["train"]
    assert train["steps"] == train["steps_per_epoch"] == 3
    assert train["peak_above_baseline_bytes"] > 0
    assert 0.0 <= train["recall"]["20"] <= 1.0
    assert report["raw_id_columns"] == {
        "dtype": "int64",
        "columns": 2,
        "rows": 1_000,
        "bytes": 16_000,
    }
    markdown = bench_memory.table(report)
    assert "| load_csv |" in markdown and "| train |" in markdown

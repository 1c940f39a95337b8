"""Benchmark: peak memory of generating, writing and loading a 10^7-row synthetic log.

Run ``python -m pipelines.bench_memory --output benchmarks/memory.json``; it writes the JSON and a
Markdown table beside it (``benchmarks/memory.md``) and prints the table.

**Stages.** Each stage runs in a fresh process (``multiprocessing`` "spawn"), so that one stage's
memory never counts towards another's:

1. ``generate``: ``recsampled.data.synthetic.generate`` (``SIZES["large"]``: 2*10^5 users,
   10^6 items, 10^7 rows), then the log written as Parquet and as CSV.
2. ``load_parquet``, ``load_csv``: ``read_interactions(path, timestamp_col="timestamp")`` with the
   defaults (de-duplication on), as training would load the file.
3. ``dataset_pass``: load the Parquet file, then one shuffled pass of
   ``recsampled.data.dataset.make_dataset`` (batch size 8192) over the training rows.
4. ``train``: ``recsampled.training.train`` with ``configs/large-catalogue.yaml`` (mixed negatives,
   streaming logQ, Adagrad) reading the Parquet log as a user's file (``data.source: file``),
   for ``--train-epochs`` epochs (default 1): load, split, fit with checkpoints, save the towers,
   evaluate on the full catalogue. Its peak is reported against the same raw id columns.

**Memory.** After its imports, each stage resets the kernel's high-water mark of its resident
set (``/proc/self/clear_refs``), which restarts at the current resident set (``baseline``), runs,
and reports ``peak - baseline``: the memory the stage itself needed. Where the reset is not
permitted (``peak_reset: false``), the baseline is the resident set and the peak the high-water
mark since the process started: an upper bound. ``arrow_peak_bytes`` is the peak of Arrow's
allocator.

**Target.** Loading needs at most ``3x`` the raw id columns, i.e. ``2 * rows * 8`` bytes for two
int64 columns (160 MB at 10^7 rows). The timestamp column (another ``rows * 8`` bytes) is read
too, inside the same budget.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

SCHEMA_VERSION = 1
RATIO_TARGET = 3.0
LOAD_STAGES = ("load_parquet", "load_csv")
REPO = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = REPO / "configs" / "large-catalogue.yaml"


def _status_kib(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` field of ``/proc/self/status`` in KiB (None off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Resets the kernel's peak-RSS mark of this process; False when not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _measure(work: Callable[[], dict]) -> dict:
    """Runs ``work`` and adds its time and its peak resident memory above the baseline."""
    import pyarrow as pa

    gc.collect()
    reset = _reset_peak()  # the high-water mark restarts at the current resident set
    baseline = _status_kib("VmHWM" if reset else "VmRSS") or 0
    start = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        **result,
        "seconds": round(seconds, 2),
        "baseline_rss_bytes": baseline * 1024,
        "peak_rss_bytes": peak * 1024,
        "peak_above_baseline_bytes": max(peak - baseline, 0) * 1024,
        "peak_reset": reset,
        "arrow_peak_bytes": pa.default_memory_pool().max_memory(),
    }


def _stage(name: str, config: dict, workdir: str) -> dict:
    """One stage, in a fresh process (the target of ``multiprocessing``)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from recsampled.data import read_interactions
    from recsampled.data.synthetic import generate

    parquet, csv = Path(workdir, "log.parquet"), Path(workdir, "log.csv")

    def generate_and_write() -> dict:
        log = generate(**config)
        table = log.to_table()
        del log
        pq.write_table(table, parquet)
        pcsv.write_csv(table, csv)
        return {
            "rows": table.num_rows,
            "parquet_bytes": parquet.stat().st_size,
            "csv_bytes": csv.stat().st_size,
        }

    def load(path: Path) -> Callable[[], dict]:
        def run() -> dict:
            log = read_interactions(path, timestamp_col="timestamp")
            arrays = (log.user_ids, log.item_ids, log.timestamps)
            return {
                "rows_kept": len(log),
                "duplicates_removed": log.report.duplicates_removed,
                "num_users": log.num_users,
                "num_items": log.num_items,
                "result_array_bytes": sum(a.nbytes for a in arrays),
            }

        return run

    def train_run() -> dict:
        import yaml

        from recsampled.config import Config, apply_override
        from recsampled.training import train

        values = yaml.safe_load(TRAIN_CONFIG.read_text(encoding="utf-8"))
        values["data"].pop("synthetic", None)
        values["data"] |= {"source": "file", "path": str(parquet), "timestamp_col": "timestamp"}
        values["training"]["epochs"] = 1
        values["training"]["steps_per_epoch"] = config.get("train_steps")
        for override in config.get("train_overrides", ()):
            apply_override(values, override)
        result = train(Config.from_dict(values), Path(workdir, "run"), force=True)
        return {
            "config": str(TRAIN_CONFIG.relative_to(REPO)),
            "steps_per_epoch": values["training"]["steps_per_epoch"],
            "steps": sum(epoch["steps"] for epoch in result.history),
            "recall": {str(k): v for k, v in result.metrics.recall.items()},
            "popularity_recall": {str(k): v for k, v in result.popularity.recall.items()},
        }

    def dataset_pass() -> dict:
        from recsampled.data.dataset import make_dataset

        log = read_interactions(parquet, timestamp_col="timestamp")
        batches = sum(1 for _ in make_dataset(log, batch_size=8192, seed=0))
        return {"rows": len(log), "batches": batches, "batch_size": 8192}

    work = {
        "generate": generate_and_write,
        "load_parquet": load(parquet),
        "load_csv": load(csv),
        "dataset_pass": dataset_pass,
        "train": train_run,
    }[name]
    return _measure(work)


def _run_stage(name: str, config: dict, workdir: str) -> dict:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_stage, (name, config, workdir))


def _machine() -> dict:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "pyarrow": pa.__version__,
    }


def run(
    config: dict,
    workdir: str,
    stages: Sequence[str],
    run_stage: Callable[[str, dict, str], dict] = _run_stage,
) -> dict:
    """Runs the stages (``generate`` first, always) and returns the report.

    ``run_stage(name, config, workdir)`` runs one stage; by default in a fresh process.
    """
    results = {}
    log_config = {k: v for k, v in config.items() if not k.startswith("train_")}
    for name in ("generate", *[s for s in stages if s != "generate"]):
        print(f"[bench_memory] {name} ...", file=sys.stderr, flush=True)
        results[name] = run_stage(name, log_config if name == "generate" else config, workdir)
    rows = config["num_interactions"]
    raw = 2 * rows * 8
    for name in (*LOAD_STAGES, "train"):
        if name in results:
            results[name]["ratio_to_raw_id_columns"] = round(
                results[name]["peak_above_baseline_bytes"] / raw, 3
            )
    ratios = [results[n]["ratio_to_raw_id_columns"] for n in LOAD_STAGES if n in results]
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "config": config,
        "raw_id_columns": {"dtype": "int64", "columns": 2, "rows": rows, "bytes": raw},
        "target": {"max_ratio_to_raw_id_columns": RATIO_TARGET},
        "passed": bool(ratios) and max(ratios) <= RATIO_TARGET,
        "stages": results,
    }


def table(report: dict) -> str:
    """The report as a Markdown table."""
    mb = 1e6
    raw = report["raw_id_columns"]["bytes"]
    lines = [
        f"Rows: {report['config']['num_interactions']:,}; items: "
        f"{report['config']['num_items']:,}; raw id columns (2 x int64): {raw / mb:.0f} MB; "
        f"target: loading <= {RATIO_TARGET:g}x raw ({'passed' if report['passed'] else 'FAILED'}).",
        "",
        "| stage | seconds | peak above baseline (MB) | x raw id columns | Arrow peak (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, stage in report["stages"].items():
        if "peak_above_baseline_bytes" not in stage:
            lines.append(f"| {name} | {stage.get('status', '')} | | | |")
            continue
        peak = stage["peak_above_baseline_bytes"]
        lines.append(
            f"| {name} | {stage['seconds']:.1f} | {peak / mb:.0f} | {peak / raw:.2f} | "
            f"{stage['arrow_peak_bytes'] / mb:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    from recsampled.data.synthetic import SIZES

    defaults = {**SIZES["large"], "seed": 0}
    parser = argparse.ArgumentParser(prog="python -m pipelines.bench_memory", description=__doc__)
    parser.add_argument("--rows", type=int, default=defaults["num_interactions"])
    parser.add_argument("--users", type=int, default=defaults["num_users"])
    parser.add_argument("--items", type=int, default=defaults["num_items"])
    parser.add_argument("--clusters", type=int, default=defaults["num_clusters"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stages",
        default="load_parquet,load_csv,dataset_pass,train",
        help="comma-separated stages",
    )
    parser.add_argument(
        "--train-steps", type=int, default=300, help="steps of the train stage (0: one epoch)"
    )
    parser.add_argument("--workdir", default=None, help="where to write the log (default: temp)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/memory.json"))
    args = parser.parse_args(argv)
    config = {
        "num_users": args.users,
        "num_items": args.items,
        "num_interactions": args.rows,
        "num_clusters": args.clusters,
        "seed": args.seed,
        "train_steps": args.train_steps or None,
    }
    stages = [s for s in args.stages.split(",") if s]
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        report = run(config, workdir, stages)
    report["command"] = "python -m pipelines.bench_memory " + " ".join(argv or sys.argv[1:])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    markdown = table(report)
    args.output.with_suffix(".md").write_text(markdown + "\n")
    print(markdown)
    return report


if __name__ == "__main__":
    main()

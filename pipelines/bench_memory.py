"""Benchmark: peak memory of generating, writing and loading a 10^7-row synthetic log.

Run ``python -m pipelines.bench_memory --output benchmarks/memory.json``.

Each stage runs in a fresh ("spawn") process: ``generate`` (``SIZES["large"]`` log written as
Parquet and CSV), ``load_parquet``/``load_csv`` (``read_interactions``, de-duplication on),
``dataset_pass`` (one pass of ``training_batches``, batch 8192) and ``train``
(``configs/large-catalogue.yaml`` on the Parquet log, ``--train-steps`` steps). Each resets the
kernel's peak-RSS mark after its imports and reports ``peak - baseline`` (``peak_reset: false``:
an upper bound since process start) and Arrow's allocator peak. Target: loading needs at most
3x the raw id columns (``2 * rows * 8`` bytes).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pipelines import harness

LOG = logging.getLogger("pipelines.bench_memory")
SCHEMA_VERSION = 2
RATIO_TARGET = 3.0
LOAD_STAGES = ("load_parquet", "load_csv")
STAGES = ("generate", *LOAD_STAGES, "dataset_pass", "train")
REPO = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = REPO / "configs" / "large-catalogue.yaml"


@dataclasses.dataclass(frozen=True)
class MemoryBenchConfig:
    """Settings of one run (the defaults are those of the published table)."""

    #: rows of the synthetic log.
    num_interactions: int = dataclasses.field(default=10_000_000, metadata={"flag": "--rows"})
    #: users of the synthetic log.
    num_users: int = dataclasses.field(default=200_000, metadata={"flag": "--users"})
    #: items of the synthetic log.
    num_items: int = dataclasses.field(default=1_000_000, metadata={"flag": "--items"})
    #: taste clusters of the synthetic log.
    num_clusters: int = dataclasses.field(default=100, metadata={"flag": "--clusters"})
    seed: int = 0  #: seed of the synthetic log.
    #: the stages after ``generate`` (which always runs first).
    stages: tuple[str, ...] = STAGES[1:]
    train_steps: int = 300  #: steps of the train stage (0: one epoch).
    train_overrides: tuple[str, ...] = ()  #: ``key=value`` overrides of the train stage's config.
    workdir: str | None = None  #: where to write the log (default: a temporary folder).

    @property
    def log(self) -> dict:
        """The arguments of ``recsampled.data.synthetic.generate``."""
        names = ("num_users", "num_items", "num_interactions", "num_clusters", "seed")
        return {name: getattr(self, name) for name in names}


def _measure(work: Callable[[], dict]) -> dict:
    """Runs ``work`` and adds its time and its peak resident memory above the baseline."""
    import pyarrow as pa

    gc.collect()
    try:  # Linux: the high-water mark restarts at the current resident set
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    baseline = harness.peak_rss_bytes() if reset else harness.rss_bytes()
    start = time.perf_counter()
    result = work()
    seconds, peak = time.perf_counter() - start, harness.peak_rss_bytes()
    return result | {
        "seconds": round(seconds, 2), "baseline_rss_bytes": baseline, "peak_rss_bytes": peak,
        "peak_above_baseline_bytes": max(peak - baseline, 0), "peak_reset": reset,
        "arrow_peak_bytes": pa.default_memory_pool().max_memory(),
    }  # fmt: skip


def _train(config: MemoryBenchConfig, parquet: Path, workdir: str) -> dict:
    import yaml

    from recsampled.config import Config, apply_override
    from recsampled.runs import train

    values = yaml.safe_load(TRAIN_CONFIG.read_text(encoding="utf-8"))
    values["data"].pop("synthetic", None)
    values["data"] |= {"source": "file", "path": str(parquet), "timestamp_col": "timestamp"}
    values["training"] |= {"epochs": 1, "steps_per_epoch": config.train_steps or None}
    for override in config.train_overrides:
        apply_override(values, override)
    result = train(Config.from_dict(values), Path(workdir, "run"), force=True)
    return {
        "config": str(TRAIN_CONFIG.relative_to(REPO)),
        "steps_per_epoch": values["training"]["steps_per_epoch"],
        "steps": sum(epoch["steps"] for epoch in result.history),
        "recall": {str(k): v for k, v in result.metrics.recall.items()},
        "popularity_recall": {str(k): v for k, v in result.popularity.recall.items()},
    }


def _stage(name: str, config: MemoryBenchConfig, workdir: str) -> dict:
    """One stage, measured (the target of the fresh process of :func:`_run_stage`)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from recsampled.data import read_interactions
    from recsampled.data.synthetic import generate

    parquet, csv = Path(workdir, "log.parquet"), Path(workdir, "log.csv")

    def generate_and_write() -> dict:
        table = generate(**config.log).to_table()
        pq.write_table(table, parquet)
        pcsv.write_csv(table, csv)
        sizes = {"parquet_bytes": parquet.stat().st_size, "csv_bytes": csv.stat().st_size}
        return {"rows": table.num_rows, **sizes}

    def load(path: Path) -> dict:
        log = read_interactions(path, timestamp_col="timestamp")
        arrays = (log.user_ids, log.item_ids, log.timestamps)
        return {"rows_kept": len(log), "duplicates_removed": log.report.duplicates_removed,
                "num_users": log.num_users, "num_items": log.num_items,
                "result_array_bytes": sum(a.nbytes for a in arrays)}  # fmt: skip

    def dataset_pass() -> dict:
        from recsampled.data import training_batches

        log = read_interactions(parquet, timestamp_col="timestamp")
        batches = sum(1 for _ in training_batches(log, batch_size=8192, seed=0))
        return {"rows": len(log), "batches": batches, "batch_size": 8192}

    work = {
        "generate": generate_and_write,
        "load_parquet": lambda: load(parquet),
        "load_csv": lambda: load(csv),
        "dataset_pass": dataset_pass,
        "train": lambda: _train(config, parquet, workdir),
    }[name]
    return _measure(work)


def _run_stage(name: str, config: MemoryBenchConfig, workdir: str) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_stage, (name, config, workdir))


def run(config: MemoryBenchConfig, workdir: str,
        run_stage: Callable[[str, MemoryBenchConfig, str], dict] = _run_stage) -> dict:  # fmt: skip
    """Runs ``generate`` then ``config.stages`` (each by ``run_stage``) and returns the report."""
    bench = harness.Benchmark("pipelines.bench_memory", config, schema_version=SCHEMA_VERSION)
    results = {}
    for name in ("generate", *[s for s in config.stages if s != "generate"]):
        LOG.info("%s ...", name)
        results[name] = run_stage(name, config, workdir)
    raw = 2 * config.num_interactions * 8
    for stage in (results[n] for n in (*LOAD_STAGES, "train") if n in results):
        stage["ratio_to_raw_id_columns"] = round(stage["peak_above_baseline_bytes"] / raw, 3)
    ratios = [results[n]["ratio_to_raw_id_columns"] for n in LOAD_STAGES if n in results]
    return bench.report(
        raw_id_columns={"dtype": "int64", "columns": 2, "rows": config.num_interactions,
                        "bytes": raw},
        target={"max_ratio_to_raw_id_columns": RATIO_TARGET},
        passed=bool(ratios) and max(ratios) <= RATIO_TARGET,
        stages=results,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict:
    config, args = harness.parse_options(
        MemoryBenchConfig, argv, prog="python -m pipelines.bench_memory", description=__doc__,
        output="benchmarks/memory.json",
    )  # fmt: skip
    if unknown := set(config.stages) - set(STAGES):
        raise SystemExit(f"--stages: unknown {sorted(unknown)}; expected some of {STAGES}")
    with tempfile.TemporaryDirectory(dir=config.workdir) as workdir:
        report = run(config, workdir)
    harness.write_json(args.output, report)
    return report


if __name__ == "__main__":
    main()

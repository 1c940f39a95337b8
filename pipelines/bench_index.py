"""Benchmark: exact and approximate top-10 search (FAISS Flat, HNSW, IVF-Flat, IVF-PQ, TFRS).

Run ``python -m pipelines.bench_index --output benchmarks/index.json``; it writes the JSON and a
recall-vs-queries/s plot (``benchmarks/index.png``).

Data: N items and Q queries from one Gaussian mixture in D dimensions (``--num-clusters``
centres, per-cluster scales in [0.5, 1.5]) and, with ``--run`` (under ``report["real"]``), a
trained run's catalogue and users.
Recall@10 is against the exact top-10 (``IndexFlatIP``). Indexes come from
``recsampled.index.build.create_index``: Flat, ``HNSW32,Flat`` (``efSearch`` sweep),
``IVF{4√N},Flat`` (``nprobe``), ``IVF{4√N},PQ{D/2}x4fs,RFlat`` (``nprobe`` x ``k_factor_rf``):
build time, size, RSS growth, and per setting recall and queries/s with one FAISS thread
(``--timing-queries``) and all threads. TFRS ``BruteForce`` is timed with TF's default threads
and, in a child process, one thread. All searches are timed round-robin (best of ``--repeats``
rounds), load average after every round. Target: some ANN setting with recall@10 >= 0.95 at
>= 10x Flat's queries/s, checked for 1 thread and all threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import recsampled  # noqa: E402, F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)

# isort: split
import faiss  # noqa: E402
import numpy as np  # noqa: E402

from pipelines import harness  # noqa: E402
from recsampled.index.build import (  # noqa: E402
    RECALL_K,
    create_index,
    default_nlist,
    exact_search,
    prepare_vectors,
    recall_at_k,
    search,
    set_search_params,
)

LOG = logging.getLogger("pipelines.bench_index")
SCHEMA_VERSION = 2
TARGET_RECALL = 0.95
TARGET_SPEEDUP = 10.0
QPS_KEYS = {"qps_1_thread": "1 thread", "qps_all_threads": "all threads"}


@dataclasses.dataclass(frozen=True)
class IndexBenchConfig:
    """Settings of one run (the defaults are those of the published table)."""

    num_items: int = 1_000_000  #: N, synthetic items.
    dim: int = 64  #: D.
    num_queries: int = 10_000  #: Q, synthetic queries (all are used for recall).
    num_clusters: int = 1000  #: Gaussian-mixture components of the synthetic data.
    metric: Literal["cosine", "dot"] = "cosine"  #: the score of the synthetic data.
    timing_queries: int = 1000  #: queries timed with one thread (a prefix of the Q queries).
    threads: int | None = None  #: FAISS threads for "all threads" (default: all available).
    #: timed rounds (each setting keeps its best).
    repeats: int = dataclasses.field(default=2, metadata={"min": 1})
    ef_search: tuple[int, ...] = (16, 32, 64, 128, 256, 512)  #: HNSW ``efSearch`` sweep.
    nprobe: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)  #: IVF-Flat ``nprobe`` sweep.
    pq_nprobe: tuple[int, ...] = (4, 8, 16, 32, 64, 128)  #: IVF-PQ ``nprobe`` sweep.
    pq_k_factor: tuple[int, ...] = (4, 16, 64)  #: IVF-PQ ``k_factor_rf`` sweep.
    #: which of flat, hnsw, ivf, ivfpq to build (Flat, the baseline, always).
    indexes: tuple[str, ...] = ("flat", "hnsw", "ivf", "ivfpq")
    #: ``both`` (default threads and one thread), ``all`` (default threads) or ``none``.
    tfrs: Literal["both", "all", "none"] = "both"
    tfrs_batch: int = 32  #: queries per ``BruteForce`` call.
    seed: int = 0  #: seeds the data.
    #: also benchmark a trained run's catalogue and users (``report["real"]``).
    run: str | None = None


def clustered_embeddings(num: int, dim: int, num_clusters: int, rng: np.random.Generator,
                         centers: np.ndarray) -> np.ndarray:  # fmt: skip
    """``[num, dim]`` float32 draws from the mixture with the given centres."""
    scales = np.random.default_rng(len(centers)).uniform(0.5, 1.5, len(centers))
    out = np.empty((num, dim), np.float32)
    for start in range(0, num, 100_000):  # in chunks: float64 noise for 10^6 x 64 is 0.5 GB
        size = min(100_000, num - start)
        labels = rng.integers(num_clusters, size=size)
        noise = rng.standard_normal((size, dim), dtype=np.float32)
        out[start : start + size] = centers[labels] + scales[labels, None] * noise
    return out


def load_data(config: IndexBenchConfig) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Prepared ``(items, queries, source, metric)``."""
    metric = config.metric
    if config.run:
        from recsampled.runs import load_run

        run = load_run(config.run)
        items, queries = run.item_embeddings(), run.query_embeddings()
        metric, data = run.metric, run.config.data.path or "synthetic"
        source = (f"trained run {config.run} ({data}): its {run.num_items:,} items and "
                  f"{run.num_users:,} users through the towers")  # fmt: skip
    else:
        rng = np.random.default_rng(config.seed)
        centers = rng.standard_normal((config.num_clusters, config.dim)).astype(np.float32)
        args = (config.dim, config.num_clusters, rng, centers)
        items = clustered_embeddings(config.num_items, *args)
        queries = clustered_embeddings(config.num_queries, *args)
        source = f"synthetic Gaussian mixture, {config.num_clusters} clusters, seed {config.seed}"
    return prepare_vectors(items, metric), prepare_vectors(queries, metric), source, metric


def _sweeps(config: IndexBenchConfig, num_items: int, dim: int) -> list[tuple[str, str, list]]:
    nlist = default_nlist(num_items)
    m = dim // 2 if dim % 2 == 0 else dim
    pq = [{"nprobe": p, "k_factor_rf": f} for f in config.pq_k_factor for p in config.pq_nprobe]
    families = {
        "flat": ("Flat", "Flat", [{}]),
        "hnsw": ("HNSW", "HNSW32,Flat", [{"efSearch": e} for e in config.ef_search]),
        "ivf": ("IVF-Flat", f"IVF{nlist},Flat", [{"nprobe": p} for p in config.nprobe]),
        "ivfpq": ("IVF-PQ", f"IVF{nlist},PQ{m}x4fs,RFlat", pq),
    }
    chosen = [families[key] for key in families if key in config.indexes or key == "flat"]
    return [(name, f, [g for g in grid if g.get("nprobe", 0) <= nlist]) for name, f, grid in chosen]


def build_indexes(items: np.ndarray, config: IndexBenchConfig, threads: int) -> list[dict]:
    """Builds each index (timed alone); entries hold the index under ``"index"``."""
    entries = []
    for name, factory, grid in _sweeps(config, *items.shape):
        gc.collect()
        rss_before = harness.rss_bytes()
        faiss.omp_set_num_threads(threads)
        LOG.info("building %s (%s) on %s x %s", name, factory, f"{len(items):,}", items.shape[1])
        start = time.perf_counter()
        index = create_index(items, factory, seed=config.seed)
        build_seconds = time.perf_counter() - start
        size = int(faiss.serialize_index(index).nbytes)
        LOG.info("built %s in %.1f s, %.0f MiB", name, build_seconds, size / 2**20)
        entries.append({
            "name": name, "factory": factory, "build_seconds": round(build_seconds, 2),
            "size_bytes": size, "rss_delta_bytes": harness.rss_bytes() - rss_before,
            "grid": grid, "index": index,
        })  # fmt: skip
    return entries


def _tfrs_step(items: np.ndarray, queries: np.ndarray, batch: int, found: dict) -> Callable:
    """One pass of TFRS ``BruteForce`` over ``queries`` (this process's TF threads)."""
    import tensorflow as tf
    import tensorflow_recommenders as tfrs

    layer = tfrs.layers.factorized_top_k.BruteForce(k=RECALL_K)
    layer.index(tf.constant(items), tf.range(len(items)))
    batches = [tf.constant(queries[i : i + batch]) for i in range(0, len(queries), batch)]

    def step() -> None:
        found["tfrs"] = np.concatenate([layer(b)[1].numpy() for b in batches])

    return step


def _tfrs_child(folder: str, items: np.ndarray, queries: np.ndarray, batch: int) -> float:
    """TFRS queries/s with one intra-op thread, in a child process."""
    if not Path(folder, "items.npy").exists():
        np.save(Path(folder, "items.npy"), items)
        np.save(Path(folder, "queries.npy"), queries)
    command = [sys.executable, "-m", "pipelines.bench_index", "--tfrs-worker", folder,
               "--tfrs-batch", str(batch)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                          cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def _tfrs_worker(folder: str, batch: int) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    items, queries = np.load(Path(folder, "items.npy")), np.load(Path(folder, "queries.npy"))
    timings = harness.time_round_robin({"tfrs": _tfrs_step(items, queries, batch, {})}, repeats=1)
    print(json.dumps(len(queries) / (timings.summary("tfrs")["min_ms"] / 1e3)))


def bench_faiss(items: np.ndarray, queries: np.ndarray, exact_rows: np.ndarray,
                config: IndexBenchConfig,
                threads: int) -> tuple[list[dict], dict | None, list]:  # fmt: skip
    """Builds every index, then times every setting (and TFRS) in interleaved rounds."""
    entries = build_indexes(items, config, threads)
    timing = queries[: config.timing_queries]
    steps, found, load = {}, {}, [{"at": "start", "load_average": harness.load_average()}]

    def run_search(index: faiss.Index, params: dict, n: int, rows: np.ndarray, k: tuple) -> None:
        faiss.omp_set_num_threads(n)
        set_search_params(index, params)
        found[k] = search(index, rows, RECALL_K).rows

    runs = (("qps_all_threads", threads, queries), ("qps_1_thread", 1, timing))
    for e, entry in enumerate(entries):
        for p, params in enumerate(entry["grid"]):
            for key, n, rows in runs:
                k = (e, p, key)
                steps[k] = functools.partial(run_search, entry["index"], params, n, rows, k)
    if config.tfrs != "none":
        steps["tfrs"] = _tfrs_step(items, timing, config.tfrs_batch, found)
    child: list[float] = []
    with tempfile.TemporaryDirectory() as folder:

        def end_of_round(r: int) -> None:
            if config.tfrs == "both":
                child.append(_tfrs_child(folder, items, timing, config.tfrs_batch))
            load.append({"after_round": r + 1, "load_average": harness.load_average()})
            LOG.info("round %d/%d done (load %s)", r + 1, config.repeats, load[-1]["load_average"])

        timings = harness.time_round_robin(
            steps, repeats=config.repeats, on_round_end=end_of_round, desc="search rounds"
        )
    faiss.omp_set_num_threads(threads)

    def qps(key: object, num: int) -> float:
        return round(num / (timings.summary(key)["min_ms"] / 1e3), 1)

    for e, entry in enumerate(entries):
        entry["points"] = [
            {"params": params,
             "recall": round(recall_at_k(found[e, p, "qps_all_threads"], exact_rows), 5),
             "qps_1_thread": qps((e, p, "qps_1_thread"), len(timing)),
             "qps_all_threads": qps((e, p, "qps_all_threads"), len(queries))}
            for p, params in enumerate(entry.pop("grid"))
        ]  # fmt: skip
        del entry["index"]
    tfrs = None
    if config.tfrs != "none":
        tfrs = {"name": "TFRS BruteForce", "batch_size": config.tfrs_batch,
                "num_queries": len(timing), "qps_all_threads": qps("tfrs", len(timing)),
                "qps_1_thread": round(max(child), 1) if child else None,
                "recall": round(recall_at_k(found["tfrs"], exact_rows[: len(timing)]), 5),
                }  # fmt: skip
    return entries, tfrs, load


def evaluate_target(flat: dict, indexes: list[dict]) -> dict:
    """For 1 thread and all threads: the fastest ANN point with recall >= 0.95 and its speedup."""
    out: dict = {"recall": TARGET_RECALL, "speedup": TARGET_SPEEDUP}
    for key in QPS_KEYS:
        candidates = [(point[key], entry["name"], point) for entry in indexes
                      if entry["name"] != "Flat" for point in entry["points"]
                      if point["recall"] >= TARGET_RECALL]  # fmt: skip
        if not candidates:
            out[key] = {"met": False, "best": None}
            continue
        qps, name, point = max(candidates, key=lambda c: c[0])
        speedup = qps / flat[key]
        out[key] = {
            "met": speedup >= TARGET_SPEEDUP,
            "best": {"index": name, "params": point["params"], "recall": point["recall"],
                     "qps": qps, "speedup_vs_flat": round(speedup, 2)},
        }  # fmt: skip
    out["met"] = all(out[k]["met"] for k in QPS_KEYS)
    return out


def run_dataset(config: IndexBenchConfig, threads: int) -> dict:
    """Loads one data set, builds, sweeps (interleaved rounds) and checks."""
    started = time.perf_counter()
    items, queries, source, metric = load_data(config)
    LOG.info("data: %s x %s, %s queries (%s)", f"{len(items):,}", items.shape[1],
             f"{len(queries):,}", source)  # fmt: skip
    start = time.perf_counter()
    exact_rows = exact_search(items, queries, RECALL_K).rows
    exact_seconds = time.perf_counter() - start
    indexes, tfrs, load = bench_faiss(items, queries, exact_rows, config, threads)
    load.append({"at": "end", "load_average": harness.load_average()})
    flat = {k: indexes[0]["points"][0][k] for k in QPS_KEYS}
    return {
        "data": {"num_items": int(items.shape[0]), "dim": int(items.shape[1]),
                 "num_queries": int(len(queries)), "metric": metric, "source": source},
        "faiss_threads": threads, "load": load, "exact_seconds": round(exact_seconds, 2),
        "flat": flat, "indexes": indexes, "tfrs": tfrs,
        "target": evaluate_target(flat, indexes),
        "dataset_wall_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def plot(report: dict, path: Path) -> None:
    """Recall@10 vs queries/s (log x), one panel per thread setting and data set."""
    reports = [report] + ([report["real"]] if report.get("real") else [])
    n = len(reports)
    fig, grid = harness.pyplot().subplots(n, 2, figsize=(12, 4.8 * n), sharey=True, squeeze=False)
    for axes, r in zip(grid, reports, strict=True):
        data = r["data"]
        for ax, key in zip(axes, QPS_KEYS, strict=True):
            for color, entry in enumerate(r["indexes"]):
                series: dict[str, list[dict]] = {}
                for point in entry["points"]:  # one line per value of k_factor_rf
                    extra = point["params"].get("k_factor_rf")
                    label = entry["name"] + (f" (k_factor_rf={extra})" if extra else "")
                    series.setdefault(label, []).append(point)
                for number, (label, points) in enumerate(series.items()):
                    ax.plot([p[key] for p in points], [p["recall"] for p in points],
                            "s" if entry["name"] == "Flat" else "o-", color=f"C{color}",
                            alpha=1.0 - 0.25 * number, label=label, markersize=5)  # fmt: skip
            if (tfrs := r.get("tfrs")) and tfrs[key]:
                ax.plot([tfrs[key]], [tfrs["recall"]], "kx", markersize=9, label="TFRS BruteForce")
            ax.axhline(TARGET_RECALL, color="grey", linestyle=":", linewidth=1)
            ax.axvline(TARGET_SPEEDUP * r["flat"][key], color="grey", linestyle="--",
                       linewidth=1, label=f"{TARGET_SPEEDUP:g}x Flat")  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel("queries per second (log)")
            ax.set_title(f"{data['num_items']:,} x {data['dim']} ({data['metric']}), "
                         f"{data['num_queries']:,} q: {QPS_KEYS[key]}", fontsize=10)  # fmt: skip
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel(f"recall@{RECALL_K} vs exact")
        axes[1].legend(loc="lower left", fontsize=8)
    harness.save_figure(fig, path, dpi=120)


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Runs the benchmark; writes the JSON and the PNG beside it."""
    config, args = harness.parse_options(
        IndexBenchConfig, argv, prog="python -m pipelines.bench_index", description=__doc__,
        output="benchmarks/index.json",
        extra=lambda p: p.add_argument("--tfrs-worker", help=argparse.SUPPRESS),
    )  # fmt: skip
    if args.tfrs_worker:
        _tfrs_worker(args.tfrs_worker, config.tfrs_batch)
        return None
    if unknown := set(config.indexes) - {"flat", "hnsw", "ivf", "ivfpq"}:
        raise SystemExit(f"--indexes: unknown {sorted(unknown)}")
    threads = config.threads or faiss.omp_get_max_threads()
    bench = harness.Benchmark("pipelines.bench_index", config, schema_version=SCHEMA_VERSION,
                              machine={"faiss_threads": threads})  # fmt: skip
    report = bench.report(**run_dataset(dataclasses.replace(config, run=None), threads))
    if config.run:
        LOG.info("trained model: %s", config.run)
        report["real"] = run_dataset(config, threads)
        report["wall_s"] = bench.report()["wall_s"]
    harness.write_json(args.output, report)
    plot(report, args.output.with_suffix(".png"))
    return report


if __name__ == "__main__":
    main()

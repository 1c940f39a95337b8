"""Benchmark: exact and approximate top-10 search (FAISS Flat, HNSW, IVF-Flat, IVF-PQ, TFRS).

Run ``python -m pipelines.bench_index --output benchmarks/index.json``; it writes the JSON, a
Markdown table (``benchmarks/index.md``) and a recall-vs-queries/s plot (``benchmarks/index.png``)
and prints the table. Sizes are arguments (``--num-items``, ``--dim``, ``--num-queries``).

**Data.** Synthetic by default: N item and Q query embeddings drawn from one Gaussian mixture in
D dimensions (``--num-clusters`` centres ``~ N(0, I)``, each cluster with its own scale in
[0.5, 1.5]), so that neighbourhoods have structure, as trained embeddings do, but clusters
overlap. Or real embeddings: ``--item-embeddings items.npy --query-embeddings queries.npy``
(e.g. the catalogue and test users of a trained model, from ``embed_catalogue`` and the query
tower). The metric (``--metric``, default cosine) is applied as in ``recsampled.index``.

**Ground truth.** Exact top-10 of every query with ``IndexFlatIP``; recall@10 of an index is
``mean_q |found ∩ exact| / 10`` over all Q queries.

**Indexes** (built with ``recsampled.index.build.create_index``, the code the export uses):
``Flat``; ``HNSW32,Flat`` with an ``efSearch`` sweep; ``IVF{4√N},Flat`` with an ``nprobe``
sweep; ``IVF{4√N},PQ{D/2}x4fs,RFlat`` (4-bit fast-scan PQ, exact re-ranking of
``k_factor_rf·10`` candidates) with an (``nprobe``, ``k_factor_rf``) sweep. For each: build time,
serialized size, growth of the process's resident memory during the build, and for every search
setting recall@10 and queries/s with one FAISS thread (on the first ``--timing-queries`` queries,
best of ``--repeats``) and with all threads (``--threads``, all Q queries, best of
``--repeats``). TFRS's ``BruteForce`` layer (exact, TensorFlow matmul + ``top_k``) is timed on
batches of ``--tfrs-batch`` queries with TensorFlow's default threads, and, in a child process,
with one intra-op thread.

**Interleaved timing.** Every index is built first (one after the other, each build timed
alone); then the search timings run in ``--repeats`` rounds, each round visiting every
(index, setting) point and TFRS once, and each point keeps its best round. A shared, loaded
machine thus slows every method alike rather than whichever ran during a burst; the 1-, 5- and
15-minute load averages are recorded at the start, after every round and at the end
(``report["load"]``).

**Trained model.** ``--run RUN_DIR`` adds a second data set: the catalogue and every user of a
trained run (``recsampled train``), embedded by its towers (``recsampled.index.load_run``), with
the run's metric; its report goes under ``report["real"]`` and its table after the first.

**Target.** Some ANN configuration with recall@10 >= 0.95 at >= 10x Flat's queries/s, checked
separately with one thread and with all threads. The check is computed from the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import recsampled  # noqa: E402  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)

# isort: split
import faiss  # noqa: E402
import numpy as np  # noqa: E402

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

SCHEMA_VERSION = 1
TARGET_RECALL = 0.95
TARGET_SPEEDUP = 10.0


@dataclasses.dataclass(frozen=True)
class IndexBenchConfig:
    """Settings of one run (the defaults are those of the published table).

    Attributes:
        num_items: N, synthetic items.
        dim: D.
        num_queries: Q, synthetic queries (all are used for recall).
        num_clusters: Gaussian-mixture components of the synthetic data.
        metric: ``"cosine"`` or ``"dot"``.
        item_embeddings: ``.npy`` of real item embeddings (replaces the synthetic data).
        query_embeddings: ``.npy`` of real query embeddings (with ``item_embeddings``).
        timing_queries: queries timed with one thread (a prefix of the Q queries).
        threads: FAISS threads for "all threads" (default: all available).
        repeats: timed passes per setting (the best counts).
        ef_search: HNSW ``efSearch`` sweep.
        nprobe: IVF-Flat ``nprobe`` sweep.
        pq_nprobe: IVF-PQ ``nprobe`` sweep.
        pq_k_factor: IVF-PQ ``k_factor_rf`` sweep.
        indexes: which of flat, hnsw, ivf, ivfpq to build.
        tfrs: ``"both"`` (default and one thread), ``"all"`` (default threads only) or ``"none"``.
        tfrs_batch: queries per ``BruteForce`` call.
        seed: seeds the data.
        run: a trained run directory whose catalogue and users are the data (replaces the
            synthetic data; its metric replaces ``metric``).
    """

    num_items: int = 1_000_000
    dim: int = 64
    num_queries: int = 10_000
    num_clusters: int = 1000
    metric: str = "cosine"
    item_embeddings: str | None = None
    query_embeddings: str | None = None
    timing_queries: int = 1000
    threads: int | None = None
    repeats: int = 2
    ef_search: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    nprobe: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    pq_nprobe: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
    pq_k_factor: tuple[int, ...] = (4, 16, 64)
    indexes: tuple[str, ...] = ("flat", "hnsw", "ivf", "ivfpq")
    tfrs: str = "both"
    tfrs_batch: int = 32
    seed: int = 0
    run: str | None = None


def _progress(message: str) -> None:
    print(f"[bench_index {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _rss_bytes() -> int:
    """Resident memory of this process now (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def clustered_embeddings(
    num: int, dim: int, num_clusters: int, rng: np.random.Generator, centers: np.ndarray
) -> np.ndarray:
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
        from recsampled.index import load_run

        run = load_run(config.run)
        items, queries, metric = (
            run.item_embeddings(progress=False),
            run.query_embeddings(),
            run.metric,
        )
        source = (
            f"trained run {config.run} ({run.config.data.path or 'synthetic'}): its "
            f"{run.num_items:,} items and {run.num_users:,} users through the towers"
        )
    elif config.item_embeddings:
        items = np.load(config.item_embeddings)
        queries = np.load(config.query_embeddings)
        source = f"{config.item_embeddings} + {config.query_embeddings}"
    else:
        rng = np.random.default_rng(config.seed)
        centers = rng.standard_normal((config.num_clusters, config.dim)).astype(np.float32)
        items = clustered_embeddings(
            config.num_items, config.dim, config.num_clusters, rng, centers
        )
        queries = clustered_embeddings(
            config.num_queries, config.dim, config.num_clusters, rng, centers
        )
        source = f"synthetic Gaussian mixture, {config.num_clusters} clusters, seed {config.seed}"
    return prepare_vectors(items, metric), prepare_vectors(queries, metric), source, metric


def _timed_search(
    index: faiss.Index, queries: np.ndarray, threads: int, repeats: int
) -> tuple[float, np.ndarray]:
    """Best queries/s over ``repeats`` passes with ``threads`` FAISS threads, and the rows."""
    faiss.omp_set_num_threads(threads)
    best, rows = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        rows = search(index, queries, RECALL_K).rows
        best = min(best, time.perf_counter() - start)
    return len(queries) / best, rows


def _threads_label(threads: int) -> str:
    return f"{threads} thread{'s' if threads > 1 else ''}"


def measure_point(
    index: faiss.Index,
    params: dict[str, int],
    queries: np.ndarray,
    exact_rows: np.ndarray,
    config: IndexBenchConfig,
    threads: int,
    point: dict | None = None,
) -> dict:
    """One timing round of a setting: recall@10 on all queries, queries/s with all threads (all
    queries) and with 1 thread (the first ``timing_queries``). With ``point`` (an earlier
    round's), keeps the better queries/s of the two rounds."""
    set_search_params(index, params)
    qps_all, rows = _timed_search(index, queries, threads, 1)
    qps_one, _ = _timed_search(index, queries[: config.timing_queries], 1, 1)
    faiss.omp_set_num_threads(threads)
    recall = round(recall_at_k(rows, exact_rows), 5)
    if point is None:
        point = {"params": params, "recall": recall, "qps_1_thread": 0.0, "qps_all_threads": 0.0}
    point["qps_1_thread"] = round(max(point["qps_1_thread"], qps_one), 1)
    point["qps_all_threads"] = round(max(point["qps_all_threads"], qps_all), 1)
    _progress(
        f"  {params}: recall@10 {recall:.4f}, {qps_one:,.0f} q/s (1 thread), "
        f"{qps_all:,.0f} q/s ({_threads_label(threads)})"
    )
    return point


def _sweeps(config: IndexBenchConfig, num_items: int, dim: int) -> list[tuple[str, str, list]]:
    nlist = default_nlist(num_items)
    m = dim // 2 if dim % 2 == 0 else dim
    families = {
        "flat": ("Flat", "Flat", [{}]),
        "hnsw": ("HNSW", "HNSW32,Flat", [{"efSearch": e} for e in config.ef_search]),
        "ivf": (
            "IVF-Flat",
            f"IVF{nlist},Flat",
            [{"nprobe": p} for p in config.nprobe if p <= nlist],
        ),
        "ivfpq": (
            "IVF-PQ",
            f"IVF{nlist},PQ{m}x4fs,RFlat",
            [
                {"nprobe": p, "k_factor_rf": f}
                for f in config.pq_k_factor
                for p in config.pq_nprobe
                if p <= nlist
            ],
        ),
    }
    return [families[name] for name in config.indexes]


def build_indexes(items: np.ndarray, config: IndexBenchConfig, threads: int) -> list[dict]:
    """Builds each index (timed alone); entries hold the index under ``"index"``."""
    entries = []
    for name, factory, grid in _sweeps(config, *items.shape):
        gc.collect()
        rss_before = _rss_bytes()
        faiss.omp_set_num_threads(threads)
        _progress(f"building {name} ({factory}) on {len(items):,} x {items.shape[1]}")
        start = time.perf_counter()
        index = create_index(items, factory, seed=config.seed, progress=True)
        build_seconds = time.perf_counter() - start
        rss_delta = _rss_bytes() - rss_before
        size = int(faiss.serialize_index(index).nbytes)
        _progress(f"built {name} in {build_seconds:.1f} s, {size / 2**20:.0f} MiB")
        entries.append(
            {
                "name": name,
                "factory": factory,
                "build_seconds": round(build_seconds, 2),
                "size_bytes": size,
                "rss_delta_bytes": int(rss_delta),
                "grid": grid,
                "index": index,
                "points": [],
            }
        )
    return entries


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def bench_faiss(
    items: np.ndarray,
    queries: np.ndarray,
    exact_rows: np.ndarray,
    config: IndexBenchConfig,
    threads: int,
    tfrs: TfrsTimer | None = None,
    load: list[dict] | None = None,
) -> list[dict]:
    """Builds every index, then times every setting (and TFRS) in interleaved rounds."""
    entries = build_indexes(items, config, threads)
    for round_ in range(config.repeats):
        _progress(f"timing round {round_ + 1}/{config.repeats} (load {load_average()})")
        for entry in entries:
            _progress(f" {entry['name']}")
            for number, params in enumerate(entry["grid"]):
                earlier = entry["points"][number] if round_ else None
                point = measure_point(
                    entry["index"], params, queries, exact_rows, config, threads, earlier
                )
                if not round_:
                    entry["points"].append(point)
        if tfrs is not None:
            tfrs.round()
        if load is not None:
            load.append({"after_round": round_ + 1, "load_average": load_average()})
    for entry in entries:
        del entry["index"], entry["grid"]
    return entries


def _tfrs_qps(items: np.ndarray, queries: np.ndarray, batch: int, repeats: int) -> dict:
    """``BruteForce`` queries/s and recall@10 against FAISS exact search (this process's TF)."""
    import tensorflow as tf
    import tensorflow_recommenders as tfrs

    layer = tfrs.layers.factorized_top_k.BruteForce(k=RECALL_K)
    layer.index(tf.constant(items), tf.range(len(items)))
    batches = [tf.constant(queries[i : i + batch]) for i in range(0, len(queries), batch)]
    layer(batches[0])  # trace and warm up
    best, rows = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        found = [layer(b)[1].numpy() for b in batches]
        best = min(best, time.perf_counter() - start)
        rows = np.concatenate(found)
    return {"qps": len(queries) / best, "rows": rows}


class TfrsTimer:
    """TFRS ``BruteForce`` timed once per round: default threads in this process, one
    intra-op thread in a child process (TensorFlow's threads are fixed at start-up)."""

    def __init__(
        self,
        items: np.ndarray,
        queries: np.ndarray,
        exact_rows: np.ndarray,
        config: IndexBenchConfig,
    ):
        self.config = config
        self.items = items
        self.timing = queries[: config.timing_queries]
        self.exact_rows = exact_rows[: len(self.timing)]
        self.result: dict | None = None
        self._folder: tempfile.TemporaryDirectory | None = None

    def round(self) -> None:
        config = self.config
        _progress(f" TFRS BruteForce on {len(self.timing)} queries, batches of {config.tfrs_batch}")
        here = _tfrs_qps(self.items, self.timing, config.tfrs_batch, 1)
        if self.result is None:
            self.result = {
                "name": "TFRS BruteForce",
                "batch_size": config.tfrs_batch,
                "num_queries": len(self.timing),
                "recall": round(recall_at_k(here["rows"], self.exact_rows), 5),
                "qps_all_threads": 0.0,
                "qps_1_thread": None,
            }
        result = self.result
        result["qps_all_threads"] = round(max(result["qps_all_threads"], here["qps"]), 1)
        if config.tfrs == "both":
            one = self._child()
            result["qps_1_thread"] = round(max(result["qps_1_thread"] or 0.0, one), 1)
        _progress(
            f"  TFRS: {result['qps_1_thread']} q/s (1 thread), {result['qps_all_threads']} "
            f"q/s (default threads), recall {result['recall']}"
        )

    def _child(self) -> float:
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory()
            np.save(Path(self._folder.name) / "items.npy", self.items)
            np.save(Path(self._folder.name) / "queries.npy", self.timing)
        command = [
            sys.executable, "-m", "pipelines.bench_index",
            "--tfrs-worker", self._folder.name,
            "--tfrs-batch", str(self.config.tfrs_batch),
            "--repeats", "1",
        ]  # fmt: skip
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        return float(json.loads(done.stdout.strip().splitlines()[-1]))

    def close(self) -> None:
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None


def _tfrs_worker(folder: str, batch: int, repeats: int) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    items = np.load(Path(folder) / "items.npy")
    queries = np.load(Path(folder) / "queries.npy")
    print(json.dumps(_tfrs_qps(items, queries, batch, repeats)["qps"]))


def evaluate_target(flat: dict, indexes: list[dict]) -> dict:
    """For 1 thread and all threads: the fastest ANN point with recall >= 0.95 and its speedup."""
    out = {"recall": TARGET_RECALL, "speedup": TARGET_SPEEDUP}
    for key in ("qps_1_thread", "qps_all_threads"):
        candidates = [
            (point[key], entry["name"], point)
            for entry in indexes
            if entry["name"] != "Flat"
            for point in entry["points"]
            if point["recall"] >= TARGET_RECALL
        ]
        if not candidates:
            out[key] = {"met": False, "best": None}
            continue
        qps, name, point = max(candidates, key=lambda c: c[0])
        speedup = qps / flat[key]
        out[key] = {
            "met": speedup >= TARGET_SPEEDUP,
            "best": {
                "index": name,
                "params": point["params"],
                "recall": point["recall"],
                "qps": qps,
                "speedup_vs_flat": round(speedup, 2),
            },
        }
    out["met"] = all(out[k]["met"] for k in ("qps_1_thread", "qps_all_threads"))
    return out


def machine_info(threads: int) -> dict:
    import tensorflow as tf

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "faiss_threads": threads,
        "python": platform.python_version(),
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "tensorflow": tf.__version__,
        "recsampled": recsampled.__version__,
    }


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "—"


def _load_line(report: dict) -> str:
    load = report.get("load") or []
    if not load:
        return ""
    parts = [
        f"{entry.get('at') or 'round ' + str(entry.get('after_round'))}: "
        f"{' / '.join(f'{x:.1f}' for x in entry['load_average'])}"
        for entry in load
        if entry["load_average"]
    ]
    return (
        "Load average (1 / 5 / 15 min) during the run, which shared the machine with other "
        f"jobs: {'; '.join(parts)}."
    )


def markdown_report(report: dict) -> str:
    """The tables of each data set (synthetic, then ``report["real"]``), with target checks."""
    text = markdown_dataset(report, "#")
    if report.get("real"):
        text += "\n" + markdown_dataset(report["real"], "##")
    return text


def markdown_dataset(report: dict, heading: str = "#") -> str:
    """The table (one row per index and setting), the TFRS row and the target check."""
    data, flat = report["data"], report["flat"]
    threads = report["machine"]["faiss_threads"]
    lines = [
        f"{heading} Top-{RECALL_K} search: {data['num_items']:,} items x D={data['dim']}, "
        f"{data['num_queries']:,} queries, {data['metric']}",
        "",
        f"Data: {data['source']}. Machine: {report['machine']['cpu_count']} CPUs "
        f"({threads} FAISS threads for 'all'), FAISS {report['machine']['faiss']}. "
        f"Recall@{RECALL_K} against exact search over all queries; queries/s (best of "
        f"{report['config']['repeats']} interleaved rounds) with one thread on the first "
        f"{report['config']['timing_queries']:,} queries, with {_threads_label(threads)} on all.",
        "",
        f"| index | search params | recall@{RECALL_K} | q/s 1 thread | × Flat | "
        f"q/s {_threads_label(threads)} | × Flat | build s | size MiB | RSS Δ MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in report["indexes"]:
        for i, point in enumerate(entry["points"]):
            first = i == 0
            lines.append(
                f"| {entry['name'] if first else ''} | {_params(point['params'])} | "
                f"{point['recall']:.4f} | {point['qps_1_thread']:,.0f} | "
                f"{point['qps_1_thread'] / flat['qps_1_thread']:.1f} | "
                f"{point['qps_all_threads']:,.0f} | "
                f"{point['qps_all_threads'] / flat['qps_all_threads']:.1f} | "
                + (
                    f"{entry['build_seconds']:.1f} | {entry['size_bytes'] / 2**20:,.0f} | "
                    f"{entry['rss_delta_bytes'] / 2**20:,.0f} |"
                    if first
                    else "| | |"
                )
            )
    tfrs = report.get("tfrs")
    if tfrs:
        one = tfrs["qps_1_thread"]
        lines.append(
            f"| TFRS BruteForce | batch {tfrs['batch_size']} | {tfrs['recall']:.4f} | "
            f"{one:,.0f} | {one / flat['qps_1_thread']:.1f} | "
            if one
            else f"| TFRS BruteForce | batch {tfrs['batch_size']} | {tfrs['recall']:.4f} | — | — | "
        )
        lines[-1] += (
            f"{tfrs['qps_all_threads']:,.0f} | "
            f"{tfrs['qps_all_threads'] / flat['qps_all_threads']:.1f} | | | |"
        )
    target = report["target"]
    lines += [
        "",
        f"**Target**: recall@{RECALL_K} >= {TARGET_RECALL} at >= {TARGET_SPEEDUP:g}x "
        f"Flat's queries/s: **{'met' if target['met'] else 'NOT met'}**.",
    ]
    for key, label in (("qps_1_thread", "1 thread"), ("qps_all_threads", _threads_label(threads))):
        best = target[key]["best"]
        if best is None:
            lines.append(f"- {label}: no ANN setting reached recall {TARGET_RECALL}.")
        else:
            lines.append(
                f"- {label}: {best['index']} ({_params(best['params'])}), recall "
                f"{best['recall']:.4f}, {best['qps']:,.0f} q/s = {best['speedup_vs_flat']}x Flat "
                f"({'met' if target[key]['met'] else 'not met'})."
            )
    lines += [
        "",
        f"Wall time {report['wall_seconds']:.0f} s; exact ground truth "
        f"{report['exact_seconds']:.1f} s.",
    ]
    if _load_line(report):
        lines += ["", _load_line(report)]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Recall@10 vs queries/s (log x), one panel per thread setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = [report] + ([report["real"]] if report.get("real") else [])
    fig, grid = plt.subplots(
        len(reports), 2, figsize=(12, 4.8 * len(reports)), sharey=True, squeeze=False
    )
    for axes, report in zip(grid, reports, strict=True):
        _plot_dataset(axes, report)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_dataset(axes: Sequence, report: dict) -> None:
    threads = report["machine"]["faiss_threads"]
    data = report["data"]
    title = f"{data['num_items']:,} x {data['dim']} ({data['metric']}), {data['num_queries']:,} q"
    for ax, key, threads_text in zip(
        axes,
        ("qps_1_thread", "qps_all_threads"),
        ("1 thread", _threads_label(threads)),
        strict=True,
    ):
        for color, entry in enumerate(report["indexes"]):
            series: dict[str, list[dict]] = {}
            for point in entry["points"]:  # one line per value of a secondary parameter
                extra = {k: v for k, v in point["params"].items() if k == "k_factor_rf"}
                label = entry["name"] + (f" ({_params(extra)})" if extra else "")
                series.setdefault(label, []).append(point)
            for number, (label, points) in enumerate(series.items()):
                ax.plot(
                    [p[key] for p in points],
                    [p["recall"] for p in points],
                    "s" if entry["name"] == "Flat" else "o-",
                    color=f"C{color}",
                    alpha=1.0 - 0.25 * number,
                    label=label,
                    markersize=5,
                )
        tfrs = report.get("tfrs")
        if tfrs and tfrs[key]:
            ax.plot([tfrs[key]], [tfrs["recall"]], "kx", markersize=9, label="TFRS BruteForce")
        ax.axhline(TARGET_RECALL, color="grey", linestyle=":", linewidth=1)
        ax.axvline(
            TARGET_SPEEDUP * report["flat"][key],
            color="grey",
            linestyle="--",
            linewidth=1,
            label=f"{TARGET_SPEEDUP:g}x Flat",
        )
        ax.set_xscale("log")
        ax.set_xlabel("queries per second (log)")
        ax.set_title(f"{title}: {threads_text}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"recall@{RECALL_K} vs exact")
    axes[1].legend(loc="lower left", fontsize=8)


def run_benchmark(config: IndexBenchConfig) -> dict:
    """Builds, sweeps (interleaved rounds) and checks; returns the report."""
    started = time.perf_counter()
    if "flat" not in config.indexes:  # the baseline of every speedup
        config = dataclasses.replace(config, indexes=("flat", *config.indexes))
    threads = config.threads or faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    load = [{"at": "start", "load_average": load_average()}]
    items, queries, source, metric = load_data(config)
    _progress(f"data: {len(items):,} x {items.shape[1]}, {len(queries):,} queries ({source})")

    _progress("exact ground truth (IndexFlatIP, all queries)")
    start = time.perf_counter()
    exact_rows = exact_search(items, queries, RECALL_K).rows
    exact_seconds = time.perf_counter() - start

    tfrs = TfrsTimer(items, queries, exact_rows, config) if config.tfrs != "none" else None
    try:
        indexes = bench_faiss(items, queries, exact_rows, config, threads, tfrs, load)
    finally:
        if tfrs is not None:
            tfrs.close()
    load.append({"at": "end", "load_average": load_average()})
    flat_point = indexes[0]["points"][0]
    report = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": dataclasses.asdict(config),
        "machine": machine_info(threads),
        "load": load,
        "data": {
            "num_items": int(items.shape[0]),
            "dim": int(items.shape[1]),
            "num_queries": int(len(queries)),
            "metric": metric,
            "source": source,
        },
        "exact_seconds": round(exact_seconds, 2),
        "flat": {k: flat_point[k] for k in ("qps_1_thread", "qps_all_threads")},
        "indexes": indexes,
        "tfrs": tfrs.result if tfrs is not None else None,
        "target": evaluate_target(flat_point, indexes),
    }
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    return report


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(
    argv: Sequence[str] | None = None,
) -> tuple[IndexBenchConfig, Path, argparse.Namespace]:
    d = IndexBenchConfig()
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.bench_index",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", type=Path, default=Path("benchmarks/index.json"))
    parser.add_argument("--num-items", type=int, default=d.num_items)
    parser.add_argument("--dim", type=int, default=d.dim)
    parser.add_argument("--num-queries", type=int, default=d.num_queries)
    parser.add_argument("--num-clusters", type=int, default=d.num_clusters)
    parser.add_argument("--metric", choices=("cosine", "dot"), default=d.metric)
    parser.add_argument("--item-embeddings", help="[N, D] .npy of real item embeddings")
    parser.add_argument("--query-embeddings", help="[Q, D] .npy of real query embeddings")
    parser.add_argument("--timing-queries", type=int, default=d.timing_queries)
    parser.add_argument("--threads", type=int, default=None, help="FAISS threads for 'all'")
    parser.add_argument("--repeats", type=int, default=d.repeats)
    parser.add_argument("--ef-search", type=_int_list, default=d.ef_search)
    parser.add_argument("--nprobe", type=_int_list, default=d.nprobe)
    parser.add_argument("--pq-nprobe", type=_int_list, default=d.pq_nprobe)
    parser.add_argument("--pq-k-factor", type=_int_list, default=d.pq_k_factor)
    parser.add_argument(
        "--indexes",
        default=",".join(d.indexes),
        help="comma-separated subset of flat,hnsw,ivf,ivfpq",
    )
    parser.add_argument("--tfrs", choices=("both", "all", "none"), default=d.tfrs)
    parser.add_argument("--tfrs-batch", type=int, default=d.tfrs_batch)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--run",
        default=None,
        metavar="RUN_DIR",
        help="also benchmark a trained run's catalogue and users (report['real'])",
    )
    parser.add_argument("--tfrs-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if bool(args.item_embeddings) != bool(args.query_embeddings):
        parser.error("--item-embeddings and --query-embeddings go together")
    indexes = tuple(name for name in args.indexes.split(",") if name)
    unknown = set(indexes) - {"flat", "hnsw", "ivf", "ivfpq"}
    if unknown:
        parser.error(f"--indexes: unknown {sorted(unknown)}")
    config = IndexBenchConfig(
        num_items=args.num_items,
        dim=args.dim,
        num_queries=args.num_queries,
        num_clusters=args.num_clusters,
        metric=args.metric,
        item_embeddings=args.item_embeddings,
        query_embeddings=args.query_embeddings,
        timing_queries=args.timing_queries,
        threads=args.threads,
        repeats=args.repeats,
        ef_search=args.ef_search,
        nprobe=args.nprobe,
        pq_nprobe=args.pq_nprobe,
        pq_k_factor=args.pq_k_factor,
        indexes=indexes,
        tfrs=args.tfrs,
        tfrs_batch=args.tfrs_batch,
        seed=args.seed,
    )
    return config, args.output, args


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Runs the benchmark; writes JSON, Markdown and PNG side by side; prints the table."""
    config, output, args = parse_args(argv)
    if args.tfrs_worker:
        _tfrs_worker(args.tfrs_worker, config.tfrs_batch, config.repeats)
        return None
    report = run_benchmark(config)
    if args.run:
        _progress(f"trained model: {args.run}")
        report["real"] = run_benchmark(dataclasses.replace(config, run=str(args.run)))
        report["wall_seconds"] = round(report["wall_seconds"] + report["real"]["wall_seconds"], 1)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    markdown = markdown_report(report)
    output.with_suffix(".md").write_text(markdown)
    plot(report, output.with_suffix(".png"))
    print(markdown)
    _progress(f"wrote {output}, {output.with_suffix('.md')}, {output.with_suffix('.png')}")
    return report


if __name__ == "__main__":
    main()

"""Benchmark: ``recsampled serve`` under load on loopback, with and without micro-batching.

Run ``nice -n 10 python -m pipelines.bench_serve`` (after ``make demo``, or with
``--demo-artifacts DIR``); it writes ``benchmarks/serve.json`` and ``benchmarks/serve.png``.

**Servers.** Per artifact, two ``python -m recsampled.serving`` subprocesses on 127.0.0.1 side by
side (one FAISS and one TensorFlow thread each): micro-batching (``--max-batch-size``,
``--max-wait-ms``) and ``--no-batching`` (each request on its own in a worker thread); each
client count is measured on one, then the other, so both see the same machine load. Artifacts:
the demo's (1,000 users, ~2,000 items, HNSW) and a synthetic 10^6-item IVF-Flat one (clustered
embeddings, a tower whose users come from the same clusters, up to 20 seen items each, tuned to
recall@10 >= 0.95; cached in ``--cache-dir``).

**Load.** ``c`` clients in one asyncio loop of this process, each with a minimal HTTP/1.1
keep-alive connection sending one request at a time: ``POST /recommend {"user_ids": [u], "k":
10}`` for random users. Per point: ``--warmup`` untimed requests, then ``--requests`` timed ones
or ``--max-seconds``; queries/s, p50/p99 latency, query rows per shared search (``/metrics``),
the server's CPU time per request (all threads, and its event loop's alone) and the 1-minute
load average.

**Targets** (computed from the numbers): p99 < 20 ms at 8 clients on the demo artifact
(batching on); micro-batching at least doubling queries/s at 64 clients on the 10^6 artifact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil

import recsampled  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from pipelines import harness

LOG = logging.getLogger("pipelines.bench_serve")
REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Options:
    """The benchmark's options."""

    #: the demo's artifact folder (``make demo`` writes runs/demo-artifacts).
    demo_artifacts: str = "runs/demo-artifacts"
    #: items of the synthetic IVF artifact.
    large_items: int = dataclasses.field(default=1_000_000, metadata={"min": 100})
    large_dim: int = 64  #: its embedding dimension.
    large_users: int = dataclasses.field(default=20_000, metadata={"min": 10})  #: its users.
    #: where the synthetic artifact is kept between runs.
    cache_dir: str = "/tmp/recsampled-bench-serve"
    clients: tuple[int, ...] = (1, 8, 64)  #: numbers of concurrent clients.
    #: timed requests per point.
    requests: int = dataclasses.field(default=3000, metadata={"min": 1})
    warmup: int = 200  #: untimed requests per point.
    max_seconds: float = 20.0  #: time limit of a point's timed requests.
    max_batch_size: int = 64  #: the server's --max-batch-size.
    max_wait_ms: float = 2.0  #: the server's --max-wait-ms.
    batching_flags: str = ""  #: more flags of the batching server, e.g. --batch-in-thread.
    k: int = 10  #: items per request.
    seed: int = 0  #: seeds the synthetic artifact and the request mix.


COLUMNS = ("artifact", "batching", "clients", "qps", "p50_ms", "p99_ms", "mean_rows_per_search",
           "server_cpu_ms_per_request", "loop_cpu_ms_per_request", "load_average_1m")  # fmt: skip
PLOTTED = (("qps", "queries/s"), ("p99_ms", "p99 ms"))
QUICK = Options(large_items=5000, large_dim=16, large_users=200, clients=(1, 8), requests=100)


def large_artifact(options: Options) -> Path:
    """The synthetic IVF artifact, built once into ``cache_dir``."""
    n, d, users = options.large_items, options.large_dim, options.large_users
    path = Path(options.cache_dir) / f"ivf-{n}x{d}-users{users}-seed{options.seed}"
    if (path / "manifest.json").exists():
        return path
    import tensorflow as tf  # only when building (after `import recsampled`: legacy Keras)

    from recsampled.index import export_artifact

    rng = np.random.default_rng(options.seed)
    centers = rng.standard_normal((1000, d), dtype=np.float32)
    items = centers[rng.integers(1000, size=n)]
    items += 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    queries = centers[rng.integers(1000, size=users)]
    queries += 0.5 * rng.standard_normal((users, d), dtype=np.float32)
    embedding = tf.keras.layers.Embedding(users, d, embeddings_initializer="zeros")
    (tower := tf.keras.Sequential([embedding]))(tf.constant([0], tf.int64))
    embedding.set_weights([queries])
    seen = [np.unique(rng.integers(n, size=rng.integers(0, 21))) for _ in range(users)]
    LOG.info("building the %d x %d IVF artifact into %s", n, d, path)
    popularity = harness.zipf_counts(n, 1.1, rng)
    ids = {"item_ids": np.arange(n), "user_ids": np.arange(users)}
    export_artifact(path, item_embeddings=items, query_model=tower, metric="dot", index="ivf",
                    seen=seen, item_popularity=popularity, seed=options.seed, **ids)  # fmt: skip
    return path


def start_server(artifacts: Path, port: int, batching: bool, options: Options) -> subprocess.Popen:
    flags = f"--port {port} --max-batch-size {options.max_batch_size} --max-wait-ms "
    flags += f"{options.max_wait_ms} --log-level warning "
    flags += options.batching_flags if batching else "--no-batching"
    command = [sys.executable, "-m", "recsampled.serving", "--artifacts", str(artifacts)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(command + flags.split(), env=env, cwd=REPO)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return process
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"the server on {artifacts} did not start (exit {process.poll()})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run_load(port: int, bodies: list[bytes], clients: int, max_seconds: float):
    """Sends ``bodies`` from ``clients`` keep-alive connections; returns latencies and statuses."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    todo, stop_at = iter(bodies), time.perf_counter() + max_seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for body in todo:
            if time.perf_counter() > stop_at:
                break
            started = time.perf_counter()
            writer.write(
                b"POST /recommend HTTP/1.1\r\nhost: bench\r\ncontent-type: "
                b"application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses[int(head[9:12])] = statuses.get(int(head[9:12]), 0) + 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return np.array(latencies), statuses, time.perf_counter() - started


def batch_rows(port: int) -> np.ndarray:
    """[sum, count] of the server's ``recsampled_batch_rows`` histogram."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    pattern = r"^recsampled_batch_rows_{} (\S+)$"
    return np.array([float(re.search(pattern.format(s), text, re.M)[1]) for s in ("sum", "count")])


def loop(server: psutil.Process) -> float:
    """CPU seconds of the server's main thread (its event loop; the rest: worker threads)."""
    return next((t.user_time + t.system_time for t in server.threads() if t.id == server.pid), 0.0)


def point(port: int, server: psutil.Process, bodies: list[bytes], clients: int,
          options: Options) -> dict:  # fmt: skip
    """One (server, clients) measurement: warm-up, then the timed requests."""
    asyncio.run(run_load(port, bodies[: options.warmup], clients, options.max_seconds))
    rows_before, cpu_before = batch_rows(port), sum(server.cpu_times()[:2])
    loop_before = loop(server)
    load = (harness.load_average() or [None])[0]
    latencies, statuses, seconds = asyncio.run(
        run_load(port, bodies[options.warmup :], clients, options.max_seconds)
    )
    rows_sum, batches = batch_rows(port) - rows_before
    cpu, loop_cpu = sum(server.cpu_times()[:2]) - cpu_before, loop(server) - loop_before
    return {"clients": clients, "requests": len(latencies), "seconds": seconds,
            "statuses": statuses, "qps": len(latencies) / seconds,
            "p50_ms": float(np.percentile(latencies, 50) * 1e3),
            "p99_ms": float(np.percentile(latencies, 99) * 1e3),
            "mean_rows_per_search": rows_sum / max(batches, 1),
            "server_cpu_ms_per_request": cpu * 1e3 / max(len(latencies), 1),
            "loop_cpu_ms_per_request": loop_cpu * 1e3 / max(len(latencies), 1),
            "load_average_1m": load}  # fmt: skip


def measure(name: str, artifacts: Path, options: Options) -> list:
    """Both servers (micro-batching on and off) started side by side; each client count is
    measured on one, then the other (round-robin: both see the same machine load)."""
    users = [int(u) for u in np.load(artifacts / "user_ids.npy")]
    rng = np.random.default_rng(options.seed)
    servers = {}
    try:
        for batching in (True, False):
            port = free_port()
            servers[batching] = (port, start_server(artifacts, port, batching, options))
        points = []
        for clients in options.clients:
            picks = rng.choice(users, options.warmup + options.requests)
            bodies = [b'{"user_ids": [%d], "k": %d}' % (u, options.k) for u in picks]
            for batching, (port, process) in servers.items():
                found = point(port, psutil.Process(process.pid), bodies, clients, options)
                points.append({"artifact": name, "batching": batching, **found})
                LOG.info("%s", {c: points[-1][c] for c in COLUMNS})
    finally:
        for _, process in servers.values():
            process.terminate(), process.wait(timeout=30)
    return points


def checks(points: list[dict]) -> dict:
    """The targets, and the CPU the server spent per request (on a shared machine queries/s
    follows the server's share of the cores; CPU per request does not)."""
    by = {(p["artifact"], p["batching"], p["clients"]): p for p in points}
    demo, on, off = (by.get(key) for key in (("demo", True, 8), ("large", True, 64),
                                             ("large", False, 64)))  # fmt: skip
    speedup = on["qps"] / off["qps"] if on and off else None
    cpu = off["server_cpu_ms_per_request"] / on["server_cpu_ms_per_request"] if on and off else None
    return {
        "demo_p99_ms_at_8_clients": demo and demo["p99_ms"],
        "demo_p99_under_20_ms": bool(demo and demo["p99_ms"] < 20),
        "large_batching_speedup_at_64_clients": speedup,
        "large_batching_at_least_2x": bool(speedup and speedup >= 2),
        "large_batching_cpu_per_request_ratio_at_64_clients": cpu,
    }


def plot(points: list[dict], path: Path) -> None:
    plt = harness.pyplot()
    figure, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for row, artifact in enumerate(("demo", "large")):
        for batching in (True, False):
            mine = [p for p in points if p["artifact"] == artifact and p["batching"] == batching]
            for ax, (key, title) in zip(axes[row], PLOTTED, strict=True):
                ax.plot([p["clients"] for p in mine], [p[key] for p in mine], "o-",
                        label="micro-batching" if batching else "no batching")  # fmt: skip
                ax.set_xscale("log", base=2), ax.set_title(f"{artifact}: {title}")
        axes[row][0].legend()
    axes[1][0].set_xlabel("concurrent clients"), axes[1][1].set_xlabel("concurrent clients")
    harness.save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict:
    options, args = harness.parse_options(Options, argv, prog="python -m pipelines.bench_serve",
        description=__doc__, output="benchmarks/serve.json", quick=QUICK)  # fmt: skip
    stack = {m: importlib.util.find_spec(m) is not None for m in ("uvloop", "httptools")}
    machine = {"faiss_threads_per_search": 1, "tf_threads": 1, **stack}
    bench = harness.Benchmark("pipelines.bench_serve", options, schema_version=1, machine=machine)
    artifacts = {"large": large_artifact(options)}
    demo = Path(options.demo_artifacts)
    if (demo / "manifest.json").exists():
        artifacts = {"demo": demo, **artifacts}
    else:
        LOG.warning("no demo artifact at %s (run `make demo`): skipped", demo)
    points = []
    for name, path in artifacts.items():
        points += measure(name, path, options)
    report = bench.report(
        artifacts={k: str(v) for k, v in artifacts.items()}, points=points, checks=checks(points)
    )
    harness.write_json(args.output, report)
    plot(points, Path(args.output).with_suffix(".png"))
    rows = [[p[c] for c in COLUMNS] for p in points]
    print(harness.markdown_table(list(COLUMNS), rows))
    print(report["checks"])
    return report


if __name__ == "__main__":
    main()

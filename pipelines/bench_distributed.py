"""Benchmark: training examples/s of one process vs two MultiWorkerMirroredStrategy workers on
this machine, the share of a step spent on the global-batch gather, and the bytes it moves.

Run ``python -m pipelines.bench_distributed --output benchmarks/distributed.json``.

Each measured setting is a fresh process (``--worker``): it builds the two-tower model of a
synthetic log under its strategy (none, or ``multi_worker`` with ``TF_CONFIG`` on 127.0.0.1),
fits one untimed warm-up pass, then times ``--steps`` steps of ``Model.fit`` on the global batch
``B`` (split over the workers), with ``global_batch_negatives`` on (the gather) and off
(per-replica negatives, no gather). On two shared cores two workers show the overhead of the
collectives, not a speed-up. ``gather_share = 1 - t_off / t_on`` per step.

The arithmetic (not a measurement): per step, each of ``R`` replicas all-gathers the ``B/R``
candidate rows (``4·D`` bytes each, float32) plus ids, logQ probabilities and positive ids
(``4 + 4 + 4`` bytes per row); a ring all-gather makes every replica receive ``(R-1)/R`` of the
``B`` rows. The gather's gradient is an all-reduce (SUM) of the ``[B, D]`` float32 upstream
gradient, ``2·(R-1)/R·4·B·D`` bytes per replica in a ring. So per replica and step::

    bytes(R, B, D) = (R-1)/R · B · (4·D + 12) + 2·(R-1)/R · 4·B·D

and at 25 Gbit/s the wire time is ``8·bytes / 25e9`` s. The projected share at ``R`` workers
takes the measured one-process step time ``t_1`` of the same global batch as ``R·`` the
per-replica compute (each replica scores ``B/R`` queries against ``B`` columns):
``share = t_wire / (t_1 / R + t_wire)``, ignoring latency and overlap (an upper bound on
bandwidth-bound links, a lower one where latency dominates).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipelines import harness

SCHEMA_VERSION = 1
REPO = Path(__file__).resolve().parents[1]
NETWORK_BITS_PER_S = 25e9


@dataclasses.dataclass(frozen=True)
class DistributedBenchConfig:
    """Settings of one run (the defaults are those of the published numbers)."""

    num_users: int = 2_000  #: users of the synthetic log.
    num_items: int = 5_000  #: items of the synthetic log.
    num_interactions: int = 60_000  #: rows of the synthetic log.
    batch_size: int = 512  #: B, the global batch.
    embedding_dim: int = 32  #: D.
    steps: int = 40  #: timed steps per setting (after one warm-up pass of as many).
    projected_workers: tuple[int, ...] = (2, 8, 32)  #: R of the arithmetic.


QUICK = DistributedBenchConfig(
    num_users=200, num_items=300, num_interactions=4_000, batch_size=64, embedding_dim=8, steps=5
)


def gathered_bytes(replicas: int, batch_size: int, embedding_dim: int) -> float:
    """Bytes one replica receives per step for the gather and its gradient (module doc)."""
    share = (replicas - 1) / replicas
    return (
        share * batch_size * (4 * embedding_dim + 12) + 2 * share * 4 * batch_size * embedding_dim
    )


def _worker(settings: DistributedBenchConfig, strategy_name: str) -> dict:
    """One process: examples/s with the gather on and off (under ``TF_CONFIG`` if any)."""

    from recsampled.config import Config
    from recsampled.data import training_batches
    from recsampled.runs.build import build_model, load_split
    from recsampled.runs.distribute import distribute_batches, is_chief, make_strategy
    from recsampled.samplers.frequency import FixedFrequency
    from recsampled.tasks import Retrieval

    config = Config.from_dict({
        "data": {"synthetic": {"num_users": settings.num_users, "num_items": settings.num_items,
                               "num_interactions": settings.num_interactions}},
        "model": {"embedding_dim": settings.embedding_dim},
        "training": {"batch_size": settings.batch_size,
                     "distribute": {"strategy": strategy_name}},
    })  # fmt: skip
    strategy = make_strategy(config.training.distribute)
    log = load_split(config.data).train
    result = {"chief": is_chief(strategy), "replicas": strategy.num_replicas_in_sync}
    for gather in (True, False):
        with strategy.scope():
            task = Retrieval(
                remove_accidental_hits=True, global_batch_negatives=gather,
                candidate_frequency=FixedFrequency(log.item_counts, batch_size=settings.batch_size),
            )  # fmt: skip
            model = build_model(config, log, task=task)
        data = distribute_batches(strategy, lambda: training_batches(
            log, batch_size=settings.batch_size, seed=0, end_epoch=100))  # fmt: skip
        model.fit(data, steps_per_epoch=settings.steps, epochs=1, verbose=0)  # warm-up: tracing
        wall, cpu = time.perf_counter(), time.process_time()
        model.fit(data, steps_per_epoch=settings.steps, epochs=1, verbose=0)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        result["gather" if gather else "per_replica"] = {
            "step_s": wall / settings.steps, "cpu_s_per_step": cpu / settings.steps,
            "examples_per_s": settings.batch_size * settings.steps / wall,
        }  # fmt: skip
    return result


def _launch(settings: DistributedBenchConfig, workers: int) -> list[dict]:
    """Runs ``workers`` processes (TF_CONFIG on free 127.0.0.1 ports when more than one)."""
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(workers)]
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    processes = []
    for index in range(workers):
        env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
        if workers > 1:
            cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
            env["TF_CONFIG"] = json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            )
        command = [sys.executable, "-m", "pipelines.bench_distributed", "--worker",
                   "multi_worker" if workers > 1 else "none",
                   "--settings", json.dumps(dataclasses.asdict(settings))]  # fmt: skip
        pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        processes.append(subprocess.Popen(command, cwd=REPO, env=env, **pipes))
    results = []
    for process in processes:
        out, err = process.communicate(timeout=600)
        if process.returncode != 0:
            raise RuntimeError(f"worker failed ({process.returncode}):\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _projection(settings: DistributedBenchConfig, one_step_s: float) -> list[dict]:
    rows = []
    for replicas in settings.projected_workers:
        size = gathered_bytes(replicas, settings.batch_size, settings.embedding_dim)
        wire = 8 * size / NETWORK_BITS_PER_S
        rows.append({
            "replicas": replicas, "bytes_per_replica_per_step": size, "wire_s": wire,
            "compute_s": one_step_s / replicas, "share": wire / (one_step_s / replicas + wire),
        })  # fmt: skip
    return rows


def run(settings: DistributedBenchConfig) -> dict:
    bench = harness.Benchmark(
        "pipelines.bench_distributed", settings, schema_version=SCHEMA_VERSION
    )
    (single,) = _launch(settings, 1)
    pair = _launch(settings, 2)
    chief = next(r for r in pair if r["chief"])
    share = 1 - chief["per_replica"]["step_s"] / chief["gather"]["step_s"]
    measured = {
        "one_process": single["gather"],
        "two_workers": {"gather": chief["gather"], "per_replica": chief["per_replica"]},
        "two_workers_vs_one_process": chief["gather"]["examples_per_s"]
        / single["gather"]["examples_per_s"],
        "gather_share_of_step": share,
    }
    formula = "(R-1)/R*B*(4D+12) + 2*(R-1)/R*4*B*D bytes per replica per step; 8*bytes/25e9 s"
    return bench.report(
        measured=measured,
        projection={"formula": formula, "network_bits_per_s": NETWORK_BITS_PER_S,
                    "one_process_step_s": single["gather"]["step_s"],
                    "rows": _projection(settings, single["gather"]["step_s"])},
    )  # fmt: skip


def plot(report: dict, path: Path) -> Path:
    """Examples/s measured here, and the projected share of a step at each R (arithmetic)."""
    figure, (left, right) = harness.pyplot().subplots(1, 2, figsize=(9, 3.4))
    measured = report["measured"]
    bars = {"1 process": measured["one_process"], "2 workers": measured["two_workers"]["gather"],
            "2 workers,\nno gather": measured["two_workers"]["per_replica"]}  # fmt: skip
    left.bar(list(bars), [b["examples_per_s"] for b in bars.values()])
    load = report["load_average"]["start"][0]
    left.set(ylabel="examples/s", title=f"measured, 2 shared cores (load {load:.0f})")
    rows = report["projection"]["rows"]
    right.plot([r["replicas"] for r in rows], [100 * r["share"] for r in rows], "o-")
    right.set(xscale="log", xlabel="workers R", ylabel="gather share of a step (%)",
              title="projected at 25 Gbit/s (arithmetic)")  # fmt: skip
    right.set_xticks([r["replicas"] for r in rows], labels=[str(r["replicas"]) for r in rows])
    right.minorticks_off()
    return harness.save_figure(figure, path)


def main(argv: Sequence[str] | None = None) -> dict:
    def extra(parser) -> None:  # noqa: ANN001
        parser.add_argument("--worker", default=None, help="internal: run one measured process")
        parser.add_argument("--settings", default=None, help="internal: the settings as JSON")

    settings, args = harness.parse_options(
        DistributedBenchConfig, argv, prog="python -m pipelines.bench_distributed",
        description=__doc__, output="benchmarks/distributed.json", quick=QUICK, extra=extra,
    )  # fmt: skip
    if args.worker is not None:
        fields = json.loads(args.settings)
        fields["projected_workers"] = tuple(fields["projected_workers"])
        print(json.dumps(_worker(DistributedBenchConfig(**fields), args.worker)))
        return {}
    report = run(settings)
    harness.write_json(args.output, report)
    plot(report, Path(args.output).with_suffix(".png"))
    return report


if __name__ == "__main__":
    main()

"""Benchmark of the quadratic-kernel sampler: sampling, rebuild, update, memory, training step.

Run ``python -m pipelines.bench_kernel --output benchmarks/kernel.json`` (``--quick``: a smoke
run). It writes the JSON report; the README's kernel paragraph is written by hand from it.

**Sampler costs.** For every ``(N, D)`` of the grid, ``QuadraticKernelSampler`` (default
``leaf_size`` and top cut, α = 100) over a random ``[N, D]`` table: per call, the batch mixture's
``S_shared`` ids for ``B`` queries (``unique=True``), the per-query mode's ``B`` x ``S`` draws with
replacement, a full :meth:`rebuild` and an :meth:`update` of ``update_rows`` rows, each in its own
``tf.function``, timed round-robin (``pipelines.harness``); and the bytes of the sampler's state.

**Training step.** One ``tf.function`` per variant, the same step for all: the loss of ``B``
queries (a ``[B, D]`` variable standing for the query tower's output) against an ``[N, D]`` table
and ``[N]`` biases, gradients w.r.t. all three, ``Adagrad`` applying them (it applies
``IndexedSlices`` sparsely; tf-keras' ``SGD`` and ``Adam`` rewrite every row). Variants:

- ``kernel_mixture``: ``recsampled.sampled_softmax_loss`` with ``S_shared`` ids shared by the
  batch from the kernel's batch mixture (``unique=True``), drawn inside the step; the tree is
  rebuilt every ``rebuild_every`` steps, whose cost is added per step as ``rebuild / k`` (the
  ``kernel_mixture_amortised`` numbers; the rebuild is timed in the same rounds);
- ``unigram``: the same loss with ``S_shared`` shared ids from ``UnigramSampler`` (Zipf counts);
- ``kernel_per_query`` and ``unigram_small``: per-query kernel candidates ``[B, S]`` (with
  replacement, expected counts ``S·q(i | h)``) against the unigram at the same small ``S``;
- ``full``: the full softmax, ``full_chunk`` queries at a time (:func:`_full_step`).

Steps alternate round by round, so the load of other processes hits all alike; medians of wall
and process CPU time, and the ratios per round (mean and standard error; the amortised ratio in
wall and in CPU time). **Arithmetic**: the GEMM rates of the machine, timed in the same rounds
(``WᵀW`` in float32 and float64, the rebuild's batched ``[M, L, D]`` leaf products), against the
flops of the mixture's leaf scoring (``2·S·L·D²`` per step) and of a rebuild (``2·N·D²`` float32
for the leaf sums, ``2·N·D²`` float64 for the root): the floor of the amortised ratio.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import recsampled as rs  # noqa: E402
from pipelines import harness  # noqa: E402

SCHEMA_VERSION = 2
TARGET_MIXTURE_RATIO = 2.0  # kernel_mixture (amortised rebuild) / unigram, same S, at most
TARGET_FULL_SPEEDUP = 100.0  # full / kernel_mixture, at least
TARGET_MEMORY_BYTES = 2 * 1024**3
LOG = logging.getLogger("pipelines.bench_kernel")


@dataclasses.dataclass(frozen=True)
class Options:
    """Settings of one run."""

    #: numbers of classes N of the sampler grid.
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    dims: tuple[int, ...] = (64,)  #: embedding dims D of the sampler grid.
    #: B, queries per call / step.
    batch_size: int = dataclasses.field(default=1024, metadata={"min": 1})
    #: S per query (per-query mode, and the small unigram step).
    num_sampled: int = dataclasses.field(default=64, metadata={"min": 1})
    #: S shared by the batch (batch mixture, unigram).
    shared_num_sampled: int = dataclasses.field(default=1024, metadata={"min": 1})
    repeats: int = dataclasses.field(default=8, metadata={"min": 1})  #: timed calls per variant.
    #: rows changed by one update().
    update_rows: int = dataclasses.field(default=1024, metadata={"min": 1})
    #: N of the training step.
    step_size: int = dataclasses.field(default=1_000_000, metadata={"min": 1})
    step_dim: int = dataclasses.field(default=64, metadata={"min": 1})  #: D of the training step.
    #: steps between rebuilds, amortised into the kernel step.
    rebuild_every: int = dataclasses.field(default=100, metadata={"min": 1})
    #: queries per chunk of the full-softmax step.
    full_chunk: int = dataclasses.field(default=128, metadata={"min": 1})
    full_repeats: int = 2  #: timed full-softmax steps (0: leave it out).
    leaf_size: int = 0  #: leaf size of the training step's kernel samplers (0: their default).


QUICK = Options(
    sizes=(3000,), dims=(16,), batch_size=64, num_sampled=8, shared_num_sampled=64, repeats=2,
    update_rows=32, step_size=3000, step_dim=16, full_repeats=1,
)  # fmt: skip


def random_table(num_classes: int, dim: int, seed: int) -> np.ndarray:
    """``[N, D]`` float32 rows of norm about 1 (the scale of trained, normalised embeddings)."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(num_classes, dim)) / np.sqrt(dim)).astype(np.float32)


def _synced(fn, sampler: rs.QuadraticKernelSampler):
    """``fn()`` then a read of the tree's root: the assignments are done when it returns."""
    return lambda: (fn(), tf.gather(sampler.node_stats, [1]).numpy())


def bench_sampler(num_classes: int, dim: int, options: Options) -> dict:
    """Sampling (both modes), rebuild and update times and the memory of one ``(N, D)``."""
    table = tf.Variable(random_table(num_classes, dim, seed=num_classes + dim))
    mixture = rs.QuadraticKernelSampler(table, alpha=100.0)
    per_query = rs.QuadraticKernelSampler(table, alpha=100.0, mode="per_query")
    rng = np.random.default_rng(0)
    queries = tf.constant(rng.normal(size=(options.batch_size, dim)).astype(np.float32))
    labels = tf.zeros([options.batch_size, 1], tf.int64)
    ids = tf.constant(rng.choice(num_classes, size=options.update_rows, replace=False), tf.int64)
    rows = tf.constant(random_table(options.update_rows, dim, seed=1))
    shared = min(options.shared_num_sampled, num_classes)
    sample_mixture = tf.function(
        lambda: mixture.sample(labels, shared, query_embeddings=queries)[0]
    )
    s = options.num_sampled
    sample_per_query = tf.function(
        lambda: per_query.sample(labels, s, unique=False, query_embeddings=queries)[0]
    )
    rebuild, update = tf.function(mixture.rebuild), tf.function(lambda: mixture.update(ids, rows))
    steps = {
        "sample_mixture": lambda: sample_mixture().numpy(),
        "sample_per_query": lambda: sample_per_query().numpy(),
        "rebuild": _synced(rebuild, mixture),
        "update": _synced(update, mixture),
    }
    reps = dict.fromkeys(("sample_mixture", "sample_per_query"), options.repeats)
    reps |= {"rebuild": max(2, options.repeats // 2), "update": min(5, options.repeats)}
    timings = harness.time_round_robin(steps, repeats=reps, desc=f"sampler N={num_classes} D={dim}")
    return {
        "num_classes": num_classes, "embedding_dim": dim, "batch_size": options.batch_size,
        "num_sampled": options.num_sampled, "shared_num_sampled": shared,
        "leaf_size": mixture.leaf_size, "depth": mixture.depth,
        "top_level_mixture": mixture._top_level(shared),
        "top_level_per_query": per_query._top_level(options.num_sampled),
        "memory_bytes": mixture.memory_bytes(), "update_rows": options.update_rows,
        "times": timings.summaries(),
    }  # fmt: skip


def _sampled_step(weights, biases, queries, num_sampled: int, draw):
    """One Adagrad step of ``sampled_softmax_loss`` with ``draw(labels)``'s candidates."""
    optimizer = tf.keras.optimizers.Adagrad(0.1)
    variables = [weights, biases, queries]

    @tf.function
    def step(labels: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(
                rs.sampled_softmax_loss(
                    weights, biases, labels, queries, num_sampled=num_sampled,
                    num_classes=int(weights.shape[0]), sampled_values=draw(labels),
                )
            )  # fmt: skip
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    return step


def _full_step(weights: tf.Variable, biases: tf.Variable, queries: tf.Variable, chunk: int):
    """Full softmax, forward and backward ``chunk`` queries at a time (memory: ``chunk x N``
    logits, not ``B x N``): TF's fused cross-entropy returns ``softmax - onehot``, the gradient
    of the logits, from which the step forms those of the table, biases and queries."""
    optimizer = tf.keras.optimizers.Adagrad(0.1)
    variables = [weights, biases, queries]
    batch = int(queries.shape[0])
    chunk = min(chunk, batch)

    @tf.function
    def step(labels: tf.Tensor) -> tf.Tensor:
        def body(i, loss, d_weights, d_biases, d_queries):
            rows = tf.range(i * chunk, tf.minimum((i + 1) * chunk, batch))
            h = tf.gather(queries, rows)
            logits = tf.matmul(h, weights, transpose_b=True) + biases
            losses, d_logits = tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(
                features=logits, labels=tf.gather(labels[:, 0], rows)
            )
            d_logits /= batch
            return (
                i + 1,
                loss + tf.reduce_sum(losses) / batch,
                d_weights + tf.matmul(d_logits, h, transpose_a=True),
                d_biases + tf.reduce_sum(d_logits, axis=0),
                d_queries.write(i, tf.matmul(d_logits, weights)),
            )

        initial = (
            tf.constant(0), tf.constant(0.0), tf.zeros_like(weights), tf.zeros_like(biases),
            tf.TensorArray(tf.float32, size=-(-batch // chunk)),
        )  # fmt: skip
        _, loss, d_weights, d_biases, d_queries = tf.while_loop(
            lambda i, *_: i * chunk < batch, body, initial, parallel_iterations=1
        )
        grads = [d_weights, d_biases, d_queries.concat()]
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss

    return step


def _training_steps(
    options: Options, weights, biases, queries, counts
) -> tuple[dict, rs.QuadraticKernelSampler]:
    """The variants of the module docstring, by name, each a function of the labels."""
    shared, small = options.shared_num_sampled, options.num_sampled
    leaf = options.leaf_size or None
    mixture = rs.QuadraticKernelSampler(weights, alpha=100.0, leaf_size=leaf)
    per_query = rs.QuadraticKernelSampler(weights, alpha=100.0, leaf_size=leaf, mode="per_query")
    unigram = rs.UnigramSampler(counts)
    steps = {
        "kernel_mixture": _sampled_step(
            weights, biases, queries, shared,
            lambda y: mixture.sample(y, shared, query_embeddings=queries),
        ),
        "unigram": _sampled_step(
            weights, biases, queries, shared, lambda y: unigram.sample(y, shared)
        ),
        "kernel_per_query": _sampled_step(
            weights, biases, queries, small,
            lambda y: per_query.sample(y, small, unique=False, query_embeddings=queries),
        ),
        "unigram_small": _sampled_step(
            weights, biases, queries, small, lambda y: unigram.sample(y, small)
        ),
    }  # fmt: skip
    return steps, mixture


def bench_step(options: Options) -> dict:
    """The training-step variants at ``step_size`` x ``step_dim``, alternated round by round."""
    num_classes, dim, batch = options.step_size, options.step_dim, options.batch_size
    rng = np.random.default_rng(2)
    weights = tf.Variable(random_table(num_classes, dim, seed=3))
    biases = tf.Variable(tf.zeros([num_classes]))
    queries = tf.Variable(rng.normal(size=(batch, dim)).astype(np.float32))
    counts = harness.zipf_counts(num_classes, 1.0, rng)
    labels = tf.constant(rng.choice(num_classes, size=(batch, 1), p=counts / counts.sum()))
    steps, mixture = _training_steps(options, weights, biases, queries, counts)
    calls = {name: (lambda s=step: s(labels).numpy()) for name, step in steps.items()}
    calls["rebuild"] = _synced(tf.function(mixture.rebuild), mixture)
    calls |= _gemm_calls(weights, mixture)
    repeats = dict.fromkeys(calls, options.repeats) | {"rebuild": max(2, options.repeats // 2)}
    chunk = min(batch, options.full_chunk)
    full_bytes = 3.0 * chunk * num_classes * 4 + 4 * num_classes * dim * 4
    skipped = None
    if options.full_repeats == 0:
        skipped = "full_repeats=0"
    elif full_bytes + (1 << 30) > harness.available_memory_bytes():
        skipped = f"needs ~{full_bytes / 2**30:.1f} GiB"
    else:
        full = _full_step(weights, biases, queries, chunk)
        calls["full"], repeats["full"] = (lambda: full(labels).numpy()), options.full_repeats
    timings = harness.time_round_robin(calls, repeats=repeats, warmup=2, desc="training step")
    times = timings.summaries()
    if skipped:
        times["full"] = {"skipped": skipped}
    return {
        "num_classes": num_classes, "embedding_dim": dim, "batch_size": batch,
        "num_sampled": options.num_sampled, "shared_num_sampled": options.shared_num_sampled,
        "rebuild_every": options.rebuild_every,
        "optimizer": "tf.keras.optimizers.Adagrad(0.1): sparse updates for IndexedSlices",
        "leaf_size": mixture.leaf_size, "kernel_memory_bytes": mixture.memory_bytes(),
        "times": times, "ratios": _step_ratios(timings, options.rebuild_every),
        "arithmetic": _arithmetic(times, mixture, options),
    }  # fmt: skip


def _gemm_calls(weights: tf.Variable, sampler: rs.QuadraticKernelSampler) -> dict:
    """The machine's GEMM rates, timed in the same rounds: ``WᵀW`` (``[N, D]``, float32 and
    float64, as the rebuild's root) and the rebuild's batched ``[M, L, D]`` leaf products."""
    leaves = tf.reshape(tf.pad(weights, [[0, sampler.num_leaves * sampler.leaf_size -
                                          sampler.num_classes], [0, 0]]),
                        [sampler.num_leaves, sampler.leaf_size, -1])  # fmt: skip
    w64 = tf.cast(weights, tf.float64)
    gemms = {
        "gemm_f32": tf.function(lambda: tf.matmul(weights, weights, transpose_a=True)[0, 0]),
        "gemm_f64": tf.function(lambda: tf.matmul(w64, w64, transpose_a=True)[0, 0]),
        "gemm_leaves": tf.function(lambda: tf.matmul(leaves, leaves, transpose_a=True)[0, 0, 0]),
    }
    return {name: (lambda f=f: f().numpy()) for name, f in gemms.items()}


def _arithmetic(times: dict, sampler: rs.QuadraticKernelSampler, options: Options) -> dict:
    """Flops of the mixture step's leaf scoring and of a rebuild against the GEMM rates measured
    in the same run: the time each would take at those rates (the floor of this design)."""
    n, d, s = options.step_size, options.step_dim, options.shared_num_sampled
    draws = s + s // 16 + 8  # the first round of unique draws (_draw_mixture)
    flops = {
        "leaf_scoring_per_step": 2.0 * draws * sampler.leaf_size * d * d,  # α·wᵀ(H/c)w, L per draw
        "rebuild_leaf_sums_f32": 2.0 * n * d * d, "rebuild_root_f64": 2.0 * n * d * d,
    }  # fmt: skip
    rate = {
        k: 2.0 * n * d * d / times[k]["median_ms"] * 1e-6
        for k in ("gemm_f32", "gemm_f64", "gemm_leaves")
    }
    floor_ms = {
        "leaf_scoring_per_step": flops["leaf_scoring_per_step"] / rate["gemm_f32"] * 1e-6,
        "rebuild": (flops["rebuild_leaf_sums_f32"] / rate["gemm_leaves"]
                    + flops["rebuild_root_f64"] / rate["gemm_f64"]) * 1e-6,
    }  # fmt: skip
    floor_ms["rebuild_per_step"] = floor_ms["rebuild"] / options.rebuild_every
    unigram = times["unigram"]["median_ms"]
    floor_ms["kernel_mixture_amortised_floor_over_unigram"] = (
        unigram + floor_ms["leaf_scoring_per_step"] + floor_ms["rebuild_per_step"]
    ) / unigram
    return {"flops": flops, "gflops_per_s": rate, "floor_ms": floor_ms}


def _step_ratios(timings: harness.Timings, rebuild_every: int) -> dict:
    """Per-round ratios of the step variants; the mixture with its rebuild amortised."""
    rebuild = timings.summary("rebuild")
    amortised = rebuild["median_ms"] / rebuild_every
    mixture = [t + amortised for t in timings.wall_ms["kernel_mixture"]]
    per_round = [m / u for m, u in zip(mixture, timings.wall_ms["unigram"], strict=True)]
    rebuild_cpu = rebuild["cpu_median_ms"] / rebuild_every
    per_round_cpu = [(m + rebuild_cpu) / u for m, u in zip(
        timings.cpu_ms["kernel_mixture"], timings.cpu_ms["unigram"], strict=True)]  # fmt: skip
    ratios = {
        "kernel_mixture_amortised_ms": float(np.median(mixture)),
        "rebuild_ms_per_step": amortised,
        "kernel_mixture_amortised_over_unigram": harness.ratio_stats(per_round),
        "rebuild_cpu_ms_per_step": rebuild_cpu,
        "kernel_mixture_amortised_over_unigram_cpu": harness.ratio_stats(per_round_cpu),
        "kernel_mixture_over_unigram": timings.ratio("kernel_mixture", "unigram"),
        "kernel_mixture_over_unigram_cpu": timings.ratio("kernel_mixture", "unigram", cpu=True),
        "kernel_per_query_over_unigram_small": timings.ratio("kernel_per_query", "unigram_small"),
        "kernel_per_query_over_kernel_mixture": timings.ratio("kernel_per_query", "kernel_mixture"),
    }
    # The fewest steps between rebuilds that meet the target: (m + r/k) / u <= target.
    for suffix, times in (("", timings.wall_ms), ("_cpu", timings.cpu_ms)):
        m, u = (float(np.median(times[n])) for n in ("kernel_mixture", "unigram"))
        r = float(np.median(times["rebuild"]))
        slack = TARGET_MIXTURE_RATIO * u - m
        ratios[f"rebuild_every_for_target{suffix}"] = math.ceil(r / slack) if slack > 0 else None
    if "full" in timings.wall_ms:
        ratios["full_over_kernel_mixture"] = timings.ratio("full", "kernel_mixture")
    return ratios


def evaluate_targets(step: dict, samplers: list[dict]) -> dict:
    """Whether the issue's targets are met (wall-clock medians; memory of the step's size)."""
    ratios = step["ratios"]
    mixture = ratios["kernel_mixture_amortised_over_unigram"]["median"]
    full = ratios.get("full_over_kernel_mixture", {}).get("of_medians")
    size = (step["num_classes"], step["embedding_dim"])
    memory = [p["memory_bytes"] for p in samplers if (p["num_classes"], p["embedding_dim"]) == size]
    memory_bytes = memory[0] if memory else step["kernel_memory_bytes"]
    return {
        "kernel_mixture_amortised_over_unigram": mixture,
        "kernel_mixture_amortised_over_unigram_cpu": ratios[
            "kernel_mixture_amortised_over_unigram_cpu"
        ]["median"],
        "mixture_target": TARGET_MIXTURE_RATIO,
        "mixture_met": bool(mixture <= TARGET_MIXTURE_RATIO),
        "full_over_kernel_mixture": full,
        "full_met": None if full is None else bool(full >= TARGET_FULL_SPEEDUP),
        "memory_bytes": memory_bytes,
        "memory_met": bool(memory_bytes < TARGET_MEMORY_BYTES),
    }


def main(argv: list[str] | None = None) -> dict:
    options, args = harness.parse_options(
        Options, argv, prog="python -m pipelines.bench_kernel", description=__doc__,
        output="benchmarks/kernel.json", quick=QUICK,
    )  # fmt: skip
    bench = harness.Benchmark("pipelines.bench_kernel", options, schema_version=SCHEMA_VERSION)
    samplers = []
    for num_classes in options.sizes:
        for dim in options.dims:
            samplers.append(bench_sampler(num_classes, dim, options))
            harness.write_json(args.output, bench.report(samplers=samplers, complete=False))
    step = bench_step(options)
    targets = evaluate_targets(step, samplers)
    LOG.info("targets: %s", targets)
    report = bench.report(samplers=samplers, step=step, targets=targets, complete=True)
    harness.write_json(args.output, report)
    return report


if __name__ == "__main__":
    main()

"""Benchmark: full softmax vs ``tf.nn.sampled_softmax_loss`` vs ``recsampled.sampled_softmax_loss``.

Run ``python -m pipelines.bench_loss --output benchmarks/loss.json`` (``--quick``: a smoke run).

Loss step: one ``tf.function`` per variant computes the mean loss and its gradients w.r.t.
weights, biases and inputs (unapplied; sampled ones stay ``IndexedSlices``). Labels are
log-uniform; sampled losses draw log-uniform candidates (``unique=True``) inside the step via TF's
op (``tf_op``), ``LogUniformSampler`` or each loss's default (``None``). All variants at one N are
timed round-robin (wall and CPU medians, per-round ours/TF ratio ± SE); the full softmax (and TF's
fused cross-entropy, for reference) is skipped where it would not fit in memory. Samplers:
``UnigramSampler`` construction and per-call time (eager, ``tf.function``, ``unique`` on/off)
beside TF's ``fixed_unigram_candidate_sampler`` at Zipf-like counts.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import os
from collections.abc import Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import recsampled  # noqa: E402  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from pipelines import harness  # noqa: E402

LOG = logging.getLogger("pipelines.bench_loss")
SCHEMA_VERSION = 1
RATIO_TARGET = 1.1  # ours / TF, at every point
SPEEDUP_TARGET = 500.0  # full softmax / ours, at (N, S) = SPEEDUP_POINT
SPEEDUP_POINT = (1_000_000, 1024)
SAMPLED_VALUES_MODES = ("tf_op", "LogUniformSampler", "None")
# Peak memory of a full-softmax step, in [batch_size, N] float32 matrices (measured at N = 10^5:
# full_softmax_loss keeps about 4.6 alive at once, TF's fused cross-entropy about 1), and the
# memory to leave to the rest of the machine.
FULL_SOFTMAX_MATRICES = {"full": 4.6, "full_tf": 1.5}
MEMORY_MARGIN_BYTES = 1 << 30
_POSITIVE = {"min": 1}


@dataclasses.dataclass(frozen=True)
class LossBenchConfig:
    """Settings of one run (the defaults are those of the published table)."""

    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)  #: numbers of classes N.
    num_sampled: tuple[int, ...] = (64, 1024)  #: numbers of sampled candidates S.
    batch_size: int = dataclasses.field(default=1024, metadata=_POSITIVE)  #: B.
    embedding_dim: int = dataclasses.field(default=64, metadata={"flag": "--dim", "min": 1})  #: D.
    #: timed calls of each sampled-loss step per N.
    repeats: int = dataclasses.field(default=100, metadata=_POSITIVE)
    #: timed calls of the full-softmax step per N.
    full_repeats: int = dataclasses.field(default=5, metadata=_POSITIVE)
    #: untimed calls of each sampled step before timing (the full softmax gets one).
    warmup: int = dataclasses.field(default=2, metadata=_POSITIVE)
    #: N for ``recsampled.UnigramSampler``.
    sampler_sizes: tuple[int, ...] = (100_000, 1_000_000, 10_000_000)
    #: N for TF's ``fixed_unigram_candidate_sampler`` (slow to trace).
    tf_sampler_sizes: tuple[int, ...] = (100_000, 1_000_000)
    #: S for the sampler benchmark.
    sampler_num_sampled: int = dataclasses.field(default=1024, metadata=_POSITIVE)
    #: timed calls of each sampler variant.
    sampler_repeats: int = dataclasses.field(default=30, metadata=_POSITIVE)
    #: timed constructions of ``UnigramSampler`` per N.
    construct_repeats: int = dataclasses.field(default=3, metadata=_POSITIVE)
    zipf_exponent: float = 1.1  #: exponent ``a`` of the Zipf-like counts ``c_k ∝ (k + 1)^-a``.
    seed: int = 0  #: seed of the data and of TF's global generator.


QUICK = LossBenchConfig(
    sizes=(1_000, 3_000), num_sampled=(16, 64), batch_size=32, embedding_dim=8, repeats=4,
    full_repeats=2, warmup=1, sampler_sizes=(1_000,), tf_sampler_sizes=(1_000,),
    sampler_num_sampled=16, sampler_repeats=3, construct_repeats=1,
)  # fmt: skip


LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def _gradient_step(loss_fn: LossFn, weights: tf.Variable, biases: tf.Variable) -> Callable:
    """A ``tf.function`` returning the mean loss and d/d(weights, biases, inputs), unapplied."""

    @tf.function
    def step(labels: tf.Tensor, inputs: tf.Tensor) -> tuple:
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_mean(loss_fn(labels, inputs))
        return loss, tape.gradient(loss, [weights, biases, inputs])

    return step


def _loss_fns(weights: tf.Variable, biases: tf.Variable, num_classes: int, num_sampled: int,
              mode: str) -> dict[str, LossFn]:  # fmt: skip
    """Every loss of one (N, S, mode): the two sampled losses, candidates drawn as ``mode``
    says (``mode=None``: the full softmax and, as a reference, TF's fused cross-entropy)."""
    sampler = recsampled.LogUniformSampler(num_classes)

    def values(labels: tf.Tensor) -> Sequence[tf.Tensor] | None:
        if mode == "tf_op":
            return tf.random.log_uniform_candidate_sampler(
                labels, 1, num_sampled, unique=True, range_max=num_classes
            )
        return sampler.sample(labels, num_sampled, unique=True) if mode != "None" else None

    def sampled(op: Callable[..., tf.Tensor]) -> LossFn:
        return lambda labels, inputs: op(
            weights, biases, labels, inputs, num_sampled=num_sampled, num_classes=num_classes,
            sampled_values=values(labels), remove_accidental_hits=True,
        )  # fmt: skip

    def full_tf(labels: tf.Tensor, inputs: tf.Tensor) -> tf.Tensor:
        logits = tf.matmul(inputs, weights, transpose_b=True) + biases
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels[:, 0], logits)

    if mode is None:
        fn = functools.partial(recsampled.full_softmax_loss, weights, biases)
        return {"full": lambda labels, inputs: fn(labels, inputs, num_classes), "full_tf": full_tf}
    ops = {"tf": tf.nn.sampled_softmax_loss, "ours": recsampled.sampled_softmax_loss}
    return {name: sampled(op) for name, op in ops.items()}


def _gradient_types(step: Callable, labels: tf.Tensor, inputs: tf.Tensor) -> list[str]:
    """``"IndexedSlices"`` or ``"Tensor"`` for each gradient, read from the traced function."""
    _, grads = step.get_concrete_function(labels, inputs).structured_outputs
    return ["IndexedSlices" if isinstance(g, tf.IndexedSlices) else "Tensor" for g in grads]


def _steps(num_classes: int, config: LossBenchConfig) -> tuple[dict, dict, tuple]:
    """The gradient steps of every variant at one N, the skipped full softmaxes, the inputs."""
    rng = np.random.default_rng(config.seed + num_classes)
    dim, batch = config.embedding_dim, config.batch_size
    weights = tf.Variable(rng.normal(0, 0.05, (num_classes, dim)).astype(np.float32), name="w")
    biases = tf.Variable(np.zeros(num_classes, np.float32), name="b")
    labels = tf.constant(harness.log_uniform_ids(num_classes, (batch, 1), rng))
    inputs = tf.constant(rng.normal(0, 1, (batch, dim)).astype(np.float32))
    steps, skipped = {}, {}
    available = harness.available_memory_bytes()
    for name, fn in _loss_fns(weights, biases, num_classes, 0, None).items():
        need = FULL_SOFTMAX_MATRICES[name] * batch * num_classes * 4
        if need + MEMORY_MARGIN_BYTES > available:
            reason = f"needs about {need / 2**30:.1f} GiB, {available / 2**30:.1f} available"
            skipped[name] = {"skipped": reason}
            LOG.info("N=%s: skipping %s: %s", f"{num_classes:,}", name, reason)
        else:
            steps[name] = _gradient_step(fn, weights, biases)
    for s in config.num_sampled:
        for mode in SAMPLED_VALUES_MODES:
            for variant, fn in _loss_fns(weights, biases, num_classes, s, mode).items():
                steps[f"{variant}|{s}|{mode}"] = _gradient_step(fn, weights, biases)
    return steps, skipped, (labels, inputs)


def bench_loss_size(num_classes: int, config: LossBenchConfig) -> list[dict]:
    """Times every variant at one N; one result per (S, sampled-values mode)."""
    steps, skipped, (labels, inputs) = _steps(num_classes, config)
    full = {name for name in ("full", "full_tf") if name in steps}
    timings = harness.time_round_robin(
        {name: functools.partial(step, labels, inputs) for name, step in steps.items()},
        repeats={n: config.full_repeats if n in full else config.repeats for n in steps},
        warmup={n: 1 if n in full else config.warmup for n in steps},
    )
    summary = timings.summaries() | skipped
    grad_types = {name: _gradient_types(step, labels, inputs) for name, step in steps.items()}
    full_ms, full_tf_ms = summary["full"].get("median_ms"), summary["full_tf"].get("median_ms")
    results = []
    for s in config.num_sampled:
        for mode in SAMPLED_VALUES_MODES:
            keys = {"full": "full", "full_tf": "full_tf", "tf": f"tf|{s}|{mode}",
                    "ours": f"ours|{s}|{mode}"}  # fmt: skip
            tf_t, ours_t = summary[keys["tf"]], summary[keys["ours"]]
            tf_ms, ours_ms = tf_t["median_ms"], ours_t["median_ms"]
            per_round = {
                clock: {k: v for k, v in timings.ratio(keys["ours"], keys["tf"], cpu=cpu).items()
                        if k != "per_round"}
                for clock, cpu in (("wall", False), ("cpu", True))
            }  # fmt: skip
            results.append({
                "num_classes": num_classes, "num_sampled": s, "batch_size": config.batch_size,
                "embedding_dim": config.embedding_dim, "sampled_values": mode,
                "full_ms": full_ms, "full_tf_ms": full_tf_ms, "tf_ms": tf_ms, "ours_ms": ours_ms,
                "ratio_ours_tf": ours_ms / tf_ms,
                "ratio_ours_tf_cpu": ours_t["cpu_median_ms"] / tf_t["cpu_median_ms"],
                "ratio_ours_tf_per_round": per_round,
                "speedup_tf_over_full": full_ms and full_ms / tf_ms,
                "speedup_ours_over_full": full_ms and full_ms / ours_ms,
                "speedup_ours_over_full_tf": full_tf_ms and full_tf_ms / ours_ms,
                "within_ratio_target": ours_ms / tf_ms <= RATIO_TARGET,
                "timings": {name: summary[key] for name, key in keys.items()},
                "gradient_types": {n: grad_types[k] for n, k in keys.items() if k in grad_types},
            })  # fmt: skip
    return results


def evaluate_targets(points: list[dict]) -> dict:
    """Whether ours is within ``RATIO_TARGET`` of TF everywhere, and the speed-up target."""

    def worst(group: list[dict], key: str = "ratio_ours_tf") -> float | None:
        return max((p[key] for p in group), default=None)

    def within(group: list[dict]) -> dict:
        return {"met": all(p["within_ratio_target"] for p in group), "worst_ratio": worst(group),
                "worst_ratio_cpu": worst(group, "ratio_ours_tf_cpu")}  # fmt: skip

    top = max(points, key=lambda p: p["ratio_ours_tf"]) if points else None
    ratio = {
        "description": f"ours / tf.nn.sampled_softmax_loss <= {RATIO_TARGET} at every point",
        "threshold": RATIO_TARGET,
        **(within(points) if points else dict.fromkeys(("met", "worst_ratio", "worst_ratio_cpu"))),
        "worst_point": {k: top[k] for k in ("num_classes", "num_sampled", "sampled_values")}
        if top else None,
        "met_by_cpu_time": all(p["ratio_ours_tf_cpu"] <= RATIO_TARGET for p in points)
        if points else None,
        "by_sampled_values": {
            mode: within(group) for mode in SAMPLED_VALUES_MODES
            if (group := [p for p in points if p["sampled_values"] == mode])
        },
    }  # fmt: skip
    n, s = SPEEDUP_POINT
    at = [p for p in points if (p["num_classes"], p["num_sampled"]) == (n, s) and p["full_ms"]]

    def least(key: str) -> float | None:
        return min((p[key] for p in at if p[key] is not None), default=None)

    speedup = {
        "description": f"ours >= {SPEEDUP_TARGET:g}x faster than the full softmax at N={n}, S={s}",
        "threshold": SPEEDUP_TARGET,
        "met": least("speedup_ours_over_full") >= SPEEDUP_TARGET if at else None,
        "speedup": least("speedup_ours_over_full"),
        "tf_speedup": least("speedup_tf_over_full"),
        "speedup_over_tf_fused_full_softmax": least("speedup_ours_over_full_tf"),
    }
    return {"ratio_within_1_1x": ratio, "speedup_500x_at_1e6_s1024": speedup}


def bench_sampler_size(num_classes: int, config: LossBenchConfig, with_tf: bool) -> dict:
    """Construction and per-call time of ``UnigramSampler`` (and TF's op if ``with_tf``)."""
    rng = np.random.default_rng(config.seed + num_classes)
    counts = harness.zipf_counts(num_classes, config.zipf_exponent, rng)
    build = harness.time_round_robin(
        {"build": lambda: recsampled.UnigramSampler(counts, distortion=1.0)},
        repeats=config.construct_repeats, warmup=1,
    )  # fmt: skip
    sampler = recsampled.UnigramSampler(counts, distortion=1.0)
    ids = rng.choice(num_classes, size=config.batch_size, p=counts / counts.sum())
    labels = tf.constant(ids[:, np.newaxis].astype(np.int64))
    s, unigrams = config.sampler_num_sampled, counts.tolist() if with_tf else None
    steps: dict[str, Callable[[], object]] = {}
    for unique in (True, False):
        ours = functools.partial(sampler.sample, num_sampled=s, unique=unique)
        steps[f"ours|eager|{unique}"] = functools.partial(ours, labels)
        traced = tf.function(ours, autograph=False)
        steps[f"ours|function|{unique}"] = functools.partial(traced, labels)
        if unigrams is not None:  # the counts closed over: a list argument would be hashed
            theirs = functools.partial(
                tf.random.fixed_unigram_candidate_sampler, num_true=1, num_sampled=s,
                unique=unique, range_max=num_classes, unigrams=unigrams, distortion=1.0,
            )  # fmt: skip
            traced = tf.function(theirs, autograph=False)
            steps[f"tf|function|{unique}"] = functools.partial(traced, labels)
    timings = harness.time_round_robin(
        steps, repeats=config.sampler_repeats, warmup=config.warmup, errors=(tf.errors.OpError,)
    )
    variants = {}
    for name, timing in timings.summaries().items():
        library, mode, unique = name.split("|")
        variants[name] = {"library": library, "mode": mode, "unique": unique == "True", **timing}
    return {
        "num_classes": num_classes, "num_sampled": s, "zipf_exponent": config.zipf_exponent,
        "distortion": 1.0, "construct_ms": build.summary("build")["median_ms"],
        "variants": variants, "peak_rss_mb": harness.peak_rss_bytes() / 2**20,
    }  # fmt: skip


def run_benchmark(config: LossBenchConfig,
                  checkpoint: Callable[[dict], None] | None = None) -> dict:  # fmt: skip
    """Runs both parts; ``checkpoint`` gets the report so far after each N."""
    bench = harness.Benchmark("pipelines.bench_loss", config, schema_version=SCHEMA_VERSION)
    tf.random.set_seed(config.seed)
    sampler_points, loss_points = [], []

    def report(complete: bool = False) -> dict:
        loss = {"step": "mean loss, gradients w.r.t. weights, biases and inputs (not applied)",
                "sampler": "log-uniform, unique=True, drawn inside the step",
                "points": loss_points}  # fmt: skip
        return bench.report(complete=complete, loss=loss, targets=evaluate_targets(loss_points),
                            samplers={"points": sampler_points})  # fmt: skip

    sampler_sizes = [*config.sampler_sizes,
                     *sorted(set(config.tf_sampler_sizes) - set(config.sampler_sizes))]  # fmt: skip
    for n in sampler_sizes:
        LOG.info("UnigramSampler N=%s (TF's op too: %s)", f"{n:,}", n in config.tf_sampler_sizes)
        sampler_points.append(bench_sampler_size(n, config, with_tf=n in config.tf_sampler_sizes))
        gc.collect()
        if checkpoint is not None:
            checkpoint(report())
    tf_logger, level = tf.get_logger(), tf.get_logger().level
    tf_logger.setLevel("ERROR")  # "triggered tf.function retracing": one function per step
    try:
        for n in config.sizes:
            LOG.info("loss N=%s, S in %s: tracing and timing", f"{n:,}", list(config.num_sampled))
            loss_points.extend(points := bench_loss_size(n, config))
            for p in points:
                LOG.info("N=%s S=%s %s: full %s ms, tf %.2f ms, ours %.2f ms (ours/tf %.2f)",
                         n, p["num_sampled"], p["sampled_values"], p["full_ms"],
                         p["tf_ms"], p["ours_ms"], p["ratio_ours_tf"])  # fmt: skip
            gc.collect()
            if checkpoint is not None:
                checkpoint(report())
    finally:
        tf_logger.setLevel(level)
    return report(complete=True)


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the benchmark and writes the JSON."""
    config, args = harness.parse_options(
        LossBenchConfig, argv, prog="python -m pipelines.bench_loss", description=__doc__,
        output="benchmarks/loss.json", quick=QUICK,
    )  # fmt: skip
    report = run_benchmark(config, checkpoint=lambda r: harness.write_json(args.output, r))
    harness.write_json(args.output, report)
    LOG.info("wrote %s in %.0f s", args.output, report["wall_s"])
    return report


if __name__ == "__main__":
    main()

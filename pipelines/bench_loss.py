"""Benchmark: full softmax vs ``tf.nn.sampled_softmax_loss`` vs ``recsampled.sampled_softmax_loss``.

Run ``python -m pipelines.bench_loss --output benchmarks/loss.json``; it writes the JSON and a
Markdown table beside it (``benchmarks/loss.md``) and prints the table.

**Loss step.** One ``tf.function`` per variant computes the mean loss of a batch and its gradients
with respect to the weights variable, the biases variable and the inputs, without applying them.
The weight and bias gradients of the sampled losses stay ``tf.IndexedSlices``, as an optimizer
receives them; the full softmax's are dense. Labels are drawn from the log-uniform distribution
(ids sorted by popularity, the assumption of TF's default sampler), so accidental hits occur as
they would in training. The sampled losses draw log-uniform candidates, ``unique=True``, *inside
the step*, in three ways (``sampled_values`` in the results):

- ``tf_op``: the step calls TF's ``tf.random.log_uniform_candidate_sampler`` (the default of
  ``tf.nn.sampled_softmax_loss``) and passes the same triple to both losses: the losses compared
  with the same sampler;
- ``LogUniformSampler``: the same, with ``recsampled.LogUniformSampler(N).sample(...)``;
- ``None``: each loss calls its own default sampler (TF's op; ``LogUniformSampler`` for ours), so
  the difference includes the samplers.

**Timing.** For each ``N`` all variants (full softmax and the sampled losses at every ``S``) are
traced and warmed up, then timed one call at a time, round-robin in a rotating order, so that
noise from other processes hits all alike; the full softmax (one warm-up call, its first) runs in
fewer, evenly spread rounds. We report medians of wall-clock time, and of the process's CPU time,
which other processes on a shared machine disturb far less. Beside ``recsampled.full_softmax_loss``
we time TF's fused ``sparse_softmax_cross_entropy_with_logits`` on the same logits for reference;
a full softmax that would not fit in the available memory is skipped and reported as such.

**Samplers.** ``recsampled.UnigramSampler`` at Zipf-like counts: construction time and time per
call (eager and in a ``tf.function``, ``unique`` True and False), beside TF's
``tf.random.fixed_unigram_candidate_sampler`` with the counts as its ``unigrams`` attribute
(trace plus first call, then per call), which is slow to build at large N.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import recsampled  # noqa: E402  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)

SCHEMA_VERSION = 1
RATIO_TARGET = 1.1  # ours / TF, at every point
SPEEDUP_TARGET = 500.0  # full softmax / ours, at (N, S) = SPEEDUP_POINT
SPEEDUP_POINT = (1_000_000, 1024)
SAMPLED_VALUES_MODES = ("tf_op", "LogUniformSampler", "None")


@dataclasses.dataclass(frozen=True)
class LossBenchConfig:
    """Settings of one benchmark run (the defaults are those of the published table).

    Attributes:
        sizes: numbers of classes N.
        num_sampled: numbers of sampled candidates S.
        batch_size: B.
        embedding_dim: D.
        repeats: timed calls of each sampled-loss step per N.
        full_repeats: timed calls of the full-softmax step per N.
        warmup: untimed calls of each sampled-loss and sampler step before timing (the first
            one traces); the full softmax gets one.
        sampler_sizes: N for ``recsampled.UnigramSampler``.
        tf_sampler_sizes: N for TF's ``fixed_unigram_candidate_sampler`` (slow to trace).
        sampler_num_sampled: S for the sampler benchmark.
        sampler_repeats: timed calls of each sampler variant.
        construct_repeats: timed constructions of ``UnigramSampler`` per N.
        zipf_exponent: exponent ``a`` of the Zipf-like counts ``c_k ∝ (k + 1)^-a``.
        seed: seed of the data and of TF's global generator.
    """

    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    num_sampled: tuple[int, ...] = (64, 1024)
    batch_size: int = 1024
    embedding_dim: int = 64
    repeats: int = 100
    full_repeats: int = 5
    warmup: int = 2
    sampler_sizes: tuple[int, ...] = (100_000, 1_000_000, 10_000_000)
    tf_sampler_sizes: tuple[int, ...] = (100_000, 1_000_000)
    sampler_num_sampled: int = 1024
    sampler_repeats: int = 30
    construct_repeats: int = 3
    zipf_exponent: float = 1.1
    seed: int = 0


QUICK = LossBenchConfig(
    sizes=(1_000, 3_000),
    num_sampled=(16, 64),
    batch_size=32,
    embedding_dim=8,
    repeats=4,
    full_repeats=2,
    warmup=1,
    sampler_sizes=(1_000,),
    tf_sampler_sizes=(1_000,),
    sampler_num_sampled=16,
    sampler_repeats=3,
    construct_repeats=1,
)


# ---------------------------------------------------------------------------------------------
# Timing helpers


def _progress(message: str) -> None:
    print(f"[bench_loss {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _rounds_to_run(count: int, rounds: int) -> set[int]:
    """``count`` round indices spread evenly over ``range(rounds)``."""
    return {(i * rounds) // count for i in range(min(count, rounds))}


def time_round_robin(
    steps: dict[str, Callable[[], object]],
    repeats: dict[str, int],
    warmup: dict[str, int],
    *,
    record_errors: bool = False,
) -> dict[str, dict]:
    """Times each step call by call, interleaving the steps round by round.

    Args:
        steps: name -> a function of no arguments that runs one step to completion.
        repeats: name -> how many timed calls (spread evenly over the rounds).
        warmup: name -> untimed calls before timing (at least 1); the first is timed as
            ``first_call_ms`` (it includes tracing).
        record_errors: if a step raises a TF error while warming up, report ``{"error": ...}``
            for it and time the others (otherwise the error propagates).

    Returns:
        name -> ``{"median_ms", "q1_ms", "q3_ms", "min_ms", "cpu_median_ms", "repeats",
        "first_call_ms"}`` (wall-clock, except ``cpu_median_ms``: CPU time of this process, all
        threads, which other processes on a shared machine disturb far less), or
        ``{"error": message}``.
    """
    first_call, errors = {}, {}
    for name, step in steps.items():
        try:
            start = time.perf_counter()
            step()
            first_call[name] = (time.perf_counter() - start) * 1e3
            for _ in range(warmup[name] - 1):
                step()
        except tf.errors.OpError as e:
            if not record_errors:
                raise
            errors[name] = {"error": f"{type(e).__name__}: {e.message.splitlines()[0]}"}
            _progress(f"{name} failed: {errors[name]['error']}")
    names = [name for name in steps if name not in errors]
    if not names:
        return errors
    rounds = max(repeats.values())
    schedule = {name: _rounds_to_run(repeats[name], rounds) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if r in schedule[name]:
                cpu_start, start = time.process_time(), time.perf_counter()
                steps[name]()
                times[name].append((time.perf_counter() - start) * 1e3)
                cpu_times[name].append((time.process_time() - cpu_start) * 1e3)
    return {
        name: errors.get(name) or _summary(times[name], cpu_times[name], first_call[name])
        for name in steps
    }


def _summary(times_ms: list[float], cpu_ms: list[float], first_call_ms: float) -> dict[str, float]:
    if len(times_ms) >= 2:
        q1, _, q3 = statistics.quantiles(times_ms, n=4, method="inclusive")
    else:
        q1 = q3 = times_ms[0]
    return {
        "median_ms": statistics.median(times_ms),
        "q1_ms": q1,
        "q3_ms": q3,
        "min_ms": min(times_ms),
        "cpu_median_ms": statistics.median(cpu_ms),
        "repeats": len(times_ms),
        "first_call_ms": first_call_ms,
    }


# ---------------------------------------------------------------------------------------------
# Loss benchmark


def log_uniform_labels(num_classes: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """``[batch_size, 1]`` int64 ids with ``P(k) = log((k+2)/(k+1)) / log(N+1)``."""
    u = rng.random(batch_size)
    ids = np.floor(np.exp(u * np.log(num_classes + 1.0))).astype(np.int64) - 1
    return np.clip(ids, 0, num_classes - 1)[:, np.newaxis]


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


def _loss_fns(
    weights: tf.Variable, biases: tf.Variable, num_classes: int, num_sampled: int, mode: str
) -> dict[str, LossFn]:
    """The two sampled losses, with candidates drawn inside the step as ``mode`` says."""
    sampler = recsampled.LogUniformSampler(num_classes)

    def values(labels: tf.Tensor) -> Sequence[tf.Tensor] | None:
        if mode == "tf_op":
            return tf.random.log_uniform_candidate_sampler(
                labels, 1, num_sampled, unique=True, range_max=num_classes
            )
        if mode == "LogUniformSampler":
            return sampler.sample(labels, num_sampled, unique=True)
        return None

    def loss_of(op: Callable[..., tf.Tensor]) -> LossFn:
        def loss(labels: tf.Tensor, inputs: tf.Tensor) -> tf.Tensor:
            return op(
                weights,
                biases,
                labels,
                inputs,
                num_sampled=num_sampled,
                num_classes=num_classes,
                sampled_values=values(labels),
                remove_accidental_hits=True,
            )

        return loss

    return {
        "tf": loss_of(tf.nn.sampled_softmax_loss),
        "ours": loss_of(recsampled.sampled_softmax_loss),
    }


def _gradient_types(step: Callable, labels: tf.Tensor, inputs: tf.Tensor) -> list[str]:
    """``"IndexedSlices"`` or ``"Tensor"`` for each gradient, read from the traced function."""
    _, grads = step.get_concrete_function(labels, inputs).structured_outputs
    return ["IndexedSlices" if isinstance(g, tf.IndexedSlices) else "Tensor" for g in grads]


def _available_memory_bytes() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# Peak memory of a full-softmax step, in [batch_size, N] float32 matrices (measured at N = 10^5:
# full_softmax_loss keeps about 4.6 alive at once, TF's fused cross-entropy about 1), and the
# memory to leave to the rest of the machine.
FULL_SOFTMAX_MATRICES = {"full": 4.6, "full_tf": 1.5}
MEMORY_MARGIN_BYTES = 1 << 30


def _full_softmax_fns(
    weights: tf.Variable, biases: tf.Variable, num_classes: int
) -> dict[str, LossFn]:
    """``recsampled.full_softmax_loss`` and, as a reference, TF's fused cross-entropy."""

    def full(labels: tf.Tensor, inputs: tf.Tensor) -> tf.Tensor:
        return recsampled.full_softmax_loss(weights, biases, labels, inputs, num_classes)

    def full_tf(labels: tf.Tensor, inputs: tf.Tensor) -> tf.Tensor:
        logits = tf.matmul(inputs, weights, transpose_b=True) + biases
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels[:, 0], logits)

    return {"full": full, "full_tf": full_tf}


def bench_loss_size(num_classes: int, config: LossBenchConfig) -> list[dict]:
    """Times every variant at one N: the full softmax and the sampled losses at every S.

    A full-softmax variant that would not fit in the available memory is skipped (and reported
    as such) rather than risking the out-of-memory killer on a shared machine.

    Returns:
        One result dict per (S, sampled-values mode).
    """
    rng = np.random.default_rng(config.seed + num_classes)
    dim, batch = config.embedding_dim, config.batch_size
    weights = tf.Variable(rng.normal(0, 0.05, (num_classes, dim)).astype(np.float32), name="w")
    biases = tf.Variable(np.zeros(num_classes, np.float32), name="b")
    labels = tf.constant(log_uniform_labels(num_classes, batch, rng))
    inputs = tf.constant(rng.normal(0, 1, (batch, dim)).astype(np.float32))

    steps, skipped = {}, {}
    available = _available_memory_bytes()
    for name, fn in _full_softmax_fns(weights, biases, num_classes).items():
        need = FULL_SOFTMAX_MATRICES[name] * batch * num_classes * 4
        if available is not None and need + MEMORY_MARGIN_BYTES > available:
            skipped[name] = {
                "skipped": f"needs about {need / 2**30:.1f} GiB, {available / 2**30:.1f} available"
            }
            _progress(f"N={num_classes:,}: skipping {name}: {skipped[name]['skipped']}")
        else:
            steps[name] = _gradient_step(fn, weights, biases)
    for s in config.num_sampled:
        for mode in SAMPLED_VALUES_MODES:
            for variant, fn in _loss_fns(weights, biases, num_classes, s, mode).items():
                steps[f"{variant}|{s}|{mode}"] = _gradient_step(fn, weights, biases)
    full_names = [name for name in ("full", "full_tf") if name in steps]
    repeats = {
        name: config.full_repeats if name in full_names else config.repeats for name in steps
    }
    warmup = {name: 1 if name in full_names else config.warmup for name in steps}
    timings = time_round_robin(
        {name: functools.partial(step, labels, inputs) for name, step in steps.items()},
        repeats,
        warmup,
    )
    timings.update(skipped)
    grad_types = {name: _gradient_types(step, labels, inputs) for name, step in steps.items()}

    full_ms = timings["full"].get("median_ms")
    full_tf_ms = timings["full_tf"].get("median_ms")
    results = []
    for s in config.num_sampled:
        for mode in SAMPLED_VALUES_MODES:
            tf_t, ours_t = timings[f"tf|{s}|{mode}"], timings[f"ours|{s}|{mode}"]
            tf_ms, ours_ms = tf_t["median_ms"], ours_t["median_ms"]
            results.append(
                {
                    "num_classes": num_classes,
                    "num_sampled": s,
                    "batch_size": batch,
                    "embedding_dim": dim,
                    "sampled_values": mode,
                    "full_ms": full_ms,
                    "full_tf_ms": full_tf_ms,
                    "tf_ms": tf_ms,
                    "ours_ms": ours_ms,
                    "ratio_ours_tf": ours_ms / tf_ms,
                    "ratio_ours_tf_cpu": ours_t["cpu_median_ms"] / tf_t["cpu_median_ms"],
                    "speedup_tf_over_full": _ratio(full_ms, tf_ms),
                    "speedup_ours_over_full": _ratio(full_ms, ours_ms),
                    "speedup_ours_over_full_tf": _ratio(full_tf_ms, ours_ms),
                    "within_ratio_target": ours_ms / tf_ms <= RATIO_TARGET,
                    "timings": {
                        "full": timings["full"],
                        "full_tf": timings["full_tf"],
                        "tf": tf_t,
                        "ours": ours_t,
                    },
                    "gradient_types": {
                        name: grad_types[key]
                        for name, key in (
                            ("full", "full"),
                            ("full_tf", "full_tf"),
                            ("tf", f"tf|{s}|{mode}"),
                            ("ours", f"ours|{s}|{mode}"),
                        )
                        if key in grad_types
                    },
                }
            )
    return results


def _ratio(numerator: float | None, denominator: float) -> float | None:
    return None if numerator is None else numerator / denominator


def evaluate_targets(points: list[dict]) -> dict:
    """Whether ours is within ``RATIO_TARGET`` of TF everywhere, and the speed-up target."""
    worst = max(points, key=lambda p: p["ratio_ours_tf"]) if points else None
    ratio = {
        "description": f"ours / tf.nn.sampled_softmax_loss <= {RATIO_TARGET} at every point",
        "threshold": RATIO_TARGET,
        "met": all(p["within_ratio_target"] for p in points) if points else None,
        "worst_ratio": worst["ratio_ours_tf"] if worst else None,
        "worst_point": _point_key(worst) if worst else None,
        "met_by_cpu_time": (
            all(p["ratio_ours_tf_cpu"] <= RATIO_TARGET for p in points) if points else None
        ),
        "worst_ratio_cpu": max((p["ratio_ours_tf_cpu"] for p in points), default=None),
        "by_sampled_values": {
            mode: {
                "met": all(p["within_ratio_target"] for p in group),
                "worst_ratio": max(p["ratio_ours_tf"] for p in group),
                "worst_ratio_cpu": max(p["ratio_ours_tf_cpu"] for p in group),
            }
            for mode in SAMPLED_VALUES_MODES
            if (group := [p for p in points if p["sampled_values"] == mode])
        },
    }
    n, s = SPEEDUP_POINT
    at = [
        p
        for p in points
        if (p["num_classes"], p["num_sampled"]) == (n, s) and p["full_ms"] is not None
    ]

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


def _point_key(point: dict) -> dict:
    keys = ("num_classes", "num_sampled", "sampled_values")
    return {k: point[k] for k in keys}


# ---------------------------------------------------------------------------------------------
# Sampler benchmark


def zipf_counts(num_classes: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Integer counts ``max(1, round(1e9 (k + 1)^-exponent))`` in a random id order."""
    counts = np.maximum(1.0, np.round(1e9 * np.arange(1, num_classes + 1) ** -exponent))
    return rng.permutation(counts)


def _ours_sampler_call(
    sampler: recsampled.UnigramSampler, num_sampled: int, unique: bool
) -> Callable[[tf.Tensor], recsampled.SampledValues]:
    def call(labels: tf.Tensor) -> recsampled.SampledValues:
        return sampler.sample(labels, num_sampled, unique=unique)

    return call


def _tf_sampler_call(
    unigrams: list[float], num_sampled: int, unique: bool
) -> Callable[[tf.Tensor], tuple]:
    # The counts are closed over, not passed: a list argument of a tf.function would be hashed
    # into its cache key on every call.
    def call(labels: tf.Tensor) -> tuple:
        return tf.random.fixed_unigram_candidate_sampler(
            labels,
            num_true=1,
            num_sampled=num_sampled,
            unique=unique,
            range_max=len(unigrams),
            unigrams=unigrams,
            distortion=1.0,
        )

    return call


def bench_sampler_size(num_classes: int, config: LossBenchConfig, with_tf: bool) -> dict:
    """Construction and per-call time of ``UnigramSampler`` (and TF's op if ``with_tf``)."""
    rng = np.random.default_rng(config.seed + num_classes)
    counts = zipf_counts(num_classes, config.zipf_exponent, rng)
    construct_ms = []
    for _ in range(config.construct_repeats):
        start = time.perf_counter()
        sampler = recsampled.UnigramSampler(counts, distortion=1.0)
        construct_ms.append((time.perf_counter() - start) * 1e3)
    ids = rng.choice(num_classes, size=config.batch_size, p=counts / counts.sum())
    labels = tf.constant(ids[:, np.newaxis].astype(np.int64))
    s = config.sampler_num_sampled

    unigrams = counts.tolist() if with_tf else None
    steps: dict[str, Callable[[], object]] = {}
    for unique in (True, False):
        ours = _ours_sampler_call(sampler, s, unique)
        steps[f"ours|eager|{unique}"] = functools.partial(ours, labels)
        steps[f"ours|function|{unique}"] = functools.partial(
            tf.function(ours, autograph=False), labels
        )
        if unigrams is not None:
            theirs = tf.function(_tf_sampler_call(unigrams, s, unique), autograph=False)
            steps[f"tf|function|{unique}"] = functools.partial(theirs, labels)
    timings = time_round_robin(
        steps,
        {name: config.sampler_repeats for name in steps},
        {name: config.warmup for name in steps},
        record_errors=True,
    )
    result = {
        "num_classes": num_classes,
        "num_sampled": s,
        "zipf_exponent": config.zipf_exponent,
        "distortion": 1.0,
        "construct_ms": statistics.median(construct_ms),
        "variants": {},
    }
    for name, timing in timings.items():
        library, mode, unique = name.split("|")
        result["variants"][name] = {
            "library": library,
            "mode": mode,
            "unique": unique == "True",
            **timing,
        }
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


# ---------------------------------------------------------------------------------------------
# Report


def machine_info() -> dict:
    """CPU count, platform and library versions of this run."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = None
    cpu_model = None
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": cpu_model or platform.processor() or None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "recsampled": recsampled.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def _fmt(value: float | None) -> str:
    if value is None:
        return "skipped"
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def loss_table(points: list[dict]) -> str:
    """Markdown table of the loss benchmark, one row per (N, S, sampled values)."""
    lines = [
        "| N | S | `sampled_values` | full softmax (ms) | TF fused full (ms) "
        "| `tf.nn` sampled (ms) | ours (ms) | ours / TF | ours / TF (CPU) | TF speed-up "
        "| ours speed-up |",
        "|---:|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p['num_classes']:,} | {p['num_sampled']} | {p['sampled_values']} "
            f"| {_fmt(p['full_ms'])} | {_fmt(p['full_tf_ms'])} | {_fmt(p['tf_ms'])} "
            f"| {_fmt(p['ours_ms'])} | {p['ratio_ours_tf']:.2f} | {p['ratio_ours_tf_cpu']:.2f} "
            f"| {_times(p['speedup_tf_over_full'])} | {_times(p['speedup_ours_over_full'])} |"
        )
    return "\n".join(lines)


def _times(speedup: float | None) -> str:
    return "—" if speedup is None else f"{speedup:,.0f}x"


def sampler_table(points: list[dict]) -> str:
    """Markdown table of the sampler benchmark, one row per (N, library, mode, unique)."""
    lines = [
        "| N | sampler | mode | unique | build (ms) | first call (ms) | per call (ms) "
        "| peak RSS (MB) |",
        "|---:|:---|:---|:---|---:|---:|---:|---:|",
    ]
    for p in points:
        for v in p["variants"].values():
            name = "`UnigramSampler`" if v["library"] == "ours" else "TF `fixed_unigram`"
            build = _fmt(p["construct_ms"]) if v["library"] == "ours" else "in first call"
            if "error" in v:
                first, per_call = "error", v["error"].split(":")[0]
            else:
                first, per_call = _fmt(v["first_call_ms"]), _fmt(v["median_ms"])
            lines.append(
                f"| {p['num_classes']:,} | {name} | {v['mode']} | {v['unique']} | {build} "
                f"| {first} | {per_call} | {p['peak_rss_mb']:,.0f} |"
            )
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    """The Markdown summary written beside the JSON."""
    m, s = report["machine"], report["settings"]
    targets = report["targets"]
    ratio, speedup = targets["ratio_within_1_1x"], targets["speedup_500x_at_1e6_s1024"]
    load = report["load_average"]
    return "\n".join(
        [
            "## Loss step: forward + backward (median ms)",
            "",
            f"B={s['batch_size']}, D={s['embedding_dim']}; gradients w.r.t. weights, biases and "
            "inputs, not applied; log-uniform candidates, `unique=True`, drawn inside the step. "
            f"{m['cpu_count']} CPUs ({m['cpu_model']}), TensorFlow {m['tensorflow']}, "
            f"load average {load['start'][0]:.2f} at start, {load['end'][0]:.2f} at end.",
            "",
            loss_table(report["loss"]["points"]),
            "",
            "Full softmax: `recsampled.full_softmax_loss`; TF fused full: "
            "`tf.nn.sparse_softmax_cross_entropy_with_logits` on the same `[B, N]` logits, for "
            "reference. Speed-ups: full softmax / sampled loss. `sampled_values`: `tf_op`, the "
            "step draws with `tf.random.log_uniform_candidate_sampler` and passes the triple to "
            "both losses; `LogUniformSampler`, the same with `recsampled.LogUniformSampler`; "
            "`None`, each loss draws with its own default sampler. ours / TF (CPU): the same "
            "ratio on the median CPU time of the process (all threads), which other processes "
            "on a shared machine disturb far less than wall-clock time.",
            "",
            f"- {ratio['description']}: **{_met(ratio['met'])}**"
            + (
                f" (worst {ratio['worst_ratio']:.2f} at {ratio['worst_point']}; by CPU time "
                f"**{_met(ratio['met_by_cpu_time'])}**, worst {ratio['worst_ratio_cpu']:.2f})."
                if ratio["worst_ratio"] is not None
                else "."
            ),
            f"- {speedup['description']}: **{_met(speedup['met'])}**"
            + (
                f" ({speedup['speedup']:,.0f}x; TF's op {speedup['tf_speedup']:,.0f}x)."
                if speedup["speedup"] is not None
                else "."
            ),
            "",
            f"## Unigram samplers (S={s['sampler_num_sampled']}, Zipf-like counts, "
            f"exponent {s['zipf_exponent']})",
            "",
            sampler_table(report["samplers"]["points"]),
            "",
        ]
    )


def _met(met: bool | None) -> str:
    return "not evaluated" if met is None else ("met" if met else "NOT met")


# ---------------------------------------------------------------------------------------------
# Pipeline


@contextlib.contextmanager
def _quiet_retracing_warnings() -> Iterator[None]:
    """Hides TF's "triggered tf.function retracing" warning: we trace one function per step."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)


def run_benchmark(
    config: LossBenchConfig, checkpoint: Callable[[dict], None] | None = None
) -> dict:
    """Runs the sampler and loss benchmarks and returns the report (see ``main``).

    Args:
        config: sizes, repeats and seeds.
        checkpoint: called with the report so far after each N, so that a long run that is
            killed (the full softmax at N=10^6 needs ~20 GB) keeps what it measured.
    """
    started = time.perf_counter()
    load_start = os.getloadavg()
    tf.random.set_seed(config.seed)
    sampler_points: list[dict] = []
    loss_points: list[dict] = []

    def report(complete: bool = False) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "benchmark": "pipelines.bench_loss",
            "complete": complete,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
            "settings": dataclasses.asdict(config),
            "loss": {
                "step": "mean loss, gradients w.r.t. weights, biases and inputs (not applied)",
                "sampler": "log-uniform, unique=True, drawn inside the step",
                "points": loss_points,
            },
            "targets": evaluate_targets(loss_points),
            "samplers": {"points": sampler_points},
            "peak_rss_mb": _peak_rss_mb(),
            "wall_s": time.perf_counter() - started,
        }

    def done_one() -> None:
        gc.collect()
        if checkpoint is not None:
            checkpoint(report())

    for n in config.sampler_sizes:
        _progress(f"UnigramSampler N={n:,} (TF's op too: {n in config.tf_sampler_sizes})")
        sampler_points.append(bench_sampler_size(n, config, with_tf=n in config.tf_sampler_sizes))
        done_one()
    for n in sorted(set(config.tf_sampler_sizes) - set(config.sampler_sizes)):
        _progress(f"UnigramSampler N={n:,} with TF's op")
        sampler_points.append(bench_sampler_size(n, config, with_tf=True))
        done_one()

    for n in config.sizes:
        _progress(f"loss N={n:,}, S in {list(config.num_sampled)}: tracing and timing")
        with _quiet_retracing_warnings():
            points = bench_loss_size(n, config)
        for p in points:
            _progress(
                f"loss N={n:,} S={p['num_sampled']} sampled_values={p['sampled_values']}: "
                f"full {_fmt(p['full_ms'])} ms, tf {p['tf_ms']:.2f} ms, "
                f"ours {p['ours_ms']:.2f} ms (ours/tf {p['ratio_ours_tf']:.2f})"
            )
        loss_points.extend(points)
        done_one()
    return report(complete=True)


def _int_list(text: str) -> tuple[int, ...]:
    """Parses ``"1e4,100000"`` into ``(10000, 100000)``."""
    try:
        values = tuple(int(float(v)) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None = None) -> tuple[LossBenchConfig, Path]:
    """Parses the command line into a config and the output path."""
    d = LossBenchConfig()
    parser = argparse.ArgumentParser(prog="python -m pipelines.bench_loss", description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/loss.json"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    parser.add_argument("--sizes", type=_int_list, help=f"N values (default {d.sizes})")
    parser.add_argument("--num-sampled", type=_int_list, help=f"S values ({d.num_sampled})")
    parser.add_argument("--batch-size", type=int, help=f"B ({d.batch_size})")
    parser.add_argument("--dim", type=int, help=f"D ({d.embedding_dim})")
    parser.add_argument("--repeats", type=int, help=f"timed sampled steps per N ({d.repeats})")
    parser.add_argument("--full-repeats", type=int, help=f"timed full steps ({d.full_repeats})")
    parser.add_argument("--warmup", type=int, help=f"untimed calls per step ({d.warmup})")
    parser.add_argument("--sampler-sizes", type=_int_list, help=f"N ({d.sampler_sizes})")
    parser.add_argument(
        "--tf-sampler-sizes",
        type=_int_list,
        help=f"N for TF's fixed_unigram op ({d.tf_sampler_sizes}; 1e7 takes minutes to trace)",
    )
    parser.add_argument("--no-tf-sampler", action="store_true", help="skip TF's unigram op")
    parser.add_argument("--skip-loss", action="store_true", help="run the sampler part only")
    parser.add_argument("--skip-samplers", action="store_true", help="run the loss part only")
    parser.add_argument(
        "--sampler-num-sampled", type=int, help=f"S of the sampler part ({d.sampler_num_sampled})"
    )
    parser.add_argument("--sampler-repeats", type=int, help=f"({d.sampler_repeats})")
    parser.add_argument("--seed", type=int, help=f"({d.seed})")
    args = parser.parse_args(argv)

    config = QUICK if args.quick else d
    overrides = {
        "sizes": () if args.skip_loss else args.sizes,
        "num_sampled": args.num_sampled,
        "batch_size": args.batch_size,
        "embedding_dim": args.dim,
        "repeats": args.repeats,
        "full_repeats": args.full_repeats,
        "warmup": args.warmup,
        "sampler_sizes": () if args.skip_samplers else args.sampler_sizes,
        "tf_sampler_sizes": (
            () if args.no_tf_sampler or args.skip_samplers else args.tf_sampler_sizes
        ),
        "sampler_num_sampled": args.sampler_num_sampled,
        "sampler_repeats": args.sampler_repeats,
        "seed": args.seed,
    }
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    flags = {"batch_size": "--batch-size", "embedding_dim": "--dim", "repeats": "--repeats"}
    flags.update({"full_repeats": "--full-repeats", "warmup": "--warmup"})
    flags.update({"sampler_num_sampled": "--sampler-num-sampled"})
    flags.update({"sampler_repeats": "--sampler-repeats"})
    for name, flag in flags.items():
        if getattr(config, name) <= 0:
            parser.error(f"{flag} must be a positive integer")
    return config, args.output


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the benchmark; writes the JSON and the Markdown table beside it; prints the table."""
    config, output = parse_args(argv)
    output.parent.mkdir(parents=True, exist_ok=True)

    def write_json(report: dict) -> None:
        output.write_text(json.dumps(report, indent=2) + "\n")

    report = run_benchmark(config, checkpoint=write_json)
    write_json(report)
    markdown = markdown_report(report)
    output.with_suffix(".md").write_text(markdown)
    print(markdown)
    _progress(f"wrote {output} and {output.with_suffix('.md')} in {report['wall_s']:.0f} s")
    return report


if __name__ == "__main__":
    main()

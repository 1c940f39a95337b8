"""Language model with a ``SampledSoftmax`` output: quality against the full softmax, and speed.

Run ``python -m pipelines.lm_example --output benchmarks/lm.json`` (about 30 minutes on 2 CPU
cores).

Model: ``Embedding(V, E) -> LSTM(H, return_sequences=True)`` then ``SampledSoftmax(V, S)`` in a
``SampledSoftmaxModel`` (``compile``/``fit``), or ``Dense(V)`` + sparse cross-entropy as the
reference. Quality: both train on the same batches of a known Markov chain over V ids: C hidden
clusters, cluster transitions ``T`` with Dirichlet rows, a Zipf law within a cluster, ids numbered
by decreasing stationary probability; its exact entropy rate
``H = Σ_c π_c [H(T[c, :]) + Σ_c' T[c, c'] H(u | c')]`` is reported beside the held-out cross-entropy
of each model and their ratio (target: sampled within 5% of full). Speed (V = 200,000, S = 1,000,
``Embedding(V, 256)``, ``LSTM(1024)``, 32 x 20 tokens; target >= 20x), per optimizer, timed
round-robin (median wall and CPU seconds): the whole ``train_on_batch``; the output layer alone on
fixed hidden states; the body alone (16-way output), which bounds the whole-step speed-up. Only
optimizers that update just the rows of ``IndexedSlices`` gradients (``adagrad``, ``legacy_sgd``,
``lazy_adam``) keep the step small; ``adam`` is the dense reference.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import recsampled  # noqa: E402, F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from pipelines import harness  # noqa: E402
from recsampled.layers import LazyAdam, SampledSoftmax, SampledSoftmaxModel  # noqa: E402

LOG = logging.getLogger("pipelines.lm_example")

SCHEMA_VERSION = 3
QUALITY_TARGET = 1.05  # held-out cross-entropy, sampled / full
SPEEDUP_TARGET = 20.0  # step time, full / sampled


@dataclasses.dataclass(frozen=True)
class MarkovChain:
    """A chain whose next id depends on the current id's cluster: ``[C, C]`` transitions,
    ``[V]`` cluster, within-cluster and stationary laws (the latter decreasing with the id), the
    entropy rate (nats per step, the best cross-entropy) and the entropy of ``stationary``."""

    transitions: np.ndarray
    cluster_of: np.ndarray
    within: np.ndarray
    stationary: np.ndarray
    entropy_rate: float
    unigram_entropy: float


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=axis)


def make_markov_chain(vocab_size: int, num_clusters: int, *, concentration: float = 0.1,
                      seed: int = 0) -> MarkovChain:  # fmt: skip
    """Builds the clustered chain of the module docstring, ids sorted by frequency."""
    rng = np.random.default_rng(seed)
    transitions = rng.dirichlet(np.full(num_clusters, concentration), size=num_clusters)
    cluster_of = rng.permutation(vocab_size) % num_clusters
    weights = 1.0 / rng.permutation(np.arange(1, vocab_size + 1))  # Zipf law over all ids
    cluster_mass = np.bincount(cluster_of, weights=weights, minlength=num_clusters)
    within = weights / cluster_mass[cluster_of]
    # Stationary law of the clusters: the left eigenvector of T for eigenvalue 1.
    values, vectors = np.linalg.eig(transitions.T)
    cluster_stationary = np.abs(np.real(vectors[:, np.argmin(np.abs(values - 1.0))]))
    cluster_stationary /= cluster_stationary.sum()
    stationary = cluster_stationary[cluster_of] * within
    # Renumber ids by decreasing stationary probability.
    order = np.argsort(-stationary, kind="stable")
    cluster_of, within, stationary = cluster_of[order], within[order], stationary[order]
    within_entropy = np.array([_entropy(within[cluster_of == c]) for c in range(num_clusters)])
    rate = float(cluster_stationary @ (_entropy(transitions) + transitions @ within_entropy))
    return MarkovChain(
        transitions, cluster_of, within, stationary, rate, float(_entropy(stationary))
    )


def sample_sequences(chain: MarkovChain, num_sequences: int, length: int, seed: int) -> np.ndarray:
    """``[num_sequences, length + 1]`` int32 ids, each sequence started from the stationary law."""
    rng = np.random.default_rng(seed)
    num_clusters = chain.transitions.shape[0]
    # Ids grouped by cluster. Within-cluster probabilities sum to 1 per cluster, so their running
    # sum over this order is c + (the cumulative law within cluster c): searchsorted(c + u)
    # draws from cluster c (clipped to its members against rounding).
    members = np.argsort(chain.cluster_of, kind="stable")
    grouped = chain.cluster_of[members]
    shifted_cdf = np.cumsum(chain.within[members])
    first = np.searchsorted(grouped, np.arange(num_clusters), side="left")
    last = np.searchsorted(grouped, np.arange(num_clusters), side="right") - 1
    transition_cdf = np.cumsum(chain.transitions, axis=1)

    def draw_ids(clusters: np.ndarray) -> np.ndarray:
        position = np.searchsorted(shifted_cdf, clusters + rng.random(clusters.size), "right")
        return members[np.clip(position, first[clusters], last[clusters])]

    sequences = np.empty([num_sequences, length + 1], np.int32)
    sequences[:, 0] = rng.choice(chain.cluster_of.size, size=num_sequences, p=chain.stationary)
    for t in range(length):
        clusters = chain.cluster_of[sequences[:, t]]
        u = rng.random(num_sequences)[:, None]
        next_clusters = np.minimum((transition_cdf[clusters] < u).sum(axis=1), num_clusters - 1)
        sequences[:, t + 1] = draw_ids(next_clusters)
    return sequences


def build_language_model(vocab_size: int, embedding_dim: int, units: int, *,
                         num_sampled: int | None, learning_rate: float | None = None,
                         optimizer: str = "adam", length: int | None = None,
                         output_classes: int | None = None) -> tf.keras.Model:  # fmt: skip
    """``Embedding -> LSTM -> SampledSoftmax`` (or, ``num_sampled=None``, ``Dense(output_classes
    or vocab_size)`` + cross-entropy), compiled with ``OPTIMIZERS[optimizer]``."""
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input([length], dtype="int32")
    x = tf.keras.layers.Embedding(vocab_size, embedding_dim)(inputs)
    x = tf.keras.layers.LSTM(units, return_sequences=True)(x)
    optimizer_ = OPTIMIZERS[optimizer][0](*([] if learning_rate is None else [learning_rate]))
    if num_sampled is None:
        model = tf.keras.Model(inputs, tf.keras.layers.Dense(output_classes or vocab_size)(x))
        loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer=optimizer_, loss=loss)
    else:
        model = SampledSoftmaxModel(inputs, SampledSoftmax(vocab_size, num_sampled)(x))
        model.compile(optimizer=optimizer_)
    return model


def train_and_evaluate(model: tf.keras.Model, train: np.ndarray, test: np.ndarray,
                       batch_size: int) -> dict:  # fmt: skip
    """One pass over ``train`` in order, then the held-out full cross-entropy on ``test``."""
    timer = harness.fit_timer("batch")
    start = time.perf_counter()
    history = model.fit(
        train[:, :-1], train[:, 1:], batch_size=batch_size, shuffle=False, verbose=0,
        callbacks=[timer],
    )  # fmt: skip
    seconds = time.perf_counter() - start
    result = model.evaluate(test[:, :-1], test[:, 1:], batch_size=256, verbose=0, return_dict=True)
    cross_entropy = float(result["loss"])
    losses = history.history.get("sampled_loss", history.history.get("loss"))  # sampled: own key
    step = statistics.median(timer.seconds[1:] or timer.seconds)
    return {"heldout_cross_entropy": cross_entropy, "heldout_perplexity": np.exp(cross_entropy),
            "final_train_loss": float(losses[-1]), "train_seconds": seconds,
            "median_step_seconds": step}  # fmt: skip


def compare_quality(train: np.ndarray, test: np.ndarray, config: LMConfig) -> dict:
    """Sampled vs full softmax, same model, steps, batches and optimizer."""
    results = {}
    for name, sampled in (("sampled", config.num_sampled), ("full", None)):
        sizes, rate = (config.vocab_size, config.embedding_dim, config.units), config.learning_rate
        model = build_language_model(*sizes, num_sampled=sampled, learning_rate=rate)
        results[name] = train_and_evaluate(model, train, test, config.batch_size)
        LOG.info("quality %s: %s", name, results[name])
    ratio = results["sampled"]["heldout_cross_entropy"] / results["full"]["heldout_cross_entropy"]
    return results | {"ratio": ratio, "target": QUALITY_TARGET, "passed": ratio <= QUALITY_TARGET}


OPTIMIZERS: dict[str, tuple[Callable[[], tf.keras.optimizers.Optimizer], bool]] = {
    # name: (factory, updates only the rows of a sparse gradient)
    "adagrad": (tf.keras.optimizers.Adagrad, True),
    "legacy_sgd": (tf.keras.optimizers.legacy.SGD, True),
    "lazy_adam": (LazyAdam, True),
    "adam": (tf.keras.optimizers.Adam, False),
    "sgd": (tf.keras.optimizers.SGD, False),  # tf-keras 2.21 keeps momentum slots at momentum=0
}

BODY_CLASSES = 16  # the body-only model's tiny output


def time_alternately(steps: dict[str, Callable[[], object]], num_steps: int) -> dict:
    """Wall and CPU seconds of each step, called round-robin; 1-minute load before and after."""
    load_before = harness.load_average()[:1]
    timings = harness.time_round_robin(steps, repeats=num_steps)
    results: dict = {}
    for name in steps:
        wall, cpu = timings.wall_ms[name], timings.cpu_ms[name]
        results[name] = {
            "step_seconds": [t / 1e3 for t in wall], "cpu_seconds": [t / 1e3 for t in cpu],
            "warmup_seconds": timings.first_call_ms[name] / 1e3,
            "median_step_seconds": statistics.median(wall) / 1e3,
            "median_cpu_seconds": statistics.median(cpu) / 1e3,
        }  # fmt: skip
    return results | {"load_average": load_before + harness.load_average()[:1]}


def _output_layer_steps(vocab_size: int, num_sampled: int, units: int, optimizer: str,
                        y: np.ndarray) -> dict[str, Callable[[], object]]:  # fmt: skip
    """Forward + backward + update of the output layers alone, on fixed hidden states."""
    tf.keras.utils.set_random_seed(0)
    hidden = tf.random.normal([y.size, units])
    targets = tf.constant(y.reshape(-1), tf.int64)
    sampled, full = SampledSoftmax(vocab_size, num_sampled), tf.keras.layers.Dense(vocab_size)
    sampled.build([None, units]), full.build([None, units])

    def make_step(layer: tf.keras.layers.Layer, loss_fn: Callable[[], tf.Tensor]) -> Callable:
        optimizer_ = OPTIMIZERS[optimizer][0]()

        @tf.function
        def step() -> tf.Tensor:
            with tf.GradientTape() as tape:
                tape.watch(hidden)
                loss = loss_fn()
            variables = layer.trainable_variables
            *grads, _ = tape.gradient(loss, [*variables, hidden])  # dL/dh too, as in the model
            optimizer_.apply_gradients(zip(grads, variables, strict=True))
            return loss

        return step

    xent = tf.nn.sparse_softmax_cross_entropy_with_logits
    return {
        "sampled": make_step(sampled, lambda: sampled.sampled_loss(targets, hidden)),
        "full": make_step(full, lambda: tf.reduce_mean(xent(targets, full(hidden)))),
    }


def time_speed(config: LMConfig, optimizer: str) -> dict:
    """Step time of the ``whole`` models, the ``body`` and the ``output_layer`` alone, for one
    optimizer."""
    vocab_size, num_sampled = config.speed_vocab_size, config.speed_num_sampled
    shape = (config.speed_batch_size, config.speed_length + 1)
    ids = harness.log_uniform_ids(vocab_size, shape, np.random.default_rng(0))
    x, y = ids[:, :-1], ids[:, 1:]
    sizes = (vocab_size, config.speed_embedding_dim, config.speed_units)
    build = functools.partial(build_language_model, *sizes, optimizer=optimizer,
                              length=config.speed_length)  # fmt: skip
    results: dict = {"sparse_updates": OPTIMIZERS[optimizer][1]}

    def train_steps(targets: np.ndarray, **options: dict) -> dict:
        return {
            k: functools.partial(build(**o).train_on_batch, x, targets) for k, o in options.items()
        }

    full, body = {"num_sampled": None}, {"num_sampled": None, "output_classes": BODY_CLASSES}
    head = (vocab_size, num_sampled, config.speed_units, optimizer, y)
    parts: dict[str, Callable[[], dict]] = {
        "whole": lambda: train_steps(y, sampled={"num_sampled": num_sampled}, full=full),
        "body": lambda: train_steps(y % BODY_CLASSES, default=body),
        "output_layer": lambda: _output_layer_steps(*head),
    }
    for part, make_steps in parts.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the dense-optimizer warning, on purpose
            step_functions = make_steps()
            results[part] = time_alternately(step_functions, config.speed_steps)
        del step_functions
        tf.keras.backend.clear_session()
        gc.collect()
        LOG.info("speed %s %s: load %s", optimizer, part, results[part]["load_average"])
    return judge_speed(results)


def judge_speed(speed: dict) -> dict:
    """Adds the speed-ups and verdicts (met only if both wall and CPU speed-ups reach them)."""
    whole, head, body = speed["whole"], speed["output_layer"], speed["body"]["default"]

    def ratios(slow: dict, fast: dict) -> tuple[float, float]:
        wall = slow["median_step_seconds"] / fast["median_step_seconds"]
        return wall, slow["median_cpu_seconds"] / max(fast["median_cpu_seconds"], 1e-9)

    out = dict(speed)
    # No output layer can make a step cheaper than the body alone: full / body bounds it.
    pairs = {"speedup": (whole["full"], whole["sampled"]),
             "output_layer_speedup": (head["full"], head["sampled"]),
             "speedup_bound_from_body": (whole["full"], body)}  # fmt: skip
    for key, (slow, fast) in pairs.items():
        out[key], out[f"{key}_cpu"] = ratios(slow, fast)
    passed = {name: min(out[name], out[f"{name}_cpu"]) >= SPEEDUP_TARGET
              for name in ("speedup", "output_layer_speedup")}  # fmt: skip
    return out | {"target": SPEEDUP_TARGET, "passed": passed["speedup"],
                  "output_layer_passed": passed["output_layer_speedup"]}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Settings of one run (the defaults are those of the published tables)."""

    vocab_size: int = 50_000  #: V of the quality run.
    num_clusters: int = 64  #: clusters of the Markov chain.
    num_sampled: int = 1_000  #: S of the quality run.
    embedding_dim: int = 64  #: Embedding size of the quality run.
    units: int = 64  #: LSTM units of the quality run.
    length: int = 20  #: tokens per sequence of the quality run.
    batch_size: int = 32  #: sequences per step of the quality run.
    learning_rate: float = 1e-2  #: Adam's, in the quality run.
    quality_steps: int = 300  #: training steps of the quality run (0 skips it).
    test_sequences: int = 2_000  #: held-out sequences.
    seed: int = 0  #: seeds the chain and its sequences.
    #: optimizers of the step-time runs.
    speed_optimizers: tuple[str, ...] = ("adagrad", "legacy_sgd", "lazy_adam", "adam")
    speed_vocab_size: int = 200_000  #: V of the step-time runs.
    speed_num_sampled: int = 1_000  #: S of the step-time runs.
    speed_embedding_dim: int = 256  #: Embedding size of the step-time runs.
    speed_units: int = 1024  #: LSTM units of the step-time runs.
    speed_batch_size: int = 32  #: sequences per step of the step-time runs.
    speed_length: int = 20  #: tokens per sequence of the step-time runs.
    speed_steps: int = dataclasses.field(default=5, metadata={"min": 1})  #: timed steps per model.


def _fields(config: LMConfig, prefix: str) -> dict:
    """The model settings of the quality run (``prefix=""``) or the speed runs (``"speed_"``)."""
    names = ("vocab_size", "num_sampled", "embedding_dim", "units", "batch_size")
    extra = ("length", "steps") if prefix else ("learning_rate",)
    return {name: getattr(config, prefix + name) for name in names + extra}


def run(config: LMConfig) -> dict:
    """Runs the quality and speed comparisons that ``config`` asks for; returns the results."""
    bench = harness.Benchmark("pipelines.lm_example", config, schema_version=SCHEMA_VERSION)
    results: dict = {}
    if config.quality_steps > 0:
        chain = make_markov_chain(config.vocab_size, config.num_clusters, seed=config.seed)
        length, num_train = config.length, config.quality_steps * config.batch_size
        train = sample_sequences(chain, num_train, length, seed=config.seed + 1)
        test = sample_sequences(chain, config.test_sequences, length, seed=config.seed + 2)
        data = {"source": f"Markov chain ({config.num_clusters} clusters, seed {config.seed})",
                "entropy_rate": chain.entropy_rate, "unigram_entropy": chain.unigram_entropy,
                "length": config.length, "train_steps": config.quality_steps,
                "train_tokens": int(train[:, 1:].size),
                "test_tokens": int(test[:, 1:].size)}  # fmt: skip
        quality = compare_quality(train, test, config)
        results["quality"] = {"data": data, "model": _fields(config, "")} | quality
    results["step_time"] = {}
    for optimizer in config.speed_optimizers:
        speed = time_speed(config, optimizer)
        results["step_time"][optimizer] = {"config": _fields(config, "speed_")} | speed
    return bench.report(**results)


def main(argv: Sequence[str] | None = None) -> dict:
    config, args = harness.parse_options(
        LMConfig, argv, prog="python -m pipelines.lm_example", description=__doc__,
        output="benchmarks/lm.json",
    )  # fmt: skip
    if unknown := set(config.speed_optimizers) - set(OPTIMIZERS):
        raise SystemExit(
            f"--speed-optimizers: unknown {sorted(unknown)}; expected {sorted(OPTIMIZERS)}"
        )
    results = run(config)
    harness.write_json(args.output, results)
    return results


if __name__ == "__main__":
    main()

"""Language model with a ``SampledSoftmax`` output: quality against the full softmax, and speed.

Run ``python -m pipelines.lm_example --output benchmarks/lm.json`` (about 30 minutes on 2 CPU
cores); it writes the JSON and a Markdown table beside it (``benchmarks/lm.md``).

**Model** (the classic Keras question): ``Embedding(V, E)``, ``LSTM(H, return_sequences=True)``,
then an output over ``V``: ``recsampled.layers.SampledSoftmax(V, S)`` in a
``SampledSoftmaxModel`` trained with ``compile(optimizer=...)`` and ``fit(x, y)``, or, as the
reference, ``Dense(V)`` with ``SparseCategoricalCrossentropy(from_logits=True)``.

**Quality.** Data: sequences of a known Markov chain over ``V`` ids (or a text file, ``--text``).
The chain has ``C`` hidden clusters: the next id's cluster depends on the current id's cluster
(``T[c, c']``, rows Dirichlet(``concentration``)), and within a cluster ids follow a Zipf law of
exponent 1. Its entropy rate, the lowest cross-entropy any model can reach, is exact::

    H = Σ_c π_c [ H(T[c, :]) + Σ_c' T[c, c'] H(u | c') ]

with ``π`` the stationary distribution of ``T`` and ``H(u | c')`` the entropy of the ids within
cluster ``c'``. Ids are numbered by decreasing stationary probability, the order the default
``LogUniformSampler`` assumes. Both models train for the same steps on the same batches (fresh
sequences each step, Adam); we report the held-out full cross-entropy (nats per token) of each,
their ratio (target: sampled within 5% of full) and the entropy rate. The quality run uses a
smaller model than the speed run (``E = H = 64``, 300 steps of 32 x 20 tokens, by default) so
that the full softmax finishes in minutes on 2 CPU cores; with that little data (192k tokens for
50k ids) both models stay far above the entropy rate, which the report shows.

**Speed.** ``V = 200,000``, ``S = 1,000``, ``Embedding(V, 256)``, ``LSTM(1024)``, batches of 32
sequences of 20 steps (target: the sampled model >= 20x faster than the full softmax). Per
optimizer, three parts, each timed alternately in one process after a warm-up step (median
wall and CPU seconds, load average recorded: the machine may be shared):

- *whole*: ``train_on_batch`` of the sampled and of the full language model;
- *output layer*: ``SampledSoftmax`` vs ``Dense(V)`` + cross-entropy alone on fixed hidden
  states, forward, backward and update: what the sampled softmax replaces;
- *body*: the same ``Embedding -> LSTM`` with a 16-way output, the cost no output layer removes
  (so ``full step / body`` bounds the whole-step speed-up), also with ``LSTM(unroll=True)`` and
  ``implementation=1``, options that keep the model.

Optimizers: the sampled gradients of the output and input tables are ``IndexedSlices``; only an
optimizer that updates just those rows keeps the step small. ``adagrad``
(``tf.keras.optimizers.Adagrad``), ``legacy_sgd`` (``tf.keras.optimizers.legacy.SGD``) and
``lazy_adam`` (``recsampled.layers.LazyAdam``) do; ``adam`` (tf-keras ``Adam``: dense moment
decay) is measured too, as the dense reference. tf-keras 2.21's ``SGD`` is dense as well: it
keeps momentum slots even at ``momentum=0`` and rewrites the whole table every step.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import recsampled  # noqa: E402  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from recsampled.layers import LazyAdam, SampledSoftmax, SampledSoftmaxModel  # noqa: E402

SCHEMA_VERSION = 2
QUALITY_TARGET = 1.05  # held-out cross-entropy, sampled / full
SPEEDUP_TARGET = 20.0  # step time, full / sampled


# -- data ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MarkovChain:
    """A Markov chain over ids whose next-id law depends on the current id's cluster.

    Attributes:
        transitions: ``[C, C]`` cluster transition matrix ``T``.
        cluster_of: ``[V]`` cluster of every id.
        within: ``[V]`` probability of each id within its cluster.
        stationary: ``[V]`` stationary probability of each id (decreasing with the id).
        entropy_rate: nats per step, the best achievable cross-entropy.
        unigram_entropy: nats, the entropy of ``stationary`` (a context-free model's best).
    """

    transitions: np.ndarray
    cluster_of: np.ndarray
    within: np.ndarray
    stationary: np.ndarray
    entropy_rate: float
    unigram_entropy: float

    @property
    def vocab_size(self) -> int:
        return int(self.cluster_of.size)


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=axis)


def make_markov_chain(
    vocab_size: int, num_clusters: int, *, concentration: float = 0.1, seed: int = 0
) -> MarkovChain:
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
    within_entropy = np.array(
        [_entropy(within[cluster_of == c]) for c in range(num_clusters)], dtype=np.float64
    )
    entropy_rate = float(
        cluster_stationary @ (_entropy(transitions) + transitions @ within_entropy)
    )
    return MarkovChain(
        transitions, cluster_of, within, stationary, entropy_rate, float(_entropy(stationary))
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
    sequences[:, 0] = rng.choice(chain.vocab_size, size=num_sequences, p=chain.stationary)
    for t in range(length):
        clusters = chain.cluster_of[sequences[:, t]]
        u = rng.random(num_sequences)[:, None]
        next_clusters = np.minimum((transition_cdf[clusters] < u).sum(axis=1), num_clusters - 1)
        sequences[:, t + 1] = draw_ids(next_clusters)
    return sequences


def read_text(path: str | Path, vocab_size: int, length: int) -> np.ndarray:
    """Whitespace tokens of a text file as ``[n, length + 1]`` ids sorted by frequency.

    The ``vocab_size - 1`` most frequent tokens get ids ``0..vocab_size - 2`` in decreasing
    frequency; every other token is ``<unk>``, id ``vocab_size - 1``.
    """
    tokens = Path(path).read_text(encoding="utf-8").split()
    if len(tokens) < 2 * (length + 1):
        raise ValueError(
            f"`text` must hold at least {2 * (length + 1)} tokens (two sequences of "
            f"length={length} + 1). Received: {path} with {len(tokens)} tokens."
        )
    vocab = {w: i for i, (w, _) in enumerate(Counter(tokens).most_common(vocab_size - 1))}
    ids = np.array([vocab.get(w, vocab_size - 1) for w in tokens], np.int32)
    n = ids.size // (length + 1)
    return ids[: n * (length + 1)].reshape(n, length + 1)


# -- models -------------------------------------------------------------------------------------


def build_language_model(
    vocab_size: int,
    embedding_dim: int,
    units: int,
    *,
    num_sampled: int | None,
    learning_rate: float | None = None,
    optimizer: str = "adam",
    length: int | None = None,
    output_classes: int | None = None,
    lstm_options: dict | None = None,
    seed: int = 0,
) -> tf.keras.Model:
    """``Embedding -> LSTM -> output over vocab_size``, compiled.

    ``num_sampled=None`` gives the full-softmax reference (``Dense`` + sparse cross-entropy)
    over ``output_classes`` (default ``vocab_size``); otherwise the output is a
    ``SampledSoftmax`` with the default log-uniform sampler. ``optimizer`` is a key of
    :data:`OPTIMIZERS` (its default learning rate unless ``learning_rate`` is given);
    ``length`` fixes the sequence length (``LSTM(unroll=True)`` needs it), ``lstm_options`` go
    to the ``LSTM``.
    """
    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input([length], dtype="int32")
    x = tf.keras.layers.Embedding(vocab_size, embedding_dim)(inputs)
    x = tf.keras.layers.LSTM(units, return_sequences=True, **(lstm_options or {}))(x)
    make_optimizer = OPTIMIZERS[optimizer][0]
    optimizer_ = make_optimizer() if learning_rate is None else make_optimizer(learning_rate)
    if num_sampled is None:
        outputs = tf.keras.layers.Dense(output_classes or vocab_size)(x)
        model = tf.keras.Model(inputs, outputs)
        loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer=optimizer_, loss=loss)
    else:
        model = SampledSoftmaxModel(inputs, SampledSoftmax(vocab_size, num_sampled)(x))
        model.compile(optimizer=optimizer_)
    return model


class _StepTimer(tf.keras.callbacks.Callback):
    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.times.append(time.perf_counter() - self._start)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.times: list[float] = []


def train_and_evaluate(
    model: tf.keras.Model, train: np.ndarray, test: np.ndarray, batch_size: int
) -> dict:
    """One pass over ``train`` in order, then the held-out full cross-entropy on ``test``."""
    timer = _StepTimer()
    start = time.perf_counter()
    history = model.fit(
        train[:, :-1], train[:, 1:], batch_size=batch_size, shuffle=False, verbose=0,
        callbacks=[timer],
    )  # fmt: skip
    seconds = time.perf_counter() - start
    result = model.evaluate(test[:, :-1], test[:, 1:], batch_size=256, verbose=0, return_dict=True)
    cross_entropy = float(result["loss"])
    return {
        "heldout_cross_entropy": cross_entropy,
        "heldout_perplexity": float(np.exp(cross_entropy)),
        "final_train_loss": float(history.history["loss"][-1]),
        "train_seconds": seconds,
        "median_step_seconds": statistics.median(timer.times[1:] or timer.times),
    }


def compare_quality(
    train: np.ndarray,
    test: np.ndarray,
    *,
    vocab_size: int,
    num_sampled: int,
    embedding_dim: int,
    units: int,
    batch_size: int,
    learning_rate: float,
) -> dict:
    """Sampled vs full softmax, same model, steps, batches and optimizer."""
    results = {}
    for name, sampled in (("sampled", num_sampled), ("full", None)):
        model = build_language_model(
            vocab_size, embedding_dim, units, num_sampled=sampled, learning_rate=learning_rate
        )
        results[name] = train_and_evaluate(model, train, test, batch_size)
        print(f"quality {name}: {results[name]}", flush=True)
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
"""Optimizers of the step-time runs, and whether their update of a sparse gradient is sparse."""

LSTM_VARIANTS: dict[str, dict] = {
    "default": {},
    "unroll": {"unroll": True},
    "implementation=1": {"implementation": 1},
}
"""LSTM options tried for the body's CPU cost; none changes the model's function."""

BODY_CLASSES = 16  # the body-only model's tiny output


def time_alternately(steps: dict[str, Callable[[], object]], num_steps: int) -> dict:
    """Median wall and CPU seconds per call of each step function, called alternately.

    Each function is called once to warm up (tracing), then ``num_steps`` rounds call each once,
    in turn, so that load from other processes hits all alike. CPU seconds are this process's
    (all threads); the 1-minute load average is read before and after.
    """
    results: dict = {name: {"step_seconds": [], "cpu_seconds": []} for name in steps}
    load_before = os.getloadavg()[0]
    for name, step in steps.items():
        start = time.perf_counter()
        step()
        results[name]["warmup_seconds"] = time.perf_counter() - start
    for _ in range(num_steps):
        for name, step in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            results[name]["step_seconds"].append(time.perf_counter() - wall)
            results[name]["cpu_seconds"].append(time.process_time() - cpu)
    for r in results.values():
        r["median_step_seconds"] = statistics.median(r["step_seconds"])
        r["median_cpu_seconds"] = statistics.median(r["cpu_seconds"])
    return results | {"load_average": [load_before, os.getloadavg()[0]]}


def _speed_batches(vocab_size: int, batch_size: int, length: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    # Zipf-like ids (log-uniform), as in text with ids sorted by frequency.
    u = rng.random([batch_size, length + 1])
    ids = np.minimum(np.exp(u * np.log(vocab_size + 1.0)).astype(np.int64) - 1, vocab_size - 1)
    return ids[:, :-1], ids[:, 1:]


def _output_layer_steps(
    vocab_size: int, num_sampled: int, units: int, optimizer: str, y: np.ndarray
) -> dict[str, Callable[[], object]]:
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

    def full_loss() -> tf.Tensor:
        logits = full(hidden)
        return tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
        )

    return {
        "sampled": make_step(sampled, lambda: sampled.sampled_loss(targets, hidden)),
        "full": make_step(full, full_loss),
    }


def time_speed(
    *,
    vocab_size: int,
    num_sampled: int,
    embedding_dim: int,
    units: int,
    batch_size: int,
    length: int,
    steps: int,
    optimizer: str,
    lstm_variants: Sequence[str] = ("default",),
) -> dict:
    """Step time of the sampled and the full model, and of their parts, for one optimizer.

    - ``whole``: ``train_on_batch`` of the sampled and the full language model;
    - ``body``: the same ``Embedding -> LSTM`` with a tiny output (``Dense(16)``), per LSTM
      variant: the cost that no output layer can remove;
    - ``output_layer``: the ``SampledSoftmax`` and the ``Dense(V)`` + cross-entropy alone on fixed
      ``[batch * length, units]`` hidden states (forward, backward, optimizer update).

    Each part is timed alternately (:func:`time_alternately`); medians of ``steps`` steps.
    """
    x, y = _speed_batches(vocab_size, batch_size, length)
    build = functools.partial(
        build_language_model, vocab_size, embedding_dim, units, optimizer=optimizer, length=length
    )
    results: dict = {"sparse_updates": OPTIMIZERS[optimizer][1]}

    def train_steps(models: dict[str, tf.keras.Model], targets: np.ndarray) -> dict:
        return {name: functools.partial(m.train_on_batch, x, targets) for name, m in models.items()}

    parts: dict[str, Callable[[], dict]] = {
        "whole": lambda: train_steps(
            {"sampled": build(num_sampled=num_sampled), "full": build(num_sampled=None)}, y
        ),
        "body": lambda: train_steps(
            {
                variant: build(
                    num_sampled=None,
                    output_classes=BODY_CLASSES,
                    lstm_options=LSTM_VARIANTS[variant],
                )
                for variant in lstm_variants
            },  # fmt: skip
            y % BODY_CLASSES,
        ),
        "output_layer": lambda: _output_layer_steps(vocab_size, num_sampled, units, optimizer, y),
    }
    for part, make_steps in parts.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the dense-optimizer warning, on purpose
            step_functions = make_steps()
            results[part] = time_alternately(step_functions, steps)
        del step_functions
        tf.keras.backend.clear_session()
        gc.collect()
        summary = {k: (v["median_step_seconds"], v["median_cpu_seconds"])
                   for k, v in results[part].items() if isinstance(v, dict)}  # fmt: skip
        print(f"speed {optimizer} {part}: {summary} load {results[part]['load_average']}",
              flush=True)  # fmt: skip
    return judge_speed(results)


def judge_speed(speed: dict) -> dict:
    """Adds the speed-ups (wall and CPU time) and verdicts to one optimizer's measurements.

    A target counts as met only when both the wall-time and the CPU-time speed-ups reach it:
    on a loaded machine the wall time of a long multi-threaded step grows more than its CPU
    time, which can inflate the wall-time ratio.
    """
    whole, head = speed["whole"], speed["output_layer"]
    body = speed["body"]["default"]
    full = whole["full"]["median_step_seconds"]
    ratios = {
        "speedup": full / whole["sampled"]["median_step_seconds"],
        "speedup_cpu": _cpu_ratio(whole["full"], whole["sampled"]),
        "output_layer_speedup": head["full"]["median_step_seconds"]
        / head["sampled"]["median_step_seconds"],
        "output_layer_speedup_cpu": _cpu_ratio(head["full"], head["sampled"]),
        # No output layer can make a step cheaper than the body alone.
        "speedup_bound_from_body": full / body["median_step_seconds"],
        "speedup_bound_from_body_cpu": _cpu_ratio(whole["full"], body),
    }
    return (
        speed
        | ratios
        | {
            "target": SPEEDUP_TARGET,
            "passed": min(ratios["speedup"], ratios["speedup_cpu"]) >= SPEEDUP_TARGET,
            "output_layer_passed": min(
                ratios["output_layer_speedup"], ratios["output_layer_speedup_cpu"]
            )
            >= SPEEDUP_TARGET,
        }
    )


# -- report -------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    """The results as Markdown tables."""
    lines = ["# Language model: SampledSoftmax vs full softmax", ""]
    quality = results.get("quality")
    if quality:
        data, model = quality["data"], quality["model"]
        lines += [
            f"## Held-out cross-entropy (nats/token), {data['source']}",
            "",
            f"V={model['vocab_size']:,}, S={model['num_sampled']:,}, "
            f"Embedding({model['embedding_dim']}), LSTM({model['units']}), "
            f"{data['train_steps']} steps of {model['batch_size']}x{data['length']} tokens, "
            f"Adam({model['learning_rate']}).",
            "",
            "| model | held-out CE | perplexity | train s | median step s |",
            "|---|---|---|---|---|",
        ]
        for name in ("sampled", "full"):
            r = quality[name]
            lines.append(
                f"| {name} | {r['heldout_cross_entropy']:.4f} | {r['heldout_perplexity']:.1f} | "
                f"{r['train_seconds']:.1f} | {r['median_step_seconds']:.3f} |"
            )
        if data.get("entropy_rate") is not None:
            lines.append(f"| chain entropy rate (best possible) | {data['entropy_rate']:.4f} | "
                         f"{np.exp(data['entropy_rate']):.1f} | | |")  # fmt: skip
            lines.append(f"| unigram entropy (no context) | {data['unigram_entropy']:.4f} | "
                         f"{np.exp(data['unigram_entropy']):.1f} | | |")  # fmt: skip
        lines += [
            "",
            f"Sampled / full: **{quality['ratio']:.4f}** (target <= {quality['target']}: "
            f"{'passed' if quality['passed'] else 'FAILED'}).",
            "",
        ]
        unigram = data.get("unigram_entropy")
        if (
            unigram is not None
            and min(quality[name]["heldout_cross_entropy"] for name in ("sampled", "full"))
            > unigram
        ):
            lines += [
                "Caveat: with this little training both models are still above the unigram "
                "entropy (a context-free model's best), so this compares early training, not "
                "converged models.",
                "",
            ]
    step_time = results.get("step_time", {})
    if step_time:
        config = next(iter(step_time.values()))["config"]
        lines += [
            "## Train step time",
            "",
            f"V={config['vocab_size']:,}, S={config['num_sampled']:,}, "
            f"Embedding({config['embedding_dim']}), LSTM({config['units']}), batch "
            f"{config['batch_size']}x{config['length']}; median seconds of {config['steps']} "
            "steps after a warm-up, each part's models timed alternately in one process. "
            "*Whole*: `train_on_batch`. *Output layer*: `SampledSoftmax` vs `Dense(V)` + "
            "cross-entropy alone on fixed hidden states (forward, backward, update). *Body*: the "
            f"same Embedding + LSTM with a {BODY_CLASSES}-way output, the part no output layer "
            "can remove; *bound* = full whole step / body, the most any output layer can gain.",
            "",
            "Speed-ups are of wall time, and in brackets of CPU time (less sensitive to the "
            "load from other processes, which gives each process a varying share of the cores).",
            "",
            "| optimizer | sparse update | whole sampled s | whole full s | **whole speed-up** | "
            "output sampled s | output full s | **output speed-up** | body s | bound |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for optimizer, speed in step_time.items():
            whole, head = speed["whole"], speed["output_layer"]
            body = speed["body"]["default"]
            lines.append(
                f"| {optimizer} | {'yes' if speed['sparse_updates'] else 'no (dense)'} | "
                f"{whole['sampled']['median_step_seconds']:.3f} | "
                f"{whole['full']['median_step_seconds']:.3f} | **{speed['speedup']:.1f}x** "
                f"({_cpu_ratio(whole['full'], whole['sampled']):.1f}x) | "
                f"{head['sampled']['median_step_seconds']:.3f} | "
                f"{head['full']['median_step_seconds']:.3f} | "
                f"**{speed['output_layer_speedup']:.0f}x** "
                f"({_cpu_ratio(head['full'], head['sampled']):.0f}x) | "
                f"{body['median_step_seconds']:.3f} | {speed['speedup_bound_from_body']:.1f}x "
                f"({_cpu_ratio(whole['full'], body):.1f}x) |"
            )
        lines += [
            "",
            "CPU seconds per step (this process, all threads) and the 1-minute load average "
            "before / after each part (the machine is shared):",
            "",
            "| optimizer | part | model | median s | median CPU s | warm-up s | load avg |",
            "|---|---|---|---|---|---|---|",
        ]
        for optimizer, speed in step_time.items():
            for part in ("whole", "output_layer", "body"):
                load = "{:.2f} / {:.2f}".format(*speed[part]["load_average"])
                for name, r in speed[part].items():
                    if isinstance(r, dict):
                        lines.append(
                            f"| {optimizer} | {part} | {name} | {r['median_step_seconds']:.3f} | "
                            f"{r['median_cpu_seconds']:.3f} | {r['warmup_seconds']:.1f} | {load} |"
                        )
        best = max(step_time.values(), key=lambda speed: _cpu_ratio(*_whole(speed)))
        lines += [
            "",
            f"Whole step, best optimizer by CPU time ({_name_of(step_time, best)}): "
            f"**{best['speedup']:.1f}x** wall, **{_cpu_ratio(*_whole(best)):.1f}x** CPU "
            f"(target >= {best['target']:.0f}x in both: "
            f"{'passed' if best['passed'] else 'FAILED'}). Output layer alone: "
            f"**{best['output_layer_speedup']:.0f}x** wall, "
            f"**{_cpu_ratio(best['output_layer']['full'], best['output_layer']['sampled']):.0f}x** "
            f"CPU ({'passed' if best['output_layer_passed'] else 'FAILED'}).",
            "",
            *_speed_analysis(step_time),
        ]
    lines += _readme_section(results)
    return "\n".join(lines)


def _name_of(step_time: dict, speed: dict) -> str:
    return next(name for name, s in step_time.items() if s is speed)


def _whole(speed: dict) -> tuple[dict, dict]:
    return speed["whole"]["full"], speed["whole"]["sampled"]


def _cpu_ratio(slow: dict, fast: dict) -> float:
    return slow["median_cpu_seconds"] / max(fast["median_cpu_seconds"], 1e-9)


def _speed_analysis(step_time: dict) -> list[str]:
    """Where the step time goes, from the numbers (Markdown lines)."""
    sparse = [speed for speed in step_time.values() if speed["sparse_updates"]]
    if not sparse:
        return []
    best = max(sparse, key=lambda speed: _cpu_ratio(*_whole(speed)))
    full = best["whole"]["full"]["median_step_seconds"]
    body = best["body"]["default"]
    head = best["output_layer"]
    lines = [
        "### Where the time goes",
        "",
        f"- The output layer alone, what the sampled softmax replaces: "
        f"{head['sampled']['median_step_seconds']:.3f} s sampled vs "
        f"{head['full']['median_step_seconds']:.3f} s full, "
        f"**{best['output_layer_speedup']:.0f}x** ({head['sampled']['median_cpu_seconds']:.3f} vs "
        f"{head['full']['median_cpu_seconds']:.2f} CPU s, "
        f"{_cpu_ratio(head['full'], head['sampled']):.0f}x).",
        f"- The body (Embedding + LSTM, {BODY_CLASSES}-way output) takes "
        f"{body['median_step_seconds']:.3f} s ({body['median_cpu_seconds']:.2f} CPU s) of every "
        f"step, whatever the output layer. With the full step at {full:.2f} s "
        f"({best['whole']['full']['median_cpu_seconds']:.2f} CPU s) no output layer can make the "
        f"whole step more than **{full / body['median_step_seconds']:.1f}x** faster in wall time "
        f"(**{_cpu_ratio(best['whole']['full'], body):.1f}x** in CPU time); 20x would need the "
        f"body under {full / 20:.2f} s ({best['whole']['full']['median_cpu_seconds'] / 20:.2f} "
        "CPU s).",
    ]
    variants = next((speed["body"] for speed in step_time.values() if len(speed["body"]) > 2), None)
    if variants:
        default = variants["default"]["median_step_seconds"]
        tried = ", ".join(
            f"`{name}` {r['median_step_seconds']:.3f} s, {r['median_cpu_seconds']:.2f} CPU s "
            f"({default / r['median_step_seconds']:.2f}x)"
            for name, r in variants.items()
            if isinstance(r, dict) and name != "default"
        )
        lines.append(
            f"- LSTM options that keep the model (body step, vs default {default:.3f} s, "
            f"{variants['default']['median_cpu_seconds']:.2f} CPU s): {tried}."
        )
    dense = [(name, s) for name, s in step_time.items() if not s["sparse_updates"]]
    for name, speed in dense:
        lines.append(
            f"- `{name}` updates every row of the [V, dim] tables at every step (dense moment "
            f"decay): the sampled step takes {speed['whole']['sampled']['median_step_seconds']:.2f}"
            f" s instead of {best['whole']['sampled']['median_step_seconds']:.2f} s, and the "
            f"speed-up falls to {speed['speedup']:.1f}x. `recsampled.layers.LazyAdam` is Adam "
            "with sparse updates."
        )
    return [*lines, ""]


def _readme_section(results: dict) -> list[str]:
    """The README section proposed for the Keras layer: usage and the LM table."""
    lines = [
        "---",
        "",
        "## Proposed README section",
        "",
        "### Keras: a sampled-softmax output layer",
        "",
        "```python",
        "import recsampled  # sets TF_USE_LEGACY_KERAS=1 before tf.keras is used",
        "import tensorflow as tf",
        "from recsampled.layers import LazyAdam, SampledSoftmax, SampledSoftmaxModel",
        "",
        'inputs = tf.keras.Input([None], dtype="int32")',
        "embedding = tf.keras.layers.Embedding(200_000, 256, mask_zero=True)",
        "x = tf.keras.layers.LSTM(1024, return_sequences=True)(embedding(inputs))",
        "x = tf.keras.layers.Dense(256)(x)  # to the embedding's dim, for weight tying",
        "outputs = SampledSoftmax(200_000, num_sampled=1_000, tied_to=embedding)(x)",
        "model = SampledSoftmaxModel(inputs, outputs)",
        "model.compile(optimizer=LazyAdam(1e-3))  # sparse updates; tf-keras Adam/SGD are dense",
        "model.fit(ids[:, :-1], ids[:, 1:])  # integer targets: no one-hot, no second input",
        "model.evaluate(test[:, :-1], test[:, 1:])  # full-softmax cross-entropy and perplexity",
        "probabilities = model.predict(test[:, :-1])  # [batch, time, 200_000]",
        'model.save("lm.keras")  # or a SavedModel folder; load_model gives the same predictions',
        "```",
        "",
        "Training uses the sampled softmax (ids sorted by decreasing frequency for the default "
        "log-uniform sampler; any `recsampled` sampler plugs in); `evaluate` and `predict` use "
        "the full softmax. Use an optimizer that updates only the sampled rows (`LazyAdam`, "
        "`tf.keras.optimizers.Adagrad`, `tf.keras.optimizers.legacy.SGD`): tf-keras' `Adam` and "
        "`SGD` rewrite the whole `[V, dim]` table every step, and `fit` warns about them.",
        "",
    ]
    quality, step_time = results.get("quality"), results.get("step_time", {})
    if quality or step_time:
        lines += [
            "Language model benchmark (`make bench-lm`, 2 CPU cores, `benchmarks/lm.md`):",
            "",
            "| measure | sampled | full | ratio |",
            "|---|---|---|---|",
        ]
    if quality:
        model = quality["model"]
        lines.append(
            f"| held-out cross-entropy, V={model['vocab_size']:,} Markov chain | "
            f"{quality['sampled']['heldout_cross_entropy']:.3f} | "
            f"{quality['full']['heldout_cross_entropy']:.3f} | {quality['ratio']:.3f} |"
        )
    for name, speed in step_time.items():
        config = speed["config"]
        size = f"V={config['vocab_size']:,}, S={config['num_sampled']:,}, {name}"
        for part, label, key in [
            ("whole", "train step", "speedup"),
            ("output_layer", "output layer step", "output_layer_speedup"),
        ]:
            cpu = _cpu_ratio(speed[part]["full"], speed[part]["sampled"])
            lines.append(
                f"| {label} s, {size} | {speed[part]['sampled']['median_step_seconds']:.3f} | "
                f"{speed[part]['full']['median_step_seconds']:.3f} | {speed[key]:.1f}x "
                f"({cpu:.1f}x in CPU time) |"
            )
    return lines


def run(args: argparse.Namespace) -> dict:
    """Runs the quality and speed comparisons that ``args`` asks for; returns the results."""
    results: dict = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m pipelines.lm_example", *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "gpus": len(tf.config.list_physical_devices("GPU")),
            "tensorflow": tf.__version__,
            "recsampled": recsampled.__version__,
        },
    }
    if args.quality_steps > 0:
        num_train = args.quality_steps * args.batch_size
        if args.text:
            sequences = read_text(args.text, args.vocab_size, args.length)
            test, train = sequences[: args.test_sequences], sequences[args.test_sequences :]
            train = train[:num_train]
            data = {"source": f"text file {args.text}", "entropy_rate": None}
        else:
            chain = make_markov_chain(args.vocab_size, args.num_clusters, seed=args.seed)
            train = sample_sequences(chain, num_train, args.length, seed=args.seed + 1)
            test = sample_sequences(chain, args.test_sequences, args.length, seed=args.seed + 2)
            data = {
                "source": f"Markov chain ({args.num_clusters} clusters, seed {args.seed})",
                "entropy_rate": chain.entropy_rate,
                "unigram_entropy": chain.unigram_entropy,
            }
        data |= {
            "length": args.length,
            "train_steps": int(np.ceil(len(train) / args.batch_size)),
            "train_tokens": int(train[:, 1:].size),
            "test_tokens": int(test[:, 1:].size),
        }
        model = {
            "vocab_size": args.vocab_size,
            "num_sampled": args.num_sampled,
            "embedding_dim": args.embedding_dim,
            "units": args.units,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
        }
        results["quality"] = {"data": data, "model": model} | compare_quality(train, test, **model)
    results["step_time"] = {}
    for i, optimizer in enumerate(args.speed_optimizers):
        config = {
            "vocab_size": args.speed_vocab_size,
            "num_sampled": args.speed_num_sampled,
            "embedding_dim": args.speed_embedding_dim,
            "units": args.speed_units,
            "batch_size": args.speed_batch_size,
            "length": args.speed_length,
            "steps": args.speed_steps,
        }
        # The LSTM variants do not depend on the optimizer: tried with the first one only.
        variants = ["default"] + [v for v in args.lstm_variants if v != "default" and i == 0]
        results["step_time"][optimizer] = {"config": config} | time_speed(
            **config, optimizer=optimizer, lstm_variants=variants
        )
    return results


def write(results: dict, output: str | Path) -> None:
    """Writes ``output`` (JSON) and the Markdown table beside it (``.md``)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    output.with_suffix(".md").write_text(markdown(results) + "\n", encoding="utf-8")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="benchmarks/lm.json")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="no runs: recompute the verdicts in --output's JSON and rewrite its Markdown",
    )
    quality = parser.add_argument_group("quality (sampled vs full, same steps)")
    quality.add_argument("--text", help="a text file instead of the Markov chain")
    quality.add_argument("--vocab-size", type=int, default=50_000)
    quality.add_argument("--num-clusters", type=int, default=64)
    quality.add_argument("--num-sampled", type=int, default=1_000)
    quality.add_argument("--embedding-dim", type=int, default=64)
    quality.add_argument("--units", type=int, default=64)
    quality.add_argument("--length", type=int, default=20)
    quality.add_argument("--batch-size", type=int, default=32)
    quality.add_argument("--learning-rate", type=float, default=1e-2)
    quality.add_argument("--quality-steps", type=int, default=300, help="0 skips the run")
    quality.add_argument("--test-sequences", type=int, default=2_000)
    quality.add_argument("--seed", type=int, default=0)
    speed = parser.add_argument_group("step time")
    speed.add_argument(
        "--speed-optimizers",
        nargs="*",
        choices=sorted(OPTIMIZERS),
        default=["adagrad", "legacy_sgd", "lazy_adam", "adam"],
        help="sparse-update optimizers first; adam (dense moment decay) for reference",
    )
    speed.add_argument(
        "--lstm-variants",
        nargs="*",
        choices=list(LSTM_VARIANTS),
        default=list(LSTM_VARIANTS),
        help="LSTM options timed in the body-only model beside the default (first optimizer)",
    )
    speed.add_argument("--speed-vocab-size", type=int, default=200_000)
    speed.add_argument("--speed-num-sampled", type=int, default=1_000)
    speed.add_argument("--speed-embedding-dim", type=int, default=256)
    speed.add_argument("--speed-units", type=int, default=1024)
    speed.add_argument("--speed-batch-size", type=int, default=32)
    speed.add_argument("--speed-length", type=int, default=20)
    speed.add_argument("--speed-steps", type=int, default=5)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.render_only:
        results = json.loads(Path(args.output).read_text(encoding="utf-8"))
        for name, speed in results.get("step_time", {}).items():  # verdicts from measurements
            results["step_time"][name] = judge_speed(speed)
        write(results, args.output)
        print(markdown(results))
        return
    results = run(args)
    write(results, args.output)
    print(markdown(results))


if __name__ == "__main__":
    main()

"""Language model with a ``SampledSoftmax`` output: quality against the full softmax, and speed.

Run ``python -m pipelines.lm_example --output benchmarks/lm.json`` (about 15 minutes on 2 CPU
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
sequences of 20 steps: median seconds per ``train_on_batch`` (forward, backward and optimizer
update) of each model after a warm-up step, for the optimizers given (target: >= 20x faster).
Adam updates its moments densely, so each step touches all ``V x H`` output weights even with a
sampled (``IndexedSlices``) gradient; SGD applies sparse gradients to the touched rows only.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import recsampled  # noqa: E402  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from recsampled.layers import SampledSoftmax, SampledSoftmaxModel  # noqa: E402

SCHEMA_VERSION = 1
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
    learning_rate: float = 1e-3,
    optimizer: str = "adam",
    seed: int = 0,
) -> tf.keras.Model:
    """``Embedding -> LSTM -> output over vocab_size``, compiled.

    ``num_sampled=None`` gives the full-softmax reference (``Dense`` + sparse cross-entropy);
    otherwise the output is a ``SampledSoftmax`` with the default log-uniform sampler.
    """
    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input([None], dtype="int32")
    x = tf.keras.layers.Embedding(vocab_size, embedding_dim)(inputs)
    x = tf.keras.layers.LSTM(units, return_sequences=True)(x)
    optimizer = tf.keras.optimizers.get(optimizer)
    optimizer.learning_rate = learning_rate
    if num_sampled is None:
        model = tf.keras.Model(inputs, tf.keras.layers.Dense(vocab_size)(x))
        loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer=optimizer, loss=loss)
    else:
        model = SampledSoftmaxModel(inputs, SampledSoftmax(vocab_size, num_sampled)(x))
        model.compile(optimizer=optimizer)
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


def time_steps(
    *,
    vocab_size: int,
    num_sampled: int,
    embedding_dim: int,
    units: int,
    batch_size: int,
    length: int,
    steps: int,
    optimizer: str,
) -> dict:
    """Median seconds per ``train_on_batch`` of the sampled and the full model.

    Both models are built and warmed up (one step, tracing included), then timed one step at a
    time, alternately, so that load from other processes hits both alike.
    """
    rng = np.random.default_rng(0)
    # Zipf-like ids (log-uniform), as in text with ids sorted by frequency.
    u = rng.random([steps + 1, batch_size, length + 1])
    ids = np.minimum(np.exp(u * np.log(vocab_size + 1.0)).astype(np.int64) - 1, vocab_size - 1)
    models = {
        name: build_language_model(
            vocab_size, embedding_dim, units, num_sampled=sampled, optimizer=optimizer
        )
        for name, sampled in (("sampled", num_sampled), ("full", None))
    }
    results: dict = {name: {"step_seconds": []} for name in models}
    for step, batch in enumerate(ids):
        for name, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(batch[:, :-1], batch[:, 1:])
            seconds = time.perf_counter() - start
            if step == 0:
                results[name]["warmup_seconds"] = seconds
            else:
                results[name]["step_seconds"].append(seconds)
    for name, r in results.items():
        r["median_step_seconds"] = statistics.median(r["step_seconds"])
        print(f"speed {optimizer} {name}: {r}", flush=True)
    del models
    tf.keras.backend.clear_session()
    speedup = results["full"]["median_step_seconds"] / results["sampled"]["median_step_seconds"]
    return results | {
        "speedup": speedup,
        "target": SPEEDUP_TARGET,
        "passed": speedup >= SPEEDUP_TARGET,
    }


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
    for optimizer, speed in results.get("step_time", {}).items():
        config = speed["config"]
        lines += [
            f"## Train step time, optimizer {optimizer}",
            "",
            f"V={config['vocab_size']:,}, S={config['num_sampled']:,}, "
            f"Embedding({config['embedding_dim']}), LSTM({config['units']}), batch "
            f"{config['batch_size']}x{config['length']}, median of {config['steps']} steps.",
            "",
            "| model | median step s | warm-up s |",
            "|---|---|---|",
        ]
        for name in ("sampled", "full"):
            r = speed[name]
            lines.append(f"| {name} | {r['median_step_seconds']:.3f} | {r['warmup_seconds']:.1f} |")
        lines += [
            "",
            f"Speed-up: **{speed['speedup']:.1f}x** (target >= {speed['target']:.0f}x: "
            f"{'passed' if speed['passed'] else 'FAILED'}).",
            "",
        ]
    return "\n".join(lines)


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
    for optimizer in args.speed_optimizers:
        config = {
            "vocab_size": args.speed_vocab_size,
            "num_sampled": args.speed_num_sampled,
            "embedding_dim": args.speed_embedding_dim,
            "units": args.speed_units,
            "batch_size": args.speed_batch_size,
            "length": args.speed_length,
            "steps": args.speed_steps,
        }
        results["step_time"][optimizer] = {"config": config} | time_steps(
            **config, optimizer=optimizer
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
    speed.add_argument("--speed-optimizers", nargs="*", default=["adam", "sgd"])
    speed.add_argument("--speed-vocab-size", type=int, default=200_000)
    speed.add_argument("--speed-num-sampled", type=int, default=1_000)
    speed.add_argument("--speed-embedding-dim", type=int, default=256)
    speed.add_argument("--speed-units", type=int, default=1024)
    speed.add_argument("--speed-batch-size", type=int, default=32)
    speed.add_argument("--speed-length", type=int, default=20)
    speed.add_argument("--speed-steps", type=int, default=3)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    results = run(args)
    write(results, args.output)
    print(markdown(results))


if __name__ == "__main__":
    main()

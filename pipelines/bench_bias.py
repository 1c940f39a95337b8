"""Study: gradient bias of sampled softmax against the number of samples S and against step
time, and ranking quality after equal wall time, for fixed and adaptive proposals. Run::

    python -m pipelines.bench_bias --output benchmarks/bias.json

Writes the JSON, ``bias_<dataset>.png`` (bias against S and against step time) and
``bias_recall.png`` (Recall@20 after equal wall time) beside it; ``--quick``: a smoke test.
Checks Blanc & Rendle (ICML 2018): the quadratic kernel ``q(i | h) ∝ α(hᵀwᵢ)² + 1`` reaches a
given bias with fewer samples than a fixed proposal; time is the cost, so every step is timed.
Model: matrix factorisation (ID ``Tower``s, Adagrad, summed loss, accidental hits removed).
Proposals: ``uniform``, ``unigram`` (∝ count + 1), ``in_batch`` (logQ, ``S = B - 1``), ``kernel``
(per query, every item scored), ``kernel_mixture`` (the tree's batch mixture, rebuilt from the
trained item table every ``kernel_rebuild_every`` steps, that cost in its step time), ``softmax``
(part (a) only). Part (a), on the full-softmax model: ``bias = ‖E[ĝ] -
g‖ / ‖g‖`` (item table and queries, ``E[ĝ]`` exact) and one draw's error (``mc_check`` ≈ 1: the
library's draws agree), conventions ``negatives_only`` and ``tf`` (as the library trains);
``ratios``: the S each kernel needs for the unigram's bias; step times per proposal and S and the
bias each affords at equal step time. Part (b): Recall/NDCG@k over the catalogue after the same
wall time, beside popularity. Data: MovieLens-100K (where present), synthetic logs (18,043 and
108,798 items occur; part (a) takes fewer rows per batch on large catalogues, ``bias_cells``).
"""

# ruff: noqa: E402
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# One BLAS thread: the study's NumPy work is many small ops, where thread spin-up costs more.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

import recsampled  # (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from pipelines import harness
from recsampled import QuadraticKernelSampler, SampledValues, UniformSampler, UnigramSampler
from recsampled.data import make_dataset, random_holdout, read_interactions, synthetic
from recsampled.data.splits import Split
from recsampled.evaluation import embedding_scores, popularity_scores, ranking_metrics, sample_users
from recsampled.models import Tower

SCHEMA_VERSION = 2
PROPOSALS = ("uniform", "unigram", "in_batch", "kernel", "kernel_mixture", "softmax")
TRAINED = PROPOSALS[:-1]
CONVENTIONS = ("negatives_only", "tf")
PARTS = ("item_table", "queries")
REFERENCE_S = (1024, 256, 64)
RATIO_METRICS = ("bias", "per_draw_error")
EXTRAPOLATION_LIMIT = 4.0  # a bias curve is extended beyond its S grid by at most this factor
QUADRATURE_STEP = 0.25  # trapezoid step in v = log t (error about exp(-π²/step))
QUADRATURE_RANGE = (1e-13, 1e9)  # range of t·Z of the nodes (left out below: under S·10^-13)
MOVIELENS_100K = Path(__file__).resolve().parents[1].parent / "shared/datasets/movielens-100k"
LOG = logging.getLogger("pipelines.bench_bias")


@dataclasses.dataclass(frozen=True)
class Options:
    """Settings of one run (the defaults are those of the published numbers)."""

    #: folder (or ``u.data``) of MovieLens-100K; empty leaves it out.
    movielens_path: str = str(MOVIELENS_100K)
    #: catalogue sizes of the synthetic logs (users and rows scale with it).
    #: (the log keeps the items that occur: 20k gives 18,043 items, 140k about 108k, >= 10^5).
    synthetic_items: tuple[int, ...] = (20_000, 140_000)
    test_fraction: float = 0.2  #: share of each user's interactions held out (``random_holdout``).
    embedding_dim: int = 32  #: D.
    batch_size: int = 256  #: B of training (``in_batch``: S = B - 1).
    learning_rate: float = 0.2  #: Adagrad's.
    #: training budget of every model per 10^4 items (>= min_train_seconds).
    train_seconds: float = 2.0
    min_train_seconds: float = 15.0  #: the least training budget.
    alpha: float = 100.0  #: α of the quadratic kernel.
    #: training steps between rebuilds of the batch mixture's tree (its cost is in the step).
    kernel_rebuild_every: int = dataclasses.field(default=10, metadata={"min": 1})
    bias_num_sampled: tuple[int, ...] = (16, 64, 256, 1024)  #: S of part (a) and of the step times.
    bias_batches: int = 2  #: batches of training pairs the bias is averaged over.
    bias_batch_size: int = 32  #: B of part (a).
    #: at most this many (row, item) cells per batch of part (a): fewer rows on large catalogues.
    bias_cells: int = 2_000_000
    bias_repeats: int = 4  #: R, draws per (batch, proposal, S).
    step_repeats: int = 3  #: timed steps per (proposal, S).
    recall_num_sampled: int = 256  #: S of part (b).
    ks: tuple[int, ...] = (10, 20, 50)  #: cut-offs of the ranking metrics (20 is the one reported).
    max_eval_users: int = 2_000  #: test users evaluated per dataset (a seeded sample).
    seed: int = 0  #: seed of the data split, initial weights, batch order and every draw.


QUICK = Options(
    movielens_path="", synthetic_items=(1_000,), batch_size=64, train_seconds=10.0,
    min_train_seconds=2.0, bias_num_sampled=(8, 64), bias_batches=1, bias_batch_size=32,
    bias_repeats=8, step_repeats=1, recall_num_sampled=32, max_eval_users=200,
)  # fmt: skip


def load_datasets(options: Options) -> tuple[dict[str, Split], dict[str, str]]:
    """The splits of the study's datasets, and the reason for each one left out."""
    logs, skipped = {}, {}
    path = Path(options.movielens_path)
    data_file = path / "u.data" if path.is_dir() else path
    if options.movielens_path and data_file.exists():
        logs["movielens-100k"] = read_interactions(data_file, format="movielens-100k")
    elif options.movielens_path:
        skipped["movielens-100k"] = f"{data_file} not found"
    for num_items in options.synthetic_items:
        scale = num_items / 20_000  # the published 20k-item log (5,000 users, 120,000 rows)
        name = "synthetic" if len(options.synthetic_items) == 1 else f"synthetic-{num_items}"
        logs[name] = synthetic.generate(
            num_users=max(100, round(5_000 * scale**0.5)), num_items=num_items,
            num_interactions=round(120_000 * scale**0.75), seed=options.seed,
            num_clusters=max(5, round(50 * scale**0.5)),
        ).to_interactions()  # fmt: skip
        LOG.info("%s: %d items asked, %d occur", name, num_items, logs[name].num_items)
    split = dict(test_fraction=options.test_fraction, seed=options.seed)
    return {name: random_holdout(log, **split) for name, log in logs.items()}, skipped


class Categorical:
    """Per-row categorical distributions over ``[0, n)`` from ``[B, n]`` weights, drawn exactly:
    the rows' CDFs, shifted by the row index, are one increasing array for ``searchsorted``."""

    def __init__(self, weights: np.ndarray):
        weights = np.asarray(weights, np.float64)
        cdf = np.cumsum(weights, axis=1)
        total = cdf[:, -1:]
        self.probabilities = weights / total
        self.batch_size, self.num_classes = weights.shape
        self._rows = np.arange(self.batch_size)[:, np.newaxis]
        self._stacked = (cdf / total + self._rows).ravel()

    def draw(self, num_sampled: int, rng: np.random.Generator) -> np.ndarray:
        """``[B, num_sampled]`` int64 ids, independent draws from each row."""
        u = rng.random((self.batch_size, num_sampled)) + self._rows
        ids = np.searchsorted(self._stacked, u.ravel(), side="right").reshape(u.shape)
        ids -= self._rows * self.num_classes
        return np.clip(ids, 0, self.num_classes - 1).astype(np.int64)

    def sampled_values(
        self, labels: np.ndarray, num_sampled: int, rng: np.random.Generator
    ) -> SampledValues:
        """One draw as the per-example triple: ``S·q`` of the drawn ids and of the labels."""
        ids, p = self.draw(num_sampled, rng), self.probabilities
        labels = np.asarray(labels).reshape(len(labels), -1)
        counts = [tf.constant(num_sampled * np.take_along_axis(p, x, 1), tf.float32)
                  for x in (labels, ids)]  # fmt: skip
        return SampledValues(tf.constant(ids, tf.int64), *counts)


def kernel_weights(h: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """``[B, n]`` unnormalised quadratic-kernel masses ``α(hᵀwᵢ)² + 1``, in float64."""
    logits = np.asarray(h, np.float64) @ np.asarray(w, np.float64).T
    return alpha * logits * logits + 1.0


class MatrixFactorization(tf.Module):
    """User and item ID embeddings (``Tower``s without features, normal(0.1) initial weights)."""

    def __init__(self, num_users: int, num_items: int, embedding_dim: int):
        super().__init__(name="matrix_factorization")
        self.query_tower = Tower(num_users, embedding_dim, name="query_tower")
        self.candidate_tower = Tower(num_items, embedding_dim, name="candidate_tower")
        self.query_tower(tf.zeros([1], tf.int64))
        self.candidate_tower(tf.zeros([1], tf.int64))
        self.user_table = self.query_tower.id_embedding.embeddings
        self.item_table = self.candidate_tower.id_embedding.embeddings
        for table in (self.user_table, self.item_table):
            table.assign(tf.random.normal(table.shape, stddev=0.1))
        self.num_items, self.biases = num_items, tf.zeros([num_items])
        self.variables_to_train = [self.user_table, self.item_table]


class Trainer:
    """One model trained with one proposal of :data:`TRAINED`, or the full softmax (None)."""

    def __init__(self, split: Split, proposal: str | None, num_sampled: int, options: Options):
        train, dim = split.train, options.embedding_dim
        tf.keras.utils.set_random_seed(options.seed)
        self.model = model = MatrixFactorization(train.num_users, train.num_items, dim)
        self.proposal, self.alpha = proposal, options.alpha
        self.num_sampled = s = {None: 0, "in_batch": options.batch_size}.get(proposal, num_sampled)
        if proposal == "in_batch":
            count = options.batch_size * (train.item_counts / train.item_counts.sum())  # B·p_i
            self._batch_count = tf.constant(count, tf.float32)
        elif proposal in ("uniform", "unigram"):  # in the graph, as in a training step
            shared = (UniformSampler(train.num_items) if proposal == "uniform"
                      else UnigramSampler(counts=train.item_counts + 1.0))  # fmt: skip
            self._sample = tf.function(lambda labels: tuple(shared.sample(labels, s, unique=False)))
        elif proposal == "kernel":
            self._rng = np.random.default_rng(options.seed)
        elif proposal == "kernel_mixture":  # traced once: eager tree walks cost ~100 small ops
            tree = QuadraticKernelSampler(model.item_table, alpha=options.alpha, seed=options.seed)
            self._sample = tf.function(lambda labels, h: tuple(
                tree.sample(labels, s, unique=False, query_embeddings=h)))  # fmt: skip
            self._rebuild = tf.function(tree.rebuild)  # reads the trained item table
        # The tree follows the model: rebuilt every this many steps (0: never, for step_times).
        self.rebuild_every, self._steps = options.kernel_rebuild_every, 0
        self.batches = make_dataset(train, batch_size=options.batch_size, seed=options.seed,
                                    drop_remainder=True).repeat()  # fmt: skip
        self.sampling_seconds = 0.0
        optimizer = tf.keras.optimizers.Adagrad(learning_rate=options.learning_rate)

        @tf.function(autograph=False)
        def step(users: tf.Tensor, items: tf.Tensor, *values: tf.Tensor) -> tf.Tensor:
            labels, table, biases = items[:, tf.newaxis], model.item_table, model.biases
            with tf.GradientTape() as tape:
                h = model.query_tower(users)
                if s == 0:
                    losses = recsampled.full_softmax_loss(table, biases, labels, h, model.num_items)
                else:
                    losses = recsampled.sampled_softmax_loss(
                        table, biases, labels, h, s, model.num_items, sampled_values=values
                    )
                loss = tf.reduce_sum(losses)  # SUM over the batch, as TFRS's retrieval task
            variables = model.variables_to_train
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            return loss / tf.cast(tf.shape(users)[0], loss.dtype)

        self.step_fn = step

    def _values(self, users: tf.Tensor, items: tf.Tensor) -> tuple:
        labels = tf.cast(items, tf.int64)[:, tf.newaxis]
        if self.proposal == "in_batch":  # the batch's positives, counts B·p_i
            ids = tf.cast(items, tf.int64)
            return ids, tf.gather(self._batch_count, labels), tf.gather(self._batch_count, ids)
        if self.proposal == "kernel_mixture":
            return self._sample(labels, tf.gather(self.model.user_table, users))
        if self.proposal == "kernel":  # every item scored: exact q(i | h), draws per query
            h = tf.gather(self.model.user_table, users).numpy()
            dist = Categorical(kernel_weights(h, self.model.item_table.numpy(), self.alpha))
            return tuple(dist.sampled_values(labels.numpy(), self.num_sampled, self._rng))
        return self._sample(labels)

    def step(self, users: tf.Tensor, items: tf.Tensor) -> float:
        """One training step; returns the batch's mean loss."""
        values: tuple = ()
        start = time.perf_counter()
        if self.proposal is not None:
            values = self._values(users, items)
            self.sampling_seconds += time.perf_counter() - start
        loss = float(self.step_fn(users, items, *values))
        self._steps += 1
        if self.proposal == "kernel_mixture" and self.rebuild_every:
            if self._steps % self.rebuild_every == 0:
                start = time.perf_counter()
                self.rebuild()
                self.sampling_seconds += time.perf_counter() - start
        return loss

    def rebuild(self) -> None:
        """Rebuilds the batch mixture's tree from the current item table."""
        self._rebuild()

    def train_for(self, seconds: float) -> dict:
        """Trains for ``seconds`` of wall time after a first (tracing, uncounted) step."""
        batches = iter(self.batches)
        first = next(batches)
        losses = [self.step(first["user_id"], first["item_id"])]
        if self.proposal == "kernel_mixture":
            self.rebuild()  # traced here, not in the budget
        self.sampling_seconds, started = 0.0, time.perf_counter()
        for batch in batches:
            losses.append(self.step(batch["user_id"], batch["item_id"]))
            if time.perf_counter() - started >= seconds:
                break
        tenth = max(1, len(losses) // 10)  # mean loss of the first and the last tenth of steps
        return {
            "steps": len(losses), "seconds": time.perf_counter() - started,
            "seconds_sampling": self.sampling_seconds,
            "loss": [float(np.mean(losses[:tenth])), float(np.mean(losses[-tenth:]))],
        }  # fmt: skip


def evaluate(model: MatrixFactorization | None, split: Split, options: Options) -> dict:
    """Full-catalogue metrics (training items removed) of ``model``, or of popularity if None."""
    train, test = split.train, split.test
    users = sample_users(test.user_ids, options.max_eval_users, options.seed)
    score = (popularity_scores(train.item_counts) if model is None
             else embedding_scores(model.user_table.numpy(), model.item_table.numpy()))  # fmt: skip
    return ranking_metrics(
        score, num_users=train.num_users, num_items=train.num_items,
        train_user_ids=train.user_ids, train_item_ids=train.item_ids,
        test_user_ids=test.user_ids, test_item_ids=test.item_ids, ks=options.ks, users=users,
    ).as_dict()  # fmt: skip


def gradient_functions(item_table: tf.Tensor) -> tuple[Callable, Callable]:
    """``full(h, labels)`` and ``sampled(h, labels, S, ids, true_count, sampled_count)``: dense
    ``(d/dW [n, D], d/dH [B, D])`` of the batch's mean loss (sampled: negatives_only, then tf)."""
    table = tf.Variable(item_table, trainable=True, name="fixed_item_table")
    num_items, biases = int(table.shape[0]), tf.zeros([table.shape[0]])

    def grads(loss_fn: Callable, h: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(h)
            loss = tf.reduce_mean(loss_fn(h))
        g_table, g_h = tape.gradient(loss, [table, h])
        if isinstance(g_table, tf.IndexedSlices):
            g_table = tf.math.unsorted_segment_sum(g_table.values, g_table.indices, num_items)
        return tf.convert_to_tensor(g_table), g_h

    @tf.function(autograph=False)
    def full(h: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return grads(lambda x: recsampled.full_softmax_loss(table, biases, labels, x, num_items), h)

    @tf.function(autograph=False)
    def sampled(h, labels, num_sampled, ids, true_count, sampled_count) -> tuple[tf.Tensor, ...]:
        return tuple(itertools.chain.from_iterable(
            grads(lambda x, c=count: recsampled.sampled_softmax_loss(
                table, biases, labels, x, num_sampled=num_sampled, num_classes=num_items,
                sampled_values=(ids, c, sampled_count), remove_accidental_hits=True,
            ), h)
            for count in (tf.ones_like(true_count), true_count)  # negatives_only, tf
        ))  # fmt: skip

    return full, sampled


def expected_coefficients(
    exp_logits: np.ndarray, label: int, proposal: np.ndarray, num_sampled: Sequence[int]
) -> dict[tuple[int, str], np.ndarray]:
    """Exact ``E[∂L̂/∂o]`` (``[n]``) of one example, by ``(S, convention)`` (no Monte Carlo).

    With ``e = exp(o - max o)``, ``Y_i = e_i / q_i`` (``Y_y = 0``: a drawn label is removed),
    ``T_m`` a sum of ``m`` i.i.d. ``Y / S``, ``a = e_y`` (``negatives_only``) or ``e_y/(S·q_y)``
    (``tf``): ``E[∂L̂/∂o_i] = e_i·E[1 / (a + Y_i/S + T_{S-1})]`` (i ≠ y), ``E[∂L̂/∂o_y] =
    a·E[1 / (a + T_S)] - 1``, with ``E[1/(c + T_m)] = S ∫ exp(-t·S·c) φ(t)^m dt``, ``φ(t) = Σ_i
    q_i exp(-t·Y_i)``, by the trapezoid rule in ``v = log t``. Shared draws: the same marginals.
    """
    e, q = np.asarray(exp_logits, np.float64), np.asarray(proposal, np.float64)
    y_values = np.divide(e, q, out=np.zeros_like(e), where=q > 0)
    y_values[label] = 0.0
    low, high = (math.log(x / e.sum()) for x in QUADRATURE_RANGE)
    t = np.exp(np.arange(low, high + QUADRATURE_STEP, QUADRATURE_STEP))
    kernel = np.exp(-np.outer(y_values, t))  # [n, K]: exp(-t Y_i)
    log_phi = np.log(np.maximum(np.minimum(q @ kernel, 1.0), 1e-300))  # [K]
    keys, columns, positives = list(itertools.product(num_sampled, CONVENTIONS)), [], []
    for s, convention in keys:
        with np.errstate(divide="ignore"):  # q_y = 0 has no `tf` convention
            a = e[label] if convention == "negatives_only" else e[label] / (s * q[label])
        base = QUADRATURE_STEP * t * s * np.exp(-t * s * a)  # dt = t dv
        columns.append(base * np.exp((s - 1) * log_phi))
        with np.errstate(invalid="ignore"):
            positives.append(a * float(base @ np.exp(s * log_phi)) - 1.0)
    negatives = e[:, np.newaxis] * (kernel @ np.stack(columns, axis=1))  # [n, len(keys)]
    negatives[q <= 0] = 0.0  # never drawn: no gradient (the formula assumes q_i > 0)
    negatives[label] = positives
    return {key: negatives[:, k] for k, key in enumerate(keys)}


def gradient_summary(reference: np.ndarray, expected: np.ndarray, draws: list) -> dict:
    """Bias and cosine of the exact ``E[ĝ]`` against ``g`` (``reference``); per-draw error and
    cosine of the draws ``ĝ_r``, and their Monte Carlo bias, noise and check against ``E[ĝ]``."""
    g, e = (np.asarray(x, np.float64).ravel() for x in (reference, expected))
    d = np.stack([np.asarray(x, np.float64).ravel() for x in draws])  # [R, size]
    r, norm, mean = len(d), np.linalg.norm(g), d.mean(axis=0)
    errors, mean_sq_error = np.linalg.norm(d - g, axis=1), np.sum((mean - g) ** 2)
    spread = max(np.sum(errors**2) - r * mean_sq_error, 0.0) / (r - 1)  # Σ_r ‖ĝ_r - ḡ‖² / (R-1)
    return {k: float(v) for k, v in {
        "bias": np.linalg.norm(e - g) / norm,
        "cosine": e @ g / max(np.linalg.norm(e) * norm, 1e-300),
        "per_draw_error": errors.mean() / norm,
        "per_draw_cosine": np.mean(d @ g / np.maximum(np.linalg.norm(d, axis=1) * norm, 1e-300)),
        "mc_bias": math.sqrt(max(mean_sq_error - spread / r, 0.0)) / norm,
        "mc_noise": math.sqrt(spread / r) / norm,
        "mc_check": np.sum((mean - e) ** 2) / (spread / r) if spread > 0 else math.nan,
    }.items()}  # fmt: skip


def _draw_values(proposal, q_all, library, dist, labels, h, s, rng) -> tuple:
    """One draw of ``S`` candidates as the triple: the library's samplers where they exist."""
    if proposal in library:
        kwargs = {"query_embeddings": h} if proposal == "kernel_mixture" else {}
        return library[proposal].sample(labels, s, unique=False, **kwargs)
    if q_all.ndim == 2:
        return dist.sampled_values(labels.numpy(), s, rng)
    ids = dist.draw(s, rng)[0]  # S draws shared by the batch
    true_count = s * q_all[labels.numpy()[:, 0]][:, np.newaxis]
    return (tf.constant(ids, tf.int64), tf.constant(true_count, tf.float32),
            tf.constant(s * q_all[ids], tf.float32))  # fmt: skip


def gradient_bias(model: MatrixFactorization, split: Split, options: Options, index: int) -> dict:
    """Part (a) on one dataset: exact bias and per-draw error of each proposal at each S (each
    point: per convention and part, the :func:`gradient_summary` averaged over batches)."""
    train, grid, n = split.train, options.bias_num_sampled, split.train.num_items
    keys = list(itertools.product(grid, CONVENTIONS))
    item_table, user_table = model.item_table.numpy(), model.user_table.numpy()
    table64 = item_table.astype(np.float64)
    full, sampled = gradient_functions(tf.constant(item_table))
    tf.random.set_seed(options.seed)
    unigram = UnigramSampler(counts=train.item_counts + 1.0)
    unigram_q = unigram.probability(tf.range(n)).numpy().astype(np.float64)
    unigram_q /= unigram_q.sum()
    library = {
        "uniform": UniformSampler(n), "unigram": unigram,
        "kernel_mixture": QuadraticKernelSampler(item_table, alpha=options.alpha),
    }  # fmt: skip
    rng = np.random.default_rng([options.seed, index])
    per_batch: dict[tuple, list[dict]] = {}
    max_rel_diff = 0.0
    for b in range(options.bias_batches):
        size = min(options.bias_batch_size, max(8, options.bias_cells // n))
        rows = rng.choice(len(train), size=size, replace=False)
        items = train.item_ids[rows].astype(np.int64)
        h_np = user_table[train.user_ids[rows]]
        h, labels = tf.constant(h_np), tf.constant(items[:, np.newaxis])
        g_table, g_h = (x.numpy() for x in full(h, labels))
        logits = h_np.astype(np.float64) @ table64.T
        softmax_e = np.exp(logits - logits.max(axis=1, keepdims=True))
        kernel = Categorical(kernel_weights(h_np, item_table, options.alpha)).probabilities
        proposals = {
            "uniform": np.full(n, 1.0 / n), "unigram": unigram_q,
            "in_batch": train.item_counts / train.item_counts.sum(), "kernel": kernel,
            "kernel_mixture": kernel.mean(axis=0),
            "softmax": Categorical(softmax_e).probabilities,
        }  # fmt: skip
        tree_q = library["kernel_mixture"].probability(tf.range(n), h).numpy()
        max_rel_diff = max(max_rel_diff, np.max(np.abs(tree_q / proposals["kernel_mixture"] - 1)))
        for proposal, q_all in proposals.items():
            dist = None if proposal in library else Categorical(np.atleast_2d(q_all))
            coefficients = {key: np.empty((rows.size, n)) for key in keys}
            for i in range(len(rows)):  # exact E[∂L̂/∂o], row by row
                q = q_all if q_all.ndim == 1 else q_all[i]
                for key, value in expected_coefficients(softmax_e[i], items[i], q, grid).items():
                    coefficients[key][i] = value
            for s in grid:
                draws = []
                for r in range(options.bias_repeats):
                    draw_rng = np.random.default_rng([options.seed, index, b, s, r])
                    values = _draw_values(proposal, q_all, library, dist, labels, h, s, draw_rng)
                    draws.append([x.numpy() for x in sampled(h, labels, s, *values)])
                summaries = {}  # E[ĝ] = (1/B)·Cᵀ H and (1/B)·C W
                for k, (c, part) in enumerate(itertools.product(CONVENTIONS, PARTS)):
                    expected = coefficients[(s, c)] / len(rows)
                    expected = expected.T @ h_np if part == "item_table" else expected @ table64
                    g_ref = g_table if part == "item_table" else g_h
                    summaries[(c, part)] = gradient_summary(g_ref, expected, [x[k] for x in draws])
                per_batch.setdefault((proposal, s), []).append(summaries)
        LOG.info("  bias batch %d/%d done", b + 1, options.bias_batches)

    def mean(summaries: list[dict]) -> dict:
        out = {k: float(np.nanmean([v[k] for v in summaries])) for k in summaries[0]}
        return {**out, "bias_std": float(np.std([v["bias"] for v in summaries]))}

    points = [
        {"proposal": proposal, "num_sampled": s,
         **{c: {p: mean([batch[(c, p)] for batch in batches]) for p in PARTS} for c in CONVENTIONS}}
        for (proposal, s), batches in per_batch.items()
    ]  # fmt: skip
    check = {"max_relative_difference_of_tree_mixture": float(max_rel_diff)}
    return {"points": points, "kernel_check": check}


def samples_to_reach(
    num_sampled: Sequence[int], bias: Sequence[float], target: float
) -> tuple[float | None, str]:
    """The S at which a decreasing bias curve reaches ``target`` (log-log), and ``how``:
    ``interpolated``, or ``extrapolated_below`` / ``_above`` along the first / last segment (at
    most :data:`EXTRAPOLATION_LIMIT` times beyond the grid; else S is None, ``below_grid`` /
    ``above_grid``, as for a segment that does not decrease)."""
    s = np.log(np.asarray(num_sampled, np.float64))
    b = np.log(np.maximum(np.asarray(bias, np.float64), 1e-300))
    t, limit = math.log(max(target, 1e-300)), math.log(EXTRAPOLATION_LIMIT)

    def along(i: int, j: int) -> float | None:
        slope = (b[j] - b[i]) / (s[j] - s[i])
        return float(s[i] + (t - b[i]) / slope) if slope < 0 else None

    below = np.flatnonzero(b <= t)
    if below.size and below[0] > 0:
        return math.exp(along(below[0] - 1, below[0])), "interpolated"
    side = "below" if below.size else "above"  # already below target at S_min, or never reaches
    x = along(0, 1) if below.size else along(len(s) - 2, len(s) - 1)
    if x is None or (x < s[0] - limit if below.size else x > s[-1] + limit):
        return None, f"{side}_grid"
    return math.exp(x), f"extrapolated_{side}"


def step_times(split: Split, options: Options, built: dict | None = None) -> dict:
    """Median training-step time of every trained proposal at every S (alternated rounds);
    ``in_batch`` has one S, ``batch_size - 1``; the full softmax is listed under S = 0.
    ``built``: trainers by ``(proposal, S)`` to reuse (their tracing is done)."""
    batch = next(iter(make_dataset(split.train, batch_size=options.batch_size, seed=options.seed,
                                   drop_remainder=True)))  # fmt: skip
    users, items, calls, keys = batch["user_id"], batch["item_id"], {}, {}
    variants = [(None, 0), ("in_batch", options.batch_size - 1)]
    variants += [(p, s) for p in TRAINED if p != "in_batch" for s in options.bias_num_sampled]
    for proposal, s in variants:
        trainer = (built or {}).get((proposal, s)) or Trainer(split, proposal, s, options)
        name = f"{proposal or 'full_softmax'}@{s}"
        calls[name] = lambda t=trainer: t.step(users, items)
        keys[name] = (proposal or "full_softmax", s)
        if proposal == "kernel_mixture":  # its rebuild is timed apart and amortised below
            trainer.rebuild_every, calls["rebuild"] = 0, trainer.rebuild
    timings = harness.time_round_robin(calls, repeats=options.step_repeats, desc="step times")
    out: dict[str, dict[int, dict]] = {}
    summaries = timings.summaries()
    rebuild = summaries.pop("rebuild")
    for name, summary in summaries.items():
        if keys[name][0] == "kernel_mixture":  # the step plus 1/k of a rebuild
            share = {
                k: rebuild[k] / options.kernel_rebuild_every for k in ("median_ms", "cpu_median_ms")
            }
            summary = {**summary, "step_median_ms": summary["median_ms"],
                       "rebuild_median_ms": rebuild["median_ms"],
                       **{k: summary[k] + v for k, v in share.items()}}  # fmt: skip
        out.setdefault(keys[name][0], {})[keys[name][1]] = summary
    return out


def _loglog(x: Sequence[float], y: Sequence[float], at: float) -> float | None:
    """``y(at)`` by linear interpolation in log-log coordinates; None outside ``x``'s range."""
    order = np.argsort(x)
    lx = np.log(np.asarray(x, float)[order])
    ly = np.log(np.maximum(np.asarray(y, float)[order], 1e-300))
    if not lx[0] <= math.log(at) <= lx[-1]:
        return None
    return float(math.exp(np.interp(math.log(at), lx, ly)))


def equal_time(points: list[dict], times: dict, options: Options) -> list[dict]:
    """For each budget (the unigram step at each S): the S each proposal affords (log-log in its
    step times, None outside the grid) and its ``tf`` item-table bias there."""
    grid = options.bias_num_sampled
    curve = {(p["proposal"], p["num_sampled"]): p["tf"]["item_table"]["bias"] for p in points}
    rows = []
    for ref, proposal in itertools.product(grid, TRAINED):
        budget = times["unigram"][ref]["median_ms"]
        if proposal == "in_batch":
            s = options.batch_size - 1
            s = s if times[proposal][s]["median_ms"] <= budget else None
        else:
            s = _loglog([times[proposal][g]["median_ms"] for g in grid], grid, budget)
        bias = None if s is None else _loglog(grid, [curve[(proposal, g)] for g in grid], s)
        rows.append({"budget_ms": budget, "unigram_num_sampled": ref, "proposal": proposal,
                     "num_sampled": s, "bias": bias})  # fmt: skip
    return rows


def sample_ratios(points: list[dict], num_sampled: Sequence[int]) -> list[dict]:
    """Per metric, convention, part, kernel proposal and reference S: the S the kernel needs to
    match the unigram (:func:`samples_to_reach`), ``ratio = reference S / kernel S``."""
    by_key = {(p["proposal"], p["num_sampled"]): p for p in points}
    grid, ratios = sorted(num_sampled), []
    kernels = ("kernel", "kernel_mixture")
    for metric, c, part, proposal in itertools.product(RATIO_METRICS, CONVENTIONS, PARTS, kernels):
        curve = {k: [by_key[(k, s)][c][part][metric] for s in grid] for k in ("unigram", proposal)}
        for ref in (r for r in REFERENCE_S if r in grid):
            target = curve["unigram"][grid.index(ref)]
            kernel_s, how = samples_to_reach(grid, curve[proposal], target)
            ratios.append({
                "metric": metric, "convention": c, "part": part, "proposal": proposal,
                "baseline": "unigram", "reference_num_sampled": ref, "baseline_value": target,
                "kernel_num_sampled": kernel_s, "how": how,
                "ratio": ref / kernel_s if kernel_s else None,
            })  # fmt: skip
    return ratios


def study_dataset(name: str, split: Split, options: Options, index: int) -> dict:
    """Parts (a) and (b), step times and the equal-time comparison on one dataset."""
    train, test = split.train, split.test
    data = {
        "num_users": train.num_users, "num_items": train.num_items, "train_rows": len(train),
        "test_rows": len(test), "test_users": int(np.unique(test.user_ids).size),
        "items_without_training_rows": int(np.sum(train.item_counts == 0)),
        "split": split.report.method,
    }  # fmt: skip
    seconds = max(options.min_train_seconds, options.train_seconds * train.num_items / 1e4)
    entry: dict[str, Any] = {"data": data, "train_seconds": seconds}
    LOG.info("%s: %s; %.0f s of training per model", name, data, seconds)
    popularity = evaluate(None, split, options)
    runs, trainers = [], {}
    for proposal in (None, *TRAINED):
        trainer = Trainer(split, proposal, options.recall_num_sampled, options)
        key = {None: 0, "in_batch": options.batch_size - 1}.get(proposal, trainer.num_sampled)
        trainers[(proposal, key)] = trainer
        record = trainer.train_for(seconds)
        metrics = evaluate(trainer.model, split, options)
        runs.append({"proposal": proposal or "full_softmax",
                     "num_sampled": proposal and trainer.num_sampled, **record,
                     "metrics": metrics})  # fmt: skip
        LOG.info("%s: %s: Recall@20 %.4f after %d steps", name, runs[-1]["proposal"],
                 metrics["recall@20"], record["steps"])  # fmt: skip
    # Part (a) on the full-softmax model; the step times (the trained trainers reused).
    entry["bias"] = bias = gradient_bias(trainers[(None, 0)].model, split, options, index)
    bias["ratios"] = sample_ratios(bias["points"], options.bias_num_sampled)
    entry["step_ms"] = step_times(split, options, trainers)
    entry["equal_time"] = equal_time(bias["points"], entry["step_ms"], options)
    entry["recall"] = {"popularity": popularity, "runs": runs}
    return entry


def write_plots(report: dict, output: Path) -> list[str]:
    """``bias_<dataset>.png`` (bias against S and against step time) and ``bias_recall.png``."""
    plt = harness.pyplot()
    written = []
    for name, entry in report["datasets"].items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        times = {p: {int(s): t for s, t in d.items()} for p, d in entry["step_ms"].items()}  # JSON
        curves = {q: sorted((p["num_sampled"], p["tf"]["item_table"]["bias"])
                            for p in entry["bias"]["points"] if p["proposal"] == q)
                  for q in PROPOSALS}  # (S, tf item-table bias) by S  # fmt: skip
        for proposal, curve in curves.items():
            axes[0].plot(*zip(*curve, strict=True), marker="o", label=proposal)
            if proposal in times and proposal != "in_batch":
                ms = [times[proposal][s]["median_ms"] for s, _ in curve]
                axes[1].plot(ms, [b for _, b in curve], marker="o", label=proposal)
        ((s, timing),) = times["in_batch"].items()
        bias = _loglog(*zip(*curves["in_batch"], strict=True), s)
        if bias is not None:
            axes[1].plot([timing["median_ms"]], [bias], marker="*", markersize=12, label="in_batch")
        for ax, xlabel in zip(axes, ("S (samples)", "training step (ms)"), strict=True):
            ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="gradient bias (tf)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{name}: {entry['data']['num_items']} items")
        written.append(harness.save_figure(fig, output.parent / f"bias_{name}.png").name)
    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(report["datasets"])
    recalls = [{"popularity": d["recall"]["popularity"],
                **{r["proposal"]: r["metrics"] for r in d["recall"]["runs"]}}
               for d in report["datasets"].values()]  # fmt: skip
    for k, proposal in enumerate(("popularity", "full_softmax", *TRAINED)):
        values = [metrics[proposal]["recall@20"] for metrics in recalls]
        ax.bar(np.arange(len(names)) + 0.12 * k, values, width=0.12, label=proposal)
    ax.set_xticks(np.arange(len(names)) + 0.36, names)
    ax.set(ylabel="Recall@20 after equal wall time")
    ax.legend(fontsize=7)
    written.append(harness.save_figure(fig, output.parent / "bias_recall.png").name)
    return written


def main(argv: Sequence[str] | None = None) -> dict:
    options, args = harness.parse_options(
        Options, argv, prog="python -m pipelines.bench_bias", description=__doc__,
        output="benchmarks/bias.json", quick=QUICK,
    )  # fmt: skip
    bench = harness.Benchmark("pipelines.bench_bias", options, schema_version=SCHEMA_VERSION)
    splits, skipped = load_datasets(options)
    datasets: dict[str, Any] = {}
    for index, (name, split) in enumerate(splits.items()):
        datasets[name] = study_dataset(name, split, options, index)
        harness.write_json(args.output, bench.report(datasets=datasets, skipped=skipped,
                                                     complete=False))  # fmt: skip
    report = bench.report(datasets=datasets, skipped=skipped, complete=True)
    report["plots"] = write_plots(report, Path(args.output))
    harness.write_json(args.output, report)
    return report


if __name__ == "__main__":
    main()

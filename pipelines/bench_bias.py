"""Study: gradient bias of sampled softmax against the number of samples and against step time,
and ranking quality after training for the same wall time, for fixed and adaptive proposals.

The claim of Blanc & Rendle (ICML 2018, "Adaptive Sampled Softmax with Kernel Based Sampling",
arXiv 1712.00527), checked on our data: the quadratic kernel ``q(i | h) ∝ α·(hᵀwᵢ)² + 1`` reaches
a given gradient bias with fewer samples than a fixed proposal. Samples are not the cost, time
is: so the study also measures the training step of every proposal and compares at equal step
time, and trains every proposal for the same wall time. Run::

    python -m pipelines.bench_bias --output benchmarks/bias.json

It writes the JSON and PNG plots beside it (``bias_<dataset>.png``: bias against S and against
step time; ``bias_recall.png``: Recall@20 after equal wall time). ``--quick``: a smoke test.

**Model.** Matrix factorisation (two ``recsampled.models.Tower`` of IDs), logits ``oᵢ = hᵀwᵢ``,
no biases, Adagrad; the batch's summed loss (``recsampled.sampled_softmax_loss``, accidental hits
removed; ``recsampled.full_softmax_loss`` for the full softmax).

**Proposals**, ``S`` draws with replacement, expected counts ``S·q``:

- ``uniform``: ``1/n``; ``unigram``: ∝ training count + 1; both shared by the batch.
- ``in_batch``: the other rows' positives, corrected by ``log(B·p_i)`` with ``p_i`` the training
  frequency (TFRS's in-batch softmax with logQ; ``S = B - 1``). For part (a) its negatives are
  modelled as ``S`` draws from ``p`` (what a batch of ``S + 1`` rows is, up to the joint draw).
- ``kernel``: per query, ``q(i | h)`` with α = 100, every item scored (exact; the tree's
  per-query draws have the same distribution and were slower at these sizes).
- ``kernel_mixture``: ``S`` ids shared by the batch from ``q̄ = (1/B)·Σ_b q(· | h_b)``
  (``QuadraticKernelSampler``, batch-mixture mode; its tree updated with the rows each training
  step changed, so it follows the model exactly).
- ``softmax``: the model's own ``p(i | h)`` (part (a) only: the ideal, as costly as the full).

**Part (a): gradient bias on a fixed model** (the full-softmax model of part (b)). For ``B``
training pairs the full-softmax gradient ``g`` (w.r.t. the item table and the queries) against
the sampled ``ĝ``: ``bias = ‖E[ĝ] - g‖ / ‖g‖`` with ``E[ĝ]`` exact (:func:`expected_coefficients`,
a Laplace-transform integral per example; a shared sample has the same per-row marginals), and
the error of one draw ``(1/R)·Σ_r ‖ĝ_r - g‖ / ‖g‖`` from ``R`` draws of the library's samplers
(``mc_check`` ≈ 1 when they agree with the exact expectation). Two conventions for the positive:
``negatives_only`` (``o'_y = o_y``, Blanc & Rendle's estimator) and ``tf`` (``o'_y = o_y -
log(S·q_y)``, as ``tf.nn.sampled_softmax_loss`` and the library train). From the curves, the S
at which each proposal reaches the unigram's bias at a reference S (``ratios``).

**Step time.** One training step (sampling, loss, gradients, Adagrad) per proposal and S on the
dataset's model, alternated round by round (``pipelines.harness``). **Equal step time**: for
each budget (the unigram step at each S), the S each proposal affords in that time (log-log
interpolation of its step time) and its bias there.

**Part (b)**: every proposal (and the full softmax) trains from the same seeded start for the
same wall time; then Recall@20 and NDCG@20 over the whole catalogue, training items removed
(``recsampled.evaluation.ranking_metrics``), beside popularity.

**Data.** MovieLens-100K (skipped where absent), a synthetic log with ~18k items and one with
``>= 10^5`` items (``recsampled.data.synthetic.generate``), split by ``random_holdout``.
"""

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

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import recsampled  # noqa: E402  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from pipelines import harness  # noqa: E402
from recsampled.data import make_dataset, random_holdout, read_interactions  # noqa: E402
from recsampled.data import synthetic as synthetic_data  # noqa: E402
from recsampled.data.splits import Split  # noqa: E402
from recsampled.evaluation import (  # noqa: E402
    embedding_scores,
    popularity_scores,
    ranking_metrics,
    sample_users,
)
from recsampled.models import Tower  # noqa: E402
from recsampled.samplers import (  # noqa: E402
    QuadraticKernelSampler,
    SampledValues,
    UniformSampler,
    UnigramSampler,
)

SCHEMA_VERSION = 2
PROPOSALS = ("uniform", "unigram", "in_batch", "kernel", "kernel_mixture", "softmax")
TRAINED = ("uniform", "unigram", "in_batch", "kernel", "kernel_mixture")
CONVENTIONS = ("negatives_only", "tf")
PARTS = ("item_table", "queries")
REFERENCE_S = (1024, 256, 64)
MOVIELENS_100K = Path(__file__).resolve().parents[1].parent / "shared/datasets/movielens-100k"
LOG = logging.getLogger("pipelines.bench_bias")


@dataclasses.dataclass(frozen=True)
class Options:
    """Settings of one run (the defaults are those of the published numbers).

    Attributes:
        movielens_path: folder (or ``u.data``) of MovieLens-100K; empty leaves it out.
        synthetic_items: catalogue sizes of the synthetic logs (``generate``'s ``num_items``;
            users, interactions and clusters scale with it).
        test_fraction: share of each user's interactions held out (``random_holdout``).
        embedding_dim: D.
        batch_size: B of training (``in_batch``: S = B - 1).
        learning_rate: Adagrad's.
        train_seconds: wall-clock training budget of every model, per 10^4 catalogue items
            (at least ``min_train_seconds``).
        min_train_seconds: the least training budget.
        alpha: α of the quadratic kernel.
        bias_num_sampled: S of part (a) and of the step times.
        bias_batches: batches of training pairs the bias is averaged over.
        bias_batch_size: B of part (a).
        bias_repeats: R, draws per (batch, proposal, S).
        step_repeats: timed steps per (proposal, S).
        recall_num_sampled: S of part (b).
        ks: cut-offs of the ranking metrics (20 is the one reported).
        max_eval_users: test users evaluated per dataset (a seeded sample).
        seed: seed of the data split, initial weights, batch order and every draw.
    """

    movielens_path: str = str(MOVIELENS_100K)
    synthetic_items: tuple[int, ...] = (20_000, 100_000)
    test_fraction: float = 0.2
    embedding_dim: int = 32
    batch_size: int = 256
    learning_rate: float = 0.2
    train_seconds: float = 4.0
    min_train_seconds: float = 20.0
    alpha: float = 100.0
    bias_num_sampled: tuple[int, ...] = (16, 64, 256, 1024)
    bias_batches: int = 2
    bias_batch_size: int = 32
    bias_repeats: int = 4
    step_repeats: int = 3
    recall_num_sampled: int = 256
    ks: tuple[int, ...] = (10, 20, 50)
    max_eval_users: int = 2_000
    seed: int = 0


QUICK = Options(
    movielens_path="", synthetic_items=(1_500,), batch_size=128, train_seconds=20.0,
    min_train_seconds=4.0, bias_num_sampled=(4, 32, 256), bias_batch_size=32, bias_repeats=8,
    step_repeats=2, recall_num_sampled=32, max_eval_users=300,
)  # fmt: skip


def load_datasets(options: Options) -> tuple[dict[str, Split], dict[str, str]]:
    """The splits of the study's datasets, and the reason for each one left out."""
    splits, skipped = {}, {}
    if options.movielens_path:
        path = Path(options.movielens_path)
        data_file = path / "u.data" if path.is_dir() else path
        if data_file.exists():
            log = read_interactions(data_file, format="movielens-100k")
            splits["movielens-100k"] = random_holdout(
                log, test_fraction=options.test_fraction, seed=options.seed
            )
        else:
            skipped["movielens-100k"] = f"{data_file} not found"
    for num_items in options.synthetic_items:
        # The published 20k-item log (5,000 users, 120,000 rows, 50 clusters), scaled.
        scale = num_items / 20_000
        log = synthetic_data.generate(
            num_users=max(100, round(5_000 * scale**0.5)), num_items=num_items,
            num_interactions=round(120_000 * scale**0.75), seed=options.seed,
            num_clusters=max(5, round(50 * scale**0.5)),
        ).to_interactions()  # fmt: skip
        name = "synthetic" if len(options.synthetic_items) == 1 else f"synthetic-{num_items}"
        splits[name] = random_holdout(log, test_fraction=options.test_fraction, seed=options.seed)
    return splits, skipped


def _describe(split: Split) -> dict:
    train, test = split.train, split.test
    return {
        "num_users": train.num_users, "num_items": train.num_items, "train_rows": len(train),
        "test_rows": len(test), "test_users": int(np.unique(test.user_ids).size),
        "items_without_training_rows": int(np.sum(train.item_counts == 0)),
        "split": split.report.method,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Proposals


class Categorical:
    """Per-row categorical distributions over ``[0, n)``, drawn exactly by inverse transform.

    The rows' cumulative sums, each scaled to end at 1 and shifted by its row index, are stacked
    into one increasing array, so one ``searchsorted`` draws for every row.

    Args:
        weights: ``[batch_size, n]`` non-negative, not all zero in any row.

    Example:
        >>> dist = Categorical(np.array([[0.0, 1.0, 3.0]]))
        >>> dist.probabilities
        array([[0.  , 0.25, 0.75]])
    """

    def __init__(self, weights: np.ndarray):
        weights = np.asarray(weights, np.float64)
        cdf = np.cumsum(weights, axis=1)
        total = cdf[:, -1:]
        self.probabilities = weights / total
        self.batch_size, self.num_classes = weights.shape
        self._rows = np.arange(self.batch_size)[:, np.newaxis]
        cdf /= total
        cdf += self._rows
        self._stacked = cdf.ravel()

    def draw(self, num_sampled: int, rng: np.random.Generator) -> np.ndarray:
        """``[batch_size, num_sampled]`` int64 ids, independent draws from each row."""
        u = rng.random((self.batch_size, num_sampled)) + self._rows
        flat = np.searchsorted(self._stacked, u.ravel(), side="right").reshape(u.shape)
        ids = flat - self._rows * self.num_classes
        return np.clip(ids, 0, self.num_classes - 1).astype(np.int64)

    def sampled_values(
        self, labels: np.ndarray, num_sampled: int, rng: np.random.Generator
    ) -> SampledValues:
        """One draw as the per-example triple: ``S·q`` of the drawn ids and of the labels."""
        ids = self.draw(num_sampled, rng)
        return _per_example_values(self.probabilities, labels, ids, num_sampled)


def _per_example_values(
    probabilities: np.ndarray, labels: np.ndarray, ids: np.ndarray, num_sampled: int
) -> SampledValues:
    labels = np.asarray(labels).reshape(len(labels), -1)
    return SampledValues(
        tf.constant(ids, tf.int64),
        tf.constant(num_sampled * np.take_along_axis(probabilities, labels, 1), tf.float32),
        tf.constant(num_sampled * np.take_along_axis(probabilities, ids, 1), tf.float32),
    )


def kernel_weights(
    query_embeddings: np.ndarray, item_embeddings: np.ndarray, alpha: float
) -> np.ndarray:
    """``[B, n]`` unnormalised quadratic-kernel masses ``α(hᵀwᵢ)² + 1``, in float64."""
    logits = np.asarray(query_embeddings, np.float64) @ np.asarray(item_embeddings, np.float64).T
    return alpha * logits * logits + 1.0


def softmax_weights(query_embeddings: np.ndarray, item_embeddings: np.ndarray) -> np.ndarray:
    """``[B, n]`` unnormalised softmax masses ``exp(oᵢ - max_j oⱼ)``, in float64."""
    logits = np.asarray(query_embeddings, np.float64) @ np.asarray(item_embeddings, np.float64).T
    return np.exp(logits - logits.max(axis=1, keepdims=True))


def unigram_sampler(train) -> UnigramSampler:
    """Unigram over training counts + 1 (every item has a chance)."""
    return UnigramSampler(counts=train.item_counts.astype(np.float64) + 1.0)


def batch_probability(train) -> np.ndarray:
    """``[n]`` training frequency ``p_i`` (the in-batch proposal)."""
    counts = train.item_counts.astype(np.float64)
    return counts / counts.sum()


# ---------------------------------------------------------------------------------------------
# Model and training


class MatrixFactorization(tf.Module):
    """User and item ID embeddings ``U``, ``W`` (``Tower``s without features; normal(0.1)
    initial weights, away from the saddle at zero); logits ``o = hᵀw``."""

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


def _train_step(model: MatrixFactorization, optimizer, num_sampled: int) -> Callable:
    """A ``tf.function`` step on the batch's summed loss (full softmax when ``num_sampled == 0``);
    returns the mean loss."""
    num_items = model.num_items

    @tf.function(autograph=False)
    def step(users: tf.Tensor, items: tf.Tensor, *sampled_values: tf.Tensor) -> tf.Tensor:
        labels = items[:, tf.newaxis]
        with tf.GradientTape() as tape:
            h = model.query_tower(users)
            if num_sampled == 0:
                losses = recsampled.full_softmax_loss(
                    model.item_table, model.biases, labels, h, num_items
                )
            else:
                losses = recsampled.sampled_softmax_loss(
                    model.item_table, model.biases, labels, h, num_sampled=num_sampled,
                    num_classes=num_items, sampled_values=sampled_values,
                )  # fmt: skip
            loss = tf.reduce_sum(losses)  # SUM over the batch, as TFRS's retrieval task
        variables = model.variables_to_train
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss / tf.cast(tf.shape(users)[0], loss.dtype)

    return step


class Trainer:
    """One model trained with one proposal (or the full softmax: ``proposal=None``).

    Args:
        split: the data.
        proposal: one of :data:`TRAINED`, or None.
        num_sampled: S (``in_batch``: ``batch_size - 1``; ignored for the full softmax).
        options: the study's settings.
    """

    def __init__(self, split: Split, proposal: str | None, num_sampled: int, options: Options):
        train = split.train
        tf.keras.utils.set_random_seed(options.seed)
        self.model = MatrixFactorization(train.num_users, train.num_items, options.embedding_dim)
        self.proposal, self.alpha = proposal, options.alpha
        self.num_sampled = 0 if proposal is None else num_sampled
        if proposal == "in_batch":
            self.num_sampled = options.batch_size
            self._batch_count = tf.constant(
                options.batch_size * batch_probability(train), tf.float32
            )
        optimizer = tf.keras.optimizers.Adagrad(learning_rate=options.learning_rate)
        self.step_fn = _train_step(self.model, optimizer, self.num_sampled)
        self.sampler: Any = {
            None: None, "in_batch": None,
            "uniform": UniformSampler(train.num_items), "unigram": unigram_sampler(train),
            "kernel": np.random.default_rng(options.seed),
            "kernel_mixture": QuadraticKernelSampler(
                self.model.item_table.numpy(), alpha=options.alpha, seed=options.seed
            ),
        }[proposal]  # fmt: skip
        if proposal in ("uniform", "unigram"):  # in the graph, as in a training step
            self._shared = tf.function(
                lambda labels: tuple(self.sampler.sample(labels, self.num_sampled, unique=False))
            )
        if proposal == "kernel_mixture":  # traced once: eager tree walks cost ~100 small ops
            self._mixture = tf.function(
                lambda labels, h: tuple(
                    self.sampler.sample(labels, self.num_sampled, unique=False, query_embeddings=h)
                )
            )
            self._update = tf.function(
                lambda ids, rows: self.sampler.update(ids, rows),
                input_signature=[
                    tf.TensorSpec([None], tf.int64),
                    tf.TensorSpec([None, options.embedding_dim]),
                ],
            )
        self.batches = make_dataset(
            train, batch_size=options.batch_size, seed=options.seed, drop_remainder=True
        ).repeat()
        self.sampling_seconds = 0.0

    def _values(self, users: tf.Tensor, items: tf.Tensor) -> tuple:
        labels = tf.cast(items, tf.int64)[:, tf.newaxis]
        if self.proposal == "in_batch":  # the batch's positives, counts B·p_i
            ids = tf.cast(items, tf.int64)
            return ids, tf.gather(self._batch_count, labels), tf.gather(self._batch_count, ids)
        if self.proposal == "kernel_mixture":
            return self._mixture(labels, tf.gather(self.model.user_table, users))
        if self.proposal == "kernel":  # every item scored: exact q(i | h), draws per query
            h = tf.gather(self.model.user_table, users).numpy()
            dist = Categorical(kernel_weights(h, self.model.item_table.numpy(), self.alpha))
            return tuple(dist.sampled_values(labels.numpy(), self.num_sampled, self.sampler))
        return self._shared(labels)

    def step(self, users: tf.Tensor, items: tf.Tensor) -> float:
        """One training step; returns the batch's mean loss."""
        values: tuple = ()
        if self.proposal is not None:
            start = time.perf_counter()
            values = self._values(users, items)
            self.sampling_seconds += time.perf_counter() - start
        loss = float(self.step_fn(users, items, *values))
        if self.proposal == "kernel_mixture":  # Adagrad changed only these rows: follow them
            start = time.perf_counter()
            touched = tf.unique(tf.concat([tf.cast(items, tf.int64), values[0]], 0)).y
            self._update(touched, tf.gather(self.model.item_table, touched))
            self.sampling_seconds += time.perf_counter() - start
        return loss

    def train_for(self, seconds: float) -> dict:
        """Trains until ``seconds`` of wall time have passed (after a first, tracing step that
        is not counted); returns the record."""
        batches = iter(self.batches)
        first = next(batches)
        losses = [self.step(first["user_id"], first["item_id"])]
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
    if model is None:
        score = popularity_scores(train.item_counts)
    else:
        score = embedding_scores(model.user_table.numpy(), model.item_table.numpy())
    metrics = ranking_metrics(
        score,
        num_users=train.num_users,
        num_items=train.num_items,
        train_user_ids=train.user_ids,
        train_item_ids=train.item_ids,
        test_user_ids=test.user_ids,
        test_item_ids=test.item_ids,
        ks=options.ks,
        users=users,
    )
    return metrics.as_dict()


# ---------------------------------------------------------------------------------------------
# Part (a): gradient bias


def _dense(gradient: tf.Tensor | tf.IndexedSlices, num_rows: int) -> tf.Tensor:
    if isinstance(gradient, tf.IndexedSlices):
        return tf.math.unsorted_segment_sum(gradient.values, gradient.indices, num_rows)
    return tf.convert_to_tensor(gradient)


def gradient_functions(item_table: tf.Tensor) -> tuple[Callable, Callable]:
    """``full(h, labels)`` and ``sampled(h, labels, S, ids, true_count, sampled_count)``.

    Both return dense gradients of the batch's mean loss: ``(d/dW [n, D], d/dH [B, D])``; the
    sampled one for each convention, ``negatives_only`` then ``tf``.
    """
    table = tf.Variable(item_table, trainable=True, name="fixed_item_table")
    num_items = int(table.shape[0])
    biases = tf.zeros([num_items])

    def grads(loss_fn: Callable, h: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(h)
            loss = tf.reduce_mean(loss_fn(h))
        g_table, g_h = tape.gradient(loss, [table, h])
        return _dense(g_table, num_items), g_h

    @tf.function(autograph=False)
    def full(h: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return grads(lambda x: recsampled.full_softmax_loss(table, biases, labels, x, num_items), h)

    @tf.function(autograph=False)
    def sampled(
        h: tf.Tensor,
        labels: tf.Tensor,
        num_sampled: int,
        ids: tf.Tensor,
        true_count: tf.Tensor,
        sampled_count: tf.Tensor,
    ) -> tuple[tf.Tensor, ...]:
        out = []
        for count in (tf.ones_like(true_count), true_count):  # negatives_only, tf
            out.extend(
                grads(
                    lambda x, c=count: recsampled.sampled_softmax_loss(
                        table,
                        biases,
                        labels,
                        x,
                        num_sampled=num_sampled,
                        num_classes=num_items,
                        sampled_values=(ids, c, sampled_count),
                        remove_accidental_hits=True,
                    ),
                    h,
                )
            )
        return tuple(out)

    return full, sampled


QUADRATURE_STEP = 0.25
"""Step ``h`` of the trapezoid rule in ``v = log t`` (error about ``exp(-π²/h)``, module docs)."""
QUADRATURE_RANGE = (1e-13, 1e9)
"""Range of ``t·Z`` covered by the quadrature nodes: the integrand is at most ``S`` near 0, so the
part left out below is under ``S·10^-13`` relative."""


def expected_coefficients(
    exp_logits: np.ndarray,
    label: int,
    proposal: np.ndarray,
    num_sampled: Sequence[int],
) -> dict[tuple[int, str], np.ndarray]:
    """Exact ``E[∂L̂/∂o]`` of one example for each S and convention (no Monte Carlo).

    With ``e = exp(o)``, ``Y_i = e_i / q_i`` (``Y_y = 0``: a draw of the label is removed) and
    ``T_m`` a sum of ``m`` i.i.d. draws of ``Y / S``, the sampled softmax gives the positive
    ``a / (a + X + T)`` and each drawn negative ``X_i / (a + X + T)`` with ``a = e_y``
    (``negatives_only``) or ``e_y / (S·q_y)`` (``tf``). Hence, exactly::

        E[∂L̂/∂o_i] = e_i · E[1 / (a + Y_i/S + T_{S-1})]            (i ≠ y)
        E[∂L̂/∂o_y] = a · E[1 / (a + T_S)] - 1

    and ``E[1/(c + T_m)] = S ∫ exp(-t·S·c) φ(t)^m dt`` with ``φ(t) = Σ_i q_i exp(-t·Y_i)``, the
    Laplace transform of ``Y``. The integral is a trapezoid rule in ``v = log t``, exponentially
    accurate for these integrands, on nodes spanning ``t·Z`` over :data:`QUADRATURE_RANGE`.
    Shared candidates (uniform, unigram) have the same per-example marginals, so the same
    expectation.

    Args:
        exp_logits: ``[n]`` ``exp(o - max o)``.
        label: ``y``.
        proposal: ``[n]`` ``q``, summing to 1.
        num_sampled: the S values.

    Returns:
        ``(S, convention)`` -> ``[n]`` expected logit gradient of this example's loss.

    Example:
        >>> e = np.array([1.0, 2.0, 3.0, 4.0])
        >>> q = np.array([0.0, 2.0, 3.0, 4.0]) / 9  # the softmax over the negatives of y = 0
        >>> c = expected_coefficients(e, 0, q, [5])[(5, "negatives_only")]
        >>> np.allclose(c, e / e.sum() - [1, 0, 0, 0])  # unbiased, as Blanc & Rendle prove
        True
    """
    e = np.asarray(exp_logits, np.float64)
    q = np.asarray(proposal, np.float64)
    total = e.sum()
    y_values = np.divide(e, q, out=np.zeros_like(e), where=q > 0)
    y_values[label] = 0.0
    low, high = (math.log(x / total) for x in QUADRATURE_RANGE)
    t = np.exp(np.arange(low, high + QUADRATURE_STEP, QUADRATURE_STEP))
    weights = QUADRATURE_STEP * t  # dt = t dv
    kernel = np.exp(-np.outer(y_values, t))  # [n, K]: exp(-t Y_i)
    phi = np.minimum(q @ kernel, 1.0)  # [K]
    log_phi = np.log(np.maximum(phi, 1e-300))
    keys, columns, positives = [], [], []
    for s in num_sampled:
        for convention in CONVENTIONS:
            with np.errstate(divide="ignore"):  # q_y = 0 has no `tf` convention
                a = e[label] if convention == "negatives_only" else e[label] / (s * q[label])
            base = weights * s * np.exp(-t * s * a)
            keys.append((s, convention))
            columns.append(base * np.exp((s - 1) * log_phi))
            with np.errstate(invalid="ignore"):
                positives.append(a * float(base @ np.exp(s * log_phi)) - 1.0)
    negatives = e[:, np.newaxis] * (kernel @ np.stack(columns, axis=1))  # [n, len(keys)]
    negatives[q <= 0] = 0.0  # never drawn: no gradient (the formula assumes q_i > 0)
    out = {}
    for k, key in enumerate(keys):
        out[key] = negatives[:, k].copy()
        out[key][label] = positives[k]
    return out


class GradientStats:
    """One gradient's exact expectation ``E[ĝ]`` against ``g``, and Monte Carlo draws ``ĝ_r``.

    Args:
        reference: ``g``, the full-softmax gradient.
        expected: ``E[ĝ]`` from :func:`expected_coefficients`.
    """

    def __init__(self, reference: np.ndarray, expected: np.ndarray):
        self.reference = np.asarray(reference, np.float64).ravel()
        self.expected = np.asarray(expected, np.float64).ravel()
        self.norm = _norm(self.reference)
        self.total = np.zeros_like(self.reference)
        self.sq_errors: list[float] = []
        self.cosines: list[float] = []

    def add(self, draw: np.ndarray) -> None:
        """Records one draw ``ĝ_r``."""
        g = np.asarray(draw, np.float64).ravel()
        self.total += g
        diff = g - self.reference
        self.sq_errors.append(_dot(diff, diff))
        self.cosines.append(_cosine(g, self.reference))

    def summary(self) -> dict[str, float]:
        """Bias and cosine of ``E[ĝ]``; per-draw error and cosine; the Monte Carlo check."""
        r = len(self.sq_errors)
        mean = self.total / r
        mean_sq_error = _norm(mean - self.reference) ** 2
        # Σ_r ‖ĝ_r - ḡ‖² = Σ_r ‖ĝ_r - g‖² - R‖ḡ - g‖²
        spread = max(sum(self.sq_errors) - r * mean_sq_error, 0.0) / (r - 1)
        deviation = _norm(mean - self.expected) ** 2
        return {
            "bias": _norm(self.expected - self.reference) / self.norm,
            "cosine": _cosine(self.expected, self.reference),
            "per_draw_error": float(np.mean(np.sqrt(self.sq_errors))) / self.norm,
            "per_draw_cosine": float(np.mean(self.cosines)),
            "mc_bias": math.sqrt(max(mean_sq_error - spread / r, 0.0)) / self.norm,
            "mc_noise": math.sqrt(spread / r) / self.norm,
            "mc_check": deviation / (spread / r) if spread > 0 else float("nan"),
        }


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    # Not `a @ b`: BLAS threads spinning on a shared machine make a 10^5-long dot take ~10 ms.
    return float(np.einsum("i,i->", a, b))


def _norm(a: np.ndarray) -> float:
    return math.sqrt(_dot(a, a))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    denominator = _norm(a) * _norm(b)
    return _dot(a, b) / denominator if denominator > 0 else 0.0


def _shared_values(probabilities: np.ndarray, labels: np.ndarray, s: int, rng) -> SampledValues:
    """``S`` draws shared by the batch from one ``[n]`` distribution, as the triple."""
    ids = Categorical(probabilities[np.newaxis]).draw(s, rng)[0]
    return SampledValues(
        tf.constant(ids, tf.int64),
        tf.constant(s * probabilities[labels][:, np.newaxis], tf.float32),
        tf.constant(s * probabilities[ids], tf.float32),
    )


def _batch_proposals(h_np, item_table, train, options, unigram_q) -> dict[str, np.ndarray]:
    """``[B, n]`` (or ``[n]``, shared) proposal of each kind for the batch's queries."""
    n = train.num_items
    kernel = Categorical(kernel_weights(h_np, item_table, options.alpha)).probabilities
    return {
        "uniform": np.full(n, 1.0 / n), "unigram": unigram_q,
        "in_batch": batch_probability(train), "kernel": kernel,
        "kernel_mixture": kernel.mean(axis=0),
        "softmax": Categorical(softmax_weights(h_np, item_table)).probabilities,
    }  # fmt: skip


def gradient_bias(model: MatrixFactorization, split: Split, options: Options, index: int) -> dict:
    """Part (a) on one dataset: exact bias, and per-draw error, of each proposal at each S.

    Draws: the library's samplers for ``uniform``, ``unigram`` and ``kernel_mixture`` (the
    tree), NumPy's exact draws for the others. Returns ``{"points": [...], "kernel_check"}``;
    each point holds per convention and part the :meth:`GradientStats.summary` averaged over the
    batches (with ``bias_std``).
    """
    train, grid = split.train, options.bias_num_sampled
    item_table, user_table = model.item_table.numpy(), model.user_table.numpy()
    table64 = item_table.astype(np.float64)
    full, sampled = gradient_functions(tf.constant(item_table))
    tf.random.set_seed(options.seed)
    unigram = unigram_sampler(train)
    unigram_q = unigram.probability(tf.range(train.num_items)).numpy().astype(np.float64)
    unigram_q /= unigram_q.sum()
    library = {
        "uniform": UniformSampler(train.num_items), "unigram": unigram,
        "kernel_mixture": QuadraticKernelSampler(item_table, alpha=options.alpha),
    }  # fmt: skip
    rng = np.random.default_rng([options.seed, index])
    per_batch: dict[tuple, list[dict]] = {}
    max_rel_diff = 0.0
    for b in range(options.bias_batches):
        rows = rng.choice(len(train), size=options.bias_batch_size, replace=False)
        items = train.item_ids[rows].astype(np.int64)
        h_np, labels_np = user_table[train.user_ids[rows]], items[:, np.newaxis]
        h, labels = tf.constant(h_np), tf.constant(labels_np)
        g_table, g_h = (x.numpy() for x in full(h, labels))
        proposals = _batch_proposals(h_np, item_table, train, options, unigram_q)
        tree_q = library["kernel_mixture"].probability(tf.range(train.num_items), h).numpy()
        max_rel_diff = max(
            max_rel_diff, float(np.max(np.abs(tree_q / proposals["kernel_mixture"] - 1)))
        )
        softmax_e = softmax_weights(h_np, item_table)
        for proposal, q_all in proposals.items():
            coefficients: dict[tuple[int, str], np.ndarray] = {}
            for i in range(len(rows)):  # exact E[∂L̂/∂o], row by row
                q = q_all if q_all.ndim == 1 else q_all[i]
                for key, value in expected_coefficients(
                    softmax_e[i], int(items[i]), q, grid
                ).items():
                    coefficients.setdefault(key, np.empty((len(rows), train.num_items)))[i] = value
            for s in grid:
                stats = {}
                for c in CONVENTIONS:  # E[ĝ] = (1/B)·Cᵀ H and (1/B)·C W
                    expected = coefficients[(s, c)] / len(rows)
                    stats[(c, "item_table")] = GradientStats(g_table, expected.T @ h_np)
                    stats[(c, "queries")] = GradientStats(g_h, expected @ table64)
                for r in range(options.bias_repeats):
                    draw_rng = np.random.default_rng([options.seed, index, b, s, r])
                    if proposal in library:
                        kwargs = {"query_embeddings": h} if proposal == "kernel_mixture" else {}
                        values = library[proposal].sample(labels, s, unique=False, **kwargs)
                    elif q_all.ndim == 1:
                        values = _shared_values(q_all, items, s, draw_rng)
                    else:
                        values = Categorical(q_all).sampled_values(labels_np, s, draw_rng)
                    outputs = sampled(h, labels, s, *values)
                    for k, convention in enumerate(CONVENTIONS):
                        stats[(convention, "item_table")].add(outputs[2 * k].numpy())
                        stats[(convention, "queries")].add(outputs[2 * k + 1].numpy())
                per_batch.setdefault((proposal, s), []).append(
                    {key: st.summary() for key, st in stats.items()}
                )
        LOG.info("  bias batch %d/%d done", b + 1, options.bias_batches)
    points = []
    for (proposal, s), batches in per_batch.items():
        point: dict[str, Any] = {"proposal": proposal, "num_sampled": s}
        for c in CONVENTIONS:
            point[c] = {}
            for p in PARTS:
                values = [batch[(c, p)] for batch in batches]
                summary = {k: float(np.nanmean([v[k] for v in values])) for k in values[0]}
                summary["bias_std"] = float(np.std([v["bias"] for v in values]))
                point[c][p] = summary
        points.append(point)
    return {
        "points": points,
        "kernel_check": {"max_relative_difference_of_tree_mixture": max_rel_diff},
    }


EXTRAPOLATION_LIMIT = 4.0
"""A bias curve is extended beyond its S grid by at most this factor."""


def samples_to_reach(
    num_sampled: Sequence[int], bias: Sequence[float], target: float
) -> tuple[float | None, str]:
    """The S at which a decreasing bias curve reaches ``target`` (log-log interpolation).

    Args:
        num_sampled: increasing S values.
        bias: the curve's bias at each S.
        target: the bias to reach.

    Returns:
        ``(S, how)``: ``how`` is ``"interpolated"``; ``"extrapolated_below"`` when the curve is
        already below ``target`` at its first S (extended by its first segment's slope, at most
        :data:`EXTRAPOLATION_LIMIT` times below the grid), ``"extrapolated_above"`` when it
        never reaches it (its last segment's slope, as far above). Farther than that, or along a
        segment that does not decrease, S is None and ``how`` is ``"below_grid"`` (the curve
        reaches ``target`` somewhere under ``S_min / EXTRAPOLATION_LIMIT``) or ``"above_grid"``.

    Example:
        >>> samples_to_reach([4, 16, 64], [0.4, 0.2, 0.1], 0.15)[0]  # doctest: +ELLIPSIS
        28.44...
    """
    s = np.log(np.asarray(num_sampled, np.float64))
    b = np.log(np.maximum(np.asarray(bias, np.float64), 1e-300))
    t = math.log(max(target, 1e-300))
    limit = math.log(EXTRAPOLATION_LIMIT)

    def along(i: int, j: int) -> float | None:
        slope = (b[j] - b[i]) / (s[j] - s[i])
        if not slope < 0:
            return None
        return float(s[i] + (t - b[i]) / slope)

    below = np.flatnonzero(b <= t)
    if below.size == 0:
        x = along(len(s) - 2, len(s) - 1)
        if x is None or x > s[-1] + limit:
            return None, "above_grid"
        return math.exp(x), "extrapolated_above"
    j = int(below[0])
    if j == 0:
        x = along(0, 1)
        if x is None or x < s[0] - limit:
            return None, "below_grid"
        return math.exp(x), "extrapolated_below"
    return math.exp(along(j - 1, j)), "interpolated"


def step_times(split: Split, options: Options) -> dict[str, dict[int, dict]]:
    """Median training-step time of every trained proposal at every S (alternated rounds).

    ``in_batch`` has one S, ``batch_size - 1``; the full softmax is listed under S = 0.
    """
    batch = next(iter(make_dataset(split.train, batch_size=options.batch_size, seed=options.seed,
                                   drop_remainder=True)))  # fmt: skip
    users, items = batch["user_id"], batch["item_id"]
    calls, keys = {}, {}
    variants = [(None, 0), ("in_batch", options.batch_size - 1)]
    variants += [(p, s) for p in TRAINED if p != "in_batch" for s in options.bias_num_sampled]
    for proposal, s in variants:
        trainer = Trainer(split, proposal, s, options)
        name = f"{proposal or 'full_softmax'}@{s}"
        calls[name], keys[name] = (lambda t=trainer: t.step(users, items)), (proposal, s)
    timings = harness.time_round_robin(calls, repeats=options.step_repeats, desc="step times")
    out: dict[str, dict[int, dict]] = {}
    for name, summary in timings.summaries().items():
        proposal, s = keys[name]
        out.setdefault(proposal or "full_softmax", {})[s] = summary
    return out


def _loglog(x: Sequence[float], y: Sequence[float], at: float) -> float | None:
    """``y(at)`` by linear interpolation in log-log coordinates; None outside ``x``'s range."""
    order = np.argsort(x)
    lx, ly = (
        np.log(np.asarray(x, float)[order]),
        np.log(np.maximum(np.asarray(y, float)[order], 1e-300)),
    )
    if not lx[0] <= math.log(at) <= lx[-1]:
        return None
    return float(math.exp(np.interp(math.log(at), lx, ly)))


def equal_time(
    points: list[dict], times: dict, options: Options, convention: str = "tf"
) -> list[dict]:
    """For each budget (the unigram step at each S): the S each proposal affords, its bias there.

    A proposal's step time is increasing in S; its S at a budget is interpolated log-log, and
    its bias at that S too (both only inside the measured grid: None outside, i.e. the
    proposal is slower than the budget even at its smallest S, or faster at its largest).
    """
    grid = options.bias_num_sampled
    curve = {(p["proposal"], p["num_sampled"]): p[convention]["item_table"]["bias"] for p in points}
    rows = []
    for ref in grid:
        budget = times["unigram"][ref]["median_ms"]
        for proposal in TRAINED:
            entry = {"budget_ms": budget, "unigram_num_sampled": ref, "proposal": proposal}
            if proposal == "in_batch":
                s = options.batch_size - 1
                ok = times[proposal][s]["median_ms"] <= budget
                s = s if ok else None
            else:
                step_ms = [times[proposal][g]["median_ms"] for g in grid]
                s = _loglog(step_ms, grid, budget)
            bias = None if s is None else _loglog(grid, [curve[(proposal, g)] for g in grid], s)
            rows.append({**entry, "num_sampled": s, "bias": bias})
    return rows


RATIO_METRICS = ("bias", "per_draw_error")


def sample_ratios(points: list[dict], num_sampled: Sequence[int]) -> list[dict]:
    """The S each kernel proposal needs to match the unigram at a reference S.

    For each metric, convention, gradient part, kernel proposal and reference S:
    ``kernel_num_sampled`` by :func:`samples_to_reach`, and ``ratio = reference S / kernel S``
    ("times fewer samples"; below 1: the kernel needs more).
    """
    by_key = {(p["proposal"], p["num_sampled"]): p for p in points}
    grid, ratios = sorted(num_sampled), []
    for metric, c, part in itertools.product(RATIO_METRICS, CONVENTIONS, PARTS):
        curve = {
            name: [by_key[(name, s)][c][part][metric] for s in grid]
            for name in ("unigram", "kernel", "kernel_mixture")
        }
        for proposal in ("kernel", "kernel_mixture"):
            for ref in (r for r in REFERENCE_S if r in grid):
                target = curve["unigram"][grid.index(ref)]
                kernel_s, how = samples_to_reach(grid, curve[proposal], target)
                ratios.append({
                    "metric": metric, "convention": c, "part": part, "proposal": proposal,
                    "baseline": "unigram", "reference_num_sampled": ref,
                    "baseline_value": target, "kernel_num_sampled": kernel_s, "how": how,
                    "ratio": ref / kernel_s if kernel_s else None,
                })  # fmt: skip
    return ratios


def study_dataset(name: str, split: Split, options: Options, index: int) -> dict:
    """Parts (a) and (b), step times and the equal-time comparison on one dataset."""
    entry: dict[str, Any] = {"data": _describe(split)}
    seconds = max(options.min_train_seconds, options.train_seconds * split.train.num_items / 1e4)
    entry["train_seconds"] = seconds
    LOG.info("%s: %s; %.0f s of training per model", name, entry["data"], seconds)
    popularity = evaluate(None, split, options)
    full = Trainer(split, None, 0, options)
    runs = [{"proposal": "full_softmax", "num_sampled": None, **full.train_for(seconds),
             "metrics": evaluate(full.model, split, options)}]  # fmt: skip
    LOG.info("%s: full softmax Recall@20 %.4f", name, runs[0]["metrics"]["recall@20"])
    entry["bias"] = gradient_bias(full.model, split, options, index)
    entry["bias"]["ratios"] = sample_ratios(entry["bias"]["points"], options.bias_num_sampled)
    entry["step_ms"] = step_times(split, options)
    entry["equal_time"] = equal_time(entry["bias"]["points"], entry["step_ms"], options)
    for proposal in TRAINED:
        trainer = Trainer(split, proposal, options.recall_num_sampled, options)
        record = trainer.train_for(seconds)
        metrics = evaluate(trainer.model, split, options)
        runs.append({"proposal": proposal, "num_sampled": trainer.num_sampled, **record,
                     "metrics": metrics})  # fmt: skip
        LOG.info("%s: %s: Recall@20 %.4f after %d steps", name, proposal,
                 metrics["recall@20"], record["steps"])  # fmt: skip
    entry["recall"] = {"popularity": popularity, "runs": runs}
    return entry


def _bias_curve(entry: dict, proposal: str) -> list[tuple[int, float]]:
    """``(S, bias)`` of one proposal (``tf`` convention, item table), by S."""
    return sorted(
        (p["num_sampled"], p["tf"]["item_table"]["bias"])
        for p in entry["bias"]["points"]
        if p["proposal"] == proposal
    )


def write_plots(report: dict, output: Path) -> list[str]:
    """``bias_<dataset>.png`` (bias against S and against step time) and ``bias_recall.png``."""
    plt = harness.pyplot()
    written = []
    for name, entry in report["datasets"].items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        times = {p: {int(s): t for s, t in d.items()} for p, d in entry["step_ms"].items()}
        for proposal in PROPOSALS:  # (the keys of times are strings once read from JSON)
            curve = _bias_curve(entry, proposal)
            axes[0].plot(*zip(*curve, strict=True), marker="o", label=proposal)
            if proposal in times and proposal != "in_batch":
                ms = [times[proposal][s]["median_ms"] for s, _ in curve]
                axes[1].plot(ms, [b for _, b in curve], marker="o", label=proposal)
        ((s, timing),) = times["in_batch"].items()
        bias = _loglog(*zip(*_bias_curve(entry, "in_batch"), strict=True), s)
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
    for k, proposal in enumerate(("popularity", "full_softmax", *TRAINED)):
        values = []
        for name in names:
            recall = report["datasets"][name]["recall"]
            runs = {r["proposal"]: r["metrics"] for r in recall["runs"]}
            values.append(runs.get(proposal, recall["popularity"])["recall@20"])
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
    harness.configure_logging()
    bench = harness.Benchmark("pipelines.bench_bias", options, schema_version=SCHEMA_VERSION)
    splits, skipped = load_datasets(options)
    datasets: dict[str, Any] = {}
    for index, (name, split) in enumerate(splits.items()):
        datasets[name] = study_dataset(name, split, options, index)
        report = bench.report(datasets=datasets, skipped=skipped, complete=False)
        harness.write_json(args.output, report)
    report = bench.report(datasets=datasets, skipped=skipped, complete=True)
    report["plots"] = write_plots(report, Path(args.output))
    harness.write_json(args.output, report)
    return report


if __name__ == "__main__":
    main()

"""Study: gradient bias of sampled softmax against the number of samples, and Recall@20 after
training, for uniform, unigram, quadratic-kernel and exact-softmax proposals.

The central claim of Blanc & Rendle (ICML 2018, "Adaptive Sampled Softmax with Kernel Based
Sampling", arXiv 1712.00527), checked on our data rather than assumed: a proposal that follows the
model, the quadratic kernel ``q(i | h) ∝ α·(hᵀwᵢ)² + 1``, reaches a given gradient bias with
several times fewer samples than a fixed one (unigram). Run::

    python -m pipelines.bench_bias --output benchmarks/bias.json

It writes the JSON, a Markdown report beside it (``bias.md``) and PNG plots (``bias_<dataset>.png``:
bias against S; ``bias_recall.png``: Recall@20 against S). ``--quick`` is a smoke-test size.

**Model.** Matrix factorisation: user and item ID embeddings (two ``recsampled.models.Tower``
without features or normalisation), logits ``oᵢ = hᵀwᵢ`` with ``h`` the user's row of ``U`` and
``wᵢ`` the item's row of ``W``, no biases; Adagrad on the training pairs (``make_dataset``).

**Proposals** (distributions over all ``n`` items, ``S`` draws with replacement per step):

- ``uniform``: ``1/n`` (``UniformSampler``); candidates shared by the batch.
- ``unigram``: ∝ training count + 1 (``UnigramSampler``; the +1 gives every item a chance, without
  which the estimator is not even consistent); shared by the batch.
- ``kernel``: ``q(i|h) = (α(hᵀwᵢ)² + 1) / Σⱼ (α(hᵀwⱼ)² + 1)``, ``α = 100``; per example
  (``QuadraticKernelSampler``, or :class:`BruteForceKernel`, the exact reference of this module).
- ``softmax``: the model's own ``p(i|h) = exp(oᵢ) / Z``; per example (the ideal, as costly as the
  full softmax).

**Sampled loss.** ``recsampled.sampled_softmax_loss`` with accidental-hit removal, fed the
proposal's ``(ids, true_count, sampled_count)`` with ``sampled_count = S·q(s|h)``, so that a
sampled negative's logit is ``o'_s = o_s - log(S·q(s|h))``. Two conventions for the positive:

- ``negatives_only``: ``o'_y = o_y`` (true count 1). The positive is always present, not sampled,
  so only the negatives are importance-weighted: the estimator Blanc & Rendle analyse, exactly
  unbiased when ``q`` is the softmax over the negatives (here: over all items, with hits removed,
  which leaves a bias of order ``p_y²``).
- ``tf``: ``o'_y = o_y - log(S·q(y|h))`` too, as ``tf.nn.sampled_softmax_loss`` does with a
  sampler's ``true_expected_count`` (the library's default, and what part (b) trains with). Even
  the softmax proposal is then biased: every corrected logit equals ``log Z - log S``, so the
  positive gets ``1/(S+1)`` of the sampled softmax instead of ``p_y``.

**Part (a): gradient bias on a fixed trained model** (the full-softmax model of part (b)). For a
batch of ``B`` training pairs with query embeddings ``H`` (``[B, D]``), the full-softmax loss
``L = (1/B) Σ_b [log Σᵢ exp(o_bi) - o_b,y_b]`` has the gradient ``g = ∂L/∂θ`` for ``θ = W``
(the item table, dense ``[n, D]``) and for ``θ = H`` (the query embeddings), each reported
separately. One draw of the candidates gives the sampled gradient ``ĝ``. Both gradients are
linear in the logit gradients (``∂L/∂W = (1/B)·Cᵀ H``, ``∂L/∂H = (1/B)·C W`` with ``C_bi =
∂L_b/∂o_bi``), so ``E[ĝ]`` needs only ``E[∂L̂_b/∂o_bi]``, which :func:`expected_coefficients`
computes *exactly* (a one-dimensional Laplace-transform integral per example, no Monte Carlo
noise). Then, with ``R`` draws ``ĝ_1..ĝ_R`` and their mean ``ḡ``::

    bias       b = ‖E[ĝ] - g‖ / ‖g‖          cosine   cos(E[ĝ], g)
    per draw   (1/R) Σ_r ‖ĝ_r - g‖ / ‖g‖ and (1/R) Σ_r cos(ĝ_r, g): the error of one training
               step, bias and variance together
    MC check   ‖ḡ - E[ĝ]‖² / (V / R),  V = (1/(R-1)) Σ_r ‖ĝ_r - ḡ‖²: about 1 when the draws
               (of the library's samplers and loss) agree with the exact expectation

each averaged over the batches. From the bias curves we interpolate (linearly in log S and log b)
the ``S`` at which the kernel reaches the unigram's bias at ``S_ref`` (1024, 256 and 64); the
ratio ``S_ref / S_kernel`` is the claim's "times fewer samples".

**Part (b): Recall@20 after training** with each sampler at each S (the ``tf`` convention), beside
the full softmax and the popularity baseline: the whole catalogue ranked for every test user, the
user's training items removed (``recsampled.evaluation.ranking_metrics``, DESIGN.md's protocol).
The kernel proposal follows the model as it trains (the brute-force one reads ``W`` at every
step; with ``--train-kernel-impl tree`` the tree is updated with the rows each step changed, which
Adagrad confines to the rows of the step's gradient).

**Data.** MovieLens-100K (``u.data``; skipped, and reported as such, where absent) and a seeded
synthetic log with a larger catalogue (``recsampled.data.synthetic.generate``), each split by
``random_holdout`` (20% of each user's interactions held out).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One BLAS thread: on a shared 2-core machine OpenBLAS's spinning threads make NumPy's matrix
# products several times slower (measured: a 4·10^4-long dot 7 ms instead of 0.01 ms). Takes
# effect when this module is run as a script (before NumPy is first imported).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import recsampled  # noqa: E402  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)
from pipelines.bench_loss import machine_info  # noqa: E402
from recsampled.data import Interactions, make_dataset, random_holdout, read_interactions  # noqa: E402
from recsampled.data import synthetic as synthetic_data  # noqa: E402
from recsampled.data.splits import Split  # noqa: E402
from recsampled.evaluation import (  # noqa: E402
    embedding_scores,
    popularity_scores,
    ranking_metrics,
    sample_users,
)
from recsampled.models import Tower  # noqa: E402
from recsampled.samplers import SampledValues, UniformSampler, UnigramSampler  # noqa: E402

SCHEMA_VERSION = 1
PROPOSALS = ("uniform", "unigram", "kernel", "softmax")
CONVENTIONS = ("negatives_only", "tf")
PARTS = ("item_table", "queries")
REFERENCE_S = (1024, 256, 64)
MOVIELENS_100K = Path(__file__).resolve().parents[1].parent / "shared/datasets/movielens-100k"


@dataclasses.dataclass(frozen=True)
class BiasStudyConfig:
    """Settings of one run of the study (the defaults are those of the published tables).

    Attributes:
        movielens_path: folder (or ``u.data``) of MovieLens-100K; None leaves it out.
        synthetic: keyword arguments of ``recsampled.data.synthetic.generate``; None leaves it out.
        test_fraction: share of each user's interactions held out (``random_holdout``).
        embedding_dim: D.
        batch_size: B of training.
        learning_rate: Adagrad's.
        epochs: dataset name -> training epochs (every model of a dataset trains as long).
        alpha: α of the quadratic kernel.
        bias_num_sampled: S of part (a).
        bias_batches: batches of training pairs the bias is averaged over.
        bias_batch_size: B of part (a).
        bias_repeats: R, draws per (batch, proposal, S).
        recall_num_sampled: S of part (b).
        recall_samplers: proposals trained in part (b) (the full softmax always is).
        ks: cut-offs of the ranking metrics (20 is the one reported).
        max_eval_users: test users evaluated per dataset (a seeded sample; None for all).
        kernel_impl: kernel sampler of part (a): ``"auto"`` (``QuadraticKernelSampler`` if it
            can be imported, else the brute force), ``"tree"`` or ``"brute"``.
        train_kernel_impl: kernel sampler of part (b), the same choices. The brute force by
            default: at these catalogue sizes it is the faster of the two on CPU (scoring 2·10^4
            items is cheaper than walking the tree S times per query), and its draws have the
            same distribution (part (a) checks the tree against it).
        seed: seed of the data split, initial weights, batch order and every draw.
    """

    movielens_path: str | None = str(MOVIELENS_100K)
    synthetic: dict[str, int] | None = dataclasses.field(
        default_factory=lambda: {
            "num_users": 5_000,
            "num_items": 20_000,
            "num_interactions": 120_000,
            "num_clusters": 50,
        }
    )
    test_fraction: float = 0.2
    embedding_dim: int = 32
    batch_size: int = 256
    learning_rate: float = 0.2
    epochs: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"movielens-100k": 5, "synthetic": 3}
    )
    alpha: float = 100.0
    bias_num_sampled: tuple[int, ...] = (4, 16, 64, 256, 1024)
    bias_batches: int = 4
    bias_batch_size: int = 64
    bias_repeats: int = 12
    recall_num_sampled: tuple[int, ...] = (16, 64, 256)
    recall_samplers: tuple[str, ...] = ("uniform", "unigram", "kernel")
    ks: tuple[int, ...] = (10, 20, 50)
    max_eval_users: int | None = 2_000
    kernel_impl: str = "auto"
    train_kernel_impl: str = "brute"
    seed: int = 0


QUICK = BiasStudyConfig(
    movielens_path=None,
    synthetic={
        "num_users": 300,
        "num_items": 1_500,
        "num_interactions": 9_000,
        "num_clusters": 10,
    },
    batch_size=128,
    epochs={"movielens-100k": 1, "synthetic": 2},
    bias_num_sampled=(4, 32, 256),
    bias_batches=2,
    bias_batch_size=32,
    bias_repeats=8,
    recall_num_sampled=(32,),
    max_eval_users=300,
)


def _progress(message: str) -> None:
    print(f"[bench_bias {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Data


def load_datasets(config: BiasStudyConfig) -> tuple[dict[str, Split], dict[str, str]]:
    """The splits of the study's datasets, and the reason for each one left out.

    Returns:
        ``(splits, skipped)``: dataset name -> :class:`Split`; dataset name -> why it is absent.
    """
    splits, skipped = {}, {}
    if config.movielens_path is not None:
        path = Path(config.movielens_path)
        data_file = path / "u.data" if path.is_dir() else path
        if data_file.exists():
            log = read_interactions(data_file, format="movielens-100k")
            splits["movielens-100k"] = random_holdout(
                log, test_fraction=config.test_fraction, seed=config.seed
            )
        else:
            skipped["movielens-100k"] = f"{data_file} not found"
            _progress(f"MovieLens-100K skipped: {data_file} not found")
    if config.synthetic is not None:
        log = synthetic_data.generate(**config.synthetic, seed=config.seed).to_interactions()
        splits["synthetic"] = random_holdout(
            log, test_fraction=config.test_fraction, seed=config.seed
        )
    return splits, skipped


def _describe(split: Split) -> dict:
    train, test = split.train, split.test
    return {
        "num_users": train.num_users,
        "num_items": train.num_items,
        "train_rows": len(train),
        "test_rows": len(test),
        "test_users": int(np.unique(test.user_ids).size),
        "items_without_training_rows": int(np.sum(train.item_counts == 0)),
        "split": split.report.method,
    }


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


class BruteForceKernel:
    """The quadratic-kernel proposal by scoring every item: the exact reference.

    The contract of ``recsampled.samplers.QuadraticKernelSampler`` (per-example candidates and
    ``S·q`` expected counts) at ``O(B·n·D)`` per call. It reads the embeddings at every call, so
    ``rebuild`` and ``update`` have nothing to do.

    Args:
        embeddings: ``[n, D]`` item embeddings (a ``tf.Variable`` is read at every call).
        alpha: α.
        seed: seed of the draws.
    """

    def __init__(self, embeddings: Any, alpha: float = 100.0, seed: int | None = None):
        self.embeddings = embeddings
        self.alpha = float(alpha)
        self._rng = np.random.default_rng(seed)

    def _table(self) -> np.ndarray:
        table = self.embeddings
        return table.numpy() if hasattr(table, "numpy") else np.asarray(table)

    def distribution(self, query_embeddings: Any) -> Categorical:
        """The ``[B, n]`` proposal of each query."""
        h = np.asarray(query_embeddings)
        return Categorical(kernel_weights(h, self._table(), self.alpha))

    def sample(
        self,
        true_classes: Any,
        num_sampled: int,
        unique: bool = False,
        seed: int | None = None,
        *,
        query_embeddings: Any,
    ) -> SampledValues:
        """``num_sampled`` draws per query (with replacement), as the per-example triple."""
        if unique:
            raise ValueError("`unique` must be False: the kernel proposal draws with replacement.")
        rng = self._rng if seed is None else np.random.default_rng(seed)
        labels = np.asarray(true_classes, np.int64)
        return self.distribution(query_embeddings).sampled_values(labels, num_sampled, rng)

    def probability(self, ids: Any, query_embeddings: Any) -> np.ndarray:
        """``[B, k]`` ``q(i | h)`` of ``ids``."""
        dist = self.distribution(query_embeddings)
        return np.take_along_axis(dist.probabilities, np.asarray(ids, np.int64), 1)

    def rebuild(self, embeddings: Any = None) -> None:
        """Replaces the embeddings (nothing is cached)."""
        if embeddings is not None:
            self.embeddings = embeddings

    def update(self, ids: Any, rows: Any) -> None:
        """Nothing to do: the variable is read at every call."""


def tree_kernel_class() -> type | None:
    """``recsampled.samplers.QuadraticKernelSampler`` if it can be imported, else None."""
    try:
        from recsampled.samplers.kernel import QuadraticKernelSampler
    except ImportError:
        return None
    return QuadraticKernelSampler


def resolve_kernel_impl(kernel_impl: str) -> str:
    """``"tree"`` or ``"brute"`` for a ``kernel_impl`` setting (``"auto"`` prefers the tree)."""
    if kernel_impl not in ("auto", "tree", "brute"):
        raise ValueError(
            "`kernel_impl` must be 'auto', 'tree' or 'brute'. "
            f"Received: kernel_impl={kernel_impl!r}"
        )
    if kernel_impl == "brute":
        return "brute"
    if tree_kernel_class() is None:
        if kernel_impl == "tree":
            raise ImportError("recsampled.samplers.kernel.QuadraticKernelSampler is not available.")
        return "brute"
    return "tree"


def make_kernel(impl: str, embeddings: Any, alpha: float, seed: int) -> Any:
    """The kernel sampler of ``impl`` (``"tree"`` or ``"brute"``) over ``embeddings``."""
    if impl == "tree":
        return tree_kernel_class()(embeddings, alpha=alpha, seed=seed, mode="per_query")
    return BruteForceKernel(embeddings, alpha=alpha, seed=seed)


def unigram_sampler(train: Interactions) -> UnigramSampler:
    """Unigram over training counts + 1 (every item has a chance)."""
    return UnigramSampler(counts=train.item_counts.astype(np.float64) + 1.0)


# ---------------------------------------------------------------------------------------------
# Model and training


class MatrixFactorization(tf.Module):
    """User and item ID embeddings (``Tower``s without features); logits ``o = hᵀw``.

    Args:
        num_users: rows of ``U``.
        num_items: rows of ``W`` (n).
        embedding_dim: D.
        init_scale: standard deviation of the normal initial weights.
    """

    def __init__(self, num_users: int, num_items: int, embedding_dim: int, init_scale: float = 0.1):
        super().__init__(name="matrix_factorization")
        self.query_tower = Tower(num_users, embedding_dim, name="query_tower")
        self.candidate_tower = Tower(num_items, embedding_dim, name="candidate_tower")
        self.query_tower(tf.zeros([1], tf.int64))
        self.candidate_tower(tf.zeros([1], tf.int64))
        for table in (self.user_table, self.item_table):  # away from the saddle at zero
            table.assign(tf.random.normal(table.shape, stddev=init_scale))
        self.num_items = num_items
        self.biases = tf.zeros([num_items])

    @property
    def user_table(self) -> tf.Variable:
        """``U``: ``[num_users, D]``."""
        return self.query_tower.id_embedding.embeddings

    @property
    def item_table(self) -> tf.Variable:
        """``W``: ``[num_items, D]``."""
        return self.candidate_tower.id_embedding.embeddings

    @property
    def variables_to_train(self) -> list[tf.Variable]:
        """``[U, W]``."""
        return [self.user_table, self.item_table]


def _train_step(
    model: MatrixFactorization, optimizer: tf.keras.optimizers.Optimizer, num_sampled: int
) -> Callable:
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
                    model.item_table,
                    model.biases,
                    labels,
                    h,
                    num_sampled=num_sampled,
                    num_classes=num_items,
                    sampled_values=sampled_values,
                    remove_accidental_hits=True,
                )
            loss = tf.reduce_sum(losses)  # SUM over the batch, as TFRS's retrieval task
        variables = model.variables_to_train
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss / tf.cast(tf.shape(users)[0], loss.dtype)

    return step


def train_model(
    split: Split,
    *,
    proposal: str | None,
    num_sampled: int,
    epochs: int,
    config: BiasStudyConfig,
    kernel_impl: str,
) -> tuple[MatrixFactorization, dict]:
    """Trains a model from the same seeded start with the full softmax or one sampler.

    Args:
        split: the data.
        proposal: ``None`` for the full softmax, else ``"uniform"``, ``"unigram"``, ``"kernel"``.
        num_sampled: S (ignored for the full softmax).
        epochs: passes over the training pairs.
        config: the study's settings.
        kernel_impl: ``"tree"`` or ``"brute"``.

    Returns:
        The model and a record: ``loss`` per epoch, ``steps``, ``seconds``, ``seconds_sampling``.
    """
    train = split.train
    tf.keras.utils.set_random_seed(config.seed)
    model = MatrixFactorization(train.num_users, train.num_items, config.embedding_dim)
    optimizer = tf.keras.optimizers.Adagrad(learning_rate=config.learning_rate)
    s = 0 if proposal is None else num_sampled
    step = _train_step(model, optimizer, s)
    sampler: Any = None
    if proposal == "uniform":
        sampler = UniformSampler(train.num_items)
    elif proposal == "unigram":
        sampler = unigram_sampler(train)
    elif proposal == "kernel":
        sampler = make_kernel(kernel_impl, model.item_table, config.alpha, config.seed)
    elif proposal is not None:
        raise ValueError(f"Unknown proposal {proposal!r}.")
    dataset = make_dataset(
        train, batch_size=config.batch_size, seed=config.seed, drop_remainder=True
    )
    started, sampling, losses, steps = time.perf_counter(), 0.0, [], 0
    for _ in range(epochs):
        total, count = 0.0, 0
        for batch in dataset:
            users, items = batch["user_id"], batch["item_id"]
            values: tuple = ()
            if sampler is not None:
                t0 = time.perf_counter()
                labels = tf.cast(items, tf.int64)[:, tf.newaxis]
                if proposal == "kernel":
                    h = tf.gather(model.user_table, users)
                    values = tuple(sampler.sample(labels, s, unique=False, query_embeddings=h))
                else:
                    values = tuple(sampler.sample(labels, s, unique=False))
                sampling += time.perf_counter() - t0
            total += float(step(users, items, *values))
            count += 1
            if proposal == "kernel" and kernel_impl == "tree":
                t0 = time.perf_counter()
                touched = tf.unique(
                    tf.concat([tf.cast(items, tf.int64), tf.reshape(values[0], [-1])], 0)
                ).y
                sampler.update(touched, tf.gather(model.item_table, touched))
                sampling += time.perf_counter() - t0
        losses.append(total / max(count, 1))
        steps += count
    return model, {
        "loss": losses,
        "steps": steps,
        "seconds": time.perf_counter() - started,
        "seconds_sampling": sampling,
    }


def evaluate(model: MatrixFactorization | None, split: Split, config: BiasStudyConfig) -> dict:
    """Full-catalogue metrics (training items removed) of ``model``, or of popularity if None."""
    train, test = split.train, split.test
    users = sample_users(test.user_ids, config.max_eval_users, config.seed)
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
        ks=config.ks,
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


def gradient_bias(
    model: MatrixFactorization,
    split: Split,
    config: BiasStudyConfig,
    kernel_impl: str,
    *,
    dataset_index: int = 0,
) -> dict:
    """Part (a) on one dataset: exact bias, and per-draw error, of each proposal at each S.

    Returns:
        ``{"points": [...], "kernel_check": {...}, "seconds": ...}``; each point holds the
        proposal, S, and per convention and part the :meth:`GradientStats.summary` averaged over
        the batches (with ``bias_std``, its standard deviation over the batches).
    """
    started = time.perf_counter()
    train = split.train
    item_table = model.item_table.numpy()
    user_table = model.user_table.numpy()
    full, sampled = gradient_functions(tf.constant(item_table))
    tf.random.set_seed(config.seed)
    uniform, unigram = UniformSampler(train.num_items), unigram_sampler(train)
    unigram_q = unigram.probability(tf.range(train.num_items)).numpy().astype(np.float64)
    unigram_q /= unigram_q.sum()
    tree = None
    if kernel_impl == "tree":
        tree = make_kernel("tree", tf.constant(item_table), config.alpha, config.seed)
    rng = np.random.default_rng([config.seed, dataset_index])
    per_batch: dict[tuple, list[dict]] = {}
    max_rel_diff = 0.0
    table64 = item_table.astype(np.float64)
    for b in range(config.bias_batches):
        rows = rng.choice(len(train), size=config.bias_batch_size, replace=False)
        users, items = train.user_ids[rows], train.item_ids[rows].astype(np.int64)
        labels_np = items[:, np.newaxis]
        h_np = user_table[users]
        h, labels = tf.constant(h_np), tf.constant(labels_np)
        g_table, g_h = (x.numpy() for x in full(h, labels))
        kernel_dist = Categorical(kernel_weights(h_np, item_table, config.alpha))
        softmax_e = softmax_weights(h_np, item_table)
        softmax_dist = Categorical(softmax_e)
        if tree is not None:
            probe = rng.integers(0, train.num_items, size=(len(rows), 64))
            tree_q = np.asarray(tree.probability(tf.constant(probe), query_embeddings=h))
            exact = np.take_along_axis(kernel_dist.probabilities, probe, 1)
            max_rel_diff = max(max_rel_diff, float(np.max(np.abs(tree_q / exact - 1))))
        for proposal in PROPOSALS:
            # Exact E[∂L̂/∂o], row by row, then E[ĝ] = (1/B)·Cᵀ H and (1/B)·C W.
            coefficients: dict[tuple[int, str], np.ndarray] = {}
            for i in range(len(rows)):
                q = {
                    "uniform": np.full(train.num_items, 1.0 / train.num_items),
                    "unigram": unigram_q,
                    "kernel": kernel_dist.probabilities[i],
                    "softmax": softmax_dist.probabilities[i],
                }[proposal]
                row = expected_coefficients(softmax_e[i], int(items[i]), q, config.bias_num_sampled)
                for key, value in row.items():
                    coefficients.setdefault(key, np.empty((len(rows), train.num_items)))[i] = value
            for s in config.bias_num_sampled:
                stats = {}
                for c in CONVENTIONS:
                    expected = coefficients[(s, c)] / len(rows)
                    stats[(c, "item_table")] = GradientStats(g_table, expected.T @ h_np)
                    stats[(c, "queries")] = GradientStats(g_h, expected @ table64)
                for r in range(config.bias_repeats):
                    draw_rng = np.random.default_rng([config.seed, dataset_index, b, s, r])
                    if proposal == "uniform":
                        values = uniform.sample(labels, s, unique=False)
                    elif proposal == "unigram":
                        values = unigram.sample(labels, s, unique=False)
                    elif proposal == "kernel" and tree is not None:
                        values = tree.sample(labels, s, unique=False, query_embeddings=h)
                    elif proposal == "kernel":
                        values = kernel_dist.sampled_values(labels_np, s, draw_rng)
                    else:
                        values = softmax_dist.sampled_values(labels_np, s, draw_rng)
                    outputs = sampled(h, labels, s, *values)
                    for i, convention in enumerate(CONVENTIONS):
                        stats[(convention, "item_table")].add(outputs[2 * i].numpy())
                        stats[(convention, "queries")].add(outputs[2 * i + 1].numpy())
                per_batch.setdefault((proposal, s), []).append(
                    {key: st.summary() for key, st in stats.items()}
                )
        _progress(f"  bias batch {b + 1}/{config.bias_batches} done")
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
        "kernel_check": {
            "implementation": kernel_impl,
            "max_relative_difference_from_brute_force": max_rel_diff if tree else None,
        },
        "seconds": time.perf_counter() - started,
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


RATIO_METRICS = ("bias", "per_draw_error")


def sample_ratios(points: list[dict], num_sampled: Sequence[int]) -> list[dict]:
    """The S the kernel needs to match a baseline's bias (and per-draw error) at a reference S.

    For each metric, convention, gradient part, reference S and baseline (unigram, uniform):
    ``kernel_num_sampled`` by :func:`samples_to_reach` on the kernel's curve, and ``ratio =
    reference S / kernel S`` ("times fewer samples"; below 1: the kernel needs more).
    """
    ratios = []
    by_key = {(p["proposal"], p["num_sampled"]): p for p in points}
    grid = sorted(num_sampled)
    for metric in RATIO_METRICS:
        for c in CONVENTIONS:
            for part in PARTS:
                curve = {
                    name: [by_key[(name, s)][c][part][metric] for s in grid]
                    for name in ("uniform", "unigram", "kernel")
                }
                for ref in REFERENCE_S:
                    if ref not in grid:
                        continue
                    for baseline in ("unigram", "uniform"):
                        target = curve[baseline][grid.index(ref)]
                        kernel_s, how = samples_to_reach(grid, curve["kernel"], target)
                        bound = grid[0] / EXTRAPOLATION_LIMIT
                        ratios.append(
                            {
                                "metric": metric,
                                "convention": c,
                                "part": part,
                                "baseline": baseline,
                                "reference_num_sampled": ref,
                                "baseline_value": target,
                                "kernel_num_sampled": kernel_s,
                                "how": how,
                                "ratio": ref / kernel_s if kernel_s else None,
                                "ratio_at_least": ref / bound if how == "below_grid" else None,
                            }
                        )
    return ratios


# ---------------------------------------------------------------------------------------------
# The study


def run_study(config: BiasStudyConfig, checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Parts (a) and (b) on every dataset; returns the report (``checkpoint`` gets partials)."""
    started = time.perf_counter()
    kernel_impl = resolve_kernel_impl(config.kernel_impl)
    train_kernel_impl = resolve_kernel_impl(config.train_kernel_impl)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m pipelines.bench_bias", *sys.argv[1:]]),
        "machine": machine_info(),
        "load_average": {"start": list(os.getloadavg())},
        "settings": dataclasses.asdict(config),
        "kernel_implementation": {"bias": kernel_impl, "training": train_kernel_impl},
        "datasets": {},
        "complete": False,
    }
    splits, skipped = load_datasets(config)
    report["skipped"] = skipped
    for index, (name, split) in enumerate(splits.items()):
        epochs = config.epochs[name]
        entry: dict[str, Any] = {"data": _describe(split), "epochs": epochs}
        report["datasets"][name] = entry
        _progress(f"{name}: {entry['data']}")
        popularity = evaluate(None, split, config)
        _progress(f"{name}: training the full softmax ({epochs} epochs)")
        full_model, record = train_model(
            split, proposal=None, num_sampled=0, epochs=epochs, config=config,
            kernel_impl=kernel_impl,
        )  # fmt: skip
        runs = [{"proposal": "full_softmax", "num_sampled": None, **record,
                 "metrics": evaluate(full_model, split, config)}]  # fmt: skip
        _progress(f"{name}: full softmax Recall@20 {runs[0]['metrics'].get('recall@20')}")
        _progress(f"{name}: gradient bias (part a)")
        entry["bias"] = gradient_bias(full_model, split, config, kernel_impl, dataset_index=index)
        entry["bias"]["ratios"] = sample_ratios(entry["bias"]["points"], config.bias_num_sampled)
        if checkpoint:
            checkpoint(report)
        for proposal in config.recall_samplers:
            for s in config.recall_num_sampled:
                model, record = train_model(
                    split, proposal=proposal, num_sampled=s, epochs=epochs, config=config,
                    kernel_impl=train_kernel_impl,
                )  # fmt: skip
                metrics = evaluate(model, split, config)
                runs.append({"proposal": proposal, "num_sampled": s, **record, "metrics": metrics})
                _progress(
                    f"{name}: {proposal} S={s}: Recall@20 {metrics.get('recall@20'):.4f} "
                    f"({record['seconds']:.0f} s)"
                )
        entry["recall"] = {"popularity": popularity, "runs": runs}
        if checkpoint:
            checkpoint(report)
    report["claim"] = summarize_claim(report)
    report["load_average"]["end"] = list(os.getloadavg())
    report["wall_s"] = time.perf_counter() - started
    report["complete"] = True
    return report


def summarize_claim(report: dict) -> dict:
    """Whether the kernel needs several (>= 3) times fewer samples than unigram, per dataset.

    Read at the unigram's bias at S = 1024 (or the largest reference S run) on the item-table
    gradient, for each convention.
    """
    threshold = 3.0
    verdicts: dict[str, dict] = {metric: {} for metric in RATIO_METRICS}
    for name, entry in report["datasets"].items():
        ratios = entry["bias"]["ratios"]
        for metric, c in itertools.product(RATIO_METRICS, CONVENTIONS):
            picked = [
                r
                for r in ratios
                if r["metric"] == metric
                and r["convention"] == c
                and r["part"] == "item_table"
                and r["baseline"] == "unigram"
            ]
            if not picked:
                continue
            top = max(picked, key=lambda r: r["reference_num_sampled"])
            if top["ratio"] is not None:
                holds = top["ratio"] >= threshold
            elif top["ratio_at_least"] is not None:
                holds = top["ratio_at_least"] >= threshold or None
            else:
                holds = False if top["how"] == "above_grid" else None
            verdicts[metric][f"{name}|{c}"] = {
                "reference_num_sampled": top["reference_num_sampled"],
                "ratio": top["ratio"],
                "ratio_at_least": top["ratio_at_least"],
                "how": top["how"],
                "holds": holds,
            }
    return {
        "statement": "the kernel reaches the unigram's bias with >= 3x fewer samples",
        "threshold": threshold,
        "by_dataset": verdicts["bias"],
        "per_draw_error_by_dataset": verdicts["per_draw_error"],
    }


# ---------------------------------------------------------------------------------------------
# Report: Markdown and plots


def _f(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def bias_table(points: list[dict], convention: str) -> str:
    """One row per (proposal, S): bias, cosines and per-draw error of both gradients."""
    head = (
        "| proposal | S | W: bias | W: cos(E[ĝ], g) | W: per-draw err | W: per-draw cos "
        "| H: bias | H: cos(E[ĝ], g) | H: per-draw err | MC check (W, H) |"
    )
    lines = [head, "|" + "---|" * 10]
    for p in points:
        w, q = p[convention]["item_table"], p[convention]["queries"]
        lines.append(
            f"| {p['proposal']} | {p['num_sampled']} | {_f(w['bias'], 4)} | {_f(w['cosine'], 4)} "
            f"| {_f(w['per_draw_error'])} | {_f(w['per_draw_cosine'])} | {_f(q['bias'], 4)} "
            f"| {_f(q['cosine'], 4)} | {_f(q['per_draw_error'])} "
            f"| {_f(w['mc_check'], 2)}, {_f(q['mc_check'], 2)} |"
        )
    return "\n".join(lines)


def _ratio_text(entry: dict) -> str:
    if entry["ratio_at_least"] is not None:
        return f"> {entry['ratio_at_least']:.0f}"
    return _f(entry["ratio"], 1)


def ratio_table(ratios: list[dict]) -> str:
    """Samples the kernel needs to reach a baseline's bias at a reference S."""
    lines = [
        "| metric | convention | gradient | baseline | baseline S | baseline value | kernel S | "
        "times fewer | how |",
        "|" + "---|" * 9,
    ]
    for r in ratios:
        lines.append(
            f"| {r['metric']} | {r['convention']} | {r['part']} | {r['baseline']} "
            f"| {r['reference_num_sampled']} "
            f"| {_f(r['baseline_value'], 4)} | {_f(r['kernel_num_sampled'], 1)} "
            f"| {_ratio_text(r)} | {r['how']} |"
        )
    return "\n".join(lines)


def recall_table(recall: dict, num_sampled: Sequence[int]) -> str:
    """Recall@20 (and NDCG@20) per sampler and S, with full softmax and popularity."""
    grid = sorted(num_sampled)
    lines = [
        "| model | " + " | ".join(f"S={s}" for s in grid) + " | train s (largest S) |",
        "|" + "---|" * (len(grid) + 2),
    ]
    runs = recall["runs"]
    for proposal in dict.fromkeys(r["proposal"] for r in runs if r["num_sampled"] is not None):
        cells, seconds = [], "—"
        for s in grid:
            run = next(
                (r for r in runs if r["proposal"] == proposal and r["num_sampled"] == s), None
            )
            if run is None:
                cells.append("—")
                continue
            m = run["metrics"]
            cells.append(f"{m['recall@20']:.4f} ({m['ndcg@20']:.4f})")
            seconds = f"{run['seconds']:.0f}"
        lines.append(f"| {proposal} | " + " | ".join(cells) + f" | {seconds} |")
    full = next(r for r in runs if r["proposal"] == "full_softmax")
    pop = recall["popularity"]
    for label, m, secs in (
        ("full softmax", full["metrics"], f"{full['seconds']:.0f}"),
        ("popularity", pop, "—"),
    ):
        cell = f"{m['recall@20']:.4f} ({m['ndcg@20']:.4f})"
        lines.append(f"| {label} | " + " | ".join([cell] * len(grid)) + f" | {secs} |")
    return "\n".join(lines)


def markdown_report(report: dict, plots: Sequence[str] = ()) -> str:
    """The study as Markdown: settings, bias tables, ratios, recall, the claim, a README draft."""
    s, m = report["settings"], report["machine"]
    out = [
        "# Sampled-softmax gradient bias and recall by proposal (`pipelines/bench_bias.py`)",
        "",
        f"Command: `{report['command']}`; {report['wall_s']:.0f} s wall on {m['cpu_count']} "
        f"CPUs ({m.get('cpu_model')}), load average {report['load_average']['start'][0]:.1f} at "
        f"start, {report['load_average']['end'][0]:.1f} at end; TensorFlow {m['tensorflow']}. "
        f"Kernel sampler: `{report['kernel_implementation']['bias']}` in part (a), "
        f"`{report['kernel_implementation']['training']}` in training "
        "(`tree`: `recsampled.samplers.QuadraticKernelSampler`; `brute`: every item scored, "
        "`BruteForceKernel`).",
        "",
        f"Matrix factorisation, D={s['embedding_dim']}, Adagrad lr {s['learning_rate']}, "
        f"batch {s['batch_size']}, epochs {s['epochs']}; kernel α={s['alpha']}. Part (a): "
        f"{s['bias_batches']} batches of {s['bias_batch_size']} training pairs, "
        f"R={s['bias_repeats']} draws per (batch, proposal, S). Definitions (bias, noise, "
        "cosines, per-draw error, the two conventions) are in the module docstring; `W` is the "
        "item-table gradient, `H` the query-embedding gradient.",
    ]
    if report.get("skipped"):
        out += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items())]
    for name, entry in report["datasets"].items():
        d = entry["data"]
        out += [
            "",
            f"## {name}",
            "",
            f"{d['num_users']:,} users, {d['num_items']:,} items, {d['train_rows']:,} training "
            f"and {d['test_rows']:,} test rows ({d['split']}); {entry['epochs']} epochs.",
        ]
        check = entry["bias"]["kernel_check"]
        if check["max_relative_difference_from_brute_force"] is not None:
            out.append(
                "Tree sampler's q against brute force: max relative difference "
                f"{check['max_relative_difference_from_brute_force']:.2e}."
            )
        for c in CONVENTIONS:
            out += ["", f"### Gradient bias, `{c}` convention", "", bias_table(
                entry["bias"]["points"], c)]  # fmt: skip
        out += [
            "",
            "### Samples the kernel needs to match a baseline's bias",
            "",
            ratio_table(entry["bias"]["ratios"]),
        ]
        if "recall" in entry:
            out += [
                "",
                "### Recall@20 (NDCG@20) after training, `tf` convention",
                "",
                recall_table(entry["recall"], s["recall_num_sampled"]),
            ]
    claim = report.get("claim", {})
    if claim:
        out += ["", "## The claim", "", f"{claim['statement']} (item-table gradient):", ""]
        for key, v in claim["by_dataset"].items():
            ratio = _ratio_text(v)
            verdict = {True: "holds", False: "does not hold", None: "undecided"}[v["holds"]]
            out.append(
                f"- {key}: {ratio}x at the unigram's S={v['reference_num_sampled']} "
                f"({v['how']}) — {verdict}"
            )
        out += ["", "The same reading on the per-draw error (bias and variance of one step):", ""]
        for key, v in claim.get("per_draw_error_by_dataset", {}).items():
            out.append(
                f"- {key}: {_ratio_text(v)}x at the unigram's S={v['reference_num_sampled']} "
                f"({v['how']})"
            )
    if plots:
        out += ["", "Plots: " + ", ".join(f"`{p}`" for p in plots)]
    out += ["", readme_section(report, plots)]
    return "\n".join(out) + "\n"


def readme_section(report: dict, plots: Sequence[str] = ()) -> str:
    """A short README section with the headline numbers (proposed, not written to README.md)."""
    lines = [
        "## Proposed README section",
        "",
        "### Adaptive kernel sampling: fewer samples for the same gradient bias?",
        "",
        "`recsampled.samplers.QuadraticKernelSampler` draws negatives from "
        "`q(i|h) ∝ α(hᵀwᵢ)² + 1` (Blanc & Rendle, ICML 2018), a proposal that follows the "
        "model. `pipelines/bench_bias.py` measures, on a trained matrix-factorisation model, the "
        "bias `‖E[ĝ] − g‖/‖g‖` of the sampled-softmax gradient against the full softmax's, "
        "computed exactly (no Monte Carlo noise), and Recall@20 after training with each sampler:",
        "",
        "```",
        report["command"],
        "```",
        "",
        "| data | metric | convention | S_unigram | unigram value | S the kernel needs "
        "| times fewer |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["datasets"].items():
        for r in entry["bias"]["ratios"]:
            top = max(x["reference_num_sampled"] for x in entry["bias"]["ratios"])
            if (
                r["part"] == "item_table"
                and r["baseline"] == "unigram"
                and r["reference_num_sampled"] == top
            ):
                lines.append(
                    f"| {name} | {r['metric']} | {r['convention']} | {r['reference_num_sampled']} "
                    f"| {_f(r['baseline_value'], 4)} | {_f(r['kernel_num_sampled'], 1)} "
                    f"| {_ratio_text(r)} |"
                )
    lines += [
        "",
        "(item-table gradient; `negatives_only`: only sampled negatives carry the logQ "
        "correction, the estimator of the paper; `tf`: the positive too, as "
        "`tf.nn.sampled_softmax_loss` and recsampled's default. Under `tf` even the softmax "
        "proposal keeps a bias of order p_y at any S, the mass of the corrected positive.)",
    ]
    claim = report.get("claim")
    if claim:
        verdicts = []
        for key, v in claim["by_dataset"].items():
            name, convention = key.split("|")
            word = {True: "holds", False: "does not hold", None: "undecided"}[v["holds"]]
            verdicts.append(f"{name}, `{convention}`: {_ratio_text(v)}x, {word}")
        lines += [
            "",
            "The claim (the kernel matches the unigram's item-table bias at the largest S with "
            f">= {claim['threshold']:g}x fewer samples): " + "; ".join(verdicts) + ".",
        ]
    for name, entry in report["datasets"].items():
        if "recall" not in entry:
            continue
        runs = entry["recall"]["runs"]
        parts = []
        for proposal in dict.fromkeys(r["proposal"] for r in runs if r["num_sampled"]):
            values = ", ".join(
                f"{r['metrics']['recall@20']:.3f}"
                for r in sorted(runs, key=lambda r: r["num_sampled"] or 0)
                if r["proposal"] == proposal
            )
            parts.append(f"{proposal} {values}")
        full = next(r for r in runs if r["proposal"] == "full_softmax")["metrics"]["recall@20"]
        pop = entry["recall"]["popularity"]["recall@20"]
        grid = ", ".join(str(s) for s in report["settings"]["recall_num_sampled"])
        lines.append(
            f"\nRecall@20 on {name} at S = {grid}: "
            + "; ".join(parts)
            + f"; full softmax {full:.3f}; popularity {pop:.3f}."
        )
    if plots:
        lines += ["", "Plots: " + ", ".join(f"`benchmarks/{p}`" for p in plots) + "."]
    return "\n".join(lines)


def write_plots(report: dict, output: Path) -> list[str]:
    """Bias against S per dataset, and Recall@20 against S; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, colors = [], {"uniform": "C0", "unigram": "C1", "kernel": "C2", "softmax": "C3"}
    for name, entry in report["datasets"].items():
        points = entry["bias"]["points"]
        fig, axes = plt.subplots(2, 2, figsize=(10, 8), sharex=True)
        for row, c in enumerate(CONVENTIONS):
            for col, part in enumerate(PARTS):
                ax = axes[row][col]
                for proposal in PROPOSALS:
                    pts = sorted(
                        (p for p in points if p["proposal"] == proposal),
                        key=lambda p: p["num_sampled"],
                    )
                    xs = [p["num_sampled"] for p in pts]
                    bias = [max(p[c][part]["bias"], 1e-6) for p in pts]
                    err = [p[c][part]["per_draw_error"] for p in pts]
                    ax.plot(xs, bias, "o-", color=colors[proposal], label=f"{proposal} bias")
                    ax.plot(xs, err, ":", color=colors[proposal], alpha=0.6)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_title(f"{part}, {c}")
                ax.grid(True, which="both", alpha=0.3)
                if row == 1:
                    ax.set_xlabel("S (samples per step)")
                if col == 0:
                    ax.set_ylabel("‖E[ĝ] - g‖ / ‖g‖  (dotted: per draw)")
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"{name}: sampled-softmax gradient bias against S")
        fig.tight_layout()
        path = output.with_name(f"{output.stem}_{name}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        names.append(path.name)
    with_recall = {k: e for k, e in report["datasets"].items() if "recall" in e}
    if with_recall:
        fig, axes = plt.subplots(1, len(with_recall), figsize=(5.5 * len(with_recall), 4.2))
        axes = np.atleast_1d(axes)
        for ax, (name, entry) in zip(axes, with_recall.items(), strict=True):
            runs = entry["recall"]["runs"]
            for proposal in dict.fromkeys(r["proposal"] for r in runs if r["num_sampled"]):
                pts = sorted(
                    (r for r in runs if r["proposal"] == proposal), key=lambda r: r["num_sampled"]
                )
                ax.plot(
                    [r["num_sampled"] for r in pts],
                    [r["metrics"]["recall@20"] for r in pts],
                    "o-",
                    color=colors[proposal],
                    label=proposal,
                )
            full = next(r for r in runs if r["proposal"] == "full_softmax")
            ax.axhline(full["metrics"]["recall@20"], color="k", ls="--", label="full softmax")
            ax.axhline(entry["recall"]["popularity"]["recall@20"], color="gray", ls=":",
                       label="popularity")  # fmt: skip
            ax.set_xscale("log", base=2)
            ax.set_xlabel("S (samples per step)")
            ax.set_ylabel("Recall@20")
            ax.set_title(name)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = output.with_name(f"{output.stem}_recall.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        names.append(path.name)
    return names


# ---------------------------------------------------------------------------------------------
# Command line


def _int_list(text: str) -> tuple[int, ...]:
    values = tuple(int(float(x)) for x in text.split(",") if x.strip())
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> tuple[BiasStudyConfig, Path, bool]:
    """The config (defaults, or ``QUICK`` with ``--quick``, then overrides), the output path, and
    whether only to render an existing report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("benchmarks/bias.json"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    parser.add_argument("--movielens", help="MovieLens-100K folder or u.data; 'none' to skip")
    parser.add_argument("--no-synthetic", action="store_true", help="leave the synthetic out")
    parser.add_argument("--bias-num-sampled", type=_int_list)
    parser.add_argument("--recall-num-sampled", type=_int_list)
    parser.add_argument("--repeats", type=int, help="R, draws per (batch, proposal, S)")
    parser.add_argument("--bias-batches", type=int)
    parser.add_argument("--kernel-impl", choices=("auto", "tree", "brute"), help="part (a)")
    parser.add_argument("--train-kernel-impl", choices=("auto", "tree", "brute"), help="part (b)")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite the Markdown and plots from --output"
    )
    args = parser.parse_args(argv)
    config = QUICK if args.quick else BiasStudyConfig()
    overrides: dict[str, Any] = {
        "bias_num_sampled": args.bias_num_sampled,
        "recall_num_sampled": args.recall_num_sampled,
        "bias_repeats": args.repeats,
        "bias_batches": args.bias_batches,
        "kernel_impl": args.kernel_impl,
        "train_kernel_impl": args.train_kernel_impl,
        "seed": args.seed,
    }
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if args.movielens is not None:
        config = dataclasses.replace(
            config, movielens_path=None if args.movielens == "none" else args.movielens
        )
    if args.no_synthetic:
        config = dataclasses.replace(config, synthetic=None)
    if config.bias_repeats < 2:
        parser.error("--repeats must be at least 2")
    return config, args.output, args.render_only


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the study; writes the JSON, the Markdown report and the plots; prints the report."""
    config, output, render_only = parse_args(argv)
    output.parent.mkdir(parents=True, exist_ok=True)

    def write_json(report: dict) -> None:
        output.write_text(json.dumps(report, indent=2) + "\n")

    if render_only:  # the ratios and the verdict are recomputed from the points
        report = json.loads(output.read_text())
        for entry in report["datasets"].values():
            grid = report["settings"]["bias_num_sampled"]
            entry["bias"]["ratios"] = sample_ratios(entry["bias"]["points"], grid)
        report["claim"] = summarize_claim(report)
        write_json(report)
    else:
        report = run_study(config, checkpoint=write_json)
        write_json(report)
    plots = write_plots(report, output)
    markdown = markdown_report(report, plots)
    output.with_suffix(".md").write_text(markdown)
    print(markdown)
    _progress(f"wrote {output}, {output.with_suffix('.md')} and {len(plots)} plots")
    return report


if __name__ == "__main__":
    main()

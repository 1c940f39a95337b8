"""Benchmark: retrieval quality and training speed of sampled-softmax variants on the same towers.

Run ``python -m pipelines.bench_retrieval`` (or ``make bench-retrieval``); it writes
``benchmarks/retrieval.json`` and a plot (``.png``) beside it. ``--quick``: tiny settings;
``--throughput-only``: re-measure the ``fit`` throughput into an existing JSON.

Data: MovieLens 100K (``../shared/datasets/movielens-100k``, skipped when absent; user
age/gender/occupation and movie genres as tower features) and the synthetic log of
``make demo``, split by ``random_holdout`` (20%, seed 0). Every variant is built by
``recsampled.runs.build_model`` from a ``Config`` (same L2-normalised towers, seeds, Adam, epochs,
learning rate, batch and temperature): ``full_softmax``, ``in_batch`` (``tfrs.tasks.Retrieval``),
``in_batch_logq_counts``, ``in_batch_logq_streaming``, ``mixed_logq`` (in-batch + S uniform
negatives) and ``sampled_<uniform|log_uniform|unigram>``. Evaluation: ``recsampled.evaluation``
on the whole catalogue, mean ± std over seeds; checks: each logQ variant beats ``in_batch`` on
Recall@20, the best non-full variant is within 3% of ``full_softmax``. Throughput: examples/s in
``fit``; TFRS's ``Retrieval`` vs ours head to head (epochs alternated round-robin, per-round
ratio ± SE); a step breakdown (train step, towers, task forward+backward, the bare score matmuls
``3·B·(B+S)·D``, and that floor at the machine's peak matmul rate).

``benchmarks/retrieval.json`` predates the move onto the library's builders (``tf.data``
shuffle, a unigram sampler over ``counts + 1``): a re-run moves its numbers by about the
seed-to-seed noise.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import recsampled as rs  # noqa: E402  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)

# isort: split
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

from pipelines import harness  # noqa: E402
from recsampled.config import Config, load_config  # noqa: E402
from recsampled.data import (  # noqa: E402
    Interactions,
    random_holdout,
    read_interactions,
    synthetic,
    training_batches,
)
from recsampled.evaluation import embedding_scores, evaluate  # noqa: E402
from recsampled.models import TwoTowerModel  # noqa: E402
from recsampled.runs import build_model  # noqa: E402
from recsampled.runs.build import TowerFeatures, build_task  # noqa: E402

LOG = logging.getLogger("pipelines.bench_retrieval")
SCHEMA_VERSION = 3
MOVIELENS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "movielens-100k"
KS = (10, 20, 50)
METRICS = ("recall@10", "recall@20", "recall@50", "ndcg@10")
LOGQ_VARIANTS = ("in_batch_logq_counts", "in_batch_logq_streaming", "mixed_logq")
SAMPLERS = ("uniform", "log_uniform", "unigram")
VARIANTS = ("full_softmax", "in_batch", *LOGQ_VARIANTS, *(f"sampled_{s}" for s in SAMPLERS))
THROUGHPUT_TASKS = ("tfrs", "ours")
BREAKDOWN_TASKS = ("tfrs", "ours", "mixed_logq")
COMPONENTS = ("train_step", "towers_forward", "task_forward_backward", "score_matmuls")
REMEASURE = (
    "re-measure only the fit throughput (ours vs TFRS, and at the issue shape) into --output"
)
SHAPE_ONLY = "re-measure only the issue-shape head-to-head (issue_shape_throughput) into --output"
CATALOGUE_ONLY = "re-measure only the 10^6-item config's head-to-head (catalogue_throughput)"
RELATIVE_GAP = 0.03  # best sampled variant vs full softmax, Recall@20


@dataclasses.dataclass(frozen=True)
class RetrievalBenchConfig:
    """Settings of one run (the defaults are those of the published table)."""

    #: among ``movielens-100k`` and ``synthetic``.
    datasets: tuple[str, ...] = ("movielens-100k", "synthetic")
    movielens: str = str(MOVIELENS)  #: the MovieLens 100K folder.
    embedding_dim: int = 32  #: D.
    batch_size: int = 256  #: B.
    num_sampled: int = 256  #: S, catalogue negatives of the mixed and sampled variants.
    temperature: float = 0.1  #: τ of the softmax over cosine scores (towers are L2-normalised).
    learning_rate: float = 0.01  #: Adam's.
    #: training epochs of every variant.
    epochs: int = dataclasses.field(default=6, metadata={"min": 1})
    #: one training run per seed (initial weights, data order, sampler draws).
    seeds: tuple[int, ...] = (0, 1, 2)
    #: alternated ``fit`` epochs of each task in the head-to-head.
    throughput_rounds: int = dataclasses.field(default=10, metadata={"flag": "--rounds", "min": 1})
    #: timed calls per component in the step breakdown.
    step_repeats: int = dataclasses.field(default=60, metadata={"min": 1})
    #: fit steps per round of the issue-shape head-to-head (``--throughput-only``).
    shape_steps: int = dataclasses.field(default=60, metadata={"min": 1})
    #: the log of that head-to-head (``synthetic.generate`` arguments; None: :data:`ISSUE_SHAPE`).
    shape: dict | None = None
    #: arguments of ``recsampled.data.synthetic.generate``.
    synthetic: dict = dataclasses.field(  # the embedded default log (configs/default.yaml)
        default_factory=lambda: {"num_users": 1_000, "num_items": 2_000,
                                 "num_interactions": 50_000, "num_clusters": 20, "seed": 0}
    )  # fmt: skip


QUICK = RetrievalBenchConfig(
    batch_size=64, num_sampled=32, epochs=1, seeds=(0,), throughput_rounds=2, step_repeats=3,
    synthetic={**synthetic.SIZES["tiny"], "seed": 0},
)  # fmt: skip


@dataclasses.dataclass
class BenchData:
    """A split log with indices in ``[0, num_users)``, ``[0, num_items)`` and tower features."""

    name: str
    train: Interactions
    test: Interactions
    user_features: TowerFeatures | None = None
    item_features: TowerFeatures | None = None

    num_users = property(lambda self: self.train.num_users)
    num_items = property(lambda self: self.train.num_items)


def load_movielens(path: Path) -> BenchData:
    """MovieLens 100K: ratings as interactions; genres per movie, age/gender/job per user."""
    split = random_holdout(read_interactions(path), test_fraction=0.2, seed=0)

    def rows(name: str) -> dict[int, list[str]]:
        with open(path / name, encoding="latin-1") as f:
            return {int(r[0]): r[1:] for r in (line.rstrip("\n").split("|") for line in f if line)}

    movies, people = rows("u.item"), {user: row[:3] for user, row in rows("u.user").items()}
    users = [people[int(u)] for u in split.train.users.original_ids]  # age, gender, occupation
    jobs = sorted({job for _, _, job in people.values()})
    genres = [[int(g) for g in movies[int(i)][4:]] for i in split.train.items.original_ids]
    return BenchData(
        "movielens-100k", split.train, split.test,
        user_features={
            "categorical": {
                "gender": np.array([gender == "F" for _, gender, _ in users], np.int64),
                "occupation": np.array([jobs.index(job) for _, _, job in users], np.int64),
            },
            "numeric": {"age": np.array([float(age) for age, _, _ in users])},
        },
        item_features={"categorical": {"genres": np.array(genres, np.float32)}},
    )  # fmt: skip


def load(name: str, config: RetrievalBenchConfig) -> BenchData | str:
    """The dataset, or the reason it was skipped."""
    if name == "movielens-100k":
        path = Path(config.movielens)
        if not (path / "u.data").exists():
            return f"MovieLens 100K not found at {path}"
        return load_movielens(path)
    if name == "synthetic":
        split = random_holdout(synthetic.generate(**config.synthetic).to_interactions(),
                               test_fraction=0.2, seed=0)  # fmt: skip
        return BenchData("synthetic", split.train, split.test)
    raise ValueError(f"Unknown dataset {name!r}; expected 'movielens-100k' or 'synthetic'.")


class FullSoftmax(tf.keras.layers.Layer, tfrs.tasks.base.Task):
    """Softmax over every item each step, with the retrieval task's call signature."""

    def __init__(self, candidate_model: tf.keras.layers.Layer, num_items: int, temperature: float):
        super().__init__()
        self.candidate_model, self.num_items = candidate_model, num_items
        self.temperature = temperature

    def call(self, query_embeddings, candidate_embeddings, candidate_ids=None, **_):
        n, labels = self.num_items, candidate_ids[:, tf.newaxis]
        losses = rs.full_softmax_loss(
            weights=self.candidate_model(tf.range(n)), biases=tf.zeros([n]), labels=labels,
            inputs=query_embeddings / self.temperature, num_classes=n,
        )  # fmt: skip
        return tf.reduce_sum(losses)  # SUM over the batch, as TFRS's task


def variant_config(variant: str, data: BenchData, config: RetrievalBenchConfig,
                   seed: int) -> Config:  # fmt: skip
    """The library config of ``variant`` (in :data:`VARIANTS`, or ``"tfrs"`` / ``"ours"``)."""
    task: dict = {"temperature": config.temperature, "remove_accidental_hits": True}
    if variant in ("in_batch_logq_counts", "mixed_logq"):
        task["logq"] = "counts"
    if variant == "in_batch_logq_streaming":  # α of Yi et al.; buckets 8x the catalogue, 2 hashes
        buckets = 1 << max(10, int(np.ceil(np.log2(8 * data.num_items))))
        task |= {"logq": "streaming", "estimator": {"num_buckets": buckets, "num_hashes": 2}}
    if variant == "mixed_logq":
        task |= {"negatives": "mixed", "sampler": "uniform", "num_sampled": config.num_sampled}
    if variant.startswith("sampled_"):
        task |= {"negatives": "sampled", "sampler": variant.removeprefix("sampled_"),
                 "num_sampled": config.num_sampled}  # fmt: skip
    return Config.from_dict({
        "model": {"embedding_dim": config.embedding_dim, "normalize": True},
        "task": task,
        "training": {"batch_size": config.batch_size, "optimizer": "adam",
                     "learning_rate": config.learning_rate, "seed": seed, "drop_remainder": True},
    })  # fmt: skip


def build_variant(variant: str, data: BenchData, config: RetrievalBenchConfig,
                  seed: int) -> TwoTowerModel:  # fmt: skip
    """The compiled model of ``variant``, from the library's builder."""
    if variant not in (*VARIANTS, *THROUGHPUT_TASKS):
        raise ValueError(f"`variant` must be one of {VARIANTS}. Received: variant={variant!r}.")
    task = None
    if variant in ("in_batch", "tfrs"):
        task = tfrs.tasks.Retrieval(temperature=config.temperature, remove_accidental_hits=True)
    elif variant == "full_softmax":
        task = functools.partial(
            FullSoftmax, num_items=data.num_items, temperature=config.temperature
        )
    features = {"user_features": data.user_features, "item_features": data.item_features}
    library_config = variant_config(variant, data, config, seed)
    return build_model(library_config, data.train, task=task, **features)


def batches(data: BenchData, config: RetrievalBenchConfig, seed: int,
            epochs: int = 1) -> tf.data.Dataset:  # fmt: skip
    """Full batches of every epoch in a new seeded order (the library's tf.data builder)."""
    return training_batches(data.train, batch_size=config.batch_size, seed=seed,
                            end_epoch=epochs, drop_remainder=True)  # fmt: skip


def evaluate_model(model: TwoTowerModel | None, data: BenchData) -> dict[str, float]:
    """The :data:`METRICS` of ``model`` (None: of popularity), by ``recsampled.evaluation``."""
    scorers = {}
    if model is not None:
        queries = model.query_model(tf.range(data.num_users)).numpy()
        items = model.candidate_model(tf.range(data.num_items)).numpy()
        scorers["model"] = embedding_scores(queries, items)
    result = evaluate(scorers, data.train, data.test, ks=KS, popularity=model is None)
    return {m: float(v) for m, v in next(iter(result.values())).as_dict().items() if m in METRICS}


def train_and_evaluate(variant: str, data: BenchData, config: RetrievalBenchConfig,
                       seed: int) -> dict:  # fmt: skip
    """Trains ``variant`` for ``config.epochs`` and evaluates it on the whole catalogue."""
    model, timer = build_variant(variant, data, config, seed), harness.fit_timer("epoch")
    steps = len(data.train) // config.batch_size
    history = model.fit(batches(data, config, seed, config.epochs), epochs=config.epochs,
                        steps_per_epoch=steps, verbose=0, callbacks=[timer])  # fmt: skip
    steady = timer.seconds[1:] or timer.seconds  # the first epoch traces
    return {
        **evaluate_model(model, data),
        "final_loss": float(history.history["loss"][-1]),
        "train_seconds": float(sum(timer.seconds)),
        "examples_per_second": steps * config.batch_size / statistics.median(steady),
    }


def summarise(runs: list[dict[str, float]]) -> dict[str, dict]:
    """Per quantity: mean, sample standard deviation (0 for one seed) and the per-seed values."""
    values = {key: [float(r[key]) for r in runs] for key in runs[0]}
    std = {key: statistics.stdev(v) if len(v) > 1 else 0.0 for key, v in values.items()}
    return {k: {"mean": float(np.mean(v)), "std": std[k], "per_seed": v} for k, v in values.items()}


def compare_fit_throughput(data: BenchData, config: RetrievalBenchConfig) -> dict:
    """Examples/s in ``fit`` of TFRS's task vs ours on the same cached batches, epochs
    alternated; the per-round ratio is ``tfrs_seconds / ours_seconds``."""
    models = {name: build_variant(name, data, config, seed=0) for name in THROUGHPUT_TASKS}
    dataset = batches(data, config, seed=0).cache()
    steps = {name: lambda m=m: m.fit(dataset, epochs=1, verbose=0) for name, m in models.items()}
    load_before = harness.load_average()
    timings = harness.time_round_robin(steps, repeats=config.throughput_rounds, desc="fit epochs")
    examples = len(data.train) // config.batch_size * config.batch_size
    seconds = {name: [ms / 1e3 for ms in timings.wall_ms[name]] for name in THROUGHPUT_TASKS}
    speed = {name: examples / statistics.median(s) for name, s in seconds.items()}
    per_round = timings.ratio("tfrs", "ours")
    return {
        "rounds": config.throughput_rounds, "examples_per_epoch": examples,
        "epoch_seconds": seconds, "examples_per_second": speed,
        "ours_over_tfrs": speed["ours"] / speed["tfrs"],
        "ours_over_tfrs_per_round": per_round["per_round"],
        "ours_over_tfrs_median_of_rounds": per_round["median"],
        "ours_over_tfrs_cpu_per_round": timings.ratio("tfrs", "ours", cpu=True)["per_round"],
        "load_average_before": load_before, "load_average_after": harness.load_average(),
    }  # fmt: skip


def _breakdown_steps(variant: str, data: BenchData, config: RetrievalBenchConfig,
                     batch: dict) -> dict:  # fmt: skip
    """The timed components of one task (see the module docstring)."""
    model = build_variant(variant, data, config, seed=0)
    s = config.num_sampled if variant == "mixed_logq" else 0
    query, candidate = model(batch)
    columns = tf.random.stateless_normal([config.batch_size + s, config.embedding_dim], seed=[0, 2])

    def task_step() -> list:
        with tf.GradientTape() as tape:
            tape.watch([query, candidate])
            loss = model.task(query, candidate, candidate_ids=batch["item_id"], training=True)
        return tape.gradient(loss, [query, candidate])

    def matmul_step() -> list:
        with tf.GradientTape() as tape:
            tape.watch([query, columns])
            scores = tf.matmul(query, columns, transpose_b=True)
        return tape.gradient(scores, [query, columns])  # two more B·(B+S)·D matmuls

    train_step = tf.function(model.train_step)
    return {
        (variant, "train_step"): lambda: train_step(batch),
        (variant, "towers_forward"): tf.function(lambda: model(batch)),
        (variant, "task_forward_backward"): tf.function(task_step),
        (variant, "score_matmuls"): tf.function(matmul_step),
    }


def step_breakdown(data: BenchData, config: RetrievalBenchConfig) -> list[dict]:
    """Where one training step's time goes, against the matmul floor ``3·B·(B+S)·D`` at the
    machine's practical peak (a 1024³ float32 matmul's multiply-adds per ms): every component of
    every task timed round-robin, medians reported."""
    big = tf.random.stateless_normal([1024, 1024], seed=[0, 1])
    peak = {"matmul": tf.function(lambda: tf.matmul(big, big))}
    peak_ms = harness.time_round_robin(peak, repeats=max(5, config.step_repeats // 5))
    multiply_adds_per_ms = 1024**3 / peak_ms.summary("matmul")["median_ms"]
    batch = next(iter(batches(data, config, seed=0)))
    steps = {k: v for task in BREAKDOWN_TASKS
             for k, v in _breakdown_steps(task, data, config, batch).items()}  # fmt: skip
    timings = harness.time_round_robin(steps, repeats=config.step_repeats).summaries()
    b, d, results = config.batch_size, config.embedding_dim, []
    for variant in BREAKDOWN_TASKS:
        s = config.num_sampled if variant == "mixed_logq" else 0
        multiply_adds = 3 * b * (b + s) * d
        result = {
            "variant": variant, "batch_size": b, "num_sampled": s, "embedding_dim": d,
            "multiply_adds": multiply_adds, "peak_gflops": 2 * multiply_adds_per_ms / 1e6,
            "floor_ms_at_peak": multiply_adds / multiply_adds_per_ms,
            **{f"{c}_ms": timings[variant, c]["median_ms"] for c in COMPONENTS},
        }  # fmt: skip
        result["matmuls_share_of_step"] = result["score_matmuls_ms"] / result["train_step_ms"]
        result["floor_share_of_step"] = result["floor_ms_at_peak"] / result["train_step_ms"]
        results.append(result)
    return results


#: The issue-17 shape: ~70k users, ~25k items, ~650k rows, D=64, B=1024, τ=0.1, logQ from counts.
ISSUE_SHAPE = {"num_users": 70_000, "num_items": 25_000, "num_interactions": 650_000,
               "num_clusters": 50, "seed": 0}  # fmt: skip
SHAPE_TASKS = ("tfrs_recipe", "recsampled_adam", "recsampled_default", "recsampled_default_jit")


class TfrsRecipe(tfrs.models.Model):
    """Plain TFRS as its tutorials write it: Embedding towers (L2-normalised here, as ours),
    ``tfrs.tasks.Retrieval`` with logQ passed as ``candidate_sampling_probability``."""

    def __init__(self, num_users: int, num_items: int, dim: int, temperature: float):
        super().__init__()
        normalize = tf.keras.layers.Lambda(lambda x: tf.math.l2_normalize(x, axis=-1))
        self.query = tf.keras.Sequential([tf.keras.layers.Embedding(num_users, dim), normalize])
        self.candidate = tf.keras.Sequential([tf.keras.layers.Embedding(num_items, dim), normalize])
        self.task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=True)

    def compute_loss(self, features: dict, training: bool = False) -> tf.Tensor:
        return self.task(
            self.query(features["user_id"]),
            self.candidate(features["item_id"]),
            candidate_sampling_probability=features["probability"],
            candidate_ids=features["item_id"],
            compute_metrics=not training,
        )


def shape_models(train: Interactions, dim: int, batch_size: int) -> dict:
    """The models of :data:`SHAPE_TASKS` (ours from ``build_model`` with the library defaults:
    only D and B set; ``recsampled_adam`` also sets Adam at the recipe's learning rate)."""

    def ours(**training) -> TwoTowerModel:
        return build_model(
            Config.from_dict(
                {
                    "model": {"embedding_dim": dim},
                    "training": {"batch_size": batch_size, "drop_remainder": True, **training},
                }
            ),
            train,
        )

    tfrs_model = TfrsRecipe(train.num_users, train.num_items, dim, temperature=0.1)
    tfrs_model.compile(optimizer=tf.keras.optimizers.Adam(0.005))
    return {
        "tfrs_recipe": tfrs_model,
        "recsampled_adam": ours(optimizer="adam", learning_rate=0.005, row_l2=0.0),
        "recsampled_default": ours(),
        "recsampled_default_jit": ours(jit_compile=True),
    }


def step_floor(batch: dict, num_users: int, num_items: int, dim: int, repeats: int) -> dict:
    """The step floor: ``6·B·B·D`` flops (scores, and the two gradient matmuls) at the rate of a
    1024³ float32 GEMM timed here, plus the timed gathers of the batch's rows of both tables
    and their scatter-add (the sparse update)."""
    big = tf.random.stateless_normal([1024, 1024], seed=[0, 1])
    tables = [tf.Variable(tf.zeros([n, dim])) for n in (num_users, num_items)]
    ids = [batch["user_id"], batch["item_id"]]

    def gathers() -> None:
        for table, i in zip(tables, ids, strict=True):
            table.scatter_add(tf.IndexedSlices(tf.gather(table, i), i))

    b = int(batch["user_id"].shape[0])
    rows = tf.random.stateless_normal([b, dim], seed=[0, 2])
    scores = tf.random.stateless_normal([b, b], seed=[0, 3])

    def step_matmuls() -> list:  # the step's three: U·Vᵀ, G·V, (Uᵀ·G)ᵀ
        return [tf.matmul(rows, rows, transpose_b=True), tf.matmul(scores, rows),
                tf.transpose(tf.matmul(rows, scores, transpose_a=True))]  # fmt: skip

    steps = {"gemm": tf.function(lambda: tf.matmul(big, big)), "gathers": tf.function(gathers),
             "step_matmuls": tf.function(step_matmuls)}  # fmt: skip
    timings = harness.time_round_robin(steps, repeats=repeats).summaries()
    flops_per_ms = 2 * 1024**3 / timings["gemm"]["median_ms"]
    matmul_ms = 6 * b * b * dim / flops_per_ms
    return {"gemm_gflops": flops_per_ms / 1e6, "score_flops": 6 * b * b * dim,
            "matmul_floor_ms": matmul_ms, "gathers_ms": timings["gathers"]["median_ms"],
            "floor_ms": matmul_ms + timings["gathers"]["median_ms"],
            # The same three matmuls at the step's own shapes (K = D is small: below GEMM rate).
            "step_matmuls_ms": timings["step_matmuls"]["median_ms"],
            "shape_floor_ms": (timings["step_matmuls"]["median_ms"]
                               + timings["gathers"]["median_ms"]),
            "floor_cpu_ms": (6 * b * b * dim / (2 * 1024**3 / timings["gemm"]["cpu_median_ms"])
                             + timings["gathers"]["cpu_median_ms"])}  # fmt: skip


def _cached_batches(train: Interactions, batch_size: int, steps: int) -> tf.data.Dataset:
    """``steps`` training batches with ``probability`` (the TFRS recipe's ``π_b``), cached."""
    probability = rs.FixedFrequency(counts=train.item_counts, batch_size=batch_size)
    dataset = training_batches(train, batch_size=batch_size, seed=0, drop_remainder=True,
                               max_steps_per_epoch=steps)  # fmt: skip
    dataset = dataset.map(lambda b: b | {"probability": probability.probability(b["item_id"])})
    dataset = dataset.cache()
    for _ in dataset:  # fill the cache
        pass
    return dataset


def _head_to_head(models: dict, dataset: tf.data.Dataset, *, rounds: int, steps: int,
                  batch_size: int, desc: str) -> tuple[dict, harness.Timings, dict]:  # fmt: skip
    """One ``fit`` over ``dataset`` per model per round, rounds alternated: per model the wall and
    CPU ms per step, examples/s and the ratios to the first model (the TFRS recipe)."""
    fits = {name: lambda m=m: m.fit(dataset, epochs=1, verbose=0) for name, m in models.items()}
    load_before = harness.load_average()
    timings = harness.time_round_robin(fits, repeats=rounds, desc=desc)
    load = {"before": load_before, "after": harness.load_average()}
    summaries, baseline = timings.summaries(), next(iter(models))
    tasks = {}
    for name in models:
        wall_ms, cpu_ms = (summaries[name][k] / steps for k in ("median_ms", "cpu_median_ms"))
        wall, cpu = timings.ratio(baseline, name), timings.ratio(baseline, name, cpu=True)
        tasks[name] = {"step_ms": wall_ms, "step_cpu_ms": cpu_ms,
                       "examples_per_second": 1e3 * batch_size / wall_ms,
                       "over_tfrs": wall["mean"], "over_tfrs_cpu": cpu["mean"],
                       "over_tfrs_of_medians": wall["of_medians"], "over_tfrs_se": wall["se"],
                       "over_tfrs_median": wall["median"]}  # fmt: skip
    return tasks, timings, load


def shape_throughput(rounds: int, *, steps: int = 60, shape: dict | None = None,
                     dim: int = 64, batch_size: int = 1024) -> dict:  # fmt: skip
    """Issue 17's head-to-head at its shape: ``steps`` fit steps of each of :data:`SHAPE_TASKS`
    per round, rounds alternated; wall and CPU ms per step, ratios to the TFRS recipe and to the
    floor of :func:`step_floor`."""
    train = synthetic.generate(**(shape or ISSUE_SHAPE)).to_interactions()
    dataset = _cached_batches(train, batch_size, steps)
    models = shape_models(train, dim, batch_size)
    tasks, _, load = _head_to_head(models, dataset, rounds=rounds, steps=steps,
                                   batch_size=batch_size, desc="shape fit")  # fmt: skip
    floor = step_floor(next(iter(dataset)), train.num_users, train.num_items, dim, 3 * rounds)
    for task in tasks.values():
        task["step_over_shape_floor"] = task["step_ms"] / floor["shape_floor_ms"]
        task["step_over_floor"] = task["step_ms"] / floor["floor_ms"]
        task["step_cpu_over_floor_cpu"] = task["step_cpu_ms"] / floor["floor_cpu_ms"]
    return {"shape": {"users": train.num_users, "items": train.num_items, "rows": len(train),
                      "embedding_dim": dim, "batch_size": batch_size, "steps_per_round": steps},
            "rounds": rounds, "floor": floor, "tasks": tasks, "load_average": load}  # fmt: skip


CATALOGUE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "large-catalogue.yaml"
CATALOGUE_TASKS = ("tfrs_recipe", "recsampled_default_rules", "recsampled")


def catalogue_throughput(rounds: int, *, steps: int = 20, overrides: Sequence[str] = ()) -> dict:
    """The 10^6-item config (``configs/large-catalogue.yaml``: B 4096, D 32, 1,024 log-uniform
    catalogue negatives, streaming logQ) head to head: its step with columns by id (what
    ``recsampled train`` runs), the same task under the default per-row rules, and the TFRS recipe
    (in-batch only, dense Adam) at the same B and D, on the config's synthetic log
    (``overrides``: ``--set`` items, for a small test)."""
    config = load_config(CATALOGUE_CONFIG, overrides=overrides)
    train = synthetic.generate(**dataclasses.asdict(config.data.synthetic)).to_interactions()
    b, dim = config.training.batch_size, config.model.embedding_dim
    dataset = _cached_batches(train, b, steps)
    ours = build_model(config, train)
    rules = build_model(config, train, task=lambda c: build_task(config, train, c,
                                                              columns_by_id=False))  # fmt: skip
    tfrs_model = TfrsRecipe(train.num_users, train.num_items, dim, config.task.temperature)
    tfrs_model.compile(optimizer=tf.keras.optimizers.Adam(0.005))
    models = dict(zip(CATALOGUE_TASKS, (tfrs_model, rules, ours), strict=True))
    tasks, timings, load = _head_to_head(models, dataset, rounds=rounds, steps=steps,
                                         batch_size=b, desc="catalogue fit")  # fmt: skip
    for name, task in tasks.items():
        task["over_default_rules"] = timings.ratio("recsampled_default_rules", name)["mean"]
    return {"config": str(CATALOGUE_CONFIG.relative_to(CATALOGUE_CONFIG.parents[1])),
            "shape": {"users": train.num_users, "items": train.num_items, "embedding_dim": dim,
                      "batch_size": b, "num_sampled": config.task.num_sampled,
                      "steps_per_round": steps},
            "rounds": rounds, "tasks": tasks, "load_average": load}  # fmt: skip


def _paired(a: dict, b: dict, fn: Callable[[float, float], float]) -> dict | None:
    """``fn(a_s, b_s)`` per seed (variants share initial weights and data order per seed, so
    seed-to-seed variation largely cancels); None without matching ``per_seed`` values."""
    x, y = a.get("per_seed"), b.get("per_seed")
    if not x or not y or len(x) != len(y):
        return None
    values = [fn(p, q) for p, q in zip(x, y, strict=True)]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"per_seed": values, "mean": float(np.mean(values)), "std": std}


def quality_checks(variants: dict[str, dict]) -> dict:
    """The quality checks from each variant's mean Recall@20 (paired per-seed differences too)."""
    recall = {name: v["recall@20"]["mean"] for name, v in variants.items()}
    beats = {}
    for name in (n for n in LOGQ_VARIANTS if n in recall and "in_batch" in recall):
        paired = _paired(variants[name]["recall@20"], variants["in_batch"]["recall@20"],
                         lambda p, q: p - q)  # fmt: skip
        if paired is not None and paired["std"] > 0:
            paired["t"] = paired["mean"] / (paired["std"] / np.sqrt(len(paired["per_seed"])))
        difference = recall[name] - recall["in_batch"]
        beats[name] = {"passed": bool(difference > 0), "recall@20": recall[name],
                       "in_batch_recall@20": recall["in_batch"], "difference": difference,
                       "paired_difference": paired}  # fmt: skip
    passed = bool(beats) and all(v["passed"] for v in beats.values())
    result: dict = {"logq_beats_in_batch": {"passed": passed, "variants": beats}}
    if "full_softmax" not in recall:
        return result
    full = recall["full_softmax"]
    candidates = {k: r for k, r in recall.items() if k != "full_softmax"}
    if candidates:
        best = max(candidates, key=candidates.get)
        gap = 1.0 - candidates[best] / full
        result["best_sampled_within_3_percent"] = {
            "passed": bool(gap <= RELATIVE_GAP), "best_variant": best,
            "best_recall@20": candidates[best], "full_softmax_recall@20": full,
            "relative_gap": gap,  # negative: the sampled variant beats the full softmax
            "paired_relative_gap": _paired(variants[best]["recall@20"],
                                           variants["full_softmax"]["recall@20"],
                                           lambda p, q: 1.0 - p / q),
            "threshold": RELATIVE_GAP,
            "all_relative_gaps": {k: 1.0 - r / full for k, r in candidates.items()},
        }  # fmt: skip
    return result


def throughput_check(throughput: dict) -> dict:
    """Ours is not slower than TFRS: the mean per-round speed ratio + 2 SE is >= 1 (the two run
    the same graph without catalogue sampling, so this asks for parity up to noise); without
    per-round times, the ratio of the median speeds must be >= 1."""
    speed = throughput["examples_per_second"]
    ratio = speed["ours"] / speed["tfrs"]
    stats = harness.ratio_stats(throughput.get("ours_over_tfrs_per_round") or [])
    if stats["se"] is None:
        return {"passed": bool(ratio >= 1.0), "ours_over_tfrs": ratio, "rule": "median speeds"}
    return {"passed": bool(stats["mean"] + 2 * stats["se"] >= 1.0), "ours_over_tfrs": ratio,
            "per_round_mean": stats["mean"], "per_round_se": stats["se"],
            "rule": "mean per-round ratio + 2 SE >= 1"}  # fmt: skip


def all_checks(entry: dict) -> dict:
    """Every check of a dataset entry, from its ``variants`` and ``fit_throughput``."""
    throughput = throughput_check(entry["fit_throughput"])
    return quality_checks(entry["variants"]) | {"ours_at_least_tfrs_fit_throughput": throughput}


def run_dataset(data: BenchData, config: RetrievalBenchConfig) -> dict:
    entry = {
        "users": data.num_users, "items": data.num_items, "train": len(data.train),
        "test": len(data.test), "test_users": int(np.unique(data.test.user_ids).size),
        "popularity": evaluate_model(None, data), "variants": {},
    }  # fmt: skip
    for variant in VARIANTS:
        runs = [train_and_evaluate(variant, data, config, seed) for seed in config.seeds]
        entry["variants"][variant] = summarise(runs)
        LOG.info("%s %s: recall@20 %.4f, %s examples/s", data.name, variant,
                 entry["variants"][variant]["recall@20"]["mean"],
                 f"{entry['variants'][variant]['examples_per_second']['mean']:,.0f}")  # fmt: skip
    entry["fit_throughput"] = compare_fit_throughput(data, config)
    entry["step_breakdown"] = step_breakdown(data, config)
    speed = entry["fit_throughput"]["examples_per_second"]
    speed["mixed_logq"] = entry["variants"]["mixed_logq"]["examples_per_second"]["mean"]
    for b in entry["step_breakdown"]:  # a step in `fit`, iterator and callbacks included
        b["fit_step_ms"] = 1e3 * config.batch_size / speed[b["variant"]]
    del speed["mixed_logq"]
    entry["checks"] = all_checks(entry)
    return entry


def plot(results: dict, path: Path) -> None:
    """Recall@20 of every variant (mean ± std over seeds) and popularity, a panel per dataset."""
    if not (names := list(results["datasets"])):
        return
    plt = harness.pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        entry = results["datasets"][name]
        recall = {v: r["recall@20"] for v, r in entry["variants"].items()}
        colors = [{"in_batch": "red", "full_softmax": "gray"}.get(v, "tab:blue") for v in recall]
        means, stds = ([r[k] for r in recall.values()] for k in ("mean", "std"))
        ax.barh(list(recall), means, xerr=stds, color=colors)
        ax.axvline(entry["popularity"]["recall@20"], color="k", linestyle="--", label="popularity")
        ax.invert_yaxis()
        ax.set_xlabel("Recall@20 (full catalogue, seen items removed)")
        ax.set_title(f"{name}: mean ± std over {len(results['settings']['seeds'])} seeds")
        ax.legend(loc="lower right")
    harness.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict:
    config, args = harness.parse_options(
        RetrievalBenchConfig, argv, prog="python -m pipelines.bench_retrieval",
        description=__doc__, output="benchmarks/retrieval.json", quick=QUICK,
        extra=lambda p: (p.add_argument("--throughput-only", action="store_true", help=REMEASURE),
                         p.add_argument("--shape-only", action="store_true", help=SHAPE_ONLY),
                         p.add_argument("--catalogue-only", action="store_true",
                                        help=CATALOGUE_ONLY)),
    )  # fmt: skip
    if args.catalogue_only:
        results = json.loads(args.output.read_text(encoding="utf-8"))
        results["catalogue_throughput"] = catalogue_throughput(config.throughput_rounds)
    elif args.shape_only or args.throughput_only:
        results = json.loads(args.output.read_text(encoding="utf-8"))
        key = "issue_shape_throughput" if config.shape is None else "shape_throughput_{}_items"
        results[key.format((config.shape or {}).get("num_items"))] = shape_throughput(
            config.throughput_rounds, steps=config.shape_steps, shape=config.shape
        )
    if args.throughput_only:
        stored = {k: tuple(v) if isinstance(v, list) else v for k, v in results["settings"].items()}
        config = RetrievalBenchConfig(**stored | {"throughput_rounds": config.throughput_rounds})
        for name, entry in results["datasets"].items():
            if not isinstance(data := load(name, config), str):
                entry["fit_throughput"] = compare_fit_throughput(data, config)
                entry["checks"] = all_checks(entry)  # the checks follow the new numbers
        results["settings"]["throughput_rounds"] = config.throughput_rounds
        now = datetime.datetime.now(datetime.UTC)
        results["throughput_remeasured"] = now.isoformat(timespec="seconds")
    elif not (args.shape_only or args.catalogue_only):
        bench = harness.Benchmark(LOG.name, config, schema_version=SCHEMA_VERSION)
        loaded = {name: load(name, config) for name in config.datasets}
        skipped = {name: data for name, data in loaded.items() if isinstance(data, str)}
        LOG.info("skipped: %s", skipped)
        datasets = {n: run_dataset(d, config) for n, d in loaded.items() if n not in skipped}
        results = bench.report(datasets=datasets, skipped=skipped)
    harness.write_json(args.output, results)
    plot(results, args.output.with_suffix(".png"))
    return results


if __name__ == "__main__":
    main()

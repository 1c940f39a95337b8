"""Study: which optimiser, learning rate, row L2 and temperature should the defaults use?

Run ``python -m pipelines.bench_defaults`` (``--quick``: a smoke test); it writes
``benchmarks/defaults.json`` and a plot beside it. Every variant trains the same L2-normalised
ID towers (D=64, B=1024, in-batch negatives with logQ from counts, accidental hits removed) through
``recsampled.runs.build_model`` on several shapes of log, and is ranked on *validation* data
only: each shape's test part (the last interaction of every user) is set aside and never read;
the validation part is the last training interaction of every user
(``recsampled.data.validation_split``), ranked over the whole catalogue after every epoch for a
seeded sample of users. Per variant: Recall@20 and NDCG@20 after every epoch, the best epoch,
examples/s of the steady epochs (wall and process CPU), the load average around each shape.

Shapes: MovieLens 100K (skipped when absent), the synthetic log shaped like the issue's real log
(70k users, 25k items, 650k rows), one with a long item tail (steep Zipf, 60k items) and one with
few interactions per user (2 at least, 3 on average). The study is bounded: each shape has a
wall budget (``--budget-s``), and variants are run in the order given until it is spent (the
rest are listed as skipped).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import recsampled  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before tf.keras is first used)

# isort: split
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines import harness  # noqa: E402
from recsampled.config import Config  # noqa: E402
from recsampled.data import (  # noqa: E402
    Interactions,
    Position,
    leave_last_out,
    read_interactions,
    synthetic,
    training_batches,
)
from recsampled.data.splits import validation_split  # noqa: E402
from recsampled.evaluation import embedding_scores, evaluate  # noqa: E402
from recsampled.runs import build_model  # noqa: E402

LOG = logging.getLogger("pipelines.bench_defaults")
SCHEMA_VERSION = 1
MOVIELENS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "movielens-100k"
SHAPES = {  # arguments of synthetic.generate (seed 0)
    "issue_shaped": {"num_users": 70_000, "num_items": 25_000, "num_interactions": 650_000,
                     "num_clusters": 50},
    "long_tail": {"num_users": 15_000, "num_items": 60_000, "num_interactions": 200_000,
                  "num_clusters": 50, "zipf_exponent": 1.1},
    "few_per_user": {"num_users": 50_000, "num_items": 10_000, "num_interactions": 150_000,
                     "num_clusters": 30, "min_user_interactions": 2},
}  # fmt: skip
#: name -> (optimizer, learning rate, row_l2, temperature); the first is the TFRS recipe.
VARIANTS = {
    "adam_lr0.005": ("adam", 0.005, 0.0, 0.1),
    "adagrad_lr0.1": ("adagrad", 0.1, 0.0, 0.1),
    "lazy_adam_lr0.005": ("lazy_adam", 0.005, 0.0, 0.1),
    "adagrad_lr0.1_l2": ("adagrad", 0.1, 1.0, 0.1),
    "lazy_adam_lr0.005_l2": ("lazy_adam", 0.005, 1.0, 0.1),
    "adagrad_lr0.3": ("adagrad", 0.3, 0.0, 0.1),
    "adagrad_lr0.1_t0.05": ("adagrad", 0.1, 0.0, 0.05),
    "sgd_lr0.01": ("sgd", 0.01, 0.0, 0.1),
    "adagrad_lr0.03": ("adagrad", 0.03, 0.0, 0.1),
    "adagrad_lr0.1_t0.2": ("adagrad", 0.1, 0.0, 0.2),
    "lazy_adam_lr0.002": ("lazy_adam", 0.002, 0.0, 0.1),
    "adagrad_lr0.3_l2": ("adagrad", 0.3, 1.0, 0.1),
    "adagrad_lr0.1_l2_t0.2": ("adagrad", 0.1, 1.0, 0.2),
}


@dataclasses.dataclass(frozen=True)
class DefaultsBenchConfig:
    """Settings of one study."""

    #: among ``movielens-100k`` and the keys of :data:`SHAPES`.
    datasets: tuple[str, ...] = ("movielens-100k", "issue_shaped", "long_tail", "few_per_user")
    movielens: str = str(MOVIELENS)  #: the MovieLens 100K folder.
    variants: tuple[str, ...] = tuple(VARIANTS)  #: keys of :data:`VARIANTS`, in run order.
    epochs: int = dataclasses.field(default=5, metadata={"min": 1})  #: epochs per variant.
    #: the variants (a prefix of ``variants``) and epochs of the issue-shaped log (the costly one).
    large_variants: int = 3
    large_epochs: int = 3
    embedding_dim: int = 64  #: D.
    batch_size: int = 1024  #: B.
    validation_users: int = 3000  #: seeded sample of validation users ranked after each epoch.
    budget_s: float = 360.0  #: wall seconds per shape; variants after it are skipped.
    scale: float = 1.0  #: multiplies the synthetic sizes (the smoke test shrinks them).


QUICK = DefaultsBenchConfig(
    datasets=("movielens-100k", "few_per_user"), variants=("adam_lr0.005", "adagrad_lr0.1"),
    epochs=2, batch_size=128, embedding_dim=16, validation_users=200, scale=0.02,
)  # fmt: skip


def load(name: str, config: DefaultsBenchConfig) -> tuple[Interactions, Interactions] | str:
    """``(fit, validation)`` of a shape (its test part dropped unread), or why it was skipped."""
    if name == "movielens-100k":
        if not (Path(config.movielens) / "u.data").exists():
            return f"MovieLens 100K not found at {config.movielens}"
        log = read_interactions(Path(config.movielens))
    elif name in SHAPES:
        sizes = {k: max(50, int(v * config.scale)) if k.startswith("num_") else v
                 for k, v in SHAPES[name].items()}  # fmt: skip
        sizes["num_clusters"] = min(sizes["num_clusters"], 20 if config.scale < 1 else 100)
        log = synthetic.generate(**sizes, seed=0).to_interactions()
    else:
        raise ValueError(f"Unknown dataset {name!r}; expected 'movielens-100k' or {list(SHAPES)}.")
    fit, validation, _ = validation_split(leave_last_out(log).train)
    return fit, validation


def variant_config(name: str, config: DefaultsBenchConfig) -> Config:
    optimizer, lr, row_l2, temperature = VARIANTS[name]
    return Config.from_dict({
        "model": {"embedding_dim": config.embedding_dim, "normalize": True},
        "task": {"temperature": temperature, "logq": "counts", "remove_accidental_hits": True},
        "training": {"batch_size": config.batch_size, "optimizer": optimizer, "seed": 0,
                     "learning_rate": lr, "row_l2": row_l2, "drop_remainder": True},
    })  # fmt: skip


def validate(model, fit: Interactions, validation: Interactions, users: int) -> dict[str, float]:
    """Recall@20 and NDCG@20 over the whole catalogue, the fit rows removed."""
    queries = model.query_model(tf.range(fit.num_users)).numpy()
    items = model.candidate_model(tf.range(fit.num_items)).numpy()
    result = evaluate({"model": embedding_scores(queries, items)}, fit, validation, ks=(20,),
                      max_users=users, seed=0, popularity=False)["model"].as_dict()  # fmt: skip
    return {"recall@20": float(result["recall@20"]), "ndcg@20": float(result["ndcg@20"])}


def run_variant(name: str, fit: Interactions, validation: Interactions,
                config: DefaultsBenchConfig) -> dict:  # fmt: skip
    """Trains one variant epoch by epoch, validating after each."""
    model = build_model(variant_config(name, config), fit)
    steps = len(fit) // config.batch_size
    curve, wall, cpu, losses = [], [], [], []
    for epoch in range(config.epochs):
        data = training_batches(fit, batch_size=config.batch_size, seed=0, drop_remainder=True,
                                start=Position(epoch, 0), end_epoch=epoch + 1)  # fmt: skip
        cpu0, wall0 = time.process_time(), time.perf_counter()
        history = model.fit(data, epochs=1, verbose=0)
        wall.append(time.perf_counter() - wall0)
        cpu.append(time.process_time() - cpu0)
        losses.append(float(history.history["loss"][-1]))
        curve.append(validate(model, fit, validation, config.validation_users))
    best = max(range(len(curve)), key=lambda e: curve[e]["recall@20"])
    steady = wall[1:] or wall
    examples = steps * config.batch_size
    optimizer, lr, row_l2, temperature = VARIANTS[name]
    return {
        "optimizer": optimizer, "learning_rate": lr, "row_l2": row_l2, "temperature": temperature,
        "curve": curve, "loss": losses, "epoch_seconds": wall, "epoch_cpu_seconds": cpu,
        "best_epoch": best + 1, "best": curve[best], "last": curve[-1],
        "examples_per_second": examples / statistics.median(steady),
        "examples_per_cpu_second": examples / statistics.median(cpu[1:] or cpu),
    }  # fmt: skip


def run_shape(name: str, fit: Interactions, validation: Interactions,
              config: DefaultsBenchConfig) -> dict:  # fmt: skip
    popularity = evaluate({}, fit, validation, ks=(20,), max_users=config.validation_users)
    scores = popularity["popularity"].as_dict()
    entry = {"users": fit.num_users, "items": fit.num_items, "fit_rows": len(fit),
             "validation_rows": len(validation), "variants": {}, "skipped": [],
             "popularity": {k: float(scores[k]) for k in ("recall@20", "ndcg@20")},
             "load_average_before": harness.load_average()}  # fmt: skip
    start = time.perf_counter()
    if name == "issue_shaped":
        variants = config.variants[: config.large_variants]
        config = dataclasses.replace(config, epochs=config.large_epochs)
        entry["skipped"] = list(config.variants[len(variants) :])
    for variant in variants if name == "issue_shaped" else config.variants:
        if entry["variants"] and time.perf_counter() - start > config.budget_s:
            entry["skipped"].append(variant)
            continue
        entry["variants"][variant] = result = run_variant(variant, fit, validation, config)
        LOG.info("%s %s: best recall@20 %.4f (epoch %d), last %.4f, %.0f examples/s", name,
                 variant, result["best"]["recall@20"], result["best_epoch"],
                 result["last"]["recall@20"], result["examples_per_second"])  # fmt: skip
    entry["load_average_after"], entry["seconds"] = (
        harness.load_average(),
        time.perf_counter() - start,
    )
    return entry


def ranking(datasets: dict, recipe: str = "adam_lr0.005") -> dict:
    """Per variant, over the shapes where it ran beside the recipe: last-epoch Recall@20 and
    speed relative to the recipe, and their means; ``best``: the best mean relative Recall@20
    among the variants that ran on every such shape."""
    shapes = {n: e["variants"] for n, e in datasets.items() if recipe in e["variants"]}
    table = {}
    for v in dict.fromkeys(v for runs in shapes.values() for v in runs):
        ran = {n: runs for n, runs in shapes.items() if v in runs}
        rel = {n: r[v]["last"]["recall@20"] / max(1e-9, r[recipe]["last"]["recall@20"])
               for n, r in ran.items()}  # fmt: skip
        speed = {n: r[v]["examples_per_second"] / r[recipe]["examples_per_second"]
                 for n, r in ran.items()}  # fmt: skip
        mean = float(np.mean([*rel.values()]))
        table[v] = {"relative_recall@20": rel, "mean_relative_recall@20": mean,
                    "min_relative_recall@20": min(rel.values()), "speed_over_recipe": speed,
                    "mean_speed_over_recipe": float(np.mean([*speed.values()]))}  # fmt: skip
    everywhere = [v for v in table if len(table[v]["relative_recall@20"]) == len(shapes)]
    best = max(everywhere, key=lambda v: table[v]["mean_relative_recall@20"], default=None)
    return {"shapes": list(shapes), "variants": table, "best": best}


def plot(results: dict, path: Path) -> None:
    """Validation Recall@20 per epoch of every variant, a panel per shape."""
    if not (names := list(results["datasets"])):
        return
    plt = harness.pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for variant, r in results["datasets"][name]["variants"].items():
            ax.plot(range(1, len(r["curve"]) + 1), [c["recall@20"] for c in r["curve"]],
                    label=variant, linewidth=2.5 if variant == "adam_lr0.005" else 1)  # fmt: skip
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation Recall@20")
    axes[0][0].legend(fontsize=7)
    harness.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict:
    config, args = harness.parse_options(
        DefaultsBenchConfig, argv, prog="python -m pipelines.bench_defaults",
        description=__doc__, output="benchmarks/defaults.json", quick=QUICK,
    )  # fmt: skip
    bench = harness.Benchmark(LOG.name, config, schema_version=SCHEMA_VERSION)
    datasets, skipped, results = {}, {}, {}
    for name in config.datasets:
        loaded = load(name, config)
        if isinstance(loaded, str):
            skipped[name] = loaded
            continue
        datasets[name] = run_shape(name, *loaded, config)
        results = bench.report(datasets=datasets, skipped=skipped, ranking=ranking(datasets))
        harness.write_json(args.output, results)  # after every shape, and at the end
    plot(results, args.output.with_suffix(".png"))
    return results


if __name__ == "__main__":
    main()

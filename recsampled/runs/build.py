"""From a :class:`~recsampled.config.Config` to data and a compiled model.

- :func:`load_split`: the ``data`` section -> a train/test :class:`~recsampled.data.splits.Split`
  (generated or read, then split), with load and split reports.
- :func:`build_model`: the ``model``, ``task`` and ``training`` sections -> a compiled
  :class:`~recsampled.models.TwoTowerModel` whose variables (optimiser slots included) exist, so
  that a checkpoint restores into it at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

import tensorflow as tf

from recsampled.config import (
    DATA_SOURCES,
    LOGQ,
    NEGATIVES,
    SAMPLERS,
    SPLITS,
    Config,
    DataConfig,
    EvaluationConfig,
)
from recsampled.data import Interactions, read_side_features
from recsampled.data.splits import Split
from recsampled.models import Tower, TwoTowerModel
from recsampled.samplers import (
    CandidateSampler,
    KernelSamplerRebuild,
    QuadraticKernelSampler,
    UnigramSampler,
)
from recsampled.samplers.frequency import FixedFrequency, FrequencyEstimator
from recsampled.tasks import Retrieval
from recsampled.training.optimizers import make_optimizer


def _read_options(data: DataConfig) -> dict:
    """The ``read_interactions`` keyword arguments of a file source."""
    options = {
        name: getattr(data, name)
        for name in (
            "format", "user_col", "item_col", "timestamp_col", "rating_col", "weight_col",
            "delimiter", "column_names", "encoding", "id_dtype", "min_rating", "dedupe",
            "k_core", "on_bad_rows",
        )
    }  # fmt: skip
    return options


def load_split(data: DataConfig) -> Split:
    """Generates or reads the interactions and splits them as ``data`` says.

    Raises:
        FileNotFoundError, recsampled.data.DataError: for a missing or unreadable file.
        ValueError: if the split needs timestamps the data lacks.
    """
    split = data.split
    if data.source == "file" and split.kind == "files":
        return SPLITS["files"](data.path, split.test_path, **_read_options(data))
    if data.source == "synthetic":
        log = DATA_SOURCES["synthetic"](**dataclasses.asdict(data.synthetic))
        interactions = log.to_interactions(dedupe=data.dedupe, k_core=data.k_core)
    else:
        interactions = DATA_SOURCES["file"](data.path, **_read_options(data))
    if split.kind == "leave_last_out":
        return SPLITS[split.kind](interactions, num_test=split.num_test)
    if split.kind == "random_holdout":
        return SPLITS[split.kind](interactions, test_fraction=split.test_fraction, seed=split.seed)
    if split.cutoff is not None:  # time_cut
        return SPLITS[split.kind](interactions, cutoff=split.cutoff)
    return SPLITS[split.kind](interactions, test_fraction=split.test_fraction)


def build_frequency(
    config: Config, train: Interactions
) -> FixedFrequency | FrequencyEstimator | None:
    """The task's ``candidate_frequency`` (``task.logq``)."""
    kind = LOGQ[config.task.logq]
    if kind is None:
        return None
    if kind is FixedFrequency:
        return FixedFrequency(counts=train.item_counts, batch_size=config.training.batch_size)
    return FrequencyEstimator(**dataclasses.asdict(config.task.estimator))


def build_sampler(
    config: Config, train: Interactions, *, candidate_tower: Tower | None = None
) -> CandidateSampler | None:
    """The catalogue sampler (``task.sampler``), or None without catalogue negatives.

    ``sampler: kernel`` needs the ``candidate_tower``: the tree is built over its embeddings of
    every item (its variables are created here if they are not yet).
    """
    if not NEGATIVES[config.task.negatives].catalogue:
        return None
    if config.task.sampler == "kernel":
        if candidate_tower is None:
            raise ValueError(
                "`candidate_tower` must be given for task.sampler='kernel' (the kernel "
                "sampler draws from the candidate embeddings). Received: candidate_tower=None."
            )
        kernel = config.task.kernel
        return QuadraticKernelSampler(
            _catalogue_embeddings(candidate_tower, train.num_items),
            alpha=kernel.alpha,
            leaf_size=kernel.leaf_size,
            mode=kernel.mode,
        )
    cls = SAMPLERS[config.task.sampler]
    if cls is UnigramSampler:
        return UnigramSampler(counts=train.item_counts, distortion=config.task.distortion)
    return cls(num_classes=train.num_items)


def _catalogue_embeddings(candidate_tower: Tower, num_items: int) -> tf.Tensor:
    """``[num_items, D]``: the candidate tower's embedding of every item id."""
    return candidate_tower(tf.range(num_items), training=False)


def sampler_callbacks(config: Config, model: TwoTowerModel) -> list[tf.keras.callbacks.Callback]:
    """Callbacks the catalogue sampler needs during ``fit``: for ``sampler: kernel``, a
    :class:`~recsampled.samplers.KernelSamplerRebuild` every ``task.kernel.rebuild_every_steps``
    steps from the candidate tower (its cost is logged and written to the epoch logs)."""
    sampler = getattr(model.task, "sampler", None)
    if not isinstance(sampler, QuadraticKernelSampler):
        return []
    tower, num_items = model.candidate_model, sampler.num_classes
    return [
        KernelSamplerRebuild(
            sampler,
            every_n_batches=config.task.kernel.rebuild_every_steps,
            embeddings=lambda: _catalogue_embeddings(tower, num_items),
        )
    ]


def evaluation_settings(settings: EvaluationConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`recsampled.evaluation.evaluate` that the ``evaluation``
    section sets (cut-offs, batch size, user sample, the iALS baseline)."""
    ials = dataclasses.asdict(settings.ials) if "ials" in settings.baselines else None
    return dict(
        ks=settings.ks, batch_size=settings.batch_size, max_users=settings.max_users,
        seed=settings.seed, ials=ials,
    )  # fmt: skip


class TowerFeatures(TypedDict, total=False):
    """Per-id side features of a tower: ``Tower(categorical_features=, numeric_features=)``."""

    categorical: Mapping[str, Any]
    numeric: Mapping[str, Any]


def build_towers(
    config: Config,
    train: Interactions,
    *,
    user_features: TowerFeatures | None = None,
    item_features: TowerFeatures | None = None,
) -> tuple[Tower, Tower]:
    """The query and candidate towers of the ``model`` section, with side features: those given,
    else those of ``data.user_features`` / ``data.item_features`` (read here)."""
    model_config = config.model
    towers = []
    for name, size, features, spec, vocabulary in (
        ("query", train.num_users, user_features, config.data.user_features, train.users),
        ("candidate", train.num_items, item_features, config.data.item_features, train.items),
    ):
        if features is None and spec is not None:  # side features named in the config
            options = dataclasses.asdict(spec)
            kind = "user" if name == "query" else "item"
            features = read_side_features(options.pop("path"), vocabulary, kind=kind, **options)
            features = features.tower()
        features = features or {}
        towers.append(
            Tower(
                size,
                model_config.embedding_dim,
                categorical_features=features.get("categorical"),
                numeric_features=features.get("numeric"),
                hidden_units=model_config.hidden_units,
                normalize=model_config.normalize,
                name=f"{name}_tower",
            )
        )
    return towers[0], towers[1]


def build_task(
    config: Config, train: Interactions, candidate_tower: Tower, *, columns_by_id: bool = True
) -> Retrieval:
    """The retrieval task of the ``task`` section (samplers, logQ, negatives); ``columns_by_id``
    as :class:`~recsampled.tasks.Retrieval`'s (exact for these id towers, and faster)."""
    task_config = config.task
    negatives = NEGATIVES[task_config.negatives]
    sampler = build_sampler(config, train, candidate_tower=candidate_tower)
    return Retrieval(
        temperature=task_config.temperature,
        num_hard_negatives=task_config.num_hard_negatives,
        remove_accidental_hits=task_config.remove_accidental_hits,
        candidate_frequency=build_frequency(config, train),
        sampler=sampler,
        num_sampled=task_config.num_sampled,
        candidate_model=candidate_tower if sampler is not None else None,
        in_batch_negatives=negatives.in_batch,
        seed=task_config.seed if task_config.seed is not None else config.training.seed,
        columns_by_id=columns_by_id,
    )


def build_model(
    config: Config,
    train: Interactions,
    *,
    user_features: TowerFeatures | None = None,
    item_features: TowerFeatures | None = None,
    task: tf.keras.layers.Layer | Callable[[Tower], tf.keras.layers.Layer] | None = None,
) -> TwoTowerModel:
    """A compiled two-tower model with its retrieval task, every variable created.

    The initial weights depend on ``training.seed`` only.

    Args:
        config: the run's config (``model``, ``task`` and ``training`` sections).
        train: the training interactions (vocabulary sizes, item counts, weights).
        user_features: side features of the query tower
            (``{"categorical": {...}, "numeric": {...}}``, per user index).
        item_features: side features of the candidate tower (per item index).
        task: replaces the task of the ``task`` section: a layer, or a function of the
            candidate tower that returns one (e.g. a full softmax that embeds the catalogue).

    Returns:
        The compiled :class:`~recsampled.models.TwoTowerModel`.
    """
    tf.keras.utils.set_random_seed(config.training.seed)
    query, candidate = build_towers(
        config, train, user_features=user_features, item_features=item_features
    )
    if task is None:
        task = build_task(config, train, candidate)
    elif not isinstance(task, tf.keras.layers.Layer):
        task = task(candidate)
    model = TwoTowerModel(
        query, candidate, task, sample_weight_key="weight" if train.weights is not None else None
    )
    optimizer = make_optimizer(
        config.training.optimizer,
        learning_rate=config.training.learning_rate,
        row_l2=config.training.row_l2,
    )
    model.compile(optimizer=optimizer, jit_compile=config.training.jit_compile)
    ids = tf.zeros([1], tf.int32)
    model({"user_id": ids, "item_id": ids})  # creates the towers' variables
    optimizer.build(model.trainable_variables)  # and the optimiser's, so restores apply at once
    return model

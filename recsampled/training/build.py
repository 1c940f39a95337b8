"""From a :class:`~recsampled.config.Config` to data and a compiled model.

- :func:`load_split`: the ``data`` section -> a train/test :class:`~recsampled.data.splits.Split`
  (generated or read, then split), with load and split reports.
- :func:`build_model`: the ``model``, ``task`` and ``training`` sections -> a compiled
  :class:`~recsampled.models.TwoTowerModel` whose variables (optimiser slots included) exist, so
  that a checkpoint restores into it at once.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from recsampled.config import (
    DATA_SOURCES,
    LOGQ,
    NEGATIVES,
    OPTIMIZERS,
    SAMPLERS,
    SPLITS,
    Config,
    DataConfig,
)
from recsampled.data import Interactions
from recsampled.data.splits import Split
from recsampled.models import Tower, TwoTowerModel
from recsampled.samplers import CandidateSampler, UnigramSampler
from recsampled.samplers.frequency import FixedFrequency, FrequencyEstimator
from recsampled.tasks import Retrieval


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


def build_sampler(config: Config, train: Interactions) -> CandidateSampler | None:
    """The catalogue sampler (``task.sampler``), or None without catalogue negatives."""
    if not NEGATIVES[config.task.negatives].catalogue:
        return None
    cls = SAMPLERS[config.task.sampler]
    if cls is UnigramSampler:
        return UnigramSampler(counts=train.item_counts, distortion=config.task.distortion)
    return cls(num_classes=train.num_items)


def build_model(config: Config, train: Interactions) -> TwoTowerModel:
    """A compiled two-tower model with its retrieval task, every variable created.

    The initial weights depend on ``training.seed`` only.
    """
    tf.keras.utils.set_random_seed(config.training.seed)
    model_config, task_config = config.model, config.task
    towers = {
        name: Tower(
            size,
            model_config.embedding_dim,
            hidden_units=model_config.hidden_units,
            normalize=model_config.normalize,
            name=f"{name}_tower",
        )
        for name, size in (("query", train.num_users), ("candidate", train.num_items))
    }
    negatives = NEGATIVES[task_config.negatives]
    sampler = build_sampler(config, train)
    task = Retrieval(
        temperature=task_config.temperature,
        num_hard_negatives=task_config.num_hard_negatives,
        remove_accidental_hits=task_config.remove_accidental_hits,
        candidate_frequency=build_frequency(config, train),
        sampler=sampler,
        num_sampled=task_config.num_sampled,
        candidate_model=towers["candidate"] if sampler is not None else None,
        in_batch_negatives=negatives.in_batch,
        seed=task_config.seed if task_config.seed is not None else config.training.seed,
    )
    model = TwoTowerModel(
        towers["query"],
        towers["candidate"],
        task,
        sample_weight_key="weight" if train.weights is not None else None,
    )
    optimizer = OPTIMIZERS[config.training.optimizer](learning_rate=config.training.learning_rate)
    model.compile(optimizer=optimizer)
    ids = tf.zeros([1], tf.int32)
    model({"user_id": ids, "item_id": ids})  # creates the towers' variables
    optimizer.build(model.trainable_variables)  # and the optimiser's, so restores apply at once
    return model

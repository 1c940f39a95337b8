"""``train``: one run of ``recsampled train``, from a config to a run directory.

Reads top to bottom: check the run directory against the config, load and split the data, save
the vocabularies, build the model, restore the last checkpoint if there is one, ``fit`` (with the
checkpoint and progress callbacks), save the towers, and evaluate the model and the popularity
baseline on the full catalogue. Running it again on the same directory resumes from the last
checkpoint; on a finished run it only rewrites the outputs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import tensorflow as tf

from recsampled.config import Config, EvaluationConfig
from recsampled.data import Interactions
from recsampled.evaluation import (
    RankingMetrics,
    embedding_scores,
    popularity_scores,
    ranking_metrics,
    sample_users,
)
from recsampled.models import TwoTowerModel
from recsampled.training.batches import Position, steps_per_epoch, training_batches
from recsampled.training.build import build_model, load_split
from recsampled.training.callbacks import CheckpointCallback, ProgressCallback, TrainingState
from recsampled.training.outputs import SCHEMA_VERSION, RunDirectory, save_towers, write_json


@dataclass(frozen=True)
class TrainResult:
    """What a run did.

    Attributes:
        run_dir: the run directory.
        config: the config used.
        data_summary: the load and split reports, as text.
        resumed_from: the position restored from a checkpoint, or None for a fresh start.
        history: one record per epoch (``epoch``, ``loss``: mean batch loss, ``steps``).
        metrics: the model's full-catalogue metrics on the test split.
        popularity: the popularity baseline's, on the same users.
        seconds: wall time of this call.
    """

    run_dir: Path
    config: Config
    data_summary: str
    resumed_from: Position | None
    history: list[dict]
    metrics: RankingMetrics
    popularity: RankingMetrics
    seconds: float

    def table(self) -> str:
        """The metrics of the model beside popularity, one row per metric."""
        model, baseline = self.metrics.as_dict(), self.popularity.as_dict()
        rows = [f"{'metric':<14}{'model':>10}{'popularity':>12}"]
        for key, value in model.items():
            if key in ("num_users", "num_items"):
                continue
            rows.append(f"{key:<14}{value:>10.4f}{baseline[key]:>12.4f}")
        rows.append(f"({self.metrics.num_users} test users, {self.metrics.num_items} items)")
        return "\n".join(rows)


def train(
    config: Config,
    run_dir: str | Path,
    *,
    force: bool = False,
    stream: TextIO | None = None,
) -> TrainResult:
    """Trains, checkpoints, exports and evaluates one run (module docstring).

    Args:
        config: the run's config.
        run_dir: the run directory; an existing one with a checkpoint of the same config is
            resumed.
        force: discard an earlier run in ``run_dir`` and start over.
        stream: where progress goes (default ``sys.stderr``).

    Returns:
        A :class:`TrainResult`.

    Raises:
        recsampled.training.RunDirectoryError: if ``run_dir`` holds another config's run.
        recsampled.config.ConfigError, recsampled.data.DataError, FileNotFoundError,
        ValueError: for bad data or settings.
    """
    started = time.perf_counter()

    def say(message: str) -> None:
        print(message, file=stream or sys.stderr, flush=True)

    run = RunDirectory(Path(run_dir))
    run.prepare(config, force=force)

    split = load_split(config.data)
    train_log, test_log = split.train, split.test
    data_summary = "\n".join(
        [_describe_source(config)]
        + [report.summary() for report in (train_log.report, split.report) if report is not None]
    )
    say(data_summary)
    run.save_vocabularies(train_log.users, train_log.items)

    model = build_model(config, train_log)
    state = TrainingState()
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, state=state)
    manager = tf.train.CheckpointManager(
        checkpoint, str(run.checkpoints), max_to_keep=config.training.max_checkpoints
    )
    resumed_from = None
    if manager.latest_checkpoint is not None:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        resumed_from = state.position
        say(
            f"Resuming from {manager.latest_checkpoint}: epoch {resumed_from.epoch + 1}, "
            f"{resumed_from.batch} batches done."
        )

    _fit(model, train_log, config, state, manager, stream)
    history = state.history_records()
    write_json(run.history_file, history)

    save_towers(
        run.towers,
        query_model=model.query_model,
        candidate_model=model.candidate_model,
        num_users=train_log.num_users,
        num_items=train_log.num_items,
        embedding_dim=config.model.embedding_dim,
    )
    metrics, popularity = _evaluate(model, train_log, test_log, config)
    write_json(
        run.metrics_file,
        {
            "schema_version": SCHEMA_VERSION,
            "protocol": "full catalogue, training items removed, mean over test users",
            "split": split.report.method,
            "train_rows": len(train_log),
            "test_rows": len(test_log),
            "model": metrics.as_dict(),
            "popularity": popularity.as_dict(),
        },
    )
    return TrainResult(
        run_dir=run.path,
        config=config,
        data_summary=data_summary,
        resumed_from=resumed_from,
        history=history,
        metrics=metrics,
        popularity=popularity,
        seconds=time.perf_counter() - started,
    )


def _describe_source(config: Config) -> str:
    data = config.data
    if data.source == "file":
        return f"Data: {data.path} (format {data.format!r})."
    arguments = ", ".join(f"{k}={v}" for k, v in data.synthetic.to_dict().items())
    return f"Data: synthetic log, recsampled.data.synthetic.generate({arguments})."


def _fit(
    model: TwoTowerModel,
    train_log: Interactions,
    config: Config,
    state: TrainingState,
    manager: tf.train.CheckpointManager,
    stream: TextIO | None,
) -> None:
    """``model.fit`` from ``state.position`` to the last epoch, with checkpoints and progress.

    A run stopped inside an epoch takes two ``fit`` calls: the rest of that epoch, then the
    remaining epochs (``fit`` has one ``steps_per_epoch`` for all of its epochs).
    """
    settings = config.training
    num_batches = steps_per_epoch(
        len(train_log),
        settings.batch_size,
        drop_remainder=settings.drop_remainder,
        limit=settings.steps_per_epoch,
    )
    checkpoints = CheckpointCallback(
        manager, state, steps_per_epoch=num_batches, every_steps=settings.checkpoint_every_steps
    )
    progress = ProgressCallback(
        checkpoints,
        num_rows=(
            num_batches * settings.batch_size
            if settings.drop_remainder or settings.steps_per_epoch is not None
            else len(train_log)
        ),
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        stream=stream,
    )

    def batches(start: Position, end_epoch: int) -> tf.data.Dataset:
        return training_batches(
            train_log,
            batch_size=settings.batch_size,
            seed=settings.seed,
            start=start,
            end_epoch=end_epoch,
            shuffle=settings.shuffle,
            drop_remainder=settings.drop_remainder,
            with_weights=train_log.weights is not None,
            max_steps_per_epoch=settings.steps_per_epoch,
        )

    start = state.position
    fit = dict(callbacks=[checkpoints, progress], verbose=0)
    if start.batch > 0:
        model.fit(
            batches(start, start.epoch + 1),
            initial_epoch=start.epoch,
            epochs=start.epoch + 1,
            steps_per_epoch=num_batches - start.batch,
            **fit,
        )
        start = Position(start.epoch + 1, 0)
    if start.epoch < settings.epochs:
        model.fit(
            batches(start, settings.epochs),
            initial_epoch=start.epoch,
            epochs=settings.epochs,
            steps_per_epoch=num_batches,
            **fit,
        )


def _embed(tower: tf.keras.layers.Layer, num_ids: int, chunk: int = 1 << 16) -> np.ndarray:
    """``[num_ids, D]`` embeddings of every index, in chunks."""
    parts = [
        tower(tf.range(start, min(start + chunk, num_ids))).numpy()
        for start in range(0, num_ids, chunk)
    ]
    return np.concatenate(parts)


def evaluation_arguments(
    train_log: Interactions,
    test_log: Interactions,
    settings: EvaluationConfig,
    *,
    num_users: int | None = None,
    num_items: int | None = None,
) -> dict:
    """The keyword arguments of ``ranking_metrics`` for a run's split and evaluation settings.

    The test users are the seeded sample of ``settings`` (all of them without ``max_users``);
    ``num_users``/``num_items`` default to the training log's vocabulary sizes.
    """
    return dict(
        num_users=train_log.num_users if num_users is None else num_users,
        num_items=train_log.num_items if num_items is None else num_items,
        train_user_ids=train_log.user_ids,
        train_item_ids=train_log.item_ids,
        test_user_ids=test_log.user_ids,
        test_item_ids=test_log.item_ids,
        ks=settings.ks,
        batch_size=settings.batch_size,
        users=sample_users(test_log.user_ids, settings.max_users, settings.seed),
    )


def _evaluate(
    model: TwoTowerModel, train_log: Interactions, test_log: Interactions, config: Config
) -> tuple[RankingMetrics, RankingMetrics]:
    """Full-catalogue metrics of the model and of popularity, on the same test users."""
    arguments = evaluation_arguments(train_log, test_log, config.evaluation)
    queries = _embed(model.query_model, train_log.num_users)
    candidates = _embed(model.candidate_model, train_log.num_items)
    metrics = ranking_metrics(embedding_scores(queries, candidates), **arguments)
    popularity = ranking_metrics(popularity_scores(train_log.item_counts), **arguments)
    return metrics, popularity

"""``train``: one run of ``recsampled train``, from a config to a run directory.

Reads top to bottom: check the run directory against the config, load and split the data, save
the vocabularies, build the model, restore the last checkpoint if there is one, ``fit`` (with the
checkpoint and progress callbacks), save the towers, and evaluate the model and the popularity
baseline on the full catalogue. Running it again on the same directory resumes from the last
checkpoint; on a finished run it only rewrites the outputs, unless ``training.epochs`` grew: the
run then continues from its last checkpoint to the new last epoch.

With ``data.split.validation`` the model fits the training part minus a validation part, which
is ranked over the whole catalogue after every epoch (``val_*`` keys in the Keras logs and in
``history.json``); ``training.early_stopping`` stops on one of them and restores the best epoch's
weights before the towers are saved. The test split is used once, at the end.

With ``training.distribute`` the run trains under a ``tf.distribute`` strategy
(:mod:`recsampled.runs.distribute`): the model is built in its scope, the global batches are
split over the replicas, every worker checks that it built the same vocabularies and training
rows as the others, and only the chief writes the run directory (the other workers checkpoint
to a temporary folder, deleted at the end, and restore from the chief's checkpoints).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from recsampled.config import Config
from recsampled.data import Interactions
from recsampled.data.dataset import Position, steps_per_epoch, training_batches
from recsampled.data.splits import Split, validation_split
from recsampled.evaluation import RankingMetrics, embedding_scores, evaluate
from recsampled.models import TwoTowerModel, embed_ids
from recsampled.runs.build import build_model, evaluation_settings, load_split, sampler_callbacks
from recsampled.runs.directory import RunDirectory, holds_run_lock
from recsampled.runs.distribute import (
    check_identical,
    digest,
    distribute_batches,
    is_chief,
    make_strategy,
    worker_name,
)
from recsampled.training.callbacks import CheckpointCallback, ProgressCallback, TrainingState
from recsampled.training.guards import check_before_training, nan_guard
from recsampled.training.plots import write_history_plot
from recsampled.training.validation import EarlyStoppingCallback, ValidationCallback, should_stop

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What a run did.

    Attributes:
        run_dir: the run directory.
        config: the config used.
        data_summary: the load and split reports, as text.
        resumed_from: the position restored from a checkpoint, or None for a fresh start.
        history: one record per epoch (``epoch``, ``loss``: mean batch loss, ``steps``, and
            the ``val_*`` metrics with ``data.split.validation``).
        metrics: the model's full-catalogue metrics on the test split (None on a worker that
            is not the chief: it neither evaluates nor writes).
        popularity: the popularity baseline's, on the same users (None likewise).
        seconds: wall time of this call.
        baselines: the other baselines of ``evaluation.baselines`` (``"ials"``), on the same
            users (empty likewise).
    """

    run_dir: Path
    config: Config
    data_summary: str
    resumed_from: Position | None
    history: list[dict]
    metrics: RankingMetrics | None
    popularity: RankingMetrics | None
    seconds: float
    baselines: dict[str, RankingMetrics] = field(default_factory=dict)

    def table(self) -> str:
        """The metrics of the model beside the baselines (iALS, popularity), one row per metric."""
        if self.metrics is None or self.popularity is None:
            return "(no test metrics: a worker that is not the chief, or evaluate_test=False)"
        columns = {"model": self.metrics, **self.baselines, "popularity": self.popularity}
        columns = {name: m.as_dict() for name, m in columns.items()}
        rows = [f"{'metric':<14}" + "".join(f"{name:>12}" for name in columns)]
        for key in columns["model"]:
            if key in ("num_users", "num_items"):
                continue
            rows.append(f"{key:<14}" + "".join(f"{c[key]:>12.4f}" for c in columns.values()))
        rows.append(f"({self.metrics.num_users} test users, {self.metrics.num_items} items)")
        return "\n".join(rows)


@holds_run_lock  # the run directory's lock, from run.prepare to the end
def train(
    config: Config,
    run_dir: str | Path,
    *,
    force: bool = False,
    on_epoch: Callable[[int, dict], None] | None = None,
    evaluate_test: bool = True,
) -> TrainResult:
    """Trains, checkpoints, exports and evaluates one run (module docstring).

    Args:
        config: the run's config.
        run_dir: the run directory; an existing one with a checkpoint of the same config is
            resumed, and so is one whose config differs only by a smaller ``training.epochs``
            (a finished run extended with more epochs).
        force: discard an earlier run in ``run_dir`` and start over.
        on_epoch: called as ``on_epoch(epoch, logs)`` after each epoch (0-based, as Keras),
            once its validation metrics, checkpoint and early-stopping check are done; ``logs``
            is a copy of the epoch's Keras logs (``loss`` and the ``val_*`` metrics). An
            exception it raises ends the run there (``recsampled tune`` prunes trials so).
        evaluate_test: rank the test split at the end; False leaves it untouched (tuning
            trials): ``metrics.json`` then holds the row counts only, and the result's
            ``metrics`` and ``popularity`` are None.

    Progress and the data summary go to the ``recsampled`` logger.

    Returns:
        A :class:`TrainResult`.

    Raises:
        recsampled.errors.RunDirectoryError: if ``run_dir`` holds another config's run.
        recsampled.config.ConfigError, recsampled.data.DataError, FileNotFoundError,
        ValueError: for bad data or settings.
    """
    started = time.perf_counter()
    strategy = make_strategy(config.training.distribute)  # before any other TensorFlow work
    chief = is_chief(strategy)
    run = RunDirectory(Path(run_dir))
    if chief:
        run.prepare(config, force=force, more_epochs=True)

    split = load_split(config.data)
    train_log = split.train
    fit_log, validation = _carve_validation(config, train_log)
    reports = (train_log.report, split.report, validation.report if validation else None)
    data_summary = "\n".join(
        [_describe_source(config)] + [report.summary() for report in reports if report is not None]
    )
    logger.info("%s", data_summary)
    check_before_training(config, split, fit_log=fit_log, validation=validation)
    if chief:
        run.check_data(config, split)  # changed data: refuse to resume, before writing
        run.save_vocabularies(train_log.users, train_log.items)
    # Also a barrier: the chief has prepared the run directory when the others pass it.
    check_identical(strategy, _data_digest(train_log, fit_log), what="vocabularies and rows")

    with strategy.scope():
        model = build_model(config, fit_log)
    # Every worker saves checkpoints (saving may take part in collectives), the chief to the
    # run directory, the others to a temporary folder; all restore from the chief's.
    folder = run.checkpoints if chief else Path(tempfile.mkdtemp(prefix="recsampled-worker-"))
    try:
        state, resumed_from = _restore_and_fit(
            model, fit_log, config, run, folder, strategy,
            validation=validation, on_epoch=on_epoch,
        )  # fmt: skip
    finally:
        if not chief:
            shutil.rmtree(folder, ignore_errors=True)
    history = state.history_records()
    metrics = popularity = None
    baselines: dict[str, RankingMetrics] = {}
    if chief:
        metrics, popularity, baselines = _write_outputs(
            run, model, config, split, fit_log, validation, history, evaluate_test=evaluate_test
        )
    # The others wait for the chief's outputs (a worker that left early would look lost to it).
    check_identical(strategy, len(history), what="epochs trained")
    return TrainResult(
        run_dir=run.path,
        config=config,
        data_summary=data_summary,
        resumed_from=resumed_from,
        history=history,
        metrics=metrics,
        popularity=popularity,
        seconds=time.perf_counter() - started,
        baselines=baselines,
    )


def _write_outputs(
    run: RunDirectory,
    model: TwoTowerModel,
    config: Config,
    split: Split,
    fit_log: Interactions,
    validation: Split | None,
    history: list[dict],
    *,
    evaluate_test: bool = True,
) -> tuple[RankingMetrics | None, RankingMetrics | None, dict[str, RankingMetrics]]:
    """The chief's part after training: history, towers, full-catalogue metrics (the model,
    the ``evaluation.baselines``, popularity)."""
    train_log, test_log = split.train, split.test
    run.write_history(history)
    write_history_plot(run.history_plot, history)
    run.save_towers(
        query_model=model.query_model,
        candidate_model=model.candidate_model,
        num_users=train_log.num_users,
        num_items=train_log.num_items,
        embedding_dim=config.model.embedding_dim,
    )
    metrics = popularity = None
    baselines: dict[str, RankingMetrics] = {}
    if evaluate_test:
        metrics, popularity, baselines = _evaluate(model, train_log, test_log, config)
    run.write_metrics(
        {
            "protocol": "full catalogue, training items removed, mean over test users",
            "split": split.report.method,
            "train_rows": len(fit_log),
            **({"validation_rows": len(validation.test)} if validation else {}),
            "test_rows": len(test_log),
            **({"model": metrics.as_dict()} if metrics is not None else {}),
            **{name: m.as_dict() for name, m in baselines.items()},
            **({"popularity": popularity.as_dict()} if popularity is not None else {}),
        },
    )
    return metrics, popularity, baselines


def _data_digest(train_log: Interactions, fit_log: Interactions) -> int:
    """A fingerprint of the vocabularies and of the rows to fit (identical on every worker)."""
    vocabularies = [
        array
        for vocabulary in (train_log.users, train_log.items)
        for array in (vocabulary.decode(np.arange(len(vocabulary))), vocabulary.counts)
    ]
    return digest(*vocabularies, fit_log.user_ids, fit_log.item_ids)


def _restore_and_fit(
    model: TwoTowerModel,
    fit_log: Interactions,
    config: Config,
    run: RunDirectory,
    folder: Path,
    strategy: tf.distribute.Strategy,
    *,
    validation: Split | None,
    on_epoch: Callable[[int, dict], None] | None,
) -> tuple[TrainingState, Position | None]:
    """Restores the run's latest checkpoint (if any), fits to the last epoch checkpointing to
    ``folder``, restores the best epoch with early stopping; returns the state and the
    position resumed from."""
    state = TrainingState()
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, state=state)
    manager = tf.train.CheckpointManager(
        checkpoint, str(folder), max_to_keep=config.training.max_checkpoints
    )
    resumed_from, latest = None, run.latest_checkpoint()
    if latest is not None:
        checkpoint.restore(latest).assert_existing_objects_matched()
        resumed_from = state.position
        logger.info(
            "%sResuming from %s: epoch %d, %d batches done.",
            "" if strategy.num_replicas_in_sync == 1 else f"{worker_name(strategy)}: ",
            latest, resumed_from.epoch + 1, resumed_from.batch,
        )  # fmt: skip
    best = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model), str(folder / "best"), max_to_keep=1
    )
    _fit(model, fit_log, config, state, manager, validation=validation, best=best,
         on_epoch=on_epoch, strategy=strategy)  # fmt: skip
    if config.training.early_stopping is not None:
        epoch = EarlyStoppingCallback.restore_best(tf.train.Checkpoint(model=model), best)
        logger.info("Restored the weights of epoch %d, the best on validation.", epoch)
    return state, resumed_from


def _describe_source(config: Config) -> str:
    data = config.data
    if data.source == "file":
        return f"Data: {data.path} (format {data.format!r})."
    arguments = ", ".join(f"{k}={v}" for k, v in data.synthetic.to_dict().items())
    return f"Data: synthetic log, recsampled.data.synthetic.generate({arguments})."


def _carve_validation(config: Config, train_log: Interactions) -> tuple[Interactions, Split | None]:
    """The rows to fit and the validation split (``data.split.validation``), if any."""
    settings = config.data.split.validation
    if settings is None:
        return train_log, None
    validation = validation_split(
        train_log, per_user=settings.per_user, fraction=settings.fraction, seed=settings.seed
    )
    return validation.train, validation


def _epoch_callbacks(
    model: TwoTowerModel,
    config: Config,
    checkpoints: CheckpointCallback,
    validation: Split | None,
    best: tf.train.CheckpointManager,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> tuple[list[tf.keras.callbacks.Callback], list[tf.keras.callbacks.Callback]]:
    """The callbacks before the checkpoint callback (validation) and after it (early stop,
    then ``on_epoch``)."""
    hook = []
    if on_epoch is not None:
        hook = [
            tf.keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: on_epoch(epoch, dict(logs or {}))
            )
        ]
    if validation is None:
        return [], hook
    settings = config.evaluation
    before = [
        ValidationCallback(
            query_model=model.query_model,
            candidate_model=model.candidate_model,
            fit=validation.train,
            validation=validation.test,
            ks=settings.ks,
            batch_size=settings.batch_size,
            max_users=settings.validation_users,
            seed=config.data.split.validation.seed,
        )
    ]
    stopping = config.training.early_stopping
    if stopping is None:
        return before, hook
    after = EarlyStoppingCallback(
        checkpoints.history,
        best,
        monitor=stopping.monitor,
        mode=stopping.mode,
        patience=stopping.patience,
    )
    return before, [after, *hook]


def _stopped(config: Config, state: TrainingState) -> bool:
    """Whether early stopping ended the run already (its history says so)."""
    stopping, history = config.training.early_stopping, state.history_records()
    if stopping is None or not history:
        return False
    return should_stop(
        history, monitor=stopping.monitor, mode=stopping.mode, patience=stopping.patience
    )


def _fit(
    model: TwoTowerModel,
    train_log: Interactions,
    config: Config,
    state: TrainingState,
    manager: tf.train.CheckpointManager,
    *,
    validation: Split | None = None,
    best: tf.train.CheckpointManager,
    on_epoch: Callable[[int, dict], None] | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> None:
    """``model.fit`` from ``state.position`` to the last epoch, with checkpoints and progress
    (and validation and early stopping when configured).

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
    )

    def batches(start: Position, end_epoch: int) -> tf.data.Dataset:
        """The global batches, or under a strategy each replica's slice of them."""
        return distribute_batches(
            strategy or tf.distribute.get_strategy(),
            lambda: training_batches(
                train_log,
                batch_size=settings.batch_size,
                seed=settings.seed,
                start=start,
                end_epoch=end_epoch,
                shuffle=settings.shuffle,
                drop_remainder=settings.drop_remainder,
                with_weights=train_log.weights is not None,
                max_steps_per_epoch=settings.steps_per_epoch,
            ),
        )

    start = state.position
    before, after = _epoch_callbacks(model, config, checkpoints, validation, best, on_epoch)
    callbacks = [
        nan_guard(config, manager.directory),  # first: a NaN step is never checkpointed
        *before, checkpoints, *after, progress, *sampler_callbacks(config, model),
    ]  # fmt: skip
    fit = dict(callbacks=callbacks, verbose=0)
    if _stopped(config, state):
        return
    if start.batch > 0:
        model.fit(
            batches(start, start.epoch + 1),
            initial_epoch=start.epoch,
            epochs=start.epoch + 1,
            steps_per_epoch=num_batches - start.batch,
            **fit,
        )
        start = Position(start.epoch + 1, 0)
    if start.epoch < settings.epochs and not _stopped(config, state):
        model.fit(
            batches(start, settings.epochs),
            initial_epoch=start.epoch,
            epochs=settings.epochs,
            steps_per_epoch=num_batches,
            **fit,
        )


def _evaluate(
    model: TwoTowerModel, train_log: Interactions, test_log: Interactions, config: Config
) -> tuple[RankingMetrics, RankingMetrics, dict[str, RankingMetrics]]:
    """Full-catalogue metrics of the model, of popularity and of the other baselines
    (``evaluation.baselines``), on the same test users."""
    queries = embed_ids(model.query_model, train_log.num_users, batch_size=1 << 16)
    candidates = embed_ids(model.candidate_model, train_log.num_items, batch_size=1 << 16)
    scorers = {"model": embedding_scores(queries, candidates)}
    result = evaluate(scorers, train_log, test_log, **evaluation_settings(config.evaluation))
    baselines = {k: v for k, v in result.items() if k not in ("model", "popularity")}
    return result["model"], result["popularity"], baselines

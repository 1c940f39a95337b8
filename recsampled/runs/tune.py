"""``tune``: an Optuna study over a training config (``recsampled tune``).

Reads top to bottom: lock the output folder, check that a study already in it belongs to this
config, open the study (SQLite, TPE seeded by ``tune.seed``, a pruner on the per-epoch
validation metric), mark the trials that a killed process left running as failed and queue
their parameters again, run trials until ``tune.trials`` have finished (completed or pruned),
then train the best trial's config once more into ``DIR/best``, whose run ranks the test split
once, and write the result and Optuna's plots.

Each trial is a normal run (:func:`recsampled.runs.train`) of the base config with the trial's
parameters (:func:`~recsampled.runs.search_space.suggest_config`), in ``DIR/trials/NNNN``. It
validates on ``data.split.validation`` after every epoch; the trial reports ``tune.metric`` to
Optuna there (which may prune it), and its value is the metric of its best epoch (the one early
stopping restores). Trials are compared on validation only; the test split is not used to pick
anything.

Layout of ``DIR``::

    tune.yaml        the base config and its tune section (a study resumes only with the same)
    study.db         the Optuna study (sqlite:///DIR/study.db)
    tune.lock        held (flock) while a process tunes in DIR
    trials/NNNN/     one run directory per trial
    best.yaml        the best trial's training config (``recsampled train --config`` reads it)
    best/            that config trained again: towers, history, test metrics
    result.json      best parameters, validation value, test metrics, trial counts
    history.png      Optuna's optimisation history
    importance.png   Optuna's parameter importances (from two completed trials on)

Killed at any moment, ``tune`` run again on the same ``DIR`` keeps the finished trials and goes
on until ``tune.trials`` have finished; the best run resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from recsampled._io import write_atomic, write_json
from recsampled._progress import progress
from recsampled.config import Config
from recsampled.errors import RunDirectoryError, RunError
from recsampled.runs.build import load_split
from recsampled.runs.pipeline import TrainResult, train
from recsampled.runs.search_space import (
    PrunerConfig,
    TuneConfig,
    TuneSetup,
    check_tune,
    load_tune_config,
    suggest_config,
)

__all__ = ["STUDY_NAME", "TuneResult", "make_pruner", "open_study", "run_trials", "tune"]

logger = logging.getLogger(__name__)

STUDY_NAME = "recsampled-tune"
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class TuneResult:
    """What a study found.

    Attributes:
        output: the tune folder.
        metric: the validation metric maximised.
        best_trial: the number of the best trial.
        best_params: its parameters.
        best_value: its validation metric (best epoch).
        best_config: its training config (``best.yaml``).
        best_run: that config trained again into ``output/best``; ``best_run.metrics`` are the
            test metrics.
        trials: the number of trials per state (``COMPLETE``, ``PRUNED``, ``FAIL``).
        seconds: wall time of this call.
    """

    output: Path
    metric: str
    best_trial: int
    best_params: dict[str, Any]
    best_value: float
    best_config: Config
    best_run: TrainResult
    trials: dict[str, int]
    seconds: float

    def table(self) -> str:
        """The best parameters, the validation value and the best run's test metrics."""
        counts = ", ".join(f"{n} {state.lower()}" for state, n in self.trials.items() if n)
        params = ", ".join(f"{k}={_short(v)}" for k, v in self.best_params.items())
        lines = [
            f"Best of {sum(self.trials.values())} trials ({counts}): trial {self.best_trial}",
            f"  {params}",
            f"  validation {self.metric}: {self.best_value:.4f}",
            "Test split, the best config trained again:",
        ]
        return "\n".join(lines + [self.best_run.table()])


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def tune(
    config: Config,
    output: str | Path,
    *,
    tune: TuneConfig | None = None,
    trials: int | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> TuneResult:
    """Runs (or resumes) a study in ``output`` and trains its best config (module docstring).

    Args:
        config: the base training config of every trial.
        output: the tune folder.
        tune: the search space and the study's settings (default: ``TuneConfig()``).
        trials: finished trials to reach (default ``tune.trials``).
        pruner: an Optuna pruner instead of ``tune.pruner``'s.

    Returns:
        A :class:`TuneResult`.

    Raises:
        recsampled.config.ConfigError: for a search space that the config contradicts.
        recsampled.errors.RunDirectoryError: if ``output`` holds a study of another config, or
            another process is tuning in it.
        recsampled.errors.RunError: if no trial completed (all pruned or failed).
    """
    started = time.perf_counter()
    tune = TuneConfig() if tune is None else tune
    if trials is not None:
        tune = dataclasses.replace(tune, trials=trials)
    check_tune(config, tune)
    setup = TuneSetup(config, tune)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    with _locked(output):
        _check_setup(output, setup)
        study = open_study(output, tune, pruner=pruner)
        run_trials(study, config, tune, output)
        return _finish(study, setup, output, started)


@contextlib.contextmanager
def _locked(output: Path) -> Iterator[None]:
    """Holds ``output/tune.lock`` (an flock, released by the kernel if the process dies)."""
    with open(output / "tune.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirectoryError(
                f"{output} is being tuned by another process (it holds {output / 'tune.lock'}); "
                "wait for it to end, or choose another --output."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_setup(output: Path, setup: TuneSetup) -> None:
    """Writes ``tune.yaml``, after checking that a study in ``output`` has the same setup
    (``tune.trials`` may differ: more trials extend a study; so may base values that every
    trial overrides, such as ``training.epochs``)."""
    saved_file = output / "tune.yaml"
    if (output / "study.db").exists() and saved_file.is_file():
        saved = load_tune_config(saved_file)
        overridden = tuple(f"{key}{end}" for key in setup.tune.overridden_keys() for end in ":.")
        differences = [d for d in saved.config.diff(setup.config) if not d.startswith(overridden)]
        saved_tune = dataclasses.replace(saved.tune, trials=setup.tune.trials)
        differences += [
            f"tune.{key}: {a!r} != {b!r}"
            for key, a, b in _pairs(saved_tune.to_dict(), setup.tune.to_dict())
            if a != b
        ]
        if differences:
            raise RunDirectoryError(
                f"{output} holds a study of another config; resuming would mix two searches. "
                f"Differences (saved != now): {'; '.join(differences)}. Choose another --output."
            )
    write_atomic(saved_file, setup.to_yaml())


def _pairs(a: dict, b: dict) -> list[tuple[str, Any, Any]]:
    return [(key, a.get(key), b.get(key)) for key in dict.fromkeys([*a, *b])]


def make_pruner(settings: PrunerConfig) -> optuna.pruners.BasePruner:
    """``tune.pruner`` as an Optuna pruner (steps are epochs, 1-based)."""
    if settings.kind == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=settings.startup_trials, n_warmup_steps=settings.warmup_epochs
    )


def open_study(
    output: str | Path, tune: TuneConfig, *, pruner: optuna.pruners.BasePruner | None = None
) -> optuna.Study:
    """Creates or loads the study in ``output/study.db`` (TPE seeded by ``tune.seed``); trials
    that a killed process left running are marked failed and their parameters queued again.

    Example:
        >>> import tempfile
        >>> study = open_study(tempfile.mkdtemp(), TuneConfig())
        >>> study.study_name, study.direction.name
        ('recsampled-tune', 'MAXIMIZE')
    """
    url = f"sqlite:///{Path(output).resolve() / 'study.db'}"
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    sampler = optuna.samplers.TPESampler(seed=tune.seed, n_startup_trials=tune.random_trials)
    study = optuna.create_study(
        storage=storage,
        sampler=sampler,
        pruner=make_pruner(tune.pruner) if pruner is None else pruner,
        study_name=STUDY_NAME,
        direction="maximize",
        load_if_exists=True,
    )
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # Only this process may tune here (tune.lock): a running trial is a killed one's.
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})
        logger.info(
            "Trial %d was cut short (the process was killed): marked failed, queued again.",
            trial.number,
        )
    return study


def _counts(study: optuna.Study) -> dict[str, int]:
    states = [trial.state.name for trial in study.get_trials(deepcopy=False)]
    return {name: states.count(name) for name in ("COMPLETE", "PRUNED", "FAIL")}


def run_trials(study: optuna.Study, config: Config, tune: TuneConfig, output: Path) -> None:
    """Runs trials until ``tune.trials`` have finished (completed or pruned).

    Raises:
        RunError: when more trials fail (a NaN metric) than ``tune.trials``.
    """
    finished = len(study.get_trials(deepcopy=False, states=_FINISHED))
    if finished >= tune.trials:
        logger.info("The study has %d finished trials already (%d asked).", finished, tune.trials)
        return
    num_items = load_split(config.data).train.num_items
    objective = _Objective(config, tune, output, num_items=num_items)
    failures = 0
    with progress(tune.trials, "tune trials", unit="trial") as bar:
        bar.update(finished)
        while finished < tune.trials:
            study.optimize(objective, n_trials=1, catch=())
            trial = study.trials[-1]
            failures += trial.state == TrialState.FAIL
            if failures > tune.trials:
                raise RunError(
                    f"{failures} trials failed (no finite {tune.metric}); see the log.",
                    path=output, part="trials",
                )  # fmt: skip
            if trial.state in _FINISHED:
                finished += 1
                bar.update(1)


class _Objective:
    """One trial: its config, a run into ``trials/NNNN``, the best epoch's validation metric."""

    def __init__(self, config: Config, tune: TuneConfig, output: Path, *, num_items: int):
        self.config, self.tune, self.output, self.num_items = config, tune, output, num_items

    def __call__(self, trial: optuna.Trial) -> float:
        started = time.perf_counter()
        metric = self.tune.metric
        config = suggest_config(trial, self.config, self.tune, num_items=self.num_items)
        run_dir = self.output / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.relative_to(self.output)))

        def report(epoch: int, logs: dict) -> None:
            if metric not in logs:
                return
            trial.report(float(logs[metric]), step=epoch + 1)
            if trial.should_prune():
                logger.info(
                    "Trial %d pruned after epoch %d (%s %.4f).",
                    trial.number, epoch + 1, metric, logs[metric],
                )  # fmt: skip
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}")

        # A new trial number is a new run: force discards what a lost study left in its folder.
        # Trials never touch the test split: only the best config's run ranks it, once.
        result = train(config, run_dir, force=True, on_epoch=report, evaluate_test=False)
        values = [(record[metric], record["epoch"]) for record in result.history]
        value, epoch = max(values, key=lambda pair: pair[0])
        trial.set_user_attr("best_epoch", int(epoch))
        trial.set_user_attr("epochs", len(result.history))
        logger.info(
            "Trial %d: %s %.4f (epoch %d of %d) in %.1f s; %s.",
            trial.number, metric, value, epoch, len(result.history),
            time.perf_counter() - started, _describe(trial.params),
        )  # fmt: skip
        return float(value) if math.isfinite(value) else math.nan


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in params.items())


def _finish(study: optuna.Study, setup: TuneSetup, output: Path, started: float) -> TuneResult:
    """best.yaml, the best run (the test split's one use), result.json and the plots."""
    config, tune = setup
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise RunError(
            f"No trial of the study in {output} completed ({_counts(study)}): nothing to "
            "train. Loosen tune.pruner (kind: none) or add trials.",
            path=output, part="study.db",
        )  # fmt: skip
    best = study.best_trial
    num_items = load_split(config.data).train.num_items
    best_config = suggest_config(
        optuna.trial.FixedTrial(best.params), config, tune, num_items=num_items
    )
    header = f"# recsampled tune: trial {best.number}, {tune.metric} {best.value:.6f}\n"
    write_atomic(output / "best.yaml", header + best_config.to_yaml())
    logger.info("Best trial %d (%s %.4f): training its config into %s.",
                best.number, tune.metric, best.value, output / "best")  # fmt: skip
    best_run = train(best_config, output / "best")
    counts = _counts(study)
    result = TuneResult(
        output=output, metric=tune.metric, best_trial=best.number, best_params=dict(best.params),
        best_value=float(best.value), best_config=best_config, best_run=best_run,
        trials=counts, seconds=time.perf_counter() - started,
    )  # fmt: skip
    plots = _write_plots(study, output)
    write_json(output / "result.json", _result_json(result, best, plots))
    return result


def _result_json(result: TuneResult, best: optuna.trial.FrozenTrial, plots: list[str]) -> dict:
    history = result.best_run.history
    metric = result.metric
    return {
        "metric": metric,
        "direction": "maximize",
        "best_trial": result.best_trial,
        "best_params": result.best_params,
        "validation": {
            metric: result.best_value,
            "best_epoch": best.user_attrs.get("best_epoch"),
            "best_run": max((r[metric] for r in history if metric in r), default=None),
        },
        "test": result.best_run.metrics.as_dict(),
        "test_popularity": result.best_run.popularity.as_dict(),
        "trials": result.trials,
        "best_run_dir": "best",
        "plots": plots,
        "protocol": "trials compared on validation (data.split.validation); test split ranked "
        "once, by the best config's run; full catalogue, training items removed",
    }


def _write_plots(study: optuna.Study, output: Path) -> list[str]:
    """Optuna's optimisation history and parameter importances as PNG files (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    written = []
    plots = {"history.png": optuna_plots.plot_optimization_history}
    plots["importance.png"] = optuna_plots.plot_param_importances
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():  # experimental API; few trials per regime
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)
                axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            logger.info("%s not written: %s", name, e)
            continue
        figure = axes.figure
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        plt.close(figure)
        write_atomic(output / name, buffer.getvalue())
        written.append(name)
    return written

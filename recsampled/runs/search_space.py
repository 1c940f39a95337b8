"""The ``tune:`` section of a ``recsampled tune`` config: the search space and the study's settings.

A tune config is a training config (``data``, ``model``, ``task``, ``training``, ``evaluation``:
the base that every trial starts from) plus one more section, ``tune``. Each tuned parameter is
a range (``low``, ``high``, ``log``: sampled log-uniformly when true) or a list of ``choices``;
null leaves the base config's value alone. The defaults work on any log::

    tune:
      trials: 20                    # trials that finish (completed or pruned)
      metric: val_recall_at_20      # validation metric maximised (K one of evaluation.ks)
      seed: 0                       # the TPE sampler's seed
      random_trials: 8              # trials drawn at random before TPE models the results
      max_epochs: 30                # training.epochs of each trial; early stopping ends it ...
      patience: 3                   # ... after this many epochs without a better metric
      temperature: {low: 0.02, high: 0.5, log: true}        # task.temperature
      learning_rate: {low: 0.001, high: 0.3, log: true}     # training.learning_rate
      row_l2: {low: 0.001, high: 3.0, log: true}            # training.row_l2 (sparse optimiser)
      embedding_dim: {choices: [32, 64, 128]}               # model.embedding_dim
      negatives: {choices: [in_batch, mixed]}               # task.negatives
      num_sampled: {low: 32, high: 1024, log: true}         # task.num_sampled, mixed only
      pruner: {kind: median, startup_trials: 5, warmup_epochs: 3}

A wrong entry is a :class:`~recsampled.errors.ConfigError` naming ``tune.<param>`` and the rule,
like the training sections (``recsampled.config``). :func:`suggest_config` turns one Optuna
trial into a training config. Tests: ``tests/runs/test_tune.py``.

Example:
    >>> overrides = ["training.optimizer=sgd", "tune.trials=3", "tune.embedding_dim.choices=[8]"]
    >>> setup = load_tune_config(overrides=overrides)
    >>> setup.tune.trials, setup.tune.embedding_dim.choices, setup.tune.temperature.log
    (3, (8,), True)
    >>> TuneConfig.from_dict(setup.tune.to_dict()) == setup.tune
    True
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import yaml

from recsampled.config import (
    NEGATIVES,
    SPARSE_OPTIMIZERS,
    Config,
    EarlyStoppingConfig,
    TaskConfig,
    ValidationSplitConfig,
    _fail,
    _Section,
    apply_override,
)
from recsampled.errors import ConfigError

__all__ = [
    "FloatRange",
    "IntChoice",
    "IntRange",
    "PrunerConfig",
    "StrChoice",
    "TuneConfig",
    "TuneSetup",
    "check_tune",
    "load_tune_config",
    "suggest_config",
]

TUNED_KEYS = {
    "temperature": "task.temperature",
    "learning_rate": "training.learning_rate",
    "row_l2": "training.row_l2",
    "embedding_dim": "model.embedding_dim",
    "negatives": "task.negatives",
    "num_sampled": "task.num_sampled",
}
"""The config key each parameter of the search space sets."""

PRUNERS = ("median", "none")
"""``tune.pruner.kind``: Optuna's ``MedianPruner`` on the per-epoch metric, or no pruning."""


# ---------------------------------------------------------------------------------------------
# One parameter: a range or a list of choices. Each tuned parameter has its own subclass, whose
# SECTION names it in messages (``tune.temperature.low``) and whose defaults are its range.


@dataclass(frozen=True)
class FloatRange(_Section):
    """A float in ``[low, high]``, log-uniform when ``log`` (``trial.suggest_float``)."""

    SECTION: ClassVar[str] = "tune.<float>"
    POSITIVE: ClassVar[bool] = False  # the parameter itself must be > 0 (else >= 0)

    low: float = 0.0
    high: float = 1.0
    log: bool = False

    def validate(self) -> None:
        if self.log and not self.low > 0:
            raise _fail(self._name("low"), "> 0 with log: true", self.low)
        if not self.low >= 0 or (self.POSITIVE and not self.low > 0):
            raise _fail(self._name("low"), "> 0" if self.POSITIVE else ">= 0", self.low)
        if not self.high >= self.low:
            raise _fail(self._name("high"), f">= low ({self.low!r})", self.high)

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class IntRange(_Section):
    """An integer in ``[low, high]``, log-uniform when ``log`` (``trial.suggest_int``)."""

    SECTION: ClassVar[str] = "tune.<int>"

    low: int = 1
    high: int = 1
    log: bool = False

    def validate(self) -> None:
        if not self.low >= 1:
            raise _fail(self._name("low"), ">= 1", self.low)
        if not self.high >= self.low:
            raise _fail(self._name("high"), f">= low ({self.low!r})", self.high)

    def suggest(self, trial: Any, name: str, *, cap: int | None = None) -> int:
        """``cap`` lowers both bounds to at most ``cap`` (e.g. a catalogue's size)."""
        low, high = self.low, self.high
        if cap is not None:
            low, high = min(low, cap), min(high, cap)
        return trial.suggest_int(name, low, high, log=self.log)


@dataclass(frozen=True)
class IntChoice(_Section):
    """One of ``choices`` (``trial.suggest_categorical``), each a positive integer."""

    SECTION: ClassVar[str] = "tune.<int choice>"

    choices: tuple[int, ...] = (1,)

    def validate(self) -> None:
        _check_choices(self, lambda value: value > 0, "> 0")

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_categorical(name, list(self.choices))


@dataclass(frozen=True)
class StrChoice(_Section):
    """One of ``choices`` (``trial.suggest_categorical``), each one of ``ALLOWED``."""

    SECTION: ClassVar[str] = "tune.<choice>"
    ALLOWED: ClassVar[tuple[str, ...]] = ()

    choices: tuple[str, ...] = ()

    def validate(self) -> None:
        _check_choices(self, lambda value: value in self.ALLOWED, f"one of {list(self.ALLOWED)}")

    def suggest(self, trial: Any, name: str) -> str:
        return trial.suggest_categorical(name, list(self.choices))


def _check_choices(spec: IntChoice | StrChoice, valid: Any, rule: str) -> None:
    name = spec._name("choices")
    if not spec.choices:
        raise _fail(name, "a non-empty list", list(spec.choices))
    if len(set(spec.choices)) != len(spec.choices):
        raise _fail(name, "a list without repeats", list(spec.choices))
    for k, value in enumerate(spec.choices):
        if not valid(value):
            raise _fail(f"{name}[{k}]", rule, value)


@dataclass(frozen=True)
class TemperatureRange(FloatRange):
    """``tune.temperature``: ``task.temperature``, τ."""

    SECTION: ClassVar[str] = "tune.temperature"
    POSITIVE: ClassVar[bool] = True
    low: float = 0.02
    high: float = 0.5
    log: bool = True


@dataclass(frozen=True)
class LearningRateRange(FloatRange):
    """``tune.learning_rate``: ``training.learning_rate`` (wide: adagrad wants ~10x lazy_adam's)."""

    SECTION: ClassVar[str] = "tune.learning_rate"
    POSITIVE: ClassVar[bool] = True
    low: float = 0.001
    high: float = 0.3
    log: bool = True


@dataclass(frozen=True)
class RowL2Range(FloatRange):
    """``tune.row_l2``: ``training.row_l2``, L2 on the rows a step touches (sparse optimisers)."""

    SECTION: ClassVar[str] = "tune.row_l2"
    low: float = 0.001
    high: float = 3.0
    log: bool = True


@dataclass(frozen=True)
class EmbeddingDimChoice(IntChoice):
    """``tune.embedding_dim``: ``model.embedding_dim``, D."""

    SECTION: ClassVar[str] = "tune.embedding_dim"
    choices: tuple[int, ...] = (32, 64, 128)


@dataclass(frozen=True)
class NegativesChoice(StrChoice):
    """``tune.negatives``: ``task.negatives``, in-batch or mixed (in-batch plus S catalogue)."""

    SECTION: ClassVar[str] = "tune.negatives"
    ALLOWED: ClassVar[tuple[str, ...]] = ("in_batch", "mixed")
    choices: tuple[str, ...] = ("in_batch", "mixed")


@dataclass(frozen=True)
class NumSampledRange(IntRange):
    """``tune.num_sampled``: ``task.num_sampled``, S, in trials with mixed negatives (capped at
    half the catalogue)."""

    SECTION: ClassVar[str] = "tune.num_sampled"
    low: int = 32
    high: int = 1024
    log: bool = True


@dataclass(frozen=True)
class PrunerConfig(_Section):
    """``tune.pruner``: stop unpromising trials early on the per-epoch validation metric.

    Attributes:
        kind: one of :data:`PRUNERS`.
        startup_trials: ``median``: no pruning until this many trials have finished.
        warmup_epochs: ``median``: a trial is not pruned before it has trained this many epochs.
    """

    SECTION: ClassVar[str] = "tune.pruner"

    kind: str = "median"
    startup_trials: int = 5
    warmup_epochs: int = 3

    def validate(self) -> None:
        if self.kind not in PRUNERS:
            raise _fail(self._name("kind"), f"one of {list(PRUNERS)}", self.kind)
        for key in ("startup_trials", "warmup_epochs"):
            if not getattr(self, key) >= 0:
                raise _fail(self._name(key), ">= 0", getattr(self, key))
        if self.kind == "none":
            self._unused(["startup_trials", "warmup_epochs"], "with kind='none'")


@dataclass(frozen=True)
class TuneConfig(_Section):
    """``tune``: the study (module docstring for the YAML and its defaults).

    Attributes:
        trials: trials that finish (completed or pruned); ``--trials`` overrides it.
        metric: the validation metric maximised, a ``val_*`` key as
            ``training.early_stopping.monitor``.
        seed: the TPE sampler's seed.
        random_trials: trials sampled at random before TPE models the results.
        max_epochs: ``training.epochs`` of every trial, ended earlier by early stopping.
        patience: ``training.early_stopping.patience`` of every trial.
        temperature, learning_rate, row_l2, embedding_dim, negatives, num_sampled: the search
            space (null: the base config's value).
        pruner: :class:`PrunerConfig`.
    """

    SECTION: ClassVar[str] = "tune"

    trials: int = 20
    metric: str = "val_recall_at_20"
    seed: int = 0
    random_trials: int = 8
    max_epochs: int = 30
    patience: int = 3
    temperature: TemperatureRange | None = field(default_factory=TemperatureRange)
    learning_rate: LearningRateRange | None = field(default_factory=LearningRateRange)
    row_l2: RowL2Range | None = field(default_factory=RowL2Range)
    embedding_dim: EmbeddingDimChoice | None = field(default_factory=EmbeddingDimChoice)
    negatives: NegativesChoice | None = field(default_factory=NegativesChoice)
    num_sampled: NumSampledRange | None = field(default_factory=NumSampledRange)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)

    def validate(self) -> None:
        for key in ("trials", "max_epochs", "patience"):
            if not getattr(self, key) > 0:
                raise _fail(self._name(key), "> 0", getattr(self, key))
        if not self.random_trials >= 0:
            raise _fail(self._name("random_trials"), ">= 0", self.random_trials)

    def overridden_keys(self) -> list[str]:
        """The base config's keys that no trial uses: every trial sets them."""
        keys = ["training.epochs", "training.early_stopping"]
        return keys + [TUNED_KEYS[name] for name in self.space()]

    def space(self) -> dict[str, Any]:
        """The tuned parameters (name -> range or choices), null ones left out."""
        names = ("temperature", "learning_rate", "row_l2", "embedding_dim", "negatives")
        specs = {name: getattr(self, name) for name in (*names, "num_sampled")}
        return {name: spec for name, spec in specs.items() if spec is not None}


@dataclass(frozen=True)
class _TuneFile(_Section):
    """The root of ``tune.*`` overrides (``apply_override(..., schema=_TuneFile)``)."""

    tune: TuneConfig = field(default_factory=TuneConfig)


class TuneSetup(NamedTuple):
    """A tune config file, parsed: the base training config and the ``tune`` section."""

    config: Config
    tune: TuneConfig

    def to_yaml(self) -> str:
        """Both as one YAML file (what :func:`load_tune_config` reads)."""
        values = {**self.config.to_dict(), "tune": self.tune.to_dict()}
        return yaml.safe_dump(values, sort_keys=False, default_flow_style=False)


def load_tune_config(
    path: str | os.PathLike | None = None, *, overrides: Sequence[str] = ()
) -> TuneSetup:
    """Reads a tune config: a training config plus a ``tune:`` section (both optional).

    Args:
        path: the YAML file; None starts from the defaults.
        overrides: ``section.key=value`` strings, ``tune.*`` ones included, applied in order.

    Returns:
        The checked :class:`TuneSetup`.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ConfigError: for bad YAML, an unknown key, a wrong type or value, or a search space
            that the base config contradicts (:func:`check_tune`).
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Config file not found: {path}")
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a tune config must be a mapping of sections.")
    tune_values = {"tune": values.pop("tune", None) or {}}
    for override in overrides:
        if override.strip().startswith("tune."):
            apply_override(tune_values, override, schema=_TuneFile)
        else:
            apply_override(values, override)
    setup = TuneSetup(Config.from_dict(values), _TuneFile.from_dict(tune_values).tune)
    check_tune(setup.config, setup.tune)
    return setup


def check_tune(config: Config, tune: TuneConfig) -> None:
    """Checks the search space against the base config.

    Raises:
        ConfigError: naming ``tune.<param>``: a metric that validation does not report, row L2
            with a dense optimiser, ``num_sampled`` that no trial uses.
    """
    names = ("recall", "ndcg", "hit_rate", "coverage")
    valid = [f"val_{n}_at_{k}" for n in names for k in config.evaluation.ks] + ["val_mrr"]
    if tune.metric not in valid:
        raise _fail("tune.metric", f"one of {valid} (K from evaluation.ks)", tune.metric)
    if tune.row_l2 is not None and config.training.optimizer not in SPARSE_OPTIMIZERS:
        raise ConfigError(
            f"`tune.row_l2` tunes training.row_l2, which needs a sparse optimiser "
            f"({', '.join(SPARSE_OPTIMIZERS)}): set training.optimizer to one, or tune.row_l2: "
            f"null. Received: training.optimizer={config.training.optimizer!r}."
        )
    negatives = tune.negatives.choices if tune.negatives else (config.task.negatives,)
    if tune.num_sampled is not None and not any(NEGATIVES[n].catalogue for n in negatives):
        raise ConfigError(
            "`tune.num_sampled` is used by trials with mixed negatives only, and none has them: "
            "add 'mixed' to tune.negatives.choices, or set tune.num_sampled: null. "
            f"Received: negatives {list(negatives)}."
        )


def suggest_config(trial: Any, config: Config, tune: TuneConfig, *, num_items: int) -> Config:
    """The training config of one trial: the base ``config`` with the trial's parameters.

    Every trial validates on ``data.split.validation`` (the base's, or per-user last-one-out
    when it has none), trains at most ``tune.max_epochs`` with early stopping on
    ``tune.metric``, and keeps everything the search space does not name.

    Args:
        trial: an ``optuna.Trial`` (or ``optuna.trial.FixedTrial`` to rebuild a trial's config).
        config: the base config.
        tune: the search space.
        num_items: the catalogue size (``num_sampled`` is capped at half of it).
    """
    params = {name: spec for name, spec in tune.space().items() if name != "num_sampled"}
    values = {name: spec.suggest(trial, name) for name, spec in params.items()}
    task = {k: values[k] for k in ("temperature",) if k in values}
    negatives = values.get("negatives", config.task.negatives)
    if NEGATIVES[negatives].catalogue:
        task.update(negatives=negatives, remove_accidental_hits=True)
        if tune.num_sampled is not None:
            cap = max(1, num_items // 2)
            task["num_sampled"] = tune.num_sampled.suggest(trial, "num_sampled", cap=cap)
    elif negatives != config.task.negatives:  # back to in-batch: catalogue options at defaults
        defaults = TaskConfig()
        keys = ("sampler", "num_sampled", "distortion", "kernel", "seed")
        task.update(negatives=negatives, **{k: getattr(defaults, k) for k in keys})
    training = {k: values[k] for k in ("learning_rate", "row_l2") if k in values}
    stopping = EarlyStoppingConfig(monitor=tune.metric, patience=tune.patience, mode="max")
    split = config.data.split
    if split.validation is None:
        split = dataclasses.replace(split, validation=ValidationSplitConfig())
    model = {k: values[k] for k in ("embedding_dim",) if k in values}
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, split=split),
        model=dataclasses.replace(config.model, **model),
        task=dataclasses.replace(config.task, **task),
        training=dataclasses.replace(
            config.training, epochs=tune.max_epochs, early_stopping=stopping, **training
        ),
    )

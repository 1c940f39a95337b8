"""The typed configuration of a training run: ``recsampled train --config FILE.yaml``.

A :class:`Config` has five sections, each a frozen dataclass whose defaults are those of the
constructor it configures (``generate``, ``read_interactions``, the splits, ``Tower``,
``Retrieval``, the Keras optimiser)::

    data:        where the interactions come from (synthetic or a file) and how they are split
    model:       the two towers
    task:        the retrieval loss: negatives, logQ correction, catalogue sampler
    training:    batch size, epochs, optimiser, seed, checkpoints
    evaluation:  the cut-offs K and how many test users to rank

Validation is the same whether a config comes from keyword arguments, a dict or a YAML file: an
unknown key is an error that lists the valid keys of its section, a wrong type or value is a
Keras-style error that names ``section.key``, and a setting that the other settings make
irrelevant (a sampler without catalogue negatives, a split option of another split) is an error
rather than silently ignored. String options resolve through one explicit dict each
(:data:`DATA_SOURCES`, :data:`SPLITS`, :data:`NEGATIVES`, :data:`LOGQ`, :data:`OPTIMIZERS`, and
for ``task.sampler`` the library's one sampler dict, ``recsampled.samplers.SAMPLERS``).

Example:
    >>> config = load_config(overrides=["training.epochs=2", "model.embedding_dim=32"])
    >>> config.training.epochs, config.model.embedding_dim
    (2, 32)
    >>> Config.from_yaml(config.to_yaml()) == config
    True
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import numbers
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import yaml

from recsampled._validation import received
from recsampled.data import read_interactions
from recsampled.data import splits as _splits
from recsampled.data.readers import FORMATS
from recsampled.data.synthetic import generate
from recsampled.errors import ConfigError
from recsampled.samplers import SAMPLERS  # (its __init__ selects Keras 2 for OPTIMIZERS)
from recsampled.samplers.frequency import FixedFrequency, FrequencyEstimator
from recsampled.samplers.kernel import MODES as KERNEL_MODES

logger = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 1 << 20
"""The largest config file read (a config is a few kB; a bigger file is not a config)."""
MAX_YAML_VALUES = 100_000
"""The most values a config may expand to through YAML aliases (``*name``): an alias bomb, a
few lines that expand to billions of values, is refused before it is built."""
MAX_SEED = 2**31 - 1
"""Seeds are in ``[0, MAX_SEED]``: NumPy, TF's op seeds and stateless ops all take them."""


class _TypeMismatch(ConfigError):
    """A value of the wrong type (caught while trying the members of a union)."""


class _Unused(ConfigError):
    """A setting that another setting makes irrelevant (``key``, made so by ``decider``)."""

    def __init__(self, message: str, *, key: str, decider: str | None):
        super().__init__(message)
        self.key = key
        self.decider = decider


class Negatives(NamedTuple):
    """Where the negatives of a training step come from."""

    in_batch: bool
    catalogue: bool


# ---------------------------------------------------------------------------------------------
# The string options, each resolved through one dict.

DATA_SOURCES: dict[str, Callable[..., Any]] = {
    "synthetic": generate,
    "file": read_interactions,
}
"""``data.source``: generate the log (``generate(**data.synthetic)``), or read it from
``data.path`` (``read_interactions(data.path, ...)``)."""

SPLITS: dict[str, Callable[..., _splits.Split]] = {
    "leave_last_out": _splits.leave_last_out,
    "random_holdout": _splits.random_holdout,
    "time_cut": _splits.time_cut,
    "files": _splits.read_split,
}
"""``data.split.kind``: the split function of ``recsampled.data.splits``."""

NEGATIVES: dict[str, Negatives] = {
    "in_batch": Negatives(in_batch=True, catalogue=False),
    "mixed": Negatives(in_batch=True, catalogue=True),
    "sampled": Negatives(in_batch=False, catalogue=True),
}
"""``task.negatives``: the other rows' positives, ``num_sampled`` catalogue draws, or both."""

LOGQ: dict[str, type[FixedFrequency] | type[FrequencyEstimator] | None] = {
    "none": None,
    "counts": FixedFrequency,
    "streaming": FrequencyEstimator,
}
"""``task.logq``: the source of the in-batch inclusion probabilities (the task's
``candidate_frequency``): none, the training counts, or the streaming estimator."""

OPTIMIZERS = ("adam", "lazy_adam", "adagrad", "sgd")
"""``training.optimizer``: the names of ``recsampled.training.optimizers.OPTIMIZERS`` (the
classes live there; config imports nothing of training)."""
SPARSE_OPTIMIZERS = ("lazy_adam", "adagrad", "sgd")
DEFAULT_LOGQ = "counts"
"""``task.logq`` when not given and the negatives include in-batch ones (else ``none``): the
default config trains the variant that won the study of ``pipelines/bench_defaults.py``."""
DEFAULT_ROW_L2 = 1.0
"""``training.row_l2`` when not given and the optimiser is sparse (else 0)."""
"""The optimisers that leave rows without gradient unchanged (``training.row_l2`` needs one)."""

ON_BAD_ROWS = ("error", "skip")
ID_DTYPES = ("auto", "int", "str")


# ---------------------------------------------------------------------------------------------
# Generic checks: one type checker for every field, Keras-style messages naming section.key.


def _describe(annotation: Any) -> str:
    """A short English name of a field type, for messages."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(_describe(a) for a in parts) + " or null"
    if origin is tuple:
        inner = typing.get_args(annotation)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}[inner]
    if dataclasses.is_dataclass(annotation):
        return "a mapping of keys to values"
    return {int: "an integer", float: "a number", bool: "a bool", str: "a string"}[annotation]


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """``value`` converted to ``annotation`` (int -> float, list -> tuple, dict -> section)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        try:
            return _coerce(name, value, inner)
        except _TypeMismatch:
            raise _TypeMismatch(_type_message(name, value, annotation)) from None
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if isinstance(value, Mapping):
            return annotation.from_dict(value)
    elif origin is tuple:
        if isinstance(value, Sequence) and not isinstance(value, str):
            (inner, _) = typing.get_args(annotation)
            return tuple(_coerce(f"{name}[{k}]", v, inner) for k, v in enumerate(value))
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            if not -(2**63) <= value < 2**63:
                raise _fail(name, "an integer within int64 (|value| < 2**63)", value)
            return int(value)
    elif annotation is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if not math.isfinite(value):  # .inf or .nan: no setting means that
                raise _fail(name, "a finite number", value)
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    raise _TypeMismatch(_type_message(name, value, annotation))


def _type_message(name: str, value: Any, annotation: Any) -> str:
    message = f"`{name}` must be {_describe(annotation)}. {received(name, value)}"
    if isinstance(value, str) and annotation in (float, float | None):
        example = _yaml_number(value)
        if example is not None:  # YAML 1.1 reads 1e-3 (no dot) as text
            message += f" Write it with a dot, e.g. {example}, for YAML to read a number."
    return message


def _yaml_number(text: str) -> str | None:
    """``text`` (a number YAML 1.1 reads as text, e.g. ``1e-30``) spelled so that YAML reads
    it as that number (``1.0e-30``), or None when it is not such a number."""
    match = re.fullmatch(r"\s*([-+]?)(\d+)(?:\.(\d*))?[eE]([-+]?)(\d+)\s*", text)
    if match is None:
        try:
            number = float(text)
        except ValueError:
            return None
        candidates = [repr(number)]
    else:
        sign, whole, fraction, exponent_sign, exponent = match.groups()
        number = float(text)
        spelled = f"{sign}{whole}.{fraction or 0}e{exponent_sign or '+'}{exponent}"
        candidates = [repr(number), spelled]
    for candidate in candidates:
        if "." in candidate and yaml.safe_load(candidate) == number:
            return candidate
    return None


def _fail(name: str, rule: str, value: Any) -> ConfigError:
    return ConfigError(f"`{name}` must be {rule}. {received(name, value)}")


def _positive(name: str, value: int | float | None) -> None:
    if value is not None and not value > 0:
        raise _fail(name, "> 0", value)


def _non_negative(name: str, value: int | float | None) -> None:
    if value is not None and not value >= 0:
        raise _fail(name, ">= 0", value)


def _choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise _fail(name, f"one of {list(choices)}", value)


def _check_seed(name: str, value: Any) -> None:
    if isinstance(value, int) and not 0 <= value <= MAX_SEED:
        raise _fail(name, f"an integer in [0, {MAX_SEED}] (a seed)", value)


class _Section:
    """Mixin of the config dataclasses: type checks, dict and YAML conversion."""

    SECTION: ClassVar[str] = ""

    def _name(self, key: str) -> str:
        return f"{self.SECTION}.{key}" if self.SECTION else key

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(self._name(f.name), getattr(self, f.name), hints[f.name])
            if f.name == "seed":
                _check_seed(self._name(f.name), value)
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Checks values and combinations; raises :class:`ConfigError`."""

    def _unused(self, keys: Sequence[str], reason: str) -> None:
        """Raises if any of ``keys`` differs from its default: it would be ignored.

        The setting that makes them irrelevant (the decider) is the first ``key=`` of
        ``reason`` (``"by kind='time_cut'"``), else its ``without key`` (``"without
        max_users"``); :func:`load_config` ignores such a key, with a notice, when a later
        ``--set`` chose the decider (the user switched modes on the command line).
        """
        found = re.search(r"(\w+)=", reason) or re.search(r"without (\w+)", reason)
        decider = self._name(found.group(1)) if found else None
        for f in dataclasses.fields(self):
            if f.name not in keys:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            value = getattr(self, f.name)
            if value != default:
                raise _Unused(
                    f"`{self._name(f.name)}` is not used {reason}; remove it or change that "
                    f"setting. {received(self._name(f.name), value)}",
                    key=self._name(f.name),
                    decider=decider,
                )

    @classmethod
    def keys(cls) -> list[str]:
        """The valid keys of this section."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> Any:
        """Builds the section from a mapping; unknown keys are an error listing the valid ones."""
        values = {} if values is None else values
        where = f"`{cls.SECTION}`" if cls.SECTION else "the config"
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"{where} must be a mapping of keys to values. "
                f"{received(cls.SECTION or 'config', values)}"
            )
        valid = cls.keys()
        for key in values:
            if key not in valid:
                raise ConfigError(_unknown_key(cls.SECTION, key, valid))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists for tuples), as written to YAML."""
        result = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, _Section):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            result[f.name] = value
        return result


def _unknown_key(section: str, key: object, valid: Sequence[str]) -> str:
    name = f"{section}.{key}" if section else str(key)
    what = f"section `{section}`" if section else "the config (its sections)"
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f" Did you mean `{close[0]}`?" if close else ""
    return f"Unknown key `{name}` in {what}. Valid keys: {', '.join(valid)}.{hint}"


# ---------------------------------------------------------------------------------------------
# The sections.


@dataclass(frozen=True)
class SyntheticConfig(_Section):
    """``data.synthetic``: arguments of ``recsampled.data.synthetic.generate``."""

    SECTION: ClassVar[str] = "data.synthetic"

    num_users: int = 1_000
    num_items: int = 2_000
    num_interactions: int = 50_000
    num_clusters: int = 20
    zipf_exponent: float = 0.8
    cluster_affinity: float = 0.8
    min_user_interactions: int = 5
    start_time: int = 1_600_000_000
    duration: int = 365 * 24 * 3600
    seed: int = 0

    def validate(self) -> None:
        for key in ("num_users", "num_items", "num_interactions", "num_clusters", "duration"):
            _positive(self._name(key), getattr(self, key))
        _positive(self._name("min_user_interactions"), self.min_user_interactions)
        _non_negative(self._name("zipf_exponent"), self.zipf_exponent)
        if not 0 <= self.cluster_affinity <= 1:
            raise _fail(self._name("cluster_affinity"), "in [0, 1]", self.cluster_affinity)


@dataclass(frozen=True)
class ValidationSplitConfig(_Section):
    """``data.split.validation``: a validation part carved from the training part
    (``recsampled.data.splits.validation_split``), ranked over the whole catalogue after every
    epoch; the model trains on the rest. Off (null) by default.

    Attributes:
        per_user: with timestamps, each user's last this many training interactions.
        fraction: without timestamps, this seeded random share of each user's.
        seed: the random holdout's seed, and that of the ``evaluation.validation_users`` subset.
    """

    SECTION: ClassVar[str] = "data.split.validation"

    per_user: int = 1
    fraction: float = 0.1
    seed: int = 0

    def validate(self) -> None:
        _positive(self._name("per_user"), self.per_user)
        if not 0 < self.fraction < 1:
            raise _fail(self._name("fraction"), "in (0, 1)", self.fraction)


@dataclass(frozen=True)
class SplitConfig(_Section):
    """``data.split``: how the log is split into train and test (``recsampled.data.splits``).

    Attributes:
        kind: a key of :data:`SPLITS`.
        num_test: ``leave_last_out``: the last interactions of each user held out.
        test_fraction: ``random_holdout``: the share of each user's interactions held out;
            ``time_cut``: the share of all rows after the cut (unless ``cutoff`` is given).
        seed: ``random_holdout``'s seed.
        cutoff: ``time_cut``: the first test timestamp.
        test_path: ``files``: the test file (``data.path`` is the training file).
        validation: a validation part of the training part (:class:`ValidationSplitConfig`;
            null: none).
    """

    SECTION: ClassVar[str] = "data.split"

    kind: str = "leave_last_out"
    num_test: int = 1
    test_fraction: float = 0.2
    seed: int = 0
    cutoff: float | None = None
    test_path: str | None = None
    validation: ValidationSplitConfig | None = None

    _USES: ClassVar[dict[str, tuple[str, ...]]] = {
        "leave_last_out": ("num_test",),
        "random_holdout": ("test_fraction", "seed"),
        "time_cut": ("test_fraction", "cutoff"),
        "files": ("test_path",),
    }

    def validate(self) -> None:
        _choice(self._name("kind"), self.kind, list(SPLITS))
        options = ("num_test", "test_fraction", "seed", "cutoff", "test_path")
        used = self._USES[self.kind]
        self._unused([k for k in options if k not in used], f"by kind={self.kind!r}")
        _positive(self._name("num_test"), self.num_test)
        if not 0 < self.test_fraction < 1:
            raise _fail(self._name("test_fraction"), "in (0, 1)", self.test_fraction)
        if self.kind == "time_cut" and self.cutoff is not None and self.test_fraction != 0.2:
            raise ConfigError(
                "Give one of `data.split.cutoff` and `data.split.test_fraction` for "
                f"kind='time_cut'. Received: cutoff={self.cutoff}, "
                f"test_fraction={self.test_fraction}."
            )
        if self.kind == "files" and not self.test_path:
            raise _fail(self._name("test_path"), "the test file for kind='files'", self.test_path)


FEATURE_FORMATS = ("auto", "csv", "tsv", "parquet")
MISSING_FEATURES = ("error", "default")


@dataclass(frozen=True)
class _FeaturesConfig(_Section):
    """Side features of a tower: a table with one row per id
    (:func:`recsampled.data.read_side_features`; the towers embed the ``categorical`` columns and
    standardise the ``numeric`` ones).

    Attributes:
        path: the CSV/TSV (with a header) or Parquet file.
        format: one of :data:`FEATURE_FORMATS` (``auto``: from the name).
        id_col: the id column (null: detected, e.g. ``item_id``, ``movieId``, ``user``).
        categorical: columns of categories.
        numeric: columns of numbers.
        missing: ids without a row, blank numbers: ``error``, or ``default`` (category 0 =
            unknown, the column's mean).
        delimiter: of a CSV/TSV file (null: ``,`` / tab).
    """

    path: str | None = None
    format: str = "auto"
    id_col: str | None = None
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    missing: str = "error"
    delimiter: str | None = None

    def validate(self) -> None:
        if not self.path:
            raise _fail(self._name("path"), "the feature table's file", self.path)
        _choice(self._name("format"), self.format, FEATURE_FORMATS)
        _choice(self._name("missing"), self.missing, MISSING_FEATURES)
        if not self.categorical and not self.numeric:
            raise ConfigError(
                f"`{self._name('categorical')}` or `{self._name('numeric')}` must name at least "
                "one column. Received: neither."
            )
        named = [self.id_col, *self.categorical, *self.numeric]
        repeated = sorted({c for c in named if c is not None and named.count(c) > 1})
        if repeated:
            raise ConfigError(
                f"Each column of `{self.SECTION}` must be named once (id_col, categorical, "
                f"numeric). Received: {repeated} more than once."
            )


@dataclass(frozen=True)
class UserFeaturesConfig(_FeaturesConfig):
    """``data.user_features``: side features of the query tower (one row per user)."""

    SECTION: ClassVar[str] = "data.user_features"


@dataclass(frozen=True)
class ItemFeaturesConfig(_FeaturesConfig):
    """``data.item_features``: side features of the candidate tower (one row per item)."""

    SECTION: ClassVar[str] = "data.item_features"


_FILE_OPTIONS = (
    "path", "format", "user_col", "item_col", "timestamp_col", "rating_col", "weight_col",
    "delimiter", "column_names", "encoding", "id_dtype", "min_rating", "on_bad_rows",
)  # fmt: skip


@dataclass(frozen=True)
class DataConfig(_Section):
    """``data``: the interaction log and its split.

    With ``source: synthetic`` the log is ``generate(**synthetic)``; with ``source: file`` it is
    ``read_interactions(path, format=..., ...)`` (see that function for the options). Relative
    paths are relative to the working directory. ``dedupe`` and ``k_core`` apply to both.

    ``item_metadata`` (optional, either source) names a file of item titles, carried into the
    artifact by ``recsampled export`` so that ``recsampled recommend`` shows titles: a MovieLens
    ``u.item`` (``id|title|...``, Latin-1) or ``movies.dat`` (``id::title::genres``), or a CSV/TSV
    with a header whose first column is the item id and which has a ``title`` column (e.g.
    MovieLens ``movies.csv``). See :func:`recsampled.index.run.read_item_titles`.

    ``user_features`` / ``item_features`` (optional) name a table of side features per user /
    item (:class:`UserFeaturesConfig`), used by the query / candidate tower in training, export
    and evaluation.
    """

    SECTION: ClassVar[str] = "data"

    source: str = "synthetic"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    path: str | None = None
    format: str = "auto"
    user_col: str | None = None
    item_col: str | None = None
    timestamp_col: str | None = None
    rating_col: str | None = None
    weight_col: str | None = None
    delimiter: str | None = None
    column_names: tuple[str, ...] | None = None
    encoding: str = "utf-8"
    id_dtype: str = "auto"
    min_rating: float | None = None
    dedupe: bool = True
    k_core: int | None = None
    on_bad_rows: str = "error"
    item_metadata: str | None = None
    split: SplitConfig = field(default_factory=SplitConfig)
    user_features: UserFeaturesConfig | None = None
    item_features: ItemFeaturesConfig | None = None

    def validate(self) -> None:
        _choice(self._name("source"), self.source, list(DATA_SOURCES))
        _choice(self._name("format"), self.format, FORMATS)
        _choice(self._name("id_dtype"), self.id_dtype, ID_DTYPES)
        _choice(self._name("on_bad_rows"), self.on_bad_rows, ON_BAD_ROWS)
        _positive(self._name("k_core"), self.k_core)
        if self.source == "synthetic":
            self._unused(_FILE_OPTIONS, "with source='synthetic' (it applies to files)")
            if self.split.kind == "files":
                raise ConfigError(
                    "`data.split.kind` cannot be 'files' with source='synthetic'. "
                    "Received: data.split.kind='files'."
                )
        else:
            self._unused(["synthetic"], "with source='file'")
            if not self.path:
                raise _fail(self._name("path"), "the interaction log for source='file'", self.path)


@dataclass(frozen=True)
class ModelConfig(_Section):
    """``model``: both towers (``recsampled.models.Tower``) over ids."""

    SECTION: ClassVar[str] = "model"

    embedding_dim: int = 64
    hidden_units: tuple[int, ...] = ()
    normalize: bool = True

    def validate(self) -> None:
        _positive(self._name("embedding_dim"), self.embedding_dim)
        for k, units in enumerate(self.hidden_units):
            _positive(f"{self._name('hidden_units')}[{k}]", units)


@dataclass(frozen=True)
class EstimatorConfig(_Section):
    """``task.estimator``: ``FrequencyEstimator`` arguments, for ``logq: streaming``."""

    SECTION: ClassVar[str] = "task.estimator"

    num_buckets: int = 2**20
    num_hashes: int = 1
    alpha: float = 0.01
    bias_correction: bool = True

    def validate(self) -> None:
        if self.num_buckets < 2 or self.num_buckets & (self.num_buckets - 1):
            raise _fail(self._name("num_buckets"), "a power of two >= 2", self.num_buckets)
        _positive(self._name("num_hashes"), self.num_hashes)
        if not 0 < self.alpha <= 1:
            raise _fail(self._name("alpha"), "in (0, 1]", self.alpha)


@dataclass(frozen=True)
class KernelConfig(_Section):
    """``task.kernel``: ``QuadraticKernelSampler`` settings, for ``sampler: kernel``.

    Attributes:
        alpha: α of the kernel ``α·(hᵀw)² + 1`` (0: uniform).
        mode: ``batch_mixture`` (``S`` negatives shared by the batch, from the mixture of the
            batch's proposals) or ``per_query`` (``S`` per query, ``B`` times the cost).
        rebuild_every_steps: rebuild the tree from the candidate tower every this many
            training steps (and at each epoch end); the cost is measured and logged.
        leaf_size: classes per leaf of the tree (null: the sampler's default, ``max(8, D)``).
    """

    SECTION: ClassVar[str] = "task.kernel"

    alpha: float = 100.0
    mode: str = "batch_mixture"
    rebuild_every_steps: int = 100
    leaf_size: int | None = None

    def validate(self) -> None:
        _non_negative(self._name("alpha"), self.alpha)
        _choice(self._name("mode"), self.mode, KERNEL_MODES)
        _positive(self._name("rebuild_every_steps"), self.rebuild_every_steps)
        _positive(self._name("leaf_size"), self.leaf_size)


@dataclass(frozen=True)
class TaskConfig(_Section):
    """``task``: ``recsampled.tasks.Retrieval``.

    Attributes:
        temperature: τ; scores are divided by it (null: none).
        remove_accidental_hits: mask columns holding the row's positive; required (true) with
            ``logq`` or catalogue negatives.
        num_hard_negatives: keep only the hardest negatives per row (null: all).
        negatives: a key of :data:`NEGATIVES`.
        logq: a key of :data:`LOGQ`; needs in-batch negatives (null, the default:
            :data:`DEFAULT_LOGQ` with in-batch negatives, ``none`` without).
        sampler: a key of ``recsampled.samplers.SAMPLERS`` or ``kernel`` (the adaptive
            ``QuadraticKernelSampler`` over the candidate tower's embeddings, set in ``kernel``),
            for ``mixed`` and ``sampled`` negatives.
        num_sampled: S, catalogue negatives per step (``mixed`` and ``sampled`` only).
        distortion: exponent of the unigram sampler's counts.
        estimator: the streaming estimator's settings (``logq: streaming`` only).
        kernel: the kernel sampler's settings (``sampler: kernel`` only).
        seed: op-level seed of the catalogue sampler (null: from the training seed).
    """

    SECTION: ClassVar[str] = "task"

    temperature: float | None = 0.2
    remove_accidental_hits: bool = True
    num_hard_negatives: int | None = None
    negatives: str = "in_batch"
    logq: str | None = None
    sampler: str = "log_uniform"
    num_sampled: int = 0
    distortion: float = 1.0
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    kernel: KernelConfig = field(default_factory=KernelConfig)
    seed: int | None = None

    def validate(self) -> None:
        _positive(self._name("temperature"), self.temperature)
        _positive(self._name("num_hard_negatives"), self.num_hard_negatives)
        _choice(self._name("negatives"), self.negatives, list(NEGATIVES))
        if self.logq is None:  # the default: counts with in-batch negatives (DEFAULT_LOGQ)
            in_batch = self.negatives in NEGATIVES and NEGATIVES[self.negatives].in_batch
            object.__setattr__(self, "logq", DEFAULT_LOGQ if in_batch else "none")
        _choice(self._name("logq"), self.logq, list(LOGQ))
        if self.sampler != "kernel" and self.sampler not in SAMPLERS:
            raise _fail(self._name("sampler"), f"one of {list(SAMPLERS)} or 'kernel'", self.sampler)
        _non_negative(self._name("distortion"), self.distortion)
        negatives = NEGATIVES[self.negatives]
        if negatives.catalogue:
            _positive(self._name("num_sampled"), self.num_sampled)
            if self.sampler != "unigram":
                self._unused(["distortion"], f"by sampler={self.sampler!r}")
            if self.sampler != "kernel":
                self._unused(["kernel"], f"by sampler={self.sampler!r}")
        else:
            self._unused(
                ["sampler", "num_sampled", "distortion", "kernel", "seed"],
                "without catalogue negatives (negatives='in_batch')",
            )
        if self.logq != "streaming":
            self._unused(["estimator"], f"with logq={self.logq!r}")
        if self.logq != "none" and not negatives.in_batch:
            raise ConfigError(
                "`task.logq` corrects in-batch negatives, but negatives='sampled' has none "
                "(the catalogue sampler's own probabilities correct its draws). "
                f"Received: task.logq={self.logq!r}."
            )
        if (self.logq != "none" or negatives.catalogue) and not self.remove_accidental_hits:
            raise ConfigError(
                "`task.remove_accidental_hits` must be true with logq or catalogue negatives: "
                "the task then treats each item id as one column, and a positive must never "
                "act as a negative. Received: task.remove_accidental_hits=False."
            )


EARLY_STOPPING_MODES = ("max", "min")


@dataclass(frozen=True)
class EarlyStoppingConfig(_Section):
    """``training.early_stopping``: stop when a validation metric stops improving, and keep the
    weights of its best epoch (needs ``data.split.validation``).

    Attributes:
        monitor: a validation log key, ``val_<metric>_at_<K>`` (``recall``, ``ndcg``,
            ``hit_rate``, ``coverage``; K one of ``evaluation.ks``) or ``val_mrr``.
        patience: stop after this many epochs without a better value than the best one.
        mode: ``max`` (higher is better) or ``min``.
    """

    SECTION: ClassVar[str] = "training.early_stopping"

    monitor: str = "val_recall_at_20"
    patience: int = 3
    mode: str = "max"

    def validate(self) -> None:
        _positive(self._name("patience"), self.patience)
        _choice(self._name("mode"), self.mode, EARLY_STOPPING_MODES)


DISTRIBUTE_STRATEGIES = ("none", "mirrored", "multi_worker")
"""``training.distribute.strategy``: one device, ``tf.distribute.MirroredStrategy`` (devices of
one host) or ``tf.distribute.MultiWorkerMirroredStrategy`` (hosts named by ``TF_CONFIG``)."""
COMMUNICATIONS = ("auto", "ring", "nccl")
"""``training.distribute.communication``: the collective implementation of ``multi_worker``."""


@dataclass(frozen=True)
class DistributeConfig(_Section):
    """``training.distribute``: the ``tf.distribute`` strategy of ``recsampled train``
    (:mod:`recsampled.runs.distribute`). ``training.batch_size`` is the global batch, split
    evenly over the replicas.

    Attributes:
        strategy: one of :data:`DISTRIBUTE_STRATEGIES`.
        devices: ``mirrored``'s devices, e.g. ``["/gpu:0", "/gpu:1"]`` (empty: every GPU, else
            the CPU); CPUs beyond the first (``/cpu:1``) split the CPU into logical devices.
        communication: ``multi_worker``'s collectives, one of :data:`COMMUNICATIONS`.
        timeout_seconds: ``multi_worker``: a collective that waits longer fails (a lost
            worker), instead of hanging (null: wait forever).
    """

    SECTION: ClassVar[str] = "training.distribute"

    strategy: str = "none"
    devices: tuple[str, ...] = ()
    communication: str = "auto"
    timeout_seconds: float | None = None

    def validate(self) -> None:
        _choice(self._name("strategy"), self.strategy, DISTRIBUTE_STRATEGIES)
        _choice(self._name("communication"), self.communication, COMMUNICATIONS)
        _positive(self._name("timeout_seconds"), self.timeout_seconds)
        if self.strategy != "mirrored":
            self._unused(["devices"], f"with strategy={self.strategy!r}")
        if self.strategy != "multi_worker":
            self._unused(["communication", "timeout_seconds"], f"with strategy={self.strategy!r}")


@dataclass(frozen=True)
class TrainingConfig(_Section):
    """``training``: ``Model.fit`` with checkpoints.

    Attributes:
        batch_size: B, rows per step.
        epochs: passes over the training rows.
        steps_per_epoch: at most this many batches per epoch (None: the whole pass); with
            ``shuffle``, every epoch then takes the first batches of a new random order.
        optimizer: one of :data:`OPTIMIZERS`: ``adam`` (tf-keras, dense: every row's moments
            decay each step), or a sparse one, whose step touches only the rows the batch
            looked up: ``lazy_adam``, ``adagrad``, ``sgd`` (no momentum)
            (:mod:`recsampled.training.optimizers`).
        learning_rate: the optimiser's.
        row_l2: L2 on the embedding rows a step touches, ``λ·θ_r`` added once per unique
            touched row to its gradient; untouched rows stay exactly as they are (0: off;
            needs a sparse optimiser; null, the default: :data:`DEFAULT_ROW_L2` with a sparse
            optimiser, 0 with ``adam``). The defaults (``adagrad``, 0.1, row L2 1.0, and
            ``task``'s logQ from counts at τ = 0.2) won the study of
            ``pipelines/bench_defaults.py`` across shapes of log.
        seed: initial weights and the order of the rows in every epoch.
        shuffle: a new order of the rows in every epoch.
        drop_remainder: drop each epoch's last, smaller batch.
        checkpoint_every_steps: also checkpoint every this many steps (0: epoch ends only).
        max_checkpoints: checkpoints kept in ``RUN_DIR/checkpoints``.
        early_stopping: stop on a validation metric, restoring its best epoch's weights
            (:class:`EarlyStoppingConfig`; null: train every epoch).
        distribute: the ``tf.distribute`` strategy (:class:`DistributeConfig`).
        jit_compile: compile the train step with XLA (``Model.compile(jit_compile=True)``).
    """

    SECTION: ClassVar[str] = "training"

    batch_size: int = 1024
    epochs: int = 10
    steps_per_epoch: int | None = None
    optimizer: str = "adagrad"
    learning_rate: float = 0.1
    row_l2: float | None = None
    seed: int = 0
    shuffle: bool = True
    drop_remainder: bool = False
    checkpoint_every_steps: int = 1000
    max_checkpoints: int = 2
    early_stopping: EarlyStoppingConfig | None = None
    distribute: DistributeConfig = field(default_factory=DistributeConfig)
    jit_compile: bool = False

    def validate(self) -> None:
        for key in ("batch_size", "epochs", "learning_rate", "max_checkpoints"):
            _positive(self._name(key), getattr(self, key))
        _choice(self._name("optimizer"), self.optimizer, list(OPTIMIZERS))
        if self.row_l2 is None:  # the default: DEFAULT_ROW_L2 with a sparse optimiser, else 0
            sparse = self.optimizer in SPARSE_OPTIMIZERS
            object.__setattr__(self, "row_l2", DEFAULT_ROW_L2 if sparse else 0.0)
        _non_negative(self._name("row_l2"), self.row_l2)
        if self.row_l2 and self.optimizer not in SPARSE_OPTIMIZERS:
            raise ConfigError(
                f"`training.row_l2` needs a sparse optimiser ({', '.join(SPARSE_OPTIMIZERS)}): "
                f"optimizer={self.optimizer!r} moves every row at every step. "
                f"Received: training.row_l2={self.row_l2!r}."
            )
        _positive(self._name("steps_per_epoch"), self.steps_per_epoch)
        _non_negative(self._name("checkpoint_every_steps"), self.checkpoint_every_steps)


EVALUATION_BASELINES = ("ials",)
"""``evaluation.baselines``: what is shown beside the model besides popularity (always shown)."""


@dataclass(frozen=True)
class IALSConfig(_Section):
    """``evaluation.ials``: the iALS baseline (``implicit``'s CPU ALS on the training rows;
    :func:`recsampled.evaluation.fit_ials`, whose defaults these are)."""

    SECTION: ClassVar[str] = "evaluation.ials"

    factors: int = 64
    regularization: float = 10.0
    alpha: float = 1.0
    iterations: int = 15
    seed: int = 0

    def validate(self) -> None:
        for key in ("factors", "alpha", "iterations"):
            _positive(self._name(key), getattr(self, key))
        _non_negative(self._name("regularization"), self.regularization)
        for key in ("regularization", "alpha"):
            if not math.isfinite(getattr(self, key)):
                raise _fail(self._name(key), "a finite number", getattr(self, key))


@dataclass(frozen=True)
class EvaluationConfig(_Section):
    """``evaluation``: full-catalogue ranking metrics on the test split.

    Attributes:
        ks: the cut-offs K of Recall@K, NDCG@K, HitRate@K and coverage@K.
        batch_size: test users scored per batch (capped so that a batch holds at most 2^25
            scores).
        max_users: rank a seeded random subset of this many test users (null: all), for very
            large catalogues; each is still ranked against every item.
        seed: the subset's seed.
        validation_users: rank a seeded subset of this many validation users after each epoch
            (null: all; seeded by ``data.split.validation.seed``); needs
            ``data.split.validation``.
        baselines: shown beside the model and popularity in the training report and by
            ``recsampled evaluate``: a list of :data:`EVALUATION_BASELINES` (``[]``: none).
        ials: the iALS baseline's settings (:class:`IALSConfig`).
    """

    SECTION: ClassVar[str] = "evaluation"

    ks: tuple[int, ...] = (10, 20, 50)
    batch_size: int = 256
    max_users: int | None = None
    seed: int = 0
    validation_users: int | None = None
    baselines: tuple[str, ...] = ("ials",)
    ials: IALSConfig = field(default_factory=IALSConfig)

    def validate(self) -> None:
        _positive(self._name("validation_users"), self.validation_users)
        for k, name in enumerate(self.baselines):
            _choice(f"{self._name('baselines')}[{k}]", name, EVALUATION_BASELINES)
        if not self.ks:
            raise _fail(self._name("ks"), "a non-empty list of positive integers", self.ks)
        for k, value in enumerate(self.ks):
            _positive(f"{self._name('ks')}[{k}]", value)
        _positive(self._name("batch_size"), self.batch_size)
        _positive(self._name("max_users"), self.max_users)
        if self.max_users is None:
            self._unused(["seed"], "without max_users")


@dataclass(frozen=True)
class Config(_Section):
    """A whole training run: the five sections.

    Example:
        >>> config = Config(training=TrainingConfig(epochs=3))
        >>> Config.from_dict(config.to_dict()) == config
        True
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def validate(self) -> None:
        stopping = self.training.early_stopping
        if stopping is not None:
            if self.data.split.validation is None:
                raise ConfigError(
                    "`training.early_stopping` monitors a validation metric: set "
                    "`data.split.validation` (e.g. {per_user: 1}). Received: "
                    f"training.early_stopping={stopping.to_dict()!r}."
                )
            names = ("recall", "ndcg", "hit_rate", "coverage")
            valid = [f"val_{n}_at_{k}" for n in names for k in self.evaluation.ks] + ["val_mrr"]
            if stopping.monitor not in valid:
                raise _fail("training.early_stopping.monitor", f"one of {valid}", stopping.monitor)
        if self.evaluation.validation_users is not None and self.data.split.validation is None:
            raise ConfigError(
                "`evaluation.validation_users` needs a validation part: set "
                "`data.split.validation` (e.g. {per_user: 1}). Received: "
                f"evaluation.validation_users={self.evaluation.validation_users!r}."
            )

    def to_yaml(self) -> str:
        """The config as YAML text (every key, defaults included)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "<string>") -> Config:
        """Parses YAML text (see :func:`load_config` for files and overrides)."""
        return cls.from_dict(_parse_yaml(text, source))

    def diff(self, other: Config) -> list[str]:
        """``section.key: a != b`` for every setting that differs from ``other``."""
        return [
            f"{key}: {a!r} != {b!r}"
            for key, (a, b) in _flat_pairs(self.to_dict(), other.to_dict()).items()
            if a != b
        ]


def _flat_pairs(a: Any, b: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        pairs = {}
        for key in list(a) + [k for k in b if k not in a]:
            name = f"{prefix}.{key}" if prefix else str(key)
            pairs.update(_flat_pairs(a.get(key), b.get(key), name))
        return pairs
    return {prefix: (a, b)}


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (YAML would keep the
    last value silently)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, str], int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                key, line = (key_node.tag, key_node.value), key_node.start_mark.line + 1
                if key in lines:
                    raise ConfigError(
                        f"{self.name}, line {line}: the key `{key_node.value[:100]}` is given "
                        f"twice in one mapping (first on line {lines[key]}); YAML would keep "
                        "only the last value. Remove one."
                    )
                lines[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, source: str) -> int:
    """How many values ``node`` stands for once its aliases are expanded (memoised, so an alias
    bomb costs its number of nodes); raises for a recursive alias or too many values."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in active:
            raise ConfigError(f"{source}, line {n.start_mark.line + 1}: a recursive YAML alias.")
        active.add(id(n))
        children: list[yaml.Node] = []
        if isinstance(n, yaml.SequenceNode):
            children = list(n.value)
        elif isinstance(n, yaml.MappingNode):
            children = [part for pair in n.value for part in pair]
        total = 1 + sum(size(child) for child in children)
        active.discard(id(n))
        sizes[id(n)] = total
        if total > MAX_YAML_VALUES:
            raise ConfigError(
                f"{source}, line {n.start_mark.line + 1}: the config expands to more than "
                f"{MAX_YAML_VALUES} values through YAML aliases (*name); refused (an alias bomb?)."
            )
        return total

    return size(node)


def _yaml_error(source: str, error: yaml.YAMLError) -> ConfigError:
    """A YAML syntax error as ``source, line L, column C: problem`` (PyYAML's own message
    quotes the offending line, which must not be echoed: it may be any file's content)."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(error, "problem", None) or getattr(error, "context", None)
    if isinstance(error, yaml.reader.ReaderError) and isinstance(error.character, int):
        where = f", character {error.position + 1}"
        problem = f"the control character #x{error.character:02x} is not allowed in YAML"
    problem = problem or type(error).__name__
    return ConfigError(f"{source}: not valid YAML{where} ({problem}).")


def _safe_load(text: str, source: str) -> Any:
    """``yaml.safe_load`` with duplicated keys refused and alias expansion bounded."""
    try:
        loader = _ConfigLoader(text)  # its reader refuses control characters here already
    except yaml.YAMLError as e:
        raise _yaml_error(source, e) from None
    loader.name = source
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise _yaml_error(source, e) from None
    except RecursionError:
        raise ConfigError(f"{source}: the YAML is nested too deeply to be a config.") from None
    finally:
        loader.dispose()


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{source}: {len(text)} characters is too large for a config "
            f"(at most {MAX_CONFIG_BYTES})."
        )
    values = _safe_load(text, source)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"{source}: a config must be a mapping of sections "
            f"({', '.join(Config.keys())}). Received: a YAML {type(values).__name__}."
        )
    return values


def apply_override(
    values: dict[str, Any], override: str, *, schema: type[_Section] | None = None
) -> None:
    """Applies one ``section.key=value`` to a nested dict, checking the key against the schema.

    The value is parsed as YAML (``3`` is an int, ``0.5`` a float, ``null`` None, ``[10, 20]``
    a list, anything else text). ``schema`` is the root section class (default :class:`Config`;
    ``recsampled tune`` passes the one of its ``tune:`` section).

    Raises:
        ConfigError: for a malformed override or a key that is not in the schema.
    """
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            "An override must look like `section.key=value`, e.g. `training.epochs=3`. "
            f"Received: {override!r}."
        )
    parts = key.strip().split(".")
    section: type[_Section] = Config if schema is None else schema
    target = values
    for depth, part in enumerate(parts):
        valid = section.keys()
        if part not in valid:
            raise ConfigError(_unknown_key(section.SECTION, part, valid))
        annotation = typing.get_type_hints(section)[part]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None
            annotation = [a for a in typing.get_args(annotation) if a is not type(None)][0]
        last = depth == len(parts) - 1
        if last:
            break
        if not (isinstance(annotation, type) and issubclass(annotation, _Section)):
            raise ConfigError(
                f"`{'.'.join(parts[: depth + 1])}` is a setting, not a section; it has no key "
                f"`{parts[depth + 1]}`. Received: {override!r}."
            )
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target, section = target[part], annotation
    try:
        value = _safe_load(text, f"The value of `{key.strip()}`")
    except ConfigError as e:
        raise ConfigError(f"{e} (from --set {_short(override)})") from None
    target[parts[-1]] = value


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _read_config_file(path: Path) -> str:
    """The text of a config file; errors name the file and never quote its content."""
    if not path.exists():
        raise FileNotFoundError(f"Config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not a config file (give a YAML file).")
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file (a device or pipe?); give a YAML file.")
    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; it is not a config.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); a config is a YAML text file."
        ) from None


def _pop(values: dict[str, Any], key: str) -> Any:
    *sections, last = key.split(".")
    for section in sections:
        values = values[section]
    return values.pop(last)


def _last_set(origins: dict[str, int], key: str) -> int:
    """The index of the last override that set ``key`` or a key inside it (-1: the file)."""
    return max(
        (i for name, i in origins.items() if name == key or name.startswith(key + ".")),
        default=-1,
    )


def load_config(path: str | os.PathLike | None = None, *, overrides: Sequence[str] = ()) -> Config:
    """Reads a YAML config (or the defaults) and applies ``section.key=value`` overrides.

    A setting of the file (or of an earlier override) that a later override makes irrelevant,
    e.g. the file's ``task.num_sampled`` after ``--set task.negatives=in_batch``, is ignored
    with a notice on the ``recsampled.config`` logger: the override switched modes. Errors
    about a key that an override set end with ``(from --set section.key=value)``.

    Args:
        path: the YAML file; None starts from the defaults.
        overrides: ``section.key=value`` strings, applied in order (values parsed as YAML).

    Returns:
        The validated :class:`Config`.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ConfigError: for bad YAML, an unknown key, a wrong type or value.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        values = _parse_yaml(_read_config_file(path), str(path))
    origins: dict[str, int] = {}
    for index, override in enumerate(overrides):
        apply_override(values, override)
        origins[override.partition("=")[0].strip()] = index
    while True:
        try:
            return Config.from_dict(values)
        except _Unused as e:
            decided_at = origins.get(e.decider, -1) if e.decider else -1
            if decided_at < 0 or _last_set(origins, e.key) >= decided_at:
                raise _from_set(e, overrides, origins) from None
            value = _pop(values, e.key)
            where = "an earlier --set" if _last_set(origins, e.key) >= 0 else (path or "")
            logger.warning(
                "Ignoring %s=%s (from %s): --set %s makes it irrelevant.",
                e.key, _short(repr(value)), where, _short(overrides[decided_at]),
            )  # fmt: skip
        except ConfigError as e:
            raise _from_set(e, overrides, origins) from None


def _from_set(error: ConfigError, overrides: Sequence[str], origins: dict[str, int]) -> ConfigError:
    """``error``, ending with ``(from --set key=value)`` when it names a key an override set."""
    for name in re.findall(r"`([\w.\[\]]+)`", str(error)):
        key = name.split("[")[0]
        matches = [i for k, i in origins.items() if key == k or key.startswith(k + ".")]
        if matches:
            found = ConfigError(f"{error} (from --set {_short(overrides[max(matches)])})")
            found.__cause__ = error.__cause__
            return found
    return error

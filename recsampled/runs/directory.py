"""The run directory, written and read in one module: what a run writes, and what serving loads.

Layout of ``RUN_DIR``::

    config.yaml          the resolved config (every key)
    checkpoints/         tf.train.CheckpointManager: ckpt-N.* and the `checkpoint` index
    vocabulary/          users.parquet, items.parquet (recsampled.data.Vocabulary.save)
    towers/              query/ and candidate/ SavedModels, towers.json
    history.json         one record per epoch: epoch, mean batch loss, steps
    metrics.json         full-catalogue metrics of the model beside the popularity baseline
    .recsampled-run.json the names this run owns in the folder, and the fingerprint of its data
    .recsampled.lock     the lock a train holds (``flock``; the holder's pid inside)

**Claimed, and never someone else's files.** A train holds the folder's lock from
:meth:`RunDirectory.prepare` to its end (:func:`holds_run_lock`); a second train into it, or an
export of it, fails at once naming the holder's pid. A folder holding entries that recsampled
did not write (not among the run's parts in ``.recsampled-run.json``) is refused, unless
``force``: then the run writes beside them, but never over, into, or instead of one of them.

**The data's fingerprint** (:func:`data_fingerprint`: the files' paths, sizes and mtimes, and a
sha256 of the id columns and vocabularies) is recorded with the first checkpointed run; a rerun
whose data gives another fingerprint refuses to resume before it writes anything
(:meth:`RunDirectory.check_data`), and :meth:`TrainedRun.split` refuses changed data too.

Files are written to a temporary name and ``os.replace``-d into place; folders are built under a
temporary name and renamed into place (an older folder of the same name is first renamed aside,
then removed), so a reader never sees a half-written file or folder under its final name.

:func:`load_run` reads a finished run back as a :class:`TrainedRun` (config, vocabularies,
towers); every part is checked, and a :class:`~recsampled.errors.RunError` names the one at
fault. :meth:`TrainedRun.split` reloads the data as the config says and checks that it still
gives the run's vocabularies.

The towers are SavedModels over item (or user) indices (:func:`recsampled.models.save_tower`):
``tf.saved_model.load(path)(ids)`` with ``[n]`` int64 ids returns ``[n, embedding_dim]`` float32
embeddings, and the ``serving_default`` signature maps ``ids`` to ``{"embeddings": ...}``.
Indices are those of the vocabularies (``Vocabulary.lookup`` maps original ids to them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from scipy import sparse

from recsampled._io import atomic_directory, claim, write_atomic, write_json
from recsampled.config import Config, ConfigError
from recsampled.data import DataError, Vocabulary, read_item_titles
from recsampled.data.splits import Split
from recsampled.errors import RunDirectoryError, RunError
from recsampled.index.build import Metric
from recsampled.models import embed_ids, load_tower, save_tower
from recsampled.models.embed import DEFAULT_BATCH_SIZE
from recsampled.runs.build import load_split

SCHEMA_VERSION = 1

__all__ = [
    "RunDirectory",
    "RunDirectoryError",
    "TrainedRun",
    "data_fingerprint",
    "holds_run_lock",
    "load_run",
]

logger = logging.getLogger(__name__)

MANIFEST = ".recsampled-run.json"
LOCK = ".recsampled.lock"
FORMAT_NAME = "recsampled-run"
#: The entries a run writes in its folder (``.recsampled-run.json`` lists those it owns).
PARTS = (
    "config.yaml", "checkpoints", "vocabulary", "towers", "history.json", "history.png",
    "metrics.json", "evaluation.json",
)  # fmt: skip

_CLAIMS: list[contextlib.ExitStack] = []  # one per running holds_run_lock call


def holds_run_lock(function: Callable) -> Callable:
    """Decorates ``train``: a run folder's lock taken by :meth:`RunDirectory.prepare` during
    the call is held until the call ends (returns or raises)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as stack:
            _CLAIMS.append(stack)
            try:
                return function(*args, **kwargs)
            finally:
                _CLAIMS.pop()

    return wrapper


def _ours(name: str, owned: set[str]) -> bool:
    """Whether an entry of the folder is recsampled's: an owned part, the manifest, the lock,
    or a temporary/backup sibling of an owned part (``.towers.tmp-...``)."""
    if name in owned or name in (MANIFEST, LOCK) or name.startswith(f".{MANIFEST}."):
        return True
    return any(name.startswith(f".{part}.") for part in owned)


def _array_bytes(values: np.ndarray) -> bytes:
    values = np.asarray(values)
    if values.dtype.kind in "OUS":
        return "\0".join(map(str, values.tolist())).encode()
    return np.ascontiguousarray(values).tobytes()


def data_fingerprint(data: Any, split: Split) -> dict[str, Any]:
    """The fingerprint of a run's data: each file's path, size and mtime, and a sha256 of the
    split's id columns and vocabularies (``data`` is the config's ``data`` section)."""
    files = []
    for path in (getattr(data, "path", None), getattr(data.split, "test_path", None)):
        if path:
            stat = Path(path).stat()
            absolute = str(Path(path).absolute())
            files.append({"path": absolute, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    digest = hashlib.sha256()
    train = split.train
    for array in (
        train.users.original_ids, train.items.original_ids, train.user_ids, train.item_ids,
        split.test.user_ids, split.test.item_ids,
    ):  # fmt: skip
        chunk = _array_bytes(array)
        digest.update(len(chunk).to_bytes(8, "little") + chunk)
    return {"source": data.source, "files": files, "ids_sha256": digest.hexdigest()}


def _fingerprint_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words (an mtime alone is no change)."""
    changes = []
    saved_files = {f["path"]: f for f in saved.get("files", [])}
    now_files = {f["path"]: f for f in now.get("files", [])}
    if set(saved_files) != set(now_files):
        changes.append(f"files {sorted(saved_files)} != {sorted(now_files)}")
    for path in sorted(set(saved_files) & set(now_files)):
        if saved_files[path]["size"] != now_files[path]["size"]:
            changes.append(
                f"{path}: {saved_files[path]['size']} bytes then, {now_files[path]['size']} now"
            )
    if saved.get("ids_sha256") != now.get("ids_sha256"):
        changes.append("the user/item id columns (their sha256) differ")
    return changes


def _part(name: str, doc: str) -> property:
    """A property: the path of the part ``name`` of the run directory."""
    return property(lambda self: self.path / name, doc=doc)


@dataclass(frozen=True)
class RunDirectory:
    """A run directory (module docstring): its paths, the resume check, its writers and
    :meth:`load`.

    Example:
        >>> run = RunDirectory(Path("runs/demo"))
        >>> run.towers.name, run.metrics_file.name
        ('towers', 'metrics.json')
    """

    path: Path

    config_file = _part("config.yaml", "The resolved config (every key).")
    checkpoints = _part("checkpoints", "``tf.train.CheckpointManager``'s folder.")
    vocabulary = _part("vocabulary", "``users.parquet`` and ``items.parquet``.")
    towers = _part("towers", "The ``query/`` and ``candidate/`` SavedModels, ``towers.json``.")
    history_file = _part("history.json", "One record per epoch (loss, validation metrics).")
    history_plot = _part("history.png", "Loss and validation Recall/NDCG per epoch.")
    metrics_file = _part("metrics.json", "Full-catalogue metrics beside popularity.")
    evaluation_file = _part("evaluation.json", "Where ``recsampled evaluate`` writes by default.")

    def latest_checkpoint(self) -> str | None:
        """The newest checkpoint in the index, or None (a checkpoint missing from the index,
        e.g. cut short by a crash, is never returned)."""
        return tf.train.latest_checkpoint(str(self.checkpoints))

    def prepare(self, config: Config, *, force: bool = False, more_epochs: bool = False) -> None:
        """Creates the folder, checks that a checkpoint in it belongs to ``config``, and writes
        ``config.yaml``.

        Args:
            config: the config of this run.
            force: discard the checkpoints and outputs of an earlier run and start over.
            more_epochs: accept a config that differs from the saved one only by a larger
                ``training.epochs``: the run then continues from its last checkpoint (the
                batches of each epoch depend on the seed and the epoch only, so the extended
                run trains what an uninterrupted run of that many epochs would).

        Raises:
            RunDirectoryError: if the folder holds a checkpoint of another config (or one whose
                config cannot be read), unless ``force``; if it holds files recsampled did not
                write, unless ``force``, or one where the run writes (even with ``force``).
            FolderInUseError: if another process holds the folder's lock (module docstring).
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryError(
                f"{self.path} is a file, not a folder; a run needs a folder. Choose another "
                "--output."
            )
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.claim("train into it")
        if _CLAIMS:
            _CLAIMS[-1].enter_context(lock)  # held until train() ends
        else:
            with lock:  # nobody else holds it now
                pass
        self._check_ownership(force=force)
        if force:
            self.clear()
        elif self.latest_checkpoint() is not None:
            differences = self._differences(config, more_epochs=more_epochs)
            if differences:
                hint = " (only a larger training.epochs continues a run)" if more_epochs else ""
                raise RunDirectoryError(
                    f"{self.path} holds a checkpoint of a different config; resuming would mix "
                    f"two runs. Differences (saved != now): {'; '.join(differences)}.{hint} "
                    "Pass --force to discard that run and start over, or choose another --output."
                )
        self._update_manifest(owned=PARTS)
        write_atomic(self.config_file, config.to_yaml())

    def claim(self, what: str, *, shared: bool = False) -> contextlib.AbstractContextManager:
        """The folder's lock (:func:`recsampled._io.claim`), e.g.
        ``with run.claim("export it", shared=True): ...``."""
        return claim(self.path / LOCK, folder=self.path, what=what, shared=shared)

    def manifest(self) -> dict[str, Any]:
        """``.recsampled-run.json`` ({} when absent or unreadable). A folder without one whose
        ``config.yaml`` is a recsampled config beside ``checkpoints/`` (a run written before
        manifests) owns its parts."""
        try:
            manifest = json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError):
            manifest = None
        if isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME:
            return manifest
        if not self.checkpoints.is_dir():
            return {}
        try:
            Config.from_yaml(self.config_file.read_text(), source=str(self.config_file))
        except (OSError, ValueError):
            return {}
        return {"format": FORMAT_NAME, "owned": list(PARTS)}

    def _update_manifest(self, **changes: Any) -> None:
        manifest = {"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION, **self.manifest()}
        if "owned" in changes:
            changes["owned"] = sorted(set(manifest.get("owned", [])) | set(changes["owned"]))
        write_json(self.path / MANIFEST, {**manifest, **changes})

    def foreign_entries(self) -> list[str]:
        """The entries of the folder that recsampled did not write (sorted names)."""
        if not self.path.is_dir():
            return []
        owned = set(self.manifest().get("owned", []))
        return sorted(e.name for e in self.path.iterdir() if not _ours(e.name, owned))

    def _check_ownership(self, *, force: bool) -> None:
        foreign = self.foreign_entries()
        clashes = [name for name in foreign if name in PARTS]
        if clashes:
            raise RunDirectoryError(
                f"{self.path} holds {', '.join(clashes)}, which recsampled did not write, where "
                "a run writes its own; refusing to replace them (even with --force). Move them "
                "away, or choose another --output."
            )
        if foreign and not force:
            shown = ", ".join(foreign[:5]) + (
                f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            )
            raise RunDirectoryError(
                f"{self.path} is not empty and not a recsampled run: it holds {shown}, which "
                "recsampled did not write. Choose another (or a new) --output, or pass --force "
                "to write the run beside them (nothing of theirs is moved or deleted)."
            )

    def check_data(self, config: Config, split: Split) -> None:
        """Records the data's fingerprint (:func:`data_fingerprint`); when the folder holds a
        checkpoint made on other data, raises before anything is written.

        Raises:
            RunDirectoryError: if the data changed since the run's checkpoints were made.
        """
        now = data_fingerprint(config.data, split)
        saved = self.manifest().get("data")
        if saved is not None and self.latest_checkpoint() is not None:
            changes = _fingerprint_changes(saved, now)
            if changes:
                raise RunDirectoryError(
                    f"{self.path} holds checkpoints trained on other data; resuming would "
                    f"train the old embeddings under the new ids. Changed: {'; '.join(changes)}. "
                    "Pass --force to start over on the new data, or choose another --output."
                )
        self._update_manifest(data=now)

    def _differences(self, config: Config, *, more_epochs: bool = False) -> list[str]:
        if not self.config_file.is_file():
            return [f"{self.config_file.name} is missing, so the checkpoint's config is unknown"]
        try:
            saved = Config.from_yaml(self.config_file.read_text(), source=str(self.config_file))
        except ConfigError as e:
            return [f"the saved config cannot be read ({e})"]
        if more_epochs and config.training.epochs > saved.training.epochs:
            extended = dataclasses.replace(saved.training, epochs=config.training.epochs)
            differences = dataclasses.replace(saved, training=extended).diff(config)
            if not differences:
                logger.info(
                    "Continuing the run in %s from %d to %d epochs.",
                    self.path, saved.training.epochs, config.training.epochs,
                )  # fmt: skip
            return differences
        return saved.diff(config)

    def clear(self) -> None:
        """Removes what a run wrote (the parts it owns, and nothing else) from the folder."""
        owned = set(self.manifest().get("owned", []))
        for name in PARTS:
            if name not in owned:
                continue
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        manifest = self.manifest()
        if manifest.pop("data", None) is not None:
            write_json(self.path / MANIFEST, manifest)

    def save_vocabularies(self, users: Vocabulary, items: Vocabulary) -> None:
        """Writes ``vocabulary/users.parquet`` and ``vocabulary/items.parquet``."""
        with atomic_directory(self.vocabulary) as folder:
            users.save(folder / "users.parquet")
            items.save(folder / "items.parquet")

    def save_towers(
        self,
        *,
        query_model: tf.keras.layers.Layer,
        candidate_model: tf.keras.layers.Layer,
        num_users: int,
        num_items: int,
        embedding_dim: int,
    ) -> None:
        """Writes ``towers/``: ``query/`` and ``candidate/`` SavedModels
        (:func:`recsampled.models.save_tower`) and ``towers.json``, atomically."""
        with atomic_directory(self.towers) as folder:
            for name, tower in (("query", query_model), ("candidate", candidate_model)):
                save_tower(tower, folder / name, name=f"{name}_tower")
            manifest = {
                "schema_version": SCHEMA_VERSION,
                "query": {"path": "query", "num_ids": num_users, "vocabulary": "users.parquet"},
                "candidate": {
                    "path": "candidate", "num_ids": num_items, "vocabulary": "items.parquet"
                },
                "embedding_dim": embedding_dim,
                "input": "[n] int64 vocabulary indices",
                "output": "[n, embedding_dim] float32 embeddings (signature key 'embeddings')",
            }  # fmt: skip
            write_json(folder / "towers.json", manifest)

    def write_history(self, history: list[dict[str, Any]]) -> None:
        """Writes ``history.json``."""
        write_json(self.history_file, history)

    def write_metrics(self, report: dict[str, Any]) -> None:
        """Writes ``metrics.json`` (``report`` under the schema version)."""
        write_json(self.metrics_file, {"schema_version": SCHEMA_VERSION, **report})

    def load(self) -> TrainedRun:
        """The finished run in this directory (see :func:`load_run`)."""
        return load_run(self.path)


@dataclass
class TrainedRun:
    """The parts of a finished run that export and evaluation use (see :func:`load_run`).

    Attributes:
        path: the run directory.
        config: its ``config.yaml``.
        users: the user vocabulary (index -> original id): the query tower's input.
        items: the item vocabulary: the candidate tower's input, the index's rows.
        query_model: the query tower SavedModel: ``[n]`` int64 user indices -> ``[n, D]``.
        candidate_model: the candidate tower SavedModel: item indices -> ``[n, D]``.
        embedding_dim: D.
    """

    path: Path
    config: Config
    users: Vocabulary
    items: Vocabulary
    query_model: Any
    candidate_model: Any
    embedding_dim: int
    _split: Split | None = field(default=None, repr=False)

    @property
    def metric(self) -> Metric:
        """``"cosine"`` when the towers normalise their output (``model.normalize``), else
        ``"dot"``: the score the model was trained with."""
        return "cosine" if self.config.model.normalize else "dot"

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def num_items(self) -> int:
        return len(self.items)

    def split(self) -> Split:
        """The train/test split, reloaded as the config says (cached).

        Raises:
            RunError: (part ``"data"``) if the data cannot be read or no longer gives the run's
                vocabularies (it changed since training).
        """
        if self._split is None:
            where = self.config.data.path or "the synthetic generator"
            try:
                split = load_split(self.config.data)
            except (DataError, FileNotFoundError, ValueError) as e:
                raise RunError(
                    f"The data of the run at {self.path} ({where}) cannot be loaded: {e}",
                    path=self.path,
                    part="data",
                ) from e
            for name, saved, now in (
                ("users", self.users, split.train.users),
                ("items", self.items, split.train.items),
            ):
                if saved != now:
                    raise RunError(
                        f"The data of the run at {self.path} ({where}) no longer gives the "
                        f"run's {name} (vocabulary/{name}.parquet: {len(saved)} ids, the data "
                        f"now: {len(now)}); it changed since training. Train again.",
                        path=self.path,
                        part="data",
                    )
            saved = RunDirectory(self.path).manifest().get("data")
            changes = (
                []
                if saved is None
                else _fingerprint_changes(saved, data_fingerprint(self.config.data, split))
            )
            if changes:
                raise RunError(
                    f"The data of the run at {self.path} ({where}) changed since training "
                    f"({'; '.join(changes)}). Train again.",
                    path=self.path,
                    part="data",
                )
            self._split = split
        return self._split

    @property
    def query_tower_dir(self) -> Path:
        """The query tower's SavedModel folder (an export copies it)."""
        return self.path / "towers" / "query"

    def item_embeddings(self, *, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """``[num_items, D]`` float32 embeddings of every item (candidate tower, in batches)."""
        return embed_ids(
            self.candidate_model, self.num_items, batch_size=batch_size, desc="embedding items"
        )

    def query_embeddings(
        self, users: np.ndarray | None = None, *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> np.ndarray:
        """``[n, D]`` float32 query embeddings of user indices ``users`` (default: all)."""
        users = np.arange(self.num_users) if users is None else np.asarray(users, np.int64)
        return embed_ids(self.query_model, users, batch_size=batch_size, desc="embedding users")

    def seen(self) -> sparse.csr_matrix:
        """``[num_users, num_items]`` training items of each user (``Interactions.user_items``)."""
        return self.split().train.user_items(self.num_users)

    def item_titles(self) -> np.ndarray | None:
        """``[num_items]`` titles from ``data.item_metadata`` (None when not configured)."""
        path = self.config.data.item_metadata
        if path is None:
            return None
        try:
            return read_item_titles(path, self.items.original_ids)
        except (OSError, ValueError) as e:
            raise RunError(
                f"The item metadata of the run at {self.path} (data.item_metadata={path!r}) "
                f"cannot be used: {e}",
                path=self.path,
                part="data.item_metadata",
            ) from e


def _fail(path: Path, part: str, message: str, cause: BaseException | None = None) -> RunError:
    error = RunError(f"The run at {path} {message}", path=path, part=part)
    error.__cause__ = cause
    return error


def _load_config(run: RunDirectory) -> Config:
    path = run.path
    if not path.is_dir():
        raise _fail(
            path, "folder", "does not exist. Train it with `recsampled train --output RUN_DIR`."
        )
    if not run.config_file.is_file():
        raise _fail(
            path, "config.yaml", "has no config.yaml: it is not a recsampled run directory."
        )
    try:
        return Config.from_yaml(run.config_file.read_text(), source=str(run.config_file))
    except (ConfigError, OSError) as e:
        raise _fail(path, "config.yaml", f"has an unreadable config.yaml: {e}", e) from e


def _load_vocabulary(run: RunDirectory, name: str) -> Vocabulary:
    part = f"vocabulary/{name}.parquet"
    try:
        return Vocabulary.load(run.path / part)
    except FileNotFoundError as e:
        raise _fail(run.path, part, f"has no {part}: training did not get that far.", e) from e
    except ValueError as e:
        raise _fail(run.path, part, f"has an unreadable {part}: {e}", e) from e


def _load_checked_tower(run: RunDirectory, name: str, num_ids: int, dim: int) -> Any:
    """``towers/{name}``, checked to embed indices 0 and ``num_ids - 1`` into ``dim``."""
    part, path = f"towers/{name}", run.path
    if not (run.towers / name).is_dir():
        raise _fail(
            path,
            part,
            f"has no {part} SavedModel: training has not finished (run `recsampled train` "
            "again on it to resume).",
        )
    try:
        tower = load_tower(run.towers / name)
    except Exception as e:  # noqa: BLE001  (TensorFlow raises many kinds)
        raise _fail(path, part, f"has an unreadable {part} SavedModel: {e}", e) from e
    try:
        probe = np.asarray(tower(np.array([0, num_ids - 1], np.int64)))
    except Exception as e:  # noqa: BLE001
        raise _fail(
            path,
            part,
            f"has a {name} tower that cannot embed indices 0 and {num_ids - 1} "
            f"(vocabulary of {num_ids}): {e}",
            e,
        ) from e
    if probe.shape != (2, dim):
        raise _fail(
            path,
            part,
            f"has a {name} tower with output shape {probe.shape[1:]}, but config.yaml says "
            f"model.embedding_dim={dim}.",
        )
    return tower


def load_run(run_dir: str | os.PathLike) -> TrainedRun:
    """Loads and checks what a finished ``recsampled train`` run holds for serving.

    Args:
        run_dir: the run directory (``recsampled train --output RUN_DIR``).

    Returns:
        A :class:`TrainedRun`.

    Raises:
        RunError: naming the part that is missing, unreadable or inconsistent (e.g.
            ``towers/query`` missing because training did not finish).
    """
    run = RunDirectory(Path(run_dir).absolute())
    config = _load_config(run)
    users, items = _load_vocabulary(run, "users"), _load_vocabulary(run, "items")
    dim = config.model.embedding_dim
    return TrainedRun(
        path=run.path,
        config=config,
        users=users,
        items=items,
        query_model=_load_checked_tower(run, "query", len(users), dim),
        candidate_model=_load_checked_tower(run, "candidate", len(items), dim),
        embedding_dim=dim,
    )

"""What a run writes into its directory, every file and folder atomically.

Layout of ``RUN_DIR``::

    config.yaml          the resolved config (every key)
    checkpoints/         tf.train.CheckpointManager: ckpt-N.* and the `checkpoint` index
    vocabulary/          users.parquet, items.parquet (recsampled.data.Vocabulary.save)
    towers/              query/ and candidate/ SavedModels, towers.json
    history.json         one record per epoch: epoch, mean batch loss, steps
    metrics.json         full-catalogue metrics of the model beside the popularity baseline

Files are written to a temporary name and ``os.replace``-d into place; folders are built under a
temporary name and renamed into place (an older folder of the same name is first renamed aside,
then removed), so a reader never sees a half-written file or folder under its final name.

The towers are SavedModels over item (or user) indices: ``tf.saved_model.load(path)(ids)`` with
``[n]`` int64 ids returns ``[n, embedding_dim]`` float32 embeddings, and the
``serving_default`` signature maps ``ids`` to ``{"embeddings": ...}``. Indices are those of the
vocabularies (``Vocabulary.lookup`` maps original ids to them).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf

from recsampled._io import atomic_directory, write_atomic, write_json
from recsampled.config import Config, ConfigError
from recsampled.data import Vocabulary
from recsampled.errors import RunDirectoryError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RunDirectory:
    """The paths of a run directory (module docstring) and the resume check."""

    path: Path

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def vocabulary(self) -> Path:
        return self.path / "vocabulary"

    @property
    def towers(self) -> Path:
        return self.path / "towers"

    @property
    def history_file(self) -> Path:
        return self.path / "history.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def evaluation_file(self) -> Path:
        """Where ``recsampled evaluate`` writes its report by default."""
        return self.path / "evaluation.json"

    def latest_checkpoint(self) -> str | None:
        """The newest checkpoint in the index, or None (a checkpoint missing from the index,
        e.g. cut short by a crash, is never returned)."""
        return tf.train.latest_checkpoint(str(self.checkpoints))

    def prepare(self, config: Config, *, force: bool = False) -> None:
        """Creates the folder, checks that a checkpoint in it belongs to ``config``, and writes
        ``config.yaml``.

        Args:
            config: the config of this run.
            force: discard the checkpoints and outputs of an earlier run and start over.

        Raises:
            RunDirectoryError: if the folder holds a checkpoint of another config (or one whose
                config cannot be read), unless ``force``.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        if force:
            self.clear()
        elif self.latest_checkpoint() is not None:
            differences = self._differences(config)
            if differences:
                raise RunDirectoryError(
                    f"{self.path} holds a checkpoint of a different config; resuming would mix "
                    f"two runs. Differences (saved != now): {'; '.join(differences)}. Pass "
                    "--force to discard that run and start over, or choose another --output."
                )
        write_atomic(self.config_file, config.to_yaml())

    def _differences(self, config: Config) -> list[str]:
        if not self.config_file.is_file():
            return [f"{self.config_file.name} is missing, so the checkpoint's config is unknown"]
        try:
            saved = Config.from_yaml(self.config_file.read_text(), source=str(self.config_file))
        except ConfigError as e:
            return [f"the saved config cannot be read ({e})"]
        return saved.diff(config)

    def clear(self) -> None:
        """Removes what a run wrote (and nothing else) from the folder."""
        for folder in (self.checkpoints, self.vocabulary, self.towers):
            shutil.rmtree(folder, ignore_errors=True)
        for file in (self.config_file, self.history_file, self.metrics_file, self.evaluation_file):
            file.unlink(missing_ok=True)

    def save_vocabularies(self, users: Vocabulary, items: Vocabulary) -> None:
        """Writes ``vocabulary/users.parquet`` and ``vocabulary/items.parquet``."""
        with atomic_directory(self.vocabulary) as folder:
            users.save(folder / "users.parquet")
            items.save(folder / "items.parquet")


class TowerModule(tf.Module):
    """A tower as a SavedModel: ``[n]`` int64 indices to ``[n, embedding_dim]`` embeddings."""

    def __init__(self, tower: tf.keras.layers.Layer, name: str | None = None):
        super().__init__(name=name)
        self.tower = tower

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="ids")])
    def __call__(self, ids: tf.Tensor) -> tf.Tensor:
        return self.tower(ids)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="ids")])
    def serve(self, ids: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"embeddings": self.tower(ids)}


def save_towers(
    path: str | os.PathLike,
    *,
    query_model: tf.keras.layers.Layer,
    candidate_model: tf.keras.layers.Layer,
    num_users: int,
    num_items: int,
    embedding_dim: int,
) -> None:
    """Writes ``query/`` and ``candidate/`` SavedModels and ``towers.json``, atomically."""
    with atomic_directory(path) as folder:
        for name, tower in (("query", query_model), ("candidate", candidate_model)):
            module = TowerModule(tower, name=f"{name}_tower")
            tf.saved_model.save(
                module, str(folder / name), signatures={"serving_default": module.serve}
            )
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "query": {"path": "query", "num_ids": num_users, "vocabulary": "users.parquet"},
            "candidate": {"path": "candidate", "num_ids": num_items, "vocabulary": "items.parquet"},
            "embedding_dim": embedding_dim,
            "input": "[n] int64 vocabulary indices",
            "output": "[n, embedding_dim] float32 embeddings (signature key 'embeddings')",
        }
        write_json(folder / "towers.json", manifest)


def load_tower(path: str | os.PathLike) -> Any:
    """Loads a tower SavedModel written by :func:`save_towers`; call it on int64 indices."""
    return tf.saved_model.load(str(path))

"""The exceptions recsampled raises for bad input, in one place, under one base class.

Every class derives from :class:`RecsampledError`, itself a ``ValueError`` (so code that caught
``ValueError`` before keeps working). Those that point at one part of a folder (an artifact, a run
directory) carry it in ``part``, so that a caller (the CLI) can name it without guessing::

    RecsampledError (ValueError)
    ├── ConfigError                 a config file or --set override
    ├── DataError                   an interaction log or metadata file (source, bad_row)
    ├── ArtifactError               an export folder (path, part)
    │   └── ArtifactNotFoundError   ... that is missing (also a FileNotFoundError)
    ├── RunError                    a trained run directory (path, part)
    ├── RunDirectoryError           a run directory that holds another config's run
    │   └── FolderInUseError        ... or that another process is writing (path, pid)
    ├── TrainingError               training that cannot go on (a NaN loss: step, kept)
    ├── UnknownUserError            a user id outside the vocabulary (also a KeyError)
    └── UnknownItemError            an item id outside the catalogue (also a KeyError)

Each class stays importable from where it was defined before (``recsampled.data.DataError``,
``recsampled.config.ConfigError``, ``recsampled.index.ArtifactError``, ...).

Example:
    >>> try:
    ...     raise ArtifactError("index.faiss is corrupt", path="/tmp/a", part="index.faiss")
    ... except RecsampledError as e:
    ...     print(type(e).__name__, e.part)
    ArtifactError index.faiss
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recsampled.data.errors import BadRow

__all__ = [
    "ArtifactError",
    "ArtifactNotFoundError",
    "ConfigError",
    "DataError",
    "FolderInUseError",
    "RecsampledError",
    "RunDirectoryError",
    "RunError",
    "TrainingError",
    "UnknownItemError",
    "UnknownUserError",
]


class RecsampledError(ValueError):
    """The base class of recsampled's errors about bad input (configs, data, folders, ids).

    Attributes:
        part: the part of a folder at fault (``"index.faiss"``, ``"towers/query"``, ...), or
            None when the error is not about a folder's part.
    """

    part: str | None = None


class ConfigError(RecsampledError):
    """A config (YAML file, mapping or ``--set`` override) that is not valid."""


class DataError(RecsampledError):
    """Input data that cannot be read as an interaction log.

    Attributes:
        source: the file (as passed by the caller) or ``"<table>"`` for an in-memory table.
        bad_row: the first offending row, when the problem is a row; else ``None``.
    """

    def __init__(self, message: str, *, source: str, bad_row: BadRow | None = None):
        super().__init__(message)
        self.source = source
        self.bad_row = bad_row

    @classmethod
    def from_bad_rows(cls, source: str, bad_rows: Sequence[BadRow], total: int) -> DataError:
        """The error for ``on_bad_rows="error"``: the first bad row, and how many there are."""
        first = bad_rows[0]
        more = (
            f" {total} bad rows in all; the first ones: "
            + "; ".join(
                f"line {b.line}" if b.line is not None else f"row {b.row}" for b in bad_rows
            )
            + "."
            if total > 1
            else ""
        )
        return cls(
            f"{first.describe(source)}{more} Fix the data, or pass on_bad_rows='skip' to drop bad "
            "rows (they are counted in the load report, with examples).",
            source=source,
            bad_row=first,
        )


class _PartError(RecsampledError):
    """An error about one part of a folder: ``path`` is the folder, ``part`` the culprit."""

    def __init__(self, message: str, *, path: str | os.PathLike, part: str):
        super().__init__(message)
        self.path = Path(path)
        self.part = part


class ArtifactError(_PartError):
    """An artifact folder that is incomplete, corrupt or inconsistent.

    Attributes:
        path: the artifact folder.
        part: the part at fault (``"manifest.json"``, ``"index.faiss"``, ``"item_ids.npy"``, ...,
            or ``"folder"``).
    """


class ArtifactNotFoundError(ArtifactError, FileNotFoundError):
    """The artifact folder, or one of its parts, does not exist."""


class RunError(_PartError):
    """A run directory that cannot be served: a missing, unreadable or inconsistent part.

    Attributes:
        path: the run directory.
        part: the part at fault (``"folder"``, ``"config.yaml"``, ``"vocabulary/users.parquet"``,
            ``"towers/query"``, ``"data"``, ``"data.item_metadata"``, ...).
    """


class RunDirectoryError(RecsampledError):
    """A run directory that cannot be used for this run (e.g. it holds another config's run)."""


class FolderInUseError(RunDirectoryError):
    """A folder (a run directory, an artifact's output) that another process holds locked.

    Attributes:
        path: the folder.
        pid: the holder's process id (None if it could not be read).
    """

    def __init__(self, message: str, *, path: str | os.PathLike, pid: int | None):
        super().__init__(message)
        self.path = Path(path)
        self.pid = pid


class TrainingError(RecsampledError):
    """Training that stopped because it cannot go on (e.g. the loss became NaN or inf).

    Attributes:
        step: the global step (1-based) at which it stopped.
    """

    def __init__(self, message: str, *, step: int):
        super().__init__(message)
        self.step = step


class _UnknownIdError(RecsampledError, KeyError):
    """An id outside a vocabulary; ``str(error)`` is the message (not its ``repr``, as KeyError)."""

    def __init__(self, message: str, ids: Sequence[Any]):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UnknownUserError(_UnknownIdError):
    """A user id that is not in the artifact's user vocabulary.

    Attributes:
        user_ids: the unknown ids (all of them, in request order).
    """

    def __init__(self, message: str, user_ids: Sequence[Any]):
        super().__init__(message, user_ids)
        self.user_ids = list(user_ids)


class UnknownItemError(_UnknownIdError):
    """An item id that is not in the artifact's catalogue.

    Attributes:
        item_ids: the unknown ids (all of them, in request order).
    """

    def __init__(self, message: str, item_ids: Sequence[Any]):
        super().__init__(message, item_ids)
        self.item_ids = list(item_ids)

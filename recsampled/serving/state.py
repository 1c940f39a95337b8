"""The served artifact: loaded and checked off to the side, then swapped in atomically.

:class:`ArtifactHolder` keeps one :class:`LoadedArtifact` (a :class:`~recsampled.index.Retriever`
plus what the service derives from it). :meth:`ArtifactHolder.reload` loads the folder again
(``Retriever.load`` checks every part against the manifest), runs a warm-up search, and only then
replaces the reference; a folder that fails any check is refused and the old artifact keeps
serving. Requests hold the :class:`LoadedArtifact` they started with, so a swap never changes
the artifact under a request in flight: the old one is freed when its last request finishes.

Deployments replace the folder atomically (``export_artifact`` writes a temporary folder and
renames it), or point ``--artifacts`` at a symlink and flip it; then they call the admin
endpoint or send SIGHUP.

Example:
    >>> import numpy as np
    >>> from recsampled.index import export_artifact
    >>> items = np.random.default_rng(0).normal(size=(50, 4)).astype("float32")
    >>> _ = export_artifact("/tmp/recsampled-serving-example", item_embeddings=items,
    ...                     item_ids=[f"item{i}" for i in range(50)], index="flat",
    ...                     overwrite=True)
    >>> holder = ArtifactHolder("/tmp/recsampled-serving-example")
    >>> holder.current.generation, holder.reload().generation
    (1, 2)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
import tensorflow as tf

from recsampled.index import ArtifactError, Retriever
from recsampled.index.served import exact_index_of
from recsampled.serving.settings import USER_TABLE_BYTES

logger = logging.getLogger("recsampled.serving")


class ReloadInProgressError(RuntimeError):
    """A reload was asked for while another one is still loading."""


class ReloadRefusedError(RuntimeError):
    """The new artifact failed a check; the old one keeps serving.

    Attributes:
        part: the artifact part at fault (``"index.faiss"``, ``"manifest.json"``...), or
            ``None`` when the error names none.
    """

    def __init__(self, message: str, part: str | None = None):
        super().__init__(message)
        self.part = part


SMALL_LOOKUP = 32  # ids per request looked up one by one (a hash probe each) below this


@dataclasses.dataclass(frozen=True)
class LoadedArtifact:
    """One loaded, checked artifact and the lookups the service derives from it.

    Build it with :meth:`of`.

    Attributes:
        retriever: the :class:`~recsampled.index.Retriever` over the folder.
        generation: 1 for the first artifact, incremented by every successful reload.
        loaded_at: Unix time of the swap.
        popular_rows: ``[num_items]`` index rows by decreasing popularity (stable), if the
            artifact has item popularity.
        users: the user vocabulary as a hash index (``None`` without one).
        items: the item ids as a hash index.
        query_function: the query tower's concrete function ``[batch] int64 -> [batch, D]``
            (a direct call skips ``tf.function``'s dispatch, most of a small call's cost), or
            ``None`` to embed with ``Retriever.embed_users``.
        user_table: ``[num_users, D]`` float32 every user's query embedding, computed once at
            load by the tower (a user index maps to one vector), so that a request needs no
            TensorFlow call; ``None`` when it would exceed the memory limit (the tower then
            runs per batch).
    """

    retriever: Retriever
    generation: int
    loaded_at: float
    popular_rows: np.ndarray | None
    users: pd.Index | None
    items: pd.Index
    query_function: Any | None
    user_table: np.ndarray | None = None
    _exact: list = dataclasses.field(default_factory=list, repr=False, compare=False)

    @classmethod
    def of(
        cls, retriever: Retriever, generation: int, *, user_table_bytes: int = USER_TABLE_BYTES
    ) -> LoadedArtifact:
        """Derives the lookups of ``retriever``; embeds all users if the table fits in
        ``user_table_bytes`` (0: never)."""
        popular = None
        if retriever.item_popularity is not None:
            popular = np.argsort(-retriever.item_popularity, kind="stable")
        users = pd.Index(retriever.user_ids) if retriever.user_ids is not None else None
        function = _query_function(retriever)
        return cls(
            retriever,
            generation,
            time.time(),
            popular,
            users,
            pd.Index(retriever.item_ids),
            function,
            _user_table(retriever, function, user_table_bytes),
        )

    @property
    def tag(self) -> str:
        """``"<generation>:<first 16 hex digits of the embeddings' sha256>"``."""
        return f"{self.generation}:{self.retriever.manifest.embeddings_sha256[:16]}"

    def user_indices(self, user_ids: np.ndarray) -> np.ndarray:
        """``[batch_size]`` int64 user indices of original ids, ``-1`` where unknown."""
        return _lookup(self.users, user_ids)

    def item_rows(self, item_ids: np.ndarray) -> np.ndarray:
        """``[batch_size]`` int64 index rows of original item ids, ``-1`` where unknown."""
        return _lookup(self.items, item_ids)

    def embed(self, user_indices: np.ndarray) -> np.ndarray:
        """``[batch_size, embedding_dim]`` float32 query embeddings of known user indices."""
        if self.user_table is not None:
            return self.user_table[user_indices]
        if self.query_function is None:
            return self.retriever.embed_users(self.retriever.user_ids[user_indices])
        output = self.query_function(tf.constant(user_indices, tf.int64))
        return np.asarray(output, dtype=np.float32)

    def exact_index(self) -> faiss.Index:
        """An exact index over the stored item vectors, built on first use (for the rare rows
        an approximate index leaves short, as ``Retriever.recommend`` does)."""
        if not self._exact:
            self._exact.append(exact_index_of(self.retriever.index))
        return self._exact[0]


def _lookup(index: pd.Index, ids: np.ndarray) -> np.ndarray:
    if len(ids) > SMALL_LOOKUP:
        return index.get_indexer(ids).astype(np.int64)
    rows = []
    for value in ids.tolist():
        try:
            rows.append(index.get_loc(value))
        except (KeyError, TypeError):
            rows.append(-1)
    return np.array(rows, np.int64)


def _query_function(retriever: Retriever) -> Any | None:
    """The tower's concrete function, if it gives what ``embed_users`` gives for user 0."""
    if retriever.query_model is None or not retriever.num_users:
        return None
    try:
        function = retriever.query_model.__call__.get_concrete_function(
            tf.TensorSpec([None], tf.int64)
        )
        probe = np.asarray(function(tf.constant([0], tf.int64)), dtype=np.float32)
    except (AttributeError, TypeError, ValueError, tf.errors.OpError):
        return None
    expected = retriever.embed_users(retriever.user_ids[:1])
    if probe.shape != expected.shape or not np.allclose(probe, expected, rtol=1e-5, atol=1e-6):
        return None
    return function


def _user_table(retriever: Retriever, function: Any | None, max_bytes: int) -> np.ndarray | None:
    """``[num_users, D]`` float32 the tower's embedding of every user index, in batches of
    ``retriever.batch_size`` (as ``Retriever.recommend`` embeds them), or ``None`` if the
    artifact has no tower or the table would take more than ``max_bytes``."""
    num_users = retriever.num_users if retriever.user_ids is not None else 0
    if retriever.query_model is None or not num_users:
        return None
    size = num_users * retriever.embedding_dim * 4
    if size > max_bytes:
        if max_bytes:
            logger.info("user table of %d bytes > the %d byte limit: the tower runs per batch",
                        size, max_bytes)  # fmt: skip
        return None
    table = np.empty((num_users, retriever.embedding_dim), np.float32)
    step = retriever.batch_size
    for start in range(0, num_users, step):
        users = np.arange(start, min(start + step, num_users), dtype=np.int64)
        if function is None:
            table[users] = retriever.embed_users(retriever.user_ids[users])
        else:
            table[users] = np.asarray(function(tf.constant(users, tf.int64)), np.float32)
    table.setflags(write=False)
    return table


@dataclasses.dataclass(frozen=True)
class ReloadOutcome:
    """What the last reload did (``GET /readyz`` shows it)."""

    ok: bool
    at: float
    message: str


def load_artifact(
    path: str | os.PathLike,
    *,
    generation: int,
    verify_checksums: bool = True,
    user_table_bytes: int = USER_TABLE_BYTES,
):
    """Loads and checks ``path`` and warms it up; returns a :class:`LoadedArtifact`.

    Besides ``Retriever.load``'s checks (every file's checksum, counts, dimensions, the query
    tower embedding user index 0), this runs one search through the index and, for IVF
    indexes, builds the direct map that ``similar-items`` needs to read item vectors, and
    embeds every user if the table fits in ``user_table_bytes``, so that the first requests
    after a swap pay no set-up cost.

    Raises:
        ArtifactError: naming the part at fault (``error.part``).
    """
    retriever = Retriever.load(path, verify_checksums=verify_checksums)
    ivf = faiss.try_extract_index_ivf(retriever.index)
    if ivf is not None and retriever.index.ntotal:
        try:
            retriever.index.reconstruct(0)
        except RuntimeError:
            ivf.make_direct_map()
    try:
        probe = retriever.index.reconstruct_batch(np.zeros(1, np.int64))
        retriever.search(probe, k=1)
    except (RuntimeError, ValueError) as e:
        raise ArtifactError(
            f"The artifact at {retriever.path} loads but its index cannot be searched: {e}",
            path=retriever.path,
            part="index.faiss",
        ) from e
    return LoadedArtifact.of(retriever, generation, user_table_bytes=user_table_bytes)


class ArtifactHolder:
    """Holds the served artifact; reloads it without stopping service.

    Args:
        path: the artifact folder (or a symlink to it), loaded now.
        verify_checksums: compare every file's sha256 with the manifest on each load.
        user_table_bytes: embed every user at load when the table fits in this many bytes
            (:attr:`LoadedArtifact.user_table`; 0: run the tower per batch).

    Raises:
        ArtifactError: if the first load fails (there is nothing to serve).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        verify_checksums: bool = True,
        user_table_bytes: int = USER_TABLE_BYTES,
    ):
        self.path = Path(path)
        self.verify_checksums = verify_checksums
        self.user_table_bytes = user_table_bytes
        self._reload_lock = threading.Lock()
        self._current = self._load(generation=1)
        self.last_reload: ReloadOutcome | None = None
        self.reloads = 0
        logger.info("serving %s (generation 1)", self._current.retriever)

    @classmethod
    def from_retriever(
        cls, retriever: Retriever, *, user_table_bytes: int = USER_TABLE_BYTES
    ) -> ArtifactHolder:
        """A holder serving an already loaded retriever (reloads read ``retriever.path``)."""
        holder = cls.__new__(cls)
        holder.path = Path(retriever.path)
        holder.verify_checksums = True
        holder.user_table_bytes = user_table_bytes
        holder._reload_lock = threading.Lock()
        holder._current = LoadedArtifact.of(retriever, 1, user_table_bytes=user_table_bytes)
        holder.last_reload = None
        holder.reloads = 0
        return holder

    def _load(self, *, generation: int) -> LoadedArtifact:
        return load_artifact(
            self.path.resolve(),
            generation=generation,
            verify_checksums=self.verify_checksums,
            user_table_bytes=self.user_table_bytes,
        )

    @property
    def current(self) -> LoadedArtifact:
        """The artifact new requests use (one attribute read: atomic)."""
        return self._current

    @property
    def reloading(self) -> bool:
        return self._reload_lock.locked()

    def reload(self) -> LoadedArtifact:
        """Loads ``self.path`` again, checks it, and swaps it in; blocks until done.

        Returns:
            The new :class:`LoadedArtifact`.

        Raises:
            ReloadInProgressError: if another reload is running.
            ReloadRefusedError: if the folder fails a check (any error while loading); the old
                artifact keeps serving.
        """
        if not self._reload_lock.acquire(blocking=False):
            raise ReloadInProgressError("A reload is already in progress; try again when it ends.")
        try:
            generation = self._current.generation + 1
            started = time.perf_counter()
            try:  # a symlink is followed once, so a flip during the load cannot mix two folders
                loaded = self._load(generation=generation)
            except Exception as e:  # noqa: BLE001 - whatever fails, the old artifact stays
                self.last_reload = ReloadOutcome(False, time.time(), f"refused: {e}")
                logger.error(
                    "reload of %s refused, still serving generation %d: %s",
                    self.path,
                    self._current.generation,
                    e,
                )
                raise ReloadRefusedError(str(e), getattr(e, "part", None)) from e
            self._current = loaded
            self.reloads += 1
            seconds = time.perf_counter() - started
            self.last_reload = ReloadOutcome(
                True, time.time(), f"generation {generation} loaded in {seconds:.2f} s"
            )
            logger.info("reloaded %s as generation %d in %.2f s", self.path, generation, seconds)
            return loaded
        finally:
            self._reload_lock.release()

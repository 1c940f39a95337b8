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
    >>> holder = ArtifactHolder("artifacts/movielens")  # doctest: +SKIP
    >>> holder.current.generation  # doctest: +SKIP
    1
    >>> holder.reload().generation  # doctest: +SKIP
    2
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path

import faiss
import numpy as np

from recsampled.index import ArtifactError, Retriever

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


@dataclasses.dataclass(frozen=True)
class LoadedArtifact:
    """One loaded, checked artifact and the lookups the service derives from it.

    Attributes:
        retriever: the :class:`~recsampled.index.Retriever` over the folder.
        generation: 1 for the first artifact, incremented by every successful reload.
        loaded_at: Unix time of the swap.
        popular_rows: ``[num_items]`` index rows by decreasing popularity (stable), if the
            artifact has item popularity.
    """

    retriever: Retriever
    generation: int
    loaded_at: float
    popular_rows: np.ndarray | None

    @property
    def tag(self) -> str:
        """``"<generation>:<first 16 hex digits of the embeddings' sha256>"``."""
        return f"{self.generation}:{self.retriever.manifest.embeddings_sha256[:16]}"


@dataclasses.dataclass(frozen=True)
class ReloadOutcome:
    """What the last reload did (``GET /readyz`` shows it)."""

    ok: bool
    at: float
    message: str


def load_artifact(path: str | os.PathLike, *, generation: int, verify_checksums: bool = True):
    """Loads and checks ``path`` and warms it up; returns a :class:`LoadedArtifact`.

    Besides ``Retriever.load``'s checks (every file's checksum, counts, dimensions, the query
    tower embedding user index 0), this runs one search through the index and, for IVF
    indexes, builds the direct map that ``similar-items`` needs to read item vectors, so that
    the first requests after a swap pay no set-up cost.

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
    popular = None
    if retriever.item_popularity is not None:
        popular = np.argsort(-retriever.item_popularity, kind="stable")
    return LoadedArtifact(retriever, generation, time.time(), popular)


class ArtifactHolder:
    """Holds the served artifact; reloads it without stopping service.

    Args:
        path: the artifact folder (or a symlink to it), loaded now.
        verify_checksums: compare every file's sha256 with the manifest on each load.

    Raises:
        ArtifactError: if the first load fails (there is nothing to serve).
    """

    def __init__(self, path: str | os.PathLike, *, verify_checksums: bool = True):
        self.path = Path(path)
        self.verify_checksums = verify_checksums
        self._reload_lock = threading.Lock()
        self._current = load_artifact(
            self.path.resolve(), generation=1, verify_checksums=verify_checksums
        )
        self.last_reload: ReloadOutcome | None = None
        self.reloads = 0
        logger.info("serving %s (generation 1)", self._current.retriever)

    @classmethod
    def from_retriever(cls, retriever: Retriever) -> ArtifactHolder:
        """A holder serving an already loaded retriever (reloads read ``retriever.path``)."""
        holder = cls.__new__(cls)
        holder.path = Path(retriever.path)
        holder.verify_checksums = True
        holder._reload_lock = threading.Lock()
        popular = None
        if retriever.item_popularity is not None:
            popular = np.argsort(-retriever.item_popularity, kind="stable")
        holder._current = LoadedArtifact(retriever, 1, time.time(), popular)
        holder.last_reload = None
        holder.reloads = 0
        return holder

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
                loaded = load_artifact(
                    self.path.resolve(),
                    generation=generation,
                    verify_checksums=self.verify_checksums,
                )
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

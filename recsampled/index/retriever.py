"""Serving: load an artifact folder and return top-k original item ids for users or items.

``recommend`` embeds users with the saved query tower and searches the FAISS index.
``exclude_seen`` asks the index for ``k + w`` rows, where ``w`` is the user's number of seen
items rounded up to a power of two (:mod:`recsampled.index.served`: users are grouped by ``w``, so
a user's list never depends on who else is in the request, and export tunes on exactly these
lists), drops the seen rows and keeps the first ``k``; with exact search this is exactly the top k
of the unseen items. An approximate index may return fewer than ``k`` rows: the missing entries
have row ``-1``, score ``-inf``, and :meth:`Recommendations.to_frame` leaves them out. ``k`` may
not exceed the catalogue (an error, not a huge allocation).

:meth:`Retriever.load` reads nothing it has not checked: the signature with a key, the parts'
file types and sizes and checksums (:mod:`recsampled.index.integrity`), the query model's graph
(:func:`recsampled.models.saved.check_saved_model`, unless ``trusted=True``) before TensorFlow
loads it, and every part's structure (:mod:`recsampled.index.checks`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import pandas as pd
import tensorflow as tf
from scipy import sparse

from recsampled._validation import check_positive_int, received
from recsampled.errors import RecsampledError, UnknownItemError, UnknownUserError
from recsampled.index import artifact, checks, served
from recsampled.index import query_model as serving_model
from recsampled.index.artifact import (
    ITEM_IDS_FILE,
    ITEM_TITLES_FILE,
    POPULARITY_FILE,
    QUERY_MODEL_DIR,
    QUERY_MODEL_VERSION,
    SEEN_FILE,
    USER_IDS_FILE,
    ArtifactError,
    Manifest,
    mismatch,
)
from recsampled.index.build import prepare_vectors, set_search_params
from recsampled.index.shards import ShardedIndex, reconstruct_rows
from recsampled.models import embed_ids
from recsampled.models.saved import UnsafeModelError, check_saved_model

UnknownUserPolicy = Literal["error", "popular"]


@dataclasses.dataclass(frozen=True)
class Recommendations:
    """Top-k items per query, best first.

    Attributes:
        queries: ``[batch_size]`` the user ids (or item ids) asked for.
        ids: ``[batch_size, k]`` original item ids (``-1`` or ``""`` where ``rows`` is ``-1``).
        scores: ``[batch_size, k]`` float32 scores in the artifact's metric (popularity counts
            for fallback rows; ``-inf`` where there is no item).
        rows: ``[batch_size, k]`` int64 index rows (``-1`` where there is no item).
        fallback: ``[batch_size]`` bool, true where popular items stand in for an unknown user.
        query_column: name of the query column in :meth:`to_frame` (``"user"`` or ``"item"``).
        titles: ``[batch_size, k]`` item titles (``""`` where unknown or no item), if the
            artifact has them.
    """

    queries: np.ndarray
    ids: np.ndarray
    scores: np.ndarray
    rows: np.ndarray
    fallback: np.ndarray
    query_column: str = "user"
    titles: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.queries)

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per (query, rank) with an item; ranks start at 1.

        Returns:
            A DataFrame with columns ``[query_column, "rank", "item", "score", "fallback"]``
            (``"similar_item"`` instead of ``"item"`` when the queries are items), and
            ``"title"`` when the artifact has titles.
        """
        batch, k = self.rows.shape
        keep = (self.rows >= 0).ravel()
        item_column = "similar_item" if self.query_column == "item" else "item"
        columns = {
            self.query_column: np.repeat(self.queries, k)[keep],
            "rank": np.tile(np.arange(1, k + 1), batch)[keep],
            item_column: self.ids.ravel()[keep],
            "score": self.scores.ravel()[keep],
            "fallback": np.repeat(self.fallback, k)[keep],
        }
        if self.titles is not None:
            columns["title"] = self.titles.ravel()[keep]
        return pd.DataFrame(columns)


class TooManyItemsError(RecsampledError):
    """``k`` larger than the artifact's catalogue."""


def _check_k(k: object, num_items: int | None = None) -> int:
    k = check_positive_int("k", k)
    if num_items is not None and k > num_items:
        raise TooManyItemsError(
            f"`k` must be at most the number of items in the catalogue ({num_items}). "
            f"Received: k={k}."
        )
    return k


def _as_queries(values: object, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1:
        raise ValueError(
            f"`{name}` must be an id or a 1-D sequence of ids. "
            f"Received: {name} with shape {array.shape}."
        )
    return array


class Retriever:
    """Top-k retrieval over an exported artifact (see :func:`export_artifact`).

    Build it with :meth:`load`; the constructor takes the loaded parts.

    Example:
        >>> import tempfile
        >>> from recsampled.index import export_artifact
        >>> rng = np.random.default_rng(0)
        >>> tower = tf.keras.Sequential([tf.keras.layers.Embedding(3, 4)])
        >>> path = tempfile.mkdtemp() + "/artifact"
        >>> _ = export_artifact(path, item_embeddings=rng.normal(size=(20, 4)),
        ...                     item_ids=np.arange(100, 120), query_model=tower,
        ...                     user_ids=[196, 186, 22], seen=[[0, 1], [], [5]], index="flat")
        >>> retriever = Retriever.load(path)
        >>> top = retriever.recommend([196, 186], k=10)
        >>> top.ids.shape, top.to_frame().columns.tolist()
        ((2, 10), ['user', 'rank', 'item', 'score', 'fallback'])
        >>> bool(np.isin([100, 101], top.ids[0]).any())  # user 196 has seen items 100 and 101
        False
    """

    def __init__(
        self,
        *,
        path: Path,
        manifest: Manifest,
        index: faiss.Index,
        item_ids: np.ndarray,
        user_ids: np.ndarray | None = None,
        query_model: Any | None = None,
        seen: sparse.spmatrix | tuple[np.ndarray, np.ndarray] | None = None,
        item_popularity: np.ndarray | None = None,
        item_titles: np.ndarray | None = None,
        unknown_user: UnknownUserPolicy = "error",
        batch_size: int = 1024,
    ):
        if unknown_user not in ("error", "popular"):
            raise ValueError(
                "`unknown_user` must be 'error' or 'popular'. "
                f"{received('unknown_user', unknown_user)}"
            )
        if unknown_user == "popular" and item_popularity is None:
            raise ValueError(
                f"`unknown_user='popular'` needs item popularity, but the artifact at {path} has "
                "none; export it with `item_popularity=...` or use unknown_user='error'."
            )
        self.path = path
        self.manifest = manifest
        self.index = index
        self.item_ids = item_ids
        self.user_ids = user_ids
        self.query_model = query_model
        self.user_items = _as_user_items(seen, len(user_ids) if user_ids is not None else 0,
                                         len(item_ids))  # fmt: skip
        self.item_popularity = item_popularity
        self.item_titles = item_titles
        self.unknown_user = unknown_user
        self.batch_size = check_positive_int("batch_size", batch_size)
        self._users = pd.Index(user_ids) if user_ids is not None else None
        self._items = pd.Index(item_ids)
        self._popular_rows = (
            np.argsort(-item_popularity, kind="stable") if item_popularity is not None else None
        )

    # -- loading --------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        unknown_user: UnknownUserPolicy = "error",
        verify_checksums: bool = True,
        batch_size: int = 1024,
        key: bytes | str | None = None,
        trusted: bool = False,
    ) -> Retriever:
        """Loads an artifact folder and checks that its parts are present and agree.

        Args:
            path: the artifact folder.
            unknown_user: ``"error"`` (raise :class:`UnknownUserError`) or ``"popular"`` (return
                the most popular items for users outside the vocabulary).
            verify_checksums: compare every file's sha256 with the manifest.
            batch_size: users embedded and searched per step.
            key: the signing key (at least 16 bytes; default: ``$RECSAMPLED_ARTIFACT_KEY`` if
                set): ``manifest.sig`` must match before anything else is read.
            trusted: load the query model without inspecting its graph (only for artifacts you
                trust: any op in it runs).

        Returns:
            A :class:`Retriever`.

        Raises:
            ArtifactNotFoundError: if the folder or a part is missing (``error.part`` names it).
            ArtifactError: if a part is corrupt or disagrees with the manifest or another part,
                is not a regular file, or (with a key) the signature is missing or differs;
                :class:`UnsafeArtifactError` if the query model holds an op that is not a pure
                tensor op.
        """
        path = Path(path).absolute()
        manifest = artifact.read_manifest(path, key=key)
        artifact.check_files(path, manifest, verify_checksums=verify_checksums)
        files = manifest.files
        user_ids = None
        if USER_IDS_FILE in files:
            user_ids = _ids_part(path, USER_IDS_FILE, manifest.num_users, "num_users", manifest)
        return cls(
            path=path,
            manifest=manifest,
            index=_load_index(path, manifest),
            item_ids=_ids_part(path, ITEM_IDS_FILE, manifest.num_items, "num_items", manifest),
            user_ids=user_ids,
            query_model=(
                _load_query_model(path, manifest, user_ids, trusted=trusted)
                if QUERY_MODEL_DIR in files
                else None
            ),
            seen=_load_seen(path, manifest) if SEEN_FILE in files else None,
            item_popularity=_load_popularity(path, manifest) if POPULARITY_FILE in files else None,
            item_titles=_load_titles(path, manifest) if ITEM_TITLES_FILE in files else None,
            unknown_user=unknown_user,
            batch_size=batch_size,
        )

    # -- properties -------------------------------------------------------------------------

    @property
    def seen(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The seen items as CSR ``(indptr [num_users + 1], item rows)`` (None without them);
        :attr:`user_items` is the same as a ``scipy.sparse.csr_matrix``."""
        if self.user_items is None:
            return None
        return self.user_items.indptr, self.user_items.indices

    @property
    def num_items(self) -> int:
        return self.manifest.num_items

    @property
    def num_users(self) -> int:
        return self.manifest.num_users

    @property
    def embedding_dim(self) -> int:
        return self.manifest.embedding_dim

    @property
    def metric(self) -> str:
        return self.manifest.metric

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"Retriever({str(self.path)!r}, num_items={m.num_items}, num_users={m.num_users}, "
            f"embedding_dim={m.embedding_dim}, metric={m.metric!r}, index={m.index.factory!r}, "
            f"recall@{m.recall.k}={m.recall.value:.4f})"
        )

    # -- lookups ---------------------------------------------------------------------------

    def user_indices(self, user_ids: object) -> np.ndarray:
        """``[batch_size]`` user indices of original ids (``-1`` for unknown users)."""
        if self._users is None:
            raise ValueError(
                f"The artifact at {self.path} has no user vocabulary; export it with `user_ids`."
            )
        return self._users.get_indexer(_as_queries(user_ids, "user_ids"))

    def parse_user_ids(self, texts: Sequence[str]) -> np.ndarray:
        """User ids typed as text (a command line) in the vocabulary's type: integers for an
        integer vocabulary (text that is not an integer stays text, and is unknown)."""
        values = [str(t).strip() for t in texts]
        if self.user_ids is not None and np.issubdtype(self.user_ids.dtype, np.integer):
            parsed: list[object] = [
                int(v) if v.lstrip("-").isdigit() and len(v) < 19 else v for v in values
            ]
            return np.array(
                parsed, dtype=object if any(isinstance(v, str) for v in parsed) else np.int64
            )
        return np.array(values, dtype=object)

    def item_rows(self, item_ids: object) -> np.ndarray:
        """``[batch_size]`` index rows of original item ids.

        Raises:
            UnknownItemError: naming the ids that are not in the catalogue.
        """
        item_ids = _as_queries(item_ids, "item_ids")
        rows = self._items.get_indexer(item_ids)
        if (rows < 0).any():
            unknown = item_ids[rows < 0]
            raise UnknownItemError(
                f"Item id {_show(unknown[0])} is not in the artifact's catalogue "
                f"({self.num_items} items; {len(unknown)} unknown in this request: "
                f"{unknown[:5].tolist()}).",
                unknown.tolist(),
            )
        return rows.astype(np.int64)

    def item_vectors(self, rows: object) -> np.ndarray:
        """``[n, embedding_dim]`` float32 item vectors as stored in the index (normalised for
        cosine), for ``[n]`` index rows; works for IVF (a direct map is made on first use) and
        for sharded indexes.

        Raises:
            ValueError: for rows outside ``[0, num_items)``.
        """
        rows = np.asarray(rows)
        if rows.ndim != 1 or not (rows.size == 0 or np.issubdtype(rows.dtype, np.integer)):
            raise ValueError(
                f"`rows` must be a 1-D array of integer index rows. {received('rows', rows)}"
            )
        if len(rows) and (rows.min() < 0 or rows.max() >= self.num_items):
            raise ValueError(
                f"`rows` must lie in [0, num_items={self.num_items}). "
                f"Received: rows in [{rows.min()}, {rows.max()}]."
            )
        return np.asarray(reconstruct_rows(self.index, rows.astype(np.int64)), np.float32)

    def embed_users(self, user_ids: object) -> np.ndarray:
        """``[batch_size, embedding_dim]`` query embeddings of known users (query tower).

        Raises:
            UnknownUserError: if a user is not in the vocabulary.
        """
        user_ids = _as_queries(user_ids, "user_ids")
        indices = self.user_indices(user_ids)
        self._raise_unknown(user_ids, indices)
        return self._embed(indices)

    # -- retrieval -------------------------------------------------------------------------

    def search(self, query_embeddings: object, k: int = 10) -> Recommendations:
        """Top-k items for raw query embeddings (no exclusion).

        Args:
            query_embeddings: ``[batch_size, embedding_dim]`` float queries (normalised here for
                cosine).
            k: items per query.

        Returns:
            :class:`Recommendations` whose ``queries`` are ``0 .. batch_size - 1``.
        """
        k = _check_k(k, self.num_items)
        queries = self._prepare(query_embeddings)
        rows = np.full((len(queries), k), -1, np.int64)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        for start in range(0, len(queries), self.batch_size):
            part = slice(start, start + self.batch_size)
            s, r = self._search_excluding(queries[part], k, None)
            scores[part], rows[part] = s, r
        return self._result(np.arange(len(queries)), scores, rows, None, "query")

    def recommend(
        self, user_ids: object, k: int = 10, *, exclude_seen: bool = True
    ) -> Recommendations:
        """Top-k original item ids for each user, optionally without the items they have seen.

        Args:
            user_ids: an original user id or a ``[batch_size]`` sequence of them.
            k: items per user.
            exclude_seen: leave out the items recorded as seen at export (needs ``seen``).

        Returns:
            :class:`Recommendations` with ``[batch_size, k]`` ids and scores.

        Raises:
            UnknownUserError: for users outside the vocabulary, unless the retriever was loaded
                with ``unknown_user="popular"``.
            ValueError: if the artifact has no query tower, or ``exclude_seen`` without ``seen``.
        """
        k = _check_k(k)
        if self.query_model is None:
            raise ValueError(
                f"The artifact at {self.path} has no query tower, so it cannot embed users; "
                "export it with `query_model=...`, or call `search(query_embeddings)`."
            )
        if exclude_seen and self.seen is None:
            raise ValueError(
                f"`exclude_seen=True` needs the seen items, but the artifact at {self.path} has "
                "none; export it with `seen=...` or pass exclude_seen=False."
            )
        k = _check_k(k, self.num_items)
        user_ids = _as_queries(user_ids, "user_ids")
        indices = self.user_indices(user_ids)
        if self.unknown_user == "error":
            self._raise_unknown(user_ids, indices)
        batch = len(user_ids)
        rows = np.full((batch, k), -1, np.int64)
        scores = np.full((batch, k), -np.inf, np.float32)
        known = np.flatnonzero(indices >= 0)
        counts = np.zeros(len(known), np.int64)
        if exclude_seen:  # users fetching the same k + w rows share a batch (served.py)
            indptr = self.seen[0]
            counts = indptr[indices[known] + 1] - indptr[indices[known]]
        for group in served.groups(counts, self.batch_size):
            positions = known[group]
            users = indices[positions]
            queries = self._prepare(self._embed(users))
            s, r = self._search_excluding(queries, k, users if exclude_seen else None)
            scores[positions], rows[positions] = s, r
        fallback = indices < 0
        if fallback.any():
            top = self._popular_rows[:k]
            rows[fallback, : len(top)] = top
            scores[fallback, : len(top)] = self.item_popularity[top].astype(np.float32)
        return self._result(user_ids, scores, rows, fallback, "user")

    def similar_items(self, item_ids: object, k: int = 10) -> Recommendations:
        """Top-k other items for each item, by the index's score between item embeddings.

        Args:
            item_ids: an original item id or a ``[batch_size]`` sequence of them.
            k: similar items per item (the item itself is left out).

        Returns:
            :class:`Recommendations` with ``query_column="item"``.

        Raises:
            UnknownItemError: for ids outside the catalogue.
        """
        k = _check_k(k, self.num_items)
        item_ids = _as_queries(item_ids, "item_ids")
        own = self.item_rows(item_ids)
        batch = len(own)
        rows = np.full((batch, k), -1, np.int64)
        scores = np.full((batch, k), -np.inf, np.float32)
        for start in range(0, batch, self.batch_size):
            part = slice(start, start + self.batch_size)
            vectors = self._reconstruct(own[part])
            exclude = (np.arange(len(vectors)) + 1, own[part])  # one excluded row per query
            s, r = self._search_excluding(vectors, k, None, exclude_rows=exclude)
            scores[part], rows[part] = s, r
        return self._result(item_ids, scores, rows, np.zeros(batch, bool), "item")

    def popular_items(self, k: int = 10) -> np.ndarray:
        """``[k]`` original ids of the most popular items (needs ``item_popularity``)."""
        k = _check_k(k, self.num_items)
        if self._popular_rows is None:
            raise ValueError(f"The artifact at {self.path} has no item popularity.")
        return self.item_ids[self._popular_rows[:k]]

    # -- internals -------------------------------------------------------------------------

    def _raise_unknown(self, user_ids: np.ndarray, indices: np.ndarray) -> None:
        if (indices >= 0).all():
            return
        unknown = user_ids[indices < 0]
        raise UnknownUserError(
            f"User id {_show(unknown[0])} is not in the artifact's user vocabulary "
            f"({self.num_users} users; {len(unknown)} unknown in this request: "
            f"{unknown[:5].tolist()}). Load the retriever with unknown_user='popular' to get "
            "popular items for unknown users.",
            unknown.tolist(),
        )

    def _embed(self, indices: np.ndarray) -> np.ndarray:
        return embed_ids(self.query_model, indices, batch_size=self.batch_size)

    def _prepare(self, queries: object) -> np.ndarray:
        array = prepare_vectors(queries, self.metric, name="query_embeddings")  # type: ignore[arg-type]
        if array.shape[1] != self.embedding_dim:
            raise ValueError(
                f"`query_embeddings` must have embedding_dim={self.embedding_dim} columns. "
                f"Received: shape {array.shape}."
            )
        return array

    def _search_excluding(
        self,
        queries: np.ndarray,
        k: int,
        users: np.ndarray | None,
        *,
        exclude_rows: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Searches ``k + extra`` rows and keeps the first ``k`` not excluded.

        Exclusions are CSR-like: ``(indptr-ends, rows)`` built from the seen matrix for
        ``users``, or given directly as ``(ends, rows)`` by ``similar_items``.
        """
        batch = len(queries)
        if users is not None:
            lengths, excluded = served.csr_rows(*self.seen, users)
        elif exclude_rows is not None:
            ends, excluded = exclude_rows
            lengths = np.diff(np.concatenate([[0], ends]))
        else:
            lengths = np.zeros(batch, np.int64)
            excluded = np.zeros(0, np.int64)
        return served.search_excluding(
            self.index, queries, k, lengths=lengths, excluded=excluded, exact=self._exact_index
        )

    def _exact_index(self) -> faiss.Index:
        """An exact inner-product index over the stored vectors (built on first use)."""
        if getattr(self, "_exact", None) is None:
            self._exact = served.exact_index_of(self.index)
        return self._exact

    def _reconstruct(self, rows: np.ndarray) -> np.ndarray:
        return reconstruct_rows(self.index, rows)

    def _result(
        self,
        queries: np.ndarray,
        scores: np.ndarray,
        rows: np.ndarray,
        fallback: np.ndarray | None,
        column: str,
    ) -> Recommendations:
        fill = -1 if np.issubdtype(self.item_ids.dtype, np.integer) else ""
        ids = np.where(rows >= 0, self.item_ids[np.maximum(rows, 0)], fill)
        if ids.dtype.kind == "U":
            ids = ids.astype(object)
        if fallback is None:
            fallback = np.zeros(len(queries), bool)
        titles = None
        if self.item_titles is not None:
            titles = np.where(rows >= 0, self.item_titles[np.maximum(rows, 0)], "").astype(object)
        return Recommendations(queries, ids, scores, rows, fallback, column, titles)


def _as_user_items(
    seen: sparse.spmatrix | tuple[np.ndarray, np.ndarray] | None, num_users: int, num_items: int
) -> sparse.csr_matrix | None:
    """The seen items as a CSR matrix with int64 ``indptr`` and ``indices``."""
    if seen is None:
        return None
    if sparse.issparse(seen):
        matrix = seen.tocsr()
        indptr, indices = matrix.indptr, matrix.indices
    else:
        indptr, indices = seen
    data = np.ones(len(indices), np.int8)
    return sparse.csr_matrix(
        (data, np.asarray(indices, np.int64), np.asarray(indptr, np.int64)),
        shape=(num_users, num_items),
    )


def _show(value: object) -> str:
    """``repr`` of an id without NumPy's scalar wrapper (``77``, not ``np.int64(77)``)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _ids_part(path: Path, part: str, expected: int, field: str, manifest: Manifest) -> np.ndarray:
    ids = artifact.load_npy(path, part)
    dtype = manifest.id_dtypes.get(part)
    if part == USER_IDS_FILE and manifest.query_model:
        dtype = dtype or manifest.query_model.get("user_id_dtype")
    checks.check_ids(path, part, ids, expected=expected, field=field, dtype=dtype)
    return ids


class UnsafeArtifactError(ArtifactError):
    """An artifact whose query model holds an op outside the allowlist (nothing of it ran).

    Attributes:
        op: the refused op (None when the graph file itself was refused).
    """

    def __init__(self, message: str, *, path: Path, part: str, op: str | None):
        super().__init__(message, path=path, part=part)
        self.op = op


def _load_query_model(
    path: Path, manifest: Manifest, user_ids: np.ndarray | None, *, trusted: bool = False
) -> Any:
    """``query_model/1/`` (``query_model/`` in version 1 artifacts), checked: its graph holds only
    allowed ops (unless ``trusted``), user index 0 has the manifest's dimension, and the id
    signature maps every user id to its index and the first and last to their embeddings."""
    folder = path / QUERY_MODEL_DIR
    versioned = (folder / QUERY_MODEL_VERSION).is_dir()
    if manifest.query_model and not versioned:
        raise ArtifactError(
            f"The artifact at {path} has no query model version folder "
            f"{QUERY_MODEL_DIR}/{QUERY_MODEL_VERSION}/ (manifest.json lists one).",
            path=path,
            part=QUERY_MODEL_DIR,
        )
    model_dir = folder / QUERY_MODEL_VERSION if versioned else folder
    if not trusted:
        try:
            check_saved_model(model_dir)
        except UnsafeModelError as e:
            raise UnsafeArtifactError(
                f"The artifact at {path} has a query model that recsampled will not run: {e}",
                path=path,
                part=QUERY_MODEL_DIR,
                op=e.op,
            ) from e
    try:
        model = tf.saved_model.load(str(model_dir))
    except Exception as e:  # noqa: BLE001  (TensorFlow raises many kinds for a bad SavedModel)
        raise ArtifactError(
            f"The artifact at {path} has an unreadable query tower ({QUERY_MODEL_DIR}): {e}",
            path=path,
            part=QUERY_MODEL_DIR,
        ) from e
    if manifest.num_users:
        try:
            probe = np.asarray(model(tf.constant([0], tf.int64)))
        except (TypeError, ValueError, tf.errors.OpError) as e:
            raise ArtifactError(
                f"The query tower of the artifact at {path} cannot embed user index 0: {e}",
                path=path,
                part=QUERY_MODEL_DIR,
            ) from e
        if probe.shape != (1, manifest.embedding_dim):
            raise mismatch(
                path,
                QUERY_MODEL_DIR,
                f"the query tower outputs shape {probe.shape} "
                f"for one user, but manifest.json says embedding_dim="
                f"{manifest.embedding_dim}.",
            )
        if versioned and user_ids is not None:
            _check_id_signature(path, model, user_ids, manifest.embedding_dim)
    return model


def _check_id_signature(path: Path, model: Any, user_ids: np.ndarray, dim: int) -> None:
    """The ``serving_default`` signature gives the first and last users their index embeddings
    and marks an id outside the vocabulary unknown with a zero vector."""
    probe = np.array([0, len(user_ids) - 1], np.int64)
    ids = user_ids[probe]
    unknown = "\x00unknown" if ids.dtype.kind == "U" else int(np.max(user_ids)) + 1
    try:
        signature = model.signatures[serving_model.SERVING_SIGNATURE]
        dtype = serving_model.id_dtype(user_ids)
        out = signature(user_ids=tf.constant([*ids.tolist(), unknown], dtype))
        embeddings, known = np.asarray(out["embeddings"]), np.asarray(out["known"])
        indices = np.asarray(out["user_indices"])
        expected = np.asarray(model(tf.constant(probe)))
    except (KeyError, TypeError, ValueError, tf.errors.OpError) as e:
        raise ArtifactError(
            f"The query model of the artifact at {path} cannot map user ids "
            f"({serving_model.SERVING_SIGNATURE!r} signature): {e}",
            path=path,
            part=QUERY_MODEL_DIR,
        ) from e
    if (
        embeddings.shape != (3, dim)
        or known.tolist() != [True, True, False]
        or indices.tolist() != [*probe.tolist(), -1]
        or not np.allclose(embeddings[:2], expected, rtol=1e-5, atol=1e-6)
        or np.any(embeddings[2])
    ):
        raise mismatch(
            path,
            QUERY_MODEL_DIR,
            f"the query model's {serving_model.SERVING_SIGNATURE!r} signature does not map the "
            f"users of {USER_IDS_FILE} to their index embeddings (first/last user, unknown id).",
        )
    checks.check_user_map(path, signature, user_ids, dtype)


def _load_index(path: Path, manifest: Manifest) -> faiss.Index:
    """``index.faiss`` (or its shards, as one :class:`ShardedIndex`), checked against the
    manifest, its search parameters applied."""
    if not manifest.index.shards:
        return _read_index(path, artifact.INDEX_FILE, manifest.num_items, manifest)
    shards = [
        _read_index(path, shard["file"], shard["num_items"], manifest)
        for shard in manifest.index.shards
    ]
    return ShardedIndex(shards)


def _read_index(path: Path, part: str, n: int, manifest: Manifest) -> faiss.Index:
    """One index file holding ``n`` vectors of the manifest's dimension, inner product."""
    dim = manifest.embedding_dim
    try:
        index = faiss.read_index(str(path / part))
    except RuntimeError as e:
        raise ArtifactError(
            f"The artifact at {path} has a corrupt FAISS index ({part}): {e}",
            path=path,
            part=part,
        ) from e
    if index.d != dim:
        raise mismatch(
            path,
            part,
            f"{part} has dimension {index.d}, but manifest.json says embedding_dim={dim}.",
        )
    if index.ntotal != n:
        where = "num_items" if part == artifact.INDEX_FILE else f"{part} holds num_items"
        raise mismatch(
            path, part, f"{part} holds {index.ntotal} vectors, but manifest.json says {where}={n}."
        )
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise mismatch(path, part, f"{part} does not use the inner product.")
    params = manifest.index.search_params
    checks.check_search_params(path, part, index, manifest.index.type, params)
    checks.check_metric(path, part, index, manifest, whole=n == manifest.num_items)
    try:
        set_search_params(index, manifest.index.search_params)
    except ValueError as e:
        raise mismatch(path, part, str(e)) from e
    return index


def _load_seen(path: Path, manifest: Manifest) -> sparse.csr_matrix:
    """``seen.npz`` as a ``[num_users, num_items]`` CSR matrix, checked against the manifest."""
    indptr, indices = artifact.load_csr(path, SEEN_FILE)
    users, n = manifest.num_users, manifest.num_items
    checks.check_csr(
        path, indptr, indices, num_users=users, num_items=n, sorted_rows=bool(manifest.sizes)
    )
    data = np.ones(len(indices), np.int8)
    return sparse.csr_matrix(
        (data, indices.astype(np.int64), indptr.astype(np.int64)), shape=(users, n)
    )


def _load_popularity(path: Path, manifest: Manifest) -> np.ndarray:
    popularity = artifact.load_npy(path, POPULARITY_FILE)
    checks.check_popularity(path, POPULARITY_FILE, popularity, manifest.num_items)
    return popularity


def _load_titles(path: Path, manifest: Manifest) -> np.ndarray:
    titles = artifact.load_npy(path, ITEM_TITLES_FILE)
    n = manifest.num_items
    if titles.shape != (n,) or titles.dtype.kind != "U":
        raise mismatch(
            path,
            ITEM_TITLES_FILE,
            f"{ITEM_TITLES_FILE} must hold {n} titles (manifest.json says num_items={n}). "
            f"Received: shape {titles.shape}, dtype {titles.dtype}.",
        )
    return titles

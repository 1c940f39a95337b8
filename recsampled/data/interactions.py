"""Interaction logs as encoded arrays, and ``read_interactions``, which builds them from a file.

Loading reads top to bottom: read and validate the columns (``readers``), keep ratings at or above
``min_rating`` (implicit feedback), encode ids, drop repeated (user, item) pairs, apply the k-core,
then number users and items by decreasing popularity (index 0 is the most frequent item; ties go
to the smaller original id), so that ``LogUniformSampler`` applies and ``item_counts`` feeds
``UnigramSampler``. Every dropped row is counted in the :class:`LoadReport`.

Memory: ids are encoded with Arrow hash tables straight from the columns read, to int32 indices;
the peak is about the raw columns plus a few int64 arrays of the row count (see
``pipelines/bench_memory.py``).
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy import sparse

from recsampled._validation import check_positive_int, received
from recsampled.data import filters
from recsampled.data._columns import IdDtype, OnBadRows, release_memory
from recsampled.data.errors import BadRow, DataError
from recsampled.data.readers import Format, RawLog, read_log, resolve_columns, resolve_format
from recsampled.data.vocab import Vocabulary


def user_item_matrix(
    user_ids: np.ndarray, item_ids: np.ndarray, num_users: int, num_items: int
) -> sparse.csr_matrix:
    """``[num_users, num_items]`` CSR matrix of ones, row ``u`` the items of ``u``'s rows.

    Items keep their log order within a row and repeated pairs stay repeated (the matrix is not
    summed into canonical form), so ``indptr[u + 1] - indptr[u]`` counts ``u``'s rows.

    Args:
        user_ids: ``[n]`` user indices in ``[0, num_users)``.
        item_ids: ``[n]`` item indices in ``[0, num_items)``.
        num_users: rows of the matrix.
        num_items: columns of the matrix.

    Example:
        >>> user_item_matrix(np.array([1, 0, 1]), np.array([2, 0, 1]), 2, 3).toarray()
        array([[1, 0, 0],
               [0, 1, 1]], dtype=int8)
    """
    user_ids, item_ids = np.asarray(user_ids), np.asarray(item_ids)
    order = np.argsort(user_ids, kind="stable")
    counts = np.bincount(user_ids, minlength=num_users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    indices = item_ids[order].astype(np.int64)
    data = np.ones(len(indices), np.int8)
    return sparse.csr_matrix((data, indices, indptr), shape=(num_users, num_items))


@dataclass(frozen=True)
class LoadReport:
    """What loading kept and dropped; ``rows_read`` is the sum of the other row counts.

    Attributes:
        source: the file as passed, or ``"<table>"``.
        format: the format it was read as.
        rows_read: data rows in the source (header excluded).
        empty_rows: rows with every field empty (blank lines).
        rows_skipped: bad rows dropped with ``on_bad_rows="skip"``.
        bad_rows: the first bad rows (line, column, value, what was expected).
        below_min_rating: rows with a rating below ``min_rating``.
        duplicates_removed: repeated (user, item) rows (the earliest is kept).
        k_core_removed: rows removed by the k-core filter.
        rows_kept: interactions loaded.
        num_users: distinct users kept.
        num_items: distinct items kept.
    """

    source: str
    format: str
    rows_read: int
    empty_rows: int
    rows_skipped: int
    bad_rows: tuple[BadRow, ...]
    below_min_rating: int
    duplicates_removed: int
    k_core_removed: int
    rows_kept: int
    num_users: int
    num_items: int

    @classmethod
    def of(cls, log: RawLog, **counts: int) -> LoadReport:
        """The report of a read ``log`` (source, format, row counts, bad rows) plus ``counts``:
        ``below_min_rating``, ``duplicates_removed``, ``k_core_removed``, ``rows_kept``,
        ``num_users``, ``num_items``."""
        return cls(
            source=log.source,
            format=log.format,
            rows_read=log.rows_read,
            empty_rows=log.empty_rows,
            rows_skipped=log.rows_skipped,
            bad_rows=log.bad_rows,
            **counts,
        )

    def summary(self) -> str:
        """A few human-readable lines: counts, then the first bad rows."""
        lines = [
            f"{self.source} ({self.format}): read {self.rows_read} rows, kept {self.rows_kept} "
            f"interactions of {self.num_users} users and {self.num_items} items.",
            f"Dropped: {self.rows_skipped} bad rows, {self.empty_rows} empty rows, "
            f"{self.below_min_rating} below min_rating, {self.duplicates_removed} duplicates, "
            f"{self.k_core_removed} by the k-core.",
        ]
        lines += [f"  {bad.describe(self.source)}" for bad in self.bad_rows]
        return "\n".join(lines)


@dataclass(frozen=True, eq=False)
class Interactions:
    """An interaction log with users and items encoded as contiguous int32 indices.

    Attributes:
        user_ids: ``[n]`` int32 user indices into ``users``.
        item_ids: ``[n]`` int32 item indices into ``items``; index 0 is the most popular item.
        users: the user vocabulary (index -> original id).
        items: the item vocabulary (index -> original id).
        timestamps: optional ``[n]`` int64 (or float64) timestamps, as in the source.
        ratings: optional ``[n]`` float32 ratings.
        weights: optional ``[n]`` float32 non-negative weights.
        report: how the log was loaded (kept by subsets, which describe their own rows only
            through their arrays); ``None`` for logs built in memory.

    Example:
        >>> log = read_interactions("u.data", min_rating=4)  # doctest: +SKIP
        >>> sampler = recsampled.UnigramSampler(log.item_counts)  # doctest: +SKIP
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    users: Vocabulary
    items: Vocabulary
    timestamps: np.ndarray | None = None
    ratings: np.ndarray | None = None
    weights: np.ndarray | None = None
    report: LoadReport | None = None

    def __post_init__(self) -> None:
        n = self.user_ids.shape[0] if getattr(self.user_ids, "ndim", 0) == 1 else -1
        for name, vocab in (("user_ids", self.users), ("item_ids", self.items)):
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.dtype != np.int32 or array.shape != (n,):
                raise ValueError(
                    f"`{name}` must be a 1-D int32 NumPy array as long as `user_ids` ({n}). "
                    f"Received: {name} of type {type(array).__name__}, "
                    f"shape {getattr(array, 'shape', None)}, dtype {getattr(array, 'dtype', None)}."
                )
            if n and (array.min() < 0 or array.max() >= len(vocab)):
                raise ValueError(
                    f"`{name}` must lie in [0, {len(vocab)}) (the vocabulary size). "
                    f"Received: values in [{array.min()}, {array.max()}]."
                )
        for name in ("timestamps", "ratings", "weights"):
            array = getattr(self, name)
            if array is not None and (not isinstance(array, np.ndarray) or array.shape != (n,)):
                raise ValueError(
                    f"`{name}` must be None or a 1-D NumPy array of length {n}. "
                    f"Received: {name} with shape {getattr(array, 'shape', None)}."
                )

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    def __repr__(self) -> str:
        return (
            f"Interactions(rows={len(self)}, num_users={self.num_users}, "
            f"num_items={self.num_items}, timestamps={self.timestamps is not None})"
        )

    @property
    def num_users(self) -> int:
        """Size of the user vocabulary."""
        return len(self.users)

    @property
    def num_items(self) -> int:
        """Size of the item vocabulary (the number of classes, N)."""
        return len(self.items)

    @property
    def item_counts(self) -> np.ndarray:
        """``[num_items]`` int64 interactions per item in these rows (for ``UnigramSampler``)."""
        return np.bincount(self.item_ids, minlength=self.num_items).astype(np.int64)

    @property
    def user_counts(self) -> np.ndarray:
        """``[num_users]`` int64 interactions per user in these rows."""
        return np.bincount(self.user_ids, minlength=self.num_users).astype(np.int64)

    def user_items(self, num_users: int | None = None) -> sparse.csr_matrix:
        """The items of each user as a ``[num_users, num_items]`` CSR matrix of ones.

        Row ``u`` lists, in log order, the items of ``u``'s rows (a repeated pair stays
        repeated: the matrix is not summed into canonical form). Metrics remove training items
        and count test items with it; an export stores it as the seen items.

        Args:
            num_users: rows of the matrix (default: the user vocabulary's size).

        Returns:
            A ``scipy.sparse.csr_matrix`` (see :func:`user_item_matrix`).

        Example:
            >>> log = read_interactions(pd.DataFrame({"user": [1, 2, 1], "item": [5, 5, 6]}),
            ...                         user_col="user", item_col="item")
            >>> log.user_items().toarray()
            array([[1, 1],
                   [1, 0]], dtype=int8)
        """
        num_users = self.num_users if num_users is None else num_users
        return user_item_matrix(self.user_ids, self.item_ids, num_users, self.num_items)

    def select(self, rows: np.ndarray) -> Interactions:
        """The interactions at ``rows`` (indices or a bool mask), with the same vocabularies."""
        optional = {
            name: None if getattr(self, name) is None else getattr(self, name)[rows]
            for name in ("timestamps", "ratings", "weights")
        }
        return dataclasses.replace(
            self, user_ids=self.user_ids[rows], item_ids=self.item_ids[rows], **optional
        )

    def to_frame(self, original_ids: bool = False) -> pd.DataFrame:
        """A DataFrame with ``user_id``, ``item_id`` and the optional columns present.

        Args:
            original_ids: if True, ``user_id`` and ``item_id`` hold original ids, else indices.
        """
        frame = {
            "user_id": self.users.decode(self.user_ids) if original_ids else self.user_ids,
            "item_id": self.items.decode(self.item_ids) if original_ids else self.item_ids,
        }
        for column, name in (
            ("timestamp", "timestamps"),
            ("rating", "ratings"),
            ("weight", "weights"),
        ):
            if getattr(self, name) is not None:
                frame[column] = getattr(self, name)
        return pd.DataFrame(frame)


def read_interactions(
    source: str | os.PathLike | pd.DataFrame | pa.Table,
    *,
    format: Format = "auto",
    user_col: str | None = None,
    item_col: str | None = None,
    timestamp_col: str | None = None,
    rating_col: str | None = None,
    weight_col: str | None = None,
    delimiter: str | None = None,
    column_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    id_dtype: IdDtype = "auto",
    min_rating: float | None = None,
    dedupe: bool = True,
    k_core: int | None = None,
    on_bad_rows: OnBadRows = "error",
) -> Interactions:
    """Reads an interaction log, validates it, filters it and encodes its ids.

    Args:
        source: a CSV, TSV or Parquet file, a MovieLens file (or its folder), or a pandas
            DataFrame or pyarrow Table already in memory.
        format: ``"auto"`` guesses from the name (``.csv``, ``.tsv``, ``.parquet``, ``u.data``,
            ``ratings.dat``; compressed ``.gz``/``.bz2`` too); ``"movielens-100k"`` (``u.data``),
            ``"movielens-1m"`` (``ratings.dat``, ``::``) and ``"movielens-latest"``
            (``ratings.csv``) fix the layout and columns.
        user_col: the user id column; default: detected from the column names
            (``user_id``, else one column such as ``userId``, ``user``, ``customer_id``; see
            :func:`recsampled.data.readers.detect_columns`), ``"user_id"`` if none.
        item_col: the item id column; default: detected (``item_id``, ``movieId``, ``item``,
            ``product_id``, ...), ``"item_id"`` if none.
        timestamp_col: optional timestamp column (numbers, e.g. Unix seconds, or date-times
            such as ``2020-01-31 12:00:00``; Parquet timestamps); needed by time-based splits;
            default: detected (``timestamp``, ``ts``, ``time``, ``datetime``, ...), else none.
        rating_col: optional rating column; needed by ``min_rating``; default: detected
            (``rating``, ``score``, ``stars``, ...), else none.
        weight_col: optional non-negative weight column.
        delimiter: field delimiter of CSV/TSV files (default ``","``/``"\\t"``); one character, or
            one character repeated such as ``"::"``.
        column_names: names of the columns of a file without a header line.
        encoding: text encoding of the file.
        id_dtype: ``"auto"`` (integer ids when most ids of a column are integers, the others
            then being bad rows; else strings), ``"int"``, or ``"str"`` (keep ids verbatim, e.g.
            zero-padded or mixed).
        min_rating: keep rows with ``rating >= min_rating`` (implicit feedback), e.g. 4.
        dedupe: keep one row per (user, item), the earliest.
        k_core: keep only users and items with at least this many interactions, repeatedly.
        on_bad_rows: ``"error"`` raises :class:`DataError` at the first bad row; ``"skip"``
            drops bad rows and reports them (count and first examples) in ``report``.

    Returns:
        The :class:`Interactions`, with a :class:`LoadReport` in ``report``.

    Raises:
        FileNotFoundError: if ``source`` does not exist.
        DataError: for unreadable data (names the file, line, column and value), or when no
            interaction is left after filtering.
        ValueError: for invalid arguments.

    Example:
        >>> log = read_interactions(
        ...     "ratings.csv", user_col="userId", item_col="movieId", rating_col="rating",
        ...     timestamp_col="timestamp", min_rating=4, k_core=5)  # doctest: +SKIP
        >>> print(log.report.summary())  # doctest: +SKIP
    """
    if not isinstance(source, pd.DataFrame | pa.Table):
        source, format = resolve_format(source, format)
    columns = resolve_columns(
        format,
        user_col=user_col,
        item_col=item_col,
        timestamp_col=timestamp_col,
        rating_col=rating_col,
        weight_col=weight_col,
        detect=True,
    )
    check_options(min_rating=min_rating, has_ratings="rating" in columns, k_core=k_core)
    log = read_log(
        source,
        format=format,
        columns=columns,
        delimiter=delimiter,
        column_names=column_names,
        encoding=encoding,
        id_dtype=id_dtype,
        on_bad_rows=on_bad_rows,
    )
    check_options(min_rating=min_rating, has_ratings="rating" in log.columns, k_core=k_core)
    return build_interactions(log, min_rating=min_rating, dedupe=dedupe, k_core=k_core)


def check_options(*, min_rating: object, has_ratings: bool, k_core: object) -> None:
    """Validates the filtering arguments of ``read_interactions`` (Keras-style errors)."""
    if min_rating is not None:
        if (
            isinstance(min_rating, bool)
            or not isinstance(min_rating, numbers.Real)
            or not np.isfinite(min_rating)
        ):
            raise ValueError(
                "`min_rating` must be None or a finite number. "
                f"{received('min_rating', min_rating)}"
            )
        if not has_ratings:
            raise ValueError(
                "`min_rating` needs `rating_col` (the column to threshold). "
                f"Received: min_rating={min_rating}, rating_col=None."
            )
    if k_core is not None:
        check_positive_int("k_core", k_core)


def _column(log: RawLog, role: str, dtype: type | None = None) -> np.ndarray | None:
    """Pops a column from the log as a NumPy array, and frees its Arrow memory."""
    column = log.columns.pop(role, None)
    if column is None:
        return None
    array = column.to_numpy()
    del column
    release_memory()
    return array if dtype is None else array.astype(dtype, copy=False)


def _encode_by_id(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """int32 codes of the values and the distinct values in ascending order (code -> value)."""
    distinct = pc.unique(column)
    distinct = distinct.take(pc.sort_indices(distinct))
    codes = pc.index_in(column, value_set=distinct)
    return codes.to_numpy().astype(np.int32, copy=False), distinct


def _by_popularity(codes: np.ndarray, distinct: pa.Array) -> tuple[np.ndarray, Vocabulary]:
    """Renumbers codes (ordered by id) by decreasing count, ties by id; drops unused values."""
    counts = np.bincount(codes, minlength=len(distinct))
    order = np.argsort(-counts, kind="stable")
    order = order[counts[order] > 0]
    remap = np.full(len(distinct), -1, np.int32)
    remap[order] = np.arange(order.size, dtype=np.int32)
    return remap[codes], Vocabulary(distinct.take(pa.array(order)), counts[order])


def _drop(arrays: dict[str, np.ndarray | None], keep: np.ndarray) -> int:
    """Keeps the rows of every array where ``keep``; returns how many rows were dropped."""
    removed = keep.size - int(np.count_nonzero(keep))
    if removed:
        for role, array in arrays.items():
            if array is not None:
                arrays[role] = array[keep]
    return removed


def build_interactions(
    log: RawLog, *, min_rating: float | None, dedupe: bool, k_core: int | None
) -> Interactions:
    """Filters and encodes validated columns; consumes ``log.columns`` to free memory early."""
    num_rows = len(log.columns["user"])
    # Numbers first, ids next, one column at a time, each freed (and its memory returned)
    # before the next: the peak stays near the raw columns.
    arrays: dict[str, np.ndarray | None] = {"timestamp": _column(log, "timestamp")}
    ratings = _column(log, "rating")  # int64 or float64: compared before the float32 cast
    keep = None if min_rating is None else ratings >= min_rating
    arrays["rating"] = None if ratings is None else ratings.astype(np.float32)
    arrays["weight"] = _column(log, "weight", np.float32)
    del ratings
    user_ids, user_values = _encode_by_id(log.columns.pop("user"))
    release_memory()
    item_ids, item_values = _encode_by_id(log.columns.pop("item"))
    release_memory()
    arrays.update(user=user_ids, item=item_ids)
    del user_ids, item_ids  # `arrays` owns them, so that filtering frees the originals

    below = 0 if keep is None else _drop(arrays, keep)
    duplicates = 0
    if dedupe:
        keep = filters.first_occurrences(
            arrays["user"], arrays["item"], len(item_values), arrays["timestamp"]
        )
        duplicates = _drop(arrays, keep)
        release_memory()
    core_removed = 0
    if k_core is not None:
        keep = filters.k_core(
            arrays["user"], arrays["item"], k_core, len(user_values), len(item_values)
        )
        core_removed = _drop(arrays, keep)
    if arrays["user"].size == 0:
        raise DataError(
            f"{log.source}: no interactions left after filtering: {below} of {num_rows} rows "
            f"below min_rating={min_rating}, {duplicates} duplicates, {core_removed} removed by "
            f"the k-core with k_core={k_core}. Lower min_rating or k_core.",
            source=log.source,
        )
    user_ids, users = _by_popularity(arrays.pop("user"), user_values)
    item_ids, items = _by_popularity(arrays.pop("item"), item_values)
    report = LoadReport.of(
        log,
        below_min_rating=below,
        duplicates_removed=duplicates,
        k_core_removed=core_removed,
        rows_kept=int(user_ids.size),
        num_users=len(users),
        num_items=len(items),
    )
    return Interactions(
        user_ids=user_ids,
        item_ids=item_ids,
        users=users,
        items=items,
        timestamps=arrays["timestamp"],
        ratings=arrays["rating"],
        weights=arrays["weight"],
        report=report,
    )

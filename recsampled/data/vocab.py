"""A vocabulary: the map between contiguous indices and original (user or item) ids.

Index ``k`` holds the ``k``-th most frequent id (ties broken by ascending original id), so item
indices suit ``LogUniformSampler``, which assumes ids sorted by decreasing frequency, and
``counts`` feeds ``UnigramSampler(counts)``. Saved as a two-column Parquet file (``id``,
``count``; row ``k`` is index ``k``), which keeps integer and string ids exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsampled import _io
from recsampled._validation import received

_FORMAT_KEY = b"recsampled.vocabulary"
_FORMAT_VERSION = b"1"


def _as_id_array(values: object, name: str) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        array = values
    else:
        array = np.asarray(values)
        if array.size == 0:
            return pa.array([], pa.int64())
        if array.dtype.kind == "U":
            array = array.astype(object)
        try:
            array = pa.array(array)
        except (pa.ArrowException, TypeError, ValueError) as e:
            raise ValueError(
                f"`{name}` must be a 1-D array of integer or string ids. {received(name, values)}"
            ) from e
    if pa.types.is_integer(array.type):
        return pc.cast(array, pa.int64())
    if pa.types.is_large_string(array.type):
        return pc.cast(array, pa.string())
    if pa.types.is_string(array.type):
        return array
    raise ValueError(
        f"`{name}` must hold integer or string ids. Received: {name} of type {array.type}."
    )


class Vocabulary:
    """Original ids in index order, with their interaction counts.

    Args:
        original_ids: ``[size]`` distinct original ids (integers or strings); row ``k`` is the
            id of index ``k``.
        counts: ``[size]`` non-negative interaction counts; defaults to zeros.

    Raises:
        ValueError: if ids repeat, are neither integers nor strings, contain nulls, or if
            ``counts`` has the wrong length or a negative entry.

    Example:
        >>> vocab = Vocabulary(["b", "a"], counts=[5, 2])
        >>> vocab.lookup(["a", "zzz", "b"])
        array([ 1, -1,  0], dtype=int32)
        >>> vocab.decode([0])
        array(['b'], dtype=object)
    """

    def __init__(self, original_ids: object, counts: object | None = None):
        ids = _as_id_array(original_ids, "original_ids")
        if ids.null_count:
            raise ValueError(
                "`original_ids` must not contain nulls. "
                f"Received: {ids.null_count} null ids among {len(ids)}."
            )
        if len(pc.unique(ids)) != len(ids):
            counted = pc.value_counts(ids)
            repeated = counted.filter(pc.greater(counted.field("counts"), 1))
            raise ValueError(
                "`original_ids` must be distinct. "
                f"Received: {repeated[0]['values'].as_py()!r} appears "
                f"{repeated[0]['counts'].as_py()} times ({len(repeated)} ids repeat)."
            )
        size = len(ids)
        counts = np.zeros(size, np.int64) if counts is None else np.asarray(counts)
        if counts.shape != (size,) or counts.dtype.kind not in "iu" or (counts < 0).any():
            raise ValueError(
                f"`counts` must be {size} non-negative integers, one per id. "
                f"Received: counts of shape {counts.shape} and dtype {counts.dtype}."
            )
        self._ids = ids
        self.counts = counts.astype(np.int64, copy=False)
        self.original_ids: np.ndarray = ids.to_numpy(zero_copy_only=False)
        if self.original_ids.dtype.kind != "i":
            self.original_ids = self.original_ids.astype(object)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        head = ", ".join(repr(x) for x in self.original_ids[:3].tolist())
        return (
            f"Vocabulary(size={len(self)}, original_ids=[{head}{', ...' if len(self) > 3 else ''}])"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self._ids.equals(other._ids) and np.array_equal(self.counts, other.counts)

    @property
    def is_integer(self) -> bool:
        """Whether the original ids are integers (else strings)."""
        return pa.types.is_integer(self._ids.type)

    def lookup(self, original_ids: object) -> np.ndarray:
        """Indices of ``original_ids``: ``[n]`` int32, ``-1`` where an id is unknown."""
        values = _as_id_array(original_ids, "original_ids")
        if values.type != self._ids.type and len(values):
            if pa.types.is_integer(self._ids.type):  # text ids: only integer text can match
                text = pc.utf8_trim_whitespace(values)
                is_int = pc.match_substring_regex(text, r"^-?\d{1,18}$")
                values = pc.cast(pc.if_else(is_int, text, pa.scalar(None, pa.string())), pa.int64())
            else:
                values = pc.cast(values, pa.string())
        indices = pc.fill_null(pc.index_in(values, value_set=self._ids), -1)
        return indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)

    def decode(self, indices: object) -> np.ndarray:
        """Original ids of ``indices`` (``[n]`` integers in ``[0, size)``)."""
        indices = np.asarray(indices)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise ValueError(
                f"`indices` must lie in [0, {len(self)}). "
                f"Received: indices in [{indices.min()}, {indices.max()}]."
            )
        return self.original_ids[indices]

    def save(self, path: str | os.PathLike) -> None:
        """Writes the vocabulary to a Parquet file, atomically (temporary file, then rename)."""
        path = Path(path)
        table = pa.table({"id": self._ids, "count": pa.array(self.counts, pa.int64())})
        table = table.replace_schema_metadata({_FORMAT_KEY: _FORMAT_VERSION})
        _io.write_file(path, lambda f: pq.write_table(table, f))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Reads a vocabulary written by :meth:`save`.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: if the file is not a vocabulary written by :meth:`save`.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Vocabulary file not found: {path}")
        try:
            table = pq.read_table(path)
        except pa.ArrowException as e:
            raise ValueError(f"{path}: not a vocabulary file (not Parquet: {e}).") from e
        metadata = table.schema.metadata or {}
        if metadata.get(_FORMAT_KEY) != _FORMAT_VERSION or table.column_names != ["id", "count"]:
            raise ValueError(
                f"{path}: not a vocabulary file written by Vocabulary.save (expected columns "
                f"['id', 'count'] and format version 1, got {table.column_names})."
            )
        return cls(table.column("id"), table.column("count").to_numpy())

"""Side features of users or items: a table with one row per id, aligned to a vocabulary.

:func:`read_side_features` reads a CSV/TSV/Parquet table (``data.user_features`` /
``data.item_features`` in a config) and returns, for every index of the vocabulary,

- each **categorical** column as ``[num_ids]`` int64 codes: ``1..V`` for the column's distinct
  values (by decreasing frequency among the vocabulary's ids, ties by value; the
  ``vocabularies`` map code ``k`` to value ``k - 1``), ``0`` for an id without a value (a blank
  or null cell, or no row, with ``missing="default"``);
- each **numeric** column as ``[num_ids]`` float64 values.

The :class:`~recsampled.models.Tower` embeds the codes (one learned row per category, row 0 for
"unknown") and standardises the numbers, concatenates them with the id embedding and projects
the result to the tower's dimension. Both live in the tower as constant per-id tables, so an
exported query tower still maps a user index to an embedding, with its features inside the
SavedModel (gathers only: no hash table, no file, nothing that runs code).

Missing rows (ids of the vocabulary absent from the table) and missing numbers: with
``missing="error"`` (the default) a :class:`DataError` names the file, how many ids lack a row
and the first of them (or the line and column of a blank number); with ``missing="default"`` they
get category 0 and the column's mean (0 after standardisation). Ids of the table that the
vocabulary does not hold (e.g. items without interactions) are ignored. An id twice is an error.

Example:
    >>> import pandas as pd
    >>> from recsampled.data import Vocabulary
    >>> items = Vocabulary([10, 11, 12])
    >>> table = pd.DataFrame({"item_id": [12, 10, 11], "genre": ["a", "b", "a"],
    ...                       "year": [1990, 2000, 2010]})
    >>> features = read_side_features(table, items, categorical=["genre"], numeric=["year"])
    >>> features.categorical["genre"].tolist(), features.vocabularies["genre"]
    ([2, 1, 1], ['a', 'b'])
    >>> features.numeric["year"].tolist()
    [2000.0, 2010.0, 1990.0]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from recsampled.data._columns import parse_ids, parse_numbers
from recsampled.data._detect import detect_columns
from recsampled.data.delimited import check_delimiter
from recsampled.data.errors import DataError, check_unique_columns, shown_columns
from recsampled.data.readers import resolve_format
from recsampled.data.vocab import Vocabulary

Missing = Literal["error", "default"]
MISSING = ("error", "default")
_NULLS = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "<NA>")
_SHOWN = 5


@dataclass(frozen=True)
class SideFeatures:
    """Per-id features aligned to a vocabulary (module docstring).

    Attributes:
        categorical: name -> ``[num_ids]`` int64 codes, 0 = unknown.
        numeric: name -> ``[num_ids]`` float64 values.
        vocabularies: name -> the categorical column's values (code ``k`` is value ``k - 1``).
        missing_ids: ids of the vocabulary without a row (given defaults).
        source: the file, or ``"<table>"``.
    """

    categorical: dict[str, np.ndarray] = field(default_factory=dict)
    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    vocabularies: dict[str, list] = field(default_factory=dict)
    missing_ids: int = 0
    source: str = "<table>"

    def tower(self) -> dict[str, dict[str, np.ndarray]]:
        """``{"categorical": ..., "numeric": ...}``: ``Tower``'s (and ``build_model``'s) input."""
        return {"categorical": dict(self.categorical), "numeric": dict(self.numeric)}


def _read_table(
    source: str | os.PathLike | pd.DataFrame,
    format: str,
    delimiter: str | None,
    encoding: str,
) -> tuple[pa.Table, str, int]:
    """The table as Arrow (CSV cells as text), its name for messages, and its header lines."""
    if isinstance(source, pd.DataFrame):
        check_unique_columns("<table>", [str(c) for c in source.columns], "table")
        return pa.Table.from_pandas(source, preserve_index=False), "<table>", 0
    path, format = resolve_format(source, format)
    name = str(path)
    if format == "parquet":
        try:
            return pq.read_table(path), name, 0
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{name}: not a readable Parquet file ({e}).", source=name) from e
    if format not in ("csv", "tsv"):
        raise DataError(
            f"{name}: a feature table must be CSV, TSV or Parquet with a header. "
            f"Received: format={format!r}.",
            source=name,
        )
    char, stride = check_delimiter(delimiter or ("," if format == "csv" else "\t"))
    if stride != 1:
        raise DataError(f"{name}: a feature table needs a one-character delimiter.", source=name)
    try:
        options = pcsv.ReadOptions(encoding=encoding, use_threads=False)
        parse = pcsv.ParseOptions(delimiter=char)
        names = pcsv.open_csv(path, read_options=options, parse_options=parse).schema.names
        check_unique_columns(name, names, "header (line 1)")
        convert = pcsv.ConvertOptions(column_types={n: pa.string() for n in names})
        table = pcsv.read_csv(path, read_options=options, parse_options=parse,
                              convert_options=convert)  # fmt: skip
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        raise DataError(f"{name}: cannot be read as {format} ({e}).", source=name) from e
    return table, name, 1


def _place(source: str, header: int, row: int, column: str) -> str:
    where = f"line {row + 1 + header}" if header else f"row {row + 1}"
    return f"{source}, {where}, column {column!r}"


def _missing_cells(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        trimmed = pc.utf8_trim_whitespace(column)
        null = pc.or_(pc.is_null(column), pc.is_in(trimmed, value_set=pa.array(_NULLS)))
    else:
        null = pc.is_null(column, nan_is_null=True)
    return np.asarray(pc.fill_null(null, True).to_numpy(zero_copy_only=False), bool)


def _check_columns(
    source: str,
    names: Sequence[str],
    id_col: str,
    categorical: Sequence[str],
    numeric: Sequence[str],
) -> None:
    wanted = [id_col, *categorical, *numeric]
    if len(set(wanted)) != len(wanted):
        raise ValueError(
            "`id_col`, `categorical` and `numeric` must name distinct columns. "
            f"Received: id_col={id_col!r}, categorical={list(categorical)}, "
            f"numeric={list(numeric)}."
        )
    absent = [c for c in wanted if c not in names]
    if absent:
        raise DataError(
            f"{source}: feature columns not found: {absent}. Found {len(names)} columns: "
            f"{shown_columns(names)}.",
            source=source,
        )


def _rows_of_ids(
    table: pa.Table, source: str, header: int, id_col: str, vocabulary: Vocabulary, kind: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows of the table that hold vocabulary ids, their indices, ids without a row)."""
    id_dtype = "int" if vocabulary.is_integer else "str"
    parsed = parse_ids(source, id_col, table.column(id_col), id_dtype)
    if parsed.bad is not None:
        row = int(np.flatnonzero(parsed.bad)[0])
        raise DataError(
            f"{_place(source, header, row, id_col)}: expected {parsed.expected}, got "
            f"{table.column(id_col)[row].as_py()!r}.",
            source=source,
        )
    indices = vocabulary.lookup(parsed.values)
    rows = np.flatnonzero(indices >= 0)
    indices = indices[rows]
    counts = np.bincount(indices, minlength=len(vocabulary))
    if (counts > 1).any():
        index = int(np.flatnonzero(counts > 1)[0])
        first, second = (int(r) for r in rows[indices == index][:2])
        where = (
            f"rows {first + 1} and {second + 1}"
            if not header
            else (f"lines {first + 1 + header} and {second + 1 + header}")
        )
        shown = vocabulary.original_ids[index : index + 1].tolist()[0]
        raise DataError(
            f"{source}: {kind} {shown!r} has more than one row ({where}); "
            "a feature table holds one row per id.",
            source=source,
        )
    return rows, indices, np.flatnonzero(counts == 0)


def _categorical(
    column: pa.ChunkedArray, rows: np.ndarray, indices: np.ndarray, num_ids: int
) -> tuple[np.ndarray, list]:
    """Codes 1..V by decreasing frequency (ties by value), 0 for blank; and the values."""
    missing = _missing_cells(column)[rows]
    values = pc.cast(column.take(pa.array(rows)), pa.string()).to_numpy(zero_copy_only=False)
    present = np.asarray([str(v).strip() for v in values[~missing]], dtype=object)
    distinct, inverse, counts = np.unique(present.astype(str), return_inverse=True,
                                          return_counts=True)  # fmt: skip
    order = np.lexsort((distinct, -counts))
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    codes = np.zeros(num_ids, np.int64)
    codes[indices[~missing]] = rank[inverse] + 1
    return codes, [str(v) for v in distinct[order]]


def _numeric(
    source: str, header: int, name: str, column: pa.ChunkedArray, rows: np.ndarray,
    indices: np.ndarray, num_ids: int, missing: Missing,
) -> np.ndarray:  # fmt: skip
    blank = _missing_cells(column)
    parsed = parse_numbers(source, name, column)
    bad = np.zeros(len(column), bool) if parsed.bad is None else parsed.bad
    for row in np.flatnonzero(bad & ~blank)[:1]:
        raise DataError(
            f"{_place(source, header, int(row), name)}: expected a finite number, got "
            f"{column[int(row)].as_py()!r}.",
            source=source,
        )
    values = np.asarray(parsed.values.to_numpy(zero_copy_only=False), np.float64)
    blank = blank[rows]
    if blank.any() and missing == "error":
        row = int(rows[np.flatnonzero(blank)[0]])
        raise DataError(
            f"{_place(source, header, row, name)}: no value; fill it, or pass missing='default' "
            "(the column's mean).",
            source=source,
        )
    out = np.full(num_ids, np.nan)
    out[indices[~blank]] = values[rows[~blank]]
    mean = float(np.mean(out[~np.isnan(out)])) if (~np.isnan(out)).any() else 0.0
    return np.where(np.isnan(out), mean, out)


def read_side_features(
    source: str | os.PathLike | pd.DataFrame,
    vocabulary: Vocabulary,
    *,
    categorical: Sequence[str] = (),
    numeric: Sequence[str] = (),
    id_col: str | None = None,
    missing: Missing = "error",
    format: str = "auto",
    delimiter: str | None = None,
    encoding: str = "utf-8",
    kind: Literal["user", "item"] = "item",
) -> SideFeatures:
    """Reads a feature table and aligns it to ``vocabulary`` (module docstring).

    Args:
        source: a CSV/TSV (with a header) or Parquet file, or a DataFrame.
        vocabulary: the ids of the tower (``train.users`` or ``train.items``).
        categorical: columns of categories (any values; embedded by the tower).
        numeric: columns of numbers (standardised by the tower).
        id_col: the id column; default: detected like ``read_interactions``' user or item
            column (``item_id``, ``movieId``, ``item``, ...).
        missing: ``"error"`` or ``"default"``, for ids without a row and blank numbers.
        format: ``"auto"`` (from the name), ``"csv"``, ``"tsv"`` or ``"parquet"``.
        delimiter: one character (default ``","`` / ``"\\t"``).
        encoding: text encoding of a CSV/TSV file.
        kind: ``"user"`` or ``"item"``: which ids the table holds (messages, detection).

    Returns:
        The :class:`SideFeatures`.

    Raises:
        FileNotFoundError: for a missing file.
        DataError: for unreadable data, absent columns, ids twice or missing (with ``"error"``).
        ValueError: for invalid arguments.
    """
    if missing not in MISSING:
        raise ValueError(
            f"`missing` must be one of {list(MISSING)}. Received: missing={missing!r}."
        )
    if kind not in ("user", "item"):
        raise ValueError(f"`kind` must be 'user' or 'item'. Received: kind={kind!r}.")
    if not categorical and not numeric:
        raise ValueError("Name at least one `categorical` or `numeric` column. Received: none.")
    table, name, header = _read_table(source, format, delimiter, encoding)
    if id_col is None:
        id_col = detect_columns(name, table.column_names, {kind: None})[kind]
    _check_columns(name, table.column_names, id_col, categorical, numeric)
    rows, indices, absent = _rows_of_ids(table, name, header, id_col, vocabulary, kind)
    if absent.size and missing == "error":
        shown = ", ".join(repr(v) for v in vocabulary.original_ids[absent[:_SHOWN]].tolist())
        raise DataError(
            f"{name}: {absent.size} of {len(vocabulary)} {kind}s have no row (the first: "
            f"{shown}). Add their rows, or pass missing='default' (category 0 and the "
            f"column's mean; data.{kind}_features.missing in a config).",
            source=name,
        )
    features = SideFeatures(missing_ids=int(absent.size), source=name)
    for column in categorical:
        codes, values = _categorical(table.column(column), rows, indices, len(vocabulary))
        features.categorical[column], features.vocabularies[column] = codes, values
    for column in numeric:
        features.numeric[column] = _numeric(
            name, header, column, table.column(column), rows, indices, len(vocabulary), missing
        )
    return features

"""Reads interaction logs (CSV, TSV, Parquet, MovieLens, in-memory tables) into validated columns.

``resolve_format`` finds the file and its format (from the name when ``format="auto"``; a
MovieLens folder resolves to its ratings file); ``resolve_columns`` maps roles (user, item,
timestamp, rating, weight) to column names; ``read_log`` reads and validates: delimited text in
``delimited.py``, Parquet one column at a time, in-memory tables as they are. Every route ends in
``_columns.clean_columns``, so the same value gets the same verdict from every format.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsampled._validation import received
from recsampled.data._columns import IdDtype, OnBadRows, RawLog, clean_columns, release_memory
from recsampled.data._detect import detect_columns
from recsampled.data.delimited import DelimitedFile
from recsampled.data.errors import DataError, check_unique_columns, missing_columns_error

Format = Literal[
    "auto", "csv", "tsv", "parquet", "movielens-100k", "movielens-1m", "movielens-latest"
]
FORMATS = ("auto", "csv", "tsv", "parquet", "movielens-100k", "movielens-1m", "movielens-latest")
_ML_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")


@dataclass(frozen=True)
class _Preset:
    """How a format lays out its file."""

    delimiter: str | None  # None: Parquet
    column_names: tuple[str, ...] | None = None  # None: the first line is the header
    columns: Mapping[str, str] | None = None  # role -> name, fixed by the format
    filename: str | None = None  # the file inside a MovieLens folder


_ML_ROLES = dict(zip(("user", "item", "rating", "timestamp"), _ML_COLUMNS, strict=True))
_PRESETS = {
    "csv": _Preset(","),
    "tsv": _Preset("\t"),
    "parquet": _Preset(None),
    "movielens-100k": _Preset("\t", _ML_COLUMNS, _ML_ROLES, "u.data"),
    "movielens-1m": _Preset("::", _ML_COLUMNS, _ML_ROLES, "ratings.dat"),
    "movielens-latest": _Preset(
        ",",
        None,
        {"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"},
        "ratings.csv",
    ),
}


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}. {received(name, value)}")


def resolve_columns(
    format: str,
    *,
    user_col: str | None,
    item_col: str | None,
    timestamp_col: str | None,
    rating_col: str | None,
    weight_col: str | None,
    detect: bool = False,
) -> dict[str, str | None]:
    """Role -> column name, from the arguments and the format's fixed layout.

    With ``detect``, the user, item, timestamp and rating roles left unset map to None, for
    :func:`detect_columns` to fill from the file's column names.
    """
    given = {
        "user": user_col,
        "item": item_col,
        "timestamp": timestamp_col,
        "rating": rating_col,
        "weight": weight_col,
    }
    for role, name in given.items():
        if name is not None and not (isinstance(name, str) and name):
            arg = f"{role}_col"
            raise ValueError(f"`{arg}` must be None or a column name. {received(arg, name)}")
    preset = _PRESETS.get(format)
    if preset is not None and preset.columns is not None:
        for role, name in given.items():
            if name is not None and name != preset.columns.get(role):
                arg = f"{role}_col"
                raise ValueError(
                    f"`{arg}` is fixed by format={format!r} (columns {dict(preset.columns)}); "
                    f"leave it unset. {received(arg, name)}"
                )
        return dict(preset.columns)
    if detect:
        columns = {r: given[r] for r in ("user", "item", "timestamp", "rating")}
        columns.update({"weight": weight_col} if weight_col else {})
    else:
        columns = {"user": user_col or "user_id", "item": item_col or "item_id"}
        columns.update({r: given[r] for r in ("timestamp", "rating", "weight") if given[r]})
    names = [name for name in columns.values() if name is not None]
    if len(set(names)) != len(names):
        raise ValueError(f"Each role needs its own column. Received: columns {columns}.")
    return columns


def resolve_format(source: str | os.PathLike, format: str) -> tuple[str | os.PathLike, str]:
    """The file to read and its format, guessed from the name when ``format="auto"``.

    The file is ``source`` itself, or for a folder, the MovieLens ratings file in it.
    """
    _check_choice("format", format, FORMATS)
    path = Path(source)
    if path.is_dir():
        candidates = [format] if format != "auto" else [f for f in _PRESETS if _PRESETS[f].filename]
        for name in candidates:
            filename = _PRESETS[name].filename
            if filename and (path / filename).is_file():
                return os.path.join(source, filename), name
        raise FileNotFoundError(
            f"{path} is a folder without a MovieLens ratings file (u.data, ratings.dat or "
            "ratings.csv); pass the log file itself."
        )
    if not path.exists():
        raise FileNotFoundError(f"Interaction log not found: {path}")
    if not path.is_file():
        raise DataError(
            f"{path}: not a regular file (a device, pipe or socket); expected an interaction "
            "log file.",
            source=str(path),
        )
    if format != "auto":
        return source, format
    name = path.name.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    if name == "u.data":
        return source, "movielens-100k"
    if name == "ratings.dat":
        return source, "movielens-1m"
    for suffixes, guess in (
        ((".parquet", ".pq"), "parquet"),
        ((".tsv", ".tab"), "tsv"),
        ((".csv",), "csv"),
    ):
        if name.endswith(suffixes):
            return source, guess
    raise DataError(
        f"{path}: cannot tell the format from the file name. Pass format= one of "
        f"{list(FORMATS[1:])}.",
        source=str(path),
    )


def read_log(
    source: str | os.PathLike | pd.DataFrame | pa.Table,
    *,
    format: Format = "auto",
    columns: Mapping[str, str],
    delimiter: str | None = None,
    column_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    id_dtype: IdDtype = "auto",
    on_bad_rows: OnBadRows = "error",
) -> RawLog:
    """Reads and validates the columns of a log (see ``read_interactions`` for the arguments).

    ``columns`` maps roles to column names (``resolve_columns``). Raises ``FileNotFoundError``
    for a missing file and :class:`DataError` for bad data.
    """
    _check_choice("id_dtype", id_dtype, ("auto", "int", "str"))
    _check_choice("on_bad_rows", on_bad_rows, ("error", "skip"))
    if isinstance(source, pd.DataFrame | pa.Table):
        return _read_table(source, columns, id_dtype, on_bad_rows)
    source, format = resolve_format(source, format)
    path, name = Path(source), str(source)
    preset = _PRESETS[format]
    if preset.delimiter is None:
        return _read_parquet(path, name, columns, id_dtype, on_bad_rows)
    if preset.column_names is not None and (delimiter is not None or column_names is not None):
        raise ValueError(
            f"format={format!r} fixes the delimiter and column names; leave `delimiter` and "
            f"`column_names` unset. Received: delimiter={delimiter!r}, "
            f"column_names={column_names!r}."
        )
    text = DelimitedFile(
        path=path,
        source=name,
        format=format,
        delimiter=delimiter if delimiter is not None else preset.delimiter,
        column_names=tuple(column_names or preset.column_names or ()) or None,
        encoding=encoding,
    )
    return text.read(columns, id_dtype, on_bad_rows)


def _as_text(value: object) -> str:
    """A cell of a mixed-type pandas column as text: missing cells become ''."""
    if isinstance(value, str):
        return value
    return "" if pd.isna(value) else str(value)


def _read_parquet(
    path: Path,
    source: str,
    columns: Mapping[str, str],
    id_dtype: IdDtype,
    on_bad_rows: OnBadRows,
) -> RawLog:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{source}: not a readable Parquet file ({e}).", source=source) from e
    check_unique_columns(source, schema.names, "schema")
    columns = detect_columns(source, schema.names, columns)
    error = missing_columns_error(source, schema.names, columns, where="schema")
    if error is not None:
        raise error
    arrays = {}
    for name in columns.values():  # one column at a time: a third of the reader's buffers
        try:
            arrays[name] = pq.read_table(path, columns=[name]).column(0)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{source}: cannot read the Parquet data ({e}).", source=source) from e
        release_memory()
    table = pa.table(arrays)
    del arrays
    return _from_table(table, source, "parquet", columns, id_dtype, on_bad_rows)


def _read_table(
    table: pd.DataFrame | pa.Table,
    columns: Mapping[str, str],
    id_dtype: IdDtype,
    on_bad_rows: OnBadRows,
) -> RawLog:
    source = "<table>"
    found = (
        [str(c) for c in table.columns] if isinstance(table, pd.DataFrame) else table.column_names
    )
    check_unique_columns(source, found, "table")
    columns = detect_columns(source, found, columns)
    error = missing_columns_error(source, found, columns, where="table")
    if error is not None:
        raise error
    if isinstance(table, pd.DataFrame):
        arrays = {}
        for name in columns.values():
            series = table[name]
            try:
                arrays[name] = pa.array(series, from_pandas=True)
            except (pa.ArrowException, TypeError, ValueError):  # mixed objects: read as text
                arrays[name] = pa.array(series.map(_as_text).astype(object), pa.string())
        table = pa.table(arrays)
    else:
        table = table.select(list(columns.values()))
    return _from_table(table, source, "table", columns, id_dtype, on_bad_rows)


def _from_table(
    table: pa.Table,
    source: str,
    format: str,
    columns: Mapping[str, str],
    id_dtype: IdDtype,
    on_bad_rows: OnBadRows,
) -> RawLog:
    rows = table.num_rows
    if rows == 0:
        raise DataError(f"{source}: no data rows.", source=source)
    raw = {role: (name, table.column(name)) for role, name in columns.items()}
    del table
    cleaned = clean_columns(
        source, raw, id_dtype=id_dtype, on_bad_rows=on_bad_rows, place=lambda p: (p + 1, None)
    )
    return RawLog(source, format, cleaned.columns, rows, 0, cleaned.rows_skipped, cleaned.bad_rows)

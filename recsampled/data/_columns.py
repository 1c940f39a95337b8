"""Validates raw columns and converts them to typed Arrow columns, finding every bad row.

A raw column is either text (every column of a CSV file on the careful path) or a typed Arrow
column (Parquet, in-memory tables, the fast CSV path). Both go through the same rules:

- ids: missing when null, blank or a null token (``NaN``, ``NA``, ``null``, ... as in pandas and
  Arrow). With ``id_dtype="auto"`` a text column holds integer ids when most present ids are
  integers, and then the others are bad rows (a stray ``abc`` among 10^7 integers is garbage, not
  a reason to turn every id into text); else it holds string ids. ``"int"`` requires integers;
  ``"str"`` keeps the text verbatim. Typed columns (Parquet, tables) keep their type.
  Integer-valued decimals (``255.0``, as pandas writes a float column of ids) are integers; a
  column of numbers with a fraction (``2.5``) is not read as text ids but rejected, row by row.
- numbers (ratings, weights, timestamps): finite, integer (int64) when every value is an integer,
  else float64; weights must also be >= 0. Parquet timestamp columns become Unix seconds, and so
  does a text timestamp column whose values are mostly not numbers but date-times (ISO 8601 /
  pandas, e.g. ``2020-01-31 12:00:00``, ``2020-01-31T12:00:00+01:00``, ``2020-01-31``; without an
  offset a time is read as UTC).

Vectorised with ``pyarrow.compute``; the NumPy masks it returns are ``None`` when no row is bad,
so that clean data costs no extra memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsampled.data.errors import BadRow, DataError

IdDtype = Literal["auto", "int", "str"]
OnBadRows = Literal["error", "skip"]

ROLES = ("user", "item", "timestamp", "rating", "weight")
MAX_EXAMPLES = 10

# Arrow's default null tokens (the same list as pandas), plus Python's and pandas' own spellings.
_NULL_TOKENS = pa.array(
    [
        "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
        "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null", "None", "<NA>",
    ]
)  # fmt: skip
_INT = r"^[+-]?\d{1,19}$"
_INTEGRAL = r"^[+-]?\d{1,19}(\.0*)?$"  # 255 or 255.0: an integer id
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"

EXPECTED_ID = "a non-empty id"
EXPECTED_INT_ID = "a non-empty integer id"
EXPECTED_AUTO_INT_ID = (
    "an integer id, as most ids of the column are numbers (pass id_dtype='str' if ids can be text)"
)
EXPECTED_NUMBER = "a finite number"
EXPECTED_TIME = "a date-time (ISO 8601, e.g. '2020-01-31 12:00:00') or a number (Unix seconds)"
EXPECTED_NON_NEGATIVE = "a finite number >= 0"


class Parsed(NamedTuple):
    """A converted column: ``values`` (int64, float64 or string; arbitrary where ``bad``)."""

    values: pa.ChunkedArray
    bad: np.ndarray | None
    expected: str


class RawLog(NamedTuple):
    """Validated, typed columns of a log by role, and what the reader dropped.

    Attributes:
        source: the file as the caller spelled it, or ``"<table>"``.
        format: the format it was read as.
        columns: role (``"user"``, ``"item"``, ``"timestamp"``, ``"rating"``, ``"weight"``) to
            a typed Arrow column: ids int64 or string, numbers int64 or float64.
        rows_read: data rows in the source (header excluded; blank and bad rows included).
        empty_rows: rows whose fields were all empty (blank lines), dropped.
        rows_skipped: bad rows dropped (``on_bad_rows="skip"``).
        bad_rows: the first bad rows, for the report.
    """

    source: str
    format: str
    columns: dict[str, pa.ChunkedArray]
    rows_read: int
    empty_rows: int
    rows_skipped: int
    bad_rows: tuple[BadRow, ...]


class Cleaned(NamedTuple):
    """Validated columns by role, with bad rows dropped, and what was dropped."""

    columns: dict[str, pa.ChunkedArray]
    rows_skipped: int
    bad_rows: tuple[BadRow, ...]


def release_memory() -> None:
    """Returns memory that Arrow's allocator holds but no longer uses to the system.

    Arrow's allocator (mimalloc or jemalloc) keeps freed pages for reuse, so once a loader has
    turned Arrow columns into NumPy arrays, the resident set would still count the columns.
    """
    pa.default_memory_pool().release_unused()


def _mask(condition: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
    """NumPy bool mask of a boolean Arrow column (nulls count as False); None if all False."""
    condition = pc.fill_null(condition, False)
    if not pc.any(condition).as_py():
        return None
    return np.asarray(condition.to_numpy(zero_copy_only=False), dtype=bool)


def _either(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    if b is None:
        return a
    return a | b


def _is_text(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


def _unsupported(source: str, name: str, column: pa.ChunkedArray, what: str) -> DataError:
    return DataError(
        f"{source}, column {name!r}: expected {what}, got a column of type {column.type}.",
        source=source,
    )


def _text_to_int(text: pa.ChunkedArray, bad: np.ndarray | None) -> pa.ChunkedArray:
    """Casts trimmed integer text (``255`` or ``255.0``) to int64; rows in ``bad`` become null."""
    text = pc.replace_substring_regex(pc.replace_substring_regex(text, r"^\+", ""), r"\.0*$", "")
    if bad is not None:
        text = pc.if_else(pa.chunked_array([bad]), pa.scalar(None, pa.string()), text)
    return pc.cast(text, pa.int64())


def parse_ids(source: str, name: str, column: pa.ChunkedArray, id_dtype: IdDtype) -> Parsed:
    """Converts an id column to int64 or string, marking missing (and non-integer) ids bad."""
    type_ = column.type
    if pa.types.is_dictionary(type_):
        return parse_ids(source, name, pc.cast(column, type_.value_type), id_dtype)
    if _is_text(type_):
        trimmed = pc.utf8_trim_whitespace(column)
        missing = _mask(pc.or_(pc.is_null(column), pc.is_in(trimmed, value_set=_NULL_TOKENS)))
        if id_dtype == "str":
            return Parsed(column, missing, EXPECTED_ID)
        not_int = _mask(pc.invert(pc.match_substring_regex(trimmed, _INTEGRAL)))
        if not_int is not None and missing is not None:
            not_int = not_int & ~missing if (not_int & ~missing).any() else None
        if id_dtype == "auto" and not_int is not None:
            present = len(column) - (0 if missing is None else int(missing.sum()))
            text = not_int & ~np.asarray(
                pc.fill_null(pc.match_substring_regex(trimmed, _NUMBER), False), bool
            )  # neither integers nor numbers (2.5 is a bad integer id, not a text id)
            if 2 * int(text.sum()) >= present:  # mostly text: text ids
                return Parsed(column, missing, EXPECTED_ID)
        bad = _either(missing, not_int)
        try:
            values = _text_to_int(trimmed, bad)
        except pa.ArrowInvalid as e:  # more than 19 digits' worth: beyond int64
            if id_dtype == "auto":
                return Parsed(column, missing, EXPECTED_ID)
            raise DataError(
                f"{source}, column {name!r}: expected integer ids within the int64 range, got "
                "larger ones. Pass id_dtype='str' to keep them as text.",
                source=source,
            ) from e
        if not_int is None:
            return Parsed(values, bad, EXPECTED_ID)
        return Parsed(values, bad, EXPECTED_INT_ID if id_dtype == "int" else EXPECTED_AUTO_INT_ID)
    if pa.types.is_integer(type_):
        values = pc.cast(column, pa.int64())
        bad = _mask(pc.is_null(values))
    elif pa.types.is_floating(type_):
        values = pc.cast(column, pa.float64())
        integral = pc.and_(pc.is_finite(values), pc.equal(pc.floor(values), values))
        bad = _mask(pc.invert(pc.fill_null(integral, False)))  # nulls, NaN, inf, fractions
        if bad is not None:
            values = pc.if_else(pa.chunked_array([bad]), pa.scalar(None, pa.float64()), values)
        values = pc.cast(values, pa.int64(), safe=False)
    else:
        raise _unsupported(source, name, column, "integer or string ids")
    if id_dtype == "str":
        values = pc.cast(values, pa.string())
    return Parsed(values, bad, EXPECTED_INT_ID if pa.types.is_floating(type_) else EXPECTED_ID)


def parse_numbers(
    source: str,
    name: str,
    column: pa.ChunkedArray,
    *,
    non_negative: bool = False,
    allow_datetime: bool = False,
) -> Parsed:
    """Converts a column of numbers to int64 (all integers) or float64, marking bad values."""
    expected = EXPECTED_NON_NEGATIVE if non_negative else EXPECTED_NUMBER
    type_ = column.type
    if pa.types.is_dictionary(type_):
        column, type_ = pc.cast(column, type_.value_type), type_.value_type
    if _is_text(type_):
        trimmed = pc.utf8_trim_whitespace(column)
        bad = _mask(pc.invert(pc.match_substring_regex(trimmed, _NUMBER)))
        if allow_datetime and bad is not None and 2 * int(bad.sum()) > len(column):
            return _parse_times(trimmed)
        is_int = pc.match_substring_regex(trimmed, _INT)
        if bad is not None:
            is_int = pc.or_(is_int, pa.chunked_array([bad]))
        values = None
        if pc.all(is_int).as_py():
            try:
                values = _text_to_int(trimmed, bad)
            except pa.ArrowInvalid:  # beyond int64: read as float64 below
                values = None
        if values is None:
            if bad is not None:
                trimmed = pc.if_else(pa.chunked_array([bad]), pa.scalar("0"), trimmed)
            values = pc.cast(trimmed, pa.float64())
    elif pa.types.is_integer(type_):
        values = pc.cast(column, pa.int64())
        bad = _mask(pc.is_null(values))
    elif pa.types.is_floating(type_):
        values = pc.cast(column, pa.float64())
        bad = _mask(pc.invert(pc.fill_null(pc.is_finite(values), False)))  # nulls, NaN, inf
    elif allow_datetime and pa.types.is_timestamp(type_):
        values = pc.cast(pc.cast(column, pa.timestamp("s"), safe=False), pa.int64())
        bad = _mask(pc.is_null(values))
    else:
        what = "numbers (for example Unix seconds)" if allow_datetime else "numbers"
        raise _unsupported(source, name, column, what)
    if pa.types.is_floating(values.type):
        bad = _either(bad, _mask(pc.invert(pc.is_finite(values))))
    if non_negative:
        bad = _either(bad, _mask(pc.less(values, 0)))
    return Parsed(values, bad, expected)


def _parse_times(text: pa.ChunkedArray) -> Parsed:
    """Date-time text (ISO 8601, as pandas writes it; UTC without an offset) to int64 Unix
    seconds (sub-second parts truncated, as for Parquet timestamps); unparsable rows bad."""
    times = pd.to_datetime(
        pd.Series(text.to_numpy(zero_copy_only=False), dtype=object),
        errors="coerce",
        format="ISO8601",
        utc=True,
    )
    bad = np.asarray(times.isna(), bool)
    seconds = (times - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    values = np.where(bad, 0, seconds.fillna(0).to_numpy()).astype(np.int64)
    return Parsed(pa.chunked_array([values]), bad if bad.any() else None, EXPECTED_TIME)


def _shown(column: pa.ChunkedArray, position: int) -> str:
    value = column[position].as_py()
    return "null" if value is None else str(value)


def clean_columns(
    source: str,
    raw: Mapping[str, tuple[str, pa.ChunkedArray]],
    *,
    id_dtype: IdDtype,
    on_bad_rows: OnBadRows,
    place: Callable[[int], tuple[int, int | None]],
    malformed: tuple[BadRow, ...] = (),
    num_malformed: int = 0,
) -> Cleaned:
    """Validates and converts every column; raises or drops bad rows.

    Args:
        source: the file (or ``"<table>"``) for messages.
        raw: role (``"user"``, ``"item"``, ``"timestamp"``, ``"rating"``, ``"weight"``) to
            ``(column name, raw column)``; all columns have the same length.
        id_dtype: how ids are typed (see the module docstring).
        on_bad_rows: ``"error"`` raises :class:`DataError` for the first bad row; ``"skip"``
            drops every bad row and reports their count and the first examples.
        place: maps a 0-based position in the raw columns to ``(row, line)`` for messages.
        malformed: the first rows the reader already rejected (wrong number of fields).
        num_malformed: how many rows the reader rejected in all.

    Returns:
        The typed columns by role, with the bad rows dropped.
    """
    parsed: dict[str, Parsed] = {}
    for role in ROLES:
        if role not in raw:
            continue
        name, column = raw[role]
        if role in ("user", "item"):
            parsed[role] = parse_ids(source, name, column, id_dtype)
        else:
            parsed[role] = parse_numbers(
                source,
                name,
                column,
                non_negative=role == "weight",
                allow_datetime=role == "timestamp",
            )
    bad = None
    for p in parsed.values():
        bad = _either(bad, p.bad)
    num_bad = 0 if bad is None else int(bad.sum())
    total = num_bad + num_malformed
    if total == 0:
        return Cleaned({role: p.values for role, p in parsed.items()}, 0, ())

    examples = list(malformed)
    for position in np.flatnonzero(bad)[:MAX_EXAMPLES] if bad is not None else ():
        role = next(r for r, p in parsed.items() if p.bad is not None and p.bad[position])
        name, column = raw[role]
        row, line = place(int(position))
        examples.append(
            BadRow(row, line, name, _shown(column, int(position)), parsed[role].expected)
        )
    examples = sorted(examples, key=lambda b: b.row)[:MAX_EXAMPLES]
    if on_bad_rows == "error":
        raise DataError.from_bad_rows(source, examples, total)
    if num_bad == len(next(iter(raw.values()))[1]):
        raise DataError(
            f"{source}: every row is bad ({total} rows); the first: {examples[0].describe(source)}",
            source=source,
            bad_row=examples[0],
        )
    keep = pa.chunked_array([~bad]) if bad is not None else None
    columns = {
        role: (p.values if keep is None else pc.filter(p.values, keep))
        for role, p in parsed.items()
    }
    return Cleaned(columns, total, tuple(examples))

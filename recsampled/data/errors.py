"""The record of one rejected row, and the messages of :class:`DataError` for bad data.

:class:`DataError` itself lives in :mod:`recsampled.errors` (imported here, as before).

Every message names the source (the file as the caller spelled it), the place (the 1-based line of
a text file, header included, or the 1-based row of a Parquet file or an in-memory table), the
column, the value read and what was expected:

    ratings.csv, line 17, column 'rating': expected a finite number, got 'abc'.

For missing columns, :func:`missing_columns_error` suggests close names and, when the header did
not split, the delimiter that would split it (:func:`sniff_delimiter`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from recsampled.errors import DataError

_MAX_SHOWN = 80
_SNIFFED = (",", "\t", ";", "|", "::", " ")


def show_value(value: str) -> str:
    """Quotes a value read from a file for a message, shortened to 80 characters."""
    if len(value) > _MAX_SHOWN:
        return repr(value[:_MAX_SHOWN]) + "..."
    return repr(value)


class BadRow(NamedTuple):
    """One row rejected by a loader.

    Attributes:
        row: 1-based data row (the header is not a row; blank lines and malformed lines are).
        line: 1-based physical line of a text file (the header is line 1), or ``None`` for
            Parquet files and in-memory tables, which have rows but no lines.
        column: the offending column, or ``None`` when the row as a whole is malformed (wrong
            number of fields).
        value: the offending text as read (the whole line when ``column`` is ``None``).
        expected: what was expected instead, e.g. ``"a finite number"``.
    """

    row: int
    line: int | None
    column: str | None
    value: str
    expected: str

    def describe(self, source: str) -> str:
        """One sentence naming the source, line (or row), column, value and expectation."""
        where = f"line {self.line}" if self.line is not None else f"row {self.row}"
        column = f", column {self.column!r}" if self.column is not None else ""
        return f"{source}, {where}{column}: expected {self.expected}, got {show_value(self.value)}."


def check_unique_columns(source: str, found: Sequence[str], where: str) -> None:
    """Raises a :class:`DataError` naming the first column name that ``found`` holds twice.

    Example:
        >>> check_unique_columns("log.csv", ["user_id", "item_id", "user_id"], "header (line 1)")
        Traceback (most recent call last):
        ...
        recsampled.errors.DataError: log.csv, header (line 1): column 'user_id' appears 2 ...
    """
    names = [str(name) for name in found]
    for name in dict.fromkeys(names):
        positions = [k + 1 for k, n in enumerate(names) if n == name]
        if len(positions) > 1:
            shown = ", ".join(map(str, positions[:-1])) + f" and {positions[-1]}"
            raise DataError(
                f"{source}, {where}: column {name!r} appears {len(positions)} times "
                f"(columns {shown}); rename one of them.",
                source=source,
            )


def missing_columns_error(
    source: str,
    found: Sequence[str],
    columns: Mapping[str, str],
    *,
    where: str,
    first_line: str | None = None,
    delimiter: str | None = None,
) -> DataError | None:
    """The error for required columns absent from ``found``, with suggestions; None if none."""
    missing = [(role, name) for role, name in columns.items() if name not in found]
    if not missing:
        return None
    guess = None
    if first_line is not None and delimiter is not None and len(found) == 1:
        guess = sniff_delimiter(first_line, delimiter)
    parts = []
    for role, name in missing:
        names = [f for f in found if _COLUMN_NAME.fullmatch(str(f))]  # never echo other text
        close = [] if guess else difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        close += [f for f in names if f.lower() == name.lower()]
        hint = f" (did you mean {close[-1]!r}?)" if close else ""
        parts.append(f"{role}_col={name!r}{hint}")
    message = (
        f"{source}, {where}: expected columns {list(columns.values())}; not found: "
        f"{', '.join(parts)}. Found {len(found)} columns: {shown_columns(found)}."
    )
    if guess is not None:
        message += (
            f" The line has no {delimiter!r} but splits on {guess!r}: pass delimiter={guess!r}."
        )
    if list(found) == ["userId", "movieId", "rating", "timestamp"]:
        message += " This is a MovieLens ratings.csv: pass format='movielens-latest'."
    elif found and all(_looks_numeric(f) for f in found):
        message += " The first line looks like data: if the file has no header, pass column_names."
    return DataError(message, source=source)


_COLUMN_NAME = re.compile(r"[\w .()\[\]/#%+-]{1,40}")


def shown_columns(found: Sequence[str], limit: int = 20) -> str:
    """The first ``limit`` column names for a message; a field that does not look like a column
    name (e.g. the first line of a file that is not a log, such as a password entry) is not
    echoed, only counted.

    Example:
        >>> shown_columns(["userId", "root:$6$s3cr3t$hash:19000"])
        "['userId', <1 field that does not look like a column name, not shown>]"
    """
    names = [str(f) for f in found][:limit]
    plain = [n for n in names if _COLUMN_NAME.fullmatch(n)]
    hidden = len(names) - len(plain)
    if not hidden:
        return str(plain)
    note = f"<{hidden} field{'s' if hidden > 1 else ''} that do{'' if hidden > 1 else 'es'} not "
    return (
        "["
        + ", ".join([repr(n) for n in plain] + [note + "look like a column name, not shown>"])
        + "]"
    )


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def sniff_delimiter(line: str, used: str) -> str | None:
    """The delimiter, other than ``used``, that splits ``line`` into the most fields."""
    counts = {d: len(line.split(d)) for d in _SNIFFED if d != used and d not in used}
    best = max(counts, key=counts.get)
    return best if counts[best] > 1 else None

"""Delimited text logs (CSV, TSV, MovieLens ``u.data`` and ``ratings.dat``) read with pyarrow.

A file is read in two passes at most:

1. **Fast**: typed columns (ids as int64 or text, numbers as int64 or float64), in 4 MiB
   blocks on one thread (see ``_BLOCK_SIZE``: this keeps the peak memory of loading low).
   If the file parses and every value is valid, this is the result.
2. **Careful**, only when the fast pass fails or finds anything unusual: every field as text,
   one thread, so that each malformed line is caught with its line number; then every value is
   checked (``recsampled.data._columns``) and the first bad row is raised, or all bad rows are
   dropped and reported.

The fast pass gives a result only when the careful pass would give the same one (the same
rules, in ``_columns``; checked in ``tests/data/test_readers.py``). Line numbers count the header
as line 1 and assume no quoted field spans two lines. Lines whose fields are all empty (blank
lines) are dropped and counted as ``empty_rows``. A two-character delimiter such as ``::`` is
read as ``:`` with empty "filler" fields between the real ones, which must stay empty.
"""

from __future__ import annotations

import codecs
import functools
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from recsampled._validation import received
from recsampled.data._columns import MAX_EXAMPLES, IdDtype, OnBadRows, RawLog, clean_columns
from recsampled.data._detect import detect_columns
from recsampled.data.errors import (
    BadRow,
    DataError,
    check_unique_columns,
    missing_columns_error,
    sniff_delimiter,
)

# 4 MiB blocks (Arrow's default is 1 MiB): at 10^7 rows, 1 MiB blocks leave the parser's freed
# buffers scattered among the column chunks, where the allocator cannot return them; the peak
# of loading was 3.3x the id columns with 1 MiB blocks and 2.4x with 4 MiB (bench_memory).
_BLOCK_SIZE = 4 << 20


def check_delimiter(delimiter: object) -> tuple[str, int]:
    """The character pyarrow splits on and the stride between real fields ("::" -> ":", 2)."""
    if not isinstance(delimiter, str) or not delimiter or len(set(delimiter)) != 1:
        raise ValueError(
            "`delimiter` must be one character, or one character repeated (like '::'). "
            f"{received('delimiter', delimiter)}"
        )
    if delimiter[0] in '"\r\n':
        raise ValueError(
            f"`delimiter` cannot be a quote or newline. {received('delimiter', delimiter)}"
        )
    return delimiter[0], len(delimiter)


@dataclass
class DelimitedFile:
    """One delimited text file and how to parse it."""

    path: Path
    source: str
    format: str
    delimiter: str
    column_names: tuple[str, ...] | None
    encoding: str

    def __post_init__(self) -> None:
        self.char, self.stride = check_delimiter(self.delimiter)
        self.header_lines = 0 if self.column_names else 1

    def _options(self, names: Sequence[str] | None, threads: bool) -> pcsv.ReadOptions:
        return pcsv.ReadOptions(
            column_names=names,
            use_threads=threads,
            encoding=self.encoding,
            block_size=_BLOCK_SIZE,
        )

    def _physical_names(self) -> list[str] | None:
        """Names of the fields pyarrow sees: with "::", a filler between two real fields."""
        if self.column_names is None:
            return None
        names = []
        for k, name in enumerate(self.column_names):
            names += [name] if k == 0 else [f"\0filler{k}"] * (self.stride - 1) + [name]
        return names

    def _first_line(self) -> str:
        with open(self.path, "rb") as f:
            line = f.readline(65536)
        return line.decode(self.encoding, errors="replace").rstrip("\r\n")

    def _schema(self) -> pa.Schema:
        """Column names, and types pyarrow infers from the first block."""
        if self.path.stat().st_size == 0:
            raise DataError(
                f"{self.source}: the file is empty (0 bytes); expected "
                + ("a header line and data rows." if self.header_lines else "data rows."),
                source=self.source,
            )
        for handler in (None, lambda row: "skip"):  # skip malformed lines only if needed
            try:
                schema = self._open(handler).schema
                schema.names  # noqa: B018 - decodes the header, which may not be UTF-8
                return schema
            except (pa.ArrowInvalid, UnicodeDecodeError) as e:
                if "Empty CSV" in str(e):
                    raise DataError(f"{self.source}: no data rows.", source=self.source) from e
                self._check_utf8()  # pyarrow's handler of malformed lines needs valid UTF-8
                if handler is not None or isinstance(e, UnicodeDecodeError):
                    raise DataError(
                        f"{self.source}: cannot be read as {self.format} with delimiter "
                        f"{self.delimiter!r} and encoding {self.encoding!r} ({e}).",
                        source=self.source,
                    ) from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _open(self, handler: Callable[[pcsv.InvalidRow], str] | None) -> pcsv.CSVStreamingReader:
        return pcsv.open_csv(
            self.path,
            read_options=self._options(self._physical_names(), threads=False),
            parse_options=pcsv.ParseOptions(delimiter=self.char, invalid_row_handler=handler),
        )

    def _check_utf8(self) -> None:
        """Raises a DataError at the first line that is not valid UTF-8, if that is the encoding."""
        if codecs.lookup(self.encoding).name != "utf-8":
            return  # pyarrow transcodes other encodings with Python's codec, which raises
        decoder = codecs.getincrementaldecoder("utf-8")()
        line, previous, previous_line = 1, b"", 1  # line: the line where `chunk` starts
        with pa.input_stream(self.path, compression="detect") as stream:
            while True:
                chunk = stream.read(1 << 20)
                pending = len(decoder.getstate()[0])  # bytes of `previous` not yet decoded
                try:
                    decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as e:
                    if chunk:
                        raise self._utf8_error(chunk, max(e.start - pending, 0), line) from e
                    raise self._utf8_error(previous, len(previous) - pending, previous_line) from e
                if not chunk:
                    return
                previous, previous_line = chunk, line
                line += chunk.count(b"\n")

    def _utf8_error(self, chunk: bytes, start: int, line: int) -> DataError:
        """The error for an invalid byte at ``chunk[start]``, where ``chunk`` starts on ``line``."""
        line += chunk.count(b"\n", 0, start)
        begin = chunk.rfind(b"\n", 0, start) + 1
        end = chunk.find(b"\n", start)
        text = chunk[begin : end if end >= 0 else len(chunk)].decode("utf-8", errors="replace")
        bad = BadRow(line - self.header_lines, line, None, text, "text in 'utf-8'")
        return DataError(
            f"{bad.describe(self.source)} Pass the file's encoding, e.g. encoding='latin-1'.",
            source=self.source,
            bad_row=bad,
        )

    def read(self, columns: Mapping[str, str], id_dtype: IdDtype, on_bad_rows: OnBadRows) -> RawLog:
        schema = self._schema()
        found = [n for n in schema.names if not n.startswith("\0filler")]
        check_unique_columns(
            self.source, found, "header (line 1)" if self.header_lines else "column_names"
        )
        columns = detect_columns(self.source, found, columns)
        error = missing_columns_error(
            self.source,
            found,
            columns,
            where="header (line 1)" if self.header_lines else "columns named by column_names",
            first_line=self._first_line() if self.header_lines else None,
            delimiter=self.delimiter,
        )
        if error is not None:
            raise error
        fast = self._read_fast(schema, columns, id_dtype)
        if fast is not None:
            return fast
        return self._read_careful(schema, columns, id_dtype, on_bad_rows)

    def _read_fast(
        self, schema: pa.Schema, columns: Mapping[str, str], id_dtype: IdDtype
    ) -> RawLog | None:
        """Typed, multithreaded read; None when the file needs the careful path."""
        names = self._physical_names() or []
        types = {n: pa.string() for n in names if n.startswith("\0filler")}
        for role, name in columns.items():
            inferred = schema.field(name).type
            if role in ("user", "item"):
                as_int = id_dtype == "int" or (id_dtype == "auto" and pa.types.is_int64(inferred))
                types[name] = pa.int64() if as_int else pa.string()
            elif pa.types.is_timestamp(inferred) or pa.types.is_date(inferred):
                types[name] = pa.string()  # date-time text: parsed in _columns
            else:
                types[name] = pa.int64() if pa.types.is_int64(inferred) else pa.float64()
        try:
            table = pcsv.read_csv(
                self.path,
                read_options=self._options(self._physical_names(), threads=False),
                parse_options=pcsv.ParseOptions(delimiter=self.char, ignore_empty_lines=False),
                convert_options=pcsv.ConvertOptions(
                    include_columns=list(columns.values()) + list(types.keys() - columns.values()),
                    column_types=types,
                    strings_can_be_null=False,
                ),
            )
        except (pa.ArrowInvalid, UnicodeDecodeError):
            return None
        rows = table.num_rows
        if rows == 0:
            raise DataError(f"{self.source}: no data rows.", source=self.source)
        fillers = [n for n in table.column_names if n.startswith("\0filler")]
        if fillers and pc.any(_any([pc.utf8_length(table.column(n)) for n in fillers])).as_py():
            return None
        raw = {role: (name, table.column(name)) for role, name in columns.items()}
        del table
        try:
            cleaned = clean_columns(
                self.source,
                raw,
                id_dtype=id_dtype,
                on_bad_rows="error",
                place=lambda p: (p + 1, p + 1 + self.header_lines),
            )
        except DataError:
            return None
        return RawLog(self.source, self.format, cleaned.columns, rows, 0, 0, ())

    def _read_careful(
        self,
        schema: pa.Schema,
        columns: Mapping[str, str],
        id_dtype: IdDtype,
        on_bad_rows: OnBadRows,
    ) -> RawLog:
        """Every field as text, one thread: finds each malformed line and each bad value."""
        self._check_utf8()
        malformed_lines = array("q")
        malformed: list[BadRow] = []
        expected = (
            f"{len(self.column_names or schema.names)} fields separated by {self.delimiter!r}"
        )

        def on_invalid(row: pcsv.InvalidRow) -> str:
            line = row.number
            malformed_lines.append(line)
            if len(malformed) < MAX_EXAMPLES:
                malformed.append(self._malformed(line, row.text, expected))
            return "skip"

        try:
            table = pcsv.read_csv(
                self.path,
                read_options=self._options(self._physical_names(), threads=False),
                parse_options=pcsv.ParseOptions(
                    delimiter=self.char, ignore_empty_lines=False, invalid_row_handler=on_invalid
                ),
                convert_options=pcsv.ConvertOptions(
                    column_types={name: pa.binary() for name in schema.names},
                    strings_can_be_null=False,
                ),
            )
        except (pa.ArrowInvalid, UnicodeDecodeError) as e:
            raise DataError(
                f"{self.source}: cannot be read as {self.format} with delimiter "
                f"{self.delimiter!r} and encoding {self.encoding!r} ({e}).",
                source=self.source,
            ) from e
        lines = self._lines(table.num_rows, np.asarray(malformed_lines, np.int64))
        rows_read = table.num_rows + len(malformed_lines)
        empty = _all([pc.equal(pc.binary_length(c), 0) for c in table.columns])
        empty_rows = int(pc.sum(empty).as_py() or 0)
        fillers = [n for n in schema.names if n.startswith("\0filler")]
        if fillers:  # "::" read as ":" leaves empty fillers; anything else is a malformed line
            filled = _any([pc.greater(pc.binary_length(table.column(n)), 0) for n in fillers])
            for p in np.flatnonzero(filled.to_numpy(zero_copy_only=False)):
                fields = [table.column(n)[int(p)].as_py() for n in schema.names]
                text = ":".join(f.decode(errors="replace") for f in fields)
                malformed.append(self._malformed(int(lines[p]), text, expected))
                malformed_lines.append(int(lines[p]))
            empty = pc.or_(empty, filled)
        if empty_rows or fillers:
            keep = pc.invert(empty)
            table = table.filter(keep)
            lines = lines[np.asarray(keep.to_numpy(zero_copy_only=False), bool)]
        if table.num_rows == 0 and not malformed_lines:
            raise DataError(f"{self.source}: no data rows.", source=self.source)
        raw = {
            role: (name, pc.cast(table.column(name), pa.string())) for role, name in columns.items()
        }
        del table
        cleaned = clean_columns(
            self.source,
            raw,
            id_dtype=id_dtype,
            on_bad_rows=on_bad_rows,
            place=lambda p: (int(lines[p]) - self.header_lines, int(lines[p])),
            malformed=tuple(sorted(malformed, key=lambda b: b.row)[:MAX_EXAMPLES]),
            num_malformed=len(malformed_lines),
        )
        return RawLog(
            self.source,
            self.format,
            cleaned.columns,
            rows_read,
            empty_rows,
            cleaned.rows_skipped,
            cleaned.bad_rows,
        )

    def _malformed(self, line: int, text: str, expected: str) -> BadRow:
        fields = len(text.split(self.delimiter))
        guess = sniff_delimiter(text, self.delimiter) if fields == 1 else None
        if guess is not None:
            expected += f" (the line splits on {guess!r}: pass delimiter={guess!r})"
        return BadRow(line - self.header_lines, line, None, text, expected)

    def _lines(self, num_rows: int, malformed: np.ndarray) -> np.ndarray:
        """The line of each parsed row, given the lines pyarrow rejected as malformed.

        Row ``p`` lies on line ``first + p + j``, with ``j`` the number of malformed lines
        before it: ``j = #{i : malformed[i] - first - i <= p}``.
        """
        first = self.header_lines + 1
        rows = np.arange(num_rows, dtype=np.int64)
        if malformed.size == 0:
            return rows + first
        malformed = np.sort(malformed)
        valid_before = malformed - first - np.arange(malformed.size)
        return rows + first + np.searchsorted(valid_before, rows, side="right")


def _all(conditions: list) -> pa.ChunkedArray:
    return pc.fill_null(functools.reduce(pc.and_, conditions), False)


def _any(conditions: list) -> pa.ChunkedArray:
    return pc.fill_null(
        functools.reduce(pc.or_, [pc.cast(c, pa.bool_()) for c in conditions]), False
    )

"""Batch recommendations: top-k for every user (or a given list) into one Parquet or CSV file.

:func:`write_recommendations` asks :meth:`Retriever.recommend` for ``chunk_size`` users at a
time and appends each chunk to the file (a Parquet row group, or CSV lines), so memory stays
bounded by one chunk whatever the number of users; a progress bar counts the users
(:func:`recsampled._progress.progress`). The file is written to a hidden temporary sibling and
renamed into place at the end (:func:`recsampled._io.write_file`): an interrupted run leaves no
partial file under the final name.

Columns (one row per user and rank; entries an approximate index could not fill are left out):

- ``user_id``: the original user id (int64 or string, as ``user_ids.npy``),
- ``rank``: 1 for the best item (int32),
- ``item_id``: the original item id (int64 or string, as ``item_ids.npy``),
- ``score``: float32, the artifact's metric (popularity counts for fallback rows).

Example:
    >>> import tempfile
    >>> import tensorflow as tf
    >>> from recsampled.index import Retriever, export_artifact
    >>> rng = np.random.default_rng(0)
    >>> tower = tf.keras.Sequential([tf.keras.layers.Embedding(3, 4)])
    >>> folder = tempfile.mkdtemp()
    >>> _ = export_artifact(folder + "/a", item_embeddings=rng.normal(size=(20, 4)),
    ...                     item_ids=np.arange(100, 120), query_model=tower,
    ...                     user_ids=[196, 186, 22], seen=[[0, 1], [], [5]], index="flat")
    >>> write_recommendations(Retriever.load(folder + "/a"), folder + "/recs.csv", k=5)
    15
    >>> pd.read_csv(folder + "/recs.csv").columns.tolist()
    ['user_id', 'rank', 'item_id', 'score']
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsampled import _io
from recsampled._progress import progress
from recsampled._validation import check_positive_int
from recsampled.index.retriever import Recommendations, Retriever

COLUMNS = ("user_id", "rank", "item_id", "score")
DEFAULT_CHUNK_SIZE = 10_000
Format = Literal["parquet", "csv"]


def output_format(path: str | os.PathLike) -> Format:
    """``"parquet"`` or ``"csv"`` by the file's suffix (``.parquet``/``.pq``, ``.csv``).

    Raises:
        ValueError: for another suffix.
    """
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise ValueError(
        "`output` must end in .parquet (or .pq) or .csv. "
        f"Received: output={str(path)!r} (suffix {suffix!r})."
    )


def long_frame(top: Recommendations) -> pd.DataFrame:
    """``top`` as the file's columns, one row per (user, rank) with an item."""
    batch, k = top.rows.shape
    keep = (top.rows >= 0).ravel()
    return pd.DataFrame(
        {
            "user_id": np.repeat(top.queries, k)[keep],
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), batch)[keep],
            "item_id": top.ids.ravel()[keep],
            "score": top.scores.ravel()[keep].astype(np.float32),
        }
    )


def _schema(retriever: Retriever) -> pa.Schema:
    def id_type(ids: np.ndarray) -> pa.DataType:
        return pa.string() if ids.dtype.kind == "U" else pa.int64()

    return pa.schema(
        [
            ("user_id", id_type(retriever.user_ids)),
            ("rank", pa.int32()),
            ("item_id", id_type(retriever.item_ids)),
            ("score", pa.float32()),
        ]
    )


@contextlib.contextmanager
def _appender(
    file: IO[bytes], fmt: Format, schema: pa.Schema
) -> Iterator[Callable[[pd.DataFrame], None]]:
    """Yields ``append(frame)``, which adds one chunk to ``file`` (a Parquet row group, or CSV
    lines after one header); the Parquet footer is written and the CSV text flushed on exit,
    leaving ``file`` itself open (its caller fsyncs it)."""
    if fmt == "parquet":
        with pq.ParquetWriter(file, schema) as writer:
            yield lambda frame: writer.write_table(
                pa.Table.from_pandas(frame, schema, preserve_index=False)
            )
        return
    text = io.TextIOWrapper(file, encoding="utf-8", newline="")
    text.write(",".join(COLUMNS) + "\n")
    try:
        yield lambda frame: frame.to_csv(text, header=False, index=False)
        text.flush()
    finally:
        text.detach()


def write_recommendations(
    retriever: Retriever,
    output: str | os.PathLike,
    *,
    k: int = 10,
    user_ids: object | None = None,
    exclude_seen: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Writes the top-k items of every user (or of ``user_ids``) to ``output``, in chunks.

    Args:
        retriever: the loaded artifact (with a query tower and user ids).
        output: a ``.parquet`` or ``.csv`` file, written atomically (module docstring).
        k: items per user.
        user_ids: original user ids (default: every user of the artifact, in index order).
        exclude_seen: leave out each user's seen items (as :meth:`Retriever.recommend`).
        chunk_size: users per ``recommend`` call and per written chunk (bounds memory).

    Returns:
        The number of rows written.

    Raises:
        ValueError: for a bad suffix or argument, or an artifact without users.
        UnknownUserError: for ``user_ids`` outside the vocabulary (unless the retriever was
            loaded with ``unknown_user="popular"``).
    """
    fmt = output_format(output)
    k = check_positive_int("k", k)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    if retriever.user_ids is None:
        raise ValueError(f"The artifact at {retriever.path} has no user ids to recommend for.")
    users = retriever.user_ids if user_ids is None else np.asarray(user_ids)
    schema = _schema(retriever)
    written = 0

    def write(file: IO[bytes]) -> None:
        nonlocal written
        with (
            _appender(file, fmt, schema) as append,
            progress(len(users), "recommending", unit="user") as bar,
        ):
            for start in range(0, len(users), chunk_size):
                part = users[start : start + chunk_size]
                frame = long_frame(retriever.recommend(part, k=k, exclude_seen=exclude_seen))
                append(frame)
                written += len(frame)
                bar.update(len(part))

    _io.write_file(output, write)
    return written

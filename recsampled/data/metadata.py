"""Item metadata: titles of the items of a catalogue, from MovieLens files or a CSV.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "items.csv"
    >>> _ = path.write_text("item,title\\n7,Seven\\n9,Nine\\n")
    >>> read_item_titles(path, [9, 8, 7]).tolist()
    ['Nine', '', 'Seven']
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd


def read_item_titles(path: str | os.PathLike, item_ids: object) -> np.ndarray:
    """Titles of ``item_ids`` from a metadata file, ``""`` for ids it does not list.

    Formats, by file name: ``*.item`` (MovieLens 100K ``u.item``: ``id|title|...``, Latin-1),
    ``movies.dat`` (MovieLens 1M: ``id::title::genres``, Latin-1); anything else is CSV (or TSV
    for ``.tsv``) with a header, the item id in the first column and a ``title`` column.
    Ids match as text, so integer and string ids both work.

    Args:
        path: the metadata file.
        item_ids: ``[num_items]`` original item ids (the artifact's rows).

    Returns:
        ``[num_items]`` unicode titles.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for an unreadable file, no ``title`` column, or no id in common.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Item metadata file not found: {path}")
    name = path.name.lower()
    try:
        if name.endswith(".item") or name == "movies.dat":
            separator = "|" if name.endswith(".item") else "::"
            frame = pd.read_csv(
                path,
                sep=separator if separator == "|" else "::",
                header=None,
                usecols=[0, 1],
                names=["id", "title"],
                dtype=str,
                encoding="latin-1",
                engine="python" if separator == "::" else "c",
                keep_default_na=False,
            )
        else:
            frame = pd.read_csv(
                path,
                sep="\t" if name.endswith(".tsv") else ",",
                dtype=str,
                keep_default_na=False,
            )
            if "title" not in frame.columns:
                raise ValueError(
                    f"{path} has no `title` column (columns: {list(frame.columns)}); a metadata "
                    "CSV needs the item id first and a `title` column."
                )
            frame = frame.rename(columns={frame.columns[0]: "id"})[["id", "title"]]
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, ValueError) and "title" in str(e) and "column" in str(e):
            raise
        raise ValueError(f"{path} cannot be read as item metadata: {e}") from e
    titles = dict(zip(frame["id"].str.strip(), frame["title"].str.strip(), strict=True))
    keys = [str(i) for i in np.asarray(item_ids).tolist()]
    found = [titles.get(key, "") for key in keys]
    if keys and not any(key in titles for key in keys):
        raise ValueError(
            f"{path} lists none of the {len(keys)} item ids (e.g. {keys[:3]}); its ids look "
            f"like {list(titles)[:3]}."
        )
    return np.array(found, dtype=str) if found else np.zeros(0, "U1")

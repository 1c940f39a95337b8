"""Structural checks of an artifact's parts on load: what a re-hashed, tampered part cannot hide.

Checksums catch accidents; an attacker (or a careless script) that rewrites a part can re-hash it.
These checks refuse parts that cannot be what an export writes, each naming the part:

- ``seen.npz``: CSR ``indptr`` of ``num_users + 1`` integers starting at 0, non-decreasing,
  ending at ``len(indices)``; integer item rows in ``[0, num_items)``; for artifacts that record
  ``sizes`` (written by this version on), each user's rows strictly increasing (exports write
  them sorted and distinct), which also catches most shifted ``indptr`` (a shift moves a sorted
  run across a row boundary).
- ``item_ids.npy`` / ``user_ids.npy``: 1-D, the manifest's count, distinct, of the manifest's
  ``id_dtypes`` (``int64`` or unicode).
- ``item_popularity.npy``: ``[num_items]`` finite numbers ``>= 0``.
- search parameters: only those the index type has (``efSearch`` for HNSW, ``nprobe`` for IVF,
  also ``k_factor_rf`` for IVF-PQ), integers in range: ``1 <= efSearch <= max(1024, N)``,
  ``1 <= nprobe <= nlist``, ``1 <= k_factor_rf <= 64``; and ``index.type`` names the index read.
- metric: a ``cosine`` index stores unit (or zero) vectors; a ``dot`` index whose vectors are all
  unit vectors must hold exactly the embeddings the manifest's ``embeddings_sha256`` names (else
  it is a cosine index relabelled); a training config with ``model.normalize`` agrees with it.
- the query model's id map (in its graph) gives every id of ``user_ids.npy`` its index, so
  swapped or shuffled user ids are refused.

What no check can see without a signature (``manifest.sig``): a consistent permutation of
``item_ids.npy`` (rows keep their vectors, the ids move), seen rows moved between users with
sorted runs kept, or a query tower and ``user_ids.npy`` rewritten together.

Example:
    >>> check_csr(Path("a"), np.array([0, 2, 3]), np.array([4, 7, 1]), num_users=2, num_items=8)
    >>> check_csr(Path("a"), np.array([0, 3, 2]), np.array([4, 7, 1]), num_users=2, num_items=8)
    Traceback (most recent call last):
    ...
    recsampled.errors.ArtifactError: The artifact at a is inconsistent: seen.npz's indptr must \
start at 0, never decrease and end at 3 (the number of entries).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
import tensorflow as tf

from recsampled import _io
from recsampled.errors import ArtifactError
from recsampled.index.build import EF_SEARCH_GRID, K_FACTOR_GRID, search_param_names
from recsampled.index.shards import reconstruct_rows

SEEN_PART = "seen.npz"
QUERY_MODEL_PART = "query_model"
#: Rows sampled for the metric check.
METRIC_SAMPLE = 1024
#: |‖v‖ - 1| below this counts as a unit vector.
UNIT_TOLERANCE = 1e-3
_TYPE_PARAMS = {
    "flat": (),
    "hnsw": ("efSearch",),
    "ivf": ("nprobe",),
    "ivfpq": ("nprobe", "k_factor_rf"),
}


def _mismatch(path: Path, part: str, message: str) -> ArtifactError:
    return ArtifactError(f"The artifact at {path} is inconsistent: {message}", path=path, part=part)


def check_csr(
    path: Path,
    indptr: np.ndarray,
    indices: np.ndarray,
    *,
    num_users: int,
    num_items: int,
    sorted_rows: bool = False,
) -> None:
    """Refuses a seen CSR that is not ``[num_users, num_items]`` (module docstring)."""
    part = SEEN_PART
    for name, array in (("indptr", indptr), ("indices", indices)):
        if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
            raise _mismatch(path, part, f"{part}'s {name} must be a 1-D integer array.")
    if indptr.shape != (num_users + 1,):
        raise _mismatch(
            path,
            part,
            f"{part} has {len(indptr) - 1} users, but manifest.json says num_users={num_users}.",
        )
    steps = np.diff(indptr)
    if indptr[0] != 0 or (steps < 0).any() or indptr[-1] != len(indices):
        raise _mismatch(
            path,
            part,
            f"{part}'s indptr must start at 0, never decrease and end at {len(indices)} "
            "(the number of entries).",
        )
    if len(indices) and (indices.min() < 0 or indices.max() >= num_items):
        raise _mismatch(path, part, f"{part} has item rows outside [0, {num_items}).")
    if sorted_rows and len(indices) > 1:
        rising = np.diff(indices.astype(np.int64)) > 0
        starts = np.zeros(len(indices), bool)
        starts[indptr[:-1][steps > 0]] = True  # the first entry of each non-empty row
        bad = ~rising & ~starts[1:]
        if bad.any():
            user = int(np.searchsorted(indptr, np.flatnonzero(bad)[0] + 1, side="right") - 1)
            raise _mismatch(
                path,
                part,
                f"{part}'s rows of user index {user} are not strictly increasing (exports write "
                "each user's seen rows sorted and distinct): the indptr or indices were changed.",
            )


def check_ids(
    path: Path, part: str, ids: np.ndarray, *, expected: int, field: str, dtype: str | None
) -> None:
    """Refuses an id part that is not ``expected`` distinct ids of ``dtype`` (int64 / string)."""
    if ids.ndim != 1 or len(ids) != expected:
        raise _mismatch(
            path,
            part,
            f"{part} holds {len(ids) if ids.ndim else 0} ids, but manifest.json says "
            f"{field}={expected}.",
        )
    if ids.dtype.kind not in "iU":
        raise _mismatch(path, part, f"{part} must hold integer or string ids, not {ids.dtype}.")
    found = "string" if ids.dtype.kind == "U" else "int64" if ids.dtype == np.int64 else None
    if dtype is not None and found != dtype:
        raise _mismatch(
            path, part, f"{part} holds {ids.dtype} ids, but manifest.json says {dtype} ids."
        )
    if not pd.Index(ids).is_unique:
        raise _mismatch(path, part, f"{part} holds repeated ids.")


def check_popularity(path: Path, part: str, popularity: np.ndarray, num_items: int) -> None:
    """Refuses popularity that is not ``[num_items]`` finite numbers ``>= 0``."""
    if popularity.shape != (num_items,):
        raise _mismatch(
            path,
            part,
            f"{part} has shape {popularity.shape}, but manifest.json says num_items={num_items}.",
        )
    if popularity.dtype.kind not in "iuf" or not np.isfinite(popularity).all():
        raise _mismatch(path, part, f"{part} must hold finite numbers (counts).")
    if (popularity < 0).any():
        raise _mismatch(path, part, f"{part} must hold counts >= 0.")


def check_search_params(
    path: Path, part: str, index: faiss.Index, index_type: str, params: Mapping[str, Any]
) -> None:
    """Refuses search parameters the index type does not have, or values out of range."""
    names = search_param_names(index)
    expected = _TYPE_PARAMS.get(index_type) if isinstance(index_type, str) else None
    if expected is None or set(expected) != set(names):
        raise _mismatch(
            path,
            part,
            f"manifest.json's index.type is {index_type!r}, but {part} is a "
            f"{type(faiss.downcast_index(index)).__name__} (search parameters {list(names)}).",
        )
    ivf = faiss.try_extract_index_ivf(index)
    bounds = {
        "efSearch": max(EF_SEARCH_GRID[-1], index.ntotal),
        "nprobe": ivf.nlist if ivf is not None else 0,
        "k_factor_rf": K_FACTOR_GRID[-1],
    }
    for name, value in params.items():
        if name not in names:
            raise _mismatch(
                path, part, f"search parameter {name!r} does not apply to a {index_type} index."
            )
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bounds[name]:
            raise _mismatch(
                path,
                part,
                f"search parameter `{name}` must be an integer in [1, {bounds[name]}]. "
                f"Received: {name}={value!r}.",
            )


def check_metric(path: Path, part: str, index: Any, manifest: Any, *, whole: bool = True) -> None:
    """Refuses a metric that contradicts the stored vectors or the training config (``whole``:
    ``index`` holds every item, so its vectors can be compared with ``embeddings_sha256``)."""
    metric = manifest.metric
    config = manifest.training_config
    model = config.get("model") if isinstance(config, dict) else None
    normalize = model.get("normalize") if isinstance(model, dict) else None
    if isinstance(normalize, bool) and (metric == "cosine") != normalize:
        raise _mismatch(
            path,
            "manifest.json",
            f"manifest.json says metric={metric!r}, but its training config says "
            f"model.normalize={normalize} (cosine exactly when the towers normalise).",
        )
    n = index.ntotal
    rows = np.unique(np.linspace(0, n - 1, min(n, METRIC_SAMPLE)).astype(np.int64))
    norms = np.linalg.norm(np.asarray(reconstruct_rows(index, rows), np.float64), axis=1)
    unit = np.abs(norms - 1) < UNIT_TOLERANCE
    if metric == "cosine" and not (unit | (norms < 1e-6)).all():
        row = int(rows[np.flatnonzero(~(unit | (norms < 1e-6)))[0]])
        raise _mismatch(
            path,
            part,
            f"manifest.json says metric='cosine', but {part} stores a vector of norm "
            f"{norms[rows == row][0]:.4g} at row {row} (a cosine index stores unit vectors).",
        )
    if metric == "dot" and whole and n > 1 and unit.all():
        vectors = reconstruct_rows(index, np.arange(n, dtype=np.int64))
        if _io.sha256_array(vectors) != manifest.embeddings_sha256:
            raise _mismatch(
                path,
                part,
                f"manifest.json says metric='dot', but {part} stores unit vectors that are not "
                "the embeddings of embeddings_sha256: a cosine index with a changed metric.",
            )


def check_user_map(path: Path, signature: Any, user_ids: np.ndarray, dtype: tf.DType) -> None:
    """The query model's id lookup maps every id of ``user_ids.npy`` to its position."""
    batch = 65536
    for start in range(0, len(user_ids), batch):
        ids = user_ids[start : start + batch]
        values = ids.astype(str) if dtype == tf.string else ids
        out = signature(user_ids=tf.constant(values, dtype))
        found = np.asarray(out["user_indices"])
        expected = np.arange(start, start + len(ids))
        if not np.array_equal(found, expected):
            wrong = int(np.flatnonzero(found != expected)[0])
            raise _mismatch(
                path,
                QUERY_MODEL_PART,
                f"the query model maps user id {ids[wrong].item()!r} to index "
                f"{int(found[wrong])}, but user_ids.npy holds it at {start + wrong}: the user ids "
                "were changed after export.",
            )

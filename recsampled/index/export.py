"""Export: item embeddings into a FAISS index, next to the query tower, id maps and a manifest.

:func:`embed_catalogue` embeds every item index with the candidate tower, in batches.
:func:`export_artifact` builds and tunes the index (:func:`recsampled.index.build_index`),
optionally splits it into shards (:mod:`recsampled.index.shards`), wraps the query tower (a saved
one, e.g. a run's ``towers/query``, or a callable saved first) in the TF-Serving query model that
maps original user ids (:mod:`recsampled.index.query_model`), and writes the artifact folder
atomically (:mod:`recsampled.index.artifact`). Its interface is explicit arrays
and models, not a training run directory, so that any training code can call it; the steps are
:func:`check_inputs`, :func:`tuning_queries`, ``build_index``, :func:`write_parts` and
:func:`make_manifest`.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import tensorflow as tf
from scipy import sparse

from recsampled import _io
from recsampled._validation import check_positive_int, received
from recsampled.data.interactions import user_item_matrix
from recsampled.index import artifact, integrity
from recsampled.index import query_model as serving_model
from recsampled.index.artifact import (
    INDEX_FILE,
    ITEM_IDS_FILE,
    ITEM_TITLES_FILE,
    POPULARITY_FILE,
    QUERY_MODEL_DIR,
    QUERY_MODEL_VERSION,
    SEEN_FILE,
    USER_IDS_FILE,
    IndexInfo,
    Manifest,
    RecallInfo,
)
from recsampled.index.build import (
    AUTO_EXACT_MAX_ITEMS,
    DEFAULT_TARGET_RECALL,
    MAX_TUNING_QUERIES,
    RECALL_K,
    BuiltIndex,
    IndexChoice,
    Metric,
    build_index,
    check_index_choice,
    check_metric,
    prepare_vectors,
)
from recsampled.index.integrity import part_size
from recsampled.index.served import ServedSearch, csr_rows
from recsampled.index.shards import shard_ranges, split_index
from recsampled.models import embed_ids, save_tower
from recsampled.models.saved import load_tower

logger = logging.getLogger(__name__)

QueryModel = Callable[[tf.Tensor], tf.Tensor] | str | os.PathLike
"""A query tower: a callable of ``[batch]`` int64 user indices, or a saved tower's folder."""


@dataclasses.dataclass(frozen=True)
class ArtifactInfo:
    """What :func:`export_artifact` wrote.

    Attributes:
        path: the artifact folder (final name).
        manifest: the manifest written into it.
    """

    path: Path
    manifest: Manifest


def embed_catalogue(
    candidate_model: Callable[[tf.Tensor], tf.Tensor], num_items: int, *, batch_size: int = 4096
) -> np.ndarray:
    """Embeds item indices ``0 .. num_items - 1`` with the candidate tower, in batches.

    Args:
        candidate_model: maps ``[batch]`` int64 item indices to ``[batch, embedding_dim]``.
        num_items: N, the catalogue size.
        batch_size: items per call.

    Returns:
        ``[num_items, embedding_dim]`` float32 item embeddings, row ``i`` for item index ``i``.

    Example:
        >>> tower = tf.keras.Sequential([tf.keras.layers.Embedding(100, 8)])
        >>> embed_catalogue(tower, 100, batch_size=32).shape
        (100, 8)
    """
    num_items = check_positive_int("num_items", num_items)
    return embed_ids(candidate_model, num_items, batch_size=batch_size, desc="embedding items")


@dataclasses.dataclass(frozen=True)
class ExportInputs:
    """The validated inputs of an export (see :func:`export_artifact` for each)."""

    embeddings: np.ndarray
    item_ids: np.ndarray
    user_ids: np.ndarray | None
    query_model: Callable[[tf.Tensor], tf.Tensor] | None
    query_model_dir: Path | None
    seen: tuple[np.ndarray, np.ndarray] | None
    popularity: np.ndarray | None
    titles: np.ndarray | None
    config: dict[str, Any]

    @property
    def num_users(self) -> int:
        return 0 if self.user_ids is None else len(self.user_ids)


def _as_ids(values: object, name: str) -> np.ndarray:
    """Distinct integer or string ids as an int64 or unicode array (storable without pickle)."""
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"`{name}` must be a 1-D sequence of ids. {received(name, values)}") from e
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D. Received: {name} with shape {array.shape}.")
    if array.dtype == object:
        if all(isinstance(v, str) for v in array):
            array = array.astype(str)
        elif all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in array):
            array = array.astype(np.int64)
    if np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.int64)
    elif array.dtype.kind != "U":
        raise ValueError(
            f"`{name}` must hold integer or string ids. Received: {name} of dtype {array.dtype}."
        )
    unique, counts = np.unique(array, return_counts=True)
    if len(unique) != len(array):
        raise ValueError(
            f"`{name}` must hold distinct ids. Received: {unique[counts > 1][:5].tolist()} "
            "(among others) more than once."
        )
    return array


def as_csr(seen: object, num_users: int, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Seen items per user as CSR ``(indptr [num_users + 1] int64, indices int32/int64)``.

    Args:
        seen: a SciPy sparse matrix ``[num_users, num_items]`` (any nonzero is seen), a tuple
            ``(indptr, indices)``, a mapping user index -> item rows, or a sequence (one entry per
            user) of item rows.
        num_users: rows of the result.
        num_items: item rows must lie in ``[0, num_items)``.

    Raises:
        ValueError: on another type, wrong sizes, or rows out of range.
    """
    if hasattr(seen, "tocsr"):
        matrix = seen.tocsr()
        if matrix.shape[0] != num_users or matrix.shape[1] != num_items:
            raise ValueError(
                f"`seen` must have shape [num_users={num_users}, num_items={num_items}]. "
                f"Received: a sparse matrix of shape {matrix.shape}."
            )
        indptr, indices = np.asarray(matrix.indptr), np.asarray(matrix.indices)
    elif isinstance(seen, tuple) and len(seen) == 2:
        indptr, indices = np.asarray(seen[0]), np.asarray(seen[1])
    elif isinstance(seen, Mapping) or isinstance(seen, Sequence):
        users, rows = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        entries = seen.items() if isinstance(seen, Mapping) else enumerate(seen)
        for user, items in entries:
            if isinstance(user, bool) or not isinstance(user, int | np.integer):
                raise ValueError(f"`seen` must be keyed by user index (int). Received: {user!r}.")
            if not 0 <= int(user) < num_users:
                raise ValueError(
                    f"`seen` keys must be user indices in [0, {num_users}). Received: {user}."
                )
            rows.append(np.asarray(items, dtype=np.int64).ravel())
            users.append(np.full(len(rows[-1]), int(user), np.int64))
        items = np.concatenate(rows)
        width = max(num_items, int(items.max(initial=-1)) + 1)  # out-of-range rows: checked below
        matrix = user_item_matrix(np.concatenate(users), items, num_users, width)
        indptr, indices = np.asarray(matrix.indptr), np.asarray(matrix.indices)
    else:
        raise ValueError(
            "`seen` must be a SciPy sparse matrix, a (indptr, indices) tuple, a mapping user index "
            f"-> item rows, or a sequence of item rows per user. {received('seen', seen)}"
        )
    if indptr.shape != (num_users + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
        raise ValueError(
            f"`seen` must have indptr of length num_users + 1 = {num_users + 1}, starting at 0, "
            f"non-decreasing. Received: indptr with shape {indptr.shape}."
        )
    if indices.shape != (int(indptr[-1]),) or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(
            f"`seen` must have {int(indptr[-1])} integer item rows. Received: indices with shape "
            f"{indices.shape}, dtype {indices.dtype}."
        )
    if len(indices) and (indices.min() < 0 or indices.max() >= num_items):
        raise ValueError(
            f"`seen` item rows must lie in [0, num_items={num_items}). Received: rows in "
            f"[{indices.min()}, {indices.max()}]."
        )
    dtype = np.int32 if num_items < 2**31 else np.int64
    # Canonical rows (sorted, distinct): the loader checks it (recsampled.index.checks).
    matrix = sparse.csr_matrix(
        (np.ones(len(indices), np.int8), indices.astype(np.int64), indptr.astype(np.int64)),
        shape=(num_users, num_items),
    )
    matrix.sum_duplicates()
    return matrix.indptr.astype(np.int64), matrix.indices.astype(dtype)


def _popularity(values: object, num_items: int) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (num_items,) or not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(
            f"`item_popularity` must be [num_items={num_items}] finite counts >= 0. "
            f"Received: shape {array.shape}."
        )
    return array


def _titles(values: object, num_items: int) -> np.ndarray:
    array = np.asarray(values, dtype=object)
    if array.shape != (num_items,) or not all(isinstance(v, str) for v in array):
        raise ValueError(
            f'`item_titles` must be [num_items={num_items}] strings ("" where unknown). '
            f"Received: shape {array.shape}."
        )
    return array.astype(str) if num_items else np.zeros(0, "U1")


def _versions() -> dict[str, str]:
    import recsampled

    return {
        "recsampled": getattr(recsampled, "__version__", "unknown"),
        "faiss": faiss.__version__,
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
    }


def _query_model(query_model: QueryModel | None) -> tuple[Any, Path | None]:
    """The callable query tower and, for a saved tower, its folder (copied as is)."""
    if query_model is None:
        return None, None
    if isinstance(query_model, str | os.PathLike):
        folder = Path(query_model)
        if not folder.is_dir():
            raise ValueError(
                "`query_model` must be a callable or a tower SavedModel folder. "
                f"Received: query_model={str(folder)!r} (not a folder)."
            )
        return load_tower(folder), folder
    if not callable(query_model):
        raise ValueError(f"`query_model` must be callable. {received('query_model', query_model)}")
    return query_model, None


def check_inputs(
    *,
    item_embeddings: object,
    item_ids: object,
    query_model: QueryModel | None,
    user_ids: object | None,
    seen: object | None,
    item_popularity: object | None,
    item_titles: object | None,
    training_config: object | None,
) -> ExportInputs:
    """Validates the inputs of :func:`export_artifact`; raises ``ValueError`` naming the one at
    fault."""
    embeddings = prepare_vectors(item_embeddings, "dot")  # validated float32, not normalised
    num_items, dim = embeddings.shape
    items = _as_ids(item_ids, "item_ids")
    if len(items) != num_items:
        raise ValueError(
            f"`item_ids` must have one id per row of `item_embeddings` ({num_items}). "
            f"Received: {len(items)} ids."
        )
    if (query_model is not None or seen is not None) and user_ids is None:
        raise ValueError(
            "`user_ids` (the user vocabulary, in index order) is required with `query_model` or "
            "`seen`. Received: user_ids=None."
        )
    users = _as_ids(user_ids, "user_ids") if user_ids is not None else None
    num_users = 0 if users is None else len(users)
    model, folder = _query_model(query_model)
    if model is not None and num_users:
        probe = embed_ids(model, np.arange(min(num_users, 2)))
        if probe.shape[1] != dim:
            raise ValueError(
                f"`query_model` must output embeddings of the items' dimension ({dim}). "
                f"Received: query embeddings of dimension {probe.shape[1]}."
            )
    return ExportInputs(
        embeddings=embeddings,
        item_ids=items,
        user_ids=users,
        query_model=model,
        query_model_dir=folder,
        seen=as_csr(seen, num_users, num_items) if seen is not None else None,
        popularity=_popularity(item_popularity, num_items) if item_popularity is not None else None,
        titles=_titles(item_titles, num_items) if item_titles is not None else None,
        config=artifact.as_json_config(training_config),
    )


def tuning_queries(
    inputs: ExportInputs, index: IndexChoice, sample_queries: object | None, seed: int
) -> tuple[object | None, str | None, ServedSearch | None]:
    """The queries that tune an ANN index, where they came from, and how to search them.

    Given queries are used as they are (``"sample_queries"``, plain top-k); otherwise, when the
    index is approximate and there is a query tower, up to :data:`MAX_TUNING_QUERIES` random users
    through it (``"query_model"``), searched as they are served: with ``seen``, their seen items
    left out (a :class:`~recsampled.index.served.ServedSearch`); else None (``build_index`` then
    uses item embeddings).
    """
    if sample_queries is not None:
        return sample_queries, "sample_queries", None
    num_items = len(inputs.item_ids)
    wants_ann = index != "flat" and not (index == "auto" and num_items < AUTO_EXACT_MAX_ITEMS)
    if inputs.query_model is None or not inputs.num_users or not wants_ann:
        return None, None, None
    rng = np.random.default_rng(seed)
    users = inputs.num_users
    chosen = np.sort(rng.choice(users, min(users, MAX_TUNING_QUERIES), replace=False))
    queries = embed_ids(inputs.query_model, chosen, desc="embedding sample queries")
    if inputs.seen is None:
        return queries, "query_model", None
    indptr, indices = inputs.seen
    lengths, rows = csr_rows(indptr, indices, chosen)
    served = ServedSearch(np.concatenate([[0], np.cumsum(lengths)]), rows)
    return queries, "query_model", served


def write_index(folder: Path, inputs: ExportInputs, built: BuiltIndex, shards: int) -> None:
    """Writes ``index.faiss``, or with ``shards > 1`` the shard files of successive rows."""
    if shards == 1:
        faiss.write_index(built.index, str(folder / INDEX_FILE))
        return
    vectors = prepare_vectors(inputs.embeddings, built.metric)  # as stored in the index
    for number, shard in enumerate(split_index(built.index, vectors, shards)):
        faiss.write_index(shard, str(folder / artifact.shard_file(number, shards)))


def write_query_model(folder: Path, inputs: ExportInputs) -> None:
    """Writes ``query_model/1/``: the tower (copied from its SavedModel) behind the id lookup."""
    target = folder / QUERY_MODEL_DIR / QUERY_MODEL_VERSION
    tower_dir = inputs.query_model_dir
    temporary = None
    if tower_dir is None:  # a callable: saved once as a tower SavedModel, then wrapped
        logger.info("saving the query tower (SavedModel)")
        temporary = folder / ".query_tower"
        try:
            tower_dir = save_tower(inputs.query_model, temporary, name="query_tower")
        except ValueError as e:
            raise ValueError(f"`query_model` could not be saved: {e}") from e
    logger.info("writing the TF-Serving query model (user ids -> embeddings) from %s", tower_dir)
    serving_model.save_query_model(tower_dir, inputs.user_ids, target)
    if temporary is not None:
        shutil.rmtree(temporary)


def write_parts(folder: Path, inputs: ExportInputs, built: BuiltIndex, *, shards: int = 1) -> None:
    """Writes the index, the id maps, the optional parts and the query model into ``folder``."""
    write_index(folder, inputs, built, shards)
    artifact.save_npy(folder / ITEM_IDS_FILE, inputs.item_ids)
    if inputs.user_ids is not None:
        artifact.save_npy(folder / USER_IDS_FILE, inputs.user_ids)
    if inputs.seen is not None:
        artifact.save_csr(folder / SEEN_FILE, *inputs.seen)
    if inputs.popularity is not None:
        artifact.save_npy(folder / POPULARITY_FILE, inputs.popularity)
    if inputs.titles is not None:
        artifact.save_npy(folder / ITEM_TITLES_FILE, inputs.titles)
    if inputs.query_model is not None:
        write_query_model(folder, inputs)
    _io.fsync_tree(folder)


def make_manifest(
    folder: Path,
    inputs: ExportInputs,
    built: BuiltIndex,
    *,
    requested: IndexChoice,
    query_source: str | None,
    excludes_seen: bool = False,
) -> Manifest:
    """The manifest of the parts written into ``folder`` (their checksums and sizes included);
    ``excludes_seen``: the recall was measured on served lists (seen items left out)."""
    source = built.query_source
    if source == "sample_queries" and query_source is not None:
        source = query_source
    num_items, dim = inputs.embeddings.shape
    shards = []
    if not (folder / INDEX_FILE).exists():
        files = sorted(p.name for p in folder.iterdir() if artifact.SHARD_PATTERN.fullmatch(p.name))
        for file, rows in zip(files, shard_ranges(int(num_items), len(files)), strict=True):
            digest = _io.sha256_part(folder / file)
            shards.append(
                {"file": file, "start": rows.start, "num_items": len(rows), "sha256": digest}
            )
    index_files = [s["file"] for s in shards] or [INDEX_FILE]
    parts = index_files + [
        p for p in artifact.KNOWN_PARTS if p != INDEX_FILE and (folder / p).exists()
    ]
    return Manifest(
        schema_version=artifact.SCHEMA_VERSION,
        format=artifact.FORMAT_NAME,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        num_items=int(num_items),
        num_users=int(inputs.num_users),
        embedding_dim=int(dim),
        metric=built.metric,
        index=IndexInfo(
            type=built.index_type,
            factory=built.factory,
            search_params=dict(built.search_params),
            requested=requested,
            build_seconds=round(built.build_seconds, 3),
            size_bytes=sum((folder / file).stat().st_size for file in index_files),
            shards=shards,
        ),
        recall=RecallInfo(
            k=built.recall_k,
            value=built.recall,
            target=built.target_recall,
            reached=built.target_reached,
            num_queries=built.num_queries,
            query_source=source,
            trials=[dataclasses.asdict(t) for t in built.trials],
            excludes_seen=excludes_seen,
        ),
        embeddings_sha256=_io.sha256_array(inputs.embeddings),
        files={part: _io.sha256_part(folder / part) for part in parts},
        training_config=inputs.config,
        versions=_versions(),
        query_model=(
            serving_model.describe(inputs.user_ids, int(dim)) if inputs.query_model else {}
        ),
        sizes={part: part_size(folder, part) for part in parts},
        id_dtypes={
            name: "string" if ids.dtype.kind == "U" else "int64"
            for name, ids in ((ITEM_IDS_FILE, inputs.item_ids), (USER_IDS_FILE, inputs.user_ids))
            if ids is not None
        },
    )


def export_artifact(
    output_dir: str | os.PathLike,
    *,
    item_embeddings: object,
    item_ids: Sequence[Any] | np.ndarray,
    query_model: QueryModel | None = None,
    user_ids: Sequence[Any] | np.ndarray | None = None,
    metric: Metric = "dot",
    index: IndexChoice = "auto",
    sample_queries: object | None = None,
    seen: object | None = None,
    item_popularity: object | None = None,
    item_titles: Sequence[str] | np.ndarray | None = None,
    training_config: Mapping[str, Any] | None = None,
    target_recall: float = DEFAULT_TARGET_RECALL,
    shards: int = 1,
    overwrite: bool = False,
    seed: int = 0,
    key: bytes | str | None = None,
) -> ArtifactInfo:
    """Builds the FAISS index and writes the artifact folder atomically.

    Everything is written into a hidden temporary sibling of ``output_dir`` and renamed into
    place at the end, so a killed export never leaves a loadable folder under ``output_dir``.
    Progress goes to the ``recsampled`` logger.

    Args:
        output_dir: the artifact folder to create.
        item_embeddings: ``[num_items, embedding_dim]`` float item embeddings (row ``i`` = item
            index ``i``), e.g. from :func:`embed_catalogue`.
        item_ids: ``[num_items]`` distinct original item ids (int or str), in row order.
        query_model: maps ``[batch]`` int64 user indices to ``[batch, embedding_dim]`` query
            embeddings, saved as a SavedModel; or the folder of a tower SavedModel
            (:func:`recsampled.models.save_tower`, a run's ``towers/query``), wrapped as saved.
            Either becomes ``query_model/1/``, which maps original user ids in the graph
            (:mod:`recsampled.index.query_model`). Optional (without it, only ``similar_items``
            and ``search`` work after loading).
        user_ids: ``[num_users]`` distinct original user ids in index order (the query tower's
            vocabulary); required with ``query_model`` or ``seen``.
        metric: ``"dot"`` or ``"cosine"``, the score the model was trained with.
        index: ``"flat"``, ``"hnsw"``, ``"ivf"``, ``"ivfpq"`` or ``"auto"`` (exact below
            ``AUTO_EXACT_MAX_ITEMS`` items, else IVF-Flat tuned to ``target_recall``).
        sample_queries: ``[num_queries, embedding_dim]`` real query embeddings to tune and measure
            ANN recall; by default up to 1000 random users through ``query_model``.
        seen: item rows each user has seen, for ``exclude_seen`` (see :func:`as_csr`; e.g.
            ``Interactions.user_items()``).
        item_popularity: ``[num_items]`` interaction counts, for the popular-items fallback.
        item_titles: ``[num_items]`` titles in row order (``""`` where unknown), shown by
            ``recsampled recommend`` and :meth:`Recommendations.to_frame`.
        training_config: the training configuration (a mapping or dataclass), stored as JSON.
        target_recall: recall@10 against exact search the ANN index must reach.
        shards: split the index into this many shard files of successive rows, searched together
            (:class:`recsampled.index.shards.ShardedIndex`); 1 writes one ``index.faiss``. Flat
            and IVF shards (sharing the trained quantizer) return what one index returns.
        overwrite: replace an existing artifact at ``output_dir``.
        seed: seeds the samples used for training and tuning.
        key: sign the manifest with HMAC-SHA256 under this key (``manifest.sig``; at least 16
            bytes); default: the environment variable ``RECSAMPLED_ARTIFACT_KEY``, if set.
            Load it with the same key to have every part verified against it.

    Returns:
        An :class:`ArtifactInfo` with the final path and the manifest.

    Raises:
        ValueError: on inconsistent inputs (counts, dimensions, ids).
        FileExistsError: if ``output_dir`` exists and ``overwrite`` is false.

    Example:
        >>> items = np.random.default_rng(0).normal(size=(50, 4)).astype("float32")
        >>> info = export_artifact("/tmp/artifact", item_embeddings=items,
        ...                        item_ids=[f"item{i}" for i in range(50)], index="flat",
        ...                        overwrite=True)
        >>> info.manifest.num_items
        50
    """
    metric = check_metric(metric)
    index = check_index_choice(index)
    shards = check_positive_int("shards", shards)
    integrity.resolve_key(key)  # a bad key fails before the work
    artifact.check_output_dir(output_dir, overwrite=overwrite)  # fail before minutes of work
    inputs = check_inputs(
        item_embeddings=item_embeddings, item_ids=item_ids, query_model=query_model,
        user_ids=user_ids, seen=seen, item_popularity=item_popularity, item_titles=item_titles,
        training_config=training_config,
    )  # fmt: skip
    if shards > len(inputs.item_ids):
        raise ValueError(
            f"`shards` must be an integer in [1, num_items={len(inputs.item_ids)}]. "
            f"Received: shards={shards}."
        )
    queries, query_source, served = tuning_queries(inputs, index, sample_queries, seed)
    built = build_index(
        inputs.embeddings, index=index, metric=metric, sample_queries=queries,
        target_recall=target_recall, recall_k=RECALL_K, seed=seed, searcher=served,
    )  # fmt: skip
    logger.info(
        "index %s %s: recall@%d=%.4f (target %s, %d queries)", built.factory,
        built.search_params, built.recall_k, built.recall, built.target_recall, built.num_queries,
    )  # fmt: skip
    with artifact.atomic_directory(output_dir, overwrite=overwrite) as folder:
        write_parts(folder, inputs, built, shards=shards)
        manifest = make_manifest(
            folder, inputs, built, requested=index, query_source=query_source,
            excludes_seen=served is not None and built.num_queries > 0,
        )  # fmt: skip
        artifact.write_manifest(folder, manifest)
        artifact.sign_artifact(folder, key)
    final = Path(output_dir).absolute()
    logger.info("wrote %s", final)
    return ArtifactInfo(path=final, manifest=manifest)

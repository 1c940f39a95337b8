"""The artifact folder: its parts, its manifest, its atomic write and the checks on load.

Layout of ``ARTIFACT_DIR`` (only the manifest, the index and the item ids are always there)::

    manifest.json        written last: counts, dimension, metric, index, recall, checksums, config
    index.faiss          FAISS index; row i scores item i (inner product)
    index-00000-of-0000N.faiss ...  instead of index.faiss with ``shards=N``: shard s holds the
                         successive rows ``manifest.index.shards[s]["start"]`` onwards
    item_ids.npy         [num_items] original item ids (int64 or unicode), in row order
    user_ids.npy         [num_users] original user ids in index order: the query tower's vocabulary
    query_model/1/       TF-Serving SavedModel (version 1; :mod:`recsampled.index.query_model`):
                         ``serving_default``: original user ids -> embeddings, known, user_indices;
                         ``by_user_index`` and ``__call__``: int64 user indices -> embeddings
    seen.npz             CSR ``indptr`` [num_users + 1], ``indices``: item rows each user has seen
    item_popularity.npy  [num_items] interaction counts, for the popular-items fallback
    item_titles.npy      [num_items] item titles (unicode, "" where unknown), in row order

**Nothing is lost.** :func:`atomic_directory` (:func:`recsampled._io.atomic_directory`) writes
the parts into a hidden sibling folder ``.{name}.tmp-{pid}-{token}``, fsyncs every file and the
folder, and only then renames it to the final name (``rename(2)`` is atomic within a filesystem).
An existing artifact is replaced only with ``overwrite=True``: it is renamed to
``.{name}.old-{pid}-{token}``, the new folder is renamed into place, and the old one is deleted.
A process killed at any moment therefore leaves under the final name either the previous complete
artifact, or the new complete one, or (killed between the two renames of an overwrite) nothing,
with the previous artifact intact under the backup name, which the loader's error points to.
Temporary folders left by dead processes are removed by the next export to the same name.

**Checks on load** (:func:`read_manifest`, :func:`check_files`): with a key, ``manifest.sig``
matches the manifest's bytes before anything else is read (:mod:`recsampled.index.integrity`);
the folder and every part exist as regular files inside it (no symlinks, devices or FIFOs), of the
size the manifest records; each file's sha256 equals the manifest's (so a truncated or bit-flipped
index is named before FAISS reads it); the manifest's counts and dimension agree with the index,
the id maps, the seen matrix, the popularity and the query tower, whose graph holds only pure
tensor ops (:func:`recsampled.models.saved.check_saved_model`). Every failure is an
:class:`ArtifactError` whose ``part`` names the culprit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recsampled import _io
from recsampled.errors import ArtifactError, ArtifactNotFoundError
from recsampled.index import integrity

#: 2: ``query_model/1/`` (TF-Serving layout, ids mapped in the graph), optional index shards.
#: Version 1 artifacts (``query_model/`` taking user indices) still load.
SCHEMA_VERSION = 2
FORMAT_NAME = "recsampled.index"

MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.faiss"
ITEM_IDS_FILE = "item_ids.npy"
USER_IDS_FILE = "user_ids.npy"
QUERY_MODEL_DIR = "query_model"
#: The one model version an export writes (TF Serving serves ``query_model/<version>/``).
QUERY_MODEL_VERSION = "1"
SEEN_FILE = "seen.npz"
POPULARITY_FILE = "item_popularity.npy"
ITEM_TITLES_FILE = "item_titles.npy"
SIGNATURE_FILE = integrity.SIGNATURE_FILE
#: The largest ``manifest.json`` read (bytes; the training config is its largest field).
MAX_MANIFEST_BYTES = 64 << 20
#: Parts that every artifact has (beside the manifest): the index is ``index.faiss`` or shards.
REQUIRED_PARTS = (ITEM_IDS_FILE,)
SHARD_PATTERN = re.compile(r"index-(\d{5})-of-(\d{5})\.faiss")


def shard_file(shard: int, num_shards: int) -> str:
    """The file name of index shard ``shard`` of ``num_shards`` (counted from 0).

    Example:
        >>> shard_file(0, 4)
        'index-00000-of-00004.faiss'
    """
    return f"index-{shard:05d}-of-{num_shards:05d}.faiss"


#: Every part an artifact may list in its manifest.
KNOWN_PARTS = (
    INDEX_FILE,
    ITEM_IDS_FILE,
    USER_IDS_FILE,
    QUERY_MODEL_DIR,
    SEEN_FILE,
    POPULARITY_FILE,
    ITEM_TITLES_FILE,
)


@dataclasses.dataclass(frozen=True)
class IndexInfo:
    """How the FAISS index was built.

    Attributes:
        type: ``"flat"``, ``"hnsw"``, ``"ivf"`` or ``"ivfpq"``.
        factory: the ``faiss.index_factory`` string (metric: inner product).
        search_params: FAISS search parameters applied on load, e.g. ``{"efSearch": 64}``.
        requested: the ``index`` argument of the export (``"auto"`` or the type).
        build_seconds: time to train the index and add the items.
        size_bytes: size of ``index.faiss`` (of all shard files together with shards).
        shards: empty for one ``index.faiss``; else one entry per shard, in order:
            ``{"file", "start", "num_items", "sha256"}`` (rows ``start .. start + num_items - 1``
            of the catalogue, searched together through ``faiss.IndexShards``).
    """

    type: str
    factory: str
    search_params: dict[str, int]
    requested: str
    build_seconds: float
    size_bytes: int
    shards: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class RecallInfo:
    """Recall@k of the index against exact search, measured at export.

    Attributes:
        k: the k of the recall.
        value: the measured recall (1.0 for exact search).
        target: the recall asked for.
        reached: ``value >= target``.
        num_queries: queries it was measured on (0 for exact search).
        query_source: ``"sample_queries"`` (given), ``"query_model"`` (random users through the
            query tower), ``"item_embeddings"`` (no queries available) or ``"exact"``.
        trials: every configuration tried: ``{"params", "recall", "queries_per_second"}``.
        excludes_seen: the recall is that of the served lists (top-k after each sample user's
            seen items are left out, fetched as :class:`~recsampled.index.Retriever` fetches
            them) against exact search with the same exclusion (false: plain top-k).
    """

    k: int
    value: float
    target: float
    reached: bool
    num_queries: int
    query_source: str
    trials: list[dict[str, Any]]
    excludes_seen: bool = False


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The contents of ``manifest.json``.

    Attributes:
        schema_version: :data:`SCHEMA_VERSION` at write time.
        format: :data:`FORMAT_NAME`.
        created: UTC time of the export, ISO 8601.
        num_items: N, rows of the index and of ``item_ids.npy``.
        num_users: users in the vocabulary (0 without a query tower or user ids).
        embedding_dim: D of the index and of the query tower's output.
        metric: ``"dot"`` or ``"cosine"`` (the index stores normalised vectors for cosine).
        index: see :class:`IndexInfo`.
        recall: see :class:`RecallInfo`.
        embeddings_sha256: sha256 of the item embeddings as given (``[N, D]`` float32, C order,
            before normalisation): identifies the embeddings the index was built from.
        files: part name -> sha256 of the file (of the folder's files, for ``query_model``).
        training_config: the training configuration, as given (JSON).
        versions: library versions at export (recsampled, faiss, tensorflow, numpy).
        query_model: how to call ``query_model/`` (empty in version 1 artifacts and without a
            query tower): ``{"path", "user_id_dtype", "signatures", "unknown_users"}``.
        sizes: part name -> its size in bytes (a folder: its files together), checked before
            a part is read (empty in artifacts written before it existed).
        id_dtypes: ``{"item_ids": ..., "user_ids": ...}``: ``"int64"`` or ``"string"``, checked
            against the id parts (empty in older artifacts).
    """

    schema_version: int
    format: str
    created: str
    num_items: int
    num_users: int
    embedding_dim: int
    metric: str
    index: IndexInfo
    recall: RecallInfo
    embeddings_sha256: str
    files: dict[str, str]
    training_config: dict[str, Any]
    versions: dict[str, str]
    query_model: dict[str, Any] = dataclasses.field(default_factory=dict)
    sizes: dict[str, int] = dataclasses.field(default_factory=dict)
    id_dtypes: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON-able data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object, *, path: str | os.PathLike = ".") -> Manifest:
        """Parses and validates manifest data; raises :class:`ArtifactError` naming the field."""

        def bad(message: str) -> ArtifactError:
            return ArtifactError(
                f"The manifest of the artifact at {path} is invalid: {message}",
                path=path,
                part=MANIFEST_FILE,
            )

        if not isinstance(data, dict):
            raise bad(f"expected a JSON object, found {type(data).__name__}.")
        if data.get("format") != FORMAT_NAME:
            raise bad(f"`format` must be {FORMAT_NAME!r}. Received: {data.get('format')!r}.")
        version = data.get("schema_version")
        if not isinstance(version, int) or version < 1:
            raise bad(f"`schema_version` must be a positive integer. Received: {version!r}.")
        if version > SCHEMA_VERSION:
            raise bad(
                f"schema_version {version} is newer than this recsampled understands "
                f"({SCHEMA_VERSION}); upgrade recsampled to load it."
            )
        values = _fields(cls, data, bad)
        for name, section in (("index", IndexInfo), ("recall", RecallInfo)):
            if not isinstance(values[name], dict):
                raise bad(f"`{name}` must be an object.")
            values[name] = section(**_fields(section, values[name], bad, prefix=f"{name}."))
        for name in ("num_items", "num_users", "embedding_dim"):
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(f"`{name}` must be a non-negative integer. Received: {value!r}.")
        if values["num_items"] == 0 or values["embedding_dim"] == 0:
            raise bad("`num_items` and `embedding_dim` must be positive.")
        if values["metric"] not in ("dot", "cosine"):
            raise bad(f"`metric` must be 'dot' or 'cosine'. Received: {values['metric']!r}.")
        files = values["files"]
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise bad("`files` must map part names to sha256 strings.")
        unknown = sorted(p for p in set(files) - set(KNOWN_PARTS) if not SHARD_PATTERN.fullmatch(p))
        if unknown:
            raise bad(
                f"`files` lists unknown parts {unknown}; known parts: {KNOWN_PARTS} and shards "
                "index-SSSSS-of-NNNNN.faiss."
            )
        indexes = _check_shards(values["index"].shards, files, values["num_items"], bad)
        missing = [part for part in (*indexes, *REQUIRED_PARTS) if part not in files]
        if missing:
            raise bad(f"`files` must list {[*indexes, *REQUIRED_PARTS]}; {missing} missing.")
        if not isinstance(values["index"].search_params, dict):
            raise bad("`index.search_params` must be an object.")
        if not isinstance(values.get("query_model", {}), dict):
            raise bad("`query_model` must be an object.")
        _check_sizes_and_dtypes(values, files, bad)
        return cls(**values)


def _check_sizes_and_dtypes(
    values: dict, files: dict[str, str], bad: Callable[[str], ArtifactError]
) -> None:
    sizes = values.get("sizes", {})
    if not isinstance(sizes, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in sizes.values()
    ):
        raise bad("`sizes` must map part names to sizes in bytes (non-negative integers).")
    if sizes and set(sizes) != set(files):
        raise bad(f"`sizes` must list the parts of `files`. Received: {sorted(sizes)}.")
    dtypes = values.get("id_dtypes", {})
    if not isinstance(dtypes, dict) or not all(
        k in (ITEM_IDS_FILE, USER_IDS_FILE) and v in ("int64", "string") for k, v in dtypes.items()
    ):
        raise bad(
            f"`id_dtypes` must map {ITEM_IDS_FILE!r} / {USER_IDS_FILE!r} to 'int64' or "
            f"'string'. Received: {dtypes!r}."
        )


def _fields(
    cls: type, data: dict, bad: Callable[[str], ArtifactError], *, prefix: str = ""
) -> dict:
    """The fields of dataclass ``cls`` in ``data``: those without a default are required."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown and prefix:  # a section's fields are exact; extra top-level fields are ignored
        raise bad(f"unknown fields {[prefix + u for u in unknown]}; expected {list(fields)}.")
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = data[name]
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise bad(f"the field `{prefix}{name}` is missing.")
    return values


def _check_shards(
    shards: object, files: dict[str, str], num_items: int, bad: Callable[[str], ArtifactError]
) -> list[str]:
    """The index files the manifest promises; shards must tile the rows ``0 .. num_items - 1``."""
    if not isinstance(shards, list):
        raise bad("`index.shards` must be a list.")
    if not shards:
        return [INDEX_FILE]
    start = 0
    for number, shard in enumerate(shards):
        keys = {"file", "start", "num_items", "sha256"}
        if not isinstance(shard, dict) or set(shard) != keys:
            raise bad(f"`index.shards[{number}]` must be an object with the fields {sorted(keys)}.")
        if shard["file"] != shard_file(number, len(shards)):
            raise bad(
                f"`index.shards[{number}].file` must be {shard_file(number, len(shards))!r}. "
                f"Received: {shard['file']!r}."
            )
        if shard["start"] != start or not isinstance(shard["num_items"], int):
            raise bad(f"`index.shards[{number}]` must start at row {start} (successive rows).")
        if files.get(shard["file"]) != shard["sha256"]:
            raise bad(f"`index.shards[{number}].sha256` differs from `files[{shard['file']!r}]`.")
        start += shard["num_items"]
    if start != num_items:
        raise bad(f"`index.shards` hold {start} rows, but `num_items` is {num_items}.")
    return [shard["file"] for shard in shards]


# ---------------------------------------------------------------------------------------------
# Writing.


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> None:
    """Writes ``manifest.json`` into ``folder`` (the last part of an export, before its
    signature)."""
    _io.write_json(Path(folder) / MANIFEST_FILE, manifest.to_dict())


def sign_artifact(folder: str | os.PathLike, key: bytes | str | None = None) -> bool:
    """Writes ``manifest.sig`` for ``folder``'s manifest with ``key`` (or
    :data:`recsampled.index.integrity.KEY_ENV`); returns whether there was a key."""
    key = integrity.resolve_key(key)
    if key is not None:
        integrity.sign_manifest(Path(folder), key)
    return key is not None


def _is_replaceable(path: Path) -> bool:
    """Only an artifact (it has our manifest or a temporary name) or an empty folder."""
    if not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    try:
        data = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT_NAME


def check_output_dir(output_dir: str | os.PathLike, *, overwrite: bool) -> Path:
    """Returns ``output_dir`` as an absolute path if an export may write it.

    Raises:
        FileExistsError: if it exists and ``overwrite`` is false, or it exists and is neither a
            recsampled artifact nor an empty folder.
    """
    output_dir = Path(output_dir).absolute()
    if output_dir.exists() or output_dir.is_symlink():
        if not overwrite:
            raise FileExistsError(
                "`output_dir` already exists; pass overwrite=True to replace it. "
                f"Received: output_dir={str(output_dir)!r}."
            )
        if not _is_replaceable(output_dir):
            raise FileExistsError(
                "`output_dir` exists and is not a recsampled artifact (no manifest.json of format "
                f"{FORMAT_NAME!r}) nor an empty folder; refusing to replace it. "
                f"Received: output_dir={str(output_dir)!r}."
            )
    return output_dir


@contextlib.contextmanager
def atomic_directory(output_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary folder that becomes ``output_dir`` when the block ends without error.

    :func:`recsampled._io.atomic_directory`, after :func:`check_output_dir`.

    Args:
        output_dir: the final folder (its parent is created if needed).
        overwrite: replace an existing artifact at ``output_dir``; otherwise an existing path is
            an error. Only a recsampled artifact or an empty folder is ever replaced.

    Yields:
        The temporary folder to write into (a hidden sibling of ``output_dir``).

    Raises:
        FileExistsError: if ``output_dir`` exists and ``overwrite`` is false, or it exists and
            is not an artifact.
    """
    output_dir = check_output_dir(output_dir, overwrite=overwrite)
    # overwrite=False: a folder made at output_dir meanwhile is never replaced (renameat2).
    with _io.atomic_directory(output_dir, overwrite=overwrite) as folder:
        yield folder


# ---------------------------------------------------------------------------------------------
# Reading and checking.


def not_found(path: str | os.PathLike) -> ArtifactNotFoundError:
    """The error for a missing artifact folder, mentioning interrupted exports next to it."""
    path = Path(path).absolute()
    hints = []
    temporaries = [p.name for p, _ in _io.siblings(path, "tmp")]
    backups = [p.name for p, _ in _io.siblings(path, "old")]
    if temporaries:
        hints.append(
            f" Unfinished exports were found next to it ({', '.join(sorted(temporaries))}): an "
            "export to this path was interrupted or is running; run it again."
        )
    if backups:
        hints.append(
            f" A previous artifact survives under {', '.join(sorted(backups))} (an overwrite was "
            "interrupted between its two renames); rename it back to use it."
        )
    return ArtifactNotFoundError(
        f"Artifact not found: {path} does not exist. Create it with `export_artifact` "
        f"(or `recsampled export`).{''.join(hints)}",
        path=path,
        part="folder",
    )


def read_manifest(path: str | os.PathLike, *, key: bytes | str | None = None) -> Manifest:
    """Reads and validates ``path/manifest.json``; with a key (``key`` or
    :data:`recsampled.index.integrity.KEY_ENV`), checks its signature first.

    Raises:
        ArtifactNotFoundError: if the folder or its manifest is missing.
        ArtifactError: if the manifest is not a regular file, not valid JSON or misses fields,
            or (with a key) its signature is missing or differs.
    """
    path = Path(path)
    key = integrity.resolve_key(key)
    if not path.is_dir():
        raise not_found(path)
    file = path / MANIFEST_FILE
    if not file.exists() and not file.is_symlink():
        raise ArtifactNotFoundError(
            f"The artifact at {path} has no {MANIFEST_FILE} (the part written last): it is not a "
            "complete export. Export it again.",
            path=path,
            part=MANIFEST_FILE,
        )
    data = integrity.read_bytes(path, MANIFEST_FILE, max_bytes=MAX_MANIFEST_BYTES)
    if key is not None:
        integrity.verify_signature(path, data, key)
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(
            f"The manifest of the artifact at {path} is not valid JSON: {e}",
            path=path,
            part=MANIFEST_FILE,
        ) from e
    return Manifest.from_dict(parsed, path=path)


def check_files(
    path: str | os.PathLike, manifest: Manifest, *, verify_checksums: bool = True
) -> None:
    """Checks that every part listed in the manifest is a regular file (or a folder of them)
    inside ``path``, of the manifest's size, with its recorded sha256.

    File types (always) and sizes (with ``verify_checksums``) are checked before any byte is
    read, so a part replaced by a symlink or a device fails at once (``index.faiss -> /dev/zero``
    does not hang).

    Raises:
        ArtifactNotFoundError: naming the first missing part.
        ArtifactError: naming the first part that is a symlink, device or FIFO, has another
            size, or whose checksum differs (corrupt or replaced).
    """
    path = Path(path)
    checked = {part: integrity.part_files(path, part) for part in manifest.files}
    if not verify_checksums:
        return
    for part, files in checked.items():
        size = sum(s for _, _, s in files)
        if part in manifest.sizes and size != manifest.sizes[part]:
            raise ArtifactError(
                f"The artifact at {path} is corrupt: its part {part!r} has {size} bytes, but "
                f"{MANIFEST_FILE} records {manifest.sizes[part]}. Export the artifact again.",
                path=path,
                part=part,
            )
    for part, files in checked.items():
        actual = integrity.sha256_part(path, part, files)
        if actual != manifest.files[part]:
            raise ArtifactError(
                f"The artifact at {path} is corrupt: the sha256 of its part {part!r} is "
                f"{actual}, but {MANIFEST_FILE} records {manifest.files[part]}. The file was "
                "truncated, modified or replaced; export the artifact again.",
                path=path,
                part=part,
            )


def mismatch(path: str | os.PathLike, part: str, message: str) -> ArtifactError:
    """An :class:`ArtifactError` for parts that disagree, naming ``part``."""
    return ArtifactError(f"The artifact at {path} is inconsistent: {message}", path=path, part=part)


def save_npy(path: Path, array: np.ndarray) -> None:
    """Saves one array as ``.npy`` (no pickles) and fsyncs it."""
    _io.write_file(path, lambda f: np.save(f, array, allow_pickle=False))


def load_npy(folder: Path, part: str) -> np.ndarray:
    """Loads a ``.npy`` part; raises :class:`ArtifactError` naming it if it is unreadable."""
    try:
        return np.load(folder / part, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ArtifactError(
            f"The artifact at {folder} has an unreadable part {part!r}: {e}", path=folder, part=part
        ) from e


def save_csr(path: Path, indptr: np.ndarray, indices: np.ndarray) -> None:
    """Saves a CSR structure (``indptr``, ``indices``) as a compressed ``.npz``, fsynced."""
    _io.write_file(path, lambda f: np.savez_compressed(f, indptr=indptr, indices=indices))


def load_csr(folder: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Loads ``(indptr, indices)`` of a ``.npz`` part, naming it on failure."""
    try:
        with np.load(folder / part, allow_pickle=False) as data:
            return data["indptr"], data["indices"]
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise ArtifactError(
            f"The artifact at {folder} has an unreadable part {part!r}: {e}", path=folder, part=part
        ) from e


def as_json_config(config: object) -> dict[str, Any]:
    """A training config (mapping or dataclass) as JSON data; paths become strings.

    Raises:
        ValueError: if the config holds values JSON cannot represent.
    """
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise ValueError(
            "`training_config` must be a mapping or a dataclass. "
            f"Received: training_config of type {type(config).__name__}."
        )

    def default(value: object) -> object:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        raise TypeError(f"{value!r} (of type {type(value).__name__}) is not JSON-serialisable")

    try:
        return json.loads(json.dumps(dict(config), default=default, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"`training_config` must be JSON-serialisable: {e}.") from e

"""A tower as a SavedModel: the one wrapper that run directories and artifacts both use.

``tf.saved_model.load(path)(ids)`` with ``[n]`` int64 indices returns ``[n, embedding_dim]``
float32 embeddings, and the ``serving_default`` signature maps ``ids`` to ``{"embeddings": ...}``.
An artifact's ``query_model/`` is a copy of the run's ``towers/query/`` (no re-tracing), so the
two are the same program.

**Nothing in a SavedModel is run unchecked.** A SavedModel is a program: its functions can read
and write files (``ReadFile``, ``WriteFile``), print to files, call Python (``PyFunc``) or open
readers, and its table initialisers run while it loads. :func:`check_saved_model` therefore parses
``saved_model.pb`` (``tensorflow.core.protobuf.saved_model_pb2``) and walks every node of every
meta graph and of every function in its library (nested functions included, whether reachable or
not), and refuses any op outside :data:`ALLOWED_OPS`: pure tensor math, variables
(``VarHandleOp``, ``ReadVariableOp``, ``AssignVariableOp``), the id map's hash table
(``HashTableV2`` and its lookups) and function calls. The checkpoint ops that every SavedModel
holds (:data:`SAVER_OPS`: ``SaveV2``, ``RestoreV2``, ...) are allowed only inside the two
functions the graph's ``saver_def`` names (what TF Serving runs to restore the variables;
``tf.saved_model.load`` restores them itself) and their callees. Asset files and a text
``saved_model.pbtxt`` are refused too (towers never have them). :func:`load_tower` checks before it
loads unless ``trusted=True``.

Example:
    >>> import tempfile
    >>> tower = tf.keras.Sequential([tf.keras.layers.Embedding(10, 4)])
    >>> path = save_tower(tower, tempfile.mkdtemp() + "/query")
    >>> load_tower(path)(tf.constant([0, 3], tf.int64)).shape
    TensorShape([2, 4])
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2

from recsampled.errors import RecsampledError

IDS_SIGNATURE = tf.TensorSpec([None], tf.int64, name="ids")


class TowerModule(tf.Module):
    """A tower as a SavedModel: ``[n]`` int64 indices to ``[n, embedding_dim]`` float32.

    Args:
        tower: a Keras layer (called with ``training=False``) or any traceable callable of ids.
        name: the module's name.
    """

    def __init__(self, tower: Callable[[tf.Tensor], tf.Tensor], name: str | None = None):
        super().__init__(name=name)
        self.tower = tower

    def _embed(self, ids: tf.Tensor) -> tf.Tensor:
        if isinstance(self.tower, tf.keras.layers.Layer):
            return tf.cast(self.tower(ids, training=False), tf.float32)
        return tf.cast(self.tower(ids), tf.float32)

    @tf.function(input_signature=[IDS_SIGNATURE])
    def __call__(self, ids: tf.Tensor) -> tf.Tensor:
        return self._embed(ids)

    @tf.function(input_signature=[IDS_SIGNATURE])
    def serve(self, ids: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"embeddings": self._embed(ids)}


def save_tower(
    tower: Callable[[tf.Tensor], tf.Tensor], path: str | os.PathLike, *, name: str | None = None
) -> Path:
    """Saves ``tower`` as a SavedModel at ``path`` (see the module docstring).

    Args:
        tower: maps ``[n]`` int64 ids to ``[n, embedding_dim]`` embeddings.
        path: the SavedModel folder to write.
        name: the module's name (default: the folder's name followed by ``_tower``).

    Returns:
        ``path``.

    Raises:
        ValueError: if TensorFlow cannot save the tower with the ``[None]`` int64 signature.
    """
    path = Path(path)
    module = TowerModule(tower, name=name or f"{path.name}_tower")
    try:
        tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"The tower could not be saved as a SavedModel with the input signature "
            f"{IDS_SIGNATURE}: {e}"
        ) from e
    return path


def load_tower(path: str | os.PathLike, *, trusted: bool = False) -> Any:
    """Loads a tower SavedModel written by :func:`save_tower`; call it on int64 indices.

    Args:
        path: the SavedModel folder.
        trusted: skip :func:`check_saved_model` (only for SavedModels you wrote or trust: any op
            in them runs).

    Raises:
        UnsafeModelError: if the graph holds an op outside :data:`ALLOWED_OPS`.
    """
    if not trusted:
        check_saved_model(path)
    return tf.saved_model.load(str(path))


# ---------------------------------------------------------------------------------------------
# The op allowlist.

#: Ops a tower's graph may hold: pure tensor math and shapes, variables, the id map's hash table
#: (``HashTableV2`` with its constant initialiser and lookups), control flow and function calls.
ALLOWED_OPS = frozenset(
    """
    Abs Add AddN AddV2 All Any ArgMax ArgMin Assert AssignVariableOp BatchMatMul BatchMatMulV2
    BatchMatMulV3 BiasAdd Bitcast BroadcastArgs BroadcastGradientArgs BroadcastTo Bucketize Cast
    Ceil CheckNumerics ClipByValue Complex ConcatV2 Const Cos Cumsum DisableCopyOnRead Div DivNoNan
    Einsum Elu EnsureShape Equal Erf Exp ExpandDims Expm1 Fill Floor FloorDiv FloorMod
    FusedBatchNormV3 GatherNd GatherV2 Greater GreaterEqual HashTableV2 Identity IdentityN If
    InTopKV2 InitializeTableV2 Inv IsFinite IsInf IsNan L2Loss LeakyRelu Less LessEqual Log
    Log1p LogSoftmax LogicalAnd LogicalNot LogicalOr LookupTableFindV2 LookupTableImportV2
    LookupTableSizeV2 MatMul Max Maximum Mean Min Minimum Mod Mul MulNoNan Neg NoOp NotEqual OneHot
    OnesLike Pack Pad PadV2 PartitionedCall Placeholder PlaceholderWithDefault Pow PreventGradient
    Prod RaggedGather RaggedRange RaggedTensorToTensor RandomStandardNormal RandomUniform Range
    Rank ReadVariableOp RealDiv Reciprocal Relu Relu6 Reshape ResourceGather ResourceGatherNd
    ReverseV2 Round Rsqrt ScatterNd SegmentMax SegmentMean SegmentSum Select SelectV2 Selu Shape
    ShapeN Sigmoid Sign Sin Size Slice Softmax Softplus Softsign SparseFillEmptyRows SparseReshape
    SparseSegmentMean SparseSegmentMeanWithNumSegments SparseSegmentSqrtN SparseSegmentSum
    SparseSegmentSumWithNumSegments SparseToDense Split SplitV Sqrt Square SquaredDifference Squeeze
    StatefulPartitionedCall StatelessIf StatelessRandomUniformV2 StatelessWhile StopGradient
    StridedSlice StringToHashBucketFast Sub Sum Tanh TensorScatterUpdate Tile TopKV2 Transpose
    Unique UniqueV2 UnsortedSegmentSum Unpack VarHandleOp Where While ZerosLike
    """.split()
)
#: Checkpoint ops, allowed only in the functions the ``saver_def`` names (save and restore of the
#: variables) and their callees.
SAVER_OPS = frozenset(
    "MergeV2Checkpoints RestoreV2 SaveV2 ShardedFilename StaticRegexFullMatch StringJoin".split()
)
SAVED_MODEL_FILE = "saved_model.pb"
#: protobuf's limit: no valid ``saved_model.pb`` is larger.
MAX_GRAPH_BYTES = 2**31


class UnsafeModelError(RecsampledError):
    """A SavedModel whose graph holds an op that could touch files, the network, processes or
    Python (or that cannot be inspected); nothing of it was loaded or run.

    Attributes:
        path: the ``saved_model.pb`` (or the folder) at fault.
        op: the refused op (None when the file itself is refused).
        function: the function that holds it (``""`` for the top-level graph).
    """

    def __init__(self, message: str, *, path: Path, op: str | None = None, function: str = ""):
        super().__init__(message)
        self.path = path
        self.op = op
        self.function = function


def _read_graph_file(file: Path) -> bytes:
    """The bytes of a regular ``saved_model.pb`` (no symlink, no device), size-bounded."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise UnsafeModelError(
            f"The SavedModel at {file.parent} cannot be inspected: {file} cannot be opened as a "
            f"regular file ({e.strerror}; symlinks are not followed).",
            path=file,
        ) from e
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_GRAPH_BYTES:
            raise UnsafeModelError(
                f"The SavedModel at {file.parent} cannot be inspected: {file} is not a regular "
                f"file of at most {MAX_GRAPH_BYTES} bytes.",
                path=file,
            )
        return f.read(MAX_GRAPH_BYTES + 1)


def _called_functions(nodes: Any) -> set[str]:
    """Names of the functions the nodes call through attributes (``f``, branches, bodies)."""
    names = set()
    for node in nodes:
        for value in node.attr.values():
            if value.func.name:
                names.add(value.func.name)
            names.update(f.name for f in value.list.func)
    return names


def _saver_functions(meta: Any, library: dict[str, Any]) -> set[str]:
    """The functions reachable from the nodes the ``saver_def`` names (and nothing else)."""
    saver = meta.saver_def
    roots = {saver.save_tensor_name.split(":")[0], saver.restore_op_name.split(":")[0]} - {""}
    pending = _called_functions(n for n in meta.graph_def.node if n.name in roots)
    found: set[str] = set()
    while pending:
        name = pending.pop()
        if name in found or name not in library:
            continue
        found.add(name)
        body = library[name].node_def
        pending |= _called_functions(body) | {n.op for n in body if n.op in library}
    return found


def check_saved_model(path: str | os.PathLike) -> None:
    """Refuses a SavedModel whose graph holds an op outside :data:`ALLOWED_OPS` (module docstring).

    Reads only ``saved_model.pb``; runs and loads nothing.

    Args:
        path: the SavedModel folder.

    Raises:
        UnsafeModelError: naming the op, the function that holds it and the file.

    Example:
        >>> import tempfile
        >>> tower = tf.keras.Sequential([tf.keras.layers.Embedding(10, 4)])
        >>> check_saved_model(save_tower(tower, tempfile.mkdtemp() + "/query"))  # no error
    """
    folder = Path(path)
    file = folder / SAVED_MODEL_FILE
    if (folder / "saved_model.pbtxt").exists() or (folder / "saved_model.pbtxt").is_symlink():
        raise UnsafeModelError(
            f"The SavedModel at {folder} has a text graph (saved_model.pbtxt), which recsampled "
            "never writes; refusing to load it.",
            path=folder / "saved_model.pbtxt",
        )
    model = saved_model_pb2.SavedModel()
    try:
        model.ParseFromString(_read_graph_file(file))
    except DecodeError as e:
        raise UnsafeModelError(
            f"The SavedModel at {folder} cannot be inspected: {file} is not a SavedModel "
            f"protobuf ({e}).",
            path=file,
        ) from e
    for meta in model.meta_graphs:
        _check_meta_graph(meta, file)


def _check_meta_graph(meta: Any, file: Path) -> None:
    library = {f.signature.name: f for f in meta.graph_def.library.function}

    def refuse(op: str, node: str, function: str) -> UnsafeModelError:
        where = f"function {function!r}" if function else "the top-level graph"
        return UnsafeModelError(
            f"The SavedModel {file} holds the op {op!r} (node {node!r} in {where}), which is not "
            "a pure tensor op (it could touch files, the network, processes or Python); refusing "
            "to load it. Load it with trusted=True (`--trust-artifact`) only if you trust the "
            "file's author.",
            path=file,
            op=op,
            function=function,
        )

    if len(meta.asset_file_def):
        raise UnsafeModelError(
            f"The SavedModel {file} lists asset files ({meta.asset_file_def[0].filename!r}, ...); "
            "recsampled towers have none, and assets are files the graph reads. Refusing to load.",
            path=file,
        )
    for node in meta.graph_def.node:
        if node.op not in ALLOWED_OPS and node.op not in library:
            raise refuse(node.op, node.name, "")
    savers = _saver_functions(meta, library)
    for name, function in library.items():
        allowed = ALLOWED_OPS | SAVER_OPS if name in savers else ALLOWED_OPS
        for node in function.node_def:
            if node.op not in allowed and node.op not in library:
                raise refuse(node.op, node.name, name)

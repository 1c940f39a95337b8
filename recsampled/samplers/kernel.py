"""Adaptive kernel-based sampling: a quadratic-kernel proposal drawn from a tree of kernel sums.

Blanc & Rendle, ICML 2018, "Adaptive Sampled Softmax with Kernel Based Sampling"
(arXiv 1712.00527). Sampled softmax is unbiased only when the proposal is the softmax itself; a
proposal that follows the model as it trains needs far fewer samples. The quadratic kernel::

    q(i | h) = (α·(hᵀwᵢ)² + 1) / Σ_j (α·(hᵀw_j)² + 1)

for a query ``h`` (``[D]``) and class embeddings ``w_j`` (rows of the ``[N, D]`` table). With
``φ(w) = [√α·vec(w wᵀ), 1]`` the kernel is ``φ(h)ᵀφ(w)``, so the mass of any set ``C`` of classes
is ``α·hᵀ Z_C h + |C|`` with ``Z_C = Σ_{i∈C} wᵢ wᵢᵀ``: one ``[D, D]`` sum per set, whatever
its size.

**The tree.** Classes are cut into ``M = 2^depth`` leaves of ``leaf_size = L`` consecutive ids
(the last ones padded with rows of mass 0). Node ``k`` of a heap-ordered binary tree (root 1,
children ``2k`` and ``2k + 1``, leaves ``M .. 2M-1``) keeps ``Z_k`` and its number of real
classes ``c_k``; ``Z`` is symmetric, so only its upper triangle is stored,
``P = D·(D+1)/2`` numbers, and ``hᵀZh = ψ(h)·z`` with ``ψ(h)_{ij} = (2 - [i=j])·h_i h_j``.

**Sampling** ``S`` ids for each of ``B`` queries:

1. *Top cut.* At level ``t`` (``K = 2^t`` nodes) the masses of all ``(query, node)`` pairs are one
   matmul, ``α·ψ(H)·Z_tᵀ + c_t`` (``B·K·P`` multiply-adds); each query draws the nodes of its
   ``S`` samples from them (inverse transform on the cumulative masses).
2. *Descent.* From level ``t`` to the leaves, each sample moves to the left child with probability
   ``m_left / m_node`` (one gathered ``P``-vector per sample and level).
3. *Leaf.* The ``L`` classes of the leaf are scored directly (``L·D`` per sample) and one is drawn
   in proportion to ``α·(hᵀwᵢ)² + 1``.

The product of the branch probabilities telescopes to ``q(i | h)``. Per sample the cost is about
``(depth - t)·P + L·D`` gathered numbers, plus ``B·K·P`` for the top; ``t`` is chosen at sampling
time to balance the two (:attr:`QuadraticKernelSampler.top_nodes_per_sample`). Leaves are
buckets because a node below ``D/2`` classes is cheaper to score directly than through its
``P ≈ D²/2`` statistics, and because a full tree of ``P``-vectors down to single classes would not
fit in memory (tens of GB at ``N = 10^6``, ``D = 64``).

**Snapshot.** The tree is built from a copy of the table (``rebuild``) and kept in step by
``update(ids, rows)``, which adds ``ψ(w_new) - ψ(w_old)`` along the paths of the changed rows.
Probabilities are always those of the snapshot, i.e. exactly the proposal that was sampled from,
even if the model's variable moved since. The normaliser ``α·hᵀZ_root h + N`` uses a float64 copy
of ``Z_root``; the tree itself is float32, so branch probabilities carry float32 rounding
(relative ``~1e-6`` of a node's mass).

**Replacement.** ``unique=False`` draws with replacement (expected count ``S·q``, TF's semantics).
``unique=True`` keeps drawing until ``S`` distinct ids have come (per query in per-query mode),
and reports ``1 - (1 - q)^T`` with ``T`` the draws that took: the convention of every
recsampled sampler (``recsampled.samplers.base``).

**The batch mixture** (``mode="batch_mixture"``, the default). Per-query draws cost ``B·S`` walks
of the tree. For the queries ``h_1..h_B`` of a batch, the mixture of their proposals is itself a
quadratic form over the class embeddings::

    q̄(i) = (1/B)·Σ_b q(i | h_b) = (1/B)·Σ_b (α·wᵢᵀ h_b h_bᵀ wᵢ + 1) / Z(h_b) = α·wᵢᵀ H wᵢ + c
    H = (1/B)·Σ_b h_b h_bᵀ / Z(h_b),   c = (1/B)·Σ_b 1 / Z(h_b),   Z(h) = α·hᵀ Z_root h + N

and ``Σ_i q̄(i) = (1/B)·Σ_b Z(h_b) / Z(h_b) = 1``. The mass of a set ``C`` under ``q̄`` is
``α·⟨H, Z_C⟩ + c·|C|``: the same tree, with the one "query" ``ψ(H)`` (the packed upper triangle
of ``H`` with weights ``2 - [i=j]``) in place of ``ψ(h)``. So ``S`` ids shared by the batch are
drawn by walking the tree ``S`` times, all draws level by level together: ``O(B·D²)`` for ``H``
plus ``O(S·D²·log N)``, instead of ``O(B·S·D²·log N)``. Branch probabilities are ratios, so the
walk uses ``H / c`` and the counts ``|C|`` (masses divided by ``c``); the leaf scores its classes
by ``α·wᵀ(H/c)w + 1`` in one batched matmul. The draws follow ``q̄`` exactly (up to the tree's
float32 rounding), and the exact float64 ``q̄`` of every drawn id and label is known, so the
candidates are those of any shared sampler: ``[S]`` ids with TF's expected counts, usable in
``tf.nn.sampled_softmax_loss``, ``recsampled.sampled_softmax_loss`` and the retrieval task.
"""

from __future__ import annotations

import logging
import math
import time
import types
from collections.abc import Callable
from typing import ClassVar, Literal

import numpy as np
import tensorflow as tf

from recsampled._validation import (
    check_non_negative_float,
    check_optional_seed,
    check_positive_int,
    received,
)
from recsampled.samplers.base import (
    CandidateSampler,
    SampledValues,
    draw_unique,
    expected_count,
    repeated_per_row,
)

logger = logging.getLogger("recsampled.samplers.kernel")

Mode = Literal["batch_mixture", "per_query"]
MODES: tuple[str, ...] = ("batch_mixture", "per_query")


def _upper_triangle(dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row and column indices of the upper triangle of a ``[dim, dim]`` matrix, and weights
    ``2 - [i = j]`` such that ``hᵀZh = Σ_p weight_p·h_{i_p}·h_{j_p}·Z_{i_p j_p}``."""
    rows, cols = np.triu_indices(dim)
    return rows, cols, np.where(rows == cols, 1.0, 2.0)


class QuadraticKernelSampler(CandidateSampler):
    """Samples from ``q(i | h) ∝ α·(hᵀwᵢ)² + 1`` (per query or the batch mixture) in time
    logarithmic in ``N``.

    ``sample`` and ``probability`` take the batch's ``query_embeddings`` (:attr:`needs_queries`).
    In ``"batch_mixture"`` mode (the default) ``sample`` draws ``[S]`` ids shared by the batch
    from ``q̄ = (1/B)·Σ_b q(· | h_b)`` and ``probability(ids, query_embeddings)`` is ``q̄`` of ids of
    any shape; in ``"per_query"`` mode (:attr:`per_query`) it draws ``[B, S]`` ids, row ``b`` from
    ``q(· | h_b)``, and ``probability`` takes ``[B, k]`` ids.

    Args:
        embeddings: ``[num_classes, embedding_dim]`` class embeddings: the model's
            ``tf.Variable`` (read again by :meth:`rebuild`) or an array. The tree is built from a
            snapshot of it at construction.
        alpha: α >= 0; 0 is the uniform distribution. The paper uses 100.
        leaf_size: classes per leaf, scored directly; default ``max(8, embedding_dim)``: a leaf
            then costs ``L·D = D²`` gathered numbers, about one tree level (``P ≈ D²/2``) more
            or less, and the tree holds ``2N/D`` nodes of ``P`` floats, ``≈ N·D`` numbers
            (at ``N = 10^6``, ``D = 64``, ``L = D`` took about 25% less CPU per batch than
            ``L = D/2`` in our measurements; ``benchmarks/kernel.md``).
        seed: default op-level seed of :meth:`sample`.
        mode: ``"batch_mixture"``: ``[S]`` ids shared by the batch, from the mixture ``q̄``
            (module docstring; ``B`` times cheaper than per-query draws). ``"per_query"``:
            ``[B, S]`` ids, ``S`` per query.
        top_nodes_per_sample: the top cut has about ``num_sampled * top_nodes_per_sample`` nodes
            (rounded to a power of two), whose masses are one matmul per batch; default 32 per
            query, 2 for the batch mixture (one matvec, against ``S`` walks below it).
        name: optional module name.

    Example:
        >>> tf.random.set_seed(0)
        >>> table = tf.Variable(tf.random.normal([1000, 16], stddev=0.1))
        >>> sampler = QuadraticKernelSampler(table, alpha=100.0)
        >>> queries = tf.random.normal([4, 16])
        >>> labels = tf.constant([[1], [2], [3], [4]], tf.int64)
        >>> values = sampler.sample(labels, 8, query_embeddings=queries)
        >>> values.sampled_candidates.shape, values.true_expected_count.shape
        (TensorShape([8]), TensorShape([4, 1]))
        >>> round(float(tf.reduce_sum(sampler.probability(tf.range(1000), queries))), 4)
        1.0
        >>> per_query = QuadraticKernelSampler(table, alpha=100.0, mode="per_query")
        >>> per_query.sample(labels, 8, query_embeddings=queries).sampled_candidates.shape
        TensorShape([4, 8])
    """

    needs_queries: ClassVar[bool] = True
    top_nodes_per_sample: int = 32
    mixture_top_nodes_per_sample: int = 2

    def __init__(
        self,
        embeddings: tf.Variable | np.ndarray | tf.Tensor,
        alpha: float = 100.0,
        leaf_size: int | None = None,
        seed: int | None = None,
        *,
        mode: Mode = "batch_mixture",
        top_nodes_per_sample: int | None = None,
        name: str | None = None,
    ):
        table = self._as_table("embeddings", embeddings)
        num_classes, dim = int(table.shape[0]), int(table.shape[1])
        super().__init__(num_classes, name=name)
        self.embedding_dim = dim
        self.alpha = check_non_negative_float("alpha", alpha)
        self.leaf_size = (
            max(8, dim) if leaf_size is None else check_positive_int("leaf_size", leaf_size)
        )
        self.seed = check_optional_seed("seed", seed)
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {list(MODES)}. {received('mode', mode)}")
        self.mode = mode
        self.per_query = mode == "per_query"
        if top_nodes_per_sample is not None:
            self.top_nodes_per_sample = check_positive_int(
                "top_nodes_per_sample", top_nodes_per_sample
            )
        elif not self.per_query:
            self.top_nodes_per_sample = self.mixture_top_nodes_per_sample
        # The model's variable, untracked: it belongs to the model (a namespace keeps tf.Module
        # and Keras from tracking and saving it a second time through the sampler).
        self._source = types.SimpleNamespace(
            embeddings=embeddings if isinstance(embeddings, tf.Variable) else None
        )
        self.depth = max(0, math.ceil(math.log2(math.ceil(num_classes / self.leaf_size))))
        self.num_leaves = 2**self.depth
        rows, cols, weights = _upper_triangle(dim)
        self._rows, self._cols = tf.constant(rows), tf.constant(cols)
        self._weights = tf.constant(weights, tf.float32)
        self._weights64 = tf.constant(weights, tf.float64)
        # Real classes per node, heap order (index 0 unused).
        leaf_counts = np.clip(
            num_classes - self.leaf_size * np.arange(self.num_leaves), 0, self.leaf_size
        )
        counts = [leaf_counts.astype(np.float64)]
        while counts[-1].size > 1:
            counts.append(counts[-1].reshape(-1, 2).sum(axis=1))
        self._counts = tf.constant(np.concatenate([[0.0], *counts[::-1]]), tf.float32)
        with self.name_scope:
            # [M, L, D]: leaf by leaf. Only sparse reads (gathers) touch the large variables:
            # a dense read of a variable once gathered from copies all of it.
            self.table = tf.Variable(
                tf.zeros([self.num_leaves, self.leaf_size, dim]),
                trainable=False,
                name="table_snapshot",
            )
            self.node_stats = tf.Variable(
                tf.zeros([2 * self.num_leaves, len(rows)]), trainable=False, name="node_stats"
            )
            self.root_stats = tf.Variable(
                tf.zeros([len(rows)], tf.float64), trainable=False, name="root_stats"
            )
        self.rebuild(table)

    # -- validation ---------------------------------------------------------------------------

    @staticmethod
    def _as_table(name: str, embeddings: object) -> tf.Tensor:
        try:
            table = tf.convert_to_tensor(embeddings)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"`{name}` must be a [num_classes, embedding_dim] float array or tf.Variable. "
                f"{received(name, embeddings)}"
            ) from e
        if not table.dtype.is_floating or table.shape.rank != 2 or 0 in table.shape:
            raise ValueError(
                f"`{name}` must be a [num_classes, embedding_dim] float array or tf.Variable "
                f"with both sizes > 0. Received: {name} of dtype {table.dtype.name} and shape "
                f"{table.shape}."
            )
        return tf.cast(table, tf.float32)

    def _check_queries(self, query_embeddings: object, batch_size: int | None) -> tf.Tensor:
        if query_embeddings is None:
            raise ValueError(
                "`query_embeddings` must be given: the kernel sampler draws per query, from "
                "q(i | h). Received: query_embeddings=None."
            )
        queries = tf.convert_to_tensor(query_embeddings)
        if (
            not queries.dtype.is_floating
            or queries.shape.rank != 2
            or queries.shape[1] != self.embedding_dim
            or (batch_size is not None and queries.shape[0] not in (None, batch_size))
        ):
            rows = "batch_size" if batch_size is None else str(batch_size)
            raise ValueError(
                f"`query_embeddings` must be a float tensor of shape [{rows}, "
                f"{self.embedding_dim}] (one query per row of true_classes / ids, the sampler's "
                f"embedding_dim). Received: query_embeddings of dtype {queries.dtype.name} and "
                f"shape {queries.shape}."
            )
        return tf.cast(queries, tf.float32)

    # -- the tree -----------------------------------------------------------------------------

    def _packed(self, x: tf.Tensor, weighted: bool) -> tf.Tensor:
        """``[..., P]`` upper triangle of ``x xᵀ`` for ``[..., D]`` ``x`` (times 2 off the
        diagonal when ``weighted``: that is ``ψ``)."""
        outer = tf.gather(x, self._rows, axis=-1) * tf.gather(x, self._cols, axis=-1)
        if not weighted:
            return outer
        return outer * (self._weights if x.dtype == tf.float32 else self._weights64)

    def rebuild(self, embeddings: tf.Variable | np.ndarray | tf.Tensor | None = None) -> None:
        """Rebuilds the tree from ``embeddings`` (default: the variable given at construction).

        Cost: ``N·D²`` multiply-adds in batched matmuls over the leaves, then sums up the levels.
        Runs eagerly or inside a ``tf.function`` (e.g. in a train step or a callback).

        Args:
            embeddings: ``[num_classes, embedding_dim]`` new table, or None for the variable
                given at construction.

        Raises:
            ValueError: with no table to read, or one of another shape.
        """
        if embeddings is None:
            embeddings = self._source.embeddings
            if embeddings is None:
                raise ValueError(
                    "`embeddings` must be given to rebuild(): the sampler was built from an "
                    "array, not a tf.Variable it could read again. Received: embeddings=None."
                )
        table = self._as_table("embeddings", embeddings)
        if table.shape != (self.num_classes, self.embedding_dim):
            raise ValueError(
                f"`embeddings` must have shape [{self.num_classes}, {self.embedding_dim}] (the "
                f"sampler's classes and dim). Received: embeddings with shape {table.shape}."
            )
        padding = self.num_leaves * self.leaf_size - self.num_classes
        table = tf.pad(table, [[0, padding], [0, 0]])
        leaves = tf.reshape(table, [self.num_leaves, self.leaf_size, self.embedding_dim])
        self.table.assign(leaves)
        # Leaves in chunks, so that the [chunk, D, D] products stay small (~4 MB, in cache).
        packed = self._rows * self.embedding_dim + self._cols
        chunk = min(self.num_leaves, 2 ** max(0, (2**20 // self.embedding_dim**2).bit_length() - 1))
        chunks = tf.reshape(leaves, [-1, chunk, self.leaf_size, self.embedding_dim])

        def leaf_stats(block: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            square = tf.matmul(block, block, transpose_a=True)  # [chunk, D, D]
            rows64 = tf.cast(tf.reshape(block, [-1, self.embedding_dim]), tf.float64)
            total = tf.matmul(rows64, rows64, transpose_a=True)  # float64, for the root
            return tf.gather(tf.reshape(square, [chunk, -1]), packed, axis=1), total

        stats, totals = tf.map_fn(
            leaf_stats,
            chunks,
            fn_output_signature=(tf.float32, tf.float64),
            parallel_iterations=2,
        )
        level = tf.reshape(stats, [self.num_leaves, -1])
        levels = [level]
        while levels[-1].shape[0] > 1:
            levels.append(tf.reduce_sum(tf.reshape(levels[-1], [-1, 2, level.shape[1]]), 1))
        self.node_stats.assign(tf.concat([tf.zeros_like(level[:1]), *levels[::-1]], axis=0))
        root = tf.reshape(tf.reduce_sum(totals, axis=0), [-1])
        self.root_stats.assign(tf.gather(root, packed))

    def update(self, ids: tf.Tensor, rows: tf.Tensor) -> None:
        """Moves the snapshot rows ``ids`` to ``rows`` and updates their paths in the tree.

        Adds ``ψ(w_new) - ψ(w_old)`` to the ``depth + 1`` nodes above each changed class. A
        repeated id takes its last row.

        Args:
            ids: ``[k]`` int class ids.
            rows: ``[k, embedding_dim]`` their new embeddings.
        """
        ids = tf.cast(tf.reshape(tf.convert_to_tensor(ids), [-1]), tf.int64)
        rows = tf.convert_to_tensor(rows)
        if rows.shape.rank != 2 or rows.shape[1] != self.embedding_dim:
            raise ValueError(
                f"`rows` must have shape [num_ids, {self.embedding_dim}]. Received: rows with "
                f"shape {rows.shape}."
            )
        rows = tf.cast(rows, tf.float32)
        # Last row of each distinct id.
        distinct, index = tf.unique(ids, out_idx=tf.int64)
        last = tf.math.unsorted_segment_max(
            tf.range(tf.size(ids, out_type=tf.int64)), index, tf.size(distinct)
        )
        ids, rows = distinct, tf.gather(rows, last)
        position = self._position(ids)
        old = tf.gather_nd(self.table, position)
        delta = self._packed(rows, weighted=False) - self._packed(old, weighted=False)  # [k, P]
        leaf = self.num_leaves + ids // self.leaf_size
        shifts = tf.range(self.depth + 1, dtype=tf.int64)
        nodes = tf.bitwise.right_shift(leaf[:, tf.newaxis], shifts[tf.newaxis, :])  # [k, depth+1]
        updates = tf.repeat(delta, self.depth + 1, axis=0)
        self.node_stats.scatter_nd_add(tf.reshape(nodes, [-1, 1]), updates)
        delta64 = self._packed(tf.cast(rows, tf.float64), False) - self._packed(
            tf.cast(old, tf.float64), False
        )
        self.root_stats.assign_add(tf.reduce_sum(delta64, axis=0))
        self.table.scatter_nd_update(position, rows)

    def _position(self, ids: tf.Tensor) -> tf.Tensor:
        """``[..., 2]`` (leaf, offset) of int64 ``ids`` in the ``[M, L, D]`` snapshot."""
        return tf.stack([ids // self.leaf_size, ids % self.leaf_size], axis=-1)

    def memory_bytes(self) -> int:
        """Bytes held by the sampler's state (snapshot, tree statistics, root)."""
        return sum(int(np.prod(v.shape)) * v.dtype.size for v in self.variables)

    # -- probabilities ------------------------------------------------------------------------

    def _normalizer(self, queries: tf.Tensor) -> tf.Tensor:
        """``[B]`` float64 total mass ``α·hᵀZ_root h + N`` of each query."""
        dim = self.embedding_dim
        upper = tf.scatter_nd(
            tf.stack([self._rows, self._cols], axis=1), self.root_stats, [dim, dim]
        )
        root = upper + tf.transpose(upper) - tf.linalg.diag(tf.linalg.diag_part(upper))
        queries = tf.cast(queries, tf.float64)
        mass = tf.reduce_sum(tf.matmul(queries, root) * queries, axis=1)  # B·D², one matmul
        return self.alpha * mass + float(self.num_classes)

    def _scores(self, queries: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
        """``[B, k]`` unnormalised ``α·(hᵀwᵢ)² + 1`` of ``[B, k]`` ids, from the snapshot."""
        rows = tf.gather_nd(self.table, self._position(ids))
        dots = tf.einsum("bd,bkd->bk", queries, rows)
        return self.alpha * tf.square(dots) + 1.0

    def mixture(self, query_embeddings: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``(H, c)`` of the batch mixture ``q̄(i) = α·wᵢᵀHwᵢ + c`` (module docstring).

        Args:
            query_embeddings: ``[batch_size, embedding_dim]`` queries ``h_b``.

        Returns:
            ``[embedding_dim, embedding_dim]`` float64 ``H`` and the float64 scalar ``c``.
        """
        queries = tf.cast(self._check_queries(query_embeddings, None), tf.float64)
        weights = 1.0 / (
            tf.cast(tf.shape(queries)[0], tf.float64) * self._normalizer(queries)
        )  # [B]: 1 / (B·Z(h_b))
        matrix = tf.matmul(queries * weights[:, tf.newaxis], queries, transpose_a=True)
        return matrix, tf.reduce_sum(weights)

    def _mixture_probability(
        self, ids: tf.Tensor, matrix: tf.Tensor, constant: tf.Tensor
    ) -> tf.Tensor:
        """float64 ``q̄`` of int64 ``ids`` (any shape) from the snapshot."""
        rows = tf.cast(tf.gather_nd(self.table, self._position(ids)), tf.float64)
        quadratic = tf.reduce_sum(tf.linalg.matvec(matrix, rows) * rows, axis=-1)
        return self.alpha * quadratic + constant

    def probability(self, ids: tf.Tensor, query_embeddings: tf.Tensor | None = None) -> tf.Tensor:
        """The draw probability of ids, from the snapshot.

        Batch mixture: ``q̄(i)`` for the batch's queries; per query: ``q(i | h)`` of each id for
        its row's query.

        Args:
            ids: int class ids; any shape for the batch mixture, ``[batch_size, k]`` per query.
            query_embeddings: ``[batch_size, embedding_dim]`` queries ``h``.

        Returns:
            float32 probabilities shaped like ``ids``.
        """
        ids = tf.convert_to_tensor(ids)
        per_query = self.per_query
        if not ids.dtype.is_integer or (per_query and ids.shape.rank != 2):
            shape = "[batch_size, k]" if per_query else "any shape"
            raise ValueError(
                f"`ids` must be integer class ids of {shape}. Received: ids of dtype "
                f"{ids.dtype.name} and shape {ids.shape}."
            )
        ids = tf.cast(ids, tf.int64)
        if not per_query:
            matrix, constant = self.mixture(query_embeddings)
            return tf.cast(self._mixture_probability(ids, matrix, constant), tf.float32)
        queries = self._check_queries(query_embeddings, ids.shape[0])
        return self._probability(ids, queries, self._normalizer(queries))

    def _probability(self, ids: tf.Tensor, queries: tf.Tensor, total: tf.Tensor) -> tf.Tensor:
        scores = tf.cast(self._scores(queries, ids), tf.float64)
        return tf.cast(scores / total[:, tf.newaxis], tf.float32)

    # -- sampling -----------------------------------------------------------------------------

    def _sample(
        self,
        true_classes: tf.Tensor,
        num_sampled: int,
        unique: bool,
        seed: int | None,
        *,
        query_embeddings: tf.Tensor | None = None,
    ) -> SampledValues:
        """Draws ``num_sampled`` ids shared by the batch (from ``q̄``) or per query.

        ``unique=False``: with replacement, expected count ``S·q``. ``unique=True``: draws until
        ``S`` distinct ids came (per query in per-query mode), expected count
        ``1 - (1 - q)^T``. The seed defaults to the constructor's.
        """
        seed = self.seed if seed is None else seed
        batch_size = true_classes.shape[0]
        # The proposal is a constant of the loss, as TF's samplers' counts are.
        # Per query, one query per row; the batch mixture takes any number of queries (the
        # retrieval task's true classes are its candidates, extra negatives included).
        rows = batch_size if self.per_query else None
        queries = tf.stop_gradient(self._check_queries(query_embeddings, rows))
        key = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64, seed=seed)
        if self.per_query:
            total = self._normalizer(queries)
            if unique:
                sampled, num_tries = self._draw_unique(queries, num_sampled, key)
                num_tries = num_tries[:, tf.newaxis]
            else:
                sampled, num_tries = self._draw(queries, num_sampled, key), num_sampled

            def probability(ids: tf.Tensor) -> tf.Tensor:
                return self._probability(ids, queries, total)

        else:
            matrix, constant = self.mixture(queries)
            sampled, num_tries = self._draw_mixture(matrix, constant, num_sampled, unique, key)

            def probability(ids: tf.Tensor) -> tf.Tensor:
                return self._mixture_probability(ids, matrix, constant)

        return SampledValues(
            sampled_candidates=tf.stop_gradient(sampled),
            true_expected_count=expected_count(
                probability(true_classes), num_tries, num_sampled, unique
            ),
            sampled_expected_count=expected_count(
                probability(sampled), num_tries, num_sampled, unique
            ),
        )

    def _top_level(self, num_sampled: int) -> int:
        """Level of the top cut: about ``num_sampled * top_nodes_per_sample`` nodes."""
        wanted = max(1, num_sampled * self.top_nodes_per_sample)
        return min(self.depth, max(0, round(math.log2(wanted))))

    def _top_cut(self, psi: tf.Tensor, top: int) -> tuple[tf.Tensor, tf.Tensor]:
        """``[B, K]`` float64 masses ``α·ψ·z + count`` of the ``K = 2^top`` nodes of level
        ``top`` for ``[B, P]`` ``psi``, and their cumulative sums."""
        first, size = 2**top, 2**top
        stats = tf.gather(self.node_stats, tf.range(first, first + size))  # [K, P]
        masses = (
            self.alpha * tf.matmul(psi, stats, transpose_b=True)
            + self._counts[first : first + size]
        )
        masses = tf.maximum(tf.cast(masses, tf.float64), 0.0)
        return masses, tf.math.cumsum(masses, axis=1)

    @staticmethod
    def _pick(cumulative: tf.Tensor, uniform: tf.Tensor, size: int) -> tf.Tensor:
        """Inverse transform: ``[..., n]`` indices into the last axis of ``cumulative``."""
        targets = tf.cast(uniform, cumulative.dtype) * cumulative[..., -1:]
        index = tf.searchsorted(cumulative, targets, side="right", out_type=tf.int64)
        return tf.minimum(index, size - 1)

    def _draw(
        self,
        queries: tf.Tensor,
        num_sampled: int | tf.Tensor,
        key: tf.Tensor,
        top_hint: int | None = None,
    ) -> tf.Tensor:
        """``[B, num_sampled]`` ids drawn with replacement from ``q(· | h_b)``.

        ``top_hint`` (default ``num_sampled``, which must then be a Python int) sets the top cut.
        """
        batch = tf.shape(queries)[0]
        hint = num_sampled if top_hint is None else top_hint
        top = self._top_level(hint)
        steps = self.depth - top
        psi = self._packed(queries, weighted=True)  # [B, P]
        uniforms = tf.random.stateless_uniform(
            tf.stack([batch, tf.cast(num_sampled, tf.int32), steps + 2]),
            seed=key,
            dtype=tf.float64,
        )
        # 1. The top cut: masses of all (query, node) pairs, inverse transform per query.
        masses, cumulative = self._top_cut(psi, top)
        index = self._pick(cumulative, uniforms[:, :, 0], 2**top)
        mass = tf.cast(tf.gather(masses, index, batch_dims=1), tf.float32)  # [B, S]
        node = index + 2**top
        # 2.-3. Descent and leaf, a few queries at a time: their gathered statistics (about
        # 4 MB) stay in cache and in reused buffers, ~4x faster than one [B, S, P] gather.
        per_sample = max(len(self._weights), self.leaf_size * self.embedding_dim)
        chunk = max(1, 2**20 // (max(1, hint) * per_sample))
        if queries.shape[0] is not None and queries.shape[0] <= chunk:  # one chunk: no loop
            return self._descend(node, mass, uniforms, psi, queries, steps=steps)
        padding = (-batch) % chunk

        def chunked(x: tf.Tensor, value: int | float = 0) -> tf.Tensor:
            x = tf.pad(x, [[0, padding]] + [[0, 0]] * (x.shape.rank - 1), constant_values=value)
            return tf.reshape(x, tf.concat([[-1, chunk], tf.shape(x)[1:]], axis=0))

        sampled = tf.map_fn(
            lambda args: self._descend(*args, steps=steps),
            (chunked(node, 2**top), chunked(mass, 1.0), *map(chunked, (uniforms, psi, queries))),
            fn_output_signature=tf.int64,
            parallel_iterations=4,
        )
        return tf.reshape(sampled, [-1, tf.shape(node)[1]])[:batch]

    def _walk(
        self, node: tf.Tensor, mass: tf.Tensor, uniforms: tf.Tensor, psi: tf.Tensor, steps: int
    ) -> tf.Tensor:
        """From nodes ``[c, S]`` (masses ``[c, S]``) ``steps`` levels down: ``[c, S]`` leaves.

        Each sample moves left with probability ``m_left / m_node``, ``m = α·ψ·z + count``,
        using ``uniforms[:, :, 1 + step]``; ``psi`` is ``[c, P]``.
        """
        for step in range(steps):
            left = 2 * node
            left_stats = tf.gather(self.node_stats, left)  # [c, S, P]
            left_mass = self.alpha * tf.einsum("bsp,bp->bs", left_stats, psi) + tf.gather(
                self._counts, left
            )
            p_left = tf.where(
                tf.gather(self._counts, left + 1) > 0,
                tf.clip_by_value(left_mass / tf.maximum(mass, 1e-30), 0.0, 1.0),
                1.0,
            )
            go_left = tf.cast(uniforms[:, :, step + 1], tf.float32) < p_left
            node = tf.where(go_left, left, left + 1)
            mass = tf.where(go_left, left_mass, mass - left_mass)
        return node - self.num_leaves

    def _leaf_pick(self, leaf: tf.Tensor, scores: tf.Tensor, uniform: tf.Tensor) -> tf.Tensor:
        """``[c, S]`` ids: one class of each ``[c, S]`` leaf, in proportion to its ``[c, S, L]``
        scores (padding rows excluded), by the ``[c, S]`` uniforms."""
        ids = leaf[:, :, tf.newaxis] * self.leaf_size + tf.range(self.leaf_size, dtype=tf.int64)
        scores = tf.where(ids < self.num_classes, scores, 0.0)
        cumulative = tf.math.cumsum(scores, axis=2)
        offset = self._pick(cumulative, uniform[:, :, tf.newaxis], self.leaf_size)[:, :, 0]
        return tf.minimum(leaf * self.leaf_size + offset, self.num_classes - 1)

    def _descend(
        self,
        node: tf.Tensor,
        mass: tf.Tensor,
        uniforms: tf.Tensor,
        psi: tf.Tensor,
        queries: tf.Tensor,
        steps: int,
    ) -> tf.Tensor:
        """Per query: from the top-cut nodes ``[c, S]`` down to ``[c, S]`` class ids.

        ``uniforms``: ``[c, S, steps + 2]``; ``psi``: ``[c, P]``; ``queries``: ``[c, D]``.
        Padding rows (zero queries at the first top node) draw some id, dropped by the caller.
        """
        leaf = self._walk(node, mass, uniforms, psi, steps)
        rows = tf.gather(self.table, leaf)  # [c, S, L, D]
        scores = self.alpha * tf.square(tf.einsum("bsld,bd->bsl", rows, queries)) + 1.0
        return self._leaf_pick(leaf, scores, uniforms[:, :, -1])

    def _draw_mixture(
        self,
        matrix: tf.Tensor,
        constant: tf.Tensor,
        num_sampled: int,
        unique: bool,
        key: tf.Tensor,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """``[S]`` ids from ``q̄ = α·wᵀHw + c`` and the number of draws made.

        All draws walk the tree together, level by level; the masses are divided by ``c``
        (ratios are what the walk needs), so nodes weigh ``α·⟨H/c, Z⟩ + count``.
        """
        ratio = matrix / constant  # [D, D] float64
        flat = tf.gather(tf.reshape(ratio, [-1]), self._rows * self.embedding_dim + self._cols)
        psi = tf.cast(flat * self._weights64, tf.float32)[tf.newaxis]  # [1, P]
        ratio32 = tf.cast(ratio, tf.float32)
        top = self._top_level(num_sampled)
        steps = self.depth - top
        masses, cumulative = self._top_cut(psi, top)  # [1, K]: once for all rounds

        def draw(n: tf.Tensor | int, round_: tf.Tensor | int) -> tf.Tensor:
            seed = key + tf.stack([tf.constant(0, tf.int64), tf.cast(round_, tf.int64)])
            shape = tf.stack([1, tf.cast(n, tf.int32), steps + 2])
            uniforms = tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float64)
            index = self._pick(cumulative, uniforms[:, :, 0], 2**top)  # [1, n]
            mass = tf.cast(tf.gather(masses, index, batch_dims=1), tf.float32)
            leaf = self._walk(index + 2**top, mass, uniforms, psi, steps)
            rows = tf.gather(self.table, leaf)  # [1, n, L, D]
            quadratic = tf.reduce_sum(tf.einsum("bsld,de->bsle", rows, ratio32) * rows, -1)
            ids = self._leaf_pick(leaf, self.alpha * quadratic + 1.0, uniforms[:, :, -1])
            return tf.reshape(ids, [-1])

        if not unique:
            return draw(num_sampled, 0), tf.constant(num_sampled, tf.int64)
        # A few more draws than S in the first round: a repeat or two then costs no second one.
        return draw_unique(draw, num_sampled, first=num_sampled + num_sampled // 16 + 8)

    def _draw_unique(
        self, queries: tf.Tensor, num_sampled: int, key: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """``[B, S]`` distinct ids per query (repeats rejected) and ``[B]`` draws it took."""

        def distinct_count(stream: tf.Tensor) -> tf.Tensor:
            return tf.reduce_sum(tf.cast(~repeated_per_row(stream), tf.int32), axis=1)

        def missing(round_: tf.Tensor, stream: tf.Tensor) -> tf.Tensor:
            return tf.reduce_any(distinct_count(stream) < num_sampled)

        def draw_more(round_: tf.Tensor, stream: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            # Double the stream of every row: few rounds even for peaked q.
            round_ += 1
            more = self._draw(
                queries,
                tf.shape(stream)[1],
                key + tf.stack([tf.constant(0, tf.int64), tf.cast(round_, tf.int64)]),
                top_hint=num_sampled,
            )
            return round_, tf.concat([stream, more], axis=1)

        _, stream = tf.while_loop(
            missing,
            draw_more,
            (tf.constant(0), self._draw(queries, num_sampled, key)),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([queries.shape[0], None])),
        )
        # The first S distinct ids of each row, as sequential rejection keeps them.
        keep = ~repeated_per_row(stream)
        keep &= tf.cumsum(tf.cast(keep, tf.int32), axis=1) <= num_sampled
        position = tf.range(tf.shape(stream)[1])
        order = tf.argsort(tf.where(keep, position, tf.shape(stream)[1] + position), axis=1)
        sampled = tf.gather(stream, order[:, :num_sampled], batch_dims=1)
        last = tf.reduce_max(tf.where(keep, position, -1), axis=1)
        return tf.ensure_shape(sampled, [queries.shape[0], num_sampled]), last + 1

    def get_config(self) -> dict:
        """The scalar arguments. The table is not part of the config, so a layer rebuilt from
        its config cannot rebuild this sampler (it loads without one and says so)."""
        return {
            "num_classes": self.num_classes,
            "alpha": self.alpha,
            "leaf_size": self.leaf_size,
            "seed": self.seed,
            "mode": self.mode,
        }


class KernelSamplerRebuild(tf.keras.callbacks.Callback):
    """Keras callback: rebuilds a :class:`QuadraticKernelSampler` during ``fit``, and times it.

    The tree then follows the model: between rebuilds the sampler draws from (and reports the
    exact probabilities of) the snapshot of the last rebuild. A rebuild costs ``N·D²``
    multiply-adds; the callback measures its wall time, so that the cost per training batch is
    known: :attr:`seconds_per_rebuild`, :attr:`seconds_per_batch` (total rebuild time over the
    batches seen), also written to the epoch's logs (``kernel_rebuild_seconds``,
    ``kernel_rebuild_seconds_per_batch``) and to the ``recsampled`` logger.

    Args:
        sampler: the sampler.
        every_n_batches: rebuild after every this many training batches (and at the end of each
            epoch).
        embeddings: a function returning the current ``[num_classes, embedding_dim]`` table
            (e.g. the candidate tower applied to every id); default: the ``tf.Variable`` the
            sampler was built from.

    Example:
        >>> table = tf.Variable(tf.random.normal([100, 8]))
        >>> rebuild = KernelSamplerRebuild(QuadraticKernelSampler(table), every_n_batches=2)
        >>> for batch in range(5):
        ...     rebuild.on_train_batch_end(batch)
        >>> rebuild.rebuilds, rebuild.seconds_per_batch < 1.0
        (2, True)
        >>> model.fit(x, y, callbacks=[rebuild])  # doctest: +SKIP
    """

    def __init__(
        self,
        sampler: QuadraticKernelSampler,
        every_n_batches: int = 1,
        *,
        embeddings: Callable[[], tf.Tensor] | None = None,
    ):
        super().__init__()
        if not isinstance(sampler, QuadraticKernelSampler):
            raise ValueError(
                f"`sampler` must be a QuadraticKernelSampler. {received('sampler', sampler)}"
            )
        if embeddings is not None and not callable(embeddings):
            raise ValueError(
                "`embeddings` must be None or a function returning the [num_classes, "
                f"embedding_dim] table. {received('embeddings', embeddings)}"
            )
        self.sampler = sampler
        self.every_n_batches = check_positive_int("every_n_batches", every_n_batches)
        if embeddings is None:
            self._rebuild = tf.function(sampler.rebuild)
        else:
            self._rebuild = tf.function(lambda: sampler.rebuild(embeddings()))
        self.batches = 0
        self.rebuilds = 0
        self.rebuild_seconds = 0.0

    @property
    def seconds_per_rebuild(self) -> float:
        """Mean wall seconds of one rebuild (0 before the first)."""
        return self.rebuild_seconds / self.rebuilds if self.rebuilds else 0.0

    @property
    def seconds_per_batch(self) -> float:
        """Rebuild seconds amortised over the training batches seen (0 before the first)."""
        return self.rebuild_seconds / self.batches if self.batches else 0.0

    def rebuild(self) -> None:
        """Rebuilds the tree now and adds the time it took."""
        start = time.perf_counter()
        self._rebuild()
        self.rebuild_seconds += time.perf_counter() - start
        self.rebuilds += 1

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.batches += 1
        if self.batches % self.every_n_batches == 0:
            self.rebuild()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.batches % self.every_n_batches:  # not just rebuilt by the last batch
            self.rebuild()
        if logs is not None:
            logs["kernel_rebuild_seconds"] = self.seconds_per_rebuild
            logs["kernel_rebuild_seconds_per_batch"] = self.seconds_per_batch
        logger.info(
            "kernel sampler: %d rebuilds, %.3f s each, %.4f s per training batch",
            self.rebuilds,
            self.seconds_per_rebuild,
            self.seconds_per_batch,
        )

"""Sampled softmax with the contract of ``tf.nn.sampled_softmax_loss``, and per-example samples.

For an example with input ``h`` (``[D]``), labels ``t_1..t_T`` (``T = num_true``) and sampled
candidates ``s_1..s_S`` with expected counts ``Q``, the logits are (Jean et al., 2015; TF's
``_compute_sampled_logits`` in ``tensorflow/python/ops/nn_impl.py``)::

    o_j = h·w_j + b_j - log Q(j)                  for j in {t_1..t_T, s_1..s_S}
    o_s += -FLT_MAX   if s equals one of the row's labels (an "accidental hit")

and the loss is the softmax cross-entropy of ``o`` against the target ``1/T`` on every label
column and 0 on every sampled column. Subtracting ``log Q`` (the "logQ correction") makes the
sampled softmax a consistent estimator of the full softmax as S grows.

Beyond TF: ``sampled_values`` may carry per-example candidates ``[batch_size, S]`` with
``[batch_size, S]`` expected counts (adaptive samplers draw a different set for each query);
accidental hits and logQ then apply row by row. With shared ``[S]`` candidates the numbers and
gradients are those of TF's op (tested to 1e-5).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from recsampled._validation import check_num_sampled, check_positive_int, received
from recsampled.samplers.base import SampledValues, as_true_classes, check_ids_in_range

_LOWEST = float(np.finfo(np.float32).min)  # -FLT_MAX, what TF adds to accidental hits

Weights = tf.Tensor | tf.Variable | Sequence[tf.Tensor | tf.Variable]


def _as_tensor(value: object) -> tf.Tensor | tf.Variable:
    return value if isinstance(value, tf.Variable) else tf.convert_to_tensor(value)


def _as_shards(weights: Weights) -> list:
    if isinstance(weights, tf.Tensor | tf.Variable | np.ndarray):
        return [_as_tensor(weights)]
    if isinstance(weights, Sequence) and len(weights) > 0 and not isinstance(weights, str):
        return [_as_tensor(w) for w in weights]
    raise ValueError(
        "`weights` must be a [num_classes, dim] tensor or variable, or a non-empty list of "
        f"shards partitioned by 'div'. {received('weights', weights)}"
    )


def lookup(params: Weights, ids: tf.Tensor) -> tf.Tensor:
    """Gathers rows of ``params`` (one tensor, or shards partitioned by ``"div"``)."""
    shards = _as_shards(params)
    if len(shards) == 1:
        return tf.gather(shards[0], ids)
    return tf.nn.embedding_lookup(shards, ids)


def _check_shapes(
    shards: list, biases: Weights, inputs: tf.Tensor, labels: tf.Tensor, num_classes: int
) -> None:
    dims = {int(s.shape[1]) for s in shards if s.shape.rank == 2 and s.shape[1] is not None}
    if any(s.shape.rank != 2 for s in shards) or len(dims) > 1:
        raise ValueError(
            "`weights` must be [num_classes, dim] (or shards [rows_i, dim] with one dim). "
            f"Received: shapes {[tuple(s.shape) for s in shards]}."
        )
    rows = sum(int(s.shape[0]) for s in shards if s.shape[0] is not None)
    if all(s.shape[0] is not None for s in shards) and rows < num_classes:
        raise ValueError(
            f"`weights` must have at least num_classes={num_classes} rows. "
            f"Received: weights with {rows} rows."
        )
    bias_shards = _as_shards(biases)
    if any(b.shape.rank != 1 for b in bias_shards):
        raise ValueError(
            "`biases` must be a [num_classes] vector (or shards of one). "
            f"Received: shapes {[tuple(b.shape) for b in bias_shards]}."
        )
    if inputs.shape.rank != 2:
        raise ValueError(
            f"`inputs` must have shape [batch_size, dim]. Received: inputs with shape "
            f"{inputs.shape}."
        )
    if dims and inputs.shape[1] is not None and int(inputs.shape[1]) not in dims:
        raise ValueError(
            "`inputs` and `weights` must have the same dim (last axis). "
            f"Received: inputs with shape {inputs.shape}, weights with dim {dims.pop()}."
        )
    if (
        inputs.shape[0] is not None
        and labels.shape[0] is not None
        and inputs.shape[0] != labels.shape[0]
    ):
        raise ValueError(
            "`labels` and `inputs` must have the same batch size. "
            f"Received: labels with shape {labels.shape}, inputs with shape {inputs.shape}."
        )


def _as_labels(labels: tf.Tensor, num_true: int, num_classes: int) -> tf.Tensor:
    tensor = tf.convert_to_tensor(labels)
    if not tensor.dtype.is_integer:
        raise ValueError(
            "`labels` must be integer class ids of shape [batch_size, num_true]. "
            f"Received: labels of dtype {tensor.dtype.name}."
        )
    if tensor.shape.rank == 1 and num_true == 1:
        tensor = tensor[:, tf.newaxis]
    if tensor.shape.rank != 2 or (tensor.shape[1] is not None and tensor.shape[1] != num_true):
        raise ValueError(
            f"`labels` must have shape [batch_size, num_true={num_true}]. "
            f"Received: labels with shape {tensor.shape}."
        )
    tensor = as_true_classes(tensor)
    check_ids_in_range("labels", tensor, num_classes)
    return tensor


def _as_sampled_values(
    sampled_values: Sequence[tf.Tensor], num_sampled: int, labels: tf.Tensor
) -> SampledValues:
    if not isinstance(sampled_values, Sequence) or len(sampled_values) != 3:
        raise ValueError(
            "`sampled_values` must be a (sampled_candidates, true_expected_count, "
            f"sampled_expected_count) triple. {received('sampled_values', sampled_values)}"
        )
    candidates, true_count, sampled_count = (
        tf.stop_gradient(tf.convert_to_tensor(v)) for v in sampled_values
    )
    if not candidates.dtype.is_integer:
        raise ValueError(
            "`sampled_values[0]` (sampled_candidates) must hold integer ids. "
            f"Received: dtype {candidates.dtype.name}."
        )
    if candidates.shape.rank not in (1, 2) or candidates.shape[-1] != num_sampled:
        raise ValueError(
            f"`sampled_values[0]` (sampled_candidates) must have shape [num_sampled={num_sampled}]"
            f" or [batch_size, {num_sampled}]. Received: shape {candidates.shape}."
        )
    if candidates.shape.rank == 2 and not candidates.shape[:1].is_compatible_with(labels.shape[:1]):
        raise ValueError(
            "Per-example `sampled_values[0]` must have one row per example. Received: "
            f"sampled_candidates with shape {candidates.shape}, labels with shape {labels.shape}."
        )
    if not sampled_count.shape.is_compatible_with(candidates.shape):
        raise ValueError(
            "`sampled_values[2]` (sampled_expected_count) must have the shape of the candidates "
            f"{candidates.shape}. Received: shape {sampled_count.shape}."
        )
    if not true_count.shape.is_compatible_with(labels.shape):
        raise ValueError(
            "`sampled_values[1]` (true_expected_count) must have the shape of `labels` "
            f"{labels.shape}. Received: shape {true_count.shape}."
        )
    return SampledValues(tf.cast(candidates, tf.int64), true_count, sampled_count)


def sampled_logits(
    weights: Weights,
    biases: Weights,
    labels: tf.Tensor,
    inputs: tf.Tensor,
    num_sampled: int,
    num_classes: int,
    num_true: int = 1,
    sampled_values: Sequence[tf.Tensor] | None = None,
    subtract_log_q: bool = True,
    remove_accidental_hits: bool = False,
    seed: int | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Logits and soft targets of the sampled softmax (TF's ``_compute_sampled_logits``).

    Args:
        weights: ``[num_classes, dim]`` output embeddings, or a list of shards ("div").
        biases: ``[num_classes]`` output biases.
        labels: ``[batch_size, num_true]`` integer ids.
        inputs: ``[batch_size, dim]`` float activations.
        num_sampled: S, candidates per batch (or per example).
        num_classes: N.
        num_true: labels per example.
        sampled_values: a sampler's triple; shared ``[S]`` or per-example ``[batch_size, S]``.
            If None, TF's ``log_uniform_candidate_sampler`` draws ``S`` unique ids, as in TF.
        subtract_log_q: subtract ``log(expected_count)`` from every logit.
        remove_accidental_hits: add ``-FLT_MAX`` to sampled logits equal to a label of the row.
        seed: seed of the default sampler.

    Returns:
        ``(logits, targets)``, both ``[batch_size, num_true + S]``: label columns first.
    """
    num_sampled = check_positive_int("num_sampled", num_sampled)
    num_classes = check_positive_int("num_classes", num_classes)
    num_true = check_positive_int("num_true", num_true)
    inputs = tf.convert_to_tensor(inputs)
    if not inputs.dtype.is_floating:
        raise ValueError(
            f"`inputs` must be a float tensor. Received: inputs of dtype {inputs.dtype.name}."
        )
    labels = _as_labels(labels, num_true, num_classes)
    shards = _as_shards(weights)
    _check_shapes(shards, biases, inputs, labels, num_classes)
    if sampled_values is None:  # TF's own default, so that equal seeds give equal numbers
        check_num_sampled(num_sampled, num_classes, unique=True)
        sampled_values = tf.random.log_uniform_candidate_sampler(
            labels, num_true, num_sampled, unique=True, range_max=num_classes, seed=seed
        )
    sampled, true_count, sampled_count = _as_sampled_values(sampled_values, num_sampled, labels)
    check_ids_in_range("sampled_values[0]", sampled, num_classes)
    per_example = sampled.shape.rank == 2

    true_w = tf.reshape(lookup(shards, tf.reshape(labels, [-1])), [-1, num_true, inputs.shape[1]])
    sampled_w = lookup(shards, sampled)
    true_b = tf.reshape(lookup(biases, tf.reshape(labels, [-1])), [-1, num_true])
    sampled_b = lookup(biases, sampled)
    true_w, sampled_w = tf.cast(true_w, inputs.dtype), tf.cast(sampled_w, inputs.dtype)
    true_b, sampled_b = tf.cast(true_b, inputs.dtype), tf.cast(sampled_b, inputs.dtype)

    # [B, T]: row-wise dot products of each example with its own labels' weights.
    true_logits = tf.reduce_sum(inputs[:, tf.newaxis, :] * true_w, axis=-1) + true_b
    if per_example:
        # [B, S]: each example against its own candidates.
        sampled_logits_ = tf.einsum("bd,bsd->bs", inputs, sampled_w) + sampled_b
        candidates = sampled[:, tf.newaxis, :]  # [B, 1, S]
    else:
        # [B, S]: every example against the shared candidates.
        sampled_logits_ = tf.matmul(inputs, sampled_w, transpose_b=True) + sampled_b
        candidates = sampled[tf.newaxis, tf.newaxis, :]  # [1, 1, S]

    if remove_accidental_hits:
        if num_true == 1:
            hits = tf.equal(labels, candidates[:, 0, :])  # [B, S]
        else:
            hits = tf.reduce_any(tf.equal(labels[:, :, tf.newaxis], candidates), axis=1)
        sampled_logits_ += tf.where(
            hits, tf.constant(_LOWEST, inputs.dtype), tf.constant(0.0, inputs.dtype)
        )
    if subtract_log_q:
        true_logits -= tf.math.log(tf.cast(true_count, inputs.dtype))
        sampled_logits_ -= tf.math.log(tf.cast(sampled_count, inputs.dtype))

    logits = tf.concat([true_logits, sampled_logits_], axis=1)
    targets = tf.concat(
        [tf.ones_like(true_logits) / num_true, tf.zeros_like(sampled_logits_)], axis=1
    )
    return logits, targets


def sampled_softmax_loss(
    weights: Weights,
    biases: Weights,
    labels: tf.Tensor,
    inputs: tf.Tensor,
    num_sampled: int,
    num_classes: int,
    num_true: int = 1,
    sampled_values: Sequence[tf.Tensor] | None = None,
    remove_accidental_hits: bool = True,
    seed: int | None = None,
    name: str = "sampled_softmax_loss",
) -> tf.Tensor:
    """Sampled softmax training loss, a drop-in for ``tf.nn.sampled_softmax_loss``.

    Same arguments and, for shared samples, the same values and gradients as TF's op. In
    addition, ``sampled_values`` may be per-example: ``[batch_size, num_sampled]`` candidates and
    expected counts (see :class:`recsampled.samplers.SampledValues`).

    Args:
        weights: ``[num_classes, dim]`` tensor or variable, or a list of shards partitioned by
            ``"div"`` (TF's ``partition_strategy`` in TF 2).
        biases: ``[num_classes]`` class biases.
        labels: ``[batch_size, num_true]`` integer target classes (``[batch_size]`` accepted when
            ``num_true == 1``).
        inputs: ``[batch_size, dim]`` forward activations of the input network.
        num_sampled: S, classes to sample (per batch, or per example for per-example samples).
        num_classes: N, the number of possible classes.
        num_true: target classes per example.
        sampled_values: a ``(sampled_candidates, true_expected_count,
            sampled_expected_count)`` triple from any sampler. Default: TF's log-uniform sampler
            with ``unique=True``.
        remove_accidental_hits: whether to mask sampled classes equal to one of the row's labels.
        seed: seed of the default sampler.
        name: name scope of the ops.

    Returns:
        ``[batch_size]`` float tensor of per-example losses.

    Example:
        >>> w = tf.random.normal([1000, 16]); b = tf.zeros([1000])
        >>> x = tf.random.normal([4, 16]); y = tf.constant([[1], [2], [3], [4]])
        >>> sampled_softmax_loss(w, b, y, x, num_sampled=32, num_classes=1000).shape
        TensorShape([4])
    """
    with tf.name_scope(name):
        logits, targets = sampled_logits(
            weights,
            biases,
            labels,
            inputs,
            num_sampled=num_sampled,
            num_classes=num_classes,
            num_true=num_true,
            sampled_values=sampled_values,
            subtract_log_q=True,
            remove_accidental_hits=remove_accidental_hits,
            seed=seed,
        )
        return tf.nn.softmax_cross_entropy_with_logits(
            labels=tf.stop_gradient(targets), logits=logits
        )

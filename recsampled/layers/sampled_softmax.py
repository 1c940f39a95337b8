"""``SampledSoftmax``: a Keras output layer trained with the sampled softmax, evaluated in full.

The layer owns the output embeddings ``W`` (``[num_classes, dim]``, the layout of
``tf.nn.sampled_softmax_loss`` and of ``Embedding``, so it can share the input embedding's table)
and the biases ``b`` (``[num_classes]``). For hidden states ``h``:

- inference (``training=False``: ``predict``, ``evaluate``, ``model(x)``): the full softmax,
  ``p = softmax(h·Wᵀ + b)`` over all ``num_classes``;
- training: ``sampled_loss`` computes ``recsampled.sampled_softmax_loss`` with candidates from
  ``sampler`` (one shared draw of ``num_sampled`` ids per step, ``unique=True``, or per-example
  ``[batch, S]`` draws), logQ-corrected, accidental hits removed. ``call(training=True)`` returns
  ``h`` unchanged, so that the model's ``train_step`` (``recsampled.layers.SampledSoftmaxModel``)
  can turn the hidden states and the targets into that loss without a ``[batch, N]`` matrix.

Sequences: ``[batch, time, dim]`` inputs are flattened to ``[batch * time, dim]``, so every step
is one example (per-example samplers draw per step). Steps masked by Keras (for example
``Embedding(mask_zero=True)``) are dropped before sampling: they add nothing to the loss, which
is the mean over real steps, ``Σ_real w·ℓ / #real`` (``w`` the sample weight, 1 by default).

The default sampler, ``LogUniformSampler``, is TF's: it assumes ids sorted by decreasing
frequency (id 0 the most frequent). With other orderings pass ``UnigramSampler(counts)`` or
``"uniform"``.
"""

from __future__ import annotations

import types
import warnings
from typing import Any, NamedTuple

import tensorflow as tf

from recsampled._validation import (
    check_bool,
    check_num_sampled,
    check_optional_seed,
    check_positive_int,
    received,
)
from recsampled.losses import full_logits
from recsampled.losses import sampled_logits as compute_sampled_logits
from recsampled.samplers.registry import SamplerLike, get_sampler, serialize_sampler

_PLAIN_MODEL_ERROR = (
    "SampledSoftmax {name!r} was called in training by a model that is not a "
    "recsampled.layers.SampledSoftmaxModel or SampledSoftmaxSequential. In training the layer "
    "returns its inputs (the hidden states), so a compiled loss such as "
    "'sparse_categorical_crossentropy' would compare them with the class ids and get no "
    "gradients for the output weights. Build the model as "
    "`recsampled.layers.SampledSoftmaxModel(inputs, outputs)` (or SampledSoftmaxSequential) and "
    "call `compile(optimizer=...)` without a loss: its fit trains with the sampled softmax."
)


def _check_not_keras3(inputs: Any) -> None:
    """Raises ``TypeError`` for Keras 3 tensors, which the tf-keras layer cannot take."""
    for value in tf.nest.flatten(inputs):
        module = type(value).__module__
        if module == "keras" or module.startswith("keras."):
            raise TypeError(
                "recsampled.layers.SampledSoftmax is a tf-keras (Keras 2) layer, but it got a "
                f"Keras 3 tensor ({type(value).__name__} from `import keras`). Use the Keras 3 "
                "layer, `from recsampled.keras3 import SampledSoftmax, SampledSoftmaxModel`, "
                "or build the whole model with tf.keras (tf_keras) layers. Received: inputs of "
                f"type {module}.{type(value).__name__}."
            )


class SampledBatch(NamedTuple):
    """The sampled logits of a training step (:meth:`SampledSoftmax.sampled_logits`)."""

    logits: tf.Tensor
    """``[steps, 1 + S]``: the target's logit first, then the sampled classes'."""
    labels: tf.Tensor
    """``[steps, 1 + S]``: one-hot on column 0."""
    weights: tf.Tensor
    """``[steps]``: the sample weight of each real step."""


def step_weights(sample_weight: tf.Tensor | None, targets: tf.Tensor) -> tf.Tensor:
    """float32 weights shaped like ``targets`` from ``[batch]``/``[batch, 1]``/full weights."""
    weights = tf.ones_like(targets, tf.float32)
    if sample_weight is None:
        return weights
    weight = tf.cast(sample_weight, tf.float32)
    while weight.shape.rank < targets.shape.rank:
        weight = weight[..., tf.newaxis]
    return weights * weight


def masked_mean(
    values: tf.Tensor, mask: tf.Tensor | None = None, sample_weight: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean of ``sample_weight * values`` over the unmasked entries, and their number.

    Args:
        values: ``[batch, ...]`` per-step losses.
        mask: bool, shaped like ``values`` (or None: every entry counts).
        sample_weight: ``[batch]`` or ``values``-shaped weights (or None: 1).

    Returns:
        ``(mean, count)``: float32 scalars; ``mean`` is 0 when ``count`` is 0.
    """
    values = tf.cast(values, tf.float32)
    weights = step_weights(sample_weight, values)
    counted = tf.ones_like(values) if mask is None else tf.cast(mask, tf.float32)
    count = tf.reduce_sum(counted)
    return tf.math.divide_no_nan(tf.reduce_sum(values * weights * counted), count), count


@tf.keras.utils.register_keras_serializable(package="recsampled")
class SampledSoftmax(tf.keras.layers.Layer):
    """Output layer over ``num_classes``: sampled softmax to train, full softmax to predict.

    Use it as the output of a :class:`recsampled.layers.SampledSoftmaxModel` (functional) or
    :class:`recsampled.layers.SampledSoftmaxSequential`; their ``train_step`` feeds it the
    integer targets ``y`` of ``fit(x, y)``.

    Args:
        num_classes: N, the number of classes (the vocabulary size).
        num_sampled: S, candidates drawn per training step (``unique=True``, so S <= N).
        sampler: ``"log_uniform"`` (default; assumes ids sorted by decreasing frequency),
            ``"uniform"``, or a :class:`recsampled.CandidateSampler` over ``num_classes``
            (``UnigramSampler(counts)``, per-example samplers). A sampler with
            ``needs_queries`` gets the ``[steps, dim]`` hidden states.
        tied_to: an ``Embedding(num_classes, dim)`` whose table serves as the output embeddings
            (weight tying); the layer then owns only the biases. ``dim`` must equal the last
            axis of this layer's inputs.
        remove_accidental_hits: mask sampled ids equal to the step's target.
        kernel_initializer: initializer of the ``[num_classes, dim]`` output embeddings.
        bias_initializer: initializer of the ``[num_classes]`` biases.
        seed: op-level seed of the sampler.
        **kwargs: ``tf.keras.layers.Layer`` arguments (``name``, ...).

    Input shape: ``[batch, dim]`` or ``[batch, time, dim]`` (a Keras mask over ``[batch, time]``
    is honoured). Output shape: ``[..., num_classes]`` probabilities; in training, the inputs.

    Optimizer: the training gradient of the ``[num_classes, dim]`` output embeddings is an
    ``IndexedSlices`` over about ``num_sampled + batch`` rows, but tf-keras' ``SGD`` (it keeps
    momentum slots even with ``momentum=0``) and ``Adam`` update *every* row at every step, which
    at large ``num_classes`` costs more than the sampled softmax saves (seconds per step at
    200,000 x 1024 on a CPU). Use :class:`recsampled.layers.LazyAdam`,
    ``tf.keras.optimizers.Adagrad`` or ``tf.keras.optimizers.legacy.SGD``; ``fit`` of the
    models warns otherwise (:mod:`recsampled.layers.optimizers`).

    Example:
        >>> import recsampled
        >>> inputs = tf.keras.Input([None], dtype="int32")
        >>> x = tf.keras.layers.Embedding(1000, 32, mask_zero=True)(inputs)
        >>> x = tf.keras.layers.LSTM(64, return_sequences=True)(x)
        >>> outputs = SampledSoftmax(1000, num_sampled=64)(x)
        >>> model = recsampled.layers.SampledSoftmaxModel(inputs, outputs)
        >>> model.compile(optimizer=recsampled.layers.LazyAdam())
        >>> model.fit(token_ids[:, :-1], token_ids[:, 1:])  # doctest: +SKIP
    """

    def __init__(
        self,
        num_classes: int,
        num_sampled: int,
        *,
        sampler: SamplerLike = "log_uniform",
        tied_to: tf.keras.layers.Embedding | str | None = None,
        remove_accidental_hits: bool = True,
        kernel_initializer: str | tf.keras.initializers.Initializer = "glorot_uniform",
        bias_initializer: str | tf.keras.initializers.Initializer = "zeros",
        seed: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.num_sampled = check_num_sampled(num_sampled, self.num_classes, unique=True)
        self.sampler = get_sampler(sampler, self.num_classes)
        self.remove_accidental_hits = check_bool("remove_accidental_hits", remove_accidental_hits)
        self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)
        self.bias_initializer = tf.keras.initializers.get(bias_initializer)
        self.seed = check_optional_seed("seed", seed)
        self.supports_masking = True
        self._in_sampled_model = False  # set by SampledSoftmaxMixin.call
        # The tied Embedding belongs to the model: a plain namespace keeps Keras from tracking
        # (and saving) its table a second time here. A name alone (from a config) is linked by
        # the model once it is rebuilt.
        self._tied_name: str | None = None
        self._tied = types.SimpleNamespace(embedding=None)
        if isinstance(tied_to, tf.keras.layers.Embedding):
            self._tie(tied_to)
        elif isinstance(tied_to, str):
            self._tied_name = tied_to
        elif tied_to is not None:
            raise ValueError(
                "`tied_to` must be a tf.keras.layers.Embedding (or None). "
                f"{received('tied_to', tied_to)}"
            )

    # -- weights ------------------------------------------------------------------------------

    def _tie(self, embedding: tf.keras.layers.Embedding) -> None:
        """Uses ``embedding``'s table as the output embeddings (checks its shape)."""
        if embedding.input_dim != self.num_classes:
            raise ValueError(
                "`tied_to` must embed as many ids as the layer has classes: "
                f"Embedding(input_dim={embedding.input_dim}) vs num_classes={self.num_classes}. "
                f"Received: tied_to={embedding.name!r}."
            )
        if self.built and embedding.output_dim != self._dim:
            raise ValueError(self._tied_dim_error(embedding))
        self._tied_name = embedding.name
        self._tied.embedding = embedding

    def _tied_dim_error(self, embedding: tf.keras.layers.Embedding) -> str:
        return (
            "`tied_to` must have output_dim equal to the last axis of the layer's inputs to tie "
            f"the weights. Received: tied_to={embedding.name!r} with output_dim="
            f"{embedding.output_dim}, inputs with dim {self._dim}. Project the inputs to "
            f"{embedding.output_dim} first (e.g. Dense({embedding.output_dim})) or leave "
            "`tied_to=None`."
        )

    @property
    def tied_to(self) -> tf.keras.layers.Embedding | None:
        """The Embedding whose table this layer uses, or None (own weights or not linked yet)."""
        return self._tied.embedding

    def build(self, input_shape: tf.TensorShape) -> None:
        input_shape = tf.TensorShape(input_shape)
        if input_shape.rank is None or input_shape.rank < 2 or input_shape[-1] is None:
            raise ValueError(
                "`inputs` must have shape [batch, dim] or [batch, time, dim] with a known dim. "
                f"Received: inputs with shape {input_shape}."
            )
        self._dim = int(input_shape[-1])
        embedding = self.tied_to
        if embedding is not None:
            if embedding.output_dim != self._dim:
                raise ValueError(self._tied_dim_error(embedding))
            if not embedding.built:
                embedding.build(None)
        elif self._tied_name is None:
            self.kernel = self.add_weight(
                name="kernel",
                shape=[self.num_classes, self._dim],
                initializer=self.kernel_initializer,
            )
        self.bias = self.add_weight(
            name="bias", shape=[self.num_classes], initializer=self.bias_initializer
        )
        super().build(input_shape)

    def output_embeddings(self) -> tf.Tensor:
        """``[num_classes, dim]``: the own kernel or the tied Embedding's table."""
        if self._tied_name is None:
            return self.kernel
        embedding = self.tied_to
        if embedding is not None:
            return embedding.embeddings
        # Only while Keras rebuilds a model from its config, before the model links the tied
        # Embedding by name (SampledSoftmaxModel.from_config); running it is an error.
        check = tf.debugging.Assert(
            False,
            [
                f"SampledSoftmax {self.name!r} is tied to the Embedding {self._tied_name!r} but "
                "not linked to it. Load the model as a recsampled.layers.SampledSoftmaxModel or "
                "SampledSoftmaxSequential (they link it), not as a plain tf.keras.Model."
            ],
        )
        with tf.control_dependencies([check]):
            return tf.zeros([self.num_classes, self._dim])

    # -- forward ------------------------------------------------------------------------------

    def logits(self, inputs: tf.Tensor) -> tf.Tensor:
        """``[..., num_classes]`` full logits ``h·Wᵀ + b`` of ``[..., dim]`` inputs."""
        flat = tf.reshape(inputs, [-1, self._dim])
        logits = full_logits(self.output_embeddings(), self.bias, flat, self.num_classes)
        return tf.reshape(logits, tf.concat([tf.shape(inputs)[:-1], [self.num_classes]], 0))

    def call(
        self, inputs: tf.Tensor, training: bool | None = None, mask: tf.Tensor | None = None
    ) -> tf.Tensor:
        """Full-softmax probabilities ``[..., num_classes]``; in training, ``inputs`` as is.

        Raises:
            TypeError: for Keras 3 (``import keras``) tensors; ``recsampled.keras3`` has the
                Keras 3 layer.
            ValueError: in training, inside a model that is not a ``SampledSoftmaxModel`` /
                ``SampledSoftmaxSequential`` (its loss would see hidden states, not
                probabilities).
        """
        _check_not_keras3(inputs)
        if training:
            if self._inbound_nodes and not self._in_sampled_model:
                raise ValueError(_PLAIN_MODEL_ERROR.format(name=self.name))
            return tf.identity(inputs)
        # Keras' softmax keeps the logits on the result, so cross-entropy uses them directly.
        return tf.keras.activations.softmax(self.logits(inputs))

    def compute_output_shape(self, input_shape: tf.TensorShape) -> tf.TensorShape:
        return tf.TensorShape(input_shape)[:-1].concatenate([self.num_classes])

    # -- training -----------------------------------------------------------------------------

    def check_targets(self, targets: tf.Tensor | None, inputs: tf.Tensor) -> tf.Tensor:
        """Validates integer targets for ``inputs`` and returns them as ``inputs.shape[:-1]`` int64.

        Accepted: ``[batch]`` for ``[batch, dim]`` inputs, ``[batch, time]`` for
        ``[batch, time, dim]`` (a trailing axis of 1 is squeezed). Ids must lie in
        ``[0, num_classes)``; that is checked when the step runs (``InvalidArgumentError``).

        Raises:
            ValueError: for missing, float or one-hot targets, or a shape that does not match.
        """
        if targets is None:
            raise ValueError(
                "`y` must be given: a SampledSoftmax model trains and evaluates against integer "
                f"class ids in [0, {self.num_classes}), e.g. `model.fit(x, y)` with y of shape "
                "[batch] or [batch, time]. Received: y=None."
            )
        targets = tf.convert_to_tensor(targets)
        inputs = tf.convert_to_tensor(inputs)
        rank = inputs.shape.rank
        one_hot = targets.shape.rank == rank and targets.shape[-1] == self.num_classes > 1
        if one_hot or not targets.dtype.is_integer:
            hint = (
                "Received one-hot (or probability) targets: pass the class ids instead, "
                "`y = np.argmax(y, axis=-1)`"
                if one_hot
                else "Cast the ids to an integer type, e.g. `y.astype('int64')`"
            )
            raise ValueError(
                f"`y` must be integer class ids of shape {inputs.shape[:-1]} (not one-hot). "
                f"{hint}. Received: y of dtype {targets.dtype.name} and shape {targets.shape}."
            )
        if targets.shape.rank == rank and targets.shape[-1] == 1:
            targets = tf.squeeze(targets, axis=-1)
        if not targets.shape.is_compatible_with(inputs.shape[:-1]):
            raise ValueError(
                f"`y` must have one class id per output step, shape {inputs.shape[:-1]} for "
                f"inputs of shape {inputs.shape}. Received: y with shape {targets.shape}."
            )
        targets = tf.cast(targets, tf.int64)
        message = f"`y` must hold class ids in [0, num_classes={self.num_classes})."
        with tf.control_dependencies(
            [
                tf.debugging.assert_non_negative(targets, message=message),
                tf.debugging.assert_less(targets, tf.constant(self.num_classes, tf.int64), message),
            ]
        ):
            return tf.identity(targets)

    def sampled_loss(
        self,
        targets: tf.Tensor,
        inputs: tf.Tensor,
        *,
        mask: tf.Tensor | None = None,
        sample_weight: tf.Tensor | None = None,
    ) -> tf.Tensor:
        """Scalar sampled softmax loss: the mean over real steps of ``sample_weight * loss``.

        Args:
            targets: ``[batch]`` or ``[batch, time]`` integer ids (``check_targets``).
            inputs: ``[batch, dim]`` or ``[batch, time, dim]`` hidden states.
            mask: bool ``inputs.shape[:-1]``; False steps are dropped before sampling.
            sample_weight: ``[batch]`` or ``inputs.shape[:-1]`` weights.

        Returns:
            float32 scalar, differentiable w.r.t. ``inputs``, the output embeddings and biases.
        """
        batch = self.sampled_logits(targets, inputs, mask=mask, sample_weight=sample_weight)
        losses = tf.nn.softmax_cross_entropy_with_logits(
            labels=tf.stop_gradient(batch.labels), logits=batch.logits
        )
        return masked_mean(losses, sample_weight=batch.weights)[0]

    def sampled_logits(
        self,
        targets: tf.Tensor,
        inputs: tf.Tensor,
        *,
        mask: tf.Tensor | None = None,
        sample_weight: tf.Tensor | None = None,
    ) -> SampledBatch:
        """The real steps' logits over the target and the ``S`` sampled classes.

        Args: as :meth:`sampled_loss`.

        Returns:
            A :class:`SampledBatch`: ``logits`` and one-hot ``labels``, ``[steps, 1 + S]``
            (the target first, logQ-corrected, accidental hits at ``-FLT_MAX``), and
            ``weights``, ``[steps]``, for the ``steps`` real (unmasked) steps.
        """
        if self.sampler is None:
            raise ValueError(
                f"SampledSoftmax {self.name!r} has no sampler "
                f"({getattr(self, '_missing_sampler', 'sampler=None')}); set "
                "`layer.sampler = <a CandidateSampler>` before training."
            )
        inputs = tf.convert_to_tensor(inputs)
        if not self.built:
            self.build(inputs.shape)
        targets = self.check_targets(targets, inputs)
        weights = step_weights(sample_weight, targets)
        flat_inputs = tf.reshape(inputs, [-1, self._dim])
        flat_targets = tf.reshape(targets, [-1, 1])
        flat_weights = tf.reshape(weights, [-1])
        if mask is not None:
            keep = tf.reshape(tf.cast(mask, tf.bool), [-1])
            flat_inputs = tf.boolean_mask(flat_inputs, keep)
            flat_targets = tf.boolean_mask(flat_targets, keep)
            flat_weights = tf.boolean_mask(flat_weights, keep)
        extra = {"query_embeddings": flat_inputs} if self.sampler.needs_queries else {}
        sampled_values = self.sampler.sample(
            flat_targets, self.num_sampled, unique=True, seed=self.seed, **extra
        )
        logits, labels = compute_sampled_logits(
            self.output_embeddings(),
            self.bias,
            flat_targets,
            flat_inputs,
            num_sampled=self.num_sampled,
            num_classes=self.num_classes,
            sampled_values=sampled_values,
            subtract_log_q=True,
            remove_accidental_hits=self.remove_accidental_hits,
        )
        return SampledBatch(logits, labels, flat_weights)

    # -- config -------------------------------------------------------------------------------

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            num_sampled=self.num_sampled,
            sampler=None if self.sampler is None else serialize_sampler(self.sampler),
            tied_to=self._tied_name,
            remove_accidental_hits=self.remove_accidental_hits,
            kernel_initializer=tf.keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=tf.keras.initializers.serialize(self.bias_initializer),
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> SampledSoftmax:
        """Rebuilds the layer; a sampler its config cannot rebuild is left out, with a warning.

        The layer then predicts and evaluates as before; training needs ``layer.sampler = ...``.
        """
        config = dict(config)
        try:
            get_sampler(config["sampler"], config["num_classes"])
        except ValueError as e:
            warnings.warn(f"{e} The layer is loaded without a sampler.", stacklevel=2)
            config["sampler"] = "uniform"
            layer = cls(**config)
            layer.sampler, layer._missing_sampler = None, str(e)
            return layer
        return cls(**config)

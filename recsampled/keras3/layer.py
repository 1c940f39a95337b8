"""``SampledSoftmax`` for Keras 3: sampled softmax to train, full softmax to predict.

For hidden states ``h`` (``[batch, dim]`` or ``[batch, time, dim]``), output embeddings ``W``
(``[num_classes, dim]``, own or a tied ``Embedding``'s table) and biases ``b``:

- inference: ``softmax(h·Wᵀ + b)`` over all ``num_classes``;
- training: ``call`` returns ``h``; :meth:`SampledSoftmax.sampled_loss` computes, per real step
  with target ``t`` and ``S`` ids ``s_j`` drawn with replacement from ``P`` (one draw per step
  of the batch, shared by all rows)::

      o_t = h·w_t + b_t - log(S·P(t)),   o_j = h·w_{s_j} + b_{s_j} - log(S·P(s_j))
      loss = logsumexp([o_t, o_1..o_S]) - o_t      (o_j = -inf where s_j == t)

  the sampled softmax of Bengio & Senécal (2008) as ``tf.nn.sampled_softmax_loss`` computes it
  with ``unique=False``; the batch loss is ``Σ w·loss / #real steps`` over unmasked steps.
"""

from __future__ import annotations

import types
from typing import Any

import keras
from keras import ops

from recsampled._validation import (
    check_bool,
    check_num_sampled,
    check_optional_seed,
    check_positive_int,
    received,
)
from recsampled.keras3.samplers import Sampler, get_sampler, serialize_sampler

_LOWEST = -1e30  # an accidental hit's logit (finite, so that 0·_LOWEST stays 0)


@keras.saving.register_keras_serializable(package="recsampled.keras3")
class SampledSoftmax(keras.layers.Layer):
    """Keras 3 output layer over ``num_classes``: sampled softmax to train, full to predict.

    Use it as the output of a :class:`recsampled.keras3.SampledSoftmaxModel`.

    Args:
        num_classes: N, the number of classes.
        num_sampled: S, ids drawn per training step (with replacement).
        sampler: ``"log_uniform"`` (default; ids sorted by decreasing frequency), ``"uniform"``
            or a :mod:`recsampled.keras3.samplers` instance (``UnigramSampler(counts)``).
        tied_to: a ``keras.layers.Embedding(num_classes, dim)`` whose table is the output
            embeddings (weight tying); the layer then owns only the biases.
        remove_accidental_hits: mask sampled ids equal to the step's target.
        kernel_initializer, bias_initializer: initializers of ``W`` and ``b``.
        seed: seed of the sampler's ``keras.random.SeedGenerator``.
        **kwargs: ``keras.layers.Layer`` arguments.

    Example:
        >>> head = SampledSoftmax(100, num_sampled=8, seed=0)
        >>> hidden = keras.random.normal([2, 3, 4], seed=1)
        >>> tuple(head(hidden).shape), tuple(head.sampled_loss(ops.ones([2, 3]), hidden).shape)
        ((2, 3, 100), ())
    """

    def __init__(
        self,
        num_classes: int,
        num_sampled: int,
        *,
        sampler: str | dict | Sampler = "log_uniform",
        tied_to: keras.layers.Embedding | str | None = None,
        remove_accidental_hits: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        seed: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.num_sampled = check_num_sampled(num_sampled, self.num_classes, unique=False)
        self.sampler = get_sampler(sampler, self.num_classes)
        self.remove_accidental_hits = check_bool("remove_accidental_hits", remove_accidental_hits)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.seed = check_optional_seed("seed", seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.supports_masking = True
        # The tied Embedding belongs to the model; a namespace keeps Keras from tracking (and
        # saving) it twice. A name alone (from a config) is linked by the model.
        self._tied = types.SimpleNamespace(embedding=None, name=None)
        if isinstance(tied_to, keras.layers.Embedding):
            self.tie(tied_to)
        elif isinstance(tied_to, str):
            self._tied.name = tied_to
        elif tied_to is not None:
            raise ValueError(
                "`tied_to` must be a keras.layers.Embedding (or None). "
                f"{received('tied_to', tied_to)}"
            )

    def tie(self, embedding: keras.layers.Embedding) -> None:
        """Uses ``embedding``'s table as the output embeddings."""
        if embedding.input_dim != self.num_classes:
            raise ValueError(
                "`tied_to` must embed as many ids as the layer has classes: "
                f"Embedding(input_dim={embedding.input_dim}) vs num_classes={self.num_classes}."
            )
        self._tied.embedding, self._tied.name = embedding, embedding.name

    @property
    def tied_to(self) -> keras.layers.Embedding | None:
        return self._tied.embedding

    @property
    def tied_name(self) -> str | None:
        """The name of the tied Embedding (also before it is linked)."""
        return self._tied.name

    def build(self, input_shape: tuple) -> None:
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                "`inputs` must have shape [batch, dim] or [batch, time, dim] with a known dim. "
                f"Received: inputs with shape {input_shape}."
            )
        self._dim = int(input_shape[-1])
        embedding = self.tied_to
        if embedding is not None and embedding.output_dim != self._dim:
            raise ValueError(
                "`tied_to` must have output_dim equal to the last axis of the inputs. Received: "
                f"output_dim={embedding.output_dim}, inputs with dim {self._dim}."
            )
        if self._tied.name is None:
            self.kernel = self.add_weight(
                name="kernel",
                shape=(self.num_classes, self._dim),
                initializer=self.kernel_initializer,
            )
        self.bias = self.add_weight(
            name="bias", shape=(self.num_classes,), initializer=self.bias_initializer
        )

    def output_embeddings(self) -> Any:
        """``[num_classes, dim]``: the own kernel or the tied Embedding's table."""
        if self._tied.name is None:
            return self.kernel
        if self.tied_to is None:
            raise ValueError(
                f"SampledSoftmax {self.name!r} is tied to the Embedding {self._tied.name!r} but "
                "not linked to it. Load the model as a recsampled.keras3.SampledSoftmaxModel."
            )
        return self.tied_to.embeddings

    def logits(self, inputs: Any) -> Any:
        """``[..., num_classes]`` full logits ``h·Wᵀ + b``."""
        return ops.matmul(inputs, ops.transpose(self.output_embeddings())) + self.bias

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        """Full-softmax probabilities ``[..., num_classes]``; in training, ``inputs`` as is."""
        if training:
            return inputs
        return keras.activations.softmax(self.logits(inputs))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], self.num_classes)

    def sampled_logits(self, targets: Any, inputs: Any) -> Any:
        """``[steps, 1 + S]`` logQ-corrected logits, the target first, of the flattened steps."""
        flat_inputs = ops.reshape(inputs, (-1, self._dim))
        flat_targets = ops.reshape(ops.cast(targets, "int32"), (-1,))
        sampled = self.sampler.sample(self.num_sampled, self.seed_generator)
        table = self.output_embeddings()
        log_q = ops.log(
            self.num_sampled * self.sampler.probability(ops.concatenate([flat_targets, sampled]))
        )
        steps = ops.shape(flat_targets)[0]
        true_logits = (
            ops.sum(flat_inputs * ops.take(table, flat_targets, axis=0), axis=-1)
            + ops.take(self.bias, flat_targets)
            - log_q[:steps]
        )
        sampled_logits = (
            ops.matmul(flat_inputs, ops.transpose(ops.take(table, sampled, axis=0)))
            + ops.take(self.bias, sampled)
            - log_q[steps:]
        )
        if self.remove_accidental_hits:
            hits = ops.equal(flat_targets[:, None], sampled[None, :])
            sampled_logits = ops.where(hits, _LOWEST, sampled_logits)
        return ops.concatenate([true_logits[:, None], sampled_logits], axis=1)

    def sampled_loss(
        self, targets: Any, inputs: Any, *, mask: Any = None, sample_weight: Any = None
    ) -> Any:
        """Scalar sampled softmax loss: ``Σ w·loss / #real steps`` over unmasked steps.

        Args:
            targets: ``[batch]`` or ``[batch, time]`` integer ids in ``[0, num_classes)``.
            inputs: ``[batch, dim]`` or ``[batch, time, dim]`` hidden states.
            mask: bool ``inputs.shape[:-1]``; False steps count for nothing.
            sample_weight: ``[batch]`` or ``inputs.shape[:-1]`` weights.
        """
        if not self.built:
            self.build(tuple(inputs.shape))
        logits = self.sampled_logits(targets, inputs)
        losses = ops.logsumexp(logits, axis=1) - logits[:, 0]
        weights, real = step_weights(targets, mask, sample_weight)
        return ops.sum(weights * losses) / ops.maximum(ops.sum(real), 1.0)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            num_sampled=self.num_sampled,
            sampler=serialize_sampler(self.sampler),
            tied_to=self._tied.name,
            remove_accidental_hits=self.remove_accidental_hits,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            seed=self.seed,
        )
        return config


def step_weights(targets: Any, mask: Any, sample_weight: Any) -> tuple[Any, Any]:
    """Flat ``[steps]`` float32 ``weights`` (sample weight × mask) and ``real`` (the mask)."""
    shape = ops.shape(targets)
    real = ops.ones(shape, "float32") if mask is None else ops.cast(mask, "float32")
    weights = real
    if sample_weight is not None:
        weight = ops.cast(sample_weight, "float32")
        while len(weight.shape) < len(shape):
            weight = weight[..., None]
        weights = weights * weight
    return ops.reshape(weights, (-1,)), ops.reshape(real, (-1,))

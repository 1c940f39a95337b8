"""Keras models whose ``fit(x, y)`` trains a ``SampledSoftmax`` output with the sampled softmax.

Why a model class: in Keras 2, ``Model.train_step`` gives the targets ``y`` only to
``compute_loss``; a layer never sees them, and with ``compile(optimizer=...)`` and no loss they
are dropped. So we override what Keras documents for this (``tf_keras/src/engine/training.py``,
the guide "Customizing what happens in fit"): ``train_step``, ``compute_loss`` and ``metrics``,
in a mixin that works with functional and ``Sequential`` construction (plus ``from_config``,
which links a tied ``Embedding`` after loading). No second input, no dummy loss:

- ``fit``: ``hidden = self(x, training=True)`` (the ``SampledSoftmax`` output passes its inputs
  through in training), then ``head.sampled_loss(y, hidden, mask, sample_weight)`` plus the
  layers' regularization losses. The logs show only ``loss``, the sampled loss: compiled metrics
  (``"accuracy"``, ...) need the full distribution, so they are updated in ``evaluate`` only,
  never on hidden states.
- ``evaluate``: the full softmax. ``loss`` is the cross-entropy (plus regularization losses) and
  ``perplexity`` is ``exp`` of the cross-entropy, both averaged over all real (unmasked) steps of
  the data set; compiled metrics see the full probabilities and the mask.
- ``predict`` / ``model(x)``: ``[..., num_classes]`` probabilities.

Optimizers: the sampled gradient of the output embeddings is an ``IndexedSlices`` over about
``num_sampled + batch`` rows, but tf-keras' ``SGD`` and ``Adam`` update all ``num_classes`` rows
every step; ``fit`` warns about them. Prefer ``recsampled.layers.LazyAdam``,
``tf.keras.optimizers.Adagrad`` or ``tf.keras.optimizers.legacy.SGD``
(:mod:`recsampled.layers.optimizers`).

Limits: exactly one ``SampledSoftmax``, at the top level of the model, producing its only
output; ``compile`` takes no ``loss`` (the head defines it); integer targets, one per output step.
Out-of-range ids raise ``InvalidArgumentError`` when the step runs. The loss is not rescaled
for multi-replica ``tf.distribute`` strategies. A head tied to an ``Embedding`` is saved with
the Embedding's name; ``from_config`` of these classes links it again after loading.
"""

from __future__ import annotations

import types
from typing import Any

import tensorflow as tf

from recsampled.layers.optimizers import warn_if_dense_optimizer
from recsampled.layers.sampled_softmax import SampledSoftmax, masked_mean


@tf.keras.utils.register_keras_serializable(package="recsampled")  # SavedModel saves metrics
class _Perplexity(tf.keras.metrics.Mean):
    """``exp`` of the weighted mean of the cross-entropies it is given."""

    @tf.autograph.experimental.do_not_convert  # no control flow; autograph cannot parse it
    def result(self) -> tf.Tensor:
        return tf.exp(super().result())


class SampledSoftmaxMixin:
    """Trains with the sampled softmax of the model's ``SampledSoftmax`` output (see module doc).

    Mix it into a ``tf.keras.Model`` subclass, before the Keras class. Ready-made:
    :class:`SampledSoftmaxModel` and :class:`SampledSoftmaxSequential`.
    """

    @property
    def metrics(self) -> list[tf.keras.metrics.Metric]:
        # Created on first use, outside any tf.function (Keras resets metrics before each
        # fit/evaluate loop). A plain namespace, so that Keras does not track their variables as
        # model weights, as it does not track the metrics of `compile`.
        if getattr(self, "_trackers", None) is None:
            self._trackers = types.SimpleNamespace(
                loss=tf.keras.metrics.Mean(name="loss"), perplexity=_Perplexity(name="perplexity")
            )
        own = [self._trackers.loss, self._trackers.perplexity]
        # compile's own "loss" metric is never updated here (there is no compiled loss).
        compiled_loss = getattr(self, "compiled_loss", None)
        unused = [] if compiled_loss is None else compiled_loss.metrics
        return own + [m for m in super().metrics if all(m is not u for u in unused)]

    def sampled_softmax_head(self) -> SampledSoftmax:
        """The model's ``SampledSoftmax`` output layer (linking a tied Embedding by name)."""
        heads = [layer for layer in self.layers if isinstance(layer, SampledSoftmax)]
        if len(heads) != 1 or len(self.outputs or [None]) != 1:
            raise ValueError(
                f"{type(self).__name__} must have exactly one output, produced by a top-level "
                f"SampledSoftmax layer. Received: {len(heads)} SampledSoftmax layers and "
                f"outputs {self.output_names}."
            )
        head = heads[0]
        if getattr(self, "loss", None):
            raise ValueError(
                "`loss` must not be given to `compile`: a SampledSoftmax model trains with the "
                "sampled softmax and evaluates the full softmax cross-entropy (reported as `loss` "
                f"and `perplexity`). Call `compile(optimizer=...)`. Received: loss={self.loss!r}."
            )
        if self.output_names and head.name not in self.output_names:
            raise ValueError(
                f"The SampledSoftmax layer {head.name!r} must produce the model's output. "
                f"Received: outputs {self.output_names}."
            )
        if head._tied_name is not None and head.tied_to is None:
            head._tie(self.get_layer(head._tied_name))
        return head

    def make_train_function(self, force: bool = False) -> Any:
        """Keras' train function; warns (once per new function) about dense optimizers.

        See :func:`recsampled.layers.optimizers.warn_if_dense_optimizer`: tf-keras' ``SGD`` and
        ``Adam`` (among others) rewrite all ``num_classes`` rows every step even though the
        sampled softmax's gradient touches only about ``num_sampled + batch`` of them. (Not in
        ``compile``: Keras does not compile a loaded model whose class overrides ``compile``.)
        """
        if self.train_function is None or force:
            heads = [layer for layer in self.layers if isinstance(layer, SampledSoftmax)]
            if len(heads) == 1:
                warn_if_dense_optimizer(self.optimizer, heads[0].num_classes, heads[0].num_sampled)
        return super().make_train_function(force)

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None) -> Any:
        model = super().from_config(config, custom_objects=custom_objects)
        model.sampled_softmax_head()
        return model

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        head = self.sampled_softmax_head()
        with tf.GradientTape() as tape:
            hidden = self(x, training=True)
            mask = getattr(hidden, "_keras_mask", None)  # where Keras keeps an output's mask
            targets = head.check_targets(y, hidden)
            loss = head.sampled_loss(targets, hidden, mask=mask, sample_weight=sample_weight)
            if self.losses:
                loss += tf.add_n(self.losses)
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        real_steps = tf.size(targets) if mask is None else tf.math.count_nonzero(mask)
        self._trackers.loss.update_state(loss, sample_weight=tf.cast(real_steps, tf.float32))
        return {"loss": self._trackers.loss.result()}

    def compute_loss(
        self,
        x: Any = None,
        y: tf.Tensor | None = None,
        y_pred: tf.Tensor | None = None,
        sample_weight: tf.Tensor | None = None,
    ) -> tf.Tensor:
        """Full softmax cross-entropy of ``y_pred``, the probabilities (``test_step``'s loss)."""
        del x
        head = self.sampled_softmax_head()
        mask = getattr(y_pred, "_keras_mask", None)
        targets = head.check_targets(y, y_pred)
        # Keras' softmax keeps the logits on y_pred, from which this cross-entropy is computed.
        cross_entropy = tf.keras.losses.sparse_categorical_crossentropy(targets, y_pred)
        mean, count = masked_mean(cross_entropy, mask, sample_weight)
        loss = mean + tf.add_n(self.losses) if self.losses else mean
        self._trackers.loss.update_state(loss, sample_weight=count)
        self._trackers.perplexity.update_state(mean, sample_weight=count)
        return loss


@tf.keras.utils.register_keras_serializable(package="recsampled")
class SampledSoftmaxModel(SampledSoftmaxMixin, tf.keras.Model):
    """A functional ``tf.keras.Model`` with a ``SampledSoftmax`` output: ``fit(x, y)`` just works.

    Example:
        >>> inputs = tf.keras.Input([None], dtype="int32")
        >>> embedding = tf.keras.layers.Embedding(50_000, 256, mask_zero=True)
        >>> x = tf.keras.layers.LSTM(256, return_sequences=True)(embedding(inputs))
        >>> outputs = SampledSoftmax(50_000, num_sampled=1000, tied_to=embedding)(x)
        >>> model = SampledSoftmaxModel(inputs, outputs)
        >>> model.compile(optimizer=LazyAdam())  # sparse updates (see module doc)
        >>> model.fit(ids[:, :-1], ids[:, 1:])  # doctest: +SKIP
        >>> model.evaluate(test_ids[:, :-1], test_ids[:, 1:], return_dict=True)  # doctest: +SKIP
        {'loss': 5.2..., 'perplexity': 181.3...}
    """


@tf.keras.utils.register_keras_serializable(package="recsampled")
class SampledSoftmaxSequential(SampledSoftmaxMixin, tf.keras.Sequential):
    """A ``tf.keras.Sequential`` whose last layer is a ``SampledSoftmax``.

    Example:
        >>> model = SampledSoftmaxSequential([
        ...     tf.keras.layers.Embedding(1000, 32), tf.keras.layers.LSTM(64),
        ...     SampledSoftmax(1000, num_sampled=64)])
        >>> model.compile(optimizer="adam")
        >>> model.fit(previous_ids, next_ids)  # doctest: +SKIP
    """

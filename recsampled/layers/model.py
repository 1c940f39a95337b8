"""Keras models whose ``fit(x, y)`` trains a ``SampledSoftmax`` output with the sampled softmax.

Why a model class: in Keras 2, ``Model.train_step`` gives the targets ``y`` only to
``compute_loss``; a layer never sees them, and with ``compile(optimizer=...)`` and no loss they
are dropped. So we override what Keras documents for this (``tf_keras/src/engine/training.py``,
the guide "Customizing what happens in fit"): ``train_step``, ``compute_loss`` and ``metrics``,
in a mixin that works with functional and ``Sequential`` construction (plus ``from_config``,
which links a tied ``Embedding`` after loading). No second input, no dummy loss:

- ``fit``: ``hidden = self(x, training=True)`` (the ``SampledSoftmax`` output passes its inputs
  through in training), then the head's sampled logits over the target and ``S`` sampled classes
  (:meth:`SampledSoftmax.sampled_logits`), their cross-entropy plus the layers' regularization
  losses. The logs name what they are: ``sampled_loss``, and for compiled metrics that are
  meaningful over the sampled classes (:data:`SAMPLED_METRICS`: ``"accuracy"``, top-k accuracy,
  cross-entropy) ``sampled_<name>``, computed on the sampled softmax with the target in column 0
  (``sampled_accuracy``: how often the target outscores every sampled class). There is no
  training ``loss`` key, so that a sampled loss is never read beside a full ``val_loss``. Other
  compiled metrics are computed at evaluation only.
- ``evaluate`` (and ``val_*`` in ``fit``): the full softmax. ``loss`` is the cross-entropy plus
  regularization losses, ``cross_entropy`` the cross-entropy alone and ``perplexity`` its
  ``exp``, all averaged over the real (unmasked) steps of the data set; compiled metrics see the
  full probabilities and the mask. Any logged key works with ``EarlyStopping`` and
  ``ModelCheckpoint`` (``monitor="val_loss"``, ``"sampled_accuracy"``, ...).
- ``predict`` / ``model(x)``: ``[..., num_classes]`` probabilities.

Optimizers: the sampled gradient of the output embeddings is an ``IndexedSlices`` over about
``num_sampled + batch`` rows, but tf-keras' ``SGD`` and ``Adam`` update all ``num_classes`` rows
every step; ``fit`` warns about them. Prefer ``recsampled.layers.LazyAdam``,
``tf.keras.optimizers.Adagrad`` or ``tf.keras.optimizers.legacy.SGD``
(:mod:`recsampled.layers.optimizers`).

Misuse fails early: ``compile(loss=...)`` raises at ``compile``; a plain ``tf.keras.Model``
around the head raises at its first training step (the head would hand its hidden states to the
compiled loss); Keras 3 tensors raise when the model is built (use ``recsampled.keras3``).
``.h5``, ``.keras`` and SavedModel files load without ``custom_objects`` and come back compiled.

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
from recsampled.layers.sampled_softmax import SampledBatch, SampledSoftmax, masked_mean

SAMPLED_METRICS = frozenset(
    {
        "sparse_categorical_accuracy",
        "sparse_top_k_categorical_accuracy",
        "sparse_categorical_crossentropy",
    }
)
"""Compiled metrics (by function) also computed on training batches, over the sampled classes."""

_LOSS_ERROR = (
    "`loss` must not be given to `compile`: a SampledSoftmax model trains with the sampled "
    "softmax (logged as `sampled_loss`) and evaluates the full softmax cross-entropy (`loss`, "
    "`cross_entropy` and `perplexity`). Call `compile(optimizer=...)`, with `metrics=[...]` if "
    "you like. Received: loss={loss!r}."
)


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
                sampled_loss=tf.keras.metrics.Mean(name="sampled_loss"),
                loss=tf.keras.metrics.Mean(name="loss"),
                cross_entropy=tf.keras.metrics.Mean(name="cross_entropy"),
                perplexity=_Perplexity(name="perplexity"),
            )
        trackers = self._trackers
        own = [trackers.sampled_loss, trackers.loss, trackers.cross_entropy, trackers.perplexity]
        # compile's own "loss" metric is never updated here (there is no compiled loss).
        compiled_loss = getattr(self, "compiled_loss", None)
        unused = [] if compiled_loss is None else compiled_loss.metrics
        return own + [m for m in super().metrics if all(m is not u for u in unused)]

    def get_metrics_result(self) -> dict[str, tf.Tensor]:
        """``evaluate``'s logs: the full-softmax ``loss``, ``cross_entropy``, ``perplexity`` and
        compiled metrics (not the training-only ``sampled_loss``)."""
        return {m.name: m.result() for m in self.metrics if m is not self._trackers.sampled_loss}

    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, *args: Any, **kwargs: Any):
        """``tf.keras.Model.compile`` without ``loss``: the ``SampledSoftmax`` head defines it.

        Raises:
            ValueError: if ``loss`` is given.
        """
        if loss is not None:
            raise ValueError(_LOSS_ERROR.format(loss=loss))
        super().compile(optimizer, None, *args, **kwargs)

    def compile_from_config(self, config: dict) -> None:
        """Compiles a loaded model from its saved compile config (Keras skips models whose
        class overrides ``compile``)."""
        self.compile(**tf.keras.saving.deserialize_keras_object(config))
        if isinstance(self.optimizer, tf.keras.optimizers.Optimizer) and self.built:
            self.optimizer.build(self.trainable_variables)

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        for layer in self.layers:  # lets the head return hidden states in training
            if isinstance(layer, SampledSoftmax):
                layer._in_sampled_model = True
        return super().call(inputs, training=training, mask=mask)

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
            raise ValueError(_LOSS_ERROR.format(loss=self.loss))
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
        ``compile``: a loaded SavedModel is not compiled through it.)
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
        """One sampled-softmax step; logs ``sampled_loss`` and ``sampled_<metric>``."""
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        head = self.sampled_softmax_head()
        with tf.GradientTape() as tape:
            hidden = self(x, training=True)
            mask = getattr(hidden, "_keras_mask", None)  # where Keras keeps an output's mask
            targets = head.check_targets(y, hidden)
            batch = head.sampled_logits(targets, hidden, mask=mask, sample_weight=sample_weight)
            losses = tf.nn.softmax_cross_entropy_with_logits(
                labels=tf.stop_gradient(batch.labels), logits=batch.logits
            )
            loss, real_steps = masked_mean(losses, sample_weight=batch.weights)
            if self.losses:
                loss += tf.add_n(self.losses)
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        self._trackers.sampled_loss.update_state(loss, sample_weight=real_steps)
        logs = {"sampled_loss": self._trackers.sampled_loss.result()}
        return logs | self._update_sampled_metrics(batch)

    def _update_sampled_metrics(self, batch: SampledBatch) -> dict[str, tf.Tensor]:
        """Updates the compiled metrics that are meaningful over ``1 + S`` sampled classes.

        They see the sampled softmax, target in column 0: ``sampled_accuracy`` is how often the
        target outscores every sampled class (logQ-corrected logits). Other compiled metrics
        (per-class ones, ...) are computed at evaluation only, on the full softmax.
        """
        compiled = getattr(self, "compiled_metrics", None)
        if compiled is None:
            return {}
        probabilities = tf.nn.softmax(batch.logits)
        column_zero = tf.zeros(tf.shape(batch.logits)[:1], tf.int64)
        if not compiled.built:
            compiled.build(probabilities, column_zero)
        logs = {}
        for metric in compiled.metrics:
            if getattr(getattr(metric, "_fn", None), "__name__", None) in SAMPLED_METRICS:
                metric.update_state(column_zero, probabilities, sample_weight=batch.weights)
                logs[f"sampled_{metric.name}"] = metric.result()
        return logs

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
        self._trackers.cross_entropy.update_state(mean, sample_weight=count)
        self._trackers.perplexity.update_state(mean, sample_weight=count)
        return loss


@tf.keras.utils.register_keras_serializable(package="recsampled")
class SampledSoftmaxModel(SampledSoftmaxMixin, tf.keras.Model):
    """A functional ``tf.keras.Model`` with a ``SampledSoftmax`` output: ``fit(x, y)`` just works.

    Example:
        >>> from recsampled.layers import LazyAdam
        >>> inputs = tf.keras.Input([None], dtype="int32")
        >>> embedding = tf.keras.layers.Embedding(50_000, 256, mask_zero=True)
        >>> x = tf.keras.layers.LSTM(256, return_sequences=True)(embedding(inputs))
        >>> outputs = SampledSoftmax(50_000, num_sampled=1000, tied_to=embedding)(x)
        >>> model = SampledSoftmaxModel(inputs, outputs)
        >>> model.compile(optimizer=LazyAdam())  # sparse updates (see module doc)
        >>> model.fit(ids[:, :-1], ids[:, 1:])  # doctest: +SKIP
        >>> model.evaluate(test_ids[:, :-1], test_ids[:, 1:], return_dict=True)  # doctest: +SKIP
        {'loss': 5.2..., 'cross_entropy': 5.2..., 'perplexity': 181.3...}
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


# Legacy `.h5` files name the model's class without its registered package ("recsampled>"), so
# `load_model("model.h5")` also finds the classes under their plain names.
tf.keras.utils.get_custom_objects().update(
    SampledSoftmaxModel=SampledSoftmaxModel, SampledSoftmaxSequential=SampledSoftmaxSequential
)

"""``SampledSoftmaxModel`` for Keras 3: ``fit(x, y)`` trains the head with the sampled softmax.

Every Keras 3 backend's ``train_step`` computes ``y_pred = model(x, training=True)`` and then
calls ``compute_loss(x, y, y_pred, sample_weight, training)`` and ``compute_metrics``; these
two are overridden, so the model works the same way on each backend:

- training: ``y_pred`` is the head's input (the hidden states); the loss is the head's sampled
  loss plus the layers' regularization losses. Logs: ``sampled_loss``, and ``sampled_<name>`` for
  compiled metrics meaningful over the ``1 + S`` sampled classes (accuracy, top-k accuracy,
  cross-entropy; target in column 0). No ``loss`` key, so that a sampled loss is never read
  beside a full ``val_loss``.
- evaluation (``evaluate``, ``val_*``): the full softmax; ``loss`` (cross-entropy plus
  regularization), ``cross_entropy``, ``perplexity`` (its ``exp``), averaged over real steps,
  and the compiled metrics on the full probabilities.

``compile(loss=...)`` raises at once. A head tied to an ``Embedding`` is saved with the
Embedding's name and linked again when the model is built or loaded.
"""

from __future__ import annotations

import types
from typing import Any

import keras
from keras import ops

from recsampled.keras3.layer import SampledSoftmax, step_weights

try:  # Keras keeps masks of arrays without attributes (JAX) in a side table
    from keras.src.backend.common.masking import get_keras_mask
except ImportError:  # pragma: no cover - older Keras 3

    def get_keras_mask(x: Any) -> Any:
        return getattr(x, "_keras_mask", None)


SAMPLED_METRICS = frozenset(
    {
        "sparse_categorical_accuracy",
        "sparse_top_k_categorical_accuracy",
        "sparse_categorical_crossentropy",
    }
)
"""Compiled metrics (by function name) also computed on training batches, over sampled classes."""


@keras.saving.register_keras_serializable(package="recsampled.keras3")
class SampledSoftmaxModel(keras.Model):
    """A functional ``keras.Model`` whose only output is a :class:`SampledSoftmax`.

    Example:
        >>> inputs = keras.Input([None], dtype="int32")
        >>> embedding = keras.layers.Embedding(100, 8, mask_zero=True)
        >>> x = keras.layers.Dense(8)(embedding(inputs))
        >>> model = SampledSoftmaxModel(inputs, SampledSoftmax(100, 16, tied_to=embedding)(x))
        >>> model.compile(optimizer="adagrad", metrics=["accuracy"])
        >>> ids = keras.random.randint([8, 6], 1, 100, seed=0)
        >>> sorted(model.fit(ids, ids, epochs=1, verbose=0).history)
        ['sampled_accuracy', 'sampled_loss']
        >>> sorted(model.evaluate(ids, ids, return_dict=True, verbose=0))
        ['accuracy', 'cross_entropy', 'loss', 'perplexity']
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.sampled_loss_tracker = keras.metrics.Mean(name="sampled_loss")
        self.full_loss_tracker = keras.metrics.Mean(name="full_loss")
        self.cross_entropy_tracker = keras.metrics.Mean(name="cross_entropy")
        # What compute_loss leaves for compute_metrics in the same step (a namespace, which Keras
        # does not track).
        self._step = types.SimpleNamespace(training=False)
        self.sampled_softmax_head()

    def sampled_softmax_head(self) -> SampledSoftmax:
        """The ``SampledSoftmax`` output (linking a tied Embedding by name)."""
        heads = [layer for layer in self.layers if isinstance(layer, SampledSoftmax)]
        if len(heads) != 1 or len(self.outputs) != 1:
            raise ValueError(
                "SampledSoftmaxModel must have exactly one output, produced by a SampledSoftmax "
                f"layer. Received: {len(heads)} SampledSoftmax layers, {len(self.outputs)} outputs."
            )
        head = heads[0]
        if head.tied_name is not None and head.tied_to is None:
            head.tie(self.get_layer(head.tied_name))
        return head

    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, **kwargs: Any) -> None:
        """``keras.Model.compile`` without ``loss`` (the head defines it)."""
        if loss is not None:
            raise ValueError(
                "`loss` must not be given to `compile`: a SampledSoftmaxModel trains with the "
                "sampled softmax (logged as `sampled_loss`) and evaluates the full softmax "
                "cross-entropy (`loss`, `cross_entropy`, `perplexity`). Call "
                f"`compile(optimizer=...)`. Received: loss={loss!r}."
            )
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config: dict) -> None:
        """Compiles a loaded model (Keras skips models whose class overrides ``compile``)."""
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss", None)
        self.compile(**config)
        if self.built and hasattr(self, "optimizer"):
            self.optimizer.build(self.trainable_variables)

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        """Sampled loss in training, full cross-entropy otherwise (plus regularization).

        In training it also updates the sampled metrics, from the same draw as the loss (JAX
        lets metrics change here, inside the gradient's trace, not later).
        """
        del x
        head = self.sampled_softmax_head()
        targets = _check_targets(y, y_pred, head.num_classes)
        mask = get_keras_mask(y_pred)
        weights, real = step_weights(targets, mask, sample_weight)
        count = ops.sum(real)
        regularization = ops.sum(self.losses) if self.losses else 0.0
        self._step.training = bool(training)
        if training:
            if not head.built:
                head.build(tuple(y_pred.shape))
            logits = head.sampled_logits(targets, y_pred)
            losses = ops.logsumexp(logits, axis=1) - logits[:, 0]
            loss = ops.sum(weights * losses) / ops.maximum(count, 1.0) + regularization
            self.sampled_loss_tracker.update_state(loss, sample_weight=count)
            self._update_sampled_metrics(ops.stop_gradient(logits), weights)
            return loss
        losses = keras.losses.sparse_categorical_crossentropy(targets, y_pred)
        mean = ops.sum(ops.reshape(losses, (-1,)) * weights) / ops.maximum(count, 1.0)
        self.cross_entropy_tracker.update_state(mean, sample_weight=count)
        self.full_loss_tracker.update_state(mean + regularization, sample_weight=count)
        return mean + regularization

    def _sampled_metrics(self) -> list[keras.metrics.Metric]:
        compiled = getattr(self, "_compile_metrics", None)
        if compiled is None or not compiled.built:
            return []
        return [
            metric
            for metric in compiled.metrics
            if getattr(getattr(metric, "_fn", None), "__name__", None) in SAMPLED_METRICS
        ]

    def _update_sampled_metrics(self, logits: Any, weights: Any) -> None:
        """Compiled metrics over the ``1 + S`` sampled classes, the target in column 0."""
        compiled = getattr(self, "_compile_metrics", None)
        if compiled is None:
            return
        column_zero = ops.zeros(ops.shape(logits)[:1], "int32")
        probabilities = ops.softmax(logits, axis=-1)
        if not compiled.built:
            compiled.build(column_zero, probabilities)
        for metric in self._sampled_metrics():
            metric.update_state(column_zero, probabilities, sample_weight=weights)

    def compute_metrics(self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> dict:
        """The logs: ``sampled_*`` in training, the full-softmax values in evaluation."""
        if self._step.training:
            logs = {"sampled_loss": self.sampled_loss_tracker.result()}
            for metric in self._sampled_metrics():
                logs[f"sampled_{metric.name}"] = metric.result()
            return logs
        mask = get_keras_mask(y_pred)
        weights, _ = step_weights(y, mask, sample_weight)
        logs = {
            "loss": self.full_loss_tracker.result(),
            "cross_entropy": self.cross_entropy_tracker.result(),
            "perplexity": ops.exp(self.cross_entropy_tracker.result()),
        }
        compiled = getattr(self, "_compile_metrics", None)
        if compiled is not None:
            flat = ops.reshape(y_pred, (-1, ops.shape(y_pred)[-1]))
            compiled.update_state(ops.reshape(y, (-1,)), flat, sample_weight=weights)
            logs |= compiled.result()
        return logs


def _check_targets(y: Any, y_pred: Any, num_classes: int) -> Any:
    """Integer targets shaped ``y_pred.shape[:-1]`` (a trailing axis of 1 squeezed)."""
    if y is None:
        raise ValueError(
            "`y` must be given: a SampledSoftmaxModel trains and evaluates against integer "
            f"class ids in [0, {num_classes}). Received: y=None."
        )
    y = ops.convert_to_tensor(y)
    rank = len(y_pred.shape)
    if len(y.shape) == rank and y.shape[-1] == 1:
        y = ops.squeeze(y, axis=-1)
    if "int" not in str(y.dtype) or len(y.shape) != rank - 1:
        raise ValueError(
            f"`y` must be integer class ids of shape {tuple(y_pred.shape[:-1])} (not one-hot; "
            "`y = np.argmax(y, axis=-1)`). Received: y of dtype "
            f"{y.dtype} and shape {tuple(y.shape)}."
        )
    return y

"""Optimizers for sparse gradients, and the check that warns about dense ones.

The sampled softmax's gradient w.r.t. the ``[num_classes, dim]`` output embeddings is an
``IndexedSlices`` over the rows of the step's targets and sampled ids (about ``S + batch`` rows).
Whether the update stays that small is the optimizer's choice. In tf-keras 2.21:

- sparse (touch only the gradient's rows): ``tf.keras.optimizers.Adagrad``,
  ``tf.keras.optimizers.legacy.SGD`` (with or without momentum), ``legacy.Adagrad``, and
  :class:`LazyAdam` below;
- dense (rewrite the whole table every step, whatever the gradient): ``tf.keras.optimizers.SGD``
  (it always creates momentum slots, even with ``momentum=0``, then runs ``m.assign(m *
  momentum)`` and ``variable.assign_add(m)`` over all rows), ``Adam``/``AdamW``/``Nadam``/
  ``Adamax`` and ``legacy.Adam`` (moment decay over all rows), ``RMSprop``, ``Adadelta``,
  ``Ftrl``, ``Lion``.

At ``V = 200,000`` and ``dim = 1024`` a dense update is several 800 MB passes over memory per
step, seconds on a CPU, which is more than the sampled softmax itself costs (see
``benchmarks/lm.json``).
"""

from __future__ import annotations

import warnings
from typing import Any

import tensorflow as tf

DENSE_OPTIMIZERS: tuple[type, ...] = tuple(
    cls
    for cls in (
        getattr(tf.keras.optimizers, name, None)
        for name in ("SGD", "Adam", "AdamW", "Nadam", "Adamax", "RMSprop", "Adadelta", "Ftrl")
    )
    if cls is not None
) + (tf.keras.optimizers.legacy.Adam,)
"""Optimizer classes (exact types) that update every row of a variable on a sparse gradient."""

DENSE_WARNING_RATIO = 10
"""Warn about a dense optimizer when ``num_classes >= DENSE_WARNING_RATIO * num_sampled``."""


def warn_if_dense_optimizer(
    optimizer: Any, num_classes: int, num_sampled: int, stacklevel: int = 2
) -> bool:
    """Warns (``UserWarning``) when ``optimizer`` updates the whole output table every step.

    Only exact instances of :data:`DENSE_OPTIMIZERS` are flagged (subclasses such as
    :class:`LazyAdam`, and custom optimizers, are not), and only when the table is at least
    :data:`DENSE_WARNING_RATIO` times larger than the sampled rows.

    Returns:
        True when it warned.
    """
    if type(optimizer) not in DENSE_OPTIMIZERS or num_classes < DENSE_WARNING_RATIO * num_sampled:
        return False
    prefix = "legacy." if ".legacy." in type(optimizer).__module__ else ""
    warnings.warn(
        f"tf.keras.optimizers.{prefix}{type(optimizer).__name__} updates all {num_classes:,} rows "
        f"of the SampledSoftmax output embeddings (and of every Embedding table) at every "
        f"step, although the sampled softmax's gradient touches only about num_sampled="
        f"{num_sampled:,} + batch rows, so the dense update can cost more than the sampled "
        "softmax saves. For sparse updates use recsampled.layers.LazyAdam, "
        "tf.keras.optimizers.Adagrad or tf.keras.optimizers.legacy.SGD (see "
        "recsampled.layers.optimizers).",
        UserWarning,
        stacklevel=stacklevel + 1,
    )
    return True


@tf.keras.utils.register_keras_serializable(package="recsampled")
class LazyAdam(tf.keras.optimizers.Adam):
    """Adam that, on an ``IndexedSlices`` gradient, updates only the gradient's rows.

    For those rows (duplicate indices summed first) it is Adam: ``m = β1·m + (1-β1)·g``,
    ``v = β2·v + (1-β2)·g²``, ``θ -= α·m / (√v + ε)`` with ``α = lr·√(1-β2ᵗ)/(1-β1ᵗ)``; the
    other rows, their moments included, stay as they are (plain Adam decays every row's moments
    and so moves rows that got no gradient). Dense gradients (the LSTM's, ...) get plain Adam.
    This is the "lazy Adam" of TensorFlow Addons (``tfa.optimizers.LazyAdam``), written for the
    tf-keras optimizer API; the step costs O(rows touched · dim) instead of O(table).

    Args:
        learning_rate, beta_1, beta_2, epsilon: as ``tf.keras.optimizers.Adam``.
        jit_compile: False by default: XLA has no ``tf.unique``.
        **kwargs: other ``tf.keras.optimizers.Adam`` arguments; ``amsgrad=True`` is refused.
    """

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        *,
        jit_compile: bool = False,
        name: str = "LazyAdam",
        **kwargs: Any,
    ):
        if kwargs.get("amsgrad"):
            raise ValueError("LazyAdam does not support `amsgrad=True`. Received: amsgrad=True.")
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            jit_compile=jit_compile,
            name=name,
            **kwargs,
        )

    def update_step(self, gradient: Any, variable: tf.Variable) -> None:
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        alpha = (
            tf.cast(self.learning_rate, dtype)
            * tf.sqrt(1 - tf.pow(beta_2, step))
            / (1 - tf.pow(beta_1, step))
        )
        epsilon = self.epsilon * tf.sqrt(1 - tf.pow(beta_2, step))
        epsilon = epsilon if self.adaptive_epsilon else tf.cast(self.epsilon, dtype)
        index = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[index], self._velocities[index]
        rows, position = tf.unique(gradient.indices)
        grad = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * grad
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(grad)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon), rows))
        return None

"""Sampler names and serialisation: how a config or a saved layer names a sampler.

:data:`SAMPLERS` is the one explicit dict of names (Keras resolves losses the same way);
:func:`get_sampler` turns a name, a ``{"class_name", "config"}`` dict or an instance into a
:class:`~recsampled.samplers.CandidateSampler`, and :func:`serialize_sampler` is its inverse. A
sampler class of your own resolves through Keras' ``register_keras_serializable`` /
``custom_objects``.
"""

from __future__ import annotations

import tensorflow as tf

from recsampled._validation import received
from recsampled.samplers.base import CandidateSampler
from recsampled.samplers.log_uniform import LogUniformSampler
from recsampled.samplers.uniform import UniformSampler
from recsampled.samplers.unigram import UnigramSampler

SAMPLERS: dict[str, type[CandidateSampler]] = {
    "log_uniform": LogUniformSampler,
    "uniform": UniformSampler,
    "unigram": UnigramSampler,
}
"""Sampler names a config may use; ``"unigram"`` needs a config with ``counts``."""

SamplerLike = str | dict | CandidateSampler


def get_sampler(sampler: SamplerLike, num_classes: int) -> CandidateSampler:
    """Resolves a sampler name, a ``{"class_name", "config"}`` dict or an instance.

    Names resolve through :data:`SAMPLERS`; a ``class_name`` not there through Keras'
    ``custom_objects`` / ``register_keras_serializable`` (for your own ``CandidateSampler``).

    Args:
        sampler: a key of :data:`SAMPLERS`, a dict as :func:`serialize_sampler` writes it, or a
            sampler instance.
        num_classes: N, the number of classes the sampler must draw from.

    Returns:
        The sampler.

    Raises:
        ValueError: for an unknown name, a sampler over another number of classes, or a config
            the sampler class does not accept.

    Example:
        >>> get_sampler("uniform", num_classes=10).num_classes
        10
    """
    if isinstance(sampler, CandidateSampler):
        if sampler.num_classes != num_classes:
            raise ValueError(
                f"`sampler` must draw from the layer's num_classes={num_classes} classes. "
                f"Received: sampler={sampler!r} with num_classes={sampler.num_classes}."
            )
        return sampler
    if isinstance(sampler, str):
        class_name, config = sampler, {"num_classes": num_classes}
    elif isinstance(sampler, dict) and set(sampler) == {"class_name", "config"}:
        class_name, config = sampler["class_name"], dict(sampler["config"])
    else:
        raise ValueError(
            f"`sampler` must be one of {sorted(SAMPLERS)}, a CandidateSampler, or a "
            f'{{"class_name": ..., "config": ...}} dict. {received("sampler", sampler)}'
        )
    cls = SAMPLERS.get(class_name) or tf.keras.utils.get_registered_object(class_name)
    if not (isinstance(cls, type) and issubclass(cls, CandidateSampler)):
        raise ValueError(
            f"`sampler` must be one of {sorted(SAMPLERS)} (or a CandidateSampler registered "
            f"with Keras). Received: sampler={class_name!r}."
        )
    try:
        return get_sampler(cls(**config), num_classes)
    except TypeError as e:
        raise ValueError(
            f"`sampler` {class_name!r} cannot be built from the config {config} ({e}); pass a "
            f"sampler instance instead, e.g. UnigramSampler(counts). {received('sampler', sampler)}"
        ) from e


def serialize_sampler(sampler: CandidateSampler) -> dict:
    """``{"class_name": name, "config": sampler.get_config()}``, the inverse of ``get_sampler``.

    Example:
        >>> serialize_sampler(UniformSampler(num_classes=10))
        {'class_name': 'uniform', 'config': {'num_classes': 10}}
    """
    names = {cls: name for name, cls in SAMPLERS.items()}
    class_name = names.get(type(sampler), tf.keras.utils.get_registered_name(type(sampler)))
    return {"class_name": class_name, "config": sampler.get_config()}

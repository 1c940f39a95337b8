"""Candidate samplers for the Keras 3 layer, in ``keras.ops``/``keras.random``.

Each draws ``S`` ids **with replacement**, by inverse transform of uniform numbers, so that the
expected count of id ``i`` is exactly ``S·P(i)`` (TF's ``unique=False`` expected count; rejection
to unique ids, TF's default, needs data-dependent shapes that JAX cannot trace). A repeated id
is one more negative column, as in ``tf.nn.sampled_softmax_loss`` with ``unique=False``.

- ``UniformSampler``: ``P(k) = 1/N``.
- ``LogUniformSampler``: ``P(k) = log((k+2)/(k+1)) / log(N+1)`` (ids sorted by decreasing
  frequency), drawn as ``floor(exp(u·log(N+1))) - 1`` (TF's ``LogUniformSampler``).
- ``UnigramSampler``: ``P(k) ∝ counts[k] ** distortion``, drawn by ``searchsorted`` on the CDF.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from recsampled._validation import check_positive_int, received


class Sampler:
    """Base class: ``probability(ids)`` and ``sample(num_sampled, seed)`` over ``[0, N)``."""

    def __init__(self, num_classes: int):
        self.num_classes = check_positive_int("num_classes", num_classes)

    def probability(self, ids: Any) -> Any:
        """float32 probability of one draw returning each id (``ids`` any shape)."""
        raise NotImplementedError

    def _from_uniform(self, uniform: Any) -> Any:
        raise NotImplementedError

    def sample(self, num_sampled: int, seed: keras.random.SeedGenerator | int | None) -> Any:
        """``[num_sampled]`` int32 ids drawn with replacement."""
        uniform = keras.random.uniform([num_sampled], seed=seed)
        ids = ops.cast(self._from_uniform(uniform), "int32")
        return ops.clip(ids, 0, self.num_classes - 1)

    def get_config(self) -> dict:
        return {"num_classes": self.num_classes}

    @classmethod
    def from_config(cls, config: dict) -> Sampler:
        return cls(**config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes})"


@keras.saving.register_keras_serializable(package="recsampled.keras3")
class UniformSampler(Sampler):
    """Every class with probability ``1 / num_classes``.

    Example:
        >>> tuple(UniformSampler(10).sample(4, seed=0).shape)
        (4,)
    """

    def probability(self, ids: Any) -> Any:
        return ops.full(ops.shape(ids), 1.0 / self.num_classes, dtype="float32")

    def _from_uniform(self, uniform: Any) -> Any:
        return ops.floor(uniform * self.num_classes)


@keras.saving.register_keras_serializable(package="recsampled.keras3")
class LogUniformSampler(Sampler):
    """Zipfian ``P(k) = log((k+2)/(k+1)) / log(N+1)``: ids sorted by decreasing frequency.

    Example:
        >>> round(float(LogUniformSampler(1000).probability(ops.convert_to_tensor([0]))[0]), 5)
        0.10033
    """

    def probability(self, ids: Any) -> Any:
        k = ops.cast(ids, "float32")
        return ops.log((k + 2.0) / (k + 1.0)) / math.log(self.num_classes + 1.0)

    def _from_uniform(self, uniform: Any) -> Any:
        return ops.floor(ops.exp(uniform * math.log(self.num_classes + 1.0))) - 1.0


@keras.saving.register_keras_serializable(package="recsampled.keras3")
class UnigramSampler(Sampler):
    """``P(k) ∝ counts[k] ** distortion``; the counts are kept in the config (saved).

    Args:
        counts: ``[num_classes]`` non-negative counts, at least one positive.
        distortion: exponent (0.75 in word2vec).

    Example:
        >>> p = UnigramSampler([5, 0, 1]).probability(ops.convert_to_tensor([0, 1, 2]))
        >>> [round(float(x), 4) for x in ops.convert_to_numpy(p)]
        [0.8333, 0.0, 0.1667]
    """

    def __init__(self, counts: Any, distortion: float = 1.0):
        weights = np.asarray(counts, dtype=np.float64)
        if weights.ndim != 1 or weights.size == 0 or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(
                "`counts` must be a non-empty 1-D array of non-negative counts, not all 0. "
                f"Received: counts with shape {weights.shape}."
            )
        if isinstance(distortion, bool) or not isinstance(distortion, int | float):
            raise ValueError(f"`distortion` must be a number. {received('distortion', distortion)}")
        super().__init__(weights.size)
        self.counts, self.distortion = weights.tolist(), float(distortion)
        self._p = (weights**self.distortion / (weights**self.distortion).sum()).astype(np.float32)
        self._cdf = np.cumsum(self._p.astype(np.float64)).astype(np.float32)

    def probability(self, ids: Any) -> Any:
        return ops.take(ops.convert_to_tensor(self._p), ops.cast(ids, "int32"))

    def _from_uniform(self, uniform: Any) -> Any:
        cdf = ops.convert_to_tensor(self._cdf)
        return ops.searchsorted(cdf, uniform * cdf[-1], side="right")

    def get_config(self) -> dict:
        return {"counts": self.counts, "distortion": self.distortion}


SAMPLERS: dict[str, type[Sampler]] = {
    "log_uniform": LogUniformSampler,
    "uniform": UniformSampler,
    "unigram": UnigramSampler,
}
"""Sampler names the layer accepts; ``"unigram"`` needs a config with ``counts``."""


def get_sampler(sampler: str | dict | Sampler, num_classes: int) -> Sampler:
    """Resolves a name, a ``{"class_name", "config"}`` dict or an instance to a sampler."""
    if isinstance(sampler, Sampler):
        result = sampler
    elif isinstance(sampler, str) and sampler in SAMPLERS and sampler != "unigram":
        result = SAMPLERS[sampler](num_classes)
    elif isinstance(sampler, dict) and set(sampler) == {"class_name", "config"}:
        cls = SAMPLERS.get(sampler["class_name"]) or keras.saving.get_registered_object(
            sampler["class_name"]
        )
        if not (isinstance(cls, type) and issubclass(cls, Sampler)):
            raise ValueError(f"Unknown sampler class. {received('sampler', sampler)}")
        result = cls.from_config(dict(sampler["config"]))
    else:
        raise ValueError(
            "`sampler` must be 'log_uniform', 'uniform', a recsampled.keras3 sampler (e.g. "
            f"UnigramSampler(counts)) or its serialized dict. {received('sampler', sampler)}"
        )
    if result.num_classes != num_classes:
        raise ValueError(
            f"`sampler` must draw from the layer's num_classes={num_classes} classes. "
            f"Received: sampler={result!r}."
        )
    return result


def serialize_sampler(sampler: Sampler) -> dict:
    """``{"class_name", "config"}``, the inverse of :func:`get_sampler`."""
    names = {cls: name for name, cls in SAMPLERS.items()}
    class_name = names.get(type(sampler)) or keras.saving.get_registered_name(type(sampler))
    return {"class_name": class_name, "config": sampler.get_config()}

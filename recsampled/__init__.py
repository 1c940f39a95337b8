"""recsampled: sampled softmax, candidate samplers and retrieval tasks for TensorFlow.

Importing recsampled is cheap: it imports no TensorFlow and loads each public name on first use
(PEP 562). It only sets ``TF_USE_LEGACY_KERAS=1`` (tensorflow-recommenders needs Keras 2) while
that is still possible, so that ``import recsampled`` at the top of a script makes ``tf.keras``
Keras 2. The subpackages that use ``tf.keras`` check it when they load and raise
``ImportError`` with the fix if TensorFlow already bound ``tf.keras`` to Keras 3; the Keras 3
layer, ``recsampled.keras3``, takes the variable back and works with ``import keras``.

Subpackages: ``losses`` (sampled and full softmax), ``samplers`` (candidate samplers and
in-batch frequency), ``tasks`` (the TFRS retrieval task), ``models`` (the two-tower model),
``layers`` (the Keras 2 sampled-softmax output), ``keras3`` (the same for Keras 3), ``data``
(interaction logs), ``training`` (reusable Keras callbacks: checkpoints, progress), ``runs`` (a
run from config to artifacts: build, train, run directory, export, evaluate), ``evaluation``
(full-catalogue metrics) and ``index`` (FAISS export and the ``Retriever``).
"""

from __future__ import annotations

import importlib as _importlib
from typing import Any as _Any

from recsampled import _keras_env

_keras_env.prefer_legacy_keras()

__version__ = "0.1.0"

_SUBPACKAGES = (
    "data",
    "evaluation",
    "index",
    "layers",
    "losses",
    "models",
    "runs",
    "samplers",
    "tasks",
    "training",
)
_OPTIONAL = ("keras3",)  # resolvable, but not in __all__: `import *` must not load Keras 3

_NAMES = {
    "recsampled.data": ("DataError", "Interactions", "Vocabulary", "read_interactions"),
    "recsampled.evaluation": ("RankingMetrics", "ranking_metrics"),
    "recsampled.index": ("Retriever", "export_artifact"),
    "recsampled.layers": ("SampledSoftmax", "SampledSoftmaxModel", "SampledSoftmaxSequential"),
    "recsampled.losses": ("full_softmax_loss", "sampled_logits", "sampled_softmax_loss"),
    "recsampled.models": ("Tower", "TwoTowerModel"),
    "recsampled.samplers": (
        "CandidateSampler",
        "FixedFrequency",
        "FrequencyEstimator",
        "LogUniformSampler",
        "QuadraticKernelSampler",
        "SampledValues",
        "UniformSampler",
        "UnigramSampler",
    ),
    "recsampled.tasks": ("Retrieval",),
}
_MODULE_OF = {name: module for module, names in _NAMES.items() for name in names}

__all__ = sorted([*_MODULE_OF, *_SUBPACKAGES])


def __getattr__(name: str) -> _Any:
    """Imports a public name's subpackage on first access (PEP 562)."""
    if name in _SUBPACKAGES or name in _OPTIONAL:
        value = _importlib.import_module(f"recsampled.{name}")
    elif name in _MODULE_OF:
        value = getattr(_importlib.import_module(_MODULE_OF[name]), name)
    else:
        raise AttributeError(f"module 'recsampled' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})

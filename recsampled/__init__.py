"""recsampled: sampled softmax, candidate samplers and retrieval tasks for TensorFlow.

Importing recsampled sets ``TF_USE_LEGACY_KERAS=1`` (tensorflow-recommenders needs Keras 2) before
TensorFlow binds ``tf.keras``; it raises ``ImportError`` with the fix if that is already too late.

Subpackages: ``losses`` (sampled and full softmax), ``samplers`` (candidate samplers and
in-batch frequency), ``tasks`` (the TFRS retrieval task), ``models`` (the two-tower model),
``layers`` (the Keras sampled-softmax output), ``data`` (interaction logs), ``training``
(config-driven runs with checkpoints), ``evaluation`` (full-catalogue metrics) and ``index``
(FAISS export and the ``Retriever``).
"""

from recsampled._keras_env import ensure_legacy_keras

ensure_legacy_keras()

from recsampled import (  # noqa: E402
    data,
    evaluation,
    index,
    layers,
    losses,
    models,
    samplers,
    tasks,
    training,
)
from recsampled.data import DataError, Interactions, Vocabulary, read_interactions  # noqa: E402
from recsampled.evaluation import RankingMetrics, ranking_metrics  # noqa: E402
from recsampled.index import Retriever, export_artifact  # noqa: E402
from recsampled.layers import (  # noqa: E402
    SampledSoftmax,
    SampledSoftmaxModel,
    SampledSoftmaxSequential,
)
from recsampled.losses import full_softmax_loss, sampled_logits, sampled_softmax_loss  # noqa: E402
from recsampled.models import Tower, TwoTowerModel  # noqa: E402
from recsampled.samplers import (  # noqa: E402
    CandidateSampler,
    FixedFrequency,
    FrequencyEstimator,
    LogUniformSampler,
    QuadraticKernelSampler,
    SampledValues,
    UniformSampler,
    UnigramSampler,
)
from recsampled.tasks import Retrieval  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "CandidateSampler",
    "DataError",
    "FixedFrequency",
    "FrequencyEstimator",
    "Interactions",
    "LogUniformSampler",
    "QuadraticKernelSampler",
    "RankingMetrics",
    "Retrieval",
    "Retriever",
    "SampledSoftmax",
    "SampledSoftmaxModel",
    "SampledSoftmaxSequential",
    "SampledValues",
    "Tower",
    "TwoTowerModel",
    "UniformSampler",
    "UnigramSampler",
    "Vocabulary",
    "data",
    "evaluation",
    "export_artifact",
    "full_softmax_loss",
    "index",
    "layers",
    "losses",
    "models",
    "ranking_metrics",
    "read_interactions",
    "sampled_logits",
    "sampled_softmax_loss",
    "samplers",
    "tasks",
    "training",
]

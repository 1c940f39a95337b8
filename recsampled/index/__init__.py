"""Export and serving: FAISS indexes over item embeddings, the artifact folder, the Retriever.

- ``build``: index types (``flat``, ``hnsw``, ``ivf``, ``ivfpq``) as FAISS factory strings over
  inner product (cosine = normalised inner product), the ``auto`` choice, and tuning of
  ``efSearch`` / ``nprobe`` / ``k_factor_rf`` until recall@10 against exact search reaches a
  target on real queries. Tests: ``tests/index/test_build.py``.
- ``artifact``: the folder's parts, ``manifest.json``, the atomic write (temporary folder, fsync,
  rename) and the checks on load that name the part at fault. Tests:
  ``tests/index/test_artifact.py`` (a SIGKILLed export, every corruption case).
- ``export``: ``embed_catalogue`` and ``export_artifact``, an interface of arrays and models that
  training code calls (no run-directory format). Tests: ``tests/index/test_artifact.py``.
- ``run``: ``load_run``, ``export_run`` and ``evaluate_run``: a trained run directory
  (``recsampled train``) into an artifact, and its test-split metrics exact and through the
  index (``recsampled export`` / ``evaluate``). Tests: ``tests/test_cli_serving.py``.
- ``retriever``: ``Retriever.load(folder)`` with ``recommend`` (seen items excluded, unknown users
  an error or popular items), ``similar_items`` and ``search``. Tests:
  ``tests/index/test_retriever.py`` (against NumPy brute force).

The benchmark ``pipelines/bench_index.py`` (tests: ``tests/index/test_bench_index.py``) compares
the index types with TFRS's ``BruteForce`` layer.
"""

# ruff: noqa: E402 (TF_USE_LEGACY_KERAS must be set before the imports below)
from recsampled._keras_env import ensure_legacy_keras

ensure_legacy_keras()

from recsampled.index.artifact import (
    SCHEMA_VERSION,
    ArtifactError,
    ArtifactNotFoundError,
    IndexInfo,
    Manifest,
    RecallInfo,
    read_manifest,
)
from recsampled.index.build import (
    AUTO_EXACT_MAX_ITEMS,
    DEFAULT_TARGET_RECALL,
    BuiltIndex,
    SearchResult,
    SearchTrial,
    build_index,
    exact_search,
    factory_string,
    recall_at_k,
)
from recsampled.index.export import ArtifactInfo, embed_catalogue, export_artifact
from recsampled.index.retriever import (
    Recommendations,
    Retriever,
    UnknownItemError,
    UnknownUserError,
)
from recsampled.index.run import (
    RunError,
    RunEvaluation,
    TrainedRun,
    evaluate_run,
    export_run,
    load_run,
    read_item_titles,
)

__all__ = [
    "AUTO_EXACT_MAX_ITEMS",
    "ArtifactError",
    "ArtifactInfo",
    "ArtifactNotFoundError",
    "BuiltIndex",
    "DEFAULT_TARGET_RECALL",
    "IndexInfo",
    "Manifest",
    "RecallInfo",
    "Recommendations",
    "Retriever",
    "RunError",
    "RunEvaluation",
    "SCHEMA_VERSION",
    "SearchResult",
    "SearchTrial",
    "TrainedRun",
    "UnknownItemError",
    "UnknownUserError",
    "build_index",
    "embed_catalogue",
    "evaluate_run",
    "exact_search",
    "export_artifact",
    "export_run",
    "factory_string",
    "load_run",
    "read_item_titles",
    "read_manifest",
    "recall_at_k",
]

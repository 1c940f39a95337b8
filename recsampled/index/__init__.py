"""Export and serving: FAISS indexes over item embeddings, the artifact folder, the Retriever.

No run concepts here (no config, no run directory): ``recsampled.runs`` turns a trained run
into the arrays and towers that :func:`export_artifact` takes.

- ``build``: index types (``flat``, ``hnsw``, ``ivf``, ``ivfpq``) as FAISS factory strings over
  inner product (cosine = normalised inner product), the ``auto`` choice, and tuning of
  ``efSearch`` / ``nprobe`` / ``k_factor_rf`` until recall@10 against exact search reaches a
  target on real queries. Tests: ``tests/index/test_build.py``.
- ``artifact``: the folder's parts, ``manifest.json``, the atomic write (``recsampled._io``) and
  the checks on load that name the part at fault. Tests: ``tests/index/test_artifact.py`` (a
  SIGKILLed export, every corruption case).
- ``export``: :func:`embed_catalogue` and :func:`export_artifact`, an interface of arrays and
  towers. Tests: ``tests/index/test_artifact.py``.
- ``query_model``: the artifact's TF-Serving SavedModel ``query_model/1/``: original user ids
  mapped in the graph (``serving_default: user_ids -> embeddings, known, user_indices``), the
  trained tower wrapped as saved. Tests: ``tests/index/test_query_model.py`` (which also runs
  ``tests/index/serving_example.py``, the README's faiss + tensorflow-only example).
- ``shards``: ``export_artifact(shards=N)``'s index shards of successive rows, searched together
  (``ShardedIndex``, a ``faiss.IndexShards`` that also reconstructs by row). Tests:
  ``tests/index/test_shards.py`` (equal to one index).
- ``retriever``: :meth:`Retriever.load` with ``recommend`` (seen items excluded, unknown users
  an error or popular items), ``similar_items``, ``search`` and ``item_vectors``. Tests:
  ``tests/index/test_retriever.py`` (against NumPy brute force).
- ``served``: the lists a Retriever serves (``k + w`` rows, ``w`` the user's seen count rounded
  up to a power of two, seen rows left out), shared by ``Retriever`` and export's tuning, so that
  the manifest's recall is that of the served lists. Tests:
  ``tests/index/test_hostile_artifacts.py``.
- ``integrity`` and ``checks``: what loading reads (regular files inside the folder, of the
  manifest's sizes, an optional HMAC-SHA256 ``manifest.sig``) and the structure of each part
  (CSR, ids, popularity, search parameters, metric, the query model's id map); the query
  model's graph is checked by :func:`recsampled.models.saved.check_saved_model`. Tests:
  ``tests/index/test_hostile_artifacts.py`` (each attack, re-hashed).
- ``batch``: :func:`write_recommendations`, every user's top-k into Parquet or CSV, in chunks
  (``recsampled recommend --all-users``). Tests: ``tests/index/test_batch.py``.

The benchmark ``pipelines/bench_index.py`` (tests: ``tests/index/test_bench_index.py``) compares
the index types with TFRS's ``BruteForce`` layer.
"""

# ruff: noqa: E402 (TF_USE_LEGACY_KERAS must be set before the imports below)
from recsampled._keras_env import ensure_legacy_keras

ensure_legacy_keras()

from recsampled.errors import (
    ArtifactError,
    ArtifactNotFoundError,
    UnknownItemError,
    UnknownUserError,
)
from recsampled.index.artifact import Manifest, read_manifest
from recsampled.index.batch import write_recommendations
from recsampled.index.build import BuiltIndex, build_index, exact_search, recall_at_k
from recsampled.index.export import ArtifactInfo, embed_catalogue, export_artifact
from recsampled.index.retriever import Recommendations, Retriever

__all__ = [
    "ArtifactError",
    "ArtifactInfo",
    "ArtifactNotFoundError",
    "BuiltIndex",
    "Manifest",
    "Recommendations",
    "Retriever",
    "UnknownItemError",
    "UnknownUserError",
    "build_index",
    "embed_catalogue",
    "exact_search",
    "export_artifact",
    "read_manifest",
    "recall_at_k",
    "write_recommendations",
]

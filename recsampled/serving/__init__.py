"""The HTTP service over an artifact: ``recsampled serve`` (FastAPI on uvicorn).

- ``schemas``: request and response bodies and their field rules.
- ``settings``: :class:`ServingSettings` (limits, micro-batching options).
- ``state``: :class:`ArtifactHolder`, the served artifact, loaded, checked and swapped in
  atomically on reload.
- ``queries``: requests resolved into queries; many queries answered by one query-tower call
  and one FAISS search.
- ``batching``: :class:`MicroBatcher`, which groups concurrent requests.
- ``metrics``: Prometheus counters and histograms. ``errors``: the JSON error answers.
- ``service``, ``app``: :func:`create_app`, the FastAPI app (embed it in your own service).
- ``server``: :func:`serve` (uvicorn, SIGHUP reload). ``cli``: the ``serve`` command.

Tests: ``tests/serving/`` (a real uvicorn server and HTTP client). Benchmark:
``pipelines/bench_serve.py``.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names resolve on first use (PEP 562), so that `recsampled.serving.cli` (the `serve` command's
# arguments) imports neither FastAPI nor TensorFlow until the server runs.
_EXPORTS = {
    "ArtifactHolder": "recsampled.serving.state",
    "LoadedArtifact": "recsampled.serving.state",
    "MicroBatcher": "recsampled.serving.batching",
    "ReloadInProgressError": "recsampled.serving.state",
    "ReloadRefusedError": "recsampled.serving.state",
    "ServiceError": "recsampled.serving.errors",
    "ServiceMetrics": "recsampled.serving.metrics",
    "ServingSettings": "recsampled.serving.settings",
    "create_app": "recsampled.serving.app",
    "serve": "recsampled.serving.server",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'recsampled.serving' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

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

from recsampled.serving.app import create_app
from recsampled.serving.batching import MicroBatcher
from recsampled.serving.errors import ServiceError
from recsampled.serving.metrics import ServiceMetrics
from recsampled.serving.settings import ServingSettings
from recsampled.serving.state import (
    ArtifactHolder,
    LoadedArtifact,
    ReloadInProgressError,
    ReloadRefusedError,
)


def serve(*args, **kwargs):  # noqa: D103 - documented in recsampled.serving.server
    from recsampled.serving.server import serve as _serve

    return _serve(*args, **kwargs)


serve.__doc__ = "Runs :func:`create_app` on uvicorn (see :func:`recsampled.serving.server.serve`)."

__all__ = [
    "ArtifactHolder",
    "LoadedArtifact",
    "MicroBatcher",
    "ReloadInProgressError",
    "ReloadRefusedError",
    "ServiceError",
    "ServiceMetrics",
    "ServingSettings",
    "create_app",
    "serve",
]

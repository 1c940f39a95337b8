"""Run the app on uvicorn; SIGHUP reloads the artifact.

Example:
    >>> serve("artifacts/movielens", port=8080)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import faiss
import tensorflow as tf
import uvicorn

from recsampled.index import Retriever
from recsampled.serving.app import create_app, direct_answers
from recsampled.serving.settings import ServingSettings

logger = logging.getLogger("recsampled.serving")

#: the interpreter's thread switch interval (s) while a batch thread shares the GIL with the
#: event loop: a batch thread back from FAISS waits at most this long for the GIL (Python's
#: default, 5 ms, is more than a batch's wait). Measured on 2 loaded cores, 64 clients, the
#: 10^6 IVF artifact: +10% queries/s batched; -7% without batching (40 threads), kept at 5 ms.
BATCH_SWITCH_INTERVAL = 0.0005


def serve(
    artifacts: str | os.PathLike | Retriever,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    settings: ServingSettings | None = None,
    faiss_threads: int | None = 1,
    tf_threads: int | None = 1,
    log_level: str = "info",
) -> None:
    """Loads the artifact, then serves it with uvicorn until SIGINT/SIGTERM.

    SIGHUP reloads the artifact folder in the background (checked, then swapped in; a broken
    folder is refused and logged, the old artifact keeps serving). ``POST`` requests to the
    query endpoints are answered before FastAPI's middleware
    (:func:`~recsampled.serving.app.direct_answers`). With shared searches in a thread (the
    default), the process's thread switch interval is set to :data:`BATCH_SWITCH_INTERVAL`.

    Args:
        artifacts: the artifact folder (or a symlink to it), or a loaded Retriever.
        host: the address to listen on (``0.0.0.0`` for all interfaces).
        port: the TCP port.
        settings: limits and micro-batching options.
        faiss_threads: OpenMP threads per FAISS search (``None``: FAISS's default, one per
            core). One is the default: a server answers many small searches at once, and
            OpenMP threads spinning on a busy machine cost more than they bring.
        tf_threads: TensorFlow's inter- and intra-op threads (``None``: TensorFlow's default);
            one by default, for the same reason (the query tower is a few small ops per call).
            Takes effect only if TensorFlow has not run an op in this process yet.
        log_level: uvicorn's log level.

    Raises:
        ArtifactError: if the folder is missing or fails a check.
    """
    if faiss_threads is not None:
        faiss.omp_set_num_threads(faiss_threads)
    if tf_threads is not None:
        try:
            tf.config.threading.set_inter_op_parallelism_threads(tf_threads)
            tf.config.threading.set_intra_op_parallelism_threads(tf_threads)
        except RuntimeError:  # TensorFlow already initialised (an embedding process)
            logger.warning("TensorFlow is initialised already; tf_threads=%d ignored", tf_threads)
    settings = settings or ServingSettings()
    if settings.batching and settings.batch_in_thread:
        sys.setswitchinterval(BATCH_SWITCH_INTERVAL)
    app = create_app(artifacts, settings=settings)
    config = uvicorn.Config(
        direct_answers(app),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
    )
    # uvicorn's own loop choice: uvloop when it is installed (uvicorn[standard]), else asyncio
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(_serve(uvicorn.Server(config), app))


async def _serve(server: uvicorn.Server, app) -> None:
    service = app.state.service
    if hasattr(signal, "SIGHUP"):

        def on_sighup() -> None:
            logger.info("SIGHUP: reloading %s", service.holder.path)
            service.reload_in_background()

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_sighup)
    await server.serve()

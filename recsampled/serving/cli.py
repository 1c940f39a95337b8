"""The ``serve`` command's arguments and entry point (``recsampled serve``, or
``python -m recsampled.serving``).

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_serve_arguments(parser)
    >>> args = parser.parse_args(["--artifacts", "artifacts/movielens", "--max-wait-ms", "1"])
    >>> args.port, args.max_wait_ms, args.batching
    (8080, 1.0, True)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from recsampled.serving.settings import ServingSettings

SERVE_HELP = """\
Serve an artifact folder over HTTP (FastAPI on uvicorn): POST /recommend, /similar-items and
/recommend-by-embedding, GET /healthz, /readyz, /manifest and /metrics, docs at /docs.
Concurrent requests share one query-tower call and one FAISS search (micro-batching). SIGHUP or
POST /admin/reload loads the folder again, checks it and swaps it in without downtime; a broken
folder is refused and the old artifact keeps serving.
"""

_DEFAULTS = ServingSettings()


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``serve`` options to ``parser``."""
    parser.add_argument(
        "--artifacts",
        type=Path,
        required=True,
        metavar="DIR",
        help="the artifact folder (or a symlink to it) to serve",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)",
    )
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    parser.add_argument(
        "--no-batching",
        dest="batching",
        action="store_false",
        help="answer each request on its own (no micro-batching)",
    )
    parser.add_argument(
        "--batch-in-thread",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="shared searches in a worker thread (default), or on the event loop",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=_DEFAULTS.max_batch_size,
        help="queries per shared search (default %(default)s)",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=_DEFAULTS.max_wait_ms,
        help="how long a batch waits for more requests (default %(default)s)",
    )
    parser.add_argument(
        "--max-ids",
        type=int,
        default=_DEFAULTS.max_ids,
        help="ids or vectors per request (default %(default)s)",
    )
    parser.add_argument(
        "--max-k",
        type=int,
        default=_DEFAULTS.max_k,
        help="largest k (default %(default)s, and at most the catalogue)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=_DEFAULTS.max_body_bytes,
        help="largest request body (default %(default)s)",
    )
    _add_table_argument(parser)
    parser.add_argument(
        "--faiss-threads",
        type=int,
        default=1,
        help="OpenMP threads per FAISS search (default 1; 0: one per core)",
    )
    parser.add_argument(
        "--tf-threads",
        type=int,
        default=1,
        help="TensorFlow inter- and intra-op threads (default 1; 0: TensorFlow's default)",
    )
    parser.add_argument(
        "--admin-token",
        default=os.environ.get("RECSAMPLED_ADMIN_TOKEN"),
        help="bearer token POST /admin/reload needs (default: "
        "$RECSAMPLED_ADMIN_TOKEN; none: the endpoint is open)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )


def _add_table_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--user-table-mb",
        type=float,
        default=_DEFAULTS.user_table_bytes / 2**20,
        help="embed every user once at load if the table fits in this many MiB, so requests "
        "need no TensorFlow call (default %(default)s; 0: call the tower per batch)",
    )


def serve_main(args: argparse.Namespace) -> int:
    """Runs the server with parsed ``serve`` arguments; returns the exit status.

    Bad options or an artifact that fails to load exit with status 2 and one message on stderr.
    """
    if not 0 <= args.user_table_mb < 2**40:
        print(
            "recsampled serve: `--user-table-mb` must be a number in [0, 2**40). "
            f"Received: {args.user_table_mb}.",
            file=sys.stderr,
        )
        return 2
    try:
        settings = ServingSettings(
            batching=args.batching,
            batch_in_thread=args.batch_in_thread,
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            max_ids=args.max_ids,
            max_k=args.max_k,
            max_body_bytes=args.max_body_bytes,
            admin_token=args.admin_token or None,
            user_table_bytes=int(args.user_table_mb * 2**20),
        )
    except ValueError as e:
        print(f"recsampled serve: {e}", file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(
            f"recsampled serve: `--port` must be in [1, 65535]. Received: {args.port}.",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:%(name)s: %(message)s")
    from recsampled.index import ArtifactError  # TensorFlow, FastAPI: only when serving
    from recsampled.serving.server import serve

    try:
        serve(
            args.artifacts,
            host=args.host,
            port=args.port,
            settings=settings,
            faiss_threads=args.faiss_threads or None,
            tf_threads=args.tf_threads or None,
            log_level=args.log_level,
        )
    except ArtifactError as e:
        print(f"recsampled serve: {e}", file=sys.stderr)
        return 2
    return 0

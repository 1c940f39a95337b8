"""The FastAPI app: ``create_app(artifacts)`` serves an artifact folder over HTTP.

Endpoints (OpenAPI docs at ``/docs``):

- ``POST /recommend`` ``{"user_ids": [...], "k": 10}`` (``exclude_seen`` true by default,
  optional ``allow_items`` / ``deny_items``, ``unknown_user``: ``"error"`` or ``"popular"``)
  answers ``{"results": [{"user_id", "items": [{"item_id", "score"}], "fallback"}]}`` in the
  order asked.
- ``POST /similar-items`` ``{"item_ids": [...], "k": 10}``: other items by embedding score.
- ``POST /recommend-by-embedding`` ``{"query_embeddings": [[...]], "k": 10}``: raw vectors of
  the artifact's dimension.
- ``GET /healthz`` (the process answers), ``GET /readyz`` (an artifact is served; the last
  reload), ``GET /manifest`` (the served artifact's manifest), ``GET /metrics`` (Prometheus).
- ``POST /admin/reload``: load the artifact folder again, check it, swap it in (see
  :mod:`recsampled.serving.state`); ``Authorization: Bearer <token>`` when the app has one.

Every answer carries ``X-Recsampled-Artifact: <generation>:<embeddings sha256 prefix>``. Every
error is JSON ``{"error", "message", "errors": [{"field", "rule"}]}``, never a traceback.

Example:
    >>> import numpy as np
    >>> from fastapi.testclient import TestClient
    >>> from recsampled.index import export_artifact
    >>> items = np.random.default_rng(0).normal(size=(50, 4)).astype("float32")
    >>> _ = export_artifact("/tmp/recsampled-serving-example", item_embeddings=items,
    ...                     item_ids=[f"item{i}" for i in range(50)], index="flat",
    ...                     overwrite=True)
    >>> client = TestClient(create_app("/tmp/recsampled-serving-example"))
    >>> body = {"query_embeddings": [[1.0, 0.0, 0.0, 0.0]], "k": 3}
    >>> answer = client.post("/recommend-by-embedding", json=body)
    >>> answer.status_code, len(answer.json()["results"][0]["items"])
    (200, 3)
    >>> client.post("/recommend-by-embedding", json={**body, "k": 0}).json()["errors"]
    [{'field': 'k', 'rule': 'Input should be greater than or equal to 1. Received: 0'}]
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from recsampled.index import Retriever
from recsampled.serving.errors import ServiceError
from recsampled.serving.metrics import ServiceMetrics
from recsampled.serving.queries import QueryKind
from recsampled.serving.schemas import (
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    RecommendRequest,
    RecommendResponse,
    ReloadResponse,
    SimilarItemsRequest,
    SimilarItemsResponse,
)
from recsampled.serving.service import Service, dumps, results_json
from recsampled.serving.settings import ServingSettings
from recsampled.serving.state import (
    ArtifactHolder,
    LoadedArtifact,
    ReloadInProgressError,
    ReloadRefusedError,
)

logger = logging.getLogger("recsampled.serving")

BATCHED_PATHS = frozenset({"/recommend", "/similar-items", "/recommend-by-embedding"})
KNOWN_PATHS = BATCHED_PATHS | {
    "/healthz", "/readyz", "/manifest", "/metrics", "/admin/reload", "/docs", "/openapi.json",
}  # fmt: skip
ARTIFACT_HEADER = "X-Recsampled-Artifact"
ARTIFACT_HEADER_BYTES = ARTIFACT_HEADER.lower().encode()
_DIRECT: dict[str, tuple[type[BaseModel], QueryKind]] = {
    "/recommend": (RecommendRequest, "user"),
    "/similar-items": (SimilarItemsRequest, "item"),
    "/recommend-by-embedding": (EmbeddingRequest, "vector"),
}
INTERNAL = ServiceError(500, "internal", "Internal error; it has been logged.")
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 404, 413, 422)
}


def endpoint_label(path: str) -> str:
    """The metrics label of a path: the route, or ``"other"``."""
    return path if path in KNOWN_PATHS else "other"


def _error(request: Request, error: ServiceError) -> JSONResponse:
    """The error's answer, counted by kind."""
    request.app.state.service.metrics.observe_error(endpoint_label(request.url.path), error.kind)
    return JSONResponse(error.body(), status_code=error.status)


class _ServiceMiddleware:
    """Refuses oversized bodies (413) before parsing, answers ``POST`` to the query endpoints
    itself (:meth:`_answer`; FastAPI's routes document them and answer the other methods),
    times requests, counts them."""

    def __init__(self, app: Any, *, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        status = {"code": 500}

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        direct = path in BATCHED_PATHS and scope["method"] == "POST"
        if path in BATCHED_PATHS and not direct:  # FastAPI's route reads bodies as JSON
            scope = _as_json(scope)  # whatever the client says (`curl -d`)
        batched = direct and self.service.batcher is not None
        if batched:
            self.service.batcher.arrived()
        try:
            body = await self._read_body(scope, receive)
            if body is None:
                limit = self.service.settings.max_body_bytes
                error = ServiceError(
                    413,
                    "body_too_large",
                    f"The request body must be at most {limit} bytes.",
                    field="body",
                )
                self.service.metrics.observe_error(endpoint_label(path), error.kind)
                await JSONResponse(error.body(), status_code=413)(scope, receive, send_status)
                return
            if direct:  # the body is read as JSON whatever the content type says
                status["code"] = await self._answer(path, body, send)
            else:
                await self.app(scope, _replay(body, receive), send_status)
        finally:
            if batched:
                self.service.batcher.left()
            self.service.metrics.observe_request(
                endpoint_label(path), scope["method"], status["code"], time.perf_counter() - started
            )

    async def _answer(self, path: str, body: bytes, send: Any) -> int:
        """Answers a ``POST`` to a query endpoint from its body: one JSON parse, one pydantic
        validation, the answer written as JSON directly (:func:`results_json`), the same checks
        and answers as the FastAPI route that documents it, without its routing and dependency
        machinery (most of a small request's CPU time besides the search)."""
        model, kind = _DIRECT[path]
        headers = [(b"content-type", b"application/json")]
        try:
            ranked, artifact = await self.service.rank(kind, parse_body(model, body))
            content, status = results_json(artifact, kind, ranked), 200
            headers.append((ARTIFACT_HEADER_BYTES, artifact.tag.encode()))
        except ServiceError as error:
            status, content = error.status, dumps(error.body())
            self.service.metrics.observe_error(endpoint_label(path), error.kind)
        except Exception:  # noqa: BLE001 - answered as a JSON 500, the traceback logged
            logger.exception("internal error answering %s", path)
            status, content = 500, dumps(INTERNAL.body())
            self.service.metrics.observe_error(endpoint_label(path), INTERNAL.kind)
        headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})
        return status

    async def _read_body(self, scope: dict, receive: Any) -> bytes | None:
        """The whole body, or ``None`` if it is longer than the limit."""
        limit = self.service.settings.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


class _DirectAnswers:
    """``app`` with ``POST`` to the query endpoints answered by the service's middleware before
    FastAPI's own (its routing, error pages and OpenTelemetry hooks: a tenth of a small request's
    CPU time); everything else, lifespan included, goes to ``app`` unchanged."""

    def __init__(self, app: FastAPI):
        self.app = app
        self.service_middleware = _ServiceMiddleware(app, service=app.state.service)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in BATCHED_PATHS:
            await self.service_middleware(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def direct_answers(app: FastAPI) -> Any:
    """The ASGI app :func:`~recsampled.serving.serve` runs: ``app`` (from :func:`create_app`)
    with ``POST /recommend``, ``/similar-items`` and ``/recommend-by-embedding`` answered before
    FastAPI's middleware, with the same answers, checks and Prometheus metrics (only FastAPI's
    own OpenTelemetry spans are not made for them). Embed ``app`` itself to keep every request
    inside FastAPI's middleware, yours included."""
    return _DirectAnswers(app)


def _as_json(scope: dict) -> dict:
    """``scope`` with ``content-type: application/json`` (curl's ``-d`` sends a form type)."""
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def validation_error(errors: Sequence[dict[str, Any]]) -> ServiceError:
    """Pydantic's errors as ``{"field", "rule"}`` pairs; malformed JSON is a 400."""
    pairs, malformed = [], False
    for e in errors:
        location = [str(p) for p in e.get("loc", ()) if p != "body"]
        field = ".".join(location) or "body"
        rule = str(e.get("msg", "invalid"))
        if e.get("type") == "json_invalid":
            malformed = True
            field = "body"
            rule = f"the body must be valid JSON ({e.get('ctx', {}).get('error', rule)})"
        elif "input" in e and e.get("type") != "missing":
            text = repr(e["input"])
            rule += f". Received: {text[:80] + '...' if len(text) > 80 else text}"
        pairs.append((field, rule))
    first = pairs[0] if pairs else ("body", "invalid request")
    more = f" (and {len(pairs) - 1} more)" if len(pairs) > 1 else ""
    return ServiceError(
        400 if malformed else 422,
        "malformed_json" if malformed else "invalid_request",
        f"`{first[0]}`: {first[1]}{more}.",
        errors=pairs,
    )


def parse_body(model: type[BaseModel], body: bytes) -> Any:
    """``body`` read as JSON and validated as ``model``, as FastAPI reads a JSON body.

    Raises:
        ServiceError: 400 ``malformed_json`` or 422 ``invalid_request`` (:func:`validation_error`).
    """
    if not body:
        errors = [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        raise validation_error(errors)
    try:  # pydantic's own JSON parser: half the CPU time of json.loads + model_validate
        return model.model_validate_json(body)
    except ValidationError:
        pass  # a body it refuses is read again as below, for the same errors as FastAPI's
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        error = {"type": "json_invalid", "loc": ("body", e.pos), "ctx": {"error": e.msg}}
        raise validation_error([error]) from e
    except (UnicodeDecodeError, RecursionError, ValueError) as e:
        raise validation_error([{"type": "json_invalid", "ctx": {"error": str(e)}}]) from e
    try:
        return model.model_validate(data, from_attributes=True)
    except ValidationError as e:
        raise validation_error(
            [{**error, "loc": ("body", *error["loc"])} for error in e.errors()]
        ) from e


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(request, validation_error(exc.errors()))


def _add_error_handlers(app: FastAPI) -> None:
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return _error(request, exc)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(request, exc)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed"}
        error = ServiceError(exc.status_code, kinds.get(exc.status_code, "http"), str(exc.detail))
        return _error(request, error)

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error answering %s", request.url.path)
        error = ServiceError(500, "internal", "Internal error; it has been logged.")
        return _error(request, error)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)


def _answer(body: dict[str, Any], artifact: LoadedArtifact) -> JSONResponse:
    return JSONResponse(body, headers={ARTIFACT_HEADER: artifact.tag})


def _check_admin(request: Request, token: str | None) -> None:
    if token is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise ServiceError(
            401, "unauthorized", "`Authorization` must be `Bearer <the server's admin token>`."
        )


def _add_routes(app: FastAPI, service: Service) -> None:
    @app.post("/recommend", response_model=RecommendResponse, responses=_ERRORS)
    async def recommend(request: RecommendRequest) -> Response:
        """Top-k items per user, in the order asked (seen items excluded by default)."""
        return _answer(*await service.recommend(request))

    @app.post("/similar-items", response_model=SimilarItemsResponse, responses=_ERRORS)
    async def similar_items(request: SimilarItemsRequest) -> Response:
        """Top-k other items per item, by the index's score between item embeddings."""
        return _answer(*await service.similar_items(request))

    @app.post("/recommend-by-embedding", response_model=EmbeddingResponse, responses=_ERRORS)
    async def recommend_by_embedding(request: EmbeddingRequest) -> Response:
        """Top-k items for raw query vectors of the artifact's dimension."""
        return _answer(*await service.by_embedding(request))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        """200 while an artifact is served (also during a reload), 503 when shutting down."""
        holder = service.holder
        last = holder.last_reload
        body = {
            "status": "shutting_down" if service.shutting_down else "ready",
            "generation": holder.current.generation,
            "artifact": holder.current.tag,
            "reloading": holder.reloading,
            "last_reload": None if last is None else vars(last),
        }
        return JSONResponse(body, status_code=503 if service.shutting_down else 200)

    @app.get("/manifest")
    async def manifest() -> Response:
        """The served artifact's manifest, with its generation and folder."""
        artifact = service.holder.current
        body = {
            "generation": artifact.generation,
            "path": str(artifact.retriever.path),
            "loaded_at": artifact.loaded_at,
            "manifest": artifact.retriever.manifest.to_dict(),
        }
        return _answer(body, artifact)

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        content, media_type = service.metrics.render()
        return Response(content, media_type=media_type)

    @app.post("/admin/reload", response_model=ReloadResponse, responses=_ERRORS)
    async def reload(request: Request) -> Response:
        """Load the artifact folder again, check every part, swap it in (409 if busy;
        422 ``artifact_refused`` if it fails a check: the old artifact keeps serving)."""
        _check_admin(request, service.settings.admin_token)
        try:
            loaded = await service.reload()
        except ReloadInProgressError as e:
            raise ServiceError(409, "reload_in_progress", str(e)) from e
        except ReloadRefusedError as e:
            current = service.holder.current.generation
            raise ServiceError(
                422,
                "artifact_refused",
                f"The artifact at {service.holder.path} was refused, generation {current} "
                f"keeps serving: {e}",
                field=e.part or "artifact",
            ) from e
        body = {
            "reloaded": True,
            "generation": loaded.generation,
            "path": str(loaded.retriever.path),
            "num_items": loaded.retriever.num_items,
            "message": service.holder.last_reload.message,
        }
        return _answer(body, loaded)


def create_app(
    artifacts: str | os.PathLike | Retriever,
    *,
    settings: ServingSettings | None = None,
    metrics: ServiceMetrics | None = None,
) -> FastAPI:
    """A FastAPI app serving an artifact folder (see the module docstring for the endpoints).

    The artifact is loaded and checked now, so a broken folder fails here, not at the first
    request. Mount the app in your own service, or run it with :func:`recsampled.serving.serve`.

    Args:
        artifacts: the artifact folder (or a symlink to it; reloads read it again), or a loaded
            :class:`~recsampled.index.Retriever`.
        settings: limits and micro-batching options (:class:`ServingSettings`).
        metrics: the Prometheus metrics; a fresh registry by default.

    Returns:
        The app; ``app.state.service`` is its :class:`~recsampled.serving.service.Service`.

    Raises:
        ArtifactError: if the folder is missing or fails a check (``error.part`` names it).
    """
    settings = settings or ServingSettings()
    if isinstance(artifacts, Retriever):
        holder = ArtifactHolder.from_retriever(
            artifacts, user_table_bytes=settings.user_table_bytes
        )
    else:
        holder = ArtifactHolder(
            artifacts,
            verify_checksums=settings.verify_checksums,
            user_table_bytes=settings.user_table_bytes,
        )
    service = Service(holder, settings, metrics or ServiceMetrics())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await service.close()

    app = FastAPI(
        title="recsampled",
        summary="Top-k retrieval over a recsampled artifact (FAISS index + query tower).",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(_ServiceMiddleware, service=service)
    _add_error_handlers(app)
    _add_routes(app, service)
    return app

"""The service behind the routes: resolve a request, answer it (batched or not), format it.

:class:`Service` ties the :class:`~recsampled.serving.state.ArtifactHolder`, the
:class:`~recsampled.serving.batching.MicroBatcher` and the metrics together. Each request reads
the holder's current artifact once, is checked against it, and is answered on it, so a reload
in between never mixes two artifacts in one answer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.concurrency import run_in_threadpool

from recsampled.serving.batching import MicroBatcher
from recsampled.serving.metrics import ServiceMetrics
from recsampled.serving.queries import Query, Ranked, answer, item_query, user_query, vector_query
from recsampled.serving.schemas import EmbeddingRequest, RecommendRequest, SimilarItemsRequest
from recsampled.serving.settings import ServingSettings
from recsampled.serving.state import ArtifactHolder, LoadedArtifact

logger = logging.getLogger("recsampled.serving")


def _items(artifact: LoadedArtifact, ranked: Ranked) -> list[dict[str, Any]]:
    ids = artifact.retriever.item_ids[ranked.rows].tolist()
    return [
        {"item_id": item, "score": score}
        for item, score in zip(ids, ranked.scores.tolist(), strict=True)
    ]


class Service:
    """Answers the endpoints' requests over a held artifact.

    Args:
        holder: the served artifact.
        settings: limits and batching options.
        metrics: where to count batches and reloads.
    """

    def __init__(
        self,
        holder: ArtifactHolder,
        settings: ServingSettings,
        metrics: ServiceMetrics,
    ):
        self.holder = holder
        self.settings = settings
        self.metrics = metrics
        self.batcher: MicroBatcher | None = None
        if settings.batching:
            self.batcher = MicroBatcher(
                answer,
                max_batch_size=settings.max_batch_size,
                max_wait_ms=settings.max_wait_ms,
                on_batch=metrics.observe_batch,
                in_thread=settings.batch_in_thread,
            )
        self.shutting_down = False
        self._background: set[asyncio.Task] = set()
        metrics.generation.set(holder.current.generation)

    async def _answer(self, query: Query) -> list[Ranked]:
        if self.batcher is not None:
            return await self.batcher.submit(query)
        self.metrics.observe_batch(1, len(query))
        return (await run_in_threadpool(answer, [query]))[0]

    async def recommend(self, request: RecommendRequest) -> tuple[dict[str, Any], LoadedArtifact]:
        artifact = self.holder.current
        ranked = await self._answer(user_query(artifact, request, self.settings))
        results = [
            {"user_id": r.key, "items": _items(artifact, r), "fallback": r.fallback} for r in ranked
        ]
        return {"results": results}, artifact

    async def similar_items(
        self, request: SimilarItemsRequest
    ) -> tuple[dict[str, Any], LoadedArtifact]:
        artifact = self.holder.current
        ranked = await self._answer(item_query(artifact, request, self.settings))
        results = [{"item_id": r.key, "items": _items(artifact, r)} for r in ranked]
        return {"results": results}, artifact

    async def by_embedding(
        self, request: EmbeddingRequest
    ) -> tuple[dict[str, Any], LoadedArtifact]:
        artifact = self.holder.current
        ranked = await self._answer(vector_query(artifact, request, self.settings))
        results = [{"query": r.key, "items": _items(artifact, r)} for r in ranked]
        return {"results": results}, artifact

    async def reload(self) -> LoadedArtifact:
        """Loads and checks the artifact folder again in a thread, then swaps it in.

        Raises:
            ReloadInProgressError, ReloadRefusedError: see :meth:`ArtifactHolder.reload`.
        """
        try:
            loaded = await asyncio.to_thread(self.holder.reload)
        except Exception:
            self.metrics.reloads.labels("refused").inc()
            raise
        self.metrics.reloads.labels("ok").inc()
        self.metrics.generation.set(loaded.generation)
        return loaded

    def reload_in_background(self) -> None:
        """Starts :meth:`reload` and logs its outcome (the SIGHUP handler)."""

        async def logged() -> None:
            try:
                await self.reload()
            except Exception as e:  # noqa: BLE001 - logged; the old artifact keeps serving
                logger.error("SIGHUP reload not done: %s", e)

        task = asyncio.get_running_loop().create_task(logged())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        self.shutting_down = True
        if self.batcher is not None:
            await self.batcher.close()

"""Micro-batching: concurrent requests answered by one query-tower call and one FAISS search.

Requests submit their :class:`~recsampled.serving.queries.Query` to a :class:`MicroBatcher` and
await the answer. One collector task (on the server's event loop) takes the first waiting
query, then gathers more until the batch holds ``max_batch_size`` query rows or
``max_wait_ms`` has passed since the first, and calls ``run`` (the service's
:func:`~recsampled.serving.queries.answer`) once per artifact in the batch (queries keep the
artifact they started on, so a batch straddling a reload runs as two groups), on the event loop
itself or, with ``in_thread=True``, in one worker thread. While it runs, new requests queue up
and form the next batch: under load, batches fill without waiting.

The collector waits for more only while requests are known to be on their way (counted by
:meth:`MicroBatcher.arrived` / :meth:`MicroBatcher.left` around each request and not yet
submitted), so a lone client pays no waiting time; ``max_wait_ms`` bounds the wait either way.

Example:
    >>> import asyncio
    >>> batcher = MicroBatcher(lambda queries: [len(q) for q in queries], max_batch_size=8,
    ...                        max_wait_ms=1.0, group_key=lambda q: 0)
    >>> async def three_requests():
    ...     return await asyncio.gather(*(batcher.submit([0] * n) for n in (1, 2, 3)))
    >>> asyncio.run(three_requests()), batcher.batches
    ([1, 2, 3], 1)
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

logger = logging.getLogger("recsampled.serving")

_Item = tuple[Any, asyncio.Future]


class MicroBatcher:
    """Groups concurrently submitted queries into calls of ``run``.

    Args:
        run: maps a list of queries (same ``group_key``) to one answer per query; runs in the
            batcher's worker thread.
        max_batch_size: the most query rows (``len(query)``) per call; a larger query runs
            alone.
        max_wait_ms: how long the first query of a batch waits for others.
        group_key: queries with different keys never share a call (the artifact they use).
        on_batch: called with ``(number of queries, number of rows)`` after each call.
        in_thread: call ``run`` for a batch of two or more queries in a worker thread (the
            event loop reads the next requests meanwhile); a lone query runs on the loop.
        thread_initializer: called once in that worker thread before its first batch (the
            service sets its OpenMP thread count there: OpenMP's is per thread).
    """

    def __init__(
        self,
        run: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch_size: int = 64,
        max_wait_ms: float = 2.0,
        group_key: Callable[[Any], Hashable] = lambda query: id(query.artifact),
        on_batch: Callable[[int, int], None] | None = None,
        in_thread: bool = True,
        thread_initializer: Callable[[], None] | None = None,
    ):
        self.run = run
        self.in_thread = in_thread
        self.thread_initializer = thread_initializer
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.group_key = group_key
        self.on_batch = on_batch
        self.batches = 0
        self._in_flight = 0  # requests between arrived() and left()
        self._unanswered = 0  # submitted and not answered yet
        self._queue: asyncio.Queue[_Item] | None = None
        self._pending: collections.deque[_Item] = collections.deque()
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- request side ------------------------------------------------------------------------

    def arrived(self) -> None:
        """A request that will submit a query has come in (lets the collector wait for it)."""
        self._in_flight += 1

    def left(self) -> None:
        self._in_flight -= 1

    async def submit(self, query: Any) -> Any:
        """Queues ``query`` and waits for its answer (``run``'s entry for it)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._start(loop)
        future = loop.create_future()
        self._unanswered += 1
        try:
            self._queue.put_nowait((query, future))
            return await future
        finally:
            self._unanswered -= 1

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._queue = asyncio.Queue()
        if self._executor is None and self.in_thread:
            self._executor = ThreadPoolExecutor(
                1, thread_name_prefix="recsampled-batch", initializer=self.thread_initializer
            )
        self._task = loop.create_task(self._collect(), name="recsampled-micro-batcher")

    async def close(self) -> None:
        """Stops the collector and the worker thread (queued requests are cancelled)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- collector side ----------------------------------------------------------------------

    def _others_coming(self) -> bool:
        """Requests have arrived that have not submitted their query yet."""
        return self._in_flight > self._unanswered

    async def _next(self) -> _Item:
        if self._pending:
            return self._pending.popleft()
        return await self._queue.get()

    async def _gather(self) -> list[_Item]:
        """The next batch: the first waiting query and those that join within the wait."""
        loop = asyncio.get_running_loop()
        batch = [await self._next()]
        rows = len(batch[0][0])
        deadline = loop.time() + self.max_wait
        while rows < self.max_batch_size:
            if self._pending:
                item = self._pending.popleft()
            elif not self._queue.empty():
                item = self._queue.get_nowait()
            elif self._others_coming() and (remaining := deadline - loop.time()) > 0:
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                break
            if rows + len(item[0]) > self.max_batch_size:
                self._pending.appendleft(item)  # starts the next batch
                break
            batch.append(item)
            rows += len(item[0])
        return batch

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            live = [(q, f) for q, f in batch if not f.done()]  # a client may have gone
            groups: dict[Hashable, list[_Item]] = {}
            for item in live:
                groups.setdefault(self.group_key(item[0]), []).append(item)
            for items in groups.values():
                queries = [q for q, _ in items]
                try:
                    # A lone query runs on the event loop (no thread hand-off for nobody to
                    # overlap with); a shared search in the thread, while the loop reads on.
                    if self._executor is None or len(queries) == 1:
                        answers = self.run(queries)
                    else:
                        answers = await loop.run_in_executor(self._executor, self.run, queries)
                except Exception as e:  # noqa: BLE001 - each request answers with the error
                    logger.exception("a batch of %d queries failed", len(queries))
                    for _, future in items:
                        if not future.done():
                            future.set_exception(e)
                    continue
                self.batches += 1
                if self.on_batch is not None:
                    self.on_batch(len(queries), sum(len(q) for q in queries))
                for (_, future), result in zip(items, answers, strict=True):
                    if not future.done():
                        future.set_result(result)

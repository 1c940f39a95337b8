"""MicroBatcher: grouping, limits, waiting, errors (with a fake ``run`` that records calls)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import pytest

from recsampled.serving.batching import MicroBatcher


class Recorder:
    """A ``run`` that answers each query with its own value and records the calls."""

    def __init__(self, fail_on: object = None):
        self.calls: list[list] = []
        self.fail_on = fail_on

    def __call__(self, queries: list) -> list:
        self.calls.append(list(queries))
        if any(q.name == self.fail_on for q in queries):
            raise RuntimeError("boom")
        return [f"answer-{q.name}" for q in queries]


@dataclasses.dataclass(frozen=True)
class query:  # noqa: N801 - reads like the helper it is
    """A fake query: ``len()`` is its number of rows, ``group`` its artifact."""

    name: object
    rows: int = 1
    group: int = 0

    def __len__(self) -> int:
        return self.rows


IN_THREAD = [False]  # the mode under test (both run: see the parametrized fixture)


@pytest.fixture(autouse=True, params=[False, True], ids=["on_loop", "in_thread"])
def mode(request):
    IN_THREAD[0] = request.param


def batcher(run, **kwargs) -> MicroBatcher:
    return MicroBatcher(run, group_key=lambda q: q.group, in_thread=IN_THREAD[0], **kwargs)


async def submit_all(b: MicroBatcher, queries: list) -> list:
    try:
        return await asyncio.gather(*(b.submit(q) for q in queries), return_exceptions=True)
    finally:
        await b.close()


def test_concurrent_queries_share_one_call_in_order():
    run = Recorder()
    b = batcher(run, max_batch_size=64, max_wait_ms=5)
    answers = asyncio.run(submit_all(b, [query(i) for i in range(10)]))
    assert answers == [f"answer-{i}" for i in range(10)]
    assert len(run.calls) == 1 and [q.name for q in run.calls[0]] == list(range(10))


def test_max_batch_size_counts_rows_and_large_queries_run_alone():
    run = Recorder()
    b = batcher(run, max_batch_size=4, max_wait_ms=5)
    sizes = [1, 2, 1, 3, 9, 1]  # 9 rows > 4: alone
    asyncio.run(submit_all(b, [query(i, rows) for i, rows in enumerate(sizes)]))
    rows_per_call = [sum(len(q) for q in call) for call in run.calls]
    assert all(r <= 4 for r, call in zip(rows_per_call, run.calls, strict=True) if len(call) > 1)
    assert [9] in [[len(q) for q in call] for call in run.calls]
    assert sorted(q.name for call in run.calls for q in call) == list(range(6))


def test_different_groups_never_share_a_call():
    """Queries resolved on different artifacts run in separate calls of the same batch."""
    run = Recorder()
    b = batcher(run, max_batch_size=64, max_wait_ms=5)
    answers = asyncio.run(submit_all(b, [query(i, group=i % 2) for i in range(6)]))
    assert answers == [f"answer-{i}" for i in range(6)]
    assert all(len({q.group for q in call}) == 1 for call in run.calls)
    assert len(run.calls) == 2


def test_a_failing_batch_fails_its_requests_only():
    run = Recorder(fail_on=3)
    b = batcher(run, max_batch_size=2, max_wait_ms=5)
    answers = asyncio.run(submit_all(b, [query(i) for i in range(6)]))
    failed = [i for i, a in enumerate(answers) if isinstance(a, RuntimeError)]
    assert 3 in failed and len(failed) == 2  # 3 and its batch mate
    assert all(answers[i] == f"answer-{i}" for i in range(6) if i not in failed)


def test_a_lone_request_does_not_wait_but_announced_ones_are_waited_for():
    run = Recorder()
    b = batcher(run, max_batch_size=64, max_wait_ms=300)

    async def lone() -> float:
        started = time.perf_counter()
        await b.submit(query("x"))
        return time.perf_counter() - started

    async def announced() -> list:
        b.arrived()  # a second request is on its way: the first waits for it
        first = asyncio.ensure_future(b.submit(query("a")))
        await asyncio.sleep(0.05)
        second = await b.submit(query("b"))
        b.left()
        return [await first, second]

    async def both() -> tuple:
        try:
            return await lone(), await announced()
        finally:
            await b.close()

    b.arrived()
    seconds, answers = asyncio.run(both())
    assert seconds < 0.2  # no 300 ms wait when nobody else is coming
    assert answers == ["answer-a", "answer-b"]
    assert run.calls[-1] == [query("a"), query("b")]


def test_a_gone_client_is_skipped():
    run = Recorder()
    b = batcher(run, max_batch_size=64, max_wait_ms=200)

    async def scenario() -> str:
        b.arrived()
        b.arrived()  # two requests on their way: the batch waits for the second
        gone = asyncio.ensure_future(b.submit(query("gone")))
        await asyncio.sleep(0.02)
        gone.cancel()  # its client disconnected while the batch was gathering
        b.left()
        try:
            return await b.submit(query("kept"))
        finally:
            b.left()
            await b.close()

    assert asyncio.run(scenario()) == "answer-kept"
    assert run.calls == [[query("kept")]]


def test_the_thread_initializer_runs_in_the_worker_thread_before_its_batches():
    """It sets per-thread state (the service: FAISS's OpenMP thread count) where ``run`` runs."""
    local = threading.local()
    seen = []

    def run(queries: list) -> list:
        seen.append((threading.current_thread() is threading.main_thread(), local.__dict__))
        return [q.name for q in queries]

    b = MicroBatcher(run, group_key=lambda q: q.group, max_wait_ms=5, in_thread=True,
                     thread_initializer=lambda: setattr(local, "ready", True))  # fmt: skip
    assert asyncio.run(submit_all(b, [query(i) for i in range(3)])) == [0, 1, 2]
    assert seen == [(False, {"ready": True})]  # one shared call, in the initialised thread

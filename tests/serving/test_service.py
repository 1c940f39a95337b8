"""The service's answers: JSON written directly equals ``json.dumps`` of the same body, and
FAISS runs in the service's worker threads with the thread count of the thread that made it."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import faiss
import numpy as np
import pytest

from recsampled.serving import ServingSettings, create_app
from recsampled.serving import service as service_module
from recsampled.serving.queries import Ranked, user_query
from recsampled.serving.schemas import RecommendRequest
from recsampled.serving.service import dumps, results, results_json

from .conftest import USER_IDS

STRING_IDS = np.array(["a", 'quote"d', "back\\slash", "tab\tnew\nline", "é→ü", "\x01", "日本"])


def ranked_lists(item_ids: np.ndarray, seed: int) -> list[Ranked]:
    """Three rows of random items and float32 scores (one empty, one a fallback)."""
    rng = np.random.default_rng(seed)
    out = []
    for key, size, fallback in ((7, 5, False), ("user-é", 0, False), (-3, 3, True)):
        rows = rng.choice(len(item_ids), size, replace=False)
        scores = (rng.normal(size=size) * 10.0 ** rng.integers(-8, 8, size)).astype(np.float32)
        out.append(Ranked(key, rows.astype(np.int64), scores, fallback))
    return out


IDS = [np.arange(100, 110, dtype=np.int64), STRING_IDS, STRING_IDS.astype(object)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["user", "item", "vector"])
@pytest.mark.parametrize("ids", IDS, ids=["int", "str", "object"])
def test_results_json_is_the_bytes_of_json_dumps(ids, kind, seed):
    artifact = SimpleNamespace(retriever=SimpleNamespace(item_ids=ids))
    ranked = ranked_lists(ids, seed)
    assert results_json(artifact, kind, ranked) == dumps(results(artifact, kind, ranked))


def test_results_json_refuses_non_finite_scores_as_json_dumps_does():
    artifact = SimpleNamespace(retriever=SimpleNamespace(item_ids=np.arange(3)))
    for bad in (np.nan, np.inf):
        ranked = [Ranked(1, np.array([0, 1]), np.array([1.0, bad], np.float32), False)]
        with pytest.raises(ValueError, match="Out of range float values"):
            results_json(artifact, "user", ranked)


def test_worker_threads_search_on_the_creators_faiss_thread_count(artifacts, monkeypatch):
    """OpenMP's thread count is per thread: a new thread starts at OpenMP's default (one per
    core), so the service sets its own in the threads that search, batched or not."""
    fresh = []
    thread = threading.Thread(target=lambda: fresh.append(faiss.omp_get_max_threads()))
    thread.start(), thread.join()
    wanted = fresh[0] + 1  # differs from what a fresh thread has
    seen = []
    answer = service_module.answer

    def recorded(queries):
        seen.append((threading.current_thread() is threading.main_thread(),
                     faiss.omp_get_max_threads()))  # fmt: skip
        return answer(queries)

    monkeypatch.setattr(service_module, "answer", recorded)
    faiss.omp_set_num_threads(wanted)  # the autouse fixture restores one thread afterwards
    for batching in (True, False):
        settings = ServingSettings(batching=batching, max_wait_ms=50)
        service = create_app(artifacts["a"], settings=settings).state.service
        if batching:
            service.batcher.run = recorded
        queries = [user_query(service.holder.current, RecommendRequest(user_ids=[int(u)], k=3),
                              settings) for u in USER_IDS[:2]]  # fmt: skip

        async def both(service=service, queries=queries):
            try:
                return await asyncio.gather(*(service._answer(q) for q in queries))
            finally:
                await service.close()

        answers = asyncio.run(both())
        assert [len(a[0].rows) for a in answers] == [3, 3]
    # batched: one shared call of both queries in the batch thread; not batched: one call each
    assert seen == [(False, wanted)] * 3

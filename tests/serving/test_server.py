"""A real server: ``python -m recsampled.serving`` in a subprocess on a free loopback port,
queried with httpx. Answers equal ``Retriever.recommend``; reloads under concurrent load
lose no request; SIGHUP reloads; generated bodies never give a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from .conftest import NUM_ITEMS, USER_IDS, free_port, point
from .test_app import BODIES, PATHS

USERS = USER_IDS.tolist()
K = 10


def wait_until_up(process: subprocess.Popen, url: str, log, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /healthz within {timeout} s")


@pytest.fixture(scope="module")
def server(artifacts, tmp_path_factory):
    """``(url, process, link)``: a server on ``link``, a symlink pointing at artifact ``a``."""
    root = tmp_path_factory.mktemp("server")
    link = root / "current"
    point(link, artifacts["a"])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with open(root / "server.log", "w+") as log:
        for attempt in range(2):  # a second port if another process took the first one
            port = free_port()
            command = [
                sys.executable, "-m", "recsampled.serving", "--artifacts", str(link),
                "--port", str(port), "--max-wait-ms", "2", "--log-level", "warning",
            ]  # fmt: skip
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            url = f"http://127.0.0.1:{port}"
            try:
                wait_until_up(process, url, log)
                break
            except RuntimeError as e:
                process.kill()
                process.wait()
                if attempt:
                    raise
                warnings.warn(f"retrying the server on another port: {e}", stacklevel=1)
                log.seek(0)
                log.truncate()
        try:
            yield url, process, link
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.seek(0)
        text = log.read()
    assert "Traceback" not in text, text


@pytest.fixture(scope="module")
def expected(retrievers):
    """Per artifact tag prefix (the embeddings' sha256), each user's top-K item ids."""
    table = {}
    for name in ("a", "b"):
        retriever = retrievers[name]
        top = retriever.recommend(USERS, k=K)
        table[retriever.manifest.embeddings_sha256[:16]] = (
            name,
            dict(zip(USERS, top.ids.tolist(), strict=True)),
        )
    return table


def test_responses_equal_retriever_recommend(server, retrievers):
    url, _, _ = server
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=url) as client:
        for _ in range(10):
            users = rng.choice(USERS, rng.integers(1, 5), replace=False).tolist()
            k = int(rng.integers(1, NUM_ITEMS // 2))
            response = client.post("/recommend", json={"user_ids": users, "k": k})
            assert response.status_code == 200
            expected = retrievers["a"].recommend(users, k=k)
            for b, result in enumerate(response.json()["results"]):
                assert result["user_id"] == users[b]
                assert [i["item_id"] for i in result["items"]] == expected.ids[b].tolist()
                scores = [i["score"] for i in result["items"]]
                np.testing.assert_allclose(scores, expected.scores[b], rtol=0, atol=1e-5)
        assert client.get("/docs").status_code == 200
        assert client.get("/readyz").json()["status"] == "ready"
        assert "recsampled_batch_rows_bucket" in client.get("/metrics").text


def test_bad_input_on_the_wire(server):
    url, _, _ = server
    with httpx.Client(base_url=url) as client:
        headers = {"content-type": "application/json"}
        assert client.post("/recommend", content=b"{", headers=headers).status_code == 400
        big = b'{"user_ids": [' + b"1000," * 300_000 + b"1000]}"
        response = client.post("/recommend", content=big, headers=headers)
        assert response.status_code == 413 and response.json()["error"] == "body_too_large"
        response = client.post("/recommend", json={"user_ids": [1]})
        assert response.status_code == 404 and response.json()["ids"] == [1]


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=PATHS, body=BODIES)
def test_generated_bodies_never_give_a_5xx(server, path, body):
    url, _, _ = server
    response = httpx.post(
        url + path, content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert response.status_code < 500, response.text


async def hammer(
    url: str,
    requests: int,
    clients: int,
    seed: int,
    until: asyncio.Event | None = None,
    out: list | None = None,
) -> list[tuple[int, str, dict]]:
    """At least ``requests`` /recommend calls from ``clients`` concurrent clients, and more until
    ``until`` is set (so the load spans every reload however slow the machine): (status, tag,
    body) of each, appended to ``out`` as they come."""
    rng = np.random.default_rng(seed)
    out = [] if out is None else out

    async def client_loop(client: httpx.AsyncClient) -> None:
        while len(out) < requests or (until is not None and not until.is_set()):
            users = rng.choice(USERS, rng.integers(1, 4), replace=False).tolist()
            response = await client.post("/recommend", json={"user_ids": users, "k": K})
            tag = response.headers.get("x-recsampled-artifact", "")
            out.append((response.status_code, tag, response.json()))

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return out


def test_reload_under_concurrent_load_loses_no_request(server, artifacts, expected):
    """Reloads (admin endpoint) to b, to a broken folder (refused), and back to a, while 16
    clients send requests (300 at least, and until the last reload is done): every request
    answered 200, each answer entirely from the artifact its header names, both served."""
    url, _, link = server

    async def scenario():
        reloaded, answers = asyncio.Event(), []
        load = asyncio.ensure_future(hammer(url, 300, 16, seed=1, until=reloaded, out=answers))
        outcomes = []
        async with httpx.AsyncClient(base_url=url, timeout=120) as admin:
            for target in ("b", "broken", "a"):
                await asyncio.sleep(0.2)
                point(link, artifacts[target])
                outcomes.append((target, (await admin.post("/admin/reload")).status_code))
                answered = len(answers)  # two rounds of the 16 clients: some started after it
                while len(answers) < answered + 32 and not load.done():
                    await asyncio.sleep(0.05)
        reloaded.set()
        return await load, outcomes

    answers, outcomes = asyncio.run(scenario())
    assert outcomes == [("b", 200), ("broken", 422), ("a", 200)]
    assert len(answers) >= 300 and all(status == 200 for status, _, _ in answers)
    served = set()
    for _, tag, body in answers:
        name, top = expected[tag.split(":")[1]]
        served.add(name)
        for result in body["results"]:
            assert [i["item_id"] for i in result["items"]] == top[result["user_id"]]
    assert served == {"a", "b"}


def test_sighup_reloads(server, artifacts, expected):
    url, process, link = server

    def generation() -> int:
        return httpx.get(f"{url}/readyz").json()["generation"]

    for target in ("b", "a"):
        before = generation()
        point(link, artifacts[target])
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while generation() == before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert generation() == before + 1
        response = httpx.post(f"{url}/recommend", json={"user_ids": [USERS[3]], "k": K})
        name, top = expected[response.headers["x-recsampled-artifact"].split(":")[1]]
        assert name == target
        assert [i["item_id"] for i in response.json()["results"][0]["items"]] == top[USERS[3]]

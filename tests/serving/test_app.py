"""The app in process (FastAPI's TestClient): endpoints, bad input, metrics, reload.

The same checks against a real uvicorn server are in ``test_server.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from recsampled.serving import ServingSettings, create_app
from recsampled.serving.app import direct_answers, parse_body
from recsampled.serving.cli import add_serve_arguments, serve_main
from recsampled.serving.errors import ServiceError
from recsampled.serving.schemas import (
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    RecommendRequest,
    RecommendResponse,
    SimilarItemsResponse,
)

from .conftest import ITEM_IDS, NUM_ITEMS, USER_IDS, TestClient, point

SETTINGS = ServingSettings(max_wait_ms=1, max_ids=50, max_list_items=100, max_body_bytes=20_000)
USERS = USER_IDS.tolist()


@pytest.fixture(scope="module")
def client(artifacts):
    with TestClient(create_app(artifacts["a"], settings=SETTINGS)) as c:
        yield c


def test_recommend_equals_retriever_in_order(client, retrievers):
    users = [USERS[7], USERS[2], USERS[30]]
    response = client.post("/recommend", json={"user_ids": users, "k": 12})
    assert response.status_code == 200
    body = RecommendResponse.model_validate(response.json())
    expected = retrievers["a"].recommend(users, k=12)
    assert [r.user_id for r in body.results] == users
    for b, result in enumerate(body.results):
        assert [i.item_id for i in result.items] == expected.ids[b].tolist()
        np.testing.assert_allclose([i.score for i in result.items], expected.scores[b], atol=1e-5)
        assert result.fallback is False
    assert response.headers["x-recsampled-artifact"].startswith("1:")


def test_other_endpoints(client, retrievers):
    retriever = retrievers["a"]
    response = client.post("/similar-items", json={"item_ids": ["item-010"], "k": 4})
    body = SimilarItemsResponse.model_validate(response.json())
    assert [i.item_id for i in body.results[0].items] == retriever.similar_items(
        ["item-010"], k=4
    ).ids[0].tolist()
    vectors = np.random.default_rng(0).normal(size=(3, 8))
    response = client.post("/recommend-by-embedding", json={"query_embeddings": vectors.tolist()})
    body = EmbeddingResponse.model_validate(response.json())
    assert [r.query for r in body.results] == [0, 1, 2]
    assert [i.item_id for i in body.results[2].items] == retriever.search(vectors, 10).ids[
        2
    ].tolist()
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["generation"] >= 1
    manifest = client.get("/manifest").json()
    assert manifest["manifest"]["num_items"] == NUM_ITEMS
    assert "/recommend" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_unknown_user_is_a_404_or_popular_items(client, retrievers):
    response = client.post("/recommend", json={"user_ids": [USERS[0], 77, 78]})
    assert response.status_code == 404
    error = ErrorResponse.model_validate(response.json())
    assert error.error == "unknown_user" and error.ids == [77, 78]
    assert "User id 77" in error.message and error.errors[0].field == "user_ids.1"
    response = client.post("/recommend", json={"user_ids": [77], "k": 3, "unknown_user": "popular"})
    (result,) = response.json()["results"]
    assert result["fallback"] is True
    assert [i["item_id"] for i in result["items"]] == retrievers["a"].popular_items(3).tolist()


# (body, status, field the first error names)
BAD_BODIES = [
    ({"user_ids": [1000], "k": 0}, 422, "k"),
    ({"user_ids": [1000], "k": "10"}, 422, "k"),
    ({"user_ids": [1000], "k": 10.0}, 422, "k"),
    ({"user_ids": [1000], "k": True}, 422, "k"),
    ({"user_ids": [1000], "k": NUM_ITEMS + 1}, 422, "k"),
    ({"user_ids": []}, 422, "user_ids"),
    ({"user_ids": "1000"}, 422, "user_ids"),
    ({"user_ids": [[1000]]}, 422, "user_ids.0"),
    ({"user_ids": [1.5]}, 422, "user_ids.0"),
    ({"user_ids": [2**70]}, 422, "user_ids.0"),
    ({"user_ids": ["x" * 300]}, 422, "user_ids.0"),
    ({"user_ids": ["1000"]}, 422, "user_ids.0"),
    ({"user_ids": USERS + USERS[:11]}, 422, "user_ids"),
    ({"user_ids": [1000], "exclude_seen": "yes"}, 422, "exclude_seen"),
    ({"user_ids": [1000], "unknown_user": "maybe"}, 422, "unknown_user"),
    ({"user_ids": [1000], "colour": "red"}, 422, "colour"),
    ({"user_ids": [1000], "deny_items": ["item-999"]}, 422, "deny_items.0"),
    ({"user_ids": [1000], "allow_items": []}, 422, "allow_items"),
    ({"user_ids": [1000], "allow_items": ITEM_IDS[:101].tolist()}, 422, "allow_items"),
    ({"k": 3}, 422, "user_ids"),
    ([1000], 422, "body"),
]


@pytest.mark.parametrize("body, status, field", BAD_BODIES)
def test_bad_bodies_name_the_field_and_rule(client, body, status, field):
    response = client.post("/recommend", json=body)
    assert response.status_code == status, response.text
    error = ErrorResponse.model_validate(response.json())
    assert error.errors[0].field == field
    assert field in error.message and "Traceback" not in response.text


@pytest.mark.parametrize(
    "path, content, status, kind",
    [
        ("/recommend", b'{"user_ids": [1000], "k": ', 400, "malformed_json"),
        ("/recommend", b"\xff\xfe", 400, "malformed_json"),
        ("/recommend-by-embedding", b'{"query_embeddings": [[NaN, 0, 0, 0, 0, 0, 0, 0]]}', 422,
         "invalid_request"),
        ("/recommend-by-embedding", b'{"query_embeddings": [[1e999, 0, 0, 0, 0, 0, 0, 0]]}', 422,
         "invalid_request"),
        ("/recommend-by-embedding", b'{"query_embeddings": [[1e39, 0, 0, 0, 0, 0, 0, 0]]}', 422,
         "invalid_request"),
        ("/recommend-by-embedding", b'{"query_embeddings": [[1, 2]]}', 422, "invalid_request"),
        ("/recommend", b'{"user_ids": [' + b"1000, " * 5000 + b"1000]}", 413, "body_too_large"),
    ],
)  # fmt: skip
def test_raw_bodies(client, path, content, status, kind):
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"] == kind


def test_bodies_are_json_whatever_the_content_type(client):
    """``curl -d`` sends application/x-www-form-urlencoded; the body is still read as JSON."""
    form = {"content-type": "application/x-www-form-urlencoded"}
    body = json.dumps({"user_ids": [USERS[0]], "k": 2})
    assert client.post("/recommend", content=body, headers=form).status_code == 200
    assert client.post("/recommend", content=body).status_code == 200  # no content type
    response = client.post("/recommend", content=b"user_ids=1000", headers=form)
    assert response.status_code == 400 and response.json()["error"] == "malformed_json"


def test_routes_and_methods_answer_json(client):
    assert client.get("/recommend").status_code == 405
    assert client.get("/recommend").json()["error"] == "method_not_allowed"
    assert client.get("/nope").json()["error"] == "not_found"


def test_metrics_count_requests_errors_and_batches(client):
    client.post("/recommend", json={"user_ids": [5]})
    client.post("/recommend", json={"user_ids": [USERS[0]]})
    text = client.get("/metrics").text
    assert 'recsampled_errors_total{endpoint="/recommend",kind="unknown_user"}' in text
    assert 'recsampled_requests_total{endpoint="/recommend",method="POST",status="200"}' in text
    assert 'recsampled_request_latency_seconds_bucket{endpoint="/recommend",le="0.02"}' in text
    assert "recsampled_batch_rows_count" in text


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)  # fmt: skip
IDS = st.lists(st.sampled_from(USERS[:5] + [-1, "1000"]) | JSON, max_size=4)
FIELDS = {
    "user_ids": IDS,
    "item_ids": st.lists(st.sampled_from(ITEM_IDS[:5].tolist() + ["nope", 3]) | JSON, max_size=4),
    "query_embeddings": st.lists(st.lists(st.floats() | JSON, max_size=9), max_size=3),
    "k": st.integers(-3, NUM_ITEMS + 3) | JSON,
    "exclude_seen": st.booleans() | JSON,
    "unknown_user": st.sampled_from(["error", "popular", "other"]) | JSON,
    "allow_items": st.none() | st.lists(st.sampled_from(ITEM_IDS[:9].tolist()) | JSON, max_size=3),
    "deny_items": st.none() | st.lists(st.sampled_from(ITEM_IDS[:9].tolist()) | JSON, max_size=3),
}
BODIES = st.fixed_dictionaries({}, optional=FIELDS) | JSON
PATHS = st.sampled_from(["/recommend", "/similar-items", "/recommend-by-embedding"])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=PATHS, body=BODIES)
def test_generated_bodies_never_give_a_5xx(client, path, body):
    response = client.post(
        path, content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert ErrorResponse.model_validate(response.json()).message


def test_admin_token(artifacts):
    app = create_app(artifacts["a"], settings=ServingSettings(admin_token="s3cret"))
    with TestClient(app) as c:
        assert c.post("/admin/reload").status_code == 401
        wrong = c.post("/admin/reload", headers={"authorization": "Bearer nope"})
        assert wrong.json()["error"] == "unauthorized"
        ok = c.post("/admin/reload", headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["generation"] == 2


def test_reload_swaps_and_refuses_a_broken_artifact(artifacts, retrievers, tmp_path):
    link = tmp_path / "current"
    point(link, artifacts["a"])
    with TestClient(create_app(link, settings=SETTINGS)) as c:
        point(link, artifacts["b"])
        response = c.post("/admin/reload")
        assert response.status_code == 200 and response.json()["generation"] == 2
        body = c.post("/recommend", json={"user_ids": [USERS[4]], "k": 5}).json()
        items = [i["item_id"] for i in body["results"][0]["items"]]
        assert items == retrievers["b"].recommend([USERS[4]], k=5).ids[0].tolist()

        point(link, artifacts["broken"])
        refused = c.post("/admin/reload")
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"] == "artifact_refused"
        assert "index.faiss" in refused.json()["message"]
        served = c.post("/recommend", json={"user_ids": [USERS[4]], "k": 5})
        assert served.status_code == 200 and served.headers["x-recsampled-artifact"][0] == "2"
        assert c.get("/readyz").json()["last_reload"]["ok"] is False
        assert 'recsampled_reloads_total{outcome="refused"} 1.0' in c.get("/metrics").text


def test_a_request_in_flight_finishes_on_its_artifact(artifacts, retrievers, tmp_path):
    """A request waiting in the batcher while a reload swaps artifacts is answered on the
    artifact it started on; the next request uses the new one."""
    link = tmp_path / "current"
    point(link, artifacts["a"])
    service = create_app(link, settings=ServingSettings(max_wait_ms=400)).state.service
    request = RecommendRequest(user_ids=[USERS[9]], k=6)

    async def scenario():
        service.batcher.arrived()
        service.batcher.arrived()  # a second request is announced: the batch waits for it
        waiting = asyncio.ensure_future(service.recommend(request))
        await asyncio.sleep(0.05)
        point(link, artifacts["b"])
        await service.reload()
        service.batcher.left()
        service.batcher.left()
        old = await waiting
        new = await service.recommend(request)
        await service.close()
        return old, new

    (old_body, old), (new_body, new) = asyncio.run(scenario())
    assert (old.generation, new.generation) == (1, 2)
    for body, name in ((old_body, "a"), (new_body, "b")):
        items = [i["item_id"] for i in body["results"][0]["items"]]
        assert items == retrievers[name].recommend([USERS[9]], k=6).ids[0].tolist()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-batch-size", "0"], "`max_batch_size` must be a positive integer"),
        (["--max-wait-ms", "-1"], "`max_wait_ms` must be a number in [0, 10000)"),
        (["--port", "70000"], "`--port` must be in [1, 65535]"),
        (["--user-table-mb", "-1"], "`--user-table-mb` must be a number in [0, 2**40)"),
    ],
)
def test_serve_command_refuses_bad_options(artifacts, capsys, argv, message):
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert serve_main(parser.parse_args(["--artifacts", str(artifacts["a"]), *argv])) == 2
    assert message in capsys.readouterr().err


def test_serve_command_names_a_broken_artifact(artifacts, capsys):
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert serve_main(parser.parse_args(["--artifacts", str(artifacts["broken"])])) == 2
    err = capsys.readouterr().err
    assert "index.faiss" in err and "Traceback" not in err


DENY = ITEM_IDS[:2].tolist()
DIRECT_REQUESTS = [
    ("post", "/recommend", {"user_ids": [USERS[3], USERS[1]], "k": 4}),
    ("post", "/recommend", {"user_ids": [5], "k": 4}),
    ("post", "/recommend", {"user_ids": [5], "unknown_user": "popular", "deny_items": DENY}),
    ("post", "/recommend", {"user_ids": [USERS[0]], "k": 0}),
    ("post", "/recommend", b'{"user_ids": [1000], "k": '),
    ("post", "/similar-items", {"item_ids": ["item-010", "item-003"], "k": 3}),
    ("post", "/recommend-by-embedding", {"query_embeddings": [[0.5] * 8], "k": 2}),
    ("get", "/recommend", None),
    ("get", "/healthz", None),
]  # fmt: skip


def test_direct_answers_equal_the_apps(artifacts):
    """``serve`` runs ``direct_answers(app)``: the same statuses, bodies and metrics as the
    FastAPI app for the query endpoints (answered before FastAPI) and the rest (passed on)."""
    answers = {}
    for direct in (False, True):
        app = create_app(artifacts["a"], settings=SETTINGS)
        with TestClient(direct_answers(app) if direct else app) as c:
            for method, path, body in DIRECT_REQUESTS:
                if isinstance(body, bytes):
                    response = c.request(method, path, content=body)
                else:
                    response = c.request(method, path, json=body)
                answers.setdefault(direct, []).append((response.status_code, response.content))
            metrics = c.get("/metrics").text
        counted = 'recsampled_requests_total{endpoint="/recommend",method="POST",status="200"} 2.0'
        assert counted in metrics  # once each, not once per layer
        assert 'recsampled_errors_total{endpoint="/recommend",kind="unknown_user"} 1.0' in metrics
    assert answers[True] == answers[False]
    assert [status for status, _ in answers[True]] == [200, 404, 200, 422, 400, 200, 200, 405, 200]


TRICKY_BODIES = [
    b'{"user_ids": [1], "k": 1, "k": 2}', b' {"user_ids": [-0]} ', b'{"user_ids": ["x\\u0000y"]}',
    b'{"user_ids": ["\\ud800"]}', b'{"user_ids": ["a\xff"]}', b'\xef\xbb\xbf{"user_ids": [1]}',
    '{"user_ids": ["\u00e9"]}'.encode("utf-16"), b'{"user_ids": [1]} x', b'{"user_ids": [1e3]}',
    b'{"user_ids": [1], "k": 1.0}', b'{"user_ids": [1], "k": "2"}', b'{"user_ids": [1],}',
    b'{"user_ids": [1], "k": 100000000000000000000000}', b'{"user_ids": [9223372036854775808]}',
    b'{"user_ids": [1], "exclude_seen": 1}', b'{"user_ids": [1], "unknown_user": null}',
]  # fmt: skip
TRICKY_VECTORS = [
    b'{"query_embeddings": [[NaN, 1]]}', b'{"query_embeddings": [[-Infinity, 1]]}',
    b'{"query_embeddings": [[1e-400, 1.00000000000000011102230246251565404236316680908203125]]}',
    b'{"query_embeddings": [[0.1, 3.4028234663852886e38, 1e39]]}', b'{"query_embeddings": [[1]]}',
]  # fmt: skip


@pytest.mark.parametrize(
    "model, body",
    [(RecommendRequest, b) for b in TRICKY_BODIES]
    + [(EmbeddingRequest, b) for b in TRICKY_VECTORS],
)
def test_parse_body_reads_what_json_loads_reads(model, body):
    """pydantic's JSON parser first: the same request or the same error as ``json.loads`` then
    ``model_validate`` (FastAPI's way), on bodies where the two parsers could differ."""
    try:
        expected = model.model_validate(json.loads(body))
    except (ValueError, UnicodeDecodeError) as e:  # pydantic's ValidationError is a ValueError
        expected = type(e)
    try:
        assert parse_body(model, body) == expected
    except ServiceError as error:
        assert expected in (json.JSONDecodeError, UnicodeDecodeError, ValidationError)
        assert error.status == (422 if expected is ValidationError else 400)

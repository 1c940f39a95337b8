"""The TF-Serving query model ``query_model/1/``: user ids mapped in the graph, unknown ids
explicit, the tower wrapped as saved; Retriever.load's checks of it; version-1 artifacts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from recsampled.errors import ArtifactError
from recsampled.index import Retriever, export_artifact
from recsampled.index.query_model import save_query_model
from recsampled.models import load_tower, save_tower
from tests.index.conftest import DIM, NUM_USERS, query_tower

EXAMPLE = Path(__file__).with_name("serving_example.py")


@pytest.fixture(scope="module")
def tower_dir(tmp_path_factory: pytest.TempPathFactory, query_model) -> Path:
    return save_tower(query_model, tmp_path_factory.mktemp("tower") / "query")


@pytest.mark.parametrize("kind", ["int64", "string"])
def test_serving_signature_maps_original_ids_like_the_tower(tower_dir, tmp_path, kind) -> None:
    rng = np.random.default_rng(3)
    if kind == "int64":
        user_ids = rng.choice(10**12, NUM_USERS, replace=False).astype(np.int64)
        unknown = [-5, int(user_ids.max()) + 1]
    else:
        user_ids = np.array([f"user-{i}" for i in rng.permutation(NUM_USERS)])
        unknown = ["nobody", ""]
    model = tf.saved_model.load(str(save_query_model(tower_dir, user_ids, tmp_path / "m" / "1")))
    assert (tmp_path / "m" / "1" / "saved_model.pb").is_file()  # TF Serving's <version>/ layout
    order = rng.permutation(NUM_USERS)[:25]
    asked = [*user_ids[order].tolist(), *unknown]
    out = model.signatures["serving_default"](user_ids=tf.constant(asked, tf.as_dtype(kind)))
    tower = load_tower(tower_dir)
    expected = tower(tf.constant(order, tf.int64)).numpy()
    np.testing.assert_allclose(out["embeddings"].numpy()[:25], expected, rtol=1e-6, atol=1e-7)
    assert out["known"].numpy().tolist() == [True] * 25 + [False, False]
    assert out["user_indices"].numpy().tolist() == [*order.tolist(), -1, -1]
    assert not out["embeddings"].numpy()[25:].any()  # unknown ids: zero vectors
    # The user-index entry points (Retriever, HTTP service) give the tower's embeddings.
    by_index = model.signatures["by_user_index"](user_indices=tf.constant(order, tf.int64))
    np.testing.assert_allclose(by_index["embeddings"].numpy(), expected, rtol=1e-6, atol=1e-7)
    function = model.__call__.get_concrete_function(tf.TensorSpec([None], tf.int64))
    np.testing.assert_allclose(function(tf.constant(order, tf.int64)), expected, rtol=1e-6)


def test_the_tower_is_wrapped_with_its_trained_variables(tower_dir, tmp_path) -> None:
    model = tf.saved_model.load(str(save_query_model(tower_dir, np.arange(NUM_USERS), tmp_path)))
    tower = load_tower(tower_dir)
    saved = sorted((v.name, v.numpy().tobytes()) for v in tower.tower.variables)
    wrapped = sorted((v.name, v.numpy().tobytes()) for v in model.tower.tower.variables)
    assert saved and wrapped == saved


def test_retriever_and_the_service_entry_point_use_the_query_model(artifact_dir, data, query_model):
    retriever = Retriever.load(artifact_dir)
    function = retriever.query_model.__call__.get_concrete_function(tf.TensorSpec([None], tf.int64))
    users = np.arange(NUM_USERS)
    expected = query_model(tf.constant(users, tf.int64)).numpy()
    tolerance = {"rtol": 1e-6, "atol": 1e-6}
    np.testing.assert_allclose(function(tf.constant(users, tf.int64)), expected, **tolerance)
    np.testing.assert_allclose(retriever.embed_users(data.user_ids), expected, **tolerance)


def test_a_query_model_with_another_vocabulary_is_refused(artifact_dir, tmp_path, query_model):
    path = tmp_path / "copy"
    shutil.copytree(artifact_dir, path)
    tower = save_tower(query_model, tmp_path / "tower")
    shutil.rmtree(path / "query_model" / "1")
    shuffled = np.load(path / "user_ids.npy")[::-1].copy()  # the right ids in the wrong order
    save_query_model(tower, shuffled, path / "query_model" / "1")
    with pytest.raises(ArtifactError, match="does not map the users of user_ids.npy") as caught:
        Retriever.load(path, verify_checksums=False)
    assert caught.value.part == "query_model"


def test_a_version_1_artifact_with_an_index_tower_still_loads(artifact_dir, tmp_path, data):
    path = tmp_path / "v1"
    shutil.copytree(artifact_dir, path)
    shutil.rmtree(path / "query_model")
    save_tower(query_tower(NUM_USERS, DIM), path / "query_model")  # the v1 layout
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["schema_version"] = 1
    del manifest["query_model"], manifest["index"]["shards"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    old, new = Retriever.load(path, verify_checksums=False), Retriever.load(artifact_dir)
    a, b = old.recommend(data.user_ids, k=5), new.recommend(data.user_ids, k=5)
    assert np.array_equal(a.ids, b.ids)


def test_the_readme_example_serves_with_faiss_and_tensorflow_only(artifact_dir, data) -> None:
    """Runs serving_example.py (the README's code) in a fresh interpreter and compares its
    recommendations with Retriever.recommend (seen items excluded)."""
    users = [*data.user_ids[::3].tolist(), 99]  # 99: not a user
    runner = (
        "import runpy, sys; sys.argv = sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__'); "
        "assert not [m for m in sys.modules if m.startswith('recsampled')], 'imported recsampled'"
    )
    argv = [sys.executable, "-c", runner, str(EXAMPLE), str(artifact_dir), "7", json.dumps(users)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])
    top = Retriever.load(artifact_dir).recommend(users[:-1], k=7)
    assert [entry["user_id"] for entry in served] == users
    assert served[-1] == {"user_id": 99, "known": False, "items": []}
    for b, entry in enumerate(served[:-1]):
        assert entry["known"] and [item for item, _ in entry["items"]] == top.ids[b].tolist()
        np.testing.assert_allclose([s for _, s in entry["items"]], top.scores[b], atol=1e-5)


def test_exported_ids_of_strings_are_served_as_strings(tmp_path) -> None:
    items = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    tower = tf.keras.Sequential([tf.keras.layers.Embedding(3, 4)])
    info = export_artifact(
        tmp_path / "a", item_embeddings=items, item_ids=np.arange(30), query_model=tower,
        user_ids=["ann", "bob", "cy"], index="flat",
    )  # fmt: skip
    assert info.manifest.query_model["user_id_dtype"] == "string"
    model = tf.saved_model.load(str(tmp_path / "a" / "query_model" / "1"))
    out = model.signatures["serving_default"](user_ids=tf.constant(["cy", "dan"]))
    assert out["known"].numpy().tolist() == [True, False]
    np.testing.assert_allclose(out["embeddings"].numpy()[0], tower(tf.constant([2])).numpy()[0])

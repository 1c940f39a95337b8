"""Artifacts are data, not code: tampered (and re-hashed) artifacts are refused before they run,
hang or serve wrong lists (issue 16). Each attacker edits the session's artifact and re-hashes
the manifest, as one who can write the folder would."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from recsampled import cli
from recsampled._io import sha256_part
from recsampled.errors import ArtifactError, RecsampledError
from recsampled.index import Retriever, export_artifact
from recsampled.index.integrity import KEY_ENV, part_size
from recsampled.index.retriever import TooManyItemsError, UnsafeArtifactError
from recsampled.models.saved import UnsafeModelError, check_saved_model, load_tower
from tests.index.conftest import DIM, NUM_ITEMS, Data, numpy_top_k

KEY = b"0123456789abcdef-test-key"


@contextlib.contextmanager
def deadline(seconds: float):
    """Fails (TimeoutError) instead of hanging past ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def copy(artifact_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "copy"
    shutil.copytree(artifact_dir, path, symlinks=True)
    return path


def rehash(path: Path, *parts: str, **changes) -> None:
    """Records the parts' new sha256 and size (and ``changes``) in the manifest."""
    data = json.loads((path / "manifest.json").read_text())
    for part in parts:
        data["files"][part] = sha256_part(path / part)
        data["sizes"][part] = part_size(path, part)
    data.update(changes)
    (path / "manifest.json").write_text(json.dumps(data))


def save_part(path: Path, part: str, array: np.ndarray) -> None:
    np.save(path / part, array)
    rehash(path, part)


# -- the query model's graph ------------------------------------------------------------------


class FileTouchingModel(tf.Module):
    """A query model that reads ``secret`` and writes it to ``stolen`` whenever it is called."""

    def __init__(self, secret: Path, stolen: Path):
        super().__init__()
        self.secret, self.stolen = str(secret), str(stolen)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="user_indices")])
    def __call__(self, user_indices):
        tf.io.write_file(self.stolen, tf.io.read_file(self.secret))
        return tf.zeros([tf.shape(user_indices)[0], DIM])


def test_query_model_that_reads_and_writes_files_is_refused(artifact_dir, tmp_path) -> None:
    path = copy(artifact_dir, tmp_path)
    secret, stolen = tmp_path / "secret.txt", tmp_path / "stolen.txt"
    secret.write_text("password hash")
    model = FileTouchingModel(secret, stolen)
    shutil.rmtree(path / "query_model" / "1")
    tf.saved_model.save(model, str(path / "query_model" / "1"))
    rehash(path, "query_model")
    before = os.stat(secret).st_atime_ns
    with pytest.raises(UnsafeArtifactError, match="'(ReadFile|WriteFile)'") as caught:
        Retriever.load(path)
    assert caught.value.part == "query_model" and caught.value.op in ("ReadFile", "WriteFile")
    assert str(path / "query_model" / "1" / "saved_model.pb") in str(caught.value)
    assert not stolen.exists() and os.stat(secret).st_atime_ns == before
    with contextlib.suppress(ArtifactError):  # the opt-out runs the graph: the attack was real
        Retriever.load(path, trusted=True)
    assert stolen.read_text() == "password hash"


def test_nested_and_printing_ops_are_refused_and_a_tower_loads(tmp_path, query_model) -> None:
    class Nested(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
        def __call__(self, ids):
            def leak():
                tf.print(ids, output_stream=f"file://{tmp_path / 'printed'}")
                return tf.zeros([tf.shape(ids)[0], DIM])

            return tf.cond(tf.size(ids) > 0, leak, lambda: tf.ones([tf.shape(ids)[0], DIM]))

    tf.saved_model.save(Nested(), str(tmp_path / "nested"))
    with pytest.raises(UnsafeModelError, match="'(StringFormat|PrintV2)'") as caught:
        load_tower(tmp_path / "nested")  # how a run's towers/* are loaded
    assert isinstance(caught.value, RecsampledError) and caught.value.function
    assert not (tmp_path / "printed").exists()

    class Saving(tf.Module):  # checkpoint ops outside the saver_def's functions write files
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
        def __call__(self, ids):
            tf.raw_ops.SaveV2(
                prefix=str(tmp_path / "ckpt"), tensor_names=["x"], shape_and_slices=[""],
                tensors=[ids],
            )  # fmt: skip
            return tf.zeros([tf.shape(ids)[0], DIM])

    tf.saved_model.save(Saving(), str(tmp_path / "saving"))
    with pytest.raises(UnsafeModelError, match="'SaveV2'"):
        check_saved_model(tmp_path / "saving")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "saved_model.pbtxt").write_text("meta_graphs {}")
    with pytest.raises(UnsafeModelError, match="text graph"):
        check_saved_model(tmp_path / "text")


# -- only regular files inside the folder, of the manifest's size -----------------------------


def test_index_symlinked_to_dev_zero_fails_fast(artifact_dir, tmp_path) -> None:
    path = copy(artifact_dir, tmp_path)
    (path / "index.faiss").unlink()
    os.symlink("/dev/zero", path / "index.faiss")
    for verify in (True, False):
        with deadline(20), pytest.raises(ArtifactError, match="symlink") as caught:
            Retriever.load(path, verify_checksums=verify)
        assert caught.value.part == "index.faiss"


def test_symlinks_out_fifos_and_links_inside_the_query_model_are_refused(
    artifact_dir, tmp_path
) -> None:
    path = copy(artifact_dir, tmp_path)
    outside = tmp_path / "item_ids_elsewhere.npy"
    shutil.move(path / "item_ids.npy", outside)
    os.symlink(outside, path / "item_ids.npy")  # same bytes, same checksum: still refused
    with pytest.raises(ArtifactError, match="symlink") as caught:
        Retriever.load(path)
    assert caught.value.part == "item_ids.npy"
    (path / "item_ids.npy").unlink()
    os.mkfifo(path / "item_ids.npy")
    with deadline(20), pytest.raises(ArtifactError, match="not a regular file"):
        Retriever.load(path)
    path = copy(artifact_dir, tmp_path / "again")
    variables = next((path / "query_model").rglob("variables.index"))
    shutil.move(variables, tmp_path / "variables.index")
    os.symlink(tmp_path / "variables.index", variables)
    with pytest.raises(ArtifactError, match="symlink") as caught:
        Retriever.load(path, verify_checksums=False)
    assert caught.value.part == "query_model"


# -- signed manifests ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("signed") / "a"
    export_artifact(
        path, item_embeddings=Data.items, item_ids=Data.item_ids, index="flat", key=KEY,
        item_popularity=Data.popularity,
    )  # fmt: skip
    return path


def test_a_signed_artifact_loads_with_its_key_only(signed, tmp_path, monkeypatch) -> None:
    assert (signed / "manifest.sig").read_text().startswith("hmac-sha256:")
    assert Retriever.load(signed, key=KEY).num_items == NUM_ITEMS
    monkeypatch.setenv(KEY_ENV, KEY.decode())
    assert Retriever.load(signed).num_items == NUM_ITEMS  # the key from the environment
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ArtifactError, match="does not match") as caught:
        Retriever.load(signed, key=b"another key of 16+ bytes")
    assert caught.value.part == "manifest.sig"
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Retriever.load(signed, key="short")


def test_tampered_or_unsigned_manifests_are_refused_with_a_key(signed, artifact_dir, tmp_path):
    path = copy(signed, tmp_path)
    ids = np.load(path / "item_ids.npy")
    save_part(path, "item_ids.npy", ids[[1, 0, *range(2, len(ids))]])  # swapped, re-hashed
    Retriever.load(path)  # without the key nothing can tell (integrity module docstring)
    with pytest.raises(ArtifactError, match="does not match") as caught:
        Retriever.load(path, key=KEY)
    assert caught.value.part == "manifest.sig"
    (path / "manifest.sig").unlink()
    with pytest.raises(ArtifactError, match="not signed"):
        Retriever.load(path, key=KEY)
    with pytest.raises(ArtifactError, match="not signed"):
        Retriever.load(artifact_dir, key=KEY)


# -- every part's structure, re-hashed -------------------------------------------------------


def _shift_indptr(path: Path) -> None:
    with np.load(path / "seen.npz") as data:
        indptr, indices = data["indptr"].copy(), data["indices"]
    indptr[1:-1] += 1
    np.savez_compressed(path / "seen.npz", indptr=np.maximum.accumulate(indptr), indices=indices)
    rehash(path, "seen.npz")


def _seen(path: Path, indptr: list, indices: list) -> None:
    np.savez_compressed(path / "seen.npz", indptr=np.array(indptr), indices=np.array(indices))
    rehash(path, "seen.npz")


def _swap_users(path: Path) -> None:
    ids = np.load(path / "user_ids.npy")
    ids[[5, 6]] = ids[[6, 5]]  # not the first or last user: only the full id map can tell
    save_part(path, "user_ids.npy", ids)


PART_CASES = [
    ("shifted indptr", _shift_indptr, "seen.npz", "not strictly increasing"),
    ("indptr not from 0", lambda p: _seen(p, [1] * 41, []), "seen.npz", "must start at 0"),
    ("indptr past nnz", lambda p: _seen(p, [0] * 40 + [5], [1, 2]), "seen.npz", "end at 2"),
    ("swapped user ids", _swap_users, "query_model",
     "maps user id 1006 to index 6, but user_ids.npy holds it at 5"),
    ("int32 user ids", lambda p: save_part(p, "user_ids.npy", Data.user_ids.astype(np.int32)),
     "user_ids.npy", "holds int32 ids, but manifest.json says int64"),
    ("NaN popularity", lambda p: save_part(p, "item_popularity.npy", np.r_[np.nan, np.ones(299)]),
     "item_popularity.npy", "finite"),
    ("negative popularity", lambda p: save_part(p, "item_popularity.npy", -np.ones(300)),
     "item_popularity.npy", ">= 0"),
    ("dot on a cosine index", lambda p: rehash(p, metric="dot"), "index.faiss",
     "says metric='dot', but index.faiss stores unit vectors"),
    ("hnsw params on flat", lambda p: rehash(p, index={**_index(p), "type": "hnsw",
     "search_params": {"efSearch": 16}}), "index.faiss", "index.type is 'hnsw', but"),
]  # fmt: skip


def _index(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())["index"]


@pytest.mark.parametrize("mutate, part, message", [c[1:] for c in PART_CASES],
                         ids=[c[0] for c in PART_CASES])  # fmt: skip
def test_tampered_parts_are_refused(artifact_dir, tmp_path, mutate, part, message) -> None:
    path = copy(artifact_dir, tmp_path)
    mutate(path)
    with pytest.raises(ArtifactError, match=message) as caught:
        Retriever.load(path)
    assert caught.value.part == part


@pytest.fixture(scope="module")
def ivf(tmp_path_factory, query_model) -> Path:
    """An IVF artifact (dot) tuned to a low recall (nprobe=2 of 7: served recall@10 0.7925, plain
    0.8125 on these 40 users), so that served and plain recall differ."""
    path = tmp_path_factory.mktemp("ivf") / "a"
    export_artifact(
        path, item_embeddings=Data.items, item_ids=Data.item_ids, query_model=query_model,
        user_ids=Data.user_ids, index="ivf", seen=Data.seen, target_recall=0.7,
    )  # fmt: skip
    return path


@pytest.mark.parametrize(
    "changes, message",
    [({"search_params": {"nprobe": -5}}, r"in \[1, 7\]"),
     ({"search_params": {"nprobe": 10**15}}, r"in \[1, 7\]"),
     ({"search_params": {"nprobe": 8}}, r"in \[1, 7\]"),
     ({"search_params": {"nprobe": True}}, "integer"),
     ({"type": "hnsw", "search_params": {"efSearch": 64}}, "index.type is 'hnsw'")],
)  # fmt: skip
def test_search_params_out_of_range_are_refused(ivf, tmp_path, changes, message) -> None:
    path = copy(ivf, tmp_path)
    rehash(path, index={**_index(path), **changes})
    with pytest.raises(ArtifactError, match=message) as caught:
        Retriever.load(path)
    assert caught.value.part == "index.faiss"


@pytest.fixture(scope="module")
def hnsw(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hnsw") / "a"
    with pytest.warns(UserWarning, match="sample_queries"):
        export_artifact(path, item_embeddings=Data.items, item_ids=Data.item_ids, index="hnsw")
    return path


@pytest.mark.parametrize("value", [-5, 0, 10**15, 1.5])
def test_ef_search_out_of_range_is_refused(hnsw, tmp_path, value) -> None:
    path = copy(hnsw, tmp_path)
    rehash(path, index={**_index(path), "search_params": {"efSearch": value}})
    with pytest.raises(ArtifactError, match=r"`efSearch` must be an integer in \[1, 1024\]"):
        Retriever.load(path)


def test_cosine_on_a_dot_index_and_normalize_mismatch_are_refused(ivf, tmp_path) -> None:
    path = copy(ivf, tmp_path)
    rehash(path, metric="cosine")
    with pytest.raises(ArtifactError, match="says metric='cosine', but index.faiss stores"):
        Retriever.load(path)
    rehash(path, metric="dot", training_config={"model": {"normalize": True}})
    with pytest.raises(ArtifactError, match="model.normalize=True"):
        Retriever.load(path)


# -- k, and the served recall ----------------------------------------------------------------


def test_k_beyond_the_catalogue_is_one_clear_error(artifact_dir, capsys) -> None:
    retriever = Retriever.load(artifact_dir)
    with pytest.raises(TooManyItemsError, match=r"at most .* \(300\). Received: k=10{12}"):
        retriever.recommend(Data.user_ids[:2], k=10**12)
    command = ["recommend", "--artifacts", str(artifact_dir), "-k", "1000000000000", "--user", "1"]
    status = cli.main(command)
    assert status == 2 and "k=1000000000000" in capsys.readouterr().err


def test_manifest_recall_is_the_recall_of_the_served_lists(ivf) -> None:
    """Recomputed: every user's served top-10 (seen left out) against NumPy exact search over
    the unseen items; all 40 users are the tuning sample (fewer than 1000)."""
    retriever = Retriever.load(ivf)
    recall = retriever.manifest.recall
    assert recall.excludes_seen and recall.num_queries == len(Data.user_ids)
    queries = retriever.embed_users(Data.user_ids)
    exact, _ = numpy_top_k(queries, Data.items, 10, "dot", banned=Data.seen)
    served = retriever.recommend(Data.user_ids, k=10).rows
    hits = sum(len(set(a) & set(e)) for a, e in zip(served, exact, strict=True))
    assert abs(recall.value - hits / exact.size) < 0.005
    plain = retriever.index.search(queries, 10)[1]
    plain_exact, _ = numpy_top_k(queries, Data.items, 10, "dot")
    plain_recall = np.mean(
        [len(set(a) & set(e)) / 10 for a, e in zip(plain, plain_exact, strict=True)]
    )
    assert abs(plain_recall - recall.value) > 0.01  # what the manifest said before
    one = retriever.recommend(Data.user_ids[[5]], k=10).rows  # a list never depends on the batch
    assert np.array_equal(one[0], served[5])

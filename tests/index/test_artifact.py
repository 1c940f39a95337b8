"""The artifact folder: atomic write (a killed export leaves nothing), manifest, checks on load."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from recsampled._io import sha256_array, sha256_part
from recsampled.index import (
    ArtifactError,
    ArtifactNotFoundError,
    Retriever,
    export_artifact,
    read_manifest,
)
from recsampled.index import artifact as artifact_module

REPO = Path(__file__).resolve().parents[2]

# The export runs in a child process whose manifest write blocks: it is killed with SIGKILL
# after every other part is in the temporary folder, the worst moment.
KILLED_EXPORT = """
import sys, time
from pathlib import Path
import numpy as np
import recsampled.index.artifact as artifact
from recsampled.index import export_artifact

def blocked_write_manifest(folder, manifest):
    Path(sys.argv[2]).write_text(str(folder))
    time.sleep(600)

artifact.write_manifest = blocked_write_manifest
items = np.random.default_rng(0).normal(size=(100, 4)).astype("float32")
export_artifact(sys.argv[1], item_embeddings=items, item_ids=np.arange(100), index="flat")
"""


def _export_small(path: Path, *, seed: int = 0, **kwargs) -> None:
    items = np.random.default_rng(seed).normal(size=(50, 4)).astype(np.float32)
    export_artifact(path, item_embeddings=items, item_ids=np.arange(50), index="flat", **kwargs)


def test_killed_export_leaves_nothing_loadable_and_a_retry_succeeds(tmp_path: Path) -> None:
    final, ready = tmp_path / "artifact", tmp_path / "ready"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    log = tmp_path.parent / f"{tmp_path.name}-child.log"
    with open(log, "wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_EXPORT, str(final), str(ready)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 120
    while not ready.exists():
        if child.poll() is not None:
            pytest.fail(f"the export exited early: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("the export did not reach the manifest within 120 s")
        time.sleep(0.05)
    temporary = Path(ready.read_text())
    assert (temporary / "index.faiss").exists()  # every part but the manifest was written
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    assert not final.exists()
    with pytest.raises(ArtifactNotFoundError, match="Artifact not found") as caught:
        Retriever.load(final)
    assert caught.value.part == "folder"
    assert "Unfinished exports were found next to it" in str(caught.value)

    _export_small(final)  # the retry succeeds and removes the dead process's folder
    assert not temporary.exists()
    assert Retriever.load(final).num_items == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact", "ready"]


def test_failed_overwrite_keeps_the_previous_artifact(tmp_path: Path, monkeypatch) -> None:
    final = tmp_path / "artifact"
    _export_small(final, seed=1)
    before = read_manifest(final).embeddings_sha256

    def broken(folder, manifest):
        raise OSError("disk full")

    monkeypatch.setattr(artifact_module, "write_manifest", broken)
    with pytest.raises(OSError, match="disk full"):
        _export_small(final, seed=2, overwrite=True)
    assert read_manifest(final).embeddings_sha256 == before
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]  # no temporary left behind


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    final = tmp_path / "artifact"
    _export_small(final, seed=1)
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        _export_small(final, seed=2)
    _export_small(final, seed=2, overwrite=True)
    items = np.random.default_rng(2).normal(size=(50, 4)).astype(np.float32)
    assert read_manifest(final).embeddings_sha256 == sha256_array(items)
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]  # the backup is gone


def test_a_folder_made_meanwhile_is_never_replaced(tmp_path: Path, monkeypatch) -> None:
    final = tmp_path / "artifact"
    write = artifact_module.write_manifest

    def racing(folder, manifest):  # another process creates the output before the rename
        write(folder, manifest)
        final.mkdir()
        (final / "theirs.txt").write_text("keep me")

    monkeypatch.setattr(artifact_module, "write_manifest", racing)
    with pytest.raises(FileExistsError):
        _export_small(final)
    assert [p.name for p in final.iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]  # no temporary left behind


def test_overwrite_never_replaces_a_folder_that_is_not_an_artifact(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not a recsampled artifact"):
        _export_small(tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_interrupted_swap_is_pointed_to(tmp_path: Path) -> None:
    _export_small(tmp_path / "artifact")
    # as if killed between the two renames of an overwrite: only the backup is left
    (tmp_path / "artifact").rename(tmp_path / ".artifact.old-999999999-abcd")
    with pytest.raises(ArtifactNotFoundError, match=r"A previous artifact survives under"):
        Retriever.load(tmp_path / "artifact")


def test_manifest_records_the_export(artifact_dir: Path, data) -> None:
    manifest = read_manifest(artifact_dir)
    assert (manifest.num_items, manifest.num_users, manifest.embedding_dim) == (300, 40, 8)
    assert manifest.metric == "cosine" and manifest.index.type == "flat"
    assert manifest.index.factory == "Flat" and manifest.recall.value == 1.0
    assert manifest.embeddings_sha256 == sha256_array(data.items)
    assert manifest.training_config == {"epochs": 3, "learning_rate": 0.1, "data": "u.data"}
    assert set(manifest.files) == {
        "index.faiss",
        "item_ids.npy",
        "user_ids.npy",
        "query_model",
        "seen.npz",
        "item_popularity.npy",
    }
    for part, digest in manifest.files.items():
        assert sha256_part(artifact_dir / part) == digest
    raw = json.loads((artifact_dir / "manifest.json").read_text())
    assert raw["schema_version"] == 2 and raw == manifest.to_dict()  # 2: query_model/1/, shards
    assert manifest.index.shards == []
    assert manifest.query_model["path"] == "query_model/1"
    assert manifest.query_model["user_id_dtype"] == "int64"  # user_ids.npy holds int64 ids
    assert (artifact_dir / "query_model" / "1" / "saved_model.pb").is_file()


# -- corruption: each case names the part at fault -------------------------------------------


def _edit_manifest(**changes) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        data = json.loads((path / "manifest.json").read_text())
        data.update(changes)
        (path / "manifest.json").write_text(json.dumps(data))

    return edit


def _flip_byte(path: Path) -> None:
    file = path / "index.faiss"
    raw = bytearray(file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    file.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    file = path / "index.faiss"
    file.write_bytes(file.read_bytes()[:100])


def _shorter_item_ids(update_checksum: bool) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        ids = np.load(path / "item_ids.npy")
        np.save(path / "item_ids.npy", ids[:-1])
        if update_checksum:  # as an attacker would: re-hash the part and record its size
            data = json.loads((path / "manifest.json").read_text())
            data["files"]["item_ids.npy"] = sha256_part(path / "item_ids.npy")
            data["sizes"]["item_ids.npy"] = (path / "item_ids.npy").stat().st_size
            (path / "manifest.json").write_text(json.dumps(data))

    return edit


def _remove(part: str) -> Callable[[Path], None]:
    def remove(path: Path) -> None:
        target = path / part
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return remove


def _delete_query_model_file(path: Path) -> None:
    next((path / "query_model").rglob("*.pb")).unlink()


CORRUPTIONS = [
    ("missing index", _remove("index.faiss"), ArtifactNotFoundError, "index.faiss", "missing"),
    ("missing manifest", _remove("manifest.json"), ArtifactNotFoundError, "manifest.json",
     "no manifest.json"),
    ("missing query tower", _remove("query_model"), ArtifactNotFoundError, "query_model",
     "missing"),
    ("truncated index", _truncate, ArtifactError, "index.faiss",
     "is corrupt: its part 'index.faiss' has 100 bytes, but manifest.json records"),
    ("flipped byte", _flip_byte, ArtifactError, "index.faiss", "is corrupt: the sha256"),
    ("query tower file", _delete_query_model_file, ArtifactError, "query_model", "is corrupt"),
    ("wrong dim", _edit_manifest(embedding_dim=9), ArtifactError, "index.faiss",
     "has dimension 8, but manifest.json says embedding_dim=9"),
    ("wrong count", _edit_manifest(num_items=301), ArtifactError, "index.faiss",
     "holds 300 vectors, but manifest.json says num_items=301"),
    ("wrong user count", _edit_manifest(num_users=41), ArtifactError, "user_ids.npy",
     "holds 40 ids, but manifest.json says num_users=41"),
    ("replaced id map", _shorter_item_ids(False), ArtifactError, "item_ids.npy", "is corrupt"),
    ("short id map", _shorter_item_ids(True), ArtifactError, "item_ids.npy",
     "holds 299 ids, but manifest.json says num_items=300"),
    ("newer schema", _edit_manifest(schema_version=99), ArtifactError, "manifest.json",
     "newer than this recsampled understands"),
    ("bad metric", _edit_manifest(metric="l2"), ArtifactError, "manifest.json", "`metric`"),
    ("not json", lambda p: (p / "manifest.json").write_text("{"), ArtifactError,
     "manifest.json", "not valid JSON"),
]  # fmt: skip


@pytest.mark.parametrize(
    "mutate, error, part, message", [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS]
)
def test_each_corruption_names_the_part(
    artifact_dir: Path, tmp_path: Path, mutate, error: type, part: str, message: str
) -> None:
    path = tmp_path / "copy"
    shutil.copytree(artifact_dir, path)
    mutate(path)
    with pytest.raises(error, match=message) as caught:
        Retriever.load(path)
    assert caught.value.part == part
    assert str(path) in str(caught.value)


def test_unreadable_index_without_checksums_is_named(artifact_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "copy"
    shutil.copytree(artifact_dir, path)
    _truncate(path)
    with pytest.raises(ArtifactError, match="corrupt FAISS index") as caught:
        Retriever.load(path, verify_checksums=False)
    assert caught.value.part == "index.faiss"


def test_query_tower_output_dimension_is_checked(tmp_path: Path) -> None:
    import tensorflow as tf

    items = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    wrong = tf.keras.Sequential([tf.keras.layers.Embedding(5, 3)])
    with pytest.raises(ValueError, match="items' dimension \\(4\\). Received: .* dimension 3"):
        export_artifact(
            tmp_path / "a", item_embeddings=items, item_ids=np.arange(20), query_model=wrong,
            user_ids=np.arange(5), index="flat",
        )  # fmt: skip
    assert not any(tmp_path.iterdir())


BAD_EXPORTS = [
    ({"item_ids": np.arange(19)}, "`item_ids` must have one id per row"),
    ({"item_ids": [1, 2, 2] + list(range(3, 20))}, "`item_ids` must hold distinct ids"),
    ({"item_ids": np.linspace(0, 1, 20)}, "`item_ids` must hold integer or string ids"),
    ({"seen": [[1]]}, "`user_ids` .* is required"),
    ({"seen": [[25]], "user_ids": [7]}, r"`seen` item rows must lie in \[0, num_items=20\)"),
    ({"seen": {3: [1]}, "user_ids": [7]}, r"user indices in \[0, 1\)"),
    ({"item_popularity": np.ones(3)}, "`item_popularity` must be"),
    ({"training_config": {"f": object()}}, "`training_config` must be JSON-serialisable"),
    ({"metric": "euclidean"}, "`metric` must be one of"),
    ({"index": "lsh"}, "`index` must be one of"),
]


@pytest.mark.parametrize("kwargs, message", BAD_EXPORTS)
def test_bad_export_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    arguments = {
        "item_embeddings": np.random.default_rng(0).normal(size=(20, 4)),
        "item_ids": np.arange(20),
        "index": "flat",
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        export_artifact(tmp_path / "a", **arguments)
    assert not any(tmp_path.iterdir())

"""recsampled._io: atomic files and folders, stale leftovers, checksums."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from recsampled import _io
from recsampled._io import atomic_directory, write_atomic, write_file, write_json


def test_write_atomic_replaces_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"x": 1})
    assert path.read_text() == '{\n  "x": 1\n}\n'
    write_atomic(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert path.stat().st_mode & 0o777 == 0o644  # readable by others (mkstemp makes 0600)


def test_a_failing_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.bin"
    write_atomic(path, b"old")

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_file(path, broken)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_directory_keeps_the_old_folder_when_writing_fails(tmp_path):
    target = tmp_path / "towers"
    with atomic_directory(target) as folder:
        (folder / "v1").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(target) as folder:
        (folder / "v2").write_text("half")
        raise RuntimeError("crash while writing")
    assert [p.name for p in target.iterdir()] == ["v1"]
    with atomic_directory(target) as folder:
        (folder / "v3").write_text("3")
    assert [p.name for p in target.iterdir()] == ["v3"]
    assert [p.name for p in tmp_path.iterdir()] == ["towers"]  # no temporary folders left


def test_atomic_directory_without_overwrite_refuses_an_existing_path(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        with atomic_directory(tmp_path / "out", overwrite=False):
            pass


def test_leftovers_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "out"
    dead = tmp_path / ".out.tmp-999999999-abcd"  # no such pid
    alive = tmp_path / f".out.tmp-{__import__('os').getpid()}-abcd"
    dead.mkdir()
    alive.mkdir()
    assert sorted(p.name for p, _ in _io.siblings(target, "tmp")) == sorted([dead.name, alive.name])
    assert _io.remove_stale(target) == [dead]
    assert alive.exists() and not dead.exists()


def test_checksums_match_hashlib(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a").write_bytes(b"abc")
    (tmp_path / "d" / "sub" / "b").write_bytes(b"xyz")
    sha = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731
    assert _io.sha256_file(tmp_path / "d" / "a") == sha(b"abc")
    expected = sha(f"a\0{sha(b'abc')}\nsub/b\0{sha(b'xyz')}\n".encode())
    assert _io.sha256_part(tmp_path / "d") == expected
    array = np.arange(6, dtype=np.float64).reshape(2, 3)
    assert _io.sha256_array(array) == sha(array.astype(np.float32).tobytes())


def test_claim_holds_an_exclusive_flock_reentrantly_and_a_shared_one_for_readers(tmp_path):
    import fcntl

    from recsampled._io import claim

    lock = tmp_path / ".lock"

    def try_lock(mode: int) -> bool:  # another open file description, as another process has
        with open(lock, "a") as other:
            try:
                fcntl.flock(other, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

    with claim(lock, folder=tmp_path, what="write it"):
        assert int(lock.read_text()) == os.getpid()
        with claim(lock, folder=tmp_path, what="write it"):  # re-entrant in one process
            pass
        assert not try_lock(fcntl.LOCK_SH)  # still held after the inner block
    assert try_lock(fcntl.LOCK_EX)
    with claim(lock, folder=tmp_path, what="read it", shared=True):
        assert try_lock(fcntl.LOCK_SH) and not try_lock(fcntl.LOCK_EX)


def test_rename_noreplace_refuses_an_existing_target(tmp_path):
    from recsampled._io import rename_noreplace

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()  # even an empty folder, which rename(2) would replace
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "a", tmp_path / "b")
    rename_noreplace(tmp_path / "a", tmp_path / "c")
    assert (tmp_path / "c").is_dir() and not (tmp_path / "a").exists()

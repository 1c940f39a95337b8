"""Durable writes: atomic files and folders, fsync, checksums (the one copy in the library).

**Files** (:func:`write_file`, :func:`write_atomic`, :func:`write_json`) are written to a hidden
temporary sibling ``.{name}.{random}.tmp``, flushed and fsynced, then ``os.replace``-d onto the
final name, so a reader sees the old file or the new one, never half of one.

**Folders** (:func:`atomic_directory`) are built in a hidden sibling ``.{name}.tmp-{pid}-{token}``;
when the block succeeds every file and folder in it is fsynced, an existing folder of the final
name is renamed aside to ``.{name}.old-{pid}-{token}``, the new one is renamed into place
(``rename(2)`` is atomic within a filesystem), the parent is fsynced and the old one deleted. A
process killed at any moment leaves under the final name the previous complete folder, the new
complete one, or (killed between the two renames) nothing, with the previous one intact under the
backup name. Leftovers of dead processes are removed by the next write to the same name
(:func:`remove_stale`).

**Locks** (:func:`claim`): an exclusive ``fcntl.flock`` on a lock file, held for a whole train or
export; a second process asking for it fails at once with a
:class:`~recsampled.errors.FolderInUseError` naming the folder and the holder's pid (written into
the lock file). The kernel drops the lock when its holder dies, even by SIGKILL.

**Publishing without replacing** (:func:`rename_noreplace`): ``renameat2(RENAME_NOREPLACE)``,
so that a folder written meanwhile by someone else is never replaced.

**Checksums**: :func:`sha256_file`, :func:`sha256_part` (a file, or a folder's files) and
:func:`sha256_array` (an array's float32 bytes).

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with atomic_directory(folder / "out") as tmp:
    ...     write_json(tmp / "a.json", {"x": 1})
    >>> (folder / "out" / "a.json").read_text()
    '{\\n  "x": 1\\n}\\n'
    >>> sha256_part(folder / "out") == sha256_part(folder / "out")
    True
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from recsampled.errors import FolderInUseError

__all__ = [
    "atomic_directory",
    "claim",
    "fsync_path",
    "fsync_tree",
    "remove_stale",
    "rename_noreplace",
    "sha256_array",
    "sha256_file",
    "sha256_part",
    "siblings",
    "write_atomic",
    "write_file",
    "write_json",
]

_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------
# Files.


def write_file(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Writes a file atomically: ``write(f)`` fills a temporary sibling, fsynced, then renamed.

    Args:
        path: the final file (its folder must exist).
        write: writes the contents into the binary file object it is given.
    """
    path = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temporary, 0o644)  # mkstemp creates 0600: others (a server's user) may read it
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes ``data`` (text as UTF-8) to ``path`` atomically (see :func:`write_file`)."""
    payload = data.encode() if isinstance(data, str) else data
    write_file(path, lambda f: f.write(payload))


def write_json(path: str | os.PathLike, value: Any) -> None:
    """Writes ``value`` as indented JSON (keys in their order), atomically."""
    write_atomic(path, json.dumps(value, indent=2) + "\n")


def fsync_path(path: str | os.PathLike) -> None:
    """Flushes a file, or a folder's entries, to disk (``fsync``)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsyncs every file and folder under ``path`` (bottom-up), then ``path`` itself."""
    for root, _, files in os.walk(path, topdown=False):
        for name in files:
            fsync_path(os.path.join(root, name))
        fsync_path(root)


# ---------------------------------------------------------------------------------------------
# Checksums.


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_part(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, or of a folder: over its files' relative paths and sha256s, sorted."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def sha256_array(array: np.ndarray) -> str:
    """Hex sha256 of an array's float32, C-order bytes."""
    data = np.ascontiguousarray(array, dtype=np.float32)
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


# ---------------------------------------------------------------------------------------------
# Folders.


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def siblings(path: str | os.PathLike, kind: str) -> list[tuple[Path, int]]:
    """Hidden siblings ``.{name}.{kind}-{pid}-{token}`` of ``path`` (``kind``: ``"tmp"`` or
    ``"old"``), with the pid that made each."""
    path = Path(path)
    found: list[tuple[Path, int]] = []
    prefix = f".{path.name}.{kind}-"
    if not path.parent.is_dir():
        return found
    for sibling in path.parent.iterdir():
        if sibling.name.startswith(prefix):
            pid_text = sibling.name[len(prefix) :].split("-", 1)[0]
            if pid_text.isdigit():
                found.append((sibling, int(pid_text)))
    return found


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Removes temporary folders (and, if ``path`` exists, backups) left by dead processes.

    Returns:
        The removed paths.
    """
    path = Path(path)
    stale = [p for p, pid in siblings(path, "tmp") if not _pid_alive(pid)]
    if path.exists():
        stale += [p for p, pid in siblings(path, "old") if not _pid_alive(pid)]
    for sibling in stale:
        shutil.rmtree(sibling, ignore_errors=True)
    return stale


_HELD: dict[Path, int] = {}  # lock files this process holds -> nesting depth


def _holder(lock_file: Path) -> int | None:
    try:
        text = lock_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def claim(
    lock_file: str | os.PathLike, *, folder: str | os.PathLike, what: str, shared: bool = False
) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``lock_file`` for the block (re-entrant in a process);
    with ``shared``, a shared one (readers: many may hold it, but no exclusive holder).

    Args:
        lock_file: the lock file (created if needed; kept afterwards, holding the last pid).
        folder: the folder the lock protects, for the message.
        what: what the caller does, e.g. ``"train into it"``, for the message.

    Raises:
        FolderInUseError: at once, if another process holds the lock.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with claim(folder / ".lock", folder=folder, what="write it"):
        ...     int((folder / ".lock").read_text()) == os.getpid()
        True
    """
    lock_file = Path(lock_file).absolute()
    if lock_file in _HELD:
        _HELD[lock_file] += 1
        try:
            yield
        finally:
            _HELD[lock_file] -= 1
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except (PermissionError, OSError) as e:
        if not shared or e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        yield  # a reader of a folder it cannot write: nobody can write it either
        return
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(lock_file)
            raise FolderInUseError(
                f"{folder} is in use: process {pid if pid is not None else '(unknown pid)'} "
                f"holds its lock ({lock_file.name}), so this process cannot {what}. Wait for "
                "it to finish, or choose another folder.",
                path=folder,
                pid=pid,
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[lock_file] = 1
        try:
            yield
        finally:
            del _HELD[lock_file]
    finally:
        os.close(fd)  # releases the flock


def rename_noreplace(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Renames ``source`` to ``target``, failing if ``target`` exists (never replacing it).

    Raises:
        FileExistsError: if ``target`` exists (made by someone else since it was checked).
    """
    source, target = os.fsencode(source), os.fsencode(target)
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, rename_noreplace_flag = -100, 1
        if renameat2(at_fdcwd, source, at_fdcwd, target, rename_noreplace_flag) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):  # unsupported here: fall back
            raise OSError(code, os.strerror(code), os.fsdecode(target))
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(target))
    os.rename(source, target)  # (the check above and this rename are not one step)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yields a temporary folder that becomes ``path`` when the block ends without error.

    Args:
        path: the final folder (its parent is created if needed).
        overwrite: replace an existing ``path``; otherwise an existing path is an error,
            checked again when publishing: a folder made at ``path`` meanwhile is never
            replaced (:func:`rename_noreplace`).

    Yields:
        The temporary folder to write into (a hidden sibling of ``path``).

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is false, at the start or (made
            meanwhile) when publishing.
    """
    path = Path(path).absolute()
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(
            "`path` already exists; pass overwrite=True to replace it. "
            f"Received: path={str(path)!r}."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    temporary = path.parent / f".{path.name}.tmp-{token}"
    temporary.mkdir()
    backup = path.parent / f".{path.name}.old-{token}"
    try:
        yield temporary
        fsync_tree(temporary)
        if overwrite and (path.exists() or path.is_symlink()):
            os.replace(path, backup)
        rename_noreplace(temporary, path)
        fsync_path(path.parent)
    except BaseException:
        if backup.exists() and not path.exists():
            os.replace(backup, path)  # put the previous folder back
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    remove_stale(path)

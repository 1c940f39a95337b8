"""What an artifact may make the loader read: regular files inside its folder, of bounded size,
under an optional HMAC signature.

**Regular files only.** Every part is ``lstat``-ed before it is opened and opened with
``O_NOFOLLOW | O_NONBLOCK``, then ``fstat``-ed: a symlink (to a file inside the folder or out of
it), a device (``/dev/zero``), a FIFO or a socket is refused, so that neither a checksum nor a
reader can be made to hang on an endless file or to read a file outside the folder. A folder part
(``query_model``) is walked without following links, with the same rule for everything in it.

**Sizes.** The manifest records each part's size in bytes (``sizes``; a folder: the sum of its
files). The size on disk is compared with it before a byte is hashed or parsed; manifests written
before ``sizes`` existed bound nothing beyond the regular-file rule.

**Signatures.** With a key (``key=`` or the environment variable :data:`KEY_ENV`), an export
writes ``manifest.sig``: ``hmac-sha256:`` and the hex HMAC-SHA256 (RFC 2104) of the exact bytes of
``manifest.json`` under the key. The manifest lists every part's sha256, so the signature covers
the whole artifact. A loader given a key checks it before it parses the manifest or opens any
other part: a missing or different signature is refused. Without a key, an attacker who can write
the folder can re-hash what they change; some such changes stay detectable (the query model's id
map against ``user_ids.npy``, the index against the manifest's metric), others do not (a
permutation of ``item_ids.npy``, or of the seen rows, re-hashed): only a signature catches them.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "manifest.json").write_text("{}")
    >>> sign_manifest(folder, b"0123456789abcdef")
    >>> verify_signature(folder, read_bytes(folder, "manifest.json", max_bytes=100),
    ...                  b"0123456789abcdef")
    >>> part_size(folder, "manifest.json")
    2
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

from recsampled import _io
from recsampled.errors import ArtifactError, ArtifactNotFoundError

#: The environment variable holding the signing key (its bytes) when ``key`` is not given.
KEY_ENV = "RECSAMPLED_ARTIFACT_KEY"
SIGNATURE_FILE = "manifest.sig"
SIGNATURE_PREFIX = "hmac-sha256:"
#: The shortest key accepted (bytes).
MIN_KEY_BYTES = 16
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0)
_CHUNK = 1 << 20


def resolve_key(key: bytes | str | None) -> bytes | None:
    """The signing key: ``key`` (text as UTF-8), else :data:`KEY_ENV`'s value, else None.

    Raises:
        ValueError: for a key shorter than :data:`MIN_KEY_BYTES` bytes.
    """
    if key is None:
        environ = getattr(os, "environb", None)  # the key's bytes as set, on POSIX
        key = environ.get(KEY_ENV.encode()) if environ is not None else os.environ.get(KEY_ENV)
        if not key:
            return None
    data = key.encode() if isinstance(key, str) else bytes(key)
    if len(data) < MIN_KEY_BYTES:
        raise ValueError(
            f"`key` must be at least {MIN_KEY_BYTES} bytes (e.g. `head -c 32 /dev/urandom | "
            f"base64`). Received: a key of {len(data)} bytes."
        )
    return data


def read_key_file(path: str | os.PathLike) -> bytes:
    """The key in a file (``--key-file``): its bytes, without a trailing newline."""
    data = Path(path).read_bytes()
    return data.rstrip(b"\r\n")


def _refuse(folder: Path, part: str, what: str) -> ArtifactError:
    return ArtifactError(
        f"The artifact at {folder} has a part {part!r} that {what}; only regular files inside "
        "the artifact folder are read (no symlinks, devices or FIFOs). Export it again.",
        path=folder,
        part=part,
    )


def _regular(folder: Path, part: str, file: Path) -> os.stat_result:
    """``lstat`` of ``file``: a regular file, else an error naming ``part``."""
    try:
        info = os.lstat(file)
    except FileNotFoundError as e:
        raise ArtifactNotFoundError(
            f"The artifact at {folder} is incomplete: its part {part!r} is missing "
            f"(listed in manifest.json, not found at {file}).",
            path=folder,
            part=part,
        ) from e
    if stat.S_ISLNK(info.st_mode):
        raise _refuse(folder, part, f"is a symlink ({file} -> {os.readlink(file)})")
    if not stat.S_ISREG(info.st_mode):
        raise _refuse(folder, part, f"is not a regular file ({file})")
    return info


def part_files(folder: Path, part: str) -> list[tuple[str, Path, int]]:
    """``(relative path, path, size)`` of every file of a part, sorted; a folder part is walked
    without following links. Raises :class:`ArtifactError` for anything but regular files and
    folders."""
    top = folder / part
    try:
        info = os.lstat(top)
    except FileNotFoundError:
        info = None
    if info is None or not stat.S_ISDIR(info.st_mode):
        return [(part, top, _regular(folder, part, top).st_size)]
    found = []
    pending = [top]
    while pending:
        current = pending.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                path = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                    continue
                size = _regular(folder, part, path).st_size
                found.append((path.relative_to(top).as_posix(), path, size))
    return sorted(found)


def part_size(folder: Path, part: str) -> int:
    """Bytes of a part (a folder: of all its files)."""
    return sum(size for _, _, size in part_files(folder, part))


def _open(folder: Path, part: str, file: Path, size: int):
    """``file`` opened without following links, still the regular file of ``size`` bytes."""
    try:
        fd = os.open(file, _OPEN_FLAGS)
    except OSError as e:
        raise _refuse(folder, part, f"cannot be opened as a regular file ({e.strerror})") from e
    f = os.fdopen(fd, "rb")
    info = os.fstat(f.fileno())
    if not stat.S_ISREG(info.st_mode) or info.st_size != size:
        f.close()
        raise _refuse(folder, part, "changed while it was checked")
    return f


def read_bytes(folder: Path, part: str, *, max_bytes: int) -> bytes:
    """The bytes of the regular file ``folder/part``, at most ``max_bytes`` of them."""
    file = folder / part
    size = _regular(folder, part, file).st_size
    if size > max_bytes:
        raise ArtifactError(
            f"The artifact at {folder} has a part {part!r} of {size} bytes, more than the "
            f"{max_bytes} bytes such a part may have.",
            path=folder,
            part=part,
        )
    with _open(folder, part, file, size) as f:
        return f.read(max_bytes + 1)


def _sha256_open(f) -> str:
    digest = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_part(folder: Path, part: str, files: list[tuple[str, Path, int]]) -> str:
    """:func:`recsampled._io.sha256_part` of the checked ``files`` of a part (same digest)."""
    if not stat.S_ISDIR(os.lstat(folder / part).st_mode):
        with _open(folder, part, files[0][1], files[0][2]) as f:
            return _sha256_open(f)
    digest = hashlib.sha256()
    for relative, file, size in files:
        with _open(folder, part, file, size) as f:
            digest.update(f"{relative}\0{_sha256_open(f)}\n".encode())
    return digest.hexdigest()


def signature(manifest_bytes: bytes, key: bytes) -> str:
    """``hmac-sha256:<hex>`` of the manifest's bytes."""
    return SIGNATURE_PREFIX + hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()


def sign_manifest(folder: Path, key: bytes) -> None:
    """Writes ``manifest.sig`` for the ``manifest.json`` in ``folder``."""
    data = (folder / "manifest.json").read_bytes()
    _io.write_atomic(folder / SIGNATURE_FILE, signature(data, key) + "\n")


def verify_signature(folder: Path, manifest_bytes: bytes, key: bytes) -> None:
    """Checks ``manifest.sig`` against the manifest's bytes under ``key``.

    Raises:
        ArtifactError: (``part="manifest.sig"``) if the signature is missing or differs.
    """
    if not (folder / SIGNATURE_FILE).exists() and not (folder / SIGNATURE_FILE).is_symlink():
        raise ArtifactError(
            f"The artifact at {folder} is not signed (no {SIGNATURE_FILE}), but a key was given "
            f"(key= or ${KEY_ENV}): refusing to load it. Export it with the key to sign it.",
            path=folder,
            part=SIGNATURE_FILE,
        )
    text = read_bytes(folder, SIGNATURE_FILE, max_bytes=256).decode("ascii", "replace").strip()
    if not hmac.compare_digest(text, signature(manifest_bytes, key)):
        raise ArtifactError(
            f"The artifact at {folder} has a signature ({SIGNATURE_FILE}) that does not match "
            "its manifest.json under the given key: the manifest was modified after export, or "
            "the key is another one. Refusing to load it.",
            path=folder,
            part=SIGNATURE_FILE,
        )
